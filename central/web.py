"""Central's HTTP side: the JSON API (schema at /openapi.json) and the overview page.

Handlers are ``async def`` on purpose: they run on central's event loop, like
the bus handlers, so the queue engine and its SQLite connection are only ever
used from that one thread (a plain ``def`` handler would run in a thread pool,
concurrently with the bus).  Each engine call is one short transaction.
Request bodies are strict pydantic models; a body over :data:`MAX_BODY` bytes
is refused before it is read.

Who may use which route is decided in one place, before any handler runs:
central/auth_web.py with the table of central/auth.py (docs/security.md "Web
login").  Where a body names a staff id (a void, a confirmation), the
logged-in staff id is what is recorded; a body that names another is refused
(403 ``staff_mismatch``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from importlib import resources
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bus.models import PaymentAction
from bus.topics import ID_PATTERN
from central.auth import Accounts, AuthError
from central.auth_web import install as install_login
from central.auth_web import recorded_staff, route_check, with_user_bar
from central.config import AuthSettings
from central.ledger import PaymentError
from central.queue import MAX_PROCEDURES, QueueError, TicketView
from central.service import Central

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Number = Annotated[int, Path(ge=1, le=9999, description="ticket number")]
Day = Annotated[str, Query(pattern=r"^\d{4}-\d{2}-\d{2}$", description="local date, YYYY-MM-DD (default: today)")]
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=64, description="retry-safe: an action sent again with the same key is applied once"),
]

STATUS_OF = {
    "not_found": 404, "conflict": 409, "precedence": 409, "empty": 409, "busy": 409, "invalid": 422,
    "method_not_allowed": 422, "wrong_counter": 403, "too_late": 409, "unavailable": 503,
}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IssueRequest(Body):
    procedures: list[Id] = Field(min_length=1, max_length=MAX_PROCEDURES)


class CallRequest(Body):
    number: int = Field(ge=1, le=9999)


class ServiceRequest(Body):
    service: Id


class ChargeLineIn(Body):
    code: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    #: The item's own max_quantity is checked by the catalog.
    quantity: int = Field(ge=1, le=100_000)


StaffId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")]
SlipNo = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,20}$")]


class ChargeRequest(Body):
    lines: list[ChargeLineIn] = Field(min_length=1, max_length=20)
    method: Annotated[str, StringConstraints(max_length=20)]
    brand: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")] | None = None
    #: Cash: what the visitor handed over (change is computed).
    tendered: int | None = Field(default=None, ge=0, le=9_999_999)
    ticket: int | None = Field(default=None, ge=1, le=9999)
    staff_id: StaffId | None = None
    #: Start at once instead of waiting for PAY at the counter.
    start: bool = False
    #: Chosen by the client to make a retry safe: the same id is charged once.
    payment_id: Annotated[str, StringConstraints(max_length=36)] | None = None


class PaymentActionRequest(Body):
    #: The counter the request comes from (a void from another counter is refused).
    counter: Id
    staff_id: StaffId | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    approved: bool | None = None
    slip_no: SlipNo | None = None
    approval_no: SlipNo | None = None
    tendered: int | None = Field(default=None, ge=0, le=9_999_999)


class StopOut(BaseModel):
    service: str
    name_ja: str
    name_en: str
    state: str
    counter: str | None
    called_at: datetime | None
    done_at: datetime | None


class TicketOut(BaseModel):
    number: int
    day: str
    state: str
    issued_at: datetime
    procedures: list[str]
    stops: list[StopOut]
    token: str | None = None
    #: Minutes until this ticket is likely called next (0: being called or served; null: finished).
    estimate_min: float | None = None


class CounterOut(BaseModel):
    id: str
    name_ja: str
    name_en: str
    services: list[str]
    ticket: int | None
    state: str | None
    waiting: int
    device: str | None
    device_state: str | None


class ActionOut(BaseModel):
    ok: Literal[True] = True
    ticket: int | None
    message_ja: str
    message_en: str


def create_app(central: Central, *, mqtt_connected=lambda: False, config_hash: str = "",
               auth: AuthSettings | None = None) -> FastAPI:
    """The app.  ``auth``: ``[auth]`` of central.toml (sessions, cookie, throttle)."""
    site = central.site
    engine = central.engine
    app = FastAPI(
        title="madoguchi central",
        version="1",
        description="Tickets, counters and queue of one site.  See docs/http-api.md.",
        # Swagger UI and ReDoc load their scripts from a CDN, which an office
        # network does not reach: serve the schema only (/openapi.json).
        docs_url=None,
        redoc_url=None,
        # The login check runs before routing (central/auth_web.py); this
        # checks the route the router really picked once more.
        dependencies=[Depends(route_check)],
    )

    # Web login (docs/security.md): /login, /logout, /api/v1/session, and the
    # check in front of every route.  Its middleware is added first, so the
    # body-size check below runs before it (the one added last is outermost).
    install_login(app, Accounts(engine.store, auth), auth or AuthSettings(),
                  site_ja=site.site.name_ja, site_en=site.site.name_en)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is None and request.method in ("POST", "PUT", "PATCH") and "chunked" in request.headers.get("transfer-encoding", ""):
            # A chunked body has no length to check before it is read: refuse it.
            return JSONResponse(
                {"error": "length_required", "message_ja": "Content-Length が必要です", "message_en": "send a Content-Length"},
                status_code=411,
            )
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse(
                {"error": "too_large", "message_ja": f"本文が大きすぎます（上限 {MAX_BODY} バイト）", "message_en": f"body over {MAX_BODY} bytes"},
                status_code=413,
            )
        return await call_next(request)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError):
        logger.info("request refused: %s: %s", exc.code, exc.en)
        return JSONResponse({"error": exc.code, "message_ja": exc.ja, "message_en": exc.en}, status_code=403)

    @app.exception_handler(QueueError)
    async def queue_error(request: Request, exc: QueueError):
        return JSONResponse(
            {"error": exc.code, "message_ja": exc.ja, "message_en": exc.en},
            status_code=STATUS_OF.get(exc.code, 409),
        )

    @app.exception_handler(PaymentError)
    async def payment_error(request: Request, exc: PaymentError):
        logger.info("payment request refused: %s: %s", exc.code, exc.en)
        return JSONResponse(
            {"error": exc.code, "message_ja": exc.ja, "message_en": exc.en},
            status_code=STATUS_OF.get(exc.code, 409),
        )

    def ticket_out(t: TicketView, *, with_token: bool = False, estimate: bool = False) -> TicketOut:
        minutes = engine.ticket_estimate(t.number, t.day) if estimate else None
        return TicketOut(
            estimate_min=round(minutes, 1) if minutes is not None else None,
            number=t.number, day=t.day, state=t.state, issued_at=t.issued_at, procedures=list(t.procedures),
            token=t.token if with_token else None,
            stops=[
                StopOut(
                    service=s.service, name_ja=site.service(s.service).name_ja, name_en=site.service(s.service).name_en,
                    state=s.state, counter=s.counter, called_at=s.called_at, done_at=s.done_at,
                )
                for s in t.stops
            ],
        )

    def counter_out(counter_id: str) -> CounterOut:
        c = site.counter(counter_id)
        view = engine.counter_view(counter_id)
        device = site.device_of_counter(counter_id)
        return CounterOut(
            id=c.id, name_ja=c.name_ja, name_en=c.name_en, services=list(c.services), ticket=view.ticket,
            state=view.stop.state if view.stop else None, waiting=view.waiting,
            device=device.id if device else None,
            device_state=central.devices[device.id].state if device else None,
        )

    def known_counter(counter: str) -> str:
        if counter not in {c.id for c in site.counters}:
            raise QueueError("not_found", f"窓口 {counter[:20]} はありません", f"no counter {counter[:20]!r}")
        return counter

    def act(outcome, counter: str | None = None) -> ActionOut:
        central.apply(outcome, origin=counter)
        return ActionOut(ticket=outcome.ticket, message_ja=outcome.ja, message_en=outcome.en)

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "ok",
            "mqtt": "connected" if mqtt_connected() else "disconnected",
            "site": site.site.id,
            "config_hash": config_hash,
        }

    @app.get("/api/v1/site")
    async def get_site():
        return {
            "site": site.site.model_dump(),
            "services": [s.model_dump() for s in site.services],
            "counters": [c.model_dump() for c in site.counters],
            "procedures": [p.model_dump() for p in site.procedures],
        }

    @app.post("/api/v1/tickets", status_code=201, response_model=TicketOut)
    async def issue_ticket(
        body: IssueRequest,
        idempotency_key: Annotated[str | None, Header(
            pattern=r"^[A-Za-z0-9_-]{8,64}$",
            description="retry-safe issuing (the kiosk): the same key with the same procedures answers the same "
                        "ticket (200); with other procedures 409.  Kept two days.")] = None,
    ):
        if idempotency_key is None:
            ticket = engine.issue(body.procedures, source="api")
        else:
            ticket, replayed = engine.issue_once(body.procedures, key=idempotency_key, source="api")
            if replayed:  # the first answer was lost on the way: the same ticket, nothing new issued
                out = ticket_out(ticket, with_token=True, estimate=True)
                return JSONResponse(out.model_dump(mode="json"), status_code=200)
        central.apply_issue(ticket)
        return ticket_out(ticket, with_token=True, estimate=True)

    @app.get("/api/v1/tickets", response_model=list[TicketOut])
    async def list_tickets(day: Day | None = None, active: bool = False):
        return [ticket_out(t) for t in engine.tickets(day, active_only=active)]

    @app.get("/api/v1/tickets/{number}", response_model=TicketOut)
    async def get_ticket(number: Number, day: Day | None = None):
        return ticket_out(engine.ticket(number, day), estimate=True)

    @app.post("/api/v1/tickets/{number}/stops", response_model=ActionOut)
    async def add_stop(number: Number, body: ServiceRequest):
        return act(engine.add_stop(number, body.service, source="api"))

    @app.get("/api/v1/counters", response_model=list[CounterOut])
    async def list_counters():
        return [counter_out(c.id) for c in site.counters]

    @app.get("/api/v1/counters/{counter}", response_model=CounterOut)
    async def get_counter(counter: str):
        return counter_out(known_counter(counter))

    # ------------------------------------------------------------ payments (docs/payments.md)
    def ledger():
        if central.ledger is None:
            raise PaymentError("unavailable", "料金表が設定されていません", "no fee catalog configured")
        return central.ledger

    @app.get("/api/v1/fees")
    async def fees():
        catalog = ledger().catalog
        return {
            "items": [item.model_dump(mode="json") for item in catalog.items.values()],
            "brands": [
                {**b.model_dump(mode="json"), "void_note_ja": b.void_note_ja, "unknown_note_ja": b.unknown_note_ja}
                for b in catalog.brands.values()
            ],
        }

    @app.get("/api/v1/fees/{code}/flow")
    async def fee_flow(code: str, method: Annotated[str, Query(max_length=20)] = "cash"):
        catalog = ledger().catalog
        try:
            item = catalog.item(code)
            return {"code": item.code, "method": method, "steps": catalog.flow(code, method)}
        except KeyError as exc:
            raise PaymentError("not_found", f"科目 {code[:32]} はありません", str(exc.args[0] if exc.args else exc)) from None
        except ValueError as exc:
            raise PaymentError("invalid", f"支払方法 {method[:20]} の手順はありません", str(exc)[:200]) from None

    @app.post("/api/v1/counters/{counter}/charges", status_code=201)
    async def create_charge(counter: str, body: ChargeRequest, request: Request):
        row, lines, new = ledger().create_charge(
            counter=counter, lines=[(line.code, line.quantity) for line in body.lines], method=body.method,
            brand=body.brand, tendered=body.tendered, ticket=body.ticket, staff_id=recorded_staff(request, body.staff_id),
            payment_id=body.payment_id,
        )
        if new or row.state == "sent":
            # New, or a retry of a charge the counter never confirmed (the
            # first command may have been lost): send it (again).  The counter
            # takes a payment id once.
            central.send_charge(row, lines, start=body.start)
        return ledger().get(row.payment_id).public()

    @app.get("/api/v1/payments")
    async def list_payments(day: Day | None = None, counter: Annotated[str | None, Query(max_length=32)] = None):
        return [p.public() for p in ledger().list(day=day, counter=counter)]

    @app.get("/api/v1/payments/{payment_id}")
    async def get_payment(payment_id: Annotated[str, Path(max_length=36)]):
        row = ledger().get(payment_id)
        return {**row.public(), "log": ledger().log(payment_id)}

    @app.post("/api/v1/payments/{payment_id}/{action}")
    async def payment_action(
        payment_id: Annotated[str, Path(max_length=36)],
        action: Literal["start", "cancel", "confirm", "resolve", "void", "reprint"],
        body: PaymentActionRequest,
        request: Request,
    ):
        led = ledger()
        # Logged in: the staff id is the login's (a different one in the body is refused).
        staff_id = recorded_staff(request, body.staff_id)
        if action == "void":
            if staff_id is None or body.reason is None:
                raise PaymentError("invalid", "取消には職員番号と理由が必要です", "a void needs staff_id and reason")
            new, kind = led.prepare_void(payment_id, counter=body.counter, staff_id=staff_id, reason=body.reason)
            central.send_payment_command(
                led.get(payment_id), PaymentAction.VOID if kind == "void" else PaymentAction.REFUND,
                new_id=uuid.UUID(new.payment_id), staff_id=staff_id, reason=body.reason,
            )
            return {**led.get(new.payment_id).public(), "action": kind}
        row = led.check_counter(payment_id, body.counter)
        if action in ("confirm", "resolve") and body.approved is not None and staff_id is None:
            raise PaymentError("invalid", "確定には職員番号が必要です", "confirming needs staff_id")
        if action == "confirm" and body.approved is None:
            raise PaymentError("invalid", "結果（決済できた／できなかった）を選んでください", "confirm needs approved")
        if action in ("confirm", "resolve") and body.approved and row.method != "cash" and body.slip_no is None:
            raise PaymentError("invalid", "決済できた場合は伝票番号を入力してください", "an approval needs the slip number")
        fields = {k: v for k, v in body.model_dump().items() if k not in ("counter", "staff_id") and v is not None}
        if staff_id is not None:
            fields["staff_id"] = staff_id
        try:
            central.send_payment_command(row, PaymentAction(action), **fields)
        except ValueError as exc:
            raise PaymentError("invalid", "指示の内容が不正です", str(exc)[:200]) from None
        return {**row.public(), "action": action}

    simple = {
        "call-next": engine.call_next,
        "recall": engine.recall,
        "no-show": engine.no_show,
        "hold": engine.hold,
        "finish": engine.finish,
        "start": engine.start,
    }

    @app.post("/api/v1/counters/{counter}/call", response_model=ActionOut)
    async def call_ticket(counter: str, body: CallRequest):
        return act(engine.call(known_counter(counter), body.number, source="api"), counter)

    @app.post("/api/v1/counters/{counter}/transfer", response_model=ActionOut)
    async def transfer(counter: str, body: ServiceRequest):
        return act(engine.transfer(known_counter(counter), body.service, source="api"), counter)

    @app.post("/api/v1/counters/{counter}/{action}", response_model=ActionOut)
    async def counter_action(
        counter: str,
        action: Literal["call-next", "recall", "no-show", "hold", "finish", "start"],
        idempotency_key: IdempotencyKey = None,
    ):
        known_counter(counter)
        if action == "start":
            return act(engine.start(counter, source="api"), counter)
        # The same key means the same press: a retried request is applied once
        # (like a button event's event_id).
        key = f"http:{counter}:{action}:{idempotency_key}" if idempotency_key else None
        outcome = simple[action](counter, source="api", event_id=key, device="api")
        if outcome.duplicate:
            # Answer a retry with where the counter is now (the first answer
            # was lost on the way, the action itself was applied once).
            view = engine.counter_view(counter)
            central.apply(outcome, origin=counter)
            return ActionOut(ticket=view.ticket, message_ja="処理済みです", message_en="already done (retry)")
        return act(outcome, counter)


    @app.get("/api/v1/stats")
    async def stats():
        return {
            "handled": dict(central.stats.handled),
            "rejected": dict(central.stats.rejected),
            "last_rejection": central.stats.last_rejection,
            "devices": {k: {"state": v.state, "boot_id": v.boot_id} for k, v in central.devices.items()},
        }

    @app.get("/api/v1/board")
    async def board():
        return central.board().model_dump(mode="json", by_alias=True)

    # Accounting (issue #4): day close, KPIs, the monthly statement matching; pages and JSON.
    from central.accounting_web import accounting_router
    from central.reconcile_web import reconcile_router

    catalog = central.ledger.catalog if central.ledger else None
    app.include_router(accounting_router(engine.store, site, catalog))
    app.include_router(reconcile_router(engine.store, site, catalog))
    # What visitors see (issue #6): the lobby board.
    from central.board_web import board_router

    app.include_router(board_router(central))
    # The visitor's phone page (issue #6), from the QR code on the ticket.
    from central.visit_web import visit_router

    app.include_router(visit_router(engine, site))
    from central.fleet_web import (
        fleet_router,  # IT's admin page and the fleet API (issue #7)
    )

    app.include_router(fleet_router(central))

    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request):
        return with_user_bar(resources.files("central").joinpath("overview.html").read_text(encoding="utf-8"), request)

    # The counter console (docs/console.md): one page; /console lists the
    # counters, /console/{counter} is the console of one (the page reads the
    # counter from its path and checks it with the API).
    @app.get("/console", response_class=HTMLResponse)
    async def console_choose(request: Request):
        return with_user_bar(resources.files("central").joinpath("console.html").read_text(encoding="utf-8"), request)

    @app.get("/console/{counter}", response_class=HTMLResponse)
    async def console(counter: Annotated[str, Path(pattern=ID_PATTERN)], request: Request):
        return with_user_bar(resources.files("central").joinpath("console.html").read_text(encoding="utf-8"), request)

    return app
