"""Grafana dashboards for training runs and Tune sweeps, built as plain dicts.

    python -m ssagan_dist.observability.dashboards          # rewrite the generated files
    python -m ssagan_dist.observability.dashboards --check  # exit 1 if any is out of date

Writes training.json and sweep.json beside this module (Grafana "Import dashboard"), and for the
cluster k8s/monitoring/grafana-dashboards.yaml (the same JSON in a ConfigMap for Grafana's
sidecar) and k8s/monitoring/prometheusrule.yaml (alerts.yml as a PrometheusRule).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
K8S = HERE.parents[1] / "k8s" / "monitoring"
ALERTS = HERE / "alerts.yml"
STALL_SECONDS = 600  # the SsaganRankStalled threshold, drawn on the heartbeat panel
K8S_NAMESPACE = "ssagan"  # k8s/00-namespace.yaml: the run's namespace, where the PodMonitor lives too
K8S_LABELS = {"app.kubernetes.io/name": "ssagan-dist", "app.kubernetes.io/component": "monitoring",
              # kube-prometheus-stack selects rules and monitors by its Helm release name
              "release": "kube-prometheus-stack"}

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
RUN = 'run=~"$run", trial=~"$trial"'
SEL = f'{RUN}, rank=~"$rank"'


# -- building blocks ---------------------------------------------------------------------------

def target(expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend}


def panel(title: str, targets: list[dict[str, Any]], *, unit: str = "short", kind: str = "timeseries",
          description: str = "", width: int = 12, thresholds: list[tuple[str, float | None]] | None = None,
          ) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for color, value in (thresholds or [("green", None)])]
    defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if thresholds and kind == "timeseries":
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
            "gridPos": {"w": width, "h": 8}}


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Left-to-right, top-to-bottom on Grafana's 24-column grid; ids in order."""
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24 or p["type"] == "row":
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i
        x, line_h = x + w, max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[dict[str, Any]]) -> dict[str, Any]:
    source = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
              "current": {}, "hide": 0, "refresh": 1}
    return {"uid": uid, "title": title, "description": description, "tags": ["ssagan-dist"],
            "timezone": "browser", "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
            "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": [source, *variables]}, "annotations": {"list": []},
            "links": [], "panels": layout(panels)}


def quantile(q: float, metric: str, by: str = "") -> str:
    return f'histogram_quantile({q}, sum by (le{by}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))'


def validation(metric: str, labels: str = RUN) -> str:
    return f'ssagan_validation_metric{{{labels}, metric="{metric}"}}'


# -- the dashboards ----------------------------------------------------------------------------

def training_dashboard() -> dict[str, Any]:
    losses = 'stat=~"[dg]_.*", stat!~"d_real|d_fake"'
    panels = [
        row("Progress"),
        panel("Throughput", [
            target(f"sum by (run, trial) (rate(ssagan_clips_total{{{SEL}}}[{RATE}]))", "{{run}} {{trial}} all ranks"),
            target(f"sum by (rank) (rate(ssagan_clips_total{{{SEL}}}[{RATE}]))", "rank {{rank}}"),
        ], unit="clips/s", description="Training clips per second, whole run and per rank."),
        panel("Global step", [
            target(f"max by (run, trial) (ssagan_global_step{{{SEL}}})", "{{run}} {{trial}}"),
        ], description="Latest training step reported at a logging step, validation or resume."),
        panel("Step time quantiles", [
            target(quantile(0.5, "ssagan_step_duration_seconds"), "p50"),
            target(quantile(0.9, "ssagan_step_duration_seconds"), "p90"),
            target(quantile(0.99, "ssagan_step_duration_seconds"), "p99"),
        ], unit="s", description="Wall time of one step (data wait included), all selected ranks."),
        panel("Step time p90 per rank", [
            target(quantile(0.9, "ssagan_step_duration_seconds", ", rank"), "rank {{rank}}"),
        ], unit="s", description="A rank above the others is the straggler that every all-reduce waits for."),
        panel("Data wait share of step time", [
            target(f"sum by (rank) (rate(ssagan_data_wait_seconds_sum{{{SEL}}}[{RATE}])) / "
                   f"sum by (rank) (rate(ssagan_step_duration_seconds_sum{{{SEL}}}[{RATE}]))", "rank {{rank}}"),
        ], unit="percentunit", thresholds=[("green", None), ("red", 0.5)],
            description="Fraction of step time spent waiting for batches (SsaganDataStarved above 50%)."),
        panel("Data wait p90 per rank", [
            target(quantile(0.9, "ssagan_data_wait_seconds", ", rank"), "rank {{rank}}"),
        ], unit="s"),
        row("Losses and statistics"),
        panel("Losses per rank", [
            target(f"ssagan_train_stat{{{SEL}, {losses}}}", "{{stat}} rank {{rank}}"),
        ], description="Per-step losses at the latest logging step."),
        panel("Discriminator outputs", [
            target(f'ssagan_train_stat{{{SEL}, stat=~"d_real|d_fake"}}', "{{stat}} rank {{rank}}"),
        ], description="Mean D probability on real and generated clips: both near 1 or 0 means D won."),
        panel("Learning rates", [
            target(f'ssagan_train_stat{{{SEL}, stat=~"lr_.*"}}', "{{stat}} rank {{rank}}"),
        ]),
        panel("Non-finite statistics", [
            target(f"sum by (run, trial, rank) (ssagan_nonfinite_stats_total{{{SEL}}})", "rank {{rank}}"),
        ], thresholds=[("green", None), ("red", 1)],
            description="NaN or infinite values seen at logging steps (cumulative per worker process)."),
        row("Validation"),
        panel("PSNR vs copy-frame baseline", [
            target(f'max by (run, trial, metric) (ssagan_validation_metric{{{RUN}, metric=~"psnr|baseline_psnr"}})',
                   "{{metric}}"),
        ], unit="dB", description="Mean PSNR of predicted frames; baseline_psnr copies the input frame forward."),
        panel("SSIM vs copy-frame baseline", [
            target(f'max by (run, trial, metric) (ssagan_validation_metric{{{RUN}, metric=~"ssim|baseline_ssim"}})',
                   "{{metric}}"),
        ]),
        panel("PSNR gain over the baseline", [
            target(f"max by (run, trial) ({validation('psnr')}) - max by (run, trial) ({validation('baseline_psnr')})",
                   "{{run}} {{trial}}"),
        ], unit="dB", thresholds=[("red", None), ("green", 0)],
            description="Above 0: the model predicts motion better than repeating the first frame."),
        panel("MSE vs copy-frame baseline", [
            target(f'max by (run, trial, metric) (ssagan_validation_metric{{{RUN}, metric=~"mse|baseline_mse"}})',
                   "{{metric}}"),
        ]),
        panel("Validation clips scored", [
            target(f"max by (run, trial) ({validation('clips')})", "{{run}} {{trial}}"),
        ], description="The same held-out clips each time; 0 or a changing count means a broken validation set."),
        panel("Validation step", [
            target(f"max by (run, trial) (ssagan_validation_step{{{SEL}}})", "{{run}} {{trial}}"),
        ]),
        row("Health"),
        panel("Seconds since last step (stalled ranks)", [
            target(f"time() - ssagan_heartbeat_timestamp_seconds{{{SEL}}}", "rank {{rank}}"),
        ], unit="s", thresholds=[("green", None), ("red", STALL_SECONDS)],
            description=f"A live rank over {STALL_SECONDS} s fires SsaganRankStalled."),
        panel("Stalled ranks", [
            target(f"count((time() - ssagan_heartbeat_timestamp_seconds{{{SEL}}} > {STALL_SECONDS}) "
                   f"and ssagan_training_active{{{SEL}}} == 1) or vector(0)", "stalled"),
        ], kind="stat", width=6, thresholds=[("green", None), ("red", 1)]),
        panel("Worker starts in range", [
            target(f"changes((max by (run, trial, rank) (ssagan_worker_start_timestamp_seconds{{{SEL}}}))"
                   f"[$__range:$__interval])", "rank {{rank}}"),
        ], kind="stat", width=6, thresholds=[("green", None), ("orange", 1), ("red", 2)],
            description="Restarts of each rank's worker process within the dashboard's time range."),
        panel("Restarts and resume step", [
            target(f"sum by (run, trial, rank) (ssagan_restarts_total{{{SEL}}})", "resumed, rank {{rank}}"),
            target(f"max by (run, trial, rank) (ssagan_start_step{{{SEL}}})", "started at step, rank {{rank}}"),
        ], description="restarts_total is 1 for a worker process that resumed from a checkpoint."),
        panel("Checkpoint duration (mean)", [
            target(f"sum by (rank) (ssagan_checkpoint_duration_seconds_sum{{{SEL}}}) / "
                   f"sum by (rank) (ssagan_checkpoint_duration_seconds_count{{{SEL}}})", "rank {{rank}}"),
        ], unit="s"),
        panel("Checkpoints", [
            target(f"ssagan_checkpoint_last_bytes{{{SEL}}}", "last size, rank {{rank}}"),
            target(f"time() - (max by (run, trial) (ssagan_checkpoint_last_timestamp_seconds{{{SEL}}}) > 0)",
                   "seconds since the last one"),
        ], unit="bytes", description="Series 'seconds since' is in seconds despite the axis unit."),
        panel("S3 retries", [
            target(f"sum by (operation) (rate(ssagan_s3_retries_total{{{SEL}}}[{RATE}]))", "{{operation}}"),
        ], unit="reqps", description="Transient S3 errors retried by the storage layer."),
        panel("Memory", [
            target(f"ssagan_accelerator_memory_bytes{{{SEL}}}", "GPU {{kind}} rank {{rank}}"),
            target(f"ssagan_process_resident_memory_bytes{{{SEL}}}", "host RSS rank {{rank}}"),
        ], unit="bytes", description="GPU series exist only where CUDA is in use."),
        panel("CPU use per rank", [
            target(f"rate(ssagan_process_cpu_seconds_total{{{SEL}}}[{RATE}])", "rank {{rank}}"),
        ], unit="percentunit", description="Cores busy in the worker process (data loader workers not included)."),
    ]
    variables = [variable("run", "Run", "label_values(ssagan_steps_total, run)"),
                 variable("trial", "Trial", 'label_values(ssagan_steps_total{run=~"$run"}, trial)'),
                 variable("rank", "Rank", 'label_values(ssagan_steps_total{run=~"$run", trial=~"$trial"}, rank)')]
    return dashboard("ssagan-training", "ssagan-dist: training run",
                     "One training run across its ranks: throughput, step time, losses, validation, health.",
                     variables, panels)


def sweep_dashboard() -> dict[str, Any]:
    def per_trial(metric: str) -> str:
        return f"max by (trial) ({validation(metric)})"

    panels = [
        row("Validation per trial"),
        panel("Validation PSNR per trial", [target(per_trial("psnr"), "{{trial}}")], unit="dB"),
        panel("PSNR gain over the copy-frame baseline per trial", [
            target(f"{per_trial('psnr')} - {per_trial('baseline_psnr')}", "{{trial}}")], unit="dB",
            thresholds=[("red", None), ("green", 0)]),
        panel("Validation SSIM per trial", [target(per_trial("ssim"), "{{trial}}")]),
        panel("Best PSNR per trial in range", [
            target(f"sort_desc(max by (trial) (max_over_time({validation('psnr')}[$__range])))", "{{trial}}"),
        ], kind="bargauge", unit="dB"),
        row("Training per trial"),
        panel("Generator loss per trial", [
            target(f'avg by (trial) (ssagan_train_stat{{{RUN}, stat="g_loss"}})', "{{trial}}")]),
        panel("Discriminator loss per trial", [
            target(f'avg by (trial) (ssagan_train_stat{{{RUN}, stat="d_loss"}})', "{{trial}}")]),
        panel("Learning rates per trial", [
            target(f'max by (trial, stat) (ssagan_train_stat{{{RUN}, stat=~"lr_.*"}})', "{{trial}} {{stat}}")]),
        panel("Step per trial", [target(f"max by (trial) (ssagan_global_step{{{RUN}}})", "{{trial}}")]),
        panel("Throughput per trial", [
            target(f"sum by (trial) (rate(ssagan_clips_total{{{RUN}}}[{RATE}]))", "{{trial}}")], unit="clips/s"),
        panel("Stalled ranks per trial", [
            target(f"count by (trial) ((time() - ssagan_heartbeat_timestamp_seconds{{{RUN}}} > {STALL_SECONDS}) "
                   f"and ssagan_training_active{{{RUN}}} == 1) or sum by (trial) (0 * ssagan_training_active{{{RUN}}})",
                   "{{trial}}")], thresholds=[("green", None), ("red", 1)]),
    ]
    variables = [variable("run", "Sweep run", "label_values(ssagan_validation_metric, run)"),
                 variable("trial", "Trial", 'label_values(ssagan_validation_metric{run=~"$run"}, trial)')]
    return dashboard("ssagan-sweep", "ssagan-dist: Tune sweep",
                     "Trials of a Ray Tune sweep side by side: validation scores, losses, hyperparameters.",
                     variables, panels)


DASHBOARDS = {"training": training_dashboard, "sweep": sweep_dashboard}


def expressions(board: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets and query variables."""
    for p in board["panels"]:
        for t in p.get("targets", []):
            yield t["expr"]


def alert_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


# -- the generated files -----------------------------------------------------------------------

def _dashboard_json(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, dashboard JSON) as readable ``|`` blocks."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _k8s_yaml(doc: dict[str, Any], header: str) -> str:
    return (f"# GENERATED by `python -m ssagan_dist.observability.dashboards`; do not edit. {header}\n"
            + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=120))


def generated_files() -> dict[Path, str]:
    boards = {name: build() for name, build in DASHBOARDS.items()}
    files = {HERE / f"{name}.json": _dashboard_json(board) for name, board in boards.items()}
    configmap = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ssagan-dist-dashboards", "namespace": K8S_NAMESPACE,
                     "labels": {**K8S_LABELS, "grafana_dashboard": "1"},
                     "annotations": {"grafana_folder": "ssagan-dist"}},
        "data": {f"ssagan-{name}.json": _dashboard_json(board) for name, board in boards.items()},
    }
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "ssagan-dist-alerts", "namespace": K8S_NAMESPACE, "labels": K8S_LABELS},
            "spec": {"groups": alert_rules()}}
    files[K8S / "grafana-dashboards.yaml"] = _k8s_yaml(
        configmap, "Grafana's dashboard sidecar loads ConfigMaps labelled grafana_dashboard: \"1\".")
    files[K8S / "prometheusrule.yaml"] = _k8s_yaml(rule, "Source: ssagan_dist/observability/alerts.yml.")
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.observability.dashboards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report files that differ from the generator")
    args = p.parse_args(argv)
    stale = [path for path, text in generated_files().items()
             if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run python -m ssagan_dist.observability.dashboards)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
