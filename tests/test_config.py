"""The terminal config: defaults, every error listed with key, value and what is allowed."""

import subprocess
import sys

import pytest

from chot.errors import ConfigError
from device.config import load_terminal_config

GOOD = """
[device]
id = "gate-1-in"
checkpoint = "phuc-tan-gate-1"
direction = "in"
"""


def test_minimal_config_gets_defaults(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(GOOD)
    cfg = load_terminal_config(f)
    assert cfg.device.id == "gate-1-in"
    assert cfg.scanner.decoder == "zxing"
    assert cfg.outbox.synchronous == "FULL"
    assert cfg.policy.accept_plain is False


def test_every_error_is_listed(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(
        '[device]\nid = "bad id!"\ndirection = "sideways"\n'
        "[outbox]\nmax_rows = -1\ncolour = 3\n[scanner]\ndecoder = 'zbar'\n[nonsense]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    problems = "\n".join(err.value.problems)
    assert len(err.value.problems) == 7
    assert "device.id: found 'bad id!'" in problems
    assert "device.checkpoint: missing" in problems
    assert "device.direction: found 'sideways'; allowed: one of 'in', 'out'" in problems
    assert "outbox.max_rows: found -1; allowed: an integer >= 1" in problems
    assert "outbox.colour: unknown key" in problems
    assert "scanner.decoder: found 'zbar'; allowed: one of 'zxing', 'pyzbar'" in problems
    assert "[nonsense]: unknown section" in problems


@pytest.mark.parametrize(
    "content,expect",
    [
        ("[device\nid=1", "not valid TOML"),
        (b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_broken_files(tmp_path, content, expect):
    f = tmp_path / "t.toml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    assert expect in str(err.value)


def test_check_config_cli_exit_status(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nid = 3\n")
    ok = subprocess.run([sys.executable, "-m", "chot.cli", "terminal", "check-config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    res = subprocess.run([sys.executable, "-m", "chot.cli", "terminal", "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "device.id: found 3" in res.stderr
    assert "device.checkpoint: missing" in res.stderr
    missing = subprocess.run([sys.executable, "-m", "chot.cli", "terminal", "check-config",
                              str(tmp_path / "nope.toml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_list_choices_are_checked_per_item(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(GOOD + '[policy]\naccept_formats = ["native", "dcc"]\n')
    assert load_terminal_config(f).policy.accept_formats == ["native", "dcc"]
    f.write_text(GOOD + '[policy]\naccept_formats = ["native", "pdf"]\n')
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    assert "policy.accept_formats: found ['native', 'pdf']; allowed: a list, each item one of" in str(err.value)


def test_privacy_section_checkpoint_pattern_and_retention(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(GOOD)
    cfg = load_terminal_config(f)
    assert cfg.privacy.seal_public_key is None  # unset: the terminal warns and records no personal part
    assert (cfg.privacy.seal_rotate_events, cfg.privacy.seal_rotate_s) == (1000, 600.0)
    assert cfg.outbox.retention_days == 3.0  # shorter than the collector's 28
    f.write_text(GOOD + '[privacy]\nseal_public_key = "/etc/chot/collector-seal.pub"\nseal_rotate_events = 50\n')
    cfg = load_terminal_config(f)
    assert (cfg.privacy.seal_public_key, cfg.privacy.seal_rotate_events) == ("/etc/chot/collector-seal.pub", 50)
    # the checkpoint is the wire's safe pattern: no spaces, slashes or wildcards (it goes into events)
    f.write_text(GOOD.replace("phuc-tan-gate-1", "phuc tan/gate #1") + "[privacy]\nseal_rotate_events = 0\n")
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    problems = "\n".join(err.value.problems)
    assert "device.checkpoint: found 'phuc tan/gate #1'" in problems
    assert "privacy.seal_rotate_events: found 0" in problems


def test_a_checkpoint_with_a_nul_is_refused_by_check_config(tmp_path):
    """Issue 10, item 3: `device.checkpoint = "gate\\u0000one"` passed check-config and then lost every
    event on PostgreSQL (which refuses NUL). Ids are now the wire's safe pattern wherever they are set."""
    f = tmp_path / "t.toml"
    f.write_text(GOOD.replace('"phuc-tan-gate-1"', '"gate\\u0000one"'))
    res = subprocess.run([sys.executable, "-m", "chot.cli", "terminal", "check-config", str(f)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stdout
    assert "device.checkpoint: found 'gate\\x00one'" in res.stderr
