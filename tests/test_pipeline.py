"""One scan pipeline: `chot scan` and the daemon give the same answer for the same image.

Both go through device/pipeline.py (one image loader with EXIF orientation, one decoder, one
multi-part assembly, verification and policy). Checked on the public photos frame by frame, on a
phone photo with an EXIF rotation tag, and on a SMART Health Card split over two QR codes.
"""

import json
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest
import segno
from conftest import need
from PIL import Image

from chot.config import read_toml
from device.config import load_terminal_config
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.daemon import Terminal, is_verified
from device.scan_cli import Scanner, load_grey
from device.scanner.frames import FileSource

SHC_AT = datetime(2023, 7, 1, tzinfo=UTC)  # after the spec examples' nbf, before example 03's exp


def write_config(path, frames, trusted=(), scanner=None):
    """A terminal config (TOML) for the files source over `frames`; no cooldown: every frame counts."""
    lines = ['[device]', 'id = "gate-1-in"', 'checkpoint = "cp-1"', 'direction = "in"',
             '[scanner]', 'source = "files"', f'path = "{frames}"', 'cooldown_s = 0.0']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (scanner or {}).items()]
    lines += ['[pins]', 'factory = "mock"', '[policy]', f"trusted_issuers = {json.dumps([str(t) for t in trusted])}",
              '[outbox]', f'path = "{path.parent / "outbox.db"}"']
    path.write_text("\n".join(lines) + "\n")
    read_toml(path)  # well-formed
    return path


def daemon_results(conf, at=None):
    """{frame name: [(text, format, decision, reason, verified)]} as the daemon decides, frame by frame.

    (Texts without their outer white space: `chot scan` echoes the decoded text, the Verification
    holds the text as checked.)"""
    cfg = load_terminal_config(conf)
    out, current = {}, []

    def seen(event, decision, v):
        if v is not None and v.text is not None:  # a code read (not a damaged-code event)
            current.append((v.text.strip(), v.format, decision.decision, decision.reason, is_verified(v)))

    with Terminal.from_config(cfg, on_decision=seen, now=(lambda: at) if at else None) as term:
        for frame in term.source:
            current.clear()
            term.process_frame(frame)
            out[frame.name] = list(current)
    return out


def scan_results(conf, files, at=None):
    """The same from `chot scan --config` (the real command line), per file name."""
    args = [sys.executable, "-m", "chot.cli", "scan", "--config", str(conf), *map(str, files)]
    if at is not None:
        args += ["--at", at.isoformat()]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = {f.name: [] for f in files}
    for line in res.stdout.splitlines():
        d = json.loads(line)
        if d["reason"] == "incomplete":
            continue
        name = d["source"].rsplit("/", 1)[-1]
        got = out.setdefault(name, [])
        if d["text"] is not None:
            got.append((d["text"].strip(), d["format"], d["decision"], d["reason"], d["person"]["verified"]))
    return out


@pytest.mark.parametrize("folder", ["qrcode-1", "qrcode-2", "qrcode-3"])
def test_scan_and_daemon_agree_frame_by_frame_on_the_public_photos(testdata, tmp_path, folder):
    photos = testdata / "qr-photos" / "zxing-blackbox" / folder
    need(photos.is_dir(), f"public QR photos at {photos}")
    conf = write_config(tmp_path / "terminal.toml", photos)
    daemon = daemon_results(conf)
    files = sorted(p for p in photos.iterdir() if p.suffix == ".png")
    scan = scan_results(conf, files)
    assert set(daemon) == {p.name for p in files} == set(scan)
    assert daemon == scan
    read = sum(1 for p in files if any(r[0] == p.with_suffix(".txt").read_text().strip() for r in daemon[p.name]))
    print(f"{folder}: {read}/{len(files)} photos read exactly, the same by `chot scan` and the daemon")
    assert read >= len(files) // 2


def test_a_photo_with_an_exif_rotation_tag_is_upright_and_gives_the_same_result(tmp_path):
    key = keys.generate("ed25519")
    _, pub = keys.save_keypair(key, tmp_path / "issuer")
    text = issue_declaration(key, make_test_identities(1, seed=3)[0])
    # A phone held upright: a portrait 960x1280 picture of the code, stored sideways (1280x960)
    # with EXIF Orientation 6 ("turn 90° clockwise to show"), as phone cameras write them.
    modules = np.pad(np.array([list(r) for r in segno.make(text, error="m").matrix], bool), 4)
    qr = np.where(np.kron(modules, np.ones((8, 8), bool)), 25, 230).astype(np.uint8)
    upright = np.full((1280, 960), 140, np.uint8)
    upright[300:300 + qr.shape[0], 100:100 + qr.shape[1]] = qr
    frames = tmp_path / "frames"
    frames.mkdir()
    photo = frames / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(photo, quality=92, exif=exif.tobytes())
    assert Image.open(photo).size == (1280, 960)
    conf = write_config(tmp_path / "terminal.toml", frames, trusted=[pub])
    cfg = load_terminal_config(conf)
    # One loader: `chot scan` sees the frame the files source gives the daemon, upright, at the frame size.
    (frame,) = list(FileSource(frames, width=cfg.scanner.width, height=cfg.scanner.height))
    grey = load_grey(photo, cfg)
    assert grey.shape == frame.gray.shape == (480, 360)
    assert np.array_equal(grey, frame.gray)
    assert np.array_equal(Scanner(cfg).pipeline.image(photo), frame.gray)
    daemon = daemon_results(conf)
    assert daemon == scan_results(conf, [photo])
    assert daemon == {"phone.jpg": [(text, "native", "PASS", "ok", True)]}


def _two_part_shc(testdata, folder):
    """SHC spec example 01 split over two QR codes (shc:/1/2/..., shc:/2/2/...), one per frame."""
    ex = testdata / "shc" / "spec-examples"
    need(ex.is_dir(), f"SHC spec examples at {ex}")
    whole = (ex / "example-01-f-qr-code-numeric-value-0.txt").read_text().strip()
    digits = whole.removeprefix("shc:/")
    half = len(digits) // 4 * 2  # two digits per JWS character
    parts = [f"shc:/1/2/{digits[:half]}", f"shc:/2/2/{digits[half:]}"]
    folder.mkdir()
    for i, part in enumerate(parts):
        frame = np.full((480, 640), 150, np.uint8)
        modules = np.pad(np.array([list(r) for r in segno.make(part, error="l").matrix], bool), 4)
        qr = np.where(np.kron(modules, np.ones((4, 4), bool)), 20, 235).astype(np.uint8)
        frame[20:20 + qr.shape[0], 100:100 + qr.shape[1]] = qr
        Image.fromarray(frame).save(folder / f"part-{i + 1}.png")
    return whole, ex / "issuer" / ".well-known" / "jwks.json"


def test_a_two_part_smart_health_card_gives_the_same_result_in_scan_and_daemon(testdata, tmp_path):
    whole, jwks = _two_part_shc(testdata, tmp_path / "frames")
    conf = write_config(tmp_path / "terminal.toml", tmp_path / "frames", trusted=[jwks])
    daemon = daemon_results(conf, at=SHC_AT)
    scan = scan_results(conf, sorted((tmp_path / "frames").glob("*.png")), at=SHC_AT)
    assert daemon == scan
    # the first part alone is nothing yet; with the second the whole card is verified
    assert daemon["part-1.png"] == []
    assert [r[:2] + r[4:] for r in daemon["part-2.png"]] == [(whole, "shc", True)]


def test_scan_says_when_parts_of_a_multi_part_code_are_missing(testdata, tmp_path):
    _two_part_shc(testdata, tmp_path / "frames")
    res = subprocess.run([sys.executable, "-m", "chot.cli", "scan", str(tmp_path / "frames" / "part-1.png")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (line,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert (line["format"], line["decision"], line["reason"]) == ("shc", "FAIL", "incomplete")
