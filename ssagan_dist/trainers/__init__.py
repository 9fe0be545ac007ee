"""Per-family GAN update logic; see ``base.py`` for the contract with the training loop.

``TRAINERS`` maps the family a model registers with (``models.registry``) to its class;
``ssagan_dist.experiment`` joins the two.
"""

from ssagan_dist.trainers.base import Batch, GANTrainer, Phase, Pretrained, Stats, unwrap
from ssagan_dist.trainers.noise import NoiseGANTrainer
from ssagan_dist.trainers.onestage import OneStageTrainer
from ssagan_dist.trainers.pix2pix import Pix2PixTrainer
from ssagan_dist.trainers.refine import RefineTrainer
from ssagan_dist.trainers.wgan_gp import WGANGPTrainer

TRAINERS: dict[str, type[GANTrainer]] = {
    "onestage": OneStageTrainer,
    "refine": RefineTrainer,
    "wgan_gp": WGANGPTrainer,
    "noise": NoiseGANTrainer,
    "pix2pix": Pix2PixTrainer,
}

__all__ = ["Batch", "GANTrainer", "Phase", "Pretrained", "Stats", "TRAINERS", "unwrap"]
