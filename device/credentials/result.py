"""The structured results of verification and policy, shared by every credential format.

`Verification` says what a QR text is and what was proven about it, step by step; it never
carries an ID number in clear (`subject` is a summary, `subject_key` a hash). `Decision` is
the policy's answer: PASS or FAIL with a reason code from `device.credentials.reasons`.
"""

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Verification:
    """What verification found out about one QR text. Never raises, never holds IDs in clear."""

    text: str | None
    format: str  # "native", "dcc", "shc", "plain", "unknown"
    # step name -> True (passed), False (failed), None (not reached). Order matters for display.
    steps: dict = field(default_factory=dict)
    # The first failure's reason code (see reasons.py), or None when every step passed.
    reason: str | None = None
    # A summary of the subject for the record and the display: no ID number in clear.
    subject: dict = field(default_factory=dict)
    # A stable hash identifying the subject (cooldown, deny list, tracing); None if unknown.
    subject_key: str | None = None
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
