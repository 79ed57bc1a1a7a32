"""Tracing benchmark: contacts of one person over 14 days with millions of events stored.

Synthetic events over 14 days: N events, N/20 people, N/5000 checkpoints (at least 20); each
person goes to three checkpoints of their own, at uniformly random times. Every row is what the
collector stores for a verified credential (collector.keys.CollectorKeys.columns): `person_key`
= HMAC(index key, person id) of the person's synthetic ID number, computed with the collector's
own PersonIndex, `claim_key` NULL, and `personal` a real DataCipher text (ChaCha20-Poly1305
under the data key, bound to the row's device_id|seq as associated data, with its own random
nonce), which the queries decrypt for every person they show. Per row the plaintext is short:
the person's ID number, name (with diacritics) and phone and the person id, about 130 bytes
(a terminal's full native person is ~330; the cost of one AEAD hardly depends on it at these
sizes, the bytes stored do). The rows are encrypted one by one with the data key through the
`cryptography` AEAD directly (the same algorithm, key, AAD and text format as DataCipher.encrypt,
without its per-row JSON encoding), and one row of each chunk is decrypted back with the
collector's DataCipher to prove the format. This encryption is part of generating the rows,
timed apart from loading (the collector encrypts at ingest, not at load).

Loading uses the documented bulk path of each database, not the collector's per-batch path: the
schema is made by collector.storage.Storage (migrate; on PostgreSQL chot_event is partitioned by
day and `Storage.ensure_partition(day)` is called for every day of the data before COPY, so the
rows land in their day partitions, not the default one), its secondary indexes are dropped, the
rows go in through one executemany in one transaction (SQLite) or COPY (PostgreSQL), and the
indexes are created again from the same peewee model (Event._schema.create_indexes) - the advice
of PostgreSQL's "Populating a Database" and SQLite's bulk-insert practice. PostgreSQL is ANALYZEd
afterwards (autovacuum would do it). The collector's own path, Storage.store_batch_counted in
batches of 500 of opened items (HMAC and encryption included), is measured on a sample as the
load baseline.

Query: collector.queries.contacts(ID number, case, actor, days=14, window 15 min) for different
people, given as a tracer types them (the query computes the HMAC, decrypts the rows it shows and
writes its audit row: all of it is timed); baseline: collector.queries.visits(ID number, case,
actor, 14 days) on the same people, same round (also audited).
"""

import base64
import io
import itertools
import json
import logging
import os
import random
import secrets
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from bench.common import PI4_ASSUMPTION, Area, BenchError, elapsed, native_people, pi4_time, progress

log = logging.getLogger(__name__)

AT = datetime(2021, 8, 23, 0, 0, 0)
DAYS = 14
CHUNK = 500_000
GOAL_MS = 100.0
# Full mode: how many events each backend gets unless --full-tracing (see run()).
FULL_TARGET = 10_000_000
INDEX_FACTOR = 3.0  # measured here: rows phase ~92 s, indexes ~166 s for 10 M in both backends
CASE = "bench-case-1"
ACTOR = "bench"

_SURNAMES = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô",
             "Dương", "Lý")
_MIDDLE = ("Văn", "Thị", "Hữu", "Ngọc", "Đức", "Thu", "Minh", "Thanh")
_GIVEN = ("An", "Bình", "Cường", "Dũng", "Hà", "Hạnh", "Hoa", "Hương", "Khoa", "Lan", "Long", "Mai", "Nam", "Quân",
          "Sơn", "Thảo", "Trang", "Tuấn", "Việt", "Yến")


def id_number(i):
    """The synthetic ID number (CCCD layout, 12 digits: Hanoi's 001, then 9 digits) of person `i`."""
    return f"001{i + 100_000_000:09d}"


def make_keys(key_dir):
    """A collector key folder whose data key this module knows (for the fast encryption path); (keys, data key)."""
    from chot.personal import write_secret
    from collector.keys import CollectorKeys, make_key_dir

    make_key_dir(key_dir, data=False)
    data_key = secrets.token_bytes(32)
    write_secret(key_dir / "data.key", data_key.hex() + "\n")
    return CollectorKeys.from_dir(key_dir), data_key


class Population:
    """The synthetic events, generated chunk by chunk (deterministic for a seed, but for the nonces)."""

    def __init__(self, n, keys, data_key, seed=42):
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        from chot.personal import person_id_for_id

        self.n = n
        self.subjects = max(100, n // 20)
        self.checkpoints = max(20, n // 5000)
        self.seed = seed
        self.collector_keys = keys
        self._aead = ChaCha20Poly1305(data_key)
        self._prefix = keys.cipher.kid + ":"
        t = time.perf_counter()
        ids = [id_number(i) for i in range(self.subjects)]
        self.ids = ids
        # the collector's own index: person_key = HMAC(index key, "id:" + ID number)
        self.keys = np.array([keys.person_key(person_id_for_id(x)) for x in ids])
        ns, nm, ng = len(_SURNAMES), len(_MIDDLE), len(_GIVEN)
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self.plain = [  # what DataCipher.encrypt encodes: JSON, UTF-8, compact
            dumps({"person": {"id_number": x, "name": f"{_SURNAMES[i % ns]} {_MIDDLE[(i // ns) % nm]} "
                              f"{_GIVEN[(i // (ns * nm)) % ng]}", "phone": f"09{(i * 7919) % 10**8:08d}"},
                   "person_id": "id:" + x, "credential_id": None}).encode("utf-8")
            for i, x in enumerate(ids)
        ]
        self.index_s = time.perf_counter() - t  # the HMACs and plaintexts of every person

    def _personal(self, devs, seqs, subj):
        """One DataCipher text per row: its own nonce, AAD = device_id|seq (what DataCipher.encrypt writes)."""
        enc, plain, prefix = self._aead.encrypt, self.plain, self._prefix
        b64 = base64.urlsafe_b64encode
        nonces = os.urandom(12 * len(seqs))
        out = []
        for k, (d, s, p) in enumerate(zip(devs, seqs, subj, strict=True)):
            nonce = nonces[12 * k : 12 * k + 12]
            out.append(prefix + b64(nonce + enc(nonce, plain[p], f"{d}|{s}".encode())).rstrip(b"=").decode("ascii"))
        return out

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
            seqs = range(lo + 1, lo + m + 1)
            cps = cp.tolist()
            devs = [f"cp{c}-dev" for c in cps]
            subjects = subj.tolist()
            personal = self._personal(devs, seqs, subjects)
            # the format is the collector's: its DataCipher opens a row of every chunk
            got = self.collector_keys.decrypt(personal[-1], devs[-1], seqs[-1])
            if got["person"]["id_number"] != self.ids[subjects[-1]]:
                raise BenchError("tracing: the synthetic personal fields do not open with the collector's DataCipher")
            yield {
                "seq": seqs,
                "dev": devs,
                "cp": cps,
                "time_iso": t.tolist(),
                "key": self.keys[subj].tolist(),
                "personal": personal,
                "inout": np.where(rng.integers(0, 2, m) == 0, "in", "out").tolist(),
            }

    def sample_subjects(self, k, seed=7):
        """`k` ID numbers of people with events in the first chunk (loaded even when the load stops early)."""
        rng = random.Random(seed)
        return [self.ids[rng.choice(self.first_subjects)] for _ in range(k)]

    def days(self):
        """The days the events fall on (for PostgreSQL's day partitions)."""
        first = AT - timedelta(days=DAYS)
        return [first + timedelta(days=d) for d in range(DAYS + 1)]


def _column_values(ch, sqlite):
    """{column: the chunk's values} of every column the bulk loader knows (a row of a verified PASS).

    time_corrected and clock_flag are for a schema that has them (the time is as stamped, the
    clock synchronised: flag "ok"); a column of EVENT_COLUMNS missing here stops the benchmark.
    """
    r = itertools.repeat
    t = [s.replace("T", " ") for s in ch["time_iso"]] if sqlite else ch["time_iso"]
    null = None if sqlite else "\\N"
    true = 1 if sqlite else "t"
    seqs = list(ch["seq"]) if sqlite else [str(x) for x in ch["seq"]]
    return {
        "device_id": ch["dev"], "seq": seqs, "uuid": [f"00000000-0000-4000-8000-{x:012x}" for x in ch["seq"]],
        "checkpoint": [f"cp{c}" for c in ch["cp"]], "direction": ch["inout"], "time": t, "clock_synced": r(true),
        "boot_id": r("boot"), "mono_ns": seqs, "source": r("camera"), "format": r("native"), "decision": r("PASS"),
        "reason": r("ok"), "verified": r(true), "person_key": ch["key"], "claim_key": r(null),
        "personal": ch["personal"], "sealed": r(null), "seal_error": r(null), "received_at": t,
        "time_corrected": t, "clock_flag": r("ok"), "refers_seq": r(null), "refers_uuid": r(null),
    }


def _ordered(ch, columns, sqlite):
    values = _column_values(ch, sqlite)
    missing = [c for c in columns if c not in values]
    if missing:
        raise BenchError(f"tracing: the bulk loader does not know the column(s) {', '.join(missing)} of chot_event: "
                         "add them to bench/tracing.py _column_values")
    return [values[c] for c in columns]


def _sqlite_rows(ch, columns):
    return zip(*_ordered(ch, columns, True), strict=False)


def _pg_text(ch, columns):
    return "\n".join(map("\t".join, zip(*_ordered(ch, columns, False), strict=False))) + "\n"


def _columns():
    from collector.storage import EVENT_COLUMNS

    return EVENT_COLUMNS


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

    def __init__(self, backend, url, keys, days, path=None):
        from collector.storage import Storage

        self.backend = backend
        self.storage = Storage(url, keys=keys)
        self.dropped = _drop_indexes(self.storage)
        self.seconds = 0.0
        self.rows = 0
        self.columns = _columns()
        if backend != "sqlite":  # every day's partition first, so that COPY routes the rows into them
            t = time.perf_counter()
            for day in days:
                self.storage.ensure_partition(day)
            self.seconds += time.perf_counter() - t
        if backend == "sqlite":
            self.con = sqlite3.connect(path, isolation_level=None)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
            self.con.execute("BEGIN")
            cols = self.columns
            self.sql = f'INSERT INTO chot_event ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})'
        else:
            self.cur = self.storage.db.cursor()
            self.storage.db.execute_sql("BEGIN")

    def add(self, ch):
        if self.backend == "sqlite":
            rows = _sqlite_rows(ch, self.columns)
            t = time.perf_counter()
            self.con.executemany(self.sql, rows)
        else:
            buf = io.StringIO(_pg_text(ch, self.columns))
            t = time.perf_counter()
            self.cur.copy_expert(f"COPY chot_event ({', '.join(self.columns)}) FROM STDIN", buf)
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


def _check_partitions(storage, n):
    """The number of day partitions of chot_event; BenchError when a row went to the default partition."""
    from collector.storage import PG_DEFAULT_PARTITION

    db = storage.db
    in_default = db.execute_sql(f'SELECT count(*) FROM "{PG_DEFAULT_PARTITION}"').fetchone()[0]
    total = db.execute_sql('SELECT count(*) FROM "chot_event"').fetchone()[0]
    if in_default or total != n:
        raise BenchError(f"tracing: {in_default} of {total} rows are in the default partition (expected {n} rows, "
                         "all in day partitions)")
    return sum(1 for _name, day in storage.partitions() if day is not None)


def store_batch_rate(url, n, keys):
    """Events/s of the collector's own path (Storage.store_batch_counted, batches of 500), on a fresh table.

    The items are as the subscriber hands them over: each event with its sealed part opened (a
    native person), so the storage's HMAC index and at-rest encryption are in the time. Times
    are the last hours before now (so PostgreSQL creates and uses today's partitions).
    """
    from chotdemo.testing import make_item
    from collector.storage import Storage

    people = native_people(min(n, 1000), seed=5)
    now = datetime.now(UTC).replace(tzinfo=None)
    items = []
    for i in range(n):
        person, pid, cred = people[i % len(people)]
        items.append(make_item(f"sb-d{i % 20}", i // 20 + 1, person=person, person_id=pid, credential_id=cred,
                               time=now - timedelta(seconds=n - i), checkpoint=f"cp{i % 40}"))
    with Storage(url, keys=keys) as st:
        t = time.perf_counter()
        for i in range(0, n, 500):
            st.store_batch_counted(items[i : i + 500])
        return n / (time.perf_counter() - t)


def _query_round(storages, people):
    from collector.queries import contacts, visits

    at = AT.strftime("%Y-%m-%dT%H:%M:%SZ")
    since = (AT - timedelta(days=DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {}
    for name, st in storages.items():
        q, v, found = [], [], []
        for idn in people:
            t = time.perf_counter()
            res = contacts(st, idn, CASE, ACTOR, days=DAYS, window_min=15, at=at)
            q.append((time.perf_counter() - t) * 1000.0)
            found.append((len(res["visits"]["verified"]), len(res["contacts"])))
            if res["person"].get("id_number") != idn or any(not c["person"].get("name") for c in res["contacts"]):
                raise BenchError(f"tracing ({name}): contacts() did not return the decrypted fields of the people")
            t = time.perf_counter()
            visits(st, idn, CASE, ACTOR, since, at)
            v.append((time.perf_counter() - t) * 1000.0)
        out[name] = (q, v, found)
    return out


def run(ctx):
    from bench.collector import pg_scratch

    area = Area("tracing", "Tracing: contacts of one person over 14 days (HMAC index, fields encrypted at rest)")
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
    key_dir = ctx.tmp / "tracing-keys"
    keys, data_key = make_keys(key_dir)
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
            sb[name] = store_batch_rate(sample_url, ctx.sizes["tracing_store_batch_events"], keys)
            progress(f"tracing: store_batch on {name}: {sb[name]:,.0f} events/s")
        target = n
        pop = Population(n, keys, data_key)
        progress(f"tracing: loading {n:,} events ({pop.subjects:,} people, {pop.checkpoints:,} checkpoints) "
                 f"into {', '.join(backends)}")
        loaders = {name: Loader(name, url, keys, pop.days(), path=ctx.tmp / "tracing.db" if name == "sqlite" else None)
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
        parts = 0
        for name, ld in loaders.items():
            load[name] = ld.finish()
            progress(f"tracing: {name}: rows {load[name][0]:.1f} s, indexes {load[name][1]:.1f} s")
            if name == "postgresql":
                parts = _check_partitions(ld.storage, n)
        subjects = pop.sample_subjects(ctx.sizes["tracing_queries"])  # ID numbers, as a tracer types them
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
                f"contacts.{name}", f"contacts(ID number, case, 14 days, +-15 min), {n:,} events, {name}"
                + (" (day partitions)" if name == "postgresql" else ""), "ms/query",
                per[name]["q"], baseline=f"visits.{name}", base_values=per[name]["v"],
                base_label="visits(ID number, case, 14 days), same people", goal=goal,
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
                f"({'executemany, one transaction' if name == 'sqlite' else 'COPY into day partitions'}; + indexes)",
                "events/s", [n / (rows_s + index_s)], baseline=f"store_batch.{name}", base_values=[sb[name]],
                base_label="Storage.store_batch_counted, batches of 500 opened items, HMAC and encryption "
                f"included (sample of {ctx.sizes['tracing_store_batch_events']:,})", higher_is_better=True,
                pi4={"estimate": "not applicable (a collector runs on a server)", "basis": PI4_ASSUMPTION},
                extra={"events": n, "events_target": target, "rows_s": rows_s, "index_s": index_s,
                       "total_s": rows_s + index_s},
            )
        area.note(f"Bulk load times ({n:,} events): " + "; ".join(
            f"{k}: {a:.1f} s rows + {b:.1f} s indexes = {a + b:.1f} s" for k, (a, b) in load.items())
            + f". Generating the synthetic rows took {gen_s:.1f} s more (shared by both backends, not counted), "
            f"most of it encrypting each row's personal fields (ChaCha20-Poly1305, one nonce and AAD per row: "
            f"{gen_s / max(n, 1) * 1e6:.1f} µs per row in all), plus {pop.index_s:.1f} s for the HMAC index keys "
            f"and plaintexts of the {pop.subjects:,} people.")
        if "postgresql" in loaders:
            area.note(f"PostgreSQL: every row is in a day partition of chot_event ({parts} created, one per day of "
                      "the data, by Storage.ensure_partition before COPY), none in the default partition.")
        area.note("Every query names a case and an actor and writes its audit row (chot_audit), as the CLI and "
                  "the API do; that write is in the time (on SQLite a commit with synchronous FULL).")
        for ld in loaders.values():
            ld.close()
    finally:
        for d in drops:
            d()
    return area
