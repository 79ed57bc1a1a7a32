"""The wire contract between terminals and the collector: topics and typed messages.

Both `device.uplink` and `collector` import this module (and `chot.personal`, the sealed part)
and nothing else of each other. Topics (`<id>` is the device id), MQTT 5, QoS 1:

- `chot/v1/dev/<id>/event`   device -> collector: one `Event`, or {"batch": [Event, ...]} (JSON)
- `chot/v1/dev/<id>/status`  device -> all, retained (`Status`); the last will says offline
- `chot/v1/dev/<id>/ack`     collector -> device (`Ack`): highest seq stored contiguously
- `chot/v1/dev/<id>/config`  collector -> device, retained, signed
- `chot/v1/broadcast/<name>` collector -> devices, retained, signed (denylist, trust)

Messages are msgspec Structs with one validator each (`decode_event_message`, `decode_ack`,
`decode_status`); a bad message raises `WireError` with a `code`. `(device_id, seq)`
identifies an event. An event's clear part holds only what routing, counting and fleet
health need; the person is in `sealed` (see chot/personal.py and docs/security.md).
"""
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from chot.errors import ChotError
from chot.personal import MAX_SEALED_CHARS

PREFIX = "chot/v1"
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
CHECKPOINT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
DEVICE_ID_RE = re.compile(ID_PATTERN)
CHECKPOINT_RE = re.compile(CHECKPOINT_PATTERN)
EVENT_VERSION = 2
MAX_MESSAGE_BYTES = 1024 * 1024  # a batch larger than this is rejected
MAX_STATUS_BYTES = 4096
_SEQ_MAX = 2**63 - 1


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class Source(StrEnum):
    CAMERA = "camera"  # a code read by the terminal
    SCANNER = "scanner"  # a code read by a handheld scanner on the terminal (keyboard-mode USB or serial)
    MANUAL = "manual"  # the guard's button: a person checked on paper at the terminal
    PAPER = "paper"  # a paper declaration entered by checkpoint staff


class Format(StrEnum):
    NATIVE = "native"
    DCC = "dcc"
    SHC = "shc"
    PLAIN = "plain"
    UNKNOWN = "unknown"
    NONE = "none"
    CCCD = "cccd"  # the chip ID card's QR (căn cước công dân): an identity claim, unsigned
    PCCOVID = "pccovid"  # the PC-Covid app's personal QR: an identity claim, unsigned


class DecisionCode(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"


class Reason(StrEnum):
    """Why a credential passed or failed; described in device/credentials/reasons.py and docs/reasons.md."""

    OK = "ok"
    NO_CODE = "no_code"
    UNREADABLE = "unreadable"
    UNKNOWN_FORMAT = "unknown_format"
    UNSIGNED = "unsigned"
    FORMAT_NOT_ACCEPTED = "format_not_accepted"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_ISSUER = "unknown_issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    SYMPTOMS_DECLARED = "symptoms_declared"
    CONTACT_DECLARED = "contact_declared"
    TRAVEL_DECLARED = "travel_declared"
    DENYLISTED = "denylisted"
    REVOKED = "revoked"
    OUTBOX_FULL = "outbox_full"
    INCOMPLETE = "incomplete"
    KEY_USAGE = "key_usage"
    SCHEMA = "schema"
    VACCINATION_INCOMPLETE = "vaccination_incomplete"
    RECOVERY_EXPIRED = "recovery_expired"
    TEST_EXPIRED = "test_expired"
    TEST_POSITIVE = "test_positive"
    MANUAL = "manual"
    CLOCK_BEHIND = "clock_behind"
    BAD_VALIDITY = "bad_validity"
    SEE_GUARD = "see_guard"
    GUARD_CONFIRMED = "guard_confirmed"
    BAD_ID_NUMBER = "bad_id_number"
    BAD_DATE = "bad_date"
    MALFORMED = "malformed"
    DSC_EXPIRED = "dsc_expired"
    DSC_NOT_YET_VALID = "dsc_not_yet_valid"
    UNKNOWN_VALUE = "unknown_value"


# kept for the callers that list them
FORMATS = tuple(f.value for f in Format)
DECISIONS = tuple(d.value for d in DecisionCode)
SOURCES = tuple(s.value for s in Source)
DIRECTIONS = tuple(d.value for d in Direction)


class WireError(ChotError):
    """A message on the wire is malformed; `code` says how (for counting), the message says what."""

    def __init__(self, message, code="invalid"):
        self.code = code
        self.problems = [str(message)]
        super().__init__(str(message))


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


# --- the typed messages -----------------------------------------------------------------------

DeviceId = Annotated[str, Meta(pattern=f"^{ID_PATTERN}$")]
CheckpointId = Annotated[str, Meta(pattern=f"^{CHECKPOINT_PATTERN}$")]
Seq = Annotated[int, Meta(ge=1, le=_SEQ_MAX)]
WireTime = Annotated[str, Meta(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")]
UUID_PATTERN = r"^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$"
UUID_RE = re.compile(UUID_PATTERN[1:-1])


class ClockRef(Struct, forbid_unknown_fields=True):
    """A time anchor from the collector: its UTC time in the latest ack, and this boot's
    monotonic time when the terminal received it. The collector re-anchors an event of the same
    boot as ref.time + (mono_ns - ref.mono_ns), whatever the terminal's wall clock said."""

    time: "WireTime"
    mono_ns: Annotated[int, Meta(ge=0, le=_SEQ_MAX)]


class Clock(Struct, forbid_unknown_fields=True):
    """The terminal clock's quality when the event was decided (a Pi has no real-time clock)."""

    synced: bool
    boot_id: Annotated[str, Meta(pattern=r"^[0-9A-Za-z-]{1,64}$")]
    mono_ns: Annotated[int, Meta(ge=0, le=_SEQ_MAX)]
    ref: ClockRef | None = None
    # The wall clock read earlier than the terminal's persisted time floor (its last event's time,
    # the newest signed update's issue time): the clock was set back, or lost after a reboot.
    behind: bool = False


class Sealed(Struct, forbid_unknown_fields=True):
    """The personal part, sealed to the collector's key `kid` from the ephemeral key `epk`."""

    kid: Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")]
    epk: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43}$")]
    ct: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", min_length=16, max_length=MAX_SEALED_CHARS)]


class EventRef(Struct, forbid_unknown_fields=True):
    """Another event of the same device, by its seq and uuid (both must match at the collector)."""

    seq: Seq
    uuid: Annotated[str, Meta(pattern=UUID_PATTERN)]


class Event(Struct, forbid_unknown_fields=True):
    """One decision. Clear fields are routing, counting and fleet health; the person is `sealed`.

    `verified`: the credential's signature and issuer verified on the terminal (a person's
    record); false for an unsigned, forged or unreadable claim and for events with no credential.
    """

    v: Literal[2]
    device_id: DeviceId
    seq: Seq
    uuid: Annotated[str, Meta(pattern=UUID_PATTERN)]
    checkpoint: CheckpointId
    direction: Direction
    time: WireTime
    clock: Clock
    source: Source
    format: Format
    decision: DecisionCode
    reason: Reason
    verified: bool
    sealed: Sealed | None = None
    # The event this one is about (events are immutable): the guard's confirmation of a
    # "see the guard" event (reason guard_confirmed) refers to that event. Left out of the JSON
    # when unset, so that events without it are byte for byte what they were.
    refers_to: EventRef | msgspec.UnsetType = msgspec.UNSET


class Ack(Struct, forbid_unknown_fields=True):
    """The collector's ack: every event of `device_id` with seq <= `seq` is stored.

    `time`: the collector's UTC time (terminals re-anchor their clock on it, see ClockRef);
    `sig`: Ed25519 over `ack_signed_bytes` with the collector's signing key, so that only the
    collector can free a terminal's events even on a broker without ACLs.
    """

    device_id: DeviceId
    seq: Annotated[int, Meta(ge=0, le=_SEQ_MAX)]
    time: WireTime | None = None
    sig: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{86}$")] | None = None


_Count = Annotated[int, Meta(ge=0, le=_SEQ_MAX)]
_Short = Annotated[str, Meta(max_length=64)]


class Status(Struct, forbid_unknown_fields=True, omit_defaults=False):
    """A terminal's retained status; the last will has only device_id and online = false."""

    device_id: DeviceId
    online: bool
    version: _Short | None = None
    time: WireTime | None = None
    outbox_depth: _Count | None = None
    oldest_undelivered_age_s: Annotated[float, Meta(ge=0)] | None = None
    clock_synced: bool | None = None
    last_scan: WireTime | None = None
    passes: _Count | None = None
    fails: _Count | None = None
    last_seq: _Count | None = None
    # Signed lists older than the terminal's configured age, or past their expiry: any of
    # "trust", "denylist", "config". A non-empty list means the terminal is `stale`.
    stale: Annotated[list[Literal["trust", "denylist", "config"]], Meta(max_length=3)] | None = None
    # The version and issue time of each signed list the terminal holds.
    lists: Annotated[dict[Literal["trust", "denylist", "config"], "ListState"], Meta(max_length=3)] | None = None
    # The wall clock is behind the terminal's time floor (see Clock.behind).
    clock_behind: bool | None = None


class ListState(Struct, forbid_unknown_fields=True):
    """One signed list held by a terminal, as its status reports it."""

    version: _Count
    issued: WireTime | None = None
    expires: WireTime | None = None


STATUS_FIELDS = tuple(Status.__struct_fields__)


class _Batch(Struct, forbid_unknown_fields=True):
    batch: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=10000)]


_event_decoder = msgspec.json.Decoder(Event)
_batch_decoder = msgspec.json.Decoder(_Batch)
_ack_decoder = msgspec.json.Decoder(Ack)
_status_decoder = msgspec.json.Decoder(Status)
_encoder = msgspec.json.Encoder()


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _real_time(text):
    """The wire time is a real instant (the pattern admits 2021-02-30)."""
    try:
        datetime.fromisoformat(text[:19])
    except ValueError:
        return False
    return True


def check_event(ev):
    """Problems of a decoded Event beyond what its type checks (empty list when none)."""
    problems = []
    if not _real_time(ev.time):
        problems.append(f"time: {ev.time!r} is not a real date and time")
    if ev.sealed is not None and ev.format in (Format.NONE,) and ev.source in (Source.CAMERA, Source.SCANNER):
        problems.append("sealed: an event with no credential carries no personal part")
    if ev.refers_to:
        if ev.refers_to.seq >= ev.seq:
            problems.append(f"refers_to: seq {ev.refers_to.seq} is not before this event's seq {ev.seq}")
        if ev.refers_to.uuid == ev.uuid:
            problems.append("refers_to: an event cannot refer to itself")
    if ev.reason is Reason.GUARD_CONFIRMED and not ev.refers_to:
        problems.append("refers_to: a guard's confirmation must name the event it confirms")
    return problems


def event_from_dict(obj):
    """An Event from a dict (tests, the outbox); WireError saying what is wrong."""
    return decode_event(_encoder.encode(obj))


def decode_event(raw):
    """One Event from JSON bytes; WireError(code='invalid_event') saying what is wrong."""
    try:
        ev = _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise WireError(f"invalid event: {exc}", "invalid_event") from None
    except msgspec.DecodeError as exc:
        raise WireError(f"not JSON: {exc}", "not_json") from None
    problems = check_event(ev)
    if problems:
        raise WireError("invalid event: " + "; ".join(problems), "invalid_event")
    return ev


def validate_event(obj):
    """The problems of `obj` (a dict) as an event: an empty list when it is valid."""
    try:
        event_from_dict(obj)
    except WireError as exc:
        return list(exc.problems)
    except (TypeError, msgspec.EncodeError) as exc:
        return [f"not encodable as JSON: {exc}"]
    return []


def to_dict(msg):
    """A Struct as plain builtins (enums as strings, nested Structs as dicts)."""
    return msgspec.to_builtins(msg)


def dumps(obj):
    """Compact JSON as sent on the wire (UTF-8 bytes): Structs in field order, dicts with sorted keys."""
    if isinstance(obj, Struct):
        return _encoder.encode(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")


def encode_events(events):
    """One event as an object, several as {"batch": [...]} (UTF-8 JSON bytes).

    Items may be Events or the JSON bytes of events (as the outbox keeps them).
    """
    raws = [e if isinstance(e, bytes | bytearray) else dumps(e) for e in events]
    if len(raws) == 1:
        return bytes(raws[0])
    return b'{"batch":[' + b",".join(raws) + b"]}"


def _raw_bytes(raw):
    return raw if isinstance(raw, bytes | str) else bytes(memoryview(raw))


def identity_of(raw, device):
    """(device_id, seq) of an invalid event that names the topic's `device`, a valid seq and this
    contract's version, else None: such an event can never be stored, and the collector quarantines
    its seq (so that the terminal stops resending it). Another version is left alone: a terminal
    newer or older than its collector keeps its events until they match."""
    try:
        obj = json.loads(_raw_bytes(raw))
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != EVENT_VERSION or obj.get("device_id") != device:
        return None
    seq = obj.get("seq")
    if type(seq) is not int or not 1 <= seq <= _SEQ_MAX:
        return None
    return device, seq


def decode_event_message(topic, payload, unstorable=None):
    """Parse an event message; return (good Events, problems: [(index, code, message)]).

    Raises WireError when the message as a whole is unusable (not JSON, too big, wrong topic).
    A batch may hold some bad events: those are returned as problems, the good ones kept.
    Every event's device_id must equal the device id in the topic. With a list `unstorable`,
    each invalid event that `identity_of` names is appended as (device_id, seq, code, message, raw).
    """
    device = device_from_topic(topic)
    if device is None or not topic.endswith("/event"):
        raise WireError(f"not an event topic: {topic!r}", "bad_topic")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError(f"message too large: {len(payload)} bytes > {MAX_MESSAGE_BYTES}", "too_large")
    payload = bytes(payload)
    if payload.lstrip()[:8] == b'{"batch"':
        try:
            items = _batch_decoder.decode(payload).batch
        except msgspec.ValidationError as exc:
            raise WireError(f"bad batch: {exc}", "bad_batch") from None
        except msgspec.DecodeError as exc:
            raise WireError(f"not JSON: {exc}", "not_json") from None
    else:
        items = [payload]
    good, problems = [], []
    for i, raw in enumerate(items):
        try:
            ev = decode_event(raw)
        except WireError as exc:
            if exc.code == "not_json" and len(items) == 1:
                raise
            problems.append((i, exc.code, str(exc)))
            ident = identity_of(raw, device) if unstorable is not None and exc.code == "invalid_event" else None
            if ident is not None:
                unstorable.append((*ident, exc.code, str(exc), _raw_bytes(raw)))
            continue
        if ev.device_id != device:
            problems.append((i, "wrong_device", f"device_id {ev.device_id!r} differs from the topic's {device!r}"))
            continue
        good.append(ev)
    return good, problems


# --- acks: collector -> device ----------------------------------------------------------------


def ack_signed_bytes(device_id, seq, time):
    return f"chot-ack-v1|{device_id}|{int(seq)}|{time or ''}".encode()


def encode_ack(device_id, seq, time=None, private_key=None):
    """The collector's ack; signed when `private_key` (Ed25519) is given."""
    sig = None
    if private_key is not None:
        import base64

        sig = base64.urlsafe_b64encode(private_key.sign(ack_signed_bytes(device_id, seq, time))).decode().rstrip("=")
    return _encoder.encode(Ack(device_id=device_id, seq=int(seq), time=time, sig=sig))


def decode_ack(payload, public_key=None):
    """The Ack, or WireError. With `public_key` (the pinned collector key) the signature is required."""
    try:
        ack = _ack_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise WireError(f"bad ack (must be {{device_id, seq, time?, sig?}}): {exc}", "invalid_ack") from None
    if ack.time is not None and not _real_time(ack.time):
        raise WireError(f"bad ack: time {ack.time!r} is not a real time", "invalid_ack")
    if public_key is not None:
        import base64

        from cryptography.exceptions import InvalidSignature

        if ack.sig is None:
            raise WireError("unsigned ack: the collector signs its acks; ignored", "unsigned_ack")
        try:
            public_key.verify(base64.urlsafe_b64decode(ack.sig + "=="), ack_signed_bytes(ack.device_id, ack.seq,
                                                                                         ack.time))
        except (InvalidSignature, ValueError):
            raise WireError("ack signature does not verify against the pinned collector key", "bad_ack_signature") \
                from None
    return ack


# --- status: device -> all, retained ----------------------------------------------------------


def encode_status(**fields):
    return _encoder.encode(Status(**{k: fields.get(k) for k in STATUS_FIELDS}))


def decode_status(payload):
    """A Status from a retained message; WireError when it is too large or malformed."""
    if len(payload) > MAX_STATUS_BYTES:
        raise WireError(f"status too large: {len(payload)} bytes > {MAX_STATUS_BYTES}", "too_large")
    try:
        return _status_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise WireError(f"bad status: {exc}", "invalid_status") from None


# --- collector presence: a hint that lets terminals resend at once when a collector is back -----


def presence_topic(collector_id):
    """Retained, with a last will: {"collector": id, "online": bool, "time": ISO}. Not signed: a hint only
    (it makes a terminal resend what is not acked, which is always harmless)."""
    return broadcast_topic(f"presence/{collector_id}")


def encode_presence(collector_id, online, time=None):
    return dumps({"collector": collector_id, "online": bool(online), "time": time})


def decode_presence(payload):
    """(collector id, online) or WireError."""
    try:
        obj = json.loads(payload) if len(payload) <= 1024 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("collector"), str) or not isinstance(obj.get("online"),
                                                                                                  bool):
        raise WireError("bad presence message", "invalid_presence")
    return obj["collector"], obj["online"]


def offline_status(device_id):
    """The last-will payload."""
    return _encoder.encode(Status(device_id=device_id, online=False))


# --- signed envelopes: collector -> devices (config, denylist, trust) -------------------------
# {"kind": str, "version": int, "issued": ISO, "expires": ISO, "target": device id or "*", "body": {...},
#  "alg": "Ed25519", "sig": base64url(signature over canonical JSON of the other six fields)}
# `expires` is required: a terminal refuses an envelope past it (a replayed old list dies with
# its expiry). `sign_envelope` defaults it to `issued` + DEFAULT_TTL_S[kind].

SIGNED_KINDS = ("config", "denylist", "trust")
DEFAULT_TTL_S = {"config": 30 * 86400, "denylist": 7 * 86400, "trust": 7 * 86400}
_SIGNED_FIELDS = ("kind", "version", "issued", "expires", "target", "body")
_ENVELOPE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def _signed_bytes(env):
    return dumps({k: env[k] for k in _SIGNED_FIELDS})


def envelope_time(text):
    """The UTC datetime of an envelope's `issued` or `expires` (ISO text ending in Z), or None when not one."""
    from datetime import UTC

    if not isinstance(text, str) or not _ENVELOPE_TIME.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
    except ValueError:
        return None


def sign_envelope(private_key, kind, version, body, target="*", issued=None, expires=None, ttl_s=None):
    """Sign a message with the collector's Ed25519 private key; return JSON bytes.

    `expires` (ISO UTC text) defaults to `issued` + `ttl_s` (default DEFAULT_TTL_S[kind]).
    """
    import base64
    from datetime import UTC, timedelta

    if kind not in SIGNED_KINDS:
        raise ValueError(f"kind must be one of {SIGNED_KINDS}")
    issued = issued or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    issued_at = envelope_time(issued)
    if issued_at is None:
        raise ValueError(f"issued {issued!r} must be UTC ISO text like 2021-08-09T07:00:00Z")
    if expires is None:
        ttl = DEFAULT_TTL_S[kind] if ttl_s is None else float(ttl_s)
        if ttl <= 0:
            raise ValueError(f"the time to live of a signed {kind} must be positive, not {ttl_s}")
        expires = (issued_at + timedelta(seconds=ttl)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expires_at = envelope_time(expires)
    if expires_at is None or expires_at <= issued_at:
        raise ValueError(f"expires {expires!r} must be UTC ISO text later than issued {issued!r}")
    env = {
        "kind": kind,
        "version": int(version),
        "issued": issued,
        "expires": expires,
        "target": target,
        "body": body,
    }
    sig = private_key.sign(_signed_bytes(env))
    env["alg"] = "Ed25519"
    env["sig"] = base64.urlsafe_b64encode(sig).decode().rstrip("=")
    return dumps(env)


def verify_envelope(public_key, payload, kind, target=None):
    """Verify a signed message; return the envelope dict or raise WireError saying why.

    The signature covers `expires`; whether the envelope has expired is the receiver's call
    (it knows its time floor): see device/uplink/updates.py.
    """
    import base64

    from cryptography.exceptions import InvalidSignature

    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("signed message is not JSON", "bad_envelope") from None
    need = (*_SIGNED_FIELDS, "alg", "sig")
    if not isinstance(env, dict) or any(k not in env for k in need):
        raise WireError("signed message lacks fields: needs " + ", ".join(need) + " (a collector older than "
                        "the expiry of signed updates: upgrade it and publish again)", "bad_envelope")
    if env["kind"] != kind:
        raise WireError(f"expected a {kind!r} message, found {env['kind']!r}", "bad_envelope")
    if not _is_int(env["version"]) or env["alg"] != "Ed25519" or not isinstance(env["sig"], str):
        raise WireError("bad version, alg or sig", "bad_envelope")
    if envelope_time(env["issued"]) is None or envelope_time(env["expires"]) is None:
        raise WireError("issued and expires must be UTC ISO times like 2021-08-09T07:00:00Z", "bad_envelope")
    if target is not None and env["target"] not in ("*", target):
        raise WireError(f"message is for {env['target']!r}, not {target!r}", "wrong_target")
    try:
        sig = base64.urlsafe_b64decode(env["sig"] + "=" * (-len(env["sig"]) % 4))
        public_key.verify(sig, _signed_bytes(env))
    except (InvalidSignature, ValueError, TypeError):
        raise WireError("signature does not verify against the pinned collector key", "bad_signature") from None
    return env
