"""Trust material: which issuers a terminal believes, for every credential format.

`TrustStore.load(paths)` reads files once at start-up (never in the frame loop) and sniffs
each one:

- a public key (PEM or DER SubjectPublicKeyInfo): a native declaration issuer;
- an X.509 certificate or bundle (PEM or DER): an EU DCC signing certificate, stored in
  `dcc_certs` under the DCC key id, sha256(certificate DER)[:8]; DCC trust lists (JSON) also
  fill `dcc_cscas` (country signing CAs, for the chain check) and `dcc_countries`, and DCC
  revocation lists (JSON) `dcc_revoked` (see device.credentials.dcc.load_trust_json);
- a JSON file: handed to the hooks `device.credentials.dcc.load_trust_json(store, obj)` and
  `device.credentials.shc.load_trust_json(store, obj, path)` (a JWKS, an object with "keys",
  goes to SHC first, anything else to DCC first). A hook returns a true value when the JSON was
  its kind and it loaded it, a false value when the JSON is not its kind (then the other hook
  is asked), and raises CredentialError when it is its kind but broken;
- a directory: every file in it, in name order.

Anything else raises CredentialError naming the formats accepted.

Trust is kept apart per format: `native_keys`, `dcc_certs` and `shc_issuers` are separate stores,
each read by one format only, and a file fills exactly one of them. A key trusted for one format
never verifies another: a DCC signing certificate does not make its key a native issuer (give a
native issuer's public key, issuer.pub.pem, for that), and an SHC issuer's JWKS key signs SHC only.
"""

import hashlib
import json
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chot.errors import CredentialError
from device.credentials import keys as keymod

log = logging.getLogger(__name__)

MAX_TRUST_FILE = 32 * 1024 * 1024
ACCEPTED = (
    "a public key (PEM or DER), an X.509 certificate or bundle (PEM or DER), "
    "a DCC trust list (JSON) or an SHC issuer JWKS (jwks.json)"
)


def dcc_kid(cert):
    """The EU DCC key id of a signing certificate: the first 8 bytes of sha256(DER)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()[:8]


class TrustStore:
    """Issuer keys and certificates a terminal trusts, by format. Plain data; no I/O after loading."""

    def __init__(self):
        self.native_keys = {}  # bytes kid (8) -> public key
        self.dcc_certs = {}  # bytes kid (8) -> x509.Certificate
        self.dcc_countries = {}  # bytes kid -> country code given by the DCC trust list
        self.dcc_cscas = {}  # country code -> [x509.Certificate]: DCC country signing CAs (chain check)
        self.dcc_revoked = {}  # DCC revocation hash type -> {kid bytes, or b"" for any -> set of 16-byte hashes}
        self.dcc_chain_cache = {}  # bytes kid -> None (chains) or why not; filled by dcc on first use
        self.shc_issuers = {}  # str iss -> {str kid -> public key}
        self.shc_revoked = {}  # str iss -> set of str rid
        self.sources = []  # the paths loaded, for logs and `chot scan`

    @classmethod
    def load(cls, paths):
        """A store holding everything in `paths` (files or directories)."""
        store = cls()
        for p in paths or ():
            store.add_path(p)
        return store

    def __len__(self):
        return (
            len(self.native_keys) + len(self.dcc_certs) + sum(len(k) for k in self.shc_issuers.values())
        )

    def add_native_key(self, public_key):
        """Trust a native issuer's public key; returns its kid."""
        keymod.check_supported(public_key, "native issuer key")
        kid = keymod.kid_of(public_key)
        self.native_keys[kid] = keymod.public_of(public_key)
        return kid

    def add_certificate(self, cert):
        """Trust a certificate as an EU DCC signer, by its DCC kid (never as a native issuer); returns the kid."""
        kid = dcc_kid(cert)
        self.dcc_certs[kid] = cert
        return kid

    def add_path(self, path):
        """Load one trust file or directory (see the module docstring)."""
        path = Path(path)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and not child.name.startswith("."):
                    self.add_path(child)
            return self
        try:
            if path.stat().st_size > MAX_TRUST_FILE:
                raise CredentialError(f"trust file {path} is larger than {MAX_TRUST_FILE} bytes")
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise CredentialError(f"trust file {path} does not exist; check --trust / policy.trusted_issuers") from exc
        except OSError as exc:
            raise CredentialError(f"cannot read trust file {path}: {exc.strerror}") from exc
        self._add_bytes(data, path)
        self.sources.append(str(path))
        log.info("trust: loaded %s", path)
        return self

    def add_bytes(self, data, origin="<bytes>"):
        """Trust material given as bytes (PEM/DER key or certificate, JSON); `origin` names it in errors."""
        self._add_bytes(data, origin)
        self.sources.append(str(origin))
        return self

    def _add_bytes(self, data, path):
        stripped = data.lstrip()
        if b"-----BEGIN" in data[:4096] or stripped.startswith(b"-----BEGIN"):
            return self._add_pem(data, path)
        if stripped[:1] in (b"{", b"["):
            try:
                obj = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise CredentialError(f"trust file {path} is not valid JSON ({exc}); accepted: {ACCEPTED}") from exc
            return self._add_json(obj, path)
        try:
            return self.add_native_key(serialization.load_der_public_key(data))
        except ValueError:
            pass
        try:
            return self.add_certificate(x509.load_der_x509_certificate(data))
        except ValueError:
            pass
        raise CredentialError(f"trust file {path}: format not recognised; accepted: {ACCEPTED}")

    def _add_pem(self, data, path):
        if b"PRIVATE KEY-----" in data:
            raise CredentialError(
                f"trust file {path} holds a PRIVATE key: give the terminal the public key (issuer.pub.pem) only"
            )
        found = False
        if b"CERTIFICATE-----" in data:
            try:
                certs = x509.load_pem_x509_certificates(data)
            except ValueError as exc:
                raise CredentialError(f"trust file {path}: a PEM certificate does not parse ({exc})") from exc
            for cert in certs:
                self.add_certificate(cert)
            found = bool(certs)
        if b"PUBLIC KEY-----" in data:
            for block in data.split(b"-----BEGIN ")[1:]:
                if block.startswith(b"PUBLIC KEY-----"):
                    try:
                        key = serialization.load_pem_public_key(b"-----BEGIN " + block)
                    except ValueError as exc:
                        raise CredentialError(f"trust file {path}: a PEM public key does not parse") from exc
                    self.add_native_key(key)
                    found = True
        if not found:
            raise CredentialError(f"trust file {path}: PEM without a public key or certificate; accepted: {ACCEPTED}")

    def _add_json(self, obj, path):
        from device.credentials import formats  # the registry (it imports the formats, which import this)

        jwks = isinstance(obj, dict) and isinstance(obj.get("keys"), list)
        for fmt in sorted(formats.FORMATS, key=lambda f: f.name != "shc") if jwks else formats.FORMATS:
            handled = fmt.load_trust_json(self, obj, path)  # each format's trust loading hook
            if handled:
                return handled
        raise CredentialError(f"unsupported trust file {path}: a JSON file that no credential format reads; "
                              f"accepted: {ACCEPTED}")
