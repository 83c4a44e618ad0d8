"""drivers.display: Screen, the Display bookkeeping, FakeDisplay, LogDisplay, and
HdmiDisplay over real HTTP (urllib / http.client, no browser)."""

from __future__ import annotations

import errno
import http.client
import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from drivers.display import (
    Display,
    DisplayError,
    FakeDisplay,
    HdmiDisplay,
    LogDisplay,
    Screen,
    format_screen,
)
from drivers.errors import DriverError

CALL_123 = Screen(
    mode="calling",
    number=123,
    counter_ja="1番窓口",
    counter_en="Counter 1",
    service_ja="住民異動",
    service_en="Change of address",
    waiting=4,
)

# --- Screen ---------------------------------------------------------------------------


def test_screen_defaults_and_to_dict_is_json():
    s = Screen(mode="idle", text_ja="お待ちの方はいません", text_en="No one is waiting")
    d = s.to_dict()
    assert d["mode"] == "idle" and d["number"] is None and d["recall"] is False
    assert json.loads(json.dumps(d, ensure_ascii=False)) == d
    assert Screen(**d) == s


@pytest.mark.parametrize("mode", ["idle", "calling", "serving", "notice", "offline"])
def test_screen_accepts_every_mode(mode):
    assert Screen(mode=mode).mode == mode


@pytest.mark.parametrize("mode", ["", "Calling", "call", None])
def test_screen_rejects_unknown_mode(mode):
    with pytest.raises(ValueError, match="mode"):
        Screen(mode=mode)


def test_screen_rejects_bad_fields():
    with pytest.raises(ValueError, match="number"):
        Screen(mode="calling", number=-1)
    with pytest.raises(TypeError, match="number"):
        Screen(mode="calling", number=True)
    with pytest.raises(TypeError, match="number"):
        Screen(mode="calling", number="123")
    with pytest.raises(ValueError, match="waiting"):
        Screen(mode="idle", waiting=-3)
    with pytest.raises(TypeError, match="counter_ja"):
        Screen(mode="idle", counter_ja=1)
    with pytest.raises(TypeError, match="recall"):
        Screen(mode="calling", recall=1)


def test_screen_is_frozen():
    with pytest.raises(AttributeError):
        CALL_123.number = 124  # type: ignore[misc]


# --- Display bookkeeping (through FakeDisplay) ------------------------------------------


def test_display_counts_versions_and_keeps_current():
    d = FakeDisplay()
    assert isinstance(d, Display)
    assert d.current is None and d.version == 0
    d.show(CALL_123)
    d.show(CALL_123)  # same screen again (a re-call) still counts
    assert d.current == CALL_123 and d.version == 2
    with pytest.raises(TypeError):
        d.show({"mode": "idle"})  # type: ignore[arg-type]
    assert d.version == 2


def test_display_close_is_idempotent_and_show_after_close_raises():
    with FakeDisplay() as d:
        d.show(CALL_123)
    assert d.closed
    d.close()
    assert d.health() == ("error", "closed", "FakeDisplay() is closed")
    with pytest.raises(DisplayError) as info:
        d.show(CALL_123)
    assert isinstance(info.value, DriverError)
    assert d.version == 1


def test_render_failure_is_wrapped_and_rolled_back():
    class Broken(Display):
        def _render(self, screen):
            if screen.number == 13:
                raise OSError("screen unplugged")

    d = Broken()
    d.show(CALL_123)
    with pytest.raises(DisplayError, match="unplugged"):
        d.show(Screen(mode="calling", number=13))
    assert d.current == CALL_123 and d.version == 1


# --- FakeDisplay -------------------------------------------------------------------------


def test_fake_history_and_clear():
    d = FakeDisplay()
    idle = Screen(mode="idle")
    d.show(idle)
    d.show(CALL_123)
    assert d.history == [idle, CALL_123]
    d.history.clear()  # a copy: the display keeps its own
    assert len(d.history) == 2
    d.clear()
    assert d.history == [] and d.current == CALL_123 and d.version == 2


def test_fake_wait_for_finds_past_screen_at_once():
    d = FakeDisplay()
    d.show(CALL_123)
    d.show(Screen(mode="idle"))
    start = time.monotonic()
    assert d.wait_for(lambda s: s.number == 123, timeout=1) == CALL_123
    assert time.monotonic() - start < 0.1


def test_fake_wait_for_waits_for_a_future_screen():
    d = FakeDisplay()
    later = Screen(mode="calling", number=7)
    timer = threading.Timer(0.05, d.show, args=(later,))
    timer.start()
    try:
        assert d.wait_for(lambda s: s.number == 7, timeout=2) is later
    finally:
        timer.join()


def test_fake_wait_for_timeout_lists_last_screens():
    d = FakeDisplay()
    for n in range(1, 8):
        d.show(Screen(mode="calling", number=n))
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        d.wait_for(lambda s: s.number == 99, timeout=0.1)
    assert 0.1 <= time.monotonic() - start < 1
    message = str(info.value)
    assert "number=7" in message and "number=3" in message and "number=2" not in message


def test_fake_wait_for_survives_clear_from_another_thread():
    d = FakeDisplay()
    d.show(Screen(mode="idle"))

    def later():
        time.sleep(0.05)
        d.clear()
        d.show(Screen(mode="calling", number=5))

    t = threading.Thread(target=later)
    t.start()
    try:
        assert d.wait_for(lambda s: s.mode == "calling", timeout=2).number == 5
    finally:
        t.join()


def test_fake_set_health():
    d = FakeDisplay()
    d.set_health("warning", "dim", "backlight failing")
    assert d.health() == ("warning", "dim", "backlight failing")
    d.set_health()
    assert d.health() == ("ok", None, None)


# --- LogDisplay ----------------------------------------------------------------------------


def test_log_display_writes_one_japanese_first_line_to_stream():
    out = io.StringIO()
    with LogDisplay("counter-1", stream=out) as d:
        d.show(CALL_123)
        d.show(Screen(mode="idle", counter_ja="1番窓口", text_ja="お待ちの方はいません", text_en="No one is waiting"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        "counter-1: [1番窓口 / Counter 1] 呼出 123 番 (住民異動 / Change of address) — お待ちの方 4 (waiting)"
    )
    assert "お待ちの方はいません / No one is waiting" in lines[1] and "待機" in lines[1]


def test_log_display_marks_recall_and_offline():
    assert "再呼出" in format_screen(Screen(mode="calling", number=5, recall=True))
    assert "接続なし" in format_screen(Screen(mode="offline"))


def test_log_display_logs_at_info_without_stream(caplog):
    with caplog.at_level(logging.INFO, logger="drivers.display.log"):
        LogDisplay("counter-2").show(CALL_123)
    [record] = [r for r in caplog.records if r.name == "drivers.display.log"]
    assert record.levelno == logging.INFO
    assert "counter-2" in record.getMessage() and "1番窓口" in record.getMessage()


# --- HdmiDisplay over HTTP -------------------------------------------------------------------


@pytest.fixture
def pressed():
    return []


@pytest.fixture
def hdmi(pressed):
    d = HdmiDisplay(
        title_ja="市民課",
        title_en="Citizens Division",
        controls={"call": ("呼出", lambda: pressed.append("call"))},
    )
    yield d
    d.close()


def get(url: str, timeout: float = 2.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers["Content-Type"], response.read()


def http_error(method: str, url: str, **kwargs) -> urllib.error.HTTPError:
    request = urllib.request.Request(url, method=method, **kwargs)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=2)
    return info.value


class SseReader:
    """Reads an /events stream event by event, with a timeout."""

    def __init__(self, port: int, timeout: float = 3.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", "/events")
        self.response = self.conn.getresponse()

    def next_event(self) -> dict[str, str]:
        """The next event's fields (comments under "comment"); skips retry-only blocks."""
        while True:
            fields: dict[str, str] = {}
            while True:
                line = self.response.readline().decode("utf-8")
                if line == "":
                    raise EOFError("stream closed")
                line = line.rstrip("\n")
                if line == "":
                    break
                key, _, value = line.partition(":")
                fields[key or "comment"] = value.removeprefix(" ")
            if "data" in fields or "comment" in fields:
                return fields

    def next_data(self) -> dict:
        while True:
            event = self.next_event()
            if "data" in event and "event" not in event:
                return json.loads(event["data"])

    def close(self):
        self.conn.close()


def test_hdmi_page_is_html_with_config_and_no_external_resources(hdmi):
    status, content_type, body = get(hdmi.url)
    assert status == 200 and content_type == "text/html; charset=utf-8"
    page = body.decode("utf-8")
    assert "EventSource" in page and "__MADOGUCHI_CONFIG__" not in page
    assert '"title_ja": "市民課"' in page and '"label": "呼出"' in page
    assert "http://" not in page and "https://" not in page
    for html_sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert html_sink not in page


def test_hdmi_config_cannot_break_out_of_the_script_element():
    with HdmiDisplay(title_ja="</script><script>alert(1)</script>") as d:
        page = get(d.url)[2].decode("utf-8")
    assert "<script>alert(1)" not in page
    assert page.count("</script>") == 2  # the config element's and the page script's


def test_hdmi_state_before_and_after_show(hdmi):
    assert json.loads(get(hdmi.url + "state")[2]) == {"version": 0, "screen": None}
    hdmi.show(CALL_123)
    status, content_type, body = get(hdmi.url + "state")
    assert status == 200 and content_type.startswith("application/json")
    assert json.loads(body) == {"version": 1, "screen": CALL_123.to_dict()}
    assert hdmi.current == CALL_123


def test_hdmi_events_sends_current_state_then_updates(hdmi):
    hdmi.show(Screen(mode="idle", text_ja="お待ちの方はいません"))
    first, second = SseReader(hdmi.port), SseReader(hdmi.port)  # two clients at once
    try:
        assert first.response.status == 200
        assert first.response.headers["Content-Type"].startswith("text/event-stream")
        for reader in (first, second):
            state = reader.next_data()
            assert state["version"] == 1 and state["screen"]["text_ja"] == "お待ちの方はいません"
        deadline = time.monotonic() + 2
        while hdmi.clients < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hdmi.clients == 2
        start = time.monotonic()
        hdmi.show(CALL_123)
        for reader in (first, second):
            assert reader.next_data() == {"version": 2, "screen": CALL_123.to_dict()}
        assert time.monotonic() - start < 0.5
    finally:
        first.close()
        second.close()


def test_hdmi_events_heartbeat(hdmi, monkeypatch):
    monkeypatch.setattr("drivers.display.hdmi.HEARTBEAT_S", 0.05)
    reader = SseReader(hdmi.port)
    try:
        reader.next_data()
        ping = reader.next_event()
        assert ping == {"comment": "ping", "event": "ping", "data": "0"}
    finally:
        reader.close()


def test_hdmi_dead_event_client_is_dropped(hdmi, monkeypatch):
    monkeypatch.setattr("drivers.display.hdmi.HEARTBEAT_S", 0.05)
    reader = SseReader(hdmi.port)
    reader.next_data()
    assert hdmi.clients == 1
    reader.response.close()
    reader.close()
    deadline = time.monotonic() + 2
    while hdmi.clients and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hdmi.clients == 0
    assert hdmi.health() == ("ok", None, None)


def test_hdmi_press_calls_the_callback(hdmi, pressed):
    request = urllib.request.Request(hdmi.url + "press/call", method="POST")
    with urllib.request.urlopen(request, timeout=2) as response:
        assert response.status == 204
    assert pressed == ["call"]


def test_hdmi_press_unknown_control_is_404(hdmi, pressed):
    error = http_error("POST", hdmi.url + "press/nope")
    assert error.code == 404 and json.loads(error.read())["error"] == "unknown_control"
    assert pressed == []


def test_hdmi_press_from_another_origin_is_refused(hdmi, pressed):
    error = http_error("POST", hdmi.url + "press/call", headers={"Origin": "http://evil.example"})
    assert error.code == 403
    request = urllib.request.Request(
        hdmi.url + "press/call", method="POST", headers={"Origin": hdmi.url.rstrip("/")}
    )
    assert urllib.request.urlopen(request, timeout=2).status == 204
    assert pressed == ["call"]


def test_hdmi_press_handler_failure_is_500_and_server_survives():
    def broken():
        raise RuntimeError("bug")

    with HdmiDisplay(controls={"call": ("呼出", broken)}) as d:
        assert http_error("POST", d.url + "press/call").code == 500
        assert get(d.url + "state")[0] == 200


def test_hdmi_without_controls_press_is_404():
    with HdmiDisplay() as d:
        assert http_error("POST", d.url + "press/call").code == 404
        assert '"controls": []' in get(d.url)[2].decode("utf-8")


def test_hdmi_huge_body_is_413(hdmi, pressed):
    conn = http.client.HTTPConnection("127.0.0.1", hdmi.port, timeout=2)
    try:
        conn.putrequest("POST", "/press/call")
        conn.putheader("Content-Length", str(10_000_000))
        conn.endheaders()  # the body is never sent: the server must not wait for it
        response = conn.getresponse()
        assert response.status == 413
    finally:
        conn.close()
    assert pressed == []
    # A small body is fine.
    request = urllib.request.Request(hdmi.url + "press/call", data=b"x" * 100, method="POST")
    assert urllib.request.urlopen(request, timeout=2).status == 204


@pytest.mark.parametrize("method,path", [("GET", "nope"), ("GET", "press/call"), ("POST", "state"), ("POST", "")])
def test_hdmi_other_routes_are_404(hdmi, method, path):
    assert http_error(method, hdmi.url + path).code == 404


def test_hdmi_close_is_idempotent_ends_streams_and_frees_the_port():
    d = HdmiDisplay()
    port = d.port
    assert d.url == f"http://127.0.0.1:{port}/"
    assert d.health() == ("ok", None, None)
    reader = SseReader(port)
    reader.next_data()
    start = time.monotonic()
    d.close()
    d.close()
    assert time.monotonic() - start < 1.5
    assert d.closed and d.health()[:2] == ("error", "server_down")
    with pytest.raises(EOFError):  # the open stream ended
        reader.next_data()
    reader.close()
    with pytest.raises(DisplayError):
        d.show(CALL_123)
    with pytest.raises(OSError) as info:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert info.value.errno == errno.ECONNREFUSED
    # Nothing listens any more: a new display can take the same port.
    with HdmiDisplay(port=port) as again:
        assert get(again.url + "state")[0] == 200


def test_hdmi_port_in_use_raises_display_error():
    with HdmiDisplay() as d, pytest.raises(DisplayError, match=str(d.port)):
        HdmiDisplay(port=d.port)


def test_hdmi_bad_controls_are_refused_before_listening():
    with pytest.raises(ValueError):
        HdmiDisplay(controls={"a/b": ("x", lambda: None)})
    with pytest.raises(ValueError):
        HdmiDisplay(controls={"a": ("x", None)})  # type: ignore[dict-item]
