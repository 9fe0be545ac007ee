"""Clip datasets: WebDataset-style tar shards + index.json, read by ClipLoader (docs/data.md)."""

from ssagan_dist.data.format import BadSampleError, decode_clip, encode_clip
from ssagan_dist.data.index import INDEX_NAME, Shard, load_shards, read_index, resolve_urls
from ssagan_dist.data.loader import ClipLoader, epoch_order, pin_memory

__all__ = [
    "INDEX_NAME",
    "BadSampleError",
    "ClipLoader",
    "Shard",
    "decode_clip",
    "encode_clip",
    "epoch_order",
    "pin_memory",
    "load_shards",
    "read_index",
    "resolve_urls",
]
