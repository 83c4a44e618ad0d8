"""``madoguchi staff``: staff accounts for the web login (docs/security.md
"Web login").

    madoguchi staff [--config central.toml] [--database DB] [--create] add ID --role R [--name N] [--password-stdin]
    madoguchi staff ... add ID --role kiosk [--output FILE]
    madoguchi staff ... passwd ID [--password-stdin]
    madoguchi staff ... disable ID | enable ID
    madoguchi staff ... token ID [--output FILE]
    madoguchi staff ... list [--json]
    madoguchi staff ... audit [ID] [--limit N] [--json]

It opens central's SQLite database directly, next to a running central (WAL,
short transactions, as ``madoguchi close-day``): a running central sees every
change at its next request — a disabled account is cut off at once.  Run it
as the user central runs as (``sudo -u madoguchi madoguchi staff ...``).  A
database that does not exist is not made unless ``--create`` says so (a
typo in the path would otherwise give an empty database that central never
reads); made, it belongs to whoever ran the command.

Passwords are asked twice on the terminal (never on the command line), or
read from the first line of standard input with ``--password-stdin``.  A
kiosk account (``--role kiosk``) has no password: ``add`` prints its API
token on standard output, once (the kiosk's ``[kiosk] token``), or writes it
to ``--output FILE`` (mode 0600 whatever the umask; nothing on standard
output).  ``token ID`` issues a new token for any account and the old one
stops working.

Exit codes: 0 done; 1 refused (the account exists / does not exist, a weak
password, the two entries differ, a kiosk has no password); 2 bad usage; 78 a
bad config file, a database that does not exist (without ``--create``) or
cannot be used (locked past the 5-second wait, not a madoguchi database).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sqlite3
import sys
from pathlib import Path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78
DEFAULT_CONFIG = "/etc/madoguchi/central.toml"


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def staff_command(sub) -> None:
    p = sub.add_parser("staff", help="staff accounts for the web login: add, passwd, disable, enable, token, list, audit",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes: 0 ok, 1 refused, 2 usage, 78 bad config, no database (without --create) or database unusable")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="central.toml (default: %(default)s)")
    p.add_argument("--database", type=Path, help="central's database (default: [central] database of --config)")
    p.add_argument("--create", action="store_true", help="make the database if it does not exist (else: exit 78)")
    s = p.add_subparsers(dest="staff_cmd", metavar="ACTION", required=True)
    add = s.add_parser("add", help="a new account (asks for the password twice; a kiosk gets a token instead)")
    add.add_argument("id", help="login name = staff id recorded on voids, closes, IT requests (a-z 0-9 -, ≤ 20)")
    add.add_argument("--role", required=True, choices=("counter", "accounting", "it", "kiosk"))
    add.add_argument("--name", help="display name, e.g. 窓口A (default: the id); no personal data needed")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--output", type=Path, metavar="FILE",
                     help="--role kiosk: write the token to FILE (mode 0600) instead of standard output")
    add.set_defaults(func=_wrap(_add))
    pw = s.add_parser("passwd", help="a new password (every session of the account ends)")
    pw.add_argument("id")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    pw.set_defaults(func=_wrap(_passwd))
    dis = s.add_parser("disable", help="disable an account: its sessions end at once, its token stops working")
    dis.add_argument("id")
    dis.set_defaults(func=_wrap(_disable))
    en = s.add_parser("enable", help="enable a disabled account again")
    en.add_argument("id")
    en.set_defaults(func=_wrap(_enable))
    tok = s.add_parser("token", help="a new API token for the account (printed once; the old one stops working)")
    tok.add_argument("id")
    tok.add_argument("--output", type=Path, metavar="FILE", help="write the token to FILE (mode 0600) instead of standard output")
    tok.set_defaults(func=_wrap(_token))
    lst = s.add_parser("list", help="every account: role, enabled, password, token")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_wrap(_list))
    aud = s.add_parser("audit", help="the login audit, newest first")
    aud.add_argument("id", nargs="?")
    aud.add_argument("--limit", type=int, default=50)
    aud.add_argument("--json", action="store_true")
    aud.set_defaults(func=_wrap(_audit))


def _wrap(fn):
    def run(args) -> int:
        from bus.sqlitedb import DatabaseError
        from central.auth import AuthError

        store = None
        try:
            store, accounts = _open(args)
            return fn(args, accounts)
        except _Fail as exc:
            print(exc, file=sys.stderr)
            return exc.code
        except AuthError as exc:
            print(f"エラー / error: {exc.ja} / {exc.en}", file=sys.stderr)
            return EXIT_REFUSED
        except (sqlite3.Error, DatabaseError) as exc:
            # e.g. "database is locked" (a long transaction elsewhere, past the
            # 5-second wait), or a file that is not central's database: a
            # message, not a traceback.  The step that failed was rolled back.
            where = store.path if store is not None else "?"
            print(f"データベース {where} を使えません（処理は完了していません）/ cannot use the database {where} "
                  f"(the command did not finish): {exc}", file=sys.stderr)
            return EXIT_CONFIG
        finally:
            if store is not None:
                store.close()
    return run


def _open(args):
    from bus.configfile import ConfigError
    from bus.sqlitedb import DatabaseError
    from central import config as central_config
    from central.auth import Accounts
    from central.store import Store

    settings = None
    path = args.database
    if path is None or Path(args.config).exists():
        try:
            loaded = central_config.load(args.config)
        except ConfigError as exc:
            raise _Fail(EXIT_CONFIG, str(exc)) from None
        settings = loaded.config.auth
        path = path or loaded.config.central.database
    if not args.create and not Path(path).exists():
        raise _Fail(EXIT_CONFIG, f"データベース {path} がありません。central を一度起動してから使うか、新しく作るなら --create を付けてください"
                                 f" / no database at {path}: start central once first, or add --create to make a new one")
    try:
        store = Store(path)
    except (DatabaseError, sqlite3.Error, OSError) as exc:
        raise _Fail(EXIT_CONFIG, f"データベースを開けません / cannot use {path}: {exc}") from None
    return store, Accounts(store, settings)


def _password(args) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise _Fail(EXIT_USAGE, "標準入力にパスワードがありません / no password on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise _Fail(EXIT_USAGE, "端末がありません: --password-stdin を使ってください / no terminal: use --password-stdin")
    first = getpass.getpass("パスワード / password: ")
    second = getpass.getpass("もう一度 / again: ")
    if first != second:
        raise _Fail(EXIT_REFUSED, "2回の入力が違います / the two entries differ")
    return first


class _TokenFile:
    """``--output FILE``: a new file next to FILE, mode 0600 whatever the
    umask, made *before* the token is issued (a folder that cannot be written
    fails before the old token is revoked); :meth:`commit` writes the token
    and renames it over FILE (an old file of that name — or a symbolic link
    there — is replaced, never written through)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise _Fail(EXIT_REFUSED, f"{path} を書けません / cannot write {path}: {exc.strerror}") from None

    def commit(self, token: str) -> None:
        os.fchmod(self.fd, 0o600)
        os.write(self.fd, (token + "\n").encode("ascii"))
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.temp.unlink(missing_ok=True)


def _issue(accounts, staff_id: str, output: Path | None, *, before=None) -> str:
    """Issue a token (after ``before()``, e.g. adding the account); with
    ``output``, into that file, which is made first."""
    out = _TokenFile(output) if output is not None else None
    try:
        if before is not None:
            before()
        token = accounts.issue_token(staff_id)
        if out is not None:
            out.commit(token)
        return token
    finally:
        if out is not None:
            out.discard()


def _add(args, accounts) -> int:
    from central.auth import KIOSK

    staff_id = args.id.strip().lower()
    if args.output is not None and args.role != KIOSK:
        raise _Fail(EXIT_USAGE, "--output は発券機（--role kiosk）だけです / --output is for --role kiosk only")
    if args.role == KIOSK:
        if args.password_stdin:
            raise _Fail(EXIT_USAGE, "発券機のアカウントはパスワードを持ちません / a kiosk account has no password")
        token = _issue(accounts, staff_id, args.output, before=lambda: accounts.add(staff_id, KIOSK, name=args.name))
        if args.output is not None:
            print(f"発券機 {staff_id} を追加しました。API トークンを {args.output} に書きました（所有者のみ読めます）。"
                  f"発券機の設定 [kiosk] token に書いてください。\n"
                  f"added kiosk {staff_id}; its API token is in {args.output} (mode 0600): put it into the kiosk's [kiosk] token.",
                  file=sys.stderr)
            return EXIT_OK
        print(f"発券機 {staff_id} を追加しました。次の行の API トークンを発券機の設定 [kiosk] token に書いてください（表示は一度だけ）。\n"
              f"added kiosk {staff_id}; put the API token below into the kiosk's [kiosk] token (shown once only).",
              file=sys.stderr)
        print(token)
        return EXIT_OK
    from central.auth import check_staff_id

    check_staff_id(staff_id)  # before asking for a password
    if accounts.get(staff_id) is not None:
        raise _Fail(EXIT_REFUSED, f"職員 {staff_id} はすでにいます / staff account {staff_id!r} exists already")
    accounts.add(staff_id, args.role, name=args.name, password=_password(args))
    print(f"職員 {staff_id}（{args.role}）を追加しました / added {staff_id} ({args.role})")
    return EXIT_OK


def _passwd(args, accounts) -> int:
    from central.auth import KIOSK

    staff_id = args.id.strip().lower()
    staff = accounts.get(staff_id)
    if staff is None:
        raise _Fail(EXIT_REFUSED, f"職員 {staff_id} はいません / no staff account {staff_id!r}")
    if staff.role == KIOSK:  # before asking for a password nobody will use
        raise _Fail(EXIT_REFUSED, f"{staff_id} は発券機のアカウントで、パスワードを持ちません（新しいトークン: madoguchi staff token {staff_id}）"
                                  f" / {staff_id} is a kiosk account: it has no password (a new token: madoguchi staff token {staff_id})")
    had_token = staff.has_token
    ended = accounts.set_password(staff_id, _password(args))
    token = "、API トークンを削除" if had_token else ""
    token_en = ", API token deleted (issue a new one with 'madoguchi staff token')" if had_token else ""
    print(f"{staff_id} のパスワードを変更しました（ログイン中のセッション {ended} 件を終了{token}）/ password changed, "
          f"{ended} session(s) ended{token_en}")
    return EXIT_OK


def _disable(args, accounts) -> int:
    staff_id = args.id.strip().lower()
    staff = accounts.get(staff_id)
    ended = accounts.set_disabled(staff_id, True)
    token = "、API トークンを削除" if staff is not None and staff.has_token else ""
    token_en = ", API token deleted" if token else ""
    print(f"{staff_id} を無効にしました（セッション {ended} 件を終了{token}）/ disabled, {ended} session(s) ended{token_en}")
    return EXIT_OK


def _enable(args, accounts) -> int:
    staff_id = args.id.strip().lower()
    accounts.set_disabled(staff_id, False)
    print(f"{staff_id} を有効にしました（API トークンは戻りません: 必要なら madoguchi staff token {staff_id}）/ "
          f"enabled (no API token comes back: issue one with 'madoguchi staff token {staff_id}' if it needs one)")
    return EXIT_OK


def _token(args, accounts) -> int:
    staff_id = args.id.strip().lower()
    token = _issue(accounts, staff_id, args.output)
    if args.output is not None:
        print(f"{staff_id} の API トークンを {args.output} に書きました（所有者のみ読めます。以前のトークンは無効になりました）/ "
              f"API token of {staff_id} written to {args.output} (mode 0600; the previous one no longer works)", file=sys.stderr)
        return EXIT_OK
    print(f"{staff_id} の API トークン（表示は一度だけ。以前のトークンは無効になりました）/ "
          f"API token of {staff_id} (shown once; the previous one no longer works):", file=sys.stderr)
    print(token)
    return EXIT_OK


def _list(args, accounts) -> int:
    rows = [s.public() for s in accounts.list()]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return EXIT_OK
    if not rows:
        print("アカウントはありません / no accounts")
        return EXIT_OK
    print(f"{'ID':<21}{'役割 role':<22}{'状態 state':<16}{'パスワード':<8}{'トークン':<8}表示名 name")
    for r in rows:
        state = "無効 disabled" if r["disabled"] else "有効 enabled"
        print(f"{r['id']:<21}{r['role_ja'] + ' ' + r['role']:<20}{state:<14}{'あり' if r['has_password'] else '—':<8}"
              f"{'あり' if r['has_token'] else '—':<8}{r['name']}")
    return EXIT_OK


def _audit(args, accounts) -> int:
    rows = accounts.audit(staff_id=args.id, limit=max(1, min(args.limit, 10_000)))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return EXIT_OK
    for r in rows:
        print(f"{r['at'][:19].replace('T', ' ')}Z  {r['staff_id'] or '(不正なID)':<20} {r['result']:<16} "
              f"{r['client'] or '':<16} {r['detail'] or ''}")
    return EXIT_OK


__all__ = ["staff_command"]
