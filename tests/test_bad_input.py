"""Bad input is refused with one `error:` line (exit 2) naming the key, file, shard or URL, and
the fail-fast cases before Ray starts and before any data or run folder is written
(docs/reliability.md, "Bad input", lists every case with its test)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from data_tools import shard as shard_tool
from data_tools import synth
from data_tools import verify as verify_tool
from ssagan_dist import checkpointing, cli, experiment, predict, storage, train
from ssagan_dist.config import ConfigError
from ssagan_dist.experiment import load_config
from ssagan_dist.data.index import inspect_dataset, read_index

REPO = Path(__file__).resolve().parents[1]
TINY = ["scaling.ranks=1", "loop.batch_size=2", "data.loader_processes=0"]


def _raylets() -> set[int]:
    """Raylets started by this process (a local ray.init spawns them as its children; other
    engineers' Ray clusters on this shared machine are not ours)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if p.name() == "raylet"}


@pytest.fixture
def no_ray_started(tmp_path):
    """Asserts after the test that no Ray session was started and no run folder was written."""
    import ray

    before, was_up = _raylets(), ray.is_initialized()  # (the session's shared Ray may be up)
    yield tmp_path / "runs"
    assert ray.is_initialized() == was_up
    assert not (_raylets() - before), "a raylet was started"
    assert not (tmp_path / "runs").exists(), "a run folder was created"


def run_train(capsys, overrides: list[str], runs: Path, preset: str = "tiny_cpu") -> str:
    """train.main in this process; returns its one error line (asserting exit 2 and one line)."""
    rc = train.main(["--config", preset, *TINY, f"run.storage_path={runs}", "ray.address=local", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def data_args(sky: Path, val: bool = True) -> list[str]:
    return [f"data.train_urls={sky / 'train'}"] + ([f"data.val_urls={sky / 'val'}"] if val else [])


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- train: refused before Ray --------------------------------------------------------------------

@pytest.mark.parametrize("override, names", [
    ("model.args.size=33", "model.args"),
    ("model.args.frames=7", "model.args"),
    ("run.name=..", "run.name"),
    ("run.name=a/b", "run.name"),
    ("optim.lr_g=nan", "optim.lr_g"),
    ("loss.lambda_con=inf", "loss.lambda_con"),
    ("loop.bogus=1", "loop.bogus"),
])
def test_train_config_values_refused(sky, capsys, no_ray_started, override, names):
    assert names in run_train(capsys, [*data_args(sky), override], no_ray_started)


def test_train_malformed_yaml_names_file(tmp_path, capsys, no_ray_started):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  batch_size: [1, 2\n")
    rc = train.main(["--config", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad) in err[0] and "YAML" in err[0]


def test_train_without_data_generates_nothing(tmp_path, capsys, no_ray_started):
    line = run_train(capsys, [], no_ray_started)
    assert "data.train_urls" in line and "data_tools.synth" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no synthetic dataset appeared


def test_train_missing_dataset_names_key(tmp_path, capsys, no_ray_started):
    line = run_train(capsys, [f"data.train_urls={tmp_path / 'nowhere'}"], no_ray_started)
    assert "data.train_urls" in line and "index.json" in line


def test_train_model_size_differs_from_data(sky, capsys, no_ray_started):
    line = run_train(capsys, [*data_args(sky), "model.args.size=64"], no_ray_started)
    assert "model.args" in line and "[3, 8, 32, 32]" in line


def test_train_truncated_shard_named_with_sizes(sky, tmp_path, capsys, no_ray_started):
    data = copy_dataset(sky / "train", tmp_path / "train")
    shard = next(data.glob("*.tar"))
    recorded = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(recorded // 2)
    line = run_train(capsys, [f"data.train_urls={data}"], no_ray_started)
    assert shard.name in line and str(recorded // 2) in line and str(recorded) in line and "data.train_urls" in line


def test_train_index_lying_about_clip_shape(sky, tmp_path, capsys, no_ray_started):
    data = copy_dataset(sky / "train", tmp_path / "train")
    index = json.loads((data / "index.json").read_text())
    index["clip_shape"] = [3, 16, 32, 32]  # the shards hold 8 frames
    (data / "index.json").write_text(json.dumps(index))
    line = run_train(capsys, [f"data.train_urls={data}", "model.args.frames=16"], no_ray_started)
    assert "index.json" in line and "[3, 16, 32, 32]" in line and "[3, 8, 32, 32]" in line


def test_train_set_smaller_than_workers_times_batch(sky, capsys, no_ray_started):
    line = run_train(capsys, [*data_args(sky, val=False), "loop.batch_size=25"], no_ray_started)
    assert "'data.train_urls'" in line and "24 clips" in line and "scaling.ranks=1" in line


def test_train_val_shape_differs(sky, tmp_path, capsys, no_ray_started):
    synth.generate(str(tmp_path / "val16"), clips=4, size=16, frames=8, progress=False)
    line = run_train(capsys, [f"data.train_urls={sky / 'train'}", f"data.val_urls={tmp_path / 'val16'}"],
                     no_ray_started)
    assert "data.val_urls" in line and "[3, 8, 16, 16]" in line


def test_train_gpu_preset_without_gpu_fails_fast(sky, capsys, no_ray_started):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = run_train(capsys, [*data_args(sky), "scaling.use_gpu=true"], no_ray_started)
    assert "scaling.use_gpu" in line and "scaling.ranks" in line and "0 GPUs" in line


def test_train_more_workers_than_cpus_fails_fast(sky, capsys, no_ray_started):
    line = run_train(capsys, [*data_args(sky, val=False), "scaling.ranks=1",
                              "scaling.cpus_per_rank=1024"], no_ray_started)
    assert "scaling.ranks" in line and "scaling.cpus_per_rank" in line


def test_cluster_check_names_keys_after_bounded_wait(monkeypatch):
    """The joined-cluster path (ray.nodes() faked: no cluster to join here): a bounded wait."""
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}}])
    monkeypatch.setenv(train.RESOURCE_WAIT_ENV, "0")
    cfg = load_config("tiny_cpu", ["scaling.use_gpu=true"])
    with pytest.raises(ConfigError, match="scaling.use_gpu.*can place only 0"):
        train.wait_for_resources(cfg, can_grow=True)
    train.wait_for_resources(load_config("tiny_cpu", ["scaling.ranks=4"]), can_grow=True)  # fits: returns


def _tiny_checkpoint(directory: Path, model: str = "ssagan", overrides=()) -> Path:
    cfg = load_config(None, [f"model.name={model}", "model.flavor=tiny", *overrides])
    trainer = experiment.build_trainer(cfg, "cpu")
    directory.mkdir(parents=True)
    checkpointing.write(directory, rank=0, worker_state={}, trainer=trainer, step=1, clip_shape=[3, 8, 32, 32],
                        cfg=cfg)
    return directory


def test_train_missing_stage1_checkpoint(sky, tmp_path, capsys, no_ray_started):
    line = run_train(capsys, [*data_args(sky), "model.name=mdgan_stage2",
                              f"init.stage1_checkpoint={tmp_path / 'no-such-run'}"], no_ray_started, "defaults")
    assert "init.stage1_checkpoint" in line and "no-such-run" in line


def test_train_stage1_checkpoint_of_another_model(sky, tmp_path, capsys, no_ray_started):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", "ssagan")  # G with SSA: not MD-GAN's Stage I
    line = run_train(capsys, [*data_args(sky), "model.name=mdgan_stage2", f"init.stage1_checkpoint={ckpt}"],
                     no_ray_started, "defaults")
    assert "init.stage1_checkpoint" in line and "'ssagan'" in line and "mdgan_stage1" in line


def test_train_unreadable_stage1_checkpoint(sky, tmp_path, capsys, no_ray_started):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"not a checkpoint")
    (ckpt / "config.yaml").write_text("model: {name: mdgan_stage1}\n")
    line = run_train(capsys, [*data_args(sky), "model.name=mdgan_stage2", f"init.stage1_checkpoint={ckpt}"],
                     no_ray_started, "defaults")
    assert "init.stage1_checkpoint" in line and str(ckpt) in line and "cannot be read" in line


def test_train_s3_data_in_missing_bucket(s3_bucket, capsys, no_ray_started):
    endpoint, _ = s3_bucket
    line = run_train(capsys, ["data.train_urls=s3://no-such-bucket-x/sky/train", f"run.s3_endpoint={endpoint}"],
                     no_ray_started)
    assert "bucket 'no-such-bucket-x' does not exist" in line and endpoint in line


# -- data: URL forms, shard sizes, index truth --------------------------------------------------

def test_brace_pattern_without_index_is_scanned(sky, tmp_path):
    data = copy_dataset(sky / "train", tmp_path / "train")
    (data / "index.json").unlink()
    info = inspect_dataset(str(data / "train-{000000..000000}.tar"))
    assert info.clip_shape == [3, 8, 32, 32] and info.clips == 24
    cfg, shape = train.prepare(load_config("tiny_cpu", [f"data.train_urls={data}/train-{{000000..000000}}.tar",
                                                        "scaling.ranks=1"]))
    assert shape == [3, 8, 32, 32]


def test_truncated_shard_without_index_is_named(sky, tmp_path):
    data = copy_dataset(sky / "train", tmp_path / "train")
    (data / "index.json").unlink()
    shard = data / "train-000000.tar"
    with open(shard, "r+b") as f:
        f.truncate(700)
    with pytest.raises(ValueError, match="train-000000.tar"):
        inspect_dataset(str(data / "train-000000.tar"), what="x")


def test_missing_indexed_shard_named(sky, tmp_path):
    data = copy_dataset(sky / "train", tmp_path / "train")
    (data / "train-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="train-000000.tar.*missing"):
        inspect_dataset(str(data))


# -- the one error form ---------------------------------------------------------------------------

@cli.command
def _fails(argv):
    raise ConfigError("config key 'x' = 1: must be 2")


@cli.command
def _bug(argv):
    raise ZeroDivisionError("a bug")


def test_cli_one_line_exit_2(capsys):
    assert _fails([]) == 2
    err = capsys.readouterr().err
    assert err == "error: config key 'x' = 1: must be 2\n"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_debug_shows_traceback(capsys, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert _fails(["--debug"] if how == "flag" else []) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: config key 'x'")


def test_cli_bugs_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        _bug([])


def test_cli_unreachable_endpoint_names_endpoint_and_bucket():
    from botocore.exceptions import EndpointConnectionError

    e = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/my-bucket/data/index.json")
    line = cli.describe(e)
    assert "http://127.0.0.1:9" in line and "'my-bucket'" in line and "run.s3_endpoint" in line


def _clean_s3_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_CONFIG_FILE="/nonexistent", AWS_MAX_ATTEMPTS="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_verify_s3_without_credentials_one_line(s3_bucket):
    endpoint, bucket = s3_bucket
    out = subprocess.run([sys.executable, "-m", "data_tools.verify", f"s3://{bucket}/sky", "--endpoint-url", endpoint],
                         capture_output=True, text=True, env=_clean_s3_env(), cwd=REPO, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: no S3 credentials") and "AWS_ACCESS_KEY_ID" in lines[0]


def test_verify_unreachable_endpoint_one_line(tmp_path):
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "data_tools.verify", "s3://somebucket/sky", "--endpoint-url", endpoint],
                         capture_output=True, text=True, env=_clean_s3_env(AWS_ACCESS_KEY_ID="testing",
                                                                           AWS_SECRET_ACCESS_KEY="testing"),
                         cwd=REPO, timeout=120)
    errors = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr  # (retry warnings may precede it)
    assert out.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in out.stderr
    assert endpoint in errors[0] and "somebucket" in errors[0]


def test_verify_missing_bucket_named(s3_bucket, capsys):
    endpoint, _ = s3_bucket
    assert verify_tool.main(["s3://no-such-bucket-y/sky", "--endpoint-url", endpoint]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bucket 'no-such-bucket-y' does not exist" in err[0]


# -- nothing half-written -------------------------------------------------------------------------

def _frames(root: Path, bad_last: bool) -> Path:
    """Two short videos of 4 JPEG frames; the second's last frame is not an image if bad_last."""
    for vid in ("v1", "v2"):
        folder = root / vid / "s"
        folder.mkdir(parents=True)
        for i in range(1, 5):
            path = folder / f"{vid}_frames_{i}.jpg"
            if bad_last and vid == "v2" and i == 4:
                path.write_bytes(b"not a jpeg")
            else:
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(path)
    return root


def test_failing_shard_leaves_nothing(tmp_path, capsys):
    src = _frames(tmp_path / "src", bad_last=True)
    out = tmp_path / "datasets" / "sky"
    rc = shard_tool.main(["--source", str(src), "--layout", "frames", "--out", str(out), "--size", "8", "--frames",
                          "4", "--shard-clips", "1", "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: cannot decode") and "v2_frames_4.jpg" in err[-1]
    assert not (tmp_path / "datasets").exists()  # not the folder, nor the staging folder beside it


def test_failing_synth_overwrite_keeps_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "sky"
    synth.generate(str(out), clips=3, size=8, frames=2, shard_clips=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = synth.render_clip

    def render_then_fail(params, size, frames):  # a fault injected after two clips
        calls["n"] += 1
        if calls["n"] > 2:
            raise ValueError("injected failure")
        return real(params, size, frames)

    monkeypatch.setattr(synth, "render_clip", render_then_fail)
    rc = synth.main(["--out", str(out), "--clips", "4", "--size", "8", "--frames", "2", "--shard-clips", "1",
                     "--overwrite", "--no-progress"])
    assert rc == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sky"]  # no staging folder left


def test_synth_into_existing_dataset(tmp_path, capsys):
    synth.generate(str(tmp_path / "sky"), clips=1, size=8, frames=2, progress=False)
    assert synth.main(["--out", str(tmp_path / "sky"), "--clips", "1", "--size", "8", "--frames", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a dataset" in err[0] and "--overwrite" in err[0]


def test_s3_publication_complete_and_failure_leaves_nothing(s3_bucket, tmp_path, capsys):
    import s3fs

    endpoint, bucket = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    index = synth.generate(f"s3://{bucket}/sky", clips=2, size=8, frames=2, shard_clips=1, endpoint_url=endpoint,
                           progress=False)
    assert read_index(f"s3://{bucket}/sky", endpoint)["total_clips"] == index["total_clips"] == 2
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(bucket)) == ["sky"]  # no staging prefix left
    src = _frames(tmp_path / "src", bad_last=True)
    rc = shard_tool.main(["--source", str(src), "--layout", "frames", "--out", f"s3://{bucket}/bad", "--size", "8",
                          "--frames", "4", "--shard-clips", "1", "--workers", "1", "--no-progress",
                          "--endpoint-url", endpoint])
    assert rc == 2
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(bucket)) == ["sky"]


# -- predict: photos as they come -----------------------------------------------------------------

def test_predict_16_bit_grey_matches_8_bit(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    p16, p8 = predict.load_photo(str(tmp_path / "g16.png"), 32), predict.load_photo(str(tmp_path / "g8.png"), 32)
    assert (p16 - p8).abs().max() < 0.02 and abs(p16.mean()) < 0.05  # a ramp, not an almost white frame


def test_predict_palette_and_alpha(tmp_path):
    rgb = Image.new("RGB", (16, 16), (200, 40, 10))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent: composited over white
    rgba.save(tmp_path / "a.png")
    want = torch.tensor([200, 40, 10]).float().div(127.5).sub(1)
    assert torch.allclose(predict.load_photo(str(tmp_path / "p.png"), 8)[:, 4, 4], want, atol=0.02)
    assert torch.allclose(predict.load_photo(str(tmp_path / "a.png"), 8), torch.ones(3, 8, 8), atol=0.01)
    Image.new("L", (16, 16), 128).save(tmp_path / "l.png")
    assert torch.allclose(predict.load_photo(str(tmp_path / "l.png"), 8), torch.full((3, 8, 8), 128 / 127.5 - 1),
                          atol=0.01)


def test_predict_tiny_photo_warns(tmp_path, capsys):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    assert predict.load_photo(str(tmp_path / "one.png"), 32).shape == (3, 32, 32)
    assert "1x1, far below the model's 32x32" in capsys.readouterr().err


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb never gets decoded here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt")


@pytest.mark.parametrize("case", ["bomb", "not-an-image", "missing", "bad-out"])
def test_predict_bad_input_one_line(tiny_ckpt, tmp_path, capsys, case):
    image = tmp_path / "in.png"
    if case == "bomb":
        _png_header_only(image, 40000, 40000)
    elif case == "not-an-image":
        image.write_text("hello")
    out = tmp_path / ("out.txt" if case == "bad-out" else "out.gif")
    rc = predict.main(["--checkpoint", str(tiny_ckpt), "--image", str(image), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert (str(out) if case == "bad-out" else str(image)) in err[0]
    if case == "bomb":
        assert "megapixel" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("damage", ["model.pt", "config.yaml"])
def test_a_damaged_checkpoint_is_named_by_its_own_path_not_a_temporary_copy(sky, tmp_path, capsys, damage):
    """evaluate/predict copy a checkpoint to a temporary folder to read it; the error names the
    file the user gave (a run folder resolves to its checkpoint), never that copy."""
    from ssagan_dist import evaluate

    run = tmp_path / "run"
    ckpt = _tiny_checkpoint(run / "checkpoint_000000001")
    path = ckpt / damage
    if damage == "model.pt":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a save cut short
    else:
        path.write_text("model: {name: [unclosed\n")
    for command, argv in ((evaluate.main, ["--checkpoint", str(run), "--data", str(sky / "val"), "--device", "cpu"]),
                          (predict.main, ["--checkpoint", str(ckpt), "--from-data", str(sky / "val"),
                                          "--out", str(tmp_path / "p.gif"), "--device", "cpu"])):
        assert command(argv) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: checkpoint file {path} cannot be read"), line
        assert tempfile.gettempdir() not in line.replace(str(tmp_path), ""), line


def test_a_damaged_checkpoint_on_s3_is_named_by_its_url(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    url = f"s3://{bucket}/run/checkpoint_000000001"
    for name in ("model.pt", "config.yaml"):
        data = (ckpt / name).read_bytes()
        storage.write_bytes_atomic(f"{url}/{name}", data[:100] if name == "model.pt" else data, endpoint)
    with pytest.raises(checkpointing.DamagedCheckpoint, match=f"^checkpoint file {url}/model.pt cannot be read"):
        experiment.load_trainer(f"s3://{bucket}/run", endpoint_url=endpoint)
    with pytest.raises(checkpointing.DamagedCheckpoint, match=f"^checkpoint file {url}/model.pt cannot be read"):
        checkpointing.load_for_worker(url, 0, "ssagan", endpoint_url=endpoint)


def _train_subprocess(sky: Path, tmp_path: Path, extra: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    runs = tmp_path / "runs"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(REPO), **env}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ssagan_dist.train", "--config", "tiny_cpu", *TINY, *data_args(sky),
                             f"run.storage_path={runs}", *extra], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env=env)
    assert not runs.exists(), "a run folder was created"
    return result, time.monotonic() - start


def test_a_dead_clusters_recorded_address_is_reported_at_once(sky, tmp_path):
    """A `ray start` head that died leaves its address in Ray's ray_current_cluster file; train
    with no address given used to wait on it for 13 minutes. Ray's temp dir is this test's own
    (RAY_TMPDIR), so the machine's real file, and any cluster running here, are not touched."""
    from tests.conftest import free_port

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    result, took = _train_subprocess(sky, tmp_path, [], {"RAY_TMPDIR": str(tmp_path)})
    # (Ray itself may warn first that other clusters run on this machine)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert line.startswith(f"error: no Ray cluster answers at {dead} (Ray's recorded address in "
                           f"{tmp_path / 'ray' / 'ray_current_cluster'}"), line
    assert "ray start --head" in line and "ray.address=local" in line
    # the probe waits 3 s; the rest is Python importing torch and Ray, 5-25 s on a loaded 2-core
    # machine (more on a slower CPU). Ray's own wait on a dead head was 13 minutes.
    assert took < 45


def test_an_explicit_address_that_does_not_answer_fails_after_a_bounded_printed_wait(sky, tmp_path):
    from tests.conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    result, took = _train_subprocess(sky, tmp_path, [f"ray.address={dead}"],
                                     {"RAY_TMPDIR": str(tmp_path), "SSAGAN_RAY_CONNECT_WAIT_S": "3"})
    waiting, error = result.stderr.strip().splitlines()[-2:]
    assert result.returncode == 2, result.stderr
    assert waiting == (f"[ray] {dead} (ray.address = '{dead}') does not answer yet; waiting up to 3 s "
                       "(SSAGAN_RAY_CONNECT_WAIT_S)")
    assert error == (f"error: no Ray cluster answers at {dead} (ray.address = '{dead}') after 3 s: start it, "
                     "or fix the address (SSAGAN_RAY_CONNECT_WAIT_S sets the wait)")
    assert took < 45  # 3 s asked for; unheeded, the default wait alone would be 60 s (+ the start)
