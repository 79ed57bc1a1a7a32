"""Helpers that build wire events and configs for tests, the demo and benchmarks.

`make_event(device_id, seq, ...)` returns a valid v1 event (see chot.wire); `collector_config`
builds a validated collector config for a broker and a database without a TOML file.
"""

import uuid
from datetime import UTC, datetime, timedelta

from chot import wire
from collector.config import config_from_dict

BASE_TIME = datetime(2021, 8, 9, 8, 0, 0)


def iso(dt):
    """A naive UTC datetime as the wire writes it."""
    from collector.storage import format_time

    return format_time(dt)


def make_event(
    device_id,
    seq,
    time=None,
    subject_key=None,
    checkpoint="cp-1",
    direction="in",
    decision="PASS",
    reason="ok",
    fmt="native",
    source="camera",
    **subject,
):
    """A valid wire event; `time` a datetime (naive = UTC) or ISO string, default BASE_TIME + seq s."""
    if time is None:
        time = BASE_TIME + timedelta(seconds=seq)
    if isinstance(time, datetime):
        if time.tzinfo is not None:
            time = time.astimezone(UTC).replace(tzinfo=None)
        time = iso(time)
    subj = dict(subject)
    if subject_key:
        subj["key"] = subject_key
    ev = {
        "v": wire.EVENT_VERSION,
        "device_id": device_id,
        "seq": seq,
        "uuid": str(uuid.uuid4()),
        "checkpoint": checkpoint,
        "direction": direction,
        "time": time,
        "clock": {"synced": True, "boot_id": "boot-1", "mono_ns": seq * 1000},
        "source": source,
        "format": fmt,
        "decision": decision,
        "reason": reason,
        "subject": subj,
    }
    assert not wire.validate_event(ev), wire.validate_event(ev)
    return ev


def collector_config(database, port=1883, host="127.0.0.1", **sections):
    """A validated collector config; `sections` like collector={...}, mqtt={...}, http={...} override."""
    data = {
        "collector": {"id": "test", "database": database, "batch_size": 100, "batch_max_wait_ms": 50},
        "mqtt": {"host": host, "port": port, "receive_maximum": 1000, "reconnect_min_s": 0.2, "reconnect_max_s": 2},
        "http": {"enabled": False, "port": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)
