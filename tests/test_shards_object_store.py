"""Shards on an object store (issue 16, item 6): the same files and guarantees at an ``s3://`` URL.

A real S3-compatible server (moto, from PyPI) serves one bucket; ``WORKBENCH_SHARDS_DIR`` is an
``s3://`` URL opened through pyarrow's filesystems. Writes are one upload under the final,
deterministic key (a rewrite replaces, never duplicates; no temp objects), compaction uploads the
merged file before deleting what it covers, and every reader (the shards module, training's
window, the workbench's ``shards()``) reads from the bucket.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import isolated_settings
from tests.test_reproducible import _outcome, _unpaced_with_kill
from tests.test_shards import _events
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.pipeline.anomaly_sink import run_anomaly_sink
from workbench.pipeline.scoring import run_scoring
from workbench.replay import Replay
from workbench.store.shards import (
    cluster_watermark,
    compact_day,
    compacted_name,
    delete_older_than,
    list_days,
    read_shards,
    read_window,
    record_progress,
    remove_heartbeat,
    shard_paths,
    write_heartbeat,
    write_shard,
)

DAY = dt.date(2024, 3, 1)
BUCKET = "workbench"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[tuple[str, Any]]:
    """A moto S3 server on a free port with one bucket (one per module: it takes seconds to start)."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - moto[server] is in the test extras
        pytest.skip(f"moto[server] is not installed ({exc}); pip install -e '.[test]'")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except OSError as exc:  # pragma: no cover - no local socket
        pytest.skip(f"the moto S3 server cannot start: {exc}")
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="test-key", aws_secret_access_key="test-secret")
        client.create_bucket(Bucket=BUCKET)
        try:
            yield f"{host}:{port}", client
        finally:
            server.stop()


@pytest.fixture
def s3(s3_server: tuple[str, Any]) -> tuple[str, Callable[[], list[str]]]:
    """``(shards URL, keys())``: a fresh prefix of the bucket, and the shard object keys under it."""
    endpoint, client = s3_server
    prefix = f"t{uuid.uuid4().hex[:8]}/shards"
    # the endpoint in the URL as well: the URL alone says where the shards are
    url = f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"

    def keys() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
        # pyarrow leaves an empty "folder/" marker where it deleted the last file of a folder
        return sorted(o["Key"].removeprefix(prefix + "/") for page in pages for o in page.get("Contents", [])
                      if not o["Key"].endswith("/"))

    return url, keys


def test_write_rewrite_and_read_at_a_url(s3: tuple[str, Any]) -> None:
    url, keys = s3
    events = _events(80)
    write_shard(url, DAY, 0, 0, events)
    scored = events.append_column("model_version", pa.array(["v0001-2024-02-29"] * 80))
    write_shard(url, DAY, 0, 0, scored)  # reprocessing after a crash: the same key, replaced
    write_shard(url, DAY + dt.timedelta(days=1), 1, 0, _events(20, 0, 1))
    assert keys() == ["date=2024-03-01/p000-o000000000000.arrow",
                             "date=2024-03-02/p001-o000000000000.arrow"]  # no temp objects
    assert list_days(url) == [DAY, DAY + dt.timedelta(days=1)]
    assert [p.name for p in shard_paths(url)] == ["p000-o000000000000.arrow", "p001-o000000000000.arrow"]
    table = read_shards(url)
    assert table.num_rows == 100 and pc.count(table.column("model_version")).as_py() == 80
    window = read_window(url, DAY, DAY, columns=["query_id"])
    assert sorted(window.column("query_id").to_pylist()) == sorted(events.column("query_id").to_pylist())


def test_compaction_at_a_url_writes_first_then_deletes(s3: tuple[str, Any]) -> None:
    url, keys = s3
    for part in (0, 1):
        for batch in range(4):
            write_shard(url, DAY, part, batch * 10, _events(10, batch * 10, part))
    before = read_shards(url).sort_by("query_id")
    # a compaction killed after its upload, before its deletes: the covered files are ignored
    covering = read_shards(url, days=[DAY], dedupe=False).filter(pc.equal(pc.field("kafka_partition"), 0))
    from workbench.store.shards import _store

    store = _store(url)
    key = store.path("date=2024-03-01", compacted_name(0, 0, 39))
    store.write_bytes(key, _feather(covering.sort_by("kafka_offset")))
    assert len(shard_paths(url)) == 5  # c000 + four p001 files
    assert read_shards(url).sort_by("query_id").equals(before)

    assert compact_day(url, DAY) == 2
    assert keys() == [f"date=2024-03-01/{compacted_name(0, 0, 39)}",
                             f"date=2024-03-01/{compacted_name(1, 0, 39)}"]
    assert read_shards(url).sort_by("query_id").equals(before)
    # reprocessing after compaction merges into the compacted object instead of a second copy
    again = _events(10, 20, 1).append_column("model_version", pa.array(["v0002-2024-02-29"] * 10))
    write_shard(url, DAY, 1, 20, again)
    after = read_shards(url)
    assert after.num_rows == before.num_rows
    assert pc.count(after.column("model_version")).as_py() == 10
    assert len(keys()) == 2


def test_retention_and_writer_progress_at_a_url(s3: tuple[str, Any]) -> None:
    url, keys = s3
    for k in range(4):
        write_shard(url, DAY + dt.timedelta(days=k), 0, k * 10, _events(5, k * 10))
    assert delete_older_than(url, 2, today=DAY + dt.timedelta(days=3)) == [DAY]
    assert list_days(url) == [DAY + dt.timedelta(days=k) for k in (1, 2, 3)]
    assert not [k for k in keys() if k.startswith("date=2024-03-01/")]

    record_progress(url, 0, first_us=10, max_us=500)
    record_progress(url, 1, first_us=20, max_us=300)
    record_progress(url, 1, first_us=30, max_us=200)  # progress only widens
    write_heartbeat(url, "host-a-0", assigned=[0, 1], idle=[], now=1000.0)
    assert cluster_watermark(url, now=1001.0) == (10, 300)
    write_heartbeat(url, "host-a-0", assigned=[0, 1], idle=[1], now=1002.0)
    assert cluster_watermark(url, now=1003.0) == (10, 500)
    remove_heartbeat(url, "host-a-0")
    assert cluster_watermark(url, now=1003.0) == (10, 300)


def test_settings_keep_a_shards_url_and_the_workbench_reads_it(s3: tuple[str, Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, _keys = s3
    monkeypatch.setenv("WORKBENCH_SHARDS_DIR", url)
    settings = Settings(home=tmp_path / "home")
    assert settings.shards_dir == url
    assert settings.trainer_election_mode == "broker"  # no shared home: the broker elects the trainer
    assert Settings.from_env(settings.to_env()).shards_dir == url  # child processes get the same URL
    write_shard(settings.shards_dir, DAY, 0, 0, _events(30))
    from workbench.runtime import Workbench

    table = Workbench(settings).shards(columns=["query_id"])
    assert table.num_rows == 30
    assert not (tmp_path / "home" / "shards").exists()


def test_scoring_killed_and_restarted_with_shards_at_a_url_matches_a_local_home(
        s3: tuple[str, Any], kafka_base: Settings, tmp_path: Path) -> None:
    """The whole pipeline on an object store: the scoring app (its trainings read the bucket in a
    subprocess) is killed with SIGKILL and restarted, and ends with exactly the shards, versions and
    anomalies of an uninterrupted run on a local home."""
    url, keys = s3
    log = tmp_path / "log.parquet"
    generate(log, days=3, instances=4, seed=5, rows_per_day=3_000)

    local = isolated_settings(kafka_base, tmp_path / "local")
    ensure_topics(local)
    Replay(log, settings=local, speedup=0, pack=1).run()
    run_scoring(local, idle_exit=9, timeout=400, batch_rows=4096, batch_seconds=0.5, training_backoff_s=1)
    run_anomaly_sink(local, idle_exit=3, timeout=120)

    remote = isolated_settings(kafka_base, tmp_path / "remote", shards_dir_override=url)
    ensure_topics(remote)
    _unpaced_with_kill(remote, log)
    run_anomaly_sink(remote, idle_exit=3, timeout=120)

    (shards_local, lake_local, versions_local), (shards_remote, lake_remote, versions_remote) = (
        _outcome(local), _outcome(remote))
    assert len(versions_local) == 2 and versions_remote == versions_local
    assert len(shards_remote) == len(shards_local) > 8_000
    assert shards_remote == shards_local
    assert lake_local and lake_remote == lake_local
    assert not (tmp_path / "remote" / "shards").exists()
    days = {k.split("/")[0] for k in keys() if k.endswith(".arrow")}
    assert days == {"date=2024-03-04", "date=2024-03-05", "date=2024-03-06"}


def _feather(table: pa.Table) -> bytes:
    import pyarrow.feather as feather

    sink = pa.BufferOutputStream()
    feather.write_feather(table, sink, compression="lz4")
    return sink.getvalue().to_pybytes()
