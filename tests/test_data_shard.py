"""data_tools.shard on real inputs (JPEG frame trees, PyAV-encoded videos, stacked images) -> S3/local."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from data_tools import shard as shard_tool
from data_tools import verify as verify_tool
from data_tools.common import clip_key
from ssagan_dist.data import ClipLoader, read_index

T = 4
SIZE = 8
# long video -> short video -> frames; clips per short video = frames // T
TREE = {"vidA": {"a1": 13, "a2": 8}, "vidB": {"b1": 21}, "vidC": {"c1": 7, "c2": 4}}


def make_frame_tree(root: Path, tree=TREE, size=(SIZE, SIZE), seed=0) -> dict[str, np.ndarray]:
    """Sky-Timelapse-like JPEG tree with frames numbered from 1 (so lexical order is wrong).

    Returns {clip key: expected uint8 (T, H, W, 3)} for non-overlapping T-frame clips.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for vid, shorts in tree.items():
        for short, n in shorts.items():
            folder = root / vid / short
            folder.mkdir(parents=True)
            paths = []
            for i in range(1, n + 1):
                path = folder / f"{vid}_frames_{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
                paths.append(path)
            for first in range(0, n - T + 1, T):
                expected[clip_key(f"{vid}/{short}", first)] = np.stack(
                    [np.asarray(Image.open(p).convert("RGB")) for p in paths[first : first + T]]
                )
    return expected


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> uint8 (T, H, W, C)."""
    return ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def test_frames_tree_to_s3_verify_and_load_two_ranks_two_workers(tmp_path, s3_bucket, capsys):
    endpoint, bucket = s3_bucket
    expected = make_frame_tree(tmp_path / "sky")
    assert len(expected) == sum(n // T for shorts in TREE.values() for n in shorts.values()) == 12
    url = f"s3://{bucket}/sky/train"
    rc = shard_tool.main([
        "--source", str(tmp_path / "sky"), "--layout", "frames", "--out", url, "--size", str(SIZE),
        "--frames", str(T), "--format", "npy", "--shard-clips", "5", "--workers", "2",
        "--endpoint-url", endpoint, "--no-progress",
    ])
    assert rc == 0
    index = read_index(url, endpoint)
    assert [s["clips"] for s in index["shards"]] == [5, 5, 2]
    assert index["total_clips"] == 12 and index["clip_shape"] == [3, T, SIZE, SIZE]
    assert index["source"]["dropped_frames"] == sum(n % T for shorts in TREE.values() for n in shorts.values())

    capsys.readouterr()
    assert verify_tool.main([url, "--json", "--endpoint-url", endpoint]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["clips"] == 12 and report["shards"] == 3

    seen = {}
    lengths = []
    for rank in range(2):
        loader = ClipLoader(url, 2, rank=rank, world_size=2, processes=2, endpoint_url=endpoint)
        lengths.append(len(loader))
        for batch in loader:
            assert batch["video"].shape == (2, 3, T, SIZE, SIZE) and "label" not in batch
            for key, video in zip(batch["key"], batch["video"]):
                assert key not in seen, f"{key} seen twice"
                seen[key] = to_uint8(video)
    assert lengths == [3, 3]
    assert seen.keys() == expected.keys()
    for key, frames in expected.items():
        np.testing.assert_array_equal(seen[key], frames, err_msg=key)


def test_existing_dataset_needs_overwrite(tmp_path):
    make_frame_tree(tmp_path / "sky")
    args = dict(size=SIZE, frames=T, workers=1, progress_bar=False)
    shard_tool.shard(str(tmp_path / "sky"), "frames", str(tmp_path / "out"), **args)
    with pytest.raises(FileExistsError, match="overwrite"):
        shard_tool.shard(str(tmp_path / "sky"), "frames", str(tmp_path / "out"), **args)
    again = shard_tool.shard(str(tmp_path / "sky"), "frames", str(tmp_path / "out"), overwrite=True, **args)
    assert again["train"]["total_clips"] == 12


def test_test_fraction_splits_by_long_video(tmp_path):
    tree = {f"vid{i}": {f"s{i}a": 8, f"s{i}b": 5} for i in range(5)}  # 3 clips per long video
    make_frame_tree(tmp_path / "sky", tree)
    out = tmp_path / "out"
    indexes = shard_tool.shard(str(tmp_path / "sky"), "frames", str(out), size=SIZE, frames=T,
                               test_fraction=0.4, workers=1, progress_bar=False)
    train, test = indexes["train"], indexes["test"]
    assert set(train["source"]["groups"]).isdisjoint(test["source"]["groups"])
    assert len(test["source"]["groups"]) == 2 and train["total_clips"] == 9 and test["total_clips"] == 6
    assert read_index(str(out / "test"))["split"] == "test"
    assert all(k.startswith(tuple(test["source"]["groups"])) for s in test["shards"] for k in s["keys"])


def test_presplit_source_keeps_its_split(tmp_path):
    make_frame_tree(tmp_path / "src" / "sky_train", {"v1": {"s1": 8}})
    make_frame_tree(tmp_path / "src" / "sky_test", {"v2": {"s2": 4}}, seed=1)
    indexes = shard_tool.shard(str(tmp_path / "src"), "frames", str(tmp_path / "out"), size=SIZE, frames=T,
                               workers=1, progress_bar=False)
    assert {k: v["total_clips"] for k, v in indexes.items()} == {"test": 1, "train": 2}
    assert (tmp_path / "out" / "train" / "train-000000.tar").exists()


def test_squash_and_center_crop_of_wide_frames(tmp_path):
    make_frame_tree(tmp_path / "sky", {"v": {"s": 4}}, size=(64, 36))
    for crop in ("squash", "center"):
        idx = shard_tool.shard(str(tmp_path / "sky"), "frames", str(tmp_path / crop), size=16, frames=T, crop=crop,
                               workers=1, progress_bar=False)["train"]
        loader = ClipLoader(str(tmp_path / crop), 1, shuffle=False)
        assert next(iter(loader))["video"].shape == (1, 3, T, 16, 16)
        assert idx["clip_shape"] == [3, T, 16, 16]


def write_video(path: Path, n: int, codec: str, size=(40, 24), fps=10) -> list[np.ndarray]:
    """A real encoded video of n solid-colour frames (colour changes every frame)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colours = [np.array([(37 * i) % 200 + 30, (91 * i) % 200 + 30, (53 * i) % 200 + 30], np.uint8) for i in range(n)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for c in colours:
            frame = av.VideoFrame.from_ndarray(np.broadcast_to(c, (size[1], size[0], 3)).copy(), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return colours


def test_video_files_with_class_folders(tmp_path):
    src = tmp_path / "ucf"
    colours = {
        "ClassA/v_a.mp4": write_video(src / "ClassA" / "v_a.mp4", 10, "libx264"),
        "ClassB/v_b.avi": write_video(src / "ClassB" / "v_b.avi", 7, "mpeg4"),
    }
    out = tmp_path / "out"
    index = shard_tool.shard(str(src), "videos", str(out), size=SIZE, frames=3, workers=2, progress_bar=False)["train"]
    assert index["total_clips"] == 10 // 3 + 7 // 3
    assert index["classes"] == ["ClassA", "ClassB"] and index["labels"] and index["fps"] == 10.0
    assert verify_tool.verify(str(out))["ok"]
    loader = ClipLoader(str(out), 5, shuffle=False)
    batch = next(iter(loader))
    assert batch["label"].tolist() == [0, 0, 0, 1, 1]
    for key, video, label in zip(batch["key"], batch["video"], batch["label"]):
        source = ["ClassA/v_a.mp4", "ClassB/v_b.avi"][label]
        first = int(key.rsplit("_", 1)[1])
        assert key == clip_key(source, first)
        means = to_uint8(video).reshape(3, -1, 3).mean(axis=1)
        np.testing.assert_allclose(means, np.stack(colours[source][first : first + 3]), atol=12)


def test_stacked_tiny_videos(tmp_path):
    src = tmp_path / "beach"
    src.mkdir()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, SIZE, SIZE, 3), dtype=np.uint8)  # 9 frames -> 2 clips of 4, 1 dropped
    Image.fromarray(frames.reshape(9 * SIZE, SIZE, 3)).save(src / "clip.png")
    out = tmp_path / "out"
    index = shard_tool.shard(str(src), "stacked", str(out), size=SIZE, frames=T, frame_format="npy", workers=1,
                             progress_bar=False)["train"]
    assert index["total_clips"] == 2 and index["source"]["dropped_frames"] == 1 and not index["labels"]
    batch = next(iter(ClipLoader(str(out), 2, shuffle=False)))
    np.testing.assert_array_equal(np.stack([to_uint8(v) for v in batch["video"]]), frames[:8].reshape(2, T, SIZE, SIZE, 3))


def test_bad_source_is_named_or_skipped(tmp_path):
    make_frame_tree(tmp_path / "sky", {"v": {"s": 4, "t": 4}})
    bad = sorted((tmp_path / "sky" / "v" / "t").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(RuntimeError, match="v/t"):
        shard_tool.shard(str(tmp_path / "sky"), "frames", str(tmp_path / "out"), size=SIZE, frames=T, workers=1,
                         progress_bar=False)
    index = shard_tool.shard(str(tmp_path / "sky"), "frames", str(tmp_path / "out2"), size=SIZE, frames=T,
                             workers=1, progress_bar=False, skip_bad=True)["train"]
    assert index["total_clips"] == 1 and len(index["source"]["skipped_sources"]) == 1
