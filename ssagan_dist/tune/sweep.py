"""Sweep files: the search space, metric, search algorithm and scheduler of a Ray Tune sweep.

A sweep file is YAML (presets in ``ssagan_dist/configs/sweeps/``, docs/tuning.md has the schema):

    metric: val/psnr            # any metric the training loop reports
    mode: max
    num_samples: 16             # trials (with grid entries: repeats of the whole grid)
    search: {algorithm: random, seed: 0}     # random | grid | optuna (TPE)
    scheduler: {name: asha, grace_period: 200, reduction_factor: 3}   # none | asha | pbt
    space:                      # any config keys
      optim.lr_g: {loguniform: [1.0e-5, 1.0e-3]}
      optim.n_critic: {choice: [1, 2, 5]}
    overrides: [loop.max_steps=2000]      # the configuration every trial trains with
    driver_cpus: 0.25           # the trial's driver function (its Train workers ask for their own)
    max_concurrent_trials: auto
    max_failures: 1             # retries of a failed trial, each from its latest checkpoint
    report_timeout_s: 3600      # a trial with no validation report for this long fails (hang guard)

Everything here is checked before Ray starts; errors name the file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ssagan_dist.config import ConfigError, interpolations, upgrade_key, upgrade_override

SWEEP_DIR = Path(__file__).resolve().parent.parent / "configs" / "sweeps"
DOMAINS = ("loguniform", "uniform", "randint", "choice", "grid")
ALGORITHMS = ("random", "grid", "optuna")
SCHEDULERS = ("none", "asha", "pbt")
TOP_LEVEL = {"metric", "mode", "num_samples", "search", "scheduler", "space", "overrides", "driver_cpus",
             "max_concurrent_trials", "max_failures", "report_timeout_s", "description"}


class SweepError(ConfigError):
    """A bad sweep file; the message names the file and the field."""


@dataclass(frozen=True)
class Dimension:
    """One swept config key: ``kind`` is one of DOMAINS, ``values`` its bounds or its values."""

    key: str
    kind: str
    values: tuple

    def extremes(self) -> list[Any]:
        """Values that bound what a trial can be given (to validate before starting)."""
        if self.kind == "randint":
            return [self.values[0], self.values[1]]
        return list(self.values)

    def tune_domain(self):
        from ray import tune

        lo_hi = self.values
        return {"loguniform": lambda: tune.loguniform(*lo_hi),
                "uniform": lambda: tune.uniform(*lo_hi),
                "randint": lambda: tune.randint(lo_hi[0], lo_hi[1] + 1),  # the file's bounds are inclusive
                "choice": lambda: tune.choice(list(lo_hi)),
                "grid": lambda: tune.grid_search(list(lo_hi))}[self.kind]()

    def mutation(self):
        """What PBT explores this key with: a list shifts between neighbours, a domain scales by 0.8/1.2."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        return self.tune_domain()

    def clip(self, value: Any) -> Any:
        """PBT's scaling can leave a range: keep explored values inside the file's bounds."""
        if self.kind in ("loguniform", "uniform", "randint"):
            lo, hi = self.values
            value = min(max(value, lo), hi)
            return int(round(value)) if self.kind == "randint" else float(value)
        return value


@dataclass
class Sweep:
    name: str
    source: str  # the file it came from
    metric: str
    mode: str
    num_samples: int
    algorithm: str
    seed: Optional[int]
    scheduler: dict[str, Any]
    space: list[Dimension]
    overrides: list[str] = field(default_factory=list)
    driver_cpus: float = 0.25
    max_concurrent_trials: Optional[int] = None  # None: from cluster resources
    max_failures: int = 1
    report_timeout_s: float = 3600.0

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.space]

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.space if d.key == key)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "metric": self.metric, "mode": self.mode,
                "num_samples": self.num_samples, "algorithm": self.algorithm, "seed": self.seed,
                "scheduler": self.scheduler, "overrides": self.overrides,
                "space": {d.key: {d.kind: list(d.values)} for d in self.space}}


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def sweep_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise SweepError(f"sweep file not found: {path}")
        return path
    path = SWEEP_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SweepError(f"unknown sweep {name_or_path!r}; presets: {', '.join(sweep_names())} (or a .yaml file)")
    return path


def _number(where: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise SweepError(f"{where}: {value!r} is not {'an integer' if integer else 'a finite number'}")
    return value


def _dimension(where: str, key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise SweepError(f"{where}: give one of {', '.join(f'{{{d}: ...}}' for d in DOMAINS)}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in ("loguniform", "uniform", "randint"):
        if len(values) != 2:
            raise SweepError(f"{where}.{kind}: expected [low, high], got {values!r}")
        lo, hi = (_number(f"{where}.{kind}", v, integer=kind == "randint") for v in values)
        if not lo < hi or (kind == "loguniform" and lo <= 0):
            raise SweepError(f"{where}.{kind}: need {'0 < ' if kind == 'loguniform' else ''}low < high, got {values!r}")
    elif len(set(map(json.dumps, values))) != len(values):
        raise SweepError(f"{where}.{kind}: values repeat: {values!r}")
    return Dimension(key, kind, tuple(values))


def _get(where: str, raw: dict, key: str, kind: type | tuple, default: Any) -> Any:
    if key not in raw:
        return default
    value, kinds = raw[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SweepError(f"{where} field {key!r}: {value!r} is not {' or '.join(k.__name__ for k in kinds)}")
    return value


SCHEDULER_FIELDS = {
    "none": {},
    "asha": {"grace_period": int, "reduction_factor": (int, float), "brackets": int},
    "pbt": {"perturbation_interval": int, "burn_in_period": int, "quantile_fraction": (int, float),
            "resample_probability": (int, float), "synch": bool, "mutations": list},
}


def load_sweep(name_or_path: str) -> Sweep:
    """Parse and check a sweep file (no config or Ray involved yet)."""
    path = sweep_path(name_or_path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"sweep file {where}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {where}: expected a mapping of fields")
    found = interpolations(raw)  # its overrides become config values: plain data, as config files are
    if found:
        raise SweepError(f"sweep file {where} field {found[0]!r}: holds an interpolation ('${{...}}'); sweep files "
                         "are plain data, never resolved: write the value itself")
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise SweepError(f"sweep file {where}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(TOP_LEVEL))}")
    if "metric" not in raw or "space" not in raw:
        raise SweepError(f"sweep file {where}: fields 'metric' and 'space' are required")
    metric = _get(where, raw, "metric", str, None)
    mode = _get(where, raw, "mode", str, "max")
    if mode not in ("max", "min"):
        raise SweepError(f"sweep file {where} field 'mode': {mode!r} must be 'max' or 'min'")
    space_raw = raw["space"]
    if not isinstance(space_raw, dict) or not space_raw:
        raise SweepError(f"sweep file {where} field 'space': a mapping of config keys to domains")
    space_raw = {upgrade_key(str(k), where): v for k, v in space_raw.items()}
    space = [_dimension(f"{where} field 'space.{k}'", str(k), v) for k, v in space_raw.items()]

    search = _get(where, raw, "search", dict, {}) or {}
    algorithm = search.get("algorithm", "random")
    if algorithm not in ALGORITHMS:
        raise SweepError(f"sweep file {where} field 'search.algorithm': {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    if set(search) - {"algorithm", "seed"}:
        raise SweepError(f"sweep file {where} field 'search': unknown key {sorted(set(search) - {'algorithm', 'seed'})[0]!r}")
    seed = search.get("seed")
    if seed is not None:
        _number(f"sweep file {where} field 'search.seed'", seed, integer=True)
    if algorithm == "grid":
        bad = [d.key for d in space if d.kind not in ("grid", "choice")]
        if bad:
            raise SweepError(f"sweep file {where} field 'space.{bad[0]}': algorithm 'grid' needs grid or choice values")
        space = [Dimension(d.key, "grid", d.values) for d in space]
    if algorithm == "optuna":
        bad = [d.key for d in space if d.kind == "grid"]
        if bad:
            raise SweepError(f"sweep file {where} field 'space.{bad[0]}': Optuna samples; use choice instead of grid")

    scheduler = dict(_get(where, raw, "scheduler", dict, {"name": "none"}) or {"name": "none"})
    sched_name = scheduler.get("name", "none")
    if sched_name not in SCHEDULERS:
        raise SweepError(f"sweep file {where} field 'scheduler.name': {sched_name!r}; one of {', '.join(SCHEDULERS)}")
    for key, value in scheduler.items():
        if key == "name":
            continue
        want = SCHEDULER_FIELDS[sched_name].get(key)
        if want is None:
            raise SweepError(f"sweep file {where} field 'scheduler.{key}': not a {sched_name} setting "
                             f"({', '.join(SCHEDULER_FIELDS[sched_name]) or 'none'})")
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise SweepError(f"sweep file {where} field 'scheduler.{key}': {value!r} has the wrong type")
    if sched_name == "pbt":
        if "perturbation_interval" not in scheduler:
            raise SweepError(f"sweep file {where} field 'scheduler.perturbation_interval' is required for pbt "
                             "(training steps; a multiple of loop.val_every)")
        mutated = [upgrade_key(str(k), where) for k in scheduler.get("mutations", [d.key for d in space])]
        missing = [k for k in mutated if k not in space_raw]
        if missing:
            raise SweepError(f"sweep file {where} field 'scheduler.mutations': {missing[0]!r} is not in 'space'")
        if algorithm == "grid" or any(d.kind == "grid" for d in space):
            raise SweepError(f"sweep file {where}: PBT explores by itself; use choice, not grid, in 'space'")

    overrides = _get(where, raw, "overrides", list, [])
    bad = [o for o in overrides if not isinstance(o, str) or "=" not in o]
    if bad:
        raise SweepError(f"sweep file {where} field 'overrides': {bad[0]!r} is not key=value")
    overrides = [upgrade_override(o, where) for o in overrides]
    swept_and_fixed = sorted({d.key for d in space} & {o.split("=", 1)[0] for o in overrides})
    if swept_and_fixed:
        raise SweepError(f"sweep file {where}: {swept_and_fixed[0]!r} is both swept ('space') and fixed ('overrides')")
    mct = raw.get("max_concurrent_trials", "auto")
    if mct != "auto":
        _number(f"sweep file {where} field 'max_concurrent_trials'", mct, integer=True)
        if mct < 1:
            raise SweepError(f"sweep file {where} field 'max_concurrent_trials': must be >= 1 or 'auto'")
    num_samples = _get(where, raw, "num_samples", int, 1)
    driver_cpus = _number(f"sweep file {where} field 'driver_cpus'", raw.get("driver_cpus", 0.25))
    max_failures = _get(where, raw, "max_failures", int, 1)
    timeout = _number(f"sweep file {where} field 'report_timeout_s'", raw.get("report_timeout_s", 3600))
    for fld, value, ok in (("num_samples", num_samples, num_samples >= 1), ("driver_cpus", driver_cpus, driver_cpus > 0),
                           ("max_failures", max_failures, max_failures >= -1), ("report_timeout_s", timeout, timeout > 0)):
        if not ok:
            raise SweepError(f"sweep file {where} field {fld!r}: {value!r} is out of range")
    return Sweep(name=path.stem, source=where, metric=metric, mode=mode, num_samples=num_samples,
                 algorithm=algorithm, seed=seed, scheduler=scheduler, space=space, overrides=list(overrides),
                 driver_cpus=float(driver_cpus), max_concurrent_trials=None if mct == "auto" else int(mct),
                 max_failures=max_failures, report_timeout_s=float(timeout))


def value_override(key: str, value: Any) -> str:
    """A dotlist override that keeps the value's type (1e-05 stays a float, "x" a string)."""
    return f"{key}={json.dumps(value)}"


def check_against_config(sweep: Sweep, config: str, overrides: list[str]) -> None:
    """Refuse keys the chosen model does not read, and values the config would refuse.

    Each bound or listed value is merged into the configuration through ``load_config``, so
    types and ranges are checked by the same code that checks a training run.
    """
    from ssagan_dist.experiment import load_config, require_read

    base = load_config(config, [*sweep.overrides, *overrides])
    for dim in sweep.space:
        require_read(base, [dim.key], source=f"swept in {sweep.source}")
        for value in dim.extremes():
            try:
                load_config(config, [*sweep.overrides, *overrides, value_override(dim.key, value)])
            except ConfigError as e:
                raise SweepError(f"sweep file {sweep.source} field 'space.{dim.key}': value {value!r}: {e}") from None
    max_steps, val_every = base.loop.max_steps, base.loop.val_every
    for fld in ("grace_period", "perturbation_interval"):
        value = sweep.scheduler.get(fld)
        if value is not None and (value < val_every or value % val_every or value > max_steps):
            raise SweepError(f"sweep file {sweep.source} field 'scheduler.{fld}' = {value}: must be a multiple of "
                             f"loop.val_every ({val_every}) and at most loop.max_steps ({max_steps}): "
                             "trials report at validations only")


# -- Ray Tune objects -----------------------------------------------------------------------------

def param_space(sweep: Sweep) -> dict[str, Any]:
    return {d.key: d.tune_domain() for d in sweep.space}


def search_algorithm(sweep: Sweep, max_concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if sweep.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep.seed))
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=max_concurrent)


def scheduler(sweep: Sweep, max_steps: int):
    """Schedulers count training steps (the reported "step"), not Tune iterations."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = sweep.scheduler
    if s["name"] == "asha":
        return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=s.get("grace_period", 1),
                             reduction_factor=s.get("reduction_factor", 3), brackets=s.get("brackets", 1))
    if s["name"] == "pbt":
        mutated = [sweep.dimension(k) for k in s.get("mutations", sweep.keys)]
        return PopulationBasedTraining(
            time_attr="step", perturbation_interval=s["perturbation_interval"],
            burn_in_period=s.get("burn_in_period", 0), quantile_fraction=s.get("quantile_fraction", 0.25),
            resample_probability=s.get("resample_probability", 0.25), synch=s.get("synch", False),
            hyperparam_mutations={d.key: d.mutation() for d in mutated}, custom_explore_fn=KeepInBounds(mutated))
    return FIFOScheduler()


class KeepInBounds:
    """PBT's explore step scales values by 0.8/1.2: clip them to the sweep file's bounds
    (a class, not a closure: Tune pickles the scheduler with the experiment for resuming)."""

    def __init__(self, dimensions: list[Dimension]):
        self.dimensions = dimensions

    def __call__(self, config: dict) -> dict:
        for dim in self.dimensions:
            config[dim.key] = dim.clip(config[dim.key])
        return config
