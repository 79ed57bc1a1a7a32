"""QR decoding behind one interface: zxing-cpp (the default) and pyzbar, both restricted to QR.

`Decoder.decode(gray)` takes a grey frame (numpy uint8, H x W) and returns the texts of every
QR code in it, in the order found, without duplicates. It never raises on a bad frame: an
empty, odd-shaped or corrupt frame gives an empty list (and a debug log line).

Every decoder is restricted to QR codes: with other formats on, real photos give false reads
(a 1D "barcode" in a brick wall) and decoding is 5 to 10 times slower.

`ZxingDecoder` runs zxing-cpp once with its defaults (any rotation, inverted codes, downscaled
copies of large frames). Only when that finds nothing does it run a second pass, bounded in
time: the frame with another binarizer and upscaled, which reads some blurred or low-contrast
photos the first pass misses. Each step starts only while the budget lasts, so an idle camera
(every frame empty) costs a few milliseconds per frame, not more.

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

# Second-pass steps of ZxingDecoder: (scale, binarizer name), cheapest first. Tuned on the
# ZXing black-box photos and on hard synthetic frames: a global-histogram binarizer reads
# evenly lit blurred prints that the local-average one breaks up, and upscaling by 2 gives the
# detector more pixels per module on small codes. On an empty 640x480 frame the three steps
# cost about 3 ms here (with OpenCV for the resize).
SECOND_PASS_STEPS = (
    (1.0, "GlobalHistogram"),
    (2.0, "LocalAverage"),
    (2.0, "GlobalHistogram"),
)
MAX_UPSCALED_PIXELS = 1280 * 960  # upscale less (or not at all) past this: the cost grows with the area
MIN_UPSCALE = 1.2


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
    """zxing-cpp restricted to QR, with a second pass, bounded in time, on frames where it found nothing."""

    name = "zxing"

    def __init__(self, second_pass=True, second_pass_budget_ms=15.0, steps=SECOND_PASS_STEPS):
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
        self.steps = tuple((float(s), getattr(zxingcpp.Binarizer, b)) for s, b in steps)
        # imported now, not inside the first second pass, whose time budget it would eat
        self._cv2 = _cv2() if self.second_pass else None
        if self.second_pass and self._cv2 is None:
            from PIL import Image  # noqa: F401

    def _read(self, gray, binarizer=None, return_errors=False):
        kw = {"formats": self._format, "text_mode": self._plain, "return_errors": return_errors}
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

    def _split(self, barcodes):
        """(texts of the valid codes, number of distinct places holding a QR symbol that failed)."""
        texts, bad = [], []
        for b in barcodes:
            if b.valid:
                texts.append(self._text(b))
                continue
            try:
                pts = [(p.x, p.y) for p in (b.position.top_left, b.position.top_right, b.position.bottom_left)]
            except Exception:  # noqa: BLE001
                bad.append((float(len(bad)) * 1e6, 0.0, 0.0))
                continue
            cx = (pts[1][0] + pts[2][0]) / 2
            cy = (pts[1][1] + pts[2][1]) / 2
            r = math.dist(pts[0], pts[1]) / 2
            # one symbol reported twice (inverted, another corner guess) counts once
            if not any(math.dist((cx, cy), (x, y)) < max(r, q) for x, y, q in bad):
                bad.append((cx, cy, r))
        return texts, len(bad)

    def _scan(self, gray):
        texts, bad = self._split(self._read(gray, return_errors=True))
        if texts or not self.second_pass or self.budget_s <= 0:
            return Scan(_unique(texts), bad)
        start = time.perf_counter()
        area = gray.shape[0] * gray.shape[1]
        scaled = {1.0: gray}
        for scale, binarizer in self.steps:
            if time.perf_counter() - start >= self.budget_s:
                break
            if scale > 1.0 and scale * scale * area > MAX_UPSCALED_PIXELS:
                scale = round(math.sqrt(MAX_UPSCALED_PIXELS / area), 2)
                if scale < MIN_UPSCALE:
                    continue
            img = scaled.get(scale)
            if img is None:
                img = scaled[scale] = _resize(gray, scale, self._cv2)
            found = [self._text(b) for b in self._read(img, binarizer)]
            if found:
                return Scan(_unique(found), 0)
        return Scan([], bad)


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


def make_decoder(scanner_cfg):
    """The decoder the [scanner] config section asks for (keys decoder, second_pass, second_pass_budget_ms)."""
    from device.scanner.frames import cfg_get

    name = cfg_get(scanner_cfg, "decoder")
    if name == "zxing":
        return ZxingDecoder(
            second_pass=cfg_get(scanner_cfg, "second_pass"),
            second_pass_budget_ms=cfg_get(scanner_cfg, "second_pass_budget_ms"),
        )
    if name == "pyzbar":
        return PyzbarDecoder()
    raise HardwareError(f"unknown decoder {name!r}: set scanner.decoder to 'zxing' or 'pyzbar'")
