"""make pi-check: check the outbox a `chot terminal run` left in the arm64 root.

Usage: pi_check_outbox.py OUTBOX.db --pass N --fail M [--device ID]
Every row must decode as a wire Event (chot.wire) of the device, numbered 1..n without a gap, with a
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
    p.add_argument("--pass", dest="n_pass", type=int, required=True)
    p.add_argument("--fail", dest="n_fail", type=int, required=True)
    p.add_argument("--device", default="pi-check-gate-1-in")
    a = p.parse_args(argv)
    con = sqlite3.connect(f"file:{a.db}?mode=ro", uri=True)
    rows = con.execute("SELECT seq, body FROM event ORDER BY seq").fetchall()
    events = [msgspec.json.decode(body, type=Event) for _seq, body in rows]
    problems = []
    if [e.seq for e in events] != list(range(1, len(events) + 1)):
        problems.append(f"seqs {[e.seq for e in events]} are not 1..{len(events)}")
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
    print(f"{len(events)} events, seq 1..{len(events)}: " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())))


if __name__ == "__main__":
    main()
