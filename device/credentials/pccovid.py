"""The PC-Covid app's personal QR code (v1.1): an identity claim.

The text, `|`-separated:

    <ID number, masked>|<NAME>|<birth date, masked>|<declaration type>|<QID>|<extra>

- ID number: digits (or passport letters) with some replaced by `*` (e.g. `********1234`);
- name: upper case, no diacritics (`NGUYEN VAN AN`);
- birth date: YYYY-MM-DD with digits masked by `*` (e.g. `****-**-15`, `1990-**-**`);
- declaration type: `0` declared by the person, `1` declared on someone's behalf;
- QID: the code's id in the PC-Covid system (letters, digits, `-`, `_`);
- extra: optional, ignored (never recorded). Extra spaces around fields are tolerated; the
  `extra` field may be absent (five fields).

Checked: the field count (5 or 6), the ID's characters (digits, letters, `*`, 6-20 of them), the
name in upper case without diacritics, the birth date's shape and, where it is not masked, that
it can be a date (month 01-12, day 01-31, a whole date real and not after `at`), the type 0/1,
the QID's characters. A failure gives reason `bad_id_number`, `bad_date` or `malformed` with a
`detail` (no personal data).

Not checked (cannot be, offline): the code carries no signature this terminal can verify, so
nothing says the PC-Covid system issued it, that it is current, or that it is the holder's. It
is an identity claim (`steps.signature` False, reason `unsigned`); `policy.accept_pccovid`
decides what it gets, by default `see_guard`.

Joining: the masked ID and birth date cannot name a person, so they are never a person id.
`person_id` is `pcq:<QID>`: the same PC-Covid code seen at several checkpoints is one claim for
tracing (a tracer asks for `pcq:<QID>`), but it is not joined with ID cards or declarations.
Pure logic; `verify` never raises.
"""

import re
import unicodedata
from datetime import UTC, date, datetime, timedelta

from chot import personal
from device.credentials.bounds import MAX_TEXT
from device.credentials.claims import ClaimError, verify_claim

NAME = "pccovid"
STEPS = ("decode", "fields", "signature")
KIND = "pccovid"
MAX_FIELD = 200
_ID = re.compile(r"[0-9A-Z*]{6,20}")
_NAME = re.compile(r"[A-Z]+( [A-Z]+)*")
_DOB = re.compile(r"([0-9*]{4})-([0-9*]{2})-([0-9*]{2})")
_QID = re.compile(r"[A-Za-z0-9_-]{4,64}")
_SPACES = re.compile(r"\s+")


class CodeError(ClaimError):
    """A field of the code is wrong: `reason` is the reason code, the message says what."""


def sniff(text):
    """True when `text` is shaped like a PC-Covid personal QR: 5 or 6 `|`-separated fields whose
    fourth is a lone 0/1 (the declaration type), or whose first is a masked ID (has a `*`)."""
    if not isinstance(text, str) or len(text) > MAX_TEXT or not 4 <= text.count("|") <= 5:
        return False
    f = [x.strip() for x in text.strip().split("|")]
    return f[3] in ("0", "1") or ("*" in f[0] and _DOB.fullmatch(f[2]) is not None)


def _masked_date(field, at):
    m = _DOB.fullmatch(field)
    if not m:
        raise CodeError("bad_date", "birth date: not YYYY-MM-DD (digits or *)")
    y, mo, d = m.groups()
    if "*" not in mo and not 1 <= int(mo) <= 12:
        raise CodeError("bad_date", "birth date: month not 01-12")
    if "*" not in d and not 1 <= int(d) <= 31:
        raise CodeError("bad_date", "birth date: day not 01-31")
    if "*" not in y and int(y) < 1900:
        raise CodeError("bad_date", "birth date: before 1900")
    if "*" not in field:
        try:
            born = date(int(y), int(mo), int(d))
        except ValueError:
            raise CodeError("bad_date", "birth date: not a real date") from None
        if born > (at or datetime.now(UTC)).astimezone(UTC).date() + timedelta(days=1):
            raise CodeError("bad_date", "birth date: in the future")
    return field


def parse(text, at=None):
    """The code's fields as a dict (id_number and dob as written, masked; name; qid; on_behalf);
    CodeError (reason and what is wrong) otherwise."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise CodeError("unreadable", f"not text, or longer than {MAX_TEXT} characters")
    fields = [_SPACES.sub(" ", f).strip() for f in unicodedata.normalize("NFC", text).strip().split("|")]
    if not 5 <= len(fields) <= 6:
        raise CodeError("malformed", f"{len(fields)} fields separated by '|': a PC-Covid personal QR has 6 (or 5)")
    if any(len(f) > MAX_FIELD for f in fields):
        raise CodeError("malformed", f"a field longer than {MAX_FIELD} characters")
    id_number, name, dob, kind, qid = fields[:5]
    if not _ID.fullmatch(id_number):
        raise CodeError("bad_id_number", "ID number: not 6-20 digits, capital letters or * (masked)")
    if not _NAME.fullmatch(name):
        raise CodeError("malformed", "name: not upper case letters without diacritics")
    dob = _masked_date(dob, at)
    if kind not in ("0", "1"):
        raise CodeError("malformed", "declaration type: neither 0 (self-declared) nor 1 (on someone's behalf)")
    if not _QID.fullmatch(qid):
        raise CodeError("malformed", "QID: not 4-64 letters, digits, '-' or '_'")
    return {"id_number": id_number, "name": name, "dob": dob, "kind": KIND, "qid": qid,
            "on_behalf": kind == "1"}


def verify(text, trust=None, at=None, skew_s=0.0):
    """A Verification of format `pccovid`: fields checked, signature False (`unsigned`). Never raises."""
    def read(t):
        f = parse(t, at)
        claims = {"on_behalf": f.pop("on_behalf")}
        return f, personal.person_id_for_qid(f["qid"]), claims

    return verify_claim(text, fmt=NAME, kind=KIND, steps=STEPS, read=read, label="PC-Covid QR",
                        unsigned="a PC-Covid personal QR carries no signature this terminal can verify")
