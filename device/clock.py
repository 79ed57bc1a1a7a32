"""The terminal's clock and how far it can be trusted.

A Raspberry Pi has no real-time clock: until NTP has synchronised it, the wall-clock time
may be days off. Each event therefore carries the time together with the clock's quality
(`clock_quality()`): whether the kernel considers the clock synchronised, the boot id, the
monotonic time (`time.monotonic_ns()`, CLOCK_MONOTONIC: every monotonic reading of the terminal
uses this one clock) and, once the collector has acked something, `ref`: the collector's time of
the latest accepted ack and this boot's monotonic time when that ack arrived (`set_ref`, called
by the uplink; kept in memory for this process). The collector re-anchors an event of the same
boot as ref.time + (mono_ns - ref.mono_ns), whatever the wall clock said.

`synced` comes from the kernel through adjtimex(2) (read-only, called with ctypes; no
subprocess), cached for a few seconds so the frame loop pays almost nothing for it.
"""

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from datetime import UTC, datetime

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
TIMESYNCD_FLAG = "/run/systemd/timesync/synchronized"
CACHE_S = 10.0
TIME_ERROR = 5  # adjtimex return value: the clock is not synchronised
STA_UNSYNC = 0x0040
MAX_ERROR_US = 16_000_000  # NTP_PHASE_LIMIT: the kernel's limit of a synchronised clock


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (the glibc `adjtimex` symbol, native long layout)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 32),  # generous padding
    ]


_lock = threading.Lock()
_cache = {"at": None, "synced": False}
_adjtimex = None
_boot_id = None
_ref = None  # {"time": ISO text, "mono_ns": int}: the latest time anchor from the collector


def _load_adjtimex():
    global _adjtimex
    if _adjtimex is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.adjtimex
            fn.argtypes = [ctypes.POINTER(_Timex)]
            fn.restype = ctypes.c_int
            _adjtimex = fn
        except (OSError, AttributeError) as exc:  # not Linux/glibc
            log.warning("adjtimex is not available (%s); clock quality from %s only", exc, TIMESYNCD_FLAG)
            _adjtimex = False
    return _adjtimex


def kernel_synced():
    """Ask the kernel (adjtimex, read-only) whether the clock is synchronised; no cache."""
    fn = _load_adjtimex()
    if fn:
        tx = _Timex()
        tx.modes = 0  # read only
        state = fn(ctypes.byref(tx))
        if state >= 0:
            return state != TIME_ERROR and not (tx.status & STA_UNSYNC) and 0 <= tx.maxerror < MAX_ERROR_US
    return os.path.exists(TIMESYNCD_FLAG)


def is_synced():
    """Whether the clock is synchronised, cached for `CACHE_S` seconds."""
    now = time.monotonic()
    with _lock:
        if _cache["at"] is None or now - _cache["at"] >= CACHE_S:
            try:
                _cache["synced"] = bool(kernel_synced())
            except OSError:
                _cache["synced"] = False
            _cache["at"] = now
        return _cache["synced"]


def boot_id():
    """The kernel's boot id (a UUID that changes at every boot); read once."""
    global _boot_id
    if _boot_id is None:
        try:
            with open(BOOT_ID_PATH, encoding="ascii") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = "unknown"
    return _boot_id


def mono_ns():
    """The terminal's monotonic time in ns (CLOCK_MONOTONIC, the clock of `mono_ns` and `ref.mono_ns`)."""
    return time.monotonic_ns()


def set_ref(collector_time, received_mono_ns):
    """Keep a time anchor: the collector's UTC time (ISO text, from an accepted ack) and `mono_ns()`
    when it arrived. Later events carry it as `clock.ref`. Kept in memory only (per process)."""
    global _ref
    with _lock:
        _ref = {"time": str(collector_time), "mono_ns": int(received_mono_ns)}


def get_ref():
    """The latest time anchor from the collector ({"time", "mono_ns"}) or None."""
    with _lock:
        return dict(_ref) if _ref is not None else None


def clear_ref():
    global _ref
    with _lock:
        _ref = None


def clock_quality():
    """{"synced", "boot_id", "mono_ns"[, "ref"]}, as stored in every event: one monotonic reading."""
    q = {"synced": is_synced(), "boot_id": boot_id(), "mono_ns": mono_ns()}
    ref = get_ref()
    if ref is not None and ref["mono_ns"] <= q["mono_ns"]:
        q["ref"] = ref
    return q


def utc_now_iso(now=None):
    """The time as "YYYY-MM-DDTHH:MM:SS.ffffffZ" (UTC), as in events; `now` a datetime or epoch seconds."""
    if now is None:
        dt = datetime.now(UTC)
    elif isinstance(now, int | float):
        dt = datetime.fromtimestamp(now, UTC)
    else:
        dt = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
