"""Another instance's workload on this one: the statements of a failover or of a connection pointed at the
wrong cluster.

A BI tool repointed from a 6-node cluster to a 2-node one runs its usual statements there, each 2-4x as
long as at home, most of them for a second or less: per query they are never-seen statements whose
runtime the instance's prior explains, and together they are a few dozen queries an hour among the
instance's own, too few to move its windows. What gives them away is whose they are. Redset's
fingerprints are scoped to one cluster (they virtually never repeat across clusters: on the training
windows of nine generated and blind-evaluation logs, not one of 20,000-100,000 fingerprints ran on two
instances), so a statement that is a regular of one instance (``min_history`` runs in the version's
window) arriving on another that never ran it is that workload, moved
(:meth:`workbench.ml.features.FeatureBuilder.statement_homes`, which disarms itself on a log whose
fingerprints do repeat across instances).

:func:`moved_statement_runs` reads a day of scored rows and each row's home (the other instance, or -1)
and, per instance and home, flags every run of the moved statements when the day holds at least
``min_statements`` (3) distinct ones and their runs took at least ``floor_ms`` (1 s, the detector's
floor) together: one statement could be a coincidence of hashes, several of one home are a workload,
and a moved workload that costs nothing is not an incident. Every constant is a count of statements or the
detector's floor; none was chosen on an injected kind. Runs the per-query detector or an earlier rule
already alerted on keep their own alert; the group's count includes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import arrival_us, numbers
from workbench.analysis._judged import RULE_RESULT, already_flagged, empty_result

__all__ = ["MOVED_COLUMNS", "MOVED_REASON", "MOVED_SIGNAL", "MovedParams", "moved_statement_runs"]

#: The evidence signal of a run of another instance's statement.
MOVED_SIGNAL = "statement_moved"
#: Its alert's reason.
MOVED_REASON = "workload_moved"
#: Shard columns :func:`moved_statement_runs` reads.
MOVED_COLUMNS = ("instance_id", "query_id", "arrival_timestamp", "execution_duration_ms", "feature_fingerprint",
                 "pred_mean_ms", "model_version", "is_anomaly")


@dataclass(frozen=True)
class MovedParams:
    """Constants of :func:`moved_statement_runs`.

    ``min_statements``: the least number of distinct statements of one home on an instance in a day.
    ``floor_ms``: the least runtime their runs took together (the detector's runtime floor).
    """

    min_statements: int = 3
    floor_ms: float = 1_000.0

    def __post_init__(self) -> None:
        if isinstance(self.min_statements, bool) or not isinstance(self.min_statements, int) \
                or self.min_statements < 1:
            raise ValueError(f"MovedParams.min_statements must be an integer of at least 1; got "
                             f"{self.min_statements!r}")
        if isinstance(self.floor_ms, bool) or not isinstance(self.floor_ms, (int, float)) \
                or not np.isfinite(self.floor_ms) or self.floor_ms < 0:
            raise ValueError(f"MovedParams.floor_ms must be a finite number of at least 0; got {self.floor_ms!r}")


_RESULT = {**RULE_RESULT, "group_statements": "int64"}


def moved_statement_runs(rows: pa.Table, home: np.ndarray, home_ms: np.ndarray, params: MovedParams | None = None,
                         exclude: np.ndarray | None = None) -> pd.DataFrame:
    """The runs of ``rows`` flagged as another instance's workload (see the module docstring).

    Parameters
    ----------
    rows : pyarrow.Table
        One day of scored query rows (the shard schema; :data:`MOVED_COLUMNS`, ``is_anomaly`` optional).
    home, home_ms : ndarray
        Per row: the other instance whose regular statement it runs (-1: none) and the statement's median
        runtime there in ms (:meth:`~workbench.ml.features.FeatureBuilder.statement_homes` of the version
        that scored the row).
    params : MovedParams, optional
        The constants (defaults: 3 statements, 1 s).
    exclude : ndarray of bool, optional
        Per row: flagged by another rule already (never flagged here; still counted in its group).

    Returns
    -------
    DataFrame
        One row per flagged run, in arrival order, with the columns of
        :func:`~workbench.analysis.slower_groups.slower_group_runs` (``signal`` :data:`MOVED_SIGNAL`,
        ``reason`` :data:`MOVED_REASON`; ``expected_ms`` the statement's median runtime at home;
        ``group_key`` ``home_instance`` and ``group_value`` the home's id; ``group_queries`` the moved runs
        of the day, ``group_ratio`` their median runtime against their statements' at home, ``group_z``
        NaN, ``score`` the distinct statements over ``min_statements``) and ``group_statements``.
    """
    params = params or MovedParams()
    home = np.asarray(home, dtype=np.int64)
    if len(home) != rows.num_rows or len(home_ms) != rows.num_rows:
        raise ValueError(f"home and home_ms must have one value per row ({rows.num_rows}); got {len(home)} and "
                         f"{len(home_ms)}")
    moved = (home >= 0) & pc.is_valid(rows.column("feature_fingerprint")).to_numpy(zero_copy_only=False)
    if not moved.any():
        return _empty()
    idx = np.flatnonzero(moved)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)[idx]
    expected = np.asarray(home_ms, dtype=float)[idx]
    part = pd.DataFrame({
        "row": idx,
        "instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "home": home[idx],
        "fingerprint": pc.cast(rows.column("feature_fingerprint"), pa.string()).to_numpy(zero_copy_only=False)[idx],
        "arrival_us": arrival_us(rows)[idx],
        "observed_ms": exec_ms,
        "expected_ms": expected,
        "ratio": np.log1p(exec_ms) - np.log1p(np.clip(expected, 0.0, None)),
    })
    per = part.groupby(["instance_id", "home"], sort=False).agg(
        statements=("fingerprint", "nunique"), runs=("row", "size"), runtime_ms=("observed_ms", "sum"),
        first_us=("arrival_us", "min"), last_us=("arrival_us", "max"), median_ratio=("ratio", "median")).reset_index()
    per = per[(per["statements"] >= params.min_statements) & (per["runtime_ms"] >= params.floor_ms)]
    if per.empty:
        return _empty()
    part = part.merge(per, on=["instance_id", "home"])
    taken = already_flagged(rows, exclude)
    part = part[~taken[part["row"].to_numpy()]].sort_values(["arrival_us", "row"], kind="stable")
    if part.empty:
        return _empty()
    rows_idx = part["row"].to_numpy()
    pred = numbers(rows, "pred_mean_ms")[rows_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        exec_ratio = np.where(pred > 0, part["observed_ms"].to_numpy() / pred, np.nan)
    found = pd.DataFrame({
        "row": rows_idx.astype(np.int64),
        "instance_id": part["instance_id"].to_numpy(np.int64),
        "query_id": pc.cast(rows.column("query_id"), pa.int64()).to_numpy(zero_copy_only=False)[rows_idx],
        "model_version": rows.column("model_version").to_numpy(zero_copy_only=False)[rows_idx],
        "signal": MOVED_SIGNAL,
        "reason": MOVED_REASON,
        "expected_ms": part["expected_ms"].to_numpy(),
        "observed_ms": part["observed_ms"].to_numpy(),
        "excess_ms": part["observed_ms"].to_numpy() - part["expected_ms"].to_numpy(),
        "group_key": "home_instance",
        "group_value": part["home"].astype(str).to_numpy(),
        "span_start": pd.to_datetime(part["first_us"].to_numpy(), unit="us", utc=True),
        "span_end": pd.to_datetime(part["last_us"].to_numpy(), unit="us", utc=True),
        "group_queries": part["runs"].to_numpy(np.int64),
        "group_ratio": np.exp(part["median_ratio"].to_numpy()),
        "group_z": np.nan,
        "score": part["statements"].to_numpy() / params.min_statements,
        "exec_ratio": exec_ratio,
        "group_statements": part["statements"].to_numpy(np.int64),
    })
    return found.astype(_RESULT).reset_index(drop=True)


def _empty() -> pd.DataFrame:
    return empty_result(_RESULT)
