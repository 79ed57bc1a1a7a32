"""The pass/fail policy: a `Verification` in, a `Decision` (PASS/FAIL + reason code) out.

Rules come from the `[policy]` section of the terminal config (device/config.py), in order;
what a format gets is its registry entry's `accept(cfg)` (device/credentials/formats.py):

1. plain texts (an ID, a link) fail `unsigned` unless `accept_plain` (or "plain" is in
   `accept_formats`); an accepted plain text passes: nobody signed it, so it names nobody for
   sure and never consults the deny list's persons (nor costs an Argon2 hash);
2. identity claims (a chip ID card's QR, a PC-Covid personal QR) whose fields are wrong fail
   with their reason (`bad_id_number`, `bad_date`, `malformed`); a well-formed one gets
   `policy.accept_cccd` / `accept_pccovid`: "see_guard" (default: FAIL `see_guard`, the distinct
   "see the guard" signal; the guard's button then records a confirmation), "pass" (PASS `ok`)
   or "fail" (FAIL `format_not_accepted`). Like plain texts they never consult the deny list;
3. a failed verification fails with its reason (`bad_signature`, `unknown_issuer`, `expired`...);
4. a signed format not in `accept_formats` fails `format_not_accepted`;
5. the deny list (denylist.py), only for a credential whose signature verified: a revoked
   credential id fails `revoked`, a denied person `denylisted` (one Argon2id, cached);
6. the format's own `rules(v, cfg, at)`: native declarations older than `max_age_h` (0: no
   limit) fail `expired`, then the health answers `symptoms_declared`, `contact_declared`,
   `travel_declared` per `fail_on_*`; DCC and SHC their vaccination, test and recovery rules.

With `clock_behind` (the terminal's clock reads before its time floor, device/timefloor.py) every
check that compares with the time fails closed, reason `clock_behind`: a signed credential that
verified (or failed only on its dates: `expired`, `not_yet_valid`) cannot be judged, since its
issue, expiry, age, test and recovery dates all need the time. Failures that do not depend on
the time keep their reason (a bad signature, an unknown issuer, the deny list); an accepted plain
text and the guard's manual pass involve no time and are unchanged.

Otherwise PASS, reason `ok`. `Checker` bundles trust, verification and policy for the daemon
and `chot scan`: `Checker.from_config(cfg.policy).check(text, at) -> (Verification, Decision)`.
`from_config` also lets each format read its settings (`configure`: the DCC schema and value set
checks point at `policy.dcc_schema_dir` / `policy.dcc_valueset_dir` when set, for the whole process)
and trust material
(`trust_sources`: SHC CRLs).
"""

import logging
from datetime import UTC, datetime
from types import SimpleNamespace

from chot.config import rules
from chot.wire import DecisionCode, Reason
from device.credentials import formats
from device.credentials.denylist import DenyList
from device.credentials.formats import use_dcc_schemas  # noqa: F401  (its home before the registry)
from device.credentials.result import Decision
from device.credentials.settings import PolicySettings
from device.credentials.trust import TrustStore
from device.credentials.verify import verify_text

log = logging.getLogger(__name__)

PASS, FAIL = DecisionCode.PASS, DecisionCode.FAIL
# verification failures that come from comparing dates with the clock
TIME_REASONS = frozenset({Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.RECOVERY_EXPIRED, Reason.TEST_EXPIRED,
                          Reason.DSC_EXPIRED, Reason.DSC_NOT_YET_VALID})


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

    @staticmethod
    def manual():
        """The guard's manual pass (a person checked on paper)."""
        return Decision(PASS, Reason.MANUAL)

    @staticmethod
    def guard_confirmed():
        """The guard's confirmation of a "see the guard" event (recorded as its own event)."""
        return Decision(PASS, Reason.GUARD_CONFIRMED)

    def decide(self, v, at=None, clock_behind=False) -> Decision:
        """PASS or FAIL with a reason for a Verification at instant `at` (default now).

        `clock_behind`: the clock reading `at` is behind the terminal's time floor; every time check
        fails closed with `clock_behind` (see the module doc).
        """
        at = _utc(at)
        cfg = self.cfg
        fmt = formats.by_name(v.format)
        if fmt is not None and fmt.kind == formats.PLAIN:  # unsigned: never looked up in the deny list
            if fmt.accept(cfg) != formats.ACCEPT_PASS:
                return Decision(FAIL, Reason.UNSIGNED)
            return Decision(PASS, Reason.OK)
        if fmt is not None and fmt.kind == formats.CLAIM:  # an identity claim: never the deny list
            if v.steps.get("fields") is not True:
                return Decision(FAIL, v.reason or Reason.UNREADABLE)
            mode = fmt.accept(cfg)
            if mode == formats.ACCEPT_PASS:
                return Decision(PASS, Reason.OK)
            if mode == formats.ACCEPT_GUARD:
                return Decision(FAIL, Reason.SEE_GUARD)
            return Decision(FAIL, Reason.FORMAT_NOT_ACCEPTED)
        if not v.verified:
            if clock_behind and v.reason in TIME_REASONS:
                return Decision(FAIL, Reason.CLOCK_BEHIND)
            return Decision(FAIL, v.reason or Reason.UNREADABLE)
        if fmt is None or fmt.accept(cfg) != formats.ACCEPT_PASS:
            return Decision(FAIL, Reason.FORMAT_NOT_ACCEPTED)
        denied = self._denied(v)
        if denied:
            return Decision(FAIL, denied)
        if clock_behind:
            return Decision(FAIL, Reason.CLOCK_BEHIND)
        reason = fmt.rules(v, cfg, at)
        return Decision(FAIL, reason) if reason else Decision(PASS, Reason.OK)

    def _denied(self, v):
        """`revoked`, `denylisted` or None for a verified credential (the only place the Argon2 hash runs)."""
        if v.credential_id and self.denylist.is_revoked(v.credential_id):
            return Reason.REVOKED
        if v.person_id and self.denylist.is_denied_person(v.person_id):
            return Reason.DENYLISTED
        return None


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
        formats.configure(cfg)
        trust = TrustStore.load([*cfg.trusted_issuers, *extra_trust, *formats.trust_sources(cfg)])
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
