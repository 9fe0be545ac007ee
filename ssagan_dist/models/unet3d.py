"""The 3D U-Net generator and discriminator of SSA-GAN (Horita & Yanai 2019) and MD-GAN
(arXiv:1709.07592); docs/models.md, References.

Table 1 of the SSA-GAN paper (= MD-GAN's G1) at 3×32×128×128, base width b = 32:

    conv1  b    (3,4,4) s(1,2,2) p1   ->  32×32×64×64     deconv1 16b (2,4,4) s1 p0   -> 512×2×4×4
    conv2  2b   4       s2       p1   ->  64×16×32×32     deconv2 8b  4       s2 p1   -> 256×4×8×8
    conv3  4b   ...                   -> 128×8×16×16      deconv3 4b                  -> 128×8×16×16
    conv4  8b                         -> 256×4×8×8        deconv4 2b                  ->  64×16×32×32
    conv5  16b                        -> 512×2×4×4        deconv5 b                   ->  32×32×64×64
    conv6  16b  (2,4,4) s1       p0   -> 512×1×1×1        deconv6 3   (3,4,4) s(1,2,2) p1 -> 3×32×128×128

As in the public MD-GAN code: bias-free convs; conv1 and conv6 have neither BN nor activation,
conv2..conv5 are conv-BN-LeakyReLU(0.2); deconv1..deconv5 are deconv-BN-ReLU followed by the
additive skip ``up_k = down_{6-k} + up_k``; deconv6 ends in Tanh. With SSA enabled (SSA-GAN) a
``SpatialSelfAttention`` follows every block but the output layer (conv1..conv6, deconv1..deconv5),
before the skip addition. That gives exactly 39,072,576 parameters without SSA.

Depth and widths come from (size, frames, base_width), so a 32×32×8 tiny model runs the same
code: the optional *stem* is the (1,2,2)-stride conv1/deconv6 pair; then stride-2 layers halve
T and H, W until T = 2 (``frames/2^n = 2``); the innermost conv's kernel (2, s, s) collapses
what is left to 1×1×1. Widths are b·2^j for the j-th stride-2 layer. The stem is present when
``size > 2·frames`` (128²×32: yes; Beach 64²×32: no, the paper's "without conv1 and deconv6",
whose last deconv then outputs the 3 colour channels).

Inputs: every generator here maps a clip (N, C, T, H, W) to a clip of the same shape. Stage I
gets the input photo repeated T times (``repeat_frame``); Stage II gets the Stage-I output Y1.

Output (``output``): ``direct`` is the papers' Tanh image; ``residual`` reads the same Tanh as a
change applied to the input clip (``layers.apply_change``), with the last deconv zeroed at
initialisation, so an untrained G predicts "nothing moves" (copy-frame for Stage I, Y1 for
Stage II) and learns only what changes (docs/quality.md has the measurements); ``flow`` moves the
input's pixels by a flow field before applying a change (``layers.compose_output``; docs/models.md,
"Flow output": the only output with which these networks learnt to move the clouds).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ssagan_dist.models.attention import SpatialSelfAttention
from ssagan_dist.models.registry import register
from ssagan_dist.models.layers import (GlobalVelocity, check_output, compose_output, init_weights, output_channels,
                                       repeat_frame, zero_output_layer)

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class LayerSpec:
    in_channels: int
    out_channels: int
    kernel: Triple
    stride: Triple
    padding: Triple


def encoder_plan(size: int, frames: int, base_width: int, in_channels: int = 3,
                 stem: bool | None = None) -> list[LayerSpec]:
    """The encoder convs, outermost first (the decoder mirrors them). Raises ValueError naming
    the argument when (size, frames) admit no such network."""
    if stem is None:
        stem = size > 2 * frames
    if frames < 4 or frames & (frames - 1):
        raise ValueError(f"frames = {frames}: must be a power of two >= 4")
    n_down = int(math.log2(frames)) - 1  # stride-2 layers, until T = 2
    spatial = size // 2 if stem else size
    if size <= 0 or (stem and size % 2) or spatial % 2 ** n_down:
        raise ValueError(f"size = {size}: with frames = {frames} and stem = {stem} the size after the stem "
                         f"({spatial}) must be divisible by 2^{n_down}")
    plan: list[LayerSpec] = []
    width = in_channels
    if stem:
        plan.append(LayerSpec(width, base_width, (3, 4, 4), (1, 2, 2), (1, 1, 1)))
        width = base_width
    for j in range(1, n_down + 1):
        plan.append(LayerSpec(width, base_width * 2 ** j, (4, 4, 4), (2, 2, 2), (1, 1, 1)))
        width = base_width * 2 ** j
    inner = spatial // 2 ** n_down
    plan.append(LayerSpec(width, width, (2, inner, inner), (1, 1, 1), (0, 0, 0)))
    return plan


def _conv(spec: LayerSpec, transpose: bool = False) -> nn.Module:
    if transpose:
        return nn.ConvTranspose3d(spec.out_channels, spec.in_channels, spec.kernel, spec.stride, spec.padding,
                                  bias=False)
    return nn.Conv3d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding, bias=False)


def _block(conv: nn.Module, channels: int, norm: bool, act: nn.Module | None, ssa: bool,
           reduced_channels: int | None, dropout: float = 0.0) -> nn.Sequential:
    layers = [conv]
    if norm:
        layers.append(nn.BatchNorm3d(channels))
    if act is not None:
        layers.append(act)
    if dropout:
        layers.append(nn.Dropout(dropout))
    if ssa:
        layers.append(SpatialSelfAttention(channels, reduced_channels))
    return nn.Sequential(*layers)


class UNet3DGenerator(nn.Module):
    """3D U-Net G of SSA-GAN / MD-GAN: clip (N, C, T, H, W) -> clip of the same shape in [-1, 1].

    ``ssa``: SpatialSelfAttention after every block but the output layer (SSA-GAN).
    ``skips``: encoder layers (1 = outermost) whose output is added to the mirrored decoder
    block's output; None = all but the innermost. MD-GAN Stage II drops the two outermost
    (``drop_outer_skips(...)``).
    ``output``: "direct" (the papers), "residual" (the change from the input clip) or "flow" (a
    flow field that moves the input clip's pixels, plus a change; ``layers.compose_output``).
    ``dropout``: dropout after each decoder block but the output layer, during training only (as
    pix2pix's decoder; 0 = none, the papers).
    """

    def __init__(self, size: int = 128, frames: int = 32, base_width: int = 32, in_channels: int = 3,
                 ssa: bool = False, reduced_channels: int | None = None, skips: Sequence[int] | None = None,
                 stem: bool | None = None, output: str = "direct", dropout: float = 0.0):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout = {dropout}: must be in [0, 1)")
        self.size, self.frames, self.in_channels = size, frames, in_channels
        self.output = check_output(output)
        self.dropout = dropout
        plan = encoder_plan(size, frames, base_width, in_channels, stem)
        depth = len(plan)
        self.skips = tuple(sorted(range(1, depth) if skips is None else skips))
        if any(not 1 <= k < depth for k in self.skips):
            raise ValueError(f"skips = {list(self.skips)}: encoder layers are 1..{depth - 1} (1 = outermost)")
        self.down = nn.ModuleList()
        for i, spec in enumerate(plan):
            edge = i in (0, depth - 1)  # first and innermost: neither BN nor activation
            self.down.append(_block(_conv(spec), spec.out_channels, norm=not edge,
                                    act=None if edge else nn.LeakyReLU(0.2, inplace=True),
                                    ssa=ssa, reduced_channels=reduced_channels))
        self.up = nn.ModuleList()
        for spec in reversed(plan[1:]):
            self.up.append(_block(_conv(spec, transpose=True), spec.in_channels, norm=True,
                                  act=nn.ReLU(inplace=True), ssa=ssa, reduced_channels=reduced_channels,
                                  dropout=dropout))
        last = dataclasses.replace(plan[0], in_channels=output_channels(self.output, in_channels))
        self.up.append(nn.Sequential(_conv(last, transpose=True), nn.Tanh()))
        # flow output: the clip's global velocity, pooled from every encoder block's features
        self.velocity = GlobalVelocity([spec.out_channels for spec in plan]) if self.output == "flow" else None

    def start_unchanged(self) -> None:
        """Residual and flow outputs: zero the last deconv, so G starts by predicting its input."""
        if self.output != "direct":
            zero_output_layer(self.up[-1][0])
        if self.velocity is not None:
            zero_output_layer(self.velocity.linear)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1:] != (self.in_channels, self.frames, self.size, self.size):
            raise ValueError(f"generator expects (N, {self.in_channels}, {self.frames}, {self.size}, {self.size}) "
                             f"clips, got {tuple(x.shape)}")
        given = x
        features = []
        for block in self.down:
            x = block(x)
            features.append(x)
        depth = len(self.down)
        velocity = self.velocity(features) if self.velocity is not None else None
        for k, block in enumerate(self.up, start=1):
            x = block(x)
            if depth - k in self.skips:  # up_k = down_{depth-k} + up_k
                x = x + features[depth - k - 1]
        return compose_output(given, x, self.output, velocity)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        """A static clip (the repeated photo), as Stage I sees it."""
        return (repeat_frame(torch.rand(n, self.in_channels, self.size, self.size) * 2 - 1, self.frames),)


def drop_outer_skips(size: int, frames: int, n: int = 2, stem: bool | None = None) -> tuple[int, ...]:
    """The skip set of MD-GAN's G2: every skip but the ``n`` outermost."""
    depth = len(encoder_plan(size, frames, 1, stem=stem))
    return tuple(range(1 + n, depth))


class UNet3DDiscriminator(nn.Module):
    """D of SSA-GAN / MD-GAN: the generator's encoder without its innermost conv, then a conv to one
    channel whose kernel covers what is left ((2,4,4) at paper size).

    First conv: LeakyReLU(0.2), no BN; the others conv-BN-LeakyReLU(0.2); no SSA.
    ``forward`` returns (logits (N,), [features after the first and third conv activations]) — the
    layers whose Gram matrices feed MD-GAN's ranking loss. Logits, not probabilities: the losses
    use BCE-with-logits.
    """

    def __init__(self, size: int = 128, frames: int = 32, base_width: int = 32, in_channels: int = 3,
                 stem: bool | None = None):
        super().__init__()
        self.size, self.frames, self.in_channels = size, frames, in_channels
        plan = encoder_plan(size, frames, base_width, in_channels, stem)
        self.convs = nn.ModuleList(
            _block(_conv(spec), spec.out_channels, norm=i > 0, act=nn.LeakyReLU(0.2, inplace=True), ssa=False,
                   reduced_channels=None)
            for i, spec in enumerate(plan[:-1]))
        inner = plan[-1]
        self.logit = nn.Conv3d(inner.in_channels, 1, inner.kernel, inner.stride, inner.padding, bias=False)
        self.feature_layers = (0, min(2, len(self.convs) - 1))  # first and third conv (or the last)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        for block in self.convs:
            x = block(x)
            features.append(x)
        return self.logit(x).flatten(), [features[i] for i in self.feature_layers]


# -- registry ------------------------------------------------------------------------------------
PAPER = {"size": 128, "frames": 32, "base_width": 32}
TINY = {"size": 32, "frames": 8, "base_width": 8}
FLAVORS = {"paper": PAPER, "tiny": TINY}


def _generator(size: int, frames: int, base_width: int, ssa: bool, stage: int, reduced_channels: int | None,
               stem: bool | None, output: str = "direct", dropout: float = 0.0) -> UNet3DGenerator:
    skips = drop_outer_skips(size, frames, 2, stem) if stage == 2 else None
    return UNet3DGenerator(size, frames, base_width, ssa=ssa, reduced_channels=reduced_channels, skips=skips,
                           stem=stem, output=output, dropout=dropout)


def _initialised(nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    for net in nets.values():
        init_weights(net)
        if isinstance(net, UNet3DGenerator):
            net.start_unchanged()
    return nets


def build_one_stage(size: int = 128, frames: int = 32, base_width: int = 32, ssa: bool = False,
                    reduced_channels: int | None = None, stem: bool | None = None,
                    output: str = "direct", dropout: float = 0.0) -> dict[str, nn.Module]:
    return _initialised({
        "G": _generator(size, frames, base_width, ssa, 1, reduced_channels, stem, output, dropout),
        "D": UNet3DDiscriminator(size, frames, base_width, stem=stem),
    })


def build_refine(size: int = 128, frames: int = 32, base_width: int = 32, ssa: bool = False,
                 stage1_ssa: bool = False, reduced_channels: int | None = None,
                 stem: bool | None = None, output: str = "direct",
                 stage1_output: str = "direct", dropout: float = 0.0,
                 stage1_dropout: float = 0.0) -> dict[str, nn.Module]:
    """``stage1_*``: the Stage-I run's own arguments (its dropout never acts, G_stage1 is frozen in
    eval mode, but it places the layers after it: an SSA Stage I's tensor names depend on it)."""
    return _initialised({
        "G": _generator(size, frames, base_width, ssa, 2, reduced_channels, stem, output, dropout),
        "D": UNet3DDiscriminator(size, frames, base_width, stem=stem),
        "G_stage1": _generator(size, frames, base_width, stage1_ssa, 1, reduced_channels, stem, stage1_output,
                               stage1_dropout),
    })


@register("ssagan", family="onestage", flavors=FLAVORS,
          description="SSA-GAN (Horita & Yanai 2019): 3D U-Net G with spatial self-attention after every "
                      "conv/deconv, one stage")
def ssagan(size: int = 128, frames: int = 32, base_width: int = 32, reduced_channels: int | None = None,
           stem: bool | None = None, output: str = "direct", dropout: float = 0.0) -> dict[str, nn.Module]:
    return build_one_stage(size, frames, base_width, True, reduced_channels, stem, output, dropout)


@register("ssagan_a", family="onestage", flavors=FLAVORS,
          description="SSA-GAN (a) (SSA-GAN paper, Table 2): SSA added to MD-GAN Stage I (the same network as ssagan)")
def ssagan_a(size: int = 128, frames: int = 32, base_width: int = 32, reduced_channels: int | None = None,
             stem: bool | None = None, output: str = "direct", dropout: float = 0.0) -> dict[str, nn.Module]:
    return build_one_stage(size, frames, base_width, True, reduced_channels, stem, output, dropout)


@register("mdgan_stage1", family="onestage", flavors=FLAVORS,
          description="MD-GAN Stage I / Base-Net (arXiv:1709.07592): the 3D U-Net G without SSA, 39,072,576 params "
                      "at paper size")
def mdgan_stage1(size: int = 128, frames: int = 32, base_width: int = 32,
                 stem: bool | None = None, output: str = "direct", dropout: float = 0.0) -> dict[str, nn.Module]:
    return build_one_stage(size, frames, base_width, False, None, stem, output, dropout)


@register("mdgan_stage2", family="refine", flavors=FLAVORS,
          description="MD-GAN Stage II / Refine-Net (arXiv:1709.07592): G2 without the two outermost skips refines the "
                      "frozen Stage-I output; D2 with the Gram-matrix ranking loss")
def mdgan_stage2(size: int = 128, frames: int = 32, base_width: int = 32,
                 stem: bool | None = None, output: str = "direct",
                 stage1_output: str = "direct", dropout: float = 0.0,
                 stage1_dropout: float = 0.0) -> dict[str, nn.Module]:
    return build_refine(size, frames, base_width, False, False, None, stem, output, stage1_output, dropout,
                        stage1_dropout)


@register("ssagan_b", family="refine", flavors=FLAVORS,
          description="SSA-GAN (b) (SSA-GAN paper, Table 2): SSA added to MD-GAN Stage II (G2); the frozen Stage-I G "
                      "is MD-GAN's (stage1_ssa=True for an SSA Stage I)")
def ssagan_b(size: int = 128, frames: int = 32, base_width: int = 32, stage1_ssa: bool = False,
             reduced_channels: int | None = None, stem: bool | None = None, output: str = "direct",
             stage1_output: str = "direct", dropout: float = 0.0,
             stage1_dropout: float = 0.0) -> dict[str, nn.Module]:
    return build_refine(size, frames, base_width, True, stage1_ssa, reduced_channels, stem, output, stage1_output,
                        dropout, stage1_dropout)
