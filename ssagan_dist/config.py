"""Typed experiment configuration (OmegaConf structured configs): the schema and its merge.

``merge("tiny_cpu", ["optim.lr_g=1e-4"])`` merges, in order: these dataclass defaults, a YAML
preset from ``ssagan_dist/configs/`` (or a YAML file path), then dotlist overrides. Unknown keys
and wrong types fail in OmegaConf's merge, raising ``ConfigError`` naming the key. Everything that
needs the model (values, buildable networks, keys that would do nothing) is checked a level up,
by ``ssagan_dist.experiment.load_config``: this module imports nothing from the project.

Every config *file* (a preset, ``--config runs/x/config.yaml``, a checkpoint's config.yaml) is
read by ``read_yaml`` alone: plain data through a safe YAML loader, and a string holding an
OmegaConf interpolation (``${...}``, e.g. ``${oc.env:AWS_SECRET_ACCESS_KEY}``) is refused naming
the file and the key, before anything could resolve it (a checkpoint is data that other people
may write; an interpolation would read this machine's environment into errors and logs).
``safe_name`` is the one rule for the names that become folders (``run.name``, a sweep's ``--name``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


class InterpolationRefused(ConfigError):
    """A config file holding an OmegaConf interpolation (``${...}``); the message names the file and key."""


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
    best_metric: str = "val/psnr"  # kept besides the last K, ranked by best_mode
    best_mode: str = "max"  # "max": higher best_metric is better (PSNR, SSIM); "min": lower (val/mse, losses)
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
    host: str = "127.0.0.1"  # interface the per-worker /metrics server binds (k8s/ run config: 0.0.0.0)
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
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown config preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of config sections, got {type(data).__name__}")
    return OmegaConf.create(data or {})  # plain data without '${': nothing for OmegaConf to resolve


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
        override_layer = OmegaConf.from_dotlist(list(overrides))
        cfg = OmegaConf.merge(cfg, override_layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    return Merged(cfg, leaf_keys(preset_layer), leaf_keys(override_layer))
