"""BCE GAN from noise: the 3D-CNN video GAN, the ConvLSTM GAN and the 2D DCGAN (Zhang 2019).

D phase (``optim.n_critic`` updates): -E[log D(Y)] - E[log(1 - D(G(z)))].
G phase: the non-saturating -E[log D(G(z))], plus ``loss.lambda_con``·L1(Y, G(z, X)) only when
G is conditioned on the input frame X (the ConvLSTM GAN): only then is there a real clip that
G's output should equal; for a pure-noise G an L1 to an arbitrary real clip would pull every
sample toward the batch mean.

Inputs: z ~ N(0, I) fresh per update; the ConvLSTM G also takes frame 0 of the clip
(``batch["video"][:, :, 0]``). The DCGAN is the T = 1 case: its "real clip" is one frame drawn
uniformly from each clip (the frames of a time-lapse are all images of the scene), and
``predict`` repeats its image over the data's T frames (a still clip) so validation compares
shapes like with any other model. The video models must make clips of the data's
(C, T, H, W); a mismatch raises naming ``model.args``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssagan_dist import losses
from ssagan_dist.trainers.base import Batch, GANTrainer, Stats


def check_clip(video: Tensor, generator: nn.Module, *, frames: bool = True) -> None:
    """Raise if the data's clips are not the (C, T, H, W) the generator makes."""
    want = (generator.channels, generator.frames if frames else video.shape[2], generator.size, generator.size)
    got = tuple(video.shape[1:])
    if video.dim() != 5 or got != want:
        raise ValueError(f"batch['video'] holds clips of shape {tuple(video.shape)} (N, C, T, H, W) but the "
                         f"model makes (C, T, H, W) = {want}; set model.args (channels, frames, size) to match "
                         "the data")


class NoiseGANTrainer(GANTrainer):
    @classmethod
    def fields_read(cls, nets):
        conditioned = getattr(nets["G"], "conditioning", "none") == "image"
        return {**super().fields_read(nets), "loss": ("lambda_con",) if conditioned else ()}

    def __init__(self, nets, optim, loss, device="cpu", **sections):
        super().__init__(nets, optim, loss, device, **sections)
        self.image_conditioned = getattr(self.nets["G"], "conditioning", "none") == "image"

    # -- inputs --------------------------------------------------------------------------
    def real_clip(self, batch: Batch) -> Tensor:
        video, g = batch["video"], self.nets["G"]
        if g.frames == 1 and video.dim() == 5 and video.shape[2] > 1:
            pick = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
            video = video[torch.arange(video.shape[0], device=video.device), :, pick].unsqueeze(2)
        check_clip(video, g)
        return video

    def generator_inputs(self, batch: Batch) -> tuple[Tensor, ...]:
        video, g = batch["video"], self.nets["G"]
        z = torch.randn(video.shape[0], g.z_dim, device=video.device)
        return (z, video[:, :, 0]) if self.image_conditioned else (z,)

    # -- phases ------------------------------------------------------------------------------
    def d_loss(self, batch: Batch) -> tuple[Tensor, Stats]:
        real = self.real_clip(batch)
        with torch.no_grad():
            fake = self.nets["G"](*self.generator_inputs(batch))
        d = self.wrapped["D"]
        loss = losses.adversarial_d_loss(d(real), d(fake))
        return loss, {"d_loss": loss.detach()}

    def g_loss(self, batch: Batch) -> tuple[Tensor, Stats]:
        fake = self.wrapped["G"](*self.generator_inputs(batch))
        adv = losses.adversarial_g_loss(self.nets["D"](fake))
        stats = {"g_adv": adv.detach()}
        loss = adv
        if self.image_conditioned:
            con = losses.content_loss(self.real_clip(batch), fake)
            loss = adv + self.loss_cfg.lambda_con * con
            stats["g_con"] = con.detach()
        stats["g_loss"] = loss.detach()
        return loss, stats

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        g = self.nets["G"].eval()
        fake = g(*self.generator_inputs(batch))
        frames = batch["video"].shape[2]
        if fake.shape[2] == 1 and frames > 1:
            fake = fake.expand(-1, -1, frames, -1, -1)  # the DCGAN image as a still clip
        return fake
