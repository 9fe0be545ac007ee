"""Trainers of the non-U-Net models: WGAN-GP (HRVGAN), noise BCE GANs (3D-CNN, ConvLSTM, DCGAN), pix2pix."""

import io
import os
import socket

import pytest
import torch

from ssagan_dist import losses
from ssagan_dist.config import LossConfig, OptimConfig
from ssagan_dist.models import registry
from ssagan_dist.parallel import no_forward_buffer_sync
from ssagan_dist.trainers import TRAINERS

MODELS = ["hrvgan", "video3d_gan", "convlstm_gan", "pix2pix_video", "dcgan"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sky_clips(n: int = 4, frames: int = 8, size: int = 32, seed: int = 1) -> torch.Tensor:
    """A smooth random frame drifting one pixel per frame (a time-lapse in miniature), in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    first = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, size=(size, size),
                                            mode="bilinear", align_corners=True)
    return torch.stack([first.roll(t, dims=-1) for t in range(frames)], dim=2)


def make_trainer(name: str, seed: int = 0, optim: OptimConfig | None = None, loss: LossConfig | None = None,
                 **model_args):
    torch.manual_seed(seed)
    nets = registry.build_networks(name, "tiny", **model_args)
    return TRAINERS[registry.get(name).family](nets, optim or OptimConfig(n_critic=1), loss or LossConfig())


def assert_grads_reach_every_parameter(trainer):
    for role in trainer.trained:
        for pname, p in trainer.nets[role].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{role}.{pname} got no gradient"


# (model, stat that must fall, factor, optimizer, loss weights, frames in the fixed batch). 40 steps each.
# The content weights are large so that the content term, not the adversarial game, drives G on one
# batch; pix2pix trains on a 2-frame clip so its one pair (frame 0, frame 1) is fixed.
OVERFIT = [
    ("hrvgan", "g_mse", 4.0, dict(lr_g=3e-3, lr_d=1e-3), dict(lambda_mse=1e4), 8),
    ("convlstm_gan", "g_con", 1.6, dict(lr_g=3e-3, lr_d=1e-3), dict(lambda_con=100.0), 8),
    ("pix2pix_video", "g_con", 1.5, dict(lr_g=1e-3, lr_d=1e-3), dict(lambda_con=100.0), 2),
    ("video3d_gan", "d_loss", 2.0, dict(), dict(), 8),
    ("dcgan", "d_loss", 2.0, dict(lr_d=1e-3), dict(), 8),
]


@pytest.mark.parametrize("name,stat,factor,optim,loss,frames", OVERFIT, ids=[o[0] for o in OVERFIT])
def test_overfits_one_fixed_batch(name, stat, factor, optim, loss, frames):
    trainer = make_trainer(name, optim=OptimConfig(n_critic=1, **optim), loss=LossConfig(**loss))
    batch = {"video": sky_clips(frames=frames), "label": torch.tensor([0, 1, 2, 3])}
    values = []
    for step in range(40):
        values.append(trainer.run_step(lambda: batch)[stat].item())
        if step == 0:
            assert_grads_reach_every_parameter(trainer)
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    assert last * factor < first, f"{name}: {stat} went {first:.4f} -> {last:.4f}, wanted a {factor}x fall"
    assert_grads_reach_every_parameter(trainer)


def test_n_critic_repeats_the_critic_phase():
    trainer = make_trainer("hrvgan", optim=OptimConfig(n_critic=3))
    draws = []

    def next_batch():
        draws.append(1)
        return {"video": sky_clips(2)}

    trainer.run_step(next_batch)
    assert [(p.name, p.network, p.repeats) for p in trainer.phases()] == [("D", "D", 3), ("G", "G", 1)]
    assert len(draws) == 4  # one fresh batch per update


@pytest.mark.parametrize("name", MODELS)
def test_predict_matches_the_data_shape(name):
    trainer = make_trainer(name)
    batch = {"video": sky_clips(3), "label": torch.tensor([0, 1, 3])}
    trainer.run_step(lambda: batch)
    pred = trainer.predict(batch)
    assert pred.shape == batch["video"].shape
    assert pred.abs().max() <= 1
    assert not trainer.nets["G"].training  # eval mode
    trainer.run_step(lambda: batch)
    assert trainer.nets["G"].training


def test_pix2pix_predict_rolls_out_from_frame_zero():
    trainer = make_trainer("pix2pix_video")
    batch = {"video": sky_clips(2)}
    pred = trainer.predict(batch)
    torch.testing.assert_close(pred[:, :, 0], batch["video"][:, :, 0])
    g = trainer.nets["G"]
    torch.testing.assert_close(pred[:, :, 3], g(g(g(batch["video"][:, :, 0]))))
    torch.testing.assert_close(trainer.predict(batch), pred)  # deterministic (eval mode, no dropout)


def test_dcgan_trains_on_single_frames_and_predicts_still_clips():
    trainer = make_trainer("dcgan")
    batch = {"video": sky_clips(3)}
    real = trainer.real_clip(batch)
    assert real.shape == (3, 3, 1, 32, 32)
    clips = batch["video"].permute(0, 2, 1, 3, 4)  # (N, T, C, H, W)
    for i in range(3):  # each one of its own clip's frames
        assert any(torch.equal(real[i, :, 0], frame) for frame in clips[i])
    pred = trainer.predict(batch)
    assert torch.equal(pred[:, :, 0], pred[:, :, -1])


def test_convlstm_is_content_trained_and_pure_noise_models_are_not():
    batch = {"video": sky_clips(2)}
    assert "g_con" in make_trainer("convlstm_gan").run_step(lambda: batch)
    assert "g_con" not in make_trainer("video3d_gan").run_step(lambda: batch)


def test_wgan_without_labels_uses_class_zero_and_checks_labels():
    trainer = make_trainer("hrvgan")
    batch = {"video": sky_clips(2)}
    assert trainer.labels(batch).tolist() == [0, 0]
    stats = trainer.run_step(lambda: batch)
    assert set(stats) >= {"d_loss", "d_gp", "d_wasserstein", "g_loss", "g_mse"}
    with pytest.raises(ValueError, match="num_classes"):
        trainer.run_step(lambda: {"video": sky_clips(2), "label": torch.tensor([0, 4])})  # tiny has 4 classes


@pytest.mark.parametrize("name", ["hrvgan", "video3d_gan", "pix2pix_video"])
def test_clip_shape_mismatch_names_model_args(name):
    trainer = make_trainer(name)
    with pytest.raises(ValueError, match="model.args"):
        trainer.run_step(lambda: {"video": sky_clips(2, size=16)})


def test_pix2pix_needs_two_frames():
    with pytest.raises(ValueError, match="pairs"):
        make_trainer("pix2pix_video").run_step(lambda: {"video": sky_clips(2, frames=1)})


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    batch = {"video": sky_clips(2), "label": torch.tensor([1, 2])}
    a = make_trainer(name, seed=0)
    a.run_step(lambda: batch)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make_trainer(name, seed=1)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    for trainer in (a, b):  # identical networks and optimizer states give identical next steps
        torch.manual_seed(7)
        trainer.run_step(lambda: batch)
        torch.manual_seed(8)
        trainer.prediction = trainer.predict(batch)
    torch.testing.assert_close(a.prediction, b.prediction, rtol=0, atol=0)
    for role in a.nets:
        for (k, va), vb in zip(a.nets[role].state_dict().items(), b.nets[role].state_dict().values()):
            torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=f"{role}.{k}")


def test_gradient_penalty_vanishes_for_a_unit_norm_linear_critic():
    """C(x) = <w, x> with |w| = 1 is 1-Lipschitz with gradient norm exactly 1: the penalty is 0."""
    torch.manual_seed(0)
    w = torch.randn(3 * 2 * 4 * 4)
    w = (w / w.norm()).requires_grad_(True)
    real, fake = sky_clips(5, frames=2, size=4), torch.rand(5, 3, 2, 4, 4) * 2 - 1
    gp = losses.gradient_penalty(lambda x: x.flatten(1) @ w, real, fake)
    assert gp.item() < 1e-10
    doubled = losses.gradient_penalty(lambda x: x.flatten(1) @ (2 * w), real, fake)
    assert doubled.item() == pytest.approx(1.0)  # (|2w| - 1)^2


# -- DDP (gloo, 2 processes): every trainer steps under DistributedDataParallel -----------------
def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for name in MODELS:
            trainer = make_trainer(name, seed=0, optim=OptimConfig(n_critic=2))
            trainer.wrap(lambda m: DDP(m, **no_forward_buffer_sync()))
            batch = {"video": sky_clips(2, seed=10 + rank), "label": torch.tensor([rank, 1])}  # each rank its own data
            torch.manual_seed(100 + rank)
            trainer.run_step(lambda: batch)
            digest = torch.stack([sum(p.double().sum() for p in trainer.nets[k].parameters()) for k in ("G", "D")])
            gathered = [torch.zeros_like(digest) for _ in range(world)]
            dist.all_gather(gathered, digest)
            results[f"{name}/{rank}"] = bool(torch.equal(gathered[0], gathered[1]))
        # both ranks past their last collective before either tears gloo down: a rank that exits
        # while its peer's gloo threads still read the pair's socket can abort the peer (seen once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_trainer_steps_under_ddp():
    """Parameters stay identical across ranks after a step on different data (WGAN-GP's double backward too)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
        results = dict(results)
    assert results == {f"{name}/{rank}": True for name in MODELS for rank in range(2)}
