"""Full validation of a Parquet query log: every column of every row, streamed in bounded memory.

Two kinds of trouble are told apart:

* **File problems** (unreadable file, no rows, missing, duplicated or mistyped columns) make the
  file unusable as a whole; :func:`check` raises :class:`DataValidationError` for the first one.
* **Row problems** (a NULL where every query needs a value, a negative duration, an id beyond
  int64, NaN in a float column, a float too large for floats to hold it exactly, a time no
  consumer can decode, a time finer than a microsecond, a string that is not UTF-8, a row out of
  order, a second copy of a query, a page that cannot be decoded, a label its readers cannot read: a
  ``label_anomaly`` text that is neither true nor false, a ``label_kind`` float that is no whole number)
  are all collected: :class:`ValidationReport`
  counts every one and keeps the first :data:`LINES_PER_COLUMN` of each column for display.

:func:`find_bad_rows` applies the same per-row rules to one batch, so the replay can send the
rows it cannot replay to the dead-letter topic (``--skip-bad-rows``) with the same reason text.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.data.exceptions import DataValidationError
from workbench.data.schema import (
    COLUMNS,
    FALSE_WORDS,
    FIELDS,
    LABEL_COLUMNS,
    NON_NEGATIVE_COLUMNS,
    REDSET_SCHEMA,
    SORT_KEY,
    TRUE_WORDS,
    LogSummary,
    _check_schema,
    _open,
    _type_family,
    datetime_from_us,
    group_runs,
    label_words,
    open_parquet,
)

__all__ = [
    "LINES_PER_COLUMN",
    "MAX_EVENT_TIME",
    "MIN_EVENT_TIME",
    "NON_NEGATIVE_COLUMNS",
    "SKIPPABLE_KINDS",
    "BadRows",
    "Problem",
    "ValidationReport",
    "adjacent_repeats",
    "cast_batch",
    "check",
    "conform",
    "find_bad_rows",
    "refuse_bad_rows",
    "validate",
]

logger = logging.getLogger(__name__)

#: Problem lines kept per column for display; every problem is counted regardless.
LINES_PER_COLUMN = 10

#: The event times every consumer can decode: Kafka message timestamps are non-negative
#: milliseconds, pandas holds nanoseconds in int64 (up to 2262-04-11), Python datetimes and
#: DuckDB/SQLite hold both ends.
MIN_EVENT_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_EVENT_TIME = dt.datetime(2262, 4, 10, tzinfo=dt.UTC)

#: Row problems the replay can skip (dead-letter) with ``--skip-bad-rows``. Rows out of order and
#: pages that cannot be decoded are not among them: the first breaks pacing and resume, the
#: second leaves nothing to send.
SKIPPABLE_KINDS = frozenset({"null", "not_int64", "negative", "not_a_number", "not_whole", "inexact",
                             "time_range", "sub_microsecond", "not_utf8", "not_a_label"})

_INT64_MAX = 2**63 - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_US = 0
_MAX_US = (MAX_EVENT_TIME - _EPOCH) // dt.timedelta(microseconds=1)
_UNIT_PER_US = {"s": (1, 1_000_000), "ms": (1, 1000), "us": (1, 1), "ns": (1000, 1)}  # (multiply, divide)
_SORT_HINT = ("Sort it with `workbench prepare {path} --out NEW`, or e.g. in DuckDB: COPY (SELECT * FROM "
              "'in.parquet' ORDER BY arrival_timestamp, query_id) TO 'out.parquet'.")


@dataclass(frozen=True)
class Problem:
    """One problem in one row (``row`` is the 0-based row index in the file)."""

    row: int
    column: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.column}: {self.detail}"


@dataclass
class ValidationReport:
    """Everything :func:`check` found: counts of every problem, the first lines of each column."""

    path: Path
    rows: int
    row_groups: int
    has_labels: bool
    first_arrival: dt.datetime | None = None
    last_arrival: dt.datetime | None = None
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    bad_rows: int = 0

    @property
    def ok(self) -> bool:
        """No problem was found."""
        return not self.counts

    @property
    def total(self) -> int:
        """Problems found, shown or not."""
        return sum(self.counts.values())

    @property
    def skippable(self) -> bool:
        """Whether every problem is one the replay can dead-letter row by row."""
        return all(kind in SKIPPABLE_KINDS for kind in self.kinds)

    @property
    def labels_only(self) -> bool:
        """Whether every problem is in a label column: the replay, which never sends labels, loses no row to them."""
        return not self.ok and all(column in LABEL_COLUMNS for column in self.counts)

    def summary(self) -> LogSummary:
        """The file's summary (rows, row groups, time span, labels)."""
        if self.first_arrival is None or self.last_arrival is None:
            msg = f"Query log {str(self.path)!r} has no row with a usable arrival_timestamp."
            raise DataValidationError(msg, path=str(self.path), column="arrival_timestamp")
        return LogSummary(path=self.path, rows=self.rows, row_groups=self.row_groups,
                          first_arrival=self.first_arrival, last_arrival=self.last_arrival,
                          has_labels=self.has_labels)

    def lines(self) -> list[str]:
        """One line per kept problem, then one per column whose further problems were not kept."""
        out = [str(problem) for problem in self.problems]
        shown = Counter(problem.column for problem in self.problems)
        for column, count in self.counts.items():
            if count > shown[column]:
                out.append(f"{column}: {count - shown[column]:,} more problem(s) not shown")
        return out

    def verdict(self) -> str:
        """The one-line summary: OK with the log summary, or the counts per column."""
        if self.ok:
            return f"OK {self.summary()}"
        per_column = ", ".join(f"{column} {count:,}" for column, count in self.counts.most_common())
        return (f"FAILED {self.path}: {self.total:,} problem(s) in {self.bad_rows:,} of {self.rows:,} rows "
                f"({per_column})")

    def error(self, *, skipping: bool = False) -> DataValidationError:
        """The error :func:`validate` and the replay raise for a file with row problems.

        ``skipping``: the replay was asked to skip bad rows, so the error names the first problem it
        cannot skip (it named the first problem, a negative duration, the very kind it skips).
        """
        first = self.problems[0]
        blocking = [p for p in self.problems if p.kind not in SKIPPABLE_KINDS]
        if skipping and blocking:
            first = blocking[0]
        if first.kind == "unsorted":
            hint = _SORT_HINT.format(path=self.path)
        elif first.kind == "duplicate":
            hint = (f"`workbench prepare {self.path} --out NEW` writes the log with the first copy of each "
                    "repeated query only.")
        elif first.kind == "unreadable":
            hint = "The file is damaged: write it again from its source."
        elif self.labels_only:
            hint = ("The replay never sends labels (they matter to `workbench evaluate`): fix them, or replay with "
                    "--skip-bad-rows, which replays these rows whole.")
        elif self.skippable:
            hint = ("Fix or drop those rows, or replay with --skip-bad-rows (`workbench replay` and `workbench "
                    "start`; skip_bad_rows=True in Python) to send them to the dead-letter topic and replay the rest.")
        else:
            hint = "Fix the file first."
        if skipping and blocking:
            skipped = sum(self.kinds[k] for k in self.kinds if k in SKIPPABLE_KINDS)
            msg = (f"Query log {str(self.path)!r} cannot be replayed with --skip-bad-rows: it skips a row's own "
                   f"problems ({skipped:,} here), not {first}. Run `workbench validate {self.path}` to list "
                   f"every problem. {hint}")
            return DataValidationError(msg, path=str(self.path), column=first.column, row=first.row)
        msg = (f"Query log {str(self.path)!r} fails validation: {self.total:,} problem(s) in {self.bad_rows:,} "
               f"row(s), the first at {first}. Run `workbench validate {self.path}` to list them. {hint}")
        return DataValidationError(msg, path=str(self.path), column=first.column, row=first.row)


class BadRows(NamedTuple):
    """The rows of one batch that cannot be replayed, and why (one reason per bad row)."""

    mask: np.ndarray  # bool per row of the batch
    findings: list[_Finding]

    def _first_findings(self) -> dict[int, _Finding]:
        """Batch index -> the first finding of that row."""
        out: dict[int, _Finding] = {}
        for finding in self.findings:
            for index in finding.rows:
                out.setdefault(int(index), finding)
        return out

    def reasons(self) -> dict[int, str]:
        """Batch index -> the first problem of that row, as ``column: detail``."""
        return {index: finding.reason(index) for index, finding in self._first_findings().items()}

    def coded_reasons(self) -> dict[int, str]:
        """Batch index -> the first problem of that row as a dead letter's ``<code>: column: detail``,
        the code the apps give the same problem in a message (:class:`~workbench.data.codec.MessageDecodeError`)."""
        return {index: f"{_DEAD_LETTER_CODES.get(finding.kind, 'invalid_value')}: {finding.reason(index)}"
                for index, finding in self._first_findings().items()}


#: A row finding's kind -> the dead-letter reason code of the same problem in a message.
_DEAD_LETTER_CODES = {"not_int64": "int_out_of_range", "negative": "negative_value", "null": "null_in_required",
                      "time_range": "timestamp_out_of_range", "sub_microsecond": "wrong_type",
                      "not_whole": "wrong_type", "not_a_number": "invalid_value", "inexact": "invalid_value",
                      "not_utf8": "invalid_value"}


class _Finding(NamedTuple):
    column: str
    kind: str
    rows: np.ndarray  # indices into the batch
    array: pa.Array

    def detail(self, index: int) -> str:
        return _DESCRIBE[self.kind](self.column, self.array, index)

    def reason(self, index: int) -> str:
        """``column: detail`` of the batch row ``index``."""
        return f"{self.column}: {self.detail(index)}"


def _value(array: pa.Array, index: int) -> object:
    try:
        return array[index].as_py()
    except (ValueError, OverflowError, UnicodeDecodeError, pa.ArrowException):
        return repr(array.cast(pa.binary(), safe=False)[index].as_py()) if _type_family(array.type) == "string" \
            else str(array[index])


def _time_text(array: pa.Array, index: int) -> str:
    raw = array.cast(pa.int64())[index].as_py()
    unit = array.type.unit
    try:
        return f"{array[index].as_py():%Y-%m-%d %H:%M:%S}"
    except (ValueError, OverflowError, pa.ArrowException):
        return f"{raw} {unit} since 1970"


def _nanos_text(array: pa.Array, index: int) -> str:
    """A nanosecond time as text with all nine digits (Python's datetime stops at microseconds)."""
    raw = array.cast(pa.int64())[index].as_py()
    seconds, nanos = divmod(raw, 1_000_000_000)
    return f"{_EPOCH + dt.timedelta(seconds=seconds):%Y-%m-%d %H:%M:%S}.{nanos:09d}"


def _utf8_text(array: pa.Array, index: int) -> str:
    raw = array.cast(pa.binary(), safe=False)[index].as_py() if not pa.types.is_binary(array.type) \
        else array[index].as_py()
    return repr(raw[:40])


_DESCRIBE: dict[str, Callable[[str, pa.Array, int], str]] = {
    "null": lambda c, a, i: "NULL, but every query needs a value here",
    "not_int64": lambda c, a, i: f"{_value(a, i)} does not fit a signed 64-bit integer (largest {_INT64_MAX})",
    "negative": lambda c, a, i: f"{_value(a, i)} is negative (durations, sizes and counts are >= 0)",
    "not_a_number": lambda c, a, i: f"{_value(a, i)} is not a finite number",
    "not_whole": lambda c, a, i: f"{_value(a, i)} is not a whole number",
    "inexact": lambda c, a, i: (f"{_value(a, i)} is beyond {_exact_limit(a.type):,}, where a {a.type} column cannot "
                                "hold every whole number: it may be a rounded value; store the column as integers"),
    "time_range": lambda c, a, i: (f"{_time_text(a, i)} is outside {MIN_EVENT_TIME:%Y-%m-%d} .. "
                                   f"{MAX_EVENT_TIME:%Y-%m-%d}, the range every consumer can decode"),
    "sub_microsecond": lambda c, a, i: (f"{_nanos_text(a, i)} is finer than the microseconds every event "
                                        "time is kept in; `workbench prepare` truncates such times"),
    "not_utf8": lambda c, a, i: f"{_utf8_text(a, i)} is not valid UTF-8 text",
    "not_a_label": lambda c, a, i: (f"{_value(a, i)!r} is neither true nor false (the labels read true/false, t/f, "
                                    "yes/no or 1/0, in any letter case)"),
}


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


#: The bytes type of each text type: the values of a text array that are not UTF-8 are read as bytes.
_TEXT_AS_BYTES = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary(), pa.string_view(): pa.binary_view()}


def _utf8_bad(array: pa.Array) -> np.ndarray:
    """Rows of a string/binary array that are not valid UTF-8 (fast path: the whole array is fine)."""
    as_bytes = _TEXT_AS_BYTES.get(array.type)
    if as_bytes is not None:
        try:
            array.validate(full=True)
            return np.zeros(len(array), bool)
        except pa.ArrowInvalid:
            pass
        raw = array.cast(as_bytes, safe=False)
    else:
        raw = array
    bad = np.zeros(len(array), bool)
    for index, value in enumerate(raw.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad[index] = True
    return bad


def _check_integers(name: str, array: pa.Array, valid: np.ndarray) -> list[_Finding]:
    findings = []
    if pa.types.is_unsigned_integer(array.type):
        if array.type.bit_width == 64:
            too_big = pc.fill_null(pc.greater(array, pa.scalar(_INT64_MAX, pa.uint64())), False)
            mask = too_big.to_numpy(zero_copy_only=False)
            if mask.any():
                findings.append(_Finding(name, "not_int64", _rows(mask), array))
        return findings
    if name in NON_NEGATIVE_COLUMNS:
        mask = pc.fill_null(pc.less(array, 0), False).to_numpy(zero_copy_only=False)
        if mask.any():
            findings.append(_Finding(name, "negative", _rows(mask), array))
    return findings


def _exact_limit(type_: pa.DataType) -> int:
    """The largest whole number up to which a float type holds every whole number (2**53 for float64)."""
    return 2 ** (np.finfo(type_.to_pandas_dtype()).nmant + 1)


def _check_floats(name: str, array: pa.Array, valid: np.ndarray) -> list[_Finding]:
    values = array.to_numpy(zero_copy_only=False).astype(np.float64)
    finite = np.isfinite(values) & valid
    findings = []
    masks = {
        "not_a_number": valid & ~np.isfinite(values),
        "not_int64": finite & (np.abs(values) >= 2.0**63),
    }
    # An id written through floats beyond this was rounded: distinct queries would share one id.
    masks["inexact"] = finite & ~masks["not_int64"] & (np.abs(values) > _exact_limit(array.type))
    with np.errstate(invalid="ignore"):
        masks["not_whole"] = finite & ~masks["not_int64"] & (values != np.floor(values))
        if name in NON_NEGATIVE_COLUMNS:
            masks["negative"] = finite & (values < 0)
    for kind, mask in masks.items():
        if mask.any():
            findings.append(_Finding(name, kind, _rows(mask), array))
    return findings


def _check_times(name: str, array: pa.Array, valid: np.ndarray) -> list[_Finding]:
    # Compare in the column's own unit: converting year 300000 in seconds to µs would overflow.
    multiply, divide = _UNIT_PER_US[array.type.unit]
    low, high = _MIN_US * multiply // divide, _MAX_US * multiply // divide
    # NULLs filled first: with them to_numpy gives float64, which drops a nanosecond from times of today
    raw = pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    mask = valid & ((raw < low) | (raw >= high))
    findings = [_Finding(name, "time_range", _rows(mask), array)] if mask.any() else []
    if multiply > 1:  # nanoseconds: a time between two microseconds has no exact event time
        finer = valid & ~mask & (raw % multiply != 0)
        if finer.any():
            findings.append(_Finding(name, "sub_microsecond", _rows(finer), array))
    return findings


def _check_label(name: str, array: pa.Array, valid: np.ndarray) -> list[_Finding]:
    """The values of a label column that its readers cannot read (they take other tools' forms:
    ``label_anomaly`` as 0/1 or true/false text, ``label_kind`` as integer codes, also as floats)."""
    family = _type_family(array.type)
    if family in ("string", "binary"):
        mask = _utf8_bad(array)
        if mask.any():
            return [_Finding(name, "not_utf8", _rows(mask), array)]
        if name == "label_anomaly":
            # as evaluate.anomaly_labels reads the text ("" is NULL, a normal row)
            mask = ~np.isin(label_words(array), ("", *TRUE_WORDS, *FALSE_WORDS))
            if mask.any():
                return [_Finding(name, "not_a_label", _rows(mask), array)]
    elif family == "float" and name == "label_kind":
        return _check_floats(name, array, valid)  # a code stored as a float must be a whole number
    elif family == "float" and name == "label_anomaly":
        # 0/1 beside NaN, as pandas writes a 0/1 column with NULLs (NaN: not labelled, a normal row)
        values = array.to_numpy(zero_copy_only=False).astype(np.float64)
        mask = valid & ~np.isnan(values) & (values != 0) & (values != 1)
        if mask.any():
            return [_Finding(name, "not_a_label", _rows(mask), array)]
    return []


def find_bad_rows(batch: pa.RecordBatch | pa.Table) -> BadRows:
    """Apply the per-row rules to every known column of ``batch`` (raw, as read from the file)."""
    findings: list[_Finding] = []
    n = batch.num_rows
    for name in batch.schema.names:
        spec = FIELDS.get(name)
        if spec is None:
            continue
        array = batch.column(name)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        valid = _valid(array)
        # a NULL label is a normal row (evaluate.anomaly_labels), which every query may be
        if not spec.nullable and name not in LABEL_COLUMNS and not valid.all():
            findings.append(_Finding(name, "null", _rows(~valid), array))
        family = _type_family(array.type)
        if name in LABEL_COLUMNS:
            findings += _check_label(name, array, valid)
        elif family == "integer":
            findings += _check_integers(name, array, valid)
        elif family == "float":
            findings += _check_floats(name, array, valid)
        elif family == "timestamp":
            findings += _check_times(name, array, valid)
        elif family in ("string", "binary"):
            mask = _utf8_bad(array)
            if mask.any():
                findings.append(_Finding(name, "not_utf8", _rows(mask), array))
    mask = np.zeros(n, bool)
    for finding in findings:
        mask[finding.rows] = True
    return BadRows(mask, findings)


def refuse_bad_rows(rows: pa.Table, path: Path, what: str, *, null_arrivals: int = 0) -> None:
    """Raise DataValidationError when ``rows`` (read from ``path`` for ``what``) break the per-row rules.

    For a reader that takes a part of a log without the replay's validation (training, evaluation,
    the notebooks' ``data``): a negative duration or a NULL id would otherwise be used as if valid.
    ``null_arrivals`` counts rows without an arrival time, which a reader filtering by time never sees.
    The file is then checked whole (only on this failure path) to name the first problem's row.
    """
    bad = find_bad_rows(rows)
    count = int(bad.mask.sum()) + null_arrivals
    if not count:
        return
    report = check(path)
    first = (f"the file's first: {report.problems[0]}" if report.problems
             else min(bad.reasons().items())[1])
    msg = (f"Query log {str(path)!r} holds {count:,} row(s) for {what} that `workbench validate` refuses "
           f"({first}). Run `workbench validate {path}` to list them; `workbench prepare {path} --out NEW` "
           "writes a copy it can use (what converts repaired, the rest set aside with reasons).")
    column, row = (report.problems[0].column, report.problems[0].row) if report.problems else (None, None)
    raise DataValidationError(msg, path=str(path), column=column, row=row)


def conform(batch: pa.RecordBatch, names: Sequence[str]) -> pa.RecordBatch:
    """``batch``'s columns ``names`` cast to the Redset types (run on rows without problems only)."""
    return cast_batch(batch, pa.schema([FIELDS[name] for name in names], metadata=REDSET_SCHEMA.metadata))


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch``'s columns of ``schema``, dictionary-decoded and cast to its types, in its order."""
    arrays = []
    for spec in schema:
        column = batch.column(spec.name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        arrays.append(column if column.type == spec.type else column.cast(spec.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _Order:
    """Checks the stream order across batches, over the rows whose sort keys are usable.

    Also finds a query that appears twice: Redset's ``query_id`` is unique per instance, and two
    copies of a row (overlapping exports merged) have the same arrival, so in a sorted log they
    are next to each other. A repeat at another arrival time is not looked for: that would need
    every id of the log in memory.
    """

    def __init__(self) -> None:
        self.prev: tuple[int, int, int, int | None] | None = None  # (row, arrival µs, query_id, instance_id)
        self.first_us: int | None = None
        self.last_us: int | None = None

    def feed(self, batch: pa.RecordBatch, offset: int, usable: np.ndarray) -> list[Problem]:
        rows = np.flatnonzero(usable)
        if len(rows) == 0:
            return []
        ts = _int64_values(batch.column("arrival_timestamp").take(pa.array(rows)), time=True)
        qid = _int64_values(batch.column("query_id").take(pa.array(rows)))
        instance_array = batch.column("instance_id").take(pa.array(rows))
        if pa.types.is_dictionary(instance_array.type):
            instance_array = instance_array.dictionary_decode()
        # A NULL instance id is reported by the row rules and never repeats another row here.
        known = instance_array.is_valid().to_numpy(zero_copy_only=False)
        instance = pc.fill_null(pc.cast(instance_array, pa.int64(), safe=False), 0).to_numpy(zero_copy_only=False)
        index = rows + offset
        if self.prev is not None:
            index = np.concatenate([[self.prev[0]], index])
            ts = np.concatenate([[self.prev[1]], ts])
            qid = np.concatenate([[self.prev[2]], qid])
            known = np.concatenate([[self.prev[3] is not None], known])
            instance = np.concatenate([[self.prev[3] or 0], instance])
        if self.first_us is None:
            self.first_us = int(ts[0])
        problems = []
        bad = (ts[1:] < ts[:-1]) | ((ts[1:] == ts[:-1]) & (qid[1:] < qid[:-1]))
        for i in np.flatnonzero(bad):
            detail = (
                f"is not sorted by (arrival_timestamp, query_id): arrival {_stamp(int(ts[i + 1]))}, "
                f"query_id {int(qid[i + 1])} comes after row {int(index[i])} (arrival {_stamp(int(ts[i]))}, "
                f"query_id {int(qid[i])})"
            )
            problems.append(Problem(int(index[i + 1]), "arrival_timestamp", "unsorted", detail))
        for i in np.flatnonzero(adjacent_repeats(ts, qid, instance, known)):
            detail = (f"repeats row {int(index[i])} (instance_id {int(instance[i])}, query_id {int(qid[i])}, "
                      f"arrival {_stamp(int(ts[i]))}): a query_id is unique per instance")
            problems.append(Problem(int(index[i + 1]), "query_id", "duplicate", detail))
        self.prev = (int(index[-1]), int(ts[-1]), int(qid[-1]), int(instance[-1]) if known[-1] else None)
        self.last_us = max(self.last_us or int(ts[-1]), int(ts[-1]))
        return problems


def adjacent_repeats(arrival_us: np.ndarray, query_id: np.ndarray, instance_id: np.ndarray,
                     known: np.ndarray | None = None) -> np.ndarray:
    """Per row after the first: whether it repeats the row before it (one query twice).

    Redset's ``query_id`` is unique per instance, and the copies of a query that overlapping
    exports leave have the same arrival, so a log sorted by arrival and query id has them next to
    each other. ``known``: rows whose instance id is usable (an unknown one never repeats).
    Returns ``len - 1`` booleans: element ``i`` compares rows ``i + 1`` and ``i``.
    """
    same = ((arrival_us[1:] == arrival_us[:-1]) & (query_id[1:] == query_id[:-1])
            & (instance_id[1:] == instance_id[:-1]))
    return same if known is None else same & known[1:] & known[:-1]


def _int64_values(array: pa.Array, *, time: bool = False) -> np.ndarray:
    """A usable sort-key column as int64 (timestamps as µs since the epoch)."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if time:
        array = array.cast(pa.timestamp("us", tz=array.type.tz))
    return array.cast(pa.int64()).to_numpy(zero_copy_only=False)


def _stamp(us: int) -> str:
    return f"{_EPOCH + dt.timedelta(microseconds=us):%Y-%m-%d %H:%M:%S.%f}"


def _unreadable_columns(pf: pq.ParquetFile, group: int, names: Sequence[str]) -> list[tuple[str, str]]:
    """Which columns of a row group cannot be decoded, with the reader's error."""
    broken = []
    for name in names:
        try:
            for _ in pf.iter_batches(batch_size=65_536, row_groups=[group], columns=[name], use_threads=False):
                pass
        except (pa.ArrowException, OSError) as exc:
            # without its closing period: the message that quotes it ends the sentence ("data.." before)
            broken.append((name, str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip()
                           else type(exc).__name__))
    return broken or [(names[0], "the row group cannot be read")]


#: A file of more row groups than this, averaging fewer rows than _SMALL_GROUP, gets a warning.
_MANY_GROUPS = 1_000
_SMALL_GROUP = 1_000


def check(path: str | os.PathLike[str], *, batch_size: int = 65_536,
          progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Check every column of every row of a Parquet query log, one row group at a time.

    Parameters
    ----------
    path : str or PathLike
        The Parquet file.
    batch_size : int
        Rows decoded at a time (memory is bounded by this and one row group's pages).
    progress : callable, optional
        Called with (rows checked, total rows) after each batch.

    Returns
    -------
    ValidationReport
        Counts of every row problem per column, the first problems of each column, the summary.

    Raises
    ------
    DataValidationError
        For file problems: unreadable, no rows, missing/duplicated/mistyped columns.
    """
    path = Path(path)
    _open(path)  # the clear error for an absent or unreadable file
    # Stream column chunks through a small buffer: memory depends on the batch, not the row group.
    pf = open_parquet(path, pre_buffer=False, buffer_size=1 << 20)
    has_labels = _check_schema(pf.schema_arrow, path)
    metadata = pf.metadata
    report = ValidationReport(path=path, rows=metadata.num_rows, row_groups=metadata.num_row_groups,
                              has_labels=has_labels)
    if report.rows == 0:
        msg = f"Query log {str(path)!r} has no rows. Regenerate it or point at a log with queries."
        raise DataValidationError(msg, path=str(path))
    if report.row_groups > _MANY_GROUPS and report.rows < report.row_groups * _SMALL_GROUP:
        logger.warning("%s holds %d row groups of %.0f rows on average: each costs the reader ~0.2 ms, so every "
                       "read of the file (validation, replay, seek) takes seconds longer. `workbench prepare %s "
                       "--out NEW` rewrites it in row groups of 131,072 rows.", path, report.row_groups,
                       report.rows / report.row_groups, path)
    names = [*COLUMNS, *(name for name in LABEL_COLUMNS if name in pf.schema_arrow.names)]
    order = _Order()
    shown: Counter[str] = Counter()

    def note(problem: Problem) -> None:
        report.counts[problem.column] += 1
        report.kinds[problem.kind] += 1
        if shown[problem.column] < LINES_PER_COLUMN:
            shown[problem.column] += 1
            report.problems.append(problem)

    def feed(batch: pa.RecordBatch, row: int) -> None:
        bad = find_bad_rows(batch)
        for finding in bad.findings:
            report.counts[finding.column] += len(finding.rows)
            report.kinds[finding.kind] += len(finding.rows)
            for index in finding.rows[: max(0, LINES_PER_COLUMN - shown[finding.column])]:
                shown[finding.column] += 1
                report.problems.append(Problem(row + int(index), finding.column, finding.kind,
                                               finding.detail(int(index))))
        usable = np.ones(batch.num_rows, bool)
        for finding in bad.findings:
            if finding.column in SORT_KEY:
                usable[finding.rows] = False
        unsorted = order.feed(batch, row, usable)
        for problem in unsorted:
            note(problem)
        bad.mask[[p.row - row for p in unsorted]] = True
        report.bad_rows += int(bad.mask.sum())
        if progress is not None:
            progress(row + batch.num_rows, report.rows)

    offset = 0
    for groups in group_runs(metadata, batch_size):
        if len(groups) > 1:  # small row groups, read together: one reader per group costs ~3 ms
            try:
                batches = list(pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=names,
                                               use_threads=False))
            except (pa.ArrowException, OSError):
                batches = []  # one of them is damaged: read them one by one below, to name it
            for batch in batches:
                feed(batch, offset)
                offset += batch.num_rows
            if batches:
                continue
        for group in groups:
            group_end = offset + metadata.row_group(group).num_rows
            row = offset
            batches = pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=names, use_threads=False)
            while True:
                # Only the reading is a damaged file: an error of the checks (feed) is not reported as one
                # (a text kernel without a string_view kernel read as "row group 0 cannot be decoded").
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    logger.debug("row group %d of %s cannot be read: %s", group, path, exc)
                    for column, error in _unreadable_columns(pf, group, names):
                        note(Problem(row, column, "unreadable",
                                     f"rows {row}..{group_end - 1} (row group {group}) cannot be decoded: {error}"))
                    report.bad_rows += group_end - row
                    break
                feed(batch, row)
                row += batch.num_rows
            offset = group_end
    if order.first_us is not None and order.last_us is not None:
        report.first_arrival = _EPOCH + dt.timedelta(microseconds=order.first_us)
        report.last_arrival = _EPOCH + dt.timedelta(microseconds=order.last_us)
    report.problems.sort(key=lambda problem: (problem.row, names.index(problem.column)))
    logger.debug("checked path=\"%s\" rows=%d problems=%d", path, report.rows, report.total)
    return report


def validate(path: str | os.PathLike[str], *, batch_size: int = 65_536) -> LogSummary:
    """Check that a Parquet query log can be replayed as it is: every column of every row.

    Memory stays bounded whatever the file size (one batch of one row group at a time).

    Returns
    -------
    LogSummary
        Row and row-group counts, the arrival span and whether anomaly labels are present.

    Raises
    ------
    DataValidationError
        With ``path`` (and ``column``/``row`` of the first problem) for a file problem or any row
        problem; the message counts them all. :func:`check` returns them instead.
    """
    report = check(path, batch_size=batch_size)
    if not report.ok:
        raise report.error()
    return report.summary()


def reused_query_ids(paths: Sequence[Path], *, temp_dir: Path, shown: int = 3) -> tuple[int, list[tuple]]:
    """Queries whose ``(instance_id, query_id)`` comes at more than one arrival time: ``(how many, the first
    ``shown`` as (instance_id, query_id, arrivals, first, last))``.

    Redset's ``query_id`` is unique per instance. The row checks find a repeat at the same arrival (the
    copies are next to each other in a sorted log); one at another arrival needs every id of the log, so
    DuckDB groups them here, spilling to ``temp_dir``. The shards keep one row per query (the latest) while
    the windows count each arrival: a tester's file of 60,320 rows gave 60,315 and 60,320.
    """
    import shutil
    import uuid

    import duckdb

    spill = Path(temp_dir) / f"validate-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"temp_directory": str(spill), "preserve_insertion_order": False})
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            "SELECT count(*) OVER (), instance_id, query_id, arrivals, first_arrival, last_arrival FROM ("
            "  SELECT instance_id, query_id, count(DISTINCT arrival_timestamp) AS arrivals,"
            "         epoch_us(min(arrival_timestamp)) AS first_arrival,"
            "         epoch_us(max(arrival_timestamp)) AS last_arrival"
            "  FROM read_parquet(?, union_by_name = true)"
            "  WHERE instance_id IS NOT NULL AND query_id IS NOT NULL AND arrival_timestamp IS NOT NULL"
            "  GROUP BY instance_id, query_id HAVING count(DISTINCT arrival_timestamp) > 1)"
            " ORDER BY first_arrival, instance_id, query_id LIMIT ?",
            [[str(p) for p in paths], shown]).fetchall()
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return (int(rows[0][0]) if rows else 0), [(*row[1:4], datetime_from_us(row[4]), datetime_from_us(row[5]))
                                             for row in rows]
