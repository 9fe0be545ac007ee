"""Shared fixtures: a real S3 endpoint over HTTP on loopback (moto's ThreadedMotoServer), one local
Ray cluster for the whole session, the KubeRay CRDs, one torch thread; the rule for missing system
parts; and ``run_without``, a command run where some packages do not import."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

# One intra-op thread per test process: the suite runs on 2 cores beside Ray workers, and
# oversubscribed threads make small CPU kernels tens of times slower. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default)
# and takes a rank's report (a barrier on the workers) only then: each test training of a few steps
# waits seconds on these polls. Polling every 0.5 s changes nothing else (a missed poll is not a
# failure; a worker counts as hung after 10 minutes). Propagated to the controller by Ray Train.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray's temp dir of this test session (inherited by every process it starts): a bare ray.init() in a
# test never joins the cluster another user's `ray start` recorded in /tmp/ray, nor rewrites that file.
# Short: Ray's socket paths live under it.
if "RAY_TMPDIR" not in os.environ:
    import tempfile

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ssagan-t-", dir="/tmp")
# The key that signs sweeps' Tune state (ssagan_dist.tune.trust): the session's own, never the
# user's ~/.config/ssagan-dist/sweep.key.
if "SSAGAN_SWEEP_KEY_FILE" not in os.environ:
    os.environ["SSAGAN_SWEEP_KEY_FILE"] = os.path.join(os.environ["RAY_TMPDIR"], "sweep.key")

import pytest  # noqa: E402

# Credentials for the local moto endpoint only; never real ones.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# A test that needs a system part this machine lacks (prometheus, chromium, ... : what
# scripts/setup-system.sh installs) fails, naming it; with SSAGAN_TEST_ALLOW_MISSING=1 it is skipped
# instead, and the skip and its reason are listed at the end of the run (-rs in pyproject.toml).
ALLOW_MISSING_ENV = "SSAGAN_TEST_ALLOW_MISSING"


def missing_part(what: str) -> NoReturn:
    reason = f"missing system part: {what}"
    if os.environ.get(ALLOW_MISSING_ENV) == "1":
        pytest.skip(reason)
    pytest.fail(f"{reason}; scripts/setup-system.sh installs it (or {ALLOW_MISSING_ENV}=1 to skip, listed)",
                pytrace=False)


def require_programs(*names: str, why: str) -> None:
    """Fails (or, allowed, skips) the calling test unless every program is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        missing_part(f"{', '.join(missing)} ({why})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `python -m MODULE ARGS` with some packages refused by an import hook (a finder first on
# sys.meta_path), as a fresh install without them would refuse them: argv[1] is the packages, comma
# separated, argv[2] the module.
_RUN_WITHOUT = """
import runpy, sys
blocked = set(sys.argv[1].split(","))
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_without(packages: tuple[str, ...], module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` in a fresh interpreter in which ``packages`` cannot be imported."""
    return subprocess.run([sys.executable, "-c", _RUN_WITHOUT, ",".join(packages), module, *args],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)


RAY_TEST_CPUS = 4


def start_session_ray() -> None:
    """The session's one local Ray (4 CPUs, no dashboard), unless a Ray is up in this process;
    for fixtures of a wider scope than ``ray_cluster``'s."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=RAY_TEST_CPUS, include_dashboard=False, log_to_driver=False)


@pytest.fixture
def ray_cluster():
    """The session's one local Ray (4 CPUs, no dashboard), started by the first test that asks for
    it and shared by the next ones (each in-process train.main joins it). A test that needs a Ray of
    its own shuts it down first (ray.shutdown()); the next test that asks starts it again."""
    start_session_ray()
    yield


@pytest.fixture
def one_torch_thread():
    """One intra-op thread while the test runs: tiny networks gain nothing from more, and on a shared
    2-core machine OpenMP's spinning threads make the many small ops of a double backward many
    times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """For what must be refused before Ray: joining or starting Ray, or training, fails the test,
    whether or not the session's shared Ray is up in this process."""
    from ssagan_dist import raycluster, train

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started or training began; the command should have stopped before")

    monkeypatch.setattr(raycluster, "init", refuse)
    monkeypatch.setattr(train, "fit", refuse)


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_the_end():
    yield
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real HTTP S3 endpoint on 127.0.0.1; yields its URL (http://127.0.0.1:PORT)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh empty bucket on the moto endpoint; yields (endpoint_url, bucket_name)."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    yield s3_server, name


@pytest.fixture(scope="session")
def sky(tmp_path_factory):
    """Synthetic sky shards at the tiny presets' shape (32x32, 8 frames): train/ and val/."""
    from data_tools import synth

    root = tmp_path_factory.mktemp("sky")
    synth.generate(str(root / "train"), clips=24, size=32, frames=8, seed=0, progress=False)
    synth.generate(str(root / "val"), clips=8, size=32, frames=8, seed=1, progress=False)
    return root


@pytest.fixture(scope="session")
def kuberay_crds(tmp_path_factory) -> Path:
    """The KubeRay v1.7.0 CRD files, for the RayJob/RayCluster schema tests (tests/test_k8s.py).

    The only way tests get KubeRay's CRDs (the product never reads them from a path of its own: its
    checker takes --crds DIR, $SSAGAN_KUBERAY_CRDS or the cluster kubectl reaches). They come from
    tests/data/kuberay-crds (KubeRay's ray-operator/config/crd/bases at v1.7.0, Apache-2.0,
    xz-compressed, unpacked here), so a fresh clone runs every test; $SSAGAN_KUBERAY_CRDS, when
    set, names another CRD folder to test against."""
    import lzma

    if os.environ.get("SSAGAN_KUBERAY_CRDS"):
        crds = Path(os.environ["SSAGAN_KUBERAY_CRDS"])
        if not sorted(crds.glob("*.y*ml")):
            missing_part(f"KubeRay CRD files in {crds} ($SSAGAN_KUBERAY_CRDS)")
        return crds
    crds = tmp_path_factory.mktemp("kuberay-crds")
    for packed in sorted((Path(__file__).parent / "data" / "kuberay-crds").glob("*.yaml.xz")):
        (crds / packed.name[: -len(".xz")]).write_bytes(lzma.decompress(packed.read_bytes()))
    return crds
