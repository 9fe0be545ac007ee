"""Frame-level MSE, PSNR and SSIM between predicted and real clips.

Conventions (docs/metrics.md explains them and how they differ from the papers' code):
- Clips are (N, C, T, H, W) in [-1, 1], the pipeline's range. Metrics convert them to [0, 1]
  with (x + 1) / 2 and clamp to [0, 1], so the data range is 1.
- PSNR = 10·log10(1 / MSE) per frame, capped at PSNR_CAP = 100 dB (an identical frame would
  give +inf and make every average infinite).
- SSIM: Gaussian window σ = 1.5 truncated at 3.5σ (11 taps), K = (0.01, 0.03), population
  (co)variances, mean of the SSIM map over the valid region (the border of (win − 1) // 2
  pixels is dropped) averaged over channels: scikit-image's
  structural_similarity(data_range=1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, channel_axis=-1). For images with a side under 11 pixels the
  window is shrunk to the largest odd size w that fits (the σ = 1.5 Gaussian keeps its 11
  taps, the image is mirrored at its edges like scipy's "reflect" mode, the cropped border is
  (w − 1) // 2): that is scikit-image called with win_size=w.
- Averaging order as in the papers: per frame, then over frames (per video), then over videos.
  Frame 0 is the input photo, so per-video means start at `from_frame=1` by default: the
  copy-the-input baseline is exact there and would gain 100 / T dB of PSNR from it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PSNR_CAP = 100.0
SSIM_SIGMA = 1.5
SSIM_WIN = 11  # 2 * int(3.5 * σ + 0.5) + 1, scikit-image's size for σ = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
METRICS = ("mse", "psnr", "ssim")
_CHUNK_FRAMES = 64


def to_unit_range(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] (clamped), in float32 or wider."""
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return ((x + 1) / 2).clamp(0, 1)


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


@torch.no_grad()
def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image: (B, C, H, W) x2 -> (B,)."""
    _check_images(x, y)
    return (x - y).pow(2).flatten(1).mean(1)


@torch.no_grad()
def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image, capped at PSNR_CAP: (B, C, H, W) x2 -> (B,)."""
    return psnr_from_mse(mse(x, y), data_range)


def psnr_from_mse(mse_values: Tensor, data_range: float = 1.0) -> Tensor:
    """10·log10(range² / MSE), capped at PSNR_CAP (MSE = 0 would give +inf)."""
    return (10 * torch.log10(data_range**2 / mse_values)).clamp(max=PSNR_CAP)


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> Tensor:
    r = SSIM_WIN // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def _symmetric_index(n: int, pad: int, device: torch.device) -> Tensor:
    """Indices extending 0..n-1 by `pad` on each side, half-sample symmetric (scipy 'reflect')."""
    j = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(j < n, j, 2 * n - 1 - j)


def ssim_window(height: int, width: int) -> int:
    """The SSIM window side used for an image: 11, or the largest odd size that fits."""
    side = min(height, width)
    return min(SSIM_WIN, side if side % 2 else side - 1)


@torch.no_grad()
def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image, averaged over channels: (B, C, H, W) x2 -> (B,)."""
    _check_images(x, y)
    b, c, h, w = x.shape
    if x.dtype in (torch.float16, torch.bfloat16):
        x, y = x.float(), y.float()
    # Only the filtered values inside the kept region are needed: position i uses image pixels
    # i-5..i+5, so padding by 5 - crop (zero for 11x11 windows, a plain valid convolution)
    # gives exactly that region.
    crop = (ssim_window(h, w) - 1) // 2
    pad = SSIM_WIN // 2 - crop
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    if pad:
        stack = stack[:, :, _symmetric_index(h, pad, x.device)][..., _symmetric_index(w, pad, x.device)]
    taps = _gaussian_taps(x.dtype, x.device)
    groups = stack.shape[1]
    stack = F.conv2d(stack, taps.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    stack = F.conv2d(stack, taps.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    ux, uy, uxx, uyy, uxy = stack.split(c, dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.flatten(1).mean(1)  # mean over the region of each channel, then channels: same weights


@torch.no_grad()
def clip_metrics(pred: Tensor, real: Tensor, from_frame: int = 1) -> dict[str, Tensor]:
    """MSE, PSNR and SSIM of (N, C, T, H, W) clips in [-1, 1].

    Returns "mse", "psnr", "ssim": (N,) per-video means over frames from_frame..T-1, and
    "mse_per_frame", "psnr_per_frame", "ssim_per_frame": (N, T) for every frame.
    """
    if pred.shape != real.shape or pred.dim() != 5:
        raise ValueError(
            f"pred and real must be (N, C, T, H, W) of one shape, got {tuple(pred.shape)} and {tuple(real.shape)}"
        )
    n, c, t, h, w = pred.shape
    if not 0 <= from_frame < t:
        raise ValueError(f"from_frame={from_frame} leaves no frame of a {t}-frame clip")
    x, y = (to_unit_range(v).transpose(1, 2).reshape(n * t, c, h, w) for v in (pred, real))
    # chunks bound SSIM's working memory (about 12 copies of a chunk) on big validation batches
    chunks = list(zip(x.split(_CHUNK_FRAMES), y.split(_CHUNK_FRAMES)))
    mse_values = torch.cat([mse(a, b) for a, b in chunks]).view(n, t)
    per_frame = {
        "mse": mse_values,
        "psnr": psnr_from_mse(mse_values),
        "ssim": torch.cat([ssim(a, b) for a, b in chunks]).view(n, t),
    }
    out = {name: values[:, from_frame:].mean(1) for name, values in per_frame.items()}
    out.update({f"{name}_per_frame": values for name, values in per_frame.items()})
    return out


def copy_frame_baseline(real: Tensor) -> Tensor:
    """The clip that repeats the input frame (frame 0) T times: a broadcast view of `real`."""
    return real[:, :, :1].expand_as(real)


class MetricSums:
    """Sums of per-video metrics and their counts, to be all-reduced across ranks.

    Layout is fixed by (num_frames, prefixes), so every rank builds the same flat tensor even
    when it saw no clips; all-reduce (SUM) the output of `to_tensor()` and pass it to `means()`:

        sums = MetricSums(num_frames=T)
        for batch in val_loader:
            pred = G(...)
            sums.add(clip_metrics(pred, real))
            sums.add(clip_metrics(copy_frame_baseline(real), real), prefix="baseline_")
        flat = sums.to_tensor(device)
        torch.distributed.all_reduce(flat)
        means = sums.means(flat)  # {"psnr": .., "baseline_psnr": .., "psnr_curve": [T floats], ..}
    """

    def __init__(self, num_frames: int, prefixes: Sequence[str] = ("", "baseline_")) -> None:
        self.num_frames = num_frames
        self.prefixes = tuple(prefixes)
        # per prefix: one sum per metric, then the per-frame PSNR sums (T), then the count
        self._width = len(METRICS) + num_frames + 1
        self._sums = torch.zeros(len(self.prefixes), self._width, dtype=torch.float64)

    def add(self, metrics: dict[str, Tensor], prefix: str = "") -> None:
        """Add the output of `clip_metrics` for a batch of videos under `prefix`."""
        if prefix not in self.prefixes:
            raise KeyError(f"unknown metric prefix {prefix!r}; this MetricSums has {self.prefixes}")
        curve = metrics["psnr_per_frame"]
        if curve.shape[1] != self.num_frames:
            raise ValueError(f"psnr_per_frame has {curve.shape[1]} frames, MetricSums expects {self.num_frames}")
        row = self._sums[self.prefixes.index(prefix)]
        for i, name in enumerate(METRICS):
            row[i] += metrics[name].detach().double().sum().cpu()
        row[len(METRICS) : -1] += curve.detach().double().sum(0).cpu()
        row[-1] += curve.shape[0]

    def to_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """The flat float64 tensor of sums and counts (a copy), ready for an all-reduce."""
        return self._sums.flatten().to(device, copy=True)

    def means(self, flat: Tensor | None = None) -> dict[str, float | list[float]]:
        """Means from `flat` (all-reduced sums) or from this rank's own sums.

        Keys: f"{prefix}{metric}" for metric in mse/psnr/ssim, f"{prefix}psnr_curve" (mean PSNR at
        each frame), f"{prefix}count" (videos). Means of an empty count are nan.
        """
        sums = (self._sums if flat is None else flat.detach().cpu().double()).view(len(self.prefixes), self._width)
        out: dict[str, float | list[float]] = {}
        for prefix, row in zip(self.prefixes, sums):
            count = row[-1].item()
            mean = row / count if count else torch.full_like(row, math.nan)
            for i, name in enumerate(METRICS):
                out[prefix + name] = mean[i].item()
            out[prefix + "psnr_curve"] = mean[len(METRICS) : -1].tolist()
            out[prefix + "count"] = int(count)
        return out
