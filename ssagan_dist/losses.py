"""GAN objectives of the papers the models implement (docs/models.md: Objectives, References).
Every function returns a scalar tensor.

Conventions: discriminators return logits (no sigmoid; BCE-with-logits is the stable form of
SSA-GAN eq. 4), critics return unbounded scores; the weights (λ_con, λ_rank, λ_gp, λ_mse) are applied
by the trainer, never here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


# -- adversarial (SSA-GAN eq. 4 / 6, MD-GAN eq. 1) -------------------------------------------
def adversarial_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D = -L_adv = -E[log D(Y)] - E[log(1 - D(G(X)))], on logits."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def adversarial_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: -E[log D(G(X))]."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def content_loss(y: Tensor, y_hat: Tensor) -> Tensor:
    """Pixel L1, E|Y - G(X)| (eq. 5), averaged over every element."""
    return F.l1_loss(y_hat, y)


def generator_objective(fake_logits: Tensor, y: Tensor, y_hat: Tensor,
                        lambda_con: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """SSA-GAN eq. 7 / MD-GAN Stage I: L_G = L_adv + λ_con·L_con, L_adv in its non-saturating form.

    Returns (L_G, L_adv, L_con) so trainers can log the parts.
    """
    adv, con = adversarial_g_loss(fake_logits), content_loss(y, y_hat)
    return adv + lambda_con * con, adv, con


def pixel_mse(y: Tensor, y_hat: Tensor) -> Tensor:
    """Pixel mean-square error, HRVGAN's E||Y - G(z, c)||^2 averaged over every element."""
    return F.mse_loss(y_hat, y)


# -- WGAN-GP (HRVGAN) -------------------------------------------------------------------------
def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """The critic minimises E[C(fake)] - E[C(real)] (the gradient penalty is added separately)."""
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    return -fake_scores.mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """E[(||∇_x̂ C(x̂)||_2 - 1)^2] at x̂ = ε·real + (1-ε)·fake, one ε ~ U[0,1) per sample.

    ``critic`` maps a batch to scores (close over labels for a conditional critic). The graph is
    kept (create_graph=True) so the penalty trains the critic; multiply by λ_gp in the caller.
    """
    real, fake = real.detach(), fake.detach()
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


# -- Gram-matrix adversarial ranking loss (MD-GAN Stage II) ----------------------------------
def gram_matrix(features: Tensor) -> Tensor:
    """g(Y; l) = 1/(M·S·N) Σ_n Ĥ_n Ĥ_nᵀ for features N×C×T×H×W reshaped to N×M×S, M=C·T, S=H·W.

    One M×M matrix for the whole batch (MD-GAN eq. 4).
    """
    if features.dim() != 5:
        raise ValueError(f"gram_matrix expects N×C×T×H×W features, got shape {tuple(features.shape)}")
    n, c, t, h, w = features.shape
    m, s = c * t, h * w
    flat = features.reshape(n, m, s)
    return torch.einsum("nis,njs->ij", flat, flat) / (m * s * n)


def ranking_loss(feats_y1: Sequence[Tensor], feats_y: Sequence[Tensor], feats_y2: Sequence[Tensor]) -> Tensor:
    """L_rank(Y1, Y, Y2) = Σ_l -log( e^{-d(Y2,Y)} / (e^{-d(Y2,Y)} + e^{-d(Y2,Y1)}) ), d = ||g - g||_1.

    Arguments are per-layer D2 features of the Stage-I output Y1, the real clip Y and the refined
    clip Y2. G2 minimises it (Y2 nearer Y than Y1 in Gram space); D2 maximises it. Each term is
    computed as a two-way log-softmax (stable for large distances).
    """
    if not (len(feats_y1) == len(feats_y) == len(feats_y2)) or not feats_y:
        raise ValueError("ranking_loss needs the same non-zero number of feature layers for Y1, Y and Y2")
    total = feats_y[0].new_zeros(())
    for h1, h, h2 in zip(feats_y1, feats_y, feats_y2):
        g1, g, g2 = gram_matrix(h1), gram_matrix(h), gram_matrix(h2)
        d_real = (g2 - g).abs().sum()
        d_stage1 = (g2 - g1).abs().sum()
        logits = torch.stack([-d_real, -d_stage1])
        total = total - torch.log_softmax(logits, dim=0)[0]
    return total
