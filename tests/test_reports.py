"""run_report: executed notebooks plus offline HTML, deterministic tables, and a real browser render."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.notebook_home import cached_home
from workbench.config import Settings
from workbench.exceptions import ConfigurationError
from workbench.reports import ALL, PAGES, ReportError, export_html, run_report

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, Path]:
    home, data = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home, reports_dir=tmp_path_factory.mktemp("reports"))
    out = run_report(settings, run_id="first", params={"versions": ""}, data=data, progress=False)
    return settings, data, out


def _metrics_table(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "metrics-table" in c.metadata.get("tags", []))
    return "".join(o["data"]["text/plain"] for o in cell.outputs if "data" in o)


def test_report_has_executed_notebooks_html_and_index(report: tuple[Settings, Path, Path]) -> None:
    settings, _, out = report
    assert out == settings.resolved_reports_dir / "first"
    index = (out / "index.html").read_text()
    for name in ALL:
        assert (out / f"{name}.ipynb").is_file()
        page = (out / f"{name}.html").read_text()
        assert f"href='{name}.html'" in index
        assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page, re.I), name
        assert "cdn" not in page.lower() or "<script" not in page.lower()
    assert "class='bad'" not in index
    page = (out / "04_stream_analytics.html").read_text()
    assert page.count("<svg") >= 1 and "mark-rect" in page  # the class shares: a bar per window
    nb = nbformat.read(out / "02_anomaly_explorer.ipynb", as_version=4)
    assert any("image/svg+xml" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_pages_show_results_not_code_unless_asked(report: tuple[Settings, Path, Path], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    _, _, out = report
    page = (out / "02_anomaly_explorer.html").read_text()
    assert "hl-ipython3" not in page and "anomaly_summary" not in page  # no code cell
    assert "Anomaly explorer" in page and "<svg" in page  # narrative and results stay
    # Every inline chart is named for a screen reader by its own title, and nbconvert has no image
    # without alternative text to warn about.
    labels = re.findall(r'<svg role="img" aria-label="([^"]*)"', page)
    assert labels and len(labels) == page.count("<svg") and all(labels)
    with caplog.at_level(logging.WARNING):
        with_code = export_html(out / "02_anomaly_explorer.ipynb", tmp_path / "with_code.html", show_code=True)
    assert "Alternative text" not in caplog.text
    text = with_code.read_text()
    assert "hl-ipython3" in text and "anomaly_summary" in text


def test_summary_page_has_key_figures_thumbnails_links_parameters_versions(
        report: tuple[Settings, Path, Path]) -> None:
    _, data, out = report
    index = (out / "index.html").read_text()
    assert [p.name for p in PAGES] == list(ALL)
    for entry in PAGES:
        assert f"href='{entry.name}.html'" in index and entry.title in index
    import pyarrow.parquet as pq

    events = pq.read_metadata(data).num_rows
    assert f"<div class='value'>{events:,}</div>" in index  # every generated query, counted by the windows
    assert "Anomalies per reason and model version" in index
    reasons = ("slow_execution", "queue_longer_than_run", "scan_explosion", "spill_exceeds_scan")
    assert any(f"<td>{reason}</td>" in index for reason in reasons)  # the table has rows, not only a header
    assert "id='detection'" in index and "Precision vs labels" in index and "Recall per labelled kind" in index
    assert "Critical instances" in index
    assert index.count("<figure class='thumb'><svg") >= 3  # inline SVG thumbnails, offline
    assert "<td>versions</td>" in index and "id='versions'" in index and "pulse-workbench" in index
    assert "<script" not in index.lower()


def test_same_data_and_parameters_give_the_same_numbers(report: tuple[Settings, Path, Path]) -> None:
    settings, data, out = report
    again = run_report(settings, run_id="second", params={"versions": ""}, notebooks=["04_stream_analytics"],
                       data=data, progress=False)
    first = _metrics_table(out / "04_stream_analytics.ipynb")
    second = _metrics_table(again / "04_stream_analytics.ipynb")
    assert "Score (% normal)" in first and first == second


def test_bad_arguments_are_explained(report: tuple[Settings, Path, Path]) -> None:
    settings, _, _ = report
    with pytest.raises(ReportError, match="Unknown report parameter"):
        run_report(settings, params={"instance": "1"}, progress=False)
    with pytest.raises(ReportError, match="Unknown report notebook"):
        run_report(settings, notebooks=["99_nope"], progress=False)
    with pytest.raises(ReportError, match="run_id must be"):
        run_report(settings, run_id="../x", notebooks=["04_stream_analytics"], progress=False)
    # a labelled log that is not there is refused before any notebook runs (and any folder is made)
    with pytest.raises(ReportError, match=r"The labelled log \(--data, data=\) '.*missing\.parquet' does not exist"):
        run_report(settings, run_id="never", data=settings.home / "missing.parquet", progress=False)
    assert not (settings.resolved_reports_dir / "never").exists()
    # so are versions none of which is registered (notebook 03 stopped on them in its second cell)
    with pytest.raises(ConfigurationError, match=r"no registered model version: v0009\."):
        run_report(settings, run_id="never", params={"versions": "v0009"}, progress=False)
    assert not (settings.resolved_reports_dir / "never").exists()


def test_instances_without_windows_are_named_before_any_notebook_runs(report: tuple[Settings, Path, Path],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """`report --instances 999999` wrote a report whose every page said "no window in this selection"."""
    from workbench.store.window_stats import WindowStatsStore

    settings, _, _ = report
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        known = store.instance_ids()
    assert known and 999999 not in known
    with caplog.at_level(logging.WARNING, logger="workbench.reports"), pytest.raises(ReportError, match="run_id"):
        run_report(settings, run_id="../x", params={"instances": "999999"}, progress=False)  # stops after the checks
    assert "instances 999999 have no windows in the window store (it holds " in caplog.text
    assert "the report has no data" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workbench.reports"), pytest.raises(ReportError, match="run_id"):
        run_report(settings, run_id="../x", params={"instances": str(known[0])}, progress=False)
    assert "have no windows" not in caplog.text


def test_a_parameter_out_of_its_range_is_refused_before_any_notebook_runs(tmp_path: Path) -> None:
    """top_n=-3 ran notebook 01 and then cut the last 3 rows off notebook 02's and 03's tables."""
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(ConfigurationError, match=r"The `top_n` parameter must be at least 1 .*\. Got -3 instead"):
        run_report(settings, run_id="never", params={"top_n": -3}, progress=False)
    assert not (settings.resolved_reports_dir / "never").exists()


@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium is not installed (run `make browser` or apt-get install chromium)")
def test_report_renders_its_charts_in_headless_chromium(report: tuple[Settings, Path, Path], tmp_path: Path) -> None:
    _, _, out = report
    page = out / "04_stream_analytics.html"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, timeout=120)
    dom = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")[-2000:]
    assert dom.count("<svg") >= 1
    assert dom.count('class="mark-rect') >= 1  # the class-share bars were drawn
    assert "Query classes per 10-minute window" in dom


@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium is not installed (run `make browser` or apt-get install chromium)")
def test_summary_page_opens_from_disk_with_visible_thumbnails(report: tuple[Settings, Path, Path],
                                                               tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    _, _, out = report
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "index.html").as_uri())
            sizes = page.evaluate("""() => [...document.querySelectorAll('figure.thumb svg')].map(s => {
                const marks = [...s.querySelectorAll('g.role-mark > path')].map(p => p.getBBox());
                return marks.filter(b => b.width > 0 && b.height > 0).length; })""")
            assert sizes and all(n > 0 for n in sizes), sizes
            assert all(u.startswith("file:") or u.startswith("data:") for u in requests), requests
            shot = tmp_path / "report-summary.png"
            page.screenshot(path=str(shot), full_page=False)
            keep = os.environ.get("WORKBENCH_SCREENSHOTS_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(keep) / "report-summary.png")
        finally:
            browser.close()


def test_the_cli_report_on_a_fresh_home_prints_its_path_and_no_kernel_chatter(tmp_path: Path) -> None:
    """`workbench report` before any data: the page says so, and the terminal shows progress and the
    path, not ipykernel's paragraph about unencrypted local sockets (once per notebook before), and
    names the notebook once."""
    import sys

    # only this home: `make test` exports WORKBENCH_REPORTS_DIR (the repository's reports/ for `make demo`)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env["WORKBENCH_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "report", "--notebooks", "04_stream_analytics",
                             "--run-id", "fresh", "--no-progress"], env=env, capture_output=True, timeout=300)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err[-2000:]
    assert out.strip().endswith(str(tmp_path / "home" / "reports" / "fresh" / "index.html")), out
    assert "IPKernelApp" not in err and "without encryption" not in err, err[-2000:]
    # papermill announced each notebook twice: once when asked for its parameters, once to run it
    assert err.count("Input Notebook:") == 1, err[-2000:]
    page = (tmp_path / "home" / "reports" / "fresh" / "04_stream_analytics.html").read_text()
    assert "window_stats is empty: replay some data first" in page
    assert "no classification: no window in this selection" in page  # not a table of zeros at 0.00 %


def test_the_kernels_own_errors_reach_the_terminal_but_not_the_shutdown_interrupts_echo(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """jupyter_client interrupts a kernel before shutting it down; landing in a message handler, that
    makes ipykernel log "KeyboardInterrupt caught in kernel." (a loaded CI machine showed it at the end
    of a finished report). That line is dropped; any other line of the kernel's own log is relayed."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        'log = get_ipython().kernel.log\n'
        'log.error("KeyboardInterrupt caught in kernel.")\n'
        'log.error("workbench-test: a kernel error the user must see")\n')]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "notebooks"
    source.mkdir()
    nbformat.write(nb, source / "kernel_log.ipynb")
    run_report(Settings(home=tmp_path / "home", reports_dir=tmp_path / "reports"), run_id="log",
               notebooks=["kernel_log"], notebooks_dir=source, progress=False)
    err = capfd.readouterr().err
    assert "workbench-test: a kernel error the user must see" in err
    assert "KeyboardInterrupt caught" not in err


def _report_folders(settings: Settings) -> list[str]:
    """What the reports folder holds (a run id's lock file too, while a report is written into it)."""
    return sorted(p.name for p in settings.resolved_reports_dir.iterdir())


def _write_notebooks(folder: Path, sources: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, code in sources.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def test_a_rerun_into_the_same_run_id_replaces_the_report_and_one_cut_short_keeps_the_earlier(
        tmp_path: Path) -> None:
    """A second report into an existing run id kept the first one's pages beside its own; one
    interrupted (Ctrl-C) after its first page left that page mixed into the earlier report."""
    import signal
    import sys
    import time

    source = _write_notebooks(tmp_path / "notebooks", {
        "one": "print('page one, run', 1)", "two": "print('page two')",
        "slow": "import time\nprint('slow started', flush=True)\ntime.sleep(120)"})
    settings = Settings(home=tmp_path / "home", reports_dir=tmp_path / "reports")
    out = run_report(settings, run_id="r", notebooks=["one", "two"], notebooks_dir=source, progress=False)
    assert {p.name for p in out.iterdir()} >= {"one.ipynb", "one.html", "two.ipynb", "two.html", "index.html"}

    # a run killed with SIGKILL under a time-stamp run id, which nothing runs into again: its pages stayed
    abandoned = settings.resolved_reports_dir / ".20240101T000000Z.partial"
    abandoned.mkdir()
    (abandoned / "one.ipynb").write_text("{}")
    again = run_report(settings, run_id="r", notebooks=["one"], notebooks_dir=source, progress=False)
    assert again == out
    assert not (out / "two.ipynb").exists() and not (out / "two.html").exists()
    assert "two.html" not in (out / "index.html").read_text()
    assert _report_folders(settings) == ["r"]  # nothing staged is left over, the abandoned run's pages neither

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    reports = str(tmp_path / "reports")
    script = ("from pathlib import Path\nfrom workbench.config import Settings\n"
              "from workbench.reports import run_report\n"
              f"run_report(Settings(home=Path({str(settings.home)!r}), reports_dir=Path({reports!r})),"
              f" run_id='r', notebooks=['two', 'slow'], notebooks_dir=Path({str(source)!r}), progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staged = settings.resolved_reports_dir / ".r.partial" / "slow.ipynb"
    deadline = time.monotonic() + 120
    while not (staged.is_file() and "slow started" in staged.read_text()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    assert staged.is_file(), "the slow notebook never started"
    # a second run into the same run id deleted the pages the first was writing (FileNotFoundError in the first)
    with pytest.raises(ReportError, match=r"Another report is being written into .*r right now: wait for it"):
        run_report(settings, run_id="r", notebooks=["one"], notebooks_dir=source, progress=False)
    assert staged.is_file() and proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err, err.decode()[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier report, untouched
    assert _report_folders(settings) == ["r"]


def test_a_summary_table_shows_counts_as_counts_beside_ratios() -> None:
    """The summary's per-kind table printed counts below 10 as '2.000' beside '24' (tester B, 33rd session)."""
    import pandas as pd

    from workbench.reports._summary import _table

    frame = pd.DataFrame({"labelled": [2, 24], "alerted": [1, 10], "recall": [0.5, 0.417]},
                         index=pd.Index(["spill", "slow"], name="label_kind"))
    assert "<td>spill</td><td>2</td><td>1</td><td>0.500</td>" in _table(frame)
