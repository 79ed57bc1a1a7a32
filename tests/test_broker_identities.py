"""Issue 11, broker identities: the attacks of a terminal's certificate on the REAL Mosquitto running the
configuration `chot provision broker-config` generates (TLS client certificates, the
dynamic-security plugin's rules, `use_username_as_clientid`), and the one MQTT client factory.

- client-id takeover: a terminal that asks for the collector's client id (or another terminal's)
  neither disconnects its victim nor touches its session;
- `$share` hijack: a terminal cannot join the collectors' shared subscription (SUBACK 0x87), so
  the collector receives every event;
- foreign subscriptions: another device's ack or config, every device's events, `#`, `$SYS/#` are
  refused; its own ack and config and the broadcasts are granted;
- two collector instances, each with its own certificate, split the shared subscription and
  cannot kick each other;
- the link, the collector and the self-test build their clients through `chot.mqtt` and reach the
  broker the same way (password logins and last wills on the local secure broker; on the TLS
  broker the self-test keeps the daemon's session and the daemon comes back by itself).
"""

import json
import socket
import threading

import pytest
from conftest import need
from servers import MOSQUITTO
from test_tls_fleet import FleetBroker, collector_cfg, event, terminal_cfg, wait_until

from chot import wire
from chot.mqtt import MqttSettings, build_client, connect
from provisioning.devices import provision_device
from provisioning.fleet import init_fleet

NOT_AUTHORIZED = 0x87
SHARE = f"$share/collectors/{wire.PREFIX}/dev/+/event"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("idfleet")
    f = init_fleet(root / "fleet", "broker.test")
    for dev, cp, d in (("dev-1", "gate-1", "in"), ("dev-2", "gate-1", "out"), ("dev-3", "gate-2", "in")):
        provision_device(f, dev, cp, d, sets={"pins.factory": "mock"})
    f.provision_collector("b")  # a second collector instance: CN collector-b
    return f


@pytest.fixture
def tls_broker(fleet, tmp_path):
    import os

    need(os.path.exists(MOSQUITTO), "mosquitto")
    b = FleetBroker(fleet, tmp_path / "broker").start()
    yield b
    b.stop()


class Peer:
    """An MQTT 5 client built by chot.mqtt that records CONNACK, disconnects, SUBACKs, PUBACKs, messages.
    It never reconnects by itself: a takeover shows as a disconnect that stays."""

    def __init__(self, port, client_id, cert=None, key=None, ca=None, username=None, password_file=None,
                 clean_start=True, session_expiry_s=0):
        self.settings = MqttSettings(
            host="127.0.0.1", port=port, client_id=client_id, tls=ca is not None, ca=ca and str(ca),
            cert=cert and str(cert), key=key and str(key), username=username,
            password_file=password_file and str(password_file), clean_start=clean_start,
            session_expiry_s=session_expiry_s, reconnect_on_failure=False, keepalive_s=30, section="test",
        )
        self.c = build_client(self.settings)
        self.cond = threading.Condition()
        self.connack, self.session_present = None, None
        self.disconnects, self.subacks, self.pubacks, self.messages = [], {}, {}, []
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda c, u, f, rc, p: self._note(self.disconnects, None, rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._note(self.subacks, mid, [r.value for r in rcs])
        self.c.on_publish = lambda c, u, mid, rc, p: self._note(self.pubacks, mid, rc.value)
        self.c.on_message = lambda c, u, m: self._note(self.messages, None, (m.topic, m.payload))

    def _on_connect(self, c, u, flags, rc, props):
        with self.cond:
            self.connack, self.session_present = rc.value, flags.session_present
            self.cond.notify_all()

    def _note(self, table, key, value):
        with self.cond:
            if isinstance(table, list):
                table.append(value)
            else:
                table[key] = value
            self.cond.notify_all()

    def connect(self):
        connect(self.c, self.settings)
        self.c.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None or self.disconnects, 10)
        return self.connack

    def subscribe(self, topic):
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            self.cond.wait_for(lambda: mid in self.subacks, 10)
        return self.subacks[mid][0]

    def publish(self, topic, payload, retain=False):
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            self.cond.wait_for(lambda: info.mid in self.pubacks, 10)
        return self.pubacks.get(info.mid)

    def wait_messages(self, n, timeout=10):
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def device(fleet, port, dev, client_id=None, **kw):
    d = fleet.device_dir(dev)
    return Peer(port, client_id or dev, d / "device.crt", d / "device.key", fleet.ca_crt, **kw)


def collector(fleet, port, client_id="chot-collector-main", instance=None, **kw):
    d = fleet.collectors_dir / instance if instance else fleet.collector_crt.parent
    return Peer(port, client_id, d / "client.crt", d / "client.key", fleet.ca_crt, **kw)


def publish_events(fleet, port, dev, seqs):
    pub = device(fleet, port, dev)
    assert pub.connect() == 0
    try:
        for s in seqs:
            assert pub.publish(wire.event_topic(dev), wire.dumps(event(dev, s))) in (0, 16)
    finally:
        pub.close()


def seqs_of(messages):
    return sorted(json.loads(p)["seq"] for t, p in messages if t.endswith("/event"))


# --- 1. client-id takeover -------------------------------------------------------------------------


def test_a_terminal_cannot_take_over_the_collectors_or_another_terminals_session(fleet, tls_broker):
    col = collector(fleet, tls_broker.port, clean_start=False, session_expiry_s=3600)
    assert col.connect() == 0
    assert col.subscribe(SHARE) == 1
    dev2 = device(fleet, tls_broker.port, "dev-2", clean_start=False, session_expiry_s=3600)
    assert dev2.connect() == 0
    assert dev2.subscribe(wire.ack_topic("dev-2")) == 1
    try:
        # dev-1's certificate asks for the collector's client ids (the configured one and its CN),
        # then dev-2's, each with a clean start that would wipe the victim's session
        for cid in ("chot-collector-main", "collector", "dev-2"):
            attacker = device(fleet, tls_broker.port, "dev-1", client_id=cid, clean_start=True)
            assert attacker.connect() == 0  # accepted, as dev-1: the broker makes the CN its client id
            assert attacker.session_present is False
            attacker.close()
        # the victims were neither disconnected nor changed: they still receive on their subscriptions
        publish_events(fleet, tls_broker.port, "dev-3", [1, 2, 3])
        assert seqs_of(col.wait_messages(3)) == [1, 2, 3]
        assert col.publish(wire.ack_topic("dev-2"), wire.encode_ack("dev-2", 4)) == 0
        assert dev2.wait_messages(1) == [(wire.ack_topic("dev-2"), wire.encode_ack("dev-2", 4))]
        assert col.disconnects == [] and dev2.disconnects == []
    finally:
        col.close()
        dev2.close()


# --- 2. $share hijack --------------------------------------------------------------------------------


def test_a_terminal_cannot_join_the_collectors_shared_subscription(fleet, tls_broker):
    col = collector(fleet, tls_broker.port)
    assert col.connect() == 0
    assert col.subscribe(SHARE) == 1
    thieves = [device(fleet, tls_broker.port, d) for d in ("dev-1", "dev-3")]
    try:
        for t in thieves:
            assert t.connect() == 0
            for share in (SHARE, "$share/collectors/#", f"$share/other/{wire.PREFIX}/dev/+/event",
                          f"$share/collectors/{wire.PREFIX}/dev/dev-2/event", "$share/collectors/+/+/+/+/+"):
                assert t.subscribe(share) == NOT_AUTHORIZED, share
        n = 20
        publish_events(fleet, tls_broker.port, "dev-2", range(1, n + 1))
        assert seqs_of(col.wait_messages(n)) == list(range(1, n + 1))  # every one, none taken by a thief
        assert all(t.messages == [] for t in thieves)
    finally:
        for t in thieves:
            t.close()
        col.close()


# --- 3. foreign subscriptions ----------------------------------------------------------------------


def test_a_terminal_subscribes_only_to_its_own_topics_and_the_broadcasts(fleet, tls_broker):
    dev1 = device(fleet, tls_broker.port, "dev-1")
    assert dev1.connect() == 0
    try:
        refused = [wire.ack_topic("dev-2"), wire.config_topic("dev-2"), wire.event_topic("dev-2"),
                   wire.status_topic("dev-2"), f"{wire.PREFIX}/dev/+/event", f"{wire.PREFIX}/dev/+/ack",
                   f"{wire.PREFIX}/dev/dev-2/#", f"{wire.PREFIX}/dev/#", f"{wire.PREFIX}/#", "#", "+/#", "$SYS/#",
                   "$SYS/broker/clients/connected", "$CONTROL/dynamic-security/v1/response"]
        for topic in refused:
            assert dev1.subscribe(topic) == NOT_AUTHORIZED, topic
        granted = [wire.ack_topic("dev-1"), wire.config_topic("dev-1"), wire.broadcast_topic("#"),
                   wire.broadcast_topic("denylist"), wire.presence_topic("+")]
        for topic in granted:
            assert dev1.subscribe(topic) == 1, topic
        assert dev1.disconnects == []
    finally:
        dev1.close()


# --- 4. two collector instances ----------------------------------------------------------------------


def test_two_collector_instances_split_the_share_and_cannot_kick_each_other(fleet, tls_broker):
    assert fleet.collector_users() == ["collector", "collector-b"]
    # both ask for the same client id: the broker gives each its certificate's CN
    a = collector(fleet, tls_broker.port)
    b = collector(fleet, tls_broker.port, instance="b")
    try:
        assert a.connect() == 0 and b.connect() == 0
        assert a.subscribe(SHARE) == 1 and b.subscribe(SHARE) == 1
        n = 20
        publish_events(fleet, tls_broker.port, "dev-1", range(1, n + 1))
        assert wait_until(lambda: len(a.messages) + len(b.messages) >= n)
        got_a, got_b = seqs_of(a.messages), seqs_of(b.messages)
        assert got_a and got_b and sorted(got_a + got_b) == list(range(1, n + 1))  # split, each once
        # one instance asking for the other's CN as client id does not displace it
        kicker = collector(fleet, tls_broker.port, client_id="collector", instance="b")
        assert kicker.connect() == 0
        kicker.close()
        assert a.publish(wire.ack_topic("dev-1"), wire.encode_ack("dev-1", 1)) in (0, 16)
        assert a.disconnects == []
        # b's own second connection does take b's session over: one identity, one session
        assert wait_until(lambda: b.disconnects != [])
    finally:
        a.close()
        b.close()


def test_the_collector_may_clear_a_retained_status_a_terminal_may_not_clear_anothers(fleet, tls_broker):
    dev1 = device(fleet, tls_broker.port, "dev-1")
    col = collector(fleet, tls_broker.port)
    try:
        assert dev1.connect() == 0 and col.connect() == 0
        assert dev1.publish(wire.status_topic("dev-1"), b"x" * 100, retain=True) in (0, 16)  # 16: no subscriber
        assert col.publish(wire.status_topic("dev-1"), b"", retain=True) in (0, 16)  # clears it
        dev1.close()
        dev1 = device(fleet, tls_broker.port, "dev-1")
        assert dev1.connect() == 0
        assert dev1.publish(wire.status_topic("dev-2"), b"", retain=True) == 135
    finally:
        dev1.close()
        col.close()


# --- 5. one client factory ---------------------------------------------------------------------------


def _drop_connection(client):
    """End a client's TCP connection under it, without DISCONNECT: the broker publishes its will."""
    client.socket().shutdown(socket.SHUT_RDWR)


def test_link_collector_and_selftest_log_in_through_the_factory(tmp_path):
    """On the local secure broker (password logins, user name = client id): each builds its client
    with chot.mqtt from its [mqtt] section and logs in; the last wills reach the broker."""
    import os

    from uplink_helpers import fill
    from uplink_helpers import terminal_cfg as local_terminal_cfg

    from chot.mqtt import MqttSettings as Settings
    from chotdemo.testing import make_keys
    from collector.config import config_from_dict
    from collector.subscriber import Collector
    from device.selftest import check_broker
    from device.uplink.link import Link
    from device.uplink.outbox import Outbox
    from provisioning.localbroker import LocalBroker

    need(os.path.exists(MOSQUITTO), "mosquitto")
    b = LocalBroker(tmp_path / "mosq", secure=True).start()
    try:
        user, pw_file = b.add_terminal("term-1")
        cuser, cpw_file = b.collector_credentials()
        spy_user, spy_pw = b.add_collector("spy")  # its own identity: it displaces nobody
        spy = Peer(b.port, "spy", username=spy_user, password_file=spy_pw)
        assert spy.connect() == 0
        assert spy.subscribe(wire.status_topic("term-1")) == 1
        assert spy.subscribe(wire.presence_topic("+")) == 1
        make_keys(tmp_path / "keys")
        ccfg = config_from_dict({
            "collector": {"id": "c1", "database": f"sqlite:///{tmp_path / 'col.db'}", "batch_max_wait_ms": 50,
                          "key_dir": str(tmp_path / "keys")},
            "mqtt": {"host": "127.0.0.1", "port": b.port, "username": cuser, "password_file": str(cpw_file),
                     "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
            "http": {"enabled": False},
        })
        # the link: only a password file, the user name defaults to the device id (as it always did)
        cfg = local_terminal_cfg(tmp_path, b.port, device_id="term-1", password_file=str(pw_file),
                                 reconnect_min_s=0.5, reconnect_max_s=1.0)
        with Collector(ccfg) as col, Outbox.from_config(cfg) as outbox:
            col.wait_subscribed(10)
            assert isinstance(col.mqtt_settings, Settings) and col.mqtt_settings.username == cuser
            with Link(cfg, outbox) as link:
                assert isinstance(link.mqtt_settings, Settings)
                fill(outbox, 5)
                link.wake()
                assert link.wait_acked(5, 20), "the link did not log in with its password file"
                # the self-test: the same login, built the same way; it displaces the link for a moment
                result = check_broker(cfg, timeout=5.0)
                assert result.status == "PASS", result
                # the link comes back and subscribes again: a later event is acked
                fill(outbox, 5, start=5)
                link.wake()
                assert link.wait_acked(10, 20), "the link did not resubscribe after the self-test"
                # the link's last will (offline status) reaches the broker
                statuses = len(spy.messages)
                _drop_connection(link.client)
                assert wait_until(lambda: any(json.loads(p).get("online") is False
                                              for _t, p in spy.messages[statuses:] if p))
                assert link.wait_connected(20)
            # the collector's last will (presence offline)
            mark = len(spy.messages)
            _drop_connection(col.client)
            assert wait_until(lambda: any(t == wire.presence_topic("c1") and p and json.loads(p).get("online")
                                          is False for t, p in spy.messages[mark:]))
            assert wait_until(lambda: col.subscribed.is_set(), 20)
        assert spy.disconnects == []
        spy.close()
        # a missing password file is named by its key, for each of them
        bad = local_terminal_cfg(tmp_path, b.port, device_id="term-1", password_file=str(tmp_path / "nope"))
        assert "mqtt.password_file" in check_broker(bad).detail
    finally:
        b.stop()


def test_selftest_keeps_the_daemons_session_on_the_fleet_broker(fleet, tls_broker, tmp_path, caplog):
    """With the certificate's CN as client id the self-test IS the daemon's session: it must not wipe it."""
    import logging

    from collector.subscriber import Collector
    from device.selftest import check_broker
    from device.uplink.link import Link
    from device.uplink.outbox import Outbox

    cfg = terminal_cfg(fleet, tls_broker.port, "dev-1", tmp_path)
    with Collector(collector_cfg(fleet, tls_broker.port, tmp_path / "col.db")) as col:
        col.wait_subscribed(15)
        outbox = Outbox.from_config(cfg)
        try:
            with Link(cfg, outbox) as link:
                outbox.append({"source": "camera", "format": "plain", "decision": "FAIL", "reason": "unsigned",
                               "verified": False, "sealed": None})
                link.wake()
                assert link.wait_acked(1, 30)
                caplog.clear()
                with caplog.at_level(logging.INFO, logger="device.uplink.link"):
                    assert check_broker(cfg, timeout=5.0).status == "PASS"
                    # displaced, the link reconnects and finds its session kept (clean start off)
                    assert wait_until(lambda: "session present: True" in caplog.text, 30), caplog.text
                outbox.append({"source": "camera", "format": "plain", "decision": "FAIL", "reason": "unsigned",
                               "verified": False, "sealed": None})
                link.wake()
                assert link.wait_acked(2, 30)
        finally:
            outbox.close()



def test_the_factory_names_the_config_key_to_fix(tmp_path):
    from chot.errors import ChotError
    from chot.mqtt import MqttSetupError

    def fails(match, **kw):
        with pytest.raises(MqttSetupError, match=match) as err:
            build_client(MqttSettings(client_id="x", **kw))
        assert isinstance(err.value, ChotError)

    fails(r"TLS file not found: .*nope-ca\.pem; check mqtt\.ca", tls=True, ca=str(tmp_path / "nope-ca.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    fails(r"mqtt\.ca, mqtt\.cert, mqtt\.key\).*PEM", tls=True, ca=str(bad))
    fails(r"mqtt\.key is set but mqtt\.cert is not", tls=True, key=str(bad))
    fails(r"cannot read mqtt\.password_file", username="u", password_file=str(tmp_path / "none"))
    (tmp_path / "empty").write_text("\n")
    fails(r"mqtt\.password_file .* is empty", username="u", password_file=str(tmp_path / "empty"))
    fails(r"mqtt\.username: missing", password_file=str(bad))
    fails(r"collector\.mqtt\.reconnect_min_s", section="collector.mqtt", reconnect_min_s=5.0, reconnect_max_s=1.0)
    # a password file alone logs in as the default user name (the link's device id)
    (tmp_path / "pw").write_text("secret\n")
    c = build_client(MqttSettings(client_id="dev-9", password_file=str(tmp_path / "pw"), default_username="dev-9"))
    assert c._username == b"dev-9" and c._password == b"secret"
