"""Feedback patterns as plain data, computed from the `[feedback]` config section.

A signal is a list of `Step`s that start together, one per output device; each step
switches its device on for `on_s`, off for `off_s`, `n` times (like gpiozero's `blink`). So a
device's pin goes through exactly `[False] + [True, False] * n` (see `pin_states`), which
is what tests compare with the mock pins' `states`. `timeline(steps)` flattens a signal into
`(at_s, device, on)` switchings in time order, which is what device.io.feedback plays.

- pass:        green `pass_led_s` once; `pass_beeps` beeps of `pass_beep_s`; relay pulse `relay_s`
- fail:        red `fail_led_s` once (steady); `fail_beeps` beeps of `fail_beep_s`
- unreadable:  red blinks `unreadable_blinks` times (`unreadable_blink_s`); one long beep
  `unreadable_beep_s` (also used for unsigned codes)
- guard:       "see the guard" (an ID card or PC-Covid code: an identity claim): both LEDs (amber on
  an RGB LED) for `guard_led_s`; `guard_beeps` short beeps of `guard_beep_s`
- fault:       fail closed: red fast blink (`fault_blink_s`) and one beep, both for `fault_s`
- staff:       a staff card opened a paper window: green blinks 3 times (`unreadable_blink_s`),
  two short beeps (`pass_beep_s`); no relay (the card lets nobody through)
- paper:       a paper declaration recorded: green `pass_led_s` once and the relay pulse `relay_s`
  like a pass, with two long beeps (4 x `pass_beep_s`) so the guard hears it was paper

The status LED repeats a list of (on_s, off_s) cycles until the state changes:
ok = one short flash per `heartbeat_s`, fault = fast even blink (`fault_blink_s`),
uplink_down = a double flash per `heartbeat_s`, stale (signed lists too old or expired) = a
triple flash per `heartbeat_s`, clock_behind (the clock reads before the time floor) = on for
most of each `heartbeat_s` with one short dark gap, off = dark.
"""

from collections import namedtuple
from types import SimpleNamespace

from chot.config import rules, validate

Step = namedtuple("Step", "device on_s off_s n")
Step.__doc__ = "One device of a signal: on `on_s`, off `off_s`, `n` times."

SIGNALS = ("pass", "fail", "unreadable", "unsigned", "guard", "fault", "staff", "paper")
STATUSES = ("ok", "fault", "uplink_down", "stale", "clock_behind", "off")
SIGNAL_DEVICES = ("pass_led", "fail_led", "buzzer", "relay")


def settings(section, values):
    """Validate a config section given as its settings, a dict, a namespace or None (defaults filled in)."""
    from device.io.settings import FeedbackSettings, PinSettings

    cls = {"pins": PinSettings, "feedback": FeedbackSettings}[section]
    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    elif isinstance(values, SimpleNamespace):
        values = dict(vars(values))
    else:
        values = dict(values)
    return getattr(validate({section: values}, {section: rules(cls)}, source=f"[{section}]"), section)


def signal_steps(kind, fb):
    """The steps of signal `kind` (one of `SIGNALS`) for feedback settings `fb`."""
    if kind == "pass":
        steps = [Step("pass_led", fb.pass_led_s, 0.0, 1), Step("relay", fb.relay_s, 0.0, 1)]
        if fb.pass_beeps:
            steps.append(Step("buzzer", fb.pass_beep_s, fb.pass_beep_s, fb.pass_beeps))
    elif kind == "fail":
        steps = [Step("fail_led", fb.fail_led_s, 0.0, 1)]
        if fb.fail_beeps:
            steps.append(Step("buzzer", fb.fail_beep_s, fb.fail_beep_s, fb.fail_beeps))
    elif kind in ("unreadable", "unsigned"):
        steps = [Step("buzzer", fb.unreadable_beep_s, 0.0, 1)]
        if fb.unreadable_blinks:
            steps.append(Step("fail_led", fb.unreadable_blink_s, fb.unreadable_blink_s, fb.unreadable_blinks))
    elif kind == "guard":
        steps = [Step("pass_led", fb.guard_led_s, 0.0, 1), Step("fail_led", fb.guard_led_s, 0.0, 1)]
        if fb.guard_beeps:
            steps.append(Step("buzzer", fb.guard_beep_s, fb.guard_beep_s, fb.guard_beeps))
    elif kind == "fault":
        blinks = max(1, round(fb.fault_s / (2 * fb.fault_blink_s)))
        steps = [Step("fail_led", fb.fault_blink_s, fb.fault_blink_s, blinks), Step("buzzer", fb.fault_s, 0.0, 1)]
    elif kind == "staff":
        steps = [Step("pass_led", fb.unreadable_blink_s, fb.unreadable_blink_s, 3),
                 Step("buzzer", fb.pass_beep_s, fb.pass_beep_s, 2)]
    elif kind == "paper":
        steps = [Step("pass_led", fb.pass_led_s, 0.0, 1), Step("relay", fb.relay_s, 0.0, 1),
                 Step("buzzer", 4 * fb.pass_beep_s, 2 * fb.pass_beep_s, 2)]
    else:
        raise ValueError(f"unknown signal {kind!r}; allowed: {', '.join(SIGNALS)}")
    return steps


def status_cycles(state, fb):
    """The (on_s, off_s) cycles the status LED repeats in `state` (one of `STATUSES`)."""
    h = fb.heartbeat_s
    if state == "ok":
        return [(0.1 * h, 0.9 * h)]
    if state == "fault":
        return [(fb.fault_blink_s, fb.fault_blink_s)]
    if state == "uplink_down":
        return [(0.1 * h, 0.1 * h), (0.1 * h, 0.7 * h)]
    if state == "stale":
        return [(0.1 * h, 0.1 * h), (0.1 * h, 0.1 * h), (0.1 * h, 0.5 * h)]
    if state == "clock_behind":
        return [(0.8 * h, 0.2 * h)]
    if state == "off":
        return []
    raise ValueError(f"unknown status {state!r}; allowed: {', '.join(STATUSES)}")


def pin_states(step, active_high=True):
    """The values a fresh output pin goes through for `step` (initial state included)."""
    on, off = (True, False) if active_high else (False, True)
    return [off] + [on, off] * step.n


def timeline(steps):
    """The switchings of a signal: `(at_s, device, on)` sorted by time (a device's own order kept).

    Every step starts at 0 with its device on; the signal lasts `duration(steps)` (the last
    off period included).
    """
    out = []
    for step in steps:
        period = step.on_s + step.off_s
        for i in range(step.n):
            out.append((i * period, step.device, True))
            out.append((i * period + step.on_s, step.device, False))
    out.sort(key=lambda a: a[0])  # stable: a device's on stays before its off at the same time
    return out


def duration(steps):
    """Seconds until every step of a signal has finished."""
    return max((s.n * (s.on_s + s.off_s) for s in steps), default=0.0)
