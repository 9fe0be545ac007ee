"""Peak memory and time of one SSA forward+backward: the module's kernels vs the literal bmm+softmax version.

    python -m ssagan_dist.bench.attention [--json]

Shapes: N=4, C=8, T=8, H=W=64 (attention over 4096 positions, d = 64), and the paper's conv1
output (C=32, T=32, 64x64: 4096 positions, d = 1024; N=1, one clip). Variants: the module as
training runs it (``kernel="auto"``, reported as ``fused``, with the kernel its rule chose), each
kernel forced (``sdpa``, ``saved_probs``) and the literal eqs. 1-3. Time: median of
``TIME_REPEATS`` forward+backward passes after a warm-up, the variants interleaved, on the
default intra-op threads. Equality: with gamma = 1, the attention term o = y - x of each variant
on the same input, relative error ||o - o_literal|| / ||o_literal||. On CPU the peak is
measured with the PyTorch profiler's memory events: every allocation and free made through
PyTorch's CPU allocator during the region, in time order; the peak is the maximum of their
running sum (tensors that existed before the region, i.e. inputs and weights, are not counted).
On CUDA it is ``torch.cuda.max_memory_allocated`` minus the allocation before the region.
The SDPA backend that ran is read off the autograd graph and confirmed by rerunning the module
with only that backend allowed (SDPA raises instead of silently falling back).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from ssagan_dist.bench.step import cuda_step_peak_bytes
from ssagan_dist.models.attention import SpatialSelfAttention, literal_spatial_attention

SHAPE = (4, 8, 8, 64, 64)  # N, C, T, H, W
CONV1_SHAPE = (1, 32, 32, 64, 64)  # the paper generator's conv1 output (SSA-GAN Table 1), one clip
TIME_REPEATS = 5
EQUAL_RTOL = 1e-5

_BACKEND_BY_NODE = {  # autograd node name fragment -> SDPA backend
    "FlashAttentionForCpu": SDPBackend.FLASH_ATTENTION,
    "FlashAttention": SDPBackend.FLASH_ATTENTION,
    "EfficientAttention": SDPBackend.EFFICIENT_ATTENTION,
    "CudnnAttention": SDPBackend.CUDNN_ATTENTION,
}


def graph_node_names(fn) -> set[str]:
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or type(node).__name__ in seen:
            continue
        seen.add(type(node).__name__)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return seen


def sdpa_backend(module: SpatialSelfAttention, x: torch.Tensor) -> SDPBackend:
    """The backend SDPA picks for this module and input (MATH if none of the fused ones)."""
    names = graph_node_names(module(x.requires_grad_()).grad_fn)
    for fragment, backend in _BACKEND_BY_NODE.items():
        if any(fragment in n for n in names):
            return backend
    return SDPBackend.MATH


def _cpu_peak_bytes(step: Callable[[], None]) -> int:
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    running = peak = 0
    for _, size in sorted(allocations):
        running += size
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def forced_kernel(module: SpatialSelfAttention, kernel: str):
    saved, module.kernel = module.kernel, kernel
    try:
        yield module
    finally:
        module.kernel = saved


def measure(device: str = "cpu", shape: tuple[int, ...] = SHAPE, repeats: int = TIME_REPEATS) -> dict:
    """Peak memory, median time and output error against eqs. 1-3 of every variant at one shape.
    ``fused_*``: the module as training runs it (``kernel="auto"``), ``kernel``: what auto chose."""
    torch.manual_seed(0)
    module = SpatialSelfAttention(shape[1]).to(device)
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(*shape, device=device)
    with forced_kernel(module, "sdpa"):
        backend = sdpa_backend(module, x.clone())
        if backend is not SDPBackend.MATH:
            with sdpa_kernel([backend]):  # raises if the fused path is not really available
                module(x.clone().requires_grad_()).sum().backward()
    kernel = module.kernel_for(module.query(x.clone().requires_grad_()), shape[3] * shape[4])

    def module_step(kernel: str) -> Callable[[], None]:
        def step():
            with forced_kernel(module, kernel):
                module(x.clone().requires_grad_()).sum().backward()
        return step

    steps = {
        "fused": module_step("auto"),
        "sdpa": module_step("sdpa"),
        "saved_probs": module_step("saved_probs"),
        "literal": lambda: literal_spatial_attention(module, x.clone().requires_grad_()).sum().backward(),
    }
    peak = _cpu_peak_bytes if device == "cpu" else cuda_step_peak_bytes
    for step in steps.values():  # warm-up: lazy inits and workspace allocations
        step()
    peaks = {name: peak(step) for name, step in steps.items()}
    timings = dict(zip(steps, _seconds(list(steps.values()), device, repeats)))
    seconds = {name: statistics.median(t) for name, t in timings.items()}
    errors = {}
    with torch.no_grad():
        gamma = module.gamma.item()
        module.gamma.fill_(1.0)
        o_literal = literal_spatial_attention(module, x) - x
        for name in ("fused", "sdpa", "saved_probs"):
            with forced_kernel(module, "auto" if name == "fused" else name), torch.enable_grad():
                o = (module(x.clone().requires_grad_()) - x).detach()  # auto's rule sees a training call
            errors[name] = ((o - o_literal).norm() / o_literal.norm()).item()
        module.gamma.fill_(gamma)
    result = {
        "device": device,
        "shape_NCTHW": list(shape),
        "width_d": shape[1] * shape[2],
        "positions_HW": shape[3] * shape[4],
        "kernel": kernel,
        "sdpa_backend": backend.name,
        "ratio": round(peaks["literal"] / peaks["fused"], 2),
        "speedup": round(seconds["literal"] / seconds["fused"], 2),
        "speedup_of_min": round(min(timings["literal"]) / min(timings["fused"]), 2),
        "threads": torch.get_num_threads(),
        "relative_error": float(f"{errors['fused']:.3g}"),
        "equal_within_1e-5": errors["fused"] <= EQUAL_RTOL,
        "method": ("torch.profiler memory events (running sum of CPU allocator allocs/frees)"
                   if device == "cpu" else "torch.cuda.max_memory_allocated"),
        "timed_repeats": repeats,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    for name in steps:
        result[f"{name}_peak_mib"] = round(peaks[name] / 2**20, 2)
        result[f"{name}_ms"] = round(seconds[name] * 1e3, 1)
        result[f"{name}_ms_min"] = round(min(timings[name]) * 1e3, 1)
        if name in errors:
            result[f"{name}_relative_error"] = float(f"{errors[name]:.3g}")
    return result


def _seconds(steps: list[Callable[[], None]], device: str, repeats: int) -> list[list[float]]:
    """Wall times of each step, the steps interleaved so load changes hit them alike, and the
    order rotated every round so that none always runs first (after the others' frees)."""
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(repeats):
        order = [(round_ + i) % len(steps) for i in range(len(steps))]
        for step, out in ((steps[i], times[i]) for i in order):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - start)
    return times


def run(json_out: bool = False, repeats: int = TIME_REPEATS, threads: int | None = None) -> dict:
    """Measure on CPU at both shapes, and on CUDA too when a device exists. Prints the result;
    returns it (``cpu``/``cuda``: the N=4, C=8, T=8 shape; ``*_conv1``: the paper's conv1).
    ``threads``: CPU intra-op threads (default: torch's)."""
    if threads:
        torch.set_num_threads(threads)
    results = {"cpu": measure("cpu", repeats=repeats), "cpu_conv1": measure("cpu", CONV1_SHAPE, repeats)}
    if torch.cuda.is_available():
        results["cuda"] = measure("cuda", repeats=repeats)
        results["cuda_conv1"] = measure("cuda", CONV1_SHAPE, repeats)
    shapes = [k for k in results if k.startswith(("cpu", "cuda"))]
    results["ratio"] = results["cpu"]["ratio"]
    results["meets_5x"] = all(results[k]["ratio"] >= 5 for k in ("cpu", "cuda") if k in results)
    results["conv1_less_memory_no_slower_equal"] = all(
        results[k]["ratio"] > 1 and results[k]["speedup"] >= 1 and results[k]["equal_within_1e-5"]
        for k in shapes if k.endswith("conv1"))
    results["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if json_out:
        print(json.dumps(results))
    else:
        for key in shapes:
            r = results[key]
            print(f"[{key}] N,C,T,H,W={r['shape_NCTHW']} (d={r['width_d']}, HW={r['positions_HW']})  "
                  f"module (auto -> {r['kernel']}): {r['fused_peak_mib']} MiB {r['fused_ms']} ms, "
                  f"rel. error {r['relative_error']}  |  literal: {r['literal_peak_mib']} MiB {r['literal_ms']} ms  |  "
                  f"memory ratio {r['ratio']}x, speedup {r['speedup']}x (of the minima {r['speedup_of_min']}x)  |  "
                  f"sdpa ({r['sdpa_backend']}): {r['sdpa_peak_mib']} MiB {r['sdpa_ms']} ms  |  "
                  f"saved_probs: {r['saved_probs_peak_mib']} MiB {r['saved_probs_ms']} ms  "
                  f"({r['method']}, {r['threads']} threads, median of {r['timed_repeats']}, "
                  f"load {r['load_avg_1m']})")
        print(f"load average (1 min) at the end: {results['load_avg_1m']}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=TIME_REPEATS, help="timed passes per variant (median, min)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    run(json_out=args.json, repeats=args.repeats, threads=args.threads)


if __name__ == "__main__":
    main()
