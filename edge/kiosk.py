"""The kiosk (発券機): a touch page on the kiosk Pi's screen, tickets from
central, printed on the kiosk's ESC/POS printer.  Issue #6 item 3; docs/kiosk.md.

* The page (``kiosk.html``) is served on loopback by a stdlib HTTP server in
  its own threads (as drivers/display/hdmi.py); POSTs must come from the page
  itself (same-origin check).
* One issue at a time, in one worker thread: read the printer's status first
  (not printable → nothing is asked of central), then POST /api/v1/tickets to
  central (urllib, with a timeout), then print the ticket with its QR.
* A ticket whose number was issued but could not be printed is kept and
  printed when the printer recovers (nothing was sent: never twice).  When
  the connection broke while sending, part of it may be on paper: it is not
  printed again by itself (as the receipt spool).  Either way the page shows
  the number big and health says so.

Routes: ``GET /`` the page; ``GET /api/procedures``; ``POST /api/issue``
``{"procedures": [id, ...]}`` → ``{"number", "printed", "message_ja", ...}``
or ``{"error", "message_ja", "message_en"}``.
"""

from __future__ import annotations

import asyncio
import http.server
import importlib.resources
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from drivers.printer import PrinterError, PrinterNotReady, receipts

logger = logging.getLogger(__name__)

MAX_PROCEDURES = 12  # as central/queue.py
MAX_BODY_BYTES = 4096
#: How often a kept ticket is tried again, and the idle status refresh (health).
RETRY_S = 2.0
STATUS_EVERY_S = 10.0
#: How long the site (procedures, counters) is cached.
SITE_TTL_S = 60.0

PAPER_OUT_JA = "用紙切れのため発券できません。職員をお呼びください"
PAPER_OUT_EN = "Out of paper: tickets cannot be issued. Please ask a member of staff."
NOT_PRINTED_JA = "番号は発行されましたが、券を印刷できませんでした。この番号をお控えのうえ、職員にお声がけください"
NOT_PRINTED_EN = "Your number was issued but the ticket could not be printed. Please note the number and tell a member of staff."
CENTRAL_DOWN_JA = "ただいま発券できません。職員をお呼びください"
CENTRAL_DOWN_EN = "Tickets cannot be issued right now. Please ask a member of staff."

_CSP = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Refused(Exception):
    """An issue request that is refused; nothing was issued."""

    def __init__(self, status: int, error: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.status, self.error, self.ja, self.en = status, error, ja, en


@dataclass
class _Kept:
    """A ticket issued by central but not on paper yet."""
    number: int
    doc: Any
    uncertain: bool = False  # the connection broke while sending: not re-sent by itself


class KioskRole:
    def __init__(self, config, printer: Any) -> None:
        self.cfg = config.kiosk
        self.device = config.device.id
        self.zone = ZoneInfo(config.device.timezone)
        self.office = config.payments.office_ja
        self.printer = printer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kiosk-{self.device}")
        self._lock = threading.Lock()
        self._site: dict | None = None
        self._site_at = 0.0
        self._kept: list[_Kept] = []
        self._health: tuple[str, str | None, str | None] = ("ok", None, None) if printer else (
            "error", "absent", "no printer configured")
        self._stop = threading.Event()
        self.issued = 0
        self.printed = 0
        try:
            template = importlib.resources.files(__package__).joinpath("kiosk.html").read_text("utf-8")
        except OSError as exc:
            raise OSError(f"cannot read the kiosk page: {exc}") from exc
        self._page = template.encode("utf-8")
        self._server = _Server((self.cfg.host, self.cfg.port), self)
        self.port = self._server.server_address[1]
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name=f"kiosk-page-{self.port}", daemon=True),
            threading.Thread(target=self._tick, name=f"kiosk-retry-{self.device}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        logger.info("%s: kiosk page on %s", self.device, self.url)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("", "0.0.0.0") else self.cfg.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------ health
    def health(self) -> tuple[str, str | None, str | None]:
        """The printer as IT sees it (the daemon publishes it as "printer")."""
        with self._lock:
            kept = list(self._kept)
            status = self._health
        if kept:
            numbers = ", ".join(str(k.number) for k in kept)
            reason = "print_uncertain" if any(k.uncertain for k in kept) else (status[1] or "print_failed")
            return ("error", reason[:40], f"ticket(s) {numbers} issued but not printed; {status[2] or ''}"[:200])
        return status

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for t in self._threads:
            t.join(5.0)

    # ------------------------------------------------------------ central
    def _central(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.cfg.central_url.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.request_timeout_s) as resp:
                return resp.status, json.loads(resp.read(1 << 20) or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read(1 << 16) or b"null")
            except ValueError:
                return exc.code, None

    def site(self) -> dict:
        """central's site (procedures, services, counters), cached; raises OSError when unreachable."""
        with self._lock:
            if self._site is not None and time.monotonic() - self._site_at < SITE_TTL_S:
                return self._site
        code, site = self._central("GET", "/api/v1/site")
        if code != 200 or not isinstance(site, dict):
            raise OSError(f"central answered {code} to GET /api/v1/site")
        with self._lock:
            self._site, self._site_at = site, time.monotonic()
        return site

    def procedures(self) -> dict:
        site = self.site()
        return {
            "office": self.office or site.get("site", {}).get("name_ja", ""),
            "max": MAX_PROCEDURES,
            "procedures": [{"id": p["id"], "name_ja": p["name_ja"], "name_en": p["name_en"]}
                           for p in site.get("procedures", [])],
        }

    # ------------------------------------------------------------ issuing
    def issue(self, procedures: Any, timeout: float = 30.0) -> dict:
        """Validate, then issue and print in the worker thread; the page's answer.

        Raises:
            Refused: bad input, printer not ready, central refused or unreachable.
        """
        if (not isinstance(procedures, list) or not all(isinstance(p, str) for p in procedures)
                or len(set(procedures)) != len(procedures)):
            raise Refused(400, "invalid", "手続の選び方が正しくありません", "Invalid choice of procedures")
        if not procedures:
            raise Refused(400, "invalid", "手続を1つ以上お選びください", "Please choose at least one procedure")
        if len(procedures) > MAX_PROCEDURES:
            raise Refused(400, "invalid", f"手続は{MAX_PROCEDURES}件までです",
                          f"At most {MAX_PROCEDURES} procedures per ticket")
        try:
            return self._pool.submit(self._issue, procedures).result(timeout)
        except FutureTimeout:
            raise Refused(504, "timeout", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN) from None

    def _issue(self, procedures: list[str]) -> dict:
        try:
            site = self.site()
        except (OSError, ValueError) as exc:
            logger.error("%s: central unreachable: %s", self.device, exc)
            raise Refused(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN) from None
        known = {p["id"] for p in site.get("procedures", [])}
        unknown = [p for p in procedures if p not in known]
        if unknown:
            raise Refused(400, "unknown_procedure", "選べない手続が含まれています", f"Unknown procedure(s): {unknown[:3]}")
        # 1. The printer first: no paper, no number.
        if self.printer is None:
            raise Refused(503, "printer", PAPER_OUT_JA, PAPER_OUT_EN)
        if not self._printable():
            raise Refused(503, "printer", PAPER_OUT_JA, PAPER_OUT_EN)
        with self._lock:
            if self._kept:  # an earlier ticket still waits for the paper: do not take another
                raise Refused(503, "printer", PAPER_OUT_JA, PAPER_OUT_EN)
        # 2. The number, from central.
        try:
            code, t = self._central("POST", "/api/v1/tickets", {"procedures": procedures})
        except (OSError, ValueError) as exc:
            # A timeout may hide an issued number (POST /api/v1/tickets has no idempotency key).
            logger.error("%s: POST /api/v1/tickets failed: %s", self.device, exc)
            raise Refused(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN) from None
        if code != 201 or not isinstance(t, dict):
            t = t if isinstance(t, dict) else {}
            logger.warning("%s: central refused the ticket: %s %s", self.device, code, t)
            raise Refused(422 if 400 <= code < 500 else 503, t.get("error") or "refused",
                          t.get("message_ja") or CENTRAL_DOWN_JA, t.get("message_en") or CENTRAL_DOWN_EN)
        self.issued += 1
        number = int(t["number"])
        logger.info("%s: ticket %d issued for %s", self.device, number, ",".join(procedures))
        answer = {"number": number, "printed": True, "counters": self._counters(site, t),
                  "estimate_min": t.get("estimate_min"),
                  "message_ja": "券をお取りください。番号が呼ばれるまでお待ちください",
                  "message_en": "Please take your ticket and wait until your number is called."}
        # 3. The paper.
        kept = _Kept(number, self._document(site, t))
        if not self._print(kept):
            with self._lock:
                self._kept.append(kept)
            answer.update(printed=False, message_ja=NOT_PRINTED_JA, message_en=NOT_PRINTED_EN)
        return answer

    @staticmethod
    def _counters(site: dict, t: dict) -> list[str]:
        """Each stop as "住民異動 (1番窓口)": the counters that serve it."""
        out = []
        for stop in t.get("stops", []):
            names = [c["name_ja"] for c in site.get("counters", []) if stop["service"] in c.get("services", [])]
            out.append(f"{stop['name_ja']} ({'・'.join(names)})" if names else stop["name_ja"])
        return out

    def _document(self, site: dict, t: dict):
        issued = datetime.fromisoformat(str(t["issued_at"]))
        if issued.tzinfo is not None:
            issued = issued.astimezone(self.zone).replace(tzinfo=None)
        names = {p["id"]: p["name_ja"] for p in site.get("procedures", [])}
        chosen = "・".join(names.get(p, p) for p in t.get("procedures", []))
        estimate = t.get("estimate_min")
        return receipts.queue_ticket(
            number=int(t["number"]), issued_at=issued,
            office=self.office or site.get("site", {}).get("name_ja", ""),
            counters=self._counters(site, t), url=self.cfg.public_url + urllib.parse.quote(str(t.get("token") or "")),
            wait_minutes=round(estimate) if isinstance(estimate, (int, float)) else None,
            service_ja=chosen if len(chosen) <= 20 else "",
        )

    def _printable(self) -> bool:
        try:
            status = self.printer.status()
        except PrinterError as exc:
            with self._lock:
                self._health = ("error", "no_reply", str(exc)[:200])
            return False
        with self._lock:
            self._health = status.health()
        return status.printable

    def _print(self, kept: _Kept) -> bool:
        """Print ``kept`` (worker thread); False: not on paper (kept)."""
        try:
            self.printer.print(kept.doc)
        except PrinterNotReady as exc:  # nothing was sent: printed later
            logger.warning("%s: ticket %d not printed (%s): kept", self.device, kept.number, exc.reason)
            with self._lock:
                self._health = exc.status.health()
            return False
        except PrinterError as exc:  # part may be on paper: never again by itself
            logger.error("%s: printing ticket %d failed: %s", self.device, kept.number, exc)
            kept.uncertain = True
            with self._lock:
                self._health = ("error", "print_failed", str(exc)[:200])
            return False
        with self._lock:
            self._health = ("ok", None, None) if self.printer.last_status is None else self.printer.last_status.health()
        self.printed += 1
        logger.info("%s: ticket %d printed", self.device, kept.number)
        return True

    def _retry(self) -> None:
        """Worker thread: print a kept ticket when the printer is back; refresh health."""
        with self._lock:
            waiting = [k for k in self._kept if not k.uncertain]
        if self.printer is None:
            return
        if not waiting:
            self._printable()
            return
        if self._printable() and self._print(waiting[0]):
            with self._lock:
                self._kept.remove(waiting[0])

    def _tick(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(RETRY_S):
            with self._lock:
                due = any(not k.uncertain for k in self._kept)
            if due or time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                try:
                    self._pool.submit(self._retry)
                except RuntimeError:  # shut down
                    return


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], kiosk: KioskRole) -> None:
        self.kiosk = kiosk
        self._numbers = itertools.count(1)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(target=self.process_request_thread, args=(request, client_address),
                         name=f"kiosk-page-{self.server_address[1]}-client-{next(self._numbers)}", daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "madoguchi-kiosk"
    protocol_version = "HTTP/1.0"
    timeout = 10.0

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("kiosk page %s: %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, csp: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if csp:
            self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, error: str, ja: str, en: str) -> None:
        self._json(status, {"error": error, "message_ja": ja, "message_en": en})

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        kiosk = self.server.kiosk
        if path == "/":
            self._send(200, kiosk._page, "text/html; charset=utf-8", csp=True)
        elif path == "/api/procedures":
            try:
                self._json(200, kiosk.procedures())
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("kiosk: cannot read the site from central: %s", exc)
                self._error(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)
        else:
            self._error(404, "not_found", "ページがありません", f"no such page: {path}")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != "/api/issue":
            self._error(404, "not_found", "ページがありません", f"no such page: {path}")
            return
        origin = self.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.headers.get("Host", ""):
            self._error(403, "cross_origin", "この画面からのみ発券できます", "Tickets are issued from this page only")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._error(413 if length > MAX_BODY_BYTES else 400, "bad_request", "要求が正しくありません", "bad request body")
            return
        try:
            body = json.loads(self.rfile.read(length))
            procedures = body["procedures"] if isinstance(body, dict) else None
        except (ValueError, KeyError):
            procedures = None
        try:
            self._json(200, self.server.kiosk.issue(procedures))
        except Refused as r:
            self._error(r.status, r.error, r.ja, r.en)
        except Exception:
            logger.exception("kiosk: issuing failed")
            self._error(500, "internal", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)


# ------------------------------------------------------------ the daemon's kiosk run
async def run_kiosk(daemon) -> int:
    """:meth:`EdgeDaemon.run` for role "kiosk": the printer, the page, MQTT
    for info and health (the printer's state as "printer"); no buttons, no
    counter display, no payments."""
    from drivers.errors import DriverError
    from edge.app import EXIT_HARDWARE, HEALTH_EVERY_S
    from edge.session import EdgeSession

    cfg = daemon.config
    kiosk: KioskRole | None = None
    try:
        try:
            daemon.printer = daemon._make_printer()
            kiosk = KioskRole(cfg, daemon.printer)
        except (DriverError, OSError) as exc:
            logger.error("%s: cannot start the kiosk: %s", cfg.device.id, exc)
            return EXIT_HARDWARE
        daemon.kiosk = kiosk
        daemon.printer_spool = kiosk  # health: "printer" is the kiosk's printer state
        daemon.session = EdgeSession(
            daemon.topics, cfg.device.id, daemon.boot_id,
            host=cfg.mqtt.host, port=cfg.mqtt.port, username=cfg.mqtt.username,
            password=cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None,
            keepalive_s=cfg.mqtt.keepalive_s, reconnect_cap_s=cfg.mqtt.reconnect_cap_s,
            subscriptions=[daemon.topics.device_commands(cfg.device.id)],
            retained=daemon._retained,
            on_connected=lambda: None, on_disconnected=lambda: None,
            on_message=lambda msg: logger.debug("%s: ignored %s", cfg.device.id, msg.topic),
            on_fatal=daemon._fatal,
        )
        daemon.session.start(daemon.loop)
        logger.info("%s: kiosk ready on %s", cfg.device.id, kiosk.url)
        while not daemon._stop.is_set():
            try:
                await asyncio.wait_for(daemon._stop.wait(), HEALTH_EVERY_S)
            except TimeoutError:
                try:
                    daemon._publish_health_if_changed()
                except Exception:
                    logger.exception("%s: cannot publish health", cfg.device.id)
        return 1 if daemon._fatal_reason else 0
    finally:
        if kiosk is not None:
            await asyncio.get_running_loop().run_in_executor(None, kiosk.close)
        if daemon.session is not None:
            daemon.session.stop()
        if daemon.printer is not None and daemon._printer is None:
            daemon.printer.close()
        if daemon._fake_printer is not None:
            daemon._fake_printer.close()
