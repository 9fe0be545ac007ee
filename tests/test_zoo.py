"""The model-zoo benchmark (ssagan_dist/bench/zoo.py) and its distribution distance
(ssagan_dist/distribution.py): the distance's properties, the selection variables, scoring a
noise-only checkpoint, a Stage-II run chained from a Stage-I run through the real entry point,
and a rerun that reuses the finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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

def test_selection_defaults_to_every_registry_model_both_data_sets_and_three_sky_seeds():
    sel = zoo.selection({})
    assert sorted(sel["models"]) == registry.names()
    assert sel["data"] == ["sky", "real"] and sel["seeds"] == {"sky": [0, 1, 2], "real": [0]}
    todo = zoo.runs_to_do(sel)
    assert {("sky", "dcgan", 0), ("sky", "dcgan", 2), ("sky", "hrvgan", 1)} <= set(todo)  # every model, every seed
    assert todo.index(("sky", "mdgan_stage1", 2)) < todo.index(("sky", "mdgan_stage2", 0))


def test_selection_variables_are_parsed_and_a_stage2_brings_its_stage1():
    sel = zoo.selection({"ZOO_MODELS": "ssagan_b hrvgan", "ZOO_DATA": "real", "ZOO_SEEDS": "3 4"})
    assert sel == {"models": ["ssagan_a", "ssagan_b", "hrvgan"], "data": ["real"], "seeds": {"real": [3, 4]}}


@pytest.mark.parametrize("env, named", [({"ZOO_MODELS": "vgan"}, "ZOO_MODELS"), ({"ZOO_DATA": "beach"}, "ZOO_DATA"),
                                        ({"ZOO_SEEDS": "one"}, "ZOO_SEEDS")])
def test_bad_selection_names_the_variable(env, named):
    with pytest.raises(ValueError, match=named):
        zoo.selection(env)


def test_every_recipe_has_the_same_budget_and_loads():
    budget = zoo.recipes_budget(registry.names())
    assert budget["trainer.max_steps"] > 0 and budget["trainer.val_batches"] == 0  # the whole validation split
    for model in registry.names():
        assert load_config(zoo.recipe(model)).model.name == model


# -- scoring a noise-only model -------------------------------------------------------------------

def test_noise_model_is_picked_on_validation_and_scored_against_floor_and_reference(sky, tmp_path):
    cfg = load_config(None, ["model.name=video3d_gan", "model.preset=tiny"])
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
    assert set(r["val_fd_by_step"]) == {1, 2} and r["pick_value"] == min(r["val_fd_by_step"].values())
    assert r["fd"] > r["fd_floor"] >= 0 and r["fd_static"] > r["fd_floor"]  # untrained G: far from real clips
    assert r["change_real"] > 0
    # appearance alone: real frames are nearer the test frames than one mean frame, an untrained G farther
    assert r["fd_frames_floor"] < r["fd_frames_one"] and r["fd_frames"] > r["fd_frames_floor"]
    assert "still frames" in zoo.describe({"model": "video3d_gan", **r})


def test_noise_table_gives_mean_and_spread_over_seeds_and_counts_the_seeds_below_the_reference():
    def row(seed, fd):
        return {"data": "sky", "model": "hrvgan", "seed": seed, "step": 400, "train_seconds": 60.0, "cpu_seconds": 70.0,
                "fd": fd, "fd_floor": 0.01, "fd_static": 0.05, "change": 0.04, "change_real": 0.02,
                "fd_frames": 0.1, "fd_frames_floor": 0.02, "fd_frames_one": 0.5, "load_1min_after": 1.0}
    results = {"budget": {}, "selection": {"data": ["sky"]}, "cpus": 2, "rows": [row(0, 0.04), row(1, 0.06)]}
    line = next(x for x in zoo.markdown(results).splitlines() if x.startswith("| hrvgan | 0 1 |"))
    assert "| 0.0500 ± 0.0141 |" in line and "| 1 of 2 seeds |" in line and "0.1000 ± 0.0000 (0.0200; 0.5000)" in line


# -- chaining and resuming, through the real entry point (its own local Ray) -----------------------

SMOKE = ("trainer.max_steps=2 trainer.val_every=1 trainer.batch_size=2 trainer.log_every=1 data.loader_workers=0 "
         "metrics.enabled=false")


def test_zoo_chains_stage2_from_its_stage1_and_a_rerun_reuses_finished_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(quality, "SKY_SEEDS", {"train": (8, 0), "val": (4, 2), "test": (4, 1)})
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
    assert stage2_cfg.run.stage1_checkpoint == rows["mdgan_stage1"]["checkpoint"]  # the Stage I picked on validation
    assert stage2_cfg.model.args.stage1_output == "residual"
    g1 = checkpointing.read_model(Path(rows["mdgan_stage2"]["checkpoint"]))["trainer"]["nets"]["G_stage1"]
    stage1_nets = checkpointing.read_model(Path(rows["mdgan_stage1"]["checkpoint"]))["trainer"]["nets"]
    trained = stage1_nets.get("G_ema", stage1_nets["G"])  # what Stage I was scored with
    assert all(torch.equal(g1[k], trained[k]) for k in trained)  # Stage II refines that very generator
    assert results["budget"]["trainer.max_steps"] == "2"
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

    s1 = load_config(None, ["model.preset=tiny", *trained])
    ckpt = tmp_path / "s1" / checkpointing.checkpoint_dir_name(1)
    ckpt.mkdir(parents=True)
    checkpointing.write(ckpt, rank=0, worker_state={}, trainer=experiment.build_trainer(s1, "cpu"), step=1,
                        clip_shape=[3, 8, 32, 32], cfg=s1)
    stage2 = [f"model.name={model}", "model.preset=tiny", f"run.stage1_checkpoint={ckpt}"]
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
