"""Benchmarks (speed and memory goals are measured here, never by timed tests).

    python -m ssagan_dist.bench [attention|loader|train ...] [--json]

Each module has ``run(...) -> dict`` and its own ``python -m ssagan_dist.bench.NAME``. What a
benchmark imports beyond the base install is in ``REQUIRES``: the ``bench`` extra installs it
(``pip install 'ssagan-dist[bench]'``), and a benchmark whose packages are missing stops before
it starts, in one line naming the extra.
"""

from __future__ import annotations

from ssagan_dist import cli

REQUIRES = {
    "loader": ("boto3", "moto", "flask"),  # the S3 rows: `python -m moto.server` (moto[server]) on loopback
    "tracking": ("mlflow", "wandb", "psutil"),  # psutil: CPU seconds of the tracker's thread and servers
    "quality": ("psutil",),  # CPU seconds of the training process tree
    "zoo": ("psutil", "scipy"),  # scipy: the Fréchet distance's matrix square root (distribution.py)
}


def require(*names: str) -> None:
    """Stop, naming the ``bench`` extra, unless every package the named benchmarks import is installed."""
    for name in names:
        cli.require_extra(f"bench {name}", "bench", *REQUIRES.get(name, ()))
