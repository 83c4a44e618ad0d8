"""The fee catalog and the payment brands: the shipped files load with the
reference figures of design §7 and the brand rules of reference.md, charges are
priced in whole yen, and every mistake in a catalog file stops start-up with a
ConfigError naming the file, the key and a hint."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bus.configfile import ConfigError, load_toml
from central.config import Site
from central.fees import (
    FeeCatalog,
    FeeError,
    Settlement,
    UnknownCode,
    load_catalog,
    site_services,
)

CONFIG = Path(__file__).resolve().parents[2] / "config"
FEES = (CONFIG / "fees.toml").read_text(encoding="utf-8")
BRANDS = (CONFIG / "brands.toml").read_text(encoding="utf-8")

#: design §7, in yen.
REFERENCE_PRICES = {
    "juminhyo": 300,
    "inkan-shomei": 300,
    "inkan-toroku": 350,
    "koseki-zenbu": 450,
    "joseki": 750,
    "kaisei-genkoseki": 750,
    "juri-shomei": 350,
    "mibun-shomei": 300,
    "shotoku-kazei": 300,
    "nozei-shomei": 300,
    "hyoka-shomei": 300,
    "kaoku-shomei": 1300,
    "inu-toroku": 3000,
    "kansatsu-saikofu": 1600,
    "chusha-zumihyo": 550,
    "chusha-zumihyo-saikofu": 340,
    "sodai-500": 500,
    "sodai-1000": 1000,
    "sodai-1500": 1500,
    "toshikeikakuzu-color": 1200,
    "toshikeikakuzu-mono": 500,
    "joho-copy-mono": 10,
    "joho-copy-color": 20,
    "mynumber-saikofu": 1000,
}


@pytest.fixture(scope="module")
def catalog() -> FeeCatalog:
    site = load_toml(CONFIG / "site.toml", Site)
    return load_catalog(CONFIG / "fees.toml", CONFIG / "brands.toml", services=site_services(site))


# ------------------------------------------------------------------ the shipped catalog


def test_the_shipped_items_carry_the_reference_prices(catalog):
    assert len(catalog.items) >= 20
    assert {code: item.unit_price for code, item in catalog.items.items()} == REFERENCE_PRICES
    assert all(type(item.unit_price) is int for item in catalog.items.values())


def test_accounts_are_the_municipal_revenue_accounts(catalog):
    accounts = {code: (item.account, item.account_code) for code, item in catalog.items.items()}
    assert accounts["juminhyo"] == ("総務手数料", "13-02-01")
    assert accounts["inu-toroku"] == ("衛生手数料", "13-02-03")
    assert accounts["sodai-1500"] == ("衛生手数料", "13-02-03")
    assert accounts["toshikeikakuzu-color"] == ("土木手数料", "13-02-07")
    assert accounts["joho-copy-mono"] == ("雑入", "21-05-01")
    assert catalog.account_of("juminhyo").path_ja == "使用料及び手数料 › 手数料 › 総務手数料"
    assert catalog.account_of("joho-copy-color").kan == "諸収入"


def test_services_and_methods(catalog):
    assert catalog.item("inu-toroku").service == "inu"
    assert catalog.item("juminhyo").service == "shomei"
    assert catalog.item("mynumber-saikofu").methods == ("cash",)
    assert catalog.item("juminhyo").methods == ("cash", "credit", "emoney", "qr")
    assert list(catalog.methods) == ["cash", "credit", "emoney", "qr"]


def test_every_allowed_method_has_a_full_flow(catalog):
    for code, item in catalog.items.items():
        f = item.flow
        assert set(f.steps) == set(item.methods) == set(f.receipt), code
        assert set(item.methods) <= set(f.cancel), code
        assert f.prepare and f.hand_over and f.keep, code
        assert bool(f.refund) == any(m != "cash" for m in item.methods), code
        for method in item.methods:
            steps = catalog.flow(code, method)
            assert steps[: len(f.prepare)] == list(f.prepare)
            assert steps[len(f.prepare) : -2] == list(f.steps[method])
            assert steps[-2].endswith("をお渡しする") and steps[-1] == f.keep


def test_the_credit_flow_of_a_certificate_reads_like_the_laminated_card(catalog):
    steps = catalog.flow("juminhyo", "credit")
    for expected in ("端末の「クレジット」を押す", "金額を入力し確定", "暗証番号入力またはサイン", "利用控えを2枚印刷"):
        assert any(expected in s for s in steps), expected
    assert steps[-2] == "住民票の写し・利用控え（お客様控え）をお渡しする"
    assert catalog.item("juminhyo").flow.form == "住民票の写し等交付請求書"
    assert catalog.flow("juminhyo", "cash")[-2] == "住民票の写し・領収書をお渡しする"


def test_dogs_get_the_slip_the_receipt_and_the_tag(catalog):
    # 岩槻区: 「クレジットを押す → 取引伝票とレシートと鑑札を渡す」
    assert catalog.hand_over("inu-toroku", "credit") == ["鑑札", "犬の飼い方のしおり", "利用控え（お客様控え）", "領収書"]
    assert catalog.hand_over("chusha-zumihyo", "cash") == ["注射済票", "注射済証（お返しする）", "領収書"]


def test_a_flow_for_a_method_the_item_does_not_allow(catalog):
    with pytest.raises(FeeError, match="mynumber-saikofu cannot be paid by credit"):
        catalog.flow("mynumber-saikofu", "credit")
    with pytest.raises(FeeError, match="unknown payment method 'credt' \\(did you mean 'credit'\\?\\)"):
        catalog.flow("juminhyo", "credt")


def test_a_charge_flow_says_shared_steps_once(catalog):
    steps = catalog.charge_flow(["juminhyo", "inkan-shomei"], "qr")
    assert steps.count("端末の「コード決済」を押す") == 1
    assert steps[-2] == "住民票の写し・印鑑登録証明書・印鑑登録証（お預かりしたカード）・利用控え（お客様控え）をお渡しする"


# ------------------------------------------------------------------ brands


def test_the_brands_by_method(catalog):
    ids = {m: [b.id for b in catalog.brands_for(m)] for m in catalog.methods}
    assert ids["cash"] == []
    assert ids["credit"] == ["visa", "mastercard", "jcb", "amex", "diners", "unionpay"]
    assert ids["emoney"] == ["transit_ic", "nanaco", "waon", "edy", "id", "quicpay"]
    assert len(ids["qr"]) == 12 and {"paypay", "d_barai", "unionpay_qr", "j_coin_pay"} <= set(ids["qr"])


def test_e_money_void_and_unknown_rules(catalog):
    b = catalog.brands
    assert b["edy"].void == b["nanaco"].void == "never"
    assert not b["edy"].voidable and not b["nanaco"].voidable
    assert (b["waon"].void, b["waon"].void_days) == ("days", 14)
    assert (b["id"].void, b["id"].void_days) == ("days", 60)
    assert (b["quicpay"].void, b["quicpay"].void_days) == ("days", 60)
    assert b["transit_ic"].void == "last_only"
    assert (b["transit_ic"].unknown_outcome, b["transit_ic"].investigate_days) == ("investigate", 55)
    assert b["edy"].unknown_outcome == b["waon"].unknown_outcome == "settles_on_next_touch"
    assert b["nanaco"].unknown_outcome == "booked_paid"
    assert b["id"].unknown_outcome == b["quicpay"].unknown_outcome == "not_paid"
    for brand in b.values():
        if brand.method in ("credit", "qr"):
            assert (brand.void, brand.unknown_outcome) == ("same_day", "ask_terminal"), brand.id


def test_cancel_follows_the_brand(catalog):
    edy = catalog.cancel_flow("juminhyo", "emoney", "edy")
    assert edy[0] == "楽天Edy：端末では取消できません。返金（返金伝票）で対応します。"
    assert edy[1] == "住民票の写し・利用控え（お客様控え）を返していただく"
    assert edy[2:] == list(catalog.item("juminhyo").flow.refund)
    assert any("返金伝票" in s for s in edy[2:])
    waon = catalog.cancel_flow("juminhyo", "emoney", "waon")
    assert "14日以内" in waon[0]
    assert waon[2:] == list(catalog.item("juminhyo").flow.cancel["emoney"])
    assert "直前の取引" in catalog.cancel_flow("juminhyo", "emoney", "transit_ic")[0]
    assert catalog.cancel_flow("juminhyo", "cash")[0] == "住民票の写し・領収書を返していただく"
    with pytest.raises(FeeError, match="paid by credit, not emoney"):
        catalog.cancel_flow("juminhyo", "emoney", "visa")
    assert "55日以内" in catalog.brands["transit_ic"].unknown_note_ja


@pytest.mark.parametrize(
    ("name", "brand"),
    [
        ("VISA", "visa"),
        ("visa", "visa"),
        ("ＶＩＳＡ", "visa"),  # full width
        ("Suica", "transit_ic"),
        ("ICOCA", "transit_ic"),
        ("楽天Edy", "edy"),
        ("Rakuten Edy", "edy"),
        ("UnionPay", "unionpay"),
        ("UnionPay QR", "unionpay_qr"),
        ("AUPAY", "au_pay"),
        ("J-Coin Pay", "j_coin_pay"),
        ("QUICPay+", "quicpay"),
    ],
)
def test_brand_for_terminal_name(catalog, name, brand):
    assert catalog.brand_for_terminal_name(name).id == brand


def test_an_unknown_terminal_name_is_none(catalog):
    assert catalog.brand_for_terminal_name("Discover") is None
    assert catalog.brand_for_terminal_name("") is None


def test_settlement_rates_are_decimals_and_fees_round_by_contract(catalog):
    s = catalog.settlement
    assert s.rates == {"credit": Decimal("0.022"), "emoney": Decimal("0.022"), "qr": Decimal("0.029")}
    assert s.rounding == "floor"
    assert s.fee(10_001, "qr") == 290  # 290.029
    assert s.fee(0, "credit") == 0
    half = {"rates": {"credit": "0.022"}}  # 250 × 0.022 = 5.5
    assert Settlement.model_validate({"rounding": "floor", **half}).fee(250, "credit") == 5
    assert Settlement.model_validate({"rounding": "round_half_up", **half}).fee(250, "credit") == 6
    assert Settlement.model_validate({"rounding": "ceil", **half}).fee(251, "credit") == 6
    with pytest.raises(UnknownCode, match="did you mean 'credit'"):
        s.fee(100, "credits")
    with pytest.raises(FeeError):
        s.fee(1.5, "credit")


# ------------------------------------------------------------------ pricing a charge


def test_price_computes_each_line(catalog):
    lines = catalog.price([("juminhyo", 2), ("inkan-shomei", 1), ("joho-copy-mono", 120)])
    assert [(l.code, l.quantity, l.unit_price, l.amount) for l in lines] == [
        ("juminhyo", 2, 300, 600),
        ("inkan-shomei", 1, 300, 300),
        ("joho-copy-mono", 120, 10, 1200),
    ]
    assert sum(l.amount for l in lines) == 2100
    assert (lines[0].name_ja, lines[0].account, lines[0].account_code, lines[0].unit_ja) == (
        "住民票の写し",
        "総務手数料",
        "13-02-01",
        "通",
    )
    assert lines[2].account == "雑入"


@pytest.mark.parametrize("quantity", [0, -1, 1.5, 2.0, "2", True, None, 21])
def test_price_rejects_bad_quantities(catalog, quantity):
    with pytest.raises(FeeError, match="juminhyo: quantity"):
        catalog.price([("juminhyo", quantity)])


def test_price_rejects_unknown_codes_with_a_hint(catalog):
    with pytest.raises(UnknownCode, match=r"unknown fee item 'juminhyou' \(did you mean 'juminhyo'\?\)"):
        catalog.price([("juminhyou", 1)])
    with pytest.raises(KeyError, match="did you mean 'juminhyo'"):
        catalog.item("住民票の写し")


def test_price_rejects_malformed_charges(catalog):
    with pytest.raises(FeeError, match="listed twice"):
        catalog.price([("juminhyo", 1), ("juminhyo", 1)])
    with pytest.raises(FeeError, match="at least one"):
        catalog.price([])
    with pytest.raises(FeeError, match="pair"):
        catalog.price([("juminhyo",)])


def test_allowed_methods_is_the_intersection(catalog):
    assert catalog.allowed_methods(["juminhyo", "inu-toroku"]) == {"cash", "credit", "emoney", "qr"}
    assert catalog.allowed_methods(["juminhyo", "mynumber-saikofu"]) == {"cash"}
    with pytest.raises(FeeError):
        catalog.allowed_methods([])


# ------------------------------------------------------------------ broken files


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def broken(tmp_path: Path, fees: str = FEES, brands: str = BRANDS, services: set[str] | None = None) -> str:
    """Load the texts as catalog files; return the ConfigError's message."""
    (tmp_path / "fees.toml").write_text(fees, encoding="utf-8")
    (tmp_path / "brands.toml").write_text(brands, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_catalog(tmp_path / "fees.toml", tmp_path / "brands.toml", services=services)
    return str(info.value)


def test_an_unknown_method(tmp_path):
    text = replace_once(FEES, 'methods = ["cash"] ', 'methods = ["cash", "credt"] ')
    message = broken(tmp_path, text)
    assert str(tmp_path / "fees.toml") in message
    assert "items.3.methods.1: mynumber-saikofu: unknown method 'credt' (did you mean 'credit'?)" in message


def test_a_duplicate_code(tmp_path):
    text = replace_once(FEES, 'code = "inkan-shomei"', 'code = "juminhyo"')
    assert "items.1.code: code 'juminhyo' is used twice (first at items.0)" in broken(tmp_path, text)


@pytest.mark.parametrize("price", ["0", "-300", "300.0", '"300"', "true"])
def test_a_price_that_is_not_a_positive_integer(tmp_path, price):
    text = FEES.replace("unit_price = 3000\n", f"unit_price = {price}\n")
    message = broken(tmp_path, text)
    assert "items.13.unit_price:" in message and "[item 'inu-toroku']" in message


def test_steps_for_a_method_the_item_does_not_allow(tmp_path):
    text = replace_once(FEES, 'methods = ["cash"] ', 'methods = ["cash"]\nsteps.qr = ["端末の「コード決済」を押す"] ')
    message = broken(tmp_path, text)
    assert "items.3.steps.qr: mynumber-saikofu: steps for 'qr', but the item's methods are [cash]" in message


def test_an_unknown_service(tmp_path):
    message = broken(tmp_path, services={"shomei", "inu"})
    assert "items.2.service: inkan-toroku: unknown service 'juminido'" in message
    assert "(the site has: inu, shomei)" in message
    text = FEES.replace('service = "inu"', 'service = "inuu"')
    assert "unknown service 'inuu' (did you mean 'inu'?)" in broken(tmp_path, text, services={"inu", "shomei", "juminido"})


def test_an_allowed_method_without_steps(tmp_path):
    minimal = """
[[accounts]]
code = "13-02-01"
kan = "使用料及び手数料"
kou = "手数料"
moku = "総務手数料"

[[items]]
code = "juminhyo"
name_ja = "住民票の写し"
name_en = "Certificate of residence"
unit_price = 300
unit_ja = "通"
account = "総務手数料"
account_code = "13-02-01"
service = "shomei"
methods = ["cash", "qr"]
max_quantity = 20
prepare = ["証明書を発行する"]
hand_over = ["住民票の写し"]
keep = "請求書は交付済の箱へ"
steps.cash = ["現金をお預かりする"]
receipt.cash = "receipt"
receipt.qr = "slip"
cancel.cash = ["現金をお返しする"]
cancel.qr = ["端末で取消する"]
refund = ["返金伝票で返金する"]
"""
    message = broken(tmp_path, minimal)
    assert "items.0.steps: juminhyo: method 'qr' is allowed but has no steps" in message
    empty = minimal.replace('steps.cash = ["現金をお預かりする"]', 'steps.cash = []\nsteps.qr = ["読み取る"]')
    assert "items.0.steps.cash: Tuple should have at least 1 item" in broken(tmp_path, empty)
    bare = minimal.replace('prepare = ["証明書を発行する"]\n', "").replace('refund = ["返金伝票で返金する"]\n', "")
    message = broken(tmp_path, bare)
    assert "items.0: juminhyo: no 'prepare'" in message and "items.0: juminhyo: no 'refund'" in message


def test_cancel_keys_name_methods_or_brands(tmp_path):
    text = replace_once(FEES, 'hand_over = ["住民票の写し"]', 'hand_over = ["住民票の写し"]\ncancel.edyy = ["返金する"]')
    assert "items.0.cancel.edyy: juminhyo: unknown method or brand 'edyy' (did you mean 'edy'?)" in broken(tmp_path, text)
    ok = replace_once(FEES, 'hand_over = ["住民票の写し"]', 'hand_over = ["住民票の写し"]\ncancel.edy = ["係長を呼ぶ"]')
    (tmp_path / "fees.toml").write_text(ok, encoding="utf-8")
    (tmp_path / "brands.toml").write_text(BRANDS, encoding="utf-8")
    catalog = load_catalog(tmp_path / "fees.toml", tmp_path / "brands.toml")
    assert catalog.cancel_flow("juminhyo", "emoney", "edy")[2:] == ["係長を呼ぶ"]


def test_a_misspelt_key_gets_a_hint(tmp_path):
    text = replace_once(FEES, "max_quantity = 1\nuses = \"base\"\nform = \"印鑑登録申請書\"", "max_quantity = 1\nuses = \"base\"\nfrom = \"印鑑登録申請書\"")
    assert "items.2.from: unknown key 'from' (did you mean 'form'?) [item 'inkan-toroku']" in broken(tmp_path, text)
    text = replace_once(FEES, "[flows.dog]\nuses", "[flows.dog]\nuse")
    assert "flows.dog.use: unknown key 'use' (did you mean 'uses'?)" in broken(tmp_path, text)


def test_an_unknown_flow_and_a_cycle(tmp_path):
    text = replace_once(FEES, '[flows.map]\nuses = "base"', '[flows.map]\nuses = "bse"')
    assert "flows.map.uses: unknown flow 'bse' (did you mean 'base'?)" in broken(tmp_path, text)
    text = replace_once(FEES, "[flows.base]\n", '[flows.base]\nuses = "copy"\n')
    assert "flows' 'uses' form a cycle: base → copy → base" in broken(tmp_path, text)


def test_an_account_that_does_not_match_its_code(tmp_path):
    text = FEES.replace('account = "土木手数料"', 'account = "衛生手数料"')
    assert "items.20.account: toshikeikakuzu-color: account '衛生手数料' does not match account_code 13-02-07 (土木手数料)" in broken(tmp_path, text)


def test_a_method_removed_from_brands_toml(tmp_path):
    brands = BRANDS.replace('[[methods]]\nid = "qr"\nname_ja = "コード決済"\nname_en = "QR code payment"\n', "")
    message = broken(tmp_path, brands=brands)
    assert str(tmp_path / "brands.toml") in message
    assert "method 'qr' is not in [[methods]]" in message


def test_bad_brand_rules(tmp_path):
    assert 'write the rate as a decimal string, e.g. "0.022"' in broken(tmp_path, brands=BRANDS.replace('qr = "0.029"', "qr = 0.029"))
    message = broken(tmp_path, brands=replace_once(BRANDS, "void_days = 14\n", ""))
    assert "brands.8:" in message and "'void_days' is needed" in message and "[brand 'waon']" in message
    message = broken(tmp_path, brands=replace_once(BRANDS, 'terminal_names = ["JCB"]', 'terminal_names = ["JCB", "Visa"]'))
    assert "brands.2.terminal_names: jcb: terminal name 'Visa' is also a terminal name of brand 'visa'" in message
    message = broken(tmp_path, brands=BRANDS.replace('fee_category = "qr"', 'fee_category = "qrr"'))
    assert "brands.12.fee_category: paypay: no rate for fee category 'qrr' in [settlement.rates] (did you mean 'qr'?)" in message
    message = broken(tmp_path, brands=BRANDS.replace('\nvoid = "same_day"', '\nvoid = "sameday"', 1))
    assert "brands.0.void: Input should be 'same_day', 'last_only', 'days' or 'never' [brand 'visa']" in message
