"""A broker to work with: the managed local Kafka started, or the configured cluster checked."""

from __future__ import annotations

from workbench.broker._local import BrokerStatus, LocalKafka, wait_for_broker
from workbench.broker._topics import ensure_topics
from workbench.broker.exceptions import BrokerUnavailableError
from workbench.config import Settings

__all__ = ["broker_status", "ensure_broker"]


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
