"""Soak test (not in the default suite): ``make soak`` or ``python -m tests.soak --minutes 10``.

A tiny 2-worker training whose shards and run folder (checkpoints, metrics) are on a real S3
endpoint (moto on loopback) behind a proxy that fails a share of requests, run as the user runs
it (``python -m ssagan_dist.train``), for N minutes of cycles. Each cycle starts the same command,
waits for it to write a new checkpoint, at a random moment SIGKILLs one Ray Train worker (the run
must carry on from a checkpoint) or not, and ends with Ctrl-C (the command must exit 130; the
next cycle resumes). At the end the run is completed and its final checkpoint must load with the
step it claims; then (unless --no-reference) the same training runs uninterrupted, without
faults, to the same step, and the two final checkpoints must hold the same weights, bit for bit
(the run is deterministic: nothing was lost or repeated). The figures (cycles, worker kills,
Ctrl-C, S3 faults injected, steps, digests and whether they match) are printed and written as
JSON (--report).

    python -m tests.soak --minutes 60      # the issue's figures (about 60 + the reference's minutes)
    python -m tests.soak --minutes 3       # a quick check that it works
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _workers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()[:1]):
                out.append(p)
        except psutil.Error:
            pass
    return out


def nets_digest(model_state: dict) -> str:
    """sha256 over every network's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for net, state in sorted(model_state["trainer"]["nets"].items()):
        for key, tensor in sorted(state.items()):
            t = tensor.detach().cpu().contiguous() if isinstance(tensor, torch.Tensor) else torch.as_tensor(tensor)
            h.update(f"{net}.{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0,
                    help="minutes of fault cycles (the issue's figures: 60); the finish and the reference come after")
    ap.add_argument("--fault-share", type=float, default=0.05,
                    help="share of S3 requests answered 503 (half as many dropped, half as many GETs cut mid-body)")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the uninterrupted reference run (and the digest comparison)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default="soak-report.json")
    a = ap.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    from data_tools import synth
    from ssagan_dist import checkpointing, storage
    from ssagan_dist.experiment import load_config
    from tests.conftest import free_port
    from tests.faults import FlakyS3Proxy, default_sigint

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "soak")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "soak")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    rng = random.Random(a.seed)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="soak")
    for split, clips, seed in (("train", 64, 0), ("val", 16, 1)):
        synth.generate(f"s3://soak/sky/{split}", clips=clips, size=32, frames=8, seed=seed, endpoint_url=endpoint,
                       progress=False)
    report: dict = {"minutes": a.minutes, "fault_share": a.fault_share, "seed": a.seed, "cycles": [],
                    "faults": {"ctrl_c": 0, "worker_kill": 0}, "survived": True}
    started = time.monotonic()
    deadline = time.monotonic() + a.minutes * 60
    run = "s3://soak/runs/soak"
    with FlakyS3Proxy(endpoint, error=a.fault_share, drop=a.fault_share / 2, cut=a.fault_share / 2,
                      seed=a.seed) as proxy:
        cmd = [sys.executable, "-m", "ssagan_dist.train", "--config", "tiny_cpu", "data.train_urls=s3://soak/sky/train",
               "data.val_urls=s3://soak/sky/val", f"run.s3_endpoint={proxy.url}", "run.storage_path=s3://soak/runs",
               "run.name=soak", "loop.val_every=20", "loop.log_every=20", "ray.max_failures=-1",
               "telemetry.enabled=false", "data.loader_processes=0", "loop.max_steps=1000000"]
        env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
        while time.monotonic() < deadline:
            action = rng.choice(["worker_kill", "none"])
            before = checkpointing.checkpoint_dirs(run, endpoint)[:1]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, preexec_fn=default_sigint)
            # act once this cycle has trained (a new checkpoint), at a random moment after that
            wait_until = time.monotonic() + 300
            while checkpointing.checkpoint_dirs(run, endpoint)[:1] == before and time.monotonic() < wait_until:
                time.sleep(0.5)
            time.sleep(rng.uniform(0, 10))
            if action == "worker_kill" and (workers := _workers_of(proc)):
                rng.choice(workers).send_signal(signal.SIGKILL)
                report["faults"]["worker_kill"] += 1
                time.sleep(rng.uniform(15, 30))  # it must carry on from a checkpoint
            proc.send_signal(signal.SIGINT)  # every cycle ends with Ctrl-C; the next one resumes
            report["faults"]["ctrl_c"] += 1
            try:
                _, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:  # a Ctrl-C not honoured is a failure of its own
                for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                    p.kill()
                _, err = proc.communicate()
                err = f"{err}\n[soak] no exit within 300 s of Ctrl-C: killed"
            steps = [c.rsplit("_", 1)[-1] for c in checkpointing.checkpoint_dirs(run, endpoint)]
            cycle = {"action": action, "exit": proc.returncode, "newest_checkpoint": steps[0] if steps else None}
            report["cycles"].append(cycle)
            print(f"[soak] {cycle}", flush=True)
            if proc.returncode != 130:
                report["survived"] = False
                print(err[-3000:], file=sys.stderr)
                break
        # finish: the same command to a step just past the newest checkpoint
        checkpoints = checkpointing.CheckpointManager(load_config("tiny_cpu", [
            "run.storage_path=s3://soak/runs", "run.name=soak", f"run.s3_endpoint={endpoint}"]))
        newest = checkpoints.newest_complete()
        final_step = (newest[1]["step"] if newest else 0) + 20
        done = subprocess.run([*cmd[:-1], f"loop.max_steps={final_step}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
        final = checkpoints.newest_complete()
        metrics = storage.read_bytes(f"{run}/metrics.jsonl", endpoint).decode().splitlines()
        json_lines = sum(1 for line in metrics if json.loads(line) is not None)  # raises on a bad line
        report["final"] = {"exit": done.returncode, "step": final[1]["step"] if final else None,
                           "expected_step": final_step, "metrics_lines_valid_json": json_lines}
        report["survived"] &= done.returncode == 0 and final is not None and final[1]["step"] == final_step
        report["s3_faults_injected"] = dict(proxy.injected)
        if final is not None:
            report["final"]["digest"] = nets_digest(final[1])
    report["soak_seconds"] = round(time.monotonic() - started, 1)
    if a.reference and report["survived"]:
        # the same training, uninterrupted and without faults, to the same step: the same weights
        began = time.monotonic()
        ref_cmd = [c for c in cmd if not c.startswith(("run.s3_endpoint=", "run.name=", "loop.max_steps="))]
        ref = subprocess.run([*ref_cmd, f"run.s3_endpoint={endpoint}", "run.name=soak-reference",
                              f"loop.max_steps={final_step}"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=max(900, int(report["soak_seconds"] * 2)))
        reference = checkpointing.CheckpointManager(load_config("tiny_cpu", [
            "run.storage_path=s3://soak/runs", "run.name=soak-reference", f"run.s3_endpoint={endpoint}"]))
        ref_final = reference.newest_complete()
        if ref.returncode != 0:
            print(ref.stderr[-3000:], file=sys.stderr)
        report["reference"] = {"exit": ref.returncode, "step": ref_final[1]["step"] if ref_final else None,
                               "digest": nets_digest(ref_final[1]) if ref_final else None,
                               "seconds": round(time.monotonic() - began, 1)}
        report["digest_match"] = (ref.returncode == 0 and report["reference"]["step"] == final_step
                                  and report["reference"]["digest"] == report["final"].get("digest"))
        report["survived"] &= report["digest_match"]
    moto.stop()
    injected = report.get("s3_faults_injected", {})
    report["figures"] = {
        "cycles": len(report["cycles"]), "worker_kills": report["faults"]["worker_kill"],
        "ctrl_c": report["faults"]["ctrl_c"],
        "s3_faults": sum(injected.get(k, 0) for k in ("error", "drop", "cut")),
        "s3_requests_forwarded": injected.get("forwarded", 0),
        "final_step": report.get("final", {}).get("step"), "digest_match": report.get("digest_match"),
        "soak_minutes": round(report["soak_seconds"] / 60, 1),
    }
    Path(a.report).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    f = report["figures"]
    match = {True: "same weights as the uninterrupted run", False: "WEIGHTS DIFFER from the uninterrupted run",
             None: "no reference run"}[f["digest_match"]]
    print(f"[soak] {'survived' if report['survived'] else 'FAILED'} in {f['soak_minutes']} min: {f['cycles']} cycles, "
          f"{f['worker_kills']} worker kills, {f['ctrl_c']} Ctrl-C, {f['s3_faults']} S3 faults "
          f"({injected}), final step {f['final_step']}, {match}; report {a.report}")
    return 0 if report["survived"] else 1


if __name__ == "__main__":
    sys.exit(main())
