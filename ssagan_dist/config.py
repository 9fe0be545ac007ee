"""Typed experiment configuration (OmegaConf structured configs).

``load_config("tiny_cpu", ["optim.lr_g=1e-4"])`` merges, in order: these dataclass defaults,
a YAML preset from ``ssagan_dist/configs/`` (or a YAML file path), then dotlist overrides.
Unknown keys and wrong types fail in OmegaConf's merge; ``validate`` then checks values that
types cannot express. Both raise ``ConfigError`` naming the key, before any Ray resource exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

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
    prefetch: int = 2
    skip_bad: bool = False  # skip undecodable samples (counted and logged) instead of failing
    # synthetic sky shards generated on first use when train_urls is empty (the demo)
    synth_clips: int = 256
    synth_val_clips: int = 32
    synth_dir: str = "data/synth_sky"


@dataclass
class TrainerConfig:
    num_workers: int = 1  # Ray Train workers (DDP ranks)
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
    max_failures: int = 0  # restarts of the worker group after a failure, each from the latest checkpoint
    ray_train_log_level: str = "WARNING"  # Ray Train's own console logs (INFO: every report and checkpoint)


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
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset(name_or_path: str) -> DictConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown config preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    return OmegaConf.load(path)


def load_config(preset: Optional[str] = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults <- preset <- overrides, type-checked and validated. Raises ConfigError."""
    cfg = OmegaConf.structured(ExperimentConfig)
    try:
        if preset:
            cfg = OmegaConf.merge(cfg, _preset(preset))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    validate(cfg)
    return cfg  # a DictConfig typed as ExperimentConfig


def validate(cfg: ExperimentConfig) -> None:
    """Checks that types cannot express; each message names the key."""
    from ssagan_dist.models import registry

    checks = [
        ("model.name", cfg.model.name in registry.names(), f"one of {registry.names()}"),
        ("model.preset", cfg.model.preset in ("tiny", "paper"), "'tiny' or 'paper'"),
        ("trainer.num_workers", cfg.trainer.num_workers >= 1, ">= 1"),
        ("trainer.batch_size", cfg.trainer.batch_size >= 1, ">= 1"),
        ("trainer.max_steps", cfg.trainer.max_steps >= 1, ">= 1"),
        ("trainer.cpus_per_worker", cfg.trainer.cpus_per_worker > 0, "> 0"),
        ("trainer.log_every", cfg.trainer.log_every >= 1, ">= 1"),
        ("trainer.val_every", cfg.trainer.val_every >= 1, ">= 1"),
        ("trainer.val_batches", cfg.trainer.val_batches >= 0, ">= 0"),
        ("optim.lr_g", cfg.optim.lr_g > 0, "> 0"),
        ("optim.lr_d", cfg.optim.lr_d > 0, "> 0"),
        ("optim.beta1", 0 <= cfg.optim.beta1 < 1, "in [0, 1)"),
        ("optim.beta2", 0 <= cfg.optim.beta2 < 1, "in [0, 1)"),
        ("optim.n_critic", cfg.optim.n_critic >= 1, ">= 1"),
        ("loss.lambda_con", cfg.loss.lambda_con >= 0, ">= 0"),
        ("loss.lambda_rank", cfg.loss.lambda_rank >= 0, ">= 0"),
        ("loss.lambda_gp", cfg.loss.lambda_gp >= 0, ">= 0"),
        ("loss.lambda_mse", cfg.loss.lambda_mse >= 0, ">= 0"),
        ("data.loader_workers", cfg.data.loader_workers >= 0, ">= 0"),
        ("data.synth_clips", cfg.data.synth_clips >= 1, ">= 1"),
        ("run.name", bool(cfg.run.name) and "/" not in cfg.run.name, "a non-empty name without '/'"),
        ("run.storage_path", bool(cfg.run.storage_path), "a folder or s3:// URL"),
        ("run.keep_checkpoints", cfg.run.keep_checkpoints >= 1, ">= 1"),
        ("run.max_failures", cfg.run.max_failures >= -1, ">= 0, or -1 for unlimited"),
        ("run.ray_train_log_level", cfg.run.ray_train_log_level in ("DEBUG", "INFO", "WARNING", "ERROR"),
         "DEBUG, INFO, WARNING or ERROR"),
    ]
    for key, ok, want in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"config key {key!r} = {value!r}: must be {want}")
    if cfg.trainer.sync_batchnorm and not cfg.trainer.use_gpu:
        raise ConfigError("config key 'trainer.sync_batchnorm' = True needs trainer.use_gpu=true "
                          "(torch's SyncBatchNorm runs on GPUs only)")
    if registry.get(cfg.model.name).trainer == "refine" and not cfg.run.stage1_checkpoint:
        raise ConfigError(f"config key 'run.stage1_checkpoint' is required for model {cfg.model.name!r} "
                          "(a refine model starts from a trained Stage-I generator)")
    try:
        registry.constructor_args(cfg.model.name, cfg.model.preset, dict(cfg.model.args))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'model.args': {e}") from None


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(cfg)
