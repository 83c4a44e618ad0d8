"""Offline-first and never-late: what a counter does when the broker or
central is not there, and what it must never do (replay a press later)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from bus import decode
from bus.models import Status
from bus.topics import Topics
from tests.support.edges import RunningEdge, edge_config
from tests.support.procs import REPO, Broker, free_port

T = Topics("midori")


class Watcher:
    """Subscribes to a topic and keeps every payload (retained ones too)."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_status(self, state: str, boot_id: str | None = None, timeout: float = 10.0) -> Status:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for payload, _ in self.messages[seen:]:
                    status = decode(Status, payload)
                    if status.state.value == state and (boot_id is None or status.boot_id == boot_id):
                        return status
                seen = len(self.messages)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {state} status within {timeout} s: {self.messages[-3:]}")
                self._cond.wait(remaining)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_press_central_does_not_answer_is_dropped_and_never_replayed(central_factory, edges):
    central = central_factory()
    counter = edges("counter-1", "1")
    number = central.issue("juminhyo")["number"]

    central.kill(signal.SIGSTOP)  # central hangs (not gone: the broker still holds its session)
    try:
        started = time.monotonic()
        counter.press("call_next")
        screen = counter.display.wait_for(lambda s: s.text_ja.startswith("届きませんでした"), timeout=10)
        waited = time.monotonic() - started
        assert screen.number is None  # nobody was called
        assert 3.0 <= waited < 6.0, waited
    finally:
        central.kill(signal.SIGCONT)
    # Central now reads the press it missed: too late, so it must not call anyone.
    deadline = time.monotonic() + 5
    while central.get("/api/v1/stats")["rejected"].get("expired", 0) < 1:
        assert time.monotonic() < deadline, central.get("/api/v1/stats")
        time.sleep(0.05)
    assert central.get(f"/api/v1/tickets/{number}")["stops"][0]["state"] == "waiting"
    assert central.get("/api/v1/counters/1")["ticket"] is None
    # A fresh press works.
    counter.press("call_next")
    counter.shows(number, mode="calling")


def test_with_central_offline_a_press_is_refused_at_once(central_factory, edges):
    central = central_factory()
    counter = edges("counter-1", "1")
    central.stop()  # clean stop: central says "offline" on the bus
    counter.wait(lambda: not counter.daemon.role.central_online, 5, "told central is offline")
    sent = counter.daemon.role.stats["sent"]
    counter.press("call_next")
    screen = counter.display.wait_for(lambda s: s.text_ja.startswith("センターに接続できません"), timeout=2)
    assert screen.text_en.startswith("Not connected")
    assert counter.daemon.role.stats["sent"] == sent  # nothing went out


def test_starts_without_a_broker_then_catches_up_and_rebirths_after_broker_restart(tmp_path):
    port = free_port()
    edge = RunningEdge(edge_config("counter-1", "1", port)).start()
    broker = Broker(tmp_path / "late", port=port)
    watcher = None
    try:
        # Works (and says so) with no broker at all.
        edge.display.wait_for(lambda s: s.text_ja.startswith("接続しています"), timeout=3)
        time.sleep(1.0)
        assert not edge.daemon.session.connected
        broker.start()
        watcher = Watcher(port, T.status("counter-1"))
        first = watcher.wait_status("online", edge.daemon.boot_id, timeout=10)
        # The broker restarts and forgets every retained message: the device
        # publishes its birth again by itself.
        broker.stop()
        watcher.clear()
        broker.start()
        again = watcher.wait_status("online", edge.daemon.boot_id, timeout=15)
        assert again.since >= first.since
        assert edge.daemon.session.connects >= 2
    finally:
        edge.stop()
        if watcher:
            watcher.close()
        broker.stop()


def test_kill_9_of_an_edge_leaves_its_will_and_central_sees_it_offline(central_factory, broker, tmp_path):
    central = central_factory()
    config = tmp_path / "edge.toml"
    config.write_text(
        '[device]\nid = "counter-2"\nsite = "midori"\nrole = "counter"\ncounter = "2"\n'
        f"[mqtt]\nport = {broker.port}\nkeepalive_s = 5\n"
        '[buttons]\ndriver = "mock"\n[display]\ndriver = "log"\n'
    )
    log = open(tmp_path / "edge.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bus.cli", "edge", "--config", str(config)], stdout=log, stderr=log, cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while central.get("/api/v1/stats")["devices"]["counter-2"]["state"] != "online":
            assert time.monotonic() < deadline, (tmp_path / "edge.log").read_text()
            time.sleep(0.05)
        boot = central.get("/api/v1/stats")["devices"]["counter-2"]["boot_id"]
        proc.kill()
        proc.wait()
        # The broker sends the will after 1.5 × keep-alive (7.5 s here).
        deadline = time.monotonic() + 15
        while central.get("/api/v1/stats")["devices"]["counter-2"]["state"] != "offline":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert central.get("/api/v1/stats")["devices"]["counter-2"]["boot_id"] == boot
    finally:
        if proc.poll() is None:
            proc.kill()
