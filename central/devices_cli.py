"""``madoguchi devices``: IT's view of the fleet straight from the broker
(no central needed) and requests to one device.  docs/fleet.md.

    madoguchi devices [--broker H] [--port N] [--username U] [--password-file F] [--ca CA]
                      [--site S] [--config devices.toml] list | show ID | request ID METHOD [key=value ...]

``list`` and ``show`` read the retained ``status``/``info``/``health`` of
every device; ``request`` sends an MQTT v5 request (ResponseTopic
``device/<ID>/res/<requester>``, CorrelationData = the request id) and prints
the device's answer.  Central audits it too (it sees every request and answer).

Exit codes: 0 done (the device said ok); 1 the device refused or failed
(``code`` and ``error`` are printed); 2 bad usage or parameters; 3 no answer
within ``--timeout``; 4 no such device on the broker; 69 the broker cannot
be reached or refused the login; 78 a bad ``--config`` file.

This module imports only bus and paho: it runs on an IT admin's PC.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import threading
import time
import tomllib
import unicodedata
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bus import PayloadError, decode, encode
from bus.models import (
    MAX_REQUEST_BYTES,
    Health,
    Info,
    Request,
    Response,
    Status,
    utcnow,
)
from bus.topics import ID_PATTERN, TopicError, Topics, parse

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_UNAVAILABLE, EXIT_CONFIG = 69, 78
#: How long a request lives (its expiry) beyond the CLI's own timeout.
REQUEST_LIFE_S = 60
#: ``list`` waits for the retained messages until the broker has been quiet this long.
QUIET_S = 0.4

CONFIG_KEYS = {"broker", "port", "username", "password_file", "ca", "site", "timeout", "requested_by"}
STATE_JA = {"online": "オンライン", "offline": "オフライン", "unknown": "不明"}


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def devices_command(sub) -> None:
    p = sub.add_parser("devices", help="IT: devices online/offline, health, and requests to a device (docs/fleet.md)",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes: 0 ok, 1 refused by the device, 2 usage, 3 no answer, 4 no such device, "
                              "69 broker unreachable / login refused, 78 bad --config")
    p.add_argument("--config", type=Path, help="a TOML file with broker, port, username, password_file, ca, site")
    p.add_argument("--broker", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="broker port (default 1883, 8883 with --ca)")
    p.add_argument("--username", help="your MQTT user (an IT admin account)")
    p.add_argument("--password-file", type=Path, help="a file holding the MQTT password (never on the command line)")
    p.add_argument("--ca", type=Path, help="CA certificate: connect with TLS and verify the broker")
    p.add_argument("--site", help="site id (the topic root madoguchi/v1/<site>/)")
    p.add_argument("--timeout", type=float, help="seconds to wait for an answer (default 10)")
    p.add_argument("--as", dest="requested_by", help="the name recorded as requested_by (default: --username or your login)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables/text")
    dsub = p.add_subparsers(dest="devices_cmd", metavar="ACTION", required=True)
    lst = dsub.add_parser("list", help="every device: online/offline, role, counter, version, IP, health")
    lst.set_defaults(func=_wrap(_list))
    show = dsub.add_parser("show", help="one device in full")
    show.add_argument("device")
    show.set_defaults(func=_wrap(_show))
    req = dsub.add_parser("request", help="send a request and print the answer, e.g. request counter-1 logs lines=20")
    req.add_argument("device")
    req.add_argument("method", help="get-config, set-config, restart, status-ticket, identify, logs")
    req.add_argument("params", nargs="*", metavar="key=value",
                     help="true/false, numbers and text; key=@FILE reads the value from FILE (set-config config=@edge.toml)")
    req.set_defaults(func=_wrap(_request))


def _wrap(fn):
    """A CliError becomes its message on stderr and its exit code."""
    def run(args) -> int:
        try:
            return fn(args)
        except CliError as exc:
            print(str(exc), file=sys.stderr)
            return exc.code
    return run


# ------------------------------------------------------------------ settings


def _settings(args) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.config is not None:
        try:
            cfg = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CliError(EXIT_CONFIG, f"{args.config}: {exc}") from None
        unknown = set(cfg) - CONFIG_KEYS
        if unknown:
            raise CliError(EXIT_CONFIG, f"{args.config}: unknown key(s) {', '.join(sorted(unknown))} "
                                        f"(known: {', '.join(sorted(CONFIG_KEYS))})")
    merged = {k: cfg.get(k) for k in CONFIG_KEYS}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    if not merged["site"]:
        raise CliError(EXIT_USAGE, "サイトを指定してください / give --site (or site in --config)")
    try:
        Topics(str(merged["site"]))
    except TopicError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    merged["broker"] = merged["broker"] or "127.0.0.1"
    merged["port"] = int(merged["port"] or (8883 if merged["ca"] else 1883))
    merged["timeout"] = float(merged["timeout"] or 10.0)
    password = None
    if merged["password_file"]:
        try:
            password = Path(merged["password_file"]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(EXIT_CONFIG, f"password file: {exc}") from None
    merged["password"] = password
    return merged


class Bus:
    """One paho connection (MQTT v5) for the CLI; messages collected in a list."""

    def __init__(self, s: dict[str, Any]) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.topics = Topics(s["site"])
        username = s["username"]
        # Unique per run: two IT admins (or two terminals of one) must not
        # take each other's session over (admins have no fixed client id).
        client_id = f"{username or 'it-cli'}-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, s["password"])
        if s["ca"]:
            self.client.tls_set(ca_certs=str(s["ca"]))
        self.messages: list[Any] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self.last_at = time.monotonic()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        try:
            self.client.connect(s["broker"], s["port"], keepalive=30, clean_start=True)
        except OSError as exc:
            raise CliError(EXIT_UNAVAILABLE, f"ブローカーに接続できません / cannot reach the broker "
                                             f"{s['broker']}:{s['port']}: {exc}") from None
        self.client.loop_start()
        if not self._connected.wait(10) or self._refused:
            self.close()
            raise CliError(EXIT_UNAVAILABLE, f"ブローカーが接続を拒否しました / the broker refused the login: "
                                             f"{self._refused or 'no answer'}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(msg)
            self.last_at = time.monotonic()

    def subscribe(self, *filters: str) -> None:
        self._subscribed.clear()
        self.client.subscribe([(f, 1) for f in filters])
        if not self._subscribed.wait(10):
            raise CliError(EXIT_UNAVAILABLE, "the broker did not confirm the subscription")
        self.last_at = time.monotonic()

    def wait_quiet(self, quiet: float = QUIET_S, limit: float = 3.0) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end and time.monotonic() - self.last_at < quiet:
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


# ------------------------------------------------------------------ list / show


def collect(bus: Bus) -> dict[str, dict[str, Any]]:
    """device → {"status", "info", "health"} from the retained messages."""
    t = bus.topics
    bus.subscribe(t.all_devices("status"), t.all_devices("info"), t.all_devices("health"))
    bus.wait_quiet()
    models = {"status": Status, "info": Info, "health": Health}
    devices: dict[str, dict[str, Any]] = {}
    with bus._lock:
        messages = list(bus.messages)
    for msg in messages:
        try:
            parts = parse(msg.topic)
        except TopicError:
            continue
        model = models.get(parts.channel)
        if model is None or parts.device is None:
            continue
        try:
            devices.setdefault(parts.device, {})[parts.channel] = decode(model, bytes(msg.payload))
        except PayloadError as exc:
            print(f"warning: {msg.topic}: {exc}", file=sys.stderr)
    return devices


def summary(device: str, d: dict[str, Any]) -> dict[str, Any]:
    status, info, health = d.get("status"), d.get("info"), d.get("health")
    problems = []
    if health is not None:
        problems = [f"{name}:{p.reason or p.status.value}" for name, p in health.peripherals.items()
                    if p.status.value in ("warning", "error")]
    return {
        "device": device,
        "state": status.state.value if status else "unknown",
        "role": info.role.value if info else None,
        "counter": info.counter if info else None,
        "version": info.version if info else None,
        "ip": info.ip if info else None,
        "config_hash": info.config_hash if info else None,
        "uptime_s": health.uptime_s if health else None,
        "last_report": (health.ts if health else status.since if status else None),
        "health": ", ".join(problems) if problems else ("ok" if health else None),
    }


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def table(rows: list[list[str]]) -> str:
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(_pad(c, w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _local(at: datetime | None) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _list(args) -> int:
    s = _settings(args)
    bus = Bus(s)
    try:
        devices = collect(bus)
    finally:
        bus.close()
    rows = [summary(d, devices[d]) for d in sorted(devices)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, default=str, indent=1))
        return EXIT_OK
    header = [["機器 Device", "状態 State", "役割 Role", "窓口 Counter", "版 Version", "IP", "最終報告 Last report",
               "健康 Health"]]
    body = [[r["device"], f"{STATE_JA.get(r['state'], r['state'])} {r['state']}", r["role"] or "-", r["counter"] or "-",
             r["version"] or "-", r["ip"] or "-", _local(r["last_report"]), r["health"] or "-"] for r in rows]
    print(table(header + body))
    online = sum(r["state"] == "online" for r in rows)
    print(f"\n{len(rows)} 台（オンライン {online}） / {len(rows)} device(s), {online} online")
    return EXIT_OK


def _show(args) -> int:
    s = _settings(args)
    bus = Bus(s)
    try:
        devices = collect(bus)
    finally:
        bus.close()
    d = devices.get(args.device)
    if d is None:
        print(f"機器 {args.device} はブローカーにありません / no device {args.device!r} on the broker", file=sys.stderr)
        return EXIT_NOT_FOUND
    out = {k: v.model_dump(mode="json", by_alias=True) for k, v in d.items()}
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return EXIT_OK
    r = summary(args.device, d)
    lines = [f"{label}: {value}" for label, value in (
        ("機器 Device", r["device"]), ("状態 State", f"{STATE_JA.get(r['state'], r['state'])} {r['state']}"
                                        + (f" since {_local(d['status'].since)}" if d.get("status") and d["status"].since else "")),
        ("役割 Role", r["role"] or "-"), ("窓口 Counter", r["counter"] or "-"), ("版 Version", r["version"] or "-"),
        ("設定 Config", r["config_hash"] or "-"), ("IP", r["ip"] or "-"),
        ("稼働 Uptime", f"{r['uptime_s']:.0f} s" if r["uptime_s"] is not None else "-"),
        ("最終報告 Last report", _local(r["last_report"])))]
    if d.get("health"):
        lines.append("周辺機器 Peripherals:")
        drivers = d["info"].peripherals if d.get("info") else {}
        for name, p in d["health"].peripherals.items():
            drv = f" ({drivers[name].driver})" if name in drivers else ""
            lines.append(f"  {name}{drv}: {p.status.value}{' ' + p.reason if p.reason else ''}{' — ' + p.message if p.message else ''}")
    print("\n".join(lines))
    return EXIT_OK


# ------------------------------------------------------------------ request


def parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", key):
            raise CliError(EXIT_USAGE, f"parameter {item[:40]!r}: write key=value (key: lower-case letters, digits, _)")
        if value.startswith("@"):
            try:
                params[key] = Path(value[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(EXIT_USAGE, f"parameter {key}: {exc}") from None
        elif value in ("true", "false"):
            params[key] = value == "true"
        elif value == "null":
            params[key] = None
        elif re.fullmatch(r"-?\d{1,15}", value):
            params[key] = int(value)
        elif re.fullmatch(r"-?\d+\.\d+", value):
            params[key] = float(value)
        else:
            params[key] = value
    return params


def _requester_level(name: str) -> str:
    """A topic level for the response topic from the requester's name."""
    level = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:32] or "it"
    return level if re.fullmatch(ID_PATTERN, level) else "it"


def _request(args) -> int:
    s = _settings(args)
    try:
        Topics(s["site"]).req(args.device, args.method)
    except TopicError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    params = parse_params(args.params)
    who = s["requested_by"] or s["username"] or getpass.getuser()
    now = utcnow()
    try:
        req = Request(request_id=uuid.uuid4(), requested_by=str(who)[:64], issued_at=now,
                      expires_at=now + timedelta(seconds=min(REQUEST_LIFE_S, max(5, s["timeout"]))), params=params)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"parameters: {exc}") from None
    payload = encode(req)
    if len(payload) > MAX_REQUEST_BYTES:
        raise CliError(EXIT_USAGE, f"the request is {len(payload)} bytes; a device reads at most {MAX_REQUEST_BYTES}")
    bus = Bus(s)
    try:
        res = send_and_wait(bus, args.device, args.method, payload, req.request_id, _requester_level(str(who)), s["timeout"])
    finally:
        bus.close()
    if res is None:
        print(f"{args.device} から {s['timeout']:.0f} 秒以内に応答がありません / no answer from {args.device} "
              f"within {s['timeout']:.0f} s (offline? see `madoguchi devices list`)", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        print(res.model_dump_json(by_alias=True, indent=1))
    elif res.status == "ok":
        data = res.data or {}
        if args.method == "logs" and isinstance(data.get("lines"), list):
            print("\n".join(str(line) for line in data["lines"]))
        elif args.method == "get-config" and isinstance(data.get("config"), str):
            print(f"# {data.get('path')} ({data.get('file_hash')})")
            print(data["config"], end="")
        else:
            print(json.dumps(data, ensure_ascii=False, indent=1))
    else:
        print(f"拒否 / refused: {res.code}: {res.error}", file=sys.stderr)
    return EXIT_OK if res.status == "ok" else EXIT_REFUSED


def send_and_wait(bus: Bus, device: str, method: str, payload: bytes, request_id: uuid.UUID, requester: str,
                  timeout: float) -> Response | None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    answer_on = bus.topics.res(device, requester)
    bus.subscribe(answer_on)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = answer_on
    props.CorrelationData = request_id.bytes
    props.MessageExpiryInterval = REQUEST_LIFE_S
    with bus._lock:
        seen = len(bus.messages)  # only answers that arrive after this request
    bus.client.publish(bus.topics.req(device, method), payload, qos=1, properties=props)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with bus._lock:
            fresh, seen = bus.messages[seen:], len(bus.messages)
        for msg in fresh:
            correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            if msg.topic != answer_on or (correlation is not None and bytes(correlation) != request_id.bytes):
                continue
            try:
                res = decode(Response, bytes(msg.payload))
            except PayloadError as exc:
                print(f"warning: a bad answer: {exc}", file=sys.stderr)
                continue
            if res.request_id in (request_id, None):
                return res
        time.sleep(0.02)
    return None


__all__ = ["devices_command", "parse_params", "table"]
