"""Counter KPIs from the ledger and the queue (issue #4; docs/accounting.md §7).

Definitions (all times in minutes, days and hours in the site's time zone):

* **cashless share** per day: sales (``kind = sale``) that were paid and not
  voided (state ``approved`` or ``refunded``), by count and by amount, paid by
  credit, e-money or QR ÷ all of them.  Design §7: about 20 % today, 40 % the
  target.
* **time in the building** per visitor: ticket issued → its last stop done,
  for tickets that are finished and have at least one stop done.
* **wait** per stop: from when the stop became the visitor's turn
  (``waiting_since``: issue, or the end of the previous stop) to its first
  call after that; **service** per stop done: started (else the last call) →
  done.  Per service.
* **no-show rate**: stops that ended as no-show (不在, given up) ÷ stops that
  ended done or no-show.
* **visitors per hour**: tickets issued by opening hour 8–17 (8 = 8:00–8:59).

``mean`` is the arithmetic mean; ``p90`` the 90th percentile by the
nearest-rank method (the smallest value with at least 90 % of values at or
below it), so it is always a value that occurred.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from datetime import date, datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from central.config import Site
from central.dayclose import DayCloseError, check_day
from central.store import Store

HOURS = tuple(range(8, 18))
MAX_DAYS = 93
WEEKDAY_JA = "月火水木金土日"
#: Design §7 reference lines.
CASHLESS_TODAY, CASHLESS_TARGET = 20.0, 40.0
IN_BUILDING_TODAY, IN_BUILDING_TARGET = 119.0, 79.0


def p90(values: list[float]) -> float | None:
    """90th percentile, nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "p90": None}
    return {"n": len(values), "mean": round(sum(values) / len(values), 1), "p90": round(p90(values), 1)}


def _minutes(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() / 60


def _share(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def compute(store: Store, site: Site, date_from: str, date_to: str) -> dict:
    """KPIs of ``site`` for the days ``date_from``..``date_to`` (inclusive,
    at most :data:`MAX_DAYS`).  Raises :class:`central.dayclose.DayCloseError`
    (``invalid``) for bad dates."""
    check_day(date_from)
    check_day(date_to)
    if date_to < date_from:
        raise DayCloseError("invalid", "終了日が開始日より前です", "to is before from")
    span = (date.fromisoformat(date_to) - date.fromisoformat(date_from)).days + 1
    if span > MAX_DAYS:
        raise DayCloseError("invalid", f"期間は {MAX_DAYS} 日までです", f"at most {MAX_DAYS} days")
    zone = ZoneInfo(site.site.timezone)
    conn = store.conn
    site_id = site.site.id
    days: dict[str, dict] = {}

    def day_row(d: str) -> dict:
        if d not in days:
            wd = WEEKDAY_JA[date.fromisoformat(d).weekday()]
            days[d] = {"day": d, "weekday_ja": wd, "payments": 0, "cashless_count": 0, "amount": 0, "cashless_amount": 0,
                       "_building": [], "_wait": [], "visitors": 0, "_ended": 0, "_no_show": 0}
        return days[d]

    for r in conn.execute(
        "SELECT day, method, COUNT(*) AS n, COALESCE(SUM(amount), 0) AS yen FROM payments WHERE kind = 'sale'"
        " AND state IN ('approved', 'refunded') AND day BETWEEN ? AND ? GROUP BY day, method", (date_from, date_to),
    ):
        d = day_row(r["day"])
        d["payments"] += r["n"]
        d["amount"] += r["yen"]
        if r["method"] != "cash":
            d["cashless_count"] += r["n"]
            d["cashless_amount"] += r["yen"]

    hours: dict[int, int] = defaultdict(int)
    tickets = {}
    for t in conn.execute(
        "SELECT id, day, issued_at, state FROM tickets WHERE site = ? AND day BETWEEN ? AND ?", (site_id, date_from, date_to)
    ):
        tickets[t["id"]] = dict(t, last_done=None)
        d = day_row(t["day"])
        d["visitors"] += 1
        hour = datetime.fromisoformat(t["issued_at"]).astimezone(zone).hour
        hours[hour] += 1

    calls: dict[int, list[str]] = defaultdict(list)
    for r in conn.execute(
        "SELECT stop_id, at FROM queue_log WHERE action = 'call' AND stop_id IS NOT NULL AND day BETWEEN ? AND ?",
        (date_from, date_to),
    ):
        calls[r["stop_id"]].append(r["at"])

    per_service: dict[str, dict[str, list]] = defaultdict(lambda: {"wait": [], "service": [], "ended": 0, "no_show": 0})
    for s in conn.execute(
        "SELECT s.* FROM stops s JOIN tickets t ON t.id = s.ticket_id WHERE t.site = ? AND t.day BETWEEN ? AND ?",
        (site_id, date_from, date_to),
    ):
        t = tickets.get(s["ticket_id"])
        if t is None:
            continue
        d = day_row(t["day"])
        ps = per_service[s["service"]]
        since = datetime.fromisoformat(s["waiting_since"])
        first = min((c for c in calls.get(s["id"], []) if datetime.fromisoformat(c) >= since), default=s["called_at"])
        wait = _minutes(s["waiting_since"], first) if first else None
        if wait is not None and wait >= 0:
            ps["wait"].append(wait)
            d["_wait"].append(wait)
        if s["state"] == "done":
            service = _minutes(s["started_at"] or s["called_at"], s["done_at"])
            if service is not None and service >= 0:
                ps["service"].append(service)
            if t["last_done"] is None or s["done_at"] > t["last_done"]:
                t["last_done"] = s["done_at"]
        if s["state"] in ("done", "no_show"):
            ps["ended"] += 1
            d["_ended"] += 1
            if s["state"] == "no_show":
                ps["no_show"] += 1
                d["_no_show"] += 1
    for t in tickets.values():
        if t["state"] == "done" and t["last_done"]:
            minutes = _minutes(t["issued_at"], t["last_done"])
            if minutes is not None and minutes >= 0:
                days[t["day"]]["_building"].append(minutes)

    all_building, all_wait = [], []
    totals = {"payments": 0, "cashless_count": 0, "amount": 0, "cashless_amount": 0, "visitors": 0, "ended": 0, "no_show": 0}
    out_days = []
    for d in sorted(days.values(), key=lambda r: r["day"]):
        all_building += d["_building"]
        all_wait += d["_wait"]
        for k in ("payments", "cashless_count", "amount", "cashless_amount", "visitors"):
            totals[k] += d[k]
        totals["ended"] += d["_ended"]
        totals["no_show"] += d["_no_show"]
        out_days.append({
            "day": d["day"], "weekday_ja": d["weekday_ja"], "payments": d["payments"], "cashless_count": d["cashless_count"],
            "amount": d["amount"], "cashless_amount": d["cashless_amount"],
            "share_count": _share(d["cashless_count"], d["payments"]), "share_amount": _share(d["cashless_amount"], d["amount"]),
            "visitors": d["visitors"], "in_building": stats(d["_building"]), "wait": stats(d["_wait"]),
            "no_show_rate": _share(d["_no_show"], d["_ended"]),
        })
    services = []
    for svc in site.services:
        ps = per_service.get(svc.id)
        if ps is None:
            continue
        services.append({"service": svc.id, "name_ja": svc.name_ja, "name_en": svc.name_en, "wait": stats(ps["wait"]),
                         "service_time": stats(ps["service"]), "stops": ps["ended"], "no_show_rate": _share(ps["no_show"], ps["ended"])})
    n_days = sum(1 for d in out_days if d["visitors"]) or 1
    return {
        "site": {"id": site_id, "name_ja": site.site.name_ja, "name_en": site.site.name_en},
        "from": date_from, "to": date_to,
        "days": out_days,
        "services": services,
        "hours": [{"hour": h, "visitors": hours.get(h, 0), "per_day": round(hours.get(h, 0) / n_days, 1)} for h in HOURS],
        "outside_hours": sum(v for h, v in hours.items() if h not in HOURS),
        "total": {
            "payments": totals["payments"], "cashless_count": totals["cashless_count"], "amount": totals["amount"],
            "cashless_amount": totals["cashless_amount"],
            "share_count": _share(totals["cashless_count"], totals["payments"]),
            "share_amount": _share(totals["cashless_amount"], totals["amount"]),
            "visitors": totals["visitors"], "in_building": stats(all_building), "wait": stats(all_wait),
            "no_show_rate": _share(totals["no_show"], totals["ended"]),
        },
    }


# =========================================================================== CSV

def csv_bytes(k: dict, table: str = "days") -> bytes:
    """One of the KPI tables as CSV (UTF-8 with BOM, CRLF): ``days``,
    ``services`` or ``hours``."""
    rows: list[list[Any]]
    if table == "days":
        rows = [["日付", "曜日", "決済件数", "キャッシュレス件数", "キャッシュレス比率_件数(%)", "決済金額", "キャッシュレス金額",
                 "キャッシュレス比率_金額(%)", "来庁者数", "在庁時間_平均(分)", "在庁時間_p90(分)", "待ち時間_平均(分)",
                 "待ち時間_p90(分)", "不在率(%)"]]
        for d in k["days"]:
            rows.append([d["day"], d["weekday_ja"], d["payments"], d["cashless_count"], _blank(d["share_count"]), d["amount"],
                         d["cashless_amount"], _blank(d["share_amount"]), d["visitors"], _blank(d["in_building"]["mean"]),
                         _blank(d["in_building"]["p90"]), _blank(d["wait"]["mean"]), _blank(d["wait"]["p90"]),
                         _blank(d["no_show_rate"])])
    elif table == "services":
        rows = [["業務", "業務名", "件数", "待ち時間_平均(分)", "待ち時間_p90(分)", "対応時間_平均(分)", "対応時間_p90(分)", "不在率(%)"]]
        for s in k["services"]:
            rows.append([s["service"], s["name_ja"], s["stops"], _blank(s["wait"]["mean"]), _blank(s["wait"]["p90"]),
                         _blank(s["service_time"]["mean"]), _blank(s["service_time"]["p90"]), _blank(s["no_show_rate"])])
    elif table == "hours":
        rows = [["時間帯", "来庁者数", "1日平均"]]
        rows += [[f"{h['hour']}時台", h["visitors"], h["per_day"]] for h in k["hours"]]
    else:
        raise DayCloseError("invalid", "table は days・services・hours のどれかです", "table: days, services or hours")
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def _blank(v: Any) -> Any:
    return "" if v is None else v


# =========================================================================== SVG charts (no library)

_AXIS = "#5b6570"
_C1, _C2 = "#12355b", "#7fa7d6"


def _text(x: float, y: float, s: str, *, size: int = 12, anchor: str = "middle", fill: str = "#1b1f24", weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}">{escape(s)}</text>')


def bar_chart(title: str, labels: list[str], series: list[tuple[str, list[float | None], str]], *,
              unit: str = "", refs: tuple[tuple[float, str], ...] = (), width: int = 640, height: int = 260,
              ymax: float | None = None, chart_id: str = "") -> str:
    """A vertical (grouped) bar chart as inline SVG: ``series`` is
    [(name, values, colour)], ``refs`` dashed reference lines [(value, label)]."""
    left, right, top, bottom = 48, 12, 34, 44
    w, h = width - left - right, height - top - bottom
    values = [v for _, vs, _ in series for v in vs if v is not None]
    top_value = ymax or max([*values, *(r for r, _ in refs), 1]) * 1.15
    step = _nice(top_value / 4)
    top_value = step * math.ceil(top_value / step)
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" role="img" '
           f'aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'),
           _text(left, 18, title, size=14, anchor="start", weight="bold")]
    y = lambda v: top + h - h * (v / top_value)
    tick = 0.0
    while tick <= top_value + 1e-9:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e7eb"/>')
        out.append(_text(left - 6, y(tick) + 4, f"{tick:g}{unit}", size=11, anchor="end", fill=_AXIS))
        tick += step
    n = max(len(labels), 1)
    group = w / n
    bw = min(group * 0.8 / max(len(series), 1), 36)
    for i, label in enumerate(labels):
        gx = left + i * group + (group - bw * len(series)) / 2
        for j, (name, vs, colour) in enumerate(series):
            v = vs[i]
            if v is None:
                continue
            x = gx + j * bw
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y(v):.1f}" width="{bw - 2:.1f}" height="{h - (y(v) - top):.1f}" '
                       f'fill="{colour}"><title>{escape(f"{label} {name}: {v:g}{unit}")}</title></rect>')
        out.append(_text(left + i * group + group / 2, top + h + 16, label, size=11, fill=_AXIS))
    for value, label in refs:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#b3261e" '
                   f'stroke-dasharray="5 4"/>')
        out.append(_text(left + w - 2, y(value) - 4, label, size=11, anchor="end", fill="#b3261e"))
    lx = left
    for name, _, colour in series:
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{colour}"/>')
        out.append(_text(lx + 14, height - 5, name, size=11, anchor="start"))
        lx += 14 + 12 * len(name) + 16
    out.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" stroke="{_AXIS}"/>')
    out.append("</svg>")
    return "".join(out)


def _nice(x: float) -> float:
    if x <= 0:
        return 1
    exp = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if x <= m * exp:
            return m * exp
    return 10 * exp


def charts(k: dict) -> dict[str, str]:
    """The KPI page's charts as SVG strings, by id."""
    day_labels = [f"{d['day'][5:].replace('-', '/')}({d['weekday_ja']})" for d in k["days"]]
    out = {
        "chart-cashless": bar_chart(
            "キャッシュレス比率 / Cashless share (%)", day_labels,
            [("件数 count", [d["share_count"] for d in k["days"]], _C1),
             ("金額 amount", [d["share_amount"] for d in k["days"]], _C2)],
            unit="%", refs=((CASHLESS_TODAY, "現状 20%"), (CASHLESS_TARGET, "目標 40%")), ymax=100, chart_id="chart-cashless"),
        "chart-hours": bar_chart(
            "時間帯別来庁者数（1日平均）/ Visitors per opening hour (per day)", [f"{h['hour']}時" for h in k["hours"]],
            [("来庁者 visitors", [h["per_day"] for h in k["hours"]], _C1)], chart_id="chart-hours"),
        "chart-building": bar_chart(
            "在庁時間 / Time in the building (min)", day_labels,
            [("平均 mean", [d["in_building"]["mean"] for d in k["days"]], _C1),
             ("p90", [d["in_building"]["p90"] for d in k["days"]], _C2)],
            unit="", refs=((IN_BUILDING_TARGET, "目標 79分"),), chart_id="chart-building"),
        "chart-services": bar_chart(
            "業務別 待ち時間・対応時間（平均, 分）/ Wait and service time per service (mean, min)",
            [s["name_ja"][:8] for s in k["services"]],
            [("待ち wait", [s["wait"]["mean"] for s in k["services"]], _C1),
             ("待ち p90", [s["wait"]["p90"] for s in k["services"]], _C2),
             ("対応 service", [s["service_time"]["mean"] for s in k["services"]], "#e0a100")],
            width=720, chart_id="chart-services"),
    }
    return out
