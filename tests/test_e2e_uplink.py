"""End to end: terminal outbox -> Link -> real Mosquitto -> real collector -> SQLite / PostgreSQL.

Nothing lost, nothing stored twice, across broker restarts (with and without persistence),
a collector killed with SIGKILL mid-stream, and a long offline backlog; a device cannot
publish under another device's topic; sealed personal parts are opened and indexed at the
collector; signed deny-list (v2) updates reach the terminal.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from servers import Mosquitto
from uplink_helpers import Watcher, fill, publish, terminal_cfg, wait_until

from chot import wire
from chot.personal import Sealer
from chotdemo.testing import make_keys
from collector import queries
from collector.config import config_from_dict
from collector.keys import CollectorKeys
from collector.storage import Storage
from collector.subscriber import Collector
from device.uplink.link import Link
from device.uplink.outbox import Outbox

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
DEV = "term-1"
# Mosquitto started as root drops to the `mosquitto` user, which cannot read pytest's 0700 temp
# dirs (ACL file, persistence, log); `user root` keeps it as it is (ignored when not root).
KEEP_USER = ""  # LocalBroker.BASE has `user root` now


_KEY_DIR = {}


@pytest.fixture(autouse=True)
def collector_key_dir(tmp_path):
    """The collector's key folder of this test (seal, index, data keys): collector_data uses it."""
    make_keys(tmp_path / "collector-keys")
    _KEY_DIR["path"] = str(tmp_path / "collector-keys")
    yield tmp_path / "collector-keys"
    _KEY_DIR.clear()


def collector_data(port, database, **collector_keys):
    col = {"id": "c1", "database": database, "batch_size": 500, "batch_max_wait_ms": 50,
           "sqlite_synchronous": "NORMAL", "gap_report_s": 3600.0, "key_dir": _KEY_DIR["path"]}
    col.update(collector_keys)
    return {
        "collector": col,
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 1.0},
        "http": {"enabled": False},
    }


def collector_cfg(port, database, **collector_keys):
    return config_from_dict(collector_data(port, database, **collector_keys))


def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'collector.db'}"


def stored(url, device_id=DEV):
    """[(seq, uuid)] stored for `device_id`, in seq order, read through a fresh connection."""
    with Storage(url, migrate=False) as st:
        E = st.Event
        return [(s, u) for s, u in E.select(E.seq, E.uuid).where(E.device_id == device_id).order_by(E.seq).tuples()]


def assert_exactly_once(url, outbox_events):
    """Every event of the outbox stored exactly once, with its own uuid."""
    rows = stored(url)
    want = [(e["seq"], e["uuid"]) for e in outbox_events]
    assert len(rows) == len(want), f"{len(rows)} rows stored for {len(want)} events"
    assert rows == want


def all_events(outbox):
    """Every event the outbox still holds (delivered or not), in seq order."""
    E = outbox.Event
    with outbox._lock:
        return [json.loads(b) for (b,) in E.select(E.body).order_by(E.seq).tuples()]


@pytest.fixture
def pg_url(pg_dsn):
    return pg_dsn


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_events_flow_terminal_broker_collector_database(tmp_path, broker, db, request, collector_key_dir):
    url = sqlite_url(tmp_path) if db == "sqlite" else request.getfixturevalue("pg_dsn")
    cfg = terminal_cfg(tmp_path, broker.port, status_interval_s=1.0)
    status = {"version": "0.1.0", "passes": 40, "fails": 0, "last_scan": None}
    sealer = Sealer.from_file(collector_key_dir / "seal.pub")  # what the terminal pins
    person = {"id_number": "001190054321", "name": "Ngô Thị Lan", "phone": "0911222333"}
    with Collector(collector_cfg(broker.port, url)) as col, Outbox.from_config(cfg) as outbox:
        col.wait_subscribed(10)
        with Link(cfg, outbox, status_source=lambda: dict(status)) as link:
            fill(outbox, 30)  # a backlog: goes as batches
            link.wake()
            for i in range(8):  # then one by one, as a terminal scans
                fill(outbox, 1, start=30 + i)
                link.wake()
            for _ in range(2):  # two verified people's events, sealed as the terminal seals them
                import uuid as uuidlib

                u = str(uuidlib.uuid4())
                outbox.append({"uuid": u, "source": "camera", "format": "native", "decision": "PASS", "reason": "ok",
                               "verified": True, "sealed": sealer.seal(u, person, "id:001190054321", "decl-1")})
                link.wake()
            assert link.wait_acked(40, 15)
            assert outbox.stats()["depth"] == 0
            assert wait_until(lambda: any(d["online"] for d in col.storage.devices() if d["device_id"] == DEV))
        assert_exactly_once(url, all_events(outbox))
        # the device registry saw the status, then the offline status of close()
        with Storage(url, migrate=False) as st:
            assert wait_until(lambda: [d["online"] for d in st.devices() if d["device_id"] == DEV] == [False])
            dev = [d for d in st.devices() if d["device_id"] == DEV][0]
            assert dev["contiguous_seq"] == 40 and dev["gaps"] == []
            st.keys = CollectorKeys.from_dir(collector_key_dir)
            res = queries.visits(st, "001 190 054 321", "case-e2e", "tester")
            assert [(v["seq"], v["person"]["name"]) for v in res["verified"]] == [(39, person["name"]),
                                                                                 (40, person["name"])]
        assert col.stats()["rejected_total"] == 0 and col.stats()["sealed_errors"] == {}


def _send_while(outbox, link, n, start, pause=0.005):
    """Append `n` events in a thread (as a terminal would while the broker goes away)."""

    def run():
        for i in range(n):
            fill(outbox, 1, start=start + i)
            link.wake()
            time.sleep(pause)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("persistence", [True, False], ids=["persistent-broker", "volatile-broker"])
def test_broker_stopped_and_restarted_nothing_lost_nothing_twice(tmp_path, persistence):
    b = Mosquitto(tmp_path / "mosq", conf_extra=KEEP_USER, persistence=persistence).start()
    url = sqlite_url(tmp_path)
    cfg = terminal_cfg(tmp_path, b.port, ack_timeout_s=1.0)
    try:
        with Collector(collector_cfg(b.port, url)) as col, Outbox.from_config(cfg) as outbox:
            col.wait_subscribed(10)
            with Link(cfg, outbox) as link:
                fill(outbox, 100)
                link.wake()
                t = _send_while(outbox, link, 200, start=100)
                time.sleep(0.3)
                b.stop()  # mid-stream; SIGTERM (a persistent broker saves its state)
                assert wait_until(lambda: not link.connected)
                fill(outbox, 50, start=300)  # the terminal goes on while the broker is away
                time.sleep(1.0)
                b.start()
                t.join()
                fill(outbox, 10, start=350)
                link.wake()
                assert link.wait_acked(360, 30), (link.acked_seq, col.stats())
            assert_exactly_once(url, all_events(outbox))
            assert outbox.stats()["depth"] == 0
    finally:
        b.stop()


COLLECTOR_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    sys.path[:0] = [{root!r}]
    logging.basicConfig(level=logging.WARNING)
    from collector.config import config_from_dict
    from collector.subscriber import run
    run(config_from_dict({data!r}), http=False, ready=lambda col: print("ready", flush=True))
    """
)


def _start_collector_process(port, url, cwd, **keys):
    script = COLLECTOR_SCRIPT.format(root=str(ROOT), data=collector_data(port, url, **keys))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=cwd)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def test_collector_killed_mid_batch_and_restarted_nothing_lost(tmp_path, broker):
    url = sqlite_url(tmp_path)
    # a trickle: at most 40 events (8 messages of 5) await the ack, so the kill lands mid-stream
    cfg = terminal_cfg(tmp_path, broker.port, ack_timeout_s=1.0, batch=5, inflight=8)
    n = 700
    with Outbox.from_config(cfg) as outbox:
        fill(outbox, n)
        proc = _start_collector_process(broker.port, url, tmp_path, batch_size=50, sqlite_synchronous="FULL")
        try:
            with Link(cfg, outbox) as link:
                Storage(url).close()
                assert wait_until(lambda: len(stored(url)) >= 50, timeout=20)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
                at_kill = len(stored(url))
                assert at_kill < n, "the collector was killed after the stream ended; the test proves nothing"
                time.sleep(0.5)
                proc = _start_collector_process(broker.port, url, tmp_path, batch_size=50)
                assert link.wait_acked(n, 40), link.acked_seq
            assert_exactly_once(url, all_events(outbox))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)


def test_backlog_of_10000_events_drains_after_reconnecting(tmp_path):
    b = Mosquitto(tmp_path / "mosq", conf_extra=KEEP_USER)
    url = sqlite_url(tmp_path)
    cfg = terminal_cfg(tmp_path, b.port)
    n = 10_000
    try:
        with Outbox.from_config(cfg) as outbox:
            with outbox._lock, outbox._db.atomic():  # fill fast: one transaction (the test is the drain)
                fill(outbox, n)
            with Link(cfg, outbox) as link:  # the broker is not there: the terminal is offline
                time.sleep(0.5)
                assert not link.connected and outbox.stats()["depth"] == n
                b.start()
                with Collector(collector_cfg(b.port, url)) as col:
                    col.wait_subscribed(10)
                    t0 = time.monotonic()
                    assert link.wait_connected(10)
                    assert link.wait_acked(n, 60), link.acked_seq
                    elapsed = time.monotonic() - t0
            rate = n / elapsed
            log.warning("drained %d events in %.2f s: %.0f events/s", n, elapsed, rate)
            print(f"\nDRAIN: {n} events in {elapsed:.2f} s = {rate:.0f} events/s")
            assert_exactly_once(url, all_events(outbox))
    finally:
        b.stop()


ACL = """\
# devices: only under their own topic (the client id is the device id)
pattern write chot/v1/dev/%c/event
pattern write chot/v1/dev/%c/status
pattern read chot/v1/dev/%c/ack
pattern read chot/v1/dev/%c/config
pattern read chot/v1/broadcast/#

user collector
topic read chot/v1/dev/+/event
topic read chot/v1/dev/+/status
topic write chot/v1/dev/+/ack
topic write chot/v1/dev/+/config
topic write chot/v1/broadcast/#
"""


def test_a_device_cannot_publish_under_another_devices_topic(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    # Mosquitto 2.0.11 with `max_queued_messages 0` (unlimited) drops a client right after it
    # refuses one of its QoS 1 publishes ("Unspecified error"); a large finite cap does not.
    conf = KEEP_USER + f"acl_file {acl}\nmax_queued_messages 1000000\n"
    b = Mosquitto(tmp_path / "mosq", conf_extra=conf).start()
    url = sqlite_url(tmp_path)
    cfg = terminal_cfg(tmp_path, b.port)
    data = collector_data(b.port, url)
    data["mqtt"]["username"] = "collector"
    try:
        with Collector(config_from_dict(data)) as col, Outbox.from_config(cfg) as outbox:
            col.wait_subscribed(10)
            with Link(cfg, outbox) as link:
                fill(outbox, 3)
                link.wake()
                assert link.wait_acked(3, 10)  # the real device gets through

                # a rogue device (client id term-2) publishes events under term-1's topic
                rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="term-2", protocol=mqtt.MQTTv5)
                codes = []
                rogue.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
                up = threading.Event()
                rogue.on_connect = lambda *a: up.set()
                rogue.connect("127.0.0.1", b.port)
                rogue.loop_start()
                try:
                    assert up.wait(5)
                    forged = dict(all_events(outbox)[0], seq=1000, uuid="00000000-0000-4000-8000-000000000001")
                    rogue.publish(wire.event_topic(DEV), wire.encode_events([forged]), qos=1).wait_for_publish(5)
                    forged2 = dict(forged, device_id="term-2", seq=1001)
                    rogue.publish(wire.event_topic(DEV), wire.encode_events([forged2]), qos=1).wait_for_publish(5)
                    assert wait_until(lambda: len(codes) == 2)
                finally:
                    rogue.disconnect()
                    rogue.loop_stop()
                assert codes == [135, 135]  # MQTT 5: "not authorized"

                fill(outbox, 2, start=3)
                link.wake()
                assert link.wait_acked(5, 10)
            time.sleep(0.3)
            assert [s for s, _ in stored(url)] == [1, 2, 3, 4, 5]
            assert stored(url, "term-2") == []
            assert col.stats()["rejected_total"] == 0  # refused at the broker, never reached the collector
    finally:
        b.stop()


def test_status_reaches_the_collector_registry(tmp_path, broker):
    url = sqlite_url(tmp_path)
    cfg = terminal_cfg(tmp_path, broker.port)
    with Collector(collector_cfg(broker.port, url)) as col, Outbox.from_config(cfg) as outbox:
        col.wait_subscribed(10)
        fill(outbox, 4)
        with Watcher(broker.port, [wire.status_topic(DEV)]):
            with Link(cfg, outbox, status_source=lambda: {"version": "7.7", "passes": 4, "fails": 0}) as link:
                assert link.wait_acked(4, 10)
                assert wait_until(lambda: any(d["version"] == "7.7" for d in col.storage.devices()))


def _chot(*args, cwd):
    """Run the `chot` command line (as a technician would); return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from chot.cli import main; sys.exit(main())", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _qr_frame(text, tmp_path):
    """A grey camera frame holding the QR code of `text` (decoded from its pixels by the terminal)."""
    import numpy as np
    import segno
    from PIL import Image

    from device.scanner.frames import Frame

    png = tmp_path / "qr.png"
    qr = segno.make_qr(text)
    scale = max(2, min(6, 440 // (qr.symbol_size(scale=1, border=4)[0])))
    qr.save(str(png), scale=scale, border=4)
    code = Image.open(png).convert("L")
    img = Image.new("L", (640, 480), 255)
    img.paste(code, ((640 - code.width) // 2, (480 - code.height) // 2))
    return Frame(np.asarray(img, dtype=np.uint8), time.monotonic())


def test_denylist_published_by_the_collector_changes_the_terminals_next_decision(tmp_path, broker,
                                                                                  collector_key_dir):
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from device.credentials import keys as issuer_keys
    from device.credentials.issue_cli import issue_declaration, make_test_identities
    from device.daemon import Terminal

    _chot("collector", "keygen", "--out", str(tmp_path / "keys"), cwd=tmp_path)
    url = sqlite_url(tmp_path)
    col_toml = tmp_path / "collector.toml"
    col_toml.write_text(
        f'[collector]\ndatabase = "{url}"\nsigning_key = "{tmp_path / "keys" / "collector.key"}"\n'
        f'key_dir = "{collector_key_dir}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[http]\nenabled = false\n'
    )
    issuer = issuer_keys.generate("ed25519")
    _priv, issuer_pub = issuer_keys.save_keypair(issuer, tmp_path / "issuer")
    (person,) = make_test_identities(1, seed=3)
    declaration = issue_declaration(issuer, person, issued_at=datetime.now(UTC) - timedelta(minutes=5))
    id_number = person["id_number"]
    fast = ("--argon2-t", "1", "--argon2-m-kib", "8192")  # the terminal hashes with the list's parameters
    (tmp_path / "deny.txt").write_text(f"# people who must not pass\n{id_number}\n")
    (tmp_path / "empty.txt").write_text("# nobody\n")
    cfg = terminal_cfg(
        tmp_path, broker.port, collector_public_key=str(tmp_path / "keys" / "collector.pub"),
        sections={"policy": {"accept_plain": True, "trusted_issuers": [str(issuer_pub)]},
                  "scanner": {"cooldown_s": 0.0},
                  "privacy": {"seal_public_key": str(collector_key_dir / "seal.pub")}},
    )
    frame = _qr_frame(declaration, tmp_path)
    plain = _qr_frame(id_number, tmp_path)
    col_cfg = collector_cfg(broker.port, url, signing_key=str(tmp_path / "keys" / "collector.key"))  # signed acks
    with Collector(col_cfg) as col, Outbox.from_config(cfg) as outbox, Terminal(cfg, outbox=outbox) as term:
        col.wait_subscribed(10)
        term.link = link = Link(cfg, outbox, on_update=term.apply_update, status_source=term.status).start()
        assert link.wait_connected(10)

        def decide(f=frame):
            (event,) = term.process_frame(f)
            return event["decision"], event["reason"]

        assert decide() == ("PASS", "ok")  # a verified declaration, not yet denied

        _chot("collector", "publish-denylist", str(tmp_path / "deny.txt"), "--config", str(col_toml), *fast,
              cwd=tmp_path)
        assert wait_until(lambda: link.updates.version("denylist") is not None)
        assert decide() == ("FAIL", "denylisted")  # the very next decision
        assert decide(plain)[1] != "denylisted"  # an unverified claim never consults the person list
        version = link.updates.version("denylist")

        # a forged list (another key, newer version) and an older genuine one are ignored
        forger = ed25519.Ed25519PrivateKey.generate()
        key = serialization.load_pem_private_key((tmp_path / "keys" / "collector.key").read_bytes(), None)
        from chot.personal import make_denylist_body

        empty = make_denylist_body(version + 5, params={"t": 1, "m_kib": 8192, "p": 1})
        topic = wire.broadcast_topic("denylist")
        ignored = link.counters["updates_ignored"]
        publish(broker.port, topic, wire.sign_envelope(forger, "denylist", version + 5, empty))
        publish(broker.port, topic, wire.sign_envelope(key, "denylist", version - 1, dict(empty, version=version - 1)))
        assert wait_until(lambda: link.counters["updates_ignored"] >= ignored + 2)
        assert link.updates.version("denylist") == version
        assert decide() == ("FAIL", "denylisted")

        # a newer genuine list (empty) lifts the ban
        _chot("collector", "publish-denylist", str(tmp_path / "empty.txt"), "--config", str(col_toml), *fast,
              cwd=tmp_path)
        assert wait_until(lambda: (link.updates.version("denylist") or 0) > version)
        assert decide() == ("PASS", "ok")

        assert link.wait_acked(5, 10)
        link.close()
    with Storage(url, migrate=False, keys=CollectorKeys.from_dir(collector_key_dir)) as st:
        E = st.Event
        rows = list(E.select(E.seq, E.decision, E.reason, E.verified).where(E.device_id == DEV).order_by(E.seq)
                    .tuples())
        assert [r for r in rows if r[0] != 3] == [(1, "PASS", "ok", True), (2, "FAIL", "denylisted", True),
                                                  (4, "FAIL", "denylisted", True), (5, "PASS", "ok", True)]
        assert rows[2][3] is False  # the plain ID: an unverified claim
        res = queries.visits(st, id_number, "case-deny", "tester")
        assert len(res["verified"]) == 4 and len(res["unverified"]) == 1
        assert {v["person"]["name"] for v in res["verified"]} == {person["name"]}
