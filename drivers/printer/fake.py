"""A fake network ESC/POS printer: a real TCP peer on 127.0.0.1 that answers status
queries and records what it would print.

It ships in the package (like gpiozero's ``MockFactory``) so that the edge daemon, the
demo and scenario tests can run a counter with a "printer" that :class:`Printer.network`
talks to exactly as to one on port 9100: the driver's socket, its timeouts and its
reconnects are all exercised.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time

from drivers.base import Closeable
from drivers.printer._commands import tokenize

__all__ = ["FakeEscposPrinter"]

logger = logging.getLogger(__name__)

_POLL_S = 0.05  # how often the server thread checks for close()
_JOIN_S = 5.0


class FakeEscposPrinter(Closeable):
    """A printer on ``127.0.0.1:<port>`` (a free port unless given).

    It parses the stream as a printer does (so bytes inside image or QR data are not
    taken for commands), answers ``DLE EOT n`` at once from its state, and splits what it
    received into jobs at each cut (``GS V``). Several connections may be open; each is
    parsed on its own.

    Test controls (all thread-safe):

    * :meth:`set_paper` ``("ok" | "near_end" | "end")``, :meth:`open_cover`,
      :meth:`close_cover`, :meth:`cutter_error`, :meth:`unrecoverable_error`,
      :meth:`clear_errors`: the state the status replies report (the printer goes
      "offline" in ``DLE EOT 1`` while the cover is open, paper is out or an error holds).
    * :meth:`go_offline` / :meth:`go_online`: stop / resume answering at all (switched
      off, cable pulled); bytes are still received and recorded.
    * :meth:`drop_connections`: close the clients' connections (an idle timeout).
    * :attr:`jobs`: the bytes of each finished job (ending with its cut), without the
      status queries; :attr:`pending`: bytes of a job not cut yet.
    * :attr:`received`: every byte received, status queries included.
    * :attr:`queries`: how many ``DLE EOT`` were answered.
    * :meth:`wait_for_jobs`.
    """

    def __init__(self, *, port: int = 0, name: str = "fake-escpos", on_job=None) -> None:
        """``on_job(job_bytes)`` is called in the server thread after each finished job
        (the demo saves a rendered PNG of each receipt); exceptions are logged."""
        self._on_job = on_job
        self._lock = threading.RLock()
        self._closed = False
        self._changed = threading.Condition(self._lock)
        self._paper = "ok"
        self._cover_open = False
        self._cutter = False
        self._unrecoverable = False
        self._answering = True
        self._jobs: list[bytes] = []
        self._pending = bytearray()
        self._received = bytearray()
        self._queries = 0
        self._drop = False
        self._listener = socket.create_server(("127.0.0.1", port))
        try:
            self._listener.setblocking(False)
            self.port: int = self._listener.getsockname()[1]
            self.name = name
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._serve, name=f"{name}:{self.port}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self._listener.close()
            raise

    # -- controls -------------------------------------------------------------------------

    def set_paper(self, state: str) -> None:
        """``"ok"``, ``"near_end"`` or ``"end"``."""
        if state not in ("ok", "near_end", "end"):
            raise ValueError(f"paper state must be ok, near_end or end, got {state!r}")
        with self._lock:
            self._paper = state

    def open_cover(self) -> None:
        with self._lock:
            self._cover_open = True

    def close_cover(self) -> None:
        with self._lock:
            self._cover_open = False

    def cutter_error(self) -> None:
        """An autocutter error (a jam at the cutter) until :meth:`clear_errors`."""
        with self._lock:
            self._cutter = True

    def unrecoverable_error(self) -> None:
        """An unrecoverable error until :meth:`clear_errors`."""
        with self._lock:
            self._unrecoverable = True

    def clear_errors(self) -> None:
        with self._lock:
            self._cutter = self._unrecoverable = False

    def go_offline(self) -> None:
        """Stop answering status queries (bytes are still received)."""
        with self._lock:
            self._answering = False

    def go_online(self) -> None:
        with self._lock:
            self._answering = True

    def drop_connections(self) -> None:
        """Close every client connection, as a printer does after an idle timeout or a
        restart; the listener stays open."""
        with self._lock:
            self._drop = True
            while self._drop and self._thread.is_alive():
                self._changed.wait(0.1)

    @property
    def jobs(self) -> list[bytes]:
        """A copy of the finished jobs, oldest first."""
        with self._lock:
            return list(self._jobs)

    @property
    def pending(self) -> bytes:
        with self._lock:
            return bytes(self._pending)

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    @property
    def queries(self) -> int:
        with self._lock:
            return self._queries

    def wait_for_jobs(self, n: int, timeout: float = 5.0) -> list[bytes]:
        """Block until at least ``n`` jobs have finished; return them all.

        Raises:
            TimeoutError: fewer than ``n`` within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._jobs) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._jobs)} job(s) within {timeout:g} s, wanted {n} "
                        f"({len(self._pending)} bytes pending)"
                    )
                self._changed.wait(remaining)
            return list(self._jobs)

    # -- the printer ----------------------------------------------------------------------

    def _status_byte(self, n: int) -> int:
        paper_end = self._paper == "end"
        error = self._cutter or self._unrecoverable
        byte = 0x12  # the fixed bits of every DLE EOT reply
        if n == 1 and (self._cover_open or paper_end or error):
            byte |= 0x08
        elif n == 2:
            byte |= (
                (0x04 if self._cover_open else 0)
                | (0x20 if paper_end else 0)
                | (0x40 if error else 0)
            )
        elif n == 3:
            byte |= (0x08 if self._cutter else 0) | (0x20 if self._unrecoverable else 0)
        elif n == 4:
            # When the roll is out, the near-end sensor sees no paper either.
            byte |= {"ok": 0x00, "near_end": 0x0C, "end": 0x6C}[self._paper]
        return byte

    def _feed(self, conn: socket.socket, buf: bytearray, data: bytes) -> None:
        buf += data
        tokens, used = tokenize(bytes(buf), final=False)
        del buf[:used]
        replies = bytearray()
        finished: list[bytes] = []
        with self._lock:
            self._received += data
            for tok in tokens:
                if tok.name == "DLE EOT":
                    if self._answering and tok.args[0] in (1, 2, 3, 4):
                        replies.append(self._status_byte(tok.args[0]))
                        self._queries += 1
                    continue
                self._pending += tok.raw
                if tok.name == "GS V":
                    finished.append(bytes(self._pending))
                    self._jobs.append(bytes(self._pending))
                    self._pending.clear()
                    self._changed.notify_all()
        if replies:
            conn.sendall(bytes(replies))
        if finished and self._on_job is not None:
            for job in finished:
                try:
                    self._on_job(job)
                except Exception:
                    logger.exception("%s: on_job failed", self.name)

    def _serve(self) -> None:
        conns: dict[socket.socket, bytearray] = {}
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._drop:
                        for sock in conns:
                            sock.close()
                        conns.clear()
                        self._drop = False
                        self._changed.notify_all()
                readable, _, _ = select.select(
                    [self._listener, *conns], [], [], _POLL_S
                )
                for sock in readable:
                    if sock is self._listener:
                        try:
                            conn, _ = self._listener.accept()
                        except BlockingIOError:
                            continue
                        conn.setblocking(True)
                        conn.settimeout(1.0)
                        conns[conn] = bytearray()
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        conns.pop(sock)
                        sock.close()
                        continue
                    try:
                        self._feed(sock, conns[sock], data)
                    except OSError:
                        conns.pop(sock)
                        sock.close()
        except Exception:
            logger.exception("%s: server thread failed", self.name)
        finally:
            for sock in conns:
                sock.close()

    def _close(self) -> None:
        self._stop.set()
        self._thread.join(_JOIN_S)
        self._listener.close()

    def __repr__(self) -> str:
        return f"FakeEscposPrinter(port={self.port})"
