"""The scoring app's durable set of days with unscored rows, and its guard against a lost day."""

from __future__ import annotations

from pathlib import Path

from workbench.pipeline.scoring import UNSCORED_FILE
from workbench.pipeline.scoring._days import UnscoredDays


def test_a_day_added_to_while_it_was_rescored_stays_recorded(tmp_path: Path) -> None:
    path = tmp_path / UNSCORED_FILE
    days = UnscoredDays(path)
    days.add({"2024-03-05", "2024-03-06"})
    marks = days.marks({"2024-03-05", "2024-03-06"})  # the rescoring pass starts here
    days.add({"2024-03-06"})  # the stream stores more unscored rows of a day being rescored
    assert days.remove(marks) == {"2024-03-05"}
    assert days.snapshot() == {"2024-03-06"}
    assert UnscoredDays(path).snapshot() == {"2024-03-06"}  # durable: a restart rescored it too
    assert days.remove(days.marks({"2024-03-06"})) == {"2024-03-06"}
    assert UnscoredDays(path).snapshot() == set()


def test_remove_without_marks_forgets_the_days(tmp_path: Path) -> None:
    days = UnscoredDays(tmp_path / UNSCORED_FILE)
    days.add({"2024-03-05"})
    assert days.remove({"2024-03-05"}) == {"2024-03-05"} and days.snapshot() == set()
