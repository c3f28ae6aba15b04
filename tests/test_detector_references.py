"""References from the training window that are not a statement's own runtime: the instance's ordinary
wait, a statement's spill history (the first-spill path) and its shortest run in full (the shortest-run
path)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.ml._testing import generated_log
from workbench.ml._train import train_table
from workbench.ml.detector import (
    FIRST_SPILL_REASON,
    RECORD_SPILL_REASON,
    SCAN_SHORT_MS,
    SCAN_SHORT_RATIO,
    SHORT_OF_SHORTEST,
    SHORT_RATIO,
    SHORT_RUN_REASON,
    SHORT_SCAN_REASON,
    SHORTEST_RUN,
    SMALLEST_SCAN,
    SPILL_HISTORY,
    THROUGHPUT,
    ResidualDetector,
)
from workbench.ml.features import WAITED_MS, FeatureBuilder
from workbench.ml.scorer import Scorer


def _with(table: pa.Table, column: str, values: np.ndarray) -> pa.Table:
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, table.schema.field(idx), pa.array(np.rint(values).astype(np.int64)))


def _keys(table: pa.Table) -> np.ndarray:
    inst = table.column("instance_id").to_numpy().astype(str)
    return np.char.add(np.char.add(inst, "|"), np.asarray(table.column("feature_fingerprint").to_pylist(), dtype=str))


def test_the_queue_reference_is_at_least_an_ordinary_wait_on_the_instance() -> None:
    log = generated_log(days=1, rows_per_day=4000, seed=3)
    inst = log.column("instance_id").to_numpy()
    queue = log.column("queue_duration_ms").to_numpy().astype(float)
    # Instance A: one run in ten waits 20 s (and a few report 1-5 ms of admission, not a wait); instance B
    # never waits.
    a, b = np.unique(inst)[:2]
    rng = np.random.default_rng(0)
    queue[inst == a] = np.where(rng.random((inst == a).sum()) < 0.1, 20_000.0, rng.integers(0, 6, (inst == a).sum()))
    queue[inst == b] = 0.0
    table = _with(log, "queue_duration_ms", queue)
    builder = FeatureBuilder().fit(table)
    level, _ = builder.references(table)["queue"]
    assert np.expm1(level[inst == a]) == pytest.approx(20_000.0)  # not the statements' usual 0 ms
    waited = queue[queue >= WAITED_MS]
    # An instance that never waited gets the fleet's ordinary wait (the median of every run that waited).
    assert np.expm1(level[inst == b]) == pytest.approx(np.expm1(np.median(np.log1p(waited))))


def _hour_of(table: pa.Table) -> np.ndarray:
    return (table.column("arrival_timestamp").to_numpy().astype("datetime64[h]").astype(np.int64) % 24)


def _day_of(table: pa.Table) -> np.ndarray:
    return table.column("arrival_timestamp").to_numpy().astype("datetime64[D]").astype(np.int64)


def test_the_usual_wait_is_raised_at_the_hour_an_instance_waits_through_every_day(tmp_path: Path) -> None:
    log = generated_log(days=3, rows_per_day=6000, seed=5)
    inst, hour, day = log.column("instance_id").to_numpy(), _hour_of(log), _day_of(log)
    queue = log.column("queue_duration_ms").to_numpy().astype(float)
    busiest = np.unique(inst)[np.argmax(np.unique(inst, return_counts=True)[1])]
    peak = int(np.bincount(hour[inst == busiest]).argmax())  # its busiest hour, every day
    other = int((peak + 12) % 24)
    storm_day = np.unique(day)[0]
    daily = (inst == busiest) & (hour == peak)
    once = (inst == busiest) & (hour == other) & (day == storm_day)  # one day's storm is not a rule
    assert daily.sum() >= 60 and once.sum() >= 20
    # a third of its runs wait a second at any hour (its ordinary wait); at the peak every run waits 20 s more
    ordinary = (inst == busiest) & (np.random.default_rng(0).random(len(inst)) < 0.3)
    queue = np.where(ordinary, 1_000.0, queue)
    queue = np.where(daily | once, queue + 20_000.0, queue)
    table = _with(log, "queue_duration_ms", queue)
    builder = FeatureBuilder().fit(table)
    keys = table.select(["instance_id", "feature_fingerprint", "arrival_timestamp"])
    plain, usual = builder.queue_reference(keys), builder.usual_wait(keys)
    assert (usual >= plain).all()
    raised = usual > plain + 1e-9
    # every query of that instance at that hour expects the peak's wait (about 20 s), on any day
    assert raised[daily].all() and np.expm1(np.median(usual[daily])) > 10_000.0
    assert not raised[inst != busiest].any() and not raised[once].any()
    # the same from a saved and loaded version; without the arrival time, the plain reference
    state = builder.save(tmp_path)
    loaded = FeatureBuilder.load(tmp_path, json.loads(json.dumps(state)))
    np.testing.assert_array_equal(loaded.usual_wait(keys), usual)
    np.testing.assert_array_equal(builder.usual_wait(keys.drop_columns(["arrival_timestamp"])), plain)
    # a version trained before the hourly excess was kept reads the plain reference
    stats = pq.read_table(tmp_path / "instance_stats.parquet")
    pq.write_table(stats.select([c for c in stats.column_names if not c.startswith("hour_wait_")]),
                   tmp_path / "instance_stats.parquet")
    np.testing.assert_array_equal(FeatureBuilder.load(tmp_path, state).usual_wait(keys), plain)


def test_spill_history_is_the_largest_spill_and_the_runs_of_the_statement_own_history_only() -> None:
    log = generated_log(days=1, rows_per_day=4000, seed=3)
    keys = _keys(log)
    distinct, counts = np.unique(keys, return_counts=True)
    busiest = keys == distinct[np.argmax(counts)]
    spill = log.column("mbytes_spilled").to_numpy().astype(float)
    spill[busiest] = 0.0
    spill[np.flatnonzero(busiest)[0]] = 1_234.0
    table = _with(log, "mbytes_spilled", spill)
    builder = FeatureBuilder().fit(table)
    largest, runs = builder.references(table)[SPILL_HISTORY]
    assert np.expm1(largest[busiest]) == pytest.approx(1_234.0)
    assert (runs[busiest] == busiest.sum()).all()
    rare = np.isin(keys, distinct[counts < builder.min_history])  # a prior's reference: no history of its own
    assert rare.any() and np.isnan(largest[rare]).all() and np.isnan(runs[rare]).all()


def _spill_history_model(tmp_path: Path, first_run_mb: float) -> tuple[pa.Table, np.ndarray, np.ndarray, Scorer]:
    """``(batch, largest log spill, runs, scorer)``: a version trained on the first 3000 rows of a small log
    in which every statement with at least 5 runs spilled ``first_run_mb`` in its first run and nothing in
    the others, the statement references of the 500 rows after them, and a scorer of that version."""
    log = generated_log(days=2, rows_per_day=3000, seed=5)
    train, batch = log.slice(0, 3000), log.slice(3000, 500)
    keys = _keys(train)
    distinct, counts = np.unique(keys, return_counts=True)
    frequent = np.isin(keys, distinct[counts >= 5])
    first_run = np.zeros(len(keys), bool)
    first_run[np.unique(keys, return_index=True)[1]] = True
    spill = np.where(frequent, np.where(first_run, first_run_mb, 0.0),
                     train.column("mbytes_spilled").to_numpy().astype(float))
    train_table(tmp_path / "models", _with(train, "mbytes_spilled", spill), dt.date(2024, 3, 1), window_days=1)
    version = next((tmp_path / "models" / "versions").iterdir())
    builder = FeatureBuilder.load(version, json.loads((version / "model.json").read_text())["features"])
    largest, runs = builder.references(batch)[SPILL_HISTORY]
    return batch, largest, runs, Scorer(tmp_path / "models", background=False)


def _scored_with_spill(scorer: Scorer, batch: pa.Table, i: int, spill_mb: float) -> dict:
    """The scored row ``i`` of ``batch`` when that run spilled ``spill_mb``."""
    spilled = batch.column("mbytes_spilled").to_numpy().astype(float)
    spilled[i] = spill_mb
    out = scorer.score(_with(batch, "mbytes_spilled", spilled))
    return {n: out.column(n)[i].as_py() for n in out.schema.names}


def test_scorer_names_a_first_spill_with_its_evidence(tmp_path: Path) -> None:
    # Statements of the training day with at least 5 runs: they never spilled there.
    batch, largest, runs, scorer = _spill_history_model(tmp_path, first_run_mb=0.0)
    candidates = np.flatnonzero((largest == 0.0) & (runs >= 5))
    assert len(candidates), "the batch must hold a run of a statement that never spilled in 5 runs"
    i = int(candidates[0])
    # 3 GB spilled, at the run's usual runtime: new for the statement, and at least the 1 GB floor.
    row = _scored_with_spill(scorer, batch, i, 3_000.0)
    assert row["is_anomaly"] and row["reason"] == FIRST_SPILL_REASON and row["evidence_signal"] == "spill"
    assert row["evidence_unit"] == "MB" and row["observed_value"] == pytest.approx(3_000.0, rel=1e-6)
    assert row["expected_value"] == pytest.approx(0.0, abs=1e-6)
    assert row["reference"] == f"this statement's own runs: no spill in {runs[i]:.0f} runs"
    # Under the floor it is no alert.
    assert _scored_with_spill(scorer, batch, i, 900.0)["reason"] != FIRST_SPILL_REASON


def test_scorer_names_a_spill_beyond_the_largest_with_its_evidence(tmp_path: Path) -> None:
    # Statements of the training day with at least 5 runs spilled at most 200 MB there (one run each).
    batch, largest, runs, scorer = _spill_history_model(tmp_path, first_run_mb=200.0)
    scanned = batch.column("mbytes_scanned").to_numpy().astype(float)
    candidates = np.flatnonzero((np.round(np.expm1(largest)) == 200.0) & (runs >= 5) & (scanned >= 2_000.0))
    assert len(candidates), "the batch must hold a 2 GB read of a statement whose largest spill was 200 MB"
    i = int(candidates[0])
    # 4 GB spilled (20x its largest), at most twice what the run read: no rare spill against its scan.
    row = _scored_with_spill(scorer, batch, i, 4_000.0)
    assert row["is_anomaly"] and row["reason"] == RECORD_SPILL_REASON and row["evidence_signal"] == "spill"
    assert row["expected_value"] == pytest.approx(200.0, rel=1e-6)
    assert row["excess_value"] == pytest.approx(3_800.0, rel=1e-6)
    assert row["reference"] == f"this statement's largest spill: 200 MB in {runs[i]:.0f} runs"
    # 4x its largest is no record worth an alert.
    assert _scored_with_spill(scorer, batch, i, 800.0)["reason"] != RECORD_SPILL_REASON


# --- the shortest-run path: work that did not happen ----------------------------------------------
def _bool(table: pa.Table, column: str, values: np.ndarray) -> pa.Table:
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, table.schema.field(idx), pa.array(values, table.schema.field(idx).type))


def test_shortest_run_is_the_statement_s_shortest_run_that_did_its_work() -> None:
    log = generated_log(days=1, rows_per_day=4000, seed=3)
    keys = _keys(log)
    distinct, counts = np.unique(keys, return_counts=True)
    busiest = keys == distinct[np.argmax(counts)]
    runtime = np.where(busiest, 60_000.0, log.column("execution_duration_ms").to_numpy().astype(float))
    rows = np.flatnonzero(busiest)
    runtime[rows[0]], runtime[rows[1]] = 5.0, 45_000.0  # its one cache hit, and its shortest run in full
    cached = np.zeros(len(keys), bool)
    cached[rows[0]] = True
    table = _bool(_with(log, "execution_duration_ms", runtime), "was_cached", cached)
    builder = FeatureBuilder().fit(table)
    shortest, full = builder.references(table)[SHORTEST_RUN]
    assert np.expm1(shortest[busiest]) == pytest.approx(45_000.0)  # not the cache hit's 5 ms
    did_work = busiest & ~cached & ~np.asarray(log.column("was_aborted").to_pylist(), bool)
    assert (full[busiest] == did_work.sum()).all()
    rare = np.isin(keys, distinct[counts < builder.min_history])
    assert rare.any() and np.isnan(shortest[rare]).all()
    # a log without was_cached keeps no shortest run (a cache hit's milliseconds would be the record)
    assert SHORTEST_RUN not in FeatureBuilder().fit(log.drop_columns(["was_cached"])).references(table)


def _first_day_version(tmp_path: Path) -> tuple[pa.Table, FeatureBuilder, np.ndarray]:
    """``(batch, builder, ran)``: a version trained on the first 3000 rows of a small log, the 500 rows after
    them, the version's feature builder, and which rows of the batch did their work (no cache hit, no abort)."""
    log = generated_log(days=2, rows_per_day=3000, seed=5)
    train, batch = log.slice(0, 3000), log.slice(3000, 500)
    train_table(tmp_path / "models", train, dt.date(2024, 3, 1), window_days=1)
    version = next((tmp_path / "models" / "versions").iterdir())
    builder = FeatureBuilder.load(version, json.loads((version / "model.json").read_text())["features"])
    ran = ~np.asarray(batch.column("was_cached").to_pylist(), bool) & ~np.asarray(
        batch.column("was_aborted").to_pylist(), bool)
    return batch, builder, ran


def _short_run_model(tmp_path: Path) -> tuple[pa.Table, np.ndarray, Scorer, np.ndarray]:
    """``(batch, shortest log runtime, scorer, candidates)``: :func:`_first_day_version`'s batch, their
    statements' shortest runs in full, and the rows of that batch of a statement with at least 5 runs in
    full whose shortest took 10 s or more."""
    batch, builder, ran = _first_day_version(tmp_path)
    shortest, full = builder.references(batch)[SHORTEST_RUN]
    candidates = np.flatnonzero((full >= 5) & (np.expm1(np.nan_to_num(shortest)) >= 10_000.0) & ran)
    return batch, shortest, Scorer(tmp_path / "models", background=False), candidates


def _scored_with_runtime(scorer: Scorer, batch: pa.Table, i: int, runtime_ms: float,
                         **flags: bool) -> dict:
    runtime = batch.column("execution_duration_ms").to_numpy().astype(float)
    runtime[i] = runtime_ms
    table = _with(batch, "execution_duration_ms", runtime)
    for name, value in flags.items():
        values = np.asarray(table.column(name).to_pylist(), bool)
        values[i] = value
        table = _bool(table, name, values)
    out = scorer.score(table)
    return {n: out.column(n)[i].as_py() for n in out.schema.names}


def test_scorer_names_a_run_far_shorter_than_any_run_of_its_statement_with_its_evidence(tmp_path: Path) -> None:
    batch, shortest, scorer, candidates = _short_run_model(tmp_path)
    assert len(candidates), "the batch must hold a run of a statement whose 5+ runs in full took 10 s or more"
    i = int(candidates[0])
    least = float(np.expm1(shortest[i]))
    # a load that found no input: 40 ms where the statement never took under 10 s
    row = _scored_with_runtime(scorer, batch, i, 40.0)
    assert row["is_anomaly"] and row["reason"] == SHORT_RUN_REASON and row["evidence_signal"] == "exec"
    assert row["expected_value"] == pytest.approx(least, rel=1e-6)
    assert row["observed_value"] == pytest.approx(40.0, rel=1e-6)
    assert row["excess_value"] == pytest.approx(40.0 - least, rel=1e-6)
    assert row["reference"].startswith(f"this statement's shortest run: {least:,.0f} ms in ")
    # a third of its shortest is ordinary spread; a result-cache hit and an aborted run do not run the work
    assert not _scored_with_runtime(scorer, batch, i, least / 3)["is_anomaly"]
    assert not _scored_with_runtime(scorer, batch, i, 40.0, was_cached=True)["is_anomaly"]
    assert not _scored_with_runtime(scorer, batch, i, 40.0, was_aborted=True)["is_anomaly"]


def test_a_short_run_under_the_runtime_floor_is_no_alert() -> None:
    det = ResidualDetector()
    residuals = {SHORT_OF_SHORTEST: np.array([900.0, 1_200.0, 1_200.0]), SHORT_RATIO: np.log([50.0, 50.0, 4.0])}
    score = det._short_run(residuals, np.zeros(3, np.int64))
    assert score[0] < 1 <= score[1] and score[2] < 1  # under 1 s short; 5x; only 4x under its shortest
    assert (det._short_run(residuals, np.ones(3, np.int64)) == 0).all()  # a prior's expectation: no path
    # a model saved before the path keeps its decisions
    rng = np.random.default_rng(0)
    saved = det.fit({s: rng.normal(size=2_000) for s in det.signals}).to_dict()
    assert ResidualDetector.from_dict(saved)._short_run(residuals, np.zeros(3, np.int64)) is not None
    del saved["params"]["short_run_factor"]
    assert ResidualDetector.from_dict(saved)._short_run(residuals, np.zeros(3, np.int64)) is None


# --- the smallest-scan path: input that was not there ----------------------------------------------
def test_smallest_scan_is_the_statement_s_smallest_measured_scan_of_a_run_that_did_its_work() -> None:
    log = generated_log(days=1, rows_per_day=4000, seed=3)
    keys = _keys(log)
    distinct, counts = np.unique(keys, return_counts=True)
    busiest = keys == distinct[np.argmax(counts)]
    rows = np.flatnonzero(busiest)
    scanned = np.where(busiest, 8_000.0, log.column("mbytes_scanned").to_numpy(zero_copy_only=False).astype(float))
    scanned[rows[0]], scanned[rows[1]] = 3.0, 6_000.0  # its one cache hit, and its smallest scan in full
    cached = np.zeros(len(keys), bool)
    cached[rows[0]] = True
    table = _bool(_with(log, "mbytes_scanned", scanned), "was_cached", cached)
    idx = table.schema.get_field_index("mbytes_scanned")  # one run's scan nobody measured: not the record
    values = table.column("mbytes_scanned").to_pylist()
    values[rows[2]] = None
    table = table.set_column(idx, table.schema.field(idx), pa.array(values, table.schema.field(idx).type))
    builder = FeatureBuilder().fit(table)
    smallest, runs = builder.references(table)[SMALLEST_SCAN]
    assert np.expm1(smallest[busiest]) == pytest.approx(6_000.0)  # not the cache hit's 3 MB nor the NULL
    did_work = busiest & ~cached & ~np.asarray(log.column("was_aborted").to_pylist(), bool)
    did_work[rows[2]] = False
    assert (runs[busiest] == did_work.sum()).all()
    assert SMALLEST_SCAN not in FeatureBuilder().fit(log.drop_columns(["was_cached"])).references(table)


def _scored_with_scan(scorer: Scorer, batch: pa.Table, i: int, scanned_mb: float) -> dict:
    scanned = batch.column("mbytes_scanned").to_numpy(zero_copy_only=False).astype(float)
    scanned[i] = scanned_mb
    out = scorer.score(_with(batch, "mbytes_scanned", scanned))
    return {n: out.column(n)[i].as_py() for n in out.schema.names}


def test_scorer_names_a_run_that_read_far_less_than_any_run_of_its_statement_with_its_evidence(
        tmp_path: Path) -> None:
    batch, builder, ran = _first_day_version(tmp_path)
    smallest, runs = builder.references(batch)[SMALLEST_SCAN]
    pace = np.exp(builder.references(batch)[THROUGHPUT][0])
    least_mb = np.expm1(np.nan_to_num(smallest))
    # a statement with 5+ runs in full that never read less than what its instance reads in 3 s
    candidates = np.flatnonzero((runs >= 5) & (least_mb * np.nan_to_num(pace) >= 3_000.0) & ran)
    assert len(candidates), "the batch must hold a run of a statement that always reads 3 s of its instance's work"
    i = int(candidates[0])
    least = float(least_mb[i])
    scorer = Scorer(tmp_path / "models", background=False)
    # a load that found a twentieth of its input, in its usual time
    row = _scored_with_scan(scorer, batch, i, least / 20)
    assert row["is_anomaly"] and row["reason"] == SHORT_SCAN_REASON and row["evidence_signal"] == "scan"
    assert row["evidence_unit"] == "MB" and row["expected_value"] == pytest.approx(least, rel=1e-6)
    assert row["observed_value"] == pytest.approx(round(least / 20), abs=1.0)
    assert row["reference"].startswith(f"this statement's smallest scan: {least:,.0f} MB in ")
    # a third of its smallest is within what a statement reads (parameters, pruning): no alert
    assert _scored_with_scan(scorer, batch, i, least / 3)["reason"] != SHORT_SCAN_REASON


def test_a_scan_short_of_its_smallest_by_less_than_a_second_of_reading_is_no_alert() -> None:
    det = ResidualDetector()
    residuals = {SCAN_SHORT_MS: np.array([900.0, 1_200.0, 1_200.0]), SCAN_SHORT_RATIO: np.log([50.0, 50.0, 4.0])}
    score = det._short_scan(residuals, np.zeros(3, np.int64))
    assert score[0] < 1 <= score[1] and score[2] < 1  # under 1 s of reading; 5x; only 4x under its smallest
    assert (det._short_scan(residuals, np.ones(3, np.int64)) == 0).all()  # a prior's expectation: no path


def test_every_reference_reads_in_plain_words_naming_whose_runs_set_the_expectation() -> None:
    """The drill-down's "reference" read "model+plan/instance prior" and "... spreads" (browser tester, 40th
    session): each now says in words what the expectation came from."""
    from workbench.ml.detector import REASONS
    from workbench.ml.features import REFERENCE_SOURCES
    from workbench.ml.scorer import reference_label

    whose = {"fingerprint": "this statement's own runs", "instance": "this instance's runs",
             "global": "every instance's runs"}
    for signal in REASONS:
        for source in REFERENCE_SOURCES:
            text = reference_label(signal, source)
            assert whose[source] in text, (signal, source, text)
            assert not any(word in text for word in ("model+", "prior", "spreads", "max(", "history")), text
    assert reference_label("exec", "instance").startswith("the runtime model's prediction from its plan and ")
