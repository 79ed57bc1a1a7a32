"""Enrolling a terminal: its key and certificate, its terminal.toml, and one bundle to carry.

`provision_device(fleet, device_id, checkpoint=..., direction=...)` writes into the fleet
directory `devices/<id>/` (device.key 0600, device.crt, terminal.toml) and makes
`bundles/chot-<id>.tar.gz` (0600: it holds the device's private key). The bundle unpacks to
`chot-<id>/` with everything the technician's setup script installs:

    chot-<id>/setup-terminal.sh        0755  run it as root on the Pi
    chot-<id>/chot-terminal.service    0644  the systemd unit
    chot-<id>/terminal.toml            0640  the terminal's config (paths under /etc/chot)
    chot-<id>/tls/ca.crt               0644  the fleet CA (to trust the broker)
    chot-<id>/tls/device.crt           0644  the device's certificate (CN = device id = MQTT user)
    chot-<id>/tls/device.key           0600  the device's private key
    chot-<id>/collector.pub            0644  the collector's signing key, pinned
    chot-<id>/collector-seal.pub       0644  the collector's sealing public key (the fleet's current
                                             collector-keys/seal.pub), pinned: privacy.seal_public_key
    chot-<id>/trust/*                  0644  issuer keys the policy trusts (--trust)
    chot-<id>/dcc-schema/<ver>/*.json  0644  the EU DCC JSON schemas (--dcc-schema: ehn-dcc-schema releases)
    chot-<id>/dcc-valuesets/*.json     0644  the EU DCC value sets (--dcc-valuesets: eu-dcc-valuesets files)
    chot-<id>/*.whl                    0644  the chot package, when --wheel is given

A bundle never holds a collector private key, nor the index or data key: only the public
`seal.pub`. A fleet without `collector-keys/` (made before issue 9) is refused with the
command that makes them (`chot provision collector-keys`).

The terminal.toml is validated against device/config.py's SCHEMA before anything is written.
With `dcc_schema=DIR` the JSON files of every release in DIR (`<version>/<file>.json`, as
ehn-dcc-schema publishes them) are copied to `devices/<id>/dcc-schema/` and the bundle, and the
config gets `policy.dcc_schema_dir = "<etc>/dcc-schema"`; `rebuild_bundle` carries them again.
With `dcc_valuesets=DIR` the value set files in DIR (and its sub-folders: `2021-test-manf/test-manf.json`
becomes `2021-test-manf_test-manf.json`) are checked (each of the eight value sets must be there) and
copied the same way to `dcc-valuesets/`; the config gets `policy.dcc_valueset_dir = "<etc>/dcc-valuesets"`.
"""

import io
import json
import logging
import re
import shutil
import tarfile
import time
import tomllib
from pathlib import Path

from chot.config import validate
from chot.errors import ConfigError, CredentialError, ProvisioningError
from device.config import SCHEMA
from device.credentials import dcc
from device.credentials import dcc_valuesets as vsets
from provisioning import pki
from provisioning.fleet import check_device_id

log = logging.getLogger(__name__)

PROVISIONING_DIR = Path(__file__).resolve().parent
SETUP_SCRIPT = PROVISIONING_DIR / "setup-terminal.sh"
SEAL_PUB = "collector-seal.pub"  # its name in the bundle and in /etc/chot
DCC_SCHEMA = "dcc-schema"  # its folder in the device directory, the bundle and /etc/chot
DCC_VALUESETS = "dcc-valuesets"  # the same for the DCC value sets
MAX_SCHEMA_FILE = 1 << 20  # one schema file (the real ones are under 30 KB)
MAX_SCHEMA_TOTAL = 16 << 20  # all of them together
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json")


def unit_file(name="chot-terminal.service"):
    """The unit file shipped in systemd/ of the source tree."""
    for cand in (PROVISIONING_DIR.parent / "systemd" / name, PROVISIONING_DIR / name):
        if cand.is_file():
            return cand
    raise ProvisioningError(
        f"{name} not found next to the chot package: run `chot provision device` from a source checkout of chot"
    )


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(data, header=""):
    """A config dict of sections as TOML text."""
    out = [header] if header else []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)


def _parse_value(text):
    """A --set value as TOML (numbers, booleans, lists, quoted strings), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def dcc_schema_files(src, option="--dcc-schema"):
    """[(relative name "<version>/<file>.json", source path)] of the schema releases under `src`.

    ProvisioningError when `src` holds no release or a file is too large.
    """
    src = Path(src)
    if not src.is_dir():
        raise ProvisioningError(f"{option} {src}: no such folder; give the folder of ehn-dcc-schema releases "
                                "(one folder per version, e.g. 1.3.2/DCC.combined-schema.json)")
    out, total = [], 0
    for schema in dcc.schema_releases(src).values():
        version = schema.parent.name
        for f in sorted(schema.parent.glob("*.json")):
            if not f.is_file() or not _SCHEMA_NAME.fullmatch(f.name):
                continue
            size = f.stat().st_size
            total += size
            if size > MAX_SCHEMA_FILE or total > MAX_SCHEMA_TOTAL:
                raise ProvisioningError(
                    f"{option} {src}: {f.relative_to(src)} is too large ({size} bytes; at most "
                    f"{MAX_SCHEMA_FILE} a file, {MAX_SCHEMA_TOTAL} in all): give only the ehn-dcc-schema releases"
                )
            out.append((f"{version}/{f.name}", f))
    if not out:
        raise ProvisioningError(
            f"{option} {src}: no schema release in it; give the folder holding one folder per version "
            "(e.g. 1.3.2/DCC.combined-schema.json), as in a checkout of ehn-dcc-schema's releases"
        )
    return out


def dcc_valueset_files(src, option="--dcc-valuesets"):
    """[(flat name "<file>.json", source path)] of the EU DCC value sets under `src` (and its sub-folders).

    ProvisioningError when `src` is missing, a file is broken or too large, or a value set is missing.
    """
    src = Path(src)
    try:
        vsets.load_dir(src)
        found = vsets.files(src)
    except CredentialError as exc:
        raise ProvisioningError(f"{option} {src}: {exc}; give the folder of eu-dcc-valuesets files (e.g. a "
                                "checkout of github.com/ehn-dcc-development/eu-dcc-valuesets) with a rapid test "
                                "device list") from None
    out, total = [], 0
    for rel, f in found:
        name = rel.replace("/", "_")
        total += f.stat().st_size
        if not _SCHEMA_NAME.fullmatch(name) or total > MAX_SCHEMA_TOTAL:
            raise ProvisioningError(f"{option} {src}: {rel}: a name of letters, digits, . _ - (at most 128) and "
                                    f"at most {MAX_SCHEMA_TOTAL} bytes in all, please")
        out.append((name, f))
    return out


def terminal_config(fleet, device_id, checkpoint, direction, pins=None, sets=None, trust_names=(),
                    dcc_schema=False, dcc_valuesets=False):
    """The terminal.toml data for a device (dict of sections), validated against the SCHEMA.

    `dcc_schema`: the DCC schemas are installed with the terminal (policy.dcc_schema_dir is set);
    `dcc_valuesets`: the same for the DCC value sets (policy.dcc_valueset_dir).
    """
    etc = fleet.cfg.etc_dir.rstrip("/")
    data = {
        "device": {"id": device_id, "checkpoint": checkpoint, "direction": direction},
        "scanner": {"source": "picamera2", "decoder": "zxing"},
        "pins": {"factory": "auto"},
        "policy": {"trusted_issuers": [f"{etc}/trust/{n}" for n in trust_names]},
        "outbox": {"path": f"{fleet.cfg.state_dir.rstrip('/')}/outbox.db"},
        "mqtt": {
            "enabled": True,
            "host": fleet.cfg.broker_host,
            "port": fleet.cfg.broker_port,
            "tls": True,
            "ca": f"{etc}/tls/ca.crt",
            "cert": f"{etc}/tls/device.crt",
            "key": f"{etc}/tls/device.key",
            "collector_public_key": f"{etc}/collector.pub",
        },
        "privacy": {"seal_public_key": f"{etc}/{SEAL_PUB}"},
    }
    if dcc_schema:
        data["policy"]["dcc_schema_dir"] = f"{etc}/{DCC_SCHEMA}"
    if dcc_valuesets:
        data["policy"]["dcc_valueset_dir"] = f"{etc}/{DCC_VALUESETS}"
    for key, value in (pins or {}).items():
        if key == "rgb_led":
            value = [p for p in value.replace(":", "/").split("/") if p]
        elif key == "relay_active_high":
            value = _parse_value(value)
        data["pins"][key] = value
    for dotted, value in (sets or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ProvisioningError(f"--set {dotted}: write SECTION.KEY=VALUE, e.g. policy.max_age_h=12")
        if (section, key) in (("device", "id"), ("mqtt", "key"), ("mqtt", "cert"), ("mqtt", "ca"),
                              ("privacy", "seal_public_key")):
            raise ProvisioningError(f"--set {dotted}: this key is set by provisioning and cannot be changed")
        data.setdefault(section, {})[key] = _parse_value(value)
    try:
        validate(data, SCHEMA, source=f"terminal config of {device_id}")
    except ConfigError as exc:
        raise ProvisioningError(f"{exc}\nfix the --pin/--set options") from None
    return data


def _header(device_id):
    return (f"# Terminal {device_id}: made by `chot provision device`. "
            "Check it with `chot terminal check-config FILE`.\n")


def _add(tar, name, data, mode):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def make_bundle(fleet, device_id, wheel=None, trust_files=(), schema_files=(), valueset_files=()):
    """Write bundles/chot-<id>.tar.gz (0600) from the device's files; return its path.

    `schema_files`: [(name under dcc-schema/, path)] as `dcc_schema_files` lists them;
    `valueset_files`: [(name under dcc-valuesets/, path)] as `dcc_valueset_files` lists them.
    """
    ddir = fleet.device_dir(device_id)
    top = f"chot-{device_id}"
    _kid, seal_pub = fleet.seal_public()  # the public key only; never a file of collector-keys/ but seal.pub
    members = [
        ("setup-terminal.sh", SETUP_SCRIPT.read_bytes(), 0o755),
        ("chot-terminal.service", unit_file().read_bytes(), 0o644),
        ("terminal.toml", (ddir / "terminal.toml").read_bytes(), 0o640),
        ("tls/ca.crt", fleet.ca_crt.read_bytes(), 0o644),
        ("tls/device.crt", (ddir / "device.crt").read_bytes(), 0o644),
        ("tls/device.key", (ddir / "device.key").read_bytes(), 0o600),
        ("collector.pub", fleet.signing_pub.read_bytes(), 0o644),
        (SEAL_PUB, seal_pub.encode("ascii"), 0o644),
    ]
    for f in trust_files:
        members.append((f"trust/{Path(f).name}", Path(f).read_bytes(), 0o644))
    dirs = ["", "/tls", "/trust"]
    for rel, f in schema_files:
        for d in (f"/{DCC_SCHEMA}", f"/{DCC_SCHEMA}/{Path(rel).parent.as_posix()}"):
            if d not in dirs:
                dirs.append(d)
        members.append((f"{DCC_SCHEMA}/{rel}", Path(f).read_bytes(), 0o644))
    if valueset_files:
        dirs.append(f"/{DCC_VALUESETS}")
    for name, f in valueset_files:
        members.append((f"{DCC_VALUESETS}/{name}", Path(f).read_bytes(), 0o644))
    if wheel:
        members.append((Path(wheel).name, Path(wheel).read_bytes(), 0o644))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d in dirs:
            info = tarfile.TarInfo(top + d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755 if d != "/tls" else 0o750, int(time.time())
            tar.addfile(info)
        for name, data, mode in members:
            _add(tar, f"{top}/{name}", data, mode)
    return pki.write_private(fleet.bundle_path(device_id), buf.getvalue())


def provision_device(fleet, device_id, checkpoint, direction, pins=None, sets=None, trust=(), wheel=None,
                     renew=False, dcc_schema=None, dcc_valuesets=None):
    """Enrol a terminal; return the bundle's path. See the module doc."""
    check_device_id(device_id, fleet)
    fleet.seal_public()  # an older fleet without collector keys: say so before anything is written
    if device_id in fleet.revoked_ids():
        raise ProvisioningError(
            f"device {device_id} was revoked and stays shut out (the broker denies its user): "
            "give the replacement terminal a new id"
        )
    ddir = fleet.device_dir(device_id)
    old_crt = ddir / "device.crt"
    if old_crt.exists() and not renew:
        raise ProvisioningError(
            f"device {device_id} is already enrolled; to issue it a new key and certificate (the old one is "
            "revoked as superseded) add --renew, or rebuild its bundle with `chot provision bundle`"
        )
    trust = [Path(t) for t in trust]
    for t in trust:
        if not t.is_file():
            raise ProvisioningError(f"--trust {t}: no such file; give an issuer public key or certificate (PEM)")
    if wheel and not Path(wheel).is_file():
        raise ProvisioningError(f"--wheel {wheel}: no such file; build one with `pip wheel --no-deps .`")
    schema_files = dcc_schema_files(dcc_schema) if dcc_schema else []
    valueset_files = dcc_valueset_files(dcc_valuesets) if dcc_valuesets else []
    data = terminal_config(fleet, device_id, checkpoint, direction, pins, sets, [t.name for t in trust],
                           dcc_schema=bool(schema_files), dcc_valuesets=bool(valueset_files))

    ca_key, ca_cert = fleet.ca()
    if old_crt.exists():
        fleet.add_revocation(device_id, pki.load_cert(old_crt), "superseded")
        fleet.refresh_brokers()
    ddir.mkdir(parents=True, exist_ok=True)
    ddir.chmod(0o700)
    key, cert = pki.issue_cert(ca_key, ca_cert, device_id)
    pki.write_private(ddir / "device.key", pki.key_pem(key))
    pki.write_file(ddir / "device.crt", pki.cert_pem(cert))
    fleet.refresh_brokers()  # the broker's rights now name this terminal (in force once the broker restarts)
    pki.write_file(ddir / "terminal.toml", to_toml(data, _header(device_id)), 0o640)
    tdir = ddir / "trust"
    if tdir.exists():
        shutil.rmtree(tdir)
    for t in trust:
        pki.write_file(tdir / t.name, t.read_bytes())
    sdir = ddir / DCC_SCHEMA
    if sdir.exists():
        shutil.rmtree(sdir)
    for rel, f in schema_files:
        pki.write_file(sdir / rel, f.read_bytes())
    kept = dcc_schema_files(sdir) if schema_files else []
    vdir = ddir / DCC_VALUESETS
    if vdir.exists():
        shutil.rmtree(vdir)
    for name, f in valueset_files:
        pki.write_file(vdir / name, f.read_bytes())
    kept_sets = dcc_valueset_files(vdir) if valueset_files else []
    return make_bundle(fleet, device_id, wheel=wheel, trust_files=trust, schema_files=kept,
                       valueset_files=kept_sets)


def rebuild_bundle(fleet, device_id, wheel=None):
    """Make the bundle again from the device's existing files (e.g. with a new wheel)."""
    ddir = fleet.device_dir(device_id)
    if not (ddir / "device.crt").is_file():
        raise ProvisioningError(f"device {device_id} is not enrolled: run `chot provision device {device_id} ...`")
    if device_id in fleet.revoked_ids():
        raise ProvisioningError(f"device {device_id} was revoked: a bundle for it would not connect")
    fleet.seal_public()
    _pin_seal_key(fleet, device_id)
    trust = sorted((ddir / "trust").glob("*")) if (ddir / "trust").is_dir() else []
    sdir = ddir / DCC_SCHEMA
    schema_files = dcc_schema_files(sdir, option="the device's copy") if sdir.is_dir() else []
    vdir = ddir / DCC_VALUESETS
    valueset_files = dcc_valueset_files(vdir, option="the device's copy") if vdir.is_dir() else []
    return make_bundle(fleet, device_id, wheel=wheel, trust_files=trust, schema_files=schema_files,
                       valueset_files=valueset_files)


def _pin_seal_key(fleet, device_id):
    """A terminal.toml written before the sealing key existed gets privacy.seal_public_key (kept otherwise)."""
    path = fleet.device_dir(device_id) / "terminal.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisioningError(f"{path}: cannot be read ({exc}); enrol the device again with --renew") from None
    if data.get("privacy", {}).get("seal_public_key"):
        return
    data.setdefault("privacy", {})["seal_public_key"] = f"{fleet.cfg.etc_dir.rstrip('/')}/{SEAL_PUB}"
    try:
        validate(data, SCHEMA, source=str(path))
    except ConfigError as exc:
        raise ProvisioningError(f"{exc}\nfix {path} or enrol the device again with --renew") from None
    pki.write_file(path, to_toml(data, _header(device_id)), 0o640)
    log.info("privacy.seal_public_key added to the device's terminal.toml")


REGISTRY_FORMAT = "chot-devices-v1"  # read by collector/registry.py (`chot collector devices import`)


def device_registry(fleet):
    """The fleet's registry: what each enrolled terminal was enrolled for, from its terminal.toml.

    {"format": "chot-devices-v1", "fleet", "written", "devices": [{"device_id", "checkpoint",
    "direction"}], "revoked": [device ids]}. The collector refuses an event claiming another
    checkpoint or direction than its device's (docs/security.md); a revoked terminal is listed
    apart, so its binding is removed.
    """
    revoked = set(fleet.revoked_ids())
    devices, problems = [], []
    for dev in fleet.devices():
        if dev in revoked:
            continue
        path = fleet.device_dir(dev) / "terminal.toml"
        try:
            section = tomllib.loads(path.read_text(encoding="utf-8")).get("device", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{path}: cannot be read ({exc})")
            continue
        cp, dr = section.get("checkpoint"), section.get("direction")
        if not isinstance(cp, str) or dr not in ("in", "out") or section.get("id") != dev:
            problems.append(f"{path}: [device] must give id = {dev!r}, checkpoint and direction (in or out)")
            continue
        devices.append({"device_id": dev, "checkpoint": cp, "direction": dr})
    if problems:
        raise ProvisioningError("; ".join(problems) + "\nfix those files or enrol the devices again with --renew")
    return {"format": REGISTRY_FORMAT, "fleet": fleet.cfg.name, "written": pki.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "devices": devices, "revoked": sorted(revoked)}


def write_registry(fleet, out=None):
    """Write the registry (device_registry) to `out` (default FLEET/registry.json), 0644; return (path, registry).

    It holds device ids, checkpoints and directions: nothing secret, nothing personal.
    """
    reg = device_registry(fleet)
    path = Path(out) if out else fleet.dir / "registry.json"
    pki.write_file(path, json.dumps(reg, indent=1, ensure_ascii=False) + "\n", 0o644)
    return path, reg
