"""``run_report``: execute the analysis notebooks with papermill and export them as offline HTML.

A report is a folder ``<reports_dir>/<run_id>/`` with, per notebook, the executed ``.ipynb`` and a
self-contained ``.html`` (charts are static SVG, images embedded, no script loaded from a CDN;
input cells left out unless ``show_code``), plus the summary page ``index.html`` (key figures,
chart thumbnails, links, parameters, versions) and ``params.json``. The notebooks come from the
page registry :mod:`workbench.reports.pages`. Every number comes from the data and the
parameters, never from the wall clock, so the same data and parameters give the same tables; only
the default ``run_id`` is time-based.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from workbench.config import Settings
from workbench.reports.exceptions import ReportError
from workbench.reports.pages import ALL

__all__ = ["ALL", "DEFAULT_NOTEBOOKS_DIR", "PARAMETER_NAMES", "export_html", "run_report"]

logger = logging.getLogger(__name__)

#: The repository's ``notebooks/`` folder (editable installs and checkouts) ...
CHECKOUT_NOTEBOOKS_DIR: Final = Path(__file__).resolve().parents[2] / "notebooks"
#: ... and where a wheel installs them (``[tool.setuptools.data-files]`` in pyproject.toml).
INSTALLED_NOTEBOOKS_DIR: Final = Path(sys.prefix) / "share" / "pulse-workbench" / "notebooks"
#: The notebooks ``run_report`` uses by default: the checkout's when there is one.
DEFAULT_NOTEBOOKS_DIR: Final = next(
    (d for d in (CHECKOUT_NOTEBOOKS_DIR, INSTALLED_NOTEBOOKS_DIR) if (d / f"{ALL[0]}.ipynb").is_file()),
    CHECKOUT_NOTEBOOKS_DIR)
#: Parameters ``run_report`` understands; each notebook receives those it declares.
PARAMETER_NAMES: Final = ("start", "end", "instances", "versions", "labels_path", "day", "top_n", "critical_mode")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>\s*</script>", re.I)
_SVG_IMG = re.compile(r'<img\b[^>]*?\bsrc="data:image/svg\+xml;base64,([A-Za-z0-9+/=\s]+)"[^>]*>')
_ENV_LOCK = threading.Lock()
#: The report kernel's own log at ERROR: at WARNING ipykernel tells every run that its local TCP
#: sockets are unencrypted (papermill's kernel is a child on 127.0.0.1 with an HMAC-signed protocol),
#: a paragraph per notebook in the terminal. The notebooks' own warnings are unaffected.
_KERNEL_ARGUMENTS: Final = ["--IPKernelApp.log_level=ERROR"]

# The lab template minus everything it would fetch from a CDN (require.js, MathJax, mermaid,
# widget manager): the charts are SVG already, so the page needs no script at all.
_OFFLINE_TEMPLATE: Final = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block data_svg scoped -%}
<div class="jp-RenderedSVG jp-OutputArea-output {{ extra_class }}" data-mime-type="image/svg+xml">
<img src="data:image/svg+xml;base64,{{ output.data['image/svg+xml'] | text_base64 | escape_html }}" alt="chart">
</div>
{%- endblock data_svg %}
"""
#: The title a Vega chart draws (its ``role-title`` group's text), for the inline chart's label.
_CHART_TITLE = re.compile(r'role-title.*?<text\b[^>]*>(.*?)</text>', re.S)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    # The kernel papermill starts inherits os.environ: that is how it finds WORKBENCH_HOME.
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _strip_widgets(nb: Any) -> None:
    """Drop live-widget state and views (they need a JS widget manager); text fallbacks stay."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")


def export_html(notebook: Path, target: Path | None = None, *, show_code: bool = False) -> Path:
    """Write a self-contained HTML page of an executed notebook (no external scripts).

    Parameters
    ----------
    notebook : Path
        An executed ``.ipynb``.
    target : Path, optional
        Output file (default: beside the notebook, ``.html``).
    show_code : bool
        Keep the input (code) cells; by default the page shows the narrative and the results only.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    _strip_widgets(nb)
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input=not show_code,
                            exclude_input_prompt=not show_code, exclude_output_prompt=not show_code,
                            extra_loaders=[jinja2.DictLoader({"workbench_offline.html.j2": _OFFLINE_TEMPLATE})],
                            template_file="workbench_offline.html.j2")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    # Inline the charts' SVG (nbconvert base64-encodes it into <img>): crisp, searchable, and the
    # marks are part of the page's DOM.
    body = _SVG_IMG.sub(lambda m: _labelled_svg(base64.b64decode(m.group(1)).decode("utf-8")), body)
    body, removed = _EXTERNAL_SCRIPT.subn("", body)
    if removed:
        logger.warning("removed external scripts from the HTML notebook=%s count=%d", notebook.name, removed)
    target = target or notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def _labelled_svg(svg: str) -> str:
    """An inline chart a screen reader can name: ``role="img"`` and its title as ``aria-label``.

    nbconvert wraps each SVG output in an ``<img>`` and warns when it has no alternative text (our
    template gives it a placeholder); the page inlines the SVG instead, so the label goes on it.
    """
    if not svg.lstrip().startswith("<svg") or "aria-label=" in svg.split(">", 1)[0]:
        return svg
    found = _CHART_TITLE.search(svg)
    title = found.group(1).strip() if found else ""
    label = (title or "chart").replace('"', "&quot;")
    return svg.replace("<svg", f'<svg role="img" aria-label="{label}"', 1)


class _InfoOfThisThread(logging.Filter):
    """Drops the INFO (and DEBUG) records the thread that made it logs; warnings and other threads pass."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.WARNING


def _declared(notebook: Path) -> set[str]:
    """The parameters ``notebook`` declares, by papermill's own reading of its parameters cell.

    papermill logs "Input Notebook: <path>" on inspection and again on execution, which the report
    does next: the first line is dropped, so the terminal names each notebook once.
    """
    import papermill

    quiet = _InfoOfThisThread()
    papermill_log = logging.getLogger("papermill")
    papermill_log.addFilter(quiet)
    try:
        return set(papermill.inspect_notebook(str(notebook)))
    finally:
        papermill_log.removeFilter(quiet)


def run_report(
    settings: Settings,
    *,
    run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    notebooks: Sequence[str] = ALL,
    data: str | Path | None = None,
    notebooks_dir: Path | None = None,
    progress: bool = True,
    timeout: float = 900.0,
    show_code: bool = False,
) -> Path:
    """Execute the report notebooks and write executed notebooks, HTML pages and an index.

    Parameters
    ----------
    settings : Settings
        Whose data to analyse (``WORKBENCH_HOME``) and where to write (``resolved_reports_dir``).
    run_id : str, optional
        Folder name of the report (default: UTC time ``YYYYmmddTHHMMSSZ``).
    params : mapping, optional
        Notebook parameters, e.g. ``start``/``end`` (ISO-8601 UTC), ``instances`` ("1,2" or a list),
        ``versions`` ("v1,v2"), ``labels_path``, ``day``. Each notebook receives only the ones it declares.
    notebooks : sequence of str
        Names (without ``.ipynb``) to run, default :data:`ALL`.
    data : path, optional
        Labelled Parquet log, passed as ``labels_path`` (and ``data`` to the replay notebook).
    notebooks_dir : Path, optional
        Where the notebooks are (default: the checkout's ``notebooks/``, else the installed copies).
    progress : bool
        Show progress bars (one per report and one per notebook).
    timeout : float
        Seconds any one cell may run.
    show_code : bool
        Keep the code cells in the HTML pages (default: narrative and results only).

    Returns
    -------
    Path
        The report folder (open its ``index.html``).

    Raises
    ------
    ReportError
        For an unknown notebook or parameter or a bad run id, or when a notebook fails (its
        partial output and HTML are still written). The pages replace, not join, those of an earlier
        report of the same ``run_id``; interrupted (Ctrl-C), the earlier report stays as it was.
    """
    from workbench.reports._kernel import quiet_kernels_on_interrupt

    source = Path(notebooks_dir or DEFAULT_NOTEBOOKS_DIR)
    unknown = [n for n in notebooks if not (source / f"{n}.ipynb").is_file()]
    if unknown:
        msg = f"Unknown report notebook(s) {unknown} in {source}. Choose from {list(ALL)}."
        raise ReportError(msg)
    params = dict(params or {})
    bad = sorted(set(params) - set(PARAMETER_NAMES))
    if bad:
        msg = f"Unknown report parameter(s) {bad}. Valid names are {list(PARAMETER_NAMES)}."
        raise ReportError(msg)
    if isinstance(params.get("instances"), list | tuple):
        params["instances"] = ",".join(str(i) for i in params["instances"])
    if isinstance(params.get("versions"), list | tuple):
        params["versions"] = ",".join(params["versions"])
    if data is not None:
        if not Path(data).expanduser().exists():  # named as given, not as the notebooks' `labels_path`
            msg = f"The labelled log (--data, data=) {str(data)!r} does not exist (`workbench generate` writes one)."
            raise ReportError(msg)
        params.setdefault("labels_path", str(Path(data).expanduser().resolve()))
    from workbench.reports.notebook import check_parameter_ranges, find_labelled_log, parse_instances, parse_range

    check_parameter_ranges(params)  # before any notebook runs, not after the first one ran
    parse_range(params.get("start"), params.get("end"))  # likewise: a bad time ran every notebook first
    _warn_unknown_instances(settings, parse_instances(params.get("instances")))
    if isinstance(params.get("day"), str) and params["day"].strip():
        try:
            date.fromisoformat(params["day"].strip())
        except ValueError:  # 03 would skip its evaluation with a note inside the page, and the run "succeed"
            msg = f"The `day` parameter must be a UTC day such as 2024-03-07. Got {params['day']!r} instead."
            raise ReportError(msg) from None
    if params.get("labels_path"):  # likewise, not in the second one's 17th cell
        find_labelled_log(settings, str(params["labels_path"]))
    if params.get("versions"):  # likewise: notebook 03 stops on versions none of which is registered
        import warnings

        from workbench.analysis.detection_summary import choose_versions
        from workbench.reports.notebook import parse_list

        with warnings.catch_warnings():  # some unknown: the notebooks say which
            warnings.simplefilter("ignore")
            choose_versions(settings, parse_list(params["versions"]))
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if not _RUN_ID.match(run_id):
        msg = f"run_id must be letters, digits, '.', '_' or '-' (a folder name). Got {run_id!r} instead."
        raise ReportError(msg)
    out = settings.resolved_reports_dir / run_id
    if out.exists() and not out.is_dir():
        msg = f"The report folder {out} exists and is a file: choose another run_id (--run-id), or move that file."
        raise ReportError(msg)
    # The pages are written beside the report and swapped in whole: a rerun into the same run id
    # keeps none of the earlier run's pages, and one cut short leaves the earlier report as it was.
    lock = _lock_run_id(out)
    try:
        _recover_abandoned_runs(out.parent)
        staging, previous = _staging_folders(out)
        _recover_swap(out, staging, previous)
        try:
            with quiet_kernels_on_interrupt():
                _run_notebooks(settings, staging, out, run_id, params, notebooks, source, data, progress, timeout,
                               show_code)
        except KeyboardInterrupt:  # a report cut short is no report
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except ReportError:  # a notebook failed: its partial page is the report, as documented
            _swap_in(out, staging, previous)
            raise
        _swap_in(out, staging, previous)
    finally:
        _unlock_run_id(out, lock)
    return out


def _lock_run_id(out: Path) -> int:
    """Hold the run id ``out`` for this run (a descriptor for :func:`_unlock_run_id`), or refuse: two runs into
    one run id at once shared its staging folder, and the second deleted the pages the first was writing."""
    from workbench._fs import try_flock

    path = _lock_path(out)
    while True:
        fd = try_flock(path)
        if fd is None:
            msg = (f"Another report is being written into {out} right now: wait for it to finish, or choose "
                   "another run id (--run-id, run_id=).")
            raise ReportError(msg)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file its holder removed as it finished: lock the one at the path now


def _unlock_run_id(out: Path, fd: int) -> None:
    # Removed while held, so lock files do not pile up (one per time-stamped run); a run that opened this file
    # meanwhile sees it is no longer at the path once it gets the lock, and locks the path again.
    with contextlib.suppress(OSError):
        _lock_path(out).unlink()
    os.close(fd)


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _recover_abandoned_runs(reports_dir: Path) -> None:
    """Clear what runs killed with SIGKILL left under other run ids (a default run id is a time stamp, so
    nothing ever ran into it again): their half-written pages stayed for good. A run that still writes holds
    its run id's lock and is left alone."""
    for folder in [*reports_dir.glob(".*.partial"), *reports_dir.glob(".*.previous")]:
        out = folder.with_name(folder.name[1:].rsplit(".", 1)[0])
        try:
            fd = _lock_run_id(out)
        except ReportError:
            continue  # being written now
        try:
            _recover_swap(out, *_staging_folders(out))
        finally:
            _unlock_run_id(out, fd)


def _warn_unknown_instances(settings: Settings, wanted: list[int] | None) -> None:
    """Say up front when none or some of the chosen instances have windows (their pages would each say "no
    window in this selection", and nothing else would)."""
    if not wanted:
        return
    from workbench.store.window_stats import WindowStatsStore

    try:
        with WindowStatsStore.from_settings(settings, read_only=True) as store:
            known = store.instance_ids()
    except Exception:  # no window store yet: the pages say so
        return
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        shown = ", ".join(map(str, known[:20])) + (", ..." if len(known) > 20 else "")
        logger.warning("instances %s have no windows in the window store (it holds %s): %s",
                       ", ".join(map(str, unknown[:20])), shown or "none",
                       "the report has no data" if len(unknown) == len(set(wanted)) else "their parts stay empty")


def _staging_folders(out: Path) -> tuple[Path, Path]:
    """Where a report into ``out`` is written, and where the earlier report waits while it is replaced."""
    return out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.previous")


def _recover_swap(out: Path, staging: Path, previous: Path) -> None:
    """Undo what a run killed mid-way left: its half-written pages, or an earlier report set aside."""
    shutil.rmtree(staging, ignore_errors=True)
    if previous.is_dir():
        if out.exists():  # killed after the new report was in place: the earlier one is done with
            shutil.rmtree(previous, ignore_errors=True)
        else:  # killed between the two renames: the earlier report goes back
            previous.rename(out)


def _swap_in(out: Path, staging: Path, previous: Path) -> None:
    """Put the finished ``staging`` folder at ``out``, replacing (not merging into) an earlier report."""
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def _run_notebooks(settings: Settings, out: Path, final: Path, run_id: str, params: dict[str, Any],
                   notebooks: Sequence[str], source: Path, data: str | Path | None, progress: bool, timeout: float,
                   show_code: bool) -> None:
    """Execute ``notebooks`` into ``out`` and write its pages and index (see :func:`run_report`); messages
    name ``final``, where ``out`` will be once it is complete."""
    import papermill
    from tqdm.auto import tqdm

    from workbench.reports._kernel import ReportKernelManager
    from workbench.reports.notebook import find_labelled_log

    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True, default=str), encoding="utf-8")
    logger.info("report run_id=%s out=%s notebooks=%s", run_id, final, ",".join(notebooks))

    env = settings.to_env()
    done: list[tuple[str, str]] = []
    failure: ReportError | None = None
    bar = tqdm(list(notebooks), desc="report", unit="notebook", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        notebook = source / f"{name}.ipynb"
        executed = out / f"{name}.ipynb"
        declared = _declared(notebook)
        given = {k: v for k, v in params.items() if k in declared}
        if data is not None and "data" in declared:
            given["data"] = str(Path(data).expanduser().resolve())
        try:
            with _environment(env):
                papermill.execute_notebook(str(notebook), str(executed), parameters=given, kernel_name="python3",
                                           progress_bar=progress, cwd=str(out), execution_timeout=timeout,
                                           extra_arguments=_KERNEL_ARGUMENTS,
                                           kernel_manager_class=ReportKernelManager)
            state = "ok"
        except papermill.PapermillExecutionError as exc:
            state = f"failed in cell {exc.cell_index}: {exc.ename}: {exc.evalue}"
            failure = failure or ReportError(f"Report notebook {name} failed in cell {exc.cell_index} "
                                             f"({exc.ename}: {exc.evalue}). See {final / executed.name}.",
                                             notebook=name)
            logger.error("report notebook failed name=%s cell=%s error=%s", name, exc.cell_index, exc.evalue)
        if executed.is_file():
            export_html(executed, show_code=show_code)
        done.append((name, state))
    bar.close()
    from workbench.reports._summary import write_summary

    try:
        labels_file = find_labelled_log(settings, str(params.get("labels_path", "")))
    except Exception as exc:  # a bad labels_path already failed a notebook; the summary goes without labels
        logger.warning("report summary without labels: %s", exc)
        labels_file = None
    write_summary(out, run_id, settings, params, done, labels_file=labels_file)
    if failure is not None:
        raise failure
