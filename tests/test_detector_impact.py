"""Absolute impact next to relative surprise: runaways alert, sub-second noise does not, evidence travels."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from workbench.ml._testing import generated_log, slower
from workbench.ml._train import train_table
from workbench.ml.detector import (
    FIRST_SPILL_REASON,
    FIRST_SPILL_RUNS,
    RECORD_SPILL_FACTOR,
    RECORD_SPILL_REASON,
    RUNTIME_SCALE,
    SPILL_HISTORY,
    THROUGHPUT,
    ResidualDetector,
)
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import EXTRA_FIELDS, LoadedModel, Scorer


def _holdout(n: int = 20_000, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Normal traffic: runtimes around 200 ms with log-sd 0.35, a well-calibrated quantile model."""
    rng = np.random.default_rng(seed)
    mean = np.log1p(rng.lognormal(np.log(200), 1.0, n))
    q = mean + 1.2816 * 0.35
    obs = {"exec": mean + 0.35 * rng.standard_normal(n), "queue": np.zeros(n),
           "scan": np.log1p(rng.lognormal(np.log(100), 0.2, n)), "spill": np.zeros(n), "compile": np.zeros(n)}
    refs = {"queue": (np.zeros(n), np.zeros(n)), "scan": (np.log1p(np.full(n, 100.0)), np.full(n, 0.3)),
            "spill": (np.zeros(n), np.zeros(n)), "exec": (mean, np.full(n, 0.5)),
            "compile": (np.zeros(n), np.full(n, np.nan))}
    return obs, mean, q, refs


def _fitted(**kwargs: float) -> ResidualDetector:
    obs, mean, q, refs = _holdout()
    det = ResidualDetector(**kwargs)
    det.fit(det.residuals(obs, mean, q, refs), det.excess(obs, det.expected(mean, refs)))
    return det


def _run(exec_ms: float, pred_ms: float, scan_mb: float = 100.0, reference_mb: float = 100.0
         ) -> tuple[np.ndarray, dict, dict]:
    """``(predicted log mean, observed signals, references)`` of one run that waited, spilled and compiled
    nothing and read ``scan_mb`` against a reference of ``reference_mb``."""
    mean = np.array([np.log1p(pred_ms)])
    obs = {"exec": np.log1p([exec_ms]), "queue": np.zeros(1), "scan": np.log1p([scan_mb]), "spill": np.zeros(1),
           "compile": np.zeros(1)}
    refs = {"queue": (np.zeros(1), np.zeros(1)), "scan": (np.log1p([reference_mb]), np.array([0.3])),
            "spill": (np.zeros(1), np.zeros(1)), "exec": (mean, np.array([0.5])),
            "compile": (np.zeros(1), np.full(1, np.nan))}
    return mean, obs, refs


def _one(det: ResidualDetector, exec_ms: float, pred_ms: float, spread_log: float) -> tuple[float, bool, str | None]:
    mean, obs, refs = _run(exec_ms, pred_ms)
    z = det.residuals(obs, mean, mean + 1.2816 * spread_log, refs)
    score, alert, reason = det.decide(z, det.excess(obs, det.expected(mean, refs)))
    return float(score[0]), bool(alert[0]), reason[0]


def test_a_runaway_on_an_unseen_fingerprint_alerts_however_wide_its_spread() -> None:
    det = _fitted()
    # Predicted 0.3 s with a huge quantile spread (never-seen fingerprint), ran 42 minutes.
    score, alert, reason = _one(det, 42 * 60_000, 300, spread_log=6.0)
    assert alert and reason == "slow_execution" and score > 1
    # Without the cap the same query would pass as unremarkable: the cap is what catches it.
    uncapped = _fitted(max_scale=100.0)
    assert not _one(uncapped, 42 * 60_000, 300, spread_log=6.0)[1]


def test_sub_second_noise_never_alerts_however_relatively_large() -> None:
    det = _fitted()
    score, alert, _ = _one(det, 600, 5, spread_log=0.35)  # 120x, but half a second
    assert not alert and score < 1
    assert _one(det, 5_600, 5, spread_log=0.35)[1]  # the same surprise at 5.6 s is material


def test_the_bar_falls_as_the_stake_grows() -> None:
    det = _fitted()
    # A 10-minute query running 2.5x its expectation on a tight fingerprint (z ~2.6, a 1-in-200
    # surprise): 15 minutes of excess make that enough.
    assert _one(det, 25 * 60_000, 10 * 60_000, spread_log=0.35)[1]
    # The same ratio at 300 ms expected is under a second's worth: no alert.
    assert not _one(det, 750, 300, spread_log=0.35)[1]
    # Ordinary variation of a long query (1.3x) stays quiet even though it is minutes of excess.
    assert not _one(det, 78 * 60_000, 60 * 60_000, spread_log=0.35)[1]


def test_state_round_trip_and_batch_independence() -> None:
    det = _fitted()
    again = ResidualDetector.from_dict(det.to_dict())
    obs, mean, q, refs = _holdout(seed=3)
    z = det.residuals(obs, mean, q, refs)
    e = det.excess(obs, det.expected(mean, refs))
    a = det.decide(z, e)[0]
    b = again.decide(again.residuals(obs, mean, q, refs), e)[0]
    np.testing.assert_array_equal(a, b)
    part = det.decide({k: v[:7] for k, v in z.items()}, {k: v[:7] for k, v in e.items()})[0]
    np.testing.assert_array_equal(part, a[:7])
    with pytest.raises(ValueError, match="max_scale"):
        ResidualDetector(min_scale=2.0, max_scale=1.0).residuals(obs, mean, q, refs)


def test_scorer_rows_carry_their_evidence(tmp_path: Path) -> None:
    log = generated_log(days=2, rows_per_day=3000, seed=5)
    train_table(tmp_path / "models", log.slice(0, 3000), dt.date(2024, 3, 1), window_days=1)
    batch = log.slice(3000, 500)
    idx = batch.schema.get_field_index("execution_duration_ms")
    runaway = pa.array([40 * 60_000, *batch.column(idx).to_pylist()[1:]], pa.int64())
    batch = batch.set_column(idx, batch.schema.field(idx), runaway)
    out = Scorer(tmp_path / "models", background=False).score(batch)
    names = out.schema.names
    for field in EXTRA_FIELDS:
        assert field.name in names
    first = {n: out.column(n)[0].as_py() for n in names}
    assert first["is_anomaly"] and first["evidence_signal"] == "exec" and first["evidence_unit"] == "ms"
    assert first["observed_value"] == pytest.approx(40 * 60_000, rel=1e-6)
    assert first["excess_value"] == pytest.approx(first["observed_value"] - first["expected_value"])
    assert first["reference"].startswith("the runtime model's prediction from ")
    assert set(out.column("evidence_signal").to_pylist()) <= {"exec", "queue", "scan", "spill", "compile"}


def _wide_holdout_detector() -> ResidualDetector:
    """Calibrated on traffic whose never-seen queries are very unpredictable (q99 ~ 250x their prior)."""
    obs, mean, q, refs = _holdout(seed=1)
    rng = np.random.default_rng(2)
    obs["exec"] = mean + np.abs(rng.standard_normal(len(mean))) * 2.2  # capped z up to ~8 on normal rows
    det = ResidualDetector()
    det.fit(det.residuals(obs, mean, q + 6.0, refs), det.excess(obs, det.expected(mean, refs)))
    return det


def _stall(det: ResidualDetector, exec_ms: float, pred_ms: float, scan_mb: float,
           ms_per_mb: float | None = None, reference_mb: float = 100.0) -> bool:
    """Whether the *runtime* evidence alone alerts (the scan may alert on its own as well)."""
    mean, obs, refs = _run(exec_ms, pred_ms, scan_mb, reference_mb)
    if ms_per_mb is not None:
        refs[THROUGHPUT] = (np.log([ms_per_mb]), np.zeros(1))
    z = det.residuals(obs, mean, mean + 6.0, refs)
    per_signal = det._signal_scores(z, det.excess(obs, det.expected(mean, refs)))
    return bool(per_signal[det.signals.index("exec"), 0] >= 1.0)


def test_minutes_the_work_does_not_explain_alert_below_the_costly_level() -> None:
    det = _wide_holdout_detector()
    # Expected 2 s, sat 7 minutes reading its usual 100 MB (a stall): alerts although the group's
    # calibration is loose and 7 minutes are below the costly level.
    assert _stall(det, 7 * 60_000, 2_000, scan_mb=100.0)
    # The same 7 minutes while reading 1,000x its usual MB: the work explains the time.
    assert not _stall(det, 7 * 60_000, 2_000, scan_mb=100_000.0)
    # A stall of 40 s is not worth an alert on this loose calibration (little at stake).
    assert not _stall(det, 40_000, 2_000, scan_mb=100.0)


def test_extra_mb_explain_only_the_time_the_instance_needs_to_read_them() -> None:
    det = _wide_holdout_detector()
    # A load expected in 2 s whose reference reads 20 MB sat 8 minutes reading 1 GB: 50x the MB
    # would excuse 50x the runtime, but at the instance's pace (2 ms per MB) 1 GB takes 2 s.
    assert not _stall(det, 8 * 60_000, 2_000, scan_mb=1_000.0, reference_mb=20.0)  # pace unknown
    assert _stall(det, 8 * 60_000, 2_000, scan_mb=1_000.0, reference_mb=20.0, ms_per_mb=2.0)
    # 300 GB more at that pace take 10 minutes: 8 minutes are explained by the work.
    assert not _stall(det, 8 * 60_000, 2_000, scan_mb=300_000.0, reference_mb=20.0, ms_per_mb=2.0)


def _two_group_detector() -> tuple[ResidualDetector, dict]:
    """Group 0 (own history) tight residuals, group 1 (instance prior) three times as wide."""
    rng = np.random.default_rng(3)
    z = {"exec": np.concatenate([rng.standard_normal(4_000), 3.0 * rng.standard_normal(4_000)])}
    groups = np.repeat([0, 1], 4_000)
    det = ResidualDetector(signals=("exec",)).fit(z, groups=groups)
    return det, z


def test_a_group_without_calibration_rows_borrows_the_pooled_calibration() -> None:
    det, z = _two_group_detector()
    probe = {"exec": np.full(3, 6.0)}
    score, _, _ = det.decide(probe, groups=np.array([0, 1, 2]))  # 2: an instance never seen in training
    pooled_u = (6.0 - np.median(z["exec"])) / (np.quantile(z["exec"], 0.99) - np.median(z["exec"]))
    assert score[2] == pytest.approx(pooled_u / det.threshold_)
    # Neither of the fitted groups' calibrations: tighter than the wide group, wider than the tight one.
    assert score[1] < score[2] < score[0]
    # Persisted and reloaded, the unseen group still gets the pooled calibration.
    again = ResidualDetector.from_dict(det.to_dict())
    assert again.decide(probe, groups=np.array([0, 1, 2]))[0] == pytest.approx(score)


def test_a_model_saved_before_the_pooled_entry_scores_as_it_did() -> None:
    det, _ = _two_group_detector()
    state = det.to_dict()
    state["center"] = {k: v[:-1] for k, v in state["center"].items()}  # the old layout: fitted groups only
    state["spread"] = {k: v[:-1] for k, v in state["spread"].items()}
    old = ResidualDetector.from_dict(state)
    probe = {"exec": np.full(2, 6.0)}
    score, _, _ = old.decide(probe, groups=np.array([1, 2]))
    assert score[1] == pytest.approx(score[0])  # unseen groups used the last fitted group then


def _exec_alerts(det: ResidualDetector, exec_ms: float, pred_ms: float, q90_ms: float, group: int) -> bool:
    """Whether the runtime signal alone alerts for one run (``group`` 0: its statement has its own history).
    The run read 1,000x its reference MB (pace unknown), so the stall path (runtime the work does not
    explain) stays out of it."""
    mean, obs, refs = _run(exec_ms, pred_ms, scan_mb=100_000.0)
    z = det.residuals(obs, mean, np.log1p([q90_ms]), refs)
    per_signal = det._signal_scores(z, det.excess(obs, det.expected(mean, refs)), np.array([group]))
    return bool(per_signal[det.signals.index("exec"), 0] >= 1.0)


def test_minutes_beyond_a_known_statements_own_tolerance_alert_below_the_costly_level() -> None:
    det = _wide_holdout_detector()  # a loose calibration: 2.6x is an ordinary relative residual here
    # A 5-minute statement with its own history (q90 6 minutes) took 13: 7 minutes beyond its tolerance,
    # under the 10 minutes that are costly whatever the reference.
    assert _exec_alerts(det, 13 * 60_000, 5 * 60_000, 6 * 60_000, group=0)
    # The same run of a statement never seen on the instance: its expectation is a prior, 10 minutes rule.
    assert not _exec_alerts(det, 13 * 60_000, 5 * 60_000, 6 * 60_000, group=1)
    # Within 2 minutes of the tolerance, or within the tolerance itself, nothing is at stake on this path.
    assert not _exec_alerts(det, 7.5 * 60_000, 5 * 60_000, 6 * 60_000, group=0)
    assert not _exec_alerts(det, 13 * 60_000, 5 * 60_000, 14 * 60_000, group=0)
    # Minutes beyond a tight tolerance but under costly_z (2) spreads above the expectation: ln 1.6 / 0.25.
    assert not _exec_alerts(det, 8 * 60_000, 5 * 60_000, 5.2 * 60_000, group=0)


def test_a_model_saved_before_the_known_statement_path_keeps_its_decisions() -> None:
    det = _wide_holdout_detector()
    state = det.to_dict()
    assert state["params"]["known_costly"] == 120_000.0
    del state["params"]["known_costly"]
    old = ResidualDetector.from_dict(state)
    assert not _exec_alerts(old, 13 * 60_000, 5 * 60_000, 6 * 60_000, group=0)
    assert _exec_alerts(ResidualDetector.from_dict(det.to_dict()), 13 * 60_000, 5 * 60_000, 6 * 60_000, group=0)


def test_a_q90_below_the_mean_does_not_widen_the_known_statement_path() -> None:
    det = _wide_holdout_detector()
    # The quantile regressor crossed below the mean (1.5 min against 2.5): the tolerance is still the mean,
    # so a run of 4.4 minutes (2.3 capped spreads above it) is 1.9 minutes beyond it, not 2.9.
    assert not _exec_alerts(det, 4.4 * 60_000, 2.5 * 60_000, 1.5 * 60_000, group=0)
    assert _exec_alerts(det, 4.4 * 60_000, 2.3 * 60_000, 2.3 * 60_000, group=0)  # 2.1 minutes beyond


def _first_spill_decision(det: ResidualDetector, *, spill_mb: float, largest_spill_mb: float = 0.0,
                          runs: float = 8.0, group: int = 0) -> tuple[float, bool, str | None]:
    """``(score, alerts, reason)`` of one run of a statement (predicted and run in 20 s, q90 30 s, 10 GB read)
    that spilled ``spill_mb``, when its history holds ``runs`` runs whose largest spill was ``largest_spill_mb``."""
    mean, obs, refs = _run(20_000.0, 20_000.0, scan_mb=10_000.0, reference_mb=10_000.0)
    obs["spill"] = np.log1p([spill_mb])
    refs[SPILL_HISTORY] = (np.log1p([largest_spill_mb]), np.array([runs]))
    z = det.residuals(obs, mean, np.log1p([30_000.0]), refs)
    score, alert, reason = det.decide(z, det.excess(obs, det.expected(mean, refs)), np.array([group]))
    return float(score[0]), bool(alert[0]), reason[0]


def _first_spill(det: ResidualDetector, **run: float) -> tuple[bool, str | None]:
    """``(alerts, reason)`` of :func:`_first_spill_decision`."""
    return _first_spill_decision(det, **run)[1:]


def _spilling_fitted() -> ResidualDetector:
    """Calibrated on traffic where one run in 20 spills, around a fifth of its scan (log-sd 1.5)."""
    obs, mean, q, refs = _holdout()
    rng = np.random.default_rng(1)
    spills = rng.random(len(mean)) < 0.05
    obs["spill"] = np.where(spills, obs["scan"] + np.log(0.2) + 1.5 * rng.standard_normal(len(mean)), 0.0)
    det = ResidualDetector()
    det.fit(det.residuals(obs, mean, q, refs), det.excess(obs, det.expected(mean, refs)))
    return det


def test_a_first_spill_of_a_statement_that_never_spilled_alerts() -> None:
    det = _spilling_fitted()
    # Never spilled in 8 runs, now 2 GB (a fifth of the scan: an ordinary spill among spills), at its
    # usual runtime: new for the statement, and material.
    assert _first_spill(det, spill_mb=2_000.0) == (True, FIRST_SPILL_REASON)
    # Under the spill floor (1 GB), or a statement that spilled before, or too short a history, or a
    # statement never seen on the instance (its references are a prior's): no first spill (a statement that
    # spilled 500 MB before spills 4x its largest: no record either).
    assert _first_spill(det, spill_mb=900.0) == (False, None)
    assert _first_spill(det, spill_mb=2_000.0, largest_spill_mb=500.0) == (False, None)
    assert _first_spill(det, spill_mb=2_000.0, runs=4.0) == (False, None)
    assert _first_spill(det, spill_mb=2_000.0, group=1) == (False, None)


def test_a_first_spill_ranks_by_the_weaker_of_its_stake_and_its_evidence() -> None:
    det = _spilling_fitted()
    # 9 GB of its 10 GB read after 6 clean runs (a big statement's occasional spill) against 5 GB after 60
    # clean runs: both alert, and the long clean history ranks first; each scores the weaker of its two terms.
    short_history, short_alert, _ = _first_spill_decision(det, spill_mb=9_000.0, runs=6.0)
    long_history, long_alert, reason = _first_spill_decision(det, spill_mb=5_000.0, runs=60.0)
    assert short_alert and long_alert and reason == FIRST_SPILL_REASON
    assert short_history == pytest.approx(6.0 / FIRST_SPILL_RUNS)
    assert long_history == pytest.approx(5.0)
    # At the bar on either side: the floor's 1 GB after a long history, 9 GB after the shortest history.
    assert _first_spill_decision(det, spill_mb=1_000.0, runs=60.0)[0] == pytest.approx(1.0)
    assert _first_spill_decision(det, spill_mb=9_000.0, runs=FIRST_SPILL_RUNS)[0] == pytest.approx(1.0)


def test_the_scale_of_a_sparse_signal_is_not_set_by_a_few_anomalies_of_the_holdout() -> None:
    obs, mean, q, refs = _holdout()
    rng = np.random.default_rng(2)
    n = len(mean)
    # One run in 30 waits (lognormal around 4 s, log-sd 1); the others are admitted at once.
    waits = rng.random(n) < 1 / 30
    obs["queue"] = np.where(waits, np.log1p(4_000.0 * np.exp(rng.standard_normal(n))), 0.0)
    spreads = []
    for storms in (0, 8):  # 8 of the ~670 waits are a storm's hour-long waits (anomalies in the holdout)
        held = dict(obs, queue=obs["queue"].copy())
        held["queue"][np.flatnonzero(waits)[:storms]] = np.log1p(3_600_000.0)
        det = ResidualDetector()
        det.fit(det.residuals(held, mean, q, refs), det.excess(held, det.expected(mean, refs)))
        spreads.append(det.spread_["queue"][-1])
    # The 99th percentile among the waits would jump to the storm's level; the extrapolated tail moves little.
    assert spreads[1] == pytest.approx(spreads[0], rel=0.1)
    assert det.to_dict()["params"]["one_sided"] == ["queue", "spill", "compile"]


def test_a_model_saved_before_the_first_spill_path_keeps_its_decisions() -> None:
    det = _spilling_fitted()
    state = det.to_dict()
    assert state["params"]["first_spill_runs"] == FIRST_SPILL_RUNS
    del state["params"]["first_spill_runs"]
    assert _first_spill(ResidualDetector.from_dict(state), spill_mb=2_000.0) == (False, None)
    assert _first_spill(ResidualDetector.from_dict(det.to_dict()), spill_mb=2_000.0)[0]


def test_a_model_saved_before_the_queue_and_spill_were_one_sided_keeps_its_residuals() -> None:
    det = _fitted()
    state = det.to_dict()
    del state["params"]["one_sided"]
    old = ResidualDetector.from_dict(state)
    assert old.one_sided == ("compile",)
    mean, obs, refs = _run(200.0, 200.0)
    obs["spill"] = np.log1p([10.0])  # 10 MB spilled of 100 read: below the scan, a negative residual
    assert old.residuals(obs, mean, mean + 0.45, refs)["spill"][0] < 0
    assert ResidualDetector.from_dict(det.to_dict()).residuals(obs, mean, mean + 0.45, refs)["spill"][0] == 0


def _scaled_run(det: ResidualDetector, exec_ms: float, pred_ms: float, q90_ms: float, group: int,
                p99_ms: float | None) -> bool:
    """:func:`_exec_alerts` on an instance whose 1-in-100 query takes ``p99_ms`` (None: no runtime scale)."""
    mean, obs, refs = _run(exec_ms, pred_ms, scan_mb=100_000.0)
    if p99_ms is not None:
        refs[RUNTIME_SCALE] = (np.log1p([p99_ms]), np.zeros(1))
    z = det.residuals(obs, mean, np.log1p([q90_ms]), refs)
    per_signal = det._signal_scores(z, det.excess(obs, det.expected(mean, refs)), np.array([group]))
    return bool(per_signal[det.signals.index("exec"), 0] >= 1.0)


def test_runtime_stakes_grow_with_the_heavy_work_of_the_instance() -> None:
    det = _wide_holdout_detector()
    minute = 60_000
    # 7 minutes beyond a known statement's tolerance: costly where the 1-in-100 query takes a minute
    # (5 of them are 5 minutes, under the 10-minute anchor: the fixed stakes), not where it takes 10.
    for p99, alerts in ((None, True), (1 * minute, True), (float("nan"), True), (10 * minute, False)):
        assert _scaled_run(det, 13 * minute, 5 * minute, 6 * minute, 0, p99) is alerts, p99
    # A never-seen statement 39 minutes beyond its prior (a loose one: 4.4 capped spreads, an ordinary relative
    # residual here): costly on an instance whose 1-in-100 query takes 5 minutes (25 minutes are costly
    # there), not on one whose 1-in-100 query takes an hour.
    assert _scaled_run(det, 40 * minute, 30_000, 200_000, 1, 5 * minute)
    assert not _scaled_run(det, 40 * minute, 30_000, 200_000, 1, 60 * minute)
    # runtime_scale_factor 0 (and a model saved before the scaling) keeps the fixed stakes.
    state = det.to_dict()
    assert state["params"]["runtime_scale_factor"] == 5.0
    fixed = ResidualDetector.from_dict({**state, "params": {**state["params"], "runtime_scale_factor": 0.0}})
    assert _scaled_run(fixed, 40 * minute, 30_000, 200_000, 1, 60 * minute)
    del state["params"]["runtime_scale_factor"]
    assert _scaled_run(ResidualDetector.from_dict(state), 40 * minute, 30_000, 200_000, 1, 60 * minute)


def test_a_uniformly_slower_warehouse_alerts_on_the_same_queries(tmp_path: Path) -> None:
    # Past the point where 10 minutes stop being extraordinary for its instances, a warehouse 3x slower than
    # another (every query, normal or not) is the same log in other units: the alerts must not change.
    log = generated_log(days=3, rows_per_day=6_000, instances=4, seed=4)
    split = pa.scalar(dt.datetime(2024, 3, 3, tzinfo=dt.UTC), log.schema.field("arrival_timestamp").type)
    alerts, fixed = {}, {}
    for factor in (20, 60):
        table = slower(log, factor)
        window = table.filter(pc.less(table.column("arrival_timestamp"), split))
        day = table.filter(pc.greater_equal(table.column("arrival_timestamp"), split))
        result = train_table(tmp_path / f"x{factor}", window, dt.date(2024, 3, 2), window_days=2)
        model = LoadedModel.load(ModelRegistry(tmp_path / f"x{factor}"), result.version)
        alerts[factor] = model.predict(day)["is_anomaly"]
        model.detector.runtime_scale_factor = 0.0  # the fixed stakes, for contrast
        fixed[factor] = model.predict(day)["is_anomaly"]
    # Not bit for bit: the 1 s floor and the relative path's stake weighting are absolute by design, and
    # the two versions are trained on different numbers (measured: 35 and 36 alerts, 32 of them shared).
    same = (alerts[20] & alerts[60]).sum() / (alerts[20] | alerts[60]).sum()
    assert same >= 0.75 and alerts[20].sum() >= 10
    assert abs(int(alerts[60].sum()) - int(alerts[20].sum())) <= 0.15 * alerts[20].sum()
    # With fixed stakes the 3x slower copy alerts on many more of its (identical) queries (measured: 54, 98).
    assert fixed[60].sum() > 1.5 * fixed[20].sum()


def test_a_spill_far_beyond_the_largest_of_the_statement_alerts() -> None:
    det = _spilling_fitted()
    # Spilled at most 300 MB in its 8 runs, now 6 GB of its 10 GB read (an ordinary spill among spills,
    # at its usual runtime): 20x its largest spill and 5.7 GB beyond it.
    assert _first_spill(det, spill_mb=6_000.0, largest_spill_mb=300.0) == (True, RECORD_SPILL_REASON)
    # It ranks by the weaker of its stake (GB beyond the largest) and its evidence (the record's factor
    # against RECORD_SPILL_FACTOR, in log units).
    score = _first_spill_decision(det, spill_mb=6_000.0, largest_spill_mb=300.0)[0]
    assert score == pytest.approx(np.log(6_001.0 / 301.0) / np.log(RECORD_SPILL_FACTOR))
    # 4x the largest; 6.7x but 850 MB beyond it; too short a history; a statement never seen on the instance.
    assert _first_spill(det, spill_mb=1_200.0, largest_spill_mb=300.0) == (False, None)
    assert _first_spill(det, spill_mb=1_000.0, largest_spill_mb=150.0) == (False, None)
    assert _first_spill(det, spill_mb=6_000.0, largest_spill_mb=300.0, runs=4.0) == (False, None)
    assert _first_spill(det, spill_mb=6_000.0, largest_spill_mb=300.0, group=1) == (False, None)
    # A model saved before the path keeps its decisions.
    state = det.to_dict()
    del state["params"]["record_spill_factor"]
    assert _first_spill(ResidualDetector.from_dict(state), spill_mb=6_000.0, largest_spill_mb=300.0) == (False, None)


def test_a_spill_against_a_scan_nobody_measured_gets_no_verdict() -> None:
    """A NULL mbytes_scanned read as 0 MB: every spill 'exceeded' it, and 195 of a tester's 196 spill_exceeds_scan
    alerts were such rows (Redset's serverless SELECTs lack the scan about half the time; 33rd session)."""
    from workbench.ml.detector import SCAN_KNOWN

    det = _fitted()
    mean, obs, refs = _run(200.0, 200.0, scan_mb=0.0)
    obs["spill"] = np.log1p([50_000.0])  # 50 GB spilled
    verdicts = {}
    for known in (True, False):
        observed = {**obs, SCAN_KNOWN: np.array([known])}
        z = det.residuals(observed, mean, mean + 1.2816 * 0.35, refs)
        _, alert, reason = det.decide(z, det.excess(observed, det.expected(mean, refs)))
        verdicts[known] = (bool(alert[0]), reason[0])
    assert verdicts[True] == (True, "spill_exceeds_scan")  # a measured 0 MB scan: the spill is beyond it
    assert verdicts[False][1] != "spill_exceeds_scan" and verdicts[False][1] != "scan"


def test_the_observed_signals_mark_the_rows_whose_scan_was_measured() -> None:
    import pyarrow as pa

    from workbench.ml.detector import RAN_IN_FULL, SCAN_KNOWN
    from workbench.ml.features import SIGNALS, observed_signals

    table = pa.table({column: pa.array([1, 2, 3], pa.int64()) for column in SIGNALS.values()})
    table = table.set_column(table.schema.get_field_index("mbytes_scanned"), "mbytes_scanned",
                             pa.array([5, None, 0], pa.int64()))
    observed = observed_signals(table)
    assert observed[SCAN_KNOWN].tolist() == [True, False, True]
    assert observed["scan"][1] == 0.0 and set(observed) == {*SIGNALS, SCAN_KNOWN, RAN_IN_FULL}
    # without the flags a row is not known to have run its work; a NULL flag neither
    assert observed[RAN_IN_FULL].tolist() == [False, False, False]
    flags = table.append_column("was_cached", pa.array([False, True, None])).append_column(
        "was_aborted", pa.array([False, False, False]))
    assert observed_signals(flags)[RAN_IN_FULL].tolist() == [True, False, False]
