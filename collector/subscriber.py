"""The collector's MQTT subscriber: events in, batches stored, then acks out.

`Collector(cfg)` connects to the broker with paho-mqtt 2.x (MQTT 5, manual acks, a receive
maximum of at least the batch size) and subscribes to `$share/<group>/chot/v1/dev/+/event` (so
that several collectors split the load) and to `chot/v1/dev/+/status`. By default the session
is not persistent (clean start, `mqtt.session_expiry_s` 0): a broker routes a shared
subscription's share to every member's session, also to a dead member's persistent one, which
strands that share until it comes back; with no session a dead member leaves the group at once
and the others take everything. What the broker drops on the way is not lost: a terminal keeps
each event until the collector's ack and resends it. On connect the collector publishes its
presence (`chot/v1/broadcast/presence/<id>`, retained, online) with a last will saying
offline, so that terminals resend at once when a collector (re)appears.

`on_message` only queues the message, within bounds for every QoS (QoS 1: `qos1_queue_max`, room
for a broker that overshoots the receive maximum; QoS 0: `qos0_queue_max`; all payloads:
`queue_max_mb`; beyond, QoS 0 is dropped and QoS 1 acked and dropped, its terminal resends; counted
in `stats()["dropped"]`); one worker thread takes up to
`batch_size` messages or waits `batch_max_wait_ms`, validates each one, stores the good events
in ONE transaction, and only THEN acks the MQTT messages to the broker and publishes each
device's contiguous seq to `chot/v1/dev/<id>/ack`, with the collector's UTC time (terminals
re-anchor their clock on it) and, when `collector.signing_key` is set, signed with it (so that
only the collector can free a terminal's events). An event the database cannot take (found by
checking each value as the database takes it, or by the database refusing it: then the batch is
stored event by event) is left out and counted `unstorable`; the others are stored. A message
that the collector is killed before acking is resent (by the terminal, or by the broker with a
persistent session) and stored once (duplicates are ignored).

Each event's sealed part is opened at ingest with the collector's keys (`collector.key_dir`,
see collector/keys.py): the person id is indexed by HMAC, the fields encrypted at rest. An
event whose sealed part does not open (unknown key, damaged, moved from another event) is
still stored, with its clear part, the raw sealed part and the code (`sealed_errors` counts
them per code), never dropped.

A bad message (not JSON, too large, wrong types, another device's id) is counted per code
(`chot.wire.WireError.code`: not_json, too_large, bad_batch, bad_topic, invalid_event,
wrong_device; invalid_status, status_too_large for a status, which is also cleared at the broker
when it came retained), logged without personal data (once per device and reason, then in a
periodic summary: collector/rejectlog.py) and acked so it does not come back. An event claiming
another checkpoint or direction than its device is bound to is refused and quarantined; one of a
device not bound is refused unacked (collector/registry.py); it never stops the collector or the
good messages around it. Gaps in a device's seq that stay open longer than `gap_report_s` are
logged once. Old events are purged every `purge_interval_s` (`retention_days`) by a thread of
their own, in short batches, so ingest goes on. With `collector.signing_key` another thread keeps
the signed config and lists fresh and publishes what the commands hand over (collector/refresh.py).
`stats()` returns the counters.
"""

import logging
import queue
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime

from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.subscribeoptions import SubscribeOptions
from peewee import InterfaceError, OperationalError

from chot import wire
from chot.errors import CollectorError
from chot.mqtt import MqttSettings, Will, build_client, connect_async
from collector.config import client_id
from collector.keys import CollectorKeys
from collector.registry import Bindings
from collector.rejectlog import RejectLog
from collector.storage import Storage

log = logging.getLogger(__name__)
INGEST_WINDOW_S = 60.0  # stats()["ingest_per_s"] is over this long

EVENT_FILTER = "chot/v1/dev/+/event"
STATUS_FILTER = "chot/v1/dev/+/status"


def _now_iso():
    """The collector's UTC time as the wire writes it, to the millisecond."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def mqtt_settings(cfg, client_id_=None, **overrides):
    """The collector's connection from the `[mqtt]` section, for the one client factory (chot.mqtt)."""
    return MqttSettings.from_section(cfg.mqtt, client_id=client_id_ or client_id(cfg), **overrides)


def make_client(cfg, client_id_=None, manual_ack=False):
    """A paho MQTT 5 client set up from the `[mqtt]` section (TLS, credentials, reconnect delays)."""
    return build_client(mqtt_settings(cfg, client_id_, manual_ack=manual_ack))


class Collector:
    """Subscribes to the events of every device and stores them in batches; a context manager."""

    def __init__(self, cfg, storage=None, keys=None):
        self.cfg = cfg
        c = cfg.collector
        if keys is None and (storage is None or storage.keys is None):
            keys = CollectorKeys.from_dir(c.key_dir)  # fails here, saying what is missing
        self._own_storage = storage is None
        self.storage = storage or Storage(c.database, synchronous=c.sqlite_synchronous, keys=keys,
                                          retention_days=c.retention_days, future_skew_s=c.future_skew_s)
        if keys is not None:
            self.storage.keys = keys
        self.keys = self.storage.keys
        self.retention_days = c.retention_days
        self.purge_interval = c.purge_interval_s
        self._purger = None
        self._sealed_errors = Counter()
        self.batch_size = cfg.collector.batch_size
        self.max_wait = cfg.collector.batch_max_wait_ms / 1000.0
        self.gap_report_s = cfg.collector.gap_report_s
        # the ingest queue, bounded for every QoS (see _on_message): QoS 1 by qos1_queue_max (the broker
        # should send no more than the receive maximum unacked, but Mosquitto 2.0.11 overshoots it), QoS 0
        # by qos0_queue_max, and every queued payload together by queue_max_mb (the memory bound)
        self.qos1_queue_max = c.qos1_queue_max
        self.qos0_queue_max = c.qos0_queue_max
        self.queue_max_bytes = int(c.queue_max_mb * 1024 * 1024)
        self._q = queue.Queue(maxsize=self.qos1_queue_max + self.qos0_queue_max)
        self._queued = [0, 0]  # QoS 0, QoS >= 1 messages in the queue
        self._queued_bytes = 0
        self._queued_high = 0
        self._stop = threading.Event()
        self._counters = Counter()
        self._started = time.monotonic()
        self._ingest = deque(maxlen=4096)  # (monotonic, events stored) per batch: the ingest rate
        self._rejected = Counter()
        self._dropped = Counter()
        self._lock = threading.Lock()
        self._qlock = threading.Lock()
        self._reject_log = RejectLog(log, c.reject_log_interval_s, "rejected")
        self._seal_log = RejectLog(log, c.reject_log_interval_s, "stored, with its sealed part unopened,")
        self._drop_log = RejectLog(log, c.reject_log_interval_s, "dropped (ingest queue full)")
        self.bindings = Bindings(self.storage)
        self._gen = 0  # connection generation: message ids of an old connection are not acked
        # the connection generation on which the broker had no retained presence of this collector: it lost
        # its retained messages (or this is the first start); the list thread publishes the kept signed
        # lists again (collector/refresh.py). `_presence_gen`: the connection whose presence was seen.
        self.retained_lost_gen = 0
        self._presence_gen = 0
        self._reported_gaps = set()
        self._last_gap_check = 0.0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = None
        self._worker = None
        self._ack_key = None
        self.lists = None  # the ListRefresher, when there is a signing key
        self.forward = None  # the national system's forwarder (collector/forward.py), when forward.enabled
        if cfg.forward.enabled:
            from collector.forward import ForwardThread

            self.forward = ForwardThread(self.storage, cfg.forward)  # fails here, saying what is wrong
        if c.signing_key:
            from collector.signing import load_signing_key

            self._ack_key = load_signing_key(c.signing_key)  # fails here, saying what is wrong

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self):
        m = self.cfg.mqtt
        cid = self.cfg.collector.id
        # no persistent session (the default): a dead collector must not strand its share of the
        # shared subscription; with session_expiry_s > 0 (one collector alone) the session is kept
        self.mqtt_settings = mqtt_settings(
            self.cfg, manual_ack=True, max_inflight=100, clean_start=m.session_expiry_s == 0,
            will=Will(wire.presence_topic(cid), wire.encode_presence(cid, False)),
        )
        self.client = build_client(self.mqtt_settings)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_connect_fail = self._on_connect_fail
        connect_async(self.client, self.mqtt_settings)
        self._worker = threading.Thread(target=self._work, name="collector-worker", daemon=True)
        self._worker.start()
        self._purger = threading.Thread(target=self._purge_loop, name="collector-purge", daemon=True)
        self._purger.start()
        if self.forward is not None:
            self.forward.start()
        if self._ack_key is not None:  # signed lists kept fresh (collector/refresh.py)
            from collector.refresh import ListRefresher

            self.lists = ListRefresher(self, self._ack_key).start()
        self.client.loop_start()
        log.info("collector %s connecting to %s:%d", self.cfg.collector.id, m.host, m.port)
        return self

    def stop(self, timeout=10.0):
        """Store what is queued, ack it, then disconnect (what is left unacked comes back later)."""
        self._stop.set()
        if self._worker:
            self._worker.join(timeout)
            self._worker = None
        if self._purger:
            self._purger.join(timeout)
            self._purger = None
        if self.lists:
            self.lists.stop(timeout)
        if self.forward is not None:
            self.forward.stop(timeout)
        if self.client:
            try:
                if self.connected.is_set():
                    cid = self.cfg.collector.id
                    info = self.client.publish(wire.presence_topic(cid), wire.encode_presence(cid, False, _now_iso()),
                                               qos=1, retain=True)
                    try:
                        info.wait_for_publish(2.0)
                    except (RuntimeError, ValueError):
                        pass
                self.client.disconnect()
            finally:
                self.client.loop_stop()
            self.client = None
        if self._own_storage:
            self.storage.close()

    close = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait_subscribed(self, timeout=10.0):
        """Block until the subscriptions are in place; raise CollectorError if not in time."""
        if not self.subscribed.wait(timeout):
            m = self.cfg.mqtt
            raise CollectorError(f"no subscription at the broker {m.host}:{m.port} within {timeout} s: is it running?")

    def stats(self):
        """The counters: received, stored, duplicates, rejected (per reason), batches, acks ..."""
        with self._lock:
            out = dict(self._counters)
            out["rejected"] = dict(self._rejected)
            out["sealed_errors"] = dict(self._sealed_errors)
            out["dropped"] = dict(self._dropped)
            now = time.monotonic()
            recent = sum(n for t, n in self._ingest if now - t <= INGEST_WINDOW_S)
        # events stored per second over the last minute (or since the start, when shorter)
        out["ingest_per_s"] = round(recent / max(1.0, min(INGEST_WINDOW_S, now - self._started)), 2)
        out["uptime_s"] = round(now - self._started, 1)
        out["rejected_total"] = sum(out["rejected"].values())
        with self._qlock:
            out["queued"] = self._q.qsize()
            out["queued_qos0"], out["queued_qos1"] = self._queued
            out["queued_bytes"] = self._queued_bytes
            out["queued_high"] = self._queued_high
        out["queue_bounds"] = {"qos0": self.qos0_queue_max, "qos1": self.qos1_queue_max,
                               "bytes": self.queue_max_bytes}
        out["bound_devices"] = len(self.bindings)
        out["connected"] = self.connected.is_set()
        if self.lists is not None:
            out["lists"] = dict(self.lists.counters)
        if self.forward is not None:
            from collector.forward import state

            try:
                out["forward"] = {**state(self.storage), **self.forward.forwarder.stats()}
            except Exception as exc:  # the database is down: the counters say so, the rest of stats stands
                out["forward"] = {"error": f"{exc.__class__.__name__}: {exc}"[:200], **self.forward.forwarder.stats()}
        return out

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the connection: %s (check mqtt credentials and ACL)", reason_code)
            return
        self._gen += 1
        self._count("connects")
        self.connected.set()
        group = self.cfg.mqtt.shared_group
        opts = SubscribeOptions(qos=1)
        cid = self.cfg.collector.id
        # retain as published: a status that came retained is known as such (an invalid one is cleared).
        # Its own presence topic, before publishing on it: a broker that kept its retained messages sends
        # the last presence (online, or the will's offline) first, retained; one that lost them (restarted
        # without persistence) sends only the live one below (see _on_message, collector/refresh.py).
        client.subscribe([(f"$share/{group}/{EVENT_FILTER}", opts),
                          (STATUS_FILTER, SubscribeOptions(qos=1, retainAsPublished=True)),
                          (wire.presence_topic(cid), SubscribeOptions(qos=0))])
        client.publish(wire.presence_topic(cid), wire.encode_presence(cid, True, _now_iso()), qos=1, retain=True)
        log.info("connected (session present: %s)", flags.session_present)

    def _on_connect_fail(self, client, userdata):
        self._count("connect_failures")
        m = self.cfg.mqtt
        log.warning(
            "cannot reach the broker %s:%d; retrying with backoff (is it running? check [mqtt])", m.host, m.port
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("broker refused a subscription: %s (check the collector's ACL)", bad)
        else:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        self.subscribed.clear()
        if not self._stop.is_set():
            self._count("disconnects")
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client, userdata, msg):
        """Queue the message, within the bounds; never blocks paho's thread.

        A payload larger than any valid message is queued as its size only (`_Oversized`). Beyond a
        bound a QoS 0 message is dropped; a QoS 1 message is acked and dropped (its terminal sends it
        again: only the collector's own ack frees an event), so the broker's window never shrinks.
        Each drop is counted per reason and logged aggregated.
        """
        topic, payload, qos = msg.topic, msg.payload, msg.qos
        if topic == wire.presence_topic(self.cfg.collector.id):  # its own presence: did the broker keep it?
            if self._presence_gen != self._gen:
                self._presence_gen = self._gen
                if not msg.retain:
                    self.retained_lost_gen = self._gen
                    log.warning("the broker holds no retained presence of this collector (restarted without "
                                "persistence, or a first start): the signed lists are published again")
            return
        status = topic.endswith("/status")
        limit = wire.MAX_STATUS_BYTES if status else wire.MAX_MESSAGE_BYTES
        if len(payload) > limit:
            payload = _Oversized(len(payload))
        size = _size(payload)
        lane = 1 if qos else 0
        with self._qlock:
            if qos == 0 and self._queued[0] >= self.qos0_queue_max:
                why = "qos0_queue_full"
            elif qos and self._queued[1] >= self.qos1_queue_max:
                why = "qos1_queue_full"
            elif self._queued_bytes + size > self.queue_max_bytes:
                why = "queue_bytes_full"
            else:
                why = None
                self._queued[lane] += 1
                self._queued_bytes += size
                self._q.put_nowait((self._gen, topic, payload, msg.mid, qos, bool(msg.retain)))
                self._queued_high = max(self._queued_high, self._queued[0] + self._queued[1])
        if why is None:
            return
        with self._lock:
            self._dropped[why] += 1
        if qos:
            try:
                client.ack(msg.mid, qos)
            except Exception as exc:  # the connection is going: the broker sends it again
                log.debug("ack of a dropped message failed: %s", exc)
        self._drop_log.note(wire.device_from_topic(topic), why, f"QoS {qos}, {size} bytes", topic)

    # --- the worker ---------------------------------------------------------------------------

    def _count(self, name, n=1):
        with self._lock:
            self._counters[name] += n

    def _reject(self, reason, topic, detail):
        with self._lock:
            self._rejected[reason] += 1
        # topic names a device id (not personal data); detail names fields, never values; the first
        # of each device and reason is logged, the others counted in a periodic summary
        self._reject_log.note(wire.device_from_topic(topic), reason, detail, topic)

    def _work(self):
        try:
            with self.storage.connection():
                while not (self._stop.is_set() and self._q.empty()):
                    batch = self._take_batch()
                    if batch:
                        self._process(batch)
                    self._check_gaps()
                    for rl in (self._reject_log, self._seal_log, self._drop_log):
                        rl.flush()
                for rl in (self._reject_log, self._seal_log, self._drop_log):
                    rl.flush(force=True)
        except Exception:  # a bug must not leave the collector silently deaf
            log.exception("the collector worker stopped on an unexpected error")
            self._count("worker_crashes")
            raise

    def _take_batch(self):
        try:
            first = self._q.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._q.get(timeout=left))
            except queue.Empty:
                break
        with self._qlock:
            for _g, _t, payload, _m, qos, _r in batch:
                self._queued[1 if qos else 0] -= 1
                self._queued_bytes -= _size(payload)
        return batch

    def _ensure_bindings(self):
        """Read the device bindings (again every few seconds); False when stopping before they could be read:
        no event is stored unchecked."""
        delay = 0.5
        while not self.bindings.refresh():
            log.error("cannot read the device bindings (database unreachable); retrying in %.1f s", delay)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, 30.0)
            self._reconnect_db()
        return True

    def _process(self, batch):
        items = {}  # (device_id, seq) -> Item, so a batch holding a duplicate stores it once
        messages = []  # (gen, mid, qos, items of this message)
        statuses = {}
        self._count("received", len(batch))
        opener = self.keys.open
        doomed = []  # (device_id, seq, code, message, raw) of events that can never be stored
        if not self._ensure_bindings():
            return
        for gen, topic, payload, mid, qos, retained in batch:
            if topic.endswith("/status"):
                st = self._parse_status(topic, payload, retained)
                if st is not None:
                    statuses[st["device_id"]] = st
                messages.append((gen, mid, qos, []))
                continue
            try:
                if isinstance(payload, _Oversized):
                    raise wire.WireError(f"message too large: {payload.size} bytes > {wire.MAX_MESSAGE_BYTES}",
                                         "too_large")
                good, problems = wire.decode_event_message(topic, payload, unstorable=doomed)
            except wire.WireError as exc:
                self._reject(exc.code, topic, str(exc))
                good, problems = [], []
            for _i, code, message in problems:
                self._reject(code, topic, message)
            opened = []
            for ev in good:
                refused = self.bindings.check(ev)
                if refused is not None:
                    code, why = refused
                    self._reject(code, topic, why)
                    if code != "unregistered_device":  # never stored, its seq acked: the terminal stops
                        doomed.append((ev.device_id, ev.seq, code, why, wire.dumps(ev)))
                    continue
                item = opener(ev)
                if item.seal_error:
                    self._seal_failed(item.seal_error, topic)
                items[(ev.device_id, ev.seq)] = item
                opened.append(item)
            messages.append((gen, mid, qos, opened))
        n_good = sum(len(m[3]) for m in messages)
        acks = self._store(list(items.values()), messages, n_good, doomed)
        if acks is None:  # stopping while the database is down: leave the messages unacked
            return
        # the devices' acks first: two collectors sharing a database publish a device's acks in
        # commit order unless one lingers between its commit and its publish
        self._ack_devices(acks)
        for dev, st in statuses.items():
            self._store_status(dev, st)
        self._ack_mqtt(messages)
        self._count("batches")

    def _seal_failed(self, code, topic):
        with self._lock:
            self._sealed_errors[code] += 1
        self._seal_log.note(wire.device_from_topic(topic), code, "its sealed part does not open: kept sealed", topic)

    def _store(self, events, messages, n_good, doomed=()):
        """Store what can be stored, retrying while the database is unreachable; returns acks or None.

        Only an event the database cannot take is left out (counted `unstorable`, its message acked:
        it would never store); a connection error stores nothing and is retried, so that no message
        is acked before its good events are stored.
        """
        delay = 0.5
        while True:
            try:
                res = self.storage.store_events(events)
            except (OperationalError, InterfaceError) as exc:
                log.error("cannot store a batch (%s); retrying in %.1f s", exc.__class__.__name__, delay)
                self._count("store_retries")
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 30.0)
                self._reconnect_db()
                continue
            bad = {(it.event.device_id, it.event.seq) for it, _why in res.unstorable}
            for it, why in res.unstorable:
                self._reject("unstorable", wire.event_topic(it.event.device_id), f"seq {it.event.seq}: {why}")
            entries = [(d, s, code, msg, raw) for d, s, code, msg, raw in doomed]
            entries += [(it.event.device_id, it.event.seq, "unstorable", why, wire.dumps(it.event))
                        for it, why in res.unstorable]
            if entries:
                try:
                    qacks = self.storage.quarantine(entries)
                except (OperationalError, InterfaceError) as exc:
                    log.error("cannot quarantine %d unstorable events (%s): their seqs stay open", len(entries),
                              exc.__class__.__name__)
                    qacks = {}
                self._count("quarantined", len(entries))
                res = res._replace(acks={**res.acks, **{d: max(c, res.acks.get(d, 0)) for d, c in qacks.items()}})
            n_bad = sum(1 for m in messages for it in m[3] if (it.event.device_id, it.event.seq) in bad)
            self._count("stored", res.inserted)
            if res.inserted:
                with self._lock:
                    self._ingest.append((time.monotonic(), res.inserted))
            self._count("duplicates", n_good - n_bad - res.inserted)
            return res.acks

    def _reconnect_db(self):
        """A new connection for this thread (inside its Storage.connection(), which stays valid)."""
        try:
            self.storage.reconnect()
        except Exception as exc:  # still down: the next try says so
            log.debug("database reconnect failed: %s", exc)

    def _parse_status(self, topic, payload, retained=False):
        """The status as a dict of its known fields (chot.wire.Status: at most MAX_STATUS_BYTES), or None.

        An invalid status that the broker keeps retained (and serves to anyone who subscribes) is
        cleared: the collector publishes an empty retained message on its topic.
        """
        if not isinstance(payload, _Oversized) and not payload:
            return None  # a cleared retained message
        device = wire.device_from_topic(topic)
        try:
            if isinstance(payload, _Oversized):
                raise wire.WireError(f"status too large: {payload.size} bytes > {wire.MAX_STATUS_BYTES}", "too_large")
            st = wire.decode_status(payload)
            if st.device_id != device:
                raise wire.WireError("status names another device than its topic", "wrong_device")
        except wire.WireError as exc:
            code = {"too_large": "status_too_large", "wrong_device": "wrong_device"}.get(exc.code, "invalid_status")
            self._reject(code, topic, str(exc))
            if retained:
                self._clear_retained(topic)
            return None
        return {k: v for k, v in wire.to_dict(st).items() if v is not None}

    def _clear_retained(self, topic):
        """Publish an empty retained message on `topic`: the broker forgets what it kept there."""
        client = self.client
        if client is None:
            return
        info = client.publish(topic, b"", qos=1, retain=True)
        if info.rc == MQTT_ERR_SUCCESS:
            self._count("status_cleared")
            self._reject_log.note(wire.device_from_topic(topic), "status_cleared",
                                  "the invalid retained status was cleared at the broker", topic)
        else:
            log.error("cannot clear the invalid retained status on %s: rc %s (check the collector's ACL: it needs "
                      "write access to chot/v1/dev/+/status)", topic, info.rc)


    def _store_status(self, device, st):
        try:
            self.storage.update_status(device, st)
            self._count("status")
            log.info("device %s is %s", device, "online" if st["online"] else "offline")
        except Exception as exc:
            log.error("cannot record the status of %s: %s", device, exc.__class__.__name__)

    def _ack_mqtt(self, messages):
        client, gen = self.client, self._gen
        for g, mid, qos, _evs in messages:
            if qos == 0 or client is None:
                continue
            if g != gen:  # the connection that delivered it is gone: the broker sends it again
                self._count("acks_skipped_reconnect")
                continue
            client.ack(mid, qos)
            self._count("mqtt_acks")

    def _ack_devices(self, acks):
        client = self.client
        if client is None:
            return
        now = _now_iso()
        for dev, seq in acks.items():
            if seq > 0 and not dev.startswith("collector-"):
                client.publish(wire.ack_topic(dev), wire.encode_ack(dev, seq, time=now, private_key=self._ack_key),
                               qos=1)
                self._count("device_acks")

    def _check_gaps(self):
        now = time.monotonic()
        if now - self._last_gap_check < 1.0:
            return
        self._last_gap_check = now
        try:
            gaps = self.storage.open_gaps(self.gap_report_s)
        except Exception as exc:
            log.debug("gap check failed: %s", exc)
            return
        open_now = set()
        for dev, a, b, since in gaps:
            open_now.add((dev, a))
            if (dev, a) not in self._reported_gaps:
                self._reported_gaps.add((dev, a))
                self._count("gaps_reported")
                log.warning("device %s: events %d to %d missing since %s (gap still open)", dev, a, b, since)
        self._reported_gaps &= open_now  # a gap that closed and opens again is reported again

    def _purge_loop(self):
        """Purge events older than retention_days now, then every purge_interval_s (own connection)."""
        with self.storage.connection():
            while not self._stop.is_set():
                self.purge_now()
                if self._stop.wait(self.purge_interval):
                    return

    def purge_now(self):
        """One retention pass; returns its result (or None when it failed, which is logged and retried)."""
        try:
            res = self.storage.purge(self.retention_days)
        except Exception as exc:  # the database is down or busy: the next pass tries again
            log.error("retention purge failed (%s: %s); trying again in %.0f s", exc.__class__.__name__, exc,
                      self.purge_interval)
            self._count("purge_failures")
            self._reconnect_db()
            return None
        self._count("purges")
        self._count("purged_rows", res["rows"])
        self._count("purged_partitions", res["partitions"])
        return res


def run(cfg, http=True, ready=None):
    """Run the collector (and its HTTP API when enabled) until SIGTERM or SIGINT."""
    import signal

    stop = threading.Event()

    def _handler(signum, frame):
        stop.set()

    old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    api = None
    try:
        with Collector(cfg) as col:
            if http and cfg.http.enabled:
                from collector.web import WebServer as ApiServer

                api = ApiServer(cfg, col.storage, collector=col).start()
                log.warning("console and JSON API on %s/ (users: chot collector user add)", api.url)
            log.warning("collector %s running (database %s)", cfg.collector.id, col.storage.safe_url)
            if ready:
                ready(col)
            while not stop.wait(1.0):
                pass
            log.warning("stopping: %s", col.stats())
    finally:
        if api:
            api.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return 0


class _Oversized:
    """A payload larger than any valid message, queued as its size only."""

    __slots__ = ("size",)

    def __init__(self, size):
        self.size = size


def _size(payload):
    return payload.size if isinstance(payload, _Oversized) else len(payload)
