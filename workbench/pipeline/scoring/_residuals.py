"""The runtime-residual windows of each settled day: stored, judged, flagged (the elected trainer's maintenance).

Where closed windows meet the scores: the scoring app's shards hold every query with the model's
expectation (``pred_mean_ms``), so the trainer's maintenance thread (:class:`._maintenance.ShardMaintenance`)
turns each settled event day (before the watermark day, like compaction and training) into its
residual windows (:func:`workbench.analysis.residual_windows.residual_windows`), judges them against
the instance's earlier stored windows and writes the flagged ones into the lakehouse's
``window_anomalies`` (signals ``runtime_residual`` and ``beyond_tolerance_share``) *before* it
stores the day's windows in ``window_residuals``. So a stored day is a judged day, and a crash in
between only judges the day again (both writes are insert-if-absent: no duplicates).

The same pass flags the day's runs that complete a streak of elevated runs of their statement (a
plan that stays slow for the rest of the day: :mod:`workbench.analysis.persistence`) and writes them,
through the anomaly contract (:func:`workbench.pipeline.contracts.anomaly_rows`), into the
lakehouse's ``anomalies`` with the per-query alerts (key ``(instance_id, query_id, model_version)``,
insert-if-absent), also before the day is stored. Persistence needs a statement's earlier runs; here
they are the settled day's shards, so the scoring loop keeps no per-statement state and nothing has
to be rebuilt after a restart or a rebalance.

Deterministic at any replay speed and after any restart:

* Days are processed in order, and a day only once *every* executed row of it is scored: a day
  with rows stored before their version existed waits (with every later day) until
  :class:`._rescore.Rescorer` scored them. Each row's score is its event day's version's (the
  selection rule), so a day's windows depend only on the log.
* A window's reference is the instance's stored windows of earlier days plus the day's own earlier
  windows, which the ordering makes the same whenever the day is judged.
* After a restart the next day is the one after the newest stored window (held in the store, not
  in memory); a day with no window is simply computed again.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.pipeline._status import AppStatus
from workbench.store.exceptions import LakehouseBusyError

__all__ = ["GIVE_UP_AFTER", "GIVE_UP_AFTER_S", "ResidualWindowsStep"]

logger = logging.getLogger(__name__)

#: A day whose judging failed this many times, over at least this many seconds, is skipped and named in
#: the status (a row no step can take never succeeds).
GIVE_UP_AFTER = 5
GIVE_UP_AFTER_S = 60.0
#: Failures of the moment, not of the day: never counted towards giving up. A lakehouse locked for two minutes
#: (each attempt waits about 22 s for the lock) had left a day's residual windows unjudged for good. Other
#: errors, a file that cannot be read included, still give a day up after the minute: held for good, they
#: would hold every later day with it.
_TRANSIENT = (LakehouseBusyError,)
#: Seconds without a write to a judged day before it is judged again (the rows a reset sends for it all came).
GROWN_SETTLE_S = 10.0
#: Seconds a settled day waits for rows no rescoring of this instance is due for before it is judged without them.
UNSCORED_WAIT_S = 600.0

#: Shard columns :func:`~workbench.analysis.residual_windows.residual_windows` reads; a day's pass adds
#: those of the evidence source (:data:`~workbench.ml.features.REFERENCE_SOURCE_COLUMNS`).
_WINDOW_COLUMNS = ("instance_id", "arrival_timestamp", "execution_duration_ms", "was_cached", "was_aborted",
                   "pred_mean_ms", "model_version")


class ResidualWindowsStep:
    """Writes, judges and flags the residual windows of settled days (see the module docstring).

    Parameters
    ----------
    settings : Settings
        ``shards_dir`` (the scored rows), the window-stats store (``window_residuals``) and the lakehouse.
    status : AppStatus
        Counters ``residual_windows`` (windows stored), ``window_anomalies`` (flagged windows inserted)
        ``persistent_anomalies`` (flagged runs inserted) and ``group_anomalies`` (queries of slower
        groups inserted).
    retry_s : float
        Least seconds between two attempts while a day waits for its rows to be scored.
    waiting_days : callable, optional
        This instance's days with unscored rows (ISO dates; its :class:`._days.UnscoredDays`): such a
        day waits without reading its shards. Other instances' unscored rows are found in the shards.
    """

    def __init__(self, settings: Any, status: AppStatus, *, params: Any = None, retry_s: float = 2.0,
                 waiting_days: Callable[[], set[str]] | None = None, persistence: Any = None,
                 groups: Any = None) -> None:
        from workbench.analysis.collective import CollectiveParams
        from workbench.analysis.persistence import PersistenceParams
        from workbench.analysis.slower_groups import GroupParams

        self.settings = settings
        self.waiting_days = waiting_days
        self.status = status
        self.params = params or CollectiveParams()
        self.persistence = persistence or PersistenceParams()
        self.groups = groups or GroupParams()
        self.retry_s = retry_s
        self.done_through: dt.date | None = None  # the last day stored (None: read it from the store)
        self.pending: dt.date | None = None  # a settled day waiting for its rows to be scored
        self.last_try = 0.0  # monotonic start of the last pass
        self._features: dict[str, Any] = {}  # version -> FeatureBuilder (a day's rows share one or two)
        self._scales: dict[str, tuple[float, float]] = {}  # version -> its detector's runtime spread clip
        self._usual_hours: dict[str, pd.DataFrame | None] = {}  # version -> its groups' usual hours (or none)
        self._unreadable: set[str] = set()  # versions in the shards that cannot be read now (warned once)
        self._unscored_since: dict[dt.date, float] = {}  # day -> monotonic time it was first found waiting
        self._failures: dict[dt.date, tuple[int, float]] = {}  # day -> (failed attempts, monotonic first)
        #: judged days written to since (a seek forward's skipped rows, sent by a reset or seek back):
        #: day -> monotonic time of its last write; judged again once quiet for ``settle_s``
        self.grown: dict[dt.date, float] = {}
        self._grown_lock = threading.Lock()  # noted by the scoring loop, taken by the maintenance thread
        #: day -> wall time its last judging began to read it: a write reported later was not in the read
        self.judged_at: dict[dt.date, float] = {}
        self._stamps_seen: dict[dt.date, float] = {}  # day -> the newest write time already noted
        self.settle_s = GROWN_SETTLE_S
        for name in ("residual_windows", "window_anomalies", "persistent_anomalies", "group_anomalies"):
            status.counters.setdefault(name, 0)  # the maintenance thread never inserts keys

    def _gives_up(self, day: dt.date, exc: Exception) -> bool:
        """Count a failed attempt at ``day``; True once it failed :data:`GIVE_UP_AFTER` times over at
        least :data:`GIVE_UP_AFTER_S` seconds. Such a day is named in ``info["judging_failed"]`` and
        skipped: one day whose rows a step cannot take (a corrupt duration of 2**63 - 1 ms) held back the
        judging of every later day, retried every two seconds, with no sign in the status."""
        count, first = self._failures.get(day, (0, time.monotonic()))
        self._failures[day] = (count + 1, first)
        if count + 1 < GIVE_UP_AFTER or time.monotonic() - first < GIVE_UP_AFTER_S:
            return False
        reason = f"{type(exc).__name__}: {exc}"[:300]
        logger.error("residual windows of %s failed %d times; left unjudged, later days go on: %s",
                     day, count + 1, reason, exc_info=exc)
        failed = dict(self.status.info.get("judging_failed") or {})
        failed[day.isoformat()] = reason
        self.status.info["judging_failed"] = failed
        self._failures.pop(day, None)
        return True

    def note_stored(self, days: set[dt.date]) -> None:
        """Rows of ``days`` were written: a day judged already is judged again once its writes stop.

        A seek forward skipped part of a day, the stream settled it, and its windows were judged and
        stored without those rows; a reset or a seek back then sent them, and nothing judged the day
        again (a tester's run stored 760 of 1,269 residual windows, for good). Rows sent again that were
        there (the same pass again) cost one more reading of the day and change nothing: every write is
        insert-if-absent.
        """
        now = time.monotonic()
        with self._grown_lock:
            for day in days:
                # before the first pass (a restart) every day counts: the pass keeps those it judged already
                if self.done_through is None or day <= self.done_through:
                    self.grown[day] = now

    def note_written(self, written: Mapping[dt.date, float]) -> None:
        """Every scoring instance's writes (:attr:`~workbench.store.shards.ShardClock.written`: day -> wall
        time after its last write): a judged day written after its judging began is judged again, as
        :meth:`note_stored` does for this instance's own sink.

        With several scoring instances, rows another instance stored for a judged day (a reset sent what a
        seek had skipped) did not make the trainer judge the day again. A write reported before the
        judging began was in its read, so the normal end of a day costs no second judging. Before the
        first pass, or for a day judged before this process started, every reported write counts.
        """
        now = time.monotonic()
        with self._grown_lock:
            if self.done_through is None:
                return  # the first pass reads where the store is; the next call notes against it
            for day, at in written.items():
                if day > self.done_through or at <= self._stamps_seen.get(day, 0.0):
                    continue
                self._stamps_seen[day] = at
                if at > self.judged_at.get(day, 0.0):
                    self.grown[day] = now

    def grown_days(self) -> list[str]:
        """The judged days written to since, to be judged again (ISO dates, sorted)."""
        with self._grown_lock:
            return sorted(day.isoformat() for day in self.grown)

    def grown_due(self) -> bool:
        """Whether a judged day that was written to since is quiet long enough to be judged again (at most
        every ``retry_s``: a day that waits for its rows to be scored was read again at every tick, five
        times a second, with a log line each)."""
        now = time.monotonic()
        if now - self.last_try < self.retry_s:
            return False
        with self._grown_lock:
            return any(now - at >= self.settle_s for at in self.grown.values())

    def due(self) -> bool:
        """Whether a waiting day should be tried again now (rate-limited)."""
        return self.pending is not None and time.monotonic() - self.last_try >= self.retry_s

    def run(self, watermark: dt.date, *, ended_us: int | None = None) -> int:
        """Process every settled day (before ``watermark``) not stored yet, in order; returns the days stored.

        With ``ended_us`` (every partition delivered the replay's end-of-log marker after its events,
        the last at ``ended_us``), the log's last day is processed too, though no later event settles
        it. A log may end in the middle of a day, so that day is noted as provisional
        (:func:`~workbench.store.shards.set_provisional_day`): when more of it arrives (a later day
        settles it, or a later log ends further on) it is judged again, whole. Every write is
        insert-if-absent and each window and run is judged on what comes before it, so judging it
        again adds what the rest of the day brings and repeats nothing.
        """
        from workbench.store.shards import list_days, provisional_day, set_provisional_day
        from workbench.store.window_stats import WindowStatsStore

        self.last_try = time.monotonic()
        stored = 0
        from workbench.pipeline.scoring._training import day_of

        bound = watermark if ended_us is None else max(watermark, day_of(ended_us) + dt.timedelta(days=1))
        provisional = provisional_day(self.settings.shards_dir)
        again = None
        if provisional is not None:
            day, end = provisional
            if day < watermark or (ended_us is not None and ended_us > end):
                again = day  # settled since, or a later log reached further into it
        with WindowStatsStore.from_settings(self.settings) as store:
            if self.done_through is None:
                newest = store.newest_residual_window()  # a day is stored in one transaction: whole or not at all
                self.done_through = None if newest is None else newest.date()
            days = [d for d in list_days(self.settings.shards_dir)
                    if d < bound and (self.done_through is None or d > self.done_through)]
            if again is not None and again not in days:
                days = sorted([again, *days])
            now = time.monotonic()
            with self._grown_lock:
                for day in [d for d in self.grown if self.done_through is None or d > self.done_through]:
                    del self.grown[day]  # not judged yet: judged as any other day
                grown = [d for d, at in self.grown.items() if now - at >= self.settle_s and d not in days]
            if grown:
                logger.info("judging again %s: rows came for them after they were judged",
                            ", ".join(d.isoformat() for d in sorted(grown)))
                days = sorted([*grown, *days])
            self.pending = None
            for day in days:
                self.pending = day  # until it is stored (an error leaves it to retry)
                skipped = False
                began = time.time()
                try:
                    judged = self._day(store, day, again=day == again or day in grown)
                except _TRANSIENT:
                    raise  # another writer holds the lakehouse: tried again for as long as it lasts, never given up
                except Exception as exc:
                    if not self._gives_up(day, exc):
                        raise
                    judged = skipped = True  # left unjudged, named in the status: later days go on
                else:
                    self._failures.pop(day, None)
                if not judged:
                    break
                with self._grown_lock:  # written to again meanwhile: stays for the next pass
                    if day in self.grown and now - self.grown[day] >= self.settle_s:
                        del self.grown[day]
                    self.judged_at[day] = began
                if day >= watermark:  # judged only because the log ended in it
                    set_provisional_day(self.settings.shards_dir, day, ended_us)
                elif provisional is not None and day == provisional[0]:
                    set_provisional_day(self.settings.shards_dir, None)
                self.done_through = max(day, self.done_through or day)
                self.pending = None
                stored += not skipped
        return stored

    def _day(self, store: Any, day: dt.date, *, again: bool = False) -> bool:
        """Judge and store one day; False when some of its executed rows are not scored yet. ``again``: the day
        was judged before on part of its rows (a log that ended in it, rows that came after it was judged),
        so its deferred flags are replaced as a whole."""
        from workbench.analysis.deferred import DEFERRED_COLUMNS, DEFERRED_REASONS
        from workbench.analysis.residual_windows import residual_windows
        from workbench.ml.features import REFERENCE_SOURCE_COLUMNS
        from workbench.store.lakehouse import AnomalyLakehouse
        from workbench.store.shards import read_shards

        if self.waiting_days is not None and day.isoformat() in self.waiting_days():
            logger.debug("residual windows of %s wait for this instance's rescoring", day)
            return False
        # Only the columns the windows and the evidence source need: a waiting day is read again
        # every few seconds, and a whole day with every column cost the scoring process ~0.5 GB.
        columns = list(dict.fromkeys(_WINDOW_COLUMNS + REFERENCE_SOURCE_COLUMNS + DEFERRED_COLUMNS))
        rows = read_shards(self.settings.shards_dir, [day], columns=columns)
        unscored = int(residual_windows(rows)["unscored_queries"].sum())
        if unscored:
            now = time.monotonic()
            since = self._unscored_since.setdefault(day, now)
            if now - since < UNSCORED_WAIT_S:
                log = logger.info if since == now else logger.debug  # once, not every 2 s for ever
                log("residual windows of %s wait for %d unscored rows", day, unscored)
                return False
            # Rows no rescoring takes (their version deleted while it scored them): waiting held the judging of
            # this day and of every later one for good. Their windows stay unjudged (not final); the rest go on.
            logger.warning("residual windows of %s: %d rows stayed unscored for %.0f s with no rescoring of this "
                           "instance due; the day is judged without them (their windows are not)", day, unscored,
                           now - since)
            left = dict(self.status.info.get("judged_with_unscored") or {})
            left[day.isoformat()] = unscored
            self.status.info["judged_with_unscored"] = left
        self._unscored_since.pop(day, None)
        known, usual_wait, homes, unseen = self._expectations(rows)
        windows = residual_windows(rows, known=known).drop(columns="unscored_queries")
        flagged = self.judge_day(store, day, windows)
        persistent, group = self.deferred_day(day, rows, known, usual_wait, homes, unseen)
        if again or flagged.num_rows or persistent.num_rows or group.num_rows:
            with AnomalyLakehouse.from_settings(self.settings) as lake:
                if flagged.num_rows:
                    self.status.add("window_anomalies", lake.write_window_anomalies(flagged))
                # the day's deferred flags as a whole (one transaction each): a day judged on part of an hour (a
                # log that ended mid-day) kept a flag its whole hour does not raise once the rest came (40th)
                start = dt.datetime.combine(day, dt.time(), dt.UTC)
                versions = pc.unique(rows.column("model_version").drop_null()).to_pylist() if again else []
                for counter, found, reasons in (("persistent_anomalies", persistent, DEFERRED_REASONS[:1]),
                                                ("group_anomalies", group, DEFERRED_REASONS[1:])):
                    self.status.add(counter, lake.replace_judged(found, start, start + dt.timedelta(days=1),
                                                                 versions, reasons))
        self.status.add("residual_windows", store.insert_residuals(windows))
        logger.info("residual windows of %s: %d stored, %d flagged; %d runs of persistently slower statements, "
                    "%d queries of slower groups", day, len(windows), flagged.num_rows, persistent.num_rows,
                    group.num_rows)
        return True

    def deferred_day(self, day: dt.date, rows: pa.Table, known: np.ndarray, usual_wait: np.ndarray,
                     homes: tuple[np.ndarray, np.ndarray] | None = None, unseen: np.ndarray | None = None
                     ) -> tuple[pa.Table, pa.Table]:
        """The lakehouse ``anomalies`` rows of ``day``'s runs that complete a streak of slower runs, and of
        its queries in a slower group, of another instance's workload or beyond a never-seen instance's record
        (the rest: a run has one alert).

        :func:`~workbench.analysis.deferred.deferred_runs` over the whole scored day (``known``,
        ``usual_wait``, ``homes`` and ``unseen``: :meth:`_expectations`), each row's spread clipped as its
        version's detector clips it; the flagged queries' shard rows (read again, only when there are any) become alerts
        through the anomaly contract, with their evidence.
        """
        from workbench.analysis.deferred import deferred_runs

        found, slower = deferred_runs(rows, known, usual_wait, persistence=self.persistence, groups=self.groups,
                                      scales=self._scales, usual_hours=self.usual_hours(), homes=homes,
                                      unseen=unseen)
        return (self._alerts(day, found, evidence_columns(found, self.persistence)),
                self._alerts(day, slower, group_evidence_columns(slower, self.groups)))

    def usual_hours(self) -> pd.DataFrame | None:
        """The groups that run slower or wait longer at an hour of the day as a rule, of every version
        :meth:`_expectations` read last (:func:`~workbench.ml.scorer.load_usual_hours`; None when none
        keeps them)."""
        kept = [hours for hours in self._usual_hours.values() if hours is not None]
        return pd.concat(kept, ignore_index=True) if kept else None

    def _alerts(self, day: dt.date, found: pd.DataFrame, evidence: dict[str, pa.Array]) -> pa.Table:
        """The ``anomalies`` rows of ``found`` (``instance_id``, ``query_id``) with their ``evidence``."""
        from workbench.pipeline.contracts import ANOMALY_FIELDS, FEATURE_COLUMNS, anomaly_rows
        from workbench.store.shards import SHARD_SCHEMA, read_shards

        if found.empty:
            return anomaly_rows(pa.table({"is_anomaly": pa.array([], pa.bool_())}))
        # Only the columns the contract copies (not every shard column: a whole day of them costs ~0.5 GB);
        # once per settled day, after every row is scored.
        wanted = [c for c in dict.fromkeys((*ANOMALY_FIELDS, *FEATURE_COLUMNS))
                  if c in SHARD_SCHEMA.names and c not in evidence]
        shard_rows = read_shards(self.settings.shards_dir, [day], columns=wanted)
        keys = pa.table({"instance_id": pa.array(found["instance_id"], pa.int64()),
                         "query_id": pa.array(found["query_id"], pa.int64()), **evidence})
        flagged = shard_rows.join(keys, ["instance_id", "query_id"], join_type="inner")
        return anomaly_rows(flagged.sort_by([("arrival_timestamp", "ascending"), ("instance_id", "ascending"),
                                             ("query_id", "ascending")]), thresholds=lambda _version: 1.0)

    def judge_day(self, store: Any, day: dt.date, windows: pd.DataFrame) -> pa.Table:
        """The flagged residual windows of ``day`` (its ``windows``), judged against the stored earlier days.

        The history is read from :func:`~workbench.analysis.collective.reference_start`, so the
        window before the day's first one is scored against the whole reference it had on its own day.
        """
        from workbench.analysis.collective import reference_start
        from workbench.analysis.residual_windows import judge_residual_windows

        start = pd.Timestamp(day, tz="UTC")
        history = store.read_residuals(start=reference_start(start, self.params).to_pydatetime(),
                                       end=start.to_pydatetime()).to_pandas()
        return judge_residual_windows(windows, pd.concat([history, windows], ignore_index=True), self.params)

    def _expectations(self, rows: pa.Table
                      ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Per row, from the version that scored it: ``(known, usual_wait, (home, home_ms), unseen)``.

        ``known``: it expected the runtime from the statement's own history (the detector's evidence
        source ``fingerprint``; the shards keep which version): a never-seen statement's residual tells
        what the model does not know. ``usual_wait``: the usual ``log1p`` wait it expects at that hour
        (:meth:`~workbench.ml.features.FeatureBuilder.usual_wait`). Only the version's feature
        tables are loaded (no ONNX sessions). ``home``, ``home_ms``: the other instance whose statement
        the row runs and its median runtime there
        (:meth:`~workbench.ml.features.FeatureBuilder.statement_homes`). ``unseen``: the version never saw
        the row's instance (evidence source ``global``). Unscored rows, and rows of a version that cannot be
        read, read False, NaN, -1, NaN and False.
        """
        from workbench.ml.exceptions import MLError
        from workbench.ml.features import REFERENCE_SOURCES
        from workbench.ml.registry import ModelRegistry
        from workbench.ml.scorer import load_features, load_usual_hours

        known = np.zeros(rows.num_rows, dtype=bool)
        unseen = np.zeros(rows.num_rows, dtype=bool)
        usual_wait = np.full(rows.num_rows, np.nan)
        home, home_ms = np.full(rows.num_rows, -1, dtype=np.int64), np.full(rows.num_rows, np.nan)
        versions = rows.column("model_version")
        day_versions = pc.unique(versions.drop_null()).to_pylist()
        self._features = {v: f for v, f in self._features.items() if v in day_versions}  # the next day shares some
        self._usual_hours = {v: h for v, h in self._usual_hours.items() if v in day_versions}
        for version in day_versions:
            mask = pc.fill_null(pc.equal(versions, version), False)
            features = self._features.get(version)
            if features is None:
                try:
                    registry = ModelRegistry(self.settings.models_dir)
                    meta, features = load_features(registry, version)
                    clip = meta["detector"]["params"]  # the spread clip of the version's runtime residual
                    scales = (float(clip["min_scale"]), float(clip["max_scale"]))
                    hours = load_usual_hours(registry, version)
                except (MLError, OSError, ValueError, KeyError, TypeError) as exc:
                    # Deleted (a person, `models prune`) or damaged since it scored these rows: its statements'
                    # histories are unknown, so its rows stay out of the residual and the streaks (judging
                    # the day failed five times, then left it unjudged, with the next days waiting meanwhile).
                    if version not in self._unreadable:
                        logger.warning("residual windows: model version %s, which scored some of these rows, cannot "
                                       "be read (%s); its rows are judged as of statements without history",
                                       version, exc)
                    self._unreadable.add(version)
                    continue
                self._unreadable.discard(version)
                self._features[version] = features
                self._usual_hours[version] = hours
                self._scales[version] = scales
            mine, version_rows = mask.to_numpy(zero_copy_only=False), rows.filter(mask)
            source = REFERENCE_SOURCES[features.reference_source(version_rows)]
            known[mine], unseen[mine] = source == "fingerprint", source == "global"
            usual_wait[mine] = features.usual_wait(version_rows)
            home[mine], home_ms[mine] = features.statement_homes(version_rows)
        return known, usual_wait, (home, home_ms), unseen


def evidence_columns(found: pd.DataFrame, params: Any) -> dict[str, pa.Array]:
    """The scored columns the anomaly contract reads, for the runs that
    :func:`~workbench.analysis.persistence.persistent_runs` flagged.

    The evidence is the run's own runtime against its version's expectation; the reference says
    what makes it an alert: the streak of the statement's runs that day.
    """
    from workbench.analysis.persistence import PERSISTENCE_REASON, PERSISTENCE_SIGNAL
    from workbench.ml.scorer import reference_label

    n = len(found)
    starts = pd.to_datetime(found["streak_start"], utc=True).dt.strftime("%H:%M:%S UTC")
    own = reference_label("exec", "fingerprint")  # the run's expectation, as the per-query alerts name it
    reference = [f"{own}; run {s} of a streak of its runs "
                 f"today (since {t}), each slower than predicted by at least {params.bar:.2f} standard deviations "
                 f"and {params.floor_ms / 1000:g} s; the least of the last {params.runs}: {least:.2f} standard "
                 "deviations"
                 for s, t, least in zip(found["streak"], starts, found["least_spreads"], strict=True)]
    return _alert_columns(found, score=found["least_spreads"].to_numpy() / params.bar,
                          reason=[PERSISTENCE_REASON] * n, signal=[PERSISTENCE_SIGNAL] * n, reference=reference,
                          exec_ratio=found["observed_ms"].to_numpy() / np.maximum(found["expected_ms"].to_numpy(), 1.0))


def group_evidence_columns(found: pd.DataFrame, params: Any) -> dict[str, pa.Array]:
    """The scored columns the anomaly contract reads, for the queries that
    :func:`~workbench.analysis.slower_groups.slower_group_runs` flagged.

    The evidence is the query's own runtime (or wait) against its expectation; the reference says
    what makes it an alert: its group, the span, how many queries it judged and how much longer their
    median ran (or waited).
    """
    from workbench.analysis.instance_record import RECORD_SIGNAL
    from workbench.analysis.moved_statements import MOVED_SIGNAL
    from workbench.analysis.slower_groups import JOIN_SHAPE, QUEUE_GROUP_SIGNAL
    from workbench.analysis.trend import TREND_SIGNAL

    names = {"user_id": "user", "database_id": "database", "query_type": "query type"}
    reference = []
    # the rules whose reference is their own; the slower groups' follow
    own = {MOVED_SIGNAL: moved_reference, TREND_SIGNAL: trend_reference, RECORD_SIGNAL: record_reference}
    for row in found.itertuples(index=False):
        if row.signal in own:
            reference.append(own[row.signal](row))
            continue
        if row.group_key == "instance_id":
            who = "this instance's queries"
        elif row.group_key == JOIN_SHAPE:
            who = f"this instance's queries {'with' if row.group_value == 'joins' else 'without'} joins"
        else:
            who = f"{names.get(row.group_key, row.group_key)} {row.group_value}'s queries on this instance"
        span = f"{row.span_start:%H:%M}-{row.span_end:%H:%M} UTC"
        if row.signal == QUEUE_GROUP_SIGNAL:
            reference.append(f"its usual wait (its own runs, or an ordinary wait on this instance); one of "
                             f"{row.group_queries} of {who} {span} whose median waited {row.group_ratio:.2f}x "
                             f"its usual wait and at least {params.floor_ms / 1000:g} s longer (a group needs "
                             f"{params.min_queries} queries and {math.exp(params.floor):.2f}x); this query too")
        else:
            reference.append(f"the runtime model's prediction; one of {row.group_queries} of {who} {span} whose "
                             f"median ran {row.group_ratio:.2f}x the prediction (z {row.group_z:.1f}; a group needs "
                             f"{params.min_queries} queries, {math.exp(params.floor):.2f}x and z "
                             f"{params.z_threshold:g}); this query ran beyond the model's upper prediction for it")
    return _alert_columns(found, score=found["score"].to_numpy(), reason=found["reason"].tolist(),
                          signal=found["signal"].tolist(), reference=reference,
                          exec_ratio=found["exec_ratio"].to_numpy())


def trend_reference(row: Any) -> str:
    """The evidence reference of a run of a creeping statement (a row of
    :func:`~workbench.analysis.trend.creeping_runs`)."""
    from workbench.ml.scorer import reference_label

    bar = row.group_z / row.score
    since = f"{row.span_start:%H:%M:%S} UTC"
    return (f"{reference_label('exec', 'fingerprint')}; run {row.trend_position} of the "
            f"{row.trend_runs} of this statement since {since}, each slower than predicted; its "
            f"{row.group_queries} runs today grow slower run after run (Kendall's trend test: z {row.group_z:.1f}, "
            f"a bar of {bar:.2f}), to a median of {row.group_ratio:.2f}x the prediction since {since}")


def record_reference(row: Any) -> str:
    """The evidence reference of a run beyond its never-seen instance's record (a row of
    :func:`~workbench.analysis.instance_record.instance_record_runs`)."""
    from workbench.ml.scorer import reference_label

    kind = f"{row.group_value} " if row.group_value else ""
    return (f"{reference_label('exec', 'global')}, times the largest overrun of that prediction among the "
            f"{row.group_queries} earlier {kind}runs on this instance today that raised no alert "
            f"({row.span_start:%H:%M}-{row.span_end:%H:%M} UTC; that run took {row.record_ratio:.1f}x its "
            f"prediction). This run took {row.exec_ratio:.0f}x its prediction, {row.group_ratio:.1f}x beyond "
            "that record")


def moved_reference(row: Any) -> str:
    """The evidence reference of a run of another instance's statement (a row of
    :func:`~workbench.analysis.moved_statements.moved_statement_runs`)."""
    statements = int(row.group_statements)
    return (f"its statement's median runtime on instance {row.group_value}, its home, where it is a regular; this "
            f"instance never ran it. One of {row.group_queries} runs of {statements} statements of instance "
            f"{row.group_value} here {row.span_start:%H:%M}-{row.span_end:%H:%M} UTC (median {row.group_ratio:.2f}x "
            f"their runtime at home): fingerprints do not cross instances, so its workload moved here")


def _alert_columns(found: pd.DataFrame, *, score: np.ndarray, reason: list[str], signal: list[str],
                   reference: list[str], exec_ratio: np.ndarray) -> dict[str, pa.Array]:
    """The anomaly contract's scored columns of a deferred rule's flagged rows: each an alert in ms, its
    ``expected_ms``, ``observed_ms`` and ``excess_ms`` the evidence, with the rule's own score, reason,
    signal, reference and runtime ratio."""
    return {
        "is_anomaly": pa.array(np.ones(len(found), dtype=bool)),
        "score": pa.array(score, pa.float64()),
        "reason": pa.array(reason, pa.string()),
        "exec_ratio": pa.array(exec_ratio, pa.float64()),
        "evidence_signal": pa.array(signal, pa.string()),
        "evidence_unit": pa.array(["ms"] * len(found), pa.string()),
        "expected_value": pa.array(found["expected_ms"].to_numpy(), pa.float64()),
        "observed_value": pa.array(found["observed_ms"].to_numpy(), pa.float64()),
        "excess_value": pa.array(found["excess_ms"].to_numpy(), pa.float64()),
        "reference": pa.array(reference, pa.string()),
    }
