"""The HTML report in a real browser (headless Chromium): it renders, and its filter works from the URL fragment.

Chromium is Debian's ``chromium`` package; ``make setup`` installs it. The page is opened from a file,
so nothing but the page itself is involved.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.compliance.findings import Finding
from controller.compliance.formats.html import render_html
from controller.compliance.report import ComplianceReport
from controller.model import Severity
from tests.report_support import ACCOUNT_HR, GENERATED_AT, parse_page, sample_findings, sample_keys, text_of

pytestmark = pytest.mark.integration

# A guard against a hung browser, not a timing assertion.
BROWSER_GUARD_SECONDS = 120
HOSTILE_TITLE = '<script>document.documentElement.setAttribute("data-pwned", "yes")</script>'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make setup` installs it (Debian package chromium)")
    return path


@pytest.fixture(scope="module")
def report() -> ComplianceReport:
    hostile = Finding("CMK-001", Severity.HIGH, ACCOUNT_HR + "/hostile", HOSTILE_TITLE, {"html": "<b>bold</b>"})
    return ComplianceReport(GENERATED_AT, (*sample_findings(), hostile), 5, 1, keys=sample_keys())


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, report: ComplianceReport) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("html-report") / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    yield path


def _run_chromium(chromium: str, profile: Path, *arguments: str) -> str:
    completed = subprocess.run(  # noqa: S603 - a fixed browser binary on a local file
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", *arguments],
        capture_output=True, text=True, timeout=BROWSER_GUARD_SECONDS, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def _dump_dom(chromium: str, tmp_path: Path, url: str) -> str:
    return _run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=2000", "--dump-dom", url)


def _visible_rows(dom: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(shown, hidden) finding rows as (severity, rule), after the page's script ran."""
    rows = [element for element in parse_page(dom) if element.tag == "tr" and element.attrs.get("class") == "finding"]
    shown: list[tuple[str, str]] = []
    hidden: list[tuple[str, str]] = []
    for row in rows:
        pair = (row.attrs["data-severity"] or "", row.attrs["data-rule"] or "")
        (hidden if "hidden" in row.attrs else shown).append(pair)
    return shown, hidden


def _output(dom: str) -> str:
    return text_of(next(element for element in parse_page(dom) if element.tag == "output"))


def test_screenshot_of_the_page(chromium: str, page: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    _run_chromium(chromium, tmp_path / "profile", "--hide-scrollbars", f"--screenshot={screenshot}",
                  "--window-size=1280,900", page.as_uri())
    data = screenshot.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert (width, height) == (1280, 900)
    # A blank 1280x900 page compresses to a few kilobytes; tables, badges and text make it far larger.
    assert len(data) > 50_000


def test_the_page_shows_every_finding_without_a_filter(chromium: str, page: Path, tmp_path: Path,
                                                       report: ComplianceReport) -> None:
    dom = _dump_dom(chromium, tmp_path, page.as_uri())
    shown, hidden = _visible_rows(dom)
    assert len(shown) == len(report.findings) == 8
    assert hidden == []
    assert _output(dom) == "Showing 8 of 8 findings"
    # The hostile title is text in its cell; its script never ran.
    elements = parse_page(dom)
    root = next(element for element in elements if element.tag == "html")
    assert root.attrs == {"lang": "en"}
    assert HOSTILE_TITLE in [text_of(element) for element in elements if element.tag == "td"]
    assert len([element for element in elements if element.tag == "script"]) == 1


def test_the_fragment_filters_by_severity(chromium: str, page: Path, tmp_path: Path) -> None:
    dom = _dump_dom(chromium, tmp_path, page.as_uri() + "#severity=critical")
    shown, hidden = _visible_rows(dom)
    assert shown == [("critical", "CMK-006"), ("critical", "CMK-006")]
    assert {severity for severity, _ in hidden} == {"high", "medium", "low", "info"}
    assert len(hidden) == 6
    assert _output(dom) == "Showing 2 of 8 findings"


def test_the_fragment_filters_by_rule(chromium: str, page: Path, tmp_path: Path) -> None:
    dom = _dump_dom(chromium, tmp_path, page.as_uri() + "#rule=CMK-012")
    shown, hidden = _visible_rows(dom)
    assert shown == [("high", "CMK-012")]
    assert len(hidden) == 7
    assert _output(dom) == "Showing 1 of 8 findings"


def test_the_fragment_combines_severity_and_rule(chromium: str, page: Path, tmp_path: Path) -> None:
    dom = _dump_dom(chromium, tmp_path, page.as_uri() + "#severity=high&rule=CMK-001")
    shown, _ = _visible_rows(dom)
    assert shown == [("high", "CMK-001")]
    dom = _dump_dom(chromium, tmp_path, page.as_uri() + "#severity=low&rule=CMK-006")
    shown, hidden = _visible_rows(dom)
    assert shown == []
    assert len(hidden) == 8
    no_match = next(element for element in parse_page(dom) if element.attrs.get("id") == "no-match")
    assert "hidden" not in no_match.attrs


class DevTools:
    """The Chrome DevTools Protocol over the page's websocket (loopback): enough to drive the filter boxes."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: object) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._socket.send_json({"id": message_id, "method": method, "params": params})
        while True:
            message: dict[str, Any] = await self._socket.receive_json()
            if message.get("id") == message_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
            self._events.append(message)

    async def event(self, method: str) -> dict[str, Any]:
        while True:
            for seen in self._events:
                if seen.get("method") == method:
                    self._events.remove(seen)
                    return seen
            self._events.append(await self._socket.receive_json())

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")


async def _with_page(chromium: str, profile: Path, url: str, steps: Any) -> Any:
    """Start Chromium with remote debugging on loopback, load ``url``, run ``steps(devtools)``, stop Chromium."""
    port_file = profile / "DevToolsActivePort"
    browser = subprocess.Popen(  # noqa: S603 - a fixed browser binary on a local file
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(BROWSER_GUARD_SECONDS):
            while not port_file.is_file() or not port_file.read_text().strip():
                assert browser.poll() is None, f"chromium exited with {browser.returncode}"
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json()
                target = next(target for target in targets if target["type"] == "page")
                async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                    devtools = DevTools(socket)
                    await devtools.call("Page.enable")
                    await devtools.call("Page.navigate", url=url)
                    await devtools.event("Page.loadEventFired")
                    return await steps(devtools)
    finally:
        browser.terminate()
        browser.wait(timeout=BROWSER_GUARD_SECONDS)


CHOOSE = """(() => {{
  const box = document.getElementById("filter-{box}");
  box.value = "{value}";
  box.dispatchEvent(new Event("change"));
  return null;
}})()"""
# Resolves after the page's own hashchange listener ran (listeners run in the order they were added).
HASH_CHANGE = """new Promise((resolve) => {{
  window.addEventListener("hashchange", () => resolve(null), {{ once: true }});
  window.location.hash = "{fragment}";
}})"""
STATE = """({
  hash: window.location.hash,
  search: window.location.search,
  severity: document.getElementById("filter-severity").value,
  rule: document.getElementById("filter-rule").value,
  shown: Array.from(document.querySelectorAll("#findings tbody tr.finding"))
    .filter((row) => !row.hidden).map((row) => row.dataset.severity + " " + row.dataset.rule),
  output: document.getElementById("shown").textContent
})"""


def test_the_select_boxes_filter_and_write_the_fragment(chromium: str, page: Path, tmp_path: Path) -> None:
    async def steps(devtools: DevTools) -> list[Any]:
        states = [await devtools.evaluate(STATE)]
        for box, value in (("severity", "medium"), ("severity", ""), ("rule", "CMK-006"), ("severity", "high"),
                           ("rule", ""), ("severity", "")):
            await devtools.evaluate(CHOOSE.format(box=box, value=value))
            states.append(await devtools.evaluate(STATE))
        await devtools.evaluate(HASH_CHANGE.format(fragment="#severity=INFO"))
        states.append(await devtools.evaluate(STATE))
        return states

    # Served by the report function, the page's URL has a query; clearing the filter must keep it.
    states = asyncio.run(_with_page(chromium, tmp_path / "profile", page.as_uri() + "?format=html", steps))
    assert {state["search"] for state in states} == {"?format=html"}
    every_row = [
        "critical CMK-006", "critical CMK-006", "high CMK-000", "high CMK-001", "high CMK-012", "medium CMK-008",
        "low CMK-011", "info CMK-014",
    ]
    assert [(state["hash"], state["severity"], state["rule"], state["shown"]) for state in states] == [
        ("", "", "", every_row),
        ("#severity=medium", "medium", "", ["medium CMK-008"]),
        ("", "", "", every_row),
        ("#rule=CMK-006", "", "CMK-006", ["critical CMK-006", "critical CMK-006"]),
        ("#severity=high&rule=CMK-006", "high", "CMK-006", []),
        ("#severity=high", "high", "", ["high CMK-000", "high CMK-001", "high CMK-012"]),
        ("", "", "", every_row),
        ("#severity=INFO", "info", "", ["info CMK-014"]),
    ]
    assert [state["output"] for state in states][3:5] == ["Showing 2 of 8 findings", "Showing 0 of 8 findings"]
