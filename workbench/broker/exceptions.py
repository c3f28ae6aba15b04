"""Errors about the Kafka broker the workbench uses or manages."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = ["BrokerAuthenticationError", "BrokerError", "BrokerSetupError", "BrokerUnavailableError",
           "IncompleteReadError", "PortInUseError", "TopicMismatchError"]


class BrokerError(WorkbenchError, RuntimeError):
    """Something went wrong with the Kafka broker."""


class BrokerSetupError(BrokerError):
    """The local Kafka cannot be installed or started: a prerequisite is missing."""


class PortInUseError(BrokerError):
    """The port the local broker wants is taken by another program."""


class BrokerUnavailableError(BrokerError):
    """No broker answers at the configured bootstrap address."""


class BrokerAuthenticationError(BrokerUnavailableError):
    """The broker answers but rejects the client's credentials or certificate (a setting is wrong)."""


class IncompleteReadError(BrokerError):
    """A read of a partition range did not reach its end in time."""


class TopicMismatchError(BrokerError):
    """An existing topic is set up in a way the workbench cannot use without losing or miscounting events."""
