"""The page a Chromium kiosk shows on the counter's HDMI screen, and the small HTTP server
that serves it.

Only the standard library: a :class:`http.server.ThreadingHTTPServer` in a daemon thread.
The page (``page.html`` next to this file) gets every change by Server-Sent Events, so the
kiosk needs no polling and reconnects by itself after an edge restart.

Routes:

``GET /``
    the page (``text/html; charset=utf-8``).
``GET /state``
    ``{"version": n, "screen": {...} | null}`` as JSON.
``GET /events``
    ``text/event-stream``: the current state at once, then every change as a
    ``data: <same JSON as /state>`` event, and a heartbeat every
    :data:`HEARTBEAT_S` seconds while nothing changes. The heartbeat is an SSE event named
    ``ping`` (``: ping`` comment line, ``event: ping``, ``data: <version>``) rather than a
    bare comment: EventSource hides comments from scripts, and the page needs to see the
    heartbeat to show its "更新停止 / not updated" badge when the server hangs.
``POST /press/<name>``
    runs the on-screen control ``name`` (only when ``controls`` were given); 204.

Anything else is 404. Request bodies are not used; one larger than
:data:`MAX_BODY_BYTES` is refused with 413.
"""

from __future__ import annotations

import http.server
import importlib.resources
import itertools
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from drivers.display.base import Display, DisplayError, Health, Screen

__all__ = ["HEARTBEAT_S", "MAX_BODY_BYTES", "Controls", "HdmiDisplay"]

logger = logging.getLogger(__name__)

#: Seconds between heartbeats on an idle ``/events`` stream. A dead client is noticed at
#: the next write; the page shows "not updated" after 10 s without one.
HEARTBEAT_S = 2.0

#: Largest request body accepted, in bytes (no route needs one).
MAX_BODY_BYTES = 1024

# How often serve_forever() checks for shutdown(), in seconds: close() waits up to this.
_POLL_S = 0.1
# Socket timeout for one client connection, in seconds: a client that stops reading
# (or never finishes its request) frees its thread after this.
_CLIENT_TIMEOUT_S = 10.0
# How long close() waits for the server thread, in seconds.
_JOIN_S = 5.0
# EventSource reconnect delay we ask the page for, in milliseconds.
_RETRY_MS = 1000

_PLACEHOLDER = "__MADOGUCHI_CONFIG__"

# No external resources; inline script and style only (the page is one file).
_CSP = (
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

Controls = Mapping[str, tuple[str, Callable[[], None]]]


def _script_json(value: Any) -> str:
    """JSON safe to put inside ``<script type="application/json">``: ``<``, ``>`` and
    ``&`` are escaped, so no text can close the element or open a comment."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


class _Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with named request threads and a back-reference."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], display: HdmiDisplay) -> None:
        self.display = display
        self._thread_numbers = itertools.count(1)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn.process_request, but with a thread name that says whose it is.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"hdmi-display-{self.server_address[1]}-client-{next(self._thread_numbers)}",
            daemon=True,
        )
        thread.start()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "madoguchi-display"
    timeout = _CLIENT_TIMEOUT_S
    # HTTP/1.0: one request per connection, so /events can stream until either side
    # closes and no response needs chunked encoding.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request to stderr; a kiosk makes many.
        logger.debug("hdmi display %s: %s", self.address_string(), format % args)

    # -- responses ---------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, value: Any) -> None:
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, error: str, message: str) -> None:
        self._send_json(status, {"error": error, "message": message})

    def _body_ok(self) -> bool:
        """Read and drop a small request body; answer 400/413 and return False otherwise."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return True
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._error(400, "bad_request", "invalid Content-Length")
            return False
        if length > MAX_BODY_BYTES:
            # Not read: the connection is closed after the response anyway (HTTP/1.0).
            self._error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
            return False
        if length:
            self.rfile.read(length)
        return True

    # -- routes ------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._body_ok():
            return
        path = urllib.parse.urlsplit(self.path).path
        display = self.server.display
        if path == "/":
            self.send_response(200)
            body = display._page
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", _CSP)
            self.end_headers()
            self.wfile.write(body)
        elif path == "/state":
            self._send(200, display._snapshot()[1].encode("utf-8"), "application/json; charset=utf-8")
        elif path == "/events":
            self._events()
        else:
            self._error(404, "not_found", f"no such page: {path}")

    def do_POST(self) -> None:
        if not self._body_ok():
            return
        path = urllib.parse.urlsplit(self.path).path
        display = self.server.display
        prefix = "/press/"
        if not path.startswith(prefix):
            self._error(404, "not_found", f"no such page: {path}")
            return
        name = urllib.parse.unquote(path[len(prefix) :])
        control = display._controls.get(name)
        if control is None:
            self._error(404, "unknown_control", f"no control named {name!r}")
            return
        if not self._same_origin():
            self._error(403, "cross_origin", "presses are accepted from this page only")
            return
        label, callback = control
        logger.info("hdmi display on port %d: on-screen control %r (%s) pressed", display.port, name, label)
        try:
            callback()
        except Exception:
            logger.exception("hdmi display on port %d: handler of control %r failed", display.port, name)
            self._error(500, "handler_failed", f"the handler of {name!r} failed")
            return
        self._send(204)

    def _same_origin(self) -> bool:
        # Browsers send Origin on every POST. Without this check, any web page open in a
        # browser on the same machine (or network, with host="0.0.0.0") could press a
        # counter's buttons. Clients without Origin (curl, tests) are not browsers.
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        return urllib.parse.urlsplit(origin).netloc == self.headers.get("Host", "")

    def _events(self) -> None:
        display = self.server.display
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        display._client_joined()
        try:
            self.wfile.write(f"retry: {_RETRY_MS}\n\n".encode())
            sent = -1
            while True:
                changed, version, state = display._wait_change(sent, HEARTBEAT_S)
                if changed is None:  # closing
                    return
                if changed:
                    self.wfile.write(f"data: {state}\n\n".encode())
                    sent = version
                else:
                    self.wfile.write(f": ping\nevent: ping\ndata: {version}\n\n".encode())
        except OSError as exc:
            # BrokenPipe/ConnectionReset (the page was closed or reloaded) or a timeout
            # (the client stopped reading): end this stream quietly.
            logger.debug("hdmi display on port %d: event stream ended: %s", display.port, exc)
        finally:
            display._client_left()


class HdmiDisplay(Display):
    """Serve the counter display page for a full-screen browser on the counter's screen.

    The server starts in the constructor, in a daemon thread named
    ``hdmi-display-<port>``; point the kiosk at :attr:`url`.

    Args:
        host: address to listen on. The default serves only the local kiosk; use
            ``"0.0.0.0"`` to let another machine show the page.
        port: TCP port; ``0`` picks a free one (see :attr:`port`).
        title_ja, title_en: shown small at the top right and as the page title, e.g.
            ``"市民課"`` / ``"Citizens Division"``.
        controls: on-screen buttons, ``{name: (label, callback)}``, shown in a row at the
            bottom of the page; clicking one POSTs ``/press/<name>``, which calls
            ``callback()`` in a server thread (callbacks must be thread-safe and quick:
            hand the press to your own loop). For the demo, where the GPIO is
            simulated. ``None`` (default): no buttons and ``/press`` answers 404.

    Raises:
        DisplayError: the page is missing from the package, or the server cannot listen
            (address in use, bad host); nothing is left open.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        title_ja: str = "",
        title_en: str = "",
        controls: Controls | None = None,
    ) -> None:
        super().__init__()
        self._controls: dict[str, tuple[str, Callable[[], None]]] = dict(controls or {})
        for name, control in self._controls.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"control names must be non-empty strings without '/': {name!r}")
            if len(control) != 2 or not isinstance(control[0], str) or not callable(control[1]):
                raise ValueError(f"control {name!r} must be (label, callback), got {control!r}")
        try:
            template = importlib.resources.files(__package__).joinpath("page.html").read_text("utf-8")
        except OSError as exc:
            raise DisplayError(f"cannot read the display page: {exc}") from exc
        config = {
            "title_ja": title_ja,
            "title_en": title_en,
            "controls": [{"name": n, "label": label} for n, (label, _) in self._controls.items()],
        }
        self._page = template.replace(_PLACEHOLDER, _script_json(config)).encode("utf-8")

        # Guards what the request threads read: the published state and the client count.
        self._changed = threading.Condition()
        self._published = 0  # the version in _state_json
        self._state_json = json.dumps({"version": 0, "screen": None})
        self._stopping = False
        self._clients = 0

        try:
            self._server = _Server((host, port), self)
        except (OSError, OverflowError) as exc:  # OverflowError: port out of range
            raise DisplayError(f"hdmi display cannot listen on {host}:{port}: {exc}") from exc
        self._host = host
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._serve, name=f"hdmi-display-{self._port}", daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            self._server.server_close()
            raise
        logger.info("hdmi display: serving %s", self.url)

    # -- public API ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server is bound to (the real one when ``port=0`` was given)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port/`` for the kiosk browser (``127.0.0.1`` for a wildcard host)."""
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}/"

    @property
    def clients(self) -> int:
        """How many pages are connected to ``/events`` now (0 means nobody sees the
        screen: the kiosk browser is not running or cannot reach us)."""
        with self._changed:
            return self._clients

    def health(self) -> Health:
        """``("ok", None, None)`` while the server thread runs, else
        ``("error", "server_down", message)``."""
        if self.closed:
            return ("error", "server_down", f"hdmi display on port {self._port} is closed")
        if not self._thread.is_alive():
            return ("error", "server_down", f"hdmi display server on port {self._port} stopped")
        return ("ok", None, None)

    def __repr__(self) -> str:
        return f"HdmiDisplay(url={self.url!r})"

    # -- Display ------------------------------------------------------------------

    def _render(self, screen: Screen) -> None:
        state = json.dumps({"version": self._version, "screen": screen.to_dict()}, ensure_ascii=False)
        with self._changed:
            self._published = self._version
            self._state_json = state
            self._changed.notify_all()

    def _close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()  # ends every /events stream
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_JOIN_S)
        if self._thread.is_alive():
            logger.warning("hdmi display on port %d: server thread did not stop in %g s", self._port, _JOIN_S)
        else:
            logger.info("hdmi display on port %d: closed", self._port)

    # -- for the handler ------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=_POLL_S)
        except Exception:
            logger.exception("hdmi display on port %d: server failed", self._port)

    def _snapshot(self) -> tuple[int, str]:
        """``(version, state_json)`` as last published."""
        with self._changed:
            return self._published, self._state_json

    def _wait_change(self, seen: int, timeout: float) -> tuple[bool | None, int, str]:
        """Wait up to ``timeout`` s for a version other than ``seen``.

        Returns ``(changed, version, state_json)``; ``changed`` is ``None`` when closing.
        """
        with self._changed:
            self._changed.wait_for(
                lambda: self._stopping or self._published != seen, timeout=timeout
            )
            if self._stopping:
                return None, self._published, self._state_json
            return self._published != seen, self._published, self._state_json

    def _client_joined(self) -> None:
        with self._changed:
            self._clients += 1

    def _client_left(self) -> None:
        with self._changed:
            self._clients -= 1

