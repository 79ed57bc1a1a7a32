"""The outbox: every decision as a durable event, until the collector has acknowledged it.

peewee on SQLite in WAL mode. `append()` gives the event its `seq` (a per-device number that
only grows: the highest one ever given is kept in a one-row table updated in the same
transaction, so neither a crash nor the deletion of delivered rows can make it go back), the
device id and the event version (and a UUID unless the caller gave one: the daemon does, since
the sealed part is bound to it), checks it against the wire contract (`chot.wire.Event`, v2),
stores its JSON exactly as it is published, and COMMITS before it returns: the daemon gives
feedback only after that, so there is no PASS without a record.

The database and its -wal and -shm files are created 0600 whatever the process umask (and
tightened to 0600 when found looser): they hold sealed personal parts and the terminal's
movements. SQLite gives the -wal and -shm files it creates later the database's own mode.
`PRAGMA secure_delete` is on: the pages and cells of deleted (purged, evicted) events are
overwritten with zeros, so a copied SD card does not give back events past their retention.

The MQTT link reads `pending_raw()` (the stored JSON) in seq order, and `mark_delivered(upto)` when the collector's
ack covers `upto` (it raises `delivered_upto` in the state row and never rewrites the events, so
an ack costs a page or two of WAL, not the size of the backlog it covers); `purge()` deletes
delivered events recorded longer ago than the retention period.

The byte cap counts what the outbox takes on disk: the database's used pages, the write-ahead
log (-wal) and its index (-shm). The WAL is kept under `wal_limit` (an eighth of `max_bytes`, at
most 4 MiB): every write that finds it past half of that first checkpoints it
(`PRAGMA wal_checkpoint(TRUNCATE)`, which empties the file), so do deliveries and purges, and
deletions run in chunks small enough to fit. The cap reserves the whole `wal_limit` (or the
WAL's real size when it is larger, e.g. while another reader holds it) plus the growth of one
more append, so an outbox whose `max_bytes` is the size of its disk stops with `OutboxFull`
before the disk is full. At the cap (`max_rows` events or `max_bytes`) `append()` first gives up
delivered events still under retention, oldest first (and checkpoints), so a terminal whose
events are delivered recovers by itself; when only undelivered events remain it raises
`OutboxFull`: the terminal fails closed and never drops an event silently. The sizes are read
only when a pessimistic estimate (each append since the last reading counted as its body plus
`GROWTH_PAGES` pages) comes near `max_bytes`, so the cap is never overshot. Disk full, read-only
or unopenable files raise `OutboxError` with what to do.

peewee defines the schema and serves the other methods; `append()`, the frame loop's hot
path, runs two prepared statements on the same sqlite3 connection in one `BEGIN IMMEDIATE`
transaction (sqlite3 caches the prepared statements), without building SQL per event.

One connection, guarded by a lock: the frame loop appends while the MQTT thread reads and
marks. `wait_for(after_seq, timeout)` lets that thread sleep until there is something new.

The terminal's time floor (device/timefloor.py) is kept here too, in the table `time_floor`:
`event_floor` is the latest event time this outbox has recorded (its last event's time, or the
row "event" when the clock went back, or before delivered events are deleted: an append whose
time is earlier than the floor writes the floor in the same transaction, so the floor survives
a crash, a purge and a clock set back without costing the ordinary append anything), and one row
per kind of signed update (`floor_rows`, `save_floor`): the version, issue time and expiry of
the newest one applied, which a wiped kept-updates file does not take away.
"""

import json
import logging
import os
import sqlite3
import threading
import time
import uuid as uuidlib
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import peewee
from peewee import BigIntegerField, CharField, DoubleField, IntegerField, Model, TextField

from chot import wire
from chot.errors import OutboxError, OutboxFull
from device.clock import clock_quality, utc_now_iso

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SYNCHRONOUS = ("FULL", "NORMAL")
EVICT_CHUNK = 1000  # delivered events given up at once when the cap is reached (at most)
PURGE_CHUNK = 5000  # at most; both are cut down so that one deletion fits in half the WAL bound
WAL_LIMIT_MAX = 4 * MiB
INSERT_EVENT = "INSERT INTO event (seq, time, body, created, delivered_at) VALUES (?, ?, ?, ?, NULL)"
UPDATE_LAST_SEQ = "UPDATE outbox_state SET last_seq = ? WHERE id = 1"
UPSERT_FLOOR = ("INSERT INTO time_floor (name, time, version, expires, seq) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET time = excluded.time, version = excluded.version, "
                "expires = excluded.expires, seq = excluded.seq")
# An upper bound of the pages one append can add besides its body's bytes (the b-tree splitting
# up to the root); the byte cap is re-read from SQLite only when this estimate gets near it.
GROWTH_PAGES = 16
MAX_EVENT_BYTES = 12 * 1024  # the largest event (a sealed part of chot.personal.MAX_SEALED_CHARS and the rest)


def _models(db):
    """The outbox tables, bound to one database (each Outbox has its own)."""

    class Base(Model):
        class Meta:
            database = db

    class Event(Base):
        seq = BigIntegerField(primary_key=True)
        time = CharField()  # the event's own time (ISO, UTC)
        body = TextField()  # the whole event as JSON, exactly as published
        created = DoubleField()  # epoch seconds when appended
        delivered_at = DoubleField(null=True)  # set by older versions only: delivery is State.delivered_upto

        class Meta:
            table_name = "event"

    class State(Base):
        id = IntegerField(primary_key=True)
        last_seq = BigIntegerField()  # the highest seq ever given; never goes back
        delivered_upto = BigIntegerField()  # every seq <= this is delivered
        device_id = CharField(null=True)

        class Meta:
            table_name = "outbox_state"

    class Floor(Base):
        name = CharField(primary_key=True)  # "event", or a kind of signed update (config, denylist, trust)
        time = CharField()  # ISO UTC: the event floor, or the update's issue time
        version = BigIntegerField(null=True)  # the update's version
        expires = CharField(null=True)  # the update's expiry
        seq = BigIntegerField(null=True)  # "event": events up to this seq are covered by `time`

        class Meta:
            table_name = "time_floor"

    return Event, State, Floor


def _when(text):
    """An ISO UTC time of an event or update as an aware datetime (None when it is not one)."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


PRIVATE_MODE = 0o600
SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _create_private(path):
    """Create the database file 0600 when it does not exist (SQLite gives -wal and -shm its mode)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_MODE)  # whatever the umask took away (or left)
    finally:
        os.close(fd)


def _tighten(path):
    """Make the database and its side files 0600 (files of an older outbox may be looser)."""
    for suffix in SIDE_FILES:
        p = path + suffix
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, PRIVATE_MODE)
        except FileNotFoundError:
            continue


def _hint(path, exc):
    """An OutboxError for a database failure, saying what to do."""
    texts = []
    e = exc
    while e is not None and len(texts) < 4:
        texts.append(str(e).lower())
        e = e.__cause__ or e.__context__
    text = " | ".join(texts)
    where = Path(path).parent
    if "disk is full" in text or "no space" in text:
        msg = (
            f"the disk holding the outbox {path} is full ({exc}): free disk space or move outbox.path to a "
            "larger disk; the terminal fails closed until an event can be recorded"
        )
    elif "readonly" in text or "read-only" in text:
        msg = (
            f"the outbox {path} is read-only ({exc}): make the file and {where} writable by the user running "
            "chot, and check that the file system is mounted read-write"
        )
    elif any(t in text for t in ("unable to open", "permission denied", "not a directory", "no such file", "exists")):
        msg = (
            f"cannot open the outbox {path} ({exc}): create {where} and make it writable by the user running "
            "chot (systemd: StateDirectory=chot), or set outbox.path"
        )
    elif "locked" in text or "busy" in text:
        msg = f"the outbox {path} is locked by another process ({exc}): run only one terminal per outbox file"
    elif "not a database" in text or "malformed" in text:
        msg = (
            f"the outbox {path} is damaged or not an outbox ({exc}): stop the terminal, move the file aside "
            "(keep it: it may hold undelivered events) and start again"
        )
    elif "i/o error" in text:
        msg = f"I/O error on the outbox {path} ({exc}): the storage may be failing; check it and the kernel log"
    else:
        msg = f"the outbox {path} failed: {exc}"
    return OutboxError(msg)


class Outbox:
    """The durable queue of a terminal's events; see the module doc."""

    def __init__(
        self,
        path,
        max_rows=1_000_000,
        max_bytes=512 * MiB,
        retention_days=3.0,
        synchronous="FULL",
        device_id=None,
        defaults=None,
        busy_timeout_s=5.0,
    ):
        if synchronous not in SYNCHRONOUS:
            raise OutboxError(f"outbox.synchronous = {synchronous!r}: allowed {', '.join(SYNCHRONOUS)}")
        if device_id is not None and not wire.DEVICE_ID_RE.fullmatch(device_id):
            raise OutboxError(f"device id {device_id!r} is not valid: set device.id (letters, digits, _ . -)")
        self.path = str(path)
        self.max_rows = int(max_rows)
        self.max_bytes = int(max_bytes)
        self.retention_days = float(retention_days)
        self.synchronous = synchronous
        self.device_id = device_id
        self.defaults = dict(defaults or {})  # e.g. checkpoint and direction of this terminal
        self._lock = threading.RLock()
        self._new = threading.Condition(self._lock)
        self._closed = False
        self._room = 0  # bytes surely free under max_bytes (a lower bound); 0: ask SQLite
        self.wal_limit = max(64 * 1024, min(WAL_LIMIT_MAX, self.max_bytes // 8))
        self._wal_path = self.path + "-wal"
        self._shm_path = self.path + "-shm"
        self.checkpoints = 0
        self._time_floor = None
        self._event_floor = self._event_floor_saved = None
        try:
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
        except OSError as exc:
            raise _hint(self.path, exc) from exc
        self._db = peewee.SqliteDatabase(
            self.path,
            pragmas={
                "journal_mode": "wal",
                "synchronous": synchronous,
                "journal_size_limit": max(64 * 1024, min(WAL_LIMIT_MAX, int(max_bytes) // 8)),
                "busy_timeout": int(busy_timeout_s * 1000),
                "secure_delete": 1,  # deleted events are overwritten, not left in free pages
            },
            lock_type="IMMEDIATE",
            thread_safe=False,  # one connection shared by the threads, serialised by self._lock
            check_same_thread=False,
            timeout=busy_timeout_s,
        )
        self.Event, self.State, self.Floor = _models(self._db)
        with self._guard():
            self._db.connect()
            mode = self._db.execute_sql("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                raise OutboxError(f"the outbox {self.path} could not switch to WAL mode (got {mode}): use a local disk")
            with self._db.atomic():
                self._db.create_tables([self.Event, self.State, self.Floor])
                self.State.insert(
                    id=1, last_seq=0, delivered_upto=0, device_id=device_id
                ).on_conflict_ignore().execute()
            self._page_size = self._pragma("page_size")
            # SQLite checkpoints by itself too once the WAL holds this many pages (a backstop)
            self._db.execute_sql(f"PRAGMA wal_autocheckpoint = {max(4, self.wal_limit // 2 // self._page_size)}")
            _tighten(self.path)
            state = self.State.get_by_id(1)
            top = self.Event.select(peewee.fn.MAX(self.Event.seq)).scalar() or 0
            self._last_seq = max(state.last_seq, top)
            self._delivered_upto = state.delivered_upto
            self._rows = self.Event.select().count()
            self._load_event_floor()
            if device_id and state.device_id and state.device_id != device_id:
                log.warning(
                    "the outbox %s was written by device %s and is now used by %s: its %d stored events keep "
                    "their device id",
                    self.path,
                    state.device_id,
                    device_id,
                    self._rows,
                )
                self.State.update(device_id=device_id).where(self.State.id == 1).execute()
        log.info(
            "outbox %s: last seq %d, delivered up to %d, %d events kept (synchronous=%s)",
            self.path,
            self._last_seq,
            self._delivered_upto,
            self._rows,
            synchronous,
        )

    @classmethod
    def from_config(cls, cfg):
        """An Outbox from the whole terminal config (`[outbox]` and `[device]`)."""
        o, d = cfg.outbox, cfg.device
        return cls(
            o.path,
            max_rows=o.max_rows,
            max_bytes=o.max_bytes,
            retention_days=o.retention_days,
            synchronous=o.synchronous,
            device_id=d.id,
            defaults={"checkpoint": d.checkpoint, "direction": d.direction},
        )

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _guard(self):
        """Turn database failures into OutboxError with a hint."""
        try:
            yield
        except OutboxError:
            raise
        except (peewee.PeeweeException, sqlite3.Error, OSError) as exc:
            raise _hint(self.path, exc) from exc

    def _check_open(self):
        if self._closed:
            raise OutboxError(f"the outbox {self.path} is closed")

    def _pragma(self, name):
        return self._db.connection().execute(f"PRAGMA {name}").fetchone()[0]

    @staticmethod
    def _file_size(path):
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0

    def _wal_bytes(self):
        return self._file_size(self._wal_path)

    def _used_bytes(self):
        """Bytes of the database's pages in use (free pages are reused, so this is what grows)."""
        return (self._pragma("page_count") - self._pragma("freelist_count")) * self._page_size

    def _append_reserve(self, body_bytes=MAX_EVENT_BYTES):
        """What one more append may add: its body and the pages it touches (db pages and WAL frames alike)."""
        return body_bytes + body_bytes // 256 + GROWTH_PAGES * self._page_size

    def _counted_bytes(self):
        """What the cap counts: used pages + the WAL (its bound, or its size when larger) + the -shm file."""
        counted = self._used_bytes() + max(self._wal_bytes(), self.wal_limit) + self._file_size(self._shm_path)
        self._room = self.max_bytes - counted - self._append_reserve()
        return counted

    def checkpoint(self):
        """Copy the WAL into the database and truncate it to 0 bytes; True when it completed."""
        with self._lock:
            self._check_open()
            with self._guard():
                return self._checkpoint()

    def _checkpoint(self):
        conn = self._db.connection()
        if conn.in_transaction:  # inside a caller's transaction (bulk fills): after its commit
            return False
        busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.checkpoints += 1
        self._room = 0  # sizes changed: read them again
        if busy:
            log.debug("outbox checkpoint of %s incomplete: another connection reads it", self.path)
        return not busy

    def _bound_wal(self):
        """Before a write: checkpoint when the WAL is past half its bound, so it never exceeds the bound."""
        if self._wal_bytes() >= self.wal_limit // 2:
            self._checkpoint()

    def _chunk_rows(self, most):
        """How many events one deletion may cover so that its WAL frames fit in half the WAL bound."""
        if not self._rows:
            return most
        per_row = max(64, self._used_bytes() // max(1, self._rows))
        return max(1, min(most, (self.wal_limit // 2) // (2 * per_row + 64)))

    def _delete_delivered(self, condition, most):
        """Delete one chunk of delivered events matching `condition`, oldest first; returns how many."""
        E = self.Event
        self._bound_wal()
        chunk = E.select(E.seq).where(condition & (E.seq <= self._delivered_upto)).order_by(E.seq)
        chunk = chunk.limit(self._chunk_rows(most))
        with self._db.atomic():
            self._save_event_floor()
            n = E.delete().where(E.seq.in_(chunk)).execute()
        self._rows -= n
        return n

    def _evict_delivered(self, reason):
        """At the cap: give up the oldest delivered events before their retention ends, then checkpoint."""
        n = self._delete_delivered(self.Event.seq > 0, EVICT_CHUNK)
        if n:
            self._checkpoint()
            log.warning("outbox at its cap (%s): %d delivered events deleted before their retention ended", reason, n)
        return n

    def _full_reason(self, body_bytes=MAX_EVENT_BYTES):
        """None when there is room for an event of `body_bytes`; else why not (frees delivered events first)."""
        checkpointed = False
        while True:
            if self._rows >= self.max_rows:
                reason = f"{self._rows} events kept, outbox.max_rows = {self.max_rows}"
            elif self._room > body_bytes:  # far from the byte cap: no need to ask SQLite
                return None
            else:
                counted = self._counted_bytes()
                if counted + self._append_reserve(body_bytes) < self.max_bytes:
                    return None
                if not checkpointed and self._wal_bytes() > self.wal_limit:
                    checkpointed = True  # a WAL grown past its bound (a reader held it): empty it first
                    self._checkpoint()
                    continue
                reason = (f"{counted} bytes counted (database pages, WAL and its index), "
                          f"outbox.max_bytes = {self.max_bytes}")
            if not self._evict_delivered(reason):
                return reason

    # -- the time floor ----------------------------------------------------------------------

    def _load_event_floor(self):
        E, F = self.Event, self.Floor
        row = F.get_or_none(F.name == "event")
        floor = _when(row.time) if row is not None else None
        covered = (row.seq or 0) if row is not None else 0
        last = E.select(E.seq, E.time).order_by(E.seq.desc()).limit(1).first()
        if last is not None and last.seq > covered:
            t = _when(last.time)
            if t is not None and (floor is None or t > floor):
                floor = t
        self._event_floor = floor
        self._event_floor_saved = _when(row.time) if row is not None else None

    @property
    def time_floor(self):
        """The terminal's TimeFloor (device/timefloor.py) kept in this outbox, shared by its users."""
        with self._lock:
            if self._time_floor is None:
                from device.timefloor import TimeFloor

                self._time_floor = TimeFloor(self)
            return self._time_floor

    @property
    def event_floor(self):
        """The latest event time recorded here (an aware datetime), or None before the first event."""
        with self._lock:
            return self._event_floor

    def _save_event_floor(self):
        """Write the event floor into its row (before deleting events: the last one may go)."""
        if self._event_floor is not None and self._event_floor != self._event_floor_saved:
            self._db.connection().execute(UPSERT_FLOOR, ("event", _iso(self._event_floor), None, None,
                                                         self._last_seq))
            self._event_floor_saved = self._event_floor

    def reset_event_floor(self, when):
        """Lower the event floor to `when` (a datetime): the collector's signed time says the events'
        times came from a clock that ran ahead. Events recorded so far no longer count."""
        with self._lock:
            self._check_open()
            with self._guard(), self._db.atomic():
                self._db.connection().execute(UPSERT_FLOOR, ("event", _iso(when), None, None, self._last_seq))
            self._event_floor = self._event_floor_saved = when

    def floor_rows(self):
        """{kind: {"version", "issued", "expires"}} of the newest signed update applied of each kind."""
        F = self.Floor
        with self._lock:
            self._check_open()
            with self._guard():
                rows = list(F.select().where(F.name != "event"))
        return {r.name: {"version": r.version, "issued": r.time, "expires": r.expires} for r in rows}

    def save_floor(self, kind, version, issued, expires):
        """Record the newest signed update applied of `kind` (committed on return)."""
        if kind == "event":
            raise ValueError("'event' is the event floor's own row")
        with self._lock:
            self._check_open()
            with self._guard(), self._db.atomic():
                self._db.connection().execute(UPSERT_FLOOR, (kind, issued, int(version), expires, None))

    # -- writing -----------------------------------------------------------------------------

    def append(self, fields):
        """Store one event durably and return it (a dict with seq, uuid, device_id, v).

        `fields` gives checkpoint, direction, time, clock, source, format, decision, reason,
        verified and sealed, and may give the uuid; checkpoint and direction default to this
        terminal's, time and clock to now, uuid to a new one. Raises OutboxFull at the cap and
        OutboxError when the event cannot be stored (or is not a valid event).
        """
        with self._lock:
            self._check_open()
            event = dict(self.defaults)
            event.update(fields)
            if "time" not in event:
                event["time"] = utc_now_iso()
            if "clock" not in event:
                event["clock"] = clock_quality()
            if not event.get("uuid"):
                event["uuid"] = str(uuidlib.uuid4())
            event.setdefault("verified", False)
            event.setdefault("sealed", None)
            seq = self._last_seq + 1
            event.update(v=wire.EVENT_VERSION, device_id=self.device_id, seq=seq)
            try:
                typed = wire.event_from_dict(event)
            except (wire.WireError, TypeError, ValueError, msgspec.EncodeError) as exc:
                raise OutboxError(f"event not stored, it is not valid: {exc}") from None
            raw = wire.dumps(typed)  # exactly the bytes that are published
            with self._guard():
                reason = self._full_reason(len(raw))
            if reason:
                raise OutboxFull(
                    f"the outbox {self.path} is full ({reason}, {self._depth()} not yet acknowledged): "
                    "events are freed only after the collector acknowledges them, so reconnect the uplink; "
                    "or raise outbox.max_rows / outbox.max_bytes and free disk space. "
                    "The terminal fails closed until then."
                )
            at = _when(event["time"])
            # The clock went back: this event's time is below the floor, which the row must then keep.
            floor_row = None
            if at is not None and self._event_floor is not None and at < self._event_floor:
                floor_row = ("event", _iso(self._event_floor), None, None, seq)
            with self._guard():
                self._bound_wal()
                self._insert(seq, event["time"], raw.decode("utf-8"), floor_row)
            if floor_row is not None:
                self._event_floor_saved = self._event_floor
            elif at is not None:
                self._event_floor = at
            self._room -= self._append_reserve(len(raw))
            self._last_seq = seq
            self._rows += 1
            self._new.notify_all()
            return wire.to_dict(typed)

    def _insert(self, seq, when, body, floor_row=None):
        """Insert the event and raise last_seq in one transaction, committed (durable) on return.

        Inside a transaction the caller opened (e.g. `with outbox._lock, outbox._db.atomic():` to
        fill many events at once) it is a savepoint, and the caller's commit makes it durable.
        """
        conn = self._db.connection()  # peewee's sqlite3 connection (isolation_level None: we say BEGIN)
        nested = conn.in_transaction
        conn.execute("SAVEPOINT outbox_append" if nested else "BEGIN IMMEDIATE")
        try:
            conn.execute(INSERT_EVENT, (seq, when, body, time.time()))
            if floor_row is not None:
                conn.execute(UPSERT_FLOOR, floor_row)
            if conn.execute(UPDATE_LAST_SEQ, (seq,)).rowcount != 1:
                raise OutboxError(
                    f"the outbox {self.path} has lost its state row: stop the terminal, move the file aside "
                    "(keep it: it holds undelivered events) and start again"
                )
            conn.execute("RELEASE outbox_append" if nested else "COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    if nested:
                        conn.execute("ROLLBACK TO outbox_append")
                        conn.execute("RELEASE outbox_append")
                    else:
                        conn.execute("ROLLBACK")
                except sqlite3.Error as exc:  # the original failure is the one to report
                    log.warning("rolling back a failed append to %s: %s", self.path, exc)
            raise

    def has_room(self):
        """True when the next append should find room (cheap; the daemon asks before deciding)."""
        with self._lock:
            if self._closed:
                return False
            try:
                if self._rows < self.max_rows and self._counted_bytes() + self._append_reserve() < self.max_bytes:
                    return True
                return self._rows > self._depth()  # delivered events can still be given up
            except (peewee.PeeweeException, sqlite3.Error) as exc:
                log.error("outbox check failed: %s", _hint(self.path, exc))
                return False

    def mark_delivered(self, upto_seq):
        """The collector has every event up to `upto_seq`: mark them delivered; returns how many."""
        upto_seq = int(upto_seq)
        with self._lock:
            self._check_open()
            if upto_seq <= self._delivered_upto:
                return 0
            E, S = self.Event, self.State
            with self._guard():
                self._bound_wal()
                with self._db.atomic():
                    if upto_seq > self._last_seq:
                        log.warning(
                            "the collector acknowledged seq %d but this outbox only reached %d (was it replaced?): "
                            "continuing after %d so that no seq is used twice",
                            upto_seq,
                            self._last_seq,
                            upto_seq,
                        )
                        S.update(last_seq=upto_seq).where(S.id == 1).execute()
                    n = E.select().where((E.seq > self._delivered_upto) & (E.seq <= upto_seq)).count()
                    S.update(delivered_upto=upto_seq).where(S.id == 1).execute()
                if self._wal_bytes() >= self.wal_limit // 4:
                    self._checkpoint()
            self._last_seq = max(self._last_seq, upto_seq)
            self._delivered_upto = upto_seq
            return n

    def skip_to(self, seq):
        """Give the next event a seq above `seq` (the collector holds seqs up to it that this outbox never
        gave: the file was replaced). Marks nothing delivered; returns the new last seq."""
        seq = int(seq)
        with self._lock:
            self._check_open()
            if seq <= self._last_seq:
                return self._last_seq
            log.warning("the collector holds seqs up to %d, this outbox only reached %d (was it replaced?): "
                        "new events continue after %d so that no seq is used twice", seq, self._last_seq, seq)
            with self._guard(), self._db.atomic():
                self.State.update(last_seq=seq).where(self.State.id == 1).execute()
            self._last_seq = seq
            return seq

    def purge(self, now=None):
        """Delete delivered events recorded longer ago than the retention period; returns how many.

        Age counts from when the event was recorded (`created`), so that nothing older than the
        retention rests on the terminal once the collector has it, however late it was delivered.
        """
        now = time.time() if now is None else (now.timestamp() if hasattr(now, "timestamp") else float(now))
        cutoff = now - self.retention_days * 86400.0
        E = self.Event
        total = 0
        old = E.created < cutoff
        while True:
            with self._lock:
                self._check_open()
                with self._guard():
                    n = self._delete_delivered(old, PURGE_CHUNK)
            total += n
            if not n:
                break
        if total:
            with self._lock:
                self._check_open()
                with self._guard():
                    self._checkpoint()
        if total:
            log.info("outbox: %d delivered events purged", total)
        return total

    # -- reading -----------------------------------------------------------------------------

    def pending(self, after_seq=0, limit=100):
        """Undelivered events with seq > after_seq, in seq order, at most `limit` (as dicts)."""
        return [json.loads(body) for _seq, body in self.pending_raw(after_seq, limit)]

    def pending_raw(self, after_seq=0, limit=100):
        """[(seq, JSON bytes as stored and published)] of the undelivered events after `after_seq`."""
        E = self.Event
        with self._lock:
            self._check_open()
            start = max(int(after_seq), self._delivered_upto)
            with self._guard():
                rows = E.select(E.seq, E.body).where(E.seq > start).order_by(E.seq).limit(int(limit)).tuples()
                return [(seq, body.encode("utf-8")) for seq, body in rows]

    def wait_for(self, after_seq, timeout=None):
        """Block until an event with seq > after_seq exists (or timeout); True when one does."""
        with self._new:
            return self._new.wait_for(lambda: self._closed or self._last_seq > after_seq, timeout) and not self._closed

    def _depth(self):
        E = self.Event
        return E.select().where(E.seq > self._delivered_upto).count()

    def stats(self):
        """depth, oldest_undelivered_time, last_seq, delivered_upto, rows, bytes, file_bytes and the caps."""
        E = self.Event
        with self._lock:
            self._check_open()
            with self._guard():
                oldest = E.select(E.time).where(E.seq > self._delivered_upto).order_by(E.seq).limit(1).scalar()
                wal = self._wal_bytes()
                file_bytes = self._file_size(self.path) + wal + self._file_size(self._shm_path)
                return {
                    "depth": self._depth(),
                    "oldest_undelivered_time": oldest,
                    "last_seq": self._last_seq,
                    "delivered_upto": self._delivered_upto,
                    "rows": self._rows,
                    "bytes": self._counted_bytes(),  # what max_bytes is compared with
                    "used_bytes": self._used_bytes(),
                    "wal_bytes": wal,
                    "wal_limit": self.wal_limit,
                    "file_bytes": file_bytes,  # database + WAL + index, as on disk
                    "max_rows": self.max_rows,
                    "max_bytes": self.max_bytes,
                }

    @property
    def last_seq(self):
        return self._last_seq

    @property
    def delivered_upto(self):
        return self._delivered_upto

    # -- lifetime ----------------------------------------------------------------------------

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._new.notify_all()
            try:
                self._db.close()
            except (peewee.PeeweeException, sqlite3.Error) as exc:
                log.warning("closing the outbox %s: %s", self.path, exc)

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
