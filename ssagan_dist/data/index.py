"""Dataset indexes: ``index.json`` (schema in docs/data.md), shard URL lists and per-sample offsets.

A dataset is a folder or prefix holding ``{split}-{000000..}.tar`` shards and an ``index.json``
written last. The index lists, per shard, its clip keys and the byte offset where each clip's
first tar member starts (plus the end of the last), so a reader can fetch any clip, or any run
of clips, with one ranged read.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import tarfile
from dataclasses import dataclass, field

import braceexpand

from ssagan_dist import storage
from ssagan_dist.data.format import member_problem, skipped_member, split_name

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
    size: int | None = None  # bytes the index recorded (None: scanned shard)

    def __len__(self) -> int:
        return len(self.keys)


def read_index(url: str, endpoint_url: str | None = None) -> dict | None:
    """The index of a dataset folder/URL (or the URL of an index.json itself); None if it has none."""
    index_url = url if url.endswith(".json") else storage.join(url, INDEX_NAME)
    try:
        raw = storage.read_bytes(index_url, endpoint_url)
    except FileNotFoundError:
        _require_bucket(index_url, endpoint_url)
        return None
    try:
        index = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{index_url}: not valid JSON: {e}") from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_url}: format {index.get('format')!r} is not {FORMAT!r}")
    if index.get("version", 0) > VERSION:
        raise ValueError(f"{index_url}: index version {index['version']} is newer than this reader ({VERSION})")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise ValueError(f"{index_url}: 'shards' must be a list of shard entries")
    for entry in shards:
        problem = shard_name_problem(entry.get("name"))
        if problem:
            raise ValueError(f"{index_url}: shard name {entry.get('name')!r} {problem}; "
                             "an index names shards beside it, never a path")
    return index


def shard_name_problem(name: object) -> str | None:
    """Why ``name`` (from an index.json) is not a plain file name in the dataset folder (None: it is).

    Names are joined to the dataset's folder/prefix to read shards and, by ``--overwrite``, to
    delete old ones: a separator, a '..' or a leading dot could reach outside it or a hidden file."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if ".." in name:
        return "holds '..'"
    if name.startswith("."):
        return "starts with a dot"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a control character"
    return None


def _require_bucket(url: str, endpoint_url: str | None) -> None:
    """A missing S3 bucket is named as such (not reported as a missing file inside it)."""
    if not storage.is_s3(url):
        return
    fs, path = storage.filesystem(url, endpoint_url)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        endpoint = storage.s3_endpoint(endpoint_url) or "AWS"
        raise FileNotFoundError(f"{url}: bucket {bucket!r} does not exist at S3 endpoint {endpoint} "
                                "(create it, or fix the bucket name / endpoint)")


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
    try:
        return _scan_tar(url, endpoint_url)
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(f"shard {url} is not a readable tar file ({e}): truncated, or not a shard") from None


def _scan_tar(url: str, endpoint_url: str | None) -> Shard:
    fs, path = storage.filesystem(url, endpoint_url)
    keys: list[str] = []
    offsets: list[int] = []
    seen: set[str] = set()
    end = 0
    labels = False
    # one retried whole-object read: s3fs's streaming reads can end early, silently, on a dropped
    # connection, which would give a table with samples missing
    data = fs.cat_file(path)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if skipped_member(info):
                continue
            problem = member_problem(info, len(data))
            if problem:
                raise ValueError(f"shard {url}: {problem}")
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
                size=entry.get("bytes"),
            )
        )
    return shards


@dataclass
class DatasetInfo:
    """What a driver checks before training: clip shape (C, T, H, W), clip count, the shards."""

    spec: str
    clip_shape: list[int]
    clips: int
    shards: list[Shard]


def inspect_dataset(spec: str, endpoint_url: str | None = None, what: str = "data") -> DatasetInfo:
    """Check a dataset as named in a config (folder/URL with index.json, brace pattern of shards,
    or a comma list of these) and return its clip shape and size. Raises ValueError or
    FileNotFoundError naming ``what`` (e.g. a config key), the shard and the cause:

    - each indexed shard is present and of the size the index recorded (a truncated or replaced
      shard is named; one metadata request per shard, no data read);
    - the first clip of the first shard decodes to the index's clip shape (an index that lies
      about the shape); shards without an index take their shape from that clip;
    - every shard has the same clip shape as the first (as the indexes say).
    """
    from ssagan_dist.data.format import decode_sample

    try:
        shards = load_shards(resolve_urls(spec, endpoint_url), endpoint_url)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    listings: dict[str, dict[str, int]] = {}  # folder -> {name: bytes}: one listing per folder
    for shard in shards:
        if shard.size is None:
            continue
        folder, name = posixpath.split(shard.url)
        if folder not in listings:
            fs, path = storage.filesystem(folder, endpoint_url)
            listings[folder] = {posixpath.basename(e["name"]): e["size"] for e in fs.ls(path, detail=True)}
        actual = listings[folder].get(name)
        if actual is None:
            raise FileNotFoundError(f"{what}: shard {shard.url} is listed in its {INDEX_NAME} but missing")
        if actual != shard.size:
            raise ValueError(f"{what}: shard {shard.url} has {actual} bytes, its {INDEX_NAME} recorded {shard.size} "
                             "(truncated or rewritten since indexing); re-shard or re-upload it")
    shapes = {s.clip_shape for s in shards if s.clip_shape is not None}
    if len(shapes) > 1:
        raise ValueError(f"{what}: shards have different clip shapes {sorted(shapes)}")
    first = next((s for s in shards if len(s)), None)
    if first is None:
        raise ValueError(f"{what}: {spec!r} holds no clips")
    fs, path = storage.filesystem(first.url, endpoint_url)
    blob = fs.cat_file(path, start=first.offsets[0], end=first.offsets[1])
    # as stored, not as indexed (an index that lies is named below), but never more pixels than the
    # index's shape holds: image and .npy headers are checked before anything is decoded
    bound = math.prod(first.clip_shape[1:]) if first.clip_shape is not None else None
    try:
        frames, _ = decode_sample(blob, first.keys[0], None, False, max_pixels=bound)  # (T, H, W, C)
    except ValueError as e:
        raise ValueError(f"{what}: first clip {first.keys[0]!r} of shard {first.url} cannot be decoded: {e}") from None
    channels = first.clip_shape[0] if first.clip_shape is not None else frames.shape[3]
    stored = [channels, frames.shape[0], frames.shape[1], frames.shape[2]]
    if first.clip_shape is not None and list(first.clip_shape) != stored:
        raise ValueError(f"{what}: {INDEX_NAME} beside {first.url} says clips are {list(first.clip_shape)} (C,T,H,W) "
                         f"but clip {first.keys[0]!r} holds {stored}; the index does not match its shards: re-shard")
    return DatasetInfo(spec, stored, sum(len(s) for s in shards), shards)
