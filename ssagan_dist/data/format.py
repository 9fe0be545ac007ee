"""The clip sample format inside shards, shared by the writers (data_tools) and the loader.

A clip with key K is a run of tar members (WebDataset convention: key = name up to the first dot):

    K.json           metadata: source, first_frame, fps, label, orig_size [w, h], ...
    K.jpg            frame_format "jpg": the T frames stacked vertically in one JPEG, (T*H) x W
                     (one decode per clip, as in the VGAN release); used for square frames whose
                     side is a multiple of 8, with 4:4:4 chroma, so no JPEG block or chroma
                     sample straddles two frames;
    K.0000.jpg ...   otherwise one JPEG per frame;
    K.npy            frame_format "npy": uint8 array (T, H, W, C), read with allow_pickle=False
    K.cls            class index as ASCII text, only in labelled datasets

Only these decoders exist here: no member is ever unpickled. Shards are untrusted input, so
before anything is read or decoded: a member must be a regular file (no GNU/PAX sparse member,
whose few stored bytes expand to any size) whose declared size fits the bytes actually present;
an image's dimensions are checked from its header (PIL reads the header only on open) against the
index's clip shape, or a pixel budget without one; a ``.npy`` header's shape and dtype likewise.
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

FRAME_EXTS = ("jpg", "jpeg", "png")
_FRAME_MEMBER = re.compile(r"^(\d+)\.(jpg|jpeg|png)$")
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
# Pixels (T*H*W) one clip may decode to when no index gives its shape: 64 Mi pixels, 192 MiB as
# RGB uint8 (a 32-frame 1024x1024 clip is 32 Mi). With an index, its clip shape is the exact bound.
MAX_CLIP_PIXELS = 1 << 26


class BadSampleError(ValueError):
    """A clip that cannot be decoded or does not match its index; the message names shard and key."""


def split_name(name: str) -> tuple[str, str]:
    """'dir/abc.0001.jpg' -> ('dir/abc', '0001.jpg'), as webdataset splits keys and extensions."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def encode_clip(
    frames: np.ndarray,
    frame_format: str = "jpg",
    quality: int = 95,
    meta: dict | None = None,
    label: int | None = None,
) -> list[tuple[str, bytes]]:
    """Tar members (extension, bytes) for one clip; ``frames`` is uint8 (T, H, W, C)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be uint8 (T, H, W, C) with C in (1, 3), got {frames.dtype} {frames.shape}")
    members: list[tuple[str, bytes]] = []
    if meta is not None:
        members.append(("json", json.dumps(meta, sort_keys=True).encode()))
    if frame_format == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(frames), allow_pickle=False)
        members.append(("npy", buf.getvalue()))
    elif frame_format == "jpg":
        t, h, w, c = frames.shape
        if h == w and h % 8 == 0:
            # 4:4:4: subsampled chroma is upsampled across block rows on decode, bleeding between frames
            members.append(("jpg", _jpeg(frames.reshape(t * h, w, c), quality, subsampling=0)))
        else:
            members += [(f"{i:04d}.jpg", _jpeg(frame, quality)) for i, frame in enumerate(frames)]
    else:
        raise ValueError(f"frame_format must be 'jpg' or 'npy', got {frame_format!r}")
    if label is not None:
        members.append(("cls", str(int(label)).encode()))
    return members


def _jpeg(image: np.ndarray, quality: int, subsampling: int = -1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
        buf, "JPEG", quality=quality, subsampling=subsampling
    )
    return buf.getvalue()


def member_problem(info: tarfile.TarInfo, available: int) -> str | None:
    """Why tar member ``info`` must not be read as sample data (None: it may be): only regular
    files, not sparse, whose declared size fits the ``available`` bytes (of the shard or range)."""
    if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
        return (f"member {info.name!r} is a sparse file (declared {info.size} bytes, expanded from the few "
                "stored): shards hold regular files only")
    if info.type not in _REGULAR_TYPES:
        return f"member {info.name!r} is not a regular file (tar type {info.type!r}): shards hold regular files only"
    if info.offset_data + info.size > available:
        return (f"member {info.name!r} declares {info.size} bytes but only {max(available - info.offset_data, 0)} "
                "follow its header (truncated, or a forged size)")
    return None


def skipped_member(info: tarfile.TarInfo) -> bool:
    """Directory and link entries (``tar cf`` of a folder writes them): never read, never followed."""
    return info.isdir() or info.issym() or info.islnk()


def parse_members(blob: bytes) -> list[tuple[str, str, bytes]]:
    """(key, extension, data) for every regular file in a byte range cut out of a tar shard.

    Raises ValueError naming the member for anything else that is not a directory or a link
    (sparse, device, FIFO, ...), and for a member whose size exceeds the bytes in ``blob``."""
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for info in tar:
                if skipped_member(info):
                    continue
                problem = member_problem(info, len(blob))
                if problem:
                    raise ValueError(problem)
                key, ext = split_name(info.name)
                out.append((key, ext, tar.extractfile(info).read()))
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(f"not a readable tar range: {type(e).__name__}: {e}") from None
    return out


def _image_size(data: bytes, what: str) -> tuple[int, int]:
    """(width, height) from an image's header, without decoding its pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception as e:  # PIL raises several types on corrupt headers (and on decompression bombs)
        raise ValueError(f"undecodable {what}: {type(e).__name__}: {e}") from None


def _decode_image(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr


def _check_npy_header(data: bytes, shape: tuple[int, int, int, int] | None, max_pixels: int) -> None:
    """The .npy header's dtype and shape, against the index (or the pixel budget) and the bytes present."""
    f = io.BytesIO(data)
    try:
        version = npy_format.read_magic(f)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        dims, _, dtype = read_header(f)
    except Exception as e:  # numpy raises ValueError/OSError/EOFError on bad bytes
        raise ValueError(f"bad .npy member: {e}") from None
    if dtype != np.uint8 or len(dims) != 4:
        raise ValueError(f"bad .npy member: must be uint8 (T, H, W, C), got {dtype} {dims} (never unpickled)")
    if shape is not None:
        c, t, h, w = shape
        if tuple(dims) != (t, h, w, c):
            raise ValueError(f".npy header says (T,H,W,C) {tuple(dims)} != index shape {(t, h, w, c)}")
    elif dims[0] * dims[1] * dims[2] > max_pixels:
        raise ValueError(f".npy header says (T,H,W,C) {tuple(dims)}: more than {max_pixels} pixels per clip")
    if math.prod(dims) != len(data) - f.tell():
        raise ValueError(f".npy header says {tuple(dims)} ({math.prod(dims)} bytes) but "
                         f"{len(data) - f.tell()} bytes follow it")


def decode_clip(members: dict[str, bytes], shape: tuple[int, int, int, int] | None = None,
                max_pixels: int | None = None) -> np.ndarray:
    """uint8 (T, H, W, C) from one clip's members; ``shape`` (C, T, H, W) is checked when given.

    Image dimensions (and a .npy header) are checked before anything is decoded: against ``shape``
    exactly, else against ``max_pixels`` (T*H*W of one clip; default ``MAX_CLIP_PIXELS``).
    Raises ValueError with the reason (the caller adds shard and key).
    """
    channels = shape[0] if shape else 3
    if max_pixels is None:
        max_pixels = shape[1] * shape[2] * shape[3] if shape else MAX_CLIP_PIXELS
    if "npy" in members:
        _check_npy_header(members["npy"], shape, max_pixels)
        try:
            arr = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError on bad bytes
            raise ValueError(f"bad .npy member: {e}") from None
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f".npy must be uint8 (T, H, W, C), got {arr.dtype} {arr.shape}")
    elif strip := next((ext for ext in FRAME_EXTS if ext in members), None):
        width, height = _image_size(members[strip], f".{strip} frame strip")
        if shape is not None and (width, height) != (shape[3], shape[1] * shape[2]):
            raise ValueError(f".{strip} frame strip header says {width}x{height} pixels; the index's clip shape "
                             f"(C,T,H,W) {list(shape)} needs {shape[3]}x{shape[1] * shape[2]}")
        if width * height > max_pixels:
            raise ValueError(f".{strip} frame strip header says {width}x{height} pixels: more than "
                             f"{max_pixels} pixels per clip")
        try:
            image = _decode_image(members[strip], channels)
        except Exception as e:  # PIL raises several types on corrupt images
            raise ValueError(f"undecodable .{strip} frame strip: {type(e).__name__}: {e}") from None
        side = shape[2] if shape else image.shape[1]  # frames are square unless the index says otherwise
        if image.shape[0] % side:
            raise ValueError(f".{strip} strip of height {image.shape[0]} is not a whole number of {side}-row frames")
        arr = image.reshape(image.shape[0] // side, side, *image.shape[1:])
    else:
        frames = sorted((int(m.group(1)), ext) for ext in members if (m := _FRAME_MEMBER.match(ext)))
        if not frames:
            raise ValueError(f"no frames (.jpg strip, .npy or NNNN.jpg members) among {sorted(members)}")
        if [t for t, _ in frames] != list(range(len(frames))):
            raise ValueError(f"frame members are not numbered 0..{len(frames) - 1}: {[e for _, e in frames]}")
        if shape is not None and len(frames) != shape[1]:
            raise ValueError(f"{len(frames)} frame members but the index's clip shape (C,T,H,W) {list(shape)} "
                             f"has {shape[1]} frames")
        pixels = 0
        for _, ext in frames:
            width, height = _image_size(members[ext], f"frame .{ext}")
            if shape is not None and (width, height) != (shape[3], shape[2]):
                raise ValueError(f"frame .{ext} header says {width}x{height} pixels; the index's clip shape "
                                 f"(C,T,H,W) {list(shape)} needs {shape[3]}x{shape[2]}")
            pixels += width * height
            if pixels > max_pixels:
                raise ValueError(f"frame headers up to .{ext} say {pixels} pixels: more than {max_pixels} "
                                 "pixels per clip")
        try:
            arr = np.stack([_decode_image(members[ext], channels) for _, ext in frames])
        except Exception as e:  # PIL raises several types on corrupt images
            raise ValueError(f"undecodable frame: {type(e).__name__}: {e}") from None
    if shape is not None:
        c, t, h, w = shape
        if arr.shape != (t, h, w, c):
            raise ValueError(f"clip shape (T,H,W,C) {arr.shape} != index shape {(t, h, w, c)}")
    return arr


def decode_label(members: dict[str, bytes]) -> int | None:
    if "cls" not in members:
        return None
    try:
        return int(members["cls"].decode().strip())
    except ValueError:
        raise ValueError(f"bad .cls member {members['cls'][:32]!r}") from None


def decode_sample(blob: bytes, key: str, shape: tuple[int, int, int, int] | None, labelled: bool,
                  num_classes: int | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, int | None]:
    """(uint8 (T, H, W, C) clip, label or None) from the tar bytes of sample ``key``, as the index
    locates it (``max_pixels``: see ``decode_clip``). Raises ValueError with the reason (the caller
    adds the shard)."""
    members = parse_members(blob)
    found = {k for k, _, _ in members}
    if found != {key}:
        raise ValueError(f"bytes at the indexed offset hold keys {sorted(found)} (shard changed since indexing?)")
    fields = {ext: data for _, ext, data in members}
    clip = decode_clip(fields, shape, max_pixels)
    label = decode_label(fields)
    if labelled and label is None:
        raise ValueError("no .cls label in a labelled dataset")
    if label is not None and num_classes and not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside the {num_classes} classes")
    return clip, label
