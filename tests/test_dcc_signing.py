"""EU DCC signatures, signing-certificate validity, CSCA chains and revocation lists (issue 15).

Every signing certificate here is made in the test with `cryptography` (self-signed DSCs, or a
CSCA and the DSCs it issues), and every DCC is a real certificate payload, COSE_Sign1 signed,
zlib-compressed and base45-encoded as an issuer does.
"""

import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
import zlib

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from chot.errors import ChotError
from device.credentials import dcc, native
from device.credentials.policy import Checker, Policy
from device.credentials.trust import TrustStore, dcc_kid

UTC = dt.UTC
NOW = dt.datetime(2021, 9, 1, 12, 0, tzinfo=UTC)
ISSUED = NOW - dt.timedelta(days=10)
CI = "URN:UVCI:01:VN:SIGNTEST42#K"


# ---------------------------------------------------------------- making keys, certificates and DCCs

KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ES512": lambda: ec.generate_private_key(ec.SECP521R1()),
    "PS256": lambda: rsa.generate_private_key(65537, 2048),
    "PS384": lambda: rsa.generate_private_key(65537, 3072),
    "PS512": lambda: rsa.generate_private_key(65537, 2048),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}
ALG = {name: alg for alg, name in dcc.ALG_NAMES.items()}
HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def _name(cn, country="VN"):
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(key, cn="DSC", country="VN", issuer=None, issuer_key=None, ca=False,
              start=dt.datetime(2021, 1, 1, tzinfo=UTC), end=dt.datetime(2023, 1, 1, tzinfo=UTC)):
    """A certificate for `key`: self-signed, or issued by (issuer certificate, issuer key)."""
    signer = issuer_key or key
    builder = (x509.CertificateBuilder().subject_name(_name(cn, country))
               .issuer_name(issuer.subject if issuer is not None else _name(cn, country))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algo)


def cose_sign(name, key, data, salt=None):
    """A COSE signature of `data` with algorithm `name`: raw r || s for ECDSA, PSS with salt = hash length."""
    if name.startswith("ES"):
        size = (key.curve.key_size + 7) // 8
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(HASH[name[2:]]())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if name.startswith("PS"):
        h = HASH[name[2:]]
        return key.sign(data, padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size if salt is None else salt),
                        h())
    return key.sign(data)


def vaccination(ci=CI):
    return {"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215", "dn": 2, "sd": 2,
            "dt": "2021-06-01", "co": "VN", "is": "Ministry of Health", "ci": ci}


def make_hc1(name, key, cert, iss="VN", ci=CI, days=365, kid_where="protected", signature=None, salt=None,
             issued=ISSUED):
    """An "HC1:" text of a real vaccination certificate signed with algorithm `name`."""
    dgc = {"ver": "1.3.0", "nam": {"fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Văn An", "gnt": "VAN<AN"},
           "dob": "1990-05-17", "v": [vaccination(ci)]}
    claims = {1: iss, 6: int(issued.timestamp()), 4: int((issued + dt.timedelta(days=days)).timestamp()),
              -260: {1: dgc}}
    kid = dcc_kid(cert)
    protected = cbor2.dumps({1: ALG[name], 4: kid} if kid_where == "protected" else {1: ALG[name]})
    unprotected = {4: kid} if kid_where == "unprotected" else {}
    payload = cbor2.dumps(claims)
    sig = signature if signature is not None else cose_sign(name, key, native.sig_structure(protected, payload), salt)
    cose = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, sig]))
    return "HC1:" + native.b45encode(zlib.compress(cose))


def trusting(*certs):
    store = TrustStore()
    for c in certs:
        store.add_certificate(c)
    return store


@pytest.fixture(scope="module")
def signers():
    """{algorithm name: (private key, self-signed DSC)}, one per COSE algorithm."""
    out = {}
    for name, make in KEYS.items():
        key = make()
        out[name] = (key, make_cert(key, cn=f"DSC {name}"))
    return out


# ---------------------------------------------------------------- 1. every COSE algorithm


@pytest.mark.parametrize("name", list(KEYS))
def test_every_cose_algorithm_verifies(signers, name):
    key, cert = signers[name]
    text = make_hc1(name, key, cert)
    v = dcc.verify(text, trusting(cert), NOW)
    assert v.verified and v.steps["signature"] is True, (v.reason, v.detail)
    assert v.credential_id == CI and v.person_id == "nd:NGUYEN VAN AN|1990-05-17"
    assert Checker(trusting(cert), Policy({})).check(text, NOW)[1].reason == "ok"
    # a changed payload does not verify (the same signature over another content)
    tampered = make_hc1(name, key, cert, signature=_signature_of(text), ci=CI + "X")
    bad = dcc.verify(tampered, trusting(cert), NOW)
    assert bad.steps["signature"] is False and bad.reason == "bad_signature"
    assert bad.person_id is None and bad.credential_id is None


def _signature_of(text):
    return cbor2.loads(native.inflate_bounded(native.b45decode(text[4:]), 65536)).value[3]


def test_es384_and_ps384_signatures_are_not_bad_signatures_any_more(signers):
    """The issue's first finding: P-384 (ES384) and PS384 signing certificates were reported bad."""
    for name in ("ES384", "PS384"):
        key, cert = signers[name]
        v = dcc.verify(make_hc1(name, key, cert), trusting(cert), NOW)
        assert (v.steps["signature"], v.reason) == (True, None), (name, v.detail)


@pytest.mark.parametrize("header,key_of", [
    ("ES256", "ES384"), ("ES384", "ES256"), ("ES512", "ES384"),  # the curve must be the algorithm's
    ("PS256", "ES256"), ("ES256", "PS256"), ("EdDSA", "ES256"), ("ES256", "EdDSA"),  # and the key type
])
def test_algorithm_and_key_type_must_agree(signers, header, key_of):
    key, cert = signers[key_of]
    # signed by the key as well as it can (its own algorithm), announced as `header`
    protected = cbor2.dumps({1: ALG[header], 4: dcc_kid(cert)})
    text = make_hc1(key_of, key, cert)
    cose = cbor2.loads(native.inflate_bounded(native.b45decode(text[4:]), 65536)).value
    sig = cose_sign(key_of, key, native.sig_structure(protected, cose[2]))
    forged = "HC1:" + native.b45encode(zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cose[2], sig]))))
    v = dcc.verify(forged, trusting(cert), NOW)
    assert v.steps["signature"] is False and v.reason == "bad_signature", (header, key_of)


def test_rsa_pss_salt_must_be_the_hash_length(signers):
    key, cert = signers["PS256"]
    for salt in (0, 20, padding.PSS.MAX_LENGTH):
        v = dcc.verify(make_hc1("PS256", key, cert, salt=salt), trusting(cert), NOW)
        assert v.reason == "bad_signature", salt
    assert dcc.verify(make_hc1("PS256", key, cert, salt=32), trusting(cert), NOW).verified


def test_short_rsa_keys_and_der_ecdsa_signatures_are_refused(signers):
    small = rsa.generate_private_key(65537, 1024)
    cert = make_cert(small, cn="small")
    assert dcc.verify(make_hc1("PS256", small, cert), trusting(cert), NOW).reason == "bad_signature"
    key, cert = signers["ES384"]
    protected = cbor2.dumps({1: ALG["ES384"], 4: dcc_kid(cert)})
    text = make_hc1("ES384", key, cert)
    payload = cbor2.loads(native.inflate_bounded(native.b45decode(text[4:]), 65536)).value[2]
    der = key.sign(native.sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))  # DER, not r || s
    assert dcc.verify(make_hc1("ES384", key, cert, signature=der), trusting(cert), NOW).reason == "bad_signature"


def test_unknown_algorithm_and_kid_in_either_header(signers):
    key, cert = signers["ES512"]
    v = dcc.verify(make_hc1("ES512", key, cert, kid_where="unprotected"), trusting(cert), NOW)
    assert v.verified  # kid in the unprotected header
    assert dcc_kid(cert) == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()[:8]
    protected = cbor2.dumps({1: -260, 4: dcc_kid(cert)})  # not a signature algorithm
    text = make_hc1("ES512", key, cert)
    cose = cbor2.loads(native.inflate_bounded(native.b45decode(text[4:]), 65536)).value
    odd = "HC1:" + native.b45encode(zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cose[2], cose[3]]))))
    v = dcc.verify(odd, trusting(cert), NOW)
    assert v.reason == "bad_signature" and "COSE alg" in v.detail


# ---------------------------------------------------------------- 2. signature and time are separate steps


@pytest.mark.parametrize("at,reason", [
    (dt.datetime(2023, 6, 1, tzinfo=UTC), "dsc_expired"),
    (dt.datetime(2020, 12, 1, tzinfo=UTC), "dsc_not_yet_valid"),
])
def test_dsc_validity_belongs_to_the_time_step(signers, at, reason):
    key, cert = signers["ES256"]
    # issued on 2020-11-30 for 1000 days, so that only the signing certificate's dates are wrong at `at`
    text = make_hc1("ES256", key, cert, days=1000, issued=dt.datetime(2020, 11, 30, tzinfo=UTC))
    v = dcc.verify(text, trusting(cert), at)
    assert v.steps["signature"] is True, "a cryptographically valid signature is reported valid"
    assert v.steps["time"] is False and v.reason == reason
    assert v.person_id is not None  # the identity is authentic; the decision says why it fails
    checker = Checker(trusting(cert), Policy({}))
    assert checker.check(text, at)[1].reason == reason
    assert checker.check(text, at, clock_behind=True)[1].reason == "clock_behind"
    # the certificate's own expiry comes first
    late = make_hc1("ES256", key, cert, days=30)
    assert dcc.verify(late, trusting(cert), dt.datetime(2023, 6, 1, tzinfo=UTC)).reason == "expired"


def test_scan_output_nulls_the_steps_after_the_first_failure(signers, tmp_path):
    from device.scan_cli import shown_steps

    key, cert = signers["ES256"]
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = make_hc1("ES256", other_key, cert)  # the trusted kid, another key's signature
    v = dcc.verify(forged, trusting(cert), NOW)
    assert v.steps["time"] is True and v.steps["schema"] is True  # the reader runs every check
    assert shown_steps(v.steps) == {"unprefix": True, "base45": True, "decompress": True, "decode": True,
                                    "signature": False, "revocation": None, "time": None, "key_usage": None,
                                    "schema": None}
    (tmp_path / "dsc.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    res = subprocess.run([sys.executable, "-m", "chot.cli", "scan", "--trust", str(tmp_path / "dsc.pem"),
                          "--at", "2021-09-01T12:00:00Z", "--text", forged, "--text", make_hc1("ES256", key, cert)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    bad, good = (json.loads(line) for line in res.stdout.splitlines())
    assert bad["steps"]["signature"] is False and bad["reason"] == "bad_signature"
    assert [k for k, val in bad["steps"].items() if val is None] == ["revocation", "time", "key_usage", "schema"]
    assert good["decision"] == "PASS" and all(good["steps"].values()) and list(good["steps"]) == list(dcc.STEPS)


# ---------------------------------------------------------------- 3. revocation lists


def _batch(htype, hashes_, kid=None):
    return {"country": "VN", "expires": "2030-01-01T00:00:00Z", "kid": base64.b64encode(kid).decode() if kid else None,
            "hashType": htype, "entries": [{"hash": base64.b64encode(h).decode()} for h in hashes_]}


def _store_with(cert, batches, tmp_path):
    (tmp_path / "dsc.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "revocations.json").write_text(json.dumps(batches))
    return TrustStore.load([tmp_path / "dsc.pem", tmp_path / "revocations.json"])


@pytest.mark.parametrize("name", ["ES256", "ES384", "PS256", "EdDSA"])
@pytest.mark.parametrize("htype", dcc.REVOCATION_TYPES)
def test_revoked_by_each_hash_type(signers, tmp_path, name, htype):
    key, cert = signers[name]
    text = make_hc1(name, key, cert)
    other = make_hc1(name, key, cert, ci="URN:UVCI:01:VN:SOMEONEELSE")
    sig = _signature_of(text)
    part = sig[:len(sig) // 2] if name.startswith("ES") else sig
    full = {"SIGNATURE": hashlib.sha256(part).digest(), "UCI": hashlib.sha256(CI.encode()).digest(),
            "COUNTRYCODEUCI": hashlib.sha256(("VN" + CI).encode()).digest()}[htype]
    store = _store_with(cert, [_batch(htype, [full[:16]])], tmp_path)
    v = dcc.verify(text, store, NOW)
    assert v.steps["signature"] is True and v.steps["revocation"] is False and v.reason == "revoked"
    assert htype in v.detail and CI not in v.detail
    assert Checker(store, Policy({})).check(text, NOW)[1].reason == "revoked"
    assert dcc.verify(other, store, NOW).verified  # another certificate of the same signer passes


def test_signature_hash_covers_both_ecdsa_twins_and_kid_scoped_batches(signers, tmp_path):
    key, cert = signers["ES256"]
    text = make_hc1("ES256", key, cert)
    sig = _signature_of(text)
    n = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)  # the order of P-256
    twin_s = (n - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    cose = cbor2.loads(native.inflate_bounded(native.b45decode(text[4:]), 65536)).value
    twin = "HC1:" + native.b45encode(zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [cose[0], {}, cose[2],
                                                                                   sig[:32] + twin_s]))))
    h, kid = dcc.revocation_entry_of_text(text)
    assert kid == dcc_kid(cert) and dcc.revocation_entry_of_text(twin)[0] == h
    store = _store_with(cert, [_batch("SIGNATURE", [h], kid=kid)], tmp_path)
    assert dcc.verify(text, store, NOW).reason == "revoked"
    assert dcc.verify(twin, store, NOW).reason == "revoked"
    # a batch for another signer's kid does not apply
    store = _store_with(cert, [_batch("UCI", [dcc.uci_revocation_hash(CI)], kid=b"\x01" * 8)], tmp_path)
    assert dcc.verify(text, store, NOW).verified
    # a deleted batch is skipped
    store = _store_with(cert, [{**_batch("UCI", [dcc.uci_revocation_hash(CI)]), "deleted": True}], tmp_path)
    assert dcc.verify(text, store, NOW).verified


def test_broken_revocation_lists_are_refused(tmp_path):
    for bad in ([{"hashType": "NAME", "entries": []}], {"hashType": "UCI", "entries": [{"hash": "AAAA"}]},
                {"format": dcc.REVOCATION_FORMAT, "batches": {}}):
        (tmp_path / "r.json").write_text(json.dumps(bad))
        with pytest.raises(ChotError, match="revocation"):
            TrustStore.load([tmp_path / "r.json"])


def test_revocations_published_by_the_collector_reach_the_terminal(signers, tmp_path):
    """`publish-trust --dcc-revocations FILE`: hashes only, through the signed trust update."""
    from chot.config import validate
    from collector.signing import read_dcc_revocations, trust_body
    from device.config import SCHEMA
    from device.update_apply import apply_update

    es_key, es_cert = signers["ES384"]
    ps_key, ps_cert = signers["PS384"]
    by_uci = make_hc1("ES384", es_key, es_cert, ci="URN:UVCI:01:VN:AAA#1")
    by_country = make_hc1("ES384", es_key, es_cert, ci="URN:UVCI:01:VN:BBB", iss="VN")
    by_signature = make_hc1("PS384", ps_key, ps_cert, ci="URN:UVCI:01:VN:CCC")
    fine = make_hc1("PS384", ps_key, ps_cert, ci="URN:UVCI:01:VN:DDD")
    (tmp_path / "revoked.txt").write_text(
        "# revoked DCCs\nUCI URN:UVCI:01:VN:AAA#1\nCOUNTRYCODEUCI VN URN:UVCI:01:VN:BBB\n"
        f"SIGNATURE {by_signature}\n")
    for c in (es_cert, ps_cert):
        (tmp_path / f"{dcc_kid(c).hex()}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    body = trust_body([tmp_path / f"{dcc_kid(c).hex()}.pem" for c in (es_cert, ps_cert)],
                      dcc_revocations=tmp_path / "revoked.txt")
    text = json.dumps(body)
    assert "AAA" not in text and "BBB" not in text and by_signature[4:40] not in text  # hashes only
    cfg = validate({"device": {"id": "t", "checkpoint": "c", "direction": "in"}}, SCHEMA)
    checker = apply_update(cfg, Checker.from_config(cfg.policy), "trust", body, 1)
    assert [checker.check(t, NOW)[1].reason for t in (by_uci, by_country, by_signature, fine)] == [
        "revoked", "revoked", "revoked", "ok"]
    # the same list given as EU gateway batches (JSON) is passed on as it is
    (tmp_path / "eu.json").write_text(json.dumps([_batch("UCI", [dcc.uci_revocation_hash("URN:UVCI:01:VN:DDD")])]))
    assert read_dcc_revocations(tmp_path / "eu.json")["batches"][0]["hashType"] == "UCI"
    (tmp_path / "bad.txt").write_text("REVOKE everything\n")
    from chot.errors import CollectorError

    with pytest.raises(CollectorError, match="line 1"):
        read_dcc_revocations(tmp_path / "bad.txt")


# ---------------------------------------------------------------- 4. chain to a country's CSCA


def _gateway(entries):
    return [{"kid": base64.b64encode(dcc_kid(c)).decode(), "country": country, "certificateType": ctype,
             "rawData": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()}
            for ctype, country, c in entries]


@pytest.fixture(scope="module")
def chain():
    csca_key = ec.generate_private_key(ec.SECP384R1())
    csca = make_cert(csca_key, cn="CSCA VN", ca=True, start=dt.datetime(2020, 1, 1, tzinfo=UTC),
                     end=dt.datetime(2030, 1, 1, tzinfo=UTC))
    rogue_key = ec.generate_private_key(ec.SECP384R1())
    rogue_ca = make_cert(rogue_key, cn="CSCA VN", ca=True)  # the same name, another key
    out = {"csca": csca}
    for label, (issuer, ikey) in {"good": (csca, csca_key), "rogue": (rogue_ca, rogue_key)}.items():
        key = ec.generate_private_key(ec.SECP384R1())
        out[label] = (key, make_cert(key, cn=f"DSC {label}", issuer=issuer, issuer_key=ikey))
    key = ec.generate_private_key(ec.SECP256R1())
    out["self"] = (key, make_cert(key, cn="DSC self-signed"))
    key = ec.generate_private_key(ec.SECP256R1())
    out["other_country"] = (key, make_cert(key, cn="DSC DE", country="DE"))
    not_ca_key = ec.generate_private_key(ec.SECP256R1())
    not_ca = make_cert(not_ca_key, cn="CSCA XX", country="XX")
    key = ec.generate_private_key(ec.SECP256R1())
    out["under_not_ca"] = (key, make_cert(key, cn="DSC XX", country="XX", issuer=not_ca, issuer_key=not_ca_key))
    out["not_ca"] = not_ca
    key = ec.generate_private_key(ec.SECP256R1())
    out["too_early"] = (key, make_cert(key, cn="DSC early", issuer=csca, issuer_key=csca_key,
                                       start=dt.datetime(2019, 6, 1, tzinfo=UTC)))
    return out


def test_dsc_must_chain_to_its_countrys_csca(chain, tmp_path):
    entries = [("CSCA", "VN", chain["csca"]), ("CSCA", "XX", chain["not_ca"])]
    entries += [("DSC", "VN", chain[k][1]) for k in ("good", "rogue", "self", "too_early")]
    entries += [("DSC", "DE", chain["other_country"][1]), ("DSC", "XX", chain["under_not_ca"][1])]
    (tmp_path / "trustlist.json").write_text(json.dumps({"certificates": _gateway(entries)}))
    store = TrustStore.load([tmp_path / "trustlist.json"])
    assert set(store.dcc_cscas) == {"VN", "XX"} and dcc_kid(chain["csca"]) not in store.dcc_certs

    def outcome(label):
        key, cert = chain[label]
        name = "ES384" if isinstance(key.curve, ec.SECP384R1) else "ES256"
        v = dcc.verify(make_hc1(name, key, cert), store, NOW)
        return v.reason, v.detail

    assert outcome("good") == (None, None)
    assert outcome("other_country")[0] is None  # no CSCA given for DE: trusted as given
    for label in ("rogue", "self", "too_early", "under_not_ca"):
        reason, detail = outcome(label)
        assert reason == "unknown_issuer" and "CSCA" in detail, (label, detail)
    assert "not a CA" in outcome("under_not_ca")[1]
    assert "signature does not verify" in outcome("rogue")[1]
    assert "outside its CSCA's validity" in outcome("too_early")[1]


def test_a_csca_never_signs_dccs_itself(chain, tmp_path):
    csca_key = ec.generate_private_key(ec.SECP256R1())
    csca = make_cert(csca_key, cn="CSCA ZZ", country="ZZ", ca=True)
    (tmp_path / "t.json").write_text(json.dumps(_gateway([("CSCA", "ZZ", csca)])))
    store = TrustStore.load([tmp_path / "t.json"])
    assert dcc.verify(make_hc1("ES256", csca_key, csca), store, NOW).reason == "unknown_issuer"
