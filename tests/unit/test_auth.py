"""Staff accounts, passwords, sessions, tokens, throttle and the route table
(central/auth.py, central/auth_web.py) on a real SQLite store, with the
clock in the test's hand.  The HTTP side against real processes and a real
browser is tests/integration/test_login.py."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bus.configfile import load_toml
from central.auth import (
    ACCESS,
    DEFAULT_SCRYPT,
    PUBLIC,
    Accounts,
    AuthError,
    ScryptParams,
    allowed_roles,
    hash_password,
    parse_hash,
    safe_next,
    verify_password,
)
from central.config import AuthSettings, QueueSettings, Site
from central.store import SCHEMA, Store

REPO = Path(__file__).resolve().parents[2]
CHEAP = ScryptParams(n=2**10, r=8, p=1)  # fast for tests; the parameters travel with the hash


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "central.db")
    yield s
    s.close()


def accounts_on(store, clock, *, hash_params: ScryptParams = CHEAP, **settings) -> Accounts:
    """Hashes made and upgraded to :data:`CHEAP` (fast), unless the test
    says otherwise."""
    return Accounts(store, AuthSettings(**settings), clock=clock, hash_params=hash_params)


# ------------------------------------------------------------------ passwords


def test_a_hash_carries_its_parameters_and_salt_and_verifies_only_its_password():
    stored = hash_password("correct horse", CHEAP)
    params, salt, digest = parse_hash(stored)
    assert stored.startswith("scrypt$n=1024,r=8,p=1$") and params == CHEAP and len(salt) == 16 and len(digest) == 32
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)
    assert hash_password("correct horse", CHEAP) != stored  # a new salt each time
    # Raising the default later: a hash made with other parameters still verifies.
    older = hash_password("pw-older-1", ScryptParams(n=2**11, r=4, p=2))
    assert verify_password("pw-older-1", older)
    assert hash_password("x" * 8).startswith("scrypt$n=16384,r=8,p=5$")  # the default


@pytest.mark.parametrize("stored", [
    "", "plain", "md5$n=1,r=1,p=1$AA$AA", "scrypt$n=1000,r=8,p=1$AAAA$AAAA",  # n not a power of two
    "scrypt$n=1024,r=8$AAAA$AAAA", "scrypt$n=2097152,r=8,p=1$AAAA$AAAA",  # missing p; far too costly
])
def test_an_unreadable_hash_never_verifies(stored):
    assert not verify_password("anything", stored)


def test_no_account_is_checked_against_a_dummy_hash():
    assert verify_password("whatever", None) is False


def test_the_dummy_hash_exists_at_start_up_so_the_first_unknown_login_costs_one_scrypt():
    """Made lazily, the first unknown login paid for a second scrypt (making
    the dummy) and took twice as long as a wrong password.  In a fresh
    interpreter (nothing has made it yet): count hashlib.scrypt calls."""
    script = (
        "import hashlib\n"
        "calls = []\n"
        "real = hashlib.scrypt\n"
        "hashlib.scrypt = lambda *a, **k: calls.append(k.get('n')) or real(*a, **k)\n"
        "from central.auth import DEFAULT_SCRYPT, parse_hash, verify_password\n"
        "import central.auth\n"
        "assert calls == [], calls  # made without running scrypt\n"
        "assert verify_password('anything', None) is False\n"
        "print(len(calls), calls[0] == DEFAULT_SCRYPT.n, parse_hash(central.auth._DUMMY)[0] == DEFAULT_SCRYPT)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "True"]


def test_a_successful_login_upgrades_a_hash_with_other_parameters(store, clock):
    acc = accounts_on(store, clock, hash_params=DEFAULT_SCRYPT)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    stored = lambda: store.conn.execute("SELECT password_hash FROM staff WHERE id = 'k0107'").fetchone()[0]
    assert parse_hash(stored())[0] == CHEAP
    token = acc.issue_token("k0107")
    assert acc.check_login("k0107", "wrong-pass")[0] is None
    assert parse_hash(stored())[0] == CHEAP  # only a successful login upgrades
    session = login(acc, "k0107", "long-enough")
    assert parse_hash(stored())[0] == DEFAULT_SCRYPT == ScryptParams(n=2**14, r=8, p=5)
    assert verify_password("long-enough", stored())
    # The password did not change: sessions and the token live on; audited.
    assert acc.session(session) is not None and acc.bearer(token) is not None
    [row] = [r for r in acc.audit(staff_id="k0107") if r["result"] == "password_rehashed"]
    assert row["detail"] == "n=1024,r=8,p=1 -> n=16384,r=8,p=5"
    again = stored()
    assert acc.check_login("k0107", "long-enough")[1] == "ok" and stored() == again  # once only
    # A hash changed in between (a new password) is not overwritten by a late upgrade.
    acc.set_password("k0107", "newer-password", params=CHEAP)
    assert acc.replace_hash("k0107", again, hash_password("long-enough", CHEAP)) is False
    assert verify_password("newer-password", stored())


# ------------------------------------------------------------------ accounts


def test_accounts_are_checked_before_anything_is_stored(store, clock):
    acc = accounts_on(store, clock)
    for staff_id, role, password, code in [
        ("Bad Id", "counter", "long-enough", "invalid"),
        ("x" * 21, "counter", "long-enough", "invalid"),
        ("k0107", "admin", "long-enough", "invalid"),
        ("k0107", "counter", "short", "weak_password"),
        ("k0107", "counter", "K0107", "weak_password"),  # the id as password
        ("k0107", "counter", None, "invalid"),
        ("kiosk-9", "kiosk", "has-a-password", "invalid"),
    ]:
        with pytest.raises(AuthError) as err:
            acc.add(staff_id, role, password=password, params=CHEAP)
        assert err.value.code == code and err.value.ja and err.value.en
    assert acc.list() == []
    acc.add("k0107", "counter", name="窓口A", password="long-enough", params=CHEAP)
    with pytest.raises(AuthError) as err:
        acc.add("k0107", "accounting", password="long-enough", params=CHEAP)
    assert err.value.code == "exists"
    [k] = acc.list()
    assert (k.id, k.name, k.role, k.disabled, k.has_password, k.has_token) == ("k0107", "窓口A", "counter", False, True, False)


def test_login_results_are_audited_and_the_audit_is_append_only(store, clock):
    acc = accounts_on(store, clock)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    acc.add("kiosk-1", "kiosk")
    assert acc.check_login("k0107", "long-enough", client="10.0.0.5")[1] == "ok"
    assert acc.check_login("k0107", "wrong-one!", client="10.0.0.5")[1] == "bad_password"
    assert acc.check_login("nobody", "long-enough", client="10.0.0.5")[1] == "unknown_account"
    assert acc.check_login("kiosk-1", "", client="10.0.0.5")[1] == "no_password"
    assert acc.check_login("<script>", "x", client="10.0.0.5")[1] == "unknown_account"
    acc.set_disabled("k0107", True)
    principal, result = acc.check_login("k0107", "long-enough", client="10.0.0.5")
    assert principal is None and result == "disabled"
    rows = acc.audit()
    assert [r["result"] for r in rows[:6]] == ["disabled", "disabled", "unknown_account", "no_password", "unknown_account",
                                               "bad_password"]
    assert rows[2]["staff_id"] is None  # a malformed id is not stored as typed
    assert {r["client"] for r in rows[:6]} - {None} == {"10.0.0.5"}
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.conn.execute("UPDATE login_audit SET result = 'ok'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.conn.execute("DELETE FROM login_audit")


# ------------------------------------------------------------------ sessions


def login(acc: Accounts, staff_id: str, password: str) -> str:
    principal, result = acc.check_login(staff_id, password)
    assert result == "ok", result
    return acc.start_session(principal)


def test_a_session_ends_after_the_idle_time_and_only_its_hash_is_stored(store, clock):
    acc = accounts_on(store, clock, idle_timeout_s=600, absolute_timeout_s=3600)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    token = login(acc, "k0107", "long-enough")
    assert len(token) >= 43
    stored = [r[0] for r in store.conn.execute("SELECT token_sha256 FROM staff_sessions")]
    assert token not in stored and len(stored[0]) == 64
    clock.advance(590)
    assert acc.session(token).staff_id == "k0107"  # used: alive again for 600 s
    clock.advance(590)
    assert acc.session(token) is not None
    clock.advance(601)
    assert acc.session(token) is None
    assert acc.sessions("k0107") == 0
    assert acc.audit(staff_id="k0107")[0]["result"] == "session_expired"


def test_a_session_ends_at_the_absolute_limit_however_busy(store, clock):
    acc = accounts_on(store, clock, idle_timeout_s=600, absolute_timeout_s=3600)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    token = login(acc, "k0107", "long-enough")
    for _ in range(11):
        clock.advance(300)
        assert acc.session(token) is not None
    clock.advance(301)  # 3,601 s after the login
    assert acc.session(token) is None


def test_last_seen_is_written_at_most_every_quarter_of_the_idle_time(store, clock):
    acc = accounts_on(store, clock, idle_timeout_s=120, absolute_timeout_s=3600)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    token = login(acc, "k0107", "long-enough")
    seen = lambda: store.conn.execute("SELECT last_seen FROM staff_sessions").fetchone()[0]
    first = seen()
    clock.advance(20)
    acc.session(token)
    assert seen() == first  # a poll every second must not write every second
    clock.advance(11)
    acc.session(token)
    assert seen() > first


def test_disabling_or_a_new_password_ends_every_session_at_once(store, clock):
    acc = accounts_on(store, clock)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    a, b = login(acc, "k0107", "long-enough"), login(acc, "k0107", "long-enough")
    assert acc.set_disabled("k0107", True) == 2
    assert acc.session(a) is None and acc.session(b) is None
    acc.set_disabled("k0107", False)
    c = login(acc, "k0107", "long-enough")
    assert acc.set_password("k0107", "another-one", params=CHEAP) == 1
    assert acc.session(c) is None
    assert acc.check_login("k0107", "long-enough")[0] is None
    d = login(acc, "k0107", "another-one")
    assert acc.end_session(d) == "k0107" and acc.session(d) is None and acc.end_session(d) is None


def test_disabling_deletes_the_api_token_and_enabling_brings_none_back(store, clock):
    acc = accounts_on(store, clock)
    acc.add("kiosk-1", "kiosk")
    acc.add("it-scripts", "it", password="long-enough", params=CHEAP)
    kiosk, scripts = acc.issue_token("kiosk-1"), acc.issue_token("it-scripts")
    acc.set_disabled("kiosk-1", True)
    assert store.conn.execute("SELECT COUNT(*) FROM staff_tokens WHERE staff_id = 'kiosk-1'").fetchone()[0] == 0
    acc.set_disabled("kiosk-1", False)
    assert acc.bearer(kiosk) is None and not acc.get("kiosk-1").has_token  # not back
    assert acc.audit(staff_id="kiosk-1")[1]["detail"] == "sessions_ended=0 tokens_deleted=1 by=cli"
    fresh = acc.issue_token("kiosk-1")
    assert acc.bearer(fresh).staff_id == "kiosk-1"
    # A new password: the staff account's token goes too (the kiosk has no password).
    assert acc.bearer(scripts) is not None
    acc.set_password("it-scripts", "another-one", params=CHEAP)
    assert acc.bearer(scripts) is None and not acc.get("it-scripts").has_token
    assert "tokens_deleted=1" in acc.audit(staff_id="it-scripts")[0]["detail"]
    assert acc.bearer(fresh) is not None  # other accounts keep theirs


def test_a_session_row_left_behind_by_a_disable_is_still_refused(store, clock):
    """Every request reads the account: even a session row that somehow
    survived a disable does not log anybody in."""
    acc = accounts_on(store, clock)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    token = login(acc, "k0107", "long-enough")
    with store.transaction() as db:
        db.execute("UPDATE staff SET disabled = 1 WHERE id = 'k0107'")
    assert acc.session(token) is None


# ------------------------------------------------------------------ API tokens


def test_tokens_are_stored_hashed_replaced_on_reissue_and_refused_when_disabled(store, clock):
    acc = accounts_on(store, clock)
    acc.add("kiosk-1", "kiosk")
    first = acc.issue_token("kiosk-1")
    assert acc.bearer(first).role == "kiosk" and acc.bearer(first).via == "token"
    assert first not in [r[0] for r in store.conn.execute("SELECT token_sha256 FROM staff_tokens")]
    second = acc.issue_token("kiosk-1")
    assert acc.bearer(first) is None and acc.bearer(second).staff_id == "kiosk-1"
    acc.set_disabled("kiosk-1", True)
    assert acc.bearer(second) is None
    assert acc.bearer("") is None and acc.bearer("x" * 500) is None
    # A token is not a session: a kiosk has no password and no browser login.
    assert acc.session(second) is None


# ------------------------------------------------------------------ throttle


def test_failures_per_account_and_address_are_throttled_within_the_window(store, clock):
    acc = accounts_on(store, clock, max_failures=3, failure_window_s=600)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    for _ in range(2):
        acc.check_login("k0107", "wrong-pass", client="10.0.0.5")
        clock.advance(10)
    assert acc.retry_after("k0107", "10.0.0.5") == 0
    acc.check_login("k0107", "wrong-pass", client="10.0.0.5")
    assert acc.retry_after("k0107", "10.0.0.5") == pytest.approx(600 - 20)
    assert acc.retry_after("k0107", "10.0.0.6") == 0  # another PC
    assert acc.retry_after("k0108", "10.0.0.5") == 0  # another account
    clock.advance(581)  # the oldest failure has left the window
    assert acc.retry_after("k0107", "10.0.0.5") == 0
    # A successful login starts the count again.
    acc.check_login("k0107", "long-enough", client="10.0.0.5")
    clock.advance(1)
    acc.check_login("k0107", "wrong-pass", client="10.0.0.5")
    assert acc.retry_after("k0107", "10.0.0.5") == 0
    # Unknown accounts are throttled the same way (guessing ids costs the same).
    for _ in range(3):
        acc.check_login("nobody", "x", client="10.0.0.7")
    assert acc.retry_after("nobody", "10.0.0.7") > 0


def test_many_account_names_from_one_address_are_capped_per_address(store, clock):
    """Password spraying: one guess per name never reaches ``max_failures``
    of any name; ``max_failures_per_client`` counts them all."""
    acc = accounts_on(store, clock, max_failures=3, max_failures_per_client=5, failure_window_s=600)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    for i in range(4):
        acc.finish_login(f"k{i:04d}", None, False, client="10.0.0.5")  # as the web login records an unknown name
        clock.advance(10)
    assert acc.throttle_check("k9999", "10.0.0.5") == (0.0, None)
    acc.check_login("k0107", "Password2026", client="10.0.0.5")  # the fifth name, a real one
    assert acc.throttle_check("k9999", "10.0.0.5") == (pytest.approx(600 - 40), "client")
    assert acc.throttle_check("k0107", "10.0.0.5")[1] == "client"  # every name, the real one too
    assert acc.throttle_check("k0107", "10.0.0.6") == (0.0, None)  # another PC
    clock.advance(561)  # the first failure has left the window
    assert acc.throttle_check("k9999", "10.0.0.5") == (0.0, None)
    with pytest.raises(ValueError, match="max_failures_per_client"):
        AuthSettings(max_failures=10, max_failures_per_client=5)


def test_a_throttle_decided_once_is_remembered_without_the_database(store, clock, caplog):
    acc = accounts_on(store, clock, max_failures=3, failure_window_s=600)
    for _ in range(3):
        acc.finish_login("k0107", None, False, client="10.0.0.5")
    wait, why = acc.throttle_check("k0107", "10.0.0.5")
    assert wait == 600 and why == "account"
    rows = lambda: store.conn.execute("SELECT COUNT(*) FROM login_audit").fetchone()[0]
    before = rows()
    with caplog.at_level(logging.INFO, logger="central.auth"):
        acc.throttle("k0107", "10.0.0.5", wait, why)  # one audit row, one warning
        statements: list[str] = []
        store.conn.set_trace_callback(statements.append)
        try:
            waits = [acc.remembered_wait("k0107", "10.0.0.5") for _ in range(100)]
        finally:
            store.conn.set_trace_callback(None)
        assert statements == []  # no database at all
        assert all(w == 600 for w in waits) and rows() == before + 1
        assert acc.remembered_wait("k0108", "10.0.0.5") == 0 and acc.remembered_wait("k0107", "10.0.0.6") == 0
        clock.advance(601)
        assert acc.remembered_wait("k0107", "10.0.0.5") == 0  # over: the next attempt asks the audit again
    assert [r["result"] for r in acc.audit()[:1]] == ["throttled"] and acc.audit()[0]["detail"] == "per_account for_s=600"
    text = caplog.text
    assert "login for (unknown account) from 10.0.0.5 throttled for 600 s" in text
    assert "100 more attempt(s) refused" in text and acc.throttled.refused_total == 100
    # Bounded: the oldest entries go first when it is full.
    acc.throttled.max_entries = 50
    for i in range(80):
        acc.throttle(f"k{i:04d}", "10.0.1.1", 60, "account")
    assert len(acc.throttled) == 50
    assert acc.remembered_wait("k0000", "10.0.1.1") == 0 and acc.remembered_wait("k0079", "10.0.1.1") > 0


def _vm_steps(store, fn) -> int:
    """SQLite virtual-machine instructions that ``fn`` runs: a measure of the
    work done that does not depend on how busy the machine is."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    store.conn.set_progress_handler(count, 1)
    try:
        fn()
    finally:
        store.conn.set_progress_handler(None, 1)
    return steps[0]


def test_the_throttle_reads_indexes_only_and_costs_the_same_with_a_huge_audit(store, clock):
    """A flood once wrote one audit row per attempt, and "the last successful
    login of this pair" read every row the pair ever had (the result was not
    in the index).  Schema 7's indexes answer each query from the index
    alone; the work measured in SQLite instructions does not grow with the
    audit."""
    acc = accounts_on(store, clock)

    def check():
        assert acc.retry_after("accounting", "10.0.0.9") == 0

    for i in range(4):
        acc.finish_login("accounting", None, False, client="10.0.0.9")
    baseline = _vm_steps(store, check)
    # What the flood of the review left behind: 12,000 rows of the same pair
    # (throttled, and successful logins of long ago), all of them older or
    # not failures.
    now = clock()
    with store.transaction() as db:
        db.executemany("INSERT INTO login_audit (at, staff_id, result, client) VALUES (?, 'accounting', ?, '10.0.0.9')",
                       [((now - timedelta(days=1, seconds=i)).isoformat(), "ok" if i % 2 else "throttled") for i in range(8_000)]
                       + [((now - timedelta(seconds=i * 0.01)).isoformat(), "throttled") for i in range(4_000)])
    flooded = _vm_steps(store, check)
    assert flooded <= baseline * 2 + 100, (baseline, flooded)
    plans = {sql: " ".join(r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql, args))
             for sql, args in [(acc.LAST_OK_SQL, ("a", "b")), (acc.PAIR_FAILURES_SQL, ("a", "b", "t", 5)),
                               (acc.CLIENT_FAILURES_SQL, ("b", "t", 20))]}
    assert "USING COVERING INDEX login_audit_by_pair" in plans[acc.LAST_OK_SQL], plans
    assert "USING COVERING INDEX login_audit_by_pair" in plans[acc.PAIR_FAILURES_SQL], plans
    assert "USING COVERING INDEX login_audit_by_client" in plans[acc.CLIENT_FAILURES_SQL], plans


# ------------------------------------------------------------------ logs


def test_a_typed_login_is_logged_only_when_it_is_an_account(store, clock, caplog):
    acc = accounts_on(store, clock)
    acc.add("k0107", "counter", password="long-enough", params=CHEAP)
    with caplog.at_level(logging.INFO, logger="central.auth"):
        # What the web login records after the password check (central/auth_web.py):
        acc.finish_login("himitsu#2026!", None, False, client="10.0.0.5")  # a password typed into the id field
        acc.finish_login("sakura-2026", None, False, client="10.0.0.5")  # well-formed, no such account
        acc.finish_login("k0107\nforged line", None, False, client="10.0.0.5")
        acc.check_login("k0107", "wrong-pass", client="10.0.0.5\nforged")
    text = caplog.text
    for leaked in ("himitsu", "sakura", "forged"):
        assert leaked not in text
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert "login refused for (malformed id) from 10.0.0.5: unknown_account" in text
    assert "login refused for (unknown account) from 10.0.0.5: unknown_account" in text
    assert "login refused for k0107 from (unknown): bad_password" in text


# ------------------------------------------------------------------ next=, the route table


@pytest.mark.parametrize("value, ok", [
    ("/console/1", True), ("/accounting/day?date=2026-11-20", True), ("/", True),
    ("//evil.example/", False), ("https://evil.example/", False), ("/\\evil.example", False),
    ("\\\\evil.example", False), ("javascript:alert(1)", False), ("", False), (None, False),
    ("/console\r\nSet-Cookie: x=1", False), ("/" + "a" * 2001, False),
])
def test_next_is_only_a_path_of_this_site(value, ok):
    assert (safe_next(value) is not None) is ok
    if ok:
        assert safe_next(value) == value


def test_the_table_matches_concrete_paths_and_allows_only_what_every_match_allows():
    assert allowed_roles("POST", "/api/v1/counters/1/call-next") == {"counter"}
    assert allowed_roles("POST", "/api/v1/counters/1/call") == {"counter"}
    assert allowed_roles("POST", "/api/v1/tickets") == {"counter", "kiosk"}
    assert allowed_roles("HEAD", "/board") == {PUBLIC}
    assert allowed_roles("GET", "/t/abc/def") == {PUBLIC}
    assert allowed_roles("GET", "/api/v1/accounting/days?limit=3") == {"accounting"}
    assert allowed_roles("DELETE", "/api/v1/tickets") is None
    assert allowed_roles("GET", "/api/v1/nothing-here") is None


def test_auth_settings_are_bounded():
    with pytest.raises(ValueError):
        AuthSettings(idle_timeout_s=3600, absolute_timeout_s=600)
    with pytest.raises(ValueError):
        AuthSettings(max_failures=0)


def test_trusted_proxies_are_addresses_or_networks_never_everyone():
    from central.config import HttpSettings

    assert HttpSettings().trusted_proxies == ()
    assert HttpSettings(trusted_proxies=["127.0.0.1", "10.0.0.0/24", "::1"]).trusted_proxies == (
        "127.0.0.1/32", "10.0.0.0/24", "::1/128")
    for bad in (["*"], ["proxy.example"], ["10.0.0.0/33"]):
        with pytest.raises(ValueError, match="trusted_proxies"):
            HttpSettings(trusted_proxies=bad)


def _app(tmp_path):
    from central.queue import QueueEngine
    from central.service import Central
    from central.web import create_app

    site = load_toml(REPO / "config" / "site.toml", Site)
    store = Store(tmp_path / "app.db")
    central = Central(QueueEngine(store, site, QueueSettings()), site, QueueSettings(), None)
    return create_app(central), store


def _routes(routes, prefix=""):
    """(method, path) of every route; FastAPI ≥ 0.12x keeps an included
    router as one entry (``original_router``), older ones copy its routes."""
    for route in routes:
        if hasattr(route, "original_router"):
            context = getattr(route, "include_context", None)
            yield from _routes(route.original_router.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif hasattr(route, "methods") and hasattr(route, "path"):
            for method in route.methods:
                yield ("GET" if method == "HEAD" else method), prefix + route.path
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r} — classify what it serves")


def test_every_route_of_the_app_is_classified_and_every_rule_has_a_route(tmp_path):
    app, store = _app(tmp_path)
    try:
        served = set(_routes(app.routes))
        assert len(served) > 50
        unclassified = sorted(served - set(ACCESS))
        assert not unclassified, f"routes with no access rule in central/auth.py ACCESS: {unclassified}"
        stale = sorted(set(ACCESS) - served)
        assert not stale, f"rules for routes that do not exist: {stale}"
        # Public: what visitors and lobby screens see, the login itself — nothing else.
        public = {p for (m, p), roles in ACCESS.items() if PUBLIC in roles}
        assert public == {"/healthz", "/api/v1/site", "/openapi.json", "/board", "/api/v1/lobby", "/api/v1/board",
                          "/t/{token:path}", "/api/v1/visit/{token:path}", "/login", "/logout"}
        assert all(roles == {PUBLIC} for roles in ACCESS.values() if PUBLIC in roles)
        # The kiosk may only issue tickets (and read the public site).
        assert [k for k, roles in ACCESS.items() if "kiosk" in roles] == [("POST", "/api/v1/tickets")]
    finally:
        store.close()


def test_a_route_nobody_classified_is_not_served(tmp_path):
    from fastapi.testclient import TestClient

    app, store = _app(tmp_path)
    try:
        @app.get("/api/v1/forgotten")
        async def forgotten():
            return {"secret": 1}

        # Overlapping a public rule (/t/{token:path}) and picked first by the
        # router: the check before routing lets it through, the one after refuses.
        @app.get("/t/x/secret")
        async def shadow():
            return {"secret": 2}

        app.router.routes.insert(0, app.router.routes.pop())
        client = TestClient(app)
        r = client.get("/api/v1/forgotten")
        assert r.status_code == 404 and "secret" not in r.text
        r = client.get("/t/x/secret")
        assert r.status_code == 403 and "secret" not in r.text
        assert client.get("/healthz").status_code == 200
    finally:
        store.close()


# ------------------------------------------------------------------ schema, secrets


def test_a_database_with_the_old_placeholder_gets_the_real_tables(tmp_path):
    from bus.sqlitedb import Database

    path = tmp_path / "old.db"
    Database(path, [*SCHEMA[:5], "CREATE TABLE auth_placeholder (id INTEGER PRIMARY KEY);"], foreign_keys=True).close()
    store = Store(path)  # at schema 6 (the placeholder): schema 7 brings the tables
    try:
        acc = Accounts(store)
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "auth_placeholder" not in tables and {"staff", "staff_sessions", "staff_tokens", "login_audit"} <= tables
        acc.add("kiosk-1", "kiosk")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store.conn.execute("DELETE FROM login_audit")
    finally:
        store.close()


def test_the_kiosk_token_is_masked_in_what_it_sees_of_the_config():
    """IT's get-config masks ``token = ...`` lines (edge/fleet.py): the kiosk's
    key is named ``token`` on purpose."""
    from edge.config import KioskSettings
    from edge.fleet import mask_secrets

    assert "token" in KioskSettings.model_fields
    masked = mask_secrets('[kiosk]\ncentral_url = "http://c"\ntoken = "Zm9vYmFyYmF6cXV4"\n')
    assert "Zm9vYmFyYmF6cXV4" not in masked and 'token = "********"' in masked
