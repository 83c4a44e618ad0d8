"""drivers.terminal.zvt_proto: framing, CRC, APDUs and BMPs against published bytes, and
the link layer against a scripted peer."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.terminal import zvt_proto as p
from drivers.terminal.base import mask_pan

# The frame quoted in the ZVT transport spec (PA00P016): completion of a status enquiry,
# software version "2.14.15" and terminal status 00; CRC 0x11B1, low byte first.
PUBLISHED = bytes.fromhex("10 02 06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00 10 03 B1 11")

# More published frames: the test vectors in wirelane/ecrterm, ecrterm/tests/data_encoding.py
# (byte dumps of real terminal traffic). The authorisation one has a DLE to double
# (11000 cents = BCD 00 00 00 01 10 00).
ECRTERM_AUTHORISATION = bytes.fromhex("10 02 06 01 0A 04 00 00 00 01 10 10 00 49 09 78 10 03 F2 FF")
ECRTERM_STATUS_ENQUIRY = bytes.fromhex("10 02 05 01 03 12 34 56 10 03 E0 43")
ECRTERM_ACK = bytes.fromhex("10 02 80 00 00 10 03 F5 1F")
ECRTERM_NACK_9C = bytes.fromhex("10 02 84 9C 00 10 03 C3 41")


def test_published_frame_and_crc():
    apdu = p.decode_frame(PUBLISHED)
    assert apdu == bytes.fromhex("06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00")
    assert p.crc16(apdu + bytes([p.ETX])) == 0x11B1
    assert p.encode_frame(apdu) == PUBLISHED
    version, pos = p.llvar_decode(p.parse_apdu(apdu).data, 0, 3)
    assert version == b"2.14.15" and p.parse_apdu(apdu).data[pos] == 0


def test_ecrterm_frames():
    assert p.encode_frame(p.cmd_authorisation(11000, currency=978)) == ECRTERM_AUTHORISATION
    assert p.encode_frame(p.cmd_status_enquiry("123456")) == ECRTERM_STATUS_ENQUIRY
    assert p.encode_frame(p.APDU_ACK) == ECRTERM_ACK
    assert p.encode_frame(p.encode_apdu(0x84, 0x9C)) == ECRTERM_NACK_9C
    auth = p.parse_apdu(p.decode_frame(ECRTERM_AUTHORISATION))
    assert auth.command == p.CMD_AUTHORISATION
    assert p.bcd_decode(p.parse_bmps(auth.data)[p.BMP_AMOUNT]) == 11000


def test_bad_crc_and_broken_frames_are_rejected():
    broken = bytearray(PUBLISHED)
    broken[-1] ^= 1
    with pytest.raises(p.ZvtProtocolError):
        p.decode_frame(bytes(broken))
    assert p.FrameParser().feed(bytes(broken))[0].crc_ok is False
    assert p.FrameParser().feed(p.encode_frame(b"\x06\x0f\x00", corrupt_crc=True))[0].crc_ok is False
    with pytest.raises(p.ZvtProtocolError):
        p.dle_unescape(bytes([1, p.DLE, 2]))


@given(st.binary(max_size=600))
def test_dle_stuffing_round_trips(data):
    escaped = p.dle_escape(data)
    assert escaped.count(p.DLE) == 2 * data.count(p.DLE)
    assert p.dle_unescape(escaped) == data
    frame = p.encode_frame(data)
    assert p.decode_frame(frame) == data
    # fed byte by byte, with ACK/NAK around it, the parser finds the same frame
    parser = p.FrameParser()
    events = [e for b in bytes([p.ACK]) + frame + bytes([p.NAK]) for e in parser.feed(bytes([b]))]
    assert [e.kind for e in events] == ["ack", "frame", "nak"] and events[1].apdu == data and events[1].crc_ok


@given(st.integers(0, 0xFF), st.integers(0, 0xFF), st.binary(max_size=1000))
def test_apdu_round_trip_with_extended_length(cls, instr, data):
    raw = p.encode_apdu(cls, instr, data)
    assert (raw[2] == 0xFF) == (len(data) >= 255)
    assert p.apdu_length(raw) == len(raw)
    assert p.parse_apdu(raw) == p.Apdu(cls, instr, data)


def test_extended_length_is_little_endian():
    raw = p.encode_apdu(0x06, 0xD3, bytes(300))
    assert raw[:5] == bytes([0x06, 0xD3, 0xFF, 0x2C, 0x01])
    with pytest.raises(p.ZvtProtocolError):
        p.parse_apdu(raw[:-1])


def test_bcd_amounts():
    assert p.bcd_encode(300, 6) == bytes.fromhex("000000000300")
    assert p.bcd_encode(9_999_999, 6) == bytes.fromhex("000009999999")
    assert p.bcd_decode(bytes.fromhex("000000011000")) == 11000
    assert p.bcd_digits(bytes.fromhex("0042")) == "0042"
    for bad in (-1, "12a", 10**12):
        with pytest.raises(ValueError):
            p.bcd_encode(bad, 6)
    with pytest.raises(p.ZvtProtocolError):
        p.bcd_decode(b"\x1f")


@given(st.integers(0, 10**12 - 1))
def test_bcd_round_trip(value):
    assert p.bcd_decode(p.bcd_encode(value, 6)) == value


def test_llvar_and_lllvar():
    assert p.llvar_encode(b"VISA") == bytes([0xF0, 0xF4]) + b"VISA"
    assert p.llvar_encode(b"x" * 12, 2)[:2] == bytes([0xF1, 0xF2])
    assert p.llvar_encode(b"2.14.15", 3)[:3] == bytes([0xF0, 0xF0, 0xF7])
    assert p.llvar_decode(bytes([0xF0, 0xF2]) + b"iDxx", 0, 2) == (b"iD", 4)
    with pytest.raises(ValueError):
        p.llvar_encode(b"x" * 100, 2)
    with pytest.raises(p.ZvtProtocolError):
        p.llvar_decode(bytes([0xF0, 0xF9]) + b"short", 0, 2)
    with pytest.raises(p.ZvtProtocolError):
        p.llvar_decode(bytes([0x01, 0xF1]), 0, 2)


def test_status_information_bmps_round_trip():
    at = datetime(2025, 4, 1, 9, 30, 5)
    fields = [
        (p.BMP_RESULT, b"\x00"),
        (p.BMP_AMOUNT, p.bcd_encode(1300, 6)),
        (p.BMP_TRACE, p.bcd_encode(17, 3)),
        *p.datetime_bmps(at),
        (p.BMP_PAN, p.encode_pan("************1234")),
        (p.BMP_TID, p.bcd_encode("29001234", 4)),
        (p.BMP_APPROVAL, b"1234567 "),
        (p.BMP_RECEIPT, p.bcd_encode(42, 2)),
        (p.BMP_CARD_TYPE, b"\x05"),
        (p.BMP_CARD_NAME, b"QUICPay"),
        (p.BMP_TLV, b"\x1f\x10\x01\x00"),
    ]
    parsed = p.parse_bmps(p.encode_bmps(fields))
    assert parsed[p.BMP_RECEIPT] == b"\x00\x42" and parsed[p.BMP_CARD_NAME] == b"QUICPay"
    assert p.decode_pan(parsed[p.BMP_PAN]) == "************1234"
    assert p.bmp_datetime(parsed, now=datetime(2025, 4, 2)) == at
    assert p.bmp_datetime(parsed, now=datetime(2026, 1, 2)) == at.replace(year=2025)  # no year in 0D
    with pytest.raises(p.ZvtProtocolError):
        p.parse_bmps(bytes([0x99, 0x00]))  # unknown BMP: cannot be skipped
    with pytest.raises(ValueError):
        p.encode_bmps([(p.BMP_RECEIPT, b"\x01")])


def test_pan_is_masked_to_four_digits():
    assert p.decode_pan(p.encode_pan("12345")) == "12345"  # odd: F padding dropped
    assert mask_pan("4111111111111111") == "************1111"
    assert mask_pan("************1234") == "************1234"
    assert mask_pan(None) is None


def test_totals_bmp_60():
    value = p.encode_totals(1, 9, {"VISA": (2, 600), "other": (3, 1500)})
    assert len(value) == 4 + 7 * 7
    assert p.decode_totals(value) == {"VISA": (2, 600), "other": (3, 1500)}


def test_intermediate_words():
    assert p.intermediate_word(0x0A) == "insert_card"
    assert p.intermediate_word(0x4E) == "please_wait"  # 0x40 + "please wait": and remove card
    assert p.intermediate_word(0xAB) == "status_ab"


class Wire:
    """A scripted peer for FramedLink: what it 'sends' is queued, what we write is kept."""

    def __init__(self, *chunks: bytes) -> None:
        self.incoming = list(chunks)
        self.written: list[bytes] = []

    def read(self, timeout: float) -> bytes:
        return self.incoming.pop(0) if self.incoming else b""

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_link_repeats_after_nak_and_gives_up_after_three_repeats():
    wire = Wire(bytes([p.NAK]), bytes([p.ACK]))
    link = p.FramedLink(wire.read, wire.write, ack_timeout_s=0.05)
    link.send(p.APDU_ACK)
    assert wire.written == [ECRTERM_ACK, ECRTERM_ACK] and link.naks_received == 1
    wire = Wire(*[bytes([p.NAK])] * 4)
    with pytest.raises(p.LinkNak):
        p.FramedLink(wire.read, wire.write, ack_timeout_s=0.05).send(p.APDU_ACK)
    assert len(wire.written) == 4
    wire = Wire()
    with pytest.raises(p.LinkTimeout):
        p.FramedLink(wire.read, wire.write, ack_timeout_s=0.01).send(p.APDU_ACK)
    assert len(wire.written) == 4


def test_link_acks_good_frames_and_naks_bad_ones():
    bad = p.encode_frame(p.APDU_ACK, corrupt_crc=True)
    wire = Wire(bad, PUBLISHED)
    link = p.FramedLink(wire.read, wire.write)
    assert link.receive(0.5) == p.decode_frame(PUBLISHED)
    assert wire.written == [bytes([p.NAK]), bytes([p.ACK])]
    wire = Wire(*[bad] * 4)
    with pytest.raises(p.LinkCorrupt):
        p.FramedLink(wire.read, wire.write).receive(0.5)


def test_link_drops_a_frame_that_stops_half_way():
    clock = [0.0]
    wire = Wire(PUBLISHED[:6])
    link = p.FramedLink(wire.read, wire.write, inter_byte_s=0.5, clock=lambda: clock[0])

    def tick(timeout):
        clock[0] += 0.3
        return wire.read(timeout)

    link._read = tick
    assert link.receive(1.0) is None
    assert wire.written == [bytes([p.NAK])]


def test_stream_link_reads_bare_apdus():
    big = p.encode_apdu(0x06, 0xD3, bytes(300))
    wire = Wire(big[:2], big[2:] + p.APDU_ACK)
    link = p.StreamLink(wire.read, wire.write)
    assert link.receive(0.5) == big
    assert link.receive(0.5) == p.APDU_ACK
    link.send(p.APDU_ACK)
    assert wire.written == [p.APDU_ACK]
