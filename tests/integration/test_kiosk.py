"""The kiosk (発券機): a real central process and broker, an in-process edge
with role "kiosk" printing through the real driver to a fake ESC/POS printer
on TCP, and the touch page in real Chromium.

Pick procedures, confirm → central issues a ticket and it is printed with its
QR; no paper → no number taken, the page says why; bad choices are refused;
a number issued but not printed is shown on screen and printed later, once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bus.configfile import parse_toml
from drivers.printer import FakeEscposPrinter, PrinterNotReady
from edge.config import EdgeConfig
from tests.support.browser import require_chromium
from tests.support.edges import RunningEdge

require_chromium()
pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
QR = b"\x1d(k"
PUBLIC = "https://madoguchi.example/t/"
PAPER_OUT = "用紙切れのため発券できません。職員をお呼びください"


@pytest.fixture
def printer():
    fake = FakeEscposPrinter()
    yield fake
    fake.close()


@pytest.fixture
def kiosk(broker, printer, tmp_path):
    running = []

    def start(central, *, wrap=None):
        config = parse_toml(f"""
[device]
id = "kiosk-1"
site = "midori"
role = "kiosk"
[mqtt]
port = {broker.port}
keepalive_s = 5
reconnect_cap_s = 1
[payments]
journal = "{tmp_path / 'journal.db'}"
office_ja = "みどり市役所"
[printer]
driver = "network"
host = "127.0.0.1"
tcp_port = {printer.port}
mode = "kanji"
[kiosk]
central_url = "{central.url}"
public_url = "{PUBLIC}"
port = 0
request_timeout_s = 3
""".encode(), EdgeConfig)
        edge = RunningEdge(config)
        if wrap is not None:
            edge.daemon._printer = wrap(edge.daemon._make_printer())
        edge.start()
        running.append(edge)
        edge.wait(lambda: getattr(edge.daemon, "kiosk", None) is not None, 10, "kiosk up")
        return edge

    yield start
    for edge in running:
        edge.stop()
        if edge.daemon._printer is not None:
            edge.daemon._printer.close()


def post(url: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/issue", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def choose(page, url: str, names: list[str], screenshot: Path | None = None) -> None:
    page.goto(url)
    for name in names:
        page.locator(".proc", has_text=name).click()
    if screenshot is not None:
        page.wait_for_timeout(300)  # fonts settled
        page.screenshot(path=str(screenshot))
    page.locator("#next").click()
    page.locator("#confirm.on").wait_for()


def test_two_procedures_issue_and_print_a_ticket(central_factory, kiosk, printer, new_page):
    central = central_factory()
    edge = kiosk(central)
    page = new_page(width=1080, height=1920)
    choose(page, edge.daemon.kiosk.url, ["転入届", "児童手当"], screenshot=REPO / "docs" / "img" / "kiosk.png")
    assert page.locator("#chosen li").count() == 2
    page.locator("#issue").click()
    page.locator("#done.on").wait_for(timeout=10_000)
    number = int(page.locator("#number").inner_text())
    tickets = central.get("/api/v1/tickets")
    assert [t["number"] for t in tickets] == [number]
    assert tickets[0]["procedures"] == ["tennyu", "jidoteate"]
    job = printer.wait_for_jobs(1, timeout=10)[0]
    assert QR in job and str(number).encode() in job and PUBLIC.encode() in job
    assert "受付番号".encode("cp932") in job
    assert "券をお取りください" in page.locator("#done-msg").inner_text()
    assert edge.daemon._health().peripherals["printer"].status == "ok"
    time.sleep(0.5)
    assert len(printer.jobs) == 1


def test_out_of_paper_no_number_is_taken(central_factory, kiosk, printer, new_page):
    central = central_factory()
    edge = kiosk(central)
    printer.set_paper("end")
    page = new_page(width=1080, height=1920)
    choose(page, edge.daemon.kiosk.url, ["住民票の写し・印鑑証明"])
    page.locator("#issue").click()
    page.locator("#failed.on").wait_for(timeout=10_000)
    assert PAPER_OUT in page.locator("#failed-msg").inner_text()
    assert central.get("/api/v1/tickets") == []
    assert printer.jobs == []
    health = edge.daemon._health().peripherals["printer"]
    assert (health.status, health.reason) == ("error", "paper_end")


def test_bad_choices_are_refused(central_factory, kiosk, printer):
    central = central_factory()
    edge = kiosk(central)
    url = edge.daemon.kiosk.url
    for body in ({"procedures": []}, {"procedures": ["tennyu"] + [f"p{i}" for i in range(12)]},
                 {"procedures": ["tennyu", "no-such"]}, {"procedures": ["tennyu", "tennyu"]}, {"x": 1}):
        code, answer = post(url, body)
        assert code == 400 and answer["message_ja"], (body, answer)
    # A page of another origin cannot issue.
    req = urllib.request.Request(url + "api/issue", data=b'{"procedures": ["tennyu"]}', method="POST",
                                 headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 403
    assert central.get("/api/v1/tickets") == []
    assert printer.jobs == []


class FailsOnce:
    """The real printer, but the first print finds the paper gone (as if the
    roll ran out between the status read and the job): nothing is sent."""

    def __init__(self, inner) -> None:
        self.inner, self.failed = inner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def print(self, doc) -> None:
        if not self.failed:
            self.failed = True
            status = self.inner.status()
            raise PrinterNotReady("paper_end", status, "paper ran out")
        self.inner.print(doc)


def test_a_number_issued_but_not_printed_is_shown_and_printed_later_once(central_factory, kiosk, printer):
    central = central_factory()
    edge = kiosk(central, wrap=FailsOnce)
    code, answer = post(edge.daemon.kiosk.url, {"procedures": ["tenkyo"]})
    assert code == 200 and answer["printed"] is False and "印刷できませんでした" in answer["message_ja"]
    number = answer["number"]
    assert [t["number"] for t in central.get("/api/v1/tickets")] == [number]
    job = printer.wait_for_jobs(1, timeout=10)[0]  # the retry
    assert str(number).encode() in job and QR in job
    time.sleep(2.5)
    assert len(printer.jobs) == 1
