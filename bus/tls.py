"""TLS to the broker, shared by the edge and central clients (docs/security.md).

One ``[mqtt.tls]`` section in either config turns TLS on::

    [mqtt]
    host = "broker.midori.example"
    port = 8883
    password = "..."
    [mqtt.tls]
    ca_file = "/etc/madoguchi/broker-ca.crt"

The broker's certificate is always verified against ``ca_file`` (or the
system's trust store when it is left out) and its name is always checked
against ``host``.  There is deliberately no switch to turn either check off:
a development set-up uses the plain loopback listener instead
(``madoguchi broker init --dev-port``), never an unverified TLS connection.
"""

from __future__ import annotations

import ssl

from pydantic import BaseModel, ConfigDict, FilePath, model_validator

#: Port of MQTT over TLS (IANA "secure-mqtt").
MQTTS_PORT = 8883


class TlsSettings(BaseModel):
    """``[mqtt.tls]``: how a client checks the broker (and optionally proves itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The CA that signed the broker's certificate (PEM).  Left out: the
    #: system's trust store (a city's own PKI already installed on the machine).
    ca_file: FilePath | None = None
    #: A client certificate and its key (PEM), for a broker that asks for one.
    #: Passwords stay the identity madoguchi's broker set-up checks.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """An SSL context for an MQTT client: TLS 1.2 or newer, the broker's
    certificate verified, its host name checked.

    Raises ``ssl.SSLError``/``OSError`` if a file cannot be loaded.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file) if settings.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context() already sets these; stated so that nobody
    # "simplifies" them away.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.cert_file is not None:
        ctx.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return ctx
