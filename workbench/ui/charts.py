"""Altair chart builders shared by the control panel and the notebooks.

Every builder takes a pandas ``DataFrame`` as the read API returns it and gives back an Altair
chart with a title, axis titles with units and UTC time axes. :func:`to_svg` renders any of them
offline (bundled Vega engine, no CDN), which is how the panel shows charts and how reports stay
readable without a network.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import altair as alt
import numpy as np
import pandas as pd

from workbench._units import human_mb, human_ms, points
from workbench.exceptions import ConfigurationError

__all__ = [
    "CARDS",
    "CLASS_COLORS",
    "CLASS_LABELS",
    "LIVE_MIME",
    "activity_chart",
    "anomalies_chart",
    "anomalies_per_window",
    "anomaly_timeline",
    "class_shares_chart",
    "coverage_chart",
    "empty_chart",
    "events_chart",
    "format_metric",
    "metric_cards_html",
    "metrics_table",
    "notebook_renderer",
    "pr_curve_chart",
    "problem_badges_html",
    "runtime_comparison_chart",
    "to_svg",
]

logger = logging.getLogger(__name__)

#: Display order (bottom to top of the stack) and colours of the earlier dashboard.
CLASS_LABELS: Final[dict[str, str]] = {
    "cpu_bound": "CPU", "io_bound": "IO", "network_bound": "Network", "queue_wlm_bound": "Queue/WLM",
    "normal": "Normal",
}
CLASS_COLORS: Final[dict[str, str]] = {
    "CPU": "#C62828", "IO": "#EF5350", "Network": "#F9A825", "Queue/WLM": "#FDD835", "Normal": "#2E7D32",
}
_WIDTH: Final = 640
#: Legends under the plot: at the right they made the charts with one 150-250 px wider than the others and
#: than a notebook's output area beside the file browser.
_LEGEND: Final = alt.Legend(orient="bottom")
_TIME_FORMAT: Final = "%b %d %H:%M"
_WINDOW: Final = "10min"
_Y_LABEL_ROOM: Final = 40  # px: "100,000" at the default label size


def _time_x(field: str = "window_start", title: str = "Time (UTC)",
            domain: tuple[Any, Any] | None = None) -> alt.X:
    scale = (alt.Scale(type="utc") if domain is None
             else alt.Scale(type="utc", domain=_utc(pd.Series(list(domain))).tolist()))
    return alt.X(f"{field}:T", title=title, scale=scale,
                 axis=alt.Axis(format=_TIME_FORMAT, labelAngle=-30, labelOverlap=True))


def _count_y(field: str, title: str, values: pd.Series) -> alt.Y:
    """A y axis of whole counts. Under 5 the default ticks fall on halves, which ",d" printed as
    "0, 1, 1, 2, 2" (vl-convert ignores ``tickMinStep``), so small maxima get one tick per count."""
    top = int(values.max()) if len(values) else 0
    # minExtent: the same room for the labels whatever their width, so that stacked charts (the panel's
    # events above its anomalies) start their plots at the same x and their time axes line up
    ticks = {"tickCount": max(top, 1)} if top < 5 else {}
    return alt.Y(f"{field}:Q", title=title, axis=alt.Axis(format=",d", minExtent=_Y_LABEL_ROOM, **ticks))


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        msg = (f"{what} needs the columns {list(columns)}; the frame lacks {missing[:5]}. "
               "Pass the frame the read API returns.")
        raise ConfigurationError(msg)


#: What a tooltip calls a time column (it read "window_start (UTC)", "arrival_timestamp (UTC)").
_TIME_NAMES: Final = {"window_start": "window", "arrival_timestamp": "arrival"}


def _utc_tooltip(field: str, *, seconds: bool = False) -> alt.Tooltip:
    """A time in a tooltip in UTC, as the axis: a plain temporal tooltip showed the browser's local time."""
    unit = "utcyearmonthdatehoursminutesseconds" if seconds else "utcyearmonthdatehoursminutes"
    return alt.Tooltip(f"{field}:T", timeUnit=unit, format=_TIME_FORMAT + (":%S" if seconds else "") + " UTC",
                       title=f"{_TIME_NAMES.get(field, field)} (UTC)")


def _with_window_end(per: pd.DataFrame) -> pd.DataFrame:
    """``per`` with UTC ``window_start`` and ``window_end`` strings: a bar spans its window (over 12 hours a bar
    of the default width was a sliver a pixel or two wide; browser tester, 42nd session)."""
    start = pd.to_datetime(per["window_start"], utc=True)
    return per.assign(window_start=_utc(start), window_end=_utc(start + pd.Timedelta(_WINDOW)))


def _utc(values: pd.Series) -> pd.Series:
    out = pd.to_datetime(values, utc=True)
    # Vega-Lite reads ISO strings with an explicit offset exactly; naive strings would be local time.
    return out.dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def empty_chart(title: str, message: str = "No data yet") -> alt.Chart:
    """A titled placeholder that says why there is nothing to show."""
    return alt.Chart(pd.DataFrame({"text": [message]})).mark_text(size=14, color="#666").encode(
        text="text:N").properties(title=title, width=_WIDTH, height=80)


def class_shares_chart(shares: pd.DataFrame, *, title: str = "Query classes per 10-minute window",
                       empty: str = "No data yet") -> alt.Chart:
    """Stacked bars (0-100 %) of each class's share per window, summed over the frame's instances.

    Parameters
    ----------
    shares : DataFrame
        :func:`workbench.analysis.read.class_shares` output (``window_start`` and ``<class>_queries``).
    empty : str
        What the chart says without rows (a notebook's selection that matches nothing is not "yet").
    """
    _require(shares, ["window_start", *(f"{c}_queries" for c in CLASS_LABELS)], "class_shares_chart")
    if shares.empty:
        return empty_chart(title, empty)
    columns = [f"{c}_queries" for c in CLASS_LABELS]
    per = shares.groupby("window_start", as_index=False)[columns].sum()
    counts = per[columns].to_numpy(float)
    total = counts.sum(axis=1, keepdims=True)
    per, counts, total = per[total[:, 0] > 0], counts[total[:, 0] > 0], total[total[:, 0] > 0]
    top = np.cumsum(counts / total, axis=1)  # each class's band, stacked in CLASS_LABELS order
    bottom = np.hstack([np.zeros((len(top), 1)), top[:, :-1]])
    per = _with_window_end(per)
    start, end = per["window_start"].to_numpy(), per["window_end"].to_numpy()
    long = pd.concat([pd.DataFrame({"window_start": start, "window_end": end, "class": label,
                                    "queries": counts[:, i].astype(int), "bottom": bottom[:, i], "top": top[:, i],
                                    "share": top[:, i] - bottom[:, i]})
                      for i, label in enumerate(CLASS_LABELS.values())], ignore_index=True)
    # One rectangle per window and class, 10 minutes wide and stacked here: hours without windows
    # stay empty (a step area held the last window's shares across them, a flat block over time
    # in which nothing was seen)
    return alt.Chart(long).mark_rect().encode(
        x=_time_x(),
        x2="window_end:T",
        y=alt.Y("bottom:Q", title="Share of queries (%)", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        y2="top:Q",
        color=alt.Color("class:N", title="Class", sort=list(CLASS_COLORS), legend=_LEGEND,
                        scale=alt.Scale(domain=list(CLASS_COLORS), range=list(CLASS_COLORS.values()))),
        tooltip=[_utc_tooltip("window_start"), "class:N", alt.Tooltip("share:Q", format=".1%"),  # the y axis'
                 alt.Tooltip("queries:Q", format=",d")],
    ).properties(title=title, width=_WIDTH, height=240)


def events_chart(stats: pd.DataFrame, *, title: str = "Events per 10 minutes",
                 time_domain: tuple[Any, Any] | None = None) -> alt.Chart:
    """Bars of queries per window, summed over instances (``window_stats`` rows); ``time_domain``
    as for :func:`anomalies_chart`."""
    _require(stats, ["window_start", "total_queries"], "events_chart")
    if stats.empty:
        return empty_chart(title)
    per = stats.groupby("window_start", as_index=False)["total_queries"].sum()
    per = _with_window_end(per)
    return alt.Chart(per).mark_bar(color="#1565C0").encode(
        x=_time_x(domain=time_domain), x2="window_end:T", y2=alt.datum(0),  # from 0: a ranged bar has no base
        y=_count_y("total_queries", "Queries per 10 min", per["total_queries"]),
        tooltip=[_utc_tooltip("window_start"),
                 alt.Tooltip("total_queries:Q", title="queries", format=",d")],
    ).properties(title=title, width=_WIDTH, height=140)


def anomalies_per_window(anomalies: pd.DataFrame) -> pd.DataFrame:
    """Anomaly counts per 10-minute window (``window_start``, ``anomalies``), from anomaly rows."""
    _require(anomalies, ["arrival_timestamp"], "anomalies_per_window")
    if anomalies.empty:
        return pd.DataFrame({"window_start": pd.Series([], dtype="datetime64[ns, UTC]"),
                             "anomalies": pd.Series([], dtype="int64")})
    start = pd.to_datetime(anomalies["arrival_timestamp"], utc=True).dt.floor(_WINDOW)
    out = start.value_counts().sort_index().rename_axis("window_start").reset_index(name="anomalies")
    return out


def anomalies_chart(anomalies: pd.DataFrame, *, title: str = "Anomalies per 10 minutes",
                    time_domain: tuple[Any, Any] | None = None) -> alt.Chart:
    """Bars of anomalies per window (from lakehouse anomaly rows).

    ``time_domain`` (first, last time) fixes the time axis, e.g. to the events chart's above it;
    without it the axis spans the anomalies alone.
    """
    per = anomalies_per_window(anomalies)
    if per.empty:
        return empty_chart(title, "No anomalies in this selection")
    per = _with_window_end(per)
    # clip: with the events chart's time axis, a bar outside it is cut at the edge, not drawn beside the plot
    return alt.Chart(per).mark_bar(color="#C62828", clip=True).encode(
        x=_time_x(domain=time_domain), x2="window_end:T", y2=alt.datum(0),
        y=_count_y("anomalies", "Anomalies per 10 min", per["anomalies"]),
        tooltip=[_utc_tooltip("window_start"), alt.Tooltip("anomalies:Q", format=",d")],
    ).properties(title=title, width=_WIDTH, height=120)


def activity_chart(stats: pd.DataFrame, anomalies: pd.DataFrame) -> alt.VConcatChart:
    """Events and anomalies per 10 minutes, stacked vertically on a shared time axis."""
    return alt.vconcat(events_chart(stats), anomalies_chart(anomalies)).resolve_scale(x="shared")


#: Points drawn by :func:`anomaly_timeline` at most (Altair embeds at most 5,000 rows by default).
TIMELINE_MAX_POINTS = 4_000


def anomaly_timeline(anomalies: pd.DataFrame, *, title: str = "Anomalies per instance over time") -> alt.Chart:
    """One row per instance; each anomaly a point at its arrival time, coloured by reason.

    More than :data:`TIMELINE_MAX_POINTS` anomalies: the strongest (by actual / predicted) are drawn
    and the title says how many of how many.
    """
    _require(anomalies, ["arrival_timestamp", "instance_id", "reason", "under_ratio"], "anomaly_timeline")
    if anomalies.empty:
        return empty_chart(title, "No anomalies in this selection")  # a range, instances, a reason or versions
    df = anomalies[["arrival_timestamp", "instance_id", "reason", "under_ratio", "query_id"]].copy()
    df["arrival_timestamp"] = _utc(df["arrival_timestamp"])
    df["under_ratio"] = df["under_ratio"].clip(lower=1.0)
    df["reason"] = df["reason"].fillna("unknown")
    if len(df) > TIMELINE_MAX_POINTS:  # Altair refuses > 5,000 rows inline; the strongest ones matter most
        total = len(df)
        df = df.nlargest(TIMELINE_MAX_POINTS, "under_ratio", keep="first")
        title = f"{title} (the {TIMELINE_MAX_POINTS:,} strongest of {total:,})"
    return alt.Chart(df).mark_circle(opacity=0.7).encode(
        x=_time_x("arrival_timestamp", "Arrival time (UTC)"),
        y=alt.Y("instance_id:O", title="Instance"),
        # two columns of reasons: in one row under the plot they made the chart 1,100 px wide
        color=alt.Color("reason:N", title="Reason", legend=alt.Legend(orient="bottom", columns=2)),
        # grey sizes: the default near-black circles vanished on the dark theme's background
        size=alt.Size("under_ratio:Q", title="Actual / predicted", scale=alt.Scale(type="log", range=[20, 300]),
                      legend=alt.Legend(format=",.0f", orient="bottom", symbolFillColor="#9E9E9E",
                                        symbolStrokeColor="#9E9E9E")),
        tooltip=[_utc_tooltip("arrival_timestamp", seconds=True), alt.Tooltip("instance_id:O", title="instance"),
                 alt.Tooltip("query_id:N", title="query"), "reason:N",
                 alt.Tooltip("under_ratio:Q", title="actual / predicted (x)", format=",.1f")],
    ).properties(title=title, width=_WIDTH, height=max(80, 22 * df["instance_id"].nunique()))


def runtime_comparison_chart(values: Mapping[str, float | None], *, highlight: str = "actual",
                             title: str = "Actual vs predicted runtime") -> alt.Chart:
    """Horizontal bars of runtimes (ms) on a log axis, e.g. actual against the predictions.

    Bars start a decade below the smallest value (a log axis has no zero), the axis has
    a tick per power of ten with readable labels ("1,000 ms"), and ``highlight`` is drawn red.
    Missing values (``None``/NaN) are left out; values below 1 ms are shown as 1 ms.
    """
    rows = [(k, float(v)) for k, v in values.items() if v is not None and np.isfinite(float(v))]
    if not rows:
        return empty_chart(title, "No runtimes to compare")
    df = pd.DataFrame(rows, columns=["what", "ms"])
    df["time"] = [human_ms(v) for v in df["ms"]]  # as the evidence table reads it ("26.6 s", not "ms: 26,577.0")
    df["shown"] = df["ms"].clip(lower=1.0)
    # One decade below the smallest value, so even the smallest bar has a visible length.
    lo = 10.0 ** (np.floor(np.log10(df["shown"].min())) - 1)
    hi = 10.0 ** np.ceil(np.log10(df["shown"].max() * 1.01))
    df["base"] = lo
    ticks = [10.0 ** e for e in range(int(np.log10(lo)), int(np.log10(hi)) + 1)]
    colours = ["#C62828" if w == highlight else "#1565C0" for w in df["what"]]
    return alt.Chart(df).mark_bar(height=18).encode(
        x=alt.X("base:Q", title="Execution time (ms, log scale)",
                scale=alt.Scale(type="log", domain=[lo, hi]),
                axis=alt.Axis(values=ticks, labelExpr="(datum.value < 1 ? format(datum.value, '.1f') "
                                                      ": format(datum.value, ',.0f')) + ' ms'")),
        x2="shown:Q",
        y=alt.Y("what:N", title=None, sort=None),
        color=alt.Color("what:N", scale=alt.Scale(domain=list(df["what"]), range=colours), legend=None),
        tooltip=[alt.Tooltip("what:N", title="runtime"), alt.Tooltip("time:N", title="time")],
    ).properties(title=title, width=480, height=alt.Step(26))


def problem_badges_html(types: Sequence[str]) -> str:
    """Coloured badges for problem classes (colours of :data:`CLASS_COLORS`), or "no critical problem type"."""
    badges = []
    for problem in types:
        label = CLASS_LABELS.get(problem, problem)
        colour = CLASS_COLORS.get(label, "#555")
        text = "#222" if colour in ("#F9A825", "#FDD835") else "white"
        badges.append(f"<span style='background:{colour};color:{text};border-radius:4px;padding:2px 6px'>"
                      f"{html.escape(label)}</span>")
    return " ".join(badges) or "<span style='color:#2E7D32'>no critical problem type</span>"


def pr_curve_chart(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   title: str = "Precision-recall curves") -> alt.Chart:
    """Precision against recall, one line per detector.

    Parameters
    ----------
    curves : mapping
        ``name -> (precision, recall)`` arrays, e.g. from :func:`sklearn.metrics.precision_recall_curve`.
    """
    frames = []
    for name, (precision, recall) in curves.items():
        p, r = np.asarray(precision, float), np.asarray(recall, float)
        if len(p) > 400:  # keep the spec small; the curve's shape survives
            idx = np.unique(np.linspace(0, len(p) - 1, 400).round().astype(int))
            p, r = p[idx], r[idx]
        frames.append(pd.DataFrame({"detector": name, "precision": p, "recall": r}))
    if not frames:
        return empty_chart(title, "No labelled data")
    df = pd.concat(frames, ignore_index=True)
    # dashed and see-through: two versions with the same curve drew one line, the other hidden under it
    # (a browser tester's legend named a curve no one could see, 40th session)
    # step-before: a point's precision holds from the recall before it, as average precision (the PR-AUC beside
    # it) counts it; step-after drew the baseline flat at 0.3 up to recall 1 under a PR-AUC of 0.05 (42nd session)
    return alt.Chart(df).mark_line(interpolate="step-before", opacity=0.8, strokeWidth=2).encode(
        x=alt.X("recall:Q", title="Recall", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("precision:Q", title="Precision", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("detector:N", title="Detector"),
        strokeDash=alt.StrokeDash("detector:N", title="Detector"),
        tooltip=["detector:N", alt.Tooltip("recall:Q", format=".3f"), alt.Tooltip("precision:Q", format=".3f")],
    ).properties(title=title, width=420, height=320)


def coverage_chart(coverage: pd.DataFrame, *, target: float = 0.9,
                   title: str = "Quantile coverage (share of runtimes <= q90 prediction)") -> alt.LayerChart:
    """Bars of the q90 coverage per model version with the target as a rule.

    ``coverage`` has the columns ``version`` and ``coverage`` (0..1).
    """
    _require(coverage, ["version", "coverage"], "coverage_chart")
    bars = alt.Chart(coverage).mark_bar(color="#1565C0").encode(
        x=alt.X("version:N", title="Model version"),
        y=alt.Y("coverage:Q", title="Coverage (%)", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        tooltip=["version:N", alt.Tooltip("coverage:Q", format=".1%")],
    )
    rule = alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(color="#C62828", strokeDash=[4, 4]).encode(
        y="target:Q")
    return alt.layer(bars, rule).properties(title=title, width=320, height=220)


def to_svg(chart: alt.TopLevelMixin) -> str:
    """Render a chart to an SVG string offline (vl-convert's bundled engine)."""
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_dict())


#: The Vega-Lite MIME type JupyterLab 4 renders (its vega5 extension knows v3 to v5; Altair 6 writes v6).
LIVE_MIME: Final = "application/vnd.vegalite.v5+json"


def _file_name(spec: dict[str, Any]) -> str:
    """A chart's exported file name from its title ("anomalies-per-10-minutes"; every file was "visualization")."""
    title = spec.get("title") or next((part.get("title") for part in (*spec.get("vconcat", ()), *spec.get("layer", ()))
                                       if isinstance(part, dict) and part.get("title")), None)
    text = title.get("text", "") if isinstance(title, dict) else title or ""
    text = " ".join(text) if isinstance(text, list) else str(text)
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())[:8]) or "chart"


def notebook_renderer(spec: dict[str, Any], **embed_options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An Altair renderer: the chart as JupyterLab draws it (in the theme shown: the static SVG was a white block
    in the dark theme; browser tester, 40th session) and as static SVG for everything else (papermill, HTML
    reports, nbconvert and viewers without Vega), which prefers SVG to the Vega-Lite MIME type.

    JupyterLab draws it in SVG (the data marks stay inspectable) with its export menu only: the
    others open the spec or the online Vega editor."""
    import vl_convert

    bundle = {LIVE_MIME: spec, "image/svg+xml": vl_convert.vegalite_to_svg(spec), "text/plain": "<Altair chart>"}
    options = {"renderer": "svg", "actions": {"export": True, "source": False, "compiled": False, "editor": False},
               "downloadFileName": _file_name(spec), **embed_options}
    return bundle, {LIVE_MIME: {"embed_options": options}}


# -- metric cards ------------------------------------------------------------------------------
def format_metric(kind: str, value: Any) -> str:
    """Human text for a metric value: ``kind`` is ``pct``, ``mb``, ``ms``, ``count`` or ``text``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.1f} %"
    if kind == "mb":
        return human_mb(value)
    if kind == "ms":
        return human_ms(value)
    if kind == "count":
        return f"{int(value):,}"
    return str(value)


#: The cards of pulse-study 5.4: (key, label, kind, higher_is_better).
CARDS: Final = (
    ("score", "Score (% normal)", "pct", True),
    ("spilled_mb", "Spillage", "mb", False),
    ("queue_time_ms", "Queue time", "ms", False),
    ("queue_ratio", "Queue ratio", "pct", False),
    ("anomalies", "Anomaly queries", "count", False),
)


def _change(kind: str, delta: float) -> str:
    """A metric's change with its sign; a share's change is a difference of shares: points, not a
    relative "+3.7 %"."""
    return points(delta) if kind == "pct" else f"{'+' if delta > 0 else ''}{format_metric(kind, delta)}"


def _no_change(kind: str, delta: float) -> bool:
    """Whether ``delta`` reads as no change at the precision it is shown with (a red "▼ -0.0 pts" for a
    change that rounds to zero; browser tester, 40th session)."""
    return delta == 0 or _change(kind, abs(delta)).lstrip("+-") == _change(kind, 0.0).lstrip("+-")


def metric_cards_html(metrics: Mapping[str, Any], *, cards: Sequence[tuple[str, str, str, bool]] = CARDS,
                      caption: str = "") -> str:
    """Metric cards (value, trend arrow, delta vs the previous period) as a self-contained HTML block.

    ``metrics`` is :func:`workbench.analysis.read.metrics` output: ``<key>`` and ``<key>_delta``.
    Green means better, red worse; a missing previous period shows "no previous data".
    """
    parts = []
    for key, label, kind, higher_better in cards:
        value = metrics.get(key)
        delta = metrics.get(f"{key}_delta")
        if value is None:  # "no previous data" under an empty period whose previous one held it all (40th)
            arrow, colour, delta_text = "", "#666", "no data in this period"
        elif delta is None:
            arrow, colour, delta_text = "", "#666", "no previous data"
        else:
            flat = _no_change(kind, delta)
            arrow = "■" if flat else "▲" if delta > 0 else "▼"
            good = (delta > 0) == higher_better
            colour = "#666" if flat else "#2E7D32" if good else "#C62828"
            delta_text = "no change vs previous" if flat else f"{_change(kind, delta)} vs previous"
        parts.append(
            "<div style='border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:140px'>"
            f"<div style='color:#555;font-size:12px'>{html.escape(label)}</div>"
            f"<div style='font-size:20px;font-weight:600'>{html.escape(format_metric(kind, value))}</div>"
            f"<div style='color:{colour};font-size:12px'>{arrow} {html.escape(delta_text)}</div></div>")
    head = f"<div style='font-weight:600;margin:4px 0'>{html.escape(caption)}</div>" if caption else ""
    return f"{head}<div style='display:flex;flex-wrap:wrap;gap:8px'>{''.join(parts)}</div>"


#: The rows of :func:`metrics_table`: the cards' metrics after the period's size.
_TABLE_METRICS: Final = (("instances", "Instances", "count", None), ("total_queries", "Queries", "count", None),
                         ("cluster_size", "Cluster size (nodes)", "count", None), *CARDS)


def metrics_table(periods: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Metrics of several periods (``{"24h": metrics, "1week": metrics}``, :func:`workbench.analysis.read.metrics`
    output each) as a readable table: one row per period, one column per metric, each cell the value and
    its change against the previous period ("93.0 % (-0.1 pts)", "390,311 (-109,257)", "3.7 min (+12 s)");
    "n/a" where the period has no data. The cards show the same figures; the raw frame read
    ``0.936169 -0.006305 9463831.0`` under them."""
    rows = {}
    for period, metrics in periods.items():
        row = {}
        for key, label, kind, _ in _TABLE_METRICS:
            value, delta = metrics.get(key), metrics.get(f"{key}_delta")
            text = format_metric(kind, value)
            if text != "n/a" and delta is not None and not (isinstance(delta, float) and np.isnan(delta)):
                text = f"{text} ({'no change' if _no_change(kind, delta) else _change(kind, delta)})"
            row[label] = text
        rows[period] = row
    return pd.DataFrame.from_dict(rows, orient="index")
