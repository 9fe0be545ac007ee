"""Training-step throughput and model FLOP utilisation, each speed switch on and off, side by side.

    python -m ssagan_dist.bench step [--json]

For ``tiny_cpu`` and a medium model (SSA-GAN at 64x64x16, base width 16, batch 4), the step is
``trainer.run_step`` on random clips of the model's shape, already on the device (data loading is
not in it; see the ``overhead`` benchmark for the loader), with deterministic algorithms on as in
training. The device is the GPU when ``torch.cuda.is_available()``, else the CPU with one
intra-op thread (what a Ray worker with cpus_per_worker=1 gets); the CPU and GPU runs share all
code but the timer (``StepTimer``: wall clock on CPU; CUDA events between synchronisations on
GPU) and, on GPU, ``torch.cuda.max_memory_allocated`` per variant.

- Variants are built up front and timed round-robin, one step each per round, so a change in
  the machine's load (it is shared) hits every variant alike; the number is the median step.
- FLOPs per step are counted once, on the switch-off variant, by ``torch.utils.flop_counter``
  over a whole ``run_step`` (forwards, backwards, gradient penalty: everything the step does;
  ``models/flops.py`` for what counts). They do not depend on the switches.
- Peak: the best rate of a 2048x2048 float32 matmul on the same device (one thread on CPU; and,
  for reference, bfloat16), timed once in every round as well, so that a busy moment does not
  lower the peak. MFU = counted FLOPs per step / step time / float32 peak.
- GPU memory, per variant: what the variant holds between steps (weights, gradients, optimizer
  state: ``memory_allocated`` after its warm-up minus before its build) plus the peak a step adds
  above that (``max_memory_allocated`` after ``reset_peak_memory_stats`` minus
  ``memory_allocated``, before the step), i.e. the ``max_memory_allocated`` of the variant alone.
- ``compile``: torch.compile (inductor, C++ on CPU); its compile time is reported, not timed.
- The 1-minute load average is recorded beside every row.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import torch

from ssagan_dist import experiment, perf
from ssagan_dist.experiment import load_config
from ssagan_dist.models.flops import flop_counter

MODELS = {  # name -> (preset, overrides)
    "tiny_cpu": ("tiny_cpu", []),
    "medium": ("tiny_cpu", ["model.args={size: 64, frames: 16, base_width: 16}", "loop.batch_size=4"]),
}
VARIANTS = {  # name -> perf overrides; "off" first: every speed-up is relative to it
    "off": [],
    "channels_last": ["perf.channels_last=true"],
    "bf16": ["perf.autocast=bf16"],
    "bf16+channels_last": ["perf.autocast=bf16", "perf.channels_last=true"],
    "compile": ["perf.compile=true"],
}
THREADS = 1


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class StepTimer:
    """Seconds of one call: wall clock on CPU; on CUDA, events recorded around the call after a
    synchronisation, read after the next one (kernels are asynchronous: wall time would be launch)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3


def cuda_step_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak allocation one call adds above what was allocated before it (CUDA)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


class MatmulPeak:
    """Best FLOP/s seen over every ``sample()`` of an n x n matmul on the device (on CPU, on the
    current thread count)."""

    def __init__(self, dtype: torch.dtype = torch.float32, n: int = 2048, device: str = "cpu"):
        self.a = torch.randn(n, n, dtype=dtype, device=device)
        self.b = torch.randn(n, n, dtype=dtype, device=device)
        self.n, self.timer = n, StepTimer(device)
        self.timer(lambda: torch.mm(self.a, self.b))  # warm-up
        self.flops = 0.0

    def sample(self, repeats: int = 1) -> float:
        for _ in range(repeats):
            seconds = self.timer(lambda: torch.mm(self.a, self.b))
            self.flops = max(self.flops, 2 * self.n ** 3 / seconds)
        return self.flops


def clip_batch(cfg: Any, device: str = "cpu") -> Callable[[], dict[str, torch.Tensor]]:
    """A fixed random batch of the model's clip shape in [-1, 1], on ``device``."""
    args = experiment.model_args(cfg)
    shape = (cfg.loop.batch_size, args.get("channels", 3), args["frames"], args["size"], args["size"])
    gen = torch.Generator().manual_seed(0)
    video = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    return lambda: {"video": video}


def build(preset: str, overrides: list[str], device: str = "cpu"):
    """(cfg, trainer with its perf switches) built as training builds it (seeded, deterministic)."""
    cfg = load_config(preset, overrides + (["scaling.use_gpu=true"] if device == "cuda" else []))
    torch.manual_seed(cfg.loop.seed)
    torch.use_deterministic_algorithms(cfg.loop.deterministic, warn_only=True)
    return cfg, perf.apply(experiment.build_trainer(cfg, device), cfg.perf)


def count_step_flops(trainer, batch: Callable[[], dict[str, torch.Tensor]]) -> int:
    with flop_counter() as counter:
        trainer.run_step(batch)
    return counter.get_total_flops()


def clips_per_step(cfg: Any, trainer) -> int:
    return sum(p.repeats for p in trainer.phases()) * cfg.loop.batch_size


def measure_model(name: str, preset: str, overrides: list[str], peak: MatmulPeak, rounds: int, warmup: int = 2,
                  variants: dict[str, list[str]] = VARIANTS, device: str = "cpu") -> list[dict[str, Any]]:
    cuda = device == "cuda"
    timer = StepTimer(device)
    built, compile_s, resident = {}, {}, {}
    for variant, switches in variants.items():
        before = torch.cuda.memory_allocated() if cuda else 0
        cfg, trainer = build(preset, overrides + switches, device)
        batch = clip_batch(cfg, device)
        results = []  # lazy init; for compile, the compilation
        seconds = sum(timer(lambda: results.append(trainer.run_step(batch))) for _ in range(warmup))
        if "perf.compile=true" in switches:
            compile_s[variant] = seconds
        if cuda:
            resident[variant] = torch.cuda.memory_allocated() - before
        finite = all(torch.isfinite(v).item() for v in results[-1].values())
        built[variant] = (cfg, trainer, batch, finite)
    cfg, trainer, batch, _ = built["off"]
    flops = count_step_flops(trainer, batch)
    times: dict[str, list[float]] = {v: [] for v in variants}
    step_peak = dict.fromkeys(variants, 0)
    for _ in range(rounds):
        for variant, (_, trainer, batch, _) in built.items():
            times[variant].append(timer(lambda: trainer.run_step(batch)))
        peak.sample()
    if cuda:  # after the timing: resetting the peak statistics costs a synchronisation
        for variant, (_, trainer, batch, _) in built.items():
            step_peak[variant] = cuda_step_peak_bytes(lambda: trainer.run_step(batch))
    load = load_average()
    rows, base = [], statistics.median(times["off"])
    for variant, (cfg, trainer, _, finite) in built.items():
        step_s = statistics.median(times[variant])
        rows.append({
            "model": name, "variant": variant, "step_ms": round(step_s * 1e3, 2),
            "step_ms_min": round(min(times[variant]) * 1e3, 2),
            "clips_per_s": round(clips_per_step(cfg, trainer) / step_s, 2),
            "gflop_per_step": round(flops / 1e9, 3), "gflop_per_s": round(flops / step_s / 1e9, 2),
            "mfu_percent": round(100 * flops / step_s / peak.flops, 2), "speedup": round(base / step_s, 3),
            "finite_losses": finite, "load_avg_1m": load, "timed_steps": rounds, "device": device,
            **({"compile_s": round(compile_s[variant], 1)} if variant in compile_s else {}),
            **({"cuda_max_memory_allocated_mib": round((resident[variant] + step_peak[variant]) / 2**20, 1),
                "cuda_resident_mib": round(resident[variant] / 2**20, 1)} if cuda else {}),
        })
    return rows


def run(rounds: int = 12) -> dict[str, Any]:
    dev = device()
    if dev == "cpu":
        torch.set_num_threads(THREADS)
    peak32, peak16 = MatmulPeak(torch.float32, device=dev), MatmulPeak(torch.bfloat16, device=dev)
    peak32.sample(5), peak16.sample(5)
    where = (f"cuda ({torch.cuda.get_device_name()})" if dev == "cuda"
             else f"cpu, {THREADS} thread (no GPU on this machine: the GPU rows were not measured)")
    results: dict[str, Any] = {"device": where, "threads": THREADS if dev == "cpu" else None,
                               "load_avg_1m_start": load_average(), "rows": []}
    print(f"device: {where}")
    memory = dev == "cuda"
    print(f"{'model':9s} {'variant':19s} {'step ms':>9s} {'clips/s':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} "
          f"{'MFU %':>6s} {'speedup':>7s} {'load':>5s}" + (f" {'max alloc MiB':>13s}" if memory else ""))
    for name, (preset, overrides) in MODELS.items():
        rows = measure_model(name, preset, overrides, peak32, rounds, device=dev)
        for row in rows:
            results["rows"].append(row)
            extra = f"  (compile {row['compile_s']} s)" if "compile_s" in row else ""
            mib = f" {row['cuda_max_memory_allocated_mib']:13.1f}" if memory else ""
            print(f"{row['model']:9s} {row['variant']:19s} {row['step_ms']:9.1f} {row['clips_per_s']:8.1f} "
                  f"{row['gflop_per_step']:10.3f} {row['gflop_per_s']:8.2f} {row['mfu_percent']:6.1f} "
                  f"{row['speedup']:7.2f} {row['load_avg_1m']:5.2f}{mib}{extra}", flush=True)
    peak16.sample(5)
    results["peak_fp32_gflop_per_s"] = round(peak32.flops / 1e9, 1)
    results["peak_bf16_gflop_per_s"] = round(peak16.flops / 1e9, 1)
    for row in results["rows"]:  # against the best peak of the whole run
        row["mfu_percent"] = round(100 * row["gflop_per_s"] * 1e9 / peak32.flops, 2)
    print(f"peak (2048^2 matmul on {where.split(' (')[0]}, best of the run): fp32 "
          f"{results['peak_fp32_gflop_per_s']} GFLOP/s, bf16 {results['peak_bf16_gflop_per_s']} GFLOP/s; MFU above "
          f"is against the fp32 peak as it was when the row printed, the JSON's against the run's best")
    return results


if __name__ == "__main__":
    import json
    import sys

    out = run()
    if "--json" in sys.argv[1:]:
        print(json.dumps(out, indent=2))
