"""The wire contract between terminals and the collector: topics and message schemas.

Both `device.uplink` and `collector` import this module and nothing else of each other.
Topics (`<id>` is the device id), MQTT 5, QoS 1:

- `chot/v1/dev/<id>/event`   device -> collector: one event or a batch (JSON)
- `chot/v1/dev/<id>/status`  device -> all, retained; the last will says offline
- `chot/v1/dev/<id>/ack`     collector -> device: highest seq stored contiguously
- `chot/v1/dev/<id>/config`  collector -> device, retained, signed
- `chot/v1/broadcast/<name>` collector -> devices, retained, signed (denylist, trust)

An event is a JSON object with the fields of `EVENT_FIELDS`; `validate_event` returns the
list of problems (empty when valid). `(device_id, seq)` identifies an event.
"""

import json
import re

PREFIX = "chot/v1"
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EVENT_VERSION = 1
MAX_MESSAGE_BYTES = 1024 * 1024  # a batch larger than this is rejected

FORMATS = ("native", "dcc", "shc", "plain", "unknown", "none")
DECISIONS = ("PASS", "FAIL")
SOURCES = ("camera", "manual")
DIRECTIONS = ("in", "out")


def event_topic(device_id):
    return f"{PREFIX}/dev/{device_id}/event"


def status_topic(device_id):
    return f"{PREFIX}/dev/{device_id}/status"


def ack_topic(device_id):
    return f"{PREFIX}/dev/{device_id}/ack"


def config_topic(device_id):
    return f"{PREFIX}/dev/{device_id}/config"


def broadcast_topic(name):
    return f"{PREFIX}/broadcast/{name}"


def device_from_topic(topic):
    """Return the device id of a `chot/v1/dev/<id>/...` topic, or None."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == "chot" and parts[1] == "v1" and parts[2] == "dev":
        return parts[3] if DEVICE_ID_RE.fullmatch(parts[3]) else None
    return None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# field -> (check, description of what is allowed)
EVENT_FIELDS = {
    "v": (lambda v: v == EVENT_VERSION, f"{EVENT_VERSION}"),
    "device_id": (lambda v: isinstance(v, str) and DEVICE_ID_RE.fullmatch(v), "a device id"),
    "seq": (lambda v: _is_int(v) and 1 <= v < 2**63, "an integer >= 1"),
    "uuid": (
        lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", v),
        "a UUID",
    ),
    "checkpoint": (lambda v: isinstance(v, str) and 0 < len(v) <= 128, "a checkpoint id"),
    "direction": (lambda v: v in DIRECTIONS, "'in' or 'out'"),
    "time": (
        lambda v: isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", v),
        "an ISO 8601 UTC time ending in Z",
    ),
    "clock": (
        lambda v: isinstance(v, dict)
        and isinstance(v.get("synced"), bool)
        and isinstance(v.get("boot_id"), str)
        and _is_int(v.get("mono_ns")),
        "{synced: bool, boot_id: str, mono_ns: int}",
    ),
    "source": (lambda v: v in SOURCES, "'camera' or 'manual'"),
    "format": (lambda v: v in FORMATS, "one of " + ", ".join(FORMATS)),
    "decision": (lambda v: v in DECISIONS, "'PASS' or 'FAIL'"),
    "reason": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "a reason code"),
    "subject": (lambda v: isinstance(v, dict) and len(json.dumps(v)) <= 4096, "an object (summary)"),
}


def validate_event(obj):
    """Return a list of problems with `obj` as an event; empty when it is valid."""
    if not isinstance(obj, dict):
        return [f"an event must be a JSON object, found {type(obj).__name__}"]
    problems = []
    for name, (check, allowed) in EVENT_FIELDS.items():
        if name not in obj:
            problems.append(f"{name}: missing; allowed: {allowed}")
        elif not check(obj[name]):
            problems.append(f"{name}: wrong value or type; allowed: {allowed}")
    extra = set(obj) - set(EVENT_FIELDS)
    if extra:
        problems.append(f"unknown fields: {', '.join(sorted(extra))}")
    return problems


def dumps(obj):
    """Compact JSON as sent on the wire (UTF-8 bytes)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")
