"""The structured results of verification and policy, shared by every credential format.

`Verification` says what a QR text is and what was proven about it, step by step. Its personal
fields (`person`, `person_id`, `credential_id`, `text`) exist only in memory: the daemon seals
them to the collector (chot/personal.py) and nothing else may log, print or store them; they are
left out of `repr`. `Decision` is the policy's answer: PASS or FAIL with a reason code.
"""

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Verification:
    """What verification found out about one QR text. Never raises, never holds IDs in clear."""

    text: str | None = field(repr=False)
    format: str  # "native", "dcc", "shc", "plain", "unknown"
    # step name -> True (passed), False (failed), None (not reached). Order matters for display.
    steps: dict = field(default_factory=dict)
    # The first failure's reason code (see reasons.py), or None when every step passed.
    reason: str | None = None
    # The person's fields as the credential gives them (keys of chot.personal.PERSON_FIELDS).
    person: dict = field(default_factory=dict, repr=False)
    # The person's normalised id (chot.personal.person_id_for_id / _for_name_dob), None if unknown.
    person_id: str | None = field(default=None, repr=False)
    # The credential's own random id (native declaration id, DCC ci, SHC rid): revocation.
    credential_id: str | None = field(default=None, repr=False)
    # What the credential is, not who: declaration, vaccination, test, recovery, id_text, text...
    kind: str | None = None
    # Format-specific facts the policy needs (health answers, vaccination, test results ...).
    claims: dict = field(default_factory=dict)
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    not_before: datetime | None = None
    issuer: str | None = None
    detail: str | None = None  # a human-readable note about the failure (no personal data)

    @property
    def verified(self):
        """True when every step that was run passed and none failed."""
        return self.reason is None and all(v is not False for v in self.steps.values())

    def fail(self, step, reason, detail=None):
        """Mark `step` failed with `reason` (the first failure wins) and return self."""
        self.steps[step] = False
        if self.reason is None:
            self.reason = reason
            self.detail = detail
        return self


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one credential."""

    decision: str  # "PASS" or "FAIL"
    reason: str  # "ok" on PASS, otherwise a reason code

    @property
    def passed(self):
        return self.decision == "PASS"
