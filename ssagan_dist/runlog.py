"""Rank 0's human-facing record of a run, in the run folder (local or s3://):

    config.yaml                 the keys this run reads (the driver's ``Experiment.dump``): ``--config`` it to retrain
    metrics.jsonl               one JSON object per log step and per validation
    samples/step_<step>.png     held-out strip: input | prediction | truth, a few frames each, and the
                                clouds' true and predicted displacement as arrows (ssagan_dist.motion)
    samples/step_<step>.gif     the first held-out clip, prediction beside truth
    samples/psnr_per_frame.png  PSNR per future frame, model against the copy-frame baseline
    tensorboard/                TensorBoard event files (losses, PSNR/SSIM, learning rates, samples)
    tracking.json               the MLflow / W&B run ids (tracking.backends), so a resumed run continues them

Object stores cannot append, so metrics.jsonl is rewritten and the TensorBoard files uploaded
when ``flush`` is called (at every checkpoint); a resumed run keeps the lines up to its step.
Non-finite numbers are written as null, so every line stays valid JSON.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ssagan_dist import storage, tracking, visualize
from ssagan_dist.config import ExperimentConfig


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunLog:
    def __init__(self, cfg: ExperimentConfig, url: str, resumed_step: int, config_yaml: str,
                 tensorboard_url: Optional[str] = None, tracking_context: Optional[dict[str, Any]] = None):
        self.url, self.endpoint = url, cfg.run.s3_endpoint
        self.metrics_url = storage.join(url, "metrics.jsonl")
        self.lines: list[str] = []
        if resumed_step and storage.exists(self.metrics_url, self.endpoint):
            text = storage.read_bytes(self.metrics_url, self.endpoint).decode()
            self.lines = [ln for ln in text.splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= resumed_step]
        storage.write_bytes_atomic(storage.join(url, "config.yaml"), config_yaml.encode(), self.endpoint)
        self.tensorboard_url = tensorboard_url or storage.join(url, "tensorboard")
        self._tb_local = (Path(tempfile.mkdtemp(prefix="ssagan-tb-")) if storage.is_s3(self.tensorboard_url)
                          else Path(self.tensorboard_url))
        from tensorboardX import SummaryWriter

        # purge_step hides events a previous attempt wrote past the step this run resumed from.
        self.tb = SummaryWriter(str(self._tb_local), purge_step=resumed_step or None, flush_secs=30)
        self.tracker = (tracking.Tracker(cfg, url, resumed_step, tracking_context, config_yaml=config_yaml)
                        if tracking.names(cfg.tracking.backends) else None)

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps({k: _json_safe(v) for k, v in record.items()}, sort_keys=True))
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        if self.tracker is not None:
            self.tracker.record(record)

    def samples(self, step: int, real: torch.Tensor, pred: torch.Tensor, psnr_curves: dict[str, list[float]]) -> None:
        tracked: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory() as tmp:
            outputs = {
                f"samples/step_{step:09d}.png": lambda p: visualize.sample_strip(real[:, :, 0], pred, real,
                                                                                  motion=True).save(p),
                f"samples/step_{step:09d}.gif": lambda p: visualize.save_gif(pred[0], p, real=real[0]),
                "samples/psnr_per_frame.png": lambda p: visualize.psnr_curve_png(psnr_curves, p),
            }
            for rel, write in outputs.items():
                local = Path(tmp) / rel.replace("/", "_")
                write(str(local))
                data = local.read_bytes()
                storage.write_bytes_atomic(storage.join(self.url, rel), data, self.endpoint)
                tracked[rel.rsplit("/", 1)[1]] = data
        if self.tracker is not None:
            self.tracker.samples(step, tracked)
        # prediction | truth, frames side by side, as one image per validation
        strip = torch.cat([pred[0], real[0]], dim=2).add(1).div(2).clamp(0, 1)  # (C, T, 2H, W)
        self.tb.add_image("samples/prediction_over_truth", torch.cat(list(strip.unbind(1)), dim=2), step)

    def _tracker_problems(self) -> None:
        """A tracker that failed (on its own thread) is recorded here, on the training thread."""
        if self.tracker is not None:
            for event in self.tracker.take_problems():
                self.lines.append(json.dumps(event, sort_keys=True))

    def flush(self) -> None:
        if self.tracker is not None:
            self.tracker.flush()
        self._tracker_problems()
        storage.write_bytes_atomic(self.metrics_url, ("\n".join(self.lines) + "\n").encode(), self.endpoint)
        self.tb.flush()
        self._upload_tensorboard()

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        self._tracker_problems()
        storage.write_bytes_atomic(self.metrics_url, ("\n".join(self.lines) + "\n").encode(), self.endpoint)
        self.tb.close()
        self._upload_tensorboard()
        if storage.is_s3(self.tensorboard_url):
            shutil.rmtree(self._tb_local, ignore_errors=True)

    def _upload_tensorboard(self) -> None:
        if storage.is_s3(self.tensorboard_url):
            for path in self._tb_local.iterdir():
                storage.write_bytes_atomic(storage.join(self.tensorboard_url, path.name), path.read_bytes(),
                                           self.endpoint)
