"""The ledger: every event a terminal committed against what the collector stored.

Sources, all read from outside the processes:
- each terminal's outbox (SQLite, table `event`: seq, body JSON; `outbox_state`: last_seq,
  delivered_upto), polled incrementally; delivered events are kept (retention_days = 3650), and
  what was ever seen is remembered, so an event the outbox gave up later is still known;
- each terminal's log (`INFO device.daemon: seq N PASS ok (native)`, written after the commit
  and the feedback): an event seen only there is still committed;
- each terminal's PASS-pulse file (faults.terminal_shim): one line per PASS LED pulse with the
  outbox's last committed seq at that instant;
- the collector's database (`chot_event`: device_id, seq, uuid, checkpoint, decision, reason).

Per window of seqs it counts: committed, stored, lost (committed, not stored), duplicated
(a uuid stored more than once, or a (device, seq) more than once), phantom (stored, never
committed), mismatched (same device and seq, another uuid, decision, reason or checkpoint),
holes (seqs missing inside an outbox's range), pass_no_record (a PASS pulse whose seq is not a
committed PASS, or two pulses naming one seq).
"""

import json
import re
import sqlite3
import time
from collections import Counter, defaultdict

LOG_RE = re.compile(rb"device\.daemon: seq (\d+) (PASS|FAIL) (\S+)")
REFUSED_RE = re.compile(rb"event NOT recorded, failing closed")


def _sqlite(path, timeout=2.0):
    conn = sqlite3.connect(str(path), timeout=timeout)
    conn.execute("PRAGMA query_only = 1")
    return conn


class CollectorDB:
    """Reads the collector's database directly (SQLite file or PostgreSQL); None when unreachable."""

    def __init__(self, url):
        self.url = url
        self.sqlite = url.startswith("sqlite:///")
        self._pg = None

    def _query(self, sql, args=()):
        if self.sqlite:
            conn = _sqlite(self.url[len("sqlite:///"):])
            try:
                return conn.execute(sql, args).fetchall()
            finally:
                conn.close()
        import psycopg2

        for _ in range(2):
            try:
                if self._pg is None or self._pg.closed:
                    self._pg = psycopg2.connect(self.url, connect_timeout=3)
                    self._pg.autocommit = True
                cur = self._pg.cursor()
                cur.execute(sql.replace("?", "%s"), args)
                return cur.fetchall()
            except psycopg2.Error:
                try:
                    self._pg.close()
                except Exception:
                    pass
                self._pg = None
        raise ConnectionError("PostgreSQL unreachable")

    def query(self, sql, args=()):
        try:
            return self._query(sql, args)
        except (sqlite3.Error, ConnectionError):
            return None

    def ready(self):
        rows = self.query("SELECT count(*) FROM chot_event")
        return rows is not None

    def count_upto(self, dev, hi):
        rows = self.query("SELECT count(*) FROM chot_event WHERE device_id = ? AND seq <= ?", (dev, hi))
        return None if rows is None else rows[0][0]

    def rows(self, dev, lo, hi):
        return self.query("SELECT seq, uuid, checkpoint, decision, reason FROM chot_event "
                          "WHERE device_id = ? AND seq > ? AND seq <= ?", (dev, lo, hi))

    def rows_above(self, dev, lo):
        return self.query("SELECT seq, uuid, checkpoint, decision, reason FROM chot_event "
                          "WHERE device_id = ? AND seq > ?", (dev, lo))

    def uuid_dups(self):
        return self.query("SELECT uuid, count(*) FROM chot_event GROUP BY uuid HAVING count(*) > 1") or []

    def times(self, dev, lo, hi):
        return self.query("SELECT seq, time, received_at, time_corrected, clock_flag FROM chot_event WHERE "
                          "device_id = ? AND seq > ? AND seq <= ?", (dev, lo, hi)) or []

    def close(self):
        if self._pg is not None:
            self._pg.close()


def collector_ready(cluster):
    return CollectorDB(cluster.db_url).ready()


class TerminalBook:
    """What one terminal committed, as far as its outbox, its log and its pulses tell."""

    def __init__(self, term):
        self.term = term
        self.events = {}  # seq -> (uuid, decision, reason, checkpoint) from the outbox
        self.logged = {}  # seq -> (decision, reason) from the log
        self.pulses = []  # last_seq at each PASS pulse
        self.refused = 0  # fail-closed scans (log)
        self.last_seq = 0
        self.delivered = 0
        self._log_off = 0
        self._pulse_off = 0
        self._seen_max = 0

    def poll(self):
        # pulses first: a pulse is written after its event's commit, so the outbox read after it
        # holds every seq a pulse read here can name (read the other way round, a scan between
        # the two reads gave a pulse whose event was not seen yet)
        self._read_pulses()
        path = self.term.outbox
        if path.exists():
            try:
                conn = _sqlite(path)
                try:
                    st = conn.execute("SELECT last_seq, delivered_upto FROM outbox_state WHERE id = 1").fetchone()
                    rows = conn.execute("SELECT seq, body FROM event WHERE seq > ? ORDER BY seq",
                                        (self._seen_max,)).fetchall()
                finally:
                    conn.close()
                if st:
                    self.last_seq, self.delivered = max(self.last_seq, st[0]), st[1]
                for seq, body in rows:
                    b = json.loads(body)
                    self.events[seq] = (b.get("uuid"), b.get("decision"), b.get("reason"), b.get("checkpoint"))
                    self._seen_max = max(self._seen_max, seq)
            except sqlite3.Error:
                pass  # busy, or the disk is full: the next poll reads it
        self._read_log()
        return self

    def _read_log(self):
        try:
            with open(self.term.log, "rb") as f:
                f.seek(self._log_off)
                data = f.read()
        except OSError:
            return
        cut = data.rfind(b"\n") + 1
        self._log_off += cut
        chunk = data[:cut]
        for m in LOG_RE.finditer(chunk):
            self.logged[int(m[1])] = (m[2].decode(), m[3].decode())
        self.refused += len(REFUSED_RE.findall(chunk))

    def _read_pulses(self):
        try:
            with open(self.term.pulses, "rb") as f:
                f.seek(self._pulse_off)
                data = f.read()
        except OSError:
            return
        cut = data.rfind(b"\n") + 1
        self._pulse_off += cut
        for line in data[:cut].splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"pass":
                self.pulses.append(int(parts[1]))

    def committed(self, lo, hi):
        """{seq: (uuid or None, decision, reason, checkpoint or None)} of lo < seq <= hi."""
        out = {}
        for seq, (dec, reason) in self.logged.items():
            if lo < seq <= hi:
                out[seq] = (None, dec, reason, None)
        for seq, v in self.events.items():
            if lo < seq <= hi:
                out[seq] = v
        return out

    def seen_top(self):
        """The highest seq whose event was read (outbox or log), not merely counted in outbox_state."""
        return max(self._seen_max, max(self.logged, default=0))

    def top(self):
        return max(self.last_seq, self._seen_max, max(self.logged, default=0))


class Ledger:
    def __init__(self, cluster):
        self.cluster = cluster
        self.db = CollectorDB(cluster.db_url)
        self.books = {t.id: TerminalBook(t) for t in cluster.terminals}
        self.marks = {t.id: 0 for t in cluster.terminals}  # the end of the last window, per device
        self.pulse_marks = {t.id: 0 for t in cluster.terminals}
        self.refused_marks = {t.id: 0 for t in cluster.terminals}

    def poll(self):
        for b in self.books.values():
            b.poll()

    def tops(self):
        self.poll()
        return {d: b.top() for d, b in self.books.items()}

    def all_delivered(self, upto):
        """True when every event with seq <= upto[dev] is stored and acked (outbox delivered_upto)."""
        self.poll()
        for dev, hi in upto.items():
            b = self.books[dev]
            if hi <= 0:
                continue
            if b.delivered < hi:
                return False
            n = self.db.count_upto(dev, hi)
            if n is None or n < len(b.committed(0, hi)):
                return False
        return True

    def wait_delivered(self, upto, timeout, t0=None):
        """Seconds from t0 (default now) until all_delivered(upto); None when `timeout` passed first."""
        t0 = time.monotonic() if t0 is None else t0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_delivered(upto):
                return time.monotonic() - t0
            time.sleep(0.25)
        return None

    def reconcile(self, upto, advance=True, devices=None):
        """Counts over the window (marks[dev], upto[dev]] of every device; moves the marks on."""
        self.poll()
        c = Counter()
        details = defaultdict(list)
        dups = {u for u, _n in self.db.uuid_dups()}
        for dev, hi in upto.items():
            if devices is not None and dev not in devices:
                continue
            b = self.books[dev]
            lo = self.marks[dev]
            committed = b.committed(lo, hi)
            rows = self.db.rows(dev, lo, hi)
            if rows is None:
                details["db_unreachable"].append(dev)
                rows = []
            stored = defaultdict(list)
            for seq, uuid, cp, dec, reason in rows:
                stored[seq].append((uuid, dec, reason, cp))
            c["committed"] += len(committed)
            c["stored"] += len(rows)
            for seq, mine in committed.items():
                got = stored.get(seq)
                if not got:
                    c["lost"] += 1
                    details["lost"].append(f"{dev}#{seq}")
                    continue
                uuid, dec, reason, cp = got[0]
                if ((mine[0] is not None and mine[0] != uuid) or mine[1] != dec or mine[2] != reason
                        or (mine[3] is not None and mine[3] != cp)):
                    c["mismatched"] += 1
                    details["mismatched"].append(f"{dev}#{seq}: committed {mine} stored {got[0]}")
            for seq, got in stored.items():
                if len(got) > 1:
                    c["duplicated"] += len(got) - 1
                    details["duplicated"].append(f"{dev}#{seq} x{len(got)}")
                elif got[0][0] in dups:
                    c["duplicated"] += 1
                    details["duplicated"].append(f"{dev}#{seq} uuid {got[0][0]} stored twice")
                if seq not in committed:
                    c["phantom"] += 1
                    details["phantom"].append(f"{dev}#{seq}")
            first = min(b.events, default=1)  # delivered events given up before we first read them
            known = set(b.events) | set(b.logged)
            holes = [s for s in range(max(lo + 1, first), hi + 1) if s not in known and s not in stored]
            c["holes"] += len(holes)
            if holes:
                details["holes"].append(f"{dev}: {holes[:10]}")
            # the witness: PASS pulses of this window
            pulses = b.pulses[self.pulse_marks[dev]:]
            if advance:
                # a pulse naming a seq the outbox could not be read for yet (busy, disk full) waits
                # for the next window; the whole-history count judges every pulse
                seen = b.seen_top()
                wait = next((i for i, s in enumerate(pulses) if s > seen), len(pulses))
                pulses = pulses[:wait]
                self.pulse_marks[dev] += wait
            counts = Counter(pulses)
            for seq, n in counts.items():
                known_event = b.events.get(seq) or (b.logged.get(seq) and (None,) + b.logged[seq])
                if n > 1 or known_event is None or known_event[1] != "PASS":
                    c["pass_no_record"] += n if known_event is None or known_event[1] != "PASS" else n - 1
                    details["pass_no_record"].append(f"{dev}: pulse after seq {seq} x{n} ({known_event})")
            c["pulses"] += len(pulses)
            c["refused"] += b.refused - self.refused_marks[dev]
            if advance:
                self.refused_marks[dev] = b.refused
                self.marks[dev] = hi
        return c, details

    def reconcile_total(self, upto):
        """The whole history (seq 1 .. upto) without moving the window marks."""
        saved = dict(self.marks), dict(self.pulse_marks), dict(self.refused_marks)
        self.marks = {d: 0 for d in self.marks}
        self.pulse_marks = {d: 0 for d in self.pulse_marks}
        self.refused_marks = {d: 0 for d in self.refused_marks}
        try:
            return self.reconcile(upto, advance=False)
        finally:
            self.marks, self.pulse_marks, self.refused_marks = saved

    def phantoms_beyond(self):
        """Rows stored above everything a terminal ever committed (checked at the end)."""
        marks = {dev: b.top() for dev, b in self.books.items()}
        found = {dev: self.db.rows_above(dev, hi) or [] for dev, hi in marks.items()}
        self.poll()  # after reading the rows: anything stored was committed before, so it is seen now
        out = []
        for dev, rows in found.items():
            b = self.books[dev]
            out += [f"{dev}#{r[0]}" for r in rows if r[0] not in b.events and r[0] not in b.logged]
        return out
