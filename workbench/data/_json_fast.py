"""The vectorised path of :func:`workbench.data.codec.decode_values` for one-row JSON messages.

A batch of JSON messages costs a few µs per message on the exact per-message path
(:func:`workbench.data.codec._json_row`: a dict per message, a Python check per value, one
``datetime`` per time, the Arrow batch built from the dicts). Here each value is decoded by
``msgspec`` into a typed struct, which checks in C what that path checks in Python (exactly the
24 names, each value of its column's JSON type, no null in a required column, integers within
int64); the batch is then built column by column, and ``arrival_timestamp`` is converted by one
Arrow cast when it has the form every producer of ours writes (``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``).
What msgspec does not check is checked on the columns or the raw bytes: no negative duration,
size or count (one minimum per column), and no name twice (msgspec, like any JSON reader, keeps
the last copy): without a backslash, a message whose time has that form holds at least 24 + 3
colons, and exactly that many only if no name repeats, which one count over the batch's bytes
tells.

The path accepts a subset of what the per-message path accepts, with the same values: any message
it does not accept (invalid JSON, a wrong type, a time in another ISO form, a key that does not
match, ...) is handed back, and the caller judges it on the exact path, which accepts it or names
the reason. ``tests/test_codec_fast.py`` checks both paths agree on the fuzz corpus.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import datetime
from itertools import repeat
from typing import Annotated, Final

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.data.schema import NON_NEGATIVE_COLUMNS, REDSET_SCHEMA

__all__ = ["decode_json_batch"]

_SCHEMA: Final = REDSET_SCHEMA.remove_metadata()
_TIME_COLUMN: Final = _SCHEMA.get_field_index("arrival_timestamp")
_INSTANCE_COLUMN: Final = _SCHEMA.get_field_index("instance_id")
_INT64: Final = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


def _wire_type(field: pa.Field) -> object:
    if pa.types.is_timestamp(field.type):
        kind: object = str  # converted (and checked) column-wise below
    elif pa.types.is_integer(field.type):
        kind = _INT64
    elif pa.types.is_boolean(field.type):
        kind = bool
    else:
        kind = str
    return kind | None if field.nullable else kind


#: One event as msgspec decodes it: every column required (absent is an error, null is not),
#: unknown names refused. ``gc=False``: its values are never containers, so no cycle to track.
_Event = msgspec.defstruct("_Event", [(f.name, _wire_type(f)) for f in _SCHEMA],
                           forbid_unknown_fields=True, gc=False)
_DECODE: Final = msgspec.json.Decoder(_Event).decode
#: One getter per column, in schema order: a column is read straight off the structs (a tuple per
#: struct and a transpose cost twice as much).
_GETTERS: Final = [operator.attrgetter(f.name) for f in _SCHEMA]
_WIRE_TYPES: Final = [pa.string() if i == _TIME_COLUMN else f.type for i, f in enumerate(_SCHEMA)]
#: The time form the fast path converts (RE2 syntax; ``\z``: the end of the text, not of a line).
_CANONICAL_TIME: Final = r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?\+00:00\z"
_PLACEHOLDER_TIME: Final = pa.scalar("1970-01-01T00:00:00+00:00")
#: Colons in a message of the 24 names, each once, whose time has the canonical form (its 3) and
#: whose other strings hold none.
_COLONS: Final = len(_SCHEMA) + 3
_NON_NEGATIVE: Final = [_SCHEMA.get_field_index(name) for name in NON_NEGATIVE_COLUMNS]


def _decode_each(values: Sequence[bytes]) -> tuple[list[object], list[int], list[int]]:
    """The structs of the values that decode, their indices, and the indices of the others."""
    try:  # the common case: every value decodes, one C-level loop
        return list(map(_DECODE, values)), list(range(len(values))), []
    except Exception:  # any failure: find which values fail, the exact path names why
        pass
    structs, ok, rest = [], [], []
    for i, value in enumerate(values):
        try:
            structs.append(_DECODE(value))
        except Exception:  # msgspec raises DecodeError, ValidationError or UnicodeDecodeError
            rest.append(i)
            continue
        ok.append(i)
    return structs, ok, rest


def _times(text: pa.Array, time_min_us: int, time_max_us: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """``arrival_timestamp`` strings as timestamps, which of them the fast path may accept, and which
    have the canonical form."""
    canonical = pc.match_substring_regex(text, _CANONICAL_TIME)
    try:
        times = pc.cast(pc.if_else(canonical, text, _PLACEHOLDER_TIME), _SCHEMA.field(_TIME_COLUMN).type)
    except pa.ArrowInvalid:  # the form holds but the date does not exist (e.g. February 30): find them
        mask = canonical.to_numpy(zero_copy_only=False).copy()
        strings = text.to_pylist()
        for i in np.flatnonzero(mask).tolist():
            try:
                datetime.fromisoformat(strings[i])
            except ValueError:
                mask[i] = False
        times = pc.cast(pc.if_else(pa.array(mask), text, _PLACEHOLDER_TIME), _SCHEMA.field(_TIME_COLUMN).type)
        canonical = pa.array(mask)
    us = np.frombuffer(times.buffers()[1], dtype=np.int64, count=len(times), offset=times.offset * 8)
    form = canonical.to_numpy(zero_copy_only=False)
    return times, form & (us >= time_min_us) & (us <= time_max_us), form


def _names_once(values: Sequence[bytes], time_ok: np.ndarray) -> np.ndarray | None:
    """Which values certainly hold no name twice (the others: the exact path), or None for all.

    ``time_ok`` marks the values whose time has the canonical form (3 colons unless escaped).
    """
    joined = b"".join(values)
    if joined.count(b":") == _COLONS * len(values) and b"\\" not in joined and time_ok.all():
        return None  # each holds at least _COLONS: so each exactly that many
    colons = np.fromiter(map(bytes.count, values, repeat(b":")), dtype=np.int64, count=len(values))
    plain = np.fromiter(map(operator.not_, map(operator.contains, values, repeat(b"\\"))), dtype=bool,
                        count=len(values))
    return (colons == _COLONS) & plain


def _non_negative(arrays: list[pa.Array]) -> np.ndarray | None:
    """Which rows hold no negative duration, size or count, or None for all."""
    ok = None
    for i in _NON_NEGATIVE:
        lowest = pc.min(arrays[i]).as_py()
        if lowest is not None and lowest < 0:
            row_ok = ~pc.fill_null(pc.less(arrays[i], 0), False).to_numpy(zero_copy_only=False)
            ok = row_ok if ok is None else ok & row_ok
    return ok


def decode_json_batch(values: Sequence[bytes], instance_ids: np.ndarray | None, *, time_min_us: int,
                      time_max_us: int) -> tuple[pa.RecordBatch | None, list[int], list[int]]:
    """Decode one-row JSON values (``bytes``) into one record batch where the fast path can.

    Parameters
    ----------
    values : sequence of bytes
        One JSON event per value.
    instance_ids : numpy int64 array, optional
        The instance id each message's key names; a row whose ``instance_id`` differs is handed back.
    time_min_us, time_max_us : int
        The event times (epoch µs, inclusive) the contract accepts.

    Returns
    -------
    (batch, accepted, rest)
        The rows of the accepted values (None if there are none) with the event schema, the
        indices of those values (ascending), and the indices of the values to judge on the exact path.
    """
    structs, accepted, rest = _decode_each(values)
    if not structs:
        return None, [], rest
    arrays = [pa.array(list(map(get, structs)), type=typ) for get, typ in zip(_GETTERS, _WIRE_TYPES, strict=True)]
    arrays[_TIME_COLUMN], ok, canonical = _times(arrays[_TIME_COLUMN], time_min_us, time_max_us)
    once = _names_once(values if not rest else [values[i] for i in accepted], canonical)
    if once is not None:
        ok &= once
    non_negative = _non_negative(arrays)
    if non_negative is not None:
        ok &= non_negative
    if instance_ids is not None:
        ok &= arrays[_INSTANCE_COLUMN].to_numpy() == instance_ids[accepted]
    batch = pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA)
    if not ok.all():
        keep = np.flatnonzero(ok)
        rest = sorted(rest + [accepted[i] for i in np.flatnonzero(~ok).tolist()])
        accepted = [accepted[i] for i in keep.tolist()]
        batch = batch.take(pa.array(keep)) if len(keep) else None
    return batch, accepted, rest
