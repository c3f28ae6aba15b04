"""``prepare``: turn Redset files or exports (any mix of files, folders, globs) into a replayable log.

The heavy lifting runs in DuckDB: each group of source files with one schema is read with
``read_parquet``, every column is mapped case-insensitively to a Redset column and coerced
(integral floats and numeric strings to int64, dictionary/large strings to string, naive
timestamps of any unit taken as UTC, booleans from 0/1 and t/f/true/false), rows that cannot be
repaired get a reason, and the valid rows are sorted out of core by ``(arrival_timestamp,
query_id)`` under a memory limit, spilling to a temp folder under ``WORKBENCH_HOME``. The sorted
stream is written by pyarrow with :data:`~workbench.data.schema.REDSET_SCHEMA` exactly, in row
groups of a fixed size, to a temp name that is renamed into place: the same inputs and options
give byte-identical output, and a killed run leaves the previous output untouched.

A value counts as *refused* when the source has it (not NULL, not NaN, not an empty string) but
it cannot become the Redset type: a non-integral float (``not_integral``), an infinite one
(``not_finite``), one past the range where floats hold every whole number (``inexact``), a
non-numeric id, a boolean written as ``2``... The whole row is then dropped, counted under
``<problem>:<column>`` and, for the first rows of each reason, written with its file, row number
and raw values to ``<out>.rejected.jsonl``.
Rows without an instance, query id or arrival time are dropped as ``null_key:<column>``, and rows
that validation would refuse (a negative duration, size or count: ``negative:<column>``; an arrival
outside the range every consumer can decode: ``time_range:arrival_timestamp``) likewise, so the
output always replays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import duckdb

import dataclasses
import datetime as dt
import difflib
import glob
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.data.exceptions import DataValidationError
from workbench.data.schema import (
    FALSE_WORDS,
    LABEL_SCHEMA,
    REDSET_SCHEMA,
    TRUE_WORDS,
    datetime_from_us,
    open_parquet,
)
from workbench.data.validation import (
    MAX_EVENT_TIME,
    MIN_EVENT_TIME,
    NON_NEGATIVE_COLUMNS,
    adjacent_repeats,
    cast_batch,
)

__all__ = ["DEFAULT_ROW_GROUP", "PrepareSummary", "prepare", "source_files"]

logger = logging.getLogger(__name__)

#: Rows per written row group: the replay reads one row group at a time, so this bounds its memory.
DEFAULT_ROW_GROUP = 131_072
#: Reasons kept in the rejected-rows sample, per reason.
SAMPLE_PER_REASON = 20
KEY_COLUMNS = ("instance_id", "query_id", "arrival_timestamp")
#: Other spellings of the label columns (exports of labelled logs from other tools).
LABEL_ALIASES = {"is_anomaly": "label_anomaly", "anomaly_kind": "label_kind"}
_NULL_WORDS = ("", "null", "none", "nan", "na", "n/a", "\\n")
_INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
              "UBIGINT", "UHUGEINT")
_SAFE_INTS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")
_FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")
#: The largest whole number up to which each float type holds every whole number.
_FLOAT_EXACT = {"FLOAT": 2**24, "REAL": 2**24, "DOUBLE": 2**53}


@dataclasses.dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare` read, dropped and wrote."""

    sources: tuple[Path, ...]
    outputs: tuple[Path, ...]
    rows_in: int
    rows_out: int
    rows_filtered: int
    rejected: dict[str, int]
    rejected_sample: Path | None
    coercions: tuple[str, ...]
    missing_columns: tuple[str, ...]
    first_arrival: dt.datetime | None
    last_arrival: dt.datetime | None
    seconds: float
    #: Source columns that match no Redset or label column (left out), each with a close Redset name or "".
    ignored_columns: tuple[tuple[str, str], ...] = ()

    @property
    def rows_rejected(self) -> int:
        """Rows dropped over all reasons."""
        return sum(self.rejected.values())

    def __str__(self) -> str:
        span = (f", {self.first_arrival:%Y-%m-%d %H:%M:%S} .. {self.last_arrival:%Y-%m-%d %H:%M:%S} UTC"
                if self.first_arrival and self.last_arrival else "")
        if not self.outputs:
            target = "nothing (no row left to write; an earlier output is left as it was)"
        elif len(self.outputs) == 1:
            target = str(self.outputs[0])
        else:
            target = f"{len(self.outputs)} files in {self.outputs[0].parent}"
        lines = [
            f"prepared {self.rows_out:,} of {self.rows_in:,} rows from {len(self.sources)} file(s) into {target}{span} "
            f"in {self.seconds:.1f} s ({self.rows_in / max(self.seconds, 1e-9):,.0f} rows/s)",
        ]
        if self.rows_filtered:
            lines.append(f"  filtered out (--instances/--start/--end/--sample-instances): {self.rows_filtered:,}")
        if self.rejected:
            lines.append(f"  rejected {self.rows_rejected:,} row(s) that cannot be repaired or repeat a query "
                         f"(sample: {self.rejected_sample}):")
            lines += [f"    {reason}: {count:,}" for reason, count in sorted(self.rejected.items())]
        if self.coercions:
            merged: dict[str, list[str]] = {}
            for note in self.coercions:
                kind, _, name = note.rpartition(": ")
                merged.setdefault(kind, []).append(name)
            lines += [f"  {kind}: {', '.join(names)}" for kind, names in merged.items()]
        if self.missing_columns:
            lines.append("  absent in the source, written as NULL: " + ", ".join(self.missing_columns))
        if self.ignored_columns:
            lines.append("  not Redset columns, left out: " + ", ".join(
                f"{name} (did you mean {close}?)" if close else name for name, close in self.ignored_columns))
        return "\n".join(lines)


# -- sources ----------------------------------------------------------------------------------
def source_files(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders (every ``*.parquet`` below, recursively) and globs; sorted, no duplicates."""
    found: dict[Path, None] = {}
    for source in sources:
        text = os.path.expanduser(os.fspath(source))
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".parquet")
            if not matches:
                msg = f"Folder {text!r} holds no .parquet files. Point at Redset's parts/ folder or a Parquet file."
                raise DataValidationError(msg, path=text)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                msg = f"Pattern {text!r} matches no file."
                raise DataValidationError(msg, path=text)
        else:
            msg = f"Source {text!r} does not exist. Pass Parquet files, folders of them or glob patterns."
            raise DataValidationError(msg, path=text)
        for match in matches:
            found.setdefault(match.resolve(), None)
    if not found:
        msg = "prepare() needs at least one source file."
        raise DataValidationError(msg)
    return sorted(found)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_TARGETS: dict[str, str] = {}
for _field in list(REDSET_SCHEMA) + list(LABEL_SCHEMA):
    _t = _field.type
    _TARGETS[_field.name] = ("integer" if pa.types.is_integer(_t) else "timestamp" if pa.types.is_timestamp(_t)
                             else "boolean" if pa.types.is_boolean(_t) else "string")


def _family(duck_type: str) -> str:
    t = duck_type.upper()
    if t in _INT_TYPES:
        return "integer"
    if t in _FLOAT_TYPES or t.startswith("DECIMAL"):
        return "float"
    if t == "VARCHAR" or t.startswith("ENUM"):
        return "string"
    if t == "BLOB":  # a byte array without the UTF-8 annotation (older Hive/Spark writers): text validate accepts
        return "binary"
    if t == "BOOLEAN":
        return "boolean"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    if t == "DATE":  # no time of day: taken as midnight, a day's queries would all arrive at once
        return "date"
    if t.endswith("[]"):
        return "list"
    if t == '"NULL"' or t == "NULL":
        return "null"
    if t.startswith("DURATION["):  # an Arrow duration (see _arrow_type): its unit decides the conversion
        return "duration_" + t[len("DURATION["):-1].lower()
    return t


def _arrow_type(arrow: pa.DataType | None, duck_type: str) -> str:
    """The type a column is converted from: DuckDB's, but an Arrow duration by its own name (``duration[us]``).

    DuckDB reads a Parquet duration as the bare BIGINT count of its unit: microseconds or seconds would be
    taken as milliseconds, 1000 times off, without a word.
    """
    return str(arrow) if arrow is not None and pa.types.is_duration(arrow) else duck_type


#: Time text read as a time: an ISO-8601 date and time of day (a date alone would put a day's queries
#: at midnight, as a DATE column would), with no zone (UTC), ``Z``/``UTC``/``GMT``, a numeric offset or
#: an IANA zone name. Abbreviations are refused: DuckDB reads ``BST`` as Bangladesh time, not British
#: summer time, and knows no ``CEST``; words (``epoch``, ``now``) are no times of a log.
_ISO_TEXT: Final = (r"(?i)[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}[T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
                    r" ?(Z|UTC|GMT|[+-][0-9]{2}(:?[0-9]{2})?|[A-Z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)+)?")

# Conversions that need only the column: (source family, target) -> (value SQL, problem); ``{c}`` is the
# quoted column. A value is present when it is not NULL (and, for floats, not NaN).
_PRESENT: Final = {"float": "({c} IS NOT NULL AND NOT isnan(CAST({c} AS DOUBLE)))"}
_ZERO_ONE: Final = "CASE WHEN {c} = 1 THEN true WHEN {c} = 0 THEN false END"
_DIRECT: Final[dict[tuple[str, str], tuple[str, str | None]]] = {
    ("integer", "integer"): ("TRY_CAST({c} AS BIGINT)", "out_of_range"),
    ("integer", "boolean"): (_ZERO_ONE, "not_a_boolean"),
    ("integer", "string"): ("CAST({c} AS VARCHAR)", None),
    ("float", "boolean"): (_ZERO_ONE, "not_a_boolean"),
    ("boolean", "boolean"): ("{c}", None),
    ("boolean", "integer"): ("CAST({c} AS BIGINT)", None),
    ("boolean", "string"): ("CAST({c} AS VARCHAR)", None),
    # the session time zone is UTC, so a naive timestamp (any unit) is taken as UTC
    ("timestamp", "timestamp"): ("CAST(CAST({c} AS TIMESTAMP) AS TIMESTAMPTZ)", "not_a_timestamp"),
    ("list", "string"): ("array_to_string({c}, ',')", None),
    ("binary", "string"): ("TRY(decode({c}))", "not_utf8"),
}


def _coerce(col: str, family: str, target: str) -> tuple[str, str, str | None] | None:
    """SQL (value, present, problem) turning source column ``col`` of ``family`` into ``target``.

    ``present`` is true when the source holds a value (NULL, NaN and null words are absent), so
    ``present AND value IS NULL`` means the value was refused, counted as ``problem``; ``problem``
    is None for a conversion that cannot fail (then the column is not even read when counting
    refusals). None: the types cannot meet.
    """
    c = _q(col)
    if family == "null":
        return f"NULL::{_sql_type(target)}", "false", None
    if family == "string":
        s = f"NULLIF(trim(CAST({c} AS VARCHAR)), '')"
        nulls = ", ".join(_lit(w) for w in _NULL_WORDS)
        present = f"({s} IS NOT NULL AND lower({s}) NOT IN ({nulls}))"
        if target == "string":
            return f"CAST({c} AS VARCHAR)", f"({c} IS NOT NULL)", None
        if target == "integer":
            as_double = f"TRY_CAST({s} AS DOUBLE)"
            # decimal text only: DuckDB's casts also read 0x10, 0b11 and 1_000, which no log means as numbers
            decimal = f"regexp_full_match({s}, '[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?')"
            # Digits (and a fraction of zeros) are read exactly; other forms (1.5e3) through a double, so
            # only where a double holds every whole number: "12345678901234567.5" is no integer, and
            # through a double it would become one.
            whole = f"regexp_extract({s}, '^([+-]?[0-9]+)[.]?0*$', 1)"
            value = (f"CASE WHEN NOT {present} THEN NULL WHEN NOT {decimal} THEN NULL "
                     f"WHEN {whole} <> '' THEN TRY_CAST({whole} AS BIGINT) "
                     f"WHEN abs({as_double}) > {2**53} OR {as_double} <> trunc({as_double}) THEN NULL "
                     f"ELSE TRY_CAST({as_double} AS BIGINT) END")
            return value, present, "not_an_integer"
        if target == "boolean":
            trues = ", ".join(_lit(w) for w in TRUE_WORDS)
            falses = ", ".join(_lit(w) for w in FALSE_WORDS)
            value = f"CASE WHEN lower({s}) IN ({trues}) THEN true WHEN lower({s}) IN ({falses}) THEN false END"
            return value, present, "not_a_boolean"
        if target == "timestamp":
            iso = f"regexp_full_match({s}, {_lit(_ISO_TEXT)})"
            return f"CASE WHEN {present} AND {iso} THEN TRY_CAST({s} AS TIMESTAMPTZ) END", present, "not_a_timestamp"
    if (family, target) in _DIRECT:
        template, problem = _DIRECT[family, target]
        present = _PRESENT.get(family, "({c} IS NOT NULL)")
        return template.format(c=c), present.format(c=c), problem
    if family == "integer" and target == "timestamp":
        # Epoch numbers: the unit follows from the magnitude (s, ms, µs or ns around the 2020s).
        v = f"TRY_CAST({c} AS BIGINT)"
        micros = (f"CASE WHEN abs({v}) >= 100000000000000000 THEN {v} // 1000 "
                  f"WHEN abs({v}) >= 100000000000000 THEN {v} "
                  f"WHEN abs({v}) >= 100000000000 THEN {v} * 1000 ELSE {v} * 1000000 END")
        return f"CAST(make_timestamp({micros}) AS TIMESTAMPTZ)", f"({c} IS NOT NULL)", "not_a_timestamp"
    if family.startswith("duration_") and target == "integer":
        # to whole milliseconds; finer units floored (as times are truncated), so -0.5 ms stays negative
        per_ms = {"duration_us": 1000, "duration_ns": 1_000_000}.get(family)
        if per_ms is not None:
            value = f"({c} // {per_ms} - CASE WHEN {c} % {per_ms} < 0 THEN 1 ELSE 0 END)"
            return value, f"({c} IS NOT NULL)", None
        scale = {"duration_s": 1000, "duration_ms": 1}.get(family)
        if scale is None:
            return None
        return f"TRY_CAST(CAST({c} AS HUGEINT) * {scale} AS BIGINT)", f"({c} IS NOT NULL)", "out_of_range"
    if family == "float" and target == "integer":
        present = _PRESENT["float"].format(c=c)
        return f"CASE WHEN {present} AND {c} = trunc({c}) THEN TRY_CAST({c} AS BIGINT) END", present, "not_integral"
    return None


def verify_pages(path: Path, *, progress: bool = False) -> None:
    """Read every page of ``path`` once with its checksum checked (where the writer stored one).

    DuckDB's reader does not check page checksums: a damaged page of a file that has them would
    decode into other values (times decades away, other ids) that the rules then refuse or, worse,
    keep. Pages without a checksum cannot be checked (pyarrow writes none unless asked).

    Raises
    ------
    DataValidationError
        Naming the file and row group that fails.
    """
    file = open_parquet(path, pre_buffer=False, buffer_size=1 << 20)
    groups = range(file.num_row_groups)
    if progress and file.num_row_groups > 1:
        from tqdm.auto import tqdm

        groups = tqdm(groups, unit="row groups", desc=f"checking {path.name}", dynamic_ncols=True, leave=False)
    for group in groups:
        try:
            for _ in file.iter_batches(batch_size=65_536, row_groups=[group], use_threads=False):
                pass  # decoding is the check; a batch at a time keeps memory flat
        except (pa.ArrowException, OSError) as exc:
            msg = (f"Source {str(path)!r} is damaged: row group {group} of {file.num_row_groups} cannot be read "
                   f"({str(exc).splitlines()[0][:200]}). Copy the file again from its origin.")
            raise DataValidationError(msg, path=str(path)) from exc


def _sql_type(target: str) -> str:
    return {"integer": "BIGINT", "string": "VARCHAR", "timestamp": "TIMESTAMPTZ", "boolean": "BOOLEAN"}[target]


@dataclasses.dataclass
class _Group:
    """Source files that share one schema, read by one ``read_parquet``."""

    files: list[Path]
    columns: dict[str, tuple[str, str]]  # Redset name -> (source name, DuckDB type)


def _describe(con: duckdb.DuckDBPyConnection, path: Path) -> list[tuple[str, str]]:
    import duckdb

    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_lit(str(path))})").fetchall()
    except duckdb.OutOfMemoryException as exc:  # the limit's fault, not the file's
        msg = (f"DuckDB ran out of memory reading {str(path)!r} under its memory limit (--memory-limit): raise it "
               f"({str(exc).splitlines()[0]}).")
        raise DataValidationError(msg, path=str(path)) from exc
    except Exception as exc:  # duckdb raises several error classes for a broken file
        msg = f"Source {str(path)!r} is not a readable Parquet file ({exc})."
        raise DataValidationError(msg, path=str(path)) from exc
    return [(row[0], row[1]) for row in rows]


def _redset_name(name: str) -> str:
    key = name.strip().lower()
    return LABEL_ALIASES.get(key, key)


def _refuse_two_columns(path: Path, key: str, first: str, second: str) -> None:
    msg = (f"Source {str(path)!r} has two columns that both map to {key!r} ({first!r} and {second!r}); "
           "column names are matched case-insensitively. Drop one of them.")
    raise DataValidationError(msg, path=str(path), column=second)


def _map_columns(path: Path, described: list[tuple[str, str]], stored: list[str]) -> dict[str, tuple[str, str]]:
    """Redset name -> (source name, DuckDB type); ``stored`` are the file's own column names.

    DuckDB renames a column whose name repeats another's up to letter case (``QUERY_ID`` beside
    ``query_id`` reads as ``QUERY_ID_1``), so two candidates for one column are looked for in the
    names the file stores: one of them would otherwise be dropped without a word.
    """
    wanted = set(_TARGETS)
    seen: dict[str, str] = {}
    for name in stored:
        key = _redset_name(name)
        if key in wanted and key in seen:
            _refuse_two_columns(path, key, seen[key], name)
        seen[key] = name
    mapped: dict[str, tuple[str, str]] = {}
    for name, duck_type in described:
        key = _redset_name(name)
        if key not in wanted:
            continue
        if key in mapped:
            _refuse_two_columns(path, key, mapped[key][0], name)
        mapped[key] = (name, duck_type)
    missing_keys = [k for k in KEY_COLUMNS if k not in mapped]
    if missing_keys:
        msg = (f"Source {str(path)!r} lacks the key column(s) {', '.join(missing_keys)} (matched "
               f"case-insensitively; it has {', '.join(n for n, _ in described[:12])}"
               f"{'...' if len(described) > 12 else ''}). Every query needs instance_id, query_id and "
               "arrival_timestamp.")
        raise DataValidationError(msg, path=str(path), column=missing_keys[0])
    return mapped


def _group_sql(group: _Group, labels: bool, raw: bool) -> tuple[str, list[str]]:
    """One SELECT over a group: canonical columns (or raw text when ``raw``), ``_reason``, ``_file``, ``_row``."""
    files = "[" + ", ".join(_lit(str(f)) for f in group.files) + "]"
    targets = list(REDSET_SCHEMA.names) + (list(LABEL_SCHEMA.names) if labels else [])
    values: list[str] = []
    reasons: list[str] = []
    coercions: list[str] = []
    for name in targets:
        target = _TARGETS[name]
        if name not in group.columns:
            values.append(f"NULL::{_sql_type(target)} AS {_q(name)}")
            continue
        source, duck_type = group.columns[name]
        family = _family(duck_type)
        # a duration is a count of milliseconds only for the Redset durations (*_ms), not a count or a size
        plan = None if family.startswith("duration_") and not name.endswith("_ms") else _coerce(source, family, target)
        if name == "label_kind" and family == "boolean":
            plan = None  # kinds "true" and "false" name nothing: validate and evaluate refuse it too
        if name == "label_kind" and family == "float":
            # kind codes as pandas writes them beside NULLs: 3.0 is kind "3" (schema.kind_names); NaN is NULL
            whole = f"{_PRESENT['float'].format(c=_q(source))} AND {_q(source)} = trunc({_q(source)})"
            plan = (f"CASE WHEN {whole} THEN CAST(TRY_CAST({_q(source)} AS BIGINT) AS VARCHAR) END",
                    _PRESENT["float"].format(c=_q(source)), "not_integral")
        if plan is None:
            msg = (f"Column {source!r} of {str(group.files[0])!r} is {duck_type}, which cannot become the "
                   f"Redset column {name!r} ({target}). Convert it before preparing, e.g. with DuckDB.")
            raise DataValidationError(msg, path=str(group.files[0]), column=source)
        value, present, problem = plan
        if family == "integer" and target == "integer" and duck_type.upper() in _SAFE_INTS:
            problem = None  # fits in int64: nothing to refuse
        if family != target or (family == "timestamp" and "TIME ZONE" not in duck_type.upper()):
            naive = (" (naive, taken as UTC)" if family == "timestamp" else
                     " (epoch numbers: s, ms, us or ns by their magnitude)" if target == "timestamp"
                     and family == "integer" else
                     " (as milliseconds, finer parts cut)" if family in ("duration_us", "duration_ns") else
                     " (as milliseconds)" if family == "duration_s" else "")
            coercions.append(f"{duck_type}{naive} -> {_sql_type(target)}: {name}")
        if source != name:
            coercions.append(f"renamed: {source} -> {name}")
        if raw:
            values.append(f"CAST({_q(source)} AS VARCHAR) AS {_q(name)}")
        else:
            values.append(f"{value} AS {_q(name)}")
        if name in KEY_COLUMNS:
            reasons.append(f"WHEN NOT {present} THEN {_lit('null_key:' + name)}")
        if target == "integer" and duck_type.upper() in _FLOAT_EXACT:
            # before "not_integral", which a float's infinity and a whole number past int64 also fail
            reasons.append(f"WHEN {present} AND isinf(CAST({_q(source)} AS DOUBLE)) THEN {_lit('not_finite:' + name)}")
            # beyond this a float does not hold every whole number: the value may be a rounded id
            limit = _FLOAT_EXACT[duck_type.upper()]
            reasons.append(f"WHEN {present} AND abs({_q(source)}) > {limit} THEN {_lit('inexact:' + name)}")
        # A NULL label_anomaly is a normal row (evaluate's rule): kept as NULL, not set aside with its query
        if problem is not None:
            reasons.append(f"WHEN {present} AND ({value}) IS NULL THEN {_lit(problem + ':' + name)}")
        reasons += _range_reasons(name, value)
    reason = "CASE " + " ".join(reasons) + " END AS _reason" if reasons else "NULL AS _reason"
    sql = (f"SELECT {', '.join(values)}, {reason}, _wb_file AS _file, file_row_number AS _row "
           f"FROM read_parquet({files}, union_by_name=true, filename='_wb_file', file_row_number=true)")
    return sql, coercions


def _range_reasons(name: str, value: str) -> list[str]:
    """CASE branches refusing a converted value that validation refuses (so the output replays).

    The rules are validation's: durations, sizes and counts are >= 0, and arrival times lie in the
    range every consumer can decode.
    """
    if name in NON_NEGATIVE_COLUMNS:
        return [f"WHEN ({value}) < 0 THEN {_lit('negative:' + name)}"]
    if name == "arrival_timestamp":
        low, high = (f"TIMESTAMPTZ {_lit(t.isoformat())}" for t in (MIN_EVENT_TIME, MAX_EVENT_TIME))
        return [f"WHEN ({value}) < {low} OR ({value}) >= {high} THEN {_lit('time_range:' + name)}"]
    return []


def _parse_time(value: str | dt.datetime | None, what: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            msg = f"--{what} must be an ISO date or date-time such as 2024-03-04 or 2024-03-04T12:00. Got {value!r}."
            raise DataValidationError(msg) from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- writing ----------------------------------------------------------------------------------
_DAY_US = 86_400_000_000


class _Writer:
    """Writes the sorted stream: exact row groups, one file or one file per UTC day, all in ``tmp_dir``."""

    def __init__(self, schema: pa.Schema, tmp_dir: Path, *, split_day: bool, single_name: str,
                 row_group: int) -> None:
        self.schema = schema
        self.tmp_dir = tmp_dir
        self.split_day = split_day
        self.single_name = single_name
        self.row_group = row_group
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._day: int | None = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self.rows = 0
        self.first_us: int | None = None
        self.last_us: int | None = None

    def _open(self, day: int | None) -> None:
        name = self.single_name if day is None else f"{dt.date(1970, 1, 1) + dt.timedelta(days=day):%Y-%m-%d}.parquet"
        self.files.append(name)
        self._writer = pq.ParquetWriter(self.tmp_dir / name, self.schema, compression="zstd",
                                        write_statistics=True, store_schema=True)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        table = pa.Table.from_batches(self._buffer, schema=self.schema)
        full = (table.num_rows // self.row_group) * self.row_group
        cut = table.num_rows if final else full
        if cut:
            assert self._writer is not None
            self._writer.write_table(table.slice(0, cut), row_group_size=self.row_group)
        rest = table.slice(cut).combine_chunks()
        self._buffer = rest.to_batches() if rest.num_rows else []
        self._buffered = rest.num_rows

    def _close_file(self) -> None:
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        stamps = pc.cast(batch.column("arrival_timestamp"), pa.int64()).to_numpy()
        if self.first_us is None:
            self.first_us = int(stamps[0])
        self.last_us = int(stamps[-1])
        self.rows += batch.num_rows
        if not self.split_day:
            if self._writer is None:
                self._open(None)
            self._append(batch)
            return
        days = stamps // _DAY_US
        start = 0
        while start < len(days):
            day = int(days[start])
            end = int(days.searchsorted(day, side="right"))
            if day != self._day:
                self._close_file()
                self._open(day)
                self._day = day
            self._append(batch.slice(start, end - start))
            start = end

    def _append(self, batch: pa.RecordBatch) -> None:
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        if self._buffered >= self.row_group:
            self._flush(final=False)

    def close(self) -> None:
        self._close_file()
        if not self.files and not self.split_day:  # an empty result is still a valid (empty) file
            self._open(None)
            self._close_file()


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` (file or folder) to ``out``, replacing what was there."""
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


class _Progress:
    """A tqdm bar fed from DuckDB's query progress (polled in a thread) while the sort runs."""

    def __init__(self, con: duckdb.DuckDBPyConnection, total: int, enabled: bool, desc: str) -> None:
        self.con = con
        self.enabled = enabled
        self._stop = threading.Event()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="rows", unit_scale=True, desc=desc, dynamic_ncols=True)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            try:
                share = float(self.con.query_progress())
            except Exception:
                continue
            if share >= 0 and self.bar is not None:
                self.bar.n = max(self.bar.n, int(self.bar.total * share / 100))
                self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self._thread.join()
            self.bar.n = self.bar.total
            self.bar.close()


def prepare(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    instances: Sequence[int] | None = None,
    start: str | dt.datetime | None = None,
    end: str | dt.datetime | None = None,
    sample_instances: int | None = None,
    seed: int = 0,
    split: str | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP,
    temp_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> PrepareSummary:
    """Map, coerce, filter, clean and sort Redset-schema Parquet sources into a replayable log.

    Parameters
    ----------
    sources : path, folder or glob, or a sequence of them
        Redset's ``full.parquet``, ``parts/``, samples, or exports of Redshift's system tables.
    out : path
        The Parquet file to write; with ``split="day"`` a folder of ``YYYY-MM-DD.parquet`` files
        (file order = time order), which ``workbench replay`` accepts as one log.
    instances : sequence of int, optional
        Keep only these instance ids.
    start, end : ISO string or datetime, optional
        Keep arrivals in ``[start, end)``; naive values are UTC.
    sample_instances : int, optional
        Keep a random choice of this many instances (after ``instances``), drawn with ``seed``.
    split : None or "day"
        One output file, or one per UTC day.
    memory_limit : str
        DuckDB's memory limit for the sort; beyond it DuckDB spills to ``temp_dir``.
    threads : int, optional
        DuckDB threads (default: DuckDB's, one per core).
    row_group_size : int
        Rows per row group (the replay's read unit).
    temp_dir : path, optional
        Spill folder (default ``<WORKBENCH_HOME>/tmp``); a private sub-folder is removed afterwards.
    progress : bool
        Show tqdm bars (rows/s and ETA).

    Returns
    -------
    PrepareSummary
        Counts read, written, filtered and rejected per reason, the output files and the span.

    Raises
    ------
    DataValidationError
        Naming the file and column for a missing source, an unreadable file, a missing key column
        or a column whose type cannot become the Redset type.
    """
    import duckdb

    started = time.monotonic()
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files = source_files(sources)
    out = Path(out).expanduser().resolve()
    if split not in (None, "day"):
        msg = f"split must be None or 'day'. Got {split!r}."
        raise DataValidationError(msg)
    if row_group_size < 1:
        msg = f"row_group_size must be >= 1. Got {row_group_size!r}."
        raise DataValidationError(msg)
    if split == "day" and out.is_file():
        msg = f"The output {str(out)!r} is a file; --split day writes a folder. Pass a folder name."
        raise DataValidationError(msg, path=str(out))
    if out in files:
        msg = f"The output {str(out)!r} is also a source; write to another path."
        raise DataValidationError(msg, path=str(out))
    start_ts, end_ts = _parse_time(start, "start"), _parse_time(end, "end")
    if start_ts is not None and end_ts is not None and start_ts >= end_ts:
        # refused before reading anything: it read every file, then said "filtered out" of every row
        msg = (f"start ({start_ts.isoformat()}) must be before end ({end_ts.isoformat()}): arrivals in "
               "[start, end) are kept.")
        raise DataValidationError(msg)
    if temp_dir is None:
        from workbench.config import get_settings

        temp_dir = get_settings().home / "tmp"
    temp_dir = Path(temp_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers_of_killed_runs(out, temp_dir)
    spill = temp_dir / f"prepare-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    spill.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(spill),
                                     "preserve_insertion_order": True, **({"threads": threads} if threads else {})})
    except duckdb.Error as exc:  # a memory limit or thread count DuckDB cannot read
        shutil.rmtree(spill, ignore_errors=True)
        msg = (f"prepare cannot start DuckDB with memory_limit={memory_limit!r} (--memory-limit, e.g. 1GB or 512MB)"
               f"{f' and threads={threads!r}' if threads else ''}: {str(exc).splitlines()[0]}")
        raise DataValidationError(msg) from exc
    try:
        con.execute("SET TimeZone = 'UTC'")
        # Progress is polled into tqdm (query_progress needs the bar enabled), never printed by DuckDB.
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        groups: dict[tuple, _Group] = {}
        ignored: dict[str, str] = {}
        rows_in = 0
        for path in files:
            try:
                source = pq.ParquetFile(path)
                stored = source.schema_arrow.names
            except (pa.ArrowException, OSError) as exc:
                msg = f"Source {str(path)!r} is not a readable Parquet file ({exc})."
                raise DataValidationError(msg, path=str(path)) from exc
            verify_pages(path, progress=progress)
            rows_in += source.metadata.num_rows
            arrow_types = {field.name: field.type for field in source.schema_arrow}
            described = [(name, _arrow_type(arrow_types.get(name), duck_type))
                         for name, duck_type in _describe(con, path)]
            mapped = _map_columns(path, described, stored)
            # DuckDB names a column without a name C<position>: the summary says what the file holds
            own = stored if len(stored) == len(described) else [name for name, _ in described]
            for (name, _), as_stored in zip(described, own, strict=True):
                if _redset_name(name) not in _TARGETS:  # a misspelt column would otherwise vanish without a word
                    close = difflib.get_close_matches(_redset_name(name), list(_TARGETS), n=1, cutoff=0.8)
                    ignored.setdefault(as_stored if as_stored.strip() else "(a column without a name)",
                                       close[0] if close else "")
            key = tuple(sorted(mapped.items()))
            groups.setdefault(key, _Group([], mapped)).files.append(path)
        # labels from some sources only are kept: the others' rows get NULL labels (not labelled), said below
        labels = any("label_anomaly" in g.columns for g in groups.values())
        coercions: dict[str, None] = {}
        parts, raw_parts = [], []
        for group in groups.values():
            sql, notes = _group_sql(group, labels, raw=False)
            parts.append(sql)
            coercions.update(dict.fromkeys(notes))
            raw_parts.append(_group_sql(group, labels, raw=True)[0])
        missing = sorted({name for g in groups.values() for name in REDSET_SCHEMA.names if name not in g.columns})
        missing += sorted({name for g in groups.values() for name in (LABEL_SCHEMA.names if labels else [])
                           if name not in g.columns})
        con.execute("CREATE TEMP VIEW prepared_input AS " + " UNION ALL ".join(parts))
        con.execute("CREATE TEMP VIEW raw_input AS " + " UNION ALL ".join(raw_parts))

        # Rejected rows: counts per reason and the first rows of each, in one scan.
        rejected: dict[str, int] = {}
        bar = _Progress(con, rows_in, progress, "check rows")
        try:
            sample_rows = con.execute(
                "SELECT _reason, count(*) OVER (PARTITION BY _reason) AS n, _file, _row, "
                "* EXCLUDE (_reason, _file, _row) FROM raw_input WHERE _reason IS NOT NULL "
                f"QUALIFY row_number() OVER (PARTITION BY _reason ORDER BY _file, _row) <= {SAMPLE_PER_REASON} "
                "ORDER BY _reason, _file, _row").fetchall()
        finally:
            bar.close()
        sample_cols = [d[0] for d in con.description]
        for row in sample_rows:
            rejected[row[0]] = int(row[1])

        conditions = ["_reason IS NULL"]
        if instances is not None:
            wanted = sorted({int(i) for i in instances})
            conditions.append(f"instance_id IN ({', '.join(map(str, wanted)) or 'NULL'})")
        if start_ts is not None:
            conditions.append(f"arrival_timestamp >= TIMESTAMPTZ {_lit(start_ts.isoformat())}")
        if end_ts is not None:
            conditions.append(f"arrival_timestamp < TIMESTAMPTZ {_lit(end_ts.isoformat())}")
        if sample_instances is not None:
            if sample_instances < 1:
                msg = f"sample_instances must be >= 1. Got {sample_instances!r}."
                raise DataValidationError(msg)
            present = [int(r[0]) for r in con.execute(
                f"SELECT DISTINCT instance_id FROM prepared_input WHERE {' AND '.join(conditions)} ORDER BY 1"
            ).fetchall()]
            chosen = sorted(random.Random(seed).sample(present, min(sample_instances, len(present))))
            conditions.append(f"instance_id IN ({', '.join(map(str, chosen)) or 'NULL'})")

        # A source whose label_anomaly holds NULLs (normal rows, evaluate's rule) keeps them: written as
        # false, a log nobody labelled (NULL on every row, evaluate.require_labels) would read as one
        # without anomalies. Only then is the column nullable; other outputs keep the generator's schema.
        null_labels = labels and con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM prepared_input WHERE label_anomaly IS NULL LIMIT 1)").fetchone()[0]
        label_fields = [f.with_nullable(True) if null_labels else f for f in LABEL_SCHEMA] if labels else []
        schema = pa.schema(list(REDSET_SCHEMA) + label_fields, metadata=REDSET_SCHEMA.metadata)
        # A total order: the stream key first, then every column, so ties sort the same every run.
        order = ", ".join(_q(n) for n in ["arrival_timestamp", "query_id", "instance_id",
                                          *[n for n in schema.names if n not in KEY_COLUMNS]])
        # _file/_row last: they only decide which of two identical rows is reported as the repeat.
        query = (f"SELECT {', '.join(_q(n) for n in schema.names)}, _file, _row FROM prepared_input "
                 f"WHERE {' AND '.join(conditions)} ORDER BY {order}, _file, _row")
        tmp_out.mkdir()
        writer = _Writer(schema, tmp_out, split_day=split == "day", single_name="log.parquet",
                         row_group=row_group_size)
        bar = _Progress(con, rows_in, progress, "read+sort")
        try:
            reader = con.execute(query).to_arrow_reader(65_536)
        finally:
            bar.close()
        write_bar = None
        if progress:
            from tqdm.auto import tqdm

            filtered = instances is not None or start_ts or end_ts or sample_instances is not None
            write_bar = tqdm(total=None if filtered else rows_in - sum(rejected.values()), unit="rows",
                             unit_scale=True, desc="write", dynamic_ncols=True)
        repeats = _Repeats()
        for batch in _batches(reader):
            batch = repeats.drop(batch)
            writer.add(cast_batch(batch, schema))
            if write_bar is not None:
                write_bar.update(batch.num_rows)
            if on_batch is not None:
                on_batch(writer.rows)
        writer.close()
        if write_bar is not None:
            write_bar.close()
    except duckdb.Error as exc:
        shutil.rmtree(tmp_out, ignore_errors=True)
        msg = f"prepare failed in DuckDB: {exc}"
        raise DataValidationError(msg) from exc
    except RuntimeError as exc:
        shutil.rmtree(tmp_out, ignore_errors=True)
        if "interrupted" in str(exc).lower():  # Ctrl-C inside a DuckDB query comes out as this, not as itself
            raise KeyboardInterrupt from exc
        raise
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)

    # Publish: a single file is renamed out of the temp folder; a split replaces the folder. A log of no rows
    # (filters that match nothing: a mistyped instance id or date) is not published: it replaced, and so
    # deleted, the log an earlier run had prepared under the same name.
    if writer.rows == 0:
        shutil.rmtree(tmp_out, ignore_errors=True)
        outputs: tuple[Path, ...] = ()
    elif split == "day":
        _replace(tmp_out, out)
        outputs = tuple(out / name for name in writer.files)
    else:
        if out.is_dir():
            _refuse_dir(out, tmp_out)
        os.replace(tmp_out / "log.parquet", out)
        tmp_out.rmdir()
        outputs = (out,)
    if repeats.count:
        rejected[_REPEAT_REASON] = repeats.count
    # the kept output keeps its own sample of rejected rows too (an empty run replaced it with its own)
    sample_path = _write_sample(out, sample_cols, sample_rows, repeats.samples(schema.names)) if outputs else None
    rows_out = writer.rows
    summary = PrepareSummary(
        sources=tuple(files), outputs=outputs, rows_in=rows_in, rows_out=rows_out,
        rows_filtered=rows_in - rows_out - sum(rejected.values()), rejected=rejected,
        rejected_sample=sample_path, coercions=tuple(coercions), missing_columns=tuple(missing),
        ignored_columns=tuple(ignored.items()),
        first_arrival=datetime_from_us(writer.first_us), last_arrival=datetime_from_us(writer.last_us),
        seconds=time.monotonic() - started,
    )
    logger.info("prepared %d of %d rows into %s", rows_out, rows_in, out if outputs else "nothing")
    return summary


#: The reason counted for a second copy of a query (same instance, query id and arrival).
_REPEAT_REASON = "duplicate:query_id"


class _Repeats:
    """Drops the second and later copies of a query from the sorted stream, and remembers a few.

    Redset's ``query_id`` is unique per instance. Overlapping exports merged into one log repeat
    rows; the total sort order puts copies (same arrival, query id and instance) next to each
    other, so they are found in one pass over the sorted stream, in bounded memory. The first
    copy in that order is kept (of identical rows, the one from the first file and row).
    """

    def __init__(self) -> None:
        self.count = 0
        self._prev: tuple[int, int, int] | None = None
        self._kept: list[dict[str, Any]] = []

    def drop(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` (with ``_file``/``_row``) without repeats, and without those two columns."""
        names = [n for n in batch.schema.names if n not in ("_file", "_row")]
        if batch.num_rows == 0:
            return batch.select(names)
        ts = pc.cast(batch.column("arrival_timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
        qid = batch.column("query_id").to_numpy(zero_copy_only=False)
        instance = batch.column("instance_id").to_numpy(zero_copy_only=False)
        same = np.zeros(batch.num_rows, bool)
        same[1:] = adjacent_repeats(ts, qid, instance)
        if self._prev is not None:
            same[0] = self._prev == (int(ts[0]), int(qid[0]), int(instance[0]))
        self._prev = (int(ts[-1]), int(qid[-1]), int(instance[-1]))
        repeated = np.flatnonzero(same)
        if len(repeated) == 0:
            return batch.select(names)
        self.count += len(repeated)
        for index in repeated[: max(0, SAMPLE_PER_REASON - len(self._kept))]:
            self._kept.append(batch.slice(int(index), 1).to_pylist()[0])
        return batch.filter(pa.array(~same)).select(names)

    def samples(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """The first repeats as lines of ``<out>.rejected.jsonl``."""
        return [{"reason": _REPEAT_REASON, "file": row["_file"], "row": row["_row"],
                 "rows_with_this_reason": self.count, "values": {n: row[n] for n in names}}
                for row in self._kept]


def _refuse_dir(out: Path, tmp_out: Path) -> None:
    shutil.rmtree(tmp_out, ignore_errors=True)
    msg = f"The output {str(out)!r} is a folder; pass a file name, or split='day' to write a folder."
    raise DataValidationError(msg, path=str(out))


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


#: The end of the name of a run's spill or output folder: ``-<pid>-<8 hex digits>``.
_RUN_FOLDER: Final = re.compile(r"-(\d+)-[0-9a-f]{8}$")


def _remove_leftovers_of_killed_runs(out: Path, temp_dir: Path) -> None:
    """Remove the spill and output folders of earlier runs killed with SIGKILL (no ``finally`` ran): they
    stayed for good, megabytes to gigabytes each. A folder's name carries its run's pid; a live run's stays."""
    from workbench._fs import pid_alive

    candidates = [*out.parent.glob(f".{glob.escape(out.name)}.tmp-*"), *temp_dir.glob("prepare-*")]
    for path in candidates:
        named = _RUN_FOLDER.search(path.name)  # both kinds end in -<pid>-<8 hex>
        if path.is_dir() and named and not pid_alive(int(named.group(1))):
            logger.info("removing %s, left by a prepare that was killed", path)
            shutil.rmtree(path, ignore_errors=True)


def _write_sample(out: Path, columns: list[str], rows: list[tuple], more: Sequence[dict] = ()) -> Path | None:
    """``<out>.rejected.jsonl``: the first rejected rows of each reason with file, row and raw values.

    ``more`` are lines already in the file's format (the repeated queries, found while writing).
    """
    path = out.with_name(out.name + ".rejected.jsonl")
    if not rows and not more:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            record = dict(zip(columns, row, strict=True))
            line = {"reason": record.pop("_reason"), "file": record.pop("_file"), "row": record.pop("_row"),
                    "rows_with_this_reason": record.pop("n"), "values": record}
            fh.write(json.dumps(line, sort_keys=False, default=str) + "\n")
        for line in more:
            fh.write(json.dumps(line, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path
