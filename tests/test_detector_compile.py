"""The compile signal: compile time against the statement's usual compile-when-compiled time."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from workbench.ml._testing import generated_log
from workbench.ml._train import train_table
from workbench.ml.detector import ResidualDetector
from workbench.ml.features import COMPILED_MS, FeatureBuilder
from workbench.ml.scorer import Scorer

_USUAL_MS = 3_000.0


def _rows(compile_ms: np.ndarray, usual_ms: float | None,
          iqr: float = 0.67) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Queries running as predicted (200 ms) that compiled ``compile_ms``; ``usual_ms`` None: no history."""
    n = len(compile_ms)
    mean = np.full(n, np.log1p(200.0))
    obs = {"exec": mean.copy(), "queue": np.zeros(n), "scan": np.log1p(np.full(n, 100.0)), "spill": np.zeros(n),
           "compile": np.log1p(compile_ms)}
    level = np.log1p(np.full(n, _USUAL_MS if usual_ms is None else usual_ms))
    refs = {"queue": (np.zeros(n), np.zeros(n)), "scan": (np.log1p(np.full(n, 100.0)), np.full(n, 0.3)),
            "spill": (np.zeros(n), np.zeros(n)), "exec": (mean, np.full(n, 0.5)),
            "compile": (level, np.full(n, np.nan if usual_ms is None else iqr))}
    return obs, mean, mean + 1.2816 * 0.35, refs


@pytest.fixture(scope="module")
def det() -> ResidualDetector:
    """Calibrated on statements that compile one run in five (~3 s, log-sd 0.5) and hit the cache otherwise."""
    rng = np.random.default_rng(0)
    n = 20_000
    compiled = rng.random(n) < 0.2
    compile_ms = np.where(compiled, _USUAL_MS * np.exp(0.5 * rng.standard_normal(n)), rng.integers(0, 6, n))
    obs, mean, q, refs = _rows(compile_ms, _USUAL_MS)
    obs["exec"] = mean + 0.35 * rng.standard_normal(n)
    d = ResidualDetector()
    d.fit(d.residuals(obs, mean, q, refs), d.excess(obs, d.expected(mean, refs)))
    return d


def _decide(det: ResidualDetector, compile_ms: list[float], usual_ms: float | None) -> tuple:
    obs, mean, q, refs = _rows(np.array(compile_ms, dtype=float), usual_ms)
    expected = det.expected(mean, refs)
    excess = det.excess(obs, expected)
    score, alert, reason = det.decide(det.residuals(obs, mean, q, refs), excess)
    return score, alert, reason, expected["compile"], excess["compile"]


def test_a_compile_blow_up_alerts_with_its_evidence(det: ResidualDetector) -> None:
    # 30x the usual 3 s (a cold segment cache): 87 s of extra compilation.
    score, alert, reason, expected, excess = _decide(det, [90_000.0], _USUAL_MS)
    assert alert[0] and reason[0] == "slow_compile" and score[0] > 1
    assert expected[0] == pytest.approx(_USUAL_MS)
    assert excess[0] == pytest.approx(87_000.0)


def test_ordinary_compilations_and_cache_hits_stay_quiet(det: ResidualDetector) -> None:
    score, alert, _, _, _ = _decide(det, [0.0, 3.0, 3_000.0, 6_000.0], _USUAL_MS)
    assert not alert.any() and (score < 1).all()


def test_sub_floor_compile_noise_never_alerts(det: ResidualDetector) -> None:
    # 40x a statement's usual 20 ms is still under a second of extra compilation.
    score, alert, _, _, excess = _decide(det, [800.0], 20.0)
    assert not alert[0] and score[0] < 1 and excess[0] < 1_000
    # The same surprise worth seconds alerts.
    assert _decide(det, [40 * 200.0 + 5_000], 200.0)[1][0]


def test_without_compile_history_the_prior_is_expected_but_gives_no_verdict(det: ResidualDetector) -> None:
    _, alert, _, expected, excess = _decide(det, [20 * 60_000.0], None)
    assert expected[0] == pytest.approx(_USUAL_MS)  # the instance prior
    assert excess[0] > 600_000 and not alert[0]


def _with_compile(table: pa.Table, values: np.ndarray) -> pa.Table:
    idx = table.schema.get_field_index("compile_duration_ms")
    return table.set_column(idx, table.schema.field(idx), pa.array(values.astype(np.int64)))


def test_references_use_compiled_runs_and_fall_back_to_the_instance_prior() -> None:
    log = generated_log(days=1, rows_per_day=4000, seed=3)
    inst = log.column("instance_id").to_numpy()
    fp = np.asarray(log.column("feature_fingerprint").to_pylist(), dtype=object)
    keys, counts = np.unique(np.char.add(inst.astype(str), fp.astype(str)), return_counts=True)
    busiest = keys[np.argmax(counts)]
    mine = np.char.add(inst.astype(str), fp.astype(str)) == busiest
    assert mine.sum() >= 20
    compile_ms = log.column("compile_duration_ms").to_numpy().astype(float)
    # The statement compiles one run in four (5 s); the other runs hit the cache (0 ms).
    compile_ms[mine] = np.where(np.arange(mine.sum()) % 4 == 0, 5_000.0, 0.0)
    table = _with_compile(log, compile_ms)
    builder = FeatureBuilder().fit(table)
    level, iqr = builder.references(table)["compile"]
    assert np.expm1(level[mine]) == pytest.approx(5_000.0)  # its compiled level, not the cache hits' 0
    assert np.isfinite(iqr[mine]).all()

    unseen = table.slice(int(np.flatnonzero(mine)[0]), 1)
    unseen = unseen.set_column(unseen.schema.get_field_index("feature_fingerprint"), "feature_fingerprint",
                               pa.array(["never-seen"], unseen.schema.field("feature_fingerprint").type))
    level, iqr = builder.references(unseen)["compile"]
    same = inst == inst[mine][0]
    compiled = compile_ms[same][compile_ms[same] >= COMPILED_MS]
    assert level[0] == pytest.approx(np.median(np.log1p(compiled)))  # the instance's compiled runs
    assert np.isnan(iqr[0])


def test_scorer_names_slow_compile_with_its_evidence(tmp_path: Path) -> None:
    log = generated_log(days=2, rows_per_day=3000, seed=5)
    train_table(tmp_path / "models", log.slice(0, 3000), dt.date(2024, 3, 1), window_days=1)
    scorer = Scorer(tmp_path / "models", background=False)
    batch = log.slice(3000, 500)
    before = pc.fill_null(scorer.score(batch).column("is_anomaly"), False).to_numpy(zero_copy_only=False)
    version = next((tmp_path / "models" / "versions").iterdir())
    builder = FeatureBuilder.load(version, json.loads((version / "model.json").read_text())["features"])
    level, iqr = builder.references(batch)["compile"]
    # A quiet row whose compile time is judged against its own fingerprint's compiled runs.
    candidates = np.flatnonzero(np.isfinite(iqr) & ~before)
    assert len(candidates), "the batch must hold a statement with compile history"
    i = int(candidates[0])
    compile_ms = batch.column("compile_duration_ms").to_numpy().astype(float)
    compile_ms[i] = np.expm1(level[i]) * 100 + 60_000
    out = scorer.score(_with_compile(batch, compile_ms))
    row = {n: out.column(n)[i].as_py() for n in out.schema.names}
    assert row["is_anomaly"] and row["reason"] == "slow_compile" and row["evidence_signal"] == "compile"
    assert row["evidence_unit"] == "ms" and row["observed_value"] == pytest.approx(compile_ms[i], rel=1e-6)
    assert row["expected_value"] == pytest.approx(np.expm1(level[i]), rel=1e-6)
    assert row["excess_value"] == pytest.approx(row["observed_value"] - row["expected_value"])
    assert row["reference"] == "its usual compile time when it compiles, from this statement's own runs"
