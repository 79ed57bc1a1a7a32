"""The collector's database: events, the device registry and published versions (peewee).

SQLite by default (one file, WAL) and PostgreSQL for production, from one URL:
`sqlite:///relative.db`, `sqlite:////absolute/path.db` or `postgresql://user:pw@host:5432/db`.
`Storage(url)` opens it, `migrate()` creates or upgrades the schema (idempotent), and
`store_batch(events)` stores wire events in one transaction: `(device_id, seq)` is unique, a
duplicate is ignored (INSERT ... ON CONFLICT DO NOTHING on both backends), and each device's
contiguous seq (every seq from 1 up to it is stored) is advanced even when events arrive out
of order. Times are stored as naive UTC datetimes.
"""

import json
import logging
import re
import sqlite3
import threading
import time as _time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from peewee import (
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseError,
    DateTimeField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
    __exception_wrapper__,
    fn,
)

from chot.errors import CollectorError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_GAPS = 100  # gaps kept per device in the registry (the rest are summarised)
_GAP_SCAN_ROWS = 20000  # rows scanned above the contiguous mark to list gaps


# --- time helpers -----------------------------------------------------------------------------


def parse_time(text):
    """Parse an ISO 8601 time (`...Z`, `+00:00` or naive = UTC) into a naive UTC datetime."""
    if isinstance(text, datetime):
        return to_naive_utc(text)
    s = str(text).strip()
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


# --- models, one set per database -------------------------------------------------------------


def _make_models(db, sqlite):
    TimeField = _SqliteTime if sqlite else _PgTime

    class Base(Model):
        class Meta:
            database = db

    class Event(Base):
        id = BigAutoField()
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
        subject_key = CharField(max_length=128, null=True)
        subject = TextField()  # JSON summary, never an ID number in clear
        received_at = TimeField()

        class Meta:
            table_name = "chot_event"
            indexes = (
                (("device_id", "seq"), True),
                (("subject_key", "time"), False),
                (("checkpoint", "time"), False),
                (("time",), False),
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

    return Event, Device, Published, SchemaVersion


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
    "subject_key",
    "subject",
    "received_at",
)


_PG_EVENT_TYPES = (  # the PostgreSQL type of each of EVENT_COLUMNS, for the batch INSERT
    "text", "bigint", "text", "text", "text", "timestamp", "boolean", "text",
    "bigint", "text", "text", "text", "text", "text", "text", "timestamp",
)  # fmt: skip
_SUBJECT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def row_to_event(row):
    """A stored row (a dict of EVENT_COLUMNS) -> the wire event (v1)."""
    return {
        "v": 1,
        "device_id": row["device_id"],
        "seq": int(row["seq"]),
        "uuid": row["uuid"],
        "checkpoint": row["checkpoint"],
        "direction": row["direction"],
        "time": format_time(row["time"]),
        "clock": {"synced": bool(row["clock_synced"]), "boot_id": row["boot_id"], "mono_ns": int(row["mono_ns"])},
        "source": row["source"],
        "format": row["format"],
        "decision": row["decision"],
        "reason": row["reason"],
        "subject": json.loads(row["subject"]) if isinstance(row["subject"], str) else row["subject"],
    }


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


# --- the storage ------------------------------------------------------------------------------


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
        pragmas = {
            "journal_mode": "wal",
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
    """The collector's database. Thread-safe: peewee keeps one connection per thread."""

    def __init__(self, url, synchronous="FULL", migrate=True):
        self.url = url
        self.db, self.sqlite = open_database(url, synchronous)
        self.Event, self.Device, self.Published, self.SchemaVersion = _make_models(self.db, self.sqlite)
        self._manual_lock = threading.Lock()
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
        """A context manager giving this thread its own connection, closed at the end (HTTP threads)."""
        return self.db.connection_context()

    # --- schema -------------------------------------------------------------------------------

    def schema_version(self):
        if not self.SchemaVersion.table_exists():
            return 0
        return self.SchemaVersion.select(fn.MAX(self.SchemaVersion.version)).scalar() or 0

    def migrate(self):
        """Create or upgrade the schema to SCHEMA_VERSION; safe to run again. Returns the version."""
        with self.db.atomic():
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise CollectorError(
                    f"the database schema is version {current}, newer than this collector ({SCHEMA_VERSION}):"
                    " upgrade chot"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                getattr(self, f"_migrate_to_{version}")()
                self.SchemaVersion.create(version=version, applied_at=utcnow())
                log.info("database schema migrated to version %d", version)
        return SCHEMA_VERSION

    def _migrate_to_1(self):
        self.db.create_tables([self.Event, self.Device, self.Published, self.SchemaVersion], safe=True)

    # --- storing ------------------------------------------------------------------------------

    def store_batch(self, events):
        """Store validated wire events in one transaction; return {device_id: contiguous seq}."""
        return self.store_batch_counted(events)[0]

    def store_batch_counted(self, events):
        """Like `store_batch`; returns ({device_id: contiguous seq}, number of new rows).

        Per batch: one INSERT of the events (ON CONFLICT DO NOTHING), one INSERT of unknown
        devices into the registry, one SELECT of the batch's registry rows (FOR UPDATE on
        PostgreSQL, in device order) and one UPDATE of them. A device whose registry shows no
        gap (max_seq <= contiguous_seq) advances from the batch's own seqs in memory: every
        event stored above its mark was stored by a committed batch that raised max_seq, so the
        batch's seqs are all there is above it. A device with a gap re-reads its stored seqs.
        """
        now = utcnow()
        # (device_id, seq) order: collectors sharing a database take the index locks alike
        rows = sorted(self._event_tuples(events, now), key=_device_seq)
        if not rows:
            return {}, 0
        by_device = {}
        for r in rows:
            seqs = by_device.get(r[0])
            if seqs is None:
                by_device[r[0]] = seqs = []
            seqs.append(r[1])
        devices = sorted(by_device)
        with self.db.atomic():
            with __exception_wrapper__:
                cur = self.db.cursor()
                inserted = self._insert_rows(cur, rows)
                registry = self._lock_devices(cur, devices, now)
                acks, updates = {}, []
                for dev in devices:
                    c, max_seq, gaps = self._advance(dev, by_device[dev], registry[dev], now)
                    acks[dev] = c
                    updates.append((c, max_seq, gaps, dev))
                self._update_devices(cur, updates, now)
        return acks, inserted

    def _event_tuples(self, events, received_at):
        """Wire events -> tuples in EVENT_COLUMNS order, times as the database takes them."""
        tv = self.Event.time.db_value
        rec = tv(received_at)
        wire_time = _wire_time_sqlite if self.sqlite else _wire_time_pg
        encode = _SUBJECT_JSON.encode
        out = []
        for ev in events:
            subject = ev.get("subject") or {}
            key = subject.get("key") if isinstance(subject, dict) else None
            clock = ev["clock"]
            out.append((
                ev["device_id"],
                ev["seq"],
                ev["uuid"],
                ev["checkpoint"],
                ev["direction"],
                wire_time(ev["time"], tv),
                bool(clock["synced"]),
                clock["boot_id"],
                clock["mono_ns"],
                ev["source"],
                ev["format"],
                ev["decision"],
                ev["reason"],
                key if isinstance(key, str) and key else None,
                encode(subject),
                rec,
            ))
        return out

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

    def _walk_stored(self, device_id, c):
        """Walk the stored seqs of `device_id` above the mark `c` while they follow each other."""
        E = self.Event
        while True:
            seqs = [
                s
                for (s,) in E.select(E.seq)
                .where((E.device_id == device_id) & (E.seq > c))
                .order_by(E.seq)
                .limit(1000)
                .tuples()
            ]
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
        E = self.Event
        seqs = [
            s
            for (s,) in E.select(E.seq)
            .where((E.device_id == device_id) & (E.seq > c) & (E.seq <= max_seq))
            .order_by(E.seq)
            .limit(_GAP_SCAN_ROWS)
            .tuples()
        ]
        return _gap_list(c, max_seq, seqs, len(seqs) >= _GAP_SCAN_ROWS, old_gaps, now)

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
        for d in self.Device.select().order_by(self.Device.device_id):
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
                }
            )
        return out

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

    def store_manual(self, make_event, device_id):
        """Store one event of the manual series `device_id`; `make_event(seq)` builds it. Returns it."""
        with self._manual_lock:
            for _attempt in range(5):
                with self.db.atomic():
                    E = self.Event
                    last = E.select(fn.MAX(E.seq)).where(E.device_id == device_id).scalar() or 0
                    ev = make_event(last + 1)
                    acks, inserted = self.store_batch_counted([ev])
                if inserted == 1:
                    return ev
                _time.sleep(0.05)  # another collector took that seq: try the next one
        raise CollectorError("could not record the manual event: the database stayed busy; try again")

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
