"""Applying verified updates from the collector: deny list, trusted issuers, config.

The MQTT link checks each update's signature (the collector's pinned key) and version
before calling this; here the body is turned into a new `Checker` for the daemon. Bodies:

- `denylist`: the deny list v2 object of `chot.personal.make_denylist_body` (hashes only);
- `trust`: `{"format": "chot-trust-v1", "files": [{"name", "pem"} | {"name", "json"}]}` (made by
  `chot collector publish-trust`), added to the trust files of the config (updates add
  issuers; they never remove the ones configured on the device); a JSON file may be a DCC
  revocation list (`publish-trust --dcc-revocations`), read by device.credentials.dcc like any
  trust JSON; with `"dcc_valuesets": [{"name", "json": <an EU value set document>}]`
  (`publish-trust --dcc-valuesets DIR`) the DCC codes are checked against these value sets in
  place of the installed ones of the same id. Each trust update replaces the previous one;
- `config`: `{"policy": {key: value, ...}, "privacy": {"seal_public_key": "<seal.pub text>"}}`,
  both parts optional. The policy keys are checked against the terminal's schema and override
  the configured ones; the sealing key (the collector's current `seal.pub`, as text) replaces
  `privacy.seal_public_key` for new events (`config_seal_key`; the daemon switches its Sealer).
  Each config update replaces the previous one: a part left out goes back to the configured
  value, so the collector sends the current sealing key with every config update.

A body that does not fit raises `CredentialError`/`ConfigError` and changes nothing. Nothing
of an update is personal: the kept-updates file holds these signed bodies as they came.
"""

import json
import logging

from chot.config import validate
from chot.errors import CredentialError
from chot.personal import KeyFileError, parse_public_key
from device.config import SCHEMA
from device.credentials import dcc_valuesets
from device.credentials.denylist import DenyList
from device.credentials.policy import Checker, Policy
from device.credentials.trust import TrustStore

log = logging.getLogger(__name__)

CONFIG_PARTS = ("policy", "privacy")
PRIVACY_UPDATE_KEYS = ("seal_public_key",)


def config_seal_key(body, version):
    """(kid, raw public key) of a config update's `privacy.seal_public_key`, or None when it has none.

    Raises CredentialError when the part is there but is not a sealing public key.
    """
    privacy = body.get("privacy") if isinstance(body, dict) else None
    if privacy is None:
        return None
    if not isinstance(privacy, dict):
        raise CredentialError(f"config update version {version}: privacy must be an object")
    unknown = sorted(set(privacy) - set(PRIVACY_UPDATE_KEYS))
    if unknown:
        raise CredentialError(f"config update version {version}: privacy.{unknown[0]} cannot be set by an "
                              f"update (allowed: {', '.join(PRIVACY_UPDATE_KEYS)})")
    text = privacy.get("seal_public_key")
    if text is None:
        return None
    if not isinstance(text, str):
        raise CredentialError(f"config update version {version}: privacy.seal_public_key must be the text of "
                              "the collector's seal.pub")
    try:
        return parse_public_key(text, f"config update version {version}: privacy.seal_public_key")
    except KeyFileError as exc:
        raise CredentialError(str(exc)) from None


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
        if body.get("dcc_valuesets") is not None:
            trust.dcc_valuesets = dcc_valuesets.from_documents(body["dcc_valuesets"], f"trust update v{version}")
            log.warning("DCC value sets of trust update version %s: %s", version,
                        ", ".join(sorted(trust.dcc_valuesets.codes)))
        log.warning("trusted issuers version %s applied (%d keys)", version, len(trust))
        return Checker(trust, checker.policy)
    if kind == "config":
        unknown = sorted(set(body) - set(CONFIG_PARTS))
        if unknown:
            raise CredentialError(f"config update version {version}: unknown part {unknown[0]!r} "
                                  f"(allowed: {', '.join(CONFIG_PARTS)})")
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            raise CredentialError(f"config update version {version}: policy must be an object")
        seal = config_seal_key(body, version)  # checked before anything changes
        data = cfg.as_dict()
        data["policy"] = {**data["policy"], **policy}
        new_cfg = validate(data, SCHEMA, source=f"config update v{version}")
        log.warning("config version %s applied: policy keys %s%s", version, ", ".join(sorted(policy)) or "none",
                    f"; sealing key {seal[0]}" if seal else "")
        return Checker(checker.trust, Policy(new_cfg.policy, checker.policy.denylist))
    raise CredentialError(f"unknown update kind {kind!r}")
