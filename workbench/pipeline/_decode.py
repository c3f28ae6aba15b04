"""The ``redshift.query_events`` topic as the apps read it: raw bytes, decoded by the codec.

Value *and* key are read as bytes (``value_deserializer="bytes"``, ``key_deserializer="bytes"``),
so a malformed value or a key that is not UTF-8 reaches the app instead of failing in a Quix
deserializer, and can be dead-lettered. All decoding and validation is
:mod:`workbench.data.codec` (:func:`~workbench.data.codec.decode_values`, and
:func:`~workbench.data.codec.decode_row` for one-row JSON messages).
"""

from __future__ import annotations

from quixstreams import Application
from quixstreams.models import Topic

from workbench.config import Settings

__all__ = ["event_topic"]


def event_topic(app: Application, settings: Settings) -> Topic:
    """The ``redshift.query_events`` topic as raw bytes (value and key)."""
    return app.topic(settings.topic_query_events, value_deserializer="bytes", key_deserializer="bytes")
