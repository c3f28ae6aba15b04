"""Names and folders of a workbench app: its consumer group and its local state folder.

Shared by the app lifecycle (``_app``) and the status files (``_status``), which both need them.
"""

from __future__ import annotations

from pathlib import Path

from workbench.config import Settings
from workbench.pipeline._instance import instance_dir

__all__ = ["app_state_dir", "consumer_group"]


def consumer_group(settings: Settings, app_name: str) -> str:
    """The consumer group of app ``app_name``: ``<settings.consumer_group_prefix>-<app_name>``."""
    return f"{settings.consumer_group_prefix}-{app_name}"


def app_state_dir(settings: Settings, app_name: str, instance: int = 0) -> Path:
    """Folder of the app's Quix state, status file and other local files (per instance slot, see
    :mod:`workbench.pipeline._instance`; slot 0 is ``<state_dir>/<app>``)."""
    return instance_dir(settings.state_dir, app_name, instance)
