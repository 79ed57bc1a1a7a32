"""The `[pins]` and `[feedback]` settings (a part of the terminal config) and the pin checks.

Pins are named as gpiozero names them: "GPIO17" or "BCM17" or "17" (Broadcom numbering) or
"BOARD11" (the physical pin of the 40-pin header), or "none". `PinSettings.problems` maps every
name to its GPIO with gpiozero's own header data (no hardware needed) and lists each device on a
pin another device already uses (also through an alias: BOARD11 is GPIO17), each pin that is not
a GPIO of a Raspberry Pi's header (GPIO99, BOARD41) and each power or ground pin (BOARD1, BOARD6).
"""

import functools
from dataclasses import dataclass
from typing import Literal

from chot.config import FilePath, Settings, file_problem, setting

PIN = r"(GPIO|BOARD|BCM)?[0-9]{1,2}|none"
# A 40-pin board (Raspberry Pi 4 B): every Pi since the B+ has the same header, GPIO0 to GPIO27.
_HEADER_REVISION = 0xC03111


@functools.lru_cache(maxsize=1)
def _board():
    from gpiozero.pins.pi import PiBoardInfo

    return PiBoardInfo.from_revision(_HEADER_REVISION)


def header_pin(name):
    """gpiozero's name of the header pin `name` ("GPIO17", "3V3", "GND", ...), None when there is none."""
    found = list(_board().find_pin(name))
    return found[0][1].name if found else None


@dataclass(frozen=True, kw_only=True)
class PinSettings(Settings):
    factory: Literal["auto", "mock", "lgpio", "rpigpio"] = setting("auto", help="gpiozero pin factory")
    pass_led: str = setting("GPIO17", pattern=PIN, help="green LED (or 'none')")
    fail_led: str = setting("GPIO27", pattern=PIN, help="red LED (or 'none')")
    rgb_led: list[str] | None = setting(None, help="one RGB LED instead: [red, green, blue] pins")
    buzzer: str = setting("GPIO22", pattern=PIN, help="active buzzer (or 'none')")
    relay: str = setting("none", pattern=PIN, help="relay of a barrier or door (or 'none')")
    relay_active_high: bool = setting(True, help="the relay closes when its pin is high")
    button: str = setting("none", pattern=PIN, help="the guard's manual-pass button (or 'none')")
    status_led: str = setting("GPIO5", pattern=PIN, help="status LED (or 'none')")

    def used(self, name="pins"):
        """(key, pin name) of every device in use, in order; an RGB LED replaces pass_led and fail_led."""
        out = []
        if self.rgb_led is not None:
            out += [(f"{name}.rgb_led[{i}]", p) for i, p in enumerate(self.rgb_led)]
        else:
            out += [(f"{name}.pass_led", self.pass_led), (f"{name}.fail_led", self.fail_led)]
        out += [(f"{name}.{k}", getattr(self, k)) for k in ("buzzer", "relay", "button", "status_led")]
        return [(k, p) for k, p in out if p != "none"]

    def problems(self, name):
        import re

        out = []
        if self.rgb_led is not None and (len(self.rgb_led) != 3 or not all(
                re.fullmatch(PIN, p) and p != "none" for p in self.rgb_led)):
            out.append(f"{name}.rgb_led: found {self.rgb_led!r}; allowed: three pins [red, green, blue] such as "
                       '["GPIO17", "GPIO27", "GPIO22"], or leave it out and use pass_led and fail_led')
            return out
        taken = {}  # GPIO name -> the key that uses it
        for key, pin in self.used(name):
            gpio = header_pin(pin)
            if gpio is None:
                out.append(f"{key}: found {pin!r}; allowed: a pin of the Raspberry Pi's 40-pin header, GPIO0 to "
                           "GPIO27 (BCM numbering) or BOARD1 to BOARD40 (physical), or 'none'")
            elif not gpio.startswith("GPIO"):
                out.append(f"{key}: found {pin!r}; allowed: a GPIO pin ({pin} is a {gpio} pin of the header)")
            elif gpio in taken:
                alias = "" if pin == gpio else f" ({pin} is {gpio})"
                out.append(f"{key}: found {pin!r}{alias}; allowed: a pin no other device uses ({taken[gpio]} is "
                           f"on {gpio} too: give every device its own pin)")
            else:
                taken[gpio] = key
        return out


@dataclass(frozen=True, kw_only=True)
class FeedbackSettings(Settings):
    pass_led_s: float = setting(1.0, min=0.05, max=30.0, help="PASS: green LED on for")
    pass_beeps: int = setting(1, min=0, max=10, help="PASS: number of beeps")
    pass_beep_s: float = setting(0.08, min=0.01, max=2.0, help="PASS: length of a beep")
    relay_s: float = setting(1.0, min=0.05, max=30.0, help="PASS: relay pulse length")
    fail_led_s: float = setting(2.0, min=0.05, max=30.0, help="FAIL: red LED on for")
    fail_beeps: int = setting(3, min=0, max=10, help="FAIL: number of beeps")
    fail_beep_s: float = setting(0.12, min=0.01, max=2.0, help="FAIL: length of a beep")
    unreadable_blinks: int = setting(2, min=0, max=10, help="unreadable/unsigned: red blinks")
    unreadable_beep_s: float = setting(0.6, min=0.01, max=3.0, help="unreadable/unsigned: one long beep")
    unreadable_blink_s: float = setting(0.2, min=0.02, max=2.0, help="unreadable/unsigned: red on (and off) per blink")
    guard_led_s: float = setting(3.0, min=0.05, max=30.0, help="see the guard: both LEDs (amber) on for")
    guard_beeps: int = setting(2, min=0, max=10, help="see the guard: number of short beeps")
    guard_beep_s: float = setting(0.1, min=0.01, max=2.0, help="see the guard: length of a beep")
    fault_s: float = setting(2.0, min=0.1, max=30.0, help="fault (fail closed): red fast blink and beep for")
    fault_blink_s: float = setting(0.1, min=0.02, max=2.0, help="status LED fast blink on a fault")
    heartbeat_s: float = setting(1.0, min=0.1, max=10.0, help="status LED heartbeat period")
    speaker: bool = setting(False, help="say a short Vietnamese prompt for pass, fail and 'see the guard' (ALSA)")
    speaker_device: str = setting("default", help="the ALSA playback device (`aplay -L` lists them), e.g. 'plughw:1,0'")
    voice_dir: FilePath = setting(
        "/var/lib/chot/voice", help="folder of the prompts pass.wav, fail.wav, guard.wav (`chot terminal voice`)"
    )

    def world_problems(self, name):
        if not self.speaker:
            return []
        from pathlib import Path

        from device.io.speaker import PROMPT_FILES

        problem = file_problem(f"{name}.voice_dir", self.voice_dir, folder=True)
        if problem:
            return [problem + "; make the prompts with `chot terminal voice`"]
        missing = [f for f in PROMPT_FILES if not (Path(self.voice_dir) / f).is_file()]
        if missing:
            return [f"{name}.voice_dir: found {self.voice_dir!r} without {', '.join(missing)}; allowed: a folder "
                    "holding every prompt: make them with `chot terminal voice`"]
        return []
