"""Bounds on everything a credential parser reads from a QR text: the hostile-input guards (issue 11).

Every reader (native.py, dcc.py, shc.py, plain.py, verify.py) goes through these, so that any
text of up to MAX_TEXT characters is refused or read in bounded time and memory:

- `MAX_TEXT`: longer texts are refused before anything is decoded;
- `inflate_bounded`: zlib / raw DEFLATE inflated to at most `limit` bytes; zlib stops as soon as
  the limit is reached (it never produces the rest of a "zip bomb");
- `check_cbor`: a CBOR document is walked, without building it, before cbor2 may decode it: at
  most MAX_CBOR_ITEMS data items, nested at most MAX_CBOR_DEPTH deep, only the tags its format
  uses (value sharing 28/29, string references 25/256, bignums 2/3 and every other tag refused),
  map keys only integers or texts and never twice in one map, strings within the document;
- `loads_json`: JSON no deeper than MAX_JSON_DEPTH (checked by a linear scan before parsing),
  integer literals of at most MAX_JSON_INT_DIGITS digits, no NaN/Infinity;
- `time_problem`: a credential's own times (iat/nbf, exp) between 1970 and the year 9999,
  issued before it expires, valid for at most a format's maximum;
- `is_low_s`: an ECDSA P-256 signature in the low-s form (s <= n/2).

`meter()` counts what the guards let through (bytes inflated, CBOR items walked, JSON depth):
the tests use it to prove the bounds hold; outside a `with meter()` block counting costs one
context-variable read per call. Pure logic, no I/O.
"""

import contextvars
import json
import math
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field

MAX_TEXT = 8192  # characters of QR text accepted at all (a QR code holds at most 7,089 digits)
MAX_INFLATED = 65536  # bytes a compressed payload may inflate to
MAX_CBOR_ITEMS = 1024  # data items in one CBOR document (a DCC has about 60, a declaration about 30)
MAX_CBOR_DEPTH = 16  # nesting (a DCC's claims are 5 deep)
MAX_JSON_DEPTH = 32  # nesting of a JSON document (an SHC's FHIR bundle is about 10 deep)
MAX_JSON_INT_DIGITS = 20  # digits of one JSON integer literal

# Tags each CBOR document may use. Everything else is refused by the walk, before decoding.
COSE_TAGS = frozenset({18, 61})  # COSE_Sign1, inside an optional CWT tag
NO_TAGS = frozenset()  # COSE headers, the native declaration's claims
# DCC claims: standard date/time (0), epoch date/time (1) and the RFC 8943 dates (100, 1004)
# that some issuers' encoders write into the certificate (dgc-testdata: tag 0 in HU and SE cases).
DCC_CLAIM_TAGS = frozenset({0, 1, 100, 1004})
_TAG_NAMES = {
    2: "a bignum", 3: "a negative bignum", 4: "a decimal fraction", 5: "a bigfloat",
    25: "a string reference", 256: "a string reference namespace", 28: "value sharing", 29: "value sharing",
}

# A credential's own times (seconds since 1970-01-01T00:00:00Z).
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: the last instant a datetime can hold

_CBOR_ARG = {24: 1, 25: 2, 26: 4, 27: 8}
_ARRAY, _MAP, _TAG, _CHUNKS = 0, 1, 2, 3


# ---------------------------------------------------------------- instrumentation


@dataclass
class Meter:
    """What the guards saw during a `with meter()` block (the largest of each, and how many)."""

    inflated_max: int = 0  # the most bytes one inflate produced
    inflates: int = 0
    cbor_items_max: int = 0  # the most items one CBOR walk counted
    cbor_walks: int = 0
    json_depth_max: int = 0
    json_loads: int = 0
    refused: list = field(default_factory=list)  # the messages of the bounds that refused something


_METER = contextvars.ContextVar("chot_bounds_meter", default=None)


@contextmanager
def meter():
    """Count what the guards see in this block (tests and the bench); yields a Meter."""
    m = Meter()
    token = _METER.set(m)
    try:
        yield m
    finally:
        _METER.reset(token)


def _refuse(message):
    m = _METER.get()
    if m is not None:
        m.refused.append(message)
    return ValueError(message)


# ---------------------------------------------------------------- text and compression


def check_text(text, what="text"):
    """ValueError when `text` is longer than MAX_TEXT characters."""
    if len(text) > MAX_TEXT:
        raise _refuse(f"{what}: longer than {MAX_TEXT} characters")


def inflate_bounded(data: bytes, limit: int = MAX_INFLATED, raw: bool = False) -> bytes:
    """Inflate zlib (or, with `raw`, raw DEFLATE) data to at most `limit` bytes.

    ValueError on bad or truncated data, or when it would inflate beyond `limit` (zip bombs): zlib
    is asked for `limit` + 1 bytes at most, so a bomb costs the same as `limit` bytes of output.
    """
    what = "DEFLATE" if raw else "zlib"
    d = zlib.decompressobj(-15 if raw else 15)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"{what}: bad compressed data") from exc
    m = _METER.get()
    if m is not None:
        m.inflates += 1
        m.inflated_max = max(m.inflated_max, len(out))
    if len(out) > limit or d.unconsumed_tail:
        raise _refuse(f"{what}: inflates beyond {limit} bytes")
    if not d.eof:
        raise ValueError(f"{what}: truncated compressed data")
    if d.unused_data:
        raise ValueError(f"{what}: bytes after the compressed data")
    return out


# ---------------------------------------------------------------- CBOR


def check_cbor(data, tags=NO_TAGS, max_items: int = MAX_CBOR_ITEMS, max_depth: int = MAX_CBOR_DEPTH) -> None:
    """Walk one CBOR document without building it; ValueError when it is malformed or out of bounds.

    Refused: a tag not in `tags`, more than `max_items` data items, nesting deeper than
    `max_depth` (arrays, maps, tags and indefinite strings each count one level), a map key that
    is not an integer or a definite text, the same key twice in one map, a string or container
    longer than the document, bytes after it. Linear in the document's length.
    """
    data = bytes(data)
    n, pos, items = len(data), 0, 0
    # open containers: [children left (-1: indefinite, until a break), kind, map keys seen or the
    # string major type of an indefinite string, children started]
    stack = []
    try:
        while True:
            if pos >= n:
                raise ValueError("CBOR: truncated")
            ib = data[pos]
            pos += 1
            top = stack[-1] if stack else None
            if ib == 0xFF:  # break: closes an indefinite container
                if top is None or top[0] != -1:
                    raise ValueError("CBOR: unexpected break")
                if top[1] == _MAP and top[3] % 2:
                    raise ValueError("CBOR: a map key without a value")
                stack.pop()
                if _cbor_done(stack):
                    break
                continue
            if items >= max_items:
                raise _refuse(f"CBOR: more than {max_items} items")
            items += 1
            major, ai = ib >> 5, ib & 31
            if ai < 24:
                arg = ai
            elif ai in _CBOR_ARG:
                k = _CBOR_ARG[ai]
                if pos + k > n:
                    raise ValueError("CBOR: truncated")
                arg = int.from_bytes(data[pos:pos + k], "big")
                pos += k
            elif ai == 31 and major in (2, 3, 4, 5):
                arg = None
            else:
                raise ValueError("CBOR: reserved additional information")
            if top is not None:
                if top[1] == _CHUNKS and (major != top[2] or arg is None):
                    raise ValueError("CBOR: an indefinite string holds something else than definite chunks")
                if top[1] == _MAP and top[3] % 2 == 0:  # a map key
                    if major in (0, 1):
                        key = (major, arg)
                    elif major == 3 and arg is not None and pos + arg <= n:
                        key = data[pos:pos + arg]
                    else:
                        raise _refuse("CBOR: a map key that is not an integer or a text")
                    if key in top[2]:
                        raise _refuse("CBOR: the same map key twice")
                    top[2].add(key)
                top[3] += 1
            child = None
            if major in (2, 3):
                if arg is None:
                    child = [-1, _CHUNKS, major, 0]
                else:
                    if arg > n - pos:
                        raise ValueError("CBOR: truncated string")
                    pos += arg
            elif major in (4, 5):
                if arg is not None and arg > max_items:
                    raise _refuse(f"CBOR: more than {max_items} items")
                if arg is None:
                    child = [-1, major - 4, set() if major == 5 else None, 0]
                elif arg:
                    child = [arg * (major - 3), major - 4, set() if major == 5 else None, 0]
            elif major == 6:
                if arg not in tags:
                    name = _TAG_NAMES.get(arg)
                    raise _refuse(f"CBOR: tag {arg}{f' ({name})' if name else ''} is not used by this format")
                child = [1, _TAG, None, 0]
            if child is not None:
                if len(stack) >= max_depth:
                    raise _refuse(f"CBOR: nested deeper than {max_depth}")
                stack.append(child)
            elif _cbor_done(stack):
                break
        if pos != n:
            raise ValueError("CBOR: bytes after the document")
    finally:
        m = _METER.get()
        if m is not None:
            m.cbor_walks += 1
            m.cbor_items_max = max(m.cbor_items_max, items)


def _cbor_done(stack):
    """One item finished: count it off its containers, closing those it completes; True when the
    top-level item is complete."""
    while stack:
        top = stack[-1]
        if top[0] < 0:
            return False  # an indefinite container stays open until its break
        top[0] -= 1
        if top[0]:
            return False
        stack.pop()
    return True


def loads_cbor(data, tags=NO_TAGS, what="CBOR"):
    """Walk (`check_cbor`) then decode one CBOR document; ValueError when either fails."""
    import cbor2

    check_cbor(data, tags)
    try:
        return cbor2.loads(data)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on bad input
        raise ValueError(f"{what}: not CBOR") from exc


# ---------------------------------------------------------------- JSON

_JSON_SKIP = re.compile(rb'[^"\[\]{}]*')
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of a JSON text (brackets outside strings); ValueError beyond `limit` or on an
    unterminated string. Linear: every byte is looked at once, by a regular expression."""
    n, pos, depth, deepest = len(data), 0, 0, 0
    while True:
        pos = _JSON_SKIP.match(data, pos).end()
        if pos >= n:
            return deepest
        c = data[pos]
        if c == 0x22:  # '"': a string, skipped whole
            m = _JSON_STRING.match(data, pos)
            if m is None:
                raise ValueError("JSON: unterminated string")
            pos = m.end()
            continue
        if c in (0x5B, 0x7B):  # '[', '{'
            depth += 1
            if depth > limit:
                raise _refuse(f"JSON: nested deeper than {limit}")
            deepest = max(deepest, depth)
        else:
            depth -= 1
        pos += 1


def _json_int(text):
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _refuse(f"JSON: an integer of more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def _json_float(text):
    if len(text) > 64:
        raise _refuse("JSON: a number of more than 64 characters")
    value = float(text)
    if not math.isfinite(value):
        raise _refuse("JSON: a number out of range")
    return value


def _json_constant(name):
    raise _refuse(f"JSON: {name} is not JSON")


def loads_json(data, what="JSON", max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON (bytes, UTF-8) within the bounds above; ValueError naming `what` when it is not."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        depth = json_depth(data, max_depth)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    m = _METER.get()
    if m is not None:
        m.json_loads += 1
        m.json_depth_max = max(m.json_depth_max, depth)
    try:
        return json.loads(data.decode("utf-8"), parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_json_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what}: not JSON ({exc})"[:200]) from exc


# ---------------------------------------------------------------- times


def time_problem(iat, exp, max_validity_s=None, iat_name="iat"):
    """None when a credential's own times are sane, else what is wrong (for the reason `bad_validity`).

    `iat` and `exp` are seconds since the epoch (int or float; `exp` may be None when the format
    allows no expiry). Refused: not a finite number, before 1970, after the year 9999, `exp`
    before `iat`, and `exp - iat` beyond `max_validity_s` (when given).
    """
    for name, t in ((iat_name, iat), ("exp", exp)):
        if t is None and name == "exp":
            continue
        if isinstance(t, bool) or not isinstance(t, int | float) or (isinstance(t, float) and not math.isfinite(t)):
            return f"{name} is not a number of seconds"
        if t < 0:
            return f"{name} is before 1970"
        if t > MAX_EPOCH:
            return f"{name} is after the year 9999"
    if exp is not None:
        if exp < iat:
            return f"exp is before {iat_name}"
        if max_validity_s is not None and exp - iat > max_validity_s:
            return f"valid for more than {max_validity_s / 86400:.0f} days (exp - {iat_name})"
    return None


# ---------------------------------------------------------------- ECDSA


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def is_high_s(s: int, n: int = P256_N) -> bool:
    """True when an ECDSA `s` is in the high half (s > n/2): the twin a low-s format refuses."""
    return s > n // 2


def is_low_s(s: int, n: int = P256_N) -> bool:
    """True when an ECDSA `s` is in the low half (s <= n/2): of the twins (r, s) and (r, n - s),
    which both verify, exactly one is."""
    return 0 < s <= n // 2
