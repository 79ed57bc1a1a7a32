"""Per-code and per-person cooldown: the same credential held in front of the camera makes one event.

`Cooldown(seconds).seen(key, now)` answers True when `key` was seen less than `seconds`
ago (and refreshes it, so a person who stays in view stays quiet), False otherwise.

Keys are QR texts and person ids: personal data. They are never kept as given (nor as a plain
hash of them, which a thief could reverse by trying every ID number): the cooldown holds only
`chot.personal.ProcessKey` HMACs under a secret random per process, lives in memory only and
is never written anywhere. After a restart nothing of it is left.
"""

from chot.personal import ProcessKey


class Cooldown:
    """Remembers keyed hashes of keys for `seconds`; bounded in memory by pruning expired ones."""

    def __init__(self, seconds, max_keys=10_000, process_key=None):
        self.seconds = float(seconds)
        self.max_keys = max_keys
        self._key = process_key or ProcessKey()
        self._last = {}

    def __repr__(self):
        return f"Cooldown({self.seconds:g} s, {len(self._last)} keys)"

    def seen(self, key, now):
        """True when `key` (a str) was seen within the cooldown; records it as seen `now`."""
        h = self._key(key)
        last = self._last.get(h)
        self._last[h] = now
        if len(self._last) > self.max_keys:
            self._prune(now)
        return last is not None and now - last < self.seconds

    def __len__(self):
        return len(self._last)

    def _prune(self, now):
        cutoff = now - self.seconds
        self._last = {k: t for k, t in self._last.items() if t >= cutoff}
        if len(self._last) > self.max_keys:  # still too many: keep the newest
            newest = sorted(self._last.items(), key=lambda kv: kv[1])[-self.max_keys // 2 :]
            self._last = dict(newest)
