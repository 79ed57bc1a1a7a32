"""Plain QR texts with no signature: an ID number, a link to a declaration web site, any text.

They prove nothing, so verification always ends with reason `unsigned`; the policy decides
whether they pass (`policy.accept_plain`, default false). An ID number (CMND 9 digits, CCCD
12 digits) gets the same `subject_key` as the person's signed declaration, so the deny list
and tracing work across formats; any other text is keyed by a hash of the text itself.
"""

import hashlib
import re
from urllib.parse import urlsplit

from device.credentials.result import Verification
from device.credentials.subject import subject_key_for_id

ID_RE = re.compile(r"[0-9]{9}|[0-9]{12}")
KNOWN_SITES = ("tokhaiyte.vn", "covid19.gov.vn", "bluezone.gov.vn", "pc-covid.vn", "kbyt.khambenh.gov.vn")
STEPS = ("decode", "signature", "issuer", "time")


def classify(text):
    """('id_number' | 'url' | 'text', extra summary fields) for a printable text."""
    compact = re.sub(r"[\s.\-]", "", text)
    if ID_RE.fullmatch(compact):
        return "id_number", {"id_digits": len(compact)}
    if re.match(r"(?i)https?://", text):
        try:
            host = (urlsplit(text.strip()).hostname or "").lower()
        except ValueError:
            host = ""
        site = next((s for s in KNOWN_SITES if host == s or host.endswith("." + s)), None)
        return "url", {"host": host[:100] or None, "known_site": site}
    return "text", {"length": len(text)}


def verify(text: str) -> Verification:
    """A Verification of format `plain`, reason `unsigned` (decode passed; nothing else provable)."""
    kind, extra = classify(text)
    v = Verification(text=text, format="plain", steps=dict.fromkeys(STEPS))
    v.steps["decode"] = True
    v.subject = {"kind": kind, **extra}
    if kind == "id_number":
        v.subject_key = subject_key_for_id(text)
    else:
        v.subject_key = hashlib.sha256(("chot-text-v1|" + text.strip()).encode("utf-8")).hexdigest()
    v.fail("signature", "unsigned", "a plain text carries no signature")
    return v
