"""`python -m faults.run`: Chot's fault-injection suite (`make faults`); see docs/reliability.md.

    python -m faults.run [--seed N] [--quick | --smoke] [--backend sqlite|postgresql|both]
                         [--only FAULT,...] [--keep] [--doc docs/reliability.md]

Real Mosquitto with persistence, the collector as a subprocess on SQLite and on a private
PostgreSQL, three terminals as subprocesses on the synthetic crowd (t2 under libfaketime, t3's
state dir on a small tmpfs), a TCP proxy between terminals and broker. Each fault is injected
`runs` times at random moments drawn from the seed; after each, the runner waits until every
event committed up to the fault's end is stored and acked (the recovery time) and reconciles
the window in the ledger (faults/ledger.py). One table at the end; exit status 1 on any loss,
duplicate, phantom, mismatch, seq hole, pass without a record, or a fault the system did not
recover from within the deadline; 2 when the harness itself could not run.
"""

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

SIZES = {
    "smoke": dict(runs=1, settle_max_s=1.5, outage_s=4, partition_s=4, disk_hold_s=3, clock_hold_s=2,
                  offline_s=3, backlog=2000, deadline_s=45, ack_timeout_s=10.0, keepalive_s=10,
                  reconnect_min_s=1.0, reconnect_max_s=10.0, tmpfs_mb=24, warmup_s=3),
    "quick": dict(runs=2, settle_max_s=3.0, outage_s=15, partition_s=15, disk_hold_s=5, clock_hold_s=4,
                  offline_s=10, backlog=10000, deadline_s=120, ack_timeout_s=30.0, keepalive_s=15,
                  reconnect_min_s=1.0, reconnect_max_s=60.0, tmpfs_mb=48, warmup_s=5),
    "full": dict(runs=3, settle_max_s=5.0, outage_s=60, partition_s=30, disk_hold_s=10, clock_hold_s=6,
                 offline_s=20, backlog=50000, deadline_s=180, ack_timeout_s=30.0, keepalive_s=15,
                 reconnect_min_s=1.0, reconnect_max_s=60.0, tmpfs_mb=96, warmup_s=5),
}
FAIL_KEYS = ("lost", "duplicated", "phantom", "mismatched", "holes", "pass_no_record")
COLUMNS = ("committed", "stored", "lost", "duplicated", "phantom", "mismatched", "holes", "pass_no_record",
           "refused")


def say(msg):
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Ctx:
    def __init__(self, cluster, ledger, settings, rng):
        self.cluster, self.ledger, self.s, self.rng = cluster, ledger, settings, rng
        self.notes = []
        self.failures = []
        self.clock_window = set()
        self.hostile = None
        self.run_no = 0

    def note(self, text):
        self.notes.append(text)
        say("  " + text)

    def failed(self, text):
        self.failures.append(text)


class Row:
    def __init__(self, backend, fault, what=""):
        self.backend, self.fault, self.what = backend, fault, what
        self.runs = 0
        self.c = Counter()
        self.recovery = []  # seconds, or None for a timeout
        self.notes = []
        self.failures = []
        self.skipped = None
        self.details = defaultdict(list)

    def bad(self):
        return (any(self.c[k] for k in FAIL_KEYS) or any(r is None for r in self.recovery)
                or bool(self.failures))

    def rec_text(self):
        if self.skipped is not None:
            return "-"
        done = [r for r in self.recovery if r is not None]
        miss = len(self.recovery) - len(done)
        if not self.recovery:
            return "-"
        text = f"{statistics.median(done):.1f} / {max(done):.1f}" if done else ""
        if miss:
            text += (" " if text else "") + f"{miss} TIMEOUT"
        return text


def wait_warm(cluster, ledger, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tops = ledger.tops()
        if all(v > 0 for v in tops.values()) and ledger.all_delivered({d: 1 for d in tops}):
            return True
        time.sleep(0.5)
    return False


def _jumped(ledger, dev, lo, hi):
    from collector.storage import parse_time

    n = fixed = 0
    flags = {}
    for _seq, t, rec, tc, flag in ledger.db.times(dev, lo, hi):
        try:
            if abs((parse_time(t) - parse_time(rec)).total_seconds()) > 3600:
                n += 1
                flags[flag] = flags.get(flag, 0) + 1
                if tc is not None and abs((parse_time(tc) - parse_time(rec)).total_seconds()) <= 3600:
                    fixed += 1
        except (ValueError, TypeError):
            continue
    return n, fixed, flags


def run_hostile(ctx, row):
    from faults.ledger import CollectorDB

    db = CollectorDB(ctx.cluster.db_url)
    t0 = time.monotonic()
    expect = ctx.hostile or {}
    rec = None
    while time.monotonic() - t0 < ctx.s["deadline_s"]:
        if all((db.query("SELECT count(*) FROM chot_event WHERE device_id = ?", (dev,)) or [[0]])[0][0] >= len(g)
               for dev, (g, _bad) in expect.items()):
            rec = time.monotonic() - t0
            break
        time.sleep(0.25)
    row.recovery.append(rec)
    for dev, (good, bad) in expect.items():
        rows = db.query("SELECT seq, uuid FROM chot_event WHERE device_id = ?", (dev,)) or []
        got = {s: u for s, u in rows}
        row.c["committed"] += len(good)
        row.c["stored"] += len(rows)
        lost = [s for s in good if s not in got]
        row.c["lost"] += len(lost)
        if lost:
            row.details["lost"].append(f"{dev}: {len(lost)} of {len(good)} good events not stored")
        if bad in got:
            row.c["phantom"] += 1
            row.details["phantom"].append(f"{dev}: the bad event #{bad} was stored")
        row.c["mismatched"] += sum(1 for s, u in got.items() if s in good and good[s] != u)
    db.close()


def run_backend(backend, settings, seed, only, keep, results):
    from faults.cluster import Cluster
    from faults.injectors import FAULTS
    from faults.ledger import Ledger

    rng = random.Random(f"{seed}-{backend}")
    work = Path(tempfile.mkdtemp(prefix=f"chot-faults-{backend}-"))
    say(f"{backend}: working folder {work}")
    try:
        cluster = Cluster(work, backend, settings, seed=seed)
    except RuntimeError as exc:
        row = Row(backend, "(setup)")
        row.skipped = str(exc)
        row.failures.append(str(exc))
        results.append(row)
        say(f"{backend}: cannot run: {exc}")
        return
    try:
        cluster.start()
        ledger = Ledger(cluster)
        if not wait_warm(cluster, ledger, 90):
            raise RuntimeError("the system did not deliver a first event of every terminal within 90 s "
                               f"(logs in {work})")
        time.sleep(settings["warmup_s"])
        ctx = Ctx(cluster, ledger, settings, rng)
        for fault in FAULTS:
            if only and fault.name not in only:
                continue
            row = Row(backend, fault.name, fault.what)
            results.append(row)
            if backend not in fault.backends:
                row.skipped = f"not applicable on {backend}"
                continue
            why = fault.skip(ctx)
            if why:
                row.skipped = why
                say(f"{backend} {fault.name}: SKIPPED: {why}")
                continue
            ctx.notes, ctx.failures = [], []
            fault.setup(ctx)
            for i in range(settings["runs"]):
                ctx.run_no = i + 1
                ctx.clock_window = set()
                say(f"{backend} {fault.name} run {i + 1}/{settings['runs']}")
                lo = dict(ledger.marks)
                fault.inject(ctx)
                if i == settings["runs"] - 1:
                    fault.teardown(ctx)
                end = time.monotonic()
                row.runs += 1
                if not fault.counted:
                    run_hostile(ctx, row)
                    continue
                upto = ledger.tops()
                rec = ledger.wait_delivered(upto, settings["deadline_s"], t0=end)
                row.recovery.append(rec)
                c, details = ledger.reconcile(upto)
                row.c.update(c)
                for k, v in details.items():
                    row.details[k] += v
                for dev in ctx.clock_window:
                    n, fixed, flags = _jumped(ledger, dev, lo[dev], upto[dev])
                    ctx.note(f"{dev}: {n} events of the window stored with time more than 1 h from received_at, "
                             f"{fixed} of them re-anchored by the collector (time_corrected within 1 h); flags "
                             + (", ".join(f"{k} {v}" for k, v in sorted(flags.items(), key=str)) or "none"))
                say(f"  recovery {'TIMEOUT' if rec is None else f'{rec:.1f} s'}; "
                    + ", ".join(f"{k} {c[k]}" for k in COLUMNS if c[k] or k in ("committed", "stored")))
            row.notes, row.failures = list(ctx.notes), list(ctx.failures)
        # what is left after the last fault, then the whole history
        tail = Row(backend, "(after the last fault)")
        upto = ledger.tops()
        tail.recovery.append(ledger.wait_delivered(upto, settings["deadline_s"]))
        c, details = ledger.reconcile(upto)
        tail.c.update(c)
        tail.runs = 1
        for k, v in details.items():
            tail.details[k] += v
        results.append(tail)
        total = Row(backend, "TOTAL (whole history)")
        c, details = ledger.reconcile_total(upto)
        total.c.update(c)
        total.runs = sum(r.runs for r in results if r.backend == backend and r.fault[0] != "(" and
                         r.skipped is None)
        for k, v in details.items():
            total.details[k] += v
        beyond = ledger.phantoms_beyond()
        if beyond:
            total.c["phantom"] += len(beyond)
            total.details["phantom"] += beyond
        results.append(total)
        logs = scan_logs(cluster)
        if logs:
            total.notes.append("process logs: " + "; ".join(logs))
    except Exception as exc:
        row = Row(backend, "(harness error)")
        row.failures.append(f"{type(exc).__name__}: {exc}")
        row.skipped = "error"
        results.append(row)
        traceback.print_exc()
    finally:
        cluster.close()
        if keep:
            say(f"{backend}: kept {work}")
        else:
            cluster.remove()


def scan_logs(cluster):
    """Tracebacks and the collector's 'unexpected error' in the processes' logs (informational)."""
    out = []
    for path in sorted(cluster.dir.glob("*.log")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        tb = text.count("Traceback (most recent call last)")
        if tb:
            last = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "Traceback", "==="))]
            errs = [ln for ln in last if "Error" in ln or "error" in ln]
            out.append(f"{path.name}: {tb} traceback(s), last error line: {errs[-1][:200] if errs else '?'}")
    return out


def table(results):
    head = ("backend", "fault", "runs", "committed", "stored", "lost", "dup", "phantom", "mismatch", "holes",
            "pass w/o record", "refused", "recovery s (median / max)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.skipped is not None and r.runs == 0:
            why = " ".join(str(r.skipped).split()).replace("|", "/")
            lines.append(f"| {r.backend} | {r.fault} | 0 | skipped: {why} |" + " |" * (len(head) - 4))
            continue
        cells = [r.backend, r.fault + (" **FAIL**" if r.bad() else ""), str(r.runs)]
        cells += [str(r.c[k]) for k in COLUMNS]
        cells.append(r.rec_text())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes_text(results, limit=8):
    out = []
    for r in results:
        items = list(r.notes) + [f"FAILED: {f}" for f in r.failures]
        for k, v in r.details.items():
            if v:
                items.append(f"{k}: " + "; ".join(v[:limit]) + (f" ... ({len(v)} in all)" if len(v) > limit else ""))
        if items:
            out.append(f"- {r.backend} {r.fault}: " + " | ".join(items))
    return "\n".join(out)


def write_doc(path, text):
    p = Path(path)
    start, end = "<!-- faults:latest -->", "<!-- /faults:latest -->"
    old = p.read_text() if p.exists() else f"# Reliability\n\n{start}\n{end}\n"
    if start not in old:
        old += f"\n{start}\n{end}\n"
    a, rest = old.split(start, 1)
    _, b = rest.split(end, 1)
    p.write_text(a + start + "\n" + text + "\n" + end + b)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m faults.run", description=__doc__.split("\n\n")[2])
    ap.add_argument("--seed", type=int, default=1)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="two runs of each fault, shorter outages")
    size.add_argument("--smoke", action="store_true", help="one run of each fault, small and fast (SQLite)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default=None,
                    help="default: both (sqlite for --smoke)")
    ap.add_argument("--only", default="", help="comma-separated fault names (see docs/reliability.md)")
    ap.add_argument("--keep", action="store_true", help="keep the working folders (logs, databases)")
    ap.add_argument("--doc", help="write the table into this markdown file (between faults:latest markers)")
    args = ap.parse_args(argv)
    from faults.injectors import BY_NAME

    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(BY_NAME)
    if unknown:
        ap.error(f"unknown fault(s) {', '.join(sorted(unknown))}; known: {', '.join(BY_NAME)}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = SIZES[mode]
    backend = args.backend or ("sqlite" if args.smoke else "both")
    backends = ("sqlite", "postgresql") if backend == "both" else (backend,)
    t0 = time.monotonic()
    results = []
    for b in backends:
        run_backend(b, settings, args.seed, only, args.keep, results)
    took = time.monotonic() - t0
    cmd = "python -m faults.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"`{cmd.strip()}`: mode {mode}, seed {args.seed}, backends {', '.join(backends)}; "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({platform.machine()}, "
              f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}); {took:.0f} s")
    settings_line = ("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    out = "\n".join([header, "", settings_line, "", table(results), "", notes_text(results)])
    print(out)
    if args.doc:
        write_doc(args.doc, out)
    harness_broken = any(r.fault in ("(setup)", "(harness error)") for r in results)
    bad = any(r.bad() for r in results)
    print(f"\nfaults: {'HARNESS ERROR' if harness_broken else 'FAIL' if bad else 'PASS'} in {took:.0f} s")
    return 2 if harness_broken else 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
