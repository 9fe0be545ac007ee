"""Spatial self-attention of SSA-GAN (seed 000 §3.2, eqs. 1-3), on fused attention kernels.

For x of shape N×C×T×H×W, 1×1×1 convs give x1, x2 (Ĉ channels) and x3 (C channels); each
of the H·W positions attends over all positions with features (channel, time) folded into one
vector, A = softmax(x̂1 x̂2) is N×HW×HW, o = x̂3 Aᵀ and y = γ·o + x with γ initialised to 0.

That is one-head scaled-dot-product attention with queries/keys/values = positions and
d = Ĉ·T, so ``F.scaled_dot_product_attention`` computes it without ever holding the HW×HW
matrix. PyTorch silently falls back to the materialising math kernel when an input's last
dimension is strided, when q/k and v differ in width (CPU flash) or when the width is not a
multiple of 8 (CUDA memory-efficient kernel alignment), so ``_to_tokens`` makes each operand
contiguous and ``attend`` zero-pads q, k and v to one common width, a multiple of 8: zero
features add nothing to the dot products and zero value columns are sliced off the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _to_tokens(x: Tensor) -> Tensor:
    """N×C×T×H×W -> N×1×(HW)×(CT), contiguous: one head, positions as tokens, (c, t) as features."""
    n, c, t, h, w = x.shape
    return x.reshape(n, c * t, h * w).transpose(1, 2).contiguous().unsqueeze(1)


def _pad_features(x: Tensor, width: int) -> Tensor:
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


class SpatialSelfAttention(nn.Module):
    """y = γ · SpatialAttention(x) + x over the H·W positions (seed 000 eqs. 1-3).

    ``reduced_channels`` is Ĉ, the width of the query/key convs (the paper uses Ĉ = C).
    ``scaled=True`` adds the usual 1/√(Ĉ·T) logit scaling; the paper has none.
    """

    def __init__(self, channels: int, reduced_channels: int | None = None, scaled: bool = False):
        super().__init__()
        reduced = reduced_channels or channels
        self.scaled = scaled
        self.query = nn.Conv3d(channels, reduced, kernel_size=1)
        self.key = nn.Conv3d(channels, reduced, kernel_size=1)
        self.value = nn.Conv3d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def attend(self, x: Tensor) -> Tensor:
        """o of eq. 2 (before γ and the residual), shape N×C×T×H×W."""
        n, c, t, h, w = x.shape
        q, k, v = _to_tokens(self.query(x)), _to_tokens(self.key(x)), _to_tokens(self.value(x))
        qk_width, v_width = q.shape[-1], v.shape[-1]
        scale = qk_width ** -0.5 if self.scaled else 1.0
        width = -(-max(qk_width, v_width) // 8) * 8
        q, k, v = _pad_features(q, width), _pad_features(k, width), _pad_features(v, width)
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)  # N×1×HW×width
        return o[..., :v_width].squeeze(1).transpose(1, 2).reshape(n, c, t, h, w)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpatialSelfAttention expects N×C×T×H×W input, got shape {tuple(x.shape)}")
        return self.gamma * self.attend(x) + x

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"


def literal_spatial_attention(module: SpatialSelfAttention, x: Tensor) -> Tensor:
    """Eqs. 1-3 written out with bmm + softmax (materialises N×HW×HW): the reference for tests
    and the memory benchmark, never for training."""
    n, c, t, h, w = x.shape
    x1 = module.query(x).reshape(n, -1, h * w).transpose(1, 2)  # N×HW×ĈT
    x2 = module.key(x).reshape(n, -1, h * w)  # N×ĈT×HW
    x3 = module.value(x).reshape(n, c * t, h * w)  # N×CT×HW
    logits = torch.bmm(x1, x2)
    if module.scaled:
        logits = logits * x1.shape[-1] ** -0.5
    attention = torch.softmax(logits, dim=-1)  # row p: weights of output position p, sums to 1
    o = torch.bmm(x3, attention.transpose(1, 2)).reshape(n, c, t, h, w)
    return module.gamma * o + x
