"""The model zoo side by side: every registry model trained, picked on validation, scored on test.

    RAY_AUTH_MODE=token python -m ssagan_dist.bench zoo      # or: make bench-zoo

Every model trains from its recipe ``ssagan_dist/configs/zoo/<model>.yaml`` through the real entry
point (``python -m ssagan_dist.train``, its own local Ray), on the data, splits and clip size
(32×32×8) of ``bench quality``: synthetic skies (training seed 0, validation seed 2, test seed 1)
and the packaged real footage (split by video). Every recipe has the same budget, checked before
anything runs: ``trainer.max_steps`` G updates of ``trainer.batch_size`` clips on one worker,
validation (the whole validation split) and a checkpoint every ``trainer.val_every`` steps.

- Image-conditioned models (mdgan_stage1/2, ssagan_a/b, ssagan, convlstm_gan, pix2pix_video): the
  checkpoint with the best validation PSNR (``evaluate --pick best``) scored on every test clip:
  MSE/PSNR/SSIM beside copy-frame and the mean training change; mean ± std over training seeds.
- Two-stage models start from the Stage-I run of the same data and seed (``mdgan_stage2`` from
  ``mdgan_stage1``, ``ssagan_b`` from ``ssagan_a``): ``run.stage1_checkpoint`` = that run's
  checkpoint picked on validation. Selecting a Stage II selects its Stage I.
- Noise-only models (video3d_gan, hrvgan, dcgan): no true future exists, so a distribution
  distance (``ssagan_dist.distribution``: Fréchet distance of random 3-D conv features, *not*
  FVD) between their samples and the test clips; the checkpoint with the smallest distance to
  the validation clips is picked. Beside it, the same distance for the training clips (the
  floor: real clips of the same kind) and for static copies of training frames (the reference:
  right appearance, no motion), and the mean absolute change between consecutive frames. Appearance
  alone: the same distance between first frames held still (floor: training frames; reference: the
  mean training frame for every sample), the one score of the DCGAN's own task (an image model).

Environment (like ``bench quality``'s):

- ZOO_DIR: work folder (default /tmp/ssagan_zoo): data, ``runs/``, logs, ``results/<run>.json``
  (one per finished run), ``report/``, and the outputs ``zoo.json``, ``zoo.md``, ``zoo.png``,
  ``zoo.gif``. A rerun reuses every finished run whose command and recipe settings are unchanged
  (resumable); delete ``results/<run>.json`` to train that run again.
- ZOO_MODELS: models (default: the whole registry), space-separated.
- ZOO_DATA: ``sky``, ``real`` or both (default ``sky real``).
- ZOO_SEEDS: training seeds, the same for every model (default ``0 1 2`` on skies, ``0`` on real
  footage).
- ZOO_OVERRIDES: extra ``key=value`` training overrides for every run (space-separated; they
  change the budget, e.g. ``trainer.max_steps=2`` for a smoke run, and are recorded).
- ZOO_TIMEOUT_S: per training run (default 900).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, distribution, evaluate, experiment
from ssagan_dist.bench import quality
from ssagan_dist.config import PRESET_DIR
from ssagan_dist.experiment import load_config
from ssagan_dist.data import ClipLoader
from ssagan_dist.models import registry

# Table order: the papers' systems first (Stage I before the Stage II built on it).
CONDITIONAL = ("mdgan_stage1", "mdgan_stage2", "ssagan_a", "ssagan_b", "ssagan", "convlstm_gan", "pix2pix_video")
NOISE = ("video3d_gan", "hrvgan", "dcgan")
STAGE1 = {"mdgan_stage2": "mdgan_stage1", "ssagan_b": "ssagan_a"}
BUDGET_KEYS = ("trainer.max_steps", "trainer.batch_size", "trainer.num_workers", "trainer.val_every",
               "trainer.val_batches", "trainer.g_ema_decay", "trainer.g_ema_rampup")
DATASETS = ("sky", "real")
SAMPLES = 256  # clips drawn from a noise-only model, and training clips for its floor and reference
FIGURE_CLIPS = 3


def recipe(model: str) -> str:
    return f"zoo/{model}"


def recipes_budget(models: list[str]) -> dict:
    """The budget keys, equal in every recipe (else ValueError naming the recipe and key)."""
    budget: dict = {}
    for model in models:
        cfg = load_config(recipe(model))
        for key in BUDGET_KEYS:
            value = OmegaConf.select(cfg, key)
            if budget.setdefault(key, value) != value:
                raise ValueError(f"{PRESET_DIR / recipe(model)}.yaml: {key} = {value}, the other recipes have "
                                 f"{budget[key]}: every zoo model gets the same budget")
    return budget


def selection(env: dict | None = None) -> dict:
    """Models, data sets and seeds chosen by ZOO_MODELS, ZOO_DATA and ZOO_SEEDS (ValueError naming
    the variable for a bad value). A Stage II brings its Stage I along."""
    env = os.environ if env is None else env
    known = registry.names()
    models = env.get("ZOO_MODELS", "").split() or [m for m in (*CONDITIONAL, *NOISE) if m in known]
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ValueError(f"ZOO_MODELS: unknown model(s) {unknown}; models: {', '.join(known)}")
    models = [m for m in (*CONDITIONAL, *NOISE) if m in models or m in {STAGE1.get(x) for x in models}]
    data = env.get("ZOO_DATA", "").split() or list(DATASETS)
    if any(d not in DATASETS for d in data):
        raise ValueError(f"ZOO_DATA = {env.get('ZOO_DATA')!r}: one or more of {' '.join(DATASETS)}")
    seeds = {}
    for d in data:
        text = env.get("ZOO_SEEDS", quality.DEFAULT_SEEDS[d])
        try:
            seeds[d] = [int(s) for s in text.split()]
        except ValueError:
            raise ValueError(f"ZOO_SEEDS = {text!r}: space-separated integers") from None
        if not seeds[d]:
            raise ValueError("ZOO_SEEDS is empty: give at least one training seed")
    return {"models": models, "data": data, "seeds": seeds}


def runs_to_do(sel: dict) -> list[tuple[str, str, int]]:
    """(data, model, seed) in training order: a Stage I before its Stage II."""
    todo = []
    for d in sel["data"]:
        for model in sel["models"]:
            todo.extend((d, model, s) for s in sel["seeds"][d])
    return todo


def run_name(data: str, model: str, seed: int) -> str:
    return f"{data}_{model}_seed{seed}"


def load_clips(url: str, limit: int = 0) -> torch.Tensor:
    """Every clip of a dataset (or its first ``limit``), (N, C, T, H, W) in [-1, 1]."""
    out, n = [], 0
    for batch in ClipLoader(url, 32, shuffle=False, drop_last=False).every_clip():
        out.append(batch["video"][batch["valid"]])
        n += len(out[-1])
        if limit and n >= limit:
            break
    clips = torch.cat(out)
    return clips[:limit] if limit else clips


@torch.no_grad()
def generate(trainer, driving: torch.Tensor, seed: int = 0, batch: int = 32) -> torch.Tensor:
    """``trainer.predict`` on batches of ``driving`` clips (for a noise-only model they give only
    the shape and the count), with a fixed noise seed."""
    torch.manual_seed(seed)
    return torch.cat([trainer.predict({"video": driving[i:i + batch]}) for i in range(0, len(driving), batch)])


def keeps_ema(run: str) -> bool:
    """Whether a run kept a moving average of G (``trainer.g_ema_decay`` > 0): it is then scored
    with the average (what validation picked on) and, beside it, with G as trained."""
    first = checkpointing.checkpoint_dirs(run)[-1]
    cfg = OmegaConf.load(Path(first) / checkpointing.CONFIG_FILE)
    return bool(OmegaConf.select(cfg, "trainer.g_ema_decay", default=0.0))


def still(clips: torch.Tensor) -> torch.Tensor:
    """Each clip's first frame repeated over its frames: its appearance without motion."""
    return clips[:, :, :1].expand_as(clips).contiguous()


def score_noise(run: str, data: dict, clips: dict) -> dict:
    """Pick the checkpoint whose samples are nearest the validation clips; score it on test."""
    driving = clips["train"][:SAMPLES]
    ema = keeps_ema(run)
    by_step = []
    for ckpt in reversed(checkpointing.checkpoint_dirs(run)):
        trainer, _, state = experiment.load_trainer(ckpt)
        with trainer.generator_weights():  # the average where the run kept one
            samples = generate(trainer, driving)
        by_step.append((distribution.frechet_distance(samples, clips["val"]), state["step"], ckpt, samples))
    val_fd, step, ckpt, samples = min(by_step, key=lambda r: (r[0], -r[1]))
    static, test_still = still(driving), still(clips["test"])
    one_frame = driving[:, :, :1].mean(0, keepdim=True).expand_as(driving).contiguous()
    row = {"step": step, "checkpoint": ckpt, "weights": "ema" if ema else "raw",
           "pick_metric": "val Fréchet distance (random 3-D conv features)",
           "pick_value": val_fd, "val_fd_by_step": {s: v for v, s, _, _ in by_step},
           "fd": distribution.frechet_distance(samples, clips["test"]),
           "fd_floor": distribution.frechet_distance(driving, clips["test"]),
           "fd_static": distribution.frechet_distance(static, clips["test"]),
           # appearance alone: each sample's first frame held still, against the test clips' first
           # frames held still; floor: training frames; reference: one image (the mean training
           # frame) for every sample. For the DCGAN (an image model) this is the score of its task.
           "fd_frames": distribution.frechet_distance(still(samples), test_still),
           "fd_frames_floor": distribution.frechet_distance(static, test_still),
           "fd_frames_one": distribution.frechet_distance(one_frame, test_still),
           "change": distribution.mean_frame_change(samples),
           "change_real": distribution.mean_frame_change(clips["test"]),
           "change_train": distribution.mean_frame_change(driving), "samples": SAMPLES,
           "test_count": len(clips["test"])}
    if ema:
        trainer, _, _ = experiment.load_trainer(ckpt)
        with trainer.generator_weights("raw"):
            raw = generate(trainer, driving)
        row.update({"raw_fd": distribution.frechet_distance(raw, clips["test"]),
                    "raw_change": distribution.mean_frame_change(raw)})
    return row


def score_conditional(run: str, data: dict, work: Path, name: str) -> dict:
    ema = keeps_ema(run)
    scores = evaluate.evaluate(run, data["test"], train_data=data["train"], pick="best",
                               out=str(work / "report" / name), progress=False, **({"weights": "ema"} if ema else {}))
    row = {k: v for k, v in scores.items()
           if k in ("step", "count", "checkpoint", "pick_metric") or not isinstance(v, (str, type(None)))}
    row["weights"] = "ema" if ema else "raw"
    if ema:  # G as trained, at the same checkpoint
        raw = evaluate.evaluate(run, data["test"], train_data="", pick="best", progress=False, weights="raw")
        row.update({f"raw_{k}": raw[k] for k in ("mse", "psnr", "ssim")})
    return row


@torch.no_grad()
def figure_predictions(checkpoint: str, clips: torch.Tensor) -> torch.Tensor:
    """What the table scored: the moving average of G where the run kept one."""
    trainer, _, _ = experiment.load_trainer(checkpoint)
    with trainer.generator_weights():
        return generate(trainer, clips)


def one_run(work: Path, data_name: str, data: dict, clips: dict, model: str, seed: int, picked: dict,
            timeout: int, max_steps: int) -> dict:
    """Train (unless a finished run of the same command is there), score, and record one run."""
    name = run_name(data_name, model, seed)
    overrides = [f"trainer.seed={seed}", *os.environ.get("ZOO_OVERRIDES", "").split()]
    if model in STAGE1:
        stage1 = run_name(data_name, STAGE1[model], seed)
        if stage1 not in picked:
            raise RuntimeError(f"{name} needs the Stage-I run {stage1}, which has not finished")
        overrides.append(f"run.stage1_checkpoint={picked[stage1]}")
    result_file = work / "results" / f"{name}.json"
    # What makes a run: its command and the recipe's settings (an edited recipe trains again; an
    # edited comment does not).
    settings = json.dumps(OmegaConf.to_container(OmegaConf.load(PRESET_DIR / f"{recipe(model)}.yaml")), sort_keys=True)
    command = " ".join(["--config", recipe(model), f"sha256:{hashlib.sha256(settings.encode()).hexdigest()[:16]}",
                        data["train"], data["val"], *overrides])
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("key") == command and Path(done["checkpoint"]).is_dir():
            print(f"[zoo] {name}: reused the finished run ({done['run']})", flush=True)
            return done
    run_dir, trained_file = work / "runs" / name, work / "runs" / name / "zoo_trained.json"
    trained = json.loads(trained_file.read_text()) if trained_file.is_file() else {}
    if trained.get("key") == command and (run_dir / checkpointing.checkpoint_dir_name(max_steps)).is_dir():
        print(f"[zoo] {name}: training finished before; scoring it", flush=True)
    else:
        print(f"[zoo] {name}: training (recipe {recipe(model)}, seed {seed}"
              + (f", Stage I {overrides[-1].split('=', 1)[1]}" if model in STAGE1 else "") + ")", flush=True)
        trained = {"key": command, **quality.train_run(work, name, recipe(model), data, overrides, timeout)}
        trained_file.write_text(json.dumps(trained))
    row = {"data": data_name, "model": model, "seed": seed, **trained,
           "load_1min_after": round(os.getloadavg()[0], 2)}
    scoring = time.perf_counter()
    row.update(score_noise(trained["run"], data, clips) if model in NOISE
               else score_conditional(trained["run"], data, work, name))
    row["score_seconds"] = round(time.perf_counter() - scoring, 1)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(figure_predictions(row["checkpoint"], clips["test"][:FIGURE_CLIPS]),
               work / "results" / f"{name}.figure.pt")
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=2))
    tmp.replace(result_file)  # the marker of a finished run: whole or absent
    return row


def describe(row: dict) -> str:
    if row["model"] in NOISE:
        return (f"Fréchet distance {row['fd']:.4f} (floor {row['fd_floor']:.4f}, static reference "
                f"{row['fd_static']:.4f}); frame change {row['change']:.4f} vs real {row['change_real']:.4f}"
                + (f"; still frames {row['fd_frames']:.4f} (floor {row['fd_frames_floor']:.4f}, one mean frame "
                   f"{row['fd_frames_one']:.4f})" if "fd_frames" in row else ""))
    return (f"PSNR {row['psnr']:.2f} dB vs copy-frame {row['baseline_psnr']:.2f} ({row['psnr'] - row['baseline_psnr']:+.2f}); "
            f"SSIM {row['ssim']:.4f} vs {row['baseline_ssim']:.4f} ({row['ssim'] - row['baseline_ssim']:+.4f})")


def run() -> dict:
    work = Path(os.environ.get("ZOO_DIR", "/tmp/ssagan_zoo"))
    work.mkdir(parents=True, exist_ok=True)
    timeout = int(os.environ.get("ZOO_TIMEOUT_S", "900"))
    sel = selection()
    budget = recipes_budget(sel["models"])
    budget.update(o.split("=", 1) for o in os.environ.get("ZOO_OVERRIDES", "").split() if o.split("=")[0] in BUDGET_KEYS)
    if "real" in sel["data"]:
        quality.check_footage()  # a missing package fails in seconds, not after the skies
    todo = runs_to_do(sel)
    results: dict = {"cpus": os.cpu_count(), "load_1min_at_start": round(os.getloadavg()[0], 2),
                     "budget": budget, "selection": sel, "data": {}, "rows": []}
    print(f"[zoo] {len(todo)} runs: {', '.join(sel['models'])} on {' and '.join(sel['data'])}; budget "
          + ", ".join(f"{k.split('.')[1]} {v}" for k, v in budget.items()), flush=True)
    start = time.perf_counter()
    picked: dict[str, str] = {}
    builders = {"sky": quality.sky_dataset, "real": quality.real_dataset}
    for data_name in sel["data"]:
        data = builders[data_name](work)
        results["data"][data_name] = data["info"]
        clips = {split: load_clips(data[split]) for split in ("val", "test")}
        clips["train"] = load_clips(data["train"], SAMPLES)
        for d, model, seed in todo:
            if d != data_name:
                continue
            row = one_run(work, d, data, clips, model, seed, picked, timeout, int(budget["trainer.max_steps"]))
            picked[run_name(d, model, seed)] = row["checkpoint"]
            results["rows"].append(row)
            print(f"[zoo] {len(results['rows'])}/{len(todo)} {run_name(d, model, seed)}: step {row['step']} picked "
                  f"on validation; {describe(row)}; trained {row['train_seconds']:.0f} s "
                  f"({row.get('cpu_seconds', float('nan')):.0f} CPU s); {time.perf_counter() - start:.0f} s so far",
                  flush=True)
            write_outputs(work, results)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_outputs(work, results, figure=True)
    print((work / "zoo.md").read_text())
    return results


# -- outputs -------------------------------------------------------------------------------------

def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (data, model): mean ± sample std over seeds of every reported number."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["model"]), []).append(r)
    out = []
    for (data, model), rs in groups.items():
        s = {"data": data, "model": model, "seeds": [r["seed"] for r in rs], "steps": [r["step"] for r in rs],
             "train_seconds": spread([r["train_seconds"] for r in rs]),
             "cpu_seconds": spread([r.get("cpu_seconds", float("nan")) for r in rs])}
        s["weights"] = rs[0].get("weights", "raw")
        if model in NOISE:
            for k in ("fd", "fd_floor", "fd_static", "change", "change_real", "fd_frames", "fd_frames_floor",
                      "fd_frames_one"):
                if all(k in r for r in rs):  # the still-frame distances are absent from results before 2026-12-06
                    s[k] = spread([r[k] for r in rs])
            if "raw_fd" in rs[0]:
                s["raw_fd"] = spread([r["raw_fd"] for r in rs])
        else:
            if "raw_psnr" in rs[0]:
                s["raw_d_psnr"] = spread([r["raw_psnr"] - r["baseline_psnr"] for r in rs])
                s["raw_d_ssim"] = spread([r["raw_ssim"] - r["baseline_ssim"] for r in rs])
            for k in ("mse", "psnr", "ssim", "baseline_mse", "baseline_psnr", "baseline_ssim", "mean_change_psnr",
                      "mean_change_ssim", "count"):
                s[k] = spread([r[k] for r in rs])
            s["d_psnr"] = spread([r["psnr"] - r["baseline_psnr"] for r in rs])
            s["d_ssim"] = spread([r["ssim"] - r["baseline_ssim"] for r in rs])
            s["d_psnr_mean_change"] = spread([r["psnr"] - r["mean_change_psnr"] for r in rs])
        out.append(s)
    return out


def below(s: dict, reference: float) -> str:
    """'yes' / 'no' for one seed; over seeds, how many were below the reference."""
    hits = sum(v < reference for v in s["values"])
    if len(s["values"]) == 1:
        return "yes" if hits else "no"
    return f"{hits} of {len(s['values'])} seeds"


def _pm(s: dict, fmt: str) -> str:
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt.lstrip('+')}}" if len(s["values"]) > 1 else f"{s['mean']:{fmt}}"


def markdown(results: dict) -> str:
    summary = summarise(results["rows"])
    budget = results["budget"]
    lines = [f"Budget for every model: {budget.get('trainer.max_steps')} G updates of "
             f"{budget.get('trainer.batch_size')} clips on {budget.get('trainer.num_workers')} worker; validation "
             f"and a checkpoint every {budget.get('trainer.val_every')} steps; the checkpoint is picked on "
             "validation and scored once on test.", ""]
    for data in results["selection"]["data"]:
        cond = [s for s in summary if s["data"] == data and s["model"] not in NOISE]
        noise = [s for s in summary if s["data"] == data and s["model"] in NOISE]
        if cond:
            first = cond[0]
            lines += [f"### {data}: image-conditioned models (test clips: {first['count']['values'][0]})", "",
                      "| model | seeds | PSNR (dB) | Δ PSNR vs copy-frame | SSIM | Δ SSIM vs copy-frame | MSE "
                      "| Δ PSNR vs mean change | picked steps | train s (CPU s) |",
                      "|---|---|---|---|---|---|---|---|---|---|",
                      f"| copy-frame | – | {first['baseline_psnr']['mean']:.2f} | 0 | {first['baseline_ssim']['mean']:.4f} "
                      f"| 0 | {first['baseline_mse']['mean']:.5f} | – | – | – |",
                      f"| mean training change | – | {first['mean_change_psnr']['mean']:.2f} | "
                      f"{first['mean_change_psnr']['mean'] - first['baseline_psnr']['mean']:+.2f} "
                      f"| {first['mean_change_ssim']['mean']:.4f} "
                      f"| {first['mean_change_ssim']['mean'] - first['baseline_ssim']['mean']:+.4f} | – | 0 | – | – |"]
            for s in cond:
                lines.append(
                    f"| {s['model']}{' (EMA of G)' if s['weights'] == 'ema' else ''} "
                    f"| {' '.join(map(str, s['seeds']))} | {_pm(s['psnr'], '.2f')} "
                    f"| {_pm(s['d_psnr'], '+.2f')} (min {s['d_psnr']['min']:+.2f}) | {_pm(s['ssim'], '.4f')} "
                    f"| {_pm(s['d_ssim'], '+.4f')} (min {s['d_ssim']['min']:+.4f}) | {_pm(s['mse'], '.5f')} "
                    f"| {_pm(s['d_psnr_mean_change'], '+.2f')} | {' '.join(map(str, s['steps']))} "
                    f"| {s['train_seconds']['mean']:.0f} ({s['cpu_seconds']['mean']:.0f}) |")
            lines.append("")
            ema = [s for s in cond if "raw_d_psnr" in s]
            if ema:
                lines += ["Moving average of G (what the rows above score) against G as trained, at the same "
                          "checkpoint:", "", "| model | Δ PSNR EMA | Δ PSNR raw G | Δ SSIM EMA | Δ SSIM raw G |",
                          "|---|---|---|---|---|"]
                lines += [f"| {s['model']} | {_pm(s['d_psnr'], '+.2f')} | {_pm(s['raw_d_psnr'], '+.2f')} "
                          f"| {_pm(s['d_ssim'], '+.4f')} | {_pm(s['raw_d_ssim'], '+.4f')} |" for s in ema]
                lines.append("")
        if noise:
            lines += [f"### {data}: noise-only models (Fréchet distance of random 3-D conv features, not FVD; "
                      f"{SAMPLES} samples vs the test clips; mean ± sample std over seeds)", "",
                      "| model | seeds | distance | floor: training clips | reference: static training frames "
                      "| below reference | frame change (real test) | still frames: distance (floor; one mean "
                      "frame) | picked step | train s (CPU s) |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for s in noise:
                raw = f" (raw G {_pm(s['raw_fd'], '.4f')})" if "raw_fd" in s else ""
                frames = (f"{_pm(s['fd_frames'], '.4f')} ({s['fd_frames_floor']['mean']:.4f}; "
                          f"{s['fd_frames_one']['mean']:.4f})" if "fd_frames" in s else "–")
                lines.append(
                    f"| {s['model']} | {' '.join(map(str, s['seeds']))} | {_pm(s['fd'], '.4f')}{raw} "
                    f"| {s['fd_floor']['mean']:.4f} | {s['fd_static']['mean']:.4f} "
                    f"| {below(s['fd'], s['fd_static']['mean'])} "
                    f"| {s['change']['mean']:.4f} ({s['change_real']['mean']:.4f}) | {frames} "
                    f"| {' '.join(map(str, s['steps']))} "
                    f"| {s['train_seconds']['mean']:.0f} ({s['cpu_seconds']['mean']:.0f}) |")
            lines.append("")
    lines += ["Every run:", "", "| data | model | seed | picked step | result | train s | CPU s | load after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['data']} | {r['model']} | {r['seed']} | {r['step']} | {describe(r)} "
                     f"| {r['train_seconds']:.0f} | {r.get('cpu_seconds', float('nan')):.0f} "
                     f"| {r['load_1min_after']} |")
    runs = sum(r["train_seconds"] + r.get("score_seconds", 0.0) for r in results["rows"])
    lines += ["", f"The runs took {runs / 60:.1f} min of wall time in all (training + scoring, summed over runs, "
                  f"on {results['cpus']} CPUs; 1-min load after each run in the table above)."]
    if "wall_seconds" in results:
        lines.append(f"This invocation: {results['wall_seconds'] / 60:.1f} min (finished runs reused); 1-min load "
                     f"{results['load_1min_at_start']} at start, {results['load_1min_at_end']} at the end.")
    return "\n".join(lines) + "\n"


def write_outputs(work: Path, results: dict, figure: bool = False) -> None:
    results = {**results, "summary": summarise(results["rows"])}
    (work / "zoo.json").write_text(json.dumps(results, indent=2))
    (work / "zoo.md").write_text(markdown(results))
    if figure:
        write_figure(work, results)


def write_figure(work: Path, results: dict) -> None:
    """zoo.png and zoo.gif: held-out test clips of the first data set, the true future above each
    model's prediction (first seed), every frame."""
    from ssagan_dist import visualize

    data = results["selection"]["data"][0]
    rows = [r for r in results["rows"] if r["data"] == data]
    if not rows:
        return
    seed = rows[0]["seed"]
    real = load_clips(str(work / data / "test"), FIGURE_CLIPS)
    series = [("true", real)]
    for r in rows:
        path = work / "results" / f"{run_name(data, r['model'], r['seed'])}.figure.pt"
        if r["seed"] == seed and path.is_file():
            label = r["model"] + (" (sample)" if r["model"] in NOISE else "")
            series.append((label, torch.load(path, weights_only=True)))
    visualize.save_image(visualize.model_grid(series), work / "zoo.png")
    visualize.save_model_grid_gif(series, work / "zoo.gif")
