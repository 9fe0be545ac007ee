"""Every model by name: how to build its networks, which trainer family updates them, and its
flavors (named sets of constructor arguments, ``model.flavor``).

A model module registers itself with ``@register(...)`` on a builder function that takes
keyword arguments and returns the networks by role: ``{"G": ..., "D": ...}`` (refine models
add ``"G_stage1"``, the frozen Stage-I generator). ``flavors["tiny"]`` runs in seconds on a
CPU; ``flavors["paper"]`` is the published configuration.
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
    family: str  # the trainer family: a key of ssagan_dist.trainers.TRAINERS (the zoo does not import them)
    build: Builder
    flavors: dict[str, dict[str, Any]]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, family: str, flavors: dict[str, dict[str, Any]], description: str):
    def deco(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, family, build, flavors, description)
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


def flavors(name: str) -> list[str]:
    """The flavors ``model.flavor`` may name for this model."""
    return sorted(get(name).flavors)


def constructor_args(name: str, flavor: str = "tiny", args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flavor's arguments with ``args`` on top; an unknown flavor raises ValueError, unknown
    argument names TypeError."""
    entry = get(name)
    if flavor not in entry.flavors:
        raise ValueError(f"model {name!r} has no flavor {flavor!r}; flavors: {flavors(name)}")
    merged = {**entry.flavors[flavor], **(args or {})}
    params = inspect.signature(entry.build).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(merged) - set(params))
        if unknown:
            raise TypeError(f"model {name!r} takes no argument(s) {unknown}; it takes {sorted(params)}")
    return merged


def build_networks(name: str, flavor: str = "tiny", **args: Any) -> dict[str, nn.Module]:
    return get(name).build(**constructor_args(name, flavor, args))
