"""The fleet on the web: the admin page for IT and its JSON API (docs/fleet.md,
docs/http-api.md).

* ``GET /admin`` — the page (``central/admin.html``): devices, alerts, audit.
* ``GET /api/v1/fleet/devices`` and ``/api/v1/fleet/devices/{id}``.
* ``POST /api/v1/fleet/devices/{id}/requests/{method}`` ``{"params": {...}}``
  — sends the request to the device over MQTT and answers with the device's
  answer (``status`` ok/error, ``code``, ``error``, ``data``); 404 unknown
  device, 409 offline, 504 no answer.
* ``GET /api/v1/fleet/audit``; ``GET /api/v1/fleet/alerts``;
  ``POST /api/v1/fleet/alerts/{id}/ack``.

Who is asking comes from ONE dependency, :func:`current_requester`: the
logged-in IT staff member (central/auth_web.py), recorded in the audit.  Handlers are
``async def``: central's store is used from its event loop only
(central/web.py says why).
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bus.models import MAX_REQUEST_BYTES, REQUEST_METHODS
from bus.topics import ID_PATTERN
from central.auth_web import principal_of, with_user_bar
from central.fleet import FleetError

DeviceId = Annotated[str, Path(pattern=ID_PATTERN, description="device id")]
Method = Annotated[str, Path(pattern=ID_PATTERN, description=f"one of {', '.join(REQUEST_METHODS)}")]
ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ParamValue = Annotated[str, StringConstraints(max_length=MAX_REQUEST_BYTES)] | int | float | bool | None


def current_requester(request: Request) -> str:
    """Who is asking, as recorded in the audit (``requested_by``): the staff
    id of the login (session or API token).  Central's login check lets
    only the ``it`` role reach these routes; without a login nothing is done."""
    principal = principal_of(request)
    if principal is None:
        raise HTTPException(401, "login required")
    return principal.staff_id


Requester = Annotated[str, Depends(current_requester)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    params: dict[ParamName, ParamValue] = Field(default_factory=dict, max_length=32)


def _error(exc: FleetError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message_ja": exc.ja, "message_en": exc.en}, status_code=exc.status)


def fleet_router(central) -> APIRouter:
    router = APIRouter(tags=["fleet"])
    fleet = central.fleet

    @router.get("/admin", response_class=HTMLResponse)
    async def admin_page(request: Request):
        return with_user_bar(resources.files("central").joinpath("admin.html").read_text(encoding="utf-8"), request)

    @router.get("/api/v1/fleet/devices")
    async def list_devices():
        return [rec.public() for rec in fleet.devices.values()]

    @router.get("/api/v1/fleet/devices/{device}")
    async def get_device(device: DeviceId):
        rec = fleet.devices.get(device)
        if rec is None:
            return _error(FleetError("not_found", f"機器 {device} はありません", f"no device {device!r}", 404))
        return {**rec.public(), "info": rec.info, "health_report": rec.health,
                "audit": fleet.audit_log(device=device, limit=50)}

    @router.post("/api/v1/fleet/devices/{device}/requests/{method}")
    async def send_request(device: DeviceId, method: Method, requester: Requester, body: RequestBody | None = None):
        params = dict(body.params) if body is not None else {}
        try:
            return await fleet.request(device, method, params, requested_by=requester)
        except FleetError as exc:
            return _error(exc)

    @router.get("/api/v1/fleet/audit")
    async def audit(device: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
                    request_id: Annotated[str | None, Query(max_length=36)] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 200):
        return fleet.audit_log(device=device, request_id=request_id, limit=limit)

    @router.get("/api/v1/fleet/alerts")
    async def alerts(all: bool = False, limit: Annotated[int, Query(ge=1, le=1000)] = 200):
        return fleet.alerts(include_closed=all, limit=limit)

    @router.post("/api/v1/fleet/alerts/{alert_id}/ack")
    async def acknowledge(alert_id: Annotated[int, Path(ge=1)], requester: Requester):
        try:
            return fleet.acknowledge(alert_id, requester)
        except FleetError as exc:
            return _error(exc)

    return router


__all__ = ["current_requester", "fleet_router"]
