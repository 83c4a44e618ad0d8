"""How long one queue decision takes at scale, and a simulated peak day's
wall time — for each policy, beside a baseline measured in the same run
(one empty SQLite transaction on the same file: the floor of any action).

    .venv/bin/python -m tests.bench.bench_decision [--waiting 2000] [--counters 100]

A decision is `call_next` on a busy counter: finish the current visitor,
choose the next among every callable stop, call them — one transaction with
fsync, on a real SQLite file.  Not part of the pass/fail suite.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

from central.config import Counter, Procedure, QueueSettings, Service, Site, SiteInfo
from central.queue import QueueEngine
from central.simulate import POLICIES, load_scenario, simulate
from central.store import Store

REPO = Path(__file__).resolve().parents[2]
SERVICES = [("juminido", 18, ()), ("kokuho", 12, ("juminido",)), ("nenkin", 10, ("juminido",)),
            ("kodomo", 14, ("juminido",)), ("shomei", 4, ()), ("zei", 5, ())]
VISITS = [("shomei",), ("juminido", "kokuho"), ("juminido", "kokuho", "kodomo"), ("kokuho",), ("juminido",), ("zei",)]


def site(counters: int) -> Site:
    return Site(
        site=SiteInfo(id="bench", name_ja="ベンチ", name_en="Bench"),
        services=tuple(Service(id=s, name_ja=s, name_en=s, after=a, typical_min=m) for s, m, a in SERVICES),
        counters=tuple(
            Counter(id=str(n), name_ja=f"{n}番窓口", name_en=f"Counter {n}", services=(SERVICES[n % len(SERVICES)][0], "shomei"))
            for n in range(1, counters + 1)
        ),
        procedures=tuple(Procedure(id=s, name_ja=s, name_en=s, services=(s,)) for s, _, _ in SERVICES),
    )


def decisions(policy: str, waiting: int, counters: int, rounds: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="madoguchi-decide-"))
    engine = QueueEngine(Store(work / "q.db"), site(counters), QueueSettings(policy=policy))
    rng = random.Random(1)
    for _ in range(waiting + counters * rounds):
        engine.issue(list(rng.choice(VISITS)))
    for n in range(1, counters + 1):  # every counter busy
        engine.call_next(str(n))
    samples = []
    for _ in range(rounds):
        for n in range(1, counters + 1):
            t0 = time.perf_counter()
            engine.call_next(str(n))
            samples.append((time.perf_counter() - t0) * 1000)
    engine.store.close()
    return samples


def empty_transactions(count: int) -> list[float]:
    store = Store(Path(tempfile.mkdtemp(prefix="madoguchi-floor-")) / "q.db")
    samples = []
    for i in range(count):
        t0 = time.perf_counter()
        with store.transaction() as db:
            db.execute("INSERT INTO seen_events (event_id, device, at) VALUES (?, 'x', 'x')", (str(i),))
        samples.append((time.perf_counter() - t0) * 1000)
    store.close()
    return samples


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * p / 100))]


def main() -> int:
    logging.getLogger("central").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--waiting", type=int, default=2000)
    parser.add_argument("--counters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    floor = empty_transactions(300)
    print(f"baseline: one SQLite transaction with fsync   p50 {pct(floor, 50):6.2f} ms  p99 {pct(floor, 99):6.2f} ms")
    print(f"one decision (finish + choose + call), {args.waiting} waiting tickets, {args.counters} counters:")
    for policy in POLICIES:
        s = decisions(policy, args.waiting, args.counters, args.rounds)
        print(f"  {policy:<10} p50 {pct(s, 50):6.2f} ms  p99 {pct(s, 99):6.2f} ms  mean {statistics.mean(s):6.2f} ms"
              f"  ({len(s)} decisions, {pct(s, 50) / pct(floor, 50):5.1f}× the baseline)")
    peak = load_scenario(REPO / "config" / "sim" / "march-peak.toml")
    print(f"simulated peak day ({peak.visitors} visitors, {len(peak.counters)} counters), wall time:")
    for policy in POLICIES:
        t0 = time.perf_counter()
        r = simulate(peak, policy, seed=0)
        print(f"  {policy:<10} {time.perf_counter() - t0:6.2f} s  ({r.served} visitors served)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
