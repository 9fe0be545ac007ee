"""Checkpoints: their layout, reading and writing them, and which one a run starts from.

A checkpoint is a directory (Ray Train moves it to ``run.storage_path``):

    model.pt          rank 0: {"format_version": 2, "model": name, "trainer": GANTrainer.state_dict(),
                               "step": int, "clip_shape": [C, T, H, W], "world_size": ranks that saved}
    config.yaml       rank 0: the resolved ExperimentConfig
    worker-<rank>.pt  every rank: its RNG states, its data loader's position, a digest of its weights

Format 1 (the first release) had no ``format_version`` or ``model``: it loads, and the model is
then taken from the checkpoint's config.yaml.

Ray Train merges the directories that the ranks report at one step into one checkpoint, so every
rank restores its own RNG and loader state while rank 0 alone writes the networks. Everything is
plain tensors and containers: ``torch.load(..., weights_only=True)`` reads it.

``CheckpointManager`` is the one owner of the policy: what a rank restores (and so the step it
continues from), what it saves, and which checkpoints Ray keeps. Rebuilding a trainer from a
checkpoint is ``experiment.load_trainer``.
"""

from __future__ import annotations

import hashlib
import re
import logging
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from ssagan_dist import storage
from ssagan_dist.config import ExperimentConfig
from ssagan_dist.trainers import GANTrainer, unwrap

log = logging.getLogger(__name__)

MODEL_FILE, CONFIG_FILE = "model.pt", "config.yaml"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names it."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files are missing, truncated or unreadable (e.g. a crash during a save)."""


def worker_file(rank: int) -> str:
    return f"worker-{rank}.pt"


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:09d}"


def state_digest(trainer: GANTrainer) -> str:
    """sha256 of every network's parameters and buffers (BatchNorm statistics included): equal on
    all DDP ranks when they hold the same model."""
    h = hashlib.sha256()
    for name, net in sorted(trainer.nets.items()):
        for key, t in sorted(unwrap(net).state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def write(directory: Path, *, rank: int, worker_state: dict[str, Any], trainer: Optional[GANTrainer] = None,
          step: int = 0, clip_shape: Optional[list[int]] = None, cfg: Optional[ExperimentConfig] = None,
          world_size: int = 1) -> None:
    """Write this rank's part of a checkpoint into a local directory."""
    torch.save(worker_state, directory / worker_file(rank))
    if trainer is not None:
        torch.save({"format_version": FORMAT_VERSION, "model": cfg.model.name, "trainer": trainer.state_dict(),
                    "step": step, "clip_shape": clip_shape, "world_size": world_size}, directory / MODEL_FILE)
        (directory / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))


def read_model(directory: Path, expect_model: Optional[str] = None, source: Optional[str] = None) -> dict[str, Any]:
    """model.pt of a local checkpoint directory; ``expect_model`` checks whose it is. ``source``:
    the checkpoint's own path or URL when ``directory`` is a temporary copy (errors name it)."""
    shown = source or str(directory)
    try:
        state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files, foreign pickles: torch raises several types
        raise DamagedCheckpoint(f"checkpoint file {storage.join(shown, MODEL_FILE)} cannot be read "
                                f"({type(e).__name__}); it is damaged or not a ssagan-dist checkpoint") from None
    version = state.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {shown} has format {version}; this ssagan-dist reads up to "
                              f"{FORMAT_VERSION}: upgrade it")
    if version == 1 and (directory / CONFIG_FILE).exists():
        state["model"] = read_config(directory, source).model.name
    if expect_model is not None and state.get("model", expect_model) != expect_model:
        raise CheckpointError(f"checkpoint {shown} is of model {state['model']!r}, the config says "
                              f"{expect_model!r}")
    return state


def read_config(directory: Path, source: Optional[str] = None) -> Any:
    """config.yaml of a local checkpoint directory (``source`` as in ``read_model``)."""
    try:
        return OmegaConf.load(directory / CONFIG_FILE)
    except Exception as e:  # a truncated or foreign file: yaml and OmegaConf raise several types
        raise DamagedCheckpoint(f"checkpoint file {storage.join(source or str(directory), CONFIG_FILE)} cannot be "
                                f"read ({type(e).__name__})") from None


def read_worker(directory: Path, rank: int, source: Optional[str] = None) -> Optional[dict[str, Any]]:
    path = directory / worker_file(rank)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise DamagedCheckpoint(f"checkpoint file {storage.join(source or str(directory), worker_file(rank))} "
                                f"cannot be read ({type(e).__name__})") from None


def checkpoint_dirs(run_uri: str, endpoint_url: Optional[str] = None) -> list[str]:
    """URIs of a run folder's checkpoint_* directories, newest first (none if no folder)."""
    fs, path = storage.filesystem(run_uri, endpoint_url)
    if not fs.isdir(path):
        return []
    names = sorted((p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)
                    if re.fullmatch(r"checkpoint_\d+", p.rsplit("/", 1)[-1])), reverse=True)
    return [storage.join(run_uri, n) for n in names]


def resolve(uri: str, endpoint_url: Optional[str] = None) -> str:
    """A checkpoint directory URI; a run folder resolves to its latest checkpoint."""
    fs, path = storage.filesystem(uri, endpoint_url)
    if fs.exists(f"{path}/{MODEL_FILE}"):
        return uri
    if not fs.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {uri}")
    candidates = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)
                        if p.rsplit("/", 1)[-1].startswith("checkpoint_") and fs.exists(f"{p}/{MODEL_FILE}"))
    if not candidates:
        raise FileNotFoundError(f"{uri} holds neither {MODEL_FILE} nor checkpoint_* directories")
    return storage.join(uri, candidates[-1])


def fetch(uri: str, local_dir: Path, endpoint_url: Optional[str] = None, rank: Optional[int] = None) -> Path:
    """Copy a checkpoint's model and config (and, given ``rank``, that rank's worker file if the
    checkpoint has one) into ``local_dir``."""
    fs, path = storage.filesystem(uri, endpoint_url)
    names = [MODEL_FILE, CONFIG_FILE]
    if rank is not None and fs.exists(f"{path}/{worker_file(rank)}"):
        names.append(worker_file(rank))
    for name in names:
        fs.get(f"{path}/{name}", str(local_dir / name))
    return local_dir


def load_for_worker(uri: str, rank: int, expect_model: str,
                    endpoint_url: Optional[str] = None) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """(model state, this rank's worker state or None) of a checkpoint directory, local or s3://."""
    with tempfile.TemporaryDirectory() as tmp:
        local = fetch(uri, Path(tmp), endpoint_url, rank=rank)
        return read_model(local, expect_model, source=uri), read_worker(local, rank, source=uri)


def load_generator(uri: str, endpoint_url: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The generator weights of a checkpoint (or a run folder's latest), for a network a trainer
    starts from (``GANTrainer.pretrained``): its moving average of G when it keeps one (what its
    validation and evaluate scored), else G."""
    uri = resolve(uri, endpoint_url)
    with tempfile.TemporaryDirectory() as tmp:
        state = read_model(fetch(uri, Path(tmp), endpoint_url), source=uri)
    nets = state["trainer"]["nets"]
    return nets.get("G_ema", nets["G"])


class CheckpointManager:
    """One rank's checkpoints of one run: which one it starts from, and saving the next.

    ``restore`` takes, in order: the run's own newest complete checkpoint (the same command run
    again, or Ray restarting the worker group after a failure); else ``start_from`` (a sweep
    trial's PBT donor); else fresh weights, with the trained networks the trainer starts from
    (``GANTrainer.pretrained``, e.g. a refine model's Stage-I generator). ``save`` writes this
    rank's part of a checkpoint and reports it to Ray Train, which merges the ranks' parts into
    ``checkpoint_<step>`` and keeps those that ``ray_config`` names.

    Why it scans the run folder rather than trust Ray's bookkeeping (``ray.train.get_checkpoint()``,
    the controller's checkpoint list): Ray records a checkpoint only after every rank's upload, so
    a run killed in between has a newest checkpoint on storage that Ray never recorded; a save
    cut short (a crash, a lost node) can leave a directory whose files do not all load; and a
    checkpoint must fit what every rank needs (model.pt names how many ranks saved, and each of
    their files must be there). Storage is the one record that every rank and every attempt see
    alike: each rank reads every file of each candidate, newest first, so all ranks pick the same
    one, and a damaged one is skipped with a warning and named in ``events`` (for the run log).
    """

    def __init__(self, cfg: ExperimentConfig, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.run_uri = storage.join(cfg.run.storage_path, cfg.run.name)
        self.endpoint = cfg.run.s3_endpoint
        self.events: list[dict[str, Any]] = []  # resumed / started_from / skipped_damaged_checkpoint
        self.resumed_from: Optional[str] = None  # the run's own checkpoint that restore took

    @staticmethod
    def ray_config(cfg: ExperimentConfig):
        """Ray Train's retention: the last ``run.keep_checkpoints``, plus the best by ``run.best_metric``."""
        import ray.train

        return ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints,
                                          checkpoint_score_attribute=cfg.run.best_metric, checkpoint_score_order="max")

    def newest_complete(self) -> Optional[tuple[str, dict[str, Any], Optional[dict[str, Any]]]]:
        """(uri, model state, this rank's worker state) of the run's newest checkpoint whose files
        all load; damaged ones are skipped with a warning (and an event)."""
        for uri in checkpoint_dirs(self.run_uri, self.endpoint):
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    fs, path = storage.filesystem(uri, self.endpoint)
                    for name in [n.rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]:
                        if name in (MODEL_FILE, CONFIG_FILE) or name.startswith("worker-"):
                            fs.get(f"{path}/{name}", str(Path(tmp) / name))
                    if not (Path(tmp) / CONFIG_FILE).exists():
                        raise DamagedCheckpoint(f"{uri}: no {CONFIG_FILE}")
                    model = read_model(Path(tmp), self.cfg.model.name, source=uri)
                    # every rank uploads its own files: a save cut short can leave model.pt without them
                    missing = [worker_file(r) for r in range(model.get("world_size", 0))
                               if not (Path(tmp) / worker_file(r)).exists()]
                    if missing:
                        raise DamagedCheckpoint(f"{uri}: {', '.join(missing)} missing (a save cut short)")
                    workers = {p.name: read_worker(Path(tmp), int(p.stem.split("-")[1]), source=uri)
                               for p in Path(tmp).glob("worker-*.pt")}
                    mine = workers.get(worker_file(self.rank))
                    if mine is None and worker_file(0) in workers:  # a rank the group did not have: the
                        mine = {"loader": workers[worker_file(0)]["loader"]}  # data position is rank 0's
                    return uri, model, mine
            except (DamagedCheckpoint, FileNotFoundError) as e:  # storage faults propagate: never skip on them
                log.warning("skipping damaged checkpoint %s: %s", uri, e)
                self.events.append({"event": "skipped_damaged_checkpoint", "problem": f"{uri}: {e}"})
        return None

    def restore(self, trainer: GANTrainer, loader: Any, start_from: Optional[str] = None) -> int:
        """Load the checkpoint the policy picks into ``trainer`` and the data ``loader`` (and this
        rank's RNG); returns the step to continue from. Learning rates stay the config's."""
        seed = self.cfg.trainer.seed
        model_state = worker_state = None
        found = self.newest_complete()
        if found is not None:
            self.resumed_from, model_state, worker_state = found
            self.events.append({"event": "resumed", "from": self.resumed_from})
        elif start_from:
            model_state, worker_state = load_for_worker(start_from, self.rank, self.cfg.model.name, self.endpoint)
            self.events.append({"event": "started_from", "from": start_from})
        if model_state is None:
            for p in trainer.pretrained:
                trainer.load_pretrained(p.network, load_generator(OmegaConf.select(self.cfg, p.key), self.endpoint))
            torch.manual_seed(seed * 1_000_003 + self.rank + 1)  # each rank its own noise
            return 0
        trainer.load_state_dict(model_state["trainer"])
        if worker_state is not None:
            try:
                loader.load_state_dict(worker_state["loader"])
            except ValueError as e:
                raise RuntimeError(f"cannot continue run {self.run_uri} with {self.world} worker(s): {e}; set "
                                   "trainer.min_workers for a group that may resize, or start a new run.name") from None
        if worker_state is not None and "rng" in worker_state:
            set_rng_state(worker_state["rng"])
        else:  # a rank the checkpoint did not have (the group grew): its own noise, seeded afresh
            torch.manual_seed(seed * 1_000_003 + self.rank + 1 + model_state["step"])
        return model_state["step"]

    def save(self, trainer: GANTrainer, loader: Any, step: int, clip_shape: list[int], metrics: dict[str, Any]) -> int:
        """Every rank writes its part of the step's checkpoint and reports it to Ray Train with
        ``metrics`` (a barrier: every rank calls it); Ray merges the parts. Returns this rank's bytes."""
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            worker_state = {"rng": rng_state(), "loader": loader.state_dict(), "state_digest": state_digest(trainer)}
            write(Path(tmp), rank=self.rank, worker_state=worker_state, trainer=trainer if self.rank == 0 else None,
                  step=step, clip_shape=clip_shape, cfg=self.cfg, world_size=self.world)
            nbytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=checkpoint_dir_name(step))
        return nbytes
