"""The ZVT ECR protocol: the cash register's side, over serial (pyserial) or TCP.

One :class:`ZvtTerminal` talks to one payment terminal (PT). Every command runs the same
way (PA00P016, "Application-protocol"): the ECR sends the command; the PT answers
``80 00 00`` (or ``84 xx``), then sends any number of messages — intermediate status
``04 FF``, status information ``04 0F``, print lines ``06 D1``/``06 D3`` — each answered
``80 00 00`` by the ECR, and ends with completion ``06 0F`` or abort ``06 1E``.

Timers (constructor arguments; the values are our defaults, see docs/terminal.md):

``t1_s``
    wait for the link-level ACK/NAK of a frame we sent (serial only).
``t3_s``
    wait for the PT's first answer (``80 00 00``) to a command.
``t4_s``
    wait for the PT's next message while a command runs; restarted by every message
    (a customer looking for a card sends ``04 FF`` "insert card" again and again).
``inter_byte_s``
    a frame whose next byte takes longer is dropped and NAKed.

The outcome rules of :mod:`drivers.terminal.base` hold: a sale that was sent never raises
for its outcome; any doubt is :attr:`Outcome.UNKNOWN` with a reason.
"""

from __future__ import annotations

import logging
import select
import socket
import termios
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import serial

from drivers.terminal import zvt_proto as p
from drivers.terminal.base import (
    Health,
    OnStatus,
    Outcome,
    Terminal,
    TerminalUnavailable,
    Totals,
    TxKind,
    TxRecord,
    check_amount,
    mask_pan,
)

__all__ = ["DEFAULT_T1_S", "DEFAULT_T3_S", "DEFAULT_T4_S", "ZvtTerminal", "record_from_status"]

logger = logging.getLogger(__name__)

#: Default wait for ACK/NAK after a frame, seconds.
#: Result code of a repeat receipt with nothing to repeat ("function not possible").
RESULT_NOTHING_TO_REPEAT = 0x83

DEFAULT_T1_S = 2.0
#: Default wait for the PT's ``80 00 00`` after a command, seconds.
DEFAULT_T3_S = 5.0
#: Default wait for the PT's next message during a command, seconds (restarted by each).
DEFAULT_T4_S = 180.0
#: Default inter-byte time-out inside a frame, seconds (a byte takes ~1.1 ms at 9600 Bd).
DEFAULT_INTER_BYTE_S = 0.5

# The loop that waits for the PT looks at abort()/close() this often, in seconds.
_SLICE_S = 0.05
# How long close() waits for a running command to notice, in seconds.
_CLOSE_WAIT_S = 2.0

#: Words the simulator (and, we hope, a configured PT) puts in BMP 3C of a repeated
#: receipt (06 20) to say what the transaction was. Standard ZVT has no field for this;
#: see docs/terminal.md.
KIND_WORDS = {
    "SALE": (TxKind.SALE, None),
    "REVERSAL": (TxKind.VOID, None),
    "REFUND": (TxKind.REFUND, None),
    "AUTO-REVERSAL": (TxKind.SALE, "reversed_by_terminal"),
}


def _digits(fields: dict[int, bytes], bmp: int) -> str | None:
    if bmp not in fields:
        return None
    try:
        return p.bcd_digits(fields[bmp])
    except p.ZvtProtocolError:
        return None


def record_from_status(
    fields: dict[int, bytes], *, kind: TxKind, outcome: Outcome, amount: int, now: datetime | None = None
) -> dict[str, Any]:
    """The :class:`TxRecord` fields found in the BMPs of a status information ``04 0F``
    (a dict, so the caller can add outcome-specific ones)."""
    approval = fields.get(p.BMP_APPROVAL)
    name = fields.get(p.BMP_CARD_NAME)
    pan = None
    if p.BMP_PAN in fields:
        try:
            pan = mask_pan(p.decode_pan(fields[p.BMP_PAN]))
        except p.ZvtProtocolError:
            pan = None
    if p.BMP_AMOUNT in fields:
        try:
            amount = p.bcd_decode(fields[p.BMP_AMOUNT])
        except p.ZvtProtocolError:
            pass
    return {
        "kind": kind,
        "outcome": outcome,
        "amount": amount,
        "receipt_no": _digits(fields, p.BMP_RECEIPT),
        "trace_no": _digits(fields, p.BMP_TRACE),
        "approval_no": approval.decode("ascii", "replace").strip(" \x00") or None if approval else None,
        "terminal_id": _digits(fields, p.BMP_TID),
        "card_name": name.decode("ascii", "replace").strip() or None if name else None,
        "masked_pan": pan,
        "at": p.bmp_datetime(fields, now=now),
        "result_code": fields[p.BMP_RESULT][0] if p.BMP_RESULT in fields else None,
    }


@dataclass
class _Run:
    """What happened during one command (internal)."""

    end: str = "none"  # completion | abort | refused | not_accepted | no_answer | timeout | lost | corrupt | closed
    status_infos: list[dict[int, bytes]] = field(default_factory=list)
    conflicting: bool = False
    completion: bytes = b""
    code: int | None = None
    abort_sent: bool = False
    detail: str = ""

    @property
    def status(self) -> dict[int, bytes] | None:
        return self.status_infos[-1] if self.status_infos else None


class _SerialPort:
    """pyserial, with its exceptions turned into :class:`zvt_proto.LinkLost`."""

    def __init__(self, port: str, baudrate: int) -> None:
        self._ser = serial.Serial(
            port,
            baudrate=baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_TWO,  # ZVT serial: 8N2 (PA00P016 §3)
            timeout=0,
            exclusive=True,
        )
        # Modem lines are optional: a pty (the simulator) has none (errno 25, ENOTTY).
        for attr in ("dtr", "rts"):
            try:
                setattr(self._ser, attr, True)
            except (OSError, serial.SerialException, termios.error):
                pass
        self.reset()

    def reset(self) -> None:
        try:
            self._ser.reset_input_buffer()
        except (OSError, serial.SerialException, termios.error) as exc:
            raise p.LinkLost(str(exc)) from exc

    def read(self, timeout: float) -> bytes:
        try:
            self._ser.timeout = timeout
            data = self._ser.read(1)
            if data and self._ser.in_waiting:
                data += self._ser.read(self._ser.in_waiting)
            return data
        except (OSError, serial.SerialException, termios.error) as exc:
            raise p.LinkLost(str(exc)) from exc

    def write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
            self._ser.flush()
        except (OSError, serial.SerialException, termios.error) as exc:
            raise p.LinkLost(str(exc)) from exc

    def close(self) -> None:
        try:
            self._ser.close()
        except (OSError, serial.SerialException, termios.error):
            pass


class _TcpPort:
    """A TCP connection to the PT (port 20007 by default)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise p.LinkLost(str(exc)) from exc
        self._sock.setblocking(False)

    def reset(self) -> None:
        try:
            while select.select([self._sock], [], [], 0)[0]:
                if not self._sock.recv(4096):
                    raise p.LinkLost("connection closed by the terminal")
        except OSError as exc:
            raise p.LinkLost(str(exc)) from exc

    def read(self, timeout: float) -> bytes:
        try:
            if not select.select([self._sock], [], [], timeout)[0]:
                return b""
            data = self._sock.recv(4096)
        except OSError as exc:
            raise p.LinkLost(str(exc)) from exc
        if not data:
            raise p.LinkLost("connection closed by the terminal")
        return data

    def write(self, data: bytes) -> None:
        try:
            self._sock.setblocking(True)
            self._sock.sendall(data)
            self._sock.setblocking(False)
        except OSError as exc:
            raise p.LinkLost(str(exc)) from exc

    def close(self) -> None:
        self._sock.close()


class ZvtTerminal(Terminal):
    """A payment terminal speaking ZVT, over a serial port or TCP.

    The port is opened in the constructor if possible, and again before any command when
    it was lost (a pulled and replugged cable: give a stable name such as
    ``/dev/serial/by-id/...``). The constructor does not fail when the terminal is
    missing; :meth:`health` says so and commands raise :class:`TerminalUnavailable`.

    One command runs at a time: a call while another runs raises
    :class:`TerminalUnavailable` ("busy") at once. :meth:`abort`, :meth:`health` and
    :meth:`close` may be called from any thread.

    Args:
        port: serial device (``/dev/ttyUSB0``) or ``tcp://host[:port]`` (default port
            20007).
        baudrate: serial speed; ZVT uses 9600 (8N2).
        password: the PT's 6-digit ZVT password, sent with reversal, refund, totals,
            repeat receipt and status enquiry.
        currency: ISO 4217 numeric code sent in BMP 49 with amounts (392 = yen), or
            ``None`` to send none (a PT set up for one currency).
        t1_s, t3_s, t4_s, inter_byte_s: timers in seconds, see the module docs.
        name: for log lines; defaults to ``port``.

    Raises:
        ValueError: bad password, timer or port.
    """

    driver = "zvt"

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        password: str = "000000",
        currency: int | None = p.CURRENCY_JPY,
        t1_s: float = DEFAULT_T1_S,
        t3_s: float = DEFAULT_T3_S,
        t4_s: float = DEFAULT_T4_S,
        inter_byte_s: float = DEFAULT_INTER_BYTE_S,
        name: str | None = None,
    ) -> None:
        p.password_bytes(password)  # raises ValueError
        for label, value in (("t1_s", t1_s), ("t3_s", t3_s), ("t4_s", t4_s), ("inter_byte_s", inter_byte_s)):
            if value <= 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        if not port:
            raise ValueError("port is empty")
        self._port_name = port
        self._baudrate = baudrate
        self._password = password
        self._currency = currency
        self._t1, self._t3, self._t4, self._inter_byte = t1_s, t3_s, t4_s, inter_byte_s
        self._name = name or port
        self._lock = threading.Lock()
        self._closed = False
        self._busy = threading.Lock()  # one command at a time
        self._abort = threading.Event()
        self._io: _SerialPort | _TcpPort | None = None
        self._link: p.FramedLink | p.StreamLink | None = None
        self._health: Health = ("warning", "not_connected", f"terminal {self._name}: not talked to yet")
        try:
            self._open()
        except TerminalUnavailable as exc:
            logger.warning("terminal %s: %s", self._name, exc)

    def __repr__(self) -> str:
        return f"<ZvtTerminal {self._name}>"

    # -- public API ------------------------------------------------------------------

    def sale(self, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        check_amount(amount)
        return self._transaction(TxKind.SALE, amount, p.cmd_authorisation(amount, self._currency), on_status)

    def void(self, receipt_no: str, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        check_amount(amount)
        if not isinstance(receipt_no, str) or not receipt_no.isdigit() or len(receipt_no) > 4:
            raise ValueError(f"receipt_no must be up to 4 digits, got {receipt_no!r}")
        record = self._transaction(TxKind.VOID, amount, p.cmd_reversal(self._password, int(receipt_no)), on_status)
        if record.outcome is Outcome.APPROVED and record.amount != amount:
            logger.error(
                "terminal %s: void of slip %s reversed %d yen, expected %d", self._name, receipt_no, record.amount, amount
            )
        return record

    def refund(self, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        check_amount(amount)
        return self._transaction(
            TxKind.REFUND, amount, p.cmd_refund(self._password, amount, self._currency), on_status
        )

    def last_transaction(self) -> TxRecord | None:
        with self._command():
            self._status_enquiry()
            run = self._run(p.cmd_repeat_receipt(self._password), None, abortable=False)
            if run.end == "abort" and run.code == RESULT_NOTHING_TO_REPEAT:
                # Nothing to repeat (no transaction yet, or the journal was closed).
                logger.info("terminal %s: no last transaction (%s)", self._name, p.result_text(run.code))
                self._set_health(("ok", None, None))
                return None
            if run.end == "abort":
                # Any other abort (the operator's abort key, a system error, the
                # function switched off) says nothing about the last transaction:
                # reading it as "none" would call an approved sale unpaid.
                raise self._unavailable(f"repeat receipt refused: {p.result_text(run.code)}")
            if run.end != "completion" or run.status is None:
                raise self._unavailable(f"repeat receipt failed: {run.end} {run.detail}".strip())
            self._set_health(("ok", None, None))
            fields = run.status
            text = fields.get(p.BMP_TEXT, b"").decode("ascii", "replace").strip().upper()
            kind, reason = KIND_WORDS.get(text, (TxKind.SALE, None))
            code = fields[p.BMP_RESULT][0] if p.BMP_RESULT in fields else 0
            if reason:
                outcome, message = Outcome.ABORTED, "the terminal reversed this payment itself"
            elif code == 0:
                outcome, message = Outcome.APPROVED, None
            else:
                outcome, reason, message = Outcome.DECLINED, "declined", p.result_text(code)
            if text not in KIND_WORDS:
                message = "transaction type not reported by the terminal; assumed a sale"
            values = record_from_status(fields, kind=kind, outcome=outcome, amount=0)
            values.update(reason=reason, message=message)
            return TxRecord(**values)

    def day_totals(self) -> Totals:
        with self._command():
            self._status_enquiry()
            run = self._run(p.cmd_totals(self._password), None, abortable=False)
            if run.end != "completion" or run.status is None:
                raise self._unavailable(f"totals failed: {run.end} {p.result_text(run.code) if run.code else ''}")
            self._set_health(("ok", None, None))
            fields = run.status
            by_card = p.decode_totals(fields[p.BMP_TOTALS]) if p.BMP_TOTALS in fields else {}
            count = sum(c for c, _ in by_card.values())
            amount = p.bcd_decode(fields[p.BMP_AMOUNT]) if p.BMP_AMOUNT in fields else sum(a for _, a in by_card.values())
            return Totals(count=count, amount=amount, by_card=by_card)

    def abort(self) -> None:
        self._abort.set()

    def health(self) -> Health:
        with self._lock:
            if self._closed:
                return ("error", "closed", f"terminal {self._name} is closed")
            return self._health

    # -- command plumbing ------------------------------------------------------------

    def _set_health(self, health: Health) -> None:
        with self._lock:
            self._health = health

    def _unavailable(self, message: str) -> TerminalUnavailable:
        self._set_health(("error", "unreachable", f"terminal {self._name}: {message}"))
        return TerminalUnavailable(f"terminal {self._name}: {message}")

    class _Busy:
        def __init__(self, term: ZvtTerminal) -> None:
            self.term = term

        def __enter__(self) -> None:
            term = self.term
            if term.closed:
                raise TerminalUnavailable(f"terminal {term._name} is closed")
            if not term._busy.acquire(blocking=False):
                raise TerminalUnavailable(f"terminal {term._name} is busy with another command")
            try:
                term._abort.clear()
                for attempt in (1, 2):
                    term._open()
                    assert term._link is not None and term._io is not None
                    term._link.reset()
                    try:
                        term._io.reset()
                        break
                    except p.LinkLost:
                        # The port died while idle (cable pulled, maybe plugged back in
                        # since): open it once more by name before giving up.
                        term._drop()
                        if attempt == 2:
                            raise
            except p.LinkLost as exc:
                term._drop()
                term._busy.release()
                raise term._unavailable(f"port lost: {exc}") from exc
            except BaseException:
                term._busy.release()
                raise

        def __exit__(self, *exc: object) -> None:
            self.term._busy.release()

    def _command(self) -> ZvtTerminal._Busy:
        return ZvtTerminal._Busy(self)

    def _open(self) -> None:
        if self._link is not None:
            return
        try:
            if self._port_name.startswith("tcp://"):
                host, _, port = self._port_name[len("tcp://") :].partition(":")
                io: _SerialPort | _TcpPort = _TcpPort(host, int(port or 20007), self._t3)
                self._link = p.StreamLink(io.read, io.write)
            else:
                io = _SerialPort(self._port_name, self._baudrate)
                self._link = p.FramedLink(io.read, io.write, ack_timeout_s=self._t1, inter_byte_s=self._inter_byte)
        except (OSError, serial.SerialException, p.LinkLost, ValueError) as exc:
            raise self._unavailable(f"cannot open {self._port_name}: {exc}") from exc
        self._io = io
        logger.info("terminal %s: port open", self._name)

    def _drop(self) -> None:
        # The port is gone (or in doubt): close it; the next command opens it again.
        if self._io is not None:
            self._io.close()
        self._io = None
        self._link = None

    def _status_enquiry(self) -> None:
        """05 01: raise TerminalUnavailable unless the PT answers "ready"."""
        run = self._run(p.cmd_status_enquiry(self._password), None, abortable=False, t4_s=self._t3)
        if run.end != "completion":
            raise self._unavailable(f"no answer to the status enquiry ({run.end}{': ' + run.detail if run.detail else ''})")
        status = None
        try:
            _, pos = p.llvar_decode(run.completion, 0, 3)  # software version, LLLVAR
            status = run.completion[pos] if pos < len(run.completion) else None
        except p.ZvtProtocolError:
            status = None
        if status not in (None, 0):
            text = p.TERMINAL_STATUS_TEXTS.get(status, "not ready")
            raise self._unavailable(f"terminal not ready: {text} (0x{status:02X})")

    def _run(self, command: bytes, on_status: OnStatus | None, *, abortable: bool, t4_s: float | None = None) -> _Run:
        """Send ``command`` and follow the PT until completion, abort or doubt. Never
        raises for link trouble: it is reported in the result."""
        assert self._link is not None
        link = self._link
        run = _Run()
        t4 = t4_s if t4_s is not None else self._t4
        try:
            try:
                link.send(command)
            except p.LinkNak:
                run.end, run.detail = "not_accepted", "the terminal refused the frame each time"
                return run
            except p.LinkTimeout:
                run.end, run.detail = "no_answer", "no acknowledgement of the command frame"
                return run
            # T3: the first answer.
            first = self._next(run, self._t3)
            if first is None:
                run.end = run.end if run.end != "none" else "no_answer"
                return run
            if first.command == p.ACK_APDU:
                pending = None
            elif first.cls == p.NACK_CLASS:
                run.end, run.code = "refused", first.instr
                return run
            else:
                pending = first  # some PTs skip 80 00 00 and go straight on
            deadline = time.monotonic() + t4
            while True:
                apdu = pending
                pending = None
                if apdu is None:
                    if abortable and self._abort.is_set() and not run.abort_sent and not run.status_infos:
                        logger.info("terminal %s: sending abort (06 B0)", self._name)
                        run.abort_sent = True
                        link.send(p.cmd_abort())
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        run.end = "timeout"
                        return run
                    apdu = self._next(run, min(remaining, _SLICE_S))
                    if apdu is None:
                        if run.end != "none":
                            return run
                        continue
                deadline = time.monotonic() + t4  # T4 restarts with every message
                cmd = apdu.command
                if cmd == p.ACK_APDU or apdu.cls == p.NACK_CLASS:
                    continue  # the PT's answer to our 06 B0
                # Keep what the PT told us *before* answering it: if the line dies while
                # we answer, the status information is still evidence for the record.
                word = None
                if cmd == p.CMD_INTERMEDIATE and apdu.data:
                    word = p.intermediate_word(apdu.data[0])
                elif cmd == p.CMD_STATUS_INFO:
                    self._keep_status(run, apdu)
                elif cmd == p.CMD_COMPLETION:
                    run.end, run.completion = "completion", apdu.data
                elif cmd == p.CMD_ABORT_PT:
                    run.end, run.code = "abort", apdu.data[0] if apdu.data else None
                elif cmd not in (p.CMD_PRINT_LINE, p.CMD_PRINT_BLOCK):  # receipt text is never logged
                    logger.warning("terminal %s: unexpected %r, acknowledged", self._name, apdu)
                try:
                    link.send(p.APDU_ACK)
                except p.LinkError:
                    if run.end in ("completion", "abort"):
                        # The result is in; only our answer to it was lost. (A PT that
                        # misses the answer to 06 0F does not undo the transaction.)
                        self._drop()
                        return run
                    raise
                if run.end in ("completion", "abort"):
                    return run
                if word is not None and on_status is not None:
                    try:
                        on_status(word)
                    except Exception:
                        logger.exception("terminal %s: on_status(%r) failed", self._name, word)
        except p.LinkLost as exc:
            run.end, run.detail = "lost", str(exc)
            self._drop()
        except p.LinkCorrupt as exc:
            run.end, run.detail = "corrupt", str(exc)
            self._drop()
        except (p.LinkTimeout, p.LinkNak) as exc:
            run.end, run.detail = "no_answer", f"our acknowledgement was not taken: {exc}"
            self._drop()
        return run

    def _keep_status(self, run: _Run, apdu: p.Apdu) -> None:
        try:
            fields = p.parse_bmps(apdu.data)
        except p.ZvtProtocolError as exc:
            logger.warning("terminal %s: unreadable status information: %s", self._name, exc)
            run.conflicting = True
            return
        if run.status_infos and fields != run.status_infos[-1]:
            logger.warning("terminal %s: a second, different status information", self._name)
            run.conflicting = True
        if not run.status_infos or fields != run.status_infos[-1]:
            run.status_infos.append(fields)

    def _next(self, run: _Run, timeout: float) -> p.Apdu | None:
        """The next APDU within ``timeout``; None on time-out (or with run.end set when
        closing or on a malformed APDU)."""
        assert self._link is not None
        if self.closed:
            run.end = "closed"
            return None
        raw = self._link.receive(timeout)
        if raw is None:
            return None
        try:
            return p.parse_apdu(raw)
        except p.ZvtProtocolError as exc:
            run.end, run.detail = "corrupt", str(exc)
            return None

    def _transaction(self, kind: TxKind, amount: int, command: bytes, on_status: OnStatus | None) -> TxRecord:
        with self._command():
            self._status_enquiry()  # raises TerminalUnavailable: nothing was sent
            logger.info("terminal %s: %s of %d yen sent", self._name, kind.value, amount)
            run = self._run(command, on_status, abortable=True)
        record = self._record(kind, amount, run)
        level = logging.INFO if record.outcome is not Outcome.UNKNOWN else logging.ERROR
        logger.log(
            level, "terminal %s: %s of %d yen: %s%s (slip %s)", self._name, kind.value, amount,
            record.outcome.value, f"/{record.reason}" if record.reason else "", record.receipt_no,
        )
        if record.outcome is Outcome.UNKNOWN:
            self._set_health(("warning", record.reason, record.message))
        else:
            self._set_health(("ok", None, None))
        return record

    def _record(self, kind: TxKind, amount: int, run: _Run) -> TxRecord:
        status = run.status
        base = record_from_status(status or {}, kind=kind, outcome=Outcome.UNKNOWN, amount=amount)
        code = base["result_code"]
        approved_info = status is not None and code in (0, None)

        def make(outcome: Outcome, reason: str | None, message: str | None, **extra: Any) -> TxRecord:
            values = dict(base, outcome=outcome, reason=reason, message=message)
            values.update(extra)
            return TxRecord(**values)

        if run.end == "completion":
            if run.conflicting:
                return make(Outcome.UNKNOWN, "conflicting_status", "the terminal sent differing status information")
            if status is not None and code not in (0, None):
                return make(Outcome.DECLINED, "declined", p.result_text(code))
            if status is None:
                return make(Outcome.APPROVED, None, "completion without status information: no slip data")
            return make(Outcome.APPROVED, None, None)
        if run.end == "abort":
            code = run.code
            if run.abort_sent or code == p.RESULT_ABORTED:
                return make(Outcome.ABORTED, "cancelled", p.result_text(code), result_code=code)
            if code in p.ABORT_RESULTS:
                return make(Outcome.ABORTED, "aborted", p.result_text(code), result_code=code)
            return make(Outcome.DECLINED, "declined", p.result_text(code), result_code=code)
        if run.end == "refused":
            return make(Outcome.ABORTED, "refused", f"the terminal refused the command: {p.result_text(run.code)}",
                        result_code=run.code)
        if run.end == "not_accepted":
            return make(Outcome.ABORTED, "not_accepted", run.detail)
        # Everything else is doubt.
        if approved_info:
            reason = "completion_lost" if run.end == "timeout" else "connection_lost" if run.end == "lost" else run.end
            note = "status information said approved, but the completion never came"
        else:
            reason = {
                "timeout": "no_answer", "no_answer": "no_answer", "lost": "connection_lost",
                "corrupt": "corrupt_frames", "closed": "closed",
            }.get(run.end, run.end)
            note = "no result from the terminal"
        detail = f" ({run.detail})" if run.detail else ""
        return make(Outcome.UNKNOWN, reason, f"{note}{detail}; ask the terminal (last_transaction)")

    def _close(self) -> None:
        self._abort.set()
        # A running command sees closed within _SLICE_S and returns; then close the port.
        got = self._busy.acquire(timeout=_CLOSE_WAIT_S)
        try:
            self._drop()
        finally:
            if got:
                self._busy.release()
        logger.info("terminal %s: closed", self._name)

