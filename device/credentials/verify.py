"""One entry point for every QR text a terminal reads: `verify_text(text, trust, at)`.

It recognises the format by its prefix and returns a `Verification` (result.py); it never
raises, whatever the input:

- "CHOT1:"  the native declaration (native.py, docs/native-declaration.md)
- "HC1:"    EU DCC: `device.credentials.dcc.verify(text, trust, at)`
- "shc:/"   SMART Health Card: `device.credentials.shc.verify(text, trust, at)`
- other printable text: plain (an ID number, a link): format "plain", reason "unsigned"
- binary content: format "unknown", reason "unknown_format"; empty or oversized: "unreadable"

Texts longer than native.MAX_TEXT characters are refused before any decoding. The DCC and
SHC modules are imported lazily; when one is absent its format fails "format_not_accepted".
The person a credential names is in `Verification.person` / `person_id` (chot.personal), in
memory only.
"""

import importlib
import inspect
import logging
import unicodedata
from datetime import UTC, datetime

from device.credentials import native, plain
from device.credentials.result import Verification

log = logging.getLogger(__name__)

MAX_TEXT = native.MAX_TEXT
STEPS = ("decode", "signature", "issuer", "time")
_DELEGATES = {"dcc": "dcc", "shc": "shc"}
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def format_of(text):
    """'native', 'dcc', 'shc', 'plain' or 'unknown' from the text alone (no decoding)."""
    if not isinstance(text, str) or not text.strip():
        return "unknown"
    t = text.strip()
    if t.startswith(native.PREFIX):
        return "native"
    if t.startswith("HC1:"):
        return "dcc"
    if t[:5].lower() == "shc:/":
        return "shc"
    if any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") and c not in _ALLOWED_CONTROLS for c in t):
        return "unknown"
    return "plain"


def _failed(text, fmt, reason, detail):
    v = Verification(text=text, format=fmt, steps=dict.fromkeys(STEPS))
    return v.fail("decode", reason, detail)


def _as_utc(at):
    if at is None:
        return datetime.now(UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _delegate(module, fmt, text, trust, at, skew_s):
    try:
        mod = importlib.import_module(f"device.credentials.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"device.credentials.{module}":
            raise
        mod = None
    fn = getattr(mod, "verify", None)
    if fn is None:
        return _failed(text, fmt, "format_not_accepted", f"{fmt} support is not installed on this terminal")
    try:
        accepts_skew = "skew_s" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        accepts_skew = False
    v = fn(text, trust, at, skew_s=skew_s) if accepts_skew else fn(text, trust, at)
    if not isinstance(v, Verification):
        raise TypeError(f"{module}.verify returned {type(v).__name__}")
    return v


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
    fmt = format_of(text)
    at = _as_utc(at)
    if fmt == "native":
        return native.verify(text.strip(), trust, at, skew_s)
    if fmt in _DELEGATES:
        return _delegate(_DELEGATES[fmt], fmt, text.strip(), trust, at, skew_s)
    if fmt == "plain":
        return plain.verify(text.strip())
    return _failed(text, "unknown", "unknown_format", "binary or control characters: not a known credential")


def verify_text(text, trust=None, at=None, skew_s: float = native.DEFAULT_SKEW_S) -> Verification:
    """Verify any QR text against `trust` (a TrustStore) at instant `at` (default now). Never raises."""
    try:
        return _verify(text, trust, at, skew_s)
    except Exception as exc:  # last resort: a bug must not stop the terminal, nor leak the content
        log.error("verification failed unexpectedly (%s); treated as unreadable", type(exc).__name__)
        fmt = format_of(text) if isinstance(text, str) else "unknown"
        keep = text[:MAX_TEXT] if isinstance(text, str) else None
        return _failed(keep, fmt, "unreadable", f"internal error ({type(exc).__name__})")
