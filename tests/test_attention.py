import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ssagan_dist.models.attention import SpatialSelfAttention, literal_spatial_attention
from ssagan_dist.bench.attention import graph_node_names

SHAPES = [  # (N, C, T, H, W, reduced_channels, scaled)
    (2, 4, 3, 5, 6, None, False),
    (1, 8, 4, 8, 8, None, False),
    (3, 6, 2, 4, 4, 2, False),  # Ĉ < C: q/k zero-padded to the value width
    (2, 3, 2, 3, 5, 5, True),  # Ĉ > C: v zero-padded, output sliced
    (2, 16, 1, 1, 1, None, False),  # the innermost (conv6) shape: one position
]


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _module(c: int, reduced, scaled: bool, seed: int) -> SpatialSelfAttention:
    torch.manual_seed(seed)
    m = SpatialSelfAttention(c, reduced, scaled=scaled)
    with torch.no_grad():
        m.gamma.fill_(0.7)  # γ = 0 at init would hide the attention path
    return m


def test_parameters_and_init():
    m = SpatialSelfAttention(8)
    assert {name for name, _ in m.named_children()} == {"query", "key", "value"}
    assert all(isinstance(getattr(m, k), torch.nn.Conv3d) and getattr(m, k).kernel_size == (1, 1, 1)
               for k in ("query", "key", "value"))
    assert m.gamma.shape == () and m.gamma.item() == 0.0
    x = torch.randn(2, 8, 2, 4, 4)
    torch.testing.assert_close(m(x), x)  # γ = 0: identity at init


@pytest.mark.parametrize("n,c,t,h,w,reduced,scaled", SHAPES)
def test_fused_equals_literal_outputs_and_grads(n, c, t, h, w, reduced, scaled):
    fused, literal = _module(c, reduced, scaled, 0), _module(c, reduced, scaled, 0)
    x = torch.randn(n, c, t, h, w, generator=torch.Generator().manual_seed(1))
    x_f, x_l = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_f, y_l = fused(x_f), literal_spatial_attention(literal, x_l)
    assert _max_rel_err(y_f, y_l) < 1e-5
    upstream = torch.randn_like(y_l)
    (y_f * upstream).sum().backward()
    (y_l * upstream).sum().backward()
    assert _max_rel_err(x_f.grad, x_l.grad) < 1e-5
    grads_f = {name: p.grad for name, p in fused.named_parameters()}
    grads_l = {name: p.grad for name, p in literal.named_parameters()}
    largest = max(g.abs().max() for g in grads_l.values())
    for name, g_l in grads_l.items():
        if g_l.abs().max() < 1e-4 * largest:
            # exactly zero in exact arithmetic (key.bias shifts every logit of a row equally;
            # with one position, query/key cannot matter): both must be rounding noise only
            assert grads_f[name].abs().max() < 1e-4 * largest, name
        else:
            assert _max_rel_err(grads_f[name], g_l) < 1e-5, name


def test_sharp_attention_without_scaling_matches():
    # unscaled logits over d = C·T features get large: both must agree on a near one-hot softmax
    fused, literal = _module(8, None, False, 3), _module(8, None, False, 3)
    x = 3 * torch.randn(2, 8, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    assert _max_rel_err(fused(x), literal_spatial_attention(literal, x)) < 1e-5


@pytest.mark.parametrize("reduced", [None, 2, 12])
def test_takes_the_fused_cpu_kernel(reduced):
    """With only the flash backend allowed, SDPA raises instead of falling back to math."""
    m = _module(6, reduced, False, 0)
    x = torch.randn(2, 6, 3, 8, 8, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        y = m(x)
        y.sum().backward()
    assert x.grad is not None
    assert any("FlashAttention" in name for name in graph_node_names(y.grad_fn))


@pytest.mark.filterwarnings("ignore::UserWarning")  # SDPA explains why it refuses the kernel
def test_naive_layout_would_fall_back():
    """The guard the module relies on: a strided last dim makes SDPA refuse the flash kernel."""
    x = torch.randn(2, 16, 64).transpose(1, 2).unsqueeze(1)  # N×1×HW×d view, stride(-1) != 1
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(x, x, x, scale=1.0)


def test_rejects_non_5d_input():
    with pytest.raises(ValueError, match="N×C×T×H×W"):
        SpatialSelfAttention(4)(torch.randn(2, 4, 8, 8))


def test_memory_benchmark_small_shape():
    from ssagan_dist.bench.attention import measure

    result = measure("cpu", (2, 4, 4, 32, 32))
    assert result["sdpa_backend"] == "FLASH_ATTENTION"
    assert result["literal_peak_mib"] > result["fused_peak_mib"] > 0


@pytest.mark.slow
def test_memory_benchmark_acceptance_shape():
    from ssagan_dist.bench.attention import run

    result = run(json_out=True)  # N=4, C=8, T=8, H=W=64; needs about 1 GiB for the literal version
    assert result["cpu"]["sdpa_backend"] == "FLASH_ATTENTION"
    assert result["meets_5x"] and result["cpu"]["ratio"] >= 5
