"""Procedural time-lapse skies: the demo's and the tests' dataset.

Every clip shows fractal-noise clouds advected by a constant wind over a static city skyline,
under a sky whose colour drifts slowly toward dusk. The future is predictable from frame 0:

- the wind's direction and speed are drawn on the skyline as a red flag that points downwind,
  its length growing with speed; the clouds are also stretched along the wind axis;
- clouds move rigidly (periodic noise sampled at x - v·t), so frame t is frame 0 shifted;
- the sky colour advances by the same amount along a fixed palette in every clip;
- the skyline and flag never move.

``python -m data_tools.synth --out URL --clips N [--size S --frames T --seed K]``
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import numpy as np

from data_tools.common import MiB, Timer, summary
from data_tools.common import progress as progress_bar
from ssagan_dist import cli
from ssagan_dist.data.format import encode_clip
from ssagan_dist.data.writer import ShardWriter, discard_unfinished

FPS = 8.0
DRIFT = 0.25  # palette advance over one clip
# sky palette along "time of day" tau in [0, 1]: (zenith RGB, horizon RGB)
_PALETTE_TAU = np.array([0.0, 0.35, 0.6, 0.8, 1.0], dtype=np.float32)
_ZENITH = np.array([[0.16, 0.38, 0.78], [0.22, 0.42, 0.74], [0.30, 0.36, 0.62], [0.30, 0.24, 0.48], [0.10, 0.08, 0.25]])
_HORIZON = np.array([[0.62, 0.80, 0.96], [0.86, 0.82, 0.70], [0.98, 0.66, 0.36], [0.92, 0.42, 0.34], [0.45, 0.22, 0.30]])
_SKYLINE = np.array([0.07, 0.08, 0.11], dtype=np.float32)
_FLAG = np.array([0.95, 0.12, 0.10], dtype=np.float32)


def _palette(tau: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Interpolate RGB rows of ``table`` at ``tau`` (any shape) -> tau.shape + (3,)."""
    t = np.clip(tau, 0.0, 1.0)
    return np.stack([np.interp(t, _PALETTE_TAU, table[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _clip_params(rng: np.random.Generator, size: int, frames: int) -> dict[str, Any]:
    sign = rng.choice([-1.0, 1.0])
    angle = rng.uniform(-0.35, 0.35)  # radians from horizontal
    travel = rng.uniform(0.15, 0.45)  # displacement over the clip, as a fraction of the width
    speed = travel * size / max(frames - 1, 1)  # pixels per frame
    return {
        "wind": (float(sign * speed * np.cos(angle)), float(speed * np.sin(angle))),
        "travel": float(travel),
        "coverage": float(rng.uniform(-0.4, 0.7)),  # threshold on unit-variance noise: higher, fewer clouds
        "tau0": float(rng.uniform(0.0, 0.7)),
        "noise": rng.standard_normal((2 * size, 2 * size), dtype=np.float32),
        "skyline": _skyline(rng, size),
    }


def _skyline(rng: np.random.Generator, size: int) -> np.ndarray:
    """Building height (pixels) for every column."""
    heights = np.empty(size, dtype=np.int64)
    x = 0
    while x < size:
        w = int(rng.integers(max(2, size // 16), max(3, size // 5) + 1))
        heights[x : x + w] = int(rng.integers(size // 10, size * 3 // 10 + 1))
        x += w
    return heights


def _cloud_field(noise: np.ndarray, wind: tuple[float, float], travel: float) -> np.ndarray:
    """Periodic fractal noise (P, P), zero mean, unit variance, stretched along the wind axis."""
    p = noise.shape[0]
    ky = np.fft.fftfreq(p)[:, None]
    kx = np.fft.rfftfreq(p)[None, :]
    ux, uy = np.array(wind) / (np.hypot(*wind) + 1e-12)
    along, across = kx * ux + ky * uy, -kx * uy + ky * ux
    stretch = 1.5 + 4.0 * travel  # faster wind, longer streaks
    k = np.hypot(along * stretch, across)
    amplitude = np.where(k > 0, (k + 1.0 / p) ** -1.6, 0.0)
    amplitude[k > 0.25] = 0.0  # keep the clouds soft at the target resolution
    field = np.fft.irfft2(np.fft.rfft2(noise) * amplitude, s=noise.shape)
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _sample_periodic(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of a periodic (P, P) field at float coordinates (any shape)."""
    p = field.shape[0]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int64) % p, y0.astype(np.int64) % p
    x1, y1 = (x0 + 1) % p, (y0 + 1) % p
    top = field[y0, x0] * (1 - fx) + field[y0, x1] * fx
    bottom = field[y1, x0] * (1 - fx) + field[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_clip(params: dict[str, Any], size: int, frames: int, *, freeze_motion: bool = False,
                freeze_drift: bool = False, guess_unseen: bool = False) -> np.ndarray:
    """uint8 (T, H, W, 3) for one clip's parameters.

    ``freeze_motion``: the clouds stay where they are at frame 0 (the colour still drifts);
    ``freeze_drift``: the sky colour stays at frame 0's (``tau0``; the clouds still move);
    ``guess_unseen``: where a pixel's cloud was not in view at frame 0 (it comes in from outside the
    frame or from behind the skyline or flag), its cloud is replaced by the expected colour of a
    cloud drawn from frame 0's visible sky (the mean of the composite over those pixels' cloud
    densities: the best guess, in squared error, that ignores where the cloud comes from); every
    other pixel is the clip's own. Frame 0 is the same in every variant, and with none of them the
    output is what ``generate`` writes.
    """
    s, t = size, np.arange(frames, dtype=np.float32)
    still = np.zeros_like(t)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    vx, vy = params["wind"]
    field = _cloud_field(params["noise"], params["wind"], params["travel"])
    tm = still if freeze_motion else t  # the clouds' clock
    n = _sample_periodic(field, xx[None] - vx * tm[:, None, None], yy[None] - vy * tm[:, None, None])  # (T, H, W)
    density = np.clip((n - params["coverage"]) / 0.8, 0.0, 1.0)
    density = density * density * (3 - 2 * density)  # smoothstep: soft cloud edges

    tau = params["tau0"] + DRIFT * (still if freeze_drift else t) / max(frames - 1, 1)  # (T,)
    height = (yy / (s - 1))[None, :, :, None]  # 0 at the top
    sky = _palette(tau, _ZENITH)[:, None, None] * (1 - height) + _palette(tau, _HORIZON)[:, None, None] * height
    lit = 0.7 * np.ones(3, np.float32) + 0.3 * _palette(tau, _HORIZON)  # clouds take the horizon's tint
    shade = (1.05 - 0.25 * density)[..., None]  # thick cloud is darker underneath
    clouds = lit[:, None, None] * shade
    img = sky * (1 - 0.9 * density[..., None]) + clouds * 0.9 * density[..., None]

    foreground = _foreground(params, s)
    if guess_unseen:
        # the composite is quadratic in the density d: sky + d (0.945 lit - 0.9 sky) - 0.225 lit d^2,
        # so its mean over frame 0's visible sky needs the mean of d and of d^2 there
        seen = density[0][~foreground]
        mean, mean_sq = float(seen.mean()), float((seen * seen).mean())
        guess = sky + mean * (0.945 * lit[:, None, None] - 0.9 * sky) - 0.225 * mean_sq * lit[:, None, None]
        sx = np.rint(xx[None] - vx * tm[:, None, None]).astype(np.int64)  # where each pixel's cloud was at frame 0
        sy = np.rint(yy[None] - vy * tm[:, None, None]).astype(np.int64)
        inside = (sx >= 0) & (sx < s) & (sy >= 0) & (sy < s)
        unseen = ~inside
        unseen[inside] = foreground[sy[inside], sx[inside]]
        img = np.where(unseen[..., None], guess, img)
    img[:, foreground] = _foreground_colour(params, s)[foreground]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _foreground_layers(params: dict[str, Any], s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (H, W) masks of the static foreground: the skyline, the flag's pole, the flag (not
    where the skyline covers it): a skyline and a flag on the tallest roof pointing downwind."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    vx, vy = params["wind"]
    heights = params["skyline"]
    ground = yy >= (s - heights)[None, :]
    roof_x = int(np.argmax(heights))
    roof_y = s - int(heights[roof_x])
    pole = np.zeros((s, s), dtype=bool)
    top = max(0, roof_y - max(2, s // 8))
    pole[top:roof_y, roof_x] = True
    length = s * (0.08 + 0.5 * (params["travel"] - 0.15))
    thick = max(1.0, s / 20)
    direction = np.sign(vx) if vx != 0 else 1.0
    along = (xx - roof_x) * direction  # distance downwind of the pole
    tilt = vy / (abs(vx) + 1e-6)
    across = yy - (top + thick / 2 + along * tilt)
    flag = (along >= 1) & (along <= length) & (np.abs(across) <= thick * (1 - along / (length + 1)) + 0.5)
    return ground, pole, flag & ~ground


def _foreground(params: dict[str, Any], s: int) -> np.ndarray:
    return np.logical_or.reduce(_foreground_layers(params, s))


def _foreground_colour(params: dict[str, Any], s: int) -> np.ndarray:
    """(H, W, 3): the foreground's colours where it stands (the flag over the pole over the skyline)."""
    ground, pole, flag = _foreground_layers(params, s)
    colour = np.zeros((s, s, 3), dtype=np.float32)
    colour[ground | pole] = _SKYLINE
    colour[flag] = _FLAG
    return colour


# -- re-rendering a stored clip: the exact clip and the oracles with one factor frozen ---------
TOOL = "data_tools.synth"  # index.json "source" "tool" of a dataset written by ``generate``
VARIANTS = {
    "exact": {},  # the clip as generate rendered it (before JPEG)
    "drift_only": {"freeze_motion": True},  # the true colour drift, clouds frozen at frame 0's position
    "motion_only": {"freeze_drift": True},  # the true cloud motion, colour frozen at frame 0's (tau0)
    "seen_only": {"guess_unseen": True},  # exact, but clouds not in view at frame 0 replaced by their mean colour
}
_KEY = re.compile(r"^sky(\d{4,})_(\d{7,})$")


def clip_key(seed: int, index: int) -> str:
    """The key ``generate`` gives clip ``index`` of a dataset made with ``seed``."""
    return f"sky{seed:04d}_{index:07d}"


def parse_key(key: str) -> tuple[int, int] | None:
    """(seed, index) of a key made by ``clip_key``; None for any other key."""
    m = _KEY.match(key)
    return (int(m.group(1)), int(m.group(2))) if m else None


def clip_params(seed: int, index: int, size: int, frames: int) -> dict[str, Any]:
    """The parameters of clip ``index`` of ``generate(..., size=size, frames=frames, seed=seed)``:
    wind (px per frame), travel, coverage, tau0, noise, skyline."""
    return _clip_params(np.random.default_rng([seed, index]), size, frames)


def rerender(seed: int, index: int, size: int, frames: int, variant: str = "exact") -> np.ndarray:
    """uint8 (T, H, W, 3): clip ``index`` of the dataset ``generate`` makes with (seed, size,
    frames), rendered again. ``variant`` (``VARIANTS``): "exact", the clip itself, bit for bit
    what was encoded (a stored JPEG differs by its compression error only); "drift_only", the true
    colour drift with the clouds frozen at frame 0's position; "motion_only", the true cloud motion
    with the colour frozen at frame 0's (tau0). Frame 0 is the same in all three."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {', '.join(VARIANTS)}")
    return render_clip(clip_params(seed, index, size, frames), size, frames, **VARIANTS[variant])


def generate(
    out_url: str,
    clips: int,
    size: int = 64,
    frames: int = 16,
    seed: int = 0,
    endpoint_url: str | None = None,
    *,
    shard_clips: int | None = None,
    shard_size: int = 64 * MiB,
    frame_format: str = "jpg",
    quality: int = 95,
    split: str = "train",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``clips`` synthetic sky clips as shards + index.json at ``out_url``; returns the index.

    Clip i depends only on (seed, i, size, frames): the same arguments give identical shards.
    """
    if clips < 1 or size < 8 or frames < 2:
        raise ValueError(f"need clips >= 1, size >= 8, frames >= 2 (got {clips}, {size}, {frames})")
    writer = ShardWriter(out_url, prefix=split, shard_bytes=shard_size, shard_clips=shard_clips,
                         endpoint_url=endpoint_url, overwrite=overwrite)
    with Timer() as timer, progress_bar(clips, f"synth {split}", progress) as bar:
        for i in range(clips):
            params = clip_params(seed, i, size, frames)
            video = render_clip(params, size, frames)
            meta = {"source": "synth", "seed": seed, "index": i, "first_frame": 0, "fps": FPS,
                    "label": None, "orig_size": [size, size], "wind_px_per_frame": list(params["wind"]),
                    "tau0": params["tau0"], "coverage": params["coverage"]}
            writer.add(clip_key(seed, i), encode_clip(video, frame_format, quality, meta))
            bar.update(1)
        index = writer.close(
            clip_shape=[3, frames, size, size], frame_format=frame_format,
            jpeg_quality=quality if frame_format == "jpg" else None, fps=FPS, labels=False, classes=None,
            source={"tool": TOOL, "seed": seed, "clips": clips, "size": size, "frames": frames},
        )
    if progress:
        print(summary(index, out_url, timer.seconds), file=sys.stderr)
    return index


@cli.command
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_tools.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="dataset folder or s3://bucket/prefix")
    ap.add_argument("--clips", type=int, required=True)
    ap.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="train", help="split name: shard prefix and index 'split'")
    ap.add_argument("--format", choices=["jpg", "npy"], default="jpg")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--shard-size-mb", type=float, default=64.0)
    ap.add_argument("--shard-clips", type=int, default=None, help="at most this many clips per shard")
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    ap.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    ap.add_argument("--no-progress", action="store_true")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    try:
        generate(args.out, args.clips, args.size, args.frames, args.seed, args.endpoint_url,
                 shard_clips=args.shard_clips, shard_size=int(args.shard_size_mb * MiB), frame_format=args.format,
                 quality=args.quality, split=args.split, overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        discard_unfinished()  # a failed run leaves nothing in the output folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
