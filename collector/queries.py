"""The tracer's questions, answered the same way by the CLI and the HTTP API.

- `visits(storage, subject, start, end)`: where and when a subject was recorded.
- `contacts(storage, subject, days, window_min, at)`: for each of the subject's visits in the
  last `days` days, everyone else recorded at the same checkpoint within plus or minus
  `window_min` minutes, with the time difference. The subject's visits come from the
  (subject_key, time) index; the others from range probes on the (checkpoint, time) index,
  one merged range per checkpoint and stretch of time (an indexed self-join done in two steps,
  exact to the microsecond and the same SQL on SQLite and PostgreSQL).
- `traffic(storage, checkpoint, start, end)`: people in and out per checkpoint per hour.
- `fleet(storage)`: the device registry: online, outbox depth, last seen, open gaps.
- `export_csv(storage, out, start, end)` / `read_csv(file)`: events as CSV (EXPORT_COLUMNS,
  stable) for the national declaration system, and back.
- `record_manual(storage, ...)`: a paper declaration stored as an event with source `manual`.

A subject is a subject key (64 hex digits, or `key:...`) or an ID number (`id:...` or anything
else), which is hashed with `chot.wire.subject_key_for_id`; the ID itself is never stored.
Time ranges are [start, end): start included, end excluded; times are ISO 8601, UTC.
"""

import bisect
import csv
import json
import uuid as _uuid
from datetime import timedelta

from chot import wire
from chot.errors import CollectorError
from collector.storage import EVENT_COLUMNS, format_time, parse_time, row_to_event, utcnow

EXPORT_COLUMNS = EVENT_COLUMNS  # the CSV for the national declaration system: one column per field

_PROBE_RANGES = 40  # checkpoint ranges OR-ed in one probe query


class QueryError(CollectorError):
    """A query's arguments are wrong; the message says what is allowed (HTTP 400)."""


def resolve_subject(subject):
    """A subject key from a key (`key:` prefix or 64 hex digits) or an ID number (`id:` prefix or other)."""
    if subject is None or not str(subject).strip():
        raise QueryError("subject: missing; give an ID number or a subject key (64 hex digits)")
    s = str(subject).strip()
    if s.startswith("key:"):
        key = s[4:].strip()
        if not key:
            raise QueryError("subject: 'key:' must be followed by the subject key")
        return key
    if s.startswith("id:"):
        s = s[3:]
    elif wire.SUBJECT_KEY_RE.fullmatch(s.lower()):
        return s.lower()
    try:
        return wire.subject_key_for_id(s)
    except ValueError:
        raise QueryError("subject: the ID number is empty") from None


def _time_arg(value, name, default=None):
    if value is None or value == "":
        return default
    try:
        return parse_time(value)
    except ValueError:
        raise QueryError(f"{name}: found {value!r}; allowed: an ISO 8601 time such as 2021-08-09T10:00:00Z") from None


def _number_arg(value, name, default, lo, hi, kind=float):
    if value is None or value == "":
        return default
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name}: found {value!r}; allowed: a number from {lo} to {hi}") from None
    if not lo <= v <= hi:
        raise QueryError(f"{name}: found {value!r}; allowed: a number from {lo} to {hi}")
    return v


def _brief(e):
    return {
        "device_id": e.device_id,
        "seq": e.seq,
        "checkpoint": e.checkpoint,
        "direction": e.direction,
        "time": format_time(e.time),
        "decision": e.decision,
        "reason": e.reason,
        "source": e.source,
        "format": e.format,
    }


# --- visits and contacts ----------------------------------------------------------------------


def visits(storage, subject, start=None, end=None):
    """The events of a subject in [start, end), oldest first."""
    key = resolve_subject(subject)
    start, end = _time_arg(start, "from"), _time_arg(end, "to")
    E = storage.Event
    cond = E.subject_key == key
    if start:
        cond &= E.time >= start
    if end:
        cond &= E.time < end
    rows = E.select().where(cond).order_by(E.time, E.device_id, E.seq)
    out = [_brief(e) for e in rows]
    return {
        "subject_key": key,
        "from": format_time(start),
        "to": format_time(end),
        "count": len(out),
        "visits": out,
    }


def _merge_ranges(items, w):
    """{checkpoint: [(lo, hi)]} of merged [t - w, t + w] ranges around each (checkpoint, t)."""
    by_cp = {}
    for cp, t in sorted(items):
        ranges = by_cp.setdefault(cp, [])
        lo, hi = t - w, t + w
        if ranges and lo <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], hi))
        else:
            ranges.append((lo, hi))
    return by_cp


def contacts(storage, subject, days=14, window_min=15, at=None):
    """The others at the same checkpoints within +-window_min minutes of the subject's visits.

    Returns {"subject_key", "at", "since", "days", "window_min", "visits": [...],
    "contacts": [{"subject_key", "encounters", "closest_s", "first", "last", "details": [...]}]}
    where each detail is one pair (the subject's visit, the other's event) with
    `delta_s` = other time - visit time (seconds, signed) and the checkpoint.
    """
    key = resolve_subject(subject)
    days = _number_arg(days, "days", 14.0, 0.0, 3650.0)
    window_min = _number_arg(window_min, "window", 15.0, 0.0, 24 * 60.0)
    at = _time_arg(at, "at", None) or utcnow()
    since = at - timedelta(days=days)
    w = timedelta(minutes=window_min)
    E = storage.Event
    vis = list(
        E.select(E.id, E.device_id, E.seq, E.checkpoint, E.direction, E.time, E.decision, E.reason, E.source, E.format)
        .where((E.subject_key == key) & (E.time >= since) & (E.time <= at))
        .order_by(E.time)
    )
    result = {
        "subject_key": key,
        "at": format_time(at),
        "since": format_time(since),
        "days": days,
        "window_min": window_min,
        "visits": [_brief(v) for v in vis],
        "contacts": [],
    }
    if not vis:
        return result
    visit_times = {}  # checkpoint -> sorted visit times
    for v in vis:
        visit_times.setdefault(v.checkpoint, []).append(v.time)
    ranges = [
        (cp, lo, hi) for cp, rs in _merge_ranges([(v.checkpoint, v.time) for v in vis], w).items() for lo, hi in rs
    ]
    others = []
    for i in range(0, len(ranges), _PROBE_RANGES):
        cond = None
        for cp, lo, hi in ranges[i : i + _PROBE_RANGES]:
            c = (E.checkpoint == cp) & (E.time >= lo) & (E.time <= hi)
            cond = c if cond is None else (cond | c)
        q = E.select(E.subject_key, E.checkpoint, E.direction, E.time, E.device_id, E.seq, E.decision).where(
            cond & E.subject_key.is_null(False) & (E.subject_key != key)
        )
        others.extend(q.tuples())
    people = {}
    for okey, cp, direction, t, dev, seq, decision in others:
        times = visit_times.get(cp, [])
        j = bisect.bisect_left(times, t - w)
        while j < len(times) and times[j] <= t + w:
            vt = times[j]
            delta = (t - vt).total_seconds()
            p = people.setdefault(okey, [])
            p.append(
                {
                    "checkpoint": cp,
                    "visit_time": format_time(vt),
                    "time": format_time(t),
                    "direction": direction,
                    "decision": decision,
                    "delta_s": delta,
                    "device_id": dev,
                    "seq": seq,
                }
            )
            j += 1
    out = []
    for okey, details in people.items():
        details.sort(key=lambda d: (d["visit_time"], d["time"], d["device_id"], d["seq"]))
        times = [d["time"] for d in details]
        out.append(
            {
                "subject_key": okey,
                "encounters": len(details),
                "closest_s": min(abs(d["delta_s"]) for d in details),
                "first": min(times),
                "last": max(times),
                "details": details,
            }
        )
    out.sort(key=lambda c: (c["closest_s"], c["subject_key"]))
    result["contacts"] = out
    return result


# --- traffic and fleet ------------------------------------------------------------------------


def traffic(storage, checkpoint=None, start=None, end=None):
    """People in and out per checkpoint per hour in [start, end) (default: the last 24 hours).

    `in` / `out` count PASS events by direction; `refused_in` / `refused_out` count FAIL.
    """
    end = _time_arg(end, "to", None) or utcnow()
    start = _time_arg(start, "from", None) or end - timedelta(hours=24)
    if start >= end:
        raise QueryError("from: must be before to")
    E = storage.Event
    from peewee import SQL, fn

    hour = fn.substr(E.time, 1, 13).coerce(False) if storage.sqlite else fn.date_trunc(SQL("'hour'"), E.time)
    cond = (E.time >= start) & (E.time < end)
    if checkpoint:
        cond &= E.checkpoint == checkpoint
    q = (
        E.select(E.checkpoint, hour.alias("hour"), E.direction, E.decision, fn.COUNT(E.id))
        .where(cond)
        .group_by(E.checkpoint, hour, E.direction, E.decision)
        .tuples()
    )
    rows = {}
    for cp, h, direction, decision, n in q:
        if storage.sqlite:
            h = parse_time(h + ":00:00")
        hk = format_time(h)
        r = rows.setdefault(
            (cp, hk), {"checkpoint": cp, "hour": hk, "in": 0, "out": 0, "refused_in": 0, "refused_out": 0}
        )
        name = direction if decision == "PASS" else f"refused_{direction}"
        r[name] += n
    out = [rows[k] for k in sorted(rows)]
    totals = {k: sum(r[k] for r in out) for k in ("in", "out", "refused_in", "refused_out")}
    return {
        "from": format_time(start),
        "to": format_time(end),
        "checkpoint": checkpoint,
        "hours": out,
        "totals": totals,
    }


def fleet(storage, now=None):
    """Every device: online, software version, outbox depth, last seen (and its age), open gaps."""
    now = now or utcnow()
    devices = storage.devices()
    for d in devices:
        d["last_seen_age_s"] = (now - parse_time(d["last_seen"])).total_seconds() if d["last_seen"] else None
        d["open_gaps"] = len(d["gaps"])
        d["missing_events"] = sum(g["to"] - g["from"] + 1 for g in d["gaps"])
    return {
        "time": format_time(now),
        "total": len(devices),
        "online": sum(1 for d in devices if d["online"]),
        "with_gaps": sum(1 for d in devices if d["gaps"]),
        "outbox_depth": sum(d["outbox_depth"] or 0 for d in devices),
        "devices": devices,
    }


# --- CSV export and import --------------------------------------------------------------------


def export_csv(storage, out, start=None, end=None, checkpoint=None):
    """Write the events of [start, end) as CSV (EXPORT_COLUMNS, a header row); return the count.

    Times are ISO 8601 UTC with Z; clock_synced is true/false; subject is its JSON summary.
    """
    start, end = _time_arg(start, "from"), _time_arg(end, "to")
    E = storage.Event
    cond = E.id.is_null(False)
    if start:
        cond &= E.time >= start
    if end:
        cond &= E.time < end
    if checkpoint:
        cond &= E.checkpoint == checkpoint
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(EXPORT_COLUMNS)
    n = 0
    q = E.select().where(cond).order_by(E.time, E.device_id, E.seq).dicts()
    for r in q.iterator():
        w.writerow(
            [
                r["device_id"],
                r["seq"],
                r["uuid"],
                r["checkpoint"],
                r["direction"],
                format_time(r["time"]),
                "true" if r["clock_synced"] else "false",
                r["boot_id"],
                r["mono_ns"],
                r["source"],
                r["format"],
                r["decision"],
                r["reason"],
                r["subject_key"] or "",
                r["subject"],
                format_time(r["received_at"]),
            ]
        )
        n += 1
    return n


def read_csv(lines):
    """Read an export back: yield wire events (v1). Raises QueryError naming the bad row."""
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != EXPORT_COLUMNS:
        raise QueryError("not a Chot export: the header must be " + ",".join(EXPORT_COLUMNS))
    for i, r in enumerate(reader, start=2):
        try:
            row = dict(r)
            row["seq"] = int(row["seq"])
            row["mono_ns"] = int(row["mono_ns"])
            row["clock_synced"] = {"true": True, "false": False}[row["clock_synced"]]
            ev = row_to_event(row)
        except (KeyError, ValueError) as exc:
            raise QueryError(f"line {i}: {exc.__class__.__name__}: {exc}") from None
        problems = wire.validate_event(ev)
        if problems:
            raise QueryError(f"line {i}: " + "; ".join(problems))
        yield ev


def import_csv(storage, lines, batch=1000):
    """Store the events of an export (duplicates ignored); return (read, new)."""
    n = new = 0
    buf = []
    for ev in read_csv(lines):
        buf.append(ev)
        n += 1
        if len(buf) >= batch:
            new += storage.store_batch_counted(buf)[1]
            buf = []
    if buf:
        new += storage.store_batch_counted(buf)[1]
    return n, new


# --- paper declarations -----------------------------------------------------------------------


def manual_device_id(collector_id):
    dev = f"collector-{collector_id}"
    return dev if wire.DEVICE_ID_RE.fullmatch(dev) else "manual"


def record_manual(
    storage,
    collector_id,
    checkpoint,
    direction,
    id_number=None,
    subject_key=None,
    time=None,
    name=None,
    decision="PASS",
):
    """Store a person checked on paper as an event (source `manual`) of the collector's own series."""
    if direction not in wire.DIRECTIONS:
        raise QueryError(f"direction: found {direction!r}; allowed: 'in' or 'out'")
    if not checkpoint or len(str(checkpoint)) > 128:
        raise QueryError("checkpoint: missing or longer than 128 characters; give the checkpoint id")
    if decision not in wire.DECISIONS:
        raise QueryError(f"decision: found {decision!r}; allowed: 'PASS' or 'FAIL'")
    if id_number and subject_key:
        raise QueryError("give either id_number or subject_key, not both")
    if id_number:
        key = resolve_subject("id:" + str(id_number))
    elif subject_key:
        key = resolve_subject("key:" + str(subject_key))
    else:
        raise QueryError("id_number: missing; give the person's ID number (or a subject_key)")
    t = _time_arg(time, "time", None) or utcnow()
    subject = {"key": key, "paper": True}
    if name:  # initials only, as the terminals record: the central database holds no names
        subject["name_masked"] = " ".join(w[0].upper() + "." for w in str(name).split()[:6])
    device_id = manual_device_id(collector_id)

    def make(seq):
        ev = {
            "v": wire.EVENT_VERSION,
            "device_id": device_id,
            "seq": seq,
            "uuid": str(_uuid.uuid4()),
            "checkpoint": str(checkpoint),
            "direction": direction,
            "time": format_time(t),
            "clock": {"synced": True, "boot_id": "collector", "mono_ns": 0},
            "source": "manual",
            "format": "none",
            "decision": decision,
            "reason": "manual",
            "subject": subject,
        }
        problems = wire.validate_event(ev)
        if problems:
            raise QueryError("; ".join(problems))
        return ev

    ev = storage.store_manual(make, device_id)
    return {k: ev[k] for k in ("device_id", "seq", "uuid", "checkpoint", "direction", "time", "decision")} | {
        "subject_key": key
    }


def dumps(obj):
    """JSON for the CLI and the API (readable, UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=False)
