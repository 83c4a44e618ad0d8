"""The agent's statement file: UTF-8 (with or without BOM) and Shift_JIS read
the same; every bad input is refused with its line number, all problems at
once, and a refused file leaves nothing behind; the generator is
deterministic and its fees follow the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import load
from central.statement import (
    COLUMNS,
    StatementError,
    brand_of,
    decode,
    generate,
    import_statement,
    parse_statement,
    synthetic_ledger,
)
from central.store import Store

ROOT = Path(__file__).resolve().parents[2]
LOADED = load(ROOT / "config" / "central.toml")
SITE, CATALOG = LOADED.site, LOADED.catalog
HEADER = ",".join(names[0] for names in COLUMNS.values())
GOOD = [
    "260000000001,2026/11/04 09:12:03,T1,00012,123456,VISA,売上,300,6,294,,2026/12/15",
    "260000000002,2026-11-04 10:00,T1,00013,,Suica,売上,455,10,445,,2026-12-15",
    '260000000003,2026/11/05 14:30:00,T2,00007,,PayPay,売上,"1,300",37,"1,263",,2026/12/15',
    "260000000004,2026/11/06 09:00:00,T1,00014,123456,VISA,返品,300,6,294,260000000001,2026/12/15",
]


def csv_bytes(rows: list[str], *, header: str = HEADER, encoding: str = "utf-8") -> bytes:
    return ("\r\n".join([header, *rows]) + "\r\n").encode(encoding)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "central.db")
    yield s
    s.close()


def refused(data: bytes, month: str | None = "2026-11") -> list[tuple[int, str]]:
    with pytest.raises(StatementError) as info:
        parse_statement(data, CATALOG, month=month)
    return info.value.errors


def nothing_imported(store) -> bool:
    return all(store.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0
               for t in ("statement_imports", "statement_lines"))


def test_shift_jis_and_utf8_with_and_without_bom_read_the_same(store):
    utf8 = csv_bytes(GOOD)
    sjis = csv_bytes(GOOD, encoding="cp932")
    bom = b"\xef\xbb\xbf" + utf8
    assert utf8 != sjis
    parsed = {enc: parse_statement(data, CATALOG, month="2026-11") for enc, data in
              (("utf-8", utf8), ("cp932", sjis), ("utf-8-sig", bom))}
    assert {enc: p.encoding for enc, p in parsed.items()} == {"utf-8": "utf-8", "cp932": "cp932", "utf-8-sig": "utf-8-sig"}
    assert parsed["utf-8"].lines == parsed["cp932"].lines == parsed["utf-8-sig"].lines
    lines = parsed["cp932"].lines
    assert [x.brand for x in lines] == ["visa", "transit_ic", "paypay", "visa"]
    assert [x.type for x in lines] == ["sale", "sale", "sale", "refund"]
    assert (lines[2].gross, lines[2].net) == (1300, 1263)
    assert lines[3].original_agent_txn_id == "260000000001"
    assert lines[1].txn_at.isoformat() == "2026-11-04T10:00:00+09:00"
    result = import_statement(store, sjis, CATALOG, source="agent", month="2026-11", filename="s.csv")
    assert result.created and result.encoding == "cp932" and result.line_count == 4
    assert "cp932" in result.message
    row = store.conn.execute("SELECT * FROM statement_imports").fetchone()
    assert (row["sales_gross"], row["refunds_gross"], row["fee_total"], row["net_total"]) == (2055, 300, 47, 1708)


def test_english_headers_in_any_order_are_accepted():
    keys = list(COLUMNS)
    order = keys[::-1]
    rows = [",".join(reversed(r.replace('"1,300"', "1300").replace('"1,263"', "1263").split(","))) for r in GOOD]
    parsed = parse_statement(csv_bytes(rows, header=",".join(order)), CATALOG)
    assert len(parsed.lines) == 4 and parsed.lines[2].gross == 1300


@pytest.mark.parametrize("drop", ["取引ID", "承認番号", "手数料"])
def test_a_missing_column_is_refused_at_the_header(store, drop):
    header = ",".join(n for n in HEADER.split(",") if n != drop)
    data = csv_bytes([], header=header)
    errors = refused(data)
    assert errors == [(1, f"missing column {drop} ({next(v[1] for v in COLUMNS.values() if v[0] == drop)})")]
    with pytest.raises(StatementError, match="line 1: missing column"):
        import_statement(store, data, CATALOG, source="agent", month="2026-11")
    assert nothing_imported(store)


def test_an_unknown_column_is_refused_with_the_expected_ones():
    errors = refused(csv_bytes([], header=HEADER + ",備考"))
    assert len(errors) == 1 and errors[0][0] == 1 and "unknown column '備考' (column 13)" in errors[0][1]


def test_every_bad_row_is_named_by_its_line_and_nothing_is_half_imported(store):
    rows = [
        GOOD[0],                                                                              # line 2: fine
        "260000000001,2026/11/04 09:13:00,T1,00015,123457,VISA,売上,300,6,294,,2026/12/15",     # 3: duplicate id
        "260000000005,2026/11/04 09:14:00,T1,00016,123458,VISA,売上,300,-6,306,,2026/12/15",    # 4: negative fee
        "260000000006,2026/11/04 09:15:00,T1,00017,123459,VISA,売上,300.5,6,294.5,,2026/12/15",  # 5: not integer
        "260000000007,2026/11/31 09:16:00,T1,00018,123460,VISA,売上,300,6,294,,2026/12/15",     # 6: no 31 Nov
        "260000000008,2026/11/04 09:17:00,T1,00019,123461,VISA,売上,300,6,290,,2026/12/15",     # 7: 300 ≠ 290 + 6
        "260000000009,2026/11/04 09:18:00,T1,00020,123462,VISA,値引,300,6,294,,2026/12/15",     # 8: unknown type
        "260000000010,2026/11/04 09:19:00,T1,00021,123463,Zcard,売上,300,6,294,,2026/12/15",    # 9: unknown brand
        "260000000011,2026/11/04 09:20:00,T1,00022,123464,VISA,返品,300,6,294,,2026/12/15",     # 10: no original
        "260000000012,2026/12/01 09:00:00,T1,00001,123465,VISA,売上,300,6,294,,2027/01/15",     # 11: next month
        "260000000013,2026/11/04 09:21:00,T1,00023,123466,VISA,売上,abc,6,294,,2026/12/15",     # 12: not a number
        "260000000014,2026/11/04 09:22:00,T1,00024,123467,VISA,売上,300,6,294,,2026/12/15,x",  # 13: extra field
    ]
    data = csv_bytes(rows)
    with pytest.raises(StatementError) as info:
        import_statement(store, data, CATALOG, source="agent", month="2026-11")
    got: dict[int, str] = {}
    for line, message in info.value.errors:
        got[line] = got.get(line, "") + message + "; "
    assert sorted(got) == list(range(3, 14))
    assert "duplicate of line 2" in got[3]
    assert "手数料 -6 is negative" in got[4]
    assert "'300.5' is not a whole number of yen" in got[5]
    assert "2026/11/31 09:16:00" in got[6] and "not a date and time" in got[6]
    assert "取引金額 300 ≠ 入金額 290 + 手数料 6" in got[7]
    assert "unknown 取引区分 '値引'" in got[8]
    assert "unknown brand 'Zcard'" in got[9]
    assert "元取引ID" in got[10]
    assert "after the statement month 2026-11" in got[11]
    assert "'abc' is not a whole number of yen" in got[12]
    assert "13 fields, the header has 12" in got[13]
    assert "nothing imported" in str(info.value) and "line 3:" in str(info.value)
    assert nothing_imported(store)
    # The good row alone imports.
    assert import_statement(store, csv_bytes([GOOD[0]]), CATALOG, source="agent", month="2026-11").line_count == 1


def test_line_numbers_count_physical_lines_and_skip_blank_ones():
    rows = [GOOD[0], "", GOOD[1].replace("Suica", "???"), ""]
    assert refused(csv_bytes(rows)) == [(4, "unknown brand '???' (add it to the brand's terminal_names in brands.toml)")]


def test_neither_utf8_nor_shift_jis_is_refused_with_its_line():
    data = csv_bytes([GOOD[0]]) + b"\x80\xff\xfe,,,\r\n"
    assert refused(data) == [(3, "neither UTF-8 nor Shift_JIS (cp932): save the file as UTF-8 or Shift_JIS")]
    assert decode("取引ID".encode("cp932"))[1] == "cp932"
    with pytest.raises(StatementError, match="empty"):
        parse_statement(b"", CATALOG)


def test_agent_brand_names_map_to_catalog_brands():
    assert brand_of(CATALOG, "ＶＩＳＡ") == "visa"
    assert brand_of(CATALOG, "mastercard") == "mastercard"
    assert brand_of(CATALOG, "PASMO") == "transit_ic"
    assert brand_of(CATALOG, "交通系電子マネー") == "transit_ic"
    assert brand_of(CATALOG, "American Express") == "amex"
    assert brand_of(CATALOG, "楽天Edy") == "edy"
    assert brand_of(CATALOG, "アメリカン・エキスプレス") == "amex"
    assert brand_of(CATALOG, "d払い") == "d_barai"
    assert brand_of(CATALOG, "no such card") is None


def test_the_generator_is_deterministic_and_follows_the_contract(store):
    synthetic_ledger(store, SITE, CATALOG, "2026-11", per_day=30, seed=5)
    a = generate(store, CATALOG, "2026-11", seed=5, faults=True)
    b = generate(store, CATALOG, "2026-11", seed=5, faults=True)
    assert a.to_bytes("cp932") == b.to_bytes("cp932") and a.faults == b.faults
    assert generate(store, CATALOG, "2026-11", seed=6).to_bytes() != generate(store, CATALOG, "2026-11", seed=5).to_bytes()
    clean = parse_statement(generate(store, CATALOG, "2026-11", seed=5).to_bytes("cp932"), CATALOG, month="2026-11")
    assert clean.encoding == "cp932" and len(clean.lines) > 100
    for x in clean.lines:
        assert x.fee == CATALOG.settlement.fee(x.gross, CATALOG.brands[x.brand].fee_category)
        assert x.deposit_date.isoformat() == "2026-12-15"
    with pytest.raises(ValueError, match="unknown fault"):
        generate(store, CATALOG, "2026-11", faults=["typo"])
