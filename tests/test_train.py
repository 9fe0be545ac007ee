"""The main job end to end on real local Ray clusters (token auth on), real shards, real S3 over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssagan_dist import checkpointing, experiment, train
from ssagan_dist.config import ConfigError
from ssagan_dist.experiment import load_config
from ssagan_dist.models import registry

# Small and fast: one worker, a couple of steps, validation and a checkpoint at the end.
FAST = ["model.flavor=tiny", "scaling.ranks=1", "loop.batch_size=2", "loop.max_steps=2",
        "loop.val_every=2", "loop.val_batches=1", "loop.log_every=1", "data.loader_processes=0",
        "optim.n_critic=1"]


def data_args(sky: Path) -> list[str]:
    return [f"data.train_urls={sky / 'train'}", f"data.val_urls={sky / 'val'}"]


def latest(run: Path) -> Path:
    return Path(checkpointing.resolve(str(run)))


def nets_state(run: Path) -> dict[str, torch.Tensor]:
    state = checkpointing.read_model(latest(run))["trainer"]["nets"]
    return {f"{net}.{k}": v for net, sd in state.items() for k, v in sd.items()}


# -- configuration fails fast, naming the key ----------------------------------------------------

@pytest.mark.parametrize("override, key", [
    (["loop.no_such_key=1"], "no_such_key"),
    (["loop.batch_size=many"], "batch_size"),
    (["loop.batch_size=0"], "loop.batch_size"),
    (["optim.n_critic=-1"], "optim.n_critic"),
    (["model.name=nope"], "model.name"),
    (["model.args.widthh=3"], "model.args"),
    (["ddp.sync_batchnorm=true"], "ddp.sync_batchnorm"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny_cpu", override)


def test_bad_config_exits_before_ray(capsys, ray_must_not_start):
    assert train.main(["--config", "tiny_cpu", "optim.lr_g=-1"]) == 2
    assert "optim.lr_g" in capsys.readouterr().err


def test_refine_model_needs_stage1_checkpoint():
    with pytest.raises(ConfigError, match="init.stage1_checkpoint"):
        load_config("tiny_cpu", ["model.name=mdgan_stage2"])


def test_every_preset_loads_and_every_key_in_it_is_read():
    import yaml

    from ssagan_dist.config import PRESET_DIR, leaf_keys, preset_names

    paper = ("ssagan_sky128", "ssagan_beach64", "mdgan_stage1", "mdgan_stage2", "ssagan_a", "ssagan_b", "hrvgan",
             "pix2pix_video")
    assert {"tiny_cpu", "defaults", *(f"paper/{n}" for n in paper), "zoo/ssagan", "zoo/ssagan_a"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.model.name in registry.names()
        unread = set(leaf_keys(yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {})) - experiment.validate(cfg).keys_read()
        assert not unread, f"preset {name} sets keys its model does not read: {unread}"


def test_no_preset_name_means_two_things_without_its_folder():
    """A preset is named with its folder (``paper/ssagan_a``, ``zoo/ssagan_a``); a top-level name
    (``--config tiny_cpu``) is no folder's file name too, so a bare name cannot mean two things
    again (``ssagan_a`` was the paper setup, ``zoo/ssagan_a`` a CPU recipe). Every YAML file but the
    sweeps is a listed preset."""
    from ssagan_dist.config import PRESET_DIR, preset_names

    names = preset_names()
    assert len(names) == len(set(names))
    top = {n for n in names if "/" not in n}
    in_folders = {n.rsplit("/", 1)[1] for n in names if "/" in n}
    assert not top & in_folders, f"these names are both a top-level preset and one in a folder: {top & in_folders}"
    files = {p.relative_to(PRESET_DIR).with_suffix("").as_posix() for p in PRESET_DIR.rglob("*.yaml")
             if p.relative_to(PRESET_DIR).parts[0] != "sweeps"}
    assert files == set(names)


def test_a_paper_setup_loads_by_its_old_bare_name_with_one_line(capsys, monkeypatch):
    from omegaconf import OmegaConf

    from ssagan_dist import config

    monkeypatch.setattr(config, "_told", set())
    old = load_config("ssagan_a")
    load_config("ssagan_a")
    assert OmegaConf.to_container(old) == OmegaConf.to_container(load_config("paper/ssagan_a"))
    told = [line for line in capsys.readouterr().err.splitlines() if "preset" in line]
    assert told == ["[config] preset ssagan_a is now paper/ssagan_a; the old name still works for now"]
    # a zoo recipe's bare name was never a preset, nor is a sweep: unknown, listing the presets
    for name in ("ssagan", "sweeps/tiny_asha"):
        with pytest.raises(ConfigError, match=r"unknown config preset .*paper/ssagan_a, .*zoo/ssagan_a"):
            load_config(name)


def test_data_model_shape_mismatch_is_caught(sky, tmp_path):
    cfg = load_config("tiny_cpu", [*FAST, *data_args(sky), "model.args.frames=16",
                                   f"run.storage_path={tmp_path}"])
    with pytest.raises(ConfigError, match="model.args"):
        train.prepare(cfg)


# -- distributed training ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_worker_runs(sky, tmp_path_factory):
    """Three trainings of 2 workers x batch 3, shared by the tests below (each a Ray Train run:
    the default suite's cost): `straight` to step 4, and `resumed`, stopped after 2 steps, then
    re-run under its name to 4. Validation every 2 steps on 5 held-out clips: fewer than one batch
    per worker (2 x 3 = 6 per step), so it pads and masks as evaluate does."""
    from data_tools import synth
    from tests.conftest import start_session_ray

    start_session_ray()
    root = tmp_path_factory.mktemp("two_workers")
    synth.generate(str(root / "val5"), clips=5, size=32, frames=8, seed=1, progress=False)
    two = [*FAST, f"data.train_urls={sky / 'train'}", f"data.val_urls={root / 'val5'}", "scaling.ranks=2",
           "loop.batch_size=3", "loop.max_steps=4", "loop.val_batches=0", f"run.storage_path={root}"]
    assert train.main(["--config", "tiny_cpu", *two, "run.name=straight"]) == 0
    # The same run stopped after 2 steps, then re-run under its name to 4.
    assert train.main(["--config", "tiny_cpu", *two, "run.name=resumed", "loop.max_steps=2"]) == 0
    assert train.main(["--config", "tiny_cpu", *two, "run.name=resumed"]) == 0
    return root


def test_two_workers_stay_in_sync_and_resume_bit_identically(two_worker_runs):
    root = two_worker_runs
    ckpt = latest(root / "straight")
    digests = {checkpointing.read_worker(ckpt, r)["state_digest"] for r in (0, 1)}
    assert len(digests) == 1, "ranks hold different G/D weights"

    straight, resumed = nets_state(root / "straight"), nets_state(root / "resumed")
    assert checkpointing.read_model(latest(root / "resumed"))["step"] == 4
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), f"{k} differs after resume"

    lines = [json.loads(x) for x in (root / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "val/psnr" in r] == [2, 4]
    assert {"val/psnr", "val/ssim", "val/mse", "val/baseline_psnr"} <= lines[-1].keys()
    # every validation scores the same held-out clips (not an exhausted loader: NaN means)
    assert all(r["val/count"] == lines[-1]["val/count"] > 0 for r in lines if "val/psnr" in r)
    # Validation used the checkpointed model's BatchNorm statistics (rank 0's, on every rank): the
    # held-out PSNR in training is what evaluate finds for the saved checkpoint on the same clips.
    from ssagan_dist import scoring

    scored = scoring.evaluate(str(root / "resumed"), str(root / "val5"), batch_size=2, progress=False)
    assert scored["count"] == lines[-1]["val/count"] == 5
    assert scored["psnr"] == pytest.approx(lines[-1]["val/psnr"], rel=1e-9)
    assert scored["ssim"] == pytest.approx(lines[-1]["val/ssim"], rel=1e-9)
    samples = root / "straight" / "samples"
    assert (samples / "step_000000004.png").stat().st_size > 0
    assert (samples / "step_000000004.gif").stat().st_size > 0


def test_a_val_set_smaller_than_one_batch_per_worker_is_scored_whole(two_worker_runs):
    """5 held-out clips, 2 workers x batch 3 = 6 per step: validation pads and masks (as evaluate
    does) and scores each clip exactly once, the same scores evaluate finds for the checkpoint."""
    from ssagan_dist import scoring

    root = two_worker_runs
    records = [r for r in map(json.loads, (root / "straight" / "metrics.jsonl").read_text().splitlines())
               if "val/psnr" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["val/count"] == r["val/baseline_count"] == 5 for r in records)
    scored = scoring.evaluate(str(root / "straight"), str(root / "val5"), batch_size=4, progress=False)
    assert scored["count"] == 5 and scored["psnr"] == pytest.approx(records[-1]["val/psnr"], rel=1e-9)


def test_evaluate_and_predict_from_a_checkpoint(two_worker_runs, sky, tmp_path):
    from ssagan_dist import predict, scoring

    run = two_worker_runs / "straight"
    result = scoring.evaluate(str(run), str(sky / "val"), batch_size=2, progress=False)
    assert result["step"] == 4 and result["count"] == 8
    assert 0 < result["baseline_psnr"] < 100 and 0 < result["psnr"] < 100
    out = tmp_path / "pred.gif"
    pred = predict.predict(str(run), str(out), data=str(sky / "val"))
    assert pred.shape == (3, 8, 32, 32) and out.stat().st_size > 0
    from PIL import Image

    Image.fromarray(((pred[:, 0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()).save(tmp_path / "p.png")
    assert predict.main(["--checkpoint", str(run), "--image", str(tmp_path / "p.png"),
                         "--out", str(tmp_path / "pred.mp4")]) == 0
    assert (tmp_path / "pred.mp4").stat().st_size > 0


@pytest.mark.slow
def test_data_and_checkpoints_on_s3_and_resume_from_there(ray_cluster, s3_bucket, tmp_path):
    from data_tools import synth

    endpoint, bucket = s3_bucket
    for split, clips, seed in (("train", 8, 0), ("val", 4, 1)):
        synth.generate(f"s3://{bucket}/sky/{split}", clips=clips, size=32, frames=8, seed=seed,
                       endpoint_url=endpoint, progress=False)
    common = [*FAST, f"data.train_urls=s3://{bucket}/sky/train", f"data.val_urls=s3://{bucket}/sky/val",
              f"run.storage_path=s3://{bucket}/runs", f"run.s3_endpoint={endpoint}", "run.name=on_s3"]
    assert train.main(["--config", "tiny_cpu", *common]) == 0
    assert train.main(["--config", "tiny_cpu", *common, "loop.max_steps=4"]) == 0

    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
        Bucket=bucket, Prefix="runs/on_s3/")["Contents"]]
    assert "runs/on_s3/checkpoint_000000004/model.pt" in keys
    assert "runs/on_s3/metrics.jsonl" in keys
    trainer, cfg, state = experiment.load_trainer(f"s3://{bucket}/runs/on_s3", endpoint_url=endpoint)
    assert state["step"] == 4  # resumed from the step-2 checkpoint on S3, not restarted


# Through Ray in the default suite: hrvgan and convlstm_gan here, ssagan (tiny_cpu) in the
# two-worker runs above, mdgan_stage1 and mdgan_stage2 in the refine test below; the other four
# (each also trained in-process by tests/test_trainers_zoo.py) and ssagan from the `defaults`
# config with the slow tests.
@pytest.mark.parametrize("model", ["hrvgan", "convlstm_gan",
                                   *(pytest.param(m, marks=pytest.mark.slow)
                                     for m in ("ssagan", "mdgan_stage1", "pix2pix_video", "video3d_gan", "dcgan",
                                               "ssagan_a"))])
def test_every_trainer_runs_through_the_entry_point(ray_cluster, model, tmp_path):
    from data_tools import synth

    args = [*FAST, f"model.name={model}", f"run.storage_path={tmp_path}", f"run.name={model}"]
    _, frames, size, _ = experiment.validate(load_config("defaults", args)).clip_shape or [3, 8, 32, 32]
    for split, clips in (("train", 4), ("val", 2)):
        synth.generate(str(tmp_path / split), clips=clips, size=size, frames=frames, seed=0, progress=False)
    assert train.main(["--config", "defaults", *args, *data_args(tmp_path)]) == 0
    assert checkpointing.read_model(latest(tmp_path / model))["step"] == 2


@pytest.mark.parametrize("model", ["mdgan_stage2", pytest.param("ssagan_b", marks=pytest.mark.slow)])
def test_refine_trainers_start_from_a_stage1_checkpoint(ray_cluster, model, sky, tmp_path):
    stage1 = "mdgan_stage1"  # SSA-GAN (b) adds SSA to Stage II only; its Stage I is MD-GAN's
    base = [*FAST, *data_args(sky), f"run.storage_path={tmp_path}"]
    assert train.main(["--config", "defaults", *base, f"model.name={stage1}", "run.name=stage1"]) == 0
    assert train.main(["--config", "defaults", *base, f"model.name={model}", "run.name=stage2",
                       f"init.stage1_checkpoint={tmp_path / 'stage1'}"]) == 0
    assert checkpointing.read_model(latest(tmp_path / "stage1"))["step"] == 2
    assert checkpointing.read_model(latest(tmp_path / "stage2"))["step"] == 2
    g1 = checkpointing.read_model(latest(tmp_path / "stage1"))["trainer"]["nets"]["G"]
    frozen = checkpointing.read_model(latest(tmp_path / "stage2"))["trainer"]["nets"]["G_stage1"]
    for k in g1:
        assert torch.equal(g1[k], frozen[k]), f"G_stage1.{k} is not the Stage-I generator"


def test_a_diverged_run_stops_with_an_error_and_saves_no_nan_checkpoint(ray_cluster, sky, tmp_path, capsys):
    args = [*FAST, *data_args(sky), f"run.storage_path={tmp_path}", "run.name=nan", "optim.lr_g=1e30",
            "optim.lr_d=1e30", "loop.max_steps=6", "loop.val_every=6"]
    assert train.main(["--config", "tiny_cpu", *args]) == 1
    err = capsys.readouterr().err
    assert "diverged at step" in err and "lr_g=1e+30" in err
    lines = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]  # valid JSON
    assert "diverged" in lines[-1]["error"]
    assert not list((tmp_path / "nan").glob("checkpoint_*")), "a checkpoint was saved from a diverged run"
