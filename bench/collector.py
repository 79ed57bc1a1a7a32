"""Collector benchmark: events per second stored, against a bare paho-mqtt subscriber that only counts.

One private Mosquitto (provisioning.localbroker.LocalBroker). In each round the consumers take
turns on the same broker, each alone: the bare subscriber (paho-mqtt, QoS 1, counts messages),
the Collector with its storage replaced by a no-op (a diagnostic: what MQTT, validation and acks
cost without a database), the real Collector on SQLite and the real Collector on PostgreSQL (a scratch database, dropped
afterwards). For each, two publisher processes (bench/publish.py, 10 terminals each, one event
per message, QoS 1, 100 in flight) publish `collector_messages` events at full speed; the rate is
events / (time from "go" to the last event stored, or counted). The ratio to the bare subscriber
of the same round is the figure; goals: >= 60% of the bare rate and >= 20,000 events/s.
The Collector runs with its production defaults (batch_size 500, batch_max_wait_ms 200,
sqlite_synchronous FULL, receive_maximum 1000); only the session expiry is 0 so that a finished
round leaves no session behind.
"""

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from bench.common import PI4_ASSUMPTION, Area, BenchError, pi4_rate, progress, wait_until

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PUBLISHERS = 2
DEVICES_PER_PUBLISHER = 10
GOAL_RATIO = 0.6
GOAL_RATE = 20_000


class BareCounter:
    """A paho-mqtt subscriber that only counts the messages (QoS 1, acked by paho on return)."""

    def __init__(self, port, topic="chot/v1/dev/+/event"):
        self.count = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise BenchError(f"the bare subscriber could not subscribe at 127.0.0.1:{port}: is the broker running?")

    def _on_message(self, client, userdata, msg):
        self.count += 1

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NullStorage:
    """A diagnostic stand-in for collector.storage.Storage that stores nothing and acks every seq at once.

    With it the Collector runs its MQTT, validation and ack path only: the difference to the real
    storage shows what the database path costs.
    """

    safe_url = "null://"

    def store_batch_counted(self, events):
        acks = {}
        for ev in events:
            acks[ev["device_id"]] = max(acks.get(ev["device_id"], 0), ev["seq"])
        return acks, len(events)

    def update_status(self, device_id, status):
        pass

    def open_gaps(self, older_than_s=0.0, now=None):
        return []

    def connection(self):
        import contextlib

        return contextlib.nullcontext()

    def close(self):
        pass


class Publishers:
    """Publisher processes (bench/publish.py), prepared and connected, released together by `go()`."""

    def __init__(self, specs):
        self.procs = []
        for spec in specs:
            p = subprocess.Popen([sys.executable, "-m", "bench.publish", json.dumps(spec)], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
        for p in self.procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                self.close()
                raise BenchError(f"a publisher (bench/publish.py) did not start: {line!r}; run it by hand to see why")

    def go(self):
        t = time.perf_counter()
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return t

    def results(self, timeout=600):
        out = []
        for p in self.procs:
            try:
                line = p.stdout.readline()
                out.append(json.loads(line))
                p.wait(timeout)
            except (ValueError, subprocess.TimeoutExpired):
                out.append(None)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def pg_scratch(dsn, tag):
    """Create a scratch database next to `dsn`; return (its URL, a function that drops it)."""
    import psycopg2

    name = f"chot_bench_{tag}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    base = dsn.rpartition("/")[0]

    def drop():
        a = psycopg2.connect(dsn)
        a.autocommit = True
        a.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        a.close()

    return f"{base}/{name}", drop


def collector_cfg(port, url, cid):
    from collector.config import config_from_dict

    return config_from_dict({
        "collector": {"id": cid, "database": url, "gap_report_s": 3600.0},
        "mqtt": {"host": "127.0.0.1", "port": port, "session_expiry_s": 0, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 1.0},
        "http": {"enabled": False},
    })


def _specs(port, tag, total):
    per = total // PUBLISHERS
    return [{"port": port, "messages": per,
             "devices": [f"{tag}-p{p}-d{d}" for d in range(DEVICES_PER_PUBLISHER)]} for p in range(PUBLISHERS)]


def measure(port, consumer, tag, total, url=None):
    """(events/s, publisher rates) for one consumer ('bare' or 'collector' on `url`)."""
    from collector.subscriber import Collector

    specs = _specs(port, tag, total)
    n = sum(s["messages"] for s in specs)
    pubs = Publishers(specs)
    try:
        if consumer == "bare":
            with BareCounter(port) as bare:
                t0 = pubs.go()
                ok = wait_until(lambda: bare.count >= n, 300, step=0.002)
                t1 = time.perf_counter()
                got = bare.count
        else:
            storage = NullStorage() if url == "null://" else None
            with Collector(collector_cfg(port, "sqlite:///unused.db" if storage else url, f"bench-{tag}"),
                           storage=storage) as col:
                col.wait_subscribed(10)
                t0 = pubs.go()
                ok = wait_until(lambda: col.stats().get("stored", 0) >= n, 300, step=0.002)
                t1 = time.perf_counter()
                got = col.stats().get("stored", 0)
        res = pubs.results()
    finally:
        pubs.close()
    if not ok:
        raise BenchError(f"{consumer}: only {got} of {n} events arrived within 300 s; check the broker's log and "
                         "its max_queued_messages / max_inflight_messages (0 = unlimited)")
    pub_rate = sum(r["published"] for r in res if r) / max(r["seconds"] for r in res if r)
    return n / (t1 - t0), pub_rate


def run(ctx):
    from provisioning.localbroker import LocalBroker

    area = Area("collector", "Collector ingest (events stored per second)")
    total = ctx.sizes["collector_messages"]
    drops = []
    consumers = ["bare", "nostore", "sqlite"]
    urls = {}
    if ctx.pg_dsn:
        url, drop = pg_scratch(ctx.pg_dsn, "collector")
        drops.append(drop)
        urls["postgresql"] = url
        consumers.append("postgresql")
    else:
        area.note("PostgreSQL not available: its figure is left out (not measured).")
    rates = {c: [] for c in consumers}
    pub_rates = []
    broker = LocalBroker(ctx.tmp / "collector-broker").start()
    try:
        for r in range(ctx.runs):
            order = consumers[r % len(consumers):] + consumers[: r % len(consumers)]
            for c in order:
                url = urls.get(c) or ("null://" if c == "nostore" else f"sqlite:///{ctx.tmp / f'collector-{r}.db'}")
                rate, pub_rate = measure(broker.port, c if c == "bare" else "collector", f"r{r}{c[:2]}", total, url)
                rates[c].append(rate)
                pub_rates.append(pub_rate)
                progress(f"collector: round {r + 1}/{ctx.runs}: {c} {rate:,.0f} events/s")
    finally:
        broker.stop()
        for d in drops:
            d()
    area.figure("bare", "bare paho-mqtt subscriber that only counts", "events/s", rates["bare"],
                higher_is_better=True,
                pi4={"estimate": pi4_rate(_med(rates["bare"]), "events/s"),
                     "basis": PI4_ASSUMPTION + " (broker, publishers and subscriber share the cores)"})
    area.figure(
        "nostore", "diagnostic: Collector with storage replaced by a no-op (MQTT, validation, acks only)",
        "events/s", rates["nostore"], baseline="bare", base_values=rates["bare"], base_label="bare subscriber",
        higher_is_better=True,
        pi4={"estimate": pi4_rate(_med(rates["nostore"]), "events/s"), "basis": PI4_ASSUMPTION})
    for c in consumers[2:]:
        goal = {"text": f">= {GOAL_RATIO:.0%} of the bare subscriber and >= {GOAL_RATE:,} events/s"}
        fig = area.figure(
            c, f"Collector on {'SQLite (synchronous FULL)' if c == 'sqlite' else 'PostgreSQL'}", "events/s",
            rates[c], baseline="bare", base_values=rates["bare"], base_label="bare subscriber",
            higher_is_better=True, goal=goal,
            pi4={"estimate": pi4_rate(_med(rates[c]), "events/s"),
                 "basis": PI4_ASSUMPTION + " (a collector runs on a server, not a Pi; shown for a Pi-sized site "
                 "server)"},
        )
        if fig.get("ratio"):
            goal["met"] = fig["ratio"]["median"] >= GOAL_RATIO and fig["median"] >= GOAL_RATE
    area.note(f"{total:,} events per measurement from {PUBLISHERS} publisher processes x "
              f"{DEVICES_PER_PUBLISHER} terminals (one event per message, QoS 1, 100 in flight); publishers "
              f"reached a median {_med(pub_rates):,.0f} messages/s. Broker, publishers and consumer share the "
              f"2 cores, as in DESIGN.md's measurements.")
    return area


def _med(vals):
    vals = sorted(vals)
    return vals[len(vals) // 2] if vals else 0.0
