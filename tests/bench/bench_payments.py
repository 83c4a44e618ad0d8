"""How long a payment takes through madoguchi, beside what it cannot beat.

    .venv/bin/python -m tests.bench.bench_payments [--payments 60]

Timed, one payment at a time on one counter (a counter takes one visitor at
a time), from the console's POST of the charge (start at once) to the moment
central's ledger shows it approved:

* cash: HTTP → central (catalog, SQLite) → MQTT → the edge journals ready
  and approved (two fsyncs) → event → central's ledger → ack;
* card: the same plus a ZVT sale on a pty against the terminal simulator
  (status enquiry, authorisation, intermediate status, status information,
  completion — each frame ACKed), no card wait.

Baselines measured in the same run: an HTTP GET of central's /healthz, a raw
MQTT QoS 1 round-trip on the same broker, and a ZVT sale straight from the
driver to the simulator (no madoguchi around it).  Not part of the pass/fail
suite; the edge runs in this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from drivers.terminal.sim import SimTerminal
from drivers.terminal.zvt import ZvtTerminal
from tests.bench.bench_latency import mqtt_round_trips, percentile
from tests.support.edges import RunningEdge, edge_config
from tests.support.procs import Broker, CentralProcess, central_toml, free_port

#: Headers of every request: the test central's counter account token (docs/security.md "Web login").
AUTH: dict[str, str] = {}


def http(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def pay(central: str, method: str) -> float:
    body = {"lines": [{"code": "juminhyo", "quantity": 1}], "method": method, "start": True,
            "payment_id": str(uuid.uuid4())}
    if method == "cash":
        body["tendered"] = 1000
    else:
        body["brand"] = "visa"
    started = time.perf_counter()
    pid = http("POST", f"{central}/api/v1/counters/1/charges", body)["payment_id"]
    while True:
        state = http("GET", f"{central}/api/v1/payments/{pid}")["state"]
        if state == "approved":
            return time.perf_counter() - started
        if state in ("declined", "unknown"):
            raise RuntimeError(f"payment {pid} ended {state}")
        time.sleep(0.002)


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{name:<38} n={len(ms):<4} p50 {statistics.median(ms):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=60, help="payments per method")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="madoguchi-bench-pay-"))
    broker = Broker(work / "broker").start()
    sim = SimTerminal(link=work / "ttyPT", card_wait_s=0.0)
    central = edge = None
    try:
        http_port = free_port()
        central = CentralProcess(central_toml(work / "central", broker.port, http_port), http_port, work / "central.log").start()
        url = central.url
        AUTH["Authorization"] = f"Bearer {central.token('counter')}"
        edge = RunningEdge(edge_config(
            "counter-1", "1", broker.port,
            extra=f'[terminal]\ndriver = "zvt"\nport = "{sim.link}"\n[payments]\njournal = "{work / "journal.db"}"\n',
        )).start().wait_connected()

        healthz = []
        for _ in range(args.payments):
            t = time.perf_counter()
            http("GET", f"{url}/healthz")
            healthz.append(time.perf_counter() - t)
        rtt = [ms / 1000 for ms in mqtt_round_trips(broker.port, args.payments)]
        cash = [pay(url, "cash") for _ in range(args.payments)]
        card = [pay(url, "credit") for _ in range(args.payments)]
        # The terminal alone: the driver straight to the simulator, no madoguchi.
        sim2 = SimTerminal(link=work / "ttyPT2", card_wait_s=0.0)
        with ZvtTerminal(str(sim2.link)) as direct:
            bare = []
            for _ in range(args.payments):
                t = time.perf_counter()
                direct.sale(300)
                bare.append(time.perf_counter() - t)
        sim2.close()
        print(f"madoguchi payments, {args.payments} per method, one counter, sequential\n")
        print(summary("baseline: HTTP GET /healthz", healthz))
        print(summary("baseline: raw MQTT QoS 1 round-trip", rtt))
        print(summary("baseline: ZVT sale, driver → simulator", bare))
        print(summary("cash: charge POST → approved in ledger", cash))
        print(summary("card: charge POST → approved in ledger", card))
        return 0
    finally:
        if edge is not None:
            edge.stop()
        if central is not None:
            central.stop()
        sim.close()
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
