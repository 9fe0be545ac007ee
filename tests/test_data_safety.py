"""Shards and indexes are untrusted input (issue #33, points 4 and 5).

- A tar member is read only if it is a regular file (no GNU or PAX sparse member: 1.5 KB stored
  can read back as 8 MiB, and declare many GiB) whose size fits the bytes present; an image's
  dimensions are checked from its header against the index's clip shape before it is decoded.
  Refused on the driver (``inspect_dataset``), in the loader and by ``verify``, naming the shard.
- Shard names in index.json are plain file names: a path that leaves the dataset folder is
  refused naming the index, before anything is read or (``--overwrite``) deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_tools import verify as verify_tool
from ssagan_dist.data import BadSampleError, ClipLoader, read_index, resolve_urls
from ssagan_dist.data.format import decode_sample, encode_clip, parse_members
from ssagan_dist.data.index import inspect_dataset, load_shards
from ssagan_dist.data.writer import ShardWriter

SHAPE = [3, 2, 8, 8]  # (C, T, H, W): 8x8 frames, stored as one 8x16 JPEG strip per clip
MiB = 1 << 20


def write_dataset(folder: Path, clips: int = 4) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(str(folder), prefix="train", shard_clips=clips) as writer:
        for i in range(clips):
            frames = rng.integers(0, 256, size=(SHAPE[1], SHAPE[2], SHAPE[3], SHAPE[0]), dtype=np.uint8)
            writer.add(f"clip{i:03d}", encode_clip(frames, meta={"i": i}))
        writer.close(clip_shape=SHAPE, fps=8, labels=False)
    return folder


def member_at(shard: bytes, name: str) -> tuple[int, int]:
    """(header offset, stored size) of member ``name``."""
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        info = tar.getmember(name)
        return info.offset, info.size


def reindex(folder: Path, shard: Path, data: bytes) -> None:
    """Write the forged shard and make index.json agree with its bytes (size and sha256)."""
    shard.write_bytes(data)
    index = json.loads((folder / "index.json").read_text())
    entry = next(e for e in index["shards"] if e["name"] == shard.name)
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "index.json").write_text(json.dumps(index))


def checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return header


def gnu_sparse_header(name: str, stored: int, realsize: int) -> bytes:
    """An old-GNU sparse member ('S'): ``stored`` bytes in the archive, read back as ``realsize``."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, stored
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    itn = lambda n: tarfile.itn(n, 12, tarfile.GNU_FORMAT)  # noqa: E731
    header[386:398], header[398:410] = itn(realsize - stored), itn(stored)  # one data segment, at the end
    header[482], header[483:495] = 0, itn(realsize)
    return bytes(checksum(header))


def forge_member(folder: Path, name: str, *, header=None, data=None) -> Path:
    """Replace member ``name`` of the first shard in place (same stored size, so the index's
    offsets still hold): its 512-byte header and/or its data."""
    shard = sorted(folder.glob("*.tar"))[0]
    raw = bytearray(shard.read_bytes())
    offset, size = member_at(bytes(raw), name)
    if header is not None:
        raw[offset:offset + 512] = header(size)
    if data is not None:
        new = data(bytes(raw[offset + 512:offset + 512 + size]))
        assert len(new) == size
        raw[offset + 512:offset + 512 + size] = new
    reindex(folder, shard, bytes(raw))
    return shard


def huge_jpeg_header(width: int, height: int):
    """The same JPEG bytes with the frame header (SOF0) claiming width x height."""
    def patch(jpeg: bytes) -> bytes:
        sof = jpeg.index(b"\xff\xc0")
        return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]
    return patch


def regular_header_with_size(name: str, declared: int):
    def make(stored: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode = declared, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT)
    return make


def refusals(folder: Path) -> dict[str, str]:
    """What the driver check, the loader and verify say about the dataset at ``folder``."""
    out = {}
    with pytest.raises(ValueError) as driver:
        inspect_dataset(str(folder), what="data.train_urls")
    out["driver"] = str(driver.value)
    loader = ClipLoader(str(folder), batch_size=4, shuffle=False)
    with pytest.raises(BadSampleError) as worker:
        next(iter(loader))
    out["loader"] = str(worker.value)
    report = verify_tool.verify(str(folder))
    assert not report["ok"]
    out["verify"] = "; ".join(f"{p['shard']} key {p['key']}: {p['problem']}" for p in report["problems"])
    return out


# -- point 4: sparse members, forged sizes, image headers ------------------------------------------

@pytest.mark.parametrize("kind", ["gnu", "pax"])
def test_sparse_member_is_refused_naming_the_shard(tmp_path, kind):
    folder = write_dataset(tmp_path / "ds")
    if kind == "gnu":
        shard = forge_member(folder, "clip000.jpg", header=lambda stored: gnu_sparse_header("clip000.jpg", stored, 8 * MiB))
    else:  # PAX 0.1 sparse headers: the member's type stays '0' (regular), tarfile marks it sparse
        shard = sorted(folder.glob("*.tar"))[0]
        raw = shard.read_bytes()
        offset, size = member_at(raw, "clip000.jpg")
        jpeg = raw[offset + 512:offset + 512 + size]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("clip000.jpg")
            info.size = size
            info.pax_headers = {"GNU.sparse.map": f"0,{size}", "GNU.sparse.size": str(8 * MiB)}
            tar.addfile(info, io.BytesIO(jpeg))
        forged = buf.getvalue()[: -1024].rstrip(b"\0")  # without the end-of-archive blocks
        forged += b"\0" * (-len(forged) % 512)
        end = offset + 512 + size + (-size % 512)
        data = raw[:offset] + forged + raw[end:]
        reindex(folder, shard, data)
        index = json.loads((folder / "index.json").read_text())  # later clips moved: shift their offsets
        delta = len(forged) - (end - offset)
        entry = index["shards"][0]
        entry["offsets"] = [o if o <= offset else o + delta for o in entry["offsets"]]
        (folder / "index.json").write_text(json.dumps(index))
    with tarfile.open(shard) as tar:  # what today's reader would have done: 8 MiB from ~1 KB stored
        info = tar.getmember("clip000.jpg")
        assert info.isfile() and info.size == 8 * MiB
    for who, message in refusals(folder).items():
        assert shard.name in message and "sparse" in message and "clip000.jpg" in message, (who, message)


def test_sparse_member_in_a_shard_without_index_is_refused_when_scanned(tmp_path):
    folder = write_dataset(tmp_path / "ds")
    shard = forge_member(folder, "clip001.json", header=lambda stored: gnu_sparse_header("clip001.json", stored, 8 * MiB))
    (folder / "index.json").unlink()
    with pytest.raises(ValueError, match=rf"{shard.name}.*sparse"):
        load_shards([str(shard)])


def test_member_declaring_more_bytes_than_the_shard_holds_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "ds")
    shard = forge_member(folder, "clip000.jpg", header=regular_header_with_size("clip000.jpg", 3 << 30))
    messages = refusals(folder)
    for who, message in messages.items():
        assert shard.name in message and "declares 3221225472 bytes" in message, (who, message)


def test_parse_members_refuses_devices_and_fifos_and_skips_folders():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("k.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    assert parse_members(buf.getvalue()) == [("k", "json", b"{}")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        fifo = tarfile.TarInfo("k.jpg")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
    with pytest.raises(ValueError, match="'k.jpg' is not a regular file"):
        parse_members(buf.getvalue())


def test_oversized_image_header_is_refused_before_decoding_naming_the_shard(tmp_path):
    folder = write_dataset(tmp_path / "ds")
    # 4096 x 4096 pixels claimed by a ~1 KB strip (a 65535-row JPEG would ask for gigabytes)
    shard = forge_member(folder, "clip000.jpg", data=huge_jpeg_header(4096, 4096))
    for who, message in refusals(folder).items():
        assert shard.name in message and "header says 4096x4096" in message, (who, message)


def test_image_header_over_the_pixel_budget_is_refused_without_an_index(tmp_path):
    folder = write_dataset(tmp_path / "ds")
    # 81 M pixels: over the 64 Mi budget of a clip whose shape no index gives (PIL itself would only warn)
    shard = forge_member(folder, "clip000.jpg", data=huge_jpeg_header(9000, 9000))
    (folder / "index.json").unlink()
    with pytest.raises(ValueError, match=rf"{shard.name}.*header says 9000x9000 pixels: more than"):
        inspect_dataset(str(shard))


def test_per_frame_members_are_checked_against_the_index_shape():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(3, 12, 12, 3), dtype=np.uint8)  # not a multiple of 8: one JPEG per frame
    members = encode_clip(frames)
    assert [ext for ext, _ in members] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for ext, data in members:
            data = huge_jpeg_header(3000, 3000)(data) if ext == "0001.jpg" else data
            info = tarfile.TarInfo(f"k.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"frame .0001.jpg header says 3000x3000"):
        decode_sample(buf.getvalue(), "k", (3, 3, 12, 12), False)
    with pytest.raises(ValueError, match="3 frame members but .* has 2 frames"):
        decode_sample(buf.getvalue(), "k", (3, 2, 12, 12), False)


def test_npy_header_is_checked_before_loading():
    arr = np.zeros((2, 4, 4, 3), np.uint8)
    out = io.BytesIO()
    np.save(out, arr, allow_pickle=False)
    good = out.getvalue()
    header_end = good.index(b"\n") + 1  # the header is space-padded to a multiple of 64 bytes
    header = good[:header_end - 1].replace(b"(2, 4, 4, 3), }", b"(99999, 99, 99, 3), }").rstrip(b" ")
    forged = header.ljust(header_end - 1) + b"\n" + good[header_end:]
    assert len(forged) == len(good) and b"99999" in forged
    with pytest.raises(ValueError, match=r"header says \(T,H,W,C\) \(99999, 99, 99, 3\)"):
        decode_sample(_tar({"k.npy": forged}), "k", (3, 2, 4, 4), False)
    with pytest.raises(ValueError, match="more than 67108864 pixels"):
        decode_sample(_tar({"k.npy": forged}), "k", None, False)
    short = good.replace(b"(2, 4, 4, 3)", b"(3, 4, 4, 3)")  # 144 bytes declared, 96 present
    with pytest.raises(ValueError, match=r"\(3, 4, 4, 3\) \(144 bytes\) but 96 bytes follow it"):
        decode_sample(_tar({"k.npy": short}), "k", None, False)
    clip, _ = decode_sample(_tar({"k.npy": good}), "k", (3, 2, 4, 4), False)
    assert clip.shape == (2, 4, 4, 3)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_valid_dataset_still_loads_and_verifies(tmp_path):
    folder = write_dataset(tmp_path / "ds")
    assert inspect_dataset(str(folder)).clip_shape == SHAPE
    batch = next(iter(ClipLoader(str(folder), batch_size=4, shuffle=False)))
    assert tuple(batch["video"].shape) == (4, *SHAPE)
    assert verify_tool.verify(str(folder))["ok"]


# -- point 5: shard names in index.json -------------------------------------------------------------

BAD_NAMES = ["../../x.tar", "../victim.txt", "sub/train-000000.tar", "/etc/passwd", "..\\x.tar",
             "", ".hidden.tar", "..", "a\nb.tar", None, 7]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_index_with_a_shard_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    folder = write_dataset(tmp_path / "ds")
    index = json.loads((folder / "index.json").read_text())
    index["shards"][0]["name"] = name
    (folder / "index.json").write_text(json.dumps(index))
    for call in (read_index, resolve_urls, lambda url: ClipLoader(url, 2), inspect_dataset):
        with pytest.raises(ValueError, match=r"index\.json: shard name .* never a path"):
            call(str(folder))


def test_verify_cli_refuses_an_index_naming_a_path(tmp_path, capsys):
    folder = write_dataset(tmp_path / "ds")
    (tmp_path / "secret.tar").write_bytes(b"not yours")
    index = json.loads((folder / "index.json").read_text())
    index["shards"][0]["name"] = "../secret.tar"
    (folder / "index.json").write_text(json.dumps(index))
    assert verify_tool.main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert "index.json" in out and "'../secret.tar'" in out and "never a path" in out


def test_overwrite_never_deletes_a_file_an_old_index_names_outside_the_dataset(tmp_path):
    folder = write_dataset(tmp_path / "ds")
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    index = json.loads((folder / "index.json").read_text())
    index["shards"].append(dict(index["shards"][0], name="../victim.txt"))
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"ds/index\.json: shard name '\.\./victim\.txt'"):
        with ShardWriter(str(folder), prefix="train", overwrite=True) as writer:
            writer.add("new", encode_clip(np.zeros((2, 8, 8, 3), np.uint8)))
            writer.close(clip_shape=SHAPE)
    assert victim.read_text() == "someone else's file"
    assert (folder / "train-000000.tar").exists()  # the old dataset is left as it was
