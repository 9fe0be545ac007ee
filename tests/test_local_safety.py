"""Local trust boundaries (issue #33, points 7, 8, 11, 14): what `make clean` deletes, what
`jobs/ray_local.sh stop` signals and deletes, where the metrics server listens by default, and
what the docs' commands could leak into git or the process list."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from ssagan_dist.config import TelemetryConfig
from ssagan_dist.telemetry import TrainingTelemetry
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


# -- make clean (point 7) ----------------------------------------------------------------------------

@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The Makefile and jobs/ray_local.sh in a folder of their own, with what a demo and another run
    left behind: `make clean` runs there, never in the working tree."""
    root = tmp_path / "repo"
    (root / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    shutil.copy(REPO / "jobs" / "ray_local.sh", root / "jobs" / "ray_local.sh")
    for path in ["runs/tiny_cpu/checkpoint_000001/model.pt", "runs/tiny_cpu/metrics.jsonl",
                 "runs/my_experiment/checkpoint_000010/model.pt", "runs/my_experiment/metrics.jsonl",
                 "data/synth_sky/train/index.json", "data/real/train/index.json"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x")
    return root


def make_clean(root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_LOCAL_STATE" and not k.startswith("MAKE")}
    return subprocess.run(["make", "-C", str(root), "clean"], capture_output=True, text=True, env=env, timeout=60)


def test_make_clean_removes_the_demo_and_leaves_other_runs_and_data(repo_copy):
    state = repo_copy / "runs" / ".ray-local"
    state.mkdir()
    (state / "pid").write_text("999999999\n")  # a head that is long gone
    result = make_clean(repo_copy)
    assert result.returncode == 0, result.stderr
    assert not (repo_copy / "runs" / "tiny_cpu").exists() and not (repo_copy / "data" / "synth_sky").exists()
    assert not state.exists()
    assert (repo_copy / "runs" / "my_experiment" / "checkpoint_000010" / "model.pt").read_text() == "x"
    assert (repo_copy / "data" / "real" / "train" / "index.json").exists()


def test_make_clean_keeps_the_state_of_a_running_local_head(repo_copy):
    with fake_head() as (proc, temp_dir, port):
        state = repo_copy / "runs" / ".ray-local"
        write_state(state, proc.pid, temp_dir, port)
        result = make_clean(repo_copy)
        assert result.returncode == 0, result.stderr
        assert "keeping runs/.ray-local" in result.stdout
        assert (state / "pid").exists() and Path(temp_dir).is_dir() and proc.poll() is None
        assert not (repo_copy / "runs" / "tiny_cpu").exists()


# -- jobs/ray_local.sh stop (point 8) -----------------------------------------------------------------

def write_state(state: Path, pid: int, temp_dir: str, port: int | None) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "pid").write_text(f"{pid}\n")
    (state / "temp_dir").write_text(f"{temp_dir}\n")
    (state / "address").write_text("http://127.0.0.1:1\n")
    if port is not None:
        (state / "port").write_text(f"{port}\n")


def make_temp_dir() -> str:
    """A folder of the script's own pattern, made the way it makes one."""
    return subprocess.run(["mktemp", "-d", "/tmp/ssagan-ray-XXXXXX"], capture_output=True, text=True,
                          check=True).stdout.strip()


class fake_head:
    """A process whose command line is what `ray start --head --port=P --temp-dir=D` shows (a python
    that sleeps), leading its own process group as the real head does (setsid)."""

    def __enter__(self):
        self.temp_dir, self.port = make_temp_dir(), free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "start", "--head",
                                      "--block", f"--port={self.port}", f"--temp-dir={self.temp_dir}"],
                                     start_new_session=True)
        return self.proc, self.temp_dir, self.port

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_local(*args: str, state: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_LOCAL_STATE=str(state))
    return subprocess.run([str(REPO / "jobs" / "ray_local.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture
def sleeper():
    """`sleep 300`, started here: the process that now holds a pid a state file remembers."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("recorded_dir", ["unrelated", "pattern_in_use", "traversal"])
def test_stop_leaves_a_reused_pid_and_unrelated_folders_alone(tmp_path, sleeper, recorded_dir):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    user = None
    if recorded_dir == "unrelated":
        temp_dir = str(precious)
    elif recorded_dir == "traversal":
        temp_dir = f"/tmp/ssagan-ray-abcdef/../..{precious}"
    else:  # the script's own pattern, but another head (a process we did not start from this state) uses it
        temp_dir = make_temp_dir()
        (Path(temp_dir) / "data").write_text("keep me")
        user = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"--temp-dir={temp_dir}"])
    try:
        write_state(tmp_path / "state", sleeper.pid, temp_dir, free_port())
        result = ray_local("stop", state=tmp_path / "state")
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
        assert sleeper.poll() is None, "a process that is not the head was signalled"
        assert psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE
        assert "nothing signalled" in result.stdout
        assert (precious / "data").read_text() == "keep me"
        if recorded_dir == "pattern_in_use":
            assert (Path(temp_dir) / "data").read_text() == "keep me"
        assert not (tmp_path / "state" / "pid").exists()  # the stale state is gone
        assert ray_local("status", state=tmp_path / "state").returncode == 1
    finally:
        if user is not None:
            user.kill()
            user.wait(10)
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_status_is_false_for_a_reused_pid_and_start_would_not_trust_it(tmp_path, sleeper):
    temp_dir = make_temp_dir()
    try:
        write_state(tmp_path / "state", sleeper.pid, temp_dir, free_port())
        assert ray_local("status", state=tmp_path / "state").returncode == 1
        result = ray_local("address", state=tmp_path / "state")
        assert result.returncode == 1 and "no local head running" in result.stderr
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_stop_stops_its_own_head_and_deletes_its_temp_dir(tmp_path):
    with fake_head() as (proc, temp_dir, port):
        state = tmp_path / "state"
        write_state(state, proc.pid, temp_dir, port)
        assert ray_local("status", state=state).returncode == 0
        result = ray_local("stop", state=state)
        assert result.returncode == 0, result.stderr
        assert "local head stopped" in result.stdout
        proc.wait(10)
        assert proc.returncode == -signal.SIGTERM
        assert not Path(temp_dir).exists()
        assert sorted(p.name for p in state.iterdir()) == []


def test_stop_refuses_a_head_whose_port_differs_from_the_recorded_one(tmp_path):
    with fake_head() as (proc, temp_dir, port):
        write_state(tmp_path / "state", proc.pid, temp_dir, port + 1)
        result = ray_local("stop", state=tmp_path / "state")
        assert result.returncode == 0 and "nothing signalled" in result.stdout
        assert proc.poll() is None
        assert Path(temp_dir).is_dir()  # still in use by that process


# -- the metrics server's default interface (point 11) ------------------------------------------------

def non_loopback_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_metrics_are_not_served_on_a_non_loopback_address_by_default():
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    assert TelemetryConfig().host == "127.0.0.1"
    telemetry = TrainingTelemetry(TelemetryConfig(port=free_port(), port_span=1), run="r", trial="", rank=0,
                                  world=1, model="m")
    telemetry.start()
    try:
        port = telemetry.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"ssagan_training_active" in response.read()
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()
    finally:
        telemetry.close()


# -- the docs (point 14) ------------------------------------------------------------------------------

def git_ignored(path: str) -> bool:
    return subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path]).returncode == 0


def local_stores_the_docs_create() -> list[str]:
    """Repository-relative paths that commands in docs/ and README.md write (MLflow stores)."""
    paths = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = doc.read_text()
        paths |= set(re.findall(r"sqlite:///\$PWD/([\w./-]+)", text))
        paths |= set(re.findall(r"--(?:artifacts-destination|default-artifact-root|backend-store-uri)[ =]"
                                r"(?:file://)?\$PWD/([\w./-]+)", text))
        paths |= {f"{m}/x" for m in re.findall(r"mkdir -p ([\w.-]+)\n[^\n]*mlflow", text)}
        if "mlruns" in text:
            paths.add("mlruns/0/meta.yaml")
    return sorted(paths)


def test_every_local_store_the_docs_create_is_git_ignored():
    paths = local_stores_the_docs_create()
    assert "mlflow/mlflow.db" in paths  # docs/tracking.md's local server
    for path in [*paths, "mlruns/0/meta.yaml", "mlflow.db", "wandb/offline-run-x/run.wandb"]:
        assert git_ignored(path), f"{path} (written by a command in the docs) is not git-ignored"


def test_kubernetes_secret_is_created_from_a_file_not_the_command_line():
    """`--from-literal=KEY=value` puts the key on kubectl's command line, in every `ps` of the machine."""
    text = (REPO / "docs" / "kubernetes.md").read_text()
    commands = [line.split("#", 1)[0] for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.DOTALL)
                for line in block.splitlines()]
    assert not [c for c in commands if "--from-literal" in c]
    create = [c for c in commands if "create secret generic ssagan-s3" in c]
    assert create and all("--from-file=" in c for c in create), create
