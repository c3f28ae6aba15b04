"""Per reference source calibration: each group's own threshold, and the global prior's group calibrated on
the holdout re-read as a never-seen instance."""

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
from workbench.ml.features import REFERENCE_SOURCES, FeatureBuilder, as_never_seen_instance
from workbench.ml.scorer import Scorer

RATE = 0.001


def _traffic(rng: np.random.Generator, n0: int, n1: int) -> tuple[dict, dict, np.ndarray]:
    """Runtime residuals of known statements (group 0: normal) and never-seen ones (group 1: an exponential,
    heavier tail, as a prior's misses have), each run 10-100 s over its expectation (above the 1 s floor)."""
    z = np.concatenate([rng.standard_normal(n0), rng.laplace(0.0, 0.8, n1)])
    excess = rng.uniform(10_000.0, 100_000.0, n0 + n1)
    return {"exec": z}, {"exec": excess}, np.repeat([0, 1], [n0, n1])


def _rates(det: ResidualDetector, rng: np.random.Generator) -> list[float]:
    z, e, g = _traffic(rng, 200_000, 200_000)
    _, alert, _ = det.decide(z, e, g)
    return [float(alert[g == k].mean()) for k in (0, 1)]


def test_each_group_alerts_on_about_the_target_rate_of_its_own_rows() -> None:
    rng = np.random.default_rng(0)
    det = ResidualDetector(alert_rate=RATE, signals=("exec",)).fit(*_traffic(rng, 40_000, 15_000))
    known, never_seen = _rates(det, np.random.default_rng(1))
    assert never_seen == pytest.approx(RATE, rel=0.3)
    assert known <= RATE  # an exponential tail extrapolated from q95 and q99 is conservative for a normal one
    # One pooled bar (a model saved before per-group thresholds) lets the heavier tail through more often.
    state = det.to_dict()
    del state["group_threshold"]
    _, pooled_never_seen = _rates(ResidualDetector.from_dict(state), np.random.default_rng(1))
    assert pooled_never_seen > 1.4 * never_seen


def test_group_only_rows_calibrate_their_own_group_and_nothing_else() -> None:
    rng = np.random.default_rng(2)
    z, e, g = _traffic(rng, 40_000, 15_000)
    alone = ResidualDetector(alert_rate=RATE, signals=("exec",)).fit(z, e, g)
    wide = {"exec": 3.0 * rng.standard_normal(20_000)}  # the global prior's misses: three times as wide
    extra = (wide, {"exec": np.full(20_000, 50_000.0)}, np.full(20_000, 2))
    det = ResidualDetector(alert_rate=RATE, signals=("exec",)).fit(z, e, g, group_only=extra)
    assert det.n_groups == 3
    assert det.spread_["exec"][:2] == alone.spread_["exec"][:2]
    assert det.spread_["exec"][-1] == alone.spread_["exec"][-1]  # the pooled entry: the real rows only
    assert det.spread_["exec"][2] == pytest.approx(3 * alone.spread_["exec"][0], rel=0.15)
    assert det.threshold_ == alone.threshold_
    assert det.group_threshold_[:2] == alone.group_threshold_[:2]
    # A run 2.5 times the known statements' 1-in-100 residual: an alert as a known statement, not on the
    # global prior, whose 1-in-100 is three times as far out.
    row = ({"exec": np.array([2.5 * alone.spread_["exec"][0]] * 2)}, {"exec": np.array([50_000.0] * 2)})
    assert det.decide(*row, np.array([0, 2]))[1].tolist() == [True, False]
    with pytest.raises(ValueError, match="group_only"):
        ResidualDetector(signals=("exec",)).fit(z, e, g, group_only=(wide, None, extra[2]))


def test_as_never_seen_instance_reads_every_row_with_the_global_prior() -> None:
    log = generated_log(days=1, rows_per_day=3000, seed=4)
    builder = FeatureBuilder().fit(log)
    moved = as_never_seen_instance(log)
    assert pc.unique(moved.column("instance_id")).to_pylist() == [pc.max(log.column("instance_id")).as_py() + 1]
    assert moved.drop_columns(["instance_id"]).equals(log.drop_columns(["instance_id"]))
    assert set(REFERENCE_SOURCES[builder.reference_source(log)]) != {"global"}
    assert set(REFERENCE_SOURCES[builder.reference_source(moved)]) == {"global"}
    # The rows of a holdout may lack an instance its builder knows (ids 1..4, the holdout without 4): the id
    # is unused by the builder's instances too, not the holdout's largest plus one.
    dense = np.unique(log.column("instance_id").to_numpy(), return_inverse=True)[1] + 1
    renumbered = log.set_column(log.schema.get_field_index("instance_id"), "instance_id", pa.array(dense, pa.int64()))
    fitted = FeatureBuilder().fit(renumbered)
    without = renumbered.filter(pa.array(dense < dense.max()))
    assert set(REFERENCE_SOURCES[fitted.reference_source(as_never_seen_instance(without))]) != {"global"}
    moved = fitted.as_never_seen_instance(without)
    assert pc.unique(moved.column("instance_id")).to_pylist() == [int(dense.max()) + 1]
    assert set(REFERENCE_SOURCES[fitted.reference_source(moved)]) == {"global"}
    # Ids from another tool may reach the end of the type: the unused id is then one below the smallest.
    top = np.iinfo(np.int64).max
    edge = log.set_column(log.schema.get_field_index("instance_id"), "instance_id",
                          pa.array(np.where(np.arange(log.num_rows) % 2, top, 7), pa.int64()))
    assert pc.unique(as_never_seen_instance(edge).column("instance_id")).to_pylist() == [6]


def test_training_calibrates_the_global_prior_on_the_holdout_as_a_never_seen_instance(tmp_path: Path) -> None:
    log = generated_log(days=3, rows_per_day=4000, seed=5)
    result = train_table(tmp_path / "m", log, dt.date(2024, 3, 3), window_days=3)
    state = json.loads((tmp_path / "m" / "versions" / result.version / "model.json").read_text())["detector"]
    det = ResidualDetector.from_dict(state)
    glob = int(np.flatnonzero(REFERENCE_SOURCES == "global")[0])
    assert det.n_groups == glob + 1
    assert len(state["group_threshold"]) == det.n_groups + 1
    # The global prior's misses are wider than the pool's: its runtime spread is its own, not the pool's.
    assert det.spread_["exec"][glob] != det.spread_["exec"][-1]


def test_instance_ids_at_the_ends_of_int64_are_kept_apart(tmp_path: Path) -> None:
    """Another tool's instance ids may be 64-bit hashes: read through float64 they rounded together (two
    instances became one, and training failed on the merged table); they are only keys, so the same log
    under such ids scores exactly as under small ones."""
    log = generated_log(days=2, rows_per_day=3000, instances=4, seed=9)
    ids = log.column("instance_id").to_numpy()
    top, bottom = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    scores = []
    for name, values in (("small", [1, 2, 3, 4]), ("wide", [top, bottom, top - 1, bottom + 1])):
        mapped = np.asarray(values, dtype=np.int64)[np.unique(ids, return_inverse=True)[1]]
        table = log.set_column(log.schema.get_field_index("instance_id"), "instance_id", pa.array(mapped))
        train_table(tmp_path / name, table.slice(0, 3000), dt.date(2024, 3, 1), window_days=1)
        scored = Scorer(tmp_path / name, background=False).score(table.slice(3000))
        scores.append(scored.column("score").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(scores[0], scores[1])
