"""Check a clip dataset against its index.json.

    python -m data_tools.verify URL [--json] [--workers N] [--endpoint-url URL]

For every shard in the index: present, size and sha256 as indexed, every clip's members at the
indexed offsets under the indexed key, every clip decodable to the indexed (C, T, H, W), labels
present in labelled datasets. Prints a summary (or a JSON report); exits 1 on any problem, each
problem naming the shard and sample key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import sys
from functools import partial
from typing import Any

from ssagan_dist import cli, storage
from ssagan_dist.data.format import decode_sample
from ssagan_dist.data.index import INDEX_NAME, read_index


def check_shard(entry: dict[str, Any], url: str, index: dict[str, Any], endpoint_url: str | None) -> list[dict]:
    """Problems found in one shard: [{"shard", "key", "problem"}] (key None for shard-level ones)."""
    name = entry["name"]

    def problem(key: str | None, text: str) -> dict:
        return {"shard": name, "key": key, "problem": text}

    try:
        data = storage.read_bytes(storage.join(url, name), endpoint_url)
    except FileNotFoundError:
        return [problem(None, "missing")]
    except OSError as e:
        return [problem(None, f"unreadable: {e}")]
    problems = []
    if len(data) != entry["bytes"]:
        problems.append(problem(None, f"size {len(data)} != indexed {entry['bytes']}"))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(problem(None, "sha256 mismatch"))
    shape = tuple(index["clip_shape"])
    offsets = entry["offsets"]
    if len(entry["keys"]) != entry["clips"] or len(offsets) != entry["clips"] + 1:
        return problems + [problem(None, "index entry: keys/offsets do not match the clip count")]
    for i, key in enumerate(entry["keys"]):
        try:
            decode_sample(data[offsets[i] : offsets[i + 1]], key, shape, bool(index.get("labels")),
                          len(index.get("classes") or []))
        except Exception as e:  # report every kind of failure against its key
            problems.append(problem(key, str(e)))
    return problems


def verify(url: str, endpoint_url: str | None = None, workers: int = 1) -> dict[str, Any]:
    """A report {"url", "ok", "shards", "clips", "bytes", "problems": [...]} for the dataset at ``url``."""
    url = url.rstrip("/")
    index = read_index(url, endpoint_url)
    if index is None:
        return {"url": url, "ok": False, "shards": 0, "clips": 0, "bytes": 0,
                "problems": [{"shard": None, "key": None, "problem": f"no {INDEX_NAME} (unfinished or missing dataset)"}]}
    check = partial(check_shard, url=url, index=index, endpoint_url=endpoint_url)
    if workers > 1 and len(index["shards"]) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:  # spawn: s3fs clients do not survive fork
            results = pool.map(check, index["shards"], chunksize=1)
    else:
        results = [check(entry) for entry in index["shards"]]
    problems = [p for found in results for p in found]
    if sum(s["clips"] for s in index["shards"]) != index.get("total_clips"):
        problems.append({"shard": None, "key": None, "problem": "total_clips differs from the sum over shards"})
    return {
        "url": url,
        "ok": not problems,
        "split": index.get("split"),
        "shards": len(index["shards"]),
        "clips": index.get("total_clips"),
        "bytes": index.get("total_bytes"),
        "clip_shape": index.get("clip_shape"),
        "problems": problems,
    }


@cli.command  # S3 without credentials, an unreachable endpoint, a missing bucket: one error: line, exit 2
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_tools.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="dataset folder or s3://bucket/prefix holding index.json")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--workers", type=int, default=1, help="shards checked in parallel")
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    cli.add_debug_flag(ap)
    args = ap.parse_args(argv)
    try:
        report = verify(args.url, args.endpoint_url, args.workers)
    except ValueError as e:  # unreadable index
        report = {"url": args.url, "ok": False, "problems": [{"shard": None, "key": None, "problem": str(e)}]}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for p in report["problems"]:
            where = " ".join(x for x in (p["shard"], f"key {p['key']!r}" if p["key"] else None) if x)
            print(f"PROBLEM {where or args.url}: {p['problem']}")
        status = "OK" if report["ok"] else f"FAILED ({len(report['problems'])} problems)"
        print(f"{status}: {args.url}: {report.get('shards', 0)} shards, {report.get('clips', 0)} clips, "
              f"{(report.get('bytes') or 0) / 2**20:.1f} MiB, clip shape {report.get('clip_shape')}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
