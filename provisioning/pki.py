"""The fleet's keys and certificates: a small CA, made and kept with `cryptography`.

One fleet directory (`chot provision init-fleet DIR`) holds everything the fleet's operator
keeps and nobody else may see:

    DIR/fleet.toml                 broker host and port, collector user, validity (see fleet.py)
    DIR/ca/ca.key      0600        the fleet CA (EC P-256): signs every certificate and the CRL
    DIR/ca/ca.crt                  given to the broker and to every terminal
    DIR/ca/crl.pem                 certificate revocation list (the broker's crlfile)
    DIR/ca/revoked.json            what was revoked, and why (source of the CRL and the broker's denies)
    DIR/broker/server.key 0600, server.crt   the broker's TLS certificate (SAN: host, localhost, 127.0.0.1)
    DIR/collector/signing.key 0600, signing.pub   the collector's Ed25519 key: it signs config,
                                   deny lists and trust lists; terminals pin signing.pub
    DIR/collector/client.key 0600, client.crt     the collector's MQTT client certificate (CN = its user)
    DIR/collectors/<name>/client.key 0600, client.crt   more collector instances (CN <collector_user>-<name>)
    DIR/collector-keys/ 0700       the collector's personal-data keys (its collector.key_dir):
                                   seal-<kid>.key 0600 (X25519, every one kept), seal.pub (pinned by
                                   terminals), index.key 0600, data.key 0600; never in a bundle
    DIR/rollout/seal-<kid>.json    the config update body of a rotated sealing key (collector-keys --rotate)
    DIR/devices/<id>/device.key 0600, device.crt, terminal.toml   one per terminal
    DIR/bundles/<id>.tar.gz 0600   what the technician carries to the terminal

The certificate's common name is the MQTT user name (mosquitto `use_identity_as_username`), so
a device's CN is its device id. Private keys are written 0600 through `write_private` and never
printed or logged.
"""

import datetime as dt
import ipaddress
import json
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chot.errors import ProvisioningError
from chot.files import atomic_write

log = logging.getLogger(__name__)

CA_DAYS = 20 * 365
SERVER_DAYS = 5 * 365
CLIENT_DAYS = 5 * 365
# The broker refuses every client once the CRL's nextUpdate has passed (OpenSSL: "CRL has
# expired"), so the CRL is re-signed by every revoke and by `chot provision crl`; give it a long life.
CRL_DAYS = 5 * 365


def now():
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


_NOT_FLEET = "is this a fleet directory made by `chot provision init-fleet`?"


# --- files ------------------------------------------------------------------------------------


def write_file(path, data, mode=0o644):
    """Write `data` (bytes or str) atomically with `mode`; the file never exists with wider modes."""
    return atomic_write(path, data, mode)


def write_private(path, data):
    """Write a secret (a private key): mode 0600 from the first byte on."""
    return write_file(path, data, 0o600)


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path):
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ProvisioningError(f"{path} is missing: {_NOT_FLEET}") from None
    except (ValueError, TypeError) as exc:
        raise ProvisioningError(f"{path} is not an unencrypted PEM private key ({exc})") from None


def load_cert(path):
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise ProvisioningError(f"{path} is missing: {_NOT_FLEET}") from None
    except ValueError as exc:
        raise ProvisioningError(f"{path} is not a PEM certificate ({exc})") from None


# --- certificates -----------------------------------------------------------------------------


def new_ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn, org="Chot fleet"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(name="Chot fleet CA", days=CA_DAYS):
    """A self-signed CA: (key, cert). It may sign end-entity certificates and CRLs only."""
    key = new_ec_key()
    subject = _name(name)
    t = now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - dt.timedelta(minutes=5))
        .not_valid_after(t + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cert(ca_key, ca_cert, cn, *, server_names=(), client=True, days=CLIENT_DAYS, key=None):
    """An end-entity certificate signed by the CA: (key, cert).

    `server_names`: DNS names or IP addresses for a server certificate (subjectAltName);
    `client`: usable as a TLS client certificate (a terminal, the collector).
    """
    key = key or new_ec_key()
    t = now()
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - dt.timedelta(minutes=5))
        .not_valid_after(min(t + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if server_names:
        sans = []
        for n in dict.fromkeys(server_names):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, *eku]
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_signing_key():
    """The collector's Ed25519 signing key: (private key, public PEM bytes)."""
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pub


# --- revocation -------------------------------------------------------------------------------

REASONS = {"revoked": x509.ReasonFlags.key_compromise, "superseded": x509.ReasonFlags.superseded}


def load_revoked(path):
    """The revocation records: [{"device_id", "serial" (hex str), "reason", "at"}]."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot read {path} ({exc}): restore it from the fleet backup") from None
    if not isinstance(data, list):
        raise ProvisioningError(f"{path} must hold a JSON list: restore it from the fleet backup")
    return data


def save_revoked(path, records):
    write_file(path, json.dumps(records, indent=1, sort_keys=True) + "\n", 0o644)


def make_crl(ca_key, ca_cert, records, days=CRL_DAYS):
    """A CRL signed by the CA listing every record's serial; PEM bytes."""
    t = now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(t - dt.timedelta(minutes=5))
        .next_update(t + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(int(t.timestamp())), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    seen = set()
    for rec in records:
        serial = int(rec["serial"], 16)
        if serial in seen:
            continue
        seen.add(serial)
        at = dt.datetime.fromisoformat(rec["at"].replace("Z", "+00:00"))
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(at)
            .add_extension(x509.CRLReason(REASONS.get(rec.get("reason"), x509.ReasonFlags.unspecified)), False)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
