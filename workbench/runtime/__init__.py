"""The running workbench: a supervisor daemon for the apps and the replay, and the `Workbench` API."""

from workbench.runtime._status import WorkbenchStatus, consumer_lag, topic_message_count
from workbench.runtime._workbench import DEFAULT_APPS, Workbench, WorkbenchStateError

__all__ = [
    "DEFAULT_APPS",
    "Workbench",
    "WorkbenchStateError",
    "WorkbenchStatus",
    "consumer_lag",
    "topic_message_count",
]
