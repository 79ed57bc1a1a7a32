"""Tracing benchmark: contacts of one subject over 14 days with millions of events stored.

Synthetic events over 14 days: N events, N/20 people, N/5000 checkpoints (at least 20); each
person goes to three checkpoints of their own, at uniformly random times. Loading uses the
documented bulk path of each database, not the collector's per-batch path: the schema is made
by collector.storage.Storage (migrate), its secondary indexes are dropped, the rows go in
through one executemany in one transaction (SQLite) or COPY (PostgreSQL), and the indexes are
created again from the same peewee model (Event._schema.create_indexes) - the advice of
PostgreSQL's "Populating a Database" and SQLite's bulk-insert practice. PostgreSQL is ANALYZEd
afterwards (autovacuum would do it). Load time excludes generating the synthetic rows, which is
reported on its own. The collector's own path, Storage.store_batch_counted in batches of 500,
is measured on a sample as the load baseline.

Query: collector.queries.contacts(subject, days=14, window 15 min) for different subjects;
baseline: collector.queries.visits(subject, 14 days) on the same subjects, same round.
"""

import io
import itertools
import logging
import random
import sqlite3
import time
from datetime import datetime, timedelta

import numpy as np

from bench.common import PI4_ASSUMPTION, Area, elapsed, pi4_time, progress

log = logging.getLogger(__name__)

AT = datetime(2021, 8, 23, 0, 0, 0)
DAYS = 14
CHUNK = 500_000
GOAL_MS = 100.0
# Full mode: how many events each backend gets unless --full-tracing (see run()).
FULL_TARGET = 10_000_000
INDEX_FACTOR = 3.0  # measured here: rows phase ~92 s, indexes ~166 s for 10 M in both backends


class Population:
    """The synthetic events, generated chunk by chunk (deterministic for a seed)."""

    def __init__(self, n, seed=42):
        self.n = n
        self.subjects = max(100, n // 20)
        self.checkpoints = max(20, n // 5000)
        rng = random.Random(seed)
        self.keys = np.array([f"{rng.getrandbits(256):064x}" for _ in range(self.subjects)])
        self.seed = seed

    def chunks(self):
        """Yield column dicts of up to CHUNK events."""
        rng = np.random.default_rng(self.seed)
        start = np.datetime64(AT - timedelta(days=DAYS), "s")
        for lo in range(0, self.n, CHUNK):
            m = min(CHUNK, self.n - lo)
            subj = rng.integers(0, self.subjects, m)
            cp = (subj * 7 + rng.integers(0, 3, m)) % self.checkpoints
            secs = rng.integers(0, DAYS * 86400, m)
            t = np.datetime_as_string(start + secs.astype("timedelta64[s]"), unit="us")
            if lo == 0:
                self.first_subjects = subj[:10_000].tolist()  # people certain to have events, however many load
            yield {
                "seq": range(lo + 1, lo + m + 1),
                "cp": cp.tolist(),
                "time_iso": t.tolist(),
                "key": self.keys[subj].tolist(),
                "inout": np.where(rng.integers(0, 2, m) == 0, "in", "out").tolist(),
            }

    def sample_subjects(self, k, seed=7):
        """`k` subject keys of people with events in the first chunk (loaded even when the load stops early)."""
        rng = random.Random(seed)
        return [str(self.keys[rng.choice(self.first_subjects)]) for _ in range(k)]


def _sqlite_rows(ch):
    tsql = [s.replace("T", " ") for s in ch["time_iso"]]
    return zip(
        (f"cp{c}-dev" for c in ch["cp"]), ch["seq"], (f"00000000-0000-4000-8000-{s:012x}" for s in ch["seq"]),
        (f"cp{c}" for c in ch["cp"]), ch["inout"], tsql, itertools.repeat(1), itertools.repeat("boot"),
        ch["seq"], itertools.repeat("camera"), itertools.repeat("native"), itertools.repeat("PASS"),
        itertools.repeat("ok"), ch["key"], itertools.repeat("{}"), tsql, strict=False,
    )


def _pg_text(ch):
    lines = [
        f"cp{c}-dev\t{s}\t00000000-0000-4000-8000-{s:012x}\tcp{c}\t{d}\t{t}\tt\tboot\t{s}\tcamera\tnative\tPASS\tok"
        f"\t{k}\t{{}}\t{t}\n"
        for c, s, d, t, k in zip(ch["cp"], ch["seq"], ch["inout"], ch["time_iso"], ch["key"], strict=True)
    ]
    return "".join(lines)


COLUMNS = ("device_id", "seq", "uuid", "checkpoint", "direction", "time", "clock_synced", "boot_id", "mono_ns",
           "source", "format", "decision", "reason", "subject_key", "subject", "received_at")


def _drop_indexes(storage):
    db = storage.db
    if storage.sqlite:
        names = [r[0] for r in db.execute_sql(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='chot_event' AND sql IS NOT NULL")]
    else:
        names = [r[0] for r in db.execute_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename='chot_event' AND indexname NOT LIKE '%%pkey'")]
    for n in names:
        db.execute_sql(f'DROP INDEX "{n}"')
    return names


class Loader:
    """Bulk-loads one backend; keeps the seconds spent in loading apart from generating."""

    def __init__(self, backend, url, path=None):
        from collector.storage import Storage

        self.backend = backend
        self.storage = Storage(url)
        self.dropped = _drop_indexes(self.storage)
        self.seconds = 0.0
        self.rows = 0
        if backend == "sqlite":
            self.con = sqlite3.connect(path, isolation_level=None)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
            self.con.execute("BEGIN")
            self.sql = (f'INSERT INTO chot_event ({", ".join(COLUMNS)}) VALUES ({", ".join("?" * len(COLUMNS))})')
        else:
            self.cur = self.storage.db.cursor()
            self.storage.db.execute_sql("BEGIN")

    def add(self, ch):
        if self.backend == "sqlite":
            rows = _sqlite_rows(ch)
            t = time.perf_counter()
            self.con.executemany(self.sql, rows)
        else:
            buf = io.StringIO(_pg_text(ch))
            t = time.perf_counter()
            self.cur.copy_expert(f"COPY chot_event ({', '.join(COLUMNS)}) FROM STDIN", buf)
        self.seconds += time.perf_counter() - t
        self.rows += len(ch["seq"])

    def close(self):
        """Release the connections (finish() first to keep what was loaded)."""
        if self.backend == "sqlite":
            try:
                self.con.close()
            except sqlite3.Error:
                pass
        self.storage.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def finish(self):
        """Commit, recreate the indexes (and ANALYZE on PostgreSQL); returns (load s, index s)."""
        t = time.perf_counter()
        if self.backend == "sqlite":
            self.con.execute("COMMIT")
            self.con.close()
            self.storage.db.execute_sql("PRAGMA cache_size=-1000000")
        else:
            self.storage.db.execute_sql("COMMIT")
            self.storage.db.execute_sql("SET maintenance_work_mem = '1GB'")
        self.seconds += time.perf_counter() - t
        t = time.perf_counter()
        self.storage.Event._schema.create_indexes(safe=True)
        if self.backend != "sqlite":
            self.storage.db.execute_sql("ANALYZE chot_event")
        index_s = time.perf_counter() - t
        return self.seconds, index_s


def store_batch_rate(url, n):
    """Events/s of the collector's own path (Storage.store_batch_counted, batches of 500), on a fresh table."""
    from collector.storage import Storage
    from collector.testing import make_event

    events = [make_event(f"sb-d{i % 20}", i // 20 + 1, time=AT - timedelta(seconds=i), subject_key=f"{i:064x}",
                         checkpoint=f"cp{i % 40}") for i in range(n)]
    with Storage(url) as st:
        t = time.perf_counter()
        for i in range(0, n, 500):
            st.store_batch_counted(events[i : i + 500])
        return n / (time.perf_counter() - t)


def _query_round(storages, subjects):
    from collector.queries import contacts, visits

    at = AT.strftime("%Y-%m-%dT%H:%M:%SZ")
    since = (AT - timedelta(days=DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {}
    for name, st in storages.items():
        q, v, found = [], [], []
        for k in subjects:
            t = time.perf_counter()
            res = contacts(st, "key:" + k, days=DAYS, window_min=15, at=at)
            q.append((time.perf_counter() - t) * 1000.0)
            found.append((len(res["visits"]), len(res["contacts"])))
            t = time.perf_counter()
            visits(st, "key:" + k, since, at)
            v.append((time.perf_counter() - t) * 1000.0)
        out[name] = (q, v, found)
    return out


def run(ctx):
    from bench.collector import pg_scratch

    area = Area("tracing", "Tracing: contacts of one subject over 14 days")
    n = ctx.sizes["tracing_events"]
    backends = {"sqlite": f"sqlite:///{ctx.tmp / 'tracing.db'}"}
    drops = []
    if ctx.pg_dsn:
        url, drop = pg_scratch(ctx.pg_dsn, "tracing")
        drops.append(drop)
        backends["postgresql"] = url
    else:
        area.note("PostgreSQL not available: its figures are left out (not measured).")
    if ctx.full_tracing:
        n = FULL_TARGET
    try:
        # the collector's own batch path on a sample, as the load baseline
        sb = {}
        for name, url in backends.items():
            sample_url = url
            if name == "sqlite":
                sample_url = f"sqlite:///{ctx.tmp / 'tracing-sample.db'}"
            else:
                sample_url, d = pg_scratch(ctx.pg_dsn, "sample")
                drops.append(d)
            sb[name] = store_batch_rate(sample_url, ctx.sizes["tracing_store_batch_events"])
            progress(f"tracing: store_batch on {name}: {sb[name]:,.0f} events/s")
        target = n
        pop = Population(n)
        progress(f"tracing: loading {n:,} events ({pop.subjects:,} people, {pop.checkpoints:,} checkpoints) "
                 f"into {', '.join(backends)}")
        loaders = {name: Loader(name, url, path=ctx.tmp / "tracing.db" if name == "sqlite" else None)
                   for name, url in backends.items()}
        gen_s = 0.0
        t_load = time.monotonic()
        chunks = pop.chunks()
        stopped = None
        while True:
            t = time.perf_counter()
            ch = next(chunks, None)
            gen_s += time.perf_counter() - t
            if ch is None:
                break
            for ld in loaders.values():
                ld.add(ch)
            done = loaders[next(iter(loaders))].rows
            if done % 2_000_000 == 0 or done == n:
                progress(f"tracing: {done:,} of {n:,} rows loaded")
            # stay inside the run's budget: rows + indexes take about INDEX_FACTOR x the rows phase so far
            spent = time.monotonic() - t_load
            left = spent / done * n * INDEX_FACTOR - spent
            if done < n and not ctx.full_tracing and elapsed() + left > ctx.budget_s:
                stopped = done
                progress(f"tracing: stopping at {done:,} events: {n:,} would end the run after the "
                         f"{ctx.budget_s:.0f} s budget (use --full-tracing for all of them)")
                break
        if stopped:
            area.note(f"Only {stopped:,} of the {n:,} events were loaded: loading all of them into "
                      f"{' and '.join(backends)} would not fit the run's {ctx.budget_s:.0f} s budget on this machine "
                      "today (projected from the rows loaded so far). The figures are for what was loaded; "
                      "`make bench BENCH_ARGS=--full-tracing` loads all 10,000,000 however long it takes.")
            n = stopped
        load = {}
        for name, ld in loaders.items():
            load[name] = ld.finish()
            progress(f"tracing: {name}: rows {load[name][0]:.1f} s, indexes {load[name][1]:.1f} s")
        subjects = pop.sample_subjects(ctx.sizes["tracing_queries"])
        storages = {name: ld.storage for name, ld in loaders.items()}
        _query_round(storages, subjects[:2])  # warm the caches, as a running collector's would be
        per = {name: {"q": [], "v": []} for name in storages}
        found = None
        for r in range(ctx.runs):
            res = _query_round(storages, subjects)
            for name, (q, v, f) in res.items():
                per[name]["q"].append(float(np.median(q)))
                per[name]["v"].append(float(np.median(v)))
                found = f
            progress(f"tracing: query round {r + 1}/{ctx.runs}: "
                     + ", ".join(f"{k} {per[k]['q'][-1]:.1f} ms" for k in per))
        for name in storages:
            goal = {"text": f"< {GOAL_MS:.0f} ms per query"}
            fig = area.figure(
                f"contacts.{name}", f"contacts(subject, 14 days, +-15 min), {n:,} events, {name}", "ms/query",
                per[name]["q"], baseline=f"visits.{name}", base_values=per[name]["v"],
                base_label="visits(subject, 14 days), same subjects", goal=goal,
                pi4={"estimate": pi4_time(float(np.median(per[name]["q"])), "ms/query") + " (if the data fits in "
                     "RAM)", "basis": PI4_ASSUMPTION + "; the collector normally runs on a server, not a Pi"},
                extra={"events": n, "events_target": target, "subjects_queried": len(subjects),
                       "visits_per_subject_median": float(np.median([a for a, _ in found])),
                       "contacts_per_subject_median": float(np.median([b for _, b in found]))},
            )
            goal["met"] = fig["median"] < GOAL_MS
        for name, (rows_s, index_s) in load.items():
            area.figure(
                f"load.{name}", f"bulk load of {n:,} events, {name} "
                f"({'executemany, one transaction' if name == 'sqlite' else 'COPY'}; + indexes)",
                "events/s", [n / (rows_s + index_s)], baseline=f"store_batch.{name}", base_values=[sb[name]],
                base_label="Storage.store_batch_counted, batches of 500 (sample of "
                f"{ctx.sizes['tracing_store_batch_events']:,})", higher_is_better=True,
                pi4={"estimate": "not applicable (a collector runs on a server)", "basis": PI4_ASSUMPTION},
                extra={"events": n, "events_target": target, "rows_s": rows_s, "index_s": index_s,
                       "total_s": rows_s + index_s},
            )
        area.note(f"Bulk load times ({n:,} events): " + "; ".join(
            f"{k}: {a:.1f} s rows + {b:.1f} s indexes = {a + b:.1f} s" for k, (a, b) in load.items())
            + f". Generating the synthetic rows took {gen_s:.1f} s more (shared by both backends, not counted).")
        for ld in loaders.values():
            ld.close()
    finally:
        for d in drops:
            d()
    return area
