"""The counter display page in a real browser: Debian's headless Chromium, driven by
Playwright, against a real HdmiDisplay. Checks what a person at the counter would see.

Set MADOGUCHI_SCREENSHOTS=1 to (re)write docs/img/counter-display.png.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from drivers.display import HdmiDisplay, Screen
from tests.support.browser import require_chromium

require_chromium()

from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "counter-display.png"


@pytest.fixture
def page(new_page):
    return new_page(width=1280, height=720)


def calling(number: int, **kwargs) -> Screen:
    fields = dict(
        counter_ja="1番窓口",
        counter_en="Counter 1",
        service_ja="住民異動",
        service_en="Change of address",
        text_ja="番号札をお持ちになり窓口へお越しください",
        text_en="Please come to the counter with your ticket",
        waiting=4,
    )
    fields.update(kwargs)
    return Screen(mode="calling", number=number, **fields)


def open_display(page: Page, display: HdmiDisplay) -> None:
    page.goto(display.url)
    # The page has connected and shown the current state (version 0 at first).
    expect(page.locator("body")).to_have_attribute("data-version", str(display.version), timeout=2000)


def test_called_number_appears_and_changes(page):
    with HdmiDisplay(title_ja="市民課", title_en="Citizens Division") as display:
        open_display(page, display)
        number = page.locator("#number")
        expect(number).to_have_text("—")

        display.show(calling(123))
        expect(number).to_have_text("123", timeout=1000)
        expect(number).to_be_visible()
        expect(number).to_have_class("blink")  # calling: the number flashes
        expect(page.locator("#ban")).to_be_visible()
        expect(page.locator("#counter-ja")).to_have_text("1番窓口")
        expect(page.locator("#counter-ja")).to_be_visible()
        expect(page.locator("#service-ja")).to_have_text("住民異動")
        expect(page.locator("#label-ja")).to_have_text("お呼び出し中")

        if os.environ.get("MADOGUCHI_SCREENSHOTS") == "1":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            # animations="disabled" runs the flashing to its end, so the number is solid.
            page.screenshot(path=str(SCREENSHOT), animations="disabled")

        display.show(calling(124))
        expect(number).to_have_text("124", timeout=1000)

        display.show(calling(124, recall=True))
        expect(page.locator("#label-ja")).to_have_text("再呼出", timeout=1000)


def test_idle_offline_and_text_is_not_html(page):
    with HdmiDisplay() as display:
        open_display(page, display)
        display.show(Screen(mode="idle", counter_ja="2番窓口", text_ja="<b>お待ちの方はいません</b>"))
        expect(page.locator("#text-ja")).to_have_text("<b>お待ちの方はいません</b>", timeout=1000)
        expect(page.locator("#number")).to_have_text("—")
        expect(page.locator("#ban")).to_be_hidden()

        display.show(Screen(mode="offline", counter_ja="2番窓口", number=5))
        expect(page.locator("#offline")).to_be_visible(timeout=1000)
        expect(page.locator("#offline")).to_contain_text("接続されていません")
        expect(page.locator("#numline")).to_be_hidden()


def test_page_reconnects_after_the_server_comes_back(page):
    display = HdmiDisplay()
    port = display.port
    try:
        open_display(page, display)
        display.show(calling(7))
        expect(page.locator("#number")).to_have_text("7", timeout=1000)
    finally:
        display.close()
    # The edge restarts on the same port; the page's EventSource retries every second.
    with HdmiDisplay(port=port) as again:
        again.show(calling(8))
        expect(page.locator("#number")).to_have_text("8", timeout=5000)


def test_on_screen_controls_press_the_callback(page):
    pressed = threading.Event()
    names: list[str] = []

    def on_call():
        names.append("call")
        pressed.set()

    controls = {"call": ("呼出 Call", on_call), "recall": ("再呼出 Recall", lambda: names.append("recall"))}
    with HdmiDisplay(controls=controls) as display:
        open_display(page, display)
        buttons = page.locator("#controls button")
        expect(buttons).to_have_count(2)
        page.get_by_role("button", name="呼出 Call", exact=True).click()
        assert pressed.wait(2), "the on-screen button did not reach the callback"
        assert names == ["call"]


def test_no_controls_no_buttons(page):
    with HdmiDisplay() as display:
        open_display(page, display)
        expect(page.locator("#controls")).to_be_hidden()
        expect(page.locator("#controls button")).to_have_count(0)
