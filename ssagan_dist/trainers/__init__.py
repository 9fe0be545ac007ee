"""Per-family GAN update logic; see ``base.py`` for the contract with the training loop."""

from ssagan_dist.trainers.base import Batch, GANTrainer, Phase, init_weights, unwrap

__all__ = ["Batch", "GANTrainer", "Phase", "init_weights", "unwrap"]
