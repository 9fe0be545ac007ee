"""Counted forward FLOPs of a network (torch.utils.flop_counter), for the model CLI and docs.

Counted: convolutions (transposed included), matmuls and scaled-dot-product attention, at 2 FLOPs
per multiply-accumulate; elementwise work (BatchNorm, activations, softmax) is not counted, as
is usual for GFLOP figures. PyTorch's counter has no formula for the CPU flash-attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``), which SSA runs on CPU, so it is added here
with the same formula as the CUDA kernels (QKᵀ plus AV); without it SSA would count as zero.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS)


@torch.no_grad()
def forward_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, object]:
    """(FLOPs of one forward of ``module(*inputs)``, its output). Runs in eval mode."""
    was_training = module.training
    module.eval()
    try:
        with flop_counter() as counter:
            out = module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops(), out
