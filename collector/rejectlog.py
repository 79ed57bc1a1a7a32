"""Rejection logs aggregated per device and reason: a flood of junk writes a few lines, not one per message.

`RejectLog.note(device, reason, detail)` logs the FIRST rejection of each (device, reason) with its
detail (field names and ids, never a payload), then only counts; `flush()` (called by the worker
about once a second) writes one summary line per `interval_s` with the counts of that interval,
the largest first, at most `MAX_SUMMARY_ITEMS` of them. At most `MAX_KEYS` (device, reason) pairs
are remembered: beyond, a new device counts under "*" (an open broker lets anyone invent topics).
"""

import threading
import time
from collections import Counter

MAX_KEYS = 10000
MAX_SUMMARY_ITEMS = 20
MAX_DETAIL = 300


class RejectLog:
    def __init__(self, logger, interval_s=60.0, what="rejected"):
        self.log = logger
        self.interval_s = float(interval_s)
        self.what = what
        self._seen = set()  # (device, reason) already logged once
        self._counts = Counter()  # this interval's
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self.lines = 0  # lines written (for stats and tests)

    def note(self, device, reason, detail, topic=None):
        key = (device or "?", reason)
        with self._lock:
            if key not in self._seen and len(self._seen) >= MAX_KEYS:
                key = ("*", reason)
            self._counts[key] += 1
            first = key not in self._seen
            if first:
                self._seen.add(key)
        if first:
            self.lines += 1
            self.log.warning("%s a message on %s (%s): %s; further ones of this device and reason are counted in a "
                             "summary every %.0f s", self.what, topic or f"device {key[0]}", reason,
                             str(detail)[:MAX_DETAIL], self.interval_s)

    def flush(self, force=False):
        """Write the summary of the interval when it is over (or `force`); return the line or None."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._since < self.interval_s:
                return None
            counts, self._counts = self._counts, Counter()
            since, self._since = self._since, now
        # the first of each pair was logged on its own: summarise only when there is more than that
        if not counts or all(n == 1 for n in counts.values()) and not force:
            return None
        top = counts.most_common(MAX_SUMMARY_ITEMS)
        text = ", ".join(f"{dev}/{reason} x{n}" for (dev, reason), n in top)
        if len(counts) > len(top):
            text += f", and {len(counts) - len(top)} more device/reason pairs"
        line = (f"{self.what} {sum(counts.values())} messages in the last {now - since:.0f} s "
                f"(device/reason x count): {text}")
        self.lines += 1
        self.log.warning("%s", line)
        return line
