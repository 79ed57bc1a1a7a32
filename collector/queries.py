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
- `traffic(storage, checkpoint, start, end)`: people in and out per checkpoint per hour (at most
  MAX_TRAFFIC_DAYS); `day_range(day, zone, retention_days)`: the UTC bounds of a local day.
- `fleet(storage)`: the terminals: online, outbox depth, last seen, open gaps, binding, stale
  lists and a clock behind its floor (from the last status); bound terminals never seen; the
  collectors' own paper series apart (`is_paper_series`), never as terminals.
- `export_csv(storage, out, case, actor, start, end)` / `read_csv` / `import_csv`: events as CSV,
  clear columns only (EXPORT_COLUMNS, stable), and back.
- `record_manual(storage, ...)`: a paper declaration stored as an event (source `paper`,
  unverified): the ID number, name and phone encrypted, indexed as a claim; who entered it in
  the `chot_paper` table (`recorded_by`, clear), with the form's one-time token (a double
  submit stores once). `check_paper_person(...)`: the form's validation. A terminal's own
  paper declarations (a staff card's window, device/paper.py) arrive as its events, source
  `paper`; their rows show the staff member apart as `staff` {"card", "name"}.

A person is what a tracer types: an ID number (`id:` optional) or `nd:NAME|YYYY-MM-DD` for a
certificate without one (chot.personal.parse_person_query); it is looked up by its HMAC under
the index key. Personal fields are decrypted only here, and each visits/contacts/export call
needs a case id and an actor and writes a row to the audit log (chot_audit).
Time ranges are [start, end): start included, end excluded; times are ISO 8601, UTC.
"""

import bisect
import csv
import hashlib
import json
import logging
import re
import unicodedata
import uuid as _uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from chot import personal, wire
from chot.errors import CollectorError
from chot.personal import Opened, SealError
from collector.keys import Item
from collector.storage import CLEAR_COLUMNS, format_time, parse_time, row_to_event, utcnow

log = logging.getLogger(__name__)

EXPORT_COLUMNS = CLEAR_COLUMNS  # the CSV: one column per clear field (no personal data)

_PROBE_RANGES = 40  # checkpoint ranges OR-ed in one probe query
# Bounds of every personal query (a contacts query over ten years took 116 s and 2.3 GB: refused)
MAX_DAYS = 28  # the look-back of contacts: the default retention
MAX_WINDOW_MIN = 120  # plus or minus this many minutes around each visit
MAX_PAGE = 200  # rows of a page of contacts
MAX_MATCHES = 20  # persons found under one declaration id or phone
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_CSV_DANGER = ("=", "+", "-", "@", "\t", "\r")
MAX_TRAFFIC_DAYS = 31  # one traffic query spans at most this many days
PAPER_FUTURE_S = 120.0  # a paper declaration's time may be this far ahead of the collector's clock


class QueryError(CollectorError):
    """A query's arguments are wrong; the message says what is allowed (HTTP 400)."""


def _need_keys(storage):
    if storage.keys is None:
        raise CollectorError("personal queries need the collector's keys: set collector.key_dir (index.key, "
                             "data.key) and run as the service user")
    return storage.keys


def _need_case(case, actor, storage=None):
    if case is None or not str(case).strip():
        raise QueryError("case: missing; give the case id this look-up is for (it is written to the audit log)")
    if len(str(case)) > 200:
        raise QueryError("case: at most 200 characters")
    if not actor:
        raise QueryError("actor: missing (who asks)")
    case = str(case).strip()
    book = getattr(storage, "case_book", None)  # collector.cases.CaseBook: the case must be open in it
    if book is not None:
        book.require_open(case)
    return case


def person_key_for(storage, person):
    """(person id, index key) of what a tracer typed; QueryError saying what to write.

    `key:<64 hex>` names a person by index key (a person found by declaration id or phone): (None, key).
    """
    text = str(person or "").strip()
    if text.startswith("key:"):
        if not _KEY_RE.fullmatch(text[4:]):
            raise QueryError("person: key: must be followed by 64 lower-case hex digits (an index key)")
        return None, text[4:]
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


def _bounded_arg(value, name, default, hi, unit, kind=float):
    """A number from 0 to `hi`; over it: QueryError naming the limit (HTTP 400)."""
    v = _number_arg(value, name, default, 0, float("inf"), kind)
    if v > hi:
        raise QueryError(f"{name}: found {value!r}; the limit is {hi} {unit}: narrow the query")
    return v


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
        if out["person"] and e.source == "paper" and "staff_card" in out["person"]:
            # a paper declaration taken at a terminal with a staff card: who took it, apart from the person
            person = dict(out["person"])
            out["staff"] = {"card": person.pop("staff_card"), "name": person.pop("staff_name", None)}
            out["person"] = person
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


def visits(storage, person, case, actor, start=None, end=None, *, scope=None, shown=None):
    """The events of a person in [start, end), oldest first: {"verified": [...], "unverified": [...]}.

    `verified` rows are the person's record (their credential verified on the terminal);
    `unverified` rows are claims naming them (never merged). Each row has its clock quality,
    verification and the decrypted `person` fields. Writes an audit row.
    `scope`: a function checkpoint -> bool (a ward officer's checkpoints): only those rows are read.
    `shown`: what the caller shows of it, for the audit row (e.g. "timeline: names, phones").
    """
    case = _need_case(case, actor, storage)
    _pid, key = person_key_for(storage, person)
    keys = storage.keys
    start, end = _time_arg(start, "from"), _time_arg(end, "to")
    rows = _person_rows(storage, key, start, end)
    if scope is not None:
        rows = {k: [e for e in rs if scope(e.checkpoint)] for k, rs in rows.items()}
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
                   "unverified": len(res["unverified"]),
                   "shown": shown or f"visits: {result['count']} rows with the person's fields"}, result["count"])
    return result


FIND_KINDS = ("auto", "id", "declaration", "phone")


def guess_kind(text):
    """What a tracer typed: "id" (ID number, id:/nd:), "phone" (+84..., or 10 digits from 0) or "declaration"."""
    s = str(text or "").strip()
    if s.startswith(("id:", "nd:")):
        return "id"
    digits = re.sub(r"[\s.\-]", "", s)
    if s.startswith("+") or (digits.isdigit() and len(digits) in (10, 11) and digits[0] in "08"):
        return "phone"
    if digits.isdigit() and len(digits) in (9, 12):
        return "id"
    return "declaration"


def find_person(storage, text, kind, case, actor):
    """The index keys of the persons that `text` names, within an open case; writes an audit row.

    kind "id": an ID number (or nd:NAME|DOB), one key; "declaration": a declaration (credential)
    id; "phone": a phone number (+84 or 0...); "auto": guessed (guess_kind). Declaration ids and
    phones are found through chot_lookup (keyed: HMAC under the index key), at most MAX_MATCHES.
    Returns {"kind", "keys"}.
    """
    case = _need_case(case, actor, storage)
    kind = kind or "auto"
    if kind not in FIND_KINDS:
        raise QueryError(f"kind: found {kind!r}; allowed: {', '.join(FIND_KINDS)}")
    if not str(text or "").strip():
        raise QueryError("person: missing; give an ID number, a declaration id or a phone number")
    if len(str(text)) > 200:
        raise QueryError("person: at most 200 characters")
    if kind == "auto":
        kind = guess_kind(text)
    if kind == "id":
        keys = [person_key_for(storage, text)[1]]
    else:
        lk = _need_keys(storage).lookup_key("cred" if kind == "declaration" else "phone", str(text).strip())
        if lk is None:
            raise QueryError("person: a phone number needs digits")
        keys = storage.find_lookup(lk, MAX_MATCHES)
    storage.audit(actor, "find", case, keys[0] if len(keys) == 1 else None,
                  {"kind": kind, "matches": keys, "shown": f"find by {kind}: {len(keys)} person(s)"}, len(keys))
    return {"kind": kind, "keys": keys}


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


def contacts(storage, person, case, actor, days=14, window_min=15, at=None, *, offset=0, limit=None, scope=None,
             shown=None):
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
    Writes an audit row naming the person and the contacts revealed.
    Bounds: days <= MAX_DAYS, window_min <= MAX_WINDOW_MIN (QueryError naming the limit).
    Paging: `limit` (at most MAX_PAGE) contacts from `offset`, verified first then unverified, in
    order of closeness; only those are decrypted and revealed; "total" counts every contact.
    `scope`: a function checkpoint -> bool: only encounters at those checkpoints count.
    """
    note = shown
    case = _need_case(case, actor, storage)
    _pid, key = person_key_for(storage, person)
    keys = storage.keys
    days = _bounded_arg(days, "days", 14.0, MAX_DAYS, "days")
    window_min = _bounded_arg(window_min, "window", 15.0, MAX_WINDOW_MIN, "minutes")
    offset = int(_number_arg(offset, "page", 0, 0, 10**9, int))
    if limit is not None:
        limit = int(_bounded_arg(limit, "size", MAX_PAGE, MAX_PAGE, "rows per page", int))
    at = _time_arg(at, "at", None) or utcnow()
    since = at - timedelta(days=days)
    w = timedelta(minutes=window_min)
    E = storage.Event
    mine = _person_rows(storage, key, since, None)
    mine = {k: [e for e in rs if e.time_corrected <= at and (scope is None or scope(e.checkpoint))]
            for k, rs in mine.items()}
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
        "total": {"contacts": 0, "unverified_contacts": 0},
        "offset": offset,
        "limit": limit,
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
        order = sorted(people, key=lambda vk: (not vk[0], min(abs(d["delta_s"]) for d, _o in people[vk]), vk[1]))
        result["total"] = {"contacts": sum(1 for v, _k in order if v),
                           "unverified_contacts": sum(1 for v, _k in order if not v)}
        page = order[offset:] if limit is None else order[offset : offset + limit]
        for verified, okey in page:
            pairs = people[(verified, okey)]
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
                  {"days": days, "window_min": window_min, "at": result["at"], "offset": offset, "limit": limit,
                   "visits": len(vis), "revealed": revealed,
                   "shown": note or f"contacts: {len(revealed)} of "
                                     f"{sum(result['total'].values())} with their fields"},
                  len(vis) + len(revealed))
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
    if end - start > timedelta(days=MAX_TRAFFIC_DAYS):
        raise QueryError(f"from/to: {format_time(start)} to {format_time(end)} spans more than the limit of "
                         f"{MAX_TRAFFIC_DAYS} days; ask for a shorter range")
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


def day_range(day, zone, retention_days, today=None):
    """(date, start, end) of a local calendar day `day` (YYYY-MM-DD; default today) in `zone`: its UTC bounds.

    QueryError naming the limit when `day` is not a date, is after today or is older than the
    retention (collector.retention_days): nothing is kept from before it.
    """
    zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo(str(zone))
    today = today or datetime.now(UTC).astimezone(zone).date()
    oldest = today - timedelta(days=int(retention_days))
    limit = f"allowed: a date YYYY-MM-DD from {oldest.isoformat()} to {today.isoformat()} " \
            f"(today, and collector.retention_days = {retention_days:g} days back)"
    if day is None or str(day).strip() == "":
        d = today
    else:
        text = str(day).strip()
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError(text)
            d = date.fromisoformat(text)
        except ValueError:
            raise QueryError(f"day: found {text[:40]!r}; {limit}") from None
        if not oldest <= d <= today:
            raise QueryError(f"day: found {text!r}; {limit}")
    start = datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
    nxt = d + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
    return d, start, end


def is_paper_series(device_id):
    """True for a collector's own series of paper declarations (manual_device_id): not a terminal."""
    return device_id == "manual" or str(device_id).startswith("collector-")


def fleet(storage, now=None):
    """Every device: online, software version, outbox depth, last seen (and its age), open gaps, the
    checkpoint and direction it is bound to, and from its last status: `stale` (the signed lists it holds
    that are too old or expired: trust, denylist, config), `lists` (version, issued, expires of each) and
    `clock_behind` (its clock is behind its time floor)."""
    now = now or utcnow()
    everything = storage.devices()
    devices = [d for d in everything if not is_paper_series(d["device_id"])]
    paper = [{"device_id": d["device_id"], "events": d["max_seq"], "last": d["last_seen"]}
             for d in everything if is_paper_series(d["device_id"])]
    known = {d["device_id"] for d in everything}
    never_seen = [{"device_id": dev, "checkpoint": cp, "direction": dr}
                  for dev, (cp, dr) in sorted(storage.bindings().items()) if dev not in known]
    for d in devices:
        d["last_seen_age_s"] = (now - parse_time(d["last_seen"])).total_seconds() if d["last_seen"] else None
        d["open_gaps"] = len(d["gaps"])
        d["missing_events"] = sum(g["to"] - g["from"] + 1 for g in d["gaps"])
        status = d["status"] if isinstance(d["status"], dict) else {}
        d["stale"] = list(status.get("stale") or [])
        d["lists"] = status.get("lists") or {}
        d["clock_behind"] = bool(status.get("clock_behind"))
        age = status.get("oldest_undelivered_age_s")
        d["oldest_undelivered"] = None  # when the oldest event still in its outbox was recorded (from its status)
        if isinstance(age, int | float) and not isinstance(age, bool) and d["status_time"] and d["outbox_depth"]:
            d["oldest_undelivered"] = format_time(parse_time(d["status_time"]) - timedelta(seconds=float(age)))
        d["clock_synced"] = status.get("clock_synced") if isinstance(status.get("clock_synced"), bool) else None
        for st in d["lists"].values() if isinstance(d["lists"], dict) else ():
            if isinstance(st, dict) and isinstance(st.get("issued"), str):
                try:
                    st["age_s"] = (now - parse_time(st["issued"])).total_seconds()
                except ValueError:
                    st["age_s"] = None
    return _fleet_summary(now, devices, paper, never_seen, len(storage.bindings()))


def _fleet_summary(now, devices, paper, never_seen, bound):
    return {
        "time": format_time(now),
        "total": len(devices),
        "online": sum(1 for d in devices if d["online"]),
        "with_gaps": sum(1 for d in devices if d["gaps"]),
        "stale": sum(1 for d in devices if d["stale"]),
        "clock_behind": sum(1 for d in devices if d["clock_behind"]),
        "outbox_depth": sum(d["outbox_depth"] or 0 for d in devices),
        "bound": bound,
        "never_seen": never_seen,
        "devices": devices,
        "paper_series": paper,
    }


def fleet_within(f, sees_checkpoint):
    """A fleet answer cut to the terminals bound to checkpoints `sees_checkpoint(cp)` accepts (ward officers),
    its counts recomputed; unbound terminals and the paper series are left out."""
    devices = [d for d in f["devices"] if d["checkpoint"] and sees_checkpoint(d["checkpoint"])]
    never = [d for d in f["never_seen"] if sees_checkpoint(d["checkpoint"])]
    return _fleet_summary(parse_time(f["time"]), devices, [], never, len(devices) + len(never))


# --- CSV export and import --------------------------------------------------------------------


def formula_like(s):
    """True when a spreadsheet could read text `s` as a formula: it starts with = + - @ TAB or CR,
    also after leading spaces (and a LF, which some spreadsheets drop)."""
    return isinstance(s, str) and s.lstrip(" \n").startswith(_CSV_DANGER)


def csv_cell(value):
    """A CSV cell that a spreadsheet never runs as a formula: one that could be (formula_like) gets a quote."""
    s = "" if value is None else str(value)
    return "'" + s if formula_like(s) else s


def _uncell(s):
    return s[1:] if s.startswith("'") and formula_like(s[1:]) else s


def export_csv(storage, out, case, actor, start=None, end=None, checkpoint=None):
    """Write the events of [start, end) as CSV (EXPORT_COLUMNS, a header row); return the count.

    Clear columns only, plus `verified`: no personal data, no keyed hash. Times are ISO 8601
    UTC with Z; clock_synced and verified are true/false. Writes an audit row.
    """
    case = _need_case(case, actor, storage)
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


_ID_DIGITS_RE = re.compile(r"[0-9]+")
_PASSPORT_RE = re.compile(r"[A-Z0-9]{5,20}")
_PHONE_RE = re.compile(r"\+?[0-9][0-9 ().-]{4,19}")
_DOB_RE = re.compile(r"(19|20)[0-9]{2}(-[0-9]{2}-[0-9]{2})?")


def check_id_number(id_number):
    """The ID number as stored (separators removed, upper case): a CCCD (12 digits), a CMND (9 digits) or a
    passport number (5 to 20 letters and digits, at least one letter); QueryError otherwise (never echoing it)."""
    norm = re.sub(r"[\s.\-_/]+", "", str(id_number or "")).upper()
    if _ID_DIGITS_RE.fullmatch(norm):
        if len(norm) in (9, 12):
            return norm
        raise QueryError(f"id_number: {len(norm)} digits; allowed: 12 digits (CCCD) or 9 digits (CMND), or a "
                         "passport number with letters")
    if _PASSPORT_RE.fullmatch(norm):
        return norm
    raise QueryError("id_number: malformed; allowed: 12 digits (CCCD), 9 digits (CMND) or a passport number "
                     "(5 to 20 letters and digits)")


def check_paper_person(id_number=None, name=None, dob=None, phone=None, require_all=False, today=None):
    """The person fields of a paper declaration, checked as a native declaration's (docs/native-declaration.md).

    Returns {"id_number", "name", "dob", "phone"} (normalised; None when not given). `require_all`
    (the console's form): the ID number, name and birth date are required. Otherwise (API, CLI)
    an ID number, or a name and birth date. QueryError listing every problem (values never echoed).
    """
    problems = []
    out = {"id_number": None, "name": None, "dob": None, "phone": None}
    if id_number not in (None, ""):
        try:
            out["id_number"] = check_id_number(id_number)
        except QueryError as exc:
            problems.append(str(exc))
    elif require_all:
        problems.append("id_number: missing; allowed: 12 digits (CCCD) or 9 digits (CMND)")
    if name not in (None, ""):
        n = unicodedata.normalize("NFC", " ".join(str(name).split()))
        if not n or len(n) > 100:
            problems.append("name: longer than 100 characters; allowed: the person's full name")
        out["name"] = n or None
    if dob not in (None, ""):
        d = str(dob).strip()
        ok = bool(_DOB_RE.fullmatch(d))
        if ok and len(d) == 10:
            try:
                ok = date.fromisoformat(d) <= (today or datetime.now(UTC).date())
            except ValueError:
                ok = False
        elif ok:
            ok = int(d) <= (today or datetime.now(UTC).date()).year
        if not ok:
            problems.append("dob: not a past date; allowed: YYYY-MM-DD, or YYYY when only the year is known")
        out["dob"] = d
    if phone not in (None, ""):
        ph = str(phone).strip()
        if not _PHONE_RE.fullmatch(ph):
            problems.append("phone: malformed; allowed: digits, spaces, +, -, ( ) (6 to 20 characters)")
        out["phone"] = ph
    if require_all:
        if not out["name"] and not any(x.startswith("name") for x in problems):
            problems.append("name: missing; allowed: the person's full name")
        if not out["dob"] and not any(x.startswith("dob") for x in problems):
            problems.append("dob: missing; allowed: YYYY-MM-DD, or YYYY when only the year is known")
    elif not out["id_number"] and not (out["name"] and out["dob"]) and not problems:
        problems.append("id_number: missing; give the person's ID number (or their name and birth date)")
    if problems:
        raise QueryError("; ".join(problems))
    return out


def _paper_table(storage):
    """The `chot_paper` model of this storage (made on first use): who entered each paper declaration.

    One row per declaration entered through record_manual: the series and seq of its event, the
    checkpoint, `recorded_by` (the user, `token:NAME`, or the CLI's system user: in clear, it is
    the staff member, not the declarant), when, and the SHA-256 of the console form's one-time
    token (unique: a second submit of the same form finds the first row and stores nothing).
    Rows older than the retention are deleted as new ones come (the events are gone by then).
    """
    model = getattr(storage, "_paper_model", None)
    if model is not None:
        return model
    from peewee import BigAutoField, BigIntegerField, CharField, Model

    from collector.storage import _PgTime, _SqliteTime

    TimeField = _SqliteTime if storage.sqlite else _PgTime

    class Paper(Model):
        id = BigAutoField()
        form_token = CharField(max_length=64, unique=True, null=True)  # SHA-256 of the form's token
        recorded_by = CharField(max_length=200)
        recorded_at = TimeField(index=True)
        device_id = CharField(max_length=64, null=True)  # null while the event is being stored
        seq = BigIntegerField(null=True)
        checkpoint = CharField(max_length=128)

        class Meta:
            database = storage.db
            table_name = "chot_paper"

    with storage.connection():
        storage.db.create_tables([Paper], safe=True)
    storage._paper_model = Paper
    return Paper


def paper_log(storage, recorded_by=None, limit=100):
    """The newest rows of the paper log (newest first): who entered which paper declaration, no person."""
    P = _paper_table(storage)
    q = P.select().order_by(P.recorded_at.desc(), P.id.desc()).limit(max(1, min(int(limit), 1000)))
    if recorded_by:
        q = q.where(P.recorded_by == recorded_by)
    return [{"recorded_by": r.recorded_by, "recorded_at": format_time(r.recorded_at), "device_id": r.device_id,
             "seq": r.seq, "checkpoint": r.checkpoint} for r in q]


class AlreadyRecorded(QueryError):
    """The form's token was used already: the declaration is stored once (`.event` says which, or None)."""

    def __init__(self, event):
        super().__init__("this form was submitted already; the declaration is stored once")
        self.event = event


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
    recorded_by=None,
    form_token=None,
    require_all=False,
    now=None,
):
    """Store a person checked on paper, entered by staff, as an event of the collector's own series.

    Source `paper`, format `none`, reason `manual`, verified False (nobody verified a signature):
    the ID number, name, phone and birth date are encrypted as the event's personal fields and
    the person id (from the ID number, else from name and birth date) indexed as a claim_key.
    Nothing personal is stored in clear, and the answer holds none of it.

    Checked as a native declaration (check_paper_person; `require_all`: ID number, name and birth
    date all required), the time not in the future (PAPER_FUTURE_S of slack), and, once the
    device registry is imported (any device bound), the checkpoint one of the registry's.
    `recorded_by` (who entered it) goes into the `chot_paper` log with the event's seq;
    `form_token` (the console form's one-time token) makes a second submit of the same form
    raise AlreadyRecorded instead of storing again.
    """
    keys = _need_keys(storage)
    if direction not in wire.DIRECTIONS:
        raise QueryError(f"direction: found {direction!r}; allowed: 'in' or 'out'")
    if not checkpoint or not wire.CHECKPOINT_RE.fullmatch(str(checkpoint)):
        raise QueryError(f"checkpoint: found {str(checkpoint)[:140]!r}; allowed: {wire.CHECKPOINT_PATTERN}")
    if decision not in wire.DECISIONS:
        raise QueryError(f"decision: found {decision!r}; allowed: 'PASS' or 'FAIL'")
    registry = {cp for cp, _dr in storage.bindings().values()}
    if registry and checkpoint not in registry:
        raise QueryError(f"checkpoint: found {checkpoint!r}; allowed: a checkpoint of the device registry "
                         f"({', '.join(sorted(registry)[:20])}{' ...' if len(registry) > 20 else ''})")
    fields = check_paper_person(id_number, name, dob, phone, require_all=require_all)
    try:
        if fields["id_number"]:
            pid = personal.person_id_for_id(fields["id_number"])
        else:
            pid = personal.person_id_for_name_dob(fields["name"], fields["dob"])
    except ValueError as exc:
        raise QueryError(f"id_number: {exc}") from None
    person = {"paper": True, "kind": "declaration"}
    for k in ("id_number", "name", "phone", "dob"):
        if fields[k]:
            person[k] = fields[k]
    now = now or utcnow()
    t = _time_arg(time, "time", None) or now
    if (t - now).total_seconds() > PAPER_FUTURE_S:
        raise QueryError(f"time: {format_time(t)} is in the future (the collector's clock says {format_time(now)}); "
                         "allowed: now or earlier")
    device_id = manual_device_id(collector_id)
    P = _paper_table(storage)
    token_hash = hashlib.sha256(str(form_token).encode()).hexdigest() if form_token else None
    from peewee import IntegrityError

    try:
        with storage.db.atomic():
            claim = P.create(form_token=token_hash, recorded_by=str(recorded_by or "unknown")[:200],
                             recorded_at=utcnow(), checkpoint=str(checkpoint))
    except IntegrityError:
        first = P.get_or_none(P.form_token == token_hash)
        raise AlreadyRecorded({"device_id": first.device_id, "seq": first.seq} if first else None) from None

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

    try:
        item = storage.store_manual(make, device_id)
    except BaseException:
        try:  # nothing stored: the same form may be sent again
            P.delete().where(P.id == claim.id).execute()
        except Exception as exc:  # the database went away: the token stays used, a new form is needed
            log.warning("could not release the form token of a paper declaration that failed: %s", exc)
        raise
    ev = item.event
    P.update(device_id=ev.device_id, seq=ev.seq).where(P.id == claim.id).execute()
    P.delete().where(P.recorded_at < now - timedelta(days=storage.retention_days)).execute()
    log.info("paper declaration %s/%d at %s entered by %s", ev.device_id, ev.seq, ev.checkpoint, claim.recorded_by)
    return {
        "device_id": ev.device_id, "seq": ev.seq, "uuid": ev.uuid, "checkpoint": ev.checkpoint,
        "direction": str(ev.direction), "time": ev.time, "decision": str(ev.decision), "source": "paper",
        "verified": False, "claim_key": keys.person_key(pid), "recorded_by": claim.recorded_by,
    }


def dumps(obj):
    """JSON for the CLI and the API (readable, UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=False)
