"""Fuzzing the DCC and SHC parsers: hypothesis-generated input and mutations of real payloads.

Whatever the input, `dcc.verify` / `shc.verify` (and `verify_text`) return a Verification of
their format, never raise, never fall back to the last-resort "internal error", and every
failure carries a reason code from reasons.py. Decompression is bounded (zip bombs fail
"unreadable" at the decompress/inflate step). Bounded: at most 300 examples per test.
"""

import base64
import json
import zlib

import cbor2
import pytest
from conftest import need
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chot.personal import PERSON_FIELDS
from device.credentials import dcc, native, shc
from device.credentials.reasons import REASONS
from device.credentials.result import Verification
from device.credentials.trust import TrustStore
from device.credentials.verify import verify_text

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
B45 = native.B45
pytestmark = pytest.mark.timeout(120)  # a hang fails instead of blocking the suite


def _check(v, fmt):
    assert isinstance(v, Verification)
    assert v.format == fmt
    assert not (v.detail or "").startswith("internal error"), v.detail
    if not v.verified:
        assert v.reason in REASONS, v.reason
        assert False in v.steps.values()
    # the person's fields: only known keys, a person id only in the two documented shapes, and
    # (DCC, SHC) nothing about the person unless the signature verified
    assert isinstance(v.person, dict) and set(v.person) <= set(PERSON_FIELDS), v.person
    assert v.person_id is None or v.person_id.startswith(("id:", "nd:"))
    assert v.credential_id is None or isinstance(v.credential_id, str)
    if fmt in ("dcc", "shc") and v.steps.get("signature") is not True:
        assert v.person == {} and v.person_id is None and v.credential_id is None
    return v


@pytest.fixture(scope="module")
def seeds():
    """Real payloads: DCC texts (EC and RSA) with their signers, and the SHC spec examples with their issuer."""
    from conftest import TESTDATA

    need(TESTDATA.is_dir(), "shared test data")
    root = TESTDATA / "dcc" / "dgc-testdata"
    trust = TrustStore()
    dccs = []
    for rel in ("common/2DCode/raw/CO1.json", "common/2DCode/raw/CO3.json", "DE/2DCode/raw/1.json",
                "FI/2DCode/raw/3.json"):
        case = json.loads((root / rel).read_text())
        trust.add_certificate(x509.load_der_x509_certificate(base64.b64decode(case["TESTCTX"]["CERTIFICATE"])))
        dccs.append((case["PREFIX"], case["TESTCTX"]["VALIDATIONCLOCK"]))
    ex = TESTDATA / "shc" / "spec-examples"
    trust.add_path(ex / "issuer" / ".well-known" / "jwks.json")
    shcs = [(ex / f"example-{i}-f-qr-code-numeric-value-0.txt").read_text().strip() for i in ("00", "01", "03")]
    return trust, dccs, shcs


def test_seeds_verify(seeds):
    trust, dccs, shcs = seeds
    for text, clock in dccs:
        assert dcc.verify(text, trust, clock).steps["signature"] is True
    assert shc.verify(shcs[0], trust, "2023-07-01T00:00:00Z").verified


def _b45_text(raw):
    return "HC1:" + native.b45encode(raw)


def _shc_text(jws):
    return "shc:/" + "".join(f"{ord(c) - 45:02d}" for c in jws)


def _b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


# ---------------------------------------------------------------- hypothesis: arbitrary input


@FUZZ
@given(st.text(max_size=300))
def test_any_text(seeds, text):
    trust = seeds[0]
    _check(dcc.verify(text, trust), "dcc")
    _check(shc.verify(text, trust), "shc")
    _check(dcc.verify("HC1:" + text, trust), "dcc")
    _check(shc.verify("shc:/" + text, trust), "shc")
    v = verify_text("HC1:" + text, trust)
    assert isinstance(v, Verification) and (v.verified or v.reason in REASONS)


@FUZZ
@given(st.text(alphabet=B45, max_size=600))
def test_any_base45(seeds, body):
    _check(dcc.verify("HC1:" + body, seeds[0]), "dcc")


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_with_and_without_zlib(seeds, data):
    trust = seeds[0]
    _check(dcc.verify(_b45_text(data), trust), "dcc")
    _check(dcc.verify(_b45_text(zlib.compress(data)), trust), "dcc")


_cbor_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=20), st.binary(max_size=20),
)
_cbor = st.recursive(
    _cbor_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(st.one_of(st.integers(-300, 300), st.text(max_size=4)), kids, max_size=5),
        st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 18, 61, 1004, 99]), kids),
    ),
    max_leaves=25,
)


@FUZZ
@given(_cbor, _cbor, _cbor, st.sampled_from([-7, -37, -8, 0, "ES256"]), st.booleans())
def test_cose_shaped_cbor(seeds, protected, unprotected, claims, alg, tag):
    """Well-formed COSE_Sign1 envelopes around arbitrary headers and claims (incl. an hcert map)."""
    trust = seeds[0]
    kid = next(iter(trust.dcc_certs))
    pmap = {1: alg, 4: kid} if isinstance(protected, dict | type(None)) else protected
    payload_obj = claims if not isinstance(claims, dict) else {**claims, -260: {1: claims}}
    try:
        envelope = [cbor2.dumps(pmap), unprotected if isinstance(unprotected, dict) else {},
                    cbor2.dumps(payload_obj), b"\x00" * 64]
        raw = cbor2.dumps(cbor2.CBORTag(18, envelope) if tag else envelope)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return
    v = _check(dcc.verify(_b45_text(zlib.compress(raw)), trust, "2021-06-01T00:00:00Z"), "dcc")
    assert not v.verified  # nothing here carries a valid signature


@FUZZ
@given(st.text(alphabet="0123456789", max_size=800), st.sampled_from(["shc:/", "shc:/1/1/", "shc:/1/2/", "shc:/9/9/"]))
def test_any_numeric(seeds, digits, prefix):
    _check(shc.verify(prefix + digits, seeds[0]), "shc")


@FUZZ
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=10), st.integers(), st.none()), max_size=4),
       st.one_of(st.binary(max_size=300), st.recursive(
           st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
           lambda k: st.one_of(st.lists(k, max_size=4), st.dictionaries(st.text(max_size=5), k, max_size=4)),
           max_leaves=20)), st.binary(max_size=80))
def test_jws_shaped(seeds, header, payload, sig):
    """Compact JWS texts with arbitrary headers, payloads (raw bytes or JSON, deflated) and signatures."""
    trust = seeds[0]
    header = {**header, "zip": "DEF", "alg": "ES256", "kid": "3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s"}
    body = payload if isinstance(payload, bytes) else json.dumps(
        {"iss": "https://spec.smarthealth.cards/examples/issuer", "nbf": 1, "vc": payload}).encode()
    jws = ".".join([_b64u(json.dumps(header).encode()), _b64u(_deflate(body)), _b64u(sig)])
    v = _check(shc.verify(_shc_text(jws), trust), "shc")
    assert not v.verified


# ---------------------------------------------------------------- mutations of the real payloads


@FUZZ
@given(st.data())
def test_dcc_mutations(seeds, data):
    trust, dccs, _ = seeds
    text, clock = data.draw(st.sampled_from(dccs))
    body = text[4:]
    compressed = native.b45decode(body)
    cose = zlib.decompress(compressed)
    level = data.draw(st.sampled_from(["text", "base45", "zlib", "cose", "truncate"]))
    if level == "text":
        i = data.draw(st.integers(0, len(text) - 1))
        mutated = text[:i] + data.draw(st.text(min_size=0, max_size=3)) + text[i + 1:]
    elif level == "base45":
        i = data.draw(st.integers(0, len(body) - 1))
        mutated = "HC1:" + body[:i] + data.draw(st.sampled_from(B45)) + body[i + 1:]
    elif level == "zlib":
        b = bytearray(compressed)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        mutated = _b45_text(bytes(b))
    elif level == "cose":  # valid zlib around a corrupted COSE: reaches the CBOR and signature code
        b = bytearray(cose)
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
        mutated = _b45_text(zlib.compress(bytes(b)))
    else:
        mutated = text[: data.draw(st.integers(0, len(text) - 1))]
    v = _check(dcc.verify(mutated, trust, clock), "dcc")
    if mutated != text and v.verified:
        # a mutation may only pass if it decodes to the very same signed COSE (e.g. a flip in zlib's
        # unused bits); otherwise a flipped bit in a signed byte must never verify
        assert zlib.decompress(native.b45decode(mutated.strip()[4:])) == cose


@FUZZ
@given(st.data())
def test_shc_mutations(seeds, data):
    trust, _, shcs = seeds
    text = data.draw(st.sampled_from(shcs))
    jws = shc.numeric_to_jws(text)
    h, p, s = jws.split(".")
    level = data.draw(st.sampled_from(["digits", "jws", "deflate", "truncate"]))
    if level == "digits":
        i = data.draw(st.integers(5, len(text) - 1))
        mutated = text[:i] + data.draw(st.sampled_from("0123456789")) + text[i + 1:]
    elif level == "jws":
        i = data.draw(st.integers(0, len(jws) - 1))
        c = data.draw(st.sampled_from("ABCxyz019-_."))
        mutated = _shc_text(jws[:i] + c + jws[i + 1:])
    elif level == "deflate":
        raw = bytearray(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
        mutated = _shc_text(f"{h}.{_b64u(bytes(raw))}.{s}")
    else:
        mutated = text[: data.draw(st.integers(0, len(text) - 1))]
    v = _check(shc.verify(mutated, trust, "2023-07-01T00:00:00Z"), "shc")
    if v.verified:
        assert shc.numeric_to_jws(mutated).split(".")[:2] == [h, p] or mutated == text


# ---------------------------------------------------------------- bombs and pathological shapes


def test_zlib_bomb_is_refused_at_decompress(seeds):
    bomb = zlib.compress(b"\0" * (4 * 1024 * 1024), 9)
    text = _b45_text(bomb)
    assert len(text) <= native.MAX_TEXT
    v = _check(dcc.verify(text, seeds[0]), "dcc")
    assert v.steps["decompress"] is False and v.reason == "unreadable"
    assert "beyond" in v.detail


def test_deflate_bomb_is_never_inflated_without_a_trusted_signature(seeds):
    """The signature is checked before the payload is inflated (issue 11); a signed bomb is bounded in
    tests/test_hostile_codes.py::test_zlib_and_deflate_bombs_stop_at_the_limit."""
    header = _b64u(json.dumps({"zip": "DEF", "alg": "ES256", "kid": "x"}).encode())
    jws = f"{header}.{_b64u(_deflate(b' ' * (2 * 1024 * 1024)))}.{_b64u(bytes(64))}"
    text = _shc_text(jws)
    assert len(text) <= native.MAX_TEXT
    v = _check(shc.verify(text, seeds[0]), "shc")
    assert v.steps["signature"] is False and v.steps["inflate"] is None and v.reason == "unknown_issuer"


def test_oversized_texts_are_refused_before_decoding(seeds):
    v = _check(dcc.verify("HC1:" + "0" * 100_000, seeds[0]), "dcc")
    assert v.steps["unprefix"] is False and v.reason == "unreadable"
    v = _check(shc.verify("shc:/" + "56" * 50_000, seeds[0]), "shc")
    assert v.steps["decode"] is False and v.reason == "unreadable"


def test_pathological_cbor(seeds):
    trust = seeds[0]
    deep = b"\x81" * 20000 + b"\x00"  # 20,000 nested arrays
    huge_len = b"\x5b" + (2**62).to_bytes(8, "big") + b"abc"  # a byte string claiming 2^62 bytes
    many = b"\x9a" + (2**31).to_bytes(4, "big")  # an array claiming 2^31 items
    for raw in (deep, huge_len, many, cbor2.dumps(cbor2.CBORTag(18, [deep, {}, huge_len, b""]))):
        v = _check(dcc.verify(_b45_text(zlib.compress(raw)), trust), "dcc")
        assert v.steps["decode"] is False and v.reason == "unreadable"
    # a COSE envelope whose claims nest deeply inside the hcert map
    nested = cbor2.dumps({-260: {1: {"v": [json.loads("[" * 200 + "]" * 200)]}}, 4: 1, 6: 0})
    envelope = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7, 4: next(iter(trust.dcc_certs))}), {}, nested,
                                              bytes(64)]))
    _check(dcc.verify(_b45_text(zlib.compress(envelope)), trust), "dcc")


def test_pathological_json_in_shc(seeds):
    header = _b64u(json.dumps({"zip": "DEF", "alg": "ES256", "kid": "x"}).encode())
    deep = b"[" * 50000 + b"]" * 50000
    jws = f"{header}.{_b64u(_deflate(deep))}.{_b64u(bytes(64))}"
    v = _check(shc.verify(_shc_text(jws), seeds[0]), "shc")
    assert v.steps["signature"] is False and v.steps["inflate"] is None  # never inflated: nobody signed it


def test_cbor_value_sharing_bombs_are_refused_before_decoding():
    """A few hundred bytes of CBOR value sharing (tags 28/29) expand into a structure of 2^40 nodes
    for whatever walks it: an unsigned 364-character HC1: code took 27.6 s and 420 MiB to reject (issue 11).
    The CBOR is now walked first, bounded and with those tags refused, for every COSE format."""
    import zlib

    import cbor2

    from device.credentials import dcc, native

    node = [1]
    for _ in range(40):
        node = [node, node]
    bomb_payload = cbor2.dumps({-260: {1: {"v": [node]}}}, value_sharing=True)
    assert len(bomb_payload) < 400
    with pytest.raises(ValueError, match="tag 28"):
        native.check_cbor(bomb_payload)
    sign1 = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7, 4: b"12345678"}), {}, bomb_payload, bytes(64)]))
    text = "HC1:" + native.b45encode(zlib.compress(sign1))
    v = dcc.verify(text, None)
    assert v.reason == "unreadable" and v.steps["decode"] is False and "tag 28" in (v.detail or "")
    # the whole COSE shared, too
    shared_cose = cbor2.dumps(cbor2.CBORTag(18, [b"", {5: node}, b"", b""]), value_sharing=True)
    with pytest.raises(ValueError, match="tag 2[89]"):
        native.parse_sign1(shared_cose)
    # and the native format
    v2 = native.verify(native.PREFIX + native.b45encode(zlib.compress(sign1)), None)
    assert v2.reason == "unreadable"
    # deep nesting and item floods are bounded too
    deep = b"\x81" * 100 + b"\x01"
    with pytest.raises(ValueError, match="deeper"):
        native.check_cbor(deep)
    flood = b"\x9f" + b"\x00" * 10000 + b"\xff"
    with pytest.raises(ValueError, match="items"):
        native.check_cbor(flood)
