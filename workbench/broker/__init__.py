"""The Kafka broker: a managed local Apache Kafka, or any cluster named by KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

from workbench.broker._client import NO_SUCH_TOPIC, NOT_READY_YET, quiet_logs, read_range, when_ready
from workbench.broker._local import BrokerStatus, LocalKafka, wait_for_broker
from workbench.broker._runtime import ensure_kafka_jars, find_java
from workbench.broker._topics import TopicSpec, ensure_topics, topic_specs
from workbench.broker.exceptions import (
    BrokerAuthenticationError,
    BrokerError,
    BrokerSetupError,
    BrokerUnavailableError,
    IncompleteReadError,
    PortInUseError,
)
from workbench.config import Settings

__all__ = [
    "NOT_READY_YET",
    "NO_SUCH_TOPIC",
    "BrokerAuthenticationError",
    "BrokerError",
    "BrokerSetupError",
    "BrokerStatus",
    "BrokerUnavailableError",
    "IncompleteReadError",
    "LocalKafka",
    "PortInUseError",
    "TopicSpec",
    "broker_status",
    "ensure_broker",
    "ensure_kafka_jars",
    "ensure_topics",
    "find_java",
    "quiet_logs",
    "read_range",
    "topic_specs",
    "wait_for_broker",
    "when_ready",
]


def ensure_broker(settings: Settings, *, topics: bool = True, timeout: float = 90.0) -> BrokerStatus:
    """Make a broker available: start the local Kafka when none is configured, else check the
    configured cluster answers; then provision the workbench's topics (idempotent)."""
    if settings.manages_kafka:
        status = LocalKafka(settings).start(timeout=timeout)
    else:
        brokers = wait_for_broker(settings, timeout=timeout)
        status = BrokerStatus(settings.bootstrap_servers, False, True, brokers=brokers)
    if topics:
        ensure_topics(settings)
    return status


def broker_status(settings: Settings) -> BrokerStatus:
    """Where the broker is and whether it answers."""
    if settings.manages_kafka:
        return LocalKafka(settings).status()
    try:
        brokers = wait_for_broker(settings, timeout=5.0)
    except BrokerUnavailableError:
        return BrokerStatus(settings.bootstrap_servers, False, False)
    return BrokerStatus(settings.bootstrap_servers, False, True, brokers=brokers)
