"""The ZVT ECR protocol without I/O: frames, CRC, APDUs, BMPs, and the link layer
(ACK/NAK and retries) with the reading and writing passed in.

Both sides use this module: the ECR driver (:mod:`drivers.terminal.zvt`) and the payment
terminal simulator (:mod:`drivers.terminal.sim`).

Spec references: "PA00P016" is *ECR-Interface ZVT-Protocol, Transport-Protocol and
Application-Protocol* (serial framing, timers, TCP); "PA00P015" is *ZVT-Protocol,
Commands, Bitmaps, Error-Messages* (terminalhersteller.de). Section numbers are given
where we could check them; otherwise the command's name in the spec.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from drivers.terminal.base import TerminalError

__all__ = [
    "ACK",
    "DLE",
    "ETX",
    "NAK",
    "STX",
    "Apdu",
    "FrameEvent",
    "FrameParser",
    "FramedLink",
    "LinkCorrupt",
    "LinkError",
    "LinkNak",
    "LinkTimeout",
    "ZvtProtocolError",
    "apdu_length",
    "bcd_decode",
    "bcd_digits",
    "bcd_encode",
    "bmp_datetime",
    "crc16",
    "decode_frame",
    "decode_pan",
    "dle_escape",
    "dle_unescape",
    "encode_apdu",
    "encode_bmps",
    "encode_frame",
    "encode_pan",
    "llvar_decode",
    "llvar_encode",
    "parse_apdu",
    "parse_bmps",
]

# --- transport: PA00P016 §3 (serial interface, RS232) ---------------------------------

#: Data Link Escape; doubled inside a frame (PA00P016 §3, "Transport-protocol").
DLE = 0x10
#: Start of text, after DLE: frame start.
STX = 0x02
#: End of text, after DLE: frame end; the CRC follows.
ETX = 0x03
#: Positive link-level acknowledgement of a frame.
ACK = 0x06
#: Negative link-level acknowledgement: the sender repeats the frame.
NAK = 0x15

#: How often a frame is sent before the sender gives up: the first try and up to 3
#: repeats after a NAK or a missing ACK (PA00P016 §3, "repeat up to 3 times").
SEND_REPEATS = 3

# CRC-16 CCITT, reflected polynomial 0x8408, initial value 0 (PA00P016 §3, "CRC").
_CRC_POLY = 0x8408


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


class ZvtProtocolError(TerminalError):
    """Bytes that are not valid ZVT (bad frame, bad CRC, bad length, unknown BMP)."""


def crc16(data: bytes) -> int:
    """CRC-16 CCITT reflected (poly 0x8408, init 0) of ``data``.

    For a frame, ``data`` is the *unescaped* APDU followed by the ETX byte.
    """
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def dle_escape(data: bytes) -> bytes:
    """Double every DLE byte (DLE stuffing)."""
    return data.replace(bytes([DLE]), bytes([DLE, DLE]))


def dle_unescape(data: bytes) -> bytes:
    """Undo :func:`dle_escape`.

    Raises:
        ZvtProtocolError: a single DLE (not followed by another DLE).
    """
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == DLE:
            if i + 1 >= len(data) or data[i + 1] != DLE:
                raise ZvtProtocolError(f"lone DLE at offset {i}")
            i += 1
        out.append(byte)
        i += 1
    return bytes(out)


def encode_frame(apdu: bytes, *, corrupt_crc: bool = False) -> bytes:
    """``DLE STX | APDU, DLEs doubled | DLE ETX | CRC low | CRC high``.

    ``corrupt_crc`` flips the CRC (for the simulator's fault scenarios).
    """
    crc = crc16(apdu + bytes([ETX]))
    if corrupt_crc:
        crc ^= 0xFFFF
    return bytes([DLE, STX]) + dle_escape(apdu) + bytes([DLE, ETX, crc & 0xFF, crc >> 8])


def decode_frame(raw: bytes) -> bytes:
    """Return the APDU of one complete frame.

    Raises:
        ZvtProtocolError: not exactly one well-formed frame, or a wrong CRC.
    """
    events = FrameParser().feed(raw)
    if len(events) != 1 or events[0].kind != "frame":
        raise ZvtProtocolError(f"not one frame: {raw.hex(' ')}")
    if not events[0].crc_ok:
        raise ZvtProtocolError(f"bad CRC in frame {raw.hex(' ')}")
    return events[0].apdu


@dataclass(frozen=True)
class FrameEvent:
    """What :class:`FrameParser` saw: ``kind`` is ``"ack"``, ``"nak"``, ``"frame"`` (with
    ``apdu`` and ``crc_ok``) or ``"noise"`` (a stray byte outside a frame, or a frame
    broken by a lone DLE: then ``crc_ok`` is False and the receiver NAKs it)."""

    kind: str
    apdu: bytes = b""
    crc_ok: bool = False


class FrameParser:
    """Incremental parser of the serial byte stream: :meth:`feed` bytes, get events."""

    _IDLE, _IDLE_DLE, _DATA, _DATA_DLE, _CRC_LO, _CRC_HI = range(6)

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget a partly received frame."""
        self._state = self._IDLE
        self._apdu = bytearray()
        self._crc_lo = 0

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended."""
        return self._state != self._IDLE

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        for byte in data:
            state = self._state
            if state == self._IDLE:
                if byte == ACK:
                    events.append(FrameEvent("ack"))
                elif byte == NAK:
                    events.append(FrameEvent("nak"))
                elif byte == DLE:
                    self._state = self._IDLE_DLE
                else:
                    events.append(FrameEvent("noise", bytes([byte])))
            elif state == self._IDLE_DLE:
                if byte == STX:
                    self._apdu = bytearray()
                    self._state = self._DATA
                else:
                    self._state = self._IDLE
                    events.append(FrameEvent("noise", bytes([DLE, byte])))
            elif state == self._DATA:
                if byte == DLE:
                    self._state = self._DATA_DLE
                else:
                    self._apdu.append(byte)
            elif state == self._DATA_DLE:
                if byte == DLE:
                    self._apdu.append(DLE)
                    self._state = self._DATA
                elif byte == ETX:
                    self._state = self._CRC_LO
                elif byte == STX:  # a new frame started: the old one was cut off
                    events.append(FrameEvent("noise", bytes(self._apdu)))
                    self._apdu = bytearray()
                    self._state = self._DATA
                else:
                    events.append(FrameEvent("noise", bytes(self._apdu)))
                    self.reset()
            elif state == self._CRC_LO:
                self._crc_lo = byte
                self._state = self._CRC_HI
            else:  # _CRC_HI
                apdu = bytes(self._apdu)
                ok = crc16(apdu + bytes([ETX])) == self._crc_lo | (byte << 8)
                events.append(FrameEvent("frame", apdu, ok))
                self.reset()
        return events


# --- APDU: PA00P015 §1 / PA00P016 "APDU" -------------------------------------------------

#: A length byte of FF means a 2-byte little-endian length follows ("extended length").
EXTENDED_LENGTH = 0xFF


@dataclass(frozen=True)
class Apdu:
    """Control field (class, instruction) and data of one APDU."""

    cls: int
    instr: int
    data: bytes = b""

    @property
    def command(self) -> tuple[int, int]:
        return (self.cls, self.instr)

    def encode(self) -> bytes:
        return encode_apdu(self.cls, self.instr, self.data)

    def __repr__(self) -> str:
        return f"Apdu({self.cls:02X} {self.instr:02X}, {len(self.data)} bytes)"


def encode_apdu(cls: int, instr: int, data: bytes = b"") -> bytes:
    """``class instr len data``; ``len`` is ``FF lo hi`` from 255 bytes on."""
    if len(data) > 0xFFFF:
        raise ValueError(f"APDU data too long: {len(data)} bytes")
    if len(data) < EXTENDED_LENGTH:
        head = bytes([cls, instr, len(data)])
    else:
        head = bytes([cls, instr, EXTENDED_LENGTH, len(data) & 0xFF, len(data) >> 8])
    return head + data


def apdu_length(buf: bytes) -> int | None:
    """Total length of the APDU at the start of ``buf``, or ``None`` if the header is not
    complete yet (for reading APDUs from a stream, e.g. TCP)."""
    if len(buf) < 3:
        return None
    if buf[2] != EXTENDED_LENGTH:
        return 3 + buf[2]
    if len(buf) < 5:
        return None
    return 5 + (buf[3] | buf[4] << 8)


def parse_apdu(raw: bytes) -> Apdu:
    """Parse exactly one APDU.

    Raises:
        ZvtProtocolError: the length field does not match.
    """
    total = apdu_length(raw)
    if total is None or total != len(raw):
        raise ZvtProtocolError(f"APDU length mismatch: {raw[:8].hex(' ')}... ({len(raw)} bytes)")
    offset = 5 if raw[2] == EXTENDED_LENGTH else 3
    return Apdu(raw[0], raw[1], bytes(raw[offset:]))


# --- data encodings: PA00P015 "Summary of utilised BMPs" -------------------------------


def bcd_encode(value: int | str, length: int) -> bytes:
    """``value`` as packed BCD in ``length`` bytes, left-padded with zeros.

    Raises:
        ValueError: negative, non-numeric, or too many digits.
    """
    digits = str(value)
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"BCD needs decimal digits, got {value!r}")
    if len(digits) > 2 * length:
        raise ValueError(f"{value!r} does not fit in {length} BCD bytes")
    return bytes.fromhex(digits.zfill(2 * length))


def bcd_digits(data: bytes) -> str:
    """The digits of packed BCD ``data`` as a string (leading zeros kept).

    Raises:
        ZvtProtocolError: a nibble is not 0-9.
    """
    digits = data.hex()
    if not digits.isdigit():
        raise ZvtProtocolError(f"not BCD: {data.hex(' ')}")
    return digits


def bcd_decode(data: bytes) -> int:
    """Packed BCD ``data`` as an int."""
    return int(bcd_digits(data) or "0")


def llvar_encode(data: bytes, digits: int = 2) -> bytes:
    """``data`` with its length as ``digits`` bytes ``Fx`` (LLVAR: 2, LLLVAR: 3)."""
    if len(data) >= 10**digits:
        raise ValueError(f"{len(data)} bytes do not fit an L{'L' * (digits - 1)}VAR")
    return bytes(0xF0 | int(ch) for ch in str(len(data)).zfill(digits)) + data


def llvar_decode(buf: bytes, pos: int = 0, digits: int = 2) -> tuple[bytes, int]:
    """Read an LLVAR/LLLVAR at ``buf[pos:]``; return ``(data, position after it)``.

    Raises:
        ZvtProtocolError: bad length bytes or not enough data.
    """
    head = buf[pos : pos + digits]
    if len(head) < digits or any(b & 0xF0 != 0xF0 or b & 0x0F > 9 for b in head):
        raise ZvtProtocolError(f"bad LLVAR length at {pos}: {head.hex(' ')}")
    length = int("".join(str(b & 0x0F) for b in head))
    start = pos + digits
    if start + length > len(buf):
        raise ZvtProtocolError(f"LLVAR at {pos} wants {length} bytes, {len(buf) - start} left")
    return bytes(buf[start : start + length]), start + length


def _tlv_length(buf: bytes, pos: int) -> tuple[int, int]:
    # BER length of the TLV container (BMP 06): <80: 1 byte; 81 xx; 82 xx xx (big endian).
    if pos >= len(buf):
        raise ZvtProtocolError("TLV length missing")
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count not in (1, 2) or pos + 1 + count > len(buf):
        raise ZvtProtocolError(f"bad TLV length at {pos}")
    return int.from_bytes(buf[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


_LL, _LLL, _TLV = "LL", "LLL", "TLV"

#: Length of each BMP: a byte count, or LLVAR/LLLVAR/TLV (PA00P015 "Summary of utilised
#: BMPs"). A BMP not in this table cannot be skipped, so parsing stops with an error.
BMP_FORMATS: dict[int, int | str] = {
    0x01: 1,  # timeout
    0x02: 1,  # max. status infos
    0x03: 1,  # service byte
    0x04: 6,  # amount, BCD
    0x05: 1,  # pump no.
    0x06: _TLV,  # TLV container
    0x0B: 3,  # trace number, BCD
    0x0C: 3,  # time HHMMSS, BCD
    0x0D: 2,  # date MMDD, BCD
    0x0E: 2,  # expiry date YYMM, BCD
    0x17: 2,  # card sequence number, BCD
    0x19: 1,  # payment type / status byte
    0x22: _LL,  # PAN / EF_ID, BCD, 'E' = masked digit, 'F' = padding
    0x23: _LL,  # track 2
    0x24: _LLL,  # track 3
    0x27: 1,  # result code
    0x29: 4,  # terminal id, BCD
    0x2A: 15,  # VU number, ASCII
    0x2D: _LL,  # track 1
    0x2E: _LLL,  # synchronous chip data
    0x37: 3,  # trace number of the original transaction, BCD
    0x3A: 2,  # CVV
    0x3B: 8,  # AID / authorisation attribute (approval number), ASCII
    0x3C: _LLL,  # additional data / additional text
    0x3D: 3,  # password, BCD
    0x49: 2,  # currency code, BCD (JPY = 0392)
    0x60: _LLL,  # individual totals
    0x87: 2,  # receipt number, BCD
    0x88: 3,  # turnover record number, BCD
    0x8A: 1,  # card type (ZVT card number)
    0x8B: _LL,  # card name, ASCII
    0x8C: 1,  # card type id of the network operator
    0x92: _LLL,  # additional data ec-Cash chip offline
    0x9A: _LLL,  # Geldkarte records
    0xA0: 1,  # result code AS
    0xA7: _LL,  # chip data EF_ID
    0xAA: 3,  # date YYMMDD, BCD
    0xAF: _LLL,  # EF_Info
    0xBA: 5,  # AID parameter
    **{b: 1 for b in (0xD0, 0xD2, 0xD3, 0xE0, 0xE9, 0xEA, 0xF0, 0xF9, 0xFA, 0xFB, 0xFC)},
    0xD1: _LL,
    0xEB: 8,
    **{b: _LL for b in range(0xE1, 0xE9)},
    **{b: _LL for b in range(0xF1, 0xF9)},
}

# BMP numbers we read or write (PA00P015 "Summary of utilised BMPs").
BMP_TLV = 0x06
BMP_AMOUNT = 0x04
BMP_TRACE = 0x0B
BMP_TIME = 0x0C
BMP_DATE = 0x0D
BMP_PAN = 0x22
BMP_RESULT = 0x27
BMP_TID = 0x29
BMP_APPROVAL = 0x3B
BMP_TEXT = 0x3C
BMP_CURRENCY = 0x49
BMP_TOTALS = 0x60
BMP_RECEIPT = 0x87
BMP_CARD_TYPE = 0x8A
BMP_CARD_NAME = 0x8B
BMP_DATE_YMD = 0xAA

#: ISO 4217 numeric code of the yen, as BMP 49 carries it.
CURRENCY_JPY = 392


def encode_bmps(fields: list[tuple[int, bytes]]) -> bytes:
    """Encode ``[(bmp, value)]`` in order; LLVAR/LLLVAR prefixes are added here.

    Raises:
        ValueError: unknown BMP, or a fixed-length value of the wrong length.
    """
    out = bytearray()
    for bmp, value in fields:
        fmt = BMP_FORMATS.get(bmp)
        if fmt is None:
            raise ValueError(f"unknown BMP {bmp:02X}")
        out.append(bmp)
        if fmt == _LL:
            out += llvar_encode(value, 2)
        elif fmt == _LLL:
            out += llvar_encode(value, 3)
        elif fmt == _TLV:
            if len(value) >= 0x80:
                raise ValueError("long TLV containers are not needed here")
            out += bytes([len(value)]) + value
        else:
            if len(value) != fmt:
                raise ValueError(f"BMP {bmp:02X} needs {fmt} bytes, got {len(value)}")
            out += value
    return bytes(out)


def parse_bmps(data: bytes, pos: int = 0) -> dict[int, bytes]:
    """Parse a sequence of BMPs from ``data[pos:]`` into ``{bmp: value}`` (LL prefixes
    removed; a repeated BMP keeps its last value).

    Raises:
        ZvtProtocolError: an unknown BMP or a truncated value.
    """
    fields: dict[int, bytes] = {}
    while pos < len(data):
        bmp = data[pos]
        fmt = BMP_FORMATS.get(bmp)
        pos += 1
        if fmt is None:
            raise ZvtProtocolError(f"unknown BMP {bmp:02X} at offset {pos - 1}")
        if fmt == _LL:
            value, pos = llvar_decode(data, pos, 2)
        elif fmt == _LLL:
            value, pos = llvar_decode(data, pos, 3)
        elif fmt == _TLV:
            length, pos = _tlv_length(data, pos)
            value = bytes(data[pos : pos + length])
            if len(value) != length:
                raise ZvtProtocolError("truncated TLV container")
            pos += length
        else:
            value = bytes(data[pos : pos + fmt])
            if len(value) != fmt:
                raise ZvtProtocolError(f"truncated BMP {bmp:02X}")
            pos += fmt
        fields[bmp] = value
    return fields


def encode_pan(masked: str) -> bytes:
    """A card number as BMP 22 wants it (without the LL prefix): BCD, ``*`` becomes the
    masked-digit nibble ``E``, an odd count is padded with ``F``."""
    nibbles = "".join("E" if ch == "*" else ch for ch in masked)
    if not all(ch.isdigit() or ch == "E" for ch in nibbles):
        raise ValueError("a PAN has digits and '*' only")
    if len(nibbles) % 2:
        nibbles += "F"
    return bytes.fromhex(nibbles)


def decode_pan(data: bytes) -> str:
    """BMP 22 value to text: ``E`` nibbles become ``*``, ``F`` padding is dropped."""
    out = []
    for ch in data.hex().upper():
        if ch == "E":
            out.append("*")
        elif ch.isdigit():
            out.append(ch)
        elif ch != "F":
            raise ZvtProtocolError(f"bad PAN nibble {ch}")
    return "".join(out)


def bmp_datetime(fields: dict[int, bytes], *, now: datetime | None = None) -> datetime | None:
    """The date and time of BMP 0C (HHMMSS) with BMP AA (YYMMDD) or BMP 0D (MMDD).

    BMP 0D has no year: we take the year of ``now`` and, if that puts the date more than
    a day in the future, the year before (a transaction near New Year's Eve).
    """
    if BMP_TIME not in fields:
        return None
    now = now or datetime.now()
    try:
        hms = bcd_digits(fields[BMP_TIME])
        hour, minute, second = int(hms[0:2]), int(hms[2:4]), int(hms[4:6])
        if BMP_DATE_YMD in fields:
            ymd = bcd_digits(fields[BMP_DATE_YMD])
            return datetime(2000 + int(ymd[0:2]), int(ymd[2:4]), int(ymd[4:6]), hour, minute, second)
        if BMP_DATE not in fields:
            return datetime(now.year, now.month, now.day, hour, minute, second)
        md = bcd_digits(fields[BMP_DATE])
        at = datetime(now.year, int(md[0:2]), int(md[2:4]), hour, minute, second)
        if (at - now).days >= 1:
            at = at.replace(year=now.year - 1)
        return at
    except (ValueError, ZvtProtocolError):
        return None


def datetime_bmps(at: datetime) -> list[tuple[int, bytes]]:
    """BMP 0C and 0D for ``at``."""
    return [(BMP_TIME, bcd_encode(at.strftime("%H%M%S"), 3)), (BMP_DATE, bcd_encode(at.strftime("%m%d"), 2))]


# --- commands (PA00P015 ch. 2: ECR → PT; ch. 3: PT → ECR) ------------------------------

#: Authorisation (PA00P015 §2.1): ``04 <amount> [49 <currency>]``.
CMD_AUTHORISATION = (0x06, 0x01)
#: Completion: the PT gives the master rights back; the command succeeded.
CMD_COMPLETION = (0x06, 0x0F)
#: Send Turnover Totals: totals without closing the day.
CMD_TOTALS = (0x06, 0x10)
#: Abort, PT → ECR: ``06 1E <result code>``; the command failed.
CMD_ABORT_PT = (0x06, 0x1E)
#: Repeat Receipt: the PT repeats the last transaction's status information and receipt.
CMD_REPEAT_RECEIPT = (0x06, 0x20)
#: Reversal (取消): ``<password> 87 <receipt no>``.
CMD_REVERSAL = (0x06, 0x30)
#: Refund (返品): ``<password> 04 <amount> [49 <currency>]``.
CMD_REFUND = (0x06, 0x31)
#: End-of-Day (PA00P015 §2.16): closes the day. Not used by the driver's day_totals().
CMD_END_OF_DAY = (0x06, 0x50)
#: Abort, ECR → PT: stop the running command.
CMD_ABORT_ECR = (0x06, 0xB0)
#: Print Line (PA00P015 §3.5) and Print Text-Block: receipt text for the ECR's printer.
CMD_PRINT_LINE = (0x06, 0xD1)
CMD_PRINT_BLOCK = (0x06, 0xD3)
#: Status-Information: the transaction's result and data (the ECR must answer 80 00 00;
#: if it never does, the PT reverses the payment itself).
CMD_STATUS_INFO = (0x04, 0x0F)
#: Intermediate Status-Information: ``04 FF <status>`` ("insert card", ...).
CMD_INTERMEDIATE = (0x04, 0xFF)
#: Status-Enquiry (PA00P015 §2.55): is the PT there and ready?
CMD_STATUS_ENQUIRY = (0x05, 0x01)
#: Positive acknowledgement ``80 00 00``; negative ``84 xx 00``.
ACK_APDU = (0x80, 0x00)
NACK_CLASS = 0x84

#: The application-level acknowledgement APDU ``80 00 00``.
APDU_ACK = encode_apdu(0x80, 0x00)


def password_bytes(password: str) -> bytes:
    """The 6-digit ZVT password as 3 BCD bytes.

    Raises:
        ValueError: not 6 digits.
    """
    if len(password) != 6 or not password.isdigit():
        raise ValueError("the ZVT password is 6 digits")
    return bcd_encode(password, 3)


def cmd_status_enquiry(password: str) -> bytes:
    return encode_apdu(*CMD_STATUS_ENQUIRY, password_bytes(password))


def cmd_authorisation(amount: int, currency: int | None = CURRENCY_JPY) -> bytes:
    fields = [(BMP_AMOUNT, bcd_encode(amount, 6))]
    if currency is not None:
        fields.append((BMP_CURRENCY, bcd_encode(currency, 2)))
    return encode_apdu(*CMD_AUTHORISATION, encode_bmps(fields))


def cmd_reversal(password: str, receipt_no: int) -> bytes:
    return encode_apdu(*CMD_REVERSAL, password_bytes(password) + encode_bmps([(BMP_RECEIPT, bcd_encode(receipt_no, 2))]))


def cmd_refund(password: str, amount: int, currency: int | None = CURRENCY_JPY) -> bytes:
    fields = [(BMP_AMOUNT, bcd_encode(amount, 6))]
    if currency is not None:
        fields.append((BMP_CURRENCY, bcd_encode(currency, 2)))
    return encode_apdu(*CMD_REFUND, password_bytes(password) + encode_bmps(fields))


def cmd_repeat_receipt(password: str) -> bytes:
    return encode_apdu(*CMD_REPEAT_RECEIPT, password_bytes(password))


def cmd_totals(password: str) -> bytes:
    return encode_apdu(*CMD_TOTALS, password_bytes(password))


def cmd_abort() -> bytes:
    return encode_apdu(*CMD_ABORT_ECR)


#: The card slots of BMP 60 "individual totals", in order, after the receipt-number
#: range (2 + 2 bytes BCD); each slot is a 1-byte binary count and a 6-byte BCD amount.
#: The spec's names are European (girocard, Eurocard ...); Japanese e-money and QR brands
#: fall into the last slot, "other".
TOTALS_SLOTS = ("girocard", "JCB", "Mastercard", "AMEX", "VISA", "Diners", "other")


def encode_totals(receipt_from: int, receipt_to: int, slots: dict[str, tuple[int, int]]) -> bytes:
    """BMP 60 value (without the LLL prefix) for ``{slot name: (count, amount)}``."""
    out = bytearray(bcd_encode(receipt_from, 2) + bcd_encode(receipt_to, 2))
    for name in TOTALS_SLOTS:
        count, amount = slots.get(name, (0, 0))
        out.append(min(count, 255))
        out += bcd_encode(max(amount, 0), 6)
    return bytes(out)


def decode_totals(value: bytes) -> dict[str, tuple[int, int]]:
    """``{slot name: (count, amount)}`` of a BMP 60 value; empty slots left out."""
    need = 4 + 7 * len(TOTALS_SLOTS)
    if len(value) < need:
        raise ZvtProtocolError(f"BMP 60 needs {need} bytes, got {len(value)}")
    out = {}
    pos = 4
    for name in TOTALS_SLOTS:
        count, amount = value[pos], bcd_decode(value[pos + 1 : pos + 7])
        pos += 7
        if count or amount:
            out[name] = (count, amount)
    return out


#: Intermediate status codes (04 FF, PA00P015 "Intermediate status") as the short words
#: handed to ``on_status``. Codes 0x40 + n mean "n, and please remove the card".
INTERMEDIATE_STATUS: dict[int, str] = {
    0x00: "confirm_amount",
    0x01: "watch_pin_pad",
    0x02: "watch_pin_pad",
    0x03: "not_accepted",
    0x04: "waiting_for_host",
    0x05: "auto_reversal",
    0x06: "post_booking",
    0x07: "card_not_admitted",
    0x08: "card_unknown",
    0x09: "card_expired",
    0x0A: "insert_card",
    0x0B: "remove_card",
    0x0C: "card_not_readable",
    0x0D: "processing_error",
    0x0E: "please_wait",
    0x0F: "end_of_day",
    0x10: "invalid_card",
    0x11: "balance_display",
    0x12: "system_malfunction",
    0x13: "payment_not_possible",
    0x14: "credit_not_sufficient",
    0x15: "incorrect_pin",
    0x16: "limit_not_sufficient",
    0x17: "please_wait",
    0x18: "pin_try_limit_exceeded",
    0x19: "card_data_incorrect",
    0x1A: "service_mode",
    0x1D: "declined",
    0xC8: "waiting_for_cashier",
    0xE0: "select_application",
    0xF1: "offline",
    0xF2: "online",
}


def intermediate_word(code: int) -> str:
    """The ``on_status`` word of a ``04 FF`` status code."""
    if code in INTERMEDIATE_STATUS:
        return INTERMEDIATE_STATUS[code]
    if 0x41 <= code <= 0x67 and code - 0x40 in INTERMEDIATE_STATUS:
        return INTERMEDIATE_STATUS[code - 0x40]
    return f"status_{code:02x}"


#: Result codes (BMP 27 / 06 1E; PA00P015 "Error-Messages"), a few as text for logs.
#: 01 ... 63 are the authorisation host's own codes (a decline).
RESULT_TEXTS: dict[int, str] = {
    0x00: "no error",
    0x64: "card not readable",
    0x6C: "abort via time-out or abort key",
    0x6F: "wrong currency",
    0x78: "card expired",
    0x7A: "card unknown",
    0x83: "function not possible",
    0x9A: "ZVT protocol error",
    0x9C: "please wait",
    0xA0: "receiver not ready",
    0xB4: "already reversed",
    0xB5: "reversal not possible",
    0xC3: "maximum amount exceeded",
    0xCC: "printer not ready",
    0xFF: "system error",
}
#: 06 1E result code for an abort by time-out or the abort key (and our 06 B0).
RESULT_ABORTED = 0x6C
#: Result codes that mean "stopped", not "the card/host said no".
ABORT_RESULTS = frozenset({RESULT_ABORTED, 0x9A, 0x9C, 0xA0, 0xCC, 0xFF})

#: Terminal status codes (06 0F after 05 01; PA00P015 "Terminal status codes").
TERMINAL_STATUS_TEXTS: dict[int, str] = {
    0x00: "PT ready",
    0x51: "initialisation required",
    0x62: "date/time incorrect",
    0x9C: "please wait",
    0xB1: "memory full",
    0xB2: "merchant journal full",
    0xCC: "printer not ready",
    0xDC: "card inserted",
    0xDF: "out of order",
    0xE1: "card not completely removed",
}


def result_text(code: int | None) -> str:
    if code is None:
        return "no result code"
    if 0x01 <= code <= 0x63:
        return f"declined by the card issuer (code {code})"
    return f"{RESULT_TEXTS.get(code, 'error')} (0x{code:02X})"


# --- link layer with injected I/O ---------------------------------------------------------


class LinkError(TerminalError):
    """Base of the link-layer failures below."""


class LinkLost(LinkError):
    """The port or connection is gone (raised by the read/write callables)."""


class LinkTimeout(LinkError):
    """No ACK for a frame, even after the repeats: it may or may not have arrived."""


class LinkNak(LinkError):
    """The peer NAKed the frame every time: it certainly did not take it."""


class LinkCorrupt(LinkError):
    """The peer's frames kept arriving broken, even after NAKs."""


ReadFn = Callable[[float], bytes]
WriteFn = Callable[[bytes], None]


class FramedLink:
    """The serial link layer (PA00P016 §3): frames, ACK/NAK, repeats, inter-byte time-out.

    It does no I/O of its own: ``read(timeout_s)`` returns the bytes that arrived within
    the time-out (``b""`` if none) and ``write(data)`` sends; both raise
    :class:`LinkLost` (or any exception, which passes through) when the line is gone.

    Not thread-safe: one thread uses a link.

    Args:
        read, write: see above.
        ack_timeout_s: how long to wait for ACK/NAK after a frame (T1 in our docs).
        inter_byte_s: a frame whose next byte takes longer is dropped and NAKed.
        repeats: how often a frame is sent again after NAK or no ACK.
        corrupt_limit: how many broken frames in a row :meth:`receive` NAKs before it
            raises :class:`LinkCorrupt`.
    """

    def __init__(
        self,
        read: ReadFn,
        write: WriteFn,
        *,
        ack_timeout_s: float = 2.0,
        inter_byte_s: float = 0.5,
        repeats: int = SEND_REPEATS,
        corrupt_limit: int = SEND_REPEATS + 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._write = write
        self.ack_timeout_s = ack_timeout_s
        self.inter_byte_s = inter_byte_s
        self.repeats = repeats
        self.corrupt_limit = corrupt_limit
        self._clock = clock
        self._parser = FrameParser()
        self._pending: list[bytes] = []  # APDUs that arrived while we waited for an ACK
        self._events: list[FrameEvent] = []
        self._last_byte = 0.0
        self._corrupt = 0
        #: counters for tests and health: frames NAKed by us, NAKs received, repeats sent
        self.naks_sent = 0
        self.naks_received = 0
        self.repeats_sent = 0

    def reset(self) -> None:
        """Forget partial frames and queued APDUs (before a new command)."""
        self._parser.reset()
        self._pending.clear()
        self._events.clear()
        self._corrupt = 0

    def _pull(self, timeout: float) -> None:
        data = self._read(max(timeout, 0.0))
        now = self._clock()
        if data:
            self._last_byte = now
            self._events.extend(self._parser.feed(data))
        elif self._parser.in_frame and now - self._last_byte > self.inter_byte_s:
            # A frame stopped half-way: drop it and ask for it again.
            self._parser.reset()
            self._events.append(FrameEvent("frame", b"", crc_ok=False))

    def _take_frame(self, event: FrameEvent) -> None:
        # Handle a frame or broken frame seen at any time: ACK good ones, NAK bad ones.
        if event.kind == "frame" and event.crc_ok:
            self._corrupt = 0
            self._write(bytes([ACK]))
            self._pending.append(event.apdu)
            return
        if event.kind == "frame" or (event.kind == "noise" and event.apdu):
            self._corrupt += 1
            self.naks_sent += 1
            self._write(bytes([NAK]))
            if self._corrupt >= self.corrupt_limit:
                self._corrupt = 0
                raise LinkCorrupt(f"{self.corrupt_limit} broken frames in a row")

    def send(self, apdu: bytes, *, corrupt_first: bool = False) -> None:
        """Send ``apdu`` as a frame and wait for its ACK, repeating after NAK or silence.

        Raises:
            LinkNak: NAKed every time (the peer did not take it).
            LinkTimeout: no ACK after the last repeat (fate unknown).
            LinkCorrupt: the peer sent broken frames meanwhile.
        """
        naked = 0
        for attempt in range(self.repeats + 1):
            if attempt:
                self.repeats_sent += 1
            self._write(encode_frame(apdu, corrupt_crc=corrupt_first and attempt == 0))
            deadline = self._clock() + self.ack_timeout_s
            answer = None
            while answer is None:
                while self._events and answer is None:
                    event = self._events.pop(0)
                    if event.kind in ("ack", "nak"):
                        answer = event.kind
                    else:
                        self._take_frame(event)
                if answer is not None:
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._pull(min(remaining, 0.05))
            if answer == "ack":
                return
            if answer == "nak":
                naked += 1
                self.naks_received += 1
        if naked == self.repeats + 1:
            raise LinkNak(f"frame NAKed {naked} times")
        raise LinkTimeout(f"no ACK after {self.repeats + 1} tries")

    def receive(self, timeout: float) -> bytes | None:
        """Return the next APDU that arrived intact (ACKed), or ``None`` after ``timeout``.

        Raises:
            LinkCorrupt: too many broken frames in a row.
        """
        deadline = self._clock() + timeout
        while True:
            while self._events and not self._pending:
                event = self._events.pop(0)
                if event.kind in ("frame", "noise"):
                    self._take_frame(event)
                # stray ACK/NAK outside a send: ignore
            if self._pending:
                return self._pending.pop(0)
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._pull(min(remaining, 0.05))


class StreamLink:
    """The TCP link (PA00P016, "Transport-protocol TCP/IP", port 20007): bare APDUs, no
    DLE framing, no CRC, no ACK/NAK. Same :meth:`send`/:meth:`receive` as
    :class:`FramedLink`."""

    def __init__(self, read: ReadFn, write: WriteFn, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._write = write
        self._clock = clock
        self._buf = bytearray()
        self.naks_sent = self.naks_received = self.repeats_sent = 0

    def reset(self) -> None:
        self._buf.clear()

    def send(self, apdu: bytes, *, corrupt_first: bool = False) -> None:
        self._write(apdu)

    def receive(self, timeout: float) -> bytes | None:
        deadline = self._clock() + timeout
        while True:
            total = apdu_length(bytes(self._buf[:5]))
            if total is not None and len(self._buf) >= total:
                apdu = bytes(self._buf[:total])
                del self._buf[:total]
                return apdu
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._buf += self._read(min(remaining, 0.05))
