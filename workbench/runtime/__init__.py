"""The running workbench: a supervisor daemon for the apps and the replay, and the `Workbench` API.

Names are imported on first use (as in :mod:`workbench.ml`): the ``workbench`` command imports
this package for its sub-commands, and ``--help`` must not pay for pyarrow and pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    msg = f"module 'workbench.runtime' has no attribute {name!r}"
    raise AttributeError(msg)
