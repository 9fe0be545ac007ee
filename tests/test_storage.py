import io
import os
import tarfile

import pytest
import webdataset as wds
from fsspec.implementations.local import LocalFileSystem

from ssagan_dist import storage


def test_local_paths_and_file_urls(tmp_path):
    fs, path = storage.filesystem(str(tmp_path / "a.bin"))
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path / "a.bin")
    fs, path = storage.filesystem(f"file://{tmp_path}/b.bin")
    assert isinstance(fs, LocalFileSystem) and path == f"{tmp_path}/b.bin"
    assert storage.join("s3://bucket/", "x/", "/y.tar") == "s3://bucket/x/y.tar"
    with pytest.raises(ValueError, match="unsupported URL scheme 'gs'"):
        storage.filesystem("gs://bucket/x")


def test_endpoint_precedence(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3specific:2")
    assert storage.filesystem("s3://b/k")[0].endpoint_url == "http://s3specific:2"
    assert storage.filesystem("s3://b/k", "http://arg:3")[0].endpoint_url == "http://arg:3"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    fs, path = storage.filesystem("s3://b/k/")
    assert fs.endpoint_url == "http://generic:1" and path == "b/k"


def test_atomic_write_local_leaves_no_temp_files(tmp_path):
    url = str(tmp_path / "sub" / "data.bin")
    storage.write_bytes_atomic(url, b"one")
    storage.write_bytes_atomic(url, b"two")
    assert storage.read_bytes(url) == b"two" and storage.exists(url)
    assert os.listdir(tmp_path / "sub") == ["data.bin"]
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(str(tmp_path / "missing.bin"))


def test_s3_round_trip_and_webdataset_opener(s3_bucket, monkeypatch):
    endpoint, bucket = s3_bucket
    url = f"s3://{bucket}/ds/hello.bin"
    assert not storage.exists(url, endpoint)
    storage.write_bytes_atomic(url, b"payload", endpoint)
    assert storage.exists(url, endpoint) and storage.read_bytes(url, endpoint) == b"payload"

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key in ("a", "b"):
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(key.encode()))
    storage.write_bytes_atomic(f"s3://{bucket}/ds/shard-000000.tar", buf.getvalue(), endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # webdataset passes no options to its openers
    samples = list(wds.WebDataset(f"s3://{bucket}/ds/shard-000000.tar", shardshuffle=False))
    assert [(s["__key__"], s["txt"]) for s in samples] == [("a", b"a"), ("b", b"b")]


def test_s3_listings_see_objects_written_after_the_first_look(s3_bucket):
    """A long-lived process (sweep driver, soak) lists a run folder again and again while other
    processes write checkpoints into it: s3fs's listings cache would keep the first answer."""
    import boto3

    from ssagan_dist import checkpointing

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    run = f"s3://{bucket}/runs/r"
    assert checkpointing.checkpoint_dirs(run, endpoint) == []
    client.put_object(Bucket=bucket, Key="runs/r/checkpoint_000000001/model.pt", Body=b"x")
    assert checkpointing.checkpoint_dirs(run, endpoint) == [f"{run}/checkpoint_000000001"]
    client.put_object(Bucket=bucket, Key="runs/r/checkpoint_000000002/model.pt", Body=b"x")
    assert checkpointing.checkpoint_dirs(run, endpoint)[0] == f"{run}/checkpoint_000000002"


def test_ray_storage_filesystem_uploads_through_the_retried_calls(s3_bucket, monkeypatch):
    """Ray Train writes checkpoints through ``storage.ray_filesystem``: a file written with
    an output stream (what Ray's persist opens) lands whole, after an injected transient fault."""
    from ssagan_dist import telemetry
    from tests.faults import FlakyS3Proxy

    endpoint, bucket = s3_bucket
    monkeypatch.setattr(storage, "S3_BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "S3_ATTEMPTS", 20)
    before = sum(telemetry._s3_retries.values())
    with FlakyS3Proxy(endpoint, error=0.2, drop=0.1, seed=1) as proxy:
        fs = storage.ray_filesystem(proxy.url)
        for i in range(5):
            with fs.open_output_stream(f"{bucket}/ckpt/file-{i}.bin") as f:
                f.write(bytes([i]) * 100_000)
        for i in range(5):  # and reads back (Ray reads its run state this way)
            with fs.open_input_stream(f"{bucket}/ckpt/file-{i}.bin") as f:
                assert f.read() == bytes([i]) * 100_000
            with fs.open_input_file(f"{bucket}/ckpt/file-{i}.bin") as f:
                assert f.read() == bytes([i]) * 100_000
    assert proxy.injected["error"] > 0
    assert sum(telemetry._s3_retries.values()) > before
    for i in range(5):
        assert storage.read_bytes(f"s3://{bucket}/ckpt/file-{i}.bin", endpoint) == bytes([i]) * 100_000


def test_gopen_s3_reads_and_writes_whole_objects_through_faults(s3_bucket, monkeypatch):
    """The s3:// opener registered for users' own webdataset pipelines: behind a proxy that answers
    503, drops connections and cuts responses mid-body, a shard is read back whole through
    webdataset (every read a retried ranged call), and an object written through it lands whole."""
    import io

    import numpy as np
    import webdataset as wds

    from tests.faults import FlakyS3Proxy

    endpoint, bucket = s3_bucket
    monkeypatch.setattr(storage, "S3_BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "S3_ATTEMPTS", 30)
    monkeypatch.setattr(storage, "S3_READ_BLOCK", 64 << 10, raising=False)
    rng = np.random.default_rng(0)
    samples = [{"__key__": f"s{i:03d}", "bin": rng.bytes(int(rng.integers(1_000, 40_000)))} for i in range(40)]
    tar = io.BytesIO()
    with wds.TarWriter(tar) as sink:
        for sample in samples:
            sink.write(sample)
    shard = f"s3://{bucket}/shards/shard-000000.tar"
    storage.write_bytes_atomic(shard, tar.getvalue(), endpoint)
    with FlakyS3Proxy(endpoint, error=0.1, drop=0.05, cut=0.25, seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        for _ in range(6):  # each time a fresh pipeline, fresh connections
            got = [(s["__key__"], s["bin"]) for s in wds.WebDataset(shard, shardshuffle=False)]
            assert got == [(s["__key__"], s["bin"]) for s in samples]
        with webdataset_gopen()(f"s3://{bucket}/out/blob.bin", "wb") as f:
            f.write(tar.getvalue())
    assert proxy.injected["cut"] > 0 and proxy.injected["error"] > 0 and proxy.injected["drop"] > 0
    assert storage.read_bytes(f"s3://{bucket}/out/blob.bin", endpoint) == tar.getvalue()


def webdataset_gopen():
    import importlib

    return importlib.import_module("webdataset.gopen").gopen
