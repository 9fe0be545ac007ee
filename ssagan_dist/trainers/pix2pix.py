"""pix2pix on consecutive frames, rolled out autoregressively (Zhang 2019 §IV).

Each update samples one pair (x, y) = (frame t, frame t+1) per clip, t uniform in 0..T-2.
D phase (``optim.n_critic`` updates): ½·BCE(D(x, y) → real, D(x, G(x)) → fake); pix2pix halves
D's objective to slow D relative to G. G phase: -log D(x, G(x)) + λ·|y - G(x)|₁ with
λ = ``loss.lambda_con`` (pix2pix used λ = 100; the default LossConfig's 1.0 is SSA-GAN's, so set
``loss.lambda_con=100`` to train as the paper did).
``predict``: frame 0 of the clip, then T-1 frames each predicted from the one before.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssagan_dist import losses
from ssagan_dist.trainers.base import Batch, GANTrainer, Stats
from ssagan_dist.trainers.noise import check_clip


class Pix2PixTrainer(GANTrainer):
    loss_fields = ("lambda_con",)

    def pairs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        video = batch["video"]
        check_clip(video, self.nets["G"], frames=False)
        n, frames = video.shape[0], video.shape[2]
        if frames < 2:
            raise ValueError(f"pix2pix trains on frame pairs: batch['video'] has {frames} frame(s) per clip")
        t = torch.randint(frames - 1, (n,), device=video.device)
        rows = torch.arange(n, device=video.device)
        return video[rows, :, t], video[rows, :, t + 1]

    def d_loss(self, batch: Batch) -> tuple[Tensor, Stats]:
        frame, next_frame = self.pairs(batch)
        with torch.no_grad():
            predicted = self.nets["G"](frame)
        d = self.wrapped["D"]
        loss = 0.5 * losses.adversarial_d_loss(d(frame, next_frame), d(frame, predicted))
        return loss, {"d_loss": loss.detach()}

    def g_loss(self, batch: Batch) -> tuple[Tensor, Stats]:
        frame, next_frame = self.pairs(batch)
        predicted = self.wrapped["G"](frame)
        adv = losses.adversarial_g_loss(self.nets["D"](frame, predicted))
        con = losses.content_loss(next_frame, predicted)
        loss = adv + self.loss_cfg.lambda_con * con
        return loss, {"g_loss": loss.detach(), "g_adv": adv.detach(), "g_con": con.detach()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        video = batch["video"]
        check_clip(video, self.nets["G"], frames=False)
        return self.nets["G"].eval().rollout(video[:, :, 0], video.shape[2])
