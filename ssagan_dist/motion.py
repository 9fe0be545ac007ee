"""How far the clouds move: the displacement of every frame against the input frame by phase
correlation, and the measures that compare a predicted clip's motion with the true clip's.

PSNR against copy-frame rewards colour drift and blur on the synthetic skies; these measures ask
whether the clouds move, how far and which way (issue #30; docs/metrics.md, "Motion").

Conventions:

- Clips are (N, C, T, H, W) in [-1, 1], as in ``ssagan_dist.metrics``; frames are made grey (the
  mean of the channels of ``(x + 1) / 2``).
- Only the sky band is compared: the top ``SKY_FRACTION`` (60 %) of the rows, where the clouds
  are; the skyline below would pull every estimate towards 0.
- A displacement (dx, dy) is in pixels, **positive dx = the content moved right, positive dy = it
  moved down** (rows grow downwards): frame t ≈ frame 0 shifted by (dx, dy), ``x_t(p) ≈
  x_0(p − d)``. On the synthetic skies it is ``wind_px_per_frame · t``.
- Estimator (``phase_correlation``): each band minus its row means (the sky's vertical gradient
  and its colour drift are constant along rows) and its mean, times a 2-D Hann window; the
  normalised cross-power spectrum weighted by a Gaussian (``SPECTRAL_SIGMA`` cycles per pixel),
  so that the correlation peak is a smooth bump; the integer peak, then a parabola through the
  logs of the peak and its two neighbours along each axis (sub-pixel). ``displacement`` tracks:
  the small frame-to-frame shifts give a guess per frame, then each frame is correlated with the
  input frame directly over the region both share at that guess.
- Accuracy (tests/test_motion.py; docs/metrics.md has the numbers): known shifts of natural
  photographs within 0.5 px; on rendered skies most clips within 0.5 px, and a clip without
  texture along the wind (one long streak, clouds leaving the band) can be off by pixels: motion
  along a featureless streak cannot be seen (the aperture problem).

A prediction is measured from the real input frame (``reference``), the truth likewise, with the
same code, so estimator errors hit both alike and the true clip scores exactly 1 (agreement,
magnitude ratio).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ssagan_dist.metrics import to_unit_range

SKY_FRACTION = 0.6  # top share of the rows that holds the sky
SPECTRAL_SIGMA = 0.2  # Gaussian weight of the cross-power spectrum, cycles per pixel
REFINE_RADIUS = 3  # pixels around the guess searched when tracking
AGREE_DEGREES = 45.0  # direction agreement: within this angle of the true displacement ...
AGREE_LENGTH = 0.5  # ... and at least this share of its length
_EPS = 1e-12

# per-clip arrays of ``per_clip`` (each (N,), float64)
PER_CLIP = ("pred_dx", "pred_dy", "true_dx", "true_dy", "pred_displacement", "true_displacement", "angle",
            "direction_agreement", "magnitude_ratio", "along_ratio", "pred_frame_change", "true_frame_change")
# summary measures of ``summarize``
SUMMARY = ("pred_displacement", "true_displacement", "direction_agreement", "magnitude_ratio",
           "magnitude_ratio_median", "along_ratio", "pred_frame_change", "true_frame_change")


def grey(x: Tensor) -> Tensor:
    """(..., C, H, W) in [-1, 1] -> (..., H, W) float64 in [0, 1], the mean of the channels."""
    return to_unit_range(x).double().mean(-3)


def sky_rows(height: int, sky: float = SKY_FRACTION) -> int:
    """How many rows from the top the sky band holds (at least 2)."""
    return min(height, max(2, math.ceil(sky * height)))


def _hann_at(n: int, start: Tensor, length: Tensor, dtype: torch.dtype) -> Tensor:
    """(..., n) Hann windows that are non-zero on [start, start + length) of 0..n-1 (no zero end
    samples: sin²(π (j + 1) / (length + 1)) for j = 0 .. length − 1), zero elsewhere."""
    j = torch.arange(n, device=start.device, dtype=dtype) - start[..., None].to(dtype)
    length = length[..., None].to(dtype)
    inside = (j >= 0) & (j < length)
    return torch.where(inside, torch.sin(math.pi * (j + 1) / (length + 1)) ** 2, torch.zeros_like(j))


def _spectral_weight(h: int, w: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    ky = torch.fft.fftfreq(h, dtype=dtype, device=device)[:, None]
    kx = torch.fft.fftfreq(w, dtype=dtype, device=device)[None, :]
    return torch.exp(-0.5 * (kx * kx + ky * ky) / (sigma * sigma))


def _flatten(images: Tensor) -> Tensor:
    """Remove what does not move with the clouds before correlating: the mean of each row (the
    sky's vertical colour gradient and its drift are constant along rows)."""
    return images - images.mean(-1, keepdim=True)


def _correlate(reference: Tensor, moved: Tensor, shift: Tensor, sigma: float) -> Tensor:
    """Phase-correlation surface (..., h, w) of two (..., h, w) images whose content is expected
    near the integer ``shift`` (..., 2) = (kx, ky) apart: each is windowed (Hann) over the region
    the two share at that shift, so that the surface peaks at (the true shift) mod (w, h)."""
    h, w = reference.shape[-2:]
    kx, ky = shift[..., 0], shift[..., 1]
    lx, ly = w - kx.abs(), h - ky.abs()
    zero = torch.zeros_like(kx)
    wr = _hann_at(h, torch.maximum(-ky, zero), ly, reference.dtype)[..., :, None] * \
        _hann_at(w, torch.maximum(-kx, zero), lx, reference.dtype)[..., None, :]
    wm = _hann_at(h, torch.maximum(ky, zero), ly, reference.dtype)[..., :, None] * \
        _hann_at(w, torch.maximum(kx, zero), lx, reference.dtype)[..., None, :]

    def spectrum(image: Tensor, window: Tensor) -> Tensor:
        mean = (image * window).sum((-2, -1), keepdim=True) / window.sum((-2, -1), keepdim=True).clamp(min=_EPS)
        return torch.fft.fft2((image - mean) * window)

    cross = torch.conj(spectrum(reference, wr)) * spectrum(moved, wm)
    magnitude = cross.abs()
    floor = magnitude.flatten(-2).amax(-1)[..., None, None] * 1e-9 + _EPS
    weight = _spectral_weight(h, w, sigma, reference.dtype, reference.device)
    return torch.fft.ifft2(cross / magnitude.clamp(min=floor) * weight).real


def _subpixel(left: Tensor, centre: Tensor, right: Tensor) -> Tensor:
    """Offset in [-0.5, 0.5] of the top of a parabola through the logs of three samples (a Gaussian
    through them); a plain parabola where a sample is not positive."""
    tiny = 1e-30
    ok = (left > tiny) & (centre > tiny) & (right > tiny)
    l, c, r = (torch.log(v.clamp(min=tiny)) for v in (left, centre, right))
    num = torch.where(ok, l - r, left - right)
    den = torch.where(ok, l - 2 * c + r, left - 2 * centre + right)
    offset = torch.where(den < 0, 0.5 * num / torch.where(den < 0, den, -torch.ones_like(den)), torch.zeros_like(den))
    return offset.clamp(-0.5, 0.5)


def _peak(surface: Tensor, around: Tensor, radius: Optional[int]) -> Tensor:
    """Sub-pixel position (..., 2) = (dx, dy) of the highest point of the periodic ``surface``
    (..., h, w) within ``radius`` pixels of the integer ``around`` (..., 2); radius None: anywhere,
    the result then in (−w/2, w/2] × (−h/2, h/2]."""
    h, w = surface.shape[-2:]
    flat = surface.flatten(-2)
    if radius is None:
        best = flat.argmax(-1)
        py, px = best // w, best % w
        px, py = torch.where(px > w // 2, px - w, px), torch.where(py > h // 2, py - h, py)
    else:
        # steps nearest first (argmax takes the first of equal values: a flat surface gives the
        # guess itself); no position twice: at most (side - 1) // 2 either way on a small surface
        sy, sx = (torch.tensor(sorted(range(-min(radius, (n - 1) // 2), min(radius, (n - 1) // 2) + 1),
                                      key=lambda v: (abs(v), v)), device=surface.device) for n in (h, w))
        ys = (around[..., 1, None] + sy) % h  # (..., Sy)
        xs = (around[..., 0, None] + sx) % w
        window = (ys[..., :, None] * w + xs[..., None, :]).flatten(-2)  # (..., Sy*Sx)
        best = flat.gather(-1, window).argmax(-1)
        py, px = around[..., 1] + sy[best // len(sx)], around[..., 0] + sx[best % len(sx)]

    def at(dy: int, dx: int) -> Tensor:
        return flat.gather(-1, (((py + dy) % h) * w + (px + dx) % w)[..., None])[..., 0]

    centre = at(0, 0)
    fx = _subpixel(at(0, -1), centre, at(0, 1)) if w >= 3 else torch.zeros_like(centre)
    fy = _subpixel(at(-1, 0), centre, at(1, 0)) if h >= 3 else torch.zeros_like(centre)
    return torch.stack([px.double() + fx, py.double() + fy], -1)


@torch.no_grad()
def phase_correlation(reference: Tensor, moved: Tensor, sigma: float = SPECTRAL_SIGMA,
                      guess: Optional[Tensor] = None, radius: int = REFINE_RADIUS) -> Tensor:
    """Shift of ``moved`` against ``reference``: (..., h, w) grey images (any leading dims,
    broadcast) -> (..., 2) float64 (dx, dy) in pixels, ``moved(p) ≈ reference(p − d)``.

    Without ``guess``: one correlation of the two images, each windowed (Hann) whole, the peak
    searched everywhere (|dx| <= w/2, |dy| <= h/2; best for shifts of a few pixels). With
    ``guess`` (..., 2) pixels: the images are windowed over the region they share at the rounded
    guess and the peak is searched within ``radius`` pixels of it (large shifts, little overlap).
    The peak is refined to sub-pixel by a parabola through the logs of its neighbours (the
    Gaussian weight of the spectrum, ``sigma`` cycles per pixel, makes it a smooth bump).
    Identical images, and images without structure, give (0, 0) up to rounding (< 1e-12).
    """
    reference, moved = torch.broadcast_tensors(_flatten(reference.double()), _flatten(moved.double()))
    h, w = reference.shape[-2:]
    if guess is None:
        shift = torch.zeros(*reference.shape[:-2], 2, dtype=torch.long, device=reference.device)
        return _peak(_correlate(reference, moved, shift, sigma), shift, None)
    limit = torch.tensor([max(w - 4, 0), max(h - 4, 0)], device=reference.device)
    shift = torch.round(guess.double().to(reference.device)).long()
    shift = torch.maximum(torch.minimum(shift, limit), -limit).expand(*reference.shape[:-2], 2)
    return _peak(_correlate(reference, moved, shift, sigma), shift, radius)


@torch.no_grad()
def displacement(clips: Tensor, reference: Optional[Tensor] = None, sky: float = SKY_FRACTION,
                 sigma: float = SPECTRAL_SIGMA, passes: int = 2) -> Tensor:
    """Cloud displacement of every frame against the input frame: (N, C, T, H, W) clips in
    [-1, 1] -> (N, T, 2) float64 (dx, dy) in pixels (positive dx: moved right; dy: moved down).

    ``reference`` (N, C, H, W), default each clip's frame 0: the frame displacements are measured
    from. Scoring a prediction, pass the real input frame so that the model's frames are measured
    from the photo it was given. Only the top ``sky`` share of the rows is used.

    Tracking: the small frame-to-frame shifts (reference → frame 0 → frame 1 → ...) are found
    first and summed into a guess per frame; each frame is then correlated directly with the
    reference over the region both share at the guess (``passes`` times, the last result the next
    guess), so errors do not accumulate and large shifts keep an exact overlap.
    """
    if clips.dim() != 5:
        raise ValueError(f"expected (N, C, T, H, W) clips, got shape {tuple(clips.shape)}")
    n, c, t, h, w = clips.shape
    if reference is None:
        reference = clips[:, :, 0]
    if reference.shape != (n, c, h, w):
        raise ValueError(f"reference must be (N, C, H, W) = {(n, c, h, w)}, got {tuple(reference.shape)}")
    rows = sky_rows(h, sky)
    frames = grey(clips.transpose(1, 2))[..., :rows, :]  # (N, T, rows, W)
    ref = grey(reference)[:, None, :rows, :]  # (N, 1, rows, W)
    previous = torch.cat([ref, frames[:, :-1]], 1)
    guess = phase_correlation(previous, frames, sigma).cumsum(1)  # (N, T, 2)
    for _ in range(passes):
        guess = phase_correlation(ref, frames, sigma, guess=guess)
    return guess


def frame_change(clips: Tensor) -> Tensor:
    """Mean |x_t − x_{t−1}| over frames 1..T−1, channels and pixels, in [0, 1] units: (N,) float64."""
    if clips.dim() != 5 or clips.shape[2] < 2:
        raise ValueError(f"expected (N, C, T, H, W) clips with T >= 2, got shape {tuple(clips.shape)}")
    x = to_unit_range(clips).double()
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2, 3, 4))


def agreement(pred: np.ndarray, true: np.ndarray, degrees: float = AGREE_DEGREES,
              length: float = AGREE_LENGTH) -> np.ndarray:
    """Per clip: does ``pred`` (N, 2) point within ``degrees`` of ``true`` (N, 2) and reach at least
    ``length`` times its length? (N,) bool; False where the truth does not move (|true| = 0)."""
    pred, true = np.asarray(pred, np.float64).reshape(-1, 2), np.asarray(true, np.float64).reshape(-1, 2)
    p, q = np.hypot(pred[:, 0], pred[:, 1]), np.hypot(true[:, 0], true[:, 1])
    cos = (pred * true).sum(-1) / np.maximum(p * q, _EPS)
    return (q > 0) & (p >= length * q) & (cos >= math.cos(math.radians(degrees)) - 1e-12)


def per_clip(pred_disp: np.ndarray, true_disp: np.ndarray, pred_change: Optional[np.ndarray] = None,
             true_change: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """The per-clip measures (keys ``PER_CLIP``, (N,) float64 each) from displacements (N, 2) of the
    prediction and of the truth at one frame (usually the last) and, if given, the clips' frame
    changes (N,) (``frame_change``; else nan):

    pred_dx, pred_dy, true_dx, true_dy: the displacements; pred_displacement, true_displacement:
    their lengths (px); angle: between them (degrees; nan where either is 0);
    direction_agreement: 1.0 or 0.0 (``agreement``); magnitude_ratio: pred / true length (nan
    where the truth is 0); along_ratio: the prediction's length along the true direction over the
    true length (1: right, 0: no motion that way, negative: backwards); pred_frame_change,
    true_frame_change.
    """
    pred = np.asarray(pred_disp, np.float64).reshape(-1, 2)
    true = np.asarray(true_disp, np.float64).reshape(-1, 2)
    p, q = np.hypot(pred[:, 0], pred[:, 1]), np.hypot(true[:, 0], true[:, 1])
    dot = (pred * true).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.degrees(np.arccos(np.clip(dot / (p * q), -1, 1)))
        ratio, along = np.where(q > 0, p / q, np.nan), np.where(q > 0, dot / (q * q), np.nan)
    nan = np.full(len(p), np.nan)
    return {"pred_dx": pred[:, 0], "pred_dy": pred[:, 1], "true_dx": true[:, 0], "true_dy": true[:, 1],
            "pred_displacement": p, "true_displacement": q, "angle": np.where((p > 0) & (q > 0), angle, np.nan),
            "direction_agreement": agreement(pred, true).astype(np.float64), "magnitude_ratio": ratio,
            "along_ratio": along,
            "pred_frame_change": nan if pred_change is None else np.asarray(pred_change, np.float64).reshape(-1),
            "true_frame_change": nan if true_change is None else np.asarray(true_change, np.float64).reshape(-1)}


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def summarize(clips: dict[str, np.ndarray]) -> dict[str, float]:
    """The summary measures (keys ``SUMMARY``) of per-clip measures (``per_clip``'s dict, or the
    same arrays concatenated over batches and ranks); nan without clips:

    pred_displacement, true_displacement: mean lengths (px); direction_agreement: the share of
    clips that agree (``agreement``); magnitude_ratio: mean predicted length / mean true length;
    magnitude_ratio_median: the median over clips of the per-clip ratio; along_ratio: the mean
    length of the prediction along the true direction / the mean true length (signed);
    pred_frame_change, true_frame_change: mean frame-to-frame change (``frame_change``).
    """
    p, q = np.asarray(clips["pred_displacement"]), np.asarray(clips["true_displacement"])
    if not len(p):
        return dict.fromkeys(SUMMARY, math.nan)
    mean_q = float(q.mean())
    along = np.where(q > 0, (clips["pred_dx"] * clips["true_dx"] + clips["pred_dy"] * clips["true_dy"])
                     / np.maximum(q, _EPS), 0.0)
    ratios = np.asarray(clips["magnitude_ratio"])
    ratios = ratios[np.isfinite(ratios)]
    return {"pred_displacement": float(p.mean()), "true_displacement": mean_q,
            "direction_agreement": float(np.mean(clips["direction_agreement"])),
            "magnitude_ratio": float(p.mean()) / mean_q if mean_q > 0 else math.nan,
            "magnitude_ratio_median": float(np.median(ratios)) if len(ratios) else math.nan,
            "along_ratio": float(along.mean()) / mean_q if mean_q > 0 else math.nan,
            "pred_frame_change": _mean(np.asarray(clips["pred_frame_change"])),
            "true_frame_change": _mean(np.asarray(clips["true_frame_change"]))}


@torch.no_grad()
def compare(pred: Tensor, real: Tensor, frame: int = -1, sky: float = SKY_FRACTION) -> dict:
    """Motion of predicted clips against the real ones, both (N, C, T, H, W) in [-1, 1].

    Both are measured from the real input frame (real frame 0), at ``frame`` (default the last).
    Returns ``summarize``'s measures (floats), ``"clips"``: ``per_clip``'s arrays, and
    ``"pred_curve"``, ``"true_curve"``: (N, T, 2) numpy displacements of every frame.
    """
    if pred.shape != real.shape or pred.dim() != 5:
        raise ValueError(f"pred and real must be (N, C, T, H, W) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(real.shape)}")
    reference = real[:, :, 0]
    pred_curve = displacement(pred, reference, sky).cpu().numpy()
    true_curve = displacement(real, reference, sky).cpu().numpy()
    clips = per_clip(pred_curve[:, frame], true_curve[:, frame], frame_change(pred).cpu().numpy(),
                     frame_change(real).cpu().numpy())
    return {**summarize(clips), "clips": clips, "pred_curve": pred_curve, "true_curve": true_curve}
