"""Model-agnostic helpers shared by the model zoo and the trainers (no imports from either)."""

from __future__ import annotations

import math

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_weights(module: nn.Module) -> None:
    """MD-GAN's public init: conv weights ~ N(0, 0.02), BN weights ~ N(1, 0.02), BN bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def repeat_frame(frame: Tensor, frames: int) -> Tensor:
    """(N, C, H, W) photo -> (N, C, frames, H, W) static clip, the Stage-I input."""
    return frame.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()


OUTPUTS = ("direct", "residual", "flow")
FLOW_RANGE = 2.0  # the largest local velocity a flow output can say, in grid units per clip (2 = the frame's width)


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output = {output!r}: must be one of {list(OUTPUTS)}")
    return output


def output_channels(output: str, channels: int) -> int:
    """Channels of a generator's last layer: the image's, plus three for ``flow`` (a local velocity
    (x, y) and the gate of the global one)."""
    return channels + 3 if check_output(output) == "flow" else channels


def compose_output(base: Tensor, out: Tensor, output: str, velocity: Tensor | None = None) -> Tensor:
    """A generator's prediction from its last layer's Tanh ``out`` and its input ``base``: a clip
    ``(N, C, T, H, W)`` or, for a next-frame generator, one frame ``(N, C, H, W)``.

    - ``direct``: ``out`` is the image (the papers);
    - ``residual``: ``out`` is the change from ``base`` (``apply_change``);
    - ``flow``: ``base``'s pixels are moved (``warp``), then ``out``'s first C channels are applied
      to them as a change. Each pixel moves at a constant velocity: over a clip, frame t moves
      ``t / (T - 1)`` of it, a next frame moves it once. The velocity is ``gate · velocity + local``:
      ``velocity`` (N, 2), one per clip (a global wind, ``GlobalVelocity`` of the encoder's features),
      ``gate`` in (0, 1) and ``local`` (x, y) per pixel from ``out``'s last three channels,
      averaged over the clip's frames. Velocities are in ``grid_sample``'s units (2 = the frame's
      width). A zeroed last layer and velocity predict ``base``, as ``residual`` does (up to
      ``grid_sample``'s rounding, about 1e-5).
    """
    if output == "direct":
        return out
    if output == "residual":
        return apply_change(base, out)
    channels = base.shape[1]
    change, local, gate = out[:, :channels], out[:, channels:channels + 2], out[:, channels + 2:channels + 3]
    gate = (gate + 1) / 2
    if base.dim() == 5:
        local, gate = local.mean(2, keepdim=True), gate.mean(2, keepdim=True)
    moved = local * FLOW_RANGE
    if velocity is not None:
        moved = moved + gate * velocity.view(*velocity.shape, *[1] * (base.dim() - 2))
    if base.dim() == 5:
        frames = base.shape[2]
        moved = moved * torch.linspace(0, 1, frames, device=base.device, dtype=moved.dtype).view(1, 1, frames, 1, 1)
    return apply_change(warp(base, moved.expand(-1, -1, *base.shape[2:])), change)


class GlobalVelocity(nn.Module):
    """The global velocity of a flow output, (N, 2), from feature maps at several scales: each map's
    mean and maximum over its positions (time and space), concatenated, through one linear layer,
    zero at the start. Pooling makes it translation-invariant: what shows the wind (a flag, the
    clouds' streaks) counts wherever it stands in the frame."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        self.linear = nn.Linear(2 * sum(widths), 2)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        pooled = [torch.cat([m.flatten(2).mean(-1), m.flatten(2).amax(-1)], dim=1) for m in maps]
        return self.linear(torch.cat(pooled, dim=1))


def warp(frames: Tensor, flow: Tensor) -> Tensor:
    """``frames`` with each pixel's content moved by ``flow``: the output at x is ``frames`` at
    ``x - flow(x)`` (bilinear; the border's colour continues past the edge).

    ``frames`` (N, C, H, W) or (N, C, T, H, W); ``flow`` (N, 2, ...) of the same layout, (dx, dy) in
    ``grid_sample``'s units: 2 is the frame's width (height), so a flow of 2/(W - 1) moves one pixel.
    """
    if frames.dim() == 5:
        n, c, t, h, w = frames.shape
        fold = lambda v: v.transpose(1, 2).reshape(n * t, v.shape[1], h, w)  # noqa: E731
        return warp(fold(frames), fold(flow)).reshape(n, t, c, h, w).transpose(1, 2)
    n, _, h, w = frames.shape
    ys = torch.linspace(-1, 1, h, device=frames.device, dtype=flow.dtype)
    xs = torch.linspace(-1, 1, w, device=frames.device, dtype=flow.dtype)
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2): (x, y)
    grid = (identity - flow.permute(0, 2, 3, 1)).to(frames.dtype)
    # grid_sample's CPU kernel reads out of bounds (a segfault, not an error) on a non-finite grid
    # (pytorch/pytorch#24823), which a diverging run produces: sample a safe grid and give those
    # pixels NaN, as any other op would, so the loss goes non-finite and the run stops as diverged.
    # The clamp is the identity for every finite flow the output head can give (|grid| <= 3).
    finite = torch.isfinite(grid).all(dim=-1)
    safe = torch.where(finite.unsqueeze(-1), grid, torch.zeros_like(grid)).clamp(-4, 4)
    moved = F.grid_sample(frames, safe, mode="bilinear", padding_mode="border", align_corners=True)
    return torch.where(finite.unsqueeze(1), moved, torch.full_like(moved, math.nan))


def apply_change(base: Tensor, change: Tensor) -> Tensor:
    """The frame(s) ``base`` moved by ``change`` in (-1, 1), staying in [-1, 1] (residual output).

    A positive change moves each pixel that fraction of the way towards +1, a negative one towards
    -1: ``change = 0`` gives ``base`` exactly, and no clamp cuts the gradient.
    """
    return base + change * torch.where(change > 0, 1 - base, 1 + base)


def zero_output_layer(layer: nn.Module) -> None:
    """Zero a generator's last (de)conv so a residual generator starts as 'no change'."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
