"""The collector's subscriber against a real Mosquitto: batches stored, acks, rejects, SIGKILL."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from chot import wire
from collector.storage import Storage
from collector.subscriber import Collector
from collector.testing import make_event

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Device:
    """A raw paho MQTT 5 client standing in for a terminal; records the acks it gets."""

    def __init__(self, broker, device_id, will=False):
        self.device_id = device_id
        self.acks = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        if will:
            self.c.will_set(wire.status_topic(device_id), wire.offline_status(device_id), qos=1, retain=True)
        self.c.on_message = lambda c, u, m: self.acks.append(wire.decode_ack(m.payload))
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        self.c.subscribe(wire.ack_topic(device_id), qos=1)
        assert subscribed.wait(10)

    def publish(self, payload, topic=None, retain=False):
        info = self.c.publish(topic or wire.event_topic(self.device_id), payload, qos=1, retain=retain)
        return info

    def last_ack(self):
        """The highest ack, as a terminal keeps it: acks of several collectors may arrive out of order."""
        return max(seq for _, seq in self.acks) if self.acks else None

    def close(self, with_will=False):
        if with_will:  # reason code 4: the broker publishes the will (the terminal went away)
            self.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        else:
            self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    return request.getfixturevalue("pg_dsn")


def cfg_for(db_url, broker, **collector):
    from collector.testing import collector_config

    return collector_config(db_url, port=broker.port, collector=collector)


def test_events_flow_acked_and_bad_ones_counted(broker, db_url):
    cfg = cfg_for(db_url, broker, batch_size=100, batch_max_wait_ms=50)
    with Collector(cfg) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-1", will=True)
        other = Device(broker, "gate-2")
        dev.publish(wire.encode_status(device_id="gate-1", online=True, version="0.1.0", outbox_depth=3), retain=True,
                    topic=wire.status_topic("gate-1"))
        ev = lambda s, d="gate-1": make_event(d, s)  # noqa: E731
        bad_type = ev(5)
        bad_type["seq"] = "5"
        half_bad = [ev(7), dict(ev(8), direction="sideways")]
        msgs = [
            wire.encode_events([ev(1)]),
            b"{not json",  # malformed
            wire.encode_events([ev(2)]),
            b'{"batch": [' + b"x" * (wire.MAX_MESSAGE_BYTES + 10) + b"]}",  # oversized
            wire.encode_events([ev(3), ev(4)]),  # a batch
            wire.dumps(bad_type),  # wrongly typed
            wire.encode_events([ev(5, "gate-2")]),  # another device's id under gate-1's topic
            wire.encode_events([ev(5)]),
            wire.encode_events([ev(6)]),
            wire.encode_events(half_bad),  # one good, one bad: the good one is kept
            b"[]",  # JSON, but not an event
        ]
        infos = [dev.publish(m) for m in msgs]
        for i in infos:
            i.wait_for_publish(10)
        other.publish(wire.encode_events([ev(1, "gate-2")])).wait_for_publish(10)
        wait_for(lambda: dev.last_ack() == 7, what="the ack of seq 7")
        wait_for(lambda: other.last_ack() == 1, what="gate-2's ack")
        st = wait_for(lambda: (s := col.stats())["rejected_total"] >= 6 and s, what="rejections counted")
        assert st["rejected"] == {"malformed": 1, "oversized": 1, "invalid": 3, "device_mismatch": 1}
        assert st["stored"] == 8
        # acks only grow and never pass what is stored contiguously
        seqs = [s for _d, s in dev.acks]
        assert seqs == sorted(seqs) and max(seqs) == 7
        dev.close(with_will=True)  # the last will marks it offline
        wait_for(lambda: col.storage.devices()[0]["online"] is False, what="offline via last will")
        other.close()
    with Storage(db_url) as stg:
        E = stg.Event
        got = sorted(E.select(E.device_id, E.seq).tuples())
        assert got == [("gate-1", s) for s in range(1, 8)] + [("gate-2", 1)]
        fleet = {d["device_id"]: d for d in stg.devices()}
        assert fleet["gate-1"]["version"] == "0.1.0" and fleet["gate-1"]["contiguous_seq"] == 7
        assert fleet["gate-1"]["status"]["online"] is False


def test_redelivered_duplicates_stored_once_and_gap_reported(broker, tmp_path, caplog):
    db_url = f"sqlite:///{tmp_path}/c.db"
    cfg = cfg_for(db_url, broker, gap_report_s=0.0)
    with Collector(cfg) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-3")
        events = [make_event("gate-3", s) for s in (1, 2, 3, 5, 6)]
        for _ in range(2):  # the terminal sends everything twice (its ack came too late)
            for e in events:
                dev.publish(wire.encode_events([e])).wait_for_publish(10)
        wait_for(lambda: col.stats().get("received", 0) >= 10, what="all messages received")
        wait_for(lambda: col.stats().get("gaps_reported", 0) >= 1, what="the gap at seq 4 reported")
        wait_for(lambda: dev.last_ack() == 3, what="ack 3 (seq 4 missing)")
        dev.publish(wire.encode_events([make_event("gate-3", 4)])).wait_for_publish(10)
        wait_for(lambda: dev.last_ack() == 6, what="ack 6 once 4 arrives")
        assert col.stats()["stored"] == 6 and col.stats()["duplicates"] == 5
        dev.close()
    assert any("events 4 to 4 missing" in r.getMessage() for r in caplog.records)


def _count(db_path):
    try:
        con = sqlite3.connect(db_path, timeout=5)
        try:
            return con.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM chot_event").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return (0, 0)


def test_sigkill_mid_batch_loses_nothing(broker, tmp_path):
    db_path = tmp_path / "collector.db"
    conf = tmp_path / "collector.toml"
    conf.write_text(
        f'[collector]\nid = "kill"\ndatabase = "sqlite:///{db_path}"\nbatch_size = 500\nbatch_max_wait_ms = 1000\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreceive_maximum = 1000\nreconnect_min_s = 0.2\n'
        "[http]\nenabled = false\n"
    )

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "chot.cli", "collector", "run", "--config", str(conf)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    n = 4000
    proc = start()
    try:
        dev = Device(broker, "gate-k")
        # until the collector's session exists, messages to it are not kept: repeat seq 1 until stored
        first = wire.encode_events([make_event("gate-k", 1)])
        wait_for(lambda: dev.publish(first) and time.sleep(0.2) or _count(db_path)[0] >= 1, 30, "the collector up")

        def publish_rest():
            for s in range(2, n + 1):
                dev.publish(wire.encode_events([make_event("gate-k", s)]))
                if s % 100 == 0:
                    time.sleep(0.1)

        pub = threading.Thread(target=publish_rest)
        pub.start()
        wait_for(lambda: _count(db_path)[0] >= 1000, 30, "a thousand stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = _count(db_path)[0]
        assert killed_at < n, "the publisher should still have been running"
        time.sleep(0.5)
        proc = start()
        pub.join(60)
        total = wait_for(lambda: (c := _count(db_path))[0] >= n and c, 60, "every event stored")
        time.sleep(0.5)  # anything redelivered late must not add rows
        assert _count(db_path) == (n, n)
        assert total == (n, n)
        wait_for(lambda: dev.last_ack() == n, 20, "the final ack")
        dev.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    with Storage(f"sqlite:///{db_path}") as st:
        assert st.contiguous("gate-k") == n


def test_two_collectors_share_the_load_on_one_postgresql(broker, pg_dsn):
    from collector.testing import collector_config

    n = 2000
    cfgs = [collector_config(pg_dsn, port=broker.port, collector={"id": f"c{i}", "batch_size": 50,
                                                                  "batch_max_wait_ms": 20}) for i in (1, 2)]
    with Collector(cfgs[0]) as c1, Collector(cfgs[1]) as c2:
        c1.wait_subscribed()
        c2.wait_subscribed()
        dev = Device(broker, "gate-s")
        for s in range(1, n + 1):
            dev.publish(wire.encode_events([make_event("gate-s", s)]))
        wait_for(lambda: c1.stats().get("received", 0) + c2.stats().get("received", 0) >= n, 30, "all received")
        # both got a share, and the acks reach the end although the events were split
        assert c1.stats()["received"] > 0 and c2.stats()["received"] > 0
        wait_for(lambda: dev.last_ack() == n, 30, "the final ack")
        dev.close()
    with Storage(pg_dsn) as st:
        assert st.event_count() == n and st.contiguous("gate-s") == n
