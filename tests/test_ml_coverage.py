"""Versions trained on part of their days (a seek skipped rows while they trained) are named."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from workbench.config import Settings
from workbench.ml.coverage import PartlyTrained, partly_trained, partly_trained_versions
from workbench.store.window_stats import WindowStatsStore

DAY = dt.date(2024, 3, 4)


def _meta(days: list[dt.date], rows: int) -> dict:
    return {"window_days": [d.isoformat() for d in days], "rows": {"window": rows, "trained": rows}}


def test_a_version_that_saw_less_than_most_of_its_windows_queries_is_named() -> None:
    next_day = DAY + dt.timedelta(days=1)
    per_day = {DAY: 18_096, next_day: 18_045}
    versions = [("v0001-2024-03-04", _meta([DAY], 3_161)),  # a seek skipped most of its day
                ("v0002-2024-03-05", _meta([DAY, next_day], 3_161)),  # ... and all of the next
                ("v0003-2024-03-05", _meta([DAY, next_day], 30_000)),  # late rows, rows without a time: fine
                ("v0004-2024-03-06", {"rows": 10}),  # an older model.json without the window: skipped
                ("v0005-2024-03-07", _meta([DAY + dt.timedelta(days=3)], 10))]  # nothing counted for its day
    found = partly_trained(versions, per_day)
    assert found == [PartlyTrained("v0001-2024-03-04", 3_161, 18_096), PartlyTrained("v0002-2024-03-05", 3_161, 36_141)]
    assert str(found[1]) == ("v0002-2024-03-05 was trained on 3,161 rows of its days, which hold 36,141 queries now "
                             "(9%)")
    assert partly_trained(versions[:1], {DAY: 400}) == []  # a handful of queries is no finding


def test_the_homes_versions_are_compared_with_the_queries_its_windows_counted(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert partly_trained_versions(settings) == []  # no versions, no store: nothing to say
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    rows = [{"instance_id": instance, "window_start": start + dt.timedelta(minutes=10 * w),
             "window_end": start + dt.timedelta(minutes=10 * (w + 1)), "total_queries": 10,
             "aborted_queries": instance - 1}  # aborted queries are not trained on: not counted either
            for w in range(2 * 144) for instance in (1, 2)]
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(rows)
        assert store.completed_queries_per_day() == {DAY: 2_736, DAY + dt.timedelta(days=1): 2_736}
    both = [DAY, DAY + dt.timedelta(days=1)]
    for version, meta in (("v0001-2024-03-04", _meta([DAY], 2_700)),
                          ("v0002-2024-03-05", _meta(both, 2_700)),  # 49 %: trained before a day's rows came
                          ("v0003-2024-03-05", _meta(both, 2_800))):  # 51 %
        folder = settings.models_dir / "versions" / version
        folder.mkdir(parents=True)
        (folder / "model.json").write_text(json.dumps(meta))
    assert [found.version for found in partly_trained_versions(settings)] == ["v0002-2024-03-05"]
