"""National system forwarding (issue 13): the ingest cost of the queueing trigger, and events forwarded a second.

    .venv/bin/python bench/forward.py [--pg postgresql://...]

A standalone measurement (not an area of bench/run.py). (1) stores 20,000 events in batches of 500
into a fresh database with and without forwarding set up (the trigger queues each new event in the
same transaction); (2) forwards 2,000 events (concurrency 1 and 4) to tests/forward_receiver.py (a
local http.server that fsyncs every key it accepts, no failures), one POST per event, no rate limit.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chot import personal  # noqa: E402
from chotdemo.testing import collector_config, make_item, make_keys  # noqa: E402
from collector import forward  # noqa: E402
from collector.storage import Storage  # noqa: E402
from provisioning.localbroker import free_port, wait_port  # noqa: E402

RECEIVER = Path(__file__).resolve().parent.parent / "tests" / "forward_receiver.py"


def items(dev, seqs):
    out = []
    for s in seqs:
        idn = f"0010900{s:05d}"
        out.append(make_item(dev, s, person={"id_number": idn, "name": f"Nguyễn Văn {s}", "phone": f"09{s:08d}"},
                             person_id=personal.person_id_for_id(idn)))
    return out


def fresh_pg(dsn):
    import uuid

    import psycopg2

    name = "chot_bench_" + uuid.uuid4().hex[:8]
    c = psycopg2.connect(dsn)
    c.autocommit = True
    c.cursor().execute(f'CREATE DATABASE "{name}"')
    c.close()
    return f"{dsn.rpartition('/')[0]}/{name}"


def ingest(url, keys, with_trigger, n=20000, batch=500):
    st = Storage(url, keys=keys, retention_days=3650)
    if with_trigger:
        forward.install(st)
    data = items("bench-a", range(1, n + 1))
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        st.store_batch(data[i : i + batch])
    dt = time.perf_counter() - t0
    st.close()
    return n / dt


def forwarding(url, keys, key_dir, tmp, concurrency, n=2000):
    port = free_port()
    token = tmp / "token"
    token.write_text("bench-token\n")
    token.chmod(0o600)
    proc = subprocess.Popen([sys.executable, str(RECEIVER), str(port), str(tmp / f"recv{port}"), "bench-token", "0",
                             "1"])
    try:
        wait_port(port, 20)
        st = Storage(url, keys=keys, retention_days=3650)
        forward.install(st)
        st.store_batch(items("bench-f", range(1, n + 1)))
        cfg = collector_config(url, key_dir=key_dir, forward={
            "enabled": True, "url": f"http://127.0.0.1:{port}/", "token_file": str(token), "rate_per_s": 10000.0,
            "batch_size": 100, "concurrency": concurrency})
        f = forward.Forwarder(st, cfg.forward)
        t0 = time.perf_counter()
        while f.step():
            pass
        dt = time.perf_counter() - t0
        assert forward.state(st)["forwarded"] == n
        f.close()
        st.close()
        return n / dt
    finally:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", help="a PostgreSQL admin DSN (a fresh database is made per run)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    keys = make_keys(tmp / "keys")
    backends = [("sqlite", lambda name: f"sqlite:///{tmp / name}.db")]
    if a.pg:
        backends.append(("postgresql", lambda name: fresh_pg(a.pg)))
    for label, url in backends:
        plain = ingest(url("plain"), keys, False)
        queued = ingest(url("queued"), keys, True)
        rates = {c: forwarding(url(f"fwd{c}"), keys, tmp / "keys", tmp, c) for c in (1, 4)}
        print(f"{label}: ingest {plain:,.0f} events/s without forwarding, {queued:,.0f} with the queueing trigger;"
              f" forwarding {rates[1]:,.0f} events/s with concurrency 1, {rates[4]:,.0f} with 4 (one POST each, a"
              " local receiver fsyncing each key)")


if __name__ == "__main__":
    main()
