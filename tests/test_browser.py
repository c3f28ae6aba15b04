"""The notebooks as a user meets them: JupyterLab in headless Chromium, driven by Playwright.

The test starts a workbench (replay + analytics app on the session's broker) on a copy of the
notebook test home, starts JupyterLab on 127.0.0.1 with a random port and token and private
Jupyter directories, opens ``01_replay_control``, runs all cells and then uses the panel: pause,
a speed preset, a seek. After each click the Python API's ``Workbench.status()`` must agree, and
so must the panel. It then opens ``02_anomaly_explorer``, runs all cells and checks that every
chart has visible marks (SVG marks of non-zero size). Playwright drives the system Chromium
(``executable_path``); it never downloads a browser. Set ``WORKBENCH_SCREENSHOTS_DIR`` to keep
the PNG screenshots (the README's come from ``docs/images/``).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import isolated_settings
from tests.helpers import wait_until as _wait_until
from tests.notebook_home import cached_home
from workbench.config import Settings
from workbench.runtime import Workbench

# A browser round trip is slower than an API call: more time and a calmer poll than the default.
wait_until = functools.partial(_wait_until, timeout=45.0, poll=0.3)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).is_file()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (run `make browser` or apt-get install chromium)")




def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser_home(kafka_base: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on a copy of the notebook home (nothing started yet)."""
    home_src, _ = cached_home(tmp_path_factory.getbasetemp())
    home = tmp_path_factory.mktemp("browser") / "home"
    shutil.copytree(home_src, home, ignore=shutil.ignore_patterns("run", "logs"))
    return isolated_settings(kafka_base, home)


@pytest.fixture
def lab_server(browser_home: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """JupyterLab on a copy of the notebooks, started but not waited for: it boots while the
    workbench starts (``lab`` waits for both). Yields the process, the base URL and the token."""
    settings = browser_home
    root = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", root)
    port, token = _free_port(), secrets.token_hex(16)
    # Private Jupyter directories; every cell stays in the page (no windowing), so all charts can be checked.
    lab_settings = tmp_path / "lab-settings"
    tracker = lab_settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    news = lab_settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news prompt, no network
    # The dark theme, where the charts were white blocks (browser tester, 40th session); the light one is
    # what every other reader of the charts (papermill, the HTML reports, test_ui) sees.
    theme = lab_settings / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    theme.write_text('{"theme": "JupyterLab Dark"}')
    env = {**os.environ, "WORKBENCH_HOME": str(settings.home), "JUPYTER_CONFIG_DIR": str(tmp_path / "jconfig"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jruntime"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "JUPYTERLAB_SETTINGS_DIR": str(lab_settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # the notebook attaches: the broker comes from the running workbench
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        yield proc, f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def live_home(browser_home: Settings) -> Iterator[tuple[Settings, Workbench]]:
    """The copied notebook home with a running workbench (replay at 600x + analytics)."""
    settings = browser_home
    wb = Workbench.start(data=settings.home / "data" / "log.parquet", speedup=600, settings=settings,
                         apps=("analytics",))
    try:
        wait_until(lambda: (s := wb.status()).replay and s.replay_state == "running" and s.rows_sent > 0,
               what="the replay running")
        yield settings, wb
    finally:
        wb.stop()


@pytest.fixture
def lab(lab_server: tuple[subprocess.Popen, str, str], live_home: tuple[Settings, Workbench],
        tmp_path: Path) -> str:
    """JupyterLab answering (``lab_server`` comes first, so it boots while ``live_home`` starts);
    returns the notebook URL template with the token.

    Each notebook opens in a workspace of its own name, reset. With the default workspace a second
    tab asks the first, through a 200-500 ms localStorage beacon, whether the name is taken; when
    the busy first tab answers late, the second tab shares its layout and reopens its notebook too.
    """
    proc, base, token = lab_server

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(ready, timeout=90, what="JupyterLab answering")
    return f"{base}/lab/workspaces/{{workspace}}/tree/{{name}}?reset&token={token}"


@pytest.fixture
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1500})
            context.set_default_timeout(60_000)
            yield context.new_page()
        finally:
            browser.close()


def _run_all(page: Any, url: str, lab_log: Path | None = None) -> None:
    """Open a notebook, wait for its kernel, run all cells and wait until none is pending.

    On a timeout the failure names the cells still pending (prompt and first source line), the
    kernel status and the tail of ``lab_log``, and a full-page screenshot goes to ``$TMPDIR``.
    """
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # one notebook in the tab: the prompts checked below are its own, and Run All runs it
    assert page.locator(".jp-NotebookPanel").count() == 1, page.locator(".lm-TabBar-tabLabel").all_inner_texts()
    wait_until(lambda: "Idle" in page.locator("#jp-main-statusbar").inner_text(), timeout=90, what="kernel idle")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()

    def done() -> bool:
        prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()
        return bool(prompts) and all("[*]" not in p and any(ch.isdigit() for ch in p) for p in prompts)

    try:
        wait_until(done, timeout=240, poll=1.0, what="all cells executed")
    except AssertionError as exc:
        page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "workbench-browser-failure.png"),
                        full_page=True)
        raise AssertionError(f"{exc}\n{_pending_cells(page, lab_log)}") from None
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    assert not [e for e in errors if "Traceback" in e or "Error" in e], errors
    tracebacks = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count()
    assert tracebacks == 0, page.locator(".jp-OutputArea").all_inner_texts()


def _pending_cells(page: Any, lab_log: Path | None) -> str:
    """What a stuck Run All looks like: each unfinished cell, the status bar and the server log's tail."""
    lines = [f"page {page.url}; status bar: {page.locator('#jp-main-statusbar').inner_text()!r}"]
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    for i in range(cells.count()):
        prompt = cells.nth(i).locator(".jp-InputPrompt").inner_text().strip()
        if "[*]" in prompt or not any(ch.isdigit() for ch in prompt):
            source = cells.nth(i).locator(".jp-InputArea-editor").inner_text().strip().splitlines()
            output = cells.nth(i).locator(".jp-OutputArea").inner_text().strip()[-300:]
            lines.append(f"cell {i} {prompt!r}: {source[0] if source else ''!r}; output {output!r}")
    if lab_log is not None and lab_log.exists():
        lines.append("JupyterLab log tail:\n" + lab_log.read_text(errors="replace")[-3000:])
    return "\n".join(lines)


def _run_new_cell(page: Any, code: str) -> str:
    """Add a cell below the last one, run ``code`` in it and return its text output."""
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    before = cells.count()
    cells.last.locator(".jp-InputPrompt").click()  # select the cell (command mode), not its editor
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    wait_until(lambda: cells.count() == before + 1, what="a new cell")
    page.keyboard.press("Enter")
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    cell = cells.nth(before)
    wait_until(lambda: any(ch.isdigit() for ch in cell.locator(".jp-InputPrompt").inner_text()), what=f"{code!r} ran")
    return cell.locator(".jp-OutputArea").inner_text().strip()


def _screenshot(element: Any, name: str, tmp_path: Path) -> None:
    target = tmp_path / name
    element.screenshot(path=str(target))
    keep = os.environ.get("WORKBENCH_SCREENSHOTS_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(keep) / name)


# Every chart's data marks (not axes, legends or titles), with their rendered size, per SVG chart.
_MARKS_JS = """() => {
  const out = [];
  const svgs = [];
  const holders = [];  // removed again below: over the page they would take its clicks
  document.querySelectorAll('.jp-OutputArea-output svg.marks, .jp-OutputArea-output > svg').forEach(s => svgs.push(s));
  document.querySelectorAll('.jp-OutputArea-output img[src^="data:image/svg+xml"]').forEach(img => {
    const text = decodeURIComponent(img.src.split(',').slice(1).join(','));
    const holder = document.createElement('div');
    holder.style.position = 'absolute'; holder.style.left = '0'; holder.style.top = '0';
    holder.innerHTML = text; document.body.appendChild(holder); holders.push(holder);
    svgs.push(holder.querySelector('svg'));
  });
  for (const svg of svgs) {
    if (!svg) continue;
    const title = (svg.querySelector('.role-title-text') || {}).textContent || '';
    const marks = {};
    svg.querySelectorAll('g.role-mark').forEach(g => {
      const kind = [...g.classList].find(c => c.startsWith('mark-')) || 'mark';
      for (const el of g.querySelectorAll(':scope > path, :scope > text, :scope > line, :scope > rect')) {
        const box = el.getBBox();
        marks[kind] = marks[kind] || {count: 0, visible: 0};
        marks[kind].count += 1;
        if (box.width > 0 || box.height > 0) marks[kind].visible += 1;
        if (kind === 'mark-rect' && !(box.width > 0 && box.height > 0)) marks[kind].visible -= 1;
      }
    });
    out.push({title, marks});
  }
  holders.forEach(h => h.remove());
  return out;
}"""


# The page's theme, and the background every chart is drawn on (the first rect of each chart's SVG).
_BACKGROUNDS_JS = """(root) => ({light: document.body.dataset.jpThemeLight,
  fills: [...root.querySelectorAll('svg.marks')].map(s => {
    const r = s.querySelector(':scope > rect'); return r ? getComputedStyle(r).fill : 'none'; })})"""
_WHITE = "rgb(255, 255, 255)"


# What of the panel reaches past its output area's right edge (the area's width, and the elements).
_OVERFLOW_JS = """(panel) => {
  const area = panel.closest('.jp-OutputArea-output') || panel.parentElement;
  const limit = area.getBoundingClientRect().right;
  const out = [];
  for (const el of [panel, ...panel.querySelectorAll('*')]) {
    const b = el.getBoundingClientRect();
    const name = el.className.baseVal ?? el.className;
    if (b.width > 0 && b.right > limit + 1) out.push(name + ' +' + Math.round(b.right - limit));
  }
  return {area: Math.round(area.getBoundingClientRect().width), overflow: out.slice(0, 12)};
}"""


@needs_chromium
def test_replay_panel_and_explorer_in_jupyterlab(lab: str, live_home: tuple[Settings, Workbench],
                                                  browser_page: Any, tmp_path: Path) -> None:
    _, wb = live_home
    page = browser_page
    _run_all(page, lab.format(workspace="panel", name="01_replay_control.ipynb"), tmp_path / "jupyterlab.log")

    # Run All leaves a working panel: the replay runs, the panel shows it.
    panel = page.locator(".workbench-panel")
    panel.wait_for(state="visible")
    toggle = panel.locator(".widget-toggle-button")
    wait_until(lambda: toggle.inner_text().strip() == "Pause", what="the play/pause button reading Pause")
    wait_until(lambda: "[running]" in panel.inner_text(), what="panel says running")
    assert wb.status().replay_state == "running"
    assert "e+" not in panel.inner_text()  # readable numbers, never 3.60e+3

    toggle.click()
    wait_until(lambda: wb.status().replay_state == "paused", what="status paused after the click")
    wait_until(lambda: "[paused]" in panel.inner_text(), what="panel says paused")
    wait_until(lambda: toggle.inner_text().strip() == "Play", what="the button reading Play")

    panel.locator(".widget-button", has_text="3600x").click()
    wait_until(lambda: wb.status().speedup == 3600, what="status speed 3600 after the preset")
    wait_until(lambda: "3,600x" in panel.inner_text(), what="panel shows 3,600x")

    # A typed 0 is max, as everywhere else (the slider's readout clamped it to 1x in the front end).
    speed_field = panel.locator("input[placeholder^='e.g.']")
    speed_field.fill("0")
    speed_field.press("Enter")
    wait_until(lambda: wb.status().speedup == 0, what="status speed max after typing 0")
    wait_until(lambda: panel.locator(".widget-label", has_text="max").count() >= 1, what="panel shows max")
    speed_field.fill("3,600x")
    speed_field.press("Enter")
    wait_until(lambda: wb.status().speedup == 3600, what="status speed 3600 after typing it")

    panel.locator("input[placeholder^='2024']").fill("2024-03-05 12:00")
    panel.locator(".widget-button", has_text="Seek").click()
    target = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    status = wait_until(lambda: (s := wb.status()).event_time and s.event_time >= target and s,
                    what="status at the seek time")
    assert (status.event_time - target).total_seconds() < 600, status.event_time
    wait_until(lambda: "2024-03-05 12:0" in panel.inner_text(), what="panel clock at the seek time")
    assert wb.status().replay_state == "paused"  # a seek does not resume

    toggle.click()
    wait_until(lambda: wb.status().replay_state == "running", what="status running after play")
    wait_until(lambda: "[running]" in panel.inner_text(), what="panel says running again")
    wait_until(lambda: panel.locator("svg").count() >= 1 or "waiting for the first window" in panel.inner_text(),
           what="panel charts or their placeholders")
    _screenshot(panel, "panel.png", tmp_path)
    assert wb.running  # Run All stopped nothing
    shown = panel.evaluate(_BACKGROUNDS_JS)
    assert shown["light"] == "false" and _WHITE not in shown["fills"], shown  # the panel's charts in the theme
    # A narrow window (a laptop with JupyterLab's file browser open): the rows wrap and nothing is cut
    # off at the right (the text fields' edge was, in an output area of about 270 px).
    page.set_viewport_size({"width": 610, "height": 1500})
    wait_until(lambda: 150 < panel.evaluate(_OVERFLOW_JS)["area"] < 300, what="a narrow output area")
    page.wait_for_timeout(500)  # the widgets' own layout follows the area's
    narrow = panel.evaluate(_OVERFLOW_JS)
    assert not narrow["overflow"], narrow
    page.set_viewport_size({"width": 1400, "height": 1500})

    # No view left (outputs cleared; the kernel alive): the panel stops refreshing; shown again, it refreshes.
    page.get_by_role("menuitem", name="Edit", exact=True).click()
    page.get_by_text("Clear Outputs of All Cells", exact=True).click()
    wait_until(lambda: page.locator(".workbench-panel").count() == 0, what="the panel's output cleared")
    assert _run_new_cell(page, "print('refreshing', panel.refreshing)") == "refreshing False"
    _run_new_cell(page, "display(panel)")
    panel = page.locator(".workbench-panel").last
    wait_until(lambda: "[running]" in panel.inner_text(), what="the panel shown again says running")
    assert _run_new_cell(page, "print('refreshing', panel.refreshing)") == "refreshing True"

    # A kernel restarted or stopped sends nothing: its panel stayed "[running]" with every control enabled. The
    # browser says so by itself once the clock has not been rendered anew for SILENT_AFTER_S (here the refresh
    # thread is silenced, as a restart silences it).
    def note_opacity() -> str:
        # read on a note in the page: each refresh renders a new one, and a replaced one reads '' (a CI run)
        return panel.locator("[data-beat]").evaluate("e => e.isConnected ? getComputedStyle(e).opacity : 'gone'")

    def note_height() -> float | None:
        return panel.locator("[data-beat]").evaluate("e => e.isConnected ? e.getBoundingClientRect().height : null")

    page.wait_for_timeout(3000)
    wait_until(lambda: note_opacity() == "0", timeout=10, what="the live panel's note transparent")
    # hidden and sized 0 meanwhile: no blank lines in a narrow panel, nothing copied or read aloud (40th session)
    wait_until(lambda: note_height() == 0 and "re-run this cell" not in panel.inner_text(), timeout=10,
               what="the live panel's note taking no room and no text")
    _run_new_cell(page, "panel._stop.set(); panel._wake.set()")
    wait_until(lambda: note_opacity() == "1", timeout=90, what="the silent panel's note shown")
    assert "re-run this cell" in panel.inner_text()

    # A second tab (leaving the first would ask about unsaved changes), opened while the first is slow:
    # a busy tab answers JupyterLab's workspace beacon late, which once made the second tab reopen the
    # first's notebook when both used the default workspace (see ``lab``).
    slow_first_tab = page.context.new_cdp_session(page)
    slow_first_tab.send("Emulation.setCPUThrottlingRate", {"rate": 100})
    explorer = page.context.new_page()
    _run_all(explorer, lab.format(workspace="explorer", name="02_anomaly_explorer.ipynb"), tmp_path / "jupyterlab.log")
    slow_first_tab.send("Emulation.setCPUThrottlingRate", {"rate": 1})
    charts = explorer.evaluate(_MARKS_JS)
    assert len(charts) >= 3, charts  # anomalies per 10 min, timeline, drill-down
    for chart in charts:
        visible = {k: v for k, v in chart["marks"].items() if k != "mark-text" and v["visible"] > 0}
        assert visible, f"chart {chart['title']!r} has no visible marks: {chart['marks']}"
        rects = chart["marks"].get("mark-rect")
        if rects:
            assert rects["visible"] == rects["count"], f"zero-size bars in {chart['title']!r}: {rects}"
    assert any("actual vs predicted runtime" in c["title"] for c in charts), [c["title"] for c in charts]
    # drawn by JupyterLab in its theme, not white blocks of static SVG
    shown = explorer.locator(".jp-Notebook").evaluate(_BACKGROUNDS_JS)
    assert shown["light"] == "false" and len(shown["fills"]) >= 3 and _WHITE not in shown["fills"], shown

    # A refused selection, Run All again: the one-line refusal, and below it nothing that ran as if the
    # selection were fine, and no NameError traceback (ipykernel aborts only the cells already queued
    # when one fails; on a loaded machine later ones ran: workbench.reports._run_guard).
    explorer.locator(".jp-Notebook .jp-CodeCell").first.locator(".cm-content").click()
    explorer.keyboard.press("Control+End")
    explorer.keyboard.type('\nstart = "2024-03-07"\nend = "2024-03-06"')
    explorer.keyboard.press("Escape")
    explorer.get_by_role("menuitem", name="Run", exact=True).click()
    explorer.get_by_text("Run All Cells", exact=True).click()
    prompts = explorer.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
    wait_until(lambda: "must be before `end`" in explorer.locator(".jp-Notebook").inner_text()
               and not any("[*]" in p for p in prompts.all_inner_texts()), what="Run All refused and done")
    outputs = explorer.locator(".jp-Notebook .jp-CodeCell .jp-OutputArea").all_inner_texts()
    refused = next(i for i, text in enumerate(outputs) if "must be before `end`" in text)
    below = [text.strip() for text in outputs[refused + 1:] if text.strip()]
    assert all(text.startswith("CellNotRun: not run: the setup cell above failed") for text in below), below
    assert "Traceback" not in "".join(outputs) and "NameError" not in "".join(outputs)
