"""The outbox: every decision as a durable event, until the collector has acknowledged it.

peewee on SQLite in WAL mode. `append()` gives the event its `seq` (a per-device number that
only grows: the highest one ever given is kept in a one-row table updated in the same
transaction, so neither a crash nor the deletion of delivered rows can make it go back), the
device id and the event version (and a UUID unless the caller gave one: the daemon does, since
the sealed part is bound to it), checks it against the wire contract (`chot.wire.Event`, v2),
stores its JSON exactly as it is published, and COMMITS before it returns: the daemon gives
feedback only after that, so there is no PASS without a record.

The database and its -wal and -shm files are created 0600 (and tightened to 0600 when found
looser): they hold sealed personal parts and the terminal's movements.

The MQTT link reads `pending_raw()` (the stored JSON) in seq order, and `mark_delivered(upto)` when the collector's
ack covers `upto`; `purge()` deletes delivered events older than the retention period. At the
cap (`max_rows` events or `max_bytes` of used database pages) `append()` first gives up
delivered events still under retention, oldest first, and when only undelivered events remain
raises `OutboxFull`: the terminal fails closed and never drops an event silently. The used pages
are read from SQLite only when a pessimistic estimate (each append since the last reading counted
as its body plus `GROWTH_PAGES` pages) comes near `max_bytes`, so the cap is never overshot. Disk full,
read-only or unopenable files raise `OutboxError` with what to do.

peewee defines the schema and serves the other methods; `append()`, the frame loop's hot
path, runs two prepared statements on the same sqlite3 connection in one `BEGIN IMMEDIATE`
transaction (sqlite3 caches the prepared statements), without building SQL per event.

One connection, guarded by a lock: the frame loop appends while the MQTT thread reads and
marks. `wait_for(after_seq, timeout)` lets that thread sleep until there is something new.
"""

import json
import logging
import os
import sqlite3
import threading
import time
import uuid as uuidlib
from contextlib import contextmanager
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
EVICT_CHUNK = 1000  # delivered events given up at once when the cap is reached
PURGE_CHUNK = 5000
INSERT_EVENT = "INSERT INTO event (seq, time, body, created, delivered_at) VALUES (?, ?, ?, ?, NULL)"
UPDATE_LAST_SEQ = "UPDATE outbox_state SET last_seq = ? WHERE id = 1"
# An upper bound of the pages one append can add besides its body's bytes (the b-tree splitting
# up to the root); the byte cap is re-read from SQLite only when this estimate gets near it.
GROWTH_PAGES = 16


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
        delivered_at = DoubleField(null=True)  # epoch seconds when the collector's ack covered it

        class Meta:
            table_name = "event"

    class State(Base):
        id = IntegerField(primary_key=True)
        last_seq = BigIntegerField()  # the highest seq ever given; never goes back
        delivered_upto = BigIntegerField()  # every seq <= this is delivered
        device_id = CharField(null=True)

        class Meta:
            table_name = "outbox_state"

    return Event, State


PRIVATE_MODE = 0o600
SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _create_private(path):
    """Create the database file 0600 when it does not exist (SQLite gives -wal and -shm its mode)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
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
                "journal_size_limit": 4 * MiB,
                "busy_timeout": int(busy_timeout_s * 1000),
            },
            lock_type="IMMEDIATE",
            thread_safe=False,  # one connection shared by the threads, serialised by self._lock
            check_same_thread=False,
            timeout=busy_timeout_s,
        )
        self.Event, self.State = _models(self._db)
        with self._guard():
            self._db.connect()
            mode = self._db.execute_sql("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                raise OutboxError(f"the outbox {self.path} could not switch to WAL mode (got {mode}): use a local disk")
            with self._db.atomic():
                self._db.create_tables([self.Event, self.State])
                self.State.insert(
                    id=1, last_seq=0, delivered_upto=0, device_id=device_id
                ).on_conflict_ignore().execute()
            self._page_size = self._pragma("page_size")
            _tighten(self.path)
            state = self.State.get_by_id(1)
            top = self.Event.select(peewee.fn.MAX(self.Event.seq)).scalar() or 0
            self._last_seq = max(state.last_seq, top)
            self._delivered_upto = state.delivered_upto
            self._rows = self.Event.select().count()
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

    def _used_bytes(self):
        """Bytes of the database's pages in use (free pages are reused, so this is what grows)."""
        used = (self._pragma("page_count") - self._pragma("freelist_count")) * self._page_size
        self._room = self.max_bytes - used
        return used

    def _evict_delivered(self, reason):
        """At the cap: give up the oldest delivered events before their retention ends."""
        E = self.Event
        oldest = E.select(E.seq).where(E.seq <= self._delivered_upto).order_by(E.seq).limit(EVICT_CHUNK)
        with self._db.atomic():
            n = E.delete().where(E.seq.in_(oldest)).execute()
        if n:
            self._rows -= n
            log.warning("outbox at its cap (%s): %d delivered events deleted before their retention ended", reason, n)
        return n

    def _full_reason(self):
        """None when there is room; else why not (and frees delivered events first)."""
        while True:
            if self._rows >= self.max_rows:
                reason = f"{self._rows} events kept, outbox.max_rows = {self.max_rows}"
            elif self._room > 0:  # far from the byte cap: no need to ask SQLite
                return None
            else:
                used = self._used_bytes()
                if used < self.max_bytes:
                    return None
                reason = f"{used} bytes used, outbox.max_bytes = {self.max_bytes}"
            if not self._evict_delivered(reason):
                return reason

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
            with self._guard():
                reason = self._full_reason()
            if reason:
                raise OutboxFull(
                    f"the outbox {self.path} is full ({reason}, {self._depth()} not yet acknowledged): "
                    "events are freed only after the collector acknowledges them, so reconnect the uplink; "
                    "or raise outbox.max_rows / outbox.max_bytes and free disk space. "
                    "The terminal fails closed until then."
                )
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
                self._insert(seq, event["time"], raw.decode("utf-8"))
            self._room -= len(raw) + len(raw) // 256 + GROWTH_PAGES * self._page_size
            self._last_seq = seq
            self._rows += 1
            self._new.notify_all()
            return wire.to_dict(typed)

    def _insert(self, seq, when, body):
        """Insert the event and raise last_seq in one transaction, committed (durable) on return.

        Inside a transaction the caller opened (e.g. `with outbox._lock, outbox._db.atomic():` to
        fill many events at once) it is a savepoint, and the caller's commit makes it durable.
        """
        conn = self._db.connection()  # peewee's sqlite3 connection (isolation_level None: we say BEGIN)
        nested = conn.in_transaction
        conn.execute("SAVEPOINT outbox_append" if nested else "BEGIN IMMEDIATE")
        try:
            conn.execute(INSERT_EVENT, (seq, when, body, time.time()))
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
                if self._rows < self.max_rows and self._used_bytes() < self.max_bytes:
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
            with self._guard(), self._db.atomic():
                if upto_seq > self._last_seq:
                    log.warning(
                        "the collector acknowledged seq %d but this outbox only reached %d (was it replaced?): "
                        "continuing after %d so that no seq is used twice",
                        upto_seq,
                        self._last_seq,
                        upto_seq,
                    )
                    S.update(last_seq=upto_seq).where(S.id == 1).execute()
                n = (
                    E.update(delivered_at=time.time())
                    .where((E.seq > self._delivered_upto) & (E.seq <= upto_seq))
                    .execute()
                )
                S.update(delivered_upto=upto_seq).where(S.id == 1).execute()
            self._last_seq = max(self._last_seq, upto_seq)
            self._delivered_upto = upto_seq
            return n

    def purge(self, now=None):
        """Delete delivered events older than the retention period; returns how many."""
        now = time.time() if now is None else (now.timestamp() if hasattr(now, "timestamp") else float(now))
        cutoff = now - self.retention_days * 86400.0
        E = self.Event
        total = 0
        while True:
            with self._lock:
                self._check_open()
                chunk = (
                    E.select(E.seq)
                    .where((E.seq <= self._delivered_upto) & (E.delivered_at < cutoff))
                    .order_by(E.seq)
                    .limit(PURGE_CHUNK)
                )
                with self._guard(), self._db.atomic():
                    n = E.delete().where(E.seq.in_(chunk)).execute()
                self._rows -= n
            total += n
            if n < PURGE_CHUNK:
                break
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
                file_bytes = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
                return {
                    "depth": self._depth(),
                    "oldest_undelivered_time": oldest,
                    "last_seq": self._last_seq,
                    "delivered_upto": self._delivered_upto,
                    "rows": self._rows,
                    "bytes": self._used_bytes(),
                    "file_bytes": file_bytes,
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
