"""Replaying a prepared folder (one file per day) on the real broker: one stream, exact resume across files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import consume_all, make_log
from workbench.config import Settings
from workbench.data import DataValidationError, codec, prepare
from workbench.replay import LogFile, Replay, ReplayController, validate_log

ROWS = 20_000
SPACING_S = 15.0  # 20k rows over ~3.5 days: four files


def _none_status():
    class _S:
        next_row = 0
        state = ""

    return _S()


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _messy_source(tmp_path: Path) -> tuple[Path, pa.Table]:
    """An unsorted, double-typed, upper-case, naive-ns export of a known log, in three parts."""
    canonical = pq.read_table(make_log(tmp_path / "canonical.parquet", rows=ROWS, instances=4, spacing_s=SPACING_S))
    messy = {}
    for field in canonical.schema:
        column = canonical.column(field.name)
        if pa.types.is_integer(field.type):
            column = column.cast(pa.float64())
        elif pa.types.is_timestamp(field.type):
            column = column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns"))
        messy[field.name.upper()] = column
    table = pa.table(messy).take(np.random.default_rng(1).permutation(ROWS))
    parts = tmp_path / "parts"
    parts.mkdir()
    for index, start in enumerate(range(0, ROWS, 7000)):
        pq.write_table(table.slice(start, 7000), parts / f"part-{index}.parquet", row_group_size=1500)
    return parts, canonical


def _ids(messages: list) -> Counter:
    decoded = codec.decode_values([m.value() for m in messages],
                                  [codec.header(m.headers(), "encoding") for m in messages])
    assert not decoded.errors
    batch = decoded.batch
    return Counter(zip(batch.column("instance_id").to_pylist(), batch.column("query_id").to_pylist(), strict=True))


def _table_ids(table: pa.Table) -> Counter:
    return Counter(zip(table.column("instance_id").to_pylist(), table.column("query_id").to_pylist(), strict=True))


def test_kill_9_mid_replay_of_a_split_folder_resumes_to_exactly_the_rows(kafka_settings: Settings,
                                                                        tmp_path: Path) -> None:
    parts, canonical = _messy_source(tmp_path)
    days = tmp_path / "days"
    summary = prepare(parts, days, split="day", row_group_size=1000, temp_dir=tmp_path / "tmp")
    assert summary.rows_out == ROWS and len(summary.outputs) == 4
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in summary.outputs]
    env = {
        **os.environ,
        "WORKBENCH_HOME": str(kafka_settings.home),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "WORKBENCH_TOPIC_QUERY_EVENTS": kafka_settings.topic_query_events,
        "WORKBENCH_TOPIC_DEAD_LETTER": kafka_settings.topic_dead_letter,
        "WORKBENCH_TOPIC_REPLAY_CONTROL": kafka_settings.topic_replay_control,
        "WORKBENCH_TOPIC_REPLAY_STATE": kafka_settings.topic_replay_state,
    }
    # one query per message (not the packed default), so the messages count the rows
    command = [sys.executable, "-m", "workbench.cli", "replay", str(days), "--speedup", "30000",
               "--batch-size", "300", "--encoding", "json", "--quiet"]
    controller = ReplayController(kafka_settings)
    # First kill inside the first file, the second past the first file boundary.
    for threshold in (sizes[0] // 2, sizes[0] + 1500):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(lambda threshold=threshold: (controller.status() or _none_status()).next_row > threshold)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    status = controller.status()
    assert sizes[0] < status.next_row < ROWS and status.rows_total == ROWS
    finished = subprocess.run([*command[:-1], "--speedup", "max", "--quiet"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=ROWS, idle=5)
    assert len(messages) == ROWS
    assert _ids(messages) == _table_ids(canonical)
    assert controller.status().next_row == ROWS and controller.status().state == "finished"


def test_seek_resume_and_status_span_the_files_of_a_folder(kafka_settings: Settings, tmp_path: Path) -> None:
    canonical = pq.read_table(make_log(tmp_path / "log.parquet", rows=6000, instances=3, spacing_s=60.0))
    days = tmp_path / "days"
    prepare(tmp_path / "log.parquet", days, split="day", row_group_size=500, temp_dir=tmp_path / "tmp")
    log = LogFile(days)
    assert log.num_rows == 6000 and len(log.parts) == 5
    # Rows are 60 s apart from midnight: 2024-03-06T00:00:30 is row 2881, in the third file.
    target_us = int(datetime(2024, 3, 6, 0, 0, 30, tzinfo=UTC).timestamp() * 1_000_000)
    assert log.row_at_or_after(target_us) == 2881
    replay = Replay(days, settings=kafka_settings, speedup=60).start()
    try:
        _wait(lambda: (replay.status() or _none_status()).next_row > 0)
        replay.pause()
        _wait(lambda: replay.status().state == "paused")
        replay.seek("2024-03-06T00:00:30")
        _wait(lambda: replay.status().next_row == 2881)
        assert replay.status().event_time.isoformat() == "2024-03-06T00:01:00+00:00"
        replay.stop()
        replay.join(20)
    finally:
        replay.stop()
    # A new run resumes at the saved global row and sends exactly the rest.
    rest = Replay(days, settings=kafka_settings, speedup=0).run()
    assert rest.state == "finished" and rest.rows_total == 6000
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, idle=3)
    sent = _ids(messages)
    tail = canonical.slice(2881)
    assert sum(sent.values()) >= 6000 - 2881
    assert all(sent[key] == 1 for key in _table_ids(tail))


def test_a_folder_out_of_order_across_files_is_refused(kafka_settings: Settings, tmp_path: Path) -> None:
    from workbench.runtime import Workbench

    canonical = pq.read_table(make_log(tmp_path / "log.parquet", rows=1000))
    folder = tmp_path / "bad"
    folder.mkdir()
    pq.write_table(canonical.slice(500), folder / "a.parquet")  # later rows in the first file by name
    pq.write_table(canonical.slice(0, 500), folder / "b.parquet")
    with pytest.raises(DataValidationError, match=r"not sorted across files: the first row of b\.parquet"):
        validate_log(folder)
    with pytest.raises(DataValidationError, match="not sorted across files"):
        Replay(folder, settings=kafka_settings, speedup=0).run()
    with pytest.raises(DataValidationError, match="not sorted across files"):
        Workbench.start(data=folder, settings=kafka_settings)
    (folder / "a.parquet").unlink()
    (folder / "b.parquet").unlink()
    with pytest.raises(DataValidationError, match="holds no .parquet files"):
        validate_log(folder)


def test_a_folder_with_an_empty_day_file_is_read_without_it_and_says_so(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A per-day export with a day of no queries (a zero-row file) was refused whole ("has no rows");
    the empty file is now skipped with a warning naming it, everywhere a folder is read. A folder of
    only empty files is still refused, naming the file."""
    from workbench.cli import main

    log = pq.read_table(make_log(tmp_path / "log.parquet", rows=600))
    days = tmp_path / "days"
    days.mkdir()
    pq.write_table(log.slice(0, 300), days / "2024-03-04.parquet")
    pq.write_table(log.slice(0, 0), days / "2024-03-05.parquet")  # a day without queries
    pq.write_table(log.slice(300), days / "2024-03-06.parquet")
    with caplog.at_level("WARNING", logger="workbench.replay._source"):
        summary = validate_log(days)
    assert summary.rows == 600
    assert caplog.text.count("1 file(s) without rows skipped: 2024-03-05.parquet") == 1  # once, not per listing
    assert LogFile(days).num_rows == 600
    assert main(["--home", str(tmp_path / "home"), "validate", str(days)]) == 0
    only_empty = tmp_path / "empty"
    only_empty.mkdir()
    pq.write_table(log.slice(0, 0), only_empty / "2024-03-05.parquet")
    with pytest.raises(DataValidationError, match="2024-03-05.parquet' has no rows"):
        validate_log(only_empty)


def _resent(message) -> bool:
    return codec.header(message.headers(), codec.RESENT_HEADER) is not None


def test_a_folder_that_gained_a_day_goes_on_from_its_saved_position(kafka_settings: Settings, tmp_path: Path) -> None:
    """A daily export: the folder replayed to its end gains the next day's file. The replay goes on with exactly
    the new rows; a reset replays the old rows marked re-sent (counted once downstream) and the new ones not."""
    canonical = pq.read_table(make_log(tmp_path / "log.parquet", rows=6000, instances=3, spacing_s=60.0))
    days = tmp_path / "days"
    prepare(tmp_path / "log.parquet", days, split="day", row_group_size=500, temp_dir=tmp_path / "tmp")
    files = sorted(days.glob("*.parquet"))
    later = tmp_path / "later"
    later.mkdir()
    files[-1].rename(later / files[-1].name)
    before = LogFile(days)
    first = Replay(days, settings=kafka_settings, speedup=0).run()
    assert first.state == "finished" and first.next_row == before.num_rows < 6000
    (later / files[-1].name).rename(files[-1])  # the next day lands in the folder
    grown = LogFile(days)
    assert grown.grew_from(before.fingerprint, before.num_rows) and not grown.grew_from(before.fingerprint, 100)
    rest = Replay(days, settings=kafka_settings, speedup=0).run()
    assert rest.state == "finished" and rest.next_row == rest.rows_total == 6000
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=6000, idle=3)
    assert _ids(messages) == _table_ids(canonical)  # every row once: the first days not again
    again = Replay(days, settings=kafka_settings, speedup=0, reset=True).run()
    assert again.state == "finished" and again.next_row == 6000
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=12_000, idle=3)
    fresh = [m for m in messages if not _resent(m)]
    assert len(messages) == 12_000 and _ids(fresh) == _table_ids(canonical)


def test_a_folder_whose_earlier_file_changed_is_not_taken_as_grown(kafka_settings: Settings, tmp_path: Path) -> None:
    make_log(tmp_path / "log.parquet", rows=3000, instances=2, spacing_s=60.0)
    days = tmp_path / "days"
    prepare(tmp_path / "log.parquet", days, split="day", row_group_size=500, temp_dir=tmp_path / "tmp")
    files = sorted(days.glob("*.parquet"))
    before = LogFile(days)
    Replay(days, settings=kafka_settings, speedup=0).run()
    table = pq.read_table(files[0])
    pq.write_table(table, files[0], row_group_size=100)  # the same rows, written again: other content
    assert not LogFile(days).grew_from(before.fingerprint, before.num_rows)
    with pytest.raises(Exception, match="saved position in another file"):
        Replay(days, settings=kafka_settings, speedup=0).run()
