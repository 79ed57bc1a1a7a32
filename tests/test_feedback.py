"""Feedback on gpiozero's MockFactory: exact pin sequences of every signal, no blocking, the
RGB and relay variants, the guard's button, the status LED, closing, bad pins, pin factories."""

import logging
import threading
import time

import pytest
from gpiozero import LED

from chot.errors import ConfigError, HardwareError
from device.io import patterns
from device.io.feedback import Feedback
from device.io.pins import make_pin_factory

# short patterns keep the tests fast
FAST = {
    "pass_led_s": 0.06,
    "pass_beeps": 2,
    "pass_beep_s": 0.01,
    "relay_s": 0.08,
    "fail_led_s": 0.06,
    "fail_beeps": 3,
    "fail_beep_s": 0.01,
    "unreadable_blinks": 2,
    "unreadable_blink_s": 0.02,
    "unreadable_beep_s": 0.05,
    "fault_blink_s": 0.02,
    "fault_s": 0.16,  # 4 fast blinks
    "heartbeat_s": 0.1,
}
PINS = {"relay": "GPIO23", "button": "GPIO24"}
SIGNAL_PINS = ("pass_led", "fail_led", "buzzer", "relay")


def states(dev):
    return [bool(s.state) for s in dev.pin.states]


def wait_until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def fb(mock_pins):
    with Feedback(PINS, FAST) as f:
        yield f


@pytest.mark.parametrize("kind", ["pass", "fail", "unreadable", "unsigned", "fault"])
def test_each_signal_drives_exact_pin_sequences(fb, kind):
    fb.signal(kind)
    assert fb.wait_idle(10)
    steps = {s.device: s for s in patterns.signal_steps(kind, fb.cfg)}
    for name in SIGNAL_PINS:
        expected = patterns.pin_states(steps[name]) if name in steps else [False]
        assert states(getattr(fb, name)) == expected, name


def test_pass_and_fail_patterns_literally(fb):
    fb.signal("pass")
    assert fb.wait_idle(10)
    assert states(fb.pass_led) == [False, True, False]
    assert states(fb.relay) == [False, True, False]
    assert states(fb.buzzer) == [False, True, False, True, False]  # pass_beeps = 2
    assert states(fb.fail_led) == [False]
    fb.signal("fail")
    assert fb.wait_idle(10)
    assert states(fb.fail_led) == [False, True, False]
    assert states(fb.buzzer)[5:] == [True, False, True, False, True, False]  # three more beeps
    assert states(fb.pass_led) == [False, True, False]  # untouched by FAIL
    assert states(fb.relay) == [False, True, False]


def test_defaults_are_one_beep_for_pass_three_for_fail(mock_pins):
    with Feedback({}, {"pass_led_s": 0.05, "relay_s": 0.05, "fail_led_s": 0.05}) as f:
        f.signal("pass")
        assert f.wait_idle(10)
        assert states(f.buzzer).count(True) == 1
        f.buzzer.pin.clear_states()
        f.signal("fail")
        assert f.wait_idle(10)
        assert states(f.buzzer).count(True) == 3
        assert f.relay is None and f.button is None  # "none" by default


def test_unreadable_and_fault_are_distinct_from_fail(fb):
    seqs = {}
    for kind in ("fail", "unreadable", "fault"):
        for name in SIGNAL_PINS:
            getattr(fb, name).pin.clear_states()
        fb.signal(kind)
        assert fb.wait_idle(10)
        seqs[kind] = tuple(tuple(states(getattr(fb, n))) for n in SIGNAL_PINS)
    assert len(set(seqs.values())) == 3
    assert seqs["unreadable"][SIGNAL_PINS.index("buzzer")].count(True) == 1  # one long beep
    assert seqs["unreadable"][SIGNAL_PINS.index("fail_led")].count(True) == FAST["unreadable_blinks"]


def test_signal_returns_before_the_pattern_ends_and_a_new_one_overrides(mock_pins):
    slow = dict(FAST, pass_led_s=30.0, relay_s=30.0, pass_beeps=1, pass_beep_s=2.0)
    with Feedback(PINS, slow) as f:
        f.signal("pass")
        # back already: the 30 s pattern is still playing and the LED has not been switched off
        assert f.busy()
        assert states(f.pass_led) in ([False], [False, True])
        assert wait_until(lambda: f.pass_led.is_lit and f.relay.value == 1)
        assert not f.wait_idle(0.01)
        f.signal("fail")  # overrides at once
        assert states(f.pass_led) == [False, True, False]
        assert states(f.relay) == [False, True, False]  # the barrier closes
        assert f.wait_idle(10)
        assert states(f.fail_led) == [False, True, False]
        assert states(f.buzzer) == [False, True, False] + [True, False] * 3


def test_built_from_a_terminal_config_file(mock_pins, tmp_path):
    from device.config import load_terminal_config

    toml = tmp_path / "terminal.toml"
    toml.write_text(
        '[device]\nid = "t-1"\ncheckpoint = "gate"\ndirection = "in"\n'
        '[pins]\nrelay = "GPIO23"\nbutton = "BOARD18"\nstatus_led = "none"\n'
        "[feedback]\npass_led_s = 0.05\nrelay_s = 0.05\npass_beep_s = 0.01\n"
    )
    cfg = load_terminal_config(toml)
    with Feedback(cfg.pins, cfg.feedback) as f:
        assert f.status_led is None and f.button is not None
        f.set_status("fault")  # no status LED: nothing to do, no error
        f.signal("pass")
        assert f.wait_idle(10)
        assert states(f.relay) == [False, True, False]


def test_rgb_led_variant(mock_pins):
    pins = {"rgb_led": ["GPIO12", "GPIO13", "GPIO19"]}
    red, green, blue = (mock_pins.pin(n) for n in ("GPIO12", "GPIO13", "GPIO19"))
    with Feedback(pins, FAST) as f:
        assert f.pass_led is None and f.fail_led is None and f.rgb_led is not None
        f.signal("pass")
        assert f.wait_idle(10)
        assert [bool(s.state) for s in green.states] == [False, True, False]
        assert [bool(s.state) for s in red.states] == [False]
        f.signal("fail")
        assert f.wait_idle(10)
        assert [bool(s.state) for s in red.states] == [False, True, False]
        assert [bool(s.state) for s in blue.states] == [False]
        f.signal("unreadable")
        assert f.wait_idle(10)
        assert [bool(s.state) for s in red.states][3:] == [True, False] * FAST["unreadable_blinks"]


def test_relay_active_low(mock_pins):
    with Feedback(dict(PINS, relay_active_high=False), FAST) as f:
        f.relay.pin.clear_states()
        assert f.relay.pin.state == 1  # idle: pin high, relay released
        f.signal("pass")
        assert f.wait_idle(10)
        step = next(s for s in patterns.signal_steps("pass", f.cfg) if s.device == "relay")
        assert states(f.relay) == patterns.pin_states(step, active_high=False) == [True, False, True]


def test_button_calls_the_manual_callback(fb):
    pressed = threading.Event()
    calls = []
    fb.on_manual(lambda: 1 / 0)  # a failing handler must not stop the others
    fb.on_manual(lambda: (calls.append(1), pressed.set()))
    fb.button.pin.drive_low()
    assert pressed.wait(5)
    fb.button.pin.drive_high()
    assert calls == [1]


def test_status_patterns(fb):
    cycles = {s: patterns.status_cycles(s, fb.cfg) for s in patterns.STATUSES}
    assert len({tuple(c) for c in cycles.values()}) == len(patterns.STATUSES)  # each its own pattern
    assert cycles["off"] == [] and len(cycles["uplink_down"]) == 2 and len(cycles["stale"]) == 3
    for state in ("ok", "fault", "uplink_down", "stale", "clock_behind"):
        fb.status_led.pin.clear_states()
        fb.set_status(state)
        assert fb.status == state
        assert wait_until(lambda: len(fb.status_led.pin.states) >= 6)  # keeps blinking by itself
    fb.set_status("off")
    assert not fb.status_led.is_lit
    n = len(fb.status_led.pin.states)
    time.sleep(0.15)
    assert len(fb.status_led.pin.states) == n  # stays dark
    assert states(fb.pass_led) == [False]  # the status LED never touches the signal LEDs


def test_close_releases_pins(mock_pins):
    f = Feedback(PINS, FAST)
    f.set_status("ok")
    f.signal("pass")
    f.close()
    for name in SIGNAL_PINS + ("button", "status_led"):
        assert getattr(f, name).closed, name
    f.signal("fail")  # ignored after close, never raises
    with LED("GPIO17") as again:  # the pin is free again
        again.on()
        assert again.is_lit
    with Feedback(PINS, FAST) as g:  # and the whole set can be built again
        g.signal("pass")
        assert g.wait_idle(10)


def test_bad_pins_give_clear_errors(mock_pins):
    with pytest.raises(HardwareError, match=r"pins\.pass_led = 'GPIO99'.*GPIO17"):
        Feedback({"pass_led": "GPIO99"}, FAST)
    with pytest.raises(ConfigError, match=r"pins\.fail_led: found 'banana'"):
        Feedback({"fail_led": "banana"}, FAST)
    with pytest.raises(HardwareError, match=r"pins\.buzzer = 'GPIO17'.*already in use"):
        Feedback({"buzzer": "GPIO17"}, FAST)
    with pytest.raises(HardwareError, match=r"pins\.rgb_led.*three pins"):
        Feedback({"rgb_led": ["GPIO12", "GPIO13"]}, FAST)
    with pytest.raises(ValueError, match="unknown signal"):
        with Feedback(PINS, FAST) as f:
            f.signal("maybe")
    # the failed attempts released what they had claimed
    with Feedback(PINS, FAST) as f:
        f.signal("pass")
        assert f.wait_idle(10)


def test_pin_factories(tmp_path, caplog):
    from gpiozero.pins.mock import MockFactory

    not_pi = tmp_path / "model-pc"
    not_pi.write_bytes(b"QEMU Virtual Machine\0")
    pi5 = tmp_path / "model-pi5"
    pi5.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    with caplog.at_level(logging.WARNING, logger="device.io.pins"):
        auto = make_pin_factory("auto", model_path=str(not_pi))
    assert isinstance(auto, MockFactory)
    assert "not a Raspberry Pi" in caplog.text
    with pytest.raises(HardwareError) as err:
        make_pin_factory("rpigpio", model_path=str(pi5))
    assert str(err.value) == 'RPi.GPIO does not work on a Raspberry Pi 5; set pins.factory = "lgpio"'
    with pytest.raises(HardwareError, match="pins.factory"):
        make_pin_factory("pigpio")
    factory = make_pin_factory("mock")
    try:  # a factory passed explicitly is used instead of the default one
        with Feedback(PINS, FAST, pin_factory=factory) as f:
            f.signal("pass")
            assert f.wait_idle(10)
            assert [bool(s.state) for s in factory.pin("GPIO17").states] == [False, True, False]
    finally:
        factory.close()


def test_timeline_flattens_steps_in_time_order(fb):
    steps = patterns.signal_steps("pass", fb.cfg)
    line = patterns.timeline(steps)
    assert [a for a in line if a[0] == 0.0] == [(0.0, "pass_led", True), (0.0, "relay", True), (0.0, "buzzer", True)]
    assert [a[0] for a in line] == sorted(a[0] for a in line)
    for step in steps:  # each device alternates on/off, n times, ending off
        mine = [on for _, dev, on in line if dev == step.device]
        assert mine == [True, False] * step.n
    assert max(a[0] for a in line) <= patterns.duration(steps)
    # a step with no off period keeps its own on/off order at equal times
    assert patterns.timeline([patterns.Step("buzzer", 0.1, 0.0, 2)]) == [
        (0.0, "buzzer", True), (0.1, "buzzer", False), (0.1, "buzzer", True), (0.2, "buzzer", False)]


def test_first_states_are_on_when_signal_returns_and_no_thread_per_signal(mock_pins):
    slow = dict(FAST, pass_led_s=30.0, relay_s=30.0, fail_led_s=30.0, pass_beep_s=2.0, fail_beep_s=2.0)
    with Feedback(PINS, slow) as f:
        threads = threading.active_count()
        for _ in range(20):
            f.signal("pass")
            assert f.pass_led.is_lit and f.relay.value == 1 and f.buzzer.is_active  # no wait
            assert not f.fail_led.is_lit
            f.signal("fail")
            assert f.fail_led.is_lit and f.buzzer.is_active
            assert not f.pass_led.is_lit and f.relay.value == 0  # the barrier closed at once
        assert threading.active_count() == threads
        assert f.kind == "fail" and f.busy()
        assert states(f.pass_led) == [False] + [True, False] * 20
        assert states(f.relay) == [False] + [True, False] * 20
    assert not f.busy() and f.wait_idle(0)


def test_close_while_playing_stops_the_worker(mock_pins):
    f = Feedback(PINS, dict(FAST, pass_led_s=30.0))
    f.signal("pass")
    worker = f._worker
    f.close()
    assert not worker.is_alive()
    assert f.pass_led.closed and f.wait_idle(0)
