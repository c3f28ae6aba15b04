"""Start-up of an app process: skip an import that costs seconds and that no app uses.

``quixstreams`` imports its JSON-schema serializers, which import ``jsonschema``, whose format
checkers import ``rfc3987_syntax`` when it is installed (it comes with Jupyter's
``jsonschema[format-nongpl]``). That module compiles a Lark grammar at import time: about 1 s of
CPU, several seconds of wall time on a loaded machine, before the app can start consuming. No
workbench app validates JSON schemas with IRI formats, so an app process marks the module as
absent; ``jsonschema`` imports it inside ``contextlib.suppress(ImportError)`` and simply has no
``iri`` format checker. Only app processes call this (``workbench app``, the supervisor's
launcher), never a library import: a notebook kernel keeps every checker.
"""

from __future__ import annotations

import sys

__all__ = ["SKIPPED_MODULES", "skip_unused_imports"]

#: Modules an app process never needs whose import is expensive.
SKIPPED_MODULES: tuple[str, ...] = ("rfc3987_syntax",)


def skip_unused_imports() -> list[str]:
    """Mark :data:`SKIPPED_MODULES` absent (unless imported already); returns the names marked."""
    marked = []
    for name in SKIPPED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
            marked.append(name)
    return marked
