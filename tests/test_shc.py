"""SMART Health Cards: numeric decoding and chunks, issuer binding, time, revocation, trust
files (jwks.json, wrapper, issuer.txt, CRLs) and the SHC policy rules, on cards signed here
with throwaway issuer keys (the spec's own examples are in test_dcc_conformance.py).
"""

import base64
import datetime as dt
import json
import zlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from chot import personal
from chot.errors import CredentialError
from device.credentials import shc
from device.credentials.policy import Checker, Policy
from device.credentials.trust import TrustStore
from device.credentials.verify import verify_text

UTC = dt.UTC
NOW = dt.datetime(2021, 9, 1, 12, 0, tzinfo=UTC)
ISS_A = "https://issuer-a.example/shc"
ISS_B = "https://issuer-b.example/shc"


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# the tests name keys (a1, a2, b1); a key's kid is its JWK thumbprint (RFC 7638), as the spec requires
KID = {}


def jwk(key, name):
    n = key.public_key().public_numbers()
    out = {"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256",
           "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}
    KID[name] = shc.jwk_thumbprint(out)
    return {**out, "kid": KID[name]}


def numeric(jws):
    return "shc:/" + "".join(f"{ord(c) - 45:02d}" for c in jws)


def sign(key, name, payload, header=None):
    header = header or {"zip": "DEF", "alg": "ES256", "kid": KID.get(name, name)}
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(json.dumps(payload, separators=(",", ":")).encode()) + c.flush()
    signing_input = b64u(json.dumps(header).encode()) + "." + b64u(body)
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def patient(family="Trần", given=("Thị", "Bình"), dob="1985-03-02"):
    return {"resource": {"resourceType": "Patient", "name": [{"family": family, "given": list(given)}],
                         "birthDate": dob}}


def immunization(cvx, date="2021-06-01", status="completed"):
    return {"resource": {"resourceType": "Immunization", "status": status,
                         "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": cvx}]},
                         "occurrenceDateTime": date}}


def covid_test(value, when, loinc="94500-6"):
    return {"resource": {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                         "effectiveDateTime": when,
                         "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": value}]}}}


def card(entries, iss=ISS_A, nbf=NOW - dt.timedelta(days=1), exp=None, rid=None):
    vc = {"type": ["https://smarthealth.cards#health-card"],
          "credentialSubject": {"fhirVersion": "4.0.1", "fhirBundle": {
              "resourceType": "Bundle", "type": "collection", "entry": entries}}}
    if rid:
        vc["rid"] = rid
    p = {"iss": iss, "nbf": nbf.timestamp(), "vc": vc}
    if exp is not None:
        p["exp"] = exp.timestamp()
    return p


@pytest.fixture(scope="module")
def issuers(tmp_path_factory):
    """Two issuers: A (keys a1, a2) and B (key b1); files as an issuer publishes them."""
    d = tmp_path_factory.mktemp("issuers")
    keys = {k: ec.generate_private_key(ec.SECP256R1()) for k in ("a1", "a2", "b1")}
    wk = d / "a" / ".well-known"
    (wk / "crl").mkdir(parents=True)
    (wk / "jwks.json").write_text(json.dumps({"keys": [jwk(keys["a1"], "a1"), jwk(keys["a2"], "a2")]}))
    (d / "a" / "issuer.txt").write_text(ISS_A + "\n")
    (wk / "crl" / f"{KID['a1']}.json").write_text(json.dumps({"kid": KID["a1"], "method": "rid", "ctr": 1,
                                                    "rids": ["REVOKED01", "UNTIL0001.1630000000"]}))
    (d / "b.json").write_text(json.dumps({"iss": ISS_B, "keys": [jwk(keys["b1"], "b1")]}))
    trust = TrustStore.load([wk / "jwks.json", d / "b.json"])
    return keys, trust, d


def test_trust_files_are_loaded_with_their_issuer_and_crl(issuers):
    keys, trust, _ = issuers
    assert set(trust.shc_issuers) == {ISS_A, ISS_B}
    assert set(trust.shc_issuers[ISS_A]) == {KID["a1"], KID["a2"]}
    assert trust.shc_revoked[ISS_A] == {"REVOKED01", "UNTIL0001.1630000000"}


def test_good_card_fills_the_person_in_memory_only(issuers):
    keys, trust, _ = issuers
    text = numeric(sign(keys["a2"], "a2", card([patient(), immunization("208"), immunization("208", "2021-07-01")],
                                               rid="RID0042")))
    v = shc.verify(text, trust, NOW)
    assert v.verified and v.reason is None, v.detail
    assert v.person == {"kind": "vaccination", "name": "Thị Bình Trần", "dob": "1985-03-02", "doses": 2,
                        "last_dose": "2021-07-01", "issuer": ISS_A}
    assert v.person_id == personal.person_id_for_name_dob("Trần Thị Bình", "1985-03-02")
    assert v.person_id == "nd:TRAN THI BINH|1985-03-02"
    assert v.credential_id == "RID0042" and v.kind == "vaccination"
    for secret in ("Trần", "Bình", "TRAN", "RID0042", "1985-03-02"):
        assert secret not in repr(v)
    v2 = verify_text(text, trust, NOW)  # the common entry point dispatches shc:/
    assert v2.format == "shc" and v2.verified and v2.person_id == v.person_id
    assert Checker(trust, Policy()).check(text, NOW)[1].reason == "ok"
    # no rid: no credential id; a laboratory card is a test
    lab = shc.verify(numeric(sign(keys["a2"], "a2", card([patient(), covid_test("260415000", "2021-09-01")]))),
                     trust, NOW)
    assert lab.credential_id is None and lab.kind == "test" == lab.person["kind"] and lab.person_id == v.person_id


def test_key_of_one_issuer_cannot_vouch_for_another(issuers):
    keys, trust, _ = issuers
    v = shc.verify(numeric(sign(keys["b1"], "b1", card([patient()], iss=ISS_A, rid="RID0001"))), trust, NOW)
    assert v.steps["signature"] is True and v.steps["issuer"] is False
    assert v.reason == "unknown_issuer" and v.person_id is None and v.person == {} and v.credential_id is None


def test_forged_and_tampered_cards_fail(issuers):
    keys, trust, _ = issuers
    forger = ec.generate_private_key(ec.SECP256R1())
    v = shc.verify(numeric(sign(forger, "a1", card([patient()]))), trust, NOW)
    assert v.steps["signature"] is False and v.reason == "bad_signature"
    jws = sign(keys["a1"], "a1", card([patient()]))
    h, p, s = jws.split(".")
    other = sign(keys["a1"], "a1", card([patient(family="Lê")])).split(".")[1]
    assert shc.verify(numeric(f"{h}.{other}.{s}"), trust, NOW).reason == "bad_signature"
    v = shc.verify(numeric(sign(keys["a1"], "zz", card([patient()]))), trust, NOW)
    assert v.reason == "unknown_issuer"
    rs256 = sign(keys["a1"], "a1", card([patient()]), header={"zip": "DEF", "alg": "RS256", "kid": KID["a1"]})
    assert shc.verify(numeric(rs256), trust, NOW).reason == "bad_signature"
    nozip = sign(keys["a1"], "a1", card([patient()]), header={"alg": "ES256", "kid": KID["a1"]})
    assert shc.verify(numeric(nozip), trust, NOW).reason == "unreadable"


def test_a_signed_payload_that_is_not_a_health_card_fails_schema(issuers):
    """The spec's musts for what a card holds: vc.type has the health-card type, and
    vc.credentialSubject.fhirBundle is a FHIR Bundle with entries. Signed by a trusted issuer or not,
    anything else is no SMART Health Card (reason schema, at the inflate step; nothing after it)."""
    keys, trust, _ = issuers
    good = card([patient(), immunization("208"), immunization("208")])
    assert shc.verify(numeric(sign(keys["a1"], "a1", good)), trust, NOW).verified

    def variant(change):
        p = json.loads(json.dumps(good))
        change(p["vc"])
        return shc.verify(numeric(sign(keys["a1"], "a1", p)), trust, NOW)

    for change, what in (
        (lambda vc: vc.pop("type"), "vc.type"),
        (lambda vc: vc.update(type=["VerifiableCredential"]), "vc.type"),
        (lambda vc: vc.update(type="https://smarthealth.cards#health-card"), "vc.type"),
        (lambda vc: vc.pop("credentialSubject"), "fhirBundle"),
        (lambda vc: vc["credentialSubject"].pop("fhirBundle"), "fhirBundle"),
        (lambda vc: vc["credentialSubject"]["fhirBundle"].update(resourceType="Patient"), "fhirBundle"),
        (lambda vc: vc["credentialSubject"]["fhirBundle"].update(entry=[]), "fhirBundle"),
    ):
        v = variant(change)
        assert (v.reason, v.steps["signature"], v.steps["inflate"], v.steps["issuer"]) == (
            "schema", True, False, None), v.detail
        assert what in v.detail and not v.verified and not v.person and v.person_id is None


def test_time_nbf_and_exp(issuers):
    keys, trust, _ = issuers
    future = numeric(sign(keys["a1"], "a1", card([patient()], nbf=NOW + dt.timedelta(hours=1))))
    assert shc.verify(future, trust, NOW).reason == "not_yet_valid"
    assert shc.verify(future, trust, NOW, skew_s=7200).verified
    old = numeric(sign(keys["a1"], "a1", card([patient()], exp=NOW - dt.timedelta(seconds=1))))
    assert shc.verify(old, trust, NOW).reason == "expired"


def test_revocation_by_rid_with_and_without_timestamp(issuers):
    keys, trust, _ = issuers

    def check(rid, nbf):
        return shc.verify(numeric(sign(keys["a1"], "a1", card([patient()], rid=rid, nbf=nbf))), trust, NOW)

    early = dt.datetime.fromtimestamp(1630000000 - 10, UTC)
    late = dt.datetime.fromtimestamp(1630000000 + 10, UTC)
    assert check("REVOKED01", late).reason == "revoked"
    assert check("UNTIL0001", early).reason == "revoked"  # issued before the revocation time
    v = check("UNTIL0001", late)  # re-issued after it
    assert v.verified and v.steps["revocation"] is True
    assert check("OTHER0001", late).steps["revocation"] is True
    # issuer B has no CRL: revocation not checked (None), the card still verifies
    vb = shc.verify(numeric(sign(keys["b1"], "b1", card([patient()], iss=ISS_B, rid="REVOKED01"))), trust, NOW)
    assert vb.steps["revocation"] is None and vb.verified


def test_numeric_decoding_and_chunks(issuers):
    keys, trust, _ = issuers
    text = numeric(sign(keys["a1"], "a1", card([patient()])))
    digits = text[5:]
    assert shc.verify("shc:/1/1/" + digits, trust, NOW).verified
    assert shc.verify("SHC:/" + digits, trust, NOW).verified
    half = len(digits) // 2 // 2 * 2
    v = shc.verify("shc:/1/2/" + digits[:half], trust, NOW)
    assert v.reason == "incomplete" and v.steps["decode"] is False
    from device.credentials.formats import ChunkAssembler

    asm = ChunkAssembler()
    assert asm.feed("shc:/2/2/" + digits[half:], now=0.0) is None
    assert shc.verify(asm.feed("shc:/1/2/" + digits[:half], now=1.0), trust, NOW).verified
    for bad in ("shc:/" + digits[:-1], "shc:/" + "78" + digits[2:], "shc:/12ab", "shc:/", "shc:/3/2/1234"):
        v = shc.verify(bad, trust, NOW)
        assert v.reason == "unreadable" and v.steps["decode"] is False, bad
    assert shc.verify("HC1:ABC", trust, NOW).reason == "unknown_format"


def test_trust_file_errors(tmp_path, issuers):
    keys = issuers[0]
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk(keys["a1"], "a1")]}))
    with pytest.raises(CredentialError, match="issuer.txt"):
        TrustStore.load([tmp_path / "jwks.json"])
    (tmp_path / "rsa.json").write_text(json.dumps({"iss": ISS_A, "keys": [{"kty": "RSA", "kid": "r", "n": "AQAB"}]}))
    with pytest.raises(CredentialError, match="ES256"):
        TrustStore.load([tmp_path / "rsa.json"])
    crl = tmp_path / "crl.json"
    crl.write_text(json.dumps({"kid": KID["b1"], "method": "rid", "rids": ["X"]}))
    with pytest.raises(CredentialError, match="before its CRL"):
        TrustStore.load([crl])
    store = TrustStore.load([issuers[2] / "b.json", crl])  # a CRL given on its own (policy.shc_crl)
    assert store.shc_revoked[ISS_B] == {"X"}


# ---------------------------------------------------------------- policy rules


@pytest.mark.parametrize(
    "entries,cfg,expected",
    [
        ([immunization("208"), immunization("208")], {}, "ok"),
        ([immunization("208")], {}, "vaccination_incomplete"),
        ([immunization("208")], {"shc_require_complete_vaccination": False}, "ok"),
        ([immunization("212")], {}, "ok"),  # Janssen: one dose
        ([immunization("208"), immunization("208", status="entered-in-error")], {}, "vaccination_incomplete"),
        ([covid_test("260385009", "2021-09-01T08:00:00Z")], {}, "ok"),
        ([covid_test("260415000", "2021-09-01T08:00:00Z")], {}, "ok"),
        ([covid_test("10828004", "2021-09-01T08:00:00Z")], {}, "test_positive"),
        ([covid_test("260385009", "2021-08-25T08:00:00Z")], {}, "test_expired"),
        ([covid_test("260385009", "2021-08-25T08:00:00Z")], {"dcc_test_hours": 240}, "ok"),
        ([covid_test("260385009", "2021-09-01T08:00:00Z", loinc="2951-2")], {}, "vaccination_incomplete"),
        ([], {}, "vaccination_incomplete"),
    ],
)
def test_shc_policy_rules(issuers, entries, cfg, expected):
    keys, trust, _ = issuers
    text = numeric(sign(keys["a1"], "a1", card([patient(), *entries])))
    v, d = Checker(trust, Policy(cfg)).check(text, NOW)
    assert v.verified, v.detail
    assert d.reason == expected


def test_shc_not_accepted_when_policy_excludes_it(issuers):
    keys, trust, _ = issuers
    text = numeric(sign(keys["a1"], "a1", card([patient(), immunization("212")])))
    assert Checker(trust, Policy({"accept_formats": ["native", "dcc"]})).check(text, NOW)[1].reason == \
        "format_not_accepted"


def test_a_key_whose_kid_is_not_its_thumbprint_is_trusted_with_a_warning(tmp_path, caplog):
    """The spec: an issuer key's kid is its JWK thumbprint (RFC 7638). The kid only names the key; the
    signature is what is checked. A key published under another kid is trusted under that kid, and the
    technician who loads it is warned."""
    key = ec.generate_private_key(ec.SECP256R1())
    good = jwk(key, "t1")
    assert good["kid"] == KID["t1"] == shc.jwk_thumbprint(good) and len(good["kid"]) == 43
    (tmp_path / "renamed.json").write_text(json.dumps({"iss": ISS_A, "keys": [{**good, "kid": "my-key-2021"}]}))
    with caplog.at_level("WARNING", logger="device.credentials.shc"):
        trust = TrustStore.load([tmp_path / "renamed.json"])
    assert set(trust.shc_issuers[ISS_A]) == {"my-key-2021"}
    assert any("my-key-2021" in r.getMessage() and "RFC 7638" in r.getMessage() for r in caplog.records)
    assert shc.verify(numeric(sign(key, "my-key-2021", card([patient()]))), trust, NOW).verified
    caplog.clear()
    (tmp_path / "good.json").write_text(json.dumps({"iss": ISS_A, "keys": [good]}))
    with caplog.at_level("WARNING", logger="device.credentials.shc"):
        TrustStore.load([tmp_path / "good.json"])
    assert not [r for r in caplog.records if "RFC 7638" in r.getMessage()]


def test_the_spec_examples_keys_have_their_thumbprints_as_kids(testdata):
    jwks = testdata / "shc" / "spec-examples" / "issuer" / ".well-known" / "jwks.json"
    keys = json.loads(jwks.read_text())["keys"]
    assert keys and all(shc.jwk_thumbprint(k) == k["kid"] for k in keys)
