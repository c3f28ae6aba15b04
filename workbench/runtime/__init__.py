"""The running workbench: a supervisor daemon for the apps and the replay, and the `Workbench` API.

Names are imported on first use (as in :mod:`workbench.ml`): the ``workbench`` command imports
this package for its sub-commands, and ``--help`` must not pay for pyarrow and pandas.
"""

from __future__ import annotations

from workbench._lazy import lazy_attributes

__all__ = [
    "DEFAULT_APPS",
    "Workbench",
    "WorkbenchStateError",
    "WorkbenchStatus",
    "consumer_lag",
    "topic_message_count",
]

_WHERE = {
    "WorkbenchStatus": "workbench.runtime._status",
    "consumer_lag": "workbench.runtime._status",
    "topic_message_count": "workbench.runtime._status",
    "DEFAULT_APPS": "workbench.runtime._workbench",
    "Workbench": "workbench.runtime._workbench",
    "WorkbenchStateError": "workbench.runtime._workbench",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
