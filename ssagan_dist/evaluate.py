"""Score a checkpoint on held-out shards: MSE, PSNR, SSIM per frame, averaged over frames then clips.

    python -m ssagan_dist.evaluate --checkpoint runs/tiny_cpu --data data/synth_sky/.../val [--json]

The copy-the-input-frame baseline is scored on the same clips. Conventions: docs/metrics.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from ssagan_dist import checkpointing, metrics
from ssagan_dist.data import ClipLoader, resolve_urls
from ssagan_dist.trainers import GANTrainer


@torch.no_grad()
def score(trainer: GANTrainer, loader: ClipLoader, frames: int, device: torch.device | str, *,
          max_batches: int = 0, progress: bool = False) -> tuple[dict, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Model and copy-frame-0 metrics over ``loader`` (from its first batch), summed over every
    rank when a process group is up; also this rank's first (real, predicted) batch, on the CPU."""
    sums = metrics.MetricSums(frames)
    first = None
    total = min(len(loader), max_batches) if max_batches else len(loader)
    loader.load_state_dict({"epoch": 0, "consumed": 0})  # the same clips every time
    for batch in tqdm(itertools.islice(loader, total), total=total, desc="evaluate", unit="batch",
                      disable=not progress):
        real = batch["video"].to(device)
        pred = trainer.predict({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
        sums.add(metrics.clip_metrics(pred, real))
        sums.add(metrics.clip_metrics(metrics.copy_frame_baseline(real), real), prefix="baseline_")
        if first is None:
            first = (real.cpu(), pred.cpu())
    flat = sums.to_tensor(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat)
    return sums.means(flat.cpu()), first


def evaluate(checkpoint: str, data: str, *, batch_size: int = 8, max_batches: int = 0, device: str = "cpu",
             endpoint_url: Optional[str] = None, progress: bool = True) -> dict:
    trainer, cfg, state = checkpointing.load_trainer(checkpoint, device, endpoint_url)
    loader = ClipLoader(resolve_urls(data, endpoint_url=endpoint_url), batch_size, shuffle=False,
                        endpoint_url=endpoint_url)
    result, _ = score(trainer, loader, state["clip_shape"][1], device, max_batches=max_batches, progress=progress)
    result.update({"model": cfg.model.name, "preset": cfg.model.preset, "step": state["step"],
                   "checkpoint": checkpointing.resolve(checkpoint, endpoint_url), "data": data})
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run folder (latest), local or s3://")
    p.add_argument("--data", required=True, help="dataset URL (folder with index.json), brace pattern or list")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole dataset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    try:
        r = evaluate(a.checkpoint, a.data, batch_size=a.batch_size, max_batches=a.max_batches, device=a.device,
                     endpoint_url=a.s3_endpoint, progress=not a.json)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    print(f"{r['model']} ({r['preset']}) at step {r['step']} on {r['data']}")
    print(f"{'':>18}{'MSE':>10}{'PSNR (dB)':>12}{'SSIM':>10}")
    print(f"{'model':>18}{r['mse']:>10.5f}{r['psnr']:>12.3f}{r['ssim']:>10.4f}")
    print(f"{'copy first frame':>18}{r['baseline_mse']:>10.5f}{r['baseline_psnr']:>12.3f}{r['baseline_ssim']:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
