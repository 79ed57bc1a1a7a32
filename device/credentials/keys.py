"""Issuer key pairs for the native declaration: make, save, load, and their key ids.

An issuer signs declarations with an Ed25519 or P-256 (ES256) private key; terminals trust
its public key. The key id (`kid`) is the first 8 bytes of the SHA-256 of the public key in
DER SubjectPublicKeyInfo form (docs/native-declaration.md). Loading happens at start-up,
never in the frame loop.
"""

import hashlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from chot.errors import CredentialError

log = logging.getLogger(__name__)

ALGS = ("ed25519", "es256")
COSE_ES256 = -7
COSE_EDDSA = -8
PRIVATE_NAME = "issuer.key.pem"
PUBLIC_NAME = "issuer.pub.pem"


def generate(alg="ed25519"):
    """A new issuer private key: 'ed25519' (EdDSA) or 'es256' (ECDSA P-256)."""
    if alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "es256":
        return ec.generate_private_key(ec.SECP256R1())
    raise CredentialError(f"unknown key algorithm {alg!r}; use one of: {', '.join(ALGS)}")


def public_of(key):
    """The public key of a private key; a public key is returned as it is."""
    return key.public_key() if hasattr(key, "private_bytes") else key


def spki_der(key):
    """The public key in DER SubjectPublicKeyInfo form."""
    return public_of(key).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def kid_of(key):
    """The 8-byte key id of an issuer key (private or public): sha256(SPKI DER)[:8]."""
    return hashlib.sha256(spki_der(key)).digest()[:8]


def check_supported(key, what="key"):
    """Raise CredentialError unless `key` is an Ed25519 or P-256 key (private or public)."""
    pub = public_of(key)
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return
    if isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1):
        return
    raise CredentialError(f"{what}: unsupported key type {type(pub).__name__}; use an Ed25519 or P-256 (ES256) key")


def cose_alg(key):
    """The COSE algorithm number for signing with `key`: -8 (EdDSA) or -7 (ES256)."""
    check_supported(key)
    return COSE_EDDSA if isinstance(public_of(key), ed25519.Ed25519PublicKey) else COSE_ES256


def private_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key):
    return public_of(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write(path, data, mode):
    path = Path(path)
    if path.exists():
        raise CredentialError(f"{path} already exists; remove it or choose another --out directory")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def save_keypair(private_key, out_dir, stem="issuer"):
    """Write `<stem>.key.pem` (mode 0600) and `<stem>.pub.pem` (0644) into `out_dir`.

    Returns (private_path, public_path). Refuses to overwrite an existing file.
    """
    check_supported(private_key, "issuer key")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CredentialError(f"cannot create directory {out}: {exc.strerror}; choose a writable --out") from exc
    priv, pub = out / f"{stem}.key.pem", out / f"{stem}.pub.pem"
    for p in (priv, pub):
        if p.exists():
            raise CredentialError(f"{p} already exists; remove it or choose another --out directory")
    _write(priv, private_pem(private_key), 0o600)
    _write(pub, public_pem(private_key), 0o644)
    log.info("issuer key pair written to %s (kid %s)", out, kid_of(private_key).hex())
    return priv, pub


def _read(path, what):
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise CredentialError(f"{what} {path} does not exist; make one with `chot issue keygen --out DIR`") from exc
    except OSError as exc:
        raise CredentialError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_private_key(path):
    """Load an issuer private key (PEM PKCS#8/SEC1 or DER, unencrypted)."""
    data = _read(path, "issuer private key")
    key = None
    for loader in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            key = loader(data, password=None)
            break
        except TypeError as exc:
            raise CredentialError(f"{path}: the private key is encrypted; give an unencrypted PEM key") from exc
        except ValueError:
            continue
    if key is None:
        if b"PUBLIC KEY" in data or b"CERTIFICATE" in data:
            raise CredentialError(f"{path} holds a public key or certificate; --key needs the private key (.key.pem)")
        raise CredentialError(f"{path} is not a private key (PEM or DER); make one with `chot issue keygen`")
    check_supported(key, str(path))
    return key


def load_public_key(path):
    """Load an issuer public key (PEM or DER SubjectPublicKeyInfo)."""
    data = _read(path, "issuer public key")
    for loader in (serialization.load_pem_public_key, serialization.load_der_public_key):
        try:
            key = loader(data)
        except ValueError:
            continue
        check_supported(key, str(path))
        return key
    raise CredentialError(f"{path} is not a public key (PEM or DER SubjectPublicKeyInfo)")
