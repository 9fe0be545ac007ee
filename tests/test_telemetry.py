"""The per-worker Prometheus exporter, its dashboards and alert rules, against a real Prometheus
server and a real Pushgateway (Debian's packages) on loopback. Only CUDA is faked (no GPU here),
so that the accelerator-memory series exist for the "every expression has data" check."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml

from ssagan_dist import telemetry
from ssagan_dist.config import TelemetryConfig
from ssagan_dist.observability import dashboards
from ssagan_dist.telemetry import TrainingTelemetry
from tests.conftest import free_port, require_programs

OBS = Path(dashboards.__file__).resolve().parent
K8S = OBS.parents[1] / "k8s" / "monitoring"

needs_prometheus = pytest.mark.usefixtures("prometheus_programs")


@pytest.fixture
def prometheus_programs():
    require_programs("prometheus", "promtool", "prometheus-pushgateway", why="Debian's prometheus packages")


# -- a real Prometheus (and Pushgateway) on loopback, shared with tests/test_observability.py ----

def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s: {log.read_text()[-2000:]}")


class Prometheus:
    """prometheus with the committed prometheus.local.yml, its file_sd pointed at ``sd_dir``,
    alerts.yml loaded, 1 s scrape and rule intervals; plus a Pushgateway it scrapes."""

    def __init__(self, root: Path):
        self.root, self.sd_dir = root, root / "sd"
        self.sd_dir.mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []
        self.pushgateway = f"http://127.0.0.1:{free_port()}"
        self._start("pushgateway", ["prometheus-pushgateway",
                                    f"--web.listen-address={self.pushgateway.split('//')[1]}"],
                    f"{self.pushgateway}/-/ready")
        config = yaml.safe_load((OBS / "prometheus.local.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(OBS / "alerts.yml")]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        jobs["ssagan"]["file_sd_configs"] = [{"files": [str(self.sd_dir / "*.json")]}]
        jobs["pushgateway"]["static_configs"] = [{"targets": [self.pushgateway.split("//")[1]]}]
        config["scrape_configs"] = [jobs["ssagan"], jobs["pushgateway"]]  # not this machine's Ray
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._start("prometheus", ["prometheus", f"--config.file={root / 'prometheus.yml'}",
                                   f"--web.listen-address={self.url.split('//')[1]}",
                                   f"--storage.tsdb.path={root / 'tsdb'}", "--log.level=warn"],
                    f"{self.url}/-/ready")

    def _start(self, name: str, argv: list[str], ready_url: str) -> None:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=self.root)
        self.procs.append(proc)
        _wait_http(ready_url, proc, log)

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: HTTP {e.code}: {e.read().decode()[:500]}") from e
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str, at: Optional[float] = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))["result"]

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: {what} not seen within {timeout} s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    require_programs("prometheus", "promtool", "prometheus-pushgateway", why="Debian's prometheus packages")
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


def concrete(expr: str, run: str, window: str = "10s", span: str = "2m") -> str:
    """A dashboard expression with Grafana's variables filled in as Grafana would for one run."""
    values = {"$__rate_interval": window, "$__range": span, "$__interval": "1s",
              "$run": run, "$trial": ".*", "$rank": ".*"}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    assert "$" not in expr, expr
    return expr


def every_expression() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel target."""
    return [(f"{name}: {e}", e) for name, build in dashboards.DASHBOARDS.items()
            for e in dashboards.expressions(build())]


def missing_data(prom: Prometheus, run: str, at: Optional[float] = None,
                 skip: Callable[[str], bool] = lambda e: False) -> list[str]:
    return [where for where, e in every_expression() if not skip(e) and not prom.query(concrete(e, run), at)]


def check_alert_rules(prom: Prometheus) -> None:
    """Every rule of alerts.yml is loaded and evaluated by Prometheus without error."""
    names = {r["alert"] for g in dashboards.alert_rules() for r in g["rules"]}

    def evaluated():
        rules = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
        return rules if names <= rules.keys() and all(
            not rules[n]["lastEvaluation"].startswith("0001") for n in names) else None

    rules = prom.wait_until("an evaluation of every alert rule", evaluated, timeout=30)
    for name in names:
        assert rules[name]["health"] == "ok", (name, rules[name].get("lastError"))
    for group in dashboards.alert_rules():
        for rule in group["rules"]:
            prom.query(rule["expr"])  # raises on a PromQL error


# -- fixtures for the exporter -------------------------------------------------------------------

def metrics_cfg(**kw: Any) -> TelemetryConfig:
    return TelemetryConfig(**{"host": "127.0.0.1", "port": free_port(), "port_span": 16, **kw})


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device's allocator counters (the only thing faked: no GPU on this machine)."""
    import torch

    for name, value in {"is_available": True, "is_initialized": True, "current_device": 0}.items():
        monkeypatch.setattr(torch.cuda, name, lambda v=value: v)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 3 << 30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5 << 30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 << 30)


class FakeRank:
    """Feeds one TrainingTelemetry what a training loop would, with plausible numbers."""

    def __init__(self, tm: TrainingTelemetry, rank: int):
        self.tm, self.rank, self.step = tm, rank, 100
        tm.resumed(self.step)

    def advance(self, steps: int) -> None:
        for _ in range(steps):
            self.step += 1
            i = self.step
            self.tm.step(8, 0.010 + 0.002 * (i % 5) + 0.001 * self.rank, 0.0005 * (i % 3))
            if i % 10 == 0:
                self.tm.stats(i, {"d_loss": 1.2 - i / 1e4, "g_loss": 2.0 - i / 1e4, "g_con": 0.3, "d_real": 0.7,
                                  "d_fake": 0.3, "lr_g": 1e-3, "lr_d": 2e-4})
            if i % 50 == 0:
                self.tm.validation(i, {"psnr": 22.0 + i / 1e3, "ssim": 0.6, "mse": 0.02, "baseline_psnr": 21.0,
                                       "baseline_ssim": 0.55, "baseline_mse": 0.03, "count": 8,
                                       "psnr_curve": [22.0, 21.0]})
                self.tm.checkpoint(0.2 + 0.01 * self.rank, 4_000_000)


def feed_until(stop: threading.Event, ranks: list[FakeRank]) -> threading.Thread:
    def loop():
        while not stop.is_set():
            for r in ranks:
                r.advance(1)
            time.sleep(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


# -- against a real Prometheus -----------------------------------------------------------------

@needs_prometheus
def test_two_ranks_scraped_and_every_dashboard_and_alert_expression_has_data(prometheus, fake_cuda):
    run = f"unit-{uuid.uuid4().hex[:8]}"
    cfg = metrics_cfg(sd_dir=str(prometheus.sd_dir))
    tms = [TrainingTelemetry(cfg, run=run, trial="trial_0", rank=r, world=2, model="ssagan") for r in (0, 1)]
    for tm in tms:
        tm.start()
    ranks = [FakeRank(tm, r) for r, tm in enumerate(tms)]
    for r in ranks:
        r.advance(50)  # a validation, a checkpoint and logging steps before Prometheus looks
    telemetry.count_s3_retry("get_object")
    stop = threading.Event()
    feeder = feed_until(stop, ranks)
    try:
        def steps_by_rank() -> dict[str, float]:
            return {s["metric"]["rank"]: float(s["value"][1])
                    for s in prometheus.query(f'ssagan_steps_total{{run="{run}", job="ssagan"}}')}

        by_rank = prometheus.wait_until("both ranks' step counters",
                                        lambda: len(steps_by_rank()) == 2 and steps_by_rank())
        assert set(by_rank) == {"0", "1"}
        deadline = time.monotonic() + 60
        while (missing := missing_data(prometheus, run)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not missing, f"dashboard expressions without data: {missing}"
        deadline = time.monotonic() + 30  # the counters grow from one scrape to the next
        while not all((later := steps_by_rank()).get(r, 0) > by_rank[r] for r in by_rank) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert all(later[r] > by_rank[r] for r in by_rank), (by_rank, later)
        p90 = prometheus.query(concrete(dashboards.quantile(0.9, "ssagan_step_duration_seconds", ", rank"), run))
        assert {s["metric"]["rank"] for s in p90} == {"0", "1"}
        assert all(0.01 <= float(s["value"][1]) <= 0.025 for s in p90), p90  # fed 10-19 ms steps
        memory = prometheus.query(f'ssagan_accelerator_memory_bytes{{run="{run}", kind="allocated"}}')
        assert {float(s["value"][1]) for s in memory} == {3 << 30}
        gain = prometheus.query(concrete(dashboards.sweep_dashboard()["panels"][2]["targets"][0]["expr"], run))
        assert gain and all(float(s["value"][1]) > 1 for s in gain)  # psnr 22.x vs baseline 21
        check_alert_rules(prometheus)

        # A NaN loss on rank 1 fires SsaganLossNotFinite for that rank.
        tms[1].stats(ranks[1].step, {"g_loss": float("nan")})

        def fired():
            return [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"
                    and a["labels"].get("alertname") == "SsaganLossNotFinite" and a["labels"].get("run") == run]
        assert {a["labels"]["rank"] for a in prometheus.wait_until("SsaganLossNotFinite firing", fired)} == {"1"}
    finally:
        stop.set()
        feeder.join()
        for tm in tms:
            tm.close()
    assert not list(prometheus.sd_dir.glob(f"{run}-*.json")), "close() leaves its file_sd target behind"


@needs_prometheus
def test_pushgateway_gets_checkpoint_and_final_state(prometheus):
    run = f"push-{uuid.uuid4().hex[:8]}"
    tm = TrainingTelemetry(metrics_cfg(pushgateway=prometheus.pushgateway), run=run, trial="", rank=0, world=1,
                           model="mdgan_stage1")
    tm.start()
    tm.step(4, 0.02, 0.001)
    tm.checkpoint(1.5, 12345)
    pushed = prometheus.wait_until("the pushed checkpoint", lambda: prometheus.query(
        f'ssagan_checkpoint_last_bytes{{run="{run}", job="ssagan_dist"}}'))
    assert float(pushed[0]["value"][1]) == 12345 and pushed[0]["metric"]["rank"] == "0"
    tm.close()
    final = prometheus.wait_until("the final push", lambda: [s for s in prometheus.query(
        f'ssagan_training_active{{run="{run}", job="ssagan_dist"}}') if float(s["value"][1]) == 0])
    assert final[0]["metric"]["model"] == "mdgan_stage1"


def test_unreachable_pushgateway_does_not_stop_training(caplog):
    tm = TrainingTelemetry(metrics_cfg(pushgateway=f"http://127.0.0.1:{free_port()}"), run="r", trial="", rank=0,
                           world=1, model="ssagan")
    tm.start()
    tm.checkpoint(0.1, 10)
    tm.close()
    assert "telemetry.pushgateway" in caplog.text


# -- the exporter on its own -----------------------------------------------------------------------

def _socket_fds() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_disabled_starts_no_server_and_no_thread(tmp_path):
    cfg = metrics_cfg(enabled=False, sd_dir=str(tmp_path / "sd"), port_span=1)
    threads, sockets = set(threading.enumerate()), _socket_fds()
    tm = TrainingTelemetry(cfg, run="off", trial="", rank=0, world=1, model="ssagan")
    tm.start()
    tm.step(8, 0.01, 0.001)
    tm.stats(1, {"g_loss": 1.0})
    tm.validation(1, {"psnr": 20.0})
    tm.checkpoint(0.1, 10)
    tm.resumed(1)
    assert set(threading.enumerate()) == threads and _socket_fds() == sockets
    assert tm.port is None and not (tmp_path / "sd").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", cfg.port))  # nobody took the port
    tm.close()


def test_two_runs_on_one_machine_take_different_ports(tmp_path):
    cfg = metrics_cfg(sd_dir=str(tmp_path))
    with socket.socket() as taken:  # another program already holds the first port
        taken.bind(("127.0.0.1", cfg.port))
        taken.listen()
        tms = [TrainingTelemetry(cfg, run=run, trial="", rank=0, world=1, model="ssagan") for run in ("a", "b")]
        for tm in tms:
            tm.start()
        # and a third worker in another process on the same machine
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from ssagan_dist.config import TelemetryConfig; "
             "from ssagan_dist.telemetry import TrainingTelemetry as T; "
             f"t = T(TelemetryConfig(host='127.0.0.1', port={cfg.port}, port_span=16), run='c', trial='', rank=0, "
             "world=1, model='ssagan'); t.start(); print(t.port, flush=True); sys.stdin.read(); t.close()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=OBS.parents[1])
        try:
            child_port = int(child.stdout.readline())
            ports = [tm.port for tm in tms] + [child_port]
            assert len(set(ports)) == 3 and all(cfg.port < p < cfg.port + cfg.port_span for p in ports), ports
            for tm, run, other in zip(tms, ("a", "b"), ("b", "a")):  # each serves its own registry only
                body = scrape(tm.port)
                assert f'run="{run}"' in body and f'run="{other}"' not in body
            assert 'run="c"' in scrape(child_port)
        finally:
            child.communicate("")
            for tm in tms:
                tm.close()
    assert not list(tmp_path.glob("*.json")), "closed workers leave no file_sd targets"


def test_sd_file_names_the_port_it_took(tmp_path):
    tm = TrainingTelemetry(metrics_cfg(sd_dir=str(tmp_path)), run="sweep/x", trial="t 1", rank=3, world=4,
                           model="ssagan")
    tm.start()
    try:
        files = list(tmp_path.glob("*.json"))
        assert [f.name for f in files] == ["sweep_x-t_1-3.json"]
        assert json.loads(files[0].read_text()) == [{"targets": [f"127.0.0.1:{tm.port}"], "labels": {}}]
    finally:
        tm.close()
    assert not files[0].exists()


def test_no_free_port_names_the_keys():
    cfg = metrics_cfg(port_span=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cfg.port))
        taken.listen()
        with pytest.raises(RuntimeError, match=r"telemetry\.port_span"):
            TrainingTelemetry(cfg, run="r", trial="", rank=0, world=1, model="ssagan").start()


def test_every_series_carries_the_worker_labels(fake_cuda):
    telemetry.count_s3_retry("head_object")
    tm = TrainingTelemetry(metrics_cfg(), run="lab", trial="t7", rank=1, world=2, model="hrvgan")
    with tm:
        FakeRank(tm, 1).advance(50)
        tm.stats(150, {"d_loss": float("inf")})
        lines = [ln for ln in scrape(tm.port).splitlines() if ln and not ln.startswith("#")]
    assert lines and all('run="lab"' in ln and 'trial="t7"' in ln and 'rank="1"' in ln and 'model="hrvgan"' in ln
                         and ln.startswith("ssagan_") for ln in lines), [ln for ln in lines if 'run="lab"' not in ln]
    body = "\n".join(lines)
    assert 'ssagan_validation_metric{metric="clips"' in body  # score()'s "count"
    assert "ssagan_nonfinite_stats_total" in body and 'operation="head_object"' in body
    value = next(ln for ln in lines if ln.startswith("ssagan_nonfinite_stats_total"))
    assert float(value.rsplit(" ", 1)[1]) == 1
    heartbeat = next(ln for ln in lines if ln.startswith("ssagan_heartbeat_timestamp_seconds"))
    assert math.isclose(float(heartbeat.rsplit(" ", 1)[1]), time.time(), abs_tol=30)


# -- generated and static files ------------------------------------------------------------------

def test_committed_dashboards_and_k8s_files_are_generated_current():
    for path, text in dashboards.generated_files().items():
        assert path.read_text() == text, f"{path} is out of date: python -m ssagan_dist.observability.dashboards"


def test_k8s_files_carry_the_same_dashboards_and_rules():
    configmap = yaml.safe_load((K8S / "grafana-dashboards.yaml").read_text())
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name in dashboards.DASHBOARDS:
        assert json.loads(configmap["data"][f"ssagan-{name}.json"]) == json.loads((OBS / f"{name}.json").read_text())
    rule = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == dashboards.alert_rules()
    monitor = yaml.safe_load((K8S / "podmonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "ssagan-dist"}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "ray-metrics"]
    assert TelemetryConfig().port == 9400  # the port the pods name "metrics" (docs/observability.md)


def test_dashboards_are_well_formed():
    for build in dashboards.DASHBOARDS.values():
        board = build()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for p in board["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
            assert p["type"] == "row" or p["targets"], p["title"]
        assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "run", "trial"}


def test_promtool_accepts_rules_and_local_config():
    require_programs("promtool", why="Debian's prometheus package")
    for argv in (["check", "rules", str(OBS / "alerts.yml")], ["check", "config", str(OBS / "prometheus.local.yml")]):
        out = subprocess.run(["promtool", *argv], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout + out.stderr
