"""The Kafka broker: a managed local Apache Kafka, or any cluster named by KAFKA_BOOTSTRAP_SERVERS.

Names are imported on first use (as in :mod:`workbench.ml`): the ``workbench`` command imports
this package for its sub-commands, and ``--help`` must not pay for confluent-kafka and pydantic.
"""

from __future__ import annotations

from workbench._lazy import lazy_attributes

__all__ = [
    "NOT_READY_YET",
    "NO_SUCH_TOPIC",
    "RANGE_READER",
    "BrokerAuthenticationError",
    "BrokerError",
    "BrokerSetupError",
    "BrokerStatus",
    "BrokerUnavailableError",
    "IncompleteReadError",
    "LocalKafka",
    "PortInUseError",
    "TopicMismatchError",
    "TopicSpec",
    "broker_status",
    "ensure_broker",
    "ensure_kafka_jars",
    "ensure_topics",
    "find_java",
    "quiet_logs",
    "raise_if_login_refused",
    "read_range",
    "topic_id",
    "topic_specs",
    "wait_for_broker",
    "when_ready",
]

_WHERE = {
    "NO_SUCH_TOPIC": "workbench.broker._client",
    "NOT_READY_YET": "workbench.broker._client",
    "RANGE_READER": "workbench.broker._client",
    "quiet_logs": "workbench.broker._client",
    "read_range": "workbench.broker._client",
    "when_ready": "workbench.broker._client",
    "BrokerStatus": "workbench.broker._local",
    "LocalKafka": "workbench.broker._local",
    "wait_for_broker": "workbench.broker._local",
    "raise_if_login_refused": "workbench.broker._local",
    "ensure_kafka_jars": "workbench.broker._runtime",
    "find_java": "workbench.broker._runtime",
    "TopicSpec": "workbench.broker._topics",
    "ensure_topics": "workbench.broker._topics",
    "topic_id": "workbench.broker._topics",
    "topic_specs": "workbench.broker._topics",
    "BrokerAuthenticationError": "workbench.broker.exceptions",
    "BrokerError": "workbench.broker.exceptions",
    "BrokerSetupError": "workbench.broker.exceptions",
    "BrokerUnavailableError": "workbench.broker.exceptions",
    "IncompleteReadError": "workbench.broker.exceptions",
    "PortInUseError": "workbench.broker.exceptions",
    "TopicMismatchError": "workbench.broker.exceptions",
    "broker_status": "workbench.broker._ensure",
    "ensure_broker": "workbench.broker._ensure",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
