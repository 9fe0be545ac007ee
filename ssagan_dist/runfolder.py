"""A run's folder (``run.name`` under ``run.storage_path``, local or s3://) and the thread that
runs its Ray Train ``fit()``.

``RunFolder`` is the one place that says where a run's files are (checkpoints, metrics.jsonl,
config.yaml, samples/, tensorboard/) and owns the diverged marker: rank 0 writes it when a loss
goes non-finite (``train.stop_diverged``), and the command's ``fit`` or a sweep trial reads it
once ``fit()`` has returned, to tell a diverged run from a failed one.

``FitThread`` runs ``trainer.fit()`` off the calling thread: the command (``train.fit``) waits for
it so that Ctrl-C still reaches its main thread, and a sweep trial (``tune.trainable.TrainRun``)
takes reports while it runs. No Ray import here: the trainer is whatever has a ``fit()``.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

from ssagan_dist import storage

DIVERGED_FILE = "diverged.json"  # {"error": message, "step": int}


class RunFolder:
    """``storage_path``/``name``, read and written with ``endpoint`` (``run.s3_endpoint``) when on S3."""

    def __init__(self, storage_path: str, name: str, endpoint: Optional[str] = None):
        self.url = storage.join(storage_path, name)
        self.endpoint = endpoint

    @classmethod
    def of(cls, cfg: Any) -> "RunFolder":
        """The folder of a config's run (``cfg.run``): build it after anything that changes
        ``run.storage_path`` or ``run.name`` (``train.prepare`` makes a local path absolute)."""
        return cls(cfg.run.storage_path, cfg.run.name, cfg.run.s3_endpoint)

    def join(self, *parts: str) -> str:
        """A URL under the folder."""
        return storage.join(self.url, *parts)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RunFolder({self.url!r})"

    # -- the diverged marker ----------------------------------------------------------------------

    def mark_diverged(self, error: str, step: int) -> None:
        storage.write_bytes_atomic(self.join(DIVERGED_FILE), json.dumps({"error": error, "step": step}).encode(),
                                   self.endpoint)

    def diverged(self) -> Optional[dict[str, Any]]:
        """What ``mark_diverged`` wrote ({"error", "step"}), or None when the run did not diverge."""
        url = self.join(DIVERGED_FILE)
        if not storage.exists(url, self.endpoint):
            return None
        return json.loads(storage.read_bytes(url, self.endpoint))

    def clear_diverged(self) -> None:
        """Before a re-run under the same name (new settings): it tries again."""
        storage.remove(self.join(DIVERGED_FILE), self.endpoint)


class FitThread:
    """``trainer.fit()`` in a daemon thread; its result or error are handed to whoever waits.

    Off the main thread because Ray Train installs its own SIGINT handler when ``fit()`` runs on
    the main thread, and then exits 1 without a word: here Ctrl-C reaches the waiting thread as
    KeyboardInterrupt (``wait`` joins in short slices), and ``train.main`` says how to resume."""

    def __init__(self, trainer: Any, name: str = "ray-train-fit"):
        self.trainer = trainer
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the waiting thread
            self.error = e

    def start(self) -> "FitThread":
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait up to ``timeout`` seconds (None: until ``fit()`` returns); raises nothing."""
        self._thread.join(timeout)

    def wait(self) -> Any:
        """Until ``fit()`` returns: its result, or its error raised here."""
        while self._thread.is_alive():
            self._thread.join(0.5)
        if self.error is not None:
            raise self.error
        return self.result
