"""The reconciliation page for the accounting office, and its JSON.

* ``GET /accounting/reconcile?month=YYYY-MM`` — read-only HTML (no script,
  no CDN), Japanese first with English beside; without ``month``, last month
  (the agent's statement arrives mid next month).
* ``GET /api/v1/reconcile/{month}`` — the same report as JSON.
* ``GET /api/v1/reconcile/{month}/report.csv`` — the CSV for Excel.

Handlers are ``async def``: central's store is used from its event loop only
(central/web.py says why).  They read the latest match run's stored summary
and the exceptions; nothing here writes.  Importing and matching are the CLI's
(``madoguchi reconcile``), so a page view never holds the database.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from central.auth_web import with_user_bar
from central.reconcile import Reconciler, report_csv, report_html

MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


def reconcile_router(store: Any, site: Any, catalog: Any, *, today: Callable[[], date] | None = None) -> APIRouter:
    """The reconciliation routes, to mount with ``app.include_router(...)``."""
    router = APIRouter(tags=["reconciliation"])
    zone = ZoneInfo(site.site.timezone)

    def reconciler() -> Reconciler:
        return Reconciler(store, site, catalog, today=today)

    def last_month() -> str:
        first = (today() if today else datetime.now(zone).date()).replace(day=1)
        return (first - timedelta(days=1)).strftime("%Y-%m")

    def unavailable() -> JSONResponse:
        return JSONResponse({"code": "unavailable", "message_ja": "料金表が設定されていません",
                             "message_en": "no fee catalog configured"}, status_code=503)

    @router.get("/accounting/reconcile", response_class=HTMLResponse)
    async def reconcile_page(request: Request, month: Annotated[str | None, Query(pattern=MONTH_PATTERN)] = None):
        if catalog is None:
            return unavailable()
        month = month or last_month()
        page = report_html(reconciler().report(month), site_name=site.site.name_ja)
        # A month picker that needs no script: a GET form.
        picker = (f"<form method='get' action='/accounting/reconcile'><label>照合月 <span class='en'>month</span> "
                  f"<input type='month' name='month' value='{month}'></label> <button>表示 / show</button> "
                  f"<a href='/api/v1/reconcile/{month}/report.csv'>CSV</a> "
                  f"<a href='/api/v1/reconcile/{month}'>JSON</a></form>")
        return HTMLResponse(with_user_bar(page.replace("</h1>", "</h1>" + picker, 1), request))

    @router.get("/api/v1/reconcile/{month}")
    async def reconcile_json(month: Annotated[str, Path(pattern=MONTH_PATTERN)]) -> Any:
        if catalog is None:
            return unavailable()
        return reconciler().report(month)

    @router.get("/api/v1/reconcile/{month}/report.csv")
    async def reconcile_csv(month: Annotated[str, Path(pattern=MONTH_PATTERN)]):
        if catalog is None:
            return unavailable()
        return Response(report_csv(reconciler().report(month)), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reconciliation-{month}.csv"'})

    return router


__all__ = ["reconcile_router"]
