"""Experiment tracking in MLflow and Weights & Biases (``tracking.backends``), written by rank 0 only.

``tracking.backends`` is ``none`` (the default), ``mlflow``, ``wandb`` or a list of them. Where and who
come from the trackers' own environment variables, never from the config: ``MLFLOW_TRACKING_URI``
(and ``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_TRACKING_TOKEN`` / ``_USERNAME`` / ``_PASSWORD``),
``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE``, ``WANDB_API_KEY``, ``WANDB_DIR``.

One tracker run per training run, and per sweep trial (docs/tracking.md):

- parameters: the keys the model reads (``experiment.dump``), once, when the tracker run is created;
- metrics: every line of metrics.jsonl at its step (train/*, val/* beside val/baseline_*);
- artifacts: each validation's sample strip (PNG), clip (GIF; a ``wandb.Video`` on W&B) and PSNR
  per frame; the best checkpoint's location as a tag; events (resumed, PBT exploit) as tags;
- tags: model, flavor, family (its trainer family); in a sweep also the sweep, the trial, the winner.

The tracker run's id is kept in the run folder (``tracking.json``; a trial's in the sweep folder,
``tracking/<trial>.json``), so a resumed run continues the same tracker run.

Tracking never fails training: calls run on one background thread; the first error of a tracker
prints one warning, records a ``tracking_failed`` event in metrics.jsonl and turns that tracker
off for the rest of the run. Where Ray's integrations fit they are used: W&B runs open through
``ray.air.integrations.wandb.setup_wandb`` (id, resume, group). MLflow runs do not go through
``setup_mlflow`` (it always starts a new run, so a resumed run or a PBT trial's next generation
could not continue its own) nor Tune's ``MLflowLoggerCallback`` / ``WandbLoggerCallback``: those
see only what a Train V2 trial reports to Tune (one result per validation, no training steps in
between, no sample files, a new Train run per PBT generation), while rank 0 sees everything.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

TRACKERS = ("mlflow", "wandb")
STATE_FILE = "tracking.json"
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # pip install 'ssagan-dist[<extra>]'
CLOSE_TIMEOUT_S = 120.0
# The writer sends metrics at most this often: the lines logged in between go in one request per
# tracker (each at its own step), so a run logging every step does not make a server round trip
# per step on the cores the step runs on (docs/benchmarks.md, "Experiment tracking").
METRICS_INTERVAL_S = 2.0
MLFLOW_BATCH_MAX = 1000  # metrics per log_batch request (MLflow's limit)
# The MLflow client retries a dead server for minutes by default; a background writer that falls
# behind only delays its own uploads, but a short retry budget makes a stopped server show soon.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def names(value: Any) -> list[str]:
    """``tracking.backends`` as a list: none / '' / null -> [], 'mlflow', 'mlflow,wandb', [mlflow, wandb]."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = [s.strip().lower() for item in items for s in str(item).split(",") if s.strip()]
    return [] if out in ([], ["none"]) else out


WANDB_TAG_MAX = 64


def one_line(e: BaseException) -> str:
    """An exception as one short line, credentials masked (a pydantic error names its field on the
    second line: joined, not cut)."""
    return f"{type(e).__name__}: {' '.join(redact(str(e)).split())[:300]}"


def problem(value: Any) -> Optional[str]:
    """Why ``tracking.backends`` is invalid, or None (for ``experiment.validate``)."""
    try:
        got = names(value)
    except TypeError:
        return "'none', 'mlflow', 'wandb' or a list of them"
    bad = [n for n in got if n not in TRACKERS]
    if bad or len(set(got)) != len(got):
        return "'none', 'mlflow', 'wandb' or a list of them (each once)"
    return None


def check_ready(section: Any) -> None:
    """Before Ray starts: each tracker of the ``tracking`` section imports and says where to write."""
    from ssagan_dist.config import ConfigError

    for name in names(section.backends):
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"config key 'tracking.backends' = {name!r} needs the {name} package, which is not "
                              f"installed: pip install 'ssagan-dist[{EXTRAS[name]}]'") from None
        if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
            raise ConfigError("config key 'tracking.backends' = 'mlflow' needs the environment variable "
                              "MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000; docs/tracking.md); on a cluster "
                              "you join, set it on the workers too (ray job submit --runtime-env-json)")


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(value: Any) -> Any:
    """URL credentials (``scheme://user:pass@host``) never reach a tracker."""
    return _USERINFO.sub("***@", value) if isinstance(value, str) else value


def params_of(config_yaml: str) -> dict[str, Any]:
    """A run's config.yaml (``experiment.dump``: the keys it reads), flat:
    {"optim.lr_g": 0.0002, "model.args.size": 32}."""
    import yaml

    out: dict[str, Any] = {}

    def flat(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                flat(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = redact(node)
    flat("", yaml.safe_load(config_yaml))
    return out


def tags_of(cfg) -> dict[str, str]:
    from ssagan_dist.models import registry

    return {"model": cfg.model.name, "flavor": cfg.model.flavor,
            "family": registry.get(cfg.model.name).family, "run_name": cfg.run.name}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# -- state kept beside the run ---------------------------------------------------------------------

def read_state(url: str, endpoint: Optional[str]) -> dict[str, Any]:
    from ssagan_dist import storage

    return json.loads(storage.read_bytes(url, endpoint)) if storage.exists(url, endpoint) else {}


def write_state(url: str, state: dict[str, Any], endpoint: Optional[str]) -> None:
    from ssagan_dist import storage

    storage.write_bytes_atomic(url, json.dumps(state, indent=1, sort_keys=True).encode(), endpoint)


# -- the trackers ----------------------------------------------------------------------------------

class MLflowSink:
    """One MLflow run through ``MlflowClient`` (no process-global active run)."""

    name = "mlflow"

    def __init__(self):
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.run_id = ""

    def open(self, state: dict[str, Any], run_name: str, params: dict[str, Any], tags: dict[str, str]) -> dict:
        if state.get("run_id"):
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return state
        run = self.client.create_run(experiment_id(self.client), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.params(params)
        return {"run_id": self.run_id, "experiment_id": run.info.experiment_id}

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, points: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for step, values in points for k, v in values.items()]
        for i in range(0, len(items), MLFLOW_BATCH_MAX):
            self.client.log_batch(self.run_id, metrics=items[i:i + MLFLOW_BATCH_MAX])

    def tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def samples(self, step: int, files: dict[str, Path]) -> None:
        for path in files.values():
            self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def experiment_id(client) -> str:
    """MLflow's own MLFLOW_EXPERIMENT_ID / MLFLOW_EXPERIMENT_NAME, else the experiment 'ssagan-dist'."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ssagan-dist"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another trial created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class WandbSink:
    """One W&B run, opened by Ray's ``setup_wandb`` with the id kept in the run folder."""

    name = "wandb"

    def __init__(self, local_dir: str):
        self.dir = os.environ.get("WANDB_DIR") or local_dir
        self.run = None

    def open(self, state: dict[str, Any], run_name: str, params: dict[str, Any], tags: dict[str, str],
             group: Optional[str] = None) -> dict:
        import wandb
        from ray.air.integrations.wandb import setup_wandb

        from wandb.sdk.lib.runid import generate_id

        run_id = state.get("run_id") or generate_id()
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        # W&B tags are short labels (it refuses one over 64 characters): a longer one, such as the
        # run folder's URL, goes into the run's config instead
        labels = {f"{k}:{v}" for k, v in tags.items()}
        long = {f"tag.{k}": v for k, v in tags.items() if len(f"{k}:{v}") > WANDB_TAG_MAX}
        self.run = setup_wandb(config={**params, **long}, rank_zero_only=False, trial_id=run_id, trial_name=run_name,
                               group=group or os.environ.get("WANDB_RUN_GROUP"),
                               project=os.environ.get("WANDB_PROJECT") or "ssagan-dist", dir=self.dir,
                               resume="allow", reinit="create_new",
                               tags=sorted(t for t in labels if len(t) <= WANDB_TAG_MAX),
                               settings=wandb.Settings(console="off", x_disable_stats=True))
        return {"run_id": run_id, "dir": self.dir}

    def metrics(self, points: list[tuple[int, dict[str, float]]]) -> None:
        for step, values in points:
            self.run.log(values, step=step)

    def tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.run.summary[k] = v
        flags = [k for k, v in tags.items() if v == "true"]
        if flags:
            self.run.tags = tuple(sorted(set(self.run.tags) | set(flags)))

    def samples(self, step: int, files: dict[str, Path]) -> None:
        import wandb

        media = {}
        for key, path in files.items():
            media[f"samples/{key}"] = (wandb.Video(str(path), format="gif") if path.suffix == ".gif"
                                       else wandb.Image(str(path)))
        self.run.log(media, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


# -- rank 0's tracker: all sinks behind one background thread ----------------------------------------

_CLOSED = ("closed", None, False)  # the queue's last item

class Tracker:
    """What RunLog calls on rank 0; every call returns at once (a queue to one writer thread).

    ``context`` (from a sweep trial): ``state_url`` where the tracker ids are kept, ``run_name``,
    ``group`` (the sweep), ``mlflow_parent`` (the sweep's MLflow run), ``trial_id``, ``swept``
    (this trial's values) and ``start`` (the trial's start event: resume or PBT exploit).
    """

    def __init__(self, cfg, run_url: str, resumed_step: int, context: Optional[dict[str, Any]] = None, *,
                 config_yaml: str):
        from ssagan_dist import storage

        self.context = context or {}
        self.params = params_of(config_yaml)  # the run's config.yaml: the keys it reads
        self.endpoint = cfg.run.s3_endpoint
        self.state_url = self.context.get("state_url") or storage.join(run_url, STATE_FILE)
        self.best_metric = cfg.checkpoint.best_metric
        self.best_sign = -1.0 if cfg.checkpoint.best_mode == "min" else 1.0  # compare sign·value: higher is better
        self.run_url = run_url
        self.problems: list[dict[str, Any]] = []  # tracking_failed events for metrics.jsonl
        self.failed = False
        self.step = resumed_step
        self._tmp = Path(tempfile.mkdtemp(prefix="ssagan-tracking-"))
        wandb_dir = run_url if not storage.is_s3(run_url) else str(self._tmp / "wandb")
        self.sinks: list[Any] = []
        for name in names(cfg.tracking.backends):
            self.sinks.append(MLflowSink() if name == "mlflow" else WandbSink(wandb_dir))
        self.state: dict[str, Any] = read_state(self.state_url, self.endpoint)
        self._queue: "queue.Queue[tuple[str, Any, bool]]" = queue.Queue()  # (what, call or metrics, per sink)
        self._thread = threading.Thread(target=self._work, name="tracking", daemon=True)
        self._thread.start()
        self._submit("open", lambda sink: self._open(sink, cfg, resumed_step))

    # -- called by RunLog on the training thread --

    def record(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", self.step))
        self.step = step
        if "error" in record:  # the run diverged (train.stop_diverged): the tracker run ends as failed
            self.failed = True
        if "event" in record:
            event = {k: redact(v) for k, v in record.items() if k != "step"}
            self._submit("event", lambda sink: sink.tags({f"event.{event['event']}.step_{step}": json.dumps(event)}))
            return
        values = scalars(record)
        if values:
            self._queue.put(("metrics", [(step, values)], True))
        best = values.get(self.best_metric)
        kept = self.state.get("best", {}).get("value")
        if best is not None and (kept is None or self.best_sign * best > self.best_sign * kept):
            from ssagan_dist import checkpointing, storage

            uri = storage.join(self.run_url, checkpointing.checkpoint_dir_name(step))
            self.state["best"] = {"value": best, "step": step, "checkpoint": uri}
            self._submit("best", lambda sink: sink.tags({"best_checkpoint": uri, f"best_{self.best_metric}": best,
                                                          "best_step": step}))
            self._submit("state", lambda _: self._save_state(), per_sink=False)

    def samples(self, step: int, files: dict[str, bytes]) -> None:
        folder = self._tmp / f"step_{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, data in files.items():  # step_N.png, step_N.gif, psnr_per_frame.png (the run folder's names)
            (folder / name).write_bytes(data)
            label = "clip" if name.endswith(".gif") else "psnr_per_frame" if name.startswith("psnr") else "strip"
            paths[label] = folder / name
        self._submit("samples", lambda sink: sink.samples(step, paths))

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait (at a checkpoint) until the tracker has everything logged so far, so a run resumed
        from this checkpoint continues a complete curve; a stuck tracker delays it at most timeout_s."""
        done = threading.Event()
        self._submit("flush", lambda _: done.set(), per_sink=False)
        if not done.wait(timeout_s):
            self._warn("all", f"still uploading after {timeout_s:.0f} s at step {self.step}", off=False)

    def take_problems(self) -> list[dict[str, Any]]:
        out, self.problems = self.problems, []
        return out

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self._submit("close", lambda sink: sink.close(self.failed))
        self._queue.put(_CLOSED)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._warn("all", f"{self._queue.qsize()} call(s) still queued after {timeout_s:.0f} s; giving up")
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- the writer thread --

    def _submit(self, what: str, call: Callable[[Any], None], per_sink: bool = True) -> None:
        self._queue.put((what, call, per_sink))

    def _work(self) -> None:
        last_metrics = -math.inf
        pending = None
        while (item := pending if pending is not None else self._queue.get()) is not _CLOSED:
            pending = None
            what, call, per_sink = item
            if what == "metrics":  # call holds [(step, values)]: gather what follows, send it as one
                points = list(call)
                pending = self._gather_metrics(points, last_metrics + METRICS_INTERVAL_S)
                last_metrics = time.monotonic()
                call = lambda sink, points=points: sink.metrics(points)  # noqa: E731
            if not per_sink:
                call(None)
                continue
            for sink in list(self.sinks):
                try:
                    call(sink)
                except Exception as e:  # noqa: BLE001 - a tracker never fails training
                    self.sinks.remove(sink)
                    self._warn(sink.name, f"{what} failed: {one_line(e)}")

    def _gather_metrics(self, points: list, send_at: float) -> Any:
        """Append the metrics queued right behind into points, waiting until send_at for more; stop
        at the first other call (returned, to run after the metrics: the order of calls is kept,
        so a tracker never sees a step before one it already has)."""
        while True:
            remaining = send_at - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if item[0] != "metrics":
                return item
            points.extend(item[1])

    def _warn(self, tracker: str, message: str, off: bool = True) -> None:
        event = "tracking_failed" if off else "tracking_slow"
        self.problems.append({"step": self.step, "event": event, "tracker": tracker, "problem": message})
        then = f"{tracker} tracking is off for the rest of this run" if off else "going on"
        print(f"[tracking] warning: {tracker} {message}; {then} (training goes on; metrics.jsonl has every "
              "metric)", file=sys.stderr, flush=True)

    def _open(self, sink: Any, cfg, resumed_step: int) -> None:
        ctx = self.context
        tags = tags_of(cfg)
        if ctx.get("group"):
            tags.update(sweep=ctx["group"], trial_id=ctx.get("trial_id", ""))
        else:
            tags["run_folder"] = redact(self.run_url)
        if ctx.get("mlflow_parent") and sink.name == "mlflow":
            tags["mlflow.parentRunId"] = ctx["mlflow_parent"]
        own = self.state.get(sink.name, {})
        run_name = ctx.get("run_name") or cfg.run.name
        if sink.name == "wandb":
            own = sink.open(own, run_name, self.params, tags, group=ctx.get("group"))
        else:
            own = sink.open(own, run_name, self.params, tags)
        resumed = bool(self.state.get(sink.name))
        self.state[sink.name] = own
        self._save_state()
        if resumed:
            sink.tags({"resumed_at_step": resumed_step})
        start = ctx.get("start") or {}
        if ctx.get("swept"):
            sink.metrics([(start.get("step", resumed_step), {f"hp/{k}": float(v) for k, v in ctx["swept"].items()
                                                             if isinstance(v, (int, float))})])
        if start.get("event") == "exploit":
            exploit = {k: start.get(k) for k in ("donor_trial", "explored", "step", "generation", "start_from")}
            sink.tags({f"pbt.exploit.g{start.get('generation', 0):03d}": json.dumps(exploit, sort_keys=True),
                       "pbt.last_donor": start.get("donor_trial", ""), "pbt.exploited": "true"})

    def _save_state(self) -> None:
        try:
            write_state(self.state_url, dict(self.state), self.endpoint)  # a copy: the training thread adds keys
        except Exception as e:  # noqa: BLE001
            self._warn("state", f"could not write {self.state_url}: {e}")


# -- sweeps: the parent run and the winner (on the sweep driver) -----------------------------------

def sweep_state_url(sweep_url: str, name: str) -> str:
    from ssagan_dist import storage

    return storage.join(sweep_url, "tracking", f"{name}.json")


def start_sweep(cfg, sweep_url: str, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The sweep's tracker context for its trials: the MLflow parent run (created, or kept from a
    sweep that is resumed) and the W&B group (the sweep's name)."""
    if not names(cfg.tracking.backends):
        return {}
    context: dict[str, Any] = {"group": name}
    if "mlflow" in names(cfg.tracking.backends):
        try:
            sink, url = MLflowSink(), sweep_state_url(sweep_url, "parent")
            state = read_state(url, cfg.run.s3_endpoint)
            params = {f"sweep.{k}": json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
                      for k, v in meta.items() if k in ("metric", "mode", "num_samples", "algorithm", "scheduler",
                                                        "space", "source")}
            state = sink.open(state, name, params, {**tags_of(cfg), "sweep": name, "sweep_parent": "true"})
            write_state(url, state, cfg.run.s3_endpoint)
            context["mlflow_parent"] = sink.run_id
        except Exception as e:  # noqa: BLE001 - the sweep runs without its parent run
            print(f"[tracking] warning: mlflow: could not open the sweep's parent run: "
                  f"{one_line(e)}", file=sys.stderr, flush=True)
    return context


def trial_context(sweep_context: dict[str, Any], sweep_url: str, trial_id: str, swept: dict[str, Any],
                  start: dict[str, Any]) -> Optional[dict[str, Any]]:
    if not sweep_context:
        return None
    return {**sweep_context, "state_url": sweep_state_url(sweep_url, trial_id), "run_name": trial_id,
            "trial_id": trial_id, "swept": swept, "start": start}


def mark_winner(cfg, sweep_url: str, sweep_context: dict[str, Any], trial_id: str, metric: str, value: float,
                checkpoint: str) -> None:
    """Tag the winning trial's runs (``winner: true``) and the parent with the result; a tracker
    that fails here prints one warning (the sweep's own result stands)."""
    if not sweep_context:
        return
    ep = cfg.run.s3_endpoint
    trial = read_state(sweep_state_url(sweep_url, trial_id), ep)
    marks = {"winner": "true", f"sweep_best_{metric}": value, "sweep_best_checkpoint": checkpoint}
    for name in names(cfg.tracking.backends):
        try:
            if name == "mlflow":
                sink = MLflowSink()
                if trial.get("mlflow"):
                    sink.run_id = trial["mlflow"]["run_id"]
                    sink.tags(marks)
                if not sweep_context.get("mlflow_parent"):
                    continue
                sink.run_id = sweep_context["mlflow_parent"]
                sink.tags({"winner_trial": trial_id, "winner_run_id": trial.get("mlflow", {}).get("run_id", ""),
                           f"best_{metric}": value, "best_checkpoint": checkpoint})
                sink.close()
            elif trial.get("wandb"):
                sink = WandbSink(trial["wandb"]["dir"])
                sink.open(trial["wandb"], trial_id, {}, {}, group=sweep_context.get("group"))
                sink.tags(marks)
                sink.close()
        except Exception as e:  # noqa: BLE001
            print(f"[tracking] warning: {name}: could not mark the winner: "
                  f"{one_line(e)}", file=sys.stderr, flush=True)
