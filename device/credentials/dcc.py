"""EU Digital COVID Certificate ("HC1:" QR codes): decode, verify and the DCC policy rules.

Vietnam's vaccination certificates use this format. A text is checked in these steps, each
recorded in `Verification.steps` (True passed, False failed, None not reached):

- `unprefix`:   the text starts with "HC1:" (any other context, "HC2:", "HL0:", fails);
- `base45`:     the rest is base45 (RFC 9285);
- `decompress`: zlib, inflated to at most MAX_INFLATED bytes (an uncompressed COSE fails);
- `decode`:     COSE_Sign1 (tag 18, optionally inside CWT tag 61) and the CWT claims
                (1 iss, 4 exp, 6 iat, -260 hcert {1: the certificate});
- `signature`:  the cryptographic check alone: the key id (protected header, else unprotected)
                names a trusted signing certificate (kid = sha256(certificate DER)[:8]),
                chained to its country's CSCA where the trust material gives CSCAs, and the
                signature verifies for the header's algorithm (ES256/384/512 raw r||s,
                PS256/384/512, EdDSA: `verify_signature`);
- `revocation`: none of its hashes (SIGNATURE, UCI, COUNTRYCODEUCI) is on a revocation list;
- `time`:       iat <= clock (+ skew) and clock <= exp, then the signing certificate is valid
                at the evaluation time (`dsc_not_yet_valid`, `dsc_expired`);
- `key_usage`:  the certificate's extended key usage allows the content: OIDs
                1.3.6.1.4.1.1847.2021.1.1 / .2 / .3 for test / vaccination / recovery; a
                certificate with none of these OIDs may sign anything;
- `schema`:     the certificate follows its JSON schema (the version named by "ver"), holds
                entries of exactly one kind (v, t or r): one entry, or several where its schema
                release allows them (before 1.3.0), and every coded field is in the EU value
                sets (device/credentials/dcc_valuesets.py; reason `unknown_value`).

Several entries: the claims, the person and `credential_id` are those of the newest entry (by
`dt` for v, `sc` for t, `fr` then `df` for r), so the policy judges the newest.

Once `decode` passed, the checks after it are all run and reported (so `chot scan` and
the conformance test see each one); `reason` is the first failure. `kind` (vaccination,
test, recovery) is set once decoded; `person` (name, date of birth, kind, doses, issuer),
`person_id` (chot.personal.person_id_for_name_dob of the standardised names `fnt` `gnt` and
the date of birth) and `credential_id` (the entry's certificate identifier `ci`) are filled
only when the signature verified.

Trust material: `load_trust_json(store, obj)` reads a DCC trust list (DSCs, CSCAs) or a DCC
revocation list (see their docstrings); single certificates (PEM/DER) are stored by
device.credentials.trust itself.

JSON schemas: the ehn-dcc-schema releases (one directory per version holding one
*.combined-schema.json), found in $CHOT_DCC_SCHEMA_DIR, /etc/chot/dcc-schema (where
`chot provision device --dcc-schema` puts them), /usr/share/chot/dcc-schema or, in a
development checkout, ../shared/testdata/dcc/ehn-dcc-schema; `set_schema_dir(path)` chooses
another (the terminal's `policy.dcc_schema_dir`), `schema_releases(path)` lists what a
directory holds. Without any schema the `schema` step only checks the one-kind rule. Loaded once.

Pure logic apart from that lazy schema load; `verify` never raises, whatever the input.
"""

import base64
import binascii
import functools
import hashlib
import json
import logging
import math
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from chot import personal
from chot.errors import CredentialError
from device.credentials import bounds, dcc_valuesets, native
from device.credentials.result import Verification

log = logging.getLogger(__name__)

PREFIX = "HC1:"
MAX_TEXT = native.MAX_TEXT
MAX_INFLATED = bounds.MAX_INFLATED
MAX_VALIDITY = timedelta(days=3660)  # exp - iat: certificates in circulation are valid up to 5 years
STEPS = ("unprefix", "base45", "decompress", "decode", "signature", "revocation", "time", "key_usage", "schema")

# COSE signature algorithms (RFC 9053, RFC 8230): ECDSA with the curve of its size, RSASSA-PSS
# (MGF1 with the same hash, salt length = hash length) and EdDSA on Ed25519.
ALG_ES256, ALG_ES384, ALG_ES512 = -7, -35, -36
ALG_PS256, ALG_PS384, ALG_PS512 = -37, -38, -39
ALG_EDDSA = -8
ALG_NAMES = {ALG_ES256: "ES256", ALG_ES384: "ES384", ALG_ES512: "ES512", ALG_PS256: "PS256",
             ALG_PS384: "PS384", ALG_PS512: "PS512", ALG_EDDSA: "EdDSA"}
_EC_ALGS = {ALG_ES256: (ec.SECP256R1, hashes.SHA256), ALG_ES384: (ec.SECP384R1, hashes.SHA384),
            ALG_ES512: (ec.SECP521R1, hashes.SHA512)}
_PS_ALGS = {ALG_PS256: hashes.SHA256, ALG_PS384: hashes.SHA384, ALG_PS512: hashes.SHA512}
MIN_RSA_BITS = 2048
HDR_ALG, HDR_KID = 1, 4
CWT_ISS, CWT_EXP, CWT_IAT, CWT_HCERT = 1, 4, 6, -260
KINDS = {"v": "vaccination", "t": "test", "r": "recovery"}
# Extended key usage OIDs of DCC signing certificates; the ".0." variants were in early
# drafts of the specification and are still found on certificates.
EKU = {
    "1.3.6.1.4.1.1847.2021.1.1": "t",
    "1.3.6.1.4.1.1847.2021.1.2": "v",
    "1.3.6.1.4.1.1847.2021.1.3": "r",
    "1.3.6.1.4.1.0.1847.2021.1.1": "t",
    "1.3.6.1.4.1.0.1847.2021.1.2": "v",
    "1.3.6.1.4.1.0.1847.2021.1.3": "r",
}
TEST_NOT_DETECTED = "260415000"
TEST_DETECTED = "260373001"
_MAX_TIME = 2**40

# ---------------------------------------------------------------- small helpers


def _utc(t):
    if t is None:
        return datetime.now(UTC)
    if isinstance(t, str):
        t = parse_time(t)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


_FRACTION = re.compile(r"(\.\d+)")


def parse_time(text):
    """An ISO 8601 instant ('2021-06-08T20:17:27.9906293Z', '2021-05-03', ...) as an aware UTC datetime.

    ValueError when it is not one. Fractions beyond microseconds are cut; no zone means UTC.
    """
    s = str(text).strip()
    if not s or len(s) > 64:
        raise ValueError("not a date/time")
    s = s.replace("z", "Z")
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    s = _FRACTION.sub(lambda m: m.group(1)[:7], s, count=1)
    t = datetime.fromisoformat(s)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _jsonable(obj, depth=0):
    """CBOR values as JSON values: datetimes and dates as ISO text, bytes as base64."""
    if depth > 32:
        raise ValueError("CBOR nested too deeply")
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, depth + 1) for v in obj]
    if isinstance(obj, datetime):
        if obj.tzinfo is not None and obj.utcoffset() == timedelta(0):
            return obj.replace(tzinfo=None).isoformat() + "Z"
        return obj.isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, cbor2.CBORTag):
        return _jsonable(obj.value, depth + 1)
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError("non-finite number")
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)




def _cert_time(cert, attr):
    try:
        return getattr(cert, attr + "_utc")
    except AttributeError:  # cryptography < 42
        return getattr(cert, attr).replace(tzinfo=UTC)


# ---------------------------------------------------------------- JSON schemas


_schema_dir_override = None


def _schema_candidates():
    if _schema_dir_override is not None:
        yield Path(_schema_dir_override)
    yield from dcc_valuesets.installed_dirs("CHOT_DCC_SCHEMA_DIR", "dcc-schema", "ehn-dcc-schema")


def set_schema_dir(path):
    """Use the ehn-dcc-schema releases under `path` (one directory per version)."""
    global _schema_dir_override
    _schema_dir_override = None if path is None else str(path)
    _schemas.cache_clear()


def schema_dir():
    """The directory chosen with `set_schema_dir` (a string), or None when the search list is used."""
    return _schema_dir_override


def _version_key(v):
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return None


def schema_releases(base):
    """{version tuple: schema file} of the releases under `base` ({} when none or not a directory).

    A release is a directory named by its version ("1.3.2") holding a *combined-schema.json
    (else the first *.json), as ehn-dcc-schema publishes them.
    """
    base = Path(base)
    found = {}
    try:
        if not base.is_dir():
            return found
        for sub in sorted(base.iterdir()):
            key = _version_key(sub.name) if sub.is_dir() else None
            if key is None:
                continue
            files = sorted(sub.glob("*combined-schema.json")) or sorted(sub.glob("*.json"))
            if files:
                found[key] = files[0]
    except OSError as exc:  # e.g. /etc/chot not readable by this user
        log.warning("DCC schemas in %s not readable: %s", base, exc.strerror or exc)
    return found


@functools.lru_cache(maxsize=1)
def _schemas():
    """{version tuple: jsonschema validator}, loaded once from the first schema directory found."""
    import jsonschema

    for base in _schema_candidates():
        found = {}
        for key, file in schema_releases(base).items():
            try:
                schema = json.loads(file.read_text("utf-8"))
                cls = jsonschema.validators.validator_for(schema)
                found[key] = cls(schema)
            except (OSError, ValueError) as exc:
                log.warning("DCC schema %s not usable: %s", file, exc)
        if found:
            log.info("DCC schemas %s loaded from %s", ", ".join(".".join(map(str, k)) for k in found), base)
            return found
    log.warning("no DCC JSON schema found: set policy.dcc_schema_dir (or CHOT_DCC_SCHEMA_DIR) to the "
                "ehn-dcc-schema releases, or provision the terminal with --dcc-schema")
    return {}


def _validators_for(ver):
    """The validators that may accept version `ver`: its own schema, then the newest of the same major.

    Later minor releases only relax the earlier ones (partial dates of birth, longer texts),
    and certificates in circulation were issued against drafts that the first release already
    tightened; so a certificate passes when either of the two accepts it.
    """
    schemas = _schemas()
    key = _version_key(ver) if isinstance(ver, str) else None
    if key is None or not schemas:
        return []
    same_major = [k for k in schemas if k[0] == key[0]]
    if not same_major:
        return []
    out = []
    if key in schemas:
        out.append(schemas[key])
    else:
        older = [k for k in same_major if k <= key]
        if older:
            out.append(schemas[max(older)])
    newest = schemas[max(same_major)]
    if newest not in out:
        out.append(newest)
    return out


def _name_problem(nam):
    """A problem text when a name (fn, gn) holds something but its standardised form (fnt, gnt) is
    given empty, else None.

    The standardised name is the ICAO 9303 transliteration of the name, the form a border officer
    or a checkpoint matches against an identity document's machine-readable zone. A transliteration
    of a non-empty name cannot be empty: such a certificate lost its holder's name on the way (a
    name of emoji or symbols only, a broken issuer), and the reference vectors expect it refused.
    A standardised form left out altogether is the schema's business (gnt is optional).
    """
    if not isinstance(nam, dict):
        return None
    for key in ("fn", "gn"):
        name, standard = nam.get(key), nam.get(key + "t")
        if isinstance(name, str) and name.strip() and isinstance(standard, str) and not standard.strip():
            return f"nam/{key}t: the standardised name is empty while {key} is not"
    return None


def check_schema(dgc, issued_at=None):
    """None when `dgc` (JSON form) follows its schema and the one-kind rule, else a short problem text.

    Keys v, t, r that are null count as absent (early issuers wrote all three). Several entries of
    the one kind are left to the schema release (1.0.0 to 1.2.1 allow them, 1.3.0 on say maxItems
    1); without any schema loaded, one entry is required from 1.3.0 on. A date of birth after the
    issuing time is refused as well, and so is a name whose standardised form is there but empty
    (`_name_problem`).
    """
    if not isinstance(dgc, dict):
        return "the certificate is not a map"
    dgc = {k: val for k, val in dgc.items() if not (k in KINDS and val is None)}
    kinds = [k for k in KINDS if k in dgc]
    if len(kinds) != 1:
        return "the certificate must hold exactly one of v, t, r"
    entries = dgc[kinds[0]]
    if not isinstance(entries, list) or not entries:
        return f"{kinds[0]} must hold at least one entry"
    ver = dgc.get("ver")
    if not isinstance(ver, str) or _version_key(ver) is None:
        return "ver (the schema version) is missing"
    dob = dgc.get("dob")
    if isinstance(dob, str) and dob[:4].isdigit() and issued_at is not None and int(dob[:4]) > issued_at.year:
        return "the date of birth is after the issuing time"
    name = _name_problem(dgc.get("nam"))
    if name:
        return name
    validators = _validators_for(ver)
    if not validators:
        if _schemas():
            return f"no schema for version {ver[:16]}"
        if len(entries) != 1 and _version_key(ver) >= (1, 3, 0):
            return f"{kinds[0]} must hold exactly one entry (schema {ver[:16]})"
        return None
    err = None
    for validator in validators:
        err = next(iter(validator.iter_errors(dgc)), None)
        if err is None:
            return None
    # the last validator is the newest, most lenient release: its error is the one that matters
    where = "/".join(str(p) for p in err.absolute_path) or "(top)"
    return f"schema {ver[:16]}: {where}: {err.validator} failed"


# ---------------------------------------------------------------- signature


def verify_signature(public_key, alg, to_be_signed, signature):
    """True when `signature` verifies with `public_key` for COSE algorithm `alg` (ALG_NAMES).

    ECDSA (ES256/384/512): the key is on the algorithm's curve (P-256, P-384, P-521) and the
    signature is COSE's raw r || s, each the curve's size; both twins (r, s) and (r, n - s) verify
    (the DCC specification does not require low s). RSASSA-PSS (PS256/384/512): an RSA key of at
    least MIN_RSA_BITS, MGF1 with the algorithm's hash and a salt as long as the hash (RFC 8230).
    EdDSA: an Ed25519 key. Any other algorithm, or a key of another type, is False.
    """
    if type(alg) is not int or not isinstance(signature, bytes | bytearray):
        return False
    signature = bytes(signature)
    try:
        if alg in _EC_ALGS:
            curve, hash_cls = _EC_ALGS[alg]
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, curve):
                return False
            size = (public_key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                return False
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            public_key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hash_cls()))
            return True
        if alg in _PS_ALGS:
            hash_cls = _PS_ALGS[alg]
            if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < MIN_RSA_BITS:
                return False
            public_key.verify(signature, to_be_signed,
                              padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls.digest_size),
                              hash_cls())
            return True
        if alg == ALG_EDDSA and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, to_be_signed)
            return True
    except (InvalidSignature, ValueError, TypeError):
        return False
    return False


def _der_items(data, start=0, end=None):
    """(tag, content start, content end) of each DER element in data[start:end]; ValueError when malformed."""
    end = len(data) if end is None else end
    i = start
    while i < end:
        if i + 2 > end:
            raise ValueError("DER: truncated")
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or i + n > end:
                raise ValueError("DER: bad length")
            length = int.from_bytes(data[i:i + n], "big")
            i += n
        if i + length > end:
            raise ValueError("DER: truncated")
        yield tag, i, i + length
        i += length


def _oid_text(body):
    if not body:
        raise ValueError("DER: empty OID")
    first = body[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    n = 0
    for b in body[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


_OID_EKU = bytes.fromhex("551d25")  # 2.5.29.37


def _eku_from_der(der):
    """The EKU OIDs of a certificate read straight from its DER (for certificates that cryptography's
    strict parser refuses, e.g. an explicitly encoded default); None when it has no EKU extension."""
    cert_tag, cs, ce = next(_der_items(der))
    tbs_tag, ts, te = next(_der_items(der, cs, ce))
    for tag, s, e in _der_items(der, ts, te):
        if tag != 0xA3:  # [3] extensions
            continue
        _seq, xs, xe = next(_der_items(der, s, e))
        for _t, es, ee in _der_items(der, xs, xe):
            parts = list(_der_items(der, es, ee))
            if not parts or der[parts[0][1]:parts[0][2]] != _OID_EKU:
                continue
            _ot, vs, ve = parts[-1]  # extnValue OCTET STRING holding SEQUENCE OF OID
            inner = list(_der_items(der, vs, ve))
            if not inner:
                return []
            _st, ss, se = inner[0]
            return [_oid_text(der[a:b]) for t, a, b in _der_items(der, ss, se) if t == 0x06]
    return None


def key_usage_kinds(cert):
    """The kinds ("v", "t", "r") a signing certificate may sign; None when its EKU names none (all allowed)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        oids = [o.dotted_string for o in eku]
    except x509.ExtensionNotFound:
        oids = []
    except ValueError:  # an extension cryptography refuses to parse: read the EKU ourselves
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            oids = _eku_from_der(cert.public_bytes(Encoding.DER)) or []
        except (ValueError, StopIteration):
            oids = []
    kinds = {EKU[o] for o in oids if o in EKU}
    return kinds or None


# ---------------------------------------------------------------- decoding


class Decoded:
    """The parts of a decoded (not yet verified) DCC. `dgc` is in JSON form; `iat` and `exp` are
    datetimes only when `times` (what is wrong with them, or None) is None."""

    __slots__ = ("alg", "kid", "to_be_signed", "signature", "payload", "claims", "iss", "iat", "exp", "times",
                 "dgc")


def decode_envelope(raw):
    """The COSE_Sign1 of an inflated DCC (walked and bounded), its claims not yet decoded; ValueError
    when malformed."""
    protected, pmap, unprotected, payload, signature = native.parse_sign1(raw)
    d = Decoded()
    d.alg = pmap.get(HDR_ALG, unprotected.get(HDR_ALG))
    d.kid = pmap[HDR_KID] if HDR_KID in pmap else unprotected.get(HDR_KID)
    d.to_be_signed = native.sig_structure(protected, payload)
    d.signature = signature
    d.payload = payload
    return d


def decode_claims(d):
    """Decode the CWT claims of `d` (from `decode_envelope`) into it, within the CBOR bounds (only the
    date tags 0, 1, 100 and 1004); ValueError when malformed."""
    claims = bounds.loads_cbor(d.payload, bounds.DCC_CLAIM_TAGS, "CWT payload")
    if not isinstance(claims, dict):
        raise ValueError("CWT payload is not a map")
    hcert = claims.get(CWT_HCERT)
    if not isinstance(hcert, dict) or not isinstance(hcert.get(1), dict):
        raise ValueError("CWT claim -260 (hcert) with the certificate is missing")
    d.claims = claims
    iss = claims.get(CWT_ISS)
    d.iss = iss if isinstance(iss, str) else None
    iat, exp = claims.get(CWT_IAT), claims.get(CWT_EXP)
    d.iat = d.exp = None
    if iat is None or exp is None:
        d.times = None
    else:
        d.times = bounds.time_problem(iat, exp, MAX_VALIDITY.total_seconds())
        if d.times is None:
            d.iat, d.exp = native.epoch_time(iat), native.epoch_time(exp)
    d.dgc = _jsonable(hcert[1])
    return d


def decode_cose(raw):
    """Parse the COSE_Sign1 and CWT claims of an inflated DCC; ValueError when malformed."""
    return decode_claims(decode_envelope(raw))


def unprefix(text):
    """The base45 part of an "HC1:" text; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not text")
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    t = text.strip()
    if not t.startswith(PREFIX):
        raise ValueError(f"not prefixed {PREFIX}")
    return t[len(PREFIX):]


def inflate(data):
    """zlib-inflate at most MAX_INFLATED bytes; ValueError on bad, truncated or oversized data."""
    return native.inflate_bounded(data, MAX_INFLATED)


# ---------------------------------------------------------------- the person and claims


def _text(obj, key, limit=200):
    val = obj.get(key) if isinstance(obj, dict) else None
    return val.strip()[:limit] if isinstance(val, str) else ""


def _person(dgc, claims, issuer):
    """(person fields, person id or None, credential id or None) of a verified certificate."""
    nam = dgc.get("nam") if isinstance(dgc.get("nam"), dict) else {}
    fnt, gnt = _text(nam, "fnt"), _text(nam, "gnt")
    fn, gn = _text(nam, "fn") or fnt.replace("<", " "), _text(nam, "gn") or gnt.replace("<", " ")
    dob = _text(dgc, "dob", 32)
    person = {"kind": claims["kind"]} if claims.get("kind") else {}
    name = " ".join(f"{fn} {gn}".split())
    if name:
        person["name"] = name
    if dob:
        person["dob"] = dob[:10]
    entry, _kind = _entry(dgc)
    if claims.get("kind") == "vaccination":
        dn = _int(entry.get("dn"))
        if dn is not None and 0 <= dn <= 100:
            person["doses"] = dn
        if _text(entry, "dt", 32):
            person["last_dose"] = _text(entry, "dt", 32)[:10]
    if issuer:
        person["issuer"] = issuer
    try:
        person_id = personal.person_id_for_name_dob(f"{fnt} {gnt}".replace("<", " "), dob)
    except ValueError:  # no name, or no usable date of birth: the person cannot be named
        person_id = None
    ci = _text(entry, "ci", 128)
    return person, person_id, ci or None


# the date that orders several entries of one kind: the newest is judged
_ENTRY_DATES = {"v": ("dt",), "t": ("sc",), "r": ("fr", "df")}


def _entry_when(kind, entry):
    for key in _ENTRY_DATES[kind]:
        when = _date(entry.get(key))
        if when is not None:
            return when
    return datetime.min.replace(tzinfo=UTC)


def _entry(dgc):
    """(the certificate's newest entry, its kind): of v, t or r, the entry with the latest date (`dt`,
    `sc`, `fr`/`df`; the first of equal dates), or ({}, None) when the certificate has not exactly one kind."""
    kinds = [k for k in KINDS if isinstance(dgc.get(k), list) and dgc[k]]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        return {}, None
    entries = [e for e in dgc[kind] if isinstance(e, dict)]
    if not entries:
        return {}, kind
    return max(entries, key=lambda e: _entry_when(kind, e)), kind


def _claims(dgc, iss):
    """What the rules need; the entry without its certificate identifier `ci` (that is `credential_id`)."""
    entry, kind = _entry(dgc)
    return {
        "kind": KINDS.get(kind),
        "entry": {k: val for k, val in entry.items() if k != "ci"},
        "ver": dgc.get("ver") if isinstance(dgc.get("ver"), str) else None,
        "country": entry.get("co") if isinstance(entry.get("co"), str) else None,
        "iss": iss,
    }


# ---------------------------------------------------------------- verification


def _first_open_step(v):
    return next((s for s in STEPS if v.steps.get(s) is None), STEPS[-1])


def verify(text, trust=None, at=None, skew_s: float = 0.0, trace=None) -> Verification:
    """Verify an "HC1:" text against `trust` (a TrustStore; None trusts nothing) at `at` (default now).

    Never raises. `skew_s` tolerates a clock running behind the issuer (iat in the future).
    `trace`, a dict, receives the intermediate values (base45 part, compressed, cose, payload, dgc).
    """
    v = Verification(text=text if isinstance(text, str) else None, format="dcc", steps=dict.fromkeys(STEPS))
    try:
        return _verify(v, text, trust, _utc(at), float(skew_s or 0.0), trace if trace is not None else {})
    except Exception as exc:  # noqa: BLE001 - last resort: a bug must not stop the terminal
        log.error("DCC verification failed unexpectedly (%s)", type(exc).__name__, exc_info=True)
        return v.fail(_first_open_step(v), "unreadable", f"internal error ({type(exc).__name__})")


def _verify(v, text, trust, at, skew_s, trace):
    try:
        body = unprefix(text)
    except ValueError as exc:
        reason = "unreadable" if isinstance(text, str) and len(text) > MAX_TEXT else "unknown_format"
        return v.fail("unprefix", reason, str(exc))
    v.steps["unprefix"] = True
    trace["base45"] = body
    try:
        compressed = native.b45decode(body)
    except ValueError as exc:
        return v.fail("base45", "unreadable", str(exc))
    v.steps["base45"] = True
    trace["compressed"] = compressed
    try:
        raw = inflate(compressed)
    except ValueError as exc:
        return v.fail("decompress", "unreadable", str(exc))
    v.steps["decompress"] = True
    trace["cose"] = raw
    try:
        d = decode_envelope(raw)
    except (ValueError, RecursionError) as exc:
        return v.fail("decode", "unreadable", str(exc)[:200])
    # the signature first, over the raw protected header and payload bytes; the claims are decoded
    # after it whatever its outcome (every step is reported), within the CBOR bounds
    cert, sig_failure = _check_signature(d, trust)
    try:
        decode_claims(d)
    except (ValueError, RecursionError) as exc:
        return v.fail("decode", "unreadable", str(exc)[:200])
    v.steps["decode"] = True
    trace["claims"], trace["dgc"] = d.claims, d.dgc
    v.issued_at, v.expires_at, v.issuer = d.iat, d.exp, d.iss
    v.claims = _claims(d.dgc, d.iss)
    v.kind = v.claims["kind"]

    if sig_failure:
        v.fail("signature", *sig_failure)
    else:
        v.steps["signature"] = True
        v.issuer = d.iss or cert.subject.rfc4514_string()[:120]

    # revocation: the DCC's hashes (signature, UCI, country code + UCI) on a revocation list
    revoked = _revoked_by(trust, d)
    if revoked:
        v.fail("revocation", "revoked", f"on a DCC revocation list ({revoked} hash)")
    else:
        v.steps["revocation"] = True

    # time: sane, and iat <= clock <= exp
    if d.times:
        v.fail("time", "bad_validity", d.times)
    elif d.iat is None or d.exp is None:
        v.fail("time", "unreadable", "iat or exp missing")
    elif d.iat > at + timedelta(seconds=skew_s):
        v.fail("time", "not_yet_valid", "issued after the evaluation time")
    elif at > d.exp:
        v.fail("time", "expired", "past its expiry (exp)")
    elif cert is not None and (dsc := _dsc_time_problem(cert, at, skew_s)):
        v.fail("time", *dsc)
    else:  # without a trusted DSC (signature failed) only the certificate's own dates
        v.steps["time"] = True

    # key usage of the signing certificate
    if cert is not None:
        allowed = key_usage_kinds(cert)
        present = [k for k in KINDS if k in d.dgc]
        if allowed is not None and (not present or any(k not in allowed for k in present)):
            v.fail("key_usage", "key_usage", "the signing certificate may not sign this kind of certificate")
        else:
            v.steps["key_usage"] = True

    problem = check_schema(d.dgc, d.iat)
    unknown = None if problem else dcc_valuesets.check(
        d.dgc, dcc_valuesets.current().merged(getattr(trust, "dcc_valuesets", None)))
    if problem:
        v.fail("schema", "schema", problem)
    elif unknown:
        v.fail("schema", "unknown_value", unknown)
    else:
        v.steps["schema"] = True

    if v.steps["signature"]:
        v.person, v.person_id, v.credential_id = _person(d.dgc, v.claims, v.issuer)
    return v


def _check_signature(d, trust):
    """(the trusted signing certificate or None, None when the signature step passes else (reason, detail)).

    The step is the cryptographic check alone: the key id names a trusted signing certificate
    (chained to its country's CSCA when the trust material gives CSCAs, see `_chain_problem`) and
    the signature verifies with it (`verify_signature`). Whether that certificate is valid at the
    evaluation time belongs to the `time` step (`dsc_expired`, `dsc_not_yet_valid`), as in the
    EU's reference verifiers. ECDSA signatures are accepted in either of their twin forms (r, s) and
    (r, n - s): the DCC specification does not require low-s and about half the certificates in
    circulation are high-s (196 of 373 ES256 cases of dgc-testdata). Nothing in Chot is derived
    from the s half: a twin is the same certificate, with the same `ci` (credential_id), person id
    and revocation hashes (the SIGNATURE hash of an ECDSA signature is of r alone).
    """
    certs = getattr(trust, "dcc_certs", None) or {}
    if not isinstance(d.kid, bytes) or not d.kid:
        return None, ("unknown_issuer", "no key id in the COSE headers")
    cert = certs.get(d.kid)
    if cert is None:
        return None, ("unknown_issuer", f"signing certificate {d.kid[:8].hex()} is not trusted")
    chain = _chain_problem(trust, d.kid, cert)
    if chain:
        return None, ("unknown_issuer", chain)
    if type(d.alg) is not int or d.alg not in ALG_NAMES:
        return cert, ("bad_signature", "COSE alg is not one of " + ", ".join(
            f"{n} ({a})" for a, n in ALG_NAMES.items()))
    if not verify_signature(cert.public_key(), d.alg, d.to_be_signed, d.signature):
        return cert, ("bad_signature", f"the {ALG_NAMES[d.alg]} signature does not verify with the signing "
                                       "certificate (or its key is not of that algorithm's type)")
    return cert, None


def _dsc_time_problem(cert, at, skew_s):
    """(reason, detail) when the signing certificate is not valid at `at`, else None."""
    if at + timedelta(seconds=skew_s) < _cert_time(cert, "not_valid_before"):
        return "dsc_not_yet_valid", "the signing certificate (DSC) is not valid yet at the evaluation time"
    if at > _cert_time(cert, "not_valid_after"):
        return "dsc_expired", "the signing certificate (DSC) has expired at the evaluation time"
    return None


# ---------------------------------------------------------------- chain to a CSCA


def _country_of(cert):
    try:
        attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COUNTRY_NAME)
    except ValueError:
        return None
    return str(attrs[0].value).upper() if attrs else None


def _is_ca(cert):
    """A CSCA may sign certificates: basic constraints CA (required) and, if it has a key usage, keyCertSign."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return ku.key_cert_sign


def chain_problem(cert, anchors):
    """None when `cert` is directly issued by one of the CSCAs `anchors`, else what is wrong.

    Not a PKIX path validation (cryptography.x509.verification refuses many DSCs in circulation:
    no authority key id, critical EKUs it does not know, validity beyond its CA's): the CSCA's
    subject is the DSC's issuer, the CSCA is a CA (basic constraints; keyCertSign if it has a key
    usage), its signature on the DSC verifies, and the DSC was issued while the CSCA was valid
    (the DSC's notBefore within the CSCA's validity: the chain model of ICAO and the DCC, so a CSCA
    that expires later does not invalidate the DSCs it issued).
    """
    if not anchors:
        return "no CSCA to check it with"
    why = "its issuer is none of the trusted CSCAs"
    for ca in anchors:
        if ca.subject != cert.issuer:
            continue
        if not _is_ca(ca):
            why = "its CSCA is not a CA certificate (basic constraints, key usage)"
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            why = "its signature does not verify with its CSCA's key"
            continue
        issued = _cert_time(cert, "not_valid_before")
        if not _cert_time(ca, "not_valid_before") <= issued <= _cert_time(ca, "not_valid_after"):
            why = "it was issued outside its CSCA's validity"
            continue
        return None
    return why


def _chain_problem(trust, kid, cert):
    """Why the DSC `cert` (under `kid`) is not trusted by chain, or None.

    Only where the trust material gives CSCAs (`trust.dcc_cscas`, country -> certificates, from
    trust list entries of certificateType "CSCA"): a DSC of a country (the trust list entry's
    `country`, else the DSC's subject C) that has CSCAs must chain to one of them; so must a DSC
    whose issuer is the subject of any CSCA given. A DSC of a country without CSCAs is trusted as
    given. Results are kept per kid (`trust.dcc_chain_cache`): trust material is not changed
    after loading (an update makes a new store).
    """
    cscas = getattr(trust, "dcc_cscas", None) or {}
    if not cscas:
        return None
    cache = getattr(trust, "dcc_chain_cache", None)
    if cache is not None and kid in cache:
        return cache[kid]
    country = (getattr(trust, "dcc_countries", None) or {}).get(kid) or _country_of(cert)
    anchors = list(cscas.get(country) or [])
    if not anchors:
        anchors = [ca for cas in cscas.values() for ca in cas if ca.subject == cert.issuer]
    problem = None
    if anchors:
        why = chain_problem(cert, anchors)
        if why:
            problem = f"signing certificate {kid[:8].hex()} does not chain to a trusted CSCA of {country}: {why}"
    if cache is not None:
        cache[kid] = problem
    return problem


# ---------------------------------------------------------------- revocation (EU DCC revocation lists)

REVOCATION_TYPES = ("SIGNATURE", "UCI", "COUNTRYCODEUCI")
REVOCATION_FORMAT = "chot-dcc-revocations-v1"
REVOCATION_HASH_BYTES = 16  # the lists hold the first 128 bits of each SHA-256


def _revocation_hash(data):
    return hashlib.sha256(data).digest()[:REVOCATION_HASH_BYTES]


def signature_revocation_hash(alg, signature):
    """The SIGNATURE hash: SHA-256 of the signature, of its r half alone for ECDSA (so both twins match)."""
    sig = bytes(signature)
    if alg in _EC_ALGS:
        sig = sig[:len(sig) // 2]
    return _revocation_hash(sig)


def uci_revocation_hash(ci):
    """The UCI hash: SHA-256 of the certificate identifier `ci` (UTF-8)."""
    return _revocation_hash(str(ci).encode("utf-8"))


def countrycodeuci_revocation_hash(country, ci):
    """The COUNTRYCODEUCI hash: SHA-256 of the issuing country (the CWT issuer, claim 1) followed by `ci`."""
    return _revocation_hash((str(country) + str(ci)).encode("utf-8"))


def _cis(dgc):
    """The certificate identifiers `ci` of every entry (v, t, r) of a certificate in JSON form."""
    out = []
    for k in KINDS:
        entries = dgc.get(k) if isinstance(dgc, dict) else None
        for e in entries if isinstance(entries, list) else ():
            if isinstance(e, dict) and isinstance(e.get("ci"), str) and e["ci"]:
                out.append(e["ci"])
    return out


def revocation_hashes(d):
    """{hash type: [16-byte hashes]} of a decoded DCC (`Decoded` with its claims), as the EU lists hold them."""
    cis = _cis(d.dgc)
    out = {"SIGNATURE": [signature_revocation_hash(d.alg, d.signature)], "UCI": [uci_revocation_hash(c) for c in cis]}
    out["COUNTRYCODEUCI"] = [countrycodeuci_revocation_hash(d.iss, c) for c in cis] if d.iss else []
    return out


def _revoked_by(trust, d):
    """The hash type under which the DCC is on a revocation list of `trust`, or None."""
    lists = getattr(trust, "dcc_revoked", None) or {}
    if not lists:
        return None
    kid = d.kid if isinstance(d.kid, bytes) and d.kid else None
    for htype, hashes_ in revocation_hashes(d).items():
        by_kid = lists.get(htype) or {}
        pools = [p for p in (by_kid.get(b""), by_kid.get(kid) if kid else None) if p]
        if any(h in pool for pool in pools for h in hashes_):
            return htype
    return None


def _batches(obj):
    """The revocation batches of `obj`, or None when it is not a DCC revocation list."""
    if isinstance(obj, dict) and obj.get("format") == REVOCATION_FORMAT:
        batches = obj.get("batches")
        if not isinstance(batches, list):
            raise CredentialError(f"{REVOCATION_FORMAT}: 'batches' must be a list")
        return batches
    if isinstance(obj, dict) and "hashType" in obj and "entries" in obj:
        return [obj]
    if isinstance(obj, list) and obj and all(isinstance(b, dict) and "hashType" in b for b in obj):
        return obj
    return None


def parse_revocations(obj):
    """[(hash type, kid bytes or None, [16-byte hashes])] of a DCC revocation list, or None when `obj` is not one.

    Accepted: the EU gateway's revocation batch ({"country", "expires", "kid", "hashType", "entries":
    [{"hash": base64}, ...], "deleted"?}), a list of such batches, or Chot's own
    {"format": "chot-dcc-revocations-v1", "batches": [...]} (made by `chot collector publish-trust
    --dcc-revocations`). A batch with a kid applies to DCCs signed with that key id only; one
    without to any signer. Deleted batches are skipped; `expires` is not applied (an expired batch
    only names DCCs that are past their own expiry). CredentialError for a broken list.
    """
    batches = _batches(obj)
    if batches is None:
        return None
    out = []
    for i, b in enumerate(batches):
        where = f"DCC revocation batch {i}"
        if not isinstance(b, dict):
            raise CredentialError(f"{where}: not an object")
        if b.get("deleted") is True:
            continue
        htype = b.get("hashType")
        htype = htype.upper() if isinstance(htype, str) else htype
        if htype not in REVOCATION_TYPES:
            raise CredentialError(f"{where}: hashType {str(htype)[:20]!r} is not one of {', '.join(REVOCATION_TYPES)}")
        kid = None
        if b.get("kid"):
            try:
                kid = _b64(b["kid"])
            except (ValueError, binascii.Error):
                raise CredentialError(f"{where}: kid is not base64") from None
        entries = b.get("entries")
        if not isinstance(entries, list):
            raise CredentialError(f"{where}: entries must be a list of {{\"hash\": base64}}")
        hashes_ = []
        for j, e in enumerate(entries):
            text = e.get("hash") if isinstance(e, dict) else e
            try:
                h = _b64(text) if isinstance(text, str) else b""
            except (ValueError, binascii.Error):
                h = b""
            if len(h) < REVOCATION_HASH_BYTES:
                raise CredentialError(f"{where} entry {j}: the hash must be base64 of at least "
                                      f"{REVOCATION_HASH_BYTES} bytes (the first 128 bits of a SHA-256)")
            hashes_.append(h[:REVOCATION_HASH_BYTES])
        out.append((htype, kid, hashes_))
    return out


def add_revocations(store, batches):
    """Add parsed batches (`parse_revocations`) to `store.dcc_revoked`; the number of hashes added."""
    lists = store.dcc_revoked
    n = 0
    for htype, kid, hashes_ in batches:
        pool = lists.setdefault(htype, {}).setdefault(kid or b"", set())
        pool.update(hashes_)
        n += len(hashes_)
    return n


def revocation_list(batches):
    """Chot's revocation list object ({"format": REVOCATION_FORMAT, "batches": [...]}) of parsed batches."""
    def b64(b):
        return base64.b64encode(b).decode("ascii")

    return {"format": REVOCATION_FORMAT, "batches": [
        {"hashType": t, "kid": b64(k) if k else None, "entries": [{"hash": b64(h)} for h in sorted(set(hs))]}
        for t, k, hs in batches]}


def revocation_entry_of_text(text):
    """(SIGNATURE hash, signer kid or None) of an "HC1:" text (to revoke it by its signature); ValueError."""
    d = decode_envelope(inflate(native.b45decode(unprefix(text))))
    if type(d.alg) is not int or d.alg not in ALG_NAMES or not d.signature:
        raise ValueError("not a signed DCC (COSE alg unknown or no signature)")
    return signature_revocation_hash(d.alg, d.signature), (d.kid if isinstance(d.kid, bytes) and d.kid else None)


# ---------------------------------------------------------------- trust lists


def _b64(text):
    s = str(text).strip()
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _trust_entries(obj):
    """The entries ({"kid", "rawData", "certificateType"?, "country"?}) of a trust list, or None when `obj`
    is not one."""
    if isinstance(obj, dict) and isinstance(obj.get("certificates"), list):
        obj = obj["certificates"]
    if isinstance(obj, list):
        if not obj or not all(isinstance(e, dict) and isinstance(e.get("rawData"), str) for e in obj):
            return None
        return obj
    if isinstance(obj, dict) and obj and "keys" not in obj:
        if all(isinstance(k, str) and isinstance(c, str) and len(c) > 100 for k, c in obj.items()):
            return [{"kid": k, "rawData": c} for k, c in obj.items()]
    return None


SIGNER_TYPES = ("DSC", None)  # certificateType of the entries that sign DCCs (absent: a DSC)


def load_trust_json(store, obj):
    """Load a DCC trust list or revocation list into `store`; a true value when loaded, 0 when `obj` is neither.

    Trust lists (certificates as base64 DER; kid as base64 of the 8-byte key id):
      - the EU gateway's trust list export, a list of {"kid", "rawData", "country", "certificateType", ...};
      - the same wrapped as {"certificates": [...]} (the national DSC list downloads);
      - a plain map {"<kid base64>": "<certificate base64 DER>", ...}.
    Entries of certificateType "DSC" (or none) are signing certificates (`store.dcc_certs`), each
    stored under its computed key id (sha256(DER)[:8]) and, when the list gives a different one,
    under that too; their "country" is kept (`store.dcc_countries`). Entries of certificateType
    "CSCA" are country signing CAs (`store.dcc_cscas`, by country): a DSC of a country that has
    CSCAs must chain to one (see `chain_problem`). Other types (UPLOAD, AUTHENTICATION) are skipped.
    Revocation lists: see `parse_revocations` (into `store.dcc_revoked`).
    Raises CredentialError for a list with a broken entry.
    """
    batches = parse_revocations(obj)
    if batches is not None:
        n = add_revocations(store, batches)
        log.info("DCC revocation list: %d hashes in %d batches", n, len(batches))
        return n or True
    entries = _trust_entries(obj)
    if entries is None:
        return 0
    from device.credentials.trust import dcc_kid

    n = 0
    for i, entry in enumerate(entries):
        kid_text, ctype = entry.get("kid"), entry.get("certificateType")
        ctype = ctype.upper() if isinstance(ctype, str) else None
        try:
            cert = x509.load_der_x509_certificate(_b64(entry["rawData"]))
            listed = _b64(kid_text) if isinstance(kid_text, str) and kid_text else None
        except (ValueError, binascii.Error) as exc:
            raise CredentialError(
                f"DCC trust list entry {i}: the certificate (base64 DER) does not parse; "
                "re-download the trust list"
            ) from exc
        country = entry.get("country")
        country = country.upper() if isinstance(country, str) and country else _country_of(cert)
        if ctype == "CSCA":
            store.dcc_cscas.setdefault(country, []).append(cert)
            n += 1
            continue
        if ctype not in SIGNER_TYPES:
            log.info("DCC trust list entry %d: certificateType %s skipped (not a DSC or CSCA)", i, ctype[:20])
            continue
        kid = dcc_kid(cert)
        store.dcc_certs[kid] = cert
        if country:
            store.dcc_countries[kid] = country
        if listed and listed != kid:
            log.warning("DCC trust list entry %d: listed kid %s differs from %s", i, listed.hex(), kid.hex())
            store.dcc_certs[listed] = cert
            if country:
                store.dcc_countries[listed] = country
        n += 1
    log.info("DCC trust list: %d certificates (%d CSCAs in all)", n, sum(len(c) for c in store.dcc_cscas.values()))
    return n


# ---------------------------------------------------------------- policy rules


def _get(cfg, key, default):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _date(text):
    """A date or date-time text as an aware UTC datetime (dates at 00:00), or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return parse_time(text if "T" in text else text.strip()[:10])
    except ValueError:
        return None


def _int(x):
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return None


def rules(v, policy_cfg, at):
    """The DCC policy for a verified certificate: a reason code, or None when it passes.

    - vaccination: with dcc_require_complete_vaccination, dn >= sd (dose number >= doses in series);
    - recovery: at most dcc_recovery_days after the first positive test (fr), and not past du;
    - test: the result is "not detected" (260415000) and the sample was taken at most
      dcc_test_hours before (a sample time in the future beyond clock_skew_s: not_yet_valid).
    """
    at = _utc(at)
    c = v.claims or {}
    e = c.get("entry") if isinstance(c.get("entry"), dict) else {}
    kind = c.get("kind")
    if kind == "vaccination":
        if _get(policy_cfg, "dcc_require_complete_vaccination", True):
            dn, sd = _int(e.get("dn")), _int(e.get("sd"))
            if dn is None or sd is None or dn < 1 or dn < sd:
                return "vaccination_incomplete"
        return None
    if kind == "recovery":
        days = _get(policy_cfg, "dcc_recovery_days", 180)
        fr, du = _date(e.get("fr")), _date(e.get("du"))
        if fr is None:
            return "recovery_expired"
        if at > fr + timedelta(days=days):
            return "recovery_expired"
        if du is not None and at > du + timedelta(days=1):
            return "recovery_expired"
        return None
    if kind == "test":
        if str(e.get("tr", "")) != TEST_NOT_DETECTED:
            return "test_positive"
        hours = _get(policy_cfg, "dcc_test_hours", 72)
        sc = _date(e.get("sc"))
        if sc is None:
            return "test_expired"
        skew = timedelta(seconds=float(_get(policy_cfg, "clock_skew_s", 300.0) or 0.0))
        if sc > at + skew:
            return "not_yet_valid"
        if at - sc > timedelta(hours=hours):
            return "test_expired"
        return None
    return "schema"
