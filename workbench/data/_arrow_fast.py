"""The batched path of :func:`workbench.data.codec.decode_values` for packed Arrow messages.

Every Arrow value our replay writes is one IPC stream: the schema message of the event schema
(no metadata), one record batch message, the end-of-stream marker. The per-message path opens a
stream reader per value (it parses the schema again), builds a table of the one batch and then
checks it (~100 µs a message, ~1.5 µs an event at the replay's ~65 rows a message; the packed
stream's largest cost in the consuming apps). Here a value that starts with exactly those schema
bytes and ends with the marker is read as its one batch message against the known schema; the
checks the per-message path runs on each batch that are about values (no null in a required
column, times in range, every row's instance id the key's) then run once over all such batches.

The path accepts a subset of what the per-message path accepts, with the same values: a value it
cannot read, a batch that fails its full validation or whose ``rows`` header or key does not fit
goes back to the per-message path, and so do all of them when a check over the whole set fails.
That path names the fault. ``tests/test_codec_arrow_fast.py`` checks both paths agree.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from workbench.data._ipc_size import compressed_bytes
from workbench.data.schema import REDSET_SCHEMA

__all__ = ["read_canonical"]

_SCHEMA: Final = REDSET_SCHEMA.remove_metadata()


def _stream_parts(schema: pa.Schema) -> tuple[bytes, bytes]:
    """The bytes an IPC stream of ``schema`` starts with (its schema message) and ends with (the marker)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    whole = sink.getvalue().to_pybytes()
    return whole[:-8], whole[-8:]


_PREFIX, _END = _stream_parts(_SCHEMA)


def read_canonical(value: object, max_decoded_bytes: int) -> pa.RecordBatch | None:
    """The one record batch of a value in the replay's exact Arrow layout, else None (not validated).

    None also for a value that layout does not read, or whose compressed buffers would decode to more
    than ``max_decoded_bytes``: the per-message path judges it.
    """
    if type(value) is not bytes or not value.startswith(_PREFIX) or not value.endswith(_END):
        return None
    try:
        reader = pa.BufferReader(value)  # zero-copy over the bytes
        reader.seek(len(_PREFIX))
        message = pa.ipc.read_message(reader)
        if message.type != "record batch" or reader.tell() != len(value) - len(_END):
            return None
        if compressed_bytes(message) > max_decoded_bytes:  # decompressing would allocate it: the exact path refuses
            return None
        return pa.ipc.read_record_batch(message, _SCHEMA)
    except Exception:  # whatever fails here, the per-message path names it
        return None
