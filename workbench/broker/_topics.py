"""Topic provisioning in one place: names, partitions, retention. Idempotent."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic, OffsetSpec

from workbench.broker._client import quiet_logs
from workbench.broker.exceptions import BrokerError, TopicMismatchError
from workbench.config import Settings

__all__ = ["TopicSpec", "ensure_topics", "topic_id", "topic_specs"]

logger = logging.getLogger(__name__)


class TopicSpec:
    """One topic the workbench needs."""

    def __init__(self, name: str, partitions: int, config: dict[str, str]) -> None:
        self.name = name
        self.partitions = partitions
        self.config = config

    def __repr__(self) -> str:
        return f"TopicSpec({self.name!r}, partitions={self.partitions}, config={self.config})"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The workbench's topics: events and anomalies keyed by instance_id, dead letters, control."""
    # Kafka timestamps are the log's own (historical) arrival times, so time-based retention would
    # delete replayed data at once: the data topics keep everything up to a size per partition.
    by_size = {
        "retention.ms": "-1",
        "retention.bytes": str(settings.retention_bytes),
        "compression.type": "producer",
        "max.message.bytes": "16777216",
        # Kafka refuses a message dated more than an hour past its clock by default: a log in the future
        # (synthetic, or local times read as UTC) made the replay fail each batch, for good
        "message.timestamp.after.max.ms": str(NO_LIMIT_MS),
    }
    return [
        TopicSpec(settings.topic_query_events, settings.partitions, dict(by_size)),
        TopicSpec(settings.topic_anomalies, settings.partitions, dict(by_size)),
        TopicSpec(settings.topic_dead_letter, 1, dict(by_size)),
        TopicSpec(settings.topic_replay_control, 1, {"retention.ms": str(24 * 3600 * 1000)}),
        # Replay positions and status, written in the same transactions as the events: compacted,
        # so the latest record per replay survives forever and the topic stays small.
        TopicSpec(settings.topic_replay_state, 1, {"cleanup.policy": "compact", "retention.ms": "-1",
                                                   "segment.ms": str(3600 * 1000)}),
    ]


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0) -> list[str]:
    """Create missing topics and grow partition counts that are too small; return created names.

    Existing topics keep their data and configuration. Partitions are never reduced (Kafka
    cannot), and a topic with more partitions than configured is left as it is. Returns only once
    the broker's metadata shows every topic with all its partitions and their leaders.

    Raises :class:`TopicMismatchError` (naming topic, setting, value and fix) for an existing topic the
    apps cannot use as it is (:func:`_refuse_unusable`), and for partitions to add to an events topic
    that holds events (:func:`_refuse_moving_instances`).
    """
    specs = specs or topic_specs(settings)
    deadline = time.monotonic() + timeout
    admin = AdminClient(quiet_logs(settings.kafka_client_config()))
    try:
        metadata = admin.list_topics(timeout=timeout)
        existing = metadata.topics
    except KafkaException as exc:
        from workbench.broker._local import raise_if_login_refused

        raise_if_login_refused(settings)  # a refused password reads as "Broker transport failure" here
        msg = f"Cannot list topics at {settings.bootstrap_servers} within {timeout:.0f} s: {exc}. " + (
            "Is the local Kafka running (`workbench kafka start`)?" if settings.manages_kafka else
            "Check KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL and that the cluster is reachable.")
        raise BrokerError(msg) from exc
    present = [spec for spec in specs if spec.name in existing]
    replicas = {spec.name: min((len(p.replicas) for p in existing[spec.name].partitions.values()), default=0)
                for spec in present}
    _refuse_unusable(admin, settings, present, timeout, replicas)
    _warn_under_replicated(replicas, len(metadata.brokers))
    to_create = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=-1, config=spec.config)
        for spec in specs
        if spec.name not in existing
    ]
    created: list[str] = []
    if to_create:
        for name, future in admin.create_topics(to_create, request_timeout=timeout).items():
            try:
                future.result()
                created.append(name)
                logger.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    continue
                msg = f"Could not create topic {name!r} at {settings.bootstrap_servers}: {exc}"
                raise BrokerError(msg) from exc
    grow = [
        NewPartitions(spec.name, spec.partitions)
        for spec in specs
        if spec.name in existing and len(existing[spec.name].partitions) < spec.partitions
    ]
    if grow:
        _refuse_moving_instances(admin, settings, {g.topic: len(existing[g.topic].partitions) for g in grow}, timeout)
        for name, future in admin.create_partitions(grow, request_timeout=timeout).items():
            try:
                future.result()
                logger.info("grew topic %s to the configured partition count", name)
            except KafkaException as exc:
                msg = f"Could not add partitions to {name!r}: {exc}"
                raise BrokerError(msg) from exc
    if to_create or grow:
        _await_metadata(admin, specs, deadline, settings.bootstrap_servers)
    return created


#: Kafka's default ``max.message.bytes`` of a topic: what a batch of the replay's producer (1 MB) needs.
MIN_MESSAGE_BYTES = 1_048_588
#: "No limit" for Kafka's millisecond settings (Java's Long.MAX_VALUE).
NO_LIMIT_MS = 9_223_372_036_854_775_807


def _refuse_unusable(admin: AdminClient, settings: Settings, present: list[TopicSpec], timeout: float,
                     replicas: dict[str, int]) -> None:
    """Raise :class:`TopicMismatchError` when an existing data topic (events, anomalies, dead letters) is
    compacted (Kafka would keep one message per key, and refuses the replay's key-less end-of-log
    markers: the replay failed at the log's end for good), takes smaller messages than a producer's
    batch, or deletes by time the log's historical timestamps (replayed events deleted before the apps
    read them). A cluster that does not let this client read topic configurations is not checked."""
    data = {settings.topic_query_events, settings.topic_anomalies, settings.topic_dead_letter}
    resources = [ConfigResource("topic", spec.name) for spec in present if spec.name in data]
    if not resources:
        return
    problems: list[str] = []
    limited: list[tuple[str, str]] = []  # lifted only once nothing is refused: a refused check changes nothing
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            config = {name: entry.value for name, entry in future.result().items()}
        except KafkaException as exc:
            logger.warning("cannot read the configuration of topic %s (%s); not checked", resource.name, exc)
            continue
        name = resource.name
        if int(config.get("message.timestamp.after.max.ms") or NO_LIMIT_MS) < NO_LIMIT_MS:
            limited.append((name, config["message.timestamp.after.max.ms"]))
        copies = replicas.get(name, 0)
        if int(config.get("min.insync.replicas") or 1) < 2 and copies >= 3:
            logger.warning("topic %s: min.insync.replicas=%s on %d replicas: a write is acknowledged by one "
                           "broker, and that broker's loss loses it", name, config.get("min.insync.replicas"), copies)
        policy = config.get("cleanup.policy") or "delete"
        if "compact" in policy:
            problems.append(f"{name}: cleanup.policy={policy} keeps one message per key (and refuses the replay's "
                            "end-of-log markers, which have none): set cleanup.policy=delete")
        limit = int(config.get("max.message.bytes") or MIN_MESSAGE_BYTES)
        if limit < MIN_MESSAGE_BYTES:
            problems.append(f"{name}: max.message.bytes={limit} is below a producer's batch of 1 MB: set "
                            f"max.message.bytes={MIN_MESSAGE_BYTES} or more (the workbench makes it 16777216)")
        retention = int(config.get("retention.ms") or -1)
        if retention >= 0 and config.get("message.timestamp.type", "CreateTime") == "CreateTime":
            problems.append(f"{name}: retention.ms={retention} deletes messages by their timestamps, which are the "
                            "log's own (historical) arrival times: replayed events would be deleted before the apps "
                            "read them. Set retention.ms=-1 (the workbench keeps retention.bytes per partition)")
    if problems:
        where = settings.bootstrap_servers
        msg = (f"Topics at {where} the workbench cannot use as they are:\n  " + "\n  ".join(problems)
               + f"\nChange them (kafka-configs.sh --bootstrap-server {where} --alter --entity-type topics "
               "--entity-name NAME --add-config SETTING=VALUE), or name other topics (WORKBENCH_TOPIC_*).")
        raise TopicMismatchError(msg)
    for name, limit in limited:
        _allow_future_timestamps(admin, name, limit, timeout)


def _warn_under_replicated(replicas: dict[str, int], brokers: int) -> None:
    """Warn of an existing workbench topic with fewer replicas than the cluster could give it (at most 3): a
    topic made by hand with replication factor 1 on a 3-broker cluster loses its partitions with one broker
    (accepted without a word before; the workbench makes its own topics with the cluster's default)."""
    for name, copies in replicas.items():
        if 0 < copies < min(3, brokers):
            logger.warning("topic %s has %d replica(s) per partition on a cluster of %d brokers: one broker's loss "
                           "makes it unavailable, or loses it (kafka-reassign-partitions.sh raises the replication "
                           "factor)", name, copies, brokers)


def _allow_future_timestamps(admin: AdminClient, name: str, limit: str, timeout: float) -> None:
    """Lift an existing topic's limit on future timestamps (a topic made before the workbench set it, or by a
    cluster's default of one hour); a cluster that does not allow it is told the setting to change."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    resource = ConfigResource("topic", name, incremental_configs=[ConfigEntry(
        "message.timestamp.after.max.ms", str(NO_LIMIT_MS), incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([resource], request_timeout=timeout)[resource].result()
        logger.info("topic %s: message.timestamp.after.max.ms %s -> no limit (a log may lie in the future)",
                    name, limit)
    except KafkaException as exc:
        logger.warning("topic %s refuses events dated more than %s ms past the broker's clock, and its setting "
                       "cannot be changed from here (%s): a log in the future would fail to replay. Set "
                       "message.timestamp.after.max.ms=%d on it", name, limit, exc, NO_LIMIT_MS)


def _refuse_moving_instances(admin: AdminClient, settings: Settings, counts: dict[str, int], timeout: float) -> None:
    """Raise :class:`TopicMismatchError` before partitions are added to an events topic that has held events.

    An event's partition is its key's hash modulo the partition count, so more partitions move most
    instances to another; the analytics app counts each instance from the one partition its events
    came on, and dead-lettered the moved instances' events (``wrong_partition``): 79 % of a log."""
    name = settings.topic_query_events
    if name not in counts:
        return
    latest = admin.list_offsets({TopicPartition(name, p): OffsetSpec.latest() for p in range(counts[name])},
                                request_timeout=timeout)
    held = 0
    for future in latest.values():
        try:
            held += future.result().offset
        except KafkaException as exc:
            logger.warning("cannot read the offsets of topic %s (%s); partitions added unchecked", name, exc)
            return
    if held > 0:
        msg = (f"Topic {name} has {counts[name]} partitions and has held events; WORKBENCH_PARTITIONS="
               f"{settings.partitions} would add partitions, which moves instances to other partitions (an event's "
               "partition is its key's hash modulo the count), and the analytics app counts each instance from "
               f"one partition. Keep WORKBENCH_PARTITIONS={counts[name]} for this home, or start over with other "
               "topics: `workbench start --fresh` on the managed Kafka, new WORKBENCH_TOPIC_* names on a cluster.")
        raise TopicMismatchError(msg)


def _missing(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> list[str]:
    """Topics whose metadata does not show all their partitions with a leader yet."""
    topics = admin.list_topics(timeout=timeout).topics
    missing = []
    for spec in specs:
        topic = topics.get(spec.name)
        ready = (topic is not None and topic.error is None and len(topic.partitions) >= spec.partitions
                 and all(p.error is None and p.leader >= 0 for p in topic.partitions.values()))
        if not ready:
            missing.append(spec.name)
    return missing


def _await_metadata(admin: AdminClient, specs: list[TopicSpec], deadline: float, where: str) -> None:
    """Wait until the broker's metadata shows ``specs`` in full.

    The controller acknowledges a new topic or partition before every broker's metadata cache
    has it: a client asking at once can find no topic, fewer partitions, or partitions without
    a leader.
    """
    missing = [spec.name for spec in specs]
    while True:
        try:
            missing = _missing(admin, specs, max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException as exc:
            logger.debug("metadata request failed while waiting for new topics: %s", exc)
        if not missing:
            return
        if time.monotonic() >= deadline:
            msg = f"Topics {missing} were created at {where} but their metadata is still incomplete"
            raise BrokerError(msg)
        time.sleep(0.05)


def topic_id(settings: Settings, topic: str, timeout: float = 10.0) -> str | None:
    """Kafka's id of ``topic``, which tells a topic created again under the same name; None when it cannot
    be read (an old broker, a slow one, no such topic), with a warning."""
    from confluent_kafka import TopicCollection

    try:
        admin = AdminClient(quiet_logs(settings.kafka_client_config()))
        description = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic].result(timeout)
        return str(description.topic_id)
    except Exception as exc:
        # asked at every rebalance: once per topic and process is enough (a cluster without the permission)
        if topic not in _ID_UNREADABLE:
            _ID_UNREADABLE.add(topic)
            logger.warning("cannot read the id of topic %s (%s); a topic created again would not be noticed",
                           topic, exc)
        return None


_ID_UNREADABLE: set[str] = set()
