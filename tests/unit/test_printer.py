"""drivers.printer: the document model, the layouts, the ESC/POS encoder (golden bytes),
the renderer (golden PNGs), and the driver against a fake printer over real TCP.

Golden files live in tests/golden/ (and the rendered receipts in docs/img/). After an
intended change to the layout or the encoder, regenerate them with

    MADOGUCHI_REGEN_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_printer.py

look at docs/img/receipt-*.png, and commit them with the change.
"""

from __future__ import annotations

import io
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest
from escpos.printer import Dummy
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw

from drivers.printer import (
    PAPER_58MM,
    PAPER_80MM,
    Columns,
    Cut,
    Document,
    FakeEscposPrinter,
    Feed,
    Paper,
    Printer,
    PrinterError,
    PrinterNotReady,
    PrinterStatus,
    Qr,
    ReceiptData,
    ReceiptLine,
    Rule,
    Text,
    char_columns,
    encode,
    queue_ticket,
    receipt,
    status_ticket,
)
from drivers.printer import _commands as cmd
from drivers.printer._commands import tokenize
from drivers.printer._paint import from_raster_rows, to_raster_rows
from drivers.printer.render import RenderError, render, render_png

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
DOCS_IMG = ROOT / "docs" / "img"
REGEN = os.environ.get("MADOGUCHI_REGEN_GOLDEN") == "1"

# Status replies come from 127.0.0.1 at once; a short timeout keeps the offline test fast.
STATUS_TIMEOUT = 0.2

LINES = (
    ReceiptLine("住民票の写し", 2, 300, 600),
    ReceiptLine("印鑑登録証明書", 1, 300, 300),
)


def cash_data(**changes) -> ReceiptData:
    fields = {
        "kind": "receipt",
        "office": "みどり市役所 市民課",
        "counter": "1番窓口",
        "issued_at": datetime(2026, 11, 22, 10, 15),
        "receipt_no": "R-20261122-0001",
        "lines": LINES,
        "total": 900,
        "method_ja": "現金",
        "method_en": "Cash",
        "tendered": 1000,
        "change": 100,
    }
    return ReceiptData(**{**fields, **changes})


def credit_data(**changes) -> ReceiptData:
    fields = {
        "kind": "slip",
        "office": "みどり市役所 市民課",
        "counter": "1番窓口",
        "issued_at": datetime(2026, 11, 22, 10, 18),
        "receipt_no": "R-20261122-0002",
        "lines": LINES,
        "total": 900,
        "method_ja": "クレジット",
        "method_en": "Credit",
        "brand": "VISA",
        "card_no": "************1234",
        "slip_no": "00123",
        "approval_no": "456789",
        "terminal_id": "T-0001",
        "transaction": "売上",
    }
    return ReceiptData(**{**fields, **changes})


GOLDENS = {"cash": cash_data, "credit": credit_data}


def to_hex(data: bytes) -> str:
    return "".join(data[i : i + 32].hex(" ") + "\n" for i in range(0, len(data), 32))


def from_hex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\n", " "))


def texts_sent(data: bytes) -> str:
    """All text the printer would print as characters (decoded as the renderer does)."""
    out = []
    for tok in tokenize(data)[0]:
        if tok.kind == "text":
            out.append(tok.raw.decode("shift_jis"))
    return "".join(out)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()
    ]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def fake():
    with FakeEscposPrinter() as printer:
        yield printer


@pytest.fixture
def printer(fake):
    with Printer.network(
        "127.0.0.1", fake.port, status_timeout=STATUS_TIMEOUT, write_timeout=2.0
    ) as p:
        yield p


# -- golden bytes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_receipt_bytes_match_the_golden_file(name):
    data = encode(receipt(GOLDENS[name]()), mode="kanji")
    path = GOLDEN / f"receipt-{name}-kanji.hex"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_hex(data))
    assert path.exists(), f"{path} missing: run with MADOGUCHI_REGEN_GOLDEN=1"
    expected = from_hex(path.read_text())
    assert data == expected, (
        f"bytes differ from {path.name} (regenerate only for an intended change)"
    )


def test_kanji_receipt_bytes_say_what_a_japanese_printer_needs():
    data = encode(receipt(cash_data()), mode="kanji")
    assert data.startswith(cmd.INIT)
    assert b"\x1c\x43\x01" in data  # FS C 1: Shift_JIS
    assert b"\x1c\x26" in data  # FS &: kanji mode on
    assert data.index(b"\x1c\x26") < data.index("領収書".encode("shift_jis"))
    assert "領収書".encode("shift_jis") == bytes.fromhex("97cc 8efb 8f91")
    assert "住民票の写し ×2".encode("shift_jis") in data
    assert (
        "¥600".encode("shift_jis") in data and b"\x1b\x52\x08" in data
    )  # 0x5C is ¥ (ESC R 8)
    assert "¥1,000".encode("shift_jis") in data and "¥100".encode("shift_jis") in data
    # Kanji mode is left before the cut, and the job ends with the (partial) cut.
    assert data.endswith(b"\x1c\x2e" + b"\x1d\x56\x42\x00")
    assert "再発行".encode("shift_jis") not in data
    assert b"?" not in texts_sent(data).encode("utf-8")
    # Nothing of the revenue account; the total is double size and bold.
    assert b"\x1d\x21\x11" in data and b"\x1b\x45\x01" in data


def test_a_reprint_says_so_at_the_top_and_the_original_does_not():
    original = encode(receipt(cash_data()))
    reprint = encode(receipt(cash_data(reprint=True)))
    mark = "再発行".encode("shift_jis")
    assert mark not in original
    assert mark in reprint
    assert reprint.index(mark) < reprint.index("領収書".encode("shift_jis"))
    assert "REPRINT" in texts_sent(reprint)


def test_credit_slip_carries_the_card_payment_details():
    text = texts_sent(encode(receipt(credit_data())))
    for expected in (
        "利用控え",
        "VISA",
        "************1234",
        "00123",
        "456789",
        "T-0001",
        "売上",
        "クレジット Credit",
    ):
        assert expected in text
    assert "お預り" not in text


def test_a_void_is_marked():
    text = texts_sent(encode(receipt(credit_data(transaction="取消"))))
    assert "取消" in text and "VOID" in text


# -- image mode ---------------------------------------------------------------------------


def test_image_mode_sends_a_raster_and_no_text():
    data = encode(receipt(cash_data()), mode="image")
    tokens, _ = tokenize(data)
    names = [t.name for t in tokens if t.kind == "cmd"]
    assert "GS v 0" in names
    assert not [t for t in tokens if t.kind == "text"], "image mode must not send text"
    assert b"\x1c\x26" not in data and b"\x1c\x43\x01" not in data
    assert "領収書".encode("shift_jis") not in data
    assert names[-1] == "GS V"
    raster = next(t for t in tokens if t.name == "GS v 0")
    width_bytes = int.from_bytes(raster.args[1:3], "little")
    height = int.from_bytes(raster.args[3:5], "little")
    bitmap = from_raster_rows(width_bytes, height, raster.data)
    assert bitmap.size == (512, height)
    ink = bitmap.histogram()[0]
    assert (
        0.01 * bitmap.width * bitmap.height < ink < 0.5 * bitmap.width * bitmap.height
    )


def test_image_mode_prints_the_same_picture_as_kanji_mode():
    doc = receipt(credit_data(reprint=True))
    kanji = render(encode(doc, mode="kanji"))
    image = render(encode(doc, mode="image"))
    assert kanji.size == image.size
    assert (
        ImageChops.difference(kanji.convert("L"), image.convert("L")).getbbox() is None
    )


def test_raster_and_qr_commands_are_those_python_escpos_emits():
    qr = Dummy()
    qr.qr("https://madoguchi.example/t/123", ec=1, size=5, native=True)  # ec 1 = M
    assert qr.output == cmd.qr_code(b"https://madoguchi.example/t/123", 5, "M")
    img = Image.new("1", (64, 20), 1)
    ImageDraw.Draw(img).rectangle((3, 2, 40, 15), fill=0)
    raster = Dummy()
    raster.image(img, impl="bitImageRaster")
    width_bytes, rows = to_raster_rows(img)
    assert raster.output == cmd.raster(width_bytes, img.height, rows)


# -- renderer -----------------------------------------------------------------------------


def _ink_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, f"size {a.size} != golden {b.size}"
    differing = ImageChops.logical_xor(a.convert("1"), b.convert("1")).histogram()[-1]
    ink = max(1, b.convert("1").histogram()[0])
    return differing / ink


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_rendered_receipt_matches_the_golden_png(name):
    path = GOLDEN / f"receipt-{name}-kanji.hex"
    png = render_png(from_hex(path.read_text()))
    golden_png = GOLDEN / f"receipt-{name}.png"
    docs_png = DOCS_IMG / f"receipt-{name}.png"
    if REGEN:
        golden_png.write_bytes(png)
        docs_png.write_bytes(png)
    got = Image.open(io.BytesIO(png))
    # Another FreeType may move a few dots; anything more is a change of the receipt.
    assert _ink_difference(got, Image.open(golden_png)) < 0.02
    assert docs_png.read_bytes() == golden_png.read_bytes(), "docs/img is out of date"


def test_renderer_draws_a_scannable_sized_qr_and_rejects_unknown_commands():
    doc = queue_ticket(
        number=123,
        issued_at=datetime(2026, 11, 22, 9, 5),
        office="みどり市役所",
        counters=["1番 住民異動", "5番 国民健康保険"],
        url="https://madoguchi.example/t/123",
        wait_minutes=25,
        waiting=7,
        service_ja="転入",
    )
    data = encode(doc)
    assert b"\x1d(k" in data and b"https://madoguchi.example/t/123" in data
    assert b"\x1d\x21\x33" in data  # the number at 4 x 4
    img = render(data)
    assert img.height > 600
    with pytest.raises(RenderError):
        render(cmd.INIT + b"\x1b\x7a\x01")  # ESC z: not ours
    with pytest.raises(RenderError):
        render(cmd.INIT + b"x" * 43 + b"\n")  # wider than 42 columns


def test_status_ticket_renders():
    doc = status_ticket(
        device_id="edge-counter-01",
        ip="192.0.2.15",
        version="0.1.0",
        at=datetime(2026, 11, 22, 8, 0),
    )
    data = encode(doc, paper=PAPER_58MM)
    assert "edge-counter-01" in texts_sent(data)
    assert render(data, paper=PAPER_58MM).width == 384 + 64


# -- characters outside JIS X 0208 ---------------------------------------------------------


def test_unmappable_characters_never_reach_the_printer_as_garbage():
    doc = Document(
        [
            Text("①番窓口"),
            Text("麵類 髙橋"),
            Text("ありがとう😀"),
            Text("㈱みどり ～ Ⅲ"),
            Cut(),
        ]
    )
    data = encode(doc, mode="kanji")
    text = texts_sent(data)
    assert "?" not in text
    assert "(1)番窓口" in text  # mapped
    assert "(株)みどり 〜 III" in text
    assert "ありがとう〓" in text  # no glyph anywhere: the JIS substitute mark
    assert (
        "麵" not in text and "麺" not in text and "髙" not in text and "橋" not in text
    )
    tokens, _ = tokenize(data)
    assert (
        sum(t.name == "GS v 0" for t in tokens) == 1
    )  # the 麵/髙 line went as an image
    # The image line has ink, and the whole thing renders.
    render(data)


def test_paper_for_columns():
    assert Paper.for_columns(42) is PAPER_80MM and Paper.for_columns(32) is PAPER_58MM
    assert Paper.for_columns(48) == Paper(48, 576)
    with pytest.raises(ValueError):
        Paper.for_columns(8)


def test_column_widths_follow_shift_jis():
    assert [char_columns(c) for c in "A¥ｱ領×①😀"] == [1, 1, 1, 2, 2, 2, 2]
    # A long label wraps; the amount stays flush right; no line is wider than the paper.
    doc = Document(
        [Columns("とても長い手数料の名前" * 3, "¥1,000,000"), Rule("="), Feed(2), Cut()]
    )
    render(encode(doc))


def test_document_and_receipt_data_are_checked():
    with pytest.raises(ValueError):
        Text("x", size=5)
    with pytest.raises(ValueError):
        Text("x", align="middle")
    with pytest.raises(TypeError):
        Document([Text("x"), "y"])
    with pytest.raises(ValueError):
        Qr("")
    with pytest.raises(ValueError, match="masked"):
        credit_data(card_no="4111111111111111")
    with pytest.raises(ValueError, match="total"):
        cash_data(total=800)
    with pytest.raises(ValueError, match="change"):
        cash_data(change=50)
    with pytest.raises(ValueError):
        ReceiptLine("住民票の写し", 2, 300, 500)


# -- the driver against the fake printer over TCP -----------------------------------------


def test_status_ok_and_a_receipt_is_delivered_as_exactly_one_job(fake, printer):
    status = printer.status()
    assert status == PrinterStatus(True, "ok", False, False, False, False, False)
    assert status.printable and printer.health() == ("ok", None, None)
    doc = receipt(cash_data())
    printer.print(doc)
    jobs = fake.wait_for_jobs(1)
    assert jobs == [encode(doc, mode="kanji")]
    assert fake.pending == b""


def test_image_mode_printer_delivers_image_bytes(fake):
    with Printer.network(
        "127.0.0.1", fake.port, mode="image", status_timeout=STATUS_TIMEOUT
    ) as p:
        doc = receipt(credit_data())
        p.print(doc)
        assert fake.wait_for_jobs(1) == [encode(doc, mode="image")]
        assert fake.queries == 4


def test_the_fake_parses_the_stream_like_a_printer(fake):
    # Raster data that holds a status query and a cut: data, not commands. The bytes
    # arrive in two pieces split inside the image.
    rows = bytes([0x10, 0x04, 0x01, 0x1D, 0x56, 0x42, 0x00, 0xFF] * 2)
    job = cmd.INIT + cmd.raster(2, 8, rows) + cmd.cut(True)
    import socket

    with socket.create_connection(("127.0.0.1", fake.port), timeout=2) as sock:
        sock.sendall(job[:12])
        sock.sendall(job[12:] + cmd.status_query(4))
        assert sock.recv(16) == b"\x12"  # one reply: to the real query only
    assert fake.wait_for_jobs(1) == [job]
    assert fake.queries == 1


def test_paper_near_end_prints_with_a_warning(fake, printer):
    fake.set_paper("near_end")
    status = printer.status()
    assert status.paper == "near_end" and status.printable
    assert printer.health()[:2] == ("warning", "paper_near_end")
    printer.print(receipt(cash_data()))
    assert len(fake.wait_for_jobs(1)) == 1


@pytest.mark.parametrize(
    ("fault", "reason", "check"),
    [
        (
            lambda f: f.set_paper("end"),
            "paper_end",
            lambda s: s.paper == "end" and s.online is False,
        ),
        (
            lambda f: f.open_cover(),
            "cover_open",
            lambda s: s.cover_open and s.paper == "ok",
        ),
        (
            lambda f: f.cutter_error(),
            "cutter_error",
            lambda s: s.cutter_error and s.error,
        ),
        (
            lambda f: f.unrecoverable_error(),
            "unrecoverable_error",
            lambda s: s.unrecoverable,
        ),
        (
            lambda f: f.go_offline(),
            "no_reply",
            lambda s: s.online is None and s.paper == "unknown",
        ),
    ],
    ids=["paper_end", "cover_open", "cutter_error", "unrecoverable", "offline"],
)
def test_a_printer_that_cannot_print_gets_nothing(fake, printer, fault, reason, check):
    fault(fake)
    status = printer.status()
    assert check(status), status
    assert not status.printable
    assert printer.health()[:2] == ("error", reason)
    with pytest.raises(PrinterNotReady) as caught:
        printer.print(receipt(cash_data()))
    assert caught.value.reason == reason
    assert fake.jobs == [] and fake.pending == b""
    # Only status queries went over the wire.
    assert set(fake.received.split(b"\x10\x04")) <= {
        b"",
        b"\x01",
        b"\x02",
        b"\x03",
        b"\x04",
    }


def test_the_printer_recovers_and_a_dropped_connection_is_reopened(fake, printer):
    fake.open_cover()
    assert printer.health()[1] == "cover_open"
    fake.close_cover()
    fake.drop_connections()  # e.g. the printer's idle timeout
    assert printer.status().printable
    printer.print(Document([Text("テスト"), Cut()]))
    assert len(fake.wait_for_jobs(1)) == 1


def test_no_printer_at_the_address_is_unknown_not_ok():
    with FakeEscposPrinter() as gone:
        port = gone.port
    with Printer.network(
        "127.0.0.1", port, status_timeout=STATUS_TIMEOUT, write_timeout=1.0
    ) as p:
        status = p.status()
        assert status.paper == "unknown" and "no connection" in status.detail
        assert p.health()[:2] == ("error", "no_reply")
        with pytest.raises(PrinterNotReady):
            p.print(Document([Text("x"), Cut()]))
        assert p.last_status == p.status()


def test_close_is_idempotent_and_a_closed_printer_refuses(fake):
    p = Printer.network("127.0.0.1", fake.port, status_timeout=STATUS_TIMEOUT)
    assert p.status().printable
    p.close()
    p.close()
    assert p.closed
    assert p.health()[:2] == ("error", "closed")
    with pytest.raises(PrinterError):
        p.print(Document([Text("x")]))
    with pytest.raises(PrinterError):
        p.status()


def test_status_bytes_are_decoded_bit_by_bit():
    assert PrinterStatus.from_replies(0x12, 0x12, 0x12, 0x12).health() == (
        "ok",
        None,
        None,
    )
    assert PrinterStatus.from_replies(0x12, 0x12, 0x12, 0x1E).paper == "near_end"
    assert PrinterStatus.from_replies(0x1A, 0x32, 0x12, 0x72).paper == "end"
    assert (
        PrinterStatus.from_replies(0x1A, 0x52, 0x52, 0x12).health()[1]
        == "recoverable_error"
    )
    with pytest.raises(ValueError):
        PrinterStatus.from_replies(0x00, 0x12, 0x12, 0x12)
    assert not PrinterStatus.unknown().printable


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from("あ漢字ｱA ¥\\~①麵😀é\u0301\u200d、。」ー—～Zz9髙"),
        max_size=90,
    ),
    size=st.integers(1, 4),
    mode=st.sampled_from(["kanji", "image"]),
)
def test_any_text_fits_the_paper_and_never_prints_a_question_mark(text, size, mode):
    doc = Document(
        [
            Text(text, size=size, align="center", note="Note"),
            Columns(text[:30], "¥900", size=2),
            Cut(),
        ]
    )
    data = encode(doc, mode=mode, paper=PAPER_58MM)
    render(data, paper=PAPER_58MM)  # raises on a line wider than the paper
    assert "?" not in texts_sent(data)
