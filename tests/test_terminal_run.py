"""`chot terminal run` as systemd runs it (READY, WATCHDOG, SIGTERM), and `chot demo` end to end."""

import signal
import socket
import subprocess
import sys
import time

from chot.personal import Opener, fold_name, generate_seal_keys
from chot.wire import validate_event
from device.credentials import keys
from device.credentials.issue_cli import make_test_identities
from device.uplink.outbox import Outbox


def test_run_notifies_systemd_and_stops_cleanly_on_sigterm(tmp_path):
    key = keys.generate("ed25519")
    priv, pub = keys.save_keypair(key, tmp_path / "issuer")
    generate_seal_keys(tmp_path / "collector-keys")
    conf = tmp_path / "terminal.toml"
    conf.write_text(f"""
[device]
id = "gate-9-in"
checkpoint = "cho-hang-da"
direction = "in"
[scanner]
source = "synthetic"
[pins]
factory = "mock"
[policy]
trusted_issuers = ["{pub}"]
[outbox]
path = "{tmp_path / 'outbox.db'}"
[privacy]
seal_public_key = "{tmp_path / 'collector-keys' / 'seal.pub'}"
""")
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000", "PATH": "/usr/bin:/bin"}
    # `chot demo-terminal` is `chot terminal run` with the synthetic crowd plugged in as its camera
    proc = subprocess.Popen([sys.executable, "-m", "chot.cli", "demo-terminal", "--config", str(conf),
                             "--issuer-key", str(priv)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        messages = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert messages[0].startswith("READY=1")
        time.sleep(1.0)  # let it scan a few people
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        messages += [sock.recv(4096).decode()]
        while True:
            try:
                sock.settimeout(0.5)
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        assert "STOPPING=1" in messages
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    err = proc.stderr.read()
    assert "terminal stopped after" in err
    with Outbox(tmp_path / "outbox.db", device_id="gate-9-in") as box:
        events = box.pending(0, 1000)
    assert events, err
    # The people of the synthetic crowd (seed 1: its first batch) are sealed, and never in the log.
    assert all(validate_event(e) == [] for e in events)
    opener = Opener.from_dir(tmp_path / "collector-keys")
    sealed = [e for e in events if e["sealed"]]
    assert sealed and all(e["format"] != "none" for e in sealed)
    crowd = {p["id_number"] for p in make_test_identities(50, seed=1000)}
    assert {opener.open(e["sealed"], e["uuid"]).person_id[3:] for e in sealed[:5]} <= crowd
    for p in make_test_identities(50, seed=1000):
        for value in (p["id_number"], p["name"], fold_name(p["name"]), p["phone"]):
            assert value not in err
    assert "privacy.seal_public_key is not set" not in err


def test_bad_config_exits_non_zero_with_every_problem(tmp_path):
    conf = tmp_path / "terminal.toml"
    conf.write_text('[device]\nid = "x"\n[scanner]\nsource = "webcam"\n')
    res = subprocess.run([sys.executable, "-m", "chot.cli", "terminal", "run", "--config", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "device.checkpoint: missing" in res.stderr and "scanner.source: found 'webcam'" in res.stderr


def test_demo_runs_the_whole_system_and_loses_nothing():
    res = subprocess.run([sys.executable, "-m", "chot.cli", "demo", "--duration", "4", "--no-pins"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "every event reached the collector exactly once" in res.stdout
    assert "[gate-1-in ] seq    1" in res.stdout and "[gate-1-out] seq    1" in res.stdout


def test_demo_with_duration_0_prints_a_login_serves_the_console_and_stops_on_ctrl_c():
    import re
    import threading

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "chot.cli", "demo", "--duration", "0", "--no-pins"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, found, ready = [], {}, threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"\[console\s*\] (http://127\.0\.0\.1:\d+)/\s+user: (\S+)\s+password: (\S+)", line)
            if m:
                found.update(url=m.group(1), user=m.group(2), password=m.group(3))
            if "running until Ctrl-C" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), "".join(lines)[-3000:]
        assert found["user"] == "demo" and len(found["password"]) >= 12
        assert sum(found["password"] in line for line in lines) == 1  # printed once
        with httpx.Client(base_url=found["url"], timeout=30) as c:
            token = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text).group(1)
            r = c.post("/login", data={"name": "demo", "password": found["password"], "login_token": token},
                       headers={"Origin": found["url"]})
            assert r.status_code == 303, r.text
            fleet = c.get("/fleet")
            assert fleet.status_code == 200 and "gate-1-in" in fleet.text and "gate-1-out" in fleet.text
            assert c.get("/traffic").status_code == 200 and c.get("/paper").status_code == 200
        assert proc.poll() is None  # still running: DURATION=0 has no end of its own
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert "Ctrl-C: stopping" in out and "every event reached the collector exactly once" in out
