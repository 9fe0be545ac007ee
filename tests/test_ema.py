"""The moving average of G (ema.decay): its update and ramp-up against hand-computed
numbers, every trainer family keeping one, checkpoints carrying it (old ones without it still
load), bit-exact resume through the real entry point on two ranks, and evaluate/predict scoring
the average or the raw G as asked. Real components: synthetic-sky shards, a local Ray cluster."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ssagan_dist import checkpointing, evaluate, experiment, predict, scoring, train
from ssagan_dist.config import ConfigError
from ssagan_dist.experiment import load_config
from ssagan_dist.data import ClipLoader
from ssagan_dist.trainers.ema import GeneratorEMA, ema_beta, half_life
from tests.test_faults import FAST, assert_same_weights, data_args
from tests.test_trainers_zoo import sky_clips


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the update and its ramp-up ------------------------------------------------------------------

def test_beta_and_its_ramp_up_by_hand():
    assert ema_beta(1, 0.999, 0.05) == 0.0  # the first update copies G
    assert ema_beta(2, 0.9, 0.0) == ema_beta(500, 0.9, 0.0) == 0.9  # no ramp-up: the decay
    assert ema_beta(2, 0.999, 0.1) == 0.5 ** 5  # half-life 0.1 x 2 = 0.2 updates
    assert ema_beta(10, 0.999, 0.1) == 0.5  # half-life 1 update
    assert ema_beta(1000, 0.99, 0.05) == pytest.approx(0.5 ** (1 / 50))  # half-life 50 < 69: ramping
    assert ema_beta(2000, 0.99, 0.05) == 0.99  # half-life 100 > 69: the decay's
    assert half_life(0.99) == pytest.approx(68.97, abs=0.01)
    assert half_life(0.5) == 1.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.register_buffer("stat", torch.zeros(1))


@pytest.mark.parametrize("decay, rampup, expected", [
    (0.5, 0.0, [1.0, 1.5, 2.75]),  # 1; 0.5·1 + 0.5·2; 0.5·1.5 + 0.5·4
    (0.9, 0.5, [1.0, 1.5, 0.5 ** (1 / 1.5) * 1.5 + (1 - 0.5 ** (1 / 1.5)) * 4]),  # β_2 = 0.5, β_3 = 0.5^(1/1.5)
])
def test_update_by_hand(decay, rampup, expected):
    g = Tiny()
    ema = GeneratorEMA(g, decay, rampup)
    for value, want in zip([1.0, 2.0, 4.0], expected):
        with torch.no_grad():
            g.w.fill_(value)
            g.stat.fill_(-value)
        ema.update_parameters(g)
        torch.testing.assert_close(ema.module.w, torch.full((2,), want))
        assert ema.module.stat.item() == -value  # buffers copied, not averaged
    assert ema.updates == 3 and not ema.module.w.requires_grad


def _cfg(model: str = "ssagan", *overrides: str):
    extra = ["init.stage1_checkpoint=/unused"] if model in ("mdgan_stage2", "ssagan_b") else []
    return load_config("defaults", [f"model.name={model}", "optim.n_critic=1", *extra, *overrides])


FAMILIES = ["ssagan", "mdgan_stage2", "hrvgan", "video3d_gan", "pix2pix_video"]  # every trainer kind


@pytest.mark.parametrize("model", FAMILIES)
def test_every_family_averages_g_after_each_g_step(model):
    """The average follows the hand-computed recursion over G's weights after each step, and
    predicts what a trainer whose G holds the averaged weights predicts."""
    decay, rampup = 0.8, 0.5
    torch.manual_seed(0)
    trainer = experiment.build_trainer(_cfg(model, f"ema.decay={decay}", f"ema.rampup={rampup}"))
    assert sorted(trainer.nets) == sorted([*experiment.build_networks(_cfg(model)), "G_ema"])
    batch = {"video": sky_clips(2), "label": torch.tensor([1, 2])}
    expected = None
    for t in (1, 2, 3):
        trainer.run_step(lambda: batch)
        g = {k: v.detach().double() for k, v in trainer.nets["G"].named_parameters()}
        beta = ema_beta(t, decay, rampup)
        expected = g if expected is None else {k: beta * expected[k] + (1 - beta) * g[k] for k in g}
    assert trainer.g_ema.updates == 3
    averaged = dict(trainer.nets["G_ema"].named_parameters())
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(averaged[k], p) for k, p in trainer.nets["G"].named_parameters())

    hand = experiment.build_trainer(_cfg(model))  # no EMA: its G loaded with the averaged weights
    hand.load_state_dict({"nets": {**trainer.state_dict()["nets"], "G": trainer.nets["G_ema"].state_dict()}})
    for weights, reference in (("ema", hand), ("raw", trainer)):
        with trainer.generator_weights(weights) as used:
            torch.manual_seed(5)
            ours = trainer.predict(batch)
        torch.manual_seed(5)
        assert used == weights
        torch.testing.assert_close(ours, reference.predict(batch), rtol=0, atol=0)
    assert trainer.nets["G"] is not trainer.nets["G_ema"]  # the block put G back


def test_state_round_trip_and_checkpoints_without_an_average():
    cfg = _cfg("ssagan", "ema.decay=0.5", "ema.rampup=0")
    batch = {"video": sky_clips(2)}
    torch.manual_seed(0)
    a = experiment.build_trainer(cfg)
    for _ in range(2):
        a.run_step(lambda: batch)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["g_ema_updates"] == 2 and "G_ema" in saved["nets"]
    torch.manual_seed(1)
    b = experiment.build_trainer(cfg)
    b.load_state_dict(saved)
    for trainer in (a, b):
        torch.manual_seed(7)
        trainer.run_step(lambda: batch)
    assert a.g_ema.updates == b.g_ema.updates == 3
    assert checkpointing.state_digest(a) == checkpointing.state_digest(b)  # G_ema included

    old = {**saved, "nets": {k: v for k, v in saved["nets"].items() if k != "G_ema"}}
    old.pop("g_ema_updates")
    c = experiment.build_trainer(cfg)
    c.load_state_dict(old)  # before the EMA existed: the average starts afresh from the loaded G
    assert c.g_ema.updates == 0
    for (k, ve), vg in zip(c.nets["G_ema"].state_dict().items(), c.nets["G"].state_dict().values()):
        assert torch.equal(ve, vg), k
    plain = experiment.build_trainer(_cfg("ssagan"))
    plain.load_state_dict(saved)  # an average the trainer does not keep is left out
    assert "G_ema" not in plain.nets and plain.weights_for(None) == "raw"
    with pytest.raises(ValueError, match="ema.decay = 0"):
        plain.weights_for("ema")


def test_config_keys_are_checked():
    assert load_config("tiny_cpu").ema.decay == 0.0  # the demo keeps no average
    with pytest.raises(ConfigError, match="ema.decay"):
        load_config("tiny_cpu", ["ema.decay=1.0"])
    with pytest.raises(ConfigError, match="ema.rampup"):
        load_config("tiny_cpu", ["ema.decay=0.9", "ema.rampup=-1"])
    with pytest.raises(ConfigError, match="'ema.rampup'.*only acts with ema.decay > 0"):
        load_config("tiny_cpu", ["ema.rampup=0.1"])


# -- evaluate and predict ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ema_checkpoint(sky, tmp_path_factory):
    """A real checkpoint of the demo's model, 3 steps trained, keeping an average that differs
    from G (decay 0.5, no ramp-up); written here, not by a Ray training, to be fast."""
    cfg = load_config("tiny_cpu", [*data_args(sky), "ema.decay=0.5", "ema.rampup=0"])
    torch.manual_seed(0)
    trainer = experiment.build_trainer(cfg)
    batches = iter(ClipLoader(str(sky / "train"), 4, shuffle=False))
    for _ in range(3):
        trainer.run_step(batches)
    ckpt = tmp_path_factory.mktemp("ema") / "run" / checkpointing.checkpoint_dir_name(3)
    ckpt.mkdir(parents=True)
    checkpointing.write(ckpt, rank=0, worker_state={}, trainer=trainer, step=3, clip_shape=[3, 8, 32, 32], cfg=cfg)
    return ckpt


def _hand_built(ckpt: Path, role: str):
    """A trainer without an average whose G holds the checkpoint's ``role`` weights."""
    nets = checkpointing.read_model(ckpt)["trainer"]["nets"]
    trainer = experiment.build_trainer(load_config("tiny_cpu"))
    trainer.nets["G"].load_state_dict(nets[role])
    trainer.nets["G"].eval()
    return trainer


def test_evaluate_scores_the_average_by_default_and_raw_g_when_asked(ema_checkpoint, sky, capsys):
    val = str(sky / "val")
    scored = {w: scoring.evaluate(str(ema_checkpoint), val, batch_size=4, progress=False, train_data="", weights=w)
              for w in (None, "ema", "raw")}
    assert scored[None]["weights"] == scored["ema"]["weights"] == "ema" and scored["raw"]["weights"] == "raw"
    assert scored[None]["psnr"] == scored["ema"]["psnr"] != scored["raw"]["psnr"]
    for weights, role in (("ema", "G_ema"), ("raw", "G")):
        loader = ClipLoader(val, 4, shuffle=False, drop_last=False)
        by_hand, _ = scoring.score(_hand_built(ema_checkpoint, role), loader, 8, "cpu", progress=False)
        assert (scored[weights]["psnr"], scored[weights]["ssim"]) == (by_hand["psnr"], by_hand["ssim"])
    assert evaluate.main(["--checkpoint", str(ema_checkpoint), "--data", val, "--train-data", "",
                          "--weights", "raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "raw"


def test_predict_uses_the_average_or_raw_g_as_asked(ema_checkpoint, sky, tmp_path):
    clip = predict.held_out_clip(str(sky / "val"), 2)
    preds = {w: predict.predict(str(ema_checkpoint), str(tmp_path / f"{w}.gif"), data=str(sky / "val"), index=2,
                                weights=w) for w in (None, "raw")}
    assert not torch.equal(preds[None], preds["raw"])
    for weights, role in ((None, "G_ema"), ("raw", "G")):
        torch.testing.assert_close(preds[weights], _hand_built(ema_checkpoint, role).predict(clip)[0],
                                   rtol=0, atol=0)
    assert predict.main(["--checkpoint", str(ema_checkpoint), "--from-data", str(sky / "val"),
                         "--weights", "ema", "--out", str(tmp_path / "p.mp4")]) == 0


def test_a_stage2_run_refines_the_stage1_average(ema_checkpoint):
    nets = checkpointing.read_model(ema_checkpoint)["trainer"]["nets"]
    loaded = checkpointing.load_generator(str(ema_checkpoint))
    assert loaded.keys() == nets["G"].keys()
    assert all(torch.equal(loaded[k], nets["G_ema"][k]) for k in loaded)
    assert not all(torch.equal(loaded[k], nets["G"][k]) for k in loaded)


def test_asking_for_an_average_that_was_not_kept_names_the_key(sky, tmp_path, capsys):
    cfg = load_config("tiny_cpu", data_args(sky))
    ckpt = tmp_path / "plain"
    ckpt.mkdir()
    checkpointing.write(ckpt, rank=0, worker_state={}, trainer=experiment.build_trainer(cfg), step=0,
                        clip_shape=[3, 8, 32, 32], cfg=cfg)
    scored = scoring.evaluate(str(ckpt), str(sky / "val"), progress=False, train_data="", max_batches=1)
    assert scored["weights"] == "raw"
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(sky / "val"), "--weights", "ema"]) == 2
    assert "ema.decay = 0" in capsys.readouterr().err


# -- through the real entry point: two ranks, exact resume ------------------------------------------

@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_two_ranks_agree_and_resume_bit_identically_with_an_average(ray_cluster, sky, tmp_path):
    """2 + 2 steps equal 4 straight, bit for bit, the average and its update count included; every
    checkpoint's ranks hold the same average (check_ranks_agree compares it); validation scored the
    average, as evaluate does by default."""
    two = ["--config", "tiny_cpu", *FAST, *data_args(sky), "scaling.ranks=2", "loop.val_every=2",
           "loop.val_batches=0", f"run.storage_path={tmp_path}", "ema.decay=0.9", "ema.rampup=0"]
    assert train.main([*two, "run.name=straight", "loop.max_steps=4"]) == 0
    assert train.main([*two, "run.name=resumed", "loop.max_steps=2"]) == 0
    assert train.main([*two, "run.name=resumed", "loop.max_steps=4"]) == 0
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    ckpt = Path(checkpointing.resolve(str(tmp_path / "resumed")))
    state = checkpointing.read_model(ckpt)
    assert "G_ema" in state["trainer"]["nets"] and state["trainer"]["g_ema_updates"] == 4
    straight = checkpointing.read_model(Path(checkpointing.resolve(str(tmp_path / "straight"))))
    assert straight["trainer"]["g_ema_updates"] == 4
    assert len({checkpointing.read_worker(ckpt, r)["state_digest"] for r in (0, 1)}) == 1

    lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in lines if "val/psnr" in r][-1]
    ema = scoring.evaluate(str(ckpt), str(sky / "val"), batch_size=2, progress=False, train_data="")
    raw = scoring.evaluate(str(ckpt), str(sky / "val"), batch_size=2, progress=False, train_data="", weights="raw")
    assert ema["count"] == last["val/count"] == 8
    assert ema["psnr"] == pytest.approx(last["val/psnr"], rel=1e-9) and raw["psnr"] != ema["psnr"]
