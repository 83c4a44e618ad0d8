"""Web login (issue #7 item 3; docs/security.md "Web login") against real
central processes, a real Mosquitto, the real ``madoguchi staff`` command and
Debian's headless Chromium.

One central serves most tests of this module (a login throttle of 3 failures,
accounts made with the real command while it runs); idle expiry has its own
with a 2-second idle limit; a third, ``proxied``, believes X-Forwarded-For
from 127.0.0.1 (``[http] trusted_proxies``), so that its tests can each speak
from their own client address.  The test accounts of tests/support/procs.py
are named after their roles ("counter", "accounting", "it", "kiosk")."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.support.browser import require_chromium
from tests.support.procs import REPO, CentralProcess, central_toml, free_port, wait_for

require_chromium()

from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

PASSWORD = "窓口の合言葉-2026"  # synthetic; non-ASCII on purpose
#: A wrong password over 256 characters: refused without running scrypt
#: (fast), and a failure like any other.
LONG = "x" * 300


@pytest.fixture(scope="module")
def central(broker, tmp_path_factory):
    work = tmp_path_factory.mktemp("login")
    port = free_port()
    config = central_toml(work / "central", broker.port, port,
                          extra="[auth]\nmax_failures = 3\nfailure_window_s = 600\n")
    proc = CentralProcess(config, port, work / "central.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def proxied(broker, tmp_path_factory):
    """A central behind a (pretend) reverse proxy on loopback: it believes
    X-Forwarded-For from 127.0.0.1.  3 failures per account and address, 5
    per address whatever the names."""
    work = tmp_path_factory.mktemp("proxied")
    port = free_port()
    config = central_toml(work / "central", broker.port, port,
                          extra='trusted_proxies = ["127.0.0.1"]\n'  # goes into [http]
                                "[auth]\nmax_failures = 3\nmax_failures_per_client = 5\nfailure_window_s = 600\n")
    proc = CentralProcess(config, port, work / "central.log").start()
    yield proc
    proc.stop()


def audit_of(central, *, client: str | None = None, staff_id: str | None = None) -> list[dict]:
    """Central's login audit, oldest first, read from its database."""
    db = sqlite3.connect(central.database)
    db.row_factory = sqlite3.Row
    try:
        where, args = [], []
        for column, value in (("client", client), ("staff_id", staff_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        return [dict(r) for r in db.execute("SELECT * FROM login_audit" + (" WHERE " + " AND ".join(where) if where else "")
                                            + " ORDER BY id", args)]
    finally:
        db.close()


def staff(central, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``madoguchi staff`` on central's database, as IT runs it next to a running central."""
    return subprocess.run([sys.executable, "-m", "bus.cli", "staff", "--config", str(central.config), *argv],
                          input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def http(central, method: str, path: str, *, body: bytes | dict | None = None, cookie: str | None = None,
         token: str | None = None, headers: dict | None = None, form: dict | None = None):
    """One request, redirects not followed: (status, headers, text)."""
    sent = dict(headers or {})
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif body is not None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        sent.setdefault("Content-Type", "application/json")
    if cookie:
        sent["Cookie"] = f"madoguchi_session={cookie}"
    if token:
        sent["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(central.url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=20) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def same_site(central) -> dict:
    return {"Origin": central.url}


def login_form(central, login: str, password: str, next_path: str | None = None, origin: str | None = "self",
               xff: str | None = None):
    form = {"login": login, "password": password, **({"next": next_path} if next_path is not None else {})}
    headers = {"Origin": central.url if origin == "self" else origin} if origin else {}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    return http(central, "POST", "/login", form=form, headers=headers)


def cookie_of(headers) -> str | None:
    for header in headers.get_all("Set-Cookie") or []:
        m = re.match(r"madoguchi_session=([^;]*)", header)
        if m:
            return m.group(1)
    return None


def error_text(page: str) -> str:
    return re.search(r'<p class="err">(.*?)</p>', page).group(1)


# ------------------------------------------------------------------ in the browser


def test_log_in_in_the_browser_then_the_console_works_and_logging_out_ends_the_session(central, new_page):
    made = staff(central, "add", "k-ueda", "--role", "counter", "--name", "窓口A", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    page = new_page()
    page.goto(f"{central.url}/console/1")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fconsole%2F1$"))
    expect(page.locator("h1")).to_contain_text("ログイン")
    expect(page.locator("h1")).to_contain_text("Log in")
    page.locator("#login").fill("K-Ueda")  # typed in capitals: logins are lower-case
    page.locator("#password").fill(PASSWORD)
    page.get_by_role("button", name="ログイン").click()

    expect(page).to_have_url(f"{central.url}/console/1")
    expect(page.locator("#whoami")).to_contain_text("窓口A")
    expect(page.locator("#staff")).to_have_text("k-ueda")
    expect(page.locator("#item option[value=juminhyo]")).to_have_count(1)  # the fee catalog came through the API
    page.get_by_role("button", name="次の方").click()  # a POST from the page (same Origin)
    expect(page.locator("#q-msg")).to_contain_text("お待ちの方はいません")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "madoguchi_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == (True, "Strict", "/", False)
    assert http(central, "GET", "/api/v1/session", cookie=cookie["value"])[0] == 200

    page.locator("#logout").click()
    expect(page).to_have_url(f"{central.url}/login?bye=1")
    expect(page.locator("p.ok")).to_contain_text("ログアウトしました")
    status, _, answer = http(central, "GET", "/api/v1/session", cookie=cookie["value"])
    assert status == 401 and json.loads(answer)["error"] == "login_required"
    page.goto(f"{central.url}/console/1")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    audit = [r["result"] for r in json.loads(staff(central, "audit", "k-ueda", "--json").stdout)]
    assert audit[:2] == ["logout", "ok"] and "account_added" in audit


def test_a_role_that_may_not_use_a_page_sees_why_and_can_log_out(central, new_page):
    page = new_page()
    central.login_browser(page, "counter")
    page.goto(f"{central.url}/admin")
    expect(page.locator("main")).to_contain_text("この画面を使う権限がありません")
    expect(page.locator("main")).to_contain_text("You may not use this page")
    expect(page.locator("main")).to_contain_text("情報政策")  # the role it needs
    page.get_by_role("button", name="ログアウト").click()
    expect(page).to_have_url(f"{central.url}/login?bye=1")


# ------------------------------------------------------------------ over HTTP


def test_a_wrong_password_and_an_unknown_account_get_the_same_answer_then_the_throttle(central):
    wrong = login_form(central, "accounting", "not-the-password", "/accounting/day")
    unknown = login_form(central, "nobody-here", "not-the-password", "/accounting/day")
    assert wrong[0] == unknown[0] == 401
    assert wrong[2] == unknown[2]  # byte for byte
    assert error_text(wrong[2]) == '職員IDまたはパスワードが違います<span class="en">Wrong staff ID or password</span>'
    assert cookie_of(wrong[1]) is None

    made = staff(central, "add", "k-throttle", "--role", "counter", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    for _ in range(3):
        assert login_form(central, "k-throttle", "guess-guess")[0] == 401
    status, headers, page = login_form(central, "k-throttle", PASSWORD)  # even the right password, now
    assert status == 429 and 0 < int(headers["Retry-After"]) <= 600 and cookie_of(headers) is None
    assert "しばらくログインできません" in page and "Too many failed logins" in page
    assert login_form(central, "accounting", central.accounts["accounting"].password)[0] == 303  # others are not held up
    audit = [r["result"] for r in json.loads(staff(central, "audit", "k-throttle", "--json").stdout)]
    assert audit[:4] == ["throttled", "bad_password", "bad_password", "bad_password"]


def test_a_disabled_account_is_cut_off_at_once_and_comes_back_when_enabled(central):
    made = staff(central, "add", "k-leaving", "--role", "counter", "--name", "窓口B", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    token = staff(central, "token", "k-leaving").stdout.strip()
    status, headers, _ = login_form(central, "k-leaving", PASSWORD)
    cookie = cookie_of(headers)
    assert status == 303 and cookie
    assert http(central, "GET", "/api/v1/counters/1", cookie=cookie)[0] == 200
    assert http(central, "GET", "/api/v1/counters/1", token=token)[0] == 200

    off = staff(central, "disable", "k-leaving")
    assert off.returncode == 0 and "1 session(s) ended" in off.stdout
    status, headers, answer = http(central, "GET", "/api/v1/counters/1", cookie=cookie)
    assert status == 401 and json.loads(answer)["error"] == "login_required"
    assert http(central, "GET", "/api/v1/counters/1", token=token)[0] == 401
    status, _, page = login_form(central, "k-leaving", PASSWORD)
    assert status == 401 and "職員IDまたはパスワードが違います" in page  # the same answer as a wrong password

    assert staff(central, "enable", "k-leaving").returncode == 0
    assert login_form(central, "k-leaving", PASSWORD)[0] == 303
    assert http(central, "GET", "/api/v1/counters/1", cookie=cookie)[0] == 401  # the old session stays ended
    assert http(central, "GET", "/api/v1/counters/1", token=token)[0] == 401  # and the old token: disabling deleted it
    assert not {a["id"]: a for a in json.loads(staff(central, "list", "--json").stdout)}["k-leaving"]["has_token"]


def test_the_staff_command_refuses_with_its_exit_codes(central, tmp_path):
    assert staff(central, "add", "k-ueda2", "--role", "counter", "--password-stdin", stdin="short\n").returncode == 1
    assert staff(central, "add", "counter", "--role", "counter", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1
    assert staff(central, "add", "Bad Id!", "--role", "counter", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1
    assert staff(central, "add", "k-x", "--role", "admin").returncode == 2
    no_tty = staff(central, "add", "k-x", "--role", "counter", stdin="")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    assert staff(central, "passwd", "nobody-here", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1
    assert staff(central, "disable", "nobody-here").returncode == 1
    bad = tmp_path / "central.toml"
    bad.write_text("[central]\nnot_a_key = 1\n")
    assert subprocess.run([sys.executable, "-m", "bus.cli", "staff", "--config", str(bad), "list"], capture_output=True,
                          timeout=60, cwd=REPO, check=False).returncode == 78
    listed = {a["id"]: a for a in json.loads(staff(central, "list", "--json").stdout)}
    assert listed["kiosk"]["has_password"] is False and listed["kiosk"]["has_token"] is True
    assert listed["counter"]["role"] == "counter" and not listed["counter"]["disabled"]
    kiosk = staff(central, "add", "kiosk-9", "--role", "kiosk")
    assert kiosk.returncode == 0 and re.fullmatch(r"[A-Za-z0-9_-]{43}\n", kiosk.stdout), kiosk.stdout  # only the token
    assert http(central, "POST", "/api/v1/tickets", body={"procedures": ["juminhyo"]}, token=kiosk.stdout.strip())[0] == 201


def test_roles_see_only_their_own_pages_and_apis(central):
    cookies = {role: central.login(role) for role in ("counter", "accounting", "it")}
    kiosk = central.token("kiosk")
    ticket = central.issue("juminhyo")["number"]
    cases = [
        # role, method, path, body, expected status
        ("counter", "GET", "/console/1", None, 200),
        ("counter", "GET", "/", None, 200),
        ("counter", "GET", f"/api/v1/tickets/{ticket}", None, 200),
        ("counter", "GET", "/admin", None, 403),
        ("counter", "GET", "/accounting/day", None, 403),
        ("counter", "GET", "/api/v1/accounting/days", None, 403),
        ("counter", "GET", "/api/v1/fleet/devices", None, 403),
        ("accounting", "GET", "/accounting/day", None, 200),
        ("accounting", "GET", "/api/v1/payments", None, 200),
        ("accounting", "GET", "/", None, 200),
        ("accounting", "POST", "/api/v1/counters/1/call-next", {}, 403),
        ("accounting", "POST", "/api/v1/tickets", {"procedures": ["juminhyo"]}, 403),
        ("accounting", "GET", f"/api/v1/tickets/{ticket}", None, 403),
        ("accounting", "GET", "/console/1", None, 403),
        ("it", "GET", "/admin", None, 200),
        ("it", "GET", "/api/v1/fleet/devices", None, 200),
        ("it", "POST", "/api/v1/counters/1/charges", {"lines": [{"code": "juminhyo", "quantity": 1}], "method": "cash"}, 403),
        ("it", "GET", "/api/v1/payments", None, 403),
        ("it", "GET", "/accounting/kpi", None, 403),
        ("it", "POST", "/api/v1/counters/1/recall", {}, 403),
    ]
    for role, method, path, body, expected in cases:
        status, headers, text = http(central, method, path, body=body, cookie=cookies[role], headers=same_site(central))
        assert status == expected, (role, method, path, status, text[:200])
        if status == 403 and path.startswith("/api/"):
            assert json.loads(text)["error"] == "forbidden" and json.loads(text)["needs"]
        elif status == 403:
            assert "権限がありません" in text and 'action="/logout"' in text and headers["Content-Type"].startswith("text/html")
    # The kiosk's token: issue tickets (and read the public site), nothing else.
    assert http(central, "POST", "/api/v1/tickets", body={"procedures": ["tennyu"]}, token=kiosk)[0] == 201
    assert http(central, "GET", "/api/v1/site", token=kiosk)[0] == 200
    for method, path in [("GET", "/api/v1/tickets"), ("GET", "/api/v1/session"), ("POST", "/api/v1/counters/1/call-next"),
                         ("GET", "/console"), ("GET", "/"), ("GET", "/api/v1/fleet/devices")]:
        status, _, text = http(central, method, path, body={} if method == "POST" else None, token=kiosk)
        assert status == 403 and json.loads(text)["role"] == "kiosk", (method, path, status)


def test_public_pages_need_no_login_and_the_rest_asks_for_one(central):
    for path in ("/board", "/api/v1/lobby", "/api/v1/board", "/healthz", "/api/v1/site", "/openapi.json", "/login"):
        assert http(central, "GET", path)[0] == 200, path
    # A visitor's page: a bad token is a 404, never a login.
    assert http(central, "GET", "/t/" + "A" * 22)[0] == 404
    assert http(central, "GET", "/api/v1/visit/" + "A" * 22)[0] == 404
    status, headers, _ = http(central, "GET", "/login")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and "script-src" not in headers["Content-Security-Policy"]
    # An API: 401 with a reason in both languages.
    status, headers, text = http(central, "GET", "/api/v1/tickets")
    body = json.loads(text)
    assert status == 401 and body["error"] == "login_required" and body["ja"] == "ログインが必要です" and body["en"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, text = http(central, "POST", "/api/v1/tickets", body={"procedures": ["juminhyo"]}, headers=same_site(central))
    assert status == 401
    status, _, text = http(central, "GET", "/api/v1/tickets", token="not-a-real-token")
    assert status == 401 and json.loads(text)["error"] == "invalid_token"
    # A page: to the login, and back afterwards.
    status, headers, _ = http(central, "GET", "/accounting/day?date=2026-11-20")
    assert status == 303 and headers["Location"] == "/login?next=%2Faccounting%2Fday%3Fdate%3D2026-11-20"
    status, headers, _ = login_form(central, "accounting", central.accounts["accounting"].password, "/accounting/day?date=2026-11-20")
    assert status == 303 and headers["Location"] == "/accounting/day?date=2026-11-20"
    # An unknown path stays a 404 (no login page for it), also when logged in.
    assert http(central, "GET", "/nothing-here")[0] == 404
    assert http(central, "GET", "/api/v1/nothing-here", token=central.token("counter"))[0] == 404


def test_a_post_from_another_site_is_refused_with_the_cookie(central):
    cookie = central.login("counter")
    path = "/api/v1/counters/2/call-next"
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/x"},
                    {"Origin": f"http://127.0.0.1:{central.http_port + 1}"}):
        status, _, text = http(central, "POST", path, body={}, cookie=cookie, headers=headers)
        assert status == 403 and json.loads(text)["error"] == "bad_origin", headers
    assert http(central, "POST", path, body={}, cookie=cookie, headers={"Origin": central.url})[0] == 200
    assert http(central, "POST", path, body={}, cookie=cookie, headers={"Referer": central.url + "/console/2"})[0] == 200
    # An API token is never sent by a browser on its own: no Origin needed.
    assert http(central, "POST", path, body={}, token=central.token("counter"))[0] == 200
    # Logging in and out from another site: refused too (login CSRF), the session lives on.
    assert login_form(central, "counter", central.accounts["counter"].password, origin="http://evil.example")[0] == 403
    assert http(central, "POST", "/logout", cookie=cookie, headers={"Origin": "http://evil.example"})[0] == 403
    assert http(central, "GET", "/api/v1/session", cookie=cookie)[0] == 200


def test_next_only_leads_to_this_site(central):
    password = central.accounts["counter"].password
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", "/%0d%0aX: y\r\n"):
        status, headers, _ = login_form(central, "counter", password, evil)
        assert status == 303 and headers["Location"] == "/console", (evil, headers["Location"])
    status, _, page = http(central, "GET", "/login?next=//evil.example/")
    assert status == 200 and "evil.example" not in page
    status, headers, _ = login_form(central, "counter", password, "/console/2")
    assert headers["Location"] == "/console/2"


def test_the_logged_in_staff_id_is_what_is_recorded(central):
    # IT's fleet request: audited under the login's staff id (an account made with the command).
    made = staff(central, "add", "it-sato", "--role", "it", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    cookie = cookie_of(login_form(central, "it-sato", PASSWORD)[1])
    status, _, text = http(central, "POST", "/api/v1/fleet/devices/counter-1/requests/identify",
                           body={"params": {"seconds": 1}}, cookie=cookie, headers=same_site(central))
    assert status == 409 and json.loads(text)["error"] == "offline"  # nothing online here: refused, audited
    [row] = json.loads(http(central, "GET", "/api/v1/fleet/audit?device=counter-1", cookie=cookie)[2])[:1]
    assert row["requested_by"] == "it-sato" and row["method"] == "identify"
    # Day close: the login is the one who closed; a body naming another is refused.
    accounting = central.login("accounting")
    day = "2026-10-01"
    status, _, text = http(central, "POST", f"/api/v1/accounting/days/{day}/close", body={"counted_cash": 0, "closed_by": "k0107"},
                           cookie=accounting, headers=same_site(central))
    assert status == 403 and json.loads(text)["error"] == "staff_mismatch"
    status, _, text = http(central, "POST", f"/api/v1/accounting/days/{day}/close", body={"counted_cash": 0},
                           cookie=accounting, headers=same_site(central))
    assert status == 200, text
    sheet = json.loads(http(central, "GET", f"/api/v1/accounting/days/{day}?detail=false", cookie=accounting)[2])
    assert sheet["close"]["closed_by"] == "accounting"
    # A charge naming another staff member: refused before anything is recorded.
    status, _, text = http(central, "POST", "/api/v1/counters/1/charges", token=central.token("counter"),
                           body={"lines": [{"code": "juminhyo", "quantity": 1}], "method": "cash", "staff_id": "k0107"})
    assert status == 403 and json.loads(text)["error"] == "staff_mismatch"
    assert central.get("/api/v1/payments?counter=1") == []


def test_the_ticket_command_needs_a_token(central, tmp_path):
    def ticket(*argv, env=None):
        return subprocess.run([sys.executable, "-m", "bus.cli", "ticket", "--url", central.url, *argv],
                              capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
                              env={**{k: v for k, v in os.environ.items() if k != "MADOGUCHI_API_TOKEN"}, **(env or {})})

    refused = ticket("issue", "juminhyo")
    assert refused.returncode == 1 and "401" in refused.stderr and "ログインが必要です" in refused.stderr
    token_file = tmp_path / "kiosk.token"
    token_file.write_text(central.token("kiosk") + "\n")
    issued = ticket("--token-file", str(token_file), "issue", "juminhyo")
    assert issued.returncode == 0 and "受付番号" in issued.stdout, issued.stderr
    assert ticket("--token-file", str(token_file), "list").returncode == 1  # a kiosk does not list tickets
    listed = ticket("list", env={"MADOGUCHI_API_TOKEN": central.token("counter")})
    assert listed.returncode == 0 and "受付番号" in listed.stdout


def test_an_idle_session_ends(central_factory):
    idle = central_factory(extra="[auth]\nidle_timeout_s = 2\nabsolute_timeout_s = 60\n")
    cookie = idle.login("counter")
    assert http(idle, "GET", "/api/v1/session", cookie=cookie)[0] == 200
    time.sleep(1.2)
    assert http(idle, "GET", "/api/v1/session", cookie=cookie)[0] == 200  # in use: kept alive
    time.sleep(1.2)
    assert http(idle, "GET", "/api/v1/session", cookie=cookie)[0] == 200
    time.sleep(2.5)
    status, headers, text = http(idle, "GET", "/api/v1/session", cookie=cookie)
    assert status == 401 and json.loads(text)["error"] == "login_required"
    assert any(h.startswith("madoguchi_session=") and "Max-Age=0" in h for h in headers.get_all("Set-Cookie") or [])
    # A page: to the login again.
    status, headers, _ = http(idle, "GET", "/console/1", cookie=cookie)
    assert status == 303 and headers["Location"].startswith("/login?next=")


def test_a_kiosk_issues_with_its_token_and_stops_when_it_is_revoked(central, broker, tmp_path, caplog):
    from bus.configfile import parse_toml
    from drivers.printer import FakeEscposPrinter
    from edge.config import EdgeConfig
    from tests.support.edges import RunningEdge, kiosk_toml

    made = staff(central, "add", "kiosk-7", "--role", "kiosk")
    assert made.returncode == 0, made.stderr
    printer = FakeEscposPrinter()
    config = parse_toml(kiosk_toml(broker.port, printer.port, central.url, tmp_path, device="kiosk-7",
                                   extra="request_timeout_s = 2", token=made.stdout.strip()).encode(), EdgeConfig)
    edge = RunningEdge(config).start()
    try:
        edge.wait(lambda: getattr(edge.daemon, "kiosk", None) is not None, 10, "kiosk up")
        issue = edge.daemon.kiosk.url + "api/issue"
        req = urllib.request.Request(issue, data=b'{"procedures": ["juminhyo"]}', method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["printed"] is True
        assert staff(central, "disable", "kiosk-7").returncode == 0
        again = urllib.request.Request(issue, data=b'{"procedures": ["tenkyo"]}', method="POST",
                                       headers={"Content-Type": "application/json"})
        with caplog.at_level("ERROR", logger="edge.kiosk"), pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(again, timeout=30)
        answer = json.loads(refused.value.read())
        assert refused.value.code == 503 and answer["message_ja"] == "ただいま発券できません。職員をお呼びください"
        assert any("refused the kiosk's credentials" in r.getMessage() and "--role kiosk" in r.getMessage()
                   for r in caplog.records)
        assert [t["number"] for t in central.get("/api/v1/tickets?active=true") if t["procedures"] == ["tenkyo"]] == []
    finally:
        edge.stop()
        printer.close()


# ------------------------------------------------------------------ the security review (issue #7 item 3)


def test_a_forged_x_forwarded_for_counts_only_from_a_trusted_proxy(central, proxied):
    """uvicorn believed X-Forwarded-For from 127.0.0.1 by default: anyone on
    the server could pick the address the throttle and the audit saw (a new
    address per guess, or a colleague's PC to lock it out)."""
    for i in range(3):  # central believes nobody's header: the TCP peer it is
        assert login_form(central, "xff-probe", LONG, xff=f"203.0.113.{i}")[0] == 401
    assert login_form(central, "xff-probe", LONG, xff="203.0.113.99")[0] == 429  # the same key all along
    assert {r["client"] for r in audit_of(central, staff_id="xff-probe")} == {"127.0.0.1"}
    # Behind a proxy it trusts, the header is the client's address.
    for i in range(3):
        assert login_form(proxied, "xff-probe", LONG, xff=f"203.0.113.{i}")[0] == 401
    assert [r["client"] for r in audit_of(proxied, staff_id="xff-probe")] == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]
    for _ in range(2):
        assert login_form(proxied, "xff-probe", LONG, xff="203.0.113.0")[0] == 401
    assert login_form(proxied, "xff-probe", LONG, xff="203.0.113.0")[0] == 429


def test_a_flood_of_throttled_logins_writes_one_audit_row(proxied):
    address = "198.51.100.20"
    for _ in range(3):
        assert login_form(proxied, "flood-probe", LONG, xff=address)[0] == 401
    before = len(audit_of(proxied, client=address))
    answers = [login_form(proxied, "flood-probe", LONG, xff=address) for _ in range(40)]  # as the review's flood
    assert {a[0] for a in answers} == {429} and all(0 < int(a[1]["Retry-After"]) <= 600 for a in answers)
    rows = audit_of(proxied, client=address)
    assert len(rows) - before == 1 and rows[-1]["result"] == "throttled" and rows[-1]["detail"].startswith("per_account")


def test_many_account_names_from_one_address_are_refused_after_the_cap(proxied):
    """Password spraying: one guess for each of many names."""
    address = "198.51.100.30"
    assert [login_form(proxied, f"spray-{i}", LONG, xff=address)[0] for i in range(5)] == [401] * 5
    assert login_form(proxied, "spray-5", LONG, xff=address)[0] == 429
    counter = proxied.accounts["counter"]
    assert login_form(proxied, "counter", counter.password, xff=address)[0] == 429  # every name from there
    assert login_form(proxied, "counter", counter.password, xff="198.51.100.31")[0] == 303  # not other PCs
    assert audit_of(proxied, client=address)[-1]["detail"].startswith("per_client")


def test_a_typed_login_that_is_not_an_account_never_reaches_the_log(proxied):
    """People type their password into the id field; a typed newline must
    not forge a log line."""
    address = "198.51.100.40"
    answers = [login_form(proxied, "Himitsu#2026!", LONG, xff=address)[0] for _ in range(4)]
    assert answers == [401, 401, 401, 429]
    assert login_form(proxied, "k0107\nFORGED-LINE by an attacker", LONG, xff="198.51.100.41")[0] == 401
    assert login_form(proxied, "sakura-2026", LONG, xff="198.51.100.41")[0] == 401  # well-formed, no such account
    wait_for(lambda: proxied.log_text().count("from 198.51.100.41") >= 2, what="the two refusals in central's log")
    log = proxied.log_text()
    assert "login for (malformed id) from 198.51.100.40 throttled" in log
    for leaked in ("himitsu", "Himitsu", "FORGED", "sakura"):
        assert leaked not in log


def test_a_visitors_token_never_reaches_the_log(central):
    token = central.issue("juminhyo")["token"]
    refusals = lambda: central.log_text().count("unknown or disabled API token")
    before = refusals()
    for path in (f"/t/{token}", f"/api/v1/visit/{token}"):
        assert http(central, "GET", path, headers={"Authorization": "Bearer not-a-real-token"})[0] == 401
    wait_for(lambda: refusals() >= before + 2, what="the two refusals in central's log")
    log = central.log_text()
    assert token not in log
    assert "refused GET /api/v1/visit/{token:path} from 127.0.0.1: unknown or disabled API token" in log


def test_a_login_upgrades_a_hash_made_with_cheaper_parameters(central):
    from central.auth import DEFAULT_SCRYPT, Accounts, ScryptParams, parse_hash
    from central.store import Store

    store = Store(central.database)  # next to the running central, as the command works
    try:
        Accounts(store).add("k-cheap", "counter", password=PASSWORD, params=ScryptParams(n=2**10, r=8, p=1), by="tests")
    finally:
        store.close()
    stored = lambda: [r for r in staff_rows(central) if r["id"] == "k-cheap"][0]["password_hash"]
    assert parse_hash(stored())[0].n == 2**10
    assert login_form(central, "k-cheap", PASSWORD)[0] == 303
    assert parse_hash(stored())[0] == DEFAULT_SCRYPT
    assert "password_rehashed" in [r["result"] for r in audit_of(central, staff_id="k-cheap")]
    assert login_form(central, "k-cheap", PASSWORD)[0] == 303  # the same password, the new hash


def staff_rows(central) -> list[dict]:
    db = sqlite3.connect(central.database)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM staff")]
    finally:
        db.close()


def test_the_staff_command_refuses_a_missing_or_broken_database_and_a_kiosk_password(central, tmp_path):
    missing = tmp_path / "typo" / "central.db"
    refused = staff(central, "--database", str(missing), "list")
    assert refused.returncode == 78 and "--create" in refused.stderr and "がありません" in refused.stderr
    assert not missing.exists() and not missing.parent.exists()
    made = staff(central, "--database", str(missing), "--create", "add", "kiosk-1", "--role", "kiosk")
    assert made.returncode == 0 and missing.exists(), made.stderr
    # A database that SQLite refuses mid-way (here a table gone): a message, no traceback.
    db = sqlite3.connect(missing)
    db.execute("DROP TABLE staff_tokens")
    db.close()
    broken = staff(central, "--database", str(missing), "list")
    assert broken.returncode == 78 and "Traceback" not in broken.stderr
    assert "cannot use the database" in broken.stderr and "を使えません" in broken.stderr
    # A kiosk has no password: refused before asking for one (no terminal needed).
    kiosk = staff(central, "passwd", "kiosk", stdin="")
    assert kiosk.returncode == 1 and "発券機" in kiosk.stderr and "kiosk account" in kiosk.stderr, kiosk.stderr


def test_a_token_goes_into_a_file_only_its_owner_reads(central, tmp_path):
    out = tmp_path / "kiosk-8.token"
    umask = os.umask(0o022)  # what a shell's "> file" would have given: 0644
    try:
        made = staff(central, "add", "kiosk-8", "--role", "kiosk", "--output", str(out))
        assert made.returncode == 0 and made.stdout == "", made.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        first = out.read_text().strip()
        assert http(central, "POST", "/api/v1/tickets", body={"procedures": ["juminhyo"]}, token=first)[0] == 201
        out.chmod(0o644)  # a new token into an old file: 0600 again
        again = staff(central, "token", "kiosk-8", "--output", str(out))
        assert again.returncode == 0 and again.stdout == "" and stat.S_IMODE(out.stat().st_mode) == 0o600
        second = out.read_text().strip()
        assert second != first and http(central, "POST", "/api/v1/tickets", body={"procedures": ["juminhyo"]},
                                         token=first)[0] == 401
        assert http(central, "POST", "/api/v1/tickets", body={"procedures": ["juminhyo"]}, token=second)[0] == 201
    finally:
        os.umask(umask)
    assert staff(central, "add", "k-out", "--role", "counter", "--output", str(out), stdin=PASSWORD + "\n",
                 ).returncode == 2  # a password account has no token to write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kiosk-8.token"]  # no temporary file left behind
