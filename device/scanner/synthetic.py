"""A synthetic crowd: camera-like grey frames of people walking up with a QR code, for tests and the demo.

Not part of the terminal: no production module imports it (tests/test_layering.py). The demo and
the tests plug it in as `scanner.source = "synthetic"` (chotdemo/crowd.py).

`SyntheticCrowd(texts)` is a `FrameSource`. For each QR text (given by the caller: the
daemon makes signed declarations; the scanner knows nothing of credentials) a person walks
up and holds a phone or a card in front of the camera for a few frames; between people come
empty frames. Each frame is rendered like a cheap camera would see it: a scene in the
background, the code drawn by segno on a screen with a dark bezel, turned and seen at an
angle (perspective), varying in size and contrast, blurred, with a glare spot, exposure
changes and sensor noise. Everything is drawn from one seeded random generator, so the same
seed and texts give the same frames.

A crowd item is a text (str) or a `Person`: `Person(text, garble=True)` renders the code
damaged beyond repair (a scratched or cracked screen), `Person(None)` walks up with no code,
`Person(("a", "b"))` holds up two codes at once.

`render_qr_frame(text, rng, width, height, difficulty)` draws one frame and is reused by tests.
A 640x480 frame takes a few milliseconds (numpy and Pillow only).
"""

import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from device.scanner.source import Frame, FrameSource

log = logging.getLogger(__name__)

QUIET = 4  # quiet zone, modules
BEZEL = 3  # phone bezel around the quiet zone, modules
MIN_MODULE_PX = 2.6  # smaller modules than this are not drawn (no camera would resolve them)


@dataclass(frozen=True)
class Person:
    """One member of the crowd: the QR text(s) they show (None: no code) and whether the code is garbled."""

    text: str | tuple | None
    garble: bool = False
    difficulty: float | None = None  # None: drawn at random per person

    @property
    def texts(self):
        if self.text is None:
            return ()
        return (self.text,) if isinstance(self.text, str) else tuple(self.text)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


@lru_cache(maxsize=128)
def qr_modules(text):
    """The module matrix of `text` as a QR code (bool, True = dark), with its quiet zone."""
    import segno

    qr = segno.make(text, micro=False)
    n = len(qr.matrix)
    m = np.frombuffer(b"".join(bytes(r) for r in qr.matrix), dtype=np.uint8).reshape(n, n) != 0
    m = np.pad(m, QUIET, constant_values=False)
    m.setflags(write=False)
    return m


def garbled(modules, rng, fraction=0.4):
    """`modules` damaged beyond repair: the finder patterns kept (so a decoder sees a QR code),
    about `fraction` of the other modules flipped (far past what error correction repairs)."""
    m = modules.copy()
    n = m.shape[0] - 2 * QUIET
    keep = np.zeros_like(m)
    q, f = QUIET, 8  # finder pattern + separator
    keep[q : q + f, q : q + f] = True
    keep[q : q + f, q + n - f : q + n] = True
    keep[q + n - f : q + n, q : q + f] = True
    inside = np.zeros_like(m)
    inside[q : q + n, q : q + n] = True
    flip = (rng.random(m.shape) < fraction) & inside & ~keep
    m[flip] = ~m[flip]
    return m


def _perspective_coeffs(dst, src):
    """PIL PERSPECTIVE coefficients mapping output points `dst` to input points `src` (4 each)."""
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    return np.linalg.solve(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).tolist()


def _background(rng, width, height):
    """A blurry scene: low-frequency brightness variation, as behind a person at a gate."""
    small = rng.uniform(40, 200, size=(4, 5)).astype(np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


@dataclass
class _Look:
    """How one code appears in a frame (drawn once per person, drifting a little per frame)."""

    cx: float
    cy: float
    side: float  # pixels across the code including its quiet zone
    angle: float  # degrees
    jitter: np.ndarray  # perspective: corner offsets as fractions of the side, 4 x 2
    light: float
    dark: float
    bezel: float


def _draw_look(rng, modules, width, height, difficulty, slot=(0.0, 1.0)):
    n = modules.shape[0]
    d = float(np.clip(difficulty, 0.0, 1.0))
    x0, x1 = slot[0] * width, slot[1] * width
    room = min(x1 - x0, height)
    angle = float(rng.normal(0.0, 6 + 20 * d))
    if rng.random() < 0.15 * d:
        angle += float(rng.choice([90.0, 180.0, 270.0]))  # phone held sideways or upside down
    turn = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
    bez = (n + 2 * BEZEL) / n
    max_side = 0.92 * room / (turn * bez * (1 + 0.2 * d))
    min_side = min(max_side, n * MIN_MODULE_PX * (1.25 - 0.35 * d))
    side = float(rng.uniform(min_side, max(min_side, max_side * (1.0 - 0.35 * d))))
    half = side * turn * bez / 2
    cx = float(rng.uniform(x0 + half, max(x0 + half, x1 - half))) if x1 - x0 > 2 * half else (x0 + x1) / 2
    cy = float(rng.uniform(half, max(half, height - half))) if height > 2 * half else height / 2
    jitter = rng.normal(0.0, 0.012 + 0.05 * d, size=(4, 2))
    light = float(rng.uniform(170 - 60 * d, 250))
    contrast = float(rng.uniform(150 - 100 * d, 230 - 120 * d))
    dark = max(0.0, light - contrast)
    bezel = float(rng.uniform(10, 60))
    return _Look(cx, cy, side, angle, jitter, light, dark, bezel)


def _paste(canvas, modules, look, scale=1.0, shift=(0.0, 0.0)):
    """Draw the code (with bezel) onto `canvas` (float32 H x W) as `look` says, in place.

    Returns the box (x0, y0, x1, y1) drawn into; only that box is warped and blended.
    """
    height, width = canvas.shape
    n = modules.shape[0]
    side = look.side * scale
    k = max(1, math.ceil(side / n))  # source pixels per module: downsampled by the warp, never up
    src_n = n + 2 * BEZEL
    tile = np.full((src_n, src_n), look.bezel, dtype=np.float32)
    tile[BEZEL : BEZEL + n, BEZEL : BEZEL + n] = np.where(modules, look.dark, look.light)
    tile = np.clip(tile, 0, 255).astype(np.uint8)
    la = np.stack([tile, np.full_like(tile, 255)], axis=-1)
    s = src_n * k
    tile_img = Image.fromarray(la, "LA").resize((s, s), Image.NEAREST)
    full = side * src_n / n
    th = math.radians(look.angle)
    c, si = math.cos(th), math.sin(th)
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64) * 0.5 + look.jitter
    cx, cy = look.cx + shift[0], look.cy + shift[1]
    dst = np.array([(cx + full * (x * c - y * si), cy + full * (x * si + y * c)) for x, y in corners])
    x0, y0 = (max(0, int(math.floor(v)) - 1) for v in dst.min(axis=0))
    x1, y1 = min(width, int(math.ceil(dst[:, 0].max())) + 1), min(height, int(math.ceil(dst[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return (0, 0, 0, 0)
    coeffs = _perspective_coeffs(dst - (x0, y0), [(0, 0), (s, 0), (s, s), (0, s)])
    warped = np.asarray(tile_img.transform((x1 - x0, y1 - y0), Image.PERSPECTIVE, coeffs, Image.BILINEAR))
    a = warped[:, :, 1].astype(np.float32) * (1.0 / 255.0)
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - a
    region += warped[:, :, 0] * a
    return (x0, y0, x1, y1)


@lru_cache(maxsize=4)
def _noise_bank(height, width):
    """Unit Gaussian noise larger than a frame, made once; frames take shifted crops of it."""
    g = np.random.default_rng(12345)
    return g.standard_normal((height + 64, width + 64), dtype=np.float32)


def _finish(rng, canvas, difficulty, module_px, box=None):
    """Camera effects on a float32 canvas, in place: glare, exposure, blur (of `box`), noise; returns uint8."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    height, width = canvas.shape
    if rng.random() < 0.3 + 0.6 * d:  # glare: a bright blob from a lamp on the screen
        gx = np.exp(-(((np.arange(width, dtype=np.float32) - rng.uniform(0, width)) / rng.uniform(20, 90)) ** 2))
        gy = np.exp(-(((np.arange(height, dtype=np.float32) - rng.uniform(0, height)) / rng.uniform(20, 90)) ** 2))
        gy *= float(rng.uniform(30, 40 + 110 * d))
        canvas += gy[:, None] * gx[None, :]
    blur = float(rng.uniform(0.0, 0.15 + 0.35 * d)) * module_px
    if box is not None and blur >= 0.3:  # the scene is blurry already: blur only where the code is
        pad = int(3 * blur) + 2
        x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
        x1, y1 = min(width, box[2] + pad), min(height, box[3] + pad)
        if x1 > x0 and y1 > y0:
            crop = Image.fromarray(np.clip(canvas[y0:y1, x0:x1], 0, 255).astype(np.uint8))
            canvas[y0:y1, x0:x1] = np.asarray(crop.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    sigma = float(rng.uniform(1.5, 3.0 + 9.0 * d))
    oy, ox = (int(v) for v in rng.integers(0, 64, size=2))
    canvas += _noise_bank(height, width)[oy : oy + height, ox : ox + width] * sigma
    gain = float(rng.uniform(0.8, 1.15))
    canvas *= gain
    canvas += float(rng.uniform(-15, 15))
    np.clip(canvas, 0, 255, out=canvas)
    return canvas.astype(np.uint8)


def _union(a, b):
    if a is None:
        return b
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def render_empty_frame(rng, width=640, height=480):
    """A frame with nobody and no code: the scene, exposure changes and noise."""
    rng = _rng(rng)
    return _finish(rng, _background(rng, width, height), 0.3, 3.0)


def render_qr_frame(text, rng, width=640, height=480, difficulty=0.5, garble=False):
    """One camera-like grey frame (numpy uint8 H x W) showing the QR code of `text`.

    `text` is a str, or a sequence of str for several codes side by side. `rng` is a numpy
    Generator (or a seed). `difficulty` from 0 (large, sharp, contrasted, upright) to 1 (small,
    blurred, tilted, low contrast, glare, noisy). `garble=True` damages the code beyond repair.
    """
    rng = _rng(rng)
    texts = [text] if isinstance(text, str) else list(text)
    canvas = _background(rng, width, height)
    module_px, box = 3.0, None
    for i, t in enumerate(texts):
        modules = qr_modules(t)
        if garble:
            modules = garbled(modules, rng)
        slot = (i / len(texts), (i + 1) / len(texts))
        look = _draw_look(rng, modules, width, height, difficulty, slot)
        box = _union(box, _paste(canvas, modules, look))
        module_px = look.side / modules.shape[0]
    return _finish(rng, canvas, difficulty, module_px, box)


class SyntheticCrowd(FrameSource):
    """People walking up to the camera, one after another, each showing a QR code for a few frames.

    `texts`: an iterable (possibly lazy, possibly endless) of QR texts or `Person`s. Between
    people, and after the last, come `empty_frames` (min, max) frames with nobody; each person
    stays `frames_per_person` (min, max) frames, coming a little closer and moving. The frame
    name says what it shows: "person-<i>" (i counts from 0 over `texts`) or "empty".
    `read()` returns None once `texts` is exhausted.
    """

    def __init__(
        self,
        texts,
        seed=1,
        width=640,
        height=480,
        empty_frames=(2, 6),
        frames_per_person=(3, 8),
        difficulty=(0.0, 1.0),
    ):
        self._texts = iter(texts)
        self.rng = np.random.default_rng(seed)
        self.width, self.height = int(width), int(height)
        self.empty_frames = tuple(empty_frames)
        self.frames_per_person = tuple(frames_per_person)
        self.difficulty = tuple(difficulty)
        self.person = None  # the Person in front of the camera, or None
        self.index = -1  # index of the current or last person in `texts`
        self._gap = self._draw(self.empty_frames)
        self._left = 0
        self._done = False
        self._closed = False
        self._scene = _background(self.rng, self.width, self.height)

    def _draw(self, span):
        lo, hi = int(span[0]), int(span[1])
        return int(self.rng.integers(lo, hi + 1)) if hi > lo else lo

    def _next_person(self):
        try:
            item = next(self._texts)
        except StopIteration:
            return False
        person = item if isinstance(item, Person) else Person(item)
        self.index += 1
        self.person = person
        diff = person.difficulty
        if diff is None:
            diff = float(self.rng.uniform(*self.difficulty))
        self._diff = diff
        self._total = max(1, self._draw(self.frames_per_person))
        self._left = self._total
        self._codes = []
        texts = person.texts
        for i, t in enumerate(texts):
            modules = qr_modules(t)
            if person.garble:
                modules = garbled(modules, self.rng)
            look = _draw_look(self.rng, modules, self.width, self.height, diff, (i / len(texts), (i + 1) / len(texts)))
            self._codes.append((modules, look))
        self._drift = self.rng.normal(0, 3, size=2)
        self._scene = _background(self.rng, self.width, self.height)
        return True

    def _person_frame(self):
        k = self._total - self._left  # 0 .. total-1
        canvas = self._scene.copy()
        module_px, box = 3.0, None
        for modules, look in self._codes:
            scale = 0.9 + 0.15 * k / max(1, self._total - 1)  # coming closer
            shift = self._drift * k + self.rng.normal(0, 1.5, size=2)
            box = _union(box, _paste(canvas, modules, look, scale=scale, shift=(float(shift[0]), float(shift[1]))))
            module_px = look.side * scale / modules.shape[0]
        self._left -= 1
        return _finish(self.rng, canvas, self._diff, module_px, box)

    def read(self):
        if self._closed or self._done:
            return None
        if self._left > 0:
            gray = self._person_frame()
            return Frame(gray, time.monotonic(), f"person-{self.index}")
        if self._gap > 0:
            self._gap -= 1
            self.person = None
            gray = _finish(self.rng, self._scene.copy(), 0.3, 3.0)
            return Frame(gray, time.monotonic(), "empty")
        if not self._next_person():
            self._done = True
            self.person = None
            return None
        self._gap = self._draw(self.empty_frames)
        return self.read()

    def close(self):
        self._closed = True
