"""A log that spells query types otherwise ('SELECT', ' copy ') reads as the same query types: the
model's categories, the query classes and the profile all read :func:`workbench.data.schema.query_type_key`.
Before, 'SELECT ' was a category of its own: a model trained on Redset's spelling saw every such
query as an unknown type, and the profile counted no selects at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.analysis.classify import classify_batch, classify_query
from workbench.data.profile import profile
from workbench.ml._testing import generated_log
from workbench.ml.features import FeatureBuilder


def _respelled(table: pa.Table) -> pa.Table:
    """Every query type upper-cased, and every other row padded with spaces."""
    upper = pc.utf8_upper(table.column("query_type")).to_pylist()
    spelled = [f" {v}  " if (i % 2 and v is not None) else v for i, v in enumerate(upper)]
    idx = table.schema.get_field_index("query_type")
    return table.set_column(idx, table.schema.field(idx), pa.array(spelled, pa.string()))


def test_the_model_reads_query_types_whatever_their_case_and_padding() -> None:
    log = generated_log(days=1, rows_per_day=3000, seed=5)
    respelled = _respelled(log)
    trained = FeatureBuilder().fit(log)
    assert trained.categories_ == FeatureBuilder().fit(respelled).categories_  # no category per spelling
    assert np.array_equal(trained.transform(log), trained.transform(respelled), equal_nan=True)
    codes = trained.transform(respelled)[:, 0]
    assert (codes >= 0).all()  # not one unknown type (code -1)


def test_query_classes_and_the_profile_read_query_types_whatever_their_spelling(tmp_path: Path) -> None:
    log = generated_log(days=1, rows_per_day=3000, seed=5)
    respelled = _respelled(log)
    assert classify_batch(log.to_batches()[0]).tolist() == classify_batch(respelled.to_batches()[0]).tolist()
    assert classify_query({"query_type": " COPY ", "execution_duration_ms": 501}) == "network_bound"
    pq.write_table(log, tmp_path / "redset.parquet")
    pq.write_table(respelled, tmp_path / "other.parquet")
    figures = [{c.name: c.observed for c in profile(tmp_path / name).checks}
               for name in ("redset.parquet", "other.parquet")]
    assert figures[0] == figures[1]
    assert figures[0]["select"] > 0 and figures[0]["copy"] > 0, figures[0]
