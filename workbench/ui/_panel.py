"""The replay control panel: an ipywidgets box that steers and watches a :class:`~workbench.Workbench`.

Buttons and sliders call the workbench's methods (``set_speed``, ``pause``, ``resume``, ``seek``,
``reset``), which send a command over the control topic at once. A daemon thread refreshes the
counters about every second and the charts every few seconds; it never blocks the kernel, and it
ends when the panel is closed or the workbench stops running. Widget updates from a thread are
sent to the front end by ipywidgets directly.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import ipywidgets as widgets

from workbench.exceptions import ConfigurationError

__all__ = ["ControlPanel", "PanelTarget", "control_panel", "metric_cards"]

logger = logging.getLogger(__name__)

#: Speed presets (event seconds per wall second).
PRESETS: tuple[tuple[str, float | str], ...] = (("60x", 60.0), ("600x", 600.0), ("3600x", 3600.0), ("max", "max"))
#: Event time shown in the panel's charts (the most recent hours of data).
CHART_SPAN = timedelta(hours=12)


class PanelTarget(Protocol):
    """What the panel needs from a workbench (``Workbench`` implements it)."""

    @property
    def running(self) -> bool: ...
    def status(self) -> Any: ...
    def set_speed(self, speedup: float | str) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def seek(self, event_time: datetime | str) -> None: ...
    def reset(self) -> None: ...
    def window_stats(self, **filters: Any) -> Any: ...
    def anomalies(self, **filters: Any) -> Any: ...


def parse_seek_time(text: str) -> datetime:
    """A UTC datetime from ``YYYY-MM-DD HH:MM[:SS]`` or ISO-8601 text (no zone = UTC).

    Raises
    ------
    ConfigurationError
        For anything else, naming the accepted form.
    """
    value = text.strip().replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        msg = f"Seek time must look like 2024-03-05 12:00 (UTC) or ISO-8601. Got {text!r} instead."
        raise ConfigurationError(msg) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def metric_cards(metrics: dict[str, Any], caption: str = "") -> widgets.HTML:
    """Metric cards (value, arrow, delta vs previous period) as an ipywidgets ``HTML``."""
    from workbench.ui.charts import metric_cards_html

    return widgets.HTML(metric_cards_html(metrics, caption=caption))


class ControlPanel(widgets.VBox):
    """The panel widget. Use :func:`control_panel` (or ``wb.controls()``) to make one.

    Parameters
    ----------
    wb : PanelTarget
        The workbench to steer.
    counter_interval, chart_interval : float
        Seconds between counter and chart refreshes.
    auto_refresh : bool
        Start the refresh thread now (tests pass False and call :meth:`refresh` themselves).
    charts : bool
        Show the events/anomalies charts.
    """

    def __init__(self, wb: PanelTarget, *, counter_interval: float = 1.0, chart_interval: float = 8.0,
                 auto_refresh: bool = True, charts: bool = True) -> None:
        self._wb = wb
        self._counter_interval = counter_interval
        self._chart_interval = chart_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Per thread: set while the panel itself writes widget values, so those writes are not taken
        # for user actions (a user's change arriving meanwhile in the kernel thread still counts).
        self._local = threading.local()
        self._charts_enabled = charts
        self._last_chart = 0.0

        self.speed = widgets.FloatLogSlider(value=600, base=10, min=0, max=5, step=0.05, description="Speed",
                                            readout_format=".3g", continuous_update=False,
                                            layout=widgets.Layout(width="380px"))
        self.speed_label = widgets.Label("600x")
        self.presets = [widgets.Button(description=name, layout=widgets.Layout(width="64px"),
                                       tooltip=f"Replay at {name}") for name, _ in PRESETS]
        self.play = widgets.ToggleButton(value=True, description="Pause", icon="pause",
                                         tooltip="Pause or resume the replay")
        self.reset_button = widgets.Button(description="Reset", icon="undo", button_style="warning",
                                           tooltip="Replay from the first row again")
        self.seek_text = widgets.Text(placeholder="2024-03-05 12:00 (UTC)", description="Seek to",
                                      layout=widgets.Layout(width="300px"))
        self.seek_button = widgets.Button(description="Seek", icon="forward")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="Replay",
                                              layout=widgets.Layout(width="380px"))
        self.clock = widgets.HTML("<b>-</b>")
        self.eta = widgets.Label("ETA -")
        self.counters = widgets.HTML("")
        self.message = widgets.HTML("")
        self.events_plot = widgets.HTML("")
        self.anomalies_plot = widgets.HTML("")

        self.speed.observe(self._on_speed, names="value")
        for button, (_, value) in zip(self.presets, PRESETS, strict=True):
            button.on_click(lambda _b, v=value: self._command("speed", v))
        self.play.observe(self._on_play, names="value")
        self.reset_button.on_click(lambda _b: self._command("reset"))
        self.seek_button.on_click(lambda _b: self._on_seek())

        rows: list[widgets.Widget] = [
            widgets.HBox([self.play, self.reset_button, self.speed, self.speed_label]),
            widgets.HBox([widgets.Label("Presets:"), *self.presets]),
            widgets.HBox([self.seek_text, self.seek_button]),
            widgets.HBox([self.progress, self.clock, self.eta]),
            self.counters,
            self.message,
        ]
        if charts:
            rows.append(widgets.VBox([self.events_plot, self.anomalies_plot]))
        super().__init__(rows)
        self.refresh(charts=False)
        if auto_refresh:
            self.start()

    # -- commands ------------------------------------------------------------------------------
    def _command(self, what: str, value: Any = None) -> None:
        try:
            if what == "speed":
                self._wb.set_speed(value)
                self._say(f"speed set to {value if isinstance(value, str) else f'{value:g}x'}")
                if not isinstance(value, str):
                    self._local.syncing = True
                    try:
                        self.speed.value = float(value)
                    finally:
                        self._local.syncing = False
            elif what == "pause":
                self._wb.pause()
                self._say("paused")
            elif what == "resume":
                self._wb.resume()
                self._say("resumed")
            elif what == "reset":
                self._wb.reset()
                self._say("replay reset to the first row")
            elif what == "seek":
                self._wb.seek(value)
                self._say(f"seeking to {value:%Y-%m-%d %H:%M:%S} UTC")
        except Exception as exc:
            logger.warning("panel command failed what=%s error=%s", what, exc)
            self._say(str(exc), error=True)
        self._wake.set()  # show the effect at once

    def _on_speed(self, change: dict[str, Any]) -> None:
        if not getattr(self._local, "syncing", False):
            self._command("speed", float(change["new"]))

    def _on_play(self, change: dict[str, Any]) -> None:
        playing = bool(change["new"])
        self.play.description, self.play.icon = ("Pause", "pause") if playing else ("Play", "play")
        if not getattr(self._local, "syncing", False):
            self._command("resume" if playing else "pause")

    def _on_seek(self) -> None:
        try:
            when = parse_seek_time(self.seek_text.value)
        except ConfigurationError as exc:
            self._say(str(exc), error=True)
            return
        self._command("seek", when)

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#C62828" if error else "#2E7D32"
        self.message.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    # -- refresh -------------------------------------------------------------------------------
    def refresh(self, *, charts: bool = True) -> None:
        """Read the status once and update every label (and the charts when ``charts``)."""
        try:
            status = self._wb.status()
        except Exception as exc:
            logger.debug("status unavailable: %s", exc)
            self.counters.value = f"<span style='color:#C62828'>status unavailable: {html.escape(str(exc))}</span>"
            return
        self._show_status(status)
        if charts and self._charts_enabled:
            self.refresh_charts(status)

    def _show_status(self, status: Any) -> None:
        replay = status.replay
        self._local.syncing = True
        try:
            if replay is None:
                self.progress.value = 0.0
                self.clock.value = "<b>no replay yet</b>"
                self.eta.value = "ETA -"
            else:
                self.progress.value = float(min(1.0, max(0.0, replay.fraction)))
                self.progress.description = f"{replay.fraction:.0%}"
                clock = replay.event_time.strftime("%Y-%m-%d %H:%M:%S") if replay.event_time else "-"
                self.clock.value = f"<b>{clock} UTC</b> &nbsp; [{html.escape(replay.state)}]"
                self.eta.value = f"ETA {_duration(replay.eta_seconds)}"
                if replay.speedup and replay.speedup > 0:
                    self.speed.value = float(min(max(replay.speedup, 1.0), 100_000.0))
                    self.speed_label.value = f"{replay.speedup:g}x"
                else:
                    self.speed_label.value = "max"
                if replay.state in ("running", "paused", "starting"):
                    self.play.value = replay.state != "paused"
        finally:
            self._local.syncing = False
        self.counters.value = self._counters_html(status)

    @staticmethod
    def _counters_html(status: Any) -> str:
        replay = status.replay
        rows = []
        if replay is not None:
            rows.append(("Rows sent", f"{replay.next_row:,} / {replay.rows_total:,}"))
            rows.append(("Rate", f"{replay.rate_now:,.0f} rows/s now, {replay.rate_avg:,.0f} avg"))
        lag = ", ".join(f"{name} {_num(value)}" for name, value in status.lag.items()) or "-"
        rows += [
            ("Lag (messages)", lag),
            ("Anomalies", _num(status.anomalies)),
            ("Model", f"{status.model_version or 'none yet'} ({status.model_versions} versions)"),
            ("Late events", _num(status.late_events)),
            ("Dead letters", _num(status.dead_letters)),
        ]
        procs = ", ".join(f"{n}: {p.get('state')}" for n, p in status.processes.items())
        if procs:
            rows.append(("Processes", procs))
        cells = "".join(f"<tr><td style='padding-right:12px;color:#555'>{html.escape(k)}</td>"
                        f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<table style='font-size:13px'>{cells}</table>"

    def refresh_charts(self, status: Any | None = None) -> None:
        """Redraw the events and anomalies per 10 minutes over the last :data:`CHART_SPAN` of event time."""
        from workbench.ui import charts

        self._last_chart = time.monotonic()
        end = getattr(status, "event_time", None) if status is not None else None
        start = end - CHART_SPAN if end is not None else None
        try:
            stats = self._wb.window_stats(start=start)
            self.events_plot.value = charts.to_svg(charts.events_chart(stats))
        except Exception as exc:
            logger.debug("events chart unavailable: %s", exc)
            self.events_plot.value = f"<i>events chart unavailable: {html.escape(str(exc))}</i>"
        try:
            anomalies = self._wb.anomalies(start=start)
        except Exception as exc:  # no lakehouse before the first anomaly
            logger.debug("anomalies unavailable: %s", exc)
            import pandas as pd

            anomalies = pd.DataFrame({"arrival_timestamp": pd.Series([], dtype="datetime64[ns, UTC]")})
        try:
            self.anomalies_plot.value = charts.to_svg(charts.anomalies_chart(anomalies))
        except Exception as exc:
            self.anomalies_plot.value = f"<i>anomalies chart unavailable: {html.escape(str(exc))}</i>"

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background refresh (no-op when it already runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="workbench-panel", daemon=True)
        self._thread.start()

    @property
    def refreshing(self) -> bool:
        """Whether the refresh thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._wb.running:
                    self.refresh(charts=self._charts_enabled)
                    self._say("the workbench is not running; refresh stopped", error=True)
                    break
                due = time.monotonic() - self._last_chart >= self._chart_interval
                self.refresh(charts=due)
            except Exception as exc:  # never let the thread die silently
                logger.warning("panel refresh failed: %s", exc)
            self._wake.wait(self._counter_interval)
            self._wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refresh thread (the widget stays on screen)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop refreshing and close the widget."""
        self.stop()
        super().close()


def control_panel(wb: PanelTarget, *, counter_interval: float = 1.0, chart_interval: float = 8.0,
                  auto_refresh: bool = True, charts: bool = True) -> ControlPanel:
    """An ipywidgets panel to steer and watch ``wb``'s replay.

    Speed (log slider 1x..100,000x and presets), play/pause, seek (UTC date and time), reset, a
    progress bar with the event-time clock and ETA, live counters (rates, lag per app, anomalies,
    model version, late events, dead letters) and events/anomalies per 10 minutes. Counters refresh
    every ``counter_interval`` s and charts every ``chart_interval`` s in a daemon thread that stops
    when the panel is closed or the workbench stops.
    """
    if counter_interval <= 0 or chart_interval <= 0:
        msg = ("counter_interval and chart_interval must be positive seconds. "
               f"Got {counter_interval!r} and {chart_interval!r} instead.")
        raise ConfigurationError(msg)
    return ControlPanel(wb, counter_interval=counter_interval, chart_interval=chart_interval,
                        auto_refresh=auto_refresh, charts=charts)
