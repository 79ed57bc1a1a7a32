"""The terminal's time floor: a lower bound of the true time that setting the clock back cannot lower.

A Pi has no real-time clock, and anyone at the terminal with a shell (or a bad NTP answer) can set
its clock back; a declaration three days old then looks fresh. The floor is the latest of

- the latest event time the outbox has recorded (`Outbox.event_floor`, kept in the outbox database:
  the last event's time, and a row written whenever an event is recorded below it);
- the issue time of the newest signed update applied of each kind (config, deny list, trust),
  kept in the outbox database too (`Outbox.floor_rows`), not only in the kept-updates file;
- while this process runs, the collector's time from the latest signed ack plus the monotonic time
  elapsed since it arrived (`device.clock.get_ref`): the collector stamped it before it arrived.

`behind(at)`: the wall clock reads more than `tolerance_s` before the floor. The daemon then flags
the event (`clock.behind`), fails every time-dependent check closed with reason `clock_behind`
and shows it on the status LED. `now(at)` is the best lower bound of the time (the later of the
clock and the floor): update expiry and list age are judged with it, so a clock set back does
not revive an expired list either.

Signed updates: `check_update` refuses an envelope past its expiry, or older (version or issue time)
than the newest one applied of its kind even when the kept-updates file was wiped; the same
message again (same version and issue time) is accepted, so that a terminal whose kept file was
lost takes the broker's retained copy back. `note_held` / `note_applied` record what the terminal
holds; `stale(at, max_list_age_h)` names the kinds that are past their expiry, older than the age
limit (trust, deny list), or lost (applied once, not held now).

The limit: everything here is on the SD card. Someone who can write the card can wipe the outbox
database too (and with it the undelivered events); that is a reflash, which the collector sees
(seq going back, the device silent) and which the first signed ack or retained update after
reconnecting bounds again. The floor is meant for a clock set back, or a lost kept-updates file.
"""

import logging
import threading
from datetime import UTC, datetime, timedelta

from chot.wire import SIGNED_KINDS, envelope_time
from device import clock

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_S = 300.0
AGED_KINDS = ("trust", "denylist")  # judged by age as well as by expiry


def _parse(text):
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if not isinstance(text, str):
        return None
    dt = envelope_time(text)
    if dt is not None:
        return dt
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _utc(at):
    if at is None:
        return datetime.now(UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class TimeFloor:
    """The floor of one terminal; `store` is its Outbox (or None: in memory only, for tools and tests)."""

    def __init__(self, store=None, tolerance_s=DEFAULT_TOLERANCE_S):
        self.store = store
        self.tolerance_s = float(tolerance_s)
        self._lock = threading.Lock()
        self._applied = {}  # kind -> {"version", "issued", "expires"}: the newest applied (durable)
        self._held = {}  # kind -> {"version", "issued", "expires"}: what this process uses now
        self._lowered = 0  # times a signed ack lowered the event floor (logged once, then at debug)
        if store is not None:
            for kind, rec in store.floor_rows().items():
                if kind in SIGNED_KINDS:
                    self._applied[kind] = rec

    # --- the floor ------------------------------------------------------------------------------

    def floor(self):
        """The floor (an aware datetime), or None when nothing bounds the time yet."""
        cands = []
        if self.store is not None:
            ev = self.store.event_floor
            if ev is not None:
                cands.append(ev)
        with self._lock:
            cands += [t for t in (_parse(r["issued"]) for r in self._applied.values()) if t is not None]
        ref = clock.get_ref()
        if ref is not None:
            t = _parse(ref["time"])
            elapsed = clock.mono_ns() - ref["mono_ns"]
            if t is not None and elapsed >= 0:
                cands.append(t + timedelta(microseconds=elapsed // 1000))
        return max(cands) if cands else None

    def behind(self, at):
        """True when the clock reading `at` is more than `tolerance_s` before the floor."""
        floor = self.floor()
        return floor is not None and _utc(at) < floor - timedelta(seconds=self.tolerance_s)

    def now(self, at=None):
        """The best lower bound of the time: the later of the clock reading `at` and the floor."""
        at = _utc(at)
        floor = self.floor()
        return max(at, floor) if floor is not None else at

    def note_collector_time(self, collector_time):
        """A signed ack's time: when it is far below the event floor, the events' times came from a
        clock that ran ahead (set forward, or a bad NTP answer); the collector's signed time wins."""
        t = _parse(collector_time)
        if t is None or self.store is None:
            return False
        ev = self.store.event_floor
        if ev is None or t >= ev - timedelta(seconds=self.tolerance_s):
            return False
        self._lowered += 1
        log.log(logging.WARNING if self._lowered == 1 else logging.DEBUG,
                "the collector's signed time %s is %.0f s before this terminal's latest event time %s: the clock "
                "ran ahead when those events were recorded (or the collector's runs late); time floor lowered to "
                "the collector's time", collector_time, (ev - t).total_seconds(), ev.isoformat())
        self.store.reset_event_floor(t)
        return True

    # --- signed updates -------------------------------------------------------------------------

    def check_update(self, kind, version, issued, expires, at=None):
        """None when a verified envelope may be applied, else (code, message): `expired` or `older`."""
        now = self.now(at)
        exp = _parse(expires)
        if exp is None or exp <= now:
            return "expired", (f"{kind} version {version} expired at {expires} (now at least "
                               f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')}): a replayed old message, or the collector "
                               "has not published a fresh one")
        with self._lock:
            rec = self._applied.get(kind)
        if rec is None:
            return None
        issued_at, rec_issued = _parse(issued), _parse(rec["issued"])
        older_issue = rec_issued is not None and (issued_at is None or issued_at < rec_issued)
        if version < (rec["version"] or 0) or older_issue or (version == rec["version"] and issued_at != rec_issued):
            return "older", (f"{kind} version {version} issued {issued} is older than version {rec['version']} "
                             f"issued {rec['issued']}, applied before (kept in the outbox's time floor)")
        return None

    def clear_held(self):
        """Forget what is held (a new UpdateStore loads its kept file and says again)."""
        with self._lock:
            self._held.clear()

    def note_held(self, kind, version, issued, expires):
        """The terminal now uses this update of `kind` (replayed from the kept file, or just applied)."""
        with self._lock:
            self._held[kind] = {"version": int(version), "issued": issued, "expires": expires}

    def note_applied(self, kind, version, issued, expires):
        """A newly applied update: held, and recorded durably as the newest of its kind."""
        self.note_held(kind, version, issued, expires)
        rec = {"version": int(version), "issued": issued, "expires": expires}
        with self._lock:
            old = self._applied.get(kind)
            if old is not None and (old["version"] or 0) > rec["version"]:
                return
            self._applied[kind] = rec
        if self.store is not None:
            self.store.save_floor(kind, rec["version"], issued, expires)

    def applied(self, kind):
        """{"version", "issued", "expires"} of the newest update of `kind` ever applied here, or None."""
        with self._lock:
            rec = self._applied.get(kind)
            return dict(rec) if rec is not None else None

    def lists(self):
        """{kind: {"version", "issued", "expires"}} of the signed updates the terminal holds."""
        with self._lock:
            return {k: dict(v) for k, v in sorted(self._held.items())}

    def stale(self, at=None, max_list_age_h=0.0):
        """The kinds that are stale at the clock reading `at`: past their expiry, lists (trust, deny list)
        issued more than `max_list_age_h` hours ago (0: no age limit), or applied once and not held now."""
        now = self.now(at)
        out = []
        with self._lock:
            held, applied = dict(self._held), dict(self._applied)
        for kind in ("trust", "denylist", "config"):
            h = held.get(kind)
            if h is None:
                if kind in applied:
                    out.append(kind)  # the kept update was lost: the terminal decides with less than it had
                continue
            exp, issued = _parse(h["expires"]), _parse(h["issued"])
            if exp is None or exp <= now:
                out.append(kind)
            elif (kind in AGED_KINDS and max_list_age_h and issued is not None
                  and now - issued > timedelta(hours=max_list_age_h)):
                out.append(kind)
        return out
