"""An exponential moving average of the generator's weights (StyleGAN2-ADA's G_ema).

After the t-th G update (t = 1, 2, ...) every parameter of the average moves toward G's:

    G_ema <- β_t · G_ema + (1 - β_t) · G,   β_1 = 0 (a copy of G),
    β_t = min(decay, 0.5 ** (1 / (rampup · t)))   for t >= 2   (rampup = 0: β_t = decay)

``decay`` is ``ema.decay`` (a half-life of ln 0.5 / ln decay G updates) and ``rampup``
``ema.rampup`` (StyleGAN2-ADA's ``ema_rampup``: early on the half-life is at most
``rampup · t`` updates, so the average forgets the random initial weights). Buffers (BatchNorm
running statistics) are copied from G, not averaged, as StyleGAN2 does. docs/training.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ssagan_dist.config import Allowed, ReadWhen

CONFIG_RULES = (
    Allowed("ema.decay", lambda cfg: 0 <= cfg.ema.decay < 1, "in [0, 1) (0 = no moving average of G)"),
    Allowed("ema.rampup", lambda cfg: 0 <= cfg.ema.rampup < math.inf, "finite and >= 0 (0 = no ramp-up)"),
    ReadWhen("ema.rampup", lambda cfg, nets: cfg.ema.decay > 0, "it only acts with ema.decay > 0"),
)


def ema_beta(t: int, decay: float, rampup: float) -> float:
    """β_t of the update after the t-th G update (t >= 1)."""
    if t <= 1:
        return 0.0
    if rampup <= 0:
        return decay
    return min(decay, 0.5 ** (1.0 / (rampup * t)))


def half_life(decay: float) -> float:
    """G updates after which an old weight counts half: ln 0.5 / ln decay."""
    return math.log(0.5) / math.log(decay) if 0 < decay < 1 else 0.0


class GeneratorEMA(AveragedModel):
    """torch's AveragedModel with the ramp-up: ``module`` is the averaged copy of G (a plain G:
    its state_dict loads into G), ``n_averaged`` counts the updates (kept on the CPU, so the
    ramp-up reads it without waiting for the device)."""

    fields_read = ("decay", "rampup")  # of the ``ema`` section

    def __init__(self, generator: nn.Module, decay: float, rampup: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema.decay = {decay}: must be in (0, 1) (0 = no EMA)")
        super().__init__(generator, multi_avg_fn=self._lerp, use_buffers=False)
        self.decay, self.rampup = decay, rampup
        self.module.eval().requires_grad_(False)

    @property
    def updates(self) -> int:
        return int(self.n_averaged)

    @updates.setter
    def updates(self, n: int) -> None:
        self.n_averaged.fill_(n)

    @torch.no_grad()
    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: torch.Tensor) -> None:
        # called with n_averaged = t - 1 >= 1 updates done before this one
        beta = ema_beta(self.updates + 1, self.decay, self.rampup)
        torch._foreach_lerp_(averaged, current, 1.0 - beta)  # as torch's get_ema_multi_avg_fn
