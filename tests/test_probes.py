"""The held-out probes (``benchmarks/_probes.py``) change exactly the rows they label."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks._probes import MIN_WINDOW_ROWS, PROBE_SETS, apply_probes
from workbench.data.generator import generate
from workbench.ml._train import load_log_window

# The small log's instances run ~14k, ~1-4k and ~200 queries a day: one per class at this scale.
SIZES = (("busy", 10_000, 10**12), ("mid", 1_000, 10_000), ("small", 150, 1_000))


@pytest.fixture(scope="module")
def log_days(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    data = tmp_path_factory.mktemp("probes") / "log.parquet"
    generate(data, days=3, instances=6, seed=3, rows_per_day=20_000)
    return load_log_window(Path(data), dt.date(2024, 3, 6), 1), load_log_window(Path(data), dt.date(2024, 3, 5), 7)


@pytest.fixture(scope="module", params=sorted(PROBE_SETS))
def probed(request: pytest.FixtureRequest, log_days: tuple) -> tuple:
    day, history = log_days
    probes = PROBE_SETS[request.param]
    return day, history, apply_probes(day, history, seed=5, probes=probes, sizes=SIZES), probes


def _keyed(table: object) -> pd.DataFrame:
    return table.to_pandas().set_index(["instance_id", "query_id"]).sort_index()


def test_probes_change_exactly_the_labelled_rows(probed: tuple) -> None:
    day, _, (table, label, _, _), probes = probed
    before, after = _keyed(day), table.to_pandas().assign(_probe=label).set_index(["instance_id", "query_id"])
    assert set(before.index) <= set(after.index)  # nothing removed
    unlabelled = after[after["_probe"].isna()].drop(columns="_probe").sort_index()
    assert unlabelled.index.isin(before.index).all()  # every new row is labelled
    pd.testing.assert_frame_equal(unlabelled, before.loc[unlabelled.index])
    changed = after[after["_probe"].notna()]
    old = changed.index.isin(before.index)
    columns = list(before.columns)
    differs = (changed.loc[old, columns].astype(str) != before.loc[changed.index[old], columns].astype(str)).any(axis=1)
    assert differs.all(), changed.loc[old][~differs.to_numpy()]["_probe"].value_counts()
    assert len(table) == len(day) + (~old).sum()
    # most probes found rows to change on this small log (the heavy statements it lacks may not; its three
    # busy and mid-size instances hold episode slots for four of the second set's seven collective probes)
    assert len(set(label[pd.notna(label)])) >= {PROBE_SETS["main"]: len(probes) - 2}.get(probes, 4)


def test_probe_windows_hold_enough_probe_rows_and_the_run_is_seeded(probed: tuple) -> None:
    day, history, (table, label, windows, sizes), probes = probed
    assert set(windows["probe"]) and set(windows["probe"]) <= {p.name for p in probes if p.family == "collective"}
    rows = pd.DataFrame({"instance_id": table.column("instance_id").to_numpy(), "probe": label,
                         "window_start": table.column("arrival_timestamp").to_pandas().dt.floor("10min")})
    counts = rows.groupby(["instance_id", "window_start", "probe"]).size()
    for w in windows.itertuples():
        assert counts[(w.instance_id, w.window_start, w.probe)] >= MIN_WINDOW_ROWS
    assert sizes == {"busy": [104], "mid": [103, 173], "small": [102]}
    again, label2, windows2, _ = apply_probes(day, history, seed=5, probes=probes, sizes=SIZES)
    assert again.equals(table) and np.array_equal(label2.astype(str), label.astype(str)) and windows2.equals(windows)
    _, label3, _, _ = apply_probes(day, history, seed=6, probes=probes, sizes=SIZES)
    assert not np.array_equal(label3.astype(str), label.astype(str))
