"""The main job: train any model of the zoo as PyTorch DDP on a Ray cluster.

    python -m ssagan_dist.train --config tiny_cpu data.train_urls=... data.val_urls=... [key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m ssagan_dist.train --config paper/ssagan_sky128

Without a cluster this starts a local Ray; under ``ray job submit`` it joins the job's cluster.
Re-running with the same ``run.name`` and ``run.storage_path`` resumes from the latest checkpoint.
The loop is the same for every model: the trainer (``ssagan_dist/trainers``) supplies the phases.
Driver side: ``prepare`` (no Ray) -> ``build_ray_trainer`` -> ``fit``. Worker side:
``train_loop_per_worker`` reads top to bottom: set up, resume, loop, validate and checkpoint, finish.
Which checkpoint a rank starts from and what it saves is ``checkpointing.CheckpointManager``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, cli, experiment, parallel, perf, raycluster, storage, telemetry, tracking
from ssagan_dist.checkpointing import CheckpointManager
from ssagan_dist.config import ConfigError, ExperimentConfig, preset_names
from ssagan_dist.data import ClipLoader, pin_memory, resolve_urls
from ssagan_dist.scoring import score
from ssagan_dist.runfolder import FitThread, RunFolder
from ssagan_dist.runlog import RunLog
from ssagan_dist.trainers import GANTrainer, Stats, unwrap

VAL_METRIC_PREFIX = "val/"


class Diverged(Exception):
    """A loss went non-finite: a fault of the run's settings, not of a worker (never retried)."""


# ---------------------------------------------------------------------------------------------
# Driver side: configuration, data, the Ray Train run
# ---------------------------------------------------------------------------------------------

def _absolute(url: str) -> str:
    """Ray workers and ``ray job submit`` run in other working dirs: make local paths absolute."""
    if not url or "://" in url:
        return url
    return ",".join(str(Path(u).expanduser().resolve()) if not u.startswith("{") else u for u in url.split(","))


def joins_cluster(cfg: ExperimentConfig) -> bool:
    """Whether ray.init would join a running cluster (ray.address, RAY_ADDRESS, `ray start`)
    rather than start a local Ray on this machine."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(cfg.ray.address) is not None
    except Exception:  # an address that cannot be resolved: ray.init will say so
        return True


def _workers_that_fit(resources: dict[str, float], cfg: ExperimentConfig) -> int:
    """Training workers one node can hold: each needs scaling.cpus_per_rank CPUs (+1 GPU)."""
    fit = int(resources.get("CPU", 0) // cfg.scaling.cpus_per_rank + 1e-9)
    return min(fit, int(resources.get("GPU", 0))) if cfg.scaling.use_gpu else fit


def _resource_error(cfg: ExperimentConfig, where: str, fit: int) -> ConfigError:
    t = cfg.scaling
    gpu = " and 1 GPU" if t.use_gpu else ""
    return ConfigError(f"config keys 'scaling.ranks' = {t.ranks}, 'scaling.cpus_per_rank' = "
                       f"{t.cpus_per_rank}, 'scaling.use_gpu' = {str(t.use_gpu).lower()}: each rank needs "
                       f"{t.cpus_per_rank} CPU{gpu} on one node, and {where} can place only {fit}; lower "
                       "scaling.ranks / scaling.cpus_per_rank"
                       + (", set scaling.use_gpu=false" if t.use_gpu else "") + " or use a bigger cluster")


def check_local_resources(cfg: ExperimentConfig) -> None:
    """When this command will start its own Ray, this machine is the whole cluster: check it now,
    before Ray starts (a GPU preset on a machine without GPUs would otherwise wait forever)."""
    if joins_cluster(cfg):
        return
    from ray._private.utils import get_num_cpus  # the CPU count a local ray.init() registers

    here = {"CPU": get_num_cpus(), "GPU": torch.cuda.device_count()}
    fit = _workers_that_fit(here, cfg)
    if fit < cfg.scaling.ranks:
        raise _resource_error(cfg, f"this machine ({here['CPU']:g} CPUs, {here['GPU']} GPUs; no Ray cluster "
                                   "to join: ray.address / RAY_ADDRESS)", fit)


RESOURCE_WAIT_ENV = "SSAGAN_RESOURCE_WAIT_S"  # how long to wait for an autoscaler to add nodes


def wait_for_resources(cfg: ExperimentConfig, can_grow: bool) -> None:
    """After ray.init: the cluster can place every worker, or raise naming the trainer.* keys.
    A cluster that may grow (one we joined: it may have an autoscaler) gets a bounded wait."""
    import ray

    wait_s = float(os.environ.get(RESOURCE_WAIT_ENV, "600")) if can_grow else 0.0
    deadline, said = time.monotonic() + wait_s, False
    while True:
        fit = sum(_workers_that_fit(n["Resources"], cfg) for n in ray.nodes() if n.get("Alive"))
        if fit >= cfg.scaling.ranks:
            return
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_s:.0f} s ({RESOURCE_WAIT_ENV} sets the wait)" if can_grow else ""
            raise _resource_error(cfg, f"the Ray cluster{waited}", fit)
        if not said:
            print(f"[train] the cluster can place {fit} of {cfg.scaling.ranks} workers now; waiting up to "
                  f"{wait_s:.0f} s for more nodes ({RESOURCE_WAIT_ENV})", file=sys.stderr, flush=True)
            said = True
        time.sleep(5)


def prepare(cfg: ExperimentConfig | experiment.Experiment) -> tuple[ExperimentConfig, list[int]]:
    """Absolute local paths, the data and any trained network the trainer starts from checked
    against the model (``Experiment.check_data``), and this machine's resources when it will be
    the cluster; returns the config and the data's clip shape. Raises ConfigError naming the key;
    starts nothing. Given ``experiment.load``'s Experiment, the config is not validated again."""
    exp = cfg if isinstance(cfg, experiment.Experiment) else experiment.validate(cfg)
    cfg = exp.cfg
    tracking.check_ready(cfg.tracking)  # a tracker's package and address, before any data or Ray
    cfg.data.train_urls = _absolute(cfg.data.train_urls)
    cfg.data.val_urls = _absolute(cfg.data.val_urls)
    if "://" not in cfg.run.storage_path:
        cfg.run.storage_path = str(Path(cfg.run.storage_path).expanduser().resolve())
    shape = exp.check_data().clip_shape  # exp.cfg is cfg: it sees the absolute paths
    check_local_resources(cfg)
    return cfg, shape


def storage_for_ray(cfg: ExperimentConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray's RunConfig: on S3, the retried and counted
    filesystem of ``storage`` (endpoint as everywhere else; credentials from the standard AWS
    variables, never the config)."""
    path = cfg.run.storage_path
    if not path.startswith("s3://"):
        return path, None
    return path[len("s3://"):], storage.ray_filesystem(cfg.run.s3_endpoint)


def elastic(cfg: ExperimentConfig) -> bool:
    return 0 < cfg.scaling.min_ranks < cfg.scaling.ranks


def build_ray_trainer(cfg: ExperimentConfig, clip_shape: list[int], *, config_yaml: Optional[str] = None,
                      callbacks: Sequence[Any] = (), start_from: Optional[str] = None, trial: Optional[str] = None,
                      tensorboard_url: Optional[str] = None, tracking_context: Optional[dict[str, Any]] = None,
                      observer: Optional["LoopObserver"] = None):
    """The Ray Train ``TorchTrainer`` of a run (``cfg.run.name`` under ``cfg.run.storage_path``).

    ``start_from``: a checkpoint directory URI to initialise from when the run has no checkpoint of
    its own (a sweep's exploit); ``trial``: the label metrics carry under Tune;
    ``tensorboard_url``: where rank 0 writes TensorBoard files (default: the run folder's);
    ``tracking_context``: a sweep trial's tracker grouping (``tracking.trial_context``);
    ``observer``: a ``LoopObserver`` that every rank's loop calls (a benchmark's timer).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, storage_fs = storage_for_ray(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": OmegaConf.to_container(cfg), "clip_shape": clip_shape, "start_from": start_from,
                           # rank 0 writes it as the run's config.yaml; made from the caller's validated
                           # Experiment (else validated here): no rank validates the config again
                           "config_yaml": config_yaml if config_yaml is not None else experiment.dump(cfg),
                           "trial": trial, "tensorboard_url": tensorboard_url, "tracking": tracking_context,
                           "observer": observer,
                           # what a rank needs of the scaling: an elastic group keeps the global batch
                           "global_batch": cfg.loop.batch_size * cfg.scaling.ranks, "elastic": elastic(cfg),
                           "train_log_level": cfg.ray.train_log_level},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=((cfg.scaling.min_ranks, cfg.scaling.ranks) if elastic(cfg) else cfg.scaling.ranks),
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_rank, **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=cfg.ray.train_log_level),
            checkpoint_config=CheckpointManager.ray_config(cfg)),
    )


def ray_job_working_dir() -> Optional[Path]:
    """Ray's copy of the working dir, when this process is the driver of a Ray job submitted with
    one (``ray job submit --working-dir``): the driver runs in it, under the Ray session's
    ``runtime_resources/working_dir_files``, and Ray deletes it with the job. Else None."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return None
    return Path.cwd().resolve() if (job.get("runtime_env") or {}).get("working_dir") else None


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_storage_shared(cfg: ExperimentConfig, nodes: int, job_copy: Optional[Path]) -> None:
    """A local ``run.storage_path`` must be one every rank and the driver see, and one that outlives
    the command: refused (ConfigError, one line) inside a Ray job's copy of its working dir
    (``job_copy``), or on a cluster of more than one node (each rank would write its checkpoints
    to its own node's disk), unless it lies in a folder declared shared storage
    (``storage.SHARED_STORAGE_ENV``). s3:// always passes; so does a local path on a one-node
    cluster outside the job's copy (``make demo``: its own head, runs/ of the repository)."""
    path = cfg.run.storage_path
    if "://" in path or storage.declared_shared(path):
        return
    docs = 'docs/training.md, "Where runs are stored"'
    if job_copy is not None and (Path(path) == job_copy or job_copy in Path(path).parents):
        raise ConfigError(f"config key 'run.storage_path' = {path!r} is inside this Ray job's copy of its working "
                          "dir, which Ray deletes when the job ends: give s3://BUCKET/PREFIX or an absolute path "
                          "outside it (on a cluster of more than one node: a folder every node mounts, named in "
                          f"{storage.SHARED_STORAGE_ENV}; {docs})")
    if nodes > 1:
        raise ConfigError(f"config key 'run.storage_path' = {path!r} is a local folder and the Ray cluster has "
                          f"{nodes} nodes: each rank would write its checkpoints to its own node's disk. Give "
                          f"s3://BUCKET/PREFIX, or a folder every node mounts at that path and declare it shared: "
                          f"{storage.SHARED_STORAGE_ENV}={path} ({docs})")


@contextlib.contextmanager
def _preemption_watcher_on_nodes(nodes: int) -> Iterator[None]:
    """Ray Train's PreemptionWatcher (an actor that watches the nodes of the workers for drains)
    is off on a one-node cluster, where draining the node ends the driver too: its constructor
    takes the workers' actor handles, which Ray Core counts as arguments in the object store, and
    that printed an error-level line on every run (docs/training.md). On more nodes it stays, and
    so does the line. ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``, when set, decides instead. Ray Train
    reads the variable when ``fit`` creates its controller."""
    name = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    if nodes > 1 or name in os.environ:
        yield
        return
    os.environ[name] = "0"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def fit(cfg: ExperimentConfig, clip_shape: Optional[list[int]] = None, config_yaml: Optional[str] = None):
    """Prepare and check the data (unless ``clip_shape`` says ``prepare`` ran), start or join Ray,
    run training; returns Ray's Result. Raises Diverged when a loss went non-finite. ``config_yaml``:
    the validated ``Experiment``'s dump, when the caller has it (else the config is validated again)."""
    import ray

    if clip_shape is None:
        cfg, clip_shape = prepare(cfg)
    if not ray.is_initialized():
        raycluster.init(cfg.ray.address, log_level=cfg.ray.train_log_level)
    nodes = alive_nodes()
    check_storage_shared(cfg, nodes, ray_job_working_dir())
    folder = RunFolder.of(cfg)
    folder.clear_diverged()  # a re-run (new settings) tries again
    with _preemption_watcher_on_nodes(nodes):
        # off the main thread: Ctrl-C reaches ``main`` as KeyboardInterrupt (runfolder.FitThread),
        # which says how to resume and shuts down the Ray it started
        result = FitThread(build_ray_trainer(cfg, clip_shape, config_yaml=config_yaml)).start().wait()
    diverged = folder.diverged()
    if diverged is not None:
        raise Diverged(diverged["error"])
    return result


# ---------------------------------------------------------------------------------------------
# Worker side: the training loop (runs on every rank)
# ---------------------------------------------------------------------------------------------

class LoopObserver:
    """Watches every rank's loop without changing it: a benchmark subclasses it to time the loop
    instead of patching classes (``bench/overhead.py``). Ray pickles it to each worker, so a
    subclass lives in an importable module. The loop calls, in order:"""

    def entered(self) -> None:
        """First thing in the worker's loop function, before set-up."""

    def ready(self, trainer: GANTrainer) -> None:
        """Set up, resumed, networks wrapped (``trainer.wrapped``: DDP modules take comm hooks)."""

    def step_done(self, step: int, seconds: float, data_wait_s: float) -> None:
        """After each ``run_step``: its wall time and the part of it spent waiting for batches."""

    def exited(self) -> None:
        """When the loop ends, normally or by an error."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    observer: LoopObserver = config.get("observer") or LoopObserver()
    observer.entered()
    w = set_up(config)
    try:
        step = resume(w, config.get("start_from"))
        w.trainer.wrap(parallel.wrapper(w.cfg.ddp))
        check_ranks_agree(w, "after resuming" if step else "at start")
        if w.rank == 0:
            w.runlog = RunLog(w.cfg, RunFolder.of(w.cfg).url, step, config["config_yaml"],
                              config.get("tensorboard_url"), config.get("tracking"))
            for event in w.checkpoints.events:
                w.runlog.append({"step": step, **event})
            say(f"[train] {w.cfg.model.name} ({w.cfg.model.flavor}) on {w.world} worker(s), {w.device}; "
                f"{'resuming at' if step else 'starting at'} step {step}/{w.cfg.loop.max_steps}; "
                f"{len(w.batches.loader)} batches/epoch/worker")
        observer.ready(w.trainer)
        meter = Meter(w.cfg.loop.max_steps, w.clips_per_step, step)
        while step < w.cfg.loop.max_steps:
            step_start, wait_start = time.perf_counter(), w.batches.wait_s
            stats = w.trainer.run_step(w.batches)
            step += 1
            seconds, wait_s = time.perf_counter() - step_start, w.batches.wait_s - wait_start
            w.telemetry.step(w.clips_per_step // w.world, seconds, wait_s)
            observer.step_done(step, seconds, wait_s)
            last = step == w.cfg.loop.max_steps
            validate = step % w.cfg.loop.val_every == 0 or last
            record = log_step(w, meter, step, stats) if step % w.cfg.loop.log_every == 0 or validate else None
            if record is not None and not all_finite(record):
                return stop_diverged(w, step, record)
            if validate:
                with meter.paused():
                    validate_and_checkpoint(w, step, record or {})
            elif record is not None and w.rank == 0:
                w.runlog.append(record)  # not reported to Ray between checkpoints: ray.train.report is a barrier
        finish(w, step, meter)
    finally:
        w.telemetry.close()  # also when the loop fails: no server or discovery file outlives the rank
        observer.exited()


@dataclass
class Rank:
    """What one rank's loop works with."""

    cfg: ExperimentConfig
    clip_shape: list[int]
    rank: int
    world: int
    device: torch.device
    trainer: GANTrainer
    batches: "BatchStream"
    val_loader: Optional[ClipLoader]
    telemetry: telemetry.TrainingTelemetry
    clips_per_step: int  # over all ranks
    checkpoints: CheckpointManager
    runlog: Optional[RunLog] = None  # rank 0 only


def set_up(config: dict[str, Any]) -> Rank:
    import ray.train
    import ray.train.torch

    cfg: ExperimentConfig = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), config["cfg"])
    level_ray_train_loggers(config["train_log_level"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _set_determinism(cfg)  # identical initial weights on every rank
    trainer = perf.apply(experiment.build_trainer(cfg, ray.train.torch.get_device()), cfg.perf)
    ep = cfg.run.s3_endpoint
    # An elastic group keeps the global batch: each of `world` ranks takes its share of it.
    batch_size = config["global_batch"] // world
    loader_kwargs = dict(batch_size=batch_size, rank=rank, world_size=world, seed=cfg.loop.seed,
                         processes=cfg.data.loader_processes, endpoint_url=ep, skip_bad=cfg.data.skip_bad,
                         prefetch=cfg.data.prefetch, pin_memory=pin_memory(cfg.data, trainer.device))
    train_loader = ClipLoader(resolve_urls(cfg.data.train_urls, endpoint_url=ep), shuffle=True, elastic=config["elastic"],
                              **loader_kwargs)
    val_loader = (ClipLoader(resolve_urls(cfg.data.val_urls, endpoint_url=ep), shuffle=False, drop_last=False,
                             **loader_kwargs) if cfg.data.val_urls else None)
    tm = telemetry.TrainingTelemetry(cfg.telemetry, run=cfg.run.name, trial=config.get("trial") or "", rank=rank,
                                     world=world, model=cfg.model.name)
    tm.start()
    clips_per_step = sum(p.repeats for p in trainer.phases()) * batch_size * world
    return Rank(cfg, config["clip_shape"], rank, world, trainer.device, trainer, BatchStream(train_loader),
                  val_loader, tm, clips_per_step, CheckpointManager(cfg, rank, world))


def resume(w: Rank, start_from: Optional[str]) -> int:
    """Restore what the checkpoint policy picks (``CheckpointManager.restore``); the step to continue from."""
    step = w.checkpoints.restore(w.trainer, w.batches.loader, start_from)
    if w.checkpoints.resumed_from and w.rank == 0:
        say(f"[train] resuming from {w.checkpoints.resumed_from}")
    if step:
        w.telemetry.resumed(step)
    return step


def log_step(w: Rank, meter: "Meter", step: int, stats: Stats) -> dict[str, Any]:
    """Stats averaged over ranks (the only device sync of a log step), a progress line on rank 0."""
    own, mean = all_reduce_mean(stats, w.device)
    lrs = w.trainer.learning_rates()
    values = {**mean, **lrs}
    rate, eta, wait_share = meter.window(step, w.batches.wait_s)
    w.telemetry.stats(step, {**own, **lrs})  # this rank's own numbers: dashboards compare ranks
    if w.rank == 0:
        losses = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        say(f"[train] step {step}/{w.cfg.loop.max_steps} | {rate:.1f} clips/s | {losses} | "
            f"data wait {100 * wait_share:.0f}% | ETA {_hms(eta)}")
    return {"step": step, "clips_per_s": rate, "data_wait_share": wait_share,
            **{f"train/{k}": v for k, v in values.items()}}


def all_finite(record: dict[str, Any]) -> bool:
    return all(math.isfinite(v) for k, v in record.items() if k.startswith("train/") and isinstance(v, float))


def stop_diverged(w: Rank, step: int, record: dict[str, Any]) -> None:
    """A non-finite loss ends the run without a checkpoint (every rank sees the same all-reduced
    stats, so all stop together); rank 0 records why for the driver and in metrics.jsonl."""
    bad = {k[len("train/"):]: v for k, v in record.items() if k.startswith("train/") and not math.isfinite(v)}
    lrs = w.trainer.learning_rates()
    error = (f"training diverged at step {step}: {', '.join(f'{k}={v}' for k, v in sorted(bad.items()))} "
             f"(lr_g={lrs.get('lr_g')}, lr_d={lrs.get('lr_d')}); no checkpoint was written past the last "
             f"finite one; lower optim.lr_g / optim.lr_d or the loss weights")
    if w.rank == 0:
        w.runlog.append({**record, "error": error})
        w.runlog.close()
        RunFolder.of(w.cfg).mark_diverged(error, step)
        say(f"[train] {error}")


def validate_and_checkpoint(w: Rank, step: int, record: dict[str, Any]) -> None:
    """Score the held-out clips with rank 0's BatchNorm statistics, then write a checkpoint that
    every rank agrees on and report it to Ray (a barrier)."""
    broadcast_buffers(w.trainer)
    report = {**record, "step": step}
    if w.val_loader is not None:
        with w.trainer.generator_weights():  # G's moving average when the run keeps one
            val, first = score(w.trainer, w.val_loader, w.clip_shape[1], w.device,
                               max_batches=w.cfg.loop.val_batches)
        scalars = {k: v for k, v in val.items() if not isinstance(v, list)}
        report.update({f"{VAL_METRIC_PREFIX}{k}": v for k, v in scalars.items()})
        w.telemetry.validation(step, scalars)
        if w.rank == 0 and first is not None:
            w.runlog.samples(step, first[0][:4], first[1][:4],
                             {"model": val["psnr_curve"], "copy frame 0": val["baseline_psnr_curve"]})
            say(f"[val] step {step}: PSNR {val['psnr']:.2f} dB (copy-frame baseline {val['baseline_psnr']:.2f}) "
                f"SSIM {val['ssim']:.4f} (baseline {val['baseline_ssim']:.4f}) on {val['count']} clips")
    else:
        report[w.cfg.checkpoint.best_metric] = float(step)  # no validation data: "best" = latest
    check_ranks_agree(w, f"at the step-{step} checkpoint")
    if w.rank == 0:
        w.runlog.append(report)
        w.runlog.flush()
    save_start = time.perf_counter()
    nbytes = w.checkpoints.save(w.trainer, w.batches.loader, step, w.clip_shape, report)
    w.telemetry.checkpoint(time.perf_counter() - save_start, nbytes)


def finish(w: Rank, step: int, meter: "Meter") -> None:
    if w.rank == 0:
        w.runlog.close()
        say(f"[train] done: {step} steps in {_hms(meter.elapsed())}; run folder {RunFolder.of(w.cfg)}")


# -- the loop's parts ----------------------------------------------------------------------------

class BatchStream:
    """Endless batches across epochs, timing how long the loop waits for data."""

    def __init__(self, loader: ClipLoader):
        self.loader = loader
        self.iterator = iter(loader)
        self.wait_s = 0.0

    def __call__(self) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        try:
            batch = next(self.iterator)
        except StopIteration:  # the loader has moved on to the next epoch
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        self.wait_s += time.perf_counter() - start
        return batch


class Meter:
    """Training throughput over the steps since the last log line, excluding paused time."""

    def __init__(self, max_steps: int, clips_per_step: int, first_step: int):
        self.max_steps, self.clips_per_step = max_steps, clips_per_step
        self.start = self.window_start = time.perf_counter()
        self.window_step, self.window_wait = first_step, 0.0

    def window(self, step: int, wait_s: float) -> tuple[float, float, float]:
        """(clips/s, seconds to go, share of time waiting for data) since the last call."""
        now = time.perf_counter()
        steps, elapsed = step - self.window_step, max(now - self.window_start, 1e-9)
        out = (steps * self.clips_per_step / elapsed, (self.max_steps - step) * elapsed / max(steps, 1),
               (wait_s - self.window_wait) / elapsed)
        self.window_start, self.window_step, self.window_wait = now, step, wait_s
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.window_start += time.perf_counter() - start  # rates count training only

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def all_reduce_mean(stats: Stats, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """(this rank's statistics, their mean over ranks) as floats; every rank passes the same keys."""
    keys = sorted(stats)
    t = torch.stack([stats[k].to(device, torch.float64) for k in keys])
    own = dict(zip(keys, t.tolist()))
    if _distributed():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return own, dict(zip(keys, t.tolist()))


def broadcast_buffers(trainer: GANTrainer) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP runs with
    broadcast_buffers=False (two D forwards per backward; pytorch/pytorch#22095), so without SyncBatchNorm each
    rank's statistics drift apart; validation and checkpoints use rank 0's, the saved model's."""
    if not _distributed():
        return
    for name in (*trainer.trained, *(("G_ema",) if trainer.g_ema is not None else ())):  # G_ema copies G's
        for buf in unwrap(trainer.nets[name]).buffers():
            dist.broadcast(buf, src=0)


def check_ranks_agree(w: Rank, when: str) -> None:
    """Every rank must hold the same weights and buffers; a mismatch is a bug, stop loudly."""
    if not _distributed():
        return
    digests: list[Optional[str]] = [None] * w.world
    dist.all_gather_object(digests, checkpointing.state_digest(w.trainer))
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks hold different model states {when}: state digests "
                           f"{', '.join(f'rank {r}: {d[:12]}' for r, d in enumerate(digests))}")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _set_determinism(cfg: ExperimentConfig) -> None:
    torch.manual_seed(cfg.loop.seed)
    if cfg.loop.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def level_ray_train_loggers(level: str) -> None:
    """``ray.train_log_level`` for every Ray Train logger of this worker process. Ray Train
    2.60's LoggingConfig filters the ``ray.train`` logger tree only, but two of its modules name
    their logger by file path (``logging.getLogger(__file__)``: execution/context.py, whose INFO line
    'Reporting training result N: TrainingReport(...)' came on every report of every rank, and
    collective/collectives.py); those propagate to the root logger, which Ray Train sets to INFO."""
    import logging

    import ray.train
    import ray.train.collective.collectives  # noqa: F401  (its logger exists from here on)
    import ray.train.v2._internal.execution.context  # noqa: F401

    package = os.path.dirname(os.path.abspath(ray.train.__file__)) + os.sep
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(package):
            logging.getLogger(name).setLevel(level)


def say(line: str) -> None:
    """A progress line on the worker's stdout (Ray Train's print patch would log it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny_cpu",
                   help=f"preset ({', '.join(preset_names())}) or a YAML file, e.g. a run's config.yaml")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. loop.max_steps=200 optim.lr_g=1e-4")
    return p.parse_args(argv)


@cli.command  # expected failures (ConfigError, CheckpointError, missing files, S3): one error: line, exit 2
def main(argv: Optional[list[str]] = None) -> int:
    import ray

    args = parse_args(argv)
    started_ray, cfg = not ray.is_initialized(), None
    try:
        exp = experiment.load(args.config, args.overrides)
        cfg = exp.cfg
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        cfg, clip_shape = prepare(exp)  # everything the driver can check, before Ray starts
        if started_ray:
            can_grow = joins_cluster(cfg)  # a cluster we join may autoscale; our own local Ray cannot
            raycluster.init(cfg.ray.address,  # a dead cluster's address: an error, not a long wait
                            log_level=cfg.ray.train_log_level)
            check_storage_shared(cfg, alive_nodes(), ray_job_working_dir())  # before any wait for nodes
            wait_for_resources(cfg, can_grow)
        print(f"[train] {cfg.model.name}: starting {cfg.scaling.ranks} Ray Train worker(s); run folder "
              f"{RunFolder.of(cfg)}", flush=True)
        result = fit(cfg, clip_shape, exp.dump())  # exp.cfg is cfg: the absolute paths prepare made
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f" in {RunFolder.of(cfg)}" if cfg is not None else ""
        print(f"\ninterrupted: the run keeps its checkpoints{where}; the same command resumes from the newest",
              file=sys.stderr)
        return 130
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()  # no Ray processes of ours outlive the command
    if result.error:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and cfg.run.storage_path.startswith("s3://"):
        checkpoint = f"s3://{checkpoint}"  # pyarrow's paths drop the scheme
    print(f"[train] checkpoint: {checkpoint}")
    print(f"[train] metrics:    {RunFolder.of(cfg).join('metrics.jsonl')}")
    print(f"[train] samples:    {RunFolder.of(cfg).join('samples')}/")
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so that Ray pickles the worker loop by reference.
    from ssagan_dist.train import main as module_main

    sys.exit(module_main())
