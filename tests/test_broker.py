"""The managed broker and topic provisioning, against the real session Kafka."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from workbench.broker import (
    BrokerError,
    BrokerSetupError,
    LocalKafka,
    PortInUseError,
    _runtime,
    broker_status,
    ensure_topics,
    topic_specs,
)
from workbench.config import Settings


def test_status_reports_running_broker_and_address(kafka_base: Settings) -> None:
    status = broker_status(kafka_base)
    assert status.running
    assert status.bootstrap_servers == kafka_base.bootstrap_servers
    assert kafka_base.bootstrap_servers in str(status)


def test_the_broker_runs_the_serial_collector(kafka_base: Settings) -> None:
    """A small heap on a small machine: the serial collector, without G1's collector threads (measured:
    less broker CPU per event)."""
    pid = LocalKafka(kafka_base).pid()
    tasks = Path(f"/proc/{pid}/task")
    if pid is None or not tasks.is_dir():
        pytest.skip("needs the managed broker and /proc")
    threads = {(task / "comm").read_text().strip() for task in tasks.iterdir()}
    assert "VM Thread" in threads  # the listing shows the JVM's own threads
    assert not [name for name in threads if name.startswith(("G1 ", "GC Thread"))], sorted(threads)


def test_topics_are_created_with_partitions_and_retention_idempotently(kafka_settings: Settings) -> None:
    settings = kafka_settings.with_overrides(partitions=3)
    created = ensure_topics(settings)
    assert sorted(created) == sorted(spec.name for spec in topic_specs(settings))
    assert ensure_topics(settings) == []  # second call changes nothing

    admin = AdminClient(settings.kafka_client_config())
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[settings.topic_query_events].partitions) == 3
    assert len(topics[settings.topic_dead_letter].partitions) == 1
    resource = ConfigResource("topic", settings.topic_query_events)
    config = admin.describe_configs([resource])[resource].result()
    assert config["retention.ms"].value == "-1"  # historical timestamps: retention by size
    assert config["retention.bytes"].value == str(settings.retention_bytes)

    grown = settings.with_overrides(partitions=5)
    ensure_topics(grown)
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[settings.topic_query_events].partitions) == 5


def test_port_in_use_gives_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = LocalKafka(Settings(home=tmp_path, kafka_port=port))
        with pytest.raises(PortInUseError, match=rf"Port {port} .* WORKBENCH_KAFKA_PORT"):
            broker.start()


def test_a_port_taken_by_the_local_kafka_of_another_home_names_that_home(kafka_base: Settings, tmp_path: Path) -> None:
    if not kafka_base.manages_kafka:
        pytest.skip("needs the session's managed broker")
    pid = LocalKafka(kafka_base).pid()
    other = LocalKafka(Settings(home=tmp_path / "second", kafka_port=kafka_base.kafka_port))
    with pytest.raises(PortInUseError) as err:
        other.start()
    assert (f"Port {kafka_base.kafka_port} on 127.0.0.1 is already in use, so the local Kafka cannot start"
            in str(err.value))
    assert (f"It is the local Kafka (pid {pid}) of the workbench under {kafka_base.home}: stop that one "
            f"(`workbench --home {kafka_base.home} stop --kafka`), or choose another port for this home with "
            "WORKBENCH_KAFKA_PORT.") in str(err.value)


def test_local_kafka_refuses_to_start_when_an_external_cluster_is_configured(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap_servers="broker.example:9092")
    with pytest.raises(Exception, match="never starts its own"):
        LocalKafka(settings).start()


def test_missing_java_is_one_clear_paragraph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerSetupError, match="No Java runtime found.*version 17 or newer"):
        _runtime.find_java()


def test_missing_maven_is_one_clear_paragraph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerSetupError, match="Maven .* not on PATH"):
        _runtime.ensure_kafka_jars(Settings(home=tmp_path, cache_dir=tmp_path / "cache"))


def test_a_cache_that_cannot_be_written_is_named_with_its_setting(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """HOME missing or read-only: "No such file or directory: /proc/...", or a message blaming WORKBENCH_HOME."""
    monkeypatch.setenv("HOME", "/proc/no-such-home")
    for name in ("XDG_CACHE_HOME", "WORKBENCH_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(home=tmp_path / "home")
    assert str(settings.cache_dir).startswith("/proc/no-such-home/")
    with pytest.raises(BrokerSetupError) as info:
        _runtime.ensure_kafka_jars(settings)
    assert f"The Kafka jars' cache {settings.kafka_libs_dir.parent} cannot be created" in str(info.value)
    assert "Set WORKBENCH_CACHE_DIR to a writable folder" in str(info.value)


def test_stop_and_restart_keeps_topics(tmp_path: Path, kafka_base: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second, private broker: start, create topics, stop, start again, topics still there.

    In a home whose name Java's properties files and a C locale read otherwise (non-ASCII, a backslash,
    a log4j2 lookup): Kafka wrote its data and log into a garbled sibling folder, and its second start
    failed on "Invalid cluster.id" for good; under LC_ALL=C it did not start at all."""
    from tests.helpers import free_port_pair

    monkeypatch.setenv("LC_ALL", "C")
    home = tmp_path / "dätä ü\\x ${sys:user.home}"
    settings = Settings(home=home, kafka_port=free_port_pair(), kafka_heap="512m", cache_dir=kafka_base.cache_dir)
    broker = LocalKafka(settings)
    old_umask = os.umask(0)  # the Python API sets no umask: the caller's applies
    try:
        broker.start(timeout=120)
        os.umask(old_umask)
        ensure_topics(settings)
        assert broker.stop()
        assert not broker.status().running
        assert not broker.stop()  # stopping twice is harmless
        broker.start(timeout=120)
        topics = AdminClient(settings.kafka_client_config()).list_topics(timeout=10).topics
        assert settings.topic_query_events in topics
        assert (settings.kafka_dir / "data" / "meta.properties").is_file() and broker.log_file.is_file()
        assert [p.name for p in tmp_path.iterdir()] == [home.name]  # nothing written beside the home
        assert (settings.kafka_dir / "log4j2.properties").stat().st_mode & 0o077 == 0
    finally:
        os.umask(old_umask)
        broker.stop()


def test_unreachable_broker_is_named_and_the_wait_shows_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from workbench.broker import BrokerUnavailableError, _local, wait_for_broker

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = Settings(home=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{port}")
    monkeypatch.setattr(_local, "_WAIT_NOTICE_S", 1.0)
    with caplog.at_level("WARNING", logger="workbench.broker._local"), \
            pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port} within 3 s.*KAFKA_BOOTSTRAP_SERVERS"):
        wait_for_broker(settings, timeout=3.0)
    waiting = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(waiting) >= 1 and all(f"127.0.0.1:{port}" in line for line in waiting), waiting


def test_the_wait_says_why_a_broker_does_not_answer(tmp_path: Path) -> None:
    """librdkafka's exception only says "broker transport failure"; the error names the cause: a host
    that does not resolve, or something that accepts connections but does not speak Kafka."""
    from workbench.broker import BrokerUnavailableError, wait_for_broker

    unresolvable = Settings(home=tmp_path, kafka_bootstrap_servers="no-such-host.invalid:9092")
    started = time.monotonic()  # at once, not after the deadline (a typo waited 90 s, warning all along)
    with pytest.raises(BrokerUnavailableError, match="No host of KAFKA_BOOTSTRAP_SERVERS='no-such-host.invalid:9092' "
                                                     "resolves \\('no-such-host.invalid': "):
        wait_for_broker(unresolvable, timeout=30.0)
    assert time.monotonic() - started < 10
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = Settings(home=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(BrokerUnavailableError, match="does not answer as a Kafka broker"):
            wait_for_broker(settings, timeout=5.0)


def test_a_port_without_room_for_the_controller_is_named(tmp_path: Path) -> None:
    broker = LocalKafka(Settings(home=tmp_path, kafka_port=65535))  # the controller would be on 65536
    with pytest.raises(BrokerError, match="WORKBENCH_KAFKA_PORT 65535 leaves no room for the controller"):
        broker.start()
    with pytest.raises(BrokerError, match="WORKBENCH_KAFKA_PORT 65534 leaves no room"):
        LocalKafka(Settings(home=tmp_path, kafka_port=65534, kafka_listeners="plaintext,ssl")).start()


def test_topics_without_a_broker_say_what_to_check(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(BrokerError, match=r"within 2 s: .*Check KAFKA_BOOTSTRAP_SERVERS"):
        ensure_topics(Settings(home=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{port}"), timeout=2.0)
    with pytest.raises(BrokerError, match=r"Is the local Kafka running \(`workbench kafka start`\)"):
        ensure_topics(Settings(home=tmp_path, kafka_port=port), timeout=2.0)
    # one clear error, not librdkafka's raw "%3|...|FAIL|" lines on stderr (they go to a debug logger)
    assert "|FAIL|" not in capfd.readouterr().err
    # `workbench topics` on a home whose broker is not running says so at once (it waited 30 s)
    from workbench.cli import main

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    started = time.monotonic()
    assert main(["--home", str(tmp_path), "topics"]) == 2
    assert time.monotonic() - started < 10
    assert f"the local Kafka of {tmp_path} is not running" in capfd.readouterr().err


def test_status_and_env_follow_the_listeners_the_broker_runs_with(kafka_base: Settings,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that name other listeners than the running broker's (`kafka start --listeners` for one command)."""
    if not kafka_base.manages_kafka:
        pytest.skip("needs the session's managed broker")
    from workbench.cli import main

    port = kafka_base.kafka_port
    other = kafka_base.with_overrides(kafka_listeners="sasl_plaintext,plaintext")
    status = LocalKafka(other).status()
    assert status.running
    assert status.listeners.startswith(f"PLAINTEXT 127.0.0.1:{port} (as started; these settings say "
                                       f"SASL_PLAINTEXT://127.0.0.1:{port},PLAINTEXT://127.0.0.1:{port + 2}")
    assert "SASL user" not in status.listeners.split("(")[0]
    assert LocalKafka(kafka_base).status().listeners == f"PLAINTEXT 127.0.0.1:{port}"
    LocalKafka(kafka_base).check_running_listeners()  # the same listeners: nothing to say
    with pytest.raises(BrokerError, match=r"already runs with listeners PLAINTEXT://127\.0\.0\.1:\d+, not SASL"):
        LocalKafka(other).check_running_listeners()
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("WORKBENCH_KAFKA_PORT", str(port))
    assert main(["--home", str(kafka_base.home), "kafka", "env"]) == 0
    assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in capsys.readouterr().out
    monkeypatch.setenv("WORKBENCH_KAFKA_LISTENERS", "sasl_plaintext,plaintext")
    code = main(["--home", str(kafka_base.home), "kafka", "env", "--listener", "sasl_plaintext"])
    assert code == 2 and "already runs with listeners PLAINTEXT:" in capsys.readouterr().err


def test_an_existing_topic_the_apps_cannot_use_is_refused_naming_setting_and_fix(kafka_settings: Settings) -> None:
    """On a cluster whose events topic was made compacted, the replay failed at the log's end for good (its
    key-less end-of-log marker refused); with a small max.message.bytes it failed at once; a time retention
    deleted the replayed (historical) events before the apps read them. Each was started without a word."""
    from confluent_kafka.admin import NewTopic

    from workbench.broker import TopicMismatchError

    settings = kafka_settings
    admin = AdminClient(settings.kafka_client_config())
    made = admin.create_topics([NewTopic(settings.topic_query_events, 2, config={
        "cleanup.policy": "compact", "max.message.bytes": "10000", "retention.ms": "604800000"})])
    made[settings.topic_query_events].result()
    with pytest.raises(TopicMismatchError) as refused:
        ensure_topics(settings)
    text = str(refused.value)
    assert f"{settings.topic_query_events}: cleanup.policy=compact keeps one message per key" in text
    assert "max.message.bytes=10000 is below" in text and "retention.ms=604800000 deletes messages" in text
    assert "--alter --entity-type topics" in text
    assert settings.topic_anomalies not in admin.list_topics(timeout=10).topics  # refused before creating anything


def test_partitions_are_not_added_to_an_events_topic_that_has_held_events(kafka_settings: Settings) -> None:
    """More partitions move instances (key hash modulo the count): the analytics app dead-lettered 79 % of a
    log as wrong_partition after WORKBENCH_PARTITIONS was raised on a used home."""
    from confluent_kafka import Producer

    from workbench.broker import TopicMismatchError

    settings = kafka_settings.with_overrides(partitions=2)
    ensure_topics(settings)
    ensure_topics(settings.with_overrides(partitions=3))  # no event yet: grown
    producer = Producer(settings.kafka_client_config())
    producer.produce(settings.topic_query_events, key=b"7", value=b"{}")
    assert producer.flush(10) == 0
    with pytest.raises(TopicMismatchError, match="has 3 partitions and has held events; WORKBENCH_PARTITIONS=4"):
        ensure_topics(settings.with_overrides(partitions=4))
    topics = AdminClient(settings.kafka_client_config()).list_topics(timeout=10).topics
    assert len(topics[settings.topic_query_events].partitions) == 3


def test_the_workbench_topics_take_events_dated_in_the_future(kafka_settings: Settings) -> None:
    """Kafka refuses a message dated more than an hour past its clock by default: a log dated 2027 (on a machine in
    2026) failed every batch and the replay restarted for good, nothing landed (tester A, 33rd session). The topics
    the workbench makes have no such limit, and an existing one made with the default is lifted."""
    from confluent_kafka.admin import NewTopic

    from workbench.broker._topics import NO_LIMIT_MS

    settings = kafka_settings
    admin = AdminClient(settings.kafka_client_config())
    made = admin.create_topics([NewTopic(settings.topic_anomalies, settings.partitions, config={
        "message.timestamp.after.max.ms": "3600000", "retention.ms": "-1"})])
    made[settings.topic_anomalies].result()
    ensure_topics(settings)
    names = (settings.topic_query_events, settings.topic_anomalies, settings.topic_dead_letter)
    resources = [ConfigResource("topic", name) for name in names]
    for resource, future in admin.describe_configs(resources).items():
        assert int(future.result()["message.timestamp.after.max.ms"].value) == NO_LIMIT_MS, resource.name


def test_a_refused_topic_check_changes_nothing(kafka_settings: Settings) -> None:
    """Tester A, 34th session: `workbench topics` lifted a topic's future-timestamp limit, then refused the topic
    for its retention: a refused check had changed the cluster."""
    from confluent_kafka.admin import NewTopic

    from workbench.broker import TopicMismatchError

    settings = kafka_settings
    admin = AdminClient(settings.kafka_client_config())
    made = admin.create_topics([NewTopic(settings.topic_anomalies, settings.partitions, config={
        "message.timestamp.after.max.ms": "3600000", "retention.ms": str(7 * 86_400_000)})])
    made[settings.topic_anomalies].result()
    with pytest.raises(TopicMismatchError, match="retention.ms=604800000"):
        ensure_topics(settings)
    resource = ConfigResource("topic", settings.topic_anomalies)
    config = admin.describe_configs([resource])[resource].result()
    assert config["message.timestamp.after.max.ms"].value == "3600000"


def test_a_topic_with_fewer_replicas_than_the_cluster_could_give_is_warned_of(
        caplog: pytest.LogCaptureFixture) -> None:
    """Tester A, 34th session: topics made by hand with replication factor 1 on a 3-broker cluster were taken
    without a word (one broker's loss makes them unavailable)."""
    from workbench.broker._topics import _warn_under_replicated

    _warn_under_replicated({"events": 1, "state": 3, "anomalies": 2}, 3)
    assert "topic events has 1 replica(s) per partition on a cluster of 3 brokers" in caplog.text
    assert "topic anomalies has 2 replica(s)" in caplog.text and "topic state" not in caplog.text
    caplog.clear()
    _warn_under_replicated({"events": 1}, 1)  # the managed single broker: nothing better to have
    assert caplog.text == ""


def test_a_start_refused_for_a_port_in_use_ties_no_log_to_the_home(tmp_path: Path) -> None:
    """A browser tester (40th session): a second home's start, refused because the first home's broker held the
    port, had already noted the log, and notebooks 02 and 03 of the empty home then reported that log's labels."""
    from tests.helpers import make_log
    from workbench.runtime import Workbench
    from workbench.runtime._home import LOG_RECORD

    log = make_log(tmp_path / "log.parquet", rows=200)
    home = tmp_path / "home"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        settings = Settings(home=home, kafka_port=sock.getsockname()[1])
        with pytest.raises(PortInUseError):
            Workbench.start(data=log, settings=settings)
    assert not (settings.state_dir / LOG_RECORD).exists()
