"""The collector's configuration: one TOML file, typed parts, checked up front.

On a server it lives at /etc/chot/collector.toml. Its parts (chot/config.py explains the pattern):

    [collector]  CollectorSettings   database, batches, keys, retention
    [mqtt]       BrokerSettings      the broker connection
    [http]       HttpSettings        the tracers' console and JSON API
    [forward]    ForwardSettings     forwarding to the national declaration system (collector/forward.py)

A new key goes into its part's class (one line: type, default, rule, help).

`load_collector_config(path)` validates it at start-up and lists every problem at once: every
key, then what spans keys (`mqtt.receive_maximum >= collector.batch_size`, incomplete TLS, a
console open beyond loopback without TLS or a trusted proxy); with `world=True` also the files
and folders it names (the keys, the TLS files, the database folder), as `chot collector run`
does. `chot collector check-config FILE` runs all of it (`--offline`: not this machine's files)
and `chot collector check-config --defaults` prints every key.
"""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chot.config import (
    Config,
    FilePath,
    Settings,
    describe,
    file_problem,
    files_problems,
    load,
    setting,
    tls_problems,
    tls_world_problems,
    validate,
    world_problems,
    writable_folder_problem,
)

DEFAULT_PATH = "/etc/chot/collector.toml"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_DB = r"(sqlite:///.+|sqlite://:memory:|postgres(ql)?://.+)"
__all__ = ["CollectorConfig", "client_id", "config_from_dict", "defaults_toml", "is_loopback",
           "load_collector_config", "world_problems"]


@dataclass(frozen=True, kw_only=True)
class CollectorSettings(Settings):
    id: str = setting("main", pattern=_ID, help="this collector's id (client id, manual events' device id)")
    database: str = setting(
        "sqlite:////var/lib/chot/collector.db",
        pattern=_DB,
        help="sqlite:///relative.db, sqlite:////absolute/path.db or postgresql://user@host:5432/dbname",
    )
    batch_size: int = setting(500, min=1, max=10000, help="events stored per transaction at most")
    batch_max_wait_ms: int = setting(
        200, min=1, max=60000, help="a batch is stored after this long even when not full"
    )
    signing_key: FilePath | None = setting(
        None, help="Ed25519 private key (PEM, 0600) signing config and lists"
    )
    config_ttl_h: float = setting(
        720.0, min=0.1, max=24.0 * 3650,
        help="a signed config expires this many hours after it is issued (terminals refuse it then)",
    )
    denylist_ttl_h: float = setting(
        168.0, min=0.1, max=24.0 * 3650,
        help="a signed deny list expires this many hours after it is issued: publish it again before",
    )
    trust_ttl_h: float = setting(
        168.0, min=0.1, max=24.0 * 3650,
        help="signed trusted issuers expire this many hours after they are issued: publish them again before",
    )
    refresh_lists_h: float = setting(
        24.0, min=0.0, max=24.0 * 3650,
        help="the running collector re-signs and republishes the deny list and trust this long after their issue"
        " (at most half their life; a config at half its life); 0: lists at half their life too",
    )
    gap_report_s: float = setting(
        300.0, min=0.0, max=30 * 86400.0, help="a gap in a device's seq open this long is reported"
    )
    future_skew_s: float = setting(
        600.0, min=0.0, max=7 * 86400.0,
        help="an event dated more than this after its arrival is stored flagged `future`",
    )
    qos1_queue_max: int = setting(
        50000, min=2, max=1_000_000,
        help="QoS 1 messages queued for the worker at most (>= 2 x mqtt.receive_maximum); more are acked, dropped"
        " and counted (the terminal sends them again). Room for brokers that overshoot the receive maximum",
    )
    qos0_queue_max: int = setting(
        1000, min=0, max=1_000_000,
        help="QoS 0 messages queued for the worker at most; more are dropped and counted (no flow control)",
    )
    queue_max_mb: float = setting(
        256.0, min=1.0, max=65536.0,
        help="payload bytes queued for the worker at most (MiB); beyond, QoS 0 is dropped, QoS 1 acked and"
        " dropped (its terminal sends it again)",
    )
    reject_log_interval_s: float = setting(
        60.0, min=1.0, max=86400.0,
        help="rejections are logged once per device and reason, then summed up in one line this often",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = setting(
        "FULL", help="SQLite synchronous mode (FULL survives power loss)"
    )
    key_dir: FilePath = setting(
        "/etc/chot/collector-keys",
        help="folder of the personal-data keys: seal-*.key (0600, all kept), seal.pub, index.key, data.key",
    )
    retention_days: float = setting(
        28.0,
        min=1.0,
        max=3650.0,
        help="events older than this are purged (14-day tracing window plus margin for late uploads)",
    )
    purge_interval_s: float = setting(
        3600.0, min=0.1, max=7 * 86400.0, help="how often the running collector purges old events"
    )

    def world_problems(self, name):
        out = files_problems([(f"{name}.signing_key", self.signing_key, True, False)])
        problem = file_problem(f"{name}.key_dir", self.key_dir, folder=True)
        if problem:
            out.append(problem)
        else:
            kd = Path(self.key_dir)
            for must in ("index.key", "data.key"):
                if not (kd / must).exists():
                    out.append(f"{name}.key_dir: found {self.key_dir!r}; allowed: a folder holding {must} (it is "
                               "missing: chot collector keygen --index --data --key-dir DIR)")
            if not list(kd.glob("seal-*.key")):
                out.append(f"{name}.key_dir: found {self.key_dir!r}; allowed: a folder holding seal-*.key (none "
                           "there: chot collector keygen --seal --key-dir DIR)")
            out += files_problems([(f"{name}.key_dir", str(p), True, False)
                                   for p in sorted(kd.glob("*.key"))])
        if self.database.startswith("sqlite:///") and self.database != "sqlite://:memory:":
            problem = writable_folder_problem(f"{name}.database", self.database[len("sqlite:///"):])
            if problem:
                out.append(problem)
        return out


@dataclass(frozen=True, kw_only=True)
class BrokerSettings(Settings):
    host: str = setting("localhost", help="broker host")
    port: int = setting(1883, min=1, max=65535, help="broker port (8883 for TLS)")
    tls: bool = setting(False, help="connect with TLS")
    ca: FilePath | None = setting(None, help="CA certificate of the broker (PEM)")
    cert: FilePath | None = setting(None, help="the collector's client certificate (PEM)")
    key: FilePath | None = setting(None, help="the collector's client key (PEM, 0600)")
    username: str | None = setting(None, help="username, when not using a client certificate")
    password_file: FilePath | None = setting(None, help="file holding the password (0600)")
    client_id: str | None = setting(None, pattern=r"[A-Za-z0-9_.-]{1,128}", help="default: chot-collector-<id>")
    shared_group: str = setting(
        "collectors", pattern=r"[A-Za-z0-9_-]{1,64}", help="shared subscription group ($share/<group>)"
    )
    receive_maximum: int = setting(
        1000, min=1, max=65535, help="QoS 1 messages in flight to the collector (>= batch_size)"
    )
    keepalive_s: int = setting(30, min=5, max=3600)
    session_expiry_s: int = setting(
        0, min=0,
        help="MQTT 5 session expiry; 0 (clean start, no session): a dead collector strands no share of the"
        " shared subscription and terminals resend what is not acked; > 0 only for a collector alone",
    )
    reconnect_min_s: float = setting(1.0, min=0.1, max=60.0)
    reconnect_max_s: float = setting(60.0, min=1.0, max=3600.0)

    def problems(self, name):
        out = tls_problems(name, self)
        if self.password_file and not self.username:
            out.append(f"{name}.username: missing; allowed: a string, required when {name}.password_file is set")
        if self.reconnect_min_s > self.reconnect_max_s:
            out.append(f"{name}.reconnect_min_s: found {self.reconnect_min_s!r}; allowed: at most "
                       f"{name}.reconnect_max_s ({self.reconnect_max_s!r})")
        return out

    def world_problems(self, name):
        return tls_world_problems(name, self)


def is_loopback(host):
    """True when `host` (a listen address) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or "" / "0.0.0.0" / "::": every interface) may resolve beyond loopback


@dataclass(frozen=True, kw_only=True)
class HttpSettings(Settings):
    enabled: bool = setting(True, help="serve the console and its JSON API (docs/console.md)")
    host: str = setting("127.0.0.1", help="listen address (keep 127.0.0.1 behind a reverse proxy)")
    port: int = setting(8080, min=0, max=65535, help="listen port (0: any free port)")
    tls_cert: FilePath | None = setting(
        None, help="serve HTTPS with this certificate (PEM, its chain after it); needed to listen beyond loopback "
        "without a trusted_proxy"
    )
    tls_key: FilePath | None = setting(None, help="the private key of tls_cert (PEM, 0600)")
    trusted_proxy: str | None = setting(
        None, help="the address of the reverse proxy (TLS, login) in front of the console: only it (and "
        "loopback) may connect, and its X-Forwarded-For names the client in the audit log"
    )
    allowed_hosts: list[str] = setting(
        [], help="Host names the console answers to besides loopback names and http.host (others get 400: "
        "defeats DNS rebinding); the public name behind a proxy, e.g. ['chot.example.vn']"
    )
    timezone: str = setting("Asia/Ho_Chi_Minh", help="the time zone the console shows times in (IANA name)")
    language: Literal["vi", "en"] = setting("vi", help="the console's language when the browser asks for none")
    session_hours: float = setting(12.0, min=0.01, max=24 * 30, help="a login lasts at most this long")
    session_idle_minutes: float = setting(
        30.0, min=0.1, max=24 * 60, help="a login unused this long ends (sign in again)"
    )
    max_body_kib: int = setting(256, min=1, max=64 * 1024, help="request bodies larger than this get 413")
    request_timeout_s: float = setting(
        60.0, min=0.1, max=3600.0, help="a request still running after this long gets 503 (its query is bounded too)"
    )
    threads: int = setting(16, min=1, max=256, help="threads that run the console's queries (a bounded pool)")
    max_connections: int = setting(
        1000, min=10, max=100000, help="open connections at most (more get 503); idle ones close after 5 s"
    )

    def problems(self, name):
        out = []
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            out.append(f"{name}.{missing}: missing; allowed: a PEM file, required with {name}."
                       f"{'tls_cert' if missing == 'tls_key' else 'tls_key'} (give both or neither)")
        if self.trusted_proxy is not None:
            try:
                ipaddress.ip_address(self.trusted_proxy)
            except ValueError:
                out.append(f"{name}.trusted_proxy: found {self.trusted_proxy!r}; allowed: an IP address such as "
                           "'10.0.0.5' (the reverse proxy's)")
        if self.enabled and not is_loopback(self.host) and not (self.tls_cert and self.tls_key) \
                and not self.trusted_proxy:
            out.append(f"{name}.host: found {self.host!r}; allowed: a loopback address (127.0.0.1, ::1) unless "
                       f"{name}.tls_cert and {name}.tls_key or {name}.trusted_proxy are set: the console answers "
                       "tracing questions about people and must not be served in clear to a network")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except (ValueError, KeyError, OSError):
            out.append(f"{name}.timezone: found {self.timezone!r}; allowed: an IANA time zone such as "
                       "'Asia/Ho_Chi_Minh' or 'UTC'")
        for h in self.allowed_hosts:
            if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,253}", h):
                out.append(f"{name}.allowed_hosts: found {h!r}; allowed: a host name or address without port or "
                           "scheme, e.g. 'chot.example.vn'")
        return out

    def world_problems(self, name):
        if not self.enabled:
            return []
        return files_problems([(f"{name}.tls_cert", self.tls_cert, False, False),
                               (f"{name}.tls_key", self.tls_key, True, False)])


# what a forward.mapping value may name: the event's clear fields (FORWARD_CLEAR_FIELDS) or a field of the
# person's decrypted part (id_number, name, phone, dob, address, ward ...: what the credential carried)
FORWARD_CLEAR_FIELDS = ("key", "device_id", "seq", "uuid", "checkpoint", "direction", "time", "time_utc", "decision",
                        "reason", "verified", "source", "format", "clock_flag")
DEFAULT_FORWARD_MAPPING = {
    "id_number": "id_number", "name": "name", "phone": "phone", "checkpoint": "checkpoint",
    "direction": "direction", "time": "time", "decision": "decision", "verified": "verified", "source": "source",
}


@dataclass(frozen=True, kw_only=True)
class ForwardSettings(Settings):
    enabled: bool = setting(False, help="forward stored events to the national declaration system (docs/collector.md)")
    url: str | None = setting(None, pattern=r"https?://[^\s]+", help="the national system's endpoint: one POST per"
                              " event (https, or http to a loopback address)")
    auth: Literal["bearer", "basic", "none"] = setting(
        "bearer", help="bearer: token_file holds the token; basic: token_file holds user:password")
    token_file: FilePath | None = setting(None, help="the credentials' file (0600, first line); never logged")
    mapping: dict = setting(DEFAULT_FORWARD_MAPPING, help="the body's fields: national field name = our field"
                            f" ({', '.join(FORWARD_CLEAR_FIELDS)}, or a personal field: id_number, name, phone, dob,"
                            " address, ward ...)")
    key_field: str = setting("idempotency_key", pattern=r"[A-Za-z_][A-Za-z0-9_.-]{0,63}",
                             help="the body field holding the event's idempotency key (also the Idempotency-Key"
                             " header): <device_id>:<seq>")
    timezone: str = setting("UTC", help="the zone of `time` (IANA name; ISO 8601 with offset); time_utc is UTC")
    case: str = setting("national-forwarding", pattern=r"\S.{0,199}",
                        help="the standing case id of the forwarder's personal reads in the audit log")
    decisions: list[str] = setting(["PASS", "FAIL"], help="forward the events of these decisions only")
    sources: list[str] = setting([], help="forward the events of these sources only (camera, manual, paper:"
                                 " staff-entered declarations ...); empty: every source")
    backfill: bool = setting(True, help="when forwarding is first set up, queue the events stored before too")
    batch_size: int = setting(100, min=1, max=5000, help="events read, decrypted and audited together at most")
    concurrency: int = setting(4, min=1, max=64, help="requests in flight at once (each event is one POST; more"
                               " lanes hide the round trip to a distant endpoint)")
    rate_per_s: float = setting(10.0, min=0.01, max=10000.0, help="requests per second at most (a token bucket)")
    timeout_s: float = setting(10.0, min=0.1, max=300.0, help="one request's time limit (connect, send, answer)")
    max_response_kib: int = setting(64, min=1, max=65536, help="answer bytes read at most (the rest is dropped)")
    backoff_min_s: float = setting(1.0, min=0.01, max=3600.0, help="first wait after a failure (doubled each time,"
                                   " with jitter)")
    backoff_max_s: float = setting(300.0, min=0.01, max=86400.0, help="longest wait after failures (and Retry-After"
                                   " honoured up to it)")
    park_after: int = setting(0, min=0, max=1_000_000, help="park an event in the dead letter after this many 5xx"
                              " answers to it (one event the receiver always fails on stops the queue otherwise);"
                              " 0: never, retried until accepted")
    idle_s: float = setting(2.0, min=0.01, max=3600.0, help="how often an empty queue is looked at again")
    lease_s: float = setting(60.0, min=1.0, max=3600.0, help="one collector sends at a time: a sender that stopped"
                             " without letting go is replaced after this long (at least 3 x timeout_s)")

    def problems(self, name):
        out = []
        if self.enabled and not self.url:
            out.append(f"{name}.url: missing; allowed: the national system's https:// URL, required when"
                       f" {name}.enabled")
        if self.url:
            from urllib.parse import urlparse

            u = urlparse(self.url)
            if u.username or u.password:
                out.append(f"{name}.url: found a URL with credentials; allowed: a URL without user:password@ (put"
                           f" them in {name}.token_file)")
            elif u.scheme == "http" and not is_loopback(u.hostname or ""):
                out.append(f"{name}.url: found {self.url!r}; allowed: an https:// URL (http only to a loopback"
                           " address): the events carry personal data and credentials")
        if self.enabled and self.auth != "none" and not self.token_file:
            out.append(f"{name}.token_file: missing; allowed: a 0600 file, required with {name}.auth ="
                       f" {self.auth!r}")
        for k, v in self.mapping.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", str(k)) or not isinstance(v, str) \
                    or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", v):
                out.append(f"{name}.mapping: found {k!r} = {v!r}; allowed: national_field = \"our_field\" (letters,"
                           f" digits, _), our fields: {', '.join(FORWARD_CLEAR_FIELDS)} or a personal field")
        if self.key_field in self.mapping:
            out.append(f"{name}.key_field: found {self.key_field!r}; allowed: a name not in {name}.mapping")
        if self.backoff_min_s > self.backoff_max_s:
            out.append(f"{name}.backoff_min_s: found {self.backoff_min_s!r}; allowed: at most {name}.backoff_max_s"
                       f" ({self.backoff_max_s!r})")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except (ValueError, KeyError, OSError):
            out.append(f"{name}.timezone: found {self.timezone!r}; allowed: an IANA time zone such as "
                       "'Asia/Ho_Chi_Minh' or 'UTC'")
        return out

    def world_problems(self, name):
        if not self.enabled or self.auth == "none":
            return []
        return files_problems([(f"{name}.token_file", self.token_file, True, False)])


@dataclass(frozen=True, kw_only=True)
class CollectorConfig(Config):
    """The whole collector config: one typed part per section (`cfg.collector.batch_size`)."""

    collector: CollectorSettings
    mqtt: BrokerSettings
    http: HttpSettings
    forward: ForwardSettings

    def problems(self):
        out = []
        if self.mqtt.receive_maximum < self.collector.batch_size:
            out.append(f"mqtt.receive_maximum: found {self.mqtt.receive_maximum!r}; allowed: at least "
                       f"collector.batch_size ({self.collector.batch_size}), or a batch never fills")
        if self.collector.qos1_queue_max < 2 * self.mqtt.receive_maximum:
            out.append(f"collector.qos1_queue_max: found {self.collector.qos1_queue_max!r}; allowed: at least twice "
                       f"mqtt.receive_maximum ({2 * self.mqtt.receive_maximum}), or a full window is dropped")
        return out


SCHEMA = CollectorConfig  # the schema `chot.config.validate(data, SCHEMA)` takes


def load_collector_config(path=DEFAULT_PATH, overrides=None, world=False):
    """Read and validate a collector config; raise `ConfigError` listing every problem.

    `world`: also check the keys, TLS files and database folder it names on this machine.
    """
    return load(path, CollectorConfig, overrides=overrides, world=world)


def config_from_dict(data, world=False):
    """Validate a config given as a dict (tests, the demo); raise `ConfigError` listing every problem."""
    return validate(data, CollectorConfig, source="<dict>", world=world)


def client_id(cfg):
    """The MQTT client id: stable, so that the broker keeps the session across restarts."""
    return cfg.mqtt.client_id or f"chot-collector-{cfg.collector.id}"


def defaults_toml():
    """Every key of the collector config with its default and what it allows, as TOML."""
    return describe(CollectorConfig)
