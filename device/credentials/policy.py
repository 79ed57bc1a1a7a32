"""The pass/fail policy: a `Verification` in, a `Decision` (PASS/FAIL + reason code) out.

Rules come from the `[policy]` section of the terminal config (device/config.py), in order:

1. plain texts (an ID, a link) fail `unsigned` unless `accept_plain` (or "plain" is in
   `accept_formats`); an accepted plain text passes: nobody signed it, so it names nobody for
   sure and never consults the deny list's persons (nor costs an Argon2 hash);
2. a failed verification fails with its reason (`bad_signature`, `unknown_issuer`, `expired`...);
3. a format not in `accept_formats` fails `format_not_accepted`;
4. the deny list (denylist.py), only for a credential whose signature verified: a revoked
   credential id fails `revoked`, a denied person `denylisted` (one Argon2id, cached);
5. native declarations older than `max_age_h` (0: no limit) fail `expired`, then the health
   answers: `symptoms_declared`, `contact_declared`, `travel_declared` per `fail_on_*`;
6. DCC and SHC: `device.credentials.dcc.rules(v, cfg, at)` / `shc.rules(v, cfg, at)` return a
   reason code or None (`cfg` is the policy namespace with every key of `PolicySettings`).

With `clock_behind` (the terminal's clock reads before its time floor, device/timefloor.py) every
check that compares with the time fails closed, reason `clock_behind`: a signed credential that
verified (or failed only on its dates: `expired`, `not_yet_valid`) cannot be judged, since its
issue, expiry, age, test and recovery dates all need the time. Failures that do not depend on
the time keep their reason (a bad signature, an unknown issuer, the deny list); an accepted plain
text and the guard's manual pass involve no time and are unchanged.

Otherwise PASS, reason `ok`. `Checker` bundles trust, verification and policy for the daemon
and `chot scan`: `Checker.from_config(cfg.policy).check(text, at) -> (Verification, Decision)`.
`from_config` also points the DCC schema check at `policy.dcc_schema_dir` when it is set (for
the whole process: the schemas are loaded once).
"""

import importlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from chot.config import rules
from chot.errors import CredentialError
from chot.wire import DecisionCode, Reason
from device.credentials.denylist import DenyList
from device.credentials.result import Decision
from device.credentials.settings import PolicySettings
from device.credentials.trust import TrustStore
from device.credentials.verify import verify_text

log = logging.getLogger(__name__)

PASS, FAIL = DecisionCode.PASS, DecisionCode.FAIL
_HOOKED = ("dcc", "shc")
# verification failures that come from comparing dates with the clock
TIME_REASONS = frozenset({Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.RECOVERY_EXPIRED, Reason.TEST_EXPIRED})


def policy_namespace(policy_cfg=None):
    """Every key of `PolicySettings`, from a config section, a dict or None (defaults)."""
    if policy_cfg is None:
        given = {}
    elif isinstance(policy_cfg, dict):
        given = dict(policy_cfg)
    else:
        given = dict(vars(policy_cfg))
    values = {}
    for key, field in rules(PolicySettings).items():
        default = field.default
        values[key] = given.get(key, list(default) if isinstance(default, list | tuple) else default)
    for key in given.keys() - values.keys():
        values[key] = given[key]  # keys added to the schema later, or by the DCC/SHC rules
    return SimpleNamespace(**values)


def _utc(at):
    if at is None:
        return datetime.now(UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class Policy:
    """Decides PASS or FAIL for a verified (or not) credential. Pure and thread-safe."""

    def __init__(self, policy_cfg=None, denylist=None):
        self.cfg = policy_namespace(policy_cfg)
        self.denylist = denylist if denylist is not None else DenyList()
        self._rules = {}
        for name in _HOOKED:
            try:
                mod = importlib.import_module(f"device.credentials.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"device.credentials.{name}":
                    raise
                continue
            if callable(getattr(mod, "rules", None)):
                self._rules[name] = mod.rules

    @staticmethod
    def manual():
        """The guard's manual pass (a person checked on paper)."""
        return Decision(PASS, Reason.MANUAL)

    def _plain_accepted(self):
        return bool(self.cfg.accept_plain) or "plain" in self.cfg.accept_formats

    def decide(self, v, at=None, clock_behind=False) -> Decision:
        """PASS or FAIL with a reason for a Verification at instant `at` (default now).

        `clock_behind`: the clock reading `at` is behind the terminal's time floor; every time check
        fails closed with `clock_behind` (see the module doc).
        """
        at = _utc(at)
        cfg = self.cfg
        if v.format == "plain":  # unsigned: never looked up in the deny list
            if not self._plain_accepted():
                return Decision(FAIL, Reason.UNSIGNED)
            return Decision(PASS, Reason.OK)
        if not v.verified:
            if clock_behind and v.reason in TIME_REASONS:
                return Decision(FAIL, Reason.CLOCK_BEHIND)
            return Decision(FAIL, v.reason or Reason.UNREADABLE)
        if v.format not in cfg.accept_formats:
            return Decision(FAIL, Reason.FORMAT_NOT_ACCEPTED)
        denied = self._denied(v)
        if denied:
            return Decision(FAIL, denied)
        if clock_behind:
            return Decision(FAIL, Reason.CLOCK_BEHIND)
        if v.format == "native":
            return self._native(v, at)
        rules = self._rules.get(v.format)
        if rules is None:
            return Decision(FAIL, Reason.FORMAT_NOT_ACCEPTED)
        reason = rules(v, cfg, at)
        return Decision(FAIL, reason) if reason else Decision(PASS, Reason.OK)

    def _denied(self, v):
        """`revoked`, `denylisted` or None for a verified credential (the only place the Argon2 hash runs)."""
        if v.credential_id and self.denylist.is_revoked(v.credential_id):
            return Reason.REVOKED
        if v.person_id and self.denylist.is_denied_person(v.person_id):
            return Reason.DENYLISTED
        return None

    def _native(self, v, at):
        cfg = self.cfg
        if cfg.max_age_h and v.issued_at is not None and at - v.issued_at > timedelta(hours=cfg.max_age_h):
            return Decision(FAIL, Reason.EXPIRED)
        c = v.claims
        if cfg.fail_on_symptoms and c.get("symptoms"):
            return Decision(FAIL, Reason.SYMPTOMS_DECLARED)
        if cfg.fail_on_contact and c.get("contact"):
            return Decision(FAIL, Reason.CONTACT_DECLARED)
        if cfg.fail_on_travel and c.get("travel"):
            return Decision(FAIL, Reason.TRAVEL_DECLARED)
        return Decision(PASS, Reason.OK)


def use_dcc_schemas(path):
    """Validate DCCs against the ehn-dcc-schema releases under `path`; CredentialError if it holds none."""
    from device.credentials import dcc

    path = Path(path)
    try:
        exists = path.is_dir()
    except OSError as exc:
        raise CredentialError(f"policy.dcc_schema_dir {path}: not readable ({exc.strerror}): run as the "
                              "service user, or fix the folder's permissions") from None
    if not exists:
        raise CredentialError(
            f"policy.dcc_schema_dir {path}: no such folder; install the ehn-dcc-schema releases there "
            "(chot provision device --dcc-schema DIR) or remove the key"
        )
    if not dcc.schema_releases(path):
        raise CredentialError(
            f"policy.dcc_schema_dir {path}: no schema release in it; it must hold one folder per version, "
            "e.g. 1.3.2/DCC.combined-schema.json, as ehn-dcc-schema publishes them"
        )
    if dcc.schema_dir() != str(path):
        dcc.set_schema_dir(path)
        log.info("DCC schemas from %s", path)


class Checker:
    """Trust + verification + policy: what the daemon and `chot scan` call for each QR text."""

    def __init__(self, trust=None, policy=None):
        self.trust = trust if trust is not None else TrustStore()
        self.policy = policy if policy is not None else Policy()

    @classmethod
    def from_config(cls, policy_cfg=None, extra_trust=()):
        """Load trusted issuers (+ `extra_trust` paths), SHC CRLs, the deny list and the DCC schemas.

        CredentialError if any is unusable.
        """
        cfg = policy_namespace(policy_cfg)
        if cfg.dcc_schema_dir:
            use_dcc_schemas(cfg.dcc_schema_dir)
        trust = TrustStore.load([*cfg.trusted_issuers, *extra_trust, *cfg.shc_crl])
        denylist = DenyList.load(cfg.denylist) if cfg.denylist else DenyList()
        return cls(trust, Policy(cfg, denylist))

    def check(self, text, at=None, clock_behind=False):
        """(Verification, Decision) for one QR text at instant `at` (default now). Never raises on bad input.

        `clock_behind`: `at` reads before the terminal's time floor; time checks fail `clock_behind`.
        """
        at = _utc(at)
        v = verify_text(text, self.trust, at, skew_s=self.policy.cfg.clock_skew_s)
        try:
            d = self.policy.decide(v, at, clock_behind=clock_behind)
        except Exception as exc:  # a rule's bug must not stop the terminal
            log.error("policy failed unexpectedly (%s); FAIL unreadable", type(exc).__name__)
            d = Decision(FAIL, Reason.UNREADABLE)
        return v, d
