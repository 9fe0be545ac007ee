"""Acceptance (issue #11): a real 2-worker training on a real local Ray cluster, scraped by a real
Prometheus through telemetry.sd_dir while it runs; the project's series from both ranks, their
values, and every dashboard and alert expression checked through Prometheus's HTTP API."""

from __future__ import annotations

import math
import threading
import time
import uuid

import pytest

from ssagan_dist import train
from tests.conftest import free_port
from tests.test_telemetry import (  # noqa: F401 (fixtures)
    check_alert_rules, missing_data, needs_prometheus, prometheus, prometheus_programs)

STEPS = 240
# Long enough for Prometheus (1 s scrapes) to see the workers train after a validation and a
# checkpoint at step 80; small batches keep each step short on 2 cores.
RUN_ARGS = ["--config", "tiny_cpu", "model.flavor=tiny", "scaling.ranks=2", "loop.batch_size=2",
            f"loop.max_steps={STEPS}", "loop.log_every=5", "loop.val_every=80", "loop.val_batches=1",
            "data.loader_processes=0", "optim.n_critic=1", "telemetry.host=127.0.0.1"]


def cannot_exist_here(expr: str) -> bool:
    """Series this machine cannot produce: no GPU, and no S3 in this run (so no S3 retries)."""
    return "ssagan_accelerator_memory_bytes" in expr or "ssagan_s3_retries_total" in expr


@pytest.mark.slow  # a real 2-rank training long enough for rate windows: ~45 s; test_telemetry scrapes 2 ranks in the default suite
@needs_prometheus
def test_two_worker_training_seen_through_prometheus(ray_cluster, prometheus, sky, tmp_path):  # noqa: F811
    run = f"obs-{uuid.uuid4().hex[:8]}"
    argv = [*RUN_ARGS, f"data.train_urls={sky / 'train'}", f"data.val_urls={sky / 'val'}",
            f"run.storage_path={tmp_path}", f"run.name={run}", f"telemetry.sd_dir={prometheus.sd_dir}",
            f"telemetry.port={free_port()}"]
    outcome: dict[str, int] = {}
    trainer = threading.Thread(target=lambda: outcome.setdefault("rc", train.main(argv)), daemon=True)
    started = time.time()
    trainer.start()

    # While it trains: wait for both ranks, then for every dashboard expression to have data and
    # for each rank's step-time quantile (a rate: two scrapes of that rank within its window).
    p90_expr = (f'histogram_quantile(0.9, sum by (le, rank) '
                f'(rate(ssagan_step_duration_seconds_bucket{{run="{run}"}}[10s])))')
    live_at = None
    while trainer.is_alive():
        now = time.time()
        ranks = {s["metric"]["rank"] for s in prometheus.query(f'ssagan_steps_total{{run="{run}"}}', at=now)}
        if (ranks == {"0", "1"} and not missing_data(prometheus, run, at=now, skip=cannot_exist_here)
                and {s["metric"]["rank"] for s in prometheus.query(p90_expr, at=now)} == {"0", "1"}):
            live_at = now
            break
        time.sleep(1)
    trainer.join(timeout=600)
    assert outcome.get("rc") == 0, f"training failed (rc {outcome.get('rc')}); see the Ray worker logs"
    ended = time.time()
    assert live_at is not None, ("the run ended before Prometheus saw data for every dashboard expression: "
                                 f"{missing_data(prometheus, run, at=ended - 2, skip=cannot_exist_here)}")

    def series(expr: str) -> dict[str, list[float]]:
        """Values of each rank over the whole run, from a range query (one series per rank)."""
        data = prometheus.api("query_range", query=expr, start=started, end=ended, step=1)["result"]
        ranks = [s["metric"]["rank"] for s in data]
        assert len(ranks) == len(set(ranks)), f"{expr}: more than one series for a rank: {[s['metric'] for s in data]}"
        return {s["metric"]["rank"]: [float(v) for _, v in s["values"]] for s in data}

    steps = series(f'ssagan_steps_total{{run="{run}"}}')
    assert set(steps) == {"0", "1"}
    for rank, values in steps.items():
        assert values == sorted(values) and values[-1] > values[0], f"rank {rank} steps not increasing: {values}"
        assert values[-1] <= STEPS
    global_step = series(f'ssagan_global_step{{run="{run}"}}')
    assert max(max(v) for v in global_step.values()) >= 80

    losses = prometheus.api("query_range", query=f'ssagan_train_stat{{run="{run}", stat=~".*_loss"}}',
                            start=started, end=ended, step=1)["result"]
    assert {(s["metric"]["rank"], s["metric"]["stat"]) for s in losses} == {(r, k) for r in "01"
                                                                             for k in ("d_loss", "g_loss")}
    assert all(math.isfinite(float(v)) for s in losses for _, v in s["values"])

    counts = series(f'ssagan_step_duration_seconds_count{{run="{run}"}}')
    assert all(max(v) > 0 for v in counts.values()) and set(counts) == {"0", "1"}
    p90 = prometheus.query(p90_expr, at=live_at)
    assert {s["metric"]["rank"] for s in p90} == {"0", "1"}
    assert all(0 < float(s["value"][1]) < 60 for s in p90), p90

    psnr = prometheus.query(f'ssagan_validation_metric{{run="{run}", metric=~"psnr|baseline_psnr"}}', at=live_at)
    assert psnr and all(5 < float(s["value"][1]) < 60 for s in psnr), psnr

    # The evidence behind the check that stopped the loop above, at the moment it was taken.
    assert not missing_data(prometheus, run, at=live_at, skip=cannot_exist_here)
    check_alert_rules(prometheus)
    assert not list(prometheus.sd_dir.glob(f"{run}-*.json")), "workers left their file_sd targets behind"
