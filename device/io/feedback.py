"""What the person at the checkpoint sees and hears, and the guard's button, through gpiozero.

`Feedback(pins_cfg, feedback_cfg, pin_factory=None)` builds the devices of the `[pins]`
section (a pin set to "none" is absent): a green and a red LED or one RGB LED, a buzzer,
an optional relay pulsed on PASS (barrier or door), an optional button (the guard's manual
pass) and a status LED. `signal(kind)` plays a pattern of `device.io.patterns`:
it switches the pattern's first states on itself (a few pin writes, so the PASS LED and the
relay react at once) and hands the timed rest to one long-lived worker thread, then returns:
the frame loop never waits for a light or a beep, and no thread is started per signal.
A new signal cancels the one playing (every signal device is switched off first, so the
relay closes on anything but a PASS). `set_status(state)` sets the status LED's endless
pattern. With `feedback.speaker` on, `signal` also hands the kind to the speaker's worker
(device/io/speaker.py), after the pins. This module knows nothing of credentials or MQTT; the
daemon wires it.
"""

import functools
import logging
import threading
import time

from gpiozero import LED, RGBLED, Button, Buzzer, DigitalOutputDevice
from gpiozero.exc import GPIOPinInUse, GPIOZeroError

from chot.errors import HardwareError
from device.io import patterns

log = logging.getLogger(__name__)

RED, GREEN, AMBER = (1, 0, 0), (0, 1, 0), (1, 1, 0)  # amber: red and green together (no PWM)


def _pin(value):
    """A pin name of the config as gpiozero takes it (None when absent)."""
    if value is None or value == "none":
        return None
    return int(value) if value.isdigit() else value


class _Cycler(threading.Thread):
    """Repeats (on_s, off_s) cycles on one LED until stopped."""

    def __init__(self, led, cycles):
        super().__init__(name="chot-status-led", daemon=True)
        self.led, self.cycles, self.stopping = led, cycles, threading.Event()

    def run(self):
        try:
            while not self.stopping.is_set():
                for on_s, off_s in self.cycles:
                    self.led.on()
                    if self.stopping.wait(on_s):
                        return
                    self.led.off()
                    if self.stopping.wait(off_s):
                        return
        except GPIOZeroError:  # the LED was closed under us
            return

    def stop(self):
        self.stopping.set()
        self.join(5.0)


class _Playing:
    """The signal being played: its later switchings, the next one's index, start and length."""

    __slots__ = ("kind", "later", "next", "t0", "length")

    def __init__(self, kind, later, t0, length):
        self.kind, self.later, self.next, self.t0, self.length = kind, later, 0, t0, length


class Feedback:
    """Pass/fail LEDs (or an RGB LED), buzzer, relay, button and status LED; see the module doc."""

    def __init__(self, pins_cfg=None, feedback_cfg=None, pin_factory=None):
        self.pins = patterns.settings("pins", pins_cfg)
        self.cfg = patterns.settings("feedback", feedback_cfg)
        self._factory = pin_factory
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # wakes the worker; wait_idle waits on it
        self._plans = {}  # kind -> cached plan (see _plan)
        self._playing = None  # the _Playing signal, None when idle
        self._worker = None
        self._callbacks = []
        self._status = None
        self._cycler = None
        self._closed = False
        self._devices = []
        self.kind = None  # the signal last started
        self.pass_led = self.fail_led = self.rgb_led = None
        self.buzzer = self.relay = self.button = self.status_led = None
        p = self.pins
        try:
            if p.rgb_led is not None:
                if len(p.rgb_led) != 3 or any(_pin(x) is None for x in p.rgb_led):
                    raise HardwareError(
                        f"pins.rgb_led = {p.rgb_led!r}: give three pins [red, green, blue], e.g. "
                        '["GPIO17", "GPIO27", "GPIO22"], or leave it out and use pass_led and fail_led'
                    )
                self.rgb_led = self._make("rgb_led", RGBLED, *[_pin(x) for x in p.rgb_led], pwm=False)
            else:
                self.pass_led = self._make("pass_led", LED, _pin(p.pass_led))
                self.fail_led = self._make("fail_led", LED, _pin(p.fail_led))
            self.buzzer = self._make("buzzer", Buzzer, _pin(p.buzzer))
            self.relay = self._make("relay", DigitalOutputDevice, _pin(p.relay), active_high=p.relay_active_high)
            self.button = self._make("button", Button, _pin(p.button), pull_up=True, bounce_time=0.05)
            self.status_led = self._make("status_led", LED, _pin(p.status_led))
        except BaseException:
            self._close_devices()
            raise
        if self.button is not None:
            self.button.when_pressed = self._pressed
        if self.rgb_led is None and self.pass_led is None and self.fail_led is None:
            log.warning("no pass/fail LED configured: the person at the checkpoint sees no answer")
        self._worker = threading.Thread(target=self._work, name="chot-feedback", daemon=True)
        self._worker.start()
        # The optional speaker (feedback.speaker): its own worker, told after the pins are switched.
        from device.io.speaker import Speaker

        self.speaker = Speaker.from_config(self.cfg)

    def _make(self, key, cls, *pins, **kwargs):
        if pins[0] is None:
            return None
        try:
            dev = cls(*pins, pin_factory=self._factory, **kwargs)
        except GPIOPinInUse as exc:
            raise HardwareError(
                f"pins.{key} = {pins if len(pins) > 1 else pins[0]!r}: the pin is already in use ({exc}); "
                "give every device its own pin"
            ) from exc
        except (GPIOZeroError, ValueError, TypeError) as exc:
            raise HardwareError(
                f"pins.{key} = {pins if len(pins) > 1 else pins[0]!r} cannot be used: {exc}; "
                'use a GPIO name of this board such as "GPIO17" (or "BOARD11"), or "none"'
            ) from exc
        self._devices.append(dev)
        return dev

    # -- signals -----------------------------------------------------------------------------

    def _switch(self, name, on, kind=None):
        """The callable that switches a step's device on or off (None when the device is absent)."""
        if name in ("pass_led", "fail_led") and self.rgb_led is not None:
            lit = AMBER if kind == "guard" else GREEN if name == "pass_led" else RED
            color = lit if on else (0, 0, 0)
            return functools.partial(setattr, self.rgb_led, "value", color)
        dev = getattr(self, name)
        if dev is None:
            return None
        return dev.on if on else dev.off

    def _plan(self, kind):
        """(switchings at 0, later (at_s, switch) in time order, duration) of signal `kind`, cached."""
        plan = self._plans.get(kind)
        if plan is None:
            steps = patterns.signal_steps(kind, self.cfg)  # ValueError for an unknown kind
            first, later = [], []
            for at, name, on in patterns.timeline(steps):
                fn = self._switch(name, on, kind)
                if fn is None:
                    continue
                if at <= 0.0 and on:
                    first.append(fn)
                else:
                    later.append((at, fn))
            plan = self._plans[kind] = (tuple(first), tuple(later), patterns.duration(steps))
        return plan

    def _all_off(self):
        for dev in (self.pass_led, self.fail_led, self.rgb_led, self.buzzer, self.relay):
            if dev is not None:
                dev.off()

    def signal(self, kind):
        """Start pattern `kind` (one of patterns.SIGNALS: "pass", "fail", "guard", "staff" ...); return at once.

        The pattern's first states are switched on before this returns; the worker thread
        plays the rest.
        """
        first, later, length = self._plan(kind)
        with self._cond:
            if self._closed:
                log.debug("signal %s after close ignored", kind)
                return
            try:
                self._all_off()
                for fn in first:
                    fn()
            except GPIOZeroError as exc:
                log.error("feedback %s could not switch a pin (%s): check the [pins] section and the wiring", kind, exc)
                return
            self._playing = _Playing(kind, later, time.monotonic(), length)
            self.kind = kind
            self._cond.notify()
        if self.speaker is not None:
            self.speaker.say(kind)  # never waits: the prompt plays in the speaker's own thread
        log.debug("feedback: %s", kind)

    def _work(self):
        """The worker thread: plays the timed switchings of the signal playing, one at a time."""
        with self._cond:
            while not self._closed:
                play = self._playing
                if play is None:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                later = play.later
                while play.next < len(later) and play.t0 + later[play.next][0] <= now:
                    try:
                        later[play.next][1]()
                    except GPIOZeroError as exc:  # a device closed under us: nothing left to play
                        log.debug("feedback %s stopped: %s", play.kind, exc)
                        play.next = len(later)
                        break
                    play.next += 1
                if play.next < len(later):
                    due = play.t0 + later[play.next][0]
                else:
                    due = play.t0 + play.length
                    if due <= now:
                        self._playing = None
                        self._cond.notify_all()
                        continue
                self._cond.wait(due - now)
            self._playing = None
            self._cond.notify_all()

    def wait_idle(self, timeout=None):
        """Wait until the pattern playing has finished; True when it has (for tests and the demo)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._playing is None or self._closed, timeout)

    def busy(self):
        """True while a signal pattern is playing."""
        with self._cond:
            return self._playing is not None and not self._closed

    # -- status LED --------------------------------------------------------------------------

    def set_status(self, state):
        """Status LED: "ok" (heartbeat), "fault" (fast blink), "uplink_down" (double flash), "stale" (triple
        flash), "clock_behind" (long on, short off), "off"."""
        cycles = patterns.status_cycles(state, self.cfg)
        with self._lock:
            if self._closed or state == self._status:
                return
            self._status = state
            if self.status_led is None:
                return
            self._stop_cycler()
            if cycles:
                self._cycler = _Cycler(self.status_led, cycles)
                self._cycler.start()
        log.info("status LED: %s", state)

    @property
    def status(self):
        return self._status

    def _stop_cycler(self):
        if self._cycler is not None:
            self._cycler.stop()
            self._cycler = None
        if self.status_led is not None and not self.status_led.closed:
            self.status_led.off()

    # -- button ------------------------------------------------------------------------------

    def on_manual(self, callback):
        """Call `callback()` (in gpiozero's thread) each time the guard presses the manual-pass button."""
        self._callbacks.append(callback)
        if self.button is None:
            log.warning('on_manual: no button configured (pins.button = "none")')

    def _pressed(self):
        log.info("manual-pass button pressed")
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception:
                log.exception("the manual-pass handler failed")

    # -- lifetime ----------------------------------------------------------------------------

    def _close_devices(self):
        for dev in reversed(self._devices):
            try:
                dev.close()
            except Exception:  # closing must go on with the other devices
                log.exception("closing %r failed", dev)
        self._devices = []

    def close(self):
        """Switch everything off and release the pins."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._playing = None
            self._cond.notify_all()
            self._stop_cycler()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(5.0)
        if getattr(self, "speaker", None) is not None:
            self.speaker.close()
        with self._lock:
            self._close_devices()

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
