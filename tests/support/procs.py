"""Real processes for tests and benchmarks: Mosquitto and central."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SITE_TOML = REPO / "config" / "site.toml"


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(fn, timeout=10.0, what="condition"):
    """Poll ``fn`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached in {timeout} s (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto (the ./dev script does this)")
    return found


@dataclass
class Broker:
    """A private Mosquitto on a loopback port.

    ``include_dir``: a folder of Mosquitto settings (``madoguchi broker init``)
    that brings its own listeners, TLS, users and ACLs; ``port`` must then be
    one of its listeners (the one waited for)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    include_dir: Path | None = None

    def start(self) -> Broker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        listeners = (f"include_dir {self.include_dir}\n" if self.include_dir is not None
                     else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        conf.write_text(
            listeners +
            "persistence false\n"
            # Without this, Nagle's algorithm meets delayed ACKs and a QoS 1
            # round-trip costs ~40-90 ms instead of ~1 ms (see docs/benchmarks.md).
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        self.log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=self.log, stderr=self.log)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def central_toml(workdir: Path, broker_port: int, http_port: int, *, site: Path = SITE_TOML, database: Path | None = None, extra: str = "",
                 mqtt_extra: str = "") -> Path:
    """A central.toml for a test.  Each gets its own MQTT client id, so the
    persistent session of one test's central never feeds another's.  The
    repo's site gets the repo's fee catalog too.  ``mqtt_extra``: [mqtt] keys
    in place of that random client id (credentials, TLS, a fixed client id)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "central.toml"
    fees = (f'fees_file = "{REPO / "config" / "fees.toml"}"\nbrands_file = "{REPO / "config" / "brands.toml"}"\n'
            if site == SITE_TOML else "")
    path.write_text(
        "[central]\n"
        f'site_file = "{site}"\n' + fees +
        f'database = "{database or workdir / "central.db"}"\n'
        "[mqtt]\n"
        f"port = {broker_port}\n"
        + (mqtt_extra or f'client_id = "central-{os.urandom(4).hex()}"\n') +
        "keepalive_s = 5\n"
        "[http]\n"
        f"port = {http_port}\n" + extra
    )
    return path


#: The staff accounts every test central gets (synthetic), named after their
#: roles: "counter", "accounting", "it" log in with a password; "kiosk" has
#: only an API token.  docs/security.md "Web login".
TEST_ROLES = ("counter", "accounting", "it", "kiosk")


@dataclass
class StaffAccount:
    staff_id: str
    role: str
    password: str | None
    token: str


def provision_accounts(database: Path) -> dict[str, StaffAccount]:
    """Create (or refresh) the test accounts in ``database`` through the real
    account code (central/auth.py), before central starts.  Their passwords
    use cheap scrypt parameters (stored with each hash, as any hash's are) so
    that a login costs milliseconds in tests; tests/integration/test_login.py
    logs in with the default parameters too."""
    from central.auth import Accounts, ScryptParams
    from central.store import Store

    cheap = ScryptParams(n=2**10, r=8, p=1)
    store = Store(database)
    try:
        accounts = Accounts(store)
        made = {}
        for role in TEST_ROLES:
            password = None if role == "kiosk" else f"{role}-pw-{os.urandom(4).hex()}"
            if accounts.get(role) is None:
                accounts.add(role, role, name=f"テスト{role}", password=password, params=cheap, by="tests")
            elif password is not None:
                accounts.set_password(role, password, params=cheap, by="tests")
            made[role] = StaffAccount(role, role, password, accounts.issue_token(role, by="tests"))
        return made
    finally:
        store.close()


@dataclass
class CentralProcess:
    """``madoguchi central`` as a real child process.

    Its database gets the :data:`TEST_ROLES` accounts before the first start;
    :meth:`request` authenticates with an account's API token (by default the
    first role the route allows, from central/auth.py's table), :meth:`login`
    logs in through ``POST /login`` and :meth:`login_browser` puts that
    session cookie into a Playwright page's context."""

    config: Path
    http_port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict | None = None  # added to os.environ (e.g. NOTIFY_SOCKET)
    accounts: dict[str, StaffAccount] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def database(self) -> Path | None:
        try:
            central = tomllib.loads(self.config.read_text(encoding="utf-8"))["central"]
            return (self.config.parent / central["database"]).resolve()
        except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
            return None

    def start(self, *, wait_mqtt: bool = True, wait: bool = True) -> CentralProcess:
        if not self.accounts and self.database is not None:
            self.accounts = provision_accounts(self.database)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "central", "--config", str(self.config)],
            stdout=self.log, stderr=self.log, cwd=REPO, env={**os.environ, **(self.env or {})},
        )
        if not wait:  # the caller watches for itself (tests/integration/test_sdnotify.py)
            return self
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"central exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                health = self.get("/healthz")
                if not wait_mqtt or health["mqtt"] == "connected":
                    return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"central did not come up:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)

    # tiny HTTP client --------------------------------------------------------
    def token(self, role: str) -> str:
        return self.accounts[role].token

    def staff_id(self, role: str) -> str:
        return self.accounts[role].staff_id

    def role_for(self, method: str, path: str) -> str | None:
        """The test account for a request: the first of :data:`TEST_ROLES`
        that central/auth.py's table allows (None: a public route)."""
        from central.auth import PUBLIC, allowed_roles

        allowed = allowed_roles(method, path) or frozenset()
        if PUBLIC in allowed:
            return None
        return next((r for r in TEST_ROLES if r in allowed), "counter")

    def request(self, method: str, path: str, body: dict | None = None, *, role: str | None = "auto",
                headers: dict | None = None) -> tuple[int, dict]:
        """``role``: "auto" (see :meth:`role_for`), a role of :data:`TEST_ROLES`
        (its API token), or None (no credentials)."""
        if role == "auto":
            role = self.role_for(method, path)
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        if role is not None:
            sent["Authorization"] = f"Bearer {self.token(role)}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str, *, role: str | None = "auto"):
        status, body = self.request("GET", path, role=role)
        assert status == 200, (status, body)
        return body

    def post(self, path: str, body: dict | None = None, *, role: str | None = "auto"):
        status, data = self.request("POST", path, body if body is not None else {}, role=role)
        assert status in (200, 201), (status, data)
        return data

    def login(self, role: str = "counter", *, password: str | None = None) -> str:
        """Log in through ``POST /login`` (the form a browser sends, with this
        site's Origin); returns the session cookie's value."""
        account = self.accounts[role]
        form = urllib.parse.urlencode({"login": account.staff_id, "password": password or account.password}).encode()
        req = urllib.request.Request(self.url + "/login", data=form, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Origin": self.url})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(req, timeout=10)
        except urllib.error.HTTPError as exc:
            if exc.code != 303:
                raise AssertionError(f"login as {role} answered {exc.code}") from None
            for header in exc.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                if name == "madoguchi_session":
                    return rest.split(";", 1)[0]
        raise AssertionError(f"login as {role} set no session cookie")

    def login_browser(self, page, role: str = "counter") -> str:
        """Log ``page``'s browser context in as ``role`` (the session cookie
        of a real login, added to the context).  Returns the cookie value."""
        cookie = self.login(role)
        page.context.add_cookies([{"name": "madoguchi_session", "value": cookie, "url": self.url + "/",
                                   "httpOnly": True, "sameSite": "Strict"}])
        return cookie

    def issue(self, *procedures: str) -> dict:
        return self.post("/api/v1/tickets", {"procedures": list(procedures)})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Keep a 303 as an answer (the login's Set-Cookie is on it)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


@dataclass
class EdgeProcess:
    """``madoguchi edge`` as a real child process (so it can be kill -9'd),
    with mock buttons, a log display and its own journal."""

    workdir: Path
    device: str
    counter: str
    broker_port: int
    extra: str = ""
    env: dict | None = None
    proc: subprocess.Popen | None = None
    mqtt_extra: str = ""  # more [mqtt] keys (credentials, TLS)

    @property
    def config(self) -> Path:
        return self.workdir / f"{self.device}.toml"

    @property
    def journal(self) -> Path:
        return self.workdir / f"{self.device}-journal.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.device}.log"

    def start(self, *, crashpoint: str | None = None) -> EdgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'[device]\nid = "{self.device}"\nsite = "midori"\nrole = "counter"\ncounter = "{self.counter}"\n'
            f'counter_name_ja = "{self.counter}番窓口"\ncounter_name_en = "Counter {self.counter}"\n'
            f"[mqtt]\nport = {self.broker_port}\nkeepalive_s = 5\nreconnect_cap_s = 1\n" + self.mqtt_extra +
            '[buttons]\ndriver = "mock"\n[display]\ndriver = "log"\n'
            f'[payments]\njournal = "{self.journal}"\noffice_ja = "みどり市役所 市民課"\n' + self.extra,
            encoding="utf-8",
        )
        env = {**os.environ, **(self.env or {})}
        env.pop("MADOGUCHI_CRASHPOINT", None)
        if crashpoint:
            env["MADOGUCHI_CRASHPOINT"] = crashpoint
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "edge", "--config", str(self.config)],
            stdout=self.log, stderr=self.log, cwd=REPO, env=env,
        )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)
