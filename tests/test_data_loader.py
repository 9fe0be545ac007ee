"""ClipLoader: equal batch counts per rank, order and exact resume, bad data, URL specs."""

import io
import logging
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch

from data_tools.synth import generate
from ssagan_dist.data import BadSampleError, ClipLoader, decode_clip, encode_clip, read_index, resolve_urls


def make_sky(path, clips, shard_clips, size=8, frames=2, seed=0):
    generate(str(path), clips, size=size, frames=frames, seed=seed, shard_clips=shard_clips, progress=False)
    return str(path)


def run_epoch(loader):
    return [(b["key"], b["video"]) for b in loader]


def keys_of(batches):
    return [k for keys, _ in batches for k in keys]


@pytest.mark.parametrize(
    "clips,shard_clips,shuffle_window",
    [(21, 7, None), (21, 7, 4), (9, 9, None), (9, 9, 3)],
    ids=["3shards", "3shards-window", "1shard", "1shard-window"],
)
def test_every_rank_gets_the_same_number_of_batches(tmp_path, clips, shard_clips, shuffle_window):
    url = make_sky(tmp_path / "ds", clips, shard_clips)
    assert len(read_index(url)["shards"]) == clips // shard_clips
    loaders = [ClipLoader(url, 2, rank=r, world_size=2, shuffle_window=shuffle_window) for r in range(2)]
    epochs = [run_epoch(loader) for loader in loaders]
    expected = clips // 4
    assert [len(loader) for loader in loaders] == [len(e) for e in epochs] == [expected, expected]
    keys = keys_of(epochs[0]) + keys_of(epochs[1])
    assert len(keys) == len(set(keys)) == expected * 4  # disjoint across ranks, remainder dropped


def test_order_depends_on_seed_and_epoch_not_workers(tmp_path):
    url = make_sky(tmp_path / "ds", 24, 8)
    base = ClipLoader(url, 3, rank=1, world_size=2, seed=5)
    first = run_epoch(base)
    second = run_epoch(base)  # iterating again moves to the next epoch
    assert base.epoch == 2 and keys_of(first) != keys_of(second)
    for workers in (1, 2):
        again = run_epoch(ClipLoader(url, 3, rank=1, world_size=2, seed=5, processes=workers))
        assert keys_of(again) == keys_of(first)
        assert all(torch.equal(a[1], b[1]) for a, b in zip(again, first))
    other = ClipLoader(url, 3, rank=1, world_size=2, seed=6)
    assert keys_of(run_epoch(other)) != keys_of(first)
    ordered = ClipLoader(url, 3, shuffle=False)
    assert keys_of(run_epoch(ordered)) == [k for s in read_index(url)["shards"] for k in s["keys"]]


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    url = make_sky(tmp_path / "ds", 30, 7)
    reference = ClipLoader(url, 2, rank=0, world_size=2, seed=3, processes=2)
    reference.set_epoch(4)
    full = run_epoch(reference)
    assert len(full) == 7

    interrupted = ClipLoader(url, 2, rank=0, world_size=2, seed=3, processes=2)
    interrupted.set_epoch(4)
    for step, _ in enumerate(interrupted):
        if step == 2:
            break
    state = interrupted.state_dict()
    assert state["epoch"] == 4 and state["consumed"] == 3

    resumed = ClipLoader(url, 2, rank=0, world_size=2, seed=3, processes=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a training loop calling set_epoch with the same epoch keeps the position
    rest = run_epoch(resumed)
    assert keys_of(rest) == keys_of(full[3:])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(rest, full[3:]))
    assert resumed.state_dict()["epoch"] == 5 and resumed.state_dict()["consumed"] == 0

    with pytest.raises(ValueError, match="world_size"):
        ClipLoader(url, 2, rank=0, world_size=1, seed=3).load_state_dict(state)


def corrupt_clip(shard_path, key):
    """Overwrite the bytes of one frame of ``key`` in place (offsets stay valid)."""
    with tarfile.open(shard_path) as tar:
        info = next(m for m in tar.getmembers() if m.name == f"{key}.jpg")
    with open(shard_path, "r+b") as f:
        f.seek(info.offset_data)
        f.write(b"\0" * info.size)


def test_corrupt_clip_is_named_or_skipped(tmp_path, caplog):
    url = make_sky(tmp_path / "ds", 12, 6)
    index = read_index(url)
    bad_key = index["shards"][1]["keys"][2]
    corrupt_clip(os.path.join(url, index["shards"][1]["name"]), bad_key)

    for workers in (0, 2):
        with pytest.raises(BadSampleError, match=rf"train-000001\.tar.*{bad_key}"):
            run_epoch(ClipLoader(url, 4, processes=workers))

    loader = ClipLoader(url, 4, skip_bad=True, processes=2)
    with caplog.at_level(logging.WARNING, logger="ssagan_dist.data.loader"):
        batches = run_epoch(loader)
    assert loader.skipped == 1 and loader.state_dict()["skipped"] == 1
    assert sorted(len(keys) for keys, _ in batches) == [3, 4, 4] and bad_key not in keys_of(batches)
    assert bad_key in caplog.text


def test_too_few_clips_is_a_clear_error(tmp_path):
    url = make_sky(tmp_path / "ds", 5, 5)
    with pytest.raises(ValueError, match="5 clips .* 4 rank"):
        ClipLoader(url, 2, world_size=4)


def test_url_specs_and_shards_without_index(tmp_path):
    url = make_sky(tmp_path / "ds", 12, 4)
    shards = [os.path.join(url, f"train-{i:06d}.tar") for i in range(3)]
    assert resolve_urls(url) == shards
    assert resolve_urls(os.path.join(url, "train-{000000..000002}.tar")) == shards
    assert resolve_urls(f"{shards[0]}, {shards[2]}") == [shards[0], shards[2]]
    indexed = keys_of(run_epoch(ClipLoader(url, 2, shuffle=False)))

    bare = tmp_path / "bare"
    shutil.copytree(url, bare)
    os.remove(bare / "index.json")
    with pytest.raises(FileNotFoundError, match="no index.json"):
        resolve_urls(str(bare))
    scanned = ClipLoader(str(bare / "train-{000000..000002}.tar"), 2, shuffle=False)
    assert keys_of(run_epoch(scanned)) == indexed


@pytest.mark.parametrize("side,members", [(16, ["jpg"]), (12, ["0000.jpg", "0001.jpg", "0002.jpg"])])
def test_jpeg_clips_round_trip(side, members):
    y, x = np.mgrid[0:side, 0:side]
    frames = np.stack([np.stack([x * 4, y * 4, np.full_like(x, 80 * i)], -1) for i in range(3)])
    frames = frames.astype(np.uint8)  # smooth gradients, a different blue level per frame
    encoded = dict(encode_clip(frames, "jpg", quality=95))
    assert sorted(encoded) == sorted(members)  # square multiples of 8: one strip per clip
    decoded = decode_clip(encoded, (3, 3, side, side))
    error = np.abs(decoded.astype(int) - frames)
    assert error.mean() < 2 and error.max() <= 8  # and so no frame bleeds into its neighbours


def test_npy_clips_are_exact_and_never_unpickled():
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_clip(dict(encode_clip(frames, "npy"))), frames)
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)  # expect: the decoder refuses it
    with pytest.raises(ValueError, match="bad .npy"):
        decode_clip({"npy": buf.getvalue()})
