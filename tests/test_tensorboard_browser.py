"""TensorBoard as a person sees it: a tiny run, ``tensorboard --logdir``, headless Chromium, the run and its curves.

TensorBoard is a JavaScript app: the page the server sends is an empty shell, so the test polls the DOM that
Chromium rendered (through chromedriver's WebDriver HTTP API) until the run and its cards are there, and keeps a
screenshot in ``test-artifacts/``. Every process started here is stopped, with its children, in ``finally``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from cnnlab.train import train
from conftest import TINY_OVERRIDES, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# The time-series dashboard, filtered to the two tags the test looks for (a regex; cards render lazily).
DASHBOARD = "/?tagFilter=train.loss%7Cval.acc#timeseries"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromium-driver are not installed (make system-packages installs them)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and every process it started."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            os.killpg(proc.pid, signal.SIGKILL)  # helpers left in the group
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def served(log_dir: Path, tmp_path: Path) -> Iterator[str]:
    """A started ``tensorboard --logdir log_dir`` on 127.0.0.1 (the venv's), its URL; stopped at the end."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(log_dir)]
    with open(tmp_path / "tensorboard.log", "w") as output:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_group(proc)


@pytest.fixture
def tensorboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A started ``tensorboard --logdir`` of an empty log dir, its URL and the log dir."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    with served(log_dir, tmp_path) as url:
        yield url, log_dir


class Browser:
    """Headless Chromium driven through chromedriver's WebDriver HTTP API (plain JSON over HTTP, no client library)."""

    def __init__(self, endpoint: str, profile: Path) -> None:
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.endpoint = endpoint
        session = self._call("POST", "/session", {"capabilities": capabilities})
        self.session = f"{endpoint}/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None, base: str | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request((base or self.endpoint) + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)["value"]
        except urllib.error.HTTPError as err:  # chromedriver explains in the body (e.g. Chromium did not start)
            raise RuntimeError(f"chromedriver: {method} {path}: {err.read().decode()[:2000]}") from None

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url}, base=self.session)

    def run_script(self, script: str) -> object:
        """What ``script`` (a function body) returns in the page."""
        return self._call("POST", "/execute/sync", {"script": script, "args": []}, base=self.session)

    def dom(self) -> str:
        """The page as rendered now (what a person would see, not the HTML the server sent)."""
        return self.run_script("return document.documentElement.outerHTML;")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot", base=self.session)))

    def close(self) -> None:
        self._call("DELETE", "", base=self.session)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile, through a started chromedriver."""
    port = free_port()
    with open(tmp_path / "chromedriver.log", "w") as output:
        proc = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            wait_until(lambda: get_json(f"{endpoint}/status")["value"]["ready"], "chromedriver to start")
            browser = Browser(endpoint, tmp_path / "profile")
            try:
                yield browser
            finally:
                browser.close()
        finally:
            stop_group(proc)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_until(ready, what: str, timeout: float = 60):
    """Poll ``ready()`` until it returns something true (connection errors count as not ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = ready()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_tensorboard_shows_the_run_and_its_curves_in_a_browser(tensorboard, browser, tiny_cfg):
    url, log_dir = tensorboard
    cfg = tiny_cfg("trainer.max_epochs=2", f"paths.log_dir={log_dir}")
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.run.dir  # <log dir>/lenet-fashion_mnist/<date>_<time>_<microseconds>
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    run = Path(cfg.paths.output_dir).relative_to(log_dir).as_posix()
    loaded = lambda: "val/acc" in get_json(f"{url}/data/plugin/scalars/tags").get(run, {})  # noqa: E731
    wait_until(loaded, f"the TensorBoard server to load {run}")

    browser.open(url + DASHBOARD)
    wanted = [run, 'title="train/loss_step"', 'title="val/acc"']  # the run in the run list, a card per tag
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "tensorboard.png"
    try:
        wait_until(lambda: all(w in browser.dom() for w in wanted), f"the browser to render {wanted}", 90)
    finally:  # kept either way: what the browser showed
        (ARTIFACTS / "tensorboard-dom.html").write_text(browser.dom())
        browser.screenshot(screenshot)
        print(f"TensorBoard screenshot: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


# The HPARAMS dashboard is built of web components: its table and its list of hparams live in shadow DOMs, which
# outerHTML leaves out. This walks them: the hparams and metrics the dashboard offers (its checkboxes), the table's
# cells in order (the header row first: one cell a column) and how many columns it shows.
HPARAMS_TABLE = """
const found = {hparams: [], metrics: [], cells: [], columns: 0};
function walk(node) {
  if (node.nodeType === 1) {
    const tag = node.tagName.toLowerCase();
    const text = node.textContent.trim();
    if (tag === 'paper-checkbox' && node.classList.contains('hparam-checkbox')) found.hparams.push(text);
    if (tag === 'paper-checkbox' && node.classList.contains('metric-checkbox')) found.metrics.push(text);
    if (tag === 'vaadin-grid-cell-content') found.cells.push(text);
    if (tag === 'vaadin-grid-column') found.columns += 1;
    if (node.shadowRoot) walk(node.shadowRoot);
  }
  for (const child of node.childNodes) walk(child);
}
walk(document);
return found;
"""


def test_a_sweeps_hparams_table_opens_on_what_it_varies(browser, tmp_path, tiny_data_dir):
    """A 2x2 sweep in TensorBoard: the swept keys are the table's first columns, the knobs fit in under 60 columns,
    and the runs (job dirs) are told apart by their first characters."""
    log_dir, sweep_dir = tmp_path / "logs", tmp_path / "logs" / "multirun" / "sweep"
    sweep = run_cli("cnnlab.train", "-m", "model=lenet,lenet_relu", "optimizer.lr=0.1,0.9", *TINY_OVERRIDES,
                    f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={log_dir}", f"hydra.sweep.dir={sweep_dir}",
                    "callbacks=none", cwd=tmp_path)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 4 and len({job[:30] for job in jobs}) == 4, jobs
    with served(sweep_dir, tmp_path) as url:
        wait_until(lambda: set(jobs) <= set(get_json(f"{url}/data/runs")), "the TensorBoard server to load the jobs")
        browser.open(url + "/#hparams")
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "hparams.png"
        table = {}

        def rendered() -> bool:
            table.update(browser.run_script(HPARAMS_TABLE))
            return table["columns"] > 2 and all(job in table["cells"] for job in jobs)  # a row per job, by name

        try:
            wait_until(rendered, "the browser to render the HPARAMS table", 90)
        finally:
            browser.screenshot(screenshot)
            print(f"HPARAMS screenshot: {screenshot}")
        headers = table["cells"][: table["columns"]]
        print(f"{len(table['hparams'])} hparams, {len(table['metrics'])} metrics; columns shown: {headers}")
        assert headers[:2] == ["Trial ID", "Show Metrics"] and headers[2:4] == ["model", "optimizer.lr"], headers
        offered = table["hparams"] + table["metrics"]
        assert len(offered) < 60 and not [name for name in offered if "_target_" in name or "callbacks" in name]
        assert {"hp/test_acc", "hp/params", "hp/macs", "hp/wall_s", "hp/status"} <= set(table["metrics"])

        browser.open(url + "/#timeseries")  # the run list: each job by its dir's name
        wait_until(lambda: all(job in browser.dom() for job in jobs), "the run list to show the jobs", 90)
    print(f"runs: {jobs}")
