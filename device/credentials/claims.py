"""What the unsigned identity-claim formats (CCCD, PC-Covid) share: their field error and one
verification path (decode -> fields -> signature False `unsigned`), so each format only reads
its own fields."""

from device.credentials.bounds import MAX_TEXT
from device.credentials.result import Verification


class ClaimError(ValueError):
    """A field of an identity claim is wrong: `reason` is the reason code, the message says what."""

    def __init__(self, reason, message):
        self.reason = reason
        super().__init__(message)


def verify_claim(text, *, fmt, kind, steps, read, label, unsigned):
    """The Verification of an unsigned identity claim. Never raises on bad input.

    `read(text) -> (person, person_id, claims or None)` raises ClaimError for a bad field; `label`
    names the code in a field's detail; `unsigned` is the detail of the signature step."""
    ok = isinstance(text, str) and len(text) <= MAX_TEXT
    v = Verification(text=text if ok else None, format=fmt, steps=dict.fromkeys(steps))
    v.kind = kind
    if not ok:
        return v.fail("decode", "unreadable", f"not text, or longer than {MAX_TEXT} characters")
    v.steps["decode"] = True
    try:
        person, person_id, claims = read(text)
    except ClaimError as exc:
        return v.fail("fields", exc.reason, f"{label}: {exc}")
    v.steps["fields"] = True
    if claims:
        v.claims = claims
    v.person = person
    v.person_id = person_id
    return v.fail("signature", "unsigned", unsigned)
