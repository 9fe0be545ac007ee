"""Start or join Ray without a silent wait on a cluster that is gone.

``ray.init()`` with no address joins the cluster whose address the last ``ray start`` recorded
(``ray_current_cluster`` in Ray's temp dir, ``$RAY_TMPDIR/ray`` or ``/tmp/ray``). When that head
has died (crashed, OOM-killed, stopped by hand) the file stays behind, and ray.init waits on it
for many minutes with Ray's hint in an INFO line only. ``init`` probes the address first:

- a recorded address that does not answer within ``RECORDED_PROBE_S`` is an error at once,
  saying what to do (start the head again, name a live one, or ``ray.address=local``);
- an explicit address (``ray.address`` or ``RAY_ADDRESS``) gets a bounded wait, printed,
  of ``$SSAGAN_RAY_CONNECT_WAIT_S`` (default 60 s): a head that is still starting comes up.

Addresses with a scheme (``ray://`` clients) are left to Ray.

``init`` also gives every worker process of the job (Ray Train's controller and its helper
actors) its cluster's address as ``RAY_ADDRESS`` (``set_address_in_worker``, a worker-process
setup hook): Ray Train 2.60's PlacementGroupCleaner looks its cluster up without an address, and
on a machine that runs more than one Ray cluster (the demo's head beside another user's) it
failed with a traceback, "Found multiple active Ray instances".
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Optional

from ssagan_dist.config import ConfigError

CONNECT_WAIT_ENV = "SSAGAN_RAY_CONNECT_WAIT_S"
RECORDED_PROBE_S = 3.0


def _answers(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def target(address: Optional[str]) -> tuple[Optional[str], str, bool]:
    """(host:port ray.init would join or None, where that address comes from, whether the user
    named it explicitly)."""
    from ray._common.utils import get_ray_address_file
    from ray._private.utils import read_ray_address

    if address not in (None, "", "auto"):
        return (None if address == "local" else address), f"ray.address = {address!r}", True
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}", True
    recorded = read_ray_address()
    if recorded:
        return recorded, f"Ray's recorded address in {get_ray_address_file(None)}, left by `ray start`", False
    return None, "a local Ray of this command", False


def check_reachable(address: Optional[str]) -> None:
    """Raise ConfigError (one line: the address, where it came from, what to do) unless the Ray
    cluster that ``ray.init(address=address)`` would join answers; see the module doc."""
    joined, source, explicit = target(address)
    if joined is None or "://" in joined:
        return
    host, _, port = joined.rpartition(":")
    if not port.isdigit():
        return  # not host:port: ray.init says what is wrong with it
    if not explicit:
        if not _answers(host, int(port), RECORDED_PROBE_S):
            raise ConfigError(
                f"no Ray cluster answers at {joined} ({source}): its head is gone. Start it again "
                "(ray start --head), join a live one (ray.address=HOST:PORT or RAY_ADDRESS), or train on "
                "a Ray of this command's own (ray.address=local)")
        return
    wait_s = float(os.environ.get(CONNECT_WAIT_ENV, "60"))
    deadline, said = time.monotonic() + wait_s, False
    while not _answers(host, int(port), min(RECORDED_PROBE_S, max(wait_s, 0.1))):
        if time.monotonic() >= deadline:
            raise ConfigError(f"no Ray cluster answers at {joined} ({source}) after {wait_s:.0f} s: start it, or "
                              f"fix the address ({CONNECT_WAIT_ENV} sets the wait)")
        if not said:
            print(f"[ray] {joined} ({source}) does not answer yet; waiting up to {wait_s:.0f} s ({CONNECT_WAIT_ENV})",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(1)


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env of the Ray job this process is the driver of (``ray job submit``), if any."""
    import json

    try:
        return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def set_address_in_worker() -> None:
    """Worker-process setup hook (see the module doc): ``RAY_ADDRESS`` is this worker's cluster."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def init(address: Optional[str], log_level: str = "INFO", **kwargs: Any) -> None:
    """``ray.init(address=address, **kwargs)`` after ``check_reachable``; ``log_level``: Ray's own
    console logging in this process (``ray.init``'s ``logging_level``: "Connecting to existing
    Ray cluster ..." and the like are INFO)."""
    import logging

    import ray

    check_reachable(address)
    hook = "worker_process_setup_hook"
    if "runtime_env" not in kwargs and hook not in _job_runtime_env():  # a job's own hook: left alone
        kwargs["runtime_env"] = {hook: f"{__name__}.{set_address_in_worker.__name__}"}
    ray.init(address=address, logging_level=logging.getLevelName(log_level), **kwargs)
