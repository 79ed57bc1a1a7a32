"""The terminal's hashed requirements: every package a terminal installs from PyPI, pinned, with hashes.

`provisioning/requirements-terminal.txt` (package data, so it travels inside the chot wheel) lists
setup.py's pinned runtime requirements (install_requires and the `pi` extra) and everything they
need, each `name==version` with the sha256 of every file pip may fetch for CPython 3.11 on Linux
aarch64 (Raspberry Pi OS 64-bit, bookworm: glibc 2.36) and x86_64: the wheels of both platforms,
and the sdist when a platform has no wheel. setup-terminal.sh installs it with
`pip install --require-hashes -r` and then chot itself with `--no-deps`, so a changed file on PyPI
or on the way is refused.

Left out, because the OS provides them: numpy and pillow (ranges in setup.py: python3-picamera2 is
built against Raspberry Pi OS's python3-numpy and python3-pil, which the venv sees through
--system-site-packages) and RPi.GPIO (a range in setup.py; PyPI has only its sdist for aarch64,
which would need a compiler on the terminal: Raspberry Pi OS ships it, and gpiozero uses lgpio
first, which works on every model).

Regenerate after changing a pin in setup.py (needs the network; versions of the indirect
dependencies are those installed in the running environment, the project's tested set):

    .venv/bin/python -m provisioning.requirements            # writes the file
    .venv/bin/python -m provisioning.requirements --check    # exit 1 when it is out of date
"""

import argparse
import ast
import json
import re
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

PATH = Path(__file__).resolve().parent / "requirements-terminal.txt"
SETUP_PY = Path(__file__).resolve().parent.parent / "setup.py"
FROM_OS = {"numpy": "python3-numpy", "pillow": "python3-pil", "rpi-gpio": "python3-rpi.gpio"}
# Indirect dependencies pinned here rather than at the version installed where the file is made:
# colorzero (gpiozero's) declares setuptools but never imports it, and an old one in a development
# environment (65.5.0 has CVE-2022-40897 and CVE-2024-6345) would otherwise land on every terminal.
OVERRIDES = {"setuptools": "84.2.1"}
PYTHON = (3, 11)
GLIBC = (2, 36)  # Debian bookworm
ARCHES = ("aarch64", "x86_64")
PYPI = "https://pypi.org/pypi/{name}/json"

_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text):
    """{canonical name: {"version", "hashes", "via"}} of a hashed requirements file."""
    out, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        m = _LINE.match(line)
        if m:
            current = out.setdefault(canonical(m.group(1)), {"version": m.group(2), "hashes": [], "via": []})
        elif stripped.startswith("# via ") and current is not None:
            current["via"] = [v.strip() for v in stripped[len("# via "):].split(",")]
        elif not stripped or (stripped.startswith("#") and not line.startswith(" ")):
            current = None
        if current is not None:
            current["hashes"].extend(_HASH.findall(line))
    return out


def setup_requirements(setup_py=SETUP_PY):
    """(install_requires, extras_require["pi"]) as written in setup.py (read, not run)."""
    tree = ast.parse(Path(setup_py).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            kw = {k.arg: k.value for k in node.keywords}
            return ast.literal_eval(kw["install_requires"]), ast.literal_eval(kw["extras_require"])["pi"]
    raise ValueError(f"{setup_py}: no setup() call")


def split(req):
    """('name', '==', 'version') or ('name', None, spec) of a requirement string."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$", req)
    name, spec = m.group(1), m.group(2).strip()
    pin = re.fullmatch(r"==\s*([^\s,;]+)", spec)
    return (canonical(name), "==", pin.group(1)) if pin else (canonical(name), None, spec)


def pinned_runtime():
    """{name: version} of setup.py's pinned runtime requirements (install_requires and the `pi` extra)."""
    base, pi = setup_requirements()
    out = {}
    for req in [*base, *pi]:
        name, op, version = split(req)
        if op == "==":
            out[name] = version
        elif name not in FROM_OS:
            raise ValueError(f"setup.py: {req!r} is neither pinned (==) nor provided by the OS ({', '.join(FROM_OS)})")
    return out


_PROJECTS = {}


def _project(name):
    """PyPI's JSON of a project (its latest release's info and the files of every release)."""
    if name not in _PROJECTS:
        with urllib.request.urlopen(PYPI.format(name=name), timeout=30) as r:
            _PROJECTS[name] = json.load(r)
    return _PROJECTS[name]


def requires(name, version):
    """The requirement strings of `name==version`: installed metadata, or PyPI's when another version is installed."""
    try:
        if metadata.version(name) == version:
            return metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        pass
    info = _project(name)["info"]
    if info["version"] != version:
        raise ValueError(f"{name}=={version} is not installed here and not PyPI's latest: install chot's pins "
                         "in this environment first (pip install -e .[pi] on a Pi)")
    return info.get("requires_dist") or []


def dependencies(name, version, arch):
    """The names `name==version` requires on Linux `arch`, CPython 3.11, no extras."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    major, minor = PYTHON
    env = {**default_environment(), "python_version": f"{major}.{minor}", "python_full_version": f"{major}.{minor}.0",
           "platform_machine": arch, "sys_platform": "linux", "platform_system": "Linux",
           "platform_python_implementation": "CPython", "implementation_name": "cpython", "extra": ""}
    out = []
    for text in requires(name, version):
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.append(canonical(req.name))
    return out


def closure(pins):
    """{name: (version, [required by])}: the pins and, recursively, what they need (at their installed versions)."""
    found = {name: (version, ["chot"]) for name, version in pins.items()}
    todo = list(pins)
    while todo:
        name = todo.pop()
        for arch in ARCHES:
            for dep in dependencies(name, found[name][0], arch):
                if dep in FROM_OS:
                    continue
                if dep not in found:
                    try:
                        found[dep] = (OVERRIDES.get(dep) or metadata.version(dep), [])
                    except metadata.PackageNotFoundError:
                        raise ValueError(f"{dep} (needed by {name}) is not installed here: install chot's pins "
                                         "in this environment first (pip install -e .)") from None
                    todo.append(dep)
                if name not in found[dep][1] and "chot" not in found[dep][1]:
                    found[dep][1].append(name)
    return found


def _platform_tags(arch):
    from packaging import tags

    platforms = [f"manylinux_{GLIBC[0]}_{m}_{arch}" for m in range(GLIBC[1], 4, -1)]
    platforms += [f"manylinux2014_{arch}", f"linux_{arch}"]
    interp = "cp{}{}".format(*PYTHON)
    return set(tags.cpython_tags(PYTHON, abis=[interp, "abi3", "none"], platforms=platforms)) | set(
        tags.compatible_tags(PYTHON, interp, platforms))


def files_for(name, version):
    """[(filename, sha256)] of the files pip may fetch for `name==version` on each platform of ARCHES."""
    from packaging.utils import parse_wheel_filename

    release = {"urls": [f for f in _project(name)["releases"].get(version, []) if not f.get("yanked")]}
    chosen = {}
    for arch in ARCHES:
        wanted = _platform_tags(arch)
        wheels = [f for f in release["urls"] if f["packagetype"] == "bdist_wheel"
                  and parse_wheel_filename(f["filename"])[3] & wanted]
        picked = wheels or [f for f in release["urls"] if f["packagetype"] == "sdist"]
        if not picked:
            raise ValueError(f"{name}=={version}: PyPI has neither a wheel for CPython 3.11 on {arch} nor an sdist")
        for f in picked:
            chosen[f["filename"]] = f["digests"]["sha256"]
    return sorted(chosen.items())


def render(found, files=None):
    """The file's text for {name: (version, [required by])}; `files(name, version)` gives [(filename, sha256)]."""
    files = files or files_for
    lines = [
        "# Every Python package a chot terminal installs from PyPI, pinned, with the sha256 of each file pip may",
        "# fetch for CPython 3.11 on Linux aarch64 (Raspberry Pi OS 64-bit, bookworm) and x86_64.",
        "# setup-terminal.sh: pip install --require-hashes -r requirements-terminal.txt, then chot --no-deps.",
        "# Made by `python -m provisioning.requirements` from setup.py's pins: do not edit by hand.",
        "# From the OS instead (--system-site-packages): "
        + ", ".join(f"{n} ({p})" for n, p in sorted(FROM_OS.items())) + ".",
    ]
    for name in sorted(found):
        version, via = found[name]
        hashes = files(name, version)
        lines.append(f"{name}=={version} \\")
        lines.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "")
                     for i, (_f, h) in enumerate(hashes))
        lines.append(f"    # via {', '.join(sorted(via))}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m provisioning.requirements", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = p.parse_args(argv)
    text = render(closure(pinned_runtime()))
    if args.check:
        if PATH.read_text(encoding="utf-8") != text:
            print(f"{PATH} is out of date: run python -m provisioning.requirements", file=sys.stderr)
            return 1
        print(f"{PATH} is up to date")
        return 0
    PATH.write_text(text, encoding="utf-8")
    print(f"wrote {PATH} ({len(parse(text))} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
