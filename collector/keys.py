"""The collector's personal-data keys (`collector.key_dir`) and how an event's sealed part is opened.

The folder holds (see docs/security.md):

    seal-<kid>.key   X25519 private keys, 0600; every one is kept (old ones open old events)
    seal.pub         the current sealing public key (the terminals pin it); not needed to run
    index.key        HMAC secret of the person index, 0600
    data.key         ChaCha20-Poly1305 key of the personal fields at rest, 0600

`CollectorKeys.from_dir(key_dir)` loads them and fails with ONE error listing everything
missing. `keys.open(event)` turns a wire Event into an `Item(event, opened, seal_error)`:
the opened part (a `chot.personal.Opened`) or the code of why it could not be opened.
`keys.columns(event, opened)` gives the stored (person_key, claim_key, personal) of an event:
the HMAC of the person id as `person_key` when the event is verified, as `claim_key` when it
is not (an unverified claim never joins a person's record), and the personal fields encrypted
with the data key, bound to (device_id, seq).
"""

from pathlib import Path
from typing import NamedTuple

from chot import personal
from chot.errors import CollectorError
from chot.personal import DataCipher, KeyFileError, Opened, Opener, PersonIndex, SealError

DEFAULT_KEY_DIR = "/etc/chot/collector-keys"


class Item(NamedTuple):
    """One event as the storage takes it: the wire Event, its opened sealed part (or None), why not."""

    event: object  # chot.wire.Event
    opened: Opened | None = None
    seal_error: str | None = None


class CollectorKeys:
    """The opener (sealing private keys), the person index and the data cipher of one collector."""

    def __init__(self, opener, index, cipher, key_dir=None):
        self.opener, self.index, self.cipher, self.key_dir = opener, index, cipher, key_dir

    @classmethod
    def from_dir(cls, key_dir):
        """Load every key of `key_dir`; CollectorError listing each missing or unusable file."""
        key_dir = Path(key_dir)
        problems = []
        opener = index = cipher = None
        if not key_dir.is_dir():
            raise CollectorError(
                f"collector.key_dir {key_dir} does not exist: run `chot provision init-fleet` (it makes "
                "<fleet>/collector-keys/) or `chot collector keygen --seal --index --data --key-dir DIR`, "
                "and set collector.key_dir to it"
            )
        try:
            opener = Opener.from_dir(key_dir)
        except KeyFileError as exc:
            problems.append(str(exc))
        try:
            index = PersonIndex.from_file(key_dir / "index.key")
        except KeyFileError as exc:
            problems.append(str(exc))
        try:
            cipher = DataCipher.from_file(key_dir / "data.key")
        except KeyFileError as exc:
            problems.append(str(exc))
        if problems:
            raise CollectorError(f"the collector's keys in {key_dir} are not usable:\n  " + "\n  ".join(problems))
        return cls(opener, index, cipher, key_dir)

    def open(self, ev):
        """The Item of a wire Event: its sealed part opened, or the SealError code; never raises."""
        if ev.sealed is None:
            return Item(ev, None, None)
        try:
            return Item(ev, self.opener.open(ev.sealed, ev.uuid), None)
        except SealError as exc:
            return Item(ev, None, exc.code)

    def columns(self, ev, opened):
        """(person_key, claim_key, personal ciphertext) of an event with its opened part."""
        if opened is None:
            return None, None, None
        key = self.index.key(opened.person_id) if opened.person_id else None
        text = self.cipher.encrypt(
            {"person": opened.person, "person_id": opened.person_id, "credential_id": opened.credential_id},
            ev.device_id,
            ev.seq,
        )
        if ev.verified:
            return key, None, text
        return None, key, text

    def decrypt(self, text, device_id, seq):
        """The stored personal fields {"person", "person_id", "credential_id"}; SealError when they do not open."""
        return self.cipher.decrypt(text, device_id, seq)

    def person_key(self, person_id):
        return self.index.key(person_id)

    def lookup_key(self, kind, value):
        """The keyed index of a declaration id (kind "cred") or a phone number (kind "phone"), or None."""
        return lookup_key(self.index, kind, value)

    def lookup_keys(self, opened):
        """[(lookup_key, person_key)] of an opened part: its credential id and phone, each to the person."""
        return lookup_keys(self.index, opened.person_id, opened.person, opened.credential_id)


def lookup_key(index, kind, value):
    """HMAC(index, "cred:<declaration id>" / "phone:<normalised phone>") (chot_lookup), or None."""
    norm = personal.normalise_phone(value) if kind == "phone" else str(value or "").strip()
    return index.key(f"{kind}:{norm}") if norm else None


def lookup_keys(index, person_id, person, credential_id):
    """[(lookup_key, person_key)] of a person's stored fields: their declaration id and phone."""
    pk = index.key(person_id) if person_id else None
    if pk is None:
        return []
    person = person if isinstance(person, dict) else {}
    out = []
    for kind, value in (("cred", credential_id), ("phone", person.get("phone"))):
        lk = lookup_key(index, kind, value) if isinstance(value, str) else None
        if lk:
            out.append((lk, pk))
    return out


def make_key_dir(key_dir, seal=True, index=True, data=True, force=False):
    """Create the collector's keys in `key_dir` (0700); return the paths written.

    A new seal key keeps the old seal-*.key files (they open old events) and replaces seal.pub;
    without `force` it is refused when seal.pub exists, as are index.key and data.key (replacing
    them makes the stored index and personal fields unreadable).
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    refusals = []
    if seal and (key_dir / "seal.pub").exists() and not force:
        refusals.append(f"{key_dir / 'seal.pub'} exists: --force makes a new seal key (the old private keys are "
                        "kept) and every terminal must then get the new seal.pub through a signed config")
    for flag, name in ((index, "index.key"), (data, "data.key")):
        if flag and (key_dir / name).exists() and not force:
            refusals.append(f"{key_dir / name} exists: replacing it makes what is stored unreadable; "
                            "keep it (or --force)")
    if refusals:
        raise CollectorError("\n".join(refusals))
    if seal:
        kid = personal.generate_seal_keys(key_dir)
        written += [key_dir / f"seal-{kid}.key", key_dir / "seal.pub"]
    if index:
        written.append(personal.new_secret_file(key_dir / "index.key"))
    if data:
        written.append(personal.new_secret_file(key_dir / "data.key"))
    return written
