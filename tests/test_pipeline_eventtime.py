"""The event-time guard: implausible times are rejected, a jump the stream confirms is followed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from workbench.config import Settings
from workbench.data.codec import MessageDecodeError
from workbench.pipeline._eventtime import MEDIAN_MIN_MESSAGES, REANCHOR_AFTER, EventTimeGuard

DAY = 86_400_000_000
T0 = (datetime(2024, 3, 4, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _guard(tmp_path) -> EventTimeGuard:
    return EventTimeGuard.from_settings(Settings(home=tmp_path))


def test_bounds_and_horizon(tmp_path) -> None:
    guard = _guard(tmp_path)
    guard.check(T0, T0)
    guard.check(T0 + 6 * DAY, T0 + 6 * DAY)  # a real gap of 6 days
    for when in (T0 + 14 * DAY, T0 - 30 * 365 * DAY, T0 + 80 * 365 * DAY):
        with pytest.raises(MessageDecodeError) as info:
            guard.check(when, when)
        assert info.value.reason == "event_time_out_of_range"
    assert guard.watermark_us == T0 + 6 * DAY  # nothing rejected moved it
    guard.check(T0 - 20 * DAY, T0 - 20 * DAY)  # behind: accepted (late events, replay reset), no move
    assert guard.watermark_us == T0 + 6 * DAY


def test_a_confirmed_jump_reanchors_but_interleaved_poison_never_does(tmp_path) -> None:
    guard = _guard(tmp_path)
    guard.check(T0, T0)
    for i in range(3 * REANCHOR_AFTER):  # poison between real events: never a run
        with pytest.raises(MessageDecodeError):
            guard.check(T0 + 400 * DAY, T0 + 400 * DAY)
        guard.check(T0 + i, T0 + i)
    assert guard.watermark_us < T0 + DAY
    jump = T0 + 60 * DAY  # the replay was sought two months ahead
    for i in range(REANCHOR_AFTER - 1):
        with pytest.raises(MessageDecodeError):
            guard.check(jump + i, jump + i)
    guard.check(jump + REANCHOR_AFTER, jump + REANCHOR_AFTER)  # the 64th confirms the jump
    assert guard.watermark_us == jump + REANCHOR_AFTER
    guard.check(jump + 10 * REANCHOR_AFTER, jump + 10 * REANCHOR_AFTER)


def test_batch_reference_is_a_median_one_message_cannot_move(tmp_path) -> None:
    guard = _guard(tmp_path)
    times = np.array([T0 + i for i in range(10)] + [T0 + 4000 * DAY])
    assert guard.batch_reference(times, 11) == T0 + 5  # no watermark yet: the median
    guard.advance(T0)
    far = np.array([T0 + 60 * DAY + i for i in range(40)])
    assert guard.batch_reference(far, MEDIAN_MIN_MESSAGES) == int(np.median(far))  # the stream moved
    assert guard.batch_reference(far[:1], 1) == T0  # one message alone cannot


@pytest.mark.parametrize("seed", range(8))
def test_check_many_decides_like_check_one_by_one(tmp_path, seed: int) -> None:
    """The vectorised path and the per-message path reject the same messages and end at the same watermark."""
    rng = np.random.default_rng(seed)
    n = 300
    times = T0 + np.cumsum(rng.integers(0, 60_000_000, n))
    poison = rng.random(n) < (0.05 if seed % 3 else 0.004)  # rare poison: most batches take the vectorised path
    times[poison] += rng.choice([400 * DAY, -2 * 365 * DAY, 90 * 365 * DAY], int(poison.sum()))
    if seed % 2:  # a confirmed jump: a long run ahead of the horizon
        times[200:] += 30 * DAY
    spans = rng.integers(0, 5_000_000, n)
    lo, hi = times, times + spans
    one, many = _guard(tmp_path), _guard(tmp_path)
    if seed % 4 < 2:  # with and without a watermark at the start
        one.check(T0, T0)
        many.check(T0, T0)
    expected = []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        try:
            one.check(a, b)
            expected.append(None)
        except MessageDecodeError as exc:
            expected.append(str(exc))
    got = []
    for start in range(0, n, 64):  # in batches, as the analytics app calls it
        got.extend(many.check_many(lo[start:start + 64], hi[start:start + 64]))
    assert got == expected
    assert many.watermark_us == one.watermark_us
