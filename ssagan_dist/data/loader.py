"""ClipLoader: batches of clips from tar shards, equal batch counts on every rank, exact resume.

How the order is made (a function of seed, epoch, world size and batch size only):

1. Number all N clips of the dataset 0..N-1 (shards in the given order, clips in shard order).
2. Per epoch, draw a permutation with ``np.random.default_rng([seed, epoch])``: by default of all
   clips; with ``shuffle_window`` of the shards, then of clips inside windows of that many clips
   of each rank's slice (so a rank reads mostly whole shards of its own); none with shuffle=False.
3. Every rank takes the same number of clips, ``N // (world_size * batch_size) * batch_size``,
   as a contiguous slice of that order (the remainder is dropped), cut into batches. For scoring,
   ``drop_last=False`` (or ``every_clip()``) rounds up instead: the order is padded with copies of
   a real clip, and each batch carries ``"valid"`` (bool (B,)), False on the padding.

A batch is one item of a map-style dataset: the DataLoader hands batch b to one worker and yields
batches in index order, so the sequence does not depend on ``processes``, and resuming at batch
``consumed`` is starting the sampler there. A worker fetches a batch's clips with one ranged read per
run of adjacent clips (``fs.cat_ranges``, concurrent on S3) using the offsets in index.json.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import defaultdict
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssagan_dist import storage, telemetry
from ssagan_dist.config import ReadWhen
from ssagan_dist.data.format import BadSampleError, decode_sample
from ssagan_dist.data.index import Shard, load_shards, resolve_urls

CONFIG_RULES = (
    ReadWhen("data.prefetch", lambda cfg, nets: cfg.data.loader_processes > 0, "it only acts with data.loader_processes >= 1"),
    ReadWhen("data.pin_memory", lambda cfg, nets: cfg.scaling.use_gpu,
             "pinned memory only speeds host-to-GPU copies (scaling.use_gpu=true)"),
)


def pin_memory(data: Any, device: torch.device) -> bool:
    """Whether the loader should pin batches (the ``data`` section's ``pin_memory``): only when
    they go to a GPU (pinning needs one)."""
    return bool(data.pin_memory and device.type == "cuda")

log = logging.getLogger(__name__)


def rank_seed(seed: int, rank: int) -> int:
    """One rank's own seed from the run's ``loop.seed``: its loader's shuffling generator (plus
    the epoch) and, one up, its noise (``checkpointing.CheckpointManager.restore``)."""
    return seed * 1_000_003 + rank


def epoch_order(
    counts: list[int], seed: int, epoch: int, shuffle: bool = True, shuffle_window: int | None = None,
    world_size: int = 1, per_rank: int | None = None,
) -> np.ndarray:
    """Global clip ids in this epoch's order; ranks take consecutive slices of ``per_rank`` clips."""
    n = sum(counts)
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    if shuffle_window is None:
        return rng.permutation(n).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    order = np.concatenate([np.arange(starts[s], starts[s] + counts[s]) for s in rng.permutation(len(counts))])
    per_rank = per_rank or n
    for rank in range(world_size):  # windows inside each rank's slice, so shard locality survives
        for lo in range(rank * per_rank, min((rank + 1) * per_rank, n), shuffle_window):
            hi = min(lo + shuffle_window, (rank + 1) * per_rank, n)
            order[lo:hi] = rng.permutation(order[lo:hi])
    return order.astype(np.int64)


class _Batches(Dataset):
    """Map-style dataset whose item b is batch b of one rank's epoch (decoded, as tensors)."""

    def __init__(self, shards: list[Shard], batches: np.ndarray, endpoint_url: str | None, skip_bad: bool,
                 clip_shape: tuple[int, int, int, int] | None, labels: bool, padded: bool = False):
        self.urls = [s.url for s in shards]
        self.paths = [storage.filesystem(u, endpoint_url)[1] for u in self.urls]
        self.keys = [s.keys for s in shards]
        self.offsets = [np.asarray(s.offsets, dtype=np.int64) for s in shards]
        self.first_id = np.concatenate([[0], np.cumsum([len(s) for s in shards])]).astype(np.int64)
        self.batches = batches
        self.endpoint_url = endpoint_url
        self.skip_bad = skip_bad
        self.clip_shape = clip_shape
        self.labels = labels
        self.padded = padded  # ids < 0 are padding: decoded as a real clip, marked invalid
        self._fs: dict[tuple[int, bool], Any] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def _filesystem(self, url: str):
        # one filesystem per process and kind: s3fs clients must not cross a fork
        slot = (os.getpid(), storage.is_s3(url))
        if slot not in self._fs:
            self._fs[slot] = storage.filesystem(url, self.endpoint_url)[0]
        return self._fs[slot]

    def _fetch(self, ids: np.ndarray) -> dict[int, tuple[int, int, bytes]]:
        """Raw bytes of each clip id: {id: (shard, index in shard, bytes)}, one read per adjacent run."""
        shard_of = np.searchsorted(self.first_id, ids, side="right") - 1
        local = ids - self.first_id[shard_of]
        by_shard: dict[int, list[int]] = defaultdict(list)
        for s, i in zip(shard_of.tolist(), local.tolist()):
            by_shard[s].append(i)
        runs = []  # (shard, first index, last index)
        for s, idx in by_shard.items():
            idx.sort()
            lo = prev = idx[0]
            for i in idx[1:]:
                if i != prev + 1:
                    runs.append((s, lo, prev))
                    lo = i
                prev = i
            runs.append((s, lo, prev))
        out: dict[int, tuple[int, int, bytes]] = {}
        by_fs: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for run in runs:
            by_fs[id(self._filesystem(self.urls[run[0]]))].append(run)
        for fs_runs in by_fs.values():
            fs = self._filesystem(self.urls[fs_runs[0][0]])
            paths = [self.paths[s] for s, _, _ in fs_runs]
            starts = [int(self.offsets[s][lo]) for s, lo, _ in fs_runs]
            ends = [int(self.offsets[s][hi + 1]) for s, _, hi in fs_runs]
            try:
                blobs = fs.cat_ranges(paths, starts, ends, on_error="return")
                for i, blob in enumerate(blobs):  # re-read only the ranges that failed, each retried
                    if not isinstance(blob, BaseException) and len(blob) != ends[i] - starts[i] \
                            and storage.is_s3(self.urls[fs_runs[i][0]]):  # a cut connection
                        blob = storage.ShortRead(f"{len(blob)} of {ends[i] - starts[i]} bytes")
                    if isinstance(blob, BaseException):
                        if not storage.is_transient(blob):
                            raise blob
                        telemetry.count_s3_retry("read_range")
                        blobs[i] = storage.read_range(fs, paths[i], self.urls[fs_runs[i][0]], starts[i], ends[i],
                                                      self.endpoint_url)
            except Exception as e:
                shards = sorted({self.urls[s] for s, _, _ in fs_runs})
                raise OSError(f"cannot read clips from shard(s) {', '.join(shards)}: {e}") from e
            for (s, lo, hi), start, blob in zip(fs_runs, starts, blobs):
                for i in range(lo, hi + 1):
                    a, b = self.offsets[s][i] - start, self.offsets[s][i + 1] - start
                    out[int(self.first_id[s] + i)] = (s, i, blob[a:b])
        return out

    def _decode(self, shard: int, index: int, blob: bytes) -> tuple[np.ndarray, int | None]:
        url, key = self.urls[shard], self.keys[shard][index]
        try:
            return decode_sample(blob, key, self.clip_shape, self.labels)
        except Exception as e:
            raise BadSampleError(f"shard {url}: sample {key!r}: {e}") from None

    def __getitem__(self, b: int) -> dict[str, Any]:
        ids = self.batches[b]
        valid = ids >= 0
        if self.padded:
            ids = np.where(valid, ids, ids[valid][0] if valid.any() else 0)
        raw = self._fetch(np.unique(ids) if self.padded else ids)
        clips, labels, keys, skipped = [], [], [], []
        for gid in ids.tolist():
            s, i, blob = raw[gid]
            try:
                clip, label = self._decode(s, i, blob)
            except BadSampleError as e:
                if not self.skip_bad:
                    raise
                skipped.append(str(e))
                continue
            if clips and clip.shape != clips[0].shape:
                raise BadSampleError(
                    f"shard {self.urls[s]}: sample {self.keys[s][i]!r}: shape {clip.shape} differs from "
                    f"the batch's {clips[0].shape} (mixed datasets?)"
                )
            clips.append(clip)
            labels.append(label)
            keys.append(self.keys[s][i])
        if not clips:
            raise BadSampleError(f"batch {b}: every clip is bad: {skipped}")
        frames = torch.from_numpy(np.stack(clips))  # (B, T, H, W, C) uint8
        video = torch.empty(frames.shape[0], frames.shape[4], *frames.shape[1:4], dtype=torch.float32)
        video.copy_(frames.permute(0, 4, 1, 2, 3)).div_(127.5).sub_(1.0)
        batch: dict[str, Any] = {"video": video, "key": keys, "_skipped": skipped}
        if self.padded:
            if skipped:
                raise BadSampleError(f"batch {b}: bad clips while scoring every clip: {skipped}")
            batch["valid"] = torch.from_numpy(valid)
        if self.labels:
            batch["label"] = torch.tensor(labels, dtype=torch.int64)
        return batch


class ClipLoader:
    """Batches {"video": float32 (B, C, T, H, W) in [-1, 1], "label": int64 (B,) if labelled, "key": [str]}.

    ``len(loader)`` is the same on every rank. Iterating runs the rest of the current epoch and then
    moves to the next one; ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly.

    ``elastic=True`` (for a worker group that may resize): global batch k is clips
    ``order[k*G:(k+1)*G]`` with ``G = world_size * batch_size``, rank r taking its r-th
    ``batch_size`` of them, so what an epoch has consumed is a prefix of its order. A position saved
    by one world size then loads into another with the same global batch ``G``: the epoch's
    remaining clips are re-split over the new ranks, none seen twice, none skipped.
    """

    def __init__(
        self,
        urls: str | list[str],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        processes: int = 0,
        endpoint_url: str | None = None,
        skip_bad: bool = False,
        prefetch: int = 2,
        shuffle_window: int | None = None,
        pin_memory: bool = False,
        drop_last: bool = True,
        elastic: bool = False,
    ):
        if elastic and (shuffle_window is not None or not drop_last):
            raise ValueError("elastic=True needs shuffle_window=None and drop_last=True")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(urls, str):
            urls = resolve_urls(urls, endpoint_url)
        else:
            urls = [u for spec in urls for u in resolve_urls(spec, endpoint_url)]
        self.shards = load_shards(urls, endpoint_url)
        self.counts = [len(s) for s in self.shards]
        self.num_clips = sum(self.counts)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.shuffle, self.shuffle_window = shuffle, shuffle_window
        self.processes, self.prefetch, self.pin_memory = processes, prefetch, pin_memory
        self.endpoint_url, self.skip_bad = endpoint_url, skip_bad
        self.drop_last, self.elastic = drop_last, elastic
        self.num_batches = self._count_batches()
        if self.num_batches == 0:
            raise ValueError(
                f"{self.num_clips} clips in {len(urls)} shard(s) cannot make one batch of {batch_size} "
                f"on each of {world_size} rank(s) (needs >= {world_size * batch_size} clips)"
            )
        shapes = {s.clip_shape for s in self.shards if s.clip_shape is not None}
        if len(shapes) > 1:
            raise ValueError(f"shards have different clip shapes {sorted(shapes)}: {urls[0]} ...")
        self.clip_shape = shapes.pop() if shapes else None
        label_flags = {s.labels for s in self.shards}
        if len(label_flags) > 1:
            raise ValueError("some shards have labels and some do not; load them separately")
        self.labels = label_flags.pop()
        self.classes = next((s.meta.get("classes") for s in self.shards if s.meta.get("classes")), None)
        self.epoch = 0
        self.consumed = 0  # batches yielded so far in this epoch
        self.skipped = 0  # clips skipped as bad (skip_bad=True), in total

    def _count_batches(self) -> int:
        per_step = self.world_size * self.batch_size
        return self.num_clips // per_step if self.drop_last else math.ceil(self.num_clips / per_step)

    def every_clip(self) -> "ClipLoader":
        """This loader with ``drop_last=False``, at the start of epoch 0: every clip exactly once
        across the ranks, in batches with a ``"valid"`` mask (for scoring)."""
        view = copy.copy(self)
        view.drop_last, view.elastic = False, False
        view.num_batches = view._count_batches()
        view.epoch, view.consumed = 0, 0
        return view

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; changing it restarts at its first batch."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def rank_batches(self, epoch: int) -> np.ndarray:
        """Global clip ids of this rank's batches in ``epoch``, shape (len(self), batch_size)."""
        per_rank = self.num_batches * self.batch_size
        order = epoch_order(self.counts, self.seed, epoch, self.shuffle, self.shuffle_window,
                            self.world_size, per_rank)
        if self.elastic:
            steps = order[: self.num_batches * self.world_size * self.batch_size]
            return steps.reshape(self.num_batches, self.world_size, self.batch_size)[:, self.rank]
        if not self.drop_last:  # -1 = padding, see _Batches
            order = np.concatenate([order, np.full(self.world_size * per_rank - len(order), -1, np.int64)])
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return mine.reshape(self.num_batches, self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = _Batches(self.shards, self.rank_batches(self.epoch), self.endpoint_url, self.skip_bad,
                           self.clip_shape, self.labels, padded=not self.drop_last)
        loader = DataLoader(
            dataset,
            batch_size=None,
            sampler=range(self.consumed, self.num_batches),
            num_workers=self.processes,
            prefetch_factor=self.prefetch if self.processes > 0 else None,
            pin_memory=self.pin_memory,
            # Its own generator: creating the iterator (at start, each epoch, on resume) must not
            # draw from the global torch RNG that the trainers' noise comes from.
            generator=torch.Generator().manual_seed(rank_seed(self.seed, self.rank) + self.epoch * 1009),
        )
        for batch in loader:
            for reason in batch.pop("_skipped"):
                self.skipped += 1
                log.warning("skipped bad clip (%d so far): %s", self.skipped, reason)
            self.consumed += 1
            yield batch
        self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "num_clips": self.num_clips,
            "shuffle": self.shuffle,
            "shuffle_window": self.shuffle_window,
            "skipped": self.skipped,
            "elastic": self.elastic,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = ["seed", "world_size", "batch_size", "num_clips", "shuffle", "shuffle_window"]
        if self.elastic and state.get("elastic"):  # another world size, the same global batch
            names = [n for n in names if n not in ("world_size", "batch_size")]
            saved, mine = state["world_size"] * state["batch_size"], self.world_size * self.batch_size
            if saved != mine:
                raise ValueError(f"loader state has a global batch of {saved} clips, this loader {mine}: "
                                 "an elastic resize must keep world_size x batch_size")
        for name in names:
            if name in state and state[name] != getattr(self, name):
                raise ValueError(
                    f"loader state has {name}={state[name]!r} but this loader has {getattr(self, name)!r}: "
                    "the saved position would not mean the same clips"
                )
        if not 0 <= state["consumed"] <= self.num_batches:
            raise ValueError(f"loader state consumed={state['consumed']} is outside [0, {self.num_batches}]")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.skipped = int(state.get("skipped", 0))
