"""Benchmark: a month of 100,000 cashless transactions — the ledger and the
agent's statement — imported and matched on a real SQLite file.

    .venv/bin/python -m tests.bench.bench_matching [--transactions 100000] [--seed 1]

Baselines measured in the same run, on the same data:

* read + ``csv.reader`` of the statement, no checks (the floor for import);
* a plain dict join of statement lines to payments on the agent id (the floor
  for matching: what the simplest possible matcher costs).

Prints wall times, the peak of Python allocations (tracemalloc, measured in a
second pass so it does not slow the timed one) and the process's maximum RSS.
"""

from __future__ import annotations

import argparse
import csv
import io
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from central.config import load
from central.reconcile import Reconciler, match
from central.statement import (
    agent_txn_id,
    generate,
    import_statement,
    parse_statement,
    synthetic_ledger,
)
from central.store import Store

ROOT = Path(__file__).resolve().parents[2]
MONTH = "2026-11"
BUSINESS_DAYS = 21  # November 2026


def timed(fn, *args, **kw):
    start = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - start


def peak(fn, *args, **kw) -> float:
    tracemalloc.start()
    try:
        fn(*args, **kw)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    loaded = load(ROOT / "config" / "central.toml")
    site, catalog = loaded.site, loaded.catalog
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "central.db")
        per_day = -(-args.transactions // BUSINESS_DAYS)
        written, t_ledger = timed(synthetic_ledger, store, site, catalog, MONTH, per_day=per_day, seed=args.seed,
                                  cash_share=0.0)
        gen, t_gen = timed(generate, store, catalog, MONTH, seed=args.seed, faults=True)
        data = gen.to_bytes("cp932")
        rec = Reconciler(store, site, catalog)

        # baseline 1: read and split the CSV, nothing checked
        _, t_csv = timed(lambda: list(csv.reader(io.StringIO(data.decode("cp932"), newline=""))))
        parsed, t_parse = timed(parse_statement, data, catalog, month=MONTH)
        result, t_import = timed(import_statement, store, data, catalog, source="bench", month=MONTH, filename="b.csv")

        # baseline 2: a dict join on the agent id (as if the ledger knew every id)
        txns = rec.ledger_txns(MONTH)
        ids = {agent_txn_id(t.payment_id, args.seed): t.payment_id for t in txns}

        def dict_join():
            return [(ids[x.agent_txn_id], x) for x in parsed.lines if x.agent_txn_id in ids]

        joined, t_join = timed(dict_join)
        lines = rec.statement_lines(MONTH)
        pairs, t_match = timed(match, txns, lines)
        run, t_run = timed(rec.run, MONTH, actor="bench")
        _, t_report = timed(rec.report, MONTH)
        rss_timed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        mem_parse = peak(parse_statement, data, catalog, month=MONTH)
        mem_match = peak(match, txns, lines)
        mem_run = peak(rec.run, MONTH, actor="bench")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        store.close()

    rows = [
        ("ledger rows written (synthetic, one transaction)", f"{written:,}", f"{t_ledger:.2f} s"),
        ("statement generated", f"{len(gen.rows):,} lines, {len(data) / 2**20:.1f} MiB cp932", f"{t_gen:.2f} s"),
        ("baseline: decode + csv.reader, no checks", "", f"{t_csv:.2f} s"),
        ("parse_statement (every check)", f"{len(parsed.lines):,} lines", f"{t_parse:.2f} s"),
        ("import_statement (parse + insert, one transaction)", f"{result.line_count:,} lines", f"{t_import:.2f} s"),
        ("baseline: dict join on agent id", f"{len(joined):,} pairs", f"{t_join:.3f} s"),
        ("match() in memory (keys 1-3)", f"{len(pairs):,} pairs", f"{t_match:.2f} s"),
        ("Reconciler.run (read, match, check, store)", f"{run.matched:,} matched, {sum(run.exceptions.values())} exceptions",
         f"{t_run:.2f} s"),
        ("Reconciler.report (page/API)", "", f"{t_report:.3f} s"),
        ("peak Python allocations: parse_statement", f"{mem_parse:.0f} MiB", ""),
        ("peak Python allocations: match()", f"{mem_match:.0f} MiB", ""),
        ("peak Python allocations: Reconciler.run", f"{mem_run:.0f} MiB", ""),
        ("max RSS after the timed pass", f"{rss_timed:.0f} MiB", ""),
        ("max RSS at the end (tracemalloc's own overhead included)", f"{rss:.0f} MiB", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bench_matching: {MONTH}, {args.transactions:,} transactions requested, seed {args.seed}")
    for name, what, t in rows:
        print(f"  {name:<{width}}  {what:>34}  {t:>8}")
    print(f"  exceptions: {dict(sorted(run.exceptions.items()))}; matched by key: {run.summary['matched']['by_key']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
