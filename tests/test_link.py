"""The terminal's MQTT link against a real Mosquitto, with a stand-in ack-er for the collector."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from servers import Mosquitto
from uplink_helpers import Acker, Watcher, fill, publish, terminal_cfg, wait_until

from chot import wire
from chot.personal import make_denylist_body
from device.uplink.link import Link
from device.uplink.outbox import Outbox
from device.uplink.updates import store_path_for

ROOT = Path(__file__).resolve().parent.parent
DEV = "term-1"


def _outbox(cfg):
    return Outbox.from_config(cfg)


def _collector_key(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "collector.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pub


def test_backlog_goes_in_batches_in_seq_order_and_is_delivered_only_after_the_ack(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port, batch=40, inflight=3)  # at most 3 * 40 events unacked
    with _outbox(cfg) as outbox, Acker(broker.port, acking=False) as acker:
        fill(outbox, 250)
        with Link(cfg, outbox) as link:
            assert wait_until(lambda: len(acker.seqs(DEV)) >= 120), acker.seqs(DEV)[-5:]
            # every message was PUBACKed by the broker (it reached a subscriber) ...
            assert wait_until(lambda: all(info.is_published() for info, _ in link._inflight))
            time.sleep(0.5)
            # ... and yet nothing is delivered: only the collector's ack frees an event
            assert outbox.stats()["delivered_upto"] == 0
            assert outbox.stats()["depth"] == 250
            assert link.acked_seq == 0
            # no more than the window goes out without the collector's ack
            assert acker.seqs(DEV) == list(range(1, 121))  # seq order, each once
            assert [len(seqs) for d, seqs in acker.messages] == [40, 40, 40]  # batched while draining
            # the ack of a stand-in collector frees them and lets the rest go
            assert acker.ack_seen(DEV) == 120
            assert link.wait_acked(250, 10)
            assert acker.seqs(DEV) == list(range(1, 251))
            assert outbox.stats()["delivered_upto"] == 250
            assert outbox.stats()["depth"] == 0
            # a single new event goes out at once, alone
            fill(outbox, 1, start=250)
            link.wake()
            assert link.wait_acked(251, 10)
            assert acker.messages[-1] == (DEV, [251])


def test_unacked_events_are_sent_again_after_the_ack_timeout(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port, ack_timeout_s=1.0)
    with _outbox(cfg) as outbox, Acker(broker.port, ignore_first=True) as acker:
        fill(outbox, 5)
        with Link(cfg, outbox) as link:
            assert link.wait_acked(5, 15)
            seen = acker.seen[DEV]
            assert all(seen[s] >= 2 for s in range(1, 6))  # ignored once, sent again, then acked
            assert link.counters["resends"] >= 1
            assert outbox.stats()["depth"] == 0


STATUS_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from uplink_helpers import terminal_cfg, fill
    from device.uplink.outbox import Outbox
    from device.uplink.link import Link
    cfg = terminal_cfg(Path({tmp!r}), {port}, status_interval_s=1.0)
    outbox = Outbox.from_config(cfg)
    fill(outbox, 3)
    src = lambda: {{"version": "9.9-test", "last_scan": "2021-08-09T07:00:00.000000Z", "passes": 2, "fails": 1}}
    link = Link(cfg, outbox, status_source=src).start()
    link.wait_connected(10)
    print("connected", flush=True)
    time.sleep(60)
    """
)


def test_status_is_retained_with_its_fields_and_the_last_will_says_offline(tmp_path, broker):
    script = STATUS_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path), port=broker.port)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == b"connected"
        topic = wire.status_topic(DEV)
        with Watcher(broker.port, [topic]) as w:
            assert wait_until(lambda: topic in w.last)
            status = json.loads(w.last[topic])
            assert w.all[0][2], "status must be retained"
            assert set(wire.STATUS_FIELDS) <= set(status)
            assert status["online"] is True and status["device_id"] == DEV
            assert status["version"] == "9.9-test"
            assert status["outbox_depth"] == 3 and status["last_seq"] == 3
            assert isinstance(status["oldest_undelivered_age_s"], float) and status["oldest_undelivered_age_s"] >= 0
            assert isinstance(status["clock_synced"], bool)
            assert status["last_scan"] == "2021-08-09T07:00:00.000000Z"
            assert (status["passes"], status["fails"]) == (2, 1)
            os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker sends the last will
            proc.wait(5)
            assert wait_until(lambda: json.loads(w.last[topic]).get("online") is False, timeout=15)
        # the offline status is retained for whoever asks later
        with Watcher(broker.port, [topic]) as w2:
            assert wait_until(lambda: topic in w2.last)
            will = wire.to_dict(wire.decode_status(w2.last[topic]))
            assert {k: v for k, v in will.items() if v is not None} == {"device_id": DEV, "online": False}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_malformed_acks_are_counted_and_ignored_and_events_go_out_as_stored(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port)
    with _outbox(cfg) as outbox, Acker(broker.port) as acker:
        fill(outbox, 3)
        stored = [raw for _, raw in outbox.pending_raw()]
        seen = []
        acker.client.on_message, inner = None, acker._on_message

        def spy(client, userdata, msg):
            seen.append(msg.payload)
            inner(client, userdata, msg)

        acker.client.on_message = spy
        with Link(cfg, outbox) as link:
            assert link.wait_connected(10)
            # acked first: a link that got its ack is subscribed to its ack topic, so none of the bad
            # acks below (not retained) can arrive before the subscription and be missed
            assert link.wait_acked(3, 10)
            for bad in (b"not json", b'{"device_id": "term-1"}', b'{"device_id": "term-1", "seq": -1}'):
                publish(broker.port, wire.ack_topic(DEV), bad, retain=False)
            assert wait_until(lambda: link.counters["bad_acks"] == 3)
        sent = []
        for payload in seen:  # each event's bytes as the outbox stored them, one message or a batch
            if payload.startswith(b'{"batch"'):
                sent += [bytes(r) for r in msgspec.json.decode(payload, type=dict[str, list[msgspec.Raw]])["batch"]]
            else:
                sent.append(payload)
        assert sent == stored


def test_status_is_typed_and_holds_only_counts(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port)
    with _outbox(cfg) as outbox:
        fill(outbox, 2)
        # a status source giving something the contract does not know is not passed through
        src = lambda: {"passes": 2, "fails": 0, "last_scan": "2021-08-09T07:00:00.000000Z",  # noqa: E731
                       "person": "Nguyễn Văn An", "version": "1.0"}
        link = Link(cfg, outbox, status_source=src)
        try:
            status = wire.decode_status(link._status_payload(online=True))
            assert set(wire.to_dict(status)) == set(wire.STATUS_FIELDS)
            assert (status.passes, status.outbox_depth, status.last_seq) == (2, 2, 2)
            assert "Nguy" not in link._status_payload(online=True).decode()
            # a field that does not fit (a version too long) gives the minimal status, never a bad one
            link.status_source = lambda: {"version": "x" * 100}
            minimal = wire.decode_status(link._status_payload(online=True))
            assert minimal.version is None and minimal.outbox_depth == 2 and link.counters["bad_status"] == 1
        finally:
            link.close()


def test_close_publishes_offline_status(tmp_path, broker):
    cfg = terminal_cfg(tmp_path, broker.port)
    topic = wire.status_topic(DEV)
    with _outbox(cfg) as outbox, Watcher(broker.port, [topic]) as w:
        link = Link(cfg, outbox).start()
        assert wait_until(lambda: topic in w.last and json.loads(w.last[topic])["online"])
        link.close()
        assert wait_until(lambda: json.loads(w.last[topic])["online"] is False)
        assert json.loads(w.last[topic])["outbox_depth"] == 0


def test_signed_denylist_applied_forged_and_older_ignored_and_kept_across_restart(tmp_path, broker):
    key, pub = _collector_key(tmp_path)
    forger = ed25519.Ed25519PrivateKey.generate()
    cfg = terminal_cfg(tmp_path, broker.port, collector_public_key=str(pub))
    topic = wire.broadcast_topic("denylist")
    applied = []
    body2 = make_denylist_body(2, credential_ids=["3f9c0a1b2c4d5e6f"], salt=bytes(16))
    with _outbox(cfg) as outbox:
        with Link(cfg, outbox, on_update=lambda *a: applied.append(a)) as link:
            assert link.wait_connected(10)
            publish(broker.port, topic, wire.sign_envelope(key, "denylist", 2, body2))
            assert wait_until(lambda: applied == [("denylist", body2, 2)])
            # forged: a newer version signed by another key
            forged = dict(body2, version=9, revoked=[])
            publish(broker.port, topic, wire.sign_envelope(forger, "denylist", 9, forged))
            # older: correctly signed, version 1
            publish(broker.port, topic, wire.sign_envelope(key, "denylist", 1, dict(body2, version=1)))
            # for another device: a config update targeted elsewhere, on this device's topic
            publish(broker.port, wire.config_topic(DEV), wire.sign_envelope(key, "config", 5, {}, target="other"))
            time.sleep(0.7)
            assert applied == [("denylist", body2, 2)]
            assert link.updates.version("denylist") == 2
            assert link.updates.version("config") is None
        assert store_path_for(cfg.outbox.path).exists()

        # restart without any broker: what was applied last is applied again at start
        broker.stop()
        again = []
        with Link(cfg, outbox, on_update=lambda *a: again.append(a)) as link2:
            assert again == [("denylist", body2, 2)]
            assert link2.updates.version("denylist") == 2

        # a tampered file is not trusted
        path = store_path_for(cfg.outbox.path)
        kept = json.loads(path.read_text())
        env = json.loads(kept["denylist"]["payload"])
        env["body"]["revoked"] = []
        kept["denylist"]["payload"] = json.dumps(env)
        path.write_text(json.dumps(kept))
        third = []
        link3 = Link(cfg, outbox, on_update=lambda *a: third.append(a))
        link3.close()
        assert third == []


def test_broker_down_events_keep_buffering_and_go_out_when_it_is_back(tmp_path):
    b = Mosquitto(tmp_path / "mosq").start()
    health = []
    try:
        cfg = terminal_cfg(tmp_path, b.port, ack_timeout_s=1.0)
        with _outbox(cfg) as outbox, Acker(b.port) as acker:
            with Link(cfg, outbox, on_health=health.append) as link:
                fill(outbox, 5)
                link.wake()
                assert link.wait_acked(5, 10)
                b.stop()
                assert wait_until(lambda: not link.connected)
                for _ in range(20):
                    outbox.append({"source": "camera", "format": "unknown", "decision": "FAIL",
                                   "reason": "unreadable", "verified": False, "sealed": None})
                    link.wake()
                time.sleep(0.3)
                assert link.uplink_down_for() > 0
                assert outbox.stats()["depth"] == 20
                link._down_since -= 3600  # pretend it has been down an hour: the alarm goes
                assert wait_until(lambda: health == ["uplink_down"])
                b.start()
                assert link.wait_acked(25, 20)
                assert wait_until(lambda: health == ["uplink_down", "ok"])
                assert outbox.stats()["depth"] == 0
                assert set(acker.seqs(DEV)) == set(range(1, 26))
    finally:
        b.stop()


def test_missing_tls_files_and_bad_key_say_what_to_fix(tmp_path, broker):
    from chot.errors import UplinkError

    cfg = terminal_cfg(tmp_path, broker.port, tls=True, ca=str(tmp_path / "nope-ca.pem"))
    with _outbox(cfg) as outbox:
        with pytest.raises(UplinkError, match="mqtt.ca"):
            Link(cfg, outbox)
        bad = tmp_path / "bad.pem"
        bad.write_text("not a key")
        cfg2 = terminal_cfg(tmp_path, broker.port, collector_public_key=str(bad))
        with pytest.raises(UplinkError, match="PEM"):
            Link(cfg2, outbox)


def test_delivered_events_are_purged_after_their_retention(tmp_path, broker):
    # delivered events are kept no time at all
    cfg = terminal_cfg(tmp_path, broker.port, sections={"outbox": {"retention_days": 0.0}})
    with _outbox(cfg) as outbox, Acker(broker.port):
        fill(outbox, 10)
        with Link(cfg, outbox) as link:
            assert link.wait_acked(10, 10)
        assert outbox.stats()["rows"] == 10  # delivered, still kept until the next purge
        fill(outbox, 2, start=10)
        with Link(cfg, outbox) as link:  # the link purges when it starts, then every few minutes
            assert wait_until(lambda: outbox.stats()["rows"] <= 2)
            assert link.wait_acked(12, 10)
        assert [e["seq"] for e in outbox.pending()] == []
