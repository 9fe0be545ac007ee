"""The pix2pix next-frame GAN of Zhang 2019 §IV (SJSU CS297 report; docs/models.md, References),
rolled out autoregressively from one frame.

Zhang 2019 §IV trains pix2pix (Isola et al. 2017, arXiv:1611.07004) on pairs of consecutive
frames (t, t+1) at 256×256 and predicts a clip by feeding each predicted frame back in. The
networks are pix2pix's:

- G: the U-Net of pix2pix, downsampling to 1×1 (8 levels at 256×256) with widths
  64·min(2^i, 8), LeakyReLU(0.2) encoder, ReLU decoder, BatchNorm except at the outermost and
  innermost levels, concatenated skips, dropout 0.5 in the decoder levels that pix2pix gives it
  (the ``levels - 5`` just below the innermost; none below 64×64), Tanh output.
- D: the 70×70 PatchGAN on the channel-concatenated pair (frame_t, frame_t+1): C64-C128-C256
  (stride 2), C512 (stride 1), a 1-channel conv; one logit per patch.

pix2pix keeps dropout at test time as its noise source; here ``rollout`` runs the network in
whatever mode it is in, and the trainer's ``predict`` uses eval mode (deterministic validation).
The L1 weight (pix2pix's λ = 100) is the trainer's ``loss.lambda_con``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssagan_dist.models.registry import register
from ssagan_dist.models.video3d import log2_exact
from ssagan_dist.models.layers import (GlobalVelocity, check_output, compose_output, init_weights, output_channels,
                                       zero_output_layer)


class UNet2d(nn.Module):
    """pix2pix's U-Net generator: frame (N, C, size, size) -> next frame, same shape, in [-1, 1]."""

    conditioning = "frame"

    def __init__(self, size: int = 256, channels: int = 3, base_channels: int = 64, frames: int = 32,
                 dropout: float = 0.5, output: str = "direct"):
        super().__init__()
        self.size, self.channels = size, channels
        self.output = check_output(output)  # residual / flow: layers.compose_output
        self.frames = frames  # the clip length a rollout makes by default (one input + frames-1 predictions)
        levels = log2_exact(size, "size")
        widths = [base_channels * min(2**i, 8) for i in range(levels)]
        self.down = nn.ModuleList()
        for i in range(levels):
            c_in = channels if i == 0 else widths[i - 1]
            norm = 0 < i < levels - 1
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, widths[i], 4, 2, 1, bias=False))  # pix2pix: no bias with BatchNorm
            if norm:
                layers.append(nn.BatchNorm2d(widths[i]))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for i in range(levels):  # up[i] undoes down[i]
            c_in = widths[i] if i == levels - 1 else 2 * widths[i]  # the innermost has no skip to concatenate
            layers = [nn.ReLU()]
            if i == 0:
                layers += [nn.ConvTranspose2d(c_in, output_channels(self.output, channels), 4, 2, 1), nn.Tanh()]
            else:
                layers += [nn.ConvTranspose2d(c_in, widths[i - 1], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[i - 1])]
                if 4 <= i < levels - 1 and dropout > 0:  # pix2pix: the levels - 5 ngf*8 blocks under the innermost
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        # flow output: the frame's global velocity, pooled from every encoder level's features
        self.velocity = GlobalVelocity(widths) if self.output == "flow" else None

    def forward(self, frame: Tensor) -> Tensor:
        skips = []
        x = frame
        for down in self.down:
            x = down(x)
            skips.append(x)
        velocity = self.velocity(skips) if self.velocity is not None else None
        x = self.up[-1](skips[-1])
        for i in range(len(self.up) - 2, -1, -1):
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        return compose_output(frame, x, self.output, velocity)

    def start_unchanged(self) -> None:
        """Residual and flow outputs: zero the last deconv (and the velocity), so G starts by copying its frame."""
        if self.output != "direct":
            zero_output_layer(self.up[0][1])
        if self.velocity is not None:
            zero_output_layer(self.velocity.linear)

    def rollout(self, first_frame: Tensor, frames: int | None = None) -> Tensor:
        """(N, C, H, W) -> (N, C, frames, H, W): frame 0 is the input, each next frame G(previous)."""
        clip = [first_frame]
        for _ in range((frames or self.frames) - 1):
            clip.append(self(clip[-1]))
        return torch.stack(clip, dim=2)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (torch.rand(n, self.channels, self.size, self.size) * 2 - 1,)


class PatchDiscriminator(nn.Module):
    """PatchGAN on a pair: (frame_t, frame_t+1), each (N, C, H, W) -> patch logits (N, 1, h, w)."""

    def __init__(self, size: int = 256, channels: int = 3, base_channels: int = 64, layers: int = 3):
        super().__init__()
        self.size, self.channels = size, channels
        widths = [base_channels * min(2**i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(2 * channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1, bias=False), nn.BatchNorm2d(widths[i]),
                       nn.LeakyReLU(0.2, True)]
        blocks.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, frame: Tensor, next_frame: Tensor) -> Tensor:
        return self.net(torch.cat([frame, next_frame], dim=1))

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return tuple(torch.rand(n, self.channels, self.size, self.size) * 2 - 1 for _ in range(2))


@register(
    "pix2pix_video",
    family="pix2pix",
    flavors={
        "paper": dict(size=256, channels=3, frames=32, g_channels=64, d_channels=64),
        "tiny": dict(size=32, channels=3, frames=8, g_channels=8, d_channels=8),
    },
    description="Zhang 2019 §IV: pix2pix U-Net G (frame t -> t+1) + PatchGAN D on frame pairs; autoregressive rollout",
)
def build_pix2pix_video(size: int = 256, channels: int = 3, frames: int = 32, g_channels: int = 64,
                        d_channels: int = 64, output: str = "direct") -> dict[str, nn.Module]:
    nets = {"G": UNet2d(size, channels, g_channels, frames, output=output),
            "D": PatchDiscriminator(size, channels, d_channels)}
    for net in nets.values():
        init_weights(net)
    nets["G"].start_unchanged()
    return nets
