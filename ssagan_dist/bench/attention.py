"""Peak memory of one SSA forward+backward: fused SDPA vs the literal bmm+softmax version.

    python -m ssagan_dist.bench.attention [--json]

Shape N=4, C=8, T=8, H=W=64 (attention over 4096 positions, d = 64). On CPU the peak is
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
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from ssagan_dist.models.attention import SpatialSelfAttention, literal_spatial_attention

SHAPE = (4, 8, 8, 64, 64)  # N, C, T, H, W

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

    peak = _cpu_peak_bytes if device == "cpu" else _cuda_peak_bytes
    fused_step(), literal_step()  # warm-up: lazy inits and workspace allocations
    fused, literal = peak(fused_step), peak(literal_step)
    return {
        "device": device,
        "shape_NCTHW": list(shape),
        "sdpa_backend": backend.name,
        "fused_peak_mib": round(fused / 2**20, 2),
        "literal_peak_mib": round(literal / 2**20, 2),
        "ratio": round(literal / fused, 2),
        "method": ("torch.profiler memory events (running sum of CPU allocator allocs/frees)"
                   if device == "cpu" else "torch.cuda.max_memory_allocated"),
    }


def run(json_out: bool = False) -> dict:
    """Measure on CPU, and on CUDA too when a device exists. Prints the result; returns it."""
    results = {"cpu": measure("cpu")}
    if torch.cuda.is_available():
        results["cuda"] = measure("cuda")
    results["ratio"] = results["cpu"]["ratio"]
    results["meets_5x"] = all(r["ratio"] >= 5 for k, r in results.items() if k in ("cpu", "cuda"))
    if json_out:
        print(json.dumps(results))
    else:
        for key in ("cpu", "cuda"):
            if key in results:
                r = results[key]
                print(f"[{key}] N,C,T,H,W={r['shape_NCTHW']}  backend={r['sdpa_backend']}  "
                      f"fused={r['fused_peak_mib']} MiB  literal={r['literal_peak_mib']} MiB  "
                      f"ratio={r['ratio']}x  ({r['method']})")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    run(json_out=parser.parse_args(argv).json)


if __name__ == "__main__":
    main()
