"""Topic builders for the madoguchi MQTT tree (design §3).

Every topic starts with ``madoguchi/v1/<site>/``.  The ``v1`` is the topic
version: a change that breaks consumers gets ``v2`` beside it, never an edit in
place.  Payloads carry their own ``schema`` field as well (see :mod:`bus.models`).

>>> t = Topics("demo")
>>> t.event("counter-1", "intent")
'madoguchi/v1/demo/device/counter-1/event/intent'
>>> parse(t.event("counter-1", "intent"))
TopicParts(site='demo', device='counter-1', channel='event', name='intent')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "madoguchi/v1"

#: Device, site and counter ids, and the last topic level: lower-case ASCII,
#: digits and '-', so they are safe as MQTT topic levels, usernames and file
#: names, and never contain the wildcards ``+``/``#``.
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
_ID = re.compile(ID_PATTERN)

#: Channels a device publishes on (edge → central).
DEVICE_CHANNELS = ("status", "info", "health")
#: Channels that carry a last level (event kind, command name, request method).
NAMED_CHANNELS = ("event", "cmd", "req", "res")


class TopicError(ValueError):
    """A topic or one of its levels is not part of the madoguchi tree."""


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise TopicError(f"{what} {value!r} is not a valid id (expected {ID_PATTERN})")
    return value


@dataclass(frozen=True)
class TopicParts:
    site: str
    device: str | None
    channel: str
    name: str | None


@dataclass(frozen=True)
class Topics:
    """All topics of one site.  ``Topics("hq").status("counter-1")`` etc."""

    site: str

    def __post_init__(self) -> None:
        check_id(self.site, "site")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.site}"

    def _device(self, device: str, channel: str) -> str:
        return f"{self.base}/device/{check_id(device, 'device')}/{channel}"

    # edge → central, retained
    def status(self, device: str) -> str:
        return self._device(device, "status")

    def info(self, device: str) -> str:
        return self._device(device, "info")

    def health(self, device: str) -> str:
        return self._device(device, "health")

    # edge → central, QoS 1, not retained
    def event(self, device: str, kind: str) -> str:
        return f"{self._device(device, 'event')}/{check_id(kind, 'event kind')}"

    # central → edge, QoS 1, not retained, with message expiry
    def cmd(self, device: str, name: str) -> str:
        return f"{self._device(device, 'cmd')}/{check_id(name, 'command name')}"

    # IT requests (MQTT v5 request/response)
    def req(self, device: str, method: str) -> str:
        return f"{self._device(device, 'req')}/{check_id(method, 'method')}"

    def res(self, device: str, requester: str) -> str:
        """Where ``device`` answers requests made by ``requester``."""
        return f"{self._device(device, 'res')}/{check_id(requester, 'requester')}"

    # central → everyone, retained
    def central_status(self) -> str:
        return f"{self.base}/central/status"

    def lobby_board(self) -> str:
        return f"{self.base}/lobby/board"

    # subscription filters
    def all_devices(self, channel: str) -> str:
        if channel in NAMED_CHANNELS:
            return f"{self.base}/device/+/{channel}/+"
        if channel in DEVICE_CHANNELS:
            return f"{self.base}/device/+/{channel}"
        raise TopicError(f"unknown channel {channel!r}")

    def device_commands(self, device: str) -> str:
        return f"{self._device(device, 'cmd')}/+"

    def device_requests(self, device: str) -> str:
        """The requests one device answers (``req/+``, docs/fleet.md)."""
        return f"{self._device(device, 'req')}/+"


def parse(topic: str) -> TopicParts:
    """Split a concrete topic of the tree into its parts.

    Raises :class:`TopicError` for anything outside ``madoguchi/v1``.
    """
    levels = topic.split("/")
    if len(levels) < 4 or "/".join(levels[:2]) != ROOT:
        raise TopicError(f"topic {topic!r} is not under {ROOT}/")
    site = check_id(levels[2], "site")
    rest = levels[3:]
    if rest == ["central", "status"]:
        return TopicParts(site, None, "central_status", None)
    if rest == ["lobby", "board"]:
        return TopicParts(site, None, "lobby_board", None)
    if len(rest) >= 3 and rest[0] == "device":
        device = check_id(rest[1], "device")
        channel = rest[2]
        if channel in DEVICE_CHANNELS and len(rest) == 3:
            return TopicParts(site, device, channel, None)
        if channel in NAMED_CHANNELS and len(rest) == 4:
            return TopicParts(site, device, channel, check_id(rest[3], channel))
    raise TopicError(f"topic {topic!r} is not a madoguchi topic")
