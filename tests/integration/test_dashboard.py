"""The dashboard against what really runs under one data directory: `postoffice up --only
store` and `postoffice office run --in-process` with a slow clock. Headless (Textual's
pilot) with the live source, and `dashboard --web` in real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from postoffice.office.controlsocket import ControlClient, control_path
from postoffice.office.dashboard.app import DashboardApp
from postoffice.office.dashboard.sources import LiveSource
from postoffice.office.errors import NotRunningError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

POSTOFFICE = [sys.executable, "-c", "from postoffice.cli import main; main()"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_")}
    env.update(extra)
    return env


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Office:
    """`postoffice up --only store` and a slow `office run --in-process`, one data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "var"
        self.logs = root / "logs"
        self.logs.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [*POSTOFFICE, *args], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def start_store(self) -> None:
        env = _env(POSTOFFICE_STORE_PORT="0", POSTOFFICE_STORE_METRICS_PORT="0")
        proc = self._spawn("up", ["up", "--only", "store", "--data-dir", str(self.data_dir)], env)
        status = self.data_dir / "run" / "director.json"

        def ready() -> bool:
            assert proc.poll() is None, self.log("up")
            if not status.exists():
                return False
            services = json.loads(status.read_text()).get("services", {})
            return bool(services.get("store", {}).get("state") == "ready")

        _wait(ready, "store from postoffice up")

    def start_run(self) -> None:
        env = _env(POSTOFFICE_OFFICE_N_NANO_SECS="4000000", POSTOFFICE_OFFICE_SIM_DURATION="1000")
        args = ["office", "run", "--config", "timeout", "--in-process", "--seed", "7", "--json"]
        proc = self._spawn("run", [*args, "--data-dir", str(self.data_dir)], env)
        client = ControlClient(control_path(self.data_dir), timeout_s=5)

        def answers() -> bool:
            assert proc.poll() is None, self.log("run")
            try:
                client.status()
            except NotRunningError:
                return False
            return True

        try:
            _wait(answers, "control socket")
        finally:
            client.close()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


@pytest.fixture
def office() -> Iterator[Office]:
    root = Path(tempfile.mkdtemp(prefix="po-dash-", dir="/tmp"))  # short: socket paths
    office = Office(root)
    try:
        yield office
    finally:
        office.stop()
        shutil.rmtree(root, ignore_errors=True)


def _static(app: DashboardApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def _services(app: DashboardApp) -> dict[str, list[str]]:
    table = app.query_one("#services", DataTable)
    rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
    return {row[0]: row for row in rows}


async def _until(pilot: Pilot[None], check: Callable[[], bool], what: str) -> None:
    for _ in range(300):  # at most 300 x 0.1 s
        if check():
            return
        await pilot.pause(0.1)
    note = str(pilot.app.query_one("#note", Static).content)
    raise AssertionError(f"the dashboard never showed {what} (its note: {note!r})")


async def test_the_dashboard_attached_to_a_real_run_and_store(office: Office) -> None:
    office.start_store()
    # The dashboard waits 2 s for the simulation's answer by default; a run starved by the
    # parallel suite on 2 cores can take longer to answer a key's request.
    source = LiveSource(office.data_dir, timeout_s=10.0)
    app = DashboardApp(source, refresh_s=0.2)
    async with app.run_test(size=(180, 50)) as pilot:
        await _until(pilot, lambda: "simulation: not running" in _static(app, "#clock"), "no run")
        await _until(
            pilot, lambda: _services(app).get("store", [""])[:2] == ["store", "ready"], "store up"
        )
        office.start_run()
        clock = re.compile(r"^day (\d+) (\d\d):(\d\d) open$")
        await _until(pilot, lambda: clock.match(_static(app, "#clock")) is not None, "the clock")
        first = _static(app, "#clock")
        await _until(
            pilot,
            lambda: (
                _static(app, "#clock") not in (first,) and bool(clock.match(_static(app, "#clock")))
            ),
            "the clock moving",
        )
        rows = _services(app)
        store = rows["store"]
        assert store[1] == "ready"
        assert re.fullmatch(r"\d+", store[2])  # pid
        assert re.fullmatch(r"127\.0\.0\.1:\d+", store[3])
        await _until(pilot, lambda: _services(app)["store"][4] != "-", "a request rate")
        assert re.fullmatch(r"\d+\.\d", _services(app)["store"][4])
        assert re.fullmatch(r"\d+\.\d\d/\d+\.\d\d", _services(app)["store"][5])
        assert re.fullmatch(r"\d+", _services(app)["store"][6])
        for name in ("command", "ingest", "bus"):
            assert rows[name][1].startswith("down"), rows[name]
        queues = app.query_one("#queues", DataTable)
        assert queues.row_count == 6
        assert app.query_one("#counters", DataTable).row_count == 10
        await pilot.press("a")
        await _until(pilot, lambda: "users more from day" in _static(app, "#note"), "users added")
        await pilot.press("p")
        await _until(pilot, lambda: _static(app, "#clock").endswith("paused"), "the pause")
        held = _static(app, "#clock")
        await pilot.pause(0.6)
        assert _static(app, "#clock") == held
        await pilot.press("p")
        await _until(pilot, lambda: _static(app, "#clock").endswith("open"), "the resume")
        await pilot.press("q")
    source.close()


# -- the web mode, in real headless Chromium ---------------------------------------------

#: Injected before the page's own scripts: every byte the page's terminal receives over
#: its websocket is kept, decoded, so the test can read what the terminal shows (it
#: draws on a canvas, so the text is not in the DOM).
_CAPTURE = """
window.__poText = "";
const PoSocket = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new PoSocket(...args);
  const decoder = new TextDecoder();
  ws.addEventListener("message", (event) => {
    const keep = (text) => { window.__poText = (window.__poText + text).slice(-400000); };
    if (typeof event.data === "string") keep(event.data);
    else if (event.data instanceof ArrayBuffer) keep(decoder.decode(event.data));
    else if (event.data instanceof Blob) event.data.text().then(keep);
  });
  return ws;
};
window.WebSocket.prototype = PoSocket.prototype;
"""
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (make tools installs them)",
)
def test_the_web_dashboard_in_headless_chromium(office: Office) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    office.start_store()
    office.start_run()
    port = _free_port()
    web = office._spawn(
        "web",
        ["dashboard", "--web", str(port), "--data-dir", str(office.data_dir), "--refresh", "0.3"],
        _env(),
    )

    def listening() -> bool:
        assert web.poll() is None, office.log("web")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    _wait(listening, "dashboard --web")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = office.root / "chromium-profile"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
        # The page links a web font; nothing may leave this machine, so every name but
        # 127.0.0.1 fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(office.logs / "driver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.set_page_load_timeout(30)
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _CAPTURE})
        browser.get(f"http://127.0.0.1:{port}/")

        def shown() -> str:
            text = browser.execute_script("return window.__poText || '';")
            assert isinstance(text, str)
            return _ESCAPES.sub("", text)

        clock = re.compile(r"day (\d+) (\d\d):(\d\d) (?:open|closed)")

        def clocks() -> list[tuple[int, int, int]]:
            return [tuple(map(int, m.groups())) for m in clock.finditer(shown())]  # type: ignore[misc]

        _wait(lambda: len(clocks()) >= 1, "the clock in the page", timeout_s=60)
        first = clocks()[-1]
        _wait(lambda: clocks()[-1] > first, "the clock advancing in the page", timeout_s=30)
        text = shown()
        for name in ("store", "command", "ingest", "bus"):
            assert name in text
        assert re.search(r"store\W+ready", text), text[-3000:]
        assert re.search(r"bus\W+down", text), text[-3000:]
        assert browser.find_elements("css selector", ".xterm")  # the terminal is on the page
    finally:
        browser.quit()
        _stop(web, signal.SIGTERM)
