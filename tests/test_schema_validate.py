"""Validation of Parquet query logs: one clear error per kind of problem, and lazy typed reading."""

from __future__ import annotations

import types
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from workbench import cli
from workbench.data import COLUMNS, REDSET_SCHEMA, DataValidationError, generate, read_batches, validate


@pytest.fixture(scope="module")
def log_table(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    path = tmp_path_factory.mktemp("log") / "log.parquet"
    generate(path, days=1, instances=3, rows_per_day=3_000, seed=7)
    return pq.read_table(path)


def _write(table: pa.Table, path: Path, **kwargs: object) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def test_valid_log_summary(log_table: pa.Table, tmp_path: Path) -> None:
    path = _write(log_table, tmp_path / "ok.parquet", row_group_size=1_000)
    summary = validate(path, batch_size=500)
    assert summary.rows == log_table.num_rows > 2_000
    assert summary.row_groups == -(-log_table.num_rows // 1_000)
    assert summary.has_labels
    ts = log_table.column("arrival_timestamp")
    assert summary.first_arrival == pc.min(ts).as_py()
    assert summary.last_arrival == pc.max(ts).as_py()
    assert not validate(_write(log_table.drop_columns(["label_anomaly"]), tmp_path / "nl.parquet")).has_labels
    # labels without kinds: evaluate reads them (kind "unnamed"), so the log is labelled
    assert validate(_write(log_table.drop_columns(["label_kind"]), tmp_path / "flags.parquet")).has_labels


def test_missing_columns_listed_at_most_five(log_table: pa.Table, tmp_path: Path) -> None:
    dropped = list(COLUMNS[-7:])
    path = _write(log_table.drop_columns(dropped), tmp_path / "missing.parquet")
    with pytest.raises(DataValidationError) as info:
        validate(path)
    message = str(info.value)
    assert "lacks 7 of the 24 required Redset column(s)" in message
    assert ", ".join(dropped[:5]) + " and 2 more" in message
    assert dropped[5] not in message
    assert info.value.column == dropped[0]
    assert info.value.path == str(path)


def test_mistyped_column_names_expected_and_found(log_table: pa.Table, tmp_path: Path) -> None:
    i = log_table.schema.get_field_index("query_id")
    table = log_table.set_column(i, "query_id", pc.cast(log_table.column("query_id"), pa.string()))
    with pytest.raises(DataValidationError) as info:
        validate(_write(table, tmp_path / "typed.parquet"))
    message = str(info.value)
    assert "Column 'query_id'" in message
    assert "must be integer (int64)" in message
    assert "Got string instead" in message
    assert info.value.column == "query_id"
    assert info.value.row is None


def test_equivalent_types_accepted_and_cast_back(log_table: pa.Table, tmp_path: Path) -> None:
    table = log_table
    for name, type_ in [("query_id", pa.int32()), ("num_joins", pa.int16()),
                        ("arrival_timestamp", pa.timestamp("us")), ("query_type", pa.large_string())]:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.cast(table.column(name), type_))
    path = _write(table, tmp_path / "variants.parquet")
    assert validate(path).rows == log_table.num_rows
    batches = read_batches(path, batch_size=1_000, labels=True)
    assert isinstance(batches, types.GeneratorType)  # lazy: nothing read yet
    batches = list(batches)
    assert [b.num_rows for b in batches[:-1]] == [1_000] * (len(batches) - 1)
    back = pa.Table.from_batches(batches)
    assert back.schema.names == [*COLUMNS, "label_anomaly", "label_kind"]
    for field in REDSET_SCHEMA:
        assert back.schema.field(field.name).type == field.type
    # Naive timestamps are read as UTC: the instants are unchanged.
    assert table.schema.field("arrival_timestamp").type.tz is None
    assert back.column("arrival_timestamp").equals(log_table.column("arrival_timestamp"))
    assert back.column("query_id").equals(log_table.column("query_id"))
    some = pa.Table.from_batches(list(read_batches(path, columns=["query_id", "instance_id"])))
    assert some.schema.names == ["query_id", "instance_id"]


@pytest.mark.parametrize("bad_row", [1, 999, 1_000, 2_345])
def test_unsorted_rows_name_first_offender(log_table: pa.Table, tmp_path: Path, bad_row: int) -> None:
    # Swap rows bad_row - 1 and bad_row after making their times distinct and increasing.
    order = list(range(log_table.num_rows))
    order[bad_row - 1], order[bad_row] = order[bad_row], order[bad_row - 1]
    table = log_table.take(order)
    ts = table.column("arrival_timestamp").to_pylist()
    if ts[bad_row] == ts[bad_row - 1]:
        pytest.skip("equal timestamps at the swapped rows")
    with pytest.raises(DataValidationError) as info:
        validate(_write(table, tmp_path / "unsorted.parquet", row_group_size=700), batch_size=500)
    message = str(info.value)
    assert "is not sorted by (arrival_timestamp, query_id)" in message
    assert f"row {bad_row}, arrival_timestamp" in message and f"comes after row {bad_row - 1} " in message
    assert f"{ts[bad_row]:%Y-%m-%d %H:%M:%S.%f}" in message
    assert f"{ts[bad_row - 1]:%Y-%m-%d %H:%M:%S.%f}" in message
    assert info.value.row == bad_row


def test_equal_times_ordered_by_query_id(tmp_path: Path) -> None:
    stamp = pa.scalar(0, pa.timestamp("us", tz="UTC"))
    table = pa.table({name: pa.nulls(3, REDSET_SCHEMA.field(name).type) for name in COLUMNS})
    table = table.set_column(COLUMNS.index("arrival_timestamp"), "arrival_timestamp",
                             pa.array([stamp.value] * 3, pa.timestamp("us", tz="UTC")))
    table = table.set_column(COLUMNS.index("query_id"), "query_id", pa.array([5, 9, 7], pa.int64()))
    table = table.set_column(COLUMNS.index("instance_id"), "instance_id", pa.array([1, 1, 1], pa.int64()))
    with pytest.raises(DataValidationError) as info:
        validate(_write(table, tmp_path / "ties.parquet"))
    assert info.value.row == 2
    assert "query_id 7" in str(info.value) and "query_id 9" in str(info.value)


@pytest.mark.parametrize("copied", [0, 499, 500, 1_234])
def test_a_second_copy_of_a_query_is_named_with_the_row_it_repeats(log_table: pa.Table, tmp_path: Path,
                                                                   copied: int) -> None:
    """Overlapping exports merged: a copy sorts next to its original, also across a batch boundary."""
    order = list(range(log_table.num_rows))
    order.insert(copied + 1, copied)
    path = _write(log_table.take(order), tmp_path / "copied.parquet", row_group_size=700)
    with pytest.raises(DataValidationError) as info:
        validate(path, batch_size=500)
    row = log_table.slice(copied, 1).to_pylist()[0]
    assert info.value.row == copied + 1 and info.value.column == "query_id"
    message = str(info.value)
    assert f"repeats row {copied} (instance_id {row['instance_id']}, query_id {row['query_id']}" in message
    assert "1 problem(s)" in message and f"workbench prepare {path} --out NEW" in message
    # The same query id on another instance, at the same time, is another query.
    other = log_table.slice(copied, 1)
    other = other.set_column(0, "instance_id", pa.array([row["instance_id"] + 1000], pa.int64()))
    twin = pa.concat_tables([log_table.slice(0, copied + 1), other.cast(log_table.schema),
                             log_table.slice(copied + 1)])
    assert validate(_write(twin, tmp_path / "twin.parquet", row_group_size=700), batch_size=500).rows == \
        log_table.num_rows + 1


def test_empty_file(log_table: pa.Table, tmp_path: Path) -> None:
    path = _write(log_table.slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(DataValidationError, match=r"empty\.parquet' has no rows"):
        validate(path)


def test_unreadable_and_absent_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.parquet"
    text.write_text("instance_id,query_id\n1,2\n")
    with pytest.raises(DataValidationError, match=r"notes\.parquet' is not a readable Parquet file") as info:
        validate(text)
    assert info.value.path == str(text)
    with pytest.raises(DataValidationError, match=r"absent\.parquet' does not exist"):
        validate(tmp_path / "absent.parquet")


@pytest.fixture
def data_cli_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only this package's sub-commands, so the test does not depend on other packages' CLIs.
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))


@pytest.mark.usefixtures("data_cli_only")
def test_cli_validate_reports_error_and_exits_nonzero(
    log_table: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(log_table.drop_columns(["query_type"]), tmp_path / "bad.parquet")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error: Query log")
    assert "lacks 1 of the 24 required Redset column(s): query_type" in err


@pytest.mark.usefixtures("data_cli_only")
def test_cli_generate_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    argv = ["--home", str(home), "generate", "--days", "1", "--instances", "3",
            "--rows-per-day", "2000", "--seed", "3", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    path = home / "data" / "redset_1d_3i_s3.parquet"
    assert path.exists()
    assert str(path) in out and "queries" in out
    assert cli.main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {path}: ")
