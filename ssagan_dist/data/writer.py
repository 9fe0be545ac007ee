"""Writing clip datasets: tar shards plus index.json, the format ``index.py`` reads (docs/data.md).

Publication is atomic: a dataset appears at its URL complete (shards + index.json) or not at all.
Shards are written to a hidden staging place beside the output, ``.<name>.partial-<id>``, and
``close()`` publishes them:

- local: when the output folder does not exist yet (the usual case) the staging folder, index
  included, is renamed onto it in one ``os.rename``; into an existing folder each shard is moved
  in with ``os.replace`` and index.json comes last;
- S3 (no rename there): every shard is copied server-side from the staging prefix to the output
  prefix, index.json is written last (readers need it, so nothing is visible before), then the
  staging prefix is deleted. Server-side copies move no bytes through this machine.

A writer that fails or is abandoned (an exception, Ctrl-C) deletes its staging place: ``with
ShardWriter(...)`` or ``discard()`` does it at once, and a finalizer does it when the writer is
garbage-collected or the interpreter exits. Only a killed process (SIGKILL) can leave a
``.partial-`` folder or prefix behind; it is never part of a dataset and can be deleted.
Replacing a dataset (``overwrite=True``) removes the old one only at publication, so a failed
run leaves the old dataset as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid
import weakref
from datetime import datetime, timezone
from typing import Any

from ssagan_dist import storage
from ssagan_dist.data.index import FORMAT, INDEX_NAME, VERSION, read_index

MiB = 2**20

_open_writers: "weakref.WeakSet[ShardWriter]" = weakref.WeakSet()


def discard_unfinished() -> None:
    """Discard every writer of this process that was not closed (a command's error path)."""
    for writer in list(_open_writers):
        writer.discard()


def _staging_url(out_url: str) -> str:
    parent, _, name = out_url.rstrip("/").rpartition("/")
    tag = f"partial-{uuid.uuid4().hex[:12]}"
    if storage.is_s3(out_url) and "/" not in out_url[len("s3://"):]:  # a bare bucket
        return f"{out_url}/.{tag}"
    return f"{parent}/.{name}.{tag}" if parent else f".{name}.{tag}"


def _remove_tree(url: str, endpoint_url: str | None, created_dirs: list[str]) -> None:
    """Delete a staging folder/prefix, then the folders created for it if they are empty."""
    try:
        fs, path = storage.filesystem(url, endpoint_url)
        if storage.is_s3(url):
            if fs.exists(path):
                fs.rm(path, recursive=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
        for folder in reversed(created_dirs):
            try:
                os.rmdir(folder)
            except OSError:
                break
    except Exception:  # best effort: runs in error paths and at interpreter exit
        pass


class ShardWriter:
    """Writes clips into ``{prefix}-{000000..}.tar`` shards of about ``shard_bytes``, then index.json.

    Each shard is built in memory and written to the staging place with one atomic write;
    ``close()`` publishes shards and index (module docstring). Tar headers are fixed (mtime 0,
    uid 0), so the same clips give byte-identical shards.
    """

    def __init__(
        self,
        out_url: str,
        *,
        prefix: str = "train",
        shard_bytes: int = 256 * MiB,
        shard_clips: int | None = None,
        endpoint_url: str | None = None,
        overwrite: bool = False,
    ):
        self.out_url, self.prefix, self.endpoint_url = out_url.rstrip("/"), prefix, endpoint_url
        if not storage.is_s3(self.out_url):
            self.out_url = os.path.abspath(storage.filesystem(self.out_url)[1])
        self.shard_bytes, self.shard_clips = shard_bytes, shard_clips
        self._old = read_index(self.out_url, endpoint_url)  # also names a missing S3 bucket
        if self._old is not None and not overwrite:
            raise FileExistsError(f"{self.out_url} already holds a dataset ({INDEX_NAME}); pass overwrite=True / --overwrite")
        self.staging_url = _staging_url(self.out_url)
        self._created_dirs: list[str] = []
        self._discard = weakref.finalize(self, _remove_tree, self.staging_url, endpoint_url, self._created_dirs)
        self.published = False
        _open_writers.add(self)
        self.shards: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._new_shard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        """Delete everything written so far (nothing was published)."""
        if not self.published:
            self._discard()

    def _make_local_parents(self) -> None:
        """Create the output's parent folder(s) for the staging folder, remembering which are new."""
        if storage.is_s3(self.out_url) or self._created_dirs:
            return
        missing, folder = [], os.path.dirname(self.out_url)
        while folder and not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for folder in reversed(missing):
            os.mkdir(folder)
            self._created_dirs.append(folder)
    def _new_shard(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)
        self._keys: list[str] = []
        self._offsets: list[int] = []

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Add one clip: ``members`` are (extension, bytes), stored as ``key.extension``."""
        if "." in key or "/" in key:
            raise ValueError(f"clip key {key!r} must not contain '.' or '/'")
        if key in self._seen:
            raise ValueError(f"duplicate clip key {key!r}")
        self._seen.add(key)
        size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        full = self._keys and (
            self._tar.offset + size > self.shard_bytes or (self.shard_clips and len(self._keys) >= self.shard_clips)
        )
        if full:
            self.flush()
        self._keys.append(key)
        self._offsets.append(self._tar.offset)
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))

    def flush(self) -> None:
        """Write the current shard (if it holds clips)."""
        if not self._keys:
            return
        end = self._tar.offset
        self._tar.close()
        data = self._buf.getvalue()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._make_local_parents()
        storage.write_bytes_atomic(storage.join(self.staging_url, name), data, self.endpoint_url)
        self.shards.append(
            {
                "name": name,
                "clips": len(self._keys),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "keys": self._keys,
                "offsets": self._offsets + [end],
            }
        )
        self._new_shard()

    @property
    def clips(self) -> int:
        return sum(s["clips"] for s in self.shards) + len(self._keys)

    def close(self, **fields: Any) -> dict[str, Any]:
        """Flush the last shard and publish the dataset with its index.json (``fields``: split,
        clip_shape, fps, ...). On any failure the staging place is deleted and nothing is published."""
        try:
            self.flush()
            if not self.shards:
                raise ValueError(f"no clips were written to {self.out_url}: nothing to index")
            index = {
                "format": FORMAT,
                "version": VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "split": self.prefix,
                **fields,
                "total_clips": sum(s["clips"] for s in self.shards),
                "total_bytes": sum(s["bytes"] for s in self.shards),
                "num_shards": len(self.shards),
                "shards": self.shards,
            }
            self._publish(json.dumps(index, indent=1).encode())
        except BaseException:
            self.discard()
            raise
        self.published = True
        _open_writers.discard(self)
        return index

    def _publish(self, index_bytes: bytes) -> None:
        names = [s["name"] for s in self.shards]
        fs, out = storage.filesystem(self.out_url, self.endpoint_url)
        _, staging = storage.filesystem(self.staging_url, self.endpoint_url)
        if not storage.is_s3(self.out_url):
            storage.write_bytes_atomic(storage.join(self.staging_url, INDEX_NAME), index_bytes)
            if os.path.isdir(out) and not os.listdir(out):
                os.rmdir(out)  # an empty folder made beforehand
            if not os.path.exists(out):
                os.rename(staging, out)  # the whole dataset appears at once
                return
        old_names = [s["name"] for s in self._old["shards"]] if self._old else []
        storage.remove(storage.join(self.out_url, INDEX_NAME), self.endpoint_url)  # unpublish the old dataset
        for name in names:
            if storage.is_s3(self.out_url):
                fs.copy(f"{staging}/{name}", f"{out}/{name}")
            else:
                os.replace(os.path.join(staging, name), os.path.join(out, name))
        for name in set(old_names) - set(names):
            storage.remove(storage.join(self.out_url, name), self.endpoint_url)
        storage.write_bytes_atomic(storage.join(self.out_url, INDEX_NAME), index_bytes, self.endpoint_url)
        self._discard()  # the staging place, now empty (local) or holding copies (S3)
