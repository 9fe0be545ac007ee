"""The 2D DCGAN of Zhang 2019 §II (SJSU CS297 report; docs/models.md, References): the T = 1
case of the video pipeline.

Zhang 2019 §II: G reshapes a 100-d noise vector to 7×7×128, upsamples with ``UpSampling2D`` and
three conv layers with BatchNorm and leaky ReLU to a 28×28×1 image. D uses BatchNorm, dropout
and LeakyReLU(0.2), and its flattened output has 4,096 features, which fixes the widths of the
Keras DCGAN it follows: 3×3 convs with 32, 64, 128 (stride 2) and 256 (stride 1) channels,
giving 4×4×256 features at 28×28, then one linear logit. Dropout 0.25 after each D conv, Tanh
on G's output (both from that Keras DCGAN; the seed is silent).

The "paper" flavor is the report's 28×28 grayscale; training on the video data needs
``size``/``channels`` matching the clips (the "tiny" flavor is 32×32 RGB). Images go in and
out as (N, C, 1, H, W) so the model flows through the video pipeline unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssagan_dist.models.registry import register
from ssagan_dist.models.layers import init_weights


class DCGANGenerator(nn.Module):
    """z (N, z_dim) -> image (N, C, 1, size, size) in [-1, 1]."""

    conditioning = "none"
    frames = 1

    def __init__(self, z_dim: int = 100, size: int = 28, channels: int = 1, start_channels: int = 128,
                 num_upsamples: int = 2):
        super().__init__()
        self.z_dim, self.size, self.channels = z_dim, size, channels
        if size % 2**num_upsamples:
            raise ValueError(f"size = {size} must be divisible by 2**num_upsamples = {2**num_upsamples}")
        s0 = size >> num_upsamples
        widths = [max(1, start_channels >> i) for i in range(num_upsamples)]  # 128, 64
        layers: list[nn.Module] = [nn.Linear(z_dim, start_channels * s0 * s0), nn.ReLU(True),
                                   nn.Unflatten(1, (start_channels, s0, s0))]
        for c_in, c_out in zip([start_channels, *widths], widths):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unsqueeze(2)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(n, self.z_dim),)


class DCGANDiscriminator(nn.Module):
    """image (N, C, 1, H, W) or (N, C, H, W) -> (N,) logits."""

    def __init__(self, size: int = 28, channels: int = 1, base_channels: int = 32, dropout: float = 0.25):
        super().__init__()
        self.size, self.channels = size, channels
        widths = [base_channels * 2**i for i in range(4)]  # 32, 64, 128, 256
        strides = [2, 2, 2, 1]
        layers: list[nn.Module] = []
        out_size = size
        for i, (c_in, c_out, stride) in enumerate(zip([channels, *widths], widths, strides)):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
            out_size = (out_size - 1) // stride + 1
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(widths[-1] * out_size**2, 1)  # 4 * 4 * 256 = 4096 features at 28x28

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() == 5:
            if image.shape[2] != 1:
                raise ValueError(f"DCGAN discriminator takes single frames (T = 1), got shape {tuple(image.shape)}")
            image = image.squeeze(2)
        return self.logit(self.features(image).flatten(1)).squeeze(1)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (torch.rand(n, self.channels, 1, self.size, self.size) * 2 - 1,)


@register(
    "dcgan",
    family="noise",
    flavors={
        "paper": dict(z_dim=100, size=28, channels=1, g_channels=128, d_channels=32),
        "tiny": dict(z_dim=16, size=32, channels=3, g_channels=16, d_channels=8),
    },
    description="Zhang 2019 §II: 2D DCGAN (noise -> 7x7x128 -> upsample+conv -> 28x28), the T = 1 case",
)
def build_dcgan(z_dim: int = 100, size: int = 28, channels: int = 1, g_channels: int = 128,
                d_channels: int = 32) -> dict[str, nn.Module]:
    nets = {"G": DCGANGenerator(z_dim, size, channels, g_channels), "D": DCGANDiscriminator(size, channels, d_channels)}
    for net in nets.values():
        init_weights(net)
    return nets
