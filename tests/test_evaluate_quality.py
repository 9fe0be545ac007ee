"""scoring.score: every held-out clip scored once at any batch size and world size; the baselines
are scored on the same clips with the same metric code as the model; the report files.

Real components: synthetic-sky shards read by ClipLoader, a gloo process group in two processes.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from data_tools.synth import generate
from ssagan_dist import evaluate, metrics, scoring
from ssagan_dist.data import ClipLoader
from ssagan_dist.scoring import Extremes, mean_change, score, with_mean_change, write_report

FRAMES = 4


class CopyFrame:
    """A 'trainer' that predicts copy-frame: its scores must equal the copy-frame baseline's."""

    def predict(self, batch):
        return batch["video"][:, :, :1].expand_as(batch["video"])


class MeanChange:
    def __init__(self, change):
        self.change = change

    def predict(self, batch):
        return with_mean_change(batch["video"], self.change)


class Darken:
    """A fixed, clip-dependent prediction whose scores differ from the baselines."""

    def predict(self, batch):
        v = batch["video"]
        return (v[:, :, :1] * 0.9).expand_as(v)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    generate(str(root / "val"), 8, size=16, frames=FRAMES, seed=1, shard_clips=3, progress=False)
    generate(str(root / "train"), 12, size=16, frames=FRAMES, seed=0, progress=False)
    return str(root / "val"), str(root / "train")


def _loader(url, batch_size, rank=0, world=1):
    return ClipLoader(url, batch_size, shuffle=False, rank=rank, world_size=world, drop_last=False)


def test_every_clip_scored_once_at_every_batch_size(held_out):
    val, _ = held_out
    reference, _ = score(Darken(), _loader(val, 8), FRAMES, "cpu")
    assert reference["count"] == 8
    for bs in range(1, 17):
        r, _ = score(Darken(), _loader(val, bs), FRAMES, "cpu")
        assert (r["count"], r["baseline_count"]) == (8, 8), bs
        for key in ("psnr", "ssim", "mse", "baseline_psnr", "baseline_ssim"):
            assert r[key] == pytest.approx(reference[key], rel=1e-12), (bs, key)


def test_a_training_loader_is_scored_whole_and_left_as_it_was(held_out):
    val, _ = held_out
    loader = ClipLoader(val, 3, shuffle=True)  # training mode: 2 batches of 3, 2 clips dropped
    assert len(loader) == 2
    r, _ = score(Darken(), loader, FRAMES, "cpu")
    assert r["count"] == 8 and len(loader) == 2 and loader.drop_last


def _two_ranks(rank: int, port: int, val: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = {bs: score(Darken(), _loader(val, bs, rank, 2), FRAMES, "cpu")[0] for bs in range(1, 17)}
        if rank == 0:
            with open(out, "w") as f:
                json.dump({bs: {k: r[k] for k in ("count", "psnr", "ssim", "true_displacement", "pred_displacement",
                                                  "direction_agreement")} for bs, r in results.items()}, f)
    finally:
        dist.destroy_process_group()


def test_every_clip_scored_once_on_two_ranks(held_out, tmp_path):
    from tests.conftest import free_port

    val, _ = held_out
    out = tmp_path / "two_ranks.json"
    mp.start_processes(_two_ranks, args=(free_port(), val, str(out)), nprocs=2, join=True, start_method="spawn")
    one_rank, _ = score(Darken(), _loader(val, 8), FRAMES, "cpu")
    for bs, r in json.loads(out.read_text()).items():
        assert r["count"] == 8, bs
        assert r["psnr"] == pytest.approx(one_rank["psnr"], rel=1e-12), bs
        assert r["ssim"] == pytest.approx(one_rank["ssim"], rel=1e-12), bs
        for key in ("true_displacement", "pred_displacement", "direction_agreement"):  # gathered per clip
            assert r[key] == pytest.approx(one_rank[key], rel=1e-12), (bs, key)


def test_baselines_use_the_same_frames_and_metric_as_the_model(held_out):
    val, train = held_out
    change = mean_change(_loader(train, 5))
    copied, _ = score(CopyFrame(), _loader(val, 3), FRAMES, "cpu", change=change)
    moved, _ = score(MeanChange(change), _loader(val, 3), FRAMES, "cpu", change=change)
    for name in ("mse", "psnr", "ssim"):
        for suffix in ("", "_curve"):
            assert copied[name + suffix] == copied["baseline_" + name + suffix]
            assert moved[name + suffix] == moved["mean_change_" + name + suffix]
    assert copied["baseline_psnr_curve"][0] == metrics.PSNR_CAP  # frame 0 is the input itself
    assert copied["psnr"] != copied["mean_change_psnr"]


def test_mean_change_is_the_training_clips_mean_motion(held_out):
    _, train = held_out
    clips = torch.cat([b["video"] for b in ClipLoader(train, 12, shuffle=False)]).double()
    expected = (clips - clips[:, :, :1]).mean(0)
    for bs in (1, 5, 12):
        got = mean_change(_loader(train, bs))
        assert got.shape == (3, FRAMES, 16, 16)
        assert torch.allclose(got, expected, atol=1e-12)
    assert torch.equal(mean_change(_loader(train, 5))[:, 0], torch.zeros(3, 16, 16))


def test_report_files(held_out, tmp_path):
    val, train = held_out
    keep = Extremes(2)
    r, _ = score(Darken(), _loader(val, 3), FRAMES, "cpu", change=mean_change(_loader(train, 4)), extremes=keep)
    worst, best = keep.clips()
    assert [g for g, *_ in worst] == sorted(g for g, *_ in worst) and worst[0][0] <= best[-1][0]
    assert worst[0][0] <= best[0][0]
    write_report({**r, "model": "darken", "data": val}, str(tmp_path), keep)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["count"] == 8 and len(saved["ssim_curve"]) == FRAMES
    with Image.open(tmp_path / "per_frame.png") as png:
        assert png.width == 3 * 640  # PSNR, SSIM and cloud-displacement panels
    with Image.open(tmp_path / "extremes.png") as png:
        assert png.height > 4 * 2 * 16
    table = scoring.format_table(r)
    assert "copy frame" in table and "mean training change" in table


def test_evaluate_cli_on_an_untrained_residual_checkpoint(tmp_path, capsys):
    """The real command on a real checkpoint: the preset's untrained residual G is copy-frame, so
    its scores equal the copy-frame baseline's; the report files are written."""
    from ssagan_dist import checkpointing, experiment
    from ssagan_dist.experiment import load_config

    generate(str(tmp_path / "val"), 5, size=32, frames=8, seed=1, progress=False)
    generate(str(tmp_path / "train"), 6, size=32, frames=8, seed=0, progress=False)
    cfg = load_config("tiny_cpu", [f"data.train_urls={tmp_path / 'train'}", f"data.val_urls={tmp_path / 'val'}",
                                   "model.args.output=residual"])
    ckpt = tmp_path / "run" / "checkpoint_000000000"
    ckpt.mkdir(parents=True)
    checkpointing.write(ckpt, rank=0, worker_state={}, trainer=experiment.build_trainer(cfg), step=0,
                        clip_shape=[3, 8, 32, 32], cfg=cfg)
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "val"), "--batch-size", "2",
                          "--out", str(tmp_path / "report"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["count"] == 5 and r["output"] == "residual" and r["train_data"] == str(tmp_path / "train")
    assert (r["psnr"], r["ssim"]) == (r["baseline_psnr"], r["baseline_ssim"])
    assert "mean_change_psnr" in r
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"scores.json", "per_frame.png", "extremes.png"}
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "val"),
                          "--train-data", str(tmp_path / "missing")]) == 2
    assert "--train-data" in capsys.readouterr().err


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as training leaves it: checkpoints at steps 2, 4 and 6 of the preset (real
    checkpoint files, different weights) and metrics.jsonl with a validation record at each; the
    best validation PSNR is at step 4. (Written here, not by a Ray training, to be fast.)"""
    from ssagan_dist import checkpointing, experiment
    from ssagan_dist.experiment import load_config

    generate(str(tmp_path / "test"), 5, size=32, frames=8, seed=1, progress=False)
    generate(str(tmp_path / "train"), 6, size=32, frames=8, seed=0, progress=False)
    cfg = load_config("tiny_cpu", [f"data.train_urls={tmp_path / 'train'}", "data.val_urls=/validation"])
    run = tmp_path / "run"
    lines = []
    for step, val_psnr in ((2, 20.0), (4, 23.5), (6, 21.0)):
        torch.manual_seed(step)
        trainer = experiment.build_trainer(cfg)
        with torch.no_grad():  # the zero-initialised last layer moved: each step predicts differently
            for p in trainer.nets["G"].parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ckpt = run / checkpointing.checkpoint_dir_name(step)
        ckpt.mkdir(parents=True)
        checkpointing.write(ckpt, rank=0, worker_state={}, trainer=trainer, step=step, clip_shape=[3, 8, 32, 32],
                            cfg=cfg)
        lines += [json.dumps({"step": step - 1, "train/g_loss": 1.0}),
                  json.dumps({"step": step, "val/psnr": val_psnr, "val/ssim": 0.5, "val/baseline_psnr": 22.0,
                              "val/baseline_ssim": 0.4})]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run, str(tmp_path / "test")


def test_pick_best_scores_the_checkpoint_with_the_best_validation_metric(run_folder, capsys):
    run, test = run_folder
    best = scoring.evaluate(str(run), test, batch_size=2, progress=False, pick="best", train_data="")
    assert (best["step"], best["pick"], best["pick_metric"], best["pick_value"]) == (4, "best", "val/psnr", 23.5)
    latest = scoring.evaluate(str(run), test, batch_size=2, progress=False, train_data="")
    assert (latest["step"], latest["pick"]) == (6, "latest")  # the default: the run's latest checkpoint
    direct = scoring.evaluate(str(run / "checkpoint_000000004"), test, batch_size=2, progress=False, pick="best",
                               train_data="")
    assert direct["pick"] == "given" and direct["psnr"] == best["psnr"] != latest["psnr"]
    assert evaluate.main(["--checkpoint", str(run), "--data", test, "--pick", "best", "--train-data", ""]) == 0
    assert "at step 4, the best val/psnr (23.5) of the run" in capsys.readouterr().out


def test_pick_best_names_what_is_missing(run_folder):
    run, test = run_folder
    with pytest.raises(ValueError, match="--pick 'newest': one of latest, best"):
        scoring.pick_checkpoint(str(run), "newest")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 6, "train/g_loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl records no val/psnr at the steps of .*--pick latest"):
        scoring.pick_checkpoint(str(run), "best")
    (run / "metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics.jsonl does not exist"):
        scoring.pick_checkpoint(str(run), "best")


def test_quality_benchmark_records_every_checkpoint_and_summarises_seeds(run_folder):
    """The benchmark's per-checkpoint record (validation from metrics.jsonl, test from evaluate)
    and its mean ± sample std over seeds."""
    from ssagan_dist.bench import quality

    run, test = run_folder
    record = quality.checkpoint_record(str(run), test)
    assert [c["step"] for c in record] == [2, 4, 6]
    assert [c["val_psnr"] - c["val_baseline_psnr"] for c in record] == [-2.0, 1.5, -1.0]
    picked = scoring.evaluate(str(run), test, progress=False, pick="best", train_data="")
    assert record[1]["test_psnr"] == pytest.approx(picked["psnr"])
    assert "| 4 | +1.500 | +0.1000 |" in quality.checkpoint_table(record)

    average = quality.averaged_generator(picked["checkpoint"], {"val": test, "test": test})
    assert average["checkpoints_averaged"] == 2  # steps 2 and 4
    assert average["picked_test_d_psnr"] == pytest.approx(picked["psnr"] - picked["baseline_psnr"])
    assert average["average_test_d_psnr"] != pytest.approx(average["picked_test_d_psnr"])
    assert average["validation_prefers"] == ("average" if average["average_val_d_psnr"] > average["picked_val_d_psnr"]
                                             else "picked")

    def row(seed, gain):
        return {"data": "sky", "output": "residual", "seed": seed, "psnr": 20 + gain, "baseline_psnr": 20.0,
                "ssim": 0.5, "baseline_ssim": 0.5, "checkpoints": record}

    summary = quality.summarise([row(0, 1.0), row(1, 2.0), row(2, 3.0)])
    assert summary["d_psnr"]["mean"] == pytest.approx(2.0) and summary["d_psnr"]["std"] == pytest.approx(1.0)
    assert summary["d_psnr"]["min"] == pytest.approx(1.0) and summary["seeds"] == [0, 1, 2]
    assert "+2.000 ± 1.000 (min +1.000)" in quality.summary_table([summary])


# -- motion measures, oracles and per-clip values (issue #30) -------------------------------------

class Truth:
    """A 'trainer' that predicts the real clip itself: every motion measure at its best."""

    def predict(self, batch):
        return batch["video"]


SKY_CLIPS, SKY_FRAMES = 12, 8


@pytest.fixture(scope="module")
def skies(tmp_path_factory):
    """32x32x8 synthetic skies (the demo's size): clouds move up to 14 px over a clip."""
    root = tmp_path_factory.mktemp("skies")
    generate(str(root / "val"), SKY_CLIPS, size=32, frames=SKY_FRAMES, seed=99, shard_clips=5, progress=False)
    return str(root / "val")


def test_motion_measures_copy_frame_zero_truth_one_and_the_oracles(skies):
    copied, _ = score(CopyFrame(), _loader(skies, 5), SKY_FRAMES, "cpu")
    truth, _ = score(Truth(), _loader(skies, 5), SKY_FRAMES, "cpu")
    for r in (copied, truth):
        assert r["count"] == SKY_CLIPS and r["true_displacement"] > 5
        assert r["baseline_direction_agreement"] == 0.0 and r["baseline_pred_displacement"] == 0.0
        assert (r["oracle_drift_count"] == r["oracle_motion_count"] == r["oracle_seen_count"]
                == r["oracle_exact_count"] == SKY_CLIPS)
    assert copied["direction_agreement"] == 0.0 and copied["pred_displacement"] == 0.0
    assert copied["magnitude_ratio"] == 0.0 and copied["pred_frame_change"] == 0.0
    assert truth["direction_agreement"] == 1.0
    for key in ("magnitude_ratio", "magnitude_ratio_median", "along_ratio"):
        assert truth[key] == pytest.approx(1.0, abs=1e-12)
    assert truth["pred_frame_change"] == truth["true_frame_change"] > 0
    assert len(truth["displacement_curve"]) == len(truth["true_displacement_curve"]) == SKY_FRAMES
    assert truth["displacement_curve"] == truth["true_displacement_curve"]
    # the oracles: exact re-render within JPEG error; moving clouds agree, still clouds do not
    assert truth["oracle_exact_psnr"] > 35 > max(truth["oracle_drift_psnr"], truth["oracle_motion_psnr"])
    assert truth["oracle_drift_psnr"] > truth["baseline_psnr"]
    assert truth["oracle_motion_direction_agreement"] >= 0.9 and truth["oracle_drift_direction_agreement"] == 0.0
    assert truth["oracle_exact_direction_agreement"] == 1.0
    # what frame 0 shows, known exactly; the clouds it does not show, guessed
    assert truth["oracle_exact_psnr"] > truth["oracle_seen_psnr"] > truth["oracle_motion_psnr"] + 1
    assert truth["oracle_seen_direction_agreement"] >= 0.9
    # the estimator against the recorded wind
    assert truth["true_displacement"] == pytest.approx(truth["wind_displacement"], rel=0.1)
    assert truth["true_displacement_error"] < 1.5
    table = scoring.format_table(truth)
    assert "Cloud motion" in table and "oracle: true drift, clouds still" in table and "recorded wind" in table


def test_per_clip_values_are_the_same_at_every_batch_size(skies):
    results = {bs: score(Darken(), _loader(skies, bs), SKY_FRAMES, "cpu", per_clip=True)[0] for bs in (5, 12)}
    reference = results[12]
    each = reference["per_clip"]
    assert each["key"] == sorted(each["key"]) and len(each["key"]) == SKY_CLIPS
    for key in ("psnr", "baseline_psnr", "oracle_drift_psnr", "oracle_motion_ssim", "pred_displacement",
                "true_displacement", "direction_agreement", "baseline_direction_agreement", "pred_dx", "true_dy",
                "wind_dx", "true_frame_change", "oracle_motion_magnitude_ratio"):
        assert len(each[key]) == SKY_CLIPS, key
    assert sum(each["psnr"]) / SKY_CLIPS == pytest.approx(reference["psnr"], rel=1e-12)
    assert sum(each["direction_agreement"]) / SKY_CLIPS == reference["direction_agreement"]
    assert sum(each["true_displacement"]) / SKY_CLIPS == pytest.approx(reference["true_displacement"], rel=1e-12)
    for bs, r in results.items():
        assert r["per_clip"] == each, bs
        for key in (*scoring.MOTION_TRUE_KEYS, *scoring.MOTION_SERIES_KEYS, "oracle_motion_direction_agreement"):
            assert r[key] == reference[key], (bs, key)
    assert "per_clip" not in score(Darken(), _loader(skies, 5), SKY_FRAMES, "cpu")[0]


def test_motion_and_oracles_can_be_left_out_and_need_a_synthetic_source(skies, tmp_path):
    plain, _ = score(Darken(), _loader(skies, 6), SKY_FRAMES, "cpu", measure_motion=False, oracles=False)
    assert not any(k.startswith("oracle_") or "displacement" in k for k in plain)
    full, _ = score(Darken(), _loader(skies, 6), SKY_FRAMES, "cpu")
    assert all(plain[k] == full[k] for k in plain)  # MSE/PSNR/SSIM do not change
    # the same clips under another tool's name: motion measured, no oracles (no parameters to render)
    import shutil

    other = tmp_path / "other"
    shutil.copytree(skies, other)
    index = json.loads((other / "index.json").read_text())
    index["source"] = {"tool": "data_tools.shard"}
    (other / "index.json").write_text(json.dumps(index))
    r, _ = score(Darken(), _loader(str(other), 6), SKY_FRAMES, "cpu")
    assert "true_displacement" in r and "wind_displacement" not in r
    assert not any(k.startswith("oracle_") for k in r)


def _two_ranks_per_clip(rank: int, port: int, val: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = {bs: score(Darken(), _loader(val, bs, rank, 2), SKY_FRAMES, "cpu", per_clip=True)[0]
                   for bs in (1, 5)}
        if rank == 0:
            with open(out, "w") as f:
                json.dump({bs: {k: v for k, v in r.items() if not k.endswith("_curve")}
                           for bs, r in results.items()}, f)
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (~20 s on a busy 2-core machine); the gathered motion
# summaries are also checked by test_every_clip_scored_once_on_two_ranks
def test_motion_and_per_clip_values_on_two_ranks(skies, tmp_path):
    from tests.conftest import free_port

    out = tmp_path / "two_ranks.json"
    mp.start_processes(_two_ranks_per_clip, args=(free_port(), skies, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    one_rank, _ = score(Darken(), _loader(skies, 5), SKY_FRAMES, "cpu", per_clip=True)
    for bs, r in json.loads(out.read_text()).items():
        assert r["count"] == SKY_CLIPS, bs
        assert r["per_clip"] == json.loads(json.dumps(one_rank["per_clip"])), bs
        for key in (*scoring.MOTION_TRUE_KEYS, *scoring.MOTION_SERIES_KEYS, "wind_displacement",
                    "oracle_drift_psnr", "oracle_motion_direction_agreement"):
            assert r[key] == pytest.approx(one_rank[key], rel=1e-12), (bs, key)


def test_report_marks_the_motion(skies, tmp_path):
    keep = Extremes(2)
    r, _ = score(Darken(), _loader(skies, 6), SKY_FRAMES, "cpu", extremes=keep, per_clip=True)
    write_report({**r, "model": "darken", "data": skies}, str(tmp_path), keep)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert "per_clip" not in saved and saved["true_displacement"] == r["true_displacement"]
    assert json.loads((tmp_path / "per_clip.json").read_text())["key"] == r["per_clip"]["key"]
    with Image.open(tmp_path / "extremes.png") as png:
        colours = {c for _, c in png.convert("RGB").getcolors(1 << 20)}
    from ssagan_dist import visualize

    assert visualize.TRUE_COLOUR in colours and visualize.PRED_COLOUR in colours
