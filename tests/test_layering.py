"""Dependencies go one way (README "Layout").

- chot/ (the shared core: wire, personal data, config, the CLI's entry) imports no part;
- device/credentials/ (verification) imports no camera, pins, network or frame files;
- device/scanner/ and device/io/ know nothing of credentials or the uplink;
- collector/ imports nothing of the terminal (device/);
- no production module imports the demo and its simulated world (chotdemo/, the synthetic crowd),
  and the frame sources (frames.py) and the synthetic crowd (synthetic.py) do not import each other.

The import graph is read in a fresh interpreter (sys.modules after importing), and for the demo
also from the source text (an import inside a function counts too).
"""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("chot", "device", "collector", "provisioning")


def imported_by(*modules):
    """The names in sys.modules after importing `modules` in a fresh interpreter."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}:\n    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def under(names, *prefixes):
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def package_modules(package):
    path = ROOT / package.replace(".", "/")
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def test_the_shared_core_imports_no_part():
    names = imported_by("chot", "chot.wire", "chot.personal", "chot.config", "chot.errors", "chot.cli")
    assert under(names, "device", "collector", "provisioning", "chotdemo") == []


def test_the_cli_loads_only_the_part_of_the_command():
    from chot.cli import COMMANDS

    code = ("import sys\nfrom chot.cli import build_parser\nbuild_parser(sys.argv[1:])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    for command, parts in (("collector", {"collector"}), ("provision", {"provisioning"}), ("terminal", {"device"}),
                           ("demo", {"chotdemo"})):
        assert COMMANDS[command][0].split(".")[0] in parts
        res = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
        assert res.returncode == 0, res.stderr
        loaded = set(ast.literal_eval(res.stdout)) & {"device", "collector", "provisioning", "chotdemo"}
        assert loaded == parts, command


def test_credentials_import_no_camera_pins_network_or_frames():
    names = imported_by(*package_modules("device.credentials"))
    assert under(names, "device.scanner", "device.io", "device.uplink", "device.daemon", "device.pipeline",
                 "paho", "gpiozero", "picamera2", "cv2", "zxingcpp", "pyzbar", "collector", "chotdemo") == []


@pytest.mark.parametrize("package", ["device.scanner", "device.io"])
def test_scanner_and_io_know_nothing_of_credentials_or_the_uplink(package):
    modules = [m for m in package_modules(package) if m != "device.scanner.synthetic"]
    names = imported_by(*modules)
    assert under(names, "device.credentials", "device.uplink", "device.daemon", "collector", "chotdemo") == []


def test_the_collector_imports_nothing_of_the_terminal():
    modules = package_modules("collector") + package_modules("collector.web")
    names = imported_by(*modules)
    assert under(names, "device", "chotdemo") == []


def test_frames_and_the_synthetic_crowd_do_not_import_each_other():
    assert under(imported_by("device.scanner.frames"), "device.scanner.synthetic") == []
    assert under(imported_by("device.scanner.synthetic"), "device.scanner.frames") == []


def test_the_daemon_does_not_import_the_demo_or_the_synthetic_crowd():
    names = imported_by("device.daemon", "device.cli", "device.scan_cli", "device.pipeline")
    assert under(names, "chotdemo", "device.scanner.synthetic", "collector", "provisioning") == []


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_no_production_module_imports_the_demo_or_the_synthetic_crowd_even_lazily():
    """chot.cli names the demo's CLI module in its command table: a string, not an import."""
    found = []
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "device/scanner/synthetic.py":
                continue
            for name in _imports(path):
                if under([name], "chotdemo", "device.scanner.synthetic", "device.simulate", "collector.testing"):
                    found.append(f"{path.relative_to(ROOT)}: {name}")
    assert found == []


def test_the_terminal_schema_has_no_test_issuer():
    from chot.config import rules
    from device.scanner.settings import ScannerSettings

    assert "synthetic_issuer_key" not in rules(ScannerSettings)
