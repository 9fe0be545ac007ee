"""Typed experiment configuration (OmegaConf structured configs): the schema and its merge.

``merge("tiny_cpu", ["optim.lr_g=1e-4"])`` merges, in order: these dataclass defaults, a YAML
preset from ``ssagan_dist/configs/`` (or a YAML file path), then dotlist overrides. Unknown keys
and wrong types fail in OmegaConf's merge, raising ``ConfigError`` naming the key. Everything that
needs the model (values, buildable networks, keys that would do nothing) is checked a level up,
by ``ssagan_dist.experiment.load_config``: this module imports nothing from the project.

A preset is named by its path under ``ssagan_dist/configs/`` without ``.yaml``, its folder saying
what it is: ``paper/<setup>`` the published setups at full size (GPUs, S3 data: ``paper/ssagan_a``
is the SSA-GAN paper's 8-GPU run), ``zoo/<model>`` the small CPU recipes ``bench zoo`` trains
(``zoo/ssagan_a`` is the same model, another recipe), and at the top ``tiny_cpu`` (the demo) and
``defaults`` (these dataclass defaults alone). ``sweeps/`` holds ``--sweep`` files, not presets.
A paper setup's old bare name (``ssagan_a``, before 2026-12-07) still loads, answered with one
line giving its new name; no top-level name may also name a file in a folder.

Every config *file* (a preset, ``--config runs/x/config.yaml``, a checkpoint's config.yaml) is
read by ``read_yaml`` alone: plain data through a safe YAML loader, and a string holding an
OmegaConf interpolation (``${...}``, e.g. ``${oc.env:AWS_SECRET_ACCESS_KEY}``) is refused naming
the file and the key, before anything could resolve it (a checkpoint is data that other people
may write; an interpolation would read this machine's environment into errors and logs).
``safe_name`` is the one rule for the names that become folders (``run.name``, a sweep's ``--name``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


class InterpolationRefused(ConfigError):
    """A config file holding an OmegaConf interpolation (``${...}``); the message names the file and key."""


# Each section has one reader (docs/configuration.md): the model registry reads ``model``; the
# trainer (``trainers/``) is handed ``optim``, ``loss``, ``ema`` and ``init`` as typed objects; the
# data layer reads ``data``; the training loop ``loop``, ``checkpoint``, ``ddp`` and ``perf``; the
# Ray set-up ``scaling`` and ``ray``; telemetry ``telemetry``; tracking ``tracking``. ``run`` names
# the run and where it lives, for all of them. "rank" is a DDP process; "loader process" a
# DataLoader worker; "flavor" the registry's named constructor arguments; "preset" (recipe) a
# ``--config`` YAML file.

@dataclass
class ModelConfig:
    name: str = "ssagan"  # a name from ssagan_dist.models.registry
    flavor: str = "tiny"  # the registry's named constructor arguments for this model (registry.flavors)
    # constructor arguments that replace the flavor's (e.g. {size: 64, frames: 16})
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    train_urls: str = ""  # shard URLs: a brace pattern, comma-separated list, or dataset dir/URL
    val_urls: str = ""
    loader_processes: int = 2  # DataLoader worker processes per rank (0: load in the rank's own process)
    prefetch: int = 2  # batches each loader process reads ahead (needs loader_processes >= 1)
    skip_bad: bool = False  # skip undecodable samples (counted and logged) instead of failing
    pin_memory: bool = False  # page-locked batches for asynchronous host-to-GPU copies (GPU only)


@dataclass
class ScalingConfig:
    """How many ranks, on what (read by the Ray set-up in train.py)."""

    ranks: int = 1  # Ray Train workers, one DDP rank each; with min_ranks, the most
    # Elastic training (spot capacity): 0 = a fixed group of `ranks`. Else the group may run with
    # any size in [min_ranks, ranks] as the cluster allows, resizing from the latest checkpoint;
    # the global batch (loop.batch_size x ranks) is kept, so each size must divide it.
    min_ranks: int = 0
    use_gpu: bool = False
    cpus_per_rank: float = 1.0


@dataclass
class RayConfig:
    """The Ray cluster and Ray Train's own behaviour (read by the Ray set-up in train.py)."""

    address: Optional[str] = None  # None: join RAY_ADDRESS if set, else start a local Ray
    # restarts of the rank group after a failure (a lost worker or node), each from the latest
    # checkpoint; -1 = unlimited. A diverged run (non-finite loss) is not restarted.
    max_failures: int = 3
    train_log_level: str = "WARNING"  # Ray Train's own console logs (INFO: every report and checkpoint)


@dataclass
class LoopConfig:
    """The training loop's batch, length and cadence (train.py)."""

    batch_size: int = 4  # per rank
    max_steps: int = 100  # generator updates
    seed: int = 0
    deterministic: bool = True  # deterministic kernels (bit-identical resume on CPU)
    log_every: int = 10
    val_every: int = 50  # validation, then a checkpoint (also at the last step)
    val_batches: int = 8  # per rank; 0 = the whole validation set


@dataclass
class CheckpointConfig:
    """Which checkpoints the run keeps (Ray Train's CheckpointConfig, read by train.py)."""

    keep: int = 3  # the latest K
    best_metric: str = "val/psnr"  # and the best by this metric
    best_mode: str = "max"  # "max": higher best_metric is better (PSNR, SSIM); "min": lower (val/mse, losses)


@dataclass
class DDPConfig:
    """DistributedDataParallel's settings (read where the loop wraps the networks)."""

    sync_batchnorm: bool = False  # BatchNorm statistics across ranks (GPU only)
    bucket_cap_mb: int = 25  # gradient bucket size (torch's default 25 MB)
    gradient_as_bucket_view: bool = False  # gradients alias DDP's buckets (no copy, less memory)


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
class EMAConfig:
    """The exponential moving average of G (StyleGAN2's G_ema; docs/training.md), kept by the trainer.
    Validation, evaluate and predict then use it."""

    decay: float = 0.0  # 0 = none, else its decay per G update (0.99: a half-life of 69 updates)
    # its ramp-up (StyleGAN2-ADA's ema_rampup): after t G updates the half-life is at most
    # rampup x t updates, i.e. beta_t = min(decay, 0.5 ** (1 / (rampup * t))); 0 = none
    rampup: float = 0.05


@dataclass
class InitConfig:
    """Trained networks a trainer starts from (``GANTrainer.pretrained`` says which it needs)."""

    stage1_checkpoint: Optional[str] = None  # refine models: the Stage-I run's checkpoint URI (or run folder)


@dataclass
class RunConfig:
    """The run's name and where it lives (read by every layer)."""

    name: str = "ssagan-run"
    storage_path: str = "runs"  # local folder or s3://bucket/prefix (see run.s3_endpoint)
    # S3 endpoint for s3:// data and storage, e.g. http://127.0.0.1:9000; else AWS_ENDPOINT_URL(_S3)
    s3_endpoint: Optional[str] = None


@dataclass
class TrackingConfig:
    """Experiment tracking by rank 0 (docs/tracking.md)."""

    # none, mlflow, wandb or a list ([mlflow, wandb]); where and who from the trackers' environment
    # variables (MLFLOW_TRACKING_URI, WANDB_PROJECT, ...)
    backends: Any = "none"


@dataclass
class TelemetryConfig:
    """Prometheus export from every training rank (docs/observability.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # interface the per-rank /metrics server binds (k8s/ run config: 0.0.0.0)
    # Each rank takes the first free port in [port, port + port_span): ranks sharing a node and
    # two runs on one machine never collide. On Kubernetes (one rank per pod) that is `port`.
    port: int = 9400
    port_span: int = 64
    # Prometheus file_sd folder: each rank writes <run>-<trial>-<rank>.json naming its target
    # there ("" = none), so a local Prometheus finds ranks on whatever port they took.
    sd_dir: str = ""
    pushgateway: str = ""  # Pushgateway URL: also push at checkpoints and at the end (short jobs)


@dataclass
class PerfConfig:
    """Speed switches (ssagan_dist/perf.py, docs/performance.md); the defaults change nothing."""

    autocast: str = "none"  # "none", "bf16" (CPU or GPU) or "fp16" (GPU only, with a gradient scaler)
    channels_last: bool = False  # networks and 5-D inputs in channels_last_3d memory format
    compile: bool = False  # torch.compile every network (in place: state_dict keys unchanged)
    attention: str = "auto"  # SSA kernel: "auto" (rule in models/attention.py), "sdpa" or "saved_probs"


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    init: InitConfig = field(default_factory=InitConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


# -- rules declared by the code that reads a key (collected by ssagan_dist.experiment) --------------

@dataclass(frozen=True)
class Allowed:
    """The values a key may take, declared beside the code that reads it; a config whose value
    fails ``ok(cfg)`` is refused naming ``key`` and ``want``."""

    key: str
    ok: Callable[[Any], bool]  # of the whole config
    want: str


@dataclass(frozen=True)
class ReadWhen:
    """A key its reader acts on only in some setups, declared beside the code that reads it: set
    when ``read(cfg, nets)`` is false (``nets``: the model's networks on the meta device), it would
    do nothing, and is refused with ``why_not`` (``{model}`` there: the model's name)."""

    key: str
    read: Callable[[Any, Any], bool]
    why_not: str


# Keys renamed on 2026-12-07 (issue 34): old dotted key -> new. ``merge`` (and so every config
# file, override, checkpoint's config.yaml and sweep file) still reads the old names, answering
# each with one line that gives its new name; they will be refused in a later release.
RENAMED_KEYS: dict[str, str] = {
    "model.preset": "model.flavor",
    "data.loader_workers": "data.loader_processes",
    "perf.pin_memory": "data.pin_memory",
    "trainer.num_workers": "scaling.ranks",
    "trainer.min_workers": "scaling.min_ranks",
    "trainer.use_gpu": "scaling.use_gpu",
    "trainer.cpus_per_worker": "scaling.cpus_per_rank",
    "run.ray_address": "ray.address",
    "run.max_failures": "ray.max_failures",
    "run.ray_train_log_level": "ray.train_log_level",
    "trainer.batch_size": "loop.batch_size",
    "trainer.max_steps": "loop.max_steps",
    "trainer.seed": "loop.seed",
    "trainer.deterministic": "loop.deterministic",
    "trainer.log_every": "loop.log_every",
    "trainer.val_every": "loop.val_every",
    "trainer.val_batches": "loop.val_batches",
    "run.keep_checkpoints": "checkpoint.keep",
    "run.best_metric": "checkpoint.best_metric",
    "run.best_mode": "checkpoint.best_mode",
    "trainer.sync_batchnorm": "ddp.sync_batchnorm",
    "perf.ddp_bucket_cap_mb": "ddp.bucket_cap_mb",
    "perf.ddp_gradient_as_bucket_view": "ddp.gradient_as_bucket_view",
    "trainer.g_ema_decay": "ema.decay",
    "trainer.g_ema_rampup": "ema.rampup",
    "run.stage1_checkpoint": "init.stage1_checkpoint",
    "run.tracking": "tracking.backends",
    "metrics.enabled": "telemetry.enabled",
    "metrics.host": "telemetry.host",
    "metrics.port": "telemetry.port",
    "metrics.port_span": "telemetry.port_span",
    "metrics.sd_dir": "telemetry.sd_dir",
    "metrics.pushgateway": "telemetry.pushgateway",
}
_told: set[str] = set()  # old keys already answered in this process


def new_key(key: str) -> str:
    """The current name of a dotted key (itself when it was not renamed)."""
    return RENAMED_KEYS.get(key, key)


def upgrade(tree: Any, source: str) -> Any:
    """A config tree (plain data, as a file holds it) with renamed keys moved to their new
    place; each old key is answered once per process with a line naming its new one. A tree
    holding both an old key and its new one is refused (which one would win is not obvious)."""
    if not isinstance(tree, dict) or not any(isinstance(v, dict) for v in tree.values()):
        return tree
    out = {section: dict(v) if isinstance(v, dict) else v for section, v in tree.items()}
    for old, new in RENAMED_KEYS.items():
        old_section, old_name = old.split(".", 1)
        section = out.get(old_section)
        if not isinstance(section, dict) or old_name not in section:
            continue
        value = section.pop(old_name)
        new_section, new_name = new.split(".", 1)
        target = out.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config {source}: key {new_section!r} must be a section")
        if new_name in target:
            raise ConfigError(f"config {source}: sets both {old!r} (its old name) and {new!r}; keep {new!r}")
        target[new_name] = value
        if not section:
            del out[old_section]
        tell_renamed(old, source)
    return out


def upgrade_key(key: str, source: str) -> str:
    """A dotted key's current name (an old one answered once, as ``upgrade`` does)."""
    if key in RENAMED_KEYS:
        tell_renamed(key, source)
        return RENAMED_KEYS[key]
    return key


def upgrade_override(override: str, source: str = "override") -> str:
    """``key=value`` with an old key renamed (answered once, as ``upgrade`` does)."""
    key, sep, value = override.partition("=")
    return f"{upgrade_key(key.strip(), source)}={value}" if sep else override


def tell_renamed(old: str, source: str) -> None:
    if old not in _told:
        _told.add(old)
        print(f"[config] {old} is now {RENAMED_KEYS[old]} ({source}); the old name still works for now",
              file=sys.stderr, flush=True)


def preset_names() -> list[str]:
    """Presets by the name ``--config`` takes, folder and all (module docstring): ``defaults``,
    ``tiny_cpu``, ``paper/<setup>``, ``zoo/<model>``."""
    return sorted(p.relative_to(PRESET_DIR).with_suffix("").as_posix()
                  for folder in ("", "paper", "zoo") for p in (PRESET_DIR / folder).glob("*.yaml"))


# -- names that become folders ---------------------------------------------------------------------

NAME_RULE = ("one folder name: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit, "
             "without '..'")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(name: Any) -> bool:
    """Whether ``name`` may name a folder under a storage path (``run.name``, a sweep's ``--name``):
    the whole string (``re.fullmatch``: no trailing newline slips through) of ``NAME_RULE``, so no
    '/', no '..', no leading '.' or '-', nothing a shell or a URL would read differently."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


# -- config files as plain data -------------------------------------------------------------------

class _PlainLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml's safe loader (no Python objects) reading numbers as OmegaConf does (``1e-4`` is a
    float), no timestamps, and refusing duplicate keys as OmegaConf.load does."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in seen:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found duplicate key {key_node.value}", key_node.start_mark)
            seen.add(getattr(key_node, "value", None))
        return super().construct_mapping(node, deep=deep)


_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
                   |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))

MAX_YAML_NODES = 100_000  # after alias expansion: a config has hundreds; a "billion laughs" file is refused


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    memo: dict[int, int] = {}

    def count(n: yaml.Node) -> int:
        if id(n) in memo:
            return memo[id(n)]
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(count(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(count(k) + count(v) for k, v in n.value)
        memo[id(n)] = total = min(total, limit + 1)
        return total

    return count(node)


def interpolations(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the strings (keys or values) in plain data that hold ``${``."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(key, str) and "${" in key:
                found.append(where)
            found += interpolations(value, where)
        return found
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in interpolations(v, f"{prefix}[{i}]")]
    return [prefix or "(the document)"] if isinstance(node, str) and "${" in node else []


def parse_yaml(text: str, source: str) -> Any:
    """A config file's text as plain data (dicts, lists, str, numbers, bools, None); raises
    ConfigError naming ``source`` if it is not YAML or holds an OmegaConf interpolation. The
    message never quotes the interpolation's value, only its key."""
    try:
        loader = _PlainLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
                raise ConfigError(f"config file {source}: more than {MAX_YAML_NODES} YAML nodes once its aliases "
                                  "are expanded; not a configuration")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:  # the parser's errors carry the line and column
        raise ConfigError(f"config file {source}: not valid YAML: {e}") from None
    found = interpolations(data)
    if found:
        raise InterpolationRefused(f"config file {source}: key {found[0]!r} holds an interpolation ('${{...}}'); config files "
                          "are read as plain data, never resolved (an interpolation could read this machine's "
                          "environment, e.g. its credentials): write the value itself")
    return data


def read_yaml(path: Path | str, source: Optional[str] = None) -> Any:
    """``parse_yaml`` of a local file (``source``: how errors name it, e.g. the checkpoint's URL)."""
    shown = source or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {shown}: not UTF-8 text") from None
    return parse_yaml(text, shown)


def _preset(name_or_path: str) -> DictConfig:
    path = Path(name_or_path)
    if not path.suffix:
        names = preset_names()
        if name_or_path not in names and f"paper/{name_or_path}" in names:  # its name before 2026-12-07
            if f"preset:{name_or_path}" not in _told:
                _told.add(f"preset:{name_or_path}")
                print(f"[config] preset {name_or_path} is now paper/{name_or_path}; the old name still works "
                      "for now", file=sys.stderr, flush=True)
            name_or_path = f"paper/{name_or_path}"
        elif name_or_path not in names:
            raise ConfigError(f"unknown config preset {name_or_path!r}; presets: {', '.join(names)}")
        path = PRESET_DIR / f"{name_or_path}.yaml"
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of config sections, got {type(data).__name__}")
    return OmegaConf.create(upgrade(data or {}, str(path)))  # plain data without '${': nothing to resolve


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values set in a config tree; ``model.args`` counts as one leaf
    (its keys are checked against the model's constructor), null values as not set."""
    if prefix == "model.args":
        return [prefix] if node else []
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        return [k for key, value in node.items() for k in leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))]
    return [] if node is None else [prefix]


class Merged(NamedTuple):
    cfg: ExperimentConfig  # a DictConfig typed as ExperimentConfig
    preset_keys: list[str]  # the dotted keys the preset sets
    override_keys: list[str]  # and those the overrides set


def merge(preset: Optional[str] = None, overrides: list[str] | tuple[str, ...] = ()) -> Merged:
    """Defaults <- preset <- overrides, type-checked; values are not checked here. Raises ConfigError."""
    cfg = OmegaConf.structured(ExperimentConfig)
    try:
        preset_layer = _preset(preset) if preset else OmegaConf.create()
        cfg = OmegaConf.merge(cfg, preset_layer)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        override_layer = OmegaConf.from_dotlist([upgrade_override(o) for o in overrides])
        cfg = OmegaConf.merge(cfg, override_layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    return Merged(cfg, leaf_keys(preset_layer), leaf_keys(override_layer))
