"""Hostile QR texts for every credential parser (issue 11): bombs and random input of up to 8 KiB.

Used by bench/parsers.py (time per input) and tests/test_hostile_codes.py (each bomb refused with
its own reason, the bounds hold). `Issuers()` makes throwaway trusted issuers of every format so
that bombs can also be *signed*: a signed bomb gets past the signature check, the expensive path
(a trusted issuer's key could leak; the bounds must hold behind the signature too).

`corpus(issuers, rng, random_per_format)` returns [(format, label, text)]; every text is at most
MAX_TEXT characters except the ones labelled "oversized".
"""

import base64
import json
import random
import zlib
from datetime import UTC, datetime

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from device.credentials import bounds, keys, native, shc
from device.credentials.trust import TrustStore, dcc_kid

AT = datetime(2021, 9, 1, 12, 0, tzinfo=UTC)
SHC_ISS = "https://issuer.hostile.example/shc"
B45 = native.B45
MAX_TEXT = bounds.MAX_TEXT


# ---------------------------------------------------------------- encoders


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def shc_numeric(jws: str) -> str:
    return "shc:/" + "".join(f"{ord(c) - 45:02d}" for c in jws)


def es256_raw(key, message: bytes) -> bytes:
    """An ES256 signature as r||s, exactly as OpenSSL gives it (low-s or high-s)."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def twin(signature: bytes) -> bytes:
    """The other ECDSA signature of the same message and key: (r, n - s)."""
    r, s = signature[:32], int.from_bytes(signature[32:], "big")
    return r + (bounds.P256_N - s).to_bytes(32, "big")


class Issuers:
    """Throwaway issuers trusted for their own format only: native (ES256 and Ed25519), an EU DCC
    signing certificate (ES256), an SHC issuer (ES256)."""

    def __init__(self):
        self.native_es = ec.generate_private_key(ec.SECP256R1())
        self.native_ed = ed25519.Ed25519PrivateKey.generate()
        self.dcc_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hostile test DSC"),
                          x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")])
        self.dcc_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.dcc_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2021, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
            .sign(self.dcc_key, hashes.SHA256())
        )
        self.shc_key = ec.generate_private_key(ec.SECP256R1())
        self.trust = TrustStore()
        self.trust.add_native_key(self.native_es.public_key())
        self.trust.add_native_key(self.native_ed.public_key())
        self.trust.add_certificate(self.dcc_cert)
        self.shc_kid = self.jwk(self.shc_key)["kid"]
        shc.load_trust_json(self.trust, {"iss": SHC_ISS, "keys": [self.jwk(self.shc_key)]})

    @staticmethod
    def jwk(key):
        """The issuer's public JWK, its kid the key's thumbprint (RFC 7638) as the SHC spec requires."""
        n = key.public_key().public_numbers()
        jwk = {"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256",
               "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}
        return {**jwk, "kid": shc.jwk_thumbprint(jwk)}

    # -- COSE (native and DCC)

    def cose(self, payload: bytes, fmt="native", signed=True, protected=None, unprotected=None, key=None):
        """A COSE_Sign1 around `payload` (any bytes), signed by the format's trusted key (or zeros)."""
        if fmt == "native":
            key = key or self.native_es
            kid = native.kid_of(key)
        else:
            key = key or self.dcc_key
            kid = dcc_kid(self.dcc_cert)
        if protected is None:
            protected = cbor2.dumps({1: keys.cose_alg(key) if fmt == "native" else -7, 4: kid})
        sig = native.cose_sign(key, native.sig_structure(protected, payload)) if signed else bytes(64)
        return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected or {}, payload, sig]))

    def cose_raw_unprotected(self, fmt, unprotected: bytes) -> bytes:
        """A signed COSE_Sign1 of good claims whose unprotected header is `unprotected`, raw CBOR bytes."""
        claims = native_claims() if fmt == "native" else dcc_claims()
        good = cbor2.loads(self.cose(claims, fmt)).value
        return (b"\xd2\x84" + cbor2.dumps(good[0]) + unprotected + cbor2.dumps(good[2])
                + cbor2.dumps(good[3]))

    def native_text(self, cose: bytes) -> str:
        return native.PREFIX + native.b45encode(cose)  # CHOT2: no compression

    def dcc_text(self, cose: bytes) -> str:
        return "HC1:" + native.b45encode(zlib.compress(cose, 9))

    def cose_text(self, fmt, payload: bytes, signed=True, **kw) -> str:
        cose = self.cose(payload, fmt, signed, **kw)
        return self.native_text(cose) if fmt == "native" else self.dcc_text(cose)

    # -- JWS (SHC)

    def shc_text(self, payload: bytes, signed=True, header=None, raw=False, key=None, kid=None) -> str:
        """An shc:/ text whose JWS payload is `payload` deflated (or, with `raw`, `payload` as it is); the
        header's kid is the trusted key's unless `kid` is given."""
        header = header if header is not None else {"zip": "DEF", "alg": "ES256", "kid": kid or self.shc_kid}
        head = header if isinstance(header, bytes) else json.dumps(header).encode()
        signing_input = b64u(head) + "." + b64u(payload if raw else deflate_raw(payload))
        sig = es256_raw(key or self.shc_key, signing_input.encode()) if signed else bytes(64)
        return shc_numeric(signing_input + "." + b64u(sig))


# ---------------------------------------------------------------- CBOR bombs (payload bytes)


def cbor_value_sharing(levels=40) -> bytes:
    node = [1]
    for _ in range(levels):
        node = [node, node]
    return cbor2.dumps({-260: {1: {"v": [node]}}}, value_sharing=True)


def cbor_deep_arrays(depth=3000) -> bytes:
    return b"\x81" * depth + b"\x00"


def cbor_deep_indefinite(depth=3000) -> bytes:
    return b"\x9f" * depth + b"\xff" * depth


def cbor_deep_maps(depth=2000) -> bytes:
    return b"\xa1\x01" * depth + b"\x00"


def cbor_flood(items=60000) -> bytes:
    return b"\x99" + items.to_bytes(2, "big") + b"\x00" * items


def cbor_indefinite_flood(items=60000) -> bytes:
    return b"\x9f" + b"\x00" * items + b"\xff"


def cbor_huge_length() -> bytes:
    return b"\x5b" + (2**62).to_bytes(8, "big") + b"abc"


def cbor_huge_count() -> bytes:
    return b"\x9b" + (2**63).to_bytes(8, "big") + b"\x00"


def cbor_bignum(nbytes=4000) -> bytes:
    return cbor2.dumps({4: cbor2.CBORTag(2, b"\xff" * nbytes), 6: 0})


def cbor_decimal_fraction() -> bytes:
    return b"\xa1\x04" + b"\xc4\x82" + b"\x1b" + (2**63 - 1).to_bytes(8, "big") + b"\x01"


def cbor_many_tags(n=3000, tag=1) -> bytes:
    head = cbor2.dumps(cbor2.CBORTag(tag, 0))[:-1]
    return head * n + b"\x00"


def cbor_many_epoch_tags(n=1500) -> bytes:
    """An array of epoch date/time tags (tag 1, allowed in a DCC's claims) up to the item bound."""
    return cbor2.dumps({-260: {1: {"t": [cbor2.CBORTag(1, 2**33 + i) for i in range(n)]}}})


def cbor_duplicate_keys() -> bytes:
    return b"\xa2\x04\x00\x18\x04\x01"  # {4: 0, 4: 1}: the second key is 4 written non-canonically


def cbor_wide_map(keys_n=500) -> bytes:
    return cbor2.dumps({-260: {1: {f"k{i}": i for i in range(keys_n)}}, 4: 2**31, 6: 0})


def cbor_long_strings(size=60000) -> bytes:
    return cbor2.dumps({-260: {1: {"nam": {"fnt": "A" * size}}}, 4: 2**31, 6: 0})


def cbor_bad_utf8(size=60000) -> bytes:
    return b"\xa1\x01\x7a" + size.to_bytes(4, "big") + b"\xff" * size


def cbor_chunked_string(chunks=2000) -> bytes:
    return b"\x7f" + b"\x61a" * chunks + b"\xff"


def dcc_claims(iat=int(AT.timestamp()) - 86400, exp=int(AT.timestamp()) + 86400 * 300, dgc=None) -> bytes:
    dgc = dgc or {"ver": "1.3.0", "nam": {"fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Văn An", "gnt": "VAN<AN"},
                  "dob": "1990-05-17",
                  "v": [{"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215",
                         "dn": 2, "sd": 2, "dt": "2021-06-01", "co": "VN", "is": "Ministry of Health",
                         "ci": "URN:UVCI:01:VN:HOSTILE1"}]}
    return cbor2.dumps({1: "VN", 6: iat, 4: exp, -260: {1: dgc}})


def native_claims(iat=int(AT.timestamp()) - 3600, exp=int(AT.timestamp()) + 3600, decl=None) -> bytes:
    """CHOT2 claims issued at `iat` and expiring at `exp` (seconds since 1970, any integers: written as
    minutes since 2020 and a validity in minutes, rounded down)."""
    minute0 = int(native.MINUTE0.timestamp())
    decl = decl or {native.C_ID: native.encode_id("001090012345"), native.C_NAME: "Nguyễn Văn An",
                    native.C_DOB: 32927, native.C_ANSWERS: 1 << native.PURPOSE_SHIFT}
    return cbor2.dumps({**decl, native.C_IAT: (iat - minute0) // 60, native.C_VALID: (exp - iat) // 60})


def dcc_schema_worst(extra=900) -> bytes:
    """A certificate that passes the one-entry check, so its JSON schema runs over the most items."""
    entry = {"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215", "dn": 2, "sd": 2,
             "dt": "2021-06-01", "co": "VN", "is": "Ministry of Health", "ci": "URN:UVCI:01:VN:HOSTILE2"}
    entry.update({f"x{i}": i for i in range(extra // 2)})
    dgc = {"ver": "1.3.0", "nam": {"fnt": "N" * 20000, "gnt": "<" * 20000}, "dob": "1990-05-17", "v": [entry]}
    return dcc_claims(dgc=dgc)


CBOR_BOMBS = {
    "DCC schema over 1000 items and 40 KB of names": dcc_schema_worst,
    "value sharing": cbor_value_sharing,
    "nested arrays": cbor_deep_arrays,
    "nested indefinite arrays": cbor_deep_indefinite,
    "nested maps": cbor_deep_maps,
    "item flood": cbor_flood,
    "indefinite item flood": cbor_indefinite_flood,
    "2^62-byte string": cbor_huge_length,
    "2^63-item array": cbor_huge_count,
    "bignum": cbor_bignum,
    "decimal fraction 10^(2^63)": cbor_decimal_fraction,
    "3000 nested tags": cbor_many_tags,
    "1500 epoch tags": cbor_many_epoch_tags,
    "duplicate map keys": cbor_duplicate_keys,
    "500-key map": cbor_wide_map,
    "60 KB string": cbor_long_strings,
    "60 KB bad UTF-8": cbor_bad_utf8,
    "2000-chunk string": cbor_chunked_string,
}


# ---------------------------------------------------------------- JSON bombs (SHC payload or header bytes)


def json_deep(depth=50000) -> bytes:
    return b"[" * depth + b"]" * depth


def json_deep_objects(depth=20000) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def json_huge_int(digits=4000) -> bytes:
    return b'{"iss":"x","nbf":' + b"9" * digits + b',"vc":{}}'


def json_huge_float() -> bytes:
    return b'{"iss":"x","nbf":1e999999,"vc":{}}'


def json_nan() -> bytes:
    return b'{"iss":"x","nbf":NaN,"vc":{}}'


def json_quotes(n=20000) -> bytes:
    return b'["' + b'\\"' * n


def json_wide(n=6000) -> bytes:
    return json.dumps({"iss": SHC_ISS, "nbf": AT.timestamp() - 86400, "vc": {"x": list(range(n))}}).encode()


JSON_BOMBS = {
    "nested arrays": json_deep,
    "nested objects": json_deep_objects,
    "4000-digit integer": json_huge_int,
    "1e999999": json_huge_float,
    "NaN": json_nan,
    "unterminated escapes": json_quotes,
    "6000-item array": json_wide,
}


def zlib_bomb(size=4 * 1024 * 1024) -> bytes:
    return b"\0" * size


# ---------------------------------------------------------------- the corpus


def bombs(iss: Issuers):
    """[(format, label, text)]: each bomb in every format it fits, unsigned and signed."""
    out = []
    for name, make in CBOR_BOMBS.items():
        payload = make()
        for fmt in ("native", "dcc"):
            for signed in (False, True):
                text = iss.cose_text(fmt, payload, signed)
                if len(text) <= MAX_TEXT:
                    out.append((fmt, f"CBOR {name} ({'signed' if signed else 'unsigned'})", text))
            # the same bomb as the whole COSE, and spliced in as the unprotected header
            wrap = iss.native_text if fmt == "native" else iss.dcc_text
            out.append((fmt, f"CBOR {name} as the COSE", wrap(payload)))
            out.append((fmt, f"CBOR {name} in the unprotected header", wrap(iss.cose_raw_unprotected(fmt, payload))))
    for fmt in ("native", "dcc"):
        big = zlib_bomb()
        text = (native.PREFIX if fmt == "native" else "HC1:") + native.b45encode(zlib.compress(big, 9))
        out.append((fmt, "zlib bomb (4 MiB of zeros)", text))
        if fmt == "dcc":  # a native text is not compressed: this one would be far over MAX_TEXT
            zeros = b"\x9f" + b"\x00" * 4_000_000 + b"\xff"
            out.append((fmt, "zlib bomb of a CBOR array of zeros", iss.dcc_text(zeros)))
        out.append((fmt, "zlib trailing bytes", (native.PREFIX if fmt == "native" else "HC1:")
                    + native.b45encode(zlib.compress(iss.cose(native_claims(), fmt)) + b"junk")))
        for label, (iat, exp) in {"exp 2^64-1": (0, 2**64 - 1), "iat -2^64": (-(2**64), 0),
                                  "exp 2^40": (0, 2**40)}.items():
            claims = native_claims(iat, exp) if fmt == "native" else dcc_claims(iat, exp)
            out.append((fmt, f"time claims {label} (signed)", iss.cose_text(fmt, claims, True)))
    for name, make in JSON_BOMBS.items():
        payload = make()
        for signed in (False, True):
            text = iss.shc_text(payload, signed)
            if len(text) <= MAX_TEXT:
                out.append(("shc", f"JSON {name} payload ({'signed' if signed else 'unsigned'})", text))
        header = payload[:1500]
        text = iss.shc_text(b"{}", True, header=header)
        out.append(("shc", f"JSON {name} header", text))
    entry = {"resource": {"resourceType": "Immunization", "status": "completed",
                          "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "208"}]},
                          "occurrenceDateTime": "2021-06-01"}}
    many = {"iss": SHC_ISS, "nbf": AT.timestamp() - 86400, "vc": {"type": ["https://smarthealth.cards#health-card"],
            "credentialSubject": {"fhirBundle": {"resourceType": "Bundle", "entry": [entry] * 450}}}}
    out.append(("shc", "a card of 450 immunizations (signed)", iss.shc_text(json.dumps(many).encode(), True)))
    out.append(("shc", "DEFLATE bomb (unsigned)", iss.shc_text(zlib_bomb(2 * 1024 * 1024), False)))
    out.append(("shc", "DEFLATE bomb (signed)", iss.shc_text(zlib_bomb(2 * 1024 * 1024), True)))
    out.append(("shc", "DEFLATE bomb of nested arrays (signed)", iss.shc_text(b"[" * 2_000_000, True)))
    # long inputs: the most a QR could carry, and more
    rng = random.Random(11)
    out.append(("dcc", "8 KiB base45", "HC1:" + "".join(rng.choice(B45) for _ in range(MAX_TEXT - 4))))
    out.append(("native", "8 KiB base45", native.PREFIX + "".join(rng.choice(B45) for _ in range(MAX_TEXT - 6))))
    out.append(("shc", "8 KiB digits", "shc:/" + "".join(rng.choice("0123456789") for _ in range(MAX_TEXT - 5))))
    out.append(("shc", "8 KiB JWS of A", shc_numeric("A" * 2000 + "." + "A" * 2000)[:MAX_TEXT]))
    out.append(("plain", "8 KiB text", "".join(rng.choice("abc xyz 0123456789") for _ in range(MAX_TEXT))))
    out.append(("plain", "8 KiB of one digit", "1" * MAX_TEXT))
    for fmt, prefix in (("dcc", "HC1:"), ("native", native.PREFIX), ("shc", "shc:/"), ("plain", "")):
        out.append((fmt, "oversized", prefix + "0" * (MAX_TEXT * 4)))
    # identity claims (issue 13): the shapes a card or PC-Covid code is recognised by, at their worst
    card = "001090012345|123456789|Nguyễn Văn An|02011990|Nam|Số 12 Phố Huế, Hà Nội|15042021"
    out.append(("cccd", "a card", card))
    out.append(("cccd", "8 KiB of fields", ("001090012345" + "|" * MAX_TEXT)[:MAX_TEXT]))
    out.append(("cccd", "8 KiB address", (card.replace("Hà Nội", "Hà Nội" * MAX_TEXT))[:MAX_TEXT]))
    out.append(("cccd", "8 KiB spaces in fields", "001090012345|" + "|".join([" " * 1300] * 6)))
    out.append(("cccd", "8 KiB digits ID", ("1" * (MAX_TEXT - 100)) + "|1|a|02011990|Nam|x|15042021"))
    out.append(("cccd", "oversized", card + "|" + "9" * (MAX_TEXT * 4)))
    pc = "********2345|NGUYEN VAN AN|****-**-02|0|A1b2C3d4E5|"
    out.append(("pccovid", "a code", pc))
    out.append(("pccovid", "8 KiB name", "****2345|" + "A" * (MAX_TEXT - 40) + "|****-**-02|0|A1b2C3d4E5|"))
    out.append(("pccovid", "8 KiB extra", (pc + "x" * MAX_TEXT)[:MAX_TEXT]))
    out.append(("pccovid", "oversized", pc + "x" * (MAX_TEXT * 4)))
    return out


def random_inputs(iss: Issuers, rng: random.Random, n: int):
    """[(format, label, text)]: `n` random inputs per format, up to 8 KiB each."""
    out = []

    def size():
        return rng.choice((16, 64, 256, 1024, 4096, 8000))

    for _ in range(n):
        body = "".join(rng.choice(B45) for _ in range(size()))
        out.append(("dcc", "random base45", ("HC1:" + body)[:MAX_TEXT]))
        out.append(("native", "random base45", (native.PREFIX + body)[:MAX_TEXT]))
        data = rng.randbytes(rng.choice((16, 256, 2048)))
        fmt = rng.choice(("native", "dcc"))
        out.append((fmt, "random bytes, zlib", (iss.native_text if fmt == "native" else iss.dcc_text)(data)))
        out.append((fmt, "random payload bytes (signed)", iss.cose_text(fmt, data, True)))
        out.append(("shc", "random digits", ("shc:/" + "".join(rng.choice("0123456789") for _ in range(size())))
                    [:MAX_TEXT]))
        out.append(("shc", "random payload (signed)", iss.shc_text(rng.randbytes(rng.choice((16, 512, 2048))), True,
                                                                     raw=True)))
        out.append(("plain", "random text", "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(size()))))
        fields = ["".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(size() // 8)) for _ in range(7)]
        out.append(("cccd", "random fields", "|".join(["001090012345", *fields])[:MAX_TEXT]))
        out.append(("pccovid", "random fields", "|".join([f"****{rng.randrange(10**4):04d}", fields[0], "****-**-02",
                                                          "0", fields[1], fields[2]])[:MAX_TEXT]))
    return out


def corpus(iss: Issuers, rng: random.Random, random_per_format: int):
    return bombs(iss) + random_inputs(iss, rng, random_per_format)
