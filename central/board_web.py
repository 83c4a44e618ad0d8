"""The lobby board (ロビー表示): the page for the TV in the waiting area and its JSON.

``GET /board`` is one static page (``central/board.html``); it polls
``GET /api/v1/lobby`` twice a second.  The JSON is the :class:`~bus.models.LobbyBoard`
(the same calls and waits central publishes retained on ``lobby/board``) plus every
active ticket of today as a *train*: its stations are its stops in order, each
``done`` (passed), ``current`` (called or being served, with the counter's name) or
``waiting``; the terminus is the ticket being done.

Tickets are numbers only: no token, no procedure names, nothing about the person
(design.md section 4).  Handlers are ``async def`` so the engine is only used from
central's event loop (see ``central/web.py``).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from central.queue import ENGAGED, FINISHED, TicketView
from central.service import Central

logger = logging.getLogger(__name__)

StationState = Literal["done", "current", "waiting"]
#: A train's state, from its stops: being served > called > away (不在, may return) > held > waiting.
TrainState = Literal["serving", "called", "away", "held", "waiting"]


class StationOut(BaseModel):
    service: str
    name_ja: str
    name_en: str
    state: StationState
    #: The stop's own state (waiting / called / serving / held / away / done / no_show / skipped).
    stop_state: str
    #: The counter, once the stop has been called there.
    counter: str | None = None
    counter_ja: str | None = None
    counter_en: str | None = None


class TrainOut(BaseModel):
    number: int
    state: TrainState
    stations: list[StationOut]


def station_state(stop_state: str) -> StationState:
    if stop_state in FINISHED:
        return "done"
    if stop_state in ENGAGED:
        return "current"
    return "waiting"


def train_state(ticket: TicketView) -> TrainState:
    states = {s.state for s in ticket.stops}
    for state in ("serving", "called", "away", "held"):
        if state in states:
            return state  # type: ignore[return-value]
    return "waiting"


def board_router(central: Central) -> APIRouter:
    site = central.site
    engine = central.engine
    router = APIRouter()

    def train(ticket: TicketView) -> TrainOut:
        stations = []
        for s in ticket.stops:
            service = site.service(s.service)
            counter = site.counter(s.counter) if s.counter else None
            stations.append(StationOut(
                service=s.service, name_ja=service.name_ja, name_en=service.name_en,
                state=station_state(s.state), stop_state=s.state,
                counter=counter.id if counter else None,
                counter_ja=counter.name_ja if counter else None,
                counter_en=counter.name_en if counter else None,
            ))
        return TrainOut(number=ticket.number, state=train_state(ticket), stations=stations)

    @router.get("/api/v1/lobby")
    async def lobby():
        """The lobby board: recent calls, waits per service and every active ticket as a train."""
        board = central.board().model_dump(mode="json", by_alias=True)
        trains = [train(t).model_dump(mode="json") for t in engine.tickets(None, active_only=True)]
        return {
            "ts": board["ts"],
            "site": {"name_ja": site.site.name_ja, "name_en": site.site.name_en, "timezone": site.site.timezone},
            "calls": board["calls"],
            "waits": board["waits"],
            "trains": trains,
        }

    @router.get("/board", response_class=HTMLResponse)
    async def board_page():
        return resources.files("central").joinpath("board.html").read_text(encoding="utf-8")

    return router
