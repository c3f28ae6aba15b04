"""Start-up of an app process: skip imports that cost a large share of the start and that no app uses.

Only app processes call :func:`skip_unused_imports` (``workbench app``, the supervisor's launcher),
never a library import: a notebook kernel keeps every import as it is.

``rfc3987_syntax``
    ``quixstreams`` imports its JSON-schema serializers, which import ``jsonschema``, whose format
    checkers import ``rfc3987_syntax`` when it is installed (it comes with Jupyter's
    ``jsonschema[format-nongpl]``). That module compiles a Lark grammar at import time: about 1 s
    of CPU. No workbench app validates JSON schemas with IRI formats, so an app process marks the
    module as absent; ``jsonschema`` imports it inside ``contextlib.suppress(ImportError)`` and
    simply has no ``iri`` format checker.

Confluent's schema-registry client and httpx (:func:`import_quixstreams`)
    Quix Streams imports ``confluent_kafka.schema_registry`` in its JSON serializer module (and
    with it httpx, authlib, joserfc, cryptography, attrs, fastavro...) and ``httpx`` in its
    configuration-service lookup, at import time: about 0.4-0.5 s of CPU, although only a
    serializer configured with a schema registry or that lookup use them; no workbench app does.
    So an app imports ``quixstreams`` while stand-in modules sit in ``sys.modules`` for
    :data:`DEFERRED_NAMES`; Quix binds the stand-ins, and they leave ``sys.modules`` as soon as
    ``quixstreams`` is imported, so any later import of those modules gets the real ones. The
    first *use* of a stand-in (constructing a schema-registry client or serializer, calling a
    subject-name strategy, any attribute of the httpx stand-in) imports the real modules and
    rebinds every stand-in in Quix's modules to the real object, so Quix's ``except
    SchemaRegistryError`` clauses, which can only run after such a use, catch the real error. A
    name Quix imports that the stand-ins lack (after an upgrade) imports the real module at once:
    slower, never wrong. This is the one place that relies on which names Quix's modules import;
    ``tests/test_startup.py`` checks it on the installed Quix and fails loudly when that changes.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import Any, Final

__all__ = ["DEFERRED_NAMES", "SKIPPED_MODULES", "import_quixstreams", "skip_unused_imports"]

logger = logging.getLogger(__name__)

#: Modules an app process never needs whose import is expensive.
SKIPPED_MODULES: tuple[str, ...] = ("rfc3987_syntax",)

#: The modules deferred while quixstreams (3.28) is imported, with the names Quix takes from them at
#: import time (``from module import name``, or ``module.name`` in a signature's annotation).
DEFERRED_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "confluent_kafka.schema_registry": ("SchemaRegistryClient", "SchemaRegistryError", "SchemaReference",
                                        "reference_subject_name_strategy", "topic_subject_name_strategy"),
    "confluent_kafka.schema_registry.json_schema": ("JSONSerializer", "JSONDeserializer"),
    "httpx": ("Client", "Response"),
}


def skip_unused_imports() -> list[str]:
    """Mark :data:`SKIPPED_MODULES` absent (unless imported already), then :func:`import_quixstreams`.

    Returns the modules marked absent or deferred.
    """
    marked = []
    for name in SKIPPED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
            marked.append(name)
    if import_quixstreams():
        marked.extend(DEFERRED_NAMES)
    return marked


class _StandInType(type):
    """Metaclass of a stand-in for a class or function: calling it calls the real object."""

    _module: str
    _name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return getattr(_resolve()[cls._module], cls._name)(*args, **kwargs)


class _StandInModule(types.ModuleType):
    """A stand-in module: its first attribute use (other than a dunder) resolves every stand-in."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system's probes (__path__, ...) must not import anything
            raise AttributeError(name)
        return getattr(_resolve()[self.__name__], name)


def _stand_in_module(module: str, names: tuple[str, ...]) -> _StandInModule:
    stand_in = _StandInModule(module, f"Stand-in for {module} while quixstreams is imported.")
    for name in names:
        # An exception class, so that a Quix `except (SchemaRegistryError, ...)` clause stays valid
        # Python even before the stand-ins are rebound (it cannot be reached before that).
        setattr(stand_in, name, _StandInType(name, (Exception,), {
            "_module": module, "_name": name, "__module__": __name__,
            "__doc__": f"Stand-in for {module}.{name} until first use."}))
    return stand_in


def _resolve() -> dict[str, types.ModuleType]:
    """Import the deferred modules and rebind every stand-in in Quix's modules; returns the real modules."""
    for module in DEFERRED_NAMES:
        if isinstance(sys.modules.get(module), _StandInModule):
            del sys.modules[module]
    real = {module: importlib.import_module(module) for module in DEFERRED_NAMES}
    for name, module in list(sys.modules.items()):
        if not name.startswith("quixstreams") or module is None:
            continue
        namespace = vars(module)
        for key, value in list(namespace.items()):
            if isinstance(value, _StandInModule):
                namespace[key] = real[value.__name__]
            elif isinstance(value, _StandInType):
                namespace[key] = getattr(real[value._module], value._name)
    return real


def import_quixstreams() -> bool:
    """Import ``quixstreams`` without Confluent's schema-registry client and httpx (see the module docstring).

    Returns True when all of :data:`DEFERRED_NAMES` stayed unimported; False when ``quixstreams``
    or one of them was imported already, or when Quix needed a name the stand-ins lack (logged).
    """
    if "quixstreams" in sys.modules or any(m in sys.modules for m in DEFERRED_NAMES):
        return False
    import confluent_kafka  # noqa: F401  # the real parent package of the stand-ins

    stand_ins = {module: _stand_in_module(module, names) for module, names in DEFERRED_NAMES.items()}
    sys.modules.update(stand_ins)
    try:
        importlib.import_module("quixstreams")
    finally:
        for module, stand_in in stand_ins.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]
    imported = [m for m in DEFERRED_NAMES if m in sys.modules]
    if imported:
        logger.warning("quixstreams used more of %s at import than workbench/pipeline/_imports.py defers; "
                       "imported them (slower start-up)", imported)
    return not imported
