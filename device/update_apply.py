"""Applying verified updates from the collector: deny list, trusted issuers, config.

The MQTT link checks each update's signature (the collector's pinned key) and version
before calling this; here the body is turned into a new `Checker` for the daemon. Bodies:

- `denylist`: the `DenyList.to_dict()` object (salted hashes, version);
- `trust`: `{"format": "chot-trust-v1", "files": [{"name", "pem"} | {"name", "json"}]}` (made by
  `chot collector publish-trust`), added to the trust files of the config (updates add
  issuers; they never remove the ones configured on the device);
- `config`: `{"policy": {key: value, ...}}`, checked against the terminal's schema.

A body that does not fit raises `CredentialError`/`ConfigError` and changes nothing.
"""

import json
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
        files = body.get("files")
        if body.get("format") != "chot-trust-v1" or not isinstance(files, list):
            raise CredentialError(f"trust update version {version}: expected a chot-trust-v1 object with files")
        for i, item in enumerate(files):
            if not isinstance(item, dict) or not ("pem" in item or "json" in item):
                raise CredentialError(f"trust update version {version}: file {i} has neither pem nor json")
            data = item["pem"].encode("utf-8") if "pem" in item else json.dumps(item["json"]).encode("utf-8")
            trust.add_bytes(data, f"trust update v{version} {item.get('name', i)}")
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
