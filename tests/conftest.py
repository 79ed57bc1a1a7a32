"""Shared fixtures: a private Mosquitto per test, a PostgreSQL database, mock GPIO pins.

Under CI=true a missing service or library fails the test instead of skipping it.
"""

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import browser, output_dir, page  # noqa: E402, F401  (Playwright on Debian's chromium: tests/browser.py)
from servers import PG_DSN, Mosquitto, pg_available  # noqa: E402
from web_helpers import console, console_sqlite  # noqa: E402, F401  (the console's fixtures: tests/web_helpers.py)

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = (ROOT.parent / "shared" / "testdata").resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition, what):
    """Skip outside CI when `what` is missing; fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing, and under CI=true nothing may be skipped")
    pytest.skip(f"{what} is missing")


@pytest.fixture
def testdata():
    need(TESTDATA.is_dir(), f"shared test data at {TESTDATA}")
    return TESTDATA


@pytest.fixture
def broker(tmp_path):
    """A private Mosquitto on a free loopback port (MQTT 5, anonymous, raised limits)."""
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def pg_dsn():
    """A fresh PostgreSQL schema-isolated database URL (a new database per test)."""
    need(pg_available(), f"PostgreSQL at {PG_DSN} (set CHOT_TEST_PG_DSN)")
    import psycopg2

    name = "chot_test_" + uuid.uuid4().hex[:10]
    admin = psycopg2.connect(PG_DSN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    base, _, _ = PG_DSN.rpartition("/")
    yield f"{base}/{name}"
    admin = psycopg2.connect(PG_DSN)
    admin.autocommit = True
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def mock_pins():
    """gpiozero's own MockFactory, installed as the default pin factory for the test."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    old = Device.pin_factory
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = old


@pytest.fixture(autouse=True)
def _no_clock_anchor_across_tests():
    """The collector's time anchor (device.clock.set_ref) lives for the process: one test's acks must
    not raise another test's time floor (device/timefloor.py)."""
    from device import clock

    clock.clear_ref()
    yield
    clock.clear_ref()
