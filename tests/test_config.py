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
    good.write_text(GOOD + f'[outbox]\npath = "{tmp_path / "outbox.db"}"\n')
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


# --- issue 11: the config checked as a whole (what spans parts, and the machine) -----------------------

def _check(*args):
    return subprocess.run([sys.executable, "-m", "chot.cli", *args], capture_output=True, text=True)


def test_issue_11_bad_config_lists_every_problem_and_fails(tmp_path):
    """Issue 11: `check-config` said OK for the pass LED and the buzzer on one GPIO, a relay on GPIO99, a missing
    trust file, a missing outbox folder and TLS without a key. Now each is listed, and the exit status is 2."""
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "device.crt").write_text("cert")
    f = tmp_path / "t.toml"
    f.write_text(GOOD + f"""
[pins]
pass_led = "GPIO17"
buzzer = "GPIO17"
relay = "GPIO99"
[policy]
trusted_issuers = ["{tmp_path / 'issuers' / 'ministry.pub'}"]
[outbox]
path = "{tmp_path / 'no-such-folder' / 'outbox.db'}"
[mqtt]
enabled = true
tls = true
ca = "{tmp_path / 'ca.crt'}"
cert = "{tmp_path / 'device.crt'}"
""")
    res = _check("terminal", "check-config", str(f))
    assert res.returncode == 2, res.stdout
    expected = [
        "pins.buzzer: found 'GPIO17'; allowed: a pin no other device uses (pins.pass_led is on GPIO17 too",
        "pins.relay: found 'GPIO99'; allowed: a pin of the Raspberry Pi's 40-pin header",
        f"policy.trusted_issuers[0]: found '{tmp_path / 'issuers' / 'ministry.pub'}'; allowed: an existing file or "
        "folder (it does not exist)",
        f"outbox.path: found '{tmp_path / 'no-such-folder' / 'outbox.db'}'; allowed: a path in an existing folder",
        "mqtt.key: missing; allowed: the client certificate's private key",
    ]
    for text in expected:
        assert text in res.stderr, (text, res.stderr)
    assert "5 problem(s)" in res.stderr, res.stderr
    # --offline (a config for another machine): what the file alone shows is still refused
    off = _check("terminal", "check-config", "--offline", str(f))
    assert off.returncode == 2 and "3 problem(s)" in off.stderr, off.stderr
    assert "trusted_issuers" not in off.stderr and "outbox.path" not in off.stderr
    # the same in code: pure validation, then the world checks, or both at once as the daemon does
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f, world=True)
    assert len(err.value.problems) == 5
    # and the daemon does not start on it
    run = _check("terminal", "run", "--config", str(f))
    assert run.returncode == 2 and "outbox.path" in run.stderr and "pins.relay" in run.stderr


@pytest.mark.parametrize("pins,key,alias", [
    ({"pass_led": "BOARD11", "buzzer": "GPIO17"}, "pins.buzzer", "GPIO17"),   # physical pin 11 is GPIO17
    ({"fail_led": "BCM27", "status_led": "BOARD13"}, "pins.status_led", "BOARD13"),
    ({"buzzer": "22", "relay": "GPIO22"}, "pins.relay", "GPIO22"),             # a bare number is BCM
    ({"relay": "GPIO23", "button": "BOARD16"}, "pins.button", "BOARD16"),      # an input too
    ({"rgb_led": ["GPIO16", "GPIO20", "GPIO21"], "status_led": "BOARD40"}, "pins.status_led", "BOARD40"),
])
def test_pin_aliases_conflict(tmp_path, pins, key, alias):
    f = tmp_path / "t.toml"
    f.write_text(GOOD + "[pins]\n" + "".join(
        f"{k} = {v!r}\n".replace("'", '"') for k, v in pins.items()))
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    (problem,) = err.value.problems
    assert problem.startswith(f"{key}: found '{alias}'") and "a pin no other device uses" in problem, problem


def test_pins_that_are_not_gpios_and_good_layouts(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(GOOD + '[pins]\npass_led = "BOARD6"\nfail_led = "BOARD41"\nbuzzer = "GPIO28"\nrelay = "BOARD1"\n'
                 'rgb_led = ["GPIO1"]\n')
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    assert err.value.problems == [
        "pins.rgb_led: found ['GPIO1']; allowed: three pins [red, green, blue] such as "
        '["GPIO17", "GPIO27", "GPIO22"], or leave it out and use pass_led and fail_led'
    ]
    f.write_text(GOOD + '[pins]\npass_led = "BOARD6"\nfail_led = "BOARD41"\nbuzzer = "GPIO28"\nrelay = "BOARD1"\n')
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 4, text
    assert "pins.pass_led: found 'BOARD6'; allowed: a GPIO pin (BOARD6 is a GND pin of the header)" in text
    assert "pins.fail_led: found 'BOARD41'; allowed: a pin of the Raspberry Pi's 40-pin header" in text
    assert "pins.buzzer: found 'GPIO28'; allowed: a pin of the Raspberry Pi's 40-pin header" in text
    assert "pins.relay: found 'BOARD1'; allowed: a GPIO pin (BOARD1 is a 3V3 pin of the header)" in text
    # an RGB LED replaces pass_led and fail_led (their defaults GPIO17, GPIO27 are then free); distinct pins pass
    f.write_text(GOOD + '[pins]\nrgb_led = ["GPIO17", "GPIO27", "BOARD15"]\nbuzzer = "GPIO6"\nrelay = "BOARD16"\n'
                 'button = "24"\n')
    assert load_terminal_config(f).pins.rgb_led == ["GPIO17", "GPIO27", "BOARD15"]


def test_secret_files_readable_by_others_are_refused(tmp_path):
    for name in ("ca.crt", "device.crt", "device.key", "password"):
        (tmp_path / name).write_text("x")
    (tmp_path / "device.key").chmod(0o644)
    (tmp_path / "password").chmod(0o604)
    f = tmp_path / "t.toml"
    f.write_text(GOOD + f"""
[outbox]
path = "{tmp_path / 'outbox.db'}"
[mqtt]
enabled = true
tls = true
ca = "{tmp_path / 'ca.crt'}"
cert = "{tmp_path / 'device.crt'}"
key = "{tmp_path / 'device.key'}"
password_file = "{tmp_path / 'password'}"
""")
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f, world=True)
    assert err.value.problems == [
        f"mqtt.key: found '{tmp_path / 'device.key'}' with mode 0644; allowed: a secret file others cannot read "
        f"(chmod 600 {tmp_path / 'device.key'})",
        f"mqtt.password_file: found '{tmp_path / 'password'}' with mode 0604; allowed: a secret file others cannot "
        f"read (chmod 600 {tmp_path / 'password'})",
    ]
    (tmp_path / "device.key").chmod(0o600)
    (tmp_path / "password").chmod(0o640)  # the service's group may read it
    assert load_terminal_config(f, world=True).mqtt.key == str(tmp_path / "device.key")


def test_tls_settings_must_be_complete(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(GOOD + '[mqtt]\ntls = true\nkey = "/etc/chot/tls/device.key"\n')
    with pytest.raises(ConfigError) as err:
        load_terminal_config(f)
    assert [p.split(":")[0] for p in err.value.problems] == ["mqtt.ca", "mqtt.cert"]
    f.write_text(GOOD + '[mqtt]\ntls = false\nca = "/etc/chot/tls/ca.crt"\n')
    with pytest.raises(ConfigError, match="mqtt.tls: found false; allowed: true when mqtt.ca"):
        load_terminal_config(f)


def test_the_shipped_and_generated_configs_pass(tmp_path):
    """The good configs still pass: the defaults (offline: /var/lib/chot is not on this machine), a generated
    device config from provisioning, and the demo (it validates its configs with the world checks, see
    chotdemo/cli.py)."""
    from chot.config import validate
    from device.config import SCHEMA, TerminalConfig

    assert SCHEMA is TerminalConfig
    data = {"device": {"id": "gate-1-in", "checkpoint": "cp", "direction": "in"},
            "outbox": {"path": str(tmp_path / "o.db")}, "pins": {"factory": "mock"}}
    cfg = validate(data, SCHEMA, world=True)
    assert isinstance(cfg, TerminalConfig) and cfg.outbox.path == str(tmp_path / "o.db")
    assert cfg.as_dict()["scanner"]["decoder"] == "zxing"
    with pytest.raises(AttributeError):  # frozen: a part cannot be changed behind the checks' back
        cfg.pins.buzzer = "GPIO17"
    assert _check("terminal", "check-config", "--offline", str(_write(tmp_path, GOOD))).returncode == 0
    # the world checks as a function of a validated config (a config written for another machine)
    from device.config import world_problems

    assert world_problems(cfg) == []
    elsewhere = validate({**data, "privacy": {"seal_public_key": "/etc/chot/collector-seal.pub"}}, SCHEMA)
    assert world_problems(elsewhere) == [
        "privacy.seal_public_key: found '/etc/chot/collector-seal.pub'; allowed: an existing file (it does not exist)"
    ]


def _write(tmp_path, text, name="t.toml"):
    f = tmp_path / name
    f.write_text(text)
    return f


# --- the collector ----------------------------------------------------------------------------------------

def test_collector_console_open_beyond_loopback_needs_tls_or_a_proxy(tmp_path):
    """Issue 11: the tracers' console listening on 0.0.0.0 in clear was accepted. It is refused by check-config
    and by `chot collector run`, and accepted with TLS or behind a trusted reverse proxy."""
    from collector.config import load_collector_config

    f = _write(tmp_path, '[http]\nhost = "0.0.0.0"\n', "c.toml")
    res = _check("collector", "check-config", "--offline", str(f))
    assert res.returncode == 2
    assert "http.host: found '0.0.0.0'; allowed: a loopback address (127.0.0.1, ::1) unless http.tls_cert and " \
           "http.tls_key or http.trusted_proxy are set" in res.stderr
    run = _check("collector", "run", "--config", str(f))
    assert run.returncode == 2 and "http.host: found '0.0.0.0'" in run.stderr
    f.write_text('[http]\nhost = "10.0.0.7"\ntls_cert = "/etc/chot/console.crt"\n')
    with pytest.raises(ConfigError) as err:
        load_collector_config(f)
    assert [p.split(":")[0] for p in err.value.problems] == ["http.tls_key", "http.host"]
    f.write_text('[http]\nhost = "10.0.0.7"\ntls_cert = "/etc/chot/console.crt"\ntls_key = "/etc/chot/console.key"\n')
    assert load_collector_config(f).http.tls_key == "/etc/chot/console.key"
    f.write_text('[http]\nhost = "0.0.0.0"\ntrusted_proxy = "10.0.0.5"\n')
    assert load_collector_config(f).http.trusted_proxy == "10.0.0.5"
    f.write_text('[http]\nhost = "0.0.0.0"\ntrusted_proxy = "proxy.example"\n')
    with pytest.raises(ConfigError, match="http.trusted_proxy: found 'proxy.example'; allowed: an IP address"):
        load_collector_config(f)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.53"):
        f.write_text(f'[http]\nhost = "{host}"\n')
        assert load_collector_config(f).http.host == host
    f.write_text('[http]\nenabled = false\nhost = "0.0.0.0"\n')  # not served: nothing to protect
    assert load_collector_config(f).http.enabled is False


def test_collector_console_serves_https_with_its_keys_and_refuses_clear_beyond_loopback(tmp_path):
    import ssl
    import urllib.request

    from chot.errors import CollectorError
    from collector.config import config_from_dict
    from collector.storage import Storage
    from collector.web import ApiServer
    from provisioning.pki import cert_pem, issue_cert, key_pem, make_ca

    ca_key, ca = make_ca("test CA")
    key, cert = issue_cert(ca_key, ca, "console", server_names=["127.0.0.1"], client=False)
    (tmp_path / "ca.crt").write_bytes(cert_pem(ca))
    (tmp_path / "console.crt").write_bytes(cert_pem(cert))
    (tmp_path / "console.key").write_bytes(key_pem(key))
    (tmp_path / "console.key").chmod(0o600)
    cfg = config_from_dict({"collector": {"database": f"sqlite:///{tmp_path / 'c.db'}"},
                            "http": {"port": 0, "tls_cert": str(tmp_path / "console.crt"),
                                     "tls_key": str(tmp_path / "console.key")}})
    with Storage(cfg.collector.database) as st, ApiServer(cfg, st) as api:
        assert api.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with urllib.request.urlopen(api.url + "/login", context=ctx, timeout=10) as resp:
            assert resp.status == 200 and resp.headers["Strict-Transport-Security"]
            assert "; secure" in resp.headers["Set-Cookie"].lower()  # cookies only over TLS
    # behind a reverse proxy: only the proxy and this machine may connect
    proxied = config_from_dict({"collector": {"database": f"sqlite:///{tmp_path / 'c.db'}"},
                                "http": {"port": 0, "trusted_proxy": "10.0.0.5"}})
    with Storage(proxied.collector.database) as st, ApiServer(proxied, st) as api:
        from collector.web.security import may_connect

        assert [may_connect(a, api.config.app.state.web.cfg.http.trusted_proxy)
                for a in ("10.0.0.5", "127.0.0.1", "10.0.0.6")] == [True, True, False]
    # the API server itself refuses a clear listener beyond loopback, whatever called it
    clear = config_from_dict({"collector": {"database": f"sqlite:///{tmp_path / 'c.db'}"}, "http": {"port": 0}})
    with Storage(clear.collector.database) as st, pytest.raises(CollectorError, match="refusing to serve"):
        ApiServer(clear, st, host="0.0.0.0")


def test_collector_check_config_lists_missing_keys_and_files(tmp_path):
    f = _write(tmp_path, f"""
[collector]
database = "sqlite:///{tmp_path / 'no-such-folder' / 'collector.db'}"
signing_key = "{tmp_path / 'collector.key'}"
key_dir = "{tmp_path / 'keys'}"
[mqtt]
tls = true
ca = "{tmp_path / 'ca.crt'}"
cert = "{tmp_path / 'collector.crt'}"
""", "c.toml")
    res = _check("collector", "check-config", str(f))
    assert res.returncode == 2
    for text in (
        f"collector.signing_key: found '{tmp_path / 'collector.key'}'; allowed: an existing file (it does not exist)",
        f"collector.key_dir: found '{tmp_path / 'keys'}'; allowed: an existing folder (it does not exist)",
        "collector.database: found",
        "mqtt.key: missing",
        f"mqtt.ca: found '{tmp_path / 'ca.crt'}'; allowed: an existing file (it does not exist)",
    ):
        assert text in res.stderr, (text, res.stderr)
    # with the keys made and the key added, only the missing TLS files remain (and the check is offline-clean)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "index.key").write_text("x")
    f.write_text(f.read_text().replace('cert = "', f'key = "{tmp_path / "collector.tls.key"}"\ncert = "'))
    res = _check("collector", "check-config", str(f))
    assert "collector.key_dir: found" in res.stderr and "data.key (it is missing" in res.stderr
    assert "seal-*.key (none there" in res.stderr and "mqtt.ca: found" in res.stderr
    assert _check("collector", "check-config", "--offline", str(f)).returncode == 0
