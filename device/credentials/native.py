"""The native personal declaration QR (`CHOT2:`): encode, sign, decode and verify.

Specification: docs/native-declaration.md. QR text = "CHOT2:" + base45(COSE_Sign1(claims)), no
compression, an untagged COSE_Sign1 signed with ES256 (low-s) or EdDSA (Ed25519); the protected
`kid` is sha256(issuer SPKI DER)[:4]; the claims are one CBOR map of small integer keys whose
numbers and dates are integers (issue 14: a QR of version 8 or less at error correction M).
The first format, `CHOT1:` (zlib, CWT claims, version 11-12 QR codes), is no longer read.

The building blocks (`b45encode`/`b45decode`, `inflate_bounded` (not used here), `parse_sign1`,
`sig_structure`, `verify_cose_signature`) are public so that the EU DCC reader can reuse them.
Pure logic: no files, no network; `verify` never raises on bad input.
"""

import hashlib
import logging
import math
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from chot import personal
from chot.errors import CredentialError
from device.credentials import bounds
from device.credentials import keys as keymod
from device.credentials.result import Verification

log = logging.getLogger(__name__)

PREFIX = "CHOT2:"
OLD_PREFIXES = ("CHOT1:",)  # earlier versions of the format: recognised, refused with what to do
MAX_TEXT = bounds.MAX_TEXT  # characters of QR text accepted at all
MAX_INFLATED = bounds.MAX_INFLATED  # for the DCC and SHC readers: a native declaration is not compressed
MAX_VALIDITY = timedelta(days=366)  # exp - iat of a declaration: longer ones are not issued nor accepted
DEFAULT_SKEW_S = 300.0

ALG_ES256 = keymod.COSE_ES256
ALG_EDDSA = keymod.COSE_EDDSA
HDR_ALG, HDR_KID = 1, 4
KID_LEN = 4  # bytes of sha256(SPKI DER) in the protected header; a trust store may hold several per kid
# the claims map (docs/native-declaration.md)
C_ID, C_NAME, C_PHONE, C_DOB, C_ANSWERS, C_IAT, C_VALID, C_CTI, C_ISS = range(1, 10)
H_SYMPTOMS, H_CONTACT, H_TRAVEL = 1, 2, 4  # the answers: bits 0-2 health, 3-5 purpose, 6 and up doses
PURPOSE_SHIFT, DOSES_SHIFT = 3, 6
PURPOSES = {1: "resident", 2: "visitor", 3: "delivery", 4: "shopping"}
PURPOSE_CODES = {v: k for k, v in PURPOSES.items()}
STEPS = ("decode", "signature", "issuer", "time")
KIND = "declaration"
DAY0 = date(1900, 1, 1)  # a birth date is the number of days since this day
MINUTE0 = datetime(2020, 1, 1, tzinfo=UTC)  # times are minutes since this instant (iat)
CTI_DOMAIN = b"CHOT2 declaration id"
_MAX_TIME = 2**40  # seconds; far beyond any real date, still a valid datetime

# ---------------------------------------------------------------- base45 (RFC 9285)

B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_VAL = {c: i for i, c in enumerate(B45)}


def b45encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = n % 45, n // 45
        d, e = n % 45, n // 45
        out += (B45[c], B45[d], B45[e])
    if len(data) % 2:
        n = data[-1]
        out += (B45[n % 45], B45[n // 45])
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Decode base45; ValueError on a character outside the alphabet or a bad length/value."""
    try:
        vals = [_B45_VAL[c] for c in text]
    except KeyError:
        raise ValueError("base45: character outside the alphabet") from None
    if len(vals) % 3 == 1:
        raise ValueError("base45: bad length")
    out = bytearray()
    for i in range(0, len(vals) - 2, 3):
        n = vals[i] + vals[i + 1] * 45 + vals[i + 2] * 2025
        if n > 0xFFFF:
            raise ValueError("base45: value out of range")
        out += n.to_bytes(2, "big")
    if len(vals) % 3 == 2:
        n = vals[-2] + vals[-1] * 45
        if n > 0xFF:
            raise ValueError("base45: value out of range")
        out.append(n)
    return bytes(out)


inflate_bounded = bounds.inflate_bounded  # zlib / raw DEFLATE to at most a limit (zip bombs)


def epoch_time(v):
    """A CWT/JWT time (int or float seconds) as an aware UTC datetime, or None when absent/invalid."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if not -_MAX_TIME < v < _MAX_TIME:
        return None
    try:
        return datetime.fromtimestamp(v, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# ---------------------------------------------------------------- COSE_Sign1


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes a COSE_Sign1 signature covers."""
    return cbor2.dumps(["Signature1", protected, external_aad, payload])


# ---------------------------------------------------------------- CBOR bounds

MAX_CBOR_ITEMS = bounds.MAX_CBOR_ITEMS
MAX_CBOR_DEPTH = bounds.MAX_CBOR_DEPTH


def check_cbor(data: bytes, max_items: int = MAX_CBOR_ITEMS, max_depth: int = MAX_CBOR_DEPTH,
               tags=bounds.NO_TAGS) -> None:
    """Walk one CBOR document without building it (device.credentials.bounds.check_cbor): ValueError
    when it is malformed, uses a tag not in `tags` (none by default: value sharing, string references
    and bignums are never used), holds more than `max_items` items or nests deeper than `max_depth`."""
    bounds.check_cbor(data, tags, max_items, max_depth)


def parse_sign1(data: bytes):
    """Parse a COSE_Sign1 (tag 18, optionally inside CWT tag 61, or untagged).

    Returns (protected_bytes, protected_map, unprotected_map, payload, signature); ValueError if malformed.
    """
    obj = bounds.loads_cbor(data, bounds.COSE_TAGS, "COSE")
    if isinstance(obj, cbor2.CBORTag) and obj.tag == 61:
        obj = obj.value
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != 18:
            raise ValueError(f"COSE: tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    if not (isinstance(obj, list | tuple) and len(obj) == 4):
        raise ValueError("COSE: not a COSE_Sign1 array of 4")
    protected, unprotected, payload, signature = obj
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping)):
        raise ValueError("COSE: bad headers")
    if not (isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise ValueError("COSE: payload or signature is not a byte string")
    pmap = {}
    if protected:
        pmap = bounds.loads_cbor(protected, bounds.NO_TAGS, "COSE: protected header")
        if not isinstance(pmap, Mapping):
            raise ValueError("COSE: protected header is not a map")
    return protected, pmap, unprotected, payload, signature


def cose_sign(private_key, to_be_signed: bytes) -> bytes:
    """Sign with ES256 (raw r||s, s always in the low half: see `verify_cose_signature`) or EdDSA."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(to_be_signed)
    der = private_key.sign(to_be_signed, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    if not bounds.is_low_s(s):
        s = bounds.P256_N - s  # the same signature's low-s twin: OpenSSL gives either half
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_cose_signature(public_key, alg, to_be_signed: bytes, signature: bytes, low_s: bool = False) -> bool:
    """True when `signature` verifies for ES256 (-7) or EdDSA (-8) with a key of the matching type.

    ECDSA signatures come in twins, (r, s) and (r, n - s), that both verify: with `low_s` (the
    native format) the high-s one is refused, so one signed content has one signature. EdDSA
    (Ed25519, RFC 8032) has a single valid encoding of S already (cryptography refuses S >= L).
    """
    try:
        if alg == ALG_EDDSA and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, to_be_signed)
            return True
        if alg == ALG_ES256 and isinstance(public_key, ec.EllipticCurvePublicKey):
            if len(signature) != 64 or not isinstance(public_key.curve, ec.SECP256R1):
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            if low_s and bounds.is_high_s(s):
                return False
            public_key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def is_high_s(alg, signature: bytes) -> bool:
    """True for a 64-byte ES256 signature whose s is in the high half (the twin a low-s format refuses)."""
    return alg == ALG_ES256 and len(signature) == 64 and bounds.is_high_s(int.from_bytes(signature[32:], "big"))


# ---------------------------------------------------------------- fields (issuing side)

_ID_RE = re.compile(r"[A-Z0-9]{5,20}")
_PHONE_RE = re.compile(r"\+?[0-9][0-9 ().-]{4,19}")
_YEAR_RE = re.compile(r"(19|20)[0-9]{2}")
_TRUE = {"1", "true", "yes", "y", "x", "co", "có"}
_FALSE = {"", "0", "false", "no", "n", "khong", "không"}


def _as_bool(name, value, problems):
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    problems.append(f"{name}: found {value!r}; allowed: yes/no, true/false, 1/0")
    return False


def _as_date(name, value, problems, year_ok=False):
    text = str(value).strip()
    if year_ok and _YEAR_RE.fullmatch(text):
        return text
    try:
        d = date.fromisoformat(text)
        if len(text) == 10:
            return d.isoformat()
    except ValueError:
        pass
    allowed = "YYYY-MM-DD" + (" or YYYY" if year_ok else "")
    problems.append(f"{name}: found {value!r}; allowed: a date {allowed}")
    return None


def _as_phone(value, problems):
    """The phone number normalised: digits with an optional leading +; +84 becomes 0 (Viet Nam)."""
    raw = str(value or "").strip()
    if not raw:
        return ""
    if not _PHONE_RE.fullmatch(raw):
        problems.append(f"phone: found {raw!r}; allowed: digits, spaces, +, -, ( ) (6 to 20 characters)")
        return ""
    digits = ("+" if raw.startswith("+") else "") + re.sub(r"[^0-9]", "", raw)
    if digits.startswith("+84"):
        digits = "0" + digits[3:]
    return digits


_NOT_CARRIED = ("address", "ward", "last_dose")  # fields of CHOT1 that CHOT2 leaves out for size


def normalise_fields(fields: dict) -> dict:
    """Check and normalise the fields of a declaration to issue; CredentialError lists every problem.

    Keys: id_number, name, dob (required); phone, purpose (resident, visitor, delivery,
    shopping), symptoms, contact, travel (booleans), doses (int), declaration_id (hex, default:
    derived from the signature), issuer_name. The compact format carries no street address, ward
    nor date of the last dose: giving one is an error. The ID number and name are never
    echoed in messages.
    """
    known = {
        "id_number", "name", "dob", "phone", "purpose", "symptoms", "contact", "travel",
        "doses", "declaration_id", "issuer_name",
    }
    problems = []
    dropped = sorted(k for k in _NOT_CARRIED if k in fields and fields[k] not in (None, ""))
    if dropped:
        problems.append(f"{', '.join(dropped)}: not carried by the native declaration (CHOT2 keeps the QR small; "
                        "the ID number and phone reach the person): leave it out")
    unknown = sorted(set(fields) - known - set(_NOT_CARRIED))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    out = {}
    raw_id = fields.get("id_number")
    idn = re.sub(r"[\s.\-]+", "", str(raw_id or "")).upper()
    if not _ID_RE.fullmatch(idn):
        problems.append("id_number: missing or malformed; allowed: 9 or 12 digits (CMND/CCCD) or a passport number")
    out["id_number"] = idn
    name = unicodedata.normalize("NFC", " ".join(str(fields.get("name") or "").split()))
    if not name or len(name) > 100:
        problems.append("name: missing or longer than 100 characters; allowed: the person's full name")
    out["name"] = name
    out["dob"] = _as_date("dob", fields.get("dob") or "", problems, year_ok=True)
    if out["dob"] and out["dob"] < "1900":
        problems.append("dob: before 1900; allowed: a date from 1900-01-01")
    out["phone"] = _as_phone(fields.get("phone"), problems)
    purpose = str(fields.get("purpose") or "resident").strip().lower()
    if purpose not in PURPOSE_CODES:
        problems.append(f"purpose: found {purpose!r}; allowed: {', '.join(PURPOSE_CODES)}")
    out["purpose"] = purpose
    for key in ("symptoms", "contact", "travel"):
        out[key] = _as_bool(key, fields.get(key), problems)
    doses = fields.get("doses") or 0
    try:
        doses = int(str(doses).strip() or 0)
        if not 0 <= doses <= 20:
            raise ValueError
    except ValueError:
        problems.append(f"doses: found {fields.get('doses')!r}; allowed: an integer from 0 to 20")
        doses = 0
    out["doses"] = doses
    did = fields.get("declaration_id")
    if isinstance(did, str) and did.strip():
        try:
            did = bytes.fromhex(did.strip())
        except ValueError:
            did = b""
    elif did in (None, ""):
        did = None
    if did is not None and (not isinstance(did, bytes) or not 1 <= len(did) <= 32):
        problems.append("declaration_id: allowed: 1 to 32 bytes, as hex (or none: derived from the signature)")
    out["declaration_id"] = did
    out["issuer_name"] = str(fields.get("issuer_name") or "")[:64]
    if problems:
        raise CredentialError("declaration fields: " + "; ".join(problems))
    return out


def _as_utc(t):
    if t is None:
        return datetime.now(UTC)
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def kid_of(key) -> bytes:
    """The key id a declaration carries: the first KID_LEN bytes of sha256(SPKI DER) (keys.kid_of)."""
    return keymod.kid_of(key)[:KID_LEN]


# ---------------------------------------------------------------- field encodings (docs/native-declaration.md)


_ID_BYTES = {12: 5, 9: 4}  # digits -> bytes of the big-endian integer (10^12 < 2^40, 10^9 < 2^32)
_ID_DIGITS = {v: k for k, v in _ID_BYTES.items()}


def encode_id(idn: str):
    """A CCCD (12 digits) as a 5-byte and a CMND (9 digits) as a 4-byte big-endian integer (the length
    keeps the leading zeros; a CBOR integer above 2^32 would take 9 bytes), any other ID as text."""
    if idn.isdigit() and len(idn) in _ID_BYTES:
        return int(idn).to_bytes(_ID_BYTES[len(idn)], "big")
    return idn


def decode_id(v) -> str:
    if isinstance(v, bytes) and len(v) in _ID_DIGITS:
        n, digits = int.from_bytes(v, "big"), _ID_DIGITS[len(v)]
        if n < 10**digits:
            return str(n).zfill(digits)
    elif isinstance(v, str) and 1 <= len(v) <= 32:
        return v
    raise ValueError("claims: the ID number is not 12 digits in 5 bytes, 9 digits in 4 bytes, or a text")


def encode_phone(phone: str):
    """A Vietnamese number (0 then 9 or 10 digits) as the integer after the 0, else the text."""
    if re.fullmatch(r"0[1-9][0-9]{8,9}", phone):
        return int(phone[1:])
    return phone


def decode_phone(v) -> str:
    if type(v) is int and 10**8 <= v < 10**10:
        return "0" + str(v)
    if isinstance(v, str) and len(v) <= 32:
        return v
    raise ValueError("claims: the phone is not a national number (integer) or a text")


def encode_day(text: str) -> int:
    return (date.fromisoformat(text) - DAY0).days


def decode_day(v, what) -> str:
    if type(v) is not int or not 0 <= v <= (date(9999, 12, 31) - DAY0).days:
        raise ValueError(f"claims: {what} is not a number of days since 1900-01-01")
    return (DAY0 + timedelta(days=v)).isoformat()


def encode_dob(text: str) -> int:
    return -int(text) if len(text) == 4 else encode_day(text)


def decode_dob(v) -> str:
    if type(v) is int and v < 0:
        if not 1900 <= -v <= 9999:
            raise ValueError("claims: the birth year is not from 1900 to 9999")
        return str(-v)
    return decode_day(v, "the birth date")


def issue(private_key, fields: dict, issued_at=None, valid_for=timedelta(hours=24)) -> str:
    """Sign a declaration and return its QR text ("CHOT2:..."). See `normalise_fields` for `fields`.

    The issue time is kept to the minute (rounded down), the validity in whole minutes (rounded up)."""
    keymod.check_supported(private_key, "issuer key")
    f = normalise_fields(fields)
    if not isinstance(valid_for, timedelta):
        valid_for = timedelta(hours=float(valid_for))
    if valid_for <= timedelta(0):
        raise CredentialError("valid_for: must be positive (e.g. --valid-hours 24)")
    if valid_for > MAX_VALIDITY:
        raise CredentialError(f"valid_for: at most {MAX_VALIDITY.days} days ({MAX_VALIDITY.days * 24} hours); "
                              "terminals refuse a declaration valid for longer")
    at = _as_utc(issued_at)
    if at < MINUTE0:
        raise CredentialError("issued_at: before 2020-01-01; the format counts minutes from then")
    minutes = int((at - MINUTE0).total_seconds() // 60)
    valid = max(1, math.ceil(valid_for.total_seconds() / 60))
    claims = {
        C_ID: encode_id(f["id_number"]),
        C_NAME: f["name"],
    }
    if f["phone"]:
        claims[C_PHONE] = encode_phone(f["phone"])
    claims[C_DOB] = encode_dob(f["dob"])
    claims[C_ANSWERS] = ((H_SYMPTOMS if f["symptoms"] else 0) | (H_CONTACT if f["contact"] else 0)
                         | (H_TRAVEL if f["travel"] else 0) | PURPOSE_CODES[f["purpose"]] << PURPOSE_SHIFT
                         | f["doses"] << DOSES_SHIFT)
    claims[C_IAT] = minutes
    claims[C_VALID] = valid
    if f["declaration_id"] is not None:
        claims[C_CTI] = f["declaration_id"]
    if f["issuer_name"]:
        claims[C_ISS] = f["issuer_name"]
    payload = cbor2.dumps(claims)
    protected = cbor2.dumps({HDR_ALG: keymod.cose_alg(private_key), HDR_KID: kid_of(private_key)})
    signature = cose_sign(private_key, sig_structure(protected, payload))
    return PREFIX + b45encode(cbor2.dumps([protected, {}, payload, signature]))


# ---------------------------------------------------------------- decoding and verification


def _str(m, key, what, required=True, limit=200):
    v = m.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or len(v) > limit or (required and not v):
        raise ValueError(f"claims: {what} missing or not text")
    return v


def _int(v, what, lo=0, hi=_MAX_TIME):
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"claims: {what} is not an integer in range")
    return v


def _time_claim(v, what):
    # any integer: its range is the `time` step's (reason bad_validity), not a decoding error
    if type(v) is not int:
        raise ValueError(f"claims: {what} is not an integer")
    return v


def declaration_id_of(signature: bytes) -> str:
    """The id of a declaration that carries none: sha256("CHOT2 declaration id" || signature)[:8], hex.

    A declaration has one valid signature (Ed25519 is deterministic, ES256 low-s only), so one id."""
    return hashlib.sha256(CTI_DOMAIN + signature).digest()[:8].hex()


def parse_claims(payload: bytes, signature: bytes = b"") -> dict:
    """The claims of a native declaration as plain fields; ValueError when malformed.

    `iat` and `exp` (seconds since 1970) may be absurd here: `time_problem` says whether they are
    sane. Without a declaration id (key 10) the id is derived from `signature`."""
    c = bounds.loads_cbor(payload, bounds.NO_TAGS, "claims")
    if not isinstance(c, Mapping):
        raise ValueError("claims: not a map")
    minutes = _time_claim(c.get(C_IAT), "iat (minutes since 2020)")
    valid = _time_claim(c.get(C_VALID), "validity (minutes)")
    iat = int(MINUTE0.timestamp()) + 60 * minutes
    exp = iat + 60 * valid
    cti = c.get(C_CTI)
    if cti is not None and not (isinstance(cti, bytes) and 1 <= len(cti) <= 32):
        raise ValueError("claims: the declaration id is not 1 to 32 bytes")
    iss = c.get(C_ISS)
    if iss is not None and not (isinstance(iss, str) and len(iss) <= 64):
        raise ValueError("claims: iss is not text")
    answers = _int(c.get(C_ANSWERS), "answers (health, purpose, doses)", 0, 100 << DOSES_SHIFT)
    health, purpose, doses = answers & 7, (answers >> PURPOSE_SHIFT) & 7, answers >> DOSES_SHIFT
    if C_ID not in c:
        raise ValueError("claims: the ID number is missing")
    return {
        "declaration_id": cti.hex() if cti is not None else declaration_id_of(signature),
        "iss": iss,
        "iat": iat,
        "exp": exp,
        "id_number": decode_id(c[C_ID]),
        "name": _str(c, C_NAME, "name", limit=100),
        "phone": decode_phone(c[C_PHONE]) if c.get(C_PHONE) is not None else "",
        "dob": decode_dob(c.get(C_DOB)),
        "symptoms": bool(health & H_SYMPTOMS),
        "contact": bool(health & H_CONTACT),
        "travel": bool(health & H_TRAVEL),
        "doses": doses,
        "last_dose": None,
        "purpose": PURPOSES.get(purpose, "other"),
    }


class Envelope:
    """A native declaration's COSE_Sign1, its claims not yet decoded (they are decoded after the signature)."""

    __slots__ = ("alg", "kid", "to_be_signed", "signature", "payload")

    def __init__(self, alg, kid, to_be_signed, signature, payload):
        self.alg, self.kid, self.to_be_signed, self.signature = alg, kid, to_be_signed, signature
        self.payload = payload


class Decoded:
    """A decoded (not yet verified) native declaration."""

    __slots__ = ("alg", "kid", "to_be_signed", "signature", "fields")

    def __init__(self, alg, kid, to_be_signed, signature, fields):
        self.alg, self.kid, self.to_be_signed, self.signature, self.fields = alg, kid, to_be_signed, signature, fields


def decode_envelope(text: str) -> Envelope:
    """Unprefix, base45, parse the COSE_Sign1 and its protected header (walked, bounded); the claims
    stay bytes. ValueError when malformed (an old `CHOT1:` text: with what to do)."""
    if isinstance(text, str) and text.startswith(OLD_PREFIXES):
        raise ValueError(f"{text[:6]} is an earlier, larger declaration format that terminals no longer read: "
                         f"issue a new declaration ({PREFIX}, `chot issue declaration`)")
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise ValueError(f"not prefixed {PREFIX}")
    bounds.check_text(text)
    raw = b45decode(text[len(PREFIX):])
    protected, pmap, _unprot, payload, signature = parse_sign1(raw)
    alg, kid = pmap.get(HDR_ALG), pmap.get(HDR_KID)
    if alg not in (ALG_ES256, ALG_EDDSA) or type(alg) is not int:
        raise ValueError("COSE: alg is not ES256 (-7) or EdDSA (-8)")
    if not isinstance(kid, bytes) or len(kid) != KID_LEN:
        raise ValueError(f"COSE: protected kid ({KID_LEN} bytes) missing")
    return Envelope(alg, kid, sig_structure(protected, payload), signature, payload)


def decode(text: str) -> Decoded:
    """Unprefix, base45, parse COSE_Sign1 and the claims; ValueError when malformed."""
    env = decode_envelope(text)
    return Decoded(env.alg, env.kid, env.to_be_signed, env.signature, parse_claims(env.payload, env.signature))


def issuer_keys(trust, kid: bytes) -> list:
    """The trusted native issuer keys whose key id starts with `kid` (usually one; a few in a collision)."""
    native_keys = getattr(trust, "native_keys", None) or {}
    return [key for full, key in native_keys.items() if full[:KID_LEN] == kid]


def _ts(seconds):
    return datetime.fromtimestamp(seconds, UTC)


_PERSON_TEXT = ("id_number", "name", "phone", "dob")


def person_of(fields: dict, kid: bytes) -> dict:
    """The person's fields (keys of chot.personal.PERSON_FIELDS) of a decoded declaration.

    In memory only: the daemon seals them to the collector; nothing may log or print them.
    Empty optional texts are left out.
    """
    person = {k: fields[k] for k in _PERSON_TEXT if fields.get(k)}
    person["health"] = {k: fields[k] for k in ("symptoms", "contact", "travel")}
    person["purpose"] = fields.get("purpose")
    person["doses"] = fields.get("doses", 0)
    if fields.get("last_dose"):
        person["last_dose"] = fields["last_dose"]
    person["issuer"] = kid.hex()
    person["kind"] = KIND
    return person


def signature_problem(key, env) -> str | None:
    """None when the declaration's signature verifies with `key`, else what is wrong (bad_signature)."""
    if is_high_s(env.alg, env.signature):
        return "the ES256 signature is not in low-s form (s > n/2): the native format refuses the high-s twin"
    if not verify_cose_signature(key, env.alg, env.to_be_signed, env.signature, low_s=True):
        return "the signature does not verify with the issuer's key"
    return None


def verify(text: str, trust, at=None, skew_s: float = DEFAULT_SKEW_S,
           max_validity: timedelta = MAX_VALIDITY) -> Verification:
    """Verify a "CHOT2:" text against `trust` (a TrustStore) at instant `at`. Never raises on bad input.

    The signature is checked over the raw protected header and payload bytes before the claims
    are decoded, with each trusted key of that `kid` (a 4-byte id may be shared). The claims of a
    declaration whose issuer is unknown or whose signature fails are decoded all the same (within the CBOR
    bounds): the terminal records them as an unverified claim.
    """
    v = Verification(text=text, format="native", steps=dict.fromkeys(STEPS))
    try:
        env = decode_envelope(text)
    except ValueError as exc:
        return v.fail("decode", "unreadable", str(exc))
    candidates = issuer_keys(trust, env.kid)
    bad_sig = None
    for key in candidates:
        bad_sig = signature_problem(key, env)
        if bad_sig is None:
            break
    try:
        f = parse_claims(env.payload, env.signature)
    except ValueError as exc:
        return v.fail("decode", "unreadable", str(exc))
    try:
        person_id = personal.person_id_for_id(f["id_number"])
    except ValueError:
        return v.fail("decode", "unreadable", "claims: the ID number is not letters and digits")
    v.steps["decode"] = True
    v.kind = KIND
    v.person = person_of(f, env.kid)
    v.person_id = person_id
    v.credential_id = f["declaration_id"]
    v.claims = {k: f[k] for k in ("symptoms", "contact", "travel", "doses", "last_dose", "purpose")}
    v.issuer = env.kid.hex()
    times = bounds.time_problem(f["iat"], f["exp"], max_validity.total_seconds())
    if times is None and f["exp"] <= f["iat"]:
        times = "exp is not after iat"
    if times is None:
        v.issued_at, v.expires_at = _ts(f["iat"]), _ts(f["exp"])
    if not candidates:
        return v.fail("issuer", "unknown_issuer", f"issuer key id {env.kid.hex()} is not trusted")
    v.steps["issuer"] = True
    if bad_sig:
        return v.fail("signature", "bad_signature", bad_sig)
    v.steps["signature"] = True
    if times:
        return v.fail("time", "bad_validity", f"claims: {times}")
    at = _as_utc(at)
    if v.issued_at > at + timedelta(seconds=skew_s):
        return v.fail("time", "not_yet_valid", "issued after the evaluation time")
    if at > v.expires_at:
        return v.fail("time", "expired", "past its expiry")
    v.steps["time"] = True
    return v
