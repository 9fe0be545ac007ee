"""The 3D-CNN video GAN of Zhang 2019 §III (SJSU CS297 report; docs/models.md, References), and
the 3D conv blocks the noise-driven video models share.

Zhang 2019 §III: G reshapes a 100-d noise vector to 1×8×8×128 (T×H×W×C), four ``Conv3DTranspose``
layers with stride 2 and leaky ReLU upscale it, and a final stride-1 3D conv gives 8×128×128×3.
D: four 3D convs with kernel 4 and stride 2, then binary cross-entropy.

Filled gaps (the seed is silent): the widths (128→64→32→16 in G, 64→512 in D), BatchNorm as in
the report's own DCGAN (§II) and Radford et al., Tanh on G's output, a linear logit on D's
flattened features, and which layers double time: time doubles in the first layers until it
reaches ``frames`` (8 frames from 1 take three of the four layers; the fourth keeps time).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssagan_dist.models.registry import register
from ssagan_dist.models.layers import init_weights


def log2_exact(value: int, what: str) -> int:
    k = int(math.log2(value)) if value > 0 else -1
    if k < 0 or 2**k != value:
        raise ValueError(f"{what} = {value} must be a power of two")
    return k


def time_strides(t_small: int, t_big: int, layers: int) -> list[int]:
    """Per-layer time strides (2 or 1) taking t_small frames to t_big over ``layers`` layers.

    The doublings come first for a generator read front to back; reverse for a discriminator.
    """
    if t_big % t_small:
        raise ValueError(f"frames = {t_big} is not a multiple of {t_small}")
    doublings = log2_exact(t_big // t_small, f"frames / {t_small}")
    if doublings > layers:
        raise ValueError(f"cannot take {t_small} frame(s) to {t_big} with {layers} stride-2 layers")
    return [2] * doublings + [1] * (layers - doublings)


def conv3d(c_in: int, c_out: int, t_stride: int, *, transpose: bool = False, bias: bool = True) -> nn.Module:
    """Kernel 4, stride 2, padding 1 in space (halves/doubles H, W); in time the same when
    ``t_stride`` is 2, else kernel 3, stride 1, padding 1 (keeps T)."""
    kt = 4 if t_stride == 2 else 3
    cls = nn.ConvTranspose3d if transpose else nn.Conv3d
    return cls(c_in, c_out, (kt, 4, 4), (t_stride, 2, 2), 1, bias=bias)


class VideoDiscriminator(nn.Module):
    """DCGAN-style 3D-conv D: stride-2 convs (LeakyReLU 0.2, BatchNorm after the first), a linear logit.

    ``widths`` gives one conv per entry; time halves in the first layers down to one frame.
    """

    def __init__(self, frames: int, size: int, channels: int, widths: list[int]):
        super().__init__()
        self.frames, self.size, self.channels = frames, size, channels
        n = len(widths)
        if size % 2**n:
            raise ValueError(f"size = {size} must be divisible by 2**{n} for a {n}-layer discriminator")
        t_out = max(1, frames >> n)
        strides = time_strides(t_out, frames, n)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([channels, *widths], widths)):
            layers.append(conv3d(c_in, c_out, strides[i], bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm3d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(widths[-1] * t_out * (size >> n) ** 2, 1)

    def forward(self, video: Tensor) -> Tensor:
        """(N, C, T, H, W) -> (N,) logits."""
        return self.logit(self.features(video).flatten(1)).squeeze(1)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (torch.rand(n, self.channels, self.frames, self.size, self.size) * 2 - 1,)


class Video3DGenerator(nn.Module):
    """z (N, z_dim) -> video (N, C, frames, size, size) in [-1, 1]."""

    conditioning = "none"

    def __init__(self, z_dim: int = 100, frames: int = 8, size: int = 128, channels: int = 3,
                 start_channels: int = 128, num_upsamples: int = 4):
        super().__init__()
        self.z_dim, self.frames, self.size, self.channels = z_dim, frames, size, channels
        if size % 2**num_upsamples:
            raise ValueError(f"size = {size} must be divisible by 2**num_upsamples = {2**num_upsamples}")
        self.start = (start_channels, max(1, frames >> num_upsamples), size >> num_upsamples)
        c0, t0, s0 = self.start
        self.project = nn.Sequential(nn.Linear(z_dim, c0 * t0 * s0 * s0, bias=False),
                                     nn.Unflatten(1, (c0, t0, s0, s0)), nn.BatchNorm3d(c0), nn.LeakyReLU(0.2, True))
        widths = [max(1, start_channels >> i) for i in range(num_upsamples)]  # 128, 64, 32, 16
        strides = time_strides(t0, frames, num_upsamples)
        layers: list[nn.Module] = []
        for c_in, c_out, ts in zip([c0, *widths], widths, strides):
            layers += [conv3d(c_in, c_out, ts, transpose=True, bias=False), nn.BatchNorm3d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.upsample = nn.Sequential(*layers)
        self.to_rgb = nn.Sequential(nn.Conv3d(widths[-1], channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.to_rgb(self.upsample(self.project(z)))

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(n, self.z_dim),)


@register(
    "video3d_gan",
    family="noise",
    flavors={
        "paper": dict(z_dim=100, frames=8, size=128, channels=3, g_channels=128, d_channels=64),
        "tiny": dict(z_dim=16, frames=8, size=32, channels=3, g_channels=32, d_channels=8),
    },
    description="Zhang 2019 §III: 100-d noise -> 8x128x128 video with ConvTranspose3d; 4-layer 3D-conv D; BCE",
)
def build_video3d_gan(z_dim: int = 100, frames: int = 8, size: int = 128, channels: int = 3,
                      g_channels: int = 128, d_channels: int = 64) -> dict[str, nn.Module]:
    nets = {
        "G": Video3DGenerator(z_dim, frames, size, channels, start_channels=g_channels),
        "D": VideoDiscriminator(frames, size, channels, [d_channels * 2**i for i in range(4)]),
    }
    for net in nets.values():
        init_weights(net)
    return nets
