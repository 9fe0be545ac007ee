"""Run the benchmarks by name (default: all) and print their results."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

from ssagan_dist import bench, cli

BENCHMARKS = {
    "attention": "SSA fused vs literal attention: forward+backward peak memory",
    "loader": "ClipLoader clips/s from local shards and S3 vs a frame-folder JPEG loader",
    "telemetry": "Prometheus export: per-step hook cost vs the tiny_cpu step time (target < 2%)",
    "tracking": "MLflow + W&B tracking (tracking.backends) on vs off per tiny_cpu step (target < 1%)",
    "step": "training step clips/s and FLOP utilisation, tiny_cpu and medium, each speed switch on/off",
    "overhead": "the tiny_cpu step under Ray Train (1 worker) vs a bare loop; command-to-first-step time",
    "scaling": "1 vs 2 Ray Train workers (gloo), clips/s, efficiency; compute / all-reduce / data wait",
    "quality": "tiny_cpu vs copy-frame on held-out skies (3 seeds) and real footage, best-on-validation checkpoint (~30 min)",
    "zoo": "every registry model trained, picked on validation, scored on test: skies (3 seeds) and real footage",
}


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.bench", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()).replace("%", "%%")  # argparse formats it
                   + " (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object of every result")
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    unknown = sorted(set(a.names) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    names = a.names or list(BENCHMARKS)
    bench.require(*names)  # all before the first runs: a missing package stops it now, not hours in
    results = {}
    for name in names:
        print(f"== {name}: {BENCHMARKS[name]}", file=sys.stderr, flush=True)
        # With --json, stdout carries one JSON object: the benchmarks' own tables go to stderr.
        with contextlib.redirect_stdout(sys.stderr if a.json else sys.stdout):
            results[name] = importlib.import_module(f"ssagan_dist.bench.{name}").run()
    if a.json:
        print(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
