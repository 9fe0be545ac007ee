"""Parameter counts, counted GFLOPs and shapes of a registered model.

    python -m ssagan_dist.models --model ssagan --flavor paper [size=64 ...] [--json]
    python -m ssagan_dist.models --list

Every generator exposes ``example_inputs(n) -> tuple[Tensor, ...]`` (CPU tensors) and
``forward(*inputs)``; the FLOPs are those of one forward at batch 1 (one clip), counted by
``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate; see ``models/flops.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import yaml
from torch import nn

from ssagan_dist.models import registry
from ssagan_dist.models.flops import forward_flops


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shapes(value: Any) -> Any:
    if torch.is_tensor(value):
        return list(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return type(value).__name__


def summarize(name: str, flavor: str = "tiny", args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The numbers the CLI prints, as a dict (raises KeyError/ValueError/TypeError on bad input)."""
    entry = registry.get(name)
    ctor_args = registry.constructor_args(name, flavor, args)
    torch.manual_seed(0)
    nets = entry.build(**ctor_args)
    g = nets["G"]
    inputs = g.example_inputs(1)
    flops, out = forward_flops(g, inputs)
    summary = {
        "model": name,
        "flavor": flavor,
        "args": ctor_args,
        "family": entry.family,
        "generator_params": _params(g),
        "discriminator_params": _params(nets["D"]),
        "generator_gflops_per_clip": round(flops / 1e9, 3),
        "generator_flops_per_clip": flops,
        "input_shapes": _shapes(tuple(inputs)),
        "output_shape": _shapes(out),
    }
    for role in sorted(set(nets) - {"G", "D"}):  # a refine model's frozen Stage-I generator
        summary[f"{role}_params"] = _params(nets[role])
        extra, _ = forward_flops(nets[role], nets[role].example_inputs(1))
        summary[f"{role}_gflops_per_clip"] = round(extra / 1e9, 3)
    return summary


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {pair!r} is not of the form key=value")
        out[key] = yaml.safe_load(value)  # 64 -> int, true -> bool, null -> None, text -> str
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssagan_dist.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"one of: {', '.join(registry.names())}")
    parser.add_argument("--flavor", default="tiny", help="the model's named constructor arguments (tiny, paper)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--list", action="store_true", help="list the registered models")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="constructor arguments over the flavor")
    opts = parser.parse_args(argv)
    if opts.list:
        for name in registry.names():
            entry = registry.get(name)
            print(f"{name:16s} {entry.family:9s} {entry.description}")
        return 0
    if not opts.model:
        parser.error("--model is required (or --list)")
    try:
        summary = summarize(opts.model, opts.flavor, _parse_args(opts.overrides))
    except (KeyError, ValueError, TypeError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if opts.json:
        print(json.dumps(summary))
    else:
        width = max(map(len, summary))
        for key, value in summary.items():
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
