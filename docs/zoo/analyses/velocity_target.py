"""The flow head's global velocity supervised by the displacement measured on the true clip (a probe).

docs/zoo.md, "How the flow recipes were chosen": the zoo's mdgan_stage1 recipe (with its moving
average of G) trained in-process, without Ray, on the zoo's sky training split (``ZOO_DIR``, default
/tmp/ssagan_zoo), validated every 250 G updates on its validation split, with WEIGHT · |G's global
velocity − the displacement ``ssagan_dist.motion.displacement`` measures on the real clip| (px at
the last frame, L1) added to G's loss. ``READOUT=mlp_res``: the linear velocity readout plus a
2-layer MLP correction that starts at zero. Tried on validation only; not adopted.

    SEED=0 READOUT=mlp_res python docs/zoo/analyses/velocity_target.py 1.0 out.json
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
from torch import nn

from ssagan_dist import experiment, motion, scoring
from ssagan_dist.data import ClipLoader
from ssagan_dist.models import layers, unet3d
from ssagan_dist.train import BatchStream, _set_determinism
from ssagan_dist.trainers.onestage import OneStageTrainer


class ResVelocity(nn.Module):
    """The linear readout of ``layers.GlobalVelocity``, plus an MLP correction (zero last layer)."""

    def __init__(self, widths):
        super().__init__()
        n = 2 * sum(widths)
        self.linear = nn.Linear(n, 2)
        self.hidden = nn.Linear(n, 64)
        self.correction = nn.Linear(64, 2)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, maps):
        pooled = torch.cat([torch.cat([m.flatten(2).mean(-1), m.flatten(2).amax(-1)], dim=1) for m in maps], dim=1)
        return self.linear(pooled) + self.correction(nn.functional.leaky_relu(self.hidden(pooled), 0.2))


def main(weight: float, out: str) -> None:
    torch.set_num_threads(1)
    zoo_dir = os.environ.get("ZOO_DIR", "/tmp/ssagan_zoo")
    seed, steps = int(os.environ.get("SEED", "0")), int(os.environ.get("STEPS", "3000"))
    if os.environ.get("READOUT") == "mlp_res":
        layers.GlobalVelocity = unet3d.GlobalVelocity = ResVelocity
    cfg = experiment.load_config("zoo/mdgan_stage1", [f"loop.seed={seed}"])
    _set_determinism(cfg)
    trainer = experiment.build_trainer(cfg)
    captured = {}
    trainer.nets["G"].velocity.register_forward_hook(lambda module, inputs, output: captured.__setitem__("v", output))
    plain_g_loss = OneStageTrainer.g_loss

    def g_loss(self, batch):
        loss, stats = plain_g_loss(self, batch)
        real = batch["video"]
        with torch.no_grad():
            target = motion.displacement(real)[:, -1].to(real.dtype)  # (N, 2) px at the last frame
        velocity = captured["v"] * (real.shape[-1] - 1) / 2  # grid units over the clip -> px at the last frame
        miss = (velocity - target).abs().sum(1).mean()
        stats["g_vel"] = miss.detach()
        return loss + weight * miss, stats

    OneStageTrainer.g_loss = g_loss
    train = ClipLoader(f"{zoo_dir}/sky/train", 16, seed=seed, shuffle=True, processes=1)
    val = ClipLoader(f"{zoo_dir}/sky/val", 16, shuffle=False, drop_last=False)
    batches = BatchStream(train)
    log, start = [], time.time()
    for step in range(1, steps + 1):
        stats = trainer.run_step(batches)
        if step % 250 == 0:
            with trainer.generator_weights():
                scores, _ = scoring.score(trainer, val, 8, "cpu")
            row = {k: scores[k] for k in ("psnr", "ssim", "direction_agreement", "pred_displacement", "true_displacement")}
            row.update(step=step, seconds=round(time.time() - start), g_vel=float(stats["g_vel"]))
            log.append(row)
            print(json.dumps(row), flush=True)
    with open(out, "w") as f:
        json.dump(log, f)


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2])
