"""Shared fixtures: a real S3 endpoint over HTTP on loopback (moto's ThreadedMotoServer)."""

from __future__ import annotations

import os
import socket

# One intra-op thread per test process: the suite runs on 2 cores beside Ray workers, and
# oversubscribed threads make small CPU kernels tens of times slower. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

# Credentials for the local moto endpoint only; never real ones.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real HTTP S3 endpoint on 127.0.0.1; yields its URL (http://127.0.0.1:PORT)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh empty bucket on the moto endpoint; yields (endpoint_url, bucket_name)."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    yield s3_server, name


@pytest.fixture(scope="session")
def sky(tmp_path_factory):
    """Synthetic sky shards at the tiny presets' shape (32x32, 8 frames): train/ and val/."""
    from data_tools import synth

    root = tmp_path_factory.mktemp("sky")
    synth.generate(str(root / "train"), clips=24, size=32, frames=8, seed=0, progress=False)
    synth.generate(str(root / "val"), clips=8, size=32, frames=8, seed=1, progress=False)
    return root
