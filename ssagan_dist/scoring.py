"""Scoring as a library: a model's predictions on held-out clips against the truth and beside
baselines (copy-frame, the mean training change; on synthetic skies, oracles re-rendered from each
clip's parameters), MSE/PSNR/SSIM per future frame and averaged, cloud motion, per-clip values.

``score`` scores a built trainer over a loader (every clip exactly once, on any world size);
``evaluate`` loads a checkpoint (``pick_checkpoint``) and scores it; ``write_report`` and
``format_table`` present a result. Callers: the training loop at every validation
(``ssagan_dist.train``), the ``python -m ssagan_dist.evaluate`` command, the benchmarks
(``ssagan_dist.bench.zoo``, ``ssagan_dist.bench.quality``). What the keys mean: the docstring of
``ssagan_dist.evaluate`` and docs/metrics.md.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import posixpath
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from ssagan_dist import checkpointing, experiment, metrics, motion, storage
from ssagan_dist.data import ClipLoader, read_index, resolve_urls
from ssagan_dist.trainers import GANTrainer


# prefix of each series' keys in the result: "" = the model
BASELINES = {"baseline_": "copy frame", "mean_change_": "mean training change"}
# synthetic skies (data_tools.synth): each clip rendered again from its parameters, {prefix:
# (synth.VARIANTS name, label)}; "exact" differs from the stored clip by its JPEG error only
ORACLES = {"oracle_drift_": ("drift_only", "oracle: true drift, clouds still"),
           "oracle_motion_": ("motion_only", "oracle: true motion, colour still"),
           "oracle_seen_": ("seen_only", "oracle: exact, unseen clouds guessed"),
           "oracle_exact_": ("exact", "oracle: exact re-render")}
# motion measures (ssagan_dist.motion.summarize): per series, with its prefix; of the truth
MOTION_SERIES_KEYS = ("pred_displacement", "direction_agreement", "magnitude_ratio", "magnitude_ratio_median",
                      "along_ratio", "pred_frame_change")
MOTION_TRUE_KEYS = ("true_displacement", "true_frame_change")
# per-clip motion values (ssagan_dist.motion.per_clip) in result["per_clip"], per series with its prefix
MOTION_PER_CLIP = ("pred_displacement", "direction_agreement", "magnitude_ratio", "along_ratio", "pred_frame_change")
PICKS = ("latest", "best")


def pick_checkpoint(uri: str, pick: str = "latest", endpoint_url: Optional[str] = None) -> tuple[str, dict]:
    """(checkpoint URI, how it was picked) for ``uri``: a checkpoint directory as given; in a run
    folder the newest complete checkpoint, or (``best``) the complete one with the best validation
    metric (the run's ``checkpoint.best_metric``, highest or, with ``checkpoint.best_mode: min``, lowest) recorded
    in the run's metrics.jsonl, the newest among equals. Incomplete or damaged checkpoints
    (``checkpointing.load_complete``) are skipped with a warning naming them."""
    import logging

    from ssagan_dist.config import ConfigError, parse_yaml, upgrade

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
            # a checkpoint written before the rename keeps run.best_metric: read it as checkpoint.*
            run_cfg = upgrade(parse_yaml(storage.read_bytes(url, endpoint_url).decode("utf-8", "replace"), url), url)
        except (ConfigError, FileNotFoundError) as e:
            log.warning("skipping damaged checkpoint %s: %s", d, e)
            unreadable = unreadable or e
            continue
        if isinstance(run_cfg, dict):
            break
    if not isinstance(run_cfg, dict):
        raise unreadable or checkpointing.DamagedCheckpoint(f"{uri}: no checkpoint_* directory holds a readable "
                                                            f"{checkpointing.CONFIG_FILE}")
    section = run_cfg.get("checkpoint") if isinstance(run_cfg.get("checkpoint"), dict) else {}
    metric, mode = section.get("best_metric", "val/psnr"), section.get("best_mode", "max")
    log_url = storage.join(uri, "metrics.jsonl")
    if not storage.exists(log_url, endpoint_url):
        raise FileNotFoundError(f"--pick best: {log_url} does not exist (it records {metric} per checkpoint); "
                                "use --pick latest or name a checkpoint directory")
    recorded = {step: values[metric] for step, values in validation_records(uri, [metric], endpoint_url).items()}
    scored = [(recorded[step], step, d) for d in present
              if (step := int(d.rstrip("/").rsplit("_", 1)[1])) in recorded]
    if not scored:
        raise ValueError(f"--pick best: {log_url} records no {metric} at the steps of {uri}'s checkpoints; "
                         "use --pick latest")
    # best first (checkpoint.best_mode), the newest among equals
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


def validation_records(uri: str, keys: list[str], endpoint_url: Optional[str] = None) -> dict[int, dict]:
    """{step: {key: value}} from run folder ``uri``'s metrics.jsonl, in step order: every record
    holding a number for ``keys[0]`` (a validation metric: one record per checkpoint), with those
    of ``keys`` it holds."""
    records = {}
    for line in storage.read_bytes(storage.join(uri, "metrics.jsonl"), endpoint_url).decode().splitlines():
        record = json.loads(line) if line.strip() else {}
        if isinstance(record.get(keys[0]), (int, float)):
            records[record["step"]] = {k: record[k] for k in keys if isinstance(record.get(k), (int, float))}
    return dict(sorted(records.items()))


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


def synthetic_clips(loader: ClipLoader) -> dict[str, tuple[int, int, int, int, str]]:
    """{clip key: (seed, index, size, frames, shard)} for the clips of ``loader`` that
    ``data_tools.synth`` wrote (their dataset's index.json names it as ``source.tool``), whose
    parameters it can render again (``synth.rerender``); ``shard`` names the stored bytes (the
    shard's sha256 as indexed, else its URL). Empty without data_tools or synthetic clips."""
    try:
        from data_tools import synth  # the dataset tool; the library imports without it
    except ImportError:
        return {}
    indexes: dict[str, Optional[dict]] = {}
    out: dict[str, tuple[int, int, int, int, str]] = {}
    for shard in getattr(loader, "shards", []):
        folder, name = posixpath.split(shard.url)
        if folder not in indexes:
            try:
                indexes[folder] = read_index(folder, getattr(loader, "endpoint_url", None))
            except (OSError, ValueError):
                indexes[folder] = None
        index = indexes[folder] or {}
        source = index.get("source") or {}
        if source.get("tool") != synth.TOOL:
            continue
        seed, size, frames = source.get("seed"), source.get("size"), source.get("frames")
        if shard.clip_shape is not None and tuple(shard.clip_shape) != (3, frames, size, size):
            continue
        entry = next((e for e in index.get("shards", []) if e.get("name") == name), {})
        ident = str(entry.get("sha256") or shard.url)
        for key in shard.keys:
            parsed = synth.parse_key(key)
            if parsed is not None and parsed[0] == seed:
                out[key] = (seed, parsed[1], size, frames, ident)
    return out


def _render_oracles(params: list, like: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """({prefix: (n, C, T, H, W) clips in [-1, 1] like ``like``} for ``ORACLES``, (n, 2) wind in
    pixels per frame) for synthetic clips given as (seed, index, size, frames)."""
    from data_tools import synth

    videos: dict[str, list] = {prefix: [] for prefix in ORACLES}
    winds = []
    for seed, index, size, frames, *_ in params:
        p = synth.clip_params(seed, index, size, frames)
        winds.append(p["wind"])
        for prefix, (variant, _) in ORACLES.items():
            videos[prefix].append(synth.render_clip(p, size, frames, **synth.VARIANTS[variant]))
    clips = {prefix: torch.from_numpy(np.stack(v)).permute(0, 4, 1, 2, 3).to(like.device, like.dtype)
             .div(127.5).sub(1.0) for prefix, v in videos.items()}
    return clips, torch.tensor(winds, dtype=torch.float64)


class OracleCache:
    """The oracles' values of synthetic clips depend on the data alone: each clip is rendered and
    scored once per process and reused at every later validation (least recently used first out
    beyond ``limit`` clips). Per clip and oracle one float64 row: mse, psnr, ssim, their per-frame
    values, the displacement of every frame (nan when not measured) and the frame change; then
    the wind (px per frame)."""

    def __init__(self, limit: int = 8192):
        self.limit = limit
        self.entries: "OrderedDict[tuple, tuple[np.ndarray, bool]]" = OrderedDict()

    def values(self, keys: list[str], clips: list[tuple], real: Tensor, measure_motion: bool
               ) -> tuple[dict[str, dict[str, Tensor]], Tensor]:
        """({prefix: clip_metrics' dict (CPU float64), plus "displacement" (n, T, 2) and
        "frame_change" (n,) with ``measure_motion``}, wind (n, 2)) for the synthetic clips ``keys``
        (``synthetic_clips``' values ``clips``) whose stored clips are ``real``."""
        t = real.shape[2]
        width = len(metrics.METRICS) * (1 + t) + 2 * t + 1
        ids = [(info[4], key, t) for key, info in zip(keys, clips)]
        need = [i for i, c in enumerate(ids) if c not in self.entries or (measure_motion and not self.entries[c][1])]
        if need:
            rendered, wind = _render_oracles([clips[i] for i in need], real)
            stored = real[need]
            rows = np.full((len(need), len(ORACLES) * width + 2), np.nan)
            rows[:, -2:] = wind.numpy()
            for j, (prefix, oracle) in enumerate(rendered.items()):
                m = metrics.clip_metrics(oracle, stored)
                block = rows[:, j * width : (j + 1) * width]
                for i, name in enumerate(metrics.METRICS):
                    block[:, i] = m[name].double().cpu().numpy()
                    first = len(metrics.METRICS) + i * t
                    block[:, first : first + t] = m[f"{name}_per_frame"].double().cpu().numpy()
                if measure_motion:
                    at = len(metrics.METRICS) * (1 + t)
                    d = motion.displacement(oracle, stored[:, :, 0])
                    block[:, at : at + 2 * t] = d.cpu().numpy().reshape(-1, 2 * t)
                    block[:, -1] = motion.frame_change(oracle).cpu().numpy()
            for i, row in zip(need, rows):
                self.entries[ids[i]] = (row, measure_motion)
        for c in ids:
            self.entries.move_to_end(c)
        table = np.stack([self.entries[c][0] for c in ids])
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        out: dict[str, dict[str, Tensor]] = {}
        k = len(metrics.METRICS)
        for j, prefix in enumerate(ORACLES):
            block = torch.from_numpy(table[:, j * width : (j + 1) * width].copy())
            values = {name: block[:, i] for i, name in enumerate(metrics.METRICS)}
            values.update({f"{name}_per_frame": block[:, k + i * t : k + (i + 1) * t]
                           for i, name in enumerate(metrics.METRICS)})
            if measure_motion:
                values["displacement"] = block[:, k * (1 + t) : k * (1 + t) + 2 * t].reshape(-1, t, 2)
                values["frame_change"] = block[:, -1]
            out[prefix] = values
        return out, torch.from_numpy(table[:, -2:].copy())


ORACLE_CACHE = OracleCache()


class PerClip:
    """Every scored clip's values, one row per clip and one named column per value (nan where a
    series does not cover the clip: an oracle on a clip that is not synthetic): the series'
    MSE/PSNR/SSIM, and with motion the displacement of every frame (series and truth), the frame
    change and the wind. Gathered over ranks as one float64 tensor padded to ``rows`` rows."""

    def __init__(self, prefixes: tuple[str, ...], frames: int, measure_motion: bool, synth: bool):
        cols = [p + m for p in prefixes for m in metrics.METRICS]
        if measure_motion:
            for p in (*prefixes, "true_"):
                cols += [f"{p}{axis}_{t}" for t in range(frames) for axis in ("dx", "dy")] + [p + "frame_change"]
            if synth:
                cols += ["wind_dx", "wind_dy"]
        self.columns = cols
        self.frames = frames
        self.blocks: list[np.ndarray] = []
        self.keys: list[str] = []

    def batch(self, keys: list[str]) -> dict[str, np.ndarray]:
        """A block of nan rows for the clips ``keys``, as {column: (n,) view} to fill in."""
        block = np.full((len(keys), len(self.columns)), np.nan)
        self.blocks.append(block)
        self.keys += keys
        return {c: block[:, i] for i, c in enumerate(self.columns)}

    def put_displacement(self, row: dict[str, np.ndarray], prefix: str, d: Tensor, index=slice(None)) -> None:
        d = d.cpu().numpy()
        for t in range(self.frames):
            row[f"{prefix}dx_{t}"][index] = d[:, t, 0]
            row[f"{prefix}dy_{t}"][index] = d[:, t, 1]

    def gather(self, rows: int, device, want_keys: bool) -> tuple[np.ndarray, list[str]]:
        """(every rank's rows, rank 0's first, and with ``want_keys`` their keys)."""
        table = np.concatenate(self.blocks) if self.blocks else np.zeros((0, len(self.columns)))
        keys = list(self.keys)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if len(table) > rows:
                raise RuntimeError(f"{len(table)} scored clips on one rank, more than {rows} batches × batch size")
            padded = torch.full((rows, len(self.columns) + 1), float("nan"), dtype=torch.float64)
            padded[: len(table), :-1] = torch.from_numpy(table)
            padded[: len(table), -1] = 1.0
            padded = padded.to(device)
            parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, padded)
            stacked = torch.cat(parts).cpu()
            table = stacked[stacked[:, -1] == 1.0][:, :-1].numpy()
            if want_keys:
                every: list = [None] * dist.get_world_size()
                dist.all_gather_object(every, keys)
                keys = [k for part in every for k in part]
        return table, keys


def _motion_results(table: np.ndarray, columns: list[str], prefixes: tuple[str, ...], frames: int,
                    synth: bool) -> tuple[dict, dict]:
    """(summary keys and curves, per-clip arrays) of the motion measures from PerClip's rows."""
    col = {c: table[:, i] for i, c in enumerate(columns)}
    last = frames - 1

    def disp(prefix: str, t: int) -> np.ndarray:
        return np.stack([col[f"{prefix}dx_{t}"], col[f"{prefix}dy_{t}"]], -1)

    true_last = disp("true_", last)
    summary: dict = {}
    clips: dict = {"true_dx": true_last[:, 0], "true_dy": true_last[:, 1],
                   "true_displacement": np.hypot(true_last[:, 0], true_last[:, 1]),
                   "true_frame_change": col["true_frame_change"]}
    summary["true_displacement_curve"] = [float(np.hypot(*disp("true_", t).T).mean()) if len(table) else math.nan
                                          for t in range(frames)]
    for prefix in prefixes:
        covered = np.isfinite(col[f"{prefix}dx_{last}"])
        pred = disp(prefix, last)
        each = motion.per_clip(pred[covered], true_last[covered], col[prefix + "frame_change"][covered],
                               col["true_frame_change"][covered])
        s = motion.summarize(each)
        if prefix == "":
            summary.update({k: s[k] for k in MOTION_TRUE_KEYS})
        summary.update({prefix + k: s[k] for k in MOTION_SERIES_KEYS})
        summary[prefix + "displacement_curve"] = [
            float(np.hypot(*disp(prefix, t)[covered].T).mean()) if covered.any() else math.nan for t in range(frames)]
        for k in ("pred_dx", "pred_dy", *MOTION_PER_CLIP):
            full = np.full(len(table), np.nan)
            full[covered] = each[k]
            clips[prefix + k] = full
    if synth:
        wind = np.stack([col["wind_dx"], col["wind_dy"]], -1) * last
        known = np.isfinite(wind[:, 0])
        clips["wind_dx"], clips["wind_dy"] = wind[:, 0], wind[:, 1]
        summary["wind_displacement"] = float(np.hypot(*wind[known].T).mean()) if known.any() else math.nan
        summary["true_displacement_error"] = (float(np.hypot(*(true_last[known] - wind[known]).T).mean())
                                              if known.any() else math.nan)
    return summary, clips


@torch.no_grad()
def score(trainer: GANTrainer, loader: ClipLoader, frames: int, device: torch.device | str, *,
          max_batches: int = 0, progress: bool = False, change: Optional[Tensor] = None,
          extremes: Optional[Extremes] = None, measure_motion: bool = True, oracles: bool = True,
          per_clip: bool = False) -> tuple[dict, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Model, copy-frame and (with ``change``, see ``mean_change``) mean-change metrics over every
    clip of ``loader`` (or its first ``max_batches`` batches), summed over every rank when a process
    group is up; also this rank's first (real, predicted) batch, on the CPU.

    Keys: mse, psnr, ssim (means over future frames, then clips), {mse,psnr,ssim}_curve (per frame
    index, frame 0 = the input), count (clips scored), each again with ``baseline_`` (copy-frame)
    and ``mean_change_`` prefixes; on synthetic skies (``synthetic_clips``) and with ``oracles``,
    again with the ``ORACLES`` prefixes (``oracle_drift_``, ``oracle_motion_``, ``oracle_seen_``, ``oracle_exact_``).

    ``measure_motion`` (``ssagan_dist.motion``; docs/metrics.md "Motion"): the displacement of the
    clouds from the input frame to the last, of the truth and of every series, both measured from
    the real input frame: true_displacement, true_frame_change, and per series (with its prefix)
    pred_displacement, direction_agreement, magnitude_ratio, magnitude_ratio_median,
    along_ratio, pred_frame_change, displacement_curve (mean length per frame), and
    true_displacement_curve; on synthetic skies wind_displacement (the recorded wind's) and
    true_displacement_error (measured truth against the wind, the estimator's error).

    ``per_clip``: ``result["per_clip"]``, every clip's values as lists in the order of ``key``
    (sorted): each series' mse/psnr/ssim and motion values (``MOTION_PER_CLIP``, pred_dx,
    pred_dy) with its prefix, true_dx/true_dy/true_displacement/true_frame_change, wind_dx/wind_dy
    (px at the last frame) on synthetic skies; nan where a series does not cover a clip. Under a
    process group the clips' keys are gathered with ``all_gather_object`` for it (only then).
    """
    loader = loader.every_clip()  # pads and masks the last batches: every clip once, on any world size
    synth = synthetic_clips(loader) if oracles else {}
    prefixes = ("", "baseline_") + (("mean_change_",) if change is not None else ()) + (tuple(ORACLES) if synth else ())
    sums = Scores(frames, prefixes)
    rows = PerClip(prefixes, frames, measure_motion, bool(synth))
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
        keys = [k for k, ok in zip(batch["key"], valid.tolist()) if ok]
        row = rows.batch(keys)
        predictions = {"": pred, "baseline_": copy_frame(real)}  # every clip of the batch
        if change is not None:
            predictions["mean_change_"] = with_mean_change(real, change)
        scored = {prefix: metrics.clip_metrics(clips, real) for prefix, clips in predictions.items()}
        known = [i for i, key in enumerate(keys) if key in synth]
        if known:
            oracle_values, wind = ORACLE_CACHE.values([keys[i] for i in known], [synth[keys[i]] for i in known],
                                                      real[known], measure_motion)
            scored.update(oracle_values)
            if measure_motion:
                row["wind_dx"][known], row["wind_dy"][known] = wind[:, 0].numpy(), wind[:, 1].numpy()
        covers = {prefix: (known if prefix in ORACLES else slice(None)) for prefix in scored}
        for prefix, m in scored.items():
            sums.add(prefix, m)
            for name in metrics.METRICS:
                row[prefix + name][covers[prefix]] = m[name].double().cpu().numpy()
        if measure_motion:
            reference = real[:, :, 0]
            rows.put_displacement(row, "true_", motion.displacement(real, reference))
            row["true_frame_change"][:] = motion.frame_change(real).cpu().numpy()
            for prefix, clips in predictions.items():
                rows.put_displacement(row, prefix, motion.displacement(clips, reference))
                row[prefix + "frame_change"][:] = motion.frame_change(clips).cpu().numpy()
            for prefix in ORACLES if known else ():
                rows.put_displacement(row, prefix, scored[prefix]["displacement"], known)
                row[prefix + "frame_change"][known] = scored[prefix]["frame_change"].numpy()
        if extremes is not None:
            extremes.add(scored[""]["psnr"] - scored["baseline_"]["psnr"], keys, real, pred)
        if first is None:
            first = (real.cpu(), pred.cpu())
    flat = sums.sums.flatten().to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat)
    result = sums.means(flat.cpu())
    if measure_motion or per_clip:
        table, keys = rows.gather(total * loader.batch_size, device, per_clip)
        if measure_motion:
            # rows in one order on every world size and batch size: the same sums, the same floats
            canonical = table[np.lexsort(table.T[::-1])] if len(table) else table
            summary, _ = _motion_results(canonical, rows.columns, prefixes, frames, bool(synth))
            result.update(summary)
        if per_clip:
            order = sorted(range(len(keys)), key=keys.__getitem__)
            table = table[order]
            each = {"key": [keys[i] for i in order]}
            scores = {p + m for p in prefixes for m in metrics.METRICS}
            each.update({c: table[:, i].tolist() for i, c in enumerate(rows.columns) if c in scores})
            if measure_motion:
                _, clips = _motion_results(table, rows.columns, prefixes, frames, bool(synth))
                each.update({k: v.tolist() for k, v in clips.items()})
            result["per_clip"] = each
    return result, first


def _train_urls(cfg, train_data: Optional[str]) -> Optional[str]:
    return train_data if train_data is not None else (cfg.data.train_urls or None)


def evaluate(checkpoint: str, data: str, *, batch_size: int = 8, max_batches: int = 0, device: str = "cpu",
             endpoint_url: Optional[str] = None, progress: bool = True, train_data: Optional[str] = None,
             out: Optional[str] = None, extremes: int = 4, pick: str = "latest",
             weights: Optional[str] = None, measure_motion: bool = True, oracles: bool = True,
             per_clip: bool = False) -> dict:
    """Score ``checkpoint`` (``pick``: see ``pick_checkpoint``) on ``data``; ``train_data`` ("" =
    none) gives the mean-change baseline (default: the run's ``data.train_urls``); ``out`` = a
    folder for scores.json and the PNGs; ``weights``: "ema" (G's moving average), "raw" (G as
    trained) or None (the average when the checkpoint keeps one); ``measure_motion``,
    ``oracles``, ``per_clip``: see ``score``."""
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
                          progress=progress, change=change, extremes=keep, measure_motion=measure_motion,
                          oracles=oracles, per_clip=per_clip)
    result.update({"model": cfg.model.name, "flavor": cfg.model.flavor, "step": state["step"], "weights": weights,
                   "output": dict(cfg.model.args).get("output", "direct"),
                   "checkpoint": checkpoint, "data": data, "train_data": train_urls, **picked})
    if out:
        write_report(result, out, keep)
    return result


def series(result: dict) -> dict[str, str]:
    """{prefix: label} of the series present in a result, the model first."""
    others = {**BASELINES, **{p: label for p, (_, label) in ORACLES.items()}}
    return {"": "model", **{p: label for p, label in others.items() if p + "psnr" in result}}


def write_report(result: dict, out: str, keep: Optional[Extremes] = None, title: str = "") -> None:
    """scores.json, per_frame.png, (with ``per_clip``) per_clip.json and (with ``keep``)
    extremes.png + extremes.json in the folder ``out``."""
    from ssagan_dist import visualize  # Pillow/PyAV only when pictures are asked for

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    scalars = {k: v for k, v in result.items() if k != "per_clip"}
    (folder / "scores.json").write_text(json.dumps(scalars, indent=2, sort_keys=True))
    if "per_clip" in result:
        (folder / "per_clip.json").write_text(json.dumps(result["per_clip"]))
    named = series(result)
    panels = {"PSNR (dB)": {label: result[p + "psnr_curve"][1:] for p, label in named.items()},
              "SSIM": {label: result[p + "ssim_curve"][1:] for p, label in named.items()}}
    if "true_displacement_curve" in result:
        panels["cloud displacement from frame 0 (px)"] = {  # the truth last: each series keeps its colour
            **{label: result[p + "displacement_curve"][1:] for p, label in named.items()
               if p + "displacement_curve" in result},
            "truth": result["true_displacement_curve"][1:]}
    visualize.quality_curves_png(
        panels, folder / "per_frame.png",
        title=title or f"{result.get('model', '')} on {Path(str(result.get('data', ''))).name}")
    if keep is not None and keep.worst:
        worst, best = keep.clips()
        picked = worst + best
        real = torch.stack([r for _, _, r, _ in picked])
        pred = torch.stack([p for _, _, _, p in picked])
        strip = visualize.sample_strip(real[:, :, 0], pred, real, max_clips=len(picked), motion=True)
        visualize.save_image(strip, folder / "extremes.png")
        (folder / "extremes.json").write_text(json.dumps(
            {"order": "rows 0..k-1: lowest model-minus-copy-frame PSNR first; then highest first",
             "worst": [{"key": k, "psnr_gain_db": g} for g, k, _, _ in worst],
             "best": [{"key": k, "psnr_gain_db": g} for g, k, _, _ in best]}, indent=2))


def format_table(result: dict) -> str:
    named = series(result)
    lines = [f"{'':>40}{'MSE':>10}{'PSNR (dB)':>12}{'SSIM':>10}{'clips':>8}"]
    for prefix, label in named.items():
        lines.append(f"{label:>40}{result[prefix + 'mse']:>10.5f}{result[prefix + 'psnr']:>12.3f}"
                     f"{result[prefix + 'ssim']:>10.4f}{result[prefix + 'count']:>8d}")
    lines.append("PSNR per future frame (dB):")
    for prefix, label in named.items():
        lines.append(f"{label:>40}  " + " ".join(f"{v:6.2f}" for v in result[prefix + "psnr_curve"][1:]))
    if "true_displacement" in result:
        lines.append("Cloud motion, input frame -> last frame (px; agreement: within 45 deg and >= half the true "
                     "length; ratio: mean length / true mean length; along: signed, along the true direction):")
        lines.append(f"{'':>40}{'displacement':>14}{'agreement':>11}{'ratio':>8}{'median':>8}{'along':>8}"
                     f"{'change':>9}")
        lines.append(f"{'truth':>40}{result['true_displacement']:>14.2f}{'':>11}{'':>8}{'':>8}{'':>8}"
                     f"{result['true_frame_change']:>9.4f}")
        for prefix, label in named.items():
            if prefix + "pred_displacement" in result:
                lines.append(f"{label:>40}{result[prefix + 'pred_displacement']:>14.2f}"
                             f"{result[prefix + 'direction_agreement']:>11.3f}"
                             f"{result[prefix + 'magnitude_ratio']:>8.3f}"
                             f"{result[prefix + 'magnitude_ratio_median']:>8.3f}{result[prefix + 'along_ratio']:>8.3f}"
                             f"{result[prefix + 'pred_frame_change']:>9.4f}")
        if "wind_displacement" in result:
            lines.append(f"recorded wind: {result['wind_displacement']:.2f} px; measured truth vs wind: "
                         f"{result['true_displacement_error']:.2f} px mean error")
    return "\n".join(lines)
