"""The systemd notify protocol of the real daemons (issue #7 item 4).

Each daemon runs as a real child process with ``NOTIFY_SOCKET`` pointing at
an AF_UNIX datagram socket this test binds — what systemd does — and
``WATCHDOG_USEC=2000000`` (a ping every second).  The socket asks the kernel
for the sender's credentials, so every message is checked to come from the
daemon's own PID (``NotifyAccess=main``).  Every edge role is covered: the
counter, the kiosk and the lobby, and central.

The unhealthy condition is real: the test lowers the running daemon's
RLIMIT_FSIZE to 0 (prlimit(2)), so every file write fails with EFBIG as it
would on a full disk; the watchdog's write check fails, the pings stop and
STATUS says why.  Lifting the limit brings the pings back.

The journal: this machine runs no journald, so central and the counter log
to a fake one that reads the journal's native protocol, reached through the
daemons' own systemd-python (tests/support/journald.py): the fields a
``journalctl TICKET=… / PAYMENT_ID=…`` would match are checked on real lines
of a real ticket and a real card payment.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.journald import FakeJournald
from tests.support.procs import (
    REPO,
    CentralProcess,
    EdgeProcess,
    central_toml,
    free_port,
    wait_for,
)

pytest.importorskip("systemd.daemon", reason="systemd-python is not installed (the 'systemd' extra)")

WATCHDOG_USEC = 2_000_000  # → a ping every 1.0 s
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class Note:
    at: float  # monotonic
    pid: int | None
    fields: dict[str, str]

    def __contains__(self, key: str) -> bool:
        return key in self.fields


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET sees."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.notes: list[Note] = []

    def _read(self, timeout: float) -> Note | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return None
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[: UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode("utf-8").split("\n") if line)
        note = Note(time.monotonic(), pid, fields)
        self.notes.append(note)
        return note

    def wait(self, pred, timeout: float, what: str) -> Note:
        """The first message from now on for which ``pred(note)`` is true."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            note = self._read(left)
            if note is not None and pred(note):
                return note
        raise AssertionError(f"no {what} in {timeout} s; got {[n.fields for n in self.notes]}")

    def collect(self, seconds: float) -> list[Note]:
        """Everything that arrives in the next ``seconds``."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            note = self._read(left)
            if note is not None:
                got.append(note)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_sockets():
    """``make()``: a new NOTIFY_SOCKET end (one per daemon)."""
    folder = Path(tempfile.mkdtemp(prefix="sdn-"))  # a short path: sun_path holds 108 bytes
    made: list[NotifySocket] = []

    def make() -> NotifySocket:
        made.append(NotifySocket(folder / f"notify{len(made)}"))
        return made[-1]

    yield make
    for s in made:
        s.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def notify_socket(notify_sockets):
    return notify_sockets()


@pytest.fixture
def journald():
    folder = Path(tempfile.mkdtemp(prefix="sdj-"))
    j = FakeJournald(folder)
    yield j
    j.close()
    shutil.rmtree(folder, ignore_errors=True)


def systemd_env(sock: NotifySocket) -> dict[str, str]:
    # No WATCHDOG_PID: systemd sets it only for the main PID, which we learn
    # after the fork; unset, the watchdog applies to the process itself.
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "",
            "JOURNAL_STREAM": ""}


def pings(notes: list[Note]) -> list[Note]:
    return [n for n in notes if n.fields.get("WATCHDOG") == "1"]


def assert_healthy_pings(notes: list[Note], seconds: float) -> None:
    got = pings(notes)
    assert len(got) >= int(seconds), f"{len(got)} pings in {seconds} s: {[n.fields for n in notes]}"
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    # Half of WATCHDOG_USEC apart, and never near the 2 s systemd would wait.
    assert all(0.5 < g < 1.7 for g in gaps), gaps


def check_unhealthy_and_back(sock: NotifySocket, pid: int) -> None:
    """Disk-full equivalent for ``pid``: no ping while it lasts, back after."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
    try:
        bad = sock.wait(lambda n: "unhealthy" in n.fields.get("STATUS", ""), 4, "STATUS=unhealthy")
        assert "File too large" in bad.fields["STATUS"], bad.fields
        quiet = sock.collect(2.5)  # longer than WATCHDOG_USEC: systemd would have stepped in
        assert not pings(quiet), f"watchdog fed while unhealthy: {[n.fields for n in quiet]}"
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    # Health returns: the daemon's own status line is back, then the pings.
    sock.wait(lambda n: "STATUS" in n and "unhealthy" not in n.fields["STATUS"], 3, "the status line again")
    back = sock.wait(lambda n: n.fields.get("WATCHDOG") == "1", 2, "WATCHDOG=1 after recovery")
    assert_healthy_pings([back, *sock.collect(1.2)], 2)


def assert_from(notes: list[Note], pid: int) -> None:
    assert {n.pid for n in notes} == {pid}, "every notification must come from the daemon's main PID"


def test_edge_ready_offline_watchdog_stopping(tmp_path, notify_socket):
    sock = notify_socket
    nobody = free_port()  # no broker here: READY must not wait for one
    edge = EdgeProcess(tmp_path / "edge", "counter-sd", "7", nobody, env=systemd_env(sock)).start()
    try:
        ready = sock.wait(lambda n: "READY" in n, 20, "READY=1")
        assert ready.fields["READY"] == "1"
        assert ready.fields["STATUS"].startswith(f"接続中 / connecting to broker 127.0.0.1:{nobody}"), ready.fields
        assert "connected to" not in edge.log_text()

        assert_healthy_pings(sock.collect(2.2), 2.2)
        check_unhealthy_and_back(sock, edge.proc.pid)

        edge.proc.send_signal(signal.SIGTERM)
        stopping = sock.wait(lambda n: "STOPPING" in n, 10, "STOPPING=1")
        assert stopping.fields["STOPPING"] == "1"
        assert edge.wait_exit(15) == 0, edge.log_text()[-2000:]
        after = sock.collect(0.3)
        assert not pings([n for n in sock.notes if n.at > stopping.at]) and not after
        assert_from(sock.notes, edge.proc.pid)
        # The ping file stays next to the journal (docs/systemd.md).
        assert edge.journal.with_name(edge.journal.name + ".alive").exists()
    finally:
        edge.stop()


def test_central_ready_after_http_watchdog_stopping(tmp_path, notify_socket):
    sock = notify_socket
    nobody, http_port = free_port(), free_port()
    config = central_toml(tmp_path / "central", nobody, http_port)
    central = CentralProcess(config, http_port, tmp_path / "central.log", env=systemd_env(sock))
    central.start(wait=False)
    try:
        ready = sock.wait(lambda n: "READY" in n, 20, "READY=1")
        # READY means HTTP answers now: one request, no retry.
        with urllib.request.urlopen(central.url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        assert ready.fields["STATUS"] == (f"http://127.0.0.1:{http_port}/; 接続中 / connecting to broker "
                                          f"127.0.0.1:{nobody}"), ready.fields

        assert_healthy_pings(sock.collect(2.2), 2.2)
        check_unhealthy_and_back(sock, central.proc.pid)

        central.proc.send_signal(signal.SIGTERM)
        sock.wait(lambda n: "STOPPING" in n, 10, "STOPPING=1")
        assert central.proc.wait(15) == 0, central.log_text()[-2000:]
        assert_from(sock.notes, central.proc.pid)
    finally:
        central.stop()


def test_no_notify_socket_is_a_quiet_no_op(tmp_path):
    """Outside systemd (the demo, a developer's shell) nothing is sent and
    nothing fails: the edge runs and stops as before."""
    env = {k: "" for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    edge = EdgeProcess(tmp_path / "edge", "counter-plain", "8", free_port(), env=env).start()
    try:
        wait_for(lambda: "ready" in edge.log_text(), 20, "the counter's ready line")
        edge.proc.send_signal(signal.SIGTERM)
        assert edge.wait_exit(15) == 0
        log = edge.log_text()
        assert "watchdog" not in log and "Traceback" not in log, log[-2000:]
        assert not os.path.exists(edge.journal.with_name(edge.journal.name + ".alive"))
    finally:
        edge.stop()


# ------------------------------------------------------------------ a payment at SIGTERM, and the journal


def test_sigterm_lets_a_card_payment_finish_and_the_journal_carries_ticket_and_payment(
        tmp_path, broker, sim, notify_socket, journald):
    """``systemctl restart`` (or an upgrade) while a visitor pays by card: the
    edge says STOPPING at once but lets the sale finish, publishes it, then
    exits 0.  Along the way the journal gets the lines of the ticket (issued,
    called, shown) and the payment (charge sent, pending, approved, stored),
    each with TICKET / PAYMENT_ID / COUNTER, from central and the counter."""
    from tests.integration.test_payments import charge, wait_state

    sock = notify_socket
    http_port = free_port()
    central_log = tmp_path / "central.log"
    central = CentralProcess(central_toml(tmp_path / "central", broker.port, http_port), http_port, central_log,
                             env=journald.env(central_log))
    # T4 long enough for the held card step (the default test timers are 3 s).
    terminal = f'[terminal]\ndriver = "zvt"\nport = "{sim.link}"\nt3_s = 2\nt4_s = 20\n'
    edge = EdgeProcess(tmp_path / "edge", "counter-1", "1", broker.port, extra=terminal)
    edge.env = {**systemd_env(sock), **journald.env(edge.log_path)}
    try:
        central.start()
        edge.start()
        sock.wait(lambda n: "READY" in n, 20, "READY=1")
        wait_for(lambda: central.get("/api/v1/stats")["devices"]["counter-1"]["state"] == "online", 15, "counter-1 online")

        number = central.issue("juminhyo")["number"]
        assert central.post("/api/v1/counters/1/call-next")["ticket"] == number
        ticket = str(number)
        shown = journald.wait(SYSLOG_IDENTIFIER="madoguchi-edge", TICKET=ticket)
        assert shown["MESSAGE"] == f"counter-1: showing {number} (calling)", shown.fields

        sim.hold("waiting_for_card")
        status, sent = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="credit", brand="visa",
                              start=True, ticket=number)
        assert status == 201, sent
        pid = sent["payment_id"]
        assert sim.reached("waiting_for_card").wait(20)
        wait_state(central, pid, "pending")

        edge.proc.send_signal(signal.SIGTERM)
        stopping = sock.wait(lambda n: "STOPPING" in n, 5, "STOPPING=1")
        waiting = sock.wait(lambda n: pid[:8] in n.fields.get("STATUS", ""), 5, "STATUS: waiting for the payment")
        assert "stopping after the payment" in waiting.fields["STATUS"]
        time.sleep(0.5)
        assert edge.proc.poll() is None, "the edge must wait for the payment at the terminal"
        sim.release()
        approved = wait_state(central, pid, "approved", timeout=20)
        assert edge.wait_exit(15) == 0
        assert approved["ticket"] == number and len([c for c in sim.received_commands if c.startswith("06 01")]) == 1
        assert not pings([n for n in sock.notes if n.at > stopping.at])
        assert_from(sock.notes, edge.proc.pid)
    finally:
        sim.release()
        edge.stop()
        central.stop()

    # The journal, as `journalctl` would filter it.
    edge_pid, central_pid = edge.proc.pid, central.proc.pid
    by_edge = journald.where(SYSLOG_IDENTIFIER="madoguchi-edge")
    by_central = journald.where(SYSLOG_IDENTIFIER="madoguchi-central")
    assert by_edge and by_central
    assert {e.pid for e in by_edge} == {edge_pid} and {e.pid for e in by_central} == {central_pid}
    # Every line of the counter names its site, device and counter.
    assert all((e.get("SITE"), e.get("DEVICE"), e.get("COUNTER")) == ("midori", "counter-1", "1") for e in by_edge)
    assert all(e.get("SITE") == "midori" and "DEVICE" not in e.fields for e in by_central)

    # journalctl TICKET=<n>: issued and called at central, shown at the counter, and the payment.
    about_ticket = [(e["SYSLOG_IDENTIFIER"], e["MESSAGE"]) for e in journald.where(TICKET=ticket)]
    assert ("madoguchi-central", f"ticket {number} issued: shomei") in about_ticket, about_ticket
    called = journald.where(SYSLOG_IDENTIFIER="madoguchi-central", TICKET=ticket, COUNTER="1")
    assert any(e["MESSAGE"].startswith(f"counter 1 calls ticket {number}") for e in called), about_ticket

    # journalctl PAYMENT_ID=<id>: the whole payment, at both ends, each line with its ticket.
    about_payment = journald.where(PAYMENT_ID=pid)
    assert all(e.get("TICKET") == ticket for e in about_payment)
    central_lines = [e["MESSAGE"] for e in about_payment if e.pid == central_pid]
    edge_lines = [e["MESSAGE"] for e in about_payment if e.pid == edge_pid]
    assert central_lines[0].startswith(f"counter 1: charge {pid} sent: 300 yen credit"), central_lines
    assert any(m.endswith(" approved") and f"payment {pid} sale" in m for m in central_lines), central_lines
    for state in ("ready", "pending", "approved"):
        assert any(m.startswith(f"counter-1: payment {pid} sale") and m.endswith(f" {state}") for m in edge_lines), \
            (state, edge_lines)
    assert any(m.startswith(f"counter-1: stopping once payment {pid} at the terminal is done") for m in edge_lines)
    # Levels are journal priorities (INFO 6, WARNING 4).
    assert {e["PRIORITY"] for e in about_payment} <= {"4", "6"}
    # Under systemd the journal is the log: nothing went to stderr (the log file).
    assert edge.log_text() == "" and central_log.read_text() == ""


# ------------------------------------------------------------------ the kiosk and the lobby


def spawn_edge(workdir: Path, toml: str, env: dict[str, str]) -> subprocess.Popen:
    """``madoguchi edge`` with ``toml`` as a real child process."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "edge.toml"
    config.write_text(toml, encoding="utf-8")
    with open(workdir / "edge.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "bus.cli", "edge", "--config", str(config)],
                                stdout=log, stderr=log, cwd=REPO, env={**os.environ, **env})


def test_kiosk_and_lobby_ready_status_watchdog_stopping(tmp_path, broker, notify_sockets):
    """The other two edge roles, side by side: READY with a status line, the
    status line following the broker, watchdog pings with their state
    folder's write check wired in (the ``.alive`` file beside the role's
    journal), STOPPING on SIGTERM, exit 0."""
    from drivers.printer import FakeEscposPrinter
    from tests.support.edges import kiosk_toml

    printer = FakeEscposPrinter()
    kiosk_dir, lobby_dir = tmp_path / "kiosk", tmp_path / "lobby"
    kiosk_dir.mkdir()
    player = json.dumps([sys.executable, "-m", "drivers.voice.record", "--dir", str(lobby_dir / "speaker"), "{wav}"])
    roles = {
        "kiosk": (kiosk_dir, kiosk_toml(broker.port, printer.port, "http://127.0.0.1:9/", kiosk_dir, device="kiosk-sd"),
                  kiosk_dir / "kiosk.db.alive"),
        "lobby": (lobby_dir,
                  (f'[device]\nid = "lobby-sd"\nsite = "midori"\nrole = "lobby"\n[mqtt]\nport = {broker.port}\n'
                   f'[voice]\nplayer = {player}\n[payments]\njournal = "{lobby_dir / "journal.db"}"\n'),
                  lobby_dir / "journal.db.alive"),
    }
    running: dict[str, tuple[subprocess.Popen, NotifySocket, Path]] = {}
    try:
        for role, (workdir, toml, alive) in roles.items():
            sock = notify_sockets()
            running[role] = (spawn_edge(workdir, toml, systemd_env(sock)), sock, alive)
        for role, (proc, sock, alive) in running.items():
            ready = sock.wait(lambda n: "READY" in n, 20, f"{role} READY=1")
            assert ready.fields["READY"] == "1" and ready.fields.get("STATUS"), (role, ready.fields)
            sock.wait(lambda n: n.fields.get("WATCHDOG") == "1", 3, f"{role} WATCHDOG=1")
            assert alive.exists(), f"{role}: the watchdog's write check did not run on {alive}"
            sock.wait(lambda n: n.fields.get("STATUS", "").startswith("オンライン / online"), 10, f"{role} STATUS online")
        for proc, _, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for role, (proc, sock, _) in running.items():
            stopping = sock.wait(lambda n: "STOPPING" in n, 10, f"{role} STOPPING=1")
            assert proc.wait(15) == 0, (tmp_path / role / "edge.log").read_text()[-2000:]
            assert not pings([n for n in sock.notes if n.at > stopping.at]), role
            assert_from(sock.notes, proc.pid)
    finally:
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        printer.close()
