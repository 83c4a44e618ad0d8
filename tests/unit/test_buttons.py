"""drivers.buttons: the debouncer alone, then a panel on gpiozero's real MockFactory."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.buttons import ButtonError, ButtonPanel, Debouncer, press
from drivers.errors import DriverError

# --- Debouncer ---------------------------------------------------------------------


def test_debouncer_accepts_first_edge_and_locks_out_the_window():
    d = Debouncer(window_s=0.25)
    assert d.accept(10.0) is True
    assert d.accept(10.0) is False
    assert d.accept(10.125) is False
    assert d.accept(10.249) is False


def test_debouncer_accepts_exactly_at_window_end():
    d = Debouncer(window_s=0.25)
    assert d.accept(1.0)
    assert d.accept(1.25)  # exactly window_s later: a new press
    assert not d.accept(1.4)  # the window now runs from 1.25


def test_debouncer_rejected_edges_do_not_extend_the_window():
    d = Debouncer(window_s=0.25)
    assert d.accept(1.0)
    assert not d.accept(1.2)
    assert d.accept(1.3)  # 0.3 s after the accepted edge, though only 0.1 after the bounce


def test_debouncer_clock_going_backwards_is_not_a_press():
    d = Debouncer(window_s=0.25)
    assert d.accept(5.0)
    assert not d.accept(4.0)


def test_debouncer_zero_window_accepts_everything_and_reset_forgets():
    d = Debouncer(window_s=0)
    assert all(d.accept(1.0) for _ in range(3))
    d2 = Debouncer(window_s=1.0)
    assert d2.accept(0.0)
    d2.reset()
    assert d2.accept(0.1)


def test_debouncer_rejects_negative_window():
    with pytest.raises(ValueError):
        Debouncer(window_s=-0.01)


# --- ButtonPanel on MockFactory -------------------------------------------------------


class Recorder:
    def __init__(self):
        self.presses: list[tuple[str, float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, t: float) -> None:
        with self.lock:
            self.presses.append((name, t, threading.current_thread().name))

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.presses]


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


def test_bouncing_press_gives_exactly_one_on_press(factory):
    rec = Recorder()
    with ButtonPanel({"call": 17}, rec, pin_factory=factory) as panel:
        press(factory, 17, bounces=5)
        assert rec.names == ["call"]
        assert panel.stats["call"]["accepted"] == 1
        assert panel.stats["call"]["bounced"] == 5  # the 5 bounces' later falling edges


def test_bounce_on_release_is_not_a_second_press(factory):
    rec = Recorder()
    with ButtonPanel({"call": 17}, rec, pin_factory=factory) as panel:
        press(factory, 17, hold_s=0.15, release_bounces=3)  # held longer than the window
        assert rec.names == ["call"]
        assert panel.stats["call"]["bounced"] == 3


def test_debouncer_release_opens_a_new_window():
    d = Debouncer(0.05)
    assert d.accept(0.0)
    d.release(0.20)
    assert not d.accept(0.21)  # release bounce
    assert d.accept(0.26)


def test_two_presses_200ms_apart_give_two(factory):
    rec = Recorder()
    with ButtonPanel({"call": 17, "recall": 27}, rec, pin_factory=factory):
        press(factory, 17, bounces=2)
        time.sleep(0.2)
        press(factory, 17, bounces=2)
        press(factory, 27)
        assert rec.names == ["call", "call", "recall"]
        first, second = rec.presses[0][1], rec.presses[1][1]
        assert second - first >= 0.2


def test_press_time_comes_from_the_clock(factory):
    rec = Recorder()
    # each press reads the clock twice: when pressed and when released
    ticks = iter([100.0, 100.0, 100.01, 100.01, 200.0, 200.0])
    with ButtonPanel({"call": 17}, rec, pin_factory=factory, clock=lambda: next(ticks)):
        press(factory, 17, hold_s=0)  # t=100.0: accepted
        press(factory, 17, hold_s=0)  # t=100.01: within 50 ms, bounced
        press(factory, 17, hold_s=0)  # t=200.0: accepted
    assert [t for _, t, _ in rec.presses] == [100.0, 200.0]


def test_a_raising_handler_does_not_stop_the_next_press(factory, caplog):
    calls = []

    def handler(name, t):
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("handler bug")

    with ButtonPanel({"call": 17}, handler, pin_factory=factory, debounce_s=0.01):
        with caplog.at_level(logging.ERROR, logger="drivers.buttons.panel"):
            press(factory, 17, hold_s=0.001)
            time.sleep(0.02)
            press(factory, 17, hold_s=0.001)
    assert calls == ["call", "call"]
    assert "handler bug" in caplog.text and "call" in caplog.text


def test_close_is_idempotent_releases_pins_and_stops_presses(factory):
    rec = Recorder()
    panel = ButtonPanel({"call": 17}, rec, pin_factory=factory)
    assert panel.health() == ("ok", None, None)
    assert not panel.closed
    panel.close()
    panel.close()
    assert panel.closed
    assert panel.health()[0] == "error"
    press(factory, 17)
    assert rec.presses == []
    # The pin is free again: a new panel can take it.
    with ButtonPanel({"call": 17}, rec, pin_factory=factory):
        press(factory, 17)
    assert rec.names == ["call"]


def test_bad_pin_raises_button_error_naming_it(factory):
    with pytest.raises(ButtonError, match=r"'recall'.*'NOSUCHPIN'") as info:
        ButtonPanel({"call": 17, "recall": "NOSUCHPIN"}, Recorder(), pin_factory=factory)
    assert isinstance(info.value, DriverError)
    # The button opened before the failure was closed again: pin 17 is free.
    with ButtonPanel({"call": 17}, Recorder(), pin_factory=factory):
        pass


def test_same_pin_twice_raises_button_error(factory):
    with pytest.raises(ButtonError, match="'b'"):
        ButtonPanel({"a": 5, "b": 5}, Recorder(), pin_factory=factory)


def test_names_pin_of_and_arguments(factory):
    with ButtonPanel({"call": 17, "recall": "GPIO27"}, Recorder(), pin_factory=factory) as panel:
        assert panel.names == ("call", "recall")
        assert panel.pin_of("recall") == "GPIO27"
        with pytest.raises(KeyError, match="nope"):
            panel.pin_of("nope")
        assert panel.stats == {
            "call": {"accepted": 0, "bounced": 0},
            "recall": {"accepted": 0, "bounced": 0},
        }
    with pytest.raises(ValueError):
        ButtonPanel({}, Recorder(), pin_factory=factory)
    with pytest.raises(ValueError):
        ButtonPanel({"call": 17}, Recorder(), pin_factory=factory, debounce_s=-1)


def test_pull_down_panel_presses_high(factory):
    rec = Recorder()
    with ButtonPanel({"call": 17}, rec, pin_factory=factory, pull_up=False):
        press(factory, 17, pull_up=False, bounces=3)
    assert rec.names == ["call"]
