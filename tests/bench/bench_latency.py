"""Button press → display latency with 20 counters pressing at once, beside
the raw MQTT round-trip on the same broker, measured in the same run.

    .venv/bin/python -m tests.bench.bench_latency [--counters 20] [--rounds 15]

What is timed: from the moment the mock GPIO pin is driven low (the finger
on the button) to the moment the counter's display driver is told to show
the newly called number.  In between: debounce, the edge's loop, an MQTT
publish to the broker, central (validation, one SQLite transaction with
fsync, display command), the broker again, the edge's loop, the display.

The baseline is a raw MQTT round-trip (QoS 1 publish → an echo client →
QoS 1 publish back) between two paho clients on the same broker: the floor
for any press → central → display path, which crosses the broker twice.

Not part of the pass/fail suite.  The edges run in this process (one loop
and one MQTT thread each), so the figures include the contention of 20
daemons sharing one interpreter, which 20 Pis would not have.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from drivers.display import FakeDisplay
from tests.support.edges import RunningEdge, edge_config
from tests.support.procs import Broker, CentralProcess, central_toml, free_port


class TimedDisplay(FakeDisplay):
    """A FakeDisplay that notes when each screen was handed to it."""

    def __init__(self) -> None:
        super().__init__()
        self.shown_at: list[tuple[float, int | None]] = []

    def _render(self, screen) -> None:
        self.shown_at.append((time.perf_counter(), screen.number))
        super()._render(screen)


def bench_site(path: Path, counters: int) -> Path:
    lines = [
        '[site]\nid = "bench"\nname_ja = "ベンチ市役所"\nname_en = "Bench City Hall"\n',
        '[[services]]\nid = "shomei"\nname_ja = "証明書発行"\nname_en = "Certificates"\n',
        '[[procedures]]\nid = "juminhyo"\nname_ja = "住民票の写し"\nname_en = "Residence certificate"\nservices = ["shomei"]\n',
    ]
    for n in range(1, counters + 1):
        lines.append(f'[[counters]]\nid = "{n}"\nname_ja = "{n}番窓口"\nname_en = "Counter {n}"\nservices = ["shomei"]\n')
        lines.append(f'[[devices]]\nid = "counter-{n}"\nrole = "counter"\ncounter = "{n}"\n')
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def mqtt_round_trips(port: int, count: int) -> list[float]:
    """Sequential QoS 1 round-trips through an echo client, in ms."""
    got = threading.Event()

    def client(name):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", port)
        # the same socket option the daemons set (see edge/session.py)
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.loop_start()
        return c

    echo, probe = client("echo"), client("probe")
    echo.on_message = lambda c, u, m: c.publish("bench/pong", m.payload, qos=1)
    probe.on_message = lambda c, u, m: got.set()
    echo.subscribe("bench/ping", qos=1)
    probe.subscribe("bench/pong", qos=1)
    time.sleep(0.5)
    samples = []
    for i in range(count + 20):
        got.clear()
        t0 = time.perf_counter()
        probe.publish("bench/ping", b"x" * 200, qos=1)
        if not got.wait(5):
            raise TimeoutError("echo did not answer")
        if i >= 20:  # warm-up
            samples.append((time.perf_counter() - t0) * 1000)
    for c in (echo, probe):
        c.disconnect()
        c.loop_stop()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="madoguchi-bench-"))
    broker = Broker(work / "broker").start()
    http = free_port()
    site = bench_site(work / "site.toml", args.counters)
    central = CentralProcess(central_toml(work / "central", broker.port, http, site=site), http, work / "central.log")
    edges: list[RunningEdge] = []
    try:
        central.start()
        for n in range(1, args.counters + 1):
            edge = RunningEdge(edge_config(f"counter-{n}", str(n), broker.port, site="bench"))
            edge.display = edge.daemon._display = TimedDisplay()
            edges.append(edge.start())
        for edge in edges:
            edge.wait_connected(20)
        for _ in range(args.counters * args.rounds + args.counters):
            central.issue("juminhyo")

        latencies: list[float] = []
        for round_no in range(args.rounds):
            barrier = threading.Barrier(len(edges))
            starts: dict[str, float] = {}

            def press(edge: RunningEdge, barrier=barrier, starts=starts) -> None:
                barrier.wait()
                starts[edge.config.device.id] = time.perf_counter()
                edge.press("call_next", patient=False)

            for edge in edges:
                edge.display.shown_at.clear()
            threads = [threading.Thread(target=press, args=(e,)) for e in edges]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            deadline = time.monotonic() + 10
            for edge in edges:
                t0 = starts[edge.config.device.id]
                while True:
                    hits = [t for t, number in edge.display.shown_at if number is not None and t >= t0]
                    if hits:
                        latencies.append((hits[0] - t0) * 1000)
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{edge.config.device.id} showed no new number in round {round_no}")
                    time.sleep(0.002)
            time.sleep(edges[0].config.buttons.repeat_guard_ms / 1000 + 0.1)

        rtts = mqtt_round_trips(broker.port, 300)
    finally:
        for edge in edges:
            edge.stop()
        central.stop()
        broker.stop()

    press_p50, press_p99 = percentile(latencies, 50), percentile(latencies, 99)
    rtt_p50, rtt_p99 = percentile(rtts, 50), percentile(rtts, 99)
    print(f"button → display, {args.counters} counters pressing at once, {len(latencies)} presses:")
    print(f"  p50 {press_p50:7.2f} ms   p99 {press_p99:7.2f} ms   max {max(latencies):7.2f} ms   mean {statistics.mean(latencies):7.2f} ms")
    print(f"raw MQTT QoS 1 round-trip (echo client, same broker), {len(rtts)} samples:")
    print(f"  p50 {rtt_p50:7.2f} ms   p99 {rtt_p99:7.2f} ms   max {max(rtts):7.2f} ms")
    print(f"ratio button→display / raw round-trip:  p50 {press_p50 / rtt_p50:5.1f}×   p99 {press_p99 / rtt_p99:5.1f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
