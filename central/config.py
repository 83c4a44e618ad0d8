"""Central's configuration: the site (services, counters, procedures, devices)
and the service itself (database, MQTT, HTTP, queue rules).

Both are TOML files validated by strict pydantic models; see
docs/configuration.md for every key.  Cross-references (a counter naming an
unknown service, a precedence cycle, ...) are checked here, at load, so a
mistake stops start-up with a clear message instead of surfacing at the
counter at 9:00.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from bus.configfile import ConfigError, TimeZoneName, digest, load_toml
from bus.tls import MQTTS_PORT, TlsSettings
from bus.topics import ID_PATTERN

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Service(Strict):
    """A service (業務) that counters provide, e.g. 住民異動."""

    id: Id
    name_ja: Name
    name_en: Name
    #: Services that must be finished first when they are on the same ticket
    #: (国保 after 住民異動).  Only orders stops that are on the ticket.
    after: tuple[Id, ...] = ()
    #: Typical service time in minutes, used for wait estimates until central
    #: has measured its own.
    typical_min: float = Field(default=10.0, gt=0, le=240)


class Counter(Strict):
    """A counter (窓口), e.g. "1番窓口", serving one or more services."""

    id: Id
    name_ja: Name
    name_en: Name
    services: tuple[Id, ...] = Field(min_length=1)


class Procedure(Strict):
    """What a visitor picks at the kiosk (手続), e.g. 転入届."""

    id: Id
    name_ja: Name
    name_en: Name
    services: tuple[Id, ...] = Field(min_length=1)


class Device(Strict):
    """A Pi on the bus.  Its id is also its MQTT username and client id."""

    id: Id
    role: Literal["counter", "kiosk", "lobby"]
    counter: Id | None = None

    @model_validator(mode="after")
    def _counter_for_counter_role(self) -> Device:
        if self.role == "counter" and self.counter is None:
            raise ValueError(f"device {self.id}: a counter device needs 'counter'")
        if self.role != "counter" and self.counter is not None:
            raise ValueError(f"device {self.id}: only counter devices have a 'counter'")
        return self


class SiteInfo(Strict):
    id: Id
    name_ja: Name
    name_en: Name
    timezone: TimeZoneName = "Asia/Tokyo"


class Site(Strict):
    site: SiteInfo
    services: tuple[Service, ...] = Field(min_length=1)
    counters: tuple[Counter, ...] = Field(min_length=1)
    procedures: tuple[Procedure, ...] = Field(min_length=1)
    devices: tuple[Device, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> Site:
        problems: list[str] = []
        for kind, items in (
            ("service", self.services),
            ("counter", self.counters),
            ("procedure", self.procedures),
            ("device", self.devices),
        ):
            seen: set[str] = set()
            for item in items:
                if item.id in seen:
                    problems.append(f"{kind} id {item.id!r} is used twice")
                seen.add(item.id)
        services = {s.id for s in self.services}
        counters = {c.id for c in self.counters}
        for s in self.services:
            problems += [f"service {s.id}: 'after' names unknown service {a!r}" for a in s.after if a not in services]
        for c in self.counters:
            problems += [f"counter {c.id}: unknown service {s!r}" for s in c.services if s not in services]
        for p in self.procedures:
            problems += [f"procedure {p.id}: unknown service {s!r}" for s in p.services if s not in services]
        owner: dict[str, str] = {}
        for d in self.devices:
            if d.counter is not None and d.counter not in counters:
                problems.append(f"device {d.id}: unknown counter {d.counter!r}")
            elif d.counter is not None and d.counter in owner:
                problems.append(f"devices {owner[d.counter]} and {d.id} are both on counter {d.counter} (one Pi per counter)")
            elif d.counter is not None:
                owner[d.counter] = d.id
        served = {s for c in self.counters for s in c.services}
        problems += [f"service {s.id}: no counter serves it" for s in self.services if s.id not in served]
        cycle = _find_cycle({s.id: s.after for s in self.services})
        if cycle:
            problems.append("services' 'after' form a cycle: " + " → ".join(cycle))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # lookups -----------------------------------------------------------------
    def service(self, service_id: str) -> Service:
        return {s.id: s for s in self.services}[service_id]

    def counter(self, counter_id: str) -> Counter:
        return {c.id: c for c in self.counters}[counter_id]

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def device_of_counter(self, counter_id: str) -> Device | None:
        return next((d for d in self.devices if d.counter == counter_id), None)


def _find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


class MqttSettings(Strict):
    host: str = "127.0.0.1"
    #: Left out: 1883, or 8883 with [mqtt.tls].
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: Id = "central"
    #: Left out: the client id (the broker binds the two, docs/security.md).
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(default=15, ge=5, le=600)
    #: TLS to the broker, the broker's certificate always verified (bus/tls.py).
    tls: TlsSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data):
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": MQTTS_PORT}
        return data


class HttpSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Reverse proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are
    #: believed: addresses or networks ("127.0.0.1", "10.0.0.0/24").  Empty
    #: (the default): nobody's; the client address is the TCP peer's.  The
    #: login throttle and the audit key on that address (docs/security.md
    #: "Behind a reverse proxy").
    trusted_proxies: tuple[str, ...] = Field(default=(), max_length=32)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in value:
            if item.strip() == "*":
                raise ValueError("trusted_proxies: '*' would believe any client's X-Forwarded-For; "
                                 "name the proxy's address")
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies: {item[:50]!r} is not an IP address or network") from None
        return tuple(out)


class QueueSettings(Strict):
    #: How long a no-show (不在) ticket stays away before it can be called again.
    no_show_grace_s: float = Field(default=300.0, ge=0, le=7200)
    #: After this many no-shows at the same stop the stop is given up.
    max_no_shows: int = Field(default=2, ge=1, le=10)
    #: Display commands expire after this (a display never shows a late number).
    display_command_ttl_s: float = Field(default=30.0, ge=1, le=600)
    #: The lobby board lists this many recent calls.
    board_calls: int = Field(default=8, ge=1, le=20)
    #: Who a counter calls next (docs/queue.md, measured in docs/simulation.md):
    #: "lifetime": original place (issue order) at every counter;
    #: "separate": today's office, re-queued at the back after every stop, in a fixed order;
    #: "madoguchi": remaining work first, corrected by time in the building and by
    #: what a stop unblocks (docs/simulation.md).
    policy: Literal["lifetime", "separate", "madoguchi"] = "lifetime"
    #: madoguchi policy: minutes of priority per minute already spent in the building.
    aging: float = Field(default=0.25, ge=0, le=100)
    #: madoguchi policy: what unblocking a later stop of the ticket is worth, in
    #: minutes, less the work callable now at that service ÷ its counters.
    unblock_min: float = Field(default=20.0, ge=0, le=240)
    #: madoguchi policy: past this many minutes of waiting, each further minute
    #: adds two minutes of priority, so nobody waits for ever.
    starve_min: float = Field(default=240.0, gt=0, le=600)


class PaymentSettings(Strict):
    #: A charge or payment command the counter's Pi has not taken within this
    #: time is void: the Pi refuses it later, and the ledger marks a charge
    #: still "sent" as not delivered (staff charge again).
    command_ttl_s: float = Field(default=120.0, ge=5, le=3600)


class AuthSettings(Strict):
    """Web login (docs/security.md "Web login"): sessions, the cookie, the throttle."""

    #: A browser session ends after this long without a request (any request
    #: counts, the console's polling too: a page left open keeps it).
    idle_timeout_s: float = Field(default=1800.0, ge=1, le=86400)
    #: ... and this long after the login, whatever happens (a shift and overtime).
    absolute_timeout_s: float = Field(default=43200.0, ge=1, le=7 * 86400)
    #: Send the session cookie with ``Secure`` (HTTPS only).  Off for the
    #: loopback development set-up; turn it on behind TLS.
    secure_cookie: bool = False
    #: Login throttle: after this many failed logins for one account from one
    #: address within ``failure_window_s``, that pair is refused (429) until
    #: the oldest of those failures is older than the window.
    max_failures: int = Field(default=5, ge=1, le=100)
    failure_window_s: float = Field(default=900.0, ge=1, le=86400)
    #: ... and after this many failed logins from one address within the
    #: window, whatever account names were tried (password spraying), that
    #: address is refused (429) for every name.
    max_failures_per_client: int = Field(default=20, ge=1, le=10000)

    @model_validator(mode="after")
    def _order(self) -> AuthSettings:
        if self.absolute_timeout_s < self.idle_timeout_s:
            raise ValueError("auth absolute_timeout_s must be at least idle_timeout_s")
        if self.max_failures_per_client < self.max_failures:
            raise ValueError("auth max_failures_per_client must be at least max_failures")
        return self


class CentralSettings(Strict):
    site_file: Path
    database: Path
    #: The fee catalog (docs/fees.md) and payment brands; without them the
    #: counters take no payments.
    fees_file: Path | None = None
    brands_file: Path | None = None

    @model_validator(mode="after")
    def _both(self) -> CentralSettings:
        if (self.fees_file is None) != (self.brands_file is None):
            raise ValueError("fees_file and brands_file go together")
        return self


class CentralConfig(Strict):
    central: CentralSettings
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    queue: QueueSettings = QueueSettings()
    payments: PaymentSettings = PaymentSettings()
    auth: AuthSettings = AuthSettings()


class Loaded(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    config: CentralConfig
    site: Site
    config_hash: str
    #: central.fees.FeeCatalog, or None without fees_file.
    catalog: object | None = None


def load(path: str | Path) -> Loaded:
    """Load central.toml and the site file it names (relative paths are
    relative to central.toml's folder).  Raises :class:`ConfigError`."""
    path = Path(path)
    config = load_toml(path, CentralConfig)
    base = path.parent
    update = {
        "site_file": (base / config.central.site_file).resolve(),
        "database": (base / config.central.database).resolve(),
    }
    for key in ("fees_file", "brands_file"):
        if getattr(config.central, key) is not None:
            update[key] = (base / getattr(config.central, key)).resolve()
    settings = config.central.model_copy(update=update)
    config = config.model_copy(update={"central": settings})
    site = load_toml(settings.site_file, Site)
    raw = path.read_bytes() + settings.site_file.read_bytes()
    catalog = None
    if settings.fees_file is not None:
        from central.fees import load_catalog

        catalog = load_catalog(settings.fees_file, settings.brands_file, services={s.id for s in site.services})
        raw += settings.fees_file.read_bytes() + settings.brands_file.read_bytes()
    return Loaded(config=config, site=site, config_hash=digest(raw), catalog=catalog)


__all__ = ["AuthSettings", "CentralConfig", "ConfigError", "Loaded", "Site", "load"]
