import json
import sys

import pytest
import torch

from ssagan_dist.models import registry
from ssagan_dist.models.__main__ import main
from ssagan_dist.models.attention import SpatialSelfAttention
from ssagan_dist.models.flops import forward_flops

KEYS = {"generator_params", "discriminator_params", "generator_gflops_per_clip", "input_shapes", "output_shape"}


def run_cli(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ssa_flops_are_counted_exactly():
    n, c, t, h, w = 1, 8, 4, 8, 8
    flops, _ = forward_flops(SpatialSelfAttention(c), (torch.randn(n, c, t, h, w),))
    positions, d = h * w, c * t
    convs = 3 * 2 * c * c * t * positions  # query, key, value 1×1×1 convs
    attention = 2 * (2 * positions * positions * d)  # QKᵀ and AV, 2 FLOPs per MAC
    assert flops == convs + attention


@pytest.mark.parametrize("name", registry.names())
def test_every_model_reports_at_tiny_preset(name, capsys):
    out = run_cli(capsys, "--model", name)
    assert KEYS <= set(out)
    assert out["generator_params"] > 0 and out["discriminator_params"] > 0
    assert out["generator_gflops_per_clip"] > 0
    assert all(isinstance(s, list) for s in out["input_shapes"])


def test_overrides_and_table(capsys):
    out = run_cli(capsys, "--model", "mdgan_stage1", "frames=16", "base_width=4")
    assert out["args"]["frames"] == 16 and out["input_shapes"] == [[1, 3, 16, 32, 32]]
    assert main(["--model", "ssagan"]) == 0
    table = capsys.readouterr().out
    assert "generator_params" in table and "161,543" in table


@pytest.mark.parametrize("argv,message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "ssagan", "bogus=1"], "bogus"),
    (["--model", "ssagan", "size"], "key=value"),
    (["--model", "ssagan", "frames=6"], "frames = 6"),
])
def test_bad_input_names_the_problem(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_module_entry_point(capsys, monkeypatch):
    """`python -m ssagan_dist.models`, as runpy runs it (in this interpreter: a fresh one would
    spend its time importing torch; tests/test_structure.py imports every module afresh)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["ssagan_dist.models", "--model", "mdgan_stage1", "--json"])
    monkeypatch.delitem(sys.modules, "ssagan_dist.models.__main__")  # imported above: run it as a fresh __main__
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("ssagan_dist.models", run_name="__main__", alter_sys=True)
    assert exited.value.code == 0
    assert json.loads(capsys.readouterr().out)["generator_params"] == 149_968


@pytest.mark.slow
def test_paper_numbers(capsys):
    s1 = run_cli(capsys, "--model", "mdgan_stage1", "--flavor", "paper")
    assert s1["generator_params"] == 39_072_576
    assert s1["input_shapes"] == [[1, 3, 32, 128, 128]] and s1["output_shape"] == [1, 3, 32, 128, 128]
    ssa = run_cli(capsys, "--model", "ssagan", "--flavor", "paper")
    assert 160 < ssa["generator_gflops_per_clip"] < 176  # about 168 GFLOP per clip (docs/models.md)
