"""The user's path: `ray job submit` of the main job to a head started by `jobs/ray_local.sh` (the
demo's head), token auth on, while another Ray cluster runs on the same machine (as another user's
would): each submit reaches its own cluster, and stopping the demo's head leaves the other alive,
and the console holds the project's lines only. Where a run may be stored under a Ray job or on
a cluster of several nodes. Nothing here runs `ray stop`, which would stop every Ray process of
the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssagan_dist import experiment, storage, train
from ssagan_dist.config import ConfigError
from ssagan_dist.experiment import load_config
from tests.conftest import free_port
from tests.test_train import FAST, data_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def other_cluster(tmp_path_factory):
    """Another user's Ray head on this machine: `ray start --head --block` on free ports with its own
    temp dir; stopped at the end by signalling its own `ray start` process."""
    temp = tmp_path_factory.mktemp("other")
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = open(temp / "head.log", "w")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                             "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (answers(dash) and (temp / "ray_current_cluster").exists()):
        assert head.poll() is None and time.monotonic() < deadline, (temp / "head.log").read_text()[-3000:]
        time.sleep(1)
    yield {"pid": head.pid, "dash": dash, "gcs": gcs, "env": env}
    head.send_signal(signal.SIGTERM)
    head.wait(timeout=120)
    log.close()


def ray_local(*args: str, state: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["jobs/ray_local.sh", *args], cwd=REPO, env={**env, "RAY_LOCAL_STATE": str(state)},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_the_demos_head_and_another_cluster_do_not_touch_each_other(other_cluster, sky, tmp_path):
    env = {k: v for k, v in other_cluster["env"].items() if k != "RAY_ADDRESS"}
    state = tmp_path / "state"
    # The other cluster holds its ports: pinning the demo's GCS port to one of them is refused, in one line.
    busy = ray_local("start", "2", state=state, env={**env, "RAY_PORT": str(other_cluster["gcs"])})
    assert busy.returncode != 0
    assert busy.stderr.strip() == (f"[ray] port {other_cluster['gcs']} (RAY_PORT) is busy: another process (another "
                                   "Ray?) listens there; unset RAY_PORT for a free one")
    from ray._common.utils import get_ray_address_file

    recorded = Path(get_ray_address_file(None))
    recorded_before = recorded.read_text() if recorded.exists() else None

    up = ray_local("start", "2", state=state, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        address = (state / "address").read_text().strip()
        assert address != f"http://127.0.0.1:{other_cluster['dash']}"
        # Ray's machine-wide record of "the" cluster (what a bare ray.init() joins) is not rewritten
        assert (recorded.read_text() if recorded.exists() else None) == recorded_before
        # jobs/submit.sh finds the demo's head by its recorded address (no RAY_ADDRESS given)
        done = subprocess.run(["jobs/submit.sh", "ssagan_dist.train", "--config", "tiny_cpu", *FAST, *data_args(sky),
                               "loop.max_steps=1", "loop.val_every=1",
                               f"run.storage_path={tmp_path / 'runs'}", "run.name=submitted"],
                              cwd=REPO, env={**env, "RAY_LOCAL_STATE": str(state)}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"[submit] ssagan_dist.train to {address}" in done.stdout and "succeeded" in done.stdout + done.stderr
        # The console at the default ray.train_log_level: the project's lines, none of Ray's chatter
        # (a report per rank and checkpoint, DDP's deprecation warning, the preemption watcher's
        # object-store line, a PlacementGroupCleaner traceback beside the other cluster, packaging)
        console = done.stdout + done.stderr
        for noise in ("TrainingReport(", "Reporting training result", "FutureWarning", "PreemptionWatcher",
                      "Traceback", "Found multiple active Ray instances", "Next steps", "Uploading package",
                      "Connecting to existing Ray cluster", "is now ignored by default"):
            assert noise not in console, f"{noise!r} in the console:\n{console[-4000:]}"
        lines = console.strip().splitlines()
        assert lines[-1].startswith("[submit] job ") and lines[-1].endswith(" succeeded"), lines[-1]
        assert any("[val] step 1:" in ln for ln in lines) and "[train] checkpoint: " in console

        def jobs_on(url: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "ray"), "job", "list", "--address", url], env={**env, **(extra_env or {})},
                                  capture_output=True, text=True, timeout=120)

        assert "ssagan_dist.train" in jobs_on(address).stdout
        other = jobs_on(f"http://127.0.0.1:{other_cluster['dash']}")
        assert other.returncode == 0 and "ssagan_dist.train" not in other.stdout  # it went to the demo's head only
        # Token auth is on: without a token the job server refuses
        assert jobs_on(address, {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": ""}).returncode != 0
        # the other cluster takes its own submits meanwhile
        ping = subprocess.run([str(BIN / "ray"), "job", "submit", "--address",
                               f"http://127.0.0.1:{other_cluster['dash']}", "--", "python", "-c", "print('other ok')"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert ping.returncode == 0 and "other ok" in ping.stdout, ping.stdout + ping.stderr
    finally:
        head_pid = int((state / "pid").read_text())
        down = ray_local("stop", state=state, env=env)
    assert down.returncode == 0, down.stderr
    assert "other Ray clusters on this machine untouched" in down.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(head_pid, 0)
    assert not answers(int(address.rsplit(":", 1)[1]))
    # ...and the other cluster is alive and still answers
    os.kill(other_cluster["pid"], 0)
    assert answers(other_cluster["gcs"]) and answers(other_cluster["dash"])
    trainer, cfg, model_state = experiment.load_trainer(str(tmp_path / "runs" / "submitted"))
    assert model_state["step"] == 1 and cfg.model.name == "ssagan"


# -- where a run may be stored --------------------------------------------------------------------

def test_a_local_storage_path_is_refused_where_another_node_or_the_job_would_lose_it(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.SHARED_STORAGE_ENV, raising=False)
    cfg = load_config("tiny_cpu", [f"run.storage_path={tmp_path / 'runs'}"])
    train.check_storage_shared(cfg, 1, None)  # one node, no job: this machine's own disk
    train.check_storage_shared(cfg, 1, tmp_path / "copy")  # a job on its one-node head, path outside its copy (the demo)
    with pytest.raises(ConfigError, match=r"^config key 'run.storage_path' = '.*/runs' is a local folder and the Ray "
                                          r"cluster has 3 nodes: .* SSAGAN_SHARED_STORAGE=.*/runs \(docs/training.md"):
        train.check_storage_shared(cfg, 3, None)
    with pytest.raises(ConfigError, match=r"^config key 'run.storage_path' = .* is inside this Ray job's copy of its "
                                          r"working dir, which Ray deletes when the job ends"):
        train.check_storage_shared(cfg, 1, tmp_path)
    monkeypatch.setenv(storage.SHARED_STORAGE_ENV, f"/nowhere{os.pathsep}{tmp_path / 'ru'}")
    with pytest.raises(ConfigError, match="3 nodes"):  # 'ru' is not a folder holding 'runs'
        train.check_storage_shared(cfg, 3, None)
    monkeypatch.setenv(storage.SHARED_STORAGE_ENV, f"/nowhere{os.pathsep}{tmp_path}")
    train.check_storage_shared(cfg, 3, None)  # declared: every node mounts it
    train.check_storage_shared(load_config("tiny_cpu", ["run.storage_path=s3://bucket/runs"]), 3, tmp_path)


def test_the_job_copy_is_the_drivers_working_dir_under_a_job_with_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert train.ray_job_working_dir() is None  # not a Ray job's driver
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"env_vars": {"A": "1"}}}')
    assert train.ray_job_working_dir() is None  # a job without a working dir
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_0.zip"}}')
    assert train.ray_job_working_dir() == tmp_path.resolve()


def test_ray_trains_path_named_loggers_take_the_runs_level():
    """Ray Train 2.60 names the logger of its report path by file (its 'Reporting training result
    N: TrainingReport(...)' INFO line escaped LoggingConfig); the worker gives it the run's level."""
    import logging

    import ray.train.v2._internal.execution.context as context

    logger = logging.getLogger(context.__file__)
    before = logger.level
    try:
        train.level_ray_train_loggers("WARNING")
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
        train.level_ray_train_loggers("INFO")
        assert logger.isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)


@pytest.mark.slow  # a two-node cluster with a dashboard, then a job: about a minute
def test_a_job_on_a_two_node_cluster_refuses_a_local_storage_path_in_one_line(sky, tmp_path):
    import ray
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobStatus, JobSubmissionClient

    ray.shutdown()  # the session's shared local Ray (conftest.ray_cluster), if up: this test has its own
    dash = free_port()
    # Each node's dashboard agent on a free port: at Ray's default (52365) another cluster of the
    # machine may hold it, and a head without its agent answers every submit with "No available
    # agent to submit job" (seen beside a `ray start --head` on the default ports).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dash,
        "dashboard_agent_listen_port": free_port()})
    try:
        cluster.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
        cluster.wait_for_nodes()
        client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        runs = tmp_path / "runs"  # outside the job's copy of its working dir, on this one machine's disk
        job = client.submit_job(
            entrypoint=" ".join([sys.executable, "-m", "ssagan_dist.train", "--config", "tiny_cpu", *FAST,
                                 *data_args(sky), f"run.storage_path={runs}", "run.name=refused"]),
            runtime_env={"working_dir": str(REPO), "excludes": [".git", "docs", "tests", "*.gif", "*.mp4"],
                         "env_vars": {"RAY_AUTH_MODE": "token"}})
        deadline = time.monotonic() + 300
        while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert status == JobStatus.FAILED, logs[-3000:]
        errors = [ln for ln in logs.splitlines() if ln.startswith("error:")]
        assert errors == [f"error: config key 'run.storage_path' = '{runs}' is a local folder and the Ray cluster has "
                          "2 nodes: each rank would write its checkpoints to its own node's disk. Give "
                          "s3://BUCKET/PREFIX, or a folder every node mounts at that path and declare it shared: "
                          f"SSAGAN_SHARED_STORAGE={runs} (docs/training.md, \"Where runs are stored\")"], logs[-3000:]
        assert not runs.exists() and "Ray Train worker" not in logs  # refused before any worker started
    finally:
        cluster.shutdown()
