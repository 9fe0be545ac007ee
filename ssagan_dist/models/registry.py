"""Every model by name: how to build its networks, which trainer updates them, two presets.

A model module registers itself with ``@register(...)`` on a builder function that takes
keyword arguments and returns the networks by role: ``{"G": ..., "D": ...}`` (refine models
add ``"G_stage1"``, the frozen Stage-I generator). ``presets["tiny"]`` runs in seconds on a
CPU; ``presets["paper"]`` is the published configuration.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

Builder = Callable[..., dict[str, nn.Module]]

@dataclass(frozen=True)
class ModelEntry:
    name: str
    trainer: str  # a key of ssagan_dist.trainers.TRAINERS (the zoo does not import the trainers)
    build: Builder
    presets: dict[str, dict[str, Any]]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, trainer: str, presets: dict[str, dict[str, Any]], description: str):
    def deco(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, trainer, build, presets, description)
        return build

    return deco


# Importing this module runs ``ssagan_dist/models/__init__.py`` first, which imports every model
# module: the registry is full before anyone can ask it (and it imports no model module itself).


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def constructor_args(name: str, preset: str = "tiny", args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's arguments with ``args`` on top; unknown argument names raise TypeError."""
    entry = get(name)
    if preset not in entry.presets:
        raise ValueError(f"model {name!r} has no preset {preset!r}; presets: {sorted(entry.presets)}")
    merged = {**entry.presets[preset], **(args or {})}
    params = inspect.signature(entry.build).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(merged) - set(params))
        if unknown:
            raise TypeError(f"model {name!r} takes no argument(s) {unknown}; it takes {sorted(params)}")
    return merged


def build_networks(name: str, preset: str = "tiny", **args: Any) -> dict[str, nn.Module]:
    return get(name).build(**constructor_args(name, preset, args))
