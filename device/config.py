"""The terminal's configuration: one TOML file per terminal, composed of each part's settings.

On a Pi it lives at /etc/chot/terminal.toml. Each part owns its typed settings (chot/config.py
explains the pattern); this module composes them, one TOML section each:

    [device]    DeviceSettings      (here: who and where the terminal is)
    [scanner]   ScannerSettings     device/scanner/settings.py
    [pins]      PinSettings         device/io/settings.py
    [feedback]  FeedbackSettings    device/io/settings.py
    [policy]    PolicySettings      device/credentials/settings.py
    [outbox]    OutboxSettings      device/uplink/settings.py
    [privacy]   PrivacySettings     device/uplink/settings.py
    [mqtt]      MqttSettings        device/uplink/settings.py

A new key goes into its part's class (one line: type, default, rule, help) and into
docs/configuration.md (`chot terminal check-config --defaults` prints the reference).

`load_terminal_config(path)` validates it and lists every error: every key, then what spans
keys (pin conflicts, pins that do not exist, incomplete TLS); with `world=True` also what the
keys point at on this machine (files that must exist, the outbox folder, key file modes), as the
daemon does at start-up. `chot terminal check-config FILE` runs all of it (`--offline`: not the
machine's files, for a config meant for another terminal).
"""

from dataclasses import dataclass
from typing import Literal

from chot.config import Config, Settings, describe, load, setting, validate, world_problems
from chot.wire import CHECKPOINT_PATTERN, ID_PATTERN
from device.credentials.settings import PolicySettings
from device.io.settings import PIN, FeedbackSettings, PinSettings
from device.scanner.settings import ScannerSettings
from device.uplink.settings import MqttSettings, OutboxSettings, PrivacySettings

DEFAULT_PATH = "/etc/chot/terminal.toml"
__all__ = ["PIN", "SCHEMA", "TerminalConfig", "config_from_dict", "defaults_toml", "load_terminal_config",
           "world_problems"]


@dataclass(frozen=True, kw_only=True)
class DeviceSettings(Settings):
    id: str = setting(pattern=ID_PATTERN, help="device id: the MQTT client id and topic segment")
    checkpoint: str = setting(
        pattern=CHECKPOINT_PATTERN, help="checkpoint id, e.g. 'hk-phuc-tan-gate-1' (letters, digits, _ . : -)"
    )
    direction: Literal["in", "out"] = setting(help="entry or exit of the checkpoint")


@dataclass(frozen=True, kw_only=True)
class TerminalConfig(Config):
    """The whole terminal config: one typed part per section (`cfg.outbox.max_rows`)."""

    device: DeviceSettings
    scanner: ScannerSettings
    pins: PinSettings
    feedback: FeedbackSettings
    policy: PolicySettings
    outbox: OutboxSettings
    privacy: PrivacySettings
    mqtt: MqttSettings


SCHEMA = TerminalConfig  # the schema `chot.config.validate(data, SCHEMA)` takes


def load_terminal_config(path=DEFAULT_PATH, overrides=None, world=False):
    """Read and validate a terminal config; raise `ConfigError` listing every problem.

    `world`: also check the files, folders and key modes the config names on this machine.
    """
    return load(path, TerminalConfig, overrides=overrides, world=world)


def config_from_dict(data, source="<dict>", world=False):
    """Validate a terminal config given as a dict of sections (tests, the demo, provisioning)."""
    return validate(data, TerminalConfig, source=source, world=world)


def defaults_toml():
    """Every key of the terminal config with its default and what it allows, as TOML."""
    return describe(TerminalConfig)
