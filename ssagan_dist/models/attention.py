"""Spatial self-attention of SSA-GAN (Horita & Yanai 2019, §3.2, eqs. 1-3; docs/models.md,
References), on fused attention kernels.

For x of shape N×C×T×H×W, 1×1×1 convs give x1, x2 (Ĉ channels) and x3 (C channels); each
of the H·W positions attends over all positions with features (channel, time) folded into one
vector, A = softmax(x̂1 x̂2) is N×HW×HW, o = x̂3 Aᵀ and y = γ·o + x with γ initialised to 0.

That is one-head scaled-dot-product attention with queries/keys/values = positions and
d = Ĉ·T. Two kernels compute it:

- ``sdpa``: ``F.scaled_dot_product_attention``, which never holds the HW×HW matrix. PyTorch
  silently falls back to the materialising math kernel when an input's last dimension is
  strided, when q/k and v differ in width (CPU flash) or when the width is not a multiple of 8
  (CUDA memory-efficient kernel alignment), so ``_to_tokens`` makes each operand contiguous and
  ``_sdpa`` zero-pads q, k and v to one common width, a multiple of 8: zero features add
  nothing to the dot products and zero value columns are sliced off the output.
- ``saved_probs``: ``SavedProbabilityAttention``, eqs. 1-3 as six plain matmuls (two forward,
  four backward, as the literal version) keeping only q, k, v and A for backward, softmax and
  its backward done in place. PyTorch's CPU flash-attention backward is slow when d is large
  (2-5x the matmuls at d = 256-1024, docs/performance.md); plain bmm runs at the BLAS rate for
  any d, and where HW is small next to d the HW×HW matrix costs little memory.

``kernel="auto"`` (the default) picks per call by ``SAVED_PROBS_RULE`` below; ``"sdpa"`` and
``"saved_probs"`` force one (config: ``perf.attention``, set by ``ssagan_dist.perf.apply``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

KERNELS = ("auto", "sdpa", "saved_probs")
# The auto rule: saved_probs for a CPU forward that will be backpropagated (training) in float32
# with d = Ĉ·T >= SAVED_PROBS_MIN_WIDTH and HW <= SAVED_PROBS_MAX_POSITIONS_PER_WIDTH · d, i.e.
# where the CPU flash backward is slow and the HW×HW matrix is at most that many times a
# projection's size. Everything else (CUDA, no-grad forwards, autocast, small d, many
# positions) takes SDPA, which is as fast there and holds no HW×HW matrix.
SAVED_PROBS_MIN_WIDTH = 256
SAVED_PROBS_MAX_POSITIONS_PER_WIDTH = 4


def _to_tokens(x: Tensor) -> Tensor:
    """N×C×T×H×W -> N×1×(HW)×(CT), contiguous: one head, positions as tokens, (c, t) as features."""
    n, c, t, h, w = x.shape
    return x.reshape(n, c * t, h * w).transpose(1, 2).contiguous().unsqueeze(1)


def _pad_features(x: Tensor, width: int) -> Tensor:
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


class SavedProbabilityAttention(torch.autograd.Function):
    """o = v · softmax(scale · qᵀ k)ᵀ for q, k: N×d×L and v: N×dv×L (channels-first, as the
    1×1×1 convs give them), o: N×dv×L. Forward: two bmm and an in-place softmax; saved: q, k, v
    and the probabilities P (one N×L×L buffer). Backward: four bmm, the softmax backward in
    place in the dP buffer (dS = P ⊙ (dP − rowsum(P ⊙ dP))). Same FLOPs as the literal eqs.,
    without the logits, the transposed copy and the extra gradient buffers autograd keeps there."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        probs = torch.bmm(q.transpose(1, 2), k)  # N×L×L logits, row i: query position i
        if scale != 1.0:
            probs.mul_(scale)
        torch.ops.aten._softmax.out(probs, -1, False, out=probs)  # in place: row-wise, elementwise
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return torch.bmm(v, probs.transpose(1, 2))

    @staticmethod
    @once_differentiable  # P is treated as data here: a double backward must fail, not be wrong
    def backward(ctx, grad_out: Tensor):
        q, k, v, probs = ctx.saved_tensors
        grad_out = grad_out.to(probs.dtype)
        grad_v = torch.bmm(grad_out, probs)
        grad_logits = torch.bmm(grad_out.transpose(1, 2), v)  # dP, N×L×L: the one buffer backward adds
        grad_logits.mul_(probs)
        grad_logits.addcmul_(probs, grad_logits.sum(-1, keepdim=True), value=-1)  # dS, in place
        if ctx.scale != 1.0:
            grad_logits.mul_(ctx.scale)
        grad_q = torch.bmm(k, grad_logits.transpose(1, 2))
        grad_k = torch.bmm(q, grad_logits)
        return grad_q, grad_k, grad_v, None


class SpatialSelfAttention(nn.Module):
    """y = γ · SpatialAttention(x) + x over the H·W positions (SSA-GAN eqs. 1-3).

    ``reduced_channels`` is Ĉ, the width of the query/key convs (the paper uses Ĉ = C).
    ``scaled=True`` adds the usual 1/√(Ĉ·T) logit scaling; the paper has none.
    ``kernel``: "auto", "sdpa" or "saved_probs" (module docstring); not part of the state dict.
    """

    def __init__(self, channels: int, reduced_channels: int | None = None, scaled: bool = False,
                 kernel: str = "auto"):
        super().__init__()
        reduced = reduced_channels or channels
        self.scaled = scaled
        self.kernel = kernel
        self.query = nn.Conv3d(channels, reduced, kernel_size=1)
        self.key = nn.Conv3d(channels, reduced, kernel_size=1)
        self.value = nn.Conv3d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(()))

    @property
    def kernel(self) -> str:
        return self._kernel

    @kernel.setter
    def kernel(self, kernel: str) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"SpatialSelfAttention kernel = {kernel!r}: must be one of {', '.join(KERNELS)}")
        self._kernel = kernel

    def kernel_for(self, q: Tensor, positions: int) -> str:
        """The kernel this call runs: ``self.kernel`` unless "auto", then the rule above."""
        if self.kernel != "auto":
            return self.kernel
        width = q.shape[1] * q.shape[2]
        training_cpu_fp32 = (q.device.type == "cpu" and q.requires_grad and q.dtype == torch.float32
                             and not torch.is_autocast_enabled("cpu"))
        large_width = width >= SAVED_PROBS_MIN_WIDTH and positions <= SAVED_PROBS_MAX_POSITIONS_PER_WIDTH * width
        return "saved_probs" if training_cpu_fp32 and large_width else "sdpa"

    def attend(self, x: Tensor) -> Tensor:
        """o of eq. 2 (before γ and the residual), shape N×C×T×H×W."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        qk_width = q.shape[1] * q.shape[2]
        scale = qk_width ** -0.5 if self.scaled else 1.0
        if self.kernel_for(q, x.shape[3] * x.shape[4]) == "sdpa":
            return self._sdpa(q, k, v, scale)
        n, c, t, h, w = x.shape
        if torch.is_autocast_enabled(x.device.type):  # keep A in float32 (bf16 logits are too coarse)
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast(x.device.type, enabled=False):
            o = SavedProbabilityAttention.apply(q.reshape(n, qk_width, h * w), k.reshape(n, qk_width, h * w),
                                                v.reshape(n, c * t, h * w), scale)
        return o.reshape(n, c, t, h, w)

    @staticmethod
    def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        n, c, t, h, w = v.shape
        q, k, v = _to_tokens(q), _to_tokens(k), _to_tokens(v)
        qk_width, v_width = q.shape[-1], v.shape[-1]
        width = -(-max(qk_width, v_width) // 8) * 8
        q, k, v = _pad_features(q, width), _pad_features(k, width), _pad_features(v, width)
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)  # N×1×HW×width
        return o[..., :v_width].squeeze(1).transpose(1, 2).reshape(n, c, t, h, w)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpatialSelfAttention expects N×C×T×H×W input, got shape {tuple(x.shape)}")
        return self.gamma * self.attend(x) + x

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}, kernel={self.kernel!r}"


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
