"""A payment terminal simulator speaking the PT side of ZVT on a pty, with scripted faults.

:class:`SimTerminal` opens a pseudo-terminal; a driver opens its :attr:`SimTerminal.port`
(or the symlink given as ``link``, which follows the pty across a :meth:`replug`, like
``/dev/serial/by-id``). The simulator keeps its own journal of transactions (slip and
trace numbers counting up, approval numbers, brands), so a repeated receipt, a reversal
and the totals are answered truthfully.

Test controls and history (the gpiozero ``MockFactory`` habit):

* :attr:`SimTerminal.scenario` (settable), :meth:`present_card`,
  :meth:`pull_cable`, :meth:`replug`, :meth:`hold` / :meth:`release`,
  :meth:`reached` (a ``threading.Event`` per step), ``on_step`` (a callback);
* :attr:`SimTerminal.transactions`, :attr:`SimTerminal.received_commands`.

Run one by itself (for the demo, or a test that kill -9s the ECR process)::

    python -m drivers.terminal.sim --link /tmp/pt0 [--scenario approve] [--brand VISA]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import fcntl
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from drivers.base import Closeable
from drivers.terminal import zvt_proto as p
from drivers.terminal.base import Outcome, TerminalError, TxKind

__all__ = ["BRANDS", "STEPS", "Scenario", "SimTerminal", "SimTransaction", "main"]

logger = logging.getLogger(__name__)


class Scenario(str, enum.Enum):
    """What the simulated terminal does with the next sales (06 01). ``silent`` and
    ``slow_bytes`` apply to every command; the others to sales only."""

    APPROVE = "approve"
    DECLINE = "decline"
    #: answers nothing at all, not even a link ACK to the status enquiry
    SILENT = "silent"
    #: the first try of each status information frame has a wrong CRC (ECR NAKs, PT repeats)
    CRC_CORRUPTION = "crc_corruption"
    #: status information sent and acknowledged, then the cable is pulled (PT approved)
    DROP_AFTER_STATUS = "drop_after_status"
    #: approved and acknowledged, but the completion 06 0F is never sent
    COMPLETION_LOST = "completion_lost"
    #: every byte trickles with ``byte_delay_s`` (below the ECR's inter-byte time-out)
    SLOW_BYTES = "slow_bytes"
    #: the status information is sent twice
    DUPLICATE_FRAMES = "duplicate_frames"
    #: the cable is pulled right after the sale arrives (PT did not approve)
    CABLE_PULLED = "cable_pulled"


#: Steps the simulator reports through :meth:`SimTerminal.reached` and ``on_step``, and
#: where :meth:`SimTerminal.hold` can pause it.
STEPS = (
    "command_received",  # a command APDU arrived (and was ACKed on the link)
    "acknowledged",  # 80 00 00 sent for it
    "intermediate_sent",  # a 04 FF was sent and answered
    "waiting_for_card",  # waiting for present_card() / the customer
    "status_info_sent",  # 04 0F sent and ACKed on the link; the ECR's 80 00 00 not yet read
    "status_info_acked",  # the ECR answered the 04 0F with 80 00 00
    "completion_sent",  # 06 0F sent
    "aborted",  # 06 1E sent
    "reversed_by_terminal",  # the ECR never answered 04 0F: payment reversed by the PT
    "cable_pulled",
    "replugged",
)

#: Card names the simulator uses, and the BMP 60 totals slot each one counts in.
BRANDS: dict[str, str] = {
    "VISA": "VISA",
    "Mastercard": "Mastercard",
    "JCB": "JCB",
    "AMEX": "AMEX",
    "Diners": "Diners",
    "nanaco": "other",
    "WAON": "other",
    "Suica": "other",
    "PASMO": "other",
    "Rakuten Edy": "other",
    "iD": "other",
    "QUICPay": "other",
    "PayPay": "other",
}
# E-money that the terminal cannot void (docs: Japanese cashless facts).
_NO_VOID = frozenset({"nanaco", "Rakuten Edy"})
# Transit IC: void only if it is the terminal's last transaction.
_TRANSIT = frozenset({"Suica", "PASMO"})

_SW_VERSION = b"madoguchi-sim 1.0"


@dataclass
class SimTransaction:
    """One entry of the simulator's journal (a copy is handed out)."""

    kind: TxKind
    outcome: Outcome
    amount: int
    trace_no: str
    at: datetime
    receipt_no: str | None = None
    approval_no: str | None = None
    card_name: str | None = None
    masked_pan: str | None = None
    result_code: int = 0
    reversed_by_terminal: bool = False
    voided: bool = False
    original_receipt_no: str | None = None
    day_closed: bool = False


class _Stop(Exception):
    """The simulator is closing (raised out of reads in its thread)."""


class SimTerminal(Closeable):
    """The PT side of ZVT on a pty, served by a thread named ``terminal-sim[name]``.

    Args:
        link: if given, a symlink kept pointing at the current pty (removed while the
            cable is pulled, and on close).
        scenario: a :class:`Scenario` or its value.
        brand: the card name of a sale when no :meth:`present_card` is queued.
        card_wait_s: how long the customer takes to present a card, seconds; ``None``
            waits for :meth:`present_card` (or the ECR's abort, or ``card_timeout_s``).
        card_timeout_s: the PT gives up waiting for a card after this (06 1E 6C).
        ack_timeout_s: the PT's wait for a link ACK.
        ecr_answer_timeout_s: the PT's wait for the ECR's 80 00 00; after a status
            information that never gets one, the PT reverses the payment.
        byte_delay_s: delay between bytes in ``slow_bytes``.
        replug_after_s: after the simulator pulls its own cable (a scenario), plug it
            back in after this many seconds; ``None``: wait for :meth:`replug`.
        terminal_id: 8 digits, BMP 29.
        name: for the thread name and logs.
    """

    def __init__(
        self,
        *,
        link: str | Path | None = None,
        scenario: Scenario | str = Scenario.APPROVE,
        brand: str = "VISA",
        card_wait_s: float | None = 0.0,
        card_timeout_s: float = 30.0,
        ack_timeout_s: float = 0.5,
        ecr_answer_timeout_s: float = 2.0,
        byte_delay_s: float = 0.003,
        replug_after_s: float | None = None,
        terminal_id: str = "29001234",
        name: str = "sim",
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._scenario = Scenario(scenario)
        self.brand = brand
        self.card_wait_s = card_wait_s
        self.card_timeout_s = card_timeout_s
        self.ecr_answer_timeout_s = ecr_answer_timeout_s
        self.byte_delay_s = byte_delay_s
        self.replug_after_s = replug_after_s
        self.terminal_id = terminal_id
        self.name = name
        #: called with the step name in the simulator's thread (must be quick)
        self.on_step: Callable[[str], None] | None = None
        self._link_path = Path(link) if link is not None else None
        self._master: int | None = None
        self._slave: int | None = None
        self._port = ""
        self._pulled_at: float | None = None
        self._journal: list[SimTransaction] = []
        self._received: list[str] = []
        self._trace = 0
        self._receipt = 0
        self._cards: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._card_event = threading.Event()
        self._reached = {step: threading.Event() for step in STEPS}
        self._hold_at: str | None = None
        self._release = threading.Event()
        self._stop = threading.Event()
        self._requests: queue.SimpleQueue[tuple[Callable[[], object], threading.Event]] = queue.SimpleQueue()
        self._silent_parser = p.FrameParser()
        self._link = p.FramedLink(self._read, self._write, ack_timeout_s=ack_timeout_s, inter_byte_s=1.0)
        self._thread: threading.Thread | None = None
        try:
            self._plug()
            self._thread = threading.Thread(target=self._serve, name=f"terminal-sim[{name}]", daemon=True)
            self._thread.start()
        except BaseException:
            self._unplug()
            raise

    # -- controls ----------------------------------------------------------------------

    @property
    def port(self) -> str:
        """The current pty slave path (changes on :meth:`replug`); ``""`` while pulled."""
        with self._lock:
            return self._port

    @property
    def link(self) -> Path | None:
        return self._link_path

    @property
    def scenario(self) -> Scenario:
        with self._lock:
            return self._scenario

    @scenario.setter
    def scenario(self, value: Scenario | str) -> None:
        with self._lock:
            self._scenario = Scenario(value)

    @property
    def transactions(self) -> list[SimTransaction]:
        """Copies of the journal, oldest first."""
        with self._lock:
            return [dataclasses.replace(t) for t in self._journal]

    @property
    def received_commands(self) -> list[str]:
        """Every command APDU received, as ``"06 01"``-style strings, oldest first
        (answers ``80 00``/``84 xx`` are left out)."""
        with self._lock:
            return list(self._received)

    @property
    def naks_received(self) -> int:
        """NAKs the ECR sent for the simulator's frames."""
        return self._link.naks_received

    def present_card(self, brand: str | None = None) -> None:
        """Present a card of ``brand`` (default: :attr:`brand`) to the next/current sale."""
        self._cards.put(brand or self.brand)
        self._card_event.set()

    def reached(self, step: str) -> threading.Event:
        """The event set when ``step`` (see :data:`STEPS`) is reached; cleared by
        :meth:`clear_steps`."""
        if step not in self._reached:
            raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
        return self._reached[step]

    def clear_steps(self) -> None:
        for event in self._reached.values():
            event.clear()

    def hold(self, step: str) -> None:
        """Pause the simulator the next time it reaches ``step``, until :meth:`release`."""
        self.reached(step)
        with self._lock:
            self._hold_at = step
        self._release.clear()

    def release(self) -> None:
        """Let a held simulator go on."""
        with self._lock:
            self._hold_at = None
        self._release.set()

    def pull_cable(self) -> None:
        """Close the pty (the driver's reads raise ``SerialException``); the symlink goes."""
        self._call(self._unplug_now)

    def replug(self) -> str:
        """A new pty; the symlink moves to it. Returns the new port."""
        self._call(self._plug_now)
        return self.port

    # -- thread plumbing ---------------------------------------------------------------

    def _call(self, fn: Callable[[], object]) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            fn()
            return
        done = threading.Event()
        self._requests.put((fn, done))
        if not done.wait(5.0):
            raise TerminalError(f"simulator {self.name} did not answer")

    def _service(self) -> None:
        while True:
            try:
                fn, done = self._requests.get_nowait()
            except queue.Empty:
                break
            try:
                fn()
            finally:
                done.set()
        if self._stop.is_set():
            raise _Stop()
        pulled = self._pulled_at
        if pulled is not None and self.replug_after_s is not None and time.monotonic() - pulled >= self.replug_after_s:
            self._plug_now()

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
        port = os.ttyname(slave)
        with self._lock:
            self._master, self._slave, self._port = master, slave, port
        self._pulled_at = None
        if self._link_path is not None:
            tmp = self._link_path.with_name(self._link_path.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(port)
            os.replace(tmp, self._link_path)
        self._link.reset()
        self._silent_parser.reset()
        logger.info("simulator %s: plugged in at %s", self.name, port)

    def _unplug(self) -> None:
        with self._lock:
            fds = (self._master, self._slave)
            self._master = self._slave = None
            self._port = ""
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()

    def _plug_now(self) -> None:
        self._unplug()
        self._plug()
        self._step("replugged")

    def _unplug_now(self) -> None:
        self._unplug()
        self._pulled_at = time.monotonic()
        logger.info("simulator %s: cable pulled", self.name)
        self._step("cable_pulled")

    def _read(self, timeout: float) -> bytes:
        self._service()
        master = self._master
        if master is None:
            time.sleep(min(timeout, 0.02))
            raise p.LinkLost("cable pulled")
        ready, _, _ = select.select([master], [], [], min(timeout, 0.05))
        if not ready:
            return b""
        try:
            return os.read(master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise p.LinkLost(str(exc)) from exc

    def _write(self, data: bytes) -> None:
        scenario = self.scenario
        if scenario is Scenario.SILENT:
            return  # a silent terminal sends nothing, not even a link ACK
        slow = scenario is Scenario.SLOW_BYTES
        chunks = [data[i : i + 1] for i in range(len(data))] if slow else [data]
        for chunk in chunks:
            if slow:
                time.sleep(self.byte_delay_s)
            master = self._master
            if master is None:
                raise p.LinkLost("cable pulled")
            view = memoryview(chunk)
            deadline = time.monotonic() + 1.0
            while view:
                try:
                    view = view[os.write(master, view) :]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise p.LinkLost("nobody reads the line") from None
                    select.select([], [master], [], 0.05)
                except OSError as exc:
                    raise p.LinkLost(str(exc)) from exc

    def _step(self, step: str) -> None:
        self._reached[step].set()
        callback = self.on_step
        if callback is not None:
            try:
                callback(step)
            except Exception:
                logger.exception("simulator %s: on_step(%r) failed", self.name, step)
        with self._lock:
            held = self._hold_at == step
        if held:
            logger.info("simulator %s: holding at %s", self.name, step)
            while not self._release.wait(0.02):
                self._service()

    # -- the PT ------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                try:
                    self._serve_one()
                except p.LinkError as exc:
                    if self._master is not None:
                        logger.info("simulator %s: link trouble: %s", self.name, exc)
                    self._link.reset()
        except _Stop:
            pass
        except Exception:
            logger.exception("simulator %s: crashed", self.name)

    def _serve_one(self) -> None:
        if self.scenario is Scenario.SILENT:
            for event in self._silent_parser.feed(self._read(0.05)):
                if event.kind == "frame" and event.crc_ok and len(event.apdu) >= 2:
                    self._note(p.Apdu(event.apdu[0], event.apdu[1]))
            return
        raw = self._link.receive(0.05)
        if raw is None:
            return
        try:
            apdu = p.parse_apdu(raw)
        except p.ZvtProtocolError as exc:
            logger.warning("simulator %s: %s", self.name, exc)
            return
        if apdu.command == p.ACK_APDU or apdu.cls == p.NACK_CLASS:
            return  # a late answer
        self._note(apdu)
        if self.scenario is Scenario.SILENT:
            return  # turned silent while this frame was arriving
        self._step("command_received")
        handler = {
            p.CMD_STATUS_ENQUIRY: self._status_enquiry,
            p.CMD_AUTHORISATION: self._authorisation,
            p.CMD_REFUND: self._refund,
            p.CMD_REVERSAL: self._reversal,
            p.CMD_REPEAT_RECEIPT: self._repeat_receipt,
            p.CMD_TOTALS: self._totals,
            p.CMD_END_OF_DAY: self._end_of_day,
        }.get(apdu.command)
        if apdu.command == p.CMD_ABORT_ECR:
            self._link.send(p.APDU_ACK)  # nothing running
        elif handler is None:
            self._link.send(p.encode_apdu(p.NACK_CLASS, 0x83))  # function not possible
        else:
            handler(apdu)

    def _note(self, apdu: p.Apdu) -> None:
        with self._lock:
            self._received.append(f"{apdu.cls:02X} {apdu.instr:02X}")

    def _send_ack(self) -> None:
        self._link.send(p.APDU_ACK)
        self._step("acknowledged")

    def _await_answer(self) -> bool:
        """Wait for the ECR's 80 00 00; a 06 B0 meanwhile is remembered. False on time-out."""
        deadline = time.monotonic() + self.ecr_answer_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            raw = self._link.receive(min(remaining, 0.05))
            if raw is None:
                continue
            try:
                apdu = p.parse_apdu(raw)
            except p.ZvtProtocolError:
                continue
            if apdu.command == p.ACK_APDU:
                return True
            if apdu.cls != p.NACK_CLASS:
                self._note(apdu)

    def _send_and_wait(self, apdu: bytes) -> bool:
        self._link.send(apdu)
        return self._await_answer()

    def _intermediate(self, code: int) -> None:
        self._send_and_wait(p.encode_apdu(*p.CMD_INTERMEDIATE, bytes([code])))
        self._step("intermediate_sent")

    def _abort(self, code: int) -> None:
        self._send_and_wait(p.encode_apdu(*p.CMD_ABORT_PT, bytes([code])))
        self._step("aborted")

    def _complete(self, data: bytes = b"") -> None:
        self._link.send(p.encode_apdu(*p.CMD_COMPLETION, data))
        self._step("completion_sent")
        self._await_answer()

    def _print(self, text: str) -> None:
        self._send_and_wait(p.encode_apdu(*p.CMD_PRINT_LINE, b"\x00" + text.encode("ascii")))

    def _status_enquiry(self, apdu: p.Apdu) -> None:
        self._send_ack()
        self._complete(p.llvar_encode(_SW_VERSION, 3) + b"\x00")  # terminal status 00: ready

    def _wait_card(self) -> str | None:
        """The brand presented, or None when the ECR aborted or the customer never came."""
        with contextlib.suppress(queue.Empty):
            return self._cards.get_nowait()
        if self.card_wait_s == 0:
            return self.brand
        self._step("waiting_for_card")
        limit = self.card_timeout_s if self.card_wait_s is None else self.card_wait_s
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                return self._cards.get_nowait()
            raw = self._link.receive(0.02)
            if raw is not None:
                apdu = p.parse_apdu(raw)
                if apdu.command != p.ACK_APDU:
                    self._note(apdu)
                if apdu.command == p.CMD_ABORT_ECR:
                    logger.info("simulator %s: aborted by the ECR", self.name)
                    return None
        return self.brand if self.card_wait_s is not None else None

    def _next_trace(self) -> str:
        self._trace = self._trace % 999_999 + 1
        return f"{self._trace:06d}"

    def _next_receipt(self) -> str:
        self._receipt = self._receipt % 9999 + 1
        return f"{self._receipt:04d}"

    def _book(self, tx: SimTransaction) -> SimTransaction:
        with self._lock:
            self._journal.append(tx)
        return tx

    def _status_fields(self, tx: SimTransaction, *, kind_word: str | None = None) -> bytes:
        fields: list[tuple[int, bytes]] = [
            (p.BMP_RESULT, bytes([tx.result_code])),
            (p.BMP_AMOUNT, p.bcd_encode(tx.amount, 6)),
            (p.BMP_TRACE, p.bcd_encode(tx.trace_no, 3)),
            *p.datetime_bmps(tx.at),
            (p.BMP_TID, p.bcd_encode(self.terminal_id, 4)),
        ]
        if tx.receipt_no:
            fields.append((p.BMP_RECEIPT, p.bcd_encode(tx.receipt_no, 2)))
        if tx.approval_no:
            fields.append((p.BMP_APPROVAL, tx.approval_no.encode("ascii").ljust(8)))
        if tx.masked_pan:
            fields.append((p.BMP_PAN, p.encode_pan(tx.masked_pan)))
        if tx.card_name:
            fields.append((p.BMP_CARD_NAME, tx.card_name.encode("ascii")))
        if kind_word:
            fields.append((p.BMP_TEXT, kind_word.encode("ascii")))
        fields.append((p.BMP_CURRENCY, p.bcd_encode(p.CURRENCY_JPY, 2)))
        return p.encode_apdu(*p.CMD_STATUS_INFO, p.encode_bmps(fields))

    def _pull_self(self) -> None:
        self._unplug_now()
        raise p.LinkLost("cable pulled by the scenario")

    def _authorisation(self, apdu: p.Apdu) -> None:
        amount = p.bcd_decode(p.parse_bmps(apdu.data).get(p.BMP_AMOUNT, b"\x00"))
        self._card_transaction(TxKind.SALE, amount, faults=True)

    def _refund(self, apdu: p.Apdu) -> None:
        amount = p.bcd_decode(p.parse_bmps(apdu.data, 3).get(p.BMP_AMOUNT, b"\x00"))
        self._card_transaction(TxKind.REFUND, amount, faults=False)

    def _card_transaction(self, kind: TxKind, amount: int, *, faults: bool) -> None:
        scenario = self.scenario if faults else Scenario.APPROVE
        if scenario is Scenario.CABLE_PULLED:
            self._pull_self()
        self._send_ack()
        self._intermediate(0x0A)  # insert card
        brand = self._wait_card()
        trace = self._next_trace()
        now = datetime.now().replace(microsecond=0)
        if brand is None:
            self._book(SimTransaction(kind, Outcome.ABORTED, amount, trace, now, result_code=p.RESULT_ABORTED))
            self._abort(p.RESULT_ABORTED)
            return
        self._intermediate(0x04)  # waiting for the host
        pan = "*" * 12 + f"{(self._trace * 7919) % 10_000:04d}"
        if scenario is Scenario.DECLINE:
            tx = self._book(SimTransaction(kind, Outcome.DECLINED, amount, trace, now, card_name=brand,
                                           masked_pan=pan, result_code=0x05))
            self._send_and_wait(self._status_fields(tx))
            self._abort(0x05)
            return
        tx = self._book(SimTransaction(
            kind, Outcome.APPROVED, amount, trace, now, receipt_no=self._next_receipt(),
            approval_no=f"{(self._trace * 104_729) % 10_000_000:07d}", card_name=brand, masked_pan=pan,
        ))
        status = self._status_fields(tx)
        try:
            self._link.send(status, corrupt_first=scenario is Scenario.CRC_CORRUPTION)
            self._step("status_info_sent")
            if scenario is Scenario.DUPLICATE_FRAMES:
                answered = self._await_answer()
                self._link.send(status)
                answered = self._await_answer() or answered
            else:
                answered = self._await_answer()
        except p.LinkError:
            answered = False
        if not answered:
            # PA00P015 "Status-Information": without the ECR's answer the PT reverses.
            with self._lock:
                tx.reversed_by_terminal = True
            logger.info("simulator %s: no answer to status information; payment reversed", self.name)
            self._step("reversed_by_terminal")
            return
        self._step("status_info_acked")
        if scenario is Scenario.DROP_AFTER_STATUS:
            self._pull_self()
        if scenario is Scenario.COMPLETION_LOST:
            return
        self._print(f"{kind.value.upper()} {amount} JPY")
        self._complete()

    def _reversal(self, apdu: p.Apdu) -> None:
        receipt = p.bcd_digits(p.parse_bmps(apdu.data, 3).get(p.BMP_RECEIPT, b"\x00\x00"))
        self._send_ack()
        with self._lock:
            booked = [t for t in self._journal if t.receipt_no]
            original = next((t for t in booked if t.receipt_no == receipt and t.kind is TxKind.SALE
                             and t.outcome is Outcome.APPROVED), None)
            is_last = bool(booked) and booked[-1] is original
        if original is None:
            self._abort(0xB5)  # reversal not possible
            return
        if original.voided or original.reversed_by_terminal:
            self._abort(0xB4)  # already reversed
            return
        if original.card_name in _NO_VOID or (original.card_name in _TRANSIT and not is_last):
            self._abort(0xB5)
            return
        tx = self._book(SimTransaction(
            TxKind.VOID, Outcome.APPROVED, original.amount, self._next_trace(), datetime.now().replace(microsecond=0),
            receipt_no=self._next_receipt(), approval_no=original.approval_no, card_name=original.card_name,
            masked_pan=original.masked_pan, original_receipt_no=original.receipt_no,
        ))
        with self._lock:
            original.voided = True
        self._send_and_wait(self._status_fields(tx))
        self._print(f"REVERSAL {tx.amount} JPY")
        self._complete()

    def _repeat_receipt(self, apdu: p.Apdu) -> None:
        self._send_ack()
        with self._lock:
            booked = [t for t in self._journal if t.receipt_no]
        if not booked:
            self._abort(0x83)  # function not possible: nothing to repeat
            return
        last = booked[-1]
        word = ("AUTO-REVERSAL" if last.reversed_by_terminal
                else {TxKind.SALE: "SALE", TxKind.VOID: "REVERSAL", TxKind.REFUND: "REFUND"}[last.kind])
        self._send_and_wait(self._status_fields(last, kind_word=word))
        self._print("COPY")
        self._complete()

    def _totals_apdu(self) -> bytes:
        slots: dict[str, list[int]] = {}
        total = 0
        with self._lock:
            # Sales still standing: not voided, not reversed by the terminal. Refunds are
            # not in these totals (BMP 60 amounts cannot be negative); see docs/terminal.md.
            live = [t for t in self._journal if t.receipt_no and not t.day_closed and t.kind is TxKind.SALE
                    and not t.voided and not t.reversed_by_terminal]
            receipts = [int(t.receipt_no) for t in self._journal if t.receipt_no and not t.day_closed]
        for t in live:
            slot = slots.setdefault(BRANDS.get(t.card_name or "", "other"), [0, 0])
            slot[0] += 1
            slot[1] += t.amount
            total += t.amount
        value = p.encode_totals(min(receipts, default=0), max(receipts, default=0),
                                {k: (c, a) for k, (c, a) in slots.items()})
        fields = [(p.BMP_RESULT, b"\x00"), (p.BMP_AMOUNT, p.bcd_encode(total, 6)), (p.BMP_TOTALS, value)]
        return p.encode_apdu(*p.CMD_STATUS_INFO, p.encode_bmps(fields))

    def _totals(self, apdu: p.Apdu) -> None:
        self._send_ack()
        self._send_and_wait(self._totals_apdu())
        self._complete()

    def _end_of_day(self, apdu: p.Apdu) -> None:
        self._send_ack()
        self._send_and_wait(self._totals_apdu())
        self._close_day()
        self._complete()

    def _close_day(self) -> None:
        # Like many terminals, slip numbers start again at 0001 after the day
        # close; trace numbers go on.
        with self._lock:
            for t in self._journal:
                t.day_closed = True
            self._receipt = 0

    def end_of_day(self) -> None:
        """Close the day at the terminal itself (staff press its day-close key):
        the journal is closed and slip numbers restart at 0001."""
        self._close_day()

    # -- closing -----------------------------------------------------------------------

    def _close(self) -> None:
        self._stop.set()
        self._release.set()
        if self._thread is not None:
            self._thread.join(5.0)
            if self._thread.is_alive():
                logger.error("simulator %s: thread did not stop", self.name)
        self._unplug()
        logger.info("simulator %s: closed", self.name)


def main(argv: list[str] | None = None) -> int:
    """Run one simulator until SIGTERM/SIGINT; print the pty path on stdout."""
    parser = argparse.ArgumentParser(prog="python -m drivers.terminal.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--link", required=True, help="symlink to keep pointing at the pty")
    parser.add_argument("--scenario", default="approve", choices=[s.value for s in Scenario])
    parser.add_argument("--brand", default="VISA", help="card name of a sale (default VISA)")
    parser.add_argument("--card-wait", type=float, default=0.0, help="seconds the customer takes (default 0)")
    parser.add_argument("--answer-timeout", type=float, default=2.0, help="PT's wait for the ECR's 80 00 00")
    parser.add_argument("--replug-after", type=float, default=None, help="plug back in after a scenario pulled it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with SimTerminal(link=args.link, scenario=args.scenario, brand=args.brand, card_wait_s=args.card_wait,
                     ecr_answer_timeout_s=args.answer_timeout, replug_after_s=args.replug_after) as sim:
        print(sim.port, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
