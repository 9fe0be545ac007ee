"""Typed experiment configuration (OmegaConf structured configs).

``load_config("tiny_cpu", ["optim.lr_g=1e-4"])`` merges, in order: these dataclass defaults,
a YAML preset from ``ssagan_dist/configs/`` (or a YAML file path), then dotlist overrides.
Unknown keys and wrong types fail in OmegaConf's merge; ``validate`` then checks values that
types cannot express, that the model can be built with its arguments, and that every key the
user set (in the YAML or an override) is read by the chosen model, its trainer or the loop.
All of it raises ``ConfigError`` naming the key, before any Ray resource exists.

Who reads what: the training loop reads the ``data``, ``trainer``, ``run``, ``metrics`` and ``perf``
sections (a few keys only under conditions, see ``_conditional_keys``); the trainer declares
the ``optim`` and ``loss`` keys it reads (``GANTrainer.keys_read``); the model reads ``model``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "ssagan"  # a name from ssagan_dist.models.registry
    preset: str = "tiny"  # "tiny" or "paper": the registry's constructor arguments
    # constructor arguments that replace the preset's (e.g. {size: 64, frames: 16})
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    train_urls: str = ""  # shard URLs: a brace pattern, comma-separated list, or dataset dir/URL
    val_urls: str = ""
    loader_workers: int = 2  # DataLoader worker processes per rank
    prefetch: int = 2  # batches each loader worker reads ahead (needs loader_workers >= 1)
    skip_bad: bool = False  # skip undecodable samples (counted and logged) instead of failing


@dataclass
class TrainerConfig:
    num_workers: int = 1  # Ray Train workers (DDP ranks); with min_workers, the most
    # Elastic training (spot capacity): 0 = a fixed group of num_workers. Else the group may run
    # with any size in [min_workers, num_workers] as the cluster allows, resizing from the latest
    # checkpoint; the global batch (batch_size x num_workers) is kept, so each size must divide it.
    min_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    batch_size: int = 4  # per worker
    max_steps: int = 100  # generator updates
    seed: int = 0
    deterministic: bool = True  # deterministic kernels (bit-identical resume on CPU)
    sync_batchnorm: bool = False
    log_every: int = 10
    val_every: int = 50
    val_batches: int = 8  # per worker; 0 = the whole validation set
    # Exponential moving average of G (StyleGAN2's G_ema; docs/training.md): 0 = none, else its decay
    # per G update (0.99: a half-life of 69 updates). Validation, evaluate and predict then use it.
    g_ema_decay: float = 0.0
    # its ramp-up (StyleGAN2-ADA's ema_rampup): after t G updates the half-life is at most
    # g_ema_rampup x t updates, i.e. β_t = min(g_ema_decay, 0.5 ** (1 / (g_ema_rampup·t))); 0 = none
    g_ema_rampup: float = 0.05
    # A checkpoint is written at every validation (val_every) and at the last step.


@dataclass
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.9
    n_critic: int = 5  # D updates per G update


@dataclass
class LossConfig:
    lambda_con: float = 1.0  # L1 content weight (SSA-GAN eq. 7)
    lambda_rank: float = 1.0  # Gram-matrix ranking loss weight (MD-GAN stage II)
    lambda_gp: float = 10.0  # WGAN gradient penalty (HRVGAN)
    lambda_mse: float = 1.0  # pixel MSE (HRVGAN)


@dataclass
class RunConfig:
    name: str = "ssagan-run"
    storage_path: str = "runs"  # local folder or s3://bucket/prefix (see run.s3_endpoint)
    # S3 endpoint for s3:// data and storage, e.g. http://127.0.0.1:9000; else AWS_ENDPOINT_URL(_S3)
    s3_endpoint: Optional[str] = None
    keep_checkpoints: int = 3
    best_metric: str = "val/psnr"  # kept besides the last K; higher is better
    stage1_checkpoint: Optional[str] = None  # refine models: the Stage-I run's checkpoint URI
    ray_address: Optional[str] = None  # None: join RAY_ADDRESS if set, else start a local Ray
    # restarts of the worker group after a failure (a lost worker or node), each from the latest
    # checkpoint; -1 = unlimited. A diverged run (non-finite loss) is not restarted.
    max_failures: int = 3
    ray_train_log_level: str = "WARNING"  # Ray Train's own console logs (INFO: every report and checkpoint)
    # Experiment tracking by rank 0: none, mlflow, wandb or a list ([mlflow, wandb]); where and who
    # from the trackers' environment variables (MLFLOW_TRACKING_URI, WANDB_PROJECT, ...; docs/tracking.md)
    tracking: Any = "none"


@dataclass
class MetricsConfig:
    """Prometheus export from every training worker (docs/observability.md)."""

    enabled: bool = True
    host: str = "0.0.0.0"  # interface the per-worker /metrics HTTP server binds
    # Each worker takes the first free port in [port, port + port_span): ranks sharing a node and
    # two runs on one machine never collide. On Kubernetes (one worker per pod) that is `port`.
    port: int = 9400
    port_span: int = 64
    # Prometheus file_sd folder: each worker writes <run>-<trial>-<rank>.json naming its target
    # there ("" = none), so a local Prometheus finds workers on whatever port they took.
    sd_dir: str = ""
    pushgateway: str = ""  # Pushgateway URL: also push at checkpoints and at the end (short jobs)


@dataclass
class PerfConfig:
    """Speed switches (ssagan_dist/perf.py, docs/performance.md); the defaults change nothing."""

    autocast: str = "none"  # "none", "bf16" (CPU or GPU) or "fp16" (GPU only, with a gradient scaler)
    channels_last: bool = False  # networks and 5-D inputs in channels_last_3d memory format
    compile: bool = False  # torch.compile every network (in place: state_dict keys unchanged)
    ddp_bucket_cap_mb: int = 25  # DDP gradient bucket size (torch's default 25 MB)
    ddp_gradient_as_bucket_view: bool = False  # gradients alias DDP's buckets (no copy, less memory)
    pin_memory: bool = False  # page-locked batches for asynchronous host-to-GPU copies (GPU only)
    attention: str = "auto"  # SSA kernel: "auto" (rule in models/attention.py), "sdpa" or "saved_probs"


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


def preset_names() -> list[str]:
    """Presets by the name ``--config`` takes: ``tiny_cpu``, and ``zoo/<model>`` for the zoo recipes."""
    return sorted([p.stem for p in PRESET_DIR.glob("*.yaml")]
                  + [f"zoo/{p.stem}" for p in (PRESET_DIR / "zoo").glob("*.yaml")])


def _preset(name_or_path: str) -> DictConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown config preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        return OmegaConf.load(path)
    except Exception as e:  # yaml's parser errors carry the line and column
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values set in a config tree; ``model.args`` counts as one leaf
    (its keys are checked against the model's constructor), null values as not set."""
    if prefix == "model.args":
        return [prefix] if node else []
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        return [k for key, value in node.items() for k in _leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))]
    return [] if node is None else [prefix]


def load_config(preset: Optional[str] = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults <- preset <- overrides, type-checked and validated. Raises ConfigError."""
    cfg = OmegaConf.structured(ExperimentConfig)
    try:
        preset_layer = _preset(preset) if preset else OmegaConf.create()
        cfg = OmegaConf.merge(cfg, preset_layer)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        override_layer = OmegaConf.from_dotlist(list(overrides))
        cfg = OmegaConf.merge(cfg, override_layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    validate(cfg)
    require_read(cfg, _leaf_keys(override_layer), source="override")
    require_read(cfg, _leaf_keys(preset_layer), source=f"set in {preset}")
    return cfg  # a DictConfig typed as ExperimentConfig


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate(cfg: ExperimentConfig) -> None:
    """Checks that types cannot express; each message names the key."""
    from ssagan_dist import factory

    checks = [
        ("model.name", cfg.model.name in factory.registry.names(), f"one of {factory.registry.names()}"),
        ("model.preset", cfg.model.preset in ("tiny", "paper"), "'tiny' or 'paper'"),
        ("trainer.num_workers", cfg.trainer.num_workers >= 1, ">= 1"),
        ("trainer.min_workers", 0 <= cfg.trainer.min_workers <= cfg.trainer.num_workers,
         "0 (a fixed group) or in [1, trainer.num_workers]"),
        ("trainer.batch_size", cfg.trainer.batch_size >= 1, ">= 1"),
        ("trainer.max_steps", cfg.trainer.max_steps >= 1, ">= 1"),
        ("trainer.cpus_per_worker", cfg.trainer.cpus_per_worker > 0, "> 0"),
        ("trainer.log_every", cfg.trainer.log_every >= 1, ">= 1"),
        ("trainer.val_every", cfg.trainer.val_every >= 1, ">= 1"),
        ("trainer.val_batches", cfg.trainer.val_batches >= 0, ">= 0"),
        ("trainer.g_ema_decay", 0 <= cfg.trainer.g_ema_decay < 1, "in [0, 1) (0 = no moving average of G)"),
        ("trainer.g_ema_rampup", 0 <= cfg.trainer.g_ema_rampup < math.inf, "finite and >= 0 (0 = no ramp-up)"),
        ("optim.lr_g", cfg.optim.lr_g > 0 and math.isfinite(cfg.optim.lr_g), "finite and > 0"),
        ("optim.lr_d", cfg.optim.lr_d > 0 and math.isfinite(cfg.optim.lr_d), "finite and > 0"),
        ("optim.beta1", 0 <= cfg.optim.beta1 < 1, "in [0, 1)"),
        ("optim.beta2", 0 <= cfg.optim.beta2 < 1, "in [0, 1)"),
        ("optim.n_critic", cfg.optim.n_critic >= 1, ">= 1"),
        *((f"loss.{k}", 0 <= v < math.inf, "finite and >= 0") for k, v in OmegaConf.to_container(cfg.loss).items()),
        ("data.loader_workers", cfg.data.loader_workers >= 0, ">= 0"),
        ("data.prefetch", cfg.data.prefetch >= 1, ">= 1"),
        ("run.name", bool(_SAFE_NAME.match(cfg.run.name)),
         "one folder name: letters, digits, '.', '_' or '-', not starting with '.' or '-'"),
        ("run.storage_path", bool(cfg.run.storage_path), "a folder or s3:// URL"),
        ("run.keep_checkpoints", cfg.run.keep_checkpoints >= 1, ">= 1"),
        ("run.max_failures", cfg.run.max_failures >= -1, ">= 0, or -1 for unlimited"),
        ("run.ray_train_log_level", cfg.run.ray_train_log_level in ("DEBUG", "INFO", "WARNING", "ERROR"),
         "DEBUG, INFO, WARNING or ERROR"),
        ("metrics.port", 1 <= cfg.metrics.port <= 65535, "a TCP port"),
        ("metrics.port_span", 1 <= cfg.metrics.port_span and cfg.metrics.port + cfg.metrics.port_span <= 65536,
         ">= 1, with metrics.port + metrics.port_span <= 65536"),
    ]
    for key, ok, want in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"config key {key!r} = {value!r}: must be {want}")
    from ssagan_dist import tracking

    if (why := tracking.problem(cfg.run.tracking)) is not None:
        raise ConfigError(f"config key 'run.tracking' = {cfg.run.tracking!r}: must be {why}")
    if cfg.perf.autocast not in ("none", "bf16", "fp16"):
        raise ConfigError(f"config key 'perf.autocast' = {cfg.perf.autocast!r}: must be 'none', 'bf16' or 'fp16'")
    if cfg.perf.autocast == "fp16" and not cfg.trainer.use_gpu:
        raise ConfigError("config key 'perf.autocast' = 'fp16' needs trainer.use_gpu=true (on CPU use 'bf16')")
    if cfg.perf.attention not in ("auto", "sdpa", "saved_probs"):
        raise ConfigError(f"config key 'perf.attention' = {cfg.perf.attention!r}: must be 'auto', 'sdpa' or 'saved_probs'")
    if cfg.perf.ddp_bucket_cap_mb < 1:
        raise ConfigError(f"config key 'perf.ddp_bucket_cap_mb' = {cfg.perf.ddp_bucket_cap_mb!r}: must be >= 1")
    global_batch = cfg.trainer.batch_size * cfg.trainer.num_workers
    uneven = [w for w in range(max(cfg.trainer.min_workers, 1), cfg.trainer.num_workers) if global_batch % w]
    if cfg.trainer.min_workers and uneven:
        raise ConfigError(f"config key 'trainer.min_workers' = {cfg.trainer.min_workers}: an elastic group keeps the "
                          f"global batch trainer.batch_size x trainer.num_workers = {global_batch}, which "
                          f"{', '.join(map(str, uneven))} worker(s) cannot split evenly; pick sizes that divide it")
    if cfg.trainer.sync_batchnorm and not cfg.trainer.use_gpu:
        raise ConfigError("config key 'trainer.sync_batchnorm' = True needs trainer.use_gpu=true "
                          "(torch's SyncBatchNorm runs on GPUs only)")
    if factory.registry.get(cfg.model.name).trainer == "refine" and not cfg.run.stage1_checkpoint:
        raise ConfigError(f"config key 'run.stage1_checkpoint' is required for model {cfg.model.name!r} "
                          "(a refine model starts from a trained Stage-I generator)")
    try:
        factory.build_networks(cfg, "meta")  # constructor arguments and the shapes they imply
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'model.args' (model {cfg.model.name!r}, preset {cfg.model.preset!r}): "
                          f"{e}") from None


def _conditional_keys(cfg: ExperimentConfig) -> dict[str, tuple[bool, str]]:
    """Loop keys that are read only in some setups: key -> (read now, why not)."""
    from ssagan_dist import factory

    from ssagan_dist.models.attention import SpatialSelfAttention

    refine = factory.registry.get(cfg.model.name).trainer == "refine"
    attention = any(isinstance(m, SpatialSelfAttention)
                    for net in factory.build_networks(cfg, "meta").values() for m in net.modules())
    return {
        "trainer.sync_batchnorm": (cfg.trainer.use_gpu and cfg.trainer.num_workers > 1,
                                   "it only acts with trainer.use_gpu=true and trainer.num_workers > 1"),
        "data.prefetch": (cfg.data.loader_workers > 0, "it only acts with data.loader_workers >= 1"),
        "perf.ddp_bucket_cap_mb": (cfg.trainer.num_workers > 1, "DDP buckets exist only with trainer.num_workers > 1"),
        "perf.ddp_gradient_as_bucket_view": (cfg.trainer.num_workers > 1,
                                             "DDP buckets exist only with trainer.num_workers > 1"),
        "perf.pin_memory": (cfg.trainer.use_gpu, "pinned memory only speeds host-to-GPU copies (trainer.use_gpu=true)"),
        "trainer.g_ema_rampup": (cfg.trainer.g_ema_decay > 0, "it only acts with trainer.g_ema_decay > 0"),
        "run.stage1_checkpoint": (refine, f"model {cfg.model.name!r} has no Stage-I generator to load"),
        "perf.attention": (attention, f"model {cfg.model.name!r} has no spatial self-attention layer"),
    }


def keys_read(cfg: ExperimentConfig) -> set[str]:
    """Every config key that ``cfg``'s model, trainer and the training loop read."""
    from ssagan_dist import factory

    loop_sections = ("data", "trainer", "run", "metrics", "perf")
    keys = {f"{section}.{k}" for section in loop_sections for k in OmegaConf.to_container(cfg[section])}
    keys |= {"model.name", "model.preset", "model.args"}
    keys |= set(factory.keys_read(cfg))
    for key, (read, _) in _conditional_keys(cfg).items():
        if not read:
            keys.discard(key)
    return keys


def require_read(cfg: ExperimentConfig, keys: Iterable[str], source: str = "set") -> None:
    """Raise ConfigError naming the first of ``keys`` (dotted, e.g. from a sweep's search space)
    that nothing in ``cfg``'s model, trainer or loop reads."""
    read = keys_read(cfg)
    why = _conditional_keys(cfg)
    for key in keys:
        if key in read:
            continue
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"config key {key!r} ({source}) does not exist")
        reason = why[key][1] if key in why else f"it is not read by model {cfg.model.name!r} " \
                 f"(trainer reads {', '.join(k for k in sorted(read) if k.startswith(('optim.', 'loss.')))})"
        raise ConfigError(f"config key {key!r} ({source}) would do nothing: {reason}; remove it")


def dump(cfg: ExperimentConfig) -> str:
    """YAML of the keys ``cfg``'s model, trainer and loop read: ``load_config(path)`` of it
    gives the same configuration (run folders and a sweep's best.yaml are written this way)."""
    read = keys_read(cfg)
    tree: dict[str, Any] = {}
    for key in sorted(read):
        section, name = key.split(".", 1)
        value = OmegaConf.select(cfg, key)
        if value is not None:
            tree.setdefault(section, {})[name] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return OmegaConf.to_yaml(OmegaConf.create(tree))
