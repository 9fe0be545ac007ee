"""Trust boundaries of checkpoints and configs (docs/reliability.md, "Trust boundaries"):

- a config file (a checkpoint's config.yaml, ``--config runs/x/config.yaml``) is plain data: an
  OmegaConf interpolation such as ``${oc.env:AWS_SECRET_ACCESS_KEY}`` is refused naming the file,
  and the variable's value appears nowhere;
- a run folder resolves to its newest *complete* checkpoint (resume, evaluate, predict,
  ``init.stage1_checkpoint``): an incomplete one, or one whose model.pt no longer matches the digest
  recorded at the save, is skipped with a warning naming it;
- ``run.name`` is one folder name (``config.safe_name``, ``re.fullmatch``);
- ``checkpoint.best_mode: min`` ranks checkpoints lowest first (Ray's retention and ``evaluate --pick best``).

Checkpoints are written with ``checkpointing.write`` from the tiny preset (fast, no Ray).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, evaluate, experiment, scoring
from ssagan_dist.config import ConfigError, merge, safe_name
from ssagan_dist.experiment import load_config

SECRET = "s3cr3t-AKIA-do-not-print"


def save(directory: Path, cfg, step: int, *, ranks: tuple[int, ...] = (0,), world_size: int = 1, seed: int = 0) -> Path:
    """A checkpoint as a save leaves it: model.pt and config.yaml from rank 0, a worker file from each
    of ``ranks``, each recording the weights' digest (``state_digest``) as training does."""
    torch.manual_seed(seed)
    trainer = experiment.build_trainer(cfg)
    with torch.no_grad():
        for p in trainer.nets["G"].parameters():
            p.add_(torch.randn_like(p) * 0.05)
    directory.mkdir(parents=True)
    for rank in ranks:
        checkpointing.write(directory, rank=rank, worker_state={"state_digest": checkpointing.state_digest(trainer)},
                            trainer=trainer if rank == 0 else None, step=step, clip_shape=[3, 8, 32, 32], cfg=cfg,
                            world_size=world_size)
    return directory


def metrics_log(run: Path, values: dict[int, float], metric: str = "val/psnr") -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, metric: v}) + "\n" for s, v in values.items()))


def with_interpolation(ckpt: Path) -> Path:
    """A checkpoint whose config.yaml was edited to read an environment variable when resolved."""
    path = ckpt / checkpointing.CONFIG_FILE
    data = OmegaConf.to_container(OmegaConf.load(path))
    data["data"]["train_urls"] = "${oc.env:SSAGAN_TEST_SECRET}"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    return path


# -- config.yaml as plain data ---------------------------------------------------------------------------

def test_an_interpolation_in_a_checkpoint_config_is_refused_naming_the_file(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("SSAGAN_TEST_SECRET", SECRET)
    cfg = load_config("tiny_cpu")
    ckpt = save(tmp_path / "run" / checkpointing.checkpoint_dir_name(2), cfg, 2)
    config_file = with_interpolation(ckpt)

    with pytest.raises(checkpointing.CheckpointError) as e:  # evaluate and predict load through it
        experiment.load_trainer(str(ckpt))
    assert str(config_file) in str(e.value) and "'data.train_urls' holds an interpolation" in str(e.value)
    assert SECRET not in str(e.value)

    metrics_log(tmp_path / "run", {2: 20.0})
    with pytest.raises(ConfigError, match="interpolation") as e:
        scoring.pick_checkpoint(str(tmp_path / "run"), "best")
    assert str(config_file) in str(e.value) and SECRET not in str(e.value)

    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "none")]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("error: checkpoint config file ") and str(config_file) in out.err
    assert out.err.count("\n") == 1 and SECRET not in out.out + out.err

    # retraining from it (train --config runs/x/config.yaml) goes through the same reader
    with pytest.raises(ConfigError, match=f"config file {config_file}: key 'data.train_urls' holds an interp"):
        load_config(str(config_file))
    from ssagan_dist import train

    assert train.main(["--config", str(config_file), "--print-config"]) == 2
    out = capsys.readouterr()
    assert str(config_file) in out.err and SECRET not in out.out + out.err
    assert SECRET not in caplog.text


def test_resume_skips_a_checkpoint_whose_config_has_an_interpolation(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SSAGAN_TEST_SECRET", SECRET)
    cfg = load_config("tiny_cpu", [f"run.storage_path={tmp_path}", "run.name=run"])
    save(tmp_path / "run" / checkpointing.checkpoint_dir_name(2), cfg, 2)
    with_interpolation(save(tmp_path / "run" / checkpointing.checkpoint_dir_name(4), cfg, 4))
    manager = checkpointing.CheckpointManager(cfg)
    with caplog.at_level(logging.WARNING):
        uri, model, _ = manager.newest_complete()
    assert uri.endswith("checkpoint_000000002") and model["step"] == 2
    assert [e["event"] for e in manager.events] == ["skipped_damaged_checkpoint"]
    assert "checkpoint_000000004" in caplog.text and "interpolation" in caplog.text
    assert SECRET not in caplog.text + json.dumps(manager.events)


def test_config_files_are_read_like_omegaconf_reads_them_but_never_resolved(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim: {lr_g: 1e-4, lr_d: 2.0e-4}\nrun: {name: plain}\n")
    cfg = load_config(str(path))
    assert (cfg.optim.lr_g, cfg.optim.lr_d, cfg.run.name) == (1e-4, 2e-4, "plain")
    path.write_text("run: {name: '${oc.env:HOME}'}\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: key 'run.name' holds an interpolation"):
        load_config(str(path))
    path.write_text("run: {name: !!python/object/apply:os.getcwd []}\n")  # no Python objects either
    with pytest.raises(ConfigError, match=f"config file {path}: not valid YAML"):
        load_config(str(path))


def test_a_checkpoint_is_written_with_its_interpolations_resolved(tmp_path):
    """An interpolation given on the command line (the user's own) is resolved when the checkpoint is
    written, so the checkpoint reads back as plain data."""
    cfg = load_config("tiny_cpu", ["data.train_urls=/data/sky", "data.val_urls=${data.train_urls}"])
    ckpt = save(tmp_path / "ckpt", cfg, 1)
    assert "${" not in (ckpt / checkpointing.CONFIG_FILE).read_text()
    assert experiment.load_trainer(str(ckpt))[1].data.val_urls == "/data/sky"


# -- the newest complete checkpoint ----------------------------------------------------------------------

def test_an_incomplete_newest_checkpoint_is_skipped_by_resolve_evaluate_and_predict(tmp_path, caplog):
    cfg = load_config("tiny_cpu", ["scaling.ranks=2"])
    run = tmp_path / "run"
    save(run / checkpointing.checkpoint_dir_name(2), cfg, 2, ranks=(0, 1), world_size=2, seed=2)
    save(run / checkpointing.checkpoint_dir_name(4), cfg, 4, ranks=(0,), world_size=2, seed=4)  # rank 1 never saved
    metrics_log(run, {2: 20.0, 4: 25.0})  # the incomplete one scored best
    with caplog.at_level(logging.WARNING):
        assert checkpointing.resolve(str(run)).endswith("checkpoint_000000002")
        assert scoring.pick_checkpoint(str(run), "latest")[0].endswith("checkpoint_000000002")
        best, how = scoring.pick_checkpoint(str(run), "best")
        _, _, state = experiment.load_trainer(str(run))  # predict's loader
    assert best.endswith("checkpoint_000000002") and how["pick_value"] == 20.0 and state["step"] == 2
    assert "skipping damaged checkpoint" in caplog.text and "checkpoint_000000004: worker-1.pt missing" in caplog.text


def test_a_tampered_model_pt_is_detected_by_its_recorded_digest(tmp_path, caplog):
    cfg = load_config("tiny_cpu", [f"run.storage_path={tmp_path}", "run.name=run", "ema.decay=0.9"])
    run = tmp_path / "run"
    older = save(run / checkpointing.checkpoint_dir_name(2), cfg, 2, seed=2)
    newer = save(run / checkpointing.checkpoint_dir_name(4), cfg, 4, seed=4)
    _, _, state = experiment.load_trainer(str(newer))  # untouched: its weights hash to the recorded digest
    assert state["step"] == 4 and "G_ema" in state["trainer"]["nets"]

    model = torch.load(newer / checkpointing.MODEL_FILE, weights_only=True)  # still a loadable model.pt
    first = next(iter(model["trainer"]["nets"]["G"]))
    model["trainer"]["nets"]["G"][first] = model["trainer"]["nets"]["G"][first] + 1.0
    torch.save(model, newer / checkpointing.MODEL_FILE)

    with pytest.raises(checkpointing.DamagedCheckpoint, match=f"{newer / checkpointing.MODEL_FILE} holds weights "
                                                              "whose digest .* changed or damaged after it was written"):
        experiment.load_trainer(str(newer))
    with caplog.at_level(logging.WARNING):
        assert checkpointing.resolve(str(run)) == str(older)
        manager = checkpointing.CheckpointManager(cfg)
        assert manager.newest_complete()[0] == str(older)  # resume
    assert manager.events[0]["event"] == "skipped_damaged_checkpoint" and "digest" in manager.events[0]["problem"]
    assert f"skipping damaged checkpoint {newer}" in caplog.text


def test_state_digest_is_the_digest_of_the_saved_nets():
    cfg = load_config("tiny_cpu", ["ema.decay=0.9"])
    trainer = experiment.build_trainer(cfg)
    assert checkpointing.state_digest(trainer) == checkpointing.nets_digest(trainer.state_dict()["nets"])


# -- run.name: one folder name -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["abc\n", "..", "a/b", ".hidden", "-flag", "a..b", "x" * 129, "", "a b", "é"])
def test_run_name_must_be_one_folder_name(name):
    assert not safe_name(name)
    cfg = merge("tiny_cpu").cfg
    cfg.run.name = name
    with pytest.raises(ConfigError, match="config key 'run.name'"):
        experiment.validate(cfg)


def test_run_name_from_a_config_file_with_a_trailing_newline_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('run: {name: "abc\\n"}\n')
    with pytest.raises(ConfigError, match=r"config key 'run.name' = 'abc\\n'"):
        load_config(str(path))
    for good in ("tiny_cpu", "run-1.2_b", "x" * 128):
        assert safe_name(good)


# -- checkpoint.best_mode ---------------------------------------------------------------------------------------

def test_best_mode_min_ranks_checkpoints_lowest_first(tmp_path):
    assert checkpointing.CheckpointManager.ray_config(load_config("tiny_cpu")).checkpoint_score_order == "max"
    cfg = load_config("tiny_cpu", ["checkpoint.best_metric=val/mse", "checkpoint.best_mode=min"])
    ray_config = checkpointing.CheckpointManager.ray_config(cfg)
    assert (ray_config.checkpoint_score_attribute, ray_config.checkpoint_score_order) == ("val/mse", "min")
    with pytest.raises(ConfigError, match="config key 'checkpoint.best_mode' = 'lowest'"):
        load_config("tiny_cpu", ["checkpoint.best_mode=lowest"])

    run = tmp_path / "run"
    for step in (2, 4, 6):
        save(run / checkpointing.checkpoint_dir_name(step), cfg, step, seed=step)
    metrics_log(run, {2: 0.3, 4: 0.1, 6: 0.2}, metric="val/mse")
    best, how = scoring.pick_checkpoint(str(run), "best")
    assert best.endswith("checkpoint_000000004")
    assert (how["pick_metric"], how["pick_mode"], how["pick_value"]) == ("val/mse", "min", 0.1)
