"""The chip ID card's QR code (CCCD, căn cước công dân; the "Căn cước" card issued from July 2024).

The QR code on a chip ID card holds `|`-separated text, no signature (the chip's signed data
is read over NFC, not from the QR):

    <12-digit ID>|<old 9-digit CMND, may be empty>|<full name>|<birth date DDMMYYYY>|<sex>
        |<permanent address>|<issue date DDMMYYYY>          (one line)

Variants tolerated (docs/credentials.md):

- the old ID empty (`...||...`), or 12 digits (the 2012-2016 twelve-digit CMND);
- six fields: the old-ID field left out (`ID|name|birth|sex|address|issue`), or the issue date
  left out (`ID|old|name|birth|sex|address`), told apart by where the birth date is;
- extra spaces around fields and inside the ID number, runs of spaces inside the name and
  address, dates written DD/MM/YYYY or DD-MM-YYYY, the text NFC- or NFD-encoded;
- the card issued from 2024 ("Căn cước", Law on Identification 2023), whose QR keeps the same
  first seven fields and may carry more after them: up to MAX_FIELDS fields are accepted and
  the ones after the issue date are ignored (never recorded).

Checked: the ID is 12 digits; its first three (the province of birth registration, 001-096)
are in range; its fourth digit (century and sex: 0/1 born 1900-1999 male/female, 2/3 2000-2099,
4/5 2100-2199 ...) agrees with the birth year and, when the sex field is given, with the sex;
its fifth and sixth digits are the last two of the birth year; the dates are real dates, the birth
not after `at`, the issue date not before the birth nor after `at` (one day of slack). A failure
gives reason `bad_id_number`, `bad_date` or `malformed`, and `detail` says what (no personal data).

Not checked (cannot be): that the card is genuine, that the person holding it is its owner, that
it is not expired or revoked. So it is an identity claim: `steps.signature` is False, reason
`unsigned`, never a verified record; the policy (`policy.accept_cccd`) decides what it gets, by
default `see_guard`. `person_id` is `id:<12 digits>` (chot.personal.person_id_for_id), the same
as a native declaration with that ID number, so tracing finds both (verified and unverified
apart). Pure logic; `verify` never raises.
"""

import re
import unicodedata
from datetime import UTC, date, datetime, timedelta

from chot import personal
from device.credentials.bounds import MAX_TEXT
from device.credentials.claims import ClaimError, verify_claim

NAME = "cccd"
STEPS = ("decode", "fields", "signature")
KIND = "id_card"
MIN_FIELDS, MAX_FIELDS = 6, 12
MAX_FIELD = 300  # characters of one field (an address is well under 200)
_ID_SEP = re.compile(r"[\s.]+")
_DATE = re.compile(r"(\d{2})[/\-.]?(\d{2})[/\-.]?(\d{4})")
_SPACES = re.compile(r"\s+")
SEXES = {"NAM": "Nam", "NU": "Nữ", "MALE": "Nam", "FEMALE": "Nữ"}


class CardError(ClaimError):
    """A field of the card is wrong: `reason` is the reason code, the message says what."""


def _fields(text):
    return [_SPACES.sub(" ", f).strip() for f in unicodedata.normalize("NFC", text).strip().split("|")]


def id_digits(field):
    """The ID number of a field with spaces and dots removed (not yet checked)."""
    return _ID_SEP.sub("", field)


def sniff(text):
    """True when `text` is shaped like a chip ID card's QR: at least six `|`-separated fields,
    the first all digits (an ID number, whatever its length) and the fourth not a lone 0/1 digit
    (a PC-Covid code's declaration type)."""
    if not isinstance(text, str) or text.count("|") < MIN_FIELDS - 1 or len(text) > MAX_TEXT:
        return False
    f = text.strip().split("|", 4)
    first = id_digits(f[0])
    return first.isdigit() and first.isascii() and f[3].strip() not in ("0", "1")


def parse_date(field, what):
    """A date from DDMMYYYY (or DD/MM/YYYY, DD-MM-YYYY); CardError bad_date otherwise."""
    m = _DATE.fullmatch(field)
    if not m:
        raise CardError("bad_date", f"{what}: not a date DDMMYYYY")
    try:
        d = date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
    except ValueError:
        raise CardError("bad_date", f"{what}: not a real date") from None
    if d.year < 1900:
        raise CardError("bad_date", f"{what}: before 1900")
    return d


def parse_sex(field):
    """'Nam', 'Nữ' or None (empty); CardError malformed for anything else."""
    if not field:
        return None
    key = personal.fold_name(field)
    if key not in SEXES:
        raise CardError("malformed", "sex: neither Nam nor Nữ")
    return SEXES[key]


def layout(fields):
    """(id, old id, name, birth, sex, address, issue) fields of a card's QR, by its layout."""
    n = len(fields)
    if n < MIN_FIELDS:
        raise CardError("malformed", f"{n} fields separated by '|': a chip ID card's QR has 7 (or 6)")
    if n > MAX_FIELDS:
        raise CardError("malformed", f"{n} fields separated by '|': more than {MAX_FIELDS}")
    if n == 6:
        if _DATE.fullmatch(fields[2]):  # the old-ID field left out
            return fields[0], "", fields[1], fields[2], fields[3], fields[4], fields[5]
        return (*fields[:6], "")  # the issue date left out
    return tuple(fields[:7])  # 7 fields, or the 2024 card's extra fields after the issue date


def check_id(id_number, birth, sex):
    """CardError bad_id_number unless the 12-digit ID agrees with the birth year and sex."""
    if len(id_number) != 12 or not id_number.isdigit() or not id_number.isascii():
        raise CardError("bad_id_number", f"ID number: {len(id_number)} characters, a CCCD number is 12 digits")
    province = int(id_number[:3])
    if not 1 <= province <= 96:
        raise CardError("bad_id_number", f"ID number: province code {id_number[:3]} is not 001-096")
    code = int(id_number[3])
    century = 1900 + 100 * (code // 2)
    if not century <= birth.year < century + 100:
        raise CardError("bad_id_number", f"ID number: century digit {code} means born {century}-{century + 99}, "
                                         "the birth date says otherwise")
    if int(id_number[4:6]) != birth.year % 100:
        raise CardError("bad_id_number", "ID number: digits 5-6 are not the last two digits of the birth year")
    if sex is not None and (code % 2 == 1) != (sex == "Nữ"):
        raise CardError("bad_id_number", f"ID number: digit {code} is for a {'woman' if code % 2 else 'man'}, "
                                         f"the sex field says {'Nữ' if sex == 'Nữ' else 'Nam'}")


def parse(text, at=None):
    """The card's fields as a dict (id_number, old_id_number, name, dob, sex, address, issued);
    CardError (reason and what is wrong) for a text that is not a well-formed card."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise CardError("unreadable", f"not text, or longer than {MAX_TEXT} characters")
    fields = _fields(text)
    if any(len(f) > MAX_FIELD for f in fields):
        raise CardError("malformed", f"a field longer than {MAX_FIELD} characters")
    raw_id, old, name, birth_f, sex_f, address, issue_f = layout(fields)
    id_number = id_digits(raw_id)
    old = id_digits(old)
    if old and not (old.isdigit() and old.isascii() and len(old) in (9, 12)):
        raise CardError("bad_id_number", "old ID number: neither empty nor 9 (or 12) digits")
    if not personal.fold_name(name):
        raise CardError("malformed", "full name: empty")
    birth = parse_date(birth_f, "birth date")
    sex = parse_sex(sex_f)
    check_id(id_number, birth, sex)
    today = (at or datetime.now(UTC)).astimezone(UTC).date() + timedelta(days=1)
    if birth > today:
        raise CardError("bad_date", "birth date: in the future")
    issued = None
    if issue_f:
        issued = parse_date(issue_f, "issue date")
        if issued < birth:
            raise CardError("bad_date", "issue date: before the birth date")
        if issued > today:
            raise CardError("bad_date", "issue date: in the future")
    out = {"id_number": id_number, "name": name, "dob": birth.isoformat(), "kind": KIND}
    if old:
        out["old_id_number"] = old
    if sex:
        out["sex"] = sex
    if address:
        out["address"] = address
    if issued:
        out["id_issued"] = issued.isoformat()
    return out


def verify(text, trust=None, at=None, skew_s=0.0):
    """A Verification of format `cccd`: decode and fields checked, signature False (`unsigned`).

    A bad card fails `decode` or `fields` with reason bad_id_number, bad_date or malformed (or
    unreadable) and a `detail`; it names nobody (`person` empty). Never raises on bad input."""
    def read(t):
        person = parse(t, at)
        return person, personal.person_id_for_id(person["id_number"]), None

    return verify_claim(text, fmt=NAME, kind=KIND, steps=STEPS, read=read, label="chip ID card QR",
                        unsigned="a chip ID card's QR carries no signature: an identity claim")
