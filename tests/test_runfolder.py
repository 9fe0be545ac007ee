"""The run folder (its URL, the files under it, the diverged marker) and the thread that runs fit()."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssagan_dist.config import ExperimentConfig
from ssagan_dist.runfolder import DIVERGED_FILE, FitThread, RunFolder

ROOT = Path(__file__).resolve().parents[1]


def test_a_local_folder_joins_under_storage_path_and_name(tmp_path):
    folder = RunFolder(str(tmp_path) + "/", "run-1")
    assert folder.url == f"{tmp_path}/run-1" == str(folder)
    assert folder.join("checkpoint_000000004", "model.pt") == f"{tmp_path}/run-1/checkpoint_000000004/model.pt"
    assert folder.join("samples/") == f"{tmp_path}/run-1/samples"


def test_an_s3_folder_is_a_url_string_and_needs_no_network():
    folder = RunFolder("s3://bucket/prefix/", "run-1", "http://127.0.0.1:9")  # nothing listens there
    assert folder.url == "s3://bucket/prefix/run-1"
    assert folder.join("metrics.jsonl") == "s3://bucket/prefix/run-1/metrics.jsonl"
    assert folder.endpoint == "http://127.0.0.1:9"


def test_the_folder_of_a_config_is_its_run_section(tmp_path):
    cfg = OmegaConf.structured(ExperimentConfig)
    cfg.run.storage_path, cfg.run.name, cfg.run.s3_endpoint = "s3://b/runs", "sky", "http://minio:9000"
    folder = RunFolder.of(cfg)
    assert (folder.url, folder.endpoint) == ("s3://b/runs/sky", "http://minio:9000")


def test_the_diverged_marker_round_trips_in_one_file(tmp_path):
    folder = RunFolder(str(tmp_path), "run")
    assert folder.diverged() is None
    folder.clear_diverged()  # nothing to remove: no error
    folder.mark_diverged("training diverged at step 7: g_loss=nan", 7)
    assert json.loads((tmp_path / "run" / DIVERGED_FILE).read_text()) == {
        "error": "training diverged at step 7: g_loss=nan", "step": 7}
    assert RunFolder(str(tmp_path), "run").diverged() == {"error": "training diverged at step 7: g_loss=nan",
                                                          "step": 7}
    assert RunFolder(str(tmp_path), "other").diverged() is None
    folder.clear_diverged()
    assert folder.diverged() is None and not (tmp_path / "run" / DIVERGED_FILE).exists()


class _Trainer:
    def __init__(self, result=None, error=None, release: threading.Event | None = None):
        self.result, self.error, self.release = result, error, release
        self.thread_name = None

    def fit(self):
        self.thread_name = threading.current_thread().name
        if self.release is not None:
            self.release.wait(30)
        if self.error is not None:
            raise self.error
        return self.result


def test_fit_runs_off_the_calling_thread_and_hands_back_its_result():
    trainer = _Trainer(result="the result")
    assert FitThread(trainer).start().wait() == "the result"
    assert trainer.thread_name == "ray-train-fit"
    trainer = _Trainer(result=1)
    run = FitThread(trainer, name="train-fit").start()
    run.join()
    assert not run.is_alive() and run.error is None and trainer.thread_name == "train-fit"


def test_an_error_of_fit_is_raised_in_the_waiting_thread():
    error = RuntimeError("the workers died")
    with pytest.raises(RuntimeError) as raised:
        FitThread(_Trainer(error=error)).start().wait()
    assert raised.value is error
    interrupted = FitThread(_Trainer(error=KeyboardInterrupt())).start()  # BaseException too
    with pytest.raises(KeyboardInterrupt):
        interrupted.wait()


def test_ctrl_c_reaches_the_thread_waiting_for_fit():
    """Why fit() runs in a thread: SIGINT interrupts ``wait`` (train.main then says how to resume)."""
    release = threading.Event()
    trainer = _Trainer(result="late", release=release)
    run = FitThread(trainer).start()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, signal.raise_signal, (signal.SIGINT,))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run.wait()
        # fit() goes on in its daemon thread (main shuts Ray down). Not run.is_alive(): CPython
        # 3.11 marks a thread stopped when a signal interrupts a join of it (bpo-45274's fix).
        assert run.result is None and run.error is None
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
        release.set()


def test_the_module_imports_no_ray():
    out = subprocess.run([sys.executable, "-c", "import sys, ssagan_dist.runfolder; "
                          "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
