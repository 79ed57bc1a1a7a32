"""One scan pipeline: from a frame (or a typed text) to verified, policy-checked credentials.

The daemon (device/daemon.py) and `chot scan` (device/scan_cli.py) both go through
`ScanPipeline`, so a photo gives the same answer in both:

    image file --load_image--> grey frame        (EXIF orientation, alpha on white, the frame size)
    grey frame --decoder--> QR texts             (device/scanner/decode.py's make_decoder)
               --damaged-code tracking-->        (a symbol seen but not read in 2 of the last 3 frames)
    QR texts   --ChunkAssembler--> whole codes   (multi-part codes: SHC's shc:/N/M/..., the same in both)
               --Cooldown--> new codes           (the same code again within cooldown_s: ignored)
    a code     --Checker.check--> (Verification, Decision)   (verification + policy)

What happens next is the caller's: the daemon records the event in the outbox, gives feedback
and wakes the uplink; `chot scan` prints a JSON line. The camera path hands in arrays
(`frame(gray)`), files go through `image(path)`; `text(t)` takes a text that came as text.
One monotonic clock (`mono`, injectable) times the assembly and the cooldowns.
"""

import time
from dataclasses import dataclass, field

from device.cooldown import Cooldown
from device.credentials.formats import ChunkAssembler
from device.scanner.decode import make_decoder
from device.scanner.frames import cfg_get, load_image

DAMAGED_KEY = "damaged-code"


@dataclass
class FrameScan:
    """What one frame gave: `texts` the whole, new codes to check (in order), `decoded` how many QR
    texts the decoder read (parts included), `damaged` True when a damaged code is to be reported
    now, `t` the monotonic reading the frame was handled at."""

    texts: list = field(default_factory=list)
    decoded: int = 0
    damaged: bool = False
    t: float = 0.0


class ScanPipeline:
    """Decode, damaged-code tracking, assembly, cooldown, verification and policy, without pins or outbox.

    `checker` (device.credentials.policy.Checker) may be replaced at any time (signed updates).
    `cooldown_s` defaults to `scanner.cooldown_s`; 0 keeps nothing back (`chot scan`).
    `still`: the frames are still images, each on its own (`chot scan` of files; see the decoder).
    """

    def __init__(self, scanner_cfg, checker, cooldown_s=None, mono=time.monotonic, still=False):
        self.scanner_cfg = scanner_cfg
        self.decoder = make_decoder(scanner_cfg, still=still)
        self.assembler = ChunkAssembler(timeout_s=cfg_get(scanner_cfg, "chunk_timeout_s"))
        self.cooldown = Cooldown(cfg_get(scanner_cfg, "cooldown_s") if cooldown_s is None else cooldown_s)
        self.checker = checker
        self.mono = mono
        self._damaged = 0  # the last 3 frames: bit set where a QR symbol was seen but not read

    # --- input --------------------------------------------------------------------------------

    def image(self, path):
        """An image file as the frame the terminal would decode (HardwareError when unreadable)."""
        return load_image(path, cfg_get(self.scanner_cfg, "width"), cfg_get(self.scanner_cfg, "height"))

    def frame(self, gray):
        """Decode one grey frame; the whole, new codes in it and whether a damaged code is to be reported."""
        scan = self.decoder.scan(gray)
        now = self.mono()
        out = FrameScan(decoded=len(scan.texts), t=now)
        # A damaged code: a QR symbol in view that cannot be read, in 2 of the last 3 frames.
        self._damaged = (self._damaged << 1 | (not scan.texts and scan.unreadable > 0)) & 0b111
        if not scan.texts:
            out.damaged = self._damaged.bit_count() >= 2 and not self.cooldown.seen(DAMAGED_KEY, now)
            return out
        for raw in scan.texts:
            text = self.text(raw, now)
            if text is not None:
                out.texts.append(text)
        return out

    def text(self, raw, now=None):
        """A QR text (from a frame or typed in): the whole code when it is new, None while parts of a
        multi-part code are missing or when the same code was seen within the cooldown."""
        now = self.mono() if now is None else now
        text = self.assembler.feed(raw, now)
        if text is None or self.cooldown.seen("t:" + text, now):
            return None
        return text

    # --- verification -------------------------------------------------------------------------

    def check(self, text, at, clock_behind=False):
        """(Verification, Decision) of a whole code at the instant `at` (verification and policy)."""
        return self.checker.check(text, at, clock_behind=clock_behind)

    def person_seen(self, person_id, verified, now=None):
        """True when this person showed a code of the same kind (verified or not) within the cooldown.

        A verified credential and an unverified claim of the same person are kept apart: a claim
        never hides a credential."""
        if not person_id:
            return False
        now = self.mono() if now is None else now
        return self.cooldown.seen(f"p:{int(bool(verified))}:{person_id}", now)

    def pending_formats(self):
        """Formats of multi-part codes with parts still missing."""
        return self.assembler.pending_formats()

    def close(self):
        self.decoder.close()
