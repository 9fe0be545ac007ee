"""The synthetic sky: deterministic, static skyline, clouds advected with the flag's wind."""

import numpy as np
import pytest

from data_tools import synth
from ssagan_dist.data import ClipLoader, read_index


def test_generate_is_deterministic_and_readable(tmp_path):
    a = synth.generate(str(tmp_path / "a"), 6, size=16, frames=4, seed=3, progress=False)
    b = synth.generate(str(tmp_path / "b"), 6, size=16, frames=4, seed=3, progress=False)
    c = synth.generate(str(tmp_path / "c"), 6, size=16, frames=4, seed=4, progress=False)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert [s["sha256"] for s in a["shards"]] != [s["sha256"] for s in c["shards"]]
    assert a["clip_shape"] == [3, 4, 16, 16] and a["total_clips"] == 6 and a["split"] == "train"
    assert read_index(str(tmp_path / "a"))["shards"][0]["keys"] == a["shards"][0]["keys"]
    batch = next(iter(ClipLoader(str(tmp_path / "a"), 6)))
    assert batch["video"].shape == (6, 3, 4, 16, 16)


def test_cli_writes_a_split(tmp_path):
    assert synth.main(["--out", str(tmp_path / "val"), "--clips", "3", "--size", "8", "--frames", "2",
                       "--seed", "1", "--split", "val", "--no-progress"]) == 0
    index = read_index(str(tmp_path / "val"))
    assert index["split"] == "val" and index["shards"][0]["name"] == "val-000000.tar"


@pytest.mark.parametrize("index", range(8))
def test_motion_is_predictable_from_the_first_frame(index):
    size, frames = 32, 8
    params = synth._clip_params(np.random.default_rng([0, index]), size, frames)
    video = synth.render_clip(params, size, frames).astype(np.int16)
    ground = np.arange(size)[:, None] >= (size - params["skyline"])[None, :]
    assert (video[:, ground] == video[0, ground]).all(), "skyline moved"
    flag = (video[0, ..., 0] > 200) & (video[0, ..., 1] < 60)
    assert flag.any() and (video[:, flag] == video[0, flag]).all(), "flag moved"
    pole_x = int(np.argmax(params["skyline"]))
    vx = params["wind"][0]
    assert np.sign(np.nonzero(flag)[1].mean() - pole_x) == np.sign(vx), "flag does not point downwind"
    # the sky (clouds) moves, and drifts in colour
    sky = ~ground & ~flag
    assert np.abs(video[-1][sky] - video[0][sky]).mean() > 3
    # clouds advected: frame T-1 shifted back by the wind matches frame 0 better than unshifted
    # (per-row means removed: the sky gradient and its colour drift are constant along rows)
    dx, dy = (int(round(v * (frames - 1))) for v in params["wind"])
    rows = slice(max(dy, 0) + 1, size // 2 + min(dy, 0))
    cols = slice(max(dx, 0), size + min(dx, 0))
    first, last = (f.mean(-1) - f.mean(-1).mean(1, keepdims=True) for f in (video[0], video[-1]))
    moved = np.abs(last[rows, cols] - first[rows.start - dy : rows.stop - dy, cols.start - dx : cols.stop - dx])
    still = np.abs(last[rows, cols] - first[rows, cols])
    assert moved.mean() < 0.7 * still.mean()
