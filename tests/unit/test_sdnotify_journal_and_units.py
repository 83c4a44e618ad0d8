"""Journal fields and the systemd units (issue #7 item 4, docs/systemd.md).

The log records here go through the real path a daemon's do under systemd:
our ``PROCESS_FIELDS`` filter and systemd-python's own ``JournalHandler``,
whose last step (``systemd.journal.send``) is replaced by its documented
``sender_function`` hook, because this machine runs no journald.  What the
hook receives is exactly what would be sent: tests/integration/test_sdnotify.py
also follows real daemons' lines down to the journal's native protocol.

The unit files are checked against the code they run (exit codes, the stop
grace, the watchdog ping interval) and, where systemd-analyze exists, by
``systemd-analyze verify``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bus import sdnotify
from bus.sdnotify import PROCESS_FIELDS, journal_handler, log_fields, set_journal_fields

pytest.importorskip("systemd.journal", reason="systemd-python is not installed (the 'systemd' extra)")

REPO = Path(__file__).resolve().parents[2]
UNITS = {name: REPO / "debian" / f"madoguchi-{name}.service" for name in ("edge", "central")}


# ------------------------------------------------------------------ journal fields


class Captured:
    """The journal entries ``JournalHandler`` would send (MESSAGE + fields)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def __call__(self, message, /, **fields) -> None:  # the signature of systemd.journal.send
        # systemd.journal.send() turns every keyword into FIELD=str(value);
        # journald keeps only valid field names (upper case, digits, "_").
        entry = {k: str(v) for k, v in fields.items() if re.fullmatch(r"[A-Z0-9][A-Z0-9_]*", k)}
        entry["MESSAGE"] = message
        self.entries.append(entry)

    def with_field(self, name: str, value: str) -> list[dict[str, str]]:
        return [e for e in self.entries if e.get(name) == value]


@pytest.fixture
def journal():
    """A capturing JournalHandler on the root logger (INFO), and a clean
    set of process fields before and after."""
    saved = dict(PROCESS_FIELDS.fields)
    PROCESS_FIELDS.fields.clear()
    captured = Captured()
    handler = journal_handler("madoguchi-test", sender=captured)
    assert handler is not None
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield captured
    root.removeHandler(handler)
    root.setLevel(old_level)
    PROCESS_FIELDS.fields.clear()
    PROCESS_FIELDS.fields.update(saved)


def test_log_fields_leave_out_none_and_are_strings():
    pid = uuid.uuid4()
    assert log_fields(ticket=12, payment_id=pid) == {"TICKET": "12", "PAYMENT_ID": str(pid)}
    assert log_fields(counter="3") == {"COUNTER": "3"}
    assert log_fields() == {}
    assert set(log_fields(ticket=1, payment_id="p", counter="c")) <= set(sdnotify.FIELDS)


def test_process_fields_and_line_fields_reach_the_journal(journal):
    set_journal_fields(SITE="midori", DEVICE="counter-3", COUNTER="3")
    log = logging.getLogger("edge.payments")
    pid = str(uuid.uuid4())
    log.info("%s: payment %s sale v2 approved", "counter-3", pid, extra=log_fields(ticket=12, payment_id=pid))
    log.warning("%s: no field of its own", "counter-3")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("%s: failed", "counter-3", extra=log_fields(payment_id=pid))

    first, second, third = journal.entries
    assert first["MESSAGE"] == f"counter-3: payment {pid} sale v2 approved"
    assert {k: first[k] for k in ("SITE", "DEVICE", "COUNTER", "TICKET", "PAYMENT_ID")} == {
        "SITE": "midori", "DEVICE": "counter-3", "COUNTER": "3", "TICKET": "12", "PAYMENT_ID": pid}
    assert first["SYSLOG_IDENTIFIER"] == "madoguchi-test"
    assert first["PRIORITY"] == "6" and first["LOGGER"] == "edge.payments"
    assert "TICKET" not in second and "PAYMENT_ID" not in second and second["DEVICE"] == "counter-3"
    assert second["PRIORITY"] == "4"
    assert third["PRIORITY"] == "3" and third["PAYMENT_ID"] == pid and "ValueError: boom" in third["EXCEPTION_TEXT"]
    # journalctl PAYMENT_ID=<pid> finds both lines of this payment, nothing else.
    assert journal.with_field("PAYMENT_ID", pid) == [first, third]


def test_a_line_about_another_counter_keeps_its_own_counter(journal):
    """Central has no counter of its own: its lines name the counter they are
    about; a process field never overrides a line's field."""
    set_journal_fields(SITE="midori", COUNTER="9")
    logging.getLogger("central.service").info("counter %s calls ticket %d", "2", 7, extra=log_fields(ticket=7, counter="2"))
    (entry,) = journal.entries
    assert entry["COUNTER"] == "2" and entry["TICKET"] == "7" and entry["SITE"] == "midori"
    set_journal_fields(COUNTER=None)
    logging.getLogger("central.service").info("no counter")
    assert "COUNTER" not in journal.entries[-1]


def test_unknown_journal_field_is_refused():
    with pytest.raises(ValueError, match="unknown journal field"):
        set_journal_fields(TICKETS="1")


def test_the_queue_engine_logs_an_issued_ticket_with_its_field(journal, tmp_path):
    """Real code: the queue engine on a real SQLite file logs the issued
    ticket with TICKET (tests/integration/test_sdnotify.py follows a running
    central's calls, charges and payments too)."""
    from bus.configfile import load_toml
    from central.config import QueueSettings, Site
    from central.queue import QueueEngine
    from central.store import Store

    site = load_toml(REPO / "config" / "site.toml", Site)
    store = Store(tmp_path / "q.db")
    try:
        engine = QueueEngine(store, site, QueueSettings(), clock=lambda: datetime(2025, 4, 1, 0, 30, tzinfo=UTC))
        number = engine.issue(["juminhyo"]).number
    finally:
        store.close()
    (issued,) = journal.with_field("TICKET", str(number))
    assert issued["MESSAGE"].startswith(f"ticket {number} issued") and issued["LOGGER"] == "central.queue"


# ------------------------------------------------------------------ the units


def unit(name: str) -> dict[str, list[str]]:
    """key → values of a unit file (systemd allows a key more than once)."""
    values: dict[str, list[str]] = {}
    for line in UNITS[name].read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def one(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, [])) == 1, f"{key}: {values.get(key)}"
    return values[key][0]


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.mark.parametrize("name", UNITS)
def test_units_match_the_code(name):
    from central.app import EXIT_CONFIG as CENTRAL_CONFIG
    from edge.app import EXIT_CONFIG as EDGE_CONFIG
    from edge.fleet import EXIT_RESTART

    u = unit(name)
    assert one(u, "Type") == "notify" and one(u, "NotifyAccess") == "main"
    assert one(u, "ExecStart") == f"/usr/bin/madoguchi {name} --config /etc/madoguchi/{name}.toml"
    assert one(u, "User") == one(u, "Group") == "madoguchi"
    # Config errors are final; everything else restarts (75 included).
    assert EDGE_CONFIG == CENTRAL_CONFIG == 78
    assert one(u, "Restart") == "on-failure" and one(u, "RestartPreventExitStatus") == "78"
    for key in ("SuccessExitStatus", "RestartPreventExitStatus"):
        assert str(EXIT_RESTART) not in " ".join(u.get(key, [])).split(), key
    # The code pings every WATCHDOG_USEC / 2 (bus/sdnotify.py).
    env = {"WATCHDOG_USEC": str(int(seconds(one(u, "WatchdogSec")) * 1_000_000))}
    assert sdnotify.watchdog_interval(env, 1) == seconds(one(u, "WatchdogSec")) / 2 >= 5
    # State in /var/lib/madoguchi, which is also the working directory.
    assert one(u, "StateDirectory") == "madoguchi" and one(u, "WorkingDirectory") == "/var/lib/madoguchi"
    assert one(u, "StateDirectoryMode") == "0750" and one(u, "UMask") == "0027"
    assert one(u, "ProtectSystem") == "strict" and one(u, "NoNewPrivileges") == "yes"
    assert one(u, "StartLimitIntervalSec") == "0"


def test_edge_unit_keeps_devices_config_writes_and_stop_grace():
    from edge.app import STOP_GRACE_S
    from edge.fleet import EXIT_RESTART

    u = unit("edge")
    # The restart request restarts even under a drop-in's Restart=no.
    assert one(u, "RestartForceExitStatus") == str(EXIT_RESTART)
    # A payment at the terminal may finish after SIGTERM, with room to stop after it.
    assert one(u, "KillSignal") == "SIGTERM"
    assert seconds(one(u, "TimeoutStopSec")) >= STOP_GRACE_S + 20
    # Device access comes from the groups: nothing that would close /dev.
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "ProtectKernelTunables", "PrivateUsers",
                "ProcSubset"):
        assert key not in u, f"{key} would cut the edge off GPIO, serial, USB printers or ALSA"
    groups = set(one(u, "SupplementaryGroups").split())
    postinst = (REPO / "debian" / "madoguchi-edge.postinst").read_text()
    listed = set(re.search(r"for group in ([a-z ]+); do", postinst)[1].split())
    assert groups == listed - {"gpio"}, "gpio exists only on Raspberry Pi OS: it must come from the membership"
    assert "AF_NETLINK" in one(u, "RestrictAddressFamilies").split()  # libusb hot-plug
    assert "/etc/madoguchi" in one(u, "ReadWritePaths").split()  # IT's set-config
    assert one(u, "ConfigurationDirectoryMode") == "2770"  # what postinst sets


def test_central_unit_has_no_devices_and_reads_its_config():
    u = unit("central")
    assert one(u, "PrivateDevices") == "yes" and one(u, "ProtectClock") == "yes"
    assert "ReadWritePaths" not in u and "ConfigurationDirectory" not in u  # /etc/madoguchi stays read-only
    assert "AF_NETLINK" not in one(u, "RestrictAddressFamilies").split()
    assert seconds(one(u, "TimeoutStartSec")) >= 60


def test_systemd_analyze_verify(tmp_path):
    """No unknown key, no bad value: ``systemd-analyze verify`` prints
    nothing.  It insists that ExecStart= exists, so the copies point it at a
    stand-in; the text is otherwise the shipped one."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    stand_in = tmp_path / "madoguchi"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    copies = []
    for path in UNITS.values():
        text = path.read_text()
        assert text.count("ExecStart=/usr/bin/madoguchi ") == 1
        copy = tmp_path / path.name
        copy.write_text(text.replace("ExecStart=/usr/bin/madoguchi ", f"ExecStart={stand_in} "))
        copies.append(str(copy))
    proc = subprocess.run([analyze, "verify", "--man=no", *copies], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", (proc.stdout, proc.stderr)
    # A typo is caught (a test that cannot fail is a defect).
    bad = tmp_path / "madoguchi-typo.service"
    bad.write_text(Path(copies[0]).read_text().replace("WatchdogSec=", "WatchDogSec="))
    proc = subprocess.run([analyze, "verify", "--man=no", str(bad)], check=False, capture_output=True, text=True, timeout=60)
    assert "WatchDogSec" in proc.stderr
