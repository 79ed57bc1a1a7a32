"""A tiny run of the benchmark harness (bench/run.py --smoke): every area runs and reports its figures.

No timing is asserted (speed goes in bench/results.json); this only proves that the scripts
work: each area gives figures with a median, a spread and, where it has one, a baseline and
a ratio measured in the same run, and docs are regenerated between their markers only.
"""

import json
import subprocess
import sys

from conftest import ROOT, TESTDATA, need
from servers import PG_DSN, pg_available

sys.path.insert(0, str(ROOT))
from bench.run import AREAS, BEGIN, END, write_doc  # noqa: E402


def test_smoke_run_writes_every_area_and_the_table(tmp_path):
    need(TESTDATA.is_dir(), f"shared test data at {TESTDATA}")
    need(pg_available(), f"PostgreSQL at {PG_DSN}")
    out, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nHand-written intro.\n\n{BEGIN}\nold table\n{END}\n\n## Notes\n\nKept.\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--pg", PG_DSN, "--out", str(out),
         "--doc", str(doc), "--testdata", str(TESTDATA)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[bench" in proc.stderr  # progress goes to stderr
    results = json.loads(out.read_text())
    assert list(results["areas"]) == list(AREAS)
    for name, area in results["areas"].items():
        assert not area["skipped"], (name, area["skipped"])
        assert area["figures"], name
        for f in area["figures"]:
            assert f["id"].startswith(name + ".") and f["unit"]
            assert f["runs"] >= 1 and f["min"] <= f["median"] <= f["max"], f
            if "baseline" in f:
                assert f["ratio"]["runs"] >= 1, f
            if "goal" in f:
                assert f["goal"]["met"] in (True, False), f
            assert f["pi4"]["estimate"] and f["pi4"]["basis"], f
    ids = {f["id"] for a in results["areas"].values() for f in a["figures"]}
    for want in ("decode.zxing.640x480.qr", "decode.pyzbar.1280x720.empty", "decode.opencv.640x480.qr",
                 "decode.photos.zxing", "pipeline.FULL.p50", "pipeline.FULL.p99", "pipeline.FULL.commit.p50",
                 "pipeline.FULL.seal.p50", "pipeline.NORMAL.seal.p50",
                 "verify.native", "verify.dcc", "verify.shc", "parsers.native.max", "parsers.dcc.max",
                 "parsers.shc.max", "parsers.plain.max", "parsers.dcc.p99", "privacy.argon2.default.cpu",
                 "privacy.argon2.default.wall", "privacy.argon2.default.reversal", "privacy.argon2.t1.m16",
                 "privacy.seal.sealer", "privacy.open.opener", "privacy.index.hmac", "privacy.data.encrypt",
                 "privacy.data.decrypt", "outbox.commits.FULL", "outbox.commits.NORMAL",
                 "outbox.drain", "collector.bare", "collector.nostore", "collector.sqlite", "collector.postgresql",
                 "tracing.contacts.sqlite", "tracing.contacts.postgresql", "tracing.load.sqlite"):
        assert want in ids, want
    # the collector ingests sealed events, its goal is issue 9's: half the bare subscriber of the same round
    figs = {f["id"]: f for f in results["areas"]["collector"]["figures"]}
    for want in ("collector.sqlite", "collector.postgresql"):
        assert figs[want]["baseline"]["id"] == "collector.bare" and "50%" in figs[want]["goal"]["text"], figs[want]
    # the parsers on hostile input carry issue 11's goal: under 50 ms for any input of up to 8 KiB
    figs = {f["id"]: f for f in results["areas"]["parsers"]["figures"]}
    assert "50 ms" in figs["parsers.dcc.max"]["goal"]["text"] and figs["parsers.dcc.max"]["inputs"] > 50
    # the tracing rows are in PostgreSQL's day partitions, none in the default one
    assert any("day partition" in n for n in results["areas"]["tracing"]["notes"])
    # the photos are read from pixels: the default decoder reads at least one of the few given
    photos = next(f for f in results["areas"]["decode"]["figures"] if f["id"] == "decode.photos.zxing")
    assert photos["median"] >= 1
    # the table replaced the old block; the hand-written text around it is kept
    text = doc.read_text()
    assert "Hand-written intro." in text and "## Notes\n\nKept." in text
    assert "old table" not in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "| figure |" in text and "zxing-cpp" in text
    # a rerun of the doc generation replaces the block again, nothing else
    write_doc(doc, results)
    assert doc.read_text() == text
