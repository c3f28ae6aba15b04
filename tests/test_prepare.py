"""``workbench prepare``: every source variant becomes one typed, sorted log that ``validate`` accepts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_log
from workbench import cli
from workbench.data import DataValidationError, prepare
from workbench.data.schema import LABEL_SCHEMA, REDSET_SCHEMA, validate
from workbench.replay import LogFile, validate_log

ROWS = 3000
FULL_SCHEMA = pa.schema(list(REDSET_SCHEMA) + list(LABEL_SCHEMA), metadata=REDSET_SCHEMA.metadata)


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """A sorted log over ~3.5 days (100 s apart) with a few labelled rows and NULLs in nullable columns."""
    path = make_log(tmp_path_factory.mktemp("canon") / "log.parquet", rows=ROWS, instances=5, spacing_s=100.0)
    table = pq.read_table(path)
    rng = np.random.default_rng(7)
    labelled = rng.random(ROWS) < 0.05
    table = table.set_column(table.schema.get_field_index("label_anomaly"), LABEL_SCHEMA.field("label_anomaly"),
                             pa.array(labelled))
    kinds = pa.array(np.where(labelled, "slow_fingerprint", None).tolist(), pa.string())
    table = table.set_column(table.schema.get_field_index("label_kind"), LABEL_SCHEMA.field("label_kind"), kinds)
    # Equal arrival times for some neighbours, so ties must sort by query_id.
    ts = pc.cast(table.column("arrival_timestamp"), pa.int64()).to_numpy().copy()
    ts[1::10] = ts[0::10][: len(ts[1::10])]
    table = table.set_column(5, REDSET_SCHEMA.field("arrival_timestamp"),
                             pa.array(ts).cast(REDSET_SCHEMA.field("arrival_timestamp").type))
    return table.sort_by([("arrival_timestamp", "ascending"), ("query_id", "ascending")]).cast(FULL_SCHEMA)


def _doubles(t: pa.Table) -> pa.Table:
    """What a pandas export of nullable integers produces: every integer column as double."""
    return pa.table({f.name: (t.column(f.name).cast(pa.float64()) if pa.types.is_integer(f.type) else t.column(f.name))
                     for f in t.schema})


def _naive_ns(t: pa.Table) -> pa.Table:
    col = t.column("arrival_timestamp").cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns"))
    return t.set_column(5, pa.field("arrival_timestamp", col.type), col)


def _unsorted(t: pa.Table) -> pa.Table:
    return t.take(np.random.default_rng(3).permutation(t.num_rows))


def _string_ids(t: pa.Table) -> pa.Table:
    out = {}
    for f in t.schema:
        col = t.column(f.name)
        if f.name in ("instance_id", "query_id", "user_id", "cluster_size", "cache_source_query_id"):
            col = col.cast(pa.string())
        elif pa.types.is_boolean(f.type) and f.name != "label_anomaly":
            col = pc.if_else(col, "t", "f")
        elif f.name in ("feature_fingerprint", "query_type"):
            col = col.cast(pa.large_string()).dictionary_encode()
        elif f.name == "arrival_timestamp":
            col = col.cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("ms"))
        out[f.name] = col
    return pa.table(out)


def _upper_case(t: pa.Table) -> pa.Table:
    return t.rename_columns([name.upper() for name in t.column_names])


def _bool_ints(t: pa.Table) -> pa.Table:
    return pa.table({f.name: (t.column(f.name).cast(pa.int8()) if f.name in ("was_aborted", "was_cached")
                              else t.column(f.name)) for f in t.schema})


def _everything(t: pa.Table) -> pa.Table:
    return _upper_case(_unsorted(_naive_ns(_doubles(t))))


VARIANTS: dict[str, Callable[[pa.Table], pa.Table]] = {
    "double_ints": _doubles, "naive_ns": _naive_ns, "unsorted": _unsorted, "string_ids": _string_ids,
    "upper_case": _upper_case, "bool_ints": _bool_ints, "everything": _everything,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_prepares_into_the_canonical_log(variant: str, canonical: pa.Table, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(VARIANTS[variant](canonical), source, row_group_size=700)
    out = tmp_path / "out.parquet"
    summary = prepare(source, out, temp_dir=tmp_path / "tmp")
    assert (summary.rows_in, summary.rows_out, summary.rejected) == (ROWS, ROWS, {})
    assert validate(out).rows == ROWS
    written = pq.read_table(out)
    assert written.schema.equals(FULL_SCHEMA, check_metadata=True)
    assert written.equals(canonical)
    assert not (tmp_path / "tmp").exists() or not any((tmp_path / "tmp").iterdir())  # spill folder removed


def test_a_parts_folder_and_globs_are_one_log(canonical: pa.Table, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    instances = canonical.column("instance_id").to_numpy()
    for instance in np.unique(instances):  # Redset's parts/<instance>.parquet, each in its own variant
        piece = canonical.filter(pa.array(instances == instance))
        variant = list(VARIANTS.values())[int(instance) % len(VARIANTS)]
        pq.write_table(variant(piece), parts / f"{instance}.parquet")
    summary = prepare(parts, tmp_path / "a.parquet", temp_dir=tmp_path / "tmp")
    assert len(summary.sources) == len(np.unique(instances)) and summary.rows_out == ROWS
    assert pq.read_table(tmp_path / "a.parquet").equals(canonical)
    # A glob and an explicit file that overlap count each file once.
    first = sorted(parts.iterdir())[0]
    summary = prepare([str(parts / "*.parquet"), first], tmp_path / "b.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rows_out == ROWS
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_unrepairable_rows_are_dropped_counted_and_sampled(canonical: pa.Table, tmp_path: Path) -> None:
    bad = _doubles(canonical.slice(0, 10)).to_pylist()
    bad[0]["query_id"] = None
    bad[1]["instance_id"] = None
    bad[2]["arrival_timestamp"] = None
    bad[3]["execution_duration_ms"] = 12.5       # non-integral
    bad[4]["mbytes_scanned"] = 3.25
    bad[5]["cluster_size"] = float("nan")         # NaN is a NULL, not a refusal
    bad[5]["query_id"] = 1.0
    bad[6]["execution_duration_ms"] = float("inf")  # filed as not_integral before
    bad[7]["mbytes_scanned"] = 1e30                   # a whole number, past int64: likewise
    good = _doubles(canonical)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.concat_tables([good, pa.Table.from_pylist(bad[:8], schema=good.schema)]), source)
    out = tmp_path / "out.parquet"
    summary = prepare(source, out, temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"null_key:query_id": 1, "null_key:instance_id": 1, "null_key:arrival_timestamp": 1,
                                "not_integral:execution_duration_ms": 1, "not_integral:mbytes_scanned": 1,
                                "not_finite:execution_duration_ms": 1, "inexact:mbytes_scanned": 1}
    assert summary.rows_out == ROWS + 1 and summary.rows_in == ROWS + 8
    validate(out)
    kept = pq.read_table(out).filter(pc.equal(pq.read_table(out).column("query_id"), 1))
    assert kept.num_rows == 1 and kept.column("cluster_size").null_count == 1
    lines = [json.loads(line) for line in summary.rejected_sample.read_text().splitlines()]
    assert summary.rejected_sample == tmp_path / "out.parquet.rejected.jsonl"
    assert {line["reason"] for line in lines} == set(summary.rejected)
    refused = next(line for line in lines if line["reason"] == "not_integral:execution_duration_ms")
    assert refused["file"] == str(source) and refused["row"] == ROWS + 3
    assert refused["values"]["execution_duration_ms"] == "12.5"
    assert "not_integral:execution_duration_ms: 1" in str(summary)
    # A clean run afterwards removes the stale sample.
    assert prepare(tmp_path / "out.parquet", tmp_path / "again.parquet", temp_dir=tmp_path / "tmp").rejected == {}
    assert not (tmp_path / "again.parquet.rejected.jsonl").exists()


def test_rows_validation_refuses_are_refused_so_the_output_replays(canonical: pa.Table, tmp_path: Path) -> None:
    """Negative durations and times no consumer can decode were written out; year 10000 crashed the summary."""
    table = canonical.slice(0, 40)
    stamps = pc.cast(table.column("arrival_timestamp"), pa.int64()).to_pylist()
    stamps[0] = -62_135_596_800_000_000  # 0001-01-01
    stamps[-1] = 253_402_300_800_000_000  # 10000-01-01
    table = table.set_column(5, "arrival_timestamp", pa.array(stamps, pa.int64()).cast(table.schema.field(5).type))
    durations = table.column("execution_duration_ms").to_pylist()
    durations[7] = -12
    table = table.set_column(8, "execution_duration_ms", pa.array(durations, pa.int64()))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"time_range:arrival_timestamp": 2, "negative:execution_duration_ms": 1}
    assert summary.rows_out == 37
    assert validate(tmp_path / "out.parquet").rows == 37
    lines = [json.loads(line) for line in summary.rejected_sample.read_text().splitlines()]
    assert sorted((line["reason"], line["row"]) for line in lines) == [
        ("negative:execution_duration_ms", 7), ("time_range:arrival_timestamp", 0),
        ("time_range:arrival_timestamp", 39)]


def test_durations_of_any_unit_become_milliseconds_and_are_listed_in_the_summary(canonical: pa.Table,
                                                                                 tmp_path: Path) -> None:
    """DuckDB reads an Arrow duration as the bare count of its unit: duration[us] was written as milliseconds,
    1000 times too long, and duration[ms] was converted without a line in the summary."""
    table = canonical.slice(0, 40)
    ms = table.column("execution_duration_ms").to_pylist()
    ms[3] = -1  # -0.5 ms below: still a negative duration, not 0
    stored = {"execution_duration_ms": pa.array([v * 1000 + 999 for v in ms[:3]] + [-500] + [v * 1000 for v in ms[4:]],
                                                pa.int64()).cast(pa.duration("us")),
              "queue_duration_ms": table.column("queue_duration_ms").cast(pa.duration("ms")),
              "compile_duration_ms": pa.array([v // 1000 for v in table.column("compile_duration_ms").to_pylist()],
                                              pa.int64()).cast(pa.duration("s"))}
    for name, values in stored.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"negative:execution_duration_ms": 1}
    lines = str(summary).splitlines()
    assert "  duration[ms] -> BIGINT: queue_duration_ms" in lines
    assert "  duration[us] (as milliseconds, finer parts cut) -> BIGINT: execution_duration_ms" in lines
    assert "  duration[s] (as milliseconds) -> BIGINT: compile_duration_ms" in lines
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("execution_duration_ms").to_pylist() == ms[:3] + ms[4:]
    keep = [row for row in range(40) if row != 3]
    assert out.column("queue_duration_ms").to_pylist() == canonical.column("queue_duration_ms").take(keep).to_pylist()
    assert out.column("compile_duration_ms").to_pylist() == [
        v // 1000 * 1000 for v in canonical.column("compile_duration_ms").take(keep).to_pylist()]
    assert validate(tmp_path / "out.parquet").rows == 39


def test_null_labels_are_normal_rows_kept_as_null(canonical: pa.Table, tmp_path: Path) -> None:
    """A labelled export whose normal rows have a NULL label_anomaly (as evaluate reads them, and tells users to
    write them) lost every normal query: prepare set them aside as null_label, validate refused them."""
    table = canonical.slice(0, 60)
    flags = table.column("label_anomaly").to_pylist()
    flags[0] = True
    sparse = [True if flag else None for flag in flags]
    index = table.schema.get_field_index("label_anomaly")
    pq.write_table(table.set_column(index, "label_anomaly", pa.array(sparse, pa.bool_())), tmp_path / "in.parquet")
    assert validate(tmp_path / "in.parquet").rows == 60
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {} and summary.rows_out == 60
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("label_anomaly").to_pylist() == sparse  # NULL stays NULL: all NULL is a log nobody labelled
    assert out.schema.field("label_anomaly").nullable
    assert validate(tmp_path / "out.parquet").rows == 60


def test_kind_codes_stored_as_floats_become_the_kinds_validate_reads(canonical: pa.Table, tmp_path: Path) -> None:
    """Kind codes as pandas writes them beside NULLs (floats; NaN where Spark leaves a gap): validate and evaluate
    read 3.0 as kind "3", but prepare refused the whole source ('DOUBLE, which cannot become ... label_kind')."""
    table = canonical.slice(0, 30)
    codes = [3.0 if row % 3 == 0 else float("nan") if row % 3 == 1 else None for row in range(30)]
    codes[9] = 2.5  # names no kind: set aside, as validate refuses it
    index = table.schema.get_field_index("label_kind")
    pq.write_table(table.set_column(index, "label_kind", pa.array(codes, pa.float64(), from_pandas=False)),
                   tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"not_integral:label_kind": 1}
    assert "  DOUBLE -> VARCHAR: label_kind" in str(summary).splitlines()
    assert pq.read_table(tmp_path / "out.parquet").column("label_kind").to_pylist() == [
        "3" if row % 3 == 0 else None for row in range(30) if row != 9]
    assert validate(tmp_path / "out.parquet").rows == 29


def test_a_boolean_kind_column_is_refused_as_validate_and_evaluate_refuse_it(canonical: pa.Table,
                                                                             tmp_path: Path) -> None:
    """prepare wrote kinds "true" and "false" from a boolean label_kind (a flag in the kind's place), which name
    no kind and which validate and evaluate refuse in the source."""
    table = canonical.slice(0, 10)
    index = table.schema.get_field_index("label_kind")
    pq.write_table(table.set_column(index, "label_kind", pa.array([True, False] * 5, pa.bool_())),
                   tmp_path / "in.parquet")
    with pytest.raises(DataValidationError, match="label_kind") as caught:
        prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert "in.parquet" in str(caught.value) and "BOOLEAN" in str(caught.value)
    assert not (tmp_path / "out.parquet").exists()


def test_ids_rounded_by_floats_are_refused(canonical: pa.Table, tmp_path: Path) -> None:
    """Beyond 2**24 (float32) or 2**53 (float64) a float holds not every whole number: distinct ids merge."""
    table = _doubles(canonical.slice(0, 30))
    users = table.column("user_id").to_pylist()
    users[4] = 16_777_218.0
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users, pa.float32()))
    ids = table.column("query_id").to_pylist()
    ids[9] = 2.0**53 + 2
    table = table.set_column(table.schema.get_field_index("query_id"), "query_id", pa.array(ids, pa.float64()))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"inexact:user_id": 1, "inexact:query_id": 1}
    assert summary.rows_out == 28 and validate(tmp_path / "out.parquet").rows == 28


def test_overlapping_sources_keep_the_first_copy_of_each_query(canonical: pa.Table, tmp_path: Path) -> None:
    """Two exports that overlap, one typed differently: each query once, the repeats counted and sampled."""
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(canonical.slice(0, 2000), first)
    pq.write_table(_doubles(canonical.slice(1500)), second)  # rows 1500..1999 in both
    out = tmp_path / "out.parquet"
    summary = prepare([first, second], out, temp_dir=tmp_path / "tmp")
    assert summary.rows_in == ROWS + 500 and summary.rows_out == ROWS
    assert summary.rejected == {"duplicate:query_id": 500} and summary.rows_filtered == 0
    assert pq.read_table(out).equals(canonical)
    validate(out)
    lines = [json.loads(line) for line in summary.rejected_sample.read_text().splitlines()]
    assert len(lines) == 20 and {line["reason"] for line in lines} == {"duplicate:query_id"}
    assert {line["file"] for line in lines} == {str(second)}  # the first file's copy is the one kept
    assert [line["row"] for line in lines] == list(range(20))  # rows of b.parquet: 1500.. of the log
    assert lines[0]["values"]["query_id"] == canonical.column("query_id")[1500].as_py()
    assert "duplicate:query_id: 500" in str(summary)


def test_bad_strings_and_booleans_are_refused_per_column(canonical: pa.Table, tmp_path: Path) -> None:
    table = _string_ids(canonical.slice(0, 6))
    rows = table.to_pylist()
    rows[0]["user_id"] = "alice"
    rows[1]["was_cached"] = "maybe"
    rows[2]["query_id"] = "12.5"
    rows[3]["cluster_size"] = ""              # empty string: NULL
    rows[4]["instance_id"] = "null"           # a null word in a key: no instance
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema.remove_metadata()), tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"not_an_integer:user_id": 1, "not_a_boolean:was_cached": 1,
                                "not_an_integer:query_id": 1, "null_key:instance_id": 1}
    assert summary.rows_out == 2


def test_filters_keep_exactly_the_asked_rows(canonical: pa.Table, tmp_path: Path) -> None:
    pq.write_table(canonical, tmp_path / "in.parquet")
    ts = canonical.column("arrival_timestamp")
    inst = canonical.column("instance_id")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "f.parquet", instances=[1, 3], start="2024-03-05",
                      end="2024-03-06T12:00", temp_dir=tmp_path / "tmp")
    lo = pa.scalar(pd_ts("2024-03-05T00:00"), ts.type)
    hi = pa.scalar(pd_ts("2024-03-06T12:00"), ts.type)
    mask = pc.and_(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)), pc.is_in(inst, pa.array([1, 3])))
    expected = canonical.filter(mask)
    assert summary.rows_out == expected.num_rows > 0
    assert summary.rows_filtered == ROWS - expected.num_rows
    assert pq.read_table(tmp_path / "f.parquet").equals(expected)
    a = prepare(tmp_path / "in.parquet", tmp_path / "s1.parquet", sample_instances=2, seed=5, temp_dir=tmp_path)
    b = prepare(tmp_path / "in.parquet", tmp_path / "s2.parquet", sample_instances=2, seed=5, temp_dir=tmp_path)
    chosen = set(pq.read_table(tmp_path / "s1.parquet").column("instance_id").to_pylist())
    assert len(chosen) == 2 and a.rows_out == b.rows_out
    assert (tmp_path / "s1.parquet").read_bytes() == (tmp_path / "s2.parquet").read_bytes()
    assert a.rows_out == canonical.filter(pc.is_in(inst, pa.array(sorted(chosen)))).num_rows


def pd_ts(text: str) -> int:
    import datetime as dt

    value = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1_000_000)


def test_output_is_byte_identical_and_row_groups_fixed(canonical: pa.Table, tmp_path: Path) -> None:
    pq.write_table(_everything(canonical), tmp_path / "in.parquet")
    digests = []
    for run in range(2):
        out = tmp_path / f"out{run}.parquet"
        prepare(tmp_path / "in.parquet", out, row_group_size=1000, threads=2, temp_dir=tmp_path / "tmp")
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        meta = pq.ParquetFile(out).metadata
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 1000]
    assert digests[0] == digests[1]
    # Overwriting in place with the same inputs leaves the same bytes.
    prepare(tmp_path / "in.parquet", tmp_path / "out0.parquet", row_group_size=1000, temp_dir=tmp_path / "tmp")
    assert hashlib.sha256((tmp_path / "out0.parquet").read_bytes()).hexdigest() == digests[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp leftovers


def test_the_folders_of_a_killed_prepare_are_removed_by_the_next_one(canonical: pa.Table, tmp_path: Path) -> None:
    """kill -9 of a prepare left its output folder beside the output and its spill folder in the home's tmp,
    megabytes each, for good: later runs, and `start`, never removed them. A live run's folders stay."""
    import os
    import subprocess
    import sys

    pq.write_table(_everything(canonical), tmp_path / "in.parquet")
    out, temp = tmp_path / "out.parquet", tmp_path / "tmp"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [tmp_path / f".out.parquet.tmp-{dead.pid}-1a2b3c4d", temp / f"prepare-{dead.pid}-1a2b3c4d"]
    live = [tmp_path / f".out.parquet.tmp-{os.getpid()}-5e6f7a8b", temp / f"prepare-{os.getpid()}-5e6f7a8b",
            tmp_path / ".other.parquet.tmp-1-1a2b3c4d"]  # another output's: not this run's to judge
    for folder in left + live:
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"x" * 1000)
    prepare(tmp_path / "in.parquet", out, temp_dir=temp)
    assert pq.read_metadata(out).num_rows > 0
    assert not any(folder.exists() for folder in left)
    assert all(folder.exists() for folder in live)


def test_split_by_day_writes_one_file_per_day_in_time_order(canonical: pa.Table, tmp_path: Path) -> None:
    pq.write_table(_unsorted(canonical), tmp_path / "in.parquet")
    out = tmp_path / "days"
    summary = prepare(tmp_path / "in.parquet", out, split="day", temp_dir=tmp_path / "tmp")
    names = [p.name for p in summary.outputs]
    assert names == ["2024-03-04.parquet", "2024-03-05.parquet", "2024-03-06.parquet", "2024-03-07.parquet"]
    assert sorted(p.name for p in out.iterdir()) == names
    for path in summary.outputs:
        day = path.stem
        stamps = pq.read_table(path).column("arrival_timestamp").to_pylist()
        assert {f"{s:%Y-%m-%d}" for s in stamps} == {day}
    assert validate_log(out).rows == ROWS
    assert pa.concat_tables(pq.read_table(p) for p in summary.outputs).equals(canonical)
    log = LogFile(out)
    assert log.num_rows == ROWS
    rows = pa.Table.from_batches([b for _, b in log.batches(0, 512)])
    assert rows.equals(canonical.select(REDSET_SCHEMA.names).cast(REDSET_SCHEMA.remove_metadata()))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    prepare(tmp_path / "in.parquet", out, split="day", temp_dir=tmp_path / "tmp")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_clear_errors_name_the_file_and_column(canonical: pa.Table, tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="does not exist"):
        prepare(tmp_path / "missing.parquet", tmp_path / "out.parquet")
    pq.write_table(canonical.drop_columns(["query_id"]), tmp_path / "nokey.parquet")
    with pytest.raises(DataValidationError, match=r"nokey.parquet.*lacks the key column\(s\) query_id") as info:
        prepare(tmp_path / "nokey.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert info.value.column == "query_id"
    odd = canonical.set_column(1, "cluster_size", pa.array([[1]] * ROWS, pa.list_(pa.int64())))
    pq.write_table(odd, tmp_path / "odd.parquet")
    with pytest.raises(DataValidationError, match="'cluster_size' of .*odd.parquet.* cannot become"):
        prepare(tmp_path / "odd.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    # a DATE has no time of day: as midnight, each day's queries would all arrive at once
    dates = pa.array([t.date() for t in canonical.column("arrival_timestamp").to_pylist()], pa.date32())
    pq.write_table(canonical.set_column(canonical.schema.get_field_index("arrival_timestamp"), "arrival_timestamp",
                                        dates), tmp_path / "dates.parquet")
    with pytest.raises(DataValidationError, match="'arrival_timestamp' of .*dates.parquet.* is DATE, which cannot"):
        prepare(tmp_path / "dates.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataValidationError, match="junk.parquet.*not a readable Parquet"):
        prepare(tmp_path / "junk.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert not (tmp_path / "out.parquet").exists()


def test_cli_prepare_prints_the_summary(canonical: pa.Table, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))
    pq.write_table(_everything(canonical), tmp_path / "in.parquet")
    argv = ["--home", str(tmp_path / "home"), "prepare", str(tmp_path / "in.parquet"), "--out",
            str(tmp_path / "out"), "--split", "day", "--instances", "1,2,3,4,5", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"prepared {ROWS:,} of {ROWS:,} rows" in out and "4 files in" in out
    assert "TIMESTAMP_NS (naive, taken as UTC) -> TIMESTAMPTZ: arrival_timestamp" in out
    assert cli.main(["validate", str(tmp_path / "out" / "2024-03-04.parquet")]) == 0


def test_epoch_times_name_their_unit_rule_a_backwards_range_is_refused_and_an_old_log_is_warned_of(
        canonical: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary said only BIGINT -> TIMESTAMPTZ of epoch numbers; --start after --end read every file
    and then reported every row filtered out; a log dated 1970 was prepared without the warning validate
    gives (every one of its events would be dead-lettered)."""
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))
    ts = canonical.column("arrival_timestamp")
    millis = pc.divide(ts.cast(pa.int64()), 1000)  # epoch milliseconds
    source = tmp_path / "in.parquet"
    pq.write_table(canonical.set_column(canonical.schema.get_field_index("arrival_timestamp"), "arrival_timestamp",
                                        millis), source)
    summary = prepare(source, tmp_path / "ms.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rows_out == ROWS and pq.read_table(tmp_path / "ms.parquet").equals(canonical)
    assert ("BIGINT (epoch numbers: s, ms, us or ns by their magnitude) -> TIMESTAMPTZ: arrival_timestamp"
            in summary.coercions)
    with pytest.raises(DataValidationError, match=r"start \(2024-03-06T00:00:00\+00:00\) must be before end"):
        prepare(source, tmp_path / "none.parquet", start="2024-03-06", end="2024-03-05", temp_dir=tmp_path)
    seconds = pc.subtract(pc.divide(millis, 1000), 1_700_000_000)  # the same log in 1970
    pq.write_table(canonical.set_column(canonical.schema.get_field_index("arrival_timestamp"), "arrival_timestamp",
                                        seconds), tmp_path / "old.parquet")
    argv = ["--home", str(tmp_path / "home"), "prepare", str(tmp_path / "old.parquet"), "--out",
            str(tmp_path / "old-out.parquet"), "--no-progress"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: Query log" in err and "has every event outside the apps' event-time range" in err


def test_label_columns_are_kept_under_either_spelling(canonical: pa.Table, tmp_path: Path) -> None:
    renamed = _doubles(canonical).rename_columns(
        [{"label_anomaly": "is_anomaly", "label_kind": "Anomaly_Kind"}.get(n, n) for n in canonical.column_names])
    pq.write_table(renamed, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rows_out == ROWS and validate(tmp_path / "out.parquet").has_labels
    assert pq.read_table(tmp_path / "out.parquet").equals(canonical)
    # Labels of some sources only are kept: the other sources' rows are not labelled (NULL), and the summary
    # says so (before, the labels of every source were dropped without a word).
    unlabelled = canonical.drop_columns(["label_anomaly", "label_kind"]).slice(0, 10)
    ids = pa.array(range(10**9, 10**9 + 10), pa.int64())  # other queries than the labelled source's
    unlabelled = unlabelled.set_column(unlabelled.schema.get_field_index("query_id"), "query_id", ids)
    pq.write_table(unlabelled, tmp_path / "b.parquet")
    mixed = prepare([tmp_path / "in.parquet", tmp_path / "b.parquet"], tmp_path / "mixed.parquet", temp_dir=tmp_path)
    assert "absent in the source, written as NULL: label_anomaly, label_kind" in str(mixed)
    out = pq.read_table(tmp_path / "mixed.parquet")
    assert out.num_rows == ROWS + 10 and out.column("label_anomaly").null_count == 10
    assert out.column("label_anomaly").drop_null().to_pylist() == canonical.column("label_anomaly").to_pylist()
    assert validate(tmp_path / "mixed.parquet").rows == ROWS + 10


def test_columns_that_match_no_redset_column_are_named_with_a_close_name(canonical: pa.Table, tmp_path: Path) -> None:
    """A misspelt `write_table_id` became NULL `write_table_ids`, listed only as absent in the source."""
    names = ["write_table_id" if n == "write_table_ids" else n for n in canonical.column_names]
    table = canonical.rename_columns(names)
    table = table.append_column("export_batch", pa.array([1] * table.num_rows, pa.int64()))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.ignored_columns == (("write_table_id", "write_table_ids"), ("export_batch", ""))
    text = str(summary)
    assert "absent in the source, written as NULL: write_table_ids" in text
    assert "not Redset columns, left out: write_table_id (did you mean write_table_ids?), export_batch" in text


def test_text_ids_must_be_decimal_numbers(canonical: pa.Table, tmp_path: Path) -> None:
    """DuckDB's casts read '0x10' as 16, '0b11' as 3 and '1_000' as 1000; a log's text ids mean none of them."""
    texts = ["0x10", "0b11", "1_000", "0o17", " 42 ", "7.0", "-0", "1e3"]
    table = canonical.slice(0, len(texts))
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(texts))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"not_an_integer:user_id": 4}
    assert pq.read_table(tmp_path / "out.parquet").column("user_id").to_pylist() == [42, 7, 0, 1000]


def test_text_ids_past_what_a_double_holds_are_read_exactly_or_refused(canonical: pa.Table, tmp_path: Path) -> None:
    """Through a double, "12345678901234567.5" became 12345678901234568: an id that is not in the log."""
    texts = ["12345678901234567.5", "4611686018427387904.5", "12345678901234567", "12345678901234567.000",
             "9007199254740993", "1e15", "2e16"]
    table = canonical.slice(0, len(texts))
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(texts))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"not_an_integer:user_id": 3}
    assert pq.read_table(tmp_path / "out.parquet").column("user_id").to_pylist() == [
        12345678901234567, 12345678901234567, 9007199254740993, 10**15]


def test_time_text_must_be_an_unambiguous_date_and_time(canonical: pa.Table, tmp_path: Path) -> None:
    """DuckDB reads "BST" as Bangladesh time, a date alone as midnight and "epoch" as 1970: all refused."""
    accepted = {"2024-03-04 10:00:00": "2024-03-04T10:00:00", "2024-03-04T10:00:00Z": "2024-03-04T10:00:00",
                "2024-03-04 11:00:00+01:00": "2024-03-04T10:00:00", "2024-03-04T05:00:00 America/New_York":
                "2024-03-04T10:00:00", "2024-03-04 10:00:00.5 UTC": "2024-03-04T10:00:00.500000"}
    refused = ["2024-03-04 10:00:00 BST", "2024-03-04 10:00:00 CEST", "2024-03-04", "epoch", "now"]
    texts = [*accepted, *refused]
    table = canonical.slice(0, len(texts))
    table = table.set_column(table.schema.get_field_index("arrival_timestamp"), "arrival_timestamp", pa.array(texts))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"not_a_timestamp:arrival_timestamp": len(refused)}
    times = pq.read_table(tmp_path / "out.parquet").column("arrival_timestamp").to_pylist()
    assert sorted(t.isoformat() for t in times) == sorted(f"{v}+00:00" for v in accepted.values())


@pytest.mark.parametrize("second", ["QUERY_ID", "Query_Id ", "query_id"])
def test_two_columns_for_one_redset_column_are_refused(canonical: pa.Table, tmp_path: Path, second: str) -> None:
    """Names that differ only by case (or repeat exactly) hold two candidates: the file is refused, naming both
    (before: DuckDB read the second as 'QUERY_ID_1' and prepare dropped it without a word)."""
    table = canonical.append_column(second, pc.add(canonical.column("query_id"), 1))
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(DataValidationError) as info:
        prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert str(info.value) == (f"Source {str(tmp_path / 'in.parquet')!r} has two columns that both map to 'query_id' "
                               f"('query_id' and {second!r}); column names are matched case-insensitively. "
                               "Drop one of them.")
    assert info.value.column == second
    assert not (tmp_path / "out.parquet").exists()


def test_text_stored_as_bytes_is_read_as_text_and_bytes_that_are_not_utf8_are_refused(canonical: pa.Table,
                                                                                      tmp_path: Path) -> None:
    """Byte arrays without the UTF-8 annotation, which validate and the replay read as text (before: prepare
    refused the file: 'query_type is BLOB, which cannot become the Redset column')."""
    table = canonical.slice(0, 6)
    values = [v.encode() for v in table.column("query_type").to_pylist()]
    values[2] = b"sel\xffect"
    binary = table.set_column(table.schema.get_field_index("query_type"), pa.field("query_type", pa.binary()),
                              pa.array(values, pa.binary()))
    pq.write_table(binary, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.rejected == {"not_utf8:query_type": 1}
    expected = table.take([0, 1, 3, 4, 5])
    assert pq.read_table(tmp_path / "out.parquet").equals(expected.cast(pq.read_schema(tmp_path / "out.parquet")))
    sample = json.loads(summary.rejected_sample.read_text().splitlines()[0])
    assert (sample["reason"], sample["row"]) == ("not_utf8:query_type", 2)


def test_a_damaged_page_of_a_file_with_page_checksums_is_named_not_decoded(canonical: pa.Table, tmp_path: Path) -> None:
    """Flipped bytes decoded into times decades away, which were then refused as out of range (or kept)."""
    good = tmp_path / "good.parquet"
    pq.write_table(canonical, good, write_page_checksum=True, compression="zstd")
    data = bytearray(good.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 200] = bytes(b ^ 0xFF for b in data[middle:middle + 200])
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    assert prepare(good, tmp_path / "out.parquet", temp_dir=tmp_path / "tmp").rows_out == canonical.num_rows
    with pytest.raises(DataValidationError, match=r"bad\.parquet' is damaged: row group 0 of 1 .*checksum"):
        prepare(bad, tmp_path / "out2.parquet", temp_dir=tmp_path / "tmp")
    assert not (tmp_path / "out2.parquet").exists()
    with pytest.raises(DataValidationError, match="checksum"):
        validate(bad)


def test_a_column_without_a_name_is_reported_as_such(canonical: pa.Table, tmp_path: Path) -> None:
    """DuckDB reads it as C<position>, a name the file does not have."""
    table = canonical.slice(0, 10).append_column("", pa.array(range(10)))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = prepare(tmp_path / "in.parquet", tmp_path / "out.parquet", temp_dir=tmp_path / "tmp")
    assert summary.ignored_columns == (("(a column without a name)", ""),)
