"""The non-U-Net models: HRVGAN, the seed-004 video GANs (3D-CNN, ConvLSTM, pix2pix) and DCGAN."""

import pytest
import torch

from ssagan_dist.models import registry
from ssagan_dist.models.convlstm import ConvLSTM, ConvLSTMCell
from ssagan_dist.models.video3d import time_strides

ZOO = {  # name -> (trainer kind, tiny G output shape at batch 2)
    "hrvgan": ("wgan_gp", (2, 3, 8, 32, 32)),
    "video3d_gan": ("noise", (2, 3, 8, 32, 32)),
    "convlstm_gan": ("noise", (2, 3, 8, 32, 32)),
    "pix2pix_video": ("pix2pix", (2, 3, 32, 32)),  # one frame per step; rollout makes the clip
    "dcgan": ("noise", (2, 3, 1, 32, 32)),
}
PAPER_G_OUT = {
    "hrvgan": (1, 3, 32, 128, 128),
    "video3d_gan": (1, 3, 8, 128, 128),  # Zhang 2019 §III: 8 x 128 x 128 x 3
    "convlstm_gan": (1, 3, 16, 128, 128),  # Zhang 2019 §V: 16 frames of 128 x 128
    "pix2pix_video": (1, 3, 256, 256),  # Zhang 2019 §IV: 256 x 256 frames
    "dcgan": (1, 1, 1, 28, 28),  # Zhang 2019 §II: 28 x 28 x 1
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_tiny_forward_shapes(name):
    torch.manual_seed(0)
    kind, g_shape = ZOO[name]
    assert registry.get(name).family == kind
    nets = registry.build_networks(name, "tiny")
    g, d = nets["G"], nets["D"]
    out = g(*g.example_inputs(2))
    assert out.shape == g_shape
    assert out.abs().max() <= 1  # Tanh
    logits = d(*d.example_inputs(2))
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()
    if name != "pix2pix_video":  # one logit (or score) per clip; pix2pix has one per patch
        assert logits.shape == (2,)
        assert d(out).shape == (2,) if g.conditioning != "label" else d(out, g.example_inputs(2)[1]).shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_G_OUT))
def test_paper_preset_forward(name):
    nets = registry.build_networks(name, "paper")
    g, d = nets["G"].eval(), nets["D"].eval()
    with torch.no_grad():
        assert g(*g.example_inputs(1)).shape == PAPER_G_OUT[name]
        assert torch.isfinite(d(*d.example_inputs(1))).all()


def test_pix2pix_paper_sizes_match_pix2pix():
    """pix2pix's own code reports 54.414 M (U-Net 256) and 2.769 M (70x70 PatchGAN) parameters."""
    nets = registry.build_networks("pix2pix_video", "paper")
    assert round(n_params(nets["G"]) / 1e6, 3) == 54.414
    assert round(n_params(nets["D"]) / 1e6, 3) == 2.769
    d = nets["D"].eval()
    assert d(*d.example_inputs(1)).shape == (1, 1, 30, 30)  # 30 x 30 patches at 256 x 256


def test_dcgan_paper_discriminator_has_4096_features():
    """Zhang 2019 §II: the DCGAN discriminator's flattened output has 4,096 features at 28 x 28."""
    nets = registry.build_networks("dcgan", "paper")
    assert nets["D"].logit.in_features == 4096
    assert nets["G"](torch.randn(2, 100)).shape == (2, 1, 1, 28, 28)


def test_hrvgan_labels_condition_both_networks():
    torch.manual_seed(0)
    nets = registry.build_networks("hrvgan", "tiny")
    g, d = nets["G"].eval(), nets["D"].eval()
    z = torch.randn(1, g.z_dim).expand(2, -1)
    labels = torch.tensor([0, 1])
    video = g(z, labels)
    assert not torch.allclose(video[0], video[1])
    same_clip = video[:1].expand(2, -1, -1, -1, -1)
    scores = d(same_clip, labels)
    assert scores[0] != scores[1]


def test_hrvgan_num_classes_is_an_argument():
    nets = registry.build_networks("hrvgan", "tiny", num_classes=101)
    assert nets["G"].embed.num_embeddings == 101 and nets["D"].embed.num_embeddings == 101
    assert registry.get("hrvgan").flavors["paper"]["num_classes"] == 101  # UCF101


def test_convlstm_cell_equations():
    """Zero gate weights: i = f = o = 1/2 and g = 0, so c' = c/2 and h' = tanh(c')/2."""
    cell = ConvLSTMCell(2, 3)
    torch.nn.init.zeros_(cell.gates.weight)
    torch.nn.init.zeros_(cell.gates.bias)
    x, h, c = torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    h2, c2 = cell(x, (h, c))
    torch.testing.assert_close(c2, c / 2)
    torch.testing.assert_close(h2, torch.tanh(c / 2) / 2)


def test_convlstm_extends_time_and_depends_on_the_image():
    torch.manual_seed(0)
    lstm = ConvLSTM(4, 5, num_layers=3)
    assert lstm(torch.randn(2, 4, 6, 6), steps=7).shape == (2, 5, 7, 6, 6)
    g = registry.build_networks("convlstm_gan", "tiny")["G"].eval()
    z, image = g.example_inputs(1)
    assert not torch.allclose(g(z, image), g(z, -image))
    out = g(z, image)
    assert not torch.allclose(out[:, :, 0], out[:, :, -1])  # frames differ over time


def test_pix2pix_rollout_starts_from_the_input():
    torch.manual_seed(0)
    g = registry.build_networks("pix2pix_video", "tiny")["G"].eval()
    (frame,) = g.example_inputs(2)
    clip = g.rollout(frame, 5)
    assert clip.shape == (2, 3, 5, 32, 32)
    torch.testing.assert_close(clip[:, :, 0], frame)
    torch.testing.assert_close(clip[:, :, 2], g(g(frame)))
    assert g.rollout(frame).shape[2] == g.frames


def test_sizes_derive_from_arguments():
    nets = registry.build_networks("video3d_gan", "tiny", frames=16, size=64)
    assert nets["G"](torch.randn(1, 16)).shape == (1, 3, 16, 64, 64)
    assert nets["D"](torch.zeros(2, 3, 16, 64, 64)).shape == (2,)
    nets = registry.build_networks("hrvgan", "tiny", frames=16, size=16)
    assert nets["G"](*nets["G"].example_inputs(1)).shape == (1, 3, 16, 16, 16)


def test_time_strides_and_bad_sizes():
    assert time_strides(1, 8, 4) == [2, 2, 2, 1]
    assert time_strides(2, 2, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="frames"):
        time_strides(1, 12, 4)
    with pytest.raises(ValueError, match="stride-2 layers"):
        time_strides(1, 32, 4)
    with pytest.raises(ValueError, match="size"):
        registry.build_networks("hrvgan", "tiny", size=48)
    with pytest.raises(ValueError, match="size"):
        registry.build_networks("pix2pix_video", "tiny", size=48)
