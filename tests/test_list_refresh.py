"""Issue 11: the running collector keeps the signed lists fresh (collector/refresh.py).

Real Mosquitto, real SQLite and PostgreSQL, a real terminal link (device/uplink/link.py with its
UpdateStore and time floor). Small ages and intervals come from the configs; every wait is for a
condition, with a generous timeout, never a timed assertion.
"""

import json
import subprocess
import sys
import threading
import uuid
from datetime import timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from uplink_helpers import terminal_cfg, wait_until

from chot import wire
from chot.personal import person_id_for_id
from chotdemo.testing import collector_config, make_keys
from collector.config import load_collector_config
from collector.refresh import SignedStore, refresh_after_s
from collector.signing import keygen, publish_denylist, publish_trust, set_config
from collector.storage import Storage
from collector.subscriber import Collector
from device.credentials.denylist import DenyList
from device.uplink.link import Link
from device.uplink.outbox import Outbox

DENY, TRUST = wire.broadcast_topic("denylist"), wire.broadcast_topic("trust")
FAST = {"t": 1, "m_kib": 8192, "p": 1}  # Argon2id parameters a test can afford
MAX_AGE_H = 0.01  # the terminal's policy.max_list_age_h: 36 s


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def keys(tmp_path):
    keygen(tmp_path / "sign")
    make_keys(tmp_path / "keys")
    return tmp_path


def col_cfg(db_url, broker, keys, **collector):
    return collector_config(db_url, port=broker.port, key_dir=keys / "keys",
                            collector={"signing_key": str(keys / "sign" / "collector.key"), **collector})


def held(outbox, kind):
    return outbox.time_floor.lists().get(kind)


def at(text, **delta):
    return wire.envelope_time(text) + timedelta(**delta)


def retained_on(port, topics, timeout=10.0):
    """{topic: payload} of the retained messages a fresh subscriber gets on `topics` (none: absent).

    A marker published after the subscription arrives after every retained message it brought.
    """
    got, done = {}, threading.Event()
    marker = f"chot/test/marker/{uuid.uuid4().hex[:8]}"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(cl, u, m):
        if m.topic == marker:
            done.set()
        elif m.payload:
            got[m.topic] = m.payload

    c.on_message = on_message
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe([(t, 1) for t in [*topics, marker]])
    assert subscribed.wait(timeout)
    c.publish(marker, b"x", qos=1)
    assert done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return got


# --- the signed messages kept in the database -------------------------------------------------


def test_the_signed_store_keeps_one_message_per_topic_with_compare_and_set(db_url, keys):
    from collector.signing import load_signing_key

    key = load_signing_key(keys / "sign" / "collector.key")
    st = Storage(db_url)
    store = SignedStore(st)
    p10 = wire.sign_envelope(key, "trust", 10, {"format": "chot-trust-v1", "files": []}, ttl_s=3600)
    assert store.save("trust", TRUST, "*", 10, p10, 3600.0) is True
    assert store.save("trust", TRUST, "*", 5, p10, 3600.0) is False  # older than what is kept: sign again
    row = store.summary()[TRUST]
    assert (row["version"], row["published_version"], row["ttl_s"]) == (10, None, 3600.0)
    p11 = wire.sign_envelope(key, "trust", 11, {"format": "chot-trust-v1", "files": []}, ttl_s=3600)
    assert store.replace(TRUST, 10, 11, p11) is True
    assert store.replace(TRUST, 10, 12, p11) is False  # two collectors: only one re-signs a version
    store.mark_published(TRUST, 10, "late")  # an older version confirmed late changes nothing
    assert store.published_version(TRUST) is None
    store.mark_published(TRUST, 11, "collector a")
    store.heartbeat("a", True)
    store.heartbeat("b", False)
    assert store.live_publishers() == ["a"]
    st.close()
    # a restart (a new process) finds it all again
    st = Storage(db_url)
    store = SignedStore(st)
    row = store.get(TRUST)
    assert (row["version"], row["published_version"], row["published_by"], row["refreshed"]) == (
        11, 11, "collector a", 1)
    assert json.loads(store.payload(TRUST, 11))["version"] == 11 and store.payload(TRUST, 10) is None
    assert store.live_publishers(max_age_s=0.0) == []  # a heartbeat that old is no running collector
    st.close()


def test_lists_are_re_signed_before_half_their_life_and_config_at_half_its_life():
    assert refresh_after_s("denylist", 168 * 3600, 24.0) == 24 * 3600
    assert refresh_after_s("trust", 6 * 3600, 24.0) == 3 * 3600  # a short --ttl-h: half of it
    assert refresh_after_s("config", 720 * 3600, 24.0) == 360 * 3600
    assert refresh_after_s("denylist", 168 * 3600, 0.0) == 84 * 3600


# --- the running collector keeps a terminal fresh ------------------------------------------------


def test_a_running_collector_keeps_a_terminal_fresh_across_its_age_limit_and_a_restart(tmp_path, broker, db_url,
                                                                                        keys):
    cfg = col_cfg(db_url, broker, keys, refresh_lists_h=0.0005)  # re-signed 1.8 s after issue
    (tmp_path / "deny.txt").write_text("001 090 000 001\nrevoked:decl-1\n")
    (tmp_path / "gate.toml").write_text("[policy]\nmax_age_h = 12.0\n")
    tcfg = terminal_cfg(tmp_path, broker.port, collector_public_key=str(keys / "sign" / "collector.pub"),
                        sections={"policy": {"max_list_age_h": MAX_AGE_H}})
    applied = []
    with Storage(cfg.collector.database) as st:
        # published by the commands while no collector runs: directly
        publish_denylist(st, cfg, tmp_path / "deny.txt", params=FAST)
        publish_trust(st, cfg, [keys / "sign" / "collector.pub"])
        set_config(st, cfg, "term-1", tmp_path / "gate.toml", ttl_h=0.005)  # 18 s: re-signed at 9 s
        kept = SignedStore(st).summary()
    assert {r["published_by"] for r in kept.values()} == {"directly"}
    with Outbox.from_config(tcfg) as outbox, Link(tcfg, outbox, on_update=lambda *a: applied.append(a)) as link:
        assert link.wait_connected(10)
        assert wait_until(lambda: all(held(outbox, k) for k in ("denylist", "trust", "config")), timeout=30)
        first = {k: held(outbox, k) for k in ("denylist", "trust", "config")}
        first_body = next(b for k, b, v in applied if k == "denylist")
        beyond = max(at(first["denylist"]["issued"]), at(first["trust"]["issued"])) + timedelta(
            hours=MAX_AGE_H, seconds=2)
        # with nobody republishing, the lists would be stale past their age limit (the config expired by then)
        assert outbox.time_floor.stale(at=beyond, max_list_age_h=MAX_AGE_H) == ["trust", "denylist", "config"]

        with Collector(cfg) as col:
            col.wait_subscribed()

            def refreshed_past(kind, seconds):
                h = held(outbox, kind)
                return h["version"] > first[kind]["version"] and at(h["issued"]) >= at(first[kind]["issued"],
                                                                                       seconds=seconds)

            assert wait_until(lambda: refreshed_past("denylist", 2) and refreshed_past("trust", 2)
                              and refreshed_past("config", 1), timeout=60), outbox.time_floor.lists()
            # fresh across what would have been the age limit, and later expiries
            assert "denylist" not in outbox.time_floor.stale(at=beyond, max_list_age_h=MAX_AGE_H)
            assert "trust" not in outbox.time_floor.stale(at=beyond, max_list_age_h=MAX_AGE_H)
            assert not {"denylist", "trust"} & set(link._status_fields()["stale"])  # what the status says now
            for kind in ("denylist", "trust", "config"):
                assert held(outbox, kind)["expires"] > first[kind]["expires"]
            assert col.stats()["lists"]["refreshed"] >= 3
            # re-signed, not recomputed: the same deny list body (salt, entries, its own version)
            bodies = [b for k, b, v in applied if k == "denylist"]
            assert len(bodies) >= 2 and all(b == first_body for b in bodies)
            before_restart = {k: held(outbox, k)["version"] for k in ("denylist", "trust")}
            rows = SignedStore(col.storage).summary()
            assert rows[DENY]["published_by"] == "collector test" and rows[DENY]["refreshed"] >= 1
        # a list never published is not invented: only the three topics, no other terminal's config
        assert set(rows) == {DENY, TRUST, wire.config_topic("term-1")}
        assert retained_on(broker.port, [wire.config_topic("term-2")]) == {}

        # the refresh survives a restart: its state is in the database
        with Collector(cfg) as col:
            assert wait_until(lambda: all(held(outbox, k)["version"] > before_restart[k] for k in before_restart),
                              timeout=60), outbox.time_floor.lists()
    # the terminal's deny list keeps its cached Argon2 answers across a re-signed, unchanged list
    dl = DenyList.from_dict(bodies[0])
    assert dl.is_denied_person(person_id_for_id("001090000001")) is True
    assert dl.is_denied_person(person_id_for_id("001090000002")) is False
    cache = dl._state.cache
    assert len(cache) == 2
    dl.replace(DenyList.from_dict(bodies[-1]))
    assert dl._state.cache is cache and len(cache) == 2
    # a new list (new salt) starts a new cache
    with Storage(cfg.collector.database) as st:
        new_body = json.loads(publish_denylist(st, cfg, tmp_path / "deny.txt", params=FAST, publish=False)[0])["body"]
    dl.replace(DenyList.from_dict(new_body))
    assert len(dl._state.cache) == 0


def test_a_collector_with_nothing_published_publishes_nothing(tmp_path, broker, keys):
    cfg = col_cfg(f"sqlite:///{tmp_path}/c.db", broker, keys, refresh_lists_h=0.0005)
    with Collector(cfg) as col:
        col.wait_subscribed()
        store = SignedStore(col.storage)
        assert wait_until(lambda: store.live_publishers() == ["test"], timeout=30)
        col.lists.tick()
        assert store.summary() == {}
        assert col.stats()["lists"] == {"refreshed": 0, "published": 0, "restored": 0, "publish_failures": 0,
                                         "errors": 0}
    assert retained_on(broker.port, [DENY, TRUST, "chot/v1/dev/+/config"]) == {}
    with Storage(cfg.collector.database) as st:
        assert SignedStore(st).live_publishers() == []  # it said so when it stopped


# --- the commands hand their list to the running collector -----------------------------------------


def test_lists_a_restarted_broker_lost_are_published_again_unchanged(tmp_path, broker, keys):
    """A broker restarted without persistence has lost its retained lists and the collector's presence:
    reconnecting, the collector gets no retained presence of its own, and publishes every kept list
    again, the same version (no new signature), instead of leaving the fleet without lists until the
    next refresh."""
    cfg = col_cfg(f"sqlite:///{tmp_path}/c.db", broker, keys)
    (tmp_path / "deny.txt").write_text("revoked:decl-7\n")
    with Collector(cfg) as col:
        col.wait_subscribed()
        store = SignedStore(col.storage)
        assert wait_until(lambda: store.live_publishers() == ["test"], timeout=30)
        with Storage(cfg.collector.database) as st:
            publish_trust(st, cfg, [keys / "sign" / "collector.pub"])
            publish_denylist(st, cfg, tmp_path / "deny.txt", params=FAST)
        kept = {t: store.get(t)["payload"] for t in (DENY, TRUST)}
        assert {t: p.decode() for t, p in retained_on(broker.port, [DENY, TRUST]).items()} == kept
        assert col.stats()["lists"]["restored"] == 0  # its first connection: nothing was kept yet
        connects = col.stats()["connects"]

        broker.stop()
        broker.start()  # persistence off: the retained lists and every session are gone
        assert wait_until(lambda: col.stats()["connects"] > connects and col.stats()["lists"]["restored"] == 2,
                          timeout=60), col.stats()
        assert {t: p.decode() for t, p in retained_on(broker.port, [DENY, TRUST]).items()} == kept
        assert {t: store.get(t)["payload"] for t in (DENY, TRUST)} == kept  # not re-signed

        # a reconnect to a broker that kept its retained messages (here: the link dropped) sends nothing again
        published, connects = col.stats()["lists"]["published"], col.stats()["connects"]
        col.client.reconnect()
        assert wait_until(lambda: col.stats()["connects"] > connects and col.subscribed.is_set(), timeout=30)
        col.lists.tick()
        assert col.stats()["lists"]["published"] == published and col.stats()["lists"]["restored"] == 2


def test_the_publish_commands_hand_the_list_to_the_running_collector(tmp_path, broker, keys):
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[collector]\nid = "main"\ndatabase = "sqlite:///{tmp_path}/c.db"\n'
        f'signing_key = "{keys}/sign/collector.key"\nkey_dir = "{keys}/keys"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[http]\nenabled = false\n'
    )
    (tmp_path / "deny.txt").write_text("revoked:decl-9\n")
    cfg = load_collector_config(conf)

    def chot(*args, check=True, out=False):
        r = subprocess.run([sys.executable, "-m", "chot.cli", "collector", *args, "--config", str(conf)],
                           capture_output=True, text=True, timeout=120)
        if check:
            assert r.returncode == 0, r.stderr
        return r if not check else r.stdout if out else r.stderr

    with Collector(cfg) as col:
        col.wait_subscribed()
        store = SignedStore(col.storage)
        assert wait_until(lambda: store.live_publishers() == ["main"], timeout=30)
        out = chot("publish-denylist", str(tmp_path / "deny.txt"), "--argon2-t", "1", "--argon2-m-kib", "8192")
        assert "(collector main)" in out
        row = store.get(DENY)
        assert row["published_by"] == "collector main" and row["published_version"] == row["version"]
        assert retained_on(broker.port, [DENY])[DENY].decode() == row["payload"]
        out = chot("publish-trust", str(keys / "sign" / "collector.pub"))
        assert "(collector main)" in out and store.get(TRUST)["published_by"] == "collector main"
        # --now: from the command's own connection
        out = chot("publish-trust", str(keys / "sign" / "collector.pub"), "--now")
        row = store.get(TRUST)
        assert "(directly)" in out and row["published_by"] == "directly"
        assert retained_on(broker.port, [TRUST])[TRUST].decode() == row["payload"]
        assert col.stats()["lists"]["published"] >= 2
        listed = json.loads(chot("signed", out=True))
        assert listed["running"] == ["main"] and [m["topic"] for m in listed["messages"]] == [DENY, TRUST]
        assert "payload" not in listed["messages"][0]
    # no collector running: the command publishes directly, at once
    out = chot("publish-trust", str(keys / "sign" / "collector.pub"))
    assert "(directly)" in out
    # a message no longer wanted is forgotten: never re-signed again
    chot("signed", "--forget", TRUST)
    listed = json.loads(chot("signed", out=True))
    assert listed["running"] == [] and [m["topic"] for m in listed["messages"]] == [DENY]
    r = chot("signed", "--forget", TRUST, check=False)
    assert r.returncode != 0 and "no signed message is kept" in r.stderr


def test_a_new_list_is_not_lost_to_a_concurrent_refresh(tmp_path, broker, keys):
    """A command that signed version N while a refresh kept N+1 signs its body again, newer."""
    cfg = col_cfg(f"sqlite:///{tmp_path}/c.db", broker, keys)
    with Storage(cfg.collector.database) as st:
        publish_trust(st, cfg, [keys / "sign" / "collector.pub"], now=True)
        store = SignedStore(st)
        old = store.get(TRUST)
        from collector.signing import deliver, load_signing_key

        key = load_signing_key(cfg.collector.signing_key)
        body = {"format": "chot-trust-v1", "files": [{"name": "x.pem", "pem": "-----BEGIN PUBLIC KEY-----"}]}
        stale_version = old["version"] - 1  # as if a refresh took a newer version after this one was taken
        payload = wire.sign_envelope(key, "trust", stale_version, body, ttl_s=3600)
        out, version, by = deliver(st, cfg, "trust", TRUST, "*", payload, stale_version, now=True)
        assert version > old["version"] and json.loads(out)["body"] == body and by == "directly"
        assert store.get(TRUST)["version"] == version
        assert json.loads(retained_on(broker.port, [TRUST])[TRUST])["version"] == version


# --- on the fleet's broker: handing over displaces nobody -------------------------------------------


def test_on_the_fleet_broker_the_handover_keeps_the_collector_connected_and_now_displaces_it(tmp_path):
    """The fleet's Mosquitto forces the client id to the certificate's CN: a command connecting with the
    collector's certificate takes the running collector's connection over. Handed over, the list goes
    out through the collector's own connection instead."""
    import os

    from conftest import need
    from servers import MOSQUITTO
    from test_tls_fleet import FleetBroker, collector_cfg

    from provisioning.fleet import init_fleet

    need(os.path.exists(MOSQUITTO), "mosquitto")
    fleet = init_fleet(tmp_path / "fleet", "broker.test")
    broker = FleetBroker(fleet, tmp_path / "broker").start()
    try:
        cfg = collector_cfg(fleet, broker.port, tmp_path / "c.db")
        with Collector(cfg) as col:
            col.wait_subscribed()
            store = SignedStore(col.storage)
            assert wait_until(lambda: store.live_publishers() == [cfg.collector.id], timeout=30)
            with Storage(cfg.collector.database) as st:
                publish_trust(st, cfg, [fleet.signing_pub])
            row = store.get(TRUST)
            assert row["published_by"] == f"collector {cfg.collector.id}"
            assert row["published_version"] == row["version"]
            assert col.stats().get("disconnects", 0) == 0  # nobody was displaced
            with Storage(cfg.collector.database) as st:
                publish_trust(st, cfg, [fleet.signing_pub], now=True)  # the old way: its own connection
            assert store.get(TRUST)["published_by"] == "directly"
            assert wait_until(lambda: col.stats().get("disconnects", 0) >= 1, timeout=30)  # displaced
            assert wait_until(col.connected.is_set, timeout=30)  # and back by itself
    finally:
        broker.stop()


# --- the terminal: a re-signed list is applied without redoing its work ---------------------------


def test_a_re_signed_deny_list_keeps_the_terminals_cached_answers(tmp_path):
    from datetime import UTC, datetime

    from chot.config import validate
    from chot.personal import make_denylist_body
    from collector.signing import trust_body
    from device.config import SCHEMA
    from device.credentials import keys as issuer_keys
    from device.credentials.issue_cli import issue_declaration, make_test_identities
    from device.credentials.policy import Checker
    from device.update_apply import apply_update

    key = issuer_keys.generate("ed25519")
    _, pub = issuer_keys.save_keypair(key, tmp_path / "issuer")
    cfg = validate({"device": {"id": "t", "checkpoint": "c", "direction": "in"}}, SCHEMA)
    person = make_test_identities(1, seed=11)[0]
    text = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=2))
    checker = apply_update(cfg, Checker.from_config(cfg.policy), "trust", trust_body([pub]), 1)
    body = make_denylist_body(7, person_ids=[person_id_for_id(person["id_number"])], params=FAST)
    checker = apply_update(cfg, checker, "denylist", body, 7)
    assert checker.check(text)[1].reason == "denylisted"  # one Argon2id, cached
    dl = checker.policy.denylist
    cache = dl._state.cache
    assert len(cache) == 1
    # the collector re-signs the same body as envelope version 8, 9 (its inner version stays 7)
    for envelope_version in (8, 9):
        checker = apply_update(cfg, checker, "denylist", json.loads(json.dumps(body)), envelope_version)
        checker = apply_update(cfg, checker, "trust", trust_body([pub]), envelope_version)
        assert checker.policy.denylist is dl and dl.version == 7
        assert dl._state.cache is cache and len(cache) == 1  # no Argon2id again
        assert checker.check(text)[1].reason == "denylisted"
    assert len(cache) == 1
