"""SMART Health Cards ("shc:/" numeric QR codes): decode, verify, issuer trust and the SHC policy rules.

A text is checked in these steps, each recorded in `Verification.steps` (None: not reached):

- `decode`:     "shc:/" + digits, two per character (value + 45), into a compact JWS
                (header.payload.signature, base64url) whose header says zip "DEF" and alg
                "ES256"; a lone chunk "shc:/N/M/..." with M > 1 fails with reason
                "incomplete" (the registry's ChunkAssembler, device/credentials/formats.py,
                joins the chunks of a card first with `parse_chunk` and `join_chunks`; "shc:/1/1/..." is a whole card);
- `inflate`:    the payload is raw DEFLATE, inflated to at most MAX_INFLATED bytes, and JSON
                with iss, nbf and vc; a vc whose type lacks "https://smarthealth.cards#health-card"
                or whose credentialSubject.fhirBundle is not a FHIR Bundle with entries fails with
                reason "schema" (the spec's two musts for what a card holds);
- `signature`:  a trusted key with the header's kid verifies the ES256 signature;
- `issuer`:     that kid belongs to the JWKS of the payload's iss (a key of one issuer cannot
                vouch for another);
- `time`:       nbf <= clock (+ skew) and, when the card has exp, clock <= exp;
- `revocation`: the card's rid is not in its issuer's CRL. An entry "rid.<t>" revokes only
                cards issued (nbf) before t. None when no CRL of that issuer is loaded.

Once the payload is read, the checks after `inflate` are all run and reported; `reason` is
the first failure. `kind` (vaccination or test) is set once the payload is read; `person`
(name, date of birth, kind, doses, issuer), `person_id`
(chot.personal.person_id_for_name_dob of family + given name and birth date) and
`credential_id` (the card's `vc.rid`, when it has one) only when signature and issuer passed.

Trust material (`load_trust_json`, called by device.credentials.trust for JSON files): an
issuer's jwks.json, with the issuer URL taken from a wrapper {"iss": ..., "keys": [...]}, a
file issuer.txt beside jwks.json or beside its .well-known directory, or the URI in the
subject alternative name of a key's x5c certificate (the spec requires it to be the iss). CRLs
in .well-known/crl/<kid>.json beside the jwks are loaded with it; a CRL file given on its own
(policy.shc_crl) is bound to the issuer through its kid.

Pure logic (apart from reading the CRLs beside a jwks at load time); `verify` never raises.
"""

import base64
import binascii
import hashlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from chot import personal
from chot.errors import CredentialError
from device.credentials import bounds, native
from device.credentials.result import Verification

log = logging.getLogger(__name__)

PREFIX = "shc:/"
MAX_TEXT = native.MAX_TEXT
MAX_INFLATED = bounds.MAX_INFLATED
MAX_VALIDITY_S = 3660 * 86400  # exp - nbf (10 years): SHC cards seldom have an exp at all
MAX_CRL_FILE = 8 * 1024 * 1024
STEPS = ("decode", "signature", "inflate", "issuer", "time", "revocation")
_CHUNK = re.compile(r"shc:/(\d{1,3})/(\d{1,3})/(\d*)", re.IGNORECASE)
_DIGITS = re.compile(r"\d*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_MAX_TIME = 2**40

# Vaccines complete after a single dose (CVX): Janssen / J&J.
SINGLE_DOSE_CVX = {"212"}
# LOINC codes of SARS-CoV-2 tests (RNA/NAAT and antigen) used on SMART Health Cards.
COVID_TEST_LOINC = {
    "94306-8", "94307-6", "94308-4", "94309-2", "94500-6", "94502-2", "94531-1", "94533-7", "94534-5",
    "94558-4", "94559-2", "94565-9", "94640-0", "94756-4", "94757-2", "94759-8", "94760-6", "94845-5",
    "95209-3", "95406-5", "95409-9", "95416-4", "95423-0", "95424-8", "95425-5", "95608-6", "96119-3",
    "96120-1", "96121-9", "96122-7", "96123-5", "96448-6", "96986-5", "97097-0", "97099-6",
}
NEGATIVE_SNOMED = {"260385009", "260415000"}  # Negative, Not detected
HEALTH_CARD = "https://smarthealth.cards#health-card"  # the type every SMART Health Card's vc has


# ---------------------------------------------------------------- chunks (several QR symbols)

# A SMART Health Card too large for one QR code was split (the spec's "chunking", deprecated
# since VCI 1.3.0 but in the wild and in the spec's example 02) into M symbols
# `shc:/<N>/<M>/<digits>`, N = 1..M. The JWS was cut into M consecutive pieces and each piece
# numeric-encoded, so the whole card is `shc:/` followed by the digits of parts 1..M in order.
# The parts carry no card id: a set is identified by M.
CHUNK = re.compile(r"shc:/(\d{1,3})/(\d{1,3})/(\d+)", re.IGNORECASE)
MAX_PARTS = 32  # more parts than this is no card anyone can show: passed on as it is


def parse_chunk(text):
    """(N, M, digits) for a chunk `shc:/N/M/digits` with 1 <= N <= M <= MAX_PARTS, else None."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return None
    m = CHUNK.fullmatch(text.strip())
    if not m:
        return None
    n, total, digits = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 1 <= n <= total <= MAX_PARTS:
        return None
    return n, total, digits


def join_chunks(parts):
    """The whole card `shc:/<digits>` from the digits of parts 1..M in order."""
    return PREFIX + "".join(parts)


# ---------------------------------------------------------------- helpers


def _utc(t):
    if t is None:
        return datetime.now(UTC)
    if isinstance(t, str):
        from device.credentials.dcc import parse_time

        t = parse_time(t)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def b64url_decode(text):
    """Decode unpadded base64url; ValueError when it is not."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def numeric_to_jws(text):
    """The compact JWS of a whole-card "shc:/<digits>" text; ValueError (or IncompleteError) otherwise."""
    if not isinstance(text, str):
        raise ValueError("not text")
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    t = text.strip()
    if t[:5].lower() != PREFIX:
        raise ValueError(f"not prefixed {PREFIX}")
    m = _CHUNK.fullmatch(t)
    if m:
        n, total = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= total:
            raise ValueError("bad chunk numbers")
        if total > 1:
            raise IncompleteError(f"chunk {n} of {total}: the other parts were not read")
        digits = m.group(3)
    else:
        digits = t[5:]
    if not digits or not _DIGITS.fullmatch(digits) or len(digits) % 2:
        raise ValueError("numeric part: not an even number of digits")
    out = []
    for i in range(0, len(digits), 2):
        n = int(digits[i:i + 2])
        if n > 77:
            raise ValueError("numeric part: a pair above 77")
        out.append(chr(n + 45))
    return "".join(out)


class IncompleteError(ValueError):
    """A lone chunk of a multi-part card."""


def inflate_raw(data, limit=MAX_INFLATED):
    """Raw-DEFLATE-inflate at most `limit` bytes; ValueError on bad, truncated or oversized data."""
    return native.inflate_bounded(data, limit, raw=True)


def _json(data, what):
    obj = bounds.loads_json(data, what)  # nesting and number lengths bounded before parsing
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: not a JSON object")
    return obj


def verify_es256(public_key, signing_input, signature):
    """True when the raw r||s ES256 `signature` verifies over `signing_input` (bytes).

    Either twin, (r, s) or (r, n - s), verifies: JWS (RFC 7518) and the SMART Health Cards
    specification do not require low-s, and issuers' libraries write both. Nothing in Chot is
    derived from the signature bytes: a twin is the same card, with the same `rid` and person id.
    """
    return native.verify_cose_signature(public_key, native.ALG_ES256, signing_input, signature)


# ---------------------------------------------------------------- the card's content


def _resources(payload):
    vc = payload.get("vc") if isinstance(payload.get("vc"), dict) else {}
    cs = vc.get("credentialSubject") if isinstance(vc.get("credentialSubject"), dict) else {}
    bundle = cs.get("fhirBundle") if isinstance(cs.get("fhirBundle"), dict) else {}
    entries = bundle.get("entry") if isinstance(bundle.get("entry"), list) else []
    for e in entries:
        r = e.get("resource") if isinstance(e, dict) else None
        if isinstance(r, dict):
            yield r


def _codes(concept):
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return []
    return [(str(c.get("system", "")), str(c.get("code", ""))) for c in concept["coding"] if isinstance(c, dict)]


def _patient(payload):
    for r in _resources(payload):
        if r.get("resourceType") == "Patient":
            return r
    return {}


def _name(patient):
    names = patient.get("name") if isinstance(patient.get("name"), list) else []
    n = names[0] if names and isinstance(names[0], dict) else {}
    family = n.get("family") if isinstance(n.get("family"), str) else ""
    given = n.get("given") if isinstance(n.get("given"), list) else []
    return family, " ".join(g for g in given if isinstance(g, str))


# What a card is, in the words of chot.personal.PERSON_FIELDS["kind"].
KINDS = {"immunization": "vaccination", "laboratory": "test"}


def _person(payload, claims, iss):
    """(person fields, person id or None, credential id or None) of a verified card."""
    p = _patient(payload)
    family, given = _name(p)
    family, given = family.strip()[:200], given.strip()[:200]
    dob = p.get("birthDate").strip()[:10] if isinstance(p.get("birthDate"), str) else ""
    kind = KINDS.get(claims.get("kind"))
    person = {"kind": kind} if kind else {}
    name = " ".join(f"{given} {family}".split())
    if name:
        person["name"] = name
    if dob:
        person["dob"] = dob
    imms = [i for i in claims.get("immunizations") or [] if i.get("status") in (None, "completed")]
    if imms:
        person["doses"] = len(imms)
        dates = sorted(i["date"][:10] for i in imms if i.get("date"))
        if dates:
            person["last_dose"] = dates[-1]
    person["issuer"] = iss
    try:
        person_id = personal.person_id_for_name_dob(f"{family} {given}", dob)
    except ValueError:  # no name, or no usable birth date
        person_id = None
    rid = payload["vc"].get("rid")
    return person, person_id, rid[:128] if isinstance(rid, str) and rid else None


def _claims(payload):
    vc = payload.get("vc") if isinstance(payload.get("vc"), dict) else {}
    imms, results = [], []
    for r in _resources(payload):
        kind = r.get("resourceType")
        if kind == "Immunization":
            cvx = [c for s, c in _codes(r.get("vaccineCode")) if s.endswith("/cvx")]
            imms.append({
                "cvx": cvx[0] if cvx else None,
                "status": r.get("status"),
                "date": r.get("occurrenceDateTime") if isinstance(r.get("occurrenceDateTime"), str) else None,
            })
        elif kind == "Observation":
            loinc = [c for s, c in _codes(r.get("code")) if "loinc" in s]
            values = [c for _s, c in _codes(r.get("valueCodeableConcept"))]
            results.append({
                "loinc": loinc[0] if loinc else None,
                "value": values[0] if values else None,
                "status": r.get("status"),
                "date": r.get("effectiveDateTime") if isinstance(r.get("effectiveDateTime"), str) else None,
            })
    types = [t for t in vc.get("type", []) if isinstance(t, str)] if isinstance(vc.get("type"), list) else []
    kind = "immunization" if imms else ("laboratory" if results else None)
    return {"kind": kind, "types": types, "immunizations": imms, "results": results[:50]}


# ---------------------------------------------------------------- verification


def _first_open_step(v):
    return next((s for s in STEPS if v.steps.get(s) is None), STEPS[-1])


def verify(text, trust=None, at=None, skew_s: float = 0.0, trace=None) -> Verification:
    """Verify a "shc:/" text against `trust` (a TrustStore; None trusts nothing) at `at` (default now).

    Never raises. `trace`, a dict, receives the JWS and the payload.
    """
    v = Verification(text=text if isinstance(text, str) else None, format="shc", steps=dict.fromkeys(STEPS))
    try:
        return _verify(v, text, trust, _utc(at), float(skew_s or 0.0), trace if trace is not None else {})
    except Exception as exc:  # noqa: BLE001 - last resort: a bug must not stop the terminal
        log.error("SHC verification failed unexpectedly (%s)", type(exc).__name__, exc_info=True)
        return v.fail(_first_open_step(v), "unreadable", f"internal error ({type(exc).__name__})")


def _keys_with_kid(issuers, kid):
    """[(issuer, key)] of every trusted issuer whose JWKS has a key with this kid."""
    return [(iss, keys[kid]) for iss, keys in issuers.items() if kid in keys]


def _is_number(x):
    return isinstance(x, int | float) and not isinstance(x, bool)


def _revoked(entries, rid, nbf):
    for entry in entries:
        base, _, ts = entry.partition(".")
        if base != rid:
            continue
        if not ts:
            return True
        try:
            t = float(ts)
        except ValueError:
            return True
        if nbf is None or nbf.timestamp() < t:
            return True
    return False


def _vc_problem(vc):
    """What is wrong with the shape of a card's `vc` (the spec's musts), or None."""
    types = vc.get("type")
    if not isinstance(types, list) or HEALTH_CARD not in types:
        return f"payload: vc.type lacks {HEALTH_CARD}"
    cs = vc.get("credentialSubject")
    bundle = cs.get("fhirBundle") if isinstance(cs, dict) else None
    if not (isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle"
            and isinstance(bundle.get("entry"), list) and bundle["entry"]):
        return "payload: vc.credentialSubject.fhirBundle is not a FHIR Bundle with entries"
    return None


def _verify(v, text, trust, at, skew_s, trace):
    try:
        jws = numeric_to_jws(text)
        parts = jws.split(".")
        if len(parts) != 3:
            raise ValueError("not a compact JWS (header.payload.signature)")
        header = _json(b64url_decode(parts[0]), "JWS header")
        compressed, signature = b64url_decode(parts[1]), b64url_decode(parts[2])
        if header.get("zip") != "DEF":
            raise ValueError('JWS header: zip is not "DEF"')
    except IncompleteError as exc:
        return v.fail("decode", "incomplete", str(exc))
    except ValueError as exc:
        reason = "unknown_format" if "not prefixed" in str(exc) else "unreadable"
        return v.fail("decode", reason, str(exc))
    v.steps["decode"] = True
    trace["jws"] = jws

    # The signature first: it covers the header and the payload as sent (compressed), so a card
    # that no trusted key signed is never inflated nor parsed. Its key is found by the header's
    # kid among every trusted issuer's keys; the payload's iss must then be one of the issuers
    # whose key verified it (the `issuer` step).
    issuers = getattr(trust, "shc_issuers", None) or {}
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    candidates = _keys_with_kid(issuers, kid) if kid else []
    if header.get("alg") != "ES256":
        return v.fail("signature", "bad_signature", "JWS alg is not ES256")
    if not candidates:
        return v.fail("signature", "unknown_issuer", "no trusted key with this key id")
    signing_input = (parts[0] + "." + parts[1]).encode("ascii")
    owners = [iss for iss, key in candidates if verify_es256(key, signing_input, signature)]
    if not owners:
        return v.fail("signature", "bad_signature", "the signature does not verify with the issuer's key")
    v.steps["signature"] = True

    try:
        payload = _json(inflate_raw(compressed), "JWS payload")
    except ValueError as exc:
        return v.fail("inflate", "unreadable", str(exc))
    iss, nbf_raw, exp_raw = payload.get("iss"), payload.get("nbf"), payload.get("exp")
    if not isinstance(iss, str) or not iss or not _is_number(nbf_raw) or not isinstance(payload.get("vc"), dict):
        return v.fail("inflate", "unreadable", "payload: iss, nbf or vc missing")
    shape = _vc_problem(payload["vc"])
    if shape:
        return v.fail("inflate", "schema", shape)
    v.steps["inflate"] = True
    trace["payload"] = payload
    times = bounds.time_problem(nbf_raw, exp_raw if _is_number(exp_raw) else None, MAX_VALIDITY_S, "nbf")
    nbf = exp = None
    if times is None:
        nbf = native.epoch_time(nbf_raw)
        exp = native.epoch_time(exp_raw) if _is_number(exp_raw) else None
    v.issuer, v.not_before, v.issued_at, v.expires_at = iss[:200], nbf, nbf, exp
    v.claims = _claims(payload)
    v.kind = KINDS.get(v.claims["kind"])

    if iss not in issuers:
        v.fail("issuer", "unknown_issuer", "the card's issuer (iss) is not trusted")
    elif iss not in owners:
        v.fail("issuer", "unknown_issuer", "the signing key does not belong to the card's issuer")
    else:
        v.steps["issuer"] = True

    if times:
        v.fail("time", "bad_validity", times)
    elif "exp" in payload and exp is None:
        v.fail("time", "unreadable", "exp is not a time")
    elif nbf > at + timedelta(seconds=skew_s):
        v.fail("time", "not_yet_valid", "nbf is after the evaluation time")
    elif exp is not None and at > exp:
        v.fail("time", "expired", "past its expiry (exp)")
    else:
        v.steps["time"] = True

    revoked = getattr(trust, "shc_revoked", None) or {}
    rid = payload["vc"].get("rid")
    if iss in revoked:
        if isinstance(rid, str) and _revoked(revoked[iss], rid, nbf):
            v.fail("revocation", "revoked", "the card is on its issuer's revocation list")
        else:
            v.steps["revocation"] = True

    if v.steps["signature"] and v.steps["issuer"]:
        v.person, v.person_id, v.credential_id = _person(payload, v.claims, v.issuer)
    return v


# ---------------------------------------------------------------- trust: JWKS and CRLs


def jwk_thumbprint(jwk):
    """The RFC 7638 thumbprint of an EC JWK: base64url(SHA-256) of its required members (crv, kty, x, y)
    in lexicographic order, without whitespace. An SHC issuer's kid must be it."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


def jwk_public_key(jwk):
    """The P-256 public key of an ES256 JWK; ValueError for any other key."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not an EC P-256 key")
    if jwk.get("alg") not in (None, "ES256") or jwk.get("use") not in (None, "sig"):
        raise ValueError("not an ES256 signing key")
    if "d" in jwk:
        raise ValueError("a private key")
    x, y = b64url_decode(jwk.get("x", "")), b64url_decode(jwk.get("y", ""))
    if len(x) != 32 or len(y) != 32:
        raise ValueError("bad coordinates")
    nums = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1())
    return nums.public_key()


def _iss_from_x5c(keys):
    for jwk in keys:
        chain = jwk.get("x5c") if isinstance(jwk, dict) else None
        if not isinstance(chain, list) or not chain:
            continue
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except (ValueError, binascii.Error, x509.ExtensionNotFound):
            continue
        if uris:
            return uris[0]
    return None


def _iss_from_files(path):
    if path is None:
        return None
    path = Path(path)
    candidates = [path.parent / "issuer.txt"]
    if path.parent.name == ".well-known":
        candidates.append(path.parent.parent / "issuer.txt")
    for c in candidates:
        try:
            text = c.read_text("utf-8").strip().splitlines()
        except OSError:
            continue
        if text and text[0].strip():
            return text[0].strip()
    return None


def _add_crl(store, obj, iss, where):
    rids = obj.get("rids")
    if not isinstance(rids, list) or not all(isinstance(r, str) for r in rids):
        raise CredentialError(f"SHC CRL {where}: 'rids' must be a list of texts; re-download the CRL")
    store.shc_revoked.setdefault(iss, set()).update(rids)
    log.info("SHC CRL for kid %s: %d revoked rids", str(obj.get("kid"))[:64], len(rids))
    return len(rids) or True


def _is_crl(obj):
    return isinstance(obj, dict) and obj.get("method") == "rid" and isinstance(obj.get("kid"), str) and "rids" in obj


def load_trust_json(store, obj, path=None):
    """Load an SHC issuer's JWKS (or a CRL) into `store`; a true value when loaded, 0 when `obj` is neither.

    JWKS: {"keys": [...]} or {"iss": "...", "keys": [...]}; the issuer URL as described in the
    module docstring, else CredentialError. Only ES256 (EC P-256) keys are taken. CRLs found at
    <jwks dir>/crl/<kid>.json are loaded too. CRL: {"kid", "method": "rid", "rids": [...]}; its
    issuer must be loaded first (the kid tells which), or the CRL may name it in "iss".
    """
    where = str(path) if path is not None else "(JSON)"
    if _is_crl(obj):
        iss = obj.get("iss") if isinstance(obj.get("iss"), str) else None
        if iss is None:
            iss = next((i for i, keys in store.shc_issuers.items() if obj["kid"] in keys), None)
        if iss is None:
            raise CredentialError(
                f"SHC CRL {where}: no loaded issuer has key {obj['kid'][:64]}; list the issuer's jwks.json "
                "before its CRL (policy.trusted_issuers comes before policy.shc_crl)"
            )
        return _add_crl(store, obj, iss, where)
    if not isinstance(obj, dict) or not isinstance(obj.get("keys"), list):
        return 0
    keys = obj["keys"]
    iss = obj.get("iss") if isinstance(obj.get("iss"), str) else None
    iss = iss or _iss_from_files(path) or _iss_from_x5c(keys)
    if not iss:
        raise CredentialError(
            f"SHC issuer keys {where}: the issuer URL is unknown; put it in issuer.txt beside the jwks.json, "
            'or wrap the keys as {"iss": "https://issuer.example", "keys": [...]}'
        )
    loaded, skipped = {}, []
    for jwk in keys:
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if not isinstance(kid, str) or not kid:
            continue
        try:
            loaded[kid] = jwk_public_key(jwk)
        except ValueError as exc:
            log.info("SHC issuer %s: key %s skipped (%s)", iss, kid[:64], exc)
            skipped.append(f"{kid[:64]}: {exc}")
            continue
        if kid != jwk_thumbprint(jwk):
            # the spec wants the thumbprint; the kid is only how a card names its key, the signature
            # is what is checked, so the key is trusted all the same and the technician is told
            log.warning("SHC issuer %s: key %s has a kid that is not its JWK thumbprint (RFC 7638), as the "
                        "SMART Health Cards spec requires; trusted as published", iss, kid[:64])
    if not loaded:
        why = f" (skipped: {'; '.join(skipped[:5])})" if skipped else ""
        raise CredentialError(f"SHC issuer keys {where}: no ES256 (EC P-256) signing key in it{why}")
    store.shc_issuers.setdefault(iss, {}).update(loaded)
    log.info("SHC issuer %s: %d keys", iss, len(loaded))
    if path is not None:
        crl_dir = Path(path).parent / "crl"
        for kid in loaded:
            crl = crl_dir / f"{kid}.json"
            try:
                if not crl.is_file() or crl.stat().st_size > MAX_CRL_FILE:
                    continue
                cobj = json.loads(crl.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise CredentialError(f"SHC CRL {crl} is not readable JSON ({exc}); re-download it") from exc
            if _is_crl(cobj):
                _add_crl(store, cobj, iss, crl)
    return len(loaded)


# ---------------------------------------------------------------- policy rules


def _get(cfg, key, default):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _when(text):
    if not isinstance(text, str) or not text:
        return None
    from device.credentials.dcc import parse_time

    try:
        return parse_time(text if "T" in text else text[:10])
    except ValueError:
        return None


def vaccination_complete(immunizations):
    """Complete: two completed doses, or one of a single-dose vaccine (SINGLE_DOSE_CVX)."""
    done = [i for i in immunizations if i.get("status") in (None, "completed")]
    return len(done) >= 2 or any(i.get("cvx") in SINGLE_DOSE_CVX for i in done)


def rules(v, policy_cfg, at):
    """The SHC policy for a verified card: a reason code, or None when it passes.

    - an immunization card: with shc_require_complete_vaccination (default true), the series
      must be complete (`vaccination_complete`), else vaccination_incomplete;
    - a laboratory card: a SARS-CoV-2 test (COVID_TEST_LOINC) must be negative (test_positive)
      and taken at most dcc_test_hours before (test_expired);
    - any other card proves neither: vaccination_incomplete.
    """
    at = _utc(at)
    c = v.claims or {}
    if c.get("kind") == "immunization":
        if _get(policy_cfg, "shc_require_complete_vaccination", True) and not vaccination_complete(
            c.get("immunizations") or []
        ):
            return "vaccination_incomplete"
        return None
    tests = [r for r in c.get("results") or [] if r.get("loinc") in COVID_TEST_LOINC]
    if not tests:
        return "vaccination_incomplete"
    latest = max(tests, key=lambda r: _when(r.get("date")) or datetime.min.replace(tzinfo=UTC))
    if latest.get("value") not in NEGATIVE_SNOMED:
        return "test_positive"
    when = _when(latest.get("date"))
    hours = _get(policy_cfg, "dcc_test_hours", 72)
    if when is None or at - when > timedelta(hours=hours):
        return "test_expired"
    skew = timedelta(seconds=float(_get(policy_cfg, "clock_skew_s", 300.0) or 0.0))
    if when > at + skew:
        return "not_yet_valid"
    return None
