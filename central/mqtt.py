"""Central's MQTT connection (paho-mqtt 2.x, MQTT v5).

paho runs its network loop in its own thread; this class only hands what
arrives to the asyncio loop (``loop.call_soon_threadsafe``) and never touches
central's state itself.  Publishing is thread-safe in paho and is done from
the loop.

Unlike the edge (many Pis, which reconnect with random back-off so they don't
all hit a restarted broker at once), central is one client: paho's own
exponential reconnect (1 s … 30 s) is enough.  Central connects with a
persistent session (``clean_start=False`` + session expiry) so QoS 1 events
published while central is down or restarting wait for it at the broker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bus import encode
from bus.models import CentralStatus, DeviceState, Message, utcnow
from bus.tls import TlsSettings, client_context
from bus.topics import Topics

logger = logging.getLogger(__name__)

#: How long the broker keeps central's session (subscriptions and queued QoS 1
#: events) while central is away.
SESSION_EXPIRY_S = 6 * 3600


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool


class CentralLink:
    """One MQTT v5 session for central.

    ``on_message(Incoming)`` and ``on_connected()`` are called on the asyncio
    loop given to :meth:`start`.
    """

    def __init__(
        self,
        topics: Topics,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        keepalive_s: int = 15,
        on_message: Callable[[Incoming], None],
        on_connected: Callable[[], None],
    ) -> None:
        self.topics = topics
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.boot_id = uuid.uuid4().hex[:12]
        self._on_message = on_message
        self._on_connected = on_connected
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        # The broker binds central's username to its client id (docs/security.md).
        self.client.username_pw_set(username or client_id, password)
        if tls is not None:
            # Verifies the broker's certificate and host name (bus/tls.py).
            self.client.tls_set_context(client_context(tls))
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(10000)
        will = CentralStatus(state=DeviceState.OFFLINE, boot_id=self.boot_id)
        self.client.will_set(topics.central_status(), encode(will), qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_connect_fail = self._connect_failed
        self._stopping = False
        self._failures = 0

    # paho thread ---------------------------------------------------------------
    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("central: broker refused connection: %s", reason_code)
            return
        sock = client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):
            # paho leaves Nagle on; with delayed ACKs every QoS 1 hop would wait ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = True
        self._failures = 0
        logger.info("central: connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present)
        subs = [
            (self.topics.all_devices("event"), 1),
            (self.topics.all_devices("status"), 1),
            # The fleet (central/fleet.py): what each device is, its health,
            # and every IT request and answer, for the registry and the audit.
            (self.topics.all_devices("info"), 1),
            (self.topics.all_devices("health"), 1),
            (self.topics.all_devices("req"), 1),
            (self.topics.all_devices("res"), 1),
        ]
        client.subscribe(subs)
        birth = CentralStatus(state=DeviceState.ONLINE, boot_id=self.boot_id, since=utcnow())
        client.publish(self.topics.central_status(), encode(birth), qos=1, retain=True)
        self._hand_over(self._on_connected)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected and not self._stopping:
            logger.warning("central: lost broker connection (%s); reconnecting", reason_code)
        self.connected = False

    def _connect_failed(self, client, userdata) -> None:
        self._failures += 1
        if self._failures in (1, 3) or self._failures % 20 == 0:
            level = logging.WARNING if self._failures < 20 else logging.ERROR
            logger.log(level, "central: broker %s:%d unreachable (%d attempts)", self.host, self.port, self._failures)

    def _message(self, client, userdata, msg) -> None:
        self._hand_over(self._on_message, Incoming(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _hand_over(self, fn, *args) -> None:
        if self._loop is not None and not self._loop.is_closed() and not self._stopping:
            self._loop.call_soon_threadsafe(fn, *args)

    # loop side -----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        # connect_async: central starts (and serves HTTP) even when the broker
        # is not up yet; paho keeps trying in its thread.
        self.client.connect_async(self.host, self.port, self.keepalive_s, clean_start=False, properties=props)
        self.client.loop_start()
        self.client._thread.name = "mqtt-central"

    def publish(self, topic: str, message: Message, *, qos: int = 1, retain: bool = False, expiry_s: float | None = None) -> None:
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        self.client.publish(topic, encode(message), qos=qos, retain=retain, properties=props)

    def publish_request(self, topic: str, payload: bytes, *, response_topic: str, correlation: bytes,
                        expiry_s: float) -> None:
        """An IT request (MQTT v5 request/response): the device answers on
        ``response_topic`` with ``correlation`` as CorrelationData."""
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, properties=props)

    def stop(self) -> None:
        """Say goodbye (retained offline) and disconnect cleanly."""
        self._stopping = True
        if self.connected:
            bye = CentralStatus(state=DeviceState.OFFLINE, boot_id=self.boot_id, since=utcnow())
            info = self.client.publish(self.topics.central_status(), encode(bye), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except RuntimeError:
                logger.debug("central: goodbye not confirmed; the will says the same")
        self.client.disconnect()
        self.client.loop_stop()
