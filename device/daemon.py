"""The terminal daemon: wires scanner, credentials, outbox, feedback and uplink together.

The path of one scan: frame -> QR decode (or a handheld scanner's text) -> chunk assembly ->
cooldown -> verification -> policy (device/pipeline.py's ScanPipeline, shared with `chot scan`)
-> event committed to the outbox -> feedback on the pins -> the uplink is woken.
No feedback without a record: when the outbox cannot take the event the terminal fails
closed (fault signal, reason `outbox_full`, a log line saying why). The frame loop blocks
on nothing but the outbox commit; Feedback.signal switches the first pins itself (microseconds)
and its worker thread plays the rest of the pattern; the MQTT link runs in its own thread.

Personal data (docs/security.md): a Verification's person, person id and credential id exist
only in memory. Each event gets a uuid made here and its personal part sealed to the
collector's public key (`privacy.seal_public_key`, or a newer one from a signed config update)
with `chot.personal.Sealer`, which the terminal cannot open; the clear part holds only routing,
counting and fleet fields. Without a sealing key events carry no personal part at all (one
warning at start). Cooldowns keep only keyed hashes under a secret random per process. Logs,
the status and `decisions` never name anyone.

Time (device/timefloor.py): each clock reading is compared with the terminal's time floor, kept in
the outbox. A reading more than `policy.clock_floor_tolerance_s` before it is `behind`: the event
says so (`clock.behind`), time-dependent checks fail closed with `clock_behind` (the fault signal:
the terminal, not the person, is at fault) and the status LED shows `clock_behind`. Signed lists
past their expiry or older than `policy.max_list_age_h` make the terminal `stale` (status LED and
the retained status: `stale`, `lists`, `clock_behind`).

Paper at the gate (device/paper.py): a staff card (`CHOTSTAFF:`) makes no event; when valid it opens
a window in which the next unsigned identity claim is recorded with source `paper`, the staff
member sealed with the person.
"""

import logging
import signal
import threading
import time
import uuid as uuidlib
from datetime import UTC, datetime

from chot import __version__
from chot.errors import ChotError, OutboxError
from chot.personal import Sealer
from chot.staffcard import is_staff_text
from chot.wire import Format
from device.clock import clock_quality, utc_now_iso
from device.credentials.policy import Checker, Policy
from device.credentials.result import Decision, Verification
from device.paper import PaperGate, is_identity_claim
from device.pipeline import ScanPipeline
from device.scanner.texts import Scanned
from device.systemd import Notifier
from device.timefloor import TimeFloor

log = logging.getLogger(__name__)

# Reasons that get the "unreadable" pattern rather than the plain FAIL one.
UNREADABLE_REASONS = {"unreadable", "unsigned", "unknown_format", "incomplete", "format_not_accepted"}
# Reasons that are the terminal's own failure, not the person's: the fault signal.
FAULT_REASONS = {"outbox_full", "clock_behind"}
# Reasons that call the guard (an identity claim: a chip ID card, a PC-Covid code): the guard signal.
GUARD_REASONS = {"see_guard"}
TIME_CHECK_S = 30.0  # the run loop looks at the time floor and the lists' age this often
# Formats whose signature and issuer the terminal verifies: only these make a person's record.
SIGNED_FORMATS = frozenset({Format.NATIVE.value, Format.DCC.value, Format.SHC.value})
NO_SEAL_WARNING = ("privacy.seal_public_key is not set: events carry no personal part; "
                   "tracing cannot find these people")


def feedback_kind(decision):
    """Which feedback pattern a decision gets: pass, fail, unreadable, guard or fault."""
    if decision.passed:
        return "pass"
    if decision.reason in GUARD_REASONS:
        return "guard"
    if decision.reason in FAULT_REASONS:
        return "fault"
    if decision.reason in UNREADABLE_REASONS:
        return "unreadable"
    return "fail"


def make_sealer(cfg, public_raw=None):
    """The Sealer of `privacy.seal_public_key` (or of `public_raw`), or None when no key is configured.

    Raises KeyFileError when the configured file is missing or not a sealing public key.
    """
    privacy = getattr(cfg, "privacy", None)
    rotate = {
        "rotate_events": getattr(privacy, "seal_rotate_events", 1000),
        "rotate_s": getattr(privacy, "seal_rotate_s", 600.0),
    }
    if public_raw is not None:
        return Sealer(public_raw, **rotate)
    path = getattr(privacy, "seal_public_key", None)
    if not path:
        return None
    return Sealer.from_file(path, **rotate)


def is_verified(verification):
    """The event's `verified`: a signed credential whose signature and issuer verified here.

    The identity is then authentic even when the credential failed a later check (expired, a
    symptom declared, a revoked entry): the person's record is made, the decision says why not.
    """
    if verification is None or verification.format not in SIGNED_FORMATS:
        return False
    steps = verification.steps
    return steps.get("signature") is True and steps.get("issuer") is not False


class Terminal:
    """One checkpoint terminal. Parts may be passed in (tests, the demo); else built from `cfg`.

    `process_frame(frame)` handles one frame and returns the events it committed;
    `process_text(text, source)` handles one code's text (a handheld scanner's, or a frame's);
    `run()` loops over the frame or text source until it is exhausted or `stop()` is called.
    `sealer` (a chot.personal.Sealer) defaults to the one of `privacy.seal_public_key`.
    `on_decision(event, decision, verification)` is called after each decision (the demo prints
    them); `mono` is the monotonic clock of the scan pipeline (assembly, cooldowns).
    """

    def __init__(self, cfg, source=None, feedback=None, outbox=None, link=None, checker=None, now=None,
                 sealer=None, on_decision=None, mono=time.monotonic):
        self.cfg = cfg
        self._now = now or (lambda: datetime.now(UTC))
        # Decode, assembly, cooldown, verification and policy: the same path as `chot scan`. Its
        # checker (trusted issuers, the deny list, the policy rules) is replaced by collector updates.
        self.pipeline = ScanPipeline(cfg.scanner, checker if checker is not None else Checker.from_config(cfg.policy),
                                     mono=mono)
        # The sealing key of the config (KeyFileError when it is set but unusable: a terminal
        # does not run without the key it was given); a signed config update may replace it.
        self._configured_sealer = sealer if sealer is not None else make_sealer(cfg)
        self.sealer = self._configured_sealer
        if self.sealer is None:
            log.warning(NO_SEAL_WARNING)
        else:
            log.info("personal parts are sealed to the collector key %s", self.sealer.kid)
        self.source = source
        self.feedback = feedback
        self.outbox = outbox
        self.link = link
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the frame loop and the guard's button both record
        self.counts = {"PASS": 0, "FAIL": 0, "frames": 0, "faults": 0}
        self.last_scan = None
        self._faulted = False
        self._uplink_state = "ok"
        # The time floor (in the outbox when there is one): clock set back, lists too old.
        self.floor = getattr(outbox, "time_floor", None) or TimeFloor()
        self.floor.tolerance_s = float(getattr(cfg.policy, "clock_floor_tolerance_s", self.floor.tolerance_s))
        self._behind = False
        self._stale = []
        # (event or None, Decision, Verification) of the last 1000 decisions (tests look at them). The event has
        # no personal data in clear; the Verification holds it in memory only (never print it).
        self.decisions = []
        self.on_decision = on_decision  # optional callable(event, decision, verification)
        self.paper = PaperGate(cfg)  # staff cards and the paper window (device/paper.py)
        # The last "see the guard" event: (seq, uuid, format, monotonic time), confirmed by the button.
        self._awaiting_guard = None
        if self.feedback is not None and hasattr(self.feedback, "on_manual"):
            self.feedback.on_manual(self.press_button)

    # --- building from config -------------------------------------------------------------

    # The pipeline's parts, as the terminal's own (tests and the selftest look at them).
    checker = property(lambda self: self.pipeline.checker,
                       lambda self, checker: setattr(self.pipeline, "checker", checker))
    decoder = property(lambda self: self.pipeline.decoder)
    assembler = property(lambda self: self.pipeline.assembler)
    cooldown = property(lambda self: self.pipeline.cooldown)

    @classmethod
    def from_config(cls, cfg, source=None, on_decision=None, now=None):
        """Build every part from the config (the real daemon); `source` instead of `scanner.source`'s,
        `now` (a callable giving an aware datetime) instead of the wall clock."""
        from device.io.feedback import Feedback
        from device.io.pins import make_pin_factory
        from device.scanner.frames import open_source
        from device.uplink.outbox import Outbox

        sealer = make_sealer(cfg)  # before anything is opened: a bad key file stops here
        outbox = Outbox.from_config(cfg)
        try:
            feedback = Feedback(cfg.pins, cfg.feedback, pin_factory=make_pin_factory(cfg.pins.factory))
            source = source or open_source(cfg.scanner)
        except BaseException:
            outbox.close()
            raise
        term = cls(cfg, source=source, feedback=feedback, outbox=outbox, sealer=sealer, on_decision=on_decision,
                   now=now)
        if cfg.mqtt.enabled:
            from device.uplink.link import Link

            term.link = Link(
                cfg, outbox, on_update=term.apply_update, status_source=term.status, on_health=term.set_health
            )
        return term

    # --- one frame ------------------------------------------------------------------------

    def process_frame(self, frame):
        """Decode one frame and handle every credential in it; return the committed events."""
        self.counts["frames"] += 1
        events = []
        scan = self.pipeline.frame(frame.gray)
        if scan.damaged:  # a QR symbol in view that cannot be read, in 2 of the last 3 frames
            unreadable = Verification(text=None, format="unknown", steps={"decode": False}, reason="unreadable")
            event = self._record(Decision("FAIL", "unreadable"), unreadable, source="camera")
            events += [event] if event is not None else []
        for text in scan.texts:  # whole codes, not seen within the cooldown
            event = self._process_code(text, "camera", scan.t)
            if event is not None:
                events.append(event)
        return events

    def process_text(self, raw, source="camera", mono=None):
        """One code's text sent by a handheld scanner (or typed in): the same path as a decoded
        frame's text after the decode step (chunk assembly and cooldown in the pipeline, then staff
        cards and the paper window, verification, policy, outbox, feedback).

        Returns the committed event, or None (a part of a multi-QR code, seen within the cooldown,
        a staff card, or not recorded).
        """
        text = self.pipeline.text(raw, mono)
        if text is None:  # a part of a multi-QR code, or the same code within the cooldown
            return None
        return self._process_code(text, source, mono)

    def _process_code(self, text, source, mono):
        """A whole, new code: a staff card, a paper declaration in an open window, or a scan."""
        at, clock = self._clock_reading()
        if is_staff_text(text):  # a staff card: opens a paper window or is refused; no event
            self._signal_kind(self.paper.signal_of(self.paper.scan(text, at, clock, self.checker, self.sealer)))
            return None
        verification, decision = self.pipeline.check(text, at, clock_behind=bool(clock.get("behind")))
        card = self.paper.window.current()
        if card is not None and is_identity_claim(verification, is_verified(verification)):
            return self._record_paper(card, verification, at, clock)
        # The same person with another code within the cooldown (a claim never hides a credential).
        if self.pipeline.person_seen(verification.person_id, is_verified(verification), mono):
            return None
        return self._record(decision, verification, source=source, at=at, clock=clock)

    def process_scanned(self, scanned):
        """The texts a handheld scanner sent (a `device.scanner.texts.Scanned`); returns the committed events."""
        events = []
        for raw in scanned.texts:
            event = self.process_text(raw, source=scanned.source, mono=scanned.t)
            if event is not None:
                events.append(event)
        return events

    def _clock_reading(self):
        """One reading of the clock per decision: (UTC datetime, clock quality), for policy and event.

        The wall clock (`now`, injectable) and the monotonic clock with the collector's time anchor
        (`clock_quality()`: mono_ns and ref) are read together, once; the policy's `at`, the event's
        `time` and its `clock` all come from this reading.
        """
        at = self._now()
        clock = clock_quality()
        behind = self.floor.behind(at)
        if behind:
            clock = dict(clock, behind=True)
        if behind != self._behind:
            self._set_behind(behind, at)
        return at, clock

    def _set_behind(self, behind, at):
        self._behind = behind
        if behind:
            floor = self.floor.floor()
            log.error("the clock reads %s, before this terminal's time floor %s (set back, or lost at boot): events "
                      "are flagged and time checks fail closed (clock_behind) until it is right",
                      utc_now_iso(at), utc_now_iso(floor) if floor else "?")
        else:
            log.warning("the clock is no longer behind the time floor: time checks are back")
        self._show_status()

    def check_time(self, at=None):
        """Look at the time floor and the signed lists' age now: (behind, stale kinds); updates the status LED."""
        at = self._now() if at is None else at
        behind = self.floor.behind(at)
        if behind != self._behind:
            self._set_behind(behind, at)
        max_age = getattr(self.checker.policy.cfg, "max_list_age_h", 0.0)
        stale = self.floor.stale(at, max_age)
        if stale != self._stale:
            self._stale = stale
            if stale:
                log.error("signed lists are stale (%s): past their expiry or older than policy.max_list_age_h = %s h; "
                          "the collector must publish fresh ones", ", ".join(stale), max_age)
            else:
                log.warning("signed lists are fresh again")
            self._show_status()
        return behind, stale

    def _seal(self, uuid, verification, person_extra=None):
        """The sealed personal part of an event, or None (no person, or no sealing key).

        `person_extra`: fields added to the person's (a paper declaration's staff member)."""
        if verification is None or not (verification.person or verification.person_id):
            return None
        sealer = self.sealer
        if sealer is None:
            return None
        person = dict(verification.person, **person_extra) if person_extra else verification.person
        try:
            return sealer.seal(uuid, person, verification.person_id, verification.credential_id)
        except ValueError as exc:  # too large: the event is still recorded, without it (says no more)
            log.warning("personal part not sealed (%s): the event is recorded without it", exc)
            return None

    def _record(self, decision, verification, source, at=None, clock=None, person_extra=None, signal=None,
                fmt=None, refers_to=None):
        """Commit the event, then give feedback. Fails closed when the outbox cannot take it.

        `signal`: the feedback pattern when it is recorded (default: from the decision)."""
        if at is None:
            at, clock = self._clock_reading()
        uuid = str(uuidlib.uuid4())
        if fmt is None:
            fmt = verification.format if verification is not None else "none"
        fields = {
            "uuid": uuid,
            "checkpoint": self.cfg.device.checkpoint,
            "direction": self.cfg.device.direction,
            "time": utc_now_iso(at),
            "clock": clock,
            "source": source,
            "format": fmt,
            "decision": decision.decision,
            "reason": decision.reason,
            "verified": is_verified(verification),
            "sealed": self._seal(uuid, verification, person_extra),
        }
        if refers_to is not None:
            fields["refers_to"] = refers_to
        try:
            with self._lock:
                event = self.outbox.append(fields)
        except OutboxError as exc:
            # Never a pass without a record, never a silent drop: fault signal and a log line.
            self.counts["faults"] += 1
            log.error("event NOT recorded, failing closed (%s): %s", decision.decision, exc)
            decision = Decision("FAIL", "outbox_full")
            self._signal(decision)
            self._faulted = True
            self.set_health("fault")
            self._report(None, decision, verification)
            return None
        self.counts[decision.decision] += 1
        self.last_scan = fields["time"]
        if decision.reason in GUARD_REASONS:
            self._awaiting_guard = (event["seq"], event["uuid"], fmt, time.monotonic())
        elif decision.reason == "guard_confirmed" or source == "camera":
            self._awaiting_guard = None  # confirmed, or the next person is at the terminal
        if self._faulted:  # the outbox takes events again
            self._faulted = False
            self.set_health(self._uplink_state)
        if signal is not None:
            self._signal_kind(signal)
        else:
            self._signal(decision)
        log.info("seq %d %s %s (%s)", event["seq"], decision.decision, decision.reason, fields["format"])
        if self.link is not None:
            self.link.wake()
        self._report(event, decision, verification)
        return event

    def _signal(self, decision):
        self._signal_kind(feedback_kind(decision))

    def _signal_kind(self, kind):
        if self.feedback is not None:
            self.feedback.signal(kind)

    def _report(self, event, decision, verification):
        self.decisions.append((event, decision, verification))
        if len(self.decisions) > 1000:
            del self.decisions[0]
        if self.on_decision is not None:
            self.on_decision(event, decision, verification)

    def _record_paper(self, card, verification, at, clock):
        """A paper declaration in the open window of staff card `card`: source `paper`, the staff sealed."""
        self.paper.window.close()  # one card scan, one declaration (even when the outbox refuses it)
        fmt = verification.format
        event = self._record(Policy.manual(), verification, source="paper", at=at, clock=clock,
                             person_extra=self.paper.staff_fields(card), signal="paper")
        if event is not None:
            log.warning("paper declaration seq %d (%s) taken with staff card %s", event["seq"], fmt, card.id_hex)
        return event

    def record_manual(self):
        """The guard's button: a person checked on paper passes, recorded with source `manual`."""
        return self._record(Policy.manual(), None, source="manual")

    def press_button(self):
        """The guard's button. Within `policy.guard_window_s` of a "see the guard" event (an ID card,
        a PC-Covid code) it records the guard's confirmation: its own event (source `manual`, the
        first event's format, PASS `guard_confirmed`, no personal part) whose `refers_to` names the
        first by seq and uuid; events stay immutable. Otherwise a manual pass (`record_manual`)."""
        with self._lock:
            waiting, self._awaiting_guard = self._awaiting_guard, None
        window = float(getattr(self.checker.policy.cfg, "guard_window_s", 120.0))
        if waiting is None or time.monotonic() - waiting[3] > window:
            return self.record_manual()
        seq, uuid, fmt, _ = waiting
        log.info("the guard confirmed event seq %d", seq)
        return self._record(Policy.guard_confirmed(), None, source="manual", fmt=fmt,
                            refers_to={"seq": seq, "uuid": uuid})

    # --- updates from the collector -------------------------------------------------------

    def apply_update(self, kind, body, version):
        """Apply a verified update from the collector (deny list, trusted issuers, config).

        A `config` update may carry a new sealing public key ({"privacy": {"seal_public_key":
        "<seal.pub text>"}}): new events are sealed to it. A config update without one goes back
        to the configured key. A body that does not fit raises and changes nothing.
        """
        from device.update_apply import apply_update, config_seal_key

        checker = apply_update(self.cfg, self.checker, kind, body, version)
        if kind == "config":
            seal = config_seal_key(body, version)
            if seal is None:
                sealer = self._configured_sealer
            elif self.sealer is not None and self.sealer.kid == seal[0]:
                sealer = self.sealer
            else:
                sealer = make_sealer(self.cfg, public_raw=seal[1])
            if sealer is not self.sealer:
                log.warning("config version %s: personal parts are now sealed to the collector key %s",
                            version, sealer.kid if sealer is not None else "(none: no personal part)")
            self.sealer = sealer
        self.checker = checker
        self.floor.tolerance_s = float(getattr(checker.policy.cfg, "clock_floor_tolerance_s", self.floor.tolerance_s))

    # --- status for the uplink ------------------------------------------------------------

    def status(self):
        """The terminal's part of the retained status (the link adds the outbox figures)."""
        behind, stale = self.check_time()
        return {
            "version": __version__,
            "clock_synced": clock_quality()["synced"],
            "last_scan": self.last_scan,
            "passes": self.counts["PASS"],
            "fails": self.counts["FAIL"],
            "clock_behind": behind,
            "stale": stale,
            "lists": self.floor.lists(),
        }

    def set_health(self, state):
        """The uplink's health (`ok`, `uplink_down`) or `fault`; the status LED shows the worst state."""
        if state in ("ok", "uplink_down"):
            self._uplink_state = state
        self._show_status()

    def status_state(self):
        """The status LED's state: `fault` (outbox cannot record), then `clock_behind`, `uplink_down`, `stale`, `ok`."""
        if self._faulted:
            return "fault"
        if self._behind:
            return "clock_behind"
        if self._uplink_state == "uplink_down":
            return "uplink_down"
        return "stale" if self._stale else "ok"

    def _show_status(self):
        if self.feedback is not None:
            self.feedback.set_status(self.status_state())

    # --- the loop -------------------------------------------------------------------------

    def stop(self, *_):
        self._stop.set()

    def run(self, max_frames=None):
        """Loop over frames until the source is exhausted, `max_frames`, or `stop()`."""
        if self.link is not None:
            self.link.start()
        self.set_health("ok")
        next_time_check = time.monotonic() + TIME_CHECK_S  # each decision reads the clock against the floor too
        self.notifier.ready(f"scanning at {self.cfg.device.checkpoint} ({self.cfg.device.direction})")
        n = 0
        while not self._stop.is_set():
            frame = self.source.read()
            if frame is None:
                break
            try:
                if isinstance(frame, Scanned):  # a handheld scanner's texts: no frame to decode
                    self.process_scanned(frame)
                else:
                    self.process_frame(frame)
            except ChotError as exc:
                log.error("frame skipped: %s", exc)
            if time.monotonic() >= next_time_check:
                next_time_check = time.monotonic() + TIME_CHECK_S
                self.check_time()
            self.notifier.watchdog()
            n += 1
            if max_frames is not None and n >= max_frames:
                break
        return n

    def close(self):
        """Release the camera, stop the uplink, close the outbox and the pins."""
        self.notifier.stopping()
        for part in (self.source, self.link, self.feedback, self.outbox):
            if part is None:
                continue
            try:
                part.close()
            except Exception as exc:  # closing must go on for the other parts
                log.warning("closing %s: %s", type(part).__name__, exc)
        self.notifier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_from_config(path, max_frames=None):
    """`chot terminal run`: load the config, run until SIGTERM (or the source ends)."""
    from device.config import load_terminal_config

    cfg = load_terminal_config(path, world=True)
    term = Terminal.from_config(cfg)
    signal.signal(signal.SIGTERM, term.stop)
    signal.signal(signal.SIGINT, term.stop)
    log.warning(
        "terminal %s started at %s (%s), decoder %s, source %s",
        cfg.device.id, cfg.device.checkpoint, cfg.device.direction, cfg.scanner.decoder, cfg.scanner.source,
    )
    with term:
        frames = term.run(max_frames=max_frames)
    log.warning("terminal stopped after %d frames: %d pass, %d fail, %d faults",
                frames, term.counts["PASS"], term.counts["FAIL"], term.counts["faults"])
    return 0
