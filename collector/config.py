"""The collector's configuration schema: one TOML file, checked up front.

On a server it lives at /etc/chot/collector.toml. `load_collector_config(path)` validates
it at start-up and lists every problem at once (including the checks that span keys, such
as `mqtt.receive_maximum >= collector.batch_size`); `chot collector check-config FILE` runs
the same check and `chot collector check-config --defaults` prints every key.
"""

import tomllib
from pathlib import Path

from chot.config import Field, describe, load
from chot.errors import ConfigError

DEFAULT_PATH = "/etc/chot/collector.toml"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_DB = r"(sqlite:///.+|sqlite://:memory:|postgres(ql)?://.+)"

SCHEMA = {
    "collector": {
        "id": Field("str", "main", pattern=_ID, help="this collector's id (client id, manual events' device id)"),
        "database": Field(
            "str",
            "sqlite:////var/lib/chot/collector.db",
            pattern=_DB,
            help="sqlite:///relative.db, sqlite:////absolute/path.db or postgresql://user@host:5432/dbname",
        ),
        "batch_size": Field("int", 500, min=1, max=10000, help="events stored per transaction at most"),
        "batch_max_wait_ms": Field(
            "int", 200, min=1, max=60000, help="a batch is stored after this long even when not full"
        ),
        "signing_key": Field(
            "path", None, optional=True, help="Ed25519 private key (PEM, 0600) signing config and lists"
        ),
        "gap_report_s": Field(
            "float", 300.0, min=0.0, max=30 * 86400.0, help="a gap in a device's seq open this long is reported"
        ),
        "sqlite_synchronous": Field(
            "str", "FULL", choices=("FULL", "NORMAL"), help="SQLite synchronous mode (FULL survives power loss)"
        ),
        "key_dir": Field(
            "path",
            "/etc/chot/collector-keys",
            help="folder of the personal-data keys: seal-*.key (0600, all kept), seal.pub, index.key, data.key",
        ),
        "retention_days": Field(
            "float",
            28.0,
            min=1.0,
            max=3650.0,
            help="events older than this are purged (14-day tracing window plus margin for late uploads)",
        ),
        "purge_interval_s": Field(
            "float", 3600.0, min=0.1, max=7 * 86400.0, help="how often the running collector purges old events"
        ),
        "future_skew_s": Field(
            "float", 600.0, min=0.0, max=7 * 86400.0,
            help="an event dated more than this after its arrival is stored flagged `future`",
        ),
        "qos0_queue_max": Field(
            "int", 1000, min=0, max=1_000_000,
            help="QoS 0 messages queued for the worker at most; more are dropped and counted (no flow control)",
        ),
        "queue_max_mb": Field(
            "float", 256.0, min=1.0, max=65536.0,
            help="payload bytes queued for the worker at most (MiB); beyond, QoS 0 is dropped, QoS 1 acked and"
            " dropped (its terminal sends it again)",
        ),
        "reject_log_interval_s": Field(
            "float", 60.0, min=1.0, max=86400.0,
            help="rejections are logged once per device and reason, then summed up in one line this often",
        ),
    },
    "mqtt": {
        "host": Field("str", "localhost", help="broker host"),
        "port": Field("int", 1883, min=1, max=65535, help="broker port (8883 for TLS)"),
        "tls": Field("bool", False, help="connect with TLS"),
        "ca": Field("path", None, optional=True, help="CA certificate of the broker (PEM)"),
        "cert": Field("path", None, optional=True, help="the collector's client certificate (PEM)"),
        "key": Field("path", None, optional=True, help="the collector's client key (PEM, 0600)"),
        "username": Field("str", None, optional=True, help="username, when not using a client certificate"),
        "password_file": Field("path", None, optional=True, help="file holding the password (0600)"),
        "client_id": Field(
            "str", None, optional=True, pattern=r"[A-Za-z0-9_.-]{1,128}", help="default: chot-collector-<id>"
        ),
        "shared_group": Field(
            "str", "collectors", pattern=r"[A-Za-z0-9_-]{1,64}", help="shared subscription group ($share/<group>)"
        ),
        "receive_maximum": Field(
            "int", 1000, min=1, max=65535, help="QoS 1 messages in flight to the collector (>= batch_size)"
        ),
        "keepalive_s": Field("int", 30, min=5, max=3600),
        "session_expiry_s": Field(
            "int", 0, min=0,
            help="MQTT 5 session expiry; 0 (clean start, no session): a dead collector strands no share of the"
            " shared subscription and terminals resend what is not acked; > 0 only for a collector alone",
        ),
        "reconnect_min_s": Field("float", 1.0, min=0.1, max=60.0),
        "reconnect_max_s": Field("float", 60.0, min=1.0, max=3600.0),
    },
    "http": {
        "enabled": Field("bool", True, help="serve the JSON API and the dashboard"),
        "host": Field("str", "127.0.0.1", help="listen address (keep 127.0.0.1 behind a reverse proxy)"),
        "port": Field("int", 8080, min=0, max=65535, help="listen port (0: any free port)"),
    },
}


def _cross_problems(data):
    """Problems that span keys, computed from the raw TOML data (best effort)."""
    problems = []
    col = data.get("collector", {}) if isinstance(data.get("collector"), dict) else {}
    mq = data.get("mqtt", {}) if isinstance(data.get("mqtt"), dict) else {}
    batch = col.get("batch_size", SCHEMA["collector"]["batch_size"].default)
    recv = mq.get("receive_maximum", SCHEMA["mqtt"]["receive_maximum"].default)
    if isinstance(batch, int) and isinstance(recv, int) and not isinstance(recv, bool) and recv < batch:
        problems.append(
            f"mqtt.receive_maximum: found {recv!r}; allowed: at least collector.batch_size ({batch}),"
            " or a batch never fills"
        )
    if mq.get("tls") is True and bool(mq.get("cert")) != bool(mq.get("key")):
        problems.append("mqtt.cert / mqtt.key: give both (a client certificate needs its key) or neither")
    if mq.get("password_file") and not mq.get("username"):
        problems.append("mqtt.username: missing; allowed: a string, required when mqtt.password_file is set")
    lo = mq.get("reconnect_min_s", 1.0)
    hi = mq.get("reconnect_max_s", 60.0)
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
        problems.append(f"mqtt.reconnect_min_s: found {lo!r}; allowed: at most mqtt.reconnect_max_s ({hi!r})")
    return problems


def load_collector_config(path=DEFAULT_PATH, overrides=None):
    """Read and validate a collector config; raise `ConfigError` listing every problem."""
    problems = []
    cfg = None
    try:
        cfg = load(path, SCHEMA, overrides=overrides)
    except ConfigError as exc:
        problems = list(exc.problems)
        if not Path(path).is_file():
            raise
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = None
    if isinstance(data, dict):
        for section, values in (overrides or {}).items():
            data.setdefault(section, {}).update(values)
        problems += _cross_problems(data)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def config_from_dict(data):
    """Validate a config given as a dict (tests, the demo); raise `ConfigError` listing every problem."""
    from chot.config import validate

    problems = []
    cfg = None
    try:
        cfg = validate(data, SCHEMA, source="<dict>")
    except ConfigError as exc:
        problems = list(exc.problems)
    problems += _cross_problems(data)
    if problems:
        raise ConfigError("<dict>", problems)
    return cfg


def client_id(cfg):
    """The MQTT client id: stable, so that the broker keeps the session across restarts."""
    return cfg.mqtt.client_id or f"chot-collector-{cfg.collector.id}"


def defaults_toml():
    """Every key of the collector config with its default and what it allows, as TOML."""
    return describe(SCHEMA)
