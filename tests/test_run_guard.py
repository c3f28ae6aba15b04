"""Run All below a refused setup cell: every later cell says "not run" in one line, in a real IPython
shell (the kernel's own cell machinery: input transformers and post-run events)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.reports import _run_guard

PARAMETERS = 'start: str = "{start}"  # first query time\nend: str = "{end}"  # end of the range\n'
SETUP = ("from workbench.reports.notebook import parse_range, setup\n"
         "settings = setup(globals(), clear=True)\n"
         "chosen = 'assigned before the refusal'\n"
         "t0, t1 = parse_range(start, end)\n")


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()  # the guard goes with it


def test_cells_below_a_refused_setup_cell_are_not_run_until_it_runs_again(shell, capsys) -> None:
    """A browser tester's Run All of notebook 03 with start after end: some cells ran after the
    refusal anyway (the kernel aborts only the cells already queued) and printed a results table for
    the refused selection, or NameError tracebacks."""
    assert shell.run_cell(PARAMETERS.format(start="2024-03-07T12:00", end="2024-03-07T06:00")).success
    refused = shell.run_cell(SETUP)
    assert not refused.success and "start" in str(refused.error_in_exec)
    capsys.readouterr()
    below = shell.run_cell("print(chosen)\nresult = 'computed below the refusal'")
    shown = capsys.readouterr().out
    assert isinstance(below.error_in_exec, _run_guard.CellNotRun)
    assert "assigned before the refusal" not in shown and "result" not in shell.user_ns
    assert "not run: the setup cell above failed (ConfigurationError:" in shown
    assert "Traceback" not in shown and "NameError" not in shown  # one line, not a traceback
    # The fix: the parameters cell still runs, the setup cell lifts the refusal, the cells below run again.
    assert shell.run_cell(PARAMETERS.format(start="", end="")).success
    assert shell.run_cell(SETUP).success
    assert shell.run_cell("result = chosen").success and shell.user_ns["result"] == "assigned before the refusal"


def test_what_counts_as_a_parameters_cell() -> None:
    assert _run_guard._is_parameters_cell('top_n: int = 10  # rows\nday: str = ""\n# a comment\n')
    assert _run_guard._is_parameters_cell('start = "2024-03-05"\ninstances = [3, 17]\n')  # papermill's injected cell
    assert not _run_guard._is_parameters_cell("top_n = compute()\n")
    assert not _run_guard._is_parameters_cell("import os\n")
    assert not _run_guard._is_parameters_cell("display(table)")
    assert not _run_guard._is_parameters_cell("%time x = 1")  # not Python: a magic
