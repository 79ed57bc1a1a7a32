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


UUID_RE = re.compile(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_SEQ_LIMIT = 2**63


def _check_clock(v):
    return (
        isinstance(v, dict)
        and isinstance(v.get("synced"), bool)
        and isinstance(v.get("boot_id"), str)
        and _is_int(v.get("mono_ns"))
    )


# field -> (check, description of what is allowed)
EVENT_FIELDS = {
    "v": (lambda v: v == EVENT_VERSION, f"{EVENT_VERSION}"),
    "device_id": (lambda v: isinstance(v, str) and DEVICE_ID_RE.fullmatch(v), "a device id"),
    "seq": (lambda v: _is_int(v) and 1 <= v < _SEQ_LIMIT, "an integer >= 1"),
    "uuid": (lambda v: isinstance(v, str) and UUID_RE.fullmatch(v), "a UUID"),
    "checkpoint": (lambda v: isinstance(v, str) and 0 < len(v) <= 128, "a checkpoint id"),
    "direction": (lambda v: v in DIRECTIONS, "'in' or 'out'"),
    "time": (lambda v: isinstance(v, str) and TIME_RE.fullmatch(v), "an ISO 8601 UTC time ending in Z"),
    "clock": (_check_clock, "{synced: bool, boot_id: str, mono_ns: int}"),
    "source": (lambda v: v in SOURCES, "'camera' or 'manual'"),
    "format": (lambda v: v in FORMATS, "one of " + ", ".join(FORMATS)),
    "decision": (lambda v: v in DECISIONS, "'PASS' or 'FAIL'"),
    "reason": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "a reason code"),
    "subject": (lambda v: isinstance(v, dict) and len(json.dumps(v)) <= 4096, "an object (summary)"),
}
_N_FIELDS = len(EVENT_FIELDS)


def _valid_event(obj):
    """True when `obj` (a dict) passes every check of EVENT_FIELDS and has no other field.

    The same checks as EVENT_FIELDS written out inline: one call per event instead of one per
    field. False sends validate_event down the field-by-field path that says what is wrong.
    """
    if len(obj) != _N_FIELDS:
        return False
    try:
        device_id, seq, uuid, checkpoint = obj["device_id"], obj["seq"], obj["uuid"], obj["checkpoint"]
        time, clock, reason, subject = obj["time"], obj["clock"], obj["reason"], obj["subject"]
        return bool(
            obj["v"] == EVENT_VERSION
            and type(device_id) is str
            and DEVICE_ID_RE.fullmatch(device_id)
            and type(seq) is int
            and 1 <= seq < _SEQ_LIMIT
            and type(uuid) is str
            and UUID_RE.fullmatch(uuid)
            and type(checkpoint) is str
            and 0 < len(checkpoint) <= 128
            and obj["direction"] in DIRECTIONS
            and type(time) is str
            and TIME_RE.fullmatch(time)
            and _check_clock(clock)
            and obj["source"] in SOURCES
            and obj["format"] in FORMATS
            and obj["decision"] in DECISIONS
            and type(reason) is str
            and 0 < len(reason) <= 64
            and type(subject) is dict
            and len(json.dumps(subject)) <= 4096
        )
    except KeyError:  # a field is missing
        return False


def validate_event(obj):
    """Return a list of problems with `obj` as an event; empty when it is valid."""
    if not isinstance(obj, dict):
        return [f"an event must be a JSON object, found {type(obj).__name__}"]
    if _valid_event(obj):
        return []
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


SUBJECT_KEY_RE = re.compile(r"[0-9a-f]{64}")


_ID_SEP_RE = re.compile(r"[\s.\-_/]+")


def normalise_id_number(id_number):
    """An ID number as hashed: spaces, dots, dashes, underscores and slashes removed, upper-cased.

    The same as device/credentials/subject.py `normalise_id`: '001 090-012.345' -> '001090012345'.
    """
    return _ID_SEP_RE.sub("", str(id_number)).upper()


def subject_key_for_id(id_number):
    """The subject key of an ID number: sha256("chot-subject-v1|" + normalised id), hex.

    Both sides use it: the terminal puts it in an event's `subject["key"]`, the collector
    indexes it and turns a tracer's ID number into it; the ID itself never travels.
    """
    import hashlib

    norm = normalise_id_number(id_number)
    if not norm:
        raise ValueError("an ID number must not be empty")
    return hashlib.sha256(("chot-subject-v1|" + norm).encode("utf-8")).hexdigest()


def dumps(obj):
    """Compact JSON as sent on the wire (UTF-8 bytes)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")


# --- event messages: one event, or a batch while draining ------------------------------------


class WireError(ValueError):
    """A message on the wire is malformed; `problems` lists what is wrong."""

    def __init__(self, problems):
        self.problems = list(problems) if isinstance(problems, list | tuple) else [str(problems)]
        super().__init__("; ".join(self.problems))


def encode_events(events):
    """One event as an object, several as {"batch": [...]} (UTF-8 JSON bytes)."""
    events = list(events)
    return dumps(events[0] if len(events) == 1 else {"batch": events})


def decode_event_message(topic, payload):
    """Parse an event message; return (good_events, problems).

    Raises WireError when the message as a whole is unusable (not JSON, too big, wrong topic).
    A batch may hold some bad events: those are returned as problems, the good ones kept.
    Every event's device_id must equal the device id in the topic.
    """
    device = device_from_topic(topic)
    if device is None or not topic.endswith("/event"):
        raise WireError(f"not an event topic: {topic!r}")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError(f"message too large: {len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"not JSON: {exc.__class__.__name__}") from None
    if isinstance(obj, dict) and set(obj) == {"batch"}:
        items = obj["batch"]
        if not isinstance(items, list) or not items:
            raise WireError("batch must be a non-empty list")
    else:
        items = [obj]
    good, problems = [], []
    for i, ev in enumerate(items):
        errs = validate_event(ev)
        if not errs and ev["device_id"] != device:
            errs = [f"device_id {ev['device_id']!r} differs from the topic's {device!r}"]
        if errs:
            problems.append(f"event {i}: " + "; ".join(errs))
        else:
            good.append(ev)
    return good, problems


# --- acks: collector -> device ----------------------------------------------------------------


def encode_ack(device_id, seq):
    """The collector's ack: every event of `device_id` with seq <= `seq` is stored."""
    return dumps({"device_id": device_id, "seq": int(seq)})


def decode_ack(payload):
    """Return (device_id, seq) or raise WireError."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"ack is not JSON: {exc.__class__.__name__}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("device_id"), str) or not _is_int(obj.get("seq")):
        raise WireError("ack must be {device_id: str, seq: int}")
    return obj["device_id"], obj["seq"]


# --- status: device -> all, retained ----------------------------------------------------------

STATUS_FIELDS = (
    "device_id",  # str
    "online",  # bool; the last will has online false
    "version",  # software version
    "time",  # ISO UTC
    "outbox_depth",  # undelivered events
    "oldest_undelivered_age_s",  # float or null
    "clock_synced",  # bool
    "last_scan",  # ISO UTC or null
    "passes",  # int since start
    "fails",  # int since start
    "last_seq",  # int
)


def encode_status(**fields):
    return dumps({k: fields.get(k) for k in STATUS_FIELDS})


def offline_status(device_id):
    """The last-will payload."""
    return dumps({"device_id": device_id, "online": False})


# --- signed envelopes: collector -> devices (config, denylist, trust) -------------------------
# {"kind": str, "version": int, "issued": ISO, "target": device id or "*", "body": {...},
#  "alg": "Ed25519", "sig": base64url(signature over canonical JSON of the other five fields)}

SIGNED_KINDS = ("config", "denylist", "trust")


def _signed_bytes(env):
    return dumps({k: env[k] for k in ("kind", "version", "issued", "target", "body")})


def sign_envelope(private_key, kind, version, body, target="*", issued=None):
    """Sign a message with the collector's Ed25519 private key; return JSON bytes."""
    import base64
    from datetime import UTC, datetime

    if kind not in SIGNED_KINDS:
        raise ValueError(f"kind must be one of {SIGNED_KINDS}")
    env = {
        "kind": kind,
        "version": int(version),
        "issued": issued or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": target,
        "body": body,
    }
    sig = private_key.sign(_signed_bytes(env))
    env["alg"] = "Ed25519"
    env["sig"] = base64.urlsafe_b64encode(sig).decode().rstrip("=")
    return dumps(env)


def verify_envelope(public_key, payload, kind, target=None):
    """Verify a signed message; return the envelope dict or raise WireError saying why."""
    import base64

    from cryptography.exceptions import InvalidSignature

    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("signed message is not JSON") from None
    need = ("kind", "version", "issued", "target", "body", "alg", "sig")
    if not isinstance(env, dict) or any(k not in env for k in need):
        raise WireError("signed message lacks fields: needs " + ", ".join(need))
    if env["kind"] != kind:
        raise WireError(f"expected a {kind!r} message, found {env['kind']!r}")
    if not _is_int(env["version"]) or env["alg"] != "Ed25519" or not isinstance(env["sig"], str):
        raise WireError("bad version, alg or sig")
    if target is not None and env["target"] not in ("*", target):
        raise WireError(f"message is for {env['target']!r}, not {target!r}")
    try:
        sig = base64.urlsafe_b64decode(env["sig"] + "=" * (-len(env["sig"]) % 4))
        public_key.verify(sig, _signed_bytes(env))
    except (InvalidSignature, ValueError, TypeError):
        raise WireError("signature does not verify against the pinned collector key") from None
    return env
