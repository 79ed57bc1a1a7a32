"""Applying verified updates from the collector: deny list, trusted issuers, config.

The MQTT link checks each update's signature (the collector's pinned key) and version
before calling this; here the body is turned into a new `Checker` for the daemon. Bodies:

- `denylist`: the `DenyList.to_dict()` object (salted hashes, version);
- `trust`: `{"items": ["<PEM public key or certificate>", ...]}`, added to the trust files
  of the config (updates add issuers; they never remove the ones configured on the device);
- `config`: `{"policy": {key: value, ...}}`, checked against the terminal's schema.

A body that does not fit raises `CredentialError`/`ConfigError` and changes nothing.
"""

import logging

from chot.config import validate
from chot.errors import CredentialError
from device.config import SCHEMA
from device.credentials.denylist import DenyList
from device.credentials.policy import Checker, Policy
from device.credentials.trust import TrustStore

log = logging.getLogger(__name__)


def apply_update(cfg, checker, kind, body, version):
    """Return the Checker to use after update `kind` (`denylist`, `trust`, `config`)."""
    if not isinstance(body, dict):
        raise CredentialError(f"{kind} update version {version}: body must be an object")
    if kind == "denylist":
        new = DenyList.from_dict(body, source=f"deny list update v{version}")
        checker.policy.denylist.replace(new)
        log.warning("deny list version %s applied (%d entries)", new.version, len(new))
        return checker
    if kind == "trust":
        trust = TrustStore.load(cfg.policy.trusted_issuers)
        items = body.get("items", [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise CredentialError(f"trust update version {version}: items must be a list of PEM texts")
        for i, item in enumerate(items):
            trust.add_bytes(item.encode("utf-8"), f"trust update v{version} item {i}")
        log.warning("trusted issuers version %s applied (%d keys)", version, len(trust))
        return Checker(trust, checker.policy)
    if kind == "config":
        policy = body.get("policy", {})
        data = cfg.as_dict()
        data["policy"] = {**data["policy"], **policy}
        new_cfg = validate(data, SCHEMA, source=f"config update v{version}")
        log.warning("config version %s applied: policy keys %s", version, ", ".join(sorted(policy)) or "none")
        return Checker(checker.trust, Policy(new_cfg.policy, checker.policy.denylist))
    raise CredentialError(f"unknown update kind {kind!r}")
