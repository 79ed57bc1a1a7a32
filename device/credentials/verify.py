"""One entry point for every QR text a terminal reads: `verify_text(text, trust, at)`.

It asks the format registry (formats.py) which format the text is, by prefix or shape, and
returns that format's `Verification` (result.py); it never raises, whatever the input:

- "CHOT2:"  the native declaration (native.py, docs/native-declaration.md; "CHOT1:" refused)
- "HC1:"    EU DCC (dcc.py); "shc:/" SMART Health Card (shc.py)
- a chip ID card's QR (cccd.py) and a PC-Covid personal QR (pccovid.py): identity claims
- other printable text: plain (an ID number, a link): format "plain", reason "unsigned"
- binary content: format "unknown", reason "unknown_format"; empty or oversized: "unreadable"

Texts longer than bounds.MAX_TEXT characters are refused before any decoding. The person a
credential names is in `Verification.person` / `person_id` (chot.personal), in memory only.
"""

import logging
from datetime import UTC, datetime

from device.credentials import formats, native
from device.credentials.bounds import MAX_TEXT
from device.credentials.result import Verification

log = logging.getLogger(__name__)

STEPS = ("decode", "signature", "issuer", "time")


def format_of(text):
    """The registry's name for `text` ('native', 'dcc', 'shc', 'cccd', 'pccovid', 'plain') or 'unknown'."""
    f = formats.format_for(text)
    return f.name if f is not None else "unknown"


def _failed(text, fmt, reason, detail):
    v = Verification(text=text, format=fmt, steps=dict.fromkeys(STEPS))
    return v.fail("decode", reason, detail)


def _as_utc(at):
    if at is None:
        return datetime.now(UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _verify(text, trust, at, skew_s):
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return _failed(None, "unknown", "unknown_format", "binary content, not text")
    if not isinstance(text, str) or not text.strip():
        return _failed(None if not isinstance(text, str) else text, "unknown", "unreadable", "empty")
    if len(text) > MAX_TEXT:
        fmt = format_of(text[:64])
        return _failed(text[:MAX_TEXT], fmt if fmt != "plain" else "unknown", "unreadable",
                       f"longer than {MAX_TEXT} characters")
    fmt = formats.format_for(text)
    if fmt is None:
        return _failed(text, "unknown", "unknown_format", "binary or control characters: not a known credential")
    v = fmt.verify(text.strip(), trust, _as_utc(at), skew_s)
    if not isinstance(v, Verification):
        raise TypeError(f"format {fmt.name}: verify returned {type(v).__name__}")
    return v


def verify_text(text, trust=None, at=None, skew_s: float = native.DEFAULT_SKEW_S) -> Verification:
    """Verify any QR text against `trust` (a TrustStore) at instant `at` (default now). Never raises."""
    try:
        return _verify(text, trust, at, skew_s)
    except Exception as exc:  # last resort: a bug must not stop the terminal, nor leak the content
        log.error("verification failed unexpectedly (%s); treated as unreadable", type(exc).__name__)
        fmt = format_of(text) if isinstance(text, str) else "unknown"
        keep = text[:MAX_TEXT] if isinstance(text, str) else None
        return _failed(keep, fmt, "unreadable", f"internal error ({type(exc).__name__})")
