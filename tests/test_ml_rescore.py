"""Versioned rescoring: two versions side by side in the lakehouse, idempotent, resumable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from workbench.config import Settings
from workbench.data.schema import COLUMNS
from workbench.ml._testing import day_slice, generated_log
from workbench.ml._train import train_table
from workbench.ml.rescore import rescore
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.shards import read_shards, write_shard

D = [dt.date(2024, 3, 1) + dt.timedelta(days=k) for k in range(4)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    log = generated_log(days=4, rows_per_day=1500, seed=11, anomaly_rate=0.03)
    train_table(settings.models_dir, day_slice(log, D[0]), D[0], window_days=1)
    train_table(settings.models_dir, day_slice(log, D[1]), D[1], window_days=1)
    offset = 0
    for day in D[2:]:
        events = day_slice(log, day).select(list(COLUMNS))
        for part, chunk in enumerate((events.slice(0, 700), events.slice(700))):
            n = chunk.num_rows
            chunk = chunk.append_column("kafka_partition", pa.array([part] * n, pa.int32()))
            chunk = chunk.append_column("kafka_offset", pa.array(range(offset, offset + n), pa.int64()))
            write_shard(settings.shards_dir, day, part, offset, chunk)
            offset += n
    return settings


def _store_day(settings: Settings, log: pa.Table, day: dt.date, parts: tuple[int, ...]) -> None:
    """Write chunks ``parts`` of ``day`` (chunk 0: its first 700 rows on partition 0; chunk 1: the rest on 1)."""
    events = day_slice(log, day).select(list(COLUMNS))
    for part, chunk in enumerate((events.slice(0, 700), events.slice(700))):
        if part not in parts:
            continue
        n, offset = chunk.num_rows, 10_000 * (day - D[0]).days + 700 * part
        chunk = chunk.append_column("kafka_partition", pa.array([part] * n, pa.int32()))
        chunk = chunk.append_column("kafka_offset", pa.array(range(offset, offset + n), pa.int64()))
        write_shard(settings.shards_dir, day, part, offset, chunk)


def test_a_resumed_rescore_scores_a_finished_day_again_when_rows_came_for_it(tmp_path: Path) -> None:
    """A resumed run skipped the days an interrupted run had finished, also when the stream stored more
    of their rows in between: those rows never got the version's anomalies."""
    log = generated_log(days=4, rows_per_day=1500, seed=11, anomaly_rate=0.03)
    homes = {name: Settings(home=tmp_path / name) for name in ("resumed", "whole")}
    for settings in homes.values():
        train_table(settings.models_dir, day_slice(log, D[1]), D[1], window_days=1)
    resumed, whole = homes["resumed"], homes["whole"]
    _store_day(resumed, log, D[2], (0,))
    _store_day(resumed, log, D[3], (0, 1))

    def stop_after_first_day(done: int, total: int, day: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rescore(resumed, "v0001-2024-03-02", progress=stop_after_first_day)
    _store_day(resumed, log, D[2], (1,))  # the rest of the day, stored after its rescoring
    again = rescore(resumed, "v0001-2024-03-02", progress=False)
    assert again.skipped_days == [] and again.days == ["2024-03-03", "2024-03-04"]
    for day in D[2:]:
        _store_day(whole, log, day, (0, 1))
    rescore(whole, "v0001-2024-03-02", progress=False)
    assert _lake(resumed) == _lake(whole) and len(_lake(whole)) > 0


def _lake(settings: Settings) -> set[tuple[int, int, str, float]]:
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        rows = lake.read().select(["instance_id", "query_id", "model_version", "score"]).to_pylist()
    return {(r["instance_id"], r["query_id"], r["model_version"], round(r["score"], 6)) for r in rows}


def test_two_versions_side_by_side_idempotent_and_resumable(home: Settings) -> None:
    v1, v2 = "v0001-2024-03-01", "v0002-2024-03-02"
    a = rescore(home, v1, start="2024-03-03", end="2024-03-04", progress=False)
    assert a.days == ["2024-03-03"] and a.rows == read_shards(home.shards_dir, days=[D[2]]).num_rows
    assert a.anomalies > 0 and a.inserted == a.anomalies
    calls: list[str] = []

    def stop_after_first_day(done: int, total: int, day: str) -> None:
        calls.append(day)
        raise KeyboardInterrupt  # Ctrl-C (or a kill) after the first day is in the lakehouse

    with pytest.raises(KeyboardInterrupt):
        rescore(home, v2, progress=stop_after_first_day)
    assert calls == ["2024-03-03"]
    resumed = rescore(home, v2, progress=False)
    assert resumed.skipped_days == ["2024-03-03"] and resumed.days == ["2024-03-04"]
    stored = _lake(home)
    assert {v for _, _, v, _ in stored} == {v1, v2}
    again = rescore(home, v2, progress=False)  # complete runs start over and insert nothing
    assert again.days == ["2024-03-03", "2024-03-04"] and again.inserted == 0
    assert _lake(home) == stored
    one = read_shards(home.shards_dir, columns=["instance_id"]).column("instance_id")[0].as_py()
    only = rescore(home, v1, instances=[one], progress=False)
    assert 0 < only.rows < read_shards(home.shards_dir).num_rows and only.inserted <= only.anomalies


def test_cli_rescore_and_errors(home: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    assert main(["--home", str(home.home), "rescore", "--version", "v0001-2024-03-01", "--start",
                 "2024-03-04"]) == 0
    captured = capsys.readouterr()
    assert "v0001-2024-03-01: 1 day(s), " in captured.out and "no stored row" not in captured.err
    # an instance the log does not have read like a finished run: "0 rows scored", and nothing else
    assert main(["--home", str(home.home), "rescore", "--version", "v0001-2024-03-01", "--instances", "999"]) == 0
    note = "note: no stored row matches the selection (the shards hold 2024-03-03 to 2024-03-04"
    assert note in capsys.readouterr().err
    assert main(["--home", str(home.home), "rescore", "--version", "v0042-2024-03-01"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # instance ids as `prepare` and `report` take them (it refused "1,2": "invalid int value")
    ids = sorted(set(read_shards(home.shards_dir, columns=["instance_id"]).column("instance_id").to_pylist()))[:2]
    for spelled in ([f"{ids[0]},{ids[1]}"], [str(ids[0]), str(ids[1])]):
        assert main(["--home", str(home.home), "rescore", "--version", "v0001-2024-03-01", "--start", "2024-03-04",
                     "--instances", *spelled]) == 0
        assert "no stored row" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--home", str(home.home), "rescore", "--version", "v0001-2024-03-01", "--instances", "1,,2"])
    assert "--instances takes comma-separated instance ids such as 3,17,42. Got '1,,2'" in capsys.readouterr().err


def test_workbench_rescore_is_the_library_call(home: Settings) -> None:
    from workbench.runtime import Workbench

    result = Workbench(home).rescore("v0002-2024-03-02", start="2024-03-04", progress=False)
    assert result.version == "v0002-2024-03-02" and result.days == ["2024-03-04"]
    assert result.rows == read_shards(home.shards_dir, days=[D[3]]).num_rows and result.refused == 0


def test_same_window_in_any_shard_layout_gives_the_same_model(tmp_path: Path) -> None:
    from workbench.ml._train import train_day

    log = generated_log(days=2, rows_per_day=1500, seed=5)
    events = log.select(list(COLUMNS))
    metas = []
    for name, sizes in (("a", [len(events)]), ("b", [97] * (len(events) // 97 + 1))):
        settings = Settings(home=tmp_path / name)
        offset = 0
        for size in sizes:  # one big shard, or many small ones written in another order
            chunk = events.slice(offset, size)
            if not chunk.num_rows:
                break
            n = chunk.num_rows
            chunk = chunk.append_column("kafka_partition", pa.array([0] * n, pa.int32()))
            chunk = chunk.append_column("kafka_offset", pa.array(range(offset, offset + n), pa.int64()))
            for day in D[:2]:
                part = day_slice(chunk, day)
                if part.num_rows:
                    write_shard(settings.shards_dir, day, 0, int(part.column("kafka_offset")[0].as_py()), part)
            offset += n
        metas.append(train_day(settings, D[1], window_days=2).meta)
    a, b = metas
    assert a["inputs_sha256"] == b["inputs_sha256"] and a["files"] == b["files"]  # byte-identical model files
    assert a["rows"] == b["rows"] and a["rows"]["window"] > 0


def test_a_busy_lakehouse_is_waited_for_not_a_failed_rescore(home: Settings, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rescores of one version at once: one stopped with 'the lakehouse catalog was locked ... retry the
    same batch later' (exit 2). Another writer's commit is injected here before the first write of each day."""
    import shutil

    from workbench.store.exceptions import LakehouseBusyError

    settings = Settings(home=tmp_path / "home")
    shutil.copytree(home.models_dir, settings.models_dir)
    shutil.copytree(home.shards_dir, settings.shards_dir)
    real_write = AnomalyLakehouse.write
    refused: list[int] = []

    def busy_once(self: AnomalyLakehouse, rows: pa.Table) -> int:
        if len(refused) % 2 == 0:
            refused.append(rows.num_rows)
            raise LakehouseBusyError("Failed to flush changes into DuckLake: database is locked (injected)")
        refused.append(0)
        return real_write(self, rows)

    monkeypatch.setattr(AnomalyLakehouse, "write", busy_once)
    monkeypatch.setattr("time.sleep", lambda s: None)  # the retry's backoff, on a fake clock
    result = rescore(settings, "v0001-2024-03-01", progress=False)
    assert result.inserted == result.anomalies > 0 and len(refused) == 2 * len(result.days)
    assert len(_lake(settings)) == result.anomalies
