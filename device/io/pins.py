"""Choosing gpiozero's pin factory from the config (`pins.factory`).

- "auto": on a Raspberry Pi, gpiozero's own choice (lgpio, then RPi.GPIO; the environment
  variable GPIOZERO_PIN_FACTORY is honoured); off a Pi, gpiozero's MockFactory with PWM-capable
  mock pins and a warning, so the daemon and the demo run anywhere.
- "mock": always gpiozero's MockFactory (tests, demo).
- "lgpio": the only one that works on a Raspberry Pi 5. lgpio writes a notification FIFO
  (.lgd-nfy*) into the working directory, so the service needs a writable one.
- "rpigpio": RPi.GPIO, for older models; it does not work on a Pi 5.

Every failure is a `HardwareError` whose message says what to do.
"""

import logging
import os

from chot.errors import HardwareError

log = logging.getLogger(__name__)

MODEL_PATH = "/proc/device-tree/model"
FACTORIES = ("auto", "mock", "lgpio", "rpigpio")


def pi_model(path=MODEL_PATH):
    """The board's model string ("Raspberry Pi 5 Model B Rev 1.0"), or None off a Pi."""
    try:
        with open(path, "rb") as f:
            model = f.read().rstrip(b"\0\n").decode("ascii", "replace")
    except OSError:
        return None
    return model if "Raspberry Pi" in model else None


def _mock():
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


def _lgpio():
    wd = os.environ.get("LG_WD") or os.getcwd()
    if not os.access(wd, os.W_OK):
        raise HardwareError(
            f"lgpio writes a notification FIFO into its working directory, and {wd} is not writable: "
            "start the terminal from a writable directory (systemd: WorkingDirectory=/var/lib/chot) "
            "or set LG_WD to one"
        )
    try:
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    except ImportError as exc:
        raise HardwareError(
            f"the lgpio pin factory needs the lgpio module ({exc}): the setup script installs the pinned "
            "wheel (provisioning/requirements-terminal.txt); by hand: '/opt/chot/venv/bin/pip install lgpio', "
            "or on Raspberry Pi OS 'sudo apt install python3-lgpio' with a venv made with --system-site-packages"
        ) from exc
    except Exception as exc:  # lgpio raises its own error types when the chip cannot be opened
        raise HardwareError(
            f"the lgpio pin factory could not open the GPIO chip ({exc}): run on a Raspberry Pi as a user in the "
            "'gpio' group, or set pins.factory = \"mock\" off a Pi"
        ) from exc


def _rpigpio(model):
    if model and "Raspberry Pi 5" in model:
        raise HardwareError('RPi.GPIO does not work on a Raspberry Pi 5; set pins.factory = "lgpio"')
    try:
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    except ImportError as exc:
        raise HardwareError(
            f"the rpigpio pin factory needs the RPi.GPIO module ({exc}): install it with "
            "'sudo apt install python3-rpi.gpio' or 'pip install RPi.GPIO', or set pins.factory = \"lgpio\""
        ) from exc
    except Exception as exc:  # "Cannot determine SOC peripheral base address" and the like
        hint = 'set pins.factory = "lgpio"' if model else 'off a Pi set pins.factory = "mock"'
        raise HardwareError(f"RPi.GPIO could not be used ({exc}); {hint}") from exc


def make_pin_factory(name="auto", model_path=MODEL_PATH):
    """Return a gpiozero pin factory for `name` (one of `FACTORIES`).

    With "auto" on a Pi and GPIOZERO_PIN_FACTORY set, returns None: gpiozero then uses its
    own default choice, which honours that variable.
    """
    if name not in FACTORIES:
        raise HardwareError(f"unknown pin factory {name!r}: set pins.factory to one of {', '.join(FACTORIES)}")
    if name == "mock":
        return _mock()
    model = pi_model(model_path)
    if name == "lgpio":
        return _lgpio()
    if name == "rpigpio":
        return _rpigpio(model)
    # auto
    if model is None:
        log.warning(
            "not a Raspberry Pi (no 'Raspberry Pi' in %s): using gpiozero's mock pins, nothing will light up",
            model_path,
        )
        return _mock()
    if os.environ.get("GPIOZERO_PIN_FACTORY"):
        return None
    try:
        return _lgpio()
    except HardwareError as first:
        if "Raspberry Pi 5" in model:
            raise
        try:
            return _rpigpio(model)
        except HardwareError as second:
            raise HardwareError(f"no GPIO library could be used on this {model}: {first}; {second}") from second
