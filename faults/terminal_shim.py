"""`python -m faults.terminal_shim [chot args]`: run `chot` and record every PASS LED pulse.

The independent witness of "no pass without a record": gpiozero's mock pin of the pass LED
is watched, and each time it turns on a line `pass <last_seq>` is appended (O_APPEND, one
write) to $CHOT_FAULTS_PULSES, where last_seq is the outbox's highest committed seq at that
instant. Feedback runs right after the commit in the frame thread, so every pulse must name a
distinct seq whose event is a PASS; a pass signalled without a record would name a seq twice
or a FAIL event. With $CHOT_FAULTS_CLOCK_FILE the wall clock is offset by the seconds written
there (see `_fake_wall_clock`). Nothing else of the daemon is changed.
"""

import os
import sys


def _install(path, pin_name):
    from gpiozero.pins.mock import MockPin

    import device.uplink.outbox as ob

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    boxes = []
    orig_init = ob.Outbox.__init__

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        boxes.append(self)

    ob.Outbox.__init__ = init
    orig_change = MockPin._change_state

    def change(self, value):
        old = self._state
        result = orig_change(self, value)
        try:
            name = self.info.name
        except AttributeError:
            name = None
        if name == pin_name and value and not old:
            seq = boxes[-1]._last_seq if boxes else -1
            os.write(fd, f"pass {seq}\n".encode())
        return result

    MockPin._change_state = change


def _fake_wall_clock(path):
    """The wall clock (time.time, time.time_ns, datetime.now/utcnow) offset by the seconds in `path`,
    re-read every half second; the monotonic clock is left alone, as in a real clock step. Used when
    libfaketime cannot be (its 0.9.10 makes time.sleep fail with EINVAL when the monotonic clock is
    not faked)."""
    import datetime as dt
    import time

    real_time, real_ns, real_mono, real_dt = time.time, time.time_ns, time.monotonic, dt.datetime
    state = {"at": -1.0, "off": 0.0}

    def offset():
        now = real_mono()
        if now - state["at"] > 0.5:
            state["at"] = now
            try:
                with open(path) as f:
                    state["off"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return state["off"]

    class FakeDateTime(real_dt):
        @classmethod
        def now(cls, tz=None):
            return real_dt.now(tz) + dt.timedelta(seconds=offset())

        @classmethod
        def utcnow(cls):
            return real_dt.utcnow() + dt.timedelta(seconds=offset())

    time.time = lambda: real_time() + offset()
    time.time_ns = lambda: real_ns() + int(offset() * 1e9)
    dt.datetime = FakeDateTime


def main():
    clock = os.environ.get("CHOT_FAULTS_CLOCK_FILE")
    if clock:
        _fake_wall_clock(clock)
    path = os.environ.get("CHOT_FAULTS_PULSES")
    if path:
        _install(path, os.environ.get("CHOT_FAULTS_PASS_PIN", "GPIO17"))
    from chot.cli import main as chot_main

    sys.exit(chot_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
