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
import urllib.error
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

    def start(self) -> "Broker":
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


@dataclass
class CentralProcess:
    """``madoguchi central`` as a real child process."""

    config: Path
    http_port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict | None = None  # added to os.environ (e.g. NOTIFY_SOCKET)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, *, wait_mqtt: bool = True, wait: bool = True) -> "CentralProcess":
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
    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, (status, body)
        return body

    def post(self, path: str, body: dict | None = None):
        status, data = self.request("POST", path, body if body is not None else {})
        assert status in (200, 201), (status, data)
        return data

    def issue(self, *procedures: str) -> dict:
        return self.post("/api/v1/tickets", {"procedures": list(procedures)})


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

    def start(self, *, crashpoint: str | None = None) -> "EdgeProcess":
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
