"""provisioning/requirements-terminal.txt: the terminal's PyPI packages, pinned with hashes, in step with setup.py.

Attack: a package swapped on PyPI, on a mirror or on the way to the terminal. setup-terminal.sh
installs with `pip install --require-hashes -r requirements-terminal.txt` and then chot alone
(`--no-deps`), so a file whose sha256 is not listed is refused; these tests keep the list in step
with setup.py (no pin can drift, no dependency be missed) and prove that pip refuses a file whose
hash differs, in this file's own format.
"""

import ast
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from provisioning import requirements as R

TEXT = R.PATH.read_text(encoding="utf-8")
LOCKED = R.parse(TEXT)


def test_every_entry_is_pinned_and_hashed():
    assert len(LOCKED) >= 15
    for name, entry in LOCKED.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", entry["version"]), name
        assert entry["hashes"], f"{name} has no --hash"
        assert len(set(entry["hashes"])) == len(entry["hashes"]), name
        assert entry["via"], f"{name}: no '# via' line"
    # nothing outside an entry: every requirement line is name==version followed by its hashes
    reqs = [ln for ln in TEXT.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert len(reqs) == len(LOCKED)


def test_it_covers_exactly_setup_pys_pinned_runtime_requirements():
    pins = R.pinned_runtime()
    direct = {name: e["version"] for name, e in LOCKED.items() if "chot" in e["via"]}
    assert direct == pins
    # the pi extra's lgpio is pinned and hashed; what the OS provides is left out
    assert "lgpio" in pins
    for name in R.FROM_OS:
        assert name not in LOCKED, f"{name} comes from the OS (--system-site-packages), not from this file"
    base, pi = R.setup_requirements()
    ranges = {R.split(r)[0] for r in [*base, *pi] if R.split(r)[1] is None}
    assert ranges == set(R.FROM_OS)  # numpy, pillow, RPi.GPIO: nothing else may be a range


def test_every_dependency_of_an_entry_is_in_it():
    """Walk the installed metadata of each entry at its pinned version: what it needs on aarch64 or x86_64 is listed."""
    walked = set()
    for name, entry in LOCKED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != entry["version"]:
            continue
        walked.add(name)
        for arch in R.ARCHES:
            for dep in R.dependencies(name, entry["version"], arch):
                if dep in R.FROM_OS:
                    continue
                assert dep in LOCKED, f"{name} needs {dep} on {arch}: not in {R.PATH.name}"
                assert name in LOCKED[dep]["via"] or "chot" in LOCKED[dep]["via"], (name, dep)
    # setup.py's pins are installed here at their versions (the indirect ones may differ in a newer
    # environment: those are walked when they agree): only the pi extra, not installed off a Pi, is not
    assert set(R.pinned_runtime()) - walked <= {"lgpio"}, set(R.pinned_runtime()) - walked


def test_it_is_shipped_as_package_data():
    tree = ast.parse(R.SETUP_PY.read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    assert R.PATH.name in package_data["provisioning"]
    assert R.PATH.parent.name == "provisioning" and R.PATH.is_file()


def _wheel(path, body):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("chotprobe/__init__.py", body)
        z.writestr("chotprobe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: chotprobe\nVersion: 1.0\n")
        z.writestr("chotprobe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("chotprobe-1.0.dist-info/RECORD", "")
    return path


def _pip_download(req, links, out):
    cmd = [sys.executable, "-m", "pip", "download", "--isolated", "--no-index", "--find-links", str(links),
           "--require-hashes", "--only-binary=:all:", "-r", str(req), "-d", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_pip_refuses_a_file_whose_hash_is_not_listed(tmp_path):
    """The format render() writes, read by pip in hash mode: the listed file passes, another is refused."""
    import hashlib

    links = tmp_path / "links"
    links.mkdir()
    wheel = _wheel(links / "chotprobe-1.0-py3-none-any.whl", "GOOD = True\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    other = "0" * 64  # a second listed hash (another platform's file) does not stand in the way
    req = tmp_path / "requirements.txt"
    req.write_text(R.render({"chotprobe": ("1.0", ["chot"])}, files=lambda n, v: [("a", other), ("b", digest)]))
    assert R.parse(req.read_text())["chotprobe"]["hashes"] == [other, digest]
    r = _pip_download(req, links, tmp_path / "out1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "out1" / wheel.name).read_bytes() == wheel.read_bytes()
    # the same name and version, other bytes (a swapped file): refused
    _wheel(wheel, "GOOD = False  # swapped\n")
    r = _pip_download(req, links, tmp_path / "out2")
    assert r.returncode != 0
    assert "DO NOT MATCH THE HASHES" in r.stderr, r.stderr
    assert not (tmp_path / "out2" / wheel.name).exists()


def test_the_setup_script_reads_it_from_the_wheel_it_installs():
    script = (Path(R.__file__).parent / "setup-terminal.sh").read_text()
    assert "--require-hashes" in script and "--no-deps" in script
    assert "provisioning/requirements-terminal.txt" in script
