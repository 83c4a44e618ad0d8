"""``madoguchi simulate``: a working day of a city hall, on a simulated clock,
driving the **real** queue engine (:class:`central.queue.QueueEngine`, on an
in-memory SQLite database) — not a copy of it.

Visitors arrive by hour, pick procedures from a mix, walk to the counter
they are called to, are served for a random time (plus paying, by method),
sometimes don't show up, and counters close at lunch.  Every decision "who
is called next" is the engine's, under the policy being measured.

Scenario files live in ``config/sim/``; docs/simulation.md has the report
and the command that made it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from bus.configfile import load_toml
from bus.topics import ID_PATTERN
from central.config import (
    Counter,
    Procedure,
    QueueSettings,
    Service,
    Site,
    SiteInfo,
    Strict,
)
from central.queue import QueueEngine
from central.store import Store

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Clock = Annotated[str, StringConstraints(pattern=r"^\d{2}:\d{2}$")]
POLICIES = ("separate", "lifetime", "madoguchi")
TZ = timezone(timedelta(hours=9))


class SimService(Strict):
    id: Id
    name_ja: str
    name_en: str
    after: tuple[Id, ...] = ()
    #: Service time: log-normal with this mean (minutes) and coefficient of variation.
    mean_min: float = Field(gt=0, le=240)
    cv: float = Field(default=0.5, ge=0, le=3)
    #: Share of visits at this service that pay a fee (certificates: all).
    pays: float = Field(default=0.0, ge=0, le=1)


class SimCounter(Strict):
    id: Id
    services: tuple[Id, ...] = Field(min_length=1)
    #: Open intervals, e.g. [["08:30", "12:00"], ["13:00", "17:15"]] (lunch closed).
    open: tuple[tuple[Clock, Clock], ...] = (("08:30", "17:15"),)


class Visit(Strict):
    weight: float = Field(gt=0)
    services: tuple[Id, ...] = Field(min_length=1)


class Payment(Strict):
    share: float = Field(ge=0, le=1)
    seconds: float = Field(gt=0, le=600)


class Scenario(Strict):
    name: str
    name_ja: str
    open: Clock = "08:30"
    close: Clock = "17:15"
    visitors: int = Field(ge=0, le=20000)
    #: Share of the day's visitors arriving in each opening hour (8 → 8:30–9:00 ...).
    hourly_share: dict[str, float]
    walk_s: float = Field(default=40, ge=0, le=600)
    no_show_p: float = Field(default=0.03, ge=0, le=1)
    #: How long staff wait for a called visitor before pressing 不在.
    no_show_wait_s: float = Field(default=90, ge=0, le=1800)
    no_show_grace_s: float = Field(default=300, ge=0, le=7200)
    services: tuple[SimService, ...] = Field(min_length=1)
    counters: tuple[SimCounter, ...] = Field(min_length=1)
    mix: tuple[Visit, ...] = Field(min_length=1)
    payments: dict[str, Payment]

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        ids = {s.id for s in self.services}
        for v in self.mix:
            bad = [s for s in v.services if s not in ids]
            if bad:
                raise ValueError(f"mix names unknown services {bad}")
        if abs(sum(p.share for p in self.payments.values()) - 1) > 1e-6:
            raise ValueError("payment shares must add up to 1")
        return self

    def site(self) -> Site:
        return Site(
            site=SiteInfo(id="sim", name_ja=self.name_ja, name_en=self.name),
            services=tuple(
                Service(id=s.id, name_ja=s.name_ja, name_en=s.name_en, after=s.after, typical_min=s.mean_min)
                for s in self.services
            ),
            counters=tuple(
                Counter(id=c.id, name_ja=f"{c.id}番窓口", name_en=f"Counter {c.id}", services=c.services)
                for c in self.counters
            ),
            procedures=tuple(
                Procedure(id=s.id, name_ja=s.name_ja, name_en=s.name_en, services=(s.id,)) for s in self.services
            ),
        )


def load_scenario(path: str | Path) -> Scenario:
    return load_toml(path, Scenario)


def _seconds(clock: str) -> int:
    h, m = clock.split(":")
    return int(h) * 3600 + int(m) * 60


# ---------------------------------------------------------------------------- the day


@dataclass
class Visitor:
    index: int
    arrival: float
    services: tuple[str, ...]
    number: int | None = None
    estimate_min: float | None = None  # the service's estimate, as the board shows it
    ticket_estimate_min: float | None = None  # this ticket's own estimate
    #: Own service + walking time of every stop: the no-waiting lower bound.
    work_s: float = 0.0
    #: service → (service seconds, walking seconds, misses the first call)
    plan: dict = field(default_factory=dict)
    missed: set = field(default_factory=set)


@dataclass
class CounterState:
    id: str
    open_now: bool = False
    busy: bool = False
    ticket: int | None = None
    service: str | None = None  # of the stop being called or served
    busy_s: float = 0.0
    open_s: float = 0.0
    overtime: bool = False
    _since: float = 0.0
    _token: int = 0


@dataclass
class DayResult:
    policy: str
    seed: int
    served: int
    in_building_min: list[float]
    lower_bound_min: list[float]
    waits_min: dict[str, list[float]]
    utilisation: dict[str, float]
    estimate_error_min: list[float]
    ticket_estimate_error_min: list[float]
    longest_wait_min: float
    unfinished: int
    sim_end_min: float
    max_engaged: int = 1  # most stops of one ticket engaged at once (must be 1)


class Day:
    """One simulated day under one policy and seed."""

    def __init__(self, scenario: Scenario, policy: str, seed: int, **policy_params: float) -> None:
        self.sc = scenario
        self.policy = policy
        self.rng = random.Random(seed)
        self.seed = seed
        self.base = datetime(2026, 3, 30, 0, 0, tzinfo=TZ)  # a Monday at the March peak
        self.t = float(_seconds(scenario.open))
        settings = QueueSettings(policy=policy, no_show_grace_s=scenario.no_show_grace_s, max_no_shows=2, **policy_params)
        self.engine = QueueEngine(Store(":memory:"), scenario.site(), settings, clock=self.now)
        self.services = {s.id: s for s in scenario.services}
        self.counters = {c.id: CounterState(c.id) for c in scenario.counters}
        self.events: list = []
        self._seq = itertools.count()
        self.visitors: list[Visitor] = []
        self.by_number: dict[int, Visitor] = {}
        self._busy_from: dict[str, float] = {}
        #: Most stops of one ticket called/served at once, checked after every round of calls.
        self.max_engaged = 0

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.t)

    def at(self, t: float, kind: str, *data) -> None:
        heapq.heappush(self.events, (t, next(self._seq), kind, data))

    # ------------------------------------------------------------ set-up
    def _arrivals(self) -> None:
        sc = self.sc
        shares = {int(h): v for h, v in sc.hourly_share.items()}
        total = sum(shares.values())
        opening, closing = _seconds(sc.open), _seconds(sc.close)
        weights = [v.weight for v in sc.mix]
        for i in range(sc.visitors):
            hour = self.rng.choices(list(shares), [shares[h] / total for h in shares])[0]
            start = max(opening, hour * 3600)
            end = min(closing, (hour + 1) * 3600)
            if end <= start:
                continue
            visit = self.rng.choices(sc.mix, weights)[0]
            v = Visitor(i, self.rng.uniform(start, end), visit.services)
            # Everything random about this visitor is drawn now, from its own
            # stream: every policy meets the very same visitors (common random
            # numbers), so the policies' differences are not sampling noise.
            own = random.Random(f"{self.seed}:{i}")
            v.plan = {
                s: (self._service_s(s, own), own.uniform(0.5, 1.5) * sc.walk_s, own.random() < sc.no_show_p)
                for s in v.services
            }
            self.visitors.append(v)
        self.visitors.sort(key=lambda v: v.arrival)
        for v in self.visitors:
            self.at(v.arrival, "arrive", v)

    def _shifts(self) -> None:
        for c in self.sc.counters:
            for start, end in c.open:
                self.at(_seconds(start), "open", c.id)
                # Overtime (serving everyone holding a ticket) only for shifts
                # that run to the doors' closing; an earlier shift just ends.
                day_end = _seconds(end) >= _seconds(self.sc.close)
                self.at(_seconds(end), "close_day" if day_end else "close", c.id)

    def _service_s(self, service: str, rng: random.Random) -> float:
        s = self.services[service]
        mean = s.mean_min * 60
        if s.cv == 0:
            seconds = mean
        else:
            sigma = math.sqrt(math.log(1 + s.cv**2))
            seconds = rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)
        if s.pays and rng.random() < s.pays:
            methods = list(self.sc.payments.values())
            seconds += rng.choices(methods, [m.share for m in methods])[0].seconds
        return seconds

    # ------------------------------------------------------------ events
    def run(self) -> DayResult:
        self._arrivals()
        self._shifts()
        limit = _seconds(self.sc.close) + 6 * 3600  # nobody who got a ticket is sent home
        while self.events:
            t, _, kind, data = heapq.heappop(self.events)
            if t > limit:
                break
            self.t = t
            getattr(self, f"_on_{kind}")(*data)
        return self._result(self.max_engaged)

    def _on_arrive(self, v: Visitor) -> None:
        estimates = self.engine.estimate_minutes()
        ticket = self.engine.issue(list(v.services), source="sim")
        v.number = ticket.number
        v.estimate_min = estimates[ticket.stops[0].service]
        v.ticket_estimate_min = self.engine.ticket_estimate(ticket.number)
        self.by_number[ticket.number] = v
        self._kick()

    def _on_open(self, cid: str) -> None:
        c = self.counters[cid]
        c.open_now, c._since = True, self.t
        self._kick()

    def _on_close(self, cid: str) -> None:
        c = self.counters[cid]
        c.open_now = False
        c.open_s += self.t - c._since  # a visitor being served is still finished

    def _on_close_day(self, cid: str) -> None:
        # Doors close, but everyone holding a ticket is still served: the
        # counter works on while any ticket is open, and closes after that.
        c = self.counters[cid]
        c.overtime = True
        self._close_if_done(c)

    def _close_if_done(self, c: CounterState) -> None:
        if c.overtime and c.open_now and not c.busy and not self._active():
            self._on_close(c.id)

    def _active(self) -> bool:
        return self.engine.store.conn.execute("SELECT 1 FROM tickets WHERE state='active' LIMIT 1").fetchone() is not None

    def _on_retry(self) -> None:
        self.engine.release_due()
        self._kick()

    def _kick(self) -> None:
        order = [c for c in self.counters.values() if c.open_now and not c.busy]
        # Which free counter calls first: random, but drawn from the seed and
        # the time only, so every policy sees the same tie-breaks (a shared
        # stream would drift apart as the policies make different calls).
        random.Random(f"{self.seed}:order:{self.t:.3f}").shuffle(order)
        for c in order:
            out = self.engine.call_next(c.id, source="sim")
            if not out.calls:
                continue
            number = out.calls[0].number
            c.busy, c.ticket, c._token = True, number, c._token + 1
            self._busy_from[c.id] = self.t
            v = self.by_number[number]
            service = out.calls[0].service
            c.service = service
            _, walk, no_show = v.plan[service]
            if no_show and service not in v.missed:
                v.missed.add(service)  # away once; back after the grace period
                self.at(self.t + self.sc.no_show_wait_s, "no_show", c.id, c._token)
            else:
                self.at(self.t + walk, "start", c.id, c._token, walk)
        # The invariant the tests check: no ticket called at two counters.
        self.max_engaged = max(self.max_engaged, self._max_engaged())

    def _on_start(self, cid: str, token: int, walk: float) -> None:
        c = self.counters[cid]
        if c._token != token:
            return
        self.engine.start(cid, source="sim")
        seconds = self.by_number[c.ticket].plan[c.service][0]
        self.by_number[c.ticket].work_s += walk + seconds
        self.at(self.t + seconds, "done", cid, token)

    def _on_done(self, cid: str, token: int) -> None:
        c = self.counters[cid]
        if c._token != token:
            return
        self.engine.finish(cid, source="sim")
        self._free(c)

    def _on_no_show(self, cid: str, token: int) -> None:
        c = self.counters[cid]
        if c._token != token:
            return
        self.engine.no_show(cid, source="sim")
        self._free(c)
        # The visitor was away; they are back when the grace period ends.
        self.at(self.t + self.sc.no_show_grace_s + 1, "retry")

    def _free(self, c: CounterState) -> None:
        c.busy_s += self.t - self._busy_from.pop(c.id)
        c.busy, c.ticket = False, None
        self._kick()
        if not self._active():
            for other in self.counters.values():
                self._close_if_done(other)

    def _max_engaged(self) -> int:
        row = self.engine.store.conn.execute(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM stops WHERE state IN ('called', 'serving') GROUP BY ticket_id)"
        ).fetchone()
        return row[0] or 0

    # ------------------------------------------------------------ results
    def _result(self, max_engaged: int) -> DayResult:
        for c in self.counters.values():
            if c.open_now:
                c.open_s += self.t - c._since
        db = self.engine.store.conn
        tickets = {r["number"]: r for r in db.execute("SELECT * FROM tickets")}
        in_building, lower, errors = [], [], []
        for v in self.visitors:
            row = tickets.get(v.number)
            if row is None or row["state"] != "done" or row["done_at"] is None:
                continue
            issued = datetime.fromisoformat(row["issued_at"])
            done = datetime.fromisoformat(row["done_at"])
            in_building.append((done - issued).total_seconds() / 60)
            lower.append(v.work_s / 60)
        waits: dict[str, list[float]] = {s.id: [] for s in self.sc.services}
        first_wait: dict[int, float] = {}
        for r in db.execute(
            "SELECT s.*, t.number, t.issued_at FROM stops s JOIN tickets t ON t.id = s.ticket_id"
            " WHERE s.called_at IS NOT NULL ORDER BY s.called_at"
        ):
            wait = (datetime.fromisoformat(r["called_at"]) - datetime.fromisoformat(r["waiting_since"])).total_seconds() / 60
            waits[r["service"]].append(max(wait, 0.0))
            first_wait.setdefault(
                r["number"],
                (datetime.fromisoformat(r["called_at"]) - datetime.fromisoformat(r["issued_at"])).total_seconds() / 60,
            )
        ticket_errors = []
        for v in self.visitors:
            if v.number in first_wait and v.estimate_min is not None:
                errors.append(v.estimate_min - first_wait[v.number])
            if v.number in first_wait and v.ticket_estimate_min is not None:
                ticket_errors.append(v.ticket_estimate_min - first_wait[v.number])
        all_waits = [w for ws in waits.values() for w in ws]
        unfinished = sum(1 for r in tickets.values() if r["state"] != "done")
        return DayResult(
            policy=self.policy, seed=self.seed, served=len(in_building), in_building_min=in_building,
            lower_bound_min=lower, waits_min=waits,
            utilisation={c.id: (c.busy_s / c.open_s if c.open_s else 0.0) for c in self.counters.values()},
            estimate_error_min=errors, ticket_estimate_error_min=ticket_errors, longest_wait_min=max(all_waits, default=0.0), unfinished=unfinished,
            sim_end_min=self.t / 60, max_engaged=max_engaged,
        )


def simulate(scenario: Scenario, policy: str, seed: int, **params: float) -> DayResult:
    return Day(scenario, policy, seed, **params).run()


# ---------------------------------------------------------------------------- summary


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Summary:
    policy: str
    runs: list[DayResult] = field(default_factory=list)

    def per_run(self, fn) -> list[float]:
        return [fn(r) for r in self.runs]

    def stat(self, fn) -> tuple[float, float]:
        values = self.per_run(fn)
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_policies(scenario: Scenario, policies: tuple[str, ...], seeds: range, **params: float) -> dict[str, Summary]:
    return {
        policy: Summary(policy, [simulate(scenario, policy, seed, **(params if policy == "madoguchi" else {})) for seed in seeds])
        for policy in policies
    }


def _mean(values) -> float:
    values = list(values)
    return statistics.mean(values) if values else 0.0


def table(scenario: Scenario, results: dict[str, Summary], seeds: range) -> str:
    """A plain-text report: per policy, mean ± sd over the seeds."""
    lines = [
        f"{scenario.name_ja} / {scenario.name}: {scenario.visitors} visitors, {len(scenario.counters)} counters, "
        f"seeds {seeds.start}–{seeds.stop - 1}",
        f"{'policy':<10} {'mean':>12} {'p50':>12} {'p90':>12} {'max':>7} {'longest wait':>13} {'lower bound':>12}"
        f" {'est. error':>11} {'ticket est.':>11} {'×separate':>10} {'×bound':>7} {'unfinished':>10}",
    ]
    base = _mean(_mean(r.in_building_min) for r in results["separate"].runs) if "separate" in results else None
    for policy, s in results.items():
        runs = s.runs

        def f(fn, s=s) -> str:
            mean, sd = s.stat(fn)
            return f"{mean:6.1f}±{sd:4.1f}"

        mean_tib = _mean(_mean(r.in_building_min) for r in runs)
        bound = _mean(_mean(r.lower_bound_min) for r in runs)
        lines.append(
            f"{policy:<10} {f(lambda r: _mean(r.in_building_min)):>12}"
            f" {f(lambda r: pct(r.in_building_min, 50)):>12} {f(lambda r: pct(r.in_building_min, 90)):>12}"
            f" {max(max(r.in_building_min, default=0) for r in runs):7.1f}"
            f" {max(r.longest_wait_min for r in runs):13.1f}"
            f" {bound:12.1f}"
            f" {_mean(_mean(abs(e) for e in r.estimate_error_min) for r in runs):11.1f}"
            f" {_mean(_mean(abs(e) for e in r.ticket_estimate_error_min) for r in runs):11.1f}"
            f" {(mean_tib / base if base else float('nan')):10.2f} {mean_tib / bound if bound else float('nan'):7.2f}"
            f" {sum(r.unfinished for r in runs):10d}"
        )
    if "lifetime" in results:
        # Paired by seed: the policies met the very same visitors.
        ref = results["lifetime"].runs
        for policy, s in results.items():
            if policy == "lifetime":
                continue
            parts = []
            for name, fn in (("mean", lambda r: _mean(r.in_building_min)), ("p90", lambda r: pct(r.in_building_min, 90))):
                diffs = [fn(a) - fn(b) for a, b in zip(s.runs, ref, strict=True)]
                wins = sum(1 for d in diffs if d < 0)
                sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                half = 1.96 * sd / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
                parts.append(
                    f"{name} {_mean(diffs):+5.1f} min, 95 % CI [{_mean(diffs) - half:+.1f}, {_mean(diffs) + half:+.1f}]"
                    f" (lower on {wins}/{len(diffs)} seeds)"
                )
            lines.append(f"{policy:<10} vs lifetime, paired by seed: " + "; ".join(parts))
    lines.append("")
    services = [sv.id for sv in scenario.services]
    lines.append(f"{'mean wait':<10} " + " ".join(f"{sv:>9}" for sv in services) + f" {'util.':>7}")
    for policy, s in results.items():
        waits = [_mean(_mean(r.waits_min[sv]) for r in s.runs) for sv in services]
        util = _mean(_mean(r.utilisation.values()) for r in s.runs)
        lines.append(f"{policy:<10} " + " ".join(f"{w:9.1f}" for w in waits) + f" {util:7.2f}")
    lines.append(
        "minutes. Time in building = ticket issued → last stop done; ± = sd over seeds; lower bound = own service + "
        "walking, no waiting; unfinished = tickets still open when the day ends (left out of every figure); est. error = mean |the service's estimate at issue (as on the board) − actual wait for the "
        "first call|; ticket est. = the same for the ticket's own estimate (its place in line, in lifetime order); ×separate, ×bound = mean "
        "time in building ÷ the separate baseline's, ÷ the lower bound; util. = busy ÷ open time, mean over counters."
    )
    return "\n".join(lines)


def svg_chart(reports: list[tuple[Scenario, dict[str, Summary]]]) -> str:
    """A small bar chart (mean and p90 time in building per policy and
    scenario) as SVG text: no plotting library for one chart."""
    colours = {"separate": "#9aa5b1", "lifetime": "#5b8def", "madoguchi": "#e8833a"}
    width, bar, gap = 760, 26, 14
    rows = []
    y = 40
    top = max(
        _mean(pct(r.in_building_min, 90) for r in s.runs) for _, results in reports for s in results.values()
    ) or 1
    scale = (width - 260) / top
    for scenario, results in reports:
        rows.append(f'<text x="10" y="{y}" font-size="15" font-weight="bold">{scenario.name_ja} / {scenario.name}</text>')
        y += 12
        for metric, fn in (("mean", lambda r: _mean(r.in_building_min)), ("p90", lambda r: pct(r.in_building_min, 90))):
            for policy, s in results.items():
                value = _mean(fn(r) for r in s.runs)
                rows.append(f'<text x="10" y="{y + bar * 0.7:.0f}" font-size="12">{metric} · {policy}</text>')
                rows.append(f'<rect x="150" y="{y}" width="{value * scale:.1f}" height="{bar - 6}" fill="{colours.get(policy, "#888")}"/>')
                rows.append(f'<text x="{155 + value * scale:.1f}" y="{y + bar * 0.7:.0f}" font-size="12">{value:.1f} min</text>')
                y += bar
            y += gap
        y += gap
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" font-family="Noto Sans CJK JP, sans-serif">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="10" y="20" font-size="13">time in building (minutes), mean over seeds</text>'
    )
    return head + "".join(rows) + "</svg>\n"


def simulate_command(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a working day on the real queue engine and compare policies")
    p.add_argument("scenario", type=Path, nargs="+", help="scenario files (config/sim/*.toml)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--svg", type=Path, help="also write a bar chart of mean and p90 time in building here")
    p.set_defaults(func=_run)


def _run(args) -> int:
    # Thousands of simulated tickets: keep the engine's own INFO lines out.
    logging.getLogger("central").setLevel(logging.WARNING)
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policy {unknown}; choose from {POLICIES}")
        return 2
    seeds = range(args.seeds)
    reports = []
    for path in args.scenario:
        scenario = load_scenario(path)
        results = run_policies(scenario, policies, seeds)
        reports.append((scenario, results))
        print(table(scenario, results, seeds))
        print(flush=True)
    if args.svg:
        args.svg.write_text(svg_chart(reports), encoding="utf-8")
        print(f"chart: {args.svg}")
    return 0
