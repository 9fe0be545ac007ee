"""One-stage and refine trainers on tiny U-Net models: overfitting, gradient flow, checkpoints, DDP."""

import io

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ssagan_dist.config import LossConfig, OptimConfig
from ssagan_dist.models import registry
from ssagan_dist.models.attention import SpatialSelfAttention
from ssagan_dist.parallel import no_forward_buffer_sync
from ssagan_dist.trainers import TRAINERS
from ssagan_dist.trainers.onestage import OneStageTrainer
from ssagan_dist.trainers.refine import RefineTrainer


def fixed_batch() -> dict[str, torch.Tensor]:
    """Two 3×8×32×32 clips of travelling waves in [-0.8, 0.8]."""
    t = torch.linspace(0, 1, 8)[:, None, None]
    xs = torch.linspace(-1, 1, 32)
    wave = torch.sin(3 * xs[None, :, None] + 2 * xs[None, None, :] + 4 * t)
    video = torch.stack([wave, 0.5 * wave.roll(1, -1), -wave]).unsqueeze(0).repeat(2, 1, 1, 1, 1) * 0.8
    video[1] = video[1].flip(-1)
    return {"video": video}


def make_trainer(name: str, lr: float = 2e-3, **args):
    torch.manual_seed(0)
    nets = registry.build_networks(name, "tiny", **args)
    return TRAINERS[registry.get(name).family](nets, OptimConfig(lr_g=lr, lr_d=lr, n_critic=1),
                         LossConfig(lambda_con=10.0, lambda_rank=1.0))


def content_l1(trainer, batch) -> float:
    return (trainer.predict(batch) - batch["video"]).abs().mean().item()


def test_trainer_kinds():
    assert isinstance(make_trainer("ssagan"), OneStageTrainer)
    assert isinstance(make_trainer("mdgan_stage2"), RefineTrainer)


@pytest.mark.parametrize("name,steps", [("ssagan", 40), ("mdgan_stage1", 40), ("mdgan_stage2", 80)])
def test_overfits_one_fixed_batch(name, steps):
    """The predicted clip's L1 error (eval mode) falls at least 2x in a short run."""
    trainer, batch = make_trainer(name), fixed_batch()
    before = content_l1(trainer, batch)
    for _ in range(steps):
        stats = trainer.run_step(lambda: batch)
    after = content_l1(trainer, batch)
    assert after < before / 2, (before, after, stats)
    assert all(torch.isfinite(v) for v in stats.values())


def _zero_grad_expected(net: torch.nn.Module) -> set[int]:
    """Parameters whose gradient is exactly zero at init: γ = 0 blocks SSA's query/key/value."""
    return {id(p) for m in net.modules() if isinstance(m, SpatialSelfAttention)
            for conv in (m.query, m.key, m.value) for p in conv.parameters()}


@pytest.mark.parametrize("name", ["ssagan", "ssagan_b"])
def test_gradients_reach_every_trained_network(name):
    trainer, batch = make_trainer(name), fixed_batch()
    frozen = {k: v.clone() for k, v in trainer.nets.get("G_stage1", torch.nn.Module()).state_dict().items()}
    trainer.run_step(lambda: batch)
    for role in trainer.trained:
        zero_ok = _zero_grad_expected(trainer.nets[role])
        for pname, p in trainer.nets[role].named_parameters():
            assert p.grad is not None, (role, pname)
            if id(p) not in zero_ok:
                assert p.grad.abs().sum() > 0, (role, pname)
    if frozen:  # the Stage-I generator is neither trained nor updated by BatchNorm
        g1 = trainer.nets["G_stage1"]
        assert not g1.training and all(not p.requires_grad and p.grad is None for p in g1.parameters())
        for k, v in g1.state_dict().items():
            assert torch.equal(v, frozen[k]), k


def test_ranking_loss_drives_d2_and_g2():
    trainer, batch = make_trainer("mdgan_stage2"), fixed_batch()
    stats = {k: v.item() for k, v in trainer.run_step(lambda: batch).items()}
    assert {"d_rank", "g_rank", "g_con", "g_adv", "d_adv"} <= set(stats)
    # D2's loss includes -λ_rank·L_rank
    assert stats["d_loss"] == pytest.approx(stats["d_adv"] - stats["d_rank"], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", ["ssagan", "mdgan_stage2"])
def test_state_dict_round_trip(name):
    batch = fixed_batch()
    a = make_trainer(name)
    for _ in range(2):
        a.run_step(lambda: batch)
    buffer = io.BytesIO()  # through bytes, as a checkpoint travels (in memory, Adam would share moments)
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    b = make_trainer(name)
    b.load_state_dict(saved)
    torch.testing.assert_close(b.predict(batch), a.predict(batch), rtol=0, atol=0)
    a.run_step(lambda: batch)  # both continue identically (optimizer moments included)
    b.run_step(lambda: batch)
    for role in a.trained:
        for (k, pa), pb in zip(a.nets[role].state_dict().items(), b.nets[role].state_dict().values()):
            torch.testing.assert_close(pb, pa, rtol=0, atol=0, msg=f"{role}.{k}")
    # A trainer configured with other learning rates (a PBT explore) keeps its own after loading.
    c = make_trainer(name, lr=1e-3)
    c.load_state_dict(saved)
    assert c.learning_rates() == {"lr_g": 1e-3, "lr_d": 1e-3}
    assert all(g["lr"] == 1e-3 for opt in c.optimizers.values() for g in opt.param_groups)


def test_load_stage1():
    stage1 = make_trainer("mdgan_stage1")
    stage1.run_step(lambda: fixed_batch())
    refine = make_trainer("mdgan_stage2")
    refine.load_pretrained("G_stage1", stage1.state_dict()["nets"]["G"])
    for k, v in stage1.nets["G"].state_dict().items():
        assert torch.equal(refine.nets["G_stage1"].state_dict()[k], v), k
    assert not any(p.requires_grad for p in refine.nets["G_stage1"].parameters())
    wrong = make_trainer("ssagan").state_dict()["nets"]["G"]  # SSA keys do not fit MD-GAN's G1
    with pytest.raises(ValueError, match="Stage-I"):
        refine.load_pretrained("G_stage1", wrong)


def test_refine_needs_a_stage1_generator():
    nets = registry.build_networks("mdgan_stage2", "tiny")
    del nets["G_stage1"]
    with pytest.raises(ValueError, match="G_stage1"):
        RefineTrainer(nets, OptimConfig(), LossConfig())


@pytest.fixture
def gloo_world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["ssagan", "ssagan_b"])
def test_runs_under_ddp(name, gloo_world_of_one):
    """The wrapped network is updated, the other is called plain: no reducer errors, same result."""
    batch = fixed_batch()
    plain, wrapped = make_trainer(name), make_trainer(name)
    wrapped.wrap(lambda m: DistributedDataParallel(m, **no_forward_buffer_sync()))
    for _ in range(2):
        s_plain, s_wrapped = plain.run_step(lambda: batch), wrapped.run_step(lambda: batch)
    for k, v in s_plain.items():
        assert s_wrapped[k].item() == pytest.approx(v.item(), rel=1e-4, abs=1e-5), k
