"""Per-family GAN update logic; see ``base.py`` for the contract with the training loop."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from ssagan_dist.config import LossConfig, OptimConfig
from ssagan_dist.trainers.base import Batch, GANTrainer, Phase, Stats, init_weights, unwrap

# registry trainer kind -> (module, class)
TRAINERS = {
    "onestage": ("ssagan_dist.trainers.onestage", "OneStageTrainer"),
    "refine": ("ssagan_dist.trainers.refine", "RefineTrainer"),
    "wgan_gp": ("ssagan_dist.trainers.wgan_gp", "WGANGPTrainer"),
    "noise": ("ssagan_dist.trainers.noise", "NoiseGANTrainer"),
    "pix2pix": ("ssagan_dist.trainers.pix2pix", "Pix2PixTrainer"),
}


def trainer_class(kind: str) -> type[GANTrainer]:
    module, cls = TRAINERS[kind]
    return getattr(importlib.import_module(module), cls)


def build_trainer(kind: str, nets: dict[str, nn.Module], optim: OptimConfig, loss: LossConfig,
                  device: torch.device | str = "cpu") -> GANTrainer:
    return trainer_class(kind)(nets, optim, loss, device)


__all__ = ["Batch", "GANTrainer", "Phase", "Stats", "TRAINERS", "build_trainer", "init_weights", "trainer_class", "unwrap"]
