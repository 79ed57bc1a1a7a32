"""The terminal's MQTT link to the collector: publishes the outbox, takes acks and signed updates.

`Link(cfg, outbox, on_update=None, status_source=None, on_health=None)` speaks MQTT 5 through
paho-mqtt 2.x (client id = device id, clean start off with a session expiry, QoS 1, TLS with
a client certificate or a username and password file, reconnect with jittered backoff).

Delivery (docs/uplink.md):

- The outbox is the queue. One worker thread publishes from it in seq order, one event per
  message or up to `mqtt.batch` events per message while a backlog drains, only while
  connected, with at most `mqtt.inflight` messages awaiting the broker's PUBACK and at most
  `inflight * batch` events awaiting the collector's ack. paho's own offline queue is not
  used as a queue (it is bounded and only holds what is in flight).
- An event is marked delivered only when the collector's ack (`chot/v1/dev/<id>/ack`, the
  highest seq stored contiguously) covers it, never on PUBACK. What is not acked within
  `mqtt.ack_timeout_s` is sent again from the last acked seq (the collector stores a
  duplicate once); repeated timeouts back off up to 8 times the timeout.
- After each reconnect everything not acked is sent again from the last acked seq, and so it is
  (at most once per `PRESENCE_RESEND_MIN_S`) when a collector says it is back: its presence
  hint (`wire.presence_topic`, under the broadcasts) with `online: true`. No ack timeout to wait.
- Reconnects are spread: decorrelated jitter between `mqtt.reconnect_min_s` and
  `mqtt.reconnect_max_s` (`Backoff`), set on paho before each of its attempts, so that a
  fleet does not retry at the same instants after an outage.
- Acks are accepted only from the collector. With `mqtt.collector_public_key` pinned an ack
  must carry the collector's signature (`wire.decode_ack(payload, key)`); without one unsigned
  acks are taken (logged once: acks are then not authenticated). A refused ack is counted by its
  `WireError.code` (`bad_ack_codes`). Whatever the ack says, nothing beyond the highest seq
  this terminal has published is marked: an ack beyond it is ignored (logged, `ack_beyond_sent`).
  A signed ack beyond the outbox's last seq (the outbox was replaced: the collector holds seqs
  this file never gave) moves the outbox's next seq past it, so that no seq is used twice.
- An accepted ack's `time` that answers a message of this connection becomes the clock's time
  anchor (`device.clock.set_ref`, with the monotonic time when the ack arrived): later events
  carry it as `clock.ref`. An ack queued at the broker while the terminal was away is not used.
- Events go out as the outbox stored them (`Outbox.pending_raw`, the JSON of a `wire.Event`:
  the personal part is sealed, the terminal cannot read it); the status is a `wire.Status`
  (counts and fleet health only, checked before it is sent).

The paho callbacks only hand work to the worker (a queue and an event); the worker also
refreshes the retained status (`chot/v1/dev/<id>/status`, every `mqtt.status_interval_s`
and on connect; the last will says offline), applies signed updates (`device.uplink.updates`)
through `on_update(kind, body, version)`, purges delivered events past their retention and
reports the link's health through `on_health("uplink_down" | "ok")` once it has been down
longer than `mqtt.down_alarm_min`. The frame loop only ever calls `wake()`.
"""

import logging
import queue
import random
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from chot import __version__, wire
from chot.errors import OutboxError
from chot.mqtt import MqttSettings, Will, build_client, connect_async
from device import clock
from device.uplink.updates import UpdateStore, load_public_key, store_path_for

log = logging.getLogger(__name__)

TICK_S = 0.25  # the worker looks at timers at least this often
PURGE_INTERVAL_S = 600.0  # delivered events past their retention are deleted this often
RESEND_BACKOFF_MAX = 8  # consecutive ack timeouts stretch the timeout up to this factor
CLOSE_WAIT_S = 2.0  # how long close() waits for the offline status to reach the broker
PRESENCE_RESEND_MIN_S = 2.0  # a collector's "online" presence makes a resend at most this often
PRESENCE_PREFIX = wire.presence_topic("")  # chot/v1/broadcast/presence/<collector id>


class Backoff:
    """Reconnect delays with decorrelated jitter: each one uniform in [min_s, 3 * previous], at most max_s.

    `next()` gives the delay before the next attempt, `reset()` after a successful connection.
    Two terminals (each with its own random source) retry at different instants.
    """

    def __init__(self, min_s, max_s, rng=None):
        self.min_s = float(min_s)
        self.max_s = max(float(max_s), self.min_s)
        self.rng = rng or random.Random()
        self._prev = self.min_s

    def next(self):
        delay = min(self.max_s, self.rng.uniform(self.min_s, self._prev * 3.0))
        self._prev = max(delay, self.min_s)
        return delay

    def reset(self):
        self._prev = self.min_s


def _age_s(when, now=None):
    """Seconds since `when` (ISO UTC text, epoch seconds or datetime); None when unknown."""
    if when is None:
        return None
    now = now or datetime.now(UTC)
    try:
        if isinstance(when, int | float):
            dt = datetime.fromtimestamp(when, UTC)
        elif isinstance(when, str):
            dt = datetime.fromisoformat(when.replace("Z", "+00:00"))
        elif isinstance(when, datetime):
            dt = when
        else:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return round(max(0.0, (now - dt).total_seconds()), 3)


def _iso_now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Link:
    """The MQTT link of one terminal. `start()`, `wake()` after each append, `close()`."""

    def __init__(self, cfg, outbox, on_update=None, status_source=None, on_health=None):
        self.cfg = cfg
        m = cfg.mqtt
        self.m = m
        self.device_id = cfg.device.id
        self.outbox = outbox
        self.on_update = on_update
        self.status_source = status_source
        self.on_health = on_health
        self.inflight = int(m.inflight)
        self.batch = int(m.batch)
        self.window = self.inflight * self.batch  # events sent but not acked by the collector
        self.ack_timeout_s = float(m.ack_timeout_s)
        self.topic_event = wire.event_topic(self.device_id)
        self.topic_status = wire.status_topic(self.device_id)
        self.topic_ack = wire.ack_topic(self.device_id)
        self.topic_config = wire.config_topic(self.device_id)
        self.topic_broadcast = wire.broadcast_topic("#")  # covers the presence hints (wire.presence_topic)

        public_key = load_public_key(m.collector_public_key) if m.collector_public_key else None
        if public_key is None:
            log.warning("no collector public key pinned (mqtt.collector_public_key): config and lists are ignored")
        self.ack_key = public_key  # acks must be signed by the collector when it is pinned
        self._warned_unsigned = False
        self.backoff = Backoff(m.reconnect_min_s, m.reconnect_max_s)
        # the time floor kept in the outbox: expiry and replay of signed updates, signed ack times
        self.floor = getattr(outbox, "time_floor", None)
        self.updates = UpdateStore(store_path_for(cfg.outbox.path), public_key, self.device_id, floor=self.floor)

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._inbox = queue.SimpleQueue()  # (topic, payload) from on_message
        self._lock = threading.Lock()  # connection state shared with paho's thread
        self._ack_cond = threading.Condition()
        self._connected = False
        self._gen = 0  # connection generation, bumped by on_connect
        self._down_since = time.monotonic()
        self._health = None
        self._worker = None
        self._started = False
        self._closed = False

        stats = outbox.stats()
        self._acked = int(stats.get("delivered_upto") or 0)  # the collector's ack, as persisted
        self._sent = self._acked  # highest seq handed to paho in this round
        # The highest seq this terminal has published (or that was acked before this process): no
        # ack can mark beyond it. Derived, not persisted: everything <= delivered_upto was sent.
        self._published = self._acked
        self._pub_gen = set()  # the last seq of each message published on this connection, not yet acked
        self._last_resend = 0.0  # monotonic time of the last resend of everything not acked
        self._presence_due = None  # a collector came back during the rate limit: resend at this time
        self._inflight = []  # [(MQTTMessageInfo, last seq)] awaiting PUBACK
        self._deadline = None  # when the collector's ack is overdue
        self._timeouts = 0  # consecutive ack timeouts
        self.counters = {"messages": 0, "events_sent": 0, "resends": 0, "acks": 0, "refused": 0, "updates": 0,
                         "updates_ignored": 0, "bad_acks": 0, "bad_status": 0, "ack_beyond_sent": 0,
                         "presence_resends": 0, "reconnect_delays": 0}
        self.bad_ack_codes = {}  # WireError.code -> refused acks

        self.client = self._make_client()
        self._replay_updates()

    # --- building the client --------------------------------------------------------------------

    def _mqtt_settings(self):
        """The link's connection, for the one client factory (chot.mqtt): client id = device id,
        clean start off with a session expiry, the offline status as last will."""
        m = self.m
        return MqttSettings.from_section(
            m, client_id=self.device_id, default_username=self.device_id, clean_start=False,
            will=Will(self.topic_status, wire.offline_status(self.device_id)),
            max_inflight=self.inflight,
            # paho's queue only ever holds what is in flight (plus status messages): the outbox is the queue.
            max_queued=2 * self.inflight + 10,
            logger=__name__ + ".paho",
        )

    def _make_client(self):
        self.mqtt_settings = self._mqtt_settings()
        client = build_client(self.mqtt_settings)
        self._next_reconnect_delay(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _replay_updates(self):
        """Hand the updates kept from earlier runs to the daemon: it decides with what it last had."""
        for kind, body, version in self.updates.applied():
            if self.on_update is None:
                continue
            try:
                self.on_update(kind, body, version)
                log.info("kept %s version %d applied at start", kind, version)
            except Exception as exc:
                log.error("kept %s version %d could not be applied: %s", kind, version, exc)

    # --- life cycle -----------------------------------------------------------------------------

    def start(self):
        """Connect in the background and start the worker; returns at once."""
        if self._started:
            return self
        self._started = True
        connect_async(self.client, self.mqtt_settings)
        self.client.loop_start()
        self._worker = threading.Thread(target=self._run, name=f"chot-link-{self.device_id}", daemon=True)
        self._worker.start()
        log.info("uplink to %s:%d started (tls %s)", self.m.host, self.m.port, "on" if self.m.tls else "off")
        return self

    def wake(self):
        """A new event is in the outbox: publish it now (never blocks)."""
        self._wake.set()

    def close(self):
        """Publish the offline status, disconnect and stop the threads (the outbox stays open)."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(10)
        if self._started:
            if self.connected:
                try:
                    info = self.client.publish(
                        self.topic_status, self._status_payload(online=False), qos=1, retain=True
                    )
                    info.wait_for_publish(CLOSE_WAIT_S)
                except (ValueError, RuntimeError) as exc:
                    log.warning("offline status not sent: %s", exc)
            self.client.disable_logger()  # paho logs an ERROR when its loop sees the closed socket
            self.client.disconnect()
            self.client.loop_stop()
        log.info("uplink closed; acked up to seq %d", self._acked)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- state for the daemon and tests ---------------------------------------------------------

    @property
    def connected(self):
        with self._lock:
            return self._connected

    @property
    def acked_seq(self):
        """The highest seq the collector has acked (every event up to it is delivered)."""
        with self._ack_cond:
            return self._acked

    def uplink_down_for(self):
        """Seconds the link has been down (0 while connected)."""
        with self._lock:
            return 0.0 if self._connected else time.monotonic() - self._down_since

    def wait_acked(self, seq, timeout):
        """Block until the collector's ack covers `seq` or `timeout` passes; return whether it did."""
        deadline = time.monotonic() + timeout
        with self._ack_cond:
            while self._acked < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ack_cond.wait(left)
            return True

    def wait_connected(self, timeout):
        """Block until connected or `timeout` passes; return whether it is connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected:
                return True
            time.sleep(0.02)
        return self.connected

    # --- paho callbacks (paho's thread): hand work over, nothing more ---------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error(
                "the broker refused the connection: %s; check the device's certificate or password "
                "and the broker's ACL", reason_code
            )
            return
        with self._lock:
            self._connected = True
            self._gen += 1
        self.backoff.reset()
        log.info("uplink connected (session present: %s)", flags.session_present)
        self._wake.set()

    def _next_reconnect_delay(self, client=None):
        """Tell paho the (jittered) delay before its next attempt: it waits `min_delay` after a reset."""
        delay = self.backoff.next()
        (client or self.client).reconnect_delay_set(min_delay=delay, max_delay=delay)
        self.counters["reconnect_delays"] += 1
        return delay

    def _on_connect_fail(self, client, userdata):
        delay = self._next_reconnect_delay(client)
        log.debug("uplink: cannot reach the broker; next attempt in %.2f s", delay)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            was = self._connected
            self._connected = False
            if was:
                self._down_since = time.monotonic()
        if not self._stopping.is_set():
            delay = self._next_reconnect_delay(client)
            if was:
                log.warning("uplink lost (%s); events stay in the outbox and go out after reconnecting "
                            "(next attempt in %.2f s)", reason_code, delay)
        self._wake.set()

    def _on_message(self, client, userdata, message):
        # when it arrived; a retained message (sent on subscribing) says what was, not what happens
        self._inbox.put((message.topic, message.payload, clock.mono_ns(), bool(message.retain)))
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        if reason_code.is_failure:
            self.counters["refused"] += 1
            log.warning(
                "the broker refused a publish (%s): check the broker ACL allows chot/v1/dev/%s/#",
                reason_code, self.device_id,
            )
        self._wake.set()

    # --- the worker -----------------------------------------------------------------------------

    def _run(self):
        handled_gen = 0
        next_status = 0.0
        next_purge = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._take_inbox()
                now = time.monotonic()
                with self._lock:
                    connected, gen = self._connected, self._gen
                if connected:
                    if gen != handled_gen:
                        handled_gen = gen
                        self._connected_work()
                        next_status = 0.0
                    if now >= next_status:
                        self._publish_status()
                        next_status = now + self.m.status_interval_s
                    self._check_ack_timeout(now)
                    self._check_presence_due(now)
                    self._publish_pending(now)
                if now >= next_purge:
                    next_purge = now + PURGE_INTERVAL_S
                    self._purge()
                self._check_health()
            except OutboxError as exc:  # e.g. a full disk while marking an ack: a later ack covers it
                log.error("uplink: the outbox failed (%s); retrying", exc)
                self._stopping.wait(1.0)
            except Exception:  # the link must survive anything and keep the outbox intact
                log.exception("uplink worker error; retrying")
                self._stopping.wait(1.0)

    def _connected_work(self):
        """After each (re)connect: subscribe, and send again everything not acked."""
        self.client.subscribe(
            [(self.topic_ack, 1), (self.topic_config, 1), (self.topic_broadcast, 1)]
        )
        self._inflight = []
        self._pub_gen = set()
        if self._sent > self._acked:
            log.info("reconnected: sending again from seq %d", self._acked + 1)
        self._resend_all(time.monotonic())

    def _resend_all(self, now):
        """Send again everything not acked, from the last acked seq (the collector stores a duplicate once)."""
        self._sent = self._acked
        self._deadline = None
        self._timeouts = 0
        self._last_resend = now

    def _take_inbox(self):
        while True:
            try:
                topic, payload, arrived_ns, retained = self._inbox.get_nowait()
            except queue.Empty:
                return
            if topic == self.topic_ack:
                self._take_ack(payload, arrived_ns)
            elif topic.startswith(PRESENCE_PREFIX):
                self._take_presence(topic, payload, retained)
            else:
                self._take_update(topic, payload)

    def _refuse_ack(self, code, message):
        self.counters["bad_acks"] += 1
        self.bad_ack_codes[code] = self.bad_ack_codes.get(code, 0) + 1
        log.warning("ack refused (%s): %s", code, message)

    def _take_ack(self, payload, arrived_ns=None):
        try:
            ack = wire.decode_ack(payload, self.ack_key)
        except wire.WireError as exc:
            self._refuse_ack(exc.code, exc)
            return
        if ack.device_id != self.device_id:
            self._refuse_ack("wrong_device", f"ack for device {ack.device_id!r}, not {self.device_id!r}")
            return
        if self.ack_key is None and not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning("acks are not authenticated (no mqtt.collector_public_key pinned): on a broker without "
                        "an ACL anyone could ack this terminal's events")
        seq = ack.seq
        if seq > self._published:
            # Never mark what this terminal has not sent: a forged ack (or a stale one from before a
            # restart, whose resend has not reached it yet) is ignored as a whole.
            log.warning("ack for seq %d ignored: this terminal has published only up to seq %d", seq,
                        self._published)
            if self.ack_key is not None and seq > self.outbox.last_seq:
                # Signed by the collector: it holds seqs this outbox never gave (the file was
                # replaced). Continue after them so that no seq is used twice.
                self.outbox.skip_to(seq)
            self.counters["ack_beyond_sent"] += 1
            return
        self.counters["acks"] += 1
        if ack.time is not None and arrived_ns is not None and any(s <= seq for s in self._pub_gen):
            # It answers a message of this connection: the collector's time is at most one round
            # trip older than its arrival (an ack queued while the terminal was away would not be).
            clock.set_ref(ack.time, arrived_ns)
            if self.ack_key is not None and self.floor is not None:
                self.floor.note_collector_time(ack.time)  # signed: it may correct a floor set too far ahead
        if seq <= self._acked:
            return
        self.outbox.mark_delivered(seq)
        with self._ack_cond:
            self._acked = seq
            self._ack_cond.notify_all()
        self._pub_gen = {s for s in self._pub_gen if s > seq}
        self._sent = max(self._sent, seq)
        self._timeouts = 0
        self._deadline = time.monotonic() + self.ack_timeout_s if self._sent > self._acked else None

    def _take_presence(self, topic, payload, retained=False):
        """A collector's presence hint: when one is back online, send what is not acked at once."""
        try:
            collector_id, online = wire.decode_presence(payload)
        except wire.WireError as exc:
            log.debug("presence hint ignored (%s) on %s", exc.code, topic)
            return
        if not online and retained:
            return  # an old news: the reconnect's own resend covers it
        if not online:
            # a collector that died may have held events it never stored (its share of a shared
            # subscription): send what is not acked again, so that the members left take it now
            log.info("collector %s is offline: sending again what is not acked, for the others", collector_id)
        now = time.monotonic()
        if self._sent <= self._acked:
            return
        if now - self._last_resend < PRESENCE_RESEND_MIN_S:
            # a resend just went out, maybe before this collector had subscribed (a broker restart:
            # the terminal is back first): send again once the rate limit allows, not after the ack timeout
            self._presence_due = self._last_resend + PRESENCE_RESEND_MIN_S
            return
        if online:
            log.info("collector %s is back: sending again from seq %d", collector_id, self._acked + 1)
        self.counters["presence_resends"] += 1
        self._resend_all(now)

    def _check_presence_due(self, now):
        if self._presence_due is None or now < self._presence_due:
            return
        self._presence_due = None
        if self._sent > self._acked:
            log.info("a collector came back: sending again from seq %d", self._acked + 1)
            self.counters["presence_resends"] += 1
            self._resend_all(now)

    def _take_update(self, topic, payload):
        offered = self.updates.offer(topic, payload)
        if offered is None:
            self.counters["updates_ignored"] += 1
            return
        kind, body, version = offered
        if self.on_update is not None:
            try:
                self.on_update(kind, body, version)
            except Exception as exc:
                self.updates.discard(kind)
                log.error("%s update version %d could not be applied: %s", kind, version, exc)
                return
        self.updates.commit(kind)
        self.counters["updates"] += 1

    def _check_ack_timeout(self, now):
        if self._deadline is None or now < self._deadline:
            return
        if self._sent <= self._acked:
            self._deadline = None
            return
        self._timeouts += 1
        self.counters["resends"] += 1
        log.warning(
            "the collector has not acked seq %d..%d in time; sending them again", self._acked + 1, self._sent
        )
        self._sent = self._acked
        self._deadline = None

    def _publish_pending(self, now):
        self._inflight = [(info, s) for info, s in self._inflight if not info.is_published()]
        while len(self._inflight) < self.inflight and self._sent - self._acked < self.window:
            if self._stopping.is_set() or not self.connected:
                return
            limit = min(self.batch, self.window - (self._sent - self._acked))
            rows = self.outbox.pending_raw(after_seq=self._sent, limit=limit)
            if not rows:
                return
            payload = wire.encode_events([raw for _seq, raw in rows])  # the stored JSON, as it is
            while len(payload) > wire.MAX_MESSAGE_BYTES and len(rows) > 1:
                rows = rows[: len(rows) // 2]
                payload = wire.encode_events([raw for _seq, raw in rows])
            info = self.client.publish(self.topic_event, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("publish deferred: %s", mqtt.error_string(info.rc))
                return
            last = rows[-1][0]
            self._inflight.append((info, last))
            self._sent = last
            self._published = max(self._published, last)
            self._pub_gen.add(last)
            self.counters["messages"] += 1
            self.counters["events_sent"] += len(rows)
            if self._deadline is None:
                factor = min(2**self._timeouts, RESEND_BACKOFF_MAX)
                self._deadline = now + self.ack_timeout_s * factor

    # --- status, purge, health ------------------------------------------------------------------

    def _status_fields(self):
        src = {}
        if self.status_source is not None:
            try:
                src = dict(self.status_source() or {})
            except Exception as exc:
                log.warning("status source failed: %s", exc)
        if "outbox_depth" not in src or "last_seq" not in src:
            stats = self.outbox.stats()
            src.setdefault("outbox_depth", stats.get("depth"))
            src.setdefault("oldest_undelivered_time", stats.get("oldest_undelivered_time"))
            src.setdefault("last_seq", stats.get("last_seq"))
        if "stale" not in src and self.floor is not None:  # no daemon (tools, tests): the floor's own view
            src["stale"] = self.floor.stale(max_list_age_h=getattr(self.cfg.policy, "max_list_age_h", 0.0))
            src["lists"] = self.floor.lists()
            src["clock_behind"] = self.floor.behind(datetime.now(UTC))
        if "clock_synced" not in src:
            from device.clock import clock_quality

            src["clock_synced"] = clock_quality()["synced"]
        age = src.get("oldest_undelivered_age_s")
        if age is None:
            age = _age_s(src.get("oldest_undelivered_time"))
        return {
            "device_id": self.device_id,
            "version": src.get("version") or __version__,
            "time": _iso_now(),
            "outbox_depth": src.get("outbox_depth"),
            "oldest_undelivered_age_s": age,
            "clock_synced": bool(src.get("clock_synced")),
            "last_scan": src.get("last_scan"),
            "passes": int(src.get("passes") or 0),
            "fails": int(src.get("fails") or 0),
            "last_seq": src.get("last_seq"),
            # the time floor's view (device/timefloor.py): lists past their age or expiry, the lists held,
            # and whether the wall clock reads before the floor
            "stale": src.get("stale"),
            "lists": src.get("lists"),
            "clock_behind": src.get("clock_behind"),
        }

    def _status_payload(self, online):
        """The retained status (typed `wire.Status`: counts and fleet health, nothing about anyone).

        Checked against its own type before it goes out: a field that does not fit is dropped
        (and logged) rather than sending a status the collector refuses.
        """
        fields = self._status_fields()
        payload = wire.encode_status(online=online, **fields)
        try:
            wire.decode_status(payload)
        except wire.WireError as exc:
            self.counters["bad_status"] += 1
            log.warning("status fields do not fit the contract (%s): sending the minimal status", exc)
            payload = wire.encode_status(online=online, device_id=self.device_id, time=fields["time"],
                                         outbox_depth=fields["outbox_depth"], last_seq=fields["last_seq"])
        return payload

    def _publish_status(self):
        info = self.client.publish(self.topic_status, self._status_payload(online=True), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.debug("status deferred: %s", mqtt.error_string(info.rc))

    def _purge(self):
        try:
            removed = self.outbox.purge()
            if removed:
                log.info("purged %s delivered events past their retention", removed)
        except Exception as exc:
            log.warning("outbox purge failed: %s", exc)

    def _check_health(self):
        down = self.uplink_down_for()
        state = "uplink_down" if down >= self.m.down_alarm_min * 60.0 else "ok"
        if state == self._health or (state == "ok" and self._health is None):
            return
        self._health = state
        if state == "uplink_down":
            log.error("uplink down for %.0f minutes; events are kept in the outbox", down / 60.0)
        else:
            log.warning("uplink back after an alarm")
        if self.on_health is not None:
            try:
                self.on_health(state)
            except Exception as exc:
                log.warning("health callback failed: %s", exc)
