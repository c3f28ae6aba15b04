"""Replay a Parquet query log into Kafka at an adjustable speed, steerable from any process."""

from workbench.replay._control import (
    COMMANDS,
    Command,
    InvalidCommand,
    ReplayController,
    ReplayStatus,
    validate_speed,
)
from workbench.replay._pacing import Clock, Pacer, SystemClock
from workbench.replay._replay import BatchReport, Replay, replay_format
from workbench.replay._source import LogFile, log_parts, validate_log
from workbench.replay.exceptions import ReplayError

__all__ = [
    "COMMANDS",
    "BatchReport",
    "Clock",
    "Command",
    "InvalidCommand",
    "LogFile",
    "Pacer",
    "Replay",
    "ReplayController",
    "ReplayError",
    "ReplayStatus",
    "SystemClock",
    "log_parts",
    "replay_format",
    "validate_log",
    "validate_speed",
]
