"""The deny list (format `chot-denylist-v2`): revoked credentials and denied persons, as hashes only.

The collector publishes it (the body of the signed `denylist` update, made by
chot.personal.make_denylist_body); the terminal keeps it in `policy.denylist`. File (JSON):

    {"format": "chot-denylist-v2", "version": 7, "salt": "<hex, 16-64 bytes>",
     "argon2": {"t": 2, "m_kib": 49152, "p": 1},
     "persons": ["<Argon2id(person id, salt) hex>", ...],
     "revoked": ["<sha256(salt | 'cred|' + credential id) hex>", ...]}

- `is_revoked(credential_id)`: one SHA-256; credential ids (a native declaration's id, a DCC's
  `ci`, an SHC's `rid`) are random, so a fast hash reveals nothing.
- `is_denied_person(person_id)`: one Argon2id with the list's salt and parameters (slow and
  memory-hard, so that trying every ID number of a province and birth year against a list
  copied off a terminal costs too much), only when the list has persons. The policy calls it
  only after a credential's signature verified. Answers are cached in memory (at most
  CACHE_SIZE), keyed by a chot.personal.ProcessKey of the person id, and dropped when the list
  is replaced.

The parameters are checked (chot.personal.check_argon2_params: a list cannot make a terminal
allocate unbounded memory), entries must be 64 lower-case hex digits, at most MAX_ENTRIES in
all. `version` only grows: `replace(new)` refuses an older list; it is atomic and thread-safe
(the frame loop reads meanwhile).
"""

import json
import logging
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from chot import personal
from chot.errors import CredentialError
from chot.files import atomic_write

log = logging.getLogger(__name__)

FORMAT = personal.DENYLIST_FORMAT
MAX_ENTRIES = 1_000_000  # persons + revoked
MAX_FILE_BYTES = 160 * 1024 * 1024  # a list of MAX_ENTRIES entries is about 70 MB of JSON
CACHE_SIZE = 10_000
SALT_BYTES = (16, 64)
_KEYS = ("format", "version", "salt", "argon2", "persons", "revoked")
_HEX = frozenset("0123456789abcdef")
_VERSION_MAX = 2**63 - 1


def _digests(items, what, source):
    """The entries of one list as a frozenset of 32-byte digests; CredentialError when malformed."""
    if not isinstance(items, list):
        raise CredentialError(f"{source}: {what} must be a list of 64 hex digits each")
    out = set()
    for i, e in enumerate(items):
        if not (isinstance(e, str) and len(e) == 64 and _HEX.issuperset(e)):
            raise CredentialError(f"{source}: {what}[{i}] is not 64 lower-case hex digits (a SHA-256 / Argon2id hash)")
        out.add(bytes.fromhex(e))
    return frozenset(out)


class _State:
    """One list, immutable once made; the DenyList swaps whole states."""

    __slots__ = ("version", "salt", "params", "persons", "revoked", "cache")

    def __init__(self, version, salt, params, persons, revoked):
        self.version, self.salt, self.params = version, salt, params
        self.persons, self.revoked = persons, revoked
        self.cache = OrderedDict()  # ProcessKey(person id) -> bool, for this state only


class DenyList:
    """Revoked credential ids and denied persons, hashed with the list's salt, with a version number.

    `DenyList()` is the empty list (version 0). Thread-safe.
    """

    def __init__(self, _state=None):
        self._lock = threading.Lock()
        self._key = personal.ProcessKey()
        self._state = _state or _State(0, secrets.token_bytes(SALT_BYTES[0]), dict(personal.ARGON2_DEFAULT),
                                       frozenset(), frozenset())

    # ------------------------------------------------------------------ making and reading

    @classmethod
    def build(cls, version, person_ids=(), credential_ids=(), params=None, salt=None):
        """A list from person ids and credential ids, as the collector makes it (tests, tools)."""
        return cls.from_dict(personal.make_denylist_body(version, person_ids, credential_ids, params, salt))

    @classmethod
    def from_dict(cls, obj, source="deny list"):
        """From the body of the collector's `denylist` update or the file's JSON; CredentialError saying why not."""
        if not isinstance(obj, dict):
            raise CredentialError(f"{source}: expected a JSON object of format {FORMAT}")
        if obj.get("format") != FORMAT:
            raise CredentialError(f"{source}: format is {str(obj.get('format'))[:40]!r}; allowed: {FORMAT!r} "
                                  "(publish a new list from the collector)")
        unknown = sorted(str(k)[:40] for k in obj.keys() - set(_KEYS))
        missing = [k for k in _KEYS if k not in obj]
        if unknown or missing:
            raise CredentialError(f"{source}: " + "; ".join(
                ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing key(s) {', '.join(missing)}"] if missing else [])
            ) + f"; a {FORMAT} object has exactly {', '.join(_KEYS)}")
        version = obj["version"]
        if type(version) is not int or not 0 <= version <= _VERSION_MAX:
            raise CredentialError(f"{source}: version must be an integer >= 0, found {str(version)[:40]!r}")
        try:
            salt = bytes.fromhex(obj["salt"]) if isinstance(obj["salt"], str) else None
        except ValueError:
            salt = None
        if salt is None or not SALT_BYTES[0] <= len(salt) <= SALT_BYTES[1]:
            raise CredentialError(f"{source}: salt must be {SALT_BYTES[0]} to {SALT_BYTES[1]} bytes as hex")
        try:
            params = personal.check_argon2_params(obj["argon2"])
        except ValueError as exc:
            raise CredentialError(f"{source}: {exc}") from None
        persons, revoked = obj["persons"], obj["revoked"]
        n = (len(persons) if isinstance(persons, list) else 0) + (len(revoked) if isinstance(revoked, list) else 0)
        if n > MAX_ENTRIES:
            raise CredentialError(f"{source}: {n} entries; at most {MAX_ENTRIES} allowed")
        state = _State(version, salt, params, _digests(persons, "persons", source),
                       _digests(revoked, "revoked", source))
        return cls(state)

    @classmethod
    def load(cls, path):
        """Read a deny list file (at start-up); CredentialError saying what to fix."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise CredentialError(f"deny list {path}: {size} bytes; at most {MAX_FILE_BYTES} allowed")
            obj = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise CredentialError(f"deny list {path} does not exist; fix policy.denylist or remove it") from None
        except OSError as exc:
            raise CredentialError(f"deny list {path} cannot be read ({exc.strerror}): "
                                  "run as the service user") from None
        except ValueError as exc:
            raise CredentialError(f"deny list {path} is not JSON: {exc}") from None
        return cls.from_dict(obj, f"deny list {path}")

    def to_dict(self):
        """The list as JSON-able builtins, exactly as make_denylist_body makes it."""
        st = self._state
        return {
            "format": FORMAT,
            "version": st.version,
            "salt": st.salt.hex(),
            "argon2": dict(st.params),
            "persons": sorted(d.hex() for d in st.persons),
            "revoked": sorted(d.hex() for d in st.revoked),
        }

    def save(self, path):
        """Write atomically (temporary file, fsync, rename), mode 0600."""
        try:
            atomic_write(path, json.dumps(self.to_dict(), separators=(",", ":")), mode=0o600)
        except OSError as exc:
            raise CredentialError(f"cannot write deny list {path}: {exc.strerror}") from exc

    # ------------------------------------------------------------------ reading the list

    @property
    def version(self):
        return self._state.version

    @property
    def person_count(self):
        return len(self._state.persons)

    @property
    def revoked_count(self):
        return len(self._state.revoked)

    def __len__(self):
        st = self._state
        return len(st.persons) + len(st.revoked)

    def __repr__(self):
        st = self._state
        return f"DenyList(version={st.version}, persons={len(st.persons)}, revoked={len(st.revoked)})"

    def is_revoked(self, credential_id) -> bool:
        """True when the credential (its random id) is revoked. One SHA-256."""
        st = self._state
        if not credential_id or not st.revoked:
            return False
        return bytes.fromhex(personal.revoked_hash(credential_id, st.salt)) in st.revoked

    def is_denied_person(self, person_id) -> bool:
        """True when the person is denied. One Argon2id (none when the list has no persons, or cached).

        Call it only for a credential whose signature verified (the policy does).
        """
        st = self._state
        if not person_id or not st.persons:
            return False
        key = self._key(person_id)
        with self._lock:
            hit = st.cache.get(key)
            if hit is not None:
                st.cache.move_to_end(key)
                return hit
        denied = bytes.fromhex(personal.deny_person_hash(person_id, st.salt, st.params)) in st.persons
        with self._lock:
            st.cache[key] = denied
            while len(st.cache) > CACHE_SIZE:
                st.cache.popitem(last=False)
        return denied

    # ------------------------------------------------------------------ updates

    def replace(self, new: "DenyList"):
        """Take over `new`'s list at once; True if replaced, False for an older version (a stale broadcast).

        The same list again (the collector re-signs it unchanged to keep it fresh: same salt, parameters
        and entries) keeps the answers cached for it, so no Argon2id is computed again.
        """
        st = new._state
        fresh = _State(st.version, st.salt, st.params, st.persons, st.revoked)  # with an empty cache
        with self._lock:
            old = self._state
            if fresh.version < old.version:
                log.warning("deny list version %d is older than %d: ignored", fresh.version, old.version)
                return False
            if (fresh.salt, fresh.params, fresh.persons, fresh.revoked) == (old.salt, old.params, old.persons,
                                                                            old.revoked):
                fresh.cache = old.cache  # the same list: the same answers
            self._state = fresh
        log.info("deny list replaced: version %d, %d persons, %d revoked credentials", fresh.version,
                 len(fresh.persons), len(fresh.revoked))
        return True
