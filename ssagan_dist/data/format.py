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

Only these decoders exist here: no member is ever unpickled.
"""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
from PIL import Image

FRAME_EXTS = ("jpg", "jpeg", "png")
_FRAME_MEMBER = re.compile(r"^(\d+)\.(jpg|jpeg|png)$")


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


def parse_members(blob: bytes) -> list[tuple[str, str, bytes]]:
    """(key, extension, data) for every regular file in a byte range cut out of a tar shard."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_name(info.name)
            out.append((key, ext, tar.extractfile(info).read()))
    return out


def _decode_image(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_clip(members: dict[str, bytes], shape: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 (T, H, W, C) from one clip's members; ``shape`` (C, T, H, W) is checked when given.

    Raises ValueError with the reason (the caller adds shard and key).
    """
    channels = shape[0] if shape else 3
    if "npy" in members:
        try:
            arr = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError on bad bytes
            raise ValueError(f"bad .npy member: {e}") from None
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f".npy must be uint8 (T, H, W, C), got {arr.dtype} {arr.shape}")
    elif strip := next((ext for ext in FRAME_EXTS if ext in members), None):
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
                  num_classes: int | None = None) -> tuple[np.ndarray, int | None]:
    """(uint8 (T, H, W, C) clip, label or None) from the tar bytes of sample ``key``, as the index
    locates it. Raises ValueError with the reason (the caller adds the shard)."""
    members = parse_members(blob)
    found = {k for k, _, _ in members}
    if found != {key}:
        raise ValueError(f"bytes at the indexed offset hold keys {sorted(found)} (shard changed since indexing?)")
    fields = {ext: data for _, ext, data in members}
    clip = decode_clip(fields, shape)
    label = decode_label(fields)
    if labelled and label is None:
        raise ValueError("no .cls label in a labelled dataset")
    if label is not None and num_classes and not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside the {num_classes} classes")
    return clip, label
