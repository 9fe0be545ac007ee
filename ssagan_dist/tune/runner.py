"""The sweep driver: Ray Tune over function trials, progress lines, the winner and best.yaml."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

from omegaconf import OmegaConf
from ray.tune import Callback

from ssagan_dist import raycluster, storage, tracking
from ssagan_dist.config import NAME_RULE, ConfigError, ExperimentConfig, merge, safe_name
from ssagan_dist.experiment import dump, load_config
from ssagan_dist.tune import sweep as sweeps, trust
from ssagan_dist.tune.report import write_report as make_report
from ssagan_dist.tune.results import DIVERGED, SWEEP_FILE, Best, Trial, find_best, finite, load_trials
from ssagan_dist.tune.trainable import SweepContext, SweepTrial, trial_config


TUNER_FILE = "tuner.pkl"  # Tune's own record that a folder holds a sweep to restore (Tuner.can_restore)


def per_trial_resources(cfg: ExperimentConfig, driver_cpus: float) -> dict[str, float]:
    """What one trial occupies: its Train workers plus the driver function's small CPU share."""
    need = {"CPU": cfg.scaling.ranks * cfg.scaling.cpus_per_rank + driver_cpus}
    if cfg.scaling.use_gpu:
        need["GPU"] = float(cfg.scaling.ranks)
    return need


def concurrent_trials(cluster: dict[str, float], need: dict[str, float]) -> int:
    """How many trials fit side by side: Train V2 reserves each trial's workers outside Tune's
    view, so Tune must be told the limit or it starts trials whose workers wait for resources."""
    return min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)


class ProgressLines(Callback):
    """A Tune callback printing one line per change: trials running/finished/stopped early/
    diverged/errored, and the winner so far (``results.find_best``, as best.yaml and the report
    will name it) with its copy-frame baseline."""

    STATUSES = ("running", "pending", "paused", "finished", "stopped early", "diverged", "errored")

    def __init__(self, sweep: sweeps.Sweep, sweep_url: str, endpoint: Optional[str], max_steps: int,
                 every_s: float = 30.0):
        self.metric, self.mode, self.keys = sweep.metric, sweep.mode, sweep.keys
        self.sweep_url, self.endpoint, self.max_steps, self.every_s = sweep_url, endpoint, max_steps, every_s
        self.trials: dict[str, Trial] = {}
        self.best: Optional[Best] = None
        self.last_line, self.last_time = "", 0.0

    def setup(self, **info):
        """A resumed sweep: the trials' earlier reports count for the winner too."""
        self.trials = {t.trial_id: t for t in load_trials(self.sweep_url, self.endpoint)}
        self._find_best()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._trial(trial).results.append(dict(result))
        if result.get(DIVERGED):
            print(f"[tune] trial {trial.trial_id} diverged (not retried): {result[DIVERGED]}", flush=True)
        self._find_best()
        self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[tune] trial {trial.trial_id} failed (retries exhausted): {trial.error_file or ''}", flush=True)
        self._print(trials, force=True)

    def on_step_end(self, iteration, trials, **info):
        self._print(trials)

    def _trial(self, tune_trial) -> Trial:
        mine = self.trials.setdefault(tune_trial.trial_id, Trial(tune_trial.trial_id, [], tune_trial.status))
        mine.tune_status = tune_trial.status
        return mine

    def _find_best(self) -> None:
        self.best = find_best(list(self.trials.values()), self.metric, self.mode, self.keys, self.endpoint)

    def _print(self, trials, force: bool = False) -> None:
        counts = dict.fromkeys(self.STATUSES, 0)
        for t in trials:
            status = self._trial(t).status(self.max_steps)
            counts[status] = counts.get(status, 0) + 1
        line = " | ".join(f"{k} {v}" for k, v in counts.items() if v or k in ("running", "finished"))
        if self.best is not None:
            base = self.best.baseline
            line += f" | best {self.metric} {self.best.value:.4g} (trial {self.best.trial_id}"
            line += f", copy-frame {base:.4g})" if finite(base) else ")"
        now = time.monotonic()
        if force or (line != self.last_line and now - self.last_time >= 5.0) or now - self.last_time >= self.every_s:
            print(f"[tune] {time.strftime('%H:%M:%S')} {line}", flush=True)
            self.last_line, self.last_time = line, now


def write_best_yaml(ctx: SweepContext, best: Best, name: str, storage_path: str) -> str:
    """A full configuration with the winner's values: ``python -m ssagan_dist.train --config best.yaml``."""
    cfg = trial_config(ctx, best.values).cfg
    cfg.run.name, cfg.run.storage_path = f"{name}-best", storage_path
    text = (f"# Sweep {name}: best {best.value:.6g} at step {best.step} of trial {best.trial_id}\n"
            f"# checkpoint: {best.checkpoint}\n# retrain: python -m ssagan_dist.train --config best.yaml\n" + dump(cfg))
    url = ctx.url("best.yaml")
    storage.write_bytes_atomic(url, text.encode(), ctx.endpoint)
    return url


def announce_winner(cfg: ExperimentConfig, ctx: SweepContext, best: Best, metric: str, name: str) -> None:
    """best.yaml, the trackers' winner mark, and the lines that say where the winner is."""
    best_yaml = write_best_yaml(ctx, best, name, storage.join(cfg.run.storage_path))
    tracking.mark_winner(cfg, ctx.sweep_url, ctx.tracking, best.trial_id, metric, best.value, best.checkpoint)
    base = f" (copy-frame baseline {best.baseline:.4g})" if finite(best.baseline) else ""
    print(f"[tune] best {metric} = {best.value:.4g}{base} at step {best.step}, trial {best.trial_id}", flush=True)
    print(f"[tune] best config: {json.dumps(best.values, sort_keys=True)}", flush=True)
    print(f"[tune] best checkpoint: {best.checkpoint}", flush=True)
    print(f"[tune] best.yaml: {best_yaml}  (retrain: python -m ssagan_dist.train --config {best_yaml})", flush=True)


def rank_checkpoints_by_sweep(cfg: ExperimentConfig, sweep: sweeps.Sweep, config: str, overrides: list[str]) -> None:
    """Each trial's Train run keeps its best checkpoints (``checkpoint.keep``) by the sweep's
    metric in the sweep's order (``checkpoint.best_metric``, ``checkpoint.best_mode``), unless the config or an
    override names ``checkpoint.best_metric`` itself."""
    named = merge(config, [*sweep.overrides, *overrides])
    if "checkpoint.best_metric" not in (*named.preset_keys, *named.override_keys):
        cfg.checkpoint.best_metric, cfg.checkpoint.best_mode = sweep.metric, sweep.mode


def run_sweep(config: str, sweep_name: str, overrides: list[str], *, name: Optional[str] = None,
              num_cpus: Optional[float] = None, retry_errored: bool = False, write_report: bool = True) -> int:
    """Run (or resume) a sweep; returns a process exit code."""
    import ray
    from ray import tune

    from ssagan_dist import train

    sweep = sweeps.load_sweep(sweep_name)
    name = name or sweep.name
    if not safe_name(name):  # the sweep's folder under run.storage_path: the rule run.name follows
        raise ConfigError(f"sweep name {name!r} (--name, else the sweep file's name): must be {NAME_RULE}")
    sweeps.check_against_config(sweep, config, overrides)
    cfg = load_config(config, [*sweep.overrides, *overrides])
    rank_checkpoints_by_sweep(cfg, sweep, config, overrides)
    cfg, clip_shape = train.prepare(cfg)
    sweep_url = storage.join(cfg.run.storage_path, name)
    endpoint = cfg.run.s3_endpoint
    # Tune's state is pickles: restore only what this machine's sweeps signed (trust.py), before Ray starts
    restoring = storage.exists(storage.join(sweep_url, TUNER_FILE), endpoint)
    if restoring:
        trust.check_restorable(sweep_url, endpoint)
    ctx = SweepContext(base=OmegaConf.to_container(cfg), clip_shape=list(clip_shape), sweep_url=sweep_url,
                       keys=sweep.keys, metric=sweep.metric, report_timeout_s=sweep.report_timeout_s)

    started_ray = not ray.is_initialized()
    if started_ray:
        # No address and no RAY_ADDRESS (which `ray job submit` sets): a new local Ray of our own,
        # never whatever `ray start` cluster happens to run on this machine.
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
        raycluster.init(address, **({"num_cpus": num_cpus} if num_cpus and address == "local" else {}))
    try:
        need = per_trial_resources(cfg, sweep.driver_cpus)
        fit = concurrent_trials(ray.cluster_resources(), need)
        limit = sweep.max_concurrent_trials or fit
        if limit < 1:
            raise ConfigError(f"one trial needs {need} but the cluster has {ray.cluster_resources()}: lower "
                              "scaling.ranks / scaling.cpus_per_rank, or set max_concurrent_trials in the "
                              "sweep file (an autoscaling cluster grows when trials wait)")
        print(f"[tune] sweep {name}: {sweep.num_samples} sample(s) of {', '.join(sweep.keys)}; "
              f"{sweep.algorithm} search, scheduler {sweep.scheduler['name']}; metric {sweep.metric} ({sweep.mode}); "
              f"each trial {need}, up to {limit} at once; folder {sweep_url}", flush=True)
        meta = {**sweep.to_json(), "experiment": name, "config": config, "cli_overrides": overrides,
                "max_steps": cfg.loop.max_steps, "val_every": cfg.loop.val_every,
                "per_trial": need, "max_concurrent_trials": limit}
        storage.write_bytes_atomic(storage.join(sweep_url, SWEEP_FILE), json.dumps(meta, indent=1).encode(), endpoint)
        ctx.tracking = tracking.start_sweep(cfg, sweep_url, name, meta)

        trainable = tune.with_resources(tune.with_parameters(SweepTrial, ctx=ctx), {"cpu": sweep.driver_cpus})
        storage_path, storage_fs = train.storage_for_ray(cfg)
        experiment_path = sweep_url if storage_fs is None else storage.join(storage_path, name)
        if restoring:  # checked above; its callbacks (progress lines, signer) are the ones tuner.pkl keeps
            print(f"[tune] resuming sweep {name}: finished trials are kept, unfinished ones continue "
                  "from their latest checkpoint", flush=True)
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=retry_errored, storage_filesystem=storage_fs)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=sweeps.param_space(sweep),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                    search_alg=sweeps.search_algorithm(sweep, limit),
                    scheduler=sweeps.scheduler(sweep, cfg.loop.max_steps),
                    # Tune applies this to Searchers only; the variant generator takes it itself
                    max_concurrent_trials=limit if sweep.algorithm == "optuna" else None),
                run_config=tune.RunConfig(
                    name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    callbacks=[ProgressLines(sweep, sweep_url, endpoint, cfg.loop.max_steps),
                               trust.ManifestSigner(sweep_url, endpoint)],
                    verbose=0))
            trust.sign_storage_files(sweep_url, [TUNER_FILE], endpoint)  # written by Tuner() straight to storage
        results = tuner.fit()
        unsigned = trust.unsigned_files(sweep_url, endpoint)
        if unsigned:
            print(f"[tune] warning: the sweep folder holds Tune state that its manifest does not vouch for "
                  f"({', '.join(unsigned[:4])}): a resume of this sweep will be refused", flush=True)
        errored = [r for r in results if r.error is not None]
        for r in errored:
            print(f"[tune] failed trial: {r.path}: {type(r.error).__name__}: {str(r.error).splitlines()[0][:300]}",
                  flush=True)
        best = find_best(load_trials(sweep_url, endpoint), sweep.metric, sweep.mode, sweep.keys, endpoint)
        if best is None:
            print("[tune] no trial that did not diverge has a checkpoint; nothing to pick", flush=True)
        else:
            announce_winner(cfg, ctx, best, sweep.metric, name)
        if write_report:
            print(f"[tune] report: {make_report(sweep_url, endpoint=endpoint)}", flush=True)
        return 0 if best is not None and len(errored) < len(results) else 1
    finally:
        if started_ray:
            ray.shutdown()
