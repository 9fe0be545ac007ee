"""Model-agnostic helpers shared by the model zoo and the trainers (no imports from either)."""

from __future__ import annotations

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
