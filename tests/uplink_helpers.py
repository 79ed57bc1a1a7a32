"""Helpers of the uplink tests: terminal configs, an outbox filler, a test ack-er and a watcher.

`Acker` plays the collector's part on the wire (used where the real collector is not the
subject): it receives the events of every device, keeps the seqs it saw and, while
`acking` is set, answers with the highest seq it has contiguously, as the collector does.
`Watcher` subscribes to topics and keeps what arrives (retained status, acks, refusals).
"""

import threading
import time
import uuid

import paho.mqtt.client as mqtt

from chot import wire
from chot.config import validate
from device.config import SCHEMA


def terminal_cfg(tmp_path, port, device_id="term-1", sections=None, **mqtt_keys):
    """A validated terminal config for tests: small timeouts, outbox in tmp_path; `sections` adds others."""
    keys = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": port,
        "keepalive_s": 5,
        "ack_timeout_s": 30.0,
        "status_interval_s": 60.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 1.0,
    }
    keys.update(mqtt_keys)
    data = {
        "device": {"id": device_id, "checkpoint": "cp-gate-1", "direction": "in"},
        "outbox": {"path": str(tmp_path / f"{device_id}-outbox.db"), "synchronous": "NORMAL"},
        "mqtt": keys,
    }
    for name, values in (sections or {}).items():
        data.setdefault(name, {}).update(values)
    return validate(data, SCHEMA)


def event_fields(i=0, decision="PASS"):
    """The fields of a v2 event without a personal part (`i` is unused, kept for the callers)."""
    return {
        "source": "camera",
        "format": "plain",
        "decision": decision,
        "reason": "ok" if decision == "PASS" else "unsigned",
        "verified": False,
        "sealed": None,
    }


def fill(outbox, n, start=0):
    """Append `n` events; return the last one."""
    ev = None
    for i in range(start, start + n):
        ev = outbox.append(event_fields(i))
    return ev


def wait_until(cond, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _client(name):
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )


class Acker:
    """A stand-in collector: records event messages and acks the highest contiguous seq."""

    def __init__(self, port, acking=True, ignore_first=False):
        self.port = port
        self.acking = acking
        self.ignore_first = ignore_first  # do not ack a seq the first time it arrives
        self.lock = threading.Lock()
        self.messages = []  # [(device, [seqs])] in arrival order
        self.seen = {}  # device -> {seq: times received}
        self.stored = {}  # device -> set of seqs
        self.subscribed = threading.Event()
        self.client = _client("acker")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)

    def start(self):
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(5), "acker did not subscribe"
        return self

    def _on_connect(self, client, userdata, flags, rc, props):
        client.subscribe("chot/v1/dev/+/event", qos=1)

    def _on_message(self, client, userdata, msg):
        device = wire.device_from_topic(msg.topic)
        good, problems = wire.decode_event_message(msg.topic, msg.payload)
        assert not problems, problems
        seqs = [e.seq for e in good]
        with self.lock:
            self.messages.append((device, seqs))
            seen = self.seen.setdefault(device, {})
            stored = self.stored.setdefault(device, set())
            fresh = False
            for s in seqs:
                seen[s] = seen.get(s, 0) + 1
                fresh = fresh or seen[s] == 1
            if not self.acking or (self.ignore_first and fresh):
                return
            stored.update(seqs)
            top = 0
            while top + 1 in stored:
                top += 1
        if top:
            client.publish(wire.ack_topic(device), wire.encode_ack(device, top), qos=1)

    def ack_seen(self, device):
        """Store everything seen so far and ack it (turns acking on)."""
        with self.lock:
            self.acking = True
            stored = self.stored.setdefault(device, set())
            stored.update(self.seen.get(device, {}))
            top = 0
            while top + 1 in stored:
                top += 1
        self.client.publish(wire.ack_topic(device), wire.encode_ack(device, top), qos=1)
        return top

    def seqs(self, device):
        with self.lock:
            return [s for d, seqs in self.messages if d == device for s in seqs]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class Watcher:
    """Subscribes to `topics` and keeps the last payload of each topic and every message."""

    def __init__(self, port, topics):
        self.port = port
        self.topics = list(topics)
        self.last = {}
        self.all = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = _client("watcher")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.last[msg.topic] = msg.payload
            self.all.append((msg.topic, msg.payload, msg.retain))

    def start(self):
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(5), "watcher did not subscribe"
        return self

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def publish(port, topic, payload, retain=True):
    """Publish one message (QoS 1) from a short-lived client and wait for its PUBACK."""
    c = _client("pub")
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


class ResendingPublisher:
    """A terminal's uplink in miniature: publishes events and resends the unacked ones.

    `send(events)` publishes wire Events (QoS 1, `per_message` a message); every `ack_timeout`
    seconds without the ack covering everything sent, everything above the ack is sent again,
    as a terminal's outbox does. `acked` is the highest ack seen; `resends` counts resent events.
    With `public_key` only acks that verify count (the others are kept in `bad_acks`).
    """

    def __init__(self, port, device_id, ack_timeout=1.0, per_message=10, public_key=None):
        self.port, self.device_id = port, device_id
        self.ack_timeout, self.per_message, self.public_key = ack_timeout, per_message, public_key
        self.lock = threading.Lock()
        self.events = {}  # seq -> Event
        self.acked = 0
        self.acks = []  # (monotonic time, Ack)
        self.bad_acks = []
        self.resends = 0
        self.last_progress = time.monotonic()
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(wire.ack_topic(device_id), qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_ack
        self.client.reconnect_delay_set(0.1, 0.5)
        self._thread = threading.Thread(target=self._resend_loop, daemon=True)

    def start(self):
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(5), "publisher did not subscribe"
        self._thread.start()
        return self

    def _on_ack(self, client, userdata, msg):
        try:
            ack = wire.decode_ack(msg.payload, self.public_key)
        except wire.WireError as exc:
            self.bad_acks.append(exc.code)
            return
        with self.lock:
            self.acks.append((time.monotonic(), ack))
            if ack.seq > self.acked:
                self.acked = ack.seq
                self.last_progress = time.monotonic()

    def _publish(self, events):
        for i in range(0, len(events), self.per_message):
            self.client.publish(wire.event_topic(self.device_id), wire.encode_events(events[i : i + self.per_message]),
                                qos=1)

    def send(self, events):
        with self.lock:
            for e in events:
                self.events[e.seq] = e
        self._publish(list(events))

    def _resend_loop(self):
        while not self._stop.wait(0.1):
            with self.lock:
                if time.monotonic() - self.last_progress < self.ack_timeout:
                    continue
                todo = [e for s, e in sorted(self.events.items()) if s > self.acked]
                self.last_progress = time.monotonic()
            if todo:
                self.resends += len(todo)
                self._publish(todo)

    def all_acked(self):
        with self.lock:
            return bool(self.events) and self.acked >= max(self.events)

    def close(self):
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
