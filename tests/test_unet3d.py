import pytest
import torch
from torch import nn

from ssagan_dist.models import registry
from ssagan_dist.models.attention import SpatialSelfAttention
from ssagan_dist.models.layers import repeat_frame
from ssagan_dist.models.unet3d import UNet3DDiscriminator, UNet3DGenerator, drop_outer_skips, encoder_plan

UNET_MODELS = ["ssagan", "ssagan_a", "mdgan_stage1", "mdgan_stage2", "ssagan_b"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mdgan_stage1_paper_parameter_count():
    nets = registry.build_networks("mdgan_stage1", "paper")  # construction only, no forward
    assert n_params(nets["G"]) == 39_072_576


def test_paper_layer_plan_matches_table_1():
    plan = encoder_plan(128, 32, 32)
    assert [(s.out_channels, s.kernel, s.stride, s.padding) for s in plan] == [
        (32, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
        (64, (4, 4, 4), (2, 2, 2), (1, 1, 1)),
        (128, (4, 4, 4), (2, 2, 2), (1, 1, 1)),
        (256, (4, 4, 4), (2, 2, 2), (1, 1, 1)),
        (512, (4, 4, 4), (2, 2, 2), (1, 1, 1)),
        (512, (2, 4, 4), (1, 1, 1), (0, 0, 0)),
    ]
    # Beach 64x64: no conv1 / deconv6
    assert [s.out_channels for s in encoder_plan(64, 32, 32)] == [64, 128, 256, 512, 512]


def test_bias_free_and_bn_placement():
    g = UNet3DGenerator(128, 32, 32)
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert len(convs) == 12 and all(c.bias is None for c in convs)
    bn_after = [any(isinstance(m, nn.BatchNorm3d) for m in block) for block in g.down]
    assert bn_after == [False, True, True, True, True, False]
    assert [any(isinstance(m, nn.BatchNorm3d) for m in block) for block in g.up] == [True] * 5 + [False]
    assert isinstance(g.up[-1][-1], nn.Tanh)
    leaky = [m.negative_slope for block in g.down for m in block if isinstance(m, nn.LeakyReLU)]
    assert leaky == [0.2] * 4


def test_ssa_after_every_block_but_the_output():
    g = UNet3DGenerator(32, 8, 8, ssa=True)
    assert [isinstance(b[-1], SpatialSelfAttention) for b in g.down] == [True] * len(g.down)
    assert [isinstance(b[-1], SpatialSelfAttention) for b in g.up] == [True] * (len(g.up) - 1) + [False]
    assert not any(isinstance(m, SpatialSelfAttention) for m in UNet3DDiscriminator(32, 8, 8).modules())


@pytest.mark.parametrize("name", UNET_MODELS)
def test_tiny_forward_shapes(name):
    torch.manual_seed(0)
    nets = registry.build_networks(name, "tiny")
    (x,) = nets["G"].example_inputs(2)
    assert x.shape == (2, 3, 8, 32, 32)
    y = nets["G"](x)
    assert y.shape == x.shape and y.abs().max() <= 1
    logits, feats = nets["D"](y)
    assert logits.shape == (2,)
    assert [f.shape for f in feats] == [(2, 8, 8, 16, 16), (2, 32, 2, 4, 4)]  # first and third conv
    if "G_stage1" in nets:
        assert nets["G_stage1"](x).shape == x.shape


def test_skips_are_additive_and_stage2_drops_the_two_outermost():
    assert drop_outer_skips(128, 32) == (3, 4, 5)
    assert UNet3DGenerator(32, 16, 4).skips == (1, 2, 3)
    for skips, expected in ((None, (1, 2, 3)), (drop_outer_skips(32, 16), (3,))):
        torch.manual_seed(0)
        g = UNet3DGenerator(32, 16, 4, skips=skips)
        assert g.skips == expected
        down_out, up_out, up_in = [], [], []
        for block in g.down:
            block.register_forward_hook(lambda m, i, o: down_out.append(o.clone()))
        for block in g.up:
            block.register_forward_hook(lambda m, i, o: up_out.append(o.clone()))
            block.register_forward_pre_hook(lambda m, i: up_in.append(i[0].clone()))
        g(torch.randn(1, 3, 16, 32, 32))
        depth = len(g.down)
        for k in range(1, depth):  # the input of up block k+1 is up_k (+ down_{depth-k} when skipped)
            want = up_out[k - 1] + (down_out[depth - k - 1] if depth - k in expected else 0)
            torch.testing.assert_close(up_in[k], want)
    with pytest.raises(ValueError, match="skips"):
        UNet3DGenerator(32, 8, 4, skips=(0,))


def test_repeat_frame_and_input_check():
    frame = torch.randn(2, 3, 32, 32)
    clip = repeat_frame(frame, 8)
    assert clip.shape == (2, 3, 8, 32, 32) and torch.equal(clip[:, :, 5], frame)
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 32, 32\)"):
        UNet3DGenerator(32, 8, 8)(torch.randn(1, 3, 4, 32, 32))


@pytest.mark.parametrize("size,frames,stem", [(32, 16, None), (64, 16, None), (32, 8, False), (16, 4, None)])
def test_derived_geometries_round_trip(size, frames, stem):
    g = UNet3DGenerator(size, frames, 4, ssa=True, stem=stem)
    d = UNet3DDiscriminator(size, frames, 4, stem=stem)
    (x,) = g.example_inputs(2)
    y = g(x)
    assert y.shape == (2, 3, frames, size, size)
    assert d(y)[0].shape == (2,)


def test_bad_geometry_names_the_argument():
    with pytest.raises(ValueError, match="frames = 6"):
        encoder_plan(32, 6, 8)
    with pytest.raises(ValueError, match="size = 40"):
        encoder_plan(40, 16, 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", UNET_MODELS)
def test_paper_presets_forward_batch_1(name):
    torch.manual_seed(0)
    nets = registry.build_networks(name, "paper")
    with torch.no_grad():
        for net in nets.values():
            net.eval()
        (x,) = nets["G"].example_inputs(1)
        y = nets["G"](x)
        assert y.shape == (1, 3, 32, 128, 128)
        logits, feats = nets["D"](y)
        assert logits.shape == (1,)
        assert [f.shape for f in feats] == [(1, 32, 32, 64, 64), (1, 128, 8, 16, 16)]


@pytest.mark.slow
def test_beach64_variant_forward():
    nets = registry.build_networks("ssagan", "paper", size=64)
    with torch.no_grad():
        (x,) = nets["G"].eval().example_inputs(1)
        assert nets["G"](x).shape == (1, 3, 32, 64, 64)
        assert nets["D"].eval()(x)[0].shape == (1,)
