"""make pi-check: check the outbox a `chot terminal run` left in the arm64 root.

Usage: pi_check_outbox.py OUTBOX.db --pass N --fail M [--after SEQ] [--device ID]
       pi_check_outbox.py OUTBOX.db --last-seq
Every row after SEQ (the outbox keeps the events of earlier runs: no collector acks them here) must
decode as a wire Event (chot.wire) of the device, numbered SEQ+1.. without a gap, with a
sealed personal part for each credential read; the decisions must be N PASS and M FAIL. Prints one
line (the counts and reasons) or exits with what differs. Run from the project's root.
"""

import argparse
import collections
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from chot.wire import Event  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db")
    p.add_argument("--pass", dest="n_pass", type=int)
    p.add_argument("--fail", dest="n_fail", type=int)
    p.add_argument("--after", type=int, default=0, help="check only the events after this seq")
    p.add_argument("--last-seq", action="store_true", help="print the highest seq (0: no outbox yet) and stop")
    p.add_argument("--device", default="pi-check-gate-1-in")
    a = p.parse_args(argv)
    if a.last_seq:
        if not Path(a.db).exists():
            print(0)
            return
        con = sqlite3.connect(a.db)
        print(con.execute("SELECT coalesce(max(seq), 0) FROM event").fetchone()[0])
        return
    if a.n_pass is None or a.n_fail is None:
        p.error("--pass and --fail are required")
    con = sqlite3.connect(f"file:{a.db}?mode=ro", uri=True)
    rows = con.execute("SELECT seq, body FROM event WHERE seq > ? ORDER BY seq", (a.after,)).fetchall()
    events = [msgspec.json.decode(body, type=Event) for _seq, body in rows]
    problems = []
    first, last = a.after + 1, a.after + len(events)
    if [e.seq for e in events] != list(range(first, last + 1)):
        problems.append(f"seqs {[e.seq for e in events]} are not {first}..{last}")
    for e in events:
        if e.device_id != a.device:
            problems.append(f"seq {e.seq}: device_id {e.device_id!r}, not {a.device!r}")
        if e.sealed is None:
            problems.append(f"seq {e.seq}: no sealed personal part for a credential read")
    got = collections.Counter(str(e.decision) for e in events)
    if (got["PASS"], got["FAIL"]) != (a.n_pass, a.n_fail):
        problems.append(f"{got['PASS']} PASS and {got['FAIL']} FAIL, expected {a.n_pass} PASS and {a.n_fail} FAIL")
    reasons = collections.Counter(f"{e.decision}/{e.reason}" for e in events)
    if problems:
        sys.exit("outbox: " + "; ".join(problems) + f" (events: {dict(reasons)})")
    print(f"{len(events)} events, seq {first}..{last}: " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())))


if __name__ == "__main__":
    main()
