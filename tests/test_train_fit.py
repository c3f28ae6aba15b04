"""The training's speed paths give the same numbers as the plain ones, and stay a function of the inputs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from workbench.data.schema import COLUMNS
from workbench.ml._testing import generated_log
from workbench.ml._train import _split_rows, split_window, table_sha256, train_table
from workbench.ml.features import (
    FEATURE_NAMES,
    SIGNALS,
    FeatureBuilder,
    _group_order,
    _out_of_fold_stats,
    _sorted_stats,
    _stats,
)
from workbench.ml.models import DurationModel, OnnxPair, export_onnx, parity_max_abs_diff
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel


@pytest.fixture(scope="module")
def log() -> pa.Table:
    return generated_log(days=1, rows_per_day=4000, seed=11)


@pytest.mark.parametrize("groups", [300, 1 << 16, (1 << 16) + 1, 200_000, (1 << 32) + 7])
def test_group_order_is_the_stable_sort_by_code_of_the_value_order(groups: int) -> None:
    rng = np.random.default_rng(groups)
    n = 50_000  # with 200k groups most codes share their low 16 bits with another group's
    codes = np.concatenate([rng.integers(0, groups, n - 4), [0, 1, groups - 1, (groups - 1) & 0xFFFF]])
    value_order = np.argsort(np.round(rng.exponential(2.0, n), 1))  # ties in the values
    want = value_order[np.argsort(codes[value_order].astype(np.int64), kind="stable")]
    np.testing.assert_array_equal(_group_order(codes, value_order, groups), want)


def test_sorted_stats_of_a_fold_equal_stats_of_its_rows() -> None:
    rng = np.random.default_rng(0)
    n, groups = 5000, 300  # some groups empty, some with one row, ties in the values
    codes = rng.integers(0, groups, n)
    logs = {s: np.round(rng.exponential(2.0, n), 1) for s in SIGNALS}
    rows = np.arange(n)
    orders = {s: rows[np.lexsort((v, codes))] for s, v in logs.items()}
    keep = rng.random(n) < 0.8  # filtering a sorted order keeps it sorted (what the fold statistics rely on)
    got = _sorted_stats(codes, logs, {s: o[keep[o]] for s, o in orders.items()}, groups + 5)
    want = _stats(codes[keep], {s: v[keep] for s, v in logs.items()}, groups + 5)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    full = _sorted_stats(codes, logs, orders, groups)
    for name, values in _stats(codes, logs, groups).items():
        np.testing.assert_array_equal(full[name], values)


def test_out_of_fold_stats_equal_stats_of_the_other_folds_rows() -> None:
    rng = np.random.default_rng(1)
    n, groups, n_folds = 6000, 400, 5  # rows without a group (-1), groups held by one fold only, ties
    codes = np.where(rng.random(n) < 0.1, -1, rng.integers(0, groups, n))
    logs = {s: np.round(rng.exponential(2.0, n), 1) for s in SIGNALS}
    folds = rng.integers(0, n_folds, n)
    grouped = np.flatnonzero(codes >= 0)
    orders = {s: _group_order(codes, o[codes[o] >= 0], groups) for s, o in
              ((s, np.argsort(v)) for s, v in logs.items())}
    for s, order in orders.items():  # the radix re-sort gives the (code, value) order of a lexsort
        want = grouped[np.lexsort((logs[s][grouped], codes[grouped]))]
        np.testing.assert_array_equal(codes[order], codes[want])
        np.testing.assert_array_equal(logs[s][order], logs[s][want])
    got = _out_of_fold_stats(codes, logs, orders, groups, folds, n_folds, np.arange(n))
    for k in range(n_folds):
        other = grouped[folds[grouped] != k]
        want = _stats(codes[other], {s: v[other] for s, v in logs.items()}, groups)
        assert list(got) == list(want)
        rows = grouped[folds[grouped] == k]
        for name, values in want.items():
            np.testing.assert_array_equal(got[name][rows], values[codes[rows]])
    assert all(np.isnan(values[codes < 0]).all() for values in got.values())
    # Statistics of some rows only (any order, repeats): the same values, every row still counted.
    targets = rng.choice(n, 900)
    some = _out_of_fold_stats(codes, logs, orders, groups, folds, n_folds, targets)
    for name, values in got.items():
        np.testing.assert_array_equal(some[name], values[targets])


def test_transforming_the_sample_only_equals_the_sample_of_the_full_matrix(log: pa.Table) -> None:
    table = log.select([c for c in log.column_names if c in COLUMNS])
    # Some rows without a fingerprint and some fingerprints run once (unseen out of fold).
    fp = np.asarray(table.column("feature_fingerprint").to_pylist(), dtype=object)
    fp[::97] = None
    fp[5::89] = [f"once-{i}" for i in range(len(fp[5::89]))]
    table = table.set_column(table.schema.get_field_index("feature_fingerprint"), "feature_fingerprint",
                             pa.array(fp.tolist(), pa.string()))
    train, _, history, _ = _split_rows(table, max_rows=1500, seed=3, holdout_fraction=0.15)
    fitted = table.take(history)
    rows = np.searchsorted(history, train)
    full, sampled = FeatureBuilder(seed=3), FeatureBuilder(seed=3)
    want = full.fit_transform(fitted)[rows]  # the plain path: every history row transformed
    got = sampled.fit_transform(fitted, rows)
    assert got.dtype == want.dtype and got.shape == (len(train), len(FEATURE_NAMES))
    assert got.tobytes() == want.tobytes()  # bit-identical, not only close
    assert got[:, FEATURE_NAMES.index("fp_is_missing")].any() and got[:, FEATURE_NAMES.index("fp_is_unseen")].any()
    for stored in ("fp_table_", "instance_table_"):  # hashed: Table.equals says NaN != NaN
        assert table_sha256(getattr(full, stored)) == table_sha256(getattr(sampled, stored))
    assert full.global_ == sampled.global_ and full.categories_ == sampled.categories_
    np.testing.assert_array_equal(sampled.fit_transform(fitted, np.arange(fitted.num_rows)),
                                  full.fit_transform(fitted))  # all rows asked for = the default


def test_split_window_caps_rows_and_keeps_only_usable_ones(log: pa.Table) -> None:
    aborted = np.zeros(log.num_rows, dtype=bool)
    aborted[::7] = True
    idx = log.schema.get_field_index("was_aborted")
    table = log.set_column(idx, log.schema.field(idx), pa.array(aborted))
    train, hold, usable = split_window(table, max_rows=2000, seed=3)
    assert usable == int((~aborted).sum())
    assert train.num_rows + hold.num_rows == 2000 and hold.num_rows > 0
    assert not any(train.column("was_aborted").to_pylist()) and not any(hold.column("was_aborted").to_pylist())
    again = split_window(table, max_rows=2000, seed=3)
    assert again[0].equals(train) and again[1].equals(hold)
    other = split_window(table, max_rows=2000, seed=4)
    assert not other[0].equals(train)  # the seed picks the sample


def test_a_window_without_usable_rows_is_refused_saying_what_usable_means(log: pa.Table, tmp_path: Path) -> None:
    from workbench.ml.exceptions import TrainingError

    idx = log.schema.get_field_index("execution_duration_ms")
    no_runtime = log.set_column(idx, log.schema.field(idx), pa.nulls(log.num_rows, pa.int64()))
    with pytest.raises(TrainingError, match=rf"500 usable rows \(not aborted, with an execution_duration_ms\) "
                                            rf"in the 1-day window of {log.num_rows} rows; got 0"):
        train_table(tmp_path / "models", no_runtime, dt.date(2024, 3, 4), window_days=1)
    assert not any((tmp_path / "models").glob("v*"))  # nothing registered


def test_row_caps_sample_deterministically_and_parity_reuses_onnx_predictions() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6000, 5)).astype(np.float32)
    y = X[:, 0] * 2 + rng.normal(scale=0.3, size=6000)
    params = {"max_iter": 20, "mean_max_rows": 3000, "quantile_max_rows": 2000, "random_state": 4}
    a, b = DurationModel(**params).fit(X, y), DurationModel(**params).fit(X, y)
    assert a.mean_._n_features == 5
    blobs = [export_onnx(m.mean_, 5) + export_onnx(m.quantile_model_, 5) for m in (a, b)]
    assert blobs[0] == blobs[1]  # same inputs, same bytes
    c = DurationModel(**{**params, "random_state": 5}).fit(X, y)
    assert export_onnx(c.mean_, 5) != export_onnx(a.mean_, 5)
    pair = OnnxPair(export_onnx(a.mean_, 5), export_onnx(a.quantile_model_, 5))
    onnx_log = pair.predict_log(X[:500])
    assert parity_max_abs_diff(a, pair, X[:500], onnx_log=onnx_log) == parity_max_abs_diff(a, pair, X[:500])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_concurrent_fits_give_the_onnx_bytes_of_sequential_fits(n_threads: int) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    from workbench.ml.models import _snap_thresholds_to_float32

    rng = np.random.default_rng(2)
    X = rng.normal(size=(20_000, 6)).astype(np.float32)
    y = X[:, 0] * 2 + np.abs(X[:, 1]) * rng.exponential(size=20_000)
    params = {"max_iter": 40, "mean_max_rows": 12_000, "quantile_max_rows": 16_000, "n_threads": n_threads,
              "random_state": 5}
    X_val, y_val = X[:3000] + np.float32(0.1), y[:3000]  # early stopping on given rows, as training does
    model = DurationModel(**params).fit(X, y, X_val=X_val, y_val=y_val)
    got = [export_onnx(model.mean_, 6), export_onnx(model.quantile_model_, 6)]
    want = []
    with threadpool_limits(limits=n_threads, user_api="openmp"):  # the plain sequential fits, one by one
        for loss, cap in ((dict(loss="squared_error", learning_rate=0.1), 12_000),
                          (dict(loss="quantile", quantile=0.9, learning_rate=0.2), 16_000)):
            rows = np.sort(np.random.default_rng(5).choice(len(y), cap, replace=False))
            est = HistGradientBoostingRegressor(
                max_iter=40, max_leaf_nodes=31, min_samples_leaf=50, l2_regularization=0.1,
                early_stopping=True, n_iter_no_change=10, tol=1e-4, random_state=5, **loss,
            ).fit(X[rows], y[rows], X_val=X_val, y_val=y_val)
            _snap_thresholds_to_float32(est)
            want.append(export_onnx(est, 6))
    assert got == want


def test_thread_count_does_not_change_the_models() -> None:
    # DurationModel splits the cores between its two concurrent fits: the trees must not depend on it.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12_000, 6)).astype(np.float32)
    y = X[:, 0] * 2 + np.abs(X[:, 1]) * rng.exponential(size=12_000)
    blobs = []
    for n_threads in (1, 2):
        model = DurationModel(max_iter=15, n_threads=n_threads, random_state=1).fit(X, y, X_val=X[:2000],
                                                                                   y_val=y[:2000])
        blobs.append((export_onnx(model.mean_, 6), export_onnx(model.quantile_model_, 6)))
    assert blobs[0] == blobs[1]


def test_history_counts_every_run_outside_the_holdout_hours_not_only_the_sample(log: pa.Table) -> None:
    table = log.select([c for c in log.column_names if c in COLUMNS])
    train, hold, history, usable = _split_rows(table, max_rows=1500, seed=3, holdout_fraction=0.15)
    assert len(train) + len(hold) == 1500 < usable
    assert np.isin(train, history).all() and not np.isin(hold, history).any()
    hours = table.column("arrival_timestamp").cast(pa.int64()).to_numpy() // 3_600_000_000
    assert set(hours[hold]).isdisjoint(hours[history])  # no run of a holdout hour leaks into the history
    ran = table.column("execution_duration_ms").is_valid().to_numpy(zero_copy_only=False) & \
        ~table.column("was_aborted").fill_null(False).to_numpy(zero_copy_only=False)
    in_hold_hours = np.isin(hours, list(set(hours[hold])))
    np.testing.assert_array_equal(history, np.flatnonzero(ran & ~in_hold_hours))  # the unsampled rows too
    full = _split_rows(table, max_rows=10**9, seed=3, holdout_fraction=0.15)
    np.testing.assert_array_equal(full[2], full[0])  # without a cap the history is the training rows


def test_a_fingerprint_thinned_by_the_sample_keeps_its_own_history(log: pa.Table, tmp_path: Path) -> None:
    table = log.select([c for c in log.column_names if c in COLUMNS])
    _, _, history, _ = _split_rows(table, max_rows=1500, seed=0, holdout_fraction=0.15)
    result = train_table(tmp_path / "models", table, dt.date(2024, 3, 1), window_days=1, max_rows=1500)
    assert result.meta["rows"]["history"] == len(history) > result.meta["rows"]["trained"]
    model = LoadedModel.load(ModelRegistry(tmp_path / "models"), result.version)
    stored = model.features.fp_table_.to_pandas().set_index(["instance_id", "feature_fingerprint"])["n"]
    runs = table.take(history).to_pandas().groupby(["instance_id", "feature_fingerprint"]).size()
    assert (stored.reindex(runs.index) == runs).all()  # every run counted, not the ~40 % sampled
    # A fingerprint seen min_history times in the window is judged against its own history.
    known = runs[runs >= 3].index[0]
    row = table.filter(pc.and_(pc.equal(table.column("instance_id"), known[0]),
                               pc.equal(table.column("feature_fingerprint"), known[1]))).slice(0, 1)
    assert model.features.transform_with_evidence(row)[2][0] == 0  # source: its fingerprint


def test_a_log_that_repeats_queries_is_read_with_each_query_once_and_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """train, evaluate and profile took a log that repeats queries (validate refuses it) as given: the
    repeats weighed twice in the fit and counted twice in the metrics, unlike the stream's shards."""
    import logging

    import pyarrow.parquet as pq

    from tests.helpers import make_log
    from workbench.ml._train import load_log_window

    log = make_log(tmp_path / "log.parquet", rows=400)
    table = pq.read_table(log)
    doubled = pa.concat_tables([table, table.slice(10, 3)])  # three queries again, later in the file
    pq.write_table(doubled, tmp_path / "repeats.parquet")
    day = table.column("arrival_timestamp")[0].as_py().date()
    with caplog.at_level(logging.WARNING, logger="workbench.ml._train"):
        read = load_log_window(tmp_path / "repeats.parquet", day, 1)
    assert read.num_rows == 400 and read.column("query_id").equals(table.column("query_id"))
    assert "repeats 3 queries" in caplog.text and f"query_id {table.column('query_id')[10].as_py()}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workbench.ml._train"):
        assert load_log_window(log, day, 1).num_rows == 400
    assert "repeats" not in caplog.text
