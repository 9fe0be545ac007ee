"""The main job: train any model of the zoo as PyTorch DDP on a Ray cluster.

    python -m ssagan_dist.train --config tiny_cpu [key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m ssagan_dist.train --config ssagan_sky128

Without a cluster this starts a local Ray; under ``ray job submit`` it joins the job's cluster.
Re-running with the same ``run.name`` and ``run.storage_path`` resumes from the latest checkpoint.
The loop is the same for every model: the trainer (``ssagan_dist/trainers``) supplies the phases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, storage, visualize
from ssagan_dist.config import ConfigError, ExperimentConfig, load_config, preset_names
from ssagan_dist.data import ClipLoader, read_index, resolve_urls
from ssagan_dist.evaluate import score
from ssagan_dist.models import registry
from ssagan_dist.trainers import GANTrainer, Stats

VAL_METRIC_PREFIX = "val/"


# ---------------------------------------------------------------------------------------------
# Driver side: configuration, data, the Ray Train run
# ---------------------------------------------------------------------------------------------

def endpoint(cfg: ExperimentConfig) -> Optional[str]:
    return cfg.run.s3_endpoint


def _absolute(url: str) -> str:
    """Ray workers and ``ray job submit`` run in other working dirs: make local paths absolute."""
    if not url or "://" in url:
        return url
    return ",".join(str(Path(u).expanduser().resolve()) if not u.startswith("{") else u for u in url.split(","))


def prepare_data(cfg: ExperimentConfig) -> ExperimentConfig:
    """Absolute paths, and the synthetic sky shards generated on first use when no data is named."""
    if not cfg.data.train_urls:
        from data_tools import synth

        root = Path(cfg.data.synth_dir).expanduser().resolve()
        shape = clip_shape_of_model(cfg)
        size, frames = (shape[2], shape[1]) if shape else (32, 8)
        for split, clips, seed in (("train", cfg.data.synth_clips, 0), ("val", cfg.data.synth_val_clips, 1)):
            out = root / f"{size}px-{frames}f-{clips}" / split
            if not (out / "index.json").exists():
                print(f"[ssagan_dist] generating {clips} synthetic sky clips ({size}x{size}, {frames} frames) "
                      f"in {out}", flush=True)
                synth.generate(str(out), clips=clips, size=size, frames=frames, seed=seed)
            setattr(cfg.data, f"{split}_urls", str(out))
    cfg.data.train_urls = _absolute(cfg.data.train_urls)
    cfg.data.val_urls = _absolute(cfg.data.val_urls)
    if "://" not in cfg.run.storage_path:
        cfg.run.storage_path = str(Path(cfg.run.storage_path).expanduser().resolve())
    return cfg


def clip_shape_of_model(cfg: ExperimentConfig) -> Optional[list[int]]:
    """(C, T, H, W) that the model produces, when its constructor arguments say so."""
    args = registry.constructor_args(cfg.model.name, cfg.model.preset, dict(cfg.model.args))
    if "size" in args and "frames" in args:
        return [args.get("channels", 3), args["frames"], args["size"], args["size"]]
    return None


def check_data(cfg: ExperimentConfig) -> list[int]:
    """The training data's clip shape; fails naming the key when data and model disagree."""
    ep = endpoint(cfg)
    index = read_index(cfg.data.train_urls, endpoint_url=ep)
    if index is None:
        raise ConfigError(f"config key 'data.train_urls' = {cfg.data.train_urls!r}: no index.json found "
                          "(shard datasets with `python -m data_tools.shard`)")
    shape = list(index["clip_shape"])
    want = clip_shape_of_model(cfg)
    if want is not None and want != shape:
        raise ConfigError(f"config key 'model.args': model {cfg.model.name!r} ({cfg.model.preset}) makes clips "
                          f"{want} (C,T,H,W) but data.train_urls holds {shape}; set model.args.size/frames")
    if cfg.data.val_urls:
        val = read_index(cfg.data.val_urls, endpoint_url=ep)
        if val is None or list(val["clip_shape"]) != shape:
            problem = "no index.json found" if val is None else f"clip shape {list(val['clip_shape'])} != {shape}"
            raise ConfigError(f"config key 'data.val_urls' = {cfg.data.val_urls!r}: {problem}")
    return shape


def storage_for_ray(cfg: ExperimentConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray's RunConfig.

    pyarrow's S3FileSystem ignores AWS_ENDPOINT_URL, so an explicit endpoint goes in as
    ``endpoint_override``; credentials come from the standard AWS variables, never the config.
    """
    path = cfg.run.storage_path
    if not path.startswith("s3://"):
        return path, None
    import pyarrow.fs

    ep = storage.s3_endpoint(endpoint(cfg))
    kwargs: dict[str, Any] = {}
    if ep:
        kwargs["endpoint_override"] = ep
        kwargs["scheme"] = "https" if ep.startswith("https") else "http"
    return path[len("s3://"):], pyarrow.fs.S3FileSystem(**kwargs)


def run_url(cfg: ExperimentConfig) -> str:
    return storage.join(cfg.run.storage_path, cfg.run.name)


def build_ray_trainer(cfg: ExperimentConfig, clip_shape: list[int]):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, storage_fs = storage_for_ray(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": OmegaConf.to_container(cfg), "clip_shape": clip_shape},
        torch_config=TorchConfig(backend="nccl" if cfg.trainer.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.trainer.num_workers, use_gpu=cfg.trainer.use_gpu,
            resources_per_worker={"CPU": cfg.trainer.cpus_per_worker, **({"GPU": 1} if cfg.trainer.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=cfg.run.ray_train_log_level),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints,
                checkpoint_score_attribute=cfg.run.best_metric, checkpoint_score_order="max")),
    )


def fit(cfg: ExperimentConfig):
    """Prepare data, start or join Ray, run training; returns Ray's Result."""
    import ray

    cfg = prepare_data(cfg)
    clip_shape = check_data(cfg)
    if not ray.is_initialized():
        ray.init(address=cfg.run.ray_address)
    return build_ray_trainer(cfg, clip_shape).fit()


# ---------------------------------------------------------------------------------------------
# Worker side: the training loop (runs on every rank)
# ---------------------------------------------------------------------------------------------

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


def all_reduce_mean(stats: Stats, device: torch.device) -> dict[str, float]:
    """Mean of each statistic over ranks (every rank passes the same keys), as floats."""
    keys = sorted(stats)
    t = torch.stack([stats[k].to(device, torch.float64) for k in keys])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


class RunFiles:
    """Rank 0's human-facing outputs in the run folder: metrics.jsonl, sample strips, GIFs."""

    def __init__(self, cfg: ExperimentConfig, resumed_step: int):
        self.url, self.endpoint = run_url(cfg), endpoint(cfg)
        self.metrics_url = storage.join(self.url, "metrics.jsonl")
        self.lines: list[str] = []
        if resumed_step and storage.exists(self.metrics_url, self.endpoint):
            self.lines = [ln for ln in storage.read_bytes(self.metrics_url, self.endpoint).decode().splitlines()
                          if ln.strip() and json.loads(ln).get("step", 0) <= resumed_step]
        storage.write_bytes_atomic(storage.join(self.url, "config.yaml"), OmegaConf.to_yaml(cfg).encode(), self.endpoint)

    def append_metrics(self, record: dict[str, Any], flush: bool) -> None:
        """Add a line; ``flush`` rewrites metrics.jsonl (object stores cannot append), at checkpoints."""
        self.lines.append(json.dumps(record, sort_keys=True))
        if flush:
            storage.write_bytes_atomic(self.metrics_url, ("\n".join(self.lines) + "\n").encode(), self.endpoint)

    def samples(self, step: int, real: torch.Tensor, pred: torch.Tensor, psnr_curves: dict[str, list[float]]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            outputs = {
                f"samples/step_{step:09d}.png": lambda p: visualize.sample_strip(real[:, :, 0], pred, real).save(p),
                f"samples/step_{step:09d}.gif": lambda p: visualize.save_gif(pred[0], p, real=real[0]),
                "samples/psnr_per_frame.png": lambda p: visualize.psnr_curve_png(psnr_curves, p),
            }
            for rel, write in outputs.items():
                local = Path(tmp) / rel.replace("/", "_")
                write(str(local))
                storage.write_bytes_atomic(storage.join(self.url, rel), local.read_bytes(), self.endpoint)


def _set_determinism(cfg: ExperimentConfig) -> None:
    torch.manual_seed(cfg.trainer.seed)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _wrap_for_ddp(cfg: ExperimentConfig) -> Callable[[torch.nn.Module], torch.nn.Module]:
    import ray.train.torch

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if cfg.trainer.sync_batchnorm and cfg.trainer.num_workers > 1:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        # Two D forwards (real, fake) before one backward need broadcast_buffers=False (SPEC §8).
        return ray.train.torch.prepare_model(module, move_to_device=False,
                                             parallel_strategy_kwargs={"broadcast_buffers": False})
    return wrap


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg: ExperimentConfig = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), config["cfg"])
    clip_shape = config["clip_shape"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    ep = endpoint(cfg)

    _set_determinism(cfg)  # identical initial weights on every rank
    trainer = checkpointing.build_trainer_from_config(cfg, device)
    step, worker_state = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model_state = checkpointing.read_model(Path(d))
            worker_state = checkpointing.read_worker(Path(d), rank)
        trainer.load_state_dict(model_state["trainer"])
        step = model_state["step"]
    elif cfg.run.stage1_checkpoint:
        trainer.load_stage1(checkpointing.load_stage1_generator(cfg.run.stage1_checkpoint, ep))
    trainer.wrap(_wrap_for_ddp(cfg))

    loader_kwargs = dict(batch_size=cfg.trainer.batch_size, rank=rank, world_size=world, seed=cfg.trainer.seed,
                         num_workers=cfg.data.loader_workers, endpoint_url=ep, skip_bad=cfg.data.skip_bad,
                         prefetch=cfg.data.prefetch)
    train_loader = ClipLoader(resolve_urls(cfg.data.train_urls, endpoint_url=ep), shuffle=True, **loader_kwargs)
    val_loader = (ClipLoader(resolve_urls(cfg.data.val_urls, endpoint_url=ep), shuffle=False, **loader_kwargs)
                  if cfg.data.val_urls else None)
    if worker_state is not None:
        train_loader.load_state_dict(worker_state["loader"])
        checkpointing.set_rng_state(worker_state["rng"])
    else:
        torch.manual_seed(cfg.trainer.seed * 1_000_003 + rank + 1)  # each rank its own noise
    batches = BatchStream(train_loader)
    files = RunFiles(cfg, step) if rank == 0 else None

    clips_per_step = sum(p.repeats for p in trainer.phases()) * cfg.trainer.batch_size * world
    if rank == 0:
        say(f"[train] {cfg.model.name} ({cfg.model.preset}) on {world} worker(s), {device}; "
            f"{'resuming at' if step else 'starting at'} step {step}/{cfg.trainer.max_steps}; "
            f"{len(train_loader)} batches/epoch/worker")
    window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
    run_start = time.perf_counter()
    while step < cfg.trainer.max_steps:
        stats = trainer.run_step(batches)
        step += 1
        window_steps += 1
        last = step == cfg.trainer.max_steps
        if step % cfg.trainer.log_every == 0 or last:
            stats = all_reduce_mean(stats, device)
            elapsed = time.perf_counter() - window_start
            waited = batches.wait_s - window_wait
            rate = window_steps * clips_per_step / max(elapsed, 1e-9)
            eta = (cfg.trainer.max_steps - step) * elapsed / window_steps
            record = {"step": step, "clips_per_s": rate, "data_wait_share": waited / max(elapsed, 1e-9),
                      **{f"train/{k}": v for k, v in stats.items()}}
            if rank == 0:
                losses = " ".join(f"{k}={v:.4f}" for k, v in sorted(stats.items()))
                say(f"[train] step {step}/{cfg.trainer.max_steps} | {rate:.1f} clips/s | {losses} | "
                    f"data wait {100 * record['data_wait_share']:.0f}% | ETA {_hms(eta)}")
            window_start, window_wait, window_steps = time.perf_counter(), batches.wait_s, 0
        else:
            record = None
        if step % cfg.trainer.val_every == 0 or last:
            val_start = time.perf_counter()
            report = {"step": step, **(record or {})}
            if val_loader is not None:
                val, first = score(trainer, val_loader, clip_shape[1], device, max_batches=cfg.trainer.val_batches)
                report.update({f"{VAL_METRIC_PREFIX}{k}": v for k, v in val.items() if not isinstance(v, list)})
                if rank == 0 and first is not None:
                    files.samples(step, first[0][:4], first[1][:4],
                                  {"model": val["psnr_curve"], "copy frame 0": val["baseline_psnr_curve"]})
                    say(f"[val] step {step}: PSNR {val['psnr']:.2f} dB (copy-frame baseline "
                        f"{val['baseline_psnr']:.2f}) SSIM {val['ssim']:.4f} (baseline {val['baseline_ssim']:.4f})")
            else:
                report[cfg.run.best_metric] = float(step)  # no validation data: "best" = latest
            if rank == 0:
                files.append_metrics(report, flush=True)
            _report_with_checkpoint(report, trainer, batches.loader, cfg, step, rank, clip_shape)
            window_start += time.perf_counter() - val_start  # progress rates count training only
        elif record is not None and rank == 0:
            # Not reported to Ray between checkpoints: ray.train.report is a barrier across ranks.
            files.append_metrics(record, flush=False)
    if rank == 0:
        say(f"[train] done: {step} steps in {_hms(time.perf_counter() - run_start)}; run folder {run_url(cfg)}")


def _report_with_checkpoint(report: dict[str, Any], trainer: GANTrainer, loader: ClipLoader,
                            cfg: ExperimentConfig, step: int, rank: int, clip_shape: list[int]) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        worker_state = {"rng": checkpointing.rng_state(), "loader": loader.state_dict(),
                        "param_digest": checkpointing.param_digest(trainer)}
        checkpointing.write(Path(tmp), rank=rank, worker_state=worker_state,
                            trainer=trainer if rank == 0 else None, step=step, clip_shape=clip_shape, cfg=cfg)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpointing.checkpoint_dir_name(step))


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
    p.add_argument("--config", default="tiny_cpu", help=f"preset ({', '.join(preset_names())}) or a YAML file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. trainer.max_steps=200 optim.lr_g=1e-4")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        result = fit(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.error:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    print(f"[train] checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    print(f"[train] metrics:    {storage.join(run_url(cfg), 'metrics.jsonl')}")
    print(f"[train] samples:    {storage.join(run_url(cfg), 'samples')}/")
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so that Ray pickles the worker loop by reference.
    from ssagan_dist.train import main as module_main

    sys.exit(module_main())
