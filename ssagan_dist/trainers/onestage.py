"""One-stage image-to-video GAN: SSA-GAN, MD-GAN Stage I, SSA-GAN (a) (SSA-GAN eq. 7).

D minimises L_D = -L_adv (BCE on logits: real clips -> 1, G(X) -> 0), ``n_critic`` times per
G update; G minimises the non-saturating adversarial loss plus λ_con·L1(Y, G(X)). X is the
clip's first frame repeated T times.
"""

from __future__ import annotations

import torch

from ssagan_dist import losses
from ssagan_dist.models.layers import repeat_frame
from ssagan_dist.trainers.base import Batch, GANTrainer, Stats


def static_input(batch: Batch) -> torch.Tensor:
    """X: frame 0 of ``batch["video"]`` repeated over the clip's T frames."""
    video = batch["video"]
    return repeat_frame(video[:, :, 0], video.shape[2])


class OneStageTrainer(GANTrainer):
    loss_fields = ("lambda_con",)

    def d_loss(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        y = batch["video"]
        with torch.no_grad():
            fake = self.nets["G"](static_input(batch))
        real_logits, _ = self.wrapped["D"](y)
        fake_logits, _ = self.wrapped["D"](fake)
        loss = losses.adversarial_d_loss(real_logits, fake_logits)
        return loss, {"d_loss": loss.detach(), "d_real": torch.sigmoid(real_logits).mean().detach(),
                      "d_fake": torch.sigmoid(fake_logits).mean().detach()}

    def g_loss(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        y = batch["video"]
        fake = self.wrapped["G"](static_input(batch))
        fake_logits, _ = self.nets["D"](fake)
        loss, adv, con = losses.generator_objective(fake_logits, y, fake, self.loss_cfg.lambda_con)
        return loss, {"g_loss": loss.detach(), "g_adv": adv.detach(), "g_con": con.detach()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        return self.nets["G"].eval()(static_input(batch))  # run_step puts it back in train mode
