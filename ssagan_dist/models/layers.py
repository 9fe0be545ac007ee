"""Model-agnostic helpers shared by the model zoo and the trainers (no imports from either)."""

from __future__ import annotations

import torch
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


OUTPUTS = ("direct", "residual")


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output = {output!r}: must be one of {list(OUTPUTS)}")
    return output


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
