"""The scanner: frame sources, the synthetic crowd, decoders on real pixels, SHC chunk assembly.

Codes are drawn by segno and read back from pixels by zxing-cpp or zbar; the crowd's frames
go through the same decoder as the daemon's. No camera is attached here: the camera sources
are checked for the errors a technician sees (library missing, no camera).
"""

import ctypes.util
import io
import logging
import random
import string
import sys
import types

import numpy as np
import pytest
import segno
from conftest import need
from PIL import Image

from chot.config import validate
from chot.errors import ChotError, HardwareError
from device.config import SCHEMA
from device.credentials.formats import ChunkAssembler, parse_chunk
from device.scanner import frames as frames_mod
from device.scanner.decode import PyzbarDecoder, Scan, ZxingDecoder, make_decoder
from device.scanner.frames import (
    CAMERA_NOT_FOUND,
    PICAMERA2_MISSING,
    FileSource,
    Frame,
    FrameSource,
    Paced,
    PiCameraSource,
    UsbSource,
    open_source,
)
from device.scanner.synthetic import Person, SyntheticCrowd, render_empty_frame, render_qr_frame

log = logging.getLogger(__name__)


def scanner_cfg(**keys):
    """A [scanner] section validated against the real schema."""
    return validate({"device": {"id": "t1", "checkpoint": "gate", "direction": "in"}, "scanner": keys}, SCHEMA).scanner


def declaration_like(rng, n):
    """Texts shaped like signed declarations (a prefix and base45), random content."""
    alphabet = string.ascii_uppercase + string.digits + " $%*+-./:"
    return ["NC1:" + "".join(rng.choice(alphabet) for _ in range(rng.randint(150, 420))) for _ in range(n)]


def qr_image(text, scale=5, **kw):
    """The QR code of `text` drawn by segno, as a grey numpy image."""
    buf = io.BytesIO()
    segno.make(text, micro=False, **kw).save(buf, kind="png", scale=scale)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))


# --- FileSource ---------------------------------------------------------------------------------


def _write_images(folder):
    folder.mkdir()
    segno.make("code-b", micro=False).save(folder / "b.png", scale=6, dark="darkblue", light="#ffffe0")
    Image.new("RGB", (80, 60), (200, 30, 40)).save(folder / "a.jpg", quality=95)
    Image.new("RGB", (50, 40), (10, 220, 90)).save(folder / "c.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # unreadable: skipped


def test_file_source_folder_sorted_grey_then_exhausted(tmp_path):
    folder = tmp_path / "frames"
    _write_images(folder)
    with FileSource(folder) as src:
        got = list(src)
        assert src.read() is None
        assert src.read() is None
    assert [f.name for f in got] == ["a.jpg", "b.png", "c.webp"]
    for f in got:
        assert isinstance(f, Frame) and f.gray.dtype == np.uint8 and f.gray.ndim == 2
    assert got[0].gray.shape == (60, 80)
    expected = np.asarray(Image.new("RGB", (50, 40), (10, 220, 90)).convert("L"))
    assert np.array_equal(got[2].gray, expected)
    assert got[0].t <= got[1].t <= got[2].t
    # colours became grey and the code still reads
    assert ZxingDecoder().decode(got[1].gray) == ["code-b"]


def test_file_source_loops_and_fits_size(tmp_path):
    folder = tmp_path / "frames"
    _write_images(folder)
    src = FileSource(folder, loop=True, width=40, height=40)
    names = [src.read().name for _ in range(7)]
    assert names == ["a.jpg", "b.png", "c.webp", "a.jpg", "b.png", "c.webp", "a.jpg"]
    src.read()
    assert src.read().gray.shape == (32, 40)  # c.webp 50x40 scaled down to fit 40x40
    src.close()
    assert src.read() is None


def test_file_source_single_file_and_errors(tmp_path):
    path = tmp_path / "one.png"
    segno.make("single", micro=False).save(path, scale=5)
    src = FileSource(path)
    assert src.read().name == "one.png"
    assert src.read() is None
    with pytest.raises(HardwareError, match="not found"):
        FileSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HardwareError, match="no images"):
        FileSource(tmp_path / "empty")


def test_paced_passes_frames_through(tmp_path):
    folder = tmp_path / "frames"
    _write_images(folder)
    with Paced(FileSource(folder), fps=1000) as src:
        assert [f.name for f in src] == ["a.jpg", "b.png", "c.webp"]


# --- the synthetic crowd ------------------------------------------------------------------------


def test_synthetic_crowd_is_deterministic():
    texts = declaration_like(random.Random(1), 4)
    a = list(SyntheticCrowd(texts, seed=5))
    b = list(SyntheticCrowd(texts, seed=5))
    c = list(SyntheticCrowd(texts, seed=6))
    assert [f.name for f in a] == [f.name for f in b]
    assert all(np.array_equal(x.gray, y.gray) for x, y in zip(a, b, strict=True))
    assert len(a) != len(c) or not all(np.array_equal(x.gray, y.gray) for x, y in zip(a, c, strict=True))
    assert all(f.gray.shape == (480, 640) and f.gray.dtype == np.uint8 for f in a)


def test_synthetic_crowd_shape_of_a_run():
    texts = declaration_like(random.Random(2), 5)
    crowd = SyntheticCrowd(texts, seed=3, empty_frames=(2, 4), frames_per_person=(3, 5), width=320, height=240)
    names = [f.name for f in crowd]
    assert crowd.read() is None
    runs = []  # (name, length) of consecutive frames
    for n in names:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    people = [r for r in runs if r[0] != "empty"]
    gaps = [r for r in runs if r[0] == "empty"]
    assert [r[0] for r in people] == [f"person-{i}" for i in range(5)]
    assert all(3 <= r[1] <= 5 for r in people)
    assert all(2 <= r[1] <= 4 for r in gaps) and len(gaps) == 6  # before each person and after the last
    assert runs[0][0] == "empty" and runs[-1][0] == "empty"


def test_synthetic_crowd_is_read_by_zxing():
    """Most people are read in at least one of their frames; empty frames give nothing."""
    texts = declaration_like(random.Random(3), 30)
    decoder = ZxingDecoder()
    frames_of, read_of = {}, {}
    empty, empty_with_codes = 0, 0
    for f in SyntheticCrowd(texts, seed=11):
        got = decoder.decode(f.gray)
        if f.name == "empty":
            empty += 1
            empty_with_codes += bool(got)
            continue
        i = int(f.name.split("-")[1])
        assert set(got) <= {texts[i]}, "read a text that is not in the frame"
        frames_of[i] = frames_of.get(i, 0) + 1
        read_of[i] = read_of.get(i, 0) + (texts[i] in got)
    people = sum(1 for i in frames_of if read_of[i])
    frames = sum(read_of.values())
    report = f"synthetic crowd: {people}/{len(texts)} people read, {frames}/{sum(frames_of.values())} frames"
    print("\n" + report)
    log.info(report)
    assert empty > 0 and empty_with_codes == 0
    assert people >= 0.9 * len(texts)
    assert frames >= 0.6 * sum(frames_of.values())


def test_synthetic_people_without_code_and_garbled():
    text = declaration_like(random.Random(4), 1)[0]
    crowd = SyntheticCrowd(
        [Person(None), Person(text, garble=True, difficulty=0.1), Person(text, difficulty=0.0)],
        seed=2,
        frames_per_person=(6, 6),
    )
    decoder = ZxingDecoder()
    seen = {}
    for f in crowd:
        s = decoder.scan(f.gray)
        seen.setdefault(f.name, []).append(s)
    assert all(not s.texts for s in seen["person-0"])
    assert all(not s.texts for s in seen["person-1"]), "a garbled code must not decode"
    assert any(s.unreadable for s in seen["person-1"]), "the damaged code is seen as a QR symbol"
    assert all(s.texts == [text] for s in seen["person-2"])


def test_two_codes_in_one_frame_both_decoded():
    a, b = "NC1:FIRST-PERSON-0001", "HC1:SECOND-CODE-0002"
    rng = np.random.default_rng(8)
    for decoder in (ZxingDecoder(), PyzbarDecoder()):
        gray = render_qr_frame([a, b], rng, difficulty=0.1)
        assert sorted(decoder.decode(gray)) == sorted([a, b]), decoder.name


def test_render_helpers():
    rng = np.random.default_rng(1)
    gray = render_qr_frame("hello", rng, width=320, height=240, difficulty=0.0)
    assert gray.shape == (240, 320) and gray.dtype == np.uint8
    assert ZxingDecoder().decode(gray) == ["hello"]
    assert ZxingDecoder().decode(render_empty_frame(rng, 320, 240)) == []


# --- decoders -----------------------------------------------------------------------------------


def test_decoders_never_raise_on_bad_frames():
    bad = [None, "frame", np.zeros((0, 0), np.uint8), np.zeros((3, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)]
    bad += [np.full((120, 160), 300.0), np.zeros((240, 320), dtype=object)]
    for decoder in (ZxingDecoder(), ZxingDecoder(second_pass=False), PyzbarDecoder()):
        for frame in bad:
            assert decoder.decode(frame) == []
        assert decoder.scan(np.zeros((240, 320), np.uint8)) == Scan([], 0)


def test_decoders_read_only_qr():
    """A Code 128 and a DataMatrix in view are not reported: every decoder is restricted to QR."""
    import zxingcpp

    img = np.full((300, 700), 255, np.uint8)
    bar = zxingcpp.create_barcode("LINEAR-123", zxingcpp.BarcodeFormat.Code128).to_image(scale=3)
    bar = np.asarray(Image.fromarray(np.asarray(bar)).convert("L"))
    img[20 : 20 + bar.shape[0], 20 : 20 + bar.shape[1]] = bar
    qr = qr_image("only-this", scale=4)
    img[150 : 150 + qr.shape[0], 500 : 500 + qr.shape[1]] = qr
    assert any(b.text == "LINEAR-123" for b in zxingcpp.read_barcodes(img)), "the 1D code is readable"
    for decoder in (ZxingDecoder(), PyzbarDecoder()):
        assert decoder.decode(img) == ["only-this"], decoder.name


def test_texts_keep_their_characters():
    """UTF-8 (Vietnamese) and control characters come back as written, not as '<SOH>' or mojibake."""
    texts = ["Nguyễn Văn A, phường Phúc Tân", "\x01\x10AD:SUB;;", "line1\r\nline2\n"]
    for t in texts:
        gray = qr_image(t, encoding="utf-8")
        assert ZxingDecoder().decode(gray) == [t]
        assert PyzbarDecoder().decode(gray) == [t]


def test_make_decoder_from_config():
    z = make_decoder(scanner_cfg(second_pass=False, second_pass_budget_ms=3.0))
    assert isinstance(z, ZxingDecoder) and z.second_pass is False and z.budget_s == pytest.approx(0.003)
    assert isinstance(make_decoder(scanner_cfg(decoder="pyzbar")), PyzbarDecoder)
    assert isinstance(make_decoder({"decoder": "zxing"}), ZxingDecoder)


def test_missing_zbar_library_is_explained(monkeypatch):
    for mod in [m for m in sys.modules if m == "pyzbar" or m.startswith("pyzbar.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(HardwareError, match="apt install libzbar0") as err:
        PyzbarDecoder()
    assert isinstance(err.value, ChotError)


def test_missing_zxing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "zxingcpp", None)
    with pytest.raises(HardwareError, match="pip install zxing-cpp"):
        ZxingDecoder()


# --- camera sources: what the technician is told -------------------------------------------------


def test_picamera2_missing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(HardwareError) as err:
        PiCameraSource(640, 480, 15)
    assert str(err.value) == PICAMERA2_MISSING
    assert "sudo apt install python3-picamera2" in str(err.value) and "--system-site-packages" in str(err.value)


def _fake_picamera2(cameras):
    """A stand-in for the picamera2 module (there is no camera here): YUV420 lores buffers."""
    mod = types.ModuleType("picamera2")

    class Picamera2:
        opened = []

        @staticmethod
        def global_camera_info():
            return cameras

        def __init__(self):
            self.camera_controls = {}
            self.closed = False
            Picamera2.opened.append(self)

        def create_video_configuration(self, main, lores, controls, buffer_count):
            self.lores = lores
            return {"main": main, "lores": lores, "controls": controls}

        def configure(self, config):
            self.config = config

        def start(self):
            pass

        def capture_array(self, name):
            w, h = self.lores["size"]
            yuv = np.full((h * 3 // 2, w + 64), 128, np.uint8)  # padded stride, chroma below
            yuv[:h, :w] = 77
            return yuv

        def stop(self):
            pass

        def close(self):
            self.closed = True

    mod.Picamera2 = Picamera2
    return mod


def test_picamera2_no_camera_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", _fake_picamera2([]))
    with pytest.raises(HardwareError) as err:
        PiCameraSource(640, 480, 15)
    assert str(err.value) == CAMERA_NOT_FOUND


def test_picamera2_lores_y_plane_is_the_frame(monkeypatch):
    fake = _fake_picamera2([{"Model": "imx708"}])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    with PiCameraSource(320, 240, 10) as src:
        f = src.read()
        assert f.gray.shape == (240, 320) and f.gray.dtype == np.uint8 and (f.gray == 77).all()
        assert src._cam.config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert fake.Picamera2.opened[0].closed and src.read() is None


def test_usb_camera_absent_is_explained():
    pytest.importorskip("cv2")  # the optional extra; the test extra installs it
    with pytest.raises(HardwareError, match="no USB camera at /dev/video63"):
        UsbSource(63, 640, 480, 15)


def test_opencv_missing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(HardwareError, match="OpenCV is not installed"):
        UsbSource(0, 640, 480, 15)


# --- open_source -----------------------------------------------------------------------------------


def test_open_source_picks_the_configured_source(tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    _write_images(folder)
    with open_source(scanner_cfg(source="files", path=str(folder), loop=True)) as src:
        assert type(src) is FileSource and src.loop and src.width == 640
    # The synthetic crowd is no part of the terminal: without the demo's plug-in it says how to get it.
    with pytest.raises(HardwareError, match="chot demo-terminal"):
        open_source(scanner_cfg(source="synthetic"))
    monkeypatch.setitem(frames_mod.PLUGINS, "synthetic",
                        lambda cfg: SyntheticCrowd(["a", "b"], seed=cfg.synthetic_seed, width=cfg.width,
                                                   height=cfg.height))
    with open_source(scanner_cfg(source="synthetic", synthetic_seed=4)) as src:
        assert type(src) is SyntheticCrowd and src.width == 640 and src.height == 480
    with pytest.raises(HardwareError, match="scanner.path is not set"):
        open_source(scanner_cfg(source="files"))

    monkeypatch.setitem(sys.modules, "picamera2", _fake_picamera2([{"Model": "imx708"}]))
    with open_source(scanner_cfg(source="picamera2", width=320, height=240)) as src:
        assert type(src) is PiCameraSource and src.read().gray.shape == (240, 320)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(HardwareError, match="picamera2 is not installed"):
        open_source(scanner_cfg())  # the default source

    opened = []
    monkeypatch.setattr(frames_mod, "UsbSource", lambda *a: opened.append(a) or FrameSource())
    open_source(scanner_cfg(source="usb", usb_device=2, width=320, height=240, fps=10))
    assert opened == [(2, 320, 240, 10.0)]


# --- SMART Health Cards chunks ------------------------------------------------------------------


def _numeric(jws):
    return "".join(f"{ord(c) - 45:02d}" for c in jws)


def test_shc_chunks_assembled_out_of_order(testdata):
    ex = testdata / "shc" / "spec-examples"
    parts = [(ex / f"example-02-f-qr-code-numeric-value-{i}.txt").read_text().strip() for i in range(3)]
    jws = (ex / "example-02-d-jws.txt").read_text().strip()
    assert [parse_chunk(p)[:2] for p in parts] == [(1, 3), (2, 3), (3, 3)]
    asm = ChunkAssembler(timeout_s=30)
    assert asm.feed(parts[2], now=100.0) is None
    assert asm.pending() == 1
    assert asm.feed(parts[0], now=101.0) is None
    assert asm.feed(parts[0], now=101.5) is None  # the same part seen again in the next frame
    whole = asm.feed(parts[1], now=102.0)
    assert whole == "shc:/" + _numeric(jws)
    assert asm.pending() == 0


def test_shc_chunks_from_pixels(testdata):
    """The three PNG codes of example 02 read by the decoder and assembled."""
    ex = testdata / "shc" / "spec-examples"
    pngs = sorted((ex / "png").glob("example-02-g-qr-code-*.png"))
    need(len(pngs) == 3, "the PNG codes of SHC example 02")
    jws = (ex / "example-02-d-jws.txt").read_text().strip()
    asm, decoder, out = ChunkAssembler(), ZxingDecoder(), []
    for p in reversed(pngs):
        out += asm.feed_all(decoder.decode(frames_mod.load_gray(p)), now=5.0)
    assert out == ["shc:/" + _numeric(jws)]


def test_shc_chunk_timeout_and_plain_texts():
    asm = ChunkAssembler(timeout_s=30)
    assert asm.feed("HC1:NCFOXN", now=0.0) == "HC1:NCFOXN"
    assert asm.feed("shc:/567629", now=0.0) == "shc:/567629"  # a whole card in one code
    assert asm.feed("shc:/4/3/5676", now=0.0) == "shc:/4/3/5676"  # not a valid chunk: for the verifier to refuse
    assert asm.feed("shc:/1/3/11", now=0.0) is None
    assert asm.feed("shc:/2/3/22", now=5.0) is None
    assert asm.feed("shc:/3/3/33", now=31.0) is None  # part 1 is 31 s old: dropped
    assert asm.pending() == 1
    assert asm.feed("shc:/1/3/11", now=32.0) == "shc:/112233"
    assert asm.feed("shc:/1/2/44", now=40.0) is None
    assert asm.pending(now=71.0) == 0


def test_shc_conflicting_part_starts_a_new_set():
    asm = ChunkAssembler()
    assert asm.feed("shc:/1/3/11", now=0.0) is None
    assert asm.feed("shc:/2/3/22", now=0.0) is None
    assert asm.feed("shc:/2/3/99", now=1.0) is None  # another card of 3 parts: never mix them
    assert asm.feed("shc:/3/3/33", now=1.0) is None
    assert asm.feed("shc:/1/3/77", now=2.0) == "shc:/779933"
    assert asm.feed_all(["shc:/1/2/55", "plain", "shc:/2/2/66"], now=3.0) == ["plain", "shc:/5566"]
