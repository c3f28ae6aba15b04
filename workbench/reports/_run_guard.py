"""Run All stops below a refused setup cell, whatever the kernel's timing.

Run All sends every cell at once, and ipykernel aborts only the requests already queued when a cell
fails (its ``stop_on_error_timeout`` is 0 since 5.5). On a loaded machine some cells below a refused
parameter ran anyway: NameError tracebacks (``setup(clear=True)`` had removed the last run's
results), or, where the setup cell had assigned a few names before the refusal, a result table of a
selection that had just been refused (a browser tester's Run All of notebook 03 with ``start`` after
``end``). So once a notebook's setup cell fails, every later cell is not run and says why in one
line, until a setup cell runs again. A parameters cell (literal assignments and comments only) still
runs, so fixing it and running all again works as before.

Installed by :func:`workbench.reports.notebook.setup` into the IPython shell it runs in (a kernel is
one notebook); outside IPython it does nothing.
"""

from __future__ import annotations

import ast
from typing import Any

from workbench.exceptions import WorkbenchError

__all__ = ["CellNotRun", "install", "not_run"]

#: What a notebook's setup cell calls (every notebook's, see the module docstring of notebook.py).
_SETUP_CALL = "setup(globals()"
#: The shell attribute that marks the guard installed (idempotent across setup calls).
_INSTALLED = "_workbench_run_guard"


class CellNotRun(WorkbenchError):
    """A cell below a refused setup cell: not run (the message says why and what to do)."""


class _Guard:
    """The refusal of the last setup cell (None: it ran) and the hooks that act on it."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def after_cell(self, result: Any) -> None:
        """``post_run_cell``: a setup cell's outcome sets or lifts the refusal."""
        info = getattr(result, "info", None)
        if not _is_setup_cell(getattr(info, "raw_cell", None) or ""):
            return
        error = result.error_before_exec or result.error_in_exec
        self.refused = None if error is None else _one_line(error)

    def transform(self, lines: list[str]) -> list[str]:
        """An input transformer: a cell to skip becomes a call that raises :class:`CellNotRun`."""
        source = "".join(lines)
        if self.refused is None or _is_setup_cell(source) or _is_parameters_cell(source):
            return lines
        return [f"__import__('workbench.reports._run_guard', fromlist=['not_run']).not_run({self.refused!r})\n"]


def install(shell: Any | None = None) -> None:
    """Add the guard to ``shell`` (default: the running IPython shell, if any); once per shell."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - IPython is a dependency of the notebooks
            return
        shell = get_ipython()
    if shell is None or getattr(shell, _INSTALLED, None) is not None:
        return
    guard = _Guard()
    shell.events.register("post_run_cell", guard.after_cell)
    shell.input_transformers_post.append(guard.transform)
    setattr(shell, _INSTALLED, guard)


def not_run(reason: str) -> None:
    """Raise :class:`CellNotRun` for a cell below a setup cell that failed with ``reason``."""
    msg = (f"not run: the setup cell above failed ({reason}). Fix the parameters cell and run the "
           "notebook again.")
    raise CellNotRun(msg)


def _is_setup_cell(source: str) -> bool:
    return _SETUP_CALL in source


def _is_parameters_cell(source: str) -> bool:
    """Only assignments of literal values (typed or not) and comments: a parameters cell, papermill's too."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign | ast.Assign) or node.value is None:
            return False
        try:
            ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False
    return True


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
