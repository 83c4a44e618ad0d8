"""Broker security (issue #7 item 1, docs/security.md): a real Mosquitto running
exactly the set-up ``madoguchi broker init`` writes — TLS with a test CA, no
anonymous access, one credential per device, the ACL of design §3 — and the
real edge and central daemons connecting to it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from bus.cli import main as madoguchi
from bus.tls import TlsSettings, client_context
from bus.topics import Topics
from central import broker_admin, broker_pki
from tests.support.procs import (
    REPO,
    Broker,
    CentralProcess,
    EdgeProcess,
    central_toml,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

SITE = "midori"
T = Topics(SITE)
NOT_AUTHORIZED = 0x87  # MQTT v5 reason code 135
BAD_CREDENTIALS = 0x86  # 134 "Bad User Name or Password"
ADMINISTRATIVE_ACTION = 0x98  # 152, DISCONNECT sent when the plugin deletes a connected client
A, B = "counter-2", "counter-3"


def cli(*args: object, stdin: str = "") -> tuple[int, str, str]:
    """``madoguchi ...`` in this process (the real command, without a Python start-up)."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = madoguchi([str(a) for a in args])
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


class Peer:
    """A paho v5 client that records what the broker answered."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None, *,
                 client_id: str | None = None, ca: Path | None = None, host: str = "127.0.0.1") -> None:
        self.port, self.host = port, host
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or username or f"t-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set_context(client_context(TlsSettings(ca_file=ca)))
        self.connack: mqtt.ReasonCode | None = None
        self.disconnect_reason: mqtt.ReasonCode | None = None
        self.messages: list[tuple[str, bytes]] = []
        self._acks: dict[int, list] = {}
        self._event = threading.Condition()
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: self._note("connack", rc)
        c.on_disconnect = lambda cl, ud, flags, rc, props: self._note("disconnect_reason", rc)
        c.on_message = lambda cl, ud, msg: self._note_message(msg)
        c.on_publish = lambda cl, ud, mid, rc, props: self._ack(mid, rc)
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self._ack(mid, rcs[0])

    def _note(self, attr, value) -> None:
        with self._event:
            setattr(self, attr, value)
            self._event.notify_all()

    def _note_message(self, msg) -> None:
        with self._event:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._event.notify_all()

    def _ack(self, mid, rc) -> None:
        with self._event:
            self._acks[mid] = rc
            self._event.notify_all()

    def _wait(self, fn, timeout=5.0):
        with self._event:
            if not self._event.wait_for(fn, timeout):
                raise TimeoutError("no answer from the broker")
            return fn()

    def connect(self) -> mqtt.ReasonCode:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        return self._wait(lambda: self.connack or self.disconnect_reason)

    def publish(self, topic: str, payload: bytes = b"{}", *, qos: int = 1, retain: bool = False) -> mqtt.ReasonCode:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return self._wait(lambda: self._acks.get(info.mid))

    def subscribe(self, topic: str) -> mqtt.ReasonCode:
        _, mid = self.client.subscribe(topic, qos=1)
        return self._wait(lambda: self._acks.get(mid))

    def got(self, topic: str) -> list[bytes]:
        with self._event:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Secure:
    def __init__(self, folder: Path, broker: Broker, dev_port: int, central_password: str) -> None:
        self.folder, self.broker, self.dev_port = folder, broker, dev_port
        self.tls_port = broker.port
        self.central_password = central_password
        self.ca = folder / "ca.crt"
        self.admin_file = folder / "admin.toml"
        self.passwords: dict[str, str] = {}
        self.peers: list[Peer] = []

    def add(self, what: str, name: str) -> str:
        rc, out, err = cli("broker", what, name, "--admin-file", self.admin_file)
        assert rc == 0, err
        self.passwords[name] = out.strip()
        return self.passwords[name]

    def peer(self, name: str | None, password: str | None = None, **kw) -> Peer:
        if name is not None and password is None:
            password = self.central_password if name == "central" else self.passwords[name]
        kw.setdefault("ca", self.ca)
        p = Peer(kw.pop("port", self.tls_port), name, password, **kw)
        self.peers.append(p)
        return p

    def connected(self, name: str, **kw) -> Peer:
        p = self.peer(name, **kw)
        rc = p.connect()
        assert not rc.is_failure, (name, rc)
        return p


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    # Started as root, Mosquitto drops to the mosquitto user before it reads
    # its certificates, and later rewrites its dynsec file: the set-up must be
    # reachable by that user (pytest's 0700 temp folders are not), exactly as
    # the files init writes must be on a server.
    shared = Path(tempfile.mkdtemp(prefix="madoguchi-broker-"))
    shared.chmod(0o755)
    tls_port, dev_port = free_port(), free_port()
    rc, out, err = cli("broker", "init", "--dir", shared / "broker", "--site", SITE, "--port", tls_port,
                       "--bind", "127.0.0.1", "--dev-port", dev_port, "--dynsec-file", shared / "dynsec" / "dynsec.json")
    assert rc == 0, err
    (shared / "broker").chmod(0o755)
    broker = Broker(tmp_path_factory.mktemp("secure-broker"), port=tls_port, include_dir=shared / "broker").start()
    s = Secure(shared / "broker", broker, dev_port, out.strip())
    for device in (A, B):
        s.add("add-device", device)
    s.add("add-admin", "it-tanaka")
    yield s
    broker.stop()
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(autouse=True)
def _close_peers(request):
    """Each test's clients go at its end: client ids are bound to usernames,
    so a left-over "central" would take the next test's session over."""
    yield
    if "secure" in request.fixturenames:
        s = request.getfixturevalue("secure")
        while s.peers:
            s.peers.pop().close()


def test_generated_conf_is_what_the_broker_runs(secure):
    conf = (secure.folder / "madoguchi.conf").read_text()
    for line in ("per_listener_settings false", "allow_anonymous false", "tls_version tlsv1.2",
                 f"listener {secure.tls_port} 127.0.0.1", f"listener {secure.dev_port} 127.0.0.1",
                 "plugin /usr/lib/"):
        assert line in conf
    assert (secure.admin_file.stat().st_mode & 0o077) == 0, "the admin file holds a password: root-only"
    assert (secure.folder / "ca.key").stat().st_mode & 0o077 == 0
    assert secure.central_password not in (secure.folder / "madoguchi.conf").read_text()


def test_acl_follows_the_topic_tree():
    """The device ACL allows exactly the device's own topics of bus/topics.py."""
    acls = broker_admin.device_acls(SITE, A)
    writes = [a["topic"] for a in acls if a["acltype"] == "publishClientSend"]
    reads = [a["topic"] for a in acls if a["acltype"] == "subscribePattern"]

    def allowed(patterns, topic):
        return any(mqtt.topic_matches_sub(p, topic) for p in patterns)

    for topic in (T.status(A), T.info(A), T.health(A), T.event(A, "intent"), T.event(A, "payment"), T.res(A, "central")):
        assert allowed(writes, topic), topic
    for topic in (T.status(B), T.event(B, "intent"), T.cmd(A, "display"), T.req(A, "get-config"), T.lobby_board(),
                  T.central_status(), T.res(B, "central")):
        assert not allowed(writes, topic), topic
    for topic in (T.cmd(A, "display"), T.req(A, "get-config"), T.central_status(), T.lobby_board()):
        assert allowed(reads, topic), topic
    for topic in (T.cmd(B, "display"), T.req(B, "get-config"), T.status(B), T.event(B, "intent")):
        assert not allowed(reads, topic), topic


def test_anonymous_wrong_password_and_borrowed_client_id_are_refused(secure):
    anonymous = secure.peer(None).connect()
    assert anonymous.is_failure and anonymous.value == NOT_AUTHORIZED, anonymous
    wrong = secure.peer(A, "not-the-password").connect()
    assert wrong.is_failure and wrong.value in (BAD_CREDENTIALS, NOT_AUTHORIZED), wrong
    # A's own password, but B's client id (would kick B off the bus): refused.
    borrowed = secure.peer(A, client_id=B).connect()
    assert borrowed.is_failure, borrowed
    # The development listener is plain, not open: the same users apply.
    dev_anonymous = secure.peer(None, port=secure.dev_port, ca=None).connect()
    assert dev_anonymous.is_failure and dev_anonymous.value == NOT_AUTHORIZED
    assert not secure.peer(A, port=secure.dev_port, ca=None).connect().is_failure


def test_device_writes_only_its_own_topics(secure):
    central = secure.connected("central")
    assert central.subscribe(f"{T.base}/#").value == 1
    a = secure.connected(A)
    forged = [T.status(B), T.health(B), T.event(B, "intent"), T.cmd(B, "display"), T.req(B, "restart"),
              T.lobby_board(), T.central_status(), "elsewhere/topic"]
    for topic in forged:
        assert a.publish(topic, b'{"forged":true}').value == NOT_AUTHORIZED, topic
    assert not a.publish(T.event(A, "intent"), b'{"own":1}').is_failure
    assert not a.publish(T.res(A, "central"), b'{"own":2}').is_failure
    wait_for(lambda: central.got(T.res(A, "central")), 5, "A's own answer at central")
    # Delivered in order: A's own messages arrived, the forged ones before them never did.
    assert all(not central.got(topic) for topic in forged)
    assert central.got(T.event(A, "intent")) == [b'{"own":1}']


def test_device_reads_only_its_own_commands(secure):
    a, b = secure.connected(A), secure.connected(B)
    assert a.subscribe(T.device_commands(B)).value == NOT_AUTHORIZED
    assert a.subscribe(T.req(B, "get-config")).value == NOT_AUTHORIZED
    assert a.subscribe(f"{T.base}/#").value == NOT_AUTHORIZED
    assert a.subscribe(f"{T.base}/device/+/cmd/+").value == NOT_AUTHORIZED
    assert a.subscribe(T.device_commands(A)).value == 1
    assert b.subscribe(T.device_commands(B)).value == 1
    central = secure.connected("central")
    assert not central.publish(T.cmd(B, "display"), b'{"for":"B"}').is_failure
    assert not central.publish(T.cmd(A, "display"), b'{"for":"A"}').is_failure
    wait_for(lambda: a.got(T.cmd(A, "display")), 5, "A's own command")
    wait_for(lambda: b.got(T.cmd(B, "display")), 5, "B's command")
    assert a.got(T.cmd(B, "display")) == [] and b.got(T.cmd(A, "display")) == []


def test_central_and_it_roles(secure):
    central = secure.connected("central")
    it = secure.connected("it-tanaka")
    a = secure.connected(A)
    assert it.subscribe(f"{T.base}/#").value == 1
    assert a.subscribe(f"{T.base}/device/{A}/req/+").value == 1
    # Central publishes the lobby board; IT reads it.  A device could not (test above).
    assert not central.publish(T.lobby_board(), b'{"board":1}', retain=True).is_failure
    wait_for(lambda: it.got(T.lobby_board()), 5, "the board at IT")
    # IT sends a fleet request and reads the answer; IT may not command a counter.
    assert not it.publish(T.req(A, "identify"), b'{"req":1}').is_failure
    wait_for(lambda: a.got(T.req(A, "identify")), 5, "the request at A")
    assert not a.publish(T.res(A, "it-tanaka"), b'{"status":"ok"}').is_failure
    wait_for(lambda: it.got(T.res(A, "it-tanaka")), 5, "the answer at IT")
    for topic in (T.cmd(A, "display"), T.lobby_board(), T.status(A), T.central_status()):
        assert it.publish(topic).value == NOT_AUTHORIZED, topic
    # Nobody but the broker admin touches the security set-up itself.
    for peer in (central, it, a):
        assert peer.publish(broker_admin.CONTROL_TOPIC, b'{"commands":[{"command":"listClients"}]}').value == NOT_AUTHORIZED


def test_revoked_device_is_cut_off_at_once_and_can_be_added_again(secure):
    old = secure.add("add-device", "counter-9")
    device = secure.connected("counter-9")
    assert device.subscribe(T.device_commands("counter-9")).value == 1
    # The real command, as IT runs it.
    done = subprocess.run([sys.executable, "-m", "bus.cli", "broker", "revoke-device", "counter-9",
                           "--admin-file", str(secure.admin_file)], check=False, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    reason = device._wait(lambda: device.disconnect_reason, timeout=5)
    assert reason.value == ADMINISTRATIVE_ACTION, reason
    again = secure.peer("counter-9", old).connect()
    assert again.is_failure, again
    rc, _, err = cli("broker", "revoke-device", "counter-9", "--admin-file", secure.admin_file)
    assert rc == 1 and "no device" in err
    # Re-adding (a repaired Pi) gives a new password; the old one stays dead.
    new = "a-password-from-the-it-vault"
    rc, out, err = cli("broker", "add-device", "counter-9", "--password-stdin", "--admin-file", secure.admin_file,
                       stdin=new + "\n")
    assert rc == 0 and new not in out + err, (rc, err)
    assert secure.peer("counter-9", old).connect().is_failure
    assert not secure.peer("counter-9", new).connect().is_failure
    rc, out, _ = cli("broker", "list", "--json", "--admin-file", secure.admin_file)
    kinds = {row["username"]: row["kind"] for row in json.loads(out)}
    assert kinds["counter-9"] == "device" and kinds["it-tanaka"] == "it-admin" and kinds["central"] == "central"


def test_password_rotation(secure):
    old = secure.add("add-device", "counter-7")
    rc, out, err = cli("broker", "set-password", "counter-7", "--admin-file", secure.admin_file)
    new = out.strip()
    assert rc == 0 and new and new != old, err
    assert secure.peer("counter-7", old).connect().is_failure
    assert not secure.peer("counter-7", new).connect().is_failure
    rc, _, err = cli("broker", "set-password", "counter-6", "--admin-file", secure.admin_file)
    assert rc == 1 and "no user" in err


def test_bad_names_are_refused_before_the_broker_is_asked(secure):
    for name in ("central", "Counter-1", "a/b", "+"):
        rc, out, err = cli("broker", "add-device", name, "--admin-file", secure.admin_file)
        assert rc == broker_admin.EX_CONFIG and out == "", (name, rc, err)
    rc, _, err = cli("broker", "revoke-device", "it-tanaka", "--admin-file", secure.admin_file)
    assert rc == 1 and "not a device" in err
    rc, _, err = cli("broker", "add-device", "counter-8", "--password-stdin", "--admin-file", secure.admin_file, stdin="short\n")
    assert rc == broker_admin.EX_CONFIG and "12 characters" in err
    rc, _, err = cli("broker", "list", "--admin-file", secure.folder / "missing.toml")
    assert rc == broker_admin.EX_CONFIG


def test_tls_is_verified(secure, tmp_path):
    # A client that trusts another CA refuses the broker.
    other = broker_pki.new_ca("someone else's CA")
    broker_pki.write_public(tmp_path / "other-ca.crt", other.cert_pem())
    with pytest.raises(ssl.SSLCertVerificationError):
        secure.peer(A, ca=tmp_path / "other-ca.crt").connect()
    # The right CA, but a name the certificate is not for: refused too.
    ctx = client_context(TlsSettings(ca_file=secure.ca))
    with (socket.create_connection(("127.0.0.1", secure.tls_port), timeout=5) as raw,
          pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch")):
        ctx.wrap_socket(raw, server_hostname="broker.elsewhere.example")
    with (socket.create_connection(("127.0.0.1", secure.tls_port), timeout=5) as raw,
          ctx.wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # Plain MQTT to the TLS port gets no CONNACK.
    plain = secure.peer(A, ca=None)
    plain.client.connect("127.0.0.1", secure.tls_port, keepalive=10)
    plain.client.loop_start()
    with pytest.raises(TimeoutError):
        plain._wait(lambda: plain.connack, timeout=2)


def test_real_edge_and_central_over_tls(secure, tmp_path):
    """The daemons' own TLS code: central and a counter Pi connect with TLS and
    their credentials, and the counter's birth reaches central."""
    device = "counter-1"
    password = secure.add("add-device", device)
    it = secure.connected("it-tanaka")
    assert it.subscribe(T.status(device)).value == 1
    http_port = free_port()
    config = central_toml(tmp_path / "central", secure.tls_port, http_port, mqtt_extra=(
        'client_id = "central"\n'
        f'password = "{secure.central_password}"\n'
        f'tls = {{ ca_file = "{secure.ca}" }}\n'))
    central = CentralProcess(config, http_port, tmp_path / "central.log")
    edge = EdgeProcess(tmp_path / "edge", device, "1", secure.tls_port, mqtt_extra=(
        'host = "localhost"\n'
        f'password = "{password}"\n'
        f'tls = {{ ca_file = "{secure.ca}" }}\n'))
    try:
        central.start()  # waits until /healthz says the broker is connected
        edge.start()
        wait_for(lambda: any(b'"online"' in p for p in it.got(T.status(device))), 15, "the counter's birth")
        wait_for(lambda: f"{device} is online" in central.log_text(), 10, "central seeing the counter")
        assert f"connected to localhost:{secure.tls_port}" in edge.log_text()
        assert password not in edge.log_text() + central.log_text()
    finally:
        edge.stop()
        central.stop()


def test_tls_config_is_checked_at_start_up(tmp_path):
    """[mqtt.tls] in both configs: port 8883 by default, a missing file or a
    half client pair refused with the key named, no way to skip verification."""
    from bus.configfile import ConfigError, parse_toml
    from central.config import CentralConfig
    from edge.config import EdgeConfig

    ca = tmp_path / "ca.crt"
    broker_pki.write_public(ca, broker_pki.new_ca("test").cert_pem())
    device = b'[device]\nid = "counter-1"\nsite = "midori"\nrole = "counter"\ncounter = "1"\n'
    cfg = parse_toml(device + f'[mqtt]\npassword = "x"\n[mqtt.tls]\nca_file = "{ca}"\n'.encode(), EdgeConfig)
    assert cfg.mqtt.port == 8883 and cfg.mqtt.tls.ca_file == ca
    assert parse_toml(device + b'[mqtt]\nport = 1883\n', EdgeConfig).mqtt.tls is None
    central = b'[central]\nsite_file = "site.toml"\ndatabase = "central.db"\n'
    assert parse_toml(central + f'[mqtt.tls]\nca_file = "{ca}"\n'.encode(), CentralConfig).mqtt.port == 8883
    for bad, what in ((b'[mqtt.tls]\nca_file = "/nonexistent/ca.crt"\n', "ca_file"),
                      (f'[mqtt.tls]\ncert_file = "{ca}"\n'.encode(), "key_file"),
                      (b'[mqtt.tls]\ninsecure = true\n', "insecure")):
        for head, model in ((device, EdgeConfig), (central, CentralConfig)):
            with pytest.raises(ConfigError, match=what):
                parse_toml(head + bad, model)
