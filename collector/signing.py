"""The collector's Ed25519 key and the signed messages it publishes (config, deny list, trust).

`keygen(dir)` writes `collector.key` (private, PEM PKCS#8, mode 0600) and `collector.pub`
(public, PEM: pin it in every terminal's `mqtt.collector_public_key`). The messages are
`chot.wire` signed envelopes, published retained with QoS 1:

- `config`   on chot/v1/dev/<id>/config, target the device; body = the TOML/JSON file as a dict
             (sections of the terminal config to override, e.g. {"policy": {...}});
- `denylist` on chot/v1/broadcast/denylist, target "*"; body = a `chot-denylist-v2` object
             (chot.personal.make_denylist_body): a fresh salt, denied persons as Argon2id(person
             id, salt) and revoked credentials as sha256(salt | credential id), so the list
             carries no ID number, name or credential id;
- `trust`    on chot/v1/broadcast/trust, target "*"; body = {"format": "chot-trust-v1",
             "files": [{"name": ..., "pem": "..."} | {"name": ..., "json": {...}}]}: the
             trusted issuers' public keys, certificates and trust lists, and a DCC revocation
             list (hashes only, `--dcc-revocations`) as one more JSON file.

Each message's version grows per topic and is kept in the database (`chot_published`). Each
carries a signed expiry (`expires`): `collector.config_ttl_h`, `denylist_ttl_h`, `trust_ttl_h`
hours after it is issued (or `--ttl-h`). A terminal refuses an expired message and reports a
list older than its `policy.max_list_age_h` as `stale`: the running collector re-signs and
republishes each message it keeps (collector/refresh.py) before that, so nobody has to.

`deliver()` keeps each signed message in the database (`chot_signed`) and hands it to the running
collector, which publishes it through its own connection within a second or so; with no
collector running and connected (or `now=True`, the commands' `--now`) it publishes it itself.
"""

import json
import logging
import os
import secrets
import stat
import threading
import time
import tomllib
from pathlib import Path

from chot import wire
from chot.errors import CollectorError

log = logging.getLogger(__name__)

DENYLIST_FORMAT = "chot-denylist-v2"
TRUST_FORMAT = "chot-trust-v1"


def keygen(out_dir, force=False):
    """Write a new Ed25519 key pair into `out_dir`; return (private path, public path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / "collector.key", out / "collector.pub"
    if priv_path.exists() and not force:
        raise CollectorError(f"{priv_path} exists: keep it (every terminal pins its public key) or use --force")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = priv_path.with_name(priv_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, priv_path)
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv_path, pub_path


def load_signing_key(path):
    """The collector's Ed25519 private key; refuses a file others can read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if not path:
        raise CollectorError("collector.signing_key is not set: run `chot collector keygen --out DIR` and set it")
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as exc:
        raise CollectorError(f"cannot read the signing key {p}: {exc.strerror}; check collector.signing_key") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CollectorError(f"the signing key {p} is readable by others: run chmod 600 {p}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CollectorError(
            f"{p} is not an unencrypted PEM private key: make one with `chot collector keygen`"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CollectorError(
            f"{p} is a {type(key).__name__}, not an Ed25519 key: make one with `chot collector keygen`"
        )
    return key


def load_public_key(path):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CollectorError(f"cannot load the public key {path}: {exc}") from None


# --- bodies -----------------------------------------------------------------------------------


def read_config_body(path):
    """A device config file (TOML or JSON) as a dict."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectorError(f"cannot read {p}: {exc}") from None
    try:
        body = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise CollectorError(f"{p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(body, dict):
        raise CollectorError(f"{p} must hold a table/object of config sections")
    return body


def read_denylist_input(path):
    """(person ids, credential ids) from a file, one entry a line (# comments):

    an ID number (a person), `nd:NAME|YYYY-MM-DD` (a person known by name and birth date) or
    `revoked:<credential id>` (a revoked credential: native declaration id, DCC ci, SHC rid).
    CollectorError naming the line that is neither.
    """
    from chot.personal import parse_person_query

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectorError(f"cannot read the deny list input {path}: {exc}") from None
    persons, creds = set(), set()
    for n, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("revoked:"):
            cid = line[len("revoked:"):].strip()
            if not cid:
                raise CollectorError(f"{path} line {n}: 'revoked:' must be followed by the credential id")
            creds.add(cid)
            continue
        try:
            persons.add(parse_person_query(line))
        except ValueError as exc:
            raise CollectorError(f"{path} line {n}: {exc}; or revoked:<credential id>") from None
    return sorted(persons), sorted(creds)


def denylist_body(version, person_ids=(), credential_ids=(), params=None):
    """The body the terminals load: chot.personal.make_denylist_body (format chot-denylist-v2)."""
    from chot.personal import ARGON2_DEFAULT, make_denylist_body

    return make_denylist_body(version, person_ids, credential_ids, params=params or ARGON2_DEFAULT)


def read_dcc_revocations(path):
    """A DCC revocation list (device.credentials.dcc.REVOCATION_FORMAT) from a file: hashes only.

    The file is either JSON, an EU gateway revocation batch or a list of them (hashes as they come),
    or text, one revoked DCC a line (lines starting with # are comments), hashed here so that the list carries no
    certificate identifier in clear:

        UCI <ci>                       the certificate identifier (the entry's `ci`)
        COUNTRYCODEUCI <CC> <ci>       the issuing country (the CWT issuer) and the `ci`
        SIGNATURE <HC1:...>            the certificate's QR text: its signature (r alone for ECDSA)

    CollectorError naming the line or the problem.
    """
    from chot.errors import CredentialError
    from device.credentials import dcc

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectorError(f"cannot read the DCC revocation list {path}: {exc}") from None
    if text.lstrip()[:1] in ("{", "["):
        try:
            batches = dcc.parse_revocations(json.loads(text))
        except ValueError as exc:
            raise CollectorError(f"{path} is not valid JSON: {exc}") from None
        except CredentialError as exc:
            raise CollectorError(f"{path}: {exc}") from None
        if batches is None:
            raise CollectorError(f"{path}: JSON that is not a DCC revocation batch (hashType, entries) or a list "
                                 "of them")
        return dcc.revocation_list(batches)
    hashes = {t: set() for t in dcc.REVOCATION_TYPES}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):  # no comments after an entry: a UVCI may hold "#" (its checksum)
            continue
        kind, _, rest = line.partition(" ")
        kind, rest = kind.upper(), rest.strip()
        if kind == "UCI" and rest:
            hashes["UCI"].add(dcc.uci_revocation_hash(rest))
        elif kind == "COUNTRYCODEUCI" and len(rest.split(None, 1)) == 2:
            country, ci = rest.split(None, 1)
            hashes["COUNTRYCODEUCI"].add(dcc.countrycodeuci_revocation_hash(country, ci.strip()))
        elif kind == "SIGNATURE" and rest:
            try:
                hashes["SIGNATURE"].add(dcc.revocation_entry_of_text(rest)[0])
            except ValueError as exc:
                raise CollectorError(f"{path} line {n}: not a signed HC1: text ({exc})") from None
        else:
            raise CollectorError(f"{path} line {n}: expected 'UCI <ci>', 'COUNTRYCODEUCI <country> <ci>' or "
                                 "'SIGNATURE <HC1:...>'")
    return dcc.revocation_list([(t, None, sorted(h)) for t, h in hashes.items() if h])


MAX_VALUESET_FILES = 200


def valueset_documents(folder):
    """[{"name", "json"}] of the EU DCC value set files under `folder` (and its sub-folders).

    A value set file is a JSON object with `valueSetId` and `valueSetValues` (as eu-dcc-valuesets
    publishes them); other JSON files are left out. CollectorError when there is none or one is broken.
    """
    base = Path(folder)
    if not base.is_dir():
        raise CollectorError(f"--dcc-valuesets {base}: no such folder; give the folder of eu-dcc-valuesets files")
    out = []
    for f in sorted(base.rglob("*.json")):
        try:
            doc = json.loads(f.read_text("utf-8"))
        except OSError as exc:
            raise CollectorError(f"cannot read value set file {f}: {exc.strerror}") from None
        except ValueError as exc:
            raise CollectorError(f"value set file {f} is not valid JSON ({exc}); copy it again") from None
        if isinstance(doc, dict) and isinstance(doc.get("valueSetId"), str) and isinstance(
                doc.get("valueSetValues"), dict):
            out.append({"name": f.relative_to(base).as_posix(), "json": doc})
    if not out:
        raise CollectorError(f"--dcc-valuesets {base}: no value set file in it (JSON with valueSetId and "
                             "valueSetValues, as eu-dcc-valuesets publishes them)")
    if len(out) > MAX_VALUESET_FILES:
        raise CollectorError(f"--dcc-valuesets {base}: more than {MAX_VALUESET_FILES} value set files")
    return out


def trust_body(paths, dcc_revocations=None, dcc_valuesets=None):
    """Trusted issuer material from PEM files (keys, certificates) and JSON trust lists, plus, with
    `dcc_revocations` (a file, see read_dcc_revocations), a DCC revocation list as one more JSON file.

    `dcc_valuesets`: a folder of EU DCC value sets to send along (`"dcc_valuesets"`: [{"name", "json"}]);
    the terminals check DCC codes against them in place of their installed sets of the same id.
    """
    files = []
    for path in paths:
        p = Path(path)
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            try:
                data = f.read_bytes()
            except OSError as exc:
                raise CollectorError(f"cannot read trust file {f}: {exc.strerror}") from None
            text = data.decode("utf-8", errors="replace")
            if "-----BEGIN" in text:
                if "PRIVATE KEY" in text:
                    raise CollectorError(f"{f} holds a PRIVATE key: publish only public keys and certificates")
                files.append({"name": f.name, "pem": text})
                continue
            try:
                files.append({"name": f.name, "json": json.loads(text)})
            except ValueError:
                raise CollectorError(f"{f} is neither PEM (public key, certificate) nor a JSON trust list") from None
    if dcc_revocations:
        files.append({"name": "dcc-revocations.json", "json": read_dcc_revocations(dcc_revocations)})
    if not files:
        raise CollectorError("no trust files given: give PEM public keys / certificates or JSON trust lists")
    body = {"format": TRUST_FORMAT, "files": files}
    if dcc_valuesets:
        body["dcc_valuesets"] = valueset_documents(dcc_valuesets)
    return body


# --- publishing -------------------------------------------------------------------------------


def publish_retained(cfg, topic, payload, timeout=15.0):
    """Connect, publish one retained QoS 1 message, wait for the broker's PUBACK, disconnect."""
    from chot.mqtt import build_client, connect
    from collector.config import client_id
    from collector.subscriber import mqtt_settings

    # On the fleet's broker the client id is the certificate's CN whatever is asked here: this
    # connection then briefly displaces a collector running with the same certificate, which
    # reconnects at once (docs/security.md, "Broker identities").
    settings = mqtt_settings(cfg, f"{client_id(cfg)}-pub-{secrets.token_hex(3)}", reconnect_on_failure=False,
                             session_expiry_s=0)
    client = build_client(settings)
    connected = threading.Event()
    result = {}

    def on_connect(c, u, flags, rc, props):
        result["rc"] = rc
        connected.set()

    client.on_connect = on_connect
    m = cfg.mqtt
    try:
        connect(client, settings)
    except OSError as exc:
        raise CollectorError(f"cannot reach the broker {m.host}:{m.port}: {exc}; is it running?") from None
    client.loop_start()
    try:
        if not connected.wait(timeout) or result["rc"].is_failure:
            raise CollectorError(f"the broker {m.host}:{m.port} refused or did not answer: {result.get('rc')}")
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise CollectorError(f"the broker did not confirm the message on {topic} within {timeout} s")
        if info.rc != 0:
            raise CollectorError(f"publishing on {topic} failed: rc {info.rc} (check the collector's ACL)")
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("published %d bytes on %s", len(payload), topic)


def ttl_s(cfg, kind, ttl_h=None):
    """Seconds a signed `kind` lives: `ttl_h` hours when given, else `collector.<kind>_ttl_h`."""
    if ttl_h is None:
        ttl_h = getattr(cfg.collector, f"{kind}_ttl_h", wire.DEFAULT_TTL_S[kind] / 3600.0)
    if not ttl_h or ttl_h <= 0:
        raise CollectorError(f"the time to live of a signed {kind} must be positive (hours), not {ttl_h}")
    return float(ttl_h) * 3600.0


def signed(storage, cfg, kind, body, topic, target="*", key=None, ttl_h=None):
    """Sign `body` as a `kind` envelope with the next version for `topic`; return (payload, version)."""
    key = key or load_signing_key(cfg.collector.signing_key)
    ttl = ttl_s(cfg, kind, ttl_h)
    version = storage.next_publish_version(topic)
    return wire.sign_envelope(key, kind, version, body, target=target, ttl_s=ttl), version


def deliver(storage, cfg, kind, topic, target, payload, version, ttl_h=None, now=False, wait_s=None, key=None):
    """Keep a signed message (the running collector re-signs it before it ages) and get it published.

    With a collector running and connected (its heartbeat in the database), it is handed over: the
    collector publishes it through its own connection, and this waits (`wait_s`, default
    collector.refresh.HANDOFF_WAIT_S) until it has. Otherwise, or with `now`, or when the collector
    did not in time, it is published here (a connection of its own: on the fleet's broker that
    briefly displaces a running collector using the same certificate). When a newer version of the
    topic is kept already (a refresh got there first), the body is signed again with a new version.

    Returns (payload, version, by): what was published and by whom ("collector <id>" or "directly").
    """
    from collector import refresh

    store = refresh.SignedStore(storage)
    ttl = ttl_s(cfg, kind, ttl_h)
    for _ in range(5):
        if store.save(kind, topic, target, version, payload, ttl):
            break
        key = key or load_signing_key(cfg.collector.signing_key)
        version = storage.next_publish_version(topic)
        payload = wire.sign_envelope(key, kind, version, json.loads(payload)["body"], target=target, ttl_s=ttl)
    else:
        raise CollectorError(f"{topic}: newer versions keep arriving while publishing; try again")
    live = [] if now else store.live_publishers()
    if live:
        wait_s = refresh.HANDOFF_WAIT_S if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            done = store.published_version(topic)
            if done is not None and done >= version:
                by = (store.get(topic) or {}).get("published_by") or f"collector {live[0]}"
                log.info("%s version %d on %s published by %s", kind, version, topic, by)
                return payload, version, by
            time.sleep(0.1)
        log.warning("the running collector (%s) did not publish %s version %d within %.0f s: publishing it "
                    "directly", ", ".join(live), kind, version, wait_s)
    publish_retained(cfg, topic, payload)
    store.mark_published(topic, version, "directly")
    return payload, version, "directly"


def set_config(storage, cfg, device_id, path, publish=True, ttl_h=None, now=False):
    if not wire.DEVICE_ID_RE.fullmatch(device_id):
        raise CollectorError(f"{device_id!r} is not a device id")
    body = read_config_body(path)
    if "device" in body:
        raise CollectorError(
            f"{path}: a config update cannot change a terminal's [device] part (its id, checkpoint, direction: "
            "the terminal refuses it, and the collector binds each terminal to what it was enrolled for). To move "
            "a terminal, enrol it again (chot provision device ID --checkpoint CP --direction D --renew), then "
            "chot provision registry and chot collector devices import FILE"
        )
    topic = wire.config_topic(device_id)
    payload, version = signed(storage, cfg, "config", body, topic, target=device_id, ttl_h=ttl_h)
    if publish:
        payload, version, _by = deliver(storage, cfg, "config", topic, device_id, payload, version, ttl_h, now=now)
    return payload, version


def publish_denylist(storage, cfg, path, publish=True, params=None, ttl_h=None, now=False):
    """Sign and publish the deny list of `path` (see read_denylist_input); `params` the Argon2 ones,
    `ttl_h` its life in hours (default `collector.denylist_ttl_h`), `now`: publish it here even when a
    collector is running (see deliver).

    Returns (payload, version, number of entries).
    """
    from chot.personal import check_argon2_params

    persons, creds = read_denylist_input(path)
    if params is not None:
        try:
            params = check_argon2_params(params)
        except ValueError as exc:
            raise CollectorError(str(exc)) from None
    topic = wire.broadcast_topic("denylist")
    key = load_signing_key(cfg.collector.signing_key)
    ttl = ttl_s(cfg, "denylist", ttl_h)
    body = denylist_body(0, persons, creds, params)  # the Argon2 hashes first: they take a while
    version = storage.next_publish_version(topic)
    body["version"] = version
    payload = wire.sign_envelope(key, "denylist", version, body, target="*", ttl_s=ttl)
    if publish:
        payload, version, _by = deliver(storage, cfg, "denylist", topic, "*", payload, version, ttl_h, now=now,
                                        key=key)
    return payload, version, len(persons) + len(creds)


def publish_trust(storage, cfg, paths, publish=True, ttl_h=None, now=False, dcc_revocations=None,
                  dcc_valuesets=None):
    """Sign and publish the trusted issuers of `paths` (and a DCC revocation list, `dcc_revocations`, and
    EU DCC value sets, `dcc_valuesets`).

    Each trust update replaces the previous one on the terminals (added to their configured trust
    files): publish everything together. Returns (payload, version, number of files).
    """
    body = trust_body(paths, dcc_revocations, dcc_valuesets=dcc_valuesets)
    topic = wire.broadcast_topic("trust")
    payload, version = signed(storage, cfg, "trust", body, topic, ttl_h=ttl_h)
    if publish:
        payload, version, _by = deliver(storage, cfg, "trust", topic, "*", payload, version, ttl_h, now=now)
    return payload, version, len(body["files"])
