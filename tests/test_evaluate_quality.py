"""evaluate.score: every held-out clip scored once at any batch size and world size; the baselines
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
from ssagan_dist import evaluate, metrics
from ssagan_dist.data import ClipLoader
from ssagan_dist.evaluate import Extremes, mean_change, score, with_mean_change, write_report

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
                json.dump({bs: {k: r[k] for k in ("count", "psnr", "ssim")} for bs, r in results.items()}, f)
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
        assert png.width == 2 * 640  # PSNR and SSIM panels
    with Image.open(tmp_path / "extremes.png") as png:
        assert png.height > 4 * 2 * 16
    table = evaluate.format_table(r)
    assert "copy frame" in table and "mean training change" in table


def test_evaluate_cli_on_an_untrained_residual_checkpoint(tmp_path, capsys):
    """The real command on a real checkpoint: the preset's untrained residual G is copy-frame, so
    its scores equal the copy-frame baseline's; the report files are written."""
    from ssagan_dist import checkpointing, factory
    from ssagan_dist.config import load_config

    generate(str(tmp_path / "val"), 5, size=32, frames=8, seed=1, progress=False)
    generate(str(tmp_path / "train"), 6, size=32, frames=8, seed=0, progress=False)
    cfg = load_config("tiny_cpu", [f"data.train_urls={tmp_path / 'train'}", f"data.val_urls={tmp_path / 'val'}"])
    ckpt = tmp_path / "run" / "checkpoint_000000000"
    ckpt.mkdir(parents=True)
    checkpointing.write(ckpt, rank=0, worker_state={}, trainer=factory.build_trainer(cfg), step=0,
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
