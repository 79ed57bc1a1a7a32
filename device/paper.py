"""Paper at the gate, offline: a staff card opens a short window for one paper declaration.

A staff member scans their card (chot/staffcard.py, signed by the collector). When it is valid
for this terminal's checkpoint (signature with the pinned `mqtt.collector_public_key`, not
revoked by the deny list, the clock not behind its time floor, not expired) the terminal plays the
`staff` signal and opens a window of `policy.paper_window_s` seconds. The next identity claim read
in it (an ID card's QR, a plain ID number, a typed or scanned text the terminal parses into a
person: anything unsigned that names someone) is recorded as a paper declaration: source `paper`,
decision PASS, reason `manual`, verified False, and the staff member (card id and name) sealed
with the person in the event's personal part. The `paper` signal plays. The window closes after
that one declaration or at its timeout; the per-code cooldown still applies. Signed credentials
read during the window take their normal path (they prove more than paper) and leave it open.

A refused card plays the `fail` signal (`fault` when the terminal is at fault: its clock is behind
its floor, or no collector key is pinned) and never opens a window; the log line names the card id
and the reason, never the name. Nothing here needs the network: the event goes through the
outbox and reaches the collector exactly once when the uplink is back.
"""

import logging
import time
from dataclasses import dataclass

from chot.staffcard import StaffCardError, StaffReason, read_card

log = logging.getLogger(__name__)

FAULT_STAFF_REASONS = {StaffReason.CLOCK_BEHIND, StaffReason.NO_KEY, StaffReason.NO_SEAL_KEY,
                       StaffReason.DISABLED}
SIGNED_FORMATS = frozenset({"native", "dcc", "shc"})


@dataclass(frozen=True)
class StaffScan:
    """One staff card scan as the terminal saw it (no name): accepted or the reason why not."""

    accepted: bool
    reason: str
    card_id: str | None = None


def is_identity_claim(verification, verified):
    """An unsigned text that names a person: what a paper window records (not a verified credential)."""
    return (verification is not None and not verified and bool(verification.person_id)
            and verification.format not in SIGNED_FORMATS)


class PaperWindow:
    """The open paper window: at most one, from one card scan, until one declaration or `seconds`."""

    def __init__(self, mono=time.monotonic):
        self._mono = mono
        self._card = None
        self._until = 0.0

    def open(self, card, seconds):
        self._card = card
        self._until = self._mono() + float(seconds)

    def current(self):
        """The card of the open window, or None (closing it when its time is over)."""
        if self._card is not None and self._mono() >= self._until:
            log.info("paper window of staff card %s closed: timeout, no declaration", self._card.id_hex)
            self._card = None
        return self._card

    def close(self):
        self._card = None


class PaperGate:
    """Staff cards and the paper window of one terminal (the daemon owns one)."""

    def __init__(self, cfg, mono=time.monotonic):
        self.cfg = cfg
        self.window = PaperWindow(mono)
        self._key = None
        self._key_error = None
        self.scans = []  # StaffScan of the last 100 card scans (tests, the demo)

    def _public_key(self):
        """The pinned collector public key (cached), or None when none is pinned or it cannot be read."""
        if self._key is None and self._key_error is None:
            path = getattr(getattr(self.cfg, "mqtt", None), "collector_public_key", None)
            if not path:
                self._key_error = "no mqtt.collector_public_key"
            else:
                from device.uplink.updates import load_public_key

                try:
                    self._key = load_public_key(path)
                except Exception as exc:  # UplinkError saying what to fix
                    self._key_error = str(exc)
                    log.error("staff cards cannot be checked: %s", exc)
        return self._key

    def scan(self, text, at, clock, checker, sealer):
        """Check a staff card text; open the window when it is valid. Returns a StaffScan."""
        window_s = float(getattr(checker.policy.cfg, "paper_window_s", 60.0))
        card_id = None
        try:
            if window_s <= 0:
                raise StaffCardError(StaffReason.DISABLED, "paper declarations are disabled here "
                                     "(policy.paper_window_s = 0)")
            card = read_card(text, self._public_key(), at, self.cfg.device.checkpoint,
                             is_revoked=checker.policy.denylist.is_revoked, clock_behind=bool(clock.get("behind")),
                             skew_s=getattr(checker.policy.cfg, "clock_skew_s", 300.0))
            card_id = card.id_hex
            if sealer is None:
                raise StaffCardError(StaffReason.NO_SEAL_KEY, "privacy.seal_public_key is not set: a paper "
                                     "declaration could not record who it is and who took it; set the key")
        except StaffCardError as exc:
            scan = StaffScan(False, exc.reason.value, card_id)
            log.warning("staff card refused (%s): %s", exc.reason.value, exc)
        else:
            self.window.open(card, window_s)
            scan = StaffScan(True, StaffReason.OK.value, card.id_hex)
            log.warning("staff card %s accepted: paper window open for %g s", card.id_hex, window_s)
        self.scans.append(scan)
        del self.scans[:-100]
        return scan

    @staticmethod
    def signal_of(scan):
        if scan.accepted:
            return "staff"
        return "fault" if scan.reason in FAULT_STAFF_REASONS else "fail"

    @staticmethod
    def staff_fields(card):
        """What the sealed personal part of a paper declaration adds to the person: who took it."""
        return {"paper": True, "kind": "declaration", "staff_card": card.id_hex, "staff_name": card.name}
