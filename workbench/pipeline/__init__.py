"""The streaming applications: stream analytics, ML scoring, the anomaly lakehouse sink, and their shared parts.

Shared parts for every app (the ML scoring app reuses them):

* :func:`build_application` / :func:`run_quix_app` (``_app``): the Quix Application factory with the
  workbench's consumer settings, and a bounded run in the main thread;
* :func:`event_topic` (``_decode``): the event topic as raw bytes; decoding is
  :mod:`workbench.data.codec`'s alone;
* :class:`EventTimeGuard` (``_eventtime``): implausible event times are dead-lettered;
* :class:`DeadLetters` (``_deadletter``): malformed messages to the dead-letter topic;
* :class:`AppStatus` / :func:`read_app_status` (``_status``): counters published as JSON;
* :mod:`.contracts`: the ``redshift.anomalies`` message contract.
"""

from __future__ import annotations

import warnings

from workbench._lazy import lazy_attributes

try:
    from authlib.deprecate import AuthlibDeprecationWarning
except ImportError:  # pragma: no cover - authlib comes with quixstreams
    pass
else:
    # quixstreams imports authlib's httpx client, which warns on import; authlib sets its own
    # warning to "always" when first imported, so this filter must come after that import.
    # Nothing for a workbench user to act on.
    warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)

# Exports load on first use: `import workbench.pipeline` (and the CLI) stays light.
_EXPORTS: dict[str, str] = {
    "CONSUMER_DEFAULTS": "workbench.pipeline._app",
    "AnalyticsApp": "workbench.pipeline.analytics",
    "AnomalyContractError": "workbench.pipeline.exceptions",
    "AppResult": "workbench.pipeline._status",
    "AppStatus": "workbench.pipeline._status",
    "DeadLetters": "workbench.pipeline._deadletter",
    "EventTimeGuard": "workbench.pipeline._eventtime",
    "PipelineConfigError": "workbench.pipeline.exceptions",
    "PipelineError": "workbench.pipeline.exceptions",
    "ScoringApp": "workbench.pipeline.scoring",
    "ScoringSink": "workbench.pipeline.scoring",
    "WindowStatsSink": "workbench.pipeline.analytics",
    "WorkbenchApp": "workbench.pipeline._app",
    "app_state_dir": "workbench.pipeline._names",
    "build_application": "workbench.pipeline._app",
    "consumer_group": "workbench.pipeline._names",
    "event_topic": "workbench.pipeline._decode",
    "read_app_status": "workbench.pipeline._status",
    "read_app_statuses": "workbench.pipeline._status",
    "read_dead_letters": "workbench.pipeline._deadletter",
    "register_periodic": "workbench.pipeline._quix",
    "run_analytics": "workbench.pipeline.analytics",
    "run_quix_app": "workbench.pipeline._app",
    "run_scoring": "workbench.pipeline.scoring",
    "status_path": "workbench.pipeline._status",
}


__all__ = [
    "CONSUMER_DEFAULTS",
    "AnalyticsApp",
    "AnomalyContractError",
    "AppResult",
    "AppStatus",
    "DeadLetters",
    "EventTimeGuard",
    "PipelineConfigError",
    "PipelineError",
    "ScoringApp",
    "ScoringSink",
    "WindowStatsSink",
    "WorkbenchApp",
    "app_state_dir",
    "build_application",
    "consumer_group",
    "event_topic",
    "read_app_status",
    "read_app_statuses",
    "read_dead_letters",
    "register_periodic",
    "run_analytics",
    "run_quix_app",
    "run_scoring",
    "status_path",
]


__getattr__ = lazy_attributes(__name__, _EXPORTS)
