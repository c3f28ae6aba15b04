"""The replay's saved position, and why only the replay itself can move it.

The position lives on the state topic, which any client with write access can append to, and a
plain (non-transactional) record is visible to ``read_committed`` readers too. So the record
carries an HMAC-SHA256 over its content, keyed by a random secret kept in
``<home>/state/replay-position.key`` (owner-only, created once). A replay resumes from the latest
record whose MAC verifies; anything else under ``<id>/position`` (forged, corrupt, or written by
a workbench with another home) is logged and skipped, so it can neither move the resume point
nor hide the real one.

Decision: a key file rather than Kafka's producer id/epoch, because no Kafka client API exposes
the producer id of a consumed record; rather than consumer-group offsets, because a plain
consumer can commit offsets for any group just as easily as it can write a record.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import orjson

from workbench.config import Settings

__all__ = ["KEY_FILE", "Position", "PositionSigner", "add_sent", "sent_mask"]

logger = logging.getLogger(__name__)

KEY_FILE = "replay-position.key"


@dataclass(frozen=True)
class Position:
    """Where a replay continues, written in the same transaction as the rows before it."""

    replay_id: str
    file: str
    fingerprint: str
    next_row: int
    rows_total: int
    #: The run that wrote it (``--run-token``): a restart of the same run resumes, a new run resets.
    run_token: str | None = None
    #: The next control-topic offset to read: a restart of the same run neither loses nor repeats commands.
    control_offset: int | None = None
    speedup: float | None = None
    paused: bool = False
    #: The row ranges ``[start, end)`` sent at least once (any run of this log under this home), merged:
    #: sent again after a seek or reset back in time, those rows are marked re-sent, so that stream
    #: aggregates count them once. Ranges, not a high-water mark: rows a forward seek skipped were never sent.
    sent_rows: tuple[tuple[int, int], ...] = ()


def add_sent(ranges: tuple[tuple[int, int], ...], start: int, end: int) -> tuple[tuple[int, int], ...]:
    """``ranges`` with ``[start, end)`` added, sorted and merged (touching ranges become one)."""
    if end <= start:
        return ranges
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*map(tuple, ranges), (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def sent_mask(ranges: tuple[tuple[int, int], ...], rows: np.ndarray) -> np.ndarray:
    """Per row index of ``rows``: whether it lies in one of the merged ``ranges``."""
    if not ranges:
        return np.zeros(len(rows), dtype=bool)
    starts = np.array([a for a, _ in ranges], dtype=np.int64)
    ends = np.array([b for _, b in ranges], dtype=np.int64)
    at = np.searchsorted(starts, rows, side="right") - 1
    return (at >= 0) & (rows < ends[np.maximum(at, 0)])


def _load_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # atomic and never replaces: two replays starting at once agree on one key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


class PositionSigner:
    """Encodes positions with their MAC and decodes only those that verify."""

    def __init__(self, settings: Settings) -> None:
        self._key = _load_key(settings.state_dir / KEY_FILE)

    def _mac(self, body: dict) -> str:
        return hmac.new(self._key, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()

    def encode(self, position: Position) -> bytes:
        body = asdict(position)
        return orjson.dumps({**body, "mac": self._mac(body)})

    def decode(self, value: bytes | None) -> Position | None:
        """The position in ``value``, or None when it is not one this workbench's replay wrote."""
        try:
            data = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("mac"), str):
            return None
        mac = data.pop("mac")
        names = {f.name for f in fields(Position)}
        # a position written before ``sent_rows`` existed verifies as it was written
        if set(data) not in (names, names - {"sent_rows"}) or not hmac.compare_digest(mac, self._mac(data)):
            return None
        try:
            if "sent_rows" in data:
                data["sent_rows"] = tuple((int(a), int(b)) for a, b in data["sent_rows"])
            return Position(**data)
        except (TypeError, ValueError):
            return None

    def accepts(self, value: bytes) -> bool:
        return self.decode(value) is not None
