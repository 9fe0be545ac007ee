"""A config made into an experiment: the one place that joins the config, the model zoo and the
trainers, and checks everything about a config that needs the model.

    cfg = experiment.load_config("tiny_cpu", ["optim.lr_g=1e-4"])  # validated; ConfigError names the key
    trainer = experiment.build_trainer(cfg, device)                # train, evaluate, predict, bench, tune
    experiment.validate(cfg).check_data()                          # before Ray: data and trained networks fit

A model registers a builder and a trainer family (``models.registry``); the family names a class in
``trainers.TRAINERS``. ``validate`` builds the model's networks once, on the meta device (no
memory): enough to check that its arguments make a network and to read its attributes. The
``Experiment`` it returns answers what the config implies: the keys read (a key the user sets
that nothing reads would silently do nothing, so it is refused), the clip shape the model makes,
and, reading indexes and checkpoints, whether the datasets and the trained networks the trainer
starts from (``GANTrainer.pretrained``) fit it.

Who reads what (``config.py`` names each section's reader): the model reads ``model``; the
trainer is handed ``optim``, ``loss``, ``ema`` and ``init`` and declares the fields it reads
(``GANTrainer.fields_read``); the loop, the Ray set-up, telemetry and tracking read every key of
their sections. A reader that acts on a key only in some setups, or takes only some values,
declares it beside its code (``config.ReadWhen``, ``config.Allowed`` in ``CONFIG_RULES``); the
checks here read those declarations (``RULES``), so a rule lives in one place.
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

from ssagan_dist import checkpointing, parallel, perf, tracking
from ssagan_dist.config import NAME_RULE, Allowed, ConfigError, ExperimentConfig, ReadWhen, merge, safe_name
from ssagan_dist.data import loader
from ssagan_dist.data.index import DatasetInfo, inspect_dataset
from ssagan_dist.models import registry
from ssagan_dist.trainers import TRAINERS, GANTrainer, Pretrained, ema

# Sections whose every key is read (by the loop, the Ray set-up, telemetry, tracking), unless a
# ReadWhen below says otherwise; the trainer's sections are read as it declares.
WHOLE_SECTIONS = ("data", "scaling", "ray", "loop", "checkpoint", "ddp", "run", "tracking", "telemetry", "perf")
TRAINER_SECTIONS = ("optim", "loss", "ema", "init")
# Every reader's declared rules (values and "read only when"), in one list.
RULES: tuple[Allowed | ReadWhen, ...] = (*loader.CONFIG_RULES, *parallel.CONFIG_RULES, *perf.CONFIG_RULES,
                                         *ema.CONFIG_RULES)


# -- building --------------------------------------------------------------------------------------

def trainer_class(model_name: str) -> type[GANTrainer]:
    family = registry.get(model_name).family
    if family not in TRAINERS:
        raise KeyError(f"model {model_name!r} names trainer family {family!r}; families: {sorted(TRAINERS)}")
    return TRAINERS[family]


def model_args(cfg: ExperimentConfig) -> dict[str, Any]:
    """The model's constructor arguments: its flavor's, with ``model.args`` on top."""
    return registry.constructor_args(cfg.model.name, cfg.model.flavor, dict(cfg.model.args))


def build_networks(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """The model's networks by role. ``device="meta"`` builds them without memory."""
    with torch.device(device):
        return registry.get(cfg.model.name).build(**model_args(cfg))


def build_trainer(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> GANTrainer:
    """Networks + trainer (optimizers included) for ``cfg``, on ``device``."""
    return trainer_class(cfg.model.name)(build_networks(cfg), cfg.optim, cfg.loss, device, ema=cfg.ema, init=cfg.init)


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

def load(preset: Optional[str] = None, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Defaults <- preset <- overrides (``config.merge``), validated, and every key the preset or
    an override sets read by the model, its trainer or the loop. Raises ConfigError naming the
    key, before any Ray resource exists; builds the networks once, on the meta device. The
    ``Experiment`` goes on to ``train.prepare``: a command validates its config once."""
    merged = merge(preset, overrides)
    exp = validate(merged.cfg)
    exp.require_read(merged.override_keys, source="override")
    exp.require_read(merged.preset_keys, source=f"set in {preset}")
    return exp


def load_config(preset: Optional[str] = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """``load``'s validated config."""
    return load(preset, overrides).cfg


def validate(cfg: ExperimentConfig) -> Experiment:
    """Values that types cannot express, what the trainer requires, and that the model builds
    with its arguments (shapes); each message names the key."""
    _check_values(cfg)
    trainer = trainer_class(cfg.model.name)
    for p in trainer.pretrained:
        if not getattr(cfg.init, p.field):
            raise ConfigError(f"config key {p.key!r} is required for model {cfg.model.name!r} (it starts from a "
                              f"trained {p.what} generator)")
    try:
        nets = build_networks(cfg, "meta")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'model.args' (model {cfg.model.name!r}, flavor {cfg.model.flavor!r}): "
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
        Allowed("model.name", lambda c: c.model.name in registry.names(), f"one of {registry.names()}"),
        Allowed("model.flavor", lambda c: c.model.flavor in registry.flavors(c.model.name),
                f"one of model {cfg.model.name!r}'s flavors {registry.flavors(cfg.model.name)}"
                if cfg.model.name in registry.names() else "a flavor of the model"),
        Allowed("scaling.ranks", lambda c: c.scaling.ranks >= 1, ">= 1"),
        Allowed("scaling.min_ranks", lambda c: 0 <= c.scaling.min_ranks <= c.scaling.ranks,
                "0 (a fixed group) or in [1, scaling.ranks]"),
        Allowed("scaling.cpus_per_rank", lambda c: c.scaling.cpus_per_rank > 0, "> 0"),
        Allowed("loop.batch_size", lambda c: c.loop.batch_size >= 1, ">= 1"),
        Allowed("loop.max_steps", lambda c: c.loop.max_steps >= 1, ">= 1"),
        Allowed("loop.log_every", lambda c: c.loop.log_every >= 1, ">= 1"),
        Allowed("loop.val_every", lambda c: c.loop.val_every >= 1, ">= 1"),
        Allowed("loop.val_batches", lambda c: c.loop.val_batches >= 0, ">= 0"),
        Allowed("optim.lr_g", lambda c: c.optim.lr_g > 0 and math.isfinite(c.optim.lr_g), "finite and > 0"),
        Allowed("optim.lr_d", lambda c: c.optim.lr_d > 0 and math.isfinite(c.optim.lr_d), "finite and > 0"),
        Allowed("optim.beta1", lambda c: 0 <= c.optim.beta1 < 1, "in [0, 1)"),
        Allowed("optim.beta2", lambda c: 0 <= c.optim.beta2 < 1, "in [0, 1)"),
        Allowed("optim.n_critic", lambda c: c.optim.n_critic >= 1, ">= 1"),
        *(Allowed(f"loss.{k}", lambda c, k=k: 0 <= c.loss[k] < math.inf, "finite and >= 0") for k in cfg.loss),
        Allowed("data.loader_processes", lambda c: c.data.loader_processes >= 0, ">= 0"),
        Allowed("data.prefetch", lambda c: c.data.prefetch >= 1, ">= 1"),
        Allowed("run.name", lambda c: safe_name(c.run.name), NAME_RULE),
        Allowed("run.storage_path", lambda c: bool(c.run.storage_path), "a folder or s3:// URL"),
        Allowed("checkpoint.keep", lambda c: c.checkpoint.keep >= 1, ">= 1"),
        Allowed("checkpoint.best_mode", lambda c: c.checkpoint.best_mode in ("max", "min"),
                "'max' (higher checkpoint.best_metric is better) or 'min'"),
        Allowed("ray.max_failures", lambda c: c.ray.max_failures >= -1, ">= 0, or -1 for unlimited"),
        Allowed("ray.train_log_level", lambda c: c.ray.train_log_level in ("DEBUG", "INFO", "WARNING", "ERROR"),
                "DEBUG, INFO, WARNING or ERROR"),
        Allowed("telemetry.port", lambda c: 1 <= c.telemetry.port <= 65535, "a TCP port"),
        Allowed("telemetry.port_span",
                lambda c: 1 <= c.telemetry.port_span and c.telemetry.port + c.telemetry.port_span <= 65536,
                ">= 1, with telemetry.port + telemetry.port_span <= 65536"),
        Allowed("tracking.backends", lambda c: tracking.problem(c.tracking.backends) is None,
                str(tracking.problem(cfg.tracking.backends))),
        *(rule for rule in RULES if isinstance(rule, Allowed)),
    ]
    for rule in checks:
        if not rule.ok(cfg):
            value = OmegaConf.select(cfg, rule.key)
            raise ConfigError(f"config key {rule.key!r} = {value!r}: must be {rule.want}")
    global_batch = cfg.loop.batch_size * cfg.scaling.ranks
    uneven = [w for w in range(max(cfg.scaling.min_ranks, 1), cfg.scaling.ranks) if global_batch % w]
    if cfg.scaling.min_ranks and uneven:
        raise ConfigError(f"config key 'scaling.min_ranks' = {cfg.scaling.min_ranks}: an elastic group keeps the "
                          f"global batch loop.batch_size x scaling.ranks = {global_batch}, which "
                          f"{', '.join(map(str, uneven))} rank(s) cannot split evenly; pick sizes that divide it")


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
        """Keys their readers act on only in some setups (``RULES``' ReadWhen): key -> (read now, why not)."""
        return {rule.key: (bool(rule.read(self.cfg, self.nets)), rule.why_not.format(model=self.cfg.model.name))
                for rule in RULES if isinstance(rule, ReadWhen)}

    def keys_read(self) -> set[str]:
        """Every config key that the model, its trainer, the loop, the Ray set-up, telemetry and
        tracking read."""
        keys = {f"{section}.{k}" for section in WHOLE_SECTIONS for k in OmegaConf.to_container(self.cfg[section])}
        keys |= {"model.name", "model.flavor", "model.args"}
        keys |= {f"{section}.{field}" for section, fields in self.trainer_class.fields_read(self.nets).items()
                 for field in fields}
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
            elif key.startswith("init."):
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
        per_step = cfg.scaling.ranks * cfg.loop.batch_size
        if train.clips < per_step:  # each rank needs one whole batch (the loader's rule)
            raise ConfigError(f"config key 'data.train_urls' = {train.spec!r} holds {train.clips} clips, fewer than "
                              f"one batch on every worker (scaling.ranks={cfg.scaling.ranks} x "
                              f"loop.batch_size={cfg.loop.batch_size} = {per_step}); lower "
                              "loop.batch_size or scaling.ranks, or add clips")
        for p in self.trainer_class.pretrained:
            self.check_pretrained(p)
        return Datasets(train, val)

    def check_pretrained(self, p: Pretrained) -> None:
        """The checkpoint named by ``p.key`` exists and its generator fits ``nets[p.network]``."""
        given, ep = getattr(self.cfg.init, p.field), self.cfg.run.s3_endpoint
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
