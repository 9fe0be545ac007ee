import av
import numpy as np
import pytest
import torch
from PIL import Image

from ssagan_dist import visualize
from ssagan_dist.visualize import (
    CLIP_GAP,
    GAP,
    HEADER_H,
    LABEL_W,
    psnr_curve_png,
    sample_strip,
    save_gif,
    save_image,
    save_mp4,
    save_video,
)


def moving_clip(c=3, t=6, h=24, w=20) -> torch.Tensor:
    """A smooth pattern drifting right by one pixel per frame: every frame differs."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    frames = [torch.stack([torch.sin((x - i) / 3 + k) * torch.cos(y / 4) for k in range(c)]) for i in range(t)]
    return torch.stack(frames, dim=1) * 0.9  # (C, T, H, W) in [-1, 1]


def only(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_gif_has_every_frame_and_loops(tmp_path):
    clip = moving_clip()
    save_gif(clip, tmp_path / "clip.gif", fps=10, scale=2)
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.n_frames == 6 and gif.is_animated
        assert gif.size == (40, 48)
        assert gif.info["loop"] == 0 and gif.info["duration"] == 100
    assert only(tmp_path) == ["clip.gif"]  # no temporary file left behind


def test_gif_side_by_side_and_auto_scale(tmp_path):
    clip = moving_clip(c=1, h=32, w=32)
    save_gif(clip, tmp_path / "pair.gif", real=clip.flip(1))
    with Image.open(tmp_path / "pair.gif") as gif:
        assert gif.n_frames == 6
        assert gif.size == ((32 + GAP + 32) * 4, 32 * 4)  # shorter side enlarged to >= 128


def test_mp4_decodes_to_every_frame(tmp_path):
    clip = moving_clip(t=7, h=33, w=21)  # odd sides get padded to even ones
    save_mp4(clip, tmp_path / "clip.mp4", fps=8, scale=1)
    with av.open(str(tmp_path / "clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 7
    assert frames[0].shape == (34, 22, 3)
    expected = visualize.to_uint8_frames(clip).astype(np.float64)
    error = np.abs(np.stack(frames)[:, :33, :21].astype(np.float64) - expected).mean()
    assert error < 12  # lossy yuv420p, but the content is there
    assert only(tmp_path) == ["clip.mp4"]


def test_save_video_picks_the_format(tmp_path):
    clip = moving_clip(t=3)
    save_video(clip, tmp_path / "a.gif", scale=1)
    save_video(clip, tmp_path / "a.mp4", scale=1)
    assert Image.open(tmp_path / "a.gif").format == "GIF"
    with av.open(str(tmp_path / "a.mp4")) as container:
        assert container.streams.video[0].frames in (0, 3)  # some muxers leave the count unset
    with pytest.raises(ValueError, match=r"a\.avi"):
        save_video(clip, tmp_path / "a.avi")


def test_sample_strip_size(tmp_path):
    n, c, t, h, w = 5, 3, 8, 16, 16
    real = torch.stack([moving_clip(c, t, h, w)] * n)
    pred = real.flip(2)
    strip = sample_strip(real[:, :, 0], pred, real, times=[1, 4, 7], max_clips=3, scale=2)
    tile = 2 * 16
    pair_h = 2 * (tile + GAP) + CLIP_GAP
    assert strip.size == (LABEL_W + 4 * (tile + GAP), HEADER_H + 3 * pair_h - CLIP_GAP)
    assert strip.mode == "RGB"
    # the real frame at t=4 of clip 0 sits in column 2 of row 1
    x, y = LABEL_W + 2 * (tile + GAP), HEADER_H + tile + GAP
    tile_pixels = np.asarray(strip)[y : y + tile : 2, x : x + tile : 2]
    np.testing.assert_array_equal(tile_pixels, visualize.to_uint8_frames(real[0])[4])
    save_image(strip, tmp_path / "strip.png")
    assert Image.open(tmp_path / "strip.png").size == strip.size


def test_sample_strip_defaults_and_errors():
    real = moving_clip(c=1, t=32, h=8, w=8).unsqueeze(0)  # grey, tiny frames: enlarged 8x
    strip = sample_strip(real[:, :, 0], real, real)
    assert strip.size == (LABEL_W + 7 * (64 + GAP), HEADER_H + 2 * (64 + GAP))  # input + 6 times
    assert visualize.default_times(32) == [1, 7, 13, 19, 25, 31]
    with pytest.raises(ValueError, match="times"):
        sample_strip(real[:, :, 0], real, real, times=[32])
    with pytest.raises(ValueError, match="inputs_frame"):
        sample_strip(real[:, :, :2], real, real)


def test_psnr_curve_png(tmp_path):
    curves = {"model": [100.0, 31.2, 28.5, 26.0, 25.1], "copy frame 0": [100.0, 24.0, 20.3, 18.2, float("nan")]}
    psnr_curve_png(curves, tmp_path / "psnr.png", size=(500, 300))
    with Image.open(tmp_path / "psnr.png") as image:
        assert image.format == "PNG" and image.size == (500, 300)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16)) > 3  # lines, not a blank canvas
    with pytest.raises(ValueError, match="curve"):
        psnr_curve_png({}, tmp_path / "empty.png")
    assert only(tmp_path) == ["psnr.png"]


def test_a_learning_curve_puts_each_value_at_its_step(tmp_path):
    # one curve of 2 values on an axis of 4 steps: it ends a third of the way across the plot
    psnr_curve_png({"val": [1.0, 1.0]}, tmp_path / "curve.png", size=(500, 300), x=[250, 500, 750, 1000],
                   x_label="G updates")
    with Image.open(tmp_path / "curve.png") as image:
        pixels = np.asarray(image.convert("RGB"))[60:]  # below the legend
    columns = np.nonzero((pixels == visualize.LINE_COLOURS[0]).all(axis=-1).any(axis=0))[0]
    left, width = 56, 500 - 56 - 16
    assert abs(columns.min() - left) <= 3 and abs(columns.max() - (left + width / 3)) <= 3
    with pytest.raises(ValueError, match="x has 1 values"):
        psnr_curve_png({"val": [1.0, 1.0]}, tmp_path / "short.png", x=[250])


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with visualize._atomic_path(tmp_path / "out" / "x.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("encoder crashed")
    assert only(tmp_path / "out") == []
