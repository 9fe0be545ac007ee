"""Shared pieces of the dataset tools: frame resizing, keys, progress, summary (the shard writer
itself is ``ssagan_dist.data.writer``)."""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ssagan_dist.data.writer import MiB  # noqa: F401  (re-exported for the tools)


def clip_key(source: str, first_frame: int) -> str:
    """A tar-safe key (no dots or slashes) naming the clip's source and first frame."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", source)
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '_', stem).strip('_')}_{first_frame:06d}"


def resize_frame(img: Image.Image, size: int, crop: str = "squash") -> np.ndarray:
    """uint8 (size, size, 3): squash the whole frame (as the papers do) or centre-crop a square first."""
    if crop == "center":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif crop != "squash":
        raise ValueError(f"crop must be 'squash' or 'center', got {crop!r}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def load_frame(path: str, size: int, crop: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """(resized uint8 frame, original (w, h)) from an image file; JPEGs are DCT-downscaled on decode."""
    with Image.open(path) as img:
        orig = img.size
        img.draft("RGB", (size, size))  # libjpeg scales by 1/2..1/8 while keeping both sides >= size
        return resize_frame(img, size, crop), orig


def progress(total: int | None, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True, disable=not enabled, smoothing=0.1)


def summary(index: dict[str, Any], out_url: str, seconds: float) -> str:
    c, t, h, w = index["clip_shape"]
    rate = index["total_clips"] / max(seconds, 1e-9)
    return (
        f"{out_url}: split {index['split']!r}: {index['total_clips']} clips of {t}x{h}x{w}x{c} "
        f"in {index['num_shards']} shard(s), {index['total_bytes'] / MiB:.1f} MiB, "
        f"{seconds:.1f} s ({rate:.1f} clips/s)"
    )


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
