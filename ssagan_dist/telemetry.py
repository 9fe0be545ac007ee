"""Prometheus metrics from every training worker (docs/observability.md lists each one).

Each worker owns a ``TrainingTelemetry``: its own ``CollectorRegistry`` served by a
``prometheus_client`` HTTP server on the first free port in ``[telemetry.port, telemetry.port +
telemetry.port_span)``, so ranks sharing a node and two runs on one machine never collide. Every
series carries the labels run, trial ("" outside Tune), rank and model.

The per-step hook takes host floats only and costs a few microseconds; losses and other tensors
reach it at logging steps, already read by the loop, so exporting adds no device synchronisation.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import push_to_gateway, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ssagan_dist.config import TelemetryConfig

log = logging.getLogger(__name__)

PREFIX = "ssagan_"
LABELS = ("run", "trial", "rank", "model")
PUSH_JOB = "ssagan_dist"
PUSH_TIMEOUT_S = 5.0

# From a ~10 ms tiny CPU step to minutes-long steps of paper-sized models on slow storage.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"))
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, float("inf"))
CHECKPOINT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))

# Transient S3 retries, counted process-wide by the storage layer (count_s3_retry) and exported
# by every live TrainingTelemetry of the process with its labels.
_s3_retries: dict[str, int] = {}
_s3_lock = threading.Lock()


def count_s3_retry(operation: str) -> None:
    """Count one transient S3 retry of ``operation`` (e.g. "get_object") in this process."""
    with _s3_lock:
        _s3_retries[operation] = _s3_retries.get(operation, 0) + 1


class _S3RetryCollector(Collector):
    def __init__(self, labels: dict[str, str]):
        self.labels = labels

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(f"{PREFIX}s3_retries", "Transient S3 errors retried by the storage layer",
                                     labels=[*LABELS, "operation"])
        with _s3_lock:
            counts = sorted(_s3_retries.items())
        for operation, n in counts:
            family.add_metric([*self.labels.values(), operation], n)
        yield family


class _LabelledProcessCollector(Collector):
    """prometheus_client's process metrics (RSS, CPU seconds, open fds) with the worker's labels."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.process = ProcessCollector(namespace=PREFIX.rstrip("_"), registry=None)

    def collect(self) -> Iterable[Metric]:
        for family in self.process.collect():
            family.samples = [s._replace(labels={**s.labels, **self.labels}) for s in family.samples]
            yield family


def _sd_filename(run: str, trial: str, rank: int) -> str:
    """<run>-<trial>-<rank>.json: a restarted rank overwrites its own stale target."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run}-{trial}-{rank}")
    return f"{safe}.json"


def _advertised_host(host: str) -> str:
    """The address Prometheus should scrape: the bound one, or this node's IP for a wildcard bind."""
    if host not in ("", "0.0.0.0", "::"):
        return f"[{host}]" if ":" in host else host
    if "ray" in sys.modules:  # inside a Ray worker: the IP Ray uses for this node
        try:
            import ray.util

            return ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - any failure: fall back to the host name
            pass
    return socket.gethostname()


class TrainingTelemetry:
    """One worker's metrics; see the module docstring. Disabled: every method is a no-op."""

    def __init__(self, cfg: "TelemetryConfig", *, run: str, trial: str, rank: int, world: int, model: str):
        self.cfg = cfg
        self.enabled = bool(cfg.enabled)
        self.labels = {"run": str(run), "trial": str(trial or ""), "rank": str(rank), "model": str(model)}
        self.world = world
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._port: Optional[int] = None
        self._sd_file: Optional[Path] = None
        self._closed = False
        if self.enabled:
            self._build_metrics()

    # -- metric definitions -----------------------------------------------------------------
    def _build_metrics(self) -> None:
        self.registry = reg = CollectorRegistry()
        names = list(LABELS)
        values = list(self.labels.values())

        def one(kind, name, doc, **kwargs):
            return kind(PREFIX + name, doc, names, registry=reg, **kwargs).labels(*values)

        self._steps = one(Counter, "steps", "Training steps completed by this worker process")
        self._clips = one(Counter, "clips", "Training clips processed by this rank")
        self._step_time = one(Histogram, "step_duration_seconds",
                              "Wall time of one training step, data wait included", buckets=STEP_BUCKETS)
        self._data_wait = one(Histogram, "data_wait_seconds",
                              "Time one training step waited for its batches", buckets=WAIT_BUCKETS)
        self._heartbeat = one(Gauge, "heartbeat_timestamp_seconds",
                              "Unix time of this rank's last completed step (or of its start)")
        self._active = one(Gauge, "training_active", "1 while this worker trains, 0 once it has closed")
        self._global_step = one(Gauge, "global_step", "Latest global training step seen by this rank")
        self._start_time = one(Gauge, "worker_start_timestamp_seconds",
                               "Unix time this worker process started (changes on every restart)")
        self._start_step = one(Gauge, "start_step", "Step this worker process started from (0 = fresh start)")
        self._restarts = one(Counter, "restarts",
                             "Times this worker process resumed from a checkpoint (a restart is a new process)")
        self._nonfinite = one(Counter, "nonfinite_stats", "Training statistics that were NaN or infinite")
        self._checkpoint_time = one(Histogram, "checkpoint_duration_seconds",
                                    "Time to write and report one checkpoint", buckets=CHECKPOINT_BUCKETS)
        self._checkpoint_bytes = one(Counter, "checkpoint_bytes", "Bytes of checkpoints written by this rank")
        self._checkpoint_last_bytes = one(Gauge, "checkpoint_last_bytes", "Size of this rank's last checkpoint")
        self._checkpoint_last_time = one(Gauge, "checkpoint_last_timestamp_seconds",
                                         "Unix time this rank's last checkpoint finished")
        self._validations = one(Counter, "validations", "Validation passes completed")
        self._validation_step = one(Gauge, "validation_step", "Training step of the latest validation")
        self._stat = Gauge(PREFIX + "train_stat", "Per-step training statistic at the latest logging step "
                           "(losses, D outputs, learning rates lr_g/lr_d)", [*names, "stat"], registry=reg)
        self._validation = Gauge(PREFIX + "validation_metric", "Latest validation score: psnr, ssim, mse, "
                                 "baseline_* (copy frame 0 forward), clips (clips scored)",
                                 [*names, "metric"], registry=reg)
        self._memory = Gauge(PREFIX + "accelerator_memory_bytes", "CUDA memory of this rank's device "
                             "(kind: allocated, max_allocated, reserved)", [*names, "kind"], registry=reg)
        reg.register(_S3RetryCollector(self.labels))
        reg.register(_LabelledProcessCollector(self.labels))

        now = time.time()
        self._start_time.set(now)
        self._heartbeat.set(now)
        self._start_step.set(0)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> Optional[int]:
        return self._port

    def start(self) -> None:
        """Serve /metrics on the first free port of the range; announce it in telemetry.sd_dir."""
        if not self.enabled or self._server is not None:
            return
        first, span = int(self.cfg.port), int(self.cfg.port_span)
        for port in range(first, first + span):
            try:
                self._server, self._thread = start_http_server(port, addr=self.cfg.host, registry=self.registry)
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise RuntimeError(f"metrics: cannot serve on {self.cfg.host}:{port} (config keys telemetry.host, "
                                   f"telemetry.port): {e}") from e
            self._port = port
            break
        else:
            raise RuntimeError(f"metrics: no free port in [{first}, {first + span}) on {self.cfg.host} (config keys "
                               "telemetry.port, telemetry.port_span); widen the span or set telemetry.enabled=false")
        self._active.set(1)
        self._heartbeat.set(time.time())
        if self.cfg.sd_dir:
            self._write_sd_file()

    def _write_sd_file(self) -> None:
        folder = Path(self.cfg.sd_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        target = [{"targets": [f"{_advertised_host(self.cfg.host)}:{self._port}"], "labels": {}}]
        path = folder / _sd_filename(self.labels["run"], self.labels["trial"], int(self.labels["rank"]))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(target))
        os.replace(tmp, path)  # Prometheus watches the folder: never let it read half a file
        self._sd_file = path

    def close(self) -> None:
        """Final push (if a Pushgateway is set), drop the file_sd target, stop the server."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        self._active.set(0)
        self._push()
        if self._sd_file is not None:
            # Only our own: a restarted process of the same rank may have rewritten it since.
            try:
                if json.loads(self._sd_file.read_text())[0]["targets"][0].endswith(f":{self._port}"):
                    self._sd_file.unlink()
            except (OSError, ValueError, LookupError):
                pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "TrainingTelemetry":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _push(self) -> None:
        if not self.cfg.pushgateway:
            return
        try:
            push_to_gateway(self.cfg.pushgateway, job=PUSH_JOB, registry=self.registry,
                            grouping_key={k: self.labels[k] for k in ("run", "trial", "rank")},
                            timeout=PUSH_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a monitoring outage must not stop training
            log.warning("metrics: push to telemetry.pushgateway failed: %s", e)

    # -- what the training loop reports ------------------------------------------------------
    def step(self, clips: int, step_seconds: float, data_wait_seconds: float) -> None:
        """One training step done: ``clips`` this rank processed, its wall time and data wait."""
        if not self.enabled:
            return
        self._steps.inc()
        self._clips.inc(clips)
        self._step_time.observe(step_seconds)
        self._data_wait.observe(data_wait_seconds)
        self._heartbeat.set(time.time())

    def stats(self, step: int, stats: dict[str, float]) -> None:
        """Logging step: the loop's statistics (already host floats) and the device's memory."""
        if not self.enabled:
            return
        self._global_step.set(step)
        values = self.labels.values()
        for name, value in stats.items():
            value = float(value)
            if not math.isfinite(value):
                self._nonfinite.inc()
            self._stat.labels(*values, name).set(value)
        memory = _accelerator_memory()
        for kind, nbytes in memory.items():
            self._memory.labels(*values, kind).set(nbytes)

    def validation(self, step: int, results: dict[str, float]) -> None:
        """Validation scores (psnr, ssim, mse, baseline_*, clips); non-numbers are skipped.
        ``count`` (what ``scoring.score`` calls the clips it scored) is exported as ``clips``."""
        if not self.enabled:
            return
        self._global_step.set(step)
        self._validation_step.set(step)
        self._validations.inc()
        self._heartbeat.set(time.time())
        values = self.labels.values()
        for name, value in results.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._validation.labels(*values, "clips" if name == "count" else name).set(float(value))

    def checkpoint(self, seconds: float, nbytes: int) -> None:
        """A checkpoint was written in ``seconds`` (``nbytes`` by this rank); pushes if configured."""
        if not self.enabled:
            return
        self._checkpoint_time.observe(seconds)
        self._checkpoint_bytes.inc(nbytes)
        self._checkpoint_last_bytes.set(nbytes)
        now = time.time()
        self._checkpoint_last_time.set(now)
        self._heartbeat.set(now)
        self._push()

    def resumed(self, step: int) -> None:
        """This worker (re)started from a checkpoint at ``step``."""
        if not self.enabled:
            return
        self._restarts.inc()
        self._start_step.set(step)
        self._global_step.set(step)


def _accelerator_memory() -> dict[str, int]:
    """CUDA allocator counters of the current device (no synchronisation); {} without CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    device = torch.cuda.current_device()
    return {"allocated": torch.cuda.memory_allocated(device),
            "max_allocated": torch.cuda.max_memory_allocated(device),
            "reserved": torch.cuda.memory_reserved(device)}
