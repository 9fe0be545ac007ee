"""Dataset indexes: ``index.json`` (schema in docs/data.md), shard URL lists and per-sample offsets.

A dataset is a folder or prefix holding ``{split}-{000000..}.tar`` shards and an ``index.json``
written last. The index lists, per shard, its clip keys and the byte offset where each clip's
first tar member starts (plus the end of the last), so a reader can fetch any clip, or any run
of clips, with one ranged read.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass, field

import braceexpand

from ssagan_dist import storage
from ssagan_dist.data.format import split_name

INDEX_NAME = "index.json"
FORMAT = "ssagan-dist/clips"
VERSION = 1


@dataclass
class Shard:
    """One shard as the loader sees it: its URL, clip keys and byte offsets (len(keys) + 1)."""

    url: str
    keys: list[str]
    offsets: list[int]
    labels: bool = False
    clip_shape: tuple[int, int, int, int] | None = None  # (C, T, H, W)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def read_index(url: str, endpoint_url: str | None = None) -> dict | None:
    """The index of a dataset folder/URL (or the URL of an index.json itself); None if it has none."""
    index_url = url if url.endswith(".json") else storage.join(url, INDEX_NAME)
    try:
        raw = storage.read_bytes(index_url, endpoint_url)
    except FileNotFoundError:
        return None
    try:
        index = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{index_url}: not valid JSON: {e}") from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_url}: format {index.get('format')!r} is not {FORMAT!r}")
    if index.get("version", 0) > VERSION:
        raise ValueError(f"{index_url}: index version {index['version']} is newer than this reader ({VERSION})")
    return index


def _expand(part: str) -> list[str]:
    return list(braceexpand.braceexpand(part))


def resolve_urls(spec: str, endpoint_url: str | None = None) -> list[str]:
    """Shard URLs from a dataset folder/URL with index.json, a brace pattern, or a comma list of these."""
    urls: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.endswith(".tar") or "{" in part:
            urls.extend(_expand(part))
            continue
        index = read_index(part, endpoint_url)
        if index is None:
            raise FileNotFoundError(
                f"{part}: no {INDEX_NAME} there (an unfinished or missing dataset); "
                "give a dataset folder/URL, a brace pattern of .tar shards, or a comma-separated list"
            )
        urls.extend(storage.join(part, s["name"]) for s in index["shards"])
    if not urls:
        raise ValueError(f"no shard URLs in {spec!r}")
    return urls


def scan_shard(url: str, endpoint_url: str | None = None) -> Shard:
    """Build a shard's sample table by reading its tar headers (for shards without an index)."""
    fs, path = storage.filesystem(url, endpoint_url)
    keys: list[str] = []
    offsets: list[int] = []
    seen: set[str] = set()
    end = 0
    labels = False
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_name(info.name)
            if not keys or keys[-1] != key:
                if key in seen:
                    raise ValueError(f"{url}: members of key {key!r} are not contiguous")
                seen.add(key)
                keys.append(key)
                offsets.append(info.offset)
            labels |= ext == "cls"
            end = info.offset_data + -(-info.size // 512) * 512
    return Shard(url, keys, offsets + [end], labels=labels)


def load_shards(urls: list[str], endpoint_url: str | None = None) -> list[Shard]:
    """Sample tables for shard URLs: from the index.json beside each shard, else by scanning it."""
    indexes: dict[str, dict | None] = {}
    shards = []
    for url in urls:
        folder, name = posixpath.split(url)
        if folder not in indexes:
            indexes[folder] = read_index(folder, endpoint_url)
        index = indexes[folder]
        entry = next((s for s in index["shards"] if s["name"] == name), None) if index else None
        if entry is None:
            shards.append(scan_shard(url, endpoint_url))
            continue
        if len(entry["offsets"]) != entry["clips"] + 1 or len(entry["keys"]) != entry["clips"]:
            raise ValueError(f"{storage.join(folder, INDEX_NAME)}: entry for {name} has inconsistent keys/offsets")
        shards.append(
            Shard(
                url,
                list(entry["keys"]),
                list(entry["offsets"]),
                labels=bool(index.get("labels")),
                clip_shape=tuple(index["clip_shape"]),
                meta={"classes": index.get("classes"), "fps": index.get("fps"), "split": index.get("split")},
            )
        )
    return shards
