"""``workbench profile``: a log against the published Redset aggregates."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_log
from workbench import cli
from workbench.data.generator import generate
from workbench.data.profile import profile


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's default shape (16 instances, default seed and rates), two days at a fifth of the volume."""
    path = tmp_path_factory.mktemp("gen") / "gen.parquet"
    generate(path, days=2, rows_per_day=100_000)
    return path


def test_the_generators_default_output_is_within_every_published_range(generated: Path) -> None:
    report = profile(generated)
    assert report.tier == "provisioned" and report.instances == 16
    assert report.out_of_range == [], str(report)
    statuses = {c.name: c.status for c in report.checks}
    assert statuses.pop("weekday / weekend rate") == "n/a"  # two days cannot show a weekly cycle
    assert set(statuses.values()) == {"in"}
    assert "all in range" in str(report)


def test_a_log_unlike_redset_is_marked_out_of_range(tmp_path: Path) -> None:
    # Uniform 1..5000 ms runtimes, cache hits typed select/insert/copy with fingerprints, flat arrivals.
    path = make_log(tmp_path / "flat.parquet", rows=5000, spacing_s=60.0)
    report = profile(path)
    out = {c.name for c in report.out_of_range}
    assert {"execution p50", "cached typed other, NULL fingerprint", "hourly peak / trough"} <= out
    p50 = report.check("execution p50")
    assert 2000 < p50.observed < 3000 and p50.status == "OUT"
    assert "OUT" in str(report) and f"{len(out)} out of range" in str(report)


def test_serverless_logs_use_the_serverless_figures(tmp_path: Path) -> None:
    path = make_log(tmp_path / "log.parquet", rows=2000)
    table = pq.read_table(path)
    table = table.set_column(1, "cluster_size", pa.nulls(table.num_rows, pa.int64()))
    pq.write_table(table, path)
    report = profile(path)
    assert report.tier == "serverless"
    names = [c.name for c in report.checks]
    assert "insert" in names and "cluster_size mean (provisioned rows)" not in names
    assert profile(path, tier="provisioned").check("cached (was_cached)").low == 0.03


def test_cli_profile_prints_the_table_and_strict_fails_out_of_range(tmp_path: Path, generated: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("workbench.data._cli",))
    assert cli.main(["profile", str(generated), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "fingerprint repeat share" in out and "all in range" in out
    flat = make_log(tmp_path / "flat.parquet", rows=3000, spacing_s=60.0)
    assert cli.main(["profile", str(flat)]) == 0
    assert cli.main(["profile", str(flat), "--strict"]) == 1
    assert cli.main(["profile", str(tmp_path / "missing.parquet")]) == 2
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    capsys.readouterr()
    assert cli.main(["profile", str(tmp_path / "garbage.parquet")]) == 2
    error = capsys.readouterr().err
    assert "garbage.parquet" in error and "Parquet" in error and "CREATE VIEW" not in error  # no SQL, no caret


def test_a_log_of_types_validate_refuses_or_without_arrivals_gets_a_message_naming_the_column(tmp_path: Path) -> None:
    """profile read duration[us] runtimes as milliseconds (1000 times too slow, and said so as a finding) and
    stopped with a TypeError traceback on a log whose arrival_timestamp is NULL on every row."""
    from workbench.data import DataValidationError

    table = pq.read_table(make_log(tmp_path / "log.parquet", rows=500))
    micros = table.set_column(8, "execution_duration_ms", table.column(8).cast(pa.int64()).cast(pa.duration("us")))
    pq.write_table(micros, tmp_path / "micros.parquet")
    with pytest.raises(DataValidationError, match=r"^Column 'execution_duration_ms' of query log .*micros\.parquet' "
                                                  r"must be integer \(int64\)\. Got duration\[us\] instead\."):
        profile(tmp_path / "micros.parquet")
    no_times = table.set_column(5, "arrival_timestamp", pa.nulls(500, table.schema.field(5).type))
    pq.write_table(no_times, tmp_path / "no_times.parquet")
    with pytest.raises(DataValidationError, match=r"no row with an arrival_timestamp to profile: it is NULL on all "
                                                  r"500 rows") as info:
        profile(tmp_path / "no_times.parquet")
    assert info.value.column == "arrival_timestamp"


def test_one_row_far_from_the_rest_is_said_not_taken_as_the_logs_span(tmp_path: Path) -> None:
    """Tester A, 33rd session: one outlier row made a 3-day log "27482.0 days" and nothing more."""
    import datetime as dt

    table = pq.read_table(make_log(tmp_path / "log.parquet", rows=3000, spacing_s=100.0))
    arrivals = table.column("arrival_timestamp").to_pylist()
    arrivals[-1] = dt.datetime(2099, 5, 1, tzinfo=dt.UTC)
    column = table.schema.get_field_index("arrival_timestamp")
    table = table.set_column(column, "arrival_timestamp", pa.array(arrivals, table.schema.field(column).type))
    pq.write_table(table, tmp_path / "outlier.parquet")
    plain = profile(tmp_path / "log.parquet")
    assert not plain.sparse_span and ", 3.5 days;" in str(plain).splitlines()[0]
    stretched = profile(tmp_path / "outlier.parquet")
    assert stretched.sparse_span and stretched.active_days == 5
    assert ("27,451.0 days (2024-03-04 .. 2099-05-01) of which 5 have queries: a few rows lie far from the rest"
            in str(stretched).splitlines()[0])
    assert stretched.check("weekday / weekend rate").status == "n/a"  # five days, not a weekly cycle
