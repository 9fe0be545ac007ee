"""Data-parallel scaling on this machine: 1 vs 2 Ray Train workers at one thread each (gloo),
clips/s, efficiency, and where a step's time goes.

    RAY_AUTH_MODE=token python -m ssagan_dist.bench scaling [--json]

Each row is a real training run of tiny_cpu (``bench/overhead.py`` runs it: a child process, a
fresh local Ray, the real loop) on 512 synthetic sky clips, batch 8 per worker, cpus_per_worker 1
(Ray sets one intra-op thread per worker). Per step, on every rank, timed in the worker:

- data wait: time ``run_step`` spent waiting for the next batch (``BatchStream``);
- all-reduce: time from DDP handing a gradient bucket to the comm hook until the gloo all-reduce
  completed (the hook does what DDP's default does); with one bucket it starts when backward ends,
  so it is exposed, not overlapped;
- compute: the rest of ``run_step`` (forwards, backwards, optimizer steps);
- loop other: the loop's own work between steps (telemetry, log lines).

Efficiency = clips/s with 2 workers / (2 x clips/s with 1 worker), at the same loader setting.
The machine has 2 cores: with one loader process per worker, 2 workers make 4 busy processes
(plus Ray's own) on 2 cores, so the rows with ``data.loader_processes=0`` (decoding in the worker's
own thread) are measured as well.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ssagan_dist.bench.overhead import make_data, ray_run, ray_steady

STEPS = 150
CONFIGS = {  # name -> (workers, overrides)
    "1 worker, 1 loader process": (1, ["scaling.ranks=1"]),
    "2 workers, 1 loader process each": (2, ["scaling.ranks=2"]),
    "1 worker, loading in-process": (1, ["scaling.ranks=1", "data.loader_processes=0"]),
    "2 workers, loading in-process": (2, ["scaling.ranks=2", "data.loader_processes=0"]),
}
CLIPS_PER_STEP_PER_WORKER = 2 * 8  # tiny_cpu: n_critic 1 D update + 1 G update, batch 8


def run(steps: int = STEPS) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        root = Path(tmp)
        urls = make_data(root)
        for i, (name, (workers, overrides)) in enumerate(CONFIGS.items()):
            r = ray_run(urls, root, f"scaling{i}", overrides, steps)
            row = {"config": name, "workers": workers, **ray_steady(r, CLIPS_PER_STEP_PER_WORKER * workers),
                   "load_avg_1m": r["load_avg_1m"]}
            rows.append(row)
            print(f"{name:34s} {row['clips_per_s']:7.1f} clips/s  load {row['load_avg_1m']}", flush=True)
    by_name = {r["config"]: r for r in rows}
    efficiency = {
        "1 loader process per worker": by_name["2 workers, 1 loader process each"]["clips_per_s"]
        / (2 * by_name["1 worker, 1 loader process"]["clips_per_s"]),
        "loading in-process": by_name["2 workers, loading in-process"]["clips_per_s"]
        / (2 * by_name["1 worker, loading in-process"]["clips_per_s"]),
    }
    results = {"steps": steps, "rows": rows, "efficiency": {k: round(v, 3) for k, v in efficiency.items()}}
    print(f"\n{'config':34s} {'clips/s':>8s} {'step ms':>8s} {'compute':>8s} {'allred.':>8s} {'data':>8s} "
          f"{'other':>7s} {'load':>5s}")
    for r in rows:
        print(f"{r['config']:34s} {r['clips_per_s']:8.1f} {r['step_ms']:8.1f} {r['compute_ms']:8.1f} "
              f"{r['allreduce_ms']:8.2f} {r['data_wait_ms']:8.2f} {r['loop_other_ms']:7.2f} {r['load_avg_1m']:5.2f}")
    for k, v in results["efficiency"].items():
        print(f"scaling efficiency, {k}: {100 * v:.0f}% (target >= 85%)")
    return results


if __name__ == "__main__":
    out = run()
    if "--json" in sys.argv[1:]:
        print(json.dumps(out, indent=2))
