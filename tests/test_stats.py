"""Intervals for the zoo's comparisons (ssagan_dist/stats.py) and the unbiased kernel distance of
ssagan_dist/distribution.py: coverage at about the nominal rate on synthetic scores, intervals
that shrink with more clips, determinism, the verdict over seeds; the kernel distance unbiased
over random splits of one set and ordering sanity references of synthetic skies correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_tools.synth import _clip_params, render_clip
from ssagan_dist import distribution, stats


# -- the paired bootstrap -------------------------------------------------------------------------

def paired_scores(n: int, rng: np.random.Generator, delta: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Two systems' per-clip PSNRs: a shared clip difficulty (the pairing), then a skewed
    per-clip gain of mean ``delta`` for ``a``."""
    base = rng.normal(25.0, 3.0, n)
    return base + delta + rng.gamma(2.0, 0.5, n) - 1.0, base


@pytest.mark.parametrize("method", stats.METHODS)
def test_paired_interval_covers_a_known_difference_at_about_its_nominal_rate(method):
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(200):
        a, b = paired_scores(64, rng)
        interval = stats.paired_bootstrap(a, b, n_boot=1000, seed=rep, method=method)
        hits += interval.low <= 0.3 <= interval.high
    assert 0.90 <= hits / 200 <= 0.98, hits / 200


def test_paired_interval_shrinks_as_clips_are_added():
    rng = np.random.default_rng(2)
    widths = []
    for n in (50, 200, 800):
        a, b = paired_scores(n, rng)
        interval = stats.paired_bootstrap(a, b, n_boot=2000, seed=0)
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2], widths
    assert 1.5 < widths[0] / widths[1] < 2.7 and 1.5 < widths[1] / widths[2] < 2.7, widths  # about 1/sqrt(n)


def test_paired_bootstrap_is_deterministic_given_its_seed_and_pairs_the_clips():
    rng = np.random.default_rng(3)
    a, b = paired_scores(100, rng)
    assert stats.paired_bootstrap(a, b, seed=7) == stats.paired_bootstrap(a, b, seed=7)
    assert stats.paired_bootstrap(a, b, seed=7) != stats.paired_bootstrap(a, b, seed=8)
    paired = stats.paired_bootstrap(a, b, n_boot=2000)
    unpaired = stats.paired_bootstrap(a, rng.permutation(b), n_boot=2000)  # the clip difficulty no longer cancels
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 3
    assert paired.estimate == pytest.approx(a.mean() - b.mean())


def test_identical_systems_are_not_distinguishable_and_a_clear_gain_is():
    a = np.random.default_rng(4).normal(25, 3, 64)
    same = stats.paired_bootstrap(a, a.copy())
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.distinguishable
    gain = stats.paired_bootstrap(a + 1.0 + np.random.default_rng(5).normal(0, 0.1, 64), a)
    assert gain.distinguishable and gain.sign == 1 and gain.low > 0.9
    assert gain.to_dict()["distinguishable"] is True


def test_paired_bootstrap_takes_another_statistic():
    rng = np.random.default_rng(6)
    a, b = paired_scores(101, rng)
    interval = stats.paired_bootstrap(a, b, n_boot=500, stat=np.median, method="bca")
    assert interval.estimate == pytest.approx(np.median(a) - np.median(b))
    assert interval.low < interval.estimate < interval.high


@pytest.mark.parametrize("bad", [dict(ci=1.0), dict(n_boot=10), dict(method="normal")])
def test_paired_bootstrap_refuses_bad_arguments(bad):
    with pytest.raises(ValueError):
        stats.paired_bootstrap(np.zeros(5), np.ones(5), **bad)
    with pytest.raises(ValueError, match="shapes"):
        stats.paired_bootstrap(np.zeros(5), np.ones(6))


def test_student_t_quantiles():
    for dof, expected in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)):
        assert stats._t_quantile(0.975, dof) == pytest.approx(expected, abs=2e-4)


# -- several training seeds ------------------------------------------------------------------------

def seeds_scores(offsets, n=200, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(25, 3, n)  # the same clips for every seed
    b = np.stack([base + rng.normal(0, 0.2, n) for _ in offsets])
    a = np.stack([base + off + rng.normal(0, 0.2, n) for off in offsets])
    return a, b


def test_seeds_resample_clips_jointly_and_report_each_seed_and_the_spread():
    a, b = seeds_scores([0.5, 0.6, 0.4])
    r = stats.paired_bootstrap_seeds(a, b, n_boot=2000)
    assert r.verdict == "distinguishable" and r.distinguishable
    assert len(r.per_seed) == 3 and all(i.distinguishable for i in r.per_seed)
    assert r.joint.estimate == pytest.approx(np.mean([i.estimate for i in r.per_seed]))
    assert r.seed_std == pytest.approx(np.std([i.estimate for i in r.per_seed], ddof=1))
    assert r.seed_t_low < r.joint.estimate < r.seed_t_high
    d = r.to_dict()
    assert d["verdict"] == "distinguishable" and len(d["seed_estimates"]) == 3 and d["joint"]["n"] == 200
    # one seed reproduces its single-seed interval (the same resampled clips)
    assert r.per_seed[0] == stats.paired_bootstrap(a[0], b[0], n_boot=2000)


def test_seeds_verdict_when_a_seed_disagrees_or_the_joint_interval_crosses_zero():
    a, b = seeds_scores([0.6, 0.6, -0.3])
    r = stats.paired_bootstrap_seeds(a, b, n_boot=2000)
    assert r.joint.distinguishable and r.verdict == "not on every seed (2 of 3)" and not r.distinguishable
    a, b = seeds_scores([0.3, -0.3, 0.0])
    assert stats.paired_bootstrap_seeds(a, b, n_boot=2000).verdict == "not distinguishable"
    one = stats.paired_bootstrap_seeds(a[0], b[0], n_boot=500)  # one seed: no spread
    assert len(one.per_seed) == 1 and one.seed_std == 0.0 and np.isnan(one.seed_t_low)


# -- the kernel distance ---------------------------------------------------------------------------

def sky(n: int, seed: int, size: int = 16, frames: int = 8) -> torch.Tensor:
    """n synthetic sky clips of data seed ``seed`` (data_tools.synth), (n, 3, T, H, W) in [-1, 1]."""
    out = np.stack([render_clip(_clip_params(np.random.default_rng([seed, i]), size, frames), size, frames)
                    for i in range(n)])
    return torch.from_numpy(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def blurred(x: torch.Tensor) -> torch.Tensor:
    """Each frame through a 3×3 binomial blur."""
    k = torch.tensor([1.0, 2.0, 1.0])
    c = x.shape[1]
    w = ((k[:, None] * k[None]) / 16).expand(c, 1, 3, 3).contiguous()
    frames = x.transpose(1, 2).reshape(-1, c, *x.shape[-2:])
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(frames, (1, 1, 1, 1), mode="replicate"), w, groups=c)
    return out.reshape(x.shape[0], x.shape[2], c, *x.shape[-2:]).transpose(1, 2)


def shuffled(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([clip[:, torch.randperm(clip.shape[1], generator=g)] for clip in x])


def static(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, :1].expand_as(x).contiguous()


@pytest.fixture(scope="module")
def skies():
    """Three disjoint sets of 16×16×8 skies (seeds never used elsewhere): a reference, another
    real set to compare with it, and a third to standardise the features on."""
    return {"reference": sky(160, 9001), "other": sky(160, 9002), "normalise": sky(120, 9003)}


def test_kernel_distance_is_unbiased_over_random_splits_of_one_set(skies):
    feats = distribution.kernel_features(torch.cat([skies["reference"], skies["other"]]))
    feats = distribution.Standardise(feats)(feats)
    rng = np.random.default_rng(0)
    unbiased, biased = [], []
    for _ in range(200):
        p = rng.permutation(len(feats))
        x, y = feats[p[:160]], feats[p[160:]]
        k = (distribution.polynomial_kernel(x, x), distribution.polynomial_kernel(y, y),
             distribution.polynomial_kernel(x, y))
        unbiased.append(distribution.mmd2_unbiased(*k))
        biased.append(distribution.mmd2_biased(*k))
    se = np.std(unbiased, ddof=1) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se, (np.mean(unbiased), se)
    # the V-statistic is not: the test can see a bias
    assert np.mean(biased) > 20 * np.std(biased, ddof=1) / np.sqrt(len(biased))


def test_kernel_distance_orders_the_sanity_references(skies):
    net = distribution.KernelVideoFeatures()
    scale = distribution.Standardise(distribution.kernel_features(skies["normalise"], net))
    feats = lambda x: scale(distribution.kernel_features(x, net))  # noqa: E731
    other = skies["other"]
    result = distribution.kernel_distances(
        {"real": feats(other), "blurred": feats(blurred(other)), "shuffled": feats(shuffled(other)),
         "static": feats(static(other))}, feats(skies["reference"]), n_boot=300, subsets=20, subset_size=100)
    real = result["real"]
    assert real.low <= 0 <= real.high, real  # real against real: about 0
    for name in ("blurred", "shuffled", "static"):
        assert result[name].low > real.high, (name, result[name], real)
        assert distribution.kernel_difference(result[name], real)["distinguishable"]
    assert result["real"].subsets == 20 and result["real"].subset_size == 100
    assert abs(result["real"].subset_mean - real.estimate) < 3 * result["real"].subset_std


def test_kernel_bootstrap_covers_a_known_distance_and_shares_the_reference_draws():
    """Gaussian features, the true MMD² from a million pairs: the interval covers it about as
    often as it says (the U-statistic's bootstrap leans conservative at small n)."""
    d, shift = 4, np.array([0.8, 0, 0, 0])
    rng = np.random.default_rng(0)
    x1, x2, y1, y2 = (rng.normal(size=(1_000_000, d)) for _ in range(4))
    k = lambda u, v: ((u * v).sum(1) / d + 1) ** 3  # noqa: E731
    true = k(x1, x2).mean() + k(y1 + shift, y2 + shift).mean() - 2 * k(x1, y1 + shift).mean()
    hits = 0
    for rep in range(100):
        x, y = rng.normal(size=(60, d)), rng.normal(size=(60, d)) + shift
        r = distribution.kernel_distances({"x": x}, y, n_boot=200, seed=rep, subsets=0)["x"]
        hits += r.low <= true <= r.high
    assert 0.88 <= hits / 100 <= 1.0, hits
    both = distribution.kernel_distances({"x": x, "y": y + 0.0}, y, n_boot=200, subsets=0)
    alone = distribution.kernel_distances({"x": x}, y, n_boot=200, subsets=0)
    np.testing.assert_array_equal(both["x"].replicates, alone["x"].replicates)  # independent of the others given
    assert distribution.kernel_difference(both["x"], both["x"])["estimate"] == 0.0


def test_kernel_features_see_motion_and_refuse_single_frames():
    x = sky(4, 9004)
    f = distribution.kernel_features(x)
    assert f.shape == (4, 64)
    assert np.allclose(distribution.kernel_features(static(x))[:, 32:], distribution.kernel_features(
        torch.zeros_like(x))[:, 32:])  # a still clip's motion block is that of no change
    with pytest.raises(ValueError, match="T >= 2"):
        distribution.kernel_features(x[:, :, :1])
