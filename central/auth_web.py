"""Web login on central's HTTP side (issue #7 item 3; docs/security.md "Web
login", docs/http-api.md §1).

:func:`install` puts one check in front of every route of the app and adds
the login routes:

* every request is matched against :data:`central.auth.ACCESS` (Starlette's
  path compiler, the router's own; when several entries match, only what all
  of them allow) — no entry: 404 at once, the router is never asked (a new
  route nobody classified cannot be reached: fail closed); then, after
  routing, :func:`route_check` checks the route really picked once more;
* ``Authorization: Bearer <token>`` (an API token: the kiosk, scripts) or the
  ``madoguchi_session`` cookie (a browser that logged in at ``/login``) say
  who is asking;
* a state-changing request (POST, PUT, PATCH, DELETE) that is not
  bearer-authenticated must carry an ``Origin`` (or else a ``Referer``)
  whose host is the request's ``Host``: with the cookie's ``SameSite=Strict``
  this is the CSRF defence.  A bearer token is never sent by a browser on its
  own, so bearer requests need no Origin;
* not logged in: a page answers 303 to ``/login?next=<path>``, an API (under
  ``/api/``) 401 JSON ``{"error": "login_required", ...}``; the wrong role: 403
  (an HTML page in Japanese and English with a logout button, or JSON).

The password check (scrypt) runs in a worker thread so that the event loop —
which also serves the bus — is never held for it; everything that touches
the store stays on the loop (central/web.py says why).

The client address (the throttle's and the audit's) is the TCP peer's, or
with ``[http] trusted_proxies`` what such a proxy says in X-Forwarded-For
(uvicorn's proxy headers, set up in central/app.py).  Log lines name the
route (``/t/{token:path}``), never the concrete path (it may hold a
visitor's ticket token), and a typed login only when it is well-formed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import math
import re
import urllib.parse
from html import escape

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from central.auth import (
    ACCESS,
    HOME,
    KIOSK,
    MAX_PASSWORD,
    PUBLIC,
    ROLE_JA,
    Accounts,
    AuthError,
    Principal,
    allowed_roles,
    hash_password,
    loggable_client,
    loggable_login,
    normalize_login,
    route_template,
    safe_next,
    verify_password,
)
from central.config import AuthSettings

logger = logging.getLogger(__name__)

COOKIE = "madoguchi_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: At most this many password checks at once (each takes ~16 MiB and a CPU
#: for a fraction of a second); the others wait their turn.
PASSWORD_CHECKS = 2

LOGIN_REQUIRED = ("ログインが必要です", "Log in first")
BAD_LOGIN = ("職員IDまたはパスワードが違います", "Wrong staff ID or password")
BAD_ORIGIN = ("この要求は受け付けられません（別のサイトからの送信です）", "Refused: the request does not come from this site (Origin)")

_CSS = """
:root { font-family: "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", "Meiryo", sans-serif; color: #1b1f24; }
body { margin: 0; background: #f3f5f7; }
header { background: #12355b; color: #fff; padding: 12px 24px; }
header h1 { margin: 0; font-size: 22px; } .en { opacity: .75; font-size: 14px; margin-left: 8px; font-weight: normal; }
main { max-width: 440px; margin: 32px auto; background: #fff; border-radius: 8px; padding: 20px 28px; box-shadow: 0 1px 3px #0002; }
label { display: block; margin: 14px 0 4px; font-weight: bold; }
label .en { color: #5b6570; opacity: 1; font-size: 13px; }
input { font: inherit; font-size: 18px; width: 100%; box-sizing: border-box; padding: 8px; border: 1px solid #c5ccd3; border-radius: 6px; }
button { font: inherit; font-size: 18px; margin-top: 18px; width: 100%; min-height: 48px; border: 0; border-radius: 8px; background: #12355b; color: #fff; cursor: pointer; }
button.link { background: none; color: #12355b; text-decoration: underline; width: auto; min-height: 0; margin: 0; padding: 0; font-size: 16px; }
.err { color: #b3261e; font-weight: bold; background: #fdecea; border-radius: 6px; padding: 8px 10px; }
.ok { color: #2e7d32; font-weight: bold; }
.note { color: #5b6570; font-size: 13px; margin-top: 18px; }
p .en, .err .en, .note .en { display: block; margin: 2px 0 0; }
"""
_CSS_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode() + "'"
#: The login and 403 pages: no script at all, the one style block by its hash.
PAGE_HEADERS = {
    "Content-Security-Policy": (f"default-src 'none'; style-src {_CSS_HASH}; img-src data:; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def recorded_staff(request: Request, claimed: str | None) -> str | None:
    """The staff id to record for this request: the logged-in one.  A body
    that names another is refused (AuthError ``staff_mismatch``, 403): the
    client must not believe it recorded someone else.  Without a login (a
    router mounted on its own, in a unit test) the claimed id is used."""
    p = principal_of(request)
    if p is None:
        return claimed
    if claimed is not None and claimed != p.staff_id:
        shown = loggable_login(claimed)  # the refusal is logged: never a typed id as typed
        raise AuthError("staff_mismatch", f"職員番号 {shown} はログイン中の職員（{p.staff_id}）と違います",
                        f"staff id {shown} is not the logged-in staff member ({p.staff_id})")
    return p.staff_id


def client_of(request: Request) -> str | None:
    """The client's address as the throttle and the audit see it: the TCP
    peer, or what a trusted proxy put in X-Forwarded-For (uvicorn applied
    it).  An IP address in its canonical form; anything else (only a proxy
    could send it) is kept only if it looks like a host name."""
    host = request.client.host if request.client else None
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return loggable_client(host) if loggable_client(host) != "(unknown)" else "(unreadable)"


def same_origin(request: Request) -> bool:
    """Whether the request's Origin (or else its Referer) names this host.
    The scheme is not compared: behind a TLS proxy the browser says https
    and central hears http; the proxy must pass ``Host`` through."""
    host = (request.headers.get("host") or "").lower()
    origin = request.headers.get("origin")
    source = origin if origin is not None else request.headers.get("referer")
    if not source or source == "null" or not host:
        return False
    return urllib.parse.urlsplit(source).netloc.lower() == host


async def route_check(request: Request) -> None:
    """After routing (an app-wide dependency): the route the router picked
    is in :data:`ACCESS` and allows who is asking.  The check before routing
    already decided; this one only catches a table that disagrees with the
    router (two overlapping routes, one not classified)."""
    route = request.scope.get("route")
    method = "GET" if request.method == "HEAD" else request.method
    allowed = ACCESS.get((method, getattr(route, "path", None)))
    principal = principal_of(request)
    if allowed is None or (PUBLIC not in allowed and (principal is None or principal.role not in allowed)):
        logger.error("route %s %s: not allowed by central/auth.py ACCESS after routing: refused", method,
                     getattr(route, "path", None))
        raise HTTPException(403, "this route has no access rule for you")


def _json(status: int, code: str, ja: str, en: str, **extra) -> JSONResponse:
    # "ja"/"en" as the login decision says; message_ja/message_en as every
    # other error body of the API (docs/http-api.md §3), so clients need not care.
    return JSONResponse({"error": code, "ja": ja, "en": en, "message_ja": ja, "message_en": en, **extra}, status_code=status)


def _page(title_ja: str, title_en: str, body: str, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    html = (f'<!doctype html><html lang="ja"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">'
            f'<link rel="icon" href="data:,"><title>{escape(title_ja)} / {escape(title_en)} — madoguchi</title>'
            f"<style>{_CSS}</style></head><body><header><h1>{escape(title_ja)}<span class=\"en\">{escape(title_en)}</span></h1></header>"
            f"<main>{body}</main></body></html>")
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def _bi(ja: str, en: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<p{attr}>{escape(ja)}<span class="en">{escape(en)}</span></p>'


_LOGOUT_FORM = ('<form method="post" action="/logout"><button type="submit">ログアウト<span class="en">Log out</span>'
                "</button></form>")


def login_page(*, site_ja: str, site_en: str, next_path: str | None, message: tuple[str, str] | None = None,
               error: bool = True, who: Principal | None = None, status: int = 200,
               headers: dict | None = None) -> HTMLResponse:
    parts = [_bi(site_ja, site_en)]
    if who is not None:
        parts.append(_bi(f"ログイン中: {who.name}（{who.staff_id}・{ROLE_JA[who.role]}）",
                         f"Logged in as {who.staff_id} ({who.role})", "ok"))
        parts.append(f'<p><a href="{escape(next_path or HOME.get(who.role, "/"))}">続ける / Continue</a></p>')
        parts.append(_LOGOUT_FORM)
        parts.append(_bi("別の職員IDでログインする場合は、下に入力してください。", "To log in as someone else, fill in below."))
    if message is not None:
        parts.append(_bi(*message, "err" if error else "ok"))
    nxt = f'<input type="hidden" name="next" value="{escape(next_path)}">' if next_path else ""
    parts.append(
        f'<form method="post" action="/login">{nxt}'
        '<label for="login">職員ID<span class="en">Staff ID</span></label>'
        '<input id="login" name="login" autocomplete="username" autocapitalize="none" spellcheck="false" '
        'maxlength="20" required autofocus>'
        '<label for="password">パスワード<span class="en">Password</span></label>'
        f'<input id="password" name="password" type="password" autocomplete="current-password" maxlength="{MAX_PASSWORD}" required>'
        '<button type="submit">ログイン<span class="en">Log in</span></button></form>')
    parts.append(_bi("共用のパソコンでは、使い終わったら必ずログアウトしてください。席を離れるときは画面をロックしてください。",
                     "On a shared PC, always log out when you are done; lock the screen when you leave the desk.", "note"))
    return _page("ログイン", "Log in", "".join(parts), status=status, headers=headers)


def forbidden_page(principal: Principal, allowed: frozenset[str]) -> HTMLResponse:
    roles_ja = "・".join(ROLE_JA[r] for r in sorted(allowed) if r in ROLE_JA)
    roles_en = ", ".join(sorted(allowed))
    body = (_bi("この画面を使う権限がありません。", "You may not use this page.", "err")
            + _bi(f"ログイン中: {principal.name}（{principal.staff_id}・{ROLE_JA[principal.role]}）。必要な役割: {roles_ja}",
                  f"Logged in as {principal.staff_id} ({principal.role}); this page needs: {roles_en}")
            + _bi("別の役割のアカウントでログインし直してください。", "Log out and log in with an account of that role.")
            + _LOGOUT_FORM
            + f'<p class="note"><a href="{escape(HOME.get(principal.role, "/"))}">自分の画面に戻る / Back to my page</a></p>')
    return _page("権限がありません", "Forbidden", body, status=403)


def user_bar(request: Request) -> str:
    """A thin strip for the top of a staff page: who is logged in, and a
    logout button.  Empty when nobody is (a router used without the login)."""
    p = principal_of(request)
    if p is None:
        return ""
    return (f'<div id="whoami" class="noprint" data-staff-id="{escape(p.staff_id)}" data-role="{escape(p.role)}" '
            'style="background:#0b2440;color:#fff;font-size:13px;padding:3px 20px;display:flex;gap:12px;'
            'justify-content:flex-end;align-items:center">'
            f'<span>ログイン中 <b>{escape(p.name)}</b>（{escape(p.staff_id)}・{escape(ROLE_JA[p.role])}）'
            f'<span style="opacity:.7"> logged in as {escape(p.staff_id)}</span></span>'
            '<form method="post" action="/logout" style="margin:0"><button type="submit" id="logout" '
            'style="font:inherit;font-size:12px;padding:1px 10px;min-height:0;border-radius:4px;border:1px solid #fff8;'
            'background:none;color:#fff;cursor:pointer">ログアウト Log out</button></form></div>')


_BODY = re.compile(r"<body[^>]*>", re.IGNORECASE)


def with_user_bar(html: str, request: Request) -> str:
    bar = user_bar(request)
    if not bar:
        return html
    m = _BODY.search(html)
    return html[:m.end()] + bar + html[m.end():] if m else bar + html


def install(app: FastAPI, accounts: Accounts, settings: AuthSettings, *, site_ja: str, site_en: str) -> None:
    """The check on every request, and ``/login``, ``/logout``, ``/api/v1/session``."""
    checks = asyncio.Semaphore(PASSWORD_CHECKS)

    def login_required(request: Request, *, stale_cookie: bool) -> Response:
        if request.url.path.startswith("/api/") or request.method not in ("GET", "HEAD"):
            resp: Response = _json(401, "login_required", *LOGIN_REQUIRED)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="madoguchi"'
        else:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            resp = RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303)
        if stale_cookie:
            resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.middleware("http")
    async def guard(request: Request, call_next):
        method = "GET" if request.method == "HEAD" else request.method
        path = request.url.path
        allowed = allowed_roles(method, path)
        if allowed is None:  # no such route, or one nobody classified: not served
            logger.debug("no access rule for %s %r: 404", method, path[:100])
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        principal: Principal | None = None
        stale = False
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            principal = accounts.bearer(token.strip()) if scheme.lower() == "bearer" else None
            if principal is None:
                logger.warning("refused %s %s from %s: unknown or disabled API token", method,
                               route_template(method, path), loggable_client(client_of(request)))
                resp = _json(401, "invalid_token", "APIトークンが無効です", "invalid or revoked API token")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="madoguchi", error="invalid_token"'
                return resp
        else:
            cookie = request.cookies.get(COOKIE)
            # CSRF: a browser sends the cookie by itself, so a state change
            # riding on it must come from our own pages.  The login and logout
            # forms too (no logging a victim into the attacker's account).  A
            # request with no credentials at all gets its 401 below instead.
            needs_origin = method not in SAFE_METHODS and (cookie is not None or PUBLIC in allowed)
            if needs_origin and not same_origin(request):
                logger.warning("refused %s %s from %s: Origin %r / Referer %r do not match Host %r", method,
                               route_template(method, path), loggable_client(client_of(request)), (request.headers.get("origin") or "")[:100],
                               (request.headers.get("referer") or "")[:100], (request.headers.get("host") or "")[:100])
                return _json(403, "bad_origin", *BAD_ORIGIN)
            if cookie:
                principal = accounts.session(cookie)
                stale = principal is None
        request.state.principal = principal
        if PUBLIC in allowed:
            return await call_next(request)
        if principal is None:
            return login_required(request, stale_cookie=stale)
        if principal.role not in allowed:
            logger.info("refused %s %s to %s (role %s)", method, route_template(method, path), principal.staff_id,
                        principal.role)
            if request.url.path.startswith("/api/") or principal.role == KIOSK:
                return _json(403, "forbidden", f"{ROLE_JA[principal.role]}の役割ではこの操作はできません",
                             f"the {principal.role} role may not do this", role=principal.role, needs=sorted(allowed))
            return forbidden_page(principal, allowed)
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------------ the login routes
    def page(request: Request, next_path: str | None, message=None, *, error=True, status=200, headers=None):
        who = principal_of(request)
        return login_page(site_ja=site_ja, site_en=site_en, next_path=next_path, message=message, error=error,
                          who=who if who is not None and who.via == "session" else None, status=status, headers=headers)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(request: Request, next: str | None = None, bye: int = 0):
        message = ("ログアウトしました", "You are logged out") if bye else None
        return page(request, safe_next(next), message, error=False)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return page(request, None, ("送信の形式が正しくありません", "send the login form"), status=400)
        try:
            fields = urllib.parse.parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return page(request, None, ("送信の形式が正しくありません", "send the login form"), status=400)
        login = normalize_login(fields.get("login", [""])[0])[:64]
        password = fields.get("password", [""])[0]
        next_path = safe_next(fields.get("next", [""])[0])
        client = client_of(request)

        def throttled(wait: float) -> Response:
            minutes = max(1, math.ceil(wait / 60))
            return page(request, next_path,
                        (f"ログインの失敗が続いたため、しばらくログインできません（約{minutes}分後に再度お試しください）",
                         f"Too many failed logins: try again in about {minutes} min"),
                        status=429, headers={"Retry-After": str(math.ceil(wait))})

        # Already refused: answered from memory, before any database access
        # and without waiting for a password check's turn; not audited one by
        # one (central/auth.py ThrottleMemory).
        wait = accounts.remembered_wait(login, client)
        if wait > 0:
            return throttled(wait)
        async with checks:
            wait = accounts.remembered_wait(login, client)  # decided while this one waited its turn?
            if wait > 0:
                return throttled(wait)
            wait, why = accounts.throttle_check(login, client)
            if wait > 0:
                accounts.throttle(login, client, wait, why)
                return throttled(wait)
            staff, stored = accounts.password_hash_of(login)
            ok = len(password) <= MAX_PASSWORD and await asyncio.to_thread(verify_password, password[:MAX_PASSWORD], stored)
            principal, _ = accounts.finish_login(login, staff, ok, client=client)
            if principal is not None and accounts.needs_rehash(stored):
                # Made with other scrypt parameters than today's default: hash
                # the password just verified again (docs/security.md).
                new = await asyncio.to_thread(hash_password, password, accounts.hash_params)
                accounts.replace_hash(principal.staff_id, stored, new)
        if principal is None:
            return page(request, next_path, BAD_LOGIN, status=401)
        old = request.cookies.get(COOKIE)
        if old:
            accounts.end_session(old, client=client)  # a new login is a new session (no fixation)
        token = accounts.start_session(principal, client=client)
        resp = RedirectResponse(next_path or HOME.get(principal.role, "/"), status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=settings.secure_cookie, path="/")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/logout", response_class=HTMLResponse, include_in_schema=False)
    async def logout_form(request: Request):
        who = principal_of(request)
        if who is None or who.via != "session":
            return RedirectResponse("/login", status_code=303)
        return _page("ログアウト", "Log out",
                     _bi(f"{who.name}（{who.staff_id}）をログアウトしますか？", f"Log out {who.staff_id}?") + _LOGOUT_FORM)

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request):
        cookie = request.cookies.get(COOKIE)
        if cookie:
            accounts.end_session(cookie, client=client_of(request))
        resp = RedirectResponse("/login?bye=1", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/api/v1/session", tags=["login"], summary="Who is logged in (the session or API token of this request)")
    async def whoami(request: Request):
        p = principal_of(request)
        out = p.public()
        if p.via == "session":
            out["idle_timeout_s"] = settings.idle_timeout_s
            out["absolute_timeout_s"] = settings.absolute_timeout_s
        return out


__all__ = ["COOKIE", "install", "principal_of", "recorded_staff", "route_check", "same_origin", "user_bar", "with_user_bar"]
