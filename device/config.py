"""The terminal's configuration schema: one TOML file per terminal.

On a Pi it lives at /etc/chot/terminal.toml. `load_terminal_config(path)` validates it at
start-up and lists every error; `chot terminal check-config FILE` runs the same check.
`chot terminal check-config --defaults` prints every key with its default.
"""

from chot.config import Field, describe, load
from chot.wire import CHECKPOINT_PATTERN, ID_PATTERN

DEFAULT_PATH = "/etc/chot/terminal.toml"
_ID = ID_PATTERN
PIN = r"(GPIO|BOARD|BCM)?[0-9]{1,2}|none"

SCHEMA = {
    "device": {
        "id": Field("str", pattern=_ID, help="device id: the MQTT client id and topic segment"),
        "checkpoint": Field(
            "str", pattern=CHECKPOINT_PATTERN,
            help="checkpoint id, e.g. 'hk-phuc-tan-gate-1' (letters, digits, _ . : -)",
        ),
        "direction": Field("str", choices=("in", "out"), help="entry or exit of the checkpoint"),
    },
    "scanner": {
        "source": Field(
            "str", "picamera2", choices=("picamera2", "usb", "files", "synthetic"), help="frame source"
        ),
        "path": Field("path", None, optional=True, help="an image file or folder (source = 'files')"),
        "loop": Field("bool", False, help="loop over the files forever (source = 'files')"),
        "usb_device": Field("int", 0, min=0, max=63, help="V4L2 camera index (source = 'usb')"),
        "width": Field("int", 640, min=64, max=4096, help="width of the grey frame that is decoded"),
        "height": Field("int", 480, min=64, max=4096, help="height of the grey frame that is decoded"),
        "fps": Field("float", 15.0, min=0.1, max=120.0, help="frames per second asked of the camera"),
        "decoder": Field("str", "zxing", choices=("zxing", "pyzbar"), help="QR decoder"),
        "second_pass": Field("bool", True, help="retry an empty frame upscaled / with another binarizer"),
        "second_pass_budget_ms": Field(
            "float", 15.0, min=0.0, max=1000.0, help="time bound of the second pass per frame"
        ),
        "cooldown_s": Field(
            "float", 5.0, min=0.0, max=3600.0,
            help="the same code or person again within this many seconds is ignored (kept in memory only)",
        ),
        "chunk_timeout_s": Field(
            "float", 30.0, min=1.0, max=600.0, help="how long parts of a multi-QR code wait for the rest"
        ),
        "synthetic_seed": Field("int", 1, help="random seed of the synthetic crowd (source = 'synthetic')"),
        "synthetic_issuer_key": Field(
            "path", None, optional=True, help="issuer private key the synthetic crowd signs with"
        ),
    },
    "pins": {
        "factory": Field(
            "str", "auto", choices=("auto", "mock", "lgpio", "rpigpio"), help="gpiozero pin factory"
        ),
        "pass_led": Field("str", "GPIO17", pattern=PIN, help="green LED (or 'none')"),
        "fail_led": Field("str", "GPIO27", pattern=PIN, help="red LED (or 'none')"),
        "rgb_led": Field(
            "list", None, optional=True, item="str", help="one RGB LED instead: [red, green, blue] pins"
        ),
        "buzzer": Field("str", "GPIO22", pattern=PIN, help="active buzzer (or 'none')"),
        "relay": Field("str", "none", pattern=PIN, help="relay of a barrier or door (or 'none')"),
        "relay_active_high": Field("bool", True, help="the relay closes when its pin is high"),
        "button": Field("str", "none", pattern=PIN, help="the guard's manual-pass button (or 'none')"),
        "status_led": Field("str", "GPIO5", pattern=PIN, help="status LED (or 'none')"),
    },
    "feedback": {
        "pass_led_s": Field("float", 1.0, min=0.05, max=30.0, help="PASS: green LED on for"),
        "pass_beeps": Field("int", 1, min=0, max=10, help="PASS: number of beeps"),
        "pass_beep_s": Field("float", 0.08, min=0.01, max=2.0, help="PASS: length of a beep"),
        "relay_s": Field("float", 1.0, min=0.05, max=30.0, help="PASS: relay pulse length"),
        "fail_led_s": Field("float", 2.0, min=0.05, max=30.0, help="FAIL: red LED on for"),
        "fail_beeps": Field("int", 3, min=0, max=10, help="FAIL: number of beeps"),
        "fail_beep_s": Field("float", 0.12, min=0.01, max=2.0, help="FAIL: length of a beep"),
        "unreadable_blinks": Field("int", 2, min=0, max=10, help="unreadable/unsigned: red blinks"),
        "unreadable_beep_s": Field("float", 0.6, min=0.01, max=3.0, help="unreadable/unsigned: one long beep"),
        "unreadable_blink_s": Field(
            "float", 0.2, min=0.02, max=2.0, help="unreadable/unsigned: red on (and off) per blink"
        ),
        "fault_s": Field("float", 2.0, min=0.1, max=30.0, help="fault (fail closed): red fast blink and beep for"),
        "fault_blink_s": Field("float", 0.1, min=0.02, max=2.0, help="status LED fast blink on a fault"),
        "heartbeat_s": Field("float", 1.0, min=0.1, max=10.0, help="status LED heartbeat period"),
    },
    "policy": {
        "trusted_issuers": Field(
            "list", [], item="str", help="issuer public keys, certificates or trust lists to trust (paths)"
        ),
        "max_age_h": Field(
            "float", 24.0, min=0.0, max=24.0 * 365, help="a declaration older than this fails (expired)"
        ),
        "clock_skew_s": Field("float", 300.0, min=0.0, max=86400.0, help="tolerance for clocks running ahead"),
        "clock_floor_tolerance_s": Field(
            "float", 300.0, min=0.0, max=86400.0,
            help="the clock reading more than this before the terminal's time floor (its latest event time, the "
            "newest signed update's issue time) is behind: events flagged, time checks fail clock_behind",
        ),
        "max_list_age_h": Field(
            "float", 72.0, min=0.0, max=24.0 * 365,
            help="trusted issuers and deny list from the collector issued longer ago than this make the terminal "
            "stale (status and status LED); 0: no age limit (their expiry still counts)",
        ),
        "fail_on_symptoms": Field("bool", True, help="a declaration with symptoms fails"),
        "fail_on_contact": Field("bool", True, help="a declaration with contact with a case fails"),
        "fail_on_travel": Field("bool", False, help="a declaration with travel from an outbreak area fails"),
        "accept_plain": Field("bool", False, help="unsigned QR texts (an ID, a link) pass"),
        "accept_formats": Field(
            "list",
            ["native", "dcc", "shc"],
            item="str",
            choices=("native", "dcc", "shc", "plain"),
            help="signed formats accepted",
        ),
        "denylist": Field(
            "path", None, optional=True,
            help="deny list file (chot-denylist-v2: hashes of revoked credential ids and of denied persons)",
        ),
        "dcc_schema_dir": Field(
            "path",
            None,
            optional=True,
            help="the ehn-dcc-schema releases (one folder per version); unset: $CHOT_DCC_SCHEMA_DIR or "
            "/etc/chot/dcc-schema or /usr/share/chot/dcc-schema",
        ),
        "dcc_require_complete_vaccination": Field("bool", True, help="DCC: vaccination must be complete"),
        "dcc_recovery_days": Field("int", 180, min=0, max=3650, help="DCC: recovery valid for"),
        "dcc_test_hours": Field("int", 72, min=0, max=720, help="DCC: negative test valid for"),
        "shc_crl": Field("list", [], item="str", help="SHC: revocation list files (issuer CRLs)"),
        "shc_require_complete_vaccination": Field(
            "bool", True, help="SHC: an immunization card must show a complete series (2 doses, or 1 of Janssen)"
        ),
    },
    "outbox": {
        "path": Field("path", "/var/lib/chot/outbox.db", help="the outbox database (SQLite, WAL)"),
        "max_rows": Field("int", 1_000_000, min=1, help="cap on events kept; at the cap the terminal fails closed"),
        "max_bytes": Field(
            "int", 512 * 1024 * 1024, min=256 * 1024,
            help="cap on the outbox's disk use in bytes: database pages, WAL and its index (-shm) counted; "
            "at most the free space of its disk",
        ),
        "retention_days": Field(
            "float", 3.0, min=0.0, max=3650.0,
            help="delivered events recorded longer ago than this are deleted (days; the collector keeps them for "
            "tracing)",
        ),
        "synchronous": Field(
            "str", "FULL", choices=("FULL", "NORMAL"), help="SQLite synchronous mode (FULL survives power loss)"
        ),
    },
    "privacy": {
        "seal_public_key": Field(
            "path", None, optional=True,
            help="the collector's sealing public key (its seal.pub; provisioning installs "
            "/etc/chot/collector-seal.pub): each event's personal part is sealed to it. "
            "Unset: events carry no personal part",
        ),
        "seal_rotate_events": Field(
            "int", 1000, min=1, max=1_000_000, help="a new ephemeral sealing key after this many events"
        ),
        "seal_rotate_s": Field(
            "float", 600.0, min=1.0, max=86400.0, help="a new ephemeral sealing key after this many seconds"
        ),
    },
    "mqtt": {
        "enabled": Field("bool", False, help="publish events to the collector"),
        "host": Field("str", "localhost", help="broker host"),
        "port": Field("int", 1883, min=1, max=65535, help="broker port (8883 for TLS)"),
        "tls": Field("bool", False, help="connect with TLS"),
        "ca": Field("path", None, optional=True, help="CA certificate of the broker (PEM)"),
        "cert": Field("path", None, optional=True, help="the device's client certificate (PEM)"),
        "key": Field("path", None, optional=True, help="the device's private key (PEM, 0600)"),
        "username": Field("str", None, optional=True, help="username, when not using a client certificate"),
        "password_file": Field("path", None, optional=True, help="file holding the password (0600)"),
        "keepalive_s": Field("int", 30, min=5, max=3600),
        "session_expiry_s": Field("int", 7 * 86400, min=0, help="MQTT 5 session expiry"),
        "inflight": Field("int", 100, min=1, max=1000, help="events in flight at once"),
        "batch": Field("int", 100, min=1, max=1000, help="events per message while draining a backlog"),
        "ack_timeout_s": Field("float", 30.0, min=1.0, max=3600.0, help="resend what the collector has not acked"),
        "status_interval_s": Field("float", 60.0, min=1.0, max=3600.0, help="retained status refresh"),
        "down_alarm_min": Field("float", 10.0, min=0.1, max=1440.0, help="status LED fault after the uplink is down"),
        "collector_public_key": Field(
            "path", None, optional=True, help="the collector's public key (PEM): config and lists must verify"
        ),
        "reconnect_min_s": Field("float", 1.0, min=0.1, max=60.0),
        "reconnect_max_s": Field("float", 60.0, min=1.0, max=3600.0),
    },
}


def load_terminal_config(path=DEFAULT_PATH, overrides=None):
    """Read and validate a terminal config; raise `ConfigError` listing every problem."""
    return load(path, SCHEMA, overrides=overrides)


def defaults_toml():
    """Every key of the terminal config with its default and what it allows, as TOML."""
    return describe(SCHEMA)
