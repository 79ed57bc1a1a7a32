"""Faults of issue 10 on the terminal's side, each against the real thing (Mosquitto, a small disk).

- forged acks (item 4): refused without the collector's signature, never marking beyond what was sent;
- a small disk (item 6): the byte cap counts the WAL, fails closed before the disk is full, recovers alone;
- reconnects (item 7): jittered, and a resend as soon as a collector says it is back;
- time anchors (item 9): events carry the collector's time of the latest ack and the monotonic time of it.
"""

import os
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from conftest import IN_CI
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from uplink_helpers import Acker, event_fields, fill, publish, terminal_cfg, wait_until

from chot import wire
from chot.errors import OutboxError, OutboxFull
from device import clock
from device.clock import clock_quality, utc_now_iso
from device.daemon import Terminal
from device.uplink.link import Backoff, Link
from device.uplink.outbox import Outbox

DEV = "term-1"


@pytest.fixture(autouse=True)
def _no_time_anchor():
    clock.clear_ref()
    yield
    clock.clear_ref()


def _collector_key(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "collector.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pub


def _now_iso():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- item 4: acks only from the collector, never beyond what was sent ------------------------------


def test_with_a_pinned_key_forged_acks_are_refused_and_counted_by_code(tmp_path, broker):
    key, pub = _collector_key(tmp_path)
    forger = ed25519.Ed25519PrivateKey.generate()
    cfg = terminal_cfg(tmp_path, broker.port, collector_public_key=str(pub), batch=10)
    with Outbox.from_config(cfg) as outbox, Acker(broker.port, acking=False) as acker:
        fill(outbox, 40)
        with Link(cfg, outbox) as link:
            assert wait_until(lambda: len(acker.seqs(DEV)) == 40)
            topic = wire.ack_topic(DEV)
            publish(broker.port, topic, wire.encode_ack(DEV, 1030), retain=False)  # the harness's forgery
            publish(broker.port, topic, wire.encode_ack(DEV, 40), retain=False)  # unsigned, in range
            publish(broker.port, topic, wire.encode_ack(DEV, 40, _now_iso(), forger), retain=False)
            assert wait_until(lambda: link.counters["bad_acks"] == 3)
            assert link.bad_ack_codes == {"unsigned_ack": 2, "bad_ack_signature": 1}
            time.sleep(0.3)
            assert link.acked_seq == 0 and outbox.delivered_upto == 0 and outbox.last_seq == 40
            # the collector's own signature frees them
            publish(broker.port, topic, wire.encode_ack(DEV, 40, _now_iso(), key), retain=False)
            assert link.wait_acked(40, 10)
            assert outbox.stats()["depth"] == 0
            # even signed, an ack beyond what was published marks nothing (the outbox was replaced:
            # its next seq moves past what the collector holds, so that no seq is used twice)
            publish(broker.port, topic, wire.encode_ack(DEV, 1030, _now_iso(), key), retain=False)
            assert wait_until(lambda: link.counters["ack_beyond_sent"] == 1)
            assert link.acked_seq == 40 and outbox.delivered_upto == 40
            assert outbox.last_seq == 1030


def test_without_a_key_a_forged_ack_beyond_what_was_sent_marks_nothing(tmp_path, broker, caplog):
    cfg = terminal_cfg(tmp_path, broker.port, batch=10)
    with Outbox.from_config(cfg) as outbox, Acker(broker.port, acking=False) as acker:
        fill(outbox, 40)
        with Link(cfg, outbox) as link:
            assert wait_until(lambda: len(acker.seqs(DEV)) == 40)
            publish(broker.port, wire.ack_topic(DEV), b'{"device_id":"term-1","seq":1030}', retain=False)
            assert wait_until(lambda: link.counters["ack_beyond_sent"] == 1)
            time.sleep(0.3)
            # before the fix: everything marked delivered and the seq jumped to 1031
            assert link.acked_seq == 0 and outbox.delivered_upto == 0 and outbox.stats()["depth"] == 40
            assert outbox.append(event_fields())["seq"] == 41
            assert "ignored: this terminal has published only up to seq 40" in caplog.text
            # an unsigned ack within what was sent is taken (no key pinned), and that is said once
            publish(broker.port, wire.ack_topic(DEV), wire.encode_ack(DEV, 40), retain=False)
            assert link.wait_acked(40, 10)
            publish(broker.port, wire.ack_topic(DEV), wire.encode_ack(DEV, 40), retain=False)
            assert wait_until(lambda: link.counters["acks"] == 2)
            assert caplog.text.count("acks are not authenticated") == 1


# --- item 6: a small disk -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs), mounted for the test and unmounted after it."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting a small tmpfs needs root, and under CI=true nothing may be skipped")
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _disk_size(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _fields(ct_chars):
    return {"checkpoint": "cp-gate-1", "direction": "in", "time": utc_now_iso(), "clock": clock_quality(),
            "source": "camera", "format": "native", "decision": "PASS", "reason": "ok", "verified": True,
            "sealed": {"kid": "0123456789abcdef", "epk": "A" * 43, "ct": "x" * ct_chars}}


def test_a_small_disk_fails_closed_before_it_is_full_and_recovers_by_itself(small_disk):
    size = _disk_size(small_disk)
    assert 1.5 * 2**20 <= size <= 2.5 * 2**20
    path = small_disk / "outbox.db"
    committed = []
    with Outbox(path, device_id=DEV, max_bytes=size, synchronous="NORMAL") as ob:
        rng = random.Random(6)
        refused = 0
        for _ in range(20000):
            try:
                committed.append(ob.append(_fields(rng.randint(200, 3000)))["seq"])
            except OutboxFull:  # never a disk-full OutboxError: the cap engages first
                refused += 1
                if refused == 5:
                    break
            wal = os.path.getsize(f"{path}-wal") if os.path.exists(f"{path}-wal") else 0
            assert wal <= ob.wal_limit  # the WAL is kept under its bound
        assert refused == 5 and len(committed) > 300
        assert os.statvfs(small_disk).f_bavail > 0  # the disk itself never filled
        assert ob.stats()["file_bytes"] <= size
        # everything committed is there, once, in order
        con = sqlite3.connect(path)
        assert [r[0] for r in con.execute("SELECT seq FROM event ORDER BY seq")] == committed
        con.close()
        # the collector acks everything: delivered events are given up at the cap, the WAL is
        # truncated, and appends succeed again without a restart, for as long as acks keep coming
        room = len(committed)
        for _round in range(4):
            ob.mark_delivered(ob.last_seq)
            for _ in range(room // 2):
                committed.append(ob.append(_fields(rng.randint(200, 3000)))["seq"])
        assert os.statvfs(small_disk).f_bavail > 0 and ob.stats()["depth"] == len(committed) - ob.delivered_upto
        assert committed == list(range(1, len(committed) + 1))


class CountingFeedback:
    def __init__(self):
        self.kinds = []

    def signal(self, kind):
        self.kinds.append(kind)

    def set_status(self, state):
        pass

    def close(self):
        pass


def test_on_a_small_disk_the_terminal_never_passes_without_a_record_and_recovers(tmp_path, small_disk):
    size = _disk_size(small_disk)
    cfg = terminal_cfg(tmp_path, 1, sections={"outbox": {"path": str(small_disk / "outbox.db"), "max_bytes": size}})
    feedback = CountingFeedback()
    with Outbox.from_config(cfg) as ob:
        term = Terminal(cfg, feedback=feedback, outbox=ob)
        events = []
        while feedback.kinds[-3:] != ["fault"] * 3:
            ev = term.record_manual()  # the guard's button: a PASS, when it can be recorded
            events += [ev] if ev is not None else []
            assert len(feedback.kinds) < 50000
        assert feedback.kinds.count("pass") == len(events) == len(ob.pending(0, 100000))
        assert term._faulted
        # delivered: the next scan is recorded and passes, no restart
        ob.mark_delivered(ob.last_seq)
        assert term.record_manual() is not None and feedback.kinds[-1] == "pass" and not term._faulted
        for _ in range(len(events) // 2):
            assert term.record_manual() is not None
        assert feedback.kinds.count("pass") == ob.last_seq
        try:
            ob.append({"source": "manual", "format": "none", "decision": "PASS", "reason": "manual"})
        except OutboxFull:
            pass
        except OutboxError as exc:  # pragma: no cover - what the fix prevents
            pytest.fail(f"disk full reached the outbox: {exc}")


# --- item 7: jittered reconnects, a resend when the collector is back -----------------------------


def test_reconnect_delays_are_jittered_within_bounds_and_differ_between_terminals():
    a, b = Backoff(1.0, 60.0), Backoff(1.0, 60.0)  # each terminal its own random source
    sa, sb = [a.next() for _ in range(12)], [b.next() for _ in range(12)]
    assert sa != sb
    assert all(1.0 <= d <= 60.0 for d in sa + sb)
    # unlike paho's own schedule (1, 2, 4, ... the same for everyone), a fleet's attempts are spread
    fleet = [Backoff(1.0, 60.0, random.Random(i)) for i in range(50)]
    schedules = [[f.next() for _ in range(12)] for f in fleet]
    assert all(1.0 <= d <= 60.0 for sched in schedules for d in sched)
    firsts = [sched[0] for sched in schedules]
    assert len(set(firsts)) == 50 and max(firsts) - min(firsts) > 1.5  # spread over [1, 3] s
    # ... and it does back off: late delays are long on average, some reach the maximum
    late = [sched[-1] for sched in schedules]
    assert sum(late) / len(late) > 15 and max(late) == 60.0
    a.reset()
    assert 1.0 <= a.next() <= 3.0


def test_the_link_gives_paho_a_new_jittered_delay_before_each_attempt(tmp_path):
    from servers import free_port

    cfg = terminal_cfg(tmp_path, free_port(), reconnect_min_s=0.1, reconnect_max_s=1.0)
    with Outbox.from_config(cfg) as outbox:
        links = [Link(cfg, outbox), Link(cfg, outbox)]
        try:
            for link in links:
                link.start()
            assert wait_until(lambda: all(lk.counters["reconnect_delays"] >= 6 for lk in links), timeout=15)
            delays = [lk.client._reconnect_min_delay for lk in links]
            assert all(0.1 <= d <= 1.0 for d in delays)
            schedules = []
            for lk in links:
                lk.backoff.reset()
                schedules.append([lk._next_reconnect_delay() for _ in range(8)])
            assert schedules[0] != schedules[1]
        finally:
            for link in links:
                link.close()


def test_a_collector_back_online_gets_everything_unacked_at_once(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port, ack_timeout_s=30.0)
    with Outbox.from_config(cfg) as outbox:
        with Link(cfg, outbox) as link:
            assert link.wait_connected(10)
            fill(outbox, 5)
            link.wake()
            assert wait_until(lambda: link._sent == 5)  # published while no collector listens: lost
            time.sleep(2.1)
            with Acker(broker.port) as acker:
                started = time.monotonic()
                publish(broker.port, wire.presence_topic("col-1"), wire.encode_presence("col-1", True, _now_iso()))
                assert link.wait_acked(5, 10)
                took = time.monotonic() - started
                assert took < 5.0, took  # well before the 30 s ack timeout
                assert link.counters["presence_resends"] == 1 and link.counters["resends"] == 0
                assert set(acker.seqs(DEV)) == {1, 2, 3, 4, 5}
                # an offline presence, a presence with nothing unacked, or a burst, send nothing more
                publish(broker.port, wire.presence_topic("col-1"), wire.encode_presence("col-1", False))
                publish(broker.port, wire.presence_topic("col-1"), wire.encode_presence("col-1", True))
                time.sleep(0.5)
                assert link.counters["presence_resends"] == 1 and link.counters["updates_ignored"] == 0


def test_presence_resends_are_rate_limited(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port, ack_timeout_s=30.0)
    with Outbox.from_config(cfg) as outbox, Acker(broker.port, acking=False) as acker:
        with Link(cfg, outbox) as link:
            assert link.wait_connected(10)
            fill(outbox, 3)
            link.wake()
            assert wait_until(lambda: len(acker.seqs(DEV)) == 3)
            time.sleep(2.1)
            for _ in range(5):
                publish(broker.port, wire.presence_topic("col-1"), wire.encode_presence("col-1", True),
                        retain=False)
            assert wait_until(lambda: len(acker.seqs(DEV)) == 6)
            time.sleep(0.5)
            assert link.counters["presence_resends"] == 1 and len(acker.seqs(DEV)) == 6
            # the four within the rate limit make ONE more resend when it ends, not four, not none
            assert wait_until(lambda: len(acker.seqs(DEV)) == 9, 5)
            time.sleep(2.5)
            assert link.counters["presence_resends"] == 2 and len(acker.seqs(DEV)) == 9


def test_a_collector_back_just_after_a_resend_gets_it_again_within_the_rate_limit(tmp_path, broker):
    """A broker restart: the terminal reconnects and resends first (nobody subscribed yet: dropped),
    the collector comes back a moment later. Its presence must bring a resend within
    PRESENCE_RESEND_MIN_S, not after the 30 s ack timeout (found by make faults)."""
    cfg = terminal_cfg(tmp_path, broker.port, ack_timeout_s=30.0)
    with Outbox.from_config(cfg) as outbox, Link(cfg, outbox) as link:
        assert link.wait_connected(10)
        fill(outbox, 3)
        link.wake()
        assert wait_until(lambda: link.counters["events_sent"] >= 3)  # sent while no collector listens
        broker.restart(kill=True)  # the terminal reconnects and resends at once, before any collector
        assert wait_until(lambda: link.counters["events_sent"] >= 6, 20)
        t0 = time.monotonic()
        with Acker(broker.port) as acker:
            publish(broker.port, wire.presence_topic("col-1"), wire.encode_presence("col-1", True), retain=False)
            assert link.wait_acked(3, 10)
            assert time.monotonic() - t0 < 8 and acker.seqs(DEV)


# --- item 9: events carry what re-anchors time -----------------------------------------------------


class TimedAcker:
    """A stand-in collector whose acks carry its time (and are signed when given a key)."""

    def __init__(self, port, key=None):
        self.key = key
        self.times = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tacker-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("chot/v1/dev/+/event", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.ready.wait(5)

    def _on_message(self, client, userdata, msg):
        good, _ = wire.decode_event_message(msg.topic, msg.payload)
        now = _now_iso()
        self.times.append(now)
        dev = good[-1].device_id
        client.publish(wire.ack_topic(dev), wire.encode_ack(dev, good[-1].seq, now, self.key), qos=1)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _parse(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_events_carry_the_collectors_time_of_the_latest_ack_even_with_a_wall_clock_days_off(tmp_path, broker):
    key, pub = _collector_key(tmp_path)
    cfg = terminal_cfg(tmp_path, broker.port, collector_public_key=str(pub))
    acker = TimedAcker(broker.port, key)
    try:
        with Outbox.from_config(cfg) as outbox, Link(cfg, outbox) as link:
            skew = timedelta(days=2.5)
            term = Terminal(cfg, outbox=outbox, link=link, now=lambda: datetime.now(UTC) - skew)
            first = term.record_manual()
            assert first["clock"].get("ref") is None  # nothing from the collector yet
            assert link.wait_acked(1, 10)
            t_ack = acker.times[-1]
            assert clock.get_ref()["time"] == t_ack
            ev = term.record_manual()
            ref = ev["clock"]["ref"]
            assert ref["time"] == t_ack and ref["mono_ns"] <= ev["clock"]["mono_ns"]
            assert wire.validate_event(ev) == []
            # the wall clock says 2.5 days ago; the anchor gives the true time of the decision
            claimed = _parse(ev["time"])
            anchored = _parse(ref["time"]) + timedelta(microseconds=(ev["clock"]["mono_ns"] - ref["mono_ns"]) / 1000)
            true_now = datetime.now(UTC)
            assert abs((true_now - claimed) - skew) < timedelta(seconds=5)
            assert abs(true_now - anchored) < timedelta(seconds=5)
            assert link.wait_acked(2, 10)
            assert clock.get_ref()["time"] == acker.times[-1]  # the latest ack's time
    finally:
        acker.close()


def test_an_ack_that_answers_nothing_sent_on_this_connection_gives_no_time_anchor(tmp_path):
    cfg = terminal_cfg(tmp_path, 1)
    with Outbox.from_config(cfg) as outbox:
        fill(outbox, 3)
        link = Link(cfg, outbox)  # not started: the ack path alone
        try:
            link._published = 3  # sent before a disconnect; this ack waited at the broker since
            link._take_ack(wire.encode_ack(DEV, 2, "2021-08-09T07:00:00Z"), clock.mono_ns())
            assert link.acked_seq == 2 and clock.get_ref() is None
            link._pub_gen = {3}  # a message of this connection, answered by the next ack
            arrived = clock.mono_ns()
            link._take_ack(wire.encode_ack(DEV, 3, "2021-08-09T07:00:05Z"), arrived)
            assert clock.get_ref() == {"time": "2021-08-09T07:00:05Z", "mono_ns": arrived}
            q = clock_quality()
            assert q["ref"]["mono_ns"] <= q["mono_ns"]
        finally:
            link.close()


def test_a_dead_collectors_last_will_brings_a_resend_to_the_members_left(tmp_path, broker):
    """Two collectors share the subscription; one dies holding events it never stored. Its last
    will (presence offline) makes the terminal send again at once, so the survivor takes them now
    rather than after the ack timeout (found by make faults: 30 s)."""
    cfg = terminal_cfg(tmp_path, broker.port, ack_timeout_s=30.0)
    with Outbox.from_config(cfg) as outbox, Link(cfg, outbox) as link:
        assert link.wait_connected(10)
        with Acker(broker.port, acking=False) as dead:  # received them, stored nothing
            fill(outbox, 3)
            link.wake()
            assert wait_until(lambda: len(dead.seqs(DEV)) == 3)
        time.sleep(2.1)  # past the resend rate limit
        with Acker(broker.port) as survivor:
            publish(broker.port, wire.presence_topic("col-2"), wire.encode_presence("col-2", False), retain=False)
            assert link.wait_acked(3, 8), "the survivor should have the events long before ack_timeout_s"
            assert survivor.seqs(DEV)
        # an offline presence that is only retained news (sent on subscribing) changes nothing
        before = link.counters["presence_resends"]
        link._take_presence(wire.presence_topic("col-3"), wire.encode_presence("col-3", False), retained=True)
        assert link.counters["presence_resends"] == before
