"""A fake journald for tests: the receiving end of the journal's native
protocol, for daemons that run as real child processes.

systemd-python's ``JournalHandler`` calls ``sd_journal_sendv(3)``, which
sends each entry as one datagram to ``/run/systemd/journal/socket`` (a path
fixed in libsystemd).  This machine runs no journald, so a daemon started
with :meth:`FakeJournald.env` runs ``tests/support/journal_ns/sitecustomize.py``
first: in its own mount namespace that path is this object's socket.  The
daemon finds the journal by itself, as under systemd: ``JOURNAL_STREAM``
names its stderr (the log file), so ``--log-target auto`` picks the journal.

The protocol (systemd's JOURNAL_NATIVE_PROTOCOL.md): ``FIELD=value\\n`` for
a value without a newline, ``FIELD\\n`` + 64-bit little-endian size + value
+ ``\\n`` otherwise; a datagram too large for the socket comes as a memfd
(SCM_RIGHTS).  Like journald, field names that are not upper-case letters,
digits and "_" are dropped, and the sender's PID comes from SCM_CREDENTIALS.
"""

from __future__ import annotations

import array
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOOK = Path(__file__).resolve().parent / "journal_ns"
UCRED = struct.Struct("3i")
VALID = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")


@dataclass
class Entry:
    pid: int | None
    fields: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)


def parse(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = end + 1
        else:
            key = line
            size = int.from_bytes(data[end + 1:end + 9], "little")
            value = data[end + 9:end + 9 + size]
            i = end + 9 + size + 1
        name = key.decode("ascii", "replace")
        if VALID.fullmatch(name):
            fields[name] = value.decode("utf-8", "replace")
    return fields


class FakeJournald:
    def __init__(self, folder: Path) -> None:
        self.folder = folder  # short: sun_path holds 108 bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(str(folder / "socket"))
        os.chmod(folder / "socket", 0o666)  # a daemon under another user (the user namespace) may write
        self.sock.settimeout(0.2)
        self.entries: list[Entry] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="fake-journald", daemon=True)
        self._thread.start()

    def env(self, log_path: Path) -> dict[str, str]:
        """Environment for a daemon whose stdout/stderr go to ``log_path``
        (opened for appending by the caller: the file keeps its inode)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        st = os.stat(log_path)
        path = [str(HOOK)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        return {"PYTHONPATH": os.pathsep.join(path), "MADOGUCHI_TEST_JOURNAL_DIR": str(self.folder),
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}

    def _read(self) -> None:
        space = socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(4 * 4)
        while not self._closed.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(256 * 1024, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[:UCRED.size])[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        with os.fdopen(fd, "rb") as f:
                            data = f.read()
            with self._lock:
                self.entries.append(Entry(pid, parse(data)))

    def where(self, **fields: str) -> list[Entry]:
        """The entries so far whose fields have these values."""
        with self._lock:
            return [e for e in self.entries if all(e.get(k) == v for k, v in fields.items())]

    def wait(self, timeout: float = 10.0, **fields: str) -> Entry:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.where(**fields)
            if found:
                return found[0]
            time.sleep(0.05)
        with self._lock:
            seen = [e.get("MESSAGE") for e in self.entries[-30:]]
        raise AssertionError(f"no journal entry with {fields} in {timeout} s; last messages: {seen}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()
