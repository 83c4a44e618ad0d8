"""The device side of IT requests (edge/fleet.py): config files written
atomically with a rollback, secrets masked both ways, request ids remembered
on disk, the log ring bounded, and requests refused before anything runs.
The filesystem is real; a failing disk is os.replace raising, the lowest layer."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from datetime import timedelta

import pytest

from bus import decode, encode
from bus.configfile import digest, parse_toml
from bus.models import Request, Response, utcnow
from bus.topics import Topics
from drivers.display import FakeDisplay, Screen
from edge.config import EdgeConfig
from edge.fleet import (
    MASK,
    EdgeFleet,
    Refused,
    RingLog,
    SeenRequests,
    changed_keys,
    mask_secrets,
    unmask_secrets,
    write_config,
)
from edge.session import Received

T = Topics("midori")
CONFIG = """[device]
id = "counter-1"
site = "midori"
role = "counter"
counter = "1"
[mqtt]
username = "counter-1"
password = "pa55-word"   # the broker's
[terminal]
driver = "none"
password = "123456"
"""


def test_secrets_are_masked_and_a_masked_secret_keeps_the_current_one():
    shown = mask_secrets(CONFIG)
    assert "pa55-word" not in shown and "123456" not in shown and shown.count(MASK) == 2
    edited = shown.replace('counter = "1"', 'counter = "2"')
    back = unmask_secrets(edited, CONFIG)
    assert back == CONFIG.replace('counter = "1"', 'counter = "2"')
    # A new secret is written as is; a masked one the file never had is refused.
    assert "n3w" in unmask_secrets(shown.replace(f'password = "{MASK}"', 'password = "n3w"', 1), CONFIG)
    with pytest.raises(Refused, match=r"\[kiosk\] password"):
        unmask_secrets(CONFIG + f'[kiosk]\npassword = "{MASK}"\n', CONFIG)


def test_changed_keys_compare_validated_values():
    old = parse_toml(CONFIG.encode(), EdgeConfig)
    same = parse_toml((CONFIG + "# a comment\n[display]\ndriver = \"hdmi\"\n").encode(), EdgeConfig)
    assert changed_keys(old, same) == []  # "hdmi" is the default
    new = parse_toml(CONFIG.replace('"pa55-word"', '"other"').replace("[terminal]", "[display]\nport = 8111\n[terminal]").encode(),
                     EdgeConfig)
    assert changed_keys(old, new) == ["display.port", "mqtt.password"]


def test_write_config_keeps_the_previous_file_and_rolls_back_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG, encoding="utf-8")
    new = CONFIG.replace('counter = "1"', 'counter = "3"').encode()
    write_config(path, new, EdgeConfig)
    assert path.read_bytes() == new and (tmp_path / "edge.toml.bak").read_text() == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge.toml", "edge.toml.bak"]

    # The disk fails while the new file is renamed into place: the file stays as it was.
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        if str(dst) == str(path):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(Refused, match="No space left") as err:
        write_config(path, CONFIG.encode(), EdgeConfig)
    assert err.value.code == "write_failed"
    assert path.read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge.toml", "edge.toml.bak"]  # no temp file left


def test_write_config_keeps_the_file_mode_whatever_the_umask(tmp_path):
    # edge.toml holds the broker password: 0640, and a replacement must not
    # come out world-readable because the daemon's umask is 022.
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG, encoding="utf-8")
    path.chmod(0o640)
    old_umask = os.umask(0o022)
    try:
        write_config(path, CONFIG.replace('counter = "1"', 'counter = "3"').encode(), EdgeConfig)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "edge.toml.bak").stat().st_mode) == 0o640


def test_seen_request_ids_survive_a_reopen(tmp_path):
    now = utcnow()
    req = Request(request_id=uuid.uuid4(), requested_by="it", issued_at=now, expires_at=now + timedelta(seconds=30))
    seen = SeenRequests(tmp_path / "requests.db")
    assert seen.remember(req, "logs", now) is True
    assert seen.remember(req, "logs", now) is False
    seen.close()
    again = SeenRequests(tmp_path / "requests.db")
    try:
        assert again.remember(req, "restart", now) is False and again.count() == 1
    finally:
        again.close()


def test_the_log_ring_is_bounded():
    ring = RingLog(capacity=3)
    log = logging.getLogger("test.ring")
    log.addHandler(ring)
    try:
        for i in range(5):
            log.warning("line %d %s", i, "x" * 1000)
    finally:
        log.removeHandler(ring)
    assert len(ring.lines) == 3 and all(len(line) <= 300 for line in ring.lines)
    assert "line 4" in ring.last(1)[0] and "line 2" in ring.last(3)[0]


class Wire:
    """What the MQTT session would send (the transport, not our logic)."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def publish_raw(self, topic, payload, *, qos=1, retain=False, expiry_s=None, correlation=None):
        self.sent.append((topic, payload, correlation))
        return True


def request(method="identify", *, life_s=30, **params) -> tuple[Request, Received]:
    now = utcnow()
    req = Request(request_id=uuid.uuid4(), requested_by="it", issued_at=now, expires_at=now + timedelta(seconds=life_s),
                  params=params)
    return req, Received(T.req("counter-1", method), encode(req), T.res("counter-1", "it"), req.request_id.bytes)


def test_requests_on_the_loop(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG, encoding="utf-8")
    display = FakeDisplay()
    display.show(Screen(mode="serving", number=42, counter_ja="1番窓口"))
    wire = Wire()
    restarts = []
    blocker = ["payment p1 is at the terminal now"]
    fleet = EdgeFleet(device="counter-1", topics=T, seen=SeenRequests(tmp_path / "requests.db"), session=wire,
                      config_path=path, config=parse_toml(path.read_bytes(), EdgeConfig), display=display,
                      restart_blocker=lambda: blocker[0], restart=lambda: restarts.append(1))

    async def main():
        fleet.start(asyncio.get_running_loop())
        try:
            async def answer(msg) -> Response:
                before = len(wire.sent)
                assert fleet.on_message(msg)
                for _ in range(100):
                    if len(wire.sent) > before:
                        break
                    await asyncio.sleep(0.01)
                topic, payload, correlation = wire.sent[-1]
                assert topic == T.res("counter-1", "it") and correlation == msg.correlation
                return decode(Response, payload)

            # Identify flashes the display, then shows what was there.
            _, msg = request("identify", seconds=1)
            assert (await answer(msg)).status == "ok"
            assert display.current.text_ja == "この機器です"
            await asyncio.sleep(1.3)
            assert display.current.number == 42 and display.current.mode == "serving"

            # Not our topic, no response topic, a response topic elsewhere: nothing runs, nothing answers.
            assert not fleet.on_message(Received(T.cmd("counter-1", "display"), b"{}"))
            _, msg = request("restart", force=True)
            fleet.on_message(Received(msg.topic, msg.payload))
            fleet.on_message(Received(msg.topic, msg.payload, T.res("counter-2", "it"), msg.correlation))
            await asyncio.sleep(0.05)
            assert not wire.sent[2:] and not restarts
            assert fleet.stats["refused_no_response_topic"] == 1 and fleet.stats["refused_bad_response_topic"] == 1

            # Restart: refused while a payment runs, accepted with force, then the daemon is asked to exit.
            _, msg = request("restart")
            res = await answer(msg)
            assert res.code == "payment_in_progress" and "p1" in res.error
            _, msg = request("restart", force=True)
            res = await answer(msg)
            assert res.status == "ok" and res.data["forced"] is True and res.data["blocker"] == blocker[0]
            await asyncio.sleep(0.4)
            assert restarts == [1]

            # set-config: the file is the authority on what runs next; the running config is untouched.
            _, msg = request("set-config", config=mask_secrets(CONFIG).replace("[terminal]", "[display]\nport = 8111\n[terminal]"))
            res = await answer(msg)
            assert res.status == "ok" and res.data["changed"] == ["display.port"] and res.data["restart_needed"] is True
            assert "pa55-word" in path.read_text() and digest(path.read_bytes()) == res.data["config_hash"]
            _, msg = request("get-config")
            res = await answer(msg)
            assert "pa55-word" not in res.data["config"] and "port = 8111" in res.data["config"]
        finally:
            fleet.close()

    asyncio.run(main())


LOBBY = """[device]
id = "counter-1"
site = "midori"
role = "counter"
counter = "1"
[mqtt]
host = "broker.local"
password = "REAL-broker-pa55"
[terminal]
driver = "none"
password = "482913"
"""


def test_set_config_cannot_be_used_to_read_or_misdirect_a_secret(tmp_path):
    """The security review's attacks on the mask (each must be refused, and
    the file on disk must stay as it was)."""
    path = tmp_path / "edge.toml"
    path.write_text(LOBBY, encoding="utf-8")
    wire = Wire()
    fleet = EdgeFleet(device="counter-1", topics=T, seen=SeenRequests(tmp_path / "requests.db"), session=wire,
                      config_path=path, config=parse_toml(path.read_bytes(), EdgeConfig))
    shown = mask_secrets(LOBBY)

    async def main():
        fleet.start(asyncio.get_running_loop())
        try:
            async def ask(method, **params) -> Response:
                before = len(wire.sent)
                _, msg = request(method, **params)
                assert fleet.on_message(msg)
                for _ in range(200):
                    if len(wire.sent) > before:
                        break
                    await asyncio.sleep(0.01)
                return decode(Response, wire.sent[-1][1])

            # (a) A masked line moved into another value: unmasking would put
            # the real password into the printer's host name (logged, in health).
            smuggle = shown.replace('[terminal]', '[printer]\ndriver = "network"\nhost = """x\n[mqtt]\n'
                                                  f'password = "{MASK}"\n"""\n[terminal]')
            res = await ask("set-config", config=smuggle)
            assert (res.status, res.code) == ("error", "invalid_config"), res

            # (b) The lobby's player is a command: never set from afar.
            res = await ask("set-config", config=shown + '[voice]\nplayer = ["sh", "-c", "cat /etc/shadow", "{wav}"]\n')
            assert (res.status, res.code) == ("error", "local_only") and "voice.player" in res.error, res
            res = await ask("set-config", config=shown + '[payments]\njournal = "/tmp/elsewhere.db"\n')
            assert res.code == "local_only", res

            # (c) Another broker while the password stays masked: refused; in clear it is IT's own choice.
            res = await ask("set-config", config=shown.replace('host = "broker.local"', 'host = "rogue.example.net"'))
            assert (res.status, res.code) == ("error", "secret_destination_changed") and "mqtt.host" in res.error, res
            assert path.read_text() == LOBBY

            # (d) No oracle: a guess of the terminal password is "changed" whether right or wrong.
            for guess in ("111111", "482913"):
                res = await ask("set-config", config=shown.replace(f'password = "{MASK}"\n', f'password = "{guess}"\n', 2)
                                .replace(f'password = "{guess}"\n', f'password = "{MASK}"\n', 1))
                assert res.status == "ok" and "terminal.password" in res.data["changed"], res
            path.write_text(LOBBY, encoding="utf-8")

            # A TLS file that is not a certificate would cut the Pi off the bus after the restart.
            bad = tmp_path / "ca.crt"
            bad.write_text("not a certificate\n")
            path.write_text(LOBBY + f'[mqtt.tls]\nca_file = "{bad}"\n', encoding="utf-8")  # as if set on the Pi
            fleet.config = parse_toml(path.read_bytes(), EdgeConfig)
            res = await ask("set-config", config=mask_secrets(path.read_text()).replace('counter = "1"\n', 'counter = "1"\ncounter_name_ja = "1番"\n'))
            assert (res.status, res.code) == ("error", "invalid_config") and "mqtt.tls" in res.error, res
            path.write_text(LOBBY, encoding="utf-8")
            fleet.config = parse_toml(path.read_bytes(), EdgeConfig)

            # (e) A secret written where the line mask cannot see it is never sent.
            for form in ('[mqtt]\npassword = """\nREAL-broker-pa55"""\n', '[mqtt]\npassword = \'\'\'\nREAL-broker-pa55\'\'\'\n',
                         'mqtt = { password = "REAL-broker-pa55" }\n', 'mqtt.password = "REAL-broker-pa55"\n',
                         '[mqtt]\n"password" = "REAL-broker-pa55"\n'):
                text = form + '[device]\nid = "counter-1"\nsite = "midori"\nrole = "counter"\ncounter = "1"\n'
                parse_toml(text.encode(), EdgeConfig)  # the daemon would run with it
                path.write_text(text, encoding="utf-8")
                res = await ask("get-config")
                assert (res.status, res.code) == ("error", "unmaskable"), (form, res)
                assert "REAL-broker-pa55" not in encode(res).decode()
            path.write_text(LOBBY, encoding="utf-8")
            res = await ask("get-config")
            assert res.status == "ok" and "REAL-broker-pa55" not in res.data["config"] and "482913" not in res.data["config"]
        finally:
            fleet.close()

    asyncio.run(main())
