"""Hostile codes (issue 11): parser bounds and signatures, for every credential format.

Each bomb of bench/hostile.py is refused with its own reason and detail, and the bounds hold:
what was inflated, how many CBOR items were walked and how deep JSON went are counted by
`device.credentials.bounds.meter()` (no timing here: bench/parsers.py measures it). The
signature is checked before the payload is decoded (COSE) or inflated (SHC). ES256 high-s
twins: refused by the native format, accepted as the same credential by DCC and SHC (their
specifications do not require low-s). Absurd iat/nbf/exp fail `bad_validity`. Trust is kept
apart per format.
"""

import json
import sys
import zlib
from datetime import timedelta

import cbor2
import pytest
from conftest import ROOT
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chot.errors import CredentialError
from device.credentials import bounds, dcc, keys, native, plain, shc
from device.credentials.reasons import REASONS
from device.credentials.result import Verification
from device.credentials.trust import TrustStore, dcc_kid
from device.credentials.verify import verify_text

sys.path.insert(0, str(ROOT))
from bench import hostile  # noqa: E402

pytestmark = pytest.mark.timeout(300)
AT = hostile.AT
L_ED25519 = 2**252 + 27742317777372353535851937790883648493


@pytest.fixture(scope="module")
def iss():
    return hostile.Issuers()


def _sane(v):
    assert isinstance(v, Verification)
    assert not (v.detail or "").startswith("internal error"), v.detail
    assert v.verified or v.reason in REASONS, (v.reason, v.detail)
    return v


def _within_bounds(m):
    assert m.inflated_max <= bounds.MAX_INFLATED + 1, m
    assert m.cbor_items_max <= bounds.MAX_CBOR_ITEMS, m
    assert m.json_depth_max <= bounds.MAX_JSON_DEPTH, m


# ---------------------------------------------------------------- parser bounds: CBOR

# bomb -> the detail it is refused with: in a payload (native, DCC), and as the whole COSE or in its
# unprotected header (where only the tags 18 and 61 are allowed)
CBOR_REFUSALS = {
    "value sharing": "tag 28 (value sharing) is not used",
    "nested arrays": "nested deeper than 16",
    "nested indefinite arrays": "nested deeper than 16",
    "nested maps": "nested deeper than 16",
    "item flood": "more than 1024 items",
    "indefinite item flood": "more than 1024 items",
    "2^62-byte string": "truncated string",
    "2^63-item array": "more than 1024 items",
    "bignum": "tag 2 (a bignum) is not used",
    "decimal fraction 10^(2^63)": "tag 4 (a decimal fraction) is not used",
    "3000 nested tags": "tag 1 is not used",  # tag 1 (a date) is allowed in DCC claims only
    "1500 epoch tags": "more than 1024 items",  # an array too long, before its first tag
    "duplicate map keys": "the same map key twice",
    "60 KB bad UTF-8": "not CBOR",
    "2000-chunk string": "more than 1024 items",
}
IN_DCC_CLAIMS = {"3000 nested tags": "nested deeper than 16"}


@pytest.mark.parametrize("name", sorted(CBOR_REFUSALS))
@pytest.mark.parametrize("fmt", ["native", "dcc"])
def test_cbor_bombs_are_refused_with_their_reason(iss, fmt, name):
    """Each CBOR bomb, unsigned, signed by the trusted issuer, as the whole COSE and in the unprotected
    header: refused at `decode` (reason unreadable) by the walk, whose count never passes its bound."""
    payload = hostile.CBOR_BOMBS[name]()
    wrap = iss.native_text if fmt == "native" else iss.dcc_text
    texts = {"unsigned": iss.cose_text(fmt, payload, False), "signed": iss.cose_text(fmt, payload, True),
             "as the COSE": wrap(payload), "in the unprotected header": wrap(iss.cose_raw_unprotected(fmt, payload))}
    for where, text in texts.items():
        if fmt == "native" and len(text) > bounds.MAX_TEXT:  # CHOT2 is not compressed: refused by length
            v = _sane(verify_text(text, iss.trust, AT))
            assert v.reason == "unreadable" and "longer than" in v.detail
            continue
        assert len(text) <= bounds.MAX_TEXT, (where, len(text))
        with bounds.meter() as m:
            v = _sane(verify_text(text, iss.trust, AT))
        want = CBOR_REFUSALS[name]
        if fmt == "dcc" and where in ("unsigned", "signed"):
            want = IN_DCC_CLAIMS.get(name, want)
        assert (v.format, v.reason, v.steps["decode"]) == (fmt, "unreadable", False), (where, v.detail)
        assert want in v.detail, (where, v.detail)
        assert v.person == {} and v.person_id is None, where
        _within_bounds(m)


def test_the_walk_counts_are_bounded_and_cbor2_sees_only_walked_documents(iss, monkeypatch):
    """cbor2.loads is only ever called on a document the walk accepted (value sharing cost 27.6 s
    and 420 MiB in cbor2 before: issue 11)."""
    walked = []
    real_check, real_loads = bounds.check_cbor, cbor2.loads

    def check(data, *a, **kw):
        real_check(data, *a, **kw)
        walked.append(bytes(data))

    def loads(data, *a, **kw):
        assert bytes(data) in walked, "cbor2 decoded a document that was not walked first"
        return real_loads(data, *a, **kw)

    monkeypatch.setattr(bounds, "check_cbor", check)
    monkeypatch.setattr(cbor2, "loads", loads)
    for fmt in ("native", "dcc"):
        for make in hostile.CBOR_BOMBS.values():
            _sane(verify_text(iss.cose_text(fmt, make(), True), iss.trust, AT))
        good = iss.cose_text(fmt, hostile.native_claims() if fmt == "native" else hostile.dcc_claims(), True)
        assert verify_text(good, iss.trust, AT).steps["signature"] is True


def test_the_signature_is_checked_before_the_claims_are_decoded(iss, monkeypatch):
    """COSE: the signature covers the protected header and the payload bytes, so it is verified over the raw
    bytes first; the claims are walked and decoded after it (and still decoded when it fails: the terminal
    records an unverified claim, and the DCC reports every step)."""
    order = []
    real_check, real_verify, real_dcc_verify = bounds.check_cbor, native.verify_cose_signature, dcc.verify_signature
    monkeypatch.setattr(bounds, "check_cbor", lambda data, *a, **kw: (order.append(("walk", len(data))),
                                                                       real_check(data, *a, **kw))[1])
    monkeypatch.setattr(native, "verify_cose_signature",
                        lambda *a, **kw: (order.append(("signature",)), real_verify(*a, **kw))[1])
    monkeypatch.setattr(dcc, "verify_signature",  # the DCC's own, for every COSE algorithm
                        lambda *a, **kw: (order.append(("signature",)), real_dcc_verify(*a, **kw))[1])
    for fmt in ("native", "dcc"):
        payload = hostile.native_claims() if fmt == "native" else hostile.dcc_claims()
        for signed in (True, False):
            order.clear()
            v = verify_text(iss.cose_text(fmt, payload, signed), iss.trust, AT)
            assert v.steps["signature"] is signed, (fmt, v.detail)
            assert order.index(("signature",)) < order.index(("walk", len(payload))), (fmt, order)


def test_tags_are_allowed_per_document(iss):
    """Only the tags a format uses: COSE_Sign1 (18) in a CWT tag (61) around the envelope, the DCC's
    date tags in its claims; nothing in a COSE header nor in a native declaration's claims."""
    date0 = cbor2.CBORTag(0, "2021-06-01T00:00:00Z")
    dcc_claims = cbor2.loads(hostile.dcc_claims())
    dcc_claims[-260][1]["v"][0]["dt"] = date0  # as some issuers' encoders write it (HU, SE in dgc-testdata)
    v = dcc.verify(iss.cose_text("dcc", cbor2.dumps(dcc_claims), True), iss.trust, AT)
    assert v.steps["decode"] is True and v.steps["signature"] is True
    native_claims = cbor2.loads(hostile.native_claims())
    native_claims[native.C_DOB] = date0
    v = native.verify(iss.cose_text("native", cbor2.dumps(native_claims), True), iss.trust, AT)
    assert (v.reason, v.steps["decode"]) == ("unreadable", False) and "tag 0 is not used" in v.detail
    dcc_claims[-260][1]["v"][0]["dt"] = cbor2.CBORTag(18, "x")
    v = dcc.verify(iss.cose_text("dcc", cbor2.dumps(dcc_claims), True), iss.trust, AT)
    assert v.reason == "unreadable" and "tag 18 is not used" in v.detail
    # a tag in the protected header, and a CWT-tagged native declaration (allowed)
    prot = cbor2.dumps({1: -7, 4: cbor2.CBORTag(1, 5)})
    v = native.verify(iss.cose_text("native", hostile.native_claims(), True, protected=prot), iss.trust, AT)
    assert v.reason == "unreadable" and "tag 1 is not used" in v.detail
    inner = iss.cose(hostile.native_claims(), "native")
    cwt = b"\xd8\x3d" + inner  # 61(18([...]))
    assert native.verify(iss.native_text(cwt), iss.trust, AT).verified


def test_map_keys_are_integers_or_texts_and_never_twice(iss):
    for doc, want in (
        (b"\xa2\x04\x00\x18\x04\x01", "the same map key twice"),  # 4 and 4 written in two lengths
        (b"\xa2\x61a\x00\x61a\x01", "the same map key twice"),
        (b"\xa1\x81\x00\x00", "not an integer or a text"),  # [0] as a key
        (b"\xa1\x40\x00", "not an integer or a text"),  # a byte string as a key
        (b"\xbf\x01\xff", "a map key without a value"),
        (b"\x7f\x41a\xff", "definite chunks"),  # a byte chunk in a text string
    ):
        with pytest.raises(ValueError, match=want):
            bounds.check_cbor(doc)
    bounds.check_cbor(b"\xbf\x01\x02\x61a\x03\xff")  # an indefinite map of distinct keys
    bounds.check_cbor(b"\x7f\x61a\x61b\xff")


# ---------------------------------------------------------------- parser bounds: compression, JSON, length


def test_zlib_and_deflate_bombs_stop_at_the_limit(iss):
    """zlib is asked for the limit + 1 bytes at most: a 4 MiB bomb produces 64 KiB + 1, never the rest.
    A native declaration (CHOT2) is never compressed: a zlib stream in one is not inflated at all."""
    with bounds.meter() as m:
        v = _sane(verify_text(native.PREFIX + native.b45encode(zlib.compress(b"\0" * (4 * 1024 * 1024), 9)),
                              iss.trust, AT))
    assert (v.format, v.reason) == ("native", "unreadable") and m.inflates == 0
    for fmt, prefix in (("dcc", "HC1:"),):
        text = prefix + native.b45encode(zlib.compress(b"\0" * (4 * 1024 * 1024), 9))
        assert len(text) <= bounds.MAX_TEXT
        with bounds.meter() as m:
            v = _sane(verify_text(text, iss.trust, AT))
        assert v.reason == "unreadable" and f"inflates beyond {bounds.MAX_INFLATED} bytes" in v.detail
        assert m.inflates == 1 and m.inflated_max == bounds.MAX_INFLATED + 1
        # bytes after the zlib stream make another text of the same credential: refused
        good = iss.cose(hostile.native_claims() if fmt == "native" else hostile.dcc_claims(), fmt)
        v = verify_text(prefix + native.b45encode(zlib.compress(good) + b"x"), iss.trust, AT)
        assert v.reason == "unreadable" and "bytes after the compressed data" in v.detail
    signed = hostile.zlib_bomb(2 * 1024 * 1024)
    with bounds.meter() as m:
        v = _sane(shc.verify(iss.shc_text(signed, True), iss.trust, AT))
    assert (v.steps["signature"], v.steps["inflate"], v.reason) == (True, False, "unreadable")
    assert "inflates beyond" in v.detail and m.inflated_max == bounds.MAX_INFLATED + 1


def test_shc_is_never_inflated_before_its_signature_verified(iss):
    """The JWS signature covers the compressed payload: a card no trusted key signed is not inflated."""
    other = ec.generate_private_key(ec.SECP256R1())
    for payload in (hostile.zlib_bomb(2 * 1024 * 1024), hostile.json_deep(), b"[" * 2_000_000):
        for text, reason in ((iss.shc_text(payload, False), "bad_signature"),  # the trusted kid, no signature
                             (iss.shc_text(payload, True, key=other), "bad_signature"),  # forged with its kid
                             (iss.shc_text(payload, True, key=other, kid="nobody"), "unknown_issuer")):
            with bounds.meter() as m:
                v = _sane(shc.verify(text, iss.trust, AT))
            assert (v.steps["signature"], v.steps["inflate"], v.reason) == (False, None, reason), v.detail
            assert m.inflates == 0 and m.json_loads == 1  # the header only
            assert v.issuer is None and v.kind is None


@pytest.mark.parametrize("name,want", [
    ("nested arrays", "nested deeper than 32"),
    ("nested objects", "nested deeper than 32"),
    ("4000-digit integer", "an integer of more than 20 digits"),
    ("1e999999", "a number out of range"),
    ("NaN", "NaN is not JSON"),
    ("unterminated escapes", "unterminated string"),
])
def test_json_bombs_in_shc_are_refused(iss, name, want):
    """In the JWS header (read before the signature) and in a signed payload (read after it)."""
    bomb = hostile.JSON_BOMBS[name]()
    with bounds.meter() as m:
        v = _sane(shc.verify(iss.shc_text(b"{}", True, header=bomb[:2000]), iss.trust, AT))
    assert (v.steps["decode"], v.reason) == (False, "unreadable") and want in v.detail, v.detail
    assert m.inflates == 0
    _within_bounds(m)
    text = iss.shc_text(bomb, True)
    if len(text) <= bounds.MAX_TEXT and len(bomb) <= bounds.MAX_INFLATED:
        with bounds.meter() as m:
            v = _sane(shc.verify(text, iss.trust, AT))
        assert (v.steps["signature"], v.steps["inflate"], v.reason) == (True, False, "unreadable")
        assert v.detail.startswith("JWS payload") and want in v.detail, v.detail
        _within_bounds(m)


def test_texts_over_8_kib_are_refused_by_every_parser(iss):
    for fmt, fn, prefix in (("native", lambda t: native.verify(t, iss.trust, AT), native.PREFIX),
                            ("dcc", lambda t: dcc.verify(t, iss.trust, AT), "HC1:"),
                            ("shc", lambda t: shc.verify(t, iss.trust, AT), "shc:/"),
                            ("plain", plain.verify, "")):
        with bounds.meter() as m:
            v = _sane(fn(prefix + "0" * (bounds.MAX_TEXT + 1 - len(prefix))))
        assert (v.format, v.reason, v.steps["decode" if fmt != "dcc" else "unprefix"]) == (fmt, "unreadable", False)
        assert str(bounds.MAX_TEXT) in v.detail
        assert m.inflates == 0 and m.cbor_walks == 0 and m.json_loads == 0
        v = _sane(verify_text(prefix + "0" * (4 * bounds.MAX_TEXT), iss.trust, AT))
        assert v.reason == "unreadable" and "longer than 8192" in v.detail


# ---------------------------------------------------------------- fuzz: every format, up to 8 KiB

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
_KINDS = ["cose-native", "cose-dcc", "zlib-native", "zlib-dcc", "shc-signed", "shc-unsigned", "shc-header",
          "b45-native", "b45-dcc", "digits", "text"]


@st.composite
def hostile_text(draw, iss):
    kind = draw(st.sampled_from(_KINDS))
    if kind.startswith(("cose", "zlib", "shc")):
        shape = draw(st.sampled_from(["random", "nest", "flood", "tags", "json"]))
        n = draw(st.integers(0, 5000))
        if shape == "random":
            data = draw(st.binary(max_size=3000))
        elif shape == "nest":
            data = draw(st.sampled_from([b"\x81", b"\x9f", b"\xa1\x01", b"\xc1", b"[", b'{"a":'])) * n
        elif shape == "flood":
            data = b"\x9f" + draw(st.sampled_from([b"\x00", b"\xc1\x00", b"\x40", b"\x60"])) * n * 10 + b"\xff"
        elif shape == "tags":
            data = cbor2.dumps(cbor2.CBORTag(draw(st.integers(0, 2**20)), n))
        else:
            data = json.dumps({"iss": hostile.SHC_ISS, "nbf": draw(st.integers(-(2**70), 2**70)),
                               "vc": [[]] * (n // 10)}).encode()
        if kind == "cose-native":
            return iss.cose_text("native", data, draw(st.booleans()))
        if kind == "cose-dcc":
            return iss.cose_text("dcc", data, draw(st.booleans()))
        if kind.startswith("zlib"):
            return (native.PREFIX if kind.endswith("native") else "HC1:") + native.b45encode(zlib.compress(data))
        if kind == "shc-header":
            return iss.shc_text(b"{}", True, header=data[:2000])
        return iss.shc_text(data, kind == "shc-signed")
    size = draw(st.integers(0, bounds.MAX_TEXT))
    if kind.startswith("b45"):
        body = native.b45encode(draw(st.binary(min_size=size // 3, max_size=size // 3 + 10)))
        return ((native.PREFIX if kind.endswith("native") else "HC1:") + body)[:bounds.MAX_TEXT]
    if kind == "digits":
        return ("shc:/" + "5" * draw(st.integers(0, 10)) + "0123456789" * (size // 10))[:bounds.MAX_TEXT]
    return draw(st.text(max_size=2000)) * max(1, size // 2000)


_FUZZ_ISSUERS = hostile.Issuers()


@FUZZ
@given(hostile_text(_FUZZ_ISSUERS).map(lambda t: t[:bounds.MAX_TEXT]))  # a longer QR text cannot be
def test_fuzz_every_format_stays_within_bounds(text):
    """Any text of up to 8 KiB, in every format (bombs of random shape and size, signed or not, random
    base45, digits and text): a sane result, and the counted bounds hold."""
    assert len(text) <= bounds.MAX_TEXT
    with bounds.meter() as m:
        v = _sane(verify_text(text, _FUZZ_ISSUERS.trust, AT))
    _within_bounds(m)
    assert m.inflates <= 1 and m.cbor_walks <= 3 and m.json_loads <= 2, m
    if v.format in ("dcc", "shc") and v.steps.get("signature") is not True:
        assert v.person == {} and v.person_id is None


# ---------------------------------------------------------------- signatures: ECDSA twins


def _high_s_es256(key, message):
    """An ES256 signature (r||s) that OpenSSL made with s in the high half (it gives either half)."""
    for _ in range(200):
        sig = hostile.es256_raw(key, message)
        if not bounds.is_low_s(int.from_bytes(sig[32:], "big")):
            return sig
    raise AssertionError("no high-s signature in 200 tries")


def _verifies(public_key, message, sig):
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    public_key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    return True


def _cose_of(text, prefix):
    raw = native.b45decode(text[len(prefix):])
    return raw if prefix == native.PREFIX else zlib.decompress(raw)


def _resign(text, prefix, signature_fn):
    cose = _cose_of(text, prefix)
    tag = cbor2.loads(cose)
    protected, unprot, payload, sig = tag.value
    new = signature_fn(native.sig_structure(protected, payload), sig)
    cose = cbor2.dumps(cbor2.CBORTag(18, [protected, unprot, payload, new]))
    return prefix + native.b45encode(cose if prefix == native.PREFIX else zlib.compress(cose))


def test_native_es256_is_low_s_and_its_high_s_twin_is_refused(iss):
    """Issue 11: an ES256 signature's high-s twin (r, n - s) verified. Two texts of one declaration with
    two different valid signatures: the native format now allows the low-s one only, and issues only it."""
    key = iss.native_es
    texts = [iss.cose_text("native", hostile.native_claims(), True) for _ in range(24)]
    for text in texts:
        cose = cbor2.loads(_cose_of(text, native.PREFIX)).value
        assert bounds.is_low_s(int.from_bytes(cose[3][32:], "big"))  # cose_sign normalises
        assert native.verify(text, iss.trust, AT).verified
    good = texts[0]
    twin_text = _resign(good, native.PREFIX, lambda tbs, sig: hostile.twin(sig))
    twin_sig = cbor2.loads(_cose_of(twin_text, native.PREFIX)).value[3]
    tbs = native.decode(twin_text).to_be_signed
    assert _verifies(key.public_key(), tbs, twin_sig)  # a real signature: cryptography accepts it
    v = native.verify(twin_text, iss.trust, AT)
    assert (v.reason, v.steps["signature"]) == ("bad_signature", False) and "low-s" in v.detail
    # a high-s signature as OpenSSL makes one half of the time: refused; its low-s twin passes
    high = _resign(good, native.PREFIX, lambda tbs, sig: _high_s_es256(key, tbs))
    assert native.verify(high, iss.trust, AT).reason == "bad_signature"
    assert native.verify(_resign(high, native.PREFIX, lambda tbs, sig: hostile.twin(sig)), iss.trust, AT).verified


def test_native_ed25519_non_canonical_s_is_refused(iss):
    """Ed25519 has no twin: S + L (the same S modulo L) is refused by cryptography (RFC 8032 rule)."""
    text = iss.cose_text("native", hostile.native_claims(), True, key=iss.native_ed)
    assert native.verify(text, iss.trust, AT).verified

    def plus_l(tbs, sig):
        s = int.from_bytes(sig[32:], "little") + L_ED25519
        return sig[:32] + s.to_bytes(32, "little")

    assert native.verify(_resign(text, native.PREFIX, plus_l), iss.trust, AT).reason == "bad_signature"


def test_dcc_high_s_twin_is_the_same_certificate(iss):
    """The EU DCC specification does not require low-s (196 of 373 ES256 dgc-testdata signatures are
    high-s): both twins verify, and they are the same certificate for everything Chot derives."""
    text = iss.cose_text("dcc", hostile.dcc_claims(), True)
    twin_text = _resign(text, "HC1:", lambda tbs, sig: hostile.twin(sig))
    a, b = dcc.verify(text, iss.trust, AT), dcc.verify(twin_text, iss.trust, AT)
    assert a.verified and b.verified and text != twin_text
    assert (a.credential_id, a.person_id, a.person) == (b.credential_id, b.person_id, b.person)
    assert a.credential_id == "URN:UVCI:01:VN:HOSTILE1"


def test_shc_high_s_twin_is_the_same_card(iss):
    """JWS ES256 (RFC 7518) and SMART Health Cards do not require low-s: both twins verify, same card."""
    payload = json.dumps({"iss": hostile.SHC_ISS, "nbf": AT.timestamp() - 86400, "vc": {
        "rid": "RID-TWIN", "type": [shc.HEALTH_CARD], "credentialSubject": {"fhirBundle": {
            "resourceType": "Bundle", "entry": [{"resource": {
            "resourceType": "Patient", "name": [{"family": "Trần", "given": ["Bình"]}],
            "birthDate": "1985-03-02"}}]}}}}).encode()
    text = iss.shc_text(payload, True)
    h, p, s = shc.numeric_to_jws(text).split(".")
    twin_text = hostile.shc_numeric(f"{h}.{p}.{hostile.b64u(hostile.twin(shc.b64url_decode(s)))}")
    a, b = shc.verify(text, iss.trust, AT), shc.verify(twin_text, iss.trust, AT)
    assert a.steps["signature"] is True and b.steps["signature"] is True and text != twin_text
    assert (a.credential_id, a.person_id) == (b.credential_id, b.person_id) == ("RID-TWIN", a.person_id)


# ---------------------------------------------------------------- signatures: absurd times

_NOW = int(AT.timestamp())


@pytest.mark.parametrize("iat,exp,want", [
    (-1, _NOW + 3600, "iat is before 1970"),
    (_NOW, 2**64 - 1, "exp is after the year 9999"),  # the largest CBOR integer
    (-(2**64), _NOW, "iat is before 1970"),
    (2**40, 2**40 + 60, "iat is after the year 9999"),  # 2^40 s: the old bound, year 36812: crashed native
    (_NOW, _NOW - 60, "exp is before iat"),
    (_NOW - 60, _NOW + 4000 * 86400, "valid for more than"),
])
@pytest.mark.parametrize("fmt", ["native", "dcc"])
def test_absurd_cose_times_fail_bad_validity(iss, fmt, iat, exp, want):
    claims = hostile.native_claims(iat, exp) if fmt == "native" else hostile.dcc_claims(iat, exp)
    text = iss.cose_text(fmt, claims, True)
    v = _sane((native.verify if fmt == "native" else dcc.verify)(text, iss.trust, AT))
    assert (v.reason, v.steps["time"], v.steps["signature"]) == ("bad_validity", False, True), v.detail
    assert want in v.detail and v.issued_at is None and v.expires_at is None


def test_native_validity_is_at_most_366_days(iss):
    text = iss.cose_text("native", hostile.native_claims(_NOW - 60, _NOW + 367 * 86400), True)
    v = native.verify(text, iss.trust, AT)
    assert v.reason == "bad_validity" and "366 days" in v.detail
    assert native.verify(text, iss.trust, AT, max_validity=timedelta(days=400)).verified
    v = native.verify(iss.cose_text("native", hostile.native_claims(_NOW, _NOW), True), iss.trust, AT)
    assert v.reason == "bad_validity" and "exp is not after iat" in v.detail
    with pytest.raises(CredentialError, match="at most 366 days"):
        native.issue(iss.native_ed, {"id_number": "001090012345", "name": "An", "dob": "1990"},
                     valid_for=timedelta(days=400))


@pytest.mark.parametrize("nbf,exp,want", [
    (-5.5, None, "nbf is before 1970"),
    (1e300, None, "nbf is after the year 9999"),
    (_NOW, _NOW - 1.0, "exp is before nbf"),
    (_NOW, 1e20, "exp is after the year 9999"),
])
def test_absurd_shc_times_fail_bad_validity(iss, nbf, exp, want):
    p = {"iss": hostile.SHC_ISS, "nbf": nbf, "vc": {"rid": "R1", "type": [shc.HEALTH_CARD], "credentialSubject": {
        "fhirBundle": {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]}}}}
    if exp is not None:
        p["exp"] = exp
    v = _sane(shc.verify(iss.shc_text(json.dumps(p).encode(), True), iss.trust, AT))
    assert (v.reason, v.steps["time"], v.steps["signature"]) == ("bad_validity", False, True), v.detail
    assert want in v.detail


# ---------------------------------------------------------------- trust kept apart per format


def test_trust_is_kept_apart_per_format(tmp_path):
    """Issue 11: a DCC signing certificate given as PEM trust also became a native issuer. One P-256 key
    signs all three formats; trusted for one, it verifies that one only."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "one key, three formats")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(AT - timedelta(days=30)).not_valid_after(AT + timedelta(days=300))
            .sign(key, hashes.SHA256()))
    (tmp_path / "dsc.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "dsc.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "issuer.pub.pem").write_bytes(keys.public_pem(key))
    (tmp_path / "jwks.json").write_text(json.dumps({"iss": hostile.SHC_ISS,
                                                    "keys": [hostile.Issuers.jwk(key)]}))

    signer = hostile.Issuers.__new__(hostile.Issuers)  # reuse the encoders with this one key
    signer.native_es, signer.dcc_key, signer.dcc_cert, signer.shc_key = key, key, cert, key
    texts = {"native": signer.cose_text("native", hostile.native_claims(), True),
             "dcc": signer.cose_text("dcc", hostile.dcc_claims(), True),
             "shc": signer.shc_text(json.dumps({"iss": hostile.SHC_ISS, "nbf": _NOW - 60, "vc": {}}).encode(),
                                    True, kid=hostile.Issuers.jwk(key)["kid"])}
    for files, fmt, store_attr in ((["dsc.pem"], "dcc", "dcc_certs"), (["dsc.der"], "dcc", "dcc_certs"),
                                   (["issuer.pub.pem"], "native", "native_keys"),
                                   (["jwks.json"], "shc", "shc_issuers")):
        store = TrustStore.load([tmp_path / f for f in files])
        for attr in ("native_keys", "dcc_certs", "shc_issuers"):
            assert bool(getattr(store, attr)) == (attr == store_attr), (files, attr)
        for other, text in texts.items():
            v = verify_text(text, store, AT)
            if other == fmt:
                assert v.steps["signature"] is True, (files, other, v.detail)
            else:
                assert v.reason == "unknown_issuer" and v.steps["signature"] is not True, (files, other, v.detail)
    assert keys.kid_of(key) != dcc_kid(cert)
    # an Ed25519 key is no DCC signer nor SHC issuer either
    ed = ed25519.Ed25519PrivateKey.generate()
    store = TrustStore().add_bytes(keys.public_pem(ed), "ed.pub.pem")
    assert set(store.native_keys) == {keys.kid_of(ed)} and not store.dcc_certs and not store.shc_issuers
