"""Redset data: the schema, its validation, the message codec and a synthetic generator."""
