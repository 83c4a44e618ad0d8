"""Payments and queue data for day-close tests and the docs' samples.

Payments go through the real ledger (``central.ledger.Ledger.apply_event``
with ``bus.models.PaymentEvent``), the way a counter's Pi reports them.
``demo_day`` makes a realistic business day from design §7 (about 270 fee
payments, the §7 prices and opening-hour shares, a cashless share around
30 %, a couple of voids, a refund, a 処理未了).

``python -m tests.support.daydata`` regenerates docs/samples/dayclose-2026-11-20.*,
docs/img/dayclose.png and docs/img/kpi.png (needs /usr/bin/chromium).
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bus.models import ChargeLine, PaymentEvent, PaymentKind, PaymentState, PayMethod

JST = timezone(timedelta(hours=9))
REPO = Path(__file__).resolve().parents[2]

_seq = iter(range(10**9))


def at(day: str, hhmm: str) -> datetime:
    """An aware time on ``day`` (YYYY-MM-DD) at ``hhmm`` (HH:MM or HH:MM:SS), JST."""
    parts = [int(x) for x in hhmm.split(":")] + [0]
    y, m, d = (int(x) for x in day.split("-"))
    return datetime(y, m, d, parts[0], parts[1], parts[2], tzinfo=JST)


def lines_of(catalog, items: list[tuple[str, int]]) -> list[ChargeLine]:
    return [ChargeLine(code=p.code, name_ja=p.name_ja, name_en=p.name_en, quantity=p.quantity, unit_price=p.unit_price,
                       amount=p.amount, account=p.account) for p in catalog.price(items)]


def event(
    catalog,
    *,
    counter: str = "1",
    items: list[tuple[str, int]] | None = None,
    method: str = "cash",
    brand: str | None = None,
    state: str = "approved",
    txn_at: datetime,
    kind: str = "sale",
    original_id: str | None = None,
    amount: int | None = None,
    payment_id: str | None = None,
    charge_id: str | None = None,
    version: int = 1,
    staff_id: str | None = "A1001",
    slip_no: str | None = None,
    tendered: int | None = None,
    reason: str | None = None,
) -> PaymentEvent:
    """A counter's ``event/payment`` as central receives it."""
    lines = lines_of(catalog, items) if items else []
    total = sum(line.amount for line in lines) if amount is None else amount
    cashless = method != "cash"
    return PaymentEvent(
        event_id=uuid.uuid4(), boot_id="test-boot", seq=next(_seq), ts=txn_at,
        payment_id=uuid.UUID(payment_id) if payment_id else uuid.uuid4(),
        charge_id=uuid.UUID(charge_id) if charge_id else uuid.uuid4(),
        version=version, kind=PaymentKind(kind), original_id=uuid.UUID(original_id) if original_id else None,
        counter=counter, state=PaymentState(state), method=PayMethod(method), brand=brand,
        card_name=catalog.brands[brand].terminal_names[0][:40] if brand else None,
        amount=total, tendered=tendered if method == "cash" else None,
        change=(tendered - total) if (tendered is not None and method == "cash" and kind == "sale") else None,
        lines=lines if kind == "sale" else [], terminal="zvt" if cashless else "cash",
        terminal_id="T0001" if cashless else None, slip_no=slip_no if cashless else None,
        approval_no=f"{random.Random(slip_no).randint(100000, 999999)}" if (cashless and slip_no and state == "approved") else None,
        txn_at=txn_at if state not in ("ready", "pending") else None,
        receipt_no=None if cashless else f"R{txn_at:%m%d}-{next(_seq) % 10000:04d}",
        staff_id=staff_id, reason=reason,
    )


# =========================================================================== a realistic day (design §7)

#: (code, weight, max quantity, counters) — certificates at 1 and 3, 住民異動 items at 1, dogs at 3.
MIX = [
    ("juminhyo", 34, 3, "13"), ("inkan-shomei", 15, 2, "13"), ("koseki-zenbu", 11, 3, "13"), ("shotoku-kazei", 10, 2, "13"),
    ("nozei-shomei", 3, 1, "13"), ("hyoka-shomei", 3, 2, "13"), ("kaoku-shomei", 1, 1, "13"), ("joseki", 2, 1, "13"),
    ("kaisei-genkoseki", 2, 1, "13"), ("juri-shomei", 1, 1, "13"), ("mibun-shomei", 2, 1, "13"), ("inkan-toroku", 4, 1, "1"),
    ("mynumber-saikofu", 2, 1, "1"), ("inu-toroku", 1.5, 1, "3"), ("chusha-zumihyo", 1.5, 1, "3"),
    ("kansatsu-saikofu", 0.3, 1, "3"), ("chusha-zumihyo-saikofu", 0.2, 1, "3"), ("sodai-500", 2, 3, "13"),
    ("sodai-1000", 1.5, 2, "13"), ("sodai-1500", 0.5, 1, "13"), ("toshikeikakuzu-color", 0.5, 2, "13"),
    ("toshikeikakuzu-mono", 0.5, 2, "13"), ("joho-copy-mono", 1.5, 40, "13"), ("joho-copy-color", 0.5, 20, "13"),
]
#: Share of the day's visitors by opening hour (design §7).
HOURLY = {8: 4, 9: 13, 10: 16, 11: 13, 12: 8.5, 13: 12, 14: 12, 15: 10, 16: 7.6, 17: 3}
CASHLESS_MIX = {"credit": 40, "emoney": 35, "qr": 25}
BRANDS = {
    "credit": {"visa": 50, "mastercard": 25, "jcb": 18, "amex": 5, "diners": 1, "unionpay": 1},
    "emoney": {"transit_ic": 45, "waon": 15, "nanaco": 12, "id": 12, "quicpay": 8, "edy": 8},
    "qr": {"paypay": 60, "d_barai": 12, "au_pay": 8, "rakuten_pay": 10, "merpay": 4, "line_pay": 2, "j_coin_pay": 1,
           "bankpay": 1, "yucho_pay": 1, "alipay_plus": 1},
}


def _pick(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def demo_day(ledger, catalog, day: str, *, payments: int = 270, cashless: float = 0.3, seed: int = 1) -> dict:
    """Fill ``day`` with a realistic day of fee payments through ``ledger``.
    Returns {"expected_cash": ..., "revenue": ...} as the generator counted it."""
    rng = random.Random(seed)
    hours = []
    for _ in range(payments):
        hour = _pick(rng, HOURLY)
        lo, hi = (30, 59) if hour == 8 else (0, 14) if hour == 17 else (0, 59)
        hours.append((hour, rng.randint(lo, hi), rng.randint(0, 59)))
    hours.sort()
    slip = 1
    cash_total = revenue = 0
    made: list[tuple[PaymentEvent, str]] = []
    for i, (h, m, s) in enumerate(hours):
        code, _, maxq, counters = rng.choices(MIX, weights=[x[1] for x in MIX])[0]
        q = 1 if maxq == 1 else (rng.randint(5, maxq) if maxq > 10 else rng.choices(range(1, maxq + 1), weights=[75, 20, 5][:maxq])[0])
        items = [(code, q)]
        if rng.random() < 0.12 and code in ("juminhyo", "koseki-zenbu"):
            items.append(("inkan-shomei" if code == "juminhyo" else "shotoku-kazei", 1))
        counter = rng.choice(counters)
        method = "cash"
        if code != "mynumber-saikofu" and rng.random() < cashless:
            method = _pick(rng, CASHLESS_MIX)
        brand = _pick(rng, BRANDS[method]) if method != "cash" else None
        total = sum(p.amount for p in catalog.price(items))
        tendered = None
        if method == "cash":
            tendered = total if rng.random() < 0.3 else ((total // 1000) + 1) * 1000
        ev = event(catalog, counter=counter, items=items, method=method, brand=brand, txn_at=at(day, f"{h:02d}:{m:02d}:{s:02d}"),
                   slip_no=f"{slip:04d}" if method != "cash" else None, tendered=tendered,
                   staff_id=f"A10{int(counter):02d}")
        if method != "cash":
            slip += 1
        ledger.apply_event(f"counter-{counter}", ev)
        made.append((ev, counter))
        revenue += total
        if method == "cash":
            cash_total += total
    # Two same-day voids (a cash one and a card one), a refund of an Edy/nanaco
    # payment, an unknown transit-IC payment, a declined card.
    rng2 = random.Random(seed + 1)
    cash_sales = [ev for ev, _ in made if ev.method is PayMethod.CASH]
    card_sales = [ev for ev, _ in made if ev.method is PayMethod.CREDIT]
    never = [ev for ev, _ in made if ev.brand in ("edy", "nanaco")]
    for original in [rng2.choice(cash_sales), rng2.choice(card_sales)]:
        t = original.txn_at + timedelta(minutes=3)
        ledger.apply_event(f"counter-{original.counter}", event(
            catalog, counter=original.counter, method=original.method.value, brand=original.brand, txn_at=t, kind="void",
            original_id=str(original.payment_id), amount=original.amount, charge_id=str(original.charge_id),
            slip_no=f"{slip:04d}" if original.method is not PayMethod.CASH else None, reason=None))
        slip += 1
        ledger.apply_event(f"counter-{original.counter}", original.model_copy(update={"version": 2, "state": PaymentState.VOIDED}))
        revenue -= original.amount
        if original.method is PayMethod.CASH:
            cash_total -= original.amount
    if never:
        original = never[0]
        t = original.txn_at + timedelta(minutes=40)
        ledger.apply_event(f"counter-{original.counter}", event(
            catalog, counter=original.counter, method="cash", brand=original.brand, txn_at=t, kind="refund",
            original_id=str(original.payment_id), amount=original.amount, charge_id=str(original.charge_id)))
        ledger.apply_event(f"counter-{original.counter}", original.model_copy(update={"version": 2, "state": PaymentState.REFUNDED}))
        revenue -= original.amount
        cash_total -= original.amount
    ledger.apply_event("counter-1", event(catalog, counter="1", items=[("juminhyo", 1)], method="emoney", brand="transit_ic",
                                          state="unknown", txn_at=at(day, "15:42:10"), slip_no=None, reason="completion_lost"))
    ledger.apply_event("counter-3", event(catalog, counter="3", items=[("koseki-zenbu", 1)], method="credit", brand="visa",
                                          state="declined", txn_at=at(day, "10:12:40"), reason="declined"))
    return {"expected_cash": cash_total, "revenue": revenue}


def denominations_for(amount: int, rng: random.Random | None = None) -> dict[int, int]:
    """A plausible drawer for ``amount`` yen (greedy, with some change in coins)."""
    out: dict[int, int] = {}
    rest = amount
    for yen in (10000, 5000, 1000, 500, 100, 50, 10, 5, 1):
        n = rest // yen
        if yen == 10000 and n > 2 and rng is not None:
            n -= rng.randint(0, 2)
        if n:
            out[yen] = n
            rest -= n * yen
    return out


# =========================================================================== samples for docs/


def make_samples(out_dir: Path = REPO) -> None:  # pragma: no cover - run by hand
    import tempfile
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI

    from central import config as central_config
    from central.accounting_web import accounting_router
    from central.dayclose import DayClose, detail_csv, summary_csv, workbook_bytes
    from central.ledger import Ledger
    from central.simulate import Day, load_scenario
    from central.store import Store
    from tests.support.procs import free_port

    loaded = central_config.load(REPO / "config" / "central.toml")
    site, catalog = loaded.site, loaded.catalog
    tmp = Path(tempfile.mkdtemp())
    store = Store(tmp / "central.db")
    ledger = Ledger(store, site, catalog)
    days = ["2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20"]
    scenario = load_scenario(REPO / "config" / "sim" / "ordinary.toml")
    clock_now = [at("2026-11-20", "17:40")]
    dc = DayClose(store, site, catalog, clock=lambda: clock_now[0])
    for n, day in enumerate(days):
        figures = demo_day(ledger, catalog, day, payments=262 + 7 * n, cashless=(0.22, 0.27, 0.31, 0.29, 0.33)[n], seed=n + 11)
        # The queue of the same day from the simulator (the real engine on simulated time).
        sim = Day(scenario, "lifetime", seed=100 + n)
        y, m, d = (int(x) for x in day.split("-"))
        sim.base = datetime(y, m, d, tzinfo=JST)
        sim.run()
        src = sim.engine.store.conn
        for t in src.execute("SELECT * FROM tickets").fetchall():
            cur = store.conn.execute(
                "INSERT INTO tickets (site, day, number, token, issued_at, state, procedures, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (site.site.id, t["day"], t["number"], t["token"], t["issued_at"], t["state"], t["procedures"], t["done_at"]))
            new_id = cur.lastrowid
            for s in src.execute("SELECT * FROM stops WHERE ticket_id = ?", (t["id"],)).fetchall():
                cur2 = store.conn.execute(
                    "INSERT INTO stops (ticket_id, position, service, state, place, counter, waiting_since, called_at, started_at,"
                    " done_at, returns_at, no_shows, recalls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (new_id, s["position"], s["service"], s["state"], s["place"], s["counter"], s["waiting_since"], s["called_at"],
                     s["started_at"], s["done_at"], s["returns_at"], s["no_shows"], s["recalls"]))
                for q in src.execute("SELECT * FROM queue_log WHERE stop_id = ? AND action = 'call'", (s["id"],)).fetchall():
                    store.conn.execute(
                        "INSERT INTO queue_log (at, day, ticket_id, number, stop_id, service, counter, action, source) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (q["at"], q["day"], new_id, q["number"], cur2.lastrowid, q["service"], q["counter"], q["action"], q["source"]))
        clock_now[0] = at(day, "17:40")
        rng = random.Random(n)
        short = (0, -10, 0, 0, -10)[n]
        fund = 30000
        dc.close(day, closed_by="K0107", denominations=denominations_for(figures["expected_cash"] + short + fund, rng),
                 change_fund=fund)
    sample = dc.sheet("2026-11-20")
    samples = out_dir / "docs" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    (samples / "dayclose-2026-11-20.xlsx").write_bytes(workbook_bytes(sample))
    (samples / "dayclose-2026-11-20.csv").write_bytes(detail_csv(sample))
    (samples / "dayclose-2026-11-20-summary.csv").write_bytes(summary_csv(sample))

    app = FastAPI()
    app.include_router(accounting_router(store, site, catalog, clock=lambda: clock_now[0]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="samples-http", daemon=True)
    # The store is used from one thread: hand it to the server's.
    store._owner = None
    thread.start()
    time.sleep(1.0)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 794, "height": 1123}, locale="ja-JP")  # A4 at 96 dpi
        page.goto(f"http://127.0.0.1:{port}/accounting/day?date=2026-11-20")
        page.emulate_media(media="print")
        page.add_style_tag(content="body { padding: 28px 36px; }")  # the paper's margin, for the picture
        page.screenshot(path=str(out_dir / "docs" / "img" / "dayclose.png"), full_page=True)
        page.pdf(path=str(samples / "dayclose-2026-11-20.pdf"), format="A4", print_background=True,
                 margin={"top": "10mm", "bottom": "10mm", "left": "10mm", "right": "10mm"})
        page.emulate_media(media="screen")
        page.set_viewport_size({"width": 1500, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/accounting/kpi?from=2026-11-16&to=2026-11-20")
        page.screenshot(path=str(out_dir / "docs" / "img" / "kpi.png"), full_page=True)
        browser.close()
    server.should_exit = True
    thread.join(5)
    print(f"samples written to {samples}; database {tmp / 'central.db'}")


if __name__ == "__main__":  # pragma: no cover
    make_samples()
