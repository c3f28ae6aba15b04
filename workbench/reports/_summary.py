"""The report's summary page (``index.html``): key figures, chart thumbnails, links, parameters, versions.

Everything is computed from the stores of ``settings.home`` (not scraped from the notebooks) and
written as one offline HTML file: charts are inline SVG, no script, no network. A figure whose
store does not exist yet says so instead of failing the report.
"""

from __future__ import annotations

import html
import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.config import Settings
from workbench.reports.pages import page

__all__ = ["key_figures", "write_summary"]

logger = logging.getLogger(__name__)

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;font-size:14px} td,th{padding:3px 12px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}
.card .label{color:#555;font-size:12px} .card .value{font-size:22px;font-weight:600}
.thumbs{display:flex;flex-wrap:wrap;gap:14px}
.thumb{border:1px solid #ddd;border-radius:6px;padding:6px;width:360px}
.thumb svg{width:100%;height:auto} .thumb figcaption{font-size:13px;color:#555}
.muted{color:#666} .bad{color:#C62828}
"""

_VERSION_PACKAGES = ("pulse-workbench", "quixstreams", "confluent-kafka", "pyarrow", "duckdb", "onnxruntime",
                     "scikit-learn", "altair", "papermill")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, pd.Timestamp):
        return f"{value:%Y-%m-%d %H:%M} UTC"
    return str(value)


def _table(frame: pd.DataFrame, *, index: bool = True) -> str:
    if frame.empty:
        return "<p class='muted'>none</p>"
    head_cells = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in head_cells)
    rows = []
    # column by column: a row mixes counts and ratios, and pandas made the counts floats ("2.000" beside "24")
    columns = [frame[c].tolist() for c in frame.columns]
    for at, key in enumerate(frame.index.tolist()):
        cells = ([_fmt(key)] if index else []) + [_fmt(values[at]) for values in columns]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _attempt(what: str, compute: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why)`` when the store is missing or the figure fails."""
    from workbench.store.exceptions import StoreNotFoundError

    try:
        return compute(), None
    except StoreNotFoundError as exc:
        return None, f"no data yet ({exc})"
    except Exception as exc:  # one figure must not cost the reader the whole summary page
        logger.warning("report summary: %s unavailable: %s", what, exc)
        return None, f"unavailable: {exc}"


def key_figures(settings: Settings, *, start: Any = None, end: Any = None,
                instances: Sequence[int] | None = None, labels_file: Path | None = None,
                versions: Sequence[str] = ()) -> dict[str, Any]:
    """The summary's figures: events, windows, anomalies (total, per reason and version), critical
    instances (last 24 h of data), model versions, and, with ``labels_file``, precision and recall.

    ``versions`` narrows the anomalies as the report's ``--versions`` narrows its notebooks (the summary
    counted every version's beside a notebook that counted one). Without it, precision and recall are
    the stream's (:func:`~workbench.analysis.anomaly_summary.stream_alerts`), not every rescored version's.
    Values are ``None`` (with a reason under ``<key>_why``) when their store does not exist yet.
    """
    from workbench.analysis import anomaly_summary, read
    from workbench.analysis.detection_summary import label_agreement
    from workbench.ml import ModelRegistry

    out: dict[str, Any] = {}
    stats, out["stats_why"] = _attempt("window stats", lambda: read.window_stats(
        settings, start=start, end=end, instances=instances))
    out["stats"] = stats
    if stats is not None and len(stats):
        out["events"] = int(stats["total_queries"].sum())
        out["instances"] = int(stats["instance_id"].nunique())
        out["first_window"] = stats["window_start"].min()
        out["last_window"] = stats["window_end"].max()
    anomalies, out["anomalies_why"] = _attempt("anomalies", lambda: anomaly_summary.anomalies_or_empty(
        settings, start=start, end=end, instances=instances, versions=versions))
    out["anomalies_frame"] = anomalies
    if anomalies is not None:
        out["anomalies"] = len(anomalies)
        out["by_reason"] = anomaly_summary.by_reason_and_version(anomalies)
    if stats is not None and len(stats):
        out["critical"], out["critical_why"] = _attempt("critical instances", lambda: read.critical_instances(
            settings, "24h", end=end))
    else:  # the store may hold windows, only not of this selection (`--instances 999` read "no window stats yet")
        out["critical"] = None
        out["critical_why"] = ("no window of the selected instances and span" if stats is not None
                               and (instances or start or end) else "no window stats yet")
    registry = ModelRegistry(settings.models_dir)
    out["model_versions"] = registry.versions()
    out["current_model"] = registry.current()
    if labels_file is not None and anomalies is not None:
        lo, hi = out.get("first_window", start), out.get("last_window", end)
        def agreement() -> Any:
            scored = anomaly_summary.scored_queries(settings, lo, hi, instances)
            alerts = anomalies if versions else anomaly_summary.stream_alerts(anomalies, scored)
            return label_agreement(alerts, labels_file, start=lo, end=hi, instances=instances, scored=scored)

        out["agreement"], out["agreement_why"] = _attempt("label agreement", agreement)
        # with --versions, recall counts the labels of days those versions never scored (as 02 says)
        out["agreement_scope"] = anomaly_summary.agreement_scope(anomalies, versions=versions or ())
    return out


def _thumbnails(figures: Mapping[str, Any]) -> list[tuple[str, str]]:
    from workbench.ui import charts

    thumbs: list[tuple[str, str]] = []
    stats, anomalies = figures.get("stats"), figures.get("anomalies_frame")
    if stats is not None and len(stats):
        shares = stats.groupby("window_start", as_index=False)[
            [f"{c}_queries" for c in charts.CLASS_LABELS]].sum()
        candidates: list[tuple[str, Callable[[], Any]]] = [
            ("Events per 10 minutes", lambda: charts.events_chart(stats)),
            ("Query classes per 10-minute window", lambda: charts.class_shares_chart(shares)),
        ]
    else:
        candidates = []
    if anomalies is not None and len(anomalies):
        candidates += [("Anomalies per 10 minutes", lambda: charts.anomalies_chart(anomalies)),
                       ("Anomalies per instance over time", lambda: charts.anomaly_timeline(anomalies))]
    for caption, build in candidates:
        svg, why = _attempt(caption, lambda b=build: charts.to_svg(b()))
        if svg is not None:
            thumbs.append((caption, svg))
        else:
            logger.info("thumbnail %s skipped: %s", caption, why)
    return thumbs


def _versions(figures: Mapping[str, Any]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["model versions"] = ", ".join(figures.get("model_versions") or []) or "none"
    out["current model"] = figures.get("current_model") or "none"
    return out


def _card(label: str, value: Any) -> str:
    return (f"<div class='card'><div class='label'>{html.escape(label)}</div>"
            f"<div class='value'>{html.escape(_fmt(value))}</div></div>")


def write_summary(out: Path, run_id: str, settings: Settings, params: Mapping[str, Any],
                  pages: Sequence[tuple[str, str]], *, labels_file: Path | None = None,
                  figures: Mapping[str, Any] | None = None) -> Path:
    """Write ``out/index.html``: the summary page of a report.

    Parameters
    ----------
    pages : sequence of (name, state)
        The notebooks run, with ``"ok"`` or why they failed.
    figures : mapping, optional
        Precomputed :func:`key_figures` (computed here when omitted).
    """
    from workbench.reports.notebook import parse_instances, parse_list, parse_time

    chosen = parse_list(params.get("versions"))
    if figures is None:
        figures = key_figures(settings, start=parse_time(params.get("start"), "start"),
                              end=parse_time(params.get("end"), "end"),
                              instances=parse_instances(params.get("instances")), labels_file=labels_file,
                              versions=chosen)
    parts = [f"<h1>Workbench report <code>{html.escape(run_id)}</code></h1>"]
    span = ""
    if figures.get("first_window") is not None:
        span = f"{_fmt(figures['first_window'])} to {_fmt(figures['last_window'])}"
    parts.append(f"<p class='muted'>Data of <code>{html.escape(str(settings.home))}</code>"
                 + (f", event time {html.escape(span)}" if span else "") + ".</p>")

    if chosen:
        parts.append(f"<p class='muted' id='versions-scope'>Anomalies of model version{'s' if len(chosen) > 1 else ''} "
                     f"{html.escape(', '.join(chosen))} only (the report's versions).</p>")
    parts.append("<h2>Key figures</h2><div class='cards' id='key-figures'>")
    parts.append(_card("Events", figures.get("events")))
    parts.append(_card("Instances", figures.get("instances")))
    parts.append(_card("Anomalies", figures.get("anomalies")))
    agreement = figures.get("agreement")
    if agreement is not None:
        parts.append(_card("Precision vs labels", agreement.precision))
        parts.append(_card("Recall vs labels", agreement.recall))
    parts.append(_card("Model versions", len(figures.get("model_versions") or [])))
    parts.append("</div>")
    for key in ("stats_why", "anomalies_why"):
        if figures.get(key):
            parts.append(f"<p class='muted'>{html.escape(figures[key])}</p>")

    thumbs = _thumbnails(figures)
    parts.append("<h2>Charts</h2>")
    if thumbs:
        parts.append("<div class='thumbs'>" + "".join(
            f"<figure class='thumb'>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, svg in thumbs) + "</div>")
    else:
        parts.append("<p class='muted'>no data to chart yet</p>")

    parts.append("<h2>Anomalies per reason and model version</h2>")
    by_reason = figures.get("by_reason")
    parts.append(_table(by_reason, index=False) if by_reason is not None else "<p class='muted'>no anomalies yet</p>")

    if agreement is not None:
        parts.append("<h2>Detection against the generator's labels</h2><div id='detection'>")
        for note in (agreement.note, figures.get("agreement_scope")):
            if note:
                parts.append(f"<p class='muted'>{html.escape(note)}</p>")
        parts.append(_table(agreement.summary))
        parts.append("<h3>Recall per labelled kind</h3>" + _table(agreement.per_kind))
        parts.append("</div>")
    elif figures.get("agreement_why"):
        parts.append(f"<p class='muted'>detection table {html.escape(figures['agreement_why'])}</p>")

    parts.append("<h2>Critical instances (last 24 h of data)</h2>")
    critical = figures.get("critical")
    if critical is None:
        parts.append(f"<p class='muted'>{html.escape(figures.get('critical_why') or 'none')}</p>")
    else:
        parts.append(_table(critical.round(3), index=False))

    parts.append("<h2>Notebooks</h2><ul id='pages'>")
    for name, state in pages:
        entry = page(name)
        status = ("" if state == "ok" else f" <span class='bad'>&mdash; {html.escape(state)}</span>")
        parts.append(f"<li><a href='{html.escape(name)}.html'>{html.escape(entry.title)}</a> "
                     f"(<a href='{html.escape(name)}.ipynb'>notebook</a>){status}"
                     f"<br><span class='muted'>{html.escape(entry.description)}</span></li>")
    parts.append("</ul>")

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in sorted(params.items())) or "<tr><td>defaults</td><td></td></tr>"
    parts.append(f"<h2>Run parameters</h2><table id='parameters'>{rows}</table>")
    versions = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in _versions(figures).items())
    parts.append(f"<h2>Versions</h2><table id='versions'>{versions}</table>")

    page_html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                 f"<title>Workbench report {html.escape(run_id)}</title><style>{_STYLE}</style></head>"
                 f"<body>{''.join(parts)}</body></html>")
    path = out / "index.html"
    path.write_text(page_html, encoding="utf-8")
    return path
