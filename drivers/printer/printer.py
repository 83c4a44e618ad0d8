"""An ESC/POS receipt printer on USB, serial or the network (port 9100).

:class:`Printer` reads the printer's real-time status (``DLE EOT 1..4``) before every job
and sends nothing when the printer cannot print; :class:`PrinterStatus` is that status as
a snapshot that can be published, with :meth:`PrinterStatus.health` for the counter's
health report.

python-escpos 3.1 opens the connection (USB device lookup and kernel-driver detach,
serial port, TCP socket) and writes. Replies are read here, not with its
``query_status()``/``is_online()``/``paper_status()``, because of how its ``_read()`` works:

* ``Network._read()`` is ``recv(16)`` under the socket's one timeout (60 s by default),
  which also bounds connect and send; a printer that does not answer blocks a status
  query for as long as a send may take.
* ``Serial._read()`` is ``read(16)``: it returns only after 16 bytes or the timeout, so
  every one-byte reply costs the full timeout.
* ``Usb._read()`` reads with pyusb's default timeout (1 s) and returns an ``array``.
* ``paper_status()`` answers 2 ("paper adequate") when no reply came, and ``is_online()``
  answers ``False``: neither tells "no reply" apart, and the first says "ok" for it.

So each status query here waits for exactly one byte with its own short timeout
(``status_timeout``), drops stale bytes first, and checks the reply's fixed bits; no reply
(or a malformed one) makes the status *unknown*, never "ok".
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from drivers.base import Closeable
from drivers.errors import DriverError
from drivers.printer import _commands as cmd
from drivers.printer.document import PAPER_80MM, Document, Paper
from drivers.printer.escpos import MODES, Mode, encode

__all__ = [
    "PAPER_STATES",
    "Health",
    "Printer",
    "PrinterError",
    "PrinterNotReady",
    "PrinterStatus",
]

logger = logging.getLogger(__name__)

#: ``(status, reason, message)`` as returned by ``health()``, as for displays: status is
#: ``"ok"``, ``"warning"`` or ``"error"``; reason a short word, message a sentence for
#: staff (Japanese / English). Both are ``None`` when ``"ok"``.
Health = tuple[str, str | None, str | None]

#: The values of :attr:`PrinterStatus.paper`.
PAPER_STATES: frozenset[str] = frozenset({"ok", "near_end", "end", "unknown"})

# DLE EOT replies (ESC/POS Command Reference, "DLE EOT — Transmit real-time status").
# Every reply byte has bit 1 and bit 4 set and bits 0 and 7 clear.
_FIXED_MASK = 0x93
_FIXED_BITS = 0x12
_N1_OFFLINE = 0x08  # n=1 bit 3: offline
_N2_COVER_OPEN = 0x04  # n=2 bit 2: cover is open
_N2_PAPER_END_STOP = 0x20  # n=2 bit 5: printing stopped by paper end
_N2_ERROR = 0x40  # n=2 bit 6: an error occurred
_N3_AUTOCUTTER = 0x08  # n=3 bit 3: autocutter error
_N3_UNRECOVERABLE = 0x20  # n=3 bit 5: unrecoverable error
_N3_AUTO_RECOVERABLE = 0x40  # n=3 bit 6: auto-recoverable error (e.g. head too hot)
_N4_NEAR_END = 0x0C  # n=4 bits 2,3: roll paper near end
_N4_END = 0x60  # n=4 bits 5,6: roll paper end

# What staff read for each health reason (Japanese / English).
_MESSAGES: dict[str, str] = {
    "no_reply": "プリンタから応答がありません。電源とケーブルを確認してください / "
    "Printer not answering: check power and cable",
    "unrecoverable_error": "プリンタが故障しています。電源を切り、担当へ連絡してください / "
    "Printer fault: switch it off and call IT",
    "cutter_error": "カッターエラーです。カバーを開けて詰まった紙を取り除いてください / "
    "Cutter error: open the cover and clear the paper jam",
    "cover_open": "プリンタのカバーが開いています / Printer cover is open",
    "paper_end": "用紙がありません。ロール紙を交換してください / Out of paper: replace the roll",
    "recoverable_error": "プリンタが一時停止しています(ヘッド過熱など)。しばらくお待ちください / "
    "Printer paused (e.g. head too hot): it resumes by itself",
    "error": "プリンタエラーです / Printer error",
    "offline": "プリンタがオフラインです / Printer is offline",
    "paper_near_end": "用紙が残りわずかです。交換を準備してください / Paper near end: have a new roll ready",
}

# Longest TCP connect, in seconds (a printer on the LAN answers in milliseconds).
_CONNECT_S = 3.0

# How long drain() waits for more stray bytes before a status query, in seconds.
_DRAIN_S = 0.05


class PrinterError(DriverError):
    """A printer could not be reached or a job could not be sent (or it is closed)."""


class PrinterNotReady(PrinterError):
    """The printer reported (or failed to report) a state it cannot print in; nothing was
    sent. ``reason`` is the health reason word (``"paper_end"``, ``"cover_open"``,
    ``"no_reply"`` ...), ``status`` the status read."""

    def __init__(self, reason: str, status: PrinterStatus, message: str = "") -> None:
        super().__init__(message or f"printer not ready: {reason}")
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class PrinterStatus:
    """The printer's real-time status. ``None`` means "not known" (no reply).

    Attributes:
        online: ``DLE EOT 1`` bit 3 clear (``False`` while the cover is open, paper ran
            out or an error stopped it).
        paper: ``"ok"``, ``"near_end"`` (printable, change the roll soon), ``"end"`` or
            ``"unknown"`` (``DLE EOT 4``, and ``DLE EOT 2`` bit 5).
        cover_open: ``DLE EOT 2`` bit 2.
        error: ``DLE EOT 2`` bit 6, an error occurred (its cause below).
        cutter_error: ``DLE EOT 3`` bit 3, autocutter error (paper jam at the cutter).
        unrecoverable: ``DLE EOT 3`` bit 5 (switch off, call service).
        recoverable_error: ``DLE EOT 3`` bit 6, auto-recoverable (e.g. head too hot).
        detail: why the status is unknown (``"no reply"``, a connection error), else ``""``.
    """

    online: bool | None
    paper: str
    cover_open: bool | None = None
    error: bool | None = None
    cutter_error: bool | None = None
    unrecoverable: bool | None = None
    recoverable_error: bool | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.paper not in PAPER_STATES:
            raise ValueError(
                f"PrinterStatus.paper must be one of {sorted(PAPER_STATES)}, got {self.paper!r}"
            )

    @classmethod
    def unknown(cls, detail: str = "no reply") -> PrinterStatus:
        """Nothing known: no reply, or no connection."""
        return cls(online=None, paper="unknown", detail=detail)

    @classmethod
    def from_replies(cls, n1: int, n2: int, n3: int, n4: int) -> PrinterStatus:
        """Decode the reply bytes of ``DLE EOT 1``, ``2``, ``3`` and ``4``.

        Raises:
            ValueError: a byte does not have the fixed bits of a status reply.
        """
        for n, byte in enumerate((n1, n2, n3, n4), 1):
            if not _valid(byte):
                raise ValueError(f"DLE EOT {n} reply {byte:#04x} is not a status byte")
        if n4 & _N4_END or n2 & _N2_PAPER_END_STOP:
            paper = "end"
        elif n4 & _N4_NEAR_END:
            paper = "near_end"
        else:
            paper = "ok"
        return cls(
            online=not n1 & _N1_OFFLINE,
            paper=paper,
            cover_open=bool(n2 & _N2_COVER_OPEN),
            error=bool(n2 & _N2_ERROR),
            cutter_error=bool(n3 & _N3_AUTOCUTTER),
            unrecoverable=bool(n3 & _N3_UNRECOVERABLE),
            recoverable_error=bool(n3 & _N3_AUTO_RECOVERABLE),
        )

    @property
    def known(self) -> bool:
        """``True`` when every field came from a reply."""
        return self.paper != "unknown" and None not in (
            self.online,
            self.cover_open,
            self.error,
            self.cutter_error,
            self.unrecoverable,
            self.recoverable_error,
        )

    @property
    def printable(self) -> bool:
        """``True`` only when the printer said it is online, with paper (near end is
        fine), the cover closed and no error. Unknown is not printable."""
        return self.health()[0] != "error"

    def health(self) -> Health:
        """``(status, reason, message)``: ``"ok"``; ``"warning"`` (still prints):
        ``paper_near_end``; ``"error"`` (does not print): ``no_reply``,
        ``unrecoverable_error``, ``cutter_error``, ``cover_open``, ``paper_end``,
        ``recoverable_error``, ``error``, ``offline``."""
        if not self.known:
            detail = self.detail or "no reply"
            message = f"{_MESSAGES['no_reply']} ({detail})"
            return ("error", "no_reply", message)
        checks = (
            ("unrecoverable_error", self.unrecoverable),
            ("cutter_error", self.cutter_error),
            ("cover_open", self.cover_open),
            ("paper_end", self.paper == "end"),
            ("recoverable_error", self.recoverable_error),
            ("error", self.error),
            ("offline", not self.online),
        )
        for reason, failed in checks:
            if failed:
                return ("error", reason, _MESSAGES[reason])
        if self.paper == "near_end":
            return ("warning", "paper_near_end", _MESSAGES["paper_near_end"])
        return ("ok", None, None)

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-able values, with ``printable`` and ``health``."""
        status, reason, message = self.health()
        return {
            "online": self.online,
            "paper": self.paper,
            "cover_open": self.cover_open,
            "error": self.error,
            "cutter_error": self.cutter_error,
            "unrecoverable": self.unrecoverable,
            "recoverable_error": self.recoverable_error,
            "printable": self.printable,
            "health": status,
            "reason": reason,
            "message": message,
        }


def _valid(byte: int) -> bool:
    return byte & _FIXED_MASK == _FIXED_BITS


class _NoReply(Exception):
    pass


class _Link:
    """Raw reads and writes on an opened python-escpos connection, with our timeouts."""

    def __init__(self, conn: Any, write_timeout: float) -> None:
        self.conn = conn
        from escpos.printer import Network, Serial, Usb

        self.kind = next(
            (
                name
                for name, cls in (
                    ("Network", Network),
                    ("Serial", Serial),
                    ("Usb", Usb),
                )
                if isinstance(conn, cls)
            ),
            "other",
        )
        if self.kind == "Serial":
            # python-escpos leaves writes blocking forever (DSR/DTR low while offline).
            conn.device.write_timeout = write_timeout

    def write(self, data: bytes) -> None:
        self.conn._raw(data)

    def drain(self) -> None:
        """Drop bytes that arrived unasked (a late reply to an earlier query)."""
        try:
            while self._read(_DRAIN_S):
                pass
        except _NoReply:
            pass

    def read_byte(self, timeout: float) -> int:
        """One reply byte within ``timeout`` seconds, else :class:`_NoReply`."""
        data = self._read(timeout, one=True)
        return data[0]

    def _read(self, timeout: float, one: bool = False) -> bytes:
        dev = self.conn.device
        if self.kind == "Network":
            old = dev.gettimeout()
            dev.settimeout(timeout)
            try:
                data = dev.recv(1 if one else 64)
            except TimeoutError:
                raise _NoReply() from None
            finally:
                dev.settimeout(old)
            if not data:
                raise ConnectionResetError("the printer closed the connection")
            return data
        if self.kind == "Serial":
            old = dev.timeout
            dev.timeout = timeout
            try:
                data = dev.read(1 if one else 64)
            finally:
                dev.timeout = old
        elif self.kind == "Usb":
            import usb.core

            try:
                data = bytes(dev.read(self.conn.in_ep, 64, max(1, int(timeout * 1000))))
            except usb.core.USBTimeoutError:
                raise _NoReply() from None
        else:
            try:
                data = bytes(self.conn._read())
            except NotImplementedError:
                raise _NoReply() from None
        if not data:
            raise _NoReply()
        return data[:1] if one else data


def _network_connection(host: str, port: int, timeout: float) -> Any:
    """A python-escpos ``Network`` whose ``open()`` closes its socket when the connect
    fails (3.1 drops it unclosed, a ResourceWarning and a file descriptor per retry)."""
    from escpos.exceptions import DeviceNotFoundError
    from escpos.printer import Network

    class _Network(Network):  # type: ignore[misc]
        def open(self, raise_not_found: bool = True) -> None:
            if self._device:
                self.close()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # A host that is off answers no ARP: don't let health polls hang for the
                # whole write timeout on the connect.
                sock.settimeout(min(self.timeout, _CONNECT_S))
                sock.connect((self.host, self.port))
                sock.settimeout(self.timeout)
            except OSError as exc:
                sock.close()
                self.device = None
                raise DeviceNotFoundError(
                    f"Could not open socket for {self.host}: {exc}"
                ) from exc
            self.device = sock

    return _Network(host=host, port=port, timeout=timeout)


def _library_errors() -> tuple[type[BaseException], ...]:
    import escpos.exceptions

    return (OSError, escpos.exceptions.Error)


class Printer(Closeable):
    """An ESC/POS printer.

    Use :meth:`usb`, :meth:`serial` or :meth:`network`; the constructor takes any opened
    or unopened python-escpos connection (the keyword-only arguments are the same).

    The connection is opened on first use and again after it failed, so a printer that is
    off when the counter starts is picked up when it comes on. All methods are blocking
    and thread-safe (one lock: a status query waits for a job being sent).

    Args:
        connection: a python-escpos ``Usb``, ``Serial``, ``Network`` (or ``Dummy``).
        mode: ``"kanji"`` (Japanese-model printers) or ``"image"``; see
            :mod:`drivers.printer.escpos`.
        paper: the paper width (default 80 mm, 42 columns).
        name: for logs and ``repr``, e.g. ``"counter-1 receipt"``.
        status_timeout: seconds to wait for each status reply (4 per status read).
        write_timeout: seconds a write (and a USB/serial operation) may block; a TCP
            connect waits at most 3 s of it.
        font_path: the CJK font for image drawing (default: Noto Sans Mono CJK JP).

    Raises:
        ValueError: unknown ``mode`` or a non-positive timeout.
    """

    def __init__(
        self,
        connection: Any,
        *,
        mode: Mode = "kanji",
        paper: Paper = PAPER_80MM,
        name: str | None = None,
        status_timeout: float = 1.0,
        write_timeout: float = 10.0,
        font_path: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        if status_timeout <= 0 or write_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        self._lock = threading.RLock()
        self._closed = False
        self._conn = connection
        self._link: _Link | None = None
        self.mode: Mode = mode
        self.paper = paper
        self.name = name or type(connection).__name__
        self._status_timeout = status_timeout
        self._write_timeout = write_timeout
        self._font_path = font_path
        self._last: PrinterStatus | None = None

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def usb(
        cls,
        vendor: int,
        product: int,
        *,
        in_ep: int = 0x82,
        out_ep: int = 0x01,
        write_timeout: float = 10.0,
        **kwargs: Any,
    ) -> Printer:
        """A USB printer by vendor and product id (e.g. Epson ``0x04B8``, ``0x0202``).
        ``in_ep``/``out_ep``: bulk endpoints (``lsusb -v``). Other keywords: see
        :class:`Printer`. Needs pyusb and access to the device (a udev rule)."""
        from escpos.printer import Usb

        conn = Usb(
            vendor,
            product,
            timeout=int(write_timeout * 1000),
            in_ep=in_ep,
            out_ep=out_ep,
        )
        return cls(conn, write_timeout=write_timeout, **kwargs)

    @classmethod
    def serial(
        cls, port: str, baudrate: int, *, write_timeout: float = 10.0, **kwargs: Any
    ) -> Printer:
        """A printer on a serial port, e.g. ``"/dev/ttyUSB0"`` at ``38400`` (8N1, DSR/DTR
        flow control: python-escpos's defaults). Other keywords: see :class:`Printer`."""
        from escpos.printer import Serial

        conn = Serial(devfile=port, baudrate=baudrate, timeout=1)
        return cls(conn, write_timeout=write_timeout, **kwargs)

    @classmethod
    def network(
        cls, host: str, port: int = 9100, *, write_timeout: float = 10.0, **kwargs: Any
    ) -> Printer:
        """A printer on the network (raw TCP, port 9100). ``write_timeout`` also bounds
        the connect. Other keywords: see :class:`Printer`."""
        conn = _network_connection(host, port, write_timeout)
        return cls(
            conn,
            write_timeout=write_timeout,
            name=kwargs.pop("name", f"{host}:{port}"),
            **kwargs,
        )

    # -- public API -----------------------------------------------------------------------

    def status(self) -> PrinterStatus:
        """Read the real-time status (``DLE EOT`` 1, 2, 3, 4); never raises for I/O.

        Blocks up to ``4 × status_timeout`` (plus a connect when not connected). A
        connection lost since the last call is re-opened once. No reply, a malformed
        reply or no connection give :meth:`PrinterStatus.unknown`.

        Raises:
            PrinterError: the printer is closed.
        """
        with self._lock:
            self._check_open()
            status = self._read_status()
            self._remember(status)
            return status

    @property
    def last_status(self) -> PrinterStatus | None:
        """The status read last (by :meth:`status`, :meth:`health` or :meth:`print`),
        without asking the printer; ``None`` before the first read."""
        with self._lock:
            return self._last

    def health(self) -> Health:
        """Read the status and return its :meth:`PrinterStatus.health`;
        ``("error", "closed", ...)`` once closed. Blocks like :meth:`status`."""
        with self._lock:
            if self._closed:
                return ("error", "closed", f"{self!r} is closed")
            return self.status().health()

    def print(self, doc: Document) -> None:
        """Print ``doc``: read the status, and send the encoded job only if it is
        printable.

        Returns once every byte has been handed to the connection (the printer then
        prints from its buffer: a paper end in the middle of the job shows in the next
        status).

        Raises:
            TypeError: ``doc`` is not a :class:`Document`.
            PrinterNotReady: the status is not printable (unknown, offline, cover open,
                paper end, an error); nothing was sent.
            PrinterError: closed, or the connection failed while sending (part of the
                job may have been printed: check the paper before printing again).
        """
        if not isinstance(doc, Document):
            raise TypeError(f"print() needs a Document, not {type(doc).__name__}")
        data = encode(doc, mode=self.mode, paper=self.paper, font_path=self._font_path)
        with self._lock:
            self._check_open()
            status = self._read_status()
            self._remember(status)
            level, reason, message = status.health()
            if level == "error":
                raise PrinterNotReady(
                    reason or "error", status, f"{self.name}: {message}"
                )
            try:
                assert self._link is not None
                self._link.write(data)
            except _library_errors() as exc:
                self._drop_connection()
                raise PrinterError(
                    f"{self.name}: sending the job failed: {exc}"
                ) from exc
            logger.info(
                "printer %s: sent a job of %d bytes (%s mode)",
                self.name,
                len(data),
                self.mode,
            )

    def __repr__(self) -> str:
        return f"Printer({self.name!r}, mode={self.mode!r})"

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PrinterError(f"{self!r} is closed")

    def _remember(self, status: PrinterStatus) -> None:
        previous = self._last
        self._last = status
        if previous is None or previous.health()[:2] != status.health()[:2]:
            level, reason, _ = status.health()
            log = {"ok": logger.info, "warning": logger.warning}.get(
                level, logger.error
            )
            log("printer %s: %s%s", self.name, level, f" ({reason})" if reason else "")

    def _connect(self) -> _Link:
        if self._link is None:
            try:
                self._conn.open()
                self._link = _Link(self._conn, self._write_timeout)
            except _library_errors() as exc:
                self._drop_connection()
                raise PrinterError(f"{self.name}: cannot connect: {exc}") from exc
            logger.info("printer %s: connected", self.name)
        return self._link

    def _drop_connection(self) -> None:
        self._link = None
        try:
            self._conn.close()
        except Exception:
            logger.debug("printer %s: error while closing", self.name, exc_info=True)

    def _read_status(self) -> PrinterStatus:
        for attempt in (1, 2):
            try:
                link = self._connect()
            except PrinterError as exc:
                return PrinterStatus.unknown(f"no connection: {exc.__cause__ or exc}")
            try:
                return self._query(link)
            except _NoReply:
                return PrinterStatus.unknown("no reply")
            except _library_errors() as exc:
                # A connection the printer dropped (idle TCP, USB re-plug): reconnect once.
                self._drop_connection()
                if attempt == 2:
                    return PrinterStatus.unknown(f"connection failed: {exc}")
        raise AssertionError("not reached")

    def _query(self, link: _Link) -> PrinterStatus:
        link.drain()
        replies: list[int] = []
        for n in (1, 2, 3, 4):
            link.write(cmd.status_query(n))
            byte = link.read_byte(self._status_timeout)
            if not _valid(byte):
                # Not a status reply (noise, or an unrequested ASB block): drop it all.
                link.drain()
                logger.warning(
                    "printer %s: DLE EOT %d got %#04x, not a status byte",
                    self.name,
                    n,
                    byte,
                )
                return PrinterStatus.unknown(
                    f"malformed reply {byte:#04x} to DLE EOT {n}"
                )
            replies.append(byte)
        return PrinterStatus.from_replies(*replies)

    def _close(self) -> None:
        with self._lock:
            self._drop_connection()
