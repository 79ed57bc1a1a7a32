"""The outbox on a real SQLite file: seq that never goes back (restarts, SIGKILL, purges),
the caps, delivery and purge, validity of the stored events, clear errors, two threads."""

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chot import wire
from chot.errors import OutboxError, OutboxFull
from chot.wire import UUID_RE, validate_event
from device.clock import clock_quality, utc_now_iso
from device.config import load_terminal_config
from device.uplink.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent


def fields(**over):
    f = {
        "checkpoint": "hk-gate-1",
        "direction": "in",
        "time": utc_now_iso(),
        "clock": clock_quality(),
        "source": "camera",
        "format": "native",
        "decision": "PASS",
        "reason": "ok",
        "verified": True,
        "sealed": sealed(),
    }
    f.update(over)
    return f


def sealed(ct_chars=64):
    """A sealed part of the right shape (its content is opaque to the outbox): `ct_chars` pads an event."""
    return {"kid": "0123456789abcdef", "epk": "A" * 43, "ct": "x" * ct_chars}


def all_seqs(path):
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT seq FROM event ORDER BY seq")]
    finally:
        con.close()


def test_append_gives_valid_events_and_seq_survives_reopen(tmp_path):
    path = tmp_path / "outbox.db"
    with Outbox(path, device_id="t-01") as ob:
        events = [ob.append(fields(decision=d, reason=r)) for d, r in [("PASS", "ok"), ("FAIL", "expired")] * 3]
        manual = ob.append(fields(source="manual", format="none", reason="manual", verified=False, sealed=None))
    events.append(manual)
    assert [e["seq"] for e in events] == list(range(1, 8))
    assert len({e["uuid"] for e in events}) == 7
    for e in events:
        assert validate_event(e) == []
        assert e["device_id"] == "t-01"
    with Outbox(path, device_id="t-01") as ob:
        assert ob.last_seq == 7
        assert ob.pending(limit=100) == events  # stored exactly as returned
        assert ob.append(fields())["seq"] == 8
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_from_config_fills_in_the_terminal(tmp_path):
    toml = tmp_path / "terminal.toml"
    toml.write_text(
        '[device]\nid = "gate-7"\ncheckpoint = "market-north"\ndirection = "out"\n'
        f'[outbox]\npath = "{tmp_path / "ob.db"}"\nmax_rows = 3\nsynchronous = "NORMAL"\n'
    )
    cfg = load_terminal_config(toml)
    with Outbox.from_config(cfg) as ob:
        f = fields()
        del f["checkpoint"], f["direction"], f["time"], f["clock"]
        e = ob.append(f)
        assert (e["device_id"], e["checkpoint"], e["direction"]) == ("gate-7", "market-north", "out")
        assert validate_event(e) == []
        assert ob.max_rows == 3 and ob.synchronous == "NORMAL"


def test_invalid_event_is_refused_and_uses_no_seq(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01") as ob:
        with pytest.raises(OutboxError, match="decision"):
            ob.append(fields(decision="MAYBE"))
        assert ob.append(fields())["seq"] == 1


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[3])
from device.uplink.outbox import Outbox
from device.clock import clock_quality, utc_now_iso
ob = Outbox(sys.argv[1], device_id="t-01", synchronous=sys.argv[2])
f = dict(checkpoint="c", direction="in", source="camera", format="native", decision="PASS", reason="ok",
         verified=True, sealed={"kid": "0123456789abcdef", "epk": "A" * 43, "ct": "x" * 200})
while True:
    e = ob.append(dict(f, time=utc_now_iso(), clock=clock_quality()))
    sys.stdout.write(f"{e['seq']}\n")
    sys.stdout.flush()
"""


def run_and_kill(path, synchronous, at_least):
    """Start a child appending in a loop, SIGKILL it after `at_least` reported commits; return them all."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), synchronous, str(ROOT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        for line in child.stdout:
            seen.append(int(line))
            if len(seen) >= at_least:
                child.send_signal(signal.SIGKILL)
                break
        seen += [int(x) for x in child.stdout.read().split()]  # what was printed before the kill
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return seen


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_sigkill_loses_no_committed_event_and_never_reuses_seq(tmp_path, synchronous):
    path = tmp_path / "o.db"
    first = run_and_kill(path, synchronous, 150)
    assert first == list(range(1, len(first) + 1))
    stored = all_seqs(path)
    assert set(first) <= set(stored)
    with Outbox(path, device_id="t-01") as ob:
        assert ob.last_seq >= max(first)
        nxt = ob.append(fields())["seq"]
        assert nxt > max(stored) and nxt > max(first)
        # everything delivered and purged: the table is empty, seq must still not go back
        assert ob.mark_delivered(ob.last_seq) == len(stored) + 1
        assert ob.purge(now=time.time() + 30 * 86400) == len(stored) + 1
        assert ob.stats()["rows"] == 0 and all_seqs(path) == []
    second = run_and_kill(path, synchronous, 100)
    assert min(second) == nxt + 1
    assert second == list(range(nxt + 1, nxt + 1 + len(second)))
    assert set(second) <= set(all_seqs(path))
    with Outbox(path, device_id="t-01") as ob:
        assert ob.append(fields())["seq"] > max(second)
        pend = [e["seq"] for e in ob.pending(limit=10_000)]
        assert pend == sorted(set(pend)) and set(second) <= set(pend)


def test_full_by_rows_fails_and_stores_nothing_more(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01", max_rows=5) as ob:
        for _ in range(5):
            ob.append(fields())
        assert not ob.has_room()
        for _ in range(3):
            with pytest.raises(OutboxFull, match=r"outbox\.max_rows = 5.*reconnect the uplink"):
                ob.append(fields())
        assert ob.stats()["rows"] == 5 and ob.last_seq == 5 and len(ob.pending(limit=100)) == 5
        # once the collector has acknowledged, delivered events make room again
        ob.mark_delivered(2)
        assert ob.has_room()
        assert ob.append(fields())["seq"] == 6
        assert ob.stats()["depth"] == 4


def test_full_by_bytes_fails_and_stores_nothing_more(tmp_path):
    big = sealed(3000)
    with Outbox(tmp_path / "o.db", device_id="t-01", max_bytes=512 * 1024) as ob:
        with pytest.raises(OutboxFull, match=r"outbox\.max_bytes = 524288"):
            for _ in range(1000):
                ob.append(fields(sealed=big))
        stored = ob.stats()
        assert 5 < stored["rows"] < 1000 and stored["last_seq"] == stored["rows"]
        with pytest.raises(OutboxFull):
            ob.append(fields())
        assert ob.stats()["rows"] == stored["rows"] and not ob.has_room()


def test_pending_mark_delivered_purge_stats(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01", retention_days=7) as ob:
        s = ob.stats()
        assert (s["depth"], s["oldest_undelivered_time"], s["last_seq"], s["rows"]) == (0, None, 0, 0)
        events = [ob.append(fields(time=f"2021-08-09T08:00:{i:02d}.000000Z")) for i in range(1, 11)]
        assert [e["seq"] for e in ob.pending(limit=3)] == [1, 2, 3]
        assert [e["seq"] for e in ob.pending(after_seq=8)] == [9, 10]
        assert ob.mark_delivered(4) == 4
        assert ob.mark_delivered(2) == 0  # an older ack changes nothing
        assert [e["seq"] for e in ob.pending()] == [5, 6, 7, 8, 9, 10]
        s = ob.stats()
        assert s["depth"] == 6 and s["delivered_upto"] == 4 and s["rows"] == 10 and s["last_seq"] == 10
        assert s["oldest_undelivered_time"] == events[4]["time"]
        assert s["bytes"] > 0
        assert ob.purge() == 0  # still within retention
        assert ob.purge(now=time.time() + 8 * 86400) == 4
        assert ob.stats()["rows"] == 6
        assert ob.mark_delivered(10) == 6
        s = ob.stats()
        assert s["depth"] == 0 and s["oldest_undelivered_time"] is None and ob.pending() == []
    with Outbox(tmp_path / "o.db", device_id="t-01", retention_days=0) as ob:
        assert ob.delivered_upto == 10
        assert ob.purge() == 6


def test_ack_beyond_last_seq_moves_seq_forward(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01") as ob:
        ob.append(fields())
        ob.mark_delivered(500)  # the collector knows seqs this outbox never gave (a replaced file)
        assert ob.append(fields())["seq"] == 501


@pytest.mark.parametrize("where", ["under-a-file", "in-procfs"])
def test_unwritable_path_gives_a_clear_error(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "plain").write_text("not a directory")
        path = tmp_path / "plain" / "outbox.db"
    else:
        path = Path("/proc/chot-no-such-dir/outbox.db")
    with pytest.raises(OutboxError, match=r"cannot open the outbox .*writable by the user running chot"):
        Outbox(path, device_id="t-01")


def test_disk_full_gives_a_clear_error_and_keeps_seq(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01") as ob:
        ob.append(fields())
        pages = ob._db.execute_sql("PRAGMA page_count").fetchone()[0]
        ob._db.execute_sql(f"PRAGMA max_page_count = {pages}")  # SQLite now reports a full disk
        with pytest.raises(OutboxError, match="is full.*free disk space") as err:
            for _ in range(100):
                ob.append(fields(sealed=sealed(3000)))
        assert not isinstance(err.value, OutboxFull)
        last = ob.last_seq
        ob._db.execute_sql("PRAGMA max_page_count = 1073741823")
        assert ob.append(fields())["seq"] == last + 1
        assert all_seqs(tmp_path / "o.db") == list(range(1, last + 2))


def test_read_only_database_gives_a_clear_error(tmp_path):
    path = tmp_path / "o.db"
    Outbox(path, device_id="t-01").close()
    ro = Outbox(path, device_id="t-01")
    ro._db.close()
    ro._db._state.set_connection(sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False))
    with pytest.raises(OutboxError, match="read-only"):
        ro.append(fields())


def test_closed_outbox_refuses(tmp_path):
    ob = Outbox(tmp_path / "o.db", device_id="t-01")
    ob.close()
    assert not ob.has_room()
    with pytest.raises(OutboxError, match="closed"):
        ob.append(fields())


def test_concurrent_append_and_pending(tmp_path):
    n = 300
    with Outbox(tmp_path / "o.db", device_id="t-01", synchronous="NORMAL") as ob:
        errors = []

        def producer():
            try:
                for _ in range(n):
                    ob.append(fields())
            except Exception as exc:  # reported below
                errors.append(exc)

        got = []

        def consumer():
            try:
                after = 0
                deadline = time.monotonic() + 60
                while len(got) < n and time.monotonic() < deadline:
                    ob.wait_for(after, timeout=1.0)
                    batch = ob.pending(after_seq=after, limit=37)
                    got.extend(e["seq"] for e in batch)
                    if batch:
                        after = batch[-1]["seq"]
                        ob.mark_delivered(after)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert got == list(range(1, n + 1))
        s = ob.stats()
        assert s["depth"] == 0 and s["delivered_upto"] == n and s["rows"] == n


def test_event_json_is_what_pending_returns(tmp_path):
    given = "7d0f6a3c-2b1e-4c5d-9e8f-0a1b2c3d4e5f"
    with Outbox(tmp_path / "o.db", device_id="t-01") as ob:
        e = ob.append(fields(uuid=given))  # the daemon makes the uuid (the sealed part is bound to it)
        other = ob.append(fields(uuid=None))
        raw = ob.pending_raw()
    assert e["uuid"] == given and UUID_RE.fullmatch(other["uuid"]) and other["uuid"] != given
    con = sqlite3.connect(tmp_path / "o.db")
    body = con.execute("SELECT body FROM event WHERE seq = 1").fetchone()[0]
    con.close()
    assert json.loads(body) == e
    # stored exactly as published: the JSON of the typed Event, in its field order
    assert body.encode() == wire.dumps(wire.event_from_dict(e))
    assert raw[0] == (1, body.encode()) and raw[1][0] == 2
    # every field in order; `refers_to` (left out when unset) only on a guard's confirmation
    assert list(json.loads(body)) == [f for f in wire.Event.__struct_fields__ if f != "refers_to"]
    assert wire.decode_event_message(wire.event_topic("t-01"), wire.encode_events([r for _, r in raw]))[1] == []


def test_event_is_checked_against_the_v2_contract(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01") as ob:
        for bad in (dict(subject={"name_masked": "N. V. A."}),  # no such field any more
                    dict(reason="denied"), dict(verified="yes"), dict(sealed={"kid": "x"}),
                    dict(uuid="not-a-uuid"), dict(checkpoint="gate 1 / north"),
                    dict(source="camera", format="none", sealed=sealed())):  # no credential, no person
            with pytest.raises(OutboxError, match="not valid"):
                ob.append(fields(**bad))
        assert ob.last_seq == 0
        e = ob.append(fields(verified=False, sealed=None))
        assert (e["seq"], e["v"], e["verified"], e["sealed"]) == (1, 2, False, None)


def test_files_are_private(tmp_path):
    path = tmp_path / "state" / "o.db"
    with Outbox(path, device_id="t-01") as ob:
        ob.append(fields())
        names = sorted(p.name for p in path.parent.iterdir())
        assert {"o.db", "o.db-wal", "o.db-shm"} <= set(names), names
        for p in path.parent.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))
    # an outbox made before (looser modes) is tightened when opened
    os.chmod(path, 0o644)
    with Outbox(path, device_id="t-01") as ob:
        ob.append(fields())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(str(path) + "-wal").stat().st_mode) == 0o600


def test_default_retention_is_shorter_than_the_collectors(tmp_path):
    with Outbox(tmp_path / "o.db", device_id="t-01") as ob:
        assert ob.retention_days == 3.0
    from device.uplink.settings import OutboxSettings

    assert OutboxSettings().retention_days == 3.0


def test_append_is_one_transaction_rolled_back_on_failure(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, device_id="t-01") as ob:
        ob.append(fields())
        # a failure inside the transaction (here the UPDATE of last_seq finds no row) stores nothing
        ob._db.execute_sql("DELETE FROM outbox_state")
        with pytest.raises(OutboxError, match="lost its state row.*move the file aside"):
            ob.append(fields())
        conn = ob._db.connection()
        assert not conn.in_transaction and ob.last_seq == 1
        assert all_seqs(path) == [1]
        # a constraint failure on the INSERT itself rolls back as well, with an OutboxError
        ob._db.execute_sql("INSERT INTO outbox_state (id, last_seq, delivered_upto) VALUES (1, 1, 0)")
        ob._db.execute_sql("INSERT INTO event (seq, time, body, created) VALUES (2, 't', '{}', 0)")
        with pytest.raises(OutboxError, match="failed"):
            ob.append(fields())
        assert not conn.in_transaction and ob.last_seq == 1
        ob._db.execute_sql("DELETE FROM event WHERE seq = 2")
        # the peewee methods and the next append go on on the same connection
        assert ob.append(fields())["seq"] == 2
        assert [e["seq"] for e in ob.pending()] == [1, 2]
        assert ob.mark_delivered(2) == 2
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT last_seq, delivered_upto FROM outbox_state").fetchone() == (2, 2)
    finally:
        con.close()


def test_append_inside_a_callers_transaction_is_a_savepoint(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, device_id="t-01") as ob:
        with ob._lock, ob._db.atomic():
            for _ in range(3):
                ob.append(fields())
            ob._db.execute_sql("DELETE FROM outbox_state")
            with pytest.raises(OutboxError, match="lost its state row"):
                ob.append(fields())  # rolled back to its savepoint, the caller's transaction goes on
            ob._db.execute_sql("INSERT INTO outbox_state (id, last_seq, delivered_upto) VALUES (1, 3, 0)")
        assert not ob._db.connection().in_transaction
        assert ob.append(fields())["seq"] == 4
    assert all_seqs(path) == [1, 2, 3, 4]


def test_byte_cap_agrees_with_what_sqlite_and_the_files_report(tmp_path):
    # append succeeds exactly while what the cap counts, read from outside (the used pages by another
    # connection, the -wal and -shm files by their sizes), leaves room for one more event
    path = tmp_path / "o.db"
    cap = 512 * 1024
    big = sealed(2500)
    with Outbox(path, device_id="t-01", max_bytes=cap) as ob:
        reader = sqlite3.connect(path)
        try:
            page = reader.execute("PRAGMA page_size").fetchone()[0]
            refused = 0
            size = lambda suffix: os.path.getsize(f"{path}{suffix}") if os.path.exists(f"{path}{suffix}") else 0  # noqa: E731
            for _ in range(400):
                used = page * (reader.execute("PRAGMA page_count").fetchone()[0]
                               - reader.execute("PRAGMA freelist_count").fetchone()[0])
                counted = used + max(size("-wal"), ob.wal_limit) + size("-shm")
                assert size("-wal") <= ob.wal_limit  # the WAL is kept under its bound
                body = len(ob.pending_raw(after_seq=ob.last_seq - 1, limit=1)[0][1]) if ob.last_seq else 2900
                if counted + ob._append_reserve(body + 8) < cap:
                    ob.append(fields(sealed=big))
                elif counted + ob._append_reserve(body - 8) >= cap:
                    with pytest.raises(OutboxFull, match=r"outbox\.max_bytes = 524288"):
                        ob.append(fields(sealed=big))
                    refused += 1
                    if refused == 3:
                        break
                else:  # within a few bytes of the cap: either is right
                    break
        finally:
            reader.close()
        assert refused == 3 and 50 < ob.last_seq < 400
        assert ob.stats()["file_bytes"] <= cap  # the files on disk, WAL and index included, stay under the cap


def test_the_wal_stays_bounded_and_a_bulk_fill_in_one_transaction_still_works(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, device_id="t-01", max_bytes=4 * 1024 * 1024) as ob:
        with ob._lock, ob._db.atomic():  # no checkpoint can run inside it: it waits for the commit
            for _ in range(300):
                ob.append(fields())
        for _ in range(300):
            ob.append(fields())
            assert os.path.getsize(f"{path}-wal") <= ob.wal_limit
        assert ob.checkpoints > 0
        # an ack of the whole backlog rewrites no event: its WAL cost is a page or two
        before = os.path.getsize(f"{path}-wal")
        assert ob.mark_delivered(600) == 600
        assert os.path.getsize(f"{path}-wal") - before <= 3 * (4096 + 24)
        assert ob.purge(now=time.time() + 30 * 86400) == 600
        assert os.path.getsize(f"{path}-wal") == 0  # checkpointed and truncated after the purge
