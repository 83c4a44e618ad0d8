"""The edge daemon's configuration (one TOML file per Pi).

Reference for every key: docs/configuration.md.  Unknown keys stop start-up
with a "did you mean" hint; secrets never appear in logs or ``repr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

from bus.configfile import ConfigError, TimeZoneName, digest, load_toml
from bus.models import Intent
from bus.tls import MQTTS_PORT, TlsSettings
from bus.topics import ID_PATTERN

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Pin = int | Annotated[str, StringConstraints(pattern=r"^(GPIO|BOARD|BCM)?[0-9]{1,2}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSettings(Strict):
    id: Id
    site: Id
    role: Literal["counter", "kiosk", "lobby"]  # lobby: voice announcements (docs/voice.md)
    counter: Id | None = None
    #: What the display's header says, e.g. "1番窓口" / "Counter 1".
    counter_name_ja: str = Field(default="", max_length=20)
    counter_name_en: str = Field(default="", max_length=20)
    #: The office's time zone: the business day of a payment, receipt
    #: numbers, and the local times a payment terminal reports.
    timezone: TimeZoneName = "Asia/Tokyo"

    @model_validator(mode="after")
    def _counter(self) -> DeviceSettings:
        if self.role == "counter" and self.counter is None:
            raise ValueError("a counter device needs 'counter'")
        return self


class MqttSettings(Strict):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\-\[\]]+$")
    #: Left out: 1883, or 8883 with [mqtt.tls].
    port: int = Field(default=1883, ge=1, le=65535)
    #: Left out: the device id (the broker knows each device by it, docs/security.md).
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(default=10, ge=5, le=300)
    #: Reconnect back-off: random in [0, min(cap, 1.5 ** attempt)] seconds.
    reconnect_cap_s: float = Field(default=30.0, ge=1, le=600)
    #: TLS to the broker, the broker's certificate always verified (bus/tls.py).
    tls: TlsSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data):
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": MQTTS_PORT}
        return data


class ButtonsSettings(Strict):
    #: "gpio": real buttons (gpiozero's default pin factory, lgpio on a Pi 5);
    #: "mock": gpiozero's MockFactory, pressed from the display page (demo, laptop).
    driver: Literal["gpio", "mock"] = "gpio"
    #: Intent → pin (BCM numbering, or "GPIO17", "BOARD11").
    pins: dict[Intent, Pin] = Field(
        default_factory=lambda: {
            Intent.CALL_NEXT: 17,
            Intent.RECALL: 27,
            Intent.NO_SHOW: 22,
            Intent.FINISH: 23,
            Intent.HOLD: 24,
        }
    )
    #: The PAY button (starts the charge waiting at this counter); None: none fitted.
    pay: Pin | None = 25
    pull_up: bool = True
    #: Contact bounce window: edges closer than this are one press.
    debounce_ms: int = Field(default=50, ge=0, le=1000)
    #: The same button again within this time is a double press and ignored.
    repeat_guard_ms: int = Field(default=800, ge=0, le=10000)

    @model_validator(mode="after")
    def _distinct_pins(self) -> ButtonsSettings:
        pins = [str(p).removeprefix("GPIO").removeprefix("BCM") for p in (*self.pins.values(), self.pay) if p is not None]
        if len(set(pins)) != len(pins):
            raise ValueError("two buttons on the same pin")
        return self


class DisplaySettings(Strict):
    #: "hdmi": a local page for a Chromium kiosk on the counter's screen;
    #: "log": one line per change in the log (a laptop, a headless test rig).
    driver: Literal["hdmi", "log"] = "hdmi"
    host: str = "127.0.0.1"
    port: int = Field(default=8101, ge=0, le=65535)
    #: Shown small in the display's top-right corner, e.g. the office: "市民課".
    title_ja: str = Field(default="", max_length=20)
    title_en: str = Field(default="", max_length=30)


class CounterSettings(Strict):
    #: A button press must reach central and be answered within this time, or
    #: it is dropped and staff are told to press again (never replayed later).
    intent_timeout_s: float = Field(default=3.0, ge=0.5, le=30)


class PaymentSettings(Strict):
    #: The payment journal (SQLite).  Written before the terminal is touched;
    #: keep it on the Pi's own storage, never on a network share.
    journal: Path = Path("/var/lib/madoguchi/journal.db")
    #: What receipts say at the top (the office), Japanese and English.
    office_ja: str = Field(default="", max_length=30)
    office_en: str = Field(default="", max_length=40)


class TerminalSettings(Strict):
    #: "none": cash only; "zvt": a ZVT terminal on ``port``; "manual": a
    #: stand-alone terminal staff operate by hand (the console records the
    #: outcome); "sim": the built-in ZVT simulator on a pty (demo, laptop).
    driver: Literal["none", "zvt", "manual", "sim"] = "none"
    #: Serial device of a ZVT terminal, e.g. /dev/serial/by-id/usb-...
    port: str | None = Field(default=None, max_length=200)
    baudrate: int = Field(default=9600, ge=1200, le=115200)
    #: ZVT password of the terminal (6 digits).
    password: SecretStr = SecretStr("000000")
    #: ZVT timers (docs/terminal.md): T3, the wait for the terminal's first
    #: answer; T4, the longest silence while a transaction runs (the visitor
    #: looking for a card).  After T4 the outcome is unknown, never retried.
    t3_s: float = Field(default=5.0, ge=0.5, le=60)
    t4_s: float = Field(default=180.0, ge=1, le=600)
    #: The simulator's scenario (driver "sim"): approve, decline, silent, ...
    scenario: Literal["approve", "decline", "silent", "crc_corruption", "drop_after_status", "completion_lost",
                      "slow_bytes", "duplicate_frames", "cable_pulled"] = "approve"

    @model_validator(mode="after")
    def _port(self) -> TerminalSettings:
        if self.driver == "zvt" and not self.port:
            raise ValueError("terminal driver 'zvt' needs 'port'")
        if not self.password.get_secret_value().isdigit() or len(self.password.get_secret_value()) != 6:
            raise ValueError("terminal password must be 6 digits")
        return self


class PrinterSettings(Strict):
    #: "none", "usb" (vendor_id/product_id), "serial" (port), "network" (host:port 9100),
    #: "fake": a simulated printer on loopback (demo, laptop) that saves each job
    #: as a PNG in ``fake_dir``.
    driver: Literal["none", "usb", "serial", "network", "fake"] = "none"
    #: "kanji": a Japanese-model printer (Shift_JIS kanji mode); "image": any
    #: ESC/POS printer, the text is rendered with a CJK font and sent as an image.
    mode: Literal["kanji", "image"] = "kanji"
    vendor_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    product_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    port: str | None = Field(default=None, max_length=200)
    baudrate: int = Field(default=38400, ge=1200, le=115200)
    host: str | None = Field(default=None, max_length=253)
    tcp_port: int = Field(default=9100, ge=1, le=65535)
    fake_dir: Path | None = None
    #: Paper width in half-width columns: 42 for 80 mm, 32 for 58 mm.
    columns: int = Field(default=42, ge=24, le=64)

    @model_validator(mode="after")
    def _connection(self) -> PrinterSettings:
        need = {"usb": ("vendor_id", "product_id"), "serial": ("port",), "network": ("host",)}.get(self.driver, ())
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"printer driver {self.driver!r} needs {', '.join(missing)}")
        return self


class KioskSettings(Strict):
    """The kiosk role's [kiosk] section (docs/kiosk.md)."""

    #: central's HTTP API, e.g. "http://central.local:8000" (the kiosk POSTs /api/v1/tickets).
    central_url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", max_length=200)
    #: The QR on the ticket is this + the ticket's token, e.g. "https://madoguchi.example/t/".
    public_url: str = Field(pattern=r"^https?://[^\s?#]+$", max_length=200)
    #: The kiosk's API token for central (``madoguchi staff add kiosk-1 --role kiosk``
    #: prints it), sent as ``Authorization: Bearer``; it may only issue tickets.
    #: Named ``token`` so that IT's get-config shows it masked (edge/fleet.py).
    token: SecretStr | None = None
    #: The local touch page (Chromium in kiosk mode on the same Pi).
    host: str = "127.0.0.1"
    port: int = Field(default=8102, ge=0, le=65535)
    #: How long one request to central may take before it is sent again (same Idempotency-Key).
    request_timeout_s: float = Field(default=5.0, ge=0.5, le=30)
    #: How long the visitor waits in all (retries with the same key) before being told to ask staff.
    issue_deadline_s: float = Field(default=15.0, ge=1, le=25)
    #: The kiosk's ticket journal (SQLite): the key of each request before it is
    #: sent, each issued ticket until it is on paper.  On the Pi's own storage.
    journal: Path = Path("/var/lib/madoguchi/kiosk.db")
    #: After a restart, a request whose answer never came is sent again (same
    #: key) only if it is younger than this; older ones are given up and logged.
    resume_within_s: float = Field(default=300.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _deadline(self) -> KioskSettings:
        if self.issue_deadline_s < self.request_timeout_s:
            raise ValueError("kiosk issue_deadline_s must be at least request_timeout_s")
        return self


class VoiceSettings(Strict):
    """The lobby role's [voice] section (docs/voice.md)."""

    #: Open JTalk's dictionary folder (Debian open-jtalk-mecab-naist-jdic).
    dictionary: Path = Path("/var/lib/mecab/dic/open-jtalk/naist-jdic")
    #: The HTS voice (Debian contrib hts-voice-nitech-jp-atr503-m001, or any .htsvoice).
    voice: Path = Path("/usr/share/hts-voice/nitech-jp-atr503-m001/nitech_jp_atr503_m001.htsvoice")
    #: Japanese speech rate (Open JTalk -r; 1.0 normal, 0.9 a little slower).
    speed: float = Field(default=1.0, ge=0.5, le=2.0)
    #: The English sentence after the Japanese (espeak-ng), and its voice.
    english: bool = True
    espeak_voice: str = Field(default="en-us", pattern=r"^[a-z]{2,3}(-[a-z0-9]{1,8}){0,3}(\+[a-z0-9]{1,16})?$")
    #: The two-tone chime (ピンポン) before each announcement.
    chime: bool = True
    #: Linear gain of the whole announcement after normalising to -1 dBFS.
    volume: float = Field(default=0.8, gt=0, le=1.0)
    #: The ALSA device given to aplay -D: "default", "plughw:CARD=Headphones", "null" ...
    device: str = Field(default="default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:,=\-]+$")
    #: The player; "{device}" and "{wav}" are replaced.  Another command (e.g. the
    #: recording fake, python -m drivers.voice.record) for machines without sound.
    player: list[Annotated[str, StringConstraints(min_length=1, max_length=300)]] = Field(
        default_factory=lambda: ["aplay", "-q", "-D", "{device}", "{wav}"], min_length=1, max_length=20)
    #: Announcements that may wait while one plays; one more drops the oldest
    #: waiting first call (a recall is kept over a first call).
    max_queue: int = Field(default=5, ge=1, le=50)
    #: The same call (ticket, counter, recall) again within this time is not repeated.
    dedupe_s: float = Field(default=5.0, ge=0, le=120)
    #: A call older than this when central published the board is not announced
    #: (the board re-sent after a restart is not a new call).
    max_age_s: float = Field(default=30.0, ge=1, le=600)

    @model_validator(mode="after")
    def _player(self) -> VoiceSettings:
        if not any("{wav}" in arg for arg in self.player):
            raise ValueError("voice player needs an argument with {wav} (where the WAV file goes)")
        return self


class EdgeConfig(Strict):
    device: DeviceSettings
    mqtt: MqttSettings = MqttSettings()
    buttons: ButtonsSettings = ButtonsSettings()
    display: DisplaySettings = DisplaySettings()
    counter: CounterSettings = CounterSettings()
    payments: PaymentSettings = PaymentSettings()
    terminal: TerminalSettings = TerminalSettings()
    printer: PrinterSettings = PrinterSettings()
    kiosk: KioskSettings | None = None
    voice: VoiceSettings = VoiceSettings()

    @model_validator(mode="after")
    def _kiosk(self) -> EdgeConfig:
        if self.device.role == "kiosk" and self.kiosk is None:
            raise ValueError("a kiosk device needs a [kiosk] section")
        return self

    @model_validator(mode="after")
    def _lobby(self) -> EdgeConfig:
        if self.device.role == "lobby" and self.device.counter is not None:
            raise ValueError("a lobby device has no 'counter' (it announces the calls of every counter)")
        return self


def load(path: str | Path) -> tuple[EdgeConfig, str]:
    """Load and validate an edge config; returns it and its hash (for info)."""
    path = Path(path)
    config = load_toml(path, EdgeConfig)
    return config, digest(path.read_bytes())


__all__ = ["ConfigError", "EdgeConfig", "load"]
