"""``madoguchi reconcile``: the payment agent's monthly statement, from the
accounting office's PC (docs/reconciliation.md §7).

Opens central's SQLite database directly (``--config central.toml``); central
may be running — WAL and the busy timeout let both work, and every command is
a few short transactions.

Exit codes: 0 done; 65 (EX_DATAERR) a statement file or request that cannot
be taken, with every problem and its line number on stderr; 66 (EX_NOINPUT)
a file that cannot be read; 78 (EX_CONFIG) a configuration problem.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sqlite3
import sys
from pathlib import Path

EX_OK, EX_DATAERR, EX_NOINPUT, EX_IOERR, EX_CONFIG = 0, 65, 66, 74, 78

logger = logging.getLogger(__name__)


def _month(text: str) -> str:
    from central.statement import check_month

    try:
        check_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container, a service account)
        return "cli"


def reconcile_command(sub) -> None:
    """Register ``madoguchi reconcile`` on an argparse sub-parser set."""
    p = sub.add_parser("reconcile", help="match the payment agent's monthly statement with the ledger (照合)")
    p.add_argument("--config", default="/etc/madoguchi/central.toml", help="central.toml (default: %(default)s)")
    p.add_argument("--database", help="override [central] database")
    rsub = p.add_subparsers(dest="reconcile_cmd", metavar="ACTION", required=True)

    imp = rsub.add_parser("import", help="import a statement file (CSV, UTF-8 or Shift_JIS)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--source", required=True, help="who sent it: the agent's id, e.g. 'gmo-fg' ([a-z0-9_-])")
    imp.add_argument("--month", required=True, type=_month, help="the statement's month, YYYY-MM")
    imp.add_argument("--by", default=_user(), help="who imports (audit log; default: the login name)")
    imp.set_defaults(func=_import)

    mat = rsub.add_parser("match", help="match the month's ledger with its statement(s); files the exceptions")
    mat.add_argument("--month", required=True, type=_month)
    mat.add_argument("--fee-scope", choices=("transaction", "month"), default="transaction",
                     help="where the contract rounds the fee (default: %(default)s)")
    mat.add_argument("--by", default=_user())
    mat.set_defaults(func=_match)

    rep = rsub.add_parser("report", help="the month's result; --csv / --html write it to files")
    rep.add_argument("--month", required=True, type=_month)
    rep.add_argument("--csv", type=Path, metavar="OUT", help="write the report as CSV (UTF-8 with BOM, for Excel)")
    rep.add_argument("--html", type=Path, metavar="OUT", help="write the report as an HTML page")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(func=_report)

    exc = rsub.add_parser("exceptions", help="list exceptions with their age")
    exc.add_argument("--open", action="store_true", help="open ones only")
    exc.add_argument("--month", type=_month)
    exc.set_defaults(func=_exceptions)

    res = rsub.add_parser("resolve", help="close an exception with who and why (or --reopen it)")
    res.add_argument("id", type=int)
    res.add_argument("--by", required=True, help="staff id")
    res.add_argument("--note", required=True, help="what was done / decided")
    res.add_argument("--reopen", action="store_true")
    res.set_defaults(func=_resolve)

    sam = rsub.add_parser("sample", help="write a synthetic statement from the ledger (tests, demo, training)")
    sam.add_argument("--month", required=True, type=_month)
    sam.add_argument("--out", required=True, type=Path)
    sam.add_argument("--faults", action="store_true", help="put in one of each fault (docs/reconciliation.md §2)")
    sam.add_argument("--encoding", choices=("utf-8", "utf-8-sig", "cp932"), default="utf-8")
    sam.add_argument("--seed", type=int, default=0)
    sam.add_argument("--fill-ledger", type=int, metavar="PER_DAY",
                     help="first fill an EMPTY month of the ledger with synthetic payments (demo databases only)")
    sam.set_defaults(func=_sample)


class _Context:
    def __init__(self, args) -> None:
        from bus.configfile import ConfigError
        from central.config import load
        from central.store import Store

        try:
            loaded = load(args.config)
        except (ConfigError, OSError) as exc:
            raise _Exit(EX_CONFIG, f"設定エラー / configuration error: {exc}") from None
        if loaded.catalog is None:
            raise _Exit(EX_CONFIG, f"{args.config}: [central] fees_file/brands_file are needed (the fee rates)")
        self.site, self.catalog = loaded.site, loaded.catalog
        path = args.database or loaded.config.central.database
        if not Path(path).exists():
            # Never create one: a mistyped path would import into an empty database.
            raise _Exit(EX_CONFIG, f"データベースがありません / no database at {path} (is [central] database right?)")
        try:
            self.store = Store(path)
        except (sqlite3.Error, RuntimeError, OSError) as exc:  # a locked or corrupt file, a newer schema
            raise _Exit(EX_CONFIG, f"データベースを開けません / cannot open the database {path}: {exc}") from None

    def reconciler(self, **kw):
        from central.reconcile import Reconciler

        return Reconciler(self.store, self.site, self.catalog, **kw)


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _run(fn):
    def wrapper(args) -> int:
        from central.reconcile import ReconcileError
        from central.statement import StatementError

        ctx = None
        try:
            ctx = _Context(args)
            return fn(args, ctx)
        except _Exit as exc:
            print(str(exc), file=sys.stderr)
            return exc.code
        except StatementError as exc:
            enc = f" (read as {exc.encoding})" if exc.encoding else ""
            print(f"取り込めません / not imported{enc}: {args.file}", file=sys.stderr)
            for line, message in exc.errors:
                print(f"  {args.file}:{line}: {message}" if line else f"  {args.file}: {message}", file=sys.stderr)
            return EX_DATAERR
        except (ReconcileError, ValueError) as exc:
            print(f"エラー / error: {exc}", file=sys.stderr)
            return EX_DATAERR
        finally:
            if ctx is not None:
                ctx.store.close()

    wrapper.__name__ = fn.__name__
    return wrapper


@_run
def _import(args, ctx) -> int:
    from central.statement import import_statement

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"読めません / cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    result = import_statement(ctx.store, data, ctx.catalog, source=args.source, month=args.month,
                              filename=str(args.file), actor=args.by, zone=ctx.site.site.timezone)
    print(("取り込みました / " if result.created else "取り込み済み（変更なし） / ") + result.message)
    return EX_OK


@_run
def _match(args, ctx) -> int:
    result = ctx.reconciler(fee_scope=args.fee_scope).run(args.month, actor=args.by)
    s = result.summary
    print(f"照合 #{result.run_id} {args.month}: 台帳 {result.ledger_count} 件 / 明細 {result.line_count} 行 / "
          f"照合済み {result.matched} 件 ({s['matched']['amount']:,} 円)")
    print(f"  収入（総額） gross {s['gross_revenue']:,} 円, 公金振替（手数料） fee {s['kokin_furikae']:,} 円 "
          f"(契約 expected {s['fees']['total']['expected']:,} 円, 差異 variance {s['fees']['total']['variance']:+,}), "
          f"入金額 net deposit {s['net_deposit']:,} 円")
    for bucket, count in sorted(result.exceptions.items()):
        print(f"  {bucket}: {count}")
    if not result.exceptions:
        print("  例外なし / no exceptions")
    return EX_OK


@_run
def _report(args, ctx) -> int:
    from central.reconcile import report_csv, report_html

    rec = ctx.reconciler()
    report = rec.report(args.month)
    try:
        if args.csv:
            args.csv.write_bytes(report_csv(report))
            print(f"CSV: {args.csv}")
        if args.html:
            args.html.write_text(report_html(report, site_name=ctx.site.site.name_ja), encoding="utf-8")
            print(f"HTML: {args.html}")
    except OSError as exc:
        raise _Exit(EX_IOERR, f"書き込めません / cannot write: {exc}") from None
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    elif not (args.csv or args.html):
        s = report["summary"]
        if s is None:
            print(f"{args.month}: まだ照合していません / not matched yet")
        else:
            print(f"{args.month} (照合 #{report['run']['id']}): 照合済み {s['matched']['count']} 件 "
                  f"{s['matched']['amount']:,} 円; 収入 {s['gross_revenue']:,} 円, 公金振替 {s['kokin_furikae']:,} 円, "
                  f"入金額 {s['net_deposit']:,} 円")
            for cat, row in s["fees"].items():
                print(f"  手数料 {cat}: 契約 {row['expected']:,} / 明細 {row['statement']:,} / 差異 {row['variance']:+,}")
        for b in report["buckets"].values():
            if b["open"]:
                print(f"  {b['ja']} / {b['en']}: {b['open']} 件, {b['amount']:,} 円, 最長 {b['oldest_days']} 日 [{b['level']}]")
        if report["stale"]:
            print("  注意: 照合後に明細が差し替えられました。match をやり直してください / the statement changed: match again")
    return EX_OK


@_run
def _exceptions(args, ctx) -> int:
    rows = ctx.reconciler().exceptions(month=args.month, open_only=args.open)
    for e in rows:
        flag = {"overdue": " [期限超過 OVERDUE]", "escalate": " [30日超 ESCALATE]"}.get(e["level"], "")
        print(f"#{e['id']} {e['month']} {e['bucket']} {e['status']} {e['txn_day']} {e['age_days']}日 "
              f"{e['amount']:,}円{flag}")
        print(f"    {e['detail']}")
        for h in e["history"][1:]:
            print(f"    - {h['at'][:16]} {h['actor']} {h['action']}: {h['note']}")
    if not rows:
        print("例外はありません / no exceptions")
    return EX_OK


@_run
def _resolve(args, ctx) -> int:
    e = ctx.reconciler().resolve(args.id, by=args.by, note=args.note, reopen=args.reopen)
    print(f"#{e['id']} {e['bucket']}: {e['status']} ({args.by}: {args.note})")
    return EX_OK


@_run
def _sample(args, ctx) -> int:
    from central.statement import check_month, generate, synthetic_ledger

    if args.fill_ledger is not None:
        start, end = check_month(args.month)
        used = ctx.store.conn.execute(
            "SELECT COUNT(*) FROM payments WHERE day >= ? AND day < ?", (start.isoformat(), end.isoformat())
        ).fetchone()[0]
        if used:
            print(f"エラー / error: {args.month} already has {used} payments; --fill-ledger is for an empty month",
                  file=sys.stderr)
            return EX_DATAERR
        n = synthetic_ledger(ctx.store, ctx.site, ctx.catalog, args.month, per_day=args.fill_ledger, seed=args.seed)
        print(f"台帳に合成データ {n} 件 / {n} synthetic payments written")
    gen = generate(ctx.store, ctx.catalog, args.month, zone=ctx.site.site.timezone, seed=args.seed, faults=args.faults)
    args.out.write_bytes(gen.to_bytes(args.encoding))
    print(f"{args.out}: {len(gen.rows)} 行 / lines, {args.encoding}")
    for fault, what in gen.faults:
        print(f"  fault {fault}: {what}")
    return EX_OK


__all__ = ["reconcile_command"]
