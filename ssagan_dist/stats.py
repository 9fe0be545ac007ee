"""Intervals for comparing two systems scored on the same clips: the paired bootstrap.

Two systems scored on the same test clips give paired scores ``a[i]``, ``b[i]`` (clip ``i``).
The question a comparison table answers is whether the difference of their means would survive
another draw of test clips of the same kind; the paired bootstrap answers it by resampling clips
(the same resampled clips for both systems, which keeps the pairing and so the large part of the
variance that two systems share on a clip: a hard clip is hard for both).

- ``paired_bootstrap(a, b, ...)``: ``stat(a) - stat(b)`` with a percentile (default) or BCa
  interval; ``distinguishable`` is "the interval excludes 0".
- ``paired_bootstrap_seeds(a, b, ...)``: the same for systems trained on several seeds and each
  scored on the same clips, ``a[s, i]``. How the two sources of variation are reported (see its
  docstring): clips resampled jointly over seeds for the seed-averaged difference, each seed's own
  interval beside it, and the seeds' spread; ``verdict`` says "distinguishable" only where the
  joint interval and every seed's interval exclude 0 on the same side.

Everything is vectorised numpy and deterministic given ``seed`` (numpy's PCG64 generator).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

METHODS = ("percentile", "bca")
_CHUNK = 1 << 22  # bootstrap draws are made in chunks of about this many resampled values


@dataclass(frozen=True)
class Interval:
    """A difference ``estimate`` = stat(a) - stat(b) with its ``ci`` interval [low, high]."""

    estimate: float
    low: float
    high: float
    ci: float
    n: int  # clips
    n_boot: int
    method: str

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    @property
    def sign(self) -> int:
        """+1 (interval above 0), -1 (below) or 0 (it contains 0)."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def to_dict(self) -> dict:
        return {**asdict(self), "distinguishable": self.distinguishable}


@dataclass(frozen=True)
class SeedsInterval:
    """The paired comparison of two systems trained on several seeds (``paired_bootstrap_seeds``)."""

    joint: Interval  # clips resampled jointly over seeds; statistic: the mean over seeds of each seed's difference
    per_seed: list[Interval]  # each seed's own paired interval
    seed_mean: float
    seed_std: float  # sample std of the per-seed estimates (0 for one seed)
    seed_t_low: float  # t interval over the seeds' estimates (nan for one seed): training variation only
    seed_t_high: float
    verdict: str = field(default="")

    @property
    def distinguishable(self) -> bool:
        return self.verdict == "distinguishable"

    def to_dict(self) -> dict:
        return {"joint": self.joint.to_dict(), "per_seed": [i.to_dict() for i in self.per_seed],
                "seed_estimates": [i.estimate for i in self.per_seed], "seed_mean": self.seed_mean,
                "seed_std": self.seed_std, "seed_t_interval": [self.seed_t_low, self.seed_t_high],
                "verdict": self.verdict, "distinguishable": self.distinguishable}


def _as_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired scores: two 1-D arrays of one length >= 2, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores hold NaN or infinite values")
    return a, b


def _check(ci: float, n_boot: int, method: str) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci = {ci}: a coverage in (0, 1), e.g. 0.95")
    if n_boot < 100:
        raise ValueError(f"n_boot = {n_boot}: at least 100 resamples")
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) clip indices drawn with replacement; the same for the same (n, n_boot, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _replicates(stat: Callable, a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """stat(a[idx_r]) - stat(b[idx_r]) for every bootstrap row r (a, b: (n,)), in chunks (memory
    bound). For the mean, the mean of the resampled differences (the same number, half the work)."""
    rows = max(1, _CHUNK // len(a))
    out = np.empty(len(idx))
    d = a - b if stat is np.mean else None
    for i in range(0, len(idx), rows):
        j = idx[i:i + rows]
        out[i:i + rows] = d[j].mean(-1) if d is not None else stat(a[j], axis=-1) - stat(b[j], axis=-1)
    return out


_NORMAL = NormalDist()


def _norm_cdf(x: float) -> float:
    return _NORMAL.cdf(x)


def _norm_ppf(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def _interval(boot: np.ndarray, estimate: float, ci: float, method: str,
              jackknife: Callable[[], np.ndarray] | None) -> tuple[float, float]:
    alpha = (1 - ci) / 2
    if np.ptp(boot) == 0:  # every resample gives the same value (e.g. identical systems): a point
        return float(boot[0]), float(boot[0])
    if method == "percentile":
        low, high = np.quantile(boot, [alpha, 1 - alpha])
        return float(low), float(high)
    # BCa (Efron 1987): bias correction z0 from the share of replicates below the estimate,
    # acceleration from the jackknife's skewness.
    below = (np.sum(boot < estimate) + 0.5 * np.sum(boot == estimate)) / len(boot)
    below = min(max(below, 1 / (2 * len(boot))), 1 - 1 / (2 * len(boot)))
    z0 = _norm_ppf(below)
    jack = jackknife()
    d = jack.mean() - jack
    denom = 6 * (np.sum(d ** 2) ** 1.5)
    acc = float(np.sum(d ** 3) / denom) if denom > 0 else 0.0
    qs = []
    for z in (_norm_ppf(alpha), _norm_ppf(1 - alpha)):
        qs.append(_norm_cdf(z0 + (z0 + z) / (1 - acc * (z0 + z))))
    low, high = np.quantile(boot, qs)
    return float(low), float(high)


def _jackknife(stat: Callable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Leave-one-clip-out values of stat(a) - stat(b) (a, b: (n,) or (seeds, n))."""
    n = a.shape[-1]
    keep = ~np.eye(n, dtype=bool)
    out = np.empty(n)
    rows = max(1, _CHUNK // n)
    for i in range(0, n, rows):
        m = keep[i:i + rows]  # (r, n) masks
        sa = np.stack([stat(a[..., row], axis=-1) for row in m])
        sb = np.stack([stat(b[..., row], axis=-1) for row in m])
        d = sa - sb
        out[i:i + rows] = d if d.ndim == 1 else d.mean(1)
    return out


def paired_bootstrap(a, b, n_boot: int = 10000, seed: int = 0, ci: float = 0.95,
                     stat: Callable = np.mean, method: str = "percentile") -> Interval:
    """``stat(a) - stat(b)`` for paired per-clip scores and its bootstrap interval.

    ``a[i]`` and ``b[i]`` are two systems' scores on clip ``i``. Each of ``n_boot`` resamples draws
    ``n`` clips with replacement and takes ``stat(a[idx]) - stat(b[idx])`` on the same clips;
    the interval is the replicates' ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles
    (``method="percentile"``) or Efron's bias-corrected and accelerated quantiles (``"bca"``,
    acceleration from the leave-one-clip-out jackknife). ``stat`` takes ``axis=`` like
    ``np.mean`` or ``np.median``. Where every resample gives one value (two identical systems),
    the interval is that point. Deterministic given ``seed``.

    What it covers: the variation from drawing the test clips, for these two trained networks;
    not the variation between training runs (see ``paired_bootstrap_seeds``).
    """
    _check(ci, n_boot, method)
    a, b = _as_pairs(a, b)
    estimate = float(stat(a, axis=-1) - stat(b, axis=-1))
    idx = resample_indices(len(a), n_boot, seed)
    boot = _replicates(stat, a, b, idx)
    low, high = _interval(boot, estimate, ci, method, lambda: _jackknife(stat, a, b))
    return Interval(estimate, low, high, ci, len(a), n_boot, method)


def _t_quantile(p: float, dof: int) -> float:
    """Student t quantile (``dof`` >= 1), from its density integrated numerically (trapezoids of
    1e-4 up to |t| = 60: to 1e-4 for the few degrees of freedom of a handful of seeds; no scipy)."""
    if dof <= 0:
        return math.nan
    xs = np.linspace(0, 60, 600001)
    dens = (1 + xs ** 2 / dof) ** (-(dof + 1) / 2)
    cdf = 0.5 + np.concatenate([[0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(xs))]) * (
        math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2)))
    return float(np.interp(p, cdf, xs)) if p >= 0.5 else -float(np.interp(1 - p, cdf, xs))


def paired_bootstrap_seeds(a, b, n_boot: int = 10000, seed: int = 0, ci: float = 0.95,
                           stat: Callable = np.mean, method: str = "percentile") -> SeedsInterval:
    """Two systems, each trained on the same ``S`` seeds and scored on the same ``n`` clips:
    ``a[s, i]``, ``b[s, i]`` (seed ``s`` of ``a`` paired with seed ``s`` of ``b``, which starts
    from the same seed; a 1-D input is one seed).

    Two sources of variation, reported side by side rather than folded into one number (three
    seeds are too few to estimate a between-seed variance that an interval could be built on):

    - ``joint``: the statistic is the mean over seeds of each seed's ``stat(a_s) - stat(b_s)``;
      each resample draws clip indices once and uses them for every seed (the seeds were scored
      on the same clips, so a clip's difficulty is shared between seeds as between systems). This
      is the test-clip interval of the seed-averaged difference, for these trained networks.
    - ``per_seed``: each seed's own paired interval (the same resampled indices).
    - the seeds' spread: ``seed_mean``, ``seed_std`` (sample std of the per-seed estimates: the
      training variation on these clips) and a Student-t interval over the seeds
      (``seed_t_low``/``seed_t_high``, S - 1 degrees of freedom; wide for three seeds, and it
      treats the clips as fixed).

    ``verdict``: "distinguishable" when the joint interval and every seed's own interval exclude 0
    on the same side; "not distinguishable" when the joint interval contains 0; "not on every
    seed (k of S)" when the joint interval excludes 0 but only k seeds' intervals do on its side.
    A reviewer who asks "would another draw of test clips *and* another training run agree?"
    gets "distinguishable" only when both views say so.
    """
    _check(ci, n_boot, method)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 2 or a.shape[0] < 1:
        raise ValueError(f"per-seed paired scores: two (seeds, clips >= 2) arrays of one shape, "
                         f"got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores hold NaN or infinite values")
    seeds, n = a.shape
    idx = resample_indices(n, n_boot, seed)
    per_seed, boots = [], []
    for s in range(seeds):
        est = float(stat(a[s], axis=-1) - stat(b[s], axis=-1))
        boots.append(boot := _replicates(stat, a[s], b[s], idx))
        low, high = _interval(boot, est, ci, method, lambda s=s: _jackknife(stat, a[s], b[s]))
        per_seed.append(Interval(est, low, high, ci, n, n_boot, method))
    estimates = np.array([i.estimate for i in per_seed])
    joint_est = float(estimates.mean())
    boot = np.mean(boots, axis=0)  # the same clips in every seed: the replicate of the seeds' mean
    low, high = _interval(boot, joint_est, ci, method, lambda: _jackknife(stat, a, b))
    joint = Interval(joint_est, low, high, ci, n, n_boot, method)
    std = float(estimates.std(ddof=1)) if seeds > 1 else 0.0
    if seeds > 1:
        half = _t_quantile((1 + ci) / 2, seeds - 1) * std / math.sqrt(seeds)
        t_low, t_high = joint_est - half, joint_est + half
    else:
        t_low = t_high = math.nan
    if not joint.distinguishable:
        verdict = "not distinguishable"
    else:
        agree = sum(i.sign == joint.sign for i in per_seed)
        verdict = "distinguishable" if agree == seeds else f"not on every seed ({agree} of {seeds})"
    return SeedsInterval(joint, per_seed, joint_est, std, t_low, t_high, verdict)
