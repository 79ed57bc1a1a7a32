"""Signed updates from the collector (config, deny list, trusted issuers): check, keep, replay.

The collector publishes each device's config on `chot/v1/dev/<id>/config` and the broadcast
lists on `chot/v1/broadcast/denylist` and `chot/v1/broadcast/trust`, all retained and
signed with its Ed25519 key (`chot.wire.sign_envelope`). `UpdateStore.offer(topic, payload)`
accepts an update only when

- its signature verifies against the collector public key pinned in the terminal's config
  (`mqtt.collector_public_key`), its kind matches the topic and it is meant for this device;
- its version is newer than the last one applied of that kind;
- it has not expired (`expires`, signed; judged with the terminal's time floor, so a clock set
  back does not revive it) and it is not older, by version or issue time, than the newest one
  ever applied of its kind: that record is kept in the outbox database (device/timefloor.py), so
  wiping this file does not let an older retained or replayed list back in. Refusals are counted
  by code (`refused`: expired, older) and logged once per message.

Accepted updates are kept, as the signed messages themselves, in one small JSON file next
to the outbox (`<outbox>.updates.json`, written atomically: temp file, fsync, rename), so
that after a restart the terminal decides with what it last had even while offline. On
loading, each kept message is verified again: a file edited by hand is not trusted, and an
older copy put back (older than the time floor's record) is refused. A kept message that has
expired since is still used (it is the newest the terminal has), and reported `stale`.

Nothing in an update names a person (the deny list holds salted hashes, a config update at
most the collector's sealing *public* key), so the kept file holds nothing personal either;
it is written 0600 all the same.
"""

import json
import logging
from pathlib import Path

from chot import wire
from chot.errors import UplinkError
from chot.files import atomic_write
from device.timefloor import TimeFloor

log = logging.getLogger(__name__)

BROADCAST_KINDS = ("denylist", "trust")


def load_public_key(path):
    """The collector's Ed25519 public key from a PEM file; raise UplinkError saying what to fix."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UplinkError(
            f"cannot read the collector public key {path}: {exc.strerror}; "
            "copy the collector's public key (PEM) there or fix mqtt.collector_public_key"
        ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise UplinkError(f"{path} is not a PEM public key; give the collector's Ed25519 public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UplinkError(f"{path} is a {type(key).__name__}; the collector signs with Ed25519: give its public key")
    return key


def store_path_for(outbox_path):
    """Where the applied updates are kept: next to the outbox database."""
    p = Path(outbox_path)
    return p.with_name(p.name + ".updates.json")


class UpdateStore:
    """The last applied signed update of each kind, verified and kept on disk.

    `offer(topic, payload)` returns `(kind, body, version)` when the update is to be applied,
    else None (and logs why). Call `commit(kind)` once it has been applied, so it is persisted;
    `applied()` lists what was kept, to replay at start-up.
    """

    def __init__(self, path, public_key, device_id, floor=None):
        self.path = Path(path)
        self.public_key = public_key
        self.device_id = device_id
        # the durable record of the newest update applied per kind (the outbox's), or one in memory
        self.floor = floor if floor is not None else TimeFloor()
        self._kept = {}  # kind -> {"version": int, "payload": str}
        self._pending = {}  # kind -> (version, payload, envelope) offered, not yet committed
        self.refused = {}  # code (expired, older) -> count
        self._logged = set()  # (kind, version, code) already logged
        self.floor.clear_held()
        self._load()

    # --- topics -----------------------------------------------------------------------------

    def kind_of(self, topic):
        """The kind of update a topic carries, or None when it is not an update topic."""
        if topic == wire.config_topic(self.device_id):
            return "config"
        prefix = wire.broadcast_topic("")
        if topic.startswith(prefix) and topic[len(prefix):] in BROADCAST_KINDS:
            return topic[len(prefix):]
        return None

    # --- offers -----------------------------------------------------------------------------

    def version(self, kind):
        """The version last applied of `kind`, or None."""
        kept = self._kept.get(kind)
        return kept["version"] if kept else None

    def offer(self, topic, payload):
        kind = self.kind_of(topic)
        if kind is None:
            log.debug("ignoring a message on %s: not an update topic", topic)
            return None
        if not payload:
            log.info("the retained %s was cleared at the collector; keeping version %s", kind, self.version(kind))
            return None
        if self.public_key is None:
            log.warning(
                "%s update ignored: no collector public key is pinned (set mqtt.collector_public_key)", kind
            )
            return None
        try:
            env = wire.verify_envelope(self.public_key, payload, kind, target=self.device_id)
        except wire.WireError as exc:
            log.warning("%s update REJECTED (%s: forged or malformed): %s", kind, exc.code, exc)
            return None
        version = env["version"]
        current = self.version(kind)
        if current is not None and version <= current:
            if version < current:
                log.warning("%s update version %d ignored: older than the applied version %d", kind, version, current)
            else:
                log.debug("%s version %d already applied", kind, version)
            return None
        problem = self.floor.check_update(kind, version, env["issued"], env["expires"])
        if problem is not None:
            code, message = problem
            self.refused[code] = self.refused.get(code, 0) + 1
            if (kind, version, code) not in self._logged:
                self._logged.add((kind, version, code))
                log.warning("%s update REFUSED (%s): %s", kind, code, message)
            return None
        self._pending[kind] = (version, payload.decode("utf-8") if isinstance(payload, bytes) else payload, env)
        return kind, env["body"], version

    def commit(self, kind):
        """Persist the update last offered of `kind` (after it was applied)."""
        version, payload, env = self._pending.pop(kind)
        self._kept[kind] = {"version": version, "payload": payload}
        self._save()
        self.floor.note_applied(kind, version, env["issued"], env["expires"])
        log.info("%s version %d applied and kept", kind, version)

    def discard(self, kind):
        """Forget the update last offered of `kind` (applying it failed)."""
        self._pending.pop(kind, None)

    def applied(self):
        """[(kind, body, version)] of the kept updates, to hand to the daemon at start-up."""
        out = []
        for kind, kept in sorted(self._kept.items()):
            env = json.loads(kept["payload"])
            out.append((kind, env["body"], kept["version"]))
        return out

    # --- the file ---------------------------------------------------------------------------

    def _load(self):
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read the kept updates %s (%s); starting without them", self.path, exc)
            return
        if not isinstance(data, dict):
            log.error("kept updates %s are not a JSON object; starting without them", self.path)
            return
        for kind, kept in data.items():
            try:
                payload = kept["payload"]
                if self.public_key is None:
                    raise wire.WireError("no collector public key is pinned (set mqtt.collector_public_key)", "no_key")
                env = wire.verify_envelope(self.public_key, payload.encode("utf-8"), kind, target=self.device_id)
            except (KeyError, TypeError, AttributeError, wire.WireError) as exc:
                log.error("kept %s update does not verify (%s); ignored", kind, exc)
                continue
            newest = self.floor.applied(kind)
            if newest is not None and newest["version"] is not None and env["version"] < newest["version"]:
                log.error("kept %s update version %d is older than version %d applied before (an old copy of "
                          "%s?); ignored until the collector's current one arrives", kind, env["version"],
                          newest["version"], self.path)
                continue
            self._kept[kind] = {"version": env["version"], "payload": payload}
            self.floor.note_held(kind, env["version"], env["issued"], env["expires"])

    def _save(self):
        atomic_write(self.path, json.dumps(self._kept, sort_keys=True, indent=1), mode=0o600)
