"""The visitor's phone page (issue #6 item 4, docs/visit-page.md).

``GET /t/{token}`` is the page a visitor opens from the QR code on their
ticket; ``GET /api/v1/visit/{token}`` is what it polls every 3 s.  The token
(``secrets.token_urlsafe(16)``, 128 bits, made by the queue engine at issue) is
the only key: there is no list, no lookup by number and no personal data —
a ticket is a number and its stations.

Privacy and safety, on purpose:

* The path is checked against :data:`TOKEN_PATTERN` before any lookup; a
  malformed, unknown or earlier-day (expired) token all answer the same 404
  (the same page, the same JSON), so an answer says nothing about whether a
  ticket existed.  The token is never echoed; logs carry a 4-character prefix.
* Every answer is ``Cache-Control: no-store`` (a shared phone or a proxy keeps
  nothing) and ``Referrer-Policy: no-referrer`` (the token never leaves in a
  Referer).  The Content-Security-Policy allows nothing but this origin; the
  page's one inline ``<style>`` and ``<script>`` are allowed by their SHA-256,
  computed here from visit.html, so no ``'unsafe-inline'`` is needed.
* The page itself is static: it reads the token from its own address and only
  ever puts data on the page with ``textContent``.

Handlers are ``async def`` like the rest of central's HTTP side: they run on
central's loop, so the engine's SQLite connection is used from one thread.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from datetime import UTC, datetime
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from central.config import Site
from central.queue import (
    ENGAGED,
    FINISHED,
    TICKET_ACTIVE,
    QueueEngine,
    QueueError,
    TicketView,
)

logger = logging.getLogger(__name__)

#: ``secrets.token_urlsafe(16)``: 16 random bytes, base64url without padding = 22 characters.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")

NOT_FOUND_JA = "この整理券は見つかりません。整理券は発行された日のみ有効です。"
NOT_FOUND_EN = "This ticket was not found. A ticket is valid only on the day it was issued."

NOT_FOUND_PAGE = f"""<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><link rel="icon" href="data:,">
<title>整理券が見つかりません / Ticket not found</title></head>
<body><main><h1>整理券が見つかりません</h1><p>{NOT_FOUND_JA}</p>
<h2 lang="en">Ticket not found</h2><p lang="en">{NOT_FOUND_EN}</p>
<p>お手数ですが、受付または案内係にお尋ねください。 / Please ask at the reception desk.</p></main></body></html>
"""


def _hashes(html: str, tag: str) -> str:
    # Only blocks whose tag starts a line (not a mention in a comment).
    blocks = re.findall(rf"^<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL | re.MULTILINE)
    if len(blocks) != 1:
        raise ValueError(f"visit.html: expected one <{tag}> block at the start of a line, found {len(blocks)}")
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode("utf-8")).digest()).decode() + "'" for b in blocks
    )


def _short(token: str) -> str:
    """What a log line may show of a token (never the whole of it)."""
    return (token[:4] if TOKEN_PATTERN.fullmatch(token) else "malformed") + "…"


def visit_router(engine: QueueEngine, site: Site) -> APIRouter:
    """The phone page and its JSON, for ``app.include_router`` in central/web.py.

    :param engine: the site's queue engine (tickets are found by token).
    :param site: the site config (service and counter names).
    """
    page = resources.files("central").joinpath("visit.html").read_text(encoding="utf-8")
    csp = (
        "default-src 'none'; "
        f"script-src 'self' {_hashes(page, 'script')}; "
        f"style-src 'self' {_hashes(page, 'style')}; "
        "connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "X-Robots-Tag": "noindex",
    }
    router = APIRouter(tags=["visit"])

    def find(token: str) -> TicketView | None:
        """Today's ticket with this token, or None (malformed, unknown, expired alike)."""
        if not TOKEN_PATTERN.fullmatch(token):
            logger.debug("visit: malformed token refused")
            return None
        ticket = engine.ticket_by_token(token)
        if ticket is None or ticket.day != engine.today():
            logger.debug("visit: no ticket of today for token %s", _short(token))
            return None
        return ticket

    def service_names(service: str) -> tuple[str, str]:
        try:
            s = site.service(service)
            return s.name_ja, s.name_en
        except KeyError:  # retired from the site file under a running day
            return service, service

    def counter_out(counter: str | None) -> dict | None:
        if counter is None:
            return None
        try:
            c = site.counter(counter)
            return {"id": c.id, "name_ja": c.name_ja, "name_en": c.name_en}
        except KeyError:
            return {"id": counter, "name_ja": f"{counter}番窓口", "name_en": f"Counter {counter}"}

    def visit_out(t: TicketView) -> dict:
        stations = []
        for s in t.stops:
            ja, en = service_names(s.service)
            stations.append({
                "service_ja": ja, "service_en": en, "state": s.state,
                # Where the visitor should go: only while it is called or served there.
                "counter": counter_out(s.counter) if s.state in ENGAGED else None,
            })
        engaged = t.engaged
        turn = None
        if engaged is not None:
            ja, en = service_names(engaged.service)
            turn = {"state": engaged.state, "counter": counter_out(engaged.counter), "service_ja": ja, "service_en": en}
        upcoming = None
        if engaged is None and t.state == TICKET_ACTIVE:
            nxt = next((s for s in t.stops if s.state not in FINISHED), None)
            if nxt is not None:
                ja, en = service_names(nxt.service)
                upcoming = {
                    "service_ja": ja, "service_en": en, "state": nxt.state,
                    "counters": [counter_out(c.id) for c in site.counters if nxt.service in c.services],
                }
        try:
            minutes = engine.ticket_estimate(t.number, t.day)
        except QueueError:
            minutes = None
        done = t.state != TICKET_ACTIVE or all(s.state in FINISHED for s in t.stops)
        return {
            "number": t.number,
            "state": "done" if done else ("turn" if turn else "waiting"),
            "turn": turn,
            "next": upcoming,
            "stations": stations,
            "estimate_min": round(minutes) if minutes is not None and not done else None,
            "as_of": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    @router.get("/t/{token:path}", response_class=HTMLResponse, include_in_schema=False)
    async def visit_page(token: str):
        if find(token) is None:
            return HTMLResponse(NOT_FOUND_PAGE, status_code=404, headers=headers)
        return HTMLResponse(page, headers=headers)

    @router.get("/api/v1/visit/{token:path}", summary="One ticket for the visitor's phone (by its token)")
    async def visit_json(token: str):
        ticket = find(token)
        if ticket is None:
            return JSONResponse(
                {"error": "not_found", "message_ja": NOT_FOUND_JA, "message_en": NOT_FOUND_EN},
                status_code=404, headers=headers,
            )
        return JSONResponse(visit_out(ticket), headers=headers)

    return router
