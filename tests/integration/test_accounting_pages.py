"""The accounting pages in a real browser: Debian's headless Chromium driven by
Playwright, against a real central process (the repo's site, fee catalog and
brands), a real Mosquitto and the real edge daemon of counter 1 (cash).

Payments are taken the way a counter takes them (charge → the counter's Pi →
the ledger); the day sheet shows them, is closed through its own form, and
the KPI page draws its charts.
"""

from __future__ import annotations

import io
import urllib.request
import uuid

import pytest

from tests.support.browser import require_chromium
from tests.support.procs import wait_for

require_chromium()

from openpyxl import load_workbook
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


@pytest.fixture
def page(new_page):
    return new_page(width=1100, height=1000)


def cash(central, lines, tendered):
    status, sent = central.request("POST", "/api/v1/counters/1/charges", {
        "lines": [{"code": c, "quantity": q} for c, q in lines], "method": "cash", "tendered": tendered,
        "start": True, "payment_id": str(uuid.uuid4())})
    assert status == 201, sent
    pid = sent["payment_id"]
    return wait_for(lambda: (p := central.get(f"/api/v1/payments/{pid}"))["state"] == "approved" and p,
                    what=f"payment {pid} approved")


def download(central, path) -> bytes:
    req = urllib.request.Request(central.url + path, headers={"Authorization": f"Bearer {central.token('accounting')}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def test_day_sheet_shows_the_figures_and_is_closed_from_the_page(central_factory, edges, page):
    central = central_factory()
    edges("counter-1", "1")
    first = cash(central, [("juminhyo", 2), ("inkan-shomei", 1)], 1000)  # 900
    cash(central, [("inu-toroku", 1)], 3000)  # 3,000 (衛生手数料)
    wrong = cash(central, [("koseki-zenbu", 1)], 500)  # 450, voided below
    status, void = central.request("POST", f"/api/v1/payments/{wrong['payment_id']}/void",
                                   {"counter": "1", "reason": "科目違い"})
    assert status in (200, 201), void
    wait_for(lambda: central.get(f"/api/v1/payments/{wrong['payment_id']}")["state"] == "voided", what="voided")
    day = first["day"]

    central.login_browser(page, "accounting")
    page.goto(f"{central.url}/accounting/day?date={day}")
    expect(page.locator("#status")).to_contain_text("未締め")
    expect(page.locator("#revenue")).to_have_text("3,900")
    expect(page.locator("#cash-expected")).to_have_text("3,900")
    expect(page.locator("#by-account")).to_contain_text("総務手数料")
    expect(page.locator("#by-account tr", has_text="13-02-03")).to_contain_text("3,000")
    expect(page.locator("#voids tr[data-payment]")).to_have_count(1)
    expect(page.locator("#voids")).to_contain_text("取消")
    expect(page.locator("#pending")).to_contain_text("該当なし")

    # The cash count by denomination: 3,000 + 800 + 90 = 3,890 → 10 yen short.
    page.locator("#close-form summary").click()
    page.locator("input[data-yen='1000']").fill("3")
    page.locator("input[data-yen='500']").fill("1")
    page.locator("input[data-yen='100']").fill("3")
    page.locator("input[data-yen='10']").fill("9")
    expect(page.locator("#counted")).to_have_value("3890")
    expect(page.locator("#preview")).to_have_text("△10 円")
    # Who closes is the login (the field is filled in from it and cannot be changed).
    expect(page.locator("#staff")).to_have_value(central.staff_id("accounting"))
    expect(page.locator("#staff")).not_to_be_editable()
    page.get_by_role("button", name="締める / Close the day").click()

    expect(page.locator("#status")).to_contain_text("締め済")
    expect(page.locator("#over-short")).to_have_text("△10")
    expect(page.locator("#cash-counted")).to_have_text("3,890")
    expect(page.locator("#closed-by")).to_contain_text(central.staff_id("accounting"))
    expect(page.locator("#hash")).to_contain_text("照合一致")
    expect(page.locator("#denominations")).to_contain_text("1,000 円")
    expect(page.locator("#close-form")).to_have_count(0)
    expect(page.locator("#adjust-form")).to_be_visible()

    # Closed once: a second close is refused, and the workbook has the same figures.
    status, answer = central.request("POST", f"/api/v1/accounting/days/{day}/close", {"counted_cash": 3900})
    assert status == 409 and answer["error"] == "closed"
    wb = load_workbook(io.BytesIO(download(central, f"/accounting/day.xlsx?date={day}")))
    ws = wb["日次処理表"]
    values = {ws.cell(row=r, column=1).value: ws.cell(row=r, column=6).value for r in range(1, ws.max_row + 1)}
    assert values["差引収納額"] == 3900
    assert values["過不足（実査−予定）"] == -10
    assert download(central, f"/accounting/day.csv?date={day}").startswith(b"\xef\xbb\xbf")
    assert central.get(f"/api/v1/accounting/days/{day}/verify")["verified"] is True

    # A correction of the closed day, through the page's adjustment form.
    page.locator("#adj-account").select_option("13-02-01")
    page.locator("#adj-amount").fill("-300")
    page.locator("#adj-reason").fill("住民票 1 通を過大計上")
    page.get_by_role("button", name="記録する / Record").click()
    expect(page.locator("#adjustments tr[data-adjustment]")).to_have_count(1)
    expect(page.locator("#adjusted-revenue")).to_have_text("3,600")
    expect(page.locator("#revenue")).to_have_text("3,900")  # the closed figure stays


def test_kpi_page_draws_its_charts(central_factory, page):
    central = central_factory()
    for procedures in (["tennyu", "kokuho-kanyu"], ["juminhyo"], ["juminhyo"]):
        central.issue(*procedures)
    central.post("/api/v1/counters/1/call-next")
    central.post("/api/v1/counters/3/call-next")
    central.post("/api/v1/counters/3/finish")
    central.login_browser(page, "accounting")
    page.goto(f"{central.url}/accounting/kpi")
    expect(page.locator("svg.chart")).to_have_count(4)
    expect(page.locator("#chart-hours rect.bar")).not_to_have_count(0)
    expect(page.locator("#chart-cashless")).to_contain_text("目標 40%")
    expect(page.locator("#card-visitors")).to_contain_text("3 人")
    expect(page.locator("#kpi-services")).to_contain_text("証明書発行")
    assert download(central, "/accounting/kpi.csv?table=services").startswith(b"\xef\xbb\xbf")
