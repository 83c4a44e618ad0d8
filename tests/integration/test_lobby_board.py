"""The lobby board (/board) in a real browser: Debian's headless Chromium against a
real central process, a real Mosquitto and the real edge daemon of counter 1
(in-process, MockFactory buttons).  Checks what a visitor in the lobby sees.

Set MADOGUCHI_SCREENSHOTS=1 to (re)write docs/img/lobby-board.png.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.browser import require_chromium

require_chromium()

from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "lobby-board.png"


@pytest.fixture
def page(new_page):
    return new_page(width=1920, height=1080)


def open_board(page: Page, central, query: str = "") -> None:
    page.goto(f"{central.url}/board{query}")
    expect(page.locator("#site")).to_have_text("みどり市役所 市民課")  # the first poll has answered


def train(page: Page, number: int):
    return page.locator(f".train[data-number='{number}']")


def test_a_press_shows_within_a_second_and_the_train_moves(central_factory, edges, page):
    central = central_factory()
    counter = edges("counter-1", "1")
    first = central.issue("tennyu", "juminhyo")["number"]  # 住民異動, then 証明書発行
    second = central.issue("juminhyo")["number"]
    open_board(page, central)
    expect(page.locator(".train")).to_have_count(2)
    stations = train(page, first).locator(".station")
    expect(stations).to_have_count(3)  # two counters' services and the terminus
    expect(stations.nth(0)).to_contain_text("住民異動")
    expect(stations.nth(1)).to_contain_text("証明書発行")
    expect(stations.nth(2)).to_contain_text("終了")
    expect(page.locator("#latest")).to_contain_text("お待ちください")

    # 次の方 on counter 1's button: on the board within a second of the press.
    started = time.monotonic()
    counter.press("call_next")
    page.wait_for_function(
        "n => document.querySelector('#latest')?.dataset.ticket === String(n)", arg=first, polling="raf", timeout=3000)
    elapsed = time.monotonic() - started
    print(f"press -> board: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0, elapsed
    counter.shows(first, mode="calling")
    latest = page.locator("#latest")
    expect(latest).to_contain_text("1番窓口")
    expect(latest).to_contain_text("Counter 1")
    expect(latest.locator(".recall")).to_have_count(0)
    # Its first station is lit, with the counter to go to.
    expect(stations.nth(0)).to_have_class(re.compile(r"\bcurrent\b"))
    expect(stations.nth(0).locator(".at")).to_contain_text("1番窓口")
    expect(stations.nth(1)).to_have_class(re.compile(r"\bwaiting\b"))
    expect(train(page, first)).to_have_class(re.compile(r"\bcalled\b"))

    # 再呼出: marked as a recall.
    counter.press("recall")
    expect(latest.locator(".recall")).to_contain_text("再呼出")

    # 完了: the station is passed, the next one waits; nobody is lit.
    counter.press("finish")
    expect(stations.nth(0)).to_have_class(re.compile(r"\bdone\b"))
    expect(stations.nth(1)).to_have_class(re.compile(r"\bwaiting\b"))
    expect(page.locator(".station.current")).to_have_count(0)

    # The next call: the newest is big, the earlier one listed under it.
    counter.press("call_next")
    expect(latest).to_have_attribute("data-ticket", str(first))  # keeps its place: 証明書 next, at counter 1
    expect(stations.nth(1)).to_have_class(re.compile(r"\bcurrent\b"))
    counter.press("call_next")  # finishes ticket 1 (its train leaves the board), calls ticket 2
    expect(latest).to_have_attribute("data-ticket", str(second))
    expect(page.locator("#calls li").first).to_have_attribute("data-ticket", str(first))
    expect(page.locator(".train")).to_have_count(1)

    # Numbers only: no token, no procedure, nothing about the person.
    body = central.get("/api/v1/lobby")
    assert "token" not in str(body) and "procedures" not in str(body)
    assert [t["number"] for t in body["trains"]] == [second]
    assert body["trains"][0]["stations"][0]["state"] == "current"
    assert {w["service"] for w in body["waits"]} >= {"juminido", "shomei"}


def test_stale_when_central_hangs_and_recovers_by_itself(central_factory, page):
    central = central_factory()
    central.issue("juminhyo")
    open_board(page, central)
    expect(page.locator("#stale")).to_be_hidden()
    central.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        expect(page.locator("#stale")).to_be_visible(timeout=6000)
        waited = time.monotonic() - started
        expect(page.locator("#stale")).to_have_text("更新されていません / Not updated")
        assert 2.5 <= waited < 5.0, waited
    finally:
        central.kill(signal.SIGCONT)
    expect(page.locator("#stale")).to_be_hidden(timeout=4000)
    central.post("/api/v1/counters/3/call-next")
    expect(page.locator("#latest")).to_have_attribute("data-ticket", "1")


def test_stale_when_central_stops_and_clears_after_a_restart(central_factory, page):
    """A real restart (the process gone, a new one on the same port and
    database): the board says it is stale, then carries on by itself."""
    central = central_factory()
    number = central.issue("juminhyo")["number"]
    open_board(page, central)
    expect(train(page, number)).to_be_visible()
    central.kill(signal.SIGKILL)
    expect(page.locator("#stale")).to_be_visible(timeout=6000)
    expect(page.locator("#stale")).to_have_text("更新されていません / Not updated")
    expect(train(page, number)).to_be_visible()  # the last known board stays, greyed
    restarted = type(central)(central.config, central.http_port, central.log_path).start()
    try:
        expect(page.locator("#stale")).to_be_hidden(timeout=6000)
        restarted.post("/api/v1/counters/3/call-next")
        expect(page.locator("#latest")).to_have_attribute("data-ticket", str(number), timeout=3000)
    finally:
        restarted.stop()


def test_many_tickets_page_through(central_factory, page):
    central = central_factory()
    for i in range(25):
        central.issue(("juminhyo", "tennyu", "inu-toroku")[i % 3])
    open_board(page, central, "?page_s=2")
    pager = page.locator("#pager")
    expect(pager).to_contain_text("1/3")
    expect(page.locator(".train")).to_have_count(10)
    expect(page.locator(".train").first).to_have_attribute("data-number", "1")
    expect(pager).to_contain_text("2/3", timeout=3000)
    expect(page.locator(".train").first).to_have_attribute("data-number", "11")
    expect(pager).to_contain_text("3/3", timeout=3000)
    expect(page.locator(".train")).to_have_count(5)
    expect(pager).to_contain_text("1/3", timeout=3000)  # and round again


def test_a_busy_morning_reads_well(central_factory, page):
    """Twelve visitors at different stations, a recall: the board shows the
    recalled number and two pages of trains (MADOGUCHI_SCREENSHOTS=1 also
    writes docs/img/lobby-board.png)."""
    central = central_factory()
    for procedures in (
        ("tennyu", "kokuho-kanyu", "jidoteate"), ("juminhyo",), ("tenkyo", "nenkin-henko"), ("juminhyo",),
        ("tennyu", "kokuho-kanyu", "juminhyo"), ("inu-toroku",), ("tenshutsu", "kokuho-kanyu", "nenkin-henko"),
        ("juminhyo",), ("jidoteate",), ("tenkyo", "juminhyo"), ("kokuho-kanyu",), ("juminhyo",),
    ):
        central.issue(*procedures)
    for c, action in (("1", "call-next"), ("1", "finish"), ("2", "call-next"), ("2", "start"), ("3", "call-next"),
                      ("3", "finish"), ("1", "call-next"), ("1", "finish"), ("2", "call-next"), ("1", "call-next"),
                      ("3", "call-next"), ("3", "recall")):
        central.post(f"/api/v1/counters/{c}/{action}")
    open_board(page, central)
    expect(page.locator(".train").first).to_be_visible()
    expect(page.get_by_text("再呼出").first).to_be_visible()
    expect(page.get_by_text("1/2").first).to_be_visible()
    if os.environ.get("MADOGUCHI_SCREENSHOTS") == "1":
        page.wait_for_timeout(3500)  # the newest call's flash is over
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
