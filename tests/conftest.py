"""Shared fixtures: one real Apache Kafka per test session, isolated homes and topics per test.

Set KAFKA_BOOTSTRAP_SERVERS to run the suite against an existing cluster instead of the
managed local broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port_pair
from tests.pg_server import PostgresServer, PostgresUnavailable
from workbench.broker import LocalKafka, ensure_broker
from workbench.config import Settings


@pytest.fixture(scope="session")
def kafka_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of the session's broker (started here when no external cluster is configured)."""
    home = tmp_path_factory.mktemp("kafka-home")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        settings = Settings(home=home)
        ensure_broker(settings, topics=False)
        yield settings
        return
    settings = Settings(home=home, kafka_port=free_port_pair(), kafka_heap="768m")
    broker = LocalKafka(settings)
    broker.start(timeout=120)
    try:
        yield settings
    finally:
        broker.stop()


def isolated_settings(base: Settings, home: Path, **overrides: object) -> Settings:
    """Settings on the session broker with a private home, private topic names and consumer groups."""
    suffix = uuid.uuid4().hex[:8]
    return base.with_overrides(
        home=home,
        kafka_bootstrap_servers=base.bootstrap_servers,
        topic_query_events=f"redshift.query_events.{suffix}",
        topic_anomalies=f"redshift.anomalies.{suffix}",
        topic_dead_letter=f"redshift.dead_letter.{suffix}",
        topic_replay_control=f"workbench.replay_control.{suffix}",
        topic_replay_state=f"workbench.replay_state.{suffix}",
        # a group shared with another test's apps (still closing, or on other topics) joins its rebalances
        consumer_group_prefix=f"workbench-{suffix}",
        **overrides,
    )


@pytest.fixture
def kafka_settings(kafka_base: Settings, tmp_path: Path) -> Settings:
    """Per-test settings: the session's broker, a fresh WORKBENCH_HOME and fresh topics."""
    return isolated_settings(kafka_base, tmp_path / "home")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for the session (Debian's binaries; `make postgresql` installs them).

    Skipped, with the reason, only when the server binaries are not installed; a server that is
    installed but fails to start is an error.
    """
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL is not installed here: {exc}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL (its name); dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield name
    finally:
        postgres_server.drop_database(name)


def _processes_of(home_root: Path) -> list:
    """Live processes (not this one) whose WORKBENCH_HOME lies under ``home_root``."""
    import psutil

    root = str(home_root)
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            home = proc.environ().get("WORKBENCH_HOME", "")
        except (psutil.Error, OSError):
            continue
        if home == root or home.startswith(root + os.sep):
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A process a test started under its own ``tmp_path`` and left running is killed, with a warning
    naming it: it would take CPU from, and join the consumer groups of, the tests after it (a member
    alive for minutes after its test once made test_scale count three members of a group of two)."""
    home_root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if home_root is None:
        return
    import warnings

    import psutil

    left = _processes_of(home_root)
    if not left:
        return
    _, alive = psutil.wait_procs(left, timeout=3)  # one that is on its way out is not a leak
    for proc in alive:
        try:
            command = " ".join(proc.cmdline())[:160]
            proc.kill()
        except psutil.Error:
            continue
        warnings.warn(f"{request.node.nodeid} left pid {proc.pid} running ({command}); killed", stacklevel=1)
