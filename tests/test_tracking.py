"""Experiment tracking (tracking.backends, docs/tracking.md) against real trackers: a real MLflow
tracking server on loopback (sqlite backend, a temporary artifact folder), W&B in offline mode,
a real local Ray cluster training the tiny SSA-GAN on synthetic skies, the MLflow run page in
headless Chromium. Nothing is mocked; the only stand-in is a missing package (``sys.modules``
entry set to None, which is how Python itself reports a package as not importable).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from ssagan_dist import experiment, tracking, train
from ssagan_dist.config import ConfigError
from ssagan_dist.experiment import load_config
from tests.conftest import free_port
from tests.faults import local_raylet_pids, ray_train_workers, wait_until

ROOT = Path(__file__).resolve().parents[1]
FAST = ["model.flavor=tiny", "scaling.ranks=1", "loop.batch_size=2", "loop.log_every=1",
        "data.loader_processes=0", "optim.n_critic=1", "loop.val_batches=1", "telemetry.enabled=false"]
FAKE_WANDB_KEY = "f" * 40  # never valid anywhere; it must not show up in anything the run writes


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite store and a local artifact folder."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> None:
        from ssagan_dist.bench.tracking import LOCAL_SERVER_ENV, mlflow_server_command

        self.proc = subprocess.Popen(
            mlflow_server_command(self.root, self.port), env={**os.environ, **LOCAL_SERVER_ENV},
            stdout=(self.root / "server.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.healthy, "the MLflow server to answer", timeout=timeout, alive=lambda: self.proc.poll() is None,
                   why=lambda: (self.root / "server.log").read_text()[-2000:])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        wait_until(lambda: not self.healthy(), "the MLflow server to stop", timeout=30)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.url)

    def runs(self, **tags: str) -> list:
        client = self.client()
        experiments = [e.experiment_id for e in client.search_experiments()]
        where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        return client.search_runs(experiments, filter_string=where, max_results=100)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracker_env(mlflow_server):
    """The trackers' own environment variables: where (the test server; W&B offline) and who."""
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": "ssagan-tests",
           "WANDB_MODE": "offline", "WANDB_PROJECT": "ssagan-tests", "WANDB_API_KEY": FAKE_WANDB_KEY,
           "WANDB_SILENT": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield mlflow_server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def tracked_ray(tracker_env):
    """A local Ray cluster whose workers see the trackers' environment (set before Ray starts:
    workers inherit the raylet's environment)."""
    import ray

    ray.shutdown()  # the session's shared Ray (conftest.ray_cluster), if up, lacks these variables
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield tracker_env
    ray.shutdown()


def args_for(sky: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["--config", "tiny_cpu", *FAST, f"data.train_urls={sky / 'train'}", f"data.val_urls={sky / 'val'}",
            f"run.storage_path={storage}", f"run.name={name}", *extra]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_of(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


# -- configuration: checked before Ray starts ---------------------------------------------------------

def test_tracking_is_off_by_default_and_bad_values_name_the_key(monkeypatch, sky, tmp_path):
    assert tracking.names(load_config("tiny_cpu").tracking.backends) == []
    assert tracking.names(load_config("tiny_cpu", ["tracking.backends=[mlflow,wandb]"]).tracking.backends) == ["mlflow", "wandb"]
    with pytest.raises(ConfigError, match=r"'tracking\.backends' = 'neptune'"):
        load_config("tiny_cpu", ["tracking.backends=neptune"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        train.prepare(load_config("tiny_cpu", ["tracking.backends=mlflow"]))


def test_a_missing_tracker_package_is_one_clear_error_before_ray_starts(monkeypatch, sky, tmp_path, capsys,
                                                                       ray_must_not_start):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    assert train.main(args_for(sky, tmp_path, "nowandb", "tracking.backends=wandb")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config key 'tracking.backends' = 'wandb' needs the wandb package, which is not installed: "
                   "pip install 'ssagan-dist[wandb]'"]
    assert not (tmp_path / "nowandb").exists()


# -- a training run --------------------------------------------------------------------------------

def test_a_two_worker_run_logs_one_tracker_run_in_mlflow_and_wandb(tracked_ray, sky, tmp_path):
    server = tracked_ray
    assert train.main(args_for(sky, tmp_path, "both", "scaling.ranks=2", "loop.max_steps=4",
                               "loop.val_every=2", "tracking.backends=[mlflow,wandb]")) == 0
    run_dir = tmp_path / "both"
    lines = jsonl(run_dir / "metrics.jsonl")
    assert not [ln for ln in lines if ln.get("event") == "tracking_failed"], lines
    state = json.loads((run_dir / tracking.STATE_FILE).read_text())

    # MLflow: exactly one run, the keys the model reads as params, every metric at its step
    runs = server.runs(run_folder=str(tmp_path / "both"))
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == state["mlflow"]["run_id"] and run.info.status == "FINISHED"
    cfg = load_config(str(run_dir / "config.yaml"))
    assert run.data.params == {k: str(v) for k, v in tracking.params_of((run_dir / "config.yaml").read_text()).items()}
    assert run.data.params["optim.lr_g"] == str(cfg.optim.lr_g) and "loss.lambda_rank" not in run.data.params
    assert {"model": "ssagan", "flavor": "tiny", "family": "onestage"}.items() <= run.data.tags.items()
    client = server.client()
    for key in ("train/g_loss", "train/d_loss", "train/lr_g", "val/psnr", "val/baseline_psnr", "val/ssim",
                "val/baseline_ssim"):
        want = {ln["step"]: ln[key] for ln in lines if key in ln}
        assert want, key
        got = steps_of(client, run.info.run_id, key)
        assert got.keys() == want.keys(), key
        assert all(got[s] == pytest.approx(want[s], rel=1e-9) for s in want), key
    assert sorted(steps_of(client, run.info.run_id, "train/g_loss")) == [1, 2, 3, 4]
    assert sorted(steps_of(client, run.info.run_id, "val/psnr")) == [2, 4]
    best_step = max((ln for ln in lines if "val/psnr" in ln), key=lambda ln: ln["val/psnr"])["step"]
    assert run.data.tags["best_checkpoint"] == str(run_dir / f"checkpoint_{best_step:09d}")
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {f"samples/step_{s:09d}.{ext}" for s in (2, 4) for ext in ("png", "gif")} | {"samples/psnr_per_frame.png"} \
        <= arts
    got = Path(client.download_artifacts(run.info.run_id, "samples/step_000000004.gif", str(tmp_path)))
    assert got.read_bytes() == (run_dir / "samples" / "step_000000004.gif").read_bytes()

    # W&B offline: the run directory, read back through wandb's own record format
    records = wandb_records(run_dir)
    by_step = {h["_step"]: h for h in (items(r.history.item) for r in records if r.HasField("history"))}
    for key in ("train/g_loss", "val/psnr", "val/baseline_psnr"):
        want = {ln["step"]: ln[key] for ln in lines if key in ln}
        assert {s: by_step[s][key] for s in want} == pytest.approx(want, rel=1e-9), key
    for s in (2, 4):
        clip, strip = by_step[s]["samples/clip"], by_step[s]["samples/strip"]
        assert clip["_type"] == "video-file" and clip["path"].endswith(".gif")
        assert strip["_type"] == "image-file"
        files = next(run_dir.glob("wandb/offline-run-*")) / "files"
        assert (files / clip["path"]).read_bytes() == (run_dir / "samples" / f"step_{s:09d}.gif").read_bytes()
    run_record = next(r.run for r in records if r.HasField("run"))
    assert run_record.run_id == state["wandb"]["run_id"]
    assert {"model:ssagan", "flavor:tiny", "family:onestage"} <= set(run_record.tags)
    wandb_config = {k: v for r in records if r.HasField("run") for k, v in items(r.run.config.update).items()}
    assert wandb_config["optim.lr_g"] == cfg.optim.lr_g
    assert wandb_config["tag.run_folder"] == str(run_dir)  # over W&B's 64-character tag limit: in the config

    # nothing secret in what the run wrote or what the trackers were given
    for text in [(run_dir / f).read_text() for f in ("config.yaml", "metrics.jsonl", tracking.STATE_FILE)]:
        assert FAKE_WANDB_KEY not in text
    assert FAKE_WANDB_KEY not in json.dumps({**run.data.params, **run.data.tags}) + json.dumps(wandb_config)

    check_run_page_renders(server, run, tmp_path)


def check_run_page_renders(server: MlflowServer, run, tmp_path: Path) -> None:
    """The MLflow UI's run page in headless Chromium, on the last validation's sample strip: not blank."""
    from tests.browser import pixel_variance, screenshot

    shot = tmp_path / "mlflow_run.png"
    url = (f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
           "/artifacts/samples/step_000000004.png")
    proc = screenshot(url, shot, tmp_path / "chrome", size="1400,1100", budget_ms=15000)
    assert shot.exists(), proc.stderr[-2000:]
    assert pixel_variance(shot) > 100, "the MLflow run page screenshot is blank"
    out = os.environ.get("SSAGAN_TRACKING_SCREENSHOT")  # docs/tracking.md's picture: set to a path to keep it
    if out:
        Path(out).write_bytes(shot.read_bytes())


@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_a_killed_and_resumed_run_continues_the_same_mlflow_run(tracked_ray, sky, tmp_path):
    server = tracked_ray
    from tests.test_faults import train_in_thread

    thread, out = train_in_thread(args_for(sky, tmp_path, "killed", "loop.max_steps=6", "loop.val_every=2",
                                           "tracking.backends=mlflow"))
    run_dir = tmp_path / "killed"
    wait_until(lambda: (run_dir / "checkpoint_000000002" / "model.pt").exists()
               and (run_dir / tracking.STATE_FILE).exists(), "the first checkpoint and tracker run",
               alive=thread.is_alive)
    workers = [w for pid in local_raylet_pids() for w in ray_train_workers(pid)]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGKILL)
    thread.join(timeout=300)
    assert out.get("rc") == 0
    resumed = [ln for ln in jsonl(run_dir / "metrics.jsonl") if ln.get("event") == "resumed"]
    assert len(resumed) == 1
    runs = server.runs(run_folder=str(tmp_path / "killed"))
    assert len(runs) == 1, "a resumed run must continue its tracker run, not start another"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_at_step"] == str(resumed[0]["step"])
    assert f"event.resumed.step_{resumed[0]['step']}" in run.data.tags
    steps = steps_of(server.client(), run.info.run_id, "train/g_loss")
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # one curve, start to end


@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_a_tracker_that_fails_mid_run_never_fails_training(tracked_ray, sky, tmp_path):
    server = tracked_ray
    from tests.test_faults import train_in_thread

    thread, out = train_in_thread(args_for(sky, tmp_path, "cut", "loop.max_steps=30", "loop.val_every=10",
                                           "tracking.backends=mlflow"))
    run_dir = tmp_path / "cut"
    try:
        wait_until(lambda: (run_dir / "checkpoint_000000010" / "model.pt").exists()
                   and (run_dir / tracking.STATE_FILE).exists(), "the first checkpoint", alive=thread.is_alive)
        server.stop()
        thread.join(timeout=300)
    finally:
        if not server.healthy():
            server.start()  # the same store and port: later tests go on with it
    assert out.get("rc") == 0
    lines = jsonl(run_dir / "metrics.jsonl")
    failed = [ln for ln in lines if ln.get("event") == "tracking_failed"]
    assert len(failed) == 1 and failed[0]["tracker"] == "mlflow", failed
    assert max(ln["step"] for ln in lines) == 30
    assert {ln["step"] for ln in lines if "train/g_loss" in ln} == set(range(1, 31))
    assert checkpointing_step(run_dir) == 30
    run = server.runs(run_folder=str(tmp_path / "cut"))[0]
    assert max(steps_of(server.client(), run.info.run_id, "train/g_loss")) < 30  # the tracker was cut off


def checkpointing_step(run_dir: Path) -> int:
    from ssagan_dist import checkpointing

    return checkpointing.read_model(Path(checkpointing.resolve(str(run_dir))))["step"]


def test_lines_logged_in_a_burst_go_in_few_requests_at_their_steps_and_in_order(tracker_env, tmp_path):
    """The writer sends queued metrics together (at most every METRICS_INTERVAL_S) but never
    reorders calls: W&B drops anything logged at a step below one it already has."""
    server = tracker_env
    cfg = load_config("tiny_cpu", ["tracking.backends=[mlflow,wandb]", f"run.name=burst-{uuid.uuid4().hex[:6]}",
                                   f"run.storage_path={tmp_path}"])
    tracker = tracking.Tracker(cfg, str(tmp_path / "run"), 0, config_yaml=experiment.dump(cfg))
    calls: list[tuple[str, str, list[int]]] = []
    for sink in tracker.sinks:
        def recorded(method, kind, sink=sink):
            def call(*args):
                steps = [s for s, _ in args[0]] if kind == "metrics" else [args[0]]
                calls.append((sink.name, kind, steps))
                return method(*args)
            return call
        sink.metrics, sink.samples = recorded(sink.metrics, "metrics"), recorded(sink.samples, "samples")
    png = (ROOT / "docs" / "tracking_mlflow_run_samples.png").read_bytes()
    for step in range(1, 41):
        tracker.record({"step": step, "train/loss_g": float(step)})
        if step % 20 == 0:
            tracker.samples(step, {f"step_{step:09d}.png": png})
    tracker.close()
    assert tracker.take_problems() == []
    for name in ("mlflow", "wandb"):
        mine = [(kind, steps) for sink, kind, steps in calls if sink == name]
        order = [s for _, steps in mine for s in steps]
        assert order == sorted(order)  # no call at a step below one already sent
        metrics = [steps for kind, steps in mine if kind == "metrics"]
        assert sorted(s for steps in metrics for s in steps) == list(range(1, 41))  # every line, once
        assert len(metrics) < 10  # 40 lines in a burst: a few requests, not 40
    run = next(r for r in server.runs() if r.info.run_name == cfg.run.name)
    assert steps_of(server.client(), run.info.run_id, "train/loss_g") == {s: float(s) for s in range(1, 41)}


# -- sweeps ----------------------------------------------------------------------------------------

def test_pbt_exploits_and_swept_values_show_on_the_trial_run(tracker_env, tmp_path):
    """A trial's next generation after a PBT exploit (what SweepTrial hands rank 0's tracker)."""
    server = tracker_env
    cfg = load_config("tiny_cpu", ["tracking.backends=mlflow", "run.name=t1-g001", f"run.storage_path={tmp_path}"])
    start = {"event": "exploit", "trial_id": "t1", "generation": 1, "donor_trial": "t0", "step": 4,
             "explored": {"optim.lr_g": 0.0003}, "start_from": str(tmp_path / "t0-g000" / "checkpoint_000000004")}
    sweep_ctx = {"group": f"pbt-{uuid.uuid4().hex[:8]}"}  # the sweep's name
    for generation_start, step in ((None, 0), (start, 4)):  # generation 0, then the exploit
        ctx = tracking.trial_context(sweep_ctx, str(tmp_path), "t1", {"optim.lr_g": 0.0003 if step else 0.0002},
                                     generation_start or {"event": "start", "step": 0, "generation": 0})
        tracker = tracking.Tracker(cfg, str(tmp_path / f"t1-g00{1 if step else 0}"), step, ctx,
                                   config_yaml=experiment.dump(cfg))
        tracker.record({"step": step + 2, "train/loss_g": 1.0, "val/psnr": 20.0 + step})
        tracker.close()
        assert tracker.take_problems() == []
    runs = server.runs(sweep=sweep_ctx["group"])
    assert len(runs) == 1  # one tracker run per trial, across its generations
    tags = runs[0].data.tags
    exploit = json.loads(tags["pbt.exploit.g001"])
    assert exploit["donor_trial"] == "t0" and exploit["explored"] == {"optim.lr_g": 0.0003} and exploit["step"] == 4
    assert tags["pbt.last_donor"] == "t0" and tags["trial_id"] == "t1"
    assert steps_of(server.client(), runs[0].info.run_id, "hp/optim.lr_g") == {0: 0.0002, 4: 0.0003}
    assert tags["best_checkpoint"].endswith("t1-g001/checkpoint_000000006")


TWO_TRIALS = """\
metric: val/psnr
search: {algorithm: grid}
space: {optim.lr_g: {grid: [1.0e-3, 1.0e-4]}}
overrides: [scaling.ranks=1, scaling.cpus_per_rank=0.5, loop.batch_size=2, loop.max_steps=2,
            loop.val_every=2, loop.val_batches=1, loop.log_every=1, data.loader_processes=0, optim.n_critic=1,
            telemetry.enabled=false, tracking.backends=mlflow]
driver_cpus: 0.1
max_concurrent_trials: 2
report_timeout_s: 300
"""


@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_a_two_trial_sweep_logs_two_child_runs_under_one_parent_with_the_winner(mlflow_server, sky, tmp_path):
    from tests.test_tune import assert_nothing_left, processes_marked, start_sweep, sweep_cmd

    (tmp_path / "two.yaml").write_text(TWO_TRIALS)
    name = f"tracked-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": "ssagan-sweeps"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the CLI's environment (run_sweep passes os.environ on)
    try:
        mark = uuid.uuid4().hex
        proc = start_sweep(sweep_cmd(sky, tmp_path, str(tmp_path / "two.yaml"), "--name", name, "--no-report"), mark)
        try:
            stdout, _ = proc.communicate(timeout=420)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                for p in processes_marked(mark):
                    p.kill()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert proc.returncode == 0, stdout[-3000:]
    assert_nothing_left(mark, grace_s=120)  # nothing the sweep started outlives it (Ray's daemons exit slowly here)
    assert "[tracking] warning" not in stdout
    runs = mlflow_server.runs(sweep=name)
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(float(c.data.params["optim.lr_g"]) for c in children) == [1e-4, 1e-3]  # the swept values
    winners = [c for c in children if c.data.tags.get("winner") == "true"]
    assert len(winners) == 1
    best_line = next(ln for ln in stdout.splitlines() if ln.startswith("[tune] best val/psnr"))
    winner_trial = best_line.rsplit("trial ", 1)[1].strip()
    assert winners[0].data.tags["trial_id"] == winner_trial == parent.data.tags["winner_trial"]
    assert float(winners[0].data.metrics["val/psnr"]) == max(float(c.data.metrics["val/psnr"]) for c in children)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.metric"] == "val/psnr"


# -- the W&B run file, read with wandb's own protobuf records ------------------------------------------

def items(entries) -> dict:
    """History / config items of a record as a dict (a nested key ['samples/clip', 'path'] nests)."""
    out: dict = {}
    for i in entries:
        *parents, last = [i.key] if i.key else list(i.nested_key)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = json.loads(i.value_json)
    return out


def wandb_records(run_dir: Path) -> list:
    """Every record of the run's ``.wandb`` file as a ``wandb.proto`` ``Record``. wandb 0.31 no
    longer ships its Python reader (``wandb.sdk.internal.datastore``); the file is a LevelDB-style
    log (32 KiB blocks, 7-byte record headers: CRC, length, type), each record one protobuf that
    wandb's own ``Record`` class parses."""
    from wandb.proto import wandb_internal_pb2

    path = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", path
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records
