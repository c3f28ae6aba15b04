"""The control panel against a fake workbench, and the chart specs (valid Vega-Lite, offline SVG)."""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import pytest

from workbench._units import clock_duration
from workbench.exceptions import ConfigurationError
from workbench.replay import ReplayStatus
from workbench.runtime import WorkbenchStatus
from workbench.store.exceptions import StoreNotFoundError
from workbench.ui import charts, control_panel, metric_cards, parse_seek_time
from workbench.ui._panel import PRESETS, format_speed, lag_trend, panel_view, parse_speed

T0 = datetime(2024, 3, 4, tzinfo=UTC)


class FakeWorkbench:
    """Implements the methods the panel calls and records them (UI unit tests only)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.running = True
        self.state = "running"
        self.speedup = 600.0
        self.next_row = 250
        self.anomaly_count = 3
        self.stores_missing = False
        self.lag = 7
        self.processes: dict[str, dict[str, Any]] = {"scoring": {"state": "running"}}
        self.replay_extra: dict[str, Any] = {}
        self.no_replay = False
        self.apps: dict[str, dict[str, Any]] = {}
        self.partly_trained: list[str] = []

    def status(self) -> WorkbenchStatus:
        replay = ReplayStatus(replay_id="default", file="log.parquet", state=self.state, speedup=self.speedup,
                              rows_sent=self.next_row, rows_total=1000, next_row=self.next_row,
                              event_time=T0 + timedelta(hours=2), first_event_time=T0,
                              last_event_time=T0 + timedelta(days=1), rate_now=1234.0, rate_avg=1000.0,
                              eta_seconds=75.0, updated_at=1000.0)
        for key, value in self.replay_extra.items():
            object.__setattr__(replay, key, value)
        return WorkbenchStatus(replay=None if self.no_replay else replay, processes=self.processes,
                               apps=self.apps, lag={"scoring": self.lag, "analytics": 0, "anomaly-sink": None},
                               model_version="v0002-2024-03-05", model_versions=2, anomalies=self.anomaly_count,
                               late_events=4, dead_letters=1, partly_trained=self.partly_trained)

    def set_speed(self, speedup: float | str) -> None:
        self.calls.append(("set_speed", speedup))

    def pause(self) -> None:
        self.calls.append(("pause", None))

    def resume(self) -> None:
        self.calls.append(("resume", None))

    def seek(self, event_time: datetime | str) -> None:
        self.calls.append(("seek", event_time))

    def reset(self) -> None:
        self.calls.append(("reset", None))

    def window_stats(self, **filters: Any) -> pd.DataFrame:
        self.chart_filters = filters
        if self.stores_missing:
            raise StoreNotFoundError("No window stats database at /x/stream_stats.sqlite")
        starts = pd.date_range(T0, periods=6, freq="10min", tz="UTC")
        return pd.DataFrame({"window_start": starts, "instance_id": 1, "total_queries": np.arange(6) * 10})

    def anomalies(self, **filters: Any) -> pd.DataFrame:
        if self.stores_missing:
            raise StoreNotFoundError("No lakehouse yet")
        return pd.DataFrame({"arrival_timestamp": pd.date_range(T0, periods=3, freq="7min", tz="UTC")})


@pytest.fixture
def panel_and_fake() -> tuple[Any, FakeWorkbench]:
    fake = FakeWorkbench()
    panel = control_panel(fake, auto_refresh=False)
    yield panel, fake
    panel.close()


def test_buttons_call_the_workbench(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    panel, fake = panel_and_fake
    panel.speed_entry.value = "600"
    panel.presets[0].click()
    assert panel.speed_entry.value == ""  # a typed speed the preset replaced does not stay beside it
    panel.presets[3].click()
    panel.play.value = False
    panel.play.value = True
    panel.reset_button.click()
    panel.speed.value = 5000.0
    panel.seek_text.value = "2024-03-04 12:30"
    panel.seek_button.click()
    assert fake.calls == [("set_speed", 60.0), ("set_speed", "max"), ("pause", None), ("resume", None),
                          ("reset", None), ("set_speed", 5000.0),
                          ("seek", datetime(2024, 3, 4, 12, 30, tzinfo=UTC))]
    assert panel.play.description == "Pause"


def test_a_status_from_before_a_click_does_not_flip_the_play_button_back(
        panel_and_fake: tuple[Any, FakeWorkbench], monkeypatch: pytest.MonkeyPatch) -> None:
    panel, fake = panel_and_fake
    panel.play.value = False  # the user pauses; the replay has not applied it yet
    panel.refresh()  # status still says running
    assert panel.play.value is False and panel.play.description == "Play"
    assert "[pausing…]" in panel.clock.value  # not "[running]" under a Play button
    panel.play.value = True  # a second click resumes (not a second pause)
    assert fake.calls == [("pause", None), ("resume", None)]
    fake.state = "paused"  # the pause lands, the resume not yet
    panel.refresh()
    assert panel.play.value is True
    assert "[resuming…]" in panel.clock.value
    fake.state = "running"
    panel.refresh()
    monkeypatch.setattr("workbench.ui._panel._COMMAND_GRACE", 0.0)
    time.sleep(0.01)
    fake.state = "paused"  # paused from elsewhere (code, another panel): the status drives the button again
    panel.refresh()
    assert panel.play.value is False and panel.play.description == "Play"
    assert "[paused]" in panel.clock.value
    panel.play.value = True  # a command that never lands: after the grace the status wins
    time.sleep(0.01)
    panel.refresh()
    assert panel.play.value is False


def test_a_burst_of_play_pause_clicks_is_not_undone_by_statuses_from_its_middle(
        panel_and_fake: tuple[Any, FakeWorkbench], monkeypatch: pytest.MonkeyPatch) -> None:
    """Seven fast clicks from playing once ended running: the replay logged pause, resume, resume, ...
    A status showing the first pause matched the third click and ended its guard; the next one,
    showing the second click's resume, put the button back on Pause mid-burst."""
    now = [100.0]
    monkeypatch.setattr("workbench.ui._panel._clock", lambda: now[0], raising=False)
    panel, fake = panel_and_fake
    for value in (False, True, False):  # three clicks 0.1 s apart
        panel.play.value = value
        now[0] += 0.1
    fake.state = "paused"  # the first pause landed
    panel.refresh()
    fake.state = "running"  # the second click's resume landed, the third's pause not yet
    panel.refresh()
    assert panel.play.value is False and panel.play.description == "Play"
    panel.play.value = True  # the fourth click resumes, as its "Play" label says
    assert [name for name, _ in fake.calls] == ["pause", "resume", "pause", "resume"]
    now[0] += 6  # past the grace the status drives the button again
    fake.state = "paused"
    panel.refresh()
    assert panel.play.value is False


def test_a_status_does_not_undo_a_click_whose_handler_has_not_run_yet(
        panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """ipywidgets sets a clicked value with notifications held and runs the handler afterwards; a
    refresh in between saw no pending click and wrote the status's value over the user's."""
    panel, fake = panel_and_fake
    with panel.play.hold_trait_notifications():
        panel.play.value = False  # the user's pause, its handler not run yet
        panel.refresh()  # the refresh thread: the status still says running
    assert fake.calls == [("pause", None)]
    assert panel.play.value is False and panel.play.description == "Play"


def test_a_status_from_before_a_speed_click_does_not_move_the_slider_back(
        panel_and_fake: tuple[Any, FakeWorkbench], monkeypatch: pytest.MonkeyPatch) -> None:
    panel, fake = panel_and_fake
    panel.refresh()
    panel.presets[0].click()  # 60x; the replay has not applied it yet (a status read takes ~0.5 s)
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(60.0), "60x")
    panel.refresh()  # the status still says 600x: the click must not look ignored
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(60.0), "60x")
    panel.presets[3].click()  # max, still before the replay applied anything
    fake.speedup = 60.0
    panel.refresh()
    assert (panel.speed.readout, panel.speed_label.value) == (False, "max")
    fake.speedup = 0.0  # max lands
    panel.refresh()
    fake.speedup = 3600.0  # changed from elsewhere (code, another panel): the status drives the slider again
    panel.refresh()
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(3600.0), "3,600x")
    monkeypatch.setattr("workbench.ui._panel._COMMAND_GRACE", 0.0)
    panel.presets[1].click()  # a command that never lands: after the grace the status wins
    time.sleep(0.01)
    panel.refresh()
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(3600.0), "3,600x")
    assert fake.calls == [("set_speed", 60.0), ("set_speed", "max"), ("set_speed", 600.0)]


def _click_in_the_kernel_thread(panel: Any, button: Any) -> threading.Thread:
    """Click ``button`` from another thread, as the kernel thread does while the refresh thread runs,
    and return once the click has finished or waits for the panel's lock, which the caller holds."""
    settled = threading.Event()
    lock = getattr(panel, "_pending_lock", None)

    class Watched:  # the panel's lock, telling when the click thread wants it
        def __enter__(self) -> Any:
            if threading.current_thread() is clicker:
                settled.set()
            return lock.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return lock.__exit__(*exc)

    def click() -> None:
        try:
            button.click()
        finally:
            settled.set()

    if lock is not None:
        panel._pending_lock = Watched()
    clicker = threading.Thread(target=click)
    clicker.start()
    assert settled.wait(30)
    return clicker


def test_a_speed_click_while_a_refresh_settles_the_previous_one_is_neither_dropped_nor_drawn_over(
        panel_and_fake: tuple[Any, FakeWorkbench], monkeypatch: pytest.MonkeyPatch) -> None:
    """The refresh thread read the pending speed, found it expired and cleared it; a preset clicked
    in the kernel thread between that read and that write lost its pending speed, and the refresh
    then drew the status's old speed over the click (seen as 3,600x shown after a burst ending at 600x)."""
    now, clicker = [100.0], []
    panel, fake = panel_and_fake

    def clock() -> float:
        if hook_armed.is_set() and threading.current_thread() is threading.main_thread() and not clicker:
            clicker.append(_click_in_the_kernel_thread(panel, panel.presets[2]))  # 3600x, right here
        return now[0]

    hook_armed = threading.Event()
    monkeypatch.setattr("workbench.ui._panel._clock", clock, raising=False)
    panel.refresh()
    panel.presets[0].click()  # 60x, which the replay never applies (e.g. it was restarting)
    now[0] += 10  # past the grace
    hook_armed.set()
    panel.refresh()  # the status still says 600x; the 3600x click comes while it settles the 60x one
    clicker[0].join(30)
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(3600.0), "3,600x")
    panel.refresh()  # the 3600x has not landed yet: it stays shown
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(3600.0), "3,600x")
    assert fake.calls == [("set_speed", 60.0), ("set_speed", 3600.0)]


def test_at_max_the_slider_sits_at_its_fast_end_without_a_number_that_contradicts_the_label(
        panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    panel, fake = panel_and_fake
    assert panel.speed.readout is False  # the label gives the number (or "max"), never a slider readout
    panel.speed.value = 60.0  # the slider somewhere slow, then max
    panel.presets[3].click()
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(100_000.0), "max")
    fake.speedup = 0.0  # the replay reports max as 0
    panel.refresh()
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(100_000.0), "max")
    panel.presets[1].click()  # back to a number: the slider shows it again
    fake.speedup = 600.0
    panel.refresh()
    assert (panel.speed.value, panel.speed_label.value) == (pytest.approx(600.0), "600x")
    assert fake.calls == [("set_speed", 60.0), ("set_speed", "max"), ("set_speed", 600.0)]


def test_a_typed_speed_of_0_is_max_as_everywhere_else_and_a_bad_one_is_refused(
        panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """Typed into the slider's readout, 0 gave 1x (the slowest speed, not max), -5 gave 1x and 1e9
    gave 100,000x: the front end clamped them before the kernel saw them. The speed field takes
    what the replay takes and says what it refuses."""
    panel, fake = panel_and_fake
    assert panel.speed.readout is False  # no editable readout that clamps
    for typed in ("0", " MAX ", "2,500x", "0.5"):
        panel.speed_entry.value = typed
        panel.speed_button.click()
    panel.speed_entry.value = "1200"
    panel.speed_entry._handle_custom_msg({"event": "submit"}, [])  # Enter in the field
    assert fake.calls == [("set_speed", "max"), ("set_speed", "max"), ("set_speed", 2500.0), ("set_speed", 0.5),
                          ("set_speed", 1200.0)]
    assert panel.speed_label.value == "1,200x"
    for typed in ("-5", "abc", "", "nan", "1,5"):
        panel.speed_entry.value = typed
        panel.speed_button.click()
        assert "not sent" in panel.message.value or "Speed must be" in panel.message.value, typed
        assert f"Got {html.escape(repr(typed))} instead" in panel.message.value
    # a number out of range is refused as such, not with the format's rules (browser tester, 42nd session)
    for typed, shown in (("1e9", "1,000,000,000x"), ("2,000,000", "2,000,000x"), ("0.001x", "0.001x")):
        panel.speed_entry.value = typed
        panel.speed_button.click()
        assert f"Speed {shown} is outside the replay&#x27;s range" in panel.message.value, panel.message.value
    assert len(fake.calls) == 5 and panel.speed_label.value == "1,200x"
    fake.state = "failed"  # a replay that takes no speed: the field is disabled with the others
    panel.refresh()
    assert panel.speed_entry.disabled and panel.speed_button.disabled


def test_parse_speed() -> None:
    assert parse_speed("0") == parse_speed("max") == parse_speed("Max") == "max"
    assert parse_speed("3,600x") == 3600.0 and parse_speed("0.01") == 0.01 and parse_speed("1e6") == 1e6
    assert parse_speed("1,000,000") == 1e6 and parse_speed("3_600.5x") == 3600.5 and parse_speed(" 1,200 ") == 1200
    # a decimal comma is not a thousands separator: "1,5" read as 15x before (a browser session's finding)
    for bad in ("-1", "inf", "x", "fast", "1,5", "0,5", "1,00", "12,34,5", ",600", "3,6000"):
        with pytest.raises(ConfigurationError, match="from 0.01 to 1,000,000, or max"):
            parse_speed(bad)
    for out_of_range in ("0.001", "2e6", "2,000,000x"):  # numbers, refused for their size, not their format
        with pytest.raises(ConfigurationError, match="outside the replay's range: 0.01 to 1,000,000 event"):
            parse_speed(out_of_range)


def test_rows_a_seek_forward_skipped_are_shown_with_what_they_mean(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    panel, fake = panel_and_fake
    panel.refresh()
    assert "Skipped by a seek" not in panel.counters.value
    fake.replay_extra["rows_skipped"] = 16_945
    panel.refresh()
    shown = panel.counters.value
    assert "Skipped by a seek</td><td>16,945 rows not sent yet (a reset or a seek back sends them" in shown


def test_versions_trained_on_part_of_their_days_are_shown_for_as_long_as_it_lasts(
        panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """Tester B (32nd session): a seek near the end, then Reset; the versions stayed fitted on 3 % of the log and
    once the skipped rows were sent again nothing said so."""
    panel, fake = panel_and_fake
    panel.refresh()
    assert "Trained on part of their days" not in panel.counters.value
    fake.partly_trained = ["v0001-2024-03-04 was trained on 3,161 rows of its days, which hold 18,096 queries now "
                           "(17%)"]
    panel.refresh()
    assert ("Trained on part of their days</td><td>v0001-2024-03-04 was trained on 3,161 rows of its days"
            in panel.counters.value)
    status = fake.status()
    assert "model versions trained on part of their days: v0001-2024-03-04" in str(status)
    assert "workbench start --fresh" in str(status) and status.as_dict()["partly_trained"] == fake.partly_trained


def test_a_training_that_failed_on_every_attempt_is_shown(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    panel, fake = panel_and_fake
    days = {"2024-03-04": {"status": "done", "attempts": 1, "last_rc": 0},
            "2024-03-05": {"status": "failed", "attempts": 3, "last_rc": 1},
            "2024-03-06": {"status": "pending", "attempts": 1, "last_rc": 1}}
    fake.apps = {"scoring": {"state": "running", "info": {"training": {"days": days}}}}
    status = fake.status()
    assert status.failed_trainings == ["2024-03-05"]
    assert "training failed for good: 2024-03-05" in str(status)
    assert status.as_dict()["failed_trainings"] == ["2024-03-05"]
    # a retry on its way is named, and the hint for a stream that ended before a day's end is not given
    # (it named the wrong day, and `workbench train`, which a running workbench refuses)
    assert status.trainings_due == {"2024-03-06": "pending, 1 attempt started"}
    assert "training runs or waits for its retry: 2024-03-06 (pending, 1 attempt started)" in str(status)
    fake.apps["scoring"]["info"]["waiting_for_model"] = ["2024-03-07"]
    fake.state = "finished"

    def drained() -> WorkbenchStatus:
        return dataclasses.replace(fake.status(), lag={"scoring": 0, "analytics": 0})

    assert drained().drained and "no training is due" not in str(drained())
    days["2024-03-06"]["status"] = "done"
    assert "no training is due" in str(drained())
    fake.state = "running"
    panel.refresh()
    assert "training failed for good for 2024-03-05" in panel.counters.value
    # why the lag grows meanwhile, as the terminal says it (the panel said nothing: a browser tester's finding)
    days["2024-03-06"]["status"] = "pending"
    panel.refresh()
    assert ("Scoring</td><td>waits for the model of 2024-03-07; training 2024-03-06 (pending, 1 attempt started)"
            in panel.counters.value)
    fake.apps = {}
    panel.refresh()
    assert "<td>Scoring</td>" not in panel.counters.value and ">Scoring<" not in panel.counters.value
    assert fake.status().failed_trainings == [] and "training failed" not in str(fake.status())


def test_enter_in_the_seek_field_seeks(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """Keyboard use: typing a time and pressing Enter seeks (it did nothing; only the button did)."""
    panel, fake = panel_and_fake
    panel.seek_text.value = "2024-03-04 12:30"
    # What the front end sends on Enter (ipywidgets' text view; Widget._handle_custom_msg receives comm messages).
    panel.seek_text._handle_custom_msg({"event": "submit"}, [])
    assert fake.calls == [("seek", datetime(2024, 3, 4, 12, 30, tzinfo=UTC))]


def test_a_status_that_cannot_be_read_disables_the_controls_until_it_can(
        panel_and_fake: tuple[Any, FakeWorkbench], monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker killed: the panel kept '[running]' with every control enabled, and a click blocked the
    kernel for the 10 s a command waits for delivery."""
    panel, fake = panel_and_fake
    readable = fake.status

    def unreadable() -> WorkbenchStatus:
        raise RuntimeError("All broker connections are down")

    monkeypatch.setattr(fake, "status", unreadable)
    panel.refresh()
    assert "[status unavailable]" in panel.clock.value and "[running]" not in panel.clock.value
    assert "All broker connections are down" in panel.note.value
    controls = (panel.play, panel.speed, panel.seek_text, panel.seek_button, panel.reset_button, *panel.presets)
    assert all(w.disabled for w in controls)
    panel.presets[1].click()
    assert fake.calls == [] and "speed not sent" in panel.message.value
    monkeypatch.setattr(fake, "status", readable)  # the broker is back
    panel.refresh()
    assert "[running]" in panel.clock.value and panel.note.value == ""
    # a live panel's clock carries a heartbeat that each refresh changes (tests/test_browser.py: the browser
    # shows its note once no refresh came for a while, as after a kernel restart)
    beat = re.search(r"data-beat='(\d+)'", panel.clock.value)
    panel.refresh()
    again = re.search(r"data-beat='(\d+)'", panel.clock.value)
    assert beat and again and again.group(1) != beat.group(1)
    assert not any(w.disabled for w in controls)


def test_invalid_seek_is_reported_not_sent(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    panel, fake = panel_and_fake
    panel.seek_text.value = "yesterday noon"
    panel.seek_button.click()
    assert fake.calls == []
    assert "yesterday noon" in panel.message.value and "2024-03-05 12:00" in panel.message.value


def test_a_seek_after_the_logs_last_event_is_refused_naming_the_logs_span(
        panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """A mistyped year (2030) said "seek ... sent" and then skipped the rest of a running replay, or did
    nothing to a finished one; a time before the first event restarts from the first row and says so."""
    panel, fake = panel_and_fake
    panel.seek_text.value = "2030-01-01"
    panel.seek_button.click()
    assert fake.calls == []
    assert "not sent" in panel.message.value and "after the log&#x27;s last event" in panel.message.value
    assert "2024-03-05 00:00:00 UTC" in panel.message.value  # the fake log's last event
    panel.seek_text.value = "1999-01-01"
    panel.seek_button.click()
    assert fake.calls == [("seek", datetime(1999, 1, 1, tzinfo=UTC))]
    assert "before the log&#x27;s first event" in panel.message.value and "first row" in panel.message.value
    panel.seek_text.value = "2024-03-05 00:00"  # the last event itself is in the log
    panel.seek_button.click()
    assert fake.calls[-1] == ("seek", T0 + timedelta(days=1)) and "not sent" not in panel.message.value


def test_controls_that_can_act_keep_a_tooltip_of_their_own(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """A refresh set every enabled control's tooltip to None: the play button then showed "null" on
    hover in JupyterLab (its view writes the tooltip as the title), the others lost theirs."""
    panel, fake = panel_and_fake
    fake.no_replay = True
    panel.refresh()
    assert panel.play.tooltip.startswith("No replay yet")
    fake.no_replay = False
    panel.refresh()
    controls = (panel.play, panel.speed, panel.seek_button, panel.reset_button, *panel.presets)
    assert all(isinstance(w.tooltip, str) and w.tooltip for w in controls), [w.tooltip for w in controls]
    assert panel.play.tooltip == "Pause or resume the replay" and panel.presets[2].tooltip == "Replay at 3600x"


def test_refresh_updates_labels_without_sending_commands(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    panel, fake = panel_and_fake
    assert panel.progress.value == pytest.approx(0.25)
    assert "2024-03-04 02:00:00 UTC" in panel.clock.value
    assert panel.eta.value == "ETA 1m 15s"
    assert panel.note.value == "" and not panel.reset_button.disabled
    for text in ("scoring 7", "anomaly-sink ?", "v0002-2024-03-05", "1,234 rows/s"):
        assert text in panel.counters.value
    # 4 late events: the count says why they are late and that closed windows are not counted twice.
    assert "<td>4 (rows sent before and counted then, re-sent after a seek or reset" in panel.counters.value
    fake.state, fake.speedup, fake.next_row, fake.anomaly_count = "paused", 3600.0, 900, 42
    panel.refresh()
    assert panel.progress.value == pytest.approx(0.9)
    assert panel.play.value is False and panel.play.description == "Play"
    assert panel.speed.value == pytest.approx(3600.0) and panel.speed_label.value == "3,600x"
    assert panel.speed.readout is False  # the label gives the speed; no clamping readout field
    assert "<td>42</td>" in panel.counters.value
    assert "<svg" in panel.events_plot.value and "<svg" in panel.anomalies_plot.value
    assert fake.calls == []  # syncing widgets from the status is not a user action


def test_the_panel_fits_a_narrow_window_and_reads_in_a_dark_theme(panel_and_fake: tuple[Any, FakeWorkbench]) -> None:
    """At 800 px the slider, clock, ETA and charts were cut off; in the dark theme the counter names
    were #555 on black."""
    import ipywidgets as widgets

    panel, _ = panel_and_fake
    rows = [child for child in panel.children if isinstance(child, widgets.HBox)]
    assert len(rows) == 4 and all(row.layout.flex_flow == "row wrap" for row in rows)
    # the output area less ipywidgets' margins (with 100% the text fields' edge was cut off: test_browser)
    assert all(w.layout.max_width == "calc(100% - 4px)"
               for w in (panel.speed, panel.speed_entry, panel.progress, panel.seek_text))
    panel.refresh()
    for plot in (panel.events_plot, panel.anomalies_plot):
        assert plot.value.startswith("<svg style='max-width:100%;height:auto' ") and "viewBox" in plot.value
        # the theme's colours over the SVG's white background and black text (white blocks in the dark theme)
        assert "svg.marks > rect:first-child{fill:var(--jp-layout-color0" in plot.value
        assert "{fill:var(--jp-ui-font-color1" in plot.value
    assert "color:#555" not in panel.counters.value and "color:var(--jp-ui-font-color2, #555)" in panel.counters.value
    assert "white-space:nowrap'>Lag (messages)</td>" in panel.counters.value  # names on one line


def test_refresh_thread_runs_and_stops_with_the_workbench() -> None:
    fake = FakeWorkbench()
    panel = control_panel(fake, counter_interval=0.05, chart_interval=60, charts=False)
    try:
        assert panel.refreshing
        fake.anomaly_count = 99
        deadline = time.monotonic() + 5
        while "<td>99</td>" not in panel.counters.value and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "<td>99</td>" in panel.counters.value
        fake.running = False
        deadline = time.monotonic() + 5
        while panel.refreshing and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not panel.refreshing
    finally:
        panel.close()
    panel2 = control_panel(fake, counter_interval=0.05, charts=False)
    panel2.close()
    assert not panel2.refreshing


def test_a_workbench_stopped_from_a_terminal_is_shown_as_stopped_not_as_a_kafka_problem() -> None:
    """`workbench stop` with the panel open: its broker goes too, and the panel showed "[status
    unavailable] ... no Kafka broker answered within 8 s ... Is the workbench running?" for good."""
    fake = FakeWorkbench()
    panel = control_panel(fake, counter_interval=0.05, chart_interval=60, charts=False)
    try:
        fake.running = False

        def broker_gone() -> WorkbenchStatus:
            raise ConnectionError("no Kafka broker answered within 8 s (down or unreachable)")

        fake.status = broker_gone  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while panel.refreshing and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not panel.refreshing
        assert "[workbench stopped]" in panel.clock.value and "data-beat" not in panel.clock.value  # said; no heartbeat
        assert "not running" in panel.note.value and "workbench stop" in panel.note.value
        assert panel.message.value == ""  # said once, by the note
        shown = panel.clock.value + panel.note.value + panel.counters.value + panel.eta.value
        assert "Kafka" not in shown and "unavailable" not in shown and "ETA" not in shown
        assert all(w.disabled for w in (panel.play, panel.speed, panel.seek_button, panel.reset_button))
    finally:
        panel.close()


def test_a_panel_stopped_with_its_workbench_shows_it_stopped_not_its_last_status() -> None:
    """`stop = True` in 01's last cell stopped the panel, then the workbench: the panel stayed on
    "[finished]", every process "running" and Reset enabled, and a click did nothing."""
    from workbench.reports.notebook import stop_if_asked

    fake = FakeWorkbench()
    fake.stop = lambda: setattr(fake, "running", False)  # type: ignore[method-assign]
    panel = control_panel(fake, counter_interval=60, chart_interval=60, charts=False)
    try:
        panel.refresh(charts=False)
        assert panel.refreshing and not panel.reset_button.disabled
        assert stop_if_asked(fake, started=True, stop=True, panel=panel) == "stopped"
        assert not panel.refreshing
        assert "[workbench stopped]" in panel.clock.value and "not running" in panel.note.value
        assert all(w.disabled for w in (panel.play, panel.speed, panel.seek_button, panel.reset_button))
    finally:
        panel.close()


def test_a_lakehouse_not_created_yet_reads_none_yet_not_a_question_mark() -> None:
    fake = FakeWorkbench()
    fake.anomaly_count = None  # type: ignore[assignment]
    panel = control_panel(fake, counter_interval=60, chart_interval=60, charts=False)
    try:
        panel.refresh(charts=False)
        assert ">Anomalies</td><td>none yet</td>" in panel.counters.value and "<td>?</td>" not in panel.counters.value
        assert "(2 versions)" in panel.counters.value
    finally:
        panel.close()


def test_a_new_panel_of_the_same_workbench_stops_the_previous_ones_refresh() -> None:
    fake = FakeWorkbench()
    first = control_panel(fake, counter_interval=0.05, chart_interval=60, charts=False)
    second = control_panel(fake, counter_interval=0.05, chart_interval=60, charts=False)  # the cell re-run
    other = control_panel(FakeWorkbench(), counter_interval=0.05, chart_interval=60, charts=False)
    try:
        first._thread.join(5)
        assert not first.refreshing and "replaced" in first.note.value
        assert first.message.value == "" and first.counters.value == ""  # said once; no live-looking rates left
        assert second.refreshing and other.refreshing  # another workbench's panel is not touched
        # Its frozen view no longer steers: a click was sent and said "sent" under a stale "[running]".
        controls = (first.play, first.speed, first.seek_text, first.seek_button, first.reset_button, *first.presets)
        assert all(w.disabled for w in controls) and "[replaced]" in first.clock.value
        assert "newer panel" in first.note.value and "newer panel" in first.play.tooltip
        first.reset_button.click()
        assert ("reset", None) not in fake.calls and "not sent" in first.message.value
        first.start()  # asked to refresh again, it acts again
        assert _wait_for(lambda: not first.reset_button.disabled)
    finally:
        for panel in (first, second, other):
            panel.close()


def _from_the_front_end(panel: Any, **state: Any) -> None:
    """A state update as JupyterLab's widget manager sends it (e.g. a view created or removed)."""
    panel._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                       "buffers": []})


def _wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def test_a_panel_no_front_end_shows_stops_refreshing_and_resumes_when_displayed_again() -> None:
    """Its output cleared or its cell re-run (the kernel alive), a panel went on reading the
    status every second and drawing charts; shown again, it must refresh again."""
    fake = FakeWorkbench()
    panel = control_panel(fake, counter_interval=0.05, chart_interval=60, charts=False)
    try:
        assert panel.get_state()["_view_count"] == 0  # the front end is asked to count the views
        _from_the_front_end(panel, _view_count=1)  # displayed
        assert panel.refreshing
        _from_the_front_end(panel, _view_count=0)  # its last view removed
        assert not panel.refreshing
        assert _wait_for(lambda: not panel._thread.is_alive())
        fake.anomaly_count = 41
        time.sleep(0.3)  # six refresh intervals: nothing reads the status any more
        assert "<td>41</td>" not in panel.counters.value
        _from_the_front_end(panel, _view_count=1)  # display(panel) again, or the notebook reopened
        assert panel.refreshing
        assert _wait_for(lambda: "<td>41</td>" in panel.counters.value)
        _from_the_front_end(panel, _view_count=2)  # a second view changes nothing
        assert panel.refreshing
        panel.stop()  # stopped on purpose (or replaced by a newer panel): a new view does not resume it
        _from_the_front_end(panel, _view_count=1)
        assert not panel.refreshing
        panel.start()
        assert panel.refreshing
        panel.comm.handle_close({"content": {"data": {}}})  # the front end closed the widget
        assert not panel.refreshing and panel.comm is None
    finally:
        panel.close()


def test_parse_seek_time() -> None:
    assert parse_seek_time("2024-03-05T01:02:03+01:00") == datetime(2024, 3, 5, 0, 2, 3, tzinfo=UTC)
    with pytest.raises(ConfigurationError, match="Got '31/12' instead"):
        parse_seek_time("31/12")
    with pytest.raises(ConfigurationError, match="Type a time to seek to first"):  # it said "Got '' instead"
        parse_seek_time("  ")
    with pytest.raises(ConfigurationError, match="positive"):
        control_panel(FakeWorkbench(), counter_interval=0)


def test_controls_that_cannot_act_are_disabled_and_say_why() -> None:
    fake = FakeWorkbench()
    panel = control_panel(fake, auto_refresh=False, charts=False)
    try:
        fake.state = "finished"
        panel.refresh()
        assert panel.play.disabled and panel.speed.disabled and all(b.disabled for b in panel.presets)
        assert panel.reset_button.disabled and panel.seek_button.disabled  # today's replay stops listening
        assert panel.reset_button.button_style == ""  # not orange: it cannot act
        assert "finished" in panel.note.value and panel.eta.value == "done"
        panel.presets[0].click()  # a click that raced the refresh is refused, not sent
        assert fake.calls == [] and "not sent" in panel.message.value
        fake.replay_extra = {"finished": True}  # a replay that keeps listening after the end
        panel.refresh()
        assert not panel.reset_button.disabled and not panel.seek_button.disabled and panel.play.disabled
        assert panel.reset_button.button_style == "warning"
        assert not panel.speed.disabled and not any(b.disabled for b in panel.presets)  # the next course's pace
        panel.presets[0].click()
        panel.reset_button.click()
        assert fake.calls == [("set_speed", PRESETS[0][1]), ("reset", None)]
        fake.state, fake.replay_extra = "stopped", {}
        panel.refresh()
        assert panel.reset_button.disabled and "stopped" in panel.note.value
        fake.state, fake.running = "running", False
        panel.refresh()
        assert panel.play.disabled and "not running" in panel.note.value
    finally:
        panel.close()


def test_a_previous_runs_status_is_not_shown_as_the_new_one() -> None:
    fake = FakeWorkbench()
    fake.state = "finished"
    fake.processes = {"replay": {"state": "running", "started_at": 2000.0}}  # status updated_at=1000: before
    panel = control_panel(fake, auto_refresh=False, charts=False)
    try:
        assert panel.speed_label.value == "-" and panel.progress.value == 0.0
        assert "starting" in panel.clock.value and panel.play.disabled
        fake.processes = {"replay": {"state": "running", "started_at": 500.0}}
        fake.state = "running"
        panel.refresh()
        assert panel.speed_label.value == "600x" and not panel.play.disabled
    finally:
        panel.close()


def test_a_replay_process_the_workbench_restarts_keeps_its_place_and_says_why() -> None:
    """A replay whose log became unreadable flipped between "[failed]" and "[starting]" at 0 % every few seconds,
    without the reason the terminal gave, and advised "start a new one" while the supervisor retried it (a
    browser tester's finding)."""
    fake = FakeWorkbench()
    fake.state = "failed"
    reason = "Query log '/tmp/copy.parquet' is not a readable Parquet file"
    fake.processes = {"replay": {"state": "backoff", "restarts": 6, "started_at": 500.0, "error": reason}}
    view = panel_view(fake.status())
    assert view.state == "restarting" and view.progress > 0 and view.clock != "-"
    assert reason in view.why_disabled and "restarts it (6 restarts so far)" in view.why_disabled
    assert "start a new one" not in view.why_disabled and not view.can_play
    # restarted: the previous process's status is still the newest on record, and its error is kept
    fake.processes = {"replay": {"state": "running", "restarts": 7, "started_at": 2000.0, "exit_error": reason}}
    view = panel_view(fake.status())
    assert view.state == "restarting" and view.progress > 0 and reason in view.why_disabled
    # a replay that failed for good: said so, in English
    fake.processes = {"replay": {"state": "finished", "restarts": 0, "started_at": 500.0}}
    assert panel_view(fake.status()).why_disabled.startswith("The replay has failed; start a new one")

def test_eta_comes_from_the_measured_rate_when_behind() -> None:
    fake = FakeWorkbench()
    fake.speedup = 3600.0  # 1000 rows over a day: 41.7 rows/s needed, 1,000 rows/s sent: on schedule
    assert panel_view(fake.status()).behind == ""
    fake.replay_extra = {"rate": 5.0, "behind": True, "behind_seconds": 600.0}  # measured 5 rows/s: far behind
    view = panel_view(fake.status())
    assert view.behind.startswith("behind schedule") and view.eta == "ETA 2m 30s"  # 750 rows left / 5
    # Just after a seek or resume the recent rate still holds the pause, but the replay re-anchored
    # its schedule and says it is on time: no "behind schedule, 5 rows/s" for those seconds.
    fake.replay_extra = {"rate": 5.0, "behind": False}
    view = panel_view(fake.status())
    assert view.behind == "" and view.eta == "ETA 1m 15s"
    fake.replay_extra = {"rate": 5.0, "behind": None}  # a status without the verdict: estimated from the rate
    assert panel_view(fake.status()).behind.startswith("behind schedule")
    fake.replay_extra = {"rate": 5.0, "behind": None, "behind_s": 0.5, "eta_s": 20.0}  # its own figures win
    assert panel_view(fake.status()).eta == "ETA 20s"


def test_lag_trend_and_event_time_behind() -> None:
    assert lag_trend([]) == "" and lag_trend([(0.0, 5000)]) == ""
    assert lag_trend([(0.0, 5000), (5.0, 9000), (12.0, 20000)]) == "growing"
    assert lag_trend([(0.0, 20000), (12.0, 5000)]) == "shrinking"
    assert lag_trend([(0.0, 20000), (12.0, 20050)]) == "steady"
    # a sawtooth (batches consumed and committed) is not "shrinking" while its newest sample rises
    sawtooth = [(0.0, 1500), (2.0, 1100), (4.0, 1300), (6.0, 900), (8.0, 1200), (10.0, 1000), (12.0, 1089)]
    assert lag_trend(sawtooth) == "shrinking" and lag_trend([*sawtooth, (14.0, 1399)]) == "steady"
    assert lag_trend([(0.0, 800), (12.0, 0)]) == ""  # nothing behind: no trend (read "0 messages, shrinking")
    fake = FakeWorkbench()
    fake.lag = 140_000  # 1000 rows per day of events: 140,000 messages are ~97 days of event time
    view = panel_view(fake.status(), lag_history=[(0.0, 100_000), (11.0, 140_000)])
    assert view.lag.startswith("140,000 messages, ~") and "of event time behind" in view.lag
    assert view.lag.endswith("growing")
    # A packed replay's message carries many events: 3,340 messages of ~18 events were read as 3,340 events
    # ("~3h 57m behind" for a whole 72 h log, a browser tester's finding).
    fake.lag = 1_000
    late = T0 + timedelta(days=30)  # a clock far from the log's start: no cap (below)
    fake.state = "paused"  # no sending rate: the log's average (1,000 rows a day)
    fake.replay_extra = {"pack": 100, "rows_sent": 900, "messages_sent": 50, "event_time": late}
    assert panel_view(fake.status()).lag.startswith("1,000 messages, ~18d 00h 00m of event time behind")
    fake.replay_extra = {"pack": 100, "rows_sent": 900, "messages_sent": 0, "event_time": late}  # older: no figure
    assert panel_view(fake.status()).lag == "1,000 messages"
    fake.replay_extra = {"event_time": late}
    assert panel_view(fake.status()).lag.startswith("1,000 messages, ~1d 00h 00m of event time behind")
    # Running on course: at the rate the replay sends now (1,234 rows/s at 600x), not the log's average.
    fake.state = "running"
    expected = clock_duration(1_000 / (1_234.0 / 600.0))
    assert panel_view(fake.status()).lag.startswith(f"1,000 messages, ~{expected} of event time behind")
    # The sawtooth's mean over the last 10 s, not its newest sample (14 minutes, then 1h 15m, within seconds).
    view = panel_view(fake.status(), lag_history=[(0.0, 200), (4.0, 1_800), (8.0, 1_000)])
    assert f"~{expected} of event time behind" in view.lag
    # Never more than the event time from the log's start to the clock ("35m behind" at 00:09:50).
    fake.state = "paused"  # the log's average: a day of event time
    fake.replay_extra = {"event_time": T0 + timedelta(minutes=9, seconds=50)}
    assert "~9m 50s of event time behind" in panel_view(fake.status()).lag


def test_speeds_read_as_numbers() -> None:
    assert [format_speed(v) for v in (3600.0, 600, 100_000.0, 0.5, "max", 0)] == [
        "3,600x", "600x", "100,000x", "0.5x", "max", "max"]


def test_charts_wait_for_stores_the_workbench_is_creating() -> None:
    fake = FakeWorkbench()
    fake.stores_missing = True
    panel = control_panel(fake, auto_refresh=False)
    try:
        panel.refresh()
        assert "waiting for the first window" in panel.events_plot.value
        assert "no anomalies up to the replay clock" in panel.anomalies_plot.value
        assert "unavailable" not in panel.events_plot.value + panel.anomalies_plot.value
        fake.stores_missing = False
        panel.refresh()
        assert "<svg" in panel.events_plot.value
        # the last 12 h of event time up to the replay clock (02:00), its own window included
        assert fake.chart_filters == {"start": T0 - timedelta(hours=10),
                                      "end": T0 + timedelta(hours=2, microseconds=1)}
    finally:
        panel.close()


def _svg_texts(svg: str, role: str) -> list[str]:
    """The tick labels of an SVG chart's ``role`` ("x" or "y") axis, as a reader sees them."""
    import re

    for part in re.split(r'(?=aria-label="[XY]-axis)', svg):
        if part.startswith(f'aria-label="{role.upper()}-axis'):
            labels = part[part.find("role-axis-label"):]
            labels = labels[:min(i for i in (labels.find("role-axis-title"), labels.find("role-axis-domain"),
                                             len(labels)) if i >= 0)]
            return re.findall(r"<text[^>]*>([^<]*)</text>", labels)
    return []


def test_the_panels_anomalies_chart_shares_the_events_charts_time_axis() -> None:
    fake = FakeWorkbench()  # events in 00:00-00:50, anomalies only in 00:00-00:14
    panel = control_panel(fake, auto_refresh=False)
    try:
        panel.refresh()
        events_x = _svg_texts(panel.events_plot.value, "x")
        assert events_x and _svg_texts(panel.anomalies_plot.value, "x") == events_x
    finally:
        panel.close()


def test_stacked_count_charts_start_their_plots_at_the_same_x_whatever_their_label_widths() -> None:
    """The panel's anomalies chart sits under its events chart on the same time axis; labels "12,345"
    beside "1" moved the anomalies plot 6 px left of the events plot, so one time sat at two places."""
    starts = pd.date_range(T0, periods=60, freq="10min", tz="UTC")
    domain = (starts[0], starts[-1])
    events = charts.events_chart(pd.DataFrame({"window_start": starts, "total_queries": 12_345}), time_domain=domain)
    anomalies = charts.anomalies_chart(pd.DataFrame({"arrival_timestamp": starts[:3]}), time_domain=domain)
    lefts = [float(re.search(r"translate\(([\d.]+),", charts.to_svg(chart))[1]) for chart in (events, anomalies)]
    assert lefts[0] == lefts[1], lefts


@pytest.mark.parametrize("top", [1, 2, 3, 4, 7, 40])
def test_count_axes_never_repeat_a_tick_label(top: int) -> None:
    starts = ["2024-03-04T01:10:00Z", "2024-03-04T01:20:00Z"]
    events = pd.DataFrame({"window_start": pd.to_datetime(starts), "total_queries": [1, top]})
    anomalies = pd.DataFrame({"arrival_timestamp": pd.to_datetime([starts[0]] + [starts[1]] * top)})
    for chart in (charts.events_chart(events), charts.anomalies_chart(anomalies)):
        ticks = _svg_texts(charts.to_svg(chart), "y")
        assert ticks and len(ticks) == len(set(ticks)), ticks  # "0, 1, 1" read as a broken axis
        assert str(top) in ticks or top > 4


# -- charts -------------------------------------------------------------------------------------
def _shares() -> pd.DataFrame:
    starts = pd.date_range(T0, periods=4, freq="10min", tz="UTC")
    df = pd.DataFrame({"window_start": starts})
    for i, c in enumerate(charts.CLASS_LABELS):
        df[f"{c}_queries"] = [i + 1, 0, 2, 5]
    df["total_queries"] = df[[f"{c}_queries" for c in charts.CLASS_LABELS]].sum(axis=1)
    return df


def _anoms() -> pd.DataFrame:
    return pd.DataFrame({"arrival_timestamp": pd.date_range(T0, periods=5, freq="13min", tz="UTC"),
                         "instance_id": [1, 2, 1, 3, 2], "reason": ["slow_execution"] * 4 + [None],
                         "under_ratio": [5.0, 10.0, 0.5, 100.0, 7.0], "query_id": range(5)})


def _all_charts() -> dict[str, alt.TopLevelMixin]:
    fake = FakeWorkbench()
    return {
        "shares": charts.class_shares_chart(_shares()),
        "activity": charts.activity_chart(fake.window_stats(), _anoms()),
        "timeline": charts.anomaly_timeline(_anoms()),
        "pr": charts.pr_curve_chart({"residual": ([0.5, 1.0], [1.0, 0.2]), "baseline": ([0.1, 1.0], [1.0, 0.0])}),
        "coverage": charts.coverage_chart(pd.DataFrame({"version": ["v1", "v2"], "coverage": [0.88, 0.91]})),
        "empty": charts.events_chart(fake.window_stats().iloc[:0]),
    }


@pytest.mark.parametrize("name", list(_all_charts()))
def test_chart_is_valid_vega_lite_and_renders_offline(name: str) -> None:
    chart = _all_charts()[name]
    spec = chart.to_dict(validate=True)
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    svg = charts.to_svg(chart)
    assert svg.startswith("<svg") and ("<path" in svg or "<text" in svg)
    assert "title" in str(spec)


@pytest.mark.parametrize("name", ["shares", "activity", "timeline", "events", "anomalies"])
def test_times_in_tooltips_are_utc_as_on_the_axis(name: str) -> None:
    """Tooltips showed the browser's local time under an axis that says UTC (a tester in another zone)."""
    import json
    import re

    import vl_convert

    chart = {**_all_charts(), "events": charts.events_chart(FakeWorkbench().window_stats()),
             "anomalies": charts.anomalies_chart(_anoms())}[name]
    vega = json.dumps(vl_convert.vegalite_to_vega(chart.to_dict()))
    tooltips = re.findall(r'"tooltip": \{"signal": "(.*?)"\}', vega)
    assert tooltips and any("utcFormat(" in signal for signal in tooltips)
    assert not any("timeFormat(" in signal for signal in tooltips)


def test_class_shares_uses_the_earlier_colours_in_order_and_utc() -> None:
    spec = charts.class_shares_chart(_shares()).to_dict()
    enc = spec["encoding"]
    assert enc["color"]["scale"] == {"domain": ["CPU", "IO", "Network", "Queue/WLM", "Normal"],
                                     "range": ["#C62828", "#EF5350", "#F9A825", "#FDD835", "#2E7D32"]}
    assert enc["x"]["scale"]["type"] == "utc" and enc["x2"]["field"] == "window_end"
    values = next(iter(spec["datasets"].values()))
    assert values[0]["window_start"].endswith("Z")
    # each window's bands stack to 100 %, bottom to top in the earlier dashboard's order
    for start in {v["window_start"] for v in values}:
        bands = sorted((v for v in values if v["window_start"] == start), key=lambda v: v["bottom"])
        assert [b["class"] for b in bands] == list(charts.CLASS_COLORS)
        assert bands[0]["bottom"] == 0 and bands[-1]["top"] == pytest.approx(1.0)
        assert all(a["top"] == pytest.approx(b["bottom"]) for a, b in itertools.pairwise(bands))


def test_class_shares_leave_hours_without_windows_empty() -> None:
    """Notebook 04's step area held the last window's shares over a 10-hour gap: a flat block over
    time in which no query was seen."""
    shares = _shares()
    shares["window_start"] = [T0 + timedelta(minutes=m) for m in (0, 10, 600, 610)]
    values = next(iter(charts.class_shares_chart(shares).to_dict()["datasets"].values()))
    drawn = sorted({(v["window_start"], v["window_end"]) for v in values})
    # the second window has no queries: nothing to share out, so nothing drawn there either
    assert drawn == [("2024-03-04T00:00:00Z", "2024-03-04T00:10:00Z"), ("2024-03-04T10:00:00Z", "2024-03-04T10:10:00Z"),
                     ("2024-03-04T10:10:00Z", "2024-03-04T10:20:00Z")]
    assert "<svg" in charts.to_svg(charts.class_shares_chart(shares))


def test_anomalies_per_window_bins_by_ten_minutes() -> None:
    per = charts.anomalies_per_window(_anoms())
    assert per["anomalies"].tolist() == [1, 1, 1, 1, 1]
    assert per["window_start"].iloc[1] == pd.Timestamp("2024-03-04 00:10", tz="UTC")


def test_metric_cards_format_and_colour() -> None:
    html = charts.metric_cards_html({"score": 0.95, "score_delta": -0.01, "spilled_mb": 2048, "spilled_mb_delta": None,
                                     "queue_time_ms": 90_000, "queue_time_ms_delta": -1000, "queue_ratio": 0.4,
                                     "queue_ratio_delta": 0.0, "anomalies": 12, "anomalies_delta": 2})
    assert "95.0 %" in html and "2.0 GB" in html and "1.5 min" in html and "no previous data" in html
    # score down is bad; a change of a share is in points (a relative "-1.0 %" would say 95 -> 94.05)
    assert "#C62828;font-size:12px'>▼ -1.0 pts vs previous" in html
    assert "#666;font-size:12px'>■ no change vs previous" in html  # the queue ratio did not move
    assert "#2E7D32;font-size:12px'>▼ -1.0 s" in html  # queue time down is good
    # a change that rounds to nothing at the shown precision is no change: it read a red "▼ -0.0 pts" (40th session)
    tiny = charts.metric_cards_html({"score": 0.945, "score_delta": -0.0004})
    assert "#666;font-size:12px'>■ no change vs previous" in tiny and "-0.0" not in tiny
    table = charts.metrics_table({"24h": {"score": 0.945, "score_delta": -0.0004}})
    assert table.loc["24h", "Score (% normal)"] == "94.5 % (no change)"
    assert metric_cards({"score": 1.0}).value.count("n/a") == 4


def test_a_timeline_of_more_anomalies_than_altair_embeds_draws_the_strongest() -> None:
    n = charts.TIMELINE_MAX_POINTS + 1_500
    many = pd.DataFrame({"arrival_timestamp": pd.date_range(T0, periods=n, freq="1min", tz="UTC"),
                         "instance_id": np.arange(n) % 7, "reason": "slow_execution",
                         "under_ratio": np.arange(n, dtype=float) + 1.0, "query_id": range(n)})
    chart = charts.anomaly_timeline(many)
    spec = chart.to_dict(validate=True)  # over 5,000 rows this raises MaxRowsError
    drawn = next(iter(spec["datasets"].values()))
    assert len(drawn) == charts.TIMELINE_MAX_POINTS
    assert min(row["under_ratio"] for row in drawn) == n - charts.TIMELINE_MAX_POINTS + 1
    assert f"of {n:,}" in str(spec["title"])
    assert charts.to_svg(chart).startswith("<svg")


def test_a_status_in_a_notebook_cell_reads_as_numbers_not_raw_floats_and_bytes() -> None:
    """Notebook 01's status cell showed rate_now 37.17738630666017, eta_seconds 396.3184604483333
    and disk as a dict of bytes."""
    fake = FakeWorkbench()
    fake.replay_extra = {"rate_now": 37.17738630666017, "eta_seconds": 396.3184604483333}
    status = fake.status()
    object.__setattr__(status, "disk", {"kafka": 2_166_784, "shards": 1_589_248})
    object.__setattr__(status, "trainer_pid", 10_018)
    table = status._repr_html_()
    assert ">10018<" in table and "10,018" not in table  # a pid is a name, not a count
    assert "37.2 rows/s" in table and "37.177" not in table and "396 s" in table and "396.318" not in table
    assert "kafka 2.1 MB" in table and "2166784" not in table
    assert "2024-03-04 02:00:00 UTC" in table and "600x" in table and "1,000" in table  # event time, speed, rows total
    assert "scoring 7" in table
    # named as the panel names them, not in snake_case (`rows_sent` beside the panel's "Log position"; 40th session)
    assert ">log position (rows)<" in table and ">rate now<" in table and "rows_sent" not in table and "_" not in \
        "".join(re.findall(r"<th[^>]*>([^<]*)</th>", table))


def test_a_slow_replay_speed_in_the_status_table_reads_as_the_panel_shows_it() -> None:
    fake = FakeWorkbench()
    fake.speedup = 0.5  # the status table had its own rule, which printed "0x"
    table = fake.status()._repr_html_()
    assert f"<td style='text-align:left'>{format_speed(0.5)}</td>" in table and format_speed(0.5) == "0.5x"


def test_a_seek_or_reset_redraws_the_charts_at_once_not_at_the_next_scheduled_redraw() -> None:
    """The charts follow the replay clock every 8 s; a jump out of their span (back, or more than the
    span ahead) redraws them at the next status read, so a seek never leaves another part of the log
    on screen under the new clock."""
    fake = FakeWorkbench()
    panel = control_panel(fake, auto_refresh=False)
    try:
        tick = timedelta(microseconds=1)  # up to the clock's own window: the reads take window_start < end
        panel.refresh(charts=True)
        assert fake.chart_filters["end"] == T0 + timedelta(hours=2) + tick
        fake.replay_extra = {"event_time": T0 + timedelta(hours=3)}  # the clock going on: no redraw
        panel.refresh(charts=False)
        assert fake.chart_filters["end"] == T0 + timedelta(hours=2) + tick
        fake.replay_extra = {"event_time": T0 + timedelta(minutes=30)}  # seek back, or reset
        panel.refresh(charts=False)
        assert fake.chart_filters["end"] == T0 + timedelta(minutes=30) + tick
        fake.replay_extra = {"event_time": T0 + timedelta(hours=20)}  # seek far ahead
        panel.refresh(charts=False)
        assert fake.chart_filters["end"] == T0 + timedelta(hours=20) + tick
    finally:
        panel.close()


def test_a_command_is_shown_by_quick_follow_up_refreshes_not_the_next_interval() -> None:
    """The refresh a click wakes reads the status from before the replay applied the command; the
    next one came a counter interval later (a second), and a pause showed late."""
    fake = FakeWorkbench()
    applied_after = {"reads": None}
    status = fake.status

    def later_status() -> WorkbenchStatus:
        if applied_after["reads"] is not None:
            applied_after["reads"] -= 1
            if applied_after["reads"] == 0:
                fake.state = "paused"  # the replay applies the pause between two reads
        return status()

    fake.status = later_status  # type: ignore[method-assign]
    panel = control_panel(fake, counter_interval=60, chart_interval=60, charts=False)
    try:
        assert _wait_for(lambda: "[running]" in panel.clock.value)
        applied_after["reads"] = 2
        panel.play.value = False
        assert _wait_for(lambda: "[paused]" in panel.clock.value, timeout=10.0), panel.clock.value
        assert fake.calls == [("pause", None)]
    finally:
        panel.close()


def test_the_metrics_table_reads_like_the_cards_not_raw_floats() -> None:
    """Notebook 04's table under the cards read `24h 7.0 -1.0 45965.0 -7315.0 ... 0.936169 -0.006305 9463831.0`."""
    day = {"instances": 13, "instances_delta": -1, "total_queries": 390_311, "total_queries_delta": -109_257,
           "cluster_size": 4, "cluster_size_delta": 0, "score": 0.9303, "score_delta": -0.0007,
           "spilled_mb": 2048, "spilled_mb_delta": None, "queue_time_ms": 90_000, "queue_time_ms_delta": 12_000,
           "queue_ratio": 0.159, "queue_ratio_delta": -0.022, "anomalies": 1023, "anomalies_delta": -390}
    table = charts.metrics_table({"24h": day, "1week": {"instances": 16, "score": None}})
    row = table.loc["24h"]
    assert row["Queries"] == "390,311 (-109,257)" and row["Cluster size (nodes)"] == "4 (no change)"
    assert row["Score (% normal)"] == "93.0 % (-0.1 pts)" and row["Queue ratio"] == "15.9 % (-2.2 pts)"
    assert row["Spillage"] == "2.0 GB" and row["Queue time"] == "1.5 min (+12.0 s)"
    assert row["Anomaly queries"] == "1,023 (-390)"
    assert table.loc["1week", "Instances"] == "16" and table.loc["1week", "Score (% normal)"] == "n/a"
    assert not any("e+" in v or "e-" in v for v in table.to_numpy().ravel())


def test_readable_tables_show_units_separators_and_whole_versions() -> None:
    """02's worst queries read `true_ms 438296.0`, 04's classification `229519`, timestamps with
    microseconds and +00:00 wrapped onto two lines and versions broke as `v0001-2024-03-` / `04`."""
    from workbench.analysis import anomaly_summary as summary
    from workbench.reports.notebook import table_or_note
    from workbench.ui import tables

    anomalies = pd.DataFrame({
        "arrival_timestamp": pd.to_datetime(["2024-03-05 10:49:15.437784", "2024-03-05 11:00:00.000000"], utc=True),
        "instance_id": [1047, 3], "query_id": [1_000_000_000_007, 12], "reason": ["slow_execution", "long_queue"],
        "true_ms": [438_296.0, 2_500.0], "pred_ms": [5_020.4, 900.0], "under_ratio": [87.3, 2.8],
        "model_version": ["v0001-2024-03-04", "v0002-2024-03-05"]})
    html = tables.readable(summary.worst_queries(anomalies, 2)).to_html()
    for text in ("2024-03-05 10:49:15<", "7.3 min", "5.0 s", "87.3x", ">1047<", ">1000000000007<",
                 "white-space: nowrap"):
        assert text in html, text
    assert "438296" not in html and "+00:00" not in html and ".437784" not in html
    counts = tables.readable(pd.DataFrame({"queries": [229_519, 12]}, index=["total", "Anomalies"])).to_html()
    assert "229,519" in counts
    empty = summary.worst_queries(anomalies.iloc[:0], 2)
    assert tables.readable(empty) is empty  # nothing to style: the note shows instead
    assert "nothing" in str(table_or_note(tables.readable(empty), "nothing here").data)
    assert table_or_note(tables.readable(summary.worst_queries(anomalies, 2)), "nothing here").data is not None


def test_the_model_and_critical_instance_tables_read_rates_and_shares_in_their_units() -> None:
    """03 read `holdout alert rate 0.000`, `alerts per 10k 85.1937`, `q90 coverage 0.8682`, `rows 19485`;
    04's critical instances `cpu_bound_share 0.009` and `critical_types [network_bound]`."""
    from workbench.analysis import detection_summary as ds
    from workbench.ui import tables

    evaluation = ds.evaluation_table({"v0002": {"rows": 19485, "anomalies": 82, "alerts": 166, "PR-AUC": 0.24591,
                                                "alerts per 10k": 85.1937, "q90 coverage": 0.8682,
                                                "recall[queue_storm]": 0.8}})
    html = tables.readable(evaluation).to_html()
    for text in (">19,485<", ">0.246<", ">85.2<", ">86.8 %<", ">0.800<"):
        assert text in html, text
    assert "th {\n  white-space: nowrap;" in html  # version names on one line (they broke down three; 40th session)
    metadata = pd.DataFrame({"holdout q90 coverage": [0.905], "holdout alert rate": [0.0022], "trained rows": [469]})
    html = tables.readable(metadata).to_html()
    assert ">90.5 %<" in html and ">22.0 per 10k<" in html and ">469<" in html
    critical = pd.DataFrame({"instance_id": [18], "total_queries": [4031], "cpu_bound_share": [0.0093],
                             "critical_types": [["cpu_bound", "network_bound"]]})
    html = tables.readable(critical).to_html()
    assert ">4,031<" in html and ">0.9 %<" in html and ">cpu_bound, network_bound<" in html and "[" not in html


def test_the_drill_downs_evidence_reads_each_value_in_its_unit() -> None:
    """A browser tester read `exec_ratio 2639.074172` and `mbytes_spilled 19931` in 02's drill-down."""
    from workbench.analysis import anomaly_summary as summary
    from workbench.ui import tables

    features = {"feature_fingerprint": "0005a0298d53", "num_joins": 1, "read_table_ids": "6865926,6865383",
                "was_cached": False, "mbytes_scanned": 0, "mbytes_spilled": 19_931, "exec_ratio": 2639.074172,
                "kafka_offset": 14_094, "queue_duration_ms": 0, "compile_duration_ms": 6_600.0,
                "threshold": 1.0, "evidence_signal": "exec", "evidence_unit": "ms", "expected_value": 59.6,
                "observed_value": 25_900.0, "excess_value": 25_840.4, "reference": "model+fingerprint history"}
    row = pd.Series({"features": json.dumps(features)})
    shown = tables.readable(summary.query_features(row)).data["feature"]
    assert shown["exec_ratio"] == "2,639.1x"
    assert shown["mbytes_spilled"] == "19.9 GB" and shown["mbytes_scanned"] == "0 MB"
    assert shown["compile_duration_ms"] == "6.6 s" and shown["queue_duration_ms"] == "0 ms"
    assert (shown["expected_value"], shown["observed_value"]) == ("59.6 ms", "25.9 s")  # in evidence_unit
    assert shown["kafka_offset"] == "14094" and shown["read_table_ids"] == "6865926,6865383"  # names, not sums
    assert shown["threshold"] == "1" and shown["was_cached"] == "False" and shown["num_joins"] == "1"
    features.update(evidence_unit="MB", expected_value=0.0, observed_value=19_931.0)
    shown = tables.readable(summary.query_features(pd.Series({"features": json.dumps(features)}))).data["feature"]
    assert (shown["expected_value"], shown["observed_value"]) == ("0 MB", "19.9 GB")
    assert "evidence_unit" not in shown  # "evidence_unit MB" beside "19.9 GB" read as a contradiction
    bare = tables.readable(summary.query_features(pd.Series({"features": None}))).data["feature"]
    assert bare["evidence"] == summary.NO_EVIDENCE


def test_a_commands_confirmation_goes_once_the_replay_ends_and_late_events_read_none_yet() -> None:
    """'resume sent' stayed under a finished replay; 'Late events ?' showed before the first window."""
    fake = FakeWorkbench()
    panel = control_panel(fake, auto_refresh=False, charts=False)
    try:
        panel.refresh()
        panel.play.value = False
        assert "pause sent" in panel.message.value
        panel.refresh()
        assert "pause sent" in panel.message.value  # still the state it was sent in
        fake.state, fake.replay_extra = "finished", {"finished": True}
        panel.refresh()
        assert panel.message.value == ""
        panel.presets[0].click()  # a speed for the next course, sent to the finished replay
        panel.refresh()
        assert "sent" in panel.message.value  # said in this state: it stays
        original = fake.status

        def no_store_yet() -> WorkbenchStatus:
            status = original()
            object.__setattr__(status, "late_events", None)
            return status

        fake.status = no_store_yet  # type: ignore[method-assign]
        panel.refresh()
        assert ">Late events</td><td>none yet</td>" in panel.counters.value
    finally:
        panel.close()


def test_after_a_seek_back_the_events_chart_shows_no_window_past_the_clock() -> None:
    """After a seek back the events chart showed the next window, full from the earlier pass, beside the
    clock's own: the read went to the clock plus ten minutes."""
    from workbench.analysis import read

    fake = FakeWorkbench()
    frames: list[pd.DataFrame] = []
    starts = pd.date_range(T0, periods=24, freq="10min", tz="UTC")  # 4 h stored by an earlier pass
    stored = pd.DataFrame({"window_start": starts, "instance_id": 1, "total_queries": 10})

    def window_stats(**filters: Any) -> pd.DataFrame:
        keep = (stored["window_start"] >= filters["start"]) & (stored["window_start"] < filters["end"])
        frames.append(stored[keep])
        return stored[keep]

    fake.window_stats = window_stats  # type: ignore[method-assign]
    fake.replay_extra = {"event_time": T0 + timedelta(hours=1, minutes=3)}  # seeked back to 01:03
    panel = control_panel(fake, auto_refresh=False)
    try:
        panel.refresh(charts=True)
        assert frames[-1]["window_start"].max() == T0 + timedelta(hours=1)
        assert read.window_stats.__doc__ and "window_start < end" in read.window_stats.__doc__
    finally:
        panel.close()


def test_a_confirmation_goes_after_a_while_a_refusal_stays_and_the_play_button_is_coloured_when_it_acts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """'reset sent' stayed under a replay running for minutes after it; the play toggle's grey looked the
    same enabled and disabled."""
    now = [100.0]
    monkeypatch.setattr("workbench.ui._panel._clock", lambda: now[0])
    fake = FakeWorkbench()
    panel = control_panel(fake, auto_refresh=False, charts=False)
    try:
        panel.refresh()
        assert panel.play.button_style == "info" and not panel.play.disabled
        panel.reset_button.click()
        now[0] += 5
        panel.refresh()
        assert "reset sent" in panel.message.value
        now[0] += 6
        panel.refresh()
        assert panel.message.value == ""
        panel.seek_text.value = "yesterday-ish"
        panel.seek_button.click()
        now[0] += 60
        panel.refresh()
        assert "yesterday-ish" in panel.message.value  # a refusal stays until the next action
        fake.running = False
        fake.state = "stopped"
        panel.refresh()
        assert panel.play.disabled and panel.play.button_style == ""
    finally:
        panel.close()


def test_right_after_a_command_the_rate_reads_as_being_measured_not_zero() -> None:
    fake = FakeWorkbench()
    fake.replay_extra = {"rate_now": 0.0}
    panel = control_panel(fake, auto_refresh=False, charts=False)
    try:
        panel.refresh()
        assert "measuring the rate, 1,000 avg" in panel.counters.value
        assert "0 rows/s now" not in panel.counters.value
    finally:
        panel.close()


def test_readable_tables_round_other_numbers_and_separate_thousands_in_mixed_columns() -> None:
    """Scores read 1.400000, shares 93.730000 and 02's agreement 'queries in span 229519'."""
    from workbench.ui import tables

    html = tables.readable(pd.DataFrame({"score": [1.4, 0.7791], "share %": [93.73, 6.27]})).to_html()
    assert "1.400<" in html and "0.779<" in html and "000000" not in html
    assert "93.73<" in html and "93.730" not in html  # a share in % to the hundredth, as computed
    mixed = pd.DataFrame({"value": {"labelled log": "log.parquet", "queries in span": 229_519, "recall": 0.957}})
    html = tables.readable(mixed).to_html()
    assert "229,519" in html and "0.957" in html and "log.parquet" in html


def test_two_versions_with_the_same_precision_recall_curve_both_show() -> None:
    """A browser tester (40th session): v0001's curve lay under v0002's, and the legend named a line no one saw."""
    same = ([1.0, 0.8, 0.5], [0.0, 0.5, 1.0])
    spec = charts.pr_curve_chart({"v0001": same, "v0002": same}).to_dict(validate=True)
    assert spec["encoding"]["strokeDash"]["field"] == "detector" and spec["mark"]["opacity"] < 1


def test_the_eta_of_the_old_course_is_not_shown_under_a_command_the_replay_has_not_taken(
        panel_and_fake: tuple[Any, FakeWorkbench], monkeypatch: pytest.MonkeyPatch) -> None:
    """After clicks on 60x, max and 600x and a seek, one refresh read "600x ... ETA 1h 05m 34s": the
    60x course's ETA under the new speed, before the replay had taken the commands."""
    panel, fake = panel_and_fake
    fake.replay_extra = {"applied_command_at": 0.0}
    panel.refresh()
    assert panel.eta.value == "ETA 1m 15s"
    panel.presets[1].click()  # 600x
    panel.seek_text.value = "2024-03-04 06:00"
    panel.seek_button.click()
    panel.refresh()  # a status from before the replay took them: its ETA is the old course's
    assert panel.eta.value == "ETA …"
    fake.replay_extra = {"applied_command_at": time.time() - 3600}  # an older command taken: still on its way
    panel.refresh()
    assert panel.eta.value == "ETA …"
    fake.replay_extra = {"applied_command_at": time.time(), "eta_seconds": 20.0}  # taken: the new course's ETA
    panel.refresh()
    assert panel.eta.value == "ETA 20s"
    monkeypatch.setattr("workbench.ui._panel._COMMAND_GRACE", 0.0)
    panel.presets[0].click()  # a command the replay never takes: after the grace the status's ETA again
    time.sleep(0.01)
    panel.refresh()
    assert panel.eta.value == "ETA 20s"
    fake.state = "paused"
    panel.refresh()
    assert panel.eta.value == "ETA paused"


def test_a_clock_ahead_of_the_analytics_app_keeps_its_latest_windows_not_a_placeholder() -> None:
    """At max a log ends within seconds: the events chart read "waiting for the first window" for ~10 s
    after it had shown windows, until the analytics app caught up with the clock at the log's end."""
    fake = FakeWorkbench()
    starts = pd.date_range(T0, periods=24, freq="10min", tz="UTC")  # the analytics app has reached 03:50
    stored = pd.DataFrame({"window_start": starts, "instance_id": 1, "total_queries": 10})
    reads: list[dict[str, Any]] = []

    def window_stats(**filters: Any) -> pd.DataFrame:
        reads.append(filters)
        keep = stored["window_start"] < filters["end"]
        if filters["start"] is not None:
            keep &= stored["window_start"] >= filters["start"]
        return stored[keep].reset_index(drop=True)

    fake.window_stats = window_stats  # type: ignore[method-assign]
    panel = control_panel(fake, auto_refresh=False)
    try:
        panel.refresh(charts=True)  # clock 02:00: its windows
        assert "<svg" in panel.events_plot.value
        fake.replay_extra = {"event_time": T0 + timedelta(hours=23, minutes=59), "state": "finished"}
        panel.refresh(charts=True)  # the clock at the log's end, the analytics app at 03:50
        assert "<svg" in panel.events_plot.value and "waiting" not in panel.events_plot.value
        assert "the analytics app is at 2024-03-04 04:00 UTC" in html.unescape(panel.events_plot.value)
        fake.replay_extra = {"event_time": T0 - timedelta(hours=1)}  # back before every window: nothing to show
        panel.refresh(charts=True)
        assert "waiting for the first window" in panel.events_plot.value
        fake.replay_extra = {"event_time": T0 + timedelta(hours=23)}  # forward again, but nothing drawn since
        panel.refresh(charts=True)
        assert "waiting for the first window" in panel.events_plot.value
    finally:
        panel.close()


def test_readable_tables_hide_row_positions_but_keep_a_named_index() -> None:
    """03's "Versions side by side" showed a raw 0, 1, 2 as its first column; an index that names
    something (an instance id) stays."""
    from workbench.analysis.anomaly_summary import versions_side_by_side
    from workbench.ui import tables

    stored = pd.DataFrame({"arrival_timestamp": pd.to_datetime(["2024-03-05 01:00", "2024-03-06 01:00"], utc=True),
                           "model_version": ["v1", "v2"], "instance_id": [1, 2], "query_id": [5, 6]})
    side = tables.readable(versions_side_by_side(stored, ["v1", "v2"])).to_html()
    assert "row_heading" not in side and "2024-03-05" in side
    picked = pd.DataFrame({"query_id": [7, 8]}, index=[41, 97])  # a selection's leftover positions
    assert "row_heading" not in tables.readable(picked).to_html()
    named = pd.DataFrame({"anomalies": [3]}, index=pd.Index([86], name="instance_id"))
    assert "row_heading" in tables.readable(named).to_html()


def test_notebook_charts_render_live_in_jupyterlab_and_as_svg_elsewhere() -> None:
    """Static SVG was a white block in JupyterLab's dark theme: the chart goes as the Vega-Lite JupyterLab
    draws in its theme (in SVG, with its export menu only) and as SVG for papermill and HTML reports."""
    from workbench.reports.notebook import setup_charts

    before = alt.renderers.active
    setup_charts()
    try:
        assert alt.renderers.active == "workbench"
        renderer = alt.renderers.get()
        chart = charts.events_chart(FakeWorkbench().window_stats())
        mimebundle = chart._repr_mimebundle_()
    finally:
        alt.renderers.enable(before)
    bundle, metadata = renderer(chart.to_dict())
    assert bundle[charts.LIVE_MIME] == chart.to_dict()
    assert bundle["image/svg+xml"].startswith("<svg") and "Events per 10 minutes" in bundle["image/svg+xml"]
    options = metadata[charts.LIVE_MIME]["embed_options"]
    assert options["renderer"] == "svg" and options["actions"] == {"export": True, "source": False,
                                                                  "compiled": False, "editor": False}
    assert options["downloadFileName"] == "events-per-10-minutes"  # every export was "visualization.svg"
    assert renderer(charts.activity_chart(FakeWorkbench().window_stats(), _anoms()).to_dict())[1][
        charts.LIVE_MIME]["embed_options"]["downloadFileName"] == "events-per-10-minutes"
    # JupyterLab 4's Vega extension draws this MIME type (v3 to v5; Altair 6 writes v6, which it does not)
    assert charts.LIVE_MIME == "application/vnd.vegalite.v5+json"
    assert charts.LIVE_MIME in (mimebundle[0] if isinstance(mimebundle, tuple) else mimebundle)


def test_charts_with_a_legend_put_it_under_the_plot_to_stay_as_wide_as_the_others() -> None:
    """The class shares and the timeline with their legends at the right were 150-250 px wider than the other
    charts, and wider than a notebook's output area beside the file browser (cut off at the legend)."""
    for name in ("shares", "timeline"):
        spec = _all_charts()[name].to_dict()
        legends = [v["legend"] for v in spec["encoding"].values() if isinstance(v, dict) and "legend" in v]
        assert legends and all(legend["orient"] == "bottom" for legend in legends), (name, legends)
        width = int(re.search(r'width="(\d+)"', charts.to_svg(_all_charts()[name])).group(1))
        assert width <= 720, (name, width)


def test_a_single_window_is_a_bar_at_the_start_of_an_hour_long_axis_not_across_it() -> None:
    """Right after a seek back to the log's start the events chart showed one bar across a 10-minute axis with a
    tick every minute."""
    fake = FakeWorkbench()
    fake.window_stats = lambda **filters: pd.DataFrame(  # type: ignore[method-assign]
        {"window_start": [T0], "instance_id": 1, "total_queries": 40})
    fake.replay_extra = {"event_time": T0 + timedelta(minutes=3)}
    panel = control_panel(fake, auto_refresh=False)
    try:
        panel.refresh(charts=True)
        ticks = _svg_texts(panel.events_plot.value, "x")
        assert "Mar 04 00:00" in ticks and "Mar 04 01:00" in ticks and "Mar 04 00:01" not in ticks, ticks
    finally:
        panel.close()


def test_a_timeline_of_many_reasons_stays_as_wide_as_the_other_charts() -> None:
    """With eight reasons the legend under the plot ran in one row and the timeline was 1,096 px wide (its
    export menu and the size legend off-screen); its sizes were near-black circles on the dark background."""
    from workbench.ml.detector import ALERT_REASONS

    reasons = sorted(ALERT_REASONS)[:8]
    anomalies = pd.DataFrame({"arrival_timestamp": pd.date_range(T0, periods=len(reasons), freq="13min", tz="UTC"),
                              "instance_id": 1, "reason": reasons, "under_ratio": 10.0,
                              "query_id": range(len(reasons))})
    chart = charts.anomaly_timeline(anomalies)
    width = int(re.search(r'width="(\d+)"', charts.to_svg(chart)).group(1))
    assert width <= 720, width
    size_legend = chart.to_dict()["encoding"]["size"]["legend"]
    assert size_legend["symbolFillColor"] == size_legend["symbolStrokeColor"] == "#9E9E9E"


def test_tooltips_name_things_as_a_reader_does_and_every_chart_has_them() -> None:
    """Tooltips read "window_start (UTC)", "instance_id", "ms: 26,577.0"; the PR curves and the coverage bars
    had none."""
    specs = {name: json.dumps(chart.to_dict()) for name, chart in _all_charts().items() if name != "empty"}
    specs["comparison"] = json.dumps(charts.runtime_comparison_chart({"actual": 26_577.0, "predicted mean": 300.0})
                                     .to_dict())
    for name, spec in specs.items():
        assert '"tooltip"' in spec, name
        for raw in ('"title": "window_start (UTC)"', '"title": "arrival_timestamp (UTC)"', '"title": "ms"'):
            assert raw not in spec, (name, raw)
    assert '"title": "window (UTC)"' in specs["shares"] and '"field": "share"' in specs["shares"]
    assert '"title": "instance"' in specs["timeline"] and '"title": "arrival (UTC)"' in specs["timeline"]
    assert '"26.6 s"' in specs["comparison"]


def test_precision_recall_steps_hold_each_points_precision_from_the_recall_before_it() -> None:
    """Average precision (the PR-AUC beside the chart) counts a point's precision from the recall before it;
    step-after drew the baseline flat at precision 0.3 up to recall 1 under a PR-AUC of 0.05."""
    spec = charts.pr_curve_chart({"baseline": ([0.002, 0.3, 1.0], [1.0, 0.14, 0.0])}).to_dict()
    assert spec["mark"]["interpolate"] == "step-before"


def test_readable_tables_read_long_text_from_the_left_in_a_column_wide_enough_for_a_sentence() -> None:
    """02's flagged windows: a reason of two lines' worth was right-aligned in a 130 px column, 12 lines a row."""
    from workbench.ui import tables

    frame = pd.DataFrame({"instance_id": [7], "reason": ["observed 41 % vs expected <0.1 % " * 4]})
    shown = tables.readable(frame).to_html()
    assert "text-align: left" in shown and "min-width: 24em" in shown


def test_a_window_s_bar_spans_its_ten_minutes_from_zero() -> None:
    """Over the panel's 12 hours each window was a sliver a pixel or two wide."""
    starts = pd.date_range(T0, periods=72, freq="10min", tz="UTC")
    stats = pd.DataFrame({"window_start": starts, "instance_id": 1, "total_queries": 100})
    anomalies = pd.DataFrame({"arrival_timestamp": starts[::6] + pd.Timedelta(minutes=3)})
    for chart in (charts.events_chart(stats), charts.anomalies_chart(anomalies, time_domain=(starts[0], starts[-1]))):
        svg = charts.to_svg(chart)
        bars = re.findall(r'aria-roledescription="bar" d="M[-\d.]+,[-\d.]+h([\d.]+)v([\d.]+)h', svg)
        assert bars and all(float(w) >= 8 and float(h) > 0 for w, h in bars), bars[:3]  # 640 px / 72 windows
