"""Ray Tune sweeps end to end: real local Ray clusters (token auth), real Train V2 runs of the tiny
SSA-GAN on synthetic skies, real headless Chromium for the report. Nothing is mocked.

Each sweep runs as its own ``python -m ssagan_dist.tune`` process (the CLI users run), which
starts and stops its own local Ray; the tests check what it leaves on disk and in the process table.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch

from ssagan_dist import checkpointing
from ssagan_dist.config import ConfigError
from ssagan_dist.tune import results, sweep as sweeps

REPO = Path(__file__).resolve().parent.parent


def sweep_cmd(sky: Path, storage: Path, sweep: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssagan_dist.tune", "--config", "tiny_cpu", "--sweep", sweep, "--num-cpus", "2",
            f"data.train_urls={sky / 'train'}", f"data.val_urls={sky / 'val'}", f"run.storage_path={storage}", *extra]


def env(mark: str) -> dict[str, str]:
    """The CLI's environment, with a marker every process it starts (Ray's included) inherits."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "SSAGAN_TUNE_TEST": mark}


def processes_marked(mark: str) -> list[psutil.Process]:
    """Live processes carrying the marker: Ray re-parents and re-sessions its daemons, so
    ancestry cannot tell ours from the other Ray clusters that share this machine."""
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.pid != os.getpid() and p.environ().get("SSAGAN_TUNE_TEST") == mark and p.status() != "zombie":
                found.append(p)
        except psutil.Error:
            pass
    return found


def start_sweep(args: list[str], mark: str) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env(mark), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def assert_nothing_left(mark: str, grace_s: float = 30.0) -> None:
    deadline = time.monotonic() + grace_s
    while (left := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"processes left behind: {[(p.pid, ' '.join(p.cmdline())[:100]) for p in left]}"


def run_sweep(args: list[str], timeout: float = 420) -> subprocess.CompletedProcess:
    """Run the CLI; afterwards no process it started may be alive (ray-project/ray#54305)."""
    mark = uuid.uuid4().hex
    assert not processes_marked(mark)
    proc = start_sweep(args, mark)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            for p in processes_marked(mark):
                p.kill()
    assert_nothing_left(mark)
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def tune_statuses(sweep_dir: Path) -> dict[str, str]:
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(pair[0]) for pair in data["trial_data"])}


def trial_results(sweep_dir: Path) -> list[results.Trial]:
    return results.load_trials(str(sweep_dir))


TINY = ("scaling.ranks=1, scaling.cpus_per_rank=0.5, loop.batch_size=2, loop.val_batches=1, "
        "loop.log_every=2, data.loader_processes=0, optim.n_critic=1")


def named_best(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """(trial, checkpoint) of the winner as best.yaml and report.html name it."""
    head = (sweep_dir / "best.yaml").read_text()
    page = (sweep_dir / "report.html").read_text()
    in_report = re.search(r"<h2>Best</h2><p>Trial <b>(\w+)</b>.*?checkpoint <code>([^<]+)</code>", page)
    in_yaml = re.search(r"of trial (\w+)\n# checkpoint: (\S+)", head)
    return {"best.yaml": in_yaml.groups(), "report": in_report.groups()}


def progress_best(stdout: str) -> str:
    """The trial the last progress line names as the best so far."""
    return re.findall(r"^\[tune\] \d\d:\d\d:\d\d .*\| best .*\(trial (\w+)", stdout, re.M)[-1]


def kept(uri: str) -> bool:
    return (Path(uri) / checkpointing.MODEL_FILE).exists()


# -- the winner: one rule for the progress line, best.yaml and the report ----------------------------

def test_find_best_follows_the_mode_and_skips_deleted_checkpoints_and_diverged_trials(tmp_path):
    def report(step: int, mse: float, on_storage: bool = True) -> dict:
        ckpt = tmp_path / f"checkpoint_{mse}"
        if on_storage:
            ckpt.mkdir()
            (ckpt / checkpointing.MODEL_FILE).write_bytes(b"")
        return {"step": step, "val/mse": mse, "val/baseline_mse": 0.4, "hp/optim.lr_g": mse / 10,
                "checkpoint_uri": str(ckpt)}

    deleted = results.Trial("a", [report(2, 0.5), report(4, 0.2, on_storage=False)], "TERMINATED")
    kept_both = results.Trial("b", [report(2, 0.3), report(4, 0.35)], "TERMINATED")
    diverged = results.Trial("c", [report(2, 0.1), {"step": 3, results.DIVERGED: "training diverged at step 3"}],
                             "TERMINATED")
    trials = [deleted, kept_both, diverged]
    best = results.find_best(trials, "val/mse", "min", ["optim.lr_g"], None)
    assert (best.trial_id, best.step, best.value, best.baseline) == ("b", 2, 0.3, 0.4)
    assert best.values == {"optim.lr_g": pytest.approx(0.03)}
    assert results.best_report(deleted, "val/mse", "min", None)["step"] == 2  # its best left on storage
    assert results.find_best(trials, "val/mse", "max", ["optim.lr_g"], None).trial_id == "a"
    assert [t.status(max_steps=4) for t in trials] == ["finished", "finished", "diverged"]


# -- sweep files are checked before Ray starts ------------------------------------------------------

def test_every_sweep_preset_parses():
    names = sweeps.sweep_names()
    assert {"tiny_asha", "tiny_pbt"} <= set(names)
    for name in names:
        s = sweeps.load_sweep(name)
        assert s.keys and s.metric


@pytest.mark.parametrize("text, field", [
    ("metric: val/psnr\nspace: {optim.lr_g: {loguniform: [0, 1]}}", "space.optim.lr_g"),
    ("metric: val/psnr\nspace: {optim.lr_g: {normal: [0, 1]}}", "space.optim.lr_g"),
    ("metric: val/psnr\nspace: {optim.lr_g: {choice: [1e-4]}}\nscheduler: {name: pbt}", "perturbation_interval"),
    ("metric: val/psnr\nspace: {optim.lr_g: {choice: [1e-4]}}\nsearch: {algorithm: bayes}", "search.algorithm"),
    ("metric: val/psnr\nspace: {optim.lr_g: {grid: [1e-4]}}\nsearch: {algorithm: optuna}", "space.optim.lr_g"),
    ("metric: val/psnr\nspace: {optim.lr_g: {choice: [1e-4]}}\nmax_concurrent: 2", "max_concurrent"),
])
def test_bad_sweep_file_names_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        sweeps.load_sweep(str(path))


@pytest.mark.parametrize("space, key", [
    ("{loss.lambda_rank: {uniform: [0.1, 2.0]}}", "loss.lambda_rank"),  # SSA-GAN has no ranking loss
    ("{optim.n_critic: {choice: [0, 1]}}", "optim.n_critic"),  # 0 D updates is refused by the config
    ("{optim.lr_gg: {choice: [1.0e-4]}}", "optim.lr_gg"),
])
def test_sweeping_a_key_the_model_does_not_read_is_refused(tmp_path, space, key):
    path = tmp_path / "s.yaml"
    path.write_text(f"metric: val/psnr\nspace: {space}\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        sweeps.check_against_config(sweeps.load_sweep(str(path)), "tiny_cpu", [])


# -- ASHA: early stopping, the winner, its checkpoint, best.yaml, the report ------------------------

@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_asha_sweep_stops_trials_early_and_reports_the_winner(sky, tmp_path):
    result = run_sweep(sweep_cmd(sky, tmp_path, "tiny_asha"))
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    assert "[tune]" in out and "best val/psnr" in out and "copy-frame baseline" in out
    sweep_dir = tmp_path / "tiny_asha"
    trials = trial_results(sweep_dir)
    assert len(trials) == 4
    max_steps = json.loads((sweep_dir / "sweep.json").read_text())["max_steps"]
    stopped = [t for t in trials if t.last["step"] < max_steps]
    assert stopped, "ASHA stopped no trial early"
    assert all(t.tune_status != "ERROR" for t in trials)

    # the printed checkpoint is the best report, and it loads with evaluate
    best_line = next(ln for ln in out.splitlines() if ln.startswith("[tune] best checkpoint:"))
    best_ckpt = best_line.split(":", 1)[1].strip()
    best_psnr = max(r["val/psnr"] for t in trials for r in t.results)
    from ssagan_dist.scoring import evaluate

    scored = evaluate(best_ckpt, str(sky / "val"), batch_size=2, max_batches=1, progress=False)
    assert scored["step"] == int(best_ckpt.rsplit("_", 1)[1])
    assert scored["psnr"] == pytest.approx(best_psnr, abs=1e-3)  # the same held-out clips as validation

    # best.yaml is a full config with the winner's values that load_config accepts
    from ssagan_dist.experiment import load_config

    best_cfg = load_config(str(sweep_dir / "best.yaml"))
    winner = next(t for t in trials if any(r["val/psnr"] == best_psnr for r in t.results))
    assert best_cfg.optim.lr_g == pytest.approx(winner.last["hp/optim.lr_g"])
    assert best_cfg.loss.lambda_con == pytest.approx(winner.last["hp/loss.lambda_con"])
    assert best_cfg.data.train_urls == str(sky / "train")

    # TensorBoard: one folder per trial
    assert {p.name for p in (sweep_dir / "tensorboard").iterdir()} == {t.trial_id for t in trials}

    # trials.csv: one row per trial with its values and final metric
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert sorted(r["trial_id"] for r in rows) == sorted(t.trial_id for t in trials)
    assert {"optim.lr_g", "loss.lambda_con", "final val/psnr", "status"} <= rows[0].keys()
    assert sum(r["status"] == "stopped early" for r in rows) == len(stopped)
    check_report_renders(sweep_dir, tmp_path)


def check_report_renders(sweep_dir: Path, tmp_path: Path) -> None:
    """Headless Chromium opens report.html offline: no console errors, a non-blank screenshot."""
    from tests.browser import pixel_variance, screenshot

    page = sweep_dir / "report.html"
    text = page.read_text()
    assert "<script src=" not in text  # plotly.js is inline: the file opens without a network
    assert "data:image/png;base64," in text and "data:image/gif;base64," in text
    shot = tmp_path / "report.png"
    proc = screenshot(page.as_uri(), shot, tmp_path / "chrome")
    # Every console message of the page fails the test, except the notices the browser itself adds
    # when its software WebGL (the parallel-coordinates plot) runs without a GPU
    console = [ln for ln in proc.stderr.splitlines() if ("CONSOLE" in ln or "Uncaught" in ln)
               and '"[.WebGL-' not in ln and "software WebGL" not in ln]
    assert not console, console
    assert shot.exists(), proc.stderr[-2000:]
    assert pixel_variance(shot) > 100, "the report screenshot is blank"
    assert (sweep_dir / "report_png" / "curves.png").stat().st_size > 5000


MIN_SWEEP = f"""\
metric: val/mse
mode: min
search: {{algorithm: grid}}
space: {{optim.lr_g: {{grid: [3.0e-3, 1.0e-4]}}}}
# only each trial's newest checkpoint survives Train's retention
overrides: [{TINY}, loop.max_steps=4, loop.val_every=2, checkpoint.keep=1, checkpoint.best_metric=step]
driver_cpus: 0.1
max_concurrent_trials: 1
report_timeout_s: 300
"""


def test_a_min_sweep_ranks_train_checkpoints_lowest_first_unless_the_config_names_a_metric(tmp_path):
    from ssagan_dist import checkpointing
    from ssagan_dist.experiment import load_config
    from ssagan_dist.tune.runner import rank_checkpoints_by_sweep

    (tmp_path / "min.yaml").write_text(MIN_SWEEP.replace(", checkpoint.best_metric=step", ""))
    sweep = sweeps.load_sweep(str(tmp_path / "min.yaml"))
    cfg = load_config("tiny_cpu", sweep.overrides)
    rank_checkpoints_by_sweep(cfg, sweep, "tiny_cpu", [])
    ray_config = checkpointing.CheckpointManager.ray_config(cfg)
    assert (ray_config.checkpoint_score_attribute, ray_config.checkpoint_score_order) == ("val/mse", "min")
    named = ["checkpoint.best_metric=step"]  # the user's own choice stays (MIN_SWEEP keeps only the newest this way)
    cfg = load_config("tiny_cpu", [*sweep.overrides, *named])
    rank_checkpoints_by_sweep(cfg, sweep, "tiny_cpu", named)
    assert (cfg.checkpoint.best_metric, cfg.checkpoint.best_mode) == ("step", "max")


@pytest.mark.slow  # two sweeps of two trials: about a minute and a half
def test_a_min_sweep_names_one_winner_everywhere_also_after_retention_deleted_its_checkpoint(sky, tmp_path):
    (tmp_path / "min.yaml").write_text(MIN_SWEEP)
    args = sweep_cmd(sky, tmp_path, str(tmp_path / "min.yaml"), "--name", "min")
    sweep_dir = tmp_path / "min"
    result = run_sweep(args)
    assert result.returncode == 0, result.stdout[-3000:]
    trials = trial_results(sweep_dir)
    lowest = min((r["val/mse"], t.trial_id, r["checkpoint_uri"]) for t in trials for r in t.results
                 if kept(r["checkpoint_uri"]))
    named = named_best(sweep_dir)
    assert named == {"best.yaml": lowest[1:], "report": lowest[1:]}
    assert progress_best(result.stdout) == lowest[1]

    # retention deletes the winning checkpoint; the same sweep again picks the best one left
    shutil.rmtree(lowest[2])
    again = run_sweep(args)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "resuming sweep min" in again.stdout
    runner_up = min((r["val/mse"], t.trial_id, r["checkpoint_uri"]) for t in trial_results(sweep_dir)
                    for r in t.results if kept(r["checkpoint_uri"]))
    assert named_best(sweep_dir) == {"best.yaml": runner_up[1:], "report": runner_up[1:]}
    rows = {r["trial_id"]: r for r in csv.DictReader((sweep_dir / "trials.csv").open())}
    assert rows[runner_up[1]]["best checkpoint"] == runner_up[2]


DIVERGING_SWEEP = f"""\
metric: val/psnr
search: {{algorithm: grid}}
space: {{optim.lr_g: {{grid: [1.0e+30]}}}}
overrides: [{TINY}, optim.lr_d=1.0e+30, loop.max_steps=4, loop.val_every=2]
driver_cpus: 0.1
max_concurrent_trials: 1
max_failures: 1
report_timeout_s: 300
"""


@pytest.mark.slow  # a one-trial sweep: about a minute
def test_a_diverged_trial_is_not_retried_and_shows_as_diverged(sky, tmp_path):
    (tmp_path / "nan.yaml").write_text(DIVERGING_SWEEP)
    result = run_sweep(sweep_cmd(sky, tmp_path, str(tmp_path / "nan.yaml"), "--name", "nan"))
    out = result.stdout
    assert result.returncode == 1, out[-3000:]  # no winner: the only trial diverged
    assert "nothing to pick" in out and "diverged 1" in out and "training diverged at step" in out, out[-3000:]
    sweep_dir = tmp_path / "nan"
    [trial] = trial_results(sweep_dir)
    assert [h["event"] for h in trial.history] == ["start"]  # one Train run: not started again
    assert tune_statuses(sweep_dir) == {trial.trial_id: "TERMINATED"}
    assert trial.diverged.startswith("training diverged at step") and "lr_g=1e+30" in trial.diverged
    [row] = csv.DictReader((sweep_dir / "trials.csv").open())
    assert row["status"] == "diverged"
    page = (sweep_dir / "report.html").read_text()
    assert f"Trial <b>{trial.trial_id}</b> diverged: training diverged at step" in page
    assert not (sweep_dir / "best.yaml").exists()


# -- PBT: the weaker trial continues from the stronger one's checkpoint -----------------------------

@pytest.mark.slow  # a 4-trial PBT sweep, then a replay on its own Ray; ASHA and resume stay in the default suite
def test_pbt_exploit_copies_the_donor_checkpoint_and_applies_explored_learning_rates(sky, tmp_path):
    result = run_sweep(sweep_cmd(sky, tmp_path, "tiny_pbt"))
    assert result.returncode == 0, result.stdout[-3000:]
    sweep_dir = tmp_path / "tiny_pbt"
    trials = trial_results(sweep_dir)
    exploits = [(t, h) for t in trials for h in t.history if h["event"] == "exploit"]
    assert exploits, "PBT exploited nothing"
    receiver, event = exploits[0]
    donor_ckpt = Path(event["start_from"])
    assert donor_ckpt.parent.name.startswith(event["donor_trial"])
    donor_state = checkpointing.read_model(donor_ckpt)
    assert donor_state["step"] == event["step"]

    # the receiving generation's first checkpoint: its optimizers run with the explored rates
    run = sweep_dir / "train_runs" / f"{receiver.trial_id}-g{event['generation']:03d}"
    first = sorted(run.glob("checkpoint_*"))[0]
    after = checkpointing.read_model(first)
    assert after["step"] > event["step"]
    lrs = {name: opt["param_groups"][0]["lr"] for name, opt in after["trainer"]["optimizers"].items()}
    assert lrs["G"] == pytest.approx(event["config"]["optim.lr_g"])
    assert lrs["D"] == pytest.approx(event["config"]["optim.lr_d"])

    # ...and its weights are the donor's at the copy: replaying the same steps from the donor's
    # checkpoint with the receiver's config (training is deterministic) gives the same weights
    import ray

    from ssagan_dist import train
    from ssagan_dist.config import ExperimentConfig
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.load(first / "config.yaml"))
    cfg.run.storage_path, cfg.run.name = str(tmp_path / "replay"), "replay"
    cfg.loop.max_steps = after["step"]
    cfg.telemetry.enabled = False
    ray.shutdown()  # the session's shared local Ray (conftest.ray_cluster), if up
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a shared cluster
    try:
        train.build_ray_trainer(cfg, [3, 8, 32, 32], start_from=str(donor_ckpt)).fit()
    finally:
        ray.shutdown()
    replay = checkpointing.read_model(tmp_path / "replay" / "replay" / first.name)
    for net, state in after["trainer"]["nets"].items():
        for k, v in state.items():
            assert torch.equal(v, replay["trainer"]["nets"][net][k]), f"{net}.{k} differs from the donor replay"


# -- resume: a killed driver, the same name again ---------------------------------------------------

RESUME_SWEEP = """\
metric: val/psnr
search: {algorithm: grid}
space: {optim.lr_g: {grid: [1.0e-3, 1.0e-4]}}
overrides: [scaling.ranks=1, scaling.cpus_per_rank=0.5, loop.batch_size=2, loop.max_steps=2,
            loop.val_every=2, loop.val_batches=1, loop.log_every=2, data.loader_processes=0, optim.n_critic=1]
driver_cpus: 0.1
max_concurrent_trials: 1
report_timeout_s: 300
"""


@pytest.mark.slow  # long: make test-slow (CI runs it)
def test_killed_sweep_resumes_without_rerunning_finished_trials(sky, tmp_path):
    (tmp_path / "two.yaml").write_text(RESUME_SWEEP)
    args = sweep_cmd(sky, tmp_path, str(tmp_path / "two.yaml"), "--name", "resumed", "--no-report")
    sweep_dir = tmp_path / "resumed"
    mark = uuid.uuid4().hex
    proc = start_sweep(args, mark)
    deadline = time.monotonic() + 300
    try:  # kill the driver (and all it started) once Tune has recorded the first trial as finished
        while "TERMINATED" not in tune_statuses(sweep_dir).values() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in processes_marked(mark):
            p.kill()
        proc.wait()
    assert_nothing_left(mark)
    finished = [t for t in trial_results(sweep_dir) if tune_statuses(sweep_dir).get(t.trial_id) == "TERMINATED"]
    assert finished, "no trial had finished when the driver was killed"
    before = {t.trial_id: t for t in finished}

    again = run_sweep(args)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "resuming sweep resumed" in again.stdout
    after = {t.trial_id: t for t in trial_results(sweep_dir)}
    assert len(after) == 2
    assert set(tune_statuses(sweep_dir).values()) == {"TERMINATED"}
    for trial_id, t in before.items():  # not re-run: no new Train run, no new results
        assert len(after[trial_id].history) == len(t.history) == 1
        assert len(after[trial_id].results) == len(t.results)
        assert f"trial {trial_id}: " not in again.stdout
