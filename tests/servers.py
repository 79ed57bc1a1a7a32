"""Real servers for the tests: a private Mosquitto on a free loopback port, PostgreSQL by DSN.

`Mosquitto(conf_extra=...)` writes its own mosquitto.conf into a temp dir, starts the broker
on a free port, waits until it accepts connections, and can be stopped (gracefully or with
SIGKILL) and restarted on the same port. Under CI=true a missing service is an error.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PG_DSN = os.environ.get("CHOT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Mosquitto:
    """A private Mosquitto broker for one test."""

    # Raised limits: the defaults drop QoS 1 messages silently (see DESIGN.md).
    BASE = (
        "allow_anonymous true\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 0\n"
        "max_queued_bytes 0\n"
        "max_packet_size 2000000\n"
    )

    def __init__(self, workdir, conf_extra="", persistence=False, port=None, listener_conf=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.conf_extra = conf_extra
        self.listener_conf = listener_conf  # full override of the listener block
        self.proc = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    def write_conf(self):
        listener = self.listener_conf or f"listener {self.port} 127.0.0.1\n"
        conf = self.BASE + listener + self.conf_extra
        if self.persistence:
            conf += f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
        else:
            conf += "persistence false\n"
        conf += f"log_dest file {self.log_path}\nlog_type error\nlog_type warning\nlog_type notice\n"
        self.conf_path.write_text(conf)

    def start(self):
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError(
                "mosquitto is not installed: run `make test` (it installs it) or apt-get install mosquitto"
            )
        self.write_conf()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if not wait_port(self.port):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            log = self.log_path.read_text() if self.log_path.exists() else ""
            self.stop(kill=True)
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {err} {log}")
        return self

    def stop(self, kill=False):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill=False):
        self.stop(kill=kill)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def pg_available(dsn=PG_DSN):
    try:
        import psycopg2

        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except Exception:
        return False
