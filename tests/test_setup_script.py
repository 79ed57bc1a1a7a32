"""provisioning/setup-terminal.sh on a fake root, with stand-ins for the system's commands.

The script runs for real (bash) with `--root PREFIX`; the commands that would change the
machine (apt-get, dpkg, useradd, getent, systemctl, python3 -m venv, and the venv's pip and
chot) are small scripts first on PATH that append their argv to a log and keep their state
(installed packages, users, unit state) in files, so a second run sees what the first did.
The service user and the owner of root's files are the user running the tests
(CHOT_USER/CHOT_ADMIN), so the real chown and stat of the script are exercised.
"""

import getpass
import grp
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import need

from device.config import load_terminal_config
from provisioning.devices import provision_device
from provisioning.fleet import init_fleet

SCRIPT = Path(__file__).resolve().parent.parent / "provisioning" / "setup-terminal.sh"
REQUIREMENTS = SCRIPT.parent / "requirements-terminal.txt"
DRY_RUN_END = "==> dry run: nothing was changed"
DRY_RUN_END_VI = "==> chạy thử: không có gì bị thay đổi"  # Vietnamese first, on the line before
ME = getpass.getuser()
MY_GROUP = grp.getgrgid(os.getgid()).gr_name

FAKES = {
    "apt-get": """
echo "apt-get $*" >> "$FAKE_LOG"
if [ "${FAKE_APT_FAIL:-0}" = 1 ]; then echo "E: Unable to fetch some archives" >&2; exit 100; fi
if [ "$1" = install ]; then
  for a in "$@"; do case "$a" in -*|install) ;; *) echo "$a" >> "$FAKE_STATE/dpkg";; esac; done
fi
exit 0
""",
    "dpkg": """
echo "dpkg $*" >> "$FAKE_LOG"
[ "$1" = -s ] && grep -qx "$2" "$FAKE_STATE/dpkg" 2>/dev/null
""",
    "getent": """
echo "getent $*" >> "$FAKE_LOG"
grep -qx "$2" "$FAKE_STATE/users" 2>/dev/null
""",
    "useradd": """
echo "useradd $*" >> "$FAKE_LOG"
for last; do :; done; echo "$last" >> "$FAKE_STATE/users"
""",
    "groupadd": """
echo "groupadd $*" >> "$FAKE_LOG"
for last; do :; done; echo "$last" >> "$FAKE_STATE/users"
""",
    "systemctl": """
echo "systemctl $*" >> "$FAKE_LOG"
q=""; [ "${2:-}" = --quiet ] && q=1
case "$1" in
  is-active) [ -f "$FAKE_STATE/active" ] ;;
  is-enabled) [ -f "$FAKE_STATE/enabled" ] ;;
  enable) touch "$FAKE_STATE/enabled" ;;
  start|restart) touch "$FAKE_STATE/active" ;;
  stop) rm -f "$FAKE_STATE/active" ;;
  daemon-reload) ;;
esac
""",
    "python3": """
if [ "$1" = - ]; then exec "$FAKE_REAL_PYTHON" "$@"; fi  # a script on stdin (reading the wheel): the real one
echo "python3 $*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then
  for d; do :; done
  mkdir -p "$d/bin"
  printf 'home = /usr/bin\\ninclude-system-site-packages = true\\n' > "$d/pyvenv.cfg"
  printf '#!/bin/sh\\n' > "$d/bin/python"
  cp "$(dirname "$0")/fake-pip" "$d/bin/pip"
  chmod 755 "$d/bin/python" "$d/bin/pip"
fi
""",
    # the venv's pip: it "installs" chot, a stand-in that logs and exits with FAKE_SELFTEST_RC
    "fake-pip": """
echo "pip $*" >> "$FAKE_LOG"
[ "${FAKE_PIP_FAIL:-0}" = 1 ] && exit 1
cp "$(dirname "$(command -v apt-get)")/fake-chot" "$(dirname "$0")/chot"
""",
    "fake-chot": """
echo "chot $*" >> "$FAKE_LOG"
exit "${FAKE_SELFTEST_RC:-0}"
""",
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A real bundle made by `chot provision device` (the tarball), and a stand-in wheel."""
    base = tmp_path_factory.mktemp("bundle")
    fleet = init_fleet(base / "fleet", "broker.test")
    path = provision_device(fleet, "pi-gate-1", "gate-1", "in")
    wheel = make_wheel(base / "chot-0.1.0-py3-none-any.whl")
    return fleet, path, wheel


def make_wheel(path, requirements=REQUIREMENTS.read_bytes()):
    """A stand-in chot wheel: a zip holding provisioning/requirements-terminal.txt (what the script reads)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("chot/__init__.py", "")
        if requirements is not None:
            z.writestr("provisioning/requirements-terminal.txt", requirements)
    return path


def unpack(tarball, where):
    """Copy the tarball into `where` and unpack it there, as a technician does; return the bundle folder."""
    where.mkdir(parents=True, exist_ok=True)
    copy = where / tarball.name
    shutil.copy2(tarball, copy)
    with tarfile.open(copy) as tar:
        top = tar.getnames()[0].split("/")[0]
        tar.extractall(where, filter="data")
    return where / top


@pytest.fixture
def bundle(made, tmp_path):
    """The bundle unpacked next to its tarball, fresh for each test (the script removes its device key)."""
    _fleet, path, wheel = made
    return unpack(path, tmp_path / "home"), wheel


@pytest.fixture
def env(tmp_path):
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    for name, body in FAKES.items():
        (fakebin / name).write_text("#!/bin/bash\n" + body)
        (fakebin / name).chmod(0o755)
    (tmp_path / "state").mkdir()
    (tmp_path / "root").mkdir()
    return {
        **os.environ,
        "PATH": f"{fakebin}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STATE": str(tmp_path / "state"),
        "FAKE_REAL_PYTHON": sys.executable,
        "CHOT_USER": ME,
        "CHOT_GROUP": MY_GROUP,
        "CHOT_ADMIN": ME,
        "CHOT_SYSTEMD_BOOTED": "1",  # the fakes play a booted system; test_no_systemd_* plays a chroot
    }


def run(bundle, env, *args, **extra):
    bdir, wheel = bundle
    root = Path(env["FAKE_STATE"]).parent / "root"
    cmd = ["bash", str(bdir / "setup-terminal.sh"), "--root", str(root), "--package", str(wheel), *args]
    cwd = extra.pop("cwd", None)
    return subprocess.run(cmd, capture_output=True, text=True, env={**env, **extra}, timeout=60, cwd=cwd)


def calls(env):
    p = Path(env["FAKE_LOG"])
    return p.read_text().splitlines() if p.exists() else []


def snapshot(root):
    """{path: (mode, owner, mtime_ns, sha256)} of everything under root (a directory's mtime aside)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        mtime = st.st_mtime_ns if p.is_file() else None
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_uid, mtime, digest)
    return out


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


CHANGING = ("apt-get", "useradd", "python3 -m venv", "pip", "systemctl daemon-reload", "systemctl enable",
            "systemctl restart", "systemctl start", "systemctl stop", "chot terminal selftest")


def changing(lines):
    return [c for c in lines if c.startswith(CHANGING)]


def test_first_run_installs_everything_with_the_right_modes(bundle, env, made):
    bdir, _ = bundle
    r = run(bundle, env)
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(env["FAKE_STATE"]).parent / "root"
    expect = {  # path: (mode, content source in the bundle)
        "etc/chot/terminal.toml": (0o640, "terminal.toml"),
        "etc/chot/tls/ca.crt": (0o644, "tls/ca.crt"),
        "etc/chot/tls/device.crt": (0o644, "tls/device.crt"),
        "etc/chot/tls/device.key": (0o600, "tls/device.key"),
        "etc/chot/collector.pub": (0o644, "collector.pub"),
        "etc/chot/collector-seal.pub": (0o644, "collector-seal.pub"),
        "etc/systemd/system/chot-terminal.service": (0o644, "chot-terminal.service"),
    }
    fleet, tarball, _ = made
    for rel, (m, src) in expect.items():
        assert mode(root / rel) == m, rel
        if src == "tls/device.key":  # the bundle's copy is gone: compare with the fleet's
            assert (root / rel).read_bytes() == (fleet.device_dir("pi-gate-1") / "device.key").read_bytes()
        else:
            assert (root / rel).read_bytes() == (bdir / src).read_bytes(), rel
    assert (root / "etc/chot/tls/device.key").stat().st_uid == os.getuid()
    assert (root / "etc/chot/collector-seal.pub").read_bytes() == fleet.seal_pub.read_bytes()
    assert (root / "etc/chot/collector-seal.pub").stat().st_uid == os.getuid()  # CHOT_ADMIN's, as root's on a Pi
    cfg = load_terminal_config(root / "etc/chot/terminal.toml")
    assert cfg.privacy.seal_public_key == "/etc/chot/collector-seal.pub"
    # the bundle's key material is removed once installed: its device key and the tarball next to it
    assert not (bdir / "tls/device.key").exists()
    assert not (bdir.parent / tarball.name).exists()
    assert f"removed {bdir}/tls/device.key" in r.stdout and f"removed {bdir.parent / tarball.name}" in r.stdout
    assert (bdir / "tls/device.crt").exists() and (bdir / "collector-seal.pub").exists()
    for d, m in (("etc/chot", 0o750), ("etc/chot/tls", 0o750), ("var/lib/chot", 0o700)):
        assert mode(root / d) == m, d
    assert (root / "opt/chot/venv/pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1
    log = calls(env)
    apt_install = [c for c in log if c.startswith("apt-get install")]
    assert len(apt_install) == 1
    for pkg in ("python3-picamera2", "libzbar0", "python3-venv"):
        assert pkg in apt_install[0].split()
    # lgpio comes from the hash-checked wheel in the venv (it carries its library), not from apt
    assert "python3-lgpio" not in apt_install[0].split()
    assert any(c.startswith("useradd --system") and c.endswith(ME) for c in log)
    assert any(c.startswith("python3 -m venv --system-site-packages") for c in log)
    # the pinned dependencies first, each file checked against its sha256, then chot alone
    assert [c for c in log if c.startswith("pip install")] == [
        "pip install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: "
        f"-r {root}/opt/chot/requirements-terminal.txt",
        f"pip install --quiet --disable-pip-version-check --no-deps {bundle[1]}"]
    assert (root / "opt/chot/requirements-terminal.txt").read_bytes() == REQUIREMENTS.read_bytes()
    sys_calls = [c for c in log if c.startswith("systemctl") and "is-" not in c]
    assert sys_calls == ["systemctl daemon-reload", "systemctl enable chot-terminal.service",
                         "systemctl restart chot-terminal.service"]
    selftest = [c for c in log if c.startswith("chot ")]
    assert selftest == [f"chot terminal selftest --config {root}/etc/chot/terminal.toml"]
    # it says what it does at each step
    for step in ("Debian packages", "service user", "virtual environment", "the chot package", "config and credentials",
                 "systemd unit", "self-test", "enable and start", "done"):
        assert step in r.stdout, step
    assert "PRIVATE KEY" not in r.stdout + r.stderr


def test_second_run_changes_nothing(bundle, env):
    assert run(bundle, env).returncode == 0
    root = Path(env["FAKE_STATE"]).parent / "root"
    before = snapshot(root)
    n = len(calls(env))
    r = run(bundle, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(root) == before
    assert changing(calls(env)[n:]) == []
    assert "nothing changed" in r.stdout
    assert "the bundle's copy was removed" in r.stdout  # the installed key serves the second run


def test_the_bundles_key_is_kept_on_request_and_by_a_dry_run(bundle, env, made):
    bdir, _ = bundle
    tarball = bdir.parent / made[1].name
    r = run(bundle, env, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"would remove: {bdir}/tls/device.key {tarball}" in r.stdout
    assert (bdir / "tls/device.key").exists() and tarball.exists()
    r = run(bundle, env, "--keep-bundle")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept (--keep-bundle)" in r.stdout and "private key" in r.stdout
    assert (bdir / "tls/device.key").exists() and tarball.exists()
    r = run(bundle, env)  # now removed, though nothing else changes
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (bdir / "tls/device.key").exists() and not tarball.exists()


def test_a_newer_bundle_of_the_same_terminal_is_left_alone(bundle, env, made, tmp_path):
    fleet, _, _ = made
    bdir, wheel = bundle
    assert run(bundle, env).returncode == 0
    # a renewed bundle (another key) lands next to the old unpacked one; the old script runs again
    other = unpack(made[1], tmp_path / "elsewhere")
    newer = bdir.parent / made[1].name
    with tarfile.open(newer, "w:gz") as tar:
        (other / "tls/device.key").write_text("-----BEGIN PRIVATE KEY-----\nanother\n-----END PRIVATE KEY-----\n")
        tar.add(other, arcname=other.name)
    r = run(bundle, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert newer.exists() and "holds another key" in r.stdout
    assert (Path(env["FAKE_STATE"]).parent / "root/etc/chot/tls/device.key").read_bytes() == (
        fleet.device_dir("pi-gate-1") / "device.key").read_bytes()


def test_a_changed_file_is_installed_alone_and_the_service_restarted(bundle, env, tmp_path):
    assert run(bundle, env).returncode == 0
    bdir = tmp_path / "bundle2"
    shutil.copytree(bundle[0], bdir)
    (bdir / "terminal.toml").write_text((bdir / "terminal.toml").read_text() + "# changed\n")
    root = Path(env["FAKE_STATE"]).parent / "root"
    before = snapshot(root)
    n = len(calls(env))
    r = subprocess.run(["bash", str(bdir / "setup-terminal.sh"), "--root", str(root), "--package", str(bundle[1])],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    after = snapshot(root)
    assert [k for k in after if after[k] != before.get(k)] == ["etc/chot/terminal.toml"]
    assert mode(root / "etc/chot/terminal.toml") == 0o640
    assert changing(calls(env)[n:]) == [
        "systemctl stop chot-terminal.service",
        f"chot terminal selftest --config {root}/etc/chot/terminal.toml",
        "systemctl restart chot-terminal.service",
    ]


def test_dry_run_writes_nothing(bundle, env):
    r = run(bundle, env, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(env["FAKE_STATE"]).parent / "root"
    assert list(root.iterdir()) == []
    assert changing(calls(env)) == []
    for said in ("would run: apt-get", "would install", "would run: systemctl enable"):
        assert said in r.stdout


def test_failing_apt_get_stops_with_a_clear_message(bundle, env):
    r = run(bundle, env, FAKE_APT_FAIL="1")
    assert r.returncode != 0
    assert "ERROR: apt-get" in r.stderr and "failed" in r.stderr and "network" in r.stderr
    assert "stopped" in r.stderr
    log = calls(env)
    assert not any(c.startswith(("useradd", "python3", "pip", "systemctl enable")) for c in log)
    root = Path(env["FAKE_STATE"]).parent / "root"
    assert list(root.iterdir()) == []


def test_failing_pip_and_failing_selftest(bundle, env):
    r = run(bundle, env, FAKE_PIP_FAIL="1")
    assert r.returncode != 0 and "pip install" in r.stderr and "failed" in r.stderr
    assert not any(c.startswith("systemctl enable") for c in calls(env))
    r = run(bundle, env, FAKE_SELFTEST_RC="1")
    assert r.returncode == 3
    assert "self-test FAILED" in r.stderr
    assert "systemctl restart chot-terminal.service" in calls(env)  # it still runs: it works offline


def test_incomplete_bundle_is_refused(bundle, env, tmp_path):
    for missing in ("tls/device.key", "collector-seal.pub"):
        bdir = tmp_path / f"b-{missing.replace('/', '-')}"
        shutil.copytree(bundle[0], bdir)
        (bdir / missing).unlink()
        r = subprocess.run(["bash", str(bdir / "setup-terminal.sh"), "--root", str(tmp_path / "root")],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode != 0 and f"lacks {missing}" in r.stderr, r.stderr
        assert calls(env) == []


def test_dcc_schemas_are_installed_with_the_right_modes_and_once(env, testdata, tmp_path):
    src = testdata / "dcc" / "ehn-dcc-schema"
    need(src.is_dir(), f"ehn-dcc-schema releases at {src}")
    fleet = init_fleet(tmp_path / "fleet", "broker.test")
    path = provision_device(fleet, "pi-gate-2", "gate-2", "in", dcc_schema=src)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    bdir = tmp_path / "unpacked" / "chot-pi-gate-2"
    wheel = make_wheel(tmp_path / "chot-0.1.0-py3-none-any.whl")
    root = Path(env["FAKE_STATE"]).parent / "root"

    r = run((bdir, wheel), env, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EU DCC JSON schemas" in r.stdout and "would install" in r.stdout
    assert list(root.iterdir()) == []

    r = run((bdir, wheel), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EU DCC JSON schemas" in r.stdout
    dest = root / "etc/chot/dcc-schema"
    want = sorted(p.relative_to(src).as_posix() for p in src.glob("*/*.json"))
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == want and len(got) >= 9
    for rel in got:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
        assert mode(dest / rel) == 0o644 and (dest / rel).stat().st_uid == os.getuid(), rel
    assert mode(dest) == 0o755
    assert {mode(d) for d in dest.iterdir()} == {0o755}
    assert load_terminal_config(root / "etc/chot/terminal.toml").policy.dcc_schema_dir == "/etc/chot/dcc-schema"

    before = snapshot(root)
    n = len(calls(env))
    r = run((bdir, wheel), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(root) == before
    assert changing(calls(env)[n:]) == []
    assert "nothing changed" in r.stdout

    # a schema file changed in the bundle: that one file is installed again
    rel = want[-1]
    (bdir / "dcc-schema" / rel).write_bytes((bdir / "dcc-schema" / rel).read_bytes() + b"\n")
    r = run((bdir, wheel), env)
    assert r.returncode == 0, r.stdout + r.stderr
    after = snapshot(root)
    assert [k for k in after if after[k] != before.get(k)] == [f"etc/chot/dcc-schema/{rel}"]


def test_dcc_valuesets_are_installed_with_the_right_modes_and_once(env, testdata, tmp_path):
    """Issue 15: `--dcc-valuesets DIR` puts the EU value sets in the bundle; the script installs them in
    /etc/chot/dcc-valuesets (0755 folder, 0644 files), idempotently, and the config points there."""
    src = testdata / "dcc" / "eu-dcc-valuesets"
    need(src.is_dir(), f"eu-dcc-valuesets at {src}")
    fleet = init_fleet(tmp_path / "fleet", "broker.test")
    path = provision_device(fleet, "pi-gate-3", "gate-3", "in", dcc_valuesets=src)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    bdir = tmp_path / "unpacked" / "chot-pi-gate-3"
    wheel = make_wheel(tmp_path / "chot-0.1.0-py3-none-any.whl")
    root = Path(env["FAKE_STATE"]).parent / "root"

    r = run((bdir, wheel), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EU DCC value sets" in r.stdout
    dest = root / "etc/chot/dcc-valuesets"
    want = {p.relative_to(src).as_posix().replace("/", "_"): p for p in src.rglob("*.json")}
    got = sorted(p.name for p in dest.iterdir())
    assert got == sorted(want) and "2021-test-manf_test-manf.json" in got
    for name in got:
        assert (dest / name).read_bytes() == want[name].read_bytes(), name
        assert mode(dest / name) == 0o644, name
    assert mode(dest) == 0o755
    cfg = load_terminal_config(root / "etc/chot/terminal.toml")
    assert cfg.policy.dcc_valueset_dir == "/etc/chot/dcc-valuesets"
    from device.credentials import dcc_valuesets

    assert dcc_valuesets.load_dir(dest).missing() == []  # the installed folder is a usable one

    before = snapshot(root)
    n = len(calls(env))
    r = run((bdir, wheel), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(root) == before and changing(calls(env)[n:]) == []


def key_copies(tree, key):
    """Every place under `tree` that holds the device key's material: files, and members of tarballs and zips."""
    body = b"".join(line for line in key.splitlines() if line and not line.startswith(b"-----"))
    needles = (body[:48], key)
    found = []
    for p in sorted(tree.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        data = p.read_bytes()
        if any(n in data for n in needles):
            found.append(str(p.relative_to(tree)))
        if tarfile.is_tarfile(p):
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    f = tar.extractfile(m) if m.isfile() else None
                    if f is not None and any(n in f.read() for n in needles):
                        found.append(f"{p.relative_to(tree)}!{m.name}")
        elif zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                found += [f"{p.relative_to(tree)}!{n}" for n in z.namelist() if any(x in z.read(n) for x in needles)]
    return found


@pytest.mark.parametrize("where", ["next to the bundle", "in the current directory"])
def test_after_a_run_no_copy_of_the_key_remains_outside_etc_chot_tls(made, env, tmp_path, where):
    """Attack: whoever later reads the technician's folder (or the Pi's SD card) finds the terminal's private key."""
    fleet, tarball, wheel = made
    key = (fleet.device_dir("pi-gate-1") / "device.key").read_bytes()
    home = tmp_path / "home"
    if where == "next to the bundle":
        bdir = unpack(tarball, home)
        cwd = home
    else:  # downloaded into the current directory, unpacked elsewhere (tar xzf chot-<id>.tar.gz -C /tmp)
        bdir = unpack(tarball, tmp_path / "unpacked")
        home.mkdir()
        shutil.move(str(tmp_path / "unpacked" / tarball.name), home / tarball.name)
        cwd = home
    assert len(key_copies(tmp_path, key)) == 2  # before: the bundle's tls/device.key and the tarball's member
    r = run((bdir, wheel), env, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert key_copies(tmp_path, key) == ["root/etc/chot/tls/device.key"]
    assert mode(tmp_path / "root/etc/chot/tls/device.key") == 0o600
    assert key not in (r.stdout + r.stderr).encode()


def test_keep_bundle_keeps_every_copy_and_says_so(bundle, env, made):
    fleet, _tarball, _ = made
    key = (fleet.device_dir("pi-gate-1") / "device.key").read_bytes()
    tmp = Path(env["FAKE_STATE"]).parent
    r = run(bundle, env, "--keep-bundle")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(key_copies(tmp, key)) == 3  # the installed one, the bundle's and the tarball's
    assert "delete them yourself" in r.stdout


def tree_state(tree):
    """Everything about `tree` a write could change: each path's type, mode, owner, size, mtime and content."""
    out = {}
    for p in sorted(tree.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(tree))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_size,
                                         st.st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
    return out


def test_a_dry_run_leaves_an_installed_root_byte_identical_and_ends_by_saying_so(bundle, env, made, tmp_path):
    """All would change (new config, new package and requirements, service stopped): a dry run changes nothing."""
    bdir, _ = bundle
    root = tmp_path / "root"
    assert run(bundle, env, "--keep-bundle").returncode == 0
    (bdir / "terminal.toml").write_text((bdir / "terminal.toml").read_text() + "# changed\n")
    newer = make_wheel(tmp_path / "chot-0.2.0-py3-none-any.whl", REQUIREMENTS.read_bytes() + b"# another\n")
    (Path(env["FAKE_STATE"]) / "active").unlink()
    before_root, before_home = tree_state(root), tree_state(tmp_path / "home")
    n = len(calls(env))
    r = run((bdir, newer), env, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_state(root) == before_root
    assert tree_state(tmp_path / "home") == before_home  # the bundle's key and its tarball too
    assert changing(calls(env)[n:]) == []
    for said in ("would install", "--require-hashes", "would remove", "would run: systemctl restart"):
        assert said in r.stdout, said
    assert r.stdout.rstrip("\n").splitlines()[-1].startswith(DRY_RUN_END)
    assert r.stdout.rstrip("\n").splitlines()[-2].startswith(DRY_RUN_END_VI)
    # and on a machine with nothing to do, and when it stops at an error, its last words are the same
    assert run(bundle, env).returncode == 0
    r = run(bundle, env, "--dry-run")
    assert r.returncode == 0 and "nothing changed and the terminal is running" in r.stdout
    assert r.stdout.rstrip("\n").splitlines()[-1].startswith(DRY_RUN_END)
    r = run((bdir, make_wheel(tmp_path / "old.whl", requirements=None)), env, "--dry-run")
    assert r.returncode == 1 and "no hashed requirements" in r.stderr
    assert r.stdout.rstrip("\n").splitlines()[-1].startswith(DRY_RUN_END)


def test_a_wheel_without_hashed_requirements_is_refused(bundle, env, tmp_path):
    """Without the hashes nothing is installed: no pip call, a message that says what to give."""
    bdir, _ = bundle
    r = run((bdir, make_wheel(tmp_path / "old.whl", requirements=None)), env)
    assert r.returncode == 1
    assert "lacks provisioning/requirements-terminal.txt" in r.stderr and "--requirements" in r.stderr
    assert not any(c.startswith("pip") for c in calls(env))
    unhashed = tmp_path / "plain.txt"
    unhashed.write_text("paho-mqtt==2.2.0\n")
    r = run(bundle, env, "--requirements", str(unhashed))
    assert r.returncode == 1 and "carry no --hash=sha256" in r.stderr
    assert not any(c.startswith("pip") for c in calls(env))


def test_new_requirements_reinstall_and_the_same_ones_do_not(bundle, env, tmp_path):
    assert run(bundle, env).returncode == 0
    n = len(calls(env))
    assert run(bundle, env).returncode == 0
    assert [c for c in calls(env)[n:] if c.startswith("pip")] == []
    other = tmp_path / "requirements-terminal.txt"
    other.write_bytes(REQUIREMENTS.read_bytes() + b"# regenerated\n")
    r = run(bundle, env, "--requirements", str(other))
    assert r.returncode == 0, r.stdout + r.stderr
    pips = [c for c in calls(env)[n:] if c.startswith("pip")]
    assert len(pips) == 2 and "--require-hashes" in pips[0] and "--no-deps" in pips[1]
    root = tmp_path / "root"
    assert (root / "opt/chot/requirements-terminal.txt").read_bytes() == other.read_bytes()


def test_a_hid_scanner_and_the_speaker_bring_their_packages_and_prompts(bundle, env):
    bdir, _ = bundle
    toml = bdir / "terminal.toml"
    text = toml.read_text().replace('source = "picamera2"', 'source = "hid"\nhid_device = "/dev/input/event0"')
    assert 'source = "hid"' in text
    toml.write_text(text + '\n[feedback]\nspeaker = true\nvoice_dir = "/var/lib/chot/voice"\n')
    r = run(bundle, env)
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(env["FAKE_STATE"]).parent / "root"
    log = calls(env)
    apt_install = [c for c in log if c.startswith("apt-get install")][0].split()
    assert {"python3-evdev", "espeak-ng", "alsa-utils"} <= set(apt_install) and "python3-serial" not in apt_install
    assert f"chot terminal voice --dir {root}/var/lib/chot/voice" in log
    assert "speaker prompts" in r.stdout


def test_a_scanner_without_the_pi_camera_needs_no_picamera2(bundle, env):
    """python3-picamera2 is only in Raspberry Pi OS's archive: a files / usb / handheld source must not ask
    for it (a plain Debian arm64 then installs everything: make pi-check)."""
    bdir, _ = bundle
    toml = bdir / "terminal.toml"
    text = toml.read_text().replace('source = "picamera2"', 'source = "files"\npath = "/srv/frames"')
    assert 'source = "files"' in text
    toml.write_text(text)
    r = run(bundle, env)
    assert r.returncode == 0, r.stdout + r.stderr
    apt_install = [c for c in calls(env) if c.startswith("apt-get install")][0].split()
    assert "python3-picamera2" not in apt_install and "libzbar0" in apt_install


def test_missing_gpio_and_video_groups_are_made_before_the_user(bundle, env):
    """A plain Debian has no group gpio: useradd --groups gpio,video failed there (found by make pi-check)."""
    r = run(bundle, env)
    assert r.returncode == 0, r.stdout + r.stderr
    log = calls(env)
    made = [i for i, c in enumerate(log) if c.startswith("groupadd --system")]
    assert [log[i] for i in made] == ["groupadd --system gpio", "groupadd --system video"]
    useradd = next(i for i, c in enumerate(log) if c.startswith("useradd"))
    assert max(made) < useradd and "--groups gpio,video" in log[useradd]
    assert "no group gpio" in r.stdout


def test_no_systemd_running_enables_the_unit_offline_and_starts_nothing(bundle, env):
    """In a chroot or an image being prepared (no /run/systemd/system), systemctl cannot reload or start:
    the unit is enabled (offline), nothing else is asked of systemd, and the script says when it starts;
    a second run there changes nothing and says so (found by make pi-check)."""
    r = run(bundle, env, CHOT_SYSTEMD_BOOTED="0")
    assert r.returncode == 0, r.stdout + r.stderr
    sys_calls = [c for c in calls(env) if c.startswith("systemctl") and "is-" not in c]
    assert sys_calls == ["systemctl enable chot-terminal.service"]
    assert "starts at the next boot" in r.stdout and "running (journalctl" not in r.stdout
    n = len(calls(env))
    r = run(bundle, env, CHOT_SYSTEMD_BOOTED="0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert changing(calls(env)[n:]) == []
    assert "nothing changed and the service is enabled" in r.stdout
