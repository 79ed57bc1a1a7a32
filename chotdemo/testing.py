"""Helpers that build wire events, keys and configs for tests, the demo and benchmarks.

`make_event(device_id, seq, ...)` returns a valid v2 `chot.wire.Event`; given a `sealer`
(chot.personal.Sealer) and a `person` it carries a real sealed part. `make_item` returns a
`collector.keys.Item` with the person already "opened" (no sealing: fast, for storage and
query tests). `make_keys(dir)` writes a collector key folder and loads it; `collector_config`
builds a validated collector config for a broker and a database without a TOML file.
"""

import uuid
from datetime import UTC, datetime, timedelta

from chot import wire
from chot.personal import Opened
from collector.config import config_from_dict
from collector.keys import CollectorKeys, Item, make_key_dir

BASE_TIME = datetime(2021, 8, 9, 8, 0, 0)


def iso(dt):
    """A naive UTC datetime as the wire writes it."""
    from collector.storage import format_time

    return format_time(dt)


def make_event(
    device_id,
    seq,
    time=None,
    checkpoint="cp-1",
    direction="in",
    decision="PASS",
    reason="ok",
    fmt="native",
    source="camera",
    verified=None,
    person=None,
    person_id=None,
    credential_id=None,
    sealer=None,
    clock_synced=True,
    boot_id="boot-1",
    uuid_=None,
):
    """A valid wire Event; `time` a datetime (naive = UTC) or ISO string, default BASE_TIME + seq s.

    `verified` defaults to True when a person is given (a verified credential), else False.
    With a `sealer` and a `person` (or person_id) the event carries the sealed part.
    """
    if time is None:
        time = BASE_TIME + timedelta(seconds=seq)
    if isinstance(time, datetime):
        if time.tzinfo is not None:
            time = time.astimezone(UTC).replace(tzinfo=None)
        time = iso(time)
    if verified is None:
        verified = person is not None or person_id is not None
    ev = {
        "v": wire.EVENT_VERSION,
        "device_id": device_id,
        "seq": seq,
        "uuid": uuid_ or str(uuid.uuid4()),
        "checkpoint": checkpoint,
        "direction": direction,
        "time": time,
        "clock": {"synced": clock_synced, "boot_id": boot_id, "mono_ns": seq * 1000},
        "source": source,
        "format": fmt,
        "decision": decision,
        "reason": reason,
        "verified": bool(verified),
    }
    if sealer is not None and (person is not None or person_id is not None):
        ev["sealed"] = sealer.seal(ev["uuid"], person or {}, person_id, credential_id)
    return wire.event_from_dict(ev)


def make_item(device_id, seq, person=None, person_id=None, credential_id=None, **kw):
    """An Item as the subscriber hands it to the storage: the event and its personal part, opened."""
    ev = make_event(device_id, seq, person=person, person_id=person_id, **kw)
    opened = Opened(person or {}, person_id, credential_id) if (person is not None or person_id) else None
    return Item(ev, opened, None)


def make_keys(key_dir):
    """A new collector key folder (seal, index, data keys) in `key_dir`, loaded."""
    make_key_dir(key_dir)
    return CollectorKeys.from_dir(key_dir)


def collector_config(database, port=1883, host="127.0.0.1", key_dir=None, **sections):
    """A validated collector config; `sections` like collector={...}, mqtt={...}, http={...} override.

    Retention is 3650 days unless given: test events are dated 2021 (BASE_TIME).
    """
    data = {
        "collector": {"id": "test", "database": database, "batch_size": 100, "batch_max_wait_ms": 50,
                      "retention_days": 3650.0},
        "mqtt": {"host": host, "port": port, "receive_maximum": 1000, "reconnect_min_s": 0.2, "reconnect_max_s": 2},
        "http": {"enabled": False, "port": 0},
    }
    if key_dir is not None:
        data["collector"]["key_dir"] = str(key_dir)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)
