"""A sweep's results: its settings (sweep.json), its trials with their reports and start
history, and ``find_best``, the one rule that names the winner for the live progress line,
best.yaml and the report.

"Best" is always a report whose checkpoint still exists: each Train run keeps only some of its
checkpoints (``run.keep_checkpoints``, ranked by ``run.best_metric``, which need not be the
sweep's metric or mode), so a trial's best validation may name a checkpoint retention deleted.
A diverged trial never wins: its values do not train to ``trainer.max_steps``, so best.yaml
could not retrain them.

Stored results are read through Ray's ``ExperimentAnalysis`` (Tune's experiment state and each
trial's result.json); the progress line builds the same ``Trial``s from Tune's callbacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ssagan_dist import checkpointing, storage
from ssagan_dist.tune.trainable import DIVERGED, read_history

SWEEP_FILE = "sweep.json"  # the sweep file's settings and the run's, written by the driver


@dataclass
class Trial:
    trial_id: str
    results: list[dict[str, Any]]  # its reports in order, one per validation
    tune_status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED or ERROR
    history: list[dict[str, Any]] = field(default_factory=list)  # its starts (trainable.append_history)

    @property
    def last(self) -> dict[str, Any]:
        return self.results[-1] if self.results else {}

    @property
    def diverged(self) -> Optional[str]:
        return self.last.get(DIVERGED)

    def values(self, keys: list[str]) -> dict[str, Any]:
        """The trial's hyperparameters as of its last report (PBT changes them)."""
        last = self.last
        return {k: last.get(f"hp/{k}") for k in keys}

    def status(self, max_steps: int) -> str:
        """diverged, finished, errored, stopped early (by the scheduler), or Tune's running,
        pending or paused."""
        if self.diverged:
            return "diverged"
        if self.last.get("step", 0) >= max_steps:
            return "finished"
        if self.tune_status == "ERROR":
            return "errored"
        if self.tune_status == "TERMINATED":
            return "stopped early"
        return self.tune_status.lower()


@dataclass
class Best:
    trial_id: str
    value: float
    baseline: Optional[float]
    checkpoint: str
    step: int
    values: dict[str, Any]  # the swept keys' values at that report


def baseline_key(metric: str) -> Optional[str]:
    """val/psnr -> val/baseline_psnr: the copy-frame baseline scored on the same clips."""
    head, _, tail = metric.rpartition("/")
    return f"{head}/baseline_{tail}" if head == "val" and not tail.startswith("baseline_") else None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_report(trial: Trial, metric: str, mode: str, endpoint: Optional[str]) -> Optional[dict[str, Any]]:
    """The trial's best report by ``metric`` (``mode`` max or min) whose checkpoint still exists."""
    scored = sorted((r for r in trial.results if finite(r.get(metric)) and r.get("checkpoint_uri")),
                    key=lambda r: r[metric], reverse=mode == "max")
    return next((r for r in scored
                 if storage.exists(storage.join(r["checkpoint_uri"], checkpointing.MODEL_FILE), endpoint)), None)


def find_best(trials: list[Trial], metric: str, mode: str, keys: list[str], endpoint: Optional[str]) -> Optional[Best]:
    """The best report of any trial that did not diverge, among those whose checkpoint still
    exists; on a tie, the earlier trial."""
    candidates = [(t, r) for t in trials if not t.diverged
                  for r in [best_report(t, metric, mode, endpoint)] if r is not None]
    if not candidates:
        return None
    trial, report = (max if mode == "max" else min)(candidates, key=lambda tr: tr[1][metric])
    base = baseline_key(metric)
    return Best(trial.trial_id, float(report[metric]), report.get(base) if base else None, report["checkpoint_uri"],
                int(report["step"]), {k: report.get(f"hp/{k}") for k in keys})


def read_sweep_meta(sweep_url: str, endpoint: Optional[str] = None) -> dict[str, Any]:
    url = storage.join(sweep_url, SWEEP_FILE)
    if not storage.exists(url, endpoint):
        raise FileNotFoundError(f"{sweep_url} is not a sweep folder (no {SWEEP_FILE})")
    return json.loads(storage.read_bytes(url, endpoint))


def load_trials(sweep_url: str, endpoint: Optional[str] = None) -> list[Trial]:
    """Every trial Tune recorded in the sweep folder, with its reports in order; none before
    Tune has written its experiment state."""
    from ray.tune import ExperimentAnalysis

    path, fs = sweep_url, None
    if storage.is_s3(sweep_url):  # Ray's S3 filesystem takes bucket/key paths (as train.storage_for_ray)
        path, fs = sweep_url[len("s3://"):], storage.ray_filesystem(endpoint)
    try:
        analysis = ExperimentAnalysis(path, storage_filesystem=fs)
    except ValueError:  # no experiment_state-*.json (yet)
        return []
    frames = analysis.trial_dataframes
    return [Trial(t.trial_id, [r for r in map(_report, frames[t.trial_id].to_dict("records")) if "step" in r],
                  t.status, read_history(sweep_url, t.trial_id, endpoint))
            for t in analysis.trials]


def _report(row: dict[str, Any]) -> dict[str, Any]:
    """A row of Tune's table as the trial reported it: the table fills keys a report lacks with
    NaN (a reported NaN means no value as well)."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
