"""Replay a Parquet query log into Kafka at an adjustable speed, steerable from any process.

Names are imported on first use (as in :mod:`workbench.ml`): the ``workbench`` command imports
this package for its sub-commands, and ``--help`` must not pay for pyarrow and pandas.
"""

from __future__ import annotations

from workbench._lazy import lazy_attributes

__all__ = [
    "COMMANDS",
    "STATUS_READ_TIMEOUT_S",
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

_WHERE = {
    "COMMANDS": "workbench.replay._control",
    "STATUS_READ_TIMEOUT_S": "workbench.replay._control",
    "Command": "workbench.replay._control",
    "InvalidCommand": "workbench.replay._control",
    "ReplayController": "workbench.replay._control",
    "ReplayStatus": "workbench.replay._control",
    "validate_speed": "workbench.replay._control",
    "Clock": "workbench.replay._pacing",
    "Pacer": "workbench.replay._pacing",
    "SystemClock": "workbench.replay._pacing",
    "BatchReport": "workbench.replay._replay",
    "Replay": "workbench.replay._replay",
    "replay_format": "workbench.replay._replay",
    "LogFile": "workbench.replay._source",
    "log_parts": "workbench.replay._source",
    "validate_log": "workbench.replay._source",
    "ReplayError": "workbench.replay.exceptions",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
