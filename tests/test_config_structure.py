"""The config's shape (issue 34): each section has one reading layer, the trainer reads no key by
name, every reader's rules are declared once beside its code, and today's old key names still load
(a config file, an override, a checkpoint's config.yaml), each answered with one line."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, experiment
from ssagan_dist.config import RENAMED_KEYS, Allowed, ReadWhen, upgrade
from ssagan_dist.experiment import load_config

PACKAGE = Path(experiment.__file__).parent
SECTIONS = ("model", "data", "scaling", "ray", "loop", "checkpoint", "ddp", "optim", "loss", "ema", "init", "run",
            "tracking", "telemetry", "perf")
IDENTITY = {"run", "model"}  # the run's name, place and model: labels every layer may print
# Modules that check or measure configs rather than run them: the checker (experiment), the
# offline Kubernetes check, the benchmarks.
CHECKERS = ("experiment.py", "config.py", "deploy/", "bench/")
TRAIN_LOOP_ENTRY = "train_loop_per_worker"


def _module_layer(rel: str) -> str | None:
    if rel.startswith("trainers/"):
        return "trainer"
    if rel.startswith(("telemetry.py", "observability/")):
        return "telemetry"
    if rel.startswith(("tune/", "raycluster.py")):
        return "ray set-up"
    if rel.startswith(CHECKERS):
        return None
    return "loop"  # checkpointing, data, parallel, perf, runlog, tracking, scoring, predict ...


def _rank_side_functions(tree: ast.Module) -> set[str]:
    """train.py's functions a rank runs: those reachable from the Ray Train loop function."""
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    calls = {name: {c.func.id for c in ast.walk(fn) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
             for name, fn in defs.items()}
    seen, todo = set(), [TRAIN_LOOP_ENTRY]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        todo += calls[name]
    return seen


def _rule_nodes(tree: ast.Module) -> set[int]:
    """Nodes inside ``CONFIG_RULES = (...)``: declared checks, not reads at run time."""
    inside = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONFIG_RULES" for t in node.targets):
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def section_reads() -> dict[str, dict[str, set[str]]]:
    """section -> layer -> the places (file:function) that read one of its fields off a config."""
    reads: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        layer = _module_layer(rel)
        if layer is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rank_side = _rank_side_functions(tree) if rel == "train.py" else set()
        skip = _rule_nodes(tree)
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            here = layer if rel != "train.py" else ("loop" if fn.name in rank_side else "ray set-up")
            for node in ast.walk(fn):
                if (id(node) not in skip and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                        and node.value.attr in SECTIONS and _is_config(node.value.value)):
                    reads[node.value.attr][here].add(f"{rel}:{fn.name}")
    return reads


def _is_config(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name == "cfg" or name.endswith("_cfg") or name in ("base", "config")


# A section read by two layers, each with the reason it must be: the sweep schedulers size their
# rungs by the run's length, and a sweep ranks its trials and keeps their checkpoints as a run does.
SHARED = {("loop", "ray set-up"): "ASHA/PBT rungs are steps of the run: a sweep reads loop.max_steps and val_every",
          ("checkpoint", "ray set-up"): "a sweep's Train runs keep and rank checkpoints by the sweep's metric and mode",
          ("data", "ray set-up"): "the driver makes local data paths absolute: Ray runs the ranks in another folder"}


def test_each_config_section_is_read_by_one_layer():
    reads = section_reads()
    assert reads["optim"].keys() <= {"trainer"} and reads["loss"].keys() <= {"trainer"}
    assert not reads["ema"].keys() - {"trainer"} and not reads["init"].keys() - {"trainer"}
    assert reads["telemetry"].keys() <= {"telemetry"}, dict(reads["telemetry"])
    for section, layers in reads.items():
        if section in IDENTITY or len(layers) <= 1:
            continue
        allowed = {section: reason for (s, _), reason in SHARED.items() if s == section}
        others = set(layers) - {"loop"}
        assert section in allowed and others <= {"ray set-up"}, (
            f"config section {section!r} is read by {sorted(layers)}: "
            + "; ".join(f"{layer}: {sorted(places)[:4]}" for layer, places in layers.items()))


def test_a_trainer_reads_no_config_key_by_name():
    """Trainers get typed sections; a dotted key appears in them only inside their declared rules."""
    key = re.compile(r"(?:%s)\.\w+" % "|".join(SECTIONS))
    for path in sorted((PACKAGE / "trainers").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert "OmegaConf" not in ast.dump(tree) and "getattr(cfg" not in path.read_text(), path.name
        skip = _rule_nodes(tree)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and id(n) not in skip and id(n) not in docstrings and key.fullmatch(n.value)]
        assert not named, f"{path.name} names config keys {named}"


def test_every_rule_is_declared_once_beside_its_reader():
    seen = defaultdict(list)
    for rule in experiment.RULES:
        seen[(type(rule).__name__, rule.key, getattr(rule, "want", getattr(rule, "why_not", "")))].append(rule)
    assert all(len(v) == 1 for v in seen.values())
    assert all(isinstance(r, (Allowed, ReadWhen)) for r in experiment.RULES)
    text = (PACKAGE / "experiment.py").read_text(encoding="utf-8")
    assert "PRETRAINED_KEYS" not in text and "use_gpu and" not in text  # no rule re-stated here
    # the allowed flavors come from the registry
    with pytest.raises(experiment.ConfigError, match="model.flavor.*flavors"):
        load_config("tiny_cpu", ["model.flavor=huge"])


OLD_TINY = """\
model: {name: ssagan, preset: tiny, args: {output: flow}}
data: {loader_workers: 1}
trainer: {num_workers: 2, cpus_per_worker: 1, batch_size: 8, max_steps: 1200, log_every: 100, val_every: 100,
          val_batches: 4, g_ema_decay: 0.99}
optim: {lr_g: 2.0e-3, n_critic: 1}
loss: {lambda_con: 100.0}
run: {name: tiny_cpu, keep_checkpoints: 2, best_metric: val/ssim, max_failures: 1}
metrics: {port: 9500}
"""


def test_an_old_config_loads_with_one_line_per_renamed_key(tmp_path, capfd, monkeypatch):
    from ssagan_dist import config

    monkeypatch.setattr(config, "_told", set())
    (tmp_path / "old.yaml").write_text(OLD_TINY)
    cfg = load_config(str(tmp_path / "old.yaml"), ["trainer.seed=3"])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("[config]")]
    old = ["model.preset", "data.loader_workers", "trainer.num_workers", "trainer.cpus_per_worker",
           "trainer.batch_size", "trainer.max_steps", "trainer.log_every", "trainer.val_every", "trainer.val_batches",
           "trainer.g_ema_decay", "run.keep_checkpoints", "run.best_metric", "run.max_failures", "metrics.port",
           "trainer.seed"]
    assert sorted(lines) == sorted(f"[config] {k} is now {RENAMED_KEYS[k]} ({where}); the old name still works for now"
                                   for k, where in [(k, str(tmp_path / "old.yaml")) for k in old[:-1]]
                                   + [("trainer.seed", "override")])
    assert (cfg.scaling.ranks, cfg.loop.max_steps, cfg.loop.seed, cfg.ema.decay, cfg.checkpoint.keep,
            cfg.checkpoint.best_metric, cfg.ray.max_failures, cfg.telemetry.port, cfg.model.flavor) == (
        2, 1200, 3, 0.99, 2, "val/ssim", 1, 9500, "tiny")
    new = load_config("tiny_cpu", ["ema.decay=0.99", "checkpoint.keep=2", "checkpoint.best_metric=val/ssim",
                                   "ray.max_failures=1", "telemetry.port=9500", "loop.seed=3"])
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(new)


def test_old_and_new_name_together_are_refused():
    with pytest.raises(experiment.ConfigError, match="'trainer.max_steps'.*'loop.max_steps'"):
        upgrade({"trainer": {"max_steps": 1}, "loop": {"max_steps": 2}}, "x.yaml")


def test_a_checkpoint_written_with_old_names_loads(tmp_path):
    """A checkpoint of today's main (before the rename): its config.yaml holds the old sections."""
    cfg = load_config("tiny_cpu")
    trainer = experiment.build_trainer(cfg)
    d = tmp_path / "checkpoint_000000001"
    d.mkdir()
    checkpointing.write(d, rank=0, worker_state={}, trainer=trainer, step=1, clip_shape=[3, 8, 32, 32], cfg=cfg)
    (d / checkpointing.CONFIG_FILE).write_text(OLD_TINY)
    loaded, loaded_cfg, state = experiment.load_trainer(str(d))
    assert state["step"] == 1 and loaded_cfg.scaling.ranks == 2 and loaded_cfg.ema.decay == 0.99
    assert all(torch.equal(a, b) for a, b in zip(loaded.nets["G"].state_dict().values(),
                                                 trainer.nets["G"].state_dict().values()))


def test_the_docs_table_of_old_names_is_the_code_table():
    text = (PACKAGE.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z0-9_.]+)` \| `([a-z0-9_.]+)` \|$", text, re.M))
    assert rows == RENAMED_KEYS
