"""The tracer's questions, answered the same way by the CLI and the HTTP API.

- `visits(storage, person, case, actor, start, end)`: where and when a person was recorded,
  `verified` (their verified credentials: the person's record) and `unverified` (claims: an
  unsigned, forged or unreadable credential naming them, such as a chip ID card's QR) apart. A
  `see_guard` claim says whether the guard confirmed it (`guard_confirmed`: a later event of the
  device whose `refers_to` names it); a row that refers to another shows `refers_to`.
- `contacts(storage, person, case, actor, days, window_min, at)`: for each of the person's
  visits in the last `days` days, everyone else recorded at the same checkpoint within plus or
  minus `window_min` minutes, with the time difference and their decrypted fields (name,
  phone, ward ...: what their sealed part held) so that tracers can call them. Verified
  contacts are grouped by person_key; unverified claims are listed apart, flagged, never
  merged into a person. Every row shows its clock's quality (synced, boot_id, flag).
  Times: each row shows `time`, as the terminal stamped it, and `time_corrected`: the same, or,
  when the clock is flagged `corrected` / `jump_back` / `jump_forward`, the time re-anchored on
  the collector's ack (see collector.storage.ClockFlag). Every window, range, order and delta
  (visits, contacts, traffic, export) uses time_corrected.
  The person's visits come from the (person_key, time_corrected) and (claim_key, time_corrected)
  indexes; the others from range probes on the (checkpoint, time_corrected) index, one merged range per checkpoint
  and stretch of time (exact to the microsecond, the same SQL on SQLite and PostgreSQL).
- `traffic(storage, checkpoint, start, end)`: people in and out per checkpoint per hour.
- `fleet(storage)`: the device registry: online, outbox depth, last seen, open gaps, binding,
  stale lists and a clock behind its floor (from the last status).
- `export_csv(storage, out, case, actor, start, end)` / `read_csv` / `import_csv`: events as CSV,
  clear columns only (EXPORT_COLUMNS, stable), and back.
- `record_manual(storage, ...)`: a paper declaration stored as an event (source `paper`,
  unverified): the ID number, name and phone encrypted, indexed as a claim.

A person is what a tracer types: an ID number (`id:` optional) or `nd:NAME|YYYY-MM-DD` for a
certificate without one (chot.personal.parse_person_query); it is looked up by its HMAC under
the index key. Personal fields are decrypted only here, and each visits/contacts/export call
needs a case id and an actor and writes a row to the audit log (chot_audit).
Time ranges are [start, end): start included, end excluded; times are ISO 8601, UTC.
"""

import bisect
import csv
import json
import uuid as _uuid
from datetime import timedelta

from chot import personal, wire
from chot.errors import CollectorError
from chot.personal import Opened, SealError
from collector.keys import Item
from collector.storage import CLEAR_COLUMNS, format_time, parse_time, row_to_event, utcnow

EXPORT_COLUMNS = CLEAR_COLUMNS  # the CSV: one column per clear field (no personal data)

_PROBE_RANGES = 40  # checkpoint ranges OR-ed in one probe query
_CSV_DANGER = ("=", "+", "-", "@", "\t", "\r")


class QueryError(CollectorError):
    """A query's arguments are wrong; the message says what is allowed (HTTP 400)."""


def _need_keys(storage):
    if storage.keys is None:
        raise CollectorError("personal queries need the collector's keys: set collector.key_dir (index.key, "
                             "data.key) and run as the service user")
    return storage.keys


def _need_case(case, actor):
    if case is None or not str(case).strip():
        raise QueryError("case: missing; give the case id this look-up is for (it is written to the audit log)")
    if len(str(case)) > 200:
        raise QueryError("case: at most 200 characters")
    if not actor:
        raise QueryError("actor: missing (who asks)")
    return str(case).strip()


def person_key_for(storage, person):
    """(person id, index key) of what a tracer typed; QueryError saying what to write."""
    try:
        pid = personal.parse_person_query(person)
    except ValueError as exc:
        raise QueryError(f"person: {exc}") from None
    return pid, _need_keys(storage).person_key(pid)


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


def _decrypt(keys, e):
    """The stored personal fields of row `e`: {"person", "credential_id"} or None, with an error code."""
    if not e.personal:
        return None, e.seal_error
    try:
        obj = keys.decrypt(e.personal, e.device_id, e.seq)
    except SealError as exc:
        return None, f"at_rest_{exc.code}"
    return obj, None


def _brief(e, keys=None):
    out = {
        "device_id": e.device_id,
        "seq": e.seq,
        "checkpoint": e.checkpoint,
        "direction": e.direction,
        "time": format_time(e.time),
        "time_corrected": format_time(e.time_corrected),
        "clock": {"synced": bool(e.clock_synced), "boot_id": e.boot_id, "flag": e.clock_flag},
        "verified": bool(e.verified),
        "decision": e.decision,
        "reason": e.reason,
        "source": e.source,
        "format": e.format,
    }
    if getattr(e, "refers_seq", None) is not None:
        out["refers_to"] = {"seq": e.refers_seq, "uuid": e.refers_uuid}
    if keys is not None:
        obj, err = _decrypt(keys, e)
        out["person"] = obj["person"] if obj else None
        out["credential_id"] = obj.get("credential_id") if obj else None
        if err:
            out["personal_error"] = err
    return out


def _merged_person(rows):
    """One dict of a person's fields from their rows (oldest first; later values win, blanks do not)."""
    out = {}
    for r in rows:
        for k, v in (r.get("person") or {}).items():
            if v not in (None, ""):
                out[k] = v
    return out


# --- visits and contacts ----------------------------------------------------------------------


def _person_rows(storage, key, start, end):
    E = storage.Event
    out = {}
    for name, col in (("verified", E.person_key), ("unverified", E.claim_key)):
        cond = col == key
        if start:
            cond &= E.time_corrected >= start
        if end:
            cond &= E.time_corrected < end
        out[name] = list(E.select().where(cond).order_by(E.time_corrected, E.device_id, E.seq))
    return out


CONFIRM_SEQS = 1000  # a guard's confirmation is looked for among the device's next events, at most this many


def _mark_confirmed(storage, rows, briefs):
    """Set `guard_confirmed` on each `see_guard` row: did the guard's button confirm it (an event of the
    same device, within its next CONFIRM_SEQS, whose refers_to names it)? Probes the (device_id, seq) index."""
    E = storage.Event
    for e, b in zip(rows, briefs, strict=True):
        if e.reason != "see_guard":
            continue
        q = E.select(E.seq).where((E.device_id == e.device_id) & (E.seq > e.seq) & (E.seq <= e.seq + CONFIRM_SEQS)
                                  & (E.refers_seq == e.seq) & (E.refers_uuid == e.uuid)
                                  & (E.reason == "guard_confirmed"))
        b["guard_confirmed"] = q.exists()


def visits(storage, person, case, actor, start=None, end=None):
    """The events of a person in [start, end), oldest first: {"verified": [...], "unverified": [...]}.

    `verified` rows are the person's record (their credential verified on the terminal);
    `unverified` rows are claims naming them (never merged). Each row has its clock quality,
    verification and the decrypted `person` fields. Writes an audit row.
    """
    case = _need_case(case, actor)
    _pid, key = person_key_for(storage, person)
    keys = storage.keys
    start, end = _time_arg(start, "from"), _time_arg(end, "to")
    rows = _person_rows(storage, key, start, end)
    res = {name: [_brief(e, keys) for e in rs] for name, rs in rows.items()}
    _mark_confirmed(storage, rows["unverified"], res["unverified"])
    result = {
        "person_key": key,
        "case": case,
        "person": _merged_person(res["verified"]),
        "from": format_time(start),
        "to": format_time(end),
        "count": len(res["verified"]) + len(res["unverified"]),
        "verified": res["verified"],
        "unverified": res["unverified"],
    }
    storage.audit(actor, "visits", case, key,
                  {"from": result["from"], "to": result["to"], "verified": len(res["verified"]),
                   "unverified": len(res["unverified"])}, result["count"])
    return result


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


def contacts(storage, person, case, actor, days=14, window_min=15, at=None):
    """The others at the same checkpoints within +-window_min minutes of the person's visits.

    Returns {"person_key", "case", "at", "since", "days", "window_min", "person",
    "visits": {"verified": [...], "unverified": [...]},
    "contacts": [verified people, by person_key], "unverified_contacts": [claims, by claim_key],
    "untraceable": events at those places and times with no person (no code, unreadable)}.
    Each contact: {"person_key" | "claim_key", "verified", "person": their decrypted fields,
    "encounters", "closest_s", "first", "last", "details": [...]}, where each detail is one pair
    (the person's visit, the other's event) with `delta_s` = other time - visit time (signed
    seconds), the checkpoint, both clocks' quality and whether the visit itself was verified.
    Visits of the person as an unverified claim are probed too, and flagged so (`visit_verified`).
    Writes an audit row naming the person and how many contacts were revealed.
    """
    case = _need_case(case, actor)
    _pid, key = person_key_for(storage, person)
    keys = storage.keys
    days = _number_arg(days, "days", 14.0, 0.0, 3650.0)
    window_min = _number_arg(window_min, "window", 15.0, 0.0, 24 * 60.0)
    at = _time_arg(at, "at", None) or utcnow()
    since = at - timedelta(days=days)
    w = timedelta(minutes=window_min)
    E = storage.Event
    mine = _person_rows(storage, key, since, None)
    mine = {k: [e for e in rs if e.time_corrected <= at] for k, rs in mine.items()}
    shown = {k: [_brief(e, keys) for e in rs] for k, rs in mine.items()}
    result = {
        "person_key": key,
        "case": case,
        "person": _merged_person(shown["verified"]),
        "at": format_time(at),
        "since": format_time(since),
        "days": days,
        "window_min": window_min,
        "visits": shown,
        "contacts": [],
        "unverified_contacts": [],
        "untraceable": 0,
    }
    vis = [(e, True) for e in mine["verified"]] + [(e, False) for e in mine["unverified"]]
    own = {(e.device_id, e.seq) for e, _ in vis}
    if vis:
        visit_times = {}  # checkpoint -> sorted [(visit time, verified)]
        for v, ok in vis:
            visit_times.setdefault(v.checkpoint, []).append((v.time_corrected, ok))
        for lst in visit_times.values():
            lst.sort()
        ranges = [
            (cp, lo, hi) for cp, rs in _merge_ranges([(v.checkpoint, v.time_corrected) for v, _ in vis], w).items()
            for lo, hi in rs
        ]
        others = []
        for i in range(0, len(ranges), _PROBE_RANGES):
            cond = None
            chunk = ranges[i : i + _PROBE_RANGES]
            for cp, lo, hi in chunk:
                c = (E.checkpoint == cp) & (E.time_corrected >= lo) & (E.time_corrected <= hi)
                cond = c if cond is None else (cond | c)
            # the overall bounds let PostgreSQL prune the day partitions outside them at planning
            span = (E.time_corrected >= min(r[1] for r in chunk)) & (E.time_corrected <= max(r[2] for r in chunk))
            others.extend(E.select().where(span & (cond)))
        people = {}  # (verified, key) -> [(detail, row)]
        untraceable = set()
        for o in others:
            if (o.device_id, o.seq) in own:
                continue
            okey = o.person_key or o.claim_key
            if okey == key:
                continue  # the person themself (outside the look-back), or a claim naming them: not a contact
            times = visit_times.get(o.checkpoint, [])
            ot = o.time_corrected
            j = bisect.bisect_left(times, (ot - w,))
            while j < len(times) and times[j][0] <= ot + w:
                vt, vok = times[j]
                if okey is None:
                    untraceable.add((o.device_id, o.seq))
                else:
                    detail = _brief(o)
                    detail.update(visit_time=format_time(vt), visit_verified=vok,
                                  delta_s=(ot - vt).total_seconds())
                    people.setdefault((bool(o.person_key), okey), []).append((detail, o))
                j += 1
        result["untraceable"] = len(untraceable)
        for (verified, okey), pairs in people.items():
            pairs.sort(key=lambda p: (p[0]["visit_time"], p[0]["time_corrected"], p[0]["device_id"], p[0]["seq"]))
            details = [d for d, _ in pairs]
            rows, seen = [], set()
            for _d, o in sorted(pairs, key=lambda p: (p[1].time_corrected, p[1].device_id, p[1].seq)):
                if (o.device_id, o.seq) not in seen:
                    seen.add((o.device_id, o.seq))
                    obj, _err = _decrypt(keys, o)
                    rows.append({"person": obj["person"] if obj else None})
            times = [d["time_corrected"] for d in details]
            entry = {
                "person_key" if verified else "claim_key": okey,
                "verified": verified,
                "person": _merged_person(rows),
                "encounters": len(details),
                "closest_s": min(abs(d["delta_s"]) for d in details),
                "first": min(times),
                "last": max(times),
                "details": details,
            }
            result["contacts" if verified else "unverified_contacts"].append(entry)
        for name in ("contacts", "unverified_contacts"):
            result[name].sort(key=lambda c: (c["closest_s"], c.get("person_key") or c.get("claim_key")))
    revealed = [c["person_key"] for c in result["contacts"]] + [c["claim_key"] for c in result["unverified_contacts"]]
    storage.audit(actor, "contacts", case, key,
                  {"days": days, "window_min": window_min, "at": result["at"],
                   "visits": len(vis), "revealed": revealed}, len(vis) + len(revealed))
    return result


# --- traffic and fleet ------------------------------------------------------------------------


def traffic(storage, checkpoint=None, start=None, end=None):
    """People in and out per checkpoint per hour in [start, end) (default: the last 24 hours).

    `in` / `out` count PASS events by direction; `refused_in` / `refused_out` count FAIL.
    No personal data: no case needed.
    """
    end = _time_arg(end, "to", None) or utcnow()
    start = _time_arg(start, "from", None) or end - timedelta(hours=24)
    if start >= end:
        raise QueryError("from: must be before to")
    E = storage.Event
    from peewee import SQL, fn

    T = E.time_corrected
    hour = fn.substr(T, 1, 13).coerce(False) if storage.sqlite else fn.date_trunc(SQL("'hour'"), T)
    cond = (T >= start) & (T < end)
    if checkpoint:
        cond &= E.checkpoint == checkpoint
    q = (
        E.select(E.checkpoint, hour.alias("hour"), E.direction, E.decision, fn.COUNT(SQL("*")))
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
    """Every device: online, software version, outbox depth, last seen (and its age), open gaps, the
    checkpoint and direction it is bound to, and from its last status: `stale` (the signed lists it holds
    that are too old or expired: trust, denylist, config), `lists` (version, issued, expires of each) and
    `clock_behind` (its clock is behind its time floor)."""
    now = now or utcnow()
    devices = storage.devices()
    for d in devices:
        d["last_seen_age_s"] = (now - parse_time(d["last_seen"])).total_seconds() if d["last_seen"] else None
        d["open_gaps"] = len(d["gaps"])
        d["missing_events"] = sum(g["to"] - g["from"] + 1 for g in d["gaps"])
        status = d["status"] if isinstance(d["status"], dict) else {}
        d["stale"] = list(status.get("stale") or [])
        d["lists"] = status.get("lists") or {}
        d["clock_behind"] = bool(status.get("clock_behind"))
    return {
        "time": format_time(now),
        "total": len(devices),
        "online": sum(1 for d in devices if d["online"]),
        "with_gaps": sum(1 for d in devices if d["gaps"]),
        "stale": sum(1 for d in devices if d["stale"]),
        "clock_behind": sum(1 for d in devices if d["clock_behind"]),
        "outbox_depth": sum(d["outbox_depth"] or 0 for d in devices),
        "bound": len(storage.bindings()),
        "devices": devices,
    }


# --- CSV export and import --------------------------------------------------------------------


def csv_cell(value):
    """A CSV cell that a spreadsheet never runs as a formula: one starting with = + - @ gets a quote."""
    s = "" if value is None else str(value)
    return "'" + s if s.startswith(_CSV_DANGER) else s


def _uncell(s):
    return s[1:] if s.startswith("'") and s[1:].startswith(_CSV_DANGER) else s


def export_csv(storage, out, case, actor, start=None, end=None, checkpoint=None):
    """Write the events of [start, end) as CSV (EXPORT_COLUMNS, a header row); return the count.

    Clear columns only, plus `verified`: no personal data, no keyed hash. Times are ISO 8601
    UTC with Z; clock_synced and verified are true/false. Writes an audit row.
    """
    case = _need_case(case, actor)
    start, end = _time_arg(start, "from"), _time_arg(end, "to")
    E = storage.Event
    cond = E.seq.is_null(False)
    if start:
        cond &= E.time_corrected >= start
    if end:
        cond &= E.time_corrected < end
    if checkpoint:
        cond &= E.checkpoint == checkpoint
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(EXPORT_COLUMNS)
    n = 0
    cols = [getattr(E, c) for c in EXPORT_COLUMNS]
    q = E.select(*cols).where(cond).order_by(E.time_corrected, E.device_id, E.seq).dicts()
    for r in q.iterator():
        for t in ("time", "time_corrected", "received_at"):
            r[t] = format_time(r[t])
        for b in ("clock_synced", "verified"):
            r[b] = "true" if r[b] else "false"
        w.writerow([csv_cell(r[c]) for c in EXPORT_COLUMNS])
        n += 1
    storage.audit(actor, "export", case, None,
                  {"from": format_time(start), "to": format_time(end), "checkpoint": checkpoint}, n)
    return n


def read_csv(lines):
    """Read an export back: yield wire Events (no personal part). Raises QueryError naming the bad row."""
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != EXPORT_COLUMNS:
        raise QueryError("not a Chot export: the header must be " + ",".join(EXPORT_COLUMNS))
    bools = {"true": True, "false": False}
    for i, r in enumerate(reader, start=2):
        try:
            row = {k: _uncell(v) for k, v in r.items()}
            row["seq"] = int(row["seq"])
            row["mono_ns"] = int(row["mono_ns"])
            row["clock_synced"] = bools[row["clock_synced"]]
            row["verified"] = bools[row["verified"]]
            ev = row_to_event(row)
        except (KeyError, ValueError, TypeError) as exc:
            raise QueryError(f"line {i}: {exc.__class__.__name__}: {exc}") from None
        yield ev


def import_csv(storage, lines, batch=1000):
    """Store the events of an export (clear part only; duplicates ignored); return (read, new)."""
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
    time=None,
    name=None,
    phone=None,
    dob=None,
    decision="PASS",
):
    """Store a person checked on paper, entered by staff, as an event of the collector's own series.

    Source `paper`, format `none`, reason `manual`, verified False (nobody verified a signature):
    the ID number, name, phone and birth date are encrypted as the event's personal fields and
    the person id (from the ID number, else from name and birth date) indexed as a claim_key.
    Nothing personal is stored in clear, and the answer holds none of it.
    """
    keys = _need_keys(storage)
    if direction not in wire.DIRECTIONS:
        raise QueryError(f"direction: found {direction!r}; allowed: 'in' or 'out'")
    if not checkpoint or not wire.CHECKPOINT_RE.fullmatch(str(checkpoint)):
        raise QueryError(f"checkpoint: found {checkpoint!r}; allowed: {wire.CHECKPOINT_PATTERN}")
    if decision not in wire.DECISIONS:
        raise QueryError(f"decision: found {decision!r}; allowed: 'PASS' or 'FAIL'")
    try:
        if id_number:
            pid = personal.person_id_for_id(id_number)
        elif name and dob:
            pid = personal.person_id_for_name_dob(name, dob)
        else:
            raise ValueError("give the person's ID number (or their name and birth date)")
    except ValueError as exc:
        raise QueryError(f"id_number: {exc}") from None
    person = {"paper": True, "kind": "declaration"}
    for k, v in (("id_number", id_number), ("name", name), ("phone", phone), ("dob", dob)):
        if v:
            person[k] = str(v)
    t = _time_arg(time, "time", None) or utcnow()
    device_id = manual_device_id(collector_id)

    def make(seq):
        try:
            ev = wire.event_from_dict({
                "v": wire.EVENT_VERSION,
                "device_id": device_id,
                "seq": seq,
                "uuid": str(_uuid.uuid4()),
                "checkpoint": str(checkpoint),
                "direction": direction,
                "time": format_time(t),
                "clock": {"synced": True, "boot_id": "collector", "mono_ns": 0},
                "source": "paper",
                "format": "none",
                "decision": decision,
                "reason": "manual",
                "verified": False,
            })
        except wire.WireError as exc:
            raise QueryError(str(exc)) from None
        return Item(ev, Opened(person, pid, None), None)

    item = storage.store_manual(make, device_id)
    ev = item.event
    return {
        "device_id": ev.device_id, "seq": ev.seq, "uuid": ev.uuid, "checkpoint": ev.checkpoint,
        "direction": str(ev.direction), "time": ev.time, "decision": str(ev.decision), "source": "paper",
        "verified": False, "claim_key": keys.person_key(pid),
    }


def dumps(obj):
    """JSON for the CLI and the API (readable, UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=False)
