"""A sweep's report: report.html (self-contained: plotly inline, images as data URIs), static
PNGs beside it in report_png/, and trials.csv (one row per trial).

It reads only files, through ``results`` (Tune's experiment state and result.json files, the
sweep's sweep.json and history/*.jsonl), and the winner's sample strip and GIF from its Train
run folder; no Ray cluster.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from typing import Any, Optional

from ssagan_dist import storage
from ssagan_dist.tune.results import (Best, Trial, baseline_key, best_report, find_best, finite, load_trials,
                                      read_sweep_meta)

Bests = dict[str, Optional[dict[str, Any]]]  # trial id -> its best report (results.best_report)


# -- trials.csv ------------------------------------------------------------------------------------

def trials_table(trials: list[Trial], bests: Bests, meta: dict[str, Any]) -> list[dict[str, Any]]:
    keys, metric = list(meta["space"]), meta["metric"]
    rows = []
    for t in trials:
        best = bests[t.trial_id] or {}
        exploits = [h for h in t.history if h.get("event") == "exploit"]
        rows.append({"trial_id": t.trial_id, "status": t.status(meta["max_steps"]), **t.values(keys),
                     f"final {metric}": t.last.get(metric), f"best {metric}": best.get(metric),
                     "best step": best.get("step"), "last step": t.last.get("step"),
                     "generations": len(t.history), "exploits": len(exploits),
                     "best checkpoint": best.get("checkpoint_uri", "")})
    return rows


def write_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue().encode()


# -- figures ---------------------------------------------------------------------------------------

def _log_axis(meta: dict[str, Any], key: str) -> bool:
    return "loguniform" in meta["space"][key]


def _scored(trials: list[Trial], bests: Bests) -> list[tuple[Trial, dict[str, Any]]]:
    return [(t, bests[t.trial_id]) for t in trials if bests[t.trial_id] is not None]


def _curve(trial: Trial, metric: str) -> tuple[list, list]:
    rows = [r for r in trial.results if finite(r.get(metric))]
    return [r["step"] for r in rows], [r[metric] for r in rows]


def figures(trials: list[Trial], bests: Bests, meta: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(id, title, plotly figure) in report order."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys, metric, max_steps = list(meta["space"]), meta["metric"], meta["max_steps"]
    scored = _scored(trials, bests)
    figs = []

    if scored:
        dims = []
        for k in keys:
            vals = [t.values(keys)[k] for t, _ in scored]
            if all(isinstance(v, (int, float)) for v in vals):
                log = _log_axis(meta, k)
                shown = [math.log10(v) if log and v > 0 else v for v in vals]
                dims.append({"label": f"log10 {k}" if log else k, "values": shown})
            else:
                labels = sorted({str(v) for v in vals})
                dims.append({"label": k, "values": [labels.index(str(v)) for v in vals],
                             "tickvals": list(range(len(labels))), "ticktext": labels})
        scores = [r[metric] for _, r in scored]
        dims.append({"label": metric, "values": scores})
        par = go.Figure(go.Parcoords(line={"color": scores, "colorscale": "Viridis", "showscale": True},
                                     dimensions=dims))
        par.update_layout(height=420, margin={"l": 80, "r": 80, "t": 40, "b": 30})
        figs.append(("parallel", f"Hyperparameters against the best {metric} of each trial", par))

        sc = make_subplots(rows=1, cols=len(keys), subplot_titles=keys, shared_yaxes=True)
        for i, k in enumerate(keys, start=1):
            sc.add_trace(go.Scatter(x=[t.values(keys)[k] for t, _ in scored], y=scores, mode="markers",
                                    text=[t.trial_id for t, _ in scored], marker={"size": 10, "color": scores,
                                    "colorscale": "Viridis"}, showlegend=False, name=k), row=1, col=i)
            if _log_axis(meta, k):
                sc.update_xaxes(type="log", row=1, col=i)
        sc.update_yaxes(title_text=metric, row=1, col=1)
        sc.update_layout(height=360, margin={"t": 50})
        figs.append(("scatter", f"Each hyperparameter against the best {metric}", sc))

    curves = go.Figure()
    for t in trials:
        xs, ys = _curve(t, metric)
        if not xs:
            continue
        curves.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=t.trial_id))
        status = t.status(max_steps)
        if status in ("stopped early", "diverged"):
            curves.add_trace(go.Scatter(x=[xs[-1]], y=[ys[-1]], mode="markers", showlegend=False,
                                        marker={"symbol": "x", "size": 14,
                                                "color": "crimson" if status == "diverged" else "black"},
                                        name=f"{t.trial_id} {status}", hovertext=f"{t.trial_id} {status}"))
        for h in t.history:
            if h.get("event") == "exploit":
                curves.add_trace(go.Scatter(
                    x=[h["step"]], y=[_value_at(t, h["step"], metric)], mode="markers", showlegend=False,
                    marker={"symbol": "star", "size": 14, "color": "crimson"},
                    hovertext=f"{t.trial_id} took {h['donor_trial']}'s checkpoint; explored "
                              + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in h.get("explored", {}).items())))
    base = _baseline_curve(trials, metric)
    if base:
        curves.add_trace(go.Scatter(x=base[0], y=base[1], mode="lines", name="copy-frame baseline",
                                    line={"dash": "dash", "color": "grey"}))
    curves.update_layout(height=420, xaxis_title="training step", yaxis_title=metric,
                         margin={"t": 30})
    title = f"{metric} per trial (x: stopped early by the scheduler; red x: diverged; star: PBT exploit)"
    figs.append(("curves", title, curves))
    return figs


def _value_at(trial: Trial, step: int, metric: str) -> Optional[float]:
    rows = [r for r in trial.results if r.get("step") == step and metric in r]
    return rows[-1][metric] if rows else None


def _baseline_curve(trials: list[Trial], metric: str) -> Optional[tuple[list, list]]:
    key = baseline_key(metric)
    if key is None:
        return None
    points = sorted({r["step"]: r[key] for t in trials for r in t.results if key in r}.items())
    return ([p[0] for p in points], [p[1] for p in points]) if points else None


# -- static PNGs (matplotlib, no browser needed) ---------------------------------------------------

def static_pngs(trials: list[Trial], bests: Bests, meta: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, metric = list(meta["space"]), meta["metric"]
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for t in trials:
        xs, ys = _curve(t, metric)
        if xs:
            ax.plot(xs, ys, marker="o", label=t.trial_id)
            status = t.status(meta["max_steps"])
            if status in ("stopped early", "diverged"):
                ax.plot(xs[-1:], ys[-1:], "x", color="crimson" if status == "diverged" else "black", markersize=10)
    base = _baseline_curve(trials, metric)
    if base:
        ax.plot(*base, "--", color="grey", label="copy-frame baseline")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out["curves.png"] = _png(fig, plt)

    scored = _scored(trials, bests)
    if scored:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), dpi=100, sharey=True, squeeze=False)
        for ax, k in zip(axes[0], keys):
            xs = [t.values(keys)[k] for t, _ in scored]
            ax.scatter([x if isinstance(x, (int, float)) else str(x) for x in xs], [r[metric] for _, r in scored])
            if _log_axis(meta, k):
                ax.set_xscale("log")
            ax.set_xlabel(k)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"best {metric}")
        out["scatter.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- the HTML page ---------------------------------------------------------------------------------

def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def best_samples(best: Best, endpoint: Optional[str]) -> dict[str, bytes]:
    """The winning checkpoint's step's sample strip (PNG) and GIF from its Train run folder."""
    run = best.checkpoint.rsplit("/", 1)[0]
    out = {}
    for ext in ("png", "gif"):
        url = storage.join(run, "samples", f"step_{best.step:09d}.{ext}")
        if storage.exists(url, endpoint):
            out[ext] = storage.read_bytes(url, endpoint)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No trials.</p>"

    def cell(v: Any) -> str:
        return html.escape(f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v))

    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _exploit_rows(trials: list[Trial]) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        for h in t.history:
            if h.get("event") == "exploit":
                rows.append({"step": h["step"], "trial": t.trial_id, "took checkpoint of": h["donor_trial"],
                             "explored": ", ".join(f"{k}: {h['donor_config'].get(k)!r} -> {v!r}"
                                                   for k, v in h.get("explored", {}).items()),
                             "checkpoint": h["start_from"]})
    return sorted(rows, key=lambda r: (r["step"], r["trial"]))


def write_report(sweep_url: str, endpoint: Optional[str] = None) -> str:
    """Write report.html, report_png/*.png and trials.csv into the sweep folder; returns the HTML's URL."""
    meta = read_sweep_meta(sweep_url, endpoint)
    trials = load_trials(sweep_url, endpoint)
    keys, metric, mode = list(meta["space"]), meta["metric"], meta["mode"]
    bests = {t.trial_id: best_report(t, metric, mode, endpoint) for t in trials}
    rows = trials_table(trials, bests, meta)
    storage.write_bytes_atomic(storage.join(sweep_url, "trials.csv"), write_csv(rows), endpoint)
    pngs = static_pngs(trials, bests, meta)
    for name, data in pngs.items():
        storage.write_bytes_atomic(storage.join(sweep_url, "report_png", name), data, endpoint)

    best = find_best(trials, metric, mode, keys, endpoint)
    parts = [f"<h1>Sweep {html.escape(meta['experiment'])}</h1>",
             f"<p>{html.escape(meta.get('description') or '')} Model config <code>{html.escape(meta['config'])}"
             f"</code>; {len(trials)} trials; metric <b>{html.escape(metric)}</b> ({mode}); search "
             f"{html.escape(meta['algorithm'])}, scheduler {html.escape(meta['scheduler']['name'])}; "
             f"{meta['max_steps']} steps per trial, a report every {meta['val_every']}.</p>"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    parts.append("<p>" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".</p>")
    diverged = [t for t in trials if t.diverged]
    if diverged:
        parts.append("<h2>Diverged</h2><ul>" + "".join(
            f"<li>Trial <b>{t.trial_id}</b> diverged: {html.escape(t.diverged)}</li>" for t in diverged) + "</ul>")
    if best is None:
        parts.append("<h2>Best</h2><p>No trial that did not diverge has a checkpoint.</p>")
    else:
        base_text = f" (copy-frame baseline {best.baseline:.4g})" if finite(best.baseline) else ""
        parts.append(f"<h2>Best</h2><p>Trial <b>{best.trial_id}</b>: {html.escape(metric)} = <b>{best.value:.4g}</b>"
                     f"{base_text} at step {best.step}; values "
                     f"<code>{html.escape(json.dumps(best.values, sort_keys=True))}</code>; "
                     f"checkpoint <code>{html.escape(best.checkpoint)}</code>.</p>")
        samples = best_samples(best, endpoint)
        if samples:
            parts.append("<div class='samples'>" + "".join(
                f"<figure><img alt='best {ext}' src='{_data_uri(data, 'image/' + ext)}'><figcaption>"
                f"{'sample strip: input, prediction, truth' if ext == 'png' else 'prediction | truth'}"
                "</figcaption></figure>" for ext, data in samples.items()) + "</div>")

    first = True
    for fig_id, title, fig in figures(trials, bests, meta):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False, div_id=fig_id,
                                 config={"displaylogo": False, "responsive": True}))
        first = False
    exploits = _exploit_rows(trials)
    if meta["scheduler"]["name"] == "pbt":
        parts.append("<h2>PBT exploit and explore history</h2>" + _table(exploits))
    parts.append("<h2>Trials</h2>" + _table(rows))
    parts.append("<h2>Static plots</h2>" + "".join(
        f"<img alt='{name}' src='{_data_uri(data, 'image/png')}'>" for name, data in pngs.items()))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep "
            f"{html.escape(meta['experiment'])}</title><style>"
            "body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#f3f3f3}.samples{display:flex;gap:24px}"
            "img{max-width:100%;image-rendering:pixelated}code{font-size:12px}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    url = storage.join(sweep_url, "report.html")
    storage.write_bytes_atomic(url, page.encode(), endpoint)
    return url
