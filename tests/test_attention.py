import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ssagan_dist.models import attention
from ssagan_dist.models.attention import SpatialSelfAttention, literal_spatial_attention
from ssagan_dist.bench.attention import graph_node_names

KERNELS = ["sdpa", "saved_probs"]

SHAPES = [  # (N, C, T, H, W, reduced_channels, scaled)
    (2, 4, 3, 5, 6, None, False),
    (1, 8, 4, 8, 8, None, False),
    (3, 6, 2, 4, 4, 2, False),  # Ĉ < C: q/k zero-padded to the value width
    (2, 3, 2, 3, 5, 5, True),  # Ĉ > C: v zero-padded, output sliced
    (2, 16, 1, 1, 1, None, False),  # the innermost (conv6) shape: one position
    (1, 32, 8, 8, 8, None, True),  # d = 256 >= HW: where auto takes saved_probs on CPU
]


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _module(c: int, reduced, scaled: bool, seed: int, kernel: str = "auto") -> SpatialSelfAttention:
    torch.manual_seed(seed)
    m = SpatialSelfAttention(c, reduced, scaled=scaled, kernel=kernel)
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


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n,c,t,h,w,reduced,scaled", SHAPES)
def test_fused_equals_literal_outputs_and_grads(n, c, t, h, w, reduced, scaled, kernel):
    fused, literal = _module(c, reduced, scaled, 0, kernel), _module(c, reduced, scaled, 0)
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


@pytest.mark.parametrize("kernel", KERNELS)
def test_sharp_attention_without_scaling_matches(kernel):
    # unscaled logits over d = C·T features get large: both must agree on a near one-hot softmax
    fused, literal = _module(8, None, False, 3, kernel), _module(8, None, False, 3)
    x = 3 * torch.randn(2, 8, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    assert _max_rel_err(fused(x), literal_spatial_attention(literal, x)) < 1e-5


@pytest.mark.parametrize("reduced", [None, 2, 12])
def test_takes_the_fused_cpu_kernel(reduced):
    """With only the flash backend allowed, SDPA raises instead of falling back to math."""
    m = _module(6, reduced, False, 0, "sdpa")
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


@pytest.mark.parametrize("scaled", [False, True])
def test_saved_probs_backward_passes_gradcheck_in_float64(scaled):
    """The hand-written backward against finite differences, for x and every parameter (Ĉ < C)."""
    m = _module(3, 2, scaled, 0, "saved_probs").double()
    x = torch.randn(2, 3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(m.parameters())

    def fn(x, *weights):
        return torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], weights)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))
    torch.testing.assert_close(m(x), literal_spatial_attention(m, x), rtol=1e-12, atol=1e-12)


def _kernel_that_ran(m: SpatialSelfAttention, x: torch.Tensor) -> str:
    names = graph_node_names(m(x).grad_fn)
    if any("SavedProbabilityAttention" in n for n in names):
        return "saved_probs"
    assert any("FlashAttention" in n for n in names), names
    return "sdpa"


# (C, T, H, W): d = C·T and HW against the rule's thresholds
LARGE_WIDTH = (64, 4, 16, 16)  # d = 256 = SAVED_PROBS_MIN_WIDTH, HW = 256 <= 4·d
SMALL_WIDTH = (16, 4, 16, 16)  # d = 64: below the width threshold
MANY_POSITIONS = (64, 4, 33, 32)  # d = 256, HW = 1056 > 4·d


def test_auto_rule_thresholds_are_the_documented_ones():
    assert attention.SAVED_PROBS_MIN_WIDTH == LARGE_WIDTH[0] * LARGE_WIDTH[1]
    assert attention.SAVED_PROBS_MAX_POSITIONS_PER_WIDTH * attention.SAVED_PROBS_MIN_WIDTH < 33 * 32


@pytest.mark.parametrize("shape, expected", [(LARGE_WIDTH, "saved_probs"), (SMALL_WIDTH, "sdpa"),
                                             (MANY_POSITIONS, "sdpa")])
def test_auto_dispatch_in_float32_training_on_cpu(shape, expected):
    m = _module(shape[0], None, False, 0)
    x = torch.randn(1, *shape, requires_grad=True)
    assert m.kernel == "auto" and _kernel_that_ran(m, x) == expected
    torch.testing.assert_close(m(x), literal_spatial_attention(m, x), rtol=1e-5, atol=1e-5)


def test_auto_takes_sdpa_without_grad_and_under_autocast():
    m = _module(LARGE_WIDTH[0], None, False, 0)
    x = torch.randn(1, *LARGE_WIDTH)
    with torch.no_grad():  # the fakes' G forward, evaluation: nothing saved, flash forward is fast
        assert m.kernel_for(m.query(x), 256) == "sdpa"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _kernel_that_ran(m, x.requires_grad_()) == "sdpa"


def test_forced_kernels_override_the_rule():
    small = _module(SMALL_WIDTH[0], None, False, 0, "saved_probs")
    assert _kernel_that_ran(small, torch.randn(1, *SMALL_WIDTH, requires_grad=True)) == "saved_probs"
    large = _module(LARGE_WIDTH[0], None, False, 0, "sdpa")
    assert _kernel_that_ran(large, torch.randn(1, *LARGE_WIDTH, requires_grad=True)) == "sdpa"
    m = small
    with pytest.raises(ValueError, match="kernel = 'flash'"):
        m.kernel = "flash"


def test_saved_probs_under_bf16_autocast_keeps_float32_probabilities():
    m = _module(8, None, False, 0, "saved_probs")
    x = torch.randn(2, 8, 4, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().sum().backward()
    reference = literal_spatial_attention(m, x.detach())
    # only the bf16 projections differ from float32: a bf16-sized error, not the coarse logits'
    assert _max_rel_err(y.float(), reference) < 2e-2
    assert all(torch.isfinite(p.grad).all() for p in m.parameters()) and torch.isfinite(x.grad).all()


def test_rejects_non_5d_input():
    with pytest.raises(ValueError, match="N×C×T×H×W"):
        SpatialSelfAttention(4)(torch.randn(2, 4, 8, 8))


def test_memory_benchmark_small_shape():
    from ssagan_dist.bench.attention import measure

    result = measure("cpu", (2, 4, 4, 32, 32), repeats=1)  # d = 16: auto takes SDPA
    assert result["sdpa_backend"] == "FLASH_ATTENTION" and result["kernel"] == "sdpa"
    assert result["literal_peak_mib"] > result["fused_peak_mib"] > 0
    assert result["equal_within_1e-5"] and result["saved_probs_relative_error"] < 1e-5


def test_memory_benchmark_large_width_shape():
    """d = 256, HW = 1024 = 4·d (conv1's proportions, scaled down): auto takes the saved-probabilities
    kernel, which holds less than the literal version (P and one dP buffer, not autograd's four HW×HW)."""
    from ssagan_dist.bench.attention import measure

    result = measure("cpu", (1, 16, 16, 32, 32), repeats=1)
    assert result["kernel"] == "saved_probs"
    assert result["fused_peak_mib"] < result["literal_peak_mib"]
    assert result["equal_within_1e-5"]


@pytest.mark.slow
def test_memory_benchmark_acceptance_shape():
    from ssagan_dist.bench.attention import run

    result = run(json_out=True)  # N=4, C=8, T=8, H=W=64; needs about 1 GiB for the literal version
    assert result["cpu"]["sdpa_backend"] == "FLASH_ATTENTION"
    assert result["meets_5x"] and result["cpu"]["ratio"] >= 5
