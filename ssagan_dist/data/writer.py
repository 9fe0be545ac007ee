"""Writing clip datasets: tar shards plus index.json, the format ``index.py`` reads (docs/data.md)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import datetime, timezone
from typing import Any

from ssagan_dist import storage
from ssagan_dist.data.index import FORMAT, INDEX_NAME, VERSION, read_index

MiB = 2**20


class ShardWriter:
    """Writes clips into ``{prefix}-{000000..}.tar`` shards of about ``shard_bytes``, then index.json.

    Each shard is built in memory and written with one atomic write (local temp file + rename,
    or one S3 upload), and index.json is written last: a reader sees the whole dataset or none.
    Tar headers are fixed (mtime 0, uid 0), so the same clips give byte-identical shards.
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
        self.shard_bytes, self.shard_clips = shard_bytes, shard_clips
        old = read_index(self.out_url, endpoint_url)
        if old is not None:
            if not overwrite:
                raise FileExistsError(f"{self.out_url} already holds a dataset ({INDEX_NAME}); pass overwrite=True / --overwrite")
            # unpublish first, so no reader pairs the old index with new shards
            storage.remove(storage.join(self.out_url, INDEX_NAME), endpoint_url)
            for entry in old["shards"]:
                storage.remove(storage.join(self.out_url, entry["name"]), endpoint_url)
        self.shards: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._new_shard()

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
        storage.write_bytes_atomic(storage.join(self.out_url, name), data, self.endpoint_url)
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
        """Flush the last shard and publish index.json (``fields``: split, clip_shape, fps, ...)."""
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
        data = json.dumps(index, indent=1).encode()
        storage.write_bytes_atomic(storage.join(self.out_url, INDEX_NAME), data, self.endpoint_url)
        return index
