"""The collector's subscriber against a real Mosquitto: batches stored, acks, rejects, SIGKILL."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from uplink_helpers import ResendingPublisher

from chot import wire
from chot.errors import CollectorError
from chot.personal import Sealer
from chotdemo.testing import make_event, make_keys
from collector.storage import Storage
from collector.subscriber import Collector

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
        return max(a.seq for a in self.acks) if self.acks else None

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


@pytest.fixture
def key_dir(tmp_path):
    make_keys(tmp_path / "keys")
    return tmp_path / "keys"


def cfg_for(db_url, broker, key_dir, **collector):
    from chotdemo.testing import collector_config

    return collector_config(db_url, port=broker.port, key_dir=key_dir, collector=collector)


def test_start_up_fails_listing_missing_keys(tmp_path, broker):
    (tmp_path / "empty").mkdir()
    cfg = cfg_for(f"sqlite:///{tmp_path}/c.db", broker, tmp_path / "empty")
    with pytest.raises(CollectorError) as err:
        Collector(cfg)
    text = str(err.value)
    assert "no sealing private key" in text and "init-fleet" in text and "index.key" in text and "data.key" in text
    with pytest.raises(CollectorError, match="does not exist"):
        Collector(cfg_for(f"sqlite:///{tmp_path}/c.db", broker, tmp_path / "nowhere"))


def test_sealed_events_opened_at_ingest_and_unopenable_ones_kept(broker, tmp_path, key_dir):
    sealer = Sealer.from_file(key_dir / "seal.pub")
    make_keys(tmp_path / "other")
    foreign = Sealer.from_file(tmp_path / "other" / "seal.pub")
    person = {"id_number": "079190001234", "name": "Lê Thị Hoa", "phone": "0901234567"}
    url = f"sqlite:///{tmp_path}/c.db"
    with Collector(cfg_for(url, broker, key_dir)) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-p")
        good = make_event("gate-p", 1, person=person, person_id="id:079190001234", sealer=sealer)
        alien = make_event("gate-p", 2, person=person, person_id="id:079190001234", sealer=foreign)
        moved = msgspec.structs.replace(make_event("gate-p", 3, verified=True), sealed=good.sealed)  # another's
        dev.publish(wire.encode_events([good, alien, moved])).wait_for_publish(10)
        wait_for(lambda: dev.last_ack() == 3, what="all three stored and acked")
        st = col.stats()
        assert st["stored"] == 3 and st["sealed_errors"] == {"unknown_key": 1, "misbound": 1}
        dev.close()
    with Storage(url) as stg:
        E = stg.Event
        rows = {r.seq: r for r in E.select()}
    assert rows[1].person_key and rows[1].personal and rows[1].sealed is None and rows[1].seal_error is None
    assert rows[2].seal_error == "unknown_key" and rows[2].sealed and rows[2].person_key is None
    assert rows[3].seal_error == "misbound" and rows[3].personal is None
    with open(tmp_path / "c.db", "rb") as f:
        raw = f.read()
    assert b"079190001234" not in raw and b"Hoa" not in raw


def test_events_flow_acked_and_bad_ones_counted(broker, db_url, key_dir):
    cfg = cfg_for(db_url, broker, key_dir, batch_size=100, batch_max_wait_ms=50)
    with Collector(cfg) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-1", will=True)
        other = Device(broker, "gate-2")
        dev.publish(wire.encode_status(device_id="gate-1", online=True, version="0.1.0", outbox_depth=3), retain=True,
                    topic=wire.status_topic("gate-1"))
        ev = lambda s, d="gate-1": make_event(d, s)  # noqa: E731
        bad_type = dict(wire.to_dict(ev(5)), seq="5")
        half_bad = [wire.dumps(ev(7)), wire.dumps(dict(wire.to_dict(ev(8)), direction="sideways"))]
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
        dev.publish(b'{"device_id": "gate-1", "online": "yes"}', topic=wire.status_topic("gate-1"))
        dev.publish(b"x" * 5000, topic=wire.status_topic("gate-1"))
        infos = [dev.publish(m) for m in msgs]
        for i in infos:
            i.wait_for_publish(10)
        other.publish(wire.encode_events([ev(1, "gate-2")])).wait_for_publish(10)
        # seq 8 (a wrong direction) can never be stored: quarantined, and the ack passes over it
        wait_for(lambda: dev.last_ack() == 8, what="the ack of seq 8")
        wait_for(lambda: other.last_ack() == 1, what="gate-2's ack")
        st = wait_for(lambda: (s := col.stats())["rejected_total"] >= 8 and s, what="rejections counted")
        assert st["rejected"] == {"not_json": 1, "too_large": 1, "invalid_event": 3, "wrong_device": 1,
                                  "invalid_status": 1, "status_too_large": 1}
        assert st["stored"] == 8
        # acks only grow and never pass what is stored contiguously
        seqs = [a.seq for a in dev.acks]
        assert seqs == sorted(seqs) and max(seqs) == 8
        dev.close(with_will=True)  # the last will marks it offline
        wait_for(lambda: col.storage.devices()[0]["online"] is False, what="offline via last will")
        other.close()
    with Storage(db_url) as stg:
        E = stg.Event
        got = sorted(E.select(E.device_id, E.seq).tuples())
        assert got == [("gate-1", s) for s in range(1, 8)] + [("gate-2", 1)]
        assert [(q["device_id"], q["seq"], q["reason"]) for q in stg.quarantined()] == [("gate-1", 8, "invalid_event")]
        fleet = {d["device_id"]: d for d in stg.devices()}
        assert fleet["gate-1"]["version"] == "0.1.0" and fleet["gate-1"]["contiguous_seq"] == 8  # 8 quarantined
        assert fleet["gate-1"]["status"]["online"] is False


def test_redelivered_duplicates_stored_once_and_gap_reported(broker, tmp_path, caplog, key_dir):
    db_url = f"sqlite:///{tmp_path}/c.db"
    cfg = cfg_for(db_url, broker, key_dir, gap_report_s=0.0)
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


def test_sigkill_mid_batch_loses_nothing(broker, tmp_path, key_dir):
    db_path = tmp_path / "collector.db"
    conf = tmp_path / "collector.toml"
    conf.write_text(
        f'[collector]\nid = "kill"\ndatabase = "sqlite:///{db_path}"\nbatch_size = 500\nbatch_max_wait_ms = 1000\n'
        f'key_dir = "{key_dir}"\nretention_days = 3650\n'
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
    # the terminal's part: what is not acked is resent (the collector keeps no session at the broker,
    # so what was in flight to it when it died is gone there; the terminal's outbox still holds it)
    dev = ResendingPublisher(broker.port, "gate-k", ack_timeout=2.0, per_message=1).start()
    try:
        dev.send([make_event("gate-k", 1)])
        wait_for(lambda: _count(db_path)[0] >= 1, 30, "the collector up")

        def publish_rest():
            for s in range(2, n + 1, 100):
                dev.send([make_event("gate-k", q) for q in range(s, min(s + 100, n + 1))])
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
        time.sleep(0.5)  # anything resent late must not add rows
        assert _count(db_path) == (n, n)
        assert total == (n, n)
        wait_for(lambda: dev.acked == n, 20, "the final ack")
    finally:
        dev.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    with Storage(f"sqlite:///{db_path}") as st:
        assert st.contiguous("gate-k") == n


def test_two_collectors_share_the_load_on_one_postgresql(broker, pg_dsn, key_dir):
    from chotdemo.testing import collector_config

    n = 2000
    cfgs = [collector_config(pg_dsn, port=broker.port, key_dir=key_dir, collector={"id": f"c{i}", "batch_size": 50,
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
