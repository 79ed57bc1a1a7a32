"""Frame to feedback: from a frame entering Terminal.process_frame to the PASS pin going high.

A real Terminal (device.daemon) with the default decoder (zxing-cpp, second pass on), a real
Checker trusting a fresh Ed25519 issuer, the real sealing of the person's part to a collector's
public key (privacy.seal_public_key = a fresh collector key folder's seal.pub: the daemon's own
chot.personal.Sealer, before the commit), a real Outbox (SQLite WAL, synchronous as configured:
FULL is the default) and Feedback on gpiozero's MockFactory. Each frame shows a different
person's signed declaration (so the cooldown never hides one), 640x480, synthetic camera.
The time of the PASS LED going high is read from the mock pin's own state log (MockPin.states
holds (seconds since the previous change, state); the last change's absolute monotonic time is
MockPin._last_change, so each state's absolute time is found by walking back from it).

The stages are timed by wrapping the terminal's decoder.scan, checker.check, sealer.seal and
outbox.append (instance attributes, so nothing of the product changes); "rest" is the remainder:
cooldown, chunk assembly, the clock reading, the event's fields, the feedback call, and the time
until the pin is set. Every committed event is checked to carry its sealed part. The baseline
is decode alone (a separate decoder, same frames, same round).
"""

import logging
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from bench.common import PI4_ASSUMPTION, Area, BenchError, collector_key_dir, percentile, pi4_time, progress, wait_until

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 640, 480
STAGE_LABELS = {
    "decode": "decode (decoder.scan)",
    "verify": "verify + policy (checker.check)",
    "seal": "sealing the person's part to the collector (sealer.seal)",
    "commit": "outbox commit (outbox.append)",
    "rest": "the rest (cooldown, clock, event fields, Feedback.signal switching the PASS pin high)",
}
DIFFICULTY = 0.4


def _cfg(tmp, pub, synchronous, seal_pub):
    from chot.config import validate
    from device.config import SCHEMA

    data = {
        "device": {"id": "bench-gate-1", "checkpoint": "bench-gate-1", "direction": "in"},
        "scanner": {"source": "files", "path": str(tmp), "cooldown_s": 5.0},
        "pins": {"factory": "mock", "relay": "GPIO23"},
        # the PASS LED stays on long enough to be read; the next signal switches it off first
        "feedback": {"pass_led_s": 30.0, "pass_beep_s": 0.01, "relay_s": 0.05},
        "policy": {"trusted_issuers": [str(pub)]},
        "outbox": {"path": str(tmp / f"outbox-{synchronous}.db"), "synchronous": synchronous},
        "privacy": {"seal_public_key": str(seal_pub)},
    }
    return validate(data, SCHEMA)


def _high_since(pin, t0):
    """The absolute monotonic time of the first change to high after `t0`, or None."""
    states = list(pin.states)
    t = pin._last_change  # absolute time of the last entry
    when = None
    for i in range(len(states) - 1, 0, -1):
        if t < t0:
            break
        if states[i].state:
            when = t
        t -= states[i].timestamp
    return when


class _Stages:
    """Wraps callables of one object to add their durations into `self.t[name]`."""

    def __init__(self):
        self.t = {}

    def wrap(self, obj, attr, name):
        fn = getattr(obj, attr)

        def timed(*a, **kw):
            s = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - s

        setattr(obj, attr, timed)


def _people_frames(n, key, seed):
    from device.credentials.issue_cli import issue_declaration, make_test_identities
    from device.scanner.synthetic import render_qr_frame

    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    people = make_test_identities(n, seed=seed)
    out = []
    for p in people:
        text = issue_declaration(key, p, issued_at=now - timedelta(minutes=5))
        out.append((text, render_qr_frame(text, rng, WIDTH, HEIGHT, difficulty=DIFFICULTY)))
    return out


def _round(ctx, term, pin, frames, stages, base_decoder):
    """One round: decode-alone on the frames, then the pipeline on them; per-frame samples in ms."""
    from device.scanner.frames import Frame

    base = []
    for text, gray in frames:
        s = time.perf_counter()
        got = base_decoder.decode(gray)
        base.append((time.perf_counter() - s) * 1000.0 if text in got else None)
    samples = []  # (total, decode, verify, seal, commit, rest) ms
    misses = 0
    for i, (_text, gray) in enumerate(frames):
        stages.t = {}
        t0 = time.monotonic()
        events = term.process_frame(Frame(gray, t0))
        if not events or events[0]["decision"] != "PASS":
            misses += 1
            base[i] = None
            continue
        if not events[0].get("sealed") or not events[0].get("verified"):
            raise BenchError("pipeline: a PASS was committed without its sealed personal part")
        ok = wait_until(lambda t0=t0: _high_since(pin, t0) is not None, 2.0, step=0.0005)
        if not ok:
            misses += 1
            base[i] = None
            continue
        total = (_high_since(pin, t0) - t0) * 1000.0
        d, v, s, c = (stages.t.get(k, 0.0) * 1000.0 for k in ("decode", "verify", "seal", "commit"))
        samples.append((total, d, v, s, c, total - d - v - s - c))
    return samples, [b for b in base if b is not None], misses


def run(ctx):
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from device.credentials import keys
    from device.credentials.policy import Checker
    from device.daemon import Terminal
    from device.io.feedback import Feedback
    from device.scanner.decode import make_decoder
    from device.uplink.outbox import Outbox

    area = Area("pipeline", "Frame to feedback (Terminal.process_frame to the PASS pin high)")
    key = keys.generate("ed25519")
    _priv, pub = keys.save_keypair(key, ctx.tmp / "pipeline-issuer")
    seal_pub = collector_key_dir(ctx.tmp / "collector-keys") / "seal.pub"
    n = ctx.sizes["pipeline_frames"]
    progress(f"pipeline: rendering {ctx.runs} x {n} frames of different people")
    rounds = [_people_frames(n, key, seed=100 + r) for r in range(ctx.runs)]
    results = {}
    for sync in ("FULL", "NORMAL"):
        cfg = _cfg(ctx.tmp, pub, sync, seal_pub)
        factory = MockFactory(pin_class=MockPWMPin)
        feedback = Feedback(cfg.pins, cfg.feedback, pin_factory=factory)
        outbox = Outbox.from_config(cfg)
        term = Terminal(cfg, feedback=feedback, outbox=outbox, checker=Checker.from_config(cfg.policy))
        stages = _Stages()
        if term.sealer is None:
            raise BenchError("pipeline: the terminal has no sealer: privacy.seal_public_key was not taken")
        stages.wrap(term.decoder, "scan", "decode")
        stages.wrap(term.checker, "check", "verify")
        stages.wrap(term.sealer, "seal", "seal")
        stages.wrap(term.outbox, "append", "commit")
        base_decoder = make_decoder(cfg.scanner)
        pin = feedback.pass_led.pin
        per = {k: [] for k in ("p50", "p99", "decode_p50", "verify_p50", "seal_p50", "commit_p50", "rest_p50",
                               "base_p50", "base_p99", "commit_p99")}
        missed = 0
        try:
            # warm-up: first imports, first statements, first thread
            _round(ctx, term, pin, _people_frames(2, key, seed=99 + (sync == "FULL")), stages, base_decoder)
            for r, frames in enumerate(rounds):
                samples, base, miss = _round(ctx, term, pin, frames, stages, base_decoder)
                missed += miss
                if not samples:
                    continue
                cols = list(zip(*samples, strict=True))
                per["p50"].append(percentile(cols[0], 50))
                per["p99"].append(percentile(cols[0], 99))
                for name, col in zip(("decode", "verify", "seal", "commit", "rest"), cols[1:], strict=True):
                    per[f"{name}_p50"].append(percentile(col, 50))
                per["commit_p99"].append(percentile(cols[4], 99))
                per["base_p50"].append(percentile(base, 50))
                per["base_p99"].append(percentile(base, 99))
                progress(f"pipeline ({sync}): round {r + 1}/{ctx.runs}: p50 {per['p50'][-1]:.2f} ms, "
                         f"decode alone {per['base_p50'][-1]:.2f} ms")
            # the outbox now holds the events of this run; a new person per frame means new events
        finally:
            term.close()
            base_decoder.close()
        results[sync] = (per, missed)
    for sync, (per, missed) in results.items():
        tag = "default" if sync == "FULL" else "outbox.synchronous = NORMAL"
        total = n * ctx.runs
        extra = {"frames": total, "frames_missed": missed, "outbox_synchronous": sync}
        goal = {"text": "pipeline adds < 20% to decode time (ratio < 1.20)", "max_ratio": 1.2}
        f50 = area.figure(
            f"{sync}.p50", f"frame to PASS pin, p50 ({tag})", "ms", per["p50"], baseline=f"{sync}.decode_alone.p50",
            base_values=per["base_p50"], base_label="decode alone, p50", goal=goal,
            pi4={"estimate": pi4_time(_med(per["p50"]), "ms"), "basis": PI4_ASSUMPTION + _io_note(sync)},
            extra=extra,
        )
        if f50.get("ratio"):
            goal["met"] = f50["ratio"]["median"] < 1.2
        area.figure(
            f"{sync}.p99", f"frame to PASS pin, p99 ({tag})", "ms", per["p99"], baseline=f"{sync}.decode_alone.p99",
            base_values=per["base_p99"], base_label="decode alone, p99",
            pi4={"estimate": pi4_time(_med(per["p99"]), "ms"), "basis": PI4_ASSUMPTION + _io_note(sync)},
            extra=extra,
        )
        for stage in ("decode", "verify", "seal", "commit", "rest"):
            area.figure(
                f"{sync}.{stage}.p50", f"  of which {STAGE_LABELS[stage]}, p50 ({tag})", "ms", per[f"{stage}_p50"],
                baseline=f"{sync}.p50", base_values=per["p50"],
                base_label="whole frame to PASS, p50",
                pi4={"estimate": pi4_time(_med(per[f"{stage}_p50"]), "ms"),
                     "basis": PI4_ASSUMPTION + (_io_note(sync) if stage == "commit" else "")},
            )
        area.figure(
            f"{sync}.commit.p99", f"  outbox commit, p99 ({tag})", "ms", per["commit_p99"],
            pi4={"estimate": pi4_time(_med(per["commit_p99"]), "ms"), "basis": PI4_ASSUMPTION + _io_note(sync)},
        )
    area.note(f"{n} frames per round (each a different person, 640x480, difficulty {DIFFICULTY}), {ctx.runs} rounds; "
              "p50/p99 are per round, the figure is the median of the rounds with their min and max.")
    return area


def _med(vals):
    vals = sorted(vals)
    return vals[len(vals) // 2] if vals else 0.0


def _io_note(sync):
    if sync != "FULL":
        return ""
    return ("; the outbox commit with synchronous FULL waits for fsync, which on a Pi's SD card depends on the "
            "card (an A1/A2 card is often 2-10 ms per fsync; ASSUMPTION, not measured)")
