"""``madoguchi close-day`` and ``madoguchi report {day,kpi}`` (docs/accounting.md §9).

They open central's SQLite database directly (the file named in
central.toml), next to a running central: WAL lets them read while central
writes, ``busy_timeout`` waits for its short transactions, and each of ours
is short too.

Exit codes (sysexits.h): 0 done; 65 (EX_DATAERR) bad input or a refused
action (a bad date, the day already closed); 74 (EX_IOERR) an output file
that cannot be written or a database that cannot be used; 78 (EX_CONFIG) a
bad config file or a database that does not exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

EX_OK, EX_DATAERR, EX_IOERR, EX_CONFIG = 0, 65, 74, 78
DEFAULT_CONFIG = "/etc/madoguchi/central.toml"


def close_day_command(sub) -> None:
    p = sub.add_parser("close-day", help="close a day (日次処理): freeze its figures with the cash count",
                       description="Close a day of the site: its figures are frozen (snapshot + SHA-256); "
                                   "later changes become adjustments.")
    _common(p)
    p.add_argument("--date", required=True, help="the day to close, YYYY-MM-DD (収納日)")
    p.add_argument("--counted-cash", metavar="YEN",
                   help="cash collected, the change fund already taken out (or give --denomination)")
    p.add_argument("--denomination", action="append", default=[], metavar="YEN=PIECES",
                   help="the drawer by denomination, e.g. --denomination 10000=5 --denomination 1000=12 (repeat)")
    p.add_argument("--change-fund", default="0", metavar="YEN", help="釣銭準備金 taken out of the drawer total")
    p.add_argument("--by", required=True, metavar="STAFF", help="staff id of who closes the day")
    p.add_argument("--xlsx", type=Path, metavar="OUT", help="also write the day's workbook")
    p.add_argument("--csv", type=Path, metavar="OUT", help="also write the day's detail CSV (UTF-8 with BOM)")
    p.set_defaults(func=_close_day)


def report_command(sub) -> None:
    p = sub.add_parser("report", help="accounting reports: a day sheet (日次処理表) or KPIs")
    rsub = p.add_subparsers(dest="report", metavar="REPORT", required=True)
    day = rsub.add_parser("day", help="a day sheet (open: live figures; closed: the stored snapshot and its adjustments)")
    _common(day)
    day.add_argument("--date", required=True, help="YYYY-MM-DD")
    day.add_argument("--xlsx", type=Path, metavar="OUT", help="write the workbook")
    day.add_argument("--csv", type=Path, metavar="OUT", help="write the detail CSV (UTF-8 with BOM)")
    day.add_argument("--summary-csv", type=Path, metavar="OUT", help="write the totals CSV")
    day.add_argument("--json", action="store_true", help="print the sheet as JSON instead of text")
    day.set_defaults(func=_report_day)
    kpi = rsub.add_parser("kpi", help="KPIs for a range of days")
    _common(kpi)
    kpi.add_argument("--from", dest="date_from", required=True, help="YYYY-MM-DD")
    kpi.add_argument("--to", dest="date_to", required=True, help="YYYY-MM-DD")
    kpi.add_argument("--csv", type=Path, metavar="OUT", help="write a KPI table as CSV")
    kpi.add_argument("--table", choices=("days", "services", "hours"), default="days", help="which table --csv writes")
    kpi.add_argument("--json", action="store_true", help="print as JSON")
    kpi.set_defaults(func=_report_kpi)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="central.toml (default: %(default)s)")
    p.add_argument("--database", type=Path, help="override [central] database")


def _yen(text: str | None, what: str) -> int | None:
    """A yen amount typed on the command line ("12,340" is fine); bad input is 65."""
    from central.dayclose import DayCloseError

    if text is None:
        return None
    try:
        return int(text.replace(",", "").strip())
    except ValueError:
        raise DayCloseError("invalid", f"{what} は整数（円）で指定してください: {text[:20]}",
                            f"{what}: a whole number of yen, not {text[:20]!r}") from None


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _open(args):
    """(DayClose, store, loaded) for the config, or raise _Fail."""
    from bus.configfile import ConfigError
    from bus.sqlitedb import DatabaseError
    from central import config as central_config
    from central.dayclose import DayClose
    from central.store import Store

    try:
        loaded = central_config.load(args.config)
    except ConfigError as exc:
        raise _Fail(EX_CONFIG, str(exc)) from None
    path = args.database or loaded.config.central.database
    if not Path(path).exists():
        raise _Fail(EX_CONFIG, f"データベースがありません / no database at {path} (is [central] database right?)")
    try:
        store = Store(path)
    except (DatabaseError, sqlite3.Error) as exc:
        raise _Fail(EX_IOERR, f"データベースを開けません / cannot use {path}: {exc}") from None
    return DayClose(store, loaded.site, loaded.catalog), store, loaded


def _run(args, body) -> int:
    from central.dayclose import DayCloseError

    try:
        dc, store, loaded = _open(args)
    except _Fail as exc:
        print(exc, file=sys.stderr)
        return exc.code
    try:
        return body(dc, store, loaded)
    except DayCloseError as exc:
        print(f"エラー / error: {exc.ja} / {exc.en}", file=sys.stderr)
        return EX_DATAERR
    except _Fail as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except sqlite3.OperationalError as exc:  # e.g. database is locked past busy_timeout
        print(f"データベースエラー / database error: {exc}", file=sys.stderr)
        return EX_IOERR
    finally:
        store.close()


def _write(path: Path | None, data: bytes) -> None:
    if path is None:
        return
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise _Fail(EX_IOERR, f"書き込めません / cannot write {path}: {exc.strerror}") from None
    print(f"wrote {path}")


def _denominations(items: list[str]) -> dict[int, int] | None:
    from central.dayclose import DayCloseError

    out: dict[int, int] = {}
    for item in items:
        yen, sep, pieces = item.partition("=")
        if not sep or not yen.strip().isdigit() or not pieces.strip().isdigit():
            raise DayCloseError("invalid", f"金種は 円=枚数 で指定してください: {item[:20]}", f"denomination is YEN=PIECES: {item[:20]!r}")
        out[int(yen)] = out.get(int(yen), 0) + int(pieces)
    return out or None


def _close_day(args) -> int:
    from central.dayclose import detail_csv, workbook_bytes

    def body(dc, store, loaded) -> int:
        sheet = dc.close(args.date, closed_by=args.by, counted_cash=_yen(args.counted_cash, "--counted-cash"),
                         denominations=_denominations(args.denomination),
                         change_fund=_yen(args.change_fund, "--change-fund"))
        print(_text(sheet))
        _write(args.xlsx, workbook_bytes(sheet) if args.xlsx else b"")
        _write(args.csv, detail_csv(sheet) if args.csv else b"")
        return EX_OK

    return _run(args, body)


def _report_day(args) -> int:
    from central.dayclose import detail_csv, summary_csv, workbook_bytes

    def body(dc, store, loaded) -> int:
        sheet = dc.sheet(args.date)
        if args.json:
            print(json.dumps(sheet, ensure_ascii=False, indent=1))
        else:
            print(_text(sheet))
        _write(args.xlsx, workbook_bytes(sheet) if args.xlsx else b"")
        _write(args.csv, detail_csv(sheet) if args.csv else b"")
        _write(args.summary_csv, summary_csv(sheet) if args.summary_csv else b"")
        return EX_OK

    return _run(args, body)


def _report_kpi(args) -> int:
    from central import kpi

    def body(dc, store, loaded) -> int:
        k = kpi.compute(store, loaded.site, args.date_from, args.date_to)
        if args.json:
            print(json.dumps(k, ensure_ascii=False, indent=1))
        else:
            t = k["total"]
            print(f"KPI {k['from']} – {k['to']}  {k['site']['name_ja']}")
            print(f"  キャッシュレス比率 cashless share: {t['share_count']} % of payments, {t['share_amount']} % of yen")
            print(f"  在庁時間 time in building: mean {t['in_building']['mean']} min, p90 {t['in_building']['p90']} min")
            print(f"  待ち時間 wait per stop: mean {t['wait']['mean']} min, p90 {t['wait']['p90']} min")
            print(f"  不在率 no-show rate: {t['no_show_rate']} %   来庁者 visitors: {t['visitors']}")
            for s in k["services"]:
                print(f"  {s['name_ja']}: wait {s['wait']['mean']}/{s['wait']['p90']} min, "
                      f"service {s['service_time']['mean']}/{s['service_time']['p90']} min, no-show {s['no_show_rate']} %")
        _write(args.csv, kpi.csv_bytes(k, args.table) if args.csv else b"")
        return EX_OK

    return _run(args, body)


def _text(s: dict) -> str:
    sm, cash = s["summary"], s["cash"]
    state = (f"締め済 closed {s['close']['closed_at_local']} by {s['close']['closed_by']}  sha256 {s['close']['sha256'][:16]}…"
             if s["status"] == "closed" else "未締め open (live figures)")
    lines = [
        f"日次処理表 {s['day']}  {s['site']['name_ja']}  {state}",
        f"  売上 sales      {sm['sales']['count']:>5} 件 {sm['sales']['amount']:>12,} 円",
        f"  取消 voids      {sm['voids']['count']:>5} 件 {-sm['voids']['amount']:>12,} 円",
        f"  返金 refunds    {sm['refunds']['count']:>5} 件 {-sm['refunds']['amount']:>12,} 円",
        f"  差引収納額 net  {sm['revenue']['count']:>5} 件 {sm['revenue']['amount']:>12,} 円",
        f"  処理未了 pending {sm['pending']['count']:>4} 件 {sm['pending']['amount']:>12,} 円 (not counted)",
    ]
    lines += [f"  {a['code']} {a['moku']:<10} {a['count']:>5} 件 {a['amount']:>12,} 円" for a in s["by_account"]]
    lines += [f"  {m['name_ja']:<12} {m['count']:>5} 件 {m['amount']:>12,} 円" for m in s["by_method"]]
    lines.append(f"  現金 cash expected {cash['expected']:,} 円"
                 + (f", counted {cash['counted']:,} 円, 過不足 over/short {cash['over_short']:+,} 円" if cash["counted"] is not None else ""))
    for a in s.get("adjustments", []) + s.get("booked_adjustments", []):
        lines.append(f"  調整 {a['day']} → {a['booked_day']}: {a['amount']:+,} 円 {a['account_code']} {a['reason'][:60]}")
    if s.get("adjusted"):
        lines.append(f"  調整後収納額 revenue after adjustments {s['adjusted']['revenue']:,} 円")
    return "\n".join(lines)
