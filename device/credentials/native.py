"""The native personal declaration QR (`CHOT1:`): encode, sign, decode and verify.

Specification: docs/native-declaration.md. QR text = "CHOT1:" + base45(zlib(COSE_Sign1(CWT))),
signed with ES256 or EdDSA (Ed25519); the protected `kid` is sha256(issuer SPKI DER)[:8].

The building blocks (`b45encode`/`b45decode`, `inflate_bounded`, `parse_sign1`,
`sig_structure`, `verify_cose_signature`) are public so that the EU DCC reader can reuse them.
Pure logic: no files, no network; `verify` never raises on bad input.
"""

import logging
import math
import os
import re
import unicodedata
import zlib
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from chot import personal
from chot.errors import CredentialError
from device.credentials import keys as keymod
from device.credentials.result import Verification

log = logging.getLogger(__name__)

PREFIX = "CHOT1:"
MAX_TEXT = 8192  # characters of QR text accepted at all
MAX_INFLATED = 65536  # bytes a compressed payload may inflate to
DEFAULT_SKEW_S = 300.0

ALG_ES256 = keymod.COSE_ES256
ALG_EDDSA = keymod.COSE_EDDSA
HDR_ALG, HDR_KID = 1, 4
CWT_ISS, CWT_EXP, CWT_IAT, CWT_CTI = 1, 4, 6, 7
CLAIM_DECL = -70000
D_VERSION, D_ID, D_NAME, D_PHONE, D_DOB, D_ADDRESS, D_WARD, D_HEALTH, D_VACC, D_PURPOSE = range(10)
H_SYMPTOMS, H_CONTACT, H_TRAVEL = 1, 2, 4
PURPOSES = {1: "resident", 2: "visitor", 3: "delivery", 4: "shopping"}
PURPOSE_CODES = {v: k for k, v in PURPOSES.items()}
STEPS = ("decode", "signature", "issuer", "time")
KIND = "declaration"
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


def inflate_bounded(data: bytes, limit: int = MAX_INFLATED, raw: bool = False) -> bytes:
    """Inflate zlib (or, with `raw`, raw DEFLATE) data to at most `limit` bytes.

    ValueError on bad or truncated data, or when it would inflate beyond `limit` (zip bombs).
    """
    what = "DEFLATE" if raw else "zlib"
    d = zlib.decompressobj(-15 if raw else 15)
    try:
        out = d.decompress(data, limit)
    except zlib.error as exc:
        raise ValueError(f"{what}: bad compressed data") from exc
    if d.unconsumed_tail:
        raise ValueError(f"{what}: inflates beyond {limit} bytes")
    if not d.eof:
        raise ValueError(f"{what}: truncated compressed data")
    return out


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

MAX_CBOR_ITEMS = 4096  # data items in one CBOR document (a DCC has about 40, a declaration 30)
MAX_CBOR_DEPTH = 16
# value sharing (28, 29) and string references (25, 256) let a few hundred bytes expand into
# gigabytes in cbor2: a 364-character HC1: code took 27.6 s and 420 MiB. No format uses them.
FORBIDDEN_CBOR_TAGS = frozenset({25, 28, 29, 256})
_CBOR_ARG = {24: 1, 25: 2, 26: 4, 27: 8}


def check_cbor(data: bytes, max_items: int = MAX_CBOR_ITEMS, max_depth: int = MAX_CBOR_DEPTH) -> None:
    """Walk one CBOR document without building it; ValueError when it is malformed, uses a forbidden
    tag, holds more than `max_items` items or nests deeper than `max_depth`. Linear in its length."""
    data = memoryview(data)
    n, pos, items = len(data), 0, 0
    stack = []  # remaining children of each open container (-1: indefinite, until a break)
    expect = 1  # items still to read at the top level
    while expect or stack:
        if pos >= n:
            raise ValueError("CBOR: truncated")
        ib = data[pos]
        pos += 1
        major, ai = ib >> 5, ib & 31
        if ib == 0xFF:  # break: closes an indefinite container
            if not stack or stack[-1] != -1:
                raise ValueError("CBOR: unexpected break")
            stack.pop()
            _cbor_done(stack)
            if not stack:
                expect -= 1
            continue
        items += 1
        if items > max_items:
            raise ValueError(f"CBOR: more than {max_items} items")
        if ai < 24:
            arg = ai
        elif ai in _CBOR_ARG:
            k = _CBOR_ARG[ai]
            if pos + k > n:
                raise ValueError("CBOR: truncated")
            arg = int.from_bytes(data[pos : pos + k], "big")
            pos += k
        elif ai == 31 and major in (2, 3, 4, 5):
            arg = None
        else:
            raise ValueError("CBOR: reserved additional information")
        children = 0
        if major in (2, 3):
            if arg is None:  # indefinite string: definite chunks until a break
                children = -1
            else:
                if pos + arg > n:
                    raise ValueError("CBOR: truncated string")
                pos += arg
        elif major == 4:
            children = -1 if arg is None else arg
        elif major == 5:
            children = -1 if arg is None else 2 * arg
        elif major == 6:
            if arg in FORBIDDEN_CBOR_TAGS:
                raise ValueError(f"CBOR: tag {arg} (value sharing or string references) is refused")
            children = 1
        if children:
            if len(stack) >= max_depth:
                raise ValueError(f"CBOR: nested deeper than {max_depth}")
            if children > max_items:
                raise ValueError(f"CBOR: more than {max_items} items")
            stack.append(children)
        else:
            _cbor_done(stack)
            if not stack:
                expect -= 1
    if pos != n:
        raise ValueError("CBOR: bytes after the document")


def _cbor_done(stack):
    """One item finished: count it off its containers, closing those it completes."""
    while stack and stack[-1] > 0:
        stack[-1] -= 1
        if stack[-1]:
            return
        stack.pop()
    # an indefinite container (or the top level) stays open



def parse_sign1(data: bytes):
    """Parse a COSE_Sign1 (tag 18, optionally inside CWT tag 61, or untagged).

    Returns (protected_bytes, protected_map, unprotected_map, payload, signature); ValueError if malformed.
    """
    check_cbor(data)
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input
        raise ValueError("COSE: not CBOR") from exc
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
        check_cbor(protected)
        try:
            pmap = cbor2.loads(protected)
        except Exception as exc:
            raise ValueError("COSE: protected header is not CBOR") from exc
        if not isinstance(pmap, Mapping):
            raise ValueError("COSE: protected header is not a map")
    return protected, pmap, unprotected, payload, signature


def cose_sign(private_key, to_be_signed: bytes) -> bytes:
    """Sign with ES256 (raw r||s) or EdDSA depending on the key."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(to_be_signed)
    der = private_key.sign(to_be_signed, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_cose_signature(public_key, alg, to_be_signed: bytes, signature: bytes) -> bool:
    """True when `signature` verifies for ES256 (-7) or EdDSA (-8) with a key of the matching type."""
    try:
        if alg == ALG_EDDSA and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, to_be_signed)
            return True
        if alg == ALG_ES256 and isinstance(public_key, ec.EllipticCurvePublicKey):
            if len(signature) != 64 or not isinstance(public_key.curve, ec.SECP256R1):
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            public_key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


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


def normalise_fields(fields: dict) -> dict:
    """Check and normalise the fields of a declaration to issue; CredentialError lists every problem.

    Keys: id_number, name, dob (required); phone, address, ward, purpose (resident, visitor,
    delivery, shopping), symptoms, contact, travel (booleans), doses (int), last_dose (date),
    declaration_id (hex), issuer_name. The ID number and name are never echoed in messages.
    """
    known = {
        "id_number", "name", "dob", "phone", "address", "ward", "purpose", "symptoms", "contact", "travel",
        "doses", "last_dose", "declaration_id", "issuer_name",
    }
    problems = []
    unknown = sorted(set(fields) - known)
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
    for key, limit in (("address", 200), ("ward", 100)):
        val = " ".join(str(fields.get(key) or "").split())
        if len(val) > limit:
            problems.append(f"{key}: longer than {limit} characters")
        out[key] = unicodedata.normalize("NFC", val)
    phone = str(fields.get("phone") or "").strip()
    if phone and not _PHONE_RE.fullmatch(phone):
        problems.append(f"phone: found {phone!r}; allowed: digits, spaces, +, -, ( ) (6 to 20 characters)")
    out["phone"] = phone
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
    last = fields.get("last_dose")
    out["last_dose"] = _as_date("last_dose", last, problems) if last not in (None, "") else None
    did = fields.get("declaration_id")
    if did in (None, ""):
        did = os.urandom(8)
    elif isinstance(did, str):
        try:
            did = bytes.fromhex(did)
        except ValueError:
            did = b""
    if not isinstance(did, bytes) or not 1 <= len(did) <= 32:
        problems.append("declaration_id: allowed: 1 to 32 bytes, as hex")
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


def issue(private_key, fields: dict, issued_at=None, valid_for=timedelta(hours=24)) -> str:
    """Sign a declaration and return its QR text ("CHOT1:..."). See `normalise_fields` for `fields`."""
    keymod.check_supported(private_key, "issuer key")
    f = normalise_fields(fields)
    if not isinstance(valid_for, timedelta):
        valid_for = timedelta(hours=float(valid_for))
    if valid_for <= timedelta(0):
        raise CredentialError("valid_for: must be positive (e.g. --valid-hours 24)")
    iat = int(_as_utc(issued_at).timestamp())
    exp = iat + max(1, int(valid_for.total_seconds()))
    decl = {
        D_VERSION: 1,
        D_ID: f["id_number"],
        D_NAME: f["name"],
        D_DOB: f["dob"],
        D_HEALTH: (H_SYMPTOMS if f["symptoms"] else 0) | (H_CONTACT if f["contact"] else 0)
        | (H_TRAVEL if f["travel"] else 0),
        D_PURPOSE: PURPOSE_CODES[f["purpose"]],
    }
    if f["phone"]:
        decl[D_PHONE] = f["phone"]
    if f["address"]:
        decl[D_ADDRESS] = f["address"]
    if f["ward"]:
        decl[D_WARD] = f["ward"]
    if f["doses"] or f["last_dose"]:
        decl[D_VACC] = [f["doses"], f["last_dose"]]
    claims = {CWT_EXP: exp, CWT_IAT: iat, CWT_CTI: f["declaration_id"], CLAIM_DECL: decl}
    if f["issuer_name"]:
        claims = {CWT_ISS: f["issuer_name"], **claims}
    payload = cbor2.dumps(claims)
    protected = cbor2.dumps({HDR_ALG: keymod.cose_alg(private_key), HDR_KID: keymod.kid_of(private_key)})
    signature = cose_sign(private_key, sig_structure(protected, payload))
    cose = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))
    return PREFIX + b45encode(zlib.compress(cose, 9))


# ---------------------------------------------------------------- decoding and verification


def _str(m, key, required=True, limit=200):
    v = m.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or len(v) > limit or (required and not v):
        raise ValueError(f"claims: field {key} missing or not text")
    return v


def _int(v, what, lo=0, hi=_MAX_TIME):
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"claims: {what} is not an integer in range")
    return v


def parse_claims(payload: bytes) -> dict:
    """The CWT claims of a native declaration as plain fields; ValueError when malformed."""
    check_cbor(payload)
    try:
        claims = cbor2.loads(payload)
    except Exception as exc:
        raise ValueError("claims: not CBOR") from exc
    if not isinstance(claims, Mapping):
        raise ValueError("claims: not a map")
    iat = _int(claims.get(CWT_IAT), "iat")
    exp = _int(claims.get(CWT_EXP), "exp")
    if exp <= iat:
        raise ValueError("claims: exp is not after iat")
    cti = claims.get(CWT_CTI)
    if not isinstance(cti, bytes) or not 1 <= len(cti) <= 32:
        raise ValueError("claims: cti (declaration id) missing")
    iss = claims.get(CWT_ISS)
    if iss is not None and not isinstance(iss, str):
        raise ValueError("claims: iss is not text")
    d = claims.get(CLAIM_DECL)
    if not isinstance(d, Mapping):
        raise ValueError("claims: the declaration map is missing")
    if d.get(D_VERSION) != 1 or type(d.get(D_VERSION)) is not int:
        raise ValueError("claims: unsupported declaration version")
    health = _int(d.get(D_HEALTH), "health", 0, 255)
    purpose = _int(d.get(D_PURPOSE), "purpose", 0, 2**32)
    vacc = d.get(D_VACC, [0, None])
    if not (isinstance(vacc, list | tuple) and len(vacc) == 2):
        raise ValueError("claims: vaccination is not [doses, last]")
    doses = _int(vacc[0], "doses", 0, 100)
    last = vacc[1]
    if last is not None and not (isinstance(last, str) and len(last) <= 10):
        raise ValueError("claims: last dose date is not text")
    dob = _str(d, D_DOB, limit=10)
    return {
        "declaration_id": cti.hex(),
        "iss": iss,
        "iat": iat,
        "exp": exp,
        "id_number": _str(d, D_ID, limit=32),
        "name": _str(d, D_NAME),
        "phone": _str(d, D_PHONE, required=False, limit=32),
        "dob": dob,
        "address": _str(d, D_ADDRESS, required=False, limit=400),
        "ward": _str(d, D_WARD, required=False),
        "symptoms": bool(health & H_SYMPTOMS),
        "contact": bool(health & H_CONTACT),
        "travel": bool(health & H_TRAVEL),
        "doses": doses,
        "last_dose": last,
        "purpose": PURPOSES.get(purpose, "other"),
    }


class Decoded:
    """A decoded (not yet verified) native declaration."""

    __slots__ = ("alg", "kid", "to_be_signed", "signature", "fields")

    def __init__(self, alg, kid, to_be_signed, signature, fields):
        self.alg, self.kid, self.to_be_signed, self.signature, self.fields = alg, kid, to_be_signed, signature, fields


def decode(text: str) -> Decoded:
    """Unprefix, base45, inflate (bounded), parse COSE_Sign1 and the claims; ValueError when malformed."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise ValueError(f"not prefixed {PREFIX}")
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    raw = inflate_bounded(b45decode(text[len(PREFIX):]))
    protected, pmap, _unprot, payload, signature = parse_sign1(raw)
    alg, kid = pmap.get(HDR_ALG), pmap.get(HDR_KID)
    if alg not in (ALG_ES256, ALG_EDDSA) or type(alg) is not int:
        raise ValueError("COSE: alg is not ES256 (-7) or EdDSA (-8)")
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise ValueError("COSE: protected kid (8 bytes) missing")
    return Decoded(alg, kid, sig_structure(protected, payload), signature, parse_claims(payload))


def _ts(seconds):
    return datetime.fromtimestamp(seconds, UTC)


_PERSON_TEXT = ("id_number", "name", "phone", "dob", "address", "ward")


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


def verify(text: str, trust, at=None, skew_s: float = DEFAULT_SKEW_S) -> Verification:
    """Verify a "CHOT1:" text against `trust` (a TrustStore) at instant `at`. Never raises on bad input."""
    v = Verification(text=text, format="native", steps=dict.fromkeys(STEPS))
    try:
        dec = decode(text)
    except ValueError as exc:
        return v.fail("decode", "unreadable", str(exc))
    f = dec.fields
    try:
        person_id = personal.person_id_for_id(f["id_number"])
    except ValueError:
        return v.fail("decode", "unreadable", "claims: the ID number is not letters and digits")
    v.steps["decode"] = True
    v.kind = KIND
    v.person = person_of(f, dec.kid)
    v.person_id = person_id
    v.credential_id = f["declaration_id"]
    v.claims = {k: f[k] for k in ("symptoms", "contact", "travel", "doses", "last_dose", "purpose")}
    v.issued_at, v.expires_at = _ts(f["iat"]), _ts(f["exp"])
    v.issuer = dec.kid.hex()
    native_keys = getattr(trust, "native_keys", None) or {}
    key = native_keys.get(dec.kid)
    if key is None:
        return v.fail("issuer", "unknown_issuer", f"issuer key id {dec.kid.hex()} is not trusted")
    v.steps["issuer"] = True
    if not verify_cose_signature(key, dec.alg, dec.to_be_signed, dec.signature):
        return v.fail("signature", "bad_signature", "the signature does not verify with the issuer's key")
    v.steps["signature"] = True
    at = _as_utc(at)
    if v.issued_at > at + timedelta(seconds=skew_s):
        return v.fail("time", "not_yet_valid", "issued after the evaluation time")
    if at > v.expires_at:
        return v.fail("time", "expired", "past its expiry")
    v.steps["time"] = True
    return v
