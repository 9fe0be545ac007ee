"""The one place that turns a config into networks and their trainer.

    trainer = factory.build_trainer(cfg, device)       # train, evaluate, predict, bench, tune

A model registers a builder and a trainer kind (``models.registry``); the kind names a class
in ``trainers.TRAINERS``. ``keys_read`` lists the config keys that a model's trainer reads, so
config validation can refuse a key that would silently do nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssagan_dist.models import registry
from ssagan_dist.trainers import TRAINERS, GANTrainer


def model_entry(name: str) -> registry.ModelEntry:
    return registry.get(name)


def trainer_class(model_name: str) -> type[GANTrainer]:
    kind = registry.get(model_name).trainer
    if kind not in TRAINERS:
        raise KeyError(f"model {model_name!r} names trainer kind {kind!r}; kinds: {sorted(TRAINERS)}")
    return TRAINERS[kind]


def model_args(cfg: Any) -> dict[str, Any]:
    """The model's constructor arguments: its preset's, with ``model.args`` on top."""
    return registry.constructor_args(cfg.model.name, cfg.model.preset, dict(cfg.model.args))


def build_networks(cfg: Any, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """The model's networks by role. ``device="meta"`` builds them without memory: enough to
    check that the arguments make a network (shapes) and to read its attributes."""
    with torch.device(device):
        return registry.get(cfg.model.name).build(**model_args(cfg))


def build_trainer(cfg: Any, device: torch.device | str = "cpu") -> GANTrainer:
    """Networks + trainer (optimizers included) for ``cfg``, on ``device``."""
    nets = build_networks(cfg)
    return trainer_class(cfg.model.name)(nets, cfg.optim, cfg.loss, device, g_ema_decay=cfg.trainer.g_ema_decay,
                                         g_ema_rampup=cfg.trainer.g_ema_rampup)


def keys_read(cfg: Any, nets: dict[str, nn.Module] | None = None) -> tuple[str, ...]:
    """The optim.* and loss.* keys that ``cfg``'s model and trainer read."""
    nets = nets if nets is not None else build_networks(cfg, "meta")
    return trainer_class(cfg.model.name).keys_read(nets)
