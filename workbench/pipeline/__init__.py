"""The streaming applications: stream analytics, ML scoring, the anomaly lakehouse sink, and their shared parts.

Shared parts for every app (the ML scoring app reuses them):

* :func:`build_application` / :func:`run_quix_app` (``_app``): the Quix Application factory with the
  workbench's consumer settings, and a bounded run in the main thread;
* :func:`decode_event_message`, :func:`json_event_row`, :func:`event_topic` (``_decode``): event
  messages to Arrow or to a validated dict, raising ``MessageDecodeError`` with a reason;
* :class:`DeadLetters` (``_deadletter``): malformed messages to the dead-letter topic;
* :class:`AppStatus` / :func:`read_app_status` (``_status``): counters published as JSON;
* :mod:`.contracts`: the ``redshift.anomalies`` message contract.
"""

from __future__ import annotations

import contextlib
import warnings

with warnings.catch_warnings():
    # quixstreams imports authlib's httpx client, which warns on import; authlib forces its own
    # filter to "always" when first imported, so import it first, then ignore, then import quix.
    # Nothing for a workbench user to act on.
    with contextlib.suppress(ImportError):
        import authlib.deprecate  # noqa: F401
    warnings.simplefilter("ignore")
    import quixstreams  # noqa: F401

from workbench.pipeline._app import (
    CONSUMER_DEFAULTS,
    app_state_dir,
    build_application,
    consumer_group,
    register_periodic,
    run_quix_app,
)
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._decode import decode_event_message, event_topic, json_event_row, message_encoding
from workbench.pipeline._status import AppResult, AppStatus, read_app_status, status_path
from workbench.pipeline.analytics import AnalyticsApp, WindowStatsSink, run_analytics
from workbench.pipeline.exceptions import AnomalyContractError, PipelineConfigError, PipelineError
from workbench.pipeline.scoring import ScoringApp, ScoringSink, run_scoring

__all__ = [
    "CONSUMER_DEFAULTS",
    "AnalyticsApp",
    "AnomalyContractError",
    "AppResult",
    "AppStatus",
    "DeadLetters",
    "PipelineConfigError",
    "PipelineError",
    "ScoringApp",
    "ScoringSink",
    "WindowStatsSink",
    "app_state_dir",
    "build_application",
    "consumer_group",
    "decode_event_message",
    "event_topic",
    "json_event_row",
    "message_encoding",
    "read_app_status",
    "register_periodic",
    "run_analytics",
    "run_quix_app",
    "run_scoring",
    "status_path",
]
