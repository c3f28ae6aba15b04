"""Tables the anomaly notebooks and the report summary show, from lakehouse anomaly rows.

Every function takes the frame :func:`workbench.analysis.read.anomalies` returns (or an empty
frame with its columns) and returns a small, sorted, deterministic pandas frame.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from workbench.analysis._selection import asked, first_of
from workbench.config import Settings

__all__ = [
    "ANOMALY_COLUMNS",
    "NO_EVIDENCE",
    "analysed_span",
    "anomalies_or_empty",
    "by_reason_and_version",
    "class_shares_or_empty",
    "classification_table",
    "describe_anomalies",
    "describe_windows",
    "metrics_for_versions",
    "no_anomalies",
    "pick_query",
    "query_features",
    "query_heading",
    "scored_queries",
    "stream_alerts",
    "top_offenders",
    "window_anomalies_or_empty",
    "window_anomalies_table",
    "window_stats_or_empty",
    "windows_scope",
    "worst_queries",
]

#: The columns of an anomaly frame (what an empty frame gets when there is no lakehouse yet).
ANOMALY_COLUMNS: tuple[str, ...] = (
    "instance_id", "query_id", "model_version", "arrival_timestamp", "reason", "true_ms", "pred_ms", "pred_q_ms",
    "under_ratio", "excess_ms", "score", "features")


def no_anomalies() -> pd.DataFrame:
    """An empty anomaly frame with :data:`ANOMALY_COLUMNS` (what a home holds before its first anomaly)."""
    return pd.DataFrame({c: pd.Series(dtype="datetime64[ns, UTC]" if c == "arrival_timestamp" else object)
                         for c in ANOMALY_COLUMNS})


def anomalies_or_empty(settings: Settings, *, start: datetime | None = None, end: datetime | None = None,
                       instances: Sequence[int] | None = None, reason: str | None = None,
                       versions: Sequence[str] = ()) -> pd.DataFrame:
    """Anomalies in the range, or an empty frame with :data:`ANOMALY_COLUMNS` before the first one.

    Only a lakehouse that does not exist yet counts as "no anomalies"; any other error is raised.
    ``versions`` keeps only those model versions; the wall-clock ``inserted_at`` is dropped.
    """
    from workbench.analysis import read
    from workbench.store.exceptions import LakehouseNotFoundError

    try:
        frame = read.anomalies(settings, start=start, end=end, instances=instances, reason=reason or None)
    except LakehouseNotFoundError:
        frame = no_anomalies()
    if versions:
        frame = frame[frame["model_version"].isin(list(versions))]
    return frame.drop(columns=["inserted_at"], errors="ignore").reset_index(drop=True)


#: The columns of a collective-anomaly frame (what an empty frame gets before the first one).
WINDOW_ANOMALY_COLUMNS: tuple[str, ...] = (
    "instance_id", "window_start", "signal", "expected", "observed", "score", "reason")


def window_anomalies_or_empty(settings: Settings, *, start: datetime | None = None, end: datetime | None = None,
                              instances: Sequence[int] | None = None) -> pd.DataFrame:
    """Collective anomalies (flagged 10-minute windows) in the range, strongest first.

    Like :func:`anomalies_or_empty`: only a lakehouse that does not exist yet counts as "none".
    """
    from workbench.analysis import read
    from workbench.store.exceptions import LakehouseNotFoundError

    try:
        frame = read.window_anomalies(settings, start=start, end=end, instances=instances)
    except LakehouseNotFoundError:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in WINDOW_ANOMALY_COLUMNS})
    frame = frame.drop(columns=["inserted_at"], errors="ignore")
    return frame.sort_values(["score", "window_start", "instance_id"], ascending=[False, True, True],
                             ignore_index=True)


def windows_scope(*, reason: str = "", versions: Sequence[str] = ()) -> str | None:
    """What the query filters mean for the flagged windows: a window is flagged by a signal of the whole
    instance, not by a query reason or a model version, so those filters leave it as it is (a browser
    tester filtered by reason and read the same windows as without). None without such a filter."""
    narrowed = [f"reason {reason!r}"] if reason else []
    if versions:
        narrowed.append(f"versions {', '.join(versions)}")
    if not narrowed:
        return None
    verb = "narrows" if len(narrowed) == 1 else "narrow"
    return (f"every flagged window of the time range and instances is shown: {' and '.join(narrowed)} "
            f"{verb} the queries only (a window is flagged by a signal of its instance: see its signal column)")


def window_anomalies_table(windows: pd.DataFrame) -> pd.DataFrame:
    """Flagged windows as a notebook shows them: observed and expected in each signal's own unit
    ("18 %", "3.1 min", "1,326 queries"), the score to two decimals, the reason last.

    ``windows`` is :func:`window_anomalies_or_empty` output; its raw figures (mixed units: shares,
    milliseconds, counts, logs) stay there for anything that computes with them.
    """
    from workbench.analysis.collective import format_signal_value

    out = windows.reindex(columns=list(WINDOW_ANOMALY_COLUMNS)).copy()
    for column in ("observed", "expected"):
        out[column] = [format_signal_value(signal, value) for signal, value in
                       zip(windows["signal"], pd.to_numeric(windows[column], errors="coerce"), strict=True)]
    out["score"] = pd.to_numeric(out["score"], errors="coerce").round(2)
    return out[["instance_id", "window_start", "signal", "observed", "expected", "score", "reason"]]


def by_reason_and_version(anomalies: pd.DataFrame) -> pd.DataFrame:
    """Anomaly counts per ``reason`` and ``model_version``, most first."""
    out = anomalies.groupby(["reason", "model_version"]).size().rename("anomalies").reset_index()
    return out.sort_values(["anomalies", "reason", "model_version"], ascending=[False, True, True],
                           ignore_index=True)


def versions_side_by_side(anomalies: pd.DataFrame, versions: Sequence[str] = ()) -> pd.DataFrame:
    """Per UTC day, each model version's anomalies, and the queries every version that flagged any that day flags.

    One column per version (e.g. the stream's version and one added by ``workbench rescore``; each of
    ``versions`` too, 0 where it flagged nothing), so versions that scored the same range compare
    directly. ``flagged by all`` counts the ``(instance_id, query_id)`` that every version with an anomaly
    on that day flags, and is empty (``<NA>``) on a day only one version flagged: the stream's versions
    each score their own days, and "flagged by all" compared versions that never scored the same day
    (0 on every day, or one version's count when a range held one; browser tester, 40th session).
    """
    if anomalies.empty:
        return pd.DataFrame(columns=["day"])
    frame = anomalies.assign(day=pd.to_datetime(anomalies["arrival_timestamp"], utc=True).dt.strftime("%Y-%m-%d"))
    table = pd.crosstab(frame["day"], frame["model_version"])
    table = table.reindex(columns=sorted({*table.columns, *versions}), fill_value=0)
    flagging = frame.groupby("day")["model_version"].nunique()
    per_query = frame.groupby(["day", "instance_id", "query_id"])["model_version"].nunique()
    shared = (per_query == per_query.index.get_level_values("day").map(flagging)).groupby(level="day").sum()
    table["flagged by all"] = shared.reindex(table.index, fill_value=0).where(flagging.reindex(table.index) > 1)
    table["flagged by all"] = table["flagged by all"].astype("Int64")
    return table.reset_index().rename_axis(columns=None)


def _commonest(reasons: pd.Series) -> str | None:
    """The reason most of an instance's anomalies have (ties: the first in name order); None without any."""
    counts = reasons.dropna().value_counts()
    return None if counts.empty else str(counts.sort_index(kind="stable").idxmax())


def top_offenders(anomalies: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """Instances with the most anomalies: count, the commonest reason, median and worst actual/predicted ratio,
    excess hours.

    Ratios are rounded as :func:`worst_queries` rounds them (one query read 0.1x here and 0.0x there), and an
    excess that rounds to zero reads 0.00, never -0.00."""
    # the commonest reason beside the ratios: an instance alerted on its waits read "0.0x, 0.0x, 0.00 h", which
    # looked like no anomaly at all (browser tester, 42nd session)
    out = (anomalies.groupby("instance_id")
           .agg(anomalies=("query_id", "size"), main_reason=("reason", _commonest),
                median_ratio=("under_ratio", "median"),
                worst_ratio=("under_ratio", "max"), excess_hours=("excess_ms", lambda s: s.sum() / 3.6e6))
           .sort_values(["anomalies", "worst_ratio"], ascending=False).head(n))
    out = out.astype({"median_ratio": float, "worst_ratio": float, "excess_hours": float})
    out = out.round({"median_ratio": 1, "worst_ratio": 1, "excess_hours": 2})
    return out.assign(excess_hours=out["excess_hours"] + 0.0)  # + 0.0: -0.00 h reads 0.00 h


def worst_queries(anomalies: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` anomalies with the highest actual / predicted runtime ratio, among those that ran longer than
    predicted (an alert on a wait or a scan of a query 20x faster than predicted was listed among the worst
    runtimes; browser tester, 40th session)."""
    cols = ["arrival_timestamp", "instance_id", "query_id", "reason", "true_ms", "pred_ms", "under_ratio",
            "model_version"]
    longer = anomalies[pd.to_numeric(anomalies["under_ratio"], errors="coerce") > 1.0]
    out = longer.sort_values(["under_ratio", "query_id"], ascending=[False, True]).head(n)[cols]
    return out.astype({"true_ms": float, "pred_ms": float, "under_ratio": float}).round(
        {"true_ms": 0, "pred_ms": 1, "under_ratio": 1}).reset_index(drop=True)


def pick_query(anomalies: pd.DataFrame, query_id: int = 0) -> pd.Series | None:
    """The anomaly row of ``query_id``, or the highest-scoring one for 0; ``None`` when absent."""
    if anomalies.empty:
        return None
    if query_id:
        rows = anomalies[anomalies["query_id"] == query_id]
    else:
        rows = anomalies.sort_values(["score", "query_id"], ascending=[False, True]).head(1)
    return None if rows.empty else rows.iloc[0]


def query_heading(row: pd.Series) -> str:
    """The drill-down's first line (Markdown): the query, its instance and arrival, why it alerted and by how
    much, and the version that scored it. A browser tester (40th session) found the score nowhere in the
    notebook, though the drill-down picks the highest-scoring anomaly."""
    when = pd.Timestamp(row["arrival_timestamp"])
    text = (f"**Query {row['query_id']}** on instance {row['instance_id']}, arrived {when:%Y-%m-%d %H:%M:%S} UTC, "
            f"reason `{row.get('reason')}`")
    score = row.get("score")
    if score is not None and pd.notna(score):
        bar = _alert_bar(row)
        text += f", score {float(score):.2f}" + (f" (it alerts from {bar:g})" if bar is not None else "")
    return text + f", model `{row.get('model_version')}`"


def _stored_features(row: pd.Series) -> dict[str, Any]:
    """An anomaly's ``features`` (JSON text as the lakehouse stores it, or a dict) as a dict; {} when none."""
    raw = row.get("features")
    return json.loads(raw) if isinstance(raw, str) and raw else raw if isinstance(raw, dict) else {}


def _alert_bar(row: pd.Series) -> float | None:
    """The score from which the row's version alerts, as its ``features`` note it (``threshold``)."""
    bar = _stored_features(row).get("threshold")
    return float(bar) if isinstance(bar, int | float) and math.isfinite(bar) else None


def classification_table(stats: pd.DataFrame, anomalies: int) -> pd.DataFrame:
    """Queries per class (and anomalies) over ``window_stats`` rows, with their share in %; no rows when there
    is neither a window nor an anomaly (a table of zeros with 0.00 % shares read as a measurement)."""
    from workbench.ui.charts import CLASS_LABELS

    if not len(stats) and not anomalies:
        return pd.DataFrame({"queries": pd.Series(dtype="int64"), "share %": pd.Series(dtype="float64")})

    labels = {"total": "total_queries", **{CLASS_LABELS[c]: f"{c}_queries" for c in
                                           ("normal", "cpu_bound", "io_bound", "network_bound", "queue_wlm_bound")}}
    counts = {name: int(stats[col].sum()) if len(stats) else 0 for name, col in labels.items()}
    counts["Anomalies"] = int(anomalies)
    total = counts["total"] or 1
    return pd.DataFrame({"queries": counts, "share %": {k: round(100 * v / total, 2) for k, v in counts.items()}})


#: What the drill-down's evidence table says for an anomaly stored without any (``features`` is optional).
NO_EVIDENCE = "none stored with this anomaly (its message carried no features)"


def query_features(row: pd.Series) -> pd.DataFrame:
    """The feature values stored with one anomaly (its ``features`` JSON) as a one-column frame.

    An anomaly stored without features gets one row saying so (:data:`NO_EVIDENCE`): the empty
    frame showed as a lone "feature" header under the drill-down chart.
    """
    values = _stored_features(row) or {"evidence": NO_EVIDENCE}
    return pd.Series(values, name="feature", dtype=object).to_frame()


def analysed_span(settings: Settings, start: datetime | None, end: datetime | None,
                  instances: Sequence[int] | None = None) -> tuple[datetime | None, datetime | None]:
    """``(start, end)`` with open ends closed by the window stats (the data actually streamed).

    A home whose analytics app has not created its store yet (a labelled log generated, nothing
    replayed) streamed nothing: the ends stay as given instead of a ``StoreNotFoundError``.
    """
    span = window_stats_or_empty(settings, start=start, end=end, instances=instances)
    if span.empty:
        return start, end
    return start or span["window_start"].min(), end or span["window_end"].max()


def scored_queries(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                   instances: Sequence[int] | None = None) -> pd.DataFrame:
    """``(instance_id, query_id, in_sample)`` of the queries in the span that a model version scored
    (the shards); ``in_sample``: the version that scored it was trained on the query's day.

    Events of a day no model covers yet (the first day, or scoring behind the replay) are stored
    unscored: a comparison with labels must leave them out, not count their anomalies as missed.
    The first day is scored later by the version trained on it, in-sample. No shards yet: none.
    """
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc

    from workbench.store.shards import list_days, read_shards

    empty = pd.DataFrame({"instance_id": pd.Series(dtype="int64"), "query_id": pd.Series(dtype="int64"),
                          "model_version": pd.Series(dtype=object), "in_sample": pd.Series(dtype=bool)})
    try:
        days = list_days(settings.shards_dir)
    except FileNotFoundError:
        return empty
    # a shard day is the UTC arrival day; a day before `start` can hold nothing of the span
    days = [d for d in days if (start is None or d >= _utc(start).date() - dt.timedelta(days=1))
            and (end is None or d <= _utc(end).date())]
    if not days:
        return empty
    table = read_shards(settings.shards_dir, days, ["instance_id", "query_id", "arrival_timestamp", "model_version"])
    keep = pc.is_valid(table.column("model_version"))
    if start is not None:
        keep = pc.and_(keep, pc.greater_equal(table.column("arrival_timestamp"), _utc(start)))
    if end is not None:
        keep = pc.and_(keep, pc.less(table.column("arrival_timestamp"), _utc(end)))
    if instances:
        keep = pc.and_(keep, pc.is_in(table.column("instance_id"), pa.array([int(i) for i in instances], pa.int64())))
    frame = table.filter(keep).to_pandas()
    day = frame["arrival_timestamp"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
    trained_on = _training_days(settings, frame["model_version"].unique())
    frame["in_sample"] = [d in trained_on.get(v, ()) for d, v in zip(day, frame["model_version"], strict=True)]
    return frame[["instance_id", "query_id", "model_version", "in_sample"]].reset_index(drop=True)


def stream_alerts(anomalies: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
    """The anomalies of the version that scored each query in the stream (``scored``: :func:`scored_queries`).

    The lakehouse also holds the alerts of versions a person added with ``workbench rescore``; counted
    with the stream's, they changed the report's precision (0.716 -> 0.660 after one rescore, with a
    version's alerts on its own training day among them).
    """
    if anomalies.empty or "model_version" not in scored:
        return anomalies
    keys = scored[["instance_id", "query_id", "model_version"]].astype({"instance_id": "int64", "query_id": "int64"})
    frame = anomalies.astype({"instance_id": "int64", "query_id": "int64"})
    return frame.merge(keys, on=["instance_id", "query_id", "model_version"], how="inner")


def _training_days(settings: Settings, versions: Iterable[str]) -> dict[str, frozenset[str]]:
    """Each version's training days (ISO dates); none for a version the registry no longer holds."""
    from workbench.ml.exceptions import MLError
    from workbench.ml.registry import ModelRegistry

    registry, days = ModelRegistry(settings.models_dir), {}
    for version in versions:
        try:
            days[version] = frozenset(registry.info(version).get("window_days", []))
        except (MLError, OSError, ValueError):  # removed, damaged, or written by hand: window unknown
            days[version] = frozenset()
    return days


def _utc(value: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")


def window_stats_or_empty(settings: Settings, *, start: datetime | None = None, end: datetime | None = None,
                          instances: Sequence[int] | None = None) -> pd.DataFrame:
    """``window_stats`` rows in the range, or none (with the store's columns) before the analytics app
    created its store: a fresh home is "no data yet", not an error.

    Only a store that does not exist yet counts as empty; any other error is raised.
    """
    from workbench.analysis import read
    from workbench.store.exceptions import StoreNotFoundError
    from workbench.store.window_stats import WINDOW_STATS_SCHEMA

    try:
        return read.window_stats(settings, start=start, end=end, instances=instances)
    except StoreNotFoundError:
        return WINDOW_STATS_SCHEMA.empty_table().to_pandas()


def class_shares_or_empty(settings: Settings, *, start: datetime | None = None, end: datetime | None = None,
                          instances: Sequence[int] | None = None) -> pd.DataFrame:
    """:func:`workbench.analysis.read.class_shares`, or none (with its columns) before the store exists."""
    from workbench.analysis import read
    from workbench.analysis.classify import CLASSES
    from workbench.store.exceptions import StoreNotFoundError

    try:
        return read.class_shares(settings, start=start, end=end, instances=instances)
    except StoreNotFoundError:
        columns = ["window_start", "total_queries", *(f"{c}_queries" for c in CLASSES),
                   *(f"{c}_share" for c in CLASSES)]
        return pd.DataFrame({c: pd.Series(dtype="datetime64[ns, UTC]" if c == "window_start" else "float64")
                             for c in columns})


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def _held(frame: pd.DataFrame, column: str) -> list[str]:
    """The distinct values of ``column``, as text, shortest first (v2 before v10)."""
    return sorted({str(v) for v in frame[column].dropna()}, key=lambda v: (len(v), v))


def describe_anomalies(settings: Settings, anomalies: pd.DataFrame, *, start: datetime | None = None,
                       end: datetime | None = None, instances: Sequence[int] | None = None,
                       reason: str | None = None, versions: Sequence[str] = ()) -> str:
    """One line on the anomalies a notebook selected, or on why there are none.

    An empty selection of a lakehouse that holds anomalies names the filters and what it holds
    (instances, reasons, model versions), so a misspelt reason or a version that never scored
    reads as such, not as "0 anomalies".
    """
    if len(anomalies):
        return (f"{_plural(len(anomalies), 'anomaly', 'anomalies')}, "
                f"{_plural(anomalies['instance_id'].nunique(), 'instance')}, "
                f"{_plural(anomalies['model_version'].nunique(), 'model version')}")
    every = anomalies_or_empty(settings)
    if every.empty:
        return "no anomalies yet: the lakehouse is empty (replay some data, or wait for the scoring app)"
    filters = asked(start, end, instances, reason=f"reason {reason!r}" if reason else "",
                    versions=f"versions {', '.join(versions)}" if versions else "")
    times = pd.to_datetime(every["arrival_timestamp"], utc=True)
    return (f"no anomalies match the filters ({filters}): the lakehouse holds {len(every):,} anomalies of instances "
            f"{first_of(_held(every, 'instance_id'))}, reasons {first_of(_held(every, 'reason'))}, "
            f"model versions {first_of(_held(every, 'model_version'))}, "
            f"{times.min():%Y-%m-%d %H:%M} to {times.max():%Y-%m-%d %H:%M} UTC")


def agreement_scope(anomalies: pd.DataFrame, *, reason: str = "", versions: Sequence[str] = (),
                    labelled: int | None = None) -> str | None:
    """What the label comparison counts when the alerts are narrowed beyond time and instances (a reason,
    model versions), or that nothing was alerted there; None when every alert of the span counts.

    Recall is over every labelled anomaly of the span, so with a filter it reads as misses what the
    filter left out. ``labelled``: the labelled anomalies of the span, when known (0: nothing to miss)."""
    narrowed = [f"reason {reason!r}"] if reason else []
    if versions:
        narrowed.append(f"versions {', '.join(versions)}")
    if len(anomalies) == 0:
        which = f" ({'; '.join(narrowed)})" if narrowed else ""
        if labelled == 0:  # e.g. an instance that is not in the log: nothing was missed either
            # "scored": the span's unscored labelled rows are said apart, and read as contradicting this line
            return (f"no alert and no labelled anomaly among the scored queries of this selection{which}: "
                    "nothing to compare")
        return f"no alert in this selection{which}: every labelled anomaly a model scored in the span counts as missed"
    if narrowed:
        return (f"only the alerts of {'; '.join(narrowed)} count: recall is theirs over every labelled "
                "anomaly of the span, not the detector's")
    return None


def describe_versions(settings: Settings, versions: Sequence[str]) -> str:
    """One line naming the ``versions`` that never scored an anomaly in the lakehouse ("" when all did,
    or when ``versions`` is empty): such a version silently counted 0 anomalies in notebook 04."""
    if not versions:
        return ""
    every = anomalies_or_empty(settings)
    held = _held(every, "model_version")
    never = [v for v in versions if v not in held]
    if not never:
        return ""
    return (f"versions {', '.join(never)} never scored an anomaly here, so they count 0: the lakehouse holds "
            f"anomalies of model versions {', '.join(held) or 'none yet'}")


def describe_windows(settings: Settings, stats: pd.DataFrame, *, start: datetime | None = None,
                     end: datetime | None = None, instances: Sequence[int] | None = None) -> str:
    """One line on the ``window_stats`` rows a notebook selected (``stats``), or on why there are none.

    An empty selection of a store that holds windows names the filters and what the store holds
    (e.g. instance ids that do not occur), instead of saying that nothing was replayed.
    """
    if len(stats):
        n = stats["instance_id"].nunique()
        return (f"{len(stats):,} windows, {n} instance{'' if n == 1 else 's'}, "
                f"{stats['window_start'].min():%Y-%m-%d %H:%M} to {stats['window_end'].max():%Y-%m-%d %H:%M} UTC")
    every = window_stats_or_empty(settings)
    if every.empty:
        return "window_stats is empty: replay some data first"
    held = sorted(int(i) for i in every["instance_id"].unique())
    return (f"no windows match the filters ({asked(start, end, instances)}): the store holds "
            f"{len(every):,} windows of instances {first_of(held)}, {every['window_start'].min():%Y-%m-%d %H:%M} to "
            f"{every['window_end'].max():%Y-%m-%d %H:%M} UTC")


def metrics_for_versions(settings: Settings, window: str, instances: Sequence[int] | None,
                         versions: Sequence[str], *, end: datetime | None = None) -> dict[str, Any]:
    """:func:`workbench.analysis.read.metrics`, with anomalies counted for ``versions`` only (all when empty).

    A period none of ``versions`` scored (the stream's shards, or anomalies of a rescore) has no anomaly count
    and no change (a version that never scored the last day read "0, -223 vs previous" in green; browser
    tester, 42nd session); key ``versions_note`` then says so."""
    from workbench.analysis import read

    m = read.metrics(settings, window, instances, end=end)
    m["versions_note"] = ""
    if versions and m.get("anomalies") is not None:
        p = m["period"]
        cur = anomalies_or_empty(settings, start=p.start, end=p.end, instances=instances, versions=versions)
        m["anomalies"] = len(cur)
        scored_now = _versions_scoring(settings, versions, cur, p.start, p.end, instances)
        if not scored_now:
            m["anomalies"] = m["anomalies_delta"] = None
            m["versions_note"] = f"{', '.join(versions)} scored no query of this period"
        elif m.get("anomalies_delta") is not None:  # None: the previous period has no data
            prev = anomalies_or_empty(settings, start=p.previous_start, end=p.start, instances=instances,
                                      versions=versions)
            if _versions_scoring(settings, versions, prev, p.previous_start, p.start, instances):
                m["anomalies_delta"] = len(cur) - len(prev)
            else:
                m["anomalies_delta"] = None
                m["versions_note"] = f"{', '.join(versions)} scored no query of the previous period"
    return m


def _versions_scoring(settings: Settings, versions: Sequence[str], anomalies: pd.DataFrame, start: datetime,
                      end: datetime, instances: Sequence[int] | None) -> set[str]:
    """Which of ``versions`` scored a query in ``[start, end)``: it flagged one, or the stream's shards name it."""
    found = set(anomalies["model_version"].dropna()) if "model_version" in anomalies else set()
    if set(versions) <= found:
        return found
    scored = scored_queries(settings, start, end, instances)
    return (found | set(scored["model_version"].dropna())) & set(versions)
