"""Trust boundaries of a sweep folder (docs/reliability.md, "Trust boundaries"): Ray Tune's state in
it is pickles, so whoever can write the folder could run code on the sweep driver.

- ``tune report`` (and everything in tune/results.py) reads results as plain JSON and CSV: a
  planted pickle is never executed;
- a sweep is restored only from state this machine's sweeps signed (tune/trust.py): a planted or
  changed pickle, a missing manifest, a manifest under another key are refused in one line;
- a sweep's ``--name`` is one folder name (the rule ``run.name`` follows).

Planted pickles here touch a marker file when unpickled; every test asserts the marker is absent.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import pickle
import stat
from pathlib import Path

import pytest

from ssagan_dist import storage
from ssagan_dist.tune import results, trust
from ssagan_dist.tune.__main__ import main as tune_main


class Planted:
    """Unpickling this touches ``marker``: what a writer of the sweep folder could make the driver run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def planted(marker: Path) -> bytes:
    return pickle.dumps(Planted(marker))


@pytest.fixture
def sweep_key(tmp_path, monkeypatch) -> Path:
    """This test's own signing key file (never the user's ~/.config one)."""
    path = tmp_path / "keys" / "sweep.key"
    monkeypatch.setenv(trust.KEY_ENV, str(path))
    return path


TRIAL_ID = "ab12c_00000"
TRIAL_DIR = f"SweepTrial_{TRIAL_ID}_0_optim_lr_g=0.0010_2026-01-01_00-00-00"
OTHER_ID = "ab12c_00001"
OTHER_DIR = f"SweepTrial_{OTHER_ID}_1_optim_lr_g=0.0001_2026-01-01_00-00-10"


def make_sweep_folder(root: Path, marker: Path) -> Path:
    """A sweep folder as Ray 2.60 leaves it (names and layout), each of Tune's pickles replaced by one
    that touches ``marker``: tuner.pkl, cloudpickled fields of the experiment state, the variant
    generator's state, and the trials' params.pkl. Trial 0 reports through result.json, trial 1
    (an older Tune's layout) through progress.csv only."""
    sweep = root / "planted"
    sweep.mkdir(parents=True)
    payload = planted(marker)
    fallback = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
    (sweep / "tuner.pkl").write_bytes(payload)
    (sweep / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(payload)
    trial_state = [[json.dumps({"trial_id": tid, "status": status, "relative_logdir": folder, "storage": fallback}),
                    json.dumps({"checkpoint_manager": fallback})]
                   for tid, status, folder in ((TRIAL_ID, "TERMINATED", TRIAL_DIR), (OTHER_ID, "TERMINATED", OTHER_DIR))]
    (sweep / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": trial_state, "runner_data": {"_stopper": fallback}, "stats": {"start_time": 0}}))
    (sweep / results.SWEEP_FILE).write_text(json.dumps(
        {"experiment": "planted", "config": "tiny_cpu", "metric": "val/psnr", "mode": "max", "algorithm": "grid",
         "scheduler": {"name": "none"}, "space": {"optim.lr_g": {"grid": [1e-3, 1e-4]}}, "max_steps": 4,
         "val_every": 2}))
    for tid, folder, lr, psnrs in ((TRIAL_ID, TRIAL_DIR, 1e-3, (20.0, 24.0)), (OTHER_ID, OTHER_DIR, 1e-4, (21.0, 22.0))):
        trial = sweep / folder
        trial.mkdir()
        (trial / "params.pkl").write_bytes(payload)
        (trial / "params.json").write_text(json.dumps({"optim.lr_g": lr}))
        rows = []
        for step, psnr in zip((2, 4), psnrs):
            ckpt = sweep / "train_runs" / f"{tid}-g000" / f"checkpoint_{step:09d}"
            ckpt.mkdir(parents=True)
            (ckpt / "model.pt").write_bytes(b"")
            rows.append({"step": step, "val/psnr": psnr, "val/baseline_psnr": 23.0, "hp/optim.lr_g": lr,
                         "checkpoint_uri": str(ckpt), "done": step == 4, "trial_id": tid,
                         "config": {"optim.lr_g": lr}})
        if tid == TRIAL_ID:
            (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            flat = [{k: v for k, v in r.items() if k != "config"} for r in rows]
            with open(trial / "progress.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(flat[0]))
                writer.writeheader()
                writer.writerows(flat)
    return sweep


# -- reading results: plain JSON and CSV --------------------------------------------------------------

def test_tune_report_of_a_folder_with_planted_pickles_unpickles_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    sweep = make_sweep_folder(tmp_path, marker)

    trials = results.load_trials(str(sweep))
    assert not marker.exists()
    assert [(t.trial_id, t.tune_status, [r["step"] for r in t.results]) for t in trials] == [
        (TRIAL_ID, "TERMINATED", [2, 4]), (OTHER_ID, "TERMINATED", [2, 4])]
    assert trials[0].results[1]["config/optim.lr_g"] == 1e-3  # result.json's nested config, flattened
    assert trials[1].results[1]["val/psnr"] == 22.0 and trials[1].results[1]["done"] is True  # from progress.csv

    assert tune_main(["report", str(sweep)]) == 0
    assert not marker.exists(), "tune report unpickled a planted pickle"
    assert "report.html" in capsys.readouterr().out
    rows = {r["trial_id"]: r for r in csv.DictReader((sweep / "trials.csv").open())}
    assert rows[TRIAL_ID]["best val/psnr"] == "24.0" and rows[TRIAL_ID]["status"] == "finished"
    assert f"Trial <b>{TRIAL_ID}</b>" in (sweep / "report.html").read_text()


def test_trials_are_found_by_their_folders_without_an_experiment_state(tmp_path):
    marker = tmp_path / "pwned"
    sweep = make_sweep_folder(tmp_path, marker)
    for state in sweep.glob("experiment_state-*.json"):
        state.write_text("{not json")  # being rewritten, or not Tune's
    trials = {t.trial_id: t for t in results.load_trials(str(sweep))}
    assert set(trials) == {TRIAL_ID, OTHER_ID} and trials[TRIAL_ID].tune_status == "TERMINATED"
    assert results.find_best(list(trials.values()), "val/psnr", "max", ["optim.lr_g"], None).trial_id == TRIAL_ID
    assert not marker.exists()


# -- restoring: only what this machine signed --------------------------------------------------------

def sign_as_is(sweep_url: str, endpoint=None) -> None:
    """Sign a folder's Tune state as it is (what a sweep's signer would have written)."""
    trust.write_manifest(sweep_url, {rel: [d] for rel, d in trust.storage_digests(sweep_url, endpoint).items()},
                         endpoint)


def refused(sweep_url: str, endpoint=None) -> str:
    with pytest.raises(trust.UntrustedSweepState) as e:
        trust.check_restorable(sweep_url, endpoint)
    message = str(e.value)
    assert "\n" not in message and sweep_url in message and "another --name" in message
    return message


def test_restore_is_refused_unless_every_tune_pickle_is_signed(tmp_path, sweep_key):
    marker = tmp_path / "pwned"
    sweep = make_sweep_folder(tmp_path, marker)
    url = str(sweep)
    assert {"tuner.pkl", "experiment_state-2026-01-01_00-00-00.json", "basic-variant-state-2026-01-01_00-00-00.json",
            f"{TRIAL_DIR}/params.pkl"} <= set(trust.storage_digests(url))
    assert "sweep.json" not in trust.storage_digests(url)  # ours, read as plain JSON

    assert f"no {trust.MANIFEST_FILE}" in refused(url)  # a folder no sweep of this machine signed

    sign_as_is(url)
    assert set(trust.check_restorable(url)) >= {"tuner.pkl", f"{TRIAL_DIR}/params.pkl"}
    assert oct(sweep_key.stat().st_mode & 0o777) == "0o600"
    assert oct(sweep_key.parent.stat().st_mode & 0o777) == "0o700"

    original = (sweep / "tuner.pkl").read_bytes()
    (sweep / "tuner.pkl").write_bytes(original + b".")
    assert "changed since the sweep signed it: tuner.pkl" in refused(url)
    (sweep / "tuner.pkl").write_bytes(original)
    trust.check_restorable(url)

    dropped = sweep / TRIAL_DIR / "checkpoint_000001" / "_dict_checkpoint.pkl"  # Tune unpickles it on restore
    dropped.parent.mkdir()
    dropped.write_bytes(planted(marker))
    assert f"never signed: {TRIAL_DIR}/checkpoint_000001/_dict_checkpoint.pkl" in refused(url)
    dropped.unlink()
    (sweep / "callback-states-2026-01-01_00-00-00.pkl").write_bytes(planted(marker))
    assert "never signed: callback-states-2026-01-01_00-00-00.pkl" in refused(url)
    (sweep / "callback-states-2026-01-01_00-00-00.pkl").unlink()

    manifest = json.loads((sweep / trust.MANIFEST_FILE).read_text())  # a writer re-signs without the key
    manifest["payload"]["files"]["tuner.pkl"] = [hashlib.sha256(b"evil").hexdigest()]
    (sweep / trust.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert "signature does not match the key" in refused(url)
    assert not marker.exists()


def test_a_manifest_under_another_key_or_without_a_key_is_refused(tmp_path, sweep_key, monkeypatch):
    sweep = make_sweep_folder(tmp_path, tmp_path / "pwned")
    sign_as_is(str(sweep))
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "other" / "sweep.key"))
    assert "a key this machine does not have" in refused(str(sweep))
    trust.load_key(create=True)
    assert "signature does not match the key" in refused(str(sweep))
    monkeypatch.setenv(trust.KEY_ENV, str(sweep_key))
    trust.check_restorable(str(sweep))
    sweep_key.chmod(0o622)
    with pytest.raises(trust.UntrustedSweepState, match="writable by other users"):
        trust.check_restorable(str(sweep))


def test_a_killed_driver_leaves_a_restorable_folder_whatever_version_was_uploaded(tmp_path, sweep_key):
    """The signer signs what Tune staged before Tune uploads it, and keeps earlier versions: storage
    holding the previous version of a file (a driver killed before or during the upload) restores."""
    sweep = tmp_path / "sweep"
    staging = tmp_path / "staging"
    for d in (sweep, staging / TRIAL_DIR):
        d.mkdir(parents=True)
    (sweep / "tuner.pkl").write_bytes(b"tuner")
    trust.sign_storage_files(str(sweep), ["tuner.pkl"])
    signer = trust.ManifestSigner(str(sweep), None)
    signer.setup()
    signer.staging = staging
    for version in (1, 2):
        (staging / "experiment_state-x.json").write_text(f'{{"v": {version}}}')
        (staging / TRIAL_DIR / "params.pkl").write_bytes(b"params")
        (staging / "tmp-searcher-state-x.pkl").write_bytes(b"half written")
        assert signer.get_state() is None  # stateless: Tune writes no callback-states file for it
        if version == 1:  # Tune uploads version 1; version 2 is staged and signed, never uploaded
            for name in ("experiment_state-x.json", f"{TRIAL_DIR}/params.pkl"):
                (sweep / name).parent.mkdir(exist_ok=True)
                (sweep / name).write_bytes((staging / name).read_bytes())
    assert trust.check_restorable(str(sweep))["experiment_state-x.json"][0] == hashlib.sha256(b'{"v": 2}').hexdigest()
    assert trust.unsigned_files(str(sweep)) == []
    # a pickled signer (tuner.pkl keeps the callbacks) carries no state: setup reads the manifest
    restored = pickle.loads(pickle.dumps(signer))
    assert restored.files == {} and restored.staging is None
    restored.setup()
    assert restored.files == signer.files


def test_restore_check_on_s3(s3_bucket, tmp_path, sweep_key):
    endpoint, bucket = s3_bucket
    marker = tmp_path / "pwned"
    url = f"s3://{bucket}/runs/planted"
    local = make_sweep_folder(tmp_path / "local", marker)
    for path in local.rglob("*"):
        if path.is_file() and "train_runs" not in path.parts:
            storage.write_bytes_atomic(f"{url}/{path.relative_to(local).as_posix()}", path.read_bytes(), endpoint)
    assert "no tune-state.manifest" in refused(url, endpoint)
    sign_as_is(url, endpoint)
    trust.check_restorable(url, endpoint)
    storage.write_bytes_atomic(f"{url}/experiment_state-2026-01-01_00-00-00.json", b"{}", endpoint)
    assert "changed since the sweep signed it: experiment_state-2026-01-01_00-00-00.json" in refused(url, endpoint)
    assert [t.trial_id for t in results.load_trials(url, endpoint)] == [TRIAL_ID, OTHER_ID]  # by their folders
    assert not marker.exists()


def sweep_args(sky: Path, storage_path: Path, *extra: str) -> list[str]:
    return ["--config", "tiny_cpu", "--sweep", "tiny_asha", f"data.train_urls={sky / 'train'}",
            f"data.val_urls={sky / 'val'}", f"run.storage_path={storage_path}", *extra]


def test_a_sweep_over_planted_state_is_refused_before_ray_starts(sky, tmp_path, sweep_key, ray_must_not_start,
                                                                  capsys):
    marker = tmp_path / "pwned"
    runs = tmp_path / "runs"
    make_sweep_folder(runs, marker)  # runs/planted
    assert tune_main(sweep_args(sky, runs, "--name", "planted")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: sweep folder {runs / 'planted'} holds Tune state")
    assert "start a new sweep with another --name" in err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "abc\n", ".hidden", "-flag", "a..b", "x" * 129])
def test_a_sweep_name_must_be_one_folder_name(sky, tmp_path, name, ray_must_not_start, capsys):
    assert tune_main(sweep_args(sky, tmp_path / "runs", f"--name={name}")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: sweep name {name!r} (--name") and err.count("\n") == 1
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_a_sweep_file_holding_an_interpolation_is_refused(tmp_path):
    from ssagan_dist.tune import sweep as sweeps

    path = tmp_path / "s.yaml"
    path.write_text("metric: val/psnr\nspace: {optim.lr_g: {choice: [1.0e-3]}}\n"
                    "overrides: [loop.max_steps=4, 'data.train_urls=${oc.env:AWS_SECRET_ACCESS_KEY}']\n")
    with pytest.raises(sweeps.SweepError, match=rf"sweep file {path} field 'overrides\[1\]': holds an interpolation"):
        sweeps.load_sweep(str(path))


# -- a real sweep: signed as it runs, resumed, refused once changed -------------------------------------

ONE_TRIAL = """\
metric: val/mse
mode: min
search: {algorithm: grid}
space: {optim.lr_g: {grid: [1.0e-3]}}
overrides: [scaling.ranks=1, scaling.cpus_per_rank=0.5, loop.batch_size=2, loop.max_steps=4,
            loop.val_every=2, loop.val_batches=1, loop.log_every=2, data.loader_processes=0, optim.n_critic=1,
            checkpoint.keep=1]
driver_cpus: 0.1
max_concurrent_trials: 1
report_timeout_s: 300
"""


@pytest.mark.slow  # a one-trial sweep, then two more starts of it: about two minutes
def test_a_real_sweep_is_signed_resumes_and_is_refused_once_its_state_changed(sky, tmp_path, sweep_key):
    from ssagan_dist import checkpointing, config
    from tests.test_tune import run_sweep, sweep_cmd

    (tmp_path / "one.yaml").write_text(ONE_TRIAL)
    args = sweep_cmd(sky, tmp_path, str(tmp_path / "one.yaml"), "--name", "signed", "--no-report")
    sweep = tmp_path / "signed"
    first = run_sweep(args)
    assert first.returncode == 0, first.stdout[-3000:]
    assert "warning" not in first.stdout
    signed = trust.check_restorable(str(sweep))
    assert "tuner.pkl" in signed and any(rel.startswith("experiment_state-") for rel in signed)
    assert not list(sweep.glob("callback-states-*.pkl"))  # the signer is stateless
    # min mode: each Train run ranks its checkpoints by the sweep's metric and mode (checkpoint.best_mode),
    # so retention (checkpoint.keep=1 besides the latest) kept the lowest val/mse
    [run_config] = [config.read_yaml(p) for p in sweep.glob("train_runs/*/config.yaml")]
    assert (run_config["checkpoint"]["best_metric"], run_config["checkpoint"]["best_mode"]) == ("val/mse", "min")
    [trial] = results.load_trials(str(sweep))
    lowest = min(trial.results, key=lambda r: r["val/mse"])
    assert (Path(lowest["checkpoint_uri"]) / checkpointing.MODEL_FILE).exists()

    again = run_sweep(args)
    assert again.returncode == 0 and "resuming sweep signed" in again.stdout, again.stdout[-3000:]
    trust.check_restorable(str(sweep))

    marker = tmp_path / "pwned"
    state = sorted(sweep.glob("experiment_state-*.json"))[-1]
    state.write_text(state.read_text().replace('"_resumed"', '"_resumed_"'))
    refused_run = run_sweep(args)
    assert refused_run.returncode == 2 and "changed since the sweep signed it: experiment_state-" in refused_run.stdout
    assert "resuming" not in refused_run.stdout and not marker.exists()
