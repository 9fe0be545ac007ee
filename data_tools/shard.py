"""Turn a video dataset on disk into clip shards (+ index.json) in a folder or on S3.

    python -m data_tools.shard --source PATH --layout frames|videos|stacked --out URL \
        [--size 128 --frames 32 --crop squash|center --format jpg|npy --quality 95] \
        [--split train | --test-fraction 0.1 --split-seed 0] [--shard-size-mb 256] [--workers N] \
        [--stride S] [--frame-step K | --timelapse-change D]

Layouts:
  frames   Sky Timelapse trees ``<video_id>/<short_id>/*.jpg``: non-overlapping T-frame clips of each
           short video in frame-number order; the remainder of each short video is dropped.
  videos   video files (mp4, avi, mov, mkv, webm, ...) decoded with PyAV; clips as above; the class
           label is the parent folder's name when videos sit in class folders (UCF101).
  stacked  VGAN "tiny videos": one image per clip with its frames stacked vertically
           (square frames unless --frame-height says otherwise).

Clip sampling (frames and videos layouts): every ``--frame-step`` K-th source frame is kept
(K = 1: all), and a clip starts every ``--stride`` S kept frames (default S = T: non-overlapping
clips; S < T overlaps them). ``--timelapse-change D`` picks K per video instead: the smallest step
whose mean absolute change between kept frames (pixels in [0, 1], at the output size) reaches D,
so ordinary footage moves per frame about as much as a time-lapse does.

Splits: a source whose top-level folders are named like train/test/val (``sky_train``,
``sky_test`` ...) keeps that split and writes ``OUT/<split>/``; ``--test-fraction F`` holds out a
fraction of the groups (long videos for ``frames``, files otherwise) so no group is on both sides,
writing ``OUT/train/`` and ``OUT/test/`` (``--test-groups`` names them instead); ``--val-groups``
then moves named training-side groups to ``OUT/val/``, a validation split by video; otherwise
everything goes to ``OUT`` as split ``--split``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from data_tools.common import MiB, Timer, clip_key, load_frame, progress, resize_frame, summary
from ssagan_dist import cli, storage
from ssagan_dist.data.format import encode_clip
from ssagan_dist.data.writer import ShardWriter, discard_unfinished

log = logging.getLogger("data_tools.shard")

IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp"}
_SPLIT_DIR = re.compile(r"(?:^|[_-])(train|test|val|valid|validation)$", re.IGNORECASE)


@dataclass(frozen=True)
class Options:
    size: int = 128
    frames: int = 32
    crop: str = "squash"
    frame_format: str = "jpg"
    quality: int = 95
    frame_height: int | None = None  # stacked layout: pixels per frame (default: the image width)
    stride: int | None = None  # kept frames between clip starts (default: frames, non-overlapping)
    frame_step: int = 1  # keep every frame_step-th source frame
    timelapse_change: float | None = None  # pick frame_step per source to reach this mean |change|


def frame_change(frames: list[np.ndarray], step: int) -> float:
    """Mean absolute difference (pixels in [0, 1]) between frames ``step`` apart."""
    a = np.stack(frames[:-step]).astype(np.float32)
    b = np.stack(frames[step:]).astype(np.float32)
    return float(np.abs(a - b).mean() / 255)


def timelapse_step(frames: list[np.ndarray], change: float, clip_frames: int) -> int:
    """The smallest step whose frame-to-frame change reaches ``change``; at most the step that
    still leaves one clip of ``clip_frames`` kept frames."""
    longest = max(1, (len(frames) - 1) // max(1, clip_frames - 1))
    for step in range(1, longest + 1):
        if frame_change(frames, step) >= change:
            return step
    return longest


def sampled_clips(frames: list, opts: Options, step: int) -> Iterator[tuple[int, list]]:
    """(first source index, T items) of every clip: every ``step``-th item, a clip every stride."""
    kept = frames[::step]
    t, stride = opts.frames, opts.stride or opts.frames
    for start in range(0, len(kept) - t + 1, stride):
        yield start * step, kept[start : start + t]


def _used_frames(n: int, opts: Options, step: int) -> int:
    """Source frames that land in at least one clip."""
    kept = (n + step - 1) // step
    t, stride = opts.frames, opts.stride or opts.frames
    if kept < t:
        return 0
    clips = (kept - t) // stride + 1
    return min(kept, (clips - 1) * stride + t)


@dataclass
class Job:
    """One unit of decoding work: a short video's frame folder, a video file or a stacked image."""

    layout: str
    path: str  # absolute local path
    rel: str  # path relative to the source root (names keys and metadata)
    group: str  # clips of one group stay on one side of a train/test split
    files: list[str] = field(default_factory=list)  # frames layout: frame files in order
    label: int | None = None


@dataclass
class Result:
    clips: list[tuple[str, list[tuple[str, bytes]], float | None]]  # key, members, fps
    frames: int = 0
    dropped: int = 0
    error: str | None = None


def frame_number(name: str) -> int:
    """The frame index in a file name: the last run of digits ('vid_frames_12.jpg' -> 12)."""
    digits = re.findall(r"\d+", Path(name).stem)
    if not digits:
        raise ValueError(f"frame file {name!r} has no frame number")
    return int(digits[-1])


def _walk(root: Path, exts: set[str]) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in exts and not name.startswith("."):
                yield Path(folder) / name


def list_jobs(root: Path, layout: str, base: Path | None = None) -> list[Job]:
    """Work units under ``root``; ``rel`` paths are relative to ``base`` (default root)."""
    base = base or root
    if layout == "frames":
        folders: dict[Path, list[str]] = {}
        for f in _walk(root, IMAGE_EXTS):
            folders.setdefault(f.parent, []).append(f.name)
        jobs = []
        for folder, names in sorted(folders.items()):
            rel = folder.relative_to(root)
            if len(rel.parts) < 1:
                raise ValueError(f"{folder}: frames must sit in <video_id>/<short_id>/ folders under {root}")
            names.sort(key=lambda n: (frame_number(n), n))
            jobs.append(Job(layout, str(folder), str(folder.relative_to(base)), rel.parts[0],
                            [str(folder / n) for n in names]))
        return jobs
    exts = {"videos": VIDEO_EXTS, "stacked": IMAGE_EXTS}.get(layout)
    if exts is None:
        raise ValueError(f"layout must be frames, videos or stacked, got {layout!r}")
    return [Job(layout, str(f), str(f.relative_to(base)), str(f.relative_to(root))) for f in _walk(root, exts)]


def _clip(job: Job, opts: Options, frames: list[np.ndarray], first: int, fps: float | None,
          orig: tuple[int, int], **extra: Any) -> tuple[str, list[tuple[str, bytes]], float | None]:
    meta = {"source": job.rel, "first_frame": first, "fps": fps, "label": job.label,
            "orig_size": list(orig), "frames": len(frames), **extra}
    members = encode_clip(np.stack(frames), opts.frame_format, opts.quality, meta, job.label)
    return clip_key(job.rel, first), members, fps


def _frames_job(job: Job, opts: Options) -> Result:
    if opts.timelapse_change is not None:
        step = timelapse_step([load_frame(f, opts.size, opts.crop)[0] for f in job.files], opts.timelapse_change,
                              opts.frames)
    else:
        step = opts.frame_step
    n = len(job.files)
    out = Result([], frames=n, dropped=n - _used_frames(n, opts, step))
    for first, files in sampled_clips(job.files, opts, step):
        decoded = [load_frame(f, opts.size, opts.crop) for f in files]
        frames = [d[0] for d in decoded]
        out.clips.append(_clip(job, opts, frames, first, None, decoded[0][1],
                               first_file=os.path.basename(files[0]), frame_step=step))
    return out


def _decode_video(path: str, opts: Options) -> tuple[list[np.ndarray], float | None, tuple[int, int]]:
    import av

    frames: list[np.ndarray] = []
    orig = (0, 0)
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else None
        for frame in container.decode(stream):
            img = frame.to_image()
            orig = img.size
            frames.append(resize_frame(img, opts.size, opts.crop))
    return frames, fps, orig


def _videos_job(job: Job, opts: Options) -> Result:
    frames, fps, orig = _decode_video(job.path, opts)  # at the output size: small
    if opts.timelapse_change is not None:
        step = timelapse_step(frames, opts.timelapse_change, opts.frames)
    else:
        step = opts.frame_step
    out = Result([], frames=len(frames), dropped=len(frames) - _used_frames(len(frames), opts, step))
    for first, clip in sampled_clips(frames, opts, step):
        out.clips.append(_clip(job, opts, clip, first, fps / step if fps else None, orig, frame_step=step))
    return out


def _stacked_job(job: Job, opts: Options) -> Result:
    with Image.open(job.path) as img:
        img = img.convert("RGB")
        w, h = img.size
        fh = opts.frame_height or w
        n = h // fh
        if n == 0:
            raise ValueError(f"image {w}x{h} is shorter than one {fh}-pixel frame")
        frames = [resize_frame(img.crop((0, i * fh, w, (i + 1) * fh)), opts.size, opts.crop) for i in range(n)]
    t = opts.frames
    out = Result([], frames=n, dropped=n % t)
    for first in range(0, n - t + 1, t):
        out.clips.append(_clip(job, opts, frames[first : first + t], first, None, (w, fh)))
    return out


_JOBS = {"frames": _frames_job, "videos": _videos_job, "stacked": _stacked_job}


def process(job: Job, opts: Options) -> Result:
    """Decode one job into encoded clips; errors come back as text naming the file."""
    try:
        return _JOBS[job.layout](job, opts)
    except Exception as e:  # one bad source must name itself, not kill the pool silently
        return Result([], error=f"{job.path}: {type(e).__name__}: {e}")


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """{split: folder} when the source's top level is already split into train/test/val folders."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir()]
    if not dirs or len(dirs) != len(entries):
        return None
    names = {p: _SPLIT_DIR.search(p.name) for p in dirs}
    if not all(names.values()):
        return None
    canon = {"valid": "val", "validation": "val"}
    splits = {canon.get(m.group(1).lower(), m.group(1).lower()): p for p, m in names.items()}
    return splits if len(splits) == len(dirs) else None


def _assign_labels(jobs: list[Job], mode: str) -> list[str] | None:
    """Class names (sorted parent-folder names) and job.label, for mode 'parent' or 'auto'."""
    if mode == "none":
        return None
    parents = [Path(j.group).parent.name for j in jobs]
    if mode == "auto" and (jobs[0].layout != "videos" or not all(parents)):
        return None
    if not all(parents):
        bad = next(j.path for j, p in zip(jobs, parents) if not p)
        raise ValueError(f"--labels parent: {bad} does not sit in a class folder")
    classes = sorted(set(parents))
    for j, p in zip(jobs, parents):
        j.label = classes.index(p)
    return classes


def shard(
    source: str,
    layout: str,
    out: str,
    *,
    size: int = 128,
    frames: int = 32,
    crop: str = "squash",
    frame_format: str = "jpg",
    quality: int = 95,
    split: str = "train",
    test_fraction: float = 0.0,
    split_seed: int = 0,
    test_groups: list[str] | None = None,
    val_groups: list[str] | None = None,
    shard_size: int = 256 * MiB,
    shard_clips: int | None = None,
    workers: int | None = None,
    endpoint_url: str | None = None,
    overwrite: bool = False,
    labels: str = "auto",
    frame_height: int | None = None,
    stride: int | None = None,
    frame_step: int = 1,
    timelapse_change: float | None = None,
    fps: float | None = None,
    skip_bad: bool = False,
    progress_bar: bool = True,
) -> dict[str, dict[str, Any]]:
    """Shard ``source`` into ``out``; returns {split: index}. See the module docstring."""
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--source {source}: not a folder")
    if stride is not None and stride < 1:
        raise ValueError(f"--stride {stride}: must be >= 1")
    if frame_step < 1:
        raise ValueError(f"--frame-step {frame_step}: must be >= 1")
    if timelapse_change is not None and not 0 < timelapse_change < 1:
        raise ValueError(f"--timelapse-change {timelapse_change}: must be in (0, 1) (mean |change| of pixels in [0, 1])")
    if layout == "stacked" and (stride or frame_step != 1 or timelapse_change is not None):
        raise ValueError("--stride, --frame-step and --timelapse-change apply to the frames and videos layouts")
    opts = Options(size, frames, crop, frame_format, quality, frame_height, stride, frame_step, timelapse_change)
    presplit = _split_dirs(root)
    if presplit:
        plan = {name: list_jobs(folder, layout, root) for name, folder in sorted(presplit.items())}
    else:
        plan = {split: list_jobs(root, layout)}
    all_jobs = [j for jobs in plan.values() for j in jobs]
    if not all_jobs:
        raise FileNotFoundError(f"--source {source}: no {layout} inputs found")
    classes = _assign_labels(all_jobs, labels)
    if val_groups and not (test_groups or test_fraction > 0):
        raise ValueError("--val-groups: needs --test-groups or --test-fraction (validation is a part of the training side)")
    if test_groups or val_groups:
        if presplit:
            raise ValueError("--test-groups/--val-groups: the source is already split into folders")
        groups = {j.group for j in all_jobs}
        for option, named in (("--test-groups", test_groups), ("--val-groups", val_groups)):
            unknown = sorted(set(named or ()) - groups)
            if unknown:
                raise ValueError(f"{option} {unknown}: not among the source's groups {sorted(groups)}")
    if test_groups:
        test = set(test_groups)
    elif not presplit and test_fraction > 0:
        ordered = sorted({j.group for j in all_jobs})
        n_test = max(1, round(test_fraction * len(ordered)))
        if n_test >= len(ordered):
            raise ValueError(f"--test-fraction {test_fraction} leaves no training data ({len(ordered)} groups)")
        test = set(np.random.default_rng(split_seed).permutation(ordered)[:n_test].tolist())
    else:
        test = set()
    if test:
        val = set(val_groups or ())
        if val & test:
            raise ValueError(f"--val-groups {sorted(val & test)}: also held out as test")
        if test | val >= {j.group for j in all_jobs}:
            raise ValueError("--test-groups/--val-groups hold out every group: no training data")
        plan = {"train": [j for j in all_jobs if j.group not in test | val],
                **({"val": [j for j in all_jobs if j.group in val]} if val else {}),
                "test": [j for j in all_jobs if j.group in test]}
    multi = len(plan) > 1

    indexes: dict[str, dict[str, Any]] = {}
    workers = (os.cpu_count() or 1) if workers is None else workers
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for name, jobs in plan.items():
            url = storage.join(out, name) if multi else out
            total = (sum(len(j.files) // frames for j in jobs)
                     if layout == "frames" and stride is None and frame_step == 1 and timelapse_change is None else None)
            writer = ShardWriter(url, prefix=name, shard_bytes=shard_size, shard_clips=shard_clips,
                                 endpoint_url=endpoint_url, overwrite=overwrite)
            stats: Counter = Counter()
            fps_seen: set[float | None] = set()
            bad: list[str] = []
            work = partial(process, opts=opts)
            results = pool.imap(work, jobs, chunksize=1) if pool else map(work, jobs)
            with Timer() as timer, progress(total, f"shard {name}", progress_bar) as bar:
                for result in results:
                    if result.error:
                        if not skip_bad:
                            raise RuntimeError(f"cannot decode {result.error} (pass --skip-bad to skip such sources)")
                        bad.append(result.error)
                        log.warning("skipped %s", result.error)
                        continue
                    for key, members, clip_fps in result.clips:
                        writer.add(key, members)
                        fps_seen.add(clip_fps)
                    stats.update(frames=result.frames, dropped=result.dropped, sources=1)
                    bar.update(len(result.clips))
                    bar.set_postfix(sources=stats["sources"], refresh=False)
                common_fps = fps if fps is not None else (fps_seen.pop() if len(fps_seen) == 1 else None)
                index = writer.close(
                    clip_shape=[3, frames, size, size], frame_format=frame_format,
                    jpeg_quality=quality if frame_format == "jpg" else None, fps=common_fps,
                    labels=classes is not None, classes=classes,
                    source={
                        "tool": "data_tools.shard", "layout": layout, "path": str(root), "size": size,
                        "frames": frames, "crop": crop, "sources": stats["sources"],
                        "stride": stride or frames, "frame_step": "timelapse" if timelapse_change else frame_step,
                        "timelapse_change": timelapse_change,
                        "source_frames": stats["frames"], "dropped_frames": stats["dropped"],
                        "skipped_sources": bad, "split_by": "folders" if presplit else ("groups" if multi else None),
                        "test_fraction": test_fraction if multi and not presplit and not test_groups else None,
                        "split_seed": split_seed,
                        "groups": sorted({j.group for j in jobs}) if multi else None,
                    },
                )
            indexes[name] = index
            if progress_bar:
                print(summary(index, url, timer.seconds)
                      + f"; {stats['sources']} sources, {stats['dropped']} remainder frames dropped"
                      + (f", {len(bad)} bad sources skipped" if bad else ""), file=sys.stderr)
    finally:
        if pool:
            pool.terminate()
    return indexes


@cli.command
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_tools.shard", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="local folder holding the dataset")
    ap.add_argument("--layout", required=True, choices=["frames", "videos", "stacked"])
    ap.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    ap.add_argument("--size", type=int, default=128, help="output frame side (default 128)")
    ap.add_argument("--frames", type=int, default=32, help="frames per clip T (default 32)")
    ap.add_argument("--crop", choices=["squash", "center"], default="squash",
                    help="squash the whole frame to a square (papers) or centre-crop first")
    ap.add_argument("--format", choices=["jpg", "npy"], default="jpg", help="frames as JPEG or raw uint8 .npy")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    ap.add_argument("--split", default="train", help="split name when the source is not split (default train)")
    ap.add_argument("--test-fraction", type=float, default=0.0, help="hold out this fraction of groups as test")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--test-groups", nargs="+", default=None, metavar="GROUP",
                    help="hold out these groups (video files relative to --source, or long-video folders)")
    ap.add_argument("--val-groups", nargs="+", default=None, metavar="GROUP",
                    help="with --test-groups/--test-fraction: these training-side groups go to OUT/val "
                         "(a validation split by video, for model selection; never the test groups)")
    ap.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard size (default 256 MiB)")
    ap.add_argument("--shard-clips", type=int, default=None, help="at most this many clips per shard")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    ap.add_argument("--labels", choices=["auto", "parent", "none"], default="auto",
                    help="class label from the parent folder (auto: videos in class folders)")
    ap.add_argument("--frame-height", type=int, default=None, help="stacked layout: pixels per frame")
    ap.add_argument("--stride", type=int, default=None,
                    help="kept frames between clip starts (default: --frames, non-overlapping clips)")
    ap.add_argument("--frame-step", type=int, default=1, help="keep every K-th source frame (default 1)")
    ap.add_argument("--timelapse-change", type=float, default=None, metavar="D",
                    help="per video, the smallest frame step whose mean |change| per kept frame reaches D "
                         "(pixels in [0, 1]; e.g. 0.03): time-lapse-like motion from ordinary footage")
    ap.add_argument("--fps", type=float, default=None, help="frame rate to record when the source has none")
    ap.add_argument("--skip-bad", action="store_true", help="skip undecodable sources (counted) instead of failing")
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    ap.add_argument("--overwrite", action="store_true", help="replace a dataset already at the output")
    ap.add_argument("--no-progress", action="store_true")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        shard(args.source, args.layout, args.out, size=args.size, frames=args.frames, crop=args.crop,
              frame_format=args.format, quality=args.quality, split=args.split, test_fraction=args.test_fraction,
              split_seed=args.split_seed, test_groups=args.test_groups, val_groups=args.val_groups,
              shard_size=int(args.shard_size_mb * MiB), shard_clips=args.shard_clips,
              workers=args.workers, endpoint_url=args.endpoint_url, overwrite=args.overwrite, labels=args.labels,
              frame_height=args.frame_height, stride=args.stride, frame_step=args.frame_step,
              timelapse_change=args.timelapse_change, fps=args.fps, skip_bad=args.skip_bad, progress_bar=not args.no_progress)
    except RuntimeError as e:  # an undecodable source (named in the message)
        raise ValueError(str(e)) from e
    finally:
        discard_unfinished()  # a failed split leaves nothing in the output folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
