"""``madoguchi central`` and ``madoguchi ticket`` sub-commands."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080"


def central_command(sub) -> None:
    p = sub.add_parser("central", help="run the central service (queue, API, bus)")
    p.add_argument("--config", default="/etc/madoguchi/central.toml", help="central.toml (default: %(default)s)")
    p.add_argument("--database", help="override [central] database")
    p.add_argument("--http-port", type=int, help="override [http] port")
    p.set_defaults(func=_run_central)


def _run_central(args) -> int:
    from central.app import run

    return run(args.config, database=args.database, http_port=args.http_port)


def ticket_command(sub) -> None:
    p = sub.add_parser("ticket", help="issue and look at tickets through central's API")
    p.add_argument("--url", default=DEFAULT_URL, help="central's URL (default: %(default)s)")
    p.add_argument("--token-file", help="a file holding an API token (madoguchi staff token ID); "
                                        "default: $MADOGUCHI_API_TOKEN.  issue needs a kiosk or counter token, "
                                        "show and list a counter token")
    tsub = p.add_subparsers(dest="ticket_cmd", metavar="ACTION", required=True)
    issue = tsub.add_parser("issue", help="issue one ticket for one or more procedures")
    issue.add_argument("procedures", nargs="+", metavar="PROCEDURE", help="procedure ids, e.g. tennyu kokuho-kanyu")
    issue.set_defaults(func=_issue)
    show = tsub.add_parser("show", help="one ticket's itinerary")
    show.add_argument("number", type=int)
    show.set_defaults(func=_show)
    lst = tsub.add_parser("list", help="today's active tickets")
    lst.set_defaults(func=_list)


def _token(args) -> str | None:
    """The API token: --token-file, else $MADOGUCHI_API_TOKEN (never on the command line: ps shows it)."""
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.readline().strip() or None
        except OSError as exc:
            raise SystemExit(f"トークンを読めません / cannot read the token file: {exc}") from None
    return os.environ.get("MADOGUCHI_API_TOKEN", "").strip() or None


def _request(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            detail = json.loads(raw or b"{}")
        except ValueError:
            detail = {"message_en": raw[:200].decode("utf-8", "replace")}
        if isinstance(detail.get("detail"), list):  # pydantic validation errors
            msg = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail["detail"])
        else:
            msg = " / ".join(str(m) for m in (detail.get("message_ja"), detail.get("message_en")) if m) or detail
        raise SystemExit(f"エラー / error {exc.code}: {msg}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"central に接続できません / cannot reach central at {url}: {exc.reason}") from None


TICKET_STATE = {"active": "受付中 active", "done": "完了 done"}
STOP_STATE = {
    "waiting": "待ち waiting", "called": "呼出中 called", "serving": "対応中 serving", "held": "保留 held",
    "away": "不在 away", "done": "完了 done", "no_show": "不在終了 no-show", "skipped": "取消 skipped",
}


def _print_ticket(t: dict) -> None:
    print(f"受付番号 {t['number']} 番  ({t['day']})  {TICKET_STATE.get(t['state'], t['state'])}")
    for i, s in enumerate(t["stops"], 1):
        where = f" @{s['counter']}番窓口" if s["counter"] else ""
        print(f"  {i}. {s['name_ja']} / {s['name_en']}: {STOP_STATE.get(s['state'], s['state'])}{where}")


def _base(url: str) -> str:
    return url.rstrip("/")


def _issue(args) -> int:
    _print_ticket(_request(f"{_base(args.url)}/api/v1/tickets", "POST", {"procedures": args.procedures}, _token(args)))
    return 0


def _show(args) -> int:
    _print_ticket(_request(f"{_base(args.url)}/api/v1/tickets/{args.number}", token=_token(args)))
    return 0


def _list(args) -> int:
    tickets = _request(f"{_base(args.url)}/api/v1/tickets?active=true", token=_token(args))
    for t in tickets:
        _print_ticket(t)
    if not tickets:
        print("受付中の整理券はありません / no active tickets")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
