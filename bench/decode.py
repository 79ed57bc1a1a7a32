"""Decode benchmark: ms per frame for zxing-cpp, pyzbar and OpenCV's QR detector, QR in view and empty.

Frames come from the synthetic camera (device.scanner.synthetic) at 640x480 and 1280x720: a
signed declaration's QR on a phone screen (perspective, blur, glare, noise; difficulty 0.5)
and empty scenes. Each round decodes the same frames with every decoder in turn; the ratio
of each decoder is to zxing-cpp (the default decoder, second pass on) in the same round.
Also: how many of the ZXing black-box photos each decoder reads to the exact text (qrcode-2/13's
expected text is mislabelled upstream, so no decoder can match it: 384 of 388 is the most), the
idle cost of the rescue (empty 640x480 frames, the default against zxing-cpp alone: goal at most
1.5x), the p95 time of a frame with a code (goal at most 10 ms here), and the synthetic
phone-screen table (bench/phone.py) for the current native QR and a ~200-character one.
"""

import logging
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from bench.common import PI4_ASSUMPTION, Area, pi4_time, progress

log = logging.getLogger(__name__)

SIZES = ((640, 480), (1280, 720))
DIFFICULTY = 0.5
FOLDERS = ("qrcode-1", "qrcode-2", "qrcode-3")


class OpenCvDecoder:
    """cv2.QRCodeDetector as a reference (not a product decoder): `decode(gray) -> [text]`."""

    name = "opencv"

    def __init__(self):
        import cv2

        self._det = cv2.QRCodeDetector()

    def decode(self, gray):
        try:
            text, _points, _straight = self._det.detectAndDecode(gray)
        except Exception:  # noqa: BLE001 - a reference decoder may fail on odd frames
            return []
        return [text] if text else []


def decoders():
    """{name: decoder}: the product decoders and OpenCV's as a reference."""
    from device.scanner.decode import PyzbarDecoder, ZxingDecoder

    return {
        "zxing": ZxingDecoder(),
        "zxing-1pass": ZxingDecoder(second_pass=False),
        "pyzbar": PyzbarDecoder(),
        "opencv": OpenCvDecoder(),
    }


def sample_text():
    """A real signed declaration (the QR a person shows), as the terminal would read it."""
    from device.credentials import keys
    from device.credentials.issue_cli import issue_declaration, make_test_identities

    person = make_test_identities(1, seed=11)[0]
    return issue_declaration(keys.generate("ed25519"), person, issued_at=datetime.now(UTC) - timedelta(minutes=5))


def frames(ctx, text):
    """{(w, h, scene): [gray frames]} with scene 'qr' or 'empty'."""
    from device.scanner.synthetic import render_empty_frame, render_qr_frame

    rng = np.random.default_rng(6)
    n = ctx.sizes["decode_frames"]
    out = {}
    for w, h in SIZES:
        out[(w, h, "qr")] = [render_qr_frame(text, rng, w, h, difficulty=DIFFICULTY) for _ in range(n)]
        out[(w, h, "empty")] = [render_empty_frame(rng, w, h) for _ in range(n)]
    return out


def run_frames(dec, grays, text):
    """(ms per frame, frames whose text was read) over `grays`."""
    t = time.perf_counter()
    read = 0
    for g in grays:
        if text in dec.decode(g):
            read += 1
    return (time.perf_counter() - t) * 1000.0 / len(grays), read


def photos(ctx, decs):
    """{decoder: (read, total, ms per photo)} on the ZXing black-box photos (exact text)."""
    from device.scanner.frames import load_gray

    root = ctx.testdata / "qr-photos" / "zxing-blackbox"
    items = []
    for folder in FOLDERS:
        paths = sorted((root / folder).glob("*.png"), key=lambda p: int(p.stem))
        if ctx.sizes["photos_limit"]:
            paths = paths[: ctx.sizes["photos_limit"]]
        items += [(load_gray(p), p.with_suffix(".txt").read_bytes().decode("utf-8")) for p in paths]
    out = {}
    for name, dec in decs.items():
        read = total = 0
        t = time.perf_counter()
        for gray, expected in items:
            for rot in ctx.sizes["photos_rotations"]:
                frame = np.ascontiguousarray(np.rot90(gray, -rot // 90))
                total += 1
                if expected in dec.decode(frame):
                    read += 1
        out[name] = (read, total, (time.perf_counter() - t) * 1000.0 / max(1, total))
        progress(f"decode: photos {name}: {read}/{total}")
    return out


def interleaved(decs, grays, text=None):
    """{name: (mean, p50, p95, read)} ms per frame; the decoders take turns on each frame, so a burst
    of load from elsewhere on the machine hits them alike."""
    times = {n: [] for n in decs}
    read = dict.fromkeys(decs, 0)
    for g in grays:
        for name, dec in decs.items():
            t = time.perf_counter()
            got = dec.decode(g)
            times[name].append((time.perf_counter() - t) * 1000.0)
            read[name] += text is not None and text in got
    out = {}
    for name, ts in times.items():
        mean = sum(ts) / len(ts)
        ts.sort()
        out[name] = (mean, ts[len(ts) // 2], ts[min(len(ts) - 1, int(0.95 * len(ts)))], read[name])
    return out


def gated_figures(ctx, area, decs, text):
    """The rescue's goals: idle cost against zxing-cpp alone, and p95 of a frame with a code."""
    from device.scanner.synthetic import render_empty_frame, render_qr_frame

    rng = np.random.default_rng(8)
    n = ctx.sizes["latency_frames"]
    pair = {"zxing": decs["zxing"], "zxing-1pass": decs["zxing-1pass"]}
    empty = [render_empty_frame(rng, 640, 480) for _ in range(n)]
    idle = [interleaved(pair, empty) for _ in range(ctx.runs)]
    ratios = [r["zxing"][0] / r["zxing-1pass"][0] for r in idle]
    area.figure("idle_ratio.640x480", f"rescue's idle cost: default / zxing-cpp alone, mean over {n} empty "
                "640x480 frames, decoders taking turns", "x", ratios,
                goal={"text": "at most 1.5", "met": sorted(ratios)[len(ratios) // 2] <= 1.5},
                pi4={"estimate": "about the same ratio", "basis": "both decoders run the same C++ code at the "
                     "same frame size, so a slower CPU scales them alike (an assumption, not measured)"},
                extra={"ms_default": [r["zxing"][0] for r in idle], "ms_plain": [r["zxing-1pass"][0] for r in idle]})
    qr = [render_qr_frame(text, rng, 640, 480, difficulty=DIFFICULTY) for _ in range(n)]
    lat = interleaved(pair, qr, text)
    _mean, p50, p95, read = lat["zxing"]
    area.figure("latency_p95.640x480.qr", f"p95 of one 640x480 frame with a code, default decoder "
                f"(p50 {p50:.2f} ms, read {read}/{n})", "ms/frame", [p95],
                baseline="latency_p95.640x480.qr.1pass", base_values=[lat["zxing-1pass"][2]], base_label="zxing-1pass",
                goal={"text": "at most 10 ms here", "met": p95 <= 10.0},
                pi4={"estimate": pi4_time(p95, "ms/frame"), "basis": PI4_ASSUMPTION})


def phone(ctx, current_text):
    """The phone-screen table (Markdown lines) and its raw counts, old and new native QR sizes."""
    from bench import phone as ph
    from device.scanner.decode import PyzbarDecoder, ZxingDecoder

    texts = ph.size_texts(current=len(current_text))
    decs = {"zxing-1pass": lambda: ZxingDecoder(second_pass=False), "zxing": ZxingDecoder,
            "pyzbar": PyzbarDecoder, "opencv": OpenCvDecoder}
    which = ctx.sizes["phone_conditions"]
    names = ph.QUICK_CONDITIONS if which == "quick" else None if which == "all" else which
    conds = [c for c in ph.CONDITIONS if names is None or c.name in names]
    times = {}
    table = ph.phone_table(texts, decs, conds, per_condition=ctx.sizes["phone_images"], times=times)
    return ph.format_table(table, texts, decs, conds), table, texts, times


def run(ctx):
    area = Area("decode", "QR decoding")
    text = sample_text()
    progress(f"decode: rendering frames (declaration QR of {len(text)} characters)")
    fr = frames(ctx, text)
    decs = decoders()
    # per (size, scene): {decoder: [ms per run]}, {decoder: [frames read per run]}
    ms = {k: {n: [] for n in decs} for k in fr}
    reads = {k: {n: [] for n in decs} for k in fr}
    names = list(decs)
    for r in range(ctx.runs):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for key, grays in fr.items():
            for name in order:
                m, got = run_frames(decs[name], grays, text)
                ms[key][name].append(m)
                reads[key][name].append(got)
        progress(f"decode: round {r + 1}/{ctx.runs} done")
    labels = {"zxing": "zxing-cpp (default, second pass on)", "zxing-1pass": "zxing-cpp, no second pass",
              "pyzbar": "pyzbar (zbar)", "opencv": "OpenCV QRCodeDetector (reference)"}
    for (w, h, scene), per in ms.items():
        for name in names:
            base = "pyzbar" if name == "zxing" else "zxing"
            n = len(fr[(w, h, scene)])
            extra = {"frames_read": f"{min(reads[(w, h, scene)][name])}/{n}" if scene == "qr" else None,
                     "frames": n}
            area.figure(
                f"{name}.{w}x{h}.{scene}",
                f"{labels[name]}, {w}x{h}, {'QR in view' if scene == 'qr' else 'empty frame'}",
                "ms/frame",
                per[name],
                baseline=f"{base}.{w}x{h}.{scene}",
                base_values=per[base],
                base_label=base,
                pi4={"estimate": pi4_time(sorted(per[name])[len(per[name]) // 2], "ms/frame"),
                     "basis": PI4_ASSUMPTION},
                extra=extra,
            )
    progress("decode: ZXing black-box photos")
    ph = photos(ctx, decs)
    base_read = ph["pyzbar"][0]
    for name, (read, total, mspp) in ph.items():
        area.figure(
            f"photos.{name}", f"black-box photos read (exact text), {labels[name]}", "photos", [read],
            baseline="photos.pyzbar", base_values=[base_read], base_label="pyzbar", higher_is_better=True,
            pi4={"estimate": f"same count ({read}/{total}); ~{mspp * 3:.0f}-{mspp * 5:.0f} ms per photo",
                 "basis": "decoding is deterministic; time scaled by the CPU assumption. " + PI4_ASSUMPTION},
            extra={"total": total, "ms_per_photo": mspp, "rotations": list(ctx.sizes["photos_rotations"])},
        )
    gated_figures(ctx, area, decs, text)
    progress("decode: synthetic phone-screen benchmark")
    lines, table, texts, times = phone(ctx, text)
    p95 = {n: sorted(ts)[min(len(ts) - 1, int(0.95 * len(ts)))] for n, ts in times.items()}
    area.figure("latency_p95.phone", f"p95 of one phone-screen image (every condition and size, {len(times['zxing'])} "
                "images: the rescue runs on many), default decoder", "ms/frame", [p95["zxing"]],
                baseline="latency_p95.phone.1pass", base_values=[p95["zxing-1pass"]], base_label="zxing-1pass",
                goal={"text": "at most 10 ms here", "met": p95["zxing"] <= 10.0},
                pi4={"estimate": pi4_time(p95["zxing"], "ms/frame"), "basis": PI4_ASSUMPTION})
    false = sum(v[1] for v in table.values())
    area.note("Phone-screen benchmark (bench/phone.py): the QR text drawn by segno (EC M) on a ~6 cm phone "
              "screen at 400 ppi, photographed synthetically at 640x480, "
              f"{ctx.sizes['phone_images']} images per condition (seeded); "
              + ", ".join(f"{k}: {len(v)} characters" for k, v in texts.items())
              + f"; images read to the exact text; false reads in all: {false}.\n\n" + "\n".join(lines) + "\n")
    area.note("qrcode-2/13's expected text (ZXing's black-box set) is mislabelled upstream: no decoder can "
              "match it, so 384 of 388 photos (four rotations) is the most any decoder can reach.")
    area.note(f"Frames: synthetic camera frames (device.scanner.synthetic.render_qr_frame, difficulty "
              f"{DIFFICULTY}) of a signed declaration of {len(text)} characters; "
              f"{ctx.sizes['decode_frames']} frames per size and scene, {ctx.runs} rounds.")
    for d in decs.values():
        if hasattr(d, "close"):
            d.close()
    return area
