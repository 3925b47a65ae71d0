"""The notebooks' explorers in a real browser: JupyterLab, headless Chromium, Playwright.

A JupyterLab server starts on a free local port (with a token) over a copy of the notebooks,
with neither ``ZSVSS_MODEL`` nor ``CI`` set, as a reader starts it. The quickstart runs as it
is: run-all must print the default model's line (``dinov2-s`` where its package is installed)
and draw a figure. For the explorers, a first cell ``%env ZSVSS_MODEL=tiny`` keeps each run to
seconds; Chromium runs all cells, then changes explorer controls the way a user does (typing a
number into a slider's readout, picking a dropdown entry) and checks that the explorer's image
changes, that no cell shows an error, that no explorer reports one, that the static copies
stay hidden under the live widgets, and that the browser console logs no error.

Chromium is Debian's package (``apt-get install chromium``; ``.ci/run`` installs it), driven by
Playwright from PyPI through ``executable_path`` (Playwright's own browser download is not
used). Without a Chromium executable the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ZSVSS_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 900_000  # one notebook's "Run All Cells" (tiny in FAST mode, or 00 on a CPU)
REDRAW_TIMEOUT_MS = 120_000  # one control change: at most one feature pass or modulation run

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium executable (apt-get install chromium, or set ZSVSS_CHROMIUM): "
    "the real-browser test of the explorers did not run",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server: notebook URL template, the notebooks' folder, REST API."""

    url: str
    folder: Path
    api: str
    token: str

    def _call(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(
            f"{self.api}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop_kernels(self) -> None:
        """Shut every session's kernel down: closing a page leaves its kernel running, and the
        next notebook's kernel should not share the cores with an idle one's memory."""
        for session in self._call("/api/sessions"):
            self._call(f"/api/sessions/{session['id']}", method="DELETE")
        deadline = time.monotonic() + 30
        while self._call("/api/kernels") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self._call("/api/kernels") == [], "a kernel survived its session's shutdown"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """A JupyterLab server over a copy of notebooks/ (data/ linked)."""
    pytest.importorskip("jupyterlab")
    work = tmp_path_factory.mktemp("lab")
    (work / "notebooks").mkdir()
    for nb in ROOT.glob("notebooks/0*.ipynb"):
        shutil.copy(nb, work / "notebooks")
    (work / "data").symlink_to(ROOT / "data")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("ZSVSS_MODEL", "CI")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["JUPYTER_CONFIG_DIR"] = str(work / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
    log = open(work / "lab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2
                )
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(work / 'lab.log').read_text()[-2000:]}")
        assert server.poll() is None, (work / "lab.log").read_text()[-2000:]
        url = f"http://127.0.0.1:{port}/lab/tree/notebooks/{{name}}?reset&token={token}"
        yield Lab(url, work / "notebooks", f"http://127.0.0.1:{port}", token)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


class Notebook:
    """One notebook open in JupyterLab, its console errors collected."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.console: list[str] = []
        self.page.on(
            "console", lambda m: self.console.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        self.page.goto(url)
        self.page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator", timeout=120_000)

    def run_all(self) -> None:
        """Run > Run All Cells once the kernel is up, then wait until every code cell has an
        execution count or one shows an error (Run All stops there; check_clean reports it)."""
        self.page.wait_for_function(  # a kernel is attached and idle, so Run All needs no dialog
            """() => {
                const name = document.querySelector('.jp-Toolbar-kernelName')?.textContent ?? '';
                const busy = document.querySelector('.jp-Notebook-ExecutionIndicator')
                    ?.getAttribute('data-status');
                const bar = document.querySelector('#jp-main-statusbar')?.textContent ?? '';
                return name.trim() !== '' && !/No Kernel/.test(name + bar) && busy === 'idle'
                    && /\\| Idle/.test(bar);
            }""",
            timeout=120_000,
            polling=250,
        )
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        self.page.wait_for_function(
            """() => {
                if (document.querySelector("[data-mime-type='application/vnd.jupyter.error']"))
                    return true;
                const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                    .map(e => e.textContent.trim());
                return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t));
            }""",
            timeout=RUN_TIMEOUT_MS,
            polling=1000,
        )

    def explorer(self, index: int):
        return self.page.locator(".zsvss-explorer").nth(index)

    def image(self, explorer) -> str:
        return explorer.locator(".widget-output img").first.get_attribute("src") or ""

    def change(self, explorer, label: str, value: str) -> None:
        """Set one control (by its label) as a user does, and wait for a new image."""
        before = self.image(explorer)
        control = explorer.locator(".widget-inline-hbox").filter(
            has=self.page.locator(".widget-label", has_text=label)
        )
        assert control.count() >= 1, f"no control {label!r}"
        control = control.first
        select = control.locator("select")
        if select.count():
            select.select_option(label=value)
        else:  # a slider: type the number into its editable readout
            readout = control.locator(".widget-readout")
            readout.click()
            self.page.keyboard.press("Control+A")
            self.page.keyboard.type(value)
            self.page.keyboard.press("Enter")
        self.page.wait_for_function(  # the Output widget puts a new <img> in place of the old
            "([box, old]) => { const img = box.querySelector('.widget-output img');"
            " return img !== null && img.getAttribute('src') !== old; }",
            arg=[explorer.element_handle(), before],
            timeout=REDRAW_TIMEOUT_MS,
            polling=250,
        )
        stderr = explorer.locator("[data-mime-type='application/vnd.jupyter.stderr']")
        assert stderr.count() == 0, f"{label}={value}: {stderr.first.inner_text()}"

    def check_clean(self) -> None:
        errors = self.page.locator("[data-mime-type='application/vnd.jupyter.error']")
        assert errors.count() == 0, errors.first.inner_text()[:2000]
        static = self.page.locator(".zsvss-static")
        assert static.count() == self.page.locator(".zsvss-explorer").count()
        assert not any(static.nth(i).is_visible() for i in range(static.count()))
        assert not self.console, self.console


def _variant(
    folder: Path, name: str, tag: str, marker: str | None = None, tiny: bool = True
) -> str:
    """A copy of notebook ``name``: cut after the first code cell containing ``marker`` (the
    explorer under test) when given; with ``tiny``, a first cell that picks the random tiny
    model (FAST: seconds); else without its committed outputs, so what shows is this run's."""
    import nbformat

    nb = nbformat.read(folder / name, as_version=4)
    if marker is not None:
        end = next(
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and marker in c.source
        )
        nb.cells = nb.cells[: end + 1]
    if tiny:
        nb.cells.insert(0, nbformat.v4.new_code_cell("%env ZSVSS_MODEL=tiny"))
    else:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
    short = f"{Path(name).stem}_{tag}.ipynb"
    nbformat.write(nb, folder / short)
    return short


def test_run_all_without_environment_variables_shows_the_default_model(lab, browser) -> None:
    from zsvss_nb.notebook.session import dinov2_available

    name = _variant(lab.folder, "00_quickstart.ipynb", "as_cloned", tiny=False)
    nb = Notebook(browser, lab.url.format(name=name))
    nb.run_all()
    nb.check_clean()
    model = "dinov2-s" if dinov2_available() else "tiny"
    first = nb.page.locator(".jp-CodeCell").first  # cells off screen are not laid out: scroll
    first.scroll_into_view_if_needed()
    line = first.locator(".jp-OutputArea-output").first.text_content() or ""
    assert f"MODEL = '{model}'" in line and ("the default" in line or "fallback" in line), line
    figure = nb.page.locator(".jp-OutputArea-output img[src^='data:image/png']")
    assert figure.count() >= 1, "run-all drew no figure"
    figure.first.scroll_into_view_if_needed()
    nb.page.wait_for_function(  # the PNG decodes: a figure, not a broken image
        "img => img.complete && img.naturalWidth > 0",
        arg=figure.first.element_handle(),
        timeout=30_000,
    )
    nb.page.close()
    lab.stop_kernels()


def test_notebook_01_explorers_redraw_in_a_real_browser(lab, browser) -> None:
    nb = Notebook(
        browser, lab.url.format(name=_variant(lab.folder, "01_feature_probing.ipynb", "tiny"))
    )
    nb.run_all()
    nb.check_clean()
    similarity, blocks, kmeans = nb.explorer(0), nb.explorer(1), nb.explorer(2)
    for label, value in (("frame", "2"), ("y (0-1)", "0.2"), ("x (0-1)", "0.8")):
        nb.change(similarity, label, value)
    for label, value in (
        ("block", "4"),
        ("start_step", "20"),
        ("frame", "1"),
        ("y (0-1)", "0.3"),
        ("x (0-1)", "0.7"),
    ):
        nb.change(blocks, label, value)
    nb.change(kmeans, "K", "7")  # a typed K, which the old SelectionSlider ignored
    nb.check_clean()
    nb.page.close()
    lab.stop_kernels()


@pytest.mark.parametrize(
    "name,marker,explorer,label,value",
    [
        ("02_context_modelling.ipynb", "context_explorer(", 1, "memory", "bank"),
        ("03_refinement.ipynb", "refine_explorer(", 0, "hop", "3"),
        ("04_upsampling.ipynb", "lambda_explorer(", 0, "lambda", "10.0"),
    ],
)
def test_explorers_of_notebooks_02_to_04_redraw(
    lab, browser, name, marker, explorer, label, value
) -> None:
    short = _variant(lab.folder, name, "through_explorer", marker)
    nb = Notebook(browser, lab.url.format(name=short))
    nb.run_all()
    nb.check_clean()
    nb.change(nb.explorer(explorer), label, value)
    nb.check_clean()
    nb.page.close()
    lab.stop_kernels()
