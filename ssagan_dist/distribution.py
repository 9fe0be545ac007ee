"""How far a set of generated clips is from a set of real ones, with no downloaded weights.

For models that generate from noise (no ground-truth future to compare frame by frame):

- ``frechet_distance(a, b)``: the Fréchet distance between Gaussians fitted to the features
  that ``RandomVideoFeatures`` extracts from each set. The feature net is a small 3-D conv net
  with *random* weights from a fixed seed, never trained. This is **not FVD**: FVD uses an I3D
  network trained on Kinetics, which nothing here may download. Random conv features
  still respond to colour, texture and motion statistics, so the distance is 0 for identical
  sets and grows as one set drifts from the other; its absolute value means nothing outside
  this code, so it is only ever reported beside a floor and a reference computed the same way.
- ``mean_frame_change(clips)``: the mean absolute change between consecutive frames (pixels in
  [0, 1]): how much a set of clips moves, to compare generated motion with real motion.

Clips are (N, C, T, H, W) in [-1, 1], like everywhere in the pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

FEATURE_SEED = 0  # the feature net's weights: the same on every machine and in every run


class RandomVideoFeatures(nn.Module):
    """Three 3-D conv layers with random weights (seeded), then the per-channel mean and standard
    deviation over time and space: (N, C, T, H, W) -> (N, 2 * width)."""

    def __init__(self, channels: int = 3, width: int = 16, seed: int = FEATURE_SEED):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        shapes = [(width, channels, 3, 3, 3), (width, width, 3, 3, 3), (width, width, 3, 3, 3)]
        strides = [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
        self.strides = strides
        # He-normal weights for LeakyReLU: activations keep their scale through the layers.
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(s, generator=gen) * (2.0 / (s[1] * 27)) ** 0.5, requires_grad=False)
            for s in shapes)

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        if clips.dim() != 5:
            raise ValueError(f"expected (N, C, T, H, W) clips, got shape {tuple(clips.shape)}")
        x = clips.float()
        for w, stride in zip(self.weights, self.strides):
            x = nn.functional.leaky_relu(nn.functional.conv3d(x, w, stride=stride, padding=1), 0.2)
        x = x.flatten(2)
        return torch.cat([x.mean(2), x.std(2)], dim=1)


def features(clips: Tensor, net: RandomVideoFeatures | None = None, batch: int = 64) -> np.ndarray:
    """Feature rows (float64) of a set of clips."""
    net = net or RandomVideoFeatures(clips.shape[1])
    return torch.cat([net(clips[i:i + batch].cpu()) for i in range(0, len(clips), batch)]).double().numpy()


def psd_sqrt(m: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from
    rounding taken as 0)."""
    w, v = linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (rows = samples).

    tr (S_a S_b)^1/2 is taken as tr (S_a^1/2 S_b S_a^1/2)^1/2 (the same eigenvalues), whose roots
    are of symmetric PSD matrices: exact also where a covariance is singular (a set of one image
    repeated, say), where a general matrix root of S_a S_b is not."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, d) feature sets of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = psd_sqrt(s_a)
    trace_root = np.trace(psd_sqrt(root_a @ s_b @ root_a))
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)
    return max(distance, 0.0)  # the roots' rounding can leave a tiny negative value


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between the random-conv features of two sets of clips (not FVD: see above)."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the two sets hold clips of different shapes: {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    net = RandomVideoFeatures(a.shape[1])
    return frechet_from_features(features(a, net), features(b, net))


def mean_frame_change(clips: Tensor) -> float:
    """Mean |x_t+1 - x_t| over consecutive frames, pixels in [0, 1]."""
    if clips.dim() != 5 or clips.shape[2] < 2:
        raise ValueError(f"expected (N, C, T >= 2, H, W) clips, got shape {tuple(clips.shape)}")
    unit = (clips.double() + 1) / 2
    return float((unit[:, :, 1:] - unit[:, :, :-1]).abs().mean())
