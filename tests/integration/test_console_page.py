"""The counter console (/console/1) in a real browser: Debian's headless Chromium,
driven by Playwright, against a real central process (with the repo's site, fee
catalog and brands), a real Mosquitto and the real edge daemon of counter 1
(in-process, cash only: no terminal).  Checks what the person at the counter sees.

Set MADOGUCHI_SCREENSHOTS=1 to (re)write docs/img/console.png.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.support.browser import require_chromium

require_chromium()

from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "console.png"


@pytest.fixture
def page(new_page):
    return new_page(width=1280, height=800)


def open_console(page: Page, central, counter: str = "1") -> None:
    central.login_browser(page, "counter")  # counter staff (docs/security.md "Web login")
    page.goto(f"{central.url}/console/{counter}")
    # The first poll has answered and the fee catalog is loaded.
    expect(page.locator("#h-counter")).to_contain_text(f"{counter}番窓口")
    expect(page.locator("#item option[value=juminhyo]")).to_have_count(1)


def add_item(page: Page, name: str, code: str, quantity: int) -> None:
    page.locator("#filter").fill(name)
    page.locator("#item").select_option(code)
    page.locator("#qty").fill(str(quantity))
    page.get_by_role("button", name="追加").click()


def method(page: Page, ja: str):
    return page.locator("#methods button", has_text=ja)


def test_cash_charge_from_the_form_to_the_receipt(central_factory, edges, page):
    central = central_factory()
    edges("counter-1", "1")
    central.issue("tennyu", "juminhyo")  # 転入届 + 住民票: two stations
    open_console(page, central)
    expect(page.locator("#staff")).to_have_text(central.staff_id("counter"))  # the login's, recorded below

    # 次の方: the ticket is called here and its itinerary lit at this counter.
    page.get_by_role("button", name="次の方").click()
    expect(page.locator("#q-msg")).not_to_be_empty()
    expect(page.locator("#t-number")).to_have_text("1")
    expect(page.locator("#t-state")).to_contain_text("呼出中")
    stations = page.locator("#t-line .station")
    expect(stations).to_have_count(3)  # 住民異動, 証明書発行, terminus
    expect(stations.nth(0)).to_have_class(re.compile(r"\bnow\b"))
    expect(stations.nth(0)).to_contain_text("住民異動")
    expect(stations.nth(1)).to_contain_text("証明書発行")

    # 住民票の写し ×2, cash, 1,000 yen handed over: the change is shown as it is typed.
    add_item(page, "住民票", "juminhyo", 2)
    expect(page.locator("#total")).to_have_text("600 円")
    method(page, "現金").click()
    page.locator("#tendered").fill("1000")
    expect(page.locator("#change")).to_have_text("おつり 400 円")

    # The counter flow of this item paid in cash, as the catalog has it.
    steps = central.get("/api/v1/fees/juminhyo/flow?method=cash")["steps"]
    assert len(steps) >= 4
    expect(page.locator("#flow-steps li")).to_have_text(steps)
    expect(page.locator("#flow-title")).to_have_text("住民票の写し · 現金")
    page.locator("#flow-steps li").nth(0).click()  # ticked, and stays ticked while paying
    expect(page.locator("#flow-steps li").nth(0)).to_have_class("ticked")

    page.get_by_role("button", name="請求する").click()
    pay = page.locator("#pay")
    expect(pay.locator(".pstate")).to_contain_text("お支払い待ち")  # at the counter, waiting for PAY
    expect(pay.locator(".pamount")).to_have_text("600 円")
    expect(page.locator("#lines-body tr[data-code]")).to_have_count(0)  # the form is ready for the next charge
    expect(page.locator("#flow-steps li")).to_have_text(steps)  # the steps stay while it is paid
    expect(page.locator("#flow-steps li").nth(0)).to_have_class("ticked")

    pay.get_by_role("button", name="決済開始").click()
    # (8 s, not 5: the edge may hold a new payment event back for up to
    # OUTBOX_RESEND_S when its outbox row id is reused; see docs/console.md.)
    expect(pay.locator(".pstate")).to_contain_text("完了", timeout=8000)
    expect(pay).to_contain_text("おつり 400 円")

    row = page.locator("#today-body tr").first
    expect(row).to_contain_text("住民票の写し×2")
    expect(row).to_contain_text("600 円")
    expect(row).to_contain_text("現金")
    expect(row.locator("td.state")).to_have_text("完了")
    expect(row.locator("td").nth(1)).not_to_have_text("—")  # a receipt number
    expect(page.locator("#today-sum")).to_contain_text("完了 1 件 600 円")

    # The ledger says the same as the page.
    [paid] = central.get("/api/v1/payments?counter=1")
    assert (paid["state"], paid["amount"], paid["tendered"], paid["change"], paid["ticket"], paid["staff_id"]) == (
        "approved", 600, 1000, 400, 1, central.staff_id("counter"))

    if os.environ.get("MADOGUCHI_SCREENSHOTS") == "1":
        # The next visitor's charge half-way: two items, cash, tendered.
        add_item(page, "印鑑", "inkan-shomei", 1)
        add_item(page, "住民票", "juminhyo", 1)
        method(page, "現金").click()
        page.locator("#tendered").fill("1000")
        for i in range(3):
            page.locator("#flow-steps li").nth(i).click()
        page.mouse.move(0, 0)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
        page.get_by_role("button", name="削除").first.click()
        page.get_by_role("button", name="削除").first.click()

    # 取消 (same-day void) needs a reason; the sale is then shown as voided.
    row.get_by_role("button", name="取消").click()
    dialog = page.locator("#void-dlg")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="取消する").click()
    expect(page.locator("#void-err")).to_contain_text("理由")
    page.locator("#void-reason").fill("金額・科目の誤り")
    dialog.get_by_role("button", name="取消する").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#today-msg")).to_contain_text("取消")
    sale = page.locator("#today-body tr", has_text="住民票の写し×2")
    expect(sale.locator("td.state")).to_have_text("取消済", timeout=8000)
    expect(page.locator("#today-sum")).to_contain_text("完了 0 件 0 円")


def test_manual_terminal_staff_confirm_the_card_payment(central_factory, edges, page):
    central = central_factory()
    edges("counter-1", "1", extra='[terminal]\ndriver = "manual"\n')
    open_console(page, central)

    add_item(page, "犬", "inu-toroku", 1)
    method(page, "クレジット").click()
    page.locator("#brand").select_option("visa")
    expect(page.locator("#cash-row")).to_be_hidden()
    page.get_by_role("button", name="請求する").click()
    pay = page.locator("#pay")
    expect(pay.locator(".pstate")).to_contain_text("お支払い待ち")
    expect(pay.locator(".pmeta").first).to_contain_text("クレジット · VISA")

    pay.get_by_role("button", name="決済開始").click()
    # A stand-alone terminal: the payment runs while staff work the terminal by hand.
    expect(pay.locator(".pstate")).to_contain_text("決済中", timeout=8000)
    expect(pay.get_by_role("button", name="中止")).to_be_visible()
    pay.locator("#slip-no").fill("10234")
    pay.locator("#approval-no").fill("A77K01")
    pay.get_by_role("button", name="決済できた").click()
    expect(pay.locator(".pstate")).to_contain_text("完了", timeout=8000)
    expect(pay).to_contain_text("伝票番号 10234 · 承認番号 A77K01")
    row = page.locator("#today-body tr").first
    expect(row).to_contain_text("犬の登録×1")
    expect(row).to_contain_text("3,000 円")
    expect(row).to_contain_text("クレジット · VISA")
    [paid] = central.get("/api/v1/payments?counter=1")
    assert (paid["state"], paid["slip_no"], paid["approval_no"], paid["terminal"]) == ("approved", "10234", "A77K01", "manual")


def test_methods_follow_the_items_and_refusals_are_shown(central_factory, page):
    central = central_factory()  # no edge needed: nothing here reaches the counter
    open_console(page, central)

    # An item paid any way: every method is offered; credit chosen first...
    add_item(page, "住民票", "juminhyo", 1)
    expect(page.locator("#methods button")).to_have_count(4)
    method(page, "クレジット").click()
    expect(page.locator("#brand-row")).to_be_visible()
    expect(page.locator("#brand option", has_text="VISA")).to_have_count(1)
    expect(page.locator("#brand option", has_text="PayPay")).to_have_count(0)  # a QR brand, not credit
    # ...then a cash-only item joins the charge: the card methods go, credit is unselected.
    add_item(page, "マイナンバー", "mynumber-saikofu", 1)
    expect(page.locator("#methods button")).to_have_count(1)
    expect(method(page, "現金")).to_be_visible()
    expect(method(page, "クレジット")).to_have_count(0)
    expect(method(page, "電子マネー")).to_have_count(0)
    expect(method(page, "QRコード決済")).to_have_count(0)
    expect(page.locator("#methods-note")).to_contain_text("クレジット")
    expect(page.locator("#brand-row")).to_be_hidden()
    expect(page.get_by_role("button", name="請求する")).to_be_disabled()  # no method chosen
    expect(page.locator("#total")).to_have_text("1,300 円")

    # Too little cash handed over: central refuses, the page says why, nothing is cleared.
    method(page, "現金").click()
    page.locator("#tendered").fill("1000")
    expect(page.locator("#change")).to_have_text("不足 300 円")
    page.get_by_role("button", name="請求する").click()
    err = page.locator("#charge-err")
    expect(err).to_be_visible()
    expect(err).to_contain_text("お預かり金額 1,000 円が合計 1,300 円に足りません")
    expect(page.locator("#lines-body tr[data-code]")).to_have_count(2)
    expect(page.locator("#tendered")).to_have_value("1000")

    # A quantity of 0 typed in a line: refused by the API's request check, explained.
    page.locator("#lines-body tr[data-code=juminhyo] input").fill("0")
    page.locator("#tendered").fill("2000")
    page.get_by_role("button", name="請求する").click()
    expect(err).to_contain_text("数量が不正です")
    expect(page.locator("#lines-body tr[data-code=juminhyo] input")).to_have_value("0")
    # The same through the page's own fetch: a 422 with nothing charged.
    status = page.evaluate(
        """async () => (await fetch('/api/v1/counters/1/charges', {method: 'POST',
             headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({lines: [{code: 'juminhyo', quantity: 0}], method: 'cash', payment_id: crypto.randomUUID()})})).status"""
    )
    assert status == 422
    assert central.get("/api/v1/payments?counter=1") == []

    # The flow of the chosen item for the chosen method: cash-only item, cash steps.
    page.get_by_role("button", name="マイナンバーカード再交付").click()
    steps = central.get("/api/v1/fees/mynumber-saikofu/flow?method=cash")["steps"]
    expect(page.locator("#flow-steps li")).to_have_text(steps)
    expect(page.locator("#flow-steps")).to_contain_text("手数料は現金のみであることをお伝えする")


def test_stale_banner_while_central_does_not_answer(central_factory, page):
    central = central_factory()
    open_console(page, central)
    stale = page.locator("#stale")
    expect(stale).to_be_hidden()
    central.kill(signal.SIGSTOP)  # hangs: connections are accepted, nothing answers
    try:
        expect(stale).to_be_visible(timeout=6000)
        expect(stale).to_contain_text("更新できません")
        expect(stale).to_contain_text("not updated")
    finally:
        central.kill(signal.SIGCONT)
    expect(stale).to_be_hidden(timeout=6000)


def test_console_lists_the_counters(central_factory, page):
    central = central_factory()
    central.login_browser(page, "counter")
    page.goto(f"{central.url}/console")
    links = page.locator("#chooser a")
    expect(links).to_have_count(3)
    expect(links.first).to_contain_text("1番窓口")
    links.nth(2).click()
    expect(page).to_have_url(f"{central.url}/console/3")
    expect(page.locator("#h-counter")).to_contain_text("3番窓口")
    # An unknown counter: said plainly, with the way back.
    page.goto(f"{central.url}/console/99")
    expect(page.locator("#fatal")).to_contain_text("窓口 99 はありません")
    expect(page.locator("#fatal a")).to_have_attribute("href", "/console")


def test_without_a_fee_catalog_the_queue_still_works(central_factory, page, tmp_path):
    site = tmp_path / "site.toml"
    site.write_bytes(Path(__file__).resolve().parents[2].joinpath("config", "site.toml").read_bytes())
    central = central_factory(site=site)  # not the repo's site: no fees_file, no payments
    central.issue("juminhyo")
    central.login_browser(page, "counter")
    page.goto(f"{central.url}/console/1")
    expect(page.locator("#charge-off")).to_contain_text("料金表が設定されていません")
    expect(page.locator("#charge-form")).to_be_hidden()
    page.get_by_role("button", name="次の方").click()
    expect(page.locator("#t-number")).to_have_text("1")
    expect(page.locator("#stale")).to_be_hidden()
