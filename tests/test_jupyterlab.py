"""The notebooks in JupyterLab, in a real browser, as a workshop attendee sees them.

nbval and papermill check the kernel side only. Here `jupyter lab` runs from the project's
environment on 127.0.0.1 (random port and token) and Debian's Chromium, driven by Playwright,
runs 00 through the menus, opens 06 as committed and watches 04 (quick profile) draw its
progress bars. Screenshots go to outputs/screenshots/.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "outputs" / "screenshots"
INSTALL = "apt-get update && apt-get install -y chromium"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason=f"Chromium is not installed; install it with `{INSTALL}`")]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[dev]'")

# Settings of a fresh JupyterLab, except that nothing asks to fetch news from the internet.
SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False}}
IMAGES = ".jp-OutputArea .jp-RenderedImage img"


class Lab:
    """A running `jupyter lab` and the URL pieces to reach it."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        for name, value in SETTINGS.items():
            (workdir / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / "settings" / name).write_text(json.dumps(value))
        # An attendee's environment: no batch-mode progress switches from `make test`.
        env = {k: v for k, v in os.environ.items() if k not in ("TUTORIAL_LIB_PROGRESS", "TQDM_MININTERVAL")}
        env.update(JUPYTERLAB_SETTINGS_DIR=str(workdir / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(workdir / "ws"),
                   JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
        self.log = (workdir / "jupyterlab.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={ROOT}", "--allow-root", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; see {self.log.name}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"jupyter lab did not answer within {timeout_s} s; see {self.log.name}")

    def url(self, path: str, workspace: str) -> str:
        return f"{self.base}/lab/workspaces/{workspace}/tree/{path}?token={self.token}"

    def shutdown_kernels(self) -> None:
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), then kill whatever is left of its process group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        context.close()


def open_notebook(page, lab: Lab, path: str, workspace: str) -> None:
    """Open a notebook and wait until its kernel is idle."""
    page.goto(lab.url(path, workspace))
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    wait_kernel_idle(page)


def wait_kernel_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the status bar says the notebook's kernel is idle ("No Kernel | Initializing" comes first)."""
    page.wait_for_function(
        """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                   .some(e => /^(?!No Kernel).+ \\| Idle$/.test(e.textContent.trim()))""", timeout=timeout_ms)


def menu(page, top: str, item: str) -> None:
    """Click a JupyterLab menu item, as a user does: e.g. Run > Run All Cells."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def run_all(page, timeout_ms: int) -> None:
    """Clear every output, Run > Run All Cells, wait until every code cell has a new execution count."""
    menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function("() => document.querySelectorAll('.jp-OutputArea-output').length === 0")
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                   return p.length > 0 && p.every(e => /^\\[\\d+\\]:$/.test(e.textContent.trim())); }""",
        timeout=timeout_ms)
    wait_kernel_idle(page)


def page_errors(page) -> list[str]:
    """Tracebacks and error outputs shown in the notebook."""
    # textContent, not innerText: cells scrolled out of view are not rendered (JupyterLab's default windowing)
    texts = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_text_contents()
    return [t for t in texts if "Traceback" in t or "Error" in t]


def dead_widgets(page) -> list[str]:
    """Widgets without a live model behind them ("Loading widget...", "Error displaying widget") or frozen bars."""
    text = " ".join(page.locator(".jp-OutputArea-output").all_text_contents())
    return re.findall(r"Loading widget\.\.\.|Error displaying widget|\b0%\|", text)


def image_sizes(page) -> list[tuple[int, int]]:
    page.wait_for_function(f"() => [...document.querySelectorAll({IMAGES!r})].every(i => i.complete)")
    return page.eval_on_selector_all(IMAGES, "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")


def screenshot(page, name: str, target) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)  # let the scrolled notebook repaint
    page.screenshot(path=str(SCREENSHOTS / name))


def committed_outputs(notebook: Path) -> tuple[int, int]:
    """How many PNG figures and HTML tables the committed notebook holds."""
    outputs = [o for c in nbformat.read(notebook, as_version=4).cells for o in c.get("outputs", [])]
    pngs = sum("image/png" in o.get("data", {}) for o in outputs)
    tables = sum(o.get("data", {}).get("text/html", "").count("<table") for o in outputs)
    return pngs, tables


def test_00_runs_all_cells_in_jupyterlab(lab, page):
    open_notebook(page, lab, "notebooks/00_setup.ipynb", "t00")
    run_all(page, timeout_ms=180_000)
    assert page_errors(page) == []
    assert dead_widgets(page) == []
    expected, _ = committed_outputs(ROOT / "notebooks" / "00_setup.ipynb")
    sizes = image_sizes(page)
    assert len(sizes) == expected, f"{len(sizes)} figures rendered, the committed notebook has {expected}"
    assert all(w >= 200 and h >= 100 for w, h in sizes), sizes
    cat_cell = page.locator(".jp-CodeCell", has_text="cat class in the top 5: ['")
    assert cat_cell.count() == 1  # the pretrained network found the cat, and said so once
    screenshot(page, "00_setup.png", cat_cell)  # the cat, classified
    lab.shutdown_kernels()


def test_06_shows_its_committed_figures_and_tables(lab, page):
    notebook = ROOT / "notebooks" / "06_results.ipynb"
    page.goto(lab.url("notebooks/06_results.ipynb", "t06"))
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    pngs, tables = committed_outputs(notebook)
    assert pngs and tables
    page.wait_for_function(f"() => document.querySelectorAll({IMAGES!r}).length >= {pngs}")
    sizes = image_sizes(page)
    assert len(sizes) == pngs and all(w >= 200 and h >= 100 for w, h in sizes), sizes
    rendered = page.locator(".jp-OutputArea .jp-RenderedHTMLCommon table")
    assert rendered.count() == tables
    assert rendered.first.locator("td").count() > 0
    assert page_errors(page) == [] and dead_widgets(page) == []
    screenshot(page, "06_results.png", page.locator(".jp-CodeCell", has=page.locator(IMAGES)).first)
    lab.shutdown_kernels()


WATCH_BARS = """() => { window.bars = new Set(); window.deadWidgets = 0;
  setInterval(() => {
    document.querySelectorAll('.widget-hbox').forEach(box => {
      if (box.querySelector('.widget-hprogress')) window.bars.add(box.textContent.replace(/\\s+/g, ' ').trim());
    });
    if (/Loading widget|Error displaying widget/.test(document.body.textContent)) window.deadWidgets += 1;
  }, 40); }"""
BAR_MOVED = """(described) => { const seen = {};
  for (const text of window.bars) {
    const m = text.match(/^(.*?)\\s*\\d+%.*?(\\d+)\\/(\\d+)/);
    if (m && new RegExp(described).test(m[1])) (seen[m[1]] = seen[m[1]] || new Set()).add(m[2]);
  }
  return Object.values(seen).some(counts => counts.size >= 2); }"""  # a bar whose description matches moved


def test_04_shows_a_live_progress_bar(lab, page, tmp_path):
    """Notebook 04 in the quick profile: its trunk pass draws a widget bar that moves while the cell runs."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(ROOT / "notebooks" / "04_transfer_learning_fashion.ipynb"))
    nb = parameterize_notebook(nb, {  # what papermill -p does: a cell of overrides after the parameters cell
        "PROFILE": "quick", "CACHE_DIR": str(tmp_path / "cache"), "FIGURES_DIR": str(tmp_path / "figures"),
        "RESULTS_PATH": str(tmp_path / "results.json")})
    (ROOT / "outputs").mkdir(exist_ok=True)  # the server only serves files under the project: a copy there
    folder = Path(tempfile.mkdtemp(prefix="jupyterlab-test-", dir=ROOT / "outputs"))
    try:
        nbformat.write(nb, folder / "04_quick.ipynb")
        open_notebook(page, lab, f"{folder.relative_to(ROOT).as_posix()}/04_quick.ipynb", "t04")
        page.evaluate(WATCH_BARS)
        menu(page, "Run", "Run All Cells")
        # the trunk pass's bar (named after the backbone); the quick resize-and-pad bar before it may move or not
        page.wait_for_function(BAR_MOVED, arg="efficientnet|googlenet", timeout=180_000)
        assert page.evaluate("() => window.deadWidgets") == 0
        assert page_errors(page) == []
    finally:
        lab.shutdown_kernels()
        shutil.rmtree(folder, ignore_errors=True)
