"""The edge daemon's MQTT session (paho-mqtt 2.x, MQTT v5).

* Offline-first: the daemon starts and serves its counter without a broker;
  this session keeps trying in its own thread and catches up when it can.
* Reconnects with random capped back-off (``uniform(0, min(cap, 1.5**n))``,
  as aiomqtt advises) so a hundred Pis don't hit a restarted broker at once;
  ``n`` starts again at 0 after every accepted connection.
* Registers a retained last will ``{"state": "offline", "boot_id": ...}`` and
  re-publishes the retained birth, info and health on **every** connect: after
  a broker restart the retained birth may be gone, and the device would
  otherwise look offline until it rebooted.
* Runs paho's network loop by hand (``client.loop()``) in one named thread,
  which is the only thread that touches the socket: :meth:`publish` from the
  asyncio loop only queues the packet and wakes that thread (see
  ``_wake_only``).  Everything that arrives is handed to the asyncio loop;
  this thread never touches the daemon's state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bus import encode
from bus.models import DeviceState, Message, Status, utcnow
from bus.tls import TlsSettings, client_context
from bus.topics import Topics

logger = logging.getLogger(__name__)

#: Unreachable-broker reports: quiet for the first attempts (a broker restart
#: takes a few seconds), then a WARNING, then an ERROR once it has lasted.
WARN_AFTER_ATTEMPTS = 3
ERROR_AFTER_S = 300.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    #: MQTT v5 request/response properties (IT requests, edge/fleet.py).
    response_topic: str | None = None
    correlation: bytes | None = None


def backoff(attempt: int, cap: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
    return random.uniform(0, min(cap, 1.5 ** min(attempt, 30)))


def _no_delay(client: mqtt.Client) -> None:
    """Send small MQTT packets at once.  paho leaves Nagle's algorithm on, and
    with the peer's delayed ACK a QoS 1 exchange then waits ~40 ms per hop."""
    sock = client.socket()
    if sock is not None and hasattr(sock, "setsockopt"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # not TCP (e.g. a unix socket): nothing to do
            logger.debug("TCP_NODELAY not set: %s", exc)


def _wake_only(client, userdata, sock) -> None:
    """paho calls this when it has something to write.

    Registering it is what keeps paho, run by hand, from writing the socket
    directly from whichever thread called ``publish()``: with a write callback
    set, ``publish()`` only queues the packet and wakes our network thread
    (through paho's socket pair), and that thread writes it.
    """


def _local_ip(sock) -> str | None:
    try:
        return sock.getsockname()[0]
    except (OSError, AttributeError, IndexError):
        return None


class EdgeSession:
    """One device's connection to the broker.

    Callbacks run on the asyncio loop given to :meth:`start`:
    ``on_connected()``, ``on_disconnected()``, ``on_message(Received)`` and
    ``on_fatal(str)`` (the network thread hit a bug and stopped: the daemon
    must exit so systemd restarts it).  ``retained()`` returns the (topic,
    message) pairs published retained on every connect after the birth.
    """

    def __init__(
        self,
        topics: Topics,
        device: str,
        boot_id: str,
        *,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        keepalive_s: int = 10,
        reconnect_cap_s: float = 30.0,
        subscriptions: list[str],
        retained: Callable[[], list[tuple[str, Message]]],
        on_connected: Callable[[], None],
        on_disconnected: Callable[[], None],
        on_message: Callable[[Received], None],
        on_fatal: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.topics = topics
        self.device = device
        self.boot_id = boot_id
        self.host, self.port = host, port
        self.keepalive_s = keepalive_s
        self.reconnect_cap_s = reconnect_cap_s
        self._subscriptions = subscriptions
        self._retained = retained
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_message = on_message
        self._on_fatal = on_fatal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.connects = 0
        #: The address this device reaches the broker from (for its info).
        self.local_ip: str | None = None
        self._attempt = 0
        self._unreachable_since: float | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        # The broker knows a device by its id: username = client id = device id.
        self.client.username_pw_set(username or device, password)
        if tls is not None:
            # Verifies the broker's certificate and host name (bus/tls.py);
            # a failed handshake is an OSError and retried like a refused connection.
            self.client.tls_set_context(client_context(tls))
        will = Status(state=DeviceState.OFFLINE, boot_id=boot_id)
        self.client.will_set(topics.status(device), encode(will), qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_socket_register_write = _wake_only

    # ------------------------------------------------------------ paho thread
    def _run(self) -> None:
        try:
            self._connect_loop()
        except Exception as exc:  # a bug, not a network problem: say so and stop the daemon
            logger.exception("%s: MQTT thread failed", self.device)
            self._hand_over(self._on_fatal, f"MQTT thread failed: {exc}")

    def _connect_loop(self) -> None:
        self._attempt = 0
        while not self._stop.is_set():
            try:
                self.client.connect(self.host, self.port, self.keepalive_s, clean_start=True)
            except (OSError, mqtt.WebsocketConnectionError) as exc:
                self._unreachable(exc)
                continue
            while not self._stop.is_set():
                rc = self.client.loop(timeout=0.5)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            if not self._stop.is_set():
                # _connected() reset the count if this connection was accepted.
                delay = backoff(self._attempt, self.reconnect_cap_s)
                self._attempt += 1
                self._stop.wait(delay)
        self.client.loop(timeout=0.1)  # flush the goodbye

    def _unreachable(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        delay = backoff(self._attempt, self.reconnect_cap_s)
        lasted = now - self._unreachable_since
        if lasted > ERROR_AFTER_S and self._attempt % 10 == 0:
            level = logging.ERROR
        elif self._attempt == WARN_AFTER_ATTEMPTS or (self._attempt > WARN_AFTER_ATTEMPTS and self._attempt % 10 == 0):
            level = logging.WARNING
        elif self._attempt == 0:
            level = logging.INFO
        else:
            level = logging.DEBUG
        logger.log(
            level, "%s: broker %s:%d unreachable for %.0f s (%s); retry in %.1f s",
            self.device, self.host, self.port, lasted, exc, delay,
        )
        self._attempt += 1
        self._stop.wait(delay)

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("%s: broker refused the connection: %s", self.device, reason_code)
            return
        _no_delay(client)
        self.local_ip = _local_ip(client.socket())
        self._attempt = 0
        self._unreachable_since = None
        self.connected = True
        self.connects += 1
        birth = Status(state=DeviceState.ONLINE, boot_id=self.boot_id, since=utcnow())
        client.publish(self.topics.status(self.device), encode(birth), qos=1, retain=True)
        client.subscribe([(topic, 1) for topic in self._subscriptions])
        logger.info("%s: connected to %s:%d", self.device, self.host, self.port)
        self._hand_over(self._after_connect)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was and not self._stop.is_set():
            logger.warning("%s: lost the broker (%s); reconnecting", self.device, reason_code)
            self._hand_over(self._on_disconnected)

    def _message(self, client, userdata, msg) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        self._hand_over(self._on_message, Received(msg.topic, bytes(msg.payload), response_topic,
                                                   bytes(correlation) if correlation is not None else None))

    def _hand_over(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._stop.is_set():
            loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------ loop side
    def _after_connect(self) -> None:
        for topic, message in self._retained():
            self.publish(topic, message, retain=True)
        self._on_connected()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.device}", daemon=True)
        self._thread.start()

    def publish(self, topic: str, message: Message, *, qos: int = 1, retain: bool = False, expiry_s: float | None = None) -> bool:
        """Queue ``message`` for the network thread; False if not connected
        (nothing is queued then)."""
        return self.publish_raw(topic, encode(message), qos=qos, retain=retain, expiry_s=expiry_s)

    def publish_raw(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, expiry_s: float | None = None,
                    correlation: bytes | None = None) -> bool:
        """Like :meth:`publish` for an already encoded payload (the outbox).
        ``correlation``: the v5 CorrelationData of an answer to a request."""
        if not self.connected:
            return False
        props = None
        if expiry_s is not None or correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
        if expiry_s is not None:
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        if correlation is not None:
            props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def stop(self, timeout: float = 3.0) -> None:
        """Publish a clean offline status, disconnect and join the thread.
        No callback reaches the loop after this starts."""
        if self._thread is None:
            return
        self._stop.set()
        if self.connected:
            bye = Status(state=DeviceState.OFFLINE, boot_id=self.boot_id, since=utcnow())
            self.client.publish(self.topics.status(self.device), encode(bye), qos=1, retain=True)
            self.client.disconnect()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("%s: MQTT thread did not stop within %.1f s", self.device, timeout)
        self._thread = None
