"""URLs for local paths and S3-compatible object storage, through fsspec.

``filesystem("s3://bucket/key")`` gives an s3fs filesystem and the bucket path; a plain path or
``file://`` URL gives the local filesystem. The S3 endpoint comes from the argument, else
``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (else AWS itself); credentials come from the
standard AWS variables, profile or instance role through botocore and are never logged here.
Importing this module also teaches ``webdataset.gopen`` to open ``s3://`` URLs (SPEC §8).
"""

from __future__ import annotations

import importlib
import os
import uuid
from typing import Any, BinaryIO
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use: argument > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL > None (AWS)."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(url: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, ``file://`` URL or ``s3://bucket/key``."""
    if is_s3(url):
        import s3fs

        options: dict[str, Any] = {}
        endpoint = s3_endpoint(endpoint_url)
        if endpoint:
            options["endpoint_url"] = endpoint
        return s3fs.S3FileSystem(**options), url[len("s3://") :].rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalFileSystem(), parsed.path
    if parsed.scheme and len(parsed.scheme) > 1:  # len 1: a Windows drive letter
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}: use a local path or s3://bucket/key")
    return LocalFileSystem(), os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with '/' (no normalisation of the scheme)."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(url: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(url, endpoint_url)
    return fs.exists(path)


def read_bytes(url: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(url, endpoint_url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such file or object") from None


def write_bytes_atomic(url: str, data: bytes, endpoint_url: str | None = None) -> None:
    """Write ``data`` so that readers see either nothing or the whole file.

    Locally: a hidden temporary file in the same folder, then ``os.replace``. On S3 an object
    appears only when its PUT (or multipart upload) completes, so one upload is already atomic.
    """
    fs, path = filesystem(url, endpoint_url)
    if isinstance(fs, LocalFileSystem):
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)


def remove(url: str, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(url, endpoint_url)
    if fs.exists(path):
        fs.rm_file(path)


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    """``webdataset.gopen`` handler for ``s3://`` (endpoint and credentials as in ``filesystem``)."""
    fs, path = filesystem(url, kw.pop("endpoint_url", None))
    return fs.open(path, mode)


# importlib: the attribute `webdataset.gopen` is the function, which shadows its module
importlib.import_module("webdataset.gopen").gopen_schemes.setdefault("s3", gopen_s3)
