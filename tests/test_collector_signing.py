"""Collector config checks, keys and signed publishing (config, deny list, trust) through a real broker."""

import json
import os
import stat
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chot import wire
from chot.errors import CollectorError, ConfigError
from collector.config import load_collector_config
from collector.signing import keygen, load_public_key, load_signing_key


def chot(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "chot.cli", "collector", *args], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def retained(broker, topic, timeout=10):
    """The retained message on `topic`, read by a fresh subscriber (as a terminal that just connected)."""
    got, done = [], threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: (got.append(m), done.set())
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    assert done.wait(timeout), f"no retained message on {topic}"
    c.disconnect()
    c.loop_stop()
    assert got[0].retain
    return got[0].payload


def test_every_config_error_listed(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        '[collector]\nid = "bad id"\ndatabase = "mysql://x"\nbatch_size = 0\ncolour = 1\n'
        '[mqtt]\nport = 70000\nreceive_maximum = 100\n[http]\nhost = 1\n[extra]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_collector_config(f)
    text = "\n".join(err.value.problems)
    for key in ("collector.id", "collector.database", "collector.batch_size", "collector.colour", "mqtt.port",
                "http.host", "[extra]"):
        assert key in text, key
    f.write_text("[collector]\nbatch_size = 800\n[mqtt]\nreceive_maximum = 500\n")
    with pytest.raises(ConfigError) as err:
        load_collector_config(f)
    assert err.value.problems == [
        "mqtt.receive_maximum: found 500; allowed: at least collector.batch_size (800), or a batch never fills"
    ]
    r = chot("check-config", str(f), check=False)
    assert r.returncode == 2 and "mqtt.receive_maximum" in r.stderr
    f.write_text('[collector]\ndatabase = "postgresql://postgres@127.0.0.1/chot"\n')
    cfg = load_collector_config(f)
    assert (cfg.collector.batch_size, cfg.mqtt.shared_group, cfg.http.host, cfg.http.port) == (
        500, "collectors", "127.0.0.1", 8080)
    assert chot("check-config", str(f)).stdout.startswith(f"{f}: OK")


def test_keygen_private_key_is_0600(tmp_path):
    priv, pub = keygen(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert load_signing_key(priv).public_key() is not None and load_public_key(pub)
    with pytest.raises(CollectorError, match="exists"):
        keygen(tmp_path / "keys")
    os.chmod(priv, 0o644)
    with pytest.raises(CollectorError, match="chmod 600"):
        load_signing_key(priv)


def test_signed_publish_verifies_with_the_collector_key_only(broker, tmp_path):
    chot("keygen", "--out", str(tmp_path / "keys"))
    chot("keygen", "--out", str(tmp_path / "other"))
    pub = load_public_key(tmp_path / "keys" / "collector.pub")
    other = load_public_key(tmp_path / "other" / "collector.pub")
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[collector]\ndatabase = "sqlite:///{tmp_path}/c.db"\nsigning_key = "{tmp_path}/keys/collector.key"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    )
    # a device config
    dev_conf = tmp_path / "gate-1.toml"
    dev_conf.write_text("[policy]\nmax_age_h = 12.0\naccept_plain = true\n")
    chot("set-config", "gate-1", str(dev_conf), "--config", str(conf))
    payload = retained(broker, wire.config_topic("gate-1"))
    env = wire.verify_envelope(pub, payload, "config", target="gate-1")
    assert env["body"] == {"policy": {"max_age_h": 12.0, "accept_plain": True}} and env["target"] == "gate-1"
    with pytest.raises(wire.WireError, match="signature"):
        wire.verify_envelope(other, payload, "config", target="gate-1")
    with pytest.raises(wire.WireError):
        wire.verify_envelope(pub, payload, "config", target="gate-2")  # meant for another terminal
    tampered = json.loads(payload)
    tampered["body"]["policy"]["accept_plain"] = False
    with pytest.raises(wire.WireError, match="signature"):
        wire.verify_envelope(pub, wire.dumps(tampered), "config")

    # the deny list: ID numbers and a subject key in, only salted hashes out
    key_c = wire.subject_key_for_id("C-3")
    (tmp_path / "deny.txt").write_text(f"# wanted\n001 090 000 001\n0010-9000-0002\n{key_c}\n\n")
    chot("publish-denylist", str(tmp_path / "deny.txt"), "--config", str(conf))
    payload = retained(broker, wire.broadcast_topic("denylist"))
    env = wire.verify_envelope(pub, payload, "denylist", target="gate-1")
    with pytest.raises(wire.WireError):
        wire.verify_envelope(other, payload, "denylist")
    text = payload.decode()
    assert "001090000001" not in text and wire.subject_key_for_id("001090000001") not in text and key_c not in text
    from device.credentials.denylist import DenyList

    dl = DenyList.from_dict(env["body"])
    assert len(dl) == 3 and dl.version == env["version"]
    assert wire.subject_key_for_id("001090000001") in dl and wire.subject_key_for_id("001090000002") in dl
    assert key_c in dl and wire.subject_key_for_id("001090000003") not in dl
    # the next list has a higher version
    chot("publish-denylist", str(tmp_path / "deny.txt"), "--config", str(conf))
    env2 = wire.verify_envelope(pub, retained(broker, wire.broadcast_topic("denylist")), "denylist")
    assert env2["version"] > env["version"]

    # trusted issuers: public keys only
    chot("publish-trust", str(tmp_path / "other" / "collector.pub"), "--config", str(conf))
    env = wire.verify_envelope(pub, retained(broker, wire.broadcast_topic("trust")), "trust")
    assert env["body"]["files"][0]["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    r = chot("publish-trust", str(tmp_path / "keys" / "collector.key"), "--config", str(conf), check=False)
    assert r.returncode != 0 and "PRIVATE" in r.stderr
