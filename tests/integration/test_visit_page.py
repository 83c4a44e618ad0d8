"""The visitor's phone page (/t/{token}, docs/visit-page.md) in a real browser:
Debian's headless Chromium at 360×740 against a real central process with its
SQLite file.  Checks what the visitor sees, and what a stranger guessing
addresses does not.

Set MADOGUCHI_SCREENSHOTS=1 to (re)write docs/img/visit-page.png.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.support.browser import require_chromium

require_chromium()

from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "visit-page.png"
UNKNOWN = "A" * 22  # the right shape, no such ticket


def raw(central, path: str) -> tuple[int, dict, str]:
    """GET ``path`` as sent (no client-side normalisation): status, headers, body."""
    try:
        with urllib.request.urlopen(central.url + path, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


@pytest.fixture
def phone(new_page):
    page = new_page(width=360, height=740)
    csp_errors: list[str] = []
    page.on("console", lambda m: "Content Security Policy" in m.text and csp_errors.append(m.text))
    page.on("dialog", lambda d: csp_errors.append(f"dialog opened: {d.message}"))
    yield page
    assert not csp_errors, csp_errors


def test_a_ticket_from_waiting_to_its_turn(central_factory, phone: Page):
    central = central_factory()
    first = central.issue("tennyu")
    mine = central.issue("tennyu", "jidoteate")  # 住民異動 then 児童手当: two stations
    token = mine["token"]
    assert len(token) == 22 and mine["number"] == 2

    phone.goto(f"{central.url}/t/{token}")
    expect(phone.locator("#number")).to_have_text("2番")
    stations = phone.locator("#line .station")
    expect(stations).to_have_count(len(mine["stops"]) + 1)  # + the terminus
    expect(stations.nth(0)).to_contain_text(mine["stops"][0]["name_ja"])
    expect(stations.nth(0)).to_have_class("station waiting next")
    expect(stations.last).to_contain_text("完了")
    # Ticket 1 is ahead at the same counter: a wait, as central estimates it.
    minutes = central.get(f"/api/v1/visit/{token}")["estimate_min"]
    assert minutes and minutes > 0
    expect(phone.locator("#wait")).to_be_visible()
    expect(phone.locator("#wait-min")).to_have_text(str(minutes))
    expect(phone.locator("#next")).to_contain_text("1番窓口")
    expect(phone.locator("#turn")).to_be_hidden()
    # The token is never put on the page.
    assert token not in phone.content()

    # Counter 1 serves ticket 1, then calls ticket 2: the phone says so within a poll.
    central.post("/api/v1/counters/1/call-next")
    central.post("/api/v1/counters/1/finish")
    central.post("/api/v1/counters/1/call-next")
    turn = phone.locator("#turn")
    expect(turn).to_contain_text("あなたの番です", timeout=5000)
    expect(turn).to_contain_text("1番窓口へ")
    expect(turn).to_contain_text("It's your turn")
    expect(stations.nth(0)).to_have_class("station called now")
    expect(stations.nth(0)).to_contain_text("1番窓口")
    expect(phone.locator("#wait")).to_be_hidden()
    if os.environ.get("MADOGUCHI_SCREENSHOTS") == "1":
        phone.screenshot(path=str(SCREENSHOT))
    assert first["number"] == 1

    # Central stops answering: the page says its information is old, and recovers.
    central.kill(signal.SIGSTOP)
    try:
        expect(phone.locator("#stale")).to_be_visible(timeout=8000)
        expect(phone.locator("#stale")).to_contain_text("つながりません")
        expect(turn).to_contain_text("あなたの番です")  # the last known state stays
    finally:
        central.kill(signal.SIGCONT)
    expect(phone.locator("#stale")).to_be_hidden(timeout=8000)


def test_done_state(central_factory, phone: Page):
    central = central_factory()
    mine = central.issue("tennyu")
    central.post("/api/v1/counters/1/call-next")
    central.post("/api/v1/counters/1/finish")
    phone.goto(f"{central.url}/t/{mine['token']}")
    expect(phone.locator("#done")).to_contain_text("すべての手続が終わりました")
    expect(phone.locator("#line .station").last).to_have_class("station done")
    assert central.get(f"/api/v1/visit/{mine['token']}") | {"as_of": None} == {
        "number": 1, "state": "done", "turn": None, "next": None, "estimate_min": None, "as_of": None,
        "stations": [{"service_ja": s["name_ja"], "service_en": s["name_en"], "state": "done", "counter": None}
                     for s in mine["stops"]],
    }


def test_unknown_malformed_and_expired_tokens_answer_the_same_404(central_factory, phone: Page):
    central = central_factory()
    old = central.issue("tennyu")
    yesterday = (date.fromisoformat(old["day"]) - timedelta(days=1)).isoformat()
    # The ticket was issued yesterday: move its day back in central's database.
    db = sqlite3.connect(central.config.parent / "central.db")
    with db:
        assert db.execute("UPDATE tickets SET day = ? WHERE token = ?", (yesterday, old["token"])).rowcount == 1
    db.close()
    flipped = old["token"][:-1] + ("B" if old["token"][-1] != "B" else "C")
    bad = [
        UNKNOWN, flipped, old["token"], "../x", "..%2Fx", "%2e%2e/%2e%2e/etc/passwd", "a" * 500, "a" * 21, "a" * 23,
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "<script>", "x%00y", "AAAAAAAAAAAAAAAAAAAAA%22", "%F0%9F%98%80" * 11,
    ]
    pages, jsons = set(), set()
    for token in bad:
        status, headers, body = raw(central, f"/t/{token}")
        assert status == 404, token
        assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
        assert "ページ" in body or "見つかりません" in body
        pages.add(body)
        status, headers, body = raw(central, f"/api/v1/visit/{token}")
        assert status == 404, token
        assert headers["cache-control"] == "no-store"
        jsons.add(body)
        assert "script" not in body.lower() and token[:8] not in body
    # One answer for all of them: nothing tells an old ticket from a made-up one.
    assert len(pages) == 1 and len(jsons) == 1
    page_body = pages.pop()
    assert "見つかりません" in page_body and "not found" in page_body
    assert old["token"] not in central.log_text() and old["token"][:8] not in central.log_text()

    # In the browser: the message, and nothing from the address became HTML.
    phone.goto(f"{central.url}/t/%3Cimg%20src=x%20onerror=alert(1)%3E")
    expect(phone.locator("body")).to_contain_text("整理券が見つかりません")
    expect(phone.locator("img")).to_have_count(0)
    phone.goto(f"{central.url}/t/{old['token']}")
    expect(phone.locator("body")).to_contain_text("Ticket not found")


def test_headers_and_a_strict_csp(central_factory, phone: Page):
    central = central_factory()
    mine = central.issue("tennyu")
    status, headers, body = raw(central, f"/t/{mine['token']}")
    assert status == 200 and "text/html" in headers["content-type"]
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert mine["token"] not in body  # the page is static
    # The JSON: no token, nothing about the person, not cached either.
    status, headers, body = raw(central, f"/api/v1/visit/{mine['token']}")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert mine["token"] not in body and "issued_at" not in body and "procedures" not in body
    # The page runs under that policy (the fixture fails on any CSP report).
    phone.goto(f"{central.url}/t/{mine['token']}")
    expect(phone.locator("#number")).to_have_text("1番")
