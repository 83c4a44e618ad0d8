"""The ESC/POS commands we send, and a tokenizer for them.

Names and sections are those of Epson's *ESC/POS Command Reference* (TM series). The
tokenizer is shared by the renderer (which draws what the bytes say) and the fake printer
(which must find status queries and cuts without mistaking bytes inside image data for
commands, as a real printer does).
"""

from __future__ import annotations

from dataclasses import dataclass

LF = b"\x0a"  # LF: print and line feed
ESC = b"\x1b"
FS = b"\x1c"
GS = b"\x1d"
DLE = b"\x10"
EOT = b"\x04"

INIT = (
    ESC + b"@"
)  # ESC @: initialize printer (clears the buffer, modes back to default)
INTL_JAPAN = (
    ESC + b"R\x08"
)  # ESC R 8: international character set Japan (0x5C prints ¥)
CODEPAGE_KATAKANA = (
    ESC + b"t\x01"
)  # ESC t 1: code page 1, half-width katakana (0xA1-0xDF)
KANJI_SJIS = FS + b"C\x01"  # FS C 1: kanji character code system Shift_JIS
KANJI_ON = FS + b"&"  # FS &: select kanji character mode
KANJI_OFF = FS + b"."  # FS .: cancel kanji character mode


def align(n: int) -> bytes:
    """ESC a n: justification, 0 left, 1 centre, 2 right."""
    return ESC + b"a" + bytes([n])


def bold(on: bool) -> bytes:
    """ESC E n: emphasized mode on/off."""
    return ESC + b"E" + (b"\x01" if on else b"\x00")


def char_size(width: int, height: int) -> bytes:
    """GS ! n: character size, bits 4-6 width-1, bits 0-2 height-1 (applies to kanji too)."""
    return GS + b"!" + bytes([((width - 1) << 4) | (height - 1)])


def cut(partial: bool) -> bytes:
    """GS V m n, function B (m=65 full, 66 partial): feed to the cutting position (+ n
    motion units) and cut, so the last printed line is above the blade."""
    return GS + b"V" + (b"\x42" if partial else b"\x41") + b"\x00"


def raster(width_bytes: int, height: int, data: bytes) -> bytes:
    """GS v 0 m xL xH yL yH d1...dk: raster bit image, normal density (m=0), MSB left."""
    if len(data) != width_bytes * height:
        raise ValueError("raster data does not match its size")
    return (
        GS
        + b"v0\x00"
        + width_bytes.to_bytes(2, "little")
        + height.to_bytes(2, "little")
        + data
    )


def qr_code(data: bytes, module: int, ec: str) -> bytes:
    """GS ( k, cn=49 (QR): fn 65 model 2, fn 67 module size, fn 69 error correction,
    fn 80 store the data, fn 81 print the stored symbol."""
    level = {"L": 48, "M": 49, "Q": 50, "H": 51}[ec]

    def fn(code: int, payload: bytes) -> bytes:
        body = b"\x31" + bytes([code]) + payload
        return GS + b"(k" + len(body).to_bytes(2, "little") + body

    return (
        fn(65, b"\x32\x00")
        + fn(67, bytes([module]))
        + fn(69, bytes([level]))
        + fn(80, b"\x30" + data)
        + fn(81, b"\x30")
    )


def status_query(n: int) -> bytes:
    """DLE EOT n: transmit real-time status (n=1 printer, 2 offline cause, 3 error cause,
    4 roll paper sensor). The printer answers one byte at once, even when offline."""
    return DLE + EOT + bytes([n])


@dataclass(frozen=True)
class Token:
    """One item of an ESC/POS stream.

    ``kind`` is ``"text"`` (a run of printable bytes, ``raw`` holds them), ``"ctl"`` (a
    control character: LF, CR, HT ...), ``"cmd"`` (``name`` like ``"ESC a"``, ``args``
    its parameter bytes, ``data`` a payload such as raster rows) or ``"unknown"``.
    """

    kind: str
    raw: bytes
    name: str = ""
    args: bytes = b""
    data: bytes = b""


# Commands with a fixed number of parameter bytes: (prefix, 2nd byte) -> count.
_FIXED: dict[bytes, int] = {
    b"\x1b@": 0,  # ESC @
    b"\x1ba": 1,  # ESC a n
    b"\x1bE": 1,  # ESC E n
    b"\x1bG": 1,  # ESC G n (double-strike)
    b"\x1bR": 1,  # ESC R n
    b"\x1bt": 1,  # ESC t n
    b"\x1bd": 1,  # ESC d n (print and feed n lines)
    b"\x1bJ": 1,  # ESC J n (print and feed n dots)
    b"\x1b2": 0,  # ESC 2 (default line spacing)
    b"\x1b3": 1,  # ESC 3 n (line spacing)
    b"\x1bM": 1,  # ESC M n (font)
    b"\x1b!": 1,  # ESC ! n (print mode)
    b"\x1d!": 1,  # GS ! n
    b"\x1dB": 1,  # GS B n (reverse)
    b"\x1c&": 0,  # FS &
    b"\x1c.": 0,  # FS .
    b"\x1cC": 1,  # FS C n
    b"\x1c!": 1,  # FS ! n (kanji print mode)
    b"\x10\x04": 1,  # DLE EOT n
}

_NAMES = {0x1B: "ESC", 0x1C: "FS", 0x1D: "GS", 0x10: "DLE"}


def _name(prefix: bytes) -> str:
    second = prefix[1]
    if second == 0x04:
        return f"{_NAMES[prefix[0]]} EOT"
    return f"{_NAMES[prefix[0]]} {chr(second)}"


def tokenize(buf: bytes, *, final: bool = True) -> tuple[list[Token], int]:
    """Split ``buf`` into tokens.

    Returns the tokens and how many bytes they cover. With ``final=False`` (a stream that
    continues) an incomplete command at the end is left out, to be parsed again with the
    next bytes; with ``final=True`` it becomes an ``"unknown"`` token.
    """
    tokens: list[Token] = []
    i = 0
    n = len(buf)
    while i < n:
        b = buf[i]
        if b >= 0x20 and b != 0x7F:
            j = i
            while j < n and buf[j] >= 0x20 and buf[j] != 0x7F:
                j += 1
            tokens.append(Token("text", buf[i:j]))
            i = j
            continue
        if b not in _NAMES:
            tokens.append(Token("ctl", buf[i : i + 1]))
            i += 1
            continue
        if i + 1 >= n:
            break
        prefix = buf[i : i + 2]
        need: int | None = None
        if prefix in _FIXED:
            need = 2 + _FIXED[prefix]
            if i + need <= n:
                tokens.append(
                    Token(
                        "cmd", buf[i : i + need], _name(prefix), buf[i + 2 : i + need]
                    )
                )
                i += need
                continue
        elif prefix == b"\x1dV":  # GS V m [n]
            if i + 2 < n:
                m = buf[i + 2]
                need = 4 if m in (65, 66, 97, 98, 103, 104) else 3
                if i + need <= n:
                    tokens.append(
                        Token("cmd", buf[i : i + need], "GS V", buf[i + 2 : i + need])
                    )
                    i += need
                    continue
        elif prefix == b"\x1dv" and (
            i + 2 >= n or buf[i + 2] == 0x30
        ):  # GS v 0 m xL xH yL yH d...
            if i + 8 <= n:
                xb = int.from_bytes(buf[i + 4 : i + 6], "little")
                yd = int.from_bytes(buf[i + 6 : i + 8], "little")
                need = 8 + xb * yd
                if i + need <= n:
                    tokens.append(
                        Token(
                            "cmd",
                            buf[i : i + need],
                            "GS v 0",
                            buf[i + 3 : i + 8],
                            buf[i + 8 : i + need],
                        )
                    )
                    i += need
                    continue
        elif prefix == b"\x1d(":  # GS ( k / GS ( L  pL pH ...
            if i + 5 <= n:
                size = int.from_bytes(buf[i + 3 : i + 5], "little")
                need = 5 + size
                if i + need <= n:
                    name = f"GS ( {chr(buf[i + 2])}"
                    tokens.append(
                        Token(
                            "cmd", buf[i : i + need], name, b"", buf[i + 5 : i + need]
                        )
                    )
                    i += need
                    continue
        else:
            tokens.append(Token("unknown", prefix))
            i += 2
            continue
        break  # an incomplete command at the end
    if i < n and final:
        tokens.append(Token("unknown", buf[i:]))
        i = n
    return tokens, i
