"""The model zoo side by side: every registry model trained, picked on validation, scored on test.

    RAY_AUTH_MODE=token python -m ssagan_dist.bench zoo      # or: make bench-zoo

Every model trains from its recipe ``ssagan_dist/configs/zoo/<model>.yaml`` through the real entry
point (``python -m ssagan_dist.train``, its own local Ray), on 32×32×8 clips of two data sets:

- **Synthetic skies** (``SKY_SPLITS``): 4096 training clips (data seed 100), 256 validation clips
  (seed 101) and 1024 test clips (seed 102), seeds never used before this benchmark's 2026-12-07
  version (seeds 0-4 were: the earlier zoo and ``bench quality`` splits, the demo, the tuning
  docs and tests; ``SKY_SEEDS_USED_BEFORE``). Validation makes every choice (recipes, the
  checkpoint of every run, the kernel's standardisation); test is scored once.
- **Real footage** from packages (``bench quality``'s videos, its own split by video, ``REAL_SPLIT``):
  ``vtest.avi``, ``cup.mp4``, ``carphone_pristine.mp4`` train (279 clips), ``bikes.mp4``
  validates (61), ``box.mp4`` and ``tree.avi`` test (128 clips): test videos no earlier choice
  was scored on (``VIDEOS_CHOSEN_ON``); too few clips for the noise-only distance's ≥ 1000.

``check_splits`` refuses a data set whose validation or training clips share a data seed, a clip
key or a video with its test clips. Every recipe of a table (image-conditioned, noise-only) has the same budget, checked before anything
runs: ``loop.max_steps`` G updates of ``loop.batch_size`` clips on one worker, validation
(the whole validation split) and a checkpoint every ``loop.val_every`` steps.

Rows ("entries"; ``ORDER``):

- Image-conditioned models (mdgan_stage1/2, ssagan, ssagan_b, convlstm_gan, pix2pix_video): the
  checkpoint with the best validation PSNR (``evaluate --pick best``) scored on every test clip,
  with every clip's scores kept (``scoring.evaluate(per_clip=True)``): MSE/PSNR/SSIM beside copy-frame,
  the mean training change and (skies) the motion oracles; motion columns (predicted against
  true displacement, direction agreement). Differences come with paired bootstrap 95% intervals
  over the test clips (``ssagan_dist.stats``: clips resampled jointly over the training seeds,
  each seed's own interval and the seeds' spread beside it); "not distinguishable" where the
  interval contains 0. Each model is compared with copy-frame, the mean change and the best row.
- ``ssagan`` is SSA-GAN's (a) (SSA in MD-GAN's Stage I): ``ssagan_a`` is the same network with
  the same recipe and gave identical numbers, so it is no longer a default row (``ZOO_MODELS``
  can still name it); ``ssagan_b``'s Stage I is the ``ssagan`` run. The learned gate γ of every
  SSA layer (y = γ·attention + x, γ starts at 0) is reported from the scored checkpoint.
- Two-stage models start from the Stage-I run of the same data and seed (``mdgan_stage2`` from
  ``mdgan_stage1``, ``ssagan_b`` from ``ssagan``): ``init.stage1_checkpoint`` = that run's
  checkpoint picked on validation. A Stage II has seen twice the G updates of its Stage I, so
  ``mdgan_stage1_2x`` and ``ssagan_2x`` train the Stage-I recipe for twice the budget (the same
  total G updates) and the Stage-II table sets the second stage against both.
- Noise-only models (video3d_gan, hrvgan, dcgan): no true future exists, so a distribution
  distance to the test clips: the unbiased kernel distance (``distribution.kernel_distances``:
  KID's cubic-kernel MMD² on random conv features of the clips and of their frame differences,
  standardised on the validation clips; not KID/KVD's numbers) of ``SAMPLES`` samples, with a
  bootstrap interval, beside the same distance for sanity references made of real training
  clips (as they are: real against real; blurred; frames shuffled; the first frame held still),
  and the Fréchet distance of ``distribution.frechet_distance`` kept beside it (biased upward at
  these n: real against real is not 0). The checkpoint with the smallest kernel distance to the
  validation clips is the one scored.

Environment (like ``bench quality``'s):

- ZOO_DIR: work folder (default /tmp/ssagan_zoo): data, ``runs/``, logs, ``results/<run>.json``
  (one per finished run, every clip's scores in it), ``report/``, and the outputs ``zoo.json``,
  ``zoo.md`` (the tables, ready for docs/zoo.md's Results), ``zoo.png``, ``zoo.gif`` (test clips and
  predictions) and ``zoo_curves.png`` (every image-conditioned row's validation PSNR and direction
  agreement at each checkpoint, mean over seeds; each run's curve is kept in its results). A rerun
  reuses every finished run whose command, recipe settings and data are unchanged (resumable);
  delete ``results/<run>.json`` to train that run again.
- ZOO_MODELS: entries (default ``ORDER`` without ``ssagan_a``), space-separated; a Stage II brings
  its Stage I.
- ZOO_DATA: ``sky``, ``real`` or both (default ``sky real``).
- ZOO_SEEDS: training seeds, the same for every model (default ``0 1 2`` on skies, ``0`` on real
  footage).
- ZOO_OVERRIDES: extra ``key=value`` training overrides for every run (space-separated; they
  change the budget, e.g. ``loop.max_steps=2`` for a smoke run, and are recorded).
- ZOO_ENTRY_SEEDS: entries trained on fewer seeds than ZOO_SEEDS, e.g. ``mdgan_stage1_2x:0
  ssagan_2x:0,1`` (a 2× entry costs two runs); a subset of ZOO_SEEDS, so that every row pairs
  with the others on the seeds they share. The tables name such a row's seeds.
- ZOO_TIMEOUT_S: per training run (default 900; twice that for a 2× entry).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ssagan_dist import checkpointing, distribution, experiment, scoring, stats
from ssagan_dist.bench import quality
from ssagan_dist.config import PRESET_DIR
from ssagan_dist.data import ClipLoader, read_index
from ssagan_dist.experiment import load_config
from ssagan_dist.models import registry

# Table order: the papers' systems first (a Stage I, then the same network at twice the budget,
# then the Stage II built on it).
ORDER = ("mdgan_stage1", "mdgan_stage1_2x", "mdgan_stage2", "ssagan_a", "ssagan", "ssagan_2x", "ssagan_b",
         "convlstm_gan", "pix2pix_video", "video3d_gan", "hrvgan", "dcgan")
NOISE = ("video3d_gan", "hrvgan", "dcgan")
CONDITIONAL = tuple(e for e in ORDER if e not in NOISE)
SAME_AS = {"ssagan_a": "ssagan"}  # the same network and recipe: not a default row
LONGER = {"mdgan_stage1_2x": ("mdgan_stage1", 2), "ssagan_2x": ("ssagan", 2)}  # entry: (model, budget multiple)
STAGE1 = {"mdgan_stage2": "mdgan_stage1", "ssagan_b": "ssagan"}
SAME_UPDATES = {"mdgan_stage2": "mdgan_stage1_2x", "ssagan_b": "ssagan_2x"}  # a Stage II and its Stage I at 2×
WITHOUT_SSA = {"ssagan": "mdgan_stage1", "ssagan_b": "mdgan_stage2"}  # an SSA network: the same one without SSA
LABELS = {"ssagan": "ssagan (SSA-GAN (a))", "ssagan_a": "ssagan_a (= ssagan)",
          "mdgan_stage1_2x": "mdgan_stage1 at 2× budget", "ssagan_2x": "ssagan at 2× budget"}
BUDGET_KEYS = ("loop.max_steps", "loop.batch_size", "scaling.ranks", "scaling.cpus_per_rank", "loop.val_every",
               "loop.val_batches", "ema.decay", "ema.rampup")
DATASETS = ("sky", "real")
SIZE, FRAMES = quality.SIZE, quality.FRAMES
# (clips, data seed) per split: new seeds (2026-12-07); the test set big enough for intervals and
# for the noise-only distance against >= 1000 real clips.
SKY_SPLITS = {"train": (4096, 100), "val": (256, 101), "test": (1024, 102)}
SKY_SEEDS_USED_BEFORE = frozenset({0, 1, 2, 3, 4})  # earlier zoo/quality splits, demo, tuning docs, tests
# Real footage (2026-12-07): test videos on which no score was ever computed for a choice. cup.mp4 and
# carphone_pristine.mp4 (bench quality's test videos) validated the earlier tiny_cpu protocol and
# bikes.mp4 validates bench quality and picks this table's checkpoints; box.mp4 and tree.avi were
# only ever training videos. Fixed before any run of this split.
REAL_SPLIT = {"val": "bikes.mp4", "test": ["box.mp4", "tree.avi"]}
FOLDERS = {"sky": "sky", "real": "real_zoo"}  # each data set's shards under the work folder
VIDEOS_CHOSEN_ON = frozenset({*quality.HELD_OUT, quality.VAL_VIDEO})  # scored for a choice before 2026-12-07
SAMPLES = 1024  # clips drawn from a noise-only model, and training clips for its references
N_BOOT, KERNEL_BOOT, BOOT_SEED, CI = 2000, 1000, 0, 0.95
FIGURE_CLIPS = 3
# what a learning curve keeps from each validation (the model's, then the references on the same clips)
CURVE_KEYS = ("val/psnr", "val/ssim", "val/direction_agreement", "val/pred_displacement", "val/true_displacement",
              "val/baseline_psnr", "val/oracle_motion_psnr")
# evaluate's per-clip result (``result["per_clip"]``): the keys read here (any may be missing).
PER_CLIP_SCORES = ("psnr", "ssim", "mse", "baseline_psnr", "baseline_ssim", "baseline_mse", "mean_change_psnr",
                   "mean_change_ssim", "mean_change_mse", "oracle_drift_psnr", "oracle_drift_ssim",
                   "oracle_motion_psnr", "oracle_motion_ssim", "oracle_seen_psnr", "oracle_seen_ssim")
PER_CLIP_MOTION = ("pred_displacement", "true_displacement", "direction_agreement")
PER_CLIP_KEY = "key"  # the clip keys, to pair clips across runs
ORACLES = {"oracle_drift_": "oracle: true drift", "oracle_motion_": "oracle: true motion"}
# the reference beside issue 30's bar: everything frame 0 shows known exactly, the clouds it hides guessed
SEEN = "oracle_seen_"


def model_of(entry: str) -> str:
    """The registry model an entry trains."""
    return LONGER.get(entry, (entry, 1))[0]


def multiple(entry: str) -> int:
    return LONGER.get(entry, (entry, 1))[1]


def plain(text: str) -> str:
    """``text`` in the characters of the figures' built-in font (no ×)."""
    return text.replace("×", "x")


def label(entry: str) -> str:
    return LABELS.get(entry, entry)


def recipe(model: str) -> str:
    return f"zoo/{model_of(model)}"


def group(entry: str) -> str:
    """The table an entry's row stands in: image-conditioned models are scored against the true
    future, noise-only ones by a distribution distance; each group shares one budget."""
    return "noise-only" if model_of(entry) in NOISE else "image-conditioned"


def recipes_budget(models: list[str]) -> dict[str, dict]:
    """The budget keys of each group (``group``), equal in every recipe of that group (else
    ValueError naming the recipe and key): {group: {key: value}}."""
    budgets: dict[str, dict] = {}
    for model in dict.fromkeys(model_of(m) for m in models):
        cfg = load_config(recipe(model))
        budget = budgets.setdefault(group(model), {})
        for key in BUDGET_KEYS:
            value = OmegaConf.select(cfg, key)
            if budget.setdefault(key, value) != value:
                raise ValueError(f"{PRESET_DIR / recipe(model)}.yaml: {key} = {value}, the other {group(model)} "
                                 f"recipes have {budget[key]}: every zoo model of a table gets the same budget")
    return budgets


def entries() -> list[str]:
    """Every entry whose model is in the registry, in table order."""
    known = set(registry.names())
    return [e for e in ORDER if model_of(e) in known]


def selection(env: dict | None = None) -> dict:
    """Entries, data sets and seeds chosen by ZOO_MODELS, ZOO_DATA and ZOO_SEEDS (ValueError naming
    the variable for a bad value). A Stage II brings its Stage I along."""
    env = os.environ if env is None else env
    known = entries()
    models = env.get("ZOO_MODELS", "").split() or [e for e in known if e not in SAME_AS]
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ValueError(f"ZOO_MODELS: unknown model(s) {unknown}; models: {', '.join(known)}")
    models = [m for m in known if m in models or m in {STAGE1.get(x) for x in models}]
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
    entry_seeds: dict = {}
    for item in env.get("ZOO_ENTRY_SEEDS", "").split():
        entry, _, text = item.partition(":")
        try:
            chosen = [int(s) for s in text.split(",")]
        except ValueError:
            raise ValueError(f"ZOO_ENTRY_SEEDS: {item!r} is not ENTRY:SEED[,SEED...]") from None
        if entry not in models:
            raise ValueError(f"ZOO_ENTRY_SEEDS: {entry!r} is not among the entries run ({', '.join(models)})")
        for d in data:
            if not set(chosen) <= set(seeds[d]):
                raise ValueError(f"ZOO_ENTRY_SEEDS: {item!r} names seeds outside ZOO_SEEDS ({' '.join(map(str, seeds[d]))} "
                                 f"on {d}); an entry runs on a subset of them, so that its rows pair with the others'")
            entry_seeds.setdefault(d, {})[entry] = [s for s in seeds[d] if s in chosen]
    return {"models": models, "data": data, "seeds": seeds, "entry_seeds": entry_seeds}


def runs_to_do(sel: dict) -> list[tuple[str, str, int]]:
    """(data, entry, seed) in training order: a Stage I before its Stage II."""
    todo = []
    for d in sel["data"]:
        for model in sel["models"]:
            todo.extend((d, model, s) for s in sel.get("entry_seeds", {}).get(d, {}).get(model, sel["seeds"][d]))
    return todo


def run_name(data: str, model: str, seed: int) -> str:
    return f"{data}_{model}_seed{seed}"


@functools.lru_cache(maxsize=None)
def _n_critic(model: str) -> int:
    return int(OmegaConf.select(load_config(recipe(model)), "optim.n_critic", default=1))


def entry_budget(entry: str, budget: dict) -> dict:
    """What an entry trains, in G updates and in clips each network saw: G sees batch × G updates
    clips, D batch × n_critic × G updates (``optim.n_critic`` D updates per G update, from the
    recipe); a Stage II adds its Stage I's (``parts``: Stage I first)."""
    batch = int(budget["loop.batch_size"]) * int(budget["scaling.ranks"])
    steps, every = int(budget["loop.max_steps"]), int(budget["loop.val_every"])

    def part(e: str) -> dict:
        n_critic = _n_critic(model_of(e))
        g = steps * multiple(e)
        return {"entry": e, "g_updates": g, "g_clips": batch * g, "n_critic": n_critic,
                "d_clips": batch * n_critic * g, "checkpoints": g // every if every else 0}

    parts = ([part(STAGE1[entry])] if entry in STAGE1 else []) + [part(entry)]
    return {"parts": parts, "batch": batch,
            **{k: sum(p[k] for p in parts) for k in ("g_updates", "g_clips", "d_clips", "checkpoints")}}


# -- data ------------------------------------------------------------------------------------------

def sky_dataset(work: Path, splits: dict | None = None) -> dict:
    """The zoo's synthetic skies (``SKY_SPLITS``: clips and data seed per split), 32×32×8, under
    ``work/sky``; a split written with other seeds or counts is written again."""
    from data_tools.synth import generate

    splits = splits or SKY_SPLITS
    out = work / FOLDERS["sky"]
    for split, (clips, seed) in splits.items():
        index = read_index(str(out / split)) if (out / split / "index.json").is_file() else None
        source = (index or {}).get("source", {})
        if (source.get("seed"), source.get("clips"), source.get("size"), source.get("frames")) != (
                seed, clips, SIZE, FRAMES):
            generate(str(out / split), clips, size=SIZE, frames=FRAMES, seed=seed, split=split, overwrite=True,
                     progress=False)
    return {**{split: str(out / split) for split in splits},
            "info": {f"{split}_clips": clips for split, (clips, _) in splits.items()}
            | {"data_seeds": {split: seed for split, (_, seed) in splits.items()}}}


def real_dataset(work: Path) -> dict:
    """``bench quality``'s packaged footage under ``work/real_zoo``, split by video (``REAL_SPLIT``)."""
    return quality.real_dataset(work, test=REAL_SPLIT["test"], val=REAL_SPLIT["val"], folder=FOLDERS["real"])


def split_overlaps(urls: dict[str, str]) -> list[str]:
    """What two splits of a data set share, from their indexes: clip keys, a synthetic data seed,
    source videos (groups). Empty when the splits are disjoint."""
    seen = {}
    for split, url in urls.items():
        index = read_index(url)
        if index is None:
            raise FileNotFoundError(f"{url}: no index.json")
        source = index.get("source") or {}
        seen[split] = {"keys": {k for shard in index["shards"] for k in shard.get("keys", [])},
                       "seed": source.get("seed") if source.get("tool") == "data_tools.synth" else None,
                       "groups": set(source.get("groups") or [])}
    problems = []
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            keys = seen[a]["keys"] & seen[b]["keys"]
            if keys:
                problems.append(f"{a} and {b} share {len(keys)} clip key(s), e.g. {sorted(keys)[0]}")
            if seen[a]["seed"] is not None and seen[a]["seed"] == seen[b]["seed"]:
                problems.append(f"{a} and {b} are both synthetic data seed {seen[a]['seed']}")
            if seen[a]["groups"] & seen[b]["groups"]:
                problems.append(f"{a} and {b} share video(s) {sorted(seen[a]['groups'] & seen[b]['groups'])}")
    return problems


def check_splits(data: dict) -> None:
    """RuntimeError if the training, validation and test splits of a data set share anything."""
    problems = split_overlaps({split: data[split] for split in ("train", "val", "test")})
    if problems:
        raise RuntimeError("zoo data splits overlap: " + "; ".join(problems))


def data_key(info: dict) -> str:
    """What identifies a data set in a run's reuse key (a rerun on other data trains again)."""
    keep = {k: v for k, v in info.items() if k.endswith("_clips") or k in ("data_seeds", "stride")
            or k.endswith("_videos")}
    return "data:" + hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


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


# -- scoring ---------------------------------------------------------------------------------------

@torch.no_grad()
def generate(trainer, driving: torch.Tensor, seed: int = 0, batch: int = 32) -> torch.Tensor:
    """``trainer.predict`` on batches of ``driving`` clips (for a noise-only model they give only
    the shape and the count), with a fixed noise seed."""
    torch.manual_seed(seed)
    return torch.cat([trainer.predict({"video": driving[i:i + batch]}) for i in range(0, len(driving), batch)])


def cycled(clips: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` clips: ``clips`` repeated as often as needed (driving clips of a noise-only model)."""
    return clips[torch.arange(n) % len(clips)]


def keeps_ema(run: str) -> bool:
    """Whether a run kept a moving average of G (``ema.decay`` > 0): it is then scored
    with the average (what validation picked on) and, beside it, with G as trained."""
    first = checkpointing.checkpoint_dirs(run)[-1]
    cfg = OmegaConf.create(checkpointing.read_config(Path(first)))
    return bool(OmegaConf.select(cfg, "ema.decay", default=0.0))


def still(clips: torch.Tensor) -> torch.Tensor:
    """Each clip's first frame repeated over its frames: its appearance without motion."""
    return clips[:, :, :1].expand_as(clips).contiguous()


def blurred(clips: torch.Tensor) -> torch.Tensor:
    """Each frame through a 3×3 binomial blur (edges replicated)."""
    k = torch.tensor([1.0, 2.0, 1.0])
    c = clips.shape[1]
    w = ((k[:, None] * k[None]) / 16).expand(c, 1, 3, 3).contiguous()
    frames = clips.transpose(1, 2).reshape(-1, c, *clips.shape[-2:])
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(frames, (1, 1, 1, 1), mode="replicate"), w, groups=c)
    return out.reshape(clips.shape[0], clips.shape[2], c, *clips.shape[-2:]).transpose(1, 2).contiguous()


def shuffled(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each clip's frames in a random order (seeded): every frame real, the motion destroyed."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([c[:, torch.randperm(c.shape[1], generator=g)] for c in clips])


# The noise-only table's sanity references, made of real training clips: (label, transform).
REFERENCES = {"real": ("real training clips (real against real)", lambda x: x),
              "blurred": ("blurred training clips (3×3 binomial)", blurred),
              "shuffled": ("training clips, frames shuffled", shuffled),
              "static": ("training clips, first frame held still", still)}


def reference_scores(clips: dict) -> dict:
    """Once per data set: the kernel features (standardised on the validation clips), the test
    clips' features, and every sanity reference's kernel distance (with its bootstrap replicates,
    kept in memory for differences) and Fréchet distance to the test clips."""
    net = distribution.KernelVideoFeatures(clips["test"].shape[1])
    scale = distribution.Standardise(distribution.kernel_features(clips["val"], net))
    feats = lambda x: scale(distribution.kernel_features(x, net))  # noqa: E731
    train, test = clips["train"][:SAMPLES], clips["test"]
    sets = {name: transform(train) for name, (_, transform) in REFERENCES.items()}
    test_feats = feats(test)
    kernel = distribution.kernel_distances({name: feats(x) for name, x in sets.items()}, test_feats,
                                           n_boot=KERNEL_BOOT, seed=BOOT_SEED, ci=CI)
    one_frame = train[:, :, :1].mean(0, keepdim=True).expand_as(train).contiguous()
    return {"net": net, "scale": scale, "test": test_feats, "val": feats(clips["val"]), "kernel": kernel,
            "fd": {name: distribution.frechet_distance(x, test) for name, x in sets.items()},
            "change": {name: distribution.mean_frame_change(x) for name, x in sets.items()},
            "fd_frames_floor": distribution.frechet_distance(still(train), still(test)),
            "fd_frames_one": distribution.frechet_distance(one_frame, still(test)),
            "change_real": distribution.mean_frame_change(test), "change_train": distribution.mean_frame_change(train),
            "n_reference": len(train), "n_test": len(test)}


def references_record(ref: dict) -> dict:
    """The JSON record of ``reference_scores`` (no features, no replicates); each reference's
    kernel distance also as a difference to the still-frame and the real reference."""
    kernel = ref["kernel"]
    return {"references": {name: {"label": REFERENCES[name][0], "kernel": kernel[name].to_dict(),
                                  "vs": {other: distribution.kernel_difference(kernel[name], kernel[other])
                                         for other in ("static", "real") if other != name},
                                  "fd": ref["fd"][name], "change": ref["change"][name]} for name in REFERENCES},
            **{k: ref[k] for k in ("fd_frames_floor", "fd_frames_one", "change_real", "change_train", "n_reference",
                                   "n_test")}}


def kernel_of(samples: torch.Tensor, ref: dict, name: str = "samples") -> distribution.KernelDistance:
    feats = ref["scale"](distribution.kernel_features(samples, ref["net"]))
    return distribution.kernel_distances({name: feats}, ref["test"], n_boot=KERNEL_BOOT, seed=BOOT_SEED, ci=CI)[name]


def score_noise(run: str, data: dict, clips: dict) -> dict:
    """Pick the checkpoint whose samples are nearest the validation clips (kernel distance); score
    it on test against the references (``clips["references"]``, made here when absent)."""
    ref = clips.get("references") or reference_scores(clips)
    ema = keeps_ema(run)
    pick_driving = cycled(clips["train"], min(len(clips["val"]), SAMPLES))
    by_step = []
    for ckpt in reversed(checkpointing.checkpoint_dirs(run)):
        trainer, _, state = experiment.load_trainer(ckpt)
        with trainer.generator_weights():  # the average where the run kept one
            samples = generate(trainer, pick_driving)
        feats = ref["scale"](distribution.kernel_features(samples, ref["net"]))
        val_kd = distribution.kernel_distances({"s": feats}, ref["val"], n_boot=0, subsets=0)["s"].estimate
        by_step.append((val_kd, state["step"], ckpt, distribution.frechet_distance(samples, clips["val"])))
    val_kd, step, ckpt, _ = min(by_step, key=lambda r: (r[0], -r[1]))
    trainer, _, _ = experiment.load_trainer(ckpt)
    driving = cycled(clips["train"], SAMPLES)
    with trainer.generator_weights():
        samples = generate(trainer, driving)
    kernel = kernel_of(samples, ref)
    test_still = still(clips["test"])
    row = {"step": step, "checkpoint": ckpt, "weights": "ema" if ema else "raw",
           "pick_metric": "val kernel distance (unbiased MMD², random-conv features)", "pick_value": val_kd,
           "val_kernel_by_step": {s: v for v, s, _, _ in by_step}, "val_fd_by_step": {s: f for _, s, _, f in by_step},
           "kernel": kernel.to_dict(),
           "kernel_vs": {name: distribution.kernel_difference(kernel, ref["kernel"][name]) for name in REFERENCES},
           "fd": distribution.frechet_distance(samples, clips["test"]),
           "fd_floor": ref["fd"]["real"], "fd_static": ref["fd"]["static"],
           # appearance alone: each sample's first frame held still, against the test clips' first
           # frames held still; floor: training frames; reference: one image (the mean training
           # frame) for every sample. For the DCGAN (an image model) this is the score of its task.
           "fd_frames": distribution.frechet_distance(still(samples), test_still),
           "fd_frames_floor": ref["fd_frames_floor"], "fd_frames_one": ref["fd_frames_one"],
           "change": distribution.mean_frame_change(samples), "change_real": ref["change_real"],
           "change_train": ref["change_train"], "samples": len(samples), "test_count": len(clips["test"])}
    if ema:
        with trainer.generator_weights("raw"):
            raw = generate(trainer, driving)
        row.update({"raw_kernel": kernel_of(raw, ref).to_dict(),
                    "raw_fd": distribution.frechet_distance(raw, clips["test"]),
                    "raw_change": distribution.mean_frame_change(raw)})
    return row


def clean_per_clip(per_clip: dict | None) -> dict:
    """evaluate's per-clip lists, as JSON: numbers rounded to 6 decimals (1e-6 dB, 1e-6 SSIM),
    the clip keys as strings; anything else left out."""
    out: dict = {}
    for k, values in (per_clip or {}).items():
        if torch.is_tensor(values) or isinstance(values, np.ndarray):
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            continue
        if k == PER_CLIP_KEY:
            out[k] = [str(v) for v in values]
        elif all(isinstance(v, (int, float, bool)) for v in values):
            out[k] = [round(float(v), 6) for v in values]
    return out


def evaluate_per_clip(*args, **kwargs) -> dict:
    """``scoring.evaluate`` asking for every clip's scores where it can give them."""
    if "per_clip" in inspect.signature(scoring.evaluate).parameters:
        kwargs["per_clip"] = True
    return scoring.evaluate(*args, **kwargs)


def ssa_gammas(checkpoint: str, weights: str = "raw") -> dict:
    """{network: {layer: γ}} of every SSA layer in a checkpoint (``gamma`` parameters; none in a
    network without SSA): ``G`` as scored (its moving average ``G_ema`` for ``weights="ema"``)
    and, in a Stage II, the frozen Stage-I generator ``G_stage1``."""
    nets = checkpointing.read_model(Path(checkpoint))["trainer"]["nets"]
    out = {}
    for role in ("G", "G_stage1"):
        source = "G_ema" if role == "G" and weights == "ema" and "G_ema" in nets else role
        gammas = {k[: -len(".gamma")]: float(v) for k, v in (nets.get(source) or {}).items()
                  if k.endswith(".gamma") and torch.is_tensor(v) and v.numel() == 1}
        if gammas:
            out[role] = gammas
    return out


def validation_curve(run: str) -> dict[str, list]:
    """The run's learning curve as its validation recorded it at every checkpoint (``CURVE_KEYS``;
    a key the data has no value for, e.g. the oracle on real footage, is left out)."""
    records = scoring.validation_records(run, list(CURVE_KEYS))
    curve = {"step": list(records)}
    for key in CURVE_KEYS:
        if all(key in r for r in records.values()):
            curve[key] = [r[key] for r in records.values()]
    return curve


def score_conditional(run: str, data: dict, work: Path, name: str) -> dict:
    ema = keeps_ema(run)
    scores = evaluate_per_clip(run, data["test"], train_data=data["train"], pick="best",
                               out=str(work / "report" / name), progress=False, **({"weights": "ema"} if ema else {}))
    row = {k: v for k, v in scores.items()
           if k != "per_clip" and (k in ("step", "count", "checkpoint", "pick_metric")
                                   or not isinstance(v, (str, type(None))))}
    row["weights"] = "ema" if ema else "raw"
    row["per_clip"] = clean_per_clip(scores.get("per_clip"))
    row["ssa_gamma"] = ssa_gammas(row["checkpoint"], row["weights"])
    row["val_curve"] = validation_curve(run)
    if ema:  # G as trained, at the same checkpoint
        raw = scoring.evaluate(run, data["test"], train_data="", pick="best", progress=False, weights="raw")
        row.update({f"raw_{k}": raw[k] for k in ("mse", "psnr", "ssim")})
        row["ssa_gamma_raw"] = ssa_gammas(row["checkpoint"], "raw")
    return row


@torch.no_grad()
def figure_predictions(checkpoint: str, clips: torch.Tensor) -> torch.Tensor:
    """What the table scored: the moving average of G where the run kept one."""
    trainer, _, _ = experiment.load_trainer(checkpoint)
    with trainer.generator_weights():
        return generate(trainer, clips)


def checkpoint_step(checkpoint: str) -> int:
    return int(str(checkpoint).rstrip("/").rsplit("_", 1)[1])


def one_run(work: Path, data_name: str, data: dict, clips: dict, model: str, seed: int, picked: dict,
            timeout: int, budget: dict) -> dict:
    """Train (unless a finished run of the same command is there), score, and record one run of
    entry ``model``."""
    name = run_name(data_name, model, seed)
    max_steps = int(budget["loop.max_steps"]) * multiple(model)
    overrides = [f"loop.seed={seed}", *os.environ.get("ZOO_OVERRIDES", "").split()]
    if multiple(model) != 1:  # the recipe at k times the budget (ZOO_OVERRIDES' max_steps included)
        overrides = [o for o in overrides if not o.startswith("loop.max_steps=")]
        overrides.append(f"loop.max_steps={max_steps}")
    stage1_step = None
    if model in STAGE1:
        stage1 = run_name(data_name, STAGE1[model], seed)
        if stage1 not in picked:
            raise RuntimeError(f"{name} needs the Stage-I run {stage1}, which has not finished")
        overrides.append(f"init.stage1_checkpoint={picked[stage1]}")
        stage1_step = checkpoint_step(picked[stage1])
    result_file = work / "results" / f"{name}.json"
    # What makes a run: its command, the recipe's settings (an edited recipe trains again; an
    # edited comment does not) and the data.
    settings = json.dumps(OmegaConf.to_container(OmegaConf.load(PRESET_DIR / f"{recipe(model)}.yaml")), sort_keys=True)
    command = " ".join(["--config", recipe(model), f"sha256:{hashlib.sha256(settings.encode()).hexdigest()[:16]}",
                        data["train"], data["val"], data_key(data["info"]), *overrides])
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
        print(f"[zoo] {name}: training (recipe {recipe(model)}, seed {seed}, {max_steps} G updates"
              + (f", Stage I {picked[run_name(data_name, STAGE1[model], seed)]}" if model in STAGE1 else "") + ")",
              flush=True)
        trained = {"key": command, **quality.train_run(work, name, recipe(model), data, overrides,
                                                       timeout * multiple(model))}
        trained_file.write_text(json.dumps(trained))
    row = {"data": data_name, "model": model, "registry_model": model_of(model), "seed": seed, **trained,
           "budget": entry_budget(model, budget), "load_1min_after": round(os.getloadavg()[0], 2)}
    if stage1_step is not None:
        row["stage1_step"] = stage1_step
    scoring = time.perf_counter()
    row.update(score_noise(trained["run"], data, clips) if model in NOISE
               else score_conditional(trained["run"], data, work, name))
    row["score_seconds"] = round(time.perf_counter() - scoring, 1)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(figure_predictions(row["checkpoint"], clips["test"][:FIGURE_CLIPS]),
               work / "results" / f"{name}.figure.pt")
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(dumps(row))
    tmp.replace(result_file)  # the marker of a finished run: whole or absent
    return row


def describe(row: dict) -> str:
    if row["model"] in NOISE:
        kernel = row.get("kernel")
        head = (f"kernel distance {kernel['estimate']:.4g} [{kernel['low']:.4g}, {kernel['high']:.4g}]; "
                if kernel else "")
        return (head + f"Fréchet distance {row['fd']:.4f} (real {row['fd_floor']:.4f}, static "
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
    budgets = recipes_budget(sel["models"])
    for budget in budgets.values():
        budget.update(o.split("=", 1) for o in os.environ.get("ZOO_OVERRIDES", "").split()
                      if o.split("=")[0] in BUDGET_KEYS)
    if "real" in sel["data"]:
        quality.check_footage()  # a missing package fails in seconds, not after the skies
    todo = runs_to_do(sel)
    results: dict = {"cpus": os.cpu_count(), "load_1min_at_start": round(os.getloadavg()[0], 2),
                     "budget": budgets, "selection": sel, "data": {}, "rows": []}
    print(f"[zoo] {len(todo)} runs: {', '.join(sel['models'])} on {' and '.join(sel['data'])}; budget "
          + "; ".join(f"{g}: " + ", ".join(f"{k.split('.')[1]} {v}" for k, v in budget.items())
                      for g, budget in budgets.items()), flush=True)
    start = time.perf_counter()
    picked: dict[str, str] = {}
    builders = {"sky": sky_dataset, "real": real_dataset}
    for data_name in sel["data"]:
        data = builders[data_name](work)
        check_splits(data)
        clips = {split: load_clips(data[split]) for split in ("val", "test")}
        clips["train"] = load_clips(data["train"], SAMPLES)
        results["data"][data_name] = dict(data["info"])
        if any(m in NOISE for m in sel["models"]):
            clips["references"] = reference_scores(clips)
            results["data"][data_name].update(references_record(clips["references"]))
        for d, model, seed in todo:
            if d != data_name:
                continue
            row = one_run(work, d, data, clips, model, seed, picked, timeout, budgets[group(model)])
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
    """Per (data, entry): mean ± sample std over seeds of every reported number."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["model"]), []).append(r)
    out = []
    for (data, model), rs in groups.items():
        s = {"data": data, "model": model, "label": label(model), "seeds": [r["seed"] for r in rs],
             "steps": [r["step"] for r in rs], "train_seconds": spread([r["train_seconds"] for r in rs]),
             "cpu_seconds": spread([r.get("cpu_seconds", float("nan")) for r in rs])}
        s["weights"] = rs[0].get("weights", "raw")
        if "budget" in rs[0]:
            s["budget"] = rs[0]["budget"]
        if all("stage1_step" in r for r in rs):
            s["stage1_steps"] = [r["stage1_step"] for r in rs]
        if model in NOISE:
            for k in ("fd", "fd_floor", "fd_static", "change", "change_real", "fd_frames", "fd_frames_floor",
                      "fd_frames_one", "raw_fd"):
                if all(k in r for r in rs):  # the still-frame distances are absent from results before 2026-12-06
                    s[k] = spread([r[k] for r in rs])
            for k in ("kernel", "raw_kernel"):
                if all(k in r for r in rs):
                    s[k] = spread([r[k]["estimate"] for r in rs])
                    s[f"{k}_per_seed"] = [r[k] for r in rs]
            s["samples"] = rs[0].get("samples", SAMPLES)
            if all("kernel_vs" in r for r in rs):
                s["kernel_vs"] = {name: [r["kernel_vs"][name] for r in rs] for name in rs[0]["kernel_vs"]}
        else:
            if all("raw_psnr" in r for r in rs):
                s["raw_d_psnr"] = spread([r["raw_psnr"] - r["baseline_psnr"] for r in rs])
                s["raw_d_ssim"] = spread([r["raw_ssim"] - r["baseline_ssim"] for r in rs])
            for k in ("mse", "psnr", "ssim", "baseline_mse", "baseline_psnr", "baseline_ssim", "mean_change_psnr",
                      "mean_change_ssim", "count"):
                if all(k in r for r in rs):
                    s[k] = spread([r[k] for r in rs])
            s["d_psnr"] = spread([r["psnr"] - r["baseline_psnr"] for r in rs])
            s["d_ssim"] = spread([r["ssim"] - r["baseline_ssim"] for r in rs])
            if "mean_change_psnr" in s:
                s["d_psnr_mean_change"] = spread([r["psnr"] - r["mean_change_psnr"] for r in rs])
                s["d_ssim_mean_change"] = spread([r["ssim"] - r["mean_change_ssim"] for r in rs])
            motion = {k: spread([statistics.fmean(r["per_clip"][k]) for r in rs]) for k in PER_CLIP_MOTION
                      if all((r.get("per_clip") or {}).get(k) for r in rs)}
            if motion:
                s["motion"] = motion
            curve = mean_curve([r.get("val_curve") for r in rs])
            if curve:
                s["val_curve"] = curve
            gammas: dict = {}
            for r in rs:
                for role, layers in (r.get("ssa_gamma") or {}).items():
                    for layer, g in layers.items():
                        gammas.setdefault(role, {}).setdefault(layer, []).append(g)
            if gammas:
                s["ssa_gamma"] = {role: {layer: spread(v) for layer, v in layers.items()}
                                  for role, layers in gammas.items()}
        out.append(s)
    return out


def mean_curve(curves: list[dict | None]) -> dict | None:
    """The seeds' learning curves averaged at the steps every seed validated (None when one is missing)."""
    if not curves or any(not c or not c.get("step") for c in curves):
        return None
    steps = [step for step in curves[0]["step"] if all(step in c["step"] for c in curves)]
    keys = [k for k in CURVE_KEYS if all(k in c for c in curves)]
    if not steps or "val/psnr" not in keys:
        return None
    at = [{step: i for i, step in enumerate(c["step"])} for c in curves]
    return {"step": steps, **{k: [statistics.fmean(c[k][a[step]] for c, a in zip(curves, at)) for step in steps]
                              for k in keys}}


# -- intervals over clips --------------------------------------------------------------------------

_COMPARISONS: dict = {}  # (checkpoints, metrics, clips) -> result: the outputs are rewritten after every run


def clip_order(rows: list[dict]) -> list[str] | None:
    """The clip keys of the first row that has them: the order every row's scores are put in."""
    for r in rows:
        keys = (r.get("per_clip") or {}).get(PER_CLIP_KEY)
        if keys:
            return list(keys)
    return None


def clip_scores(row: dict, metric: str | None, order: list[str] | None) -> np.ndarray | None:
    """One run's per-clip ``metric`` in ``order`` (None: a missing key or other clips); ``metric``
    None gives zeros (a one-sample interval)."""
    per_clip = row.get("per_clip") or {}
    ref = per_clip.get("psnr") if metric is None else per_clip.get(metric)
    if ref is None:
        return None
    values = np.zeros(len(ref)) if metric is None else np.asarray(ref, dtype=np.float64)
    keys = per_clip.get(PER_CLIP_KEY)
    if order is not None and keys is not None:
        if len(keys) != len(values) or set(keys) != set(order) or len(order) != len(values):
            return None
        where = {k: i for i, k in enumerate(keys)}
        values = values[[where[k] for k in order]]
    elif order is not None and len(order) != len(values):
        return None
    return values if np.isfinite(values).all() else None


def compare(by_entry: dict, data: str, kind: str, a: str, a_metric: str, b: str, b_metric: str | None,
            order: list[str] | None) -> dict | None:
    """Entry ``a``'s ``a_metric`` against entry ``b``'s ``b_metric`` on the same clips, seed by seed
    (``stats.paired_bootstrap_seeds``); None where a run lacks per-clip scores."""
    ra = {r["seed"]: r for r in by_entry.get(a, [])}
    rb = {r["seed"]: r for r in by_entry.get(b, [])}
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    xs = [clip_scores(ra[s], a_metric, order) for s in seeds]
    ys = [clip_scores(rb[s], b_metric, order) for s in seeds]
    if any(v is None for v in xs + ys) or len({len(v) for v in xs + ys}) != 1 or len(xs[0]) < 2:
        return None
    key = (tuple(ra[s]["checkpoint"] for s in seeds), tuple(rb[s]["checkpoint"] for s in seeds), a_metric, b_metric,
           len(xs[0]), tuple(order or ()))
    if key not in _COMPARISONS:
        _COMPARISONS[key] = stats.paired_bootstrap_seeds(np.stack(xs), np.stack(ys), n_boot=N_BOOT, seed=BOOT_SEED,
                                                         ci=CI).to_dict()
    return {"data": data, "kind": kind, "a": a, "a_metric": a_metric, "b": b, "b_metric": b_metric, "seeds": seeds,
            "clips": len(xs[0]), **_COMPARISONS[key]}


def best_entry(summary: list[dict], data: str, metric: str) -> str | None:
    """The image-conditioned entry with the highest mean ``metric`` over its seeds."""
    cands = [s for s in summary if s["data"] == data and s["model"] not in NOISE and metric in s]
    return max(cands, key=lambda s: s[metric]["mean"])["model"] if cands else None


def comparisons(rows: list[dict]) -> list[dict]:
    """Every interval the tables show: each image-conditioned entry against copy-frame, the mean
    training change and the best entry (PSNR and SSIM); a Stage II against its Stage I and
    against the Stage I at twice the budget, and that against the Stage I; the oracles and the
    mean change against copy-frame; predicted against true displacement and direction agreement."""
    summary = summarise(rows)
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        drows = [r for r in rows if r["data"] == data and r["model"] not in NOISE]
        by_entry: dict = {}
        for r in drows:
            by_entry.setdefault(r["model"], []).append(r)
        order = clip_order(drows)

        def add(*args):
            c = compare(by_entry, data, *args, order)
            if c is not None:
                out.append(c)

        present = [e for e in ORDER if e in by_entry] + [e for e in by_entry if e not in ORDER]
        for metric in ("psnr", "ssim"):
            best = best_entry(summary, data, metric)
            if present:
                first = present[0]
                add("baseline", first, f"mean_change_{metric}", first, f"baseline_{metric}")
                for prefix in ORACLES:
                    add("oracle", first, f"{prefix}{metric}", first, f"baseline_{metric}")
                    add("oracle", first, f"{prefix}{metric}", first, f"mean_change_{metric}")
            for e in present:
                add("copy-frame", e, metric, e, f"baseline_{metric}")
                add("mean change", e, metric, e, f"mean_change_{metric}")
                if best and e != best:
                    add("best", e, metric, best, metric)
            for stage2, stage1 in STAGE1.items():
                longer = SAME_UPDATES.get(stage2)
                add("stage", stage2, metric, stage1, metric)
                if longer:
                    add("stage", stage2, metric, longer, metric)
                    add("stage", longer, metric, stage1, metric)
            for e, same in SAME_AS.items():
                add("same network", e, metric, same, metric)
            for e, plain in WITHOUT_SSA.items():
                add("attention", e, metric, plain, metric)
        for e in present:
            add("motion", e, "pred_displacement", e, "true_displacement")
            add("motion", e, "direction_agreement", e, None)
            for prefix in (*ORACLES, SEEN):
                add("vs oracle", e, "psnr", e, f"{prefix}psnr")
    return out


def find(comps: list[dict], data: str, a: str, a_metric: str, b: str, b_metric: str | None) -> dict | None:
    for c in comps:
        if (c["data"], c["a"], c["a_metric"], c["b"], c["b_metric"]) == (data, a, a_metric, b, b_metric):
            return c
    return None


# -- markdown --------------------------------------------------------------------------------------

def below(s: dict, reference: float) -> str:
    """'yes' / 'no' for one seed; over seeds, how many were below the reference."""
    hits = sum(v < reference for v in s["values"])
    if len(s["values"]) == 1:
        return "yes" if hits else "no"
    return f"{hits} of {len(s['values'])} seeds"


def _pm(s: dict, fmt: str) -> str:
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt.lstrip('+')}}" if len(s["values"]) > 1 else f"{s['mean']:{fmt}}"


def _iv(c: dict | None, fmt: str, scale: float = 1.0, fallback: str = "–") -> str:
    """'+2.43 [+2.31, +2.55] ± 0.03' (the interval over clips, ± the seeds' std of the
    difference), with the verdict where the difference is not distinguishable."""
    if c is None:
        return fallback
    j = c["joint"]
    low, high = sorted((j["low"] * scale, j["high"] * scale))  # a negative scale turns the interval round
    text = f"{j['estimate'] * scale:{fmt}} [{low:{fmt}}, {high:{fmt}}]"
    if len(c["seeds"]) > 1:
        text += f" ± {c['seed_std'] * abs(scale):{fmt.lstrip('+')}}"
    if c["verdict"] != "distinguishable":
        text += f" **{c['verdict']}**"
    return text


def _no_interval(s: dict | None, fmt: str) -> str:
    return f"{_pm(s, fmt)} (no per-clip scores)" if s else "–"


def _count(n: int) -> str:
    return f"{n:,}"


def fewer_seeds(s: dict, all_seeds: list[int]) -> str:
    """' (seed 0)' for a row trained on fewer seeds than the table's (ZOO_ENTRY_SEEDS), else ''."""
    if list(s["seeds"]) == list(all_seeds):
        return ""
    return f" (seed{'s' if len(s['seeds']) > 1 else ''} {' '.join(map(str, s['seeds']))})"


def conditional_tables(data: str, cond: list[dict], comps: list[dict], n_seeds: int) -> list[str]:
    first = cond[0]
    lines: list[str] = []
    all_seeds = sorted({seed for s in cond for seed in s["seeds"]})
    seeds = " ".join(map(str, all_seeds))
    count = first["count"]["values"][0] if "count" in first else "?"
    lines += [f"Δ = the row minus the column's system, the mean over training seeds of each seed's mean over the "
              f"{count} test clips; [95% interval]: paired bootstrap over the test clips ({N_BOOT} resamples, the "
              "same clips for every seed and both systems); ± the seeds' sample std of Δ. **not distinguishable**: "
              "the interval contains 0; **not on every seed (k of n)**: one seed's own interval does or has the "
              "other sign.", ""]
    for metric, name, fmt in (("psnr", "PSNR (dB)", "+.2f"), ("ssim", "SSIM", "+.4f")):
        vfmt = fmt.lstrip("+")
        best = best_entry([*cond], data, metric)
        lines += [f"#### {data}: image-conditioned models, {name.split(' ')[0]} (test clips: {count}; training seeds "
                  f"{seeds})", "",
                  f"| model | {name} | Δ vs copy-frame | Δ vs mean training change | Δ vs best ({label(best)}) "
                  "| picked steps |", "|---|---|---|---|---|---|"]
        a0 = first["model"]
        mean_change = find(comps, data, a0, f"mean_change_{metric}", a0, f"baseline_{metric}")
        means = {k: first[f"{k}{metric}"]["mean"] for k in ("baseline_", "mean_change_") if f"{k}{metric}" in first}
        gap = means["mean_change_"] - means["baseline_"] if len(means) == 2 else None
        no_clips = f"{gap:{fmt}} (no per-clip scores)" if gap is not None else "–"
        no_clips_back = f"{-gap:{fmt}} (no per-clip scores)" if gap is not None else "–"
        lines.append(f"| copy-frame | {means['baseline_']:{vfmt}} | 0 | {_iv(mean_change, fmt, -1.0, no_clips_back)} "
                     "| – | – |")
        if "mean_change_" in means:
            lines.append(f"| mean training change | {means['mean_change_']:{vfmt}} "
                         f"| {_iv(mean_change, fmt, fallback=no_clips)} | 0 | – | – |")
        for prefix, oracle in ORACLES.items():
            vs_copy = find(comps, data, a0, f"{prefix}{metric}", a0, f"baseline_{metric}")
            if vs_copy:
                vs_mean = find(comps, data, a0, f"{prefix}{metric}", a0, f"mean_change_{metric}")
                value = vs_copy["joint"]["estimate"] + first[f"baseline_{metric}"]["mean"]
                lines.append(f"| {oracle} | {value:{vfmt}} | {_iv(vs_copy, fmt)} | {_iv(vs_mean, fmt)} | – | – |")
        for s in cond:
            e = s["model"]
            d_copy = _iv(find(comps, data, e, metric, e, f"baseline_{metric}"), fmt,
                         fallback=_no_interval(s.get(f"d_{metric}"), fmt))
            d_mean = _iv(find(comps, data, e, metric, e, f"mean_change_{metric}"), fmt,
                         fallback=_no_interval(s.get(f"d_{metric}_mean_change"), fmt))
            gap = s[metric]["mean"] - next(x for x in cond if x["model"] == best)[metric]["mean"] if best else None
            vs_best = find(comps, data, e, metric, best, metric)
            d_best = "0 (best)" if e == best else _iv(
                vs_best, fmt, fallback=f"{gap:{fmt}} (no per-clip scores)" if gap is not None else "–")
            if vs_best and list(vs_best["seeds"]) != list(s["seeds"]):  # the seeds both rows have
                d_best += f" (on seed{'s' if len(vs_best['seeds']) > 1 else ''} {' '.join(map(str, vs_best['seeds']))})"
            steps = " ".join(map(str, s["steps"]))
            if "stage1_steps" in s:
                steps += f" (Stage I: {' '.join(map(str, s['stage1_steps']))})"
            lines.append(f"| {label(e)}{' (EMA of G)' if s['weights'] == 'ema' else ''}{fewer_seeds(s, all_seeds)} "
                         f"| {_pm(s[metric], vfmt)} "
                         f"| {d_copy} | {d_mean} | {d_best} | {steps} |")
        lines.append("")
    lines += stage_table(data, cond, comps)
    lines += budget_table(data, cond)
    lines += gamma_table(data, cond)
    lines += motion_table(data, cond, comps)
    lines += curve_table(data, cond)
    ema = [s for s in cond if "raw_d_psnr" in s]
    if ema:
        lines += [f"#### {data}: the moving average of G (what the rows above score) against G as trained, at the "
                  "same checkpoint", "", "| model | Δ PSNR EMA | Δ PSNR raw G | Δ SSIM EMA | Δ SSIM raw G |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label(s['model'])} | {_pm(s['d_psnr'], '+.2f')} | {_pm(s['raw_d_psnr'], '+.2f')} "
                  f"| {_pm(s['d_ssim'], '+.4f')} | {_pm(s['raw_d_ssim'], '+.4f')} |" for s in ema]
        lines.append("")
    return lines


def _updates(s: dict) -> str:
    b = s.get("budget")
    if not b:
        return "?"
    return " + ".join(str(p["g_updates"]) for p in b["parts"])


def stage_table(data: str, cond: list[dict], comps: list[dict]) -> list[str]:
    pairs = []
    for stage2, stage1 in STAGE1.items():
        longer = SAME_UPDATES.get(stage2)
        pairs += [(stage2, stage1), (stage2, longer), (longer, stage1)]
    return (pair_table(data, cond, comps, pairs, "a second stage against more training of the first",
                       "Δ = left minus right on the same test clips, seed by seed (a Stage II starts from the Stage I "
                       "of its seed). G updates: a Stage II's own after its Stage I's; a 2× row trains the Stage-I "
                       "recipe for twice the budget, the total of the Stage II.")
            + pair_table(data, cond, comps, list(WITHOUT_SSA.items()), "self-attention against the same network "
                         "without it", "Δ = left minus right on the same test clips, seed by seed: SSA-GAN (a) is "
                         "MD-GAN's Stage I with SSA layers, SSA-GAN (b) its Stage II on an SSA Stage I; same recipe, "
                         "same budget."))


def pair_table(data: str, cond: list[dict], comps: list[dict], pairs: list, title: str, note: str) -> list[str]:
    by = {s["model"]: s for s in cond}
    pairs = [(a, b) for a, b in pairs if a in by and b in by]
    if not pairs:
        return []
    lines = [f"#### {data}: {title}", "", note, "",
             "| comparison | G updates | Δ PSNR (dB) | Δ SSIM | Δ PSNR per seed [95%] |", "|---|---|---|---|---|"]
    for a, b in pairs:
        psnr = find(comps, data, a, "psnr", b, "psnr")
        ssim = find(comps, data, a, "ssim", b, "ssim")
        per_seed = "; ".join(f"{seed}: {i['estimate']:+.2f} [{i['low']:+.2f}, {i['high']:+.2f}]"
                             for seed, i in zip(psnr["seeds"], psnr["per_seed"])) if psnr else "–"
        fallback = "–"
        if not psnr and "psnr" in by[a] and "psnr" in by[b]:
            fallback = f"{by[a]['psnr']['mean'] - by[b]['psnr']['mean']:+.2f} (no per-clip scores)"
        lines.append(f"| {label(a)} − {label(b)} | {_updates(by[a])} vs {_updates(by[b])} "
                     f"| {_iv(psnr, '+.2f', fallback=fallback)} | {_iv(ssim, '+.4f')} | {per_seed} |")
    return lines + [""]


def budget_table(data: str, rows: list[dict]) -> list[str]:
    rows = [s for s in rows if s.get("budget")]
    if not rows:
        return []
    batch = rows[0]["budget"]["batch"]
    lines = [f"#### {data}: what each row trained ({batch} clips per G update; a Stage II's numbers add its Stage "
             "I's)", "",
             "| model | G updates | clips seen by G | D updates per G update | clips seen by D | checkpoints picked "
             "from | picked steps |", "|---|---|---|---|---|---|---|"]
    for s in rows:
        b = s["budget"]
        parts = b["parts"]
        join = lambda k: " + ".join(_count(p[k]) for p in parts)  # noqa: E731
        steps = " ".join(map(str, s["steps"]))
        if "stage1_steps" in s:
            steps += f" (Stage I: {' '.join(map(str, s['stage1_steps']))})"
        lines.append(f"| {label(s['model'])} | {join('g_updates')} | {join('g_clips')} "
                     f"| {' + '.join(str(p['n_critic']) for p in parts)} | {join('d_clips')} "
                     f"| {' + '.join(str(p['checkpoints']) for p in parts)} | {steps} |")
    return lines + [""]


def gamma_table(data: str, cond: list[dict]) -> list[str]:
    rows = [s for s in cond if s.get("ssa_gamma")]
    if not rows:
        return []
    lines = [f"#### {data}: learned SSA gates γ at the scored checkpoint (y = γ·attention + x; γ starts at 0: 0 = "
             "attention off; mean over seeds [min, max])", "",
             "| model | network | γ per SSA layer | largest abs γ |", "|---|---|---|---|"]
    for s in rows:
        for role, layers in s["ssa_gamma"].items():
            text = "; ".join(f"{layer} {g['mean']:+.3f} [{g['min']:+.3f}, {g['max']:+.3f}]"
                             for layer, g in layers.items())
            largest = max(max(abs(g["min"]), abs(g["max"])) for g in layers.values())
            network = {"G": "G (scored" + (", EMA)" if s["weights"] == "ema" else ")"),
                       "G_stage1": "Stage I (frozen)"}.get(role, role)
            lines.append(f"| {label(s['model'])} | {network} | {text} | {largest:.3f} |")
    return lines + [""]


def curve_table(data: str, cond: list[dict], every: int = 2) -> list[str]:
    """Validation PSNR and direction agreement at every ``every``-th checkpoint, mean over seeds."""
    rows = [s for s in cond if s.get("val_curve")]
    if not rows:
        return []
    steps = sorted({step for s in rows for step in s["val_curve"]["step"]})[every - 1::every]
    all_seeds = sorted({seed for s in cond for seed in s["seeds"]})
    lines = [f"#### {data}: learning curves on validation (PSNR dB / direction agreement %, mean over seeds; "
             "a Stage II counts its own updates, after its Stage I's)", "",
             "What each run's validation recorded at its checkpoints (the curve the pick was made on); the "
             "figure zoo_curves.png draws every checkpoint.", "",
             "| model | " + " | ".join(str(step) for step in steps) + " |", "|---|" + "---|" * len(steps)]
    for s in rows:
        c = s["val_curve"]
        at = {step: i for i, step in enumerate(c["step"])}
        agreement = c.get("val/direction_agreement")
        cells = [(f"{c['val/psnr'][at[step]]:.2f}" + (f" / {100 * agreement[at[step]]:.0f}" if agreement else ""))
                 if step in at else "" for step in steps]
        lines.append(f"| {label(s['model'])}{fewer_seeds(s, all_seeds)} | " + " | ".join(cells) + " |")
    return lines + [""]


def motion_table(data: str, cond: list[dict], comps: list[dict]) -> list[str]:
    rows = [s for s in cond if s.get("motion")]
    if not rows:
        return []
    all_seeds = sorted({seed for s in cond for seed in s["seeds"]})
    lines = [f"#### {data}: motion (every test clip; displacement as evaluate measures it, in px, mean over clips; "
             "mean ± std over seeds)", "",
             "Direction agreement: the share of clips moved within 45° of the true displacement and at least "
             "half its length (docs/metrics.md). PSNR − better oracle: the model against the oracle with the "
             "higher mean PSNR (rendered from each clip's recorded parameters: the true colour drift with the "
             "clouds held still, or the true cloud motion with the colour held still). PSNR − seen-only oracle: "
             "the model against the clip rendered exactly where its cloud was in view in frame 0, the clouds "
             "frame 0 does not show (entering the frame, or from behind the skyline) guessed as their mean "
             "colour: 0 is what a model reaches that knows the motion and the drift exactly and guesses "
             "only what it cannot see. Training time: wall "
             "seconds of one worker (CPU seconds of every process of the run), mean over seeds.", "",
             "| model | predicted displacement | true displacement | predicted / true | Δ predicted − true [95%] "
             "| direction agreement (%) [95%] | PSNR − better oracle (dB) [95%] | PSNR − seen-only oracle (dB) [95%] "
             "| train s (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        m = s["motion"]
        cell = lambda k: _pm(m[k], ".3f") if k in m else "–"  # noqa: E731
        disp = find(comps, data, s["model"], "pred_displacement", s["model"], "true_displacement")
        direction = find(comps, data, s["model"], "direction_agreement", s["model"], None)
        ratio = (f"{m['pred_displacement']['mean'] / m['true_displacement']['mean']:.2f}"
                 if "pred_displacement" in m and "true_displacement" in m and m["true_displacement"]["mean"] else "–")
        gaps = [c for c in (find(comps, data, s["model"], "psnr", s["model"], f"{prefix}psnr") for prefix in ORACLES)
                if c is not None]
        gap = min(gaps, key=lambda c: c["joint"]["estimate"]) if gaps else None  # the better oracle leaves the smaller gain
        oracle = f" ({ORACLES[gap['b_metric'][:-len('psnr')]].removeprefix('oracle: ')})" if gap else ""
        seen = find(comps, data, s["model"], "psnr", s["model"], f"{SEEN}psnr")
        time_cell = f"{s['train_seconds']['mean']:.0f} ({s['cpu_seconds']['mean']:.0f})"
        lines.append(f"| {label(s['model'])}{fewer_seeds(s, all_seeds)} | {cell('pred_displacement')} "
                     f"| {cell('true_displacement')} | {ratio} "
                     f"| {_iv(disp, '+.3f')} | {_iv(direction, '.1f', 100.0)} | {_iv(gap, '+.2f')}{oracle} "
                     f"| {_iv(seen, '+.2f')} | {time_cell} |")
    return lines + [""]


def noise_tables(data: str, noise: list[dict], info: dict) -> list[str]:
    refs = info.get("references") or {}
    n_ref, n_test = info.get("n_reference", "?"), info.get("n_test", "?")
    samples = noise[0].get("samples", SAMPLES)
    lines = [f"#### {data}: noise-only models", "",
             f"Kernel distance: unbiased MMD² with KID's cubic kernel on random conv features of the clips and of "
             f"their frame differences, standardised on the validation clips (`distribution.kernel_distances`; not "
             f"KID or KVD's numbers), {samples} samples (references: {n_ref} training clips) against {n_test} test "
             f"clips; 0 in expectation for two samples of one distribution. [95%]: bootstrap over both sets "
             f"({KERNEL_BOOT} resamples); a Δ resamples the test clips alike for both. Fréchet distance: of "
             "`distribution.frechet_distance`, biased upward at these n (real against real is not 0), kept for "
             "comparison with earlier tables.", "",
             "| row | seeds | kernel distance [95%] | Δ vs first frame held still [95%] | Δ vs real [95%] "
             "| Fréchet distance (biased) | frame change (real test) | still frames: Fréchet (floor; one mean frame) "
             "| picked steps |", "|---|---|---|---|---|---|---|---|---|"]

    def kd(k: dict) -> str:
        return f"{k['estimate']:.4g} [{k['low']:.4g}, {k['high']:.4g}]"

    def diff(d: dict) -> str:
        text = f"{d['estimate']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"
        return text if d["distinguishable"] else text + " **not distinguishable**"

    change_real = info.get("change_real", float("nan"))
    for name, ref in refs.items():
        vs = ref.get("vs", {})
        static_cell = "0" if name == "static" else diff(vs["static"]) if "static" in vs else "–"
        real_cell = "0" if name == "real" else diff(vs["real"]) if "real" in vs else "–"
        change = f"{ref['change']:.4f} ({change_real:.4f})" if "change" in ref else "–"
        frames = f"{info['fd_frames_floor']:.4f} (floor)" if name == "real" and "fd_frames_floor" in info else "–"
        lines.append(f"| {ref['label']} | – | {kd(ref['kernel'])} | {static_cell} | {real_cell} | {ref['fd']:.4f} "
                     f"| {change} | {frames} | – |")
    for s in noise:
        seeds = " ".join(map(str, s["seeds"]))
        if "kernel" in s:
            per_seed = s["kernel_per_seed"]
            kernel = kd(per_seed[0]) if len(per_seed) == 1 else (
                f"{s['kernel']['mean']:.4g} ± {s['kernel']['std']:.4g} (per seed: "
                + "; ".join(kd(k) for k in per_seed) + ")")
            vs_static = s["kernel_vs"]["static"]
            below_static = sum(d["high"] < 0 for d in vs_static)
            static_cell = (diff(vs_static[0]) if len(vs_static) == 1 else
                           f"below on {below_static} of {len(vs_static)} seeds: "
                           + "; ".join(diff(d) for d in vs_static))
            real_cell = "; ".join(diff(d) for d in s["kernel_vs"]["real"])
            if "raw_kernel" in s:
                kernel += f" (G as trained: {_pm(s['raw_kernel'], '.4g')})"
        else:
            kernel, static_cell, real_cell = "–", f"{below(s['fd'], s['fd_static']['mean'])} (Fréchet)", "–"
        frames = (f"{_pm(s['fd_frames'], '.4f')} ({s['fd_frames_floor']['mean']:.4f}; "
                  f"{s['fd_frames_one']['mean']:.4f})" if "fd_frames" in s else "–")
        raw = f" (raw G {_pm(s['raw_fd'], '.4f')})" if "raw_fd" in s else ""
        lines.append(f"| {label(s['model'])} | {seeds} | {kernel} | {static_cell} | {real_cell} "
                     f"| {_pm(s['fd'], '.4f')}{raw} | {s['change']['mean']:.4f} ({s['change_real']['mean']:.4f}) "
                     f"| {frames} | {' '.join(map(str, s['steps']))} |")
    return lines + [""]


def markdown(results: dict) -> str:
    summary = summarise(results["rows"])
    comps = results["comparisons"] if "comparisons" in results else comparisons(results["rows"])
    budgets = results["budget"]
    if "loop.max_steps" in budgets:  # results written before budgets were kept per group
        budgets = {"every": budgets}
    lines = []
    for name, budget in budgets.items():
        lines.append(f"Budget for {name} models: {budget.get('loop.max_steps')} G updates of "
                     f"{budget.get('loop.batch_size')} clips on {budget.get('scaling.ranks')} worker"
                     + (f" of {float(budget['scaling.cpus_per_rank']):g} core"
                        + ("" if float(budget["scaling.cpus_per_rank"]) == 1 else "s")
                        if "scaling.cpus_per_rank" in budget else "")
                     + " (a 2× "
                     f"row: twice that; a Stage II: its own after its Stage I's); validation and a checkpoint every "
                     f"{budget.get('loop.val_every')} steps; the checkpoint is picked on validation and scored "
                     "once on test.")
    lines.append("")
    for data in results["selection"]["data"]:
        info = results.get("data", {}).get(data, {})
        cond = [s for s in summary if s["data"] == data and s["model"] not in NOISE]
        noise = [s for s in summary if s["data"] == data and s["model"] in NOISE]
        if not (cond or noise):
            continue
        lines += [f"### {data}", ""]
        seeds_used = info.get("data_seeds")
        if seeds_used:
            lines += ["Synthetic skies, data seed and clips per split: "
                      + ", ".join(f"{split} {seed} ({info.get(f'{split}_clips', '?')} clips)"
                                  for split, seed in seeds_used.items())
                      + "; validation makes every choice, test is scored once.", ""]
        elif info.get("test_videos"):
            lines += [f"Split by video: training {', '.join(info.get('train_videos', []))} "
                      f"({info.get('train_clips', '?')} clips); validation {', '.join(info.get('val_videos', []))} "
                      f"({info.get('val_clips', '?')}); test {', '.join(info['test_videos'])} "
                      f"({info.get('test_clips', '?')}).", ""]
        if cond:
            lines += conditional_tables(data, cond, comps, len(cond[0]["seeds"]))
        if noise:
            lines += noise_tables(data, noise, info)
    lines += ["Every run:", "", "| data | model | seed | picked step | result | train s | CPU s | load after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['data']} | {label(r['model'])} | {r['seed']} | {r['step']} | {describe(r)} "
                     f"| {r['train_seconds']:.0f} | {r.get('cpu_seconds', float('nan')):.0f} "
                     f"| {r['load_1min_after']} |")
    runs = sum(r["train_seconds"] + r.get("score_seconds", 0.0) for r in results["rows"])
    lines += ["", f"The runs took {runs / 60:.1f} min of wall time in all (training + scoring, summed over runs, "
                  f"on {results['cpus']} CPUs; 1-min load after each run in the table above)."]
    if "wall_seconds" in results:
        lines.append(f"This invocation: {results['wall_seconds'] / 60:.1f} min (finished runs reused); 1-min load "
                     f"{results['load_1min_at_start']} at start, {results['load_1min_at_end']} at the end.")
    return "\n".join(lines) + "\n"


_SCALAR_LIST = re.compile(r"\[\n\s+((?:[^\[\]{}\n]+,\n\s+)*[^\[\]{}\n]+)\n\s*\]")


def dumps(obj) -> str:
    """JSON, indented, with lists of numbers or strings on one line (the per-clip lists)."""
    return _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]", json.dumps(obj, indent=2))


def write_outputs(work: Path, results: dict, figure: bool = False) -> None:
    results = {**results, "summary": summarise(results["rows"]), "comparisons": comparisons(results["rows"])}
    (work / "zoo.json").write_text(dumps(results))
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
    real = load_clips(str(work / FOLDERS[data] / "test"), FIGURE_CLIPS)
    series = [("true", real)]
    for r in rows:
        path = work / "results" / f"{run_name(data, r['model'], r['seed'])}.figure.pt"
        if r["seed"] == seed and path.is_file():
            name = plain(label(r["model"])) + (" (sample)" if r["model"] in NOISE else "")
            series.append((name, torch.load(path, weights_only=True)))
    visualize.save_image(visualize.model_grid(series), work / "zoo.png")
    visualize.save_model_grid_gif(series, work / "zoo.gif")
    write_curves(work / "zoo_curves.png", [s for s in summarise(rows) if s.get("val_curve")])


def write_curves(path: Path, summary: list[dict]) -> None:
    """The image-conditioned rows' learning curves on validation (mean over seeds): PSNR beside
    copy-frame's and the true-motion oracle's on the same clips, and direction agreement."""
    from ssagan_dist import visualize

    if not summary:
        return
    steps = max((s["val_curve"]["step"] for s in summary), key=len)
    curves: dict[str, dict[str, list[float]]] = {"validation PSNR (dB)": {}, "direction agreement (%)": {}}
    for s in summary:
        c = s["val_curve"]
        if c["step"] != steps[:len(c["step"])]:
            continue  # validated at other steps: not on this axis
        curves["validation PSNR (dB)"][plain(label(s["model"]))] = c["val/psnr"]
        if "val/direction_agreement" in c:
            curves["direction agreement (%)"][plain(label(s["model"]))] = [100 * v for v in c["val/direction_agreement"]]
    first = summary[0]["val_curve"]
    for key, name in (("val/baseline_psnr", "copy-frame"), ("val/oracle_motion_psnr", "true-motion oracle")):
        if key in first:
            curves["validation PSNR (dB)"][name] = [statistics.fmean(first[key])] * len(steps)
    visualize.quality_curves_png({k: v for k, v in curves.items() if v}, path, title="zoo", x=steps,
                                 x_label="G updates")
