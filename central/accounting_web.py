"""The accounting pages and API (issue #4; docs/accounting.md §8).

``accounting_router(store, site, catalog)`` returns a FastAPI router that
central mounts next to its own API:

* ``GET /accounting/day?date=YYYY-MM-DD`` — the day sheet (日次処理表) as a
  printable page, the same figures as the workbook; on an open day the cash
  count form and 「締める / Close the day」, on a closed day the adjustment form;
* ``GET /accounting/day.csv`` (``part=detail|summary``), ``/accounting/day.xlsx``;
* ``GET /accounting/kpi?from=&to=`` — KPIs with inline SVG charts;
  ``/accounting/kpi.csv?table=days|services|hours``;
* JSON under ``/api/v1/accounting/``.

Pages are rendered here, on the server, with every text escaped; the little
JavaScript they carry only posts the forms.  Handlers are ``async def``: they
run on central's event loop, the one thread that uses the store.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from html import escape
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from central import kpi as kpis
from central.auth_web import recorded_staff, with_user_bar
from central.config import Site
from central.dayclose import (
    DENOMINATIONS,
    DayClose,
    DayCloseError,
    _wareki,
    detail_csv,
    summary_csv,
    workbook_bytes,
)
from central.store import Store

logger = logging.getLogger(__name__)

DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
DayQ = Annotated[str | None, Query(pattern=DAY_PATTERN, description="local date YYYY-MM-DD (default: today)")]
DayP = Annotated[str, PathParam(pattern=DAY_PATTERN, description="local date YYYY-MM-DD")]
StaffId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
STATUS_OF = {"invalid": 422, "not_found": 404, "closed": 409, "open": 409, "too_early": 409}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CloseRequest(Body):
    #: Cash collected (yen), the change fund already taken out.  Optional with denominations.
    counted_cash: int | None = Field(default=None, ge=0, le=99_999_999)
    #: Logged in: optional, and if given it must be the logged-in staff id (that is what is recorded).
    closed_by: StaffId | None = None
    #: The drawer by denomination: {"10000": pieces, ...}.
    denominations: dict[Annotated[str, StringConstraints(pattern=r"^\d{1,5}$")], Annotated[int, Field(ge=0, le=100_000)]] | None = None
    #: 釣銭準備金, taken out of the drawer total.
    change_fund: int = Field(default=0, ge=0, le=9_999_999)


class AdjustRequest(Body):
    #: As CloseRequest.closed_by.
    by: StaffId | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    kind: Literal["correction", "cash_recount"] = "correction"
    amount: int = Field(default=0, ge=-99_999_999, le=99_999_999)
    account_code: Annotated[str, StringConstraints(max_length=20)] = ""
    payment_id: Annotated[str, StringConstraints(max_length=40)] | None = None
    cash_expected: int = Field(default=0, ge=-99_999_999, le=99_999_999)
    cash_counted: int = Field(default=0, ge=-99_999_999, le=99_999_999)


def _error(exc: DayCloseError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message_ja": exc.ja, "message_en": exc.en},
                        status_code=STATUS_OF.get(exc.code, 409))


def accounting_router(store: Store, site: Site, catalog: Any, *, clock=None) -> APIRouter:
    """The accounting pages and API for ``site`` on ``store`` (central's
    database) with the fee ``catalog`` (names, accounts, brands; may be None)."""
    dc = DayClose(store, site, catalog, clock=clock)
    router = APIRouter()

    def day_or_today(day: str | None) -> str:
        return day or dc.today()

    # ------------------------------------------------------------ pages
    @router.get("/accounting/day", response_class=HTMLResponse, include_in_schema=False)
    async def day_page(request: Request, date_: Annotated[str | None, Query(alias="date", pattern=DAY_PATTERN)] = None):
        try:
            sheet = dc.sheet(day_or_today(date_))
        except DayCloseError as exc:
            return HTMLResponse(_page("エラー", f"<p class=err>{escape(exc.ja)} / {escape(exc.en)}</p>"), status_code=422)
        return HTMLResponse(with_user_bar(render_day(sheet, catalog=catalog, today=dc.today()), request))

    @router.get("/accounting/day.csv", include_in_schema=False)
    async def day_csv(date_: Annotated[str | None, Query(alias="date", pattern=DAY_PATTERN)] = None,
                      part: Literal["detail", "summary"] = "detail"):
        try:
            sheet = dc.sheet(day_or_today(date_))
        except DayCloseError as exc:
            return _error(exc)
        body = detail_csv(sheet) if part == "detail" else summary_csv(sheet)
        name = f"dayclose-{sheet['day']}{'' if part == 'detail' else '-summary'}.csv"
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @router.get("/accounting/day.xlsx", include_in_schema=False)
    async def day_xlsx(date_: Annotated[str | None, Query(alias="date", pattern=DAY_PATTERN)] = None):
        try:
            sheet = dc.sheet(day_or_today(date_))
        except DayCloseError as exc:
            return _error(exc)
        return Response(workbook_bytes(sheet), media_type=XLSX,
                        headers={"Content-Disposition": f'attachment; filename="dayclose-{sheet["day"]}.xlsx"'})

    @router.get("/accounting/kpi", response_class=HTMLResponse, include_in_schema=False)
    async def kpi_page(request: Request, from_: Annotated[str | None, Query(alias="from", pattern=DAY_PATTERN)] = None,
                       to: DayQ = None):
        start, end = _range(dc.today(), from_, to)
        try:
            k = kpis.compute(store, site, start, end)
        except DayCloseError as exc:
            return HTMLResponse(_page("エラー", f"<p class=err>{escape(exc.ja)} / {escape(exc.en)}</p>"), status_code=422)
        return HTMLResponse(with_user_bar(render_kpi(k), request))

    @router.get("/accounting/kpi.csv", include_in_schema=False)
    async def kpi_csv(from_: Annotated[str | None, Query(alias="from", pattern=DAY_PATTERN)] = None, to: DayQ = None,
                      table: Literal["days", "services", "hours"] = "days"):
        start, end = _range(dc.today(), from_, to)
        try:
            body = kpis.csv_bytes(kpis.compute(store, site, start, end), table)
        except DayCloseError as exc:
            return _error(exc)
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="kpi-{table}-{start}-{end}.csv"'})

    # ------------------------------------------------------------ JSON
    @router.get("/api/v1/accounting/days")
    async def list_closes(limit: Annotated[int, Query(ge=1, le=366)] = 31):
        return dc.closes(limit=limit)

    @router.get("/api/v1/accounting/days/{day}")
    async def get_day(day: DayP, detail: bool = True):
        try:
            sheet = dc.sheet(day)
        except DayCloseError as exc:
            return _error(exc)
        if not detail:
            sheet = {k: v for k, v in sheet.items() if k != "payments"}
        return sheet

    @router.post("/api/v1/accounting/days/{day}/close")
    async def close_day(day: DayP, body: CloseRequest, request: Request):
        closed_by = recorded_staff(request, body.closed_by)
        if closed_by is None:
            return _error(DayCloseError("invalid", "締め者の職員番号が必要です", "closed_by is required"))
        try:
            denominations = {int(k): v for k, v in body.denominations.items()} if body.denominations else None
            sheet = dc.close(day, closed_by=closed_by, counted_cash=body.counted_cash,
                             denominations=denominations, change_fund=body.change_fund)
        except DayCloseError as exc:
            logger.info("day close of %s refused: %s: %s", day, exc.code, exc.en)
            return _error(exc)
        return {k: v for k, v in sheet.items() if k != "payments"}

    @router.get("/api/v1/accounting/days/{day}/adjustments")
    async def list_adjustments(day: DayP):
        return dc.adjustments(day=day)

    @router.post("/api/v1/accounting/days/{day}/adjustments", status_code=201)
    async def adjust_day(day: DayP, body: AdjustRequest, request: Request):
        by = recorded_staff(request, body.by)
        if by is None:
            return _error(DayCloseError("invalid", "記録者の職員番号が必要です", "by is required"))
        try:
            return dc.adjust(day, by=by, reason=body.reason, kind=body.kind, amount=body.amount,
                             account_code=body.account_code, payment_id=body.payment_id,
                             cash_expected=body.cash_expected, cash_counted=body.cash_counted)
        except DayCloseError as exc:
            return _error(exc)

    @router.get("/api/v1/accounting/days/{day}/verify")
    async def verify_day(day: DayP):
        try:
            return {"day": day, "verified": dc.verify(day)}
        except DayCloseError as exc:
            return _error(exc)

    @router.get("/api/v1/accounting/kpi")
    async def get_kpi(from_: Annotated[str | None, Query(alias="from", pattern=DAY_PATTERN)] = None, to: DayQ = None):
        start, end = _range(dc.today(), from_, to)
        try:
            return kpis.compute(store, site, start, end)
        except DayCloseError as exc:
            return _error(exc)

    return router


def _range(today: str, start: str | None, end: str | None) -> tuple[str, str]:
    end = end or today
    try:
        start = start or (date.fromisoformat(end) - timedelta(days=6)).isoformat()
    except ValueError:
        start = end  # check_day reports it
    return start, end


# =========================================================================== rendering

CSS = """
:root { font-family: "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", "Meiryo", sans-serif; color: #111; }
body { margin: 0; background: #eef1f4; }
header.bar { background: #12355b; color: #fff; padding: 10px 24px; display: flex; justify-content: space-between; align-items: center; }
header.bar h1 { margin: 0; font-size: 20px; } header.bar .en { opacity: .75; font-size: 13px; margin-left: 8px; }
header.bar a { color: #fff; }
nav.tools { padding: 10px 24px; display: flex; gap: 14px; align-items: center; flex-wrap: wrap; font-size: 14px; }
nav.tools a { color: #12355b; }
.paper { background: #fff; width: 186mm; margin: 0 auto 24px; padding: 12mm 12mm 16mm; box-shadow: 0 1px 4px #0003; }
.doc-head { display: flex; justify-content: space-between; align-items: flex-start; }
.doc-head h2 { font-family: "Noto Serif CJK JP", "Yu Mincho", serif; font-size: 24px; margin: 0 0 8px; letter-spacing: .15em; }
table.info td { padding: 1px 10px 1px 0; font-size: 13px; } table.info td:first-child { font-weight: bold; }
table.stamp { border-collapse: collapse; } table.stamp td, table.stamp th { border: 1px solid #000; width: 20mm; text-align: center; font-size: 12px; font-weight: normal; }
table.stamp td { height: 18mm; }
h3 { font-size: 14px; margin: 14px 0 4px; border-left: 4px solid #12355b; padding-left: 6px; }
h3 small, th small { font-weight: normal; color: #5b6570; }
table.grid { border-collapse: collapse; width: 100%; font-size: 12.5px; }
table.grid th, table.grid td { border: 1px solid #555; padding: 2px 6px; }
table.grid th { background: #d9e1f2; font-weight: bold; }
table.grid td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.grid tr.total td { font-weight: bold; background: #f2f2f2; border-top: 3px double #000; }
table.grid tr.key td { font-weight: bold; background: #fff2cc; }
table.grid tr.method td { background: #f7f7f7; font-weight: bold; }
table.grid td.sub { padding-left: 20px; }
table.grid td.code { font-size: 11px; color: #333; }
table.list th, table.list td.t { white-space: nowrap; }
table.list td.rule { font-size: 11px; min-width: 40%; }
.form .row { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin: 6px 0; }
.form .row input[type=number] { width: 8em; } .form .row input.wide { width: 24em; }
.note { font-size: 11.5px; color: #b3261e; margin: 4px 0; }
.status { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: bold; font-size: 13px; }
.status.closed { border: 2px solid #12355b; color: #12355b; } .status.open { border: 2px solid #b3261e; color: #b3261e; }
.hash { font-size: 10px; color: #666; word-break: break-all; margin-top: 6px; }
.form { background: #f6f8fa; border: 1px solid #c9d1d9; border-radius: 6px; padding: 10px 14px; margin: 10px 0; font-size: 13px; }
.form input { font-size: 14px; padding: 3px 6px; } .form input.pcs { width: 5em; text-align: right; }
.form table td { padding: 2px 6px; } .form button { font-size: 15px; padding: 6px 18px; background: #12355b; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
.msg { margin-top: 6px; font-weight: bold; } .msg.err, .err { color: #b3261e; }
details summary { cursor: pointer; font-size: 14px; margin: 12px 0 4px; }
.neg { color: #b3261e; }
.foot { font-size: 10px; color: #666; margin-top: 14px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 12px; }
.card { background: #fff; border: 1px solid #c9d1d9; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .v { font-size: 24px; font-weight: bold; color: #12355b; } .card .l { font-size: 12px; color: #5b6570; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; } .charts svg { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; }
@page { size: A4 portrait; margin: 10mm; }
@media print {
  body { background: #fff; } header.bar, nav.tools, .noprint { display: none !important; }
  .paper { box-shadow: none; width: auto; margin: 0; padding: 0; }
  h3 { break-after: avoid; } tr { break-inside: avoid; }
}
"""


def _yen(v: int | None, *, signed: bool = True) -> str:
    if v is None:
        return ""
    if v < 0 and signed:
        return f'<span class="neg">△{-v:,}</span>'
    return f"{v:,}"


def _page(title: str, body: str, *, head: str = "") -> str:
    return (f'<!doctype html><html lang="ja"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style>{head}</head><body>{body}</body></html>")


def render_day(s: dict, *, catalog: Any = None, today: str | None = None) -> str:
    """The day sheet as an HTML page (the same figures as the workbook)."""
    e = escape
    day = s["day"]
    closed = s["status"] == "closed"
    close = s.get("close") or {}
    d = date.fromisoformat(day)
    prev_day, next_day = (d - timedelta(days=1)).isoformat(), (d + timedelta(days=1)).isoformat()
    sm = s["summary"]
    parts: list[str] = []
    parts.append(
        f'<header class="bar"><div><h1>日次処理表<span class="en">Day close</span></h1></div>'
        f'<div>{e(s["site"]["name_ja"])} <span class="en">{e(s["site"]["name_en"])}</span></div></header>'
        f'<nav class="tools"><a href="/accounting/day?date={prev_day}">← 前日 previous</a>'
        f'<form method="get" action="/accounting/day"><input type="date" name="date" value="{e(day)}"> '
        f'<button type="submit">表示 show</button></form>'
        f'<a href="/accounting/day?date={next_day}">翌日 next →</a>'
        f'<a id="dl-xlsx" href="/accounting/day.xlsx?date={e(day)}">Excel (.xlsx)</a>'
        f'<a id="dl-csv" href="/accounting/day.csv?date={e(day)}">明細 CSV</a>'
        f'<a href="/accounting/day.csv?date={e(day)}&amp;part=summary">集計 CSV summary</a>'
        f'<a href="/accounting/kpi?to={e(day)}">KPI</a></nav>')
    status = ('<span id="status" class="status closed">締め済 closed</span>' if closed
              else '<span id="status" class="status open">未締め open（速報）</span>')
    who = (f"{e(close.get('closed_at_local', ''))}　締め者 {e(close.get('closed_by', ''))}" if closed else "—")
    parts.append('<div class="paper" id="sheet">')
    parts.append(
        '<div class="doc-head"><div><h2>日次処理表</h2>'
        f'<table class="info"><tr><td>収納日</td><td id="day">{e(_wareki(day))}（{e(day)}）</td></tr>'
        f'<tr><td>所属</td><td>{e(s["site"]["name_ja"])}</td></tr>'
        f'<tr><td>状態</td><td>{status}</td></tr><tr><td>締め日時</td><td id="closed-by">{who}</td></tr></table></div>'
        '<table class="stamp"><tr><th>課長</th><th>係長</th><th>担当</th></tr><tr><td></td><td></td><td></td></tr></table></div>')

    # 1. revenue
    parts.append('<h3>1. 収納額 <small>Revenue</small></h3><table class="grid"><tr><th>区分</th><th>件数</th><th>金額（円）</th></tr>')
    for label, key, sign in (("売上 sales", "sales", 1), ("取消（当日）voids", "voids", -1), ("返金 refunds", "refunds", -1)):
        parts.append(f'<tr><td>{label}</td><td class="n">{sm[key]["count"]:,}</td><td class="n">{_yen(sign * sm[key]["amount"])}</td></tr>')
    parts.append(f'<tr class="key"><td>差引収納額 net revenue</td><td class="n">{sm["revenue"]["count"]:,}</td>'
                 f'<td class="n" id="revenue">{_yen(sm["revenue"]["amount"])}</td></tr></table>')
    parts.append(f'<p class="note" id="pending-note">処理未了 {sm["pending"]["count"]} 件 {sm["pending"]["amount"]:,} 円は収納額に含みません'
                 f'（結果が確定した日に計上） / {sm["pending"]["count"]} unknown or pending payment(s) are not counted as revenue.</p>')

    # 2. by account
    parts.append('<h3>2. 歳入科目別 <small>By revenue account</small></h3><table class="grid" id="by-account">'
                 '<tr><th>科目コード</th><th>款・項・目</th><th>件数</th><th>金額（円）</th></tr>')
    for a in s["by_account"]:
        parts.append(f'<tr><td>{e(a["code"])}</td><td>{e(a["kan"])} {e(a["kou"])} {e(a["moku"])}</td>'
                     f'<td class="n">{a["count"]:,}</td><td class="n">{_yen(a["amount"])}</td></tr>')
    parts.append(f'<tr class="total"><td colspan="2">計</td><td class="n">{sum(a["count"] for a in s["by_account"]):,}</td>'
                 f'<td class="n">{_yen(sum(a["amount"] for a in s["by_account"]))}</td></tr></table>')

    # 3. by item
    parts.append('<h3>3. 科目別 <small>By fee item</small></h3><table class="grid" id="by-item">'
                 '<tr><th>科目</th><th>単価</th><th>件数</th><th>数量</th><th>金額（円）</th></tr>')
    for i in s["by_item"]:
        parts.append(f'<tr><td>{e(i["name_ja"])}</td><td class="n">{i["unit_price"]:,}</td><td class="n">{i["count"]:,}</td>'
                     f'<td class="n">{i["quantity"]:,}</td><td class="n">{_yen(i["amount"])}</td></tr>')
    parts.append(f'<tr class="total"><td colspan="2">計</td><td class="n">{sum(i["count"] for i in s["by_item"]):,}</td>'
                 f'<td class="n">{sum(i["quantity"] for i in s["by_item"]):,}</td>'
                 f'<td class="n">{_yen(sum(i["amount"] for i in s["by_item"]))}</td></tr></table>')

    # 4. by method / brand
    parts.append('<h3>4. 支払方法・ブランド別 <small>By method and brand</small></h3><table class="grid" id="by-method">'
                 '<tr><th>支払方法</th><th>ブランド</th><th>件数</th><th>金額（円）</th></tr>')
    for m in s["by_method"]:
        parts.append(f'<tr class="method" data-method="{e(m["method"])}"><td>{e(m["name_ja"])}</td><td>（計）</td>'
                     f'<td class="n">{m["count"]:,}</td><td class="n">{_yen(m["amount"])}</td></tr>')
        for b in (b for b in s["by_brand"] if b["method"] == m["method"]):
            parts.append(f'<tr><td></td><td class="sub">{e(b["name_ja"])}</td><td class="n">{b["count"]:,}</td>'
                         f'<td class="n">{_yen(b["amount"])}</td></tr>')
    parts.append(f'<tr class="total"><td colspan="2">計</td><td class="n">{sum(m["count"] for m in s["by_method"]):,}</td>'
                 f'<td class="n">{_yen(sum(m["amount"] for m in s["by_method"]))}</td></tr></table>')

    # 5. by counter
    parts.append('<h3>5. 窓口別 <small>By counter</small></h3><table class="grid" id="by-counter">'
                 '<tr><th>窓口</th><th>件数</th><th>うち現金（円）</th><th>金額（円）</th></tr>')
    for c in s["by_counter"]:
        parts.append(f'<tr><td>{e(c["name_ja"])}</td><td class="n">{c["count"]:,}</td><td class="n">{_yen(c["cash"])}</td>'
                     f'<td class="n">{_yen(c["amount"])}</td></tr>')
    parts.append(f'<tr class="total"><td>計</td><td class="n">{sum(c["count"] for c in s["by_counter"]):,}</td>'
                 f'<td class="n">{_yen(sum(c["cash"] for c in s["by_counter"]))}</td>'
                 f'<td class="n">{_yen(sum(c["amount"] for c in s["by_counter"]))}</td></tr></table>')

    # 6. cash
    cash = s["cash"]
    parts.append('<h3>6. 現金 <small>Cash</small></h3><table class="grid" id="cash"><tr><th>項目</th><th>金額（円）</th></tr>'
                 f'<tr><td>現金売上 cash sales</td><td class="n">{_yen(cash["sales"])}</td></tr>'
                 f'<tr><td>現金取消 cash voids</td><td class="n">{_yen(-cash["voids"])}</td></tr>'
                 f'<tr><td>現金返金 cash refunds</td><td class="n">{_yen(-cash["refunds"])}</td></tr>'
                 f'<tr class="key"><td>現金収納予定額 expected</td><td class="n" id="cash-expected">{_yen(cash["expected"])}</td></tr>'
                 f'<tr><td>現金実査額 counted</td><td class="n" id="cash-counted">{_yen(cash["counted"]) if cash["counted"] is not None else "—"}</td></tr>'
                 f'<tr class="key"><td>過不足 over/short（実査−予定）</td><td class="n" id="over-short">'
                 f'{_yen(cash["over_short"]) if cash["over_short"] is not None else "—"}</td></tr></table>')
    if cash["denominations"]:
        parts.append('<table class="grid" id="denominations" style="margin-top:6px"><tr><th>金種</th><th>枚数</th><th>金額（円）</th></tr>')
        for dn in cash["denominations"]:
            parts.append(f'<tr><td>{dn["yen"]:,} 円</td><td class="n">{dn["pieces"]:,}</td><td class="n">{dn["amount"]:,}</td></tr>')
        drawer = sum(dn["amount"] for dn in cash["denominations"])
        parts.append(f'<tr class="total"><td colspan="2">現金在高</td><td class="n">{drawer:,}</td></tr>'
                     f'<tr><td colspan="2">釣銭準備金（控除） change fund</td><td class="n">{_yen(-cash["change_fund"])}</td></tr></table>')
    if not closed:
        parts.append(_close_form(s, today))

    # 7. voids and refunds
    parts.append('<h3>7. 取消・返金 <small>Voids and refunds</small></h3>')
    parts.append(_payment_table("voids", s["voids"] + s["refunds"]))
    # 8. pending
    parts.append('<h3>8. 処理未了 <small>Unknown / pending — not counted</small></h3>')
    parts.append(_payment_table("pending", s["pending"], rule=True))
    # 9. adjustments
    adjustments = s.get("adjustments") or []
    booked = s.get("booked_adjustments") or []
    parts.append('<h3>9. 締め後の調整 <small>Adjustments</small></h3>')
    parts.append(_adjustment_table("adjustments", adjustments, "この日への調整 adjustments to this day"))
    if booked:
        parts.append(_adjustment_table("booked", booked, "前日以前の締め後調整（本日計上）carried from closed days"))
    adj = s.get("adjusted")
    if adj:
        parts.append(f'<table class="grid" style="margin-top:6px"><tr class="key"><td>調整後収納額 revenue after adjustments</td>'
                     f'<td class="n" id="adjusted-revenue">{_yen(adj["revenue"])}</td></tr>'
                     f'<tr><td>調整後過不足 over/short after adjustments</td><td class="n">{_yen(adj["over_short"])}</td></tr></table>')
    if closed:
        parts.append(_adjust_form(s, catalog))
        ok = close.get("verified")
        parts.append(f'<p class="hash" id="hash">SHA-256 {e(close.get("sha256", ""))} '
                     f'{"（照合一致 verified）" if ok else "（照合不一致！ NOT verified）"}　前回 prev {e(str(close.get("prev_sha256") or "—")[:16])}</p>')

    # detail
    parts.append(f'<details class="noprint"><summary>明細 {len(s["payments"])} 件 / all payments</summary>'
                 + _payment_table("payments", s["payments"]) + "</details>")
    parts.append(f'<p class="foot">作成 madoguchi {e(s["generated_at"][:19].replace("T", " "))} UTC。'
                 '収納日（取引日）で計上。取消・返金はその日の収納額から差し引く。処理未了は計上しない。</p>')
    parts.append("</div>")
    parts.append(_SCRIPT)
    return _page(f"日次処理表 {day} — madoguchi", "".join(parts))


def _payment_table(table_id: str, rows: list[dict], *, rule: bool = False) -> str:
    e = escape
    if not rows:
        return f'<table class="grid" id="{table_id}"><tr><td>該当なし / none</td></tr></table>'
    head = "<tr><th>時刻</th><th>窓口</th><th>区分</th><th>状態</th><th>支払方法</th><th>科目</th><th>金額</th><th>伝票・職員</th>"
    head += "<th>扱い</th></tr>" if rule else "</tr>"
    out = [f'<table class="grid list" id="{table_id}">{head}']
    for p in rows:
        method = e(p["method_ja"]) + (f"（{e(p['brand_ja'])}）" if p["brand_ja"] else "")
        ref = " ".join(x for x in (p["slip_no"], p["receipt_no"], p["staff_id"]) if x)
        out.append(f'<tr data-payment="{e(p["payment_id"])}"><td class="t">{e(p["time"])}</td><td class="t">{e(p["counter"])}</td>'
                   f'<td class="t">{e(p["kind_ja"])}</td><td class="t">{e(p["state_ja"])}</td><td>{method}</td><td>{e(p["items_ja"])}</td>'
                   f'<td class="n">{p["amount"]:,}</td><td class="code">{e(ref)}</td>'
                   + (f'<td class="rule">{e(p.get("rule_ja", ""))}</td>' if rule else "") + "</tr>")
    out.append("</table>")
    return "".join(out)


def _adjustment_table(table_id: str, rows: list[dict], caption: str) -> str:
    e = escape
    out = [(f'<table class="grid" id="{table_id}"><tr><th colspan="6">{e(caption)}</th></tr>'
           '<tr><th>収納日</th><th>記録</th><th>種類</th><th>歳入科目</th><th>理由・記録者</th><th>調整額</th></tr>')]
    if not rows:
        out.append('<tr><td colspan="6">なし / none</td></tr>')
    for a in rows:
        cash = ""
        if a["cash_expected"] or a["cash_counted"]:
            cash = f"（現金 予定 {a['cash_expected']:+,} / 実査 {a['cash_counted']:+,}）"
        out.append(f'<tr data-adjustment="{a["id"]}"><td>{e(a["day"])}</td><td>{e(a["local_time"])}<br>計上 {e(a["booked_day"])}</td>'
                   f'<td>{e(a["kind_ja"])}</td><td>{e(a["account_code"])} {e(a["account"])}</td>'
                   f'<td>{e(a["reason"])}{e(cash)}<br><span class="code">{e(a["created_by"])} {e(a["payment_id"] or "")}</span></td>'
                   f'<td class="n">{_yen(a["amount"])}</td></tr>')
    out.append("</table>")
    return "".join(out)


def _close_form(s: dict, today: str | None) -> str:
    e = escape
    rows = "".join(
        f'<tr><td>{yen:,} 円</td><td><input class="pcs" type="number" min="0" step="1" data-yen="{yen}" '
        f'aria-label="{yen}円の枚数"></td><td class="n" data-amount="{yen}">0</td></tr>' for yen in DENOMINATIONS)
    future = today is not None and s["day"] > today
    return (
        f'<div class="form noprint" id="close-form" data-day="{e(s["day"])}" data-expected="{s["cash"]["expected"]}">'
        '<b>現金実査と締め / Cash count and close</b>'
        '<p style="margin:4px 0">金種ごとの枚数を入れるか、実査額を直接入力してください。締めた後は変更できません（調整として記録します）。'
        '<br>Enter the drawer by denomination, or the counted cash directly. A closed day is never edited, only adjusted.</p>'
        f'<details><summary>金種表 by denomination</summary><table>{rows}'
        '<tr><td>釣銭準備金 change fund</td><td colspan="2"><input id="change-fund" type="number" min="0" step="1" value="0"></td></tr>'
        '</table></details>'
        '<p>現金実査額 counted cash <input id="counted" type="number" min="0" step="1" inputmode="numeric"> 円　'
        '過不足 over/short <b id="preview">—</b></p>'
        '<p>締め者 職員番号 staff id <input id="staff" maxlength="20" autocomplete="off"> '
        f'<button id="close-btn" type="button"{" disabled" if future else ""}>締める / Close the day</button></p>'
        '<div class="msg" id="close-msg" role="status"></div></div>')


def _adjust_form(s: dict, catalog: Any) -> str:
    e = escape
    accounts = ""
    if catalog is not None:
        accounts = "".join(f'<option value="{e(code)}">{e(code)} {e(a.moku)}</option>' for code, a in sorted(catalog.accounts.items()))
    return (
        f'<div class="form noprint" id="adjust-form" data-day="{e(s["day"])}"><b>調整を記録 / Record an adjustment</b>'
        '<p style="margin:4px 0">締め済の日は変更できません。訂正は調整として記録し、次の未締めの日の日次処理表に載ります。</p>'
        '<div class="row"><label>種類 <select id="adj-kind"><option value="correction">訂正 correction</option>'
        '<option value="cash_recount">現金再実査 cash recount</option></select></label>'
        f'<label>歳入科目 <select id="adj-account"><option value="">—</option>{accounts}</select></label>'
        '<label>調整額（円・減額は −）<input id="adj-amount" type="number" step="1" value="0"></label>'
        '<label>実査額の調整 <input id="adj-counted" type="number" step="1" value="0"></label></div>'
        '<div class="row"><label>理由 reason <input id="adj-reason" class="wide" maxlength="200"></label>'
        '<label>職員番号 staff id <input id="adj-by" maxlength="20" size="10"></label>'
        '<button id="adj-btn" type="button">記録する / Record</button></div><div class="msg" id="adj-msg" role="status"></div></div>')


_SCRIPT = """<script>
"use strict";
const $ = (id) => document.getElementById(id);
function yen(v) { return (v < 0 ? "△" + (-v).toLocaleString("ja-JP") : v.toLocaleString("ja-JP")) + " 円"; }
// Logged in (the strip at the top names who): the staff id is the login's.
const who = document.getElementById("whoami");
if (who) for (const id of ["staff", "adj-by"]) { const i = $(id); if (i) { i.value = who.dataset.staffId; i.readOnly = true; } }
async function post(url, body, msg) {
  msg.className = "msg"; msg.textContent = "送信中… / sending";
  try {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (r.status === 401) { location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search)); return; }
    const data = await r.json();
    if (r.ok) { msg.textContent = "完了しました / done"; location.reload(); return; }
    msg.className = "msg err";
    if (Array.isArray(data.detail)) msg.textContent = "入力を確かめてください / check the input: " + data.detail.map(d => d.loc.slice(1).join(".") + ": " + d.msg).join("; ");
    else msg.textContent = (data.message_ja || "") + " / " + (data.message_en || r.status);
  } catch (e) { msg.className = "msg err"; msg.textContent = "central に接続できません / cannot reach central"; }
}
const form = $("close-form");
if (form) {
  const expected = Number(form.dataset.expected);
  const pcs = [...form.querySelectorAll("input[data-yen]")];
  function denominations() {
    const out = {}; for (const i of pcs) if (i.value !== "") out[i.dataset.yen] = Number(i.value); return out;
  }
  function refresh(fromDenominations) {
    let drawer = 0, any = false;
    for (const i of pcs) { const n = Number(i.value || 0); drawer += n * Number(i.dataset.yen); if (i.value !== "") any = true;
      form.querySelector(`[data-amount="${i.dataset.yen}"]`).textContent = (n * Number(i.dataset.yen)).toLocaleString("ja-JP"); }
    if (fromDenominations && any) $("counted").value = drawer - Number($("change-fund").value || 0);
    const c = $("counted").value;
    $("preview").textContent = c === "" ? "—" : yen(Number(c) - expected);
  }
  for (const i of pcs) i.addEventListener("input", () => refresh(true));
  $("change-fund").addEventListener("input", () => refresh(true));
  $("counted").addEventListener("input", () => refresh(false));
  $("close-btn").addEventListener("click", () => {
    const body = {};
    if ($("staff").value.trim()) body.closed_by = $("staff").value.trim();
    const d = denominations();
    if (Object.keys(d).length) { body.denominations = d; body.change_fund = Number($("change-fund").value || 0); }
    if ($("counted").value !== "") body.counted_cash = Number($("counted").value);
    post(`/api/v1/accounting/days/${form.dataset.day}/close`, body, $("close-msg"));
  });
}
const adj = $("adjust-form");
if (adj) {
  $("adj-btn").addEventListener("click", () => {
    const body = {reason: $("adj-reason").value.trim(), kind: $("adj-kind").value,
                  amount: Number($("adj-amount").value || 0), account_code: $("adj-account").value,
                  cash_counted: Number($("adj-counted").value || 0)};
    if ($("adj-by").value.trim()) body.by = $("adj-by").value.trim();
    post(`/api/v1/accounting/days/${adj.dataset.day}/adjustments`, body, $("adj-msg"));
  });
}
</script>"""


def render_kpi(k: dict) -> str:
    """The KPI page: summary cards, inline SVG charts, the tables behind them."""
    e = escape
    t = k["total"]

    def num(v: Any, unit: str = "") -> str:
        return "—" if v is None else f"{v:,}{unit}" if isinstance(v, int) else f"{v:,.1f}{unit}"

    q = f"from={e(k['from'])}&amp;to={e(k['to'])}"
    parts = [
        (f'<header class="bar"><div><h1>窓口 KPI<span class="en">Counter KPIs</span></h1></div>'
        f'<div>{e(k["site"]["name_ja"])} <span class="en">{e(k["site"]["name_en"])}</span></div></header>'
        f'<nav class="tools"><form method="get" action="/accounting/kpi">期間 <input type="date" name="from" value="{e(k["from"])}"> 〜 '
        f'<input type="date" name="to" value="{e(k["to"])}"> <button type="submit">表示 show</button></form>'
        f'<a href="/accounting/kpi.csv?{q}&amp;table=days">日別 CSV</a><a href="/accounting/kpi.csv?{q}&amp;table=services">業務別 CSV</a>'
        f'<a href="/accounting/kpi.csv?{q}&amp;table=hours">時間帯別 CSV</a><a href="/accounting/day?date={e(k["to"])}">日次処理表</a></nav>'),
        '<div class="paper" style="width:auto;max-width:1500px" id="kpi">',
        f'<h2 style="margin:0 0 4px">窓口 KPI　{e(k["from"])} 〜 {e(k["to"])}</h2>',
        '<div class="cards">',
    ]
    cards = [
        ("キャッシュレス比率（件数）", "Cashless share, count", num(t["share_count"], " %"), "card-share-count"),
        ("キャッシュレス比率（金額）", "Cashless share, amount", num(t["share_amount"], " %"), "card-share-amount"),
        ("在庁時間 平均 / p90", "Time in building, min", f'{num(t["in_building"]["mean"])} / {num(t["in_building"]["p90"])} 分', "card-building"),
        ("待ち時間 平均 / p90", "Wait per stop, min", f'{num(t["wait"]["mean"])} / {num(t["wait"]["p90"])} 分', "card-wait"),
        ("不在率", "No-show rate", num(t["no_show_rate"], " %"), "card-noshow"),
        ("来庁者数", "Visitors (tickets)", num(t["visitors"], " 人"), "card-visitors"),
    ]
    for ja, en, v, cid in cards:
        parts.append(f'<div class="card" id="{cid}"><div class="l">{e(ja)}<br>{e(en)}</div><div class="v">{e(v)}</div></div>')
    parts.append("</div><div class=\"charts\">")
    parts.extend(kpis.charts(k).values())  # built from escaped text only (kpi._text)
    parts.append("</div>")
    parts.append('<h3>日別 <small>Per day</small></h3><table class="grid" id="kpi-days"><tr><th>日付</th><th>決済件数</th>'
                 '<th>キャッシュレス<br>件数 %</th><th>金額 %</th><th>来庁者</th><th>在庁時間<br>平均 / p90 分</th>'
                 '<th>待ち時間<br>平均 / p90 分</th><th>不在率 %</th></tr>')
    for d in k["days"]:
        parts.append(f'<tr><td>{e(d["day"])}（{e(d["weekday_ja"])}）</td><td class="n">{d["payments"]:,}</td>'
                     f'<td class="n">{num(d["share_count"])}</td><td class="n">{num(d["share_amount"])}</td>'
                     f'<td class="n">{d["visitors"]:,}</td><td class="n">{num(d["in_building"]["mean"])} / {num(d["in_building"]["p90"])}</td>'
                     f'<td class="n">{num(d["wait"]["mean"])} / {num(d["wait"]["p90"])}</td><td class="n">{num(d["no_show_rate"])}</td></tr>')
    parts.append("</table>")
    parts.append('<h3>業務別 <small>Per service</small></h3><table class="grid" id="kpi-services"><tr><th>業務</th><th>件数</th>'
                 '<th>待ち 平均 / p90 分</th><th>対応 平均 / p90 分</th><th>不在率 %</th></tr>')
    for s in k["services"]:
        parts.append(f'<tr><td>{e(s["name_ja"])} <small>{e(s["name_en"])}</small></td><td class="n">{s["stops"]:,}</td>'
                     f'<td class="n">{num(s["wait"]["mean"])} / {num(s["wait"]["p90"])}</td>'
                     f'<td class="n">{num(s["service_time"]["mean"])} / {num(s["service_time"]["p90"])}</td>'
                     f'<td class="n">{num(s["no_show_rate"])}</td></tr>')
    parts.append("</table>")
    parts.append('<h3>時間帯別来庁者 <small>Visitors per opening hour</small></h3><table class="grid" id="kpi-hours"><tr>'
                 + "".join(f"<th>{h['hour']}時</th>" for h in k["hours"]) + "</tr><tr>"
                 + "".join(f'<td class="n">{h["visitors"]:,}</td>' for h in k["hours"]) + "</tr></table>")
    parts.append('<p class="foot">定義は docs/accounting.md §7：キャッシュレス比率＝取消されていない売上のうちクレジット・電子マネー・QR の割合。'
                 '在庁時間＝発券から最後の窓口の完了まで。待ち時間＝順番が来てから最初の呼出まで。p90＝90 パーセンタイル（最近順位法）。'
                 '参考線：キャッシュレス 現状 20%・目標 40%、在庁時間 目標 79 分（設計 §7）。</p></div>')
    return _page(f"窓口 KPI {k['from']}–{k['to']} — madoguchi", "".join(parts))
