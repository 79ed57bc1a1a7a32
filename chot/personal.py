"""Personal data on the wire: who a person is, how their part of an event is sealed, opened and hashed.

Shared by the terminal and the collector (it is part of the wire contract, with `chot.wire`);
docs/security.md explains the design and the key handling. In short:

- **Person ids.** A person is named by a normalised string: `id:<ID number>` (native
  declaration, ID card, plain ID) or `nd:<FOLDED NAME>|<YYYY-MM-DD>` (DCC, SHC: name and
  birth date). It exists only in memory on a terminal and inside sealed or encrypted data.
- **Sealing (terminal -> collector).** The personal part of an event is encrypted with
  libsodium's `crypto_box` (PyNaCl `Box`: X25519 + XSalsa20-Poly1305) from an *ephemeral*
  key pair of the terminal's process to the collector's X25519 public key. The ephemeral
  private key lives only in memory and is replaced every `rotate_events` events or
  `rotate_s` seconds, so the terminal cannot open what it sealed once the key is gone (and
  never what is on its disk after a restart). The collector caches one `Box` per ephemeral
  key, so opening costs one AEAD per event rather than one X25519 per event (what a
  `SealedBox` per event would cost). The plaintext names the event's uuid; the collector
  checks it, so a sealed part cannot be moved to another event.
- **Index (collector).** Persons are indexed by HMAC-SHA256(index secret, person id); the
  secret is a key file outside the database.
- **At rest (collector).** Personal fields are encrypted with ChaCha20-Poly1305 under a data
  key (a key file), bound to the event's (device_id, seq) as associated data.
- **Deny list.** Revoked credentials by sha256(salt | credential id); denied persons by
  Argon2id(person id, salt) with the list's parameters (`deny_person_hash`).

Every key file is written 0600 and refused when others can read it.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path

import msgspec

from chot.errors import ChotError
from chot.files import atomic_write

log = logging.getLogger(__name__)

SEAL_KID_BYTES = 8
MAX_SEALED_CHARS = 8192  # base64 of a sealed part, at most
MAX_PERSON_BYTES = 4096  # JSON of a person's fields, at most (before sealing)


class KeyFileError(ChotError):
    """A key file is missing, unreadable, of the wrong kind or readable by others."""


# --- person ids -------------------------------------------------------------------------------

_ID_SEP_RE = re.compile(r"[\s.\-_/]+")
_ID_OK_RE = re.compile(r"[0-9A-Z]{1,32}")
_DOB_RE = re.compile(r"\d{4}(-\d\d(-\d\d)?)?")


def normalise_id_number(id_number):
    """An ID number as compared: spaces, dots, dashes, underscores and slashes removed, upper-cased.

    '001 090-012.345' -> '001090012345'. ValueError when nothing usable is left.
    """
    norm = _ID_SEP_RE.sub("", str(id_number)).upper()
    if not _ID_OK_RE.fullmatch(norm):
        raise ValueError("an ID number must be 1 to 32 letters or digits (spaces, dots and dashes are ignored)")
    return norm


def normalise_phone(phone):
    """A phone number as compared: digits only, +84 / 84 written as the leading 0 ('+84 912-345 601' ->
    '0912345601'); '' when no digit is left."""
    s = str(phone or "").strip()
    digits = re.sub(r"\D", "", s)
    if digits.startswith("84") and (s.startswith("+") or len(digits) == 11):
        digits = "0" + digits[2:]
    return digits


def fold_name(name):
    """Upper-case ASCII letters of a name, one space between words: 'Nguyễn Văn Ân' -> 'NGUYEN VAN AN'."""
    text = unicodedata.normalize("NFKD", str(name).replace("đ", "d").replace("Đ", "D"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    words = re.findall(r"[A-Za-z0-9]+", text)
    return " ".join(w.upper() for w in words)


def person_id_for_id(id_number):
    """The person id of an ID number: 'id:001090012345'."""
    return "id:" + normalise_id_number(id_number)


def person_id_for_name_dob(name, dob):
    """The person id of a name and birth date (DCC, SHC): 'nd:NGUYEN VAN AN|1990-01-02'."""
    folded = fold_name(name)
    dob = str(dob or "").strip()[:10]
    if not folded:
        raise ValueError("a name is needed")
    if not _DOB_RE.fullmatch(dob):
        raise ValueError("a birth date is YYYY, YYYY-MM or YYYY-MM-DD")
    return f"nd:{folded}|{dob}"


_QID_RE = re.compile(r"[A-Za-z0-9_-]{4,64}")


def person_id_for_qid(qid):
    """The person id of a PC-Covid personal QR's QID: 'pcq:<QID>' (its masked ID cannot name anybody)."""
    qid = str(qid).strip()
    if not _QID_RE.fullmatch(qid):
        raise ValueError("a PC-Covid QID is 4 to 64 letters, digits, '-' or '_'")
    return "pcq:" + qid


def parse_person_query(text):
    """A person id from what a tracer types: an ID number ('id:' optional) or 'nd:NAME|YYYY-MM-DD'.

    ValueError saying what to write.
    """
    s = str(text or "").strip()
    if not s:
        raise ValueError("give an ID number, nd:NAME|YYYY-MM-DD for a certificate without one, "
                         "or pcq:<QID> for a PC-Covid code")
    if s.startswith("nd:"):
        name, _, dob = s[3:].partition("|")
        return person_id_for_name_dob(name, dob)
    if s.startswith("pcq:"):
        return person_id_for_qid(s[4:])
    if s.startswith("id:"):
        s = s[3:]
    return person_id_for_id(s)


# --- key files --------------------------------------------------------------------------------


def write_secret(path, data):
    """Write a secret file 0600 (atomically); return the path."""
    return atomic_write(path, data, mode=0o600)


def read_secret(path, what):
    """Read a secret file, refusing one that group or others can read."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist: make it with `chot provision init-fleet` "
                           "(or `chot collector keygen`) and set its path in the config") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read ({exc.strerror}): run as the service user") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{what} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                           f"chmod 600 {path}")
    return data


def _hex_secret(path, what, size=32):
    raw = read_secret(path, what).strip()
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{what} {path}: expected {size * 2} hex digits") from None
    if len(key) != size:
        raise KeyFileError(f"{what} {path}: expected {size * 2} hex digits, found {len(key) * 2}")
    return key


def new_secret_file(path):
    """A new random 32-byte secret (hex text) written 0600."""
    write_secret(path, secrets.token_hex(32) + "\n")
    return Path(path)


# --- sealing keys (X25519) --------------------------------------------------------------------


def _b64e(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64d(text):
    if not isinstance(text, str) or len(text) > MAX_SEALED_CHARS:
        raise ValueError("not base64url text of an allowed length")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal_key_id(public_raw: bytes) -> str:
    """The key id of a sealing public key: sha256(raw 32 bytes)[:8], hex."""
    return hashlib.sha256(public_raw).digest()[:SEAL_KID_BYTES].hex()


PUBLIC_HEADER = "chot-seal-public-v1"
PRIVATE_HEADER = "chot-seal-private-v1"


def public_key_text(public_raw: bytes) -> str:
    return f"{PUBLIC_HEADER} {seal_key_id(public_raw)} {_b64e(public_raw)}\n"


def parse_public_key(text, source="public key"):
    """(kid, raw 32 bytes) from `chot-seal-public-v1 KID BASE64URL`; KeyFileError when it is not."""
    parts = str(text).split()
    try:
        if len(parts) != 3 or parts[0] != PUBLIC_HEADER:
            raise ValueError
        raw = _b64d(parts[2])
        if len(raw) != 32 or seal_key_id(raw) != parts[1]:
            raise ValueError
    except ValueError:
        raise KeyFileError(f"{source}: not a Chot sealing public key ({PUBLIC_HEADER} KID KEY); "
                           "copy the collector's seal.pub") from None
    return parts[1], raw


def load_public_key(path):
    """(kid, raw) from a seal.pub file."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"sealing public key {path} cannot be read ({exc}): copy the collector's seal.pub "
                           "there or fix privacy.seal_public_key") from None
    return parse_public_key(text, str(path))


def generate_seal_keys(key_dir):
    """A new sealing key pair in `key_dir`: seal-<kid>.key (0600) and seal.pub (the current public key).

    Older seal-*.key files are kept so that events sealed to them still open. Returns the kid.
    """
    from nacl.public import PrivateKey

    key_dir = Path(key_dir)
    sk = PrivateKey.generate()
    pub = bytes(sk.public_key)
    kid = seal_key_id(pub)
    write_secret(key_dir / f"seal-{kid}.key", f"{PRIVATE_HEADER} {kid} {_b64e(bytes(sk))}\n")
    atomic_write(key_dir / "seal.pub", public_key_text(pub), mode=0o644)
    return kid


def load_private_keys(key_dir):
    """{kid: nacl PrivateKey} of every seal-*.key in `key_dir`; KeyFileError when there is none."""
    from nacl.public import PrivateKey

    key_dir = Path(key_dir)
    keys = {}
    try:
        files = sorted(key_dir.glob("seal-*.key"))
    except OSError as exc:
        raise KeyFileError(f"key folder {key_dir} cannot be read ({exc.strerror})") from None
    for path in files:
        parts = read_secret(path, "sealing private key").decode("ascii", "replace").split()
        try:
            if len(parts) != 3 or parts[0] != PRIVATE_HEADER:
                raise ValueError
            sk = PrivateKey(_b64d(parts[2]))
            if seal_key_id(bytes(sk.public_key)) != parts[1]:
                raise ValueError
        except (ValueError, TypeError):
            raise KeyFileError(f"{path}: not a Chot sealing private key") from None
        keys[parts[1]] = sk
    if not keys:
        raise KeyFileError(f"no sealing private key (seal-*.key) in {key_dir}: run `chot provision init-fleet` "
                           "or `chot collector keygen --seal`, or fix collector.key_dir")
    return keys


class Sealer:
    """Seals personal parts on a terminal to the collector's public key; cannot open them.

    One ephemeral key pair per epoch (`rotate_events` events or `rotate_s` seconds, whichever
    comes first), held in memory only. Thread-safe.
    """

    def __init__(self, public_raw: bytes, rotate_events=1000, rotate_s=600.0, clock=time.monotonic):
        from nacl.public import PublicKey

        self.kid = seal_key_id(public_raw)
        self._pk = PublicKey(public_raw)
        self.rotate_events = int(rotate_events)
        self.rotate_s = float(rotate_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._box = None

    @classmethod
    def from_file(cls, path, **kw):
        _kid, raw = load_public_key(path)
        return cls(raw, **kw)

    def _epoch(self):
        from nacl.public import Box, PrivateKey

        now = self._clock()
        if self._box is None or self._n >= self.rotate_events or now - self._since >= self.rotate_s:
            sk = PrivateKey.generate()
            self._box = Box(sk, self._pk)
            self._epk = _b64e(bytes(sk.public_key))
            self._n, self._since = 0, now
            del sk  # only the Box keeps the shared key, until the next epoch replaces it
        self._n += 1
        return self._box, self._epk

    def seal(self, uuid, person, person_id=None, credential_id=None):
        """The sealed part {kid, epk, ct} of one event's personal data (bound to its `uuid`)."""
        plain = json.dumps({"u": uuid, "p": person or {}, "i": person_id, "c": credential_id},
                           separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(plain) > MAX_PERSON_BYTES:
            raise ValueError(f"personal part too large ({len(plain)} bytes > {MAX_PERSON_BYTES})")
        with self._lock:
            box, epk = self._epoch()
            ct = bytes(box.encrypt(plain))  # nonce (24 random bytes) + ciphertext + tag
        return {"kid": self.kid, "epk": epk, "ct": _b64e(ct)}


class SealError(ChotError):
    """A sealed part cannot be opened: unknown key, damaged, or not bound to its event."""

    def __init__(self, code, message):
        self.code = code
        super().__init__(message)


class Opened:
    """What a sealed part held: the person's fields, their person id, the credential's id."""

    __slots__ = ("person", "person_id", "credential_id")

    def __init__(self, person, person_id, credential_id):
        self.person, self.person_id, self.credential_id = person, person_id, credential_id

    def __repr__(self):  # never print personal data by accident
        return "Opened(<sealed>)"


class Opener:
    """Opens sealed parts at the collector with its private keys ({kid: PrivateKey}). Thread-safe."""

    def __init__(self, private_keys, cache_size=4096):
        self.keys = dict(private_keys)
        self._cache = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, key_dir):
        return cls(load_private_keys(key_dir))

    def _box(self, kid, epk):
        from nacl.public import Box, PublicKey

        k = (kid, epk)
        with self._lock:
            box = self._cache.get(k)
            if box is not None:
                self._cache.move_to_end(k)
                return box
        sk = self.keys.get(kid)
        if sk is None:
            raise SealError("unknown_key", f"sealed to key {kid!r}, which this collector does not hold")
        try:
            raw = _b64d(epk)
            if len(raw) != 32:
                raise ValueError
            box = Box(sk, PublicKey(raw))
        except (ValueError, TypeError):
            raise SealError("damaged", "the sealed part's ephemeral key is not a key") from None
        with self._lock:
            self._cache[k] = box
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return box

    def open(self, sealed, uuid):
        """Open a sealed part {kid, epk, ct} of the event `uuid`; SealError saying why not."""
        from nacl.exceptions import CryptoError

        if not isinstance(sealed, dict):
            sealed = {"kid": sealed.kid, "epk": sealed.epk, "ct": sealed.ct}
        box = self._box(sealed["kid"], sealed["epk"])
        try:
            plain = box.decrypt(_b64d(sealed["ct"]))
            obj = msgspec.json.decode(plain)
        except (CryptoError, ValueError, TypeError, msgspec.DecodeError):
            raise SealError("damaged", "the sealed part does not decrypt (damaged or forged)") from None
        if not isinstance(obj, dict):
            raise SealError("damaged", "the sealed part does not hold an object")
        if obj.get("u") != uuid:
            raise SealError("misbound", "the sealed part belongs to another event")
        person, pid, cid = obj.get("p"), obj.get("i"), obj.get("c")
        if not isinstance(person, dict) or not (pid is None or isinstance(pid, str)) or not (
            cid is None or isinstance(cid, str)
        ):
            raise SealError("damaged", "the sealed part's fields have the wrong types")
        return Opened(person, pid, cid)


# --- index and data keys (collector) ----------------------------------------------------------


class PersonIndex:
    """HMAC-SHA256 of person ids under the index secret (a key file outside the database)."""

    def __init__(self, secret: bytes):
        if len(secret) < 32:
            raise KeyFileError("the index secret must be 32 bytes")
        self._secret = secret
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    @classmethod
    def from_file(cls, path):
        return cls(_hex_secret(path, "index secret"))

    def key(self, person_id):
        """The index key (64 hex) of a person id, or None for None."""
        if not person_id:
            return None
        h = self._keyed.copy()  # the keyed state made once (a one-shot HMAC fetches the digest each call)
        h.update(person_id.encode("utf-8"))
        return h.hexdigest()


class DataCipher:
    """ChaCha20-Poly1305 of personal fields at rest, bound to an event's (device_id, seq)."""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        if len(key) != 32:
            raise KeyFileError("the data key must be 32 bytes")
        self.kid = hashlib.sha256(b"chot-data-key|" + key).hexdigest()[:8]
        self._aead = ChaCha20Poly1305(key)

    @classmethod
    def from_file(cls, path):
        return cls(_hex_secret(path, "data key"))

    @staticmethod
    def _aad(device_id, seq):
        return f"{device_id}|{int(seq)}".encode()

    def encrypt(self, obj, device_id, seq):
        """`kid:base64url(nonce + ciphertext)` of a JSON-able object."""
        nonce = os.urandom(12)
        plain = msgspec.json.encode(obj)  # compact UTF-8 JSON, as json.dumps(separators, ensure_ascii=False)
        return f"{self.kid}:{_b64e(nonce + self._aead.encrypt(nonce, plain, self._aad(device_id, seq)))}"

    def decrypt(self, text, device_id, seq):
        """The object back; SealError when the key differs or the data was altered or moved."""
        from cryptography.exceptions import InvalidTag

        kid, _, body = str(text).partition(":")
        if kid != self.kid:
            raise SealError("unknown_key", f"encrypted with data key {kid!r}, not the configured one")
        try:
            raw = _b64d(body)
            return json.loads(self._aead.decrypt(raw[:12], raw[12:], self._aad(device_id, seq)))
        except (InvalidTag, ValueError):
            raise SealError("damaged", "encrypted personal fields do not decrypt (altered or moved)") from None


# --- the deny list's hashes -------------------------------------------------------------------

# from bench/privacy.py (docs/security.md); 4 lanes: a Pi has 4 cores
ARGON2_DEFAULT = {"t": 2, "m_kib": 49152, "p": 4}
ARGON2_LIMITS = {"t": (1, 10), "m_kib": (8192, 262144), "p": (1, 4)}


def check_argon2_params(params):
    """The parameters as a dict of ints; ValueError when outside ARGON2_LIMITS."""
    if not isinstance(params, dict):
        raise ValueError("argon2: expected {t, m_kib, p}")
    out = {}
    for k, (lo, hi) in ARGON2_LIMITS.items():
        v = params.get(k)
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"argon2.{k}: found {v!r}; allowed: an integer from {lo} to {hi}")
        out[k] = v
    return out


def deny_person_hash(person_id, salt: bytes, params=None):
    """Argon2id(person id, salt) with the list's parameters, hex (32 bytes)."""
    from argon2.low_level import Type, hash_secret_raw

    p = check_argon2_params(params or ARGON2_DEFAULT)
    raw = hash_secret_raw(("chot-deny-v2|" + person_id).encode("utf-8"), salt, p["t"], p["m_kib"], p["p"], 32,
                          Type.ID)
    return raw.hex()


def revoked_hash(credential_id, salt: bytes):
    """sha256(salt | 'cred|' + credential id), hex: credential ids are random, a fast hash suffices."""
    return hashlib.sha256(salt + b"cred|" + str(credential_id).encode("utf-8")).hexdigest()


class ProcessKey:
    """A keyed hash with a secret random per process: per-person state in memory (cooldowns, caches)."""

    def __init__(self):
        self._secret = secrets.token_bytes(32)

    def __call__(self, data: str) -> bytes:
        return hmac.new(self._secret, data.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:16]


# --- what a sealed part holds -----------------------------------------------------------------

# The keys of a person's fields (the sealed part's "p"), each optional; formats fill what they know.
PERSON_FIELDS = {
    "id_number": "the ID number (CCCD 12 digits, CMND 9, passport), as written",
    "name": "full name, as written",
    "phone": "phone number",
    "dob": "birth date, YYYY-MM-DD (or YYYY)",
    "sex": "as written on an ID card",
    "address": "address",
    "ward": "ward (phường/xã) of residence",
    "health": "health answers: {symptoms, contact, travel} booleans",
    "purpose": "resident, visitor, delivery, shopping",
    "kind": "what the credential is: declaration, vaccination, test, recovery, id_card, id_text, text",
    "doses": "vaccination doses (declaration, DCC, SHC)",
    "last_dose": "date of the last dose",
    "issuer": "who signed the credential (key id, DCC issuer, SHC iss)",
    "paper": "true for a paper declaration entered by staff",
    "old_id_number": "the old CMND number printed in a chip ID card's QR (9 or 12 digits)",
    "id_issued": "issue date of an ID card, YYYY-MM-DD",
    "qid": "the PC-Covid personal QR's id (its person id is pcq:<QID>)",
}


# --- the deny list, as the collector publishes it and terminals read it -----------------------

DENYLIST_FORMAT = "chot-denylist-v2"


def make_denylist_body(version, person_ids=(), credential_ids=(), params=None, salt=None):
    """The body of a `denylist` update (version 2 format):

    {"format": "chot-denylist-v2", "version": N, "salt": hex (16 bytes, new per list),
     "argon2": {"t", "m_kib", "p"}, "persons": [Argon2id hex...], "revoked": [sha256 hex...]}

    `person_ids` as from person_id_for_id / person_id_for_name_dob; `credential_ids` are the
    random ids of revoked credentials (native declaration id, DCC ci, SHC rid). Sorted, so the
    order tells nothing.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    params = check_argon2_params(params or ARGON2_DEFAULT)
    return {
        "format": DENYLIST_FORMAT,
        "version": int(version),
        "salt": salt.hex(),
        "argon2": params,
        "persons": sorted({deny_person_hash(p, salt, params) for p in person_ids}),
        "revoked": sorted({revoked_hash(c, salt) for c in credential_ids}),
    }
