"""The deny list: subjects who must not pass, stored only as salted hashes.

An entry is sha256(salt + subject_key) in hex, where `subject_key` is the person's stable hash
(subject.py) and `salt` is random per list, so a list copied off a terminal reveals neither ID
numbers nor the subject keys the outbox records. File (JSON):

    {"format": "chot-denylist-v1", "version": 7, "salt": "<hex>", "entries": ["<hex sha256>", ...]}

`version` only grows; the collector's broadcast replaces the list with `replace(new)`, which
is atomic and thread-safe (the frame loop calls `contains` meanwhile).
"""

import hashlib
import json
import logging
import re
import secrets
import threading
from pathlib import Path

from chot.errors import CredentialError
from chot.files import atomic_write

log = logging.getLogger(__name__)

FORMAT = "chot-denylist-v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _entry(salt: bytes, subject_key: str) -> str:
    return hashlib.sha256(salt + subject_key.encode("utf-8")).hexdigest()


class DenyList:
    """A set of salted subject hashes with a version number."""

    def __init__(self, salt: bytes | None = None, entries=(), version: int = 0):
        self._lock = threading.Lock()
        self._salt = salt if salt is not None else secrets.token_bytes(16)
        self._entries = frozenset(entries)
        self._version = int(version)

    @classmethod
    def from_subject_keys(cls, keys, salt: bytes | None = None, version: int = 1):
        salt = salt if salt is not None else secrets.token_bytes(16)
        return cls(salt, (_entry(salt, k) for k in keys), version)

    @classmethod
    def from_dict(cls, obj, source="deny list"):
        """Build from the JSON object of the file or of the collector's broadcast."""
        if not isinstance(obj, dict) or obj.get("format", FORMAT) != FORMAT:
            raise CredentialError(f"{source}: not a {FORMAT} object")
        try:
            salt = bytes.fromhex(obj["salt"])
            version = obj.get("version", 0)
            entries = obj.get("entries", [])
            if type(version) is not int or version < 0 or not isinstance(entries, list):
                raise ValueError
            if not all(isinstance(e, str) and _HEX64.fullmatch(e) for e in entries):
                raise ValueError
        except (KeyError, TypeError, ValueError) as exc:
            raise CredentialError(
                f"{source}: expected salt (hex), version (integer) and entries (lower-case hex SHA-256)"
            ) from exc
        return cls(salt, entries, version)

    @classmethod
    def load(cls, path):
        """Read a deny list file (at start-up)."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CredentialError(f"deny list {path} does not exist; fix policy.denylist or remove it") from exc
        except (OSError, ValueError) as exc:
            raise CredentialError(f"deny list {path} cannot be read as JSON: {exc}") from exc
        return cls.from_dict(obj, str(path))

    def to_dict(self):
        with self._lock:
            return {"format": FORMAT, "version": self._version, "salt": self._salt.hex(),
                    "entries": sorted(self._entries)}

    def save(self, path):
        """Write atomically (temporary file, fsync, rename)."""
        try:
            atomic_write(path, json.dumps(self.to_dict(), indent=1))
        except OSError as exc:
            raise CredentialError(f"cannot write deny list {path}: {exc.strerror}") from exc

    @property
    def version(self):
        return self._version

    def __len__(self):
        return len(self._entries)

    def contains(self, subject_key) -> bool:
        if not subject_key:
            return False
        with self._lock:
            salt, entries = self._salt, self._entries
        return _entry(salt, subject_key) in entries

    __contains__ = contains

    def replace(self, new: "DenyList"):
        """Take over `new`'s salt, entries and version at once. Returns True if replaced.

        A list with a lower version than the current one is refused (a stale broadcast).
        """
        snap = new.to_dict()
        with self._lock:
            if snap["version"] < self._version:
                log.warning("deny list version %d is older than %d: ignored", snap["version"], self._version)
                return False
            self._salt = bytes.fromhex(snap["salt"])
            self._entries = frozenset(snap["entries"])
            self._version = snap["version"]
        log.info("deny list replaced: version %d, %d entries", snap["version"], len(snap["entries"]))
        return True
