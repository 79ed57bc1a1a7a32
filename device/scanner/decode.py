"""QR decoding behind one interface: zxing-cpp (the default) and pyzbar, both restricted to QR.

`Decoder.decode(gray)` takes a grey frame (numpy uint8, H x W) and returns the texts of every
QR code in it, in the order found, without duplicates. It never raises on a bad frame: an
empty, odd-shaped or corrupt frame gives an empty list (and a debug log line).

Every decoder is restricted to QR codes: with other formats on, real photos give false reads
(a 1D "barcode" in a brick wall) and decoding is 5 to 10 times slower.

`ZxingDecoder` runs zxing-cpp once with its defaults (any rotation, inverted codes, downscaled
copies of large frames), asking it also for the symbols it found but could not read. What
happens next depends on what that first pass saw:

- a code read: done (most frames with a code);
- a QR symbol seen but not read (zxing-cpp located it, then error correction failed: a blurred,
  curved, distant or grainy code): the gated rescue works on that symbol's region: the region cut
  out and upscaled, with either binarizer, or sharpened; the symbol's quad re-sampled square (its
  perspective undone) at a few sizes; and once per frame the whole frame smoothed (a grainy frame).
  Within `second_pass_budget_ms` per frame; the first step tried turns from frame to frame, so a
  code held in view for a few frames meets every step;
- nothing seen (most empty frames): cheap blind looks (a half-size copy with either binarizer),
  then one dearer step in turn (the global-histogram binarizer at full size, upscaled copies).
  They are paid from a credit each frame adds (BLIND_SHARE of the first pass, costs fixed and
  measured here), so on average an idle camera costs at most 1.4 times the first pass alone,
  and the same frames always give the same reads. A symbol one of them sees goes to the rescue.

A still image (`still=True`: `chot scan` of image files) is one frame, not a stream: no later
frame brings the steps this one had no credit or budget for. So every blind look (inverted codes
too), every blind step and, when none saw a symbol, the frame smoothed run on it, within
STILL_BUDGET_MS, and the result depends on the image alone, never on the images before it.

Zero false reads: every text returned is one zxing-cpp decoded with its error correction
passing; nothing is guessed or pieced together.

Texts: zxing-cpp in TextMode.Plain decodes the bytes per the code's ECI, or else guesses the
character set (UTF-8, Shift_JIS, GB2312, ISO-8859-1) as ZXing does; `Barcode.text` is used, not
`Barcode.bytes` (raw, undecoded) and not the default TextMode.HRI (which writes control
characters as "<SOH>"). pyzbar returns zbar's UTF-8 conversion; it is decoded as UTF-8, falling
back to ISO-8859-1 so no byte is lost.
"""

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from chot.errors import HardwareError

log = logging.getLogger(__name__)

# Rescue steps of ZxingDecoder. Costs are estimates relative to the first pass on the same frame
# (zxing-cpp's default read, which also tries inverted and downscaled copies), measured on empty
# 640x480 and 1280x720 camera frames here (resize included) and rounded up; being fixed, they make
# the blind-step budget deterministic: the same frames give the same reads on any machine.
#
# Blind looks: cheap, on every frame where the first pass saw nothing at all. A half-size copy
# joins the modules of a code photographed too close or through a screen's pixel grid; the global-
# histogram binarizer reads evenly lit blurred prints that the local-average one breaks up.
# (binarizer, scale, cost)
BLIND_LOOKS = (
    ("GlobalHistogram", 0.5, 0.06),
    ("LocalAverage", 0.5, 0.1),
)
# Blind steps in turn: one per empty frame, paid from the credit that frames save (BLIND_SHARE),
# so a code held in view for half a second meets several of them. Upscaling the whole frame gives
# the detector more pixels per module on small or distant codes but is too dear for every frame.
# (A 2x global-histogram upscale, 2.4 first passes, read nothing more on the photos or the phone
# benchmark and pushed the idle cost past 1.5x: left out.)
BLIND_TURNS = (
    ("GlobalHistogram", 1.0, 0.3),
    ("LocalAverage", 1.5, 0.8),
    ("GlobalHistogram", 1.0, 0.3),
    ("GlobalHistogram", 1.5, 1.0),
)
# Blind steps cost, on average, at most this share of the first pass: the credit each frame adds.
BLIND_SHARE = 0.4
# the most credit saved: enough for the looks and the dearest step in turn on one frame (~6 frames' worth)
CREDIT_CAP = sum(c for _b, _s, c in BLIND_LOOKS) + max(c for _b, _s, c in BLIND_TURNS) + BLIND_SHARE
STILL_BUDGET_MS = 400.0  # a still image (chot scan of a file): every step, within this
# and then, on a still image only, larger upscales (a small or distant code): (binarizer, scale, cost)
STILL_LOOKS = (("LocalAverage", 2.0, 0.0), ("GlobalHistogram", 2.0, 0.0), ("LocalAverage", 3.0, 0.0))
MAX_UPSCALED_PIXELS = 1280 * 960  # upscale less (or not at all) past this: the cost grows with the area
MIN_UPSCALE = 1.2
MARGIN = 0.25  # of the symbol's side, kept around it when a region is cut out or re-sampled
WARP_SIDES = (1.0, 2.0, 0.6)  # perspective re-sampling: the symbol's side times these, clamped
MIN_WARP, MAX_WARP = 120, 480
SMOOTH_KERNEL = (5, 5)  # the rescue's whole-frame smoothing of a grainy frame (Gaussian)


@dataclass
class Scan:
    """What one frame gave: the texts read and the number of QR symbols seen but not readable.

    `unreadable` is an estimate (one damaged symbol may count twice); > 0 with no texts means
    a QR code was in view but damaged or too poor to read: the daemon may answer with the
    "unreadable" signal. pyzbar cannot tell, so it always gives 0.
    """

    texts: list = field(default_factory=list)
    unreadable: int = 0


def _as_gray(gray):
    """A C-contiguous uint8 H x W array, or None when `gray` cannot be one."""
    try:
        a = np.asarray(gray)
    except Exception:  # noqa: BLE001 - a bad frame is not an error
        return None
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2 or a.shape[0] < 8 or a.shape[1] < 8:
        return None
    if a.dtype != np.uint8:
        if a.dtype.kind not in "uif":
            return None
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _add_place(places, quad):
    """Add `quad` to `places` unless it is one already there: one symbol reported twice (inverted,
    another corner guess) counts once. A symbol without a position (None) always counts."""
    if quad is None or not any(q is not None and _same_place(quad, q) for q in places):
        places.append(quad)


def _fit_upscale(scale, area):
    """`scale` for a frame of `area` pixels, an upscale lowered to stay within MAX_UPSCALED_PIXELS;
    None when that leaves less than MIN_UPSCALE (the step does not apply to frames this large)."""
    if scale > 1.0 and scale * scale * area > MAX_UPSCALED_PIXELS:
        scale = round(math.sqrt(MAX_UPSCALED_PIXELS / area), 2)
        if scale < MIN_UPSCALE:
            return None
    return scale


def _same_place(a, b):
    """Whether two symbol quads lie on the same spot (their centres closer than half a side)."""
    r = max(float(np.linalg.norm(a[0] - a[1])), float(np.linalg.norm(b[0] - b[1]))) / 2
    return float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))) < r


def _area(quad):
    x, y = quad[:, 0].astype(float), quad[:, 1].astype(float)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _sane(quad, shape):
    """Whether a symbol's corners make a region worth re-reading: inside the frame (give or take a
    little), not degenerate (convex, and an area of at least 21 x 21 pixels: the smallest QR code
    has 21 modules a side, and a module under a pixel cannot be read)."""
    h, w = shape
    if not np.isfinite(quad).all():
        return False
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    if lo[0] < -w * 0.1 or lo[1] < -h * 0.1 or hi[0] > w * 1.1 or hi[1] > h * 1.1:
        return False
    if _area(quad) < 21 * 21:
        return False
    edges = np.roll(quad, -1, axis=0) - quad
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    return bool((cross > 0).all() or (cross < 0).all())


def _unique(texts):
    seen = set()
    out = []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _cv2():
    """OpenCV when installed (an optional extra), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _resize(gray, scale, cv2=None):
    """`gray` scaled by `scale`, bilinear: through OpenCV when given (8 times faster), else Pillow."""
    h, w = gray.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if cv2 is not None:
        return cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR)
    from PIL import Image

    return np.asarray(Image.fromarray(gray).resize(size, Image.BILINEAR))


class Decoder:
    """Base class: `decode(gray) -> list[str]`, all QR codes in a grey frame."""

    name = "decoder"

    def decode(self, gray):
        """The texts of every QR code in `gray` (numpy uint8 H x W); [] on a bad frame."""
        return self.scan(gray).texts

    def scan(self, gray):
        """Like `decode`, as a `Scan` that also counts symbols seen but not readable."""
        a = _as_gray(gray)
        if a is None:
            log.debug("%s: not a grey frame, skipped", self.name)
            return Scan()
        try:
            return self._scan(a)
        except Exception as exc:  # noqa: BLE001 - never let one frame stop the loop
            log.debug("%s: frame not decoded: %s", self.name, exc)
            return Scan()

    def _scan(self, gray):
        raise NotImplementedError

    def close(self):
        """Release what the decoder holds (nothing, for the decoders here)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class ZxingDecoder(Decoder):
    """zxing-cpp restricted to QR, with rescue steps gated on what the first pass saw.

    `second_pass` turns the rescue (gated and blind) on; `second_pass_budget_ms` bounds the
    time rescue steps take on one frame (a step starts only while the budget lasts).
    """

    name = "zxing"

    def __init__(self, second_pass=True, second_pass_budget_ms=8.0, still=False):
        try:
            import zxingcpp
        except ImportError as exc:
            raise HardwareError(
                "zxing-cpp is not installed: run `.venv/bin/pip install zxing-cpp` or choose scanner.decoder = 'pyzbar'"
            ) from exc
        self._z = zxingcpp
        self._format = zxingcpp.BarcodeFormat.QRCode
        self._plain = zxingcpp.TextMode.Plain
        self.second_pass = bool(second_pass)
        self.budget_s = max(0.0, float(second_pass_budget_ms)) / 1000.0
        self.still = bool(still)
        if self.still and self.second_pass:
            self.budget_s = max(self.budget_s, STILL_BUDGET_MS / 1000.0)
        self._bin = {n: getattr(zxingcpp.Binarizer, n) for n in ("GlobalHistogram", "LocalAverage")}
        # imported now, not inside the first rescue, whose time budget it would eat
        self._cv2 = _cv2() if self.second_pass else None
        if self.second_pass and self._cv2 is None:
            from PIL import Image  # noqa: F401
        # the rotation state: which blind step in turn and which region step come next, and the credit
        self._next_turn = 0
        self._next_region = 0
        self._smoothed = None  # the frame already read smoothed (`_read_smoothed`: once per frame)
        self._credit = CREDIT_CAP
        # frames read by each path, and the blind steps' estimated cost (in first passes) and count
        self.stats = {"first": 0, "gated": 0, "blind": 0, "turn": 0, "blind_cost": 0.0, "blind_steps": 0}

    def _read(self, gray, binarizer=None, return_errors=False, **kw):
        kw.update(formats=self._format, text_mode=self._plain, return_errors=return_errors)
        if binarizer is not None:
            kw["binarizer"] = binarizer
        return self._z.read_barcodes(gray, **kw)

    @staticmethod
    def _text(barcode):
        text = barcode.text
        if not text and barcode.bytes:
            raw = bytes(barcode.bytes)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
        return text

    @staticmethod
    def _quad(barcode, scale=1.0):
        """The symbol's four corners (top-left, top-right, bottom-right, bottom-left) in frame pixels."""
        pos = barcode.position
        pts = (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
        return np.array([(p.x / scale, p.y / scale) for p in pts], dtype=np.float32)

    def _split(self, barcodes, scale=1.0):
        """(texts of the valid codes, [quad of each distinct place holding a QR symbol that failed])."""
        texts, bad = [], []
        for b in barcodes:
            if b.valid:
                texts.append(self._text(b))
                continue
            try:
                quad = self._quad(b, scale)
            except Exception:  # noqa: BLE001 - a symbol without a position still counts as seen
                quad = None
            _add_place(bad, quad)
        return texts, bad

    def _scan(self, gray):
        texts, bad = self._split(self._read(gray, return_errors=True))
        if texts:
            self._save_credit()
            self.stats["first"] += 1
            return Scan(_unique(texts), len(bad))
        if not self.second_pass or self.budget_s <= 0:
            return Scan([], len(bad))
        deadline = time.perf_counter() + self.budget_s
        self._smoothed = None
        if not bad:
            texts, bad = self._blind_still(gray, deadline) if self.still else self._blind(gray, deadline)
            if texts:
                return Scan(_unique(texts), 0)
        else:
            self._save_credit()
        if bad:
            texts = self._rescue(gray, bad, deadline)
            if texts:
                self.stats["gated"] += 1
                return Scan(_unique(texts), 0)
        return Scan([], len(bad))

    def _save_credit(self):
        self._credit = min(CREDIT_CAP, self._credit + BLIND_SHARE)

    def _spend(self, cost):
        self._credit -= cost
        self.stats["blind_cost"] += cost
        self.stats["blind_steps"] += 1

    def _blind(self, gray, deadline):
        """Cheap looks at a frame where nothing was seen, then one upscale in turn if the credit allows.

        Returns (texts, failed symbols seen by these looks); stops at the first look that reads
        or sees a symbol (the gated rescue takes over).
        """
        self._save_credit()
        area = gray.shape[0] * gray.shape[1]
        scaled = {1.0: gray}
        for binarizer, scale, cost in BLIND_LOOKS:
            if self._credit < cost or time.perf_counter() >= deadline:
                return [], []
            self._spend(cost)
            texts, bad = self._look(gray, scaled, scale, binarizer)
            if texts:
                self.stats["blind"] += 1
            if texts or bad:
                return texts, bad
        for _ in range(len(BLIND_TURNS)):  # the next step in turn that applies to this frame size
            binarizer, wanted, cost = BLIND_TURNS[self._next_turn]
            scale = _fit_upscale(wanted, area)
            if scale is None:
                self._next_turn = (self._next_turn + 1) % len(BLIND_TURNS)
                continue
            cost *= (scale / wanted) ** 2
            break
        else:
            return [], []
        if self._credit < cost or time.perf_counter() >= deadline:
            return [], []  # not yet: this step waits for the credit of the next frames
        self._spend(cost)
        self._next_turn = (self._next_turn + 1) % len(BLIND_TURNS)
        texts, bad = self._look(gray, scaled, scale, binarizer)
        if texts:
            self.stats["turn"] += 1
        return texts, bad

    def _blind_still(self, gray, deadline):
        """`_blind` for a still image: every look and every step that applies to its size, in order,
        inverted codes too, until one reads; no credit (there is no next frame). Returns (texts, the
        symbols the looks saw but did not read), for the gated rescue."""
        area = gray.shape[0] * gray.shape[1]
        scaled = {1.0: gray}
        seen = []
        for binarizer, wanted, _cost in (*BLIND_LOOKS, *BLIND_TURNS, *STILL_LOOKS):
            scale = _fit_upscale(wanted, area)
            if scale is None:
                continue
            if time.perf_counter() >= deadline:
                break
            texts, bad = self._look(gray, scaled, scale, binarizer, invert=True)
            if texts:
                self.stats["blind"] += 1
                return texts, []
            for quad in bad:
                _add_place(seen, quad)
        if not seen and self._cv2 is not None and time.perf_counter() < deadline:
            texts, seen = self._smoothed_look(gray)
            if texts:
                self.stats["blind"] += 1
                return texts, []
        return [], seen

    def _smoothed_look(self, gray):
        """A still image's last look, when no other saw a symbol: the whole frame smoothed (noise can hide a
        symbol from every look). Not on a camera, where it would cost every empty frame. (texts, seen)."""
        return self._split(self._read_smoothed(gray, return_errors=True))

    def _read_smoothed(self, gray, return_errors=False):
        """The whole frame smoothed (Gaussian, SMOOTH_KERNEL) and read as the first pass reads; remembered,
        so that the rescue does not read the same frame smoothed again."""
        self._smoothed = gray
        return self._read(self._cv2.GaussianBlur(gray, SMOOTH_KERNEL, 0), return_errors=return_errors)

    def _look(self, gray, scaled, scale, binarizer, invert=None):
        img = scaled.get(scale)
        if img is None:
            img = scaled[scale] = _resize(gray, scale, self._cv2)
        found = self._read(img, self._bin[binarizer], return_errors=True, try_downscale=False,
                           try_invert=scale == 1.0 if invert is None else invert)
        return self._split(found, scale)

    def _rescue(self, gray, bad, deadline):
        """Expensive steps on the region of each symbol seen but not read, in turn from frame to frame.

        The first step tried is the one after the last this decoder tried (on a slow machine the
        budget may stop a frame after a step or two: the next frame goes on from there).
        """
        steps = self._region_steps()
        n = len(steps)
        quads = sorted((q for q in bad if q is not None and _sane(q, gray.shape)), key=_area, reverse=True)
        for quad in quads[:2]:  # the two largest: a crowd of damaged symbols is not one person's code
            for _ in range(n):
                if time.perf_counter() >= deadline:
                    return []
                step = steps[self._next_region]
                self._next_region = (self._next_region + 1) % n
                try:
                    texts = step(gray, quad)
                except Exception as exc:  # noqa: BLE001 - a failed step is a step that read nothing
                    log.debug("rescue step failed: %s", exc)
                    texts = []
                if texts:
                    return texts
        return []

    def _region_steps(self):
        """The steps on a symbol's region, most fruitful first (counted on the public photos made
        worse and on the phone-screen benchmark): crops upscaled, then the quad re-sampled square.

        Not among them: OpenCV's `QRCodeDetector.decode` given zxing-cpp's corners read none of 48
        such symbols here, and its `decodeCurved` twice killed the process with heap corruption
        ("malloc(): ... corrupted"), which on a terminal would stop the scanner.
        """
        steps = [
            lambda g, q: self._crop_read(g, q, "LocalAverage", 2.0),
            lambda g, q: self._crop_read(g, q, "GlobalHistogram", 1.0),
        ]
        if self._cv2 is not None:
            steps += [self._smooth_read,
                      lambda g, q: self._warp_read(g, q, WARP_SIDES[1]),
                      lambda g, q: self._sharp_read(g, q),
                      lambda g, q: self._warp_read(g, q, WARP_SIDES[0])]
        steps.append(lambda g, q: self._crop_read(g, q, "GlobalHistogram", 2.0))
        if self._cv2 is not None:
            steps.append(lambda g, q: self._warp_read(g, q, WARP_SIDES[2]))
        return steps

    def _smooth_read(self, gray, quad):
        """The whole frame smoothed (Gaussian, 5 x 5) and read as the first pass reads: a grainy frame
        (a dim gate at night, a cheap sensor) whose noise breaks the modules up. Once per frame,
        whichever symbol asked for it (`quad` is not used): on the public photos with sensor-like
        noise added, smoothing the symbol's region alone read 2 of 11 where the whole frame read 12."""
        if self._smoothed is gray:  # read smoothed already on this frame (a still image's last look)
            return []
        return [self._text(b) for b in self._read_smoothed(gray)]

    @staticmethod
    def _box(gray, quad):
        """(x0, y0, x1, y1, side): the symbol's bounding box with a margin, inside the frame, and its longest side."""
        h, w = gray.shape
        side = max(float(np.linalg.norm(quad[i] - quad[(i + 1) % 4])) for i in range(4))
        m = side * MARGIN
        x0, y0 = np.floor(quad.min(axis=0) - m).astype(int)
        x1, y1 = np.ceil(quad.max(axis=0) + m).astype(int)
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1), side

    def _crop_read(self, gray, quad, binarizer, scale):
        x0, y0, x1, y1, side = self._box(gray, quad)
        if x1 - x0 < 16 or y1 - y0 < 16:
            return []
        crop = np.ascontiguousarray(gray[y0:y1, x0:x1])
        if scale * scale * crop.size > MAX_UPSCALED_PIXELS:
            scale = max(1.0, round(math.sqrt(MAX_UPSCALED_PIXELS / crop.size), 2))
        if scale != 1.0:
            crop = _resize(crop, scale, self._cv2)
        return [self._text(b) for b in self._read(crop, self._bin[binarizer], try_downscale=scale == 1.0)]

    def _sharp_read(self, gray, quad, scale=2.0, amount=1.5):
        """The region upscaled (bicubic) and sharpened (unsharp mask): a defocused or shaken code."""
        cv2 = self._cv2
        x0, y0, x1, y1, _side = self._box(gray, quad)
        if x1 - x0 < 16 or y1 - y0 < 16:
            return []
        crop = gray[y0:y1, x0:x1].astype(np.float32)
        if scale * scale * crop.size > MAX_UPSCALED_PIXELS:
            scale = max(1.0, math.sqrt(MAX_UPSCALED_PIXELS / crop.size))
        if scale != 1.0:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        blurred = cv2.GaussianBlur(crop, (0, 0), scale)
        sharp = np.clip(crop + amount * (crop - blurred), 0, 255).astype(np.uint8)
        return [self._text(b) for b in self._read(sharp, try_downscale=False)]

    def _warp_read(self, gray, quad, factor):
        """The symbol re-sampled square (its perspective undone) at a side of `factor` times its own."""
        cv2 = self._cv2
        side = max(float(np.linalg.norm(quad[i] - quad[(i + 1) % 4])) for i in range(4))
        n = int(min(MAX_WARP, max(MIN_WARP, side * factor)))
        m = int(round(n * MARGIN))
        dst = np.array([(m, m), (m + n, m), (m + n, m + n), (m, m + n)], dtype=np.float32)
        h = cv2.getPerspectiveTransform(quad, dst)
        img = cv2.warpPerspective(gray, h, (n + 2 * m, n + 2 * m), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
        found = self._read(img, try_downscale=False, try_rotate=False)
        if not found:
            found = self._read(img, self._bin["GlobalHistogram"], try_downscale=False, try_rotate=False)
        return [self._text(b) for b in found]


class PyzbarDecoder(Decoder):
    """pyzbar (zbar) restricted to QR."""

    name = "pyzbar"

    def __init__(self):
        try:
            from pyzbar import pyzbar
        except ImportError as exc:
            if "zbar" in str(exc).lower() and "pyzbar" not in str(exc).lower():
                raise HardwareError(
                    "the zbar library is missing: run `sudo apt install libzbar0` (or choose scanner.decoder = 'zxing')"
                ) from exc
            raise HardwareError(
                f"pyzbar cannot be loaded ({exc}): run `sudo apt install libzbar0` and "
                "`.venv/bin/pip install pyzbar` (or choose scanner.decoder = 'zxing')"
            ) from exc
        except OSError as exc:
            raise HardwareError(
                f"the zbar library cannot be loaded ({exc}): run `sudo apt install libzbar0` "
                "(or choose scanner.decoder = 'zxing')"
            ) from exc
        self._pyzbar = pyzbar
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]

    @staticmethod
    def _text(data):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")

    def _scan(self, gray):
        found = self._pyzbar.decode(gray, symbols=self._symbols)
        return Scan(_unique(self._text(s.data) for s in found), 0)


def make_decoder(scanner_cfg, still=False):
    """The decoder the [scanner] config section asks for (keys decoder, second_pass, second_pass_budget_ms);
    `still`: for still images, one frame each (`chot scan` of files), not a camera's stream."""
    from device.scanner.frames import cfg_get

    name = cfg_get(scanner_cfg, "decoder")
    if name == "zxing":
        return ZxingDecoder(
            second_pass=cfg_get(scanner_cfg, "second_pass"),
            second_pass_budget_ms=cfg_get(scanner_cfg, "second_pass_budget_ms"),
            still=still,
        )
    if name == "pyzbar":
        return PyzbarDecoder()
    raise HardwareError(f"unknown decoder {name!r}: set scanner.decoder to 'zxing' or 'pyzbar'")
