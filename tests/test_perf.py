"""The speed switches (ssagan_dist/perf.py): the GPU code path run on CPU where it applies
(bf16 autocast, channels_last_3d, the fp16 gradient scaler, DDP bucket options on a real gloo
group, torch.compile), and switches off = exactly the trainer as built before them.

Not runnable here (no GPU): fp16 autocast on CUDA, pinned-memory copies; config validation
refuses those without scaling.use_gpu, tested below."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ssagan_dist import checkpointing, experiment, perf
from ssagan_dist.config import ConfigError, PerfConfig
from ssagan_dist.experiment import dump, load_config
from ssagan_dist.data import pin_memory
from ssagan_dist.models.registry import constructor_args

# One model per trainer kind, at tiny size; refine models need a (never read here) Stage-I URI.
MODELS = {"ssagan": [], "mdgan_stage2": ["init.stage1_checkpoint=unused"], "hrvgan": [], "pix2pix_video": [],
          "video3d_gan": []}


def _build(model: str, *overrides: str):
    extra = MODELS.get(model, [])
    cfg = load_config(None, [f"model.name={model}", "model.flavor=tiny", "loop.batch_size=2",
                             "optim.n_critic=1", *extra, *overrides])
    torch.manual_seed(0)
    return cfg, perf.apply(experiment.build_trainer(cfg, "cpu"), cfg.perf)


def _batches(cfg, n: int):
    args = constructor_args(cfg.model.name, cfg.model.flavor, dict(cfg.model.args))
    gen = torch.Generator().manual_seed(1)
    shape = (cfg.loop.batch_size, 3, args["frames"], args["size"], args["size"])
    batches = [{"video": torch.rand(shape, generator=gen) * 2 - 1,
                "label": torch.zeros(cfg.loop.batch_size, dtype=torch.int64)} for _ in range(n)]
    return iter(batches)


def _first_conv(net):
    return next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and max(m.kernel_size) > 1)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bf16_channels_last_step_on_cpu_has_finite_losses(model):
    """What perf.apply controls, on any CPU: every conv's weights and every 5-D batch tensor the
    trainer moves are channels-last, the convs run under bf16 autocast, the master weights stay
    float32. Not the layout a conv's *input* has deeper in the network: that is whatever the
    previous kernel wrote, and oneDNN picks different kernels on different CPUs (an AVX2-only
    EPYC keeps some activations contiguous where an AVX-512 Xeon does not)."""
    cfg, trainer = _build(model, "perf.autocast=bf16", "perf.channels_last=true")
    assert trainer.autocast_dtype == torch.bfloat16
    assert trainer.input_memory_format == torch.channels_last_3d
    seen = {}
    conv = _first_conv(trainer.nets["D"])  # D sees the batch's clips (or frames of them)
    conv.register_forward_hook(lambda m, inputs, out: seen.update(out_dtype=out.dtype))
    moved = []
    to_device = trainer._to_device  # what the trainer does with every batch tensor it takes

    def recording(v):
        out = to_device(v)
        moved.append(out)
        return out

    trainer._to_device = recording
    before = checkpointing.state_digest(trainer)
    batches = _batches(cfg, 8)
    for _ in range(2):
        stats = trainer.run_step(batches)
    assert stats and all(torch.isfinite(v).all() for v in stats.values()), stats
    assert seen["out_dtype"] == torch.bfloat16  # autocast really ran the convs in bf16
    clips = [t for t in moved if t.dim() == 5]
    assert clips and all(t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()
                         for t in clips)  # 3 colour channels: channels-last is not also contiguous
    weights = [m.weight for net in trainer.nets.values() for m in net.modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() in (4, 5)]
    assert weights and all(w.is_contiguous(memory_format=perf.channels_last_format(w.dim())) for w in weights)
    assert not conv.weight.is_contiguous()  # a k>1 kernel: really converted, not trivially both
    assert all(p.dtype == torch.float32 for net in trainer.nets.values() for p in net.parameters())  # master weights
    assert checkpointing.state_digest(trainer) != before  # it trained


def test_switches_off_is_the_trainer_as_built():
    """Default switches: the same weights, statistics and optimizer state, bit for bit, as a
    trainer that never went through perf.apply."""
    cfg = load_config("tiny_cpu", ["loop.batch_size=2"])
    assert cfg.perf == PerfConfig() and dump(cfg).count("perf:") == 1
    results = []
    for use_perf in (False, True):
        torch.manual_seed(0)
        trainer = experiment.build_trainer(cfg, "cpu")
        if use_perf:
            perf.apply(trainer, cfg.perf)
        batches = _batches(cfg, 6)
        stats = [trainer.run_step(batches) for _ in range(3)]
        results.append((checkpointing.state_digest(trainer), [{k: v.item() for k, v in s.items()} for s in stats]))
        assert trainer.autocast_dtype is None and not trainer.grad_scalers
    assert results[0] == results[1]


def test_fp16_gradient_scaler_path_runs_and_round_trips():
    """fp16 needs a GPU in training (refused otherwise); its code path in run_step, the gradient
    scaler, runs here with CPU fp16 autocast and CPU scalers."""
    cfg, trainer = _build("ssagan")
    trainer.autocast_dtype = torch.float16
    trainer.grad_scalers = {k: torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) for k in trainer.trained}
    batches = _batches(cfg, 4)
    stats = [trainer.run_step(batches) for _ in range(2)][-1]
    assert all(torch.isfinite(v).all() for v in stats.values()), stats
    state = trainer.state_dict()
    assert set(state["grad_scalers"]) == set(trainer.trained)
    _, other = _build("ssagan")
    other.grad_scalers = {k: torch.amp.GradScaler("cpu") for k in other.trained}
    other.load_state_dict(state)
    assert {k: s.get_scale() for k, s in other.grad_scalers.items()} == \
           {k: s.get_scale() for k, s in trainer.grad_scalers.items()}


def test_ddp_options_reach_a_real_ddp(tmp_path):
    """The DDP arguments of a training worker (train._wrap_for_ddp): the perf options, and no
    buffer broadcast in forward (two D forwards per backward) asked for without torch's
    FutureWarning for the old broadcast_buffers name."""
    import warnings

    from ssagan_dist import parallel

    cfg = load_config("tiny_cpu", ["ddp.bucket_cap_mb=1", "ddp.gradient_as_bucket_view=true"])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = experiment.build_networks(cfg)["D"]
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            ddp = DistributedDataParallel(net, **parallel.ddp_kwargs(cfg.ddp))
        assert not ddp.broadcast_buffers  # torch 2.13: the same flag as forward_sync_buffers
        assert ddp.bucket_bytes_cap == 1 * 1024 * 1024
        assert ddp.gradient_as_bucket_view
        ddp(torch.rand(2, 3, 8, 32, 32))[0].sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("overrides, key", [
    (["perf.autocast=fp32"], "perf.autocast"),
    (["perf.autocast=fp16"], "perf.autocast"),  # no GPU
    (["ddp.bucket_cap_mb=0"], "ddp.bucket_cap_mb"),
    (["scaling.ranks=1", "ddp.gradient_as_bucket_view=true"], "ddp.gradient_as_bucket_view"),
    (["data.pin_memory=true"], "data.pin_memory"),  # no GPU to copy to
    (["perf.channel_last=true"], "perf.channel_last"),
    (["perf.attention=flash"], "perf.attention"),
])
def test_bad_or_idle_switch_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("tiny_cpu", overrides)


def test_gpu_only_switches_accepted_with_a_gpu_config():
    cfg = load_config("tiny_cpu", ["scaling.use_gpu=true", "perf.autocast=fp16", "data.pin_memory=true"])
    assert pin_memory(cfg.data, torch.device("cuda")) and cfg.perf.autocast == "fp16"
    assert not pin_memory(cfg.data, torch.device("cpu"))
    assert not pin_memory(load_config("tiny_cpu").data, torch.device("cuda"))


@pytest.mark.slow  # inductor compiles C++ for every graph: about 2 minutes on 2 shared cores
def test_compile_step_on_cpu_matches_eager_closely():
    cfg, eager = _build("ssagan")
    _, compiled = _build("ssagan", "perf.compile=true")
    a = eager.run_step(_batches(cfg, 2))
    b = compiled.run_step(_batches(cfg, 2))
    assert set(compiled.nets["G"].state_dict()) == set(eager.nets["G"].state_dict())  # checkpoints unchanged
    for k in a:
        assert torch.isfinite(b[k]) and torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), (k, a[k], b[k])


def test_attention_switch_forces_every_ssa_layer():
    from ssagan_dist.models.attention import SpatialSelfAttention

    for kernel in ("auto", "sdpa", "saved_probs"):
        _, trainer = _build("ssagan", f"perf.attention={kernel}")
        layers = [m for m in trainer.nets["G"].modules() if isinstance(m, SpatialSelfAttention)]
        assert layers and {m.kernel for m in layers} == {kernel}


def test_step_benchmark_shared_path_on_cpu():
    """`bench step`'s measurement loop (shared by its CPU and CUDA runs: only the timer and the
    CUDA memory readings differ, and no GPU is here) on tiny_cpu, two variants, two rounds."""
    from ssagan_dist.bench import step

    peak = step.MatmulPeak(n=256, device="cpu")
    peak.sample(2)
    rows = step.measure_model("tiny_cpu", "tiny_cpu", [], peak, rounds=2, warmup=1,
                              variants={"off": [], "bf16": ["perf.autocast=bf16"]})
    assert [r["variant"] for r in rows] == ["off", "bf16"]
    off, bf16 = rows
    assert off["speedup"] == 1.0 and off["device"] == "cpu" and off["timed_steps"] == 2
    assert off["gflop_per_step"] == bf16["gflop_per_step"] > 0  # counted once, on the switch-off variant
    for row in rows:
        assert row["finite_losses"] and row["step_ms"] >= row["step_ms_min"] > 0
        assert row["clips_per_s"] > 0 and row["mfu_percent"] > 0
        assert "cuda_max_memory_allocated_mib" not in row
    assert step.StepTimer("cpu")(lambda: torch.ones(8).sum()) > 0


@pytest.mark.parametrize("model", ["hrvgan", "mdgan_stage1", "pix2pix_video"])
def test_the_attention_switch_is_refused_for_a_model_without_attention(model):
    with pytest.raises(ConfigError, match=rf"perf[.]attention.*{model}.*no spatial self-attention"):
        load_config("defaults", [f"model.name={model}", "perf.attention=sdpa"])
    assert load_config("defaults", ["model.name=ssagan_a", "perf.attention=sdpa"]).perf.attention == "sdpa"
