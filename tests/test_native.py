"""The native declaration (CHOT2:): issue, verify, and every way a bad one must fail.

Each case goes through the same `Checker` (verification + policy) that the terminal uses and
asserts the decision and its reason code; nothing may raise on any input.
"""

import base64
import hashlib
import json
import math
import os
import random
import zlib
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chot import personal
from chot.errors import CredentialError
from device.credentials import keys, native
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker, Policy
from device.credentials.reasons import REASONS
from device.credentials.trust import TrustStore, dcc_kid
from device.credentials.verify import format_of, verify_text

AT = datetime(2021, 8, 9, 8, 0, tzinfo=UTC)
SMALL_ARGON2 = {"t": 1, "m_kib": 8192, "p": 1}  # fast, for tests
PERSON = {
    "id_number": "001090012345",
    "name": "Nguyễn Văn An",
    "dob": "1990-05-17",
    "phone": "0912345678",
    "purpose": "resident",
    "doses": 2,
}


@pytest.fixture(scope="module", params=["ed25519", "es256"])
def issuer(request):
    return keys.generate(request.param)


@pytest.fixture(scope="module")
def ed_key():
    return keys.generate("ed25519")


def store_for(*private_keys):
    t = TrustStore()
    for k in private_keys:
        t.add_native_key(k.public_key())
    return t


def issue(key, at=AT - timedelta(hours=1), hours=24, **changes):
    return issue_declaration(key, {**PERSON, **changes}, at, timedelta(hours=hours))


def check(text, trust, at=AT, **policy):
    return Checker(trust, Policy(policy)).check(text, at)


def cose_parts(text):
    raw = native.b45decode(text[len(native.PREFIX):])
    protected, _p, unprot, payload, sig = native.parse_sign1(raw)
    return [protected, dict(unprot), payload, sig]


def encode(parts, tag=None):
    obj = cbor2.CBORTag(tag, parts) if tag else parts
    return native.PREFIX + native.b45encode(cbor2.dumps(obj))


# ---------------------------------------------------------------- base45, inflate


def test_base45_rfc9285_vectors():
    assert native.b45encode(b"AB") == "BB8"
    assert native.b45encode(b"Hello!!") == "%69 VD92EX0"
    assert native.b45encode(b"base-45") == "UJCLQE7W581"
    assert native.b45decode("QED8WEX0") == b"ietf!"
    for bad in ("GGW", "A", "abc", "ZZZZ"):  # 65536+, bad length, lower case, bad length
        with pytest.raises(ValueError):
            native.b45decode(bad)


@given(st.binary(max_size=300))
def test_base45_roundtrip(data):
    assert native.b45decode(native.b45encode(data)) == data


def test_inflate_is_bounded():
    bomb = zlib.compress(b"\0" * (10 * 1024 * 1024), 9)
    with pytest.raises(ValueError, match="beyond"):
        native.inflate_bounded(bomb)
    with pytest.raises(ValueError, match="truncated"):
        native.inflate_bounded(zlib.compress(os.urandom(2000))[:-10])
    with pytest.raises(ValueError):
        native.inflate_bounded(b"\x78\x9c garbage")


# ---------------------------------------------------------------- the good path


def test_issued_declaration_passes(issuer):
    text = issue(issuer)
    assert text.startswith("CHOT2:") and format_of(text) == "native"
    v, d = check(text, store_for(issuer))
    assert (d.decision, d.reason) == ("PASS", "ok")
    assert v.format == "native" and v.verified and v.reason is None
    assert list(v.steps) == ["decode", "signature", "issuer", "time"]
    assert all(v.steps.values())
    assert v.person_id == personal.person_id_for_id(PERSON["id_number"]) == "id:001090012345"
    assert v.issuer == keys.kid_of(issuer)[:4].hex() == native.kid_of(issuer).hex() == v.person["issuer"]
    assert v.kind == "declaration" == v.person["kind"]
    assert v.credential_id == native.decode(text).fields["declaration_id"] and len(v.credential_id) == 16
    assert v.person == {
        "id_number": PERSON["id_number"], "name": PERSON["name"], "phone": PERSON["phone"], "dob": PERSON["dob"],
        "health": {"symptoms": False, "contact": False, "travel": False},
        "purpose": "resident", "doses": 2, "issuer": v.issuer, "kind": "declaration",
    }
    assert set(v.person) <= set(personal.PERSON_FIELDS)
    shown = repr(v) + repr(d)
    for secret in (PERSON["id_number"], PERSON["name"], PERSON["phone"], "Nguy", PERSON["dob"], v.credential_id):
        assert secret not in shown and secret not in (v.detail or "")
    assert not hasattr(native, "summary")
    assert v.claims == {"symptoms": False, "contact": False, "travel": False, "doses": 2,
                        "last_dose": None, "purpose": "resident"}
    assert v.expires_at - v.issued_at == timedelta(hours=24)


def test_kid_is_sha256_of_spki(issuer):
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = hashlib.sha256(spki).digest()[:8]
    assert keys.kid_of(issuer) == kid == keys.kid_of(issuer.public_key())
    protected = cbor2.loads(cose_parts(issue(issuer))[0])
    assert protected[4] == kid[:4] == native.kid_of(issuer)
    assert protected[1] == (-8 if isinstance(issuer, ed25519.Ed25519PrivateKey) else -7)


def test_es256_signature_is_raw_r_s():
    k = keys.generate("es256")
    sig = cose_parts(issue(k))[3]
    assert len(sig) == 64


def test_fake_identities_all_pass(ed_key):
    trust = store_for(ed_key)
    people = make_test_identities(30, seed=7)
    for p in people:
        v, d = check(issue_declaration(ed_key, p, AT, timedelta(hours=12)), trust)
        assert d.passed, (d, v.detail)
        assert v.person_id == personal.person_id_for_id(p["id_number"]) and v.person["name"] == p["name"]


# ---------------------------------------------------------------- forged and tampered


def test_forged_with_trusted_kid_is_bad_signature(issuer):
    attacker = keys.generate("ed25519" if isinstance(issuer, ed25519.Ed25519PrivateKey) else "es256")
    protected, unprot, payload, _sig = cose_parts(issue(issuer))
    payload_claims = cbor2.loads(payload)
    payload_claims[native.C_ANSWERS] = 0
    payload = cbor2.dumps(payload_claims)
    forged_sig = native.cose_sign(attacker, native.sig_structure(protected, payload))
    v, d = check(encode([protected, unprot, payload, forged_sig]), store_for(issuer))
    assert (d.decision, d.reason) == ("FAIL", "bad_signature")
    assert v.steps == {"decode": True, "signature": False, "issuer": True, "time": None}


def test_unknown_issuer(issuer, ed_key):
    stranger = keys.generate("es256")
    v, d = check(issue(stranger), store_for(issuer, ed_key))
    assert (d.decision, d.reason) == ("FAIL", "unknown_issuer")
    assert v.steps == {"decode": True, "signature": None, "issuer": False, "time": None}
    v, d = check(issue(stranger), TrustStore())
    assert d.reason == "unknown_issuer"
    v, d = check(issue(stranger), None)
    assert d.reason == "unknown_issuer"


def test_tampered_payload_field_is_bad_signature(issuer):
    text = issue(issuer, symptoms=True)
    protected, unprot, payload, sig = cose_parts(text)
    claims = cbor2.loads(payload)
    claims[native.C_ANSWERS] &= ~native.H_SYMPTOMS  # hide the symptoms
    v, d = check(encode([protected, unprot, cbor2.dumps(claims), sig]), store_for(issuer))
    assert d.reason == "bad_signature"
    claims = cbor2.loads(payload)
    claims[native.C_VALID] += 60 * 24 * 365  # extend the validity
    v, d = check(encode([protected, unprot, cbor2.dumps(claims), sig]), store_for(issuer))
    assert d.reason == "bad_signature"


def test_bit_flips_in_payload_and_signature_never_pass(issuer):
    text = issue(issuer)
    protected, unprot, payload, sig = cose_parts(text)
    trust = store_for(issuer)
    rng = random.Random(3)
    seen = set()
    for i in range(120):
        which = i % 2
        target = bytearray(payload if which == 0 else sig)
        pos = rng.randrange(len(target))
        target[pos] ^= 1 << rng.randrange(8)
        parts = [protected, unprot, bytes(target), sig] if which == 0 else [protected, unprot, payload, bytes(target)]
        v, d = check(encode(parts), trust)
        assert d.decision == "FAIL"
        assert d.reason in ("bad_signature", "unreadable"), d
        seen.add(d.reason)
        if which == 1:
            assert d.reason == "bad_signature"
    assert "bad_signature" in seen


def test_bit_flips_in_the_qr_text_never_pass(ed_key):
    text = issue(ed_key)
    trust = store_for(ed_key)
    rng = random.Random(5)
    for _ in range(150):
        chars = list(text)
        pos = rng.randrange(len(native.PREFIX), len(chars))
        chars[pos] = rng.choice(native.B45.replace(chars[pos], ""))
        v, d = check("".join(chars), trust)
        # without zlib's checksum a change in the key id reads as another issuer's declaration
        assert d.decision == "FAIL" and d.reason in ("bad_signature", "unreadable", "unknown_issuer"), d


def test_algorithm_confusion_fails(ed_key):
    """A protected header claiming ES256 for an Ed25519 issuer's kid: the signature cannot verify."""
    protected, unprot, payload, sig = cose_parts(issue(ed_key))
    hdr = cbor2.loads(protected)
    hdr[1] = -7
    protected = cbor2.dumps(hdr)
    v, d = check(encode([protected, unprot, payload, sig]), store_for(ed_key))
    assert d.reason == "bad_signature"


def test_kid_only_unprotected_is_unreadable(ed_key):
    protected, unprot, payload, sig = cose_parts(issue(ed_key))
    hdr = cbor2.loads(protected)
    kid = hdr.pop(4)
    v, d = check(encode([cbor2.dumps(hdr), {4: kid}, payload, sig]), store_for(ed_key))
    assert d.reason == "unreadable" and v.steps["decode"] is False


def test_untagged_sign1_is_read(ed_key):
    v, d = check(encode(cose_parts(issue(ed_key)), tag=None), store_for(ed_key))
    assert d.passed


# ---------------------------------------------------------------- time


def test_expired_and_not_yet_valid(issuer):
    trust = store_for(issuer)
    text = issue(issuer, at=AT - timedelta(hours=25), hours=24)
    v, d = check(text, trust, max_age_h=48)
    assert d.reason == "expired" and v.steps["time"] is False and v.steps["signature"] is True
    text = issue(issuer, at=AT + timedelta(hours=2))
    v, d = check(text, trust)
    assert d.reason == "not_yet_valid" and v.steps["time"] is False
    # Within the clock skew (default 300 s) a terminal slightly behind still accepts it.
    v, d = check(issue(issuer, at=AT + timedelta(seconds=200)), trust)
    assert d.passed
    v, d = check(issue(issuer, at=AT + timedelta(seconds=200)), trust, clock_skew_s=60)
    assert d.reason == "not_yet_valid"


def test_exactly_at_expiry_is_valid(ed_key):
    text = issue(ed_key, at=AT - timedelta(hours=24), hours=24)
    v, d = check(text, store_for(ed_key))
    assert v.steps["time"] is True
    v, d = check(text, store_for(ed_key), at=AT + timedelta(seconds=1))
    assert d.reason == "expired"


# ---------------------------------------------------------------- health answers


@pytest.mark.parametrize(
    "answers, reason",
    [({"symptoms": True}, "symptoms_declared"), ({"contact": True}, "contact_declared"),
     ({"symptoms": True, "contact": True}, "symptoms_declared")],
)
def test_health_answers_fail(issuer, answers, reason):
    v, d = check(issue(issuer, **answers), store_for(issuer))
    assert v.verified and (d.decision, d.reason) == ("FAIL", reason)


def test_denylisted_and_revoked(ed_key):
    from device.credentials.denylist import DenyList

    trust = store_for(ed_key)
    text = issue(ed_key)
    deny = DenyList.build(1, [personal.person_id_for_id("001 090 012 345")], params=SMALL_ARGON2)
    v, d = Checker(trust, Policy({}, deny)).check(text, AT)
    assert (d.decision, d.reason) == ("FAIL", "denylisted")
    other = issue(ed_key, id_number="001090099999")
    v, d = Checker(trust, Policy({}, deny)).check(other, AT)
    assert d.passed
    revoked = DenyList.build(2, credential_ids=[v.credential_id], params=SMALL_ARGON2)
    assert Checker(trust, Policy({}, revoked)).check(other, AT)[1].reason == "revoked"
    assert Checker(trust, Policy({}, revoked)).check(text, AT)[1].passed


def test_unusable_id_number_is_unreadable(ed_key):
    """A signed declaration whose ID number is not letters and digits names nobody: unreadable."""
    protected, unprot, payload, _sig = cose_parts(issue(ed_key))
    claims = cbor2.loads(payload)
    claims[native.C_ID] = "số CCCD?"
    payload = cbor2.dumps(claims)
    sig = native.cose_sign(ed_key, native.sig_structure(protected, payload))
    v, d = check(encode([protected, unprot, payload, sig]), store_for(ed_key))
    assert (d.decision, d.reason) == ("FAIL", "unreadable") and v.steps["decode"] is False
    assert v.person == {} and v.person_id is None


# ---------------------------------------------------------------- plain, unknown, garbled


@pytest.mark.parametrize(
    "text, kind",
    [("001090012345", "id_text"), ("012345678", "id_text"), ("001 090.012-345", "id_text"),
     ("https://tokhaiyte.vn/?id=abc123", "url"), ("Xin chào", "text"), ("12345", "text")],
)
def test_unsigned_plain_texts(ed_key, text, kind):
    v, d = check(text, store_for(ed_key))
    assert v.format == "plain" and v.kind == kind and not v.verified
    assert (d.decision, d.reason) == ("FAIL", "unsigned")
    assert text not in repr(v)
    if kind == "id_text":
        assert v.person == {"id_number": personal.normalise_id_number(text.replace(" ", "")), "kind": "id_text"}
        assert v.person_id == personal.person_id_for_id(text)
    else:  # nothing taken from the text: no person, no id, no hash of it
        assert v.person == {} and v.person_id is None and v.credential_id is None
    v, d = check(text, store_for(ed_key), accept_plain=True)
    assert d.passed


def test_plain_id_names_the_same_person_as_the_declaration(ed_key):
    v = verify_text("001090012345\n", None, AT)
    signed, _ = check(issue(ed_key), store_for(ed_key))
    assert v.person_id == signed.person_id == "id:001090012345"
    assert v.credential_id is None and v.reason == "unsigned"


def _garbled(key):
    good = issue(key)
    huge = zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"\0" * 200_000, b""])), 9)  # never inflated
    return {
        "random base45": native.PREFIX + "".join(random.Random(1).choice(native.B45) for _ in range(300)),
        "truncated": good[: len(good) // 2],
        "truncated by one": good[:-1],
        "zlib": native.PREFIX + native.b45encode(zlib.compress(cbor2.dumps(cose_parts(good)))),
        "bad zlib": native.PREFIX + native.b45encode(b"\x78\x9c" + os.urandom(120)),
        "not zlib": native.PREFIX + native.b45encode(os.urandom(120)),
        "huge decompression": native.PREFIX + native.b45encode(huge),
        "bad base45": good[:20] + "abc" + good[23:],
        "prefix only": native.PREFIX,
        "not cose": native.PREFIX + native.b45encode(cbor2.dumps({"a": 1})),
        "cose with junk payload": encode([b"\xa2\x01\x27\x04\x44" + b"1234", {}, b"\xff\xfe", b"x" * 64]),
        "an 8-byte kid (CHOT1)": encode([cbor2.dumps({1: -8, 4: keys.kid_of(key)})] + cose_parts(good)[1:]),
        "CHOT1": "CHOT1:" + good[len(native.PREFIX):],
        "oversized": native.PREFIX + "A" * 9000,
    }


def test_garbled_declarations_are_unreadable(ed_key):
    trust = store_for(ed_key)
    for name, text in _garbled(ed_key).items():
        v, d = check(text, trust)
        assert v.format == "native", name
        assert (d.decision, d.reason) == ("FAIL", "unreadable"), (name, d, v.detail)
        assert v.steps["decode"] is False and v.steps["signature"] is None, name


@pytest.mark.parametrize("data", [b"\x00\xff\xfe binary", "\x00\x01\x02", "abc\x07def"])
def test_binary_is_unknown_format(data):
    v = verify_text(data, None, AT)
    assert v.format == "unknown" and v.reason == "unknown_format"


@pytest.mark.parametrize("data", [None, "", "   ", 42, b""])
def test_empty_or_wrong_type_is_unreadable(data):
    v = verify_text(data, None, AT)
    assert v.format == "unknown" and v.reason == "unreadable"


def test_dcc_and_shc_prefixes_dispatch_without_raising():
    for text, fmt in (("HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH", "dcc"), ("shc:/5676290952432060", "shc")):
        v = verify_text(text, TrustStore(), AT)
        assert v.format == fmt and not v.verified and v.reason in REASONS


def test_internal_error_becomes_unreadable(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(native, "verify", boom)
    v = verify_text("CHOT1:ABC", None, AT)
    assert v.format == "native" and v.reason == "unreadable" and "RuntimeError" in v.detail


# ---------------------------------------------------------------- fuzz: never raises


def _assert_sane(v, d=None):
    assert v.format in ("native", "dcc", "shc", "plain", "unknown")
    assert v.reason is None or v.reason in REASONS
    if d is not None:
        assert d.decision in ("PASS", "FAIL") and d.reason in REASONS


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.text(max_size=500), st.binary(max_size=500)))
def test_fuzz_any_input(data):
    _assert_sane(verify_text(data, None, AT))


@FUZZ
@given(st.text(alphabet=native.B45, max_size=600))
def test_fuzz_prefixed_base45(body):
    v = verify_text(native.PREFIX + body, TrustStore(), AT)
    _assert_sane(v)
    assert v.format == "native" and not v.verified


@FUZZ
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.integers(-70001, 10), c, max_size=5),
    max_leaves=25,
))
def test_fuzz_cbor_structures(obj):
    """Well-formed COSE/CBOR with any content inside: decoded or refused, never raising."""
    for parts in (obj, [cbor2.dumps({1: -8, 4: b"1234"}), {}, cbor2.dumps(obj), b"s" * 64]):
        try:
            text = encode(parts)
        except Exception:
            return
        _assert_sane(verify_text(text, TrustStore(), AT))


def test_fuzz_mutated_real_payload(ed_key):
    """Mutations of a real COSE payload: never raise, never pass."""
    trust = store_for(ed_key)
    cose = bytearray(native.b45decode(issue(ed_key)[6:]))
    rng = random.Random(11)
    checker = Checker(trust, Policy({}))
    for _ in range(400):
        m = bytearray(cose)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(m))
            if op == 0:
                m[pos] = rng.randrange(256)
            elif op == 1:
                del m[pos]
            else:
                m.insert(pos, rng.randrange(256))
        text = native.PREFIX + native.b45encode(bytes(m))
        v, d = checker.check(text, AT)
        _assert_sane(v, d)
        if d.passed:  # only a change to the unsigned parts (unprotected header) may still verify
            assert native.parse_sign1(bytes(m))[3] == native.parse_sign1(bytes(cose))[3]


# ---------------------------------------------------------------- the trust store


def _self_signed(key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Chot test issuer")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(AT - timedelta(days=1)).not_valid_after(AT + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def test_trust_store_sniffs_files(tmp_path):
    ed, es = keys.generate("ed25519"), keys.generate("es256")
    (tmp_path / "ed.pub.pem").write_bytes(keys.public_pem(ed))
    (tmp_path / "es.der").write_bytes(keys.spki_der(es))
    cert_key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(cert_key)
    (tmp_path / "signer.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "signer.cer").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    store = TrustStore.load([tmp_path / "ed.pub.pem", tmp_path / "es.der", tmp_path / "signer.crt"])
    assert set(store.native_keys) == {keys.kid_of(ed), keys.kid_of(es)}
    assert set(store.dcc_certs) == {dcc_kid(cert)}
    assert dcc_kid(cert) == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()[:8]
    store2 = TrustStore.load([tmp_path])  # a directory: every file in it
    assert set(store2.native_keys) == set(store.native_keys) and set(store2.dcc_certs) == set(store.dcc_certs)
    # A certificate is a DCC signer only: a declaration signed by its key is not trusted through it
    # (issue 11: trust is kept apart per format); the native issuer's public key is what trusts it.
    assert check(issue(cert_key), store)[1].reason == "unknown_issuer"
    assert check(issue(es), store)[1].passed


def test_trust_store_errors(tmp_path):
    k = keys.generate("ed25519")
    priv = tmp_path / "issuer.key.pem"
    priv.write_bytes(keys.private_pem(k))
    with pytest.raises(CredentialError, match="PRIVATE"):
        TrustStore.load([priv])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(200))
    with pytest.raises(CredentialError, match="accepted"):
        TrustStore.load([junk])
    with pytest.raises(CredentialError, match="does not exist"):
        TrustStore.load([tmp_path / "missing.pem"])
    bad_json = tmp_path / "x.json"
    bad_json.write_text("{not json")
    with pytest.raises(CredentialError, match="JSON"):
        TrustStore.load([bad_json])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CredentialError):
        TrustStore.load([other])
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pub = tmp_path / "rsa.pem"
    rsa_pub.write_bytes(keys.public_pem(rsa.generate_private_key(65537, 2048)))
    with pytest.raises(CredentialError, match="unsupported key type"):
        TrustStore.load([rsa_pub])


# ---------------------------------------------------------------- the compact format (issue 14)


def test_realistic_declarations_fit_qr_version_8():
    """Issue 14: 1,000 realistic declarations (Vietnamese names with diacritics, a 12-digit CCCD, a
    10-digit mobile number, any answers and doses): p95 of the QR version at error correction M <= 8,
    none above 9 (CHOT1 was version 11-12)."""
    import segno

    from device.credentials.issue_cli import qr_version, realistic_people

    for alg, n in (("ed25519", 1000), ("es256", 200)):  # both signatures are 64 bytes: the same sizes
        key = keys.generate(alg)
        versions = sorted(qr_version(issue_declaration(key, p, AT)) for p in realistic_people(n, seed=14))
        p50, p95 = versions[n // 2], versions[math.ceil(0.95 * n) - 1]
        assert p95 <= 8 and versions[-1] <= 9, (alg, p50, p95, versions[-1])
    # base45 in QR alphanumeric mode beats base64url in byte mode for the same bytes
    raw = native.b45decode(issue_declaration(key, realistic_people(1, seed=1)[0], AT)[len(native.PREFIX):])
    b64 = "chot2:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert qr_version(native.PREFIX + native.b45encode(raw)) < segno.make(b64, error="m", micro=False).version


def test_round_trip_keeps_every_field(ed_key):
    from device.credentials.issue_cli import realistic_people

    trust = store_for(ed_key)
    for p in realistic_people(200, seed=3) + [
        {**PERSON, "id_number": "012345678", "dob": "1950", "phone": "+84 91-234-5678", "purpose": "delivery"},
        {**PERSON, "id_number": "B1234567", "phone": "+1 212 555 0100", "symptoms": True, "travel": True,
         "doses": 20, "issuer_name": "VN-HN-PHUCTAN", "declaration_id": "00ff00ff"},
    ]:
        at = AT - timedelta(minutes=7, seconds=31)
        v = native.verify(issue_declaration(ed_key, p, at, timedelta(hours=30)), trust, AT)
        assert v.verified, v.detail
        f = native.normalise_fields(p)
        assert v.person["id_number"] == f["id_number"] and v.person["name"] == p["name"]
        assert v.person["dob"] == p["dob"] and v.person["phone"] == f["phone"]
        assert v.person["health"] == {k: bool(p.get(k)) for k in ("symptoms", "contact", "travel")}
        assert (v.person["purpose"], v.person["doses"]) == (p["purpose"], p["doses"])
        assert v.issued_at == at.replace(second=0) and v.expires_at - v.issued_at == timedelta(hours=30)
        if p.get("declaration_id"):
            assert v.credential_id == "00ff00ff" and native.decode(v.text).fields["iss"] == "VN-HN-PHUCTAN"
    assert native.normalise_fields({**PERSON, "phone": "+84 91-234-5678"})["phone"] == "0912345678"


def test_derived_declaration_id_is_one_per_declaration(ed_key):
    """Without an explicit id, the declaration id is sha256 of the signature: the same declaration
    (Ed25519 is deterministic) has the same id, another declaration another id."""
    a, b = issue(ed_key), issue(ed_key)
    c = issue(ed_key, at=AT - timedelta(hours=2))
    ids = [native.verify(t, store_for(ed_key), AT).credential_id for t in (a, b, c)]
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 16


def test_fields_not_carried_are_refused(ed_key):
    for field, value in (("address", "12 Hàng Bạc"), ("ward", "Phúc Tân"), ("last_dose", "2021-07-01")):
        with pytest.raises(CredentialError, match=f"{field}: not carried"):
            issue(ed_key, **{field: value})
    with pytest.raises(CredentialError, match="dob: before 1900"):
        issue(ed_key, dob="1899-12-31")


def test_old_chot1_text_is_refused_with_what_to_do(ed_key):
    old = "CHOT1:6BFOXN*TS0BI$ZD.P9UOL97O4-2HH77HRM3DSPTT"
    v = verify_text(old, store_for(ed_key), AT)
    assert (v.format, v.reason) == ("native", "unreadable") and "issue a new declaration" in v.detail


def test_a_shared_short_kid_tries_each_trusted_key(ed_key):
    """Two trusted issuers whose kids share the 4 bytes a declaration carries: each key is tried."""
    other = keys.generate("ed25519")
    trust = store_for(ed_key)
    trust.native_keys[native.kid_of(ed_key) + b"\0\0\0\0"] = other.public_key()  # a colliding key
    assert native.verify(issue(ed_key), trust, AT).verified
    forged = issue(other)
    protected, unprot, payload, _sig = cose_parts(forged)
    protected = cbor2.dumps({1: -8, 4: native.kid_of(ed_key)})
    sig = native.cose_sign(other, native.sig_structure(protected, payload))
    assert native.verify(encode([protected, unprot, payload, sig]), trust, AT).verified  # the colliding key
    assert native.verify(encode([protected, unprot, payload, sig]), store_for(ed_key), AT).reason == "bad_signature"
