"""Bound devices: each terminal may record events only at the checkpoint and in the direction it
was enrolled for.

The fleet knows what each terminal was enrolled for (`chot provision device ID --checkpoint CP
--direction in|out` writes it into the device's terminal.toml); `chot provision registry` writes
the fleet's registry file (REGISTRY_FORMAT, below) and `chot collector devices import FILE`
loads it into the collector's database (`chot_binding`, shared by every collector on that
database). A terminal is moved by enrolling it again (`--renew` with the new checkpoint) and
importing the registry again: a signed config update cannot move it (the terminal refuses a
`device` part, and `chot collector set-config` refuses to sign one).

At ingest (`Bindings.check`), with at least one device bound:
- an event whose checkpoint or direction differs from its device's binding is refused
  (`wrong_checkpoint`, `wrong_direction`) and quarantined: its seq is acked (the terminal stops
  resending it) and nothing of it is stored but a hash, so it never reaches tracing;
- an event of a device that is not bound (`unregistered_device`) is refused and NOT acked: the
  terminal keeps it and sends it again, and it is stored once the device is imported (a terminal
  enrolled after the last import loses nothing).
With no device bound (a collector whose registry was never imported: tests, the demo without
it, a fleet not yet migrated) nothing is checked, and the collector says so at start.

Registry file, JSON: {"format": "chot-devices-v1", "fleet": name, "written": ISO time,
"devices": [{"device_id", "checkpoint", "direction"}], "revoked": [device ids]}. A revoked
device is left out of "devices": its binding is removed, so whatever it still sends is refused.
"""

import json
import logging
import threading
import time
from pathlib import Path

from chot import wire
from chot.errors import CollectorError

log = logging.getLogger(__name__)

REGISTRY_FORMAT = "chot-devices-v1"
MAX_REGISTRY_BYTES = 64 * 1024 * 1024
REFRESH_S = 10.0  # a running collector sees an import within this long


def parse_registry(data, source="the registry"):
    """{device_id: (checkpoint, direction)} of a registry object; CollectorError listing every problem."""
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise CollectorError(f"{source}: not a device registry (format {REGISTRY_FORMAT!r}); write one with "
                             "`chot provision registry --fleet DIR --out FILE`")
    devices = data.get("devices")
    if not isinstance(devices, list):
        raise CollectorError(f"{source}: 'devices' must be a list of {{device_id, checkpoint, direction}}")
    out, problems = {}, []
    for i, d in enumerate(devices):
        if not isinstance(d, dict):
            problems.append(f"devices[{i}]: not an object")
            continue
        dev, cp, dr = d.get("device_id"), d.get("checkpoint"), d.get("direction")
        if not isinstance(dev, str) or not wire.DEVICE_ID_RE.fullmatch(dev):
            problems.append(f"devices[{i}].device_id: {dev!r} is not a device id")
            continue
        if not isinstance(cp, str) or not wire.CHECKPOINT_RE.fullmatch(cp):
            problems.append(f"devices[{i}] ({dev}).checkpoint: {cp!r} is not a checkpoint id")
        if dr not in wire.DIRECTIONS:
            problems.append(f"devices[{i}] ({dev}).direction: {dr!r}; allowed: {', '.join(wire.DIRECTIONS)}")
        if dev in out:
            problems.append(f"devices[{i}]: {dev} is listed twice")
        out[dev] = (cp, dr)
    revoked = data.get("revoked") or []
    if not isinstance(revoked, list):
        problems.append("revoked: must be a list of device ids")
        revoked = []
    for dev in revoked:
        if dev in out:
            problems.append(f"revoked: {dev} is also listed as enrolled")
    if problems:
        raise CollectorError(f"{source}: " + "; ".join(problems[:20])
                             + (f"; and {len(problems) - 20} more" if len(problems) > 20 else ""))
    return out


def read_registry(path):
    """(bindings, source text) of a registry file; CollectorError saying what is wrong."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_REGISTRY_BYTES:
            raise CollectorError(f"{p}: larger than {MAX_REGISTRY_BYTES} bytes: not a device registry")
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CollectorError(f"cannot read the device registry {p}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CollectorError(f"{p} is not JSON: {exc}") from None
    bindings = parse_registry(data, str(p))
    source = f"{data.get('fleet') or 'fleet'} registry of {data.get('written') or '?'}"
    return bindings, source


def import_registry(storage, path):
    """Replace the collector's bindings with the registry file's; returns what changed (Storage.replace_bindings)."""
    bindings, source = read_registry(path)
    return storage.replace_bindings(bindings, source)


class Bindings:
    """The bindings as the subscriber checks them: read from the database, again every REFRESH_S."""

    def __init__(self, storage, refresh_s=REFRESH_S):
        self.storage = storage
        self.refresh_s = refresh_s
        self._map = {}
        self._loaded = None
        self._lock = threading.Lock()

    def refresh(self, force=False):
        """Read the bindings again when REFRESH_S passed (or `force`); False when they were never read."""
        now = time.monotonic()
        if not force and self._loaded is not None and now - self._loaded < self.refresh_s:
            return True
        try:
            new = self.storage.bindings()
        except Exception as exc:  # the database is down: keep the last known bindings
            log.debug("cannot read the device bindings: %s", exc)
            if self._loaded is None:
                return False
            self._loaded = now
            return True
        with self._lock:
            if self._loaded is None and not new:
                log.warning("no device is bound (chot_binding is empty): events are NOT checked against the "
                            "checkpoint and direction their terminal was enrolled for; import the fleet's registry "
                            "with `chot collector devices import FILE` (docs/security.md)")
            self._map, self._loaded = new, now
        return True

    @property
    def loaded(self):
        """The bindings were read at least once (until then no event may be checked, nor stored)."""
        return self._loaded is not None

    @property
    def enforced(self):
        return bool(self._map)

    def __len__(self):
        return len(self._map)

    def check(self, ev):
        """None when event `ev` may be stored, else (code, detail); detail names ids, never a person."""
        if not self._map:
            return None
        bound = self._map.get(ev.device_id)
        if bound is None:
            return "unregistered_device", f"device {ev.device_id} is not in the registry (import it)"
        cp, dr = bound
        if ev.checkpoint != cp:
            return "wrong_checkpoint", (f"seq {ev.seq} claims checkpoint {ev.checkpoint!r}; the device is bound to "
                                        f"{cp!r}")
        if ev.direction.value != dr:
            return "wrong_direction", (f"seq {ev.seq} claims direction {ev.direction.value!r}; the device is bound "
                                       f"to {dr!r}")
        return None
