"""Which sweep folders Ray Tune may restore: a signed manifest of the state it would unpickle.

Ray Tune keeps a sweep's state in its folder (``<run.storage_path>/<name>``, an S3 prefix on a
cluster) as pickles: ``tuner.pkl``, ``experiment_state-*.json`` (JSON with cloudpickled fields,
``CLOUDPICKLE_FALLBACK``), ``basic-variant-state-*.json`` and ``searcher-state-*.pkl`` (pickles
despite some names), ``callback-states-*.pkl``, and in the trial folders ``params.pkl``,
``error.pkl`` and a checkpoint's ``_dict_checkpoint.pkl``. ``Tuner.restore`` unpickles them, so
whoever can write the folder would run code on the sweep driver. Restoring is therefore allowed
only from state this machine's sweeps wrote:

- After every save of Tune's experiment state, ``ManifestSigner`` (a Tune callback) writes
  ``tune-state.manifest`` into the folder: the SHA-256 digest of every such file (``is_tune_state``),
  signed with HMAC-SHA256 under a key kept outside the folder (``key_path``: ``$SSAGAN_SWEEP_KEY_FILE``,
  else ``~/.config/ssagan-dist/sweep.key``, created 0600 on first use).
- ``check_restorable`` runs before ``Tuner.restore``: every such file in the folder must carry a
  digest the manifest signed, else the restore is refused in one line naming the folder and the
  files (changed, or never signed), and saying how to start a new sweep instead.

Signing happens before Tune uploads what it saved: Tune writes its state into a local staging
folder of the driver (``save_to_dir``: experiment state, searcher, then the callbacks' states,
whose ``get_state`` this callback uses as its hook) and only then copies that folder to storage.
The manifest names the digests of the staged files, and keeps each file's previous digests
(``HISTORY``), so a driver killed at any point, even in the middle of an upload, leaves a folder
whose every file is one version or another that it signed: ``--name`` resumes it.
``tuner.pkl``, which Tune writes straight to storage when the sweep is created, is signed from
storage right then (``sign_storage_files``).

Reading results never needs this: ``results.load_trials`` parses JSON and CSV only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from ssagan_dist import storage
from ssagan_dist.config import ConfigError

log = logging.getLogger(__name__)

MANIFEST_FILE = "tune-state.manifest"  # not .json: Tune copies the folder's .json/.pkl files back on restore
KEY_ENV = "SSAGAN_SWEEP_KEY_FILE"
DEFAULT_KEY = Path("~/.config/ssagan-dist/sweep.key")
HISTORY = 32  # digests kept per file: the versions a killed driver may have left on storage
FORMAT = 1
# Folders of a sweep that hold no Tune state (the Train runs, our own logs and report): not scanned.
NOT_TUNE = frozenset({"train_runs", "tensorboard", "history", "report_png"})
OURS = frozenset({"sweep.json"})  # top-level JSON the driver writes and reads as plain JSON


class UntrustedSweepState(ConfigError):
    """A sweep folder whose Tune state this machine cannot vouch for: restoring it is refused."""


# -- the key ----------------------------------------------------------------------------------------

def key_path() -> Path:
    return Path(os.environ.get(KEY_ENV) or DEFAULT_KEY).expanduser()


def load_key(create: bool = False) -> bytes:
    """The signing key; with ``create``, a new random one (0600, its folder 0700) if there is none."""
    path = key_path()
    if not path.exists():
        if not create:
            raise FileNotFoundError(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # whole or not at all, and never over a key another sweep just made
            log.info("created the sweep signing key %s", path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedSweepState(f"sweep signing key {path} is writable by other users (mode "
                                  f"{stat.filemode(mode)}): chmod 600 {path}")
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise UntrustedSweepState(f"sweep signing key {path} holds {len(key)} bytes; it needs at least 32 "
                                  f"(remove it and a new one is made; ${KEY_ENV} names another file)")
    return key


def _mac(key: bytes, payload: dict[str, Any]) -> str:
    return hmac.new(key, json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


# -- which files ------------------------------------------------------------------------------------

def is_tune_state(relpath: str) -> bool:
    """Whether Tune may unpickle this file of a sweep folder (``relpath``: '/'-separated): any
    ``.pkl``/``.pickle`` outside the Train runs and our own folders, and any top-level ``.json``
    but ours (Tune's experiment state and its searchers' ``-state-`` files)."""
    parts = relpath.split("/")
    if parts[0] in NOT_TUNE or parts[-1] == MANIFEST_FILE:
        return False
    name = parts[-1]
    if name.endswith((".pkl", ".pickle")):
        return True
    return len(parts) == 1 and name.endswith(".json") and name not in OURS


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_digests(root: Path) -> dict[str, str]:
    """{relative path: sha256} of the Tune state files under a local folder (e.g. the driver's staging)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root).as_posix()
        if rel_folder == ".":
            dirs[:] = [d for d in dirs if d not in NOT_TUNE]
            rel_folder = ""
        for name in files:
            rel = f"{rel_folder}/{name}" if rel_folder else name
            if is_tune_state(rel) and not name.startswith("tmp-"):  # Tune's half-written temporary files
                found[rel] = _sha256_file(Path(folder) / name)
    return found


def storage_digests(sweep_url: str, endpoint: Optional[str] = None) -> dict[str, str]:
    """{relative path: sha256} of the Tune state files in a sweep folder, local or s3://."""
    fs, root = storage.filesystem(sweep_url, endpoint)
    root = root.rstrip("/")
    if not fs.isdir(root):
        return {}
    found = {}
    for folder, dirs, files in fs.walk(root, topdown=True):
        rel_folder = folder.rstrip("/")[len(root):].strip("/")
        if not rel_folder:
            dirs[:] = [d for d in dirs if d not in NOT_TUNE]
        for name in files:
            rel = f"{rel_folder}/{name}" if rel_folder else name
            if is_tune_state(rel):
                found[rel] = hashlib.sha256(storage.read_bytes(storage.join(sweep_url, rel), endpoint)).hexdigest()
    return found


# -- the manifest -----------------------------------------------------------------------------------

def read_manifest(sweep_url: str, endpoint: Optional[str] = None) -> dict[str, list[str]]:
    """{relative path: the digests signed for it, newest first}; raises UntrustedSweepState if the
    manifest is missing, malformed, or not signed with this machine's key."""
    url = storage.join(sweep_url, MANIFEST_FILE)
    if not storage.exists(url, endpoint):
        raise UntrustedSweepState(f"no {MANIFEST_FILE}: nothing vouches that this machine's sweeps wrote the state")
    try:
        doc = json.loads(storage.read_bytes(url, endpoint))
        payload, mac = doc["payload"], doc["hmac"]
        files = payload["files"]
        if payload.get("format") != FORMAT or not isinstance(files, dict) or not isinstance(mac, str):
            raise ValueError("format")
    except (ValueError, KeyError, TypeError):
        raise UntrustedSweepState(f"{MANIFEST_FILE} is not a manifest this ssagan-dist writes") from None
    try:
        key = load_key(create=False)
    except FileNotFoundError:
        raise UntrustedSweepState(f"{MANIFEST_FILE} was signed with a key this machine does not have (none at "
                                  f"{key_path()}; ${KEY_ENV} names the key file)") from None
    if not hmac.compare_digest(_mac(key, payload), mac):
        raise UntrustedSweepState(f"{MANIFEST_FILE}'s signature does not match the key {key_path()}: the manifest "
                                  "was changed, or signed with another key")
    return {str(k): [str(d) for d in v] for k, v in files.items() if isinstance(v, list)}


def write_manifest(sweep_url: str, files: dict[str, list[str]], endpoint: Optional[str] = None) -> None:
    payload = {"format": FORMAT, "files": files, "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    doc = {"payload": payload, "hmac": _mac(load_key(create=True), payload)}
    storage.write_bytes_atomic(storage.join(sweep_url, MANIFEST_FILE), json.dumps(doc, indent=1).encode(), endpoint)


def _listed(paths: list[str], limit: int = 4) -> str:
    paths = sorted(paths, key=lambda p: (p.count("/"), p))  # Tune's own files before the trials'
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_restorable(sweep_url: str, endpoint: Optional[str] = None) -> dict[str, list[str]]:
    """Refuse (UntrustedSweepState, one line naming the folder and the files) unless every Tune
    state file in the sweep folder has a digest that this machine's signed manifest lists; returns
    the manifest's entries (the signer of the resumed sweep starts from them)."""
    present = storage_digests(sweep_url, endpoint)
    how = (f"Ray Tune's state files are pickles and restoring them would run their code, so the sweep is not "
           f"restored; start a new sweep with another --name (or move {sweep_url} away). Its results stay "
           f"readable: python -m ssagan_dist.tune report {sweep_url}")
    try:
        signed = read_manifest(sweep_url, endpoint)
    except UntrustedSweepState as e:
        raise UntrustedSweepState(f"sweep folder {sweep_url} holds Tune state ({_listed(sorted(present))}) but {e}. "
                                  f"{how}") from None
    changed = sorted(rel for rel, digest in present.items() if rel in signed and digest not in signed[rel])
    unsigned = sorted(rel for rel in present if rel not in signed)
    if changed or unsigned:
        what = "; ".join(part for part in (
            f"changed since the sweep signed it: {_listed(changed)}" if changed else "",
            f"never signed: {_listed(unsigned)}" if unsigned else "") if part)
        raise UntrustedSweepState(f"sweep folder {sweep_url}: {what}. {how}")
    return signed


# -- signing while a sweep runs ---------------------------------------------------------------------

def signed_files(sweep_url: str, endpoint: Optional[str] = None) -> dict[str, list[str]]:
    """The manifest's entries if it verifies, else none (a new sweep's signing starts afresh)."""
    try:
        return read_manifest(sweep_url, endpoint)
    except UntrustedSweepState:
        return {}


def merge_digests(files: dict[str, list[str]], digests: dict[str, str]) -> dict[str, list[str]]:
    """``files`` with each of ``digests`` as its file's newest version (``HISTORY`` kept)."""
    merged = {k: list(v) for k, v in files.items()}
    for rel, digest in digests.items():
        merged[rel] = ([digest] + [d for d in merged.get(rel, []) if d != digest])[:HISTORY]
    return merged


def sign_storage_files(sweep_url: str, names: list[str], endpoint: Optional[str] = None) -> None:
    """Sign files as they are on storage now: ``tuner.pkl``, which Tune writes straight there when
    the Tuner is created (call right after creating it, before ``fit``)."""
    digests = {name: hashlib.sha256(storage.read_bytes(storage.join(sweep_url, name), endpoint)).hexdigest()
               for name in names}
    write_manifest(sweep_url, merge_digests(signed_files(sweep_url, endpoint), digests), endpoint)


def unsigned_files(sweep_url: str, endpoint: Optional[str] = None) -> list[str]:
    """Tune state files on storage whose digest the manifest does not list (after ``fit``: none)."""
    signed = signed_files(sweep_url, endpoint)
    return sorted(rel for rel, digest in storage_digests(sweep_url, endpoint).items()
                  if digest not in signed.get(rel, []))


class ManifestSigner(Callback):
    """Signs the Tune state of a running sweep (module docstring): at every save of the experiment
    state, the staged files' digests go into the manifest before Tune uploads them.

    Tune pickles its callbacks into tuner.pkl and a restored sweep runs those copies, so the signer
    keeps nothing but where the folder is: ``setup`` starts from the manifest on storage (checked
    by ``check_restorable`` just before a restore)."""

    def __init__(self, sweep_url: str, endpoint: Optional[str]):
        self.sweep_url, self.endpoint = sweep_url, endpoint
        self._reset()

    def _reset(self) -> None:
        self.files: dict[str, list[str]] = {}
        self.written: Optional[dict[str, list[str]]] = None
        self.staging: Optional[Path] = None

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep_url": self.sweep_url, "endpoint": self.endpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.sweep_url, self.endpoint = state["sweep_url"], state["endpoint"]
        self._reset()

    def setup(self, **info):
        self.files = signed_files(self.sweep_url, self.endpoint)
        self.written = {k: list(v) for k, v in self.files.items()}

    def sign(self, digests: dict[str, str]) -> None:
        """Add these digests (each a file's newest version) and write the manifest if it changed."""
        self.files = merge_digests(self.files, digests)
        if self.files != self.written:
            write_manifest(self.sweep_url, self.files, self.endpoint)
            self.written = {k: list(v) for k, v in self.files.items()}

    def _note_staging(self, trial) -> None:
        if self.staging is None and trial is not None:
            self.staging = Path(trial.storage.experiment_driver_staging_path)

    def on_trial_add(self, iteration, trials, trial, **info):
        self._note_staging(trial)

    def on_step_begin(self, iteration, trials, **info):
        self._note_staging(trials[0] if trials else None)

    def _find_staging(self) -> Optional[Path]:
        """Where Tune stages this experiment when no trial has said so yet (a restored sweep whose
        trials had all finished runs no step): ``<Ray session>/artifacts/<start>/<name>/driver_artifacts``,
        the one whose experiment state Tune wrote last."""
        try:
            from ray.train.constants import _get_ray_train_session_dir

            name = self.sweep_url.rstrip("/").rsplit("/", 1)[-1]
            found = [(max(p.stat().st_mtime for p in d.glob("experiment_state-*.json")), d)
                     for d in Path(_get_ray_train_session_dir()).glob(f"*/{name}/driver_artifacts")
                     if any(d.glob("experiment_state-*.json"))]
        except Exception as e:  # noqa: BLE001 - a Ray without this layout: the check after fit warns
            log.warning("cannot find Tune's staging folder to sign it: %s", e)
            return None
        return max(found)[1] if found else None

    def get_state(self) -> Optional[dict]:
        """Tune's hook inside ``save_to_dir``, after the experiment and searcher state are staged and
        before the staging folder is uploaded: sign what was staged. Returns None (nothing to save)."""
        staging = self.staging or self._find_staging()
        if staging is not None and staging.is_dir():
            self.sign(local_digests(staging))
        return None
