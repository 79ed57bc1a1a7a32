"""The local Mosquitto (provisioning.localbroker.LocalBroker) against the real broker.

Authenticated mode (issue 10, items 4 and 5; issue 11): with `secure=True` a terminal logs in as
its device id (also its client id) and the fleet's rules apply (the dynamic-security plugin):
terminal t2 can publish neither an ack nor an event under terminal t1's topics (MQTT 5 PUBACK
135), nor an ack of its own; an anonymous client or a wrong password is refused; the collector
publishes acks and reads events through its shared subscription; users added while running
(the plugin's control topic) leave connected clients connected; the real Link and Collector work
with the mqtt.username / mqtt.password_file it hands out.

Persistence (item 8): a persistent session that reached the disk (`save()`, or the 1 s
autosave) survives kill -9 of the broker, and QoS 1 messages published after the restart wait
in it for the subscriber; without a snapshot the session is gone and those messages with it.
"""

import json
import stat
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from conftest import need
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from servers import MOSQUITTO, Mosquitto

from chot import wire
from chot.errors import ProvisioningError
from provisioning.broker import ROLE_COLLECTOR, collector_acls, device_acls, device_role
from provisioning.localbroker import password_hash, try_login

NOT_AUTHORIZED = 135


@pytest.fixture(autouse=True)
def _mosquitto():
    import os

    need(os.path.exists(MOSQUITTO), "mosquitto")


class Client:
    """A bare paho MQTT 5 client that records CONNACK, PUBACK and SUBACK reason codes and messages."""

    def __init__(self, port, client_id, user=None, password=None, clean=True, expiry=0):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.port, self.clean, self.expiry = port, clean, expiry
        self.cond = threading.Condition()
        self.connack, self.disconnects, self.pubacks, self.subacks, self.messages = None, [], {}, {}, []
        self.c.on_connect = lambda c, u, f, rc, p: self._note("connack", rc)
        self.c.on_disconnect = lambda c, u, f, rc, p: self._note("disconnect", rc)
        self.c.on_publish = lambda c, u, mid, rc, p: self._note("puback", (mid, rc))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._note("suback", (mid, rcs))
        self.c.on_message = lambda c, u, m: self._note("message", (m.topic, m.payload))

    def _note(self, kind, value):
        with self.cond:
            if kind == "connack":
                self.connack = value
            elif kind == "disconnect":
                self.disconnects.append(value)
                if self.connack is None:
                    self.connack = value
            elif kind == "puback":
                self.pubacks[value[0]] = value[1]
            elif kind == "suback":
                self.subacks[value[0]] = value[1]
            else:
                self.messages.append(value)
            self.cond.notify_all()

    def connect(self, timeout=10):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.expiry
        self.c.connect("127.0.0.1", self.port, keepalive=30, clean_start=self.clean, properties=props)
        self.c.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, timeout)
        return self.connack

    def publish(self, topic, payload=b"{}", timeout=10):
        info = self.c.publish(topic, payload, qos=1)
        with self.cond:
            self.cond.wait_for(lambda: info.mid in self.pubacks, timeout)
        return self.pubacks.get(info.mid)

    def subscribe(self, topic, timeout=10):
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            self.cond.wait_for(lambda: mid in self.subacks, timeout)
        return self.subacks.get(mid)

    def wait_messages(self, n, timeout=10):
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
        return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def login(broker, user, client_id=None):
    c = Client(broker.port, client_id or user, user, broker.password(user))
    assert c.connect().value == 0, f"{user} could not log in"
    return c


def refused(broker, user, topic, payload=b"{}"):
    """The PUBACK reason code of one publish by `user` on `topic`, on a connection of its own
    (Mosquitto 2.0.11 may drop a client after refusing one of its publishes)."""
    c = login(broker, user, client_id=f"{user}-forger")
    try:
        return c.publish(topic, payload).value
    finally:
        c.close()


@pytest.fixture
def secure(tmp_path):
    b = Mosquitto(tmp_path / "mosq", secure=True)
    b.add_terminal("t1")  # before start: written with the config
    b.start()
    b.add_terminal("t2")  # while running: SIGHUP, and wait until the broker takes it
    yield b
    b.stop()


def test_terminal_cannot_forge_acks_or_another_terminals_events(secure):
    col = login(secure, "collector", "col-1")
    t1 = login(secure, "t1")
    try:
        assert col.subscribe(f"$share/collectors/{wire.PREFIX}/dev/+/event")[0].value == 1
        assert t1.subscribe(wire.ack_topic("t1"))[0].value == 1
        # item 4: a forged ack for t1 (it would make t1 mark everything delivered); also t2's own ack
        forged = wire.encode_ack("t1", 1030)
        assert refused(secure, "t2", wire.ack_topic("t1"), forged) == NOT_AUTHORIZED
        assert refused(secure, "t2", wire.ack_topic("t2"), wire.encode_ack("t2", 5)) == NOT_AUTHORIZED
        # item 5: an event under t1's topic, naming t1 (it would take t1's seq 1)
        ev = {"device_id": "t1", "seq": 1}
        assert refused(secure, "t2", wire.event_topic("t1"), wire.dumps(ev)) == NOT_AUTHORIZED
        # nor configs and broadcasts, which only the collector writes
        assert refused(secure, "t2", wire.config_topic("t2")) == NOT_AUTHORIZED
        # (t2, not t1: a second connection of t1 would be t1, its user name being its client id)
        assert refused(secure, "t2", wire.broadcast_topic("denylist")) == NOT_AUTHORIZED
        # the collector publishes acks, and t1 gets only the collector's
        assert col.publish(wire.ack_topic("t1"), wire.encode_ack("t1", 1)).value == 0
        assert t1.wait_messages(1) == [(wire.ack_topic("t1"), wire.encode_ack("t1", 1))]
        # t2's own event goes through, and it is all the collector ever received
        assert refused(secure, "t2", wire.event_topic("t2"), b'{"device_id":"t2"}') == 0
        assert col.wait_messages(1) == [(wire.event_topic("t2"), b'{"device_id":"t2"}')]
        time.sleep(0.3)
        assert len(col.messages) == 1 and len(t1.messages) == 1
        # user t2 added while t1 and the collector were connected: both stayed connected
        assert t1.disconnects == [] and col.disconnects == []
    finally:
        col.close()
        t1.close()


def test_anonymous_clients_and_wrong_passwords_are_refused(secure):
    anon = Client(secure.port, "anon")
    assert anon.connect().value == NOT_AUTHORIZED
    anon.c.loop_stop()
    wrong = Client(secure.port, "t1", "t1", "not-its-password")
    assert wrong.connect().value in (NOT_AUTHORIZED, 134)  # 134: bad user name or password
    wrong.c.loop_stop()
    nobody = Client(secure.port, "t9", "t9", "whatever")
    assert nobody.connect().value in (NOT_AUTHORIZED, 134)
    nobody.c.loop_stop()
    assert try_login(secure.port, "t1", secure.password("t1")) == 0
    assert try_login(secure.port, "t1", "x") != 0


def test_credentials_files_and_their_reuse(tmp_path):
    b = Mosquitto(tmp_path / "mosq", secure=True)
    user, path = b.add_terminal("gate-1-in")
    assert user == "gate-1-in" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == b.password("gate-1-in") and len(b.password("gate-1-in")) >= 32
    cuser, cpath = b.collector_credentials()
    assert cuser == "collector" and stat.S_IMODE(cpath.stat().st_mode) == 0o600
    assert b.add_terminal("gate-1-in") == (user, path)  # idempotent
    for bad in ("collector", "a/b", "t+", "#", "", "x:y", "a b"):
        with pytest.raises(ProvisioningError):
            b.add_terminal(bad)
    b.start()
    try:
        # the broker's files: hashed passwords only, 0600; the fleet's rules verbatim (provisioning.broker)
        text = b.dynsec_path.read_text()
        assert stat.S_IMODE(b.dynsec_path.stat().st_mode) == 0o600
        assert b.password("gate-1-in") not in text and b.password("collector") not in text
        rules = json.loads(text)
        clients = {c["username"]: c for c in rules["clients"]}
        assert {"gate-1-in", "collector"} <= set(clients) and clients["gate-1-in"]["iterations"] == 101
        roles = {r["rolename"]: r["acls"] for r in rules["roles"]}
        assert roles[device_role("gate-1-in")] == device_acls("gate-1-in")
        assert roles[ROLE_COLLECTOR] == collector_acls()
        assert not any(rules["defaultACLAccess"][k] for k in ("publishClientSend", "publishClientReceive", "subscribe"))
        conf = b.conf_path.read_text()
        assert "\nallow_anonymous false\n" in conf and "allow_anonymous true" not in conf
        assert "\nuse_username_as_clientid true\n" in conf and "\nplugin_opt_config_file " in conf
        assert try_login(b.port, "gate-1-in", b.password("gate-1-in")) == 0
        b.restart(kill=True)  # the users are rewritten with the config
        assert try_login(b.port, "gate-1-in", b.password("gate-1-in")) == 0
    finally:
        b.stop()
    again = Mosquitto(tmp_path / "mosq", secure=True)  # a new object on the same folder keeps them
    assert again.add_terminal("gate-1-in") == (user, path) and again.password("gate-1-in") == path.read_text().strip()
    with pytest.raises(ProvisioningError):
        Mosquitto(tmp_path / "anon").add_terminal("t1")  # the anonymous broker has no users


def test_password_hash_is_mosquittos_format(tmp_path):
    """What `mosquitto_passwd` writes: $7$<iterations>$<salt>$<PBKDF2-SHA512>, checked by the broker above."""
    import base64
    import hashlib

    h = password_hash("secret", salt=b"0123456789ab")
    _, alg, it, salt, digest = h.split("$")
    assert (alg, it, base64.b64decode(salt)) == ("7", "101", b"0123456789ab")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101)


def test_real_terminal_and_collector_log_in_with_the_credentials(tmp_path):
    """The wiring the demo and the fault harness use: mqtt.username + mqtt.password_file."""
    from uplink_helpers import fill, terminal_cfg

    from chotdemo.testing import make_keys
    from collector.config import config_from_dict
    from collector.subscriber import Collector
    from device.uplink.link import Link
    from device.uplink.outbox import Outbox

    b = Mosquitto(tmp_path / "mosq", secure=True).start()
    try:
        user, pw_file = b.add_terminal("term-1")
        cuser, cpw_file = b.collector_credentials()
        make_keys(tmp_path / "keys")
        ccfg = config_from_dict({
            "collector": {"id": "c1", "database": f"sqlite:///{tmp_path / 'col.db'}", "batch_max_wait_ms": 50,
                          "key_dir": str(tmp_path / "keys")},
            "mqtt": {"host": "127.0.0.1", "port": b.port, "username": cuser, "password_file": str(cpw_file)},
            "http": {"enabled": False},
        })
        cfg = terminal_cfg(tmp_path, b.port, device_id="term-1", username=user, password_file=str(pw_file))
        with Collector(ccfg) as col, Outbox.from_config(cfg) as outbox:
            col.wait_subscribed(10)
            with Link(cfg, outbox) as link:
                fill(outbox, 20)
                link.wake()
                assert link.wait_acked(20, 20), "the collector's ack did not come back through the secure broker"
            assert col.storage.contiguous("term-1") == 20
    finally:
        b.stop()


# --- persistence: sessions saved before they matter ------------------------------------------------


def persistent_subscriber(port):
    return Client(port, "sub-1", clean=False, expiry=3600)


@pytest.mark.parametrize("how", ["save", "autosave", "no-snapshot"])
def test_persistent_session_survives_kill_9_once_saved(tmp_path, how):
    # the 1 s autosave of the local broker, or one too long to happen during the test
    autosave = 1 if how == "autosave" else 3600
    b = Mosquitto(tmp_path / "mosq", persistence=True, autosave_interval=autosave).start()
    try:
        sub = persistent_subscriber(b.port)
        assert sub.connect().value == 0
        assert sub.subscribe("chot/v1/dev/+/event")[0].value == 1
        sub.close()
        if how == "save":
            assert b.save() is True
        elif how == "autosave":
            time.sleep(2.5)  # Mosquitto saves once more than autosave_interval has passed
        b.restart(kill=True)  # kill -9, then the same port again
        pub = Client(b.port, "pub-1")
        assert pub.connect().value == 0
        for seq in range(1, 6):
            # 16 "no matching subscribers" when the session was lost
            assert pub.publish(wire.event_topic("t1"), wire.dumps({"seq": seq})).value in (0, 16)
        pub.close()
        sub = persistent_subscriber(b.port)
        assert sub.connect().value == 0
        got = [p for _, p in sub.wait_messages(5, timeout=3 if how == "no-snapshot" else 10)]
        sub.close()
    finally:
        b.stop()
    if how == "no-snapshot":
        assert got == [], "without a snapshot the session should be gone (this is what save() fixes)"
    else:
        assert got == [wire.dumps({"seq": s}) for s in range(1, 6)]


def test_save_waits_for_the_snapshot_and_is_harmless_without_persistence(tmp_path):
    b = Mosquitto(tmp_path / "mosq", persistence=True, autosave_interval=3600).start()
    try:
        assert not b.db_path.exists()
        assert b.save() is True and b.db_path.stat().st_size > 0
        first = b.db_path.stat().st_ino
        assert b.save() is True and b.db_path.stat().st_ino != first
        conf = b.conf_path.read_text()
        assert "\nautosave_interval 3600\n" in conf and "\nautosave_on_changes false\n" in conf
    finally:
        b.stop()
    assert b.save() is False  # not running
    v = Mosquitto(tmp_path / "volatile").start()
    try:
        assert v.save() is False
        p = Mosquitto(tmp_path / "p", persistence=True)
        p.write_conf()  # the default: a snapshot every second (time based)
        assert "\nautosave_interval 1\nautosave_on_changes false\n" in p.conf_path.read_text()
    finally:
        v.stop()


def test_the_anonymous_broker_lets_anyone_forge_an_ack(broker):
    """What secure=True closes (issue 10, item 4): the default broker, kept for unit tests, has no ACL."""
    c = Client(broker.port, "anyone")
    assert c.connect().value == 0
    try:
        assert c.publish(wire.ack_topic("t1"), wire.encode_ack("t1", 1030)).value in (0, 16)
    finally:
        c.close()
