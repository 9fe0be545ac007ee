"""URLs for local paths and S3-compatible object storage, through fsspec.

``filesystem("s3://bucket/key")`` gives an s3fs filesystem and the bucket path; a plain path or
``file://`` URL gives the local filesystem. The S3 endpoint comes from the argument, else
``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (else AWS itself); credentials come from the
standard AWS variables, profile or instance role through botocore and are never logged here.
Importing this module also teaches ``webdataset.gopen`` to open ``s3://`` URLs (webdataset 1.0 has
no ``s3://`` opener of its own).

Transient S3 faults (5xx, throttling, timeouts, dropped connections) are retried here, with
exponential backoff, and counted (``telemetry.count_s3_retry``); s3fs's and botocore's own
silent retries are turned off so that every retry is visible. Ray Train's own writes to an s3://
run folder (checkpoints, its run state) go through the same calls (``ray_filesystem``). A fault that outlasts
``S3_ATTEMPTS`` tries, or a permanent one (403, missing bucket), fails naming the URL and cause.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import random
import socket
import time
import uuid
from typing import Any, BinaryIO, Callable, TypeVar
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)
T = TypeVar("T")

S3_ATTEMPTS = int(os.environ.get("SSAGAN_S3_ATTEMPTS", "6"))  # tries per operation
S3_BACKOFF_S = float(os.environ.get("SSAGAN_S3_BACKOFF_S", "0.2"))  # first wait; doubles, jittered, capped at 10 s
S3_READ_BLOCK = int(os.environ.get("SSAGAN_S3_READ_BLOCK", str(8 << 20)))  # bytes per ranged read of gopen_s3
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use: argument > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL > None (AWS)."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(url: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, ``file://`` URL or ``s3://bucket/key``."""
    if is_s3(url):
        import s3fs

        # No hidden retries below us (see the module doc): one attempt per call, retried in ``retry``.
        # No listings cache: a long-lived process (a sweep driver, the soak) must see checkpoints
        # that other processes wrote after its first look.
        options: dict[str, Any] = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}},
                                   "use_listings_cache": False}
        endpoint = s3_endpoint(endpoint_url)
        if endpoint:
            options["endpoint_url"] = endpoint
        fs = s3fs.S3FileSystem(**options)
        fs.retries = 1  # a class attribute in s3fs, not a constructor argument
        return RetryingFileSystem(fs, endpoint), url[len("s3://") :].rstrip("/")
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


SHARED_STORAGE_ENV = "SSAGAN_SHARED_STORAGE"


def declared_shared(path: str) -> bool:
    """Whether the local ``path`` is, or lies in, a folder that ``$SSAGAN_SHARED_STORAGE`` (folders
    separated by ':') declares mounted at the same path on every node of the cluster (NFS and the
    like): the user's word, which nothing here can check."""
    here = os.path.realpath(os.path.expanduser(path))
    for folder in filter(None, os.environ.get(SHARED_STORAGE_ENV, "").split(os.pathsep)):
        root = os.path.realpath(os.path.expanduser(folder))
        if here == root or here.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def exists(url: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(url, endpoint_url)
    return fs.exists(path)


def is_transient(error: BaseException) -> bool:
    """A fault worth retrying: server-side 5xx/throttling, timeouts, dropped or refused connections."""
    for e in _chain(error):
        if isinstance(e, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError)):
            return False
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
            return code in _TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, asyncio.TimeoutError)):
            return True
        name = type(e).__name__
        if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                    "ClientPayloadError", "ServerDisconnectedError", "ClientOSError", "IncompleteRead",
                    "ResponseParserError", "FSTimeoutError", "ClientConnectorError", "ProxyConnectionError"):
            return True
    return False


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def retry(operation: str, url: str, fn: Callable[[], T], endpoint_url: str | None = None) -> T:
    """``fn()``, retried with exponential backoff while it fails transiently on S3; each retry is
    counted. Local paths are not retried. The final error names the URL, the attempts and the cause."""
    if not is_s3(url):
        return fn()
    for attempt in range(1, S3_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == S3_ATTEMPTS:
                raise OSError(f"{url}: {operation} failed {attempt} times (S3 endpoint "
                              f"{s3_endpoint(endpoint_url) or 'AWS'}); last error: {type(e).__name__}: {e}") from e
            from ssagan_dist import telemetry

            telemetry.count_s3_retry(operation)
            delay = min(S3_BACKOFF_S * 2 ** (attempt - 1), 10.0) * random.uniform(0.5, 1.0)
            log.warning("%s %s: transient %s (%s); retry %d/%d in %.1fs", operation, url, type(e).__name__, e,
                        attempt, S3_ATTEMPTS - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class RetryingFileSystem:
    """An s3fs filesystem whose one-shot calls go through ``retry``; anything else (``open``,
    ``cat_ranges``, attributes) is the s3fs object's own."""

    RETRIED = frozenset({"exists", "isdir", "isfile", "ls", "info", "size", "cat_file", "cat", "get", "get_file",
                         "put", "put_file", "pipe_file", "pipe", "rm", "rm_file", "find", "glob", "copy", "mv"})

    OPERATION = {"cat_file": "read", "cat": "read", "get": "download", "get_file": "download", "pipe_file": "write",
                 "pipe": "write", "put": "upload", "put_file": "upload", "rm": "delete", "rm_file": "delete",
                 "ls": "list", "find": "list", "glob": "list", "info": "stat", "size": "stat"}

    def __init__(self, fs: fsspec.AbstractFileSystem, endpoint_url: str | None):
        self.fs, self.endpoint_url = fs, endpoint_url

    def __getattr__(self, name: str) -> Any:
        if name in ("fs", "endpoint_url") or name.startswith("__"):  # unpickling: not set yet
            raise AttributeError(name)
        attr = getattr(self.fs, name)
        if name not in self.RETRIED:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            target = f"s3://{args[0]}" if args and isinstance(args[0], str) else "s3://"
            return retry(self.OPERATION.get(name, name), target, lambda: attr(*args, **kwargs), self.endpoint_url)

        return call


class _UploadOnClose(io.BytesIO):
    """A file written in memory and sent as one retried upload when it is closed, so a failed try
    re-sends every byte (a streaming upload could not be retried)."""

    def __init__(self, fs: RetryingFileSystem, path: str):
        super().__init__()
        self._fs, self._path = fs, path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            self._fs.pipe_file(self._path, data)


def _fsspec_handler():
    from pyarrow.fs import FSSpecHandler

    class RetryingHandler(FSSpecHandler):
        """Whole-file reads and writes, each one retried call (s3fs's streaming files are not)."""

        def open_output_stream(self, path, metadata):
            from pyarrow import PythonFile

            return PythonFile(_UploadOnClose(self.fs, path), mode="w")

        def open_input_stream(self, path):
            import pyarrow

            return pyarrow.BufferReader(self.fs.cat_file(path))

        open_input_file = open_input_stream

    return RetryingHandler


def ray_filesystem(endpoint_url: str | None = None):
    """The pyarrow filesystem for Ray Train's ``storage_filesystem`` on S3: every call and upload
    retried and counted as above (pyarrow's native S3 client retries silently, and gives up on a
    request after 3 s without progress, which a loaded machine reaches)."""
    from pyarrow.fs import PyFileSystem

    fs, _ = filesystem("s3://", endpoint_url)
    return PyFileSystem(_fsspec_handler()(fs))


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


class ShortRead(ConnectionError):
    """A ranged read that returned fewer bytes than the object holds there (a connection cut mid-body)."""


def read_range(fs: Any, path: str, url: str, start: int, end: int, endpoint_url: str | None = None) -> bytes:
    """Bytes ``[start, end)`` of an object in one retried call; fewer bytes than asked is a
    transient fault (retried), never a silently short answer. ``fs``: ``filesystem(url)[0]``."""
    raw = getattr(fs, "fs", fs)

    def once() -> bytes:
        blob = raw.cat_file(path, start=start, end=end)
        if len(blob) != end - start:
            raise ShortRead(f"{len(blob)} of {end - start} bytes at offset {start}")
        return blob

    return retry("read_range", url, once, endpoint_url)


class _RangeReader(io.RawIOBase):
    """A read-only, seekable S3 object whose every read is one ``read_range`` call."""

    def __init__(self, url: str, endpoint_url: str | None):
        self.url, self.endpoint_url = url, endpoint_url
        self._fs, self._path = filesystem(url, endpoint_url)
        self.size, self.pos = int(self._fs.size(self._path)), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n:
            buffer[:n] = read_range(self._fs, self._path, self.url, self.pos, self.pos + n, self.endpoint_url)
            self.pos += n
        return n


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    """``webdataset.gopen`` handler for ``s3://`` (endpoint and credentials as in ``filesystem``).

    Reads are ranged reads of ``S3_READ_BLOCK`` bytes, each one retried call as the loader's
    (a dropped connection never ends a shard early); a write is one retried upload on close."""
    endpoint_url = kw.pop("endpoint_url", None)
    if mode == "rb":
        return io.BufferedReader(_RangeReader(url, endpoint_url), buffer_size=S3_READ_BLOCK)
    if mode == "wb":
        fs, path = filesystem(url, endpoint_url)
        return _UploadOnClose(fs, path)
    raise ValueError(f"{url}: mode {mode!r} is not supported (rb or wb)")


# importlib: the attribute `webdataset.gopen` is the function, which shadows its module
importlib.import_module("webdataset.gopen").gopen_schemes.setdefault("s3", gopen_s3)
