"""The fleet manager: every device of the site, online or offline, what it
is and how its peripherals are; requests to devices; their audit; alerts.
Issue #7; docs/fleet.md.

* **Registry.**  Fed by each device's retained ``status`` (birth and the
  last will the broker publishes when the device's keep-alive runs out),
  ``info`` and ``health``.  A will of an older boot is ignored.  The latest of
  each device is stored (``fleet_devices``) so a restarted central still knows
  when a device went offline.
* **Audit.**  Central subscribes to every device's ``req/+`` and ``res/+``:
  every request it sees (its own, sent for IT on the admin page, and those
  IT admins send with ``madoguchi devices``) and every answer is one
  append-only ``fleet_audit`` row — who (the claimed ``requested_by``; the
  broker's ACL only lets central and IT publish requests), what (method and
  params, a config's secrets never stored), and the result.  A request that
  does not validate is audited as ``malformed`` with the reason.
* **Alerts.**  A device offline; a peripheral whose health is warning or
  error (printer paper near end / out, cover open, terminal not answering ...).
  Opened and logged when it starts, cleared when it ends, acknowledged by IT.

Runs on central's loop (as the queue engine): the store is used from one thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from bus import PayloadError, decode, encode
from bus.codec import describe
from bus.models import (
    MAX_REQUEST_BYTES,
    REQUEST_METHODS,
    DeviceState,
    Health,
    Info,
    Request,
    Response,
    Status,
    utcnow,
)
from bus.topics import TopicParts, Topics

logger = logging.getLogger(__name__)

#: The requester level of central's response topic: ``device/<d>/res/central``.
REQUESTER = "central"
#: How long a request from the admin page lives, and how long central waits for its answer.
REQUEST_LIFE_S = 30
ANSWER_TIMEOUT_S = 10.0
#: What an audit row keeps of an answer's data (the logs themselves are not kept).
DETAIL_MAX = 2000
#: A peripheral alert opens only once its condition has held this long (the
#: device going offline is not delayed: the broker's keep-alive already is).
#: A Pi starting up says "terminal not connected" for the second or two
#: before it is; a printer reading "no reply" once between two jobs: IT is
#: not to be called for those.
PERIPHERAL_ALERT_GRACE_S = 10.0

ALERT_TEXT: dict[str, tuple[str, str]] = {
    "offline": ("オフラインです", "offline"),
    "printer:paper_near_end": ("プリンタの用紙が残りわずかです", "printer paper near end"),
    "printer:paper_end": ("プリンタの用紙がありません", "printer out of paper"),
    "printer:cover_open": ("プリンタのカバーが開いています", "printer cover open"),
    "printer:cutter_error": ("プリンタのカッターエラー", "printer cutter error"),
    "printer:no_reply": ("プリンタが応答しません", "printer not answering"),
    "printer:offline": ("プリンタがオフラインです", "printer offline"),
    "terminal:not_connected": ("決済端末が接続されていません", "payment terminal not connected"),
    "terminal:no_reply": ("決済端末が応答しません", "payment terminal not answering"),
    "clock:clock_skew": ("時計がずれています（NTP を確認）", "clock out of sync (check NTP)"),
}


class FleetError(Exception):
    """A fleet action refused here (before anything reached a device)."""

    def __init__(self, code: str, ja: str, en: str, status: int = 409) -> None:
        super().__init__(en)
        self.code, self.ja, self.en, self.status = code, ja, en, status


@dataclass
class DeviceRecord:
    device: str
    role: str | None = None
    counter: str | None = None
    state: str = "unknown"
    state_since: datetime | None = None
    boot_id: str | None = None
    last_seen: datetime | None = None
    info: dict[str, Any] | None = None
    health: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        info = self.info or {}
        health = self.health or {}
        peripherals = {
            name: {"status": h.get("status"), "reason": h.get("reason"), "message": h.get("message"),
                   "driver": (info.get("peripherals", {}).get(name) or {}).get("driver")}
            for name, h in (health.get("peripherals") or {}).items()
        }
        worst = "ok"
        for p in peripherals.values():
            if p["status"] == "error":
                worst = "error"
            elif p["status"] == "warning" and worst == "ok":
                worst = "warning"
        started = info.get("started_at")
        uptime = health.get("uptime_s")
        return {
            "device": self.device, "role": self.role or info.get("role"), "counter": self.counter or info.get("counter"),
            "state": self.state, "state_since": _iso(self.state_since), "boot_id": self.boot_id,
            "last_seen": _iso(self.last_seen), "version": info.get("version"), "config_hash": info.get("config_hash"),
            "ip": info.get("ip"), "started_at": started, "uptime_s": uptime,
            "health": worst if peripherals else None, "peripherals": peripherals,
        }


@dataclass
class _Waiting:
    device: str
    method: str
    future: asyncio.Future = field(repr=False)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def params_for_audit(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """What the audit keeps of a request's params: a set-config's TOML (which
    may hold passwords) becomes its size and hash."""
    out = dict(params)
    config = out.get("config")
    if isinstance(config, str):
        raw = config.encode("utf-8")
        out["config"] = f"<TOML {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}>"
    return out


def summary_of(method: str | None, data: dict[str, Any] | None) -> str | None:
    """A short record of an answer's data for the audit (log lines and config texts are not kept)."""
    if not data:
        return None
    if method == "logs" and isinstance(data.get("lines"), list):
        return f"{len(data['lines'])} log lines"
    if method == "get-config":
        keep = {k: v for k, v in data.items() if k != "config"}
        keep["config_bytes"] = len(str(data.get("config", "")).encode())
        return json.dumps(keep, ensure_ascii=False)[:DETAIL_MAX]
    return json.dumps(data, ensure_ascii=False, default=str)[:DETAIL_MAX]


class Fleet:
    """The registry, the audit and the alerts of one site's devices."""

    def __init__(self, store, site, publisher, *, topics: Topics | None = None,
                 alert_grace_s: float = PERIPHERAL_ALERT_GRACE_S, clock=time.monotonic) -> None:
        self.store = store
        self.site = site
        self.publisher = publisher
        self.topics = topics or Topics(site.site.id)
        self.devices: dict[str, DeviceRecord] = {}
        self._waiting: dict[uuid.UUID, _Waiting] = {}
        #: Peripheral conditions not yet alerted: (device, kind) → (since, severity, message).
        self._pending: dict[tuple[str, str], tuple[float, str, str | None]] = {}
        self.alert_grace_s = alert_grace_s
        self._clock = clock
        self._load()

    # ---------------------------------------------------------------- storage
    def _load(self) -> None:
        rows = {r["device"]: r for r in self.store.conn.execute("SELECT * FROM fleet_devices")}
        for d in self.site.devices:
            r = rows.get(d.id)
            rec = DeviceRecord(device=d.id, role=d.role, counter=d.counter)
            if r is not None:
                rec.state = r["state"]
                rec.state_since = _parse_time(r["state_since"])
                rec.boot_id = r["boot_id"]
                rec.last_seen = _parse_time(r["last_seen"])
                rec.info = json.loads(r["info"]) if r["info"] else None
                rec.health = json.loads(r["health"]) if r["health"] else None
            self.devices[d.id] = rec

    def _save(self, rec: DeviceRecord) -> None:
        now = utcnow().isoformat()
        with self.store.transaction() as tx:
            tx.execute("DELETE FROM fleet_devices WHERE device = ?", (rec.device,))
            tx.execute(
                "INSERT INTO fleet_devices (device, role, counter, state, state_since, boot_id, last_seen, info, health, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.device, rec.role, rec.counter, rec.state, _iso(rec.state_since), rec.boot_id, _iso(rec.last_seen),
                 json.dumps(rec.info, ensure_ascii=False) if rec.info else None,
                 json.dumps(rec.health, ensure_ascii=False) if rec.health else None, now),
            )

    def audit(self, kind: str, device: str, *, status: str, request_id: uuid.UUID | str | None = None,
              method: str | None = None, requested_by: str | None = None, via: str | None = None,
              params: dict[str, Any] | None = None, code: str | None = None, detail: str | None = None) -> int:
        with self.store.transaction() as tx:
            cur = tx.execute(
                "INSERT INTO fleet_audit (at, kind, request_id, device, method, requested_by, via, params, status, code, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (utcnow().isoformat(), kind, str(request_id) if request_id else None, device, method, requested_by, via,
                 json.dumps(params, ensure_ascii=False, default=str) if params is not None else None, status, code,
                 detail[:DETAIL_MAX] if detail else None),
            )
            return cur.lastrowid

    def audit_log(self, *, device: str | None = None, request_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM fleet_audit", []
        where = []
        if device:
            where.append("device = ?")
            args.append(device)
        if request_id:
            where.append("request_id = ?")
            args.append(request_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        out = []
        for r in self.store.conn.execute(sql, args):
            row = dict(r)
            row["params"] = json.loads(row["params"]) if row["params"] else None
            out.append(row)
        return out

    # ---------------------------------------------------------------- alerts
    def _open_alert(self, device: str, kind: str, severity: str, message: str | None = None) -> None:
        existing = self.store.conn.execute(
            "SELECT id FROM fleet_alerts WHERE device = ? AND kind = ? AND cleared_at IS NULL", (device, kind)
        ).fetchone()
        if existing:
            return
        ja, en = ALERT_TEXT.get(kind, (f"{kind}: {message or ''}", f"{kind}: {message or ''}"))
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO fleet_alerts (device, kind, severity, message_ja, message_en, opened_at) VALUES (?, ?, ?, ?, ?, ?)",
                (device, kind, severity, ja[:200], en[:200], utcnow().isoformat()),
            )
        logger.log(logging.ERROR if severity == "error" else logging.WARNING, "alert: %s: %s (%s)", device, en, kind)

    def _clear_alerts(self, device: str, keep: set[str], *, only: str | None = None) -> None:
        """Clear ``device``'s open alerts of kinds not in ``keep`` (``only``: of that kind / prefix)."""
        rows = self.store.conn.execute(
            "SELECT id, kind FROM fleet_alerts WHERE device = ? AND cleared_at IS NULL", (device,)
        ).fetchall()
        gone = [r for r in rows if r["kind"] not in keep and (only is None or r["kind"] == only or r["kind"].startswith(only))]
        if not gone:
            return
        with self.store.transaction() as tx:
            for r in gone:
                tx.execute("UPDATE fleet_alerts SET cleared_at = ? WHERE id = ?", (utcnow().isoformat(), r["id"]))
        for r in gone:
            logger.info("alert cleared: %s: %s", device, r["kind"])

    def alerts(self, *, include_closed: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        sql = "SELECT * FROM fleet_alerts"
        if not include_closed:
            sql += " WHERE cleared_at IS NULL OR acked_at IS NULL"
        sql += " ORDER BY id DESC LIMIT ?"
        return [{**dict(r), "open": r["cleared_at"] is None} for r in self.store.conn.execute(sql, (limit,))]

    def acknowledge(self, alert_id: int, by: str) -> dict[str, Any]:
        row = self.store.conn.execute("SELECT * FROM fleet_alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            raise FleetError("not_found", f"アラート {alert_id} はありません", f"no alert {alert_id}", 404)
        if row["acked_at"] is None:
            with self.store.transaction() as tx:
                tx.execute("UPDATE fleet_alerts SET acked_at = ?, acked_by = ? WHERE id = ?",
                           (utcnow().isoformat(), by, alert_id))
            self.audit("alert_ack", row["device"], status="ok", requested_by=by, via="web",
                       detail=f"alert #{alert_id} {row['kind']}")
        row = self.store.conn.execute("SELECT * FROM fleet_alerts WHERE id = ?", (alert_id,)).fetchone()
        return {**dict(row), "open": row["cleared_at"] is None}

    # ---------------------------------------------------------------- bus in
    def handle(self, device: str, parts: TopicParts, payload: bytes) -> None:
        """A message on a device's status/info/health/req/res topic.
        Raises :class:`PayloadError` for a bad status/info/health (the caller counts it)."""
        if parts.channel == "req":
            self._on_request(device, parts.name or "", payload)
        elif parts.channel == "res":
            self._on_response(device, parts.name or "", payload)
        elif parts.channel == "status":
            self.on_status(device, decode(Status, payload))
        elif parts.channel == "info":
            self._on_info(device, decode(Info, payload))
        elif parts.channel == "health":
            self._on_health(device, decode(Health, payload))

    def on_status(self, device: str, status: Status) -> None:
        rec = self.devices[device]
        if status.state is DeviceState.OFFLINE and rec.boot_id not in (None, status.boot_id) and rec.state == "online":
            return  # a will of an older boot, after the device came back
        now = utcnow()
        changed = rec.state != status.state.value
        if status.state is DeviceState.ONLINE:
            rec.last_seen = now
        if changed or rec.boot_id != status.boot_id:
            rec.state_since = status.since if (status.state is DeviceState.ONLINE and status.since) else now
        rec.state, rec.boot_id = status.state.value, status.boot_id
        self._save(rec)
        if status.state is DeviceState.OFFLINE:
            self._open_alert(device, "offline", "error")
            self._forget_pending(device, keep=set())  # "offline" says it all
        else:
            self._clear_alerts(device, set(), only="offline")

    def _on_info(self, device: str, info: Info) -> None:
        rec = self.devices[device]
        rec.info = info.model_dump(mode="json", by_alias=True)
        if rec.state == "online":
            rec.last_seen = utcnow()
        self._save(rec)

    def _on_health(self, device: str, health: Health) -> None:
        rec = self.devices[device]
        rec.health = health.model_dump(mode="json", by_alias=True)
        if rec.state == "online":
            rec.last_seen = utcnow()
        self._save(rec)
        keep: set[str] = set()
        for name, p in health.peripherals.items():
            if p.status.value in ("warning", "error"):
                kind = f"{name}:{p.reason or p.status.value}"
                keep.add(kind)
                self._pending.setdefault((device, kind), (self._clock(), p.status.value, p.message))
        self._forget_pending(device, keep)
        self.open_due_alerts()
        # Peripheral alerts that no longer hold are cleared ("offline" is the status's business).
        keep.add("offline")
        self._clear_alerts(device, keep)

    def _forget_pending(self, device: str, keep: set[str]) -> None:
        for key in [k for k in self._pending if k[0] == device and k[1] not in keep]:
            del self._pending[key]

    def open_due_alerts(self) -> None:
        """Open the peripheral alerts whose condition has held for the grace
        (called on each health message and from central's tick)."""
        now = self._clock()
        for (device, kind), (since, severity, message) in list(self._pending.items()):
            if now - since >= self.alert_grace_s:
                del self._pending[(device, kind)]
                self._open_alert(device, kind, severity, message)

    def _on_request(self, device: str, method: str, payload: bytes) -> None:
        try:
            req = decode(Request, payload, max_bytes=MAX_REQUEST_BYTES)
        except PayloadError as exc:
            self.audit("request", device, status="malformed", method=method[:32], via="mqtt",
                       request_id=_request_id_of(payload), code=exc.reason, detail=exc.detail)
            logger.warning("fleet: malformed request %s to %s: %s", method, device, exc)
            return
        if req.request_id in self._waiting:
            return  # our own, audited when sent
        self.audit("request", device, status="seen", request_id=req.request_id, method=method[:32],
                   requested_by=req.requested_by, via="mqtt", params=params_for_audit(method, dict(req.params)),
                   detail=f"expires {req.expires_at.isoformat()}")

    def _on_response(self, device: str, requester: str, payload: bytes) -> None:
        try:
            res = decode(Response, payload)
        except PayloadError as exc:
            self.audit("response", device, status="malformed", via=requester, code=exc.reason, detail=exc.detail)
            logger.warning("fleet: malformed answer from %s: %s", device, exc)
            return
        if self.devices[device].state == "online":
            self.devices[device].last_seen = utcnow()
        waiting = self._waiting.pop(res.request_id, None) if res.request_id else None
        self.audit("response", device, status=res.status, request_id=res.request_id, method=res.method,
                   via=requester, code=res.code,
                   detail=res.error if res.status == "error" else summary_of(res.method, res.data))
        if waiting is not None and not waiting.future.done():
            waiting.future.set_result(res)

    # ---------------------------------------------------------------- requests out
    async def request(self, device: str, method: str, params: dict[str, Any], *, requested_by: str,
                      timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """Send a request for IT (the admin page) and wait for the device's answer."""
        rec = self.devices.get(device)
        if rec is None:
            raise FleetError("not_found", f"機器 {device[:32]} はありません", f"no device {device[:32]!r}", 404)
        if method not in REQUEST_METHODS:
            raise FleetError("unknown_method", f"不明な操作です: {method[:32]}", f"unknown method {method[:32]!r}", 404)
        now = utcnow()
        try:
            req = Request(request_id=uuid.uuid4(), requested_by=requested_by, issued_at=now,
                          expires_at=now + timedelta(seconds=REQUEST_LIFE_S), params=params)
        except ValidationError as exc:
            raise FleetError("invalid", "指定が不正です", describe(exc), 422) from None
        payload = encode(req)
        if len(payload) > MAX_REQUEST_BYTES:
            raise FleetError("too_large", f"要求が大きすぎます（上限 {MAX_REQUEST_BYTES} バイト）",
                             f"request over {MAX_REQUEST_BYTES} bytes", 413)
        audit_params = params_for_audit(method, params)
        if rec.state != "online":
            self.audit("request", device, status="not_sent", request_id=req.request_id, method=method,
                       requested_by=requested_by, via="web", params=audit_params, code="offline")
            raise FleetError("offline", f"{device} はオフラインです", f"{device} is offline", 409)
        if not getattr(self.publisher, "connected", True):
            self.audit("request", device, status="not_sent", request_id=req.request_id, method=method,
                       requested_by=requested_by, via="web", params=audit_params, code="no_broker")
            raise FleetError("no_broker", "ブローカーに接続していません", "central is not connected to the broker", 503)
        future = asyncio.get_running_loop().create_future()
        self._waiting[req.request_id] = _Waiting(device, method, future)
        self.audit("request", device, status="sent", request_id=req.request_id, method=method,
                   requested_by=requested_by, via="web", params=audit_params)
        self.publisher.publish_request(self.topics.req(device, method), payload,
                                       response_topic=self.topics.res(device, REQUESTER),
                                       correlation=req.request_id.bytes, expiry_s=REQUEST_LIFE_S)
        try:
            res: Response = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._waiting.pop(req.request_id, None)
            self.audit("timeout", device, status="no_answer", request_id=req.request_id, method=method,
                       requested_by=requested_by, via="web", detail=f"no answer within {timeout:.0f} s")
            raise FleetError("timeout", f"{device} から応答がありません", f"no answer from {device} within {timeout:.0f} s",
                             504) from None
        return {"request_id": str(req.request_id), "device": device, "method": method, "status": res.status,
                "code": res.code, "error": res.error, "data": res.data}


def _request_id_of(payload: bytes) -> str | None:
    try:
        data = json.loads(payload)
        return str(uuid.UUID(str(data["request_id"]))) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


__all__ = ["ALERT_TEXT", "REQUESTER", "DeviceRecord", "Fleet", "FleetError", "params_for_audit"]
