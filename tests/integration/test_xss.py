"""XSS attempts in every text field that reaches a visitor's or a staff
member's page (issue #6: "XSS attempts in any text field — refused cleanly").

Names come from central's site file (written by IT, but copied from
elsewhere, and shown on every screen): a site whose service, procedure,
counter and site names are markup must be shown as that text, literally, on
the kiosk page, the lobby board, the visitor's page, the counter console and
the overview — and no script of it runs.  Bodies sent to the kiosk and to
central's POST /api/v1/tickets with markup are refused without echoing it
into anything a browser would render.

One Chromium for the module, a real central process on the hostile site, an
in-process kiosk daemon printing to a fake ESC/POS printer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from bus.configfile import parse_toml
from drivers.printer import FakeEscposPrinter
from edge.config import EdgeConfig
from tests.support.browser import require_chromium
from tests.support.edges import RunningEdge
from tests.support.procs import SITE_TOML

require_chromium()
pytestmark = pytest.mark.timeout(60)

#: Each sets window.__x if it ever runs; each fits the 40 characters of a name.
HOSTILE = {
    'name_ja = "みどり市役所 市民課"': '<iframe srcdoc="<script>parent.__x=1">',  # the site
    'name_ja = "児童手当・こども医療"': '<img src=x onerror="window.__x=2">',  # a service
    'name_en = "Child allowance, child medical aid"': "<script>window.__x=3</script>",
    'name_ja = "児童手当"': '"><svg onload=window.__x=4>',  # a procedure
    'name_en = "Child allowance"': "</small><img src=x onerror=__x=5>",
    'name_ja = "3番窓口"': "<b onmouseover=__x=6>3番</b>",  # a counter
}
SCRIPTED = "[onerror], [onload], [onmouseover], iframe, img[src='x']"


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string is a JSON string here


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    text = SITE_TOML.read_text(encoding="utf-8")
    for old, markup in HOSTILE.items():
        key = old.split(" = ")[0]
        assert text.count(old) == 1, old
        text = text.replace(old, f"{key} = {toml_string(markup)}")
    path = tmp_path_factory.mktemp("site") / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def shown_literally(page, *texts: str) -> None:
    body = page.locator("body").inner_text()
    for text in texts:
        assert text in body, (text, body[:500])
    assert page.locator(SCRIPTED).count() == 0
    assert page.evaluate("window.__x") is None


def test_markup_in_names_is_shown_as_text_everywhere(hostile_site, central_factory, broker, tmp_path, new_page):
    central = central_factory(site=hostile_site)
    printer = FakeEscposPrinter()
    # Not tests.support.edges.kiosk_toml: no office name here, so the kiosk's
    # header is central's (hostile) site name.
    config = parse_toml(f"""
[device]
id = "kiosk-{uuid.uuid4().hex[:6]}"
site = "midori"
role = "kiosk"
[mqtt]
port = {broker.port}
[payments]
journal = "{tmp_path / 'payments.db'}"
[printer]
driver = "network"
host = "127.0.0.1"
tcp_port = {printer.port}
[kiosk]
central_url = "{central.url}"
public_url = "{central.url}/t/"
port = 0
journal = "{tmp_path / 'kiosk.db'}"
token = "{central.token('kiosk')}"
""".encode(), EdgeConfig)
    edge = RunningEdge(config).start()
    try:
        edge.wait(lambda: getattr(edge.daemon, "kiosk", None) is not None, 10, "kiosk up")
        site, service_ja, _service_en, proc_ja, proc_en, counter = HOSTILE.values()

        # The kiosk: header, buttons, confirmation, the number with its route.
        page = new_page(width=1080, height=1920)
        page.goto(edge.daemon.kiosk.url)
        button = page.locator(".proc", has_text=proc_ja)
        button.click()
        shown_literally(page, site, proc_ja, proc_en)
        page.locator("#next").click()
        page.locator("#confirm.on").wait_for()
        shown_literally(page, proc_ja, proc_en)
        page.locator("#issue").click()
        page.locator("#done.on").wait_for(timeout=10_000)
        shown_literally(page, service_ja, counter)
        number = int(page.locator("#number").inner_text())
        assert printer.wait_for_jobs(1, timeout=10)

        # The visitor's page from the ticket's QR.
        token = central.post("/api/v1/tickets", {"procedures": ["jidoteate"]})["token"]
        visit = new_page(width=360, height=740)
        visit.goto(f"{central.url}/t/{token}")
        visit.get_by_text(service_ja).first.wait_for(timeout=10_000)
        shown_literally(visit, service_ja)

        # The lobby board: the trains' stations, then the now-calling panel.
        central.post("/api/v1/counters/3/call-next")
        board = new_page(width=1920, height=1080)
        board.goto(f"{central.url}/board")
        board.get_by_text(counter).first.wait_for(timeout=10_000)
        shown_literally(board, site, counter, str(number))

        # Staff pages: the counter console and the overview.
        console = new_page()
        central.login_browser(console, "counter")
        console.goto(f"{central.url}/console/3")
        console.get_by_text(service_ja).first.wait_for(timeout=10_000)
        shown_literally(console, service_ja)
        overview = new_page()
        central.login_browser(overview, "counter")
        overview.goto(f"{central.url}/")
        overview.get_by_text(counter).first.wait_for(timeout=10_000)
        shown_literally(overview, counter)
        # The login page names the site.
        login = new_page()
        login.goto(f"{central.url}/login")
        shown_literally(login, site)
    finally:
        edge.stop()
        printer.close()


def test_markup_in_bodies_is_refused_and_not_echoed(central_factory, broker, tmp_path):
    central = central_factory()
    attacks = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)", "tennyu<svg/onload=alert(1)>"]
    kiosk = {"Authorization": f"Bearer {central.token('kiosk')}"}
    for attack in attacks:
        code, headers, body = post(central.url + "/api/v1/tickets", json.dumps({"procedures": [attack]}).encode(), kiosk)
        assert code == 422 and headers["content-type"].startswith("application/json"), (attack, code)
        code, headers, body = post(central.url + "/api/v1/tickets", b'{"procedures": ["tennyu"]}',
                                   headers={"Idempotency-Key": attack, **kiosk})
        assert code == 422 and headers["content-type"].startswith("application/json"), (attack, code)
    printer = FakeEscposPrinter()
    # Not tests.support.edges.kiosk_toml: no office name here, so the kiosk's
    # header is central's (hostile) site name.
    config = parse_toml(f"""
[device]
id = "kiosk-{uuid.uuid4().hex[:6]}"
site = "midori"
role = "kiosk"
[mqtt]
port = {broker.port}
[payments]
journal = "{tmp_path / 'payments.db'}"
[printer]
driver = "network"
host = "127.0.0.1"
tcp_port = {printer.port}
[kiosk]
central_url = "{central.url}"
public_url = "https://madoguchi.example/t/"
port = 0
journal = "{tmp_path / 'kiosk.db'}"
token = "{central.token('kiosk')}"
""".encode(), EdgeConfig)
    edge = RunningEdge(config).start()
    try:
        edge.wait(lambda: getattr(edge.daemon, "kiosk", None) is not None, 10, "kiosk up")
        url = edge.daemon.kiosk.url + "api/issue"
        for attack in attacks:
            for body in ({"procedures": [attack]}, {"procedures": ["tennyu"], attack: 1}, {attack: ["tennyu"]}):
                code, headers, raw = post(url, json.dumps(body).encode())
                assert code == 400 and headers["Content-Type"].startswith("application/json"), (body, code)
                answer = json.loads(raw)
                assert attack not in json.dumps(answer, ensure_ascii=False), answer  # never echoed
            code, headers, raw = post(url, json.dumps({"procedures": ["tennyu"]}).encode(), headers={"Origin": attack})
            assert code == 403
        assert central.get("/api/v1/tickets") == [] and printer.jobs == []
    finally:
        edge.stop()
        printer.close()
