"""The systemd notify protocol of the real daemons (issue #7 item 4).

Each daemon runs as a real child process with ``NOTIFY_SOCKET`` pointing at
an AF_UNIX datagram socket this test binds — what systemd does — and
``WATCHDOG_USEC=2000000`` (a ping every second).  The socket asks the kernel
for the sender's credentials, so every message is checked to come from the
daemon's own PID (``NotifyAccess=main``).

The unhealthy condition is real: the test lowers the running daemon's
RLIMIT_FSIZE to 0 (prlimit(2)), so every file write fails with EFBIG as it
would on a full disk; the watchdog's write check fails, the pings stop and
STATUS says why.  Lifting the limit brings the pings back.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import struct
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import CentralProcess, EdgeProcess, central_toml, free_port

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
def notify_socket():
    folder = Path(tempfile.mkdtemp(prefix="sdn-"))  # a short path: sun_path holds 108 bytes
    s = NotifySocket(folder / "notify")
    yield s
    s.close()
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
    gaps = [b.at - a.at for a, b in zip(got, got[1:])]
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
        from tests.support.procs import wait_for

        wait_for(lambda: "ready" in edge.log_text(), 20, "the counter's ready line")
        edge.proc.send_signal(signal.SIGTERM)
        assert edge.wait_exit(15) == 0
        log = edge.log_text()
        assert "watchdog" not in log and "Traceback" not in log, log[-2000:]
        assert not os.path.exists(edge.journal.with_name(edge.journal.name + ".alive"))
    finally:
        edge.stop()
