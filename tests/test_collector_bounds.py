"""Issue 11, the collector's part, against a real Mosquitto (and SQLite and PostgreSQL where storing):
bound devices (a forged checkpoint or direction is refused, counted and never traced), clock flags
(future, unsynced, behind its floor), junk floods (bounded log, bounded queue), an oversized or
invalid retained status (refused, counted, cleared at the broker), the database files (0600,
secure_delete), and the registry from provisioning to the collector."""

import json
import logging
import os
import re
import sqlite3
import stat
import threading
from datetime import timedelta
from urllib.request import Request, urlopen

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_collector_subscriber import Device, wait_for

from chot import wire
from chot.cli import main as chot_main
from chot.errors import CollectorError
from chot.personal import Sealer
from chotdemo.testing import collector_config, make_event, make_keys
from collector import queries
from collector.keys import CollectorKeys
from collector.registry import import_registry
from collector.storage import SCHEMA_VERSION, ClockFlag, Storage, format_time, utcnow
from collector.subscriber import Collector

CASE = "case-11"


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
    return collector_config(db_url, port=broker.port, key_dir=key_dir, collector=collector)


def _registry_file(path, devices, revoked=()):
    path.write_text(json.dumps({
        "format": "chot-devices-v1", "fleet": "test fleet", "written": "2026-12-06T00:00:00Z",
        "devices": [{"device_id": d, "checkpoint": cp, "direction": dr} for d, (cp, dr) in devices.items()],
        "revoked": list(revoked),
    }))
    return path


# --- bound devices ----------------------------------------------------------------------------


def test_forged_checkpoint_and_direction_are_refused_counted_and_never_traced(broker, db_url, key_dir, tmp_path):
    sealer = Sealer.from_file(key_dir / "seal.pub")
    pid = "id:001190004321"
    now = utcnow().replace(microsecond=0)

    def ev(seq, cp="market-1", direction="in", device="gate-a"):
        return make_event(device, seq, time=now - timedelta(seconds=60 - seq), checkpoint=cp, direction=direction,
                          person_id=pid, sealer=sealer)

    with Storage(db_url) as st:
        res = import_registry(st, _registry_file(tmp_path / "registry.json",
                                                 {"gate-a": ("market-1", "in"), "gate-b": ("market-1", "out")}))
        assert res["added"] == ["gate-a", "gate-b"]
    with Collector(cfg_for(db_url, broker, key_dir)) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-a")
        # the terminal of gate-a records visits at another checkpoint, and exits at its entry
        dev.publish(wire.encode_events([ev(1), ev(2, cp="hospital-9"), ev(3, direction="out"), ev(4)]))
        wait_for(lambda: dev.last_ack() == 4, what="the forged seqs quarantined and acked")
        st = col.stats()
        assert st["rejected"] == {"wrong_checkpoint": 1, "wrong_direction": 1}
        assert st["stored"] == 2 and st["quarantined"] == 2 and st["bound_devices"] == 2
        # a terminal not in the registry: refused and NOT acked (it keeps its events) ...
        stray = Device(broker, "gate-z")
        stray.publish(wire.encode_events([ev(1, device="gate-z")])).wait_for_publish(10)
        wait_for(lambda: col.stats()["rejected"].get("unregistered_device") == 1, what="unregistered refused")
        assert stray.last_ack() is None
        # ... and stored once it is imported (the running collector reads the bindings again)
        with Storage(db_url) as st2:
            st2.replace_bindings({**st2.bindings(), "gate-z": ("market-1", "in")}, "test")
        col.bindings.refresh(force=True)
        stray.publish(wire.encode_events([ev(1, device="gate-z")])).wait_for_publish(10)
        wait_for(lambda: stray.last_ack() == 1, what="the now bound device stored and acked")
        dev.close()
        stray.close()
    with Storage(db_url, keys=CollectorKeys.from_dir(key_dir)) as st:
        q = {(r["seq"], r["reason"]) for r in st.quarantined("gate-a")}
        assert q == {(2, "wrong_checkpoint"), (3, "wrong_direction")}
        assert all(r["detail"].count("hospital") <= 1 for r in st.quarantined("gate-a"))
        traced = queries.visits(st, pid, CASE, "tracer")
        rows = traced["verified"] + traced["unverified"]
        assert sorted((r["device_id"], r["seq"]) for r in rows) == [("gate-a", 1), ("gate-a", 4), ("gate-z", 1)]
        assert {r["checkpoint"] for r in rows} == {"market-1"} and {r["direction"] for r in rows} == {"in"}
        fleet = {d["device_id"]: d for d in queries.fleet(st)["devices"]}
        assert (fleet["gate-a"]["checkpoint"], fleet["gate-a"]["direction"]) == ("market-1", "in")


def test_registry_from_provisioning_to_the_collector(tmp_path, capsys):
    fleet = tmp_path / "fleet"
    assert chot_main(["provision", "init-fleet", str(fleet), "--broker-host", "broker.example"]) == 0
    for dev, cp, dr in (("g1-in", "gate-1", "in"), ("g1-out", "gate-1", "out"), ("g2-in", "gate-2", "in")):
        assert chot_main(["provision", "device", dev, "--checkpoint", cp, "--direction", dr,
                          "--fleet", str(fleet)]) == 0
    assert chot_main(["provision", "revoke", "g2-in", "--fleet", str(fleet)]) == 0
    assert chot_main(["provision", "registry", "--fleet", str(fleet)]) == 0
    reg = json.loads((fleet / "registry.json").read_text())
    assert reg["devices"] == [{"device_id": "g1-in", "checkpoint": "gate-1", "direction": "in"},
                              {"device_id": "g1-out", "checkpoint": "gate-1", "direction": "out"}]
    assert reg["revoked"] == ["g2-in"]
    conf = tmp_path / "collector.toml"
    conf.write_text(f'[collector]\ndatabase = "sqlite:///{tmp_path}/c.db"\n')
    capsys.readouterr()
    assert chot_main(["collector", "devices", "import", str(fleet / "registry.json"), "-c", str(conf)]) == 0
    assert "2 devices bound: 2 added" in capsys.readouterr().err
    assert chot_main(["collector", "devices", "list", "-c", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == reg["devices"]
    # a broken registry is refused, saying what is wrong, and changes nothing
    bad = _registry_file(tmp_path / "bad.json", {"g1-in": ("gate 1", "sideways")})
    assert chot_main(["collector", "devices", "import", str(bad), "-c", str(conf)]) != 0
    err = capsys.readouterr().err
    assert "checkpoint" in err and "direction" in err
    with Storage(f"sqlite:///{tmp_path}/c.db") as st:
        assert st.bindings() == {"g1-in": ("gate-1", "in"), "g1-out": ("gate-1", "out")}


def test_a_config_update_cannot_move_a_terminal(tmp_path):
    from collector.signing import keygen, set_config

    priv, _pub = keygen(tmp_path / "sign")
    body = tmp_path / "move.json"
    body.write_text(json.dumps({"device": {"checkpoint": "elsewhere"}, "policy": {"max_age_h": 12}}))
    cfg = collector_config(f"sqlite:///{tmp_path}/c.db", collector={"signing_key": str(priv)})
    with Storage(cfg.collector.database) as st, pytest.raises(CollectorError, match="enrol it again"):
        set_config(st, cfg, "gate-a", body, publish=False)


# --- clock flags ------------------------------------------------------------------------------


def test_future_unsynced_and_behind_events_are_stored_flagged_and_traced_so(broker, db_url, key_dir):
    sealer = Sealer.from_file(key_dir / "seal.pub")
    pid = "id:079300000011"
    now = utcnow().replace(microsecond=0)

    def ev(seq, t, synced=True, behind=False):
        e = make_event("gate-t", seq, time=t, person_id=pid, sealer=sealer, clock_synced=synced)
        return msgspec.structs.replace(e, clock=msgspec.structs.replace(e.clock, behind=behind))

    events = [
        ev(1, now - timedelta(seconds=30)),  # as it should be
        ev(2, now + timedelta(minutes=5)),  # 5 minutes ahead: beyond the configured skew of 60 s
        ev(3, now - timedelta(seconds=20), synced=False),  # the clock was never synchronised
        ev(4, now - timedelta(seconds=10), behind=True),  # the clock reads earlier than its time floor
        ev(5, now + timedelta(days=400)),  # far ahead
    ]
    with Collector(cfg_for(db_url, broker, key_dir, future_skew_s=60.0)) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-t")
        dev.publish(wire.encode_events(events)).wait_for_publish(10)
        wait_for(lambda: dev.last_ack() == 5, what="all five stored")
        dev.close()
        traced = queries.visits(col.storage, pid, CASE, "tracer")
    flags = {r["seq"]: r["clock"]["flag"] for r in traced["verified"]}
    assert flags == {1: ClockFlag.OK, 2: ClockFlag.FUTURE, 3: ClockFlag.UNSYNCED, 4: ClockFlag.BEHIND_FLOOR,
                     5: ClockFlag.FUTURE}
    assert {r["seq"]: r["time"] for r in traced["verified"]}[2] == format_time(now + timedelta(minutes=5))
    with Storage(db_url) as st:  # a time ahead is purged by its arrival, not kept until then
        assert st.purge(28, now=now + timedelta(days=29))["rows"] == 5


# --- junk floods ------------------------------------------------------------------------------


def _junk_batch(n_bytes):
    item = json.dumps({"v": 2, "junk": "x" * 150}).encode()
    n = (n_bytes - 20) // (len(item) + 1)
    return b'{"batch":[' + b",".join([item] * n) + b"]}"


def test_a_junk_flood_writes_a_bounded_log_and_good_events_are_stored(broker, tmp_path, key_dir, caplog):
    url = f"sqlite:///{tmp_path}/c.db"
    junk = _junk_batch(wire.MAX_MESSAGE_BYTES - 100)
    assert len(junk) <= wire.MAX_MESSAGE_BYTES and junk.count(b'"junk"') > 5000
    too_large = b"{" + b" " * (wire.MAX_MESSAGE_BYTES + 10) + b"}"
    caplog.set_level(logging.INFO)
    with Collector(cfg_for(url, broker, key_dir, reject_log_interval_s=3600.0)) as col:
        col.wait_subscribed()
        bad = Device(broker, "gate-j")
        good = Device(broker, "gate-g")
        for i in range(20):
            bad.publish(junk if i % 2 else too_large)
            good.publish(wire.encode_events([make_event("gate-g", i + 1)]))
        wait_for(lambda: good.last_ack() == 20, timeout=60, what="the good events stored among the junk")
        wait_for(lambda: col.stats()["rejected"].get("too_large") == 10, timeout=60, what="the junk refused")
        st = col.stats()
        assert st["rejected"]["invalid_event"] == 10 * junk.count(b'"junk"')
        bad.close()
        good.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("collector")]
    size = sum(len(m) for m in lines)
    assert size < 4000, f"{size} bytes of log for the flood: {lines[:5]}"
    assert any("invalid_event x" in m for m in lines)  # the summary at stop counts them
    assert not any("x" * 40 in m for m in lines)  # no payload content


def test_a_qos0_flood_is_bounded_in_memory_and_counted(broker, tmp_path, key_dir):
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    payload = b'{"junk": "' + b"y" * 1000 + b'"}'
    with Collector(cfg_for(url, broker, key_dir, qos0_queue_max=50)) as col:
        col.wait_subscribed()
        good = Device(broker, "gate-q")
        blocker = sqlite3.connect(path, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")  # the worker's next store waits: nothing leaves the queue
        try:
            good.publish(wire.encode_events([make_event("gate-q", 1)]))
            wait_for(lambda: col.stats().get("received") == 1, what="the worker held at its store")
            flood = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
            flood.connect("127.0.0.1", broker.port)
            flood.loop_start()
            for _ in range(2000):
                flood.publish(wire.event_topic("gate-f"), payload, qos=0)
            dropped = lambda: col.stats()["dropped"].get("qos0_queue_full", 0)  # noqa: E731
            wait_for(lambda: col.stats()["queued_qos0"] + dropped() == 2000, what="the flood received")
            st = col.stats()
            assert st["queue_bounds"]["qos0"] == 50 and st["queued_qos0"] == 50 and dropped() == 1950
            assert st["queued_high"] <= st["queue_bounds"]["qos0"] + st["queue_bounds"]["qos1"]
            flood.disconnect()
            flood.loop_stop()
        finally:
            blocker.rollback()
            blocker.close()
        wait_for(lambda: good.last_ack() == 1, what="the held event stored")
        good.publish(wire.encode_events([make_event("gate-q", 2)]))
        wait_for(lambda: good.last_ack() == 2, what="the collector goes on storing")
        wait_for(lambda: col.stats()["queued"] == 0, what="the queue drained")
        good.close()


def test_qos1_beyond_the_byte_bound_is_acked_dropped_and_counted(broker, tmp_path, key_dir):
    path = tmp_path / "c.db"
    with Collector(cfg_for(f"sqlite:///{path}", broker, key_dir, queue_max_mb=1.0)) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-b")
        blocker = sqlite3.connect(path, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")
        big = [make_event("gate-b", s) for s in range(2, 2400)]  # about 700 KB in one batch message
        try:
            dev.publish(wire.encode_events([make_event("gate-b", 1)]))
            wait_for(lambda: col.stats().get("received") == 1, what="the worker held at its store")
            payload = wire.encode_events(big)
            assert 600_000 < len(payload) < wire.MAX_MESSAGE_BYTES
            dev.publish(payload).wait_for_publish(10)
            dev.publish(payload).wait_for_publish(10)  # the second does not fit in 1 MiB: acked, dropped
            wait_for(lambda: col.stats()["dropped"].get("queue_bytes_full") == 1, what="the drop counted")
            assert col.stats()["queued_bytes"] <= col.stats()["queue_bounds"]["bytes"] == 1024 * 1024
        finally:
            blocker.rollback()
            blocker.close()
        wait_for(lambda: dev.last_ack() == 2399, what="the first copy stored")
        assert col.stats()["stored"] == 2399
        dev.close()


def _burst(broker, tmp_path, key_dir, n, **collector):
    """n one-event QoS 1 messages published at full speed from two devices; (stats, last acks) once all
    are stored or dropped."""
    cfg = collector_config(f"sqlite:///{tmp_path}/c.db", port=broker.port, key_dir=key_dir,
                           collector={"batch_size": 100, **collector}, mqtt={"receive_maximum": 100})
    with Collector(cfg) as col:
        col.wait_subscribed()
        devs = [Device(broker, f"burst-{i}") for i in range(2)]
        infos = [d.publish(wire.encode_events([make_event(d.device_id, s)]))
                 for s in range(1, n // 2 + 1) for d in devs]
        for info in infos:
            info.wait_for_publish(30)
        wait_for(lambda: col.stats()["stored"] + sum(col.stats()["dropped"].values()) >= n, timeout=120,
                 what="every message stored or dropped")
        stats = col.stats()
        for d in devs:
            d.close()
    return stats


def test_a_burst_beyond_the_receive_maximum_is_stored_whole(broker, tmp_path, key_dir):
    """Mosquitto 2.0.11 (Debian bookworm's) sends a collector more unacked QoS 1 messages than its
    receive maximum once acks flow (its in-flight quota fixes came in 2.0.13). The QoS 1 bound has
    room for that (collector.qos1_queue_max): a burst is stored whole, nothing left to resends."""
    stats = _burst(broker, tmp_path, key_dir, 3000)
    assert stats["stored"] == 3000 and stats["dropped"] == {}, stats
    assert stats["queue_bounds"]["qos1"] == 50000


def test_config_wants_the_qos1_bound_at_least_twice_the_receive_maximum():
    with pytest.raises(Exception, match="collector.qos1_queue_max"):
        collector_config("sqlite:///x.db", collector={"qos1_queue_max": 1000}, mqtt={"receive_maximum": 1000})


# --- the status -------------------------------------------------------------------------------


class Watcher:
    """Subscribes to one topic and keeps every message (payload, retain flag), in order."""

    def __init__(self, broker, topic):
        self.got = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{os.urandom(3).hex()}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.got.append((m.payload, m.retain))
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _retained(broker, topic):
    """What the broker serves a fresh subscriber on `topic` first: the retained message, or the marker."""
    w = Watcher(broker, topic)
    marker = Device(broker, f"marker-{os.urandom(3).hex()}")
    marker.publish(b'{"marker": true}', topic=topic).wait_for_publish(10)  # after any retained one
    wait_for(lambda: any(p == b'{"marker": true}' for p, _r in w.got), what="the marker")
    marker.close()
    w.close()
    return w.got[0]


def test_an_oversized_or_invalid_retained_status_is_refused_counted_and_cleared(broker, tmp_path, key_dir):
    url = f"sqlite:///{tmp_path}/c.db"
    huge = json.dumps({"device_id": "gate-s", "online": True, "version": "1", "pad": "z" * 1_800_000}).encode()
    early = Device(broker, "gate-e")  # retained before the collector subscribes: served to it at once
    early.publish(huge.replace(b"gate-s", b"gate-e"), topic=wire.status_topic("gate-e"), retain=True)
    assert len(_retained(broker, wire.status_topic("gate-e"))[0]) > 1_000_000
    with Collector(cfg_for(url, broker, key_dir)) as col:
        col.wait_subscribed()
        dev = Device(broker, "gate-s")
        dev.publish(huge, topic=wire.status_topic("gate-s"), retain=True).wait_for_publish(10)
        unknown = b'{"device_id": "gate-u", "online": true, "shell": "rm -rf /"}'
        dev.publish(unknown, topic=wire.status_topic("gate-u"), retain=True).wait_for_publish(10)
        wait_for(lambda: col.stats().get("status_cleared", 0) == 3, what="three statuses cleared")
        st = col.stats()
        assert st["rejected"] == {"status_too_large": 2, "invalid_status": 1}
        # a valid status: stored with its stale lists and its clock behind, shown on the fleet page
        good = wire.encode_status(device_id="gate-s", online=True, version="1.2", stale=["denylist"],
                                  lists={"denylist": wire.ListState(version=7, issued="2026-11-01T00:00:00Z"),
                                         "trust": wire.ListState(version=3)},
                                  clock_behind=True)
        dev.publish(good, topic=wire.status_topic("gate-s"), retain=True).wait_for_publish(10)
        wait_for(lambda: col.stats().get("status", 0) >= 1, what="the good status stored")
        dev.close()
        early.close()
        for dev_id in ("gate-e", "gate-s", "gate-u"):
            first = _retained(broker, wire.status_topic(dev_id))
            if dev_id == "gate-s":
                assert first == (good, True)
            else:
                assert first == (b'{"marker": true}', False), dev_id  # nothing retained any more
        from web_helpers import PASSWORD, Console, login

        from collector.web import WebServer
        from collector.web.accounts import Accounts, Role

        with col.storage.connection():
            token = Accounts(col.storage).add_token("dashboard", ["fleet:read"], "test")
            Accounts(col.storage).add_user("viewer", PASSWORD, Role.VIEWER)
        with WebServer(col.cfg, col.storage, collector=col, port=0) as api:
            auth = {"Authorization": f"Bearer {token}"}
            fleet = json.loads(urlopen(Request(f"{api.url}/api/fleet", headers=auth), timeout=10).read())
            viewer = login(Console(api.url, col.cfg, col.storage, api.app.state.web.accounts, api), "viewer")
            page = viewer.get("/fleet?lang=en").text
    d = {x["device_id"]: x for x in fleet["devices"]}["gate-s"]
    assert d["stale"] == ["denylist"] and d["clock_behind"] is True and d["lists"]["denylist"]["version"] == 7
    assert fleet["stale"] == 1 and fleet["clock_behind"] == 1
    row = re.search(r'<tr id="dev-gate-s".*?</tr>', page, re.S).group(0)  # the stale terminal, highlighted
    assert 'class="problem"' in row and "STALE" in row and "behind its time floor" in row


# --- the database files -----------------------------------------------------------------------


def test_the_database_and_its_wal_are_0600_with_secure_delete(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "db" / "collector.db"
        with Storage(f"sqlite:///{path}") as st:
            st.store_batch([make_event("d1", 1)])
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
            assert st.db.execute_sql("PRAGMA secure_delete").fetchone()[0] == 1
        assert {"collector.db", "collector.db-wal", "collector.db-shm"} <= set(modes)
        assert set(modes.values()) == {0o600}, modes
        # a database an older collector left readable by others is made private when opened
        for p in path.parent.iterdir():
            p.chmod(0o644)
        Storage(f"sqlite:///{path}").close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_version_2_database_gets_the_bindings_table(db_url):
    with Storage(db_url) as st:
        st.store_batch([make_event("d1", 1)])
        st.db.execute_sql('DROP TABLE "chot_binding"')
        st.SchemaVersion.update(version=2).execute()
    with Storage(db_url) as st:
        assert st.schema_version() == SCHEMA_VERSION and st.event_count() == 1
        assert st.replace_bindings({"d1": ("cp-1", "in")}, "test")["added"] == ["d1"]
        assert st.bindings() == {"d1": ("cp-1", "in")}
