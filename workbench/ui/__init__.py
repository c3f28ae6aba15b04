"""Notebook UI: the replay control panel and the Altair charts the notebooks share.

>>> from workbench.ui import control_panel, charts  # doctest: +SKIP
>>> control_panel(wb)  # doctest: +SKIP
"""

from workbench.ui import charts, tables
from workbench.ui._panel import ControlPanel, PanelTarget, control_panel, metric_cards, parse_seek_time

__all__ = ["ControlPanel", "PanelTarget", "charts", "control_panel", "metric_cards", "parse_seek_time", "tables"]
