"""How far a set of generated clips is from a set of real ones, with no downloaded weights.

For models that generate from noise (no ground-truth future to compare frame by frame):

- ``frechet_distance(a, b)``: the Fréchet distance between Gaussians fitted to the features
  that ``RandomVideoFeatures`` extracts from each set. The feature net is a small 3-D conv net
  with *random* weights from a fixed seed, never trained. This is **not FVD**: FVD uses an I3D
  network trained on Kinetics, which nothing here may download. Random conv features
  still respond to colour, texture and motion statistics, so the distance is 0 for identical
  sets and grows as one set drifts from the other; its absolute value means nothing outside
  this code, so it is only ever reported beside a floor and a reference computed the same way.
  At the zoo's sample sizes it is biased upward (two samples of one distribution are not at 0;
  the bias shrinks like 1/n): report it only beside the same distance of real clips at the same n.
- ``kernel_distances(candidates, reference)`` / ``kernel_distance(a, b)``: an *unbiased* kernel
  distance, KID's estimator (Bińkowski et al. 2018; KVD for video) on features of this code: the
  unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y/d + 1)³ on ``KernelVideoFeatures``
  (the random conv features of the clips and of their frame differences), standardised on a
  third set of real clips; 0 in expectation for two samples of one distribution, at any n, with a
  bootstrap interval and KID's subset mean ± std. Same caveat as above: not KID or KVD's numbers.
- ``mean_frame_change(clips)``: the mean absolute change between consecutive frames (pixels in
  [0, 1]): how much a set of clips moves, to compare generated motion with real motion.

Clips are (N, C, T, H, W) in [-1, 1], like everywhere in the pipeline.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

FEATURE_SEED = 0  # the feature net's weights: the same on every machine and in every run


class RandomVideoFeatures(nn.Module):
    """Three 3-D conv layers with random weights (seeded), then the per-channel mean and standard
    deviation over time and space: (N, C, T, H, W) -> (N, 2 * width)."""

    def __init__(self, channels: int = 3, width: int = 16, seed: int = FEATURE_SEED):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        shapes = [(width, channels, 3, 3, 3), (width, width, 3, 3, 3), (width, width, 3, 3, 3)]
        strides = [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
        self.strides = strides
        # He-normal weights for LeakyReLU: activations keep their scale through the layers.
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(s, generator=gen) * (2.0 / (s[1] * 27)) ** 0.5, requires_grad=False)
            for s in shapes)

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        if clips.dim() != 5:
            raise ValueError(f"expected (N, C, T, H, W) clips, got shape {tuple(clips.shape)}")
        x = clips.float()
        for w, stride in zip(self.weights, self.strides):
            x = nn.functional.leaky_relu(nn.functional.conv3d(x, w, stride=stride, padding=1), 0.2)
        x = x.flatten(2)
        return torch.cat([x.mean(2), x.std(2)], dim=1)


def features(clips: Tensor, net: RandomVideoFeatures | None = None, batch: int = 64) -> np.ndarray:
    """Feature rows (float64) of a set of clips."""
    net = net or RandomVideoFeatures(clips.shape[1])
    return torch.cat([net(clips[i:i + batch].cpu()) for i in range(0, len(clips), batch)]).double().numpy()


def psd_sqrt(m: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from
    rounding taken as 0)."""
    w, v = linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (rows = samples).

    tr (S_a S_b)^1/2 is taken as tr (S_a^1/2 S_b S_a^1/2)^1/2 (the same eigenvalues), whose roots
    are of symmetric PSD matrices: exact also where a covariance is singular (a set of one image
    repeated, say), where a general matrix root of S_a S_b is not."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, d) feature sets of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = psd_sqrt(s_a)
    trace_root = np.trace(psd_sqrt(root_a @ s_b @ root_a))
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)
    return max(distance, 0.0)  # the roots' rounding can leave a tiny negative value


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between the random-conv features of two sets of clips (not FVD: see above)."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the two sets hold clips of different shapes: {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    net = RandomVideoFeatures(a.shape[1])
    return frechet_from_features(features(a, net), features(b, net))


def mean_frame_change(clips: Tensor) -> float:
    """Mean |x_t+1 - x_t| over consecutive frames, pixels in [0, 1]."""
    if clips.dim() != 5 or clips.shape[2] < 2:
        raise ValueError(f"expected (N, C, T >= 2, H, W) clips, got shape {tuple(clips.shape)}")
    unit = (clips.double() + 1) / 2
    return float((unit[:, :, 1:] - unit[:, :, :-1]).abs().mean())


# -- kernel distance (KID/KVD-style MMD², unbiased) ----------------------------------------------

KERNEL_SUBSETS, KERNEL_SUBSET_SIZE = 100, 1000  # KID's subsets (Bińkowski et al. 2018; torchmetrics' defaults)


class KernelVideoFeatures(nn.Module):
    """The kernel distance's features: ``RandomVideoFeatures`` of the clips (appearance and
    motion together, as the Fréchet distance sees them) beside ``RandomVideoFeatures`` of another
    seed on the frame differences x_t+1 - x_t (motion alone): (N, C, T >= 2, H, W) -> (N, 4 * width).

    Why the second block: pooled over time and space, the clip features alone hardly tell sky
    clips from the same clips with their frames shuffled (the same frames, the same pixel
    statistics; measured on 200 vs 200 synthetic 32×32×8 skies: 0.3 null standard deviations),
    and shuffled or static frames are exactly what a video generator's failure looks like. On the
    frame differences the shuffled clips' jumps and the static clips' zeros are far out (tests:
    tests/test_stats.py)."""

    def __init__(self, channels: int = 3, width: int = 16, seed: int = FEATURE_SEED):
        super().__init__()
        self.clips = RandomVideoFeatures(channels, width, seed)
        self.motion = RandomVideoFeatures(channels, width, seed + 1)

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        if clips.dim() != 5 or clips.shape[2] < 2:
            raise ValueError(f"expected (N, C, T >= 2, H, W) clips, got shape {tuple(clips.shape)}")
        x = clips.float()
        return torch.cat([self.clips(x), self.motion(x[:, :, 1:] - x[:, :, :-1])], dim=1)


def kernel_features(clips: Tensor, net: KernelVideoFeatures | None = None, batch: int = 64) -> np.ndarray:
    """``KernelVideoFeatures`` rows (float64) of a set of clips, before standardisation."""
    net = net or KernelVideoFeatures(clips.shape[1])
    return torch.cat([net(clips[i:i + batch].cpu()) for i in range(0, len(clips), batch)]).double().numpy()


class Standardise:
    """Per-feature (x - mean) / std with the mean and std of one fixed set of real clips' features
    (the zoo: the validation clips, which no test score compares with): every random feature then
    counts in units of its spread among real clips, whatever its raw scale, so that the cubic
    kernel's dot product is not ruled by the few largest features. The transform is fitted once
    and applied to every set in a comparison; fitted on a set that is neither of the two compared,
    it leaves the estimator exactly unbiased."""

    def __init__(self, reference: np.ndarray):
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(f"standardise on (n >= 2, d) features, got {reference.shape}")
        self.mean = reference.mean(0)
        self.std = reference.std(0, ddof=1)
        self.std[self.std <= 1e-12 * max(float(self.std.max()), 1e-300)] = 1.0  # a constant feature stays as is

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x·y / d + 1)^3 between the rows of two (n, d) feature sets."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _offdiag_mean(k: np.ndarray) -> float:
    n = len(k)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """The unbiased estimate of MMD² from kernel matrices (the U-statistic: no k(x_i, x_i) term)."""
    if min(len(kxx), len(kyy)) < 2:
        raise ValueError("the unbiased MMD² needs at least 2 samples in each set")
    return _offdiag_mean(kxx) + _offdiag_mean(kyy) - 2 * float(kxy.mean())


def mmd2_biased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """The biased (V-statistic) MMD², k(x_i, x_i) included: positive even for two samples of one
    distribution. For tests and comparison only."""
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


@dataclass(frozen=True)
class KernelDistance:
    """Unbiased MMD² (cubic polynomial kernel) between a candidate set and a reference set.

    ``estimate``: the U-statistic on every sample of both sets; ``low``/``high``: its percentile
    bootstrap interval; ``subset_mean`` ± ``subset_std``: KID's own report, the mean and std of the
    same estimator on ``subsets`` random subsets of ``subset_size`` samples of each set (an unbiased
    estimate of the same quantity with more variance; ``estimate`` is what every subset would give
    on average). ``replicates``: the bootstrap values, for differences (``kernel_difference``)."""

    estimate: float
    low: float
    high: float
    ci: float
    n_candidate: int
    n_reference: int
    n_boot: int
    subset_mean: float
    subset_std: float
    subsets: int
    subset_size: int
    replicates: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.empty(0))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "replicates"}


def _weighted_offdiag(w: np.ndarray, k0: np.ndarray) -> np.ndarray:
    """Per bootstrap row of counts w (B, n): the mean of k over pairs of *distinct original* samples
    (k0: k with a zero diagonal), each pair weighted by its counts: Σ_i≠j w_i w_j k_ij / Σ_i≠j w_i w_j."""
    num = ((w @ k0) * w).sum(1)
    den = w.sum(1) ** 2 - (w ** 2).sum(1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def kernel_distances(candidates: dict[str, np.ndarray], reference: np.ndarray, *, n_boot: int = 1000,
                     seed: int = 0, ci: float = 0.95, subsets: int = KERNEL_SUBSETS,
                     subset_size: int = KERNEL_SUBSET_SIZE) -> dict[str, KernelDistance]:
    """The kernel distance of every candidate feature set to one reference set (rows = samples,
    features already standardised where wanted).

    Bootstrap (``n_boot`` > 0; 0 = the estimate alone): each resample draws each set's samples with
    replacement (as counts) and evaluates the U-statistic over pairs of *distinct original*
    samples, so a sample drawn twice is never paired with itself (the plain U-statistic on a
    resample would count k(x_i, x_i) and be biased upward). The reference's draws depend on
    ``seed`` and its size only, so they are the same for every candidate (and in every call with
    that seed): the difference of two candidates' replicates is a valid bootstrap of the
    difference of their distances (``kernel_difference``). A candidate's draws depend on
    ``seed`` and its name (not on which other candidates are given).

    Subsets: KID's report, ``subsets`` subsets of ``min(subset_size, n_candidate, n_reference)``
    samples of each set drawn without replacement (seeded), mean and std."""
    if not 0 < ci < 1:
        raise ValueError(f"ci = {ci}: a coverage in (0, 1)")
    ref = np.asarray(reference, dtype=np.float64)
    kyy = polynomial_kernel(ref, ref)
    kyy0 = kyy - np.diag(np.diag(kyy))
    ref_draws = _counts(len(ref), n_boot, np.random.default_rng([seed, 0])) if n_boot else None
    yy = _weighted_offdiag(ref_draws, kyy0) if n_boot else None
    out = {}
    for name, feats in candidates.items():
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != ref.shape[1]:
            raise ValueError(f"candidate {name!r}: features {x.shape} against the reference's {ref.shape}")
        kxx, kxy = polynomial_kernel(x, x), polynomial_kernel(x, ref)
        estimate = mmd2_unbiased(kxx, kyy, kxy)
        name_seed = zlib.crc32(name.encode())
        size = min(subset_size, len(x), len(ref))
        rng = np.random.default_rng([seed, 1, name_seed])
        values = []
        for _ in range(subsets if size >= 2 else 0):
            i, j = rng.permutation(len(x))[:size], rng.permutation(len(ref))[:size]
            values.append(mmd2_unbiased(kxx[np.ix_(i, i)], kyy[np.ix_(j, j)], kxy[np.ix_(i, j)]))
        if n_boot:
            draws = _counts(len(x), n_boot, np.random.default_rng([seed, 2, name_seed]))
            kxx0 = kxx - np.diag(np.diag(kxx))
            xy = ((draws @ kxy) * ref_draws).sum(1) / (len(x) * len(ref))
            reps = _weighted_offdiag(draws, kxx0) + yy - 2 * xy
            low, high = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2])
        else:
            reps, low, high = np.empty(0), math.nan, math.nan
        out[name] = KernelDistance(estimate, float(low), float(high), ci, len(x), len(ref), n_boot,
                                   float(np.mean(values)) if values else math.nan,
                                   float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                                   len(values), size, reps)
    return out


def kernel_difference(x: KernelDistance, y: KernelDistance) -> dict:
    """x - y with the percentile interval of the replicates' differences (both from one
    ``kernel_distances`` seed and reference, so the reference's draws are shared): ``distinguishable``
    = the interval excludes 0."""
    if not (len(x.replicates) and len(x.replicates) == len(y.replicates)):
        raise ValueError("kernel_difference needs two results with bootstrap replicates of one count")
    d = x.replicates - y.replicates
    low, high = np.quantile(d, [(1 - x.ci) / 2, (1 + x.ci) / 2])
    return {"estimate": x.estimate - y.estimate, "low": float(low), "high": float(high), "ci": x.ci,
            "distinguishable": bool(low > 0 or high < 0)}


def kernel_distance(a: Tensor, b: Tensor, normalise: Tensor | None = None, **kwargs) -> KernelDistance:
    """The kernel distance between two sets of clips (``KernelVideoFeatures``; standardised on the
    features of ``normalise``, a third set of real clips, when given). ``kwargs``: see
    ``kernel_distances``."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the two sets hold clips of different shapes: {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    net = KernelVideoFeatures(a.shape[1])
    fa, fb = kernel_features(a, net), kernel_features(b, net)
    if normalise is not None:
        scale = Standardise(kernel_features(normalise, net))
        fa, fb = scale(fa), scale(fb)
    return kernel_distances({"a": fa}, fb, **kwargs)["a"]
