"""Signed lists kept fresh: the running collector re-signs and republishes what it published.

Terminals call a trust or deny list issued more than `policy.max_list_age_h` (72 h) ago
`stale`, and refuse any signed message past its `expires`. So the collector keeps, per topic,
the last signed message it published (table `chot_signed`: kind, target, version, issued,
expires, time to live, the signed payload, which version was published and by whom) and its
running process (`chot collector run`, `ListRefresher`, a thread of its own) re-signs each one
with a new version and a fresh `issued`/`expires` once it is older than `collector.refresh_lists_h`
(deny list, trust; 24 h by default) or than half its time to live (every kind, so a config is
re-signed long before it expires), and publishes it retained at QoS 1 through the collector's
own MQTT connection. The body is kept as it was signed: re-signing costs one Ed25519 signature,
never the deny list's Argon2 hashes (the terminal sees the same salt and entries and keeps its
cache). What was never published is never invented: only rows written by a publish are refreshed.

Nothing personal is kept: a deny list body holds only salted hashes (chot.personal.make_denylist_body),
a trust body public keys and certificates, a config body policy keys and the sealing *public* key.

The publishing commands (`set-config`, `publish-denylist`, `publish-trust`) write their signed
message here first. When a collector is running and connected (its heartbeat in table
`chot_list_publisher` is fresh), they hand it over: the collector publishes it within a second
or so (`published_by` names it) and the command returns then; otherwise, or with `--now`, the
command publishes it itself (a connection of its own: on the fleet's broker, with the collector's
certificate, that briefly displaces a running collector, which reconnects at once).

Several collectors on one database: every change of a row is a compare-and-set on its version
(`UPDATE ... WHERE version = old`), so only one of them re-signs a given list; publishing the
same message twice is harmless (the terminals ignore a version they have).

A broker that lost its retained messages (restarted without persistence, or its store wiped) would
leave the fleet without lists until the next refresh, up to `refresh_lists_h` later. The collector
notices on connecting: it subscribes to its own retained presence before publishing it, and a broker
that lost its retained messages has none to send (collector/subscriber.py). On such a connection the
list thread publishes every kept message again, as it is (same version, no new signature; counted as
`restored`). A reconnect to a broker that kept its retained messages publishes nothing again, so a
flapping link does not send a large deny list to every terminal over and over.
"""

import json
import logging
import threading
import time
from datetime import UTC, datetime

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    DoubleField,
    IntegrityError,
    Model,
    ProgrammingError,
    TextField,
)

from chot import wire

log = logging.getLogger(__name__)

LIST_KINDS = ("denylist", "trust")  # judged by age on the terminals (policy.max_list_age_h)
HEARTBEAT_S = 10.0  # a running collector writes its heartbeat this often
LIVE_S = 35.0  # a heartbeat older than this is a collector that is not running
POLL_S = 1.0  # the running collector looks for messages to publish this often
HANDOFF_WAIT_S = 30.0  # a command waits this long for the running collector to publish


class SignedStore:
    """The last signed message per topic and the running collectors' heartbeats, in the collector's database.

    `storage` is a collector.storage.Storage; the two tables are created when missing (both
    backends), apart from the schema versions of the rest.
    """

    def __init__(self, storage):
        self.storage = storage

        class Base(Model):
            class Meta:
                database = storage.db

        class Signed(Base):
            topic = CharField(max_length=200, primary_key=True)
            kind = CharField(max_length=16)
            target = CharField(max_length=64)
            version = BigIntegerField()
            issued = CharField(max_length=40)
            expires = CharField(max_length=40)
            ttl_s = DoubleField()
            payload = TextField()  # the signed envelope as published (its body: hashes, keys, policy)
            published_version = BigIntegerField(null=True)  # the version last published, None: not yet
            published_by = CharField(max_length=200, null=True)
            published_at = DoubleField(null=True)  # Unix time
            refreshed = BigIntegerField(default=0)  # times the running collector re-signed it

            class Meta:
                table_name = "chot_signed"

        class Publisher(Base):
            collector_id = CharField(max_length=200, primary_key=True)
            seen_at = DoubleField()  # Unix time of the heartbeat
            connected = BooleanField()

            class Meta:
                table_name = "chot_list_publisher"

        self.Signed, self.Publisher = Signed, Publisher
        try:
            storage.db.create_tables([Signed, Publisher], safe=True)
        except (IntegrityError, ProgrammingError):  # PostgreSQL: another process created them at the same time
            if storage.db.in_transaction():
                storage.db.rollback()
            if not (Signed.table_exists() and Publisher.table_exists()):
                raise

    # --- the signed messages ------------------------------------------------------------------

    def save(self, kind, topic, target, version, payload, ttl_s):
        """Keep a newly signed message as the one to publish on `topic`; False when a newer one is kept
        (a refresh or another command got there first: sign again with a new version)."""
        env = json.loads(payload)
        S = self.Signed
        fields = {"kind": kind, "target": target, "version": int(version), "issued": env["issued"],
                  "expires": env["expires"], "ttl_s": float(ttl_s),
                  "payload": payload.decode("utf-8") if isinstance(payload, bytes) else payload,
                  "published_version": None, "published_by": None, "published_at": None, "refreshed": 0}
        for _ in range(3):
            n = S.update(**fields).where((S.topic == topic) & (S.version < int(version))).execute()
            if n:
                return True
            if S.select().where(S.topic == topic).exists():
                return False
            try:
                with self.storage.db.atomic():
                    S.insert(topic=topic, **fields).execute()
                return True
            except IntegrityError:  # another writer inserted it meanwhile: compare again
                continue
        return False

    def forget(self, topic):
        """Stop keeping (and re-signing) the message of `topic`; False when none is kept."""
        return self.Signed.delete().where(self.Signed.topic == topic).execute() == 1

    def get(self, topic):
        """{"kind", "version", "issued", "expires", "payload", "published_version", ...} of `topic`, or None."""
        row = self.Signed.get_or_none(self.Signed.topic == topic)
        return None if row is None else row.__data__.copy()

    def summary(self):
        """The kept messages without their payloads (small: one row per topic), by topic."""
        S = self.Signed
        cols = [S.topic, S.kind, S.target, S.version, S.issued, S.expires, S.ttl_s, S.published_version,
                S.published_by, S.published_at, S.refreshed]
        return {r["topic"]: r for r in S.select(*cols).order_by(S.topic).dicts()}

    def payload(self, topic, version):
        """The signed payload of `topic` when it still is `version`, else None."""
        S = self.Signed
        return S.select(S.payload).where((S.topic == topic) & (S.version == version)).scalar()

    def replace(self, topic, old_version, version, payload):
        """Compare-and-set: `topic` re-signed as `version` only while it still is `old_version`."""
        env = json.loads(payload)
        S = self.Signed
        return S.update(version=int(version), issued=env["issued"], expires=env["expires"],
                        payload=payload.decode("utf-8") if isinstance(payload, bytes) else payload,
                        published_version=None, published_by=None, published_at=None,
                        refreshed=S.refreshed + 1).where(
            (S.topic == topic) & (S.version == int(old_version))).execute() == 1

    def mark_published(self, topic, version, by):
        """Record that `version` of `topic` is at the broker (unless a newer one was published meanwhile)."""
        S = self.Signed
        S.update(published_version=int(version), published_by=str(by)[:200], published_at=time.time()).where(
            (S.topic == topic) & (S.version == int(version))
            & (S.published_version.is_null() | (S.published_version < int(version)))).execute()

    def published_version(self, topic):
        S = self.Signed
        return S.select(S.published_version).where(S.topic == topic).scalar()

    # --- the running collectors ---------------------------------------------------------------

    def heartbeat(self, collector_id, connected):
        P = self.Publisher
        P.insert(collector_id=collector_id, seen_at=time.time(), connected=bool(connected)).on_conflict(
            conflict_target=[P.collector_id], preserve=[P.seen_at, P.connected]).execute()

    def live_publishers(self, max_age_s=LIVE_S):
        """Ids of the collectors running and connected to the broker (heartbeat within `max_age_s`)."""
        P = self.Publisher
        rows = P.select(P.collector_id).where((P.connected == True) & (P.seen_at > time.time() - max_age_s))  # noqa: E712
        return sorted(r.collector_id for r in rows)


def refresh_after_s(kind, ttl_s, refresh_lists_h):
    """Seconds after its issue a kept message is re-signed: half its life, and for the lists at most
    `refresh_lists_h` hours (0: lists only at half their life too)."""
    after = float(ttl_s) / 2.0
    if kind in LIST_KINDS and refresh_lists_h:
        after = min(after, float(refresh_lists_h) * 3600.0)
    return after


class ListRefresher:
    """The running collector's thread: publishes what the commands hand over and re-signs what ages.

    `collector` is the collector.subscriber.Collector (its connected client, its signing key, its
    storage). `tick()` does one pass (the thread calls it every POLL_S seconds).
    """

    def __init__(self, collector, key):
        self.col = collector
        self.key = key
        self.cid = collector.cfg.collector.id
        self.refresh_lists_h = collector.cfg.collector.refresh_lists_h
        self.store = SignedStore(collector.storage)
        self._stop = threading.Event()
        self._thread = None
        self._last_beat = (0.0, None)
        self._inflight = {}  # topic -> (version, connection generation, MQTTMessageInfo) not confirmed yet
        self._restored_gen = 0  # the connection (lost retained messages) whose lists were all published again
        self._failing_since = None
        self.counters = {"refreshed": 0, "published": 0, "restored": 0, "publish_failures": 0, "errors": 0}

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="collector-lists", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None
        try:  # a command need not wait for a collector that has stopped
            self.store.heartbeat(self.cid, False)
        except Exception as exc:
            log.debug("last heartbeat failed: %s", exc)

    def _loop(self):
        delay = POLL_S
        with self.col.storage.connection():
            while not self._stop.is_set():
                try:
                    self.tick()
                    if self._failing_since is not None:
                        log.warning("signed lists: working again")
                    self._failing_since, delay = None, POLL_S
                except Exception as exc:  # the database is down: the next pass tries again, backing off
                    self.counters["errors"] += 1
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        log.error("signed lists: %s: %s; trying again with backoff", exc.__class__.__name__, exc)
                    else:
                        log.debug("signed lists still failing: %s", exc)
                    self.col._reconnect_db()
                    delay = min(delay * 2, 30.0)
                if self._stop.wait(delay):
                    return

    def tick(self, now=None):
        """One pass: heartbeat, then (connected) publish what is pending and re-sign what is due."""
        connected = self.col.connected.is_set()
        mono = time.monotonic()
        last_at, last_state = self._last_beat
        if connected != last_state or mono - last_at >= HEARTBEAT_S:
            self.store.heartbeat(self.cid, connected)
            self._last_beat = (mono, connected)
        if not connected:
            return
        now = now or datetime.now(UTC)
        lost = self.col.retained_lost_gen
        restore = bool(lost) and lost != self._restored_gen  # the broker lost its retained messages
        restored = []
        for topic, row in self.store.summary().items():
            if self._stop.is_set():
                return
            issued = wire.envelope_time(row["issued"])
            due = issued is None or (now - issued).total_seconds() >= refresh_after_s(
                row["kind"], row["ttl_s"], self.refresh_lists_h)
            if due:
                self._resign(topic, row)
            elif restore or row["published_version"] != row["version"]:  # handed over, not confirmed yet, or lost
                payload = self.store.payload(topic, row["version"])
                if payload is not None:
                    restored.append(self._publish(topic, row["version"], payload))
        if restore and all(restored):  # else the next pass tries the unconfirmed ones again
            self._restored_gen = lost
            self.counters["restored"] += len(restored)
            if restored:
                log.info("the broker had lost its retained messages: %d kept list(s) published again",
                         len(restored))

    def _resign(self, topic, row):
        payload = self.store.payload(topic, row["version"])
        if payload is None:
            return  # changed meanwhile: the next pass sees the new one
        body = json.loads(payload)["body"]
        version = self.col.storage.next_publish_version(topic)
        new = wire.sign_envelope(self.key, row["kind"], version, body, target=row["target"], ttl_s=row["ttl_s"])
        if not self.store.replace(topic, row["version"], version, new):
            return  # another collector or a command changed it first
        self.counters["refreshed"] += 1
        log.info("%s on %s re-signed as version %d (was %d, issued %s)", row["kind"], topic, version, row["version"],
                 row["issued"])
        self._publish(topic, version, new)

    def _publish(self, topic, version, payload):
        """Publish `payload` retained on `topic` once per connection; True once the broker confirmed it."""
        client, gen = self.col.client, self.col._gen
        if client is None:
            return False
        sent = self._inflight.get(topic)
        if sent is not None and sent[0] == version and sent[1] == gen and not sent[2].is_published():
            return False  # sent on this connection, not confirmed yet: not again
        if sent is None or sent[0] != version or sent[1] != gen:
            data = payload.encode("utf-8") if isinstance(payload, str) else payload
            info = client.publish(topic, data, qos=1, retain=True)
            self._inflight[topic] = (version, gen, info)
            try:
                info.wait_for_publish(10.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("publishing on %s: %s", topic, exc)
            if not info.is_published():
                self.counters["publish_failures"] += 1
                log.warning("version %d on %s not confirmed by the broker within 10 s (rc %s); waiting for it",
                            version, topic, info.rc)
                return False
        self._inflight.pop(topic, None)
        self.store.mark_published(topic, version, f"collector {self.cid}")
        self.counters["published"] += 1
        log.info("published version %d on %s (retained)", version, topic)
        return True
