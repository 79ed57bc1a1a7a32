"""Verify benchmark: credentials per second through verify_text, per format, against the bare signature check.

- native: a signed declaration (Ed25519) from device.credentials.issue_cli, trusted key in a TrustStore;
- EU DCC: dgc-testdata DE/2DCode/raw/1.json (ES256), its TESTCTX certificate as the only trust,
  evaluated at its VALIDATIONCLOCK;
- SMART Health Card: spec example 00 (shc:/ numeric, ES256) with the issuer's jwks.json, at 2023-07-01.

The baseline of each is one bare signature verification (cryptography) of the same algorithm
over a message of the same size, timed in the same round: the ratio says how much the parsing,
decompression, schema and policy steps cost on top of the cryptography.
"""

import base64
import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta

from bench.common import PI4_ASSUMPTION, Area, percentile, pi4_rate, progress

log = logging.getLogger(__name__)

DCC_CASE = "DE/2DCode/raw/1.json"
SIZE_PEOPLE = {"smoke": 50, "quick": 300, "full": 1000}  # declarations measured for the QR version
SHC_AT = datetime(2023, 7, 1, tzinfo=UTC)


def _rate(fn, seconds):
    """Calls per second of `fn` over about `seconds` (at least 5 calls)."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        fn()
        n += 1
        t = time.perf_counter()
        if t >= deadline and n >= 5:
            return n / (t - t0)


def _bare_ed25519(size):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    msg = os.urandom(size)
    sig, pub = key.sign(msg), key.public_key()
    return lambda: pub.verify(sig, msg)


def _bare_es256(size):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    msg = os.urandom(size)
    sig, pub = key.sign(msg, ec.ECDSA(hashes.SHA256())), key.public_key()
    return lambda: pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))


def cases(ctx):
    """[(name, label, text, trust, at, bare-check callable)]; a case whose data is missing is left out."""
    from cryptography import x509

    from device.credentials import keys
    from device.credentials.issue_cli import issue_declaration, make_test_identities
    from device.credentials.trust import TrustStore

    out = []
    key = keys.generate("ed25519")
    trust = TrustStore()
    trust.add_native_key(key.public_key())
    now = datetime.now(UTC)
    text = issue_declaration(key, make_test_identities(1, seed=5)[0], issued_at=now - timedelta(minutes=5))
    out.append(("native", "native declaration (Ed25519)", text, trust, now, _bare_ed25519(len(text))))

    path = ctx.testdata / "dcc" / "dgc-testdata" / DCC_CASE
    if path.is_file():
        case = json.loads(path.read_text())
        t = TrustStore()
        t.add_certificate(x509.load_der_x509_certificate(base64.b64decode(case["TESTCTX"]["CERTIFICATE"])))
        at = datetime.fromisoformat(case["TESTCTX"]["VALIDATIONCLOCK"].replace("Z", "+00:00")).astimezone(UTC)
        out.append(("dcc", f"EU DCC (dgc-testdata {DCC_CASE}, ES256)", case["PREFIX"], t, at,
                    _bare_es256(len(case["PREFIX"]))))
    shc_dir = ctx.testdata / "shc" / "spec-examples"
    if shc_dir.is_dir():
        t = TrustStore.load([shc_dir / "issuer" / ".well-known" / "jwks.json"])
        text = (shc_dir / "example-00-f-qr-code-numeric-value-0.txt").read_text().strip()
        out.append(("shc", "SMART Health Card (spec example 00, ES256)", text, t, SHC_AT, _bare_es256(len(text) // 2)))
    return out


def run(ctx):
    from device.credentials.verify import verify_text

    area = Area("verify", "Credential verification")
    found = cases(ctx)
    for name, _label, text, trust, at, _bare in found:
        v = verify_text(text, trust, at)
        if not v.verified:
            area.note(f"{name}: the test credential did NOT verify ({v.reason}: {v.detail}); its figure is left out")
    good = [c for c in found if verify_text(c[2], c[3], c[4]).verified]
    rates = {c[0]: [] for c in good}
    bare = {c[0]: [] for c in good}
    secs = ctx.sizes["verify_s"]
    for r in range(ctx.runs):
        for name, _label, text, trust, at, bare_fn in good:
            rates[name].append(_rate(lambda text=text, trust=trust, at=at: verify_text(text, trust, at), secs))
            bare[name].append(_rate(bare_fn, secs))
        progress(f"verify: round {r + 1}/{ctx.runs} done")
    for name, label, text, _trust, _at, _bare in good:
        area.figure(
            name, f"{label}, verify_text", "credentials/s", rates[name], baseline=f"{name}.bare_signature",
            base_values=bare[name], base_label="bare signature check, same algorithm", higher_is_better=True,
            pi4={"estimate": pi4_rate(sorted(rates[name])[len(rates[name]) // 2], "credentials/s"),
                 "basis": PI4_ASSUMPTION},
            extra={"text_chars": len(text)},
        )
    _native_size(area, ctx)
    missing = {"native", "dcc", "shc"} - set(rates)
    if missing:
        area.note(f"not measured (test data missing or not verified): {', '.join(sorted(missing))}")
    area.note("One core, one thread; each figure counts whole verify_text calls (format detection, decoding, "
              "signature, issuer, time; DCC also schema validation) over about "
              f"{secs} s per round, {ctx.runs} rounds.")
    return area


def _native_size(area, ctx):
    """The QR version (error correction M) of realistic native declarations (issue 14: p95 <= 8, max <= 9)."""
    from device.credentials import keys
    from device.credentials.issue_cli import issue_declaration, qr_version, realistic_people

    key = keys.generate("ed25519")
    at = datetime.now(UTC)
    n = SIZE_PEOPLE.get(ctx.mode, 300)
    versions = [qr_version(issue_declaration(key, p, at)) for p in realistic_people(n, seed=14)]
    p95 = percentile(versions, 95)
    area.figure(
        "native.qr_version", f"native declaration QR version at error correction M, {n} realistic people "
        "(issue_cli.realistic_people, seed 14)", "QR version", versions,
        goal={"text": "p95 <= 8 and max <= 9", "met": p95 <= 8 and max(versions) <= 9},
        pi4={"estimate": "the same (a size, not a speed)", "basis": "the QR symbol does not depend on the machine"},
        extra={"p95": p95},
    )
