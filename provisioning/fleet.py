"""The fleet directory: making it, enrolling terminals, revoking them.

`init_fleet(dir, broker_host=...)` makes the CA, the broker's server certificate, the
collector's Ed25519 signing key and its MQTT client certificate, the collector's personal-data
keys (`collector-keys/`: sealing key pair, index secret, data key; see `make_collector_keys`),
an empty CRL and `fleet.toml`. `Fleet(dir)` opens an existing one; `fleet.provision_device(...)` (devices.py)
enrols a terminal and `fleet.revoke(device_id)` shuts one out: its certificate goes into the
CRL and its user is denied everything in the broker's rules (dynamic-security.json), and every
broker configuration written by `chot provision broker-config` is refreshed so a broker restart
applies it. `fleet.provision_collector(name)` gives another collector instance its own
certificate (collectors/<name>/, CN `<collector_user>-<name>`).
See pki.py for the layout of the directory.
"""

import json
import logging
import re
from pathlib import Path

from chot import personal
from chot.config import Field, load, validate
from chot.errors import ConfigError, ProvisioningError
from chot.wire import DEVICE_ID_RE
from provisioning import pki

log = logging.getLogger(__name__)

_HOST = r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})"
FLEET_SCHEMA = {
    "fleet": {
        "name": Field("str", "Chot fleet", help="the fleet's name (in certificate subjects)"),
        "broker_host": Field("str", pattern=_HOST, help="the broker's host name as terminals reach it"),
        "broker_port": Field("int", 8883, min=1, max=65535, help="the broker's TLS port"),
        "collector_user": Field("str", "collector", pattern=DEVICE_ID_RE.pattern, help="the collector's MQTT user"),
        "etc_dir": Field("path", "/etc/chot", help="where a terminal keeps its config and credentials"),
        "state_dir": Field("path", "/var/lib/chot", help="where a terminal keeps its outbox"),
    }
}


class Fleet:
    """An existing fleet directory; see pki.py for what it holds."""

    def __init__(self, path):
        self.dir = Path(path).resolve()
        self.toml = self.dir / "fleet.toml"
        if not self.toml.is_file():
            raise ProvisioningError(
                f"{self.dir} is not a fleet directory (no fleet.toml): make one with "
                "`chot provision init-fleet DIR` or give the right one with --fleet"
            )
        try:
            self.cfg = load(self.toml, FLEET_SCHEMA).fleet
        except ConfigError as exc:
            raise ProvisioningError(str(exc)) from None

    # paths
    ca_key = property(lambda self: self.dir / "ca" / "ca.key")
    ca_crt = property(lambda self: self.dir / "ca" / "ca.crt")
    crl = property(lambda self: self.dir / "ca" / "crl.pem")
    revoked_json = property(lambda self: self.dir / "ca" / "revoked.json")
    server_key = property(lambda self: self.dir / "broker" / "server.key")
    server_crt = property(lambda self: self.dir / "broker" / "server.crt")
    signing_key = property(lambda self: self.dir / "collector" / "signing.key")
    signing_pub = property(lambda self: self.dir / "collector" / "signing.pub")
    collector_key = property(lambda self: self.dir / "collector" / "client.key")
    collector_crt = property(lambda self: self.dir / "collector" / "client.crt")
    # more collector instances, each with its own identity: collectors/<name>/client.{crt,key}
    collectors_dir = property(lambda self: self.dir / "collectors")
    broker_outputs = property(lambda self: self.dir / "broker" / "outputs.json")
    # the collector's personal-data keys (the collector's `collector.key_dir`); never in a bundle
    collector_keys = property(lambda self: self.dir / "collector-keys")
    seal_pub = property(lambda self: self.dir / "collector-keys" / "seal.pub")
    index_key = property(lambda self: self.dir / "collector-keys" / "index.key")
    data_key = property(lambda self: self.dir / "collector-keys" / "data.key")
    rollout_dir = property(lambda self: self.dir / "rollout")

    # --- collector identities ---------------------------------------------------------------

    def collector_instance_user(self, name):
        """The MQTT user (certificate CN, and so client id) of collector instance `name`."""
        return f"{self.cfg.collector_user}-{name}"

    def collector_instances(self):
        """{name: directory} of the collector instances made by `chot provision collector NAME`."""
        root = self.collectors_dir
        if not root.is_dir():
            return {}
        return {p.name: p for p in sorted(root.iterdir()) if (p / "client.crt").is_file()}

    def collector_users(self):
        """Every collector identity's MQTT user: the fleet's first one (`collector_user`, made with the
        fleet) and one per instance."""
        return [self.cfg.collector_user] + [self.collector_instance_user(n) for n in self.collector_instances()]

    def provision_collector(self, name):
        """Make collector instance `name` its own key and certificate (CN `<collector_user>-<name>`):
        two collectors never share a client id, so neither can take the other's session over.
        Returns (user, cert path, key path); the broker configs written before are refreshed."""
        if not DEVICE_ID_RE.fullmatch(name or ""):
            raise ProvisioningError(
                f"collector name {name!r} is not allowed: use 1 to 64 letters, digits, '_', '.' or '-', starting "
                "with a letter or digit (e.g. the instance's collector.id)"
            )
        user = self.collector_instance_user(name)
        if not DEVICE_ID_RE.fullmatch(user):
            raise ProvisioningError(f"collector name {name!r} is too long: the MQTT user {user!r} has over 64 "
                                    "characters")
        if user in self.devices() or user in self.revoked_ids():
            raise ProvisioningError(f"{user!r} is a terminal's id in this fleet: give the collector another name")
        cdir = self.collectors_dir / name
        crt, key = cdir / "client.crt", cdir / "client.key"
        if crt.exists():
            raise ProvisioningError(
                f"collector {name} already has a certificate ({crt}): give the new instance another name"
            )
        self.collectors_dir.mkdir(mode=0o700, exist_ok=True)
        cdir.mkdir(mode=0o700, exist_ok=True)
        ca_key, ca_cert = self.ca()
        k, c = pki.issue_cert(ca_key, ca_cert, user)
        pki.write_private(key, pki.key_pem(k))
        pki.write_file(crt, pki.cert_pem(c))
        self.refresh_brokers()
        log.info("collector identity made")
        return user, crt, key

    def device_dir(self, device_id):
        return self.dir / "devices" / device_id

    def bundle_path(self, device_id):
        return self.dir / "bundles" / f"chot-{device_id}.tar.gz"

    def ca(self):
        return pki.load_key(self.ca_key), pki.load_cert(self.ca_crt)

    # --- devices --------------------------------------------------------------------------

    def devices(self):
        """Device ids enrolled (with a certificate), sorted."""
        root = self.dir / "devices"
        return sorted(p.name for p in root.iterdir() if (p / "device.crt").is_file()) if root.is_dir() else []

    def revoked(self):
        return pki.load_revoked(self.revoked_json)

    def revoked_ids(self):
        """Device ids shut out for good (reason "revoked"; a superseded certificate does not count)."""
        return sorted({r["device_id"] for r in self.revoked() if r.get("reason") == "revoked"})

    def add_revocation(self, device_id, cert, reason):
        records = self.revoked()
        serial = format(cert.serial_number, "x")
        if not any(r["serial"] == serial for r in records):
            records.append(
                {"device_id": device_id, "serial": serial, "reason": reason, "at": pki.now().isoformat()}
            )
        elif reason == "revoked":
            for r in records:
                if r["serial"] == serial:
                    r["reason"] = "revoked"
        pki.save_revoked(self.revoked_json, records)
        self.write_crl()

    def write_crl(self):
        """Sign the CRL again from revoked.json (also renews its nextUpdate)."""
        ca_key, ca_cert = self.ca()
        pki.write_file(self.crl, pki.make_crl(ca_key, ca_cert, self.revoked()), 0o644)
        return self.crl

    def revoke(self, device_id):
        """Shut a terminal out: CRL + denied everything in the broker's rules; refresh every broker config
        written. Returns the outputs refreshed."""
        check_device_id(device_id)  # not the naming rules of new ids: an old fleet may hold any id
        crt = self.device_dir(device_id) / "device.crt"
        if not crt.is_file():
            raise ProvisioningError(
                f"device {device_id} is not enrolled in {self.dir} (no {crt}); `chot provision list` shows the enrolled"
            )
        self.add_revocation(device_id, pki.load_cert(crt), "revoked")
        log.info("device certificate revoked")
        return self.refresh_brokers()

    # --- the collector's personal-data keys ------------------------------------------------

    def make_collector_keys(self, rotate=False):
        """Make what is missing in collector-keys/ (0700); with `rotate`, a new sealing key pair too.

        seal-<kid>.key (0600) + seal.pub (0644): the sealing key pair (X25519); index.key and
        data.key (0600): the person index's HMAC secret and the at-rest data key. Existing keys are
        never replaced: old seal-*.key files stay (they open the events sealed to them), and the
        index and data keys have no in-place rotation (docs/security.md). Returns
        [(what, path)] of what was made.
        """
        kdir = self.collector_keys
        made = []
        if not kdir.is_dir():
            kdir.mkdir(mode=0o700)
            made.append(("folder", kdir))
        kdir.chmod(0o700)
        privates = sorted(kdir.glob("seal-*.key"))
        new_pair = rotate or not self.seal_pub.is_file() or not privates
        if not new_pair:
            kid, _raw = self._current_seal()
            if not (kdir / f"seal-{kid}.key").is_file():
                raise ProvisioningError(
                    f"{self.seal_pub} names the sealing key {kid}, but {kdir}/seal-{kid}.key is missing: restore "
                    "it from the backup (events sealed to it cannot be opened without it), or make a new pair "
                    "with `chot provision collector-keys --rotate`"
                )
        if new_pair:
            kid = personal.generate_seal_keys(kdir)
            made.append((f"sealing key {kid}", kdir / f"seal-{kid}.key"))
            made.append(("sealing public key", self.seal_pub))
        for what, path in (("index secret", self.index_key), ("data key", self.data_key)):
            if not path.exists():
                personal.new_secret_file(path)
                made.append((what, path))
        return made

    def _current_seal(self):
        try:
            return personal.load_public_key(self.seal_pub)
        except personal.KeyFileError as exc:
            msg = f"{exc}; or make a new pair with `chot provision collector-keys --rotate`"
            raise ProvisioningError(msg) from None

    def seal_public(self):
        """(kid, seal.pub text) of the current sealing public key, for a bundle or a config update.

        ProvisioningError when the fleet has no collector-keys/ (made before issue 9) or it is incomplete.
        """
        if not self.seal_pub.is_file():
            raise ProvisioningError(
                f"{self.dir} has no collector sealing key ({self.seal_pub} is missing): make the collector's "
                f"keys first with `chot provision collector-keys --fleet {self.dir}`, then install them on the "
                "collector (collector.key_dir)"
            )
        kid, _raw = self._current_seal()
        return kid, self.seal_pub.read_text(encoding="ascii")

    def write_seal_rollout(self):
        """Write rollout/seal-<kid>.json (0644): the `config` update body that makes terminals seal to
        the current public key (`chot collector set-config DEVICE FILE`). Returns (kid, path)."""
        kid, text = self.seal_public()
        body = {"privacy": {"seal_public_key": text.strip()}}
        self.rollout_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.rollout_dir / f"seal-{kid}.json"
        pki.write_file(path, json.dumps(body, indent=1) + "\n", 0o644)
        return kid, path

    def seal_kids(self):
        """The ids of every sealing private key kept in collector-keys/ (old ones included), sorted."""
        return sorted(p.name[len("seal-"):-len(".key")] for p in self.collector_keys.glob("seal-*.key"))

    # --- broker outputs -------------------------------------------------------------------

    def remember_broker_output(self, out_dir, options):
        outs = self._broker_outputs()
        outs[str(Path(out_dir).resolve())] = options
        pki.write_file(self.broker_outputs, json.dumps(outs, indent=1, sort_keys=True) + "\n", 0o644)

    def _broker_outputs(self):
        try:
            return json.loads(self.broker_outputs.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ProvisioningError(
                f"cannot read {self.broker_outputs} ({exc}); delete it and run broker-config again"
            ) from None

    def refresh_brokers(self):
        """Write the access rules (dynamic-security.json) and the CRL again into every broker config
        directory made from this fleet; a broker restart puts them in force."""
        from provisioning.broker import write_broker_config

        done = []
        for out, options in self._broker_outputs().items():
            if Path(out).is_dir():
                write_broker_config(self, out, **options)
                done.append(out)
        return done


def check_device_id(device_id, fleet=None):
    if not DEVICE_ID_RE.fullmatch(device_id or ""):
        raise ProvisioningError(
            f"device id {device_id!r} is not allowed: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    if fleet is not None and device_id == fleet.cfg.collector_user:
        raise ProvisioningError(f"{device_id!r} is the collector's MQTT user: give the terminal another id")
    prefixes = (f"{fleet.cfg.collector_user}-", "collector-") if fleet is not None else ()
    if device_id.startswith(prefixes):
        raise ProvisioningError(
            f"{device_id!r} is a collector's name (collector instances are <collector_user>-<name>, manual "
            "events collector-<id>): give the terminal another id"
        )


def _toml_str(s):
    return json.dumps(s, ensure_ascii=False)


def init_fleet(path, broker_host, broker_port=8883, collector_user="collector", name="Chot fleet",
               extra_names=(), force=False):
    """Make a new fleet directory; return the `Fleet`. Refuses to overwrite an existing CA."""
    path = Path(path).resolve()
    data = {"fleet": {"name": name, "broker_host": broker_host, "broker_port": broker_port,
                      "collector_user": collector_user}}
    try:
        validate(data, FLEET_SCHEMA, source="init-fleet options")
    except ConfigError as exc:
        raise ProvisioningError(str(exc)) from None
    if (path / "ca" / "ca.key").exists() and not force:
        raise ProvisioningError(
            f"{path} already holds a fleet CA: every terminal trusts it, so it is not replaced. "
            "Use another directory for a new fleet."
        )
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    for sub in ("ca", "broker", "collector", "devices", "bundles"):
        (path / sub).mkdir(exist_ok=True)
        (path / sub).chmod(0o700)
    lines = ["# The fleet: made by `chot provision init-fleet`. Keep this directory secret and backed up.",
             "[fleet]"]
    lines += [f"{k} = {_toml_str(v) if isinstance(v, str) else v}" for k, v in data["fleet"].items()]
    pki.write_file(path / "fleet.toml", "\n".join(lines) + "\n", 0o644)
    fleet = Fleet(path)

    ca_key, ca_cert = pki.make_ca(f"{name} CA")
    pki.write_private(fleet.ca_key, pki.key_pem(ca_key))
    pki.write_file(fleet.ca_crt, pki.cert_pem(ca_cert))

    names = [broker_host, "localhost", "127.0.0.1", *extra_names]
    srv_key, srv_cert = pki.issue_cert(
        ca_key, ca_cert, broker_host, server_names=names, client=False, days=pki.SERVER_DAYS
    )
    pki.write_private(fleet.server_key, pki.key_pem(srv_key))
    pki.write_file(fleet.server_crt, pki.cert_pem(srv_cert))

    sign_key, sign_pub = pki.make_signing_key()
    pki.write_private(fleet.signing_key, pki.key_pem(sign_key))
    pki.write_file(fleet.signing_pub, sign_pub)

    col_key, col_cert = pki.issue_cert(ca_key, ca_cert, collector_user)
    pki.write_private(fleet.collector_key, pki.key_pem(col_key))
    pki.write_file(fleet.collector_crt, pki.cert_pem(col_cert))

    fleet.make_collector_keys()

    pki.save_revoked(fleet.revoked_json, [])
    fleet.write_crl()
    log.info("fleet made")
    return fleet


def parse_assignments(items, what):
    """["key=value", ...] -> {key: value}; raise ProvisioningError naming the bad one."""
    out = {}
    for item in items or ():
        for part in filter(None, re.split(r",", item)):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ProvisioningError(f"{what} {part!r}: write KEY=VALUE, e.g. pass_led=GPIO17")
            out[key.strip()] = value.strip()
    return out
