"""A config made into an experiment: the one place that joins the config, the model zoo and the
trainers, and checks everything about a config that needs the model.

    cfg = experiment.load_config("tiny_cpu", ["optim.lr_g=1e-4"])  # validated; ConfigError names the key
    trainer = experiment.build_trainer(cfg, device)                # train, evaluate, predict, bench, tune
    experiment.validate(cfg).check_data()                          # before Ray: data and trained networks fit

A model registers a builder and a trainer kind (``models.registry``); the kind names a class in
``trainers.TRAINERS``. ``validate`` builds the model's networks once, on the meta device (no
memory): enough to check that its arguments make a network and to read its attributes. The
``Experiment`` it returns answers what the config implies: the keys read (a key the user sets
that nothing reads would silently do nothing, so it is refused), the clip shape the model makes,
and, reading indexes and checkpoints, whether the datasets and the trained networks the trainer
starts from (``GANTrainer.pretrained``) fit it.

Who reads what: the training loop reads the ``data``, ``trainer``, ``run``, ``metrics`` and
``perf`` sections (a few keys only under conditions, see ``Experiment.conditional_keys``); the
trainer declares the ``optim`` and ``loss`` keys it reads and the checkpoints it starts from
(``GANTrainer.keys_read``, ``GANTrainer.pretrained``); the model reads ``model``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from ssagan_dist import checkpointing, tracking
from ssagan_dist.config import NAME_RULE, ConfigError, ExperimentConfig, merge, safe_name
from ssagan_dist.data.index import DatasetInfo, inspect_dataset
from ssagan_dist.models import registry
from ssagan_dist.models.attention import SpatialSelfAttention
from ssagan_dist.trainers import TRAINERS, GANTrainer, Pretrained

# Keys that only the trainers declaring them read (``GANTrainer.pretrained``), not the loop.
PRETRAINED_KEYS = frozenset(p.key for cls in TRAINERS.values() for p in cls.pretrained)
LOOP_SECTIONS = ("data", "trainer", "run", "metrics", "perf")


# -- building --------------------------------------------------------------------------------------

def trainer_class(model_name: str) -> type[GANTrainer]:
    kind = registry.get(model_name).trainer
    if kind not in TRAINERS:
        raise KeyError(f"model {model_name!r} names trainer kind {kind!r}; kinds: {sorted(TRAINERS)}")
    return TRAINERS[kind]


def model_args(cfg: ExperimentConfig) -> dict[str, Any]:
    """The model's constructor arguments: its preset's, with ``model.args`` on top."""
    return registry.constructor_args(cfg.model.name, cfg.model.preset, dict(cfg.model.args))


def build_networks(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """The model's networks by role. ``device="meta"`` builds them without memory."""
    with torch.device(device):
        return registry.get(cfg.model.name).build(**model_args(cfg))


def build_trainer(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> GANTrainer:
    """Networks + trainer (optimizers included) for ``cfg``, on ``device``."""
    return trainer_class(cfg.model.name)(build_networks(cfg), cfg.optim, cfg.loss, device,
                                         g_ema_decay=cfg.trainer.g_ema_decay, g_ema_rampup=cfg.trainer.g_ema_rampup)


def load_trainer(uri: str, device: torch.device | str = "cpu",
                 endpoint_url: Optional[str] = None) -> tuple[GANTrainer, ExperimentConfig, dict[str, Any]]:
    """Rebuild the trainer of a checkpoint (or a run folder's latest) with its weights, in eval mode.

    Returns (trainer, config, model_state) where model_state holds "step" and "clip_shape".
    """
    with tempfile.TemporaryDirectory() as tmp:  # complete and untampered (checkpointing.load_complete)
        uri, state, _ = checkpointing.open_complete(uri, Path(tmp), endpoint_url)
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), checkpointing.read_config(Path(tmp), source=uri))
    if state.get("model", cfg.model.name) != cfg.model.name:
        raise checkpointing.CheckpointError(f"checkpoint {uri} is of model {state['model']!r}, its config.yaml says "
                                            f"{cfg.model.name!r}")
    trainer = build_trainer(cfg, device)
    trainer.load_state_dict(state["trainer"])
    for net in trainer.nets.values():
        net.eval()
    return trainer, cfg, state


# -- checking --------------------------------------------------------------------------------------

def load_config(preset: Optional[str] = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults <- preset <- overrides (``config.merge``), validated, and every key the preset or
    an override sets read by the model, its trainer or the loop. Raises ConfigError naming the
    key, before any Ray resource exists; builds the networks once, on the meta device."""
    merged = merge(preset, overrides)
    exp = validate(merged.cfg)
    exp.require_read(merged.override_keys, source="override")
    exp.require_read(merged.preset_keys, source=f"set in {preset}")
    return exp.cfg


def validate(cfg: ExperimentConfig) -> Experiment:
    """Values that types cannot express, what the trainer requires, and that the model builds
    with its arguments (shapes); each message names the key."""
    _check_values(cfg)
    trainer = trainer_class(cfg.model.name)
    for p in trainer.pretrained:
        if not OmegaConf.select(cfg, p.key):
            raise ConfigError(f"config key {p.key!r} is required for model {cfg.model.name!r} (it starts from a "
                              f"trained {p.what} generator)")
    try:
        nets = build_networks(cfg, "meta")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'model.args' (model {cfg.model.name!r}, preset {cfg.model.preset!r}): "
                          f"{e}") from None
    return Experiment(cfg, trainer, nets)


def require_read(cfg: ExperimentConfig, keys: Iterable[str], source: str = "set") -> None:
    """``Experiment.require_read`` for a config (e.g. a sweep's search space)."""
    validate(cfg).require_read(keys, source)


def dump(cfg: ExperimentConfig) -> str:
    """``Experiment.dump`` for a config: the YAML of the keys it reads."""
    return validate(cfg).dump()


def _check_values(cfg: ExperimentConfig) -> None:
    checks = [
        ("model.name", cfg.model.name in registry.names(), f"one of {registry.names()}"),
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
        ("run.name", safe_name(cfg.run.name), NAME_RULE),
        ("run.best_mode", cfg.run.best_mode in ("max", "min"), "'max' (higher run.best_metric is better) or 'min'"),
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


@dataclass(frozen=True)
class Datasets:
    train: DatasetInfo
    val: Optional[DatasetInfo]

    @property
    def clip_shape(self) -> list[int]:
        return self.train.clip_shape


@dataclass(frozen=True)
class Experiment:
    """A validated config with its trainer class and its networks on the meta device."""

    cfg: ExperimentConfig
    trainer_class: type[GANTrainer]
    nets: dict[str, nn.Module]  # meta device: shapes and attributes, no memory

    @property
    def clip_shape(self) -> Optional[list[int]]:
        """(C, T, H, W) that the model produces, when its constructor arguments say so."""
        args = model_args(self.cfg)
        if "size" in args and "frames" in args:
            return [args.get("channels", 3), args["frames"], args["size"], args["size"]]
        return None

    def conditional_keys(self) -> dict[str, tuple[bool, str]]:
        """Loop keys that are read only in some setups: key -> (read now, why not)."""
        cfg = self.cfg
        attention = any(isinstance(m, SpatialSelfAttention) for net in self.nets.values() for m in net.modules())
        return {
            "trainer.sync_batchnorm": (cfg.trainer.use_gpu and cfg.trainer.num_workers > 1,
                                       "it only acts with trainer.use_gpu=true and trainer.num_workers > 1"),
            "data.prefetch": (cfg.data.loader_workers > 0, "it only acts with data.loader_workers >= 1"),
            "perf.ddp_bucket_cap_mb": (cfg.trainer.num_workers > 1,
                                       "DDP buckets exist only with trainer.num_workers > 1"),
            "perf.ddp_gradient_as_bucket_view": (cfg.trainer.num_workers > 1,
                                                 "DDP buckets exist only with trainer.num_workers > 1"),
            "perf.pin_memory": (cfg.trainer.use_gpu,
                                "pinned memory only speeds host-to-GPU copies (trainer.use_gpu=true)"),
            "trainer.g_ema_rampup": (cfg.trainer.g_ema_decay > 0, "it only acts with trainer.g_ema_decay > 0"),
            "perf.attention": (attention, f"model {cfg.model.name!r} has no spatial self-attention layer"),
        }

    def keys_read(self) -> set[str]:
        """Every config key that the model, its trainer and the training loop read."""
        keys = {f"{section}.{k}" for section in LOOP_SECTIONS for k in OmegaConf.to_container(self.cfg[section])}
        keys -= PRETRAINED_KEYS
        keys |= {"model.name", "model.preset", "model.args"}
        keys |= set(self.trainer_class.keys_read(self.nets))
        return keys - {key for key, (read, _) in self.conditional_keys().items() if not read}

    def require_read(self, keys: Iterable[str], source: str = "set") -> None:
        """Raise ConfigError naming the first of ``keys`` (dotted) that nothing here reads."""
        read, why = self.keys_read(), self.conditional_keys()
        name = self.cfg.model.name
        for key in keys:
            if key in read:
                continue
            if OmegaConf.select(self.cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(f"config key {key!r} ({source}) does not exist")
            if key in why:
                reason = why[key][1]
            elif key in PRETRAINED_KEYS:
                reason = f"model {name!r} starts from no trained network"
            else:
                reason = (f"it is not read by model {name!r} (trainer reads "
                          f"{', '.join(k for k in sorted(read) if k.startswith(('optim.', 'loss.')))})")
            raise ConfigError(f"config key {key!r} ({source}) would do nothing: {reason}; remove it")

    def dump(self) -> str:
        """YAML of the keys read: ``load_config(path)`` of it gives the same configuration (run
        folders and a sweep's best.yaml are written this way)."""
        tree: dict[str, Any] = {}
        for key in sorted(self.keys_read()):
            section, name = key.split(".", 1)
            value = OmegaConf.select(self.cfg, key)
            if value is not None:
                tree.setdefault(section, {})[name] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return OmegaConf.to_yaml(OmegaConf.create(tree))

    def check_data(self) -> Datasets:
        """The datasets against the model and the batch, and each trained network the trainer
        starts from against its checkpoint. Reads indexes and checkpoints, starts nothing;
        raises ConfigError naming the key."""
        cfg = self.cfg
        if not cfg.data.train_urls:
            raise ConfigError("config key 'data.train_urls' is empty: name a sharded dataset "
                              "(python -m data_tools.shard) or generate synthetic skies first "
                              "(python -m data_tools.synth --out data/synth_sky/train --clips 512 --size 32 --frames 8)")
        ep = cfg.run.s3_endpoint
        train = _dataset(cfg.data.train_urls, ep, "data.train_urls")
        shape, want = train.clip_shape, self.clip_shape
        if want is not None and want != shape:
            raise ConfigError(f"config key 'model.args': model {cfg.model.name!r} makes clips of {want} (C,T,H,W) "
                              f"but data.train_urls holds {shape}; set model.args.size/frames")
        val = None
        if cfg.data.val_urls:  # any size: validation pads and masks its last batches (score, every_clip)
            val = _dataset(cfg.data.val_urls, ep, "data.val_urls")
            if val.clip_shape != shape:
                raise ConfigError(f"config key 'data.val_urls' = {cfg.data.val_urls!r}: clip shape {val.clip_shape} "
                                  f"!= {shape} of data.train_urls")
        per_step = cfg.trainer.num_workers * cfg.trainer.batch_size
        if train.clips < per_step:  # each rank needs one whole batch (the loader's rule)
            raise ConfigError(f"config key 'data.train_urls' = {train.spec!r} holds {train.clips} clips, fewer than "
                              f"one batch on every worker (trainer.num_workers={cfg.trainer.num_workers} x "
                              f"trainer.batch_size={cfg.trainer.batch_size} = {per_step}); lower "
                              "trainer.batch_size or trainer.num_workers, or add clips")
        for p in self.trainer_class.pretrained:
            self.check_pretrained(p)
        return Datasets(train, val)

    def check_pretrained(self, p: Pretrained) -> None:
        """The checkpoint named by ``p.key`` exists and its generator fits ``nets[p.network]``."""
        given, ep = OmegaConf.select(self.cfg, p.key), self.cfg.run.s3_endpoint
        with tempfile.TemporaryDirectory() as tmp:
            try:
                uri, state, _ = checkpointing.open_complete(given, Path(tmp), ep)
                trained_cfg = checkpointing.read_config(Path(tmp), source=uri)
            except FileNotFoundError as e:
                raise ConfigError(f"config key {p.key!r} = {given!r}: {e}") from None
            except checkpointing.CheckpointError as e:
                raise ConfigError(f"config key {p.key!r} = {given!r}: {e}") from None
        net = self.nets[p.network]
        for arg, (here, default) in p.same_args.items():
            trained = OmegaConf.select(trained_cfg, f"model.args.{arg}", default=None)
            trained = default if trained is None else trained
            if getattr(net, arg, trained) != trained:
                raise ConfigError(f"config key 'model.args.{here}' = {getattr(net, arg)!r}, but the {p.what} "
                                  f"checkpoint {uri!r} was trained with model.args.{arg} = {trained!r}; set "
                                  f"model.args.{here}={trained}")
        wanted = net.state_dict()
        got = state["trainer"].get("nets", {}).get("G", {})
        differ = sorted(k for k in set(wanted) | set(got)
                        if k not in wanted or k not in got or tuple(wanted[k].shape) != tuple(got[k].shape))
        if differ:
            raise ConfigError(f"config key {p.key!r} = {uri!r} is a checkpoint of model {state.get('model', '?')!r} "
                              f"whose generator does not fit {self.cfg.model.name!r}'s {p.what} generator "
                              f"({len(differ)} tensors differ, first {differ[0]!r}); {p.hint}")


def _dataset(spec: str, endpoint_url: Optional[str], key: str) -> DatasetInfo:
    """A dataset named by a config key, checked against its index (shard sizes, clip shape)."""
    try:
        return inspect_dataset(spec, endpoint_url, what=f"config key {key!r} = {spec!r}")
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
