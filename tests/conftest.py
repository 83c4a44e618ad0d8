"""Session-wide real parts: one Mosquitto on a free loopback port."""

from __future__ import annotations

import pytest

from tests.support.procs import Broker, CentralProcess, central_toml, free_port


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def central_factory(tmp_path, broker):
    """Start real central processes on ``broker``; all are stopped at the end."""
    started: list[CentralProcess] = []

    def start(*, site=None, database=None, extra: str = "", broker_port: int | None = None) -> CentralProcess:
        kwargs = {"site": site} if site else {}
        name = f"central{len(started)}"
        for attempt in range(3):
            # free_port() lets the port go again before central binds it; on a
            # busy machine something else may take it in between: another port.
            http_port = free_port()
            config = central_toml(tmp_path / name, broker_port or broker.port, http_port, database=database, extra=extra,
                                  **kwargs)
            proc = CentralProcess(config, http_port, tmp_path / f"{name}-{attempt}.log" if attempt else tmp_path / f"{name}.log")
            started.append(proc)
            try:
                return proc.start()
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def edges(broker, tmp_path):
    """Start in-process edge daemons (MockFactory buttons, FakeDisplay), each
    with its payment journal in the test's folder."""
    from tests.support.edges import RunningEdge, edge_config

    running = []

    def start(device: str, counter: str, *, broker_port: int | None = None, extra: str = "", wait: bool = True):
        if "[payments]" not in extra:
            extra += f'\n[payments]\njournal = "{tmp_path / (device + "-journal.db")}"\n'
        edge = RunningEdge(edge_config(device, counter, broker_port or broker.port, extra=extra)).start()
        running.append(edge)
        if wait:
            edge.wait_connected()
        return edge

    yield start
    for edge in running:
        edge.stop()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (tests/support/browser.py)."""
    from tests.support.browser import launch

    with launch() as b:
        yield b


@pytest.fixture
def new_page(browser):
    """``new_page(viewport=...)``: a page in a fresh context (ja-JP, Tokyo).
    A JavaScript error on any page fails the test."""
    contexts, errors = [], []

    def make(*, width: int = 1280, height: int = 800):
        context = browser.new_context(viewport={"width": width, "height": height}, locale="ja-JP",
                                      timezone_id="Asia/Tokyo")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def sim(tmp_path):
    """The ZVT terminal simulator on a pty, at a stable link in the test's folder."""
    from drivers.terminal.sim import SimTerminal

    terminal = SimTerminal(link=tmp_path / "ttyPT", ecr_answer_timeout_s=1.0, card_wait_s=0.05)
    yield terminal
    terminal.close()


def zvt_toml(sim) -> str:
    """Edge config for a ZVT terminal on ``sim``, with short timers for tests."""
    return f'[terminal]\ndriver = "zvt"\nport = "{sim.link}"\nt3_s = 2\nt4_s = 3\n'


# ---------------------------------------------------------------------------
# With MADOGUCHI_NO_SKIP=1 (./dev test, CI) everything the suite needs has
# been installed, so a skipped test means a missing part: fail the run.
import os

_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("MADOGUCHI_NO_SKIP") == "1":
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"MADOGUCHI_NO_SKIP=1: {len(_skipped)} skipped test(s) count as failures: " + ", ".join(_skipped[:5]),
            red=True,
        )
