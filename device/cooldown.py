"""Per-subject cooldown: the same credential held in front of the camera makes one event.

`Cooldown(seconds).seen(key, now)` answers True when `key` was seen less than `seconds`
ago (and refreshes it, so a person who stays in view stays quiet), False otherwise.
"""


class Cooldown:
    """Remembers keys for `seconds`; bounded in memory by pruning expired keys."""

    def __init__(self, seconds, max_keys=10_000):
        self.seconds = float(seconds)
        self.max_keys = max_keys
        self._last = {}

    def seen(self, key, now):
        last = self._last.get(key)
        self._last[key] = now
        if len(self._last) > self.max_keys:
            self._prune(now)
        return last is not None and now - last < self.seconds

    def _prune(self, now):
        cutoff = now - self.seconds
        self._last = {k: t for k, t in self._last.items() if t >= cutoff}
        if len(self._last) > self.max_keys:  # still too many: keep the newest
            newest = sorted(self._last.items(), key=lambda kv: kv[1])[-self.max_keys // 2 :]
            self._last = dict(newest)
