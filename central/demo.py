"""``madoguchi demo``: a simulated office on this machine.

Starts a private Mosquitto on a loopback port, central on a fresh SQLite
file, three counter daemons whose GPIO is simulated (gpiozero's
MockFactory), each serving its counter display page, and a ticket kiosk
(its touch page, a simulated ticket printer).  Then it plays a short
scripted morning — tickets issued, staff buttons pressed — narrating in the
terminal what every counter display shows, and keeps running until Ctrl-C so
you can press the buttons yourself on the display pages.

Everything runs as real processes talking over the real bus; the script
only does what a visitor at the kiosk (its page's API), a floor manager
(central's HTTP API) and a finger (the on-screen buttons of a mock-GPIO
counter) would do.  This module imports no edge code: the counters and the
kiosk are ``madoguchi edge`` child processes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

REPO_SITE = Path(__file__).resolve().parents[1] / "config" / "site.toml"
COUNTERS = (("1", "counter-1", "1番窓口", "Counter 1"), ("2", "counter-2", "2番窓口", "Counter 2"), ("3", "counter-3", "3番窓口", "Counter 3"))
#: Each counter's payment terminal in the demo: 1 a stand-alone terminal staff
#: operate by hand (the console records the outcome), 2 cash only, 3 the ZVT
#: simulator on a pty.  Every counter has a simulated receipt printer.
TERMINALS = {"1": "manual", "2": "none", "3": "sim"}
METHODS_JA = {"cash": "現金", "credit": "クレジット", "emoney": "電子マネー", "qr": "QRコード決済"}
GUARD_S = 0.9  # a little over the counters' double-press guard (800 ms)
KIOSK = "kiosk-1"
LOBBY = "lobby-1"


class DemoError(RuntimeError):
    pass


def demo_command(sub) -> None:
    p = sub.add_parser("demo", help="run a simulated office on this machine (broker, central, 3 counters)")
    p.add_argument("--speed", type=float, default=1.0, help="pause factor between script steps (0 = as fast as allowed)")
    p.add_argument("--http-port", type=int, default=8080, help="central's port if free (default: %(default)s)")
    p.add_argument("--display-port", type=int, default=8101, help="first counter display port if free (default: %(default)s)")
    p.add_argument("--kiosk-port", type=int, default=8102 + len(COUNTERS), help="the kiosk page's port if free (default: %(default)s)")
    p.add_argument("--site", type=Path, default=REPO_SITE, help="site file (default: the sample site in config/)")
    p.add_argument("--exit-after-script", action="store_true", help="stop after the scripted morning (for tests)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (logs, database) at exit")
    p.add_argument("--voice", choices=("auto", "speaker", "files", "off"), default="auto",
                   help="the lobby's announcements: speaker (aplay), files (WAVs in the working folder), off; "
                        "auto = speaker when ALSA has a sound card, else files (default)")
    p.add_argument("--no-auto", action="store_true", help="after the script, leave the counters to you (no simulated visitors and staff)")
    p.set_defaults(func=_run)


def _voice_mode(choice: str) -> str:
    """``--voice auto``: the speaker when ALSA lists a sound card, else files."""
    if choice != "auto":
        return choice
    try:
        cards = subprocess.run(["aplay", "-l"], check=False, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "files"
    return "speaker" if "card " in cards else "files"


def _port(preferred: int) -> int:
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise DemoError("no free port")


#: The demo's staff accounts (synthetic), all with :data:`DEMO_PASSWORD`:
#: fixed and printed, because the demo listens on loopback only and a
#: visitor to the demo should be able to log in (docs/security.md).
DEMO_STAFF = (("demo-counter", "counter", "窓口デモ"), ("demo-accounting", "accounting", "会計デモ"), ("demo-it", "it", "情報政策デモ"))
DEMO_PASSWORD = "madoguchi-demo"
#: central's base URL → {role: API token}: the script's own requests to central
#: carry the token of the role that may make them (docs/http-api.md §1).
_TOKENS: dict[str, dict[str, str]] = {}


def _http(method: str, url: str, body: dict | None = None, timeout: float = 5.0):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    for base, tokens in _TOKENS.items():
        if url.startswith(base + "/"):
            role = "accounting" if url.startswith(base + "/api/v1/accounting/") else "counter"
            headers["Authorization"] = f"Bearer {tokens[role]}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def _wait(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = exc
        time.sleep(0.1)
    raise DemoError(f"{what}: not ready after {timeout:.0f} s ({last_error})")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


class Office:
    """The processes of the simulated office."""

    def __init__(self, args, workdir: Path) -> None:
        self.args = args
        self.work = workdir
        self.children: list[Child] = []
        self.broker_port = _port(0)
        self.http_port = _port(args.http_port)
        self.displays: dict[str, int] = {}
        #: Where the simulated printers put a picture of each receipt.
        self.receipts = workdir / "receipts"
        #: ... and the kiosk's printer, of each ticket.
        self.tickets = workdir / "tickets"
        self.kiosk_port = 0
        #: The lobby Pi's loudspeaker: "speaker", "files" (WAVs here) or "off".
        self.voice = _voice_mode(args.voice)
        self.announcements = workdir / "announcements"
        self.last_press: dict[tuple[str, str], float] = {}
        #: ticket number → its token (the visitor's page, from the ticket's QR code).
        self.tokens: dict[int, str] = {}

    @property
    def central(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _spawn(self, name: str, argv: list[str]) -> Child:
        log = self.work / f"{name}.log"
        with open(log, "ab") as handle:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(argv, stdout=handle, stderr=handle, stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if mosquitto is None:
            raise DemoError("mosquitto is not installed (sudo apt-get install -y mosquitto; ./dev demo does it for you)")
        if not self.args.site.exists():
            raise DemoError(f"site file {self.args.site} not found (use --site FILE)")
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"# private broker of the demo: loopback only, no auth (development only)\n"
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        )
        self._spawn("mosquitto", [mosquitto, "-c", str(conf)])
        _wait(lambda: socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.2).close() or True, "mosquitto")

        central_toml = self.work / "central.toml"
        catalog = ""
        fees, brands = self.args.site.parent / "fees.toml", self.args.site.parent / "brands.toml"
        if fees.exists() and brands.exists():
            catalog = f'fees_file = "{fees.resolve()}"\nbrands_file = "{brands.resolve()}"\n'
        central_toml.write_text(
            f'[central]\nsite_file = "{self.args.site.resolve()}"\ndatabase = "{self.work / "central.db"}"\n{catalog}'
            f"[mqtt]\nport = {self.broker_port}\n[http]\nport = {self.http_port}\n"
            "[queue]\nno_show_grace_s = 60\n",
            encoding="utf-8",
        )
        kiosk_token = self._accounts()
        self._spawn("central", [sys.executable, "-m", "bus.cli", "central", "--config", str(central_toml)])
        _wait(lambda: _http("GET", f"{self.central}/healthz")["mqtt"] == "connected", "central")

        port = self.args.display_port
        for counter, device, name_ja, name_en in COUNTERS:
            display_port = _port(port)
            port = display_port + 1
            self.displays[counter] = display_port
            config = self.work / f"{device}.toml"
            config.write_text(
                f'[device]\nid = "{device}"\nsite = "midori"\nrole = "counter"\ncounter = "{counter}"\n'
                f'counter_name_ja = "{name_ja}"\ncounter_name_en = "{name_en}"\n'
                f"[mqtt]\nport = {self.broker_port}\n"
                '[buttons]\ndriver = "mock"\n'
                f'[display]\ndriver = "hdmi"\nport = {display_port}\ntitle_ja = "市民課"\ntitle_en = "Citizens Division"\n'
                f'[payments]\njournal = "{self.work / (device + "-journal.db")}"\n'
                'office_ja = "みどり市役所 市民課"\noffice_en = "Midori City Hall"\n'
                f'[terminal]\ndriver = "{TERMINALS[counter]}"\n'
                f'[printer]\ndriver = "fake"\nfake_dir = "{self.receipts}"\n',
                encoding="utf-8",
            )
            self._spawn(device, [sys.executable, "-m", "bus.cli", "edge", "--config", str(config)])
        self.kiosk_port = _port(self.args.kiosk_port)
        config = self.work / f"{KIOSK}.toml"
        config.write_text(
            f'[device]\nid = "{KIOSK}"\nsite = "midori"\nrole = "kiosk"\n'
            f"[mqtt]\nport = {self.broker_port}\n"
            f'[payments]\njournal = "{self.work / (KIOSK + "-payments.db")}"\n'
            f'[printer]\ndriver = "fake"\nfake_dir = "{self.tickets}"\n'
            f'[kiosk]\ncentral_url = "{self.central}"\npublic_url = "{self.central}/t/"\nport = {self.kiosk_port}\n'
            f'journal = "{self.work / (KIOSK + "-journal.db")}"\ntoken = "{kiosk_token}"\n',
            encoding="utf-8",
        )
        self._spawn(KIOSK, [sys.executable, "-m", "bus.cli", "edge", "--config", str(config)])
        if self.voice != "off":
            self._start_lobby()
        for counter, device, *_ in COUNTERS:
            _wait(lambda c=counter, d=device: self.display(c) is not None and self._online(d), f"{device}")
        if self.voice != "off":
            _wait(lambda: self._online(LOBBY), LOBBY)
        _wait(lambda: _http("GET", f"{self.kiosk}api/status")["ready"] and self._online(KIOSK), KIOSK)

    def _accounts(self) -> str:
        """The demo's staff accounts and the kiosk's, in central's database
        before central starts; the script's API tokens.  Returns the kiosk's token."""
        from central.auth import Accounts
        from central.store import Store

        # The migrations and "account added" lines belong in central's log,
        # not in the demo's narration.
        quiet = [logging.getLogger(name) for name in ("bus.sqlitedb", "central.auth")]
        levels = [log.level for log in quiet]
        for log in quiet:
            log.setLevel(logging.WARNING)
        store = Store(self.work / "central.db")
        try:
            accounts = Accounts(store)
            for staff_id, role, name in DEMO_STAFF:
                accounts.add(staff_id, role, name=name, password=DEMO_PASSWORD, by="demo")
            accounts.add(KIOSK, "kiosk", name="発券機1", by="demo")
            _TOKENS[self.central] = {"counter": accounts.issue_token("demo-counter", by="demo"),
                                     "accounting": accounts.issue_token("demo-accounting", by="demo")}
            return accounts.issue_token(KIOSK, by="demo")
        finally:
            store.close()
            for log, level in zip(quiet, levels, strict=True):
                log.setLevel(level)

    def _start_lobby(self) -> None:
        """The lobby Pi: every call announced (Open JTalk + espeak-ng), on
        this machine's speaker or, without a sound card, as WAV files."""
        if self.voice == "speaker":
            player = '["aplay", "-q", "-D", "{device}", "{wav}"]'
        else:  # the fake loudspeaker keeps each WAV; "plays" 4× faster, as the demo's morning is compressed too
            player = json.dumps([sys.executable, "-m", "drivers.voice.record", "--dir", str(self.announcements),
                                 "--speed", "4", "{wav}"])
        config = self.work / f"{LOBBY}.toml"
        config.write_text(
            f'[device]\nid = "{LOBBY}"\nsite = "midori"\nrole = "lobby"\n'
            f"[mqtt]\nport = {self.broker_port}\n"
            f'[payments]\njournal = "{self.work / (LOBBY + "-state.db")}"\n'
            f"[voice]\nplayer = {player}\n",
            encoding="utf-8",
        )
        self._spawn(LOBBY, [sys.executable, "-m", "bus.cli", "edge", "--config", str(config)])

    def wait_announced(self, timeout: float = 20.0) -> Path | None:
        """The first announcement's WAV (files mode), once the lobby plays it."""
        if self.voice != "files":
            return None
        _wait(lambda: any(self.announcements.glob("*.wav")), "the lobby's first announcement", timeout=timeout)
        return min(self.announcements.glob("*.wav"))

    @property
    def kiosk(self) -> str:
        return f"http://127.0.0.1:{self.kiosk_port}/"

    def _online(self, device: str) -> bool:
        known = _http("GET", f"{self.central}/api/v1/stats")["devices"].get(device)
        return known is not None and known["state"] == "online"

    def display(self, counter: str) -> dict | None:
        return _http("GET", f"http://127.0.0.1:{self.displays[counter]}/state")["screen"]

    def check_alive(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                tail = child.log.read_text(errors="replace")[-1500:]
                raise DemoError(f"{child.name} exited with {child.proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.proc.wait(8)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    # ---------------------------------------------------------------- actors
    def issue(self, *procedures: str) -> int:
        ticket = _http("POST", f"{self.central}/api/v1/tickets", {"procedures": list(procedures)})
        route = " → ".join(s["name_ja"] for s in ticket["stops"])
        wait = ticket.get("estimate_min")
        ja_wait = f"  (待ち時間の目安 {wait:.0f}分)" if wait is not None else ""
        en_wait = f" (expected wait {wait:.0f} min)" if wait is not None else ""
        self.tokens[ticket["number"]] = ticket["token"]
        say(f"🎫 発券 {ticket['number']:>3}番  {route}{ja_wait}",
            f"ticket {ticket['number']}: " + " → ".join(s["name_en"] for s in ticket["stops"]) + en_wait)
        return ticket["number"]

    def kiosk_issue(self, *procedures: str) -> int:
        """A visitor at the kiosk: the touch page's request, a printed ticket."""
        printed = self.tickets_printed()
        ticket = _http("POST", f"{self.kiosk}api/issue", {"procedures": list(procedures)}, timeout=30)
        if not ticket.get("printed"):
            raise DemoError(f"the kiosk did not print ticket {ticket.get('number')}: {ticket.get('message_en')}")
        _wait(lambda: self.tickets_printed() > printed, "the kiosk's ticket printed", timeout=10)
        say(f"🎫 発券機 {ticket['number']:>3}番  {' → '.join(ticket['counters'])}（券を印刷: "
            f"{max(self.tickets.glob('*.png'))}）",
            f"kiosk: ticket {ticket['number']} printed with its QR code (a picture of it is in the tickets folder)")
        return ticket["number"]

    def tickets_printed(self) -> int:
        return len(list(self.tickets.glob("*.png"))) if self.tickets.exists() else 0

    def press(self, counter: str, intent: str, expect: int | None | str = "any") -> dict:
        """Press a counter's button (its mock GPIO pin) and wait for the display."""
        key = (counter, intent)
        wait = self.last_press.get(key, 0) + GUARD_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        before = _http("GET", f"http://127.0.0.1:{self.displays[counter]}/state")["version"]
        self.last_press[key] = time.monotonic()
        _http("POST", f"http://127.0.0.1:{self.displays[counter]}/press/{intent}")
        label = {"call_next": "次の方", "recall": "再呼出", "no_show": "不在", "finish": "完了", "hold": "保留"}[intent]

        def answered():
            state = _http("GET", f"http://127.0.0.1:{self.displays[counter]}/state")
            return state if state["version"] > before and not state["screen"]["text_ja"].startswith("接続") else None

        screen = _wait(answered, f"display of counter {counter}", timeout=6)["screen"]
        shown = f"{screen['number']}番 {screen['service_ja']}" if screen["number"] else "—"
        say(f"🔘 {counter}番窓口 [{label}] → 表示: {shown}  {screen['text_ja']}", f"counter {counter} [{intent}] → shows {screen['number'] or '-'} {screen['text_en']}")
        if expect != "any" and screen["number"] != expect:
            raise DemoError(f"counter {counter} shows {screen['number']}, expected {expect}")
        return screen

    def payment(self, pid: str) -> dict:
        return _http("GET", f"{self.central}/api/v1/payments/{pid}")

    def wait_payment(self, pid: str, *states: str, timeout: float = 15.0) -> dict:
        return _wait(lambda: (p := self.payment(pid))["state"] in states and p, f"payment {pid[:8]} {'/'.join(states)}", timeout)

    def charge(self, counter: str, lines: list[tuple[str, int]], method: str, *, ticket: int | None = None,
               brand: str | None = None, tendered: int | None = None, start: bool = True) -> dict:
        """What staff do on the counter console: charge the fee lines."""
        body = {"lines": [{"code": c, "quantity": q} for c, q in lines], "method": method, "start": start}
        if ticket is not None:
            body["ticket"] = ticket
        if brand:
            body["brand"] = brand
        if tendered is not None:
            body["tendered"] = tendered
        p = _http("POST", f"{self.central}/api/v1/counters/{counter}/charges", body)
        items = "、".join(f"{line['name_ja']}×{line['quantity']}" for line in p["lines"])
        say(f"💴 {counter}番窓口 請求: {items} 計 {p['amount']:,}円（{METHODS_JA[method]}）",
            f"counter {counter} charges {p['amount']:,} yen by {method}")
        return p

    def cli(self, *argv: str) -> str:
        """Run a ``madoguchi`` accounting command on the demo's database (as accounting staff would)."""
        result = subprocess.run(
            [sys.executable, "-m", "bus.cli", argv[0], "--config", str(self.work / "central.toml"), *argv[1:]],
            check=False, capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise DemoError(f"madoguchi {' '.join(argv[:2])} failed ({result.returncode}): {result.stderr[-800:]}")
        return result.stdout

    def receipts_printed(self) -> int:
        return len(list(self.receipts.glob("*.png"))) if self.receipts.exists() else 0

    def pause(self, seconds: float) -> None:
        time.sleep(seconds * self.args.speed)
        self.check_alive()


def say(ja: str, en: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {ja}\n{'':10}{en}", flush=True)


def morning(office: Office) -> None:
    """The scripted morning.  Each press checks what the display shows."""
    say("── 8:30 開庁。来庁者が発券機で手続を選びます ──", "-- 8:30, doors open. Visitors pick their procedures at the kiosk --")
    family = office.issue("tennyu", "kokuho-kanyu", "jidoteate")  # moved in: 3 counters on one ticket
    cert = office.kiosk_issue("juminhyo")  # at the kiosk's touch page, printed
    mover = office.issue("tenkyo", "nenkin-henko")
    say(f"📱 {family}番の方のスマートフォン（整理券のQRコード）: {office.central}/t/{office.tokens[family]}",
        f"number {family}'s own page on their phone (the ticket's QR code)")
    office.pause(2)
    say("── 1番窓口が呼び出します。3番窓口も証明書の方を呼びます ──", "-- Counter 1 calls; counter 3 calls for certificates --")
    office.press("1", "call_next", expect=family)
    if office.voice != "off":
        wav = office.wait_announced()
        say(f"📢 館内放送: 「受付番号 {family} 番の方、1 番窓口へお越しください」"
            + (f"（音声 {wav}）" if wav else "（ロビーのスピーカー）"),
            f"lobby announcement: \"Ticket number {family}, please come to counter 1.\"")
    office.pause(1.5)
    office.press("3", "call_next", expect=cert)  # the family is busy at counter 1: not callable here
    office.pause(1.5)
    say("── 2番窓口: 国保は住民異動の後。まだ呼べる方はいません ──", "-- Counter 2: health insurance comes after the address change; nobody callable yet --")
    office.press("2", "call_next", expect=None)
    office.pause(2)
    late = office.issue("kokuho-kanyu")  # arrives later, for counter 2 only
    office.pause(1)
    office.press("2", "call_next", expect=late)
    office.pause(1.5)
    say("── 1番窓口の手続が終わり、同じ整理券のまま次の窓口へ ──", "-- Counter 1 is done; the same ticket moves on, keeping its place --")
    office.press("1", "finish", expect=None)
    office.pause(1)
    office.press("3", "finish", expect=None)
    office.pause(1)
    office.press("3", "call_next", expect=family)  # the family, ahead of anyone issued later
    office.pause(1.5)
    office.press("1", "call_next", expect=mover)
    office.pause(1.5)
    say("── 再呼出と不在 ──", "-- Recall and no-show --")
    office.press("1", "recall", expect=mover)
    office.pause(1.5)
    office.press("1", "no_show", expect=None)
    office.pause(1.5)
    office.press("2", "finish", expect=None)
    office.pause(1)
    office.press("2", "call_next", expect=None)  # family is at counter 3
    office.pause(1.5)
    office.press("3", "finish", expect=None)
    office.pause(1)
    office.press("2", "call_next", expect=family)
    office.pause(1.5)
    office.press("2", "hold", expect=None)  # the family fills in a form
    office.pause(1)
    _http("POST", f"{office.central}/api/v1/counters/2/call", {"number": family})
    say(f"📋 2番窓口: 保留の {family}番を番号で呼び戻し", f"counter 2 calls held number {family} back")
    office.pause(1.5)
    office.press("2", "finish", expect=None)
    ticket = _http("GET", f"{office.central}/api/v1/tickets/{family}")
    say(f"✅ {family}番: " + " → ".join(f"{s['name_ja']}({s['counter']})" for s in ticket["stops"]) + f" — {ticket['state']}",
        f"number {family} finished all {len(ticket['stops'])} counters on one ticket")
    if ticket["state"] != "done":
        raise DemoError(f"ticket {family} should be done, is {ticket['state']}")
    payments(office, cert=cert, mover=mover)


def payments(office: Office, *, cert: int, mover: int) -> None:
    """Fees at the counter: a card at 3 (the ZVT simulator), a stand-alone
    terminal at 1 (staff confirm on the console), cash with the PAY button, a
    same-day void.  Every receipt is printed by a simulated ESC/POS printer."""
    say("── 窓口での支払い: 3番窓口はクレジット（端末連動）──", "-- Paying at the counter: credit at counter 3 (connected terminal) --")
    printed = office.receipts_printed()
    p = office.charge("3", [("juminhyo", 2)], "credit", brand="visa")
    p = office.wait_payment(p["payment_id"], "approved", "declined", "unknown")
    say(f"💳 3番窓口: {p['message_ja']}（伝票番号 {p['slip_no']}、承認番号 {p['approval_no']}）",
        f"counter 3: {p['message_en']} (slip {p['slip_no']}, approval {p['approval_no']})")
    if p["state"] != "approved":
        raise DemoError(f"the card payment should be approved, is {p['state']}")
    _wait(lambda: office.receipts_printed() > printed, "the slip printed", timeout=10)
    say(f"🧾 利用控えを印刷しました: {max(office.receipts.glob('counter-3-*.png'))}",
        "the slip was printed (a picture of it is in the receipts folder)")
    office.pause(1.5)

    say("── 1番窓口: 据え置き端末（手動）。職員が端末で操作し、結果をコンソールで確定 ──",
        "-- Counter 1: stand-alone terminal; staff key it in and confirm the result on the console --")
    p = office.charge("1", [("inkan-shomei", 1)], "credit", brand="jcb")
    office.wait_payment(p["payment_id"], "pending")
    _http("POST", f"{office.central}/api/v1/payments/{p['payment_id']}/confirm",
          {"counter": "1", "approved": True, "slip_no": "0042", "approval_no": "A12345"})
    p = office.wait_payment(p["payment_id"], "approved", "declined", "unknown")
    say(f"🖐 1番窓口: {p['message_ja']}（伝票番号 {p['slip_no']} を職員が入力）",
        f"counter 1: {p['message_en']} (slip {p['slip_no']} keyed in by staff)")
    if p["state"] != "approved":
        raise DemoError(f"the manual card payment should be approved, is {p['state']}")
    office.pause(1.5)

    say("── 2番窓口: 現金。お預かり 1,000円、PAY ボタンで確定 ──", "-- Counter 2: cash; 1,000 yen handed over, PAY pressed --")
    p = office.charge("2", [("inkan-toroku", 1)], "cash", tendered=1000, start=False)
    office.wait_payment(p["payment_id"], "ready")
    _http("POST", f"http://127.0.0.1:{office.displays['2']}/press/pay")
    p = office.wait_payment(p["payment_id"], "approved")
    say(f"💴 2番窓口 [PAY]: {p['message_ja']}（領収書番号 {p['receipt_no']}）", f"counter 2 [PAY]: {p['message_en']}")
    office.pause(1.5)

    say("── 3番窓口: 同じ日の取消（職員番号と理由が必要）──", "-- Counter 3: same-day void (needs a staff id and a reason) --")
    card = next(q for q in _http("GET", f"{office.central}/api/v1/payments?counter=3") if q["state"] == "approved")
    void = _http("POST", f"{office.central}/api/v1/payments/{card['payment_id']}/void",
                 {"counter": "3", "reason": "請求誤り"})
    office.wait_payment(void["payment_id"], "approved")
    office.wait_payment(card["payment_id"], "voided")
    say(f"↩️ 3番窓口: {card['amount']:,}円を取り消しました（端末で取消、取消票を印刷）",
        f"counter 3 voided {card['amount']:,} yen at the terminal")
    summary(office)


def summary(office: Office) -> None:
    # The printers work in the background: let the last receipts come out.
    _wait(lambda: office.receipts_printed() >= 4 or None, "receipts printed", timeout=10)
    rows = _http("GET", f"{office.central}/api/v1/payments")
    taken = [r for r in rows if r["kind"] == "sale" and r["state"] == "approved"]
    by_method: dict[str, int] = {}
    for r in taken:
        by_method[r["method"]] = by_method.get(r["method"], 0) + r["amount"]
    detail = "、".join(f"{METHODS_JA[m]} {v:,}円" for m, v in sorted(by_method.items())) or "なし"
    say(f"📒 本日の収納: {len(taken)}件 {sum(by_method.values()):,}円（{detail}）、取消 "
        f"{sum(1 for r in rows if r['state'] == 'voided')}件、印刷 {office.receipts_printed()}枚",
        f"today: {len(taken)} payments, {sum(by_method.values()):,} yen; receipts printed: {office.receipts_printed()}")
    accounting(office)


def accounting(office: Office) -> None:
    """The accounting side, on last month's data (synthetic, so the demo's
    own today stays open): the day close with its workbook, the payment
    agent's statement imported and matched, settlement fees and exceptions."""
    last = date.today().replace(day=1) - timedelta(days=1)
    month = last.strftime("%Y-%m")
    say(f"── 経理: 先月（{month}）の合成データで日次締めと決済代行明細の照合 ──",
        f"-- Accounting on last month's synthetic data ({month}): day close and the agent's statement --")
    statement = office.work / f"statement-{month}.csv"
    office.cli("reconcile", "sample", "--month", month, "--fill-ledger", "40", "--faults", "--encoding", "cp932",
               "--out", str(statement))
    # The last day of last month with payments: close it, 10 yen short.
    day = _last_day_with_payments(office, last)
    sheet = _http("GET", f"{office.central}/api/v1/accounting/days/{day}?detail=false")
    expected = sheet["cash"]["expected"]
    workbook = office.work / f"dayclose-{day}.xlsx"
    office.cli("close-day", "--date", day, "--counted-cash", str(expected - 10), "--by", "demo-k1", "--xlsx", str(workbook))
    closed = _http("GET", f"{office.central}/api/v1/accounting/days/{day}?detail=false")
    say(f"📗 {day} を締めました: 収納額 {closed['summary']['revenue']['amount']:,}円、現金 予定 {expected:,}円 / "
        f"実在 {expected - 10:,}円 → 過不足 {closed['cash']['over_short']:+,}円。日次処理表: {workbook}",
        f"closed {day}: revenue {closed['summary']['revenue']['amount']:,} yen, cash over/short "
        f"{closed['cash']['over_short']:+,} yen; workbook written")
    office.cli("reconcile", "import", str(statement), "--source", "agent", "--month", month, "--by", "demo-k1")
    office.cli("reconcile", "match", "--month", month, "--by", "demo-k1")
    report = json.loads(office.cli("reconcile", "report", "--month", month, "--json"))
    s = report["summary"]
    open_buckets = {k: b for k, b in report["buckets"].items() if b["open"]}
    listed = "、".join(f"{b['ja']} {b['open']}" for b in open_buckets.values())
    say(f"🔎 明細照合 {month}: 照合 {s['matched']['count']:,}件、公金振替（手数料） {s['kokin_furikae']:,}円"
        f"（契約 {s['fees']['total']['expected']:,}円）、例外 {sum(b['open'] for b in open_buckets.values())}件（{listed}）",
        f"statement {month}: {s['matched']['count']:,} matched, fees {s['kokin_furikae']:,} yen "
        f"(contract {s['fees']['total']['expected']:,}), exceptions: " + ", ".join(f"{k} {b['open']}" for k, b in open_buckets.items()))
    say(f"📄 日次処理表 {office.central}/accounting/day?date={day}  明細照合 {office.central}/accounting/reconcile?month={month}",
        f"the day sheet and the reconciliation pages; KPIs at {office.central}/accounting/kpi")


def _last_day_with_payments(office: Office, last: date) -> str:
    for back in range(31):
        day = (last - timedelta(days=back)).isoformat()
        if _http("GET", f"{office.central}/api/v1/payments?day={day}"):
            return day
    raise DemoError(f"no synthetic payments in {last:%Y-%m}")


#: The mix of visitors after the script: (weight, procedures).  Synthetic.
VISITORS = (
    (30, ("juminhyo",)),
    (12, ("tennyu", "kokuho-kanyu")),
    (8, ("tennyu", "kokuho-kanyu", "jidoteate")),
    (8, ("tenkyo",)),
    (6, ("tenshutsu", "kokuho-kanyu", "nenkin-henko")),
    (5, ("inu-toroku",)),
    (5, ("tennyu", "inu-toroku")),
    (4, ("nenkin-henko",)),
)


def office_day(office: Office, seed: int = 17) -> None:
    """After the script: visitors keep arriving and simulated staff keep
    working, so the pages stay alive.  You can press buttons at any time."""
    rng = random.Random(seed)
    weights = [w for w, _ in VISITORS]
    next_visitor = time.monotonic()
    busy_since: dict[str, float] = {}
    while True:
        now = time.monotonic()
        active = _http("GET", f"{office.central}/api/v1/tickets?active=true")
        if now >= next_visitor and len(active) < 12:
            office.issue(*rng.choices([p for _, p in VISITORS], weights)[0])
            next_visitor = now + rng.uniform(8, 20) * office.args.speed
        for counter in _http("GET", f"{office.central}/api/v1/counters"):
            cid = counter["id"]
            if counter["ticket"] is None:
                busy_since.pop(cid, None)
                if counter["waiting"] and rng.random() < 0.5:
                    office.press(cid, "call_next")
            else:
                started = busy_since.setdefault(cid, now)
                if now - started > rng.uniform(6, 20) * office.args.speed:
                    roll = rng.random()
                    if roll >= 0.12 and cid in ("2", "3") and rng.random() < 0.6:
                        _auto_payment(office, cid, rng)
                    office.press(cid, "no_show" if roll < 0.05 else "recall" if roll < 0.12 else "finish")
                    if roll >= 0.05:
                        busy_since.pop(cid, None)
        office.pause(2)


def _auto_payment(office: Office, counter: str, rng: random.Random) -> None:
    """Simulated staff take a fee before finishing (synthetic mix)."""
    code, quantity = rng.choice((("juminhyo", 1), ("juminhyo", 2), ("inkan-shomei", 1), ("koseki-zenbu", 1), ("inu-toroku", 1)))
    method = "cash" if counter == "2" or rng.random() < 0.6 else "credit"
    try:
        p = office.charge(counter, [(code, quantity)], method, tendered=5000 if method == "cash" else None,
                          brand="visa" if method == "credit" else None)
        p = office.wait_payment(p["payment_id"], "approved", "declined", "unknown", timeout=10)
        say(f"   → {p['message_ja']}", f"   → {p['message_en']}")
    except (DemoError, urllib.error.URLError) as exc:
        say(f"   → 支払いを確認できませんでした: {exc}", f"   → payment not confirmed: {exc}")


def _run(args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="madoguchi-demo-"))
    office = Office(args, workdir)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("madoguchi デモ / demo — 起動中 starting…", flush=True)
        office.start()
        print(
            "\n  窓口の状況 overview   " + office.central + "/\n"
            + "".join(f"  {n}番窓口の表示 display  http://127.0.0.1:{office.displays[n]}/\n" for n, *_ in COUNTERS)
            + "".join(f"  {n}番窓口コンソール console  {office.central}/console/{n}\n" for n, *_ in COUNTERS)
            + f"  領収書の画像 receipts  {office.receipts}/\n"
            + f"  待合室の表示 lobby board {office.central}/board\n"
            + f"  発券機 ticket kiosk     {office.kiosk}  (券の画像 tickets {office.tickets}/)\n"
            + {"speaker": "  館内放送 announcements  このパソコンのスピーカー this machine's speaker\n",
               "files": f"  館内放送 announcements  {office.announcements}/  (WAV)\n",
               "off": ""}[office.voice]
            + f"  機器管理 IT admin      {office.central}/admin\n"
            + f"  経理 accounting        {office.central}/accounting/day  /accounting/reconcile  /accounting/kpi\n"
            + "  API (OpenAPI)        " + office.central + "/openapi.json\n"
            + f"  ログイン login         {office.central}/login  職員ID staff ID: "
            + " / ".join(s for s, *_ in DEMO_STAFF) + f"  パスワード password: {DEMO_PASSWORD}\n"
            + f"  作業フォルダ logs      {workdir}\n",
            flush=True,
        )
        morning(office)
        if args.exit_after_script:
            say("デモの台本が終わりました", "demo script finished")
            return 0
        print(
            "\nデモは動き続けます。表示ページのボタンを押してみてください。Ctrl-C で終了します。\n"
            "The office keeps running: press the buttons on the display pages. Ctrl-C to stop.",
            flush=True,
        )
        if not args.no_auto:
            office_day(office)
        while True:
            office.pause(1)
    except KeyboardInterrupt:
        print("\n終了します / stopping…", flush=True)
        return 0
    except (DemoError, urllib.error.URLError, OSError) as exc:
        print(f"デモが失敗しました / demo failed: {exc}\nlogs: {workdir}", file=sys.stderr, flush=True)
        args.keep = True
        return 1
    finally:
        office.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
