"""Two-stage refinement: MD-GAN Stage II (Refine-Net) and SSA-GAN (b) (MD-GAN, arXiv:1709.07592, §3.2, Alg. 1).

A frozen Stage-I generator (``nets["G_stage1"]``, eval mode) turns the repeated first frame
into Y1; G2 (``nets["G"]``) refines it into Y2. With F_l the D2 features used for the Gram
matrices and L_rank the adversarial ranking loss on (Y1, Y, Y2):

- D2 minimises  L_D - λ_rank·L_rank   (BCE real/fake, and *maximises* the ranking loss),
  ``n_critic`` times per G2 update;
- G2 minimises  L_adv(non-saturating) + λ_rank·L_rank + λ_con·L1(Y, Y2).
"""

from __future__ import annotations

import torch
from torch import nn

from ssagan_dist import losses
from ssagan_dist.trainers.base import Batch, GANTrainer, Pretrained, Stats
from ssagan_dist.trainers.onestage import static_input


class RefineTrainer(GANTrainer):
    loss_fields = ("lambda_con", "lambda_rank")
    # G_stage1 is built from model.args.stage1_*: they must be the Stage-I run's own arguments, or
    # Stage II trains on a meaningless Y1.
    pretrained = (Pretrained("G_stage1", "stage1_checkpoint", what="Stage-I",
                             hint="give a Stage-I (mdgan_stage1) checkpoint trained at the same model.args "
                                  "size/frames/base_width",
                             same_args={"output": ("stage1_output", "direct"), "dropout": ("stage1_dropout", 0.0)}),)

    def __init__(self, nets: dict[str, nn.Module], *args, **kwargs):
        if "G_stage1" not in nets:
            raise ValueError("RefineTrainer needs nets['G_stage1'], the frozen Stage-I generator")
        super().__init__(nets, *args, **kwargs)

    @torch.no_grad()
    def stage1(self, batch: Batch) -> torch.Tensor:
        """Y1: the frozen Stage-I output (BatchNorm in eval mode, with its running statistics)."""
        return self.nets["G_stage1"].eval()(static_input(batch))

    def d_loss(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        y, y1 = batch["video"], self.stage1(batch)
        with torch.no_grad():
            y2 = self.nets["G"](y1)
        d = self.wrapped["D"]
        real_logits, feats_y = d(y)
        fake_logits, feats_y2 = d(y2)
        _, feats_y1 = d(y1)
        adv = losses.adversarial_d_loss(real_logits, fake_logits)
        rank = losses.ranking_loss(feats_y1, feats_y, feats_y2)
        loss = adv - self.loss_cfg.lambda_rank * rank
        return loss, {"d_loss": loss.detach(), "d_adv": adv.detach(), "d_rank": rank.detach(),
                      "d_real": torch.sigmoid(real_logits).mean().detach(),
                      "d_fake": torch.sigmoid(fake_logits).mean().detach()}

    def g_loss(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        y, y1 = batch["video"], self.stage1(batch)
        y2 = self.wrapped["G"](y1)
        d = self.nets["D"]
        fake_logits, feats_y2 = d(y2)
        with torch.no_grad():
            _, feats_y = d(y)
            _, feats_y1 = d(y1)
        objective, adv, con = losses.generator_objective(fake_logits, y, y2, self.loss_cfg.lambda_con)
        rank = losses.ranking_loss(feats_y1, feats_y, feats_y2)
        loss = objective + self.loss_cfg.lambda_rank * rank
        return loss, {"g_loss": loss.detach(), "g_adv": adv.detach(), "g_rank": rank.detach(), "g_con": con.detach()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        return self.nets["G"].eval()(self.stage1(batch))  # run_step puts it back in train mode
