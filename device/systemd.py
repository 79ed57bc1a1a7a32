"""systemd notifications (READY, WATCHDOG, STATUS, STOPPING) without a library.

`Notifier()` reads NOTIFY_SOCKET and WATCHDOG_USEC from the environment; without them every
call is a no-op, so the daemon runs the same way by hand and under systemd.
"""

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; `watchdog()` is cheap to call from every frame."""

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else None
        self._last_ping = 0.0
        self._sock = None
        if self.address:
            addr = self.address
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            self._addr = addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self):
        return self._sock is not None

    def notify(self, message):
        if not self._sock:
            return False
        try:
            self._sock.sendto(message.encode(), self._addr)
            return True
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status="running"):
        return self.notify(f"READY=1\nSTATUS={status}")

    def status(self, text):
        return self.notify(f"STATUS={text}")

    def stopping(self):
        return self.notify("STOPPING=1")

    def watchdog(self, now=None):
        """Ping the watchdog at most every half WatchdogSec; call it from the frame loop."""
        if not self._sock or self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            return self.notify("WATCHDOG=1")
        return False

    def close(self):
        if self._sock:
            self._sock.close()
            self._sock = None
