"""The lobby role end to end: a real Mosquitto, a real central process, the
lobby edge daemon as a real process making real speech (Open JTalk,
espeak-ng, SoX), played by the recording fake loudspeaker
(``python -m drivers.voice.record``, which takes as long as each WAV lasts,
here at 8× speed) because this machine has no sound card.

Checks what a visitor would hear: two calls in quick succession are two
announcements, in the order of the calls, never overlapping; a recall is
announced again; calls made before the lobby started, and the retained board
delivered again on a reconnect, are not announced; a bad board is refused and
the next call is still announced; health says so.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import wave
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from drivers.voice import DEFAULT_DICTIONARY, DEFAULT_VOICE
from drivers.voice.record import plays
from tests.support.procs import REPO, EdgeProcess, wait_for

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not (all(shutil.which(p) for p in ("open_jtalk", "espeak-ng", "sox")) and DEFAULT_VOICE.is_file()
             and (DEFAULT_DICTIONARY / "sys.dic").is_file()),
        reason="open-jtalk + voice, espeak-ng, sox: ./dev test installs them"),
]

SPEED = 8  # the fake loudspeaker plays 8× faster than real time
ANNOUNCED = re.compile(r"announcing (\d+) → (\S+?)( \(再呼出\))? \(")


class LobbyProcess(EdgeProcess):
    """``madoguchi edge`` with role "lobby" and the recording loudspeaker."""

    def __init__(self, workdir: Path, broker_port: int) -> None:
        super().__init__(workdir, "lobby-1", "", broker_port)
        self.recordings = workdir / "speaker"

    def start(self, *, crashpoint: str | None = None) -> LobbyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        player = json.dumps([sys.executable, "-m", "drivers.voice.record", "--dir", str(self.recordings),
                             "--speed", str(SPEED), "{wav}"])
        self.config.write_text(
            f'[device]\nid = "{self.device}"\nsite = "midori"\nrole = "lobby"\n'
            f"[mqtt]\nport = {self.broker_port}\nkeepalive_s = 5\nreconnect_cap_s = 1\n"
            f"[voice]\nplayer = {player}\nmax_queue = 5\n"
            f'[payments]\njournal = "{self.workdir / "journal.db"}"\n',  # the state folder (IT request ids)
            encoding="utf-8",
        )
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process, as EdgeProcess
        self.proc = subprocess.Popen([sys.executable, "-m", "bus.cli", "edge", "--config", str(self.config)],
                                     stdout=self.log, stderr=self.log, cwd=REPO, env=dict(os.environ))
        return self

    def announced(self) -> list[tuple[int, str, bool]]:
        return [(int(m[1]), m[2], bool(m[3])) for m in ANNOUNCED.finditer(self.log_text())]

    def plays(self) -> list[dict]:
        return sorted(plays(self.recordings), key=lambda p: p["start"])

    def baselines(self) -> int:
        return self.log_text().count("board on (re)connect")


class Watcher:
    """A plain MQTT client: the lobby's retained info/health, and a way to
    publish what a broken or hostile client might."""

    def __init__(self, port: int) -> None:
        self.messages: dict[str, dict] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"it-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.messages.__setitem__(msg.topic, json.loads(msg.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("madoguchi/v1/midori/device/lobby-1/+", qos=1)
        self.client.loop_start()

    def health(self) -> dict | None:
        return self.messages.get("madoguchi/v1/midori/device/lobby-1/health")

    def info(self) -> dict | None:
        return self.messages.get("madoguchi/v1/midori/device/lobby-1/info")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def lobby(tmp_path, broker):
    proc = LobbyProcess(tmp_path / "lobby", broker.port)
    yield proc
    proc.stop()


def take_over_client_id(port: int, client_id: str) -> None:
    """Connect with the lobby's client id: the broker drops the lobby's
    connection (session take-over) and the lobby reconnects by itself."""
    intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    intruder.connect("127.0.0.1", port)
    for _ in range(6):  # no loop_start(): paho would reconnect it and play ping-pong with the lobby
        intruder.loop(0.05)
    intruder.disconnect()


def test_each_call_is_announced_once_in_order_without_overlap(central_factory, broker, lobby):
    central = central_factory()
    early = central.issue("jidoteate")["number"]  # 児童手当: counter 3
    first = central.issue("tennyu")["number"]  # 住民異動: counter 1
    second = central.issue("kokuho-kanyu")["number"]  # 国保: counter 2
    third = central.issue("juminhyo")["number"]  # 証明書: counter 1 or 3
    assert central.post("/api/v1/counters/3/call-next")["ticket"] == early  # before the lobby runs

    lobby.start()
    watcher = Watcher(broker.port)
    try:
        wait_for(lambda: lobby.baselines() == 1, timeout=15, what="the lobby's first board")
        # Two counters call within a few milliseconds.
        assert central.post("/api/v1/counters/1/call-next")["ticket"] == first
        assert central.post("/api/v1/counters/2/call-next")["ticket"] == second
        wait_for(lambda: len(lobby.plays()) == 2, timeout=20, what="two announcements played")
        assert lobby.announced() == [(first, "1番窓口", False), (second, "2番窓口", False)]

        # 再呼出: the same ticket, announced again (with 再度お呼び出しいたします).
        central.post("/api/v1/counters/1/recall")
        wait_for(lambda: len(lobby.plays()) == 3, timeout=20, what="the recall played")
        assert lobby.announced()[2] == (first, "1番窓口", True)

        # A reconnect brings the retained board (four calls) again: nothing is announced.
        take_over_client_id(broker.port, "lobby-1")
        wait_for(lambda: lobby.baselines() >= 2, timeout=15, what="the board after the reconnect")

        # A broken board is refused; the lobby goes on.
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"it-{uuid.uuid4().hex[:6]}",
                          protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("madoguchi/v1/midori/lobby/board", b'{"schema": 1, "calls": "<script>"}', qos=1).wait_for_publish(5)
        pub.publish("madoguchi/v1/midori/lobby/board", b"\xff\xfe not json", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        wait_for(lambda: lobby.log_text().count("rejected lobby board") == 2, what="both bad boards refused")
        assert central.post("/api/v1/counters/1/call-next")["ticket"] == third
        wait_for(lambda: len(lobby.plays()) == 4, timeout=20, what="the next call played")
        time.sleep(0.5)  # anything wrongly queued would have started by now

        played = lobby.plays()
        assert len(played) == 4
        assert lobby.announced() == [(first, "1番窓口", False), (second, "2番窓口", False),
                                     (first, "1番窓口", True), (third, "1番窓口", False)]
        assert early not in [t for t, _, _ in lobby.announced()]  # called before the lobby started
        for before, after in itertools.pairwise(played):
            assert after["start"] >= before["end"], (before, after)  # never two at once
        for p in played:
            with wave.open(str(lobby.recordings / p["wav"]), "rb") as w:
                assert (w.getframerate(), w.getnchannels()) == (48_000, 1)
            assert p["duration_s"] > 8  # chime + Japanese + English
            assert p["end"] - p["start"] >= p["duration_s"] / SPEED - 0.05  # it took its time
        assert played[2]["duration_s"] > played[0]["duration_s"]  # the recall's extra sentence

        def health_says_played_4():
            h = watcher.health()
            return h and h["peripherals"]["voice"]["message"] == "queue 0/5, played 4" and h
        health = wait_for(health_says_played_4, what="health with four played")
        assert health["peripherals"]["voice"]["status"] == "ok"
        assert watcher.info()["role"] == "lobby"

        # IT steers the lobby like any Pi (edge/fleet.py): its config, its
        # identify (nothing to flash here: refused with a reason), a restart.
        status, answer = central.request("POST", "/api/v1/fleet/devices/lobby-1/requests/get-config", {"params": {}})
        assert status == 200 and answer["status"] == "ok", answer
        assert 'role = "lobby"' in answer["data"]["config"] and not answer["data"]["restart_pending"]
        status, answer = central.request("POST", "/api/v1/fleet/devices/lobby-1/requests/identify", {"params": {}})
        assert status == 200 and (answer["status"], answer["code"]) == ("error", "not_supported"), answer
        status, answer = central.request("POST", "/api/v1/fleet/devices/lobby-1/requests/restart", {"params": {}})
        assert status == 200 and answer["status"] == "ok", answer
        assert lobby.proc.wait(15) == 75, lobby.log_text()[-2000:]  # EXIT_RESTART: systemd starts it again
    finally:
        watcher.close()
