"""Forwarding stored events to the national declaration system (issue 13).

Every event the collector stores is queued for forwarding in the same transaction that stores it:
a database trigger on `chot_event` (SQLite and PostgreSQL, created by `install()`) adds its
`(device_id, seq)` to `chot_forward_queue`. The forwarder reads the queue in insertion order
(its own id, never the event's time: a terminal that was offline for days uploads old events
late, and they are queued when they arrive), decrypts the personal fields (one audit row per
batch, actor `forwarder`, the standing case `forward.case`), POSTs each event (its fields as
`forward.mapping` names them, its idempotency key `<device_id>:<seq>` in the body and in the
`Idempotency-Key` header) and deletes it from the queue only after a 2xx. So:

- nothing is skipped: an event leaves the queue only when the receiver accepted it, when it
  was parked in the dead letter (a refusal that will not change), or when it does not match
  `forward.decisions` / `forward.sources` (counted `filtered`);
- nothing is lost across restarts of either side: the queue is the durable cursor; a crash
  between the 2xx and the delete sends the event again with the same key, which the receiver
  deduplicates;
- a refused event (HTTP 4xx other than 408 and 429, and other than 401/403/404/405/407, which
  say the endpoint or the credentials are wrong, not the event) is parked in
  `chot_forward_dead` with its status and a short reason (no payload); `chot collector forward
  retry` queues it again;
- failures (connection errors, timeouts, 408, 429, 5xx) are retried with exponential backoff
  and full jitter (Retry-After honoured up to `backoff_max_s`), at most `rate_per_s` requests a
  second (a token bucket); an event whose row was purged before it was sent is parked with
  status 0, reason `purged`.

One forwarder sends at a time, whatever the number of collectors on one database: a lease row
in `chot_forward_state`. The credentials are read from `forward.token_file` (0600) and never
logged; a log line names the endpoint by its scheme, host and port only.

`state(storage)` is what the fleet page and `chot collector forward status` show: backlog,
dead letter, counters, last success, last error.
"""

import json
import logging
import os
import random
import socket
import threading
import time as _time
import uuid as _uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

from peewee import BigAutoField, BigIntegerField, CharField, IntegerField, Model, TextField, Tuple

from chot.errors import CollectorError
from chot.personal import SealError, read_secret
from collector.config import FORWARD_CLEAR_FIELDS
from collector.storage import format_time, parse_time, utcnow

log = logging.getLogger(__name__)

ACTOR = "forwarder"
# 4xx that say the endpoint or our credentials are wrong, not the event: retried (with backoff), never parked
ENDPOINT_ERRORS = (401, 403, 404, 405, 407)
# 409: the same key is still being processed (draft-ietf-httpapi-idempotency-key-header): retried
TRANSIENT = (408, 409, 429)
_TRIGGER = "chot_forward_enqueue"


class ForwardError(CollectorError):
    """The forwarder cannot run: its settings or tables are missing; the message says what to do."""


# --- tables -----------------------------------------------------------------------------------


class _Tables:
    """The forwarder's tables on one Storage's database (cached on it)."""

    def __init__(self, storage):
        TimeField = type(storage.Event.time)

        class Base(Model):
            class Meta:
                database = storage.db

        class Queue(Base):
            id = BigAutoField()
            device_id = CharField(max_length=64)
            seq = BigIntegerField()
            time_corrected = TimeField()

            class Meta:
                table_name = "chot_forward_queue"
                indexes = ((("device_id", "seq"), True),)

        class Dead(Base):
            device_id = CharField(max_length=64)
            seq = BigIntegerField()
            time_corrected = TimeField()
            status = IntegerField()  # the HTTP status; 0: not sent (purged)
            reason = CharField(max_length=200)
            attempts = IntegerField()
            parked_at = TimeField()

            class Meta:
                table_name = "chot_forward_dead"
                primary_key = False
                indexes = ((("device_id", "seq"), True), (("parked_at",), False))

        class State(Base):
            name = CharField(max_length=64, primary_key=True)
            num = BigIntegerField(default=0)
            text = TextField(null=True)
            at = TimeField(null=True)

            class Meta:
                table_name = "chot_forward_state"

        self.Queue, self.Dead, self.State = Queue, Dead, State


def tables(storage):
    t = storage.__dict__.get("_forward_tables")
    if t is None:
        t = storage._forward_tables = _Tables(storage)
    return t


def installed(storage):
    return tables(storage).State.table_exists()


def install(storage, backfill=True):
    """Create the forwarder's tables and the trigger that queues every newly stored event; idempotent.

    The first time (no trigger yet), with `backfill` the events already stored are queued too, in
    the same transaction (so that none falls between the backfill and the trigger). Returns the
    number of events backfilled.
    """
    t = tables(storage)
    db = storage.db
    with db.atomic():
        if not storage.sqlite:
            db.execute_sql("SELECT pg_advisory_xact_lock(hashtext('chot forward install'))")
        db.create_tables([t.Queue, t.Dead, t.State], safe=True)
        if storage.sqlite:
            exists = db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                                    [_TRIGGER]).fetchone()
        else:
            exists = db.execute_sql("SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = 'chot_event'::regclass",
                                    [_TRIGGER]).fetchone()
        if exists:
            return 0
        if storage.sqlite:
            db.execute_sql(
                f'CREATE TRIGGER "{_TRIGGER}" AFTER INSERT ON "chot_event" BEGIN'
                ' INSERT INTO "chot_forward_queue" ("device_id", "seq", "time_corrected")'
                ' SELECT NEW."device_id", NEW."seq", NEW."time_corrected" WHERE NOT EXISTS (SELECT 1 FROM'
                ' "chot_forward_queue" WHERE "device_id" = NEW."device_id" AND "seq" = NEW."seq"); END')
        else:
            db.execute_sql(
                f'CREATE OR REPLACE FUNCTION "{_TRIGGER}"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN'
                ' INSERT INTO "chot_forward_queue" ("device_id", "seq", "time_corrected")'
                ' VALUES (NEW."device_id", NEW."seq", NEW."time_corrected") ON CONFLICT DO NOTHING;'
                ' RETURN NULL; END $$')
            # takes a lock that waits for the ingest transactions under way: none falls between the two
            db.execute_sql(f'CREATE TRIGGER "{_TRIGGER}" AFTER INSERT ON "chot_event" FOR EACH ROW'
                           f' EXECUTE FUNCTION "{_TRIGGER}"()')
        n = 0
        if backfill:
            n = db.execute_sql(
                'INSERT INTO "chot_forward_queue" ("device_id", "seq", "time_corrected") SELECT "device_id", "seq",'
                ' MIN("time_corrected") FROM "chot_event" GROUP BY "device_id", "seq"'
                ' ORDER BY MIN("received_at"), "device_id", "seq"').rowcount
        t.State.insert(name="installed", num=n, at=utcnow()).on_conflict_ignore().execute()
    log.warning("forwarding set up: every event stored from now on is queued for the national system (%d stored "
                "before queued)", n)
    return n


# --- state ------------------------------------------------------------------------------------


def _bump(t, name, n=1, text=None, at=None):
    S = t.State
    S.insert(name=name, num=0).on_conflict_ignore().execute()
    fields = {S.num: S.num + n}
    if text is not None:
        fields[S.text] = text
    if at is not None:
        fields[S.at] = at
    S.update(fields).where(S.name == name).execute()


def state(storage):
    """The forwarder's state as a dict (fleet page, /api/stats, `chot collector forward status`).

    {"installed", "backlog", "oldest_queued": {key, time_corrected} | None, "dead", "forwarded",
    "filtered", "purged", "retries", "last_success", "last_error", "last_error_at", "sender": lease owner,
    "lease_until"}. No personal data.
    """
    if not installed(storage):
        return {"installed": False, "backlog": None, "dead": None}
    t = tables(storage)
    Q, D, S = t.Queue, t.Dead, t.State
    rows = {r.name: r for r in S.select()}
    first = Q.select().order_by(Q.id).first()

    def num(name):
        return rows[name].num if name in rows else 0

    err = rows.get("last_error")
    ok = rows.get("forwarded")
    lease = rows.get("lease")
    return {
        "installed": True,
        "backlog": Q.select().count(),
        "oldest_queued": {"key": f"{first.device_id}:{first.seq}", "time_corrected": format_time(first.time_corrected)}
        if first else None,
        "dead": D.select().count(),
        "forwarded": num("forwarded"),
        "filtered": num("filtered"),
        "purged": num("purged"),
        "parked": num("parked"),
        "retries": num("retries"),
        "last_success": format_time(ok.at) if ok and ok.at else None,
        "last_error": err.text if err else None,
        "last_error_at": format_time(err.at) if err and err.at else None,
        "sender": lease.text if lease else None,
        "lease_until": format_time(lease.at) if lease and lease.at else None,
    }


def dead_letters(storage, limit=100):
    """The parked events, newest first: {key, device_id, seq, status, reason, attempts, parked_at} (no payload)."""
    if not installed(storage):
        return []
    D = tables(storage).Dead
    return [{"key": f"{d.device_id}:{d.seq}", "device_id": d.device_id, "seq": d.seq, "status": d.status,
             "reason": d.reason, "attempts": d.attempts, "time_corrected": format_time(d.time_corrected),
             "parked_at": format_time(d.parked_at)}
            for d in D.select().order_by(D.parked_at.desc(), D.device_id, D.seq).limit(int(limit))]


def retry(storage, keys=None):
    """Queue parked events again (all, or those of `keys`: ["device:seq", ...]); returns how many."""
    if not installed(storage):
        raise ForwardError("forwarding was never set up on this database: set [forward] enabled = true and run the"
                           " collector (or chot collector forward run)")
    t = tables(storage)
    D, Q = t.Dead, t.Queue
    wanted = None
    if keys:
        wanted = set()
        for k in keys:
            dev, sep, seq = str(k).rpartition(":")
            if not sep or not dev or not seq.isdigit():
                raise ForwardError(f"key: found {k!r}; allowed: DEVICE_ID:SEQ as `forward status` lists it")
            wanted.add((dev, int(seq)))
    n = 0
    with storage.db.atomic():
        for d in list(D.select()):
            if wanted is not None and (d.device_id, d.seq) not in wanted:
                continue
            Q.insert(device_id=d.device_id, seq=d.seq, time_corrected=d.time_corrected).on_conflict_ignore().execute()
            D.delete().where((D.device_id == d.device_id) & (D.seq == d.seq)).execute()
            n += 1
    if n:
        log.warning("forwarding: %d parked events queued again", n)
    return n


def uninstall(storage):
    """Stop queueing: drop the trigger and the forwarder's tables (queue, dead letter, state); returns the backlog
    that was dropped. Forwarding set up again later starts afresh (with forward.backfill, from what is stored)."""
    if not installed(storage):
        return 0
    t = tables(storage)
    db = storage.db
    with db.atomic():
        n = t.Queue.select().count()
        if storage.sqlite:
            db.execute_sql(f'DROP TRIGGER IF EXISTS "{_TRIGGER}"')
        else:
            db.execute_sql(f'DROP TRIGGER IF EXISTS "{_TRIGGER}" ON "chot_event"')
            db.execute_sql(f'DROP FUNCTION IF EXISTS "{_TRIGGER}"()')
        db.drop_tables([t.Queue, t.Dead, t.State], safe=True)
    log.warning("forwarding removed: %d queued events were not forwarded; new events are no longer queued", n)
    return n


# --- the sender -------------------------------------------------------------------------------


class TokenBucket:
    """At most `rate` takes a second on average, bursts of at most `capacity` (>= 1)."""

    def __init__(self, rate, capacity=None, clock=_time.monotonic):
        self.rate = float(rate)
        self.capacity = max(1.0, float(capacity if capacity is not None else rate))
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()
        self._lock = threading.Lock()

    def delay(self):
        """Seconds to wait before the next take (0 when a token is there)."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, stop):
        """Take a token, waiting for it; False when `stop` was set meanwhile."""
        while True:
            with self._lock:
                d = self.delay()
                if d <= 0:
                    self.tokens -= 1.0
                    return True
            if stop.wait(d):
                return False


def backoff_delay(attempt, lo, hi, retry_after=None, rng=random):
    """The wait before retry number `attempt` (1, 2 ...): full jitter over lo * 2^(attempt-1), within [lo, hi]."""
    cap = min(hi, lo * (2 ** min(attempt - 1, 40)))
    d = lo + rng.random() * (cap - lo)
    if retry_after is not None:
        d = max(d, min(hi, retry_after))
    return d


def _retry_after(value):
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def endpoint_label(url):
    """The endpoint as logs name it: scheme, host and port, never a path, query or credentials."""
    u = urlparse(url or "")
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.hostname}{port}"


def read_credentials(settings):
    """The Authorization header value from settings.token_file (first line), or None for auth none."""
    if settings.auth == "none":
        return None
    if not settings.token_file:
        raise ForwardError("forward.token_file: missing; give the 0600 file holding the national system's credentials")
    raw = read_secret(settings.token_file, "the national system's credentials").decode("utf-8", "replace")
    line = raw.strip().splitlines()[0].strip() if raw.strip() else ""
    if not line:
        raise ForwardError(f"forward.token_file {settings.token_file}: empty; write the token (or user:password for"
                           " auth basic) on its first line")
    if settings.auth == "bearer":
        return f"Bearer {line}"
    if ":" not in line:
        raise ForwardError(f"forward.token_file {settings.token_file}: auth basic needs user:password on its first"
                           " line")
    import base64

    return "Basic " + base64.b64encode(line.encode("utf-8")).decode("ascii")


class _Outcome:
    OK, PARKED, STOPPED, LOST_LEASE = "ok", "parked", "stopped", "lost_lease"


class Forwarder:
    """Sends the queue to the national system; `run(stop)` loops, `step()` does one batch (tests, CLI)."""

    def __init__(self, storage, settings, stop=None, client=None):
        if not settings.url:
            raise ForwardError("forward.url: missing; give the national system's endpoint")
        try:
            import httpx  # noqa: F401
        except ImportError:
            raise ForwardError("forwarding needs httpx: pip install 'chot[console]' on the collector") from None
        if storage.keys is None:
            raise ForwardError("forwarding needs the collector's keys (collector.key_dir) to decrypt the personal"
                               " fields it sends")
        self.storage = storage
        self.s = settings
        self.stop = stop or threading.Event()
        self.t = tables(storage)
        self.zone = ZoneInfo(settings.timezone)
        self.auth = read_credentials(settings)
        self.endpoint = endpoint_label(settings.url)
        self.bucket = TokenBucket(settings.rate_per_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_uuid.uuid4().hex[:8]}"
        self.lease_until = 0.0
        self.lease_s = max(settings.lease_s, 3 * settings.timeout_s)
        self._lease_lock = threading.Lock()
        self._client = client
        self._own_client = client is None
        self.counters = {"sent": 0, "accepted": 0, "failed_attempts": 0, "parked": 0}
        self._lock = threading.Lock()

    # --- lifecycle

    def client(self):
        with self._lock:
            return self._make_client()

    def _make_client(self):
        if self._client is None:
            import httpx

            t = self.s.timeout_s
            self._client = httpx.Client(timeout=httpx.Timeout(t, connect=t), follow_redirects=False, trust_env=False,
                                        limits=httpx.Limits(max_connections=self.s.concurrency,
                                                            max_keepalive_connections=self.s.concurrency))
        return self._client

    def close(self):
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def run(self):
        """Forward until `self.stop` is set (its own database connection); errors are logged and retried."""
        failures = 0
        ready = False
        with self.storage.connection():
            log.warning("forwarding to %s (%.3g requests/s at most)", self.endpoint, self.s.rate_per_s)
            while not self.stop.is_set():
                try:
                    if not ready:
                        install(self.storage, self.s.backfill)
                        ready = True
                    n = self.step()
                    failures = 0
                except Exception as exc:  # the database is down: try again after a while
                    failures += 1
                    log.error("forwarding paused (%s: %s); trying again", exc.__class__.__name__, exc)
                    self._reconnect()
                    n = 0
                    if self.stop.wait(backoff_delay(failures, self.s.backoff_min_s, self.s.backoff_max_s)):
                        break
                    continue
                if n == 0 and self.stop.wait(self.s.idle_s):
                    break
            self._release()
        self.close()

    def _reconnect(self):
        try:
            self.storage.reconnect()
        except Exception as exc:
            log.debug("reconnect failed: %s", exc)

    # --- the lease: one sender per database

    def _lease(self):
        """Take or renew the lease; True when this forwarder holds it."""
        with self._lease_lock:
            return self._lease_locked()

    def _lease_locked(self):
        now = _time.time()
        if now < self.lease_until - self.lease_s / 2:
            return True
        S = self.t.State
        lease_s = self.lease_s
        with self.storage.db.atomic():
            S.insert(name="lease", num=0, text="", at=utcnow()).on_conflict_ignore().execute()
            q = S.select().where(S.name == "lease")
            if not self.storage.sqlite:
                q = q.for_update()
            row = q.get()
            held = row.text == self.owner or not row.text or row.at is None or row.at <= utcnow()
            if held:
                until = utcnow() + timedelta(seconds=lease_s)
                S.update(text=self.owner, at=until).where(S.name == "lease").execute()
        self.lease_until = now + lease_s if held else 0.0
        return held

    def _release(self):
        S = self.t.State
        try:
            S.update(text="", at=utcnow()).where((S.name == "lease") & (S.text == self.owner)).execute()
        except Exception as exc:
            log.debug("releasing the lease failed: %s", exc)

    # --- one batch

    def step(self):
        """Forward one batch of the queue; returns how many events left the queue (0: nothing to do)."""
        if not self._lease():
            return 0
        Q = self.t.Queue
        rows = list(Q.select().order_by(Q.id).limit(self.s.batch_size))
        if not rows:
            return 0
        events = self._events(rows)
        done = 0
        send = []
        for r in rows:
            e = events.get((r.device_id, r.seq))
            if e is None:
                self._park(r, 0, "purged: the event was deleted before it was forwarded", 0)
                _bump(self.t, "purged")
                done += 1
            elif e.decision not in self.s.decisions or (self.s.sources and e.source not in self.s.sources):
                with self.storage.db.atomic():
                    Q.delete().where(Q.id == r.id).execute()
                    _bump(self.t, "filtered")
                done += 1
            else:
                send.append((r, e))
        if not send:
            return done
        self.storage.audit(ACTOR, "forward", self.s.case, None,
                           {"events": len(send), "first": f"{send[0][0].device_id}:{send[0][0].seq}",
                            "last": f"{send[-1][0].device_id}:{send[-1][0].seq}", "to": self.endpoint},
                           len(send))
        lanes = min(self.s.concurrency, len(send))
        if lanes <= 1:
            return done + self._lane(send)
        # `concurrency` lanes, each a share of the batch in order, on its own database connection
        from concurrent.futures import ThreadPoolExecutor

        def lane(part):
            with self.storage.connection():
                return self._lane(part)

        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="collector-forward") as ex:
            return done + sum(ex.map(lane, [send[i::lanes] for i in range(lanes)]))

    def _lane(self, send):
        """Send events one after the other; how many left the queue (stops early when stopped or the lease is lost)."""
        done = 0
        for r, e in send:
            key = f"{r.device_id}:{r.seq}"
            body = self.body(e, key)
            out = self._send(r, key, body)
            if out in (_Outcome.STOPPED, _Outcome.LOST_LEASE):
                return done
            done += 1
        return done

    def _events(self, rows):
        E = self.storage.Event
        out = {}
        pairs = [(r.device_id, r.seq) for r in rows]
        tc = {(r.device_id, r.seq): r.time_corrected for r in rows}
        for i in range(0, len(pairs), 200):
            chunk = pairs[i : i + 200]
            for e in E.select().where(Tuple(E.device_id, E.seq).in_(chunk)):
                k = (e.device_id, e.seq)
                if k not in out or e.time_corrected == tc.get(k):  # PostgreSQL: the queued time's row
                    out[k] = e
        return out

    def body(self, e, key):
        """The JSON body of event row `e`: forward.mapping's fields, and the key under forward.key_field."""
        person = None
        tc = parse_time(e.time_corrected)
        clear = {
            "key": key, "device_id": e.device_id, "seq": e.seq, "uuid": e.uuid, "checkpoint": e.checkpoint,
            "direction": e.direction, "time": tc.replace(tzinfo=UTC).astimezone(self.zone).isoformat(),
            "time_utc": format_time(tc), "decision": e.decision, "reason": e.reason, "verified": bool(e.verified),
            "source": e.source, "format": e.format, "clock_flag": e.clock_flag,
        }
        out = {}
        for national, ours in self.s.mapping.items():
            if ours in FORWARD_CLEAR_FIELDS:
                out[national] = clear[ours]
                continue
            if person is None:
                person = self._person(e)
            v = person.get(ours)
            out[national] = v if isinstance(v, str | int | float | bool) or v is None else str(v)
        out[self.s.key_field] = key
        return out

    def _person(self, e):
        if not e.personal:
            return {}
        try:
            obj = self.storage.keys.decrypt(e.personal, e.device_id, e.seq)
        except SealError as exc:
            log.error("event %s:%s: its personal fields do not decrypt (%s): sent without them", e.device_id, e.seq,
                      exc.code)
            return {}
        p = dict(obj.get("person") or {})
        return p

    def _park(self, r, status, reason, attempts):
        D, Q = self.t.Dead, self.t.Queue
        with self.storage.db.atomic():
            D.insert(device_id=r.device_id, seq=r.seq, time_corrected=r.time_corrected, status=int(status),
                     reason=str(reason)[:200], attempts=int(attempts), parked_at=utcnow()).on_conflict(
                conflict_target=[D.device_id, D.seq],
                update={D.status: int(status), D.reason: str(reason)[:200], D.attempts: int(attempts),
                        D.parked_at: utcnow()}).execute()
            Q.delete().where(Q.id == r.id).execute()
            _bump(self.t, "parked")
        with self._lock:
            self.counters["parked"] += 1

    def _error(self, text):
        with self.storage.db.atomic():
            _bump(self.t, "retries", text=None)
            S = self.t.State
            S.insert(name="last_error", num=0).on_conflict_ignore().execute()
            S.update(text=text[:300], at=utcnow(), num=S.num + 1).where(S.name == "last_error").execute()

    def _send(self, r, key, body):
        """POST one event until it is accepted or parked; the outcome."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": key,
                   "User-Agent": "chot-collector"}
        if self.auth:
            headers["Authorization"] = self.auth
        attempt = fails_5xx = 0
        while True:
            if not self.bucket.take(self.stop):
                return _Outcome.STOPPED
            if not self._lease():
                log.warning("forwarding: another collector holds the sending lease now; this one waits")
                return _Outcome.LOST_LEASE
            attempt += 1
            status, reason, retry_after = self._post(data, headers)
            with self._lock:
                self.counters["sent"] += 1
            if status is not None and 200 <= status < 300:
                Q = self.t.Queue
                with self.storage.db.atomic():
                    Q.delete().where(Q.id == r.id).execute()
                    _bump(self.t, "forwarded", at=utcnow())
                with self._lock:
                    self.counters["accepted"] += 1
                return _Outcome.OK
            if status is not None and 400 <= status < 500 and status not in TRANSIENT + ENDPOINT_ERRORS:
                log.error("forwarding: %s refused event %s with HTTP %d (%s): parked in the dead letter (chot collector"
                          " forward status; retry)", self.endpoint, key, status, reason)
                self._park(r, status, reason, attempt)
                return _Outcome.PARKED
            if status in ENDPOINT_ERRORS:
                what = (f"HTTP {status} {reason}: the endpoint refuses this collector (check forward.url,"
                        " forward.auth and forward.token_file)")
            elif status is not None and 300 <= status < 400:
                what = f"HTTP {status} {reason}: redirects are not followed (check forward.url)"
            elif status is not None:
                what = f"HTTP {status} {reason}"
            else:
                what = reason
            with self._lock:
                self.counters["failed_attempts"] += 1
            if status is not None and status >= 500:
                fails_5xx += 1
                if self.s.park_after and fails_5xx >= self.s.park_after:
                    log.error("forwarding: %s failed on event %s %d times (HTTP %d %s): parked in the dead letter"
                              " (forward.park_after)", self.endpoint, key, fails_5xx, status, reason)
                    self._park(r, status, f"{reason} ({fails_5xx} times)", attempt)
                    return _Outcome.PARKED
            self._error(f"{what} (event {key}, attempt {attempt})")
            delay = backoff_delay(attempt, self.s.backoff_min_s, self.s.backoff_max_s, retry_after)
            level = logging.ERROR if attempt in (1, 5) or attempt % 50 == 0 else logging.DEBUG
            log.log(level, "forwarding to %s failed: %s; event %s tried %d times, again in %.1f s", self.endpoint,
                    what, key, attempt, delay)
            if self._wait(delay):
                return _Outcome.STOPPED

    def _wait(self, delay):
        """Wait `delay` s, keeping the lease; True when stopped meanwhile."""
        end = _time.monotonic() + delay
        while True:
            left = end - _time.monotonic()
            if left <= 0:
                return False
            if self.stop.wait(min(left, self.lease_s / 4)):
                return True
            self._lease()

    def _post(self, data, headers):
        """(status or None, short reason, Retry-After seconds or None) of one POST; the answer is read bounded."""
        import httpx

        limit = self.s.max_response_kib * 1024
        deadline = _time.monotonic() + 2 * self.s.timeout_s
        try:
            with self.client().stream("POST", self.s.url, content=data, headers=headers) as resp:
                got = 0
                for chunk in resp.iter_raw():
                    got += len(chunk)
                    if got > limit or _time.monotonic() > deadline:
                        break  # the rest is not read: the connection is closed, not reused
                phrase = "".join(c for c in (resp.reason_phrase or "") if c.isprintable())[:60]
                return resp.status_code, phrase or "-", _retry_after(resp.headers.get("retry-after"))
        except httpx.TimeoutException as exc:
            return None, f"timeout ({exc.__class__.__name__})", None
        except httpx.HTTPError as exc:
            return None, f"{exc.__class__.__name__}: no answer", None

    def stats(self):
        with self._lock:
            return dict(self.counters)


class ForwardThread:
    """The forwarder as a thread of `chot collector run` (started when forward.enabled)."""

    def __init__(self, storage, settings):
        self.stop_event = threading.Event()
        self.forwarder = Forwarder(storage, settings, stop=self.stop_event)  # fails here, saying what is wrong
        install(storage, settings.backfill)  # before ingest starts: every event stored from now on is queued
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.forwarder.run, name="collector-forward", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout=10.0):
        self.stop_event.set()
        if self.thread:
            self.thread.join(timeout)
            self.thread = None


def run(cfg, storage, stop):
    """`chot collector forward run`: forward until `stop` (a threading.Event) is set."""
    if not cfg.forward.enabled:
        raise ForwardError("forward.enabled is false: set [forward] enabled = true (and url, token_file) first")
    f = Forwarder(storage, cfg.forward, stop=stop)
    f.run()
    return f
