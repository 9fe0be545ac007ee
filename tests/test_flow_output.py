"""The flow output head (models/layers.py: warp, compose_output, GlobalVelocity): it moves pixels,
starts as 'nothing moves', and is offered by every image-conditioned model."""

import pytest
import torch

from ssagan_dist.models import registry
from ssagan_dist.models.layers import FLOW_RANGE, GlobalVelocity, compose_output, output_channels, warp

IMAGE_CONDITIONED = ("ssagan", "ssagan_a", "mdgan_stage1", "mdgan_stage2", "ssagan_b", "convlstm_gan",
                     "pix2pix_video")


def _textured(n=2, c=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


def test_warp_by_whole_pixels_is_a_shift_inside_the_frame():
    frames = _textured()
    h, w = frames.shape[-2:]
    dx, dy = 3, -2  # content moves 3 px right, 2 px up
    flow = torch.zeros(2, 2, h, w)
    flow[:, 0], flow[:, 1] = dx * 2 / (w - 1), dy * 2 / (h - 1)
    moved = warp(frames, flow)
    expected = torch.roll(frames, shifts=(dy, dx), dims=(-2, -1))
    # away from the edges the content came from (left columns, bottom rows), an exact shift
    torch.testing.assert_close(moved[..., :h + dy, dx:], expected[..., :h + dy, dx:], atol=1e-5, rtol=0)
    # what enters the frame continues the border's colour
    torch.testing.assert_close(moved[..., :h + dy, 0], frames[..., -dy:, 0], atol=1e-5, rtol=0)


def test_warp_of_a_clip_moves_each_frame_by_its_own_flow():
    frames = _textured(n=1)
    clip = frames.unsqueeze(2).expand(-1, -1, 3, -1, -1)
    flow = torch.zeros(1, 2, 3, 16, 16)
    flow[:, 0, 1], flow[:, 0, 2] = 2 / 15, 4 / 15  # frame 1 by 1 px, frame 2 by 2 px
    moved = warp(clip, flow)
    torch.testing.assert_close(moved[:, :, 0], frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[:, :, 2, :, 2:], frames[..., :-2], atol=1e-5, rtol=0)


def test_a_non_finite_flow_gives_nan_pixels_and_backward_runs():
    """A diverging run's flow is NaN or inf; grid_sample's CPU kernel would read out of bounds on
    it (a segfault in a Ray worker, seen in CI): those pixels come out NaN instead, the others as
    usual, and the backward pass completes."""
    frames = torch.rand(2, 3, 8, 8, requires_grad=True)
    flow = torch.zeros(2, 2, 8, 8)
    flow[0, 0, 2, 3], flow[0, 1, 5, 5], flow[1, 0, 1, 1] = float("nan"), float("inf"), -float("inf")
    flow.requires_grad_(True)
    out = warp(frames, flow)
    bad = torch.zeros(2, 8, 8, dtype=torch.bool)
    bad[0, 2, 3] = bad[0, 5, 5] = bad[1, 1, 1] = True
    assert out.isnan().any(dim=1).eq(bad).all()
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[~bad], frames.detach().permute(0, 2, 3, 1)[~bad])
    out.nan_to_num().sum().backward()
    assert torch.isfinite(frames.grad).all() and torch.isfinite(flow.grad).all()


def test_compose_flow_moves_frame_t_by_t_over_t_minus_1_of_the_velocity():
    base = _textured(n=1).unsqueeze(2).expand(-1, -1, 5, -1, -1).contiguous()
    out = torch.zeros(1, output_channels("flow", 3), 5, 16, 16)
    out[:, 5] = 1.0  # gate = 1
    velocity = torch.tensor([[4 * 2 / 15, 0.0]])  # 4 px over the clip
    pred = compose_output(base, out, "flow", velocity)
    for t in range(5):  # frame t moved t px
        torch.testing.assert_close(pred[:, :, t, :, t:], base[:, :, 0, :, :16 - t], atol=1e-5, rtol=0)
    # a local velocity adds to the global one; the gate at 0 removes the global one
    out[:, 5] = -1.0
    out[:, 3] = 2 * 2 / 15 / FLOW_RANGE  # 2 px over the clip, from the local channels
    pred = compose_output(base, out, "flow", velocity)
    torch.testing.assert_close(pred[:, :, 4, :, 2:], base[:, :, 0, :, :-2], atol=1e-5, rtol=0)


def test_global_velocity_pools_so_it_does_not_depend_on_where_a_feature_stands():
    head = GlobalVelocity([4])
    torch.nn.init.normal_(head.linear.weight)
    a = torch.zeros(1, 4, 8, 8)
    b = torch.zeros(1, 4, 8, 8)
    a[0, :, 1, 2] = 1.0
    b[0, :, 6, 5] = 1.0
    torch.testing.assert_close(head([a]), head([b]))


@pytest.mark.parametrize("model", IMAGE_CONDITIONED)
def test_every_image_conditioned_model_offers_flow_and_starts_as_nothing_moves(model):
    torch.manual_seed(0)
    args = {"output": "flow"}
    if model in ("mdgan_stage2", "ssagan_b"):
        args["stage1_output"] = "flow"
    nets = registry.build_networks(model, "tiny", **args)
    g = nets["G"].eval()
    inputs = g.example_inputs(2)
    if model == "pix2pix_video":
        out, given = g.rollout(inputs[0]), inputs[0].unsqueeze(2).expand(-1, -1, g.frames, -1, -1)
    else:
        out = g(*inputs)
        given = inputs[-1] if inputs[-1].dim() == 5 else inputs[-1].unsqueeze(2).expand_as(out)
    torch.testing.assert_close(out, given, atol=1e-4, rtol=0)
    # the velocity is trained: a loss that wants motion reaches it
    g.train()
    out = g.rollout(inputs[0]) if model == "pix2pix_video" else g(*inputs)
    (out[:, :, -1] - torch.roll(given[:, :, -1], 2, dims=-1)).abs().mean().backward()
    assert g.velocity.linear.weight.grad.abs().sum() > 0
