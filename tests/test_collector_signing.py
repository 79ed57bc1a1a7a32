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
    assert chot("check-config", "--offline", str(f)).stdout.startswith(f"{f}: OK")


def test_keygen_private_key_is_0600(tmp_path):
    priv, pub = keygen(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert load_signing_key(priv).public_key() is not None and load_public_key(pub)
    with pytest.raises(CollectorError, match="exists"):
        keygen(tmp_path / "keys")
    os.chmod(priv, 0o644)
    with pytest.raises(CollectorError, match="chmod 600"):
        load_signing_key(priv)


def test_keygen_makes_the_personal_data_keys_and_refuses_to_overwrite(tmp_path):
    from chot.personal import DataCipher, PersonIndex, load_private_keys

    kd = tmp_path / "ck"
    out = chot("keygen", "--seal", "--index", "--data", "--key-dir", str(kd)).stdout
    assert "seal.pub" in out
    for name in ("index.key", "data.key"):
        assert stat.S_IMODE(os.stat(kd / name).st_mode) == 0o600
    (first,) = load_private_keys(kd)
    PersonIndex.from_file(kd / "index.key")
    DataCipher.from_file(kd / "data.key")
    before = (kd / "data.key").read_text()
    r = chot("keygen", "--data", "--key-dir", str(kd), check=False)
    assert r.returncode != 0 and "data.key exists" in r.stderr and (kd / "data.key").read_text() == before
    r = chot("keygen", "--seal", "--key-dir", str(kd), check=False)
    assert r.returncode != 0 and "seal.pub exists" in r.stderr
    chot("keygen", "--seal", "--key-dir", str(kd), "--force")  # a rotation keeps the old private key
    assert set(load_private_keys(kd)) > {first}
    r = chot("keygen", check=False)
    assert r.returncode != 0 and "--out" in r.stderr


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

    # the deny list: ID numbers, a name with birth date and a revoked credential in, only salted hashes out
    from chot.personal import ARGON2_DEFAULT, deny_person_hash, person_id_for_name_dob, revoked_hash

    (tmp_path / "deny.txt").write_text("# wanted\n001 090 000 001\n0010-9000-0002\nnd:Nguyễn Văn Ân|1990-01-02\n"
                                       "revoked:decl-7f3a9c\n\n")
    fast = ("--argon2-t", "1", "--argon2-m-kib", "8192")
    chot("publish-denylist", str(tmp_path / "deny.txt"), "--config", str(conf), *fast)
    payload = retained(broker, wire.broadcast_topic("denylist"))
    env = wire.verify_envelope(pub, payload, "denylist", target="gate-1")
    with pytest.raises(wire.WireError):
        wire.verify_envelope(other, payload, "denylist")
    text = payload.decode()
    for clear in ("001090000001", "001090000002", "NGUYEN", "Nguy", "1990-01-02", "decl-7f3a9c"):
        assert clear not in text
    body = env["body"]
    assert body["format"] == "chot-denylist-v2" and body["version"] == env["version"]
    assert body["argon2"] == {"t": 1, "m_kib": 8192, "p": ARGON2_DEFAULT["p"]}
    salt = bytes.fromhex(body["salt"])
    want = {deny_person_hash(p, salt, body["argon2"]) for p in (
        "id:001090000001", "id:001090000002", person_id_for_name_dob("Nguyễn Văn Ân", "1990-01-02"))}
    assert set(body["persons"]) == want and len(body["persons"]) == 3
    assert body["revoked"] == [revoked_hash("decl-7f3a9c", salt)]
    assert deny_person_hash("id:001090000003", salt, body["argon2"]) not in body["persons"]
    # the next list has a higher version and a fresh salt
    chot("publish-denylist", str(tmp_path / "deny.txt"), "--config", str(conf), *fast)
    env2 = wire.verify_envelope(pub, retained(broker, wire.broadcast_topic("denylist")), "denylist")
    assert env2["version"] > env["version"] and env2["body"]["salt"] != body["salt"]
    (tmp_path / "bad.txt").write_text("nd:NoDate|\n")
    r = chot("publish-denylist", str(tmp_path / "bad.txt"), "--config", str(conf), "--dry-run", check=False)
    assert r.returncode != 0 and "line 1" in r.stderr
    r = chot("publish-denylist", str(tmp_path / "deny.txt"), "--config", str(conf), "--dry-run", "--argon2-m-kib",
             "10", check=False)
    assert r.returncode != 0 and "m_kib" in r.stderr

    # trusted issuers: public keys only
    chot("publish-trust", str(tmp_path / "other" / "collector.pub"), "--config", str(conf))
    env = wire.verify_envelope(pub, retained(broker, wire.broadcast_topic("trust")), "trust")
    assert env["body"]["files"][0]["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    # with a DCC revocation list: hashes only, one more JSON file of the same signed trust update
    (tmp_path / "dcc-revoked.txt").write_text("UCI URN:UVCI:01:VN:REVOKED1#X\n")
    chot("publish-trust", str(tmp_path / "other" / "collector.pub"), "--dcc-revocations",
         str(tmp_path / "dcc-revoked.txt"), "--config", str(conf))
    raw = retained(broker, wire.broadcast_topic("trust"))
    env = wire.verify_envelope(pub, raw, "trust")
    rev = env["body"]["files"][1]
    assert rev["name"] == "dcc-revocations.json" and rev["json"]["batches"][0]["hashType"] == "UCI"
    assert b"REVOKED1" not in raw
    r = chot("publish-trust", str(tmp_path / "keys" / "collector.key"), "--config", str(conf), check=False)
    assert r.returncode != 0 and "PRIVATE" in r.stderr
