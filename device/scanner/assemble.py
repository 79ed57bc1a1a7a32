"""Codes split over several QR symbols, assembled across frames (SMART Health Cards chunks).

A SMART Health Card too large for one QR code was split (the spec's "chunking", deprecated
since VCI 1.3.0 but in the wild and in the spec's example 02) into M symbols
`shc:/<N>/<M>/<digits>`, N = 1..M. The JWS was cut into M consecutive pieces and each piece
numeric-encoded (two digits per character), so the whole card is `shc:/` followed by the
digits of parts 1..M in order. The parts carry no card id: a set is identified by M.

`ChunkAssembler.feed(text, now)` returns a text ready for verification: a plain text at
once, a chunk only when it completes its set (then the assembled `shc:/<digits>`), else None.
Parts older than `timeout_s` are dropped. A part that conflicts with a stored one (same N and
M, other digits) means another card is now in front of the camera: the old incomplete set is
dropped and a new one started with the new part, so two cards are never mixed.
"""

import logging
import re
import time

log = logging.getLogger(__name__)

CHUNK = re.compile(r"shc:/(\d{1,3})/(\d{1,3})/(\d+)", re.IGNORECASE)
MAX_PARTS = 32  # more parts than this is no card anyone can show: passed on as it is


def parse_chunk(text):
    """(N, M, digits) for a chunk `shc:/N/M/digits` with 1 <= N <= M, else None."""
    m = CHUNK.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        return None
    n, total, digits = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 1 <= n <= total <= MAX_PARTS:
        return None
    return n, total, digits


class ChunkAssembler:
    """Collects `shc:/N/M/...` chunks until a set is complete; plain texts pass straight through."""

    def __init__(self, timeout_s=30.0):
        self.timeout_s = float(timeout_s)
        self._sets = {}  # M -> {N: (digits, time seen)}

    def _expire(self, now):
        for total in list(self._sets):
            parts = self._sets[total]
            for n in [n for n, (_, t) in parts.items() if now - t > self.timeout_s]:
                del parts[n]
            if not parts:
                del self._sets[total]

    def feed(self, text, now=None):
        """The text to verify now: `text` itself if it is no chunk, the assembled card when
        `text` completes a set, None while parts are missing."""
        now = time.monotonic() if now is None else float(now)
        self._expire(now)
        chunk = parse_chunk(text)
        if chunk is None:
            return text
        n, total, digits = chunk
        if total == 1:
            return "shc:/" + digits
        parts = self._sets.setdefault(total, {})
        old = parts.get(n)
        if old is not None and old[0] != digits:
            log.debug("chunk %d/%d differs from the one held: another card, starting a new set", n, total)
            parts.clear()
        parts[n] = (digits, now)
        if len(parts) < total:
            return None
        del self._sets[total]
        return "shc:/" + "".join(parts[i][0] for i in range(1, total + 1))

    def feed_all(self, texts, now=None):
        """`feed` for every text of one frame; the list of texts ready to verify."""
        out = []
        for t in texts:
            r = self.feed(t, now)
            if r is not None:
                out.append(r)
        return out

    def pending(self, now=None):
        """The number of incomplete sets held (first dropping parts too old at `now`, if given)."""
        if now is not None:
            self._expire(float(now))
        return len(self._sets)

    def clear(self):
        """Forget every part held."""
        self._sets.clear()
