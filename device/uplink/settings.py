"""The `[outbox]`, `[privacy]` and `[mqtt]` settings (a part of the terminal config)."""

from dataclasses import dataclass
from typing import Literal

from chot.config import (
    FilePath,
    Settings,
    files_problems,
    setting,
    tls_problems,
    tls_world_problems,
    writable_folder_problem,
)


@dataclass(frozen=True, kw_only=True)
class OutboxSettings(Settings):
    path: FilePath = setting("/var/lib/chot/outbox.db", help="the outbox database (SQLite, WAL)")
    max_rows: int = setting(1_000_000, min=1, help="cap on events kept; at the cap the terminal fails closed")
    max_bytes: int = setting(
        512 * 1024 * 1024, min=256 * 1024,
        help="cap on the outbox's disk use in bytes: database pages, WAL and its index (-shm) counted; "
        "at most the free space of its disk",
    )
    retention_days: float = setting(
        3.0, min=0.0, max=3650.0,
        help="delivered events recorded longer ago than this are deleted (days; the collector keeps them for "
        "tracing)",
    )
    synchronous: Literal["FULL", "NORMAL"] = setting(
        "FULL", help="SQLite synchronous mode (FULL survives power loss)"
    )

    def world_problems(self, name):
        problem = writable_folder_problem(f"{name}.path", self.path)
        return [problem] if problem else []


@dataclass(frozen=True, kw_only=True)
class PrivacySettings(Settings):
    seal_public_key: FilePath | None = setting(
        None,
        help="the collector's sealing public key (its seal.pub; provisioning installs "
        "/etc/chot/collector-seal.pub): each event's personal part is sealed to it. "
        "Unset: events carry no personal part",
    )
    seal_rotate_events: int = setting(
        1000, min=1, max=1_000_000, help="a new ephemeral sealing key after this many events"
    )
    seal_rotate_s: float = setting(
        600.0, min=1.0, max=86400.0, help="a new ephemeral sealing key after this many seconds"
    )

    def world_problems(self, name):
        return files_problems([(f"{name}.seal_public_key", self.seal_public_key, False, False)])


@dataclass(frozen=True, kw_only=True)
class MqttSettings(Settings):
    enabled: bool = setting(False, help="publish events to the collector")
    host: str = setting("localhost", help="broker host")
    port: int = setting(1883, min=1, max=65535, help="broker port (8883 for TLS)")
    tls: bool = setting(False, help="connect with TLS")
    ca: FilePath | None = setting(None, help="CA certificate of the broker (PEM)")
    cert: FilePath | None = setting(None, help="the device's client certificate (PEM)")
    key: FilePath | None = setting(None, help="the device's private key (PEM, 0600)")
    username: str | None = setting(None, help="username, when not using a client certificate")
    password_file: FilePath | None = setting(None, help="file holding the password (0600)")
    keepalive_s: int = setting(30, min=5, max=3600)
    session_expiry_s: int = setting(7 * 86400, min=0, help="MQTT 5 session expiry")
    inflight: int = setting(100, min=1, max=1000, help="events in flight at once")
    batch: int = setting(100, min=1, max=1000, help="events per message while draining a backlog")
    ack_timeout_s: float = setting(30.0, min=1.0, max=3600.0, help="resend what the collector has not acked")
    status_interval_s: float = setting(60.0, min=1.0, max=3600.0, help="retained status refresh")
    down_alarm_min: float = setting(10.0, min=0.1, max=1440.0, help="status LED fault after the uplink is down")
    collector_public_key: FilePath | None = setting(
        None, help="the collector's public key (PEM): config and lists must verify"
    )
    reconnect_min_s: float = setting(1.0, min=0.1, max=60.0)
    reconnect_max_s: float = setting(60.0, min=1.0, max=3600.0)

    def problems(self, name):
        out = tls_problems(name, self)
        if self.reconnect_min_s > self.reconnect_max_s:
            out.append(f"{name}.reconnect_min_s: found {self.reconnect_min_s!r}; allowed: at most "
                       f"{name}.reconnect_max_s ({self.reconnect_max_s!r})")
        return out

    def world_problems(self, name):
        if not self.enabled:
            return []
        return tls_world_problems(name, self) + files_problems(
            [(f"{name}.collector_public_key", self.collector_public_key, False, False)])
