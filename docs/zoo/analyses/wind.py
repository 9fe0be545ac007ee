"""How exactly frame 0 tells the wind, and how far the exact wind takes a moved frame 0.

The analyses behind docs/zoo.md "What the table says" (the bullet "Exact knowledge of the wind ...").
They read a `bench zoo` work folder (``ZOO_DIR``, default /tmp/ssagan_zoo) and make no choice:

    python docs/zoo/analyses/wind.py warp   [N]        # validation clips: frame 0 moved by the recorded wind
    python docs/zoo/analyses/wind.py warp   [N] render # the same on the renders before JPEG
    python docs/zoo/analyses/wind.py flag   [N]        # the wind's posterior mean given the rasterised flag alone
    python docs/zoo/analyses/wind.py cnn    [STEPS]    # a CNN trained on the recorded wind, read from frame 0
    python docs/zoo/analyses/wind.py misses RUN...     # a scored run's misses by how much flag frame 0 shows

"Miss": the distance in px between an estimate of the frame-7 displacement and the recorded one
(``misses``: between the measured displacement of prediction and truth, as `evaluate` reports it).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_tools import synth
from ssagan_dist import metrics
from ssagan_dist.data import ClipLoader

SIZE, FRAMES = 32, 8
ZOO_DIR = Path(os.environ.get("ZOO_DIR", "/tmp/ssagan_zoo"))


def stored_clips(split: str, limit: int | None = None) -> tuple[list[str], torch.Tensor]:
    """Keys and (N, 3, T, H, W) clips in [-1, 1] of the zoo's sky split."""
    keys, videos = [], []
    for batch in ClipLoader(str(ZOO_DIR / "sky" / split), 64, shuffle=False, drop_last=False).every_clip():
        valid = batch["valid"]
        videos.append(batch["video"][valid].float())
        keys += [k for k, ok in zip(batch["key"], valid.tolist()) if ok]
    n = len(keys) if limit is None else limit
    return keys[:n], torch.cat(videos)[:n]


def as_clip(u8: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(u8).float().div(127.5).sub(1).permute(3, 0, 1, 2)


def shifted(frame: torch.Tensor, wind: tuple[float, float], still: torch.Tensor, mode: str) -> torch.Tensor:
    """(3, H, W) frame moved by wind * t for every t, the ``still`` (H, W) pixels held: (3, T, H, W)."""
    t = torch.arange(FRAMES, dtype=torch.float32)
    flow = torch.zeros(FRAMES, SIZE, SIZE, 2)
    flow[..., 0] = (wind[0] * t)[:, None, None] * 2 / (SIZE - 1)
    flow[..., 1] = (wind[1] * t)[:, None, None] * 2 / (SIZE - 1)
    flow[:, still] = 0
    axis = torch.linspace(-1, 1, SIZE)
    identity = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)
    return F.grid_sample(frame.expand(FRAMES, -1, -1, -1), identity - flow, mode=mode,
                         padding_mode="border", align_corners=True).transpose(0, 1)


def unseen_mask(params: dict, foreground: np.ndarray) -> torch.Tensor:
    """(T, H, W): sky pixels whose cloud was not in view at frame 0 (as the seen-only oracle rounds it)."""
    t = np.arange(FRAMES)[:, None, None]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    sx = np.rint(xx[None] - params["wind"][0] * t).astype(int)
    sy = np.rint(yy[None] - params["wind"][1] * t).astype(int)
    inside = (sx >= 0) & (sx < SIZE) & (sy >= 0) & (sy < SIZE)
    unseen = ~inside
    unseen[inside] = foreground[sy[inside], sx[inside]]
    return torch.from_numpy(unseen & ~foreground[None])


def warp(limit: int, source: str) -> None:
    keys, stored = stored_clips("val", limit)
    rows: dict[str, list[torch.Tensor]] = {}
    truths = []
    for i, key in enumerate(keys):
        params = synth.clip_params(*synth.parse_key(key), SIZE, FRAMES)
        truth = as_clip(synth.render_clip(params, SIZE, FRAMES)) if source == "render" else stored[i]
        seen = as_clip(synth.render_clip(params, SIZE, FRAMES, guess_unseen=True))
        drift = as_clip(synth.render_clip(params, SIZE, FRAMES, freeze_motion=True))
        cloudless = as_clip(synth.render_clip({**params, "coverage": 5.0}, SIZE, FRAMES))  # no density anywhere
        foreground = synth._foreground(params, SIZE)
        fg, unseen = torch.from_numpy(foreground), unseen_mask(params, foreground)

        def fill(clip: torch.Tensor) -> torch.Tensor:  # the oracle's own values where the photo shows no cloud
            clip = torch.where(unseen[None], seen, clip.clamp(-1, 1))
            clip[:, :, fg] = seen[:, :, fg]
            return clip

        frame0, change = truth[:, 0], drift - drift[:, :1]
        rows.setdefault("true-motion oracle", []).append(as_clip(synth.render_clip(params, SIZE, FRAMES, freeze_drift=True)))
        rows.setdefault("seen-only oracle", []).append(seen)
        for mode in ("bilinear", "bicubic", "nearest"):
            rows.setdefault(f"frame 0 moved, {mode}", []).append(fill(shifted(frame0, params["wind"], fg, mode) + change))
        layer = frame0 - cloudless[:, 0]
        for mode in ("bilinear", "nearest"):
            rows.setdefault(f"cloud layer moved, {mode}", []).append(fill(shifted(layer, params["wind"], fg, mode) + cloudless))
        truths.append(truth)
    truth = torch.stack(truths)
    print(f"{len(keys)} validation clips, {'renders before JPEG' if source == 'render' else 'stored clips'}; frames 1-7")
    for name, clips in rows.items():
        scores = metrics.clip_metrics(torch.stack(clips), truth)
        print(f"  {name:28s} PSNR {scores['psnr'].mean():.2f} dB  SSIM {scores['ssim'].mean():.4f}")


def flag(limit: int, candidates: int = 40000) -> None:
    rng = np.random.default_rng(0)  # the generator's prior (synth._clip_params)
    sign = rng.choice([-1.0, 1.0], candidates)
    angle = rng.uniform(-0.35, 0.35, candidates)
    travel = rng.uniform(0.15, 0.45, candidates)
    speed = travel * SIZE / (FRAMES - 1)
    vx, vy = sign * speed * np.cos(angle), speed * np.sin(angle)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    misses, flag_pixels, kept = [], [], []
    keys, _ = stored_clips("val", limit)
    for i, key in enumerate(keys):
        params = synth.clip_params(*synth.parse_key(key), SIZE, FRAMES)
        ground, _, flag_mask = synth._foreground_layers(params, SIZE)
        heights = params["skyline"]
        roof_x = int(np.argmax(heights))
        top = max(0, SIZE - int(heights[roof_x]) - max(2, SIZE // 8))
        # every candidate's flag, drawn as synth._foreground_layers draws it, in a window around the pole
        r0, r1, c0, c1 = max(0, top - 10), min(SIZE, top + 12), max(0, roof_x - 10), min(SIZE, roof_x + 11)
        assert flag_mask.sum() == flag_mask[r0:r1, c0:c1].sum()
        y, x = yy[r0:r1, c0:c1], xx[r0:r1, c0:c1]
        length = (SIZE * (0.08 + 0.5 * (travel - 0.15)))[:, None, None]
        thick = max(1.0, SIZE / 20)
        along = (x[None] - roof_x) * np.sign(vx)[:, None, None]
        across = y[None] - (top + thick / 2 + along * (vy / (np.abs(vx) + 1e-6))[:, None, None])
        drawn = (along >= 1) & (along <= length) & (np.abs(across) <= thick * (1 - along / (length + 1)) + 0.5)
        match = ((drawn & ~ground[r0:r1, c0:c1][None]) == flag_mask[r0:r1, c0:c1][None]).all(axis=(1, 2))
        if not match.any():  # the prior covers every clip's own wind: no match means the flag's drawing here is stale
            raise SystemExit(f"{key}: no candidate draws the clip's flag; does this match synth._foreground_layers?")
        estimate = np.array([vx[match].mean(), vy[match].mean()]) * (FRAMES - 1)
        misses.append(np.linalg.norm(estimate - np.array(params["wind"]) * (FRAMES - 1)))
        flag_pixels.append(int(flag_mask.sum()))
        kept.append(int(match.sum()))
        if i % 32 == 0:
            print(f"  clip {i}/{len(keys)}", flush=True)
    misses, flag_pixels = np.array(misses), np.array(flag_pixels)
    print(f"{len(keys)} validation clips, {candidates} candidates, kept per clip: median {np.median(kept):.0f}")
    for name, rows in (("all", flag_pixels >= 0), ("no flag in view", flag_pixels == 0), ("a flag in view", flag_pixels > 0)):
        print(f"  {name:16s} {rows.sum():4d} clips: miss median {np.median(misses[rows]):.2f} px, mean {misses[rows].mean():.2f}")


def cnn(steps: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)

    def frames0_and_winds(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        keys, clips = stored_clips(split)
        winds = [synth.clip_params(*synth.parse_key(k), SIZE, FRAMES)["wind"] for k in keys]
        return clips[:, :, 0], torch.tensor(winds, dtype=torch.float32) * (FRAMES - 1)

    train_x, train_y = frames0_and_winds("train")
    val_x, val_y = frames0_and_winds("val")
    nn = torch.nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

    axis = torch.linspace(-1, 1, SIZE)
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="xy"))[None]  # where each pixel is
    net = nn.Sequential(block(5, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2), block(64, 128), nn.MaxPool2d(2),
                        block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    with_coords = lambda x: torch.cat([x, coords.expand(len(x), -1, -1, -1)], 1)  # noqa: E731
    start = time.time()
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(train_x), (64,))
        loss = ((net(with_coords(train_x[batch])) - train_y[batch]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % 500 == 0 or step == steps:
            with torch.no_grad():
                miss = (net.eval()(with_coords(val_x)) - val_y).norm(dim=1)
            net.train()
            print(f"  step {step}: validation miss median {miss.median():.2f} px, mean {miss.mean():.2f} "
                  f"({time.time() - start:.0f} s)", flush=True)


def misses(runs: list[str]) -> None:
    for run in runs:
        per_clip = json.loads((ZOO_DIR / "results" / f"{run}.json").read_text())["per_clip"]
        miss = np.hypot(np.subtract(per_clip["pred_dx"], per_clip["true_dx"]), np.subtract(per_clip["pred_dy"], per_clip["true_dy"]))
        gap = np.subtract(per_clip["psnr"], per_clip["oracle_seen_psnr"])
        shown = np.array([synth._foreground_layers(synth.clip_params(*synth.parse_key(k), SIZE, FRAMES), SIZE)[2].sum()
                          for k in per_clip["key"]])
        print(f"{run}: {len(shown)} test clips")
        for name, rows in (("no flag in view", shown == 0), ("a flag in view", shown > 0)):
            print(f"  {name:16s} {rows.sum():4d} clips: miss median {np.median(miss[rows]):.2f} px, "
                  f"mean {miss[rows].mean():.2f}; PSNR − seen-only oracle {gap[rows].mean():+.2f} dB")


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "warp":
        warp(int(args[0]) if args else 256, args[1] if len(args) > 1 else "stored")
    elif what == "flag":
        flag(int(args[0]) if args else 256)
    elif what == "cnn":
        cnn(int(args[0]) if args else 3000)
    elif what == "misses":
        misses(args)
    else:
        sys.exit(__doc__)
