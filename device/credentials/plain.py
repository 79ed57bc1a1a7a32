"""Plain QR texts with no signature: an ID number, a link to a declaration web site, any text.

They prove nothing, so verification always ends with reason `unsigned`; the policy decides
whether they pass (`policy.accept_plain`, default false) and never looks them up in the deny
list's persons (a claim nobody signed names nobody for sure). `kind` says what the text is:

- `id_text`: an ID number (CMND 9 digits, CCCD 12 digits; spaces, dots and dashes ignored).
  `person` is {"id_number", "kind"} and `person_id` is chot.personal.person_id_for_id, so the
  collector can show the claim beside the person's verified visits (as an unverified claim);
- `url`: a link (`https://...`); `text`: anything else. `person` is empty, `person_id` None.

Nothing is derived from the text itself (no hash of it): it stays in `Verification.text`, in
memory only.
"""

import re

from chot import personal
from device.credentials.bounds import MAX_TEXT
from device.credentials.result import Verification

ID_RE = re.compile(r"[0-9]{9}|[0-9]{12}")
STEPS = ("decode", "signature", "issuer", "time")
KIND_ID, KIND_URL, KIND_TEXT = "id_text", "url", "text"


def classify(text):
    """'id_text', 'url' or 'text' for a printable text."""
    if ID_RE.fullmatch(re.sub(r"[\s.\-]", "", text)):
        return KIND_ID
    if re.match(r"(?i)https?://", text.strip()):
        return KIND_URL
    return KIND_TEXT


def verify(text: str) -> Verification:
    """A Verification of format `plain`, reason `unsigned` (decode passed; nothing else provable).

    A text longer than bounds.MAX_TEXT characters fails `unreadable` before it is looked at."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        v = Verification(text=None, format="plain", steps=dict.fromkeys(STEPS))
        return v.fail("decode", "unreadable", f"not text, or longer than {MAX_TEXT} characters")
    kind = classify(text)
    v = Verification(text=text, format="plain", steps=dict.fromkeys(STEPS))
    v.steps["decode"] = True
    v.kind = kind
    if kind == KIND_ID:
        id_number = personal.normalise_id_number(re.sub(r"[\s.\-]", "", text))
        v.person = {"id_number": id_number, "kind": KIND_ID}
        v.person_id = personal.person_id_for_id(id_number)
    v.fail("signature", "unsigned", "a plain text carries no signature")
    return v
