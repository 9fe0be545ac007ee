"""HRVGAN (arXiv:2008.09646): class-conditional video generation from noise, trained as a WGAN-GP.

The paper fixes: 3D deconvs with BatchNorm and ReLU in G, 3D convs with InstanceNorm and leaky
ReLU in D (a critic: no sigmoid), class labels given to both networks, WGAN with a k-Lipschitz
constraint plus a mean-square pixel loss. Its figure with the layer table did not survive in the
seed text, so the layer plan here is the usual one for 3D video GANs (VGAN/TGAN lineage),
derived from (size, frames, base_channels) so tiny and paper sizes share the code:

- G: [z ; embed(label)] as a 1×1×1 volume -> ConvTranspose3d with kernel (t0, 4, 4) to
  (C0, t0, 4, 4) -> stride-2 ConvTranspose3d (kernel 4) doubling H, W and, while below
  ``frames``, T -> last layer to ``channels`` with Tanh. Widths halve per layer from
  ``max_channels`` down to ``base_channels`` at size/2.
- D: the mirror image with Conv3d, InstanceNorm3d (affine; none after the first conv, as in
  DCGAN) and LeakyReLU(0.2), then a (t, 4, 4) conv to one score plus a projection term
  <embed(label), mean-pooled features> (Miyato & Koyama 2018) for the label conditioning.

Data without labels: the trainer passes class 0 for every clip (documented in the trainer).
The paper trains UCF101 (101 classes) and the 128×128 Golf/Aeroplane sets; the "paper" flavor
is 32 frames of 128×128 (this project's clip size); ``size=256`` gives the paper's largest output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssagan_dist.models.registry import register
from ssagan_dist.models.video3d import conv3d, log2_exact, time_strides
from ssagan_dist.models.layers import init_weights


def _plan(size: int, frames: int, base_channels: int, max_channels: int) -> tuple[int, int, list[int], list[int]]:
    """(stride-2 layers, frames at 4×4, widths from 4×4 up to size/2, time strides)."""
    if size % 4:
        raise ValueError(f"size = {size} must be 4 times a power of two")
    layers = log2_exact(size // 4, "size / 4")
    if layers < 1:
        raise ValueError(f"size = {size} must be at least 8")
    t0 = max(1, frames >> layers)
    widths = [min(max_channels, base_channels * 2 ** (layers - 1 - j)) for j in range(layers)]
    return layers, t0, widths, time_strides(t0, frames, layers)


class HRVGANGenerator(nn.Module):
    """(z (N, z_dim), labels (N,) int64) -> video (N, C, frames, size, size) in [-1, 1]."""

    conditioning = "label"

    def __init__(self, num_classes: int = 101, z_dim: int = 100, frames: int = 32, size: int = 128,
                 channels: int = 3, base_channels: int = 64, max_channels: int = 512, embed_dim: int | None = None):
        super().__init__()
        self.num_classes, self.z_dim, self.frames, self.size, self.channels = num_classes, z_dim, frames, size, channels
        layers, t0, widths, strides = _plan(size, frames, base_channels, max_channels)
        embed_dim = embed_dim or z_dim
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Sequential(
            nn.ConvTranspose3d(z_dim + embed_dim, widths[0], (t0, 4, 4), bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        for j in range(layers - 1):
            blocks += [conv3d(widths[j], widths[j + 1], strides[j], transpose=True, bias=False),
                       nn.BatchNorm3d(widths[j + 1]), nn.ReLU(inplace=True)]
        blocks += [conv3d(widths[-1], channels, strides[-1], transpose=True), nn.Tanh()]
        self.upsample = nn.Sequential(*blocks)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        code = torch.cat([z, self.embed(labels)], dim=1)
        return self.upsample(self.project(code[:, :, None, None, None]))

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return torch.randn(n, self.z_dim), torch.arange(n) % self.num_classes


class HRVGANCritic(nn.Module):
    """(video (N, C, T, H, W), labels (N,)) -> (N,) unbounded WGAN scores."""

    def __init__(self, num_classes: int = 101, frames: int = 32, size: int = 128, channels: int = 3,
                 base_channels: int = 64, max_channels: int = 512):
        super().__init__()
        self.num_classes, self.frames, self.size, self.channels = num_classes, frames, size, channels
        layers, t_out, widths, strides = _plan(size, frames, base_channels, max_channels)
        widths = widths[::-1]  # size/2 ... 4×4
        blocks: list[nn.Module] = []
        for j, (c_in, c_out) in enumerate(zip([channels, *widths], widths)):
            blocks.append(conv3d(c_in, c_out, strides[j], bias=j == 0))
            if j > 0:
                blocks.append(nn.InstanceNorm3d(c_out, affine=True))
            blocks.append(nn.LeakyReLU(0.2, inplace=True))
        self.features = nn.Sequential(*blocks)
        self.score = nn.Conv3d(widths[-1], 1, (t_out, 4, 4), bias=False)  # a bias cancels in every WGAN term
        self.embed = nn.Embedding(num_classes, widths[-1])

    def forward(self, video: Tensor, labels: Tensor) -> Tensor:
        h = self.features(video)
        projection = (self.embed(labels) * h.mean(dim=(2, 3, 4))).sum(dim=1)
        return self.score(h).flatten() + projection

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        video = torch.rand(n, self.channels, self.frames, self.size, self.size) * 2 - 1
        return video, torch.arange(n) % self.num_classes


@register(
    "hrvgan",
    family="wgan_gp",
    flavors={
        "paper": dict(num_classes=101, z_dim=100, frames=32, size=128, channels=3, base_channels=64,
                      max_channels=512),
        "tiny": dict(num_classes=4, z_dim=16, frames=8, size=32, channels=3, base_channels=8, max_channels=32),
    },
    description="HRVGAN (arXiv:2008.09646): class-conditional 3D-deconv G (BN+ReLU) and 3D-conv critic "
                "(IN+LeakyReLU); WGAN-GP + pixel MSE",
)
def build_hrvgan(num_classes: int = 101, z_dim: int = 100, frames: int = 32, size: int = 128, channels: int = 3,
                 base_channels: int = 64, max_channels: int = 512) -> dict[str, nn.Module]:
    nets = {
        "G": HRVGANGenerator(num_classes, z_dim, frames, size, channels, base_channels, max_channels),
        "D": HRVGANCritic(num_classes, frames, size, channels, base_channels, max_channels),
    }
    for net in nets.values():
        init_weights(net)
    return nets
