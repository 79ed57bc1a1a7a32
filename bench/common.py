"""Shared machinery of the benchmarks: modes and sizes, timing, medians with spread, paired ratios,
progress lines on stderr and the Raspberry Pi 4 estimates.

Every figure is measured `runs` times; a figure keeps the median, min and max of its runs. A
figure with a baseline was measured in the same round as that baseline (interleaved, same
inputs), and its ratio is computed per round and then summarised, so the ratio holds on a
noisy machine even when both numbers drift.
"""

import logging
import statistics
import sys
import time
from dataclasses import dataclass, field

from chot.errors import ChotError

log = logging.getLogger(__name__)

_T0 = time.monotonic()


class BenchError(ChotError):
    """A benchmark could not run; the message says what was missing or too slow and what to check."""

# Sizes per mode. "smoke" is for tests/test_bench_smoke.py only: it proves the scripts run.
SIZES = {
    "smoke": {
        "runs": 1, "decode_frames": 1, "photos_rotations": (0,), "photos_limit": 2,
        "latency_frames": 4, "phone_images": 1, "phone_conditions": ("clean", "defocus 1.5"),
        "pipeline_frames": 4, "verify_s": 0.02, "outbox_commits": {"FULL": 5, "NORMAL": 10},
        "drain_events": 300, "drain_runs": 1, "collector_messages": 300, "tracing_events": 3000,
        "tracing_queries": 2, "tracing_store_batch_events": 500,
    },
    "quick": {
        "runs": 3, "decode_frames": 10, "photos_rotations": (0,), "photos_limit": None,
        "latency_frames": 40, "phone_images": 3, "phone_conditions": "quick",
        "pipeline_frames": 40, "verify_s": 0.15, "outbox_commits": {"FULL": 100, "NORMAL": 400},
        "drain_events": 10_000, "drain_runs": 1, "collector_messages": 20_000, "tracing_events": 200_000,
        "tracing_queries": 10, "tracing_store_batch_events": 5_000,
    },
    "full": {
        "runs": 5, "decode_frames": 6, "photos_rotations": (0, 90, 180, 270), "photos_limit": None,
        "latency_frames": 100, "phone_images": 6, "phone_conditions": "all",
        "pipeline_frames": 100, "verify_s": 0.3, "outbox_commits": {"FULL": 200, "NORMAL": 1000},
        "drain_events": 100_000, "drain_runs": 2, "collector_messages": 30_000, "tracing_events": 10_000_000,
        "tracing_queries": 20, "tracing_store_batch_events": 20_000,
    },
}

# Raspberry Pi 4: no measurement of it is possible here (no Pi, no public benchmark offline).
PI4_CPU_FACTOR = (3.0, 5.0)
PI4_ASSUMPTION = (
    "ASSUMPTION, not a measurement: a Raspberry Pi 4 (Cortex-A72, 1.5 GHz) is taken to be 3-5x slower "
    "per core than one core of this x86 machine for this kind of work (interpreted Python, C decoders, "
    "crypto); CPU-bound figures are scaled by that factor"
)


def progress(msg):
    """One progress line on stderr, with the seconds since the benchmarks started."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def elapsed():
    return time.monotonic() - _T0


def summary(values):
    """{median, min, max, runs} of a list of numbers (None when empty)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": len(vals)}


def percentile(values, q):
    """The q-th percentile (0..100) of `values`, nearest rank (p99 of 100 samples is the 99th)."""
    vals = sorted(values)
    if not vals:
        return None
    k = max(0, min(len(vals) - 1, int(round(q / 100.0 * len(vals) + 0.5)) - 1))
    return vals[k]


def pi4_time(ms_or_s, unit):
    """A CPU-bound time on a Pi 4 under the stated assumption."""
    lo, hi = PI4_CPU_FACTOR
    return f"~{_fmt(ms_or_s * lo)}-{_fmt(ms_or_s * hi)} {unit}"


def pi4_rate(rate, unit):
    """A CPU-bound rate on a Pi 4 under the stated assumption."""
    lo, hi = PI4_CPU_FACTOR
    return f"~{_fmt(rate / hi)}-{_fmt(rate / lo)} {unit}"


def _fmt(x):
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


fmt = _fmt


@dataclass
class Area:
    """The figures of one area (decode, pipeline, ...) and its notes."""

    name: str
    title: str
    figures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    skipped: str | None = None

    def figure(self, fid, label, unit, values, baseline=None, base_values=None, base_label=None,
               higher_is_better=False, goal=None, pi4=None, extra=None):
        """Add a figure from its per-run values; with `base_values` (same rounds) its paired ratio."""
        fig = {"id": f"{self.name}.{fid}", "label": label, "unit": unit, **(summary(values) or {"runs": 0})}
        fig["higher_is_better"] = higher_is_better
        if base_values is not None:
            fig["baseline"] = {"id": f"{self.name}.{baseline}" if baseline else None, "label": base_label,
                               **(summary(base_values) or {"runs": 0})}
            ratios = [v / b for v, b in zip(values, base_values, strict=False) if v is not None and b]
            fig["ratio"] = summary(ratios)
        if goal is not None:
            fig["goal"] = goal
        if pi4 is not None:
            fig["pi4"] = pi4
        if extra:
            fig.update(extra)
        self.figures.append(fig)
        line = f"{self.name}: {label}: {_fmt(fig.get('median'))} {unit}"
        if fig.get("ratio"):
            line += f" (x{_fmt(fig['ratio']['median'])} of {base_label})"
        progress(line)
        return fig

    def note(self, text):
        self.notes.append(text)

    def as_dict(self):
        return {"title": self.title, "figures": self.figures, "notes": self.notes, "skipped": self.skipped}


@dataclass
class Context:
    """What every area script gets: the mode, its sizes, a scratch folder and the PostgreSQL DSN."""

    mode: str
    tmp: object  # pathlib.Path of a scratch folder, removed after the run
    pg_dsn: str | None
    testdata: object  # pathlib.Path of ../shared/testdata
    full_tracing: bool = False
    budget_s: float = 570.0  # the whole run's time budget (the issue: under 10 minutes)

    @property
    def sizes(self):
        return SIZES[self.mode]

    @property
    def runs(self):
        return self.sizes["runs"]


def native_people(n, seed=1):
    """`n` realistic people as a terminal holds them after a native declaration verified.

    [(person, person_id, credential_id)]: `person` is what device.credentials.native.person_of
    gives (id_number, name with Vietnamese diacritics, phone, dob, health, purpose, doses,
    issuer, kind), `person_id` from chot.personal.person_id_for_id, the
    credential id a random declaration id. Deterministic for a seed.
    """
    import random

    from chot.personal import person_id_for_id
    from device.credentials.issue_cli import make_test_identities
    from device.credentials.native import person_of

    rng = random.Random(seed)
    issuer = bytes(rng.getrandbits(8) for _ in range(4))  # a CHOT2 key id
    out = []
    for ident in make_test_identities(n, seed=seed):
        out.append((person_of(ident, issuer), person_id_for_id(ident["id_number"]), f"{rng.getrandbits(128):032x}"))
    return out


def collector_key_dir(path):
    """A collector key folder at `path` (seal-*.key, seal.pub, index.key, data.key), made once; returns it."""
    from pathlib import Path

    from collector.keys import make_key_dir

    path = Path(path)
    if not (path / "seal.pub").exists():
        make_key_dir(path)
    return path


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    r = fn(*args, **kwargs)
    return time.perf_counter() - t, r


def wait_until(cond, timeout, step=0.002):
    """Poll `cond` until true or `timeout` seconds; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
