"""Helpers the report notebooks share: one-call setup, parameter checks and parsing, data discovery.

Each notebook has a ``parameters`` cell of ``name: type = default  # help`` lines, then
``settings = setup(globals())``: it warns about names papermill injected that the parameters cell
does not declare (typos such as ``instance=``), renders charts as offline SVG, sets pandas'
display options and returns the settings (``WORKBENCH_HOME`` from the environment).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from workbench.config import Settings
from workbench.exceptions import ConfigurationError

__all__ = [
    "PARAMETER_CHOICES",
    "PARAMETER_RANGES",
    "UnknownParameterWarning",
    "check_parameter_ranges",
    "check_parameter_types",
    "check_parameters",
    "find_labelled_log",
    "open_workbench",
    "parse_instances",
    "parse_list",
    "parse_range",
    "parse_reason",
    "parse_time",
    "parse_versions",
    "setup",
    "setup_charts",
    "stop_if_asked",
    "table_or_note",
    "wait_for_replay",
]

logger = logging.getLogger(__name__)


class UnknownParameterWarning(UserWarning):
    """A parameter was passed to a notebook that its ``parameters`` cell does not declare."""


_PARAMETER_TYPES = (str, int, float, bool, list, dict, type(None))
_SHELL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
#: Set in the notebook's namespace by :func:`setup` once its parameters were checked.
_CHECKED_MARK = "_workbench_parameters_checked"


def check_parameters(namespace: Mapping[str, Any], before: Iterable[str] = ()) -> list[str]:
    """Warn about (and return) injected names the parameters cell does not declare.

    Parameters
    ----------
    namespace : mapping
        The notebook's ``globals()`` after the parameters (and any injected) cell.
    before : iterable of str
        Names that existed before the parameters cell (optional: without them, any undeclared
        global holding a plain value, as papermill injects them, counts).
    """
    declared = set(namespace.get("__annotations__", {}))
    if not declared:
        # A parameters cell written without types (`start = "..."`) declares nothing to check against:
        # every one of its names read as unknown ("This notebook accepts []") although each was used.
        return []
    unknown = sorted(n for n in set(namespace) - set(before) - declared
                     if not n.startswith("_") and n not in _SHELL_NAMES
                     and isinstance(namespace[n], _PARAMETER_TYPES))
    if unknown:
        msg = (f"Unknown notebook parameter(s) {unknown}: they are ignored. "
               f"This notebook accepts {sorted(declared)}; check the spelling.")
        warnings.warn(msg, UnknownParameterWarning, stacklevel=2)
    return unknown


_TYPE_NAMES = {int: "a whole number such as 10", float: "a number such as 600.0", bool: "True or False",
               type(None): "None"}


#: Text parameters whose parsers take a number as well (``instances = 18``).
_TEXT_TAKES_NUMBERS: Final = frozenset({"instances"})


def _text_fits(name: str, value: Any) -> bool:
    """Whether a ``str`` parameter's value is something its parser reads: text, a list (``instances``,
    ``versions``), a date or time, None; an int too where :data:`_TEXT_TAKES_NUMBERS` says so."""
    if isinstance(value, str | list | tuple | date | type(None)):
        return True
    return name in _TEXT_TAKES_NUMBERS and isinstance(value, int) and not isinstance(value, bool)


def check_parameter_types(namespace: Mapping[str, Any]) -> None:
    """Refuse a parameter whose value is not of its declared type, naming it.

    ``int``, ``float`` and ``bool`` declarations (optionally ``| None``) are checked as such; a
    ``str`` one takes what its parser reads (:func:`_text_fits`: lists too). Without this,
    ``top_n = "ten"`` failed deep inside pandas ("cannot do positional indexing on Index with these
    indexers [ten]"), and ``start = 20240305`` (no quotes) in a traceback of ``'int' object has no
    attribute 'strip'``.

    Raises
    ------
    ConfigurationError
        Naming the parameter, what it must be and the value it has.
    """
    import types
    import typing

    for name, declared in namespace.get("__annotations__", {}).items():
        if name not in namespace:
            continue
        union = isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union
        allowed = typing.get_args(declared) if union else (declared,)
        value = namespace[name]
        if allowed == (str,):
            if not _text_fits(name, value):
                msg = (f"The `{name}` parameter must be text in quotes, such as {name} = \"{value}\". "
                       f"Got {value!r} ({type(value).__name__}) instead.")
                raise ConfigurationError(msg)
            continue
        if str in allowed and _text_fits(name, value):  # e.g. speedup: float | str, "max"
            continue
        allowed = tuple(t for t in allowed if t is not str)
        if not allowed or not all(t in _TYPE_NAMES for t in allowed):
            continue
        if isinstance(value, bool):
            fits = bool in allowed
        elif isinstance(value, int):
            fits = int in allowed or float in allowed
        elif isinstance(value, float):
            fits = float in allowed
        else:
            fits = value is None and type(None) in allowed
        if not fits:
            wanted = " or ".join(_TYPE_NAMES[t] for t in allowed)
            msg = f"The `{name}` parameter must be {wanted}. Got {value!r} instead."
            raise ConfigurationError(msg)


#: What an annotation cannot say about a number parameter: its range, as a test and the words for
#: the error. One entry per parameter, whichever notebooks declare it; :func:`setup` checks them in
#: the notebook and ``run_report`` before any notebook runs.
PARAMETER_RANGES: Final[Mapping[str, tuple[Callable[[float], bool], str]]] = {
    # head(-3) silently drops the last 3 rows and head(0) shows none
    "top_n": (lambda n: n >= 1, "at least 1 (the number of rows the tables show)"),
}


#: Text parameters with a fixed set of values, refused in the first cell: 04 with critical_mode="bogus"
#: drew its charts and tables and stopped halfway down, at the first cell that read the mode.
PARAMETER_CHOICES: Final[Mapping[str, tuple[str, ...]]] = {"critical_mode": ("all", "any")}


def check_parameter_ranges(values: Mapping[str, Any]) -> None:
    """Refuse a number parameter outside its :data:`PARAMETER_RANGES` entry, or a text parameter not
    among its :data:`PARAMETER_CHOICES`, naming it and the value.

    Values that are not numbers are left to :func:`check_parameter_types` (a notebook) or to the
    notebook that receives them (``run_report``).

    Raises
    ------
    ConfigurationError
        Naming the parameter, its range and the value it has.
    """
    for name, (fits, wanted) in PARAMETER_RANGES.items():
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not fits(value):
            msg = f"The `{name}` parameter must be {wanted}. Got {value!r} instead."
            raise ConfigurationError(msg)
    for name, choices in PARAMETER_CHOICES.items():
        value = values.get(name)
        if isinstance(value, str) and value not in choices:
            msg = f"The `{name}` parameter must be {' or '.join(map(repr, choices))}. Got {value!r} instead."
            raise ConfigurationError(msg)


def parse_time(value: str | datetime | None, name: str) -> datetime | None:
    """An aware UTC datetime from ISO-8601 text (no zone = UTC); empty or ``None`` gives ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
        except ValueError as exc:
            msg = f"The `{name}` parameter must be an ISO-8601 time such as 2024-03-05T12:00. Got {value!r} instead."
            raise ConfigurationError(msg) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_range(start: str | datetime | None, end: str | datetime | None) -> tuple[datetime | None, datetime | None]:
    """The ``start`` and ``end`` parameters as :func:`parse_time` reads them; ``start`` must be before ``end``.

    A reversed range would give every table and chart of a notebook empty without a word.
    """
    t0, t1 = parse_time(start, "start"), parse_time(end, "end")
    if t0 is not None and t1 is not None and t0 >= t1:
        msg = (f"The `start` parameter ({t0:%Y-%m-%d %H:%M} UTC) must be before `end` ({t1:%Y-%m-%d %H:%M} UTC): "
               "the range is empty. Swap them, or leave one empty for all data on that side.")
        raise ConfigurationError(msg)
    return t0, t1


def parse_list(value: str | Iterable[Any] | None) -> list[str]:
    """Items of a comma-separated string or a list (empty -> ``[]``), each once, in the order given.

    A repeated item means nothing more: notebook 03 with ``versions="v1, v1"`` listed v1 twice in
    its metadata table and compared it with itself.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return list(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))


def parse_instances(value: str | int | Iterable[Any] | None) -> list[int] | None:
    """Instance ids from ``"1,2"``, ``[1, 2]`` or ``3``; ``None`` (all instances) when empty.

    Ids are 64-bit integers in every store: a longer one (a pasted query id, a typo) ended in a
    DuckDB conversion error's traceback in 02's first cell instead of a parameter error.
    """
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else parse_list(value)
    try:
        ids = [int(v) for v in items]
    except ValueError as exc:
        msg = f"The `instances` parameter must be integer ids like '1,2' or [1, 2]. Got {value!r} instead."
        raise ConfigurationError(msg) from exc
    if any(not -(2**63) <= i < 2**63 for i in ids):
        msg = (f"The `instances` parameter must be integer ids like '1,2' or [1, 2], each a 64-bit integer. "
               f"Got {value!r} instead.")
        raise ConfigurationError(msg)
    return ids or None


def _refuse_unknown(name: str, given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise a :class:`ConfigurationError` for the first of ``given`` not in ``known``, with the
    closest known values: a typo filtered everything out and read as "recall 0 for every kind"."""
    import difflib

    known = sorted(set(known))
    for value in given:
        if value not in known:
            starting = [k for k in known if k.startswith(value)]  # "v0002" for "v0002-2024-03-05"
            close = list(dict.fromkeys([*starting, *difflib.get_close_matches(value, known, n=3, cutoff=0.5)]))[:3]
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            listed = ", ".join(known) if known else f"none yet: no {what} was written"
            msg = f"The `{name}` parameter names no {what}: {value!r}.{hint} Known: {listed}."
            raise ConfigurationError(msg)


def parse_reason(settings: Settings, value: str | None) -> str | None:
    """The anomaly reason to keep (``None``: all); refused unless the detector gives it or the
    lakehouse holds it (a version trained by an earlier release may have named its reasons otherwise)."""
    reason = (value or "").strip()
    if not reason:
        return None
    from workbench.ml.detector import ALERT_REASONS

    if reason in ALERT_REASONS:
        return reason
    _refuse_unknown("reason", [reason], [*ALERT_REASONS, *_stored_values(settings, "reason")], "anomaly reason")
    return reason


def parse_versions(settings: Settings, value: str | Iterable[Any] | None) -> list[str]:
    """Model versions from ``"v1, v2"`` or a list (``[]``: all) that the registry or the lakehouse knows.

    Only unknown ones: refused with the closest known ones; some unknown: dropped with a warning.
    """
    versions = parse_list(value)
    if not versions:
        return versions
    from workbench.ml.registry import ModelRegistry

    known = {*ModelRegistry(settings.models_dir).versions(), *_stored_values(settings, "model_version")}
    kept = [v for v in versions if v in known]
    if not kept:
        _refuse_unknown("versions", versions, known, "model version")
    if len(kept) < len(versions):  # as notebook 03 does: the known ones are shown, the others named
        unknown = ", ".join(v for v in versions if v not in known)
        warnings.warn(f"versions {unknown} ignored: no such model version; showing {', '.join(kept)}",
                      UserWarning, stacklevel=2)
    return kept


def _stored_values(settings: Settings, column: str) -> list[str]:
    """The distinct values of an anomalies column in the lakehouse ([] before the first anomaly)."""
    from workbench.analysis import read

    return read.anomaly_values(settings, column)


def find_labelled_log(settings: Settings, labels_path: str = "") -> Path | None:
    """The labelled Parquet log to compare with.

    ``labels_path`` given: that file (must exist). ``"none"``: no labels. Empty: the log the home's
    results come from (the one ``start`` recorded) when it carries the generator's ``label_anomaly``
    labels, else the newest such ``*.parquet`` in ``settings.data_dir`` (a log replayed from another
    folder gave no detection table).
    """
    import pyarrow.parquet as pq

    from workbench.runtime._home import recorded_log

    if labels_path and labels_path.strip().lower() == "none":
        return None
    if labels_path:
        path = Path(labels_path).expanduser()
        if path.is_dir():  # it said "which does not exist" of a folder that does
            msg = (f"The `labels_path` parameter must name a Parquet log file. Got {labels_path!r}, which is a "
                   "folder; name one of its files, or leave it empty for the newest labelled log in "
                   "WORKBENCH_HOME/data.")
            raise ConfigurationError(msg)
        if not path.is_file():
            msg = f"The `labels_path` parameter must name a Parquet log. Got {labels_path!r}, which does not exist."
            raise ConfigurationError(msg)
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # not Parquet, truncated, unreadable
            msg = f"The `labels_path` parameter must name a Parquet log. Got {labels_path!r}, which is not one ({exc})."
            raise ConfigurationError(msg) from exc
        if "label_anomaly" not in names:
            msg = (f"The `labels_path` parameter must name a labelled log (with the generator's `label_anomaly` "
                   f"column). Got {labels_path!r}, which has none; use \"none\" to skip the comparison.")
            raise ConfigurationError(msg)
        if not _carries_labels(path):
            msg = (f"The `labels_path` parameter must name a labelled log. Got {labels_path!r}, whose "
                   "`label_anomaly` is NULL on every row; use \"none\" to skip the comparison.")
            raise ConfigurationError(msg)
        return path
    candidates = sorted(settings.data_dir.glob("*.parquet"), key=lambda p: (p.stat().st_mtime, p.name),
                        reverse=True) if settings.data_dir.is_dir() else []
    replayed = recorded_log(settings)
    if replayed is not None and replayed.is_file():
        candidates.insert(0, replayed)
    for path in candidates:
        try:
            if "label_anomaly" in pq.read_schema(path).names and _carries_labels(path):
                return path
        except Exception as exc:  # an unreadable file is not a labelled log
            logger.debug("skipping %s: %s", path, exc)
    return None


def _carries_labels(path: Path) -> bool:
    """Whether ``label_anomaly`` of ``path`` holds a value on at least one row."""
    from workbench.ml.evaluate import require_labels
    from workbench.ml.exceptions import MLError

    try:
        require_labels(path)
    except MLError:
        return False
    return True


def setup_charts() -> None:
    """Render Altair charts live in JupyterLab (in its theme) and as static SVG beside it (offline, and kept
    in executed notebooks and reports): :func:`workbench.ui.charts.notebook_renderer`."""
    import altair as alt

    from workbench.ui.charts import notebook_renderer

    alt.renderers.register("workbench", notebook_renderer)
    alt.renderers.enable("workbench")
    alt.data_transformers.disable_max_rows()


#: Names the notebook had when its results were last cleared (:func:`setup` with ``clear=True``).
_BEFORE_RESULTS_MARK = "_workbench_names_before_results"
#: IPython's own names: never a notebook's result.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def _clear_results(namespace: MutableMapping[str, Any]) -> None:
    """Remove what the notebook's cells defined after the last :func:`setup` (a result of the last run)."""
    before = namespace.get(_BEFORE_RESULTS_MARK)
    if before is not None:
        for name in [n for n in namespace if n not in before and not n.startswith("_") and n not in _IPYTHON_NAMES]:
            del namespace[name]


def setup(namespace: Mapping[str, Any], *, clear: bool = False) -> Settings:
    """Everything a report notebook does first; call it right after the ``parameters`` cell.

    ``clear``: first remove every name the notebook's cells defined after the previous call (its
    results: ``anomalies``, ``t0``, ...), so that a selection refused on a re-run (a start after its
    end) leaves no result of the previous run for the cells below to show as if it were the new one:
    they fail on a name that is not defined instead. Imports and parameters stay.

    Warns about undeclared (misspelled) parameters, refuses a number or flag parameter of the
    wrong type or outside its range (naming it), renders Altair charts as offline SVG, sets
    pandas' display width (and cell width: reasons are read whole), and returns the settings
    (``WORKBENCH_HOME`` from the environment).
    In a notebook, a failure of the cell that calls it makes every later cell say "not run" in one line
    until it runs again (:mod:`workbench.reports._run_guard`: Run All's cells can outrun the kernel's
    abort of the rest). Parameters are checked on the first call in a kernel only: papermill injects them before
    that call, and on a re-run the namespace also holds the notebook's own variables
    (``started``, ``ids``, ...), which are no misspelled parameters.

    >>> settings = setup(globals())  # doctest: +SKIP
    """
    import pandas as pd

    from workbench.config import get_settings
    from workbench.reports import _run_guard

    # Run All then stops below this cell when it fails, however late the kernel gets the cells below
    _run_guard.install()
    if clear and isinstance(namespace, MutableMapping):
        _clear_results(namespace)
    if not namespace.get(_CHECKED_MARK):
        unknown = check_parameters(namespace)
        if unknown:
            logger.warning("unknown notebook parameters ignored: %s", unknown)
        if isinstance(namespace, MutableMapping):
            namespace[_CHECKED_MARK] = True
    check_parameter_types(namespace)  # on every call: a parameter edited in the browser and re-run
    check_parameter_ranges({name: namespace[name] for name in namespace.get("__annotations__", {})
                            if name in namespace})
    setup_charts()
    _readable_warnings()
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 500)  # a window's reason is its evidence: not cut at 50 characters
    settings = get_settings()
    if clear and isinstance(namespace, MutableMapping):
        namespace[_BEFORE_RESULTS_MARK] = frozenset(namespace) | {_BEFORE_RESULTS_MARK}
    return settings


def _readable_warnings() -> None:
    """The workbench's own warnings read as one line in a notebook and its report page: Python's format
    led with the kernel's temporary cell file (``/tmp/ipykernel_3113/288801447.py:11: UserWarning: ...``)."""
    import warnings

    if getattr(warnings.formatwarning, "_workbench", False):
        return
    plain = warnings.formatwarning

    def formatwarning(message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None
                      ) -> str:
        if issubclass(category, UserWarning) and "ipykernel" in str(filename):  # raised for a cell's call
            return f"warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    formatwarning._workbench = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


#: Homes this process (the notebook's kernel) started a workbench on with ``open_workbench``.
_STARTED_HOMES: set[str] = set()


def open_workbench(mode: str, settings: Settings, *, data: str = "", speedup: float | str = 600.0,
                   pack: int | None = None, fresh: bool = False) -> tuple[Any, bool]:
    """``(workbench or None, started_here)`` for the replay notebook's ``mode`` parameter.

    ``"start"`` starts one on ``data`` (default: the newest labelled log in the home's data
    folder) with the default encoding (packed Arrow) unless ``pack`` names one (1: JSON per
    query), or connects to the one already running there (a second Run All) and says so;
    ``started_here`` stays True for a workbench this kernel started. ``"attach"`` connects to
    the running one and prints why when none runs; ``"skip"`` does nothing. ``fresh`` clears the
    home's results of earlier runs before a start (:meth:`Workbench.start`).
    """
    from workbench.runtime import Workbench, WorkbenchStateError

    if mode not in ("attach", "start", "skip"):
        msg = f"The `mode` parameter must be 'attach', 'start' or 'skip'. Got {mode!r} instead."
        raise ConfigurationError(msg)
    if mode == "start":
        log = data or find_labelled_log(settings)
        if not log:
            msg = (f"mode='start' needs `data` (a Parquet log); none given and none in {settings.data_dir}. "
                   "`workbench generate` (same WORKBENCH_HOME) writes a labelled demo log there; `workbench "
                   "prepare` turns a real Redset export into one; or set `data` to a log's path.")
            raise ConfigurationError(msg)
        if not Path(log).expanduser().exists():
            msg = (f"The `data` parameter must name a Parquet log or a folder of them. Got {data!r}, which does "
                   "not exist (`workbench generate` makes one).")
            raise ConfigurationError(msg)
        try:
            running = Workbench.attach(settings)
        except WorkbenchStateError:
            running = None
        if running is not None:
            # Run All again after a start (or a workbench started elsewhere) raised "already runs" as a
            # traceback. The one this kernel started stays this notebook's to stop (`stop = True`).
            started_here = str(settings.home) in _STARTED_HOMES
            print(f"A workbench already runs under {settings.home}: connected to it instead of starting a second "
                  "one (its replay goes on as it is" + ("; fresh=True was not applied" if fresh else "")
                  + "). To replay `data` afresh, stop it first"
                  + (" (stop = True in the last cell, or wb.stop())." if started_here else " (wb.stop())."))
            return running, started_here
        try:
            wb = Workbench.start(data=log, speedup=speedup, pack=pack, settings=settings, fresh=fresh)
        except WorkbenchStateError:
            # another notebook or terminal started one between the check above and this start (two Run Alls
            # in the same second): connect to it once started, as a second Run All does; anything else is
            # raised as it was
            from workbench.runtime._workbench import wait_for_start

            wait_for_start(settings.home)
            try:
                running = Workbench.attach(settings)
            except WorkbenchStateError:
                running = None
            if running is None:
                raise
            print(f"A workbench was started under {settings.home} meanwhile (another notebook or terminal): "
                  "connected to it instead of starting a second one (wb.stop() stops it).")
            return running, False
        _STARTED_HOMES.add(str(settings.home))
        # said, not left to a repr: with fresh=True nothing confirmed that the home had been cleared
        print(f"Started {wb}, on {log}" + (" (fresh: the results of earlier runs in this home were cleared "
                                           "first)" if fresh else "") + ".")
        return wb, True
    if mode == "attach":
        try:
            wb = Workbench.attach(settings)
        except WorkbenchStateError as exc:
            print(f"Nothing to attach to: {exc}")
        else:
            print(f"Attached to {wb}.")
            return wb, False
    return None, False


def stop_if_asked(wb: Any, *, started: bool, stop: bool, panel: Any = None) -> str:
    """The replay notebook's last cell: stop the workbench this notebook started when ``stop`` asks
    for it, and say what happened (a workbench attached to is never stopped from here).

    With ``stop=True`` on an attached workbench the cell said "still running (set stop=True ...)",
    asking for the very setting the user had just made.
    """
    if not wb:
        return "no workbench: nothing to stop"
    if stop and started:
        wb.stop()
        if panel is not None:
            panel.stop()  # after the workbench: the panel then shows it stopped, its controls greyed out
        return "stopped"
    if stop:
        # "this kernel": one restarted forgets what it started (a tester read "did not start" as false)
        return ("not stopped: this kernel attached to a workbench it did not start (or started it before a kernel "
                "restart), which others may be using; to stop it anyway: wb.stop() in a cell, or `workbench stop` "
                "in a terminal")
    if started:
        return "still running (set stop=True and run this cell to stop what this notebook started)"
    return ("still running (not started by this kernel: wb.stop() in a cell, or `workbench stop` in a terminal, "
            "stops it)")


def wait_for_replay(wb: Any, *, timeout: float = 60.0, poll: float = 0.5) -> Any:
    """Wait until ``wb``'s replay takes commands and return its status: running, paused, or finished (under
    the workbench a finished replay keeps listening: a seek or a reset replays it again).

    Commands sent before a replay listens may not reach it; steering code calls this first.

    Raises
    ------
    ConfigurationError
        If the replay is stopped or failed, or not listening within ``timeout`` seconds (naming its state).
    """
    import time

    began = time.monotonic()
    status = None
    while time.monotonic() - began < timeout:
        snapshot = wb.status()  # one read: the replay's status and the process it must not predate
        status = snapshot.replay
        fresh = status is not None and not snapshot.replay_is_stale
        if fresh and status.state in ("running", "paused", "finished"):
            return status
        if fresh and status.state in ("stopped", "failed"):
            break
        time.sleep(poll)
    state = status.state if status is not None else "not started"
    waited = time.monotonic() - began
    # a refused steering example read "finished after up to 60 s" in 2 s, of a replay that still took commands
    msg = (f"The replay does not take commands (state: {state}, after {waited:.0f} s); nothing was sent."
           + (" Start it again (notebook 01's start cell, or `workbench start`)." if state in ("stopped", "failed")
              else ""))
    raise ConfigurationError(msg)


def table_or_note(frame: Any, empty: str) -> Any:
    """``frame`` for a cell to display, or, when it has no rows, ``empty`` (why) as an italic line: an
    empty table shows its headers only, which reads as broken rather than as "nothing yet"."""
    data = getattr(frame, "data", frame)  # a pandas Styler (workbench.ui.tables.readable) holds its frame
    if data is not None and len(data):
        return frame
    from IPython.display import Markdown

    return Markdown(f"*{empty}*")
