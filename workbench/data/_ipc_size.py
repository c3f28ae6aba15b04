"""How large an Arrow IPC stream decodes, read from its metadata before anything is decoded.

A message of a few kilobytes can declare gigabytes: compressed buffers carry their decoded size
(zstd turns 23 KB into 640 MB of zeros), and a column of Arrow's null type has a length but no
buffer at all, so a 2 KB message can hold 10^8 NULLs in every column, which the conversion to
the event schema then allocates (8 bytes a value). Arrow's reader allocates what the message
declares, so a single message could take an app's memory, and the same message again after every
restart. :func:`declared_bytes` reads the sizes from the stream's flatbuffer metadata (the
``Message``, ``RecordBatch`` and ``DictionaryBatch`` tables of Arrow's ``Message.fbs``) without
decompressing anything: the decoded size of every buffer (for a compressed buffer, the int64 its
body starts with) plus 8 bytes for every value of every column (what the event schema's columns
take once converted). A stream it cannot walk is left to Arrow's reader, which names the fault.
"""

from __future__ import annotations

import struct
from typing import Final

import pyarrow as pa

__all__ = ["compressed_bytes", "declared_bytes"]

_RECORD_BATCH: Final = 3  # MessageHeader union tags
_DICTIONARY_BATCH: Final = 2
_VALUE_BYTES: Final = 8
_LONG: Final = struct.Struct("<q")


class _Table:
    """One flatbuffer table: its fields by slot (scalars, sub-tables and vectors of structs)."""

    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position
        vtable = position - struct.unpack_from("<i", data, position)[0]
        size = struct.unpack_from("<H", data, vtable)[0]
        self.slots = [struct.unpack_from("<H", data, vtable + 4 + 2 * i)[0] for i in range((size - 4) // 2)]

    def _field(self, slot: int) -> int | None:
        offset = self.slots[slot] if slot < len(self.slots) else 0
        return self.position + offset if offset else None

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._field(slot)
        return default if at is None else struct.unpack_from(fmt, self.data, at)[0]

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return None if at is None else _Table(self.data, at + struct.unpack_from("<I", self.data, at)[0])

    def pairs(self, slot: int) -> tuple[int, ...]:
        """A vector of two-long structs (FieldNode, Buffer), flat: first, second, first, second, ..."""
        at = self._field(slot)
        if at is None:
            return ()
        start = at + struct.unpack_from("<I", self.data, at)[0]
        count = struct.unpack_from("<I", self.data, start)[0]
        return struct.unpack_from(f"<{2 * count}q", self.data, start + 4)


def _batch_table(message: pa.ipc.Message) -> _Table | None:
    """The RecordBatch table of a record-batch or dictionary-batch message (None for other messages)."""
    data = message.metadata.to_pybytes()
    root = _Table(data, struct.unpack_from("<I", data, 0)[0])
    kind = root.scalar(1, "<B")  # Message.header_type
    header = root.table(2)  # Message.header
    if header is not None and kind == _DICTIONARY_BATCH:
        return header.table(1)  # DictionaryBatch.data
    return header if kind == _RECORD_BATCH else None


def _batch_bytes(batch: _Table, body: pa.Buffer) -> int:
    """Decoded bytes of one RecordBatch table whose body is ``body`` (Python ints: no wrap-around)."""
    buffers = batch.pairs(2)  # RecordBatch.buffers: offset, length, offset, length, ...
    values = sum(n for n in batch.pairs(1)[::2] if n > 0) * _VALUE_BYTES  # RecordBatch.nodes: length, nulls, ...
    if batch.table(3) is None:  # no RecordBatch.compression: the buffers are slices of the body (a length
        return min(sum(n for n in buffers[1::2] if n > 0), body.size) + values  # Arrow ignores may claim any size)
    # compressed: each buffer of 8 bytes or more starts with its decoded size (-1: stored as it is)
    total, size = values, body.size
    for offset, length in zip(buffers[::2], buffers[1::2], strict=True):
        if length >= _LONG.size:
            if not 0 <= offset <= size - _LONG.size:
                msg = "a buffer lies outside the body"
                raise ValueError(msg)
            declared = _LONG.unpack_from(body, offset)[0]
            total += length - _LONG.size if declared < 0 else declared
        elif length > 0:
            total += length
    return total


_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_U16: Final = struct.Struct("<H")


def _slot(data: bytes, table: int, slot: int) -> int:
    """Position of field ``slot`` of the table at ``table``, or 0 when the field is absent."""
    vtable = table - _I32.unpack_from(data, table)[0]
    if _U16.unpack_from(data, vtable)[0] <= 4 + 2 * slot:
        return 0
    offset = _U16.unpack_from(data, vtable + 4 + 2 * slot)[0]
    return table + offset if offset else 0


def compressed_bytes(message: pa.ipc.Message) -> int:
    """The decoded bytes of one record-batch message whose buffers are compressed, else 0 (nothing to decompress).

    The per-message test of the packed-Arrow fast path: a few struct reads when the batch is not compressed.
    """
    try:
        data = message.metadata.to_pybytes()
        root = _U32.unpack_from(data, 0)[0]
        kind = _slot(data, root, 1)  # Message.header_type
        header = _slot(data, root, 2)  # Message.header
        if not kind or not header or data[kind] != _RECORD_BATCH:
            return 0
        batch = header + _U32.unpack_from(data, header)[0]
        if not _slot(data, batch, 3):  # RecordBatch.compression absent: the buffers are the body's own bytes
            return 0
        return _batch_bytes(_Table(data, batch), message.body)
    except (ValueError, IndexError, struct.error):  # Arrow's reader names what is wrong with it
        return 0


def declared_bytes(value: bytes) -> int | None:
    """The bytes the batches of IPC stream ``value`` decode to (see the module), or None if it cannot be read."""
    reader = pa.BufferReader(value)
    total = 0
    try:
        while True:
            message = pa.ipc.read_message(reader)
            batch = _batch_table(message)
            if batch is not None:
                total += _batch_bytes(batch, message.body)
    except EOFError:  # the end-of-stream marker, or the end of the bytes
        return total
    except (pa.ArrowException, OSError, ValueError, IndexError, struct.error):
        return None if total == 0 else total
