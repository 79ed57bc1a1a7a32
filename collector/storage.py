"""The collector's database: events, the device registry, published versions, the audit log (peewee).

SQLite by default (one file, WAL) and PostgreSQL for production, from one URL:
`sqlite:///relative.db`, `sqlite:////absolute/path.db` or `postgresql://user:pw@host:5432/db`.
`Storage(url, keys=CollectorKeys)` opens it, `migrate()` creates the schema (idempotent; a
pre-release version-1 database is refused), and `store_batch(items)` stores events in one
transaction. An item is `collector.keys.Item(event, opened, seal_error)`: a `chot.wire.Event`,
its sealed part as opened at ingest (or None) and why it did not open (or None).
`(device_id, seq)` identifies an event, a duplicate is ignored (INSERT ... ON CONFLICT DO
NOTHING on both backends), and each device's contiguous seq (every seq from 1 up to it is
stored) is advanced even when events arrive out of order. Times are stored as naive UTC.

What an event row holds: its clear fields; `person_key` = HMAC(index key, person id) when
verified, `claim_key` the same of an unverified claim (never merged); `personal` the person's
fields encrypted with the data key (bound to device_id|seq); `sealed` the raw sealed part
only when it could not be opened (to open later), with `seal_error`. No person id, name or
unkeyed hash is stored. On PostgreSQL `chot_event` is partitioned by day on `time` (RANGE;
a DEFAULT partition takes times outside the created ones), which `purge()` drops whole.
"""

import json
import logging
import re
import sqlite3
import threading
import time as _time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

from peewee import (
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseError,
    DataError,
    DateTimeField,
    IntegerField,
    IntegrityError,
    Model,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
    __exception_wrapper__,
    fn,
)

from chot import wire
from chot.errors import CollectorError
from collector.keys import Item

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4  # 3: chot_binding (issue 11); 4: chot_event.refers_seq/refers_uuid (issue 13)
MAX_GAPS = 100  # gaps kept per device in the registry (the rest are summarised)
_GAP_SCAN_ROWS = 20000  # rows scanned above the contiguous mark to list gaps
_LOOKUP_MEMORY = 200_000  # chot_lookup rows remembered as written today (about 30 MB at most)


# --- time helpers -----------------------------------------------------------------------------


def parse_time(text):
    """Parse an ISO 8601 time (`...Z`, `+00:00` or naive = UTC) into a naive UTC datetime."""
    if isinstance(text, datetime):
        return to_naive_utc(text)
    s = str(text).strip()
    try:  # the usual wire time (...Z, 3 or 6 digits of fraction) as it is
        return to_naive_utc(datetime.fromisoformat(s))
    except ValueError:
        pass
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d|.* \d\d:\d\d:\d\d)\.(\d+)(.*)", s)
    if m:  # fromisoformat of 3.11 wants 3 or 6 digits of fraction
        s = f"{m.group(1)}.{(m.group(2) + '000000')[:6]}{m.group(3)}"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}; write e.g. 2021-08-09T10:00:00Z") from None
    return to_naive_utc(dt)


_WIRE_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?Z")


def _wire_time_pg(text, db_value):
    """An event's time (as the wire writes it) -> the naive UTC datetime PostgreSQL stores."""
    m = _WIRE_TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return db_value(parse_time(text))
    try:
        return datetime.fromisoformat(f"{m[1]} {m[2]}.{((m[3] or '') + '000000')[:6]}")
    except ValueError:
        return db_value(parse_time(text))  # raises, saying what to write


def _wire_time_sqlite(text, db_value):
    """An event's time (as the wire writes it) -> the fixed-width text SQLite stores (see _SqliteTime).

    The wire form `YYYY-MM-DDTHH:MM:SS[.f]Z` is rewritten as text, after datetime checked it is
    a real time (a bad date raises ValueError like parse_time); any other form goes through parse_time.
    """
    m = _WIRE_TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return db_value(parse_time(text))
    out = f"{m[1]} {m[2]}.{((m[3] or '') + '000000')[:6]}"
    try:
        datetime.fromisoformat(out)  # a date or time that does not exist
    except ValueError:
        return db_value(parse_time(text))  # raises, saying what to write
    return out


def to_naive_utc(dt):
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def format_time(dt):
    """A naive UTC datetime as the wire writes it: `2021-08-09T10:00:00Z` or `...:00.123456Z`."""
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = parse_time(dt)
    dt = to_naive_utc(dt)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if dt.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def utcnow():
    return datetime.now(UTC).replace(tzinfo=None)


# --- clock quality at ingest -----------------------------------------------------------------


class ClockFlag:
    """What the collector concluded about an event's time at ingest (the `clock_flag` column).

    - ok:           the time agrees with the collector's anchor (clock.ref) within JUMP_S, or, with
                    no anchor, the clock says it is synchronised and the time is plausible;
    - unsynced:     no anchor, the clock says it is not synchronised (the time may be off);
    - corrected:    the clock was not synchronised and disagreed with the anchor by more than JUMP_S:
                    time_corrected is the anchored time;
    - jump_back / jump_forward: the clock said it was synchronised but was earlier / later than the
                    anchored time by more than JUMP_S (a clock step): time_corrected is the anchored time;
    - future:       the time (as corrected) is more than the configured skew (`collector.future_skew_s`,
                    default FUTURE_S) after its arrival: a clock far ahead, or a time made up;
    - implausible:  no usable anchor and the time older than retention: nothing to correct it by;
    - behind_floor: the terminal says its clock read earlier than its persisted time floor (wire
                    `Clock.behind`: its last event's time, its newest signed update's issue time):
                    set back, or lost after a reboot; the time is as sent (an anchor corrects it: then
                    the flag is corrected / jump_back).
    An event is flagged once, by the first of: future, implausible, corrected / jump_back /
    jump_forward, behind_floor, unsynced, ok.
    """

    OK = "ok"
    UNSYNCED = "unsynced"
    CORRECTED = "corrected"
    JUMP_BACK = "jump_back"
    JUMP_FORWARD = "jump_forward"
    IMPLAUSIBLE = "implausible"
    FUTURE = "future"
    BEHIND_FLOOR = "behind_floor"
    ALL = (OK, UNSYNCED, CORRECTED, JUMP_BACK, JUMP_FORWARD, IMPLAUSIBLE, FUTURE, BEHIND_FLOOR)
    ADJUSTED = (CORRECTED, JUMP_BACK, JUMP_FORWARD)  # time_corrected differs from time
    PURGED_BY_ARRIVAL = (IMPLAUSIBLE, FUTURE)  # purged retention_days after arrival whatever their time


JUMP_S = 120.0  # a terminal's time further than this from its anchored time is a jump
FUTURE_S = 600.0  # default skew: a time further than this after its arrival is flagged future


def anchored_time(clock):
    """ref.time + (mono_ns - ref.mono_ns) of a wire Clock (naive UTC), or None without a usable ref.

    The terminal resets its ref at every boot, so a ref always belongs to the event's boot.
    """
    ref = clock.ref
    if ref is None:
        return None
    try:
        return parse_time(ref.time) + timedelta(microseconds=(clock.mono_ns - ref.mono_ns) // 1000)
    except (ValueError, OverflowError):
        return None


def clock_assessment(clock, time, received_at, retention_days, future_skew_s=FUTURE_S):
    """(time_corrected, flag) of an event's `clock` (wire Clock) and `time` (naive UTC) received at `received_at`.

    time_corrected depends on the event's own fields only (a resend gets the same: it is part of
    PostgreSQL's unique key); the flag may depend on when it arrived. See ClockFlag.
    """
    behind = bool(getattr(clock, "behind", False))
    anchored = anchored_time(clock)
    if anchored is not None:
        delta = (time - anchored).total_seconds()
        if abs(delta) <= JUMP_S:
            corrected, flag = time, (ClockFlag.BEHIND_FLOOR if behind else ClockFlag.OK)
        elif not clock.synced:
            corrected, flag = anchored, ClockFlag.CORRECTED
        else:
            corrected, flag = anchored, (ClockFlag.JUMP_BACK if delta < 0 else ClockFlag.JUMP_FORWARD)
        if (corrected - received_at).total_seconds() > future_skew_s:
            flag = ClockFlag.FUTURE  # even the anchored time is ahead: the anchor itself is wrong
        return corrected, flag
    age_s = (received_at - time).total_seconds()
    if -age_s > future_skew_s:
        return time, ClockFlag.FUTURE
    if age_s > retention_days * 86400.0:
        return time, ClockFlag.IMPLAUSIBLE
    if behind:
        return time, ClockFlag.BEHIND_FLOOR
    return time, (ClockFlag.OK if clock.synced else ClockFlag.UNSYNCED)


class _SqliteTime(DateTimeField):
    """UTC time as fixed-width text on SQLite, so that text order is time order."""

    def db_value(self, value):
        if isinstance(value, datetime):
            return to_naive_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
        return value


class _PgTime(DateTimeField):
    def db_value(self, value):
        if isinstance(value, datetime):
            return to_naive_utc(value)
        return value


class _ThreadConnection:
    """See Storage.connection: this thread's connection for the duration, counted per thread."""

    def __init__(self, storage):
        self.storage = storage

    def __enter__(self):
        local = self.storage._local
        depth = getattr(local, "depth", 0)
        if depth == 0 or self.storage.db.is_closed():
            self.storage.db.connect(reuse_if_open=True)
        local.depth = depth + 1
        return self.storage

    def __exit__(self, *exc):
        local = self.storage._local
        local.depth = max(0, getattr(local, "depth", 1) - 1)
        if local.depth == 0:
            db = self.storage.db
            if not db.is_closed():
                try:
                    db.close()
                except Exception as e:  # a broken connection: nothing left to close
                    log.debug("closing the connection failed: %s", e)
                    db.dispose()


# --- models, one set per database -------------------------------------------------------------


def _make_models(db, sqlite):
    TimeField = _SqliteTime if sqlite else _PgTime

    class Base(Model):
        class Meta:
            database = db

    class Event(Base):
        device_id = CharField(max_length=64)
        seq = BigIntegerField()
        uuid = CharField(max_length=36)
        checkpoint = CharField(max_length=128)
        direction = CharField(max_length=3)
        time = TimeField()
        clock_synced = BooleanField()
        boot_id = TextField()
        mono_ns = BigIntegerField()
        source = CharField(max_length=16)
        format = CharField(max_length=16)
        decision = CharField(max_length=8)
        reason = CharField(max_length=64)
        verified = BooleanField()
        person_key = CharField(max_length=64, null=True)  # HMAC of a verified person id
        claim_key = CharField(max_length=64, null=True)  # HMAC of an unverified claim's person id
        personal = TextField(null=True)  # DataCipher text of {"person", "person_id", "credential_id"}
        sealed = TextField(null=True)  # the sealed part as received, kept only when it did not open
        seal_error = CharField(max_length=32, null=True)
        received_at = TimeField()
        time_corrected = TimeField()  # the time tracing uses: `time`, or re-anchored on the collector's ack
        clock_flag = CharField(max_length=16)  # ClockFlag: ok, unsynced, corrected, jump_back, ...
        refers_seq = BigIntegerField(null=True)  # the event's refers_to (the guard's confirmation of an event)
        refers_uuid = CharField(max_length=36, null=True)

        class Meta:
            table_name = "chot_event"
            primary_key = False
            # PostgreSQL partitions by time_corrected, so its unique key must hold it: a resend has the
            # same (time_corrected is a function of the event's own fields, see clock_assessment)
            indexes = (
                ((("device_id", "seq"), True) if sqlite else (("device_id", "seq", "time_corrected"), True)),
                (("person_key", "time_corrected"), False),
                (("claim_key", "time_corrected"), False),
                (("checkpoint", "time_corrected"), False),
                (("time_corrected",), False),
            )

    class Device(Base):
        device_id = CharField(max_length=64, primary_key=True)
        first_seen = TimeField(null=True)
        last_seen = TimeField(null=True)
        online = BooleanField(null=True)
        version = CharField(max_length=64, null=True)
        outbox_depth = BigIntegerField(null=True)
        last_status = TextField(null=True)  # JSON of the last status message
        status_time = TimeField(null=True)
        contiguous_seq = BigIntegerField(default=0)
        max_seq = BigIntegerField(default=0)
        gaps = TextField(default="[]")  # JSON: [{"from": a, "to": b, "since": iso}]

        class Meta:
            table_name = "chot_device"

    class Published(Base):
        name = CharField(max_length=200, primary_key=True)
        version = BigIntegerField()
        published_at = TimeField()

        class Meta:
            table_name = "chot_published"

    class SchemaVersion(Base):
        version = IntegerField()
        applied_at = TimeField()

        class Meta:
            table_name = "chot_schema"

    class Audit(Base):
        id = BigAutoField()
        time = TimeField()
        actor = CharField(max_length=200)
        action = CharField(max_length=32)
        case_id = CharField(max_length=200)
        person_key = CharField(max_length=64, null=True)
        detail = TextField()  # JSON: the query's arguments and what it revealed (keys, counts)
        rows = BigIntegerField()

        class Meta:
            table_name = "chot_audit"
            indexes = ((("case_id", "time"), False), (("time",), False))

    class Quarantine(Base):
        """A seq of a device whose event can never be stored (invalid or refused by the database).

        Its content is not kept (it may hold anything, even personal data in clear): only why,
        its size and a hash. The contiguous mark passes over it, so the terminal is acked and
        stops resending an event that would never store (issue 10), and the gap is visible here.
        """

        device_id = CharField(max_length=64)
        seq = BigIntegerField()
        reason = CharField(max_length=64)
        detail = TextField()
        sha256 = CharField(max_length=64)
        size = IntegerField()
        received_at = TimeField()

        class Meta:
            table_name = "chot_quarantine"
            primary_key = False
            indexes = ((("device_id", "seq"), True), (("received_at",), False))

    class Binding(Base):
        """What a device was enrolled for (its fleet's registry, `chot collector devices import`): an event
        of that device claiming another checkpoint or direction is refused (collector.registry)."""

        device_id = CharField(max_length=64, primary_key=True)
        checkpoint = CharField(max_length=128)
        direction = CharField(max_length=3)
        source = CharField(max_length=200)  # where it came from: the registry file's fleet and time
        updated_at = TimeField()

        class Meta:
            table_name = "chot_binding"

    Event._quarantine = Quarantine
    Event._binding = Binding
    return Event, Device, Published, SchemaVersion, Audit


def _make_lookup_model(db, sqlite):
    """chot_lookup: keyed indexes to find a person by declaration id or phone (issue 12).

    lookup_key = HMAC(index key, "cred:<credential id>" or "phone:<normalised phone>")
    (CollectorKeys.lookup_keys), person_key = the person's index key (the same HMAC as an event's
    person_key or claim_key). Nothing in clear; unusable without the index key.
    """
    TimeField = _SqliteTime if sqlite else _PgTime

    class Lookup(Model):
        lookup_key = CharField(max_length=64)
        person_key = CharField(max_length=64)
        seen_at = TimeField()

        class Meta:
            database = db
            table_name = "chot_lookup"
            primary_key = False
            indexes = ((("lookup_key", "person_key"), True),)

    return Lookup


# --- event conversion -------------------------------------------------------------------------

EVENT_COLUMNS = (
    "device_id",
    "seq",
    "uuid",
    "checkpoint",
    "direction",
    "time",
    "clock_synced",
    "boot_id",
    "mono_ns",
    "source",
    "format",
    "decision",
    "reason",
    "verified",
    "person_key",
    "claim_key",
    "personal",
    "sealed",
    "seal_error",
    "received_at",
    "time_corrected",
    "clock_flag",
    "refers_seq",
    "refers_uuid",
)
CLEAR_COLUMNS = EVENT_COLUMNS[:14] + ("time_corrected", "clock_flag", "received_at")  # no personal data
_TC = EVENT_COLUMNS.index("time_corrected")

_PG_EVENT_TYPES = (  # the PostgreSQL type of each of EVENT_COLUMNS, for the batch INSERT
    "text", "bigint", "text", "text", "text", "timestamp", "boolean", "text",
    "bigint", "text", "text", "text", "text", "boolean", "text", "text", "text", "text", "text", "timestamp",
    "timestamp", "text", "bigint", "text",
)  # fmt: skip
_PG_EVENT_DDL = """CREATE TABLE IF NOT EXISTS "chot_event" (
    "device_id" VARCHAR(64) NOT NULL, "seq" BIGINT NOT NULL, "uuid" VARCHAR(36) NOT NULL,
    "checkpoint" VARCHAR(128) NOT NULL, "direction" VARCHAR(3) NOT NULL, "time" TIMESTAMP NOT NULL,
    "clock_synced" BOOLEAN NOT NULL, "boot_id" TEXT NOT NULL, "mono_ns" BIGINT NOT NULL,
    "source" VARCHAR(16) NOT NULL, "format" VARCHAR(16) NOT NULL, "decision" VARCHAR(8) NOT NULL,
    "reason" VARCHAR(64) NOT NULL, "verified" BOOLEAN NOT NULL, "person_key" VARCHAR(64),
    "claim_key" VARCHAR(64), "personal" TEXT, "sealed" TEXT, "seal_error" VARCHAR(32),
    "received_at" TIMESTAMP NOT NULL, "time_corrected" TIMESTAMP NOT NULL, "clock_flag" VARCHAR(16) NOT NULL,
    "refers_seq" BIGINT, "refers_uuid" VARCHAR(36)
) PARTITION BY RANGE ("time_corrected")"""
PG_DEFAULT_PARTITION = "chot_event_default"
_PARTITION_RE = re.compile(r"chot_event_p(\d{8})")
PURGE_BATCH = 5000  # rows deleted per transaction


def partition_name(day):
    return f"chot_event_p{day:%Y%m%d}"


def row_to_event(row):
    """A stored row (a dict with the clear columns) -> the wire Event (v2) without its personal part.

    A row whose time was corrected gets a clock ref that yields its time_corrected again.
    """
    clock = {"synced": bool(row["clock_synced"]), "boot_id": row["boot_id"], "mono_ns": int(row["mono_ns"])}
    tc = row.get("time_corrected")
    if tc not in (None, "") and parse_time(tc) != parse_time(row["time"]):
        clock["ref"] = {"time": format_time(tc), "mono_ns": int(row["mono_ns"])}
    return wire.event_from_dict({
        "v": wire.EVENT_VERSION,
        "device_id": row["device_id"],
        "seq": int(row["seq"]),
        "uuid": row["uuid"],
        "checkpoint": row["checkpoint"],
        "direction": row["direction"],
        "time": format_time(row["time"]),
        "clock": clock,
        "source": row["source"],
        "format": row["format"],
        "decision": row["decision"],
        "reason": row["reason"],
        "verified": bool(row["verified"]),
        **({"refers_to": {"seq": int(row["refers_seq"]), "uuid": row["refers_uuid"]}}
           if row.get("refers_seq") is not None and row.get("refers_uuid") else {}),
    })


def _as_item(x):
    """An Item from an Item, a (event, opened, seal_error) tuple or a bare wire Event."""
    if isinstance(x, Item):
        return x
    if isinstance(x, tuple):
        return Item(*x)
    return Item(x, None, None)


def _device_seq(row):
    return row[0], row[1]


def _gap_list(c, max_seq, seqs, truncated, old_gaps, now):
    """Gap dicts between the mark `c` and `max_seq`, given the sorted stored seqs above `c`.

    `truncated`: `seqs` is only a first part, so no gap is claimed after its last seq. Each gap
    keeps the earliest `since` of the old gaps it overlaps (else `now`); at most MAX_GAPS.
    """
    ranges, prev = [], c
    for s in seqs:
        if s > prev + 1:
            ranges.append([prev + 1, s - 1])
        prev = s
    if prev < max_seq and not truncated:
        ranges.append([prev + 1, max_seq])
    out = []
    for a, b in ranges[:MAX_GAPS]:
        since = [g["since"] for g in old_gaps if g["from"] <= b and a <= g["to"]]
        out.append({"from": a, "to": b, "since": min(since) if since else format_time(now)})
    return out


class StoreResult(NamedTuple):
    """What `Storage.store_events` did: {device_id: contiguous seq}, new rows, [(item, reason)] left out."""

    acks: dict
    inserted: int
    unstorable: list


# values the database refuses (or that cannot be converted as it takes them): the event is unstorable
_DATA_ERRORS = (DataError, IntegrityError, ValueError, OverflowError, TypeError)


# --- the storage ------------------------------------------------------------------------------


DB_FILE_MODE = 0o600
_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _private_db_files(path):
    """Create the SQLite file 0600 before SQLite does (it gives its -wal and -shm the same mode), and
    take group and other rights off an existing one and its companions (made by an older collector)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, DB_FILE_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CollectorError(f"cannot create the database {path}: {exc.strerror}; check collector.database and "
                             "the folder's rights") from None
    else:
        os.close(fd)
    for suffix in _DB_SUFFIXES:
        f = f"{path}{suffix}"
        try:
            mode = stat.S_IMODE(os.stat(f).st_mode)
            if mode & 0o077:
                os.chmod(f, mode & 0o700)
                log.warning("%s was readable by others (mode %o): now %o", f, mode, mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("cannot make %s private (%s): run chmod 600 on it", f, exc.strerror)


def open_database(url, synchronous="FULL"):
    """Return (peewee database, is_sqlite) for a `sqlite:///...` or `postgresql://...` URL."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :]
        if not path:
            raise CollectorError(f"database {url!r} names no file: write sqlite:///collector.db")
        if path != ":memory:":
            parent = Path(path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CollectorError(
                    f"cannot create the database folder {parent}: {exc.strerror}; create it or change"
                    " collector.database"
                ) from None
            _private_db_files(path)
        pragmas = {
            "journal_mode": "wal",
            "secure_delete": "on",  # deleted rows (purged events) are overwritten with zeros, not left in free pages
            "synchronous": synchronous,
            "busy_timeout": 15000,
            "cache_size": -64000,
            "temp_store": "memory",
        }
        db = SqliteDatabase(path, pragmas=pragmas, lock_type="IMMEDIATE", timeout=15)
        return db, True
    if url.startswith(("postgresql://", "postgres://")):
        u = urlparse(url)
        name = unquote(u.path.lstrip("/"))
        if not name:
            raise CollectorError("database URL names no database: write postgresql://user@host:5432/DBNAME")
        kwargs = {"host": u.hostname or "127.0.0.1", "port": u.port or 5432}
        if u.username:
            kwargs["user"] = unquote(u.username)
        if u.password:
            kwargs["password"] = unquote(u.password)
        for part in filter(None, (u.query or "").split("&")):
            k, _, v = part.partition("=")
            kwargs[k] = unquote(v)
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise CollectorError("PostgreSQL needs psycopg2: pip install 'chot[postgres]'") from None
        return PostgresqlDatabase(name, **kwargs), False
    raise CollectorError(f"unknown database URL {url!r}: use sqlite:///PATH or postgresql://user@host/db")


class Storage:
    """The collector's database. Thread-safe: peewee keeps one connection per thread.

    `keys` (a collector.keys.CollectorKeys) is needed to store opened personal parts and to
    answer the personal queries; fleet, traffic, export and purge work without it.
    `retention_days` bounds the days for which PostgreSQL day partitions are created.
    """

    def __init__(self, url, synchronous="FULL", migrate=True, keys=None, retention_days=28.0,
                 future_skew_s=FUTURE_S):
        self.url = url
        self.keys = keys
        self.retention_days = float(retention_days)
        self.future_skew_s = float(future_skew_s)
        self.db, self.sqlite = open_database(url, synchronous)
        self.Event, self.Device, self.Published, self.SchemaVersion, self.Audit = _make_models(self.db, self.sqlite)
        self.Quarantine = self.Event._quarantine
        self.Binding = self.Event._binding
        self.Lookup = _make_lookup_model(self.db, self.sqlite)
        self._lookups_written = {}  # (lookup_key, person_key) prefixes -> the day this process last wrote it
        self._manual_lock = threading.Lock()
        self._partitions = set()  # days known to have a partition (PostgreSQL)
        self._partition_lock = threading.Lock()
        self._local = threading.local()  # per thread: depth of connection() contexts
        try:
            self.db.connect(reuse_if_open=True)
        except DatabaseError as exc:
            raise CollectorError(f"cannot open the database {self.safe_url}: {exc}".strip()) from None
        if migrate:
            self.migrate()

    @property
    def safe_url(self):
        """The URL without its password, for messages."""
        return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", self.url)

    def close(self):
        if not self.db.is_closed():
            self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def connection(self):
        """A context manager giving this thread its own connection, closed at the end (worker, HTTP threads).

        Unlike peewee's connection_context() it survives `reconnect()` inside it: peewee keeps
        its contexts on the connection's state, which a close empties, and its exit then popped
        an empty list (IndexError at shutdown after a database reconnect). Nested uses in one
        thread share the connection; the outermost exit closes it.
        """
        return _ThreadConnection(self)

    def reconnect(self):
        """Drop this thread's connection (rolled back, closed even when broken) and open a new one.

        Raises the database's error when it is still unreachable (the next try says so).
        """
        db = self.db
        if not db.is_closed():
            try:
                if db.in_transaction():
                    db.rollback()
            except Exception as exc:  # the connection is gone already
                log.debug("rollback before reconnect failed: %s", exc)
            try:
                db.close()
            except Exception as exc:
                log.debug("closing a broken connection failed: %s", exc)
                db.dispose()
        db.connect(reuse_if_open=True)

    # --- schema -------------------------------------------------------------------------------

    def schema_version(self):
        if not self.SchemaVersion.table_exists():
            return 0
        return self.SchemaVersion.select(fn.MAX(self.SchemaVersion.version)).scalar() or 0

    def migrate(self):
        """Create the schema (version SCHEMA_VERSION) or check it; safe to run again. Returns the version.

        A version-1 database is refused: that pre-release layout held subject summaries in clear
        and is not converted (no fleet ran it). Move it aside and start a new one.
        """
        with self.db.atomic():
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise CollectorError(
                    f"the database schema is version {current}, newer than this collector ({SCHEMA_VERSION}):"
                    " upgrade chot"
                )
            if 0 < current < 2:
                raise CollectorError(
                    f"the database {self.safe_url} has the pre-release schema version {current} (subjects in clear),"
                    " which this collector does not read or convert: move it aside (or drop it) and start the"
                    " collector again to create a new one"
                )
            if current == 0:
                self._create_schema()
                self.SchemaVersion.create(version=SCHEMA_VERSION, applied_at=utcnow())
                log.info("database schema created at version %d", SCHEMA_VERSION)
            else:
                if current == 2:  # version 3 adds the devices' bindings
                    self.db.create_tables([self.Binding], safe=True)
                if current <= 3:  # version 4: an event may refer to another (the guard's confirmation)
                    have = {c.name for c in self.db.get_columns("chot_event")}
                    for col, kind in (("refers_seq", "BIGINT"), ("refers_uuid", "VARCHAR(36)")):
                        if col not in have:
                            self.db.execute_sql(f'ALTER TABLE "chot_event" ADD COLUMN "{col}" {kind}')
                if current < SCHEMA_VERSION:
                    self.SchemaVersion.create(version=SCHEMA_VERSION, applied_at=utcnow())
                    log.warning("database schema upgraded from version %d to %d", current, SCHEMA_VERSION)
            self.db.create_tables([self.Lookup], safe=True)  # added within version 3 (issue 12)
        return SCHEMA_VERSION

    def _create_schema(self):
        if self.sqlite:
            self.db.create_tables([self.Event, self.Device, self.Published, self.SchemaVersion, self.Audit,
                                   self.Quarantine, self.Binding], safe=True)
            return
        self.db.execute_sql(_PG_EVENT_DDL)
        self.db.execute_sql(f'CREATE TABLE IF NOT EXISTS "{PG_DEFAULT_PARTITION}" PARTITION OF "chot_event" DEFAULT')
        self.Event._schema.create_indexes(safe=True)
        self.db.create_tables([self.Device, self.Published, self.SchemaVersion, self.Audit, self.Quarantine,
                               self.Binding], safe=True)

    # --- PostgreSQL day partitions ------------------------------------------------------------

    def partitions(self):
        """[(name, day or None for the default)] of chot_event's partitions (PostgreSQL), by day."""
        if self.sqlite:
            return []
        rows = self.db.execute_sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'chot_event'::regclass"
        ).fetchall()
        out = []
        for (name,) in rows:
            m = _PARTITION_RE.fullmatch(name)
            out.append((name, datetime.strptime(m[1], "%Y%m%d") if m else None))
        return sorted(out, key=lambda x: (x[1] is not None, x[1] or datetime.min))

    def _partition_days(self, times, now):
        """The days among `times` (naive UTC datetimes) that should have a partition: within retention."""
        lo = (now - timedelta(days=self.retention_days + 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        hi = now + timedelta(days=2)
        days = set()
        for t in times:
            if lo <= t <= hi:
                days.add(t.replace(hour=0, minute=0, second=0, microsecond=0))
        return days - self._partitions

    def ensure_partition(self, day):
        """Create the day partition of `day` (a datetime, its date is used); idempotent, safe across collectors.

        When the default partition already holds rows of that day (late or early events stored
        before the partition existed), the partition is made as a standalone table LIKE the
        parent, the rows are moved into it and it is attached: creation never fails on them.
        Returns True when it created the partition.
        """
        if self.sqlite:
            return False
        day = datetime(day.year, day.month, day.day)
        name, nxt = partition_name(day), day + timedelta(days=1)
        with self._partition_lock:
            if day in self._partitions:
                return False
            with self.db.atomic():
                cur = self.db.cursor()
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('chot_event partitions'))")
                cur.execute("SELECT to_regclass(%s)", [name])
                created = cur.fetchone()[0] is None
                if created:
                    cur.execute(f'SELECT 1 FROM "{PG_DEFAULT_PARTITION}" WHERE "time_corrected" >= %s'
                                ' AND "time_corrected" < %s LIMIT 1', [day, nxt])
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE TABLE "{name}" PARTITION OF "chot_event" FOR VALUES FROM (%s) TO (%s)',
                                    [day, nxt])
                    else:
                        cur.execute(
                            f'CREATE TABLE "{name}" (LIKE "chot_event" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
                        )
                        cur.execute(
                            f'WITH moved AS (DELETE FROM "{PG_DEFAULT_PARTITION}" WHERE "time_corrected" >= %s'
                            f' AND "time_corrected" < %s RETURNING *) INSERT INTO "{name}" SELECT * FROM moved',
                            [day, nxt],
                        )
                        log.info("moved %d events of %s out of the default partition", cur.rowcount, day.date())
                        cur.execute(f'ALTER TABLE "chot_event" ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)',
                                    [day, nxt])
            self._partitions.add(day)
            return created

    # --- retention ----------------------------------------------------------------------------

    def purge(self, older_than_days, now=None, batch=PURGE_BATCH):
        """Delete the events whose time_corrected is more than `older_than_days` days before `now`, and
        those flagged implausible or future that arrived that long ago (a time in 2036 is not kept until 2036).

        PostgreSQL: whole day partitions older than the cutoff are dropped; the rows older than
        the cutoff in the default partition and in the partition of the cutoff's own day are
        deleted in batches. SQLite: batched deletes. Each batch is its own short transaction, so
        ingest goes on between them. Returns {"rows": deleted rows, "partitions": dropped partitions,
        "cutoff": ISO time}.
        """
        if float(older_than_days) <= 0:
            raise CollectorError("purge: the age must be more than 0 days")
        now = now or utcnow()
        cutoff = now - timedelta(days=float(older_than_days))
        rows = dropped = 0
        old = f'"time_corrected" < {self.db.param}'
        by_arrival = ", ".join(f"'{f}'" for f in ClockFlag.PURGED_BY_ARRIVAL)
        implausible = f'"clock_flag" IN ({by_arrival}) AND "received_at" < {self.db.param}'
        if self.sqlite:
            t = self.Event.time.db_value(cutoff)
            for cond in (old, implausible):
                rows += self._delete_in_batches(
                    f'DELETE FROM "chot_event" WHERE rowid IN (SELECT rowid FROM "chot_event" WHERE {cond} LIMIT ?)',
                    t, batch)
        else:
            for name, day in self.partitions():
                if day is not None and day + timedelta(days=1) <= cutoff:
                    with self.db.atomic():
                        cur = self.db.execute_sql(f'SELECT count(*) FROM "{name}"')
                        rows += cur.fetchone()[0]
                        self.db.execute_sql(f'DROP TABLE "{name}"')
                    with self._partition_lock:
                        self._partitions.discard(day)
                    dropped += 1
                    log.info("retention: dropped the partition of %s", day.date())
            targets = [PG_DEFAULT_PARTITION]
            straddling = partition_name(cutoff)
            if any(n == straddling for n, _d in self.partitions()):
                targets.append(straddling)
            # an implausible time in the future sits in the default partition: purged by its arrival
            for name, cond in [(n, old) for n in targets] + [(PG_DEFAULT_PARTITION, implausible)]:
                rows += self._delete_in_batches(
                    f'DELETE FROM "{name}" WHERE ctid = ANY(ARRAY(SELECT ctid FROM "{name}" WHERE {cond} LIMIT %s))',
                    cutoff, batch)
        with self.db.atomic():  # quarantined seqs are kept as long as events
            rows += self.Quarantine.delete().where(self.Quarantine.received_at < cutoff).execute()
            self.Lookup.delete().where(self.Lookup.seen_at < cutoff).execute()  # keyed look-ups (issue 12) too
        if rows or dropped:
            log.warning("retention: purged %d events older than %s (%d day partitions dropped)", rows,
                        format_time(cutoff), dropped)
        return {"rows": rows, "partitions": dropped, "cutoff": format_time(cutoff)}

    def _delete_in_batches(self, sql, cutoff, batch):
        """Run a DELETE of at most `batch` rows (params: cutoff, batch) until it deletes fewer; return the count.

        Each batch is its own short transaction, so ingest goes on between them.
        """
        total = 0
        while True:
            with self.db.atomic():
                n = self.db.execute_sql(sql, (cutoff, batch)).rowcount
            total += n
            if n < batch:
                return total

    # --- storing ------------------------------------------------------------------------------

    def store_batch(self, items):
        """Store events in one transaction; return {device_id: contiguous seq}. See store_batch_counted."""
        return self.store_batch_counted(items)[0]

    def store_batch_counted(self, items):
        """Store events in one transaction; returns ({device_id: contiguous seq}, number of new rows).

        Each item is a `collector.keys.Item(event, opened, seal_error)` (or such a tuple, or a
        bare `chot.wire.Event`, meaning no personal part was opened): `opened` is the event's
        sealed part opened (chot.personal.Opened), indexed and encrypted here with `self.keys`;
        `seal_error` the code of why it could not be opened, in which case the raw sealed part
        is kept to be opened later. `(device_id, seq)` identifies an event: a duplicate is ignored.

        Per batch: one INSERT of the events (ON CONFLICT DO NOTHING), one INSERT of unknown
        devices into the registry, one SELECT of the batch's registry rows (FOR UPDATE on
        PostgreSQL, in device order) and one UPDATE of them. A device whose registry shows no
        gap (max_seq <= contiguous_seq) advances from the batch's own seqs in memory: every
        event stored above its mark was stored by a committed batch that raised max_seq, so the
        batch's seqs are all there is above it. A device with a gap re-reads its stored seqs.
        On PostgreSQL the day partitions the batch needs are created first (own transaction).
        """
        now = utcnow()
        return self._store_rows(self._event_tuples(items, now), now, self._lookup_rows(items))

    def store_events(self, items):
        """Store what can be stored of `items`; returns StoreResult(acks, inserted, unstorable).

        One transaction for the batch; when the database refuses a value in it (or a value cannot
        be converted as the database takes it), each event is stored in a transaction of its own,
        so that only the truly unstorable ones are left out: `unstorable` lists them as (item,
        reason). A connection error (OperationalError, InterfaceError) is raised as it is: nothing
        is decided, the caller retries the whole batch.
        """
        now = utcnow()
        rows, unstorable = [], []
        conv = self._event_converter(now)
        for x in items:
            try:
                rows.append((conv(x), x))
            except CollectorError:
                raise
            except _DATA_ERRORS as exc:
                unstorable.append((x, exc.__class__.__name__))
        try:
            acks, inserted = self._store_rows([r for r, _x in rows], now, self._lookup_rows([x for _r, x in rows]))
            return StoreResult(acks, inserted, unstorable)
        except _DATA_ERRORS as exc:
            log.error("a batch of %d events was refused (%s); storing them one by one", len(rows),
                      exc.__class__.__name__)
        acks, inserted = {}, 0
        for row, x in rows:
            try:
                got, n = self._store_rows([row], now, self._lookup_rows([x]))
            except _DATA_ERRORS as exc:
                unstorable.append((x, exc.__class__.__name__))
                continue
            for dev, c in got.items():
                acks[dev] = max(c, acks.get(dev, 0))
            inserted += n
        return StoreResult(acks, inserted, unstorable)

    def _store_rows(self, rows, now, lookups=()):
        """Store event tuples (EVENT_COLUMNS order) in one transaction; ({device: contiguous}, new rows).

        `lookups`: (lookup_key, person_key) rows of chot_lookup (see _lookup_rows), in the same transaction.
        """
        # (device_id, seq) order: collectors sharing a database take the index locks alike
        rows = sorted(rows, key=_device_seq)
        if not rows:
            return {}, 0
        if not self.sqlite:
            for day in sorted(self._partition_days({r[_TC] for r in rows}, now)):
                self.ensure_partition(day)
        by_device = {}
        for r in rows:
            seqs = by_device.get(r[0])
            if seqs is None:
                by_device[r[0]] = seqs = []
            seqs.append(r[1])
        with self.db.atomic():
            with __exception_wrapper__:
                cur = self.db.cursor()
                inserted = self._insert_rows(cur, rows)
                self._insert_lookups(cur, lookups, now)
                acks = self._advance_devices(cur, by_device, now)
        self._lookups_done(lookups, now)
        return acks, inserted

    def _advance_devices(self, cur, by_device, now):
        """Inside the caller's transaction: lock the registry rows of `by_device` ({device: sorted new seqs}),
        advance each device's contiguous mark, write them back; return {device: contiguous seq}."""
        devices = sorted(by_device)
        registry = self._lock_devices(cur, devices, now)
        acks, updates = {}, []
        for dev in devices:
            c, max_seq, gaps = self._advance(dev, by_device[dev], registry[dev], now)
            acks[dev] = c
            updates.append((c, max_seq, gaps, dev))
        self._update_devices(cur, updates, now)
        return acks

    def _event_tuples(self, items, received_at):
        """Items -> tuples in EVENT_COLUMNS order, times as the database takes them."""
        conv = self._event_converter(received_at)
        return [conv(x) for x in items]

    def _event_converter(self, received_at):
        """A function: item -> its tuple in EVENT_COLUMNS order (ValueError, OverflowError on a bad value).

        Every value is checked as the database will take it: a real date and time, integers within
        64 bits, no NUL in text (PostgreSQL refuses it; SQLite would store it), so that a batch fails
        here, per event, rather than in the database.
        """
        tv = self.Event.time.db_value
        rec = tv(received_at)
        wire_time = _wire_time_sqlite if self.sqlite else _wire_time_pg
        keys = self.keys
        retention = self.retention_days
        skew = self.future_skew_s

        def convert(x):
            ev, opened, seal_error = _as_item(x)
            if opened is not None:
                if keys is None:
                    raise CollectorError("an opened personal part cannot be stored without the collector's keys")
                person_key, claim_key, personal = keys.columns(ev, opened)
            else:
                person_key = claim_key = personal = None
            sealed = wire.dumps(ev.sealed).decode("ascii") if seal_error and ev.sealed is not None else None
            clock = ev.clock
            t = wire_time(ev.time, tv)
            when = parse_time(ev.time)
            corrected, flag = clock_assessment(clock, when, received_at, retention, skew)
            tc = t if corrected == when else tv(corrected)
            row = (
                ev.device_id,
                ev.seq,
                ev.uuid,
                ev.checkpoint,
                ev.direction.value,
                t,
                clock.synced,
                clock.boot_id,
                clock.mono_ns,
                ev.source.value,
                ev.format.value,
                ev.decision.value,
                ev.reason.value,
                ev.verified,
                person_key,
                claim_key,
                personal,
                sealed,
                seal_error,
                rec,
                tc,
                flag,
                ev.refers_to.seq if ev.refers_to else None,
                ev.refers_to.uuid if ev.refers_to else None,
            )
            for v in row:
                if isinstance(v, str):
                    if "\x00" in v:
                        raise ValueError("a text value holds a NUL character")
                elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                    raise OverflowError("an integer outside 64 bits")
            return row

        return convert

    def _lookup_rows(self, items):
        """The chot_lookup rows [(lookup_key, person_key)] of items whose sealed part was opened, less
        those this process wrote today already (a person passing again costs no write; seen_at, which
        retention purges by, is renewed once a day)."""
        keys = self.keys
        if keys is None:
            return []
        out = set()
        for x in items:
            opened = _as_item(x).opened
            if opened is not None:
                out.update(keys.lookup_keys(opened))
        today = utcnow().date()
        written = self._lookups_written
        return sorted(pair for pair in out if written.get(pair[0][:16] + pair[1][:16]) != today)

    def _lookups_done(self, lookups, now):
        """After the commit: remember the look-ups written today (bounded: forgotten all at once when full)."""
        if not lookups:
            return
        written = self._lookups_written
        if len(written) > _LOOKUP_MEMORY:
            written.clear()
        day = now.date()
        for lk, pk in lookups:
            written[lk[:16] + pk[:16]] = day  # 128 bits of the pair: enough to tell them apart

    def _insert_lookups(self, cur, lookups, now):
        """INSERT the lookup rows (or renew their seen_at, which retention purges by), in the caller's transaction."""
        if not lookups:
            return
        p = self.db.param
        t = self.Lookup.seen_at.db_value(now)
        for i in range(0, len(lookups), 300):
            chunk = lookups[i : i + 300]
            cur.execute(
                'INSERT INTO "chot_lookup" ("lookup_key", "person_key", "seen_at") VALUES '
                + ", ".join([f"({p}, {p}, {p})"] * len(chunk))
                + ' ON CONFLICT ("lookup_key", "person_key") DO UPDATE SET "seen_at" = excluded."seen_at"',
                [v for lk, pk in chunk for v in (lk, pk, t)],
            )

    def find_lookup(self, lookup_key, limit=20):
        """The person keys found under a lookup key (chot_lookup), at most `limit`."""
        L = self.Lookup
        q = L.select(L.person_key).where(L.lookup_key == lookup_key).order_by(L.person_key).limit(limit)
        return [pk for (pk,) in q.tuples()]

    def _insert_rows(self, cur, rows):
        """INSERT ... ON CONFLICT DO NOTHING (both backends); return how many rows were new.

        Plain driver calls (executemany / execute_values): peewee's query builder costs more
        than the database itself at thousands of rows per second.
        """
        cols = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
        if self.sqlite:
            # a few multi-row statements rather than executemany: sqlite3 lets go of the GIL at
            # every step, and while the MQTT thread is busy getting it back costs more than the row
            per = self._sqlite_rows_per_insert(cur)
            one = "(" + ", ".join("?" * len(EVENT_COLUMNS)) + ")"
            new = 0
            for i in range(0, len(rows), per):
                chunk = rows[i : i + per]
                values = ", ".join([one] * len(chunk))
                cur.execute(
                    f'INSERT INTO "chot_event" ({cols}) VALUES {values} ON CONFLICT DO NOTHING',
                    [v for row in chunk for v in row],
                )
                new += cur.rowcount
            return new
        # one statement over one array per column: cheaper to send than a VALUES row per event
        arrays = ", ".join(f"%s::{t}[]" for t in _PG_EVENT_TYPES)
        cur.execute(
            f'INSERT INTO "chot_event" ({cols}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING',
            [list(col) for col in zip(*rows, strict=True)],
        )
        return cur.rowcount

    def _sqlite_rows_per_insert(self, cur):
        """Rows per INSERT within SQLite's limit of bound variables (32766 by default, 999 before 3.32)."""
        try:
            limit = cur.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except (AttributeError, sqlite3.Error):  # Python < 3.11
            limit = 999
        return max(1, min(1000, limit // len(EVENT_COLUMNS)))

    def _lock_devices(self, cur, devices, now):
        """Register unknown devices and read the registry rows of `devices` (sorted), locked.

        PostgreSQL: FOR UPDATE, in device order, so that collectors sharing the database
        advance a device one at a time and each sees the events the other committed (SQLite:
        the transaction is BEGIN IMMEDIATE already). Returns {device_id: (contiguous, max, gaps)}.
        """
        t = self.Device.last_seen.db_value(now)
        p = self.db.param
        tail = "" if self.sqlite else ' ORDER BY "device_id" COLLATE "C" FOR UPDATE'
        chunks = [devices[i : i + 300] for i in range(0, len(devices), 300)]  # 900 variables: any SQLite
        # every insert before any lock: a device another collector is registering waits in the
        # first phase, holding no row locks, so that the two cannot wait on each other
        for chunk in chunks:
            values = ", ".join([f"({p}, {p}, {p}, 0, 0, '[]')"] * len(chunk))
            cur.execute(
                'INSERT INTO "chot_device" ("device_id", "first_seen", "last_seen", "contiguous_seq", "max_seq",'
                f' "gaps") VALUES {values} ON CONFLICT DO NOTHING',
                [v for dev in chunk for v in (dev, t, t)],
            )
        registry = {}
        for chunk in chunks:
            marks = ", ".join([p] * len(chunk))
            cur.execute(
                f'SELECT "device_id", "contiguous_seq", "max_seq", "gaps" FROM "chot_device"'
                f' WHERE "device_id" IN ({marks}){tail}',
                chunk,
            )
            registry.update((dev, (c or 0, m or 0, gaps)) for dev, c, m, gaps in cur.fetchall())
        return registry

    def _update_devices(self, cur, updates, now):
        """Write (contiguous, max_seq, gaps JSON, device_id) of each device, with last_seen = now."""
        t = self.Device.last_seen.db_value(now)
        if self.sqlite:
            cur.executemany(
                'UPDATE "chot_device" SET "contiguous_seq" = ?, "max_seq" = ?, "gaps" = ?, "last_seen" = ?'
                ' WHERE "device_id" = ?',
                [(c, m, g, t, dev) for c, m, g, dev in updates],
            )
            return
        from psycopg2.extras import execute_values

        execute_values(
            cur,
            'UPDATE "chot_device" AS d SET "contiguous_seq" = v.c, "max_seq" = v.m, "gaps" = v.g,'
            ' "last_seen" = v.t FROM (VALUES %s) AS v(c, m, g, id, t) WHERE d."device_id" = v.id',
            [(c, m, g, dev, t) for c, m, g, dev in updates],
            template="(%s::bigint, %s::bigint, %s, %s, %s::timestamp)",
            page_size=1000,
        )

    def _advance(self, device_id, batch_seqs, registry, now):
        """The new (contiguous seq, max_seq, gaps JSON) of `device_id` after storing `batch_seqs` (sorted).

        `registry` is its locked row (contiguous, max_seq, gaps JSON). Without a gap the batch
        alone decides; with one, the stored seqs above the mark are read back.
        """
        c, max_seq, old_gaps = registry
        hi = batch_seqs[-1]
        if max_seq <= c:
            # nothing is stored above the mark but this batch: walk its seqs in memory
            above, prev = [], None
            for s in batch_seqs:
                if s > c and s != prev:
                    above.append(s)
                    prev = s
            i = 0
            for s in above:
                if s != c + 1:
                    break
                c = s
                i += 1
            max_seq = max(max_seq, hi, c)
            if max_seq <= c:
                return c, max_seq, "[]"
            return c, max_seq, json.dumps(_gap_list(c, max_seq, above[i:], False, [], now))
        c = self._walk_stored(device_id, c)
        max_seq = max(max_seq, hi, c)
        gaps = self._gaps(device_id, c, max_seq, json.loads(old_gaps or "[]"), now) if max_seq > c else []
        return c, max_seq, json.dumps(gaps)

    def _seqs_above(self, device_id, lo, hi=None, limit=1000):
        """The sorted seqs of `device_id` in (lo, hi] that are stored or quarantined, at most `limit`."""
        E, Q = self.Event, self.Quarantine
        out = []
        for M in (E, Q):
            cond = (M.device_id == device_id) & (M.seq > lo)
            if hi is not None:
                cond &= M.seq <= hi
            out += [s for (s,) in M.select(M.seq).where(cond).order_by(M.seq).limit(limit).tuples()]
        return sorted(set(out))[:limit]

    def _walk_stored(self, device_id, c):
        """Walk the stored (or quarantined) seqs of `device_id` above the mark `c` while they follow each other."""
        while True:
            seqs = self._seqs_above(device_id, c)
            advanced = 0
            for s in seqs:
                if s != c + 1:
                    break
                c = s
                advanced += 1
            if advanced < 1000 or len(seqs) < 1000:
                return c

    def _gaps(self, device_id, c, max_seq, old_gaps, now):
        """The missing seq ranges above the contiguous mark `c`, keeping when each was first seen."""
        seqs = self._seqs_above(device_id, c, max_seq, _GAP_SCAN_ROWS)
        return _gap_list(c, max_seq, seqs, len(seqs) >= _GAP_SCAN_ROWS, old_gaps, now)

    def quarantine(self, entries):
        """Record seqs whose events can never be stored: [(device_id, seq, reason, detail, raw bytes)].

        Only a hash and the size of the raw event are kept. The devices' contiguous marks pass over
        them; returns {device_id: contiguous seq} (what to ack).
        """
        import hashlib

        now = utcnow()
        rows = {}
        for dev, seq, reason, detail, raw in entries:
            if not wire.DEVICE_ID_RE.fullmatch(str(dev)) or type(seq) is not int or not 1 <= seq < 2**63:
                continue
            raw = bytes(raw or b"")
            rows[(dev, seq)] = (dev, seq, str(reason)[:64], str(detail).replace("\x00", "")[:500],
                                hashlib.sha256(raw).hexdigest(), len(raw))
        if not rows:
            return {}
        Q = self.Quarantine
        t = Q.received_at.db_value(now)
        by_device = {}
        for dev, seq in sorted(rows):
            by_device.setdefault(dev, []).append(seq)
        with self.db.atomic():
            with __exception_wrapper__:
                cur = self.db.cursor()
                p = self.db.param
                for r in rows.values():
                    cur.execute(
                        'INSERT INTO "chot_quarantine" ("device_id", "seq", "reason", "detail", "sha256", "size",'
                        f' "received_at") VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING',
                        (*r, t),
                    )
                acks = self._advance_devices(cur, by_device, now)
        log.error("quarantined %d events that can never be stored (%s): their seqs are acked, their content "
                  "is not kept; see chot_quarantine", len(rows), ", ".join(sorted({r[2] for r in rows.values()})))
        return acks

    def quarantined(self, device_id=None, limit=1000):
        """The quarantined seqs as dicts, newest first."""
        Q = self.Quarantine
        q = Q.select()
        if device_id:
            q = q.where(Q.device_id == device_id)
        return [{"device_id": r.device_id, "seq": r.seq, "reason": r.reason, "detail": r.detail,
                 "sha256": r.sha256, "size": r.size, "received_at": format_time(r.received_at)}
                for r in q.order_by(Q.received_at.desc()).limit(limit)]

    # --- the registry -------------------------------------------------------------------------

    def update_status(self, device_id, status):
        """Record a device's status message (a dict, already checked to name `device_id`)."""
        D = self.Device
        now = utcnow()
        fields = {"last_status": json.dumps(status, sort_keys=True), "status_time": now}
        if isinstance(status.get("online"), bool):
            fields["online"] = status["online"]
        if isinstance(status.get("version"), str):
            fields["version"] = status["version"][:64]
        depth = status.get("outbox_depth")
        if isinstance(depth, int) and not isinstance(depth, bool):
            fields["outbox_depth"] = depth
        if status.get("online"):
            fields["last_seen"] = now
        with self.db.atomic():
            D.insert(device_id=device_id, first_seen=now, last_seen=now).on_conflict_ignore().execute()
            D.update(**fields).where(D.device_id == device_id).execute()

    def devices(self):
        """Every registered device as a dict (fleet status)."""
        out = []
        bound = self.bindings()
        for d in self.Device.select().order_by(self.Device.device_id):
            b = bound.get(d.device_id)
            out.append(
                {
                    "device_id": d.device_id,
                    "first_seen": format_time(d.first_seen),
                    "last_seen": format_time(d.last_seen),
                    "online": d.online,
                    "version": d.version,
                    "outbox_depth": d.outbox_depth,
                    "contiguous_seq": d.contiguous_seq,
                    "max_seq": d.max_seq,
                    "gaps": json.loads(d.gaps or "[]"),
                    "status": json.loads(d.last_status) if d.last_status else None,
                    "status_time": format_time(d.status_time),
                    "checkpoint": b[0] if b else None,
                    "direction": b[1] if b else None,
                }
            )
        return out

    # --- the devices' bindings (checkpoint, direction) -----------------------------------------

    def bindings(self):
        """{device_id: (checkpoint, direction)} of every bound device."""
        B = self.Binding
        return {d: (cp, dr) for d, cp, dr in B.select(B.device_id, B.checkpoint, B.direction).tuples()}

    def replace_bindings(self, bindings, source):
        """Make the bindings exactly `bindings` ({device_id: (checkpoint, direction)}), in one transaction.

        Returns {"added": [...], "changed": [...], "removed": [...], "unchanged": n} (device ids).
        """
        B = self.Binding
        now = utcnow()
        with self.db.atomic():
            old = self.bindings()
            added = sorted(set(bindings) - set(old))
            removed = sorted(set(old) - set(bindings))
            changed = sorted(d for d in set(bindings) & set(old) if tuple(bindings[d]) != tuple(old[d]))
            if removed:
                for i in range(0, len(removed), 300):
                    B.delete().where(B.device_id.in_(removed[i : i + 300])).execute()
            for d in added + changed:
                cp, dr = bindings[d]
                B.insert(device_id=d, checkpoint=cp, direction=dr, source=str(source)[:200],
                         updated_at=now).on_conflict(conflict_target=[B.device_id],
                                                     update={B.checkpoint: cp, B.direction: dr,
                                                             B.source: str(source)[:200], B.updated_at: now}).execute()
        return {"added": added, "changed": changed, "removed": removed,
                "unchanged": len(bindings) - len(added) - len(changed)}

    def open_gaps(self, older_than_s=0.0, now=None):
        """[(device_id, from, to, since)] for gaps open at least `older_than_s` seconds."""
        now = now or utcnow()
        out = []
        D = self.Device
        for dev_id, gaps in D.select(D.device_id, D.gaps).where(D.max_seq > D.contiguous_seq).tuples():
            for g in json.loads(gaps or "[]"):
                if (now - parse_time(g["since"])).total_seconds() >= older_than_s:
                    out.append((dev_id, g["from"], g["to"], g["since"]))
        return out

    def contiguous(self, device_id):
        dev = self.Device.get_or_none(self.Device.device_id == device_id)
        return dev.contiguous_seq if dev else 0

    # --- manual (paper) declarations ----------------------------------------------------------

    def store_manual(self, make_item, device_id):
        """Store one event of the collector's own series `device_id`; `make_item(seq)` builds it (an Item).

        The seq is one above the highest stored or registered; on PostgreSQL an advisory lock
        per series keeps two collectors from taking the same seq. Returns the item.
        """
        with self._manual_lock:
            for _attempt in range(5):
                with self.db.atomic():
                    if not self.sqlite:
                        self.db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"chot manual {device_id}"])
                    E, D = self.Event, self.Device
                    last = E.select(fn.MAX(E.seq)).where(E.device_id == device_id).scalar() or 0
                    mark = D.select(D.max_seq).where(D.device_id == device_id).scalar() or 0
                    item = _as_item(make_item(max(last, mark) + 1))
                    acks, inserted = self.store_batch_counted([item])
                if inserted == 1:
                    return item
                _time.sleep(0.05)  # another collector took that seq: try the next one
        raise CollectorError("could not record the manual event: the database stayed busy; try again")

    # --- the audit log ------------------------------------------------------------------------

    def audit(self, actor, action, case_id, person_key=None, detail=None, rows=0):
        """Write one row of the audit log (every read of personal data writes one)."""
        if not case_id or not str(case_id).strip():
            raise CollectorError("a case id is required to read personal data")
        self.Audit.create(time=utcnow(), actor=str(actor)[:200], action=str(action)[:32],
                          case_id=str(case_id).strip()[:200], person_key=person_key,
                          detail=json.dumps(detail or {}, sort_keys=True, ensure_ascii=False), rows=int(rows))

    def audit_log(self, case_id=None, limit=100):
        """The newest audit rows (newest first), optionally of one case."""
        A = self.Audit
        q = A.select().order_by(A.time.desc(), A.id.desc()).limit(int(limit))
        if case_id:
            q = q.where(A.case_id == case_id)
        return [
            {"time": format_time(a.time), "actor": a.actor, "action": a.action, "case": a.case_id,
             "person_key": a.person_key, "detail": json.loads(a.detail), "rows": a.rows}
            for a in q
        ]

    # --- published config and lists -----------------------------------------------------------

    def next_publish_version(self, name):
        """A version number for a signed message, growing per `name` (never below the Unix time)."""
        P = self.Published
        with self.db.atomic():
            row = P.get_or_none(P.name == name)
            version = max((row.version + 1) if row else 1, int(_time.time()))
            if row:
                P.update(version=version, published_at=utcnow()).where(P.name == name).execute()
            else:
                P.create(name=name, version=version, published_at=utcnow())
        return version

    def event_count(self):
        return self.Event.select().count()
