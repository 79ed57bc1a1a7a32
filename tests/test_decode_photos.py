"""Real photographs decoded from pixels: the ZXing black-box QR photos, upright and turned.

Each decoder reads every photo of qrcode-1..3 turned by 0, 90, 180 and 270 degrees; a photo
counts as read when one of the texts decoded equals its .txt file exactly (read as UTF-8,
trailing newline and CR LF kept: the codes hold them, as ZXing's own black-box tests compare).
The default decoder must reach ZXing's thresholds for upright photos and read more than
pyzbar in total; nothing may be decoded from the photos in falsepositives/.
Run with `pytest -s` to see the table.
"""

import logging

import numpy as np
import pytest
from conftest import TESTDATA, need

from device.scanner.decode import PyzbarDecoder, ZxingDecoder
from device.scanner.frames import load_gray

log = logging.getLogger(__name__)

PHOTOS = TESTDATA / "qr-photos" / "zxing-blackbox"
FOLDERS = ("qrcode-1", "qrcode-2", "qrcode-3")
ROTATIONS = (0, 90, 180, 270)
# ZXing's QRCodeBlackBox{1,2,3}TestCase: photos that must pass upright (of 20, 35, 42)
UPRIGHT_THRESHOLDS = {"qrcode-1": 17, "qrcode-2": 32, "qrcode-3": 38}
DECODERS = {
    "zxing": lambda: ZxingDecoder(),  # the default: second pass on
    "zxing-1pass": lambda: ZxingDecoder(second_pass=False),
    "zxing-still": lambda: ZxingDecoder(still=True),  # `chot scan` of image files
    "pyzbar": lambda: PyzbarDecoder(),
}

_cache = {}


def _photos(folder):
    paths = sorted((PHOTOS / folder).glob("*.png"), key=lambda p: int(p.stem))
    return [(p, p.with_suffix(".txt").read_bytes().decode("utf-8")) for p in paths]


def _results():
    """{(decoder, folder, rotation): (read, total, missed names)}; computed once per module."""
    if "table" in _cache:
        return _cache["table"]
    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    decoders = {name: make() for name, make in DECODERS.items()}
    table = {}
    for folder in FOLDERS:
        photos = _photos(folder)
        assert photos, f"no photos in {folder}"
        for path, expected in photos:
            gray = load_gray(path)
            for rot in ROTATIONS:
                frame = np.ascontiguousarray(np.rot90(gray, -rot // 90))
                for name, dec in decoders.items():
                    read, total, missed = table.setdefault((name, folder, rot), [0, 0, []])
                    table[(name, folder, rot)][1] += 1
                    if expected in dec.decode(frame):
                        table[(name, folder, rot)][0] += 1
                    else:
                        missed.append(path.stem)
    names = list(decoders)
    lines = ["photos         " + "".join(f"{n:>13}" for n in names)]
    for f in FOLDERS:
        for r in ROTATIONS:
            cells = "".join(f"{table[(n, f, r)][0]:>8}/{table[(n, f, r)][1]:<4}" for n in names)
            lines.append(f"{f} {r:>3}   " + cells)
    lines.append("total          " + "".join(f"{_total(table, n):>13}" for n in names))
    for name in decoders:
        for f in FOLDERS:
            missed = table[(name, f, 0)][2]
            if missed:
                lines.append(f"{name} missed upright in {f}: {', '.join(missed)}")
    text = "\n".join(lines)
    print("\nQR photos read to the exact text (of each folder, per rotation):\n" + text)
    log.info("QR photos read:\n%s", text)
    _cache["table"] = table
    return table


def _total(table, name):
    return sum(table[(name, f, r)][0] for f in FOLDERS for r in ROTATIONS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_default_reaches_zxing_thresholds_upright(folder):
    table = _results()
    read, total, missed = table[("zxing", folder, 0)]
    assert read >= UPRIGHT_THRESHOLDS[folder], f"{folder}: read {read} of {total}, missed {missed}"


def test_default_reads_more_than_pyzbar():
    table = _results()
    assert _total(table, "zxing") > _total(table, "pyzbar")


def test_second_pass_never_reads_less():
    table = _results()
    for f in FOLDERS:
        for r in ROTATIONS:
            assert table[("zxing", f, r)][0] >= table[("zxing-1pass", f, r)][0], (f, r)


def test_still_images_never_read_less():
    """`chot scan` decodes each file on its own with every step: never fewer photos than the camera's decoder."""
    table = _results()
    for f in FOLDERS:
        for r in ROTATIONS:
            assert table[("zxing-still", f, r)][0] >= table[("zxing", f, r)][0], (f, r)


def _degraded(how):
    """The public photos made worse: (frame, expected text) of each."""
    import cv2

    out = []
    for folder in FOLDERS:
        for path, expected in _photos(folder):
            gray = load_gray(path)
            if how == "half":  # a more distant camera
                frame = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            else:  # "inverted": light modules on a dark ground (a phone's dark mode)
                frame = 255 - gray
            out.append((np.ascontiguousarray(frame), expected))
    return out


@pytest.mark.parametrize("how", ["half", "inverted"])
def test_a_still_image_gets_every_step_whatever_came_before(how):
    """On a still image the decoder runs every look and step (larger upscales, inverted codes at every
    size), so it reads more of the photos made worse than the camera's decoder, whose steps take
    turns from frame to frame; and what it reads of one image does not depend on the images before."""
    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    frames = _degraded(how)
    stream, still = ZxingDecoder(), ZxingDecoder(still=True)
    read_stream = sum(expected in stream.decode(frame) for frame, expected in frames)
    read_still = [expected in still.decode(frame) for frame, expected in frames]
    print(f"\n{how}: the camera's decoder read {read_stream}, still images {sum(read_still)} of {len(frames)}")
    assert sum(read_still) > read_stream
    for i in (0, len(frames) // 2, len(frames) - 1):  # alone, with a fresh decoder: the same answer
        frame, expected = frames[i]
        assert (expected in ZxingDecoder(still=True).decode(frame)) == read_still[i]


def test_turned_photos_read_as_well():
    """QR codes have no up: the default reads turned photos as well as upright ones (within 2)."""
    table = _results()
    for f in FOLDERS:
        upright = table[("zxing", f, 0)][0]
        for r in ROTATIONS[1:]:
            assert table[("zxing", f, r)][0] >= upright - 2, (f, r)


@pytest.mark.parametrize("name", list(DECODERS))
def test_nothing_decoded_from_falsepositives(name):
    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    paths = sorted((PHOTOS / "falsepositives").glob("*.png"))
    assert len(paths) >= 10
    dec = DECODERS[name]()
    found = {}
    for p in paths:
        gray = load_gray(p)
        for rot in ROTATIONS:
            texts = dec.decode(np.ascontiguousarray(np.rot90(gray, -rot // 90)))
            if texts:
                found[f"{p.name}@{rot}"] = texts
    assert found == {}


@pytest.mark.parametrize(("folder", "stem", "how"), [("qrcode-1", "19", "half"), ("qrcode-3", "32", "blur")])
def test_gated_rescue_reads_a_symbol_seen_but_not_read(folder, stem, how):
    """A public photo made worse (half size: a more distant camera; or defocused), which zxing-cpp
    alone sees as a QR symbol but cannot read, is read by the rescue on that symbol's region."""
    import cv2

    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    gray = load_gray(PHOTOS / folder / f"{stem}.png")
    expected = (PHOTOS / folder / f"{stem}.txt").read_bytes().decode("utf-8")
    if how == "half":
        frame = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    else:
        frame = cv2.GaussianBlur(gray, (0, 0), 1.5)
    plain = ZxingDecoder(second_pass=False).scan(frame)
    assert expected not in plain.texts and plain.unreadable > 0, "zxing-cpp alone sees the symbol and fails"
    dec = ZxingDecoder(second_pass_budget_ms=1000.0)  # what it reads, not how fast: no time bound in play
    assert dec.scan(frame).texts == [expected]
    assert dec.stats["gated"] == 1


def test_blind_steps_never_see_a_symbol_on_falsepositives():
    """Nothing seen on photos without a code: the gated rescue stays off there (no idle cost)."""
    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    dec = ZxingDecoder()
    for p in sorted((PHOTOS / "falsepositives").glob("*.png")):
        assert dec.scan(load_gray(p)).unreadable == 0, p.name
    assert dec.stats["gated"] == 0


def _grainy(gray, seed, sigma=25.0):
    """A photo with sensor-like noise: a dim gate at night, a cheap camera (Gaussian, sigma in grey levels)."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, gray.shape)
    return np.clip(gray + noise, 0, 255).astype(np.uint8)


def test_grainy_photos_are_read_by_smoothing_the_frame_in_the_gated_rescue(monkeypatch):
    """Noise breaks a code's modules up: zxing-cpp sees the symbol and fails. The rescue's whole-frame
    smoothing reads many of them; with that step taken out the same decoder reads fewer."""
    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    frames = [(_grainy(load_gray(p), seed), expected)
              for folder in FOLDERS for seed, (p, expected) in enumerate(_photos(folder))]

    def reads(dec):
        return sum(expected in dec.decode(frame) for frame, expected in frames)

    with_smoothing = reads(ZxingDecoder(second_pass_budget_ms=1000.0))
    monkeypatch.setattr(ZxingDecoder, "_smooth_read", lambda self, gray, quad: [])
    without = reads(ZxingDecoder(second_pass_budget_ms=1000.0))
    plain = reads(ZxingDecoder(second_pass=False))
    log.info("grainy photos (sigma 25): %d read, %d without smoothing, %d by zxing-cpp alone, of %d",
             with_smoothing, without, plain, len(frames))
    assert with_smoothing >= without + 5, (with_smoothing, without)
    assert without >= plain


def test_a_grainy_still_image_whose_symbol_no_look_sees_is_smoothed_too(monkeypatch):
    """`chot scan`: when the noise hides the symbol from every look (nothing seen, so no rescue), a
    still image is also read smoothed; the camera leaves that out (it would cost every empty frame)."""
    need(PHOTOS.is_dir(), f"the ZXing black-box photos at {PHOTOS}")
    frames = [(_grainy(load_gray(p), seed, sigma=35.0), expected)
              for folder in FOLDERS for seed, (p, expected) in enumerate(_photos(folder))]

    def reads(dec):
        return sum(expected in dec.decode(frame) for frame, expected in frames)

    with_look = reads(ZxingDecoder(still=True, second_pass_budget_ms=1000.0))
    camera = reads(ZxingDecoder(second_pass_budget_ms=1000.0))
    monkeypatch.setattr(ZxingDecoder, "_smoothed_look", lambda self, gray: ([], []))
    without = reads(ZxingDecoder(still=True, second_pass_budget_ms=1000.0))
    log.info("grainy photos (sigma 35): %d read as still images, %d without the smoothed look, %d by the "
             "camera's decoder, of %d", with_look, without, camera, len(frames))
    assert with_look > without
    assert with_look >= camera
