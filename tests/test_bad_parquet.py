"""A corpus of hand-made bad Parquet query logs: each gets its exact message from `workbench validate`.

Row problems are all listed (one line per problem, capped per column, all counted); file problems
stop validation with one error naming the file and what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_log
from workbench import cli
from workbench.data import DataValidationError, read_batches, validate
from workbench.data.validation import LINES_PER_COLUMN, check

ROWS = 40


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    path = make_log(tmp_path_factory.mktemp("good") / "good.parquet", rows=ROWS, row_group_size=ROWS)
    return pq.read_table(path)


def _replace(table: pa.Table, name: str, values: list | pa.Array, type_: pa.DataType | None = None) -> pa.Table:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        array = values
    else:
        array = pa.array(values, type_ or table.schema.field(name).type)
    return table.set_column(table.schema.get_field_index(name), name, array)


def _edit(table: pa.Table, name: str, changes: dict[int, object], type_: pa.DataType | None = None) -> pa.Table:
    values = table.column(name).to_pylist()
    for row, value in changes.items():
        values[row] = value
    return _replace(table, name, values, type_)


def _lines(table: pa.Table, path: Path) -> list[str]:
    pq.write_table(table, path)
    report = check(path)
    return [*report.lines(), report.verdict()]


def _failed(path: Path, problems: int, rows: int, columns: str) -> str:
    return f"FAILED {path}: {problems} problem(s) in {rows} of {ROWS} rows ({columns})"


def test_null_in_a_required_column(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "null_instance.parquet"
    table = _edit(good, "instance_id", {3: None}).cast(good.schema.set(0, pa.field("instance_id", pa.int64())))
    assert _lines(table, path) == [
        "row 3, instance_id: NULL, but every query needs a value here",
        _failed(path, 1, 1, "instance_id 1"),
    ]


def test_uint64_beyond_int64(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "uint64.parquet"
    values = [int(v) for v in good.column("user_id").to_pylist()]
    values[4] = 2**63 + 5
    values[9] = 2**64 - 1
    table = _replace(good, "user_id", values, pa.uint64())
    assert _lines(table, path) == [
        "row 4, user_id: 9223372036854775813 does not fit a signed 64-bit integer (largest 9223372036854775807)",
        "row 9, user_id: 18446744073709551615 does not fit a signed 64-bit integer (largest 9223372036854775807)",
        _failed(path, 2, 2, "user_id 2"),
    ]


def test_uint64_within_int64_is_accepted_and_read_as_int64(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "uint64_ok.parquet"
    pq.write_table(_replace(good, "user_id", good.column("user_id").cast(pa.uint64())), path)
    assert validate(path).rows == ROWS
    back = pa.Table.from_batches(list(read_batches(path)))
    assert back.column("user_id").type == pa.int64()
    assert back.column("user_id").equals(good.column("user_id"))


def test_negative_durations_and_sizes(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "negative.parquet"
    table = _edit(_edit(good, "execution_duration_ms", {5: -12}), "mbytes_spilled", {5: -1, 6: -3})
    assert _lines(table, path) == [
        "row 5, execution_duration_ms: -12 is negative (durations, sizes and counts are >= 0)",
        "row 5, mbytes_spilled: -1 is negative (durations, sizes and counts are >= 0)",
        "row 6, mbytes_spilled: -3 is negative (durations, sizes and counts are >= 0)",
        _failed(path, 3, 2, "mbytes_spilled 2, execution_duration_ms 1"),
    ]


def test_nan_inf_and_fractions_in_a_float_typed_integer_column(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "floats.parquet"
    values = [float(v) for v in good.column("mbytes_scanned").to_pylist()]
    values[2], values[6], values[7], values[8] = float("nan"), float("inf"), 1.5, None
    table = _replace(good, "mbytes_scanned", values, pa.float64())
    assert _lines(table, path) == [
        "row 2, mbytes_scanned: nan is not a finite number",
        "row 6, mbytes_scanned: inf is not a finite number",
        "row 7, mbytes_scanned: 1.5 is not a whole number",
        _failed(path, 3, 3, "mbytes_scanned 3"),
    ]


def test_whole_floats_as_pandas_writes_nullable_integers_are_accepted(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "pandas_floats.parquet"
    table = _replace(good, "cluster_size", good.column("cluster_size").cast(pa.float64()))
    pq.write_table(table, path)
    assert validate(path).rows == ROWS
    back = pa.Table.from_batches(list(read_batches(path)))
    assert back.column("cluster_size").equals(good.column("cluster_size"))


def test_timestamps_no_consumer_can_decode(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "year9999.parquet"
    stamps = good.column("arrival_timestamp").cast(pa.int64()).to_pylist()
    stamps[-2] = 253_402_214_400_000_000  # 9999-12-31
    stamps[-1] = 253_402_300_800_000_000  # year 10000: no Python datetime holds it
    table = _replace(good, "arrival_timestamp", pa.array(stamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")))
    assert _lines(table, path) == [
        f"row {ROWS - 2}, arrival_timestamp: 9999-12-31 00:00:00 is outside 1970-01-01 .. 2262-04-10, "
        "the range every consumer can decode",
        f"row {ROWS - 1}, arrival_timestamp: 253402300800000000 us since 1970 is outside 1970-01-01 .. 2262-04-10, "
        "the range every consumer can decode",
        _failed(path, 2, 2, "arrival_timestamp 2"),
    ]


def test_non_utf8_strings(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "utf8.parquet"
    values = [v.encode() for v in good.column("query_type").to_pylist()]
    values[1] = b"sel\xffect"
    offsets = np.cumsum([0, *(len(v) for v in values)]).astype(np.int32)
    array = pa.Array.from_buffers(pa.string(), ROWS, [None, pa.py_buffer(offsets.tobytes()),
                                                      pa.py_buffer(b"".join(values))])
    assert _lines(_replace(good, "query_type", array), path) == [
        "row 1, query_type: b'sel\\xffect' is not valid UTF-8 text",
        _failed(path, 1, 1, "query_type 1"),
    ]


def test_unsorted_rows(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "unsorted.parquet"
    order = list(range(ROWS))
    order[10], order[11] = 11, 10
    assert _lines(good.take(order), path) == [
        "row 11, arrival_timestamp: is not sorted by (arrival_timestamp, query_id): arrival "
        "2024-03-04 00:00:10.000000, query_id 1000000000070 comes after row 10 "
        "(arrival 2024-03-04 00:00:11.000000, query_id 1000000000077)",
        _failed(path, 1, 1, "arrival_timestamp 1"),
    ]


def test_problems_are_capped_per_column_but_all_counted(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "many.parquet"
    table = _edit(good, "compile_duration_ms", dict.fromkeys(range(25), -1))
    lines = _lines(table, path)
    assert len(lines) == LINES_PER_COLUMN + 2
    assert lines[LINES_PER_COLUMN:] == [
        f"compile_duration_ms: {25 - LINES_PER_COLUMN} more problem(s) not shown",
        _failed(path, 25, 25, "compile_duration_ms 25"),
    ]


def test_corrupt_page(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    pq.write_table(good, path, compression="zstd")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(good.schema.get_field_index("execution_duration_ms"))
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset:chunk.data_page_offset + 16] = b"\xff" * 16  # the page header
    path.write_bytes(bytes(data))
    report = check(path)
    lines = report.lines()
    assert len(lines) == 1
    assert lines[0].startswith(f"row 0, execution_duration_ms: rows 0..{ROWS - 1} (row group 0) cannot be "
                               "decoded: Couldn't deserialize thrift")
    assert report.verdict() == _failed(path, 1, ROWS, "execution_duration_ms 1")


def test_missing_column(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "missing.parquet"
    pq.write_table(good.drop_columns(["queue_duration_ms"]), path)
    with pytest.raises(DataValidationError) as info:
        check(path)
    assert str(info.value) == (
        f"Query log {str(path)!r} lacks 1 of the 24 required Redset column(s): queue_duration_ms. "
        "Add them (NULL is fine for nullable columns) or regenerate the file.")


def test_wrong_type_that_cannot_be_converted(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pq.write_table(_replace(good, "execution_duration_ms", ["fast"] * ROWS, pa.string()), path)
    with pytest.raises(DataValidationError) as info:
        check(path)
    assert str(info.value) == (
        f"Column 'execution_duration_ms' of query log {str(path)!r} must be integer (int64). Got string "
        "instead. Convert it, e.g. with CAST(execution_duration_ms AS BIGINT) in DuckDB.")


def test_duplicate_column_names(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "duplicate.parquet"
    pq.write_table(good.append_column("query_id", good.column("query_id")), path)
    with pytest.raises(DataValidationError) as info:
        check(path)
    assert str(info.value) == (
        f"Query log {str(path)!r} has 2 columns named 'query_id'; the workbench cannot tell which one holds "
        "the data. Keep one of them.")


def test_truncated_file(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "truncated.parquet"
    pq.write_table(good, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataValidationError) as info:
        check(path)
    message = str(info.value)
    assert message.startswith(f"Query log {str(path)!r} is not a readable Parquet file (")
    assert message.endswith("). Pass a Parquet file with the Redset columns, e.g. one written by `workbench "
                            "generate`.")


@pytest.mark.parametrize("kind", ["zero_bytes", "zero_rows"])
def test_empty_file(good: pa.Table, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.parquet"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    else:
        pq.write_table(good.slice(0, 0), path)
    with pytest.raises(DataValidationError) as info:
        check(path)
    if kind == "zero_rows":
        assert str(info.value) == (f"Query log {str(path)!r} has no rows. Regenerate it or point at a log "
                                   "with queries.")
    else:
        assert str(info.value).startswith(f"Query log {str(path)!r} is not a readable Parquet file (")


def test_validate_raises_with_the_first_problem_and_the_count(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "two.parquet"
    table = _edit(_edit(good, "execution_duration_ms", {7: -5}), "num_joins", {2: -1})
    pq.write_table(table, path)
    with pytest.raises(DataValidationError) as info:
        validate(path)
    assert str(info.value) == (
        f"Query log {str(path)!r} fails validation: 2 problem(s) in 2 row(s), the first at row 2, num_joins: -1 "
        f"is negative (durations, sizes and counts are >= 0). Run `workbench validate {path}` to list them. "
        "Fix or drop those rows, or replay with --skip-bad-rows to send them to the dead-letter topic and replay "
        "the rest.")
    assert (info.value.row, info.value.column) == (2, "num_joins")


def test_cli_prints_every_line_and_exits_1(good: pa.Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))
    path = tmp_path / "cli.parquet"
    pq.write_table(_edit(good, "queue_duration_ms", {0: -1}), path)
    assert cli.main(["validate", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "row 0, queue_duration_ms: -1 is negative (durations, sizes and counts are >= 0)",
        _failed(path, 1, 1, "queue_duration_ms 1"),
    ]
