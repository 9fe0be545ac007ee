"""The user's path: `ray job submit` of the main job to a head started by `jobs/ray_local.sh` (the
demo's head), token auth on, while another Ray cluster runs on the same machine (as another user's
would): each submit reaches its own cluster, and stopping the demo's head leaves the other alive.
Nothing here runs `ray stop`, which would stop every Ray process of the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssagan_dist import experiment
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
                               "trainer.max_steps=1", "trainer.val_every=1",
                               f"run.storage_path={tmp_path / 'runs'}", "run.name=submitted"],
                              cwd=REPO, env={**env, "RAY_LOCAL_STATE": str(state)}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"[submit] ssagan_dist.train to {address}" in done.stdout and "succeeded" in done.stdout + done.stderr

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
