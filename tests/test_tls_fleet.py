"""The fleet's security with a REAL Mosquitto running the config `chot provision broker-config` writes.

TLS with client certificates on a free loopback port: an enrolled terminal connects and its
events are stored by the collector; it cannot publish under another device's topic (MQTT 5
reason code 135) nor forge a broadcast; a client whose certificate is not from the fleet CA
(or with none) cannot connect; a revoked terminal is shut out (CRL on reload, the broker's rules
deny it everything after the restart that reads them, even with a stale CRL); a deny list signed
with any key but the collector's is ignored. The attacks of issue 11 on identities (client-id
takeover, `$share` hijack, foreign subscriptions) are in test_broker_identities.py.
"""

import datetime as dt
import getpass
import json
import os
import signal
import ssl
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from servers import MOSQUITTO, free_port, wait_port

from chot import wire
from chot.cli import main as chot_main
from provisioning import pki
from provisioning.broker import write_broker_config
from provisioning.devices import provision_device
from provisioning.fleet import init_fleet

NOT_AUTHORIZED = 135


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    f = init_fleet(root / "fleet", "broker.test")
    for dev, cp, d in (("dev-1", "gate-1", "in"), ("dev-2", "gate-1", "out"), ("dev-3", "gate-2", "in")):
        provision_device(f, dev, cp, d, sets={"pins.factory": "mock"})
    return f


class FleetBroker:
    """Mosquitto started on the generated mosquitto.conf (port and bind chosen for the test)."""

    def __init__(self, fleet, out):
        self.fleet, self.out, self.port = fleet, out, free_port()
        self.log = out / "mosquitto.log"
        self.conf = write_broker_config(
            fleet, out, port=self.port, bind="127.0.0.1", persistence_dir=out / "data",
            log_dest=f"file {self.log}", user=getpass.getuser(),
        )
        (out / "data").mkdir(exist_ok=True)
        with open(self.conf, "a", encoding="utf-8") as f:
            f.write("log_type information\n")  # "Reloading config." marks a SIGHUP (see reload)
        self.proc = None

    def start(self):
        assert os.path.exists(MOSQUITTO), "mosquitto is not installed (apt-get install mosquitto)"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if not wait_port(self.port):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"mosquitto did not start with the generated config: {err}")
        return self

    def reload(self):
        """SIGHUP: mosquitto reads the CRL again (Debian's `systemctl reload mosquitto`); the rules of
        the dynamic-security plugin are read only at start (see restart)."""
        marker = "Reloading config."
        before = self.log.read_text().count(marker)
        self.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: self.log.read_text().count(marker) > before, 10), "mosquitto did not reload"

    def restart(self):
        """`systemctl restart mosquitto`: the only way the broker reads dynamic-security.json again."""
        self.stop()
        return self.start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def tls_broker(fleet, tmp_path):
    b = FleetBroker(fleet, tmp_path / "broker").start()
    yield b
    b.stop()


class Client:
    """A bare paho MQTT 5 client over TLS that records CONNACK, SUBACK and PUBACK reason codes."""

    def __init__(self, port, ca, cert=None, key=None, client_id="t"):
        self.port = port
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key))
        self.connack = None
        self.done = threading.Event()
        self.pubacks, self.subacks, self.messages = {}, {}, []
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = lambda c, u, m: self._note(self.messages, len(self.messages), (m.topic, m.payload))

    def _note(self, table, key, value):
        with self.cond:
            if isinstance(table, list):
                table.append(value)
            else:
                table[key] = value
            self.cond.notify_all()

    def _on_connect(self, c, u, flags, rc, props):
        self.connack = rc
        self.done.set()

    def _on_disconnect(self, c, u, flags, rc, props):
        if self.connack is None:  # the TLS handshake or the CONNECT was refused
            self.connack = f"refused: disconnected ({rc})"
            self.done.set()

    def _on_publish(self, c, u, mid, rc, props):
        self._note(self.pubacks, mid, rc)

    def _on_subscribe(self, c, u, mid, rcs, props):
        self._note(self.subacks, mid, rcs)

    def connect(self, timeout=10):
        """Return the CONNACK reason code, or the exception text when TLS/TCP refused us."""
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            return f"refused: {exc}"
        self.c.loop_start()
        if not self.done.wait(timeout):
            self.c.loop_stop()
            return "refused: no CONNACK"
        if isinstance(self.connack, str):
            self.c.loop_stop()
        return self.connack

    def wait(self, table, key, timeout=10):
        """The entry `key` of `table` (a dict, or the list of messages by index), or None after `timeout`."""
        with self.cond:
            if isinstance(table, list):
                self.cond.wait_for(lambda: len(table) > key, timeout)
                return table[key] if len(table) > key else None
            self.cond.wait_for(lambda: key in table, timeout)
            return table.get(key)

    def publish(self, topic, payload, retain=False):
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        return self.wait(self.pubacks, info.mid)

    def subscribe(self, topic):
        _, mid = self.c.subscribe(topic, qos=1)
        return self.wait(self.subacks, mid)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def device_client(fleet, port, dev, client_id=None):
    d = fleet.device_dir(dev)
    return Client(port, fleet.ca_crt, d / "device.crt", d / "device.key", client_id=client_id or dev)


def collector_cfg(fleet, port, db):
    from collector.config import config_from_dict

    return config_from_dict({
        "collector": {"database": f"sqlite:///{db}", "batch_max_wait_ms": 20, "signing_key": str(fleet.signing_key),
                      "key_dir": str(fleet.collector_keys)},
        "mqtt": {"host": "127.0.0.1", "port": port, "tls": True, "ca": str(fleet.ca_crt),
                 "cert": str(fleet.collector_crt), "key": str(fleet.collector_key)},
        "http": {"enabled": False},
    })


def terminal_cfg(fleet, port, dev, tmp_path):
    """The terminal.toml `chot provision device` wrote, with the paths of this machine instead of /etc/chot."""
    from device.config import load_terminal_config

    d = fleet.device_dir(dev)
    return load_terminal_config(d / "terminal.toml", overrides={
        "mqtt": {"host": "127.0.0.1", "port": port, "ca": str(fleet.ca_crt), "cert": str(d / "device.crt"),
                 "key": str(d / "device.key"), "collector_public_key": str(fleet.signing_pub),
                 "ack_timeout_s": 5.0},
        "outbox": {"path": str(tmp_path / f"{dev}-outbox.db")},
        "privacy": {"seal_public_key": str(fleet.seal_pub)},
    })


def event(dev, seq):
    return {
        "v": 2, "device_id": dev, "seq": seq, "uuid": f"00000000-0000-4000-8000-{seq:012d}",
        "checkpoint": "gate-1", "direction": "in", "time": "2021-08-09T08:00:00Z",
        "clock": {"synced": True, "boot_id": "b", "mono_ns": 1}, "source": "camera", "format": "native",
        "decision": "PASS", "reason": "ok", "verified": False, "sealed": None,
    }


def wait_until(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --- the tests ------------------------------------------------------------------------------------


def test_generated_config_is_accepted_by_mosquitto(fleet, tls_broker):
    log = tls_broker.log.read_text()
    assert "Error" not in log, log
    assert tls_broker.proc.poll() is None


def test_enrolled_terminal_publishes_and_collector_stores(fleet, tls_broker, tmp_path):
    import uuid

    from chot.personal import Sealer
    from collector.subscriber import Collector
    from device.uplink.link import Link
    from device.uplink.outbox import Outbox

    cfg = terminal_cfg(fleet, tls_broker.port, "dev-1", tmp_path)
    sealer = Sealer.from_file(cfg.privacy.seal_public_key)  # the key the bundle pins, as the terminal loads it
    with Collector(collector_cfg(fleet, tls_broker.port, tmp_path / "col.db")) as col:
        col.wait_subscribed(15)  # raises when the collector (CN=collector) cannot subscribe over TLS
        outbox = Outbox.from_config(cfg)
        try:
            with Link(cfg, outbox) as link:
                for i in range(3):
                    u = str(uuid.uuid4())
                    sealed = sealer.seal(u, {"name": f"Person {i}"}, f"id:00109001234{i}", f"cred-{i}")
                    outbox.append({"uuid": u, "source": "camera", "format": "native", "decision": "PASS",
                                   "reason": "ok", "verified": True, "sealed": sealed})
                link.wake()
                assert link.wait_acked(3, timeout=30), "the collector's ack did not come back over TLS"
        finally:
            outbox.close()
        assert col.storage.contiguous("dev-1") == 3
        assert col.storage.event_count() == 3
        assert col.stats()["sealed_errors"] == {}  # the fleet's collector-keys/ opened what the pinned key sealed


def test_terminal_cannot_publish_as_another_or_forge_broadcasts(fleet, tls_broker):
    spy = Client(tls_broker.port, fleet.ca_crt, fleet.collector_crt, fleet.collector_key, client_id="spy")
    assert spy.connect().value == 0
    assert spy.subscribe("chot/v1/dev/+/event")[0].value == 1
    assert spy.subscribe("chot/v1/broadcast/#")[0].value == 1
    try:
        # another device's topic, with a payload naming that device; then a deny list of its own
        # making: each refused with reason code 135 (and mosquitto 2.0.11 then drops the connection)
        for topic, payload, retain in ((wire.event_topic("dev-2"), wire.dumps(event("dev-2", 1)), False),
                                       (wire.broadcast_topic("denylist"), b"{}", True)):
            dev = device_client(fleet, tls_broker.port, "dev-1")
            assert dev.connect().value == 0
            assert dev.publish(topic, payload, retain=retain).value == NOT_AUTHORIZED
            dev.close()
        # another device's acks never reach it: the subscription is refused (SUBACK 0x87, issue 11)
        dev = device_client(fleet, tls_broker.port, "dev-1")
        assert dev.connect().value == 0
        assert dev.subscribe(wire.ack_topic("dev-2"))[0].value == NOT_AUTHORIZED
        assert dev.subscribe(wire.ack_topic("dev-1"))[0].value == 1
        assert spy.publish(wire.ack_topic("dev-2"), wire.encode_ack("dev-2", 7)).value in (0, 16)  # 16: no subscriber
        assert spy.publish(wire.ack_topic("dev-1"), wire.encode_ack("dev-1", 1)).value == 0
        assert dev.wait(dev.messages, 0) is not None
        # its own topic works
        assert dev.publish(wire.event_topic("dev-1"), wire.dumps(event("dev-1", 1))).value == 0
        assert wait_until(lambda: len(spy.messages) >= 1)
        time.sleep(0.2)
        dev.close()
        assert [t for t, _ in dev.messages] == [wire.ack_topic("dev-1")]
        # of all that, the spy (reading every event and broadcast) saw only dev-1's own event
        assert [t for t, _ in spy.messages] == [wire.event_topic("dev-1")]
    finally:
        spy.close()


def _foreign_cert(tmp_path, cn):
    ca_key, ca_cert = pki.make_ca("Somebody else's CA")
    key, cert = pki.issue_cert(ca_key, ca_cert, cn)
    pki.write_private(tmp_path / "x.key", pki.key_pem(key))
    pki.write_file(tmp_path / "x.crt", pki.cert_pem(cert))
    return tmp_path / "x.crt", tmp_path / "x.key"


def _self_signed(tmp_path, cn):
    key = pki.new_ec_key()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    t = pki.now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(t - dt.timedelta(minutes=1))
            .not_valid_after(t + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pki.write_private(tmp_path / "s.key", pki.key_pem(key))
    pki.write_file(tmp_path / "s.crt", pki.cert_pem(cert))
    return tmp_path / "s.crt", tmp_path / "s.key"


def test_clients_without_a_fleet_certificate_cannot_connect(fleet, tls_broker, tmp_path):
    # a certificate for "dev-1" (and for the collector) from another CA, a self-signed one, none at all
    cases = [_foreign_cert(tmp_path, "dev-1"), _self_signed(tmp_path, "collector"), (None, None)]
    for cert, key in cases:
        c = Client(tls_broker.port, fleet.ca_crt, cert, key, client_id="intruder")
        result = c.connect(timeout=5)
        c.c.loop_stop()
        assert isinstance(result, str) and result.startswith("refused"), (cert, result)
    # and the genuine one still can
    ok = device_client(fleet, tls_broker.port, "dev-1")
    assert ok.connect().value == 0
    ok.close()


def test_revoked_terminal_is_shut_out(fleet, tls_broker, tmp_path, capsys):
    old_crl = (tls_broker.out / "crl.pem").read_bytes()
    dev3 = device_client(fleet, tls_broker.port, "dev-3")
    assert dev3.connect().value == 0
    assert dev3.publish(wire.event_topic("dev-3"), wire.dumps(event("dev-3", 1))).value < 0x80  # accepted

    assert chot_main(["provision", "revoke", "dev-3", "--fleet", str(fleet.dir)]) == 0
    out = capsys.readouterr().out
    assert str(tls_broker.out) in out  # the broker config written before was refreshed
    assert "-----BEGIN" not in out and "restart the broker" in out
    rules = json.loads((tls_broker.out / "dynamic-security.json").read_text())
    clients = {c["username"]: c for c in rules["clients"]}
    assert clients["dev-3"].get("disabled") is True
    assert [r["rolename"] for r in clients["dev-3"]["roles"]] == ["chot-deny-all"]  # no right left
    assert "chot-device-dev-3" not in {r["rolename"] for r in rules["roles"]}
    assert (tls_broker.out / "crl.pem").read_bytes() != old_crl
    tls_broker.reload()

    # a new connection: the CRL (read again on SIGHUP) refuses the certificate in the TLS handshake
    again = device_client(fleet, tls_broker.port, "dev-3", client_id="dev-3b")
    result = again.connect(timeout=5)
    again.c.loop_stop()
    assert isinstance(result, str) and result.startswith("refused"), result
    # the open session ends with the restart that reads the rules again; it cannot come back
    tls_broker.restart()
    dev3.close()
    again = device_client(fleet, tls_broker.port, "dev-3", client_id="dev-3c")
    result = again.connect(timeout=5)
    again.c.loop_stop()
    assert isinstance(result, str) and result.startswith("refused"), result
    # the others are untouched
    ok = device_client(fleet, tls_broker.port, "dev-2")
    assert ok.connect().value == 0
    ok.close()
    # a revoked id cannot be enrolled again
    from chot.errors import ProvisioningError

    with pytest.raises(ProvisioningError, match="revoked"):
        provision_device(fleet, "dev-3", "gate-2", "in", renew=True)


def test_rules_alone_deny_a_revoked_terminal(fleet, tmp_path):
    """Even where the CRL were missing or stale, the broker's rules shut a revoked user out."""
    if "dev-3" not in fleet.revoked_ids():
        fleet.revoke("dev-3")
    b = FleetBroker(fleet, tmp_path / "b2")
    # an empty CRL: the certificate itself is accepted
    ca_key, ca_cert = fleet.ca()
    pki.write_file(b.out / "crl.pem", pki.make_crl(ca_key, ca_cert, []))
    b.start()
    try:
        dev3 = device_client(fleet, b.port, "dev-3", client_id="dev-3c")
        assert dev3.connect().value == 0
        assert dev3.subscribe(wire.ack_topic("dev-3"))[0].value == NOT_AUTHORIZED
        assert dev3.publish(wire.event_topic("dev-3"), wire.dumps(event("dev-3", 3))).value == NOT_AUTHORIZED
        dev3.close()
    finally:
        b.stop()


def test_denylist_signed_by_another_key_is_ignored_by_the_terminal(fleet, tls_broker, tmp_path):
    from device.uplink.link import Link
    from device.uplink.outbox import Outbox

    signing = pki.load_key(fleet.signing_key)
    forger = ed25519.Ed25519PrivateKey.generate()
    topic = wire.broadcast_topic("denylist")
    col = Client(tls_broker.port, fleet.ca_crt, fleet.collector_crt, fleet.collector_key, client_id="pub")
    assert col.connect().value == 0
    assert col.publish(topic, wire.sign_envelope(signing, "denylist", 1, {"salt": "s", "hashes": ["a"]}),
                       retain=True).value < 0x80

    applied = []
    cond = threading.Condition()

    def on_update(kind, body, version):
        with cond:
            applied.append((kind, version, body))
            cond.notify_all()

    cfg = terminal_cfg(fleet, tls_broker.port, "dev-2", tmp_path)
    outbox = Outbox.from_config(cfg)
    try:
        with Link(cfg, outbox, on_update=on_update):
            with cond:
                assert cond.wait_for(lambda: len(applied) >= 1, 20), "the genuine deny list did not arrive"
            # forged: signed by another key, with a high version that would block every later genuine one
            forged = wire.sign_envelope(forger, "denylist", 99, {"salt": "s", "hashes": ["everyone"]})
            assert col.publish(topic, forged, retain=True).value < 0x80
            # a tampered copy of a genuine message: body changed after signing
            tampered = wire.sign_envelope(signing, "denylist", 98, {"salt": "s", "hashes": ["x"]})
            tampered = tampered.replace(b'"x"', b'"everyone"')
            assert col.publish(topic, tampered, retain=True).value < 0x80
            assert col.publish(topic, wire.sign_envelope(signing, "denylist", 2, {"salt": "s", "hashes": ["b"]}),
                               retain=True).value < 0x80
            with cond:
                assert cond.wait_for(lambda: len(applied) >= 2, 20), "the second genuine deny list did not arrive"
        assert [(k, v) for k, v, _ in applied] == [("denylist", 1), ("denylist", 2)]
        assert all("everyone" not in b["hashes"] for _, _, b in applied)
    finally:
        outbox.close()
        col.close()
