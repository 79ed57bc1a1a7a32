"""Outbox benchmark: durable commits per second, and the backlog drain to the collector.

Every event is a v2 event as the terminal appends it: a uuid, `verified` true and its personal
part sealed (chot.personal.Sealer to a collector key folder's seal.pub, a realistic native
declaration's person from bench.common.native_people). The fields, the sealing included, are
prepared before the clock starts: the sealing cost is in the pipeline and privacy areas.

Commits: Outbox.append (one event, committed before it returns) with synchronous FULL (the
default) and NORMAL, against the floor of a bare sqlite3 INSERT + COMMIT of a body of the same
size (the mean stored body) with the same pragmas (WAL, same synchronous), interleaved in each round.

Drain: an outbox holding `drain_events` undelivered events (100,000 in the full run; filled once,
then copied for each run) is drained by the real Link (mqtt.batch 100, mqtt.inflight 100, the
defaults) through a private Mosquitto (LocalBroker) to the real Collector on SQLite, until the
collector's ack covers the last event. Baseline, same round: the same drain from another copy
to the same Collector code with its storage replaced by a no-op that acks at once
(bench.collector.NullStorage): the terminal, broker and MQTT path without the database. Both
collectors open every sealed part (the no-op storage stands after the opening); the real one
also indexes the person (HMAC) and encrypts the fields at rest.
"""

import logging
import shutil
import sqlite3
import time
import uuid as uuidlib

from bench.common import PI4_ASSUMPTION, Area, BenchError, collector_key_dir, native_people, pi4_rate, progress

log = logging.getLogger(__name__)

DEVICE = "bench-term-1"


def prepared_fields(n, seal_pub):
    """`n` events' fields as the terminal gives them to Outbox.append: uuid, verified, sealed (a Sealer per call)."""
    from chot.personal import Sealer

    sealer = Sealer.from_file(seal_pub)
    people = native_people(min(n, 1000), seed=3)
    out = []
    for i in range(n):
        person, pid, cred = people[i % len(people)]
        u = str(uuidlib.uuid4())
        out.append({"uuid": u, "checkpoint": "bench-gate-1", "direction": "in", "source": "camera",
                    "format": "native", "decision": "PASS", "reason": "ok", "verified": True,
                    "sealed": sealer.seal(u, person, pid, cred)})
    return out


def _mean_body(path):
    con = sqlite3.connect(path)
    try:
        return int(con.execute("SELECT avg(length(body)) FROM event").fetchone()[0])
    finally:
        con.close()


def _outbox_rate(path, sync, fields):
    from device.uplink.outbox import Outbox

    with Outbox(path, synchronous=sync, device_id=DEVICE) as ob:
        ob.append(fields[0])  # warm-up
        t = time.perf_counter()
        for f in fields[1:]:
            ob.append(f)
        rate = (len(fields) - 1) / (time.perf_counter() - t)
    return rate, _mean_body(path)


def _bare_rate(path, sync, n, body_len):
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE IF NOT EXISTS event (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    body = "x" * body_len
    t = time.perf_counter()
    for _ in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO event (body) VALUES (?)", (body,))
        con.execute("COMMIT")
    rate = n / (time.perf_counter() - t)
    con.close()
    return rate


def commits(ctx, area, seal_pub):
    rates = {s: [] for s in ("FULL", "NORMAL")}
    bare = {s: [] for s in rates}
    body_lens = []
    for r in range(ctx.runs):
        for sync in rates:
            n = ctx.sizes["outbox_commits"][sync]
            fields = prepared_fields(n + 1, seal_pub)  # a new uuid and sealed part per event, as on a terminal
            rate, body_len = _outbox_rate(ctx.tmp / f"ob-{sync}-{r}.db", sync, fields)
            body_lens.append(body_len)
            rates[sync].append(rate)
            bare[sync].append(_bare_rate(ctx.tmp / f"bare-{sync}-{r}.db", sync, n, body_len))
        progress(f"outbox: commits round {r + 1}/{ctx.runs}: FULL {rates['FULL'][-1]:,.0f}/s, "
                 f"NORMAL {rates['NORMAL'][-1]:,.0f}/s")
    for sync in rates:
        area.figure(
            f"commits.{sync}", f"Outbox.append, durable commits, synchronous {sync}"
            + (" (default)" if sync == "FULL" else ""), "commits/s", rates[sync], baseline=f"commits.{sync}.bare",
            base_values=bare[sync], base_label="bare sqlite3 INSERT+COMMIT, same pragmas", higher_is_better=True,
            pi4={"estimate": pi4_rate(_med(rates[sync]), "commits/s") + (" if the SD card keeps up" if sync == "FULL"
                                                                          else ""),
                 "basis": PI4_ASSUMPTION + ("; FULL waits for fsync: on an SD card an fsync often takes 2-10 ms "
                                            "(ASSUMPTION, card-dependent), which would cap FULL at ~100-500 "
                                            "commits/s" if sync == "FULL" else "")},
            extra={"commits_per_run": ctx.sizes["outbox_commits"][sync]},
        )
    area.note(f"An event as stored (v2, with its sealed part) is {_med(body_lens):,} bytes of JSON; the bare "
              "baseline inserts a body of that length.")


def _terminal_cfg(path, port):
    from chot.config import validate
    from device.config import SCHEMA

    return validate({
        "device": {"id": DEVICE, "checkpoint": "bench-gate-1", "direction": "in"},
        "outbox": {"path": str(path), "synchronous": "NORMAL"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "keepalive_s": 30, "ack_timeout_s": 60.0,
                 "status_interval_s": 600.0, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
    }, SCHEMA)


def fill(path, n, seal_pub):
    """An outbox at `path` holding `n` undelivered sealed events (appended in one transaction to save time)."""
    from device.uplink.outbox import Outbox

    fields = prepared_fields(n, seal_pub)
    with Outbox(path, synchronous="NORMAL", device_id=DEVICE, max_rows=max(1_000_000, 2 * n)) as ob:
        t = time.perf_counter()
        with ob._db.atomic():  # bench only: one transaction around the appends
            for f in fields:
                ob.append(f)
        return time.perf_counter() - t


def drain(ctx, area, key_dir):
    from bench.collector import NullStorage, collector_cfg
    from collector.subscriber import Collector
    from device.uplink.link import Link
    from device.uplink.outbox import Outbox
    from provisioning.localbroker import LocalBroker

    n = ctx.sizes["drain_events"]
    template = ctx.tmp / "drain-template.db"
    progress(f"outbox: filling a backlog of {n:,} events")
    fill_s = fill(template, n, key_dir / "seal.pub")
    rates, bare = [], []
    broker = LocalBroker(ctx.tmp / "drain-broker").start()
    try:
        for r in range(ctx.sizes["drain_runs"]):
            # baseline first (the ack-only collector), then the real one; each on a fresh copy
            for kind in ("nostore", "sqlite"):
                path = ctx.tmp / f"drain-{r}-{kind}.db"
                shutil.copy(template, path)
                cfg = _terminal_cfg(path, broker.port)
                url = f"sqlite:///{ctx.tmp / f'drain-collector-{r}.db'}"
                storage = NullStorage() if kind == "nostore" else None
                ccfg = collector_cfg(broker.port, url, f"bench-drain-{r}-{kind}", key_dir)
                with Collector(ccfg, storage=storage) as col, Outbox.from_config(cfg) as ob:
                    col.wait_subscribed(10)
                    link = Link(cfg, ob)
                    try:
                        t0 = time.perf_counter()
                        link.start()
                        if not link.wait_acked(n, 600):
                            raise BenchError(f"drain ({kind}): acked only up to {link.acked_seq} of {n} within 600 s; "
                                             "check the collector's and the broker's logs")
                        (bare if kind == "nostore" else rates).append(n / (time.perf_counter() - t0))
                    finally:
                        link.close()
                    st = col.stats()
                    if st.get("sealed_errors") or st.get("rejected_total"):
                        raise BenchError(f"drain ({kind}): sealed parts not opened {st['sealed_errors']}, rejected "
                                         f"{st['rejected']}")
            progress(f"outbox: drain round {r + 1}: {rates[-1]:,.0f} events/s (to an ack-only collector "
                     f"{bare[-1]:,.0f})")
    finally:
        broker.stop()
    area.figure(
        "drain", f"backlog drain, {n:,} sealed events to all acked (Link -> Mosquitto -> Collector on SQLite)",
        "events/s", rates, baseline="drain.bare", base_values=bare,
        base_label="same drain to the Collector with a no-op storage (opens sealed parts, acks; no database)",
        higher_is_better=True,
        pi4={"estimate": pi4_rate(_med(rates), "events/s") + " from the Pi (the collector is on a server)",
             "basis": PI4_ASSUMPTION + "; on a Pi only the terminal side (outbox reads, JSON, paho) is slower; the "
             "collector side runs on a server and the network is rarely the limit"},
        extra={"events": n, "fill_s": fill_s},
    )
    area.note(f"The drain backlog ({n:,} sealed events) was filled once in {fill_s:.1f} s (in one transaction) and "
              "copied for each run; the terminal's outbox runs with synchronous NORMAL here, the collector with "
              "its defaults (batch 500, synchronous FULL).")


def run(ctx):
    area = Area("outbox", "Outbox: durable commits and backlog drain (v2 events, sealed)")
    key_dir = collector_key_dir(ctx.tmp / "collector-keys")
    commits(ctx, area, key_dir / "seal.pub")
    drain(ctx, area, key_dir)
    return area


def _med(vals):
    vals = sorted(vals)
    return vals[len(vals) // 2] if vals else 0.0
