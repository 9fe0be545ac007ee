"""Sample strips, animated GIF / MP4 clips and a PSNR-per-frame plot, with numpy, Pillow and PyAV.

Clips are (C, T, H, W) tensors in [-1, 1] (C = 1 or 3); batches are (N, C, T, H, W). Small
frames are enlarged by an integer factor with nearest-neighbour sampling (`scale=None` picks the
smallest factor that makes the shorter side reach a readable size). Every file is written to a
temporary file in the target folder and renamed into place, so a crash leaves no partial file.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ssagan_dist.metrics import PSNR_CAP, to_unit_range

# sample-strip layout (pixels)
LABEL_W = 44  # left column holding the row labels
HEADER_H = 18  # top row holding the column labels
GAP = 2  # between tiles
CLIP_GAP = 6  # extra space between the row pairs of two clips
STRIP_MIN_SIDE = 64
VIDEO_MIN_SIDE = 128

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
TRUE_COLOUR = (0, 150, 0)  # motion arrows and numbers: the truth's ...
PRED_COLOUR = (210, 0, 210)  # ... and the prediction's
MOTION_PANEL_MIN_W = 96  # the motion column fits "pred +10.5,-12.5"
LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34)]


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


@contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix); rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_uint8_frames(clip: Tensor) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 RGB (grey clips are repeated to 3 channels)."""
    if clip.dim() != 4 or clip.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, T, H, W) clip with C = 1 or 3, got shape {tuple(clip.shape)}")
    frames = (to_unit_range(clip.detach()) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def _auto_scale(height: int, width: int, min_side: int, scale: int | None) -> int:
    if scale is None:
        return max(1, math.ceil(min_side / min(height, width)))
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    return scale


def _enlarge(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscaling of (..., H, W, 3) arrays."""
    return frames if scale == 1 else frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def save_image(image: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image atomically; the format follows the extension (.png, .jpg, ...)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension")
    with _atomic_path(path) as tmp:
        image.save(tmp, format=fmt)


# -- sample strip ----------------------------------------------------------------------------
def default_times(num_frames: int, count: int = 6) -> list[int]:
    """Up to `count` evenly spaced frame indices in 1..T-1 (frame 0 is the input)."""
    if num_frames <= 1:
        return [0]
    return sorted({round(t) for t in np.linspace(1, num_frames - 1, min(count, num_frames - 1))})


def sample_strip(
    inputs_frame: Tensor,
    pred: Tensor,
    real: Tensor,
    times: list[int] | None = None,
    max_clips: int = 4,
    scale: int | None = None,
    motion: bool = False,
) -> Image.Image:
    """A grid for up to `max_clips` clips: the input frame, then predicted and real frames at `times`.

    inputs_frame: (N, C, H, W); pred, real: (N, C, T, H, W), all in [-1, 1]. Each clip takes two
    rows (pred above real), the input frame sits left of both; columns are labelled with t.

    ``motion``: one more column, per clip the input frame with the clouds' displacement from
    frame 0 to the last frame (``ssagan_dist.motion.displacement``, both measured from the real
    input frame) drawn as arrows from the frame's centre, the truth's in green and the
    prediction's in magenta (a dot: less than half a pixel), and the numbers (dx, dy in pixels;
    positive: right, down) below it.
    """
    if pred.shape != real.shape or pred.dim() != 5:
        raise ValueError(
            f"pred and real must be (N, C, T, H, W) of one shape, got {tuple(pred.shape)} and {tuple(real.shape)}"
        )
    n, c, t, h, w = pred.shape
    if inputs_frame.shape != (n, c, h, w):
        raise ValueError(f"inputs_frame must be (N, C, H, W) = {(n, c, h, w)}, got {tuple(inputs_frame.shape)}")
    times = default_times(t) if times is None else list(times)
    if not times or not all(0 <= i < t for i in times):
        raise ValueError(f"times must be frame indices in [0, {t}), got {times}")
    k = min(n, max_clips)
    scale = _auto_scale(h, w, STRIP_MIN_SIDE, scale)
    th, tw = h * scale, w * scale
    pair_h = 2 * (th + GAP) + CLIP_GAP
    panel_w = max(tw, MOTION_PANEL_MIN_W) + GAP if motion else 0
    image = Image.new("RGB", (LABEL_W + (1 + len(times)) * (tw + GAP) + panel_w, HEADER_H + k * pair_h - CLIP_GAP),
                      BACKGROUND)
    draw, font = ImageDraw.Draw(image), _font()

    def col_x(j: int) -> int:
        return LABEL_W + j * (tw + GAP)

    for j, label in enumerate(["input"] + [f"t={i}" for i in times]):
        draw.text((col_x(j) + tw // 2, HEADER_H // 2), label, fill=TEXT, font=font, anchor="mm")
    for clip in range(k):
        top = HEADER_H + clip * pair_h
        first = _enlarge(to_uint8_frames(inputs_frame[clip].unsqueeze(1))[0], scale)
        image.paste(Image.fromarray(first), (col_x(0), top + (th + GAP) // 2))  # centred on both rows
        for row, (label, video) in enumerate((("pred", pred[clip]), ("real", real[clip]))):
            y = top + row * (th + GAP)
            draw.text((4, y + th // 2), f"{clip}:{label}" if row == 0 else label, fill=TEXT, font=font, anchor="lm")
            frames = _enlarge(to_uint8_frames(video[:, times]), scale)
            for j, frame in enumerate(frames, start=1):
                image.paste(Image.fromarray(frame), (col_x(j), y))
    if motion:
        _motion_panels(image, draw, font, inputs_frame[:k], pred[:k], real[:k], col_x(1 + len(times)), pair_h,
                       scale)
    return image


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], d: tuple[float, float], scale: int,
           colour: tuple[int, int, int], width: int = 2) -> None:
    """An arrow from ``start`` by ``d`` pixels of the frame (times ``scale``), on a dark outline; a
    dot where it would be shorter than half a frame pixel."""
    x0, y0 = start
    x1, y1 = x0 + d[0] * scale, y0 + d[1] * scale
    if math.hypot(*d) < 0.5:
        for r, fill in ((width + 1, (0, 0, 0)), (width, colour)):
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
        return
    angle = math.atan2(y1 - y0, x1 - x0)
    head = [(x1 + 6 * math.cos(angle + a), y1 + 6 * math.sin(angle + a)) for a in (math.pi * 0.8, -math.pi * 0.8)]
    for w, fill in ((width + 2, (0, 0, 0)), (width, colour)):
        draw.line([(x0, y0), (x1, y1)], fill=fill, width=w)
        draw.line([head[0], (x1, y1), head[1]], fill=fill, width=w)


def _motion_panels(image: Image.Image, draw: ImageDraw.ImageDraw, font, inputs_frame: Tensor, pred: Tensor,
                   real: Tensor, x: int, pair_h: int, scale: int) -> None:
    """sample_strip's motion column: per clip the input frame, arrows and numbers."""
    from ssagan_dist.motion import displacement  # numpy/torch only; imported when asked for

    t = real.shape[2]
    reference = real[:, :, 0].detach().float().cpu()
    true_d = displacement(real.detach().float().cpu(), reference)[:, -1].tolist()
    pred_d = displacement(pred.detach().float().cpu(), reference)[:, -1].tolist()
    _, _, h, w = inputs_frame.shape
    th, tw = h * scale, w * scale
    draw.text((x + max(tw, MOTION_PANEL_MIN_W) // 2, HEADER_H // 2), f"moved by t={t - 1} (px)", fill=TEXT,
              font=font, anchor="mm")
    for clip, (dt, dp) in enumerate(zip(true_d, pred_d)):
        top = HEADER_H + clip * pair_h
        image.paste(Image.fromarray(_enlarge(to_uint8_frames(inputs_frame[clip].unsqueeze(1))[0], scale)), (x, top))
        centre = (x + tw / 2, top + th / 2)
        _arrow(draw, centre, dt, scale, TRUE_COLOUR, width=4)  # the wider one: both show where they agree
        _arrow(draw, centre, dp, scale, PRED_COLOUR, width=2)
        for i, (label, d, colour) in enumerate((("true", dt, TRUE_COLOUR), ("pred", dp, PRED_COLOUR))):
            draw.text((x, top + th + 3 + 13 * i), f"{label} {d[0]:+.1f},{d[1]:+.1f}", fill=colour, font=font,
                      anchor="la")


# -- several models side by side ------------------------------------------------------------
MODEL_LABEL_W = 120  # row labels are model names


def _check_series(series: Sequence[tuple[str, Tensor]]) -> tuple[int, ...]:
    if not series:
        raise ValueError("series is empty: give at least one (label, clips) pair")
    shape = tuple(series[0][1].shape)
    for label, clips in series:
        if clips.dim() != 5 or tuple(clips.shape) != shape:
            raise ValueError(f"series {label!r}: expected (N, C, T, H, W) clips of shape {shape}, got "
                             f"{tuple(clips.shape)}")
    return shape


def model_grid(series: Sequence[tuple[str, Tensor]], times: list[int] | None = None,
               scale: int | None = None, first_time: int = 0) -> Image.Image:
    """One row per (label, clips) entry (e.g. the true future, then each model's prediction of the
    same held-out clips), the clips side by side, each as its frames at ``times`` (default every
    frame; t = 0 is the input frame; ``first_time`` is added to the column labels)."""
    n, _, t, h, w = _check_series(series)
    times = list(range(t)) if times is None else list(times)
    scale = _auto_scale(h, w, 48, scale)
    th, tw = h * scale, w * scale
    block = len(times) * (tw + GAP) + CLIP_GAP
    image = Image.new("RGB", (MODEL_LABEL_W + n * block - CLIP_GAP, HEADER_H + len(series) * (th + GAP)), BACKGROUND)
    draw, font = ImageDraw.Draw(image), _font()
    for clip in range(n):
        for j, i in enumerate(times):
            x = MODEL_LABEL_W + clip * block + j * (tw + GAP)
            label = f"t={i + first_time}"
            draw.text((x + tw // 2, HEADER_H // 2), f"{clip}: {label}" if j == 0 else label, fill=TEXT, font=font,
                      anchor="mm")
    for row, (label, clips) in enumerate(series):
        y = HEADER_H + row * (th + GAP)
        draw.text((4, y + th // 2), label, fill=TEXT, font=font, anchor="lm")
        for clip in range(n):
            frames = _enlarge(to_uint8_frames(clips[clip][:, times]), scale)
            for j, frame in enumerate(frames):
                image.paste(Image.fromarray(frame), (MODEL_LABEL_W + clip * block + j * (tw + GAP), y))
    return image


def save_model_grid_gif(series: Sequence[tuple[str, Tensor]], path: str | os.PathLike, fps: float = 4,
                        scale: int | None = None) -> None:
    """The animated ``model_grid``: one row per entry, the clips side by side, all playing together."""
    n, _, t, h, w = _check_series(series)
    frames = [model_grid([(label, clips[:, :, i:i + 1]) for label, clips in series], first_time=i,
                         scale=scale or _auto_scale(h, w, 64, None)) for i in range(t)]
    with _atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)


# -- animated clips --------------------------------------------------------------------------
def _video_frames(clip: Tensor, real: Tensor | None, scale: int | None) -> np.ndarray:
    frames = to_uint8_frames(clip)
    if real is not None:
        if real.shape != clip.shape:
            raise ValueError(f"real must match the clip's shape {tuple(clip.shape)}, got {tuple(real.shape)}")
        gap = np.full((*frames.shape[:2], GAP, 3), 255, dtype=np.uint8)
        frames = np.concatenate([frames, gap, to_uint8_frames(real)], axis=2)
    _, h, w, _ = frames.shape
    return _enlarge(frames, _auto_scale(h, w, VIDEO_MIN_SIDE, scale))


def save_gif(
    clip: Tensor, path: str | os.PathLike, fps: float = 8, scale: int | None = None, real: Tensor | None = None
) -> None:
    """Write a looping animated GIF of a (C, T, H, W) clip; with `real`, frames show pred | real.

    GIF stores delays in 1/100 s, and Pillow merges identical consecutive frames into one
    longer frame (a still clip plays as one frame for the whole duration).
    """
    frames = [Image.fromarray(f) for f in _video_frames(clip, real, scale)]
    with _atomic_path(path) as tmp:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0
        )


def _mp4_codec() -> str:
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # FFmpeg built without x264 (LGPL builds)
        return "mpeg4"


def save_mp4(clip: Tensor, path: str | os.PathLike, fps: int = 8, scale: int | None = None) -> None:
    """Write a (C, T, H, W) clip as H.264 MP4 (MPEG-4 Part 2 if libx264 is missing), yuv420p.

    yuv420p needs even sides: an odd side is padded by repeating the last row/column.
    """
    frames = _video_frames(clip, None, scale)
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec = _mp4_codec()
    with _atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            else:
                stream.bit_rate = 4_000_000
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())


def save_video(clip: Tensor, path: str | os.PathLike, fps: int = 8, scale: int | None = None) -> None:
    """save_gif or save_mp4, chosen by the extension of `path`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        save_gif(clip, path, fps=fps, scale=scale)
    elif suffix == ".mp4":
        save_mp4(clip, path, fps=fps, scale=scale)
    else:
        raise ValueError(f"{path}: video output must end in .gif or .mp4")


# -- PSNR-per-frame plot ---------------------------------------------------------------------
def _nice_step(span: float, max_ticks: int) -> float:
    raw = span / max_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def psnr_curve_png(
    per_frame_psnr: dict[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "PSNR per frame",
    size: tuple[int, int] = (640, 400),
    unit: str = "dB",
    first_frame: int = 0,
    x: Sequence[float] | None = None,
    x_label: str = "frame",
) -> None:
    """Line plot of PSNR (dB) against frame index, one line per entry (e.g. model and baseline).

    The y axis spans the finite values under the PSNR cap; capped values (identical frames, such
    as the baseline's frame 0) are drawn on the top edge, and the plot says so. ``unit`` labels
    the y axis (any per-frame metric plots the same way); x labels start at ``first_frame``, or
    the i-th value of every curve sits at ``x[i]`` (a learning curve: the steps), named ``x_label``.
    """
    if not per_frame_psnr or not all(len(v) for v in per_frame_psnr.values()):
        raise ValueError("per_frame_psnr needs at least one non-empty curve")
    curves = {name: np.asarray(values, dtype=np.float64) for name, values in per_frame_psnr.items()}
    shown = np.concatenate([v[np.isfinite(v) & (v < PSNR_CAP)] for v in curves.values()])
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, PSNR_CAP)
    step = _nice_step(max(hi - lo, 1.0), 6)
    y0, y1 = math.floor(lo / step) * step, math.ceil(hi / step) * step
    y1 = y1 if y1 > y0 else y0 + step
    n = max(len(v) for v in curves.values())
    xs = [float(v) for v in x] if x is not None else [float(i + first_frame) for i in range(n)]
    if len(xs) < n:
        raise ValueError(f"x has {len(xs)} values for curves of up to {n}")
    x0, x1 = xs[0], xs[-1]

    width, height = size
    left, right, top, bottom = 56, 16, 30, 44
    pw, ph = width - left - right, height - top - bottom
    image = Image.new("RGB", size, BACKGROUND)
    draw, font = ImageDraw.Draw(image), _font(12)

    def to_px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x0) / (x1 - x0) if x1 > x0 else 0.5
        fy = (min(y, y1) - y0) / (y1 - y0)
        return left + fx * pw, top + (1 - fy) * ph

    for i in range(round((y1 - y0) / step) + 1):  # horizontal grid and y labels
        y = y0 + i * step
        _, py = to_px(0, y)
        draw.line([(left, py), (left + pw, py)], fill=(225, 225, 225))
        draw.text((left - 6, py), f"{y:g}", fill=TEXT, font=font, anchor="rm")
    for i in range(0, len(xs), max(1, math.ceil((len(xs) - 1) / 10))):
        px, _ = to_px(xs[i], y0)
        draw.line([(px, top + ph), (px, top + ph + 4)], fill=TEXT)
        draw.text((px, top + ph + 6), f"{xs[i]:g}", fill=TEXT, font=font, anchor="mt")
    draw.rectangle([left, top, left + pw, top + ph], outline=TEXT)
    draw.text((left + pw, height - 4), x_label, fill=TEXT, font=font, anchor="rd")
    draw.text((4, top - 8), unit, fill=TEXT, font=font, anchor="lm")
    draw.text((width / 2, 4), title, fill=TEXT, font=_font(14), anchor="mt")

    any_capped, drawn = False, []
    for colour, (name, values) in zip(LINE_COLOURS * len(curves), curves.items()):
        points = [(to_px(xs[i], y), y >= PSNR_CAP) for i, y in enumerate(values) if math.isfinite(y)]
        any_capped |= any(capped for _, capped in points)
        drawn += [p for p, _ in points]
        if len(points) > 1:
            draw.line([p for p, _ in points], fill=colour, width=2, joint="curve")
        for (px, py), capped in points:
            r = 4 if capped else 2.5
            draw.ellipse([px - r, py - r, px + r, py + r], fill=colour if not capped else BACKGROUND, outline=colour)

    legend = list(curves)
    box_w = max(draw.textlength(name, font=font) for name in legend) + 34
    box_h = 18 * len(legend) + 4
    lx = left + pw - 8
    # top right, unless more of the curves' points lie under it there than at the bottom right
    under = {y: sum(lx - box_w <= px <= lx and y <= py <= y + box_h for px, py in drawn)
             for y in (top + 8, top + ph - 8 - box_h)}
    ly = min(under, key=lambda y: (under[y], y != top + 8))
    draw.rectangle([lx - box_w, ly, lx, ly + box_h], fill=BACKGROUND, outline=(180, 180, 180))
    for i, (colour, name) in enumerate(zip(LINE_COLOURS * len(legend), legend)):
        y = ly + 12 + 18 * i
        draw.line([(lx - box_w + 6, y), (lx - box_w + 24, y)], fill=colour, width=3)
        draw.text((lx - box_w + 28, y), name, fill=TEXT, font=font, anchor="lm")
    if any_capped:
        note = f"open circle on top edge: identical frames (PSNR capped at {PSNR_CAP:g} dB)"
        draw.text((left, height - 4), note, fill=TEXT, font=font, anchor="ld")
    save_image(image, path)


def quality_curves_png(curves: dict[str, dict[str, Sequence[float]]], path: str | os.PathLike,
                       title: str = "", first_frame: int = 1, x: Sequence[float] | None = None,
                       x_label: str = "frame") -> None:
    """One panel per metric side by side (``{"PSNR (dB)": {"model": [...], "copy frame": [...]}, ...}``),
    each curve starting at frame ``first_frame``, or at ``x`` named ``x_label`` (``psnr_curve_png``)."""
    if not curves:
        raise ValueError("curves needs at least one metric")
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (metric, series) in enumerate(curves.items()):
            name = Path(tmp) / f"{i}.png"
            unit = metric.split("(")[-1].rstrip(")") if "(" in metric else ""
            per = " per future frame" if x is None else f" by {x_label}"
            psnr_curve_png(series, name, title=f"{title}: {metric}{per}" if title else metric,
                           unit=unit, first_frame=first_frame, x=x, x_label=x_label)
            with Image.open(name) as panel:
                panels.append(panel.copy())
    image = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), BACKGROUND)
    x = 0
    for panel in panels:
        image.paste(panel, (x, 0))
        x += panel.width
    save_image(image, path)
