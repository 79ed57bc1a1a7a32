"""The one MQTT client factory: every paho-mqtt client of Chot is built here.

The terminal's link, the collector's subscriber and its publishers (`chot collector set-config`,
`publish-denylist`, `publish-trust`), the terminal's self-test, the benches and the fault harness
describe the connection they want as one typed `MqttSettings` and get a paho-mqtt 2.x MQTT 5
client from `build_client(settings)`; `connect(client, settings)` / `connect_async(...)` then
connect it with the settings' keepalive, clean start and CONNECT properties (session expiry,
receive maximum). So TLS, login, last will, MQTT 5 properties and reconnect delays are set the
same way everywhere (they had drifted apart: the link defaulted the username to the device id,
the collector and the self-test did not).

    settings = MqttSettings.from_section(cfg.mqtt, client_id=cfg.device.id, default_username=cfg.device.id,
                                         will=Will(topic, payload))
    client = build_client(settings)
    connect_async(client, settings)

`MqttSettings.from_section(section, ...)` reads the keys every `[mqtt]` section shares (host,
port, tls, ca, cert, key, username, password_file, keepalive_s, session_expiry_s,
reconnect_min_s, reconnect_max_s, receive_maximum); a key the section lacks takes the dataclass
default. A problem with the settings or their files raises `MqttSetupError` (a `ChotError`)
naming the config keys to fix (`mqtt.ca`, `mqtt.password_file`, ...); nothing here connects.

On the fleet's broker the client id a client asks for does not count: Mosquitto takes the
certificate's CN as the user name and the user name as the client id (`use_identity_as_username`,
`use_username_as_clientid`; docs/security.md). `client_id` still matters on a broker that does
not force it (the local anonymous broker of the tests, a development broker).
"""

import logging
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from chot.errors import UplinkError

log = logging.getLogger(__name__)


class MqttSetupError(UplinkError):
    """An MQTT client cannot be built from its settings (a TLS file, the password file ...);
    the message names the config keys to fix."""


@dataclass(frozen=True)
class Will:
    """The last will: published by the broker when the connection is lost without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class MqttSettings:
    """How one MQTT client connects. `section` prefixes the key names in error messages."""

    host: str = "localhost"
    port: int = 1883
    client_id: str = ""
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password_file: str | None = None
    # the user name sent when only a password file is given (the link: its device id)
    default_username: str | None = None
    keepalive_s: int = 30
    clean_start: bool = True
    session_expiry_s: int | None = None  # None: no Session Expiry property (MQTT 5 default 0)
    receive_maximum: int | None = None
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    reconnect_on_failure: bool = True
    manual_ack: bool = False
    will: Will | None = None
    max_inflight: int | None = None  # paho's max_inflight_messages (its default is 20)
    max_queued: int | None = None  # paho's max_queued_messages (its default 0 is unbounded)
    connect_timeout_s: float | None = None
    logger: str | None = None  # paho's own log lines go to this logger
    section: str = "mqtt"

    KEYS = ("host", "port", "tls", "ca", "cert", "key", "username", "password_file", "keepalive_s",
            "session_expiry_s", "reconnect_min_s", "reconnect_max_s", "receive_maximum")

    @classmethod
    def from_section(cls, section, *, client_id, name="mqtt", **overrides):
        """Settings from a config section (an object with the `[mqtt]` keys as attributes).

        Keys the section does not have keep the defaults; `overrides` win over the section.
        """
        values = {}
        for key in cls.KEYS:
            if hasattr(section, key):
                values[key] = getattr(section, key)
        values.update(overrides)
        return cls(client_id=client_id, section=name, **values)

    def replace(self, **changes):
        return replace(self, **changes)

    def name_of(self, name):
        """The config key's full name as the technician writes it (`mqtt.ca`)."""
        return f"{self.section}.{name}" if self.section else name

    @property
    def where(self):
        return f"{self.host}:{self.port}"


def read_password(settings):
    """The password of `settings.password_file` (stripped), or None when none is configured."""
    if not settings.password_file:
        return None
    try:
        text = Path(settings.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MqttSetupError(
            f"cannot read {settings.name_of('password_file')} {settings.password_file}: {exc.strerror}; "
            "write the broker password there (mode 0600, readable by the service user)"
        ) from None
    except UnicodeDecodeError:
        raise MqttSetupError(
            f"{settings.name_of('password_file')} {settings.password_file} is not UTF-8 text: write the password "
            "alone on one line"
        ) from None
    if not text:
        raise MqttSetupError(f"{settings.name_of('password_file')} {settings.password_file} is empty: write the "
                             "broker password there")
    return text


def tls_context(settings):
    """The TLS context: the broker checked against `ca` (and its host name), the client's certificate."""
    ca, cert, key = settings.name_of("ca"), settings.name_of("cert"), settings.name_of("key")
    if settings.key and not settings.cert:
        raise MqttSetupError(f"{key} is set but {cert} is not: give the client certificate with its key")
    for name, path in (("ca", settings.ca), ("cert", settings.cert), ("key", settings.key)):
        if path and not Path(path).is_file():
            raise MqttSetupError(
                f"TLS file not found: {path}; check {settings.name_of(name)} (`chot provision` writes the TLS files)"
            )
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca or None)
        if settings.cert:
            ctx.load_cert_chain(settings.cert, settings.key)
    except FileNotFoundError as exc:
        raise MqttSetupError(
            f"TLS file not found: {exc.filename}; check {ca}, {cert} and {key} (`chot provision` writes them)"
        ) from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise MqttSetupError(
            f"cannot use the TLS files ({ca}, {cert}, {key}): {exc}; the certificate and key must be PEM "
            "and belong together, and be readable by the service user"
        ) from None
    return ctx


def _check(settings):
    problems = []
    if not settings.host:
        problems.append(f"{settings.name_of('host')}: empty; give the broker's host name")
    if not 1 <= int(settings.port) <= 65535:
        problems.append(f"{settings.name_of('port')}: found {settings.port!r}; allowed: 1 to 65535")
    if settings.reconnect_min_s > settings.reconnect_max_s:
        problems.append(f"{settings.name_of('reconnect_min_s')}: found {settings.reconnect_min_s!r}; allowed: at most "
                        f"{settings.name_of('reconnect_max_s')} ({settings.reconnect_max_s!r})")
    if problems:
        raise MqttSetupError("MQTT settings: " + "; ".join(problems))


def build_client(settings):
    """A paho-mqtt 2.x MQTT 5 client set up from `settings` (not connected, no callbacks set)."""
    _check(settings)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=settings.reconnect_on_failure,
        manual_ack=settings.manual_ack,
    )
    if settings.logger:
        client.enable_logger(logging.getLogger(settings.logger))
    if settings.tls:
        client.tls_set_context(tls_context(settings))
    username = settings.username or (settings.default_username if settings.password_file else None)
    if username:
        client.username_pw_set(username, read_password(settings))
    elif settings.password_file:
        raise MqttSetupError(f"{settings.name_of('username')}: missing; required when "
                             f"{settings.name_of('password_file')} is set")
    if settings.will is not None:
        w = settings.will
        client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
    client.reconnect_delay_set(min_delay=settings.reconnect_min_s, max_delay=settings.reconnect_max_s)
    if settings.max_inflight is not None:
        client.max_inflight_messages_set(int(settings.max_inflight))
    if settings.max_queued is not None:
        client.max_queued_messages_set(int(settings.max_queued))
    if settings.connect_timeout_s is not None:
        client.connect_timeout = float(settings.connect_timeout_s)
    return client


def connect_properties(settings):
    """The CONNECT properties of `settings`: session expiry and receive maximum (None when neither)."""
    if settings.session_expiry_s is None and settings.receive_maximum is None:
        return None
    props = Properties(PacketTypes.CONNECT)
    if settings.session_expiry_s is not None:
        props.SessionExpiryInterval = int(settings.session_expiry_s)
    if settings.receive_maximum is not None:
        props.ReceiveMaximum = int(settings.receive_maximum)
    return props


def connect_async(client, settings):
    """Connect in the background (with `client.loop_start()`): paho retries until it is reached."""
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s,
                         clean_start=settings.clean_start, properties=connect_properties(settings))


def connect(client, settings):
    """Connect now (raises OSError / ssl.SSLError when the broker cannot be reached)."""
    return client.connect(settings.host, settings.port, keepalive=settings.keepalive_s,
                          clean_start=settings.clean_start, properties=connect_properties(settings))
