"""Staff cards: a QR code the collector signs that lets a staff member record paper declarations at the gate.

Made by `chot collector staff-card` (collector/cli.py), read by the terminal (device/paper.py).
Shared by both, like `chot.wire`: the format is a contract between them.

The text is `CHOTSTAFF:` + base45(payload || signature), every character in QR's alphanumeric
mode, so the code stays small (a version 7 to 9 QR for a usual name and one or two checkpoints):

- payload: a msgpack array [1, card id (8 random bytes), name, [checkpoint, ...], issued, expires]
  (times in Unix seconds, UTC);
- signature: Ed25519 over `CHOTSTAFF-v1\\x00` + payload with the collector's signing key
  (collector.signing_key; terminals pin its public key as `mqtt.collector_public_key`).

What is on the card: the staff member's name (it is their own card, like a badge with their name
printed on it; anyone who reads the code can read the name), the checkpoints where it opens a
paper window, its validity and a random card id. Nothing else: no ID number, no phone. The
terminal never logs or stores the name in clear; it seals it, with the card id, into the paper
declaration's personal part (docs/security.md, "Staff cards"). Logs and the CLI name the card by
its id only. A lost card is revoked by its id: the deny list entry `revoked:staff:<card id>`.
"""

import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import msgspec

from chot import wire
from chot.errors import ChotError

PREFIX = "CHOTSTAFF:"
VERSION = 1
DOMAIN = b"CHOTSTAFF-v1\x00"
CARD_ID_BYTES = 8
MAX_NAME = 64
MAX_CHECKPOINTS = 16
MAX_DAYS = 366
MAX_TEXT = 2000
SIG_BYTES = 64
DEFAULT_SKEW_S = 300.0  # a card issued up to this far in the terminal's future is still accepted


class StaffReason(StrEnum):
    """Why a staff card was refused (or `ok`)."""

    OK = "ok"
    UNREADABLE = "unreadable"  # not a staff card text, damaged, or of an unknown version
    BAD_SIGNATURE = "bad_signature"  # not signed by this terminal's collector: forged or another fleet's
    NO_KEY = "no_collector_key"  # the terminal has no collector public key pinned: it cannot check a card
    REVOKED = "revoked"  # its card id is in the deny list's revoked ids
    CLOCK_BEHIND = "clock_behind"  # the terminal's clock reads before its time floor: validity unknowable
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_CHECKPOINT = "wrong_checkpoint"  # valid, but not for this terminal's checkpoint
    DISABLED = "paper_disabled"  # policy.paper_window_s = 0 on this terminal
    NO_SEAL_KEY = "no_seal_key"  # the terminal has no sealing key: it could not record who declared what


class StaffCardError(ChotError):
    """A staff card that cannot be made or is refused; `reason` is a StaffReason."""

    def __init__(self, reason, message):
        self.reason = StaffReason(reason)
        super().__init__(message)


class StaffCard(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The signed payload. `name` is personal: never log or print it."""

    v: int
    card_id: bytes
    name: str
    checkpoints: list[str]
    issued: int
    expires: int

    @property
    def id_hex(self):
        return self.card_id.hex()

    @property
    def revocation_id(self):
        """The credential id the deny list revokes it by (`revoked:staff:<card id>` in its input)."""
        return revocation_id(self.id_hex)

    def __repr__(self):  # never print the name by accident
        return f"StaffCard({self.id_hex}, {len(self.checkpoints)} checkpoints, expires {self.expires})"

    __str__ = __repr__


def revocation_id(card_id_hex):
    return f"staff:{card_id_hex}"


_decoder = msgspec.msgpack.Decoder(StaffCard)
_encoder = msgspec.msgpack.Encoder()

# --- base45 (RFC 9285) ------------------------------------------------------------------------

_B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {c: i for i, c in enumerate(_B45)}


def b45encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = divmod(n, 45 * 45)
        b, a = divmod(n, 45)
        out += [_B45[a], _B45[b], _B45[c]]
    if len(data) % 2:
        b, a = divmod(data[-1], 45)
        out += [_B45[a], _B45[b]]
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Bytes of a base45 text; ValueError when it is not base45."""
    try:
        vals = [_B45_INDEX[c] for c in text]
    except KeyError:
        raise ValueError("not base45: a character outside its alphabet") from None
    if len(vals) % 3 == 1:
        raise ValueError("not base45: wrong length")
    out = bytearray()
    for i in range(0, len(vals), 3):
        chunk = vals[i:i + 3]
        n = sum(v * 45**k for k, v in enumerate(chunk))
        if len(chunk) == 3:
            if n > 0xFFFF:
                raise ValueError("not base45: a triple out of range")
            out += n.to_bytes(2, "big")
        else:
            if n > 0xFF:
                raise ValueError("not base45: a pair out of range")
            out.append(n)
    return bytes(out)


# --- making and reading -----------------------------------------------------------------------


def _unix(at):
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    return int(at.timestamp())


def _check_fields(name, checkpoints, days):
    name = " ".join(str(name or "").split())
    if not name:
        raise StaffCardError(StaffReason.UNREADABLE, "staff card: give the staff member's name")
    if len(name) > MAX_NAME:
        raise StaffCardError(StaffReason.UNREADABLE, f"staff card: the name is longer than {MAX_NAME} characters")
    cps = list(dict.fromkeys(str(c) for c in checkpoints or ()))
    if not cps:
        raise StaffCardError(StaffReason.UNREADABLE, "staff card: give at least one --checkpoint")
    if len(cps) > MAX_CHECKPOINTS:
        raise StaffCardError(StaffReason.UNREADABLE, f"staff card: at most {MAX_CHECKPOINTS} checkpoints")
    for cp in cps:
        if not wire.CHECKPOINT_RE.fullmatch(cp):
            raise StaffCardError(StaffReason.UNREADABLE,
                                 f"staff card: checkpoint {cp!r} is not a checkpoint id ({wire.CHECKPOINT_PATTERN})")
    if not 0 < days <= MAX_DAYS:
        raise StaffCardError(StaffReason.UNREADABLE, f"staff card: --days must be more than 0 and at most {MAX_DAYS}")
    return name, cps


def make_card(signing_key, name, checkpoints, days=30.0, now=None, card_id=None):
    """(text, StaffCard) of a new card signed with `signing_key` (an Ed25519 private key)."""
    name, cps = _check_fields(name, checkpoints, float(days))
    now = now or datetime.now(UTC)
    card = StaffCard(
        v=VERSION,
        card_id=card_id or secrets.token_bytes(CARD_ID_BYTES),
        name=name,
        checkpoints=cps,
        issued=_unix(now),
        expires=_unix(now + timedelta(days=float(days))),
    )
    payload = _encoder.encode(card)
    sig = signing_key.sign(DOMAIN + payload)
    return PREFIX + b45encode(payload + sig), card


def is_staff_text(text):
    return isinstance(text, str) and text.startswith(PREFIX)


def parse(text):
    """(StaffCard, payload, signature) of a card text, signature NOT checked; StaffCardError(unreadable)."""
    if not is_staff_text(text) or len(text) > MAX_TEXT:
        raise StaffCardError(StaffReason.UNREADABLE, "not a staff card (CHOTSTAFF:...) or too long")
    try:
        raw = b45decode(text[len(PREFIX):].strip())
    except ValueError as exc:
        raise StaffCardError(StaffReason.UNREADABLE, f"staff card damaged: {exc}") from None
    if len(raw) <= SIG_BYTES:
        raise StaffCardError(StaffReason.UNREADABLE, "staff card damaged: too short to hold a signature")
    payload, sig = raw[:-SIG_BYTES], raw[-SIG_BYTES:]
    try:
        card = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise StaffCardError(StaffReason.UNREADABLE, "staff card damaged: its content is not a staff card") from None
    if card.v != VERSION:
        raise StaffCardError(StaffReason.UNREADABLE, f"staff card version {card.v} is not known here (1): "
                             "update the terminal, or issue a new card")
    if len(card.card_id) != CARD_ID_BYTES or not card.checkpoints or len(card.checkpoints) > MAX_CHECKPOINTS:
        raise StaffCardError(StaffReason.UNREADABLE, "staff card damaged: bad card id or checkpoint list")
    return card, payload, sig


def read_card(text, public_key, at, checkpoint, is_revoked=None, clock_behind=False, skew_s=DEFAULT_SKEW_S):
    """The StaffCard of `text` when it opens a paper window at `checkpoint` at instant `at`.

    Checks, in order: readable, signed by the collector (`public_key`, an Ed25519 public key),
    not revoked (`is_revoked(credential id)`: the deny list), the clock not behind its floor,
    issued and not expired at `at`, made for `checkpoint`. StaffCardError with the first
    reason; its message says what to do and never holds the name.
    """
    from cryptography.exceptions import InvalidSignature

    card, payload, sig = parse(text)
    if public_key is None:
        raise StaffCardError(StaffReason.NO_KEY, "no collector public key is pinned (mqtt.collector_public_key): "
                             "this terminal cannot check staff cards")
    try:
        public_key.verify(sig, DOMAIN + payload)
    except InvalidSignature:
        raise StaffCardError(StaffReason.BAD_SIGNATURE, f"staff card {card.id_hex}: not signed by this fleet's "
                             "collector (forged, altered, or another fleet's card)") from None
    if is_revoked is not None and is_revoked(card.revocation_id):
        raise StaffCardError(StaffReason.REVOKED, f"staff card {card.id_hex} is revoked (deny list)")
    if clock_behind:
        raise StaffCardError(StaffReason.CLOCK_BEHIND, f"staff card {card.id_hex}: the terminal's clock reads before "
                             "its time floor, so the card's validity cannot be checked: set the clock right")
    now = _unix(at)
    if now >= card.expires:
        raise StaffCardError(StaffReason.EXPIRED, f"staff card {card.id_hex} expired at "
                             f"{datetime.fromtimestamp(card.expires, UTC):%Y-%m-%d %H:%M} UTC: issue a new one")
    if card.issued > now + skew_s:
        raise StaffCardError(StaffReason.NOT_YET_VALID, f"staff card {card.id_hex} is issued in the future "
                             "(check the terminal's clock)")
    if checkpoint not in card.checkpoints:
        raise StaffCardError(StaffReason.WRONG_CHECKPOINT, f"staff card {card.id_hex} is not for checkpoint "
                             f"{checkpoint!r}")
    return card
