"""The systemd units: `systemd-analyze verify` passes on both, and they say what the design asks.

`verify` needs the ExecStart binary to exist, and /opt/chot/venv/bin/chot exists only on an
installed terminal or collector. The test therefore verifies a temporary copy of each unit in
which only the ExecStart path is rewritten to an executable that exists (a small script in the
test's temp dir); every other line is verified as shipped. `systemd-analyze security
--offline=true` gives the exposure score of the same copy (lower is better: 0 to 10).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import need

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
CHOT = "/opt/chot/venv/bin/chot"


def parse(path):
    """The unit as {section: {key: [values]}} (a key may repeat)."""
    out, section = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def copy_for_verify(name, tmp_path):
    exe = tmp_path / "bin" / "chot"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = (UNITS / name).read_text()
    assert CHOT in text
    unit = tmp_path / name
    unit.write_text(text.replace(CHOT, str(exe)))
    return unit


def analyze():
    exe = shutil.which("systemd-analyze")
    need(exe, "systemd-analyze (Debian package systemd)")
    return exe


@pytest.mark.parametrize("name", ["chot-terminal.service", "chot-collector.service"])
def test_systemd_analyze_verify_passes(name, tmp_path):
    unit = copy_for_verify(name, tmp_path)
    r = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert r.returncode == 0, r.stderr
    assert "Unknown key" not in r.stderr and "Unknown section" not in r.stderr, r.stderr


@pytest.mark.parametrize("name,limit", [("chot-terminal.service", 2.5), ("chot-collector.service", 2.0)])
def test_security_exposure(name, limit, tmp_path):
    unit = copy_for_verify(name, tmp_path)
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= limit, r.stdout


def test_terminal_unit_has_what_the_design_asks():
    u = parse(UNITS / "chot-terminal.service")
    s = u["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"] and s["Restart"] == ["always"]
    assert s["User"] == ["chot"] and set(s["SupplementaryGroups"][0].split()) == {"gpio", "video"}
    assert s["StateDirectory"] == ["chot"] and s["ConfigurationDirectory"] == ["chot"]
    assert s["WorkingDirectory"] == ["/var/lib/chot"]  # writable: lgpio's FIFO
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"] and s["NoNewPrivileges"] == ["yes"]
    assert "PrivateDevices" not in s  # the camera and the GPIO chip are devices
    assert s["ExecStart"] == [f"{CHOT} terminal run --config /etc/chot/terminal.toml"]
    assert "network-online.target" not in " ".join(sum(u["Unit"].values(), []))  # works offline
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_collector_unit_is_stricter():
    s = parse(UNITS / "chot-collector.service")["Service"]
    assert s["PrivateDevices"] == ["yes"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["User"] == ["chot-collector"] and s["StateDirectory"] == ["chot-collector"]
    assert s["SystemCallFilter"][0] == "@system-service"
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert s["ExecStart"][0].startswith(f"{CHOT} collector run --config ")

