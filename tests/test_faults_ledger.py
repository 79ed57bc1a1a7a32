"""The fault harness's ledger judges a PASS pulse only against events it could have seen.

CI once failed the smoke run with "pass_no_record: pulse after seq 1028 (None)" while the
whole-history count found every pulse matched: the ledger read the outbox, then a scan committed
seq 1028 and pulsed, then the ledger read the pulse. These tests pin the order and the deferral.
"""

import json
import sqlite3
from types import SimpleNamespace

from faults.ledger import Ledger


def _terminal(tmp_path, dev="t1"):
    t = SimpleNamespace(id=dev, outbox=tmp_path / f"{dev}.db", log=tmp_path / f"{dev}.log",
                        pulses=tmp_path / f"{dev}.pulses")
    conn = sqlite3.connect(t.outbox)
    conn.execute("CREATE TABLE outbox_state (id INTEGER PRIMARY KEY, last_seq INTEGER, delivered_upto INTEGER)")
    conn.execute("CREATE TABLE event (seq INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO outbox_state VALUES (1, 0, 0)")
    conn.commit()
    conn.close()
    t.log.write_text("")
    t.pulses.write_text("")
    return t


def _collector_db(tmp_path):
    path = tmp_path / "collector.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE chot_event (device_id TEXT, seq INTEGER, uuid TEXT, checkpoint TEXT, "
                 "decision TEXT, reason TEXT)")
    conn.commit()
    conn.close()
    return path


def _commit_pass(t, db, seq, pulse=True):
    """What the daemon does for one PASS scan: commit, pulse; and the collector stores it."""
    body = {"uuid": f"u{seq}", "decision": "PASS", "reason": "ok", "checkpoint": "cp"}
    conn = sqlite3.connect(t.outbox)
    conn.execute("INSERT INTO event VALUES (?, ?)", (seq, json.dumps(body)))
    conn.execute("UPDATE outbox_state SET last_seq = ?, delivered_upto = ?", (seq, seq))
    conn.commit()
    conn.close()
    if pulse:
        with open(t.pulses, "a") as f:
            f.write(f"pass {seq}\n")
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO chot_event VALUES (?, ?, ?, ?, ?, ?)", (t.id, seq, f"u{seq}", "cp", "PASS", "ok"))
    conn.commit()
    conn.close()


def test_a_pulse_read_in_a_poll_names_an_event_the_same_poll_saw(tmp_path):
    t = _terminal(tmp_path)
    db = _collector_db(tmp_path)
    ledger = Ledger(SimpleNamespace(db_url=f"sqlite:///{db}", terminals=[t]))
    _commit_pass(t, db, 1)
    book = ledger.books["t1"]
    real_read_pulses = book._read_pulses
    next_seq = iter(range(2, 100))

    def a_scan_lands_then_read_pulses():
        # a scan commits and pulses just before the poll reads the pulse file: whatever the poll
        # read before this point cannot hold it
        _commit_pass(t, db, next(next_seq))
        real_read_pulses()

    book._read_pulses = a_scan_lands_then_read_pulses
    counts, details = ledger.reconcile({"t1": 1})
    assert counts["pass_no_record"] == 0, details
    counts, details = ledger.reconcile(ledger.tops())
    assert counts["pass_no_record"] == 0, details
    assert counts["lost"] == counts["phantom"] == counts["holes"] == 0, details


def test_a_pulse_ahead_of_the_outbox_waits_for_the_next_window_and_counts_if_never_explained(tmp_path):
    t = _terminal(tmp_path)
    db = _collector_db(tmp_path)
    ledger = Ledger(SimpleNamespace(db_url=f"sqlite:///{db}", terminals=[t]))
    _commit_pass(t, db, 1)
    with open(t.pulses, "a") as f:  # a pulse whose event the outbox does not (yet) show
        f.write("pass 2\n")
    counts, details = ledger.reconcile({"t1": 1})
    assert counts["pass_no_record"] == 0 and counts["pulses"] == 1, details
    total, details = ledger.reconcile_total({"t1": 1})
    assert total["pass_no_record"] == 1, details  # the whole history judges every pulse
    assert "pulse after seq 2" in details["pass_no_record"][0]
    _commit_pass(t, db, 2, pulse=False)  # its pulse was the one written early
    counts, details = ledger.reconcile({"t1": 2})
    assert counts["pass_no_record"] == 0 and counts["pulses"] == 1, details
