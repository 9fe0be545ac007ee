"""Score a checkpoint on held-out shards: MSE, PSNR, SSIM per future frame and averaged, beside baselines.

    python -m ssagan_dist.evaluate --checkpoint runs/tiny_cpu --data data/synth_sky/.../val \
        [--pick latest|best] [--weights ema|raw] [--train-data URL] [--out DIR] [--json]

A run folder is scored at its latest checkpoint, or with ``--pick best`` at the checkpoint whose
validation metric (the run's ``run.best_metric``, default val/psnr, as recorded in its
metrics.jsonl) is highest: model selection on the run's *validation* data, so that ``--data`` can
be a test set that nothing was chosen on. A checkpoint directory is scored as given.
A run trained with ``trainer.g_ema_decay`` > 0 is scored with its moving average of G unless
``--weights raw`` asks for G as trained; ``weights`` in the result says which was scored.

Every held-out clip is scored exactly once, whatever the batch size and the number of ranks (the
last batches are padded and masked); ``count`` says how many were scored. Beside the model, on the
same clips and with the same metric code:

- ``baseline_*``: copy-frame, every future frame = the input photo;
- ``mean_change_*``: the input photo plus the mean change (x_t - x_0, per frame and pixel) of the
  *training* clips (``--train-data``, default the checkpoint's ``data.train_urls``): a
  prediction that knows the average motion of the data but nothing of this clip.

``--out`` writes ``scores.json``, ``per_frame.png`` (PSNR and SSIM per future frame) and
``extremes.png`` (the held-out clips where the model gains least and most over copy-frame).
Conventions: docs/metrics.md; what the numbers mean for quality: docs/quality.md.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import Tensor
from tqdm import tqdm

from ssagan_dist import checkpointing, cli, experiment, metrics, storage
from ssagan_dist.data import ClipLoader, resolve_urls
from ssagan_dist.trainers import GANTrainer
from ssagan_dist.trainers.base import WEIGHTS

# prefix of each series' keys in the result: "" = the model
BASELINES = {"baseline_": "copy frame", "mean_change_": "mean training change"}
PICKS = ("latest", "best")


def pick_checkpoint(uri: str, pick: str = "latest", endpoint_url: Optional[str] = None) -> tuple[str, dict]:
    """(checkpoint URI, how it was picked) for ``uri``: a checkpoint directory as given; in a run
    folder the newest complete checkpoint, or (``best``) the complete one with the best validation
    metric (the run's ``run.best_metric``, highest or, with ``run.best_mode: min``, lowest) recorded
    in the run's metrics.jsonl, the newest among equals. Incomplete or damaged checkpoints
    (``checkpointing.load_complete``) are skipped with a warning naming them."""
    import logging

    from ssagan_dist.config import ConfigError, parse_yaml

    log = logging.getLogger(__name__)
    if pick not in PICKS:
        raise ValueError(f"--pick {pick!r}: one of {', '.join(PICKS)}")
    if storage.exists(storage.join(uri, checkpointing.MODEL_FILE), endpoint_url):
        return uri, {"pick": "given"}
    if pick == "latest":
        return checkpointing.resolve(uri, endpoint_url), {"pick": "latest"}
    present = [d for d in checkpointing.checkpoint_dirs(uri, endpoint_url)
               if storage.exists(storage.join(d, checkpointing.MODEL_FILE), endpoint_url)]
    if not present:
        raise FileNotFoundError(f"{uri} holds no checkpoint_* directory with {checkpointing.MODEL_FILE}")
    run_cfg, unreadable = None, None
    for d in present:  # the run's metric and mode: config.yaml as plain data, never resolved
        url = storage.join(d, checkpointing.CONFIG_FILE)
        try:
            run_cfg = parse_yaml(storage.read_bytes(url, endpoint_url).decode("utf-8", "replace"), url)
        except (ConfigError, FileNotFoundError) as e:
            log.warning("skipping damaged checkpoint %s: %s", d, e)
            unreadable = unreadable or e
            continue
        if isinstance(run_cfg, dict):
            break
    if not isinstance(run_cfg, dict):
        raise unreadable or checkpointing.DamagedCheckpoint(f"{uri}: no checkpoint_* directory holds a readable "
                                                            f"{checkpointing.CONFIG_FILE}")
    run = run_cfg.get("run") if isinstance(run_cfg.get("run"), dict) else {}
    metric, mode = run.get("best_metric", "val/psnr"), run.get("best_mode", "max")
    log_url = storage.join(uri, "metrics.jsonl")
    if not storage.exists(log_url, endpoint_url):
        raise FileNotFoundError(f"--pick best: {log_url} does not exist (it records {metric} per checkpoint); "
                                "use --pick latest or name a checkpoint directory")
    recorded = {}
    for line in storage.read_bytes(log_url, endpoint_url).decode().splitlines():
        record = json.loads(line) if line.strip() else {}
        if isinstance(record.get(metric), (int, float)):
            recorded[record["step"]] = record[metric]
    scored = [(recorded[step], step, d) for d in present
              if (step := int(d.rstrip("/").rsplit("_", 1)[1])) in recorded]
    if not scored:
        raise ValueError(f"--pick best: {log_url} records no {metric} at the steps of {uri}'s checkpoints; "
                         "use --pick latest")
    # best first (run.best_mode), the newest among equals
    scored.sort(key=lambda v: (-v[0] if mode == "min" else v[0], v[1]), reverse=True)
    first_problem: Optional[Exception] = None
    for value, step, d in scored:
        try:
            checkpointing.check_complete(d, endpoint_url)
        except (checkpointing.DamagedCheckpoint, FileNotFoundError) as e:
            log.warning("skipping damaged checkpoint %s: %s", d, e)
            first_problem = first_problem or e
            continue
        return d, {"pick": "best", "pick_metric": metric, "pick_mode": mode, "pick_value": value}
    raise first_problem


def copy_frame(real: Tensor) -> Tensor:
    """Copy-frame baseline: every frame = the input frame (frame 0)."""
    return metrics.copy_frame_baseline(real)


def with_mean_change(real: Tensor, change: Tensor) -> Tensor:
    """Mean-change baseline: the input frame plus ``change`` (C, T, H, W), clamped to [-1, 1]."""
    return (real[:, :, :1] + change.to(real.device, real.dtype)).clamp(-1, 1)


@torch.no_grad()
def mean_change(loader: ClipLoader, max_clips: int = 4096) -> Tensor:
    """Mean of x_t - x_0 over (up to ``max_clips``) clips of ``loader``: (C, T, H, W), float64."""
    total, n = None, 0
    for batch in loader.every_clip():
        video = batch["video"].double()
        if "valid" in batch:
            video = video[batch["valid"]]
        video = video[: max_clips - n]
        change = (video - video[:, :, :1]).sum(0)
        total = change if total is None else total + change
        n += video.shape[0]
        if n >= max_clips:
            break
    if not n:
        raise ValueError("mean_change: the training loader has no clips")
    return total / n


class Scores:
    """Per-series sums of per-clip means and per-frame values of MSE/PSNR/SSIM, plus a count: one
    flat float64 tensor to all-reduce, the same layout on every rank."""

    def __init__(self, frames: int, prefixes: tuple[str, ...]):
        self.frames, self.prefixes = frames, prefixes
        self.width = len(metrics.METRICS) * (1 + frames) + 1
        self.sums = torch.zeros(len(prefixes), self.width, dtype=torch.float64)

    def add(self, prefix: str, m: dict[str, Tensor]) -> None:
        row = self.sums[self.prefixes.index(prefix)]
        k = len(metrics.METRICS)
        for i, name in enumerate(metrics.METRICS):
            row[i] += m[name].double().sum().cpu()
            row[k + i * self.frames : k + (i + 1) * self.frames] += m[f"{name}_per_frame"].double().sum(0).cpu()
        row[-1] += m["mse"].shape[0]

    def means(self, flat: Tensor) -> dict:
        out: dict = {}
        k = len(metrics.METRICS)
        for prefix, row in zip(self.prefixes, flat.view(len(self.prefixes), self.width)):
            count = int(row[-1].item())
            mean = row / count if count else torch.full_like(row, float("nan"))
            for i, name in enumerate(metrics.METRICS):
                out[prefix + name] = mean[i].item()
                out[f"{prefix}{name}_curve"] = mean[k + i * self.frames : k + (i + 1) * self.frames].tolist()
            out[prefix + "count"] = count
        return out


class Extremes:
    """The ``k`` clips with the lowest and the highest model-minus-copy-frame PSNR seen by this rank."""

    def __init__(self, k: int):
        self.k = k
        self.worst: list = []  # heaps of (±gain, tie, key, real, pred)
        self.best: list = []
        self._tie = itertools.count()

    def add(self, gains: Tensor, keys: list[str], real: Tensor, pred: Tensor) -> None:
        for g, key, r, p in zip(gains.tolist(), keys, real.cpu(), pred.cpu()):
            for heap, score in ((self.worst, -g), (self.best, g)):
                item = (score, next(self._tie), key, r, p)
                (heapq.heappush if len(heap) < self.k else heapq.heappushpop)(heap, item)

    def clips(self) -> tuple[list, list]:
        """([(gain, key, real, pred)] worst first, [...] best first)."""
        worst = [(-s, key, r, p) for s, _, key, r, p in sorted(self.worst, reverse=True)]
        best = [(s, key, r, p) for s, _, key, r, p in sorted(self.best, reverse=True)]
        return worst, best


@torch.no_grad()
def score(trainer: GANTrainer, loader: ClipLoader, frames: int, device: torch.device | str, *,
          max_batches: int = 0, progress: bool = False, change: Optional[Tensor] = None,
          extremes: Optional[Extremes] = None) -> tuple[dict, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Model, copy-frame and (with ``change``, see ``mean_change``) mean-change metrics over every
    clip of ``loader`` (or its first ``max_batches`` batches), summed over every rank when a process
    group is up; also this rank's first (real, predicted) batch, on the CPU.

    Keys: mse, psnr, ssim (means over future frames, then clips), {mse,psnr,ssim}_curve (per frame
    index, frame 0 = the input), count (clips scored), each again with ``baseline_`` (copy-frame)
    and ``mean_change_`` prefixes.
    """
    loader = loader.every_clip()  # pads and masks the last batches: every clip once, on any world size
    prefixes = ("", "baseline_") + (("mean_change_",) if change is not None else ())
    sums = Scores(frames, prefixes)
    first = None
    total = min(len(loader), max_batches) if max_batches else len(loader)
    for batch in tqdm(itertools.islice(loader, total), total=total, desc="evaluate", unit="batch",
                      disable=not progress):
        valid = batch.pop("valid")
        real = batch["video"].to(device)
        pred = trainer.predict({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
        real, pred = real[valid.to(real.device)], pred[valid.to(pred.device)]
        if not len(real):
            continue
        model = metrics.clip_metrics(pred, real)
        copied = metrics.clip_metrics(copy_frame(real), real)
        sums.add("", model)
        sums.add("baseline_", copied)
        if change is not None:
            sums.add("mean_change_", metrics.clip_metrics(with_mean_change(real, change), real))
        if extremes is not None:
            keys = [k for k, ok in zip(batch["key"], valid.tolist()) if ok]
            extremes.add(model["psnr"] - copied["psnr"], keys, real, pred)
        if first is None:
            first = (real.cpu(), pred.cpu())
    flat = sums.sums.flatten().to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat)
    return sums.means(flat.cpu()), first


def _train_urls(cfg, train_data: Optional[str]) -> Optional[str]:
    return train_data if train_data is not None else (cfg.data.train_urls or None)


def evaluate(checkpoint: str, data: str, *, batch_size: int = 8, max_batches: int = 0, device: str = "cpu",
             endpoint_url: Optional[str] = None, progress: bool = True, train_data: Optional[str] = None,
             out: Optional[str] = None, extremes: int = 4, pick: str = "latest",
             weights: Optional[str] = None) -> dict:
    """Score ``checkpoint`` (``pick``: see ``pick_checkpoint``) on ``data``; ``train_data`` ("" =
    none) gives the mean-change baseline (default: the run's ``data.train_urls``); ``out`` = a
    folder for scores.json and the PNGs; ``weights``: "ema" (G's moving average), "raw" (G as
    trained) or None (the average when the checkpoint keeps one)."""
    checkpoint, picked = pick_checkpoint(checkpoint, pick, endpoint_url)
    trainer, cfg, state = experiment.load_trainer(checkpoint, device, endpoint_url)
    try:
        weights = trainer.weights_for(weights)
    except ValueError as e:
        raise ValueError(f"--weights for checkpoint {checkpoint}: {e}") from None
    loader = ClipLoader(resolve_urls(data, endpoint_url=endpoint_url), batch_size, shuffle=False,
                        endpoint_url=endpoint_url, drop_last=False)
    train_urls = _train_urls(cfg, train_data)
    change = None
    if train_urls:
        try:
            train_loader = ClipLoader(resolve_urls(train_urls, endpoint_url=endpoint_url), batch_size,
                                      shuffle=False, endpoint_url=endpoint_url, drop_last=False)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"training data for the mean-change baseline ({train_urls}): {e}; pass "
                                    "--train-data URL, or --train-data '' to leave that baseline out") from e
        change = mean_change(train_loader)
    keep = Extremes(extremes) if out and extremes else None
    with trainer.generator_weights(weights):
        result, _ = score(trainer, loader, state["clip_shape"][1], device, max_batches=max_batches,
                          progress=progress, change=change, extremes=keep)
    result.update({"model": cfg.model.name, "preset": cfg.model.preset, "step": state["step"], "weights": weights,
                   "output": dict(cfg.model.args).get("output", "direct"),
                   "checkpoint": checkpoint, "data": data, "train_data": train_urls, **picked})
    if out:
        write_report(result, out, keep)
    return result


def series(result: dict) -> dict[str, str]:
    """{prefix: label} of the series present in a result, the model first."""
    return {"": "model", **{p: label for p, label in BASELINES.items() if p + "psnr" in result}}


def write_report(result: dict, out: str, keep: Optional[Extremes] = None, title: str = "") -> None:
    """scores.json, per_frame.png and (with ``keep``) extremes.png in the folder ``out``."""
    from ssagan_dist import visualize  # Pillow/PyAV only when pictures are asked for

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    named = series(result)
    visualize.quality_curves_png(
        {"PSNR (dB)": {label: result[p + "psnr_curve"][1:] for p, label in named.items()},
         "SSIM": {label: result[p + "ssim_curve"][1:] for p, label in named.items()}},
        folder / "per_frame.png", title=title or f"{result.get('model', '')} on {Path(str(result.get('data', ''))).name}")
    if keep is not None and keep.worst:
        worst, best = keep.clips()
        picked = worst + best
        real = torch.stack([r for _, _, r, _ in picked])
        pred = torch.stack([p for _, _, _, p in picked])
        strip = visualize.sample_strip(real[:, :, 0], pred, real, max_clips=len(picked))
        visualize.save_image(strip, folder / "extremes.png")
        (folder / "extremes.json").write_text(json.dumps(
            {"order": "rows 0..k-1: lowest model-minus-copy-frame PSNR first; then highest first",
             "worst": [{"key": k, "psnr_gain_db": g} for g, k, _, _ in worst],
             "best": [{"key": k, "psnr_gain_db": g} for g, k, _, _ in best]}, indent=2))


def format_table(result: dict) -> str:
    lines = [f"{'':>22}{'MSE':>10}{'PSNR (dB)':>12}{'SSIM':>10}{'clips':>8}"]
    for prefix, label in series(result).items():
        lines.append(f"{label:>22}{result[prefix + 'mse']:>10.5f}{result[prefix + 'psnr']:>12.3f}"
                     f"{result[prefix + 'ssim']:>10.4f}{result[prefix + 'count']:>8d}")
    lines.append("PSNR per future frame (dB):")
    for prefix, label in series(result).items():
        lines.append(f"{label:>22}  " + " ".join(f"{v:6.2f}" for v in result[prefix + "psnr_curve"][1:]))
    return "\n".join(lines)


@cli.command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run folder (latest), local or s3://")
    p.add_argument("--data", required=True, help="dataset URL (folder with index.json), brace pattern or list")
    p.add_argument("--pick", choices=PICKS, default="latest",
                   help="in a run folder: its latest checkpoint (default) or the best by the run's validation "
                        "metric (run.best_metric, recorded in metrics.jsonl)")
    p.add_argument("--weights", choices=WEIGHTS, default=None,
                   help="ema: G's moving average (the default when the run kept one, trainer.g_ema_decay > 0); "
                        "raw: G as trained")
    p.add_argument("--train-data", default=None,
                   help="training clips for the mean-change baseline (default: the run's data.train_urls; '' = none)")
    p.add_argument("--out", default=None, help="folder for scores.json, per_frame.png and extremes.png")
    p.add_argument("--extremes", type=int, default=4, help="worst and best clips each in extremes.png (default 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole dataset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    r = evaluate(a.checkpoint, a.data, batch_size=a.batch_size, max_batches=a.max_batches, device=a.device,
                 endpoint_url=a.s3_endpoint, progress=not a.json, train_data=a.train_data, out=a.out,
                 extremes=a.extremes, pick=a.pick, weights=a.weights)
    if a.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    how = {"best": f", the best {r.get('pick_metric')} ({r.get('pick_value', 0):.6g}) of the run", "latest": ", the latest"}
    print(f"{r['model']} ({r['preset']}, output {r['output']}, {r['weights']} G) at step {r['step']}"
          f"{how.get(r['pick'], '')} "
          f"on {r['data']}")
    print(format_table(r))
    if a.out:
        print(f"report: {a.out}/scores.json, per_frame.png" + (", extremes.png" if a.extremes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
