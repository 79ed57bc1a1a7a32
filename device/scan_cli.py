"""`chot scan`: run image files or QR texts through the terminal's decoder, verification and policy.

The same scan pipeline as the daemon (device/pipeline.py): the same image loader (EXIF
orientation, transparency on white, scaled down to the config's `scanner.width` x `height` as
the files source does), decoder, multi-part assembly, verification and policy. Only the cooldown
is off: every file and text gets its line.

Prints one JSON object per line, one per credential found, with the stable keys documented
in docs/scan-output.md: source, text, format, steps, decision, reason, kind, person, detail. An image
with no code gives one line with `text` null and reason `no_code`. Exit status 0 when it
ran, whatever the decisions; 2 on a usage error (unreadable file, bad --at).

Nothing about the person is printed beyond whether the credential names one and whether it
verified (`person: {"present", "verified"}`): no name, ID number, initials or hash of them.
(`text` echoes the QR text given, which the technician already holds.)
"""

import json
import sys
from datetime import UTC, datetime

from chot.config import validate
from chot.errors import ChotError, HardwareError
from device.config import SCHEMA, load_terminal_config

SCAN_KEYS = ("source", "text", "format", "steps", "decision", "reason", "kind", "person", "detail")
NO_PERSON = {"present": False, "verified": False}
STILL_MAX_SIDE = 2560  # a photo with no code read at the camera's frame size is decoded again up to this


def register(sub):
    p = sub.add_parser(
        "scan",
        help="check QR images or texts as a terminal would (JSON lines)",
        description="Check QR images or texts through the terminal's decoder, verification and policy. "
        "Prints one JSON object per credential (keys: " + ", ".join(SCAN_KEYS) + ").",
    )
    p.add_argument("files", nargs="*", help="image files (PNG, JPEG, WebP)")
    p.add_argument("--text", action="append", default=[], help="a QR text to check (repeatable)")
    p.add_argument("--at", help="evaluate at this instant (ISO 8601) instead of now")
    p.add_argument(
        "--trust", action="append", default=[],
        help="issuer public key, certificate (DER/PEM), DCC trust list or jwks.json to trust (repeatable)",
    )
    p.add_argument("--config", "-c", help="terminal config whose decoder and policy to use")
    p.set_defaults(func=_scan)


class UsageError(ChotError):
    exit_code = 2


def parse_at(text):
    """An ISO 8601 instant; naive times are taken as UTC."""
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--at {text!r}: not an ISO 8601 time (e.g. 2021-08-20T08:00:00+07:00)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def scan_config(path):
    if path:
        return load_terminal_config(path)
    return validate({"device": {"id": "scan", "checkpoint": "scan", "direction": "in"}}, SCHEMA, "<defaults>")


def load_photo(path):
    """An image file as grey pixels at its own size (device/scanner/frames.py's load_gray: EXIF
    orientation, alpha on white), or raise UsageError saying why."""
    from pathlib import Path

    from device.scanner.frames import load_gray

    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return load_gray(path)
    except HardwareError as exc:
        raise UsageError(f"{path}: not an image this tool reads (PNG, JPEG, WebP): {exc}") from None


def camera_frame(photo, cfg=None):
    """`photo` as the terminal of `cfg` would see it: scaled down to its frame size (load_image's way)."""
    from device.scanner.frames import cfg_get, fit_within

    scanner = getattr(cfg, "scanner", None)
    return fit_within(photo, cfg_get(scanner, "width"), cfg_get(scanner, "height"))


def load_grey(path, cfg=None):
    """Read an image file as the terminal of `cfg` would see it (EXIF orientation, alpha on white,
    scaled down to the frame size), or raise UsageError saying why."""
    return camera_frame(load_photo(path), cfg)


def shown_steps(steps):
    """The steps as `chot scan` shows them: every step after the first failed one is null (not reached).

    A reader may run checks past a failure (the DCC reader runs all its checks once decoded, for
    the conformance tally); the output keeps the documented meaning: the first false is the one
    that decided, nothing after it counts.
    """
    out, failed = {}, False
    for name, value in steps.items():
        out[name] = None if failed else value
        failed = failed or value is False
    return out


class Scanner:
    """The terminal's scan pipeline (device/pipeline.py) without pins, outbox or camera, and no cooldown."""

    def __init__(self, cfg, extra_trust=(), at=None):
        from device.credentials.policy import Checker
        from device.pipeline import ScanPipeline

        self.cfg = cfg
        self.pipeline = ScanPipeline(cfg.scanner, Checker.from_config(cfg.policy, extra_trust=extra_trust),
                                     cooldown_s=0.0, still=True)  # each file on its own: every decoder step
        self.at = at

    def check_text(self, text, source):
        from device.daemon import is_verified

        v, d = self.pipeline.check(text, self.at or datetime.now(UTC))
        return {
            "source": source,
            "text": text,
            "format": v.format,
            "steps": shown_steps(v.steps),
            "decision": d.decision,
            "reason": d.reason,
            "kind": v.kind,
            "person": {"present": bool(v.person or v.person_id), "verified": is_verified(v)},
            "detail": v.detail,
        }

    def check_image(self, path):
        from device.scanner.frames import fit_within

        photo = load_photo(path)  # read once: the camera's frame and the photo's own size come from it
        grey = camera_frame(photo, self.cfg)
        scan = self.pipeline.frame(grey)
        if not scan.decoded:
            # A photo larger than the camera's frame (a technician's phone photo of a card): the code
            # may be too small once scaled down; the photo itself, up to STILL_MAX_SIDE, is tried too.
            full = fit_within(photo, STILL_MAX_SIDE, STILL_MAX_SIDE)
            if full.shape[0] > grey.shape[0] or full.shape[1] > grey.shape[1]:
                scan = self.pipeline.frame(full)
        if not scan.decoded:
            return [self.no_code(str(path))]
        return [self.check_text(text, str(path)) for text in scan.texts]

    def leftovers(self, source):
        """Parts of multi-QR codes that never completed: one `incomplete` line."""
        return [{
            "source": source, "text": None, "format": name, "steps": {"decode": False},
            "decision": "FAIL", "reason": "incomplete", "kind": None, "person": dict(NO_PERSON),
            "detail": "parts of a code split over several QR symbols are missing",
        } for name in self.pipeline.pending_formats()]

    @staticmethod
    def no_code(source):
        return {
            "source": source, "text": None, "format": "unknown", "steps": {"decode": False},
            "decision": "FAIL", "reason": "no_code", "kind": None, "person": dict(NO_PERSON),
            "detail": None,
        }


def _scan(args):
    if not args.files and not args.text:
        print("chot scan: give image FILES and/or --text TEXT (see chot scan --help)", file=sys.stderr)
        return 2
    cfg = scan_config(args.config)
    scanner = Scanner(cfg, extra_trust=args.trust, at=parse_at(args.at) if args.at else None)
    status = 0
    for path in args.files:
        try:
            lines = scanner.check_image(path)
        except UsageError as exc:
            print(f"chot scan: {exc}", file=sys.stderr)
            status = 2
            continue
        for line in lines:
            print(json.dumps(line, ensure_ascii=False, sort_keys=False), flush=True)
    for line in scanner.leftovers(args.files[-1] if args.files else "-"):
        print(json.dumps(line, ensure_ascii=False), flush=True)
    for text in args.text:
        print(json.dumps(scanner.check_text(text, "-"), ensure_ascii=False), flush=True)
    return status
