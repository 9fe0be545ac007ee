"""DistributedDataParallel around the trained networks: the ``ddp:`` section's one reader.

    trainer.wrap(parallel.wrapper(cfg.ddp))   # in each rank, after the checkpoint is loaded

``ddp.sync_batchnorm`` converts BatchNorm to SyncBatchNorm (GPUs, more than one rank);
``ddp.bucket_cap_mb`` and ``ddp.gradient_as_bucket_view`` are DDP's own arguments (measured
effects: docs/performance.md). Buffers are never broadcast in forward (``no_forward_buffer_sync``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from ssagan_dist.config import Allowed, ReadWhen

CONFIG_RULES = (
    Allowed("ddp.sync_batchnorm", lambda cfg: not cfg.ddp.sync_batchnorm or cfg.scaling.use_gpu,
            "false without scaling.use_gpu=true (torch's SyncBatchNorm runs on GPUs only)"),
    Allowed("ddp.bucket_cap_mb", lambda cfg: cfg.ddp.bucket_cap_mb >= 1, ">= 1"),
    ReadWhen("ddp.sync_batchnorm", lambda cfg, nets: cfg.scaling.use_gpu and cfg.scaling.ranks > 1,
             "it only acts with scaling.use_gpu=true and scaling.ranks > 1"),
    ReadWhen("ddp.bucket_cap_mb", lambda cfg, nets: cfg.scaling.ranks > 1, "DDP buckets exist only with scaling.ranks > 1"),
    ReadWhen("ddp.gradient_as_bucket_view", lambda cfg, nets: cfg.scaling.ranks > 1,
             "DDP buckets exist only with scaling.ranks > 1"),
)


def no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's argument for "no buffer broadcast in forward": two D forwards (real, fake) before one
    backward need it (pytorch/pytorch#22095). torch 2.13 renamed ``broadcast_buffers`` to
    ``forward_sync_buffers`` and warns (FutureWarning) on the old name; the new one still
    broadcasts rank 0's buffers once when DDP wraps the module, which changes nothing here: every
    rank built or loaded the same buffers (``check_ranks_agree``)."""
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}  # torch < 2.13


def ddp_kwargs(ddp: Any) -> dict[str, Any]:
    """DistributedDataParallel's arguments from the ``ddp`` section."""
    return {**no_forward_buffer_sync(), "bucket_cap_mb": ddp.bucket_cap_mb,
            "gradient_as_bucket_view": ddp.gradient_as_bucket_view}


def wrapper(ddp: Any) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """What ``GANTrainer.wrap`` applies to each trained network in a Ray Train rank."""
    import ray.train.torch
    import torch.distributed as dist

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if ddp.sync_batchnorm and dist.get_world_size() > 1:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy_kwargs=ddp_kwargs(ddp))
    return wrap
