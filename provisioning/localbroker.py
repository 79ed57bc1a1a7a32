"""A local Mosquitto for development, the demo and the tests: loopback only, no TLS.

`LocalBroker(workdir)` writes its own mosquitto.conf into `workdir` (raised queue and
in-flight limits: Mosquitto's defaults drop QoS 1 messages silently, see DESIGN.md), starts
the broker on a free loopback port, waits until it accepts connections, and can be stopped
(gracefully or with SIGKILL) and restarted on the same port. A fleet's real broker uses the
TLS configuration of `provisioning.broker` instead.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from chot.errors import ProvisioningError

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


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


class LocalBroker:
    """A private Mosquitto broker on a loopback port (the demo, the tests)."""

    # Raised limits: the defaults drop QoS 1 messages silently (see DESIGN.md).
    # `user root` keeps a broker started by root able to read its own temp files (ignored otherwise).
    # A finite max_queued_messages: with 0, Mosquitto 2.0.11 disconnects a client after refusing
    # one of its publishes (PUBACK 135, then "Unspecified error").
    BASE = (
        "user root\n"
        "allow_anonymous true\n"
        "max_queued_messages 10000000\n"
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
        if not Path(MOSQUITTO).exists():
            raise ProvisioningError(
                "mosquitto is not installed: `make demo` / `make test` install it, or run `apt-get install mosquitto`"
            )
        self.write_conf()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if not wait_port(self.port):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            log = self.log_path.read_text() if self.log_path.exists() else ""
            self.stop(kill=True)
            raise ProvisioningError(f"mosquitto did not start on port {self.port}: {err} {log}")
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
