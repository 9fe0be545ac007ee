"""A sweep's results: its settings (sweep.json), its trials with their reports and start
history, and ``find_best``, the one rule that names the winner for the live progress line,
best.yaml and the report.

"Best" is always a report whose checkpoint still exists: each Train run keeps only some of its
checkpoints (``checkpoint.keep``, ranked by ``checkpoint.best_metric``, which need not be the
sweep's metric or mode), so a trial's best validation may name a checkpoint retention deleted.
A diverged trial never wins: its values do not train to ``loop.max_steps``, so best.yaml
could not retrain them.

Stored results are read as plain data, never unpickled: each trial's own ``result.json`` (one
JSON line per report; ``progress.csv`` where it is missing), and the trial list with Tune's status
of each from the newest ``experiment_state-*.json`` parsed by ``json`` alone, so its cloudpickled
fields stay hex strings. Ray's ``ExperimentAnalysis`` would unpickle that file, which whoever can
write the sweep folder controls (``trust.py``; docs/reliability.md, "Trust boundaries"). The
progress line builds the same ``Trial``s from Tune's callbacks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ssagan_dist import checkpointing, storage
from ssagan_dist.tune.trainable import DIVERGED, read_history

SWEEP_FILE = "sweep.json"  # the sweep file's settings and the run's, written by the driver
RESULT_FILE, PROGRESS_FILE = "result.json", "progress.csv"  # what Tune writes in each trial's folder
log = logging.getLogger(__name__)


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
    """Every trial of the sweep folder with its reports in order (module docstring: plain JSON and
    CSV only); none before Tune has written anything."""
    fs, root = storage.filesystem(sweep_url, endpoint)
    if not fs.isdir(root):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    listed = _experiment_trials(sweep_url, [n for n in names if re.fullmatch(r"experiment_state-[^/]+\.json", n)],
                                endpoint)
    in_state = {folder for _, _, folder in listed}
    found: list[tuple[str, str, Optional[str], list[dict[str, Any]]]] = []
    for trial_id, status, folder in listed:
        found.append((trial_id, status, folder, _trial_results(sweep_url, folder, endpoint) if folder else []))
    for folder in names:  # trial folders Tune's saved state does not list yet (it is saved every few seconds)
        if folder in in_state or not folder.startswith("SweepTrial_"):
            continue
        rows = _trial_results(sweep_url, folder, endpoint)
        trial_id = next((str(r["trial_id"]) for r in rows if r.get("trial_id")), None)
        if trial_id is not None and trial_id not in {t[0] for t in found}:
            found.append((trial_id, "TERMINATED" if rows[-1].get("done") else "RUNNING", folder, rows))
    return [Trial(trial_id, [r for r in rows if "step" in r], status, read_history(sweep_url, trial_id, endpoint))
            for trial_id, status, folder, rows in found]


def _experiment_trials(sweep_url: str, states: list[str], endpoint: Optional[str]
                       ) -> list[tuple[str, str, Optional[str]]]:
    """(trial id, Tune's status, its folder) of each trial in the newest experiment state, parsed as
    plain JSON: a ``CLOUDPICKLE_FALLBACK`` field stays a dict of hex that nothing decodes."""
    for name in reversed(states):  # the newest session's first (names end in its start time)
        try:
            doc = json.loads(storage.read_bytes(storage.join(sweep_url, name), endpoint))
            trials = []
            for pair in doc["trial_data"]:
                state = json.loads(pair[0])
                folder = state.get("relative_logdir")
                if not isinstance(folder, str) or "/" in folder or "\\" in folder or folder.startswith("."):
                    folder = None  # only a folder of this sweep folder is read
                trials.append((str(state["trial_id"]), str(state["status"]), folder))
            return trials
        except (ValueError, KeyError, TypeError, IndexError) as e:  # being rewritten, or not Tune's
            log.warning("cannot read %s (%s): its trials are found by their folders", name, type(e).__name__)
    return []


def _trial_results(sweep_url: str, folder: str, endpoint: Optional[str]) -> list[dict[str, Any]]:
    """A trial folder's reports: result.json's lines (nested dicts flattened with '/', as Tune's
    own tables do), else progress.csv's rows; a line cut short by a write in progress is left out."""
    json_url, csv_url = storage.join(sweep_url, folder, RESULT_FILE), storage.join(sweep_url, folder, PROGRESS_FILE)
    rows = []
    if storage.exists(json_url, endpoint):
        for line in storage.read_bytes(json_url, endpoint).decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(record, dict):
                rows.append(_report(_flatten(record)))
    elif storage.exists(csv_url, endpoint):
        text = storage.read_bytes(csv_url, endpoint).decode("utf-8", "replace")
        rows = [_report({k: _csv_value(v) for k, v in row.items() if k}) for row in csv.DictReader(io.StringIO(text))]
    return rows


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)", re.I)


def _csv_value(text: Optional[str]) -> Any:
    """A progress.csv cell as Tune wrote it: empty = no value, numbers and booleans typed, the
    rest (trial ids such as 12345_00000 included) text."""
    if text is None or text == "":
        return math.nan
    if text in ("True", "False"):
        return text == "True"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _report(row: dict[str, Any]) -> dict[str, Any]:
    """A report as the trial made it: a NaN means no value (a diverged trial's metric included)."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
