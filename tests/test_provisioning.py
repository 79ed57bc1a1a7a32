"""Provisioning: the fleet CA and certificates, device enrolment and its bundle, the broker config,
revocation, and the terminal's self-test (files source, MockFactory pins, a local broker)."""

import io
import json
import stat
import subprocess
import tarfile
import tomllib

import pytest
from conftest import need
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from servers import MOSQUITTO

from chot import wire
from chot.cli import main as chot_main
from chot.errors import ProvisioningError
from device.config import load_terminal_config
from provisioning import pki
from provisioning.fleet import Fleet

KEYS = ["ca/ca.key", "broker/server.key", "collector/signing.key", "collector/client.key"]
COLLECTOR_SECRETS = ["collector-keys/index.key", "collector-keys/data.key"]  # + collector-keys/seal-*.key


def collector_secrets(d):
    """The files of collector-keys/ that must never leave the fleet directory but for the collector."""
    return sorted((d / "collector-keys").glob("seal-*.key")) + [d / s for s in COLLECTOR_SECRETS]


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fleet_dir(tmp_path, capsys):
    d = tmp_path / "fleet"
    assert chot_main(["provision", "init-fleet", str(d), "--broker-host", "broker.hanoi.example"]) == 0
    out = capsys.readouterr().out
    for key in KEYS:
        assert "PRIVATE KEY" not in out and (d / key).read_text() not in out
    for f in collector_secrets(d):
        secret = f.read_text().split()[-1]
        assert secret not in out, f
    assert "collector-keys" in out and "seal.pub" in out and "index.key" in out and "data.key" in out
    return d


def cn(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_init_fleet_makes_ca_broker_and_collector_credentials(fleet_dir):
    for key in KEYS:
        assert mode(fleet_dir / key) == 0o600, key
    ca = x509.load_pem_x509_certificate((fleet_dir / "ca/ca.crt").read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    srv = x509.load_pem_x509_certificate((fleet_dir / "broker/server.crt").read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"broker.hanoi.example", "localhost"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    col = x509.load_pem_x509_certificate((fleet_dir / "collector/client.crt").read_bytes())
    col.verify_directly_issued_by(ca)
    assert cn(col) == "collector"
    # the signing key signs envelopes that verify with the public key the terminals pin
    sk = pki.load_key(fleet_dir / "collector/signing.key")
    assert isinstance(sk, ed25519.Ed25519PrivateKey)
    from device.uplink.updates import load_public_key

    pub = load_public_key(fleet_dir / "collector/signing.pub")
    env = wire.verify_envelope(pub, wire.sign_envelope(sk, "denylist", 1, {"h": []}), "denylist")
    assert env["version"] == 1
    crl = x509.load_pem_x509_crl((fleet_dir / "ca/crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key()) and len(list(crl)) == 0
    fleet = tomllib.loads((fleet_dir / "fleet.toml").read_text())["fleet"]
    assert fleet["broker_host"] == "broker.hanoi.example" and fleet["broker_port"] == 8883


def test_init_fleet_makes_the_collector_keys(fleet_dir):
    from chot import personal

    kdir = fleet_dir / "collector-keys"
    assert mode(kdir) == 0o700
    seals = sorted(kdir.glob("seal-*.key"))
    assert len(seals) == 1 and mode(seals[0]) == 0o600
    assert mode(kdir / "seal.pub") == 0o644
    assert mode(kdir / "index.key") == 0o600 and mode(kdir / "data.key") == 0o600
    kid, raw = personal.load_public_key(kdir / "seal.pub")
    assert seals[0].name == f"seal-{kid}.key"
    # what a terminal seals to the pinned key, the collector opens with the key folder
    sealed = personal.Sealer(raw).seal("u-1", {"name": "Nguyễn Văn An"}, "id:001090012345", "cred-1")
    opened = personal.Opener.from_dir(kdir).open(sealed, "u-1")
    assert (opened.person, opened.person_id, opened.credential_id) == ({"name": "Nguyễn Văn An"},
                                                                       "id:001090012345", "cred-1")
    index = personal.PersonIndex.from_file(kdir / "index.key")
    assert len(index.key("id:001090012345")) == 64
    cipher = personal.DataCipher.from_file(kdir / "data.key")
    assert cipher.decrypt(cipher.encrypt({"a": 1}, "d", 1), "d", 1) == {"a": 1}
    assert (kdir / "index.key").read_bytes() != (kdir / "data.key").read_bytes()


def test_collector_keys_makes_what_is_missing_and_rotates(fleet_dir, capsys):
    from chot import personal
    from provisioning.devices import provision_device

    kdir = fleet_dir / "collector-keys"
    before = {p.name: p.read_bytes() for p in kdir.iterdir()}
    capsys.readouterr()
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir)]) == 0
    assert "nothing to make" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in kdir.iterdir()} == before  # nothing replaced

    (kdir / "data.key").unlink()
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir)]) == 0
    out = capsys.readouterr().out
    assert "made data key" in out and "sealing key" not in out.split("current")[0]
    assert (kdir / "index.key").read_bytes() == before["index.key"] and mode(kdir / "data.key") == 0o600

    f = Fleet(fleet_dir)
    provision_device(f, "gate-r", "cp", "in")
    old_kid, old_raw = personal.load_public_key(kdir / "seal.pub")
    old_sealed = personal.Sealer(old_raw).seal("u-old", {"name": "A"}, "id:1", None)
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir), "--rotate"]) == 0
    out = capsys.readouterr().out
    new_kid, new_raw = personal.load_public_key(kdir / "seal.pub")
    assert new_kid != old_kid
    assert sorted(p.name for p in kdir.glob("seal-*.key")) == sorted([f"seal-{old_kid}.key", f"seal-{new_kid}.key"])
    assert (kdir / f"seal-{old_kid}.key").read_bytes() == before[f"seal-{old_kid}.key"]  # old private key kept
    # events sealed to the old key and to the new one both open
    opener = personal.Opener.from_dir(kdir)
    assert opener.open(old_sealed, "u-old").person == {"name": "A"}
    assert opener.open(personal.Sealer(new_raw).seal("u-new", {"name": "B"}, "id:2", None), "u-new").person == {
        "name": "B"}
    # how to roll it out: the signed config body, one set-config per enrolled terminal, or new bundles
    body_path = fleet_dir / "rollout" / f"seal-{new_kid}.json"
    import json

    body = json.loads(body_path.read_text())
    assert body == {"privacy": {"seal_public_key": (kdir / "seal.pub").read_text().strip()}}
    assert f"chot collector set-config gate-r {body_path}" in out
    assert new_kid in out and "chot provision bundle" in out and f"seal-{new_kid}.key" in out
    for p in kdir.glob("seal-*.key"):
        assert p.read_text().split()[-1] not in out
    # a rebuilt bundle pins the new key
    assert chot_main(["provision", "bundle", "gate-r", "--fleet", str(fleet_dir)]) == 0
    with tarfile.open(fleet_dir / "bundles/chot-gate-r.tar.gz") as tar:
        assert tar.extractfile("chot-gate-r/collector-seal.pub").read() == (kdir / "seal.pub").read_bytes()


def test_a_fleet_without_collector_keys_is_told_to_make_them(fleet_dir, capsys):
    import shutil

    from provisioning.devices import provision_device

    f = Fleet(fleet_dir)
    provision_device(f, "gate-o", "cp", "in")
    shutil.rmtree(fleet_dir / "collector-keys")  # a fleet made before the personal-data keys
    # its terminal.toml as an older version wrote it: no [privacy]
    toml = f.device_dir("gate-o") / "terminal.toml"
    text = toml.read_text()
    toml.write_text(text[:text.index("[privacy]")])
    assert "privacy" not in toml.read_text()
    capsys.readouterr()
    for argv in (["device", "gate-n", "--checkpoint", "cp", "--direction", "in"], ["bundle", "gate-o"]):
        assert chot_main(["provision", *argv, "--fleet", str(fleet_dir)]) != 0
        err = capsys.readouterr().err
        assert "chot provision collector-keys" in err, err
    assert not f.device_dir("gate-n").exists()
    # a seal.pub whose private key is gone: restore it or rotate
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir)]) == 0
    assert mode(fleet_dir / "collector-keys") == 0o700
    assert "made sealing key" in capsys.readouterr().out
    for p in (fleet_dir / "collector-keys").glob("seal-*.key"):
        p.unlink()
    (fleet_dir / "collector-keys" / "seal-0000000000000000.key").write_text("x")  # not the one seal.pub names
    (fleet_dir / "collector-keys" / "seal-0000000000000000.key").chmod(0o600)
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir)]) != 0
    err = capsys.readouterr().err
    assert "missing" in err and "backup" in err and "--rotate" in err
    (fleet_dir / "collector-keys" / "seal-0000000000000000.key").unlink()
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir)]) == 0  # no private key: a new pair
    # the older device's bundle now pins the key and its config names it
    assert chot_main(["provision", "bundle", "gate-o", "--fleet", str(fleet_dir)]) == 0
    cfg = load_terminal_config(toml)
    assert cfg.privacy.seal_public_key == "/etc/chot/collector-seal.pub"
    with tarfile.open(f.bundle_path("gate-o")) as tar:
        assert tar.extractfile("chot-gate-o/collector-seal.pub").read() == f.seal_pub.read_bytes()
        assert tar.extractfile("chot-gate-o/terminal.toml").read() == toml.read_bytes()


def test_init_fleet_refuses_to_replace_a_ca(fleet_dir):
    before = (fleet_dir / "ca/ca.key").read_bytes()
    assert chot_main(["provision", "init-fleet", str(fleet_dir), "--broker-host", "x.example"]) != 0
    assert (fleet_dir / "ca/ca.key").read_bytes() == before


def test_device_enrolment_writes_key_cert_config_and_one_bundle(fleet_dir, tmp_path, capsys):
    issuer = tmp_path / "issuer.pub"
    issuer.write_text("-----BEGIN PUBLIC KEY-----\nnot checked here\n-----END PUBLIC KEY-----\n")
    rc = chot_main(["provision", "device", "hk-gate-1-in", "--checkpoint", "hk-phuc-tan-gate-1", "--direction", "in",
                    "--fleet", str(fleet_dir), "--pins", "pass_led=GPIO23,buzzer=GPIO24", "--pin", "relay=GPIO25",
                    "--set", "policy.max_age_h=12", "--trust", str(issuer)])
    assert rc == 0
    out = capsys.readouterr().out
    d = fleet_dir / "devices/hk-gate-1-in"
    assert (d / "device.key").read_text() not in out
    assert mode(d / "device.key") == 0o600
    ca = x509.load_pem_x509_certificate((fleet_dir / "ca/ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((d / "device.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cn(cert) == "hk-gate-1-in"
    cfg = load_terminal_config(d / "terminal.toml")  # valid against device/config.py SCHEMA
    assert (cfg.device.id, cfg.device.checkpoint, cfg.device.direction) == ("hk-gate-1-in", "hk-phuc-tan-gate-1", "in")
    assert (cfg.mqtt.enabled, cfg.mqtt.tls, cfg.mqtt.host, cfg.mqtt.port) == (True, True, "broker.hanoi.example", 8883)
    assert (cfg.mqtt.ca, cfg.mqtt.cert, cfg.mqtt.key) == (
        "/etc/chot/tls/ca.crt", "/etc/chot/tls/device.crt", "/etc/chot/tls/device.key")
    assert cfg.mqtt.collector_public_key == "/etc/chot/collector.pub"
    assert cfg.privacy.seal_public_key == "/etc/chot/collector-seal.pub"
    assert cfg.outbox.path == "/var/lib/chot/outbox.db"
    assert (cfg.pins.pass_led, cfg.pins.buzzer, cfg.pins.relay) == ("GPIO23", "GPIO24", "GPIO25")
    assert cfg.policy.max_age_h == 12.0 and cfg.policy.trusted_issuers == ["/etc/chot/trust/issuer.pub"]

    bundle = fleet_dir / "bundles/chot-hk-gate-1-in.tar.gz"
    assert mode(bundle) == 0o600
    with tarfile.open(bundle) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        top = "chot-hk-gate-1-in/"
        assert {n[len(top):]: m.mode for n, m in members.items()} == {
            "setup-terminal.sh": 0o755, "chot-terminal.service": 0o644, "terminal.toml": 0o640,
            "tls/ca.crt": 0o644, "tls/device.crt": 0o644, "tls/device.key": 0o600, "collector.pub": 0o644,
            "collector-seal.pub": 0o644, "trust/issuer.pub": 0o644,
        }
        read = lambda name: tar.extractfile(members[top + name]).read()  # noqa: E731
        assert read("tls/device.key") == (d / "device.key").read_bytes()
        assert read("collector.pub") == (fleet_dir / "collector/signing.pub").read_bytes()
        assert read("terminal.toml") == (d / "terminal.toml").read_bytes()
        assert read("collector-seal.pub") == (fleet_dir / "collector-keys/seal.pub").read_bytes()


def test_a_bundle_never_holds_a_collector_secret(fleet_dir, tmp_path):
    """No sealing private key, index secret or data key in any byte of a bundle (packed or unpacked)."""
    import gzip

    from provisioning.devices import provision_device, rebuild_bundle

    f = Fleet(fleet_dir)
    wheel = tmp_path / "chot-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    paths = [provision_device(f, "gate-x", "cp", "in", wheel=wheel)]
    assert chot_main(["provision", "collector-keys", "--fleet", str(fleet_dir), "--rotate"]) == 0  # two seal keys
    paths.append(rebuild_bundle(f, "gate-x", wheel=wheel))
    secrets = collector_secrets(fleet_dir)
    assert len(secrets) == 4
    needles = []
    for p in secrets:
        text = p.read_bytes()
        needles += [text, text.strip(), text.split()[-1]]  # the file, and the key itself (base64 or hex)
        if p.name in ("index.key", "data.key"):
            needles.append(bytes.fromhex(text.split()[-1].decode()))  # the raw 32 bytes
    from chot import personal

    for k in personal.load_private_keys(fleet_dir / "collector-keys").values():
        needles.append(bytes(k))  # the raw 32 bytes
    for path in paths:
        raw = gzip.decompress(path.read_bytes())
        with tarfile.open(path) as tar:
            names = tar.getnames()
            contents = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
        assert not any(n.endswith((".key",)) and not n.endswith("tls/device.key") for n in names), names
        assert not any(n.rsplit("/", 1)[-1] in ("index.key", "data.key") for n in names)
        for needle in needles:
            assert needle not in raw
            assert not any(needle in c for c in contents)
        assert b"chot-seal-private" not in raw


def test_device_enrolment_errors_say_what_to_do(fleet_dir):
    f = Fleet(fleet_dir)
    from provisioning.devices import provision_device

    with pytest.raises(ProvisioningError, match="not allowed"):
        provision_device(f, "bad/id", "cp", "in")
    with pytest.raises(ProvisioningError, match="collector's MQTT user"):
        provision_device(f, "collector", "cp", "in")
    with pytest.raises(ProvisioningError, match="pins.pass_led"):
        provision_device(f, "d1", "cp", "in", pins={"pass_led": "pin seventeen"})
    assert not f.device_dir("d1").exists()
    provision_device(f, "d1", "cp", "in")
    with pytest.raises(ProvisioningError, match="--renew"):
        provision_device(f, "d1", "cp", "in")
    with pytest.raises(ProvisioningError, match="set by provisioning"):
        provision_device(f, "d2", "cp", "in", sets={"privacy.seal_public_key": "/tmp/other.pub"})
    with pytest.raises(ProvisioningError, match="privacy.seal_rotate_events"):
        provision_device(f, "d2", "cp", "in", sets={"privacy.seal_rotate_events": "0"})
    old = x509.load_pem_x509_certificate((f.device_dir("d1") / "device.crt").read_bytes())
    provision_device(f, "d1", "cp", "out", renew=True)
    new = x509.load_pem_x509_certificate((f.device_dir("d1") / "device.crt").read_bytes())
    crl = x509.load_pem_x509_crl(f.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None
    assert "d1" not in f.revoked_ids()  # superseded, not shut out


def test_device_enrolment_carries_the_dcc_schemas(fleet_dir, testdata, tmp_path, capsys):
    src = testdata / "dcc" / "ehn-dcc-schema"
    need(src.is_dir(), f"ehn-dcc-schema releases at {src}")
    want = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.glob("*/*.json")}
    assert len({n.split("/")[0] for n in want}) >= 9
    rc = chot_main(["provision", "device", "gate-s", "--checkpoint", "cp", "--direction", "in",
                    "--fleet", str(fleet_dir), "--dcc-schema", str(src)])
    assert rc == 0, capsys.readouterr().err
    d = fleet_dir / "devices/gate-s"
    cfg = load_terminal_config(d / "terminal.toml")  # still valid against the SCHEMA
    assert cfg.policy.dcc_schema_dir == "/etc/chot/dcc-schema"
    got = {p.relative_to(d / "dcc-schema").as_posix(): p.read_bytes() for p in (d / "dcc-schema").rglob("*")
           if p.is_file()}
    assert got == want  # <version>/<file>.json, nothing else (no LICENSE, no SOURCE.txt)

    def bundled():
        with tarfile.open(fleet_dir / "bundles/chot-gate-s.tar.gz") as tar:
            top = "chot-gate-s/dcc-schema/"
            files = {m.name[len(top):]: (m.mode, tar.extractfile(m).read())
                     for m in tar.getmembers() if m.isfile() and m.name.startswith(top)}
            dirs = {m.name: m.mode for m in tar.getmembers() if m.isdir() and m.name.startswith(top.rstrip("/"))}
        return files, dirs

    files, dirs = bundled()
    assert files == {n: (0o644, b) for n, b in want.items()}
    assert set(dirs.values()) == {0o755} and "chot-gate-s/dcc-schema/1.3.2" in dirs
    (fleet_dir / "bundles/chot-gate-s.tar.gz").unlink()
    assert chot_main(["provision", "bundle", "gate-s", "--fleet", str(fleet_dir)]) == 0
    assert bundled()[0] == files

    # a folder without a release is refused before anything is written
    empty = tmp_path / "not-schemas"
    (empty / "docs").mkdir(parents=True)
    (empty / "docs" / "x.json").write_text("{}")
    (empty / "1.3.2").mkdir()
    (empty / "1.3.2" / "README.md").write_text("no schema here")
    capsys.readouterr()
    for bad, says in ((empty, "no schema release"), (tmp_path / "missing", "no such folder")):
        rc = chot_main(["provision", "device", "gate-t", "--checkpoint", "cp", "--direction", "in",
                        "--fleet", str(fleet_dir), "--dcc-schema", str(bad)])
        assert rc != 0 and says in capsys.readouterr().err
        assert not (fleet_dir / "devices/gate-t").exists()
    with pytest.raises(ProvisioningError, match="too large"):
        big = tmp_path / "big" / "1.0.0"
        big.mkdir(parents=True)
        (big / "DGC.combined-schema.json").write_bytes(b" " * (2 << 20))
        from provisioning.devices import provision_device

        provision_device(Fleet(fleet_dir), "gate-t", "cp", "in", dcc_schema=big.parent)


def test_device_enrolment_carries_the_dcc_valuesets(fleet_dir, testdata, tmp_path, capsys):
    """Issue 15: `--dcc-valuesets DIR`: the EU value sets go into the device's folder and the bundle (flat,
    0644), the config points at /etc/chot/dcc-valuesets, `provision bundle` carries them again; a folder that
    is missing, lacks a value set or holds broken JSON is refused before anything is written."""
    src = testdata / "dcc" / "eu-dcc-valuesets"
    need(src.is_dir(), f"eu-dcc-valuesets at {src}")
    want = {p.relative_to(src).as_posix().replace("/", "_"): p.read_bytes() for p in src.rglob("*.json")}
    rc = chot_main(["provision", "device", "gate-v", "--checkpoint", "cp", "--direction", "in",
                    "--fleet", str(fleet_dir), "--dcc-valuesets", str(src)])
    assert rc == 0, capsys.readouterr().err
    d = fleet_dir / "devices/gate-v"
    cfg = load_terminal_config(d / "terminal.toml")
    assert cfg.policy.dcc_valueset_dir == "/etc/chot/dcc-valuesets"
    assert {p.name: p.read_bytes() for p in (d / "dcc-valuesets").iterdir()} == want

    def bundled():
        with tarfile.open(fleet_dir / "bundles/chot-gate-v.tar.gz") as tar:
            top = "chot-gate-v/dcc-valuesets/"
            return {m.name[len(top):]: (m.mode, tar.extractfile(m).read())
                    for m in tar.getmembers() if m.isfile() and m.name.startswith(top)}

    files = bundled()
    assert files == {n: (0o644, b) for n, b in want.items()}
    (fleet_dir / "bundles/chot-gate-v.tar.gz").unlink()
    assert chot_main(["provision", "bundle", "gate-v", "--fleet", str(fleet_dir)]) == 0
    assert bundled() == files

    lacking = tmp_path / "lacking"
    lacking.mkdir()
    for f in src.glob("*.json"):
        if f.name != "country-2-codes.json":
            (lacking / f.name).write_bytes(f.read_bytes())
    (lacking / "test-manf.json").write_bytes((src / "2021-test-manf" / "test-manf.json").read_bytes())
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in lacking.glob("*.json"):
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "country-2-codes.json").write_bytes((src / "country-2-codes.json").read_bytes()[:500])
    capsys.readouterr()
    for bad, says in ((lacking, "missing country-2-codes"), (broken, "country-2-codes.json is not valid JSON"),
                      (tmp_path / "missing", "no such folder")):
        rc = chot_main(["provision", "device", "gate-w", "--checkpoint", "cp", "--direction", "in",
                        "--fleet", str(fleet_dir), "--dcc-valuesets", str(bad)])
        assert rc != 0 and says in capsys.readouterr().err
        assert not (fleet_dir / "devices/gate-w").exists()


def test_broker_config_and_revocation(fleet_dir, tmp_path, capsys):
    f = Fleet(fleet_dir)
    from provisioning.devices import provision_device

    provision_device(f, "gate-a", "cp", "in")
    provision_device(f, "gate-b", "cp", "out")
    out = tmp_path / "broker"
    assert chot_main(["provision", "broker-config", "--fleet", str(fleet_dir), "--out", str(out), "--user",
                      "root"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false",
                 f"cafile {out}/ca.crt", f"certfile {out}/server.crt", f"keyfile {out}/server.key",
                 f"crlfile {out}/crl.pem", f"plugin_opt_config_file {out}/dynamic-security.json",
                 "use_username_as_clientid true", "listener 8883", "max_queued_messages 10000000",
                 "max_inflight_messages 0", "max_queued_bytes 0", "max_inflight_bytes 0", "persistence true",
                 # snapshots every 10 s by time, sessions capped at an hour (issue 10, item 8; see broker.py)
                 "autosave_interval 10", "autosave_on_changes false", "persistent_client_expiration 1h"):
        assert f"\n{line}\n" in conf, line
    assert mode(out / "server.key") == 0o600
    assert "\nacl_file" not in conf and not (out / "acl").exists()  # acl_file checks no subscription (2.0.11)

    def rules():
        data = json.loads((out / "dynamic-security.json").read_text())
        return {c["username"]: [r["rolename"] for r in c["roles"]] for c in data["clients"]}, data

    clients, data = rules()
    assert clients == {"collector": ["chot-collector", "chot-deny-all"],
                       "gate-a": ["chot-device-gate-a", "chot-deny-all"],
                       "gate-b": ["chot-device-gate-b", "chot-deny-all"]}
    assert data["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                        "unsubscribe": True}
    # a collector instance of its own, and a terminal enrolled later: both in the refreshed rules
    assert chot_main(["provision", "collector", "b", "--fleet", str(fleet_dir)]) == 0
    provision_device(f, "gate-c", "cp", "in")
    clients, _ = rules()
    assert clients["collector-b"] == ["chot-collector", "chot-deny-all"] and "gate-c" in clients
    key = fleet_dir / "collectors/b/client.key"
    assert mode(key) == 0o600 and cn(x509.load_pem_x509_certificate(key.with_name("client.crt").read_bytes())) == \
        "collector-b"
    with pytest.raises(ProvisioningError, match="collector"):
        provision_device(f, "collector-b", "cp", "in")
    # mosquitto itself accepts the file (-t is not in 2.0.11: start it on a free port and stop it)
    capsys.readouterr()
    assert chot_main(["provision", "revoke", "gate-b", "--fleet", str(fleet_dir)]) == 0
    said = capsys.readouterr().out
    assert str(out) in said and "restart the broker" in said
    clients, data = rules()
    assert clients["gate-b"] == ["chot-deny-all"] and clients["gate-a"] == ["chot-device-gate-a", "chot-deny-all"]
    assert "chot-device-gate-b" not in {r["rolename"] for r in data["roles"]}
    crl = x509.load_pem_x509_crl((out / "crl.pem").read_bytes())
    b = x509.load_pem_x509_certificate((f.device_dir("gate-b") / "device.crt").read_bytes())
    a = x509.load_pem_x509_certificate((f.device_dir("gate-a") / "device.crt").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(b.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(a.serial_number) is None
    assert crl.is_signature_valid(pki.load_cert(f.ca_crt).public_key())
    assert chot_main(["provision", "list", "--fleet", str(fleet_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == ["gate-a\tenrolled", "gate-b\trevoked", "gate-c\tenrolled"]
    assert chot_main(["provision", "revoke", "nobody", "--fleet", str(fleet_dir)]) != 0


def test_generated_mosquitto_conf_starts(fleet_dir, tmp_path):
    import getpass

    from conftest import need
    from servers import free_port, wait_port

    from provisioning.broker import write_broker_config

    need(MOSQUITTO and __import__("os").path.exists(MOSQUITTO), "mosquitto")
    port = free_port()
    conf = write_broker_config(Fleet(fleet_dir), tmp_path / "b", port=port, bind="127.0.0.1",
                               persistence_dir=tmp_path, log_dest="stderr", user=getpass.getuser())
    p = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_port(port), p.stderr.read() if p.poll() is not None else "mosquitto did not listen"
    finally:
        p.terminate()
        err = p.communicate(timeout=10)[1]
    assert "Error" not in err, err


def test_fleet_acl_is_the_local_brokers_and_lets_no_terminal_write_acks(fleet_dir, tmp_path):
    """Issue 10, items 4 and 5, on the fleet's TLS broker: a terminal's certificate may write neither
    an ack (its own or another's) nor a config nor another terminal's events; the collector's may."""
    import getpass
    import ssl
    import threading

    import paho.mqtt.client as mqtt
    from servers import free_port, wait_port

    from provisioning.broker import fleet_dynsec, write_broker_config
    from provisioning.devices import provision_device
    from provisioning.localbroker import LocalBroker

    f = Fleet(fleet_dir)
    for dev, d in (("gate-a", "in"), ("gate-b", "out")):
        provision_device(f, dev, "cp", d)
    # the same rules as LocalBroker(secure=True) writes, role for role
    local = LocalBroker(tmp_path / "local", secure=True)
    for dev in ("gate-a", "gate-b"):
        local.add_terminal(dev)
    local.write_conf()
    fleet_roles = {r["rolename"]: r for r in fleet_dynsec(f)["roles"]}
    local_roles = {r["rolename"]: r for r in json.loads(local.dynsec_path.read_text())["roles"]}
    assert fleet_roles.items() <= local_roles.items()

    need(__import__("os").path.exists(MOSQUITTO), "mosquitto")
    port = free_port()
    log_file = tmp_path / "mosquitto.log"
    (tmp_path / "data").mkdir()
    conf = write_broker_config(f, tmp_path / "b", port=port, bind="127.0.0.1", persistence_dir=tmp_path / "data",
                               log_dest=f"file {log_file}", user=getpass.getuser())
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def client(cert, key, cid):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(f.ca_crt), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        got = {"acks": {}, "msgs": [], "cond": threading.Condition()}

        def note(kind, key, value):
            with got["cond"]:
                if kind == "msgs":
                    got["msgs"].append(value)
                else:
                    got[kind][key] = value
                got["cond"].notify_all()

        c.on_connect = lambda cl, u, fl, rc, p: note("acks", "connack", rc)
        c.on_publish = lambda cl, u, mid, rc, p: note("acks", mid, rc)
        c.on_subscribe = lambda cl, u, mid, rcs, p: note("acks", mid, rcs)
        c.on_message = lambda cl, u, m: note("msgs", None, (m.topic, m.payload))

        def wait(key):
            with got["cond"]:
                got["cond"].wait_for(lambda: key in got["acks"], 10)
            return got["acks"].get(key)

        c.connect("127.0.0.1", port)
        c.loop_start()
        assert wait("connack").value == 0
        c.publish_rc = lambda topic, payload: wait(c.publish(topic, payload, qos=1).mid).value
        c.subscribe_rc = lambda topic: wait(c.subscribe(topic, qos=1)[1])[0].value
        c.got = got
        return c

    def device(dev, cid=None):
        return client(f.device_dir(dev) / "device.crt", f.device_dir(dev) / "device.key", cid or dev)

    try:
        assert wait_port(port), proc.stderr.read() if proc.poll() is not None else "mosquitto did not listen"
        gate_a = device("gate-a")
        assert gate_a.subscribe_rc(wire.ack_topic("gate-a")) == 1
        for topic, payload in ((wire.ack_topic("gate-a"), wire.encode_ack("gate-a", 1030)),
                               (wire.ack_topic("gate-b"), wire.encode_ack("gate-b", 1030)),
                               (wire.config_topic("gate-b"), b"{}"),
                               (wire.event_topic("gate-a"), wire.dumps({"device_id": "gate-a", "seq": 1}))):
            forger = device("gate-b", "gate-b-forger")  # its own connection: 2.0.11 drops it after a refusal
            assert forger.publish_rc(topic, payload) == 135, topic
            forger.disconnect()
            forger.loop_stop()
        col = client(f.collector_crt, f.collector_key, "collector-1")
        assert col.publish_rc(wire.ack_topic("gate-a"), wire.encode_ack("gate-a", 1)) == 0
        with gate_a.got["cond"]:
            gate_a.got["cond"].wait_for(lambda: gate_a.got["msgs"], 10)
        assert gate_a.got["msgs"] == [(wire.ack_topic("gate-a"), wire.encode_ack("gate-a", 1))]
        for c in (gate_a, col):
            c.disconnect()
            c.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)


# --- the self-test ---------------------------------------------------------------------------------


def write_terminal_toml(path, **sections):
    from provisioning.devices import to_toml

    data = {"device": {"id": "st-1", "checkpoint": "cp", "direction": "in"}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    path.write_text(to_toml(data))
    return path


def qr_photo(testdata):
    return testdata / "qr-photos/zxing-blackbox/qrcode-2/1.png"


def run(cfg_path, pins):
    out = io.StringIO()
    rc = chot_selftest(cfg_path, pins, out)
    return rc, out.getvalue()


def chot_selftest(cfg_path, pins, out):
    from device.selftest import run_selftest

    return run_selftest(str(cfg_path), pin_factory=pins, out=out, on_s=0.05, broker_timeout=5.0)


def lines(text):
    return {ln.split()[1]: ln.split()[0] for ln in text.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")}


def test_selftest_all_pass_with_files_source_mock_pins_and_broker(tmp_path, testdata, broker, mock_pins,
                                                                  monkeypatch):
    import device.clock

    monkeypatch.setattr(device.clock, "kernel_synced", lambda: True)
    cfg = write_terminal_toml(
        tmp_path / "t.toml",
        scanner={"source": "files", "path": str(qr_photo(testdata))},
        pins={"factory": "mock", "relay": "GPIO25"},
        outbox={"path": str(tmp_path / "state/outbox.db")},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port},
    )
    (tmp_path / "state").mkdir()
    rc, text = run(cfg, mock_pins)
    assert rc == 0, text
    assert lines(text) == {"config": "PASS", "pass_led": "PASS", "fail_led": "PASS", "buzzer": "PASS",
                           "status_led": "PASS", "relay": "PASS", "camera": "PASS", "decoder": "PASS",
                           "outbox": "PASS", "broker": "PASS", "clock": "PASS"}
    assert "1 code(s) read" in text and "brightness" in text and "sharpness" in text
    # each output went on and off once (GPIO17 pass, 27 fail, 22 buzzer, 5 status, 25 relay)
    for gpio in (17, 27, 22, 5, 25):
        states = [bool(s.state) for s in mock_pins.pin(gpio).states]
        assert states == [False, True, False], (gpio, states)
    assert not (tmp_path / "state/outbox.db").exists()  # nothing created


def test_selftest_outbox_scratch_write_is_rolled_back(tmp_path, testdata, mock_pins, monkeypatch):
    import device.clock
    from device.uplink.outbox import Outbox

    monkeypatch.setattr(device.clock, "kernel_synced", lambda: True)
    db = tmp_path / "outbox.db"
    with Outbox(db, device_id="st-1") as ob:
        ob.append({"checkpoint": "cp", "direction": "in", "source": "camera", "format": "none",
                   "decision": "FAIL", "reason": "unreadable", "verified": False})
    cfg = write_terminal_toml(tmp_path / "t.toml", scanner={"source": "files", "path": str(qr_photo(testdata))},
                              pins={"factory": "mock"}, outbox={"path": str(db)})
    rc, text = run(cfg, mock_pins)
    assert rc == 0, text
    assert lines(text)["broker"] == "SKIP"
    with Outbox(db, device_id="st-1") as ob:
        assert ob.last_seq == 1  # the one real event, and no other
        assert [e["seq"] for e in ob.pending()] == [1]
    import sqlite3

    names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert "chot_selftest_scratch" not in names


def test_selftest_failures_say_what_to_do(tmp_path, testdata, mock_pins, monkeypatch):
    from servers import free_port

    import device.clock

    monkeypatch.setattr(device.clock, "kernel_synced", lambda: False)
    dark = tmp_path / "dark.png"
    from PIL import Image

    Image.new("L", (640, 480), 5).save(dark)
    ro = tmp_path / "ro"
    ro.mkdir()
    cfg = write_terminal_toml(
        tmp_path / "t.toml", scanner={"source": "files", "path": str(dark)}, pins={"factory": "mock"},
        outbox={"path": str(tmp_path / "missing-dir/outbox.db")},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": free_port()},
    )
    rc, text = run(cfg, mock_pins)
    assert rc == 1
    got = lines(text)
    assert got["camera"] == "FAIL" and "too dark" in text and "lens" in text
    assert got["outbox"] == "FAIL" and got["broker"] == "FAIL" and got["clock"] == "FAIL"
    assert got["decoder"] == "PASS"
    assert "timedatectl" in text and "FAILED: camera, outbox, broker, clock" in text
    # a bad config: one FAIL listing the problems
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "x"\n')
    rc, text = run(bad, mock_pins)
    assert rc == 1 and "config" in text and "device.checkpoint" in text
