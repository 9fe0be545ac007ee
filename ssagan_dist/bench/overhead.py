"""What Ray Train costs: the tiny_cpu step under Ray Train (one worker) vs a bare PyTorch loop
of the same trainer and loader, and the time from the command to the first step.

    RAY_AUTH_MODE=token python -m ssagan_dist.bench overhead [--json]

Data: 512 synthetic sky clips at the tiny shape (32x32, 8 frames), JPEG shards in a temporary
folder, read by ``ClipLoader`` with tiny_cpu's loader settings (one loader process, prefetch 2).

- Bare loop: this process, one intra-op thread, ``experiment.build_trainer`` + ``perf.apply``,
  ``train.BatchStream`` over the ``ClipLoader``, ``trainer.run_step`` in a loop. Nothing else.
- Ray Train: ``python -m``-style child process that runs the real training job (``train.prepare``,
  a fresh local Ray, ``train.build_ray_trainer(...).fit()``) with one worker of one CPU: the real
  loop with its telemetry, logging every 25 steps and the final checkpoint. The only addition is
  ``StepTimer``, the loop's ``train.LoopObserver``: it times every ``run_step`` and DDP all-reduce
  in the worker and writes the timestamps to a file.
- Steady state: clips over the time from the start of step ``WARMUP`` to the start of the last
  step (the last one is followed by the checkpoint), for both. Runs alternate bare, Ray, bare,
  Ray ... so that the shared machine's load changes hit both alike; the median run is reported.
- Start-up (wall clock, one machine): command -> interpreter, imports and config -> ``ray.init``
  (a new local cluster) -> Ray Train controller and worker started, process group, loop entered ->
  set-up (model, loaders, first loader process), resume, DDP wrap -> first step done (its batch
  included). And after the last step: final checkpoint and worker shutdown, ``ray.shutdown``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ssagan_dist.bench.step import load_average
from ssagan_dist.train import LoopObserver

STEPS = 200
WARMUP = 20
REPEATS = 2


def make_data(root: Path, clips: int = 512) -> str:
    from data_tools import synth  # command-line tools: imported only when the bench runs

    synth.generate(str(root / "train"), clips=clips, size=32, frames=8, seed=0, progress=False)
    return str(root / "train")


def steady_rate(starts: list[float], clips_per_step: int, warmup: int = WARMUP) -> float:
    """Clips/s from the start of step ``warmup`` to the start of the last step."""
    return (len(starts) - 1 - warmup) * clips_per_step / (starts[-1] - starts[warmup])


# -- the bare loop -------------------------------------------------------------------------------

def bare_loop(train_urls: str, steps: int = STEPS, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    from ssagan_dist import experiment, perf
    from ssagan_dist.experiment import load_config
    from ssagan_dist.data import ClipLoader
    from ssagan_dist.train import BatchStream

    torch.set_num_threads(1)
    cfg = load_config("tiny_cpu", ["scaling.ranks=1", *overrides])
    torch.manual_seed(cfg.loop.seed)
    torch.use_deterministic_algorithms(cfg.loop.deterministic, warn_only=True)
    trainer = perf.apply(experiment.build_trainer(cfg, "cpu"), cfg.perf)
    loader = ClipLoader(train_urls, batch_size=cfg.loop.batch_size, seed=cfg.loop.seed,
                        processes=cfg.data.loader_processes, prefetch=cfg.data.prefetch, shuffle=True)
    batches = BatchStream(loader)
    clips = sum(p.repeats for p in trainer.phases()) * cfg.loop.batch_size
    starts = []
    for _ in range(steps):
        starts.append(time.perf_counter())
        trainer.run_step(batches)
    del batches, loader  # stop the loader process
    return {"clips_per_s": round(steady_rate(starts, clips), 2), "load_avg_1m": load_average(),
            "step_ms": round(1e3 * (starts[-1] - starts[WARMUP]) / (len(starts) - 1 - WARMUP), 2)}


# -- the Ray Train run (a child process) ---------------------------------------------------------

class StepTimer(LoopObserver):
    """Each rank's loop, timed: when it was entered, every step's [start, end, data wait, DDP
    all-reduce seconds] (a comm hook doing what DDP's default does), written to
    ``<timing_dir>/rank<r>.json`` when the loop ends."""

    def __init__(self, timing_dir: str):
        self.timing_dir = timing_dir
        self.record: dict[str, Any] = {"steps": [], "allreduce_s": []}
        self.comm: list[float] = []  # seconds of each all-reduce, as they finish
        self.comm_seen = 0  # those already counted in a step

    def entered(self) -> None:
        self.record["enter"] = time.time()

    def ready(self, trainer) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def timed_allreduce(state, bucket):
            start = time.perf_counter()

            def done(fut):
                self.comm.append(time.perf_counter() - start)
                return fut.value()[0]
            return default_hooks.allreduce_hook(state, bucket).then(done)

        for k in trainer.trained:
            if hasattr(trainer.wrapped[k], "register_comm_hook"):
                trainer.wrapped[k].register_comm_hook(None, timed_allreduce)

    def step_done(self, step: int, seconds: float, data_wait_s: float) -> None:
        end = time.time()
        self.record["steps"].append([end - seconds, end, data_wait_s, sum(self.comm[self.comm_seen:])])
        self.comm_seen = len(self.comm)

    def exited(self) -> None:
        import ray.train
        import torch.distributed as dist

        self.record["world"] = dist.get_world_size() if dist.is_initialized() else 1
        self.record["threads"] = torch.get_num_threads()
        rank = ray.train.get_context().get_world_rank()
        Path(self.timing_dir, f"rank{rank}.json").write_text(json.dumps(self.record))


def child_main(spec: dict[str, Any]) -> None:
    """The Ray Train run, as ``python -m ssagan_dist.train`` does it, timing each stage."""
    import ray

    from ssagan_dist import train
    from ssagan_dist.experiment import load_config

    marks = {"command": spec["t_command"], "imports_done": time.time()}
    cfg, clip_shape = train.prepare(load_config("tiny_cpu", spec["overrides"]))
    marks["config_done"] = time.time()
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "token"}})
    marks["ray_init_done"] = time.time()
    result = train.build_ray_trainer(cfg, clip_shape, observer=StepTimer(spec["timing_dir"])).fit()
    marks["fit_done"] = time.time()
    ray.shutdown()
    marks["ray_shutdown_done"] = time.time()
    Path(spec["timing_dir"], "driver.json").write_text(json.dumps({"marks": marks, "error": str(result.error or "")}))


def ray_run(train_urls: str, workdir: Path, name: str, overrides: list[str], steps: int = STEPS) -> dict[str, Any]:
    """Run the training job under Ray Train in a child process; its stages and per-rank timings."""
    timing = workdir / f"timing-{name}"
    timing.mkdir(parents=True)
    spec = {"overrides": [f"data.train_urls={train_urls}", f"loop.max_steps={steps}",
                          f"loop.val_every={steps}", f"run.storage_path={workdir / 'runs'}", f"run.name={name}",
                          "ray.max_failures=0", *overrides],
            "timing_dir": str(timing), "t_command": time.time()}
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    out = subprocess.run([sys.executable, "-m", "ssagan_dist.bench.overhead", "--child", json.dumps(spec)],
                         env=env, capture_output=True, text=True)
    driver = timing / "driver.json"
    if out.returncode or not driver.exists():
        raise RuntimeError(f"Ray Train run {name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    marks = json.loads(driver.read_text())
    if marks["error"]:
        raise RuntimeError(f"Ray Train run {name} failed: {marks['error']}")
    ranks = [json.loads(p.read_text()) for p in sorted(timing.glob("rank*.json"))]
    return {"marks": marks["marks"], "ranks": ranks, "load_avg_1m": load_average()}


def startup_stages(run: dict[str, Any]) -> dict[str, float]:
    m, r0 = run["marks"], run["ranks"][0]
    first_start, first_end = r0["steps"][0][0], r0["steps"][0][1]
    last_end = r0["steps"][-1][1]
    stages = {
        "python start, imports, config": m["config_done"] - m["command"],
        "ray.init (new local cluster)": m["ray_init_done"] - m["config_done"],
        "Ray Train controller, worker, process group": r0["enter"] - m["ray_init_done"],
        "set-up (model, loaders), resume, DDP wrap": first_start - r0["enter"],
        "first step (its batch included)": first_end - first_start,
        "command to first step done": first_end - m["command"],
        "after the last step: checkpoint, workers stop": m["fit_done"] - last_end,
        "ray.shutdown": m["ray_shutdown_done"] - m["fit_done"],
    }
    return {k: round(v, 2) for k, v in stages.items()}


def ray_steady(run: dict[str, Any], clips_per_step: int) -> dict[str, float]:
    """Steady-state rate and the per-step breakdown (mean over steady steps and ranks)."""
    r0 = run["ranks"][0]
    starts = [s[0] for s in r0["steps"]]
    steady = [s for r in run["ranks"] for s in r["steps"][WARMUP:-1]]
    interval = (starts[-1] - starts[WARMUP]) / (len(starts) - 1 - WARMUP)
    step = statistics.fmean(s[1] - s[0] for s in steady)
    wait = statistics.fmean(s[2] for s in steady)
    allreduce = statistics.fmean(s[3] for s in steady)
    ms = {"step_ms": interval, "run_step_ms": step, "data_wait_ms": wait, "allreduce_ms": allreduce,
          "compute_ms": step - wait - allreduce, "loop_other_ms": interval - step}
    return {"clips_per_s": round(steady_rate(starts, clips_per_step), 2),
            **{k: round(1e3 * v, 2) for k, v in ms.items()}, "threads": r0["threads"], "world": r0["world"]}


def run(steps: int = STEPS, repeats: int = REPEATS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        urls = make_data(root)
        clips_per_step = 2 * 8  # tiny_cpu: n_critic 1 D update + 1 G update, batch 8
        bare, ray_runs = [], []
        for i in range(repeats):
            bare.append(bare_loop(urls, steps))
            print(f"bare loop      {bare[-1]['clips_per_s']:7.1f} clips/s  load {bare[-1]['load_avg_1m']}", flush=True)
            r = ray_run(urls, root, f"overhead{i}", ["scaling.ranks=1"], steps)
            ray_runs.append({**ray_steady(r, clips_per_step), "startup_s": startup_stages(r),
                             "load_avg_1m": r["load_avg_1m"]})
            print(f"Ray Train (1w) {ray_runs[-1]['clips_per_s']:7.1f} clips/s  load {r['load_avg_1m']}", flush=True)
    bare_rate = statistics.median(b["clips_per_s"] for b in bare)
    ray_rate = statistics.median(r["clips_per_s"] for r in ray_runs)
    median_ray = sorted(ray_runs, key=lambda r: r["clips_per_s"])[len(ray_runs) // 2]
    results = {
        "steps": steps, "warmup_steps": WARMUP, "bare": bare, "ray": ray_runs,
        "bare_clips_per_s": bare_rate, "ray_clips_per_s": ray_rate,
        "overhead_percent": round(100 * (1 - ray_rate / bare_rate), 2),
        "startup_s": median_ray["startup_s"], "within_5_percent": ray_rate >= 0.95 * bare_rate,
    }
    print(f"\n{'':28s} {'clips/s':>8s} {'step ms':>8s} {'load':>5s}")
    for b, r in zip(bare, ray_runs):
        print(f"{'bare loop':28s} {b['clips_per_s']:8.1f} {b['step_ms']:8.1f} {b['load_avg_1m']:5.2f}")
        print(f"{'Ray Train, 1 worker':28s} {r['clips_per_s']:8.1f} {r['step_ms']:8.1f} {r['load_avg_1m']:5.2f}"
              f"   (in run_step {r['run_step_ms']} ms, data wait {r['data_wait_ms']} ms, "
              f"loop other {r['loop_other_ms']} ms)")
    print(f"Ray Train overhead (medians): {results['overhead_percent']}% (target <= 5%)")
    print("start-up (median Ray run), seconds:")
    for k, v in results["startup_s"].items():
        print(f"  {k:48s} {v:7.2f}")
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        # The importable module's function, so that Ray pickles the worker loop by reference.
        from ssagan_dist.bench.overhead import child_main as module_child_main

        module_child_main(json.loads(sys.argv[2]))
    else:
        out = run()
        if "--json" in sys.argv[1:]:
            print(json.dumps(out, indent=2))
