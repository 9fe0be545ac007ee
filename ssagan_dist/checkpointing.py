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

A checkpoint is *complete* (``load_complete``, the one rule for resume, ``resolve`` and so
evaluate, predict and ``init.stage1_checkpoint``) when its config.yaml reads as plain data
(``config.read_yaml``: no interpolation), its model.pt loads, every rank that model.pt says saved
left its worker file, each of them loads, and the weights in model.pt hash to the ``state_digest``
the ranks recorded at the save. The digest catches a file damaged or edited after the save; it is
not a signature (whoever can write the checkpoint storage can rewrite both: docs/reliability.md,
"Trust boundaries").
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
from ssagan_dist.config import ConfigError, ExperimentConfig, InterpolationRefused, read_yaml, upgrade
from ssagan_dist.data.loader import rank_seed
from ssagan_dist.runfolder import RunFolder
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


def nets_digest(nets: dict[str, dict[str, torch.Tensor]]) -> str:
    """sha256 of state dicts by network role: names, then bytes, in sorted order."""
    h = hashlib.sha256()
    for name, state in sorted(nets.items()):
        for key, t in sorted(state.items()):
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(trainer: GANTrainer) -> str:
    """sha256 of every network's parameters and buffers (BatchNorm statistics included): equal on
    all DDP ranks when they hold the same model. Every rank records it in its worker file at each
    save; ``check_digest`` compares it with the weights in model.pt (``trainer.state_dict()["nets"]``
    holds the same state dicts)."""
    return nets_digest({name: unwrap(net).state_dict() for name, net in trainer.nets.items()})


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
        # resolved: a checkpoint's config is read back as plain data, where an interpolation is refused
        (directory / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))


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
    """config.yaml of a local checkpoint directory (``source`` as in ``read_model``), as plain data
    (``config.read_yaml``: an interpolation such as ``${oc.env:...}`` is refused, never resolved)."""
    shown = storage.join(source or str(directory), CONFIG_FILE)
    try:
        data = read_yaml(directory / CONFIG_FILE, source=shown)
    except InterpolationRefused as e:  # the message names the file and the key, never the value
        raise DamagedCheckpoint(f"checkpoint {e}") from None
    except (ConfigError, OSError) as e:  # truncated, not YAML, not text
        why = "not valid YAML" if isinstance(e, ConfigError) else type(e).__name__
        raise DamagedCheckpoint(f"checkpoint file {shown} cannot be read ({why})") from None
    if not isinstance(data, dict):
        raise DamagedCheckpoint(f"checkpoint file {shown} is not a configuration (a YAML mapping)")
    return OmegaConf.create(upgrade(data, shown))  # plain data without '${'; keys renamed since, moved


def read_worker(directory: Path, rank: int, source: Optional[str] = None) -> Optional[dict[str, Any]]:
    path = directory / worker_file(rank)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise DamagedCheckpoint(f"checkpoint file {storage.join(source or str(directory), worker_file(rank))} "
                                f"cannot be read ({type(e).__name__})") from None


def check_digest(model: dict[str, Any], workers: dict[str, Optional[dict[str, Any]]], source: str) -> None:
    """The weights in model.pt against the ``state_digest`` the ranks recorded in their worker
    files at the save; raises DamagedCheckpoint on a mismatch. Checkpoints that record none (format
    1, files written by hand) pass."""
    recorded = {name: w["state_digest"] for name, w in sorted(workers.items()) if w and "state_digest" in w}
    if not recorded:
        return
    actual = nets_digest(model["trainer"]["nets"])
    wrong = [name for name, digest in recorded.items() if digest != actual]
    if wrong:
        raise DamagedCheckpoint(f"checkpoint file {storage.join(source, MODEL_FILE)} holds weights whose digest "
                                f"({actual[:12]}...) is not the one recorded at the save in {wrong[0]} "
                                f"({recorded[wrong[0]][:12]}...): it was changed or damaged after it was written")


def load_complete(directory: Path, source: str, expect_model: Optional[str] = None
                  ) -> tuple[dict[str, Any], dict[str, Optional[dict[str, Any]]]]:
    """(model state, {worker file name: its state}) of a local copy of a checkpoint (``fetch_all``)
    if it is complete (module docstring); raises DamagedCheckpoint naming what is wrong."""
    if not (directory / CONFIG_FILE).exists():
        raise DamagedCheckpoint(f"{source}: no {CONFIG_FILE}")
    read_config(directory, source)
    model = read_model(directory, expect_model, source=source)
    # every rank uploads its own files: a save cut short can leave model.pt without them
    missing = [worker_file(r) for r in range(model.get("world_size", 0)) if not (directory / worker_file(r)).exists()]
    if missing:
        raise DamagedCheckpoint(f"{source}: {', '.join(missing)} missing (a save cut short)")
    workers = {p.name: read_worker(directory, int(p.stem.split("-")[1]), source=source)
               for p in directory.glob("worker-*.pt") if p.stem.split("-")[1].isdigit()}
    check_digest(model, workers, source)
    return model, workers


def fetch_all(uri: str, local_dir: Path, endpoint_url: Optional[str] = None) -> Path:
    """Copy a checkpoint's model.pt, config.yaml and every worker file into ``local_dir``."""
    fs, path = storage.filesystem(uri, endpoint_url)
    for name in [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]:
        if name in (MODEL_FILE, CONFIG_FILE) or re.fullmatch(r"worker-\d+\.pt", name):
            fs.get(f"{path}/{name}", str(local_dir / name))
    return local_dir


def check_complete(uri: str, endpoint_url: Optional[str] = None, expect_model: Optional[str] = None) -> dict[str, Any]:
    """``load_complete`` of a checkpoint directory, local or s3://; returns its model state."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_complete(fetch_all(uri, Path(tmp), endpoint_url), uri, expect_model)[0]


def checkpoint_dirs(run_uri: str, endpoint_url: Optional[str] = None) -> list[str]:
    """URIs of a run folder's checkpoint_* directories, newest first (none if no folder)."""
    fs, path = storage.filesystem(run_uri, endpoint_url)
    if not fs.isdir(path):
        return []
    names = sorted((p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)
                    if re.fullmatch(r"checkpoint_\d+", p.rsplit("/", 1)[-1])), reverse=True)
    return [storage.join(run_uri, n) for n in names]


def open_complete(uri: str, local_dir: Path, endpoint_url: Optional[str] = None, expect_model: Optional[str] = None
                  ) -> tuple[str, dict[str, Any], dict[str, Optional[dict[str, Any]]]]:
    """(checkpoint URI, model state, worker states) with the checkpoint's files copied into
    ``local_dir``: a checkpoint directory as given, which must be complete (else DamagedCheckpoint);
    a run folder's newest complete checkpoint, each damaged newer one skipped with a warning
    naming it and why. Storage faults propagate."""
    fs, path = storage.filesystem(uri, endpoint_url)
    if fs.exists(f"{path}/{MODEL_FILE}"):
        return (uri, *load_complete(fetch_all(uri, local_dir, endpoint_url), uri, expect_model))
    if not fs.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {uri}")
    candidates = checkpoint_dirs(uri, endpoint_url)
    if not candidates:
        raise FileNotFoundError(f"{uri} holds neither {MODEL_FILE} nor checkpoint_* directories")
    newest_problem: Optional[Exception] = None
    for candidate in candidates:
        for old in local_dir.iterdir():  # the previous candidate's files
            old.unlink()
        try:
            return (candidate, *load_complete(fetch_all(candidate, local_dir, endpoint_url), candidate, expect_model))
        except (DamagedCheckpoint, FileNotFoundError) as e:
            log.warning("skipping damaged checkpoint %s: %s", candidate, e)
            newest_problem = newest_problem or e
    raise newest_problem  # none is complete: what is wrong with the newest


def resolve(uri: str, endpoint_url: Optional[str] = None) -> str:
    """A checkpoint directory URI: as given if complete (else DamagedCheckpoint); a run folder
    resolves to its newest complete checkpoint (``open_complete``)."""
    with tempfile.TemporaryDirectory() as tmp:
        return open_complete(uri, Path(tmp), endpoint_url)[0]


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
        model, workers = load_complete(fetch_all(uri, Path(tmp), endpoint_url), uri, expect_model)
    return model, workers.get(worker_file(rank))


def load_generator(uri: str, endpoint_url: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The generator weights of a checkpoint (or a run folder's newest complete one), for a network
    a trainer starts from (``GANTrainer.pretrained``): its moving average of G when it keeps one
    (what its validation and evaluate scored), else G."""
    with tempfile.TemporaryDirectory() as tmp:
        state = open_complete(uri, Path(tmp), endpoint_url)[1]
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
        self.run_uri = RunFolder.of(cfg).url
        self.endpoint = cfg.run.s3_endpoint
        self.events: list[dict[str, Any]] = []  # resumed / started_from / skipped_damaged_checkpoint
        self.resumed_from: Optional[str] = None  # the run's own checkpoint that restore took

    @staticmethod
    def ray_config(cfg: ExperimentConfig):
        """Ray Train's retention: the last ``checkpoint.keep``, plus the best by ``checkpoint.best_metric``
        in the order ``checkpoint.best_mode`` (max: highest, min: lowest)."""
        import ray.train

        return ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep,
                                          checkpoint_score_attribute=cfg.checkpoint.best_metric,
                                          checkpoint_score_order=cfg.checkpoint.best_mode)

    def newest_complete(self) -> Optional[tuple[str, dict[str, Any], Optional[dict[str, Any]]]]:
        """(uri, model state, this rank's worker state) of the run's newest complete checkpoint
        (``load_complete``); damaged ones are skipped with a warning (and an event)."""
        for uri in checkpoint_dirs(self.run_uri, self.endpoint):
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    model, workers = load_complete(fetch_all(uri, Path(tmp), self.endpoint), uri, self.cfg.model.name)
                mine = workers.get(worker_file(self.rank))
                if mine is None and workers.get(worker_file(0)) is not None:  # a rank the group did not
                    mine = {"loader": workers[worker_file(0)]["loader"]}  # have: the data position is rank 0's
                return uri, model, mine
            except (DamagedCheckpoint, FileNotFoundError) as e:  # storage faults propagate: never skip on them
                log.warning("skipping damaged checkpoint %s: %s", uri, e)
                self.events.append({"event": "skipped_damaged_checkpoint", "problem": f"{uri}: {e}"})
        return None

    def restore(self, trainer: GANTrainer, loader: Any, start_from: Optional[str] = None) -> int:
        """Load the checkpoint the policy picks into ``trainer`` and the data ``loader`` (and this
        rank's RNG); returns the step to continue from. Learning rates stay the config's."""
        seed = self.cfg.loop.seed
        model_state = worker_state = None
        found = self.newest_complete()
        if found is not None:
            self.resumed_from, model_state, worker_state = found
            self.events.append({"event": "resumed", "from": self.resumed_from})
        elif start_from:
            model_state, worker_state = load_for_worker(start_from, self.rank, self.cfg.model.name, self.endpoint)
            self.events.append({"event": "started_from", "from": start_from})
        if model_state is None:
            for network, uri in trainer.pretrained_sources().items():
                trainer.load_pretrained(network, load_generator(uri, self.endpoint))
            torch.manual_seed(rank_seed(seed, self.rank) + 1)  # each rank its own noise
            return 0
        trainer.load_state_dict(model_state["trainer"])
        if worker_state is not None:
            try:
                loader.load_state_dict(worker_state["loader"])
            except ValueError as e:
                raise RuntimeError(f"cannot continue run {self.run_uri} with {self.world} worker(s): {e}; set "
                                   "scaling.min_ranks for a group that may resize, or start a new run.name") from None
        if worker_state is not None and "rng" in worker_state:
            set_rng_state(worker_state["rng"])
        else:  # a rank the checkpoint did not have (the group grew): its own noise, seeded afresh
            torch.manual_seed(rank_seed(seed, self.rank) + 1 + model_state["step"])
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
