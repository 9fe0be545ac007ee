"""Command line: ``python -m ssagan_dist.tune --config PRESET --sweep NAME|FILE [key=value ...]``
runs or resumes a sweep; ``python -m ssagan_dist.tune report RUN_DIR`` writes its report."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ssagan_dist import cli
from ssagan_dist.config import preset_names


def parse_args(argv: list[str]) -> argparse.Namespace:
    from ssagan_dist.tune.sweep import sweep_names

    if argv[:1] == ["report"]:
        p = argparse.ArgumentParser(prog="python -m ssagan_dist.tune report",
                                    description="Write report.html and trials.csv for a sweep folder.")
        p.add_argument("run_dir", help="the sweep folder (<run.storage_path>/<sweep name>), local or s3://")
        p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
        args = p.parse_args(argv[1:])
        args.command = "report"
        return args
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny_cpu", help=f"preset ({', '.join(preset_names())}) or a YAML file")
    p.add_argument("--sweep", required=True, help=f"a sweep of ssagan_dist/configs/sweeps/ ({', '.join(sweep_names())}) or a sweep YAML file")
    p.add_argument("--name", default=None, help="sweep name: its folder under run.storage_path; the same name "
                                                "resumes an interrupted sweep (default: the sweep file's name)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray started for the sweep")
    p.add_argument("--retry-errored", action="store_true", help="on resume, also re-run trials that failed")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, e.g. loop.max_steps=500")
    args = p.parse_args(argv)
    args.command = "sweep"
    return args


@cli.command
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "report":
        from ssagan_dist.tune.report import write_report

        print(f"[tune] report: {write_report(args.run_dir, endpoint=args.s3_endpoint)}")
        return 0
    from ssagan_dist.tune.runner import run_sweep

    return run_sweep(args.config, args.sweep, args.overrides, name=args.name, num_cpus=args.num_cpus,
                     retry_errored=args.retry_errored, write_report=not args.no_report)


if __name__ == "__main__":
    # The importable module's main, so Ray pickles the trial function by reference.
    from ssagan_dist.tune.__main__ import main as module_main

    sys.exit(module_main())
