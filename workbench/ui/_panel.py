"""The replay control panel: an ipywidgets box that steers and watches a :class:`~workbench.Workbench`.

Buttons and sliders call the workbench's methods (``set_speed``, ``pause``, ``resume``, ``seek``,
``reset``), which send a command over the control topic at once. A daemon thread refreshes the
counters about every second and the charts every few seconds; it never blocks the kernel, and it
ends when the panel is closed (``close()``, or its comm closed by the front end) or the workbench
stops running. It pauses while the panel has no view in any front end (its output cleared or its
cell re-run: ipywidgets' view count, ``_view_count``, which the front end keeps once the kernel sets
it to a number) and resumes when the panel is displayed again. A notebook or browser tab closed with
the kernel left running sends nothing (JupyterLab 4 keeps the count and the comm), so such a panel
refreshes on until closed, replaced or its workbench stops. Widget updates from a thread are sent
to the front end by ipywidgets directly.

What the panel shows is computed by :func:`panel_view` from one status snapshot (plus the lag
history the panel keeps), so the rules are unit-tested without widgets: which controls can act
and why not, an ETA from the measured rate when the replay falls behind its schedule, and the
lag's trend. Replay status fields read (newer ones only when the replay reports them):
``state``, ``speedup``, ``next_row``, ``rows_total``, ``event_time``, ``first_event_time``,
``last_event_time``, ``rate_now``, ``rate_avg``, ``eta_seconds``, ``updated_at``, ``error``, and
``listening`` (a finished replay that restarts on seek and reset), ``behind`` and ``behind_seconds``.
"""

from __future__ import annotations

import html
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Final, Protocol

import ipywidgets as widgets

from workbench._units import clock_duration
from workbench.exceptions import ConfigurationError
from workbench.runtime._format import LATE_HINT, PARTLY_TRAINED_HINT, SKIPPED_HINT, format_speed

__all__ = ["ControlPanel", "PanelTarget", "PanelView", "control_panel", "format_speed", "lag_trend", "metric_cards",
           "panel_view", "parse_speed"]

logger = logging.getLogger(__name__)

#: Speed presets (event seconds per wall second).
PRESETS: tuple[tuple[str, float | str], ...] = (("60x", 60.0), ("600x", 600.0), ("3600x", 3600.0), ("max", "max"))
#: Event time shown in the panel's charts (the most recent hours of data).
CHART_SPAN = timedelta(hours=12)
#: The shortest time axis of the panel's charts (a first window or two are bars at its start).
_LEAST_CHART_SPAN = timedelta(hours=1)


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
    if not value:
        msg = "Type a time to seek to first, e.g. 2024-03-05 12:00 (UTC) or ISO-8601."
        raise ConfigurationError(msg)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        msg = f"Seek time must look like 2024-03-05 12:00 (UTC) or ISO-8601. Got {text!r} instead."
        raise ConfigurationError(msg) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


#: Digits grouped by thousands (``3,600``, ``1_000_000.5``): the only place a comma or underscore may stand.
_THOUSANDS: Final = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d{1,3}(?:_\d{3})+(?:\.\d*)?")


def parse_speed(text: str) -> float | str:
    """A speed typed into the panel: ``"max"`` for ``max`` or ``0`` (as fast as it goes, as everywhere
    else), else event seconds per wall second; a trailing ``x`` and thousands separators are allowed
    (``3,600x``).

    Raises
    ------
    ConfigurationError
        For anything else (text, a negative speed, one outside the replay's range), naming the range.
    """
    from workbench.exceptions import WorkbenchError
    from workbench.replay import validate_speed

    value = text.strip().lower()
    number = value[:-1].strip() if value.endswith("x") and value != "max" else value
    grouped = "," in number or "_" in number
    try:
        if grouped and not _THOUSANDS.fullmatch(number):  # "1,5" is not 15: a decimal comma, or a typo
            raise ConfigurationError(number)
        speed = validate_speed(number.replace(",", "").replace("_", "") if grouped else number)
    except WorkbenchError as exc:
        from workbench.replay._control import MAX_SPEEDUP, MIN_SPEEDUP

        try:  # a number the replay cannot take is refused as such, not with the format's rules
            number_given = float(number.replace(",", "").replace("_", "") if grouped else number)
        except ValueError:
            number_given = math.nan
        if math.isfinite(number_given) and number_given > 0 and (not grouped or _THOUSANDS.fullmatch(number)):
            msg = (f"Speed {number_given:,.10g}x is outside the replay's range: {MIN_SPEEDUP:g} to {MAX_SPEEDUP:,.0f} "
                   f"event seconds per wall second, or max (0: as fast as it goes). Got {text!r}.")
        else:
            msg = (f"Speed must be a number of event seconds per wall second from {MIN_SPEEDUP:g} to "
                   f"{MAX_SPEEDUP:,.0f}, or max (0: as fast as it goes), with a point for decimals (1.5) and "
                   f"commas only between thousands (3,600). Got {text!r} instead.")
        raise ConfigurationError(msg) from exc
    return "max" if speed == 0 else speed


def _num(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 else f"{value:,.2g}"
    return str(value)


#: Lag changes smaller than this share (or 100 messages) between two looks are "steady".
_TREND_TOLERANCE = 0.05
#: Seconds of lag history compared for the trend.
_TREND_SPAN = 10.0
#: Seconds behind schedule from which the ETA comes from the measured rate.
_BEHIND_AFTER = 2.0
#: Replay states after which a command's confirmation under the panel is cleared.
_ENDED = frozenset({"finished", "stopped", "failed"})
#: Seconds a command's confirmation ("reset sent") stays under the panel; refusals stay until the next action.
_CONFIRMATION_S = 10.0
#: Seconds a play/pause click holds the button against statuses that predate the command.
_COMMAND_GRACE = 5.0
#: After a command, this many refreshes come this often instead of every ``counter_interval``: the
#: refresh a click wakes usually reads the status from before the replay applied it (within 0.1 s).
_FOLLOW_UPS = 3
_FOLLOW_UP_S = 0.25
_clock = time.monotonic  # the clock of the play/pause and speed graces (tests pass a fake one)


@dataclass(frozen=True)
class PanelView:
    """What the panel shows for one status snapshot (computed by :func:`panel_view`)."""

    can_play: bool
    can_speed: bool
    can_seek: bool
    can_reset: bool
    why_disabled: str  # empty when every control can act
    playing: bool | None  # None: leave the button as it is
    speed: float | None  # None: no number to show (max, or no fresh status)
    speed_text: str
    progress: float
    progress_text: str
    clock: str
    state: str
    eta: str
    behind: str
    lag: str
    #: ``issued_at`` of the last command the replay took (its status's ``applied_command_at``): what it
    #: reports predates a command sent after that
    applied_command_at: float | None = None


def encoding_text(encoding: str | None, pack: int | None) -> str:
    """The replay's message encoding as the panel shows it, e.g. ``arrow, up to 100 queries per message``."""
    if not encoding:
        return "-"
    if pack and pack > 1:
        return f"{encoding}, up to {pack:,} queries per message"
    return f"{encoding}, one query per message"


def _field(obj: Any, name: str, default: Any = None) -> Any:
    return getattr(obj, name, default) if obj is not None else default


def _failed_trainings_text(status: Any) -> str:
    failed = _field(status, "failed_trainings") or []
    return f"; training failed for good for {', '.join(failed)} (logs/train_<day>.log)" if failed else ""


def _stale(status: Any) -> bool:
    """Whether the replay status predates the replay process now running (a previous run's)."""
    from workbench.runtime._status import replay_predates_process

    return replay_predates_process(status.replay, status.processes)


def _events_per_second(replay: Any) -> float | None:
    first, last = _field(replay, "first_event_time"), _field(replay, "last_event_time")
    total = _field(replay, "rows_total") or 0
    if not first or not last or total <= 0:
        return None
    span = (last - first).total_seconds()
    return total / span if span > 0 else None


def _events_per_message(replay: Any) -> float | None:
    """Events a message of the replay carried on average this run (1 for one per message); None when
    unknown (a packed replay that has not said yet, or an older one)."""
    sent, messages = _field(replay, "rows_sent") or 0, _field(replay, "messages_sent") or 0
    if sent and messages:
        return sent / messages
    return 1.0 if _field(replay, "pack") == 1 else None


def _time_behind(replay: Any, lag: int, per_message: float, log_rate: float,
                 history: Sequence[tuple[float, int]]) -> float:
    """Seconds of event time the slowest app is behind the replay clock, from its lag in messages.

    The lag is a sawtooth (apps consume in batches): the mean of the last :data:`_TREND_SPAN` of samples,
    not the newest one (it read 14 minutes, then 1h 15m, within seconds). Events are turned into event
    time at the rate the replay sends now (rows per second over its speed: a night hour holds a fraction of
    the log's average), else at the log's average; and never more than the event time from the log's start
    to the clock (35 minutes behind at 00:09 read as nonsense; browser tester, 42nd session)."""
    if history:
        now = history[-1][0]
        recent = [v for t, v in history if now - t < _TREND_SPAN]
        lag = sum(recent) / len(recent) if recent else lag
    rate, speed = _field(replay, "rate_now"), _field(replay, "speedup")
    on_course = _field(replay, "state") == "running" and not _field(replay, "behind")
    events_per_s = rate / speed if on_course and rate and speed and speed > 0 else log_rate
    behind = lag * per_message / events_per_s
    clock, first = _field(replay, "event_time"), _field(replay, "first_event_time")
    if clock is not None and first is not None:
        behind = min(behind, max(0.0, (clock - first).total_seconds()))
    return behind


def lag_trend(history: Sequence[tuple[float, int]], *, span: float = _TREND_SPAN) -> str:
    """``growing``, ``shrinking``, ``steady`` or ``""`` (too little history, or nothing behind) from
    ``(time, lag)`` samples.

    The lag is a sawtooth (apps consume and commit in batches): one sample against one ``span`` ago read
    "1,089 ... shrinking" and then "1,399 ... shrinking" four seconds later. So the mean of the last
    ``span`` is compared with the mean before it, and a word is given only when the newest sample
    agrees with it (above the earlier mean for growing, below it for shrinking); a lag of 0 has none.
    """
    if len(history) < 2:
        return ""
    now, latest = history[-1]
    if latest == 0:
        return ""
    recent = [v for t, v in history if now - t < span]
    earlier = [v for t, v in history if span <= now - t < 2 * span]
    if not earlier:
        older = [v for t, v in history if now - t >= span]
        if not older:
            return ""
        earlier = older[-1:]
    before, after = sum(earlier) / len(earlier), sum(recent) / len(recent)
    change = after - before
    if abs(change) <= max(100, _TREND_TOLERANCE * max(before, after)):
        return "steady"
    if change > 0:
        return "growing" if latest > before else "steady"
    return "shrinking" if latest < before else "steady"


#: Seconds without a refresh after which the panel's clock says its kernel may be gone (refreshes come
#: every second, or every few seconds on a loaded machine).
SILENT_AFTER_S: Final = 20


def _heartbeat(beat: int) -> str:
    """A note that stays invisible while the clock's HTML is re-rendered at least every
    :data:`SILENT_AFTER_S` s (each refresh changes ``beat``, so the front end renders it anew and the
    CSS animation starts over). A kernel restarted or stopped sends nothing: the panel stayed on screen
    as it was, "[running]" with every control enabled and clicks that did nothing (a browser tester's
    finding); only the browser can tell, so the browser does, without any script."""
    # hidden and sized 0 until due: at opacity 0 alone it took four blank lines of a narrow panel, and copying
    # or a screen reader read it on every live panel (browser tester, 40th session)
    return (f"<span data-beat='{beat}' style='opacity:0;visibility:hidden;font-size:0;color:#C62828;"
            f"animation:wb-silent 0s linear {SILENT_AFTER_S}s forwards'> &nbsp; not updated for {SILENT_AFTER_S} s: "
            "if the kernel was restarted or stopped, re-run this cell (these controls no longer act)</span>"
            "<style>@keyframes wb-silent{to{opacity:1;visibility:visible;font-size:1em}}</style>")


def panel_view(status: Any, *, running: bool = True, lag_history: Sequence[tuple[float, int]] = ()) -> PanelView:
    """The panel's controls and texts for one ``Workbench.status()`` snapshot.

    Controls that cannot act are disabled with the reason in ``why_disabled``: no replay yet, a
    previous run's status, a finished, stopped or failed replay, a workbench that does not run.
    On a finished replay, seek, reset and the speed stay enabled when the replay reports ``finished``
    (it keeps listening, restarts on seek and reset, and keeps a new speed for that next course);
    otherwise they are disabled too.
    """
    replay = status.replay
    process = (getattr(status, "processes", None) or {}).get("replay") or {}
    restarts = int(process.get("restarts") or 0)
    # a replay process the workbench restarts (it failed, or was killed): its last status is the previous
    # process's, kept on screen as it was (not "starting" at 0 % between retries), the controls disabled
    retrying = bool(restarts) and (process.get("state") == "backoff" or _stale(status))
    stale = _stale(status) and not retrying
    state = "starting" if stale else (_field(replay, "state") or "not started")
    # A lingering replay (workbench.replay, ``listening``) restarts on seek and reset after it finished.
    finished_listens = (bool(_field(replay, "listening")) or _field(replay, "finished") is not None) and not stale
    can = {"play": False, "speed": False, "seek": False, "reset": False}
    why = ""
    if not running:
        why = "The workbench is not running: start one (mode='start') to steer a replay."
    elif replay is None:
        why = "No replay yet: the controls work once the replay has reported its first status."
        if process.get("state") == "backoff" and process.get("error"):
            why = (f"The replay process stopped ({process['error']}) and the workbench restarts it ({restarts:,} "
                   f"restart{'s' if restarts != 1 else ''} so far).")
    elif retrying:
        err = process.get("error") or process.get("exit_error") or _field(replay, "error")
        state = "restarting"
        why = ("The replay process stopped" + (f" ({err})" if err else "") + f" and the workbench restarts it "
               f"({restarts:,} restart{'s' if restarts != 1 else ''} so far): it goes on from its last position; "
               "the controls work once it reports again.")
    elif stale or state == "starting":
        why = "The replay is starting; the controls work once it reports its first status."
    elif state in ("running", "paused"):
        can = dict.fromkeys(can, True)
    elif state == "finished":
        if finished_listens:
            # The speed is kept for the next course, so a run that finished at max can replay slower.
            can["seek"] = can["reset"] = can["speed"] = True
            why = ("The replay has finished: Seek or Reset replays again, at the speed set here; "
                   "pause acts on a running replay.")
        else:
            why = "The replay has finished and no longer takes commands; start a new one to replay again."
    else:  # stopped, failed, or a state this panel does not know
        err = _field(replay, "error") or process.get("error")
        verb = {"failed": "has failed", "stopped": "was stopped"}.get(state, f"is {state}")
        why = f"The replay {verb}" + (f" ({err})" if err else "") + "; start a new one to replay again."

    speedup = None if stale else _field(replay, "speedup")
    speed = float(speedup) if speedup and speedup > 0 else None
    total, sent = (_field(replay, "rows_total") or 0), (0 if stale else _field(replay, "next_row") or 0)
    fraction = sent / total if total else 0.0
    event_time = None if stale else _field(replay, "event_time")
    clock = f"{event_time:%Y-%m-%d %H:%M:%S} UTC" if event_time else "-"

    # ETA: the schedule's, unless the replay falls behind it; then the rows left at the measured rate.
    eta_text, behind_text = "ETA -", ""
    if replay is not None and not stale and state in ("running", "paused", "starting"):
        eta = _field(replay, "eta_s", _field(replay, "eta_seconds"))
        # The replay's measured rate when it reports one; else the recent rate (the average
        # includes pauses and the start).
        rate = _field(replay, "rate") or _field(replay, "rate_now") or _field(replay, "rate_avg")
        if _field(replay, "behind") is not None:
            # The replay knows its schedule: its own verdict. Guessing from the recent rate said
            # "behind schedule, 2 rows/s" for seconds after every seek or resume (the rate still
            # held the pause), although the schedule had just been re-anchored.
            behind_s = _field(replay, "behind_seconds") if _field(replay, "behind") else None
        else:  # a status without the verdict: rows the schedule wants per second against rows sent
            behind_s = _field(replay, "behind_s")
            eps = _events_per_second(replay)
            if behind_s is None and eta is not None and rate and speed and eps and rate < eps * speed * 0.9:
                behind_s = max(0.0, (total - sent) / rate - (eta or 0.0))
        if behind_s is not None and behind_s > _BEHIND_AFTER and rate:
            eta = max(eta or 0.0, (total - sent) / rate)
            behind_text = f"behind schedule, sending {rate:,.0f} rows/s"
        eta_text = "ETA paused" if state == "paused" else f"ETA {clock_duration(eta)}"
    elif state == "finished":
        eta_text = "done"

    lags = [v for v in (status.lag or {}).values() if isinstance(v, int)]
    lag_text = "-"
    if lags:
        worst = max(lags)
        eps = _events_per_second(replay)
        parts = [f"{worst:,} messages"]
        per_message = _events_per_message(replay)
        if eps and worst and per_message:  # a lag counts messages, which carry up to `pack` events each
            parts.append(f"~{clock_duration(_time_behind(replay, worst, per_message, eps, lag_history))} "
                         "of event time behind")
        trend = lag_trend(lag_history)
        if trend:
            parts.append(trend)
        lag_text = ", ".join(parts)

    playing = None
    if not stale and state in ("running", "paused"):
        playing = state == "running"
    return PanelView(
        can_play=can["play"], can_speed=can["speed"], can_seek=can["seek"], can_reset=can["reset"],
        why_disabled=why, playing=playing, speed=speed,
        speed_text=format_speed(speedup) if replay is not None and not stale else "-",
        progress=float(min(1.0, max(0.0, fraction))), progress_text=f"{fraction:.0%}",
        clock=clock, state=state, eta=eta_text, behind=behind_text, lag=lag_text,
        applied_command_at=None if stale else _field(replay, "applied_command_at"),
    )


#: Muted text that stays readable in JupyterLab's dark theme (a fixed #555 was grey on black there).
_MUTED = "var(--jp-ui-font-color2, #555)"


#: A status with nothing in it (the panel's view before it could read any).
_NO_STATUS = SimpleNamespace(replay=None, lag={}, processes={})


#: A widget's widest: its output area less the 2 px margin ipywidgets puts on either side (with 100%
#: the text fields' right edge was cut off in a narrow window).
_FIT = "calc(100% - 4px)"


def _placeholder(title: str, message: str) -> str:
    """A chart-sized box saying why there is no chart yet (no SVG rendering needed)."""
    return ("<div class='workbench-placeholder' style='width:640px;max-width:100%;height:80px;"
            "border:1px dashed var(--jp-border-color1, #bbb);border-radius:4px;display:flex;flex-direction:column;"
            f"justify-content:center;align-items:center;color:{_MUTED}'><b>{html.escape(title)}</b>"
            f"<i>{html.escape(message)}&hellip;</i></div>")


#: The panel's charts are SVG drawn offline in Vega's light colours, which were white blocks in JupyterLab's dark
#: theme (browser tester, 40th session): the page's theme colours take over their background, text and axes
#: (CSS wins over SVG presentation attributes); the data marks keep theirs. The light theme looks as before.
_CHART_THEME: Final = "".join((
    "<style>",
    ".workbench-panel svg.marks > rect:first-child{fill:var(--jp-layout-color0,#fff)}",
    ".workbench-panel svg.marks g[class*='role-axis'] text,.workbench-panel svg.marks g[class*='role-title'] text,",
    ".workbench-panel svg.marks g[class*='role-legend'] text{fill:var(--jp-ui-font-color1,#000)}",
    ".workbench-panel svg.marks .role-axis-grid line,.workbench-panel svg.marks path.background",
    "{stroke:var(--jp-border-color2,#ddd)}",
    ".workbench-panel svg.marks .role-axis-domain line,.workbench-panel svg.marks .role-axis-tick line",
    "{stroke:var(--jp-ui-font-color2,#888)}",
    "</style>",
))


def _fitted(svg: str) -> str:
    """An SVG chart that shrinks to a narrow output area (its viewBox keeps the proportions) instead
    of being cut off at the right, in the notebook's theme colours (:data:`_CHART_THEME`)."""
    return svg.replace("<svg ", "<svg style='max-width:100%;height:auto' ", 1) + _CHART_THEME


def metric_cards(metrics: dict[str, Any], caption: str = "") -> widgets.HTML:
    """Metric cards (value, arrow, delta vs previous period) as an ipywidgets ``HTML``."""
    from workbench.ui.charts import metric_cards_html

    return widgets.HTML(metric_cards_html(metrics, caption=caption))


def _on_enter(action: Callable[[], None]) -> Callable[[widgets.Widget, Any, Any], None]:
    """A text field's message handler that runs ``action`` on Enter: the text view sends
    ``{"event": "submit"}`` (``Text.on_submit`` is deprecated; observing the value with
    ``continuous_update=False`` would also act whenever the field loses focus)."""

    def handle(_widget: widgets.Widget, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            action()

    return handle


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
        # One stop event per refresh thread: a thread told to stop finishes its current refresh
        # on its own while a re-displayed panel may already run the next one.
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._follow_ups = 0
        # The replay state a confirmation under the panel was said in, and when (None: none shown).
        self._confirmed_in: str | None = None
        self._confirmed_at = 0.0
        self._thread: threading.Thread | None = None
        # Refresh paused because no front end shows the panel; a new view resumes it.
        self._paused_unseen = False
        # Per thread: set while the panel itself writes widget values, so those writes are not taken
        # for user actions (a user's change arriving meanwhile in the kernel thread still counts).
        self._local = threading.local()
        self._charts_enabled = charts
        self._last_chart = 0.0
        self._chart_end: datetime | None = None  # the replay clock the charts were last drawn at
        # The first window and the replay clock of the last events chart drawn with windows in it
        self._drawn: tuple[datetime, datetime] | None = None
        # When this panel last sent a command: (wall time, as the replay's ``applied_command_at``; _clock())
        self._command_sent: tuple[float, float] | None = None

        # No readout: the slider's readout is an editable field that the front end clamps to the slider's
        # range before the kernel sees it, so a typed 0 (max everywhere else) became 1x, the slowest
        # speed. The label shows the speed; ``speed_entry`` takes typed ones, "max" and 0 included.
        self.speed = widgets.FloatLogSlider(value=1.0, base=10, min=0, max=5, step=0.05, description="Speed",
                                            readout=False, continuous_update=False,
                                            layout=widgets.Layout(width="300px", max_width=_FIT))
        self.speed_entry = widgets.Text(placeholder="e.g. 1200, 0.5 or max", description="or type a speed",
                                        style={"description_width": "initial"},
                                        layout=widgets.Layout(width="280px", max_width=_FIT))
        self.speed_button = widgets.Button(description="Set", layout=widgets.Layout(width="64px"),
                                           tooltip="Set the typed speed (max or 0: as fast as it goes)")
        self.speed_label = widgets.Label("-")
        self._running_history: list[tuple[float, int]] = []
        # The user's last play/pause (value, monotonic time) until a status shows it applied.
        self._pending_play: tuple[bool, float] | None = None
        # The play value the panel last showed (from a status or a processed click): a button value
        # that differs from it is a click whose handler has not run yet, which a status must not undo.
        self._play_shown = True
        # The user's last speed (None for max, monotonic time) until a status shows it applied.
        self._pending_speed: tuple[float | None, float] | None = None
        # Held while a click records its pending command and shows it (kernel thread) and while a
        # status decides whether a pending command landed and shows its own values (refresh thread).
        # Without it the refresh could read a pending speed, let a new click record and show another,
        # then clear that one and draw the status's older speed over it: the click looked ignored.
        self._pending_lock = threading.RLock()
        self._lag_history: list[tuple[float, int]] = []
        self._beats = 0  # refreshes shown: each changes the clock's heartbeat (_heartbeat)
        # The log's first and last event time from the last status (a seek outside is explained).
        self._log_span: tuple[datetime | None, datetime | None] = (None, None)
        self.presets = [widgets.Button(description=name, layout=widgets.Layout(width="64px"),
                                       tooltip=f"Replay at {name}") for name, _ in PRESETS]
        self.play = widgets.ToggleButton(value=True, description="Pause", icon="pause",
                                         tooltip="Pause or resume the replay")
        self.reset_button = widgets.Button(description="Reset", icon="undo", button_style="warning",
                                           tooltip="Replay from the first row again")
        self.seek_text = widgets.Text(placeholder="2024-03-05 12:00 (UTC)", description="Seek to",
                                      layout=widgets.Layout(width="300px", max_width=_FIT))
        self.seek_button = widgets.Button(description="Seek", icon="forward",
                                          tooltip="Continue the replay from this time (UTC)")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="Replay",
                                              layout=widgets.Layout(width="380px", max_width=_FIT))
        self.clock = widgets.HTML("<b>-</b>")
        self.eta = widgets.Label("ETA -")
        self.note = widgets.HTML("")  # why controls are disabled
        self.counters = widgets.HTML("")
        self.message = widgets.HTML("")
        # held to the output area: the placeholder box's max-width is then the area's, not its own 640 px
        self.events_plot = widgets.HTML(_placeholder("Events per 10 minutes", "waiting for the first window"),
                                        layout=widgets.Layout(max_width=_FIT))
        self.anomalies_plot = widgets.HTML(_placeholder("Anomalies per 10 minutes", "waiting for the first window"),
                                           layout=widgets.Layout(max_width=_FIT))

        self.speed.tooltip = "Replay speed: event seconds per wall second"
        self._tooltips = {w.model_id: w.tooltip for w in (self.play, self.speed, self.seek_button, self.reset_button,
                                                          self.speed_button, *self.presets)}
        self.speed.observe(self._on_speed, names="value")
        for button, (_, value) in zip(self.presets, PRESETS, strict=True):
            button.on_click(lambda _b, v=value: self._speed_elsewhere(v))
        self.play.observe(self._on_play, names="value")
        self.reset_button.on_click(lambda _b: self._command("reset"))
        self.seek_button.on_click(lambda _b: self._on_seek())
        self.seek_text.on_msg(_on_enter(self._on_seek))  # Enter in the field seeks too
        self.speed_button.on_click(lambda _b: self._on_speed_entry())
        self.speed_entry.on_msg(_on_enter(self._on_speed_entry))  # Enter in the field sets it too

        # Rows wrap in a narrow window (the slider, clock and ETA were cut off at the right).
        wrap = widgets.Layout(flex_flow="row wrap")
        rows: list[widgets.Widget] = [
            widgets.HBox([self.play, self.reset_button, self.speed, self.speed_label], layout=wrap),
            widgets.HBox([widgets.Label("Presets:"), *self.presets, self.speed_entry, self.speed_button], layout=wrap),
            widgets.HBox([self.seek_text, self.seek_button], layout=wrap),
            widgets.HBox([self.progress, self.clock, self.eta], layout=wrap),
            self.note,
            self.counters,
            self.message,
        ]
        if charts:
            rows.append(widgets.VBox([self.events_plot, self.anomalies_plot]))
        # _view_count=0 asks the front end to count this panel's views (None, the default, counts none).
        super().__init__(rows, _view_count=0)
        self.add_class("workbench-panel")  # a stable hook for styling and browser tests
        self.observe(self._on_view_count, names="_view_count")
        if self.comm is not None:
            self.comm.on_close(self._on_comm_closed)
        self.refresh(charts=False)
        if auto_refresh:
            self.start()

    # -- commands ------------------------------------------------------------------------------
    def _command(self, what: str, value: Any = None) -> None:
        view = getattr(self, "view", None)
        allowed = {"speed": "can_speed", "pause": "can_play", "resume": "can_play", "seek": "can_seek",
                   "reset": "can_reset"}[what]
        if view is not None and not getattr(view, allowed):
            self._say(f"{what} not sent: {view.why_disabled}", error=True)
            return
        self._command_sent = (time.time(), _clock())
        try:
            if what == "speed":
                self._wb.set_speed(value)
                self._say(f"speed {format_speed(value)} sent")
                wanted = None if isinstance(value, str) else float(value)
                with self._pending_lock:
                    self._pending_speed = (wanted, _clock())
                    self._local.syncing = True
                    try:
                        self._show_speed(wanted)
                        self.speed_label.value = format_speed(value if wanted is None else wanted)
                    finally:
                        self._local.syncing = False
            elif what == "pause":
                self._wb.pause()
                self._say("pause sent")
            elif what == "resume":
                self._wb.resume()
                self._say("resume sent")
            elif what == "reset":
                self._wb.reset()
                self._say("reset sent: the replay restarts from the first row")
            elif what == "seek":
                self._wb.seek(value)
                self._say(f"seek to {value:%Y-%m-%d %H:%M:%S} UTC sent")
        except Exception as exc:
            logger.warning("panel command failed what=%s error=%s", what, exc)
            self._command_sent = None  # not sent: the status's ETA stands
            self._say(str(exc), error=True)
        self._follow_ups = _FOLLOW_UPS
        self._wake.set()  # show the effect at once

    def _on_speed(self, change: dict[str, Any]) -> None:
        if not getattr(self._local, "syncing", False):
            self._speed_elsewhere(float(change["new"]))

    def _speed_elsewhere(self, speed: float | str) -> None:
        """A speed from a preset or the slider: the typed one, now stale, goes (the field kept "600" beside a
        label reading 3,600x)."""
        self.speed_entry.value = ""
        self._command("speed", speed)

    def _on_speed_entry(self) -> None:
        try:
            speed = parse_speed(self.speed_entry.value)
        except ConfigurationError as exc:
            self._say(str(exc), error=True)
            return
        self._command("speed", speed)

    def _on_play(self, change: dict[str, Any]) -> None:
        playing = bool(change["new"])
        self.play.description, self.play.icon = ("Pause", "pause") if playing else ("Play", "play")
        if not getattr(self._local, "syncing", False):
            with self._pending_lock:
                self._pending_play = (playing, _clock())
                self._play_shown = playing
            self._command("resume" if playing else "pause")

    def _on_seek(self) -> None:
        try:
            when = parse_seek_time(self.seek_text.value)
        except ConfigurationError as exc:
            self._say(str(exc), error=True)
            return
        from workbench.replay._control import seek_before_start, seek_past_end

        first, last = self._log_span
        # Checked here too (the controller checks again): the panel knows the span without a status read.
        # The replay would jump to its end: a running replay skipped the rest of the log and a
        # finished one did nothing, both after "seek ... sent" (a mistyped year looked ignored).
        refused = seek_past_end(when, first, last)
        if refused:
            self._say(refused, error=True)
            return
        self._command("seek", when)
        early = seek_before_start(when, first)
        if early and "sent" in self.message.value:
            self._say(f"seek sent: {early}")

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#C62828" if error else "#2E7D32"
        self.message.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"
        # A confirmation ("pause sent") holds while the replay is in the state it was sent in; once the
        # replay ends, it is old news ("resume sent" stayed under a finished replay).
        view = getattr(self, "view", None)
        self._confirmed_in = None if error else getattr(view, "state", None)
        self._confirmed_at = _clock()

    # -- refresh -------------------------------------------------------------------------------
    def refresh(self, *, charts: bool = True) -> None:
        """Read the status once and update every label (and the charts when ``charts``)."""
        try:
            status = self._wb.status()
        except Exception as exc:
            logger.debug("status unavailable: %s", exc)
            self._show_unavailable(exc)
            return
        self._show_status(status)
        if (charts or self._charts_stale(status)) and self._charts_enabled:
            self.refresh_charts(status)

    def _charts_stale(self, status: Any) -> bool:
        """Whether the replay clock left the charts' span since they were drawn: a seek or a reset
        (back, or more than :data:`CHART_SPAN` ahead) should not leave another part of the log on
        screen until the next scheduled redraw."""
        now, drawn = getattr(status, "event_time", None), self._chart_end
        if now is None or drawn is None:
            return False
        return now < drawn or now - drawn > CHART_SPAN

    def _show_status(self, status: Any) -> None:
        total_lag = [v for v in (status.lag or {}).values() if isinstance(v, int)]
        if total_lag:
            now = time.monotonic()
            self._lag_history.append((now, max(total_lag)))
            self._lag_history = [(t, v) for t, v in self._lag_history if now - t <= 6 * _TREND_SPAN]
        view = panel_view(status, running=self._wb.running, lag_history=self._lag_history)
        replay = None if _stale(status) else status.replay
        if _field(replay, "last_event_time") is not None:
            self._log_span = (_field(replay, "first_event_time"), _field(replay, "last_event_time"))
        self._apply(view)
        if self._confirmed_in is not None and (
                (view.state != self._confirmed_in and view.state in _ENDED)
                or _clock() - self._confirmed_at > _CONFIRMATION_S):
            # "reset sent" read as news for as long as the replay ran after it
            self.message.value, self._confirmed_in = "", None
        self.counters.value = self._counters_html(status, view)

    def _show_unavailable(self, exc: Exception) -> None:
        """No status (e.g. the broker is down): the last one's state no longer holds, and a command
        could not be delivered either (it would hold the kernel for its delivery timeout)."""
        why = f"The status cannot be read ({exc}); the controls work again once it can."
        last = getattr(self, "view", None) or panel_view(_NO_STATUS, running=False)
        self._apply(replace(last, can_play=False, can_speed=False, can_seek=False, can_reset=False,
                            why_disabled=why, playing=None, state="status unavailable"))
        self.counters.value = f"<span style='color:#C62828'>status unavailable: {html.escape(str(exc))}</span>"

    def _show_stopped(self) -> None:
        """The workbench stopped (``workbench stop`` in a terminal, ``wb.stop()``): say so. Its broker
        is usually gone with it, so a status read would only wait 8 s and blame Kafka."""
        self._show_ended("workbench stopped", "The workbench is not running (stopped with `workbench stop` or "
                         "wb.stop()): start it again and re-run this cell to steer a replay.")

    def _show_replaced(self) -> None:
        """A newer panel of the same workbench took over: this one no longer refreshes, so its
        controls are disabled too. Still enabled, a click was sent and answered with "sent" while
        the panel kept showing the state from before (a frozen "[running]" clock) and the notice
        that it had been replaced was overwritten by the click's message."""
        self._show_ended("replaced", "A newer panel of this workbench replaced this one (wb.controls() again); "
                         "steer the replay there. panel.start() makes this one refresh and act again.")

    def _show_ended(self, state: str, why: str) -> None:
        """This panel no longer refreshes (``state``; ``why`` in its note): the controls disabled, no heartbeat.
        Said once, by the note: the rates and lag stayed on screen looking live ("402 rows/s now, growing") under
        the note and a red copy of it (browser tester, 40th and 42nd sessions)."""
        last = getattr(self, "view", None) or panel_view(_NO_STATUS, running=False)
        self._apply(replace(last, can_play=False, can_speed=False, can_seek=False, can_reset=False,
                            why_disabled=why, playing=None, state=state, eta="", behind=""), live=False)
        self.counters.value = ""
        self.message.value, self._confirmed_in = "", None

    def _apply(self, view: PanelView, *, live: bool = True) -> None:
        """Show ``view`` in the widgets (not a user action); ``live``: the refresh thread goes on (the clock
        carries the heartbeat, :func:`_heartbeat`)."""
        self.view = view
        self._beats += 1
        self._local.syncing = True
        try:
            self.progress.value = view.progress
            self.progress.description = view.progress_text
            self.eta.value = ("ETA …" if self._command_on_its_way(view)
                              else view.eta + (f" · {view.behind}" if view.behind else ""))
            with self._pending_lock:  # a click's pending command is settled and shown, or kept, as one step
                self.clock.value = (f"<b>{html.escape(view.clock)}</b> &nbsp; [{html.escape(self._state_text(view))}]"
                                    + (_heartbeat(self._beats) if live else ""))
                if (view.speed is not None or view.speed_text == "max") and not self._speed_pending(view):
                    self._show_speed(view.speed)
                    self.speed_label.value = view.speed_text
                elif view.speed_text == "-":
                    self.speed_label.value = view.speed_text
                # The kernel thread may have taken a click's value without running its handler yet.
                if view.playing is not None and not self._play_pending() and self.play.value == self._play_shown:
                    self.play.value = self._play_shown = view.playing
            self.play.disabled = not view.can_play
            # Coloured only while it can act: the toggle's grey looked the same enabled and disabled.
            self.play.button_style = "info" if view.can_play else ""
            self.speed.disabled = not view.can_speed
            for button in (*self.presets, self.speed_entry, self.speed_button):
                button.disabled = not view.can_speed
            self.seek_text.disabled = self.seek_button.disabled = not view.can_seek
            self.reset_button.disabled = not view.can_reset
            # Orange only while it can act: a disabled warning button stayed orange and looked clickable.
            self.reset_button.button_style = "warning" if view.can_reset else ""
            reason = html.escape(view.why_disabled)
            self.note.value = f"<span style='color:#8D6E00'>{reason}</span>" if reason else ""
            for widget in (self.play, self.speed, self.seek_button, self.reset_button, self.speed_button,
                           *self.presets):
                # Its own tooltip back once it can act: None showed "null" on the play button.
                widget.tooltip = view.why_disabled or self._tooltips[widget.model_id]
        finally:
            self._local.syncing = False

    def _state_text(self, view: PanelView) -> str:
        """The replay's state, or what a play/pause click on its way makes of it: for about a second
        after Pause the status still read "[running]" under a button that already said Play."""
        pending = self._pending_play
        if (pending is not None and view.playing is not None and view.playing != pending[0]
                and _clock() - pending[1] <= _COMMAND_GRACE):
            return "resuming…" if pending[0] else "pausing…"
        return view.state

    def _show_speed(self, speed: float | None) -> None:
        """Put the slider at ``speed`` (within its range), or at its fast end for max (``None``); the
        label next to it gives the number, or "max"."""
        fastest = self.speed.base ** self.speed.max
        self.speed.value = fastest if speed is None else float(min(max(speed, 1.0), fastest))

    def _speed_pending(self, view: PanelView) -> bool:
        """Whether a speed click is still on its way: a status read before the replay applied it
        must not move the slider and label back to the old speed (the click looked ignored, and
        moving the slider again from there sent a speed the user never chose)."""
        pending = self._pending_speed
        if pending is None:
            return False
        wanted, clicked_at = pending
        shown = None if view.speed_text == "max" else view.speed
        landed = shown == wanted if wanted is None or shown is None else abs(shown - wanted) <= 1e-6 * wanted
        if landed or _clock() - clicked_at > _COMMAND_GRACE:
            self._pending_speed = None
            return False
        return True

    def _command_on_its_way(self, view: PanelView) -> bool:
        """Whether the replay has not yet taken this panel's last command (for up to ``_COMMAND_GRACE``):
        its ETA is then the old course's. After clicks on 60x, max and 600x and a seek, one refresh read
        "600x ... ETA 1h 05m 34s", the 60x ETA, under the new speed (browser tester, 40th session)."""
        sent = self._command_sent
        if sent is None or view.state not in ("running", "paused"):
            return False
        if (view.applied_command_at or 0.0) >= sent[0] or _clock() - sent[1] > _COMMAND_GRACE:
            self._command_sent = None
            return False
        return True

    def _play_pending(self) -> bool:
        """Whether a play/pause click is younger than ``_COMMAND_GRACE``: statuses then do not move the
        button. A status matching the last click is no proof that it landed: in a burst, the status
        after the first pause also matches the third, and the one after the second click's resume
        then flipped the button mid-burst, so the next click sent the opposite of what was meant
        (seven clicks from playing ended running)."""
        pending = self._pending_play
        if pending is None:
            return False
        if _clock() - pending[1] > _COMMAND_GRACE:
            self._pending_play = None
            return False
        return True

    @staticmethod
    def _counters_html(status: Any, view: PanelView) -> str:
        replay = None if _stale(status) else status.replay
        rows = []
        if replay is not None:
            # the log position, not a count of rows sent: a seek forward moves it past rows never sent
            # ("Rows sent 21,885" sat above "Skipped by a seek 21,106" with 780 rows sent)
            rows.append(("Log position", f"row {replay.next_row:,} of {replay.rows_total:,}"))
            if replay.state == "running":
                rate = _field(replay, "rate")
                measured = f", {rate:,.0f} measured" if rate else ""
                # 0 right after a command: the replay measures the new course's rate from then on
                now = f"{replay.rate_now:,.0f} rows/s now" if replay.rate_now else "measuring the rate"
                rows.append(("Rate", f"{now}, {replay.rate_avg:,.0f} avg{measured}"))
            else:
                rows.append(("Rate", f"{replay.state}: {replay.rate_avg:,.0f} rows/s on average"))
            rows.append(("Encoding", encoding_text(_field(replay, "encoding"), _field(replay, "pack"))))
            skipped = _field(replay, "rows_skipped") or 0
            if skipped:
                rows.append(("Skipped by a seek", f"{skipped:,} rows not sent yet ({SKIPPED_HINT})"))
        lag = ", ".join(f"{name} {_num(value)}" for name, value in status.lag.items()) or "-"
        rows += [
            ("Lag (messages)", lag),
            ("Pipeline behind", view.lag),
            # None: the lakehouse was never readable, i.e. the sink has not created it with a first anomaly
            ("Anomalies", "none yet" if status.anomalies is None else _num(status.anomalies)),
            ("Model", f"{status.model_version or 'none yet'} ({status.model_versions} "
                      f"version{'' if status.model_versions == 1 else 's'})"
                      + _failed_trainings_text(status)),
            *([("Trained on part of their days", f"{'; '.join(partly)} ({PARTLY_TRAINED_HINT})")]
              if (partly := _field(status, "partly_trained")) else []),
            # None: no window store yet (the first status), not an unknown count
            ("Late events", ("none yet" if status.late_events is None else _num(status.late_events))
             + (f" ({LATE_HINT})" if status.late_events else "")),
            ("Dead letters", _num(status.dead_letters)),
        ]
        waiting = _field(status, "waiting_for_model") or []
        due = _field(status, "trainings_due") or {}
        if waiting or due:  # the lag grows by design meanwhile: say why, as `workbench status` does
            parts = [f"waits for the model of {', '.join(waiting)}"] if waiting else []
            if due:
                parts.append("training " + ", ".join(f"{day} ({state})" for day, state in due.items()))
            rows.append(("Scoring", "; ".join(parts)))
        failed_judging = _field(status, "failed_judging") or {}
        if failed_judging:  # a settled day the deferred step gave up on: its windows and runs are missing
            rows.append(("Judging failed", f"{', '.join(failed_judging)} (logs/scoring.log)"))
        procs = ", ".join(f"{n}: {p.get('state')}" for n, p in status.processes.items())
        if procs:
            rows.append(("Processes", procs))
        # names on one line: a long value (the late events' explanation) narrowed their column to two lines each
        cells = "".join(f"<tr><td style='padding-right:12px;color:{_MUTED};white-space:nowrap'>{html.escape(k)}</td>"
                        f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<table style='font-size:13px'>{cells}</table>"

    def refresh_charts(self, status: Any | None = None) -> None:
        """Redraw the events and anomalies per 10 minutes over the last :data:`CHART_SPAN` of event time."""
        import pandas as pd

        from workbench.ui import charts

        self._last_chart = time.monotonic()
        end = getattr(status, "event_time", None) if status is not None else None
        self._chart_end = end
        drawn, self._drawn = self._drawn, None
        start = end - CHART_SPAN if end is not None else None
        # Up to the replay clock's own window: a store filled by an earlier pass (a seek back, a
        # reset, an earlier run) must not show later windows. The reads take window_start < end.
        upto = end + timedelta(microseconds=1) if end is not None else None
        from workbench.store.exceptions import StoreNotFoundError

        domain = None  # the anomalies chart shares the events chart's time axis, bar under bar
        title = "Events per 10 minutes"
        try:
            stats = self._wb.window_stats(start=start, end=upto)
            if stats.empty and end is not None and drawn is not None and end >= drawn[1]:
                # The clock ran ahead of the analytics app (at max a log ends within seconds): the latest
                # windows it has written since the last chart, not "waiting for the first window" in
                # place of a chart that had windows (browser tester, 40th session).
                since = self._wb.window_stats(start=drawn[0], end=upto)
                if not since.empty:
                    at = pd.to_datetime(since["window_start"], utc=True)
                    stats = since[(at > at.max() - CHART_SPAN).to_numpy()]
                    start, upto = at.max() - CHART_SPAN, at.max() + pd.Timedelta(minutes=10)
                    title = f"Events per 10 minutes (the analytics app is at {upto:%Y-%m-%d %H:%M} UTC)"
            if stats.empty:
                self.events_plot.value = _placeholder("Events per 10 minutes", "waiting for the first window")
            else:
                first = pd.to_datetime(stats["window_start"], utc=True)
                # at least an hour: one window alone (a seek back to the log's start) was one bar across the
                # whole axis, with a tick every minute
                domain = (first.min(), max(first.max() + pd.Timedelta(minutes=10), first.min() + _LEAST_CHART_SPAN))
                self.events_plot.value = _fitted(charts.to_svg(charts.events_chart(stats, title=title,
                                                                                   time_domain=domain)))
                if end is not None:
                    self._drawn = (first.min().to_pydatetime(), end)
        except StoreNotFoundError:  # the analytics app creates it with its first window
            self.events_plot.value = _placeholder("Events per 10 minutes", "waiting for the first window")
        except Exception as exc:
            logger.warning("events chart unavailable: %s", exc)
            self.events_plot.value = f"<i>events chart unavailable: {html.escape(str(exc))}</i>"
        try:
            anomalies = self._wb.anomalies(start=start, end=upto)
        except StoreNotFoundError:  # the sink creates the lakehouse with the first anomaly
            anomalies = None
        except Exception as exc:
            logger.warning("anomalies unavailable: %s", exc)
            anomalies = None
        try:
            if anomalies is None or anomalies.empty:
                # the chart ends at the replay clock: after a reset, the counter still holds the earlier ones
                self.anomalies_plot.value = _placeholder("Anomalies per 10 minutes",
                                                         "no anomalies up to the replay clock")
            else:
                chart = charts.anomalies_chart(anomalies, time_domain=domain)
                self.anomalies_plot.value = _fitted(charts.to_svg(chart))
        except Exception as exc:
            self.anomalies_plot.value = f"<i>anomalies chart unavailable: {html.escape(str(exc))}</i>"

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background refresh (no-op when it already runs)."""
        if self.refreshing:
            return
        self._paused_unseen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="workbench-panel", daemon=True)
        self._thread.start()

    @property
    def refreshing(self) -> bool:
        """Whether the refresh thread runs (and has not been told to stop)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _on_view_count(self, change: dict[str, Any]) -> None:
        """The front end's view count changed: pause with none left, resume on a new one."""
        views = change["new"]
        if views == 0 and self.refreshing:
            # Not joined: this runs in the kernel's thread, and a refresh may wait for a status read.
            self._stop.set()
            self._wake.set()
            self._paused_unseen = True
            logger.debug("panel not shown in any front end: refresh paused")
        elif isinstance(views, int) and views > 0 and self._paused_unseen:
            logger.debug("panel shown again: refresh resumed")
            self.start()

    def _on_comm_closed(self, _msg: Any) -> None:
        """The front end closed the panel's comm: the panel is gone for good."""
        self.stop(timeout=0)  # not joined: this runs in the kernel's thread
        super().close()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self._wb.running:
                    self._show_stopped()
                    break
                due = time.monotonic() - self._last_chart >= self._chart_interval
                self.refresh(charts=due)
            except Exception as exc:  # never let the thread die silently
                logger.warning("panel refresh failed: %s", exc)
            interval = self._counter_interval
            if self._follow_ups > 0:
                self._follow_ups -= 1
                interval = min(interval, _FOLLOW_UP_S)
            self._wake.wait(interval)
            self._wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refresh thread for good (the widget stays on screen; showing it again does not
        resume it: :meth:`start` does). A panel whose workbench no longer runs says so and greys its
        controls out: left on its last status, it showed a live replay with every control enabled."""
        self._paused_unseen = False
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        try:
            if not self._wb.running:
                self._show_stopped()
        except Exception as exc:  # a panel that cannot tell keeps its last state
            logger.debug("panel stop: cannot tell whether the workbench runs: %s", exc)

    def close(self) -> None:
        """Stop refreshing and close the widget."""
        self.stop()
        super().close()


#: The refreshing panel of each workbench home in this process (see :func:`control_panel`).
_LIVE_PANELS: dict[object, ControlPanel] = {}
_LIVE_LOCK = threading.Lock()


def _target_key(wb: PanelTarget) -> object:
    """One key per workbench: its home (a re-run attaches a new object to the same one)."""
    home = getattr(getattr(wb, "settings", None), "home", None)
    return ("home", str(home)) if home is not None else ("object", id(wb))


def control_panel(wb: PanelTarget, *, counter_interval: float = 1.0, chart_interval: float = 8.0,
                  auto_refresh: bool = True, charts: bool = True) -> ControlPanel:
    """An ipywidgets panel to steer and watch ``wb``'s replay.

    Speed (log slider 1x..100,000x, presets, and a field for a typed speed: 0.01..1,000,000 or
    ``max``/``0``), play/pause, seek (UTC date and time), reset, a
    progress bar with the event-time clock and ETA, live counters (rates, lag per app, anomalies,
    model version, late events, dead letters) and events/anomalies per 10 minutes. Counters refresh
    every ``counter_interval`` s and charts every ``chart_interval`` s in a daemon thread that stops
    when the panel is closed or the workbench stops, and pauses while no front end shows the panel
    (its output cleared, its cell re-run) until it is displayed again. A new panel of the
    same workbench stops the previous one's refresh: re-running the panel's cell clears its output
    but not its thread, and every forgotten panel would go on reading the status and drawing charts.
    """
    if counter_interval <= 0 or chart_interval <= 0:
        msg = ("counter_interval and chart_interval must be positive seconds. "
               f"Got {counter_interval!r} and {chart_interval!r} instead.")
        raise ConfigurationError(msg)
    panel = ControlPanel(wb, counter_interval=counter_interval, chart_interval=chart_interval,
                         auto_refresh=auto_refresh, charts=charts)
    with _LIVE_LOCK:
        previous = _LIVE_PANELS.get(key := _target_key(wb))
        _LIVE_PANELS[key] = panel
    if previous is not None:
        previous.stop()
        previous._show_replaced()
    return panel
