"""Synthetic phone-screen benchmark: a declaration QR on a phone, photographed badly, read by each decoder.

The QR text is the input (any text; the native declaration's in the benchmark), so the same
bench measures the current native QR and a smaller one by length alone. The code is drawn by
segno (error correction M, as `chot issue` does) on a phone screen of about 6 cm: modules of
whole screen pixels at ~400 ppi, a white margin and a dark bezel. The "photograph" is a
640x480 grey camera frame: the screen seen at a distance (its size in the frame), turned,
tilted (perspective), then defocus or motion blur, moiré (a sinusoidal interference between
the screen's pixel grid and the sensor's), glare (a bright gaussian blob over the code) and
sensor noise, each condition alone at a few strengths. Every image comes from a seeded
generator: the same arguments give the same frames.

    `phone_table(texts, decoders, conditions, per_condition)` -> {(size, condition, decoder): (read, false, total)}

The texts are seeded base45 strings of the native QR's lengths (`size_texts`): the old
declaration (372 characters, QR version 12) and the compact one (200, version 8), so that the
images do not change with each signature; a text's length and alphabet fix its QR version, and
that, not the content, is what the camera struggles with.

A read is the exact text; a false read is any other text (there must be none).
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

SCREEN_PPI = 400  # a typical phone screen
SCREEN_CM = 6.0  # the width of the code's area on the screen, margin included
CODE_PX = 300  # the screen's width in a 640x480 frame, held at arm's length (about 20 cm)
FRAME = (640, 480)
OLD_LENGTH = 372  # the native declaration QR text before issue 14 (`chot issue`: QR version 12 at EC M)
NEW_LENGTH = 200  # the compact native declaration issue 14 aims at (version 8 at EC M)
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"  # base45, as the native QR text


@dataclass(frozen=True)
class Condition:
    """One way of photographing the screen; fields at 0 / 1 leave that effect out."""

    name: str
    defocus: float = 0.0  # gaussian sigma, pixels of the frame
    motion: int = 0  # length of the motion-blur streak, pixels
    noise: float = 3.0  # sensor noise sigma, grey levels
    tilt: float = 0.0  # perspective: the far edge shorter by this share
    rotation: float = 0.0  # degrees in the image plane
    moire: float = 0.0  # amplitude of the interference pattern, share of the contrast
    glare: float = 0.0  # peak of the glare blob, grey levels added
    distance: float = 1.0  # the code's size in the frame, times CODE_PX
    extra: dict = field(default_factory=dict)


CONDITIONS = (
    Condition("clean"),
    Condition("defocus 1.5", defocus=1.5),
    Condition("defocus 2.0", defocus=2.0),
    Condition("motion 7px", motion=7),
    Condition("motion 9px", motion=9),
    Condition("noise 20", noise=20.0),
    Condition("tilt 20%", tilt=0.20),
    Condition("tilt 35%", tilt=0.35),
    Condition("rotation 30", rotation=30.0, noise=8.0),
    Condition("moire 0.3", moire=0.3),
    Condition("moire 0.5", moire=0.5),
    Condition("glare", glare=170.0),
    Condition("distance 0.6", distance=0.6),
    Condition("distance 0.45", distance=0.45),
    Condition("blur+tilt+far", defocus=1.0, tilt=0.18, distance=0.75, noise=8.0),
)
QUICK_CONDITIONS = ("clean", "defocus 2.0", "motion 7px", "tilt 35%", "moire 0.5", "distance 0.45", "blur+tilt+far")


def text_of_length(n, seed=0, prefix="CHOT1:"):
    """A text of `n` characters like a native QR text: the prefix, then base45 characters (seeded)."""
    rng = np.random.default_rng(seed)
    body = "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), max(0, n - len(prefix))))
    return (prefix + body)[:n]


def size_texts(current=None):
    """{label: text}: the old and new native QR sizes (seeded base45 texts of those lengths, so the
    images are the same from run to run), and today's `chot issue` length when it is neither."""
    lengths = {"old": OLD_LENGTH, "new": NEW_LENGTH}
    texts = {}
    for name, n in lengths.items():
        t = text_of_length(n, seed=1)
        texts[f"{name} v{qr_version(t)}"] = t
    if current is not None:
        t = text_of_length(current, seed=1)
        if qr_version(t) not in {qr_version(x) for x in texts.values()}:
            texts[f"today v{qr_version(t)}"] = t
    return texts


def qr_version(text):
    import segno

    return segno.make(text, error="m", boost_error=False, micro=False).version


def screen(text):
    """The phone screen as a grey image (uint8): the code in whole screen pixels, margin, bezel."""
    import segno

    qr = segno.make(text, error="m", boost_error=False, micro=False)
    m = np.array([list(r) for r in qr.matrix], dtype=bool)
    m = np.pad(m, 4, constant_values=False)  # quiet zone
    side = int(SCREEN_CM / 2.54 * SCREEN_PPI)
    px = max(1, side // m.shape[0])
    img = np.where(np.kron(m, np.ones((px, px), dtype=bool)), 30, 235).astype(np.uint8)
    pad = (side - img.shape[0]) // 2
    img = np.pad(img, pad, constant_values=235)  # the rest of the white screen
    bezel = side // 12
    return np.pad(img, bezel, constant_values=15)


def photograph(scr, cond, rng):
    """A 640x480 grey camera frame of the screen image under `cond`, jittered by `rng`."""
    import cv2

    w, h = FRAME
    size = CODE_PX * cond.distance * rng.uniform(0.95, 1.05)
    small = cv2.resize(scr, (int(size), int(size)), interpolation=cv2.INTER_AREA)
    s = small.shape[0]
    if cond.moire:
        # the screen's pixel grid beating with the sensor's: a fine sinusoid at an angle
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(2.5, 4.0)
        wave = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period)
        beat = 0.5 + 0.5 * np.sin(xx / s * 2 * math.pi * rng.uniform(1, 3))
        small = np.clip(small * (1 - cond.moire * 0.5 * (1 + wave * beat)), 0, 255).astype(np.uint8)
    half = s / 2
    corners = np.array([(-half, -half), (half, -half), (half, half), (-half, half)], np.float32)
    if cond.tilt:
        # seen from one side: the far edge shorter, a random side
        k = 1 - cond.tilt
        corners[[1, 2], 1] *= k  # right edge shorter
        corners[[1, 2], 0] *= 1 - cond.tilt / 3
    theta = math.radians(cond.rotation * rng.choice((-1, 1)) + rng.uniform(-5, 5))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], np.float32)
    corners = corners @ rot.T
    if cond.tilt and rng.random() < 0.5:
        corners = -corners  # the other side
    centre = np.array([w / 2 + rng.uniform(-40, 40), h / 2 + rng.uniform(-30, 30)], np.float32)
    dst = corners + centre
    src = np.array([(0, 0), (s, 0), (s, s), (0, s)], np.float32)
    hmat = cv2.getPerspectiveTransform(src, dst)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = (95 + 25 * np.sin(xx / 53.0) * np.cos(yy / 71.0) + rng.normal(0, 4, (h, w))).astype(np.float32)
    mask = cv2.warpPerspective(np.ones((s, s), np.float32), hmat, (w, h), flags=cv2.INTER_LINEAR)
    code = cv2.warpPerspective(small.astype(np.float32), hmat, (w, h), flags=cv2.INTER_LINEAR)
    frame = bg * (1 - mask) + code * mask
    if cond.glare:
        gx, gy = dst.mean(axis=0) + rng.uniform(-0.2, 0.2, 2) * s
        r = s * 0.18
        frame += cond.glare * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r))
    if cond.defocus:
        frame = cv2.GaussianBlur(frame, (0, 0), cond.defocus)
    if cond.motion:
        k = np.zeros((cond.motion, cond.motion), np.float32)
        k[cond.motion // 2, :] = 1.0 / cond.motion
        m = cv2.getRotationMatrix2D((cond.motion / 2 - 0.5, cond.motion / 2 - 0.5), rng.uniform(0, 180), 1.0)
        k = cv2.warpAffine(k, m, (cond.motion, cond.motion))
        frame = cv2.filter2D(frame, -1, k / max(k.sum(), 1e-6))
    frame += rng.normal(0, cond.noise, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def frames(text, cond, n, seed=0):
    """`n` photographs of `text` on a phone under `cond` (deterministic for the seed and the names)."""
    scr = screen(text)
    key = sum(ord(c) * (i + 1) for i, c in enumerate(cond.name))
    rng = np.random.default_rng([seed, key, len(text)])
    return [photograph(scr, cond, rng) for _ in range(n)]


def phone_table(texts, decoders, conditions=CONDITIONS, per_condition=6, seed=0, times=None):
    """{(size label, condition name, decoder name): (read, false reads, images)}.

    `times`: a dict to fill with {decoder name: [ms per image]} (all sizes and conditions).

    `texts`: {size label: QR text}; `decoders`: {name: factory} (a fresh decoder per size and
    condition, which then sees that condition's images one after the other, like a camera
    stream of one person after another).
    """
    out = {}
    for label, text in texts.items():
        for cond in conditions:
            imgs = frames(text, cond, per_condition, seed)
            for name, make in decoders.items():
                dec = make()
                read = false = 0
                for img in imgs:
                    t = time.perf_counter()
                    got = dec.decode(img)
                    if times is not None:
                        times.setdefault(name, []).append((time.perf_counter() - t) * 1000.0)
                    read += text in got
                    false += sum(1 for t in got if t != text)
                out[(label, cond.name, name)] = (read, false, len(imgs))
                if hasattr(dec, "close"):
                    dec.close()
    return out


def format_table(table, texts, decoders, conditions):
    """The table as Markdown lines: one row per condition, a column per (size, decoder)."""
    cols = [(label, name) for label in texts for name in decoders]
    head = "| condition | " + " | ".join(f"{label}: {name}" for label, name in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for cond in conditions:
        cells = []
        for label, name in cols:
            read, false, total = table[(label, cond.name, name)]
            cells.append(f"{read}/{total}" + (f" ({false} false)" if false else ""))
        lines.append(f"| {cond.name} | " + " | ".join(cells) + " |")
    return lines
