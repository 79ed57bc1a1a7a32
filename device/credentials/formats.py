"""The credential format registry: one protocol, one static list of formats, chunk assembly.

Every QR text a terminal reads is handled by the first format of `FORMATS` whose `sniff`
says yes (the order is the registry's: prefixed formats first, shapes next, `plain` last):

    native   "CHOT2:"                 signed declaration (native.py; "CHOT1:" refused: re-issue)
    dcc      "HC1:"                   EU DCC (dcc.py)
    shc      "shc:/"                  SMART Health Card (shc.py); chunks "shc:/N/M/..." assembled here
    cccd     ID|old ID|name|...       chip ID card QR (cccd.py): an identity claim, unsigned
    pccovid  masked ID|NAME|...|0|QID PC-Covid personal QR (pccovid.py): an identity claim, unsigned
    plain    any other printable text (plain.py): an ID number, a link, a text

A format (`CredentialFormat`) says:

- `name`, `kind` ("signed", "claim" or "plain": what the policy does with it), `prefix` (or None);
- `sniff(text) -> bool`: is this text mine? (no decoding, bounded by the text's first bytes);
- `parse(text, at) -> Verification`: what the text says, no trust needed;
- `verify(text, trust, at, skew_s) -> Verification`: parse and check what can be checked;
- `accept(cfg) -> "pass" | "see_guard" | "fail"`: what the policy section allows for it;
- `rules(v, cfg, at) -> reason | None`: the format's own rules for a credential that verified;
- `trust_sources(cfg) -> [paths]` and `configure(cfg)`: trust material and settings to load at start-up;
  `load_trust_json(store, obj, path) -> count`: read a JSON trust file that is the format's own
  (a DCC trust list, an SHC jwks.json or CRL) into a TrustStore, 0 when it is not;
- `chunk(text) -> Chunk | None` and `join(bodies) -> text`: codes split over several QR symbols.

No lookup by string or import by name: the list is static. `ChunkAssembler` (pure logic, the
caller gives the time) collects chunks for the daemon and `chot scan`; the scanner yields texts
and knows nothing of formats (DESIGN.md: dependencies run one way).
"""

import logging
import time
import unicodedata
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from chot.errors import CredentialError
from chot.wire import Reason
from device.credentials import cccd, dcc, dcc_valuesets, native, pccovid, plain, shc
from device.credentials.bounds import MAX_TEXT

log = logging.getLogger(__name__)

SIGNED, CLAIM, PLAIN = "signed", "claim", "plain"
ACCEPT_PASS, ACCEPT_GUARD, ACCEPT_FAIL = "pass", "see_guard", "fail"
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


class Chunk(NamedTuple):
    """One part of a code split over several QR symbols: part `n` of `total` of set `set_key`."""

    set_key: object
    n: int
    total: int
    body: str


@runtime_checkable
class CredentialFormat(Protocol):
    """What every credential format provides (see the module doc)."""

    name: str
    kind: str
    prefix: str | None

    def sniff(self, text: str) -> bool: ...

    def parse(self, text, at=None): ...

    def verify(self, text, trust, at, skew_s): ...

    def accept(self, cfg) -> str: ...

    def rules(self, v, cfg, at) -> str | None: ...

    def trust_sources(self, cfg) -> list: ...

    def configure(self, cfg) -> None: ...

    def load_trust_json(self, store, obj, path) -> int: ...

    def chunk(self, text) -> Chunk | None: ...

    def join(self, bodies) -> str: ...


class BaseFormat:
    """Defaults: no chunks, no extra trust, nothing to configure, no rules, signed formats in
    `policy.accept_formats`; `parse` is `verify` without trust."""

    name = ""
    kind = SIGNED
    prefix = None

    def sniff(self, text):
        return isinstance(text, str) and self.prefix is not None and text.lstrip()[:len(self.prefix)] == self.prefix

    def parse(self, text, at=None):
        return self.verify(text, None, at, 0.0)

    def verify(self, text, trust, at, skew_s):
        raise NotImplementedError

    def accept(self, cfg):
        return ACCEPT_PASS if self.name in (getattr(cfg, "accept_formats", None) or ()) else ACCEPT_FAIL

    def rules(self, v, cfg, at):
        return None

    def trust_sources(self, cfg):
        return []

    def configure(self, cfg):
        return None

    def load_trust_json(self, store, obj, path):
        return 0

    def chunk(self, text):
        return None

    def join(self, bodies):
        return "".join(bodies)

    def __repr__(self):
        return f"<format {self.name}>"


class NativeFormat(BaseFormat):
    name, prefix = "native", native.PREFIX

    def sniff(self, text):
        """CHOT2: and the earlier CHOT1: (refused by `native.verify` with what to do)."""
        return super().sniff(text) or (isinstance(text, str) and text.lstrip().startswith(native.OLD_PREFIXES))

    def verify(self, text, trust, at, skew_s):
        return native.verify(text, trust, at, skew_s)

    def rules(self, v, cfg, at):
        """Age (`max_age_h`, 0: no limit), then the health answers per `fail_on_*`."""
        if cfg.max_age_h and v.issued_at is not None and at - v.issued_at > timedelta(hours=cfg.max_age_h):
            return Reason.EXPIRED
        c = v.claims
        if cfg.fail_on_symptoms and c.get("symptoms"):
            return Reason.SYMPTOMS_DECLARED
        if cfg.fail_on_contact and c.get("contact"):
            return Reason.CONTACT_DECLARED
        if cfg.fail_on_travel and c.get("travel"):
            return Reason.TRAVEL_DECLARED
        return None


def use_dcc_schemas(path):
    """Validate DCCs against the ehn-dcc-schema releases under `path`; CredentialError if it holds none."""
    path = Path(path)
    try:
        exists = path.is_dir()
    except OSError as exc:
        raise CredentialError(f"policy.dcc_schema_dir {path}: not readable ({exc.strerror}): run as the "
                              "service user, or fix the folder's permissions") from None
    if not exists:
        raise CredentialError(
            f"policy.dcc_schema_dir {path}: no such folder; install the ehn-dcc-schema releases there "
            "(chot provision device --dcc-schema DIR) or remove the key"
        )
    if not dcc.schema_releases(path):
        raise CredentialError(
            f"policy.dcc_schema_dir {path}: no schema release in it; it must hold one folder per version, "
            "e.g. 1.3.2/DCC.combined-schema.json, as ehn-dcc-schema publishes them"
        )
    if dcc.schema_dir() != str(path):
        dcc.set_schema_dir(path)
        log.info("DCC schemas from %s", path)


def use_dcc_valuesets(path):
    """Check DCC codes against the EU value sets under `path`; CredentialError when missing or broken."""
    try:
        dcc_valuesets.use_dir(path)
    except CredentialError as exc:
        raise CredentialError(f"policy.dcc_valueset_dir: {exc}") from None


class DccFormat(BaseFormat):
    name, prefix = "dcc", dcc.PREFIX

    def verify(self, text, trust, at, skew_s):
        return dcc.verify(text, trust, at, skew_s=skew_s)

    def rules(self, v, cfg, at):
        return dcc.rules(v, cfg, at)

    def configure(self, cfg):
        if getattr(cfg, "dcc_schema_dir", None):
            use_dcc_schemas(cfg.dcc_schema_dir)
        if getattr(cfg, "dcc_valueset_dir", None):
            use_dcc_valuesets(cfg.dcc_valueset_dir)

    def load_trust_json(self, store, obj, path):
        return dcc.load_trust_json(store, obj)


class ShcFormat(BaseFormat):
    name, prefix = "shc", shc.PREFIX

    def sniff(self, text):
        return isinstance(text, str) and text.lstrip()[:5].lower() == self.prefix

    def verify(self, text, trust, at, skew_s):
        return shc.verify(text, trust, at, skew_s=skew_s)

    def rules(self, v, cfg, at):
        return shc.rules(v, cfg, at)

    def trust_sources(self, cfg):
        return list(getattr(cfg, "shc_crl", None) or [])

    def load_trust_json(self, store, obj, path):
        return shc.load_trust_json(store, obj, path)

    def chunk(self, text):
        c = shc.parse_chunk(text)
        if c is None:
            return None
        n, total, digits = c
        return Chunk(total, n, total, digits)  # the parts carry no card id: a set is known by M

    def join(self, bodies):
        return shc.join_chunks(bodies)


class ClaimFormat(BaseFormat):
    """An identity claim with no signature: what it gets is `policy.accept_<name>`."""

    kind = CLAIM

    def __init__(self, module):
        self.module = module
        self.name = module.NAME

    def sniff(self, text):
        return self.module.sniff(text)

    def verify(self, text, trust, at, skew_s):
        return self.module.verify(text, trust, at, skew_s)

    def accept(self, cfg):
        mode = getattr(cfg, f"accept_{self.name}", ACCEPT_GUARD)
        return mode if mode in (ACCEPT_PASS, ACCEPT_GUARD, ACCEPT_FAIL) else ACCEPT_GUARD


class PlainFormat(BaseFormat):
    name, kind = "plain", PLAIN

    def sniff(self, text):
        if not isinstance(text, str) or not text.strip():
            return False
        return not any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") and c not in _ALLOWED_CONTROLS
                       for c in text.strip())

    def verify(self, text, trust, at, skew_s):
        return plain.verify(text)

    def accept(self, cfg):
        ok = bool(getattr(cfg, "accept_plain", False)) or "plain" in (getattr(cfg, "accept_formats", None) or ())
        return ACCEPT_PASS if ok else ACCEPT_FAIL


FORMATS = (
    NativeFormat(),
    DccFormat(),
    ShcFormat(),
    ClaimFormat(cccd),
    ClaimFormat(pccovid),
    PlainFormat(),  # last: any printable text
)
BY_NAME = {f.name: f for f in FORMATS}
NAMES = tuple(BY_NAME)


def format_for(text):
    """The format of `text` (the first whose sniff says yes), or None (binary, empty, control characters)."""
    if not isinstance(text, str) or not text.strip():
        return None
    for f in FORMATS:
        if f.sniff(text):
            return f
    return None


def by_name(name):
    """The format called `name`, or None."""
    return BY_NAME.get(name)


def trust_sources(cfg):
    """Every format's extra trust material named in the policy section (e.g. SHC CRLs)."""
    out = []
    for f in FORMATS:
        out += f.trust_sources(cfg)
    return out


def configure(cfg):
    """Let every format read its settings (e.g. the DCC schemas); CredentialError if one is unusable."""
    for f in FORMATS:
        f.configure(cfg)


# --- codes split over several QR symbols --------------------------------------------------------

MAX_SETS = 8  # incomplete sets held at once: more is no person in front of one terminal


class ChunkAssembler:
    """Collects the chunks of codes split over several QR symbols until a set is complete.

    `feed(text, now)` returns a text ready for verification: a text that is no chunk at once,
    a chunk only when it completes its set (then the whole code, `format.join` of the bodies in
    order), else None. Parts older than `timeout_s` are dropped. A part that conflicts with a
    stored one (same set, same N, other body) means another code is now in front of the camera:
    the old incomplete set is dropped and a new one started, so two codes are never mixed.
    """

    def __init__(self, timeout_s=30.0, formats=FORMATS):
        self.timeout_s = float(timeout_s)
        self.formats = tuple(formats)
        self._sets = {}  # (format name, set key) -> {N: (body, time seen)}

    def _expire(self, now):
        for key in list(self._sets):
            parts = self._sets[key]
            for n in [n for n, (_, t) in parts.items() if now - t > self.timeout_s]:
                del parts[n]
            if not parts:
                del self._sets[key]

    def _chunk(self, text):
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            return None, None
        for f in self.formats:
            c = f.chunk(text)
            if c is not None:
                return f, c
        return None, None

    def feed(self, text, now=None):
        """The text to verify now, or None while parts are missing (see the class doc)."""
        now = time.monotonic() if now is None else float(now)
        self._expire(now)
        fmt, chunk = self._chunk(text)
        if chunk is None:
            return text
        if chunk.total == 1:
            return fmt.join([chunk.body])
        key = (fmt.name, chunk.set_key)
        if key not in self._sets and len(self._sets) >= MAX_SETS:
            oldest = min(self._sets, key=lambda k: max(t for _, t in self._sets[k].values()))
            del self._sets[oldest]
        parts = self._sets.setdefault(key, {})
        old = parts.get(chunk.n)
        if old is not None and old[0] != chunk.body:
            log.debug("chunk %d/%d differs from the one held: another code, starting a new set", chunk.n, chunk.total)
            parts.clear()
        parts[chunk.n] = (chunk.body, now)
        if len(parts) < chunk.total:
            return None
        del self._sets[key]
        return fmt.join([parts[i][0] for i in range(1, chunk.total + 1)])

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

    def pending_formats(self):
        """The names of the formats with an incomplete set held, sorted."""
        return sorted({name for name, _ in self._sets})

    def clear(self):
        """Forget every part held."""
        self._sets.clear()


def parse_chunk(text):
    """(N, M, digits) of an SHC chunk `shc:/N/M/digits`, else None (kept for callers of the old API)."""
    return shc.parse_chunk(text)
