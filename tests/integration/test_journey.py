"""One ticket, three counters, real everything: Mosquitto, central as a
process with its SQLite file, three edge daemons whose buttons are pressed
on gpiozero's MockFactory and whose displays we read."""

from __future__ import annotations

import signal
import time

import pytest


def engaged_counters(central, number: int) -> list[str]:
    return [c["id"] for c in central.get("/api/v1/counters") if c["ticket"] == number]


def showing(edges, number: int) -> list[str]:
    return [
        e.config.device.counter
        for e in edges
        if e.screen is not None and e.screen.number == number and e.screen.mode in ("calling", "serving")
    ]


@pytest.fixture
def office(central_factory, edges):
    central = central_factory()
    counters = [edges(f"counter-{n}", str(n)) for n in (1, 2, 3)]
    return central, counters


def test_three_stops_travel_1_2_3_in_order_without_being_overtaken(office):
    central, (c1, c2, c3) = office
    ticket = central.issue("tennyu", "kokuho-kanyu", "jidoteate")
    a = ticket["number"]
    assert [s["service"] for s in ticket["stops"]] == ["juminido", "kokuho", "kodomo"]

    # Counter 1 calls: the display shows A, calling.
    c1.press("call_next")
    screen = c1.shows(a, mode="calling")
    assert screen.service_ja == "住民異動"

    # A visitor who came later, for 国保 only.
    b = central.issue("kokuho-kanyu")["number"]

    # While A is at counter 1, counters 2 and 3 cannot call A.
    c3.press("call_next")
    idle = c3.shows(None)
    assert idle.text_ja == "お待ちの方はいません"
    assert engaged_counters(central, a) == ["1"]
    assert showing([c1, c2, c3], a) == ["1"]

    # Counter 1 finishes: A moves on, and keeps its place at counter 2,
    # ahead of B, who was issued later.
    c1.press("finish")
    c1.shows(None)
    # Counter 2's staff see A join their queue (B and A waiting) without pressing.
    c2.display.wait_for(lambda s: s.waiting == 2, timeout=2)
    c2.press("call_next")
    assert c2.shows(a, mode="calling").service_ja == "国民健康保険"
    assert showing([c1, c2, c3], a) == ["2"]

    # Counter 3 still can't have A (A is at counter 2).
    c3.press("call_next")
    c3.shows(None)
    assert engaged_counters(central, a) == ["2"]

    # Counter 2 calls next: that finishes A there, and calls B.
    c2.press("call_next")
    c2.shows(b, mode="calling")
    c3.press("call_next")
    assert c3.shows(a, mode="calling").service_ja == "児童手当・こども医療"
    assert showing([c1, c2, c3], a) == ["3"]
    c3.press("finish")
    c3.shows(None)

    final = central.get(f"/api/v1/tickets/{a}")
    assert final["state"] == "done"
    assert [(s["service"], s["state"], s["counter"]) for s in final["stops"]] == [
        ("juminido", "done", "1"),
        ("kokuho", "done", "2"),
        ("kodomo", "done", "3"),
    ]


def test_a_bouncing_or_double_pressed_button_calls_once(office):
    central, (c1, _, _) = office
    first = central.issue("juminhyo")["number"]
    second = central.issue("juminhyo")["number"]
    c1.press("call_next", bounces=6)  # a chattering contact
    c1.shows(first)
    time.sleep(0.2)  # past the 50 ms contact debounce, well within the 800 ms guard
    c1.press("call_next", patient=False)  # an impatient second press
    time.sleep(1.0)
    assert c1.screen.number == first
    stats = central.get("/api/v1/stats")["handled"]
    assert stats.get("intent_call_next") == 1
    assert central.get(f"/api/v1/tickets/{second}")["stops"][0]["state"] == "waiting"
    assert c1.daemon.role.stats["ignored_repeat"] == 1


def test_recall_no_show_and_hold_from_the_buttons(office):
    central, (c1, _, _) = office
    a = central.issue("juminhyo")["number"]
    b = central.issue("juminhyo")["number"]
    c1.press("call_next")
    c1.shows(a)
    c1.press("recall")
    assert c1.display.wait_for(lambda s: s.recall and s.number == a).mode == "calling"
    c1.press("no_show")  # A did not come: away for the grace period
    c1.shows(None)
    assert central.get(f"/api/v1/tickets/{a}")["stops"][0]["state"] == "away"
    c1.press("call_next")
    c1.shows(b)
    c1.press("hold")  # B goes to fill in a form
    c1.shows(None)
    assert central.get(f"/api/v1/tickets/{b}")["stops"][0]["state"] == "held"
    # The held ticket comes back when staff call it by number (console/API).
    central.post("/api/v1/counters/1/call", {"number": b})
    c1.display.wait_for(lambda s: s.number == b and s.mode == "calling")


def test_kill_9_of_central_mid_day_loses_no_ticket(central_factory, edges, tmp_path):
    central = central_factory()
    c1 = edges("counter-1", "1")
    c2 = edges("counter-2", "2")
    issued = [central.issue("tennyu", "kokuho-kanyu")["number"] for _ in range(3)]
    issued.append(central.issue("juminhyo")["number"])
    c1.press("call_next")
    c1.shows(issued[0])
    c1.press("finish")
    c1.shows(None)
    c2.press("call_next")
    c2.shows(issued[0])
    before = central.get("/api/v1/tickets")
    counters_before = {c["id"]: c["ticket"] for c in central.get("/api/v1/counters")}

    central.kill(signal.SIGKILL)
    restarted = type(central)(central.config, central.http_port, central.log_path).start()
    try:
        after = restarted.get("/api/v1/tickets")
        assert after == before
        assert {c["id"]: c["ticket"] for c in restarted.get("/api/v1/counters")} == counters_before
        # Numbering continues; buttons work again once central is back.
        assert restarted.issue("juminhyo")["number"] == issued[-1] + 1
        c1.wait_connected(timeout=15)
        c1.press("call_next")
        c1.shows(issued[1])
    finally:
        restarted.stop()
