"""Features, ONNX parity, registry (atomic publish, rollback), scorer hot swap, rescoring shards."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from workbench.analysis.slower_groups import USUAL_HOURS_SCHEMA
from workbench.data.schema import COLUMNS
from workbench.ml._testing import generated_log
from workbench.ml._train import train_table
from workbench.ml.detector import ALERT_REASONS, ResidualDetector
from workbench.ml.exceptions import ColumnMismatchError, ModelNotFoundError, NotFittedError, ParityError
from workbench.ml.features import FEATURE_NAMES, FeatureBuilder
from workbench.ml.models import DurationModel, OnnxPair, export_onnx, parity_max_abs_diff
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import USUAL_HOURS_FILE, LoadedModel, Scorer
from workbench.store.shards import SCORE_FIELDS, SHARD_SCHEMA, ShardError, read_shards, rescore_unscored, write_shard

DAY1, DAY2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


@pytest.fixture(scope="module")
def log() -> pa.Table:
    return generated_log(days=3, rows_per_day=3300, seed=7)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, log: pa.Table) -> Path:
    root = tmp_path_factory.mktemp("models")
    train_table(root, log.slice(0, 3000), DAY1, window_days=1)
    return root


# --- features -------------------------------------------------------------------------------
def test_features_are_float32_deterministic_and_out_of_fold(log: pa.Table) -> None:
    a = FeatureBuilder(seed=3).fit_transform(log)
    b = FeatureBuilder(seed=3).fit_transform(log)
    assert a.dtype == np.float32 and a.shape == (log.num_rows, len(FEATURE_NAMES))
    np.testing.assert_array_equal(a, b)
    # A fingerprint seen once has no out-of-fold history, so its own runtime cannot leak.
    single = log.slice(0, 1)
    idx = single.schema.get_field_index("feature_fingerprint")
    single = single.set_column(idx, single.schema.field(idx), pa.array(["f" * 64]))
    X = FeatureBuilder().fit_transform(pa.concat_tables([log, single]))
    assert X[-1, FEATURE_NAMES.index("fp_med_log_exec")] == -1.0
    assert X[-1, FEATURE_NAMES.index("fp_is_unseen")] == 1.0


def test_table_counts_and_missing_indicators(log: pa.Table) -> None:
    fb = FeatureBuilder().fit(log)
    t = log.slice(0, 3)
    t = t.set_column(t.schema.get_field_index("read_table_ids"), "read_table_ids", pa.array(["1,2,3", "", None]))
    t = t.set_column(t.schema.get_field_index("cluster_size"), "cluster_size", pa.array([None, 4, 8], pa.int64()))
    X = fb.transform(t)
    assert X[:, FEATURE_NAMES.index("read_table_count")].tolist() == [3.0, 0.0, 0.0]
    assert X[:, FEATURE_NAMES.index("cluster_size_is_missing")].tolist() == [1.0, 0.0, 0.0]
    assert X[0, FEATURE_NAMES.index("cluster_size")] == -1.0


def test_reference_source_alone_matches_the_full_transform(log: pa.Table) -> None:
    fb = FeatureBuilder().fit(log.slice(0, 6600))
    rows = log.slice(6600, 500)
    fp = rows.schema.get_field_index("feature_fingerprint")
    inst = rows.schema.get_field_index("instance_id")
    unseen_fp = rows.slice(0, 5).set_column(fp, rows.schema.field(fp), pa.array(["f" * 64] * 5))
    unseen_inst = rows.slice(5, 5).set_column(inst, rows.schema.field(inst), pa.array([10**9] * 5, pa.int64()))
    rows = pa.concat_tables([rows, unseen_fp, unseen_inst])
    _, _, expected = fb.transform_with_evidence(rows)
    source = fb.reference_source(rows.select(["instance_id", "feature_fingerprint"]))
    np.testing.assert_array_equal(source, expected)
    assert set(np.unique(source)) == {0, 1, 2}  # every source occurs: the comparison covers each branch
    with pytest.raises(ColumnMismatchError, match="feature_fingerprint"):
        fb.reference_source(rows.select(["instance_id"]))
    # the usual wait alone, for a settled day's slower groups, is the detector's queue reference
    usual = fb.queue_reference(rows.select(["instance_id", "feature_fingerprint"]))
    np.testing.assert_array_equal(usual, fb.references(rows)["queue"][0])
    assert np.isfinite(usual).all() and len(np.unique(usual)) >= 2  # (mostly the instances' ordinary waits)
    with pytest.raises(ColumnMismatchError, match="feature_fingerprint"):
        fb.queue_reference(rows.select(["instance_id"]))


def test_column_mismatch_lists_missing_and_unseen(log: pa.Table) -> None:
    fb = FeatureBuilder().fit(log)
    renamed = log.rename_columns([c.upper() if c.startswith("num_") else c for c in log.column_names])
    with pytest.raises(ColumnMismatchError) as info:
        fb.transform(renamed)
    err = info.value
    assert "num_joins" in err.missing and "NUM_JOINS" in err.unseen
    text = str(err)
    assert "Missing (6)" in text and "Unseen at fit time" in text and ", ..." in text
    assert text.count("'num_") == 5  # at most five names shown per list


def test_a_training_log_that_is_missing_or_not_parquet_is_named_in_a_clear_error(tmp_path: Path) -> None:
    from workbench.data.exceptions import DataValidationError
    from workbench.ml._train import load_log_window

    day = dt.date(2024, 3, 4)
    with pytest.raises(DataValidationError, match=r"'.*missing\.parquet' does not exist"):
        load_log_window(tmp_path / "missing.parquet", day, 1)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "garbage.parquet").write_bytes(b"not parquet at all")
    garbage = tmp_path / "parts" / "garbage.parquet"
    for path in (garbage, tmp_path / "parts"):  # a folder's bad file is named itself
        with pytest.raises(DataValidationError, match=r"garbage\.parquet' is not a readable Parquet file") as caught:
            load_log_window(path, day, 1)
        assert caught.value.path == str(garbage)


def test_not_fitted_errors_name_the_method() -> None:
    with pytest.raises(NotFittedError, match="call 'fit'"):
        FeatureBuilder().transform(pa.table({"a": [1]}))
    with pytest.raises(NotFittedError, match="'fit'"):
        DurationModel().predict_log(np.zeros((1, 3)))
    with pytest.raises(NotFittedError, match="'fit'"):
        ResidualDetector().decide({})


# --- ONNX parity ------------------------------------------------------------------------------
def test_onnx_matches_sklearn(log: pa.Table) -> None:
    X = FeatureBuilder().fit_transform(log)
    y = np.log1p(log.column("execution_duration_ms").to_numpy().astype(float))
    model = DurationModel(max_iter=40).fit(X, y)
    pair = OnnxPair(export_onnx(model.mean_, X.shape[1]), export_onnx(model.quantile_model_, X.shape[1]))
    assert parity_max_abs_diff(model, pair, X[:2000], tolerance=1e-3) < 1e-4
    with pytest.raises(ParityError, match="tolerance"):
        parity_max_abs_diff(model, pair, X[:2000], tolerance=-1.0)


def test_model_json_records_version_metadata(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
    version = registry.current()
    assert version == "v0001-2024-03-01"
    meta = registry.info(version)
    for key in ("parent", "window_days", "rows", "feature_list", "hyper_parameters", "library_versions",
                "files", "training_seconds", "holdout_metrics", "parity_max_abs_diff"):
        assert key in meta, key
    assert meta["parity_max_abs_diff"] < 1e-3
    assert set(meta["files"]) == {"mean.onnx", "quantile.onnx", "fingerprint_stats.parquet",
                                  "instance_stats.parquet", USUAL_HOURS_FILE}
    registry.verify(version)
    usual = LoadedModel.load(registry, version).usual_hours  # the groups' usual hours, with the version
    assert list(usual.columns) == [*USUAL_HOURS_SCHEMA.names, "model_version"]
    assert (usual["model_version"] == version).all() and (usual["excess"] > 0).all()


# --- registry, scorer, hot swap -------------------------------------------------------------
def test_publish_rollback_and_hot_swap_mid_stream(tmp_path: Path, log: pa.Table) -> None:
    models = tmp_path / "models"
    registry = ModelRegistry(models)
    scorer = Scorer(models)
    batches = log.slice(6000).to_batches(max_chunksize=500)
    unscored = scorer.score(batches[0])
    assert unscored.column("model_version").null_count == unscored.num_rows
    v1 = train_table(models, log.slice(0, 3000), DAY1, window_days=1).version
    seen = [scorer.score(b).column("model_version")[0].as_py() for b in batches[1:3]]
    v2 = train_table(models, log.slice(0, 6000), DAY2, window_days=2).version
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the stream keeps flowing while v2 loads in the background
        seen.append(scorer.score(batches[3]).column("model_version")[0].as_py())
        if seen[-1] == v2:
            break
        time.sleep(0.01)
    assert seen[:2] == [v1, v1] and seen[-1] == v2
    assert seen == sorted(seen)  # never back to v1 once v2 is in use
    assert registry.info(v2)["parent"] == v1
    registry.rollback(v1)
    scorer.score(batches[-1])
    assert scorer.wait_for_swap() == v1  # v1 was cached: the swap is immediate
    assert scorer.score(batches[-1]).column("model_version")[0].as_py() == v1
    assert registry.versions() == [v1, v2]
    with pytest.raises(ModelNotFoundError, match="Known versions"):
        registry.set_current("v0009-2024-01-01")
    assert registry.current() == v1


def test_failed_training_leaves_no_version_and_keeps_current(tmp_path: Path, log: pa.Table) -> None:
    models = tmp_path / "models"
    v1 = train_table(models, log.slice(0, 3000), DAY1, window_days=1).version
    with pytest.raises(ParityError):
        train_table(models, log.slice(0, 6000), DAY2, parity_tolerance=-1.0)
    registry = ModelRegistry(models)
    assert registry.versions() == [v1] and registry.current() == v1
    assert not [p for p in registry.versions_dir.iterdir() if p.name.startswith(".tmp")]


def test_scores_do_not_depend_on_batching(models_dir: Path, log: pa.Table) -> None:
    scorer = Scorer(models_dir)
    day = log.slice(6000)
    whole = scorer.score(day)
    parts = pa.Table.from_batches([scorer.score(b) for b in day.to_batches(max_chunksize=337)])
    np.testing.assert_array_equal(whole.column("score").to_numpy(), parts.column("score").to_numpy())
    assert whole.column("is_anomaly").to_pylist() == parts.column("is_anomaly").to_pylist()
    reasons = pc.drop_null(whole.column("reason")).to_pylist()
    assert reasons and set(reasons) <= set(ALERT_REASONS)


def test_scorer_checks_columns(models_dir: Path, log: pa.Table) -> None:
    with pytest.raises(ColumnMismatchError, match="execution_duration_ms"):
        Scorer(models_dir).score(log.slice(0, 10).drop_columns(["execution_duration_ms"]))


def test_rescore_unscored_shards(tmp_path: Path, models_dir: Path, log: pa.Table) -> None:
    shards = tmp_path / "shards"
    events = log.slice(6000, 400).select(list(COLUMNS))
    events = events.append_column("kafka_partition", pa.array([0] * 400, pa.int32()))
    events = events.append_column("kafka_offset", pa.array(range(400), pa.int64()))
    write_shard(shards, dt.date(2024, 3, 3), 0, 0, Scorer(tmp_path / "no-models").score(events))
    assert rescore_unscored(shards, Scorer(tmp_path / "no-models")) == 0
    assert rescore_unscored(shards, Scorer(models_dir)) == 400
    table = read_shards(shards)
    assert table.num_rows == 400 and table.column("model_version").null_count == 0
    assert rescore_unscored(shards, Scorer(models_dir)) == 0


def test_rescore_scores_in_bounded_chunks_with_the_same_results(tmp_path: Path, models_dir: Path,
                                                                log: pa.Table) -> None:
    """A compacted file holds a partition's whole day: rescoring scores it ``chunk_rows`` at a time
    (the peak memory of the scoring app), and every row gets exactly the score the whole batch gives."""
    events = log.slice(6000, 1000).select(list(COLUMNS))
    events = events.append_column("kafka_partition", pa.array([0] * 1000, pa.int32()))
    events = events.append_column("kafka_offset", pa.array(range(1000), pa.int64()))
    whole = pa.Table.from_batches([Scorer(models_dir).score(events)]).select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)
    assert pc.sum(whole.column("is_anomaly")).as_py() > 0  # anomalies are part of what must not change
    unscored_rows = pa.array(np.random.default_rng(3).random(1000) < 0.7)  # scattered, as after a restart
    stored = whole
    for field in SCORE_FIELDS:
        i = stored.schema.get_field_index(field.name)
        stored = stored.set_column(i, field, pc.if_else(unscored_rows, pa.nulls(1000, field.type), stored.column(i)))

    class Recording:
        def __init__(self) -> None:
            self.scorer, self.sizes, self.anomalies = Scorer(models_dir), [], []

        def score(self, batch: pa.Table) -> pa.RecordBatch:
            self.sizes.append(batch.num_rows)
            scored = self.scorer.score(batch)
            flagged = scored.filter(pc.fill_null(scored.column("is_anomaly"), False))
            self.anomalies += flagged.column("kafka_offset").to_pylist()
            return scored

    results = {}
    for chunk_rows in (64, 100_000):
        shards = tmp_path / f"chunks-{chunk_rows}"
        write_shard(shards, dt.date(2024, 3, 3), 0, 0, stored)
        recording = Recording()
        assert rescore_unscored(shards, recording, chunk_rows=chunk_rows) == pc.sum(unscored_rows).as_py()
        results[chunk_rows] = (read_shards(shards), recording)
    chunked, one_call = results[64], results[100_000]
    assert max(chunked[1].sizes) == 64 and len(chunked[1].sizes) == -(-sum(chunked[1].sizes) // 64)
    assert one_call[1].sizes == [sum(chunked[1].sizes)]
    assert chunked[0].equals(one_call[0]) and chunked[0].equals(whole)  # already scored rows kept as they were
    assert chunked[1].anomalies == one_call[1].anomalies and chunked[1].anomalies
    with pytest.raises(ShardError, match="chunk_rows"):
        rescore_unscored(tmp_path / "chunks-64", recording, chunk_rows=0)


def test_cli_models_list_show_rollback(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    home = models_dir.parent / "home"
    (home).mkdir(exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(models_dir)
    assert main(["--home", str(home), "models", "list"]) == 0
    out = capsys.readouterr().out
    assert "* v0001-2024-03-01" in out
    assert main(["--home", str(home), "models", "show", "v0001-2024-03-01"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v0001-2024-03-01"
    assert main(["--home", str(home), "models", "set-current", "v0001-2024-03-01"]) == 0
    assert main(["--home", str(home), "models", "rollback", "nope"]) == 2


def test_training_is_deterministic(tmp_path: Path, log: pa.Table) -> None:
    a = train_table(tmp_path / "a", log.slice(0, 3000), DAY1, window_days=1, seed=5)
    b = train_table(tmp_path / "b", log.slice(0, 3000), DAY1, window_days=1, seed=5)
    assert a.meta["files"] == b.meta["files"]  # same ONNX bytes, same lookup tables
    assert a.meta["detector"] == b.meta["detector"]


def test_rescore_passes_again_over_a_day_compacted_under_it(tmp_path: Path, models_dir: Path, log: pa.Table,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The scoring app compacts a settled day in its main thread while the rescoring thread works on
    it: the files listed for rescoring vanish, and the compacted file still holds unscored rows."""
    from workbench.store import shards as shard_store

    shards = tmp_path / "shards"
    day = dt.date(2024, 3, 3)
    events = log.slice(6000, 400).select(list(COLUMNS))
    events = events.append_column("kafka_partition", pa.array([0] * 400, pa.int32()))
    events = events.append_column("kafka_offset", pa.array(range(400), pa.int64()))
    unscored = Scorer(tmp_path / "no-models").score(events)
    write_shard(shards, day, 0, 0, unscored.slice(0, 200))
    write_shard(shards, day, 0, 200, unscored.slice(200, 200))
    listed = shard_store.shard_paths
    compactions = []

    def list_then_compact(directory: Path, days: object = None) -> list[Path]:
        paths = listed(directory, days)
        if not compactions:  # the first listing goes stale at once
            compactions.append(shard_store.compact_day(directory, day))
        return paths

    monkeypatch.setattr(shard_store, "shard_paths", list_then_compact)
    assert rescore_unscored(shards, Scorer(models_dir)) == 400
    assert compactions == [1]
    table = read_shards(shards)
    assert table.num_rows == 400 and table.column("model_version").null_count == 0


def test_fingerprint_lookup_finds_what_index_in_finds(log: pa.Table) -> None:
    fb = FeatureBuilder().fit(log)
    table = fb.fp_table_
    # the table as fitted, plus a duplicated key (the first row wins) and a null fingerprint
    fb.fp_table_ = pa.concat_tables([table, table.slice(3, 2),
                                     table.slice(0, 1).set_column(1, table.schema.field(1), pa.nulls(1, pa.string()))])
    fb._build_index()
    rng = np.random.default_rng(11)
    batch = log.take(rng.integers(0, log.num_rows, 5_000))
    fps = batch.column("feature_fingerprint").to_pylist()
    for i in rng.choice(len(fps), 400, replace=False):  # unseen fingerprints and nulls among known ones
        fps[i] = None if i % 2 else f"unseen{i}"
    batch = batch.set_column(batch.schema.get_field_index("feature_fingerprint"), "feature_fingerprint",
                             pa.array(fps, pa.string()))
    keys = pc.binary_join_element_wise(pc.cast(batch.column("instance_id"), pa.string()),
                                       batch.column("feature_fingerprint"), "|")
    table_keys = pc.binary_join_element_wise(pc.cast(fb.fp_table_.column("instance_id"), pa.string()),
                                             fb.fp_table_.column("feature_fingerprint"), "|")
    expected = pc.fill_null(pc.index_in(keys, value_set=table_keys), -1).to_numpy(zero_copy_only=False)
    found = fb._fp_index(keys)
    np.testing.assert_array_equal(found, expected)
    null_row = table.num_rows + 2  # the row with the null fingerprint: null keys find it, as in index_in
    assert (found == -1).sum() >= 150 and (found == null_row).sum() >= 150 and (found >= 0).sum() >= 4_000
    null_key = pa.chunked_array([pa.nulls(2, pa.string())])  # a null key matches the table's null, as index_in
    np.testing.assert_array_equal(fb._fp_index(null_key),
                                  pc.fill_null(pc.index_in(null_key, value_set=table_keys), -1).to_numpy())
