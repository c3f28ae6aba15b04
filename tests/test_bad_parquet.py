"""A corpus of hand-made bad Parquet query logs: each gets its exact message from `workbench validate`.

Row problems are all listed (one line per problem, capped per column, all counted); file problems
stop validation with one error naming the file and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_log
from workbench import cli
from workbench.data import DataValidationError, prepare, read_batches, validate
from workbench.data.validation import LINES_PER_COLUMN, check
from workbench.ml._train import load_log_window
from workbench.replay import LogFile, validate_log

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


def _null_instance(good: pa.Table) -> pa.Table:
    return _edit(good, "instance_id", {3: None}).cast(good.schema.set(0, pa.field("instance_id", pa.int64())))


def _uint64_beyond_int64(good: pa.Table) -> pa.Table:
    values = [int(v) for v in good.column("user_id").to_pylist()]
    values[4] = 2**63 + 5
    values[9] = 2**64 - 1
    return _replace(good, "user_id", values, pa.uint64())


def _negative(good: pa.Table) -> pa.Table:
    return _edit(_edit(good, "execution_duration_ms", {5: -12}), "mbytes_spilled", {5: -1, 6: -3})


def _floats(good: pa.Table) -> pa.Table:
    values = [float(v) for v in good.column("mbytes_scanned").to_pylist()]
    values[2], values[6], values[7], values[8] = float("nan"), float("inf"), 1.5, None
    return _replace(good, "mbytes_scanned", values, pa.float64())


def _rounded_by_floats(good: pa.Table) -> pa.Table:
    # ids through floats: float32 holds every whole number up to 2**24 only, float64 up to 2**53
    users = _replace(good, "user_id", [float(v) for v in good.column("user_id").to_pylist()], pa.float32())
    users = _edit(users, "user_id", {3: 16_777_218.0})
    ids = [float(v) for v in good.column("query_id").to_pylist()]
    ids[-1] = 2.0**53 + 2
    return _replace(users, "query_id", ids, pa.float64())


def _year9999(good: pa.Table) -> pa.Table:
    stamps = good.column("arrival_timestamp").cast(pa.int64()).to_pylist()
    stamps[-2] = 253_402_214_400_000_000  # 9999-12-31
    stamps[-1] = 253_402_300_800_000_000  # year 10000: no Python datetime holds it
    return _replace(good, "arrival_timestamp", pa.array(stamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")))


def _nanoseconds(good: pa.Table) -> pa.Table:
    # as pandas writes times (ns) that carry more than microseconds: before, validate named the wrong column
    # ('instance_id: the row group cannot be read') and the offline reader stopped on a cast
    nanos = good.column("arrival_timestamp").cast(pa.int64()).to_numpy() * 1000
    nanos[3] += 123
    nanos[8] += 999
    return _replace(good, "arrival_timestamp", pa.array(nanos).cast(pa.timestamp("ns", tz="UTC")))


def _non_utf8(good: pa.Table) -> pa.Table:
    values = [v.encode() for v in good.column("query_type").to_pylist()]
    values[1] = b"sel\xffect"
    offsets = np.cumsum([0, *(len(v) for v in values)]).astype(np.int32)
    array = pa.Array.from_buffers(pa.string(), ROWS, [None, pa.py_buffer(offsets.tobytes()),
                                                      pa.py_buffer(b"".join(values))])
    return _replace(good, "query_type", array)


def _non_utf8_string_view(good: pa.Table) -> pa.Table:
    # Arrow's newer text layout, as Polars and DuckDB write it: the file stores its Arrow schema
    bad = _non_utf8(good).column("query_type").cast(pa.binary()).cast(pa.binary_view())
    return _replace(good, "query_type", bad.cast(pa.string_view(), safe=False))


def _unsorted(good: pa.Table) -> pa.Table:
    order = list(range(ROWS))
    order[10], order[11] = 11, 10
    return good.take(order)


#: case -> (bad table from the good one, the exact problem lines, (problems, rows, per-column counts) of the verdict)
ROW_CASES: dict[str, tuple[Callable[[pa.Table], pa.Table], list[str], tuple[int, int, str]]] = {
    "null_in_a_required_column": (_null_instance, [
        "row 3, instance_id: NULL, but every query needs a value here",
    ], (1, 1, "instance_id 1")),
    "uint64_beyond_int64": (_uint64_beyond_int64, [
        "row 4, user_id: 9223372036854775813 does not fit a signed 64-bit integer (largest 9223372036854775807)",
        "row 9, user_id: 18446744073709551615 does not fit a signed 64-bit integer (largest 9223372036854775807)",
    ], (2, 2, "user_id 2")),
    "negative_durations_and_sizes": (_negative, [
        "row 5, execution_duration_ms: -12 is negative (durations, sizes and counts are >= 0)",
        "row 5, mbytes_spilled: -1 is negative (durations, sizes and counts are >= 0)",
        "row 6, mbytes_spilled: -3 is negative (durations, sizes and counts are >= 0)",
    ], (3, 2, "mbytes_spilled 2, execution_duration_ms 1")),
    "nan_inf_and_fractions_in_a_float_typed_integer_column": (_floats, [
        "row 2, mbytes_scanned: nan is not a finite number",
        "row 6, mbytes_scanned: inf is not a finite number",
        "row 7, mbytes_scanned: 1.5 is not a whole number",
    ], (3, 3, "mbytes_scanned 3")),
    "ids_rounded_by_floats": (_rounded_by_floats, [
        "row 3, user_id: 16777218.0 is beyond 16,777,216, where a float column cannot hold every whole number: "
        "it may be a rounded value; store the column as integers",
        f"row {ROWS - 1}, query_id: 9007199254740994.0 is beyond 9,007,199,254,740,992, where a double column "
        "cannot hold every whole number: it may be a rounded value; store the column as integers",
    ], (2, 2, "user_id 1, query_id 1")),
    "timestamps_no_consumer_can_decode": (_year9999, [
        f"row {ROWS - 2}, arrival_timestamp: 9999-12-31 00:00:00 is outside 1970-01-01 .. 2262-04-10, "
        "the range every consumer can decode",
        f"row {ROWS - 1}, arrival_timestamp: 253402300800000000 us since 1970 is outside 1970-01-01 .. 2262-04-10, "
        "the range every consumer can decode",
    ], (2, 2, "arrival_timestamp 2")),
    "times_finer_than_a_microsecond": (_nanoseconds, [
        "row 3, arrival_timestamp: 2024-03-04 00:00:03.000000123 is finer than the microseconds every event "
        "time is kept in; `workbench prepare` truncates such times",
        "row 8, arrival_timestamp: 2024-03-04 00:00:08.000000999 is finer than the microseconds every event "
        "time is kept in; `workbench prepare` truncates such times",
    ], (2, 2, "arrival_timestamp 2")),
    "times_finer_than_a_microsecond_beside_a_null": (lambda good: _edit(_nanoseconds(good), "arrival_timestamp",
                                                                        {20: None}), [
        "row 3, arrival_timestamp: 2024-03-04 00:00:03.000000123 is finer than the microseconds every event "
        "time is kept in; `workbench prepare` truncates such times",
        "row 8, arrival_timestamp: 2024-03-04 00:00:08.000000999 is finer than the microseconds every event "
        "time is kept in; `workbench prepare` truncates such times",
        "row 20, arrival_timestamp: NULL, but every query needs a value here",
    ], (3, 3, "arrival_timestamp 3")),
    "non_utf8_strings": (_non_utf8, [
        "row 1, query_type: b'sel\\xffect' is not valid UTF-8 text",
    ], (1, 1, "query_type 1")),
    "non_utf8_string_view": (_non_utf8_string_view, [
        "row 1, query_type: b'sel\\xffect' is not valid UTF-8 text",
    ], (1, 1, "query_type 1")),
    "unsorted_rows": (_unsorted, [
        "row 11, arrival_timestamp: is not sorted by (arrival_timestamp, query_id): arrival "
        "2024-03-04 00:00:10.000000, query_id 1000000000070 comes after row 10 "
        "(arrival 2024-03-04 00:00:11.000000, query_id 1000000000077)",
    ], (1, 1, "arrival_timestamp 1")),
}


@pytest.mark.parametrize("case", ROW_CASES)
def test_row_problems_are_listed_exactly(good: pa.Table, tmp_path: Path, case: str) -> None:
    make_bad, lines, (problems, rows, columns) = ROW_CASES[case]
    path = tmp_path / f"{case}.parquet"
    assert _lines(make_bad(good), path) == [*lines, _failed(path, problems, rows, columns)]


def test_uint64_within_int64_is_accepted_and_read_as_int64(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "uint64_ok.parquet"
    pq.write_table(_replace(good, "user_id", good.column("user_id").cast(pa.uint64())), path)
    assert validate(path).rows == ROWS
    back = pa.Table.from_batches(list(read_batches(path)))
    assert back.column("user_id").type == pa.int64()
    assert back.column("user_id").equals(good.column("user_id"))


def test_whole_floats_as_pandas_writes_nullable_integers_are_accepted(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "pandas_floats.parquet"
    table = _replace(good, "cluster_size", good.column("cluster_size").cast(pa.float64()))
    pq.write_table(table, path)
    assert validate(path).rows == ROWS
    back = pa.Table.from_batches(list(read_batches(path)))
    assert back.column("cluster_size").equals(good.column("cluster_size"))


@pytest.mark.parametrize("text_type", [pa.string_view(), pa.large_string(), pa.dictionary(pa.int8(), pa.string())])
def test_every_arrow_text_type_is_accepted_and_read_as_string(good: pa.Table, tmp_path: Path,
                                                              text_type: pa.DataType) -> None:
    path = tmp_path / "text.parquet"
    pq.write_table(_replace(good, "query_type", good.column("query_type").cast(text_type)), path)
    assert check(path).verdict().startswith(f"OK {path}: {ROWS} queries")
    back = pa.Table.from_batches(list(read_batches(path)))
    assert back.column("query_type").type == pa.string()
    assert back.column("query_type").equals(good.column("query_type"))


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


def _truncated(good: pa.Table, path: Path) -> None:
    pq.write_table(good, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


_UNREADABLE = "Query log {path!r} is not a readable Parquet file ("

#: case -> (write the bad file, its message: exact text, or (start, end) where the middle is the reader's own)
FILE_CASES: dict[str, tuple[Callable[[pa.Table, Path], object], str | tuple[str, str]]] = {
    "missing_column": (
        lambda good, path: pq.write_table(good.drop_columns(["queue_duration_ms"]), path),
        "Query log {path!r} lacks 1 of the 24 required Redset column(s): queue_duration_ms. "
        "Add them (NULL is fine for nullable columns) or regenerate the file."),
    "wrong_type_that_cannot_be_converted": (
        lambda good, path: pq.write_table(_replace(good, "execution_duration_ms", ["fast"] * ROWS, pa.string()), path),
        "Column 'execution_duration_ms' of query log {path!r} must be integer (int64). Got string "
        "instead. Convert it, e.g. with CAST(execution_duration_ms AS BIGINT) in DuckDB, or "
        "`workbench prepare {path} --out NEW` (it converts what converts without loss and sets aside, "
        "with reasons, the rows it cannot)."),
    # a cluster named, not numbered (tester A, 33rd session: the CAST hint and prepare both failed on names)
    "ids_as_names": (
        lambda good, path: pq.write_table(_replace(good, "instance_id", [f"prod-cluster-{i}" for i in range(ROWS)],
                                                   pa.string()), path),
        "Column 'instance_id' of query log {path!r} must be integer (int64). Got string instead. Convert it, "
        "e.g. with CAST(instance_id AS BIGINT) if its texts are numbers; if they are names, number them: "
        "dense_rank() OVER (ORDER BY instance_id) AS instance_id in DuckDB, or `workbench prepare {path} --out NEW` "
        "(it converts what converts without loss and sets aside, with reasons, the rows it cannot)."),
    "column_names_in_another_letter_case": (
        lambda good, path: pq.write_table(good.rename_columns([c.upper() for c in good.column_names]), path),
        "Query log {path!r} lacks 24 of the 24 required Redset column(s): instance_id, cluster_size, "
        "user_id, database_id, query_id and 19 more. The file has 24 of them under other letter cases "
        "(e.g. 'INSTANCE_ID'): `workbench prepare {path} --out NEW` matches names case-insensitively "
        "and writes a replayable copy."),
    "duplicate_column_names": (
        lambda good, path: pq.write_table(good.append_column("query_id", good.column("query_id")), path),
        "Query log {path!r} has 2 columns named 'query_id'; the workbench cannot tell which one holds "
        "the data. Keep one of them."),
    # `workbench prepare` refuses two columns for one; validate read the exact name and passed the other over
    "one_column_under_two_letter_cases": (
        lambda good, path: pq.write_table(good.append_column("Query_ID", good.column("query_id")), path),
        "Query log {path!r} has columns 'query_id' and 'Query_ID', one Redset column under two spellings; the "
        "workbench cannot tell which one holds the data. Keep or rename one of them."),
    "column_name_with_a_space": (
        lambda good, path: pq.write_table(good.rename_columns(
            [f"{c} " if c == "query_id" else c for c in good.column_names]), path),
        "Query log {path!r} lacks 1 of the 24 required Redset column(s): query_id. The file has 1 of them under "
        "other letter cases or with spaces around them (e.g. 'query_id '): `workbench prepare {path} --out NEW` "
        "matches names case-insensitively and writes a replayable copy."),
    # the hint's DuckDB expression converts: CAST(BIGINT AS TIMESTAMP) does not exist, CAST of a list writes
    # '[1, 2]', CAST of a decimal rounds, and a duration is the count of its unit
    "epoch_milliseconds_as_arrival": (
        lambda good, path: pq.write_table(_replace(good, "arrival_timestamp", pa.compute.divide(
            good.column("arrival_timestamp").cast(pa.int64()), 1000)), path),
        "Column 'arrival_timestamp' of query log {path!r} must be timestamp (timestamp[us, tz=UTC]). Got int64 "
        "instead. Convert it, e.g. with epoch_ms(arrival_timestamp) (milliseconds since 1970; epoch_us for "
        "microseconds, to_timestamp for seconds) in DuckDB, or `workbench prepare {path} --out NEW` (it converts "
        "what converts without loss and sets aside, with reasons, the rows it cannot)."),
    "table_ids_as_a_list": (
        lambda good, path: pq.write_table(_replace(good, "read_table_ids", [[1, 2]] * ROWS,
                                                   pa.list_(pa.int64())), path),
        "Column 'read_table_ids' of query log {path!r} must be string (string). Got list<element: int64> instead. "
        "Convert it, e.g. with array_to_string(read_table_ids, ',') in DuckDB, or `workbench prepare {path} --out "
        "NEW` (it converts what converts without loss and sets aside, with reasons, the rows it cannot)."),
    "decimal_durations": (
        lambda good, path: pq.write_table(_replace(good, "execution_duration_ms", good.column(
            "execution_duration_ms").cast(pa.decimal128(22, 3))), path),
        "Column 'execution_duration_ms' of query log {path!r} must be integer (int64). Got decimal128(22, 3) "
        "instead. Convert it, e.g. with CAST(execution_duration_ms AS BIGINT) where every value is whole (CAST "
        "rounds 12.5 to 13) in DuckDB, or `workbench prepare {path} --out NEW` (it converts what converts without "
        "loss and sets aside, with reasons, the rows it cannot)."),
    "microsecond_durations": (
        lambda good, path: pq.write_table(_replace(good, "queue_duration_ms", good.column(
            "queue_duration_ms").cast(pa.duration("us"))), path),
        "Column 'queue_duration_ms' of query log {path!r} must be integer (int64). Got duration[us] instead. "
        "Convert it, e.g. with queue_duration_ms // 1000 in DuckDB, or `workbench prepare {path} --out NEW` (it "
        "converts what converts without loss and sets aside, with reasons, the rows it cannot)."),
    "truncated_file": (_truncated, (
        _UNREADABLE,
        "). Pass a Parquet file with the Redset columns, e.g. one written by `workbench generate`.")),
    "zero_bytes": (lambda good, path: path.write_bytes(b""), (_UNREADABLE, "")),
    "zero_rows": (
        lambda good, path: pq.write_table(good.slice(0, 0), path),
        "Query log {path!r} has no rows. Regenerate it or point at a log with queries."),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_file_problems_stop_with_one_message(good: pa.Table, tmp_path: Path, case: str) -> None:
    write_bad, expected = FILE_CASES[case]
    path = tmp_path / f"{case}.parquet"
    write_bad(good, path)
    with pytest.raises(DataValidationError) as info:
        check(path)
    message = str(info.value)
    if isinstance(expected, str):
        assert message == expected.format(path=str(path))
    else:
        start, end = expected
        assert message.startswith(start.format(path=str(path)))
        assert message.endswith(end)


def test_validate_raises_with_the_first_problem_and_the_count(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "two.parquet"
    table = _edit(_edit(good, "execution_duration_ms", {7: -5}), "num_joins", {2: -1})
    pq.write_table(table, path)
    with pytest.raises(DataValidationError) as info:
        validate(path)
    assert str(info.value) == (
        f"Query log {str(path)!r} fails validation: 2 problem(s) in 2 row(s), the first at row 2, num_joins: -1 "
        f"is negative (durations, sizes and counts are >= 0). Run `workbench validate {path}` to list them. "
        "Fix or drop those rows, or replay with --skip-bad-rows (`workbench replay` and `workbench start`; "
        "skip_bad_rows=True in Python) to send them to the dead-letter topic and replay the rest.")
    assert (info.value.row, info.value.column) == (2, "num_joins")


def test_skipping_bad_rows_names_the_problem_it_cannot_skip(good: pa.Table, tmp_path: Path) -> None:
    """With --skip-bad-rows the refusal named its first problem, a negative duration, the very kind it
    skips, and not the unsorted row that stopped it."""
    from workbench.replay._source import validate_log

    path = tmp_path / "mixed.parquet"
    times = good.column("arrival_timestamp").to_pylist()
    table = _edit(_edit(good, "execution_duration_ms", {7: -5}), "arrival_timestamp", {30: times[0]})
    pq.write_table(table, path)
    with pytest.raises(DataValidationError) as info:
        validate_log(path, skip_bad_rows=True)
    message = str(info.value)
    assert message.startswith(f"Query log {str(path)!r} cannot be replayed with --skip-bad-rows: it skips a row's "
                              "own problems (1 here), not row 30, arrival_timestamp:")
    assert "workbench prepare" in message and (info.value.row, info.value.column) == (30, "arrival_timestamp")
    with pytest.raises(DataValidationError, match=r"the first at row 7, execution_duration_ms: -5"):
        validate_log(path)  # without the flag, the first problem as before


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


def _variants(good: pa.Table) -> pa.Table:
    """Every column type validate accepts in place of the Redset one, as the real Redset and its exports hold them."""
    table = _replace(good, "arrival_timestamp", good.column("arrival_timestamp").cast(pa.timestamp("ms")))  # Redset
    table = _replace(table, "query_type", good.column("query_type").cast(pa.string_view()))
    table = _replace(table, "instance_id", good.column("instance_id").dictionary_encode())
    table = _replace(table, "user_id", good.column("user_id").cast(pa.uint32()))
    return _replace(table, "write_table_ids", pa.nulls(ROWS))  # all NULL: Parquet's null type


def test_the_offline_reader_of_train_and_evaluate_reads_what_validate_accepts(good: pa.Table, tmp_path: Path) -> None:
    """`train/evaluate --data` read the log typed as the replay reads it (before: naive times, string_view and
    null-typed columns stopped them, the last with a traceback)."""
    path = tmp_path / "variants.parquet"
    pq.write_table(_variants(good), path)
    assert validate(path).rows == ROWS
    day = good.column("arrival_timestamp")[0].as_py().date()
    assert load_log_window(path, day, 1).equals(good)


def test_the_offline_reader_passes_over_other_columns_even_when_they_repeat_a_name(good: pa.Table,
                                                                                   tmp_path: Path) -> None:
    """Validate and the replay read only the Redset columns of a file whose other columns repeat a name (two
    'note' columns of another tool, a pandas index); `train/evaluate --data` stopped on it with pyarrow's
    'Multiple matches for FieldRef.Name(note)' and the whole schema."""
    path = tmp_path / "notes.parquet"
    extra = good.append_column("note", pa.array(["a"] * ROWS)).append_column("note", pa.array([1] * ROWS))
    pq.write_table(extra.append_column("__index_level_0__", pa.array(range(ROWS))), path)
    assert validate(path).rows == ROWS
    day = good.column("arrival_timestamp")[0].as_py().date()
    assert load_log_window(path, day, 1).equals(good)


@pytest.mark.parametrize("labels", [pa.array([0, 1] * (ROWS // 2), pa.int8()),
                                    pa.array(["false", "true"] * (ROWS // 2))], ids=["0/1", "text"])
def test_labels_in_the_forms_the_evaluation_reads_do_not_stop_validate_or_the_replay(
        good: pa.Table, tmp_path: Path, labels: pa.Array) -> None:
    """The replay never sends labels and `evaluate` reads label_anomaly as 0/1 or true/false text (another
    tool's export), but validate refused such a file whole: "must be boolean (bool). Got int8"."""
    path = tmp_path / "labelled.parquet"
    pq.write_table(_replace(good, "label_anomaly", labels), path)
    summary = validate_log(path)
    assert summary.rows == ROWS and summary.has_labels
    day = good.column("arrival_timestamp")[0].as_py().date()
    assert load_log_window(path, day, 1).column("label_anomaly").to_pylist() == labels.to_pylist()


_CODES = [None, 3, None, 12] * (ROWS // 4)


@pytest.mark.parametrize("kinds", [pa.array(_CODES, pa.int32()), pa.array(_CODES, pa.uint64()),
                                   pa.array([None if c is None else float(c) for c in _CODES], pa.float64()),
                                   pa.array([None if c is None else str(c) for c in _CODES]).dictionary_encode(),
                                   pa.nulls(ROWS)],
                         ids=["int32", "uint64", "pandas_float", "dictionary", "all_null"])
def test_label_kind_codes_are_kinds_to_validate_the_replay_and_the_offline_reader(
        good: pa.Table, tmp_path: Path, kinds: pa.Array) -> None:
    """Another tool's kinds as integer codes (pandas writes them beside NULLs as floats), or a kind column of
    NULLs only: `evaluate` read them, but validate refused the file whole ("must be string (string). Got
    int32") and so did the replay. Every reader now reads kind 3 or 3.0 as "3"."""
    path = tmp_path / "codes.parquet"
    pq.write_table(_replace(good, "label_kind", kinds), path)
    summary = validate_log(path)
    assert summary.rows == ROWS and summary.has_labels
    day = good.column("arrival_timestamp")[0].as_py().date()
    read = load_log_window(path, day, 1).column("label_kind")
    expected = [None] * ROWS if pa.types.is_null(kinds.type) else [None if c is None else str(c) for c in _CODES]
    assert read.type == pa.string() and read.to_pylist() == expected
    assert pa.Table.from_batches(list(read_batches(path, labels=True))).column("label_kind").to_pylist() == expected


def test_labels_their_readers_cannot_read_are_row_problems_naming_row_column_and_value(
        good: pa.Table, tmp_path: Path) -> None:
    """validate passed label_anomaly 'maybe' (only evaluate named it, without a row) and refused a kind code
    stored as a float whole, even where every code was whole."""
    path = tmp_path / "labels.parquet"
    words = ["false", " TRUE", "f", "yes", "0", ""] * (ROWS // 6) + ["no"] * (ROWS % 6)
    words[7], words[31] = "maybe", "anomaly"
    codes = [None, 3.0] * (ROWS // 2)
    codes[9] = 2.5
    table = _replace(_replace(good, "label_anomaly", pa.array(words)), "label_kind", pa.array(codes, pa.float64()))
    assert _lines(table, path) == [
        "row 7, label_anomaly: 'maybe' is neither true nor false (the labels read true/false, t/f, yes/no or 1/0, "
        "in any letter case)",
        "row 9, label_kind: 2.5 is not a whole number",
        "row 31, label_anomaly: 'anomaly' is neither true nor false (the labels read true/false, t/f, yes/no or "
        "1/0, in any letter case)",
        _failed(path, 3, 3, "label_anomaly 2, label_kind 1")]
    with pytest.raises(DataValidationError) as info:
        validate_log(path)
    assert (info.value.row, info.value.column) == (7, "label_anomaly")
    assert str(info.value).endswith("The replay never sends labels (they matter to `workbench evaluate`): fix them, "
                                    "or replay with --skip-bad-rows, which replays these rows whole.")
    assert validate_log(path, skip_bad_rows=True).rows == ROWS  # as the replay takes them with --skip-bad-rows
    day = good.column("arrival_timestamp")[0].as_py().date()
    with pytest.raises(DataValidationError, match=r"Column 'label_kind' of '.*labels\.parquet' holds 2\.5, which "
                                                  "names no kind"):
        load_log_window(path, day, 1)


@pytest.mark.parametrize("text_type", [pa.string_view(), pa.dictionary(pa.int32(), pa.string()), pa.large_string()],
                         ids=["string_view", "dictionary", "large_string"])
def test_label_text_of_every_arrow_text_type_is_read_by_every_reader(good: pa.Table, tmp_path: Path,
                                                                      text_type: pa.DataType) -> None:
    """Text labels as string_view (validate called the row group undecodable: the label check's text kernel has
    no string_view kernel) or dictionary-encoded (a pandas category; evaluate and the notebooks' labels refused
    it as 'must be boolean ... Got dictionary')."""
    import pandas as pd

    from workbench.analysis.detection_summary import label_agreement
    from workbench.ml.evaluate import anomaly_labels

    flags = [row % 5 == 0 for row in range(ROWS)]
    path = tmp_path / "labels.parquet"
    words = pa.array(["yes" if flag else "no" for flag in flags]).cast(text_type)
    pq.write_table(_replace(good, "label_anomaly", words), path)
    assert validate(path).has_labels
    day = good.column("arrival_timestamp")[0].as_py().date()
    assert anomaly_labels(load_log_window(path, day, 1), path).tolist() == flags
    alerts = pd.DataFrame({"instance_id": [0], "query_id": [0], "reason": ["x"]})
    assert label_agreement(alerts, path).summary.loc["labelled anomalies", "value"] == sum(flags)
    maybe = pa.array(["maybe" if row == 3 else "no" for row in range(ROWS)]).cast(text_type)
    pq.write_table(_replace(good, "label_anomaly", maybe), path)
    assert [str(problem) for problem in check(path).problems] == [
        "row 3, label_anomaly: 'maybe' is neither true nor false (the labels read true/false, t/f, yes/no or 1/0, "
        "in any letter case)"]


@pytest.mark.parametrize("drop", ["label_kind", "label_anomaly"])
def test_a_label_column_without_the_other_is_checked_too(good: pa.Table, tmp_path: Path, drop: str) -> None:
    """A label column was checked only beside the other one: a log labelled without kinds (which evaluate reads)
    passed validate holding label_anomaly 'maybe', and a bool label_kind passed without label_anomaly."""
    words = ["false"] * ROWS
    words[5] = "maybe"
    table = _replace(_replace(good, "label_anomaly", pa.array(words)), "label_kind", pa.array([True] * ROWS))
    path = tmp_path / "one_label.parquet"
    pq.write_table(table.drop_columns([drop]), path)
    if drop == "label_kind":
        report = check(path)
        assert [str(p) for p in report.problems] == [
            "row 5, label_anomaly: 'maybe' is neither true nor false (the labels read true/false, t/f, yes/no or "
            "1/0, in any letter case)"]
        assert report.has_labels
        return
    with pytest.raises(DataValidationError) as info:
        check(path)
    assert str(info.value) == (
        f"Column 'label_kind' of query log {str(path)!r} must hold kind names: text, or whole-number codes. Got bool "
        "instead. Convert it, or drop the column (the replay never sends labels; `workbench evaluate` reads them).")


def test_int96_times_of_any_year_are_read_as_they_are(good: pa.Table, tmp_path: Path) -> None:
    """Spark's and Impala's INT96 times: read in pyarrow's default nanoseconds, year 1500 wrapped to
    2084-07-20 23:34:33.709551616 and validate blamed its nanoseconds (and pointed at prepare to cut them)."""
    path = tmp_path / "int96.parquet"
    times = good.column("arrival_timestamp").to_pylist()
    far = [times[0].replace(year=1500), *times[1:-1], times[-1].replace(year=2500)]
    pq.write_table(_replace(good, "arrival_timestamp", far), path, use_deprecated_int96_timestamps=True)
    assert [str(p) for p in check(path).problems] == [
        f"row {row}, arrival_timestamp: {year}{times[row]:-%m-%d %H:%M:%S} is outside 1970-01-01 .. 2262-04-10, "
        "the range every consumer can decode" for row, year in ((0, 1500), (ROWS - 1, 2500))]
    pq.write_table(good, path, use_deprecated_int96_timestamps=True)  # in range: the same rows as the original
    assert validate(path).rows == ROWS
    replayed = pa.Table.from_batches([batch for _, batch in LogFile(path).batches()])
    assert replayed.to_pylist() == good.select(replayed.column_names).to_pylist()
    day = good.column("arrival_timestamp")[0].as_py().date()
    assert load_log_window(path, day, 1).equals(good)


def test_the_offline_reader_reads_a_folder_as_the_replay_does(good: pa.Table, tmp_path: Path) -> None:
    """The files of a folder are the replay's; one that validate refuses is named (before: a README beside the
    files stopped training, a nested folder was read, and a file of another schema lost rows silently)."""
    day = good.column("arrival_timestamp")[0].as_py().date()
    folder = tmp_path / "log"
    (folder / "nested").mkdir(parents=True)
    pq.write_table(good.slice(0, 20), folder / "2024-03-04a.parquet")
    pq.write_table(good.slice(20), folder / "2024-03-04b.parquet")
    pq.write_table(good, folder / "nested" / "copy.parquet")
    (folder / "README.txt").write_text("exported from Redshift\n")
    assert LogFile(folder).num_rows == ROWS
    assert load_log_window(folder, day, 1).equals(good)
    bad = folder / "2024-03-04c.parquet"
    pq.write_table(_replace(good, "query_id", good.column("query_id").cast(pa.string())), bad)
    with pytest.raises(DataValidationError) as info:
        load_log_window(folder, day, 1)
    assert str(info.value).startswith(f"Column 'query_id' of query log {str(bad)!r} must be integer (int64). "
                                      "Got string instead.")


def test_a_folder_whose_files_store_the_labels_differently_is_read_as_one_log(good: pa.Table, tmp_path: Path) -> None:
    """Per-day files of two exports: the generator's bool labels and text kinds in one, 0/1 text labels and
    integer kind codes in the other. train/evaluate stopped with pyarrow's 'Schema at index 1 was different'
    and a traceback (the bool label is 'not null' in the generator's schema, the text one is not)."""
    from workbench.ml.evaluate import anomaly_kinds, anomaly_labels

    day = good.column("arrival_timestamp")[0].as_py().date()
    flags = [row % 4 == 0 for row in range(ROWS)]
    table = _replace(_replace(good, "label_anomaly", flags), "label_kind",
                     pa.array(["3" if flag else None for flag in flags]))
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(table.slice(0, 20), folder / "2024-03-04a.parquet")
    second = table.slice(20)
    second = _replace(second, "label_anomaly", pa.array(["1" if f else "0" for f in flags[20:]]))
    pq.write_table(_replace(second, "label_kind", pa.array([3 if f else None for f in flags[20:]], pa.int8())),
                   folder / "2024-03-04b.parquet")
    assert validate_log(folder).has_labels
    read = load_log_window(folder, day, 1)
    labels = anomaly_labels(read, folder)
    assert labels.tolist() == flags
    assert anomaly_kinds(read, labels, folder).tolist() == ["3" if flag else None for flag in flags]


def test_cli_validates_a_folder_file_by_file_and_across_files(good: pa.Table, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`workbench validate DIR` checks what `workbench replay DIR` reads (before: 'not a readable Parquet file')."""
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))
    folder = tmp_path / "prepared"
    folder.mkdir()
    first, second = folder / "2024-03-04a.parquet", folder / "2024-03-04b.parquet"
    pq.write_table(good.slice(0, 25), first)
    pq.write_table(_edit(good.slice(25), "num_scans", {2: -4}), second)
    assert cli.main(["validate", str(folder)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"OK {first}: 25 queries in 1 row groups, 2024-03-04 00:00:00 .. 2024-03-04 00:00:24 UTC, with anomaly labels",
        "2024-03-04b.parquet: row 2, num_scans: -4 is negative (durations, sizes and counts are >= 0)",
        f"FAILED {second}: 1 problem(s) in 1 of 15 rows (num_scans 1)",
    ]
    pq.write_table(good.slice(25), second)
    assert cli.main(["validate", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"OK {folder}: 2 files, {ROWS} queries, in order across files"
    pq.write_table(good.slice(20), second)  # overlaps the first file
    assert cli.main(["validate", str(folder)]) == 2
    assert f"'{folder}' is not sorted across files: the first row of 2024-03-04b.parquet" in capsys.readouterr().err
    # the first file's last query again at the start of the second (daily exports that overlap by one row):
    # passed, and a second copy that differed was kept by the shards and not by the windows (tester A, 33rd)
    pq.write_table(good.slice(24), second)
    assert cli.main(["validate", str(folder)]) == 2
    assert ("Row 0 of 2024-03-04b.parquet (instance_id " in (err := capsys.readouterr().err)
            and "repeats row 24 of 2024-03-04a.parquet: a query_id is unique per instance" in err), err


def test_tiny_row_groups_give_the_same_lines_and_a_damaged_one_is_named(good: pa.Table, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """One row per row group, read together (validate read each alone: ~3 ms a group, 45 min for a million)."""
    table = _edit(_unsorted(good), "num_joins", {7: -1})
    whole, tiny = tmp_path / "whole.parquet", tmp_path / "tiny.parquet"
    pq.write_table(table, whole)
    pq.write_table(table, tiny, row_group_size=1, compression="zstd")
    assert check(tiny).lines() == check(whole).lines() and len(check(tiny).lines()) == 2
    assert check(tiny).verdict() == check(whole).verdict().replace(str(whole), str(tiny))
    chunk = pq.ParquetFile(tiny).metadata.row_group(5).column(table.schema.get_field_index("num_scans"))
    data = bytearray(tiny.read_bytes())
    data[chunk.data_page_offset:chunk.data_page_offset + 16] = b"\xff" * 16
    tiny.write_bytes(bytes(data))
    lines = check(tiny).lines()
    assert [line.split(":")[0] for line in lines] == ["row 5, num_scans", "row 7, num_joins",
                                                      "row 11, arrival_timestamp"]
    assert lines[0].startswith("row 5, num_scans: rows 5..5 (row group 5) cannot be decoded: ")
    # the reader's own message ends its sentence; ours went on after it ("Corrupt snappy compressed data..")
    damaged = tmp_path / "damaged.parquet"
    pq.write_table(good.slice(0, 40), damaged, compression="snappy", use_dictionary=False)
    chunk = pq.ParquetFile(damaged).metadata.row_group(0).column(good.schema.get_field_index("num_scans"))
    data = bytearray(damaged.read_bytes())
    end = chunk.data_page_offset + chunk.total_compressed_size
    data[end - 16:end - 12] = b"\xff" * 4
    damaged.write_bytes(bytes(data))
    report = check(damaged)
    assert "cannot be decoded: Corrupt snappy compressed data" in report.lines()[0]
    assert "data.." not in str(report.error()) and "data. Run `workbench validate" in str(report.error())
    # the replay would send one row per transaction: a file of very many tiny groups is pointed at prepare
    many = tmp_path / "many.parquet"
    pq.write_table(pa.concat_tables([good] * 26), many, row_group_size=1)
    with caplog.at_level("WARNING", logger="workbench.data.validation"):
        check(many)
    assert f"{many} holds 1040 row groups of 1 rows on average" in caplog.text
    assert f"`workbench prepare {many} --out NEW`" in caplog.text


@pytest.mark.parametrize("case", ["negative_durations_and_sizes", "times_finer_than_a_microsecond",
                                  "uint64_beyond_int64", "null_arrival"])
def test_the_offline_reader_refuses_rows_validate_refuses(good: pa.Table, tmp_path: Path, case: str) -> None:
    """`train/evaluate --data` and the notebooks' data refuse what the replay refuses, naming the row (before: a
    negative duration or a NULL id was trained on, and a model of it registered; ns times stopped on a cast)."""
    if case == "null_arrival":  # outside every window: a reader filtering by time never sees the row
        table = _edit(good, "arrival_timestamp", {0: None}).cast(
            good.schema.set(5, pa.field("arrival_timestamp", pa.timestamp("us", tz="UTC"))))
        first, count = "row 0, arrival_timestamp: NULL, but every query needs a value here", 1
    else:
        make_bad, lines, (_, count, _) = ROW_CASES[case]
        table, first = make_bad(good), lines[0]
    path = tmp_path / f"{case}.parquet"
    pq.write_table(table, path)
    day = good.column("arrival_timestamp")[1].as_py().date()
    with pytest.raises(DataValidationError) as info:
        load_log_window(path, day, 1)
    assert str(info.value) == (
        f"Query log {str(path)!r} holds {count} row(s) for the days {day} .. {day} that `workbench validate` refuses "
        f"(the file's first: {first}). Run `workbench validate {path}` to list them; `workbench prepare {path} "
        "--out NEW` writes a copy it can use (what converts repaired, the rest set aside with reasons).")
    assert (info.value.path, info.value.column) == (str(path), first.split(", ")[1].split(":")[0])


def test_a_partitioned_dataset_is_pointed_at_prepare_which_reads_it(good: pa.Table, tmp_path: Path) -> None:
    """A hive-partitioned folder (files only in sub-folders, the partition column only in their names): the
    refusal says so and names `prepare`, which reads it into a log that validates (before: 'holds no .parquet
    files' only)."""
    folder = tmp_path / "hive"
    pq.write_to_dataset(good, folder, partition_cols=["instance_id"])
    nested = sorted(folder.rglob("*.parquet"))
    with pytest.raises(DataValidationError) as info:
        validate_log(folder)
    message = str(info.value)
    assert message.startswith(f"Folder {str(folder)!r} holds no .parquet files at its top level (there are some "
                              "below it, e.g. ")
    assert str(nested[0].relative_to(folder)) in message or str(nested[-1].relative_to(folder)) in message
    assert f"`workbench prepare {folder} --out NEW` reads every file below a folder" in message
    summary = prepare(folder, tmp_path / "log.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rows_out == ROWS
    assert validate(tmp_path / "log.parquet").rows == ROWS


def test_a_folder_reads_parquet_files_of_any_suffix_case_and_names_files_in_sub_folders(
        good: pa.Table, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An export of per-day files named ``.PARQUET`` lost that day without a word, and files one folder down
    (a partitioned layout) were left out without a word; the first is read, the second named."""
    folder = tmp_path / "log"
    (folder / "day=2024-03-05").mkdir(parents=True)
    pq.write_table(good.slice(0, 20), folder / "a.parquet")
    pq.write_table(good.slice(20), folder / "b.PARQUET")
    pq.write_table(good, folder / "day=2024-03-05" / "part-0.parquet")
    with caplog.at_level("WARNING", logger="workbench"):
        assert validate_log(folder).rows == ROWS
    assert ("1 .parquet file(s) in sub-folders (e.g. 'day=2024-03-05/part-0.parquet') are not part of the log"
            in caplog.text)
    assert validate(folder).rows == ROWS  # the package's validate takes a folder as the CLI does


def test_read_batches_refuses_rows_the_replay_refuses_naming_the_row(good: pa.Table, tmp_path: Path) -> None:
    """read_batches (public) yielded a NULL instance_id and a negative duration, and a NaN stopped it with
    pyarrow's 'Float value nan was truncated' naming no file, row or column."""
    cases = {"null": (_null_instance(good), 3, "instance_id", "NULL, but every query needs a value here"),
             "negative": (_negative(good), 5, "execution_duration_ms", "-12 is negative"),
             "nan": (_floats(good), 2, "mbytes_scanned", "nan is not a finite number")}
    for name, (table, row, column, detail) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        with pytest.raises(DataValidationError) as info:
            list(read_batches(path, batch_size=16))
        assert (info.value.row, info.value.column) == (row, column), name
        assert str(info.value).startswith(f"Query log {str(path)!r}: row {row} cannot be read as a Redset row "
                                          f"({column}: {detail}"), str(info.value)


def test_read_batches_names_the_file_of_a_damaged_page(good: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "damaged.parquet"
    pq.write_table(good, path, compression="snappy")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(good.schema.get_field_index("feature_fingerprint"))
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset + chunk.total_compressed_size // 2  # inside a page; the footer stays whole
    data[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(DataValidationError) as info:
        list(read_batches(path))
    assert str(info.value).startswith(f"Query log {str(path)!r} cannot be read after row 0 (")
    assert info.value.path == str(path)


def test_labels_of_some_files_of_a_folder_are_read_with_nulls_for_the_others(good: pa.Table, tmp_path: Path) -> None:
    """A labelled day beside unlabelled ones: evaluate dropped every label ('no labelled rows')."""
    day = good.column("arrival_timestamp")[0].as_py().date()
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(good.slice(0, 20), folder / "a.parquet")
    pq.write_table(good.slice(20).drop_columns(["label_anomaly", "label_kind"]), folder / "b.parquet")
    window = load_log_window(folder, day, 1)
    labels = window.column("label_anomaly")
    assert window.num_rows == ROWS and labels.null_count == ROWS - 20
    assert labels.slice(0, 20).to_pylist() == [str(v).lower() for v in good.column("label_anomaly")[:20].to_pylist()]


def test_a_log_dated_outside_the_apps_event_time_range_is_refused_before_it_is_replayed(
        good: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log of 1999 validated OK, then every event went to the dead-letter topic (the apps take 2000-2100)."""
    import datetime as dt

    from workbench.config import Settings
    from workbench.pipeline._eventtime import log_span_outside
    from workbench.runtime import Workbench

    times = [t.replace(year=1999) for t in good.column("arrival_timestamp").to_pylist()]
    path = tmp_path / "y1999.parquet"
    pq.write_table(_replace(good, "arrival_timestamp", times), path)
    assert cli.main(["--home", str(tmp_path / "home"), "validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "has every event outside the apps' event-time range [2000-01-01 00:00:00, 2100-01-01 00:00:00) UTC" in err
    assert "WORKBENCH_EVENT_TIME_MIN=1999-" in err
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(DataValidationError, match="has every event outside the apps' event-time range"):
        Workbench.start(data=path, settings=settings)
    assert not (tmp_path / "home").exists()  # refused before anything was created
    wider = settings.with_overrides(event_time_min=dt.datetime(1990, 1, 1, tzinfo=dt.UTC))
    assert log_span_outside(wider, times[0], times[-1], path) is None
    partly = log_span_outside(settings, times[0], times[-1].replace(year=2000), path)
    assert partly is not None and partly[0] is False and "has some events outside" in partly[1]


def test_validate_warns_of_a_query_id_that_comes_again_at_another_arrival(
        good: pa.Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A reused query_id at another arrival time passed without a word, and the shards kept 60,315 of a file's
    60,320 rows while the windows counted 60,320 (tester A, 33rd session). The log stays valid: a warning."""
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))
    path = tmp_path / "reused.parquet"
    ids = good.column("query_id").to_pylist()
    instances = good.column("instance_id").to_pylist()
    later = next(i for i in range(len(ids) - 1, 0, -1) if instances[i] == instances[0])
    ids[later] = ids[0]  # the first query's id again, on its instance, at a later arrival
    pq.write_table(good.set_column(good.schema.get_field_index("query_id"), "query_id", pa.array(ids, pa.int64())),
                   path)
    assert cli.main(["--home", str(tmp_path / "home"), "validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert (f"warning: a query (instance_id, query_id) comes at more than one arrival time, e.g. instance_id "
            f"{instances[0]}, query_id {ids[0]}: 2 arrivals from ") in err, err
    pq.write_table(good, path)
    assert cli.main(["--home", str(tmp_path / "home"), "validate", str(path)]) == 0
    assert "more than one arrival time" not in capsys.readouterr().err
    assert not (tmp_path / "home").exists()  # validating creates no home (nor leaves a spill folder in it)


def _sidecar(log: Path, **columns: pa.Array) -> Path:
    from workbench.data.generator import window_labels_path

    side = window_labels_path(log)
    pq.write_table(pa.table(columns), side)
    return side


def test_a_window_label_file_of_another_shape_is_read_or_refused_naming_it(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Tester, 40th session: a sidecar with instance ids as text, windows off the 10-minute grid, a date or an int64
    start matched no window (window recall 0, no word; ms read as ns put another tool's kind in 1970), and one
    without a column stopped evaluate on a KeyError that did not name the file."""
    import datetime as dt

    from workbench.cli import main
    from workbench.data.exceptions import DataValidationError
    from workbench.data.generator import window_labels

    log = tmp_path / "log.parquet"
    make_log(log, rows=50)
    start = dt.datetime(2024, 3, 6, 12, 10, tzinfo=dt.UTC)
    expected = [(7, start, "queue_wave"), (8, start + dt.timedelta(minutes=10), "3")]

    def read() -> list[tuple]:
        table = window_labels(log)
        assert table.schema.field("window_start").type == pa.timestamp("ms", tz="UTC")
        return list(zip(*(table.column(c).to_pylist() for c in ("instance_id", "window_start", "kind")), strict=True))

    good = {"kind": pa.array(["queue_wave", "3"])}
    _sidecar(log, instance_id=pa.array([7, 8], pa.int32()),
             window_start=pa.array([start, start + dt.timedelta(minutes=10)], pa.timestamp("us", tz="Asia/Tokyo")),
             **good)
    assert read() == expected
    _sidecar(log, instance_id=pa.array(["7", " 8"]), window_start=pa.array(["2024-03-06T12:10:00Z",
                                                                             "2024-03-06 12:20"]), **good)
    assert read() == expected  # digits as text, ISO text (naive = UTC)
    naive = [start.replace(tzinfo=None), (start + dt.timedelta(minutes=10)).replace(tzinfo=None)]
    _sidecar(log, instance_id=pa.array([7.0, 8.0]), window_start=pa.array(naive, pa.timestamp("ns")),
             kind=pa.array([None, 3.0]))
    assert [row[:2] for row in read()] == [row[:2] for row in expected] and read()[1][2] == "3"
    refused = [
        ({"instance_id": pa.array(["7", "eight"]), "window_start": pa.array([start] * 2), **good},
         r"column 'instance_id', row 1 holds 'eight', not an instance id"),
        ({"instance_id": pa.array([7, None]), "window_start": pa.array([start] * 2), **good},
         r"column 'instance_id', row 1 is NULL"),
        ({"instance_id": pa.array([7, 8]), "window_start": pa.array([start, start + dt.timedelta(minutes=3)]), **good},
         r"column 'window_start', row 1 holds 2024-03-06 12:13:00.000000 UTC, not the start of a 10-minute window"),
        ({"instance_id": pa.array([7, 8]), "window_start": pa.array([int(start.timestamp() * 1000)] * 2), **good},
         r"column 'window_start' is of type int64, not a timestamp"),
        ({"instance_id": pa.array([7, 8]), "window_start": pa.array([start.date()] * 2), **good},
         r"column 'window_start' is of type date32\[day\]: a window starts at a time of day"),
        ({"instance_id": pa.array([7, 8]), "window_start": pa.array(["yesterday", "today"]), **good},
         r"column 'window_start', row 0 holds 'yesterday', not an ISO time"),
        ({"instance_id": pa.array([7, 8]), "kind": good["kind"]}, r"lacks the column\(s\) 'window_start'"),
    ]
    for columns, message in refused:
        side = _sidecar(log, **columns)
        with pytest.raises(DataValidationError, match=rf"Window-label file '.*log\.windows\.parquet',? {message}"):
            window_labels(log)
    side.unlink()
    side.write_bytes(b"instance_id,window_start,kind\n")
    with pytest.raises(DataValidationError, match=r"'.*log\.windows\.parquet' does not read as Parquet"):
        window_labels(log)
    side.unlink()
    side.mkdir()
    with pytest.raises(DataValidationError, match="is a folder, not a Parquet file"):
        window_labels(log)
    assert main(["validate", str(log)]) == 2
    assert "Window-label file" in capsys.readouterr().err
