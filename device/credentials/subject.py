"""Subject keys: one stable hash per person, the same whatever credential they show.

The terminal records, cools down and deny-lists people by `subject_key`, never by ID number.
The collector's tracing computes the same hash from an ID number a tracer types in:

    subject_key_for_id(id) = sha256_hex("chot-subject-v1|" + normalise_id(id))

where `normalise_id` removes spaces, dots and dashes and upper-cases letters (passport
numbers). Both live in `chot.wire`, which the collector shares.
Formats without an ID number (DCC, SHC) use `subject_key_for_person(name, dob)`.
"""

import hashlib
import re
import unicodedata

from chot import wire

PREFIX = "chot-subject-v1|"
normalise_id = wire.normalise_id_number  # '001 090-012.345' -> '001090012345'
subject_key_for_id = wire.subject_key_for_id  # the one hash both sides share


def fold_name(name):
    """Upper-case ASCII letters of a name, one space between words: 'Nguyễn Văn Ân' -> 'NGUYEN VAN AN'."""
    text = unicodedata.normalize("NFKD", str(name).replace("đ", "d").replace("Đ", "D"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    words = re.findall(r"[A-Za-z0-9]+", text)
    return " ".join(w.upper() for w in words)


def subject_key_for_person(name, dob):
    """The subject key of a person known by name and date of birth only (DCC, SHC)."""
    data = f"{PREFIX}nd|{fold_name(name)}|{str(dob).strip()}"
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def initials(name):
    """'Nguyễn Văn An' -> 'N. V. A.' (what a display may show instead of a name)."""
    words = str(name).split()
    return " ".join(w[0].upper() + "." for w in words if w)[:40]
