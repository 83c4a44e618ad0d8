"""``madoguchi broker``: the broker's security — TLS, one credential per device,
and the ACL of design §3 (docs/security.md).

Mosquitto's **dynamic security plugin** holds the users, roles and ACLs; this
command writes its first state (``init``) and afterwards changes it over
``$CONTROL/dynamic-security/v1`` as the broker-admin user, over TLS.  Chosen
over ``password_file`` + ``acl_file`` + SIGHUP because deleting a client in the
plugin disconnects that client at once (DISCONNECT 0x98 "administrative
action"): a revoked Pi is off the bus the moment IT revokes it, without a
signal to the broker's process, without root on the broker's machine and
without a restart.

* ``init``: a CA (or the city's own), the broker's server certificate, the
  Mosquitto include file (config/mosquitto/madoguchi.conf.in), the plugin's
  first state (roles for central, IT and the broker admin; the central user),
  and the admin connection file this command uses afterwards.
* ``add-device ID`` / ``revoke-device ID``: a device user (username = client id
  = device id, the client id bound by the plugin) with its own role.
* ``add-admin NAME`` / ``revoke-admin NAME``: IT staff (``madoguchi devices``).
* ``set-password NAME`` (rotation, central's too); ``list``; ``server-cert``
  renews the broker's certificate.

A new password is printed once on stdout (alone, so a script can capture it)
or read from stdin with ``--password-stdin``; it is never logged or stored in
clear by madoguchi (the plugin keeps a salted PBKDF2-SHA512 hash).

Exit codes: 0 done; 1 the broker refused the change (reason on stderr);
69 (EX_UNAVAILABLE) the broker cannot be reached or refused the admin login;
73 (EX_CANTCREAT) ``init`` would overwrite existing files (use --force);
78 (EX_CONFIG) a bad admin file or argument value.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import logging
import os
import pwd
import secrets
import string
import sys
import threading
import uuid
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    StringConstraints,
)

from bus.configfile import ConfigError, load_toml
from bus.tls import MQTTS_PORT, TlsSettings, client_context
from bus.topics import ID_PATTERN, TopicError, Topics, check_id

logger = logging.getLogger(__name__)

EX_OK, EX_REFUSED, EX_UNAVAILABLE, EX_CANTCREAT, EX_CONFIG = 0, 1, 69, 73, 78

REPO = Path(__file__).resolve().parents[1]
#: Where the Mosquitto template is looked for: the Debian package's copy, then the source tree.
TEMPLATE_DIRS = (Path("/usr/share/madoguchi/mosquitto"), REPO / "config" / "mosquitto")
TEMPLATE = "madoguchi.conf.in"

DEFAULT_DIR = Path("/etc/madoguchi/broker")
#: The plugin rewrites its file (``<file>.new`` then rename), so it lives in
#: a folder the mosquitto user owns.
DEFAULT_DYNSEC_FILE = Path("/var/lib/mosquitto/madoguchi-dynsec.json")
PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                "/usr/local/lib/mosquitto_dynamic_security.so")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"

ADMIN_USER = "madoguchi-broker-admin"
CENTRAL_USER = "central"
ROLE_ADMIN = "madoguchi-broker-admin"
ROLE_CENTRAL = "madoguchi-central"
ROLE_IT = "madoguchi-it"
GROUP_DEVICES = "madoguchi-devices"
GROUP_IT = "madoguchi-it"
RESERVED = frozenset({ADMIN_USER, CENTRAL_USER})
#: Mosquitto 2.0's own iteration count for dynsec passwords (mosquitto_ctrl
#: uses the same).  Low, but every password we make is 192 random bits, so
#: the hash's cost is not what protects it.
PBKDF2_ITERATIONS = 101

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class BrokerAdminError(Exception):
    """A change the broker refused, or a set-up that cannot be done."""

    def __init__(self, message: str, code: int = EX_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------- policy
# The ACL of design §3, built from the topic tree's own root.  Mosquitto 2.0's
# dynamic security plugin has no %c/%u substitution (checked on 2.0.11), so
# each device gets a role of its own with its id written out.

def _acl(acltype: str, topic: str) -> dict:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _reads(topic: str) -> list[dict]:
    # Subscribing and receiving are separate checks; both default to deny.
    return [_acl("subscribePattern", topic), _acl("publishClientReceive", topic)]


def _writes(topic: str) -> list[dict]:
    return [_acl("publishClientSend", topic)]


def device_role(device: str) -> str:
    return f"madoguchi-device-{device}"


def device_acls(site: str, device: str) -> list[dict]:
    """A device writes its own status/info/health/event/res and reads its own cmd/req."""
    t = Topics(site)
    own = f"{t.base}/device/{check_id(device, 'device')}"
    return [
        *_writes(f"{own}/status"),  # birth, goodbye and the will
        *_writes(f"{own}/info"),
        *_writes(f"{own}/health"),
        *_writes(f"{own}/event/+"),
        *_writes(f"{own}/res/+"),  # answers to IT/central requests
        *_reads(f"{own}/cmd/+"),
        *_reads(f"{own}/req/+"),
        *_reads(t.central_status()),  # counters tell staff when central is away
        *_reads(t.lobby_board()),  # lobby devices show it; public anyway
    ]


def central_acls(site: str) -> list[dict]:
    t = Topics(site)
    return [
        *_reads(f"{t.base}/#"),
        *_writes(f"{t.base}/device/+/cmd/+"),
        *_writes(f"{t.base}/device/+/req/+"),
        *_writes(t.central_status()),
        *_writes(t.lobby_board()),
    ]


def it_acls(site: str) -> list[dict]:
    t = Topics(site)
    return [*_reads(f"{t.base}/#"), *_writes(f"{t.base}/device/+/req/+")]


def admin_acls() -> list[dict]:
    topic = "$CONTROL/dynamic-security/#"
    return [_acl("publishClientSend", topic), *_reads(topic)]


def _hashed(password: str) -> dict:
    """A password as the plugin stores it: PBKDF2-HMAC-SHA512, 12-byte salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": PBKDF2_ITERATIONS}


def dynsec_document(site: str, admin_password: str, central_password: str) -> dict:
    """The plugin's first state: everything denied unless a role allows it."""
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [
            {"username": ADMIN_USER, "textName": "madoguchi broker admin (madoguchi broker ...)",
             "roles": [{"rolename": ROLE_ADMIN}], **_hashed(admin_password)},
            {"username": CENTRAL_USER, "clientid": CENTRAL_USER, "textName": "madoguchi central",
             "roles": [{"rolename": ROLE_CENTRAL}], **_hashed(central_password)},
        ],
        "groups": [
            {"groupname": GROUP_DEVICES, "textName": "madoguchi devices (each has its own role)", "roles": []},
            {"groupname": GROUP_IT, "textName": "IT staff", "roles": [{"rolename": ROLE_IT}]},
        ],
        "roles": [
            {"rolename": ROLE_ADMIN, "acls": admin_acls()},
            {"rolename": ROLE_CENTRAL, "acls": central_acls(site)},
            {"rolename": ROLE_IT, "acls": it_acls(site)},
        ],
    }


def new_password() -> str:
    return secrets.token_urlsafe(24)


# ------------------------------------------------------------------ admin file

class AdminConnection(BaseModel):
    """``[broker]`` of the admin file ``init`` writes (mode 0600)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: Id
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=MQTTS_PORT, ge=1, le=65535)
    ca_file: FilePath
    username: str = ADMIN_USER
    password: SecretStr


class AdminFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: AdminConnection


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def admin_file_text(conn: dict) -> str:
    return (
        "# madoguchi broker administration (written by `madoguchi broker init`).\n"
        "# SECRET: the broker admin's password.  Keep this file root-only (0600).\n"
        "[broker]\n" + "".join(
            f"{k} = {v if isinstance(v, int) else _toml_str(v)}\n" for k, v in conn.items()
        )
    )


# ----------------------------------------------------------- the admin client

class DynsecClient:
    """A short MQTT v5 session as the broker admin: one command batch at a time.

    ``with DynsecClient(conn) as c: c.run({...}, {...})``.
    """

    def __init__(self, conn: AdminConnection, *, timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.conn = conn
        self.timeout = timeout
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._answer = threading.Event()
        self._refused: str | None = None
        self._expect: str | None = None
        self._responses: list[dict] | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"madoguchi-broker-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(conn.username, conn.password.get_secret_value())
        self.client.tls_set_context(client_context(TlsSettings(ca_file=conn.ca_file)))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._connected.is_set():
            self._refused = str(reason_code)
            self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self._refused = f"subscription to {RESPONSE_TOPIC} refused ({reason_codes[0]})"
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            logger.warning("broker: unreadable answer on %s ignored", msg.topic)
            return
        if responses and isinstance(responses[0], dict) and responses[0].get("correlationData") == self._expect:
            self._responses = responses
            self._answer.set()

    def __enter__(self) -> Self:
        where = f"{self.conn.host}:{self.conn.port}"
        try:
            self.client.connect(self.conn.host, self.conn.port, keepalive=30)
        except OSError as exc:  # refused, unreachable, or the TLS check failed
            raise BrokerAdminError(f"cannot reach the broker at {where}: {exc}", EX_UNAVAILABLE) from exc
        self.client.loop_start()
        if not self._connected.wait(self.timeout) or self._refused:
            self.close()
            raise BrokerAdminError(f"the broker at {where} refused the admin login: {self._refused or 'no answer'}",
                                   EX_UNAVAILABLE)
        self.client.subscribe(RESPONSE_TOPIC, qos=1)
        if not self._subscribed.wait(self.timeout) or self._refused:
            self.close()
            raise BrokerAdminError(f"{where}: {self._refused or 'no SUBACK'} — is the dynamic security plugin loaded?",
                                   EX_UNAVAILABLE)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def run(self, *commands: dict, allow: frozenset[str] = frozenset()) -> list[dict]:
        """Send ``commands`` in one message; return the plugin's responses.

        Raises :class:`BrokerAdminError` for the first error not in ``allow``
        (e.g. ``{"Role not found"}`` when cleaning up).
        """
        self._expect = uuid.uuid4().hex
        batch = [dict(c) for c in commands]
        batch[0]["correlationData"] = self._expect
        self._answer.clear()
        self._responses = None
        self.client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)
        if not self._answer.wait(self.timeout):
            raise BrokerAdminError("the broker did not answer (is the dynamic security plugin loaded?)", EX_UNAVAILABLE)
        responses = self._responses or []
        for command, response in zip(batch, responses):
            error = response.get("error")
            if error and error not in allow:
                raise BrokerAdminError(f"{command['command']}: {error}")
        return responses


# ------------------------------------------------------------------ operations

def add_device(c: DynsecClient, site: str, device: str, password: str) -> None:
    _check_name(device, "device")
    _must_not_exist(c, device)
    role = device_role(device)
    c.run({"command": "deleteRole", "rolename": role}, allow=frozenset({"Role not found"}))  # a half-done revoke
    c.run({"command": "createRole", "rolename": role, "textname": f"device {device}", "acls": device_acls(site, device)})
    try:
        c.run({"command": "createClient", "username": device, "password": password, "clientid": device,
               "textname": "madoguchi device", "roles": [{"rolename": role}], "groups": [{"groupname": GROUP_DEVICES}]})
    except BrokerAdminError:
        c.run({"command": "deleteRole", "rolename": role}, allow=frozenset({"Role not found"}))
        raise
    logger.info("broker: device %s added", device)


def revoke_device(c: DynsecClient, device: str) -> None:
    _check_name(device, "device")
    client = _get(c, device)
    if client is None:
        raise BrokerAdminError(f"no device {device!r} on the broker")
    if GROUP_DEVICES not in _groups(client):
        raise BrokerAdminError(f"{device!r} is not a device (use revoke-admin for IT staff)")
    # Deleting the client disconnects it at once; its role goes with it.
    c.run({"command": "deleteClient", "username": device})
    c.run({"command": "deleteRole", "rolename": device_role(device)}, allow=frozenset({"Role not found"}))
    logger.info("broker: device %s revoked and disconnected", device)


def add_admin(c: DynsecClient, name: str, password: str) -> None:
    _check_name(name, "admin")
    _must_not_exist(c, name)
    c.run({"command": "createClient", "username": name, "password": password, "textname": "IT admin",
           "groups": [{"groupname": GROUP_IT}]})
    logger.info("broker: IT admin %s added", name)


def revoke_admin(c: DynsecClient, name: str) -> None:
    _check_name(name, "admin")
    client = _get(c, name)
    if client is None or GROUP_IT not in _groups(client):
        raise BrokerAdminError(f"no IT admin {name!r} on the broker")
    c.run({"command": "deleteClient", "username": name})
    logger.info("broker: IT admin %s revoked and disconnected", name)


def set_password(c: DynsecClient, name: str, password: str) -> None:
    """A new password for a device, an IT admin or central (rotation)."""
    try:
        check_id(name, "user")
    except TopicError as exc:
        raise BrokerAdminError(str(exc), EX_CONFIG) from None
    if name == ADMIN_USER:
        raise BrokerAdminError("the broker admin's password is in the admin file: run init --force for a new set-up",
                               EX_CONFIG)
    if _get(c, name) is None:
        raise BrokerAdminError(f"no user {name!r} on the broker")
    c.run({"command": "setClientPassword", "username": name, "password": password})
    logger.info("broker: new password for %s", name)


def list_clients(c: DynsecClient) -> list[dict]:
    """[{username, kind, disabled}] sorted by kind and name."""
    data = c.run({"command": "listClients", "verbose": True})[0].get("data", {})
    rows = []
    for client in data.get("clients", []):
        groups, roles = _groups(client), {r.get("rolename") for r in client.get("roles", [])}
        if GROUP_DEVICES in groups:
            kind = "device"
        elif GROUP_IT in groups:
            kind = "it-admin"
        elif ROLE_CENTRAL in roles:
            kind = "central"
        elif ROLE_ADMIN in roles:
            kind = "broker-admin"
        else:
            kind = "other"
        rows.append({"username": client.get("username"), "kind": kind, "disabled": bool(client.get("disabled"))})
    return sorted(rows, key=lambda r: (r["kind"], r["username"]))


def _check_name(name: str, what: str) -> None:
    try:
        check_id(name, what)
    except TopicError as exc:
        raise BrokerAdminError(str(exc), EX_CONFIG) from None
    if name in RESERVED:
        raise BrokerAdminError(f"{name!r} is reserved for madoguchi itself", EX_CONFIG)


def _get(c: DynsecClient, username: str) -> dict | None:
    response = c.run({"command": "getClient", "username": username}, allow=frozenset({"Client not found"}))[0]
    return None if response.get("error") else response.get("data", {}).get("client", {})


def _groups(client: dict) -> set[str]:
    return {g.get("groupname") for g in client.get("groups", [])}


def _must_not_exist(c: DynsecClient, username: str) -> None:
    if _get(c, username) is not None:
        raise BrokerAdminError(f"{username!r} is already on the broker (revoke it first for a new password)")


# ------------------------------------------------------------------------ init

def find_plugin() -> Path | None:
    for pattern in PLUGIN_GLOBS:
        for found in sorted(glob.glob(pattern)):
            return Path(found)
    return None


def find_template() -> Path:
    for folder in TEMPLATE_DIRS:
        if (folder / TEMPLATE).is_file():
            return folder / TEMPLATE
    raise BrokerAdminError(f"{TEMPLATE} not found in {', '.join(map(str, TEMPLATE_DIRS))}", EX_CONFIG)


def render_conf(*, site: str, plugin: Path, dynsec_file: Path, tls_port: int, tls_bind: str,
                certfile: Path, keyfile: Path, cafile: Path, dev_port: int | None) -> str:
    dev = ("\n# DEVELOPMENT ONLY: plain MQTT (no TLS) on loopback.  Same users and ACLs.\n"
           f"listener {dev_port} 127.0.0.1\n") if dev_port else ""
    text = string.Template(find_template().read_text(encoding="utf-8")).substitute(
        site=site, plugin=plugin, dynsec_file=dynsec_file, tls_port=tls_port, tls_bind=tls_bind,
        certfile=certfile, keyfile=keyfile, cafile=cafile, dev_listener=dev,
    )
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip() + "\n"


def _mosquitto_ids() -> tuple[int, int] | None:
    """(uid, gid) of the mosquitto user when we are root and it exists."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def init(args: argparse.Namespace) -> dict[str, str]:
    """Write everything; return the new passwords by user (printed once by the caller)."""
    from central import broker_pki as pki

    folder: Path = args.dir
    site = check_id(args.site, "site")
    hostnames = list(dict.fromkeys([*(args.hostname or []), "localhost"]))
    ips = list(dict.fromkeys([*(args.ip or []), "127.0.0.1"]))
    plugin = args.plugin or find_plugin()
    if plugin is None:
        raise BrokerAdminError("mosquitto_dynamic_security.so not found: install mosquitto 2, or pass --plugin", EX_CONFIG)
    files = {n: folder / n for n in ("ca.crt", "ca.key", "server.crt", "server.key", "madoguchi.conf", "admin.toml")}
    existing = [str(p) for p in (*files.values(), args.dynsec_file) if p.exists()]
    if existing and not args.force:
        raise BrokerAdminError("would overwrite " + ", ".join(existing) + " (--force to replace; the CA changes too)",
                               EX_CANTCREAT)
    if (args.ca_cert is None) != (args.ca_key is None):
        raise BrokerAdminError("--ca-cert and --ca-key go together", EX_CONFIG)
    try:
        if args.ca_cert:
            ca = pki.load(args.ca_cert, args.ca_key)
        else:
            ca = pki.new_ca(f"madoguchi broker CA ({site})")
            pki.write_private(files["ca.key"], ca.key_pem())
        server = pki.issue_server(ca, hostnames, ips, days=args.days)
    except pki.PkiError as exc:
        raise BrokerAdminError(str(exc), EX_CONFIG) from None
    ca_file = args.ca_cert or files["ca.crt"]
    if not args.ca_cert:
        pki.write_public(files["ca.crt"], ca.cert_pem())
    pki.write_public(files["server.crt"], server.cert_pem() + (ca.cert_pem() if args.ca_cert else b""))
    ids = _mosquitto_ids()
    # The broker reads its key after dropping to the mosquitto user when it reloads.
    pki.write_private(files["server.key"], server.key_pem(), 0o640 if ids else 0o600)
    if ids:
        os.chown(files["server.key"], 0, ids[1])

    passwords = {ADMIN_USER: new_password(), CENTRAL_USER: new_password()}
    doc = dynsec_document(site, passwords[ADMIN_USER], passwords[CENTRAL_USER])
    dynsec_dir = args.dynsec_file.parent
    if not dynsec_dir.exists():
        dynsec_dir.mkdir(parents=True, mode=0o700)
        if ids:
            os.chown(dynsec_dir, *ids)
    pki.write_private(args.dynsec_file, json.dumps(doc, indent=1).encode())
    if ids:
        os.chown(args.dynsec_file, *ids)

    conf = render_conf(site=site, plugin=plugin, dynsec_file=args.dynsec_file, tls_port=args.port, tls_bind=args.bind,
                       certfile=files["server.crt"], keyfile=files["server.key"], cafile=ca_file,
                       dev_port=args.dev_port)
    pki.write_public(files["madoguchi.conf"], conf.encode())
    admin = {"site": site, "host": "127.0.0.1", "port": args.port, "ca_file": ca_file.resolve(),
             "username": ADMIN_USER, "password": passwords[ADMIN_USER]}
    pki.write_private(files["admin.toml"], admin_file_text(admin).encode())
    logger.info("broker: set-up for site %s written to %s", site, folder)
    return {CENTRAL_USER: passwords[CENTRAL_USER]}


def server_cert(args: argparse.Namespace) -> None:
    """Renew the broker's certificate with the CA in ``--dir``."""
    from central import broker_pki as pki

    folder: Path = args.dir
    hostnames = list(dict.fromkeys([*(args.hostname or []), "localhost"]))
    ips = list(dict.fromkeys([*(args.ip or []), "127.0.0.1"]))
    try:
        ca = pki.load(folder / "ca.crt", folder / "ca.key")
        server = pki.issue_server(ca, hostnames, ips, days=args.days)
    except pki.PkiError as exc:
        raise BrokerAdminError(str(exc), EX_CONFIG) from None
    ids = _mosquitto_ids()
    pki.write_private(folder / "server.key", server.key_pem(), 0o640 if ids else 0o600)
    if ids:
        os.chown(folder / "server.key", 0, ids[1])
    pki.write_public(folder / "server.crt", server.cert_pem())


# ------------------------------------------------------------------------- CLI

def load_admin(path: Path) -> AdminConnection:
    try:
        return load_toml(path, AdminFile).broker
    except ConfigError as exc:
        raise BrokerAdminError(str(exc), EX_CONFIG) from None


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated?)"""
    if not args.password_stdin:
        return new_password(), True
    value = sys.stdin.readline().rstrip("\r\n")
    if len(value) < 12 or value.strip() != value:
        raise BrokerAdminError("a password from stdin needs at least 12 characters and no surrounding spaces", EX_CONFIG)
    return value, False


def _announce(name: str, password: str, generated: bool) -> None:
    if generated:
        print(f"{name}: パスワードは一度だけ表示します / the password is shown once:", file=sys.stderr)
        print(password, flush=True)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.broker_cmd == "init":
            for name, password in init(args).items():
                print(f"{name}: パスワードは一度だけ表示します / the password is shown once "
                      "(central.toml [mqtt] password):", file=sys.stderr)
                print(password, flush=True)
            print(f"次に / next: {args.dir / 'madoguchi.conf'} → /etc/mosquitto/conf.d/, restart mosquitto, "
                  f"give {args.dir / 'ca.crt'} to every Pi (docs/security.md)", file=sys.stderr)
            return EX_OK
        if args.broker_cmd == "server-cert":
            server_cert(args)
            print("新しいサーバ証明書 / new server certificate written; restart mosquitto", file=sys.stderr)
            return EX_OK
        conn = load_admin(args.admin_file)
        if args.broker_cmd in ("add-device", "add-admin", "set-password"):
            password, generated = _password(args)
        with DynsecClient(conn) as c:
            if args.broker_cmd == "add-device":
                add_device(c, conn.site, args.name, password)
                _announce(args.name, password, generated)
            elif args.broker_cmd == "add-admin":
                add_admin(c, args.name, password)
                _announce(args.name, password, generated)
            elif args.broker_cmd == "set-password":
                set_password(c, args.name, password)
                _announce(args.name, password, generated)
            elif args.broker_cmd == "revoke-device":
                revoke_device(c, args.name)
                print(f"{args.name}: 取り消しました（接続も切断） / revoked and disconnected", file=sys.stderr)
            elif args.broker_cmd == "revoke-admin":
                revoke_admin(c, args.name)
                print(f"{args.name}: 取り消しました / revoked", file=sys.stderr)
            else:
                rows = list_clients(c)
                if args.json:
                    print(json.dumps(rows, ensure_ascii=False))
                else:
                    print(f"{'種別 kind':<14} {'ユーザー username':<34} 状態 state")
                    for r in rows:
                        print(f"{r['kind']:<14} {r['username']:<34} {'無効 disabled' if r['disabled'] else '有効 enabled'}")
        return EX_OK
    except BrokerAdminError as exc:
        print(f"madoguchi broker: {exc}", file=sys.stderr)
        return exc.code


def broker_command(sub) -> None:
    """Register ``madoguchi broker`` on an argparse sub-parser set."""
    p = sub.add_parser("broker", help="broker security: TLS, device credentials, ACLs (docs/security.md)")
    bsub = p.add_subparsers(dest="broker_cmd", metavar="ACTION", required=True)

    def names(q: argparse.ArgumentParser) -> None:
        q.add_argument("--hostname", action="append", metavar="NAME",
                       help="a name the Pis use for the broker (repeatable; 'localhost' is always added)")
        q.add_argument("--ip", action="append", metavar="ADDRESS",
                       help="an IP address the Pis use for the broker (repeatable; 127.0.0.1 is always added)")
        q.add_argument("--days", type=int, default=825, help="server certificate validity (default: %(default)s)")
        q.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the set-up folder (default: %(default)s)")

    q = bsub.add_parser("init", help="write the CA, the server certificate, the Mosquitto include file and first users")
    q.add_argument("--site", required=True, help="the site id (topic root madoguchi/v1/<site>/)")
    names(q)
    q.add_argument("--port", type=int, default=MQTTS_PORT, help="TLS listener port (default: %(default)s)")
    q.add_argument("--bind", default="", help="TLS listener address (default: all)")
    q.add_argument("--dev-port", type=int, metavar="PORT",
                   help="DEVELOPMENT ONLY: also a plain (no TLS) listener on 127.0.0.1:PORT, same users and ACLs")
    q.add_argument("--dynsec-file", type=Path, default=DEFAULT_DYNSEC_FILE,
                   help="the plugin's state, rewritten by the broker (default: %(default)s)")
    q.add_argument("--plugin", type=Path, help="mosquitto_dynamic_security.so (default: found under /usr/lib)")
    q.add_argument("--ca-cert", type=Path, help="use this CA (PEM) instead of making one")
    q.add_argument("--ca-key", type=Path, help="its private key (PEM, unencrypted)")
    q.add_argument("--force", action="store_true", help="replace existing files (a new CA: every Pi needs the new ca.crt)")

    q = bsub.add_parser("server-cert", help="renew the broker's certificate with the CA in --dir")
    names(q)

    for action, what in (("add-device", "a device (username = client id = device id); prints its password once"),
                         ("revoke-device", "delete a device's credential and disconnect it at once"),
                         ("add-admin", "an IT admin (reads the site's topics, sends fleet requests)"),
                         ("revoke-admin", "delete an IT admin and disconnect them"),
                         ("set-password", "a new password for a device, an IT admin or central (printed once)")):
        q = bsub.add_parser(action, help=what)
        q.add_argument("name", metavar="ID")
        if action.startswith("add-") or action == "set-password":
            q.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead")
    q = bsub.add_parser("list", help="users on the broker")
    q.add_argument("--json", action="store_true")
    for q in bsub.choices.values():
        if q.prog.split()[-1] not in ("init", "server-cert"):
            q.add_argument("--admin-file", type=Path, default=DEFAULT_DIR / "admin.toml",
                           help="the admin connection written by init (default: %(default)s)")
    p.set_defaults(func=_run)
