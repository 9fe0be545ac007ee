import math

import pytest
import torch
from torch import nn

from ssagan_dist import losses


def test_adversarial_losses_match_log_form():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    want_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    want_g = -torch.log(sig(fake)).mean()
    torch.testing.assert_close(losses.adversarial_d_loss(real, fake), want_d)
    torch.testing.assert_close(losses.adversarial_g_loss(fake), want_g)


def test_content_and_mse():
    y, y_hat = torch.tensor([1.0, -1.0, 0.0, 0.5]), torch.tensor([0.0, -1.0, 1.0, 0.0])
    assert losses.content_loss(y, y_hat).item() == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert losses.pixel_mse(y, y_hat).item() == pytest.approx((1 + 0 + 1 + 0.25) / 4)


def test_generator_objective_is_eq_7():
    logits, y, y_hat = torch.tensor([0.3, -0.2]), torch.zeros(2, 3), torch.ones(2, 3)
    total, adv, con = losses.generator_objective(logits, y, y_hat, lambda_con=2.5)
    torch.testing.assert_close(adv, losses.adversarial_g_loss(logits))
    assert con.item() == pytest.approx(1.0)
    torch.testing.assert_close(total, adv + 2.5 * con)


def test_wgan_losses_and_gradient_penalty():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    assert losses.wgan_critic_loss(real, fake).item() == pytest.approx(-1.0 - 2.0)
    assert losses.wgan_generator_loss(fake).item() == pytest.approx(1.0)
    # a linear critic c(x) = <w, x> has gradient w everywhere: penalty (|w| - 1)^2
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    gp = losses.gradient_penalty(lambda x: x @ w, torch.randn(5, 2), torch.randn(5, 2))
    assert gp.item() == pytest.approx(16.0)
    gp.backward()  # create_graph=True: the penalty trains the critic
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_gram_matrix_hand_computed():
    # N=2, C=1, T=2, H=1, W=2 -> M=2, S=2
    h = torch.tensor([[[[[1.0, 2.0]], [[0.0, 1.0]]]], [[[[1.0, 0.0]], [[2.0, 2.0]]]]])
    assert h.shape == (2, 1, 2, 1, 2)
    # sample 0: rows a=(1,2), b=(0,1): [[5,2],[2,1]]; sample 1: a=(1,0), b=(2,2): [[1,2],[2,8]]
    want = torch.tensor([[6.0, 4.0], [4.0, 9.0]]) / (2 * 2 * 2)
    torch.testing.assert_close(losses.gram_matrix(h), want)
    with pytest.raises(ValueError, match="N×C×T×H×W"):
        losses.gram_matrix(torch.zeros(2, 3, 4, 5))


def test_ranking_loss_hand_computed():
    one = torch.ones(1, 1, 1, 1, 1)  # gram = [[1]] * v^2
    y1, y, y2 = [0.0 * one], [2.0 * one], [1.0 * one]
    # g(Y1)=0, g(Y)=4, g(Y2)=1: d(Y2,Y)=3, d(Y2,Y1)=1 -> -log(e^-3 / (e^-3 + e^-1))
    want = -math.log(math.exp(-3) / (math.exp(-3) + math.exp(-1)))
    assert losses.ranking_loss(y1, y, y2).item() == pytest.approx(want, rel=1e-6)
    # two layers sum
    assert losses.ranking_loss(y1 * 2, y * 2, y2 * 2).item() == pytest.approx(2 * want, rel=1e-6)
    # stable for huge distances (a naive exp underflows to 0/0)
    big = losses.ranking_loss([0.0 * one], [100.0 * one], [1.0 * one])
    assert torch.isfinite(big) and big.item() == pytest.approx(9999 - 1, rel=1e-6)


def _features(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 8, 2, 3, 3, generator=g)]


def test_ranking_loss_deterministic():
    a, b, c = _features(0), _features(1), _features(2)
    v1, v2 = losses.ranking_loss(a, b, c), losses.ranking_loss(a, b, c)
    assert v1.item() == v2.item()


def test_ranking_loss_decreases_as_y2_moves_to_y():
    y1, y, y2 = _features(0), _features(1), _features(2)
    values = []
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        moved = [(1 - alpha) * f2 + alpha * f for f2, f in zip(y2, y)]
        values.append(losses.ranking_loss(y1, y, moved).item())
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_ranking_loss_gradients_reach_d2_and_g2():
    torch.manual_seed(0)
    d2 = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv3d(4, 4, 3, stride=2, padding=1))
    g2 = nn.Conv3d(3, 3, 3, padding=1)

    def feats(x):
        first = d2[1](d2[0](x))
        return [first, d2[2](first)]

    y1, y = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    y2 = g2(y1)
    loss = losses.ranking_loss(feats(y1), feats(y), feats(y2))
    loss.backward()
    for name, net in (("D2", d2), ("G2", g2)):
        grads = [p.grad for p in net.parameters()]
        assert all(gr is not None for gr in grads), name
        assert sum(gr.abs().sum() for gr in grads) > 0, name
