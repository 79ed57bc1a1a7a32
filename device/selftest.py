"""`chot terminal selftest`: the technician's check of a terminal, item by item.

`run_selftest(config_path)` loads the terminal config and checks, in turn:

- each output (pass and fail LEDs or the RGB LED, buzzer, status LED, relay): switched on
  for a moment, one after the other, so the technician sees and hears each;
- the camera: a few frames captured, their brightness (mean grey) and sharpness (variance of
  the Laplacian) reported, and any QR code in them read (hold a test card from `chot issue`);
- the decoder: a test card made here (a QR rendered with segno) decoded from pixels by the
  configured decoder;
- the outbox: opened and written in a scratch transaction that is rolled back (no event is
  made), plus the free disk space;
- the broker: reached with the device's own certificate (MQTT 5 over TLS, built by the one client
  factory `chot.mqtt` as the daemon's link is) and the device's ack topic subscribed. The fleet's
  broker makes the certificate's CN the client id, so this is the daemon's own session: the check
  connects as the daemon does (clean start off, the same session expiry), which keeps that session;
  a daemon still running is displaced for a moment and reconnects and subscribes again by itself;
- the clock: synchronised (NTP), as the kernel says (device/clock.py).

The config item also reads the collector's sealing public key (`privacy.seal_public_key`):
a key that is set but unusable fails it (the daemon would not start), an unset one is noted.

Each item prints PASS, FAIL (with what to do) or SKIP (not configured). The exit status is 0
only when nothing failed. Run it while the service is stopped: the camera and the pins can be
used by one process at a time.
"""

import logging
import os
import shutil
import socket
import sqlite3
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chot.errors import ChotError, ConfigError

log = logging.getLogger(__name__)

BRIGHTNESS_RANGE = (40.0, 220.0)  # mean grey of a usable frame
MIN_SHARPNESS = 15.0  # variance of the Laplacian below this: out of focus, or a blank view
MIN_FREE_BYTES = 64 * 1024 * 1024
TEST_CARD_TEXT = "CHOT-SELFTEST-CARD"


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL, SKIP
    detail: str = ""
    fix: str = ""


def laplacian_variance(gray):
    """Sharpness: the variance of the 4-neighbour Laplacian of a grey frame (numpy only)."""
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


# --- items ---------------------------------------------------------------------------------------


def check_outputs(cfg, pin_factory, on_s=0.5, out=None):
    """Each output on for `on_s`, one after the other; a Result per output."""
    from gpiozero import LED, RGBLED, Buzzer, DigitalOutputDevice
    from gpiozero.exc import GPIOZeroError

    def pin(v):
        return None if v in (None, "none") else (int(v) if v.isdigit() else v)

    p = cfg.pins
    outputs = []
    if p.rgb_led:
        outputs.append(("rgb_led", lambda: RGBLED(*[pin(x) for x in p.rgb_led], pwm=False, pin_factory=pin_factory),
                        "the RGB LED shows red, green, blue in turn"))
    else:
        outputs.append(("pass_led", pin(p.pass_led) and (lambda: LED(pin(p.pass_led), pin_factory=pin_factory)),
                        "the green (pass) LED lights"))
        outputs.append(("fail_led", pin(p.fail_led) and (lambda: LED(pin(p.fail_led), pin_factory=pin_factory)),
                        "the red (fail) LED lights"))
    outputs += [
        ("buzzer", pin(p.buzzer) and (lambda: Buzzer(pin(p.buzzer), pin_factory=pin_factory)), "the buzzer beeps"),
        ("status_led", pin(p.status_led) and (lambda: LED(pin(p.status_led), pin_factory=pin_factory)),
         "the status LED lights"),
        ("relay", pin(p.relay) and (lambda: DigitalOutputDevice(pin(p.relay), active_high=p.relay_active_high,
                                                                pin_factory=pin_factory)),
         "the relay clicks (the barrier or door opens briefly)"),
    ]
    results = []
    for name, make, what in outputs:
        if not make:
            results.append(Result(name, "SKIP", f'pins.{name} = "none"'))
            continue
        if out is not None:
            out.write(f"  ... {name}: watch and listen, {what}\n")
            out.flush()
        try:
            dev = make()
            try:
                if name == "rgb_led":
                    for color in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
                        dev.color = color
                        time.sleep(on_s / 3)
                else:
                    dev.on()
                    time.sleep(on_s)
                dev.off()
            finally:
                dev.close()
            results.append(Result(name, "PASS", f"switched on for {on_s:g} s: check that {what}"))
        except (GPIOZeroError, ValueError, TypeError, OSError, ChotError) as exc:
            results.append(Result(
                name, "FAIL", f"cannot drive pins.{name}: {exc}",
                "check the pin name in /etc/chot/terminal.toml and the wiring; the service user must be in the "
                "'gpio' group; stop the service first (systemctl stop chot-terminal)",
            ))
    return results


def check_text_scanner(cfg):
    """A handheld scanner (hid, serial): it can be opened (and grabbed); it sends codes when one is scanned."""
    from device.scanner.frames import open_source

    where = cfg.scanner.hid_device if cfg.scanner.source == "hid" else cfg.scanner.serial_port
    try:
        open_source(cfg.scanner).close()
    except (ChotError, OSError) as exc:
        return Result("scanner", "FAIL", f"{cfg.scanner.source} scanner {where} cannot be opened: {exc}",
                      "plug the scanner in, check scanner.hid_device or scanner.serial_port, and that the service "
                      "is stopped (one process at a time)")
    return Result("scanner", "PASS", f"{cfg.scanner.source} scanner {where} opened; scan a code to see it read")


def check_camera(cfg, decoder, frames=5):
    """Capture a few frames; report brightness, sharpness and any code read."""
    from device.scanner.frames import open_source

    if cfg.scanner.source in ("hid", "serial"):
        return check_text_scanner(cfg)
    try:
        source = open_source(cfg.scanner)
    except (ChotError, OSError, RuntimeError) as exc:
        return Result("camera", "FAIL", f"{cfg.scanner.source} camera cannot be opened: {exc}",
                      "check the ribbon cable or USB plug (rpicam-hello --list-cameras), that the service is "
                      "stopped (one process at a time), and scanner.source in the config")
    got, texts = [], []
    try:
        for _ in range(frames):
            frame = source.read()
            if frame is None:
                break
            got.append(frame.gray)
            if decoder is not None:
                texts += decoder.decode(frame.gray)
    except (ChotError, OSError, RuntimeError) as exc:
        return Result("camera", "FAIL", f"capturing a frame failed: {exc}",
                      "check the camera's cable and power; reboot if the camera was unplugged while running")
    finally:
        source.close()
    if not got:
        return Result("camera", "FAIL", "no frame came from the camera",
                      "check scanner.source (and scanner.path for files) and the camera's cable")
    last = got[-1]
    brightness = float(np.mean(last))
    sharpness = max(laplacian_variance(g) for g in got)
    h, w = last.shape[:2]
    detail = f"{len(got)} frame(s) {w}x{h}, brightness {brightness:.0f}, sharpness {sharpness:.1f}"
    detail += f"; {len(set(texts))} code(s) read" if texts else "; no code in view (hold a test card to check)"
    lo, hi = BRIGHTNESS_RANGE
    if brightness < lo:
        return Result("camera", "FAIL", detail + " - too dark",
                      "remove the lens cover, add light at the checkpoint, or turn the camera away from a dark wall")
    if brightness > hi:
        return Result("camera", "FAIL", detail + " - too bright",
                      "turn the camera away from the sun or a lamp; shade the scanning area")
    if sharpness < MIN_SHARPNESS:
        return Result("camera", "FAIL", detail + " - blurred or blank",
                      "clean the lens, set the focus for 20-40 cm, and hold a test card in front of the camera")
    return Result("camera", "PASS", detail)


def make_test_card(text=TEST_CARD_TEXT, size=(640, 480), scale=6):
    """A grey frame with a QR code rendered by segno on it, as a camera would see a card."""
    import io

    import segno
    from PIL import Image

    buf = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buf, kind="png", scale=scale, border=4)
    qr = Image.open(io.BytesIO(buf.getvalue())).convert("L")
    canvas = Image.new("L", size, 170)
    canvas.paste(qr, ((size[0] - qr.width) // 2, (size[1] - qr.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def check_decoder(cfg):
    from device.scanner.decode import make_decoder

    try:
        decoder = make_decoder(cfg.scanner)
    except (ChotError, ImportError, OSError) as exc:
        return None, Result("decoder", "FAIL", f"{cfg.scanner.decoder} cannot be loaded: {exc}",
                            "install the decoder: zxing-cpp (pip) or libzbar0 (apt) for pyzbar")
    texts = decoder.decode(make_test_card())
    if texts == [TEST_CARD_TEXT]:
        return decoder, Result("decoder", "PASS", f"{cfg.scanner.decoder} read the test card")
    return decoder, Result("decoder", "FAIL", f"{cfg.scanner.decoder} read {texts!r} from the test card",
                           "reinstall the package (setup-terminal.sh) or set scanner.decoder = \"zxing\"")


def check_outbox(cfg):
    path = Path(cfg.outbox.path)
    fix_perm = (f"make {path.parent} writable by the service user (the unit's StateDirectory=chot does it; "
                "run the self-test as that user: sudo -u chot ...)")
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else "/").free
    except OSError:
        free = None
    if path.exists():
        try:
            conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE chot_selftest_scratch (x INTEGER)")
                conn.execute("INSERT INTO chot_selftest_scratch VALUES (1)")
                conn.execute("ROLLBACK")
                n = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'event'").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return Result("outbox", "FAIL", f"{path}: a write was refused ({exc})",
                          fix_perm + "; if the database is damaged, move it aside (its events are then lost)")
        detail = f"{path} writable (scratch write rolled back)"
        if n == 0:
            detail += "; no events table yet"
    else:
        if not path.parent.is_dir():
            return Result("outbox", "FAIL", f"{path.parent} does not exist", fix_perm)
        try:
            probe = path.parent / f".selftest-{os.getpid()}"
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            return Result("outbox", "FAIL", f"{path.parent} is not writable ({exc.strerror})", fix_perm)
        detail = f"{path} will be created at the first start; its directory is writable"
    if free is not None:
        detail += f"; {free / 2**20:.0f} MiB free"
        if free < MIN_FREE_BYTES:
            return Result("outbox", "FAIL", detail, "free disk space: the outbox needs room for days offline")
    return Result("outbox", "PASS", detail)


def check_broker(cfg, timeout=5.0):
    from chot import wire
    from chot.mqtt import MqttSettings, MqttSetupError, build_client, connect

    m = cfg.mqtt
    if not m.enabled:
        return Result("broker", "SKIP", "mqtt.enabled = false: events stay in the outbox")
    where = f"{m.host}:{m.port}"
    # The daemon's own identity and session settings (chot.mqtt, as the link builds its client):
    # the fleet's broker makes the certificate's CN the client id anyway, so this connection takes
    # the daemon's session over for a moment. Clean start off with the daemon's session expiry
    # keeps that session (its subscriptions) instead of wiping it; a running daemon is displaced
    # and reconnects and subscribes again by itself. No last will: the status is not touched.
    settings = MqttSettings.from_section(
        m, client_id=cfg.device.id, default_username=cfg.device.id, clean_start=False, keepalive_s=10,
        reconnect_on_failure=False, connect_timeout_s=timeout,
    )
    try:
        client = build_client(settings)
    except MqttSetupError as exc:
        return Result("broker", "FAIL", f"the MQTT settings cannot be used: {exc}",
                      "check mqtt.ca, mqtt.cert and mqtt.key (under /etc/chot/tls; the key readable by the "
                      "service user), mqtt.username and mqtt.password_file, or install the bundle again")
    state = {"connack": None, "suback": None, "gone": None}
    done = threading.Event()

    def on_connect(c, u, flags, rc, props):
        state["connack"] = rc
        if rc.is_failure:
            done.set()
        else:
            c.subscribe(wire.ack_topic(cfg.device.id), qos=1)

    def on_subscribe(c, u, mid, rcs, props):
        state["suback"] = rcs
        done.set()

    def on_disconnect(c, u, flags, rc, props):
        state["gone"] = rc
        done.set()

    client.on_connect, client.on_subscribe, client.on_disconnect = on_connect, on_subscribe, on_disconnect
    try:
        connect(client, settings)
    except ssl.SSLCertVerificationError as exc:
        return Result("broker", "FAIL", f"{where}: the broker's certificate is not trusted ({exc.verify_message})",
                      "check that mqtt.host is the name in the broker's certificate and mqtt.ca the fleet's CA; "
                      "a clock far off also fails certificates: check the clock item")
    except (socket.gaierror, UnicodeError) as exc:
        return Result("broker", "FAIL", f"{where}: the host name does not resolve ({exc})",
                      "check mqtt.host and the terminal's DNS / network connection")
    except (OSError, ssl.SSLError) as exc:
        return Result("broker", "FAIL", f"{where}: cannot connect ({exc})",
                      "check the network cable or Wi-Fi, that the broker runs, the port, and any firewall")
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    rc = state["connack"]
    if rc is None:
        why = "the connection was closed" if state["gone"] is not None else f"no answer within {timeout:g} s"
        return Result("broker", "FAIL", f"{where}: {why}",
                      "the broker refused the device's certificate (revoked, or from another fleet): enrol the "
                      "terminal again (chot provision device) and install the new bundle")
    if rc.is_failure:
        return Result("broker", "FAIL", f"{where}: connection refused: {rc}",
                      "the broker does not accept this device's credentials: enrol it again")
    sub = state["suback"]
    if not sub or sub[0].is_failure:
        return Result("broker", "FAIL", f"{where}: connected, but the ack topic was refused ({sub})",
                      "the broker does not know this device id: regenerate its config (chot provision "
                      "broker-config) and restart the broker (a terminal enrolled since its last start is refused)")
    return Result("broker", "PASS", f"{where}: connected{' over TLS' if m.tls else ''} as the device; ack topic "
                                    "subscribed")


def check_clock():
    from device.clock import kernel_synced

    try:
        synced = bool(kernel_synced())
    except OSError as exc:
        synced, note = False, f" ({exc})"
    else:
        note = ""
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if synced:
        return Result("clock", "PASS", f"synchronised (NTP), {now}")
    return Result("clock", "FAIL", f"not synchronised{note}; the clock says {now}",
                  "connect the network and check `timedatectl` (NTP on, a reachable time server); events are "
                  "still recorded, flagged as from an unsynchronised clock")


# --- the run -------------------------------------------------------------------------------------


def check_config(cfg):
    """The config loaded; its sealing key (privacy.seal_public_key) is a usable collector key."""
    from chot.personal import KeyFileError, load_public_key

    detail = f"device {cfg.device.id}, {cfg.device.direction}"
    path = cfg.privacy.seal_public_key
    if not path:
        return Result("config", "PASS", detail + "; privacy.seal_public_key is not set: events carry no personal "
                                                 "part, tracing cannot find these people")
    try:
        kid, _raw = load_public_key(path)
    except KeyFileError as exc:
        return Result("config", "FAIL", str(exc),
                      "install the bundle again (chot provision device) or copy the collector's seal.pub to "
                      f"{path}; the terminal does not start without it")
    return Result("config", "PASS", detail + f"; personal parts sealed to collector key {kid}")


def _print(result, out):
    out.write(f"{result.status:<5} {result.name:<11} {result.detail}\n")
    if result.status == "FAIL" and result.fix:
        out.write(f"{'':17}-> {result.fix}\n")
    out.flush()


def run_selftest(config_path, pin_factory=None, out=None, frames=5, on_s=0.5, broker_timeout=5.0):
    """Run every item, print PASS/FAIL/SKIP for each; return 0 only if nothing failed."""
    from device.config import load_terminal_config

    out = out or sys.stdout
    results = []

    def add(r):
        results.append(r)
        _print(r, out)

    out.write(f"chot self-test of {config_path}\n")
    try:
        cfg = load_terminal_config(config_path)
    except ConfigError as exc:
        add(Result("config", "FAIL", str(exc), "fix every problem listed, then run the self-test again"))
        return 1
    add(check_config(cfg))

    factory = pin_factory
    if factory is None:
        from device.io.pins import make_pin_factory

        try:
            factory = make_pin_factory(cfg.pins.factory)
        except ChotError as exc:
            add(Result("pins", "FAIL", str(exc), "fix pins.factory, or run on the Pi as a user in the gpio group"))
            factory = False
    if factory is not False:
        for r in check_outputs(cfg, factory, on_s=on_s, out=out):
            add(r)
    decoder, dec_result = check_decoder(cfg)
    add(check_camera(cfg, decoder, frames=frames))
    add(dec_result)
    if decoder is not None:
        decoder.close()
    add(check_outbox(cfg))
    add(check_broker(cfg, timeout=broker_timeout))
    add(check_clock())
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        out.write(f"FAILED: {', '.join(failed)}: fix what is shown after each arrow and run the self-test again\n")
        return 1
    out.write("ALL PASSED\n")
    return 0
