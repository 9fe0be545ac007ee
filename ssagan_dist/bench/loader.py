"""ClipLoader throughput (clips/s) from local shards and from S3, vs a frame-folder JPEG loader.

    python -m ssagan_dist.bench.loader [--clips 96 --size 128 --frames 32] [--json] [--no-docs]

The same synthetic sky clips (``data_tools.synth``) are read three ways:

- ``ClipLoader`` from local shards (JPEG frames, one ranged read per run of clips);
- ``ClipLoader`` from the same shards on S3, served over HTTP on loopback by a moto server
  running as a separate process (its CPU shares the machine's cores with the loader);
- a frame-folder tree ``<video>/<short>/<video>_frames_<n>.jpg`` read one PIL image at a time,
  each frame converted and normalised on its own and the frames stacked: the way the public
  MD-GAN code loads Sky Timelapse. Twice: with frames already at the training size, and with
  frames at Sky Timelapse's 640x360, resized on every load as the public loader must.

"1 core" rows run in the main process (``num_workers=0``); rows with workers report the total
and the total divided by the cores used. Results go to the "Data loader" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ssagan_dist import bench, cli
from ssagan_dist.data import ClipLoader, read_index

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
SECTION = "## Data loader"


class FrameFolderClips(Dataset):
    """The public MD-GAN way: per frame, PIL open + convert + resize, ToTensor, Normalize; then stack."""

    def __init__(self, root: str, frames: int, size: int):
        self.size = size
        self.clips = []
        for folder in sorted(p for p in Path(root).glob("*/*") if p.is_dir()):
            paths = sorted(folder.glob("*.jpg"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
            self.clips += [paths[i : i + frames] for i in range(0, len(paths) - frames + 1, frames)]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> torch.Tensor:
        out = []
        for path in self.clips[i]:
            img = Image.open(path).convert("RGB")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)  # ToTensor
            out.append((x - 0.5) / 0.5)  # Normalize(0.5, 0.5)
        return torch.stack(out, dim=1)  # (C, T, H, W)


def _clips_per_s(batches, clips: int) -> float:
    """Steady-state rate: clips after the first batch over the time after it (no worker startup)."""
    seen, timed, start = 0, 0, 0.0
    for batch in batches:
        n = (batch["video"] if isinstance(batch, dict) else batch).shape[0]
        if seen == 0:
            start = time.perf_counter()
        else:
            timed += n
        seen += n
    elapsed = time.perf_counter() - start
    assert seen == clips, (seen, clips)
    return timed / elapsed


def _best_of(make, clips: int, repeats: int) -> float:
    return max(_clips_per_s(make(), clips) for _ in range(repeats))


def export_copies(shards: str, trees: dict[Path, tuple[int, int] | None], npy_out: str, quality: int = 95) -> None:
    """The shards' clips as Sky-Timelapse-style JPEG trees (frames optionally resized to a size)
    and as shards of raw uint8 frames."""
    from ssagan_dist.data.writer import ShardWriter
    from ssagan_dist.data import encode_clip

    index = read_index(shards)
    writer = ShardWriter(npy_out, shard_clips=index["shards"][0]["clips"])
    for n, batch in enumerate(ClipLoader(shards, 1, shuffle=False)):
        frames = ((batch["video"][0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
        writer.add(batch["key"][0], encode_clip(frames, "npy"))
        video = f"video{n // 4:04d}"
        for root, frame_size in trees.items():
            folder = root / video / f"{video}_{n % 4}"
            folder.mkdir(parents=True)
            for t, frame in enumerate(frames):
                img = Image.fromarray(frame)
                if frame_size:
                    img = img.resize(frame_size, Image.Resampling.BICUBIC)
                img.save(folder / f"{video}_frames_{t + 1}.jpg", quality=quality)
    writer.close(clip_shape=index["clip_shape"], frame_format="npy", fps=index["fps"], labels=False, classes=None)


def _moto_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto server did not start")


def run(clips: int = 96, size: int = 128, frames: int = 32, batch_size: int = 8, workers: int = 2,
        repeats: int = 3, json_out: bool = False, write_docs: bool = True) -> dict:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # the local moto endpoint only
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # "1 core" rows: a second intra-op thread only contends on small per-frame ops
    try:
        return _run(clips, size, frames, batch_size, workers, repeats, json_out, write_docs, cores)
    finally:
        torch.set_num_threads(threads)


def _run(clips: int, size: int, frames: int, batch_size: int, workers: int, repeats: int, json_out: bool,
         write_docs: bool, cores: int) -> dict:
    results: dict = {"load_average": round(os.getloadavg()[0], 1), "clips": clips, "clip_shape": [3, frames, size, size], "batch_size": batch_size,
                     "cores": cores, "cpu": platform.processor() or platform.machine(), "rows": []}

    def row(name: str, rate: float, used: int) -> None:
        results["rows"].append({"loader": name, "clips_per_s": round(rate, 1),
                                "cores": used, "clips_per_s_per_core": round(rate / used, 1)})
        print(f"{name:58s} {rate:8.1f} clips/s  {rate / used:8.1f} per core", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        shards = os.path.join(tmp, "shards")
        # The dataset is made the way a user makes one, by the explicit data_tools step.
        subprocess.run([sys.executable, "-m", "data_tools.synth", "--out", shards, "--clips", str(clips), "--size",
                        str(size), "--frames", str(frames), "--seed", "0", "--shard-clips", str(max(1, clips // 4))],
                       check=True, stdout=subprocess.DEVNULL)
        index = read_index(shards)
        results["shard_mib"] = round(index["total_bytes"] / 2**20, 1)
        trees = {"frame folders, frames at training size": (Path(tmp) / "tree", None),
                 "frame folders, 640x360 frames resized on load": (Path(tmp) / "tree640", (640, 360))}
        npy_shards = os.path.join(tmp, "npy")
        export_copies(shards, dict(trees.values()), npy_shards)
        results["npy_shard_mib"] = round(read_index(npy_shards)["total_bytes"] / 2**20, 1)

        def clip_loader(url: str, w: int, **kw):
            return lambda: ClipLoader(url, batch_size, processes=w, **kw)

        def folder_loader(root: Path, w: int):
            dataset = FrameFolderClips(str(root), frames, size)
            return lambda: DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=w)

        for w in (0, workers):
            label = "1 core" if w == 0 else f"{w} workers"
            used = 1 if w == 0 else min(w, cores)
            row(f"ClipLoader, local shards ({label})", _best_of(clip_loader(shards, w), clips, repeats), used)
            row(f"ClipLoader, local shards of raw uint8 .npy frames ({label})",
                _best_of(clip_loader(npy_shards, w), clips, repeats), used)
            for name, (root, _) in trees.items():
                row(f"{name} ({label})", _best_of(folder_loader(root, w), clips, repeats), used)

        proc, endpoint = _moto_server()
        try:
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            from ssagan_dist import storage

            fs, _ = storage.filesystem("s3://bench", endpoint)
            names = [s["name"] for s in index["shards"]] + ["index.json"]  # index last
            for name in names:
                fs.put_file(os.path.join(shards, name), f"bench/sky/{name}")
            for w in (0, workers):
                label = "1 core + moto" if w == 0 else f"{w} workers + moto"
                row(f"ClipLoader, S3 on loopback moto ({label})",
                    _best_of(clip_loader("s3://bench/sky", w, endpoint_url=endpoint), clips, repeats),
                    1 if w == 0 else min(w, cores))
        finally:
            proc.terminate()
            proc.wait()

    base = {r["loader"]: r["clips_per_s_per_core"] for r in results["rows"]}
    results["speedup_per_core"] = {
        name: round(base["ClipLoader, local shards (1 core)"] / base[f"{name} (1 core)"], 1) for name in trees
    }
    if write_docs:
        _write_docs(results)
    if json_out:
        print(json.dumps(results, indent=2))
    return results


def _write_docs(results: dict) -> None:
    c, t, h, w = results["clip_shape"]
    lines = [
        SECTION,
        "",
        f"`python -m ssagan_dist.bench.loader` on this machine ({results['cores']} cores, {results['cpu']}, "
        f"no GPU, 1-minute load average {results['load_average']} at the start: other jobs shared the cores, "
        f"so compare rows rather than absolute rates): {results['clips']} synthetic sky clips of {t}x{h}x{w} (C={c}), JPEG quality 95 "
        f"({results['shard_mib']} MiB of shards; {results['npy_shard_mib']} MiB as raw .npy), batch {results['batch_size']}, best of 3 epochs, steady state "
        "(clips after the first batch over the time after it, so worker startup is excluded), "
        "`torch.set_num_threads(1)`.",
        "",
        "| loader | clips/s | cores | clips/s per core |",
        "|---|---:|---:|---:|",
        *[f"| {r['loader']} | {r['clips_per_s']} | {r['cores']} | {r['clips_per_s_per_core']} |" for r in results["rows"]],
        "",
        "Per core, ClipLoader from local shards is "
        + " and ".join(f"{v}x the {k.replace('frame folders, ', 'frame-folder loader with ')}"
                       for k, v in results["speedup_per_core"].items())
        + ".",
        "",
        "- The raw .npy rows show what the JPEG decode costs (and what 8x the bytes buys); the rest of "
        "ClipLoader's per-clip cost is the read and the uint8 -> float32 [-1, 1] conversion to (B, C, T, H, W).",
        "- Frame folders: one `PIL.Image.open(...).convert('RGB')` per frame, per-frame ToTensor/Normalize and a "
        "stack, as the public MD-GAN loader does. With 640x360 frames (Sky Timelapse as released) every epoch "
        "pays the full-size decode and the resize that sharding paid once.",
        "- S3 rows: the moto server runs as a separate process on the same cores (the `cores` column does not "
        "count it, so these rows understate what a remote endpoint allows); one ranged GET per run of adjacent clips, concurrent within a batch (fsspec `cat_ranges`).",
        "- `1 core` = `num_workers=0`, everything in the main process.",
        "",
    ]
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nMeasured numbers; each section names the command that produced it.\n\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


@cli.command
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssagan_dist.bench.loader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    a = ap.parse_args(argv)
    bench.require("loader")
    run(a.clips, a.size, a.frames, a.batch_size, a.workers, json_out=a.json, write_docs=not a.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
