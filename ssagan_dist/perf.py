"""The speed switches of the ``perf:`` config section, applied to a built trainer.

    trainer = experiment.build_trainer(cfg, device)
    perf.apply(trainer, cfg.perf)                 # autocast, channels-last, compile, fp16 scaler

With every switch at its default ``apply`` changes nothing (float32, contiguous, eager), so
runs and their bit-identical resume are as before. Measured effects: docs/performance.md.

- ``autocast``: the loss computation (forwards and losses) runs under ``torch.autocast``;
  backward and the optimizer stay float32 (master weights). bf16 needs no loss scaling; fp16
  (GPU only, refused by config validation otherwise) gets one ``GradScaler`` per trained
  network, whose step reads found-inf on the host: one sync per update, which bf16 avoids.
- ``channels_last``: 3-D conv weights and 5-D batch tensors in ``torch.channels_last_3d`` (2-D
  conv weights in ``channels_last``), the layout cuDNN's and oneDNN's fastest kernels use.
- ``attention``: the kernel of every SSA layer (``SpatialSelfAttention``): "auto" (the default)
  lets each call pick SDPA or the saved-probabilities matmuls by the rule in
  ``models/attention.py``; "sdpa" or "saved_probs" forces one.
- ``compile``: ``nn.Module.compile()`` on every network, in place, so ``state_dict`` keys and
  checkpoints are unchanged. The DDP wrapper stays eager around the compiled module: gradients
  of one compiled backward are ready together, so all-reduce overlaps less than in eager mode.
"""

from __future__ import annotations

from typing import Any

import torch

from ssagan_dist.config import Allowed, ReadWhen
from ssagan_dist.models.attention import KERNELS, SpatialSelfAttention
from ssagan_dist.trainers.base import GANTrainer

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CONFIG_RULES = (
    Allowed("perf.autocast", lambda cfg: cfg.perf.autocast in AUTOCAST_DTYPES,
            " or ".join(repr(k) for k in AUTOCAST_DTYPES)),
    Allowed("perf.autocast", lambda cfg: cfg.perf.autocast != "fp16" or cfg.scaling.use_gpu,
            "'bf16' on CPU: 'fp16' needs scaling.use_gpu=true"),
    Allowed("perf.attention", lambda cfg: cfg.perf.attention in KERNELS, " or ".join(repr(k) for k in KERNELS)),
    ReadWhen("perf.attention",
             lambda cfg, nets: any(isinstance(m, SpatialSelfAttention) for net in nets.values() for m in net.modules()),
             "model {model!r} has no spatial self-attention layer"),
)


def apply(trainer: GANTrainer, perf: Any) -> GANTrainer:
    """Set ``perf``'s switches on ``trainer`` (before DDP wrapping and before loading a checkpoint:
    loading copies into the converted parameters, keeping their layout)."""
    if perf.autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"config key 'perf.autocast' = {perf.autocast!r}: must be one of {sorted(AUTOCAST_DTYPES)}")
    trainer.autocast_dtype = AUTOCAST_DTYPES[perf.autocast]
    if perf.autocast == "fp16":
        if trainer.device.type != "cuda":
            raise ValueError(f"config key 'perf.autocast' = 'fp16' needs a GPU; the trainer is on {trainer.device}")
        trainer.grad_scalers = {k: torch.amp.GradScaler("cuda") for k in trainer.trained}
    if perf.channels_last:
        for net in trainer.nets.values():
            to_channels_last(net)
        trainer.input_memory_format = torch.channels_last_3d
    if perf.attention != "auto":
        for net in trainer.nets.values():
            set_attention_kernel(net, perf.attention)
    if perf.compile:
        for net in trainer.nets.values():
            net.compile()
    return trainer


def set_attention_kernel(net: torch.nn.Module, kernel: str) -> torch.nn.Module:
    """Force every SSA layer of ``net`` onto one kernel ("auto" restores the per-call rule)."""
    for module in net.modules():
        if isinstance(module, SpatialSelfAttention):
            module.kernel = kernel
    return net


def channels_last_format(dim: int) -> torch.memory_format:
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(dim, torch.preserve_format)


def to_channels_last(net: torch.nn.Module) -> torch.nn.Module:
    """Every 3-D conv's weights in channels_last_3d, every 2-D conv's (frame models) in channels_last."""
    for module in net.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() in (4, 5):
            module.to(memory_format=channels_last_format(weight.dim()))
    return net

