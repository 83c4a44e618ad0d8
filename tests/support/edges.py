"""Edge daemons running in this process on gpiozero's MockFactory, each on
its own asyncio loop in its own thread (as each would be its own process on
its own Pi), with a :class:`FakeDisplay` to read what the counter shows."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import threading
import time

from gpiozero.pins.mock import MockFactory

from bus.configfile import parse_toml
from drivers.buttons import press
from drivers.display import FakeDisplay, Screen
from edge.app import EdgeDaemon
from edge.config import EdgeConfig


def edge_config(device: str, counter: str, broker_port: int, *, site: str = "midori", extra: str = "") -> EdgeConfig:
    if "[payments]" not in extra:
        # Each edge its own journal (the default lives in /var/lib/madoguchi),
        # removed when the test process ends.
        folder = tempfile.mkdtemp(prefix="madoguchi-journal-")
        atexit.register(shutil.rmtree, folder, True)
        extra += f'\n[payments]\njournal = "{folder}/journal.db"\n'
    text = f"""
[device]
id = "{device}"
site = "{site}"
role = "counter"
counter = "{counter}"
counter_name_ja = "{counter}番窓口"
counter_name_en = "Counter {counter}"
[mqtt]
port = {broker_port}
keepalive_s = 5
reconnect_cap_s = 1
[buttons]
driver = "mock"
[display]
driver = "log"
{extra}
"""
    return parse_toml(text.encode(), EdgeConfig)


class RunningEdge:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.factory = MockFactory()
        self.display = FakeDisplay()
        self.daemon = EdgeDaemon(config, pin_factory=self.factory, display=self.display)
        self.exit_code: int | None = None
        self._pressed_at: dict[str, float] = {}
        self._presses = 0
        self._thread = threading.Thread(target=self._run, name=f"edge-{config.device.id}", daemon=True)

    def _run(self) -> None:
        self.exit_code = asyncio.run(self.daemon.run())

    def start(self) -> RunningEdge:
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> RunningEdge:
        self.wait(lambda: self.daemon.role is not None and self.daemon.session.connected and self.daemon.role.central_online, timeout, "connected with central online")
        return self

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        raise TimeoutError(f"{self.config.device.id}: not {what} after {timeout} s")

    def press(self, intent: str, *, patient: bool = True, **kwargs) -> None:
        """Press a button the way a finger does: the mock pin goes low, then high.

        ``patient``: like a person, wait until the double-press guard of this
        button has passed since its last press (False: press at once).  The
        display history is cleared first, so :meth:`shows` waits for what the
        press caused, not for an older screen."""
        pin = {i.value: p for i, p in self.config.buttons.pins.items()}[intent]
        if patient and intent in self._pressed_at:
            guard = self.config.buttons.repeat_guard_ms / 1000 + 0.05
            time.sleep(max(0.0, self._pressed_at[intent] + guard - time.monotonic()))
        self.display.clear()
        self._pressed_at[intent] = time.monotonic()
        self._presses += 1
        press(self.factory, pin, pull_up=self.config.buttons.pull_up, **kwargs)

    def shows(self, number: int | None, timeout: float = 5.0, mode: str | None = None) -> Screen:
        """Wait until the last press was answered (or dropped) and the display
        shows ``number`` (None = no number); return that screen."""
        role = self.daemon.role

        def done() -> bool:
            s = self.display.current
            return (
                role.stats["pressed"] >= self._presses
                and not role.pending
                and s is not None
                and s.number == number
                and (mode is None or s.mode == mode)
            )

        try:
            self.wait(done, timeout, f"showing {number} ({mode or 'any mode'})")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last screens: {self.display.history[-3:]}") from None
        return self.display.current

    @property
    def screen(self) -> Screen | None:
        return self.display.current

    def stop(self) -> None:
        self.daemon.request_stop()
        self._thread.join(10)


#: The kiosk's QR codes lead here in tests (never opened).
PUBLIC = "https://madoguchi.example/t/"


def kiosk_toml(broker_port: int, printer_port: int, central_url: str, workdir, *, device: str,
               port: int = 0, extra: str = "", token: str = "") -> str:
    """An edge TOML for role "kiosk" with a network printer (the fake) and its
    journals in ``workdir``.  ``token``: the kiosk account's API token (central's
    test account "kiosk")."""
    return f"""
[device]
id = "{device}"
site = "midori"
role = "kiosk"
[mqtt]
port = {broker_port}
keepalive_s = 5
reconnect_cap_s = 1
[payments]
journal = "{workdir / 'payments.db'}"
office_ja = "みどり市役所"
[printer]
driver = "network"
host = "127.0.0.1"
tcp_port = {printer_port}
mode = "kanji"
[kiosk]
central_url = "{central_url}"
public_url = "{PUBLIC}"
port = {port}
journal = "{workdir / 'kiosk.db'}"
token = "{token}"
{extra}
"""
