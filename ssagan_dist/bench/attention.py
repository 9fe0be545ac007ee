"""Peak memory and time of one SSA forward+backward: fused SDPA vs the literal bmm+softmax version.

    python -m ssagan_dist.bench.attention [--json]

Shapes: N=4, C=8, T=8, H=W=64 (attention over 4096 positions, d = 64), and the paper's conv1
output (C=32, T=32, 64x64: 4096 positions, d = 1024; N=1, one clip). Time: median of
``TIME_REPEATS`` forward+backward passes after a warm-up, fused and literal interleaved, on the
default intra-op threads. Equality: with gamma = 1, the attention term o = y - x of both versions
on the same input, relative error ||o_fused - o_literal|| / ||o_literal||. On CPU the peak is
measured with the PyTorch profiler's memory events: every allocation and free made through
PyTorch's CPU allocator during the region, in time order; the peak is the maximum of their
running sum (tensors that existed before the region, i.e. inputs and weights, are not counted).
On CUDA it is ``torch.cuda.max_memory_allocated`` minus the allocation before the region.
The backend that ran is read off the autograd graph and confirmed by rerunning the fused
module with only that backend allowed (SDPA raises instead of silently falling back).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from ssagan_dist.models.attention import SpatialSelfAttention, literal_spatial_attention

class ChunkedAttention(torch.autograd.Function):
    """softmax(scale·q kᵀ) v, one block of queries at a time: never more than N×chunk×L scores,
    backward recomputes each block's scores from q, k and the saved log-sum-exp (flash-style
    algorithm on plain bmm, which CPU BLAS runs at full speed for any d)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, chunk: int) -> Tensor:
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
        kt = k.transpose(1, 2)
        for i in range(0, q.shape[1], chunk):
            s = torch.bmm(q[:, i:i + chunk], kt).mul_(scale)
            lse[:, i:i + chunk] = torch.logsumexp(s, -1)
            out[:, i:i + chunk] = torch.bmm(s.sub_(lse[:, i:i + chunk, None]).exp_(), v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        delta = (grad_out * out).sum(-1)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        for i in range(0, q.shape[1], chunk):
            sl = slice(i, i + chunk)
            p = torch.bmm(q[:, sl], kt).mul_(scale).sub_(lse[:, sl, None]).exp_()
            dv.baddbmm_(p.transpose(1, 2), grad_out[:, sl])
            ds = torch.bmm(grad_out[:, sl], vt).sub_(delta[:, sl, None]).mul_(p).mul_(scale)
            dq[:, sl] = torch.bmm(ds, k)
            dk.baddbmm_(ds.transpose(1, 2), q[:, sl])
        return dq, dk, dv, None, None


def chunked_spatial_attention(module: SpatialSelfAttention, x: Tensor, chunk: int = 512) -> Tensor:
    """Eqs. 1-3 through ``ChunkedAttention``: a candidate for ``SpatialSelfAttention`` on CPU at
    large d (= C·T), where the CPU flash kernel's backward is slow (docs/performance.md)."""
    n, c, t, h, w = x.shape
    q = module.query(x).reshape(n, -1, h * w).transpose(1, 2)
    k = module.key(x).reshape(n, -1, h * w).transpose(1, 2)
    v = module.value(x).reshape(n, c * t, h * w).transpose(1, 2)
    scale = q.shape[-1] ** -0.5 if module.scaled else 1.0
    o = ChunkedAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), scale, chunk)
    return module.gamma * o.transpose(1, 2).reshape(n, c, t, h, w) + x


SHAPE = (4, 8, 8, 64, 64)  # N, C, T, H, W
CONV1_SHAPE = (1, 32, 32, 64, 64)  # the paper generator's conv1 output (seed 000 Table 1), one clip
TIME_REPEATS = 3
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


def _cuda_peak_bytes(step: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(device: str = "cpu", shape: tuple[int, ...] = SHAPE) -> dict:
    torch.manual_seed(0)
    module = SpatialSelfAttention(shape[1]).to(device)
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(*shape, device=device)
    backend = sdpa_backend(module, x.clone())
    if backend is not SDPBackend.MATH:
        with sdpa_kernel([backend]):  # raises if the fused path is not really available
            module(x.clone().requires_grad_()).sum().backward()

    def fused_step():
        module(x.clone().requires_grad_()).sum().backward()

    def literal_step():
        literal_spatial_attention(module, x.clone().requires_grad_()).sum().backward()

    def chunked_step():
        chunked_spatial_attention(module, x.clone().requires_grad_()).sum().backward()

    peak = _cpu_peak_bytes if device == "cpu" else _cuda_peak_bytes
    fused_step(), literal_step(), chunked_step()  # warm-up: lazy inits and workspace allocations
    fused, literal, chunked = peak(fused_step), peak(literal_step), peak(chunked_step)
    fused_s, literal_s, chunked_s = _median_seconds([fused_step, literal_step, chunked_step], device)
    with torch.no_grad():
        gamma = module.gamma.item()
        module.gamma.fill_(1.0)
        o_fused, o_literal = module(x) - x, literal_spatial_attention(module, x) - x
        o_chunked = chunked_spatial_attention(module, x) - x
        module.gamma.fill_(gamma)
        rel = ((o_fused - o_literal).norm() / o_literal.norm()).item()
        rel_chunked = ((o_chunked - o_literal).norm() / o_literal.norm()).item()
    return {
        "device": device,
        "shape_NCTHW": list(shape),
        "sdpa_backend": backend.name,
        "fused_peak_mib": round(fused / 2**20, 2),
        "literal_peak_mib": round(literal / 2**20, 2),
        "ratio": round(literal / fused, 2),
        "fused_ms": round(fused_s * 1e3, 1),
        "literal_ms": round(literal_s * 1e3, 1),
        "speedup": round(literal_s / fused_s, 2),
        "threads": torch.get_num_threads(),
        "relative_error": float(f"{rel:.3g}"),
        "equal_within_1e-5": rel <= EQUAL_RTOL,
        "chunked_peak_mib": round(chunked / 2**20, 2),
        "chunked_ms": round(chunked_s * 1e3, 1),
        "chunked_relative_error": float(f"{rel_chunked:.3g}"),
        "method": ("torch.profiler memory events (running sum of CPU allocator allocs/frees)"
                   if device == "cpu" else "torch.cuda.max_memory_allocated"),
    }


def _median_seconds(steps: list[Callable[[], None]], device: str) -> list[float]:
    """Median wall time of each step, the steps interleaved so load changes hit them alike."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(TIME_REPEATS):
        for step, out in zip(steps, times):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run(json_out: bool = False) -> dict:
    """Measure on CPU at both shapes, and on CUDA too when a device exists. Prints the result;
    returns it (``cpu``/``cuda``: the N=4, C=8, T=8 shape; ``*_conv1``: the paper's conv1)."""
    results = {"cpu": measure("cpu"), "cpu_conv1": measure("cpu", CONV1_SHAPE)}
    if torch.cuda.is_available():
        results["cuda"] = measure("cuda")
        results["cuda_conv1"] = measure("cuda", CONV1_SHAPE)
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
            print(f"[{key}] N,C,T,H,W={r['shape_NCTHW']}  backend={r['sdpa_backend']}  "
                  f"fused={r['fused_peak_mib']} MiB {r['fused_ms']} ms  literal={r['literal_peak_mib']} MiB "
                  f"{r['literal_ms']} ms  memory ratio={r['ratio']}x  speedup={r['speedup']}x  "
                  f"rel. error {r['relative_error']}  ({r['method']}, {r['threads']} threads); "
                  f"chunked bmm: {r['chunked_peak_mib']} MiB {r['chunked_ms']} ms, "
                  f"rel. error {r['chunked_relative_error']}")
        print(f"load average (1 min): {results['load_avg_1m']}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    run(json_out=parser.parse_args(argv).json)


if __name__ == "__main__":
    main()
