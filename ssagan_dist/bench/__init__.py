"""Benchmarks (speed and memory goals are measured here, never by timed tests).

    python -m ssagan_dist.bench [attention|loader|train ...] [--json]

Each module has ``run(...) -> dict`` and its own ``python -m ssagan_dist.bench.NAME``.
"""
