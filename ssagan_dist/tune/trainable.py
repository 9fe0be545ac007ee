"""One Tune trial = one real distributed training run of ``ssagan_dist.train``'s loop.

In Ray 2.60 Tune drives Train V2 only through a trainable: ``SweepTrial`` builds a ``TorchTrainer``
with ``train.build_ray_trainer`` and runs ``fit()`` in a thread. Train's own
``TuneReportCallback`` forwards metrics but never a Tune checkpoint, so PBT could not exploit.
Here a Train callback in the controller puts every (metrics, checkpoint) report on a Ray queue;
each ``step()`` takes one off and returns it to Tune, with a small Tune checkpoint that points
at the Train checkpoint (a pointer, not a copy: the weights stay where Train wrote them).

Each start of a trial is a new Train run ("generation", ``<trial_id>-g<N>``): Train V2 would
otherwise auto-resume a run of the same name. A trial that Tune restores (PBT exploit, a PBT
pause, a retry after a failure, a resumed sweep) starts its new generation from the checkpoint
Tune hands it, which is its own latest or, after a PBT exploit, the donor's; the training loop
loads G, D, both optimizers, the loader position, RNG and step from it and then applies this
trial's (explored) learning rates. Every start is recorded in ``history/<trial_id>.jsonl``.

A Train run that diverged (a loss went non-finite: ``train.stop_diverged``) ends its trial with a
last report that says so (``DIVERGED``) and the sweep's metric as NaN: the trial is over, as a
fault of its values, and Tune does not start it again with the same values as it would after an
error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from ssagan_dist import storage, tracking
from ssagan_dist.config import ConfigError, ExperimentConfig
from ssagan_dist.experiment import Experiment, validate
from ssagan_dist.runfolder import FitThread, RunFolder

POINTER_FILE = "train_checkpoint.json"
DIVERGED = "diverged"  # in a trial's last report when its training diverged: the error message
logger = logging.getLogger(__name__)

try:  # Train V2's controller hooks; only the UserCallback interface is public in 2.60
    from ray.train.v2._internal.execution.callback import ControllerCallback
except ImportError:  # pragma: no cover - a Ray without it: abort falls back to the actor's fate sharing
    ControllerCallback = object  # type: ignore[misc,assignment]
from ray.train.v2.api.callback import UserCallback
from ray.tune import Trainable


@dataclass
class SweepContext:
    """What every trial needs from the driver (pickled into each trial)."""

    base: dict[str, Any]  # the resolved configuration every trial starts from
    clip_shape: list[int]
    sweep_url: str  # the Tune experiment folder: train_runs/, tensorboard/, history/ live in it
    keys: list[str]  # the swept config keys
    metric: str  # the sweep's metric
    report_timeout_s: float
    tracking: dict[str, Any] = field(default_factory=dict)  # tracking.start_sweep: W&B group, MLflow parent

    @property
    def endpoint(self) -> Optional[str]:
        return self.base["run"].get("s3_endpoint")

    def url(self, *parts: str) -> str:
        return storage.join(self.sweep_url, *parts)


def trial_config(ctx: SweepContext, values: dict[str, Any]) -> Experiment:
    """The base configuration with a trial's values; types and ranges checked as in training."""
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), ctx.base)
    for key, value in values.items():
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from the samplers
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except Exception as e:
            raise ConfigError(f"config key {key!r} = {value!r}: {e}") from None
    return validate(cfg)


def plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}


# -- history: one JSON line per start of a trial ---------------------------------------------------

def append_history(ctx: SweepContext, trial_id: str, record: dict[str, Any]) -> None:
    """Rewrite ``history/<trial>.jsonl`` with one more line (object stores cannot append)."""
    url = ctx.url("history", f"{trial_id}.jsonl")
    old = storage.read_bytes(url, ctx.endpoint).decode() if storage.exists(url, ctx.endpoint) else ""
    line = json.dumps({"time": time.time(), **record}, sort_keys=True)
    storage.write_bytes_atomic(url, (old + line + "\n").encode(), ctx.endpoint)


def read_history(sweep_url: str, trial_id: str, endpoint: Optional[str] = None) -> list[dict[str, Any]]:
    url = storage.join(sweep_url, "history", f"{trial_id}.jsonl")
    if not storage.exists(url, endpoint):
        return []
    return [json.loads(ln) for ln in storage.read_bytes(url, endpoint).decode().splitlines() if ln.strip()]


def next_generation(ctx: SweepContext, trial_id: str) -> int:
    fs, path = storage.filesystem(ctx.url("train_runs"), ctx.endpoint)
    if not fs.exists(path):
        return 0
    prefix = f"{trial_id}-g"
    taken = [int(name[len(prefix):]) for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
             if name.startswith(prefix) and name[len(prefix):].isdigit()]
    return max(taken, default=-1) + 1


# -- Train controller -> trial function ------------------------------------------------------------

class ReportForwarder(UserCallback):
    """Runs in the Train controller: each report (rank 0's metrics, the persisted checkpoint's
    folder name) goes on the trial's queue. ``put`` blocks while the trial function has not taken
    the previous one, so training waits for Tune's decision (continue / stop / exploit)."""

    def __init__(self, reports):
        self.reports = reports

    def after_report(self, run_context, metrics, checkpoint) -> None:
        item = {"metrics": dict(metrics[0]), "checkpoint": checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
                if checkpoint is not None else None}
        self.reports.put(item)


class ControllerAnnouncer(ControllerCallback):
    """Runs in the Train controller as it starts: hands the trial function the controller's
    handle, so a trial that Tune stops can abort its Train run (workers and placement group)
    instead of leaving it behind (ray-project/ray#54305)."""

    def __init__(self, reports):
        self.reports = reports

    def after_controller_start(self, train_run_context) -> None:
        import ray

        self.reports.put({"controller": ray.get_runtime_context().current_actor})


class TrainRun:
    """``fit()`` of one Train run in a thread, and the queue its controller reports through."""

    def __init__(self, trainer_factory):
        from ray.util.queue import Queue

        self.reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
        self.trainer = trainer_factory([ControllerAnnouncer(self.reports), ReportForwarder(self.reports)])
        self.controller = None
        self.thread = FitThread(self.trainer, name="train-fit")  # its error is raised by finish()

    def start(self) -> None:
        self.thread.start()

    def next_report(self, timeout_s: float) -> Optional[dict[str, Any]]:
        """The next report; None once training has finished. Raises TimeoutError after
        ``timeout_s`` without one (a hung run)."""
        from ray.util.queue import Empty

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                item = self.reports.get(timeout=2.0)
            except Empty:
                if not self.thread.is_alive():
                    try:  # a last report may have landed as fit() returned
                        item = self.reports.get_nowait()
                    except Empty:
                        return None
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"no validation report for {timeout_s:.0f} s (report_timeout_s)") from None
                else:
                    continue
            if "controller" in item:
                self.controller = item["controller"]
                continue
            return item

    def finish(self) -> None:
        """Wait for fit() and raise its error, if any."""
        self.thread.wait()

    def abort(self, timeout_s: float = 90.0) -> None:
        """Stop a Train run that is still going (Tune stopped or paused the trial, or it hung)."""
        import ray
        from ray.util.queue import Empty

        if self.thread.is_alive() and self.controller is not None:
            self.controller.abort.remote()
        deadline = time.monotonic() + timeout_s
        while self.thread.is_alive() and time.monotonic() < deadline:
            try:  # unblock a controller waiting in ReportForwarder.put, so the abort can run
                self.reports.get_nowait()
            except (Empty, ray.exceptions.RayError):
                pass
            self.thread.join(0.5)
        if self.thread.is_alive() and self.controller is not None:
            logger.warning("Train controller did not abort within %.0f s: killing it", timeout_s)
            ray.kill(self.controller, no_restart=True)
            self.thread.join(timeout_s)

    def close(self) -> None:
        try:
            self.reports.shutdown(force=True)
        except Exception:  # noqa: BLE001 - the queue actor may already be gone with its owner
            pass


# -- the trial ------------------------------------------------------------------------------------

class SweepTrial(Trainable):
    """A Tune trial: ``step()`` returns the next validation report of its Train run.

    A class, not a function trainable: Tune calls ``cleanup()`` synchronously when it stops or
    pauses a trial (ASHA, PBT), so the Train run is aborted (workers and placement group freed)
    before the trial's actor exits. A function trainable's thread is torn down without waiting,
    and Train V2's placement-group cleaner cannot be relied on (it fails to find its cluster
    where two Ray instances share a machine), which leaked trials' workers (ray-project/ray#54305).
    """

    def setup(self, config: dict[str, Any], ctx: SweepContext) -> None:
        self.ctx = ctx
        self.values = plain({k: config[k] for k in ctx.keys})
        self.exp = trial_config(ctx, self.values)
        self.cfg = self.exp.cfg  # the same object: the run folder set at each start is in exp's dump
        self.restored: Optional[dict[str, Any]] = None
        self.run: Optional[TrainRun] = None
        self.pointer: Optional[dict[str, Any]] = None
        self.finished = False

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Called before the first step when Tune restores this trial (its own checkpoint, or
        after a PBT exploit, the donor's): the new generation starts from that Train checkpoint,
        or afresh when there was none yet."""
        pointer = Path(checkpoint_dir) / POINTER_FILE
        self.restored = json.loads(pointer.read_text()) if pointer.exists() else None

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Tune saves every reported checkpoint and a trial's end, which may come before any
        Train checkpoint (a run that diverged at once): then there is nothing to point at."""
        if self.pointer is not None:
            (Path(checkpoint_dir) / POINTER_FILE).write_text(json.dumps(self.pointer, sort_keys=True))

    def _start(self) -> None:
        from ssagan_dist import train

        ctx, cfg, trial_id = self.ctx, self.cfg, self.trial_id
        self.generation = next_generation(ctx, trial_id)
        cfg.run.storage_path = ctx.url("train_runs")
        cfg.run.name = f"{trial_id}-g{self.generation:03d}"
        start: dict[str, Any] = {"event": "start", "trial_id": trial_id, "generation": self.generation,
                                 "run_name": cfg.run.name, "config": self.values, "start_from": None, "step": 0}
        if self.restored is not None:
            p = self.restored
            start.update(start_from=p["uri"], step=p["step"])
            if p["trial_id"] != trial_id:  # PBT: a better trial's weights, this trial's explored values
                start.update(event="exploit", donor_trial=p["trial_id"], donor_config=p["config"],
                             explored={k: v for k, v in self.values.items() if p["config"].get(k) != v})
            else:
                start["event"] = "resume"
            self.pointer = p
        append_history(ctx, trial_id, start)
        print(f"[tune] trial {trial_id}: {start['event']} as Train run {cfg.run.name}"
              + (f" from {start['start_from']}" if start["start_from"] else ""), flush=True)

        def trainer_factory(callbacks):
            return train.build_ray_trainer(cfg, ctx.clip_shape, config_yaml=self.exp.dump(), callbacks=callbacks,
                                           start_from=start["start_from"],
                                           trial=trial_id, tensorboard_url=ctx.url("tensorboard", trial_id),
                                           tracking_context=tracking.trial_context(ctx.tracking, ctx.sweep_url,
                                                                                   trial_id, self.values, start))

        self.run = TrainRun(trainer_factory)
        self.run.start()

    def step(self) -> dict[str, Any]:
        if self.run is None:
            if self.restored is not None and self.restored["step"] >= self.cfg.loop.max_steps:
                # finished before the sweep was interrupted, but Tune's state had not recorded it
                self.finished = True
                return {**self.restored.get("metrics", {}), "done": True}
            self._start()
        item = self.run.next_report(self.ctx.report_timeout_s)
        if item is None:  # fit() ended without reaching max_steps: diverged, else raise its error (Tune retries)
            self.run.finish()
            diverged = self._diverged()
            if diverged is None:
                raise RuntimeError(f"Train run {self.cfg.run.name} ended before loop.max_steps")
            self.finished = True
            return {"step": diverged["step"], self.ctx.metric: math.nan, DIVERGED: diverged["error"],
                    **{f"hp/{k}": v for k, v in self.values.items()}, "generation": self.generation,
                    "train_run": self.cfg.run.name, "checkpoint_uri": "", "done": True}
        metrics = dict(item["metrics"])
        uri = RunFolder.of(self.cfg).join(item["checkpoint"]) if item["checkpoint"] else ""
        step = int(metrics.get("step", 0))
        self.finished = step >= self.cfg.loop.max_steps
        metrics.update({f"hp/{k}": v for k, v in self.values.items()}, generation=self.generation,
                       train_run=self.cfg.run.name, checkpoint_uri=uri)
        if uri:
            self.pointer = {"uri": uri, "trial_id": self.trial_id, "step": step, "config": self.values,
                            "metrics": metrics.copy()}
            metrics["should_checkpoint"] = True  # every report: PBT copies it, a resumed sweep starts from it
        metrics["done"] = self.finished
        return metrics

    def _diverged(self) -> Optional[dict[str, Any]]:
        """What rank 0 wrote when the Train run diverged (its error and step), if it did."""
        return RunFolder.of(self.cfg).diverged()

    def cleanup(self) -> None:
        if self.run is None:
            return
        if self.finished:  # the last report is in: let fit() write its final state
            self.run.thread.join(120)
        if self.run.thread.is_alive():
            self.run.abort()
        self.run.close()

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        return False  # a new actor per trial start (reuse_actors is off)
