"""WGAN-GP with a pixel MSE term: HRVGAN (arXiv:2008.09646).

Critic phase (``optim.n_critic`` updates):
    E[C(G(z, c), c)] - E[C(Y, c)] + λ_gp · E[(‖∇_x̂ C(x̂, c)‖₂ - 1)²]
Generator phase:
    -E[C(G(z, c), c)] + λ_mse · E‖Y - G(z, c)‖²

c is the real clip's class (``batch["label"]``), so G(z, c) is compared with a clip Y of its own
class; data without labels trains as a single class 0 (every ``label`` taken as 0). Each
update draws a fresh z ~ N(0, I).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssagan_dist import losses
from ssagan_dist.trainers.base import Batch, GANTrainer, Stats
from ssagan_dist.trainers.noise import check_clip


class WGANGPTrainer(GANTrainer):
    loss_fields = ("lambda_gp", "lambda_mse")

    def labels(self, batch: Batch) -> Tensor:
        video = batch["video"]
        label = batch.get("label")
        if label is None:
            return torch.zeros(video.shape[0], dtype=torch.long, device=video.device)
        classes = self.nets["G"].num_classes
        if label.dtype != torch.long or label.dim() != 1 or label.shape[0] != video.shape[0]:
            raise ValueError(f"batch['label'] must be int64 of shape ({video.shape[0]},), got {label.dtype} "
                             f"{tuple(label.shape)}")
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= classes):
            raise ValueError(f"batch['label'] holds classes {int(label.min())}..{int(label.max())} but the model has "
                             f"num_classes = {classes}; set model.args.num_classes")
        return label

    def generate(self, generator: nn.Module, labels: Tensor) -> Tensor:
        z = torch.randn(labels.shape[0], self.nets["G"].z_dim, device=labels.device)
        return generator(z, labels)

    def d_loss(self, batch: Batch) -> tuple[Tensor, Stats]:
        real, labels = batch["video"], self.labels(batch)
        check_clip(real, self.nets["G"])
        with torch.no_grad():
            fake = self.generate(self.nets["G"], labels)
        critic = self.wrapped["D"]
        wgan = losses.wgan_critic_loss(critic(real, labels), critic(fake, labels))
        gp = losses.gradient_penalty(lambda x: critic(x, labels), real, fake)
        loss = wgan + self.loss_cfg.lambda_gp * gp
        return loss, {"d_loss": loss.detach(), "d_gp": gp.detach(), "d_wasserstein": -wgan.detach()}

    def g_loss(self, batch: Batch) -> tuple[Tensor, Stats]:
        real, labels = batch["video"], self.labels(batch)
        fake = self.generate(self.wrapped["G"], labels)
        adv = losses.wgan_generator_loss(self.nets["D"](fake, labels))
        mse = losses.pixel_mse(real, fake)
        loss = adv + self.loss_cfg.lambda_mse * mse
        return loss, {"g_loss": loss.detach(), "g_adv": adv.detach(), "g_mse": mse.detach()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """G(z, c) for the batch's classes, in eval mode: (N, C, frames, size, size) like the data."""
        self.nets["G"].eval()
        return self.generate(self.nets["G"], self.labels(batch))
