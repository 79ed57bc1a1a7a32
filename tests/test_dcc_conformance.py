"""Conformance on the official test vectors: every EU DCC case of dgc-testdata, and the four
SMART Health Card examples of the specification (the three-part one read from its PNGs).

Each DCC case is evaluated at its VALIDATIONCLOCK with its TESTCTX certificate as the only
trusted signer. Every EXPECTED* step that Chot implements is compared with the expectation:
true means our step passed (and, where the case gives the intermediate value, produced the
same bytes/JSON); false means our step did not pass (it failed, or an earlier step failed).
Disagreements must be listed in tests/known_deviations.toml, each with its reason; an entry
that no longer matches anything fails too, so the file stays honest.

Also here: DCC trust lists and single certificates through TrustStore, and the DCC policy rules
on certificates signed in the test with a throwaway signing certificate.
"""

import base64
import datetime as dt
import fnmatch
import io
import json
import tomllib
import zlib
from collections import Counter
from pathlib import Path

import cbor2
import numpy as np
import pytest
from conftest import need
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image

from chot import personal
from device.credentials import dcc, dcc_valuesets, native, shc
from device.credentials.policy import Checker, Policy
from device.credentials.result import Verification
from device.credentials.trust import TrustStore, dcc_kid

DEVIATIONS = Path(__file__).parent / "known_deviations.toml"
UTC = dt.UTC

# EXPECTED* key -> our step (None: a check done here on the whole chain)
STEP_OF = {
    "EXPECTEDPICTUREDECODE": "picture",
    "EXPECTEDUNPREFIX": "unprefix",
    "EXPECTEDB45DECODE": "base45",
    "EXPECTEDCOMPRESSION": "decompress",
    "EXPECTEDDECODE": "decode",
    "EXPECTEDVERIFY": "signature",
    "EXPECTEDEXPIRATIONCHECK": "time",
    "EXPTECTEDEXPIRED": "time",  # BG's misspelling of EXPECTEDEXPIRATIONCHECK (true: the check passes)
    "EXPECTEDKEYUSAGE": "key_usage",
    "EXPECTEDSCHEMAVALIDATION": "schema",
    "EXPECTEDVALIDJSON": "validjson",
}
# Not implemented: EXPECTEDVALIDOBJECT and EXPECTEDENCODE test an issuer's encoder, not a verifier.


@pytest.fixture(autouse=True)
def restore_schema_dir():
    """A test may choose the DCC schema folder (process-wide): put back the previous choice after it."""
    before, before_sets = dcc.schema_dir(), dcc_valuesets.valueset_dir()
    yield
    dcc.set_schema_dir(before)
    dcc_valuesets.set_dir(before_sets)


def _decoder():
    try:
        from device.scanner.decode import ZxingDecoder

        return ZxingDecoder()
    except ImportError:  # the project's decoder not there yet: zxing-cpp directly
        import zxingcpp

        class _Z:
            def decode(self, gray):
                return [b.text for b in zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode)]

        return _Z()


def _gray_png(data):
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"))


def _cases(root):
    for f in sorted(root.rglob("*.json")):
        try:
            case = json.loads(f.read_text("utf-8"))
        except ValueError:
            continue
        if isinstance(case, dict) and isinstance(case.get("EXPECTEDRESULTS"), dict) and "TESTCTX" in case:
            yield f.relative_to(root).as_posix(), case


def _norm(obj):
    """JSON compared by meaning (README note 3): date-times as instants ("Z" == "+00:00")."""
    if isinstance(obj, dict):
        return {k: _norm(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_norm(v) for v in obj]
    if isinstance(obj, str) and len(obj) > 10 and obj[10:11] == "T":
        try:
            return dcc.parse_time(obj).isoformat()
        except ValueError:
            return obj
    return obj


def _same_json(a, b):
    return json.dumps(_norm(a), sort_keys=True) == json.dumps(_norm(b), sort_keys=True)


def _outcomes(case, decoder):
    """{our step: True (passed, same data as the case) / False (did not pass)} for one case."""
    ctx = case["TESTCTX"]
    trust = TrustStore()
    try:
        trust.add_certificate(x509.load_der_x509_certificate(base64.b64decode(ctx["CERTIFICATE"])))
    except ValueError:
        pass  # a broken test certificate: nothing trusted
    clock = ctx.get("VALIDATIONCLOCK") or ctx.get("validationClockInstant")
    trace = {}
    v = dcc.verify(case.get("PREFIX", ""), trust, clock, trace=trace)
    assert isinstance(v, Verification) and v.format == "dcc"
    assert v.verified or v.reason, "a failed DCC must carry a reason"
    out = {step: v.steps.get(step) is True for step in dcc.STEPS}
    if "BASE45" in case:
        out["unprefix"] &= trace.get("base45") == case["BASE45"]
    if "COMPRESSED" in case:
        out["base45"] &= trace.get("compressed") == bytes.fromhex(case["COMPRESSED"])
    if "COSE" in case:
        out["decompress"] &= trace.get("cose") == bytes.fromhex(case["COSE"])
    if "CBOR" in case and out["decode"]:
        given = cbor2.loads(bytes.fromhex(case["CBOR"]))
        out["decode"] = given == trace.get("claims") or _same_json(dcc._jsonable(given), trace.get("dgc"))
    dgc = trace.get("dgc")
    out["validjson"] = dgc is not None and ("JSON" not in case or _same_json(dgc, case["JSON"]))
    png = case.get("2DCODE") or case.get("_2DCODE")
    if png:
        try:
            texts = decoder.decode(_gray_png(base64.b64decode(png)))
        except Exception:  # noqa: BLE001 - a broken PNG is the case's point (Q1)
            texts = []
        out["picture"] = case.get("PREFIX") in texts
    return out, v


def _load_deviations():
    data = tomllib.loads(DEVIATIONS.read_text("utf-8"))
    entries = data.get("dcc", [])
    for e in entries:
        assert {"file", "step", "reason"} <= set(e), f"deviation entry lacks file/step/reason: {e}"
        assert len(e["reason"]) > 20, f"deviation without a real reason: {e}"
    return entries


def test_dcc_testdata_conformance(testdata):
    root = testdata / "dcc" / "dgc-testdata"
    need(root.is_dir(), f"DCC test data at {root}")
    dcc.set_schema_dir(testdata / "dcc" / "ehn-dcc-schema")
    assert len(dcc._schemas()) >= 9, "the ehn-dcc-schema releases 1.0.0 to 1.3.3 were not loaded"
    dcc_valuesets.set_dir(testdata / "dcc" / "eu-dcc-valuesets")
    assert not dcc_valuesets.current().missing(), "the EU value sets were not loaded"
    decoder = _decoder()
    deviations = _load_deviations()
    used = Counter()
    tally = Counter()
    unlisted = []
    n = 0
    for name, case in _cases(root):
        n += 1
        out, v = _outcomes(case, decoder)
        for key, expected in case["EXPECTEDRESULTS"].items():
            step = STEP_OF.get(key)
            if step is None or not isinstance(expected, bool) or step not in out:
                continue
            got = out[step]
            if got == expected:
                tally[(key, "pass" if expected else "fail")] += 1
                continue
            tally[(key, "disagree")] += 1
            match = next((i for i, e in enumerate(deviations)
                          if e["step"] == key and fnmatch.fnmatch(name, e["file"])), None)
            if match is None:
                unlisted.append(f"{name} {key}: expected {expected}, got {got} ({v.reason}: {v.detail})")
            else:
                used[match] += 1
    print(f"\nEU DCC conformance: {n} cases in {root}")
    print(f"{'step':28} {'pass':>5} {'fail':>5} {'disagree':>9}")
    for key in sorted({k for k, _ in tally}):
        print(f"{key:28} {tally[(key, 'pass')]:5} {tally[(key, 'fail')]:5} {tally[(key, 'disagree')]:9}")
    agree = sum(n for (_, kind), n in tally.items() if kind != "disagree")
    print(f"steps agreeing: {agree} / {sum(tally.values())}")
    assert n >= 400, "the DCC test data is incomplete"
    assert not unlisted, "disagreements not in known_deviations.toml:\n" + "\n".join(unlisted)
    for i, e in enumerate(deviations):
        assert used[i] > 0, f"stale known deviation (matches nothing now): {e}"
        assert used[i] <= e.get("count", 1), f"deviation {e['file']} {e['step']}: {used[i]} > count {e.get('count', 1)}"
    # the steps that matter most agree everywhere
    for key in ("EXPECTEDVERIFY", "EXPECTEDEXPIRATIONCHECK", "EXPECTEDKEYUSAGE", "EXPECTEDDECODE"):
        assert tally[(key, "disagree")] == 0


# ---------------------------------------------------------------- SMART Health Cards spec examples

SHC_ISS = "https://spec.smarthealth.cards/examples/issuer"
SHC_AT = dt.datetime(2023, 7, 1, tzinfo=UTC)  # after the examples' nbf, before example 03's exp


@pytest.fixture
def shc_dir(testdata):
    d = testdata / "shc" / "spec-examples"
    need(d.is_dir(), f"SHC spec examples at {d}")
    return d


@pytest.fixture
def shc_trust(shc_dir):
    return TrustStore.load([shc_dir / "issuer" / ".well-known" / "jwks.json"])


def test_shc_trust_from_issuer_jwks(shc_trust):
    assert set(shc_trust.shc_issuers) == {SHC_ISS}
    assert len(shc_trust.shc_issuers[SHC_ISS]) == 2
    assert "vwAjHdarZuc.1687450765" in shc_trust.shc_revoked[SHC_ISS]


@pytest.mark.parametrize("example", ["00", "01", "02", "03"])
def test_shc_spec_example_from_numeric_text(shc_dir, shc_trust, example):
    files = sorted(shc_dir.glob(f"example-{example}-f-qr-code-numeric-value-*.txt"))
    texts = [f.read_text().strip() for f in files]
    if len(texts) > 1:
        from device.credentials.formats import ChunkAssembler

        for t in texts:  # each part alone is incomplete
            assert shc.verify(t, shc_trust, SHC_AT).reason == "incomplete"
        texts = ChunkAssembler().feed_all(texts, now=0.0)
    assert len(texts) == 1
    trace = {}
    v = shc.verify(texts[0], shc_trust, SHC_AT, trace=trace)
    assert v.format == "shc"
    assert trace["jws"] == (shc_dir / f"example-{example}-d-jws.txt").read_text().strip()
    expanded = json.loads((shc_dir / f"example-{example}-b-jws-payload-expanded.json").read_text())
    assert trace["payload"]["vc"]["credentialSubject"] == expanded["vc"]["credentialSubject"]
    for step in ("decode", "inflate", "signature", "issuer", "time"):
        assert v.steps[step] is True, (step, v.reason, v.detail)
    assert v.issuer == SHC_ISS
    if example == "03":
        assert v.steps["revocation"] is False and v.reason == "revoked"
    else:
        assert v.steps["revocation"] is True and v.reason is None and v.verified


def test_shc_example_02_from_its_three_pngs(shc_dir, shc_trust):
    from device.credentials.formats import ChunkAssembler

    decoder = _decoder()
    asm = ChunkAssembler()
    ready = []
    pngs = sorted((shc_dir / "png").glob("example-02-g-qr-code-*.png"))
    assert len(pngs) == 3
    for i, png in enumerate(reversed(pngs)):  # shown out of order, one per frame
        texts = decoder.decode(_gray_png(png.read_bytes()))
        assert len(texts) == 1 and texts[0].startswith("shc:/")
        ready += asm.feed_all(texts, now=float(i))
    assert len(ready) == 1
    v = shc.verify(ready[0], shc_trust, SHC_AT)
    assert v.verified, (v.reason, v.detail)
    assert v.claims["kind"] == "laboratory"


@pytest.mark.parametrize("example", ["00", "01", "03"])
def test_shc_single_pngs(shc_dir, shc_trust, example):
    texts = _decoder().decode(_gray_png((shc_dir / "png" / f"example-{example}-g-qr-code-0.png").read_bytes()))
    assert texts == [(shc_dir / f"example-{example}-f-qr-code-numeric-value-0.txt").read_text().strip()]
    v = shc.verify(texts[0], shc_trust, SHC_AT)
    assert v.reason == ("revoked" if example == "03" else None)


def test_shc_unknown_issuer_without_trust(shc_dir):
    text = (shc_dir / "example-00-f-qr-code-numeric-value-0.txt").read_text()
    v = shc.verify(text, TrustStore(), SHC_AT)
    assert v.steps["signature"] is False and v.reason == "unknown_issuer"
    assert v.person_id is None and v.person == {} and v.credential_id is None


# ---------------------------------------------------------------- DCC trust material


def _case(testdata, rel):
    return json.loads((testdata / "dcc" / "dgc-testdata" / rel).read_text())


def test_dcc_trust_list_single_certificates_and_unknown_kid(testdata, tmp_path):
    need((testdata / "dcc" / "dgc-testdata").is_dir(), "DCC test data")
    cases = [_case(testdata, r) for r in ("common/2DCode/raw/CO1.json", "common/2DCode/raw/CO3.json",
                                          "DE/2DCode/raw/1.json")]
    ders = [base64.b64decode(c["TESTCTX"]["CERTIFICATE"]) for c in cases]
    certs = [x509.load_der_x509_certificate(d) for d in ders]
    # the EU gateway's trust list export shape
    gateway = [{"kid": base64.b64encode(dcc_kid(c)).decode(), "country": "XX", "certificateType": "DSC",
                "rawData": base64.b64encode(d).decode()} for c, d in zip(certs, ders, strict=True)]
    (tmp_path / "trustlist.json").write_text(json.dumps({"certificates": gateway}))
    (tmp_path / "plain.json").write_text(json.dumps({g["kid"]: g["rawData"] for g in gateway}))
    (tmp_path / "one.der").write_bytes(ders[2])
    (tmp_path / "one.pem").write_bytes(certs[2].public_bytes(serialization.Encoding.PEM))
    for files, trusted in (
        (["trustlist.json"], [0, 1, 2]),
        (["plain.json"], [0, 1, 2]),
        (["one.der"], [2]),
        (["one.pem"], [2]),
    ):
        store = TrustStore.load([tmp_path / f for f in files])
        for i, c in enumerate(cases):
            v = dcc.verify(c["PREFIX"], store, c["TESTCTX"]["VALIDATIONCLOCK"])
            if i in trusted:
                assert v.steps["signature"] is True, (files, i, v.detail)
            else:
                assert v.steps["signature"] is False and v.reason == "unknown_issuer"
                assert v.person_id is None and v.person == {} and v.credential_id is None


def test_dcc_broken_trust_list_is_refused(tmp_path):
    from chot.errors import CredentialError

    (tmp_path / "bad.json").write_text(json.dumps([{"kid": "AAAAAAAAAAA=", "rawData": "bm90IGEgY2VydA=="}]))
    with pytest.raises(CredentialError, match="re-download"):
        TrustStore.load([tmp_path / "bad.json"])


# ---------------------------------------------------------------- DCC policy rules, end to end

OID_T, OID_V, OID_R = (x509.ObjectIdentifier(f"1.3.6.1.4.1.1847.2021.1.{i}") for i in (1, 2, 3))
NOW = dt.datetime(2021, 9, 1, 12, 0, tzinfo=UTC)


def _signer(ekus):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"), x509.NameAttribute(NameOID.COMMON_NAME, "DSC")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2021, 1, 1, tzinfo=UTC)).not_valid_after(dt.datetime(2023, 1, 1, tzinfo=UTC))
    )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    trust = TrustStore()
    trust.add_certificate(cert)
    return key, cert, trust


@pytest.fixture(scope="module")
def signer():
    return _signer([OID_V, OID_T, OID_R])


def make_dcc(signer, entry_kind, entry, iat=NOW - dt.timedelta(days=10), days=365, dob="1990-05-17"):
    key, cert, _ = signer
    dgc = {"ver": "1.3.0", "nam": {"fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Văn An", "gnt": "VAN<AN"},
           "dob": dob, entry_kind: [entry]}
    claims = {1: "VN", 6: int(iat.timestamp()), 4: int((iat + dt.timedelta(days=days)).timestamp()), -260: {1: dgc}}
    protected = cbor2.dumps({1: -7, 4: dcc_kid(cert)})
    payload = cbor2.dumps(claims)
    sig = native.cose_sign(key, native.sig_structure(protected, payload))
    return "HC1:" + native.b45encode(zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))))


def vacc(dn, sd):
    return {"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215", "dn": dn, "sd": sd,
            "dt": "2021-06-01", "co": "VN", "is": "Ministry of Health", "ci": "URN:UVCI:01:VN:ABC123"}


def test(tr, sc):
    return {"tg": "840539006", "tt": "LP6464-4", "sc": sc, "tr": tr, "tc": "Hanoi", "co": "VN",
            "is": "Ministry of Health", "ci": "URN:UVCI:01:VN:T1"}


def recovery(fr):
    return {"tg": "840539006", "fr": fr, "co": "VN", "is": "Ministry of Health", "df": fr, "du": "2022-12-31",
            "ci": "URN:UVCI:01:VN:R1"}


test.__test__ = False  # a helper named like a test


@pytest.mark.parametrize(
    "kind,entry,cfg,expected",
    [
        ("v", vacc(2, 2), {}, "ok"),
        ("v", vacc(3, 3), {}, "ok"),
        ("v", vacc(1, 2), {}, "vaccination_incomplete"),
        ("v", vacc(1, 2), {"dcc_require_complete_vaccination": False}, "ok"),
        ("t", test("260415000", "2021-09-01T06:00:00Z"), {}, "ok"),
        ("t", test("260373001", "2021-09-01T06:00:00Z"), {}, "test_positive"),
        ("t", test("260415000", "2021-08-28T06:00:00Z"), {}, "test_expired"),
        ("t", test("260415000", "2021-08-28T06:00:00Z"), {"dcc_test_hours": 120}, "ok"),
        ("r", recovery("2021-06-01"), {}, "ok"),
        ("r", recovery("2021-01-15"), {}, "recovery_expired"),
        ("r", recovery("2021-01-15"), {"dcc_recovery_days": 365}, "ok"),
    ],
)
def test_dcc_policy_rules(signer, kind, entry, cfg, expected):
    text = make_dcc(signer, kind, entry)
    v, d = Checker(signer[2], Policy(cfg)).check(text, NOW)
    assert d.reason == expected, (v.reason, v.detail, v.steps)
    assert v.verified and v.person_id == "nd:NGUYEN VAN AN|1990-05-17" and v.person["dob"] == "1990-05-17"
    assert v.credential_id == entry["ci"] and v.kind == dcc.KINDS[kind] == v.person["kind"]
    assert "NGUYEN" not in repr(v) and "Nguy" not in repr(v) and entry["ci"] not in repr(v)


@pytest.mark.parametrize("ekus,kind,ok", [
    ([OID_T], "v", False), ([OID_V], "v", True), ([OID_R], "t", False), ([], "r", True),
    ([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.2")], "r", True),  # no DCC OID: anything
])
def test_dcc_key_usage(ekus, kind, ok):
    s = _signer(ekus)
    entry = {"v": vacc(2, 2), "t": test("260415000", "2021-09-01T06:00:00Z"), "r": recovery("2021-06-01")}[kind]
    v = dcc.verify(make_dcc(s, kind, entry), s[2], NOW)
    assert v.steps["signature"] is True
    assert v.steps["key_usage"] is ok
    assert (v.reason is None) if ok else (v.reason == "key_usage")


def test_dcc_recovery_rules_direct():
    v = Verification(text=None, format="dcc", claims={"kind": "recovery", "entry": recovery("2021-06-01")})
    assert dcc.rules(v, {"dcc_recovery_days": 180}, NOW) is None
    assert dcc.rules(v, {"dcc_recovery_days": 30}, NOW) == "recovery_expired"


def test_dcc_person_id_is_stable_and_only_when_signed(signer):
    a = dcc.verify(make_dcc(signer, "v", vacc(2, 2)), signer[2], NOW)
    b = dcc.verify(make_dcc(signer, "t", test("260415000", "2021-09-01T06:00:00Z")), signer[2], NOW)
    c = dcc.verify(make_dcc(signer, "v", vacc(2, 2), dob="1991-05-17"), signer[2], NOW)
    assert a.person_id == b.person_id == personal.person_id_for_name_dob("Nguyễn Văn An", "1990-05-17")
    assert c.person_id == "nd:NGUYEN VAN AN|1991-05-17"
    assert a.person == {"kind": "vaccination", "name": "Nguyễn Văn An", "dob": "1990-05-17", "doses": 2,
                        "last_dose": "2021-06-01", "issuer": "VN"}
    assert set(a.person) <= set(personal.PERSON_FIELDS)
    assert (a.credential_id, b.credential_id) == ("URN:UVCI:01:VN:ABC123", "URN:UVCI:01:VN:T1")
    assert (a.kind, b.kind) == ("vaccination", "test")
    # signed by a certificate nobody trusts: the kind is known, the person is not filled
    other = _signer([OID_V])
    u = dcc.verify(make_dcc(other, "v", vacc(2, 2)), signer[2], NOW)
    assert u.reason == "unknown_issuer" and u.kind == "vaccination"
    assert u.person == {} and u.person_id is None and u.credential_id is None
    # a certificate without a usable date of birth names nobody (no person id), still verifies
    d = dcc.verify(make_dcc(signer, "v", vacc(2, 2), dob=""), signer[2], NOW)
    assert d.steps["signature"] is True and d.person_id is None and d.person["name"] == "Nguyễn Văn An"


def test_dcc_deny_list_by_person_and_by_certificate_identifier(signer):
    from device.credentials.denylist import DenyList

    small = {"t": 1, "m_kib": 8192, "p": 1}
    text = make_dcc(signer, "v", vacc(2, 2))
    person = DenyList.build(1, [personal.person_id_for_name_dob("NGUYEN VAN AN", "1990-05-17")], params=small)
    assert Checker(signer[2], Policy({}, person)).check(text, NOW)[1].reason == "denylisted"
    other = make_dcc(signer, "v", vacc(2, 2), dob="1991-05-17")
    assert Checker(signer[2], Policy({}, person)).check(other, NOW)[1].reason == "ok"
    revoked = DenyList.build(2, credential_ids=["URN:UVCI:01:VN:ABC123"], params=small)
    assert Checker(signer[2], Policy({}, revoked)).check(text, NOW)[1].reason == "revoked"
    test_text = make_dcc(signer, "t", test("260415000", "2021-09-01T06:00:00Z"))
    assert Checker(signer[2], Policy({}, revoked)).check(test_text, NOW)[1].reason == "ok"


def test_dcc_time_and_certificate_validity(signer):
    text = make_dcc(signer, "v", vacc(2, 2), days=30)
    assert dcc.verify(text, signer[2], NOW + dt.timedelta(days=25)).reason == "expired"
    assert dcc.verify(text, signer[2], NOW - dt.timedelta(days=11)).reason == "not_yet_valid"
    assert dcc.verify(text, signer[2], NOW - dt.timedelta(days=11), skew_s=2 * 86400).verified
    # the signing certificate expired on 2023-01-01: a certificate valid until 2024 fails then, in the
    # time step (its signature is still cryptographically valid, as the reference verifiers say)
    late = make_dcc(signer, "v", vacc(2, 2), days=900)
    v = dcc.verify(late, signer[2], dt.datetime(2023, 6, 1, tzinfo=UTC))
    assert v.steps["signature"] is True and v.steps["time"] is False and v.reason == "dsc_expired"
