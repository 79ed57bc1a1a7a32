"""A stolen terminal: everything it holds after a run with known people reveals none of them.

The terminal scans ten known synthetic people (CCCD-like ID numbers sharing the province,
century/sex and birth-year prefix, Vietnamese names with diacritics, phones, birth dates):
signed declarations, a symptomatic one, a forged one, bare ID numbers, the guard's button. It
gets a signed config update that rolls out a new sealing key and a deny list, as from the
collector. Then the thief takes the whole state folder (outbox database with its -wal and
-shm, kept updates, config, the keys it holds, the captured logs) and the retained status, and

- finds none of the people's ID numbers, names (with and without diacritics, any case, NFC and
  NFD, JSON-escaped), phones or birth dates (YYYY-MM-DD, DDMMYYYY, DD/MM/YYYY) in any byte;
- tries EVERY ID number of the people's province, century/sex and birth year (each 6-digit
  prefix leaves 1,000,000 numbers) under sha256 of the number and of the prefix this project's
  subject keys used ("chot-subject-v1|"), and the 200,000 numbers nearest theirs under every
  other hash a thief would try (md5, sha1, sha256 with the prefixes this project uses: "id:",
  "chot-deny-v2|id:", ...), each as hex, truncated hex, raw bytes or base64: nothing matches
  (keyed hashes need keys the terminal never has);
- cannot open any sealed part with a key of their own, while the collector's key opens each
  and finds the right person: what the terminal holds is ciphertext only;
- sees in each event only the clear fields of the contract.
"""

import base64
import hashlib
import json
import logging
import re
import shutil
import sqlite3
import unicodedata
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import segno
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from PIL import Image

from chot import wire
from chot.config import validate
from chot.personal import (
    Opener,
    SealError,
    fold_name,
    generate_seal_keys,
    load_private_keys,
    make_denylist_body,
    person_id_for_id,
    public_key_text,
)
from device.config import SCHEMA
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration
from device.daemon import Terminal
from device.uplink.link import Link
from device.uplink.updates import store_path_for

DEVICE = "gate-7-in"
# Born 1987 in Hanoi (001): men 0 (20th century), women 1; the thief knows these prefixes.
PEOPLE = [
    ("Nguyễn Văn Ân", "m", "0912345671", "1987-01-14", "12 Hàng Bạc"),
    ("Trần Thị Bích Ngọc", "f", "0987654312", "1987-02-03", "4 Phố Huế"),
    ("Lê Hoàng Đức", "m", "0355512983", "1987-03-27", "88 Kim Mã"),
    ("Phạm Thị Hương", "f", "0904417235", "1987-04-09", "17 Lò Đúc"),
    ("Đặng Quốc Bảo", "m", "0868123457", "1987-05-30", "3 Hàng Gai"),
    ("Võ Thị Thu Hà", "f", "0773901246", "1987-06-18", "51 Tràng Thi"),
    ("Bùi Minh Khôi", "m", "0943300718", "1987-07-07", "9 Nguyễn Du"),
    ("Hồ Ngọc Ánh", "f", "0327788105", "1987-08-21", "26 Bà Triệu"),
    ("Dương Văn Lộc", "m", "0819045662", "1987-10-02", "140 Giải Phóng"),
    ("Huỳnh Thị Yến", "f", "0398271054", "1987-12-25", "7 Đinh Tiên Hoàng"),
]
SUFFIXES = [402913, 518274, 630021, 118406, 771253, 259930, 845512, 364077, 927801, 73318]
CANDIDATES_PER_PERSON = 20_000  # 10 people: 200,000 candidate ID numbers around the true ones
ALLOWED_CLEAR = set(wire.Event.__struct_fields__)
assert ALLOWED_CLEAR == {"v", "device_id", "seq", "uuid", "checkpoint", "direction", "time", "clock", "source",
                         "format", "decision", "reason", "verified", "sealed",
                         "refers_to"}  # issue 13: {seq, uuid} of another event of the device, nothing personal
# What a thief hashes an ID number with: this project's old subject keys, its person ids, plain.
HASH_PREFIXES = ("", "chot-subject-v1|", "id:", "chot-text-v1|", "chot-deny-v2|id:", "cred|")


def people():
    out = []
    for (name, sex, phone, dob, _address), suffix in zip(PEOPLE, SUFFIXES, strict=True):
        prefix = "001" + ("0" if sex == "m" else "1") + "87"
        out.append({"id_number": f"{prefix}{suffix:06d}", "name": name, "dob": dob, "phone": phone,
                    "purpose": "resident",  # the address: not in a CHOT2 declaration (issue 14)
                    "symptoms": False, "contact": False, "travel": False, "doses": 2})
    return out


def toml(conf):
    """The config as TOML text (strings, booleans, numbers and lists of strings suffice here)."""
    lines = []
    for section, values in conf.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v, ensure_ascii=False) if not isinstance(v, bool) else str(v).lower()}")
    return "\n".join(lines) + "\n"


def qr_frame(text, size=(640, 480), scale=4):
    frame = np.full((size[1], size[0]), 150, np.uint8)
    if text is not None:
        modules = np.pad(np.array([list(row) for row in segno.make(text, error="m").matrix], bool), 4)
        qr = np.where(np.kron(modules, np.ones((scale, scale), bool)), 20, 235).astype(np.uint8)
        frame[40:40 + qr.shape[0], 100:100 + qr.shape[1]] = qr
    return frame


def name_forms(name):
    """A name as a thief would search for it: as written, NFC/NFD, without diacritics, any case, JSON-escaped."""
    ascii_words = fold_name(name)
    forms = {name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name), name.upper(),
             name.lower(), ascii_words, ascii_words.title(), ascii_words.lower(), ascii_words.replace(" ", "")}
    forms |= {json.dumps(f)[1:-1] for f in list(forms)}  # the \\u-escaped form of JSON with ensure_ascii
    return forms


def date_forms(dob):
    y, m, d = dob.split("-")
    return {dob, f"{d}{m}{y}", f"{d}/{m}/{y}", f"{y}{m}{d}"}


def windows(data, width):
    return {data[i:i + width] for i in range(len(data) - width + 1)}


class Thief:
    """Everything taken off the terminal, and indexes to look for hashes in it."""

    def __init__(self, blobs):
        self.blobs = blobs  # {name: bytes}
        whole = b"\0".join(blobs.values())
        self.whole = whole
        self.lower = whole.lower()
        self.raw16 = windows(whole, 16)  # a digest kept as raw bytes (or its first 16 bytes)
        self.hex16 = set()  # a digest kept as hex (or the first 16 hex digits of one), any case
        for run in re.findall(rb"[0-9a-f]{16,}", self.lower):
            self.hex16 |= windows(run, 16)
        self.b64 = set()  # a digest kept as base64 or base64url (its first 20 characters)
        for run in re.findall(rb"[A-Za-z0-9+/_-]{20,}", whole):
            self.b64 |= windows(run, 20)

    def has_text(self, text):
        b = text.encode("utf-8")
        return b in self.whole or b.lower() in self.lower

    def has_digest(self, digest):
        h = digest.hex().encode()
        return (digest[:16] in self.raw16 or h[:16] in self.hex16
                or base64.b64encode(digest)[:20] in self.b64 or base64.urlsafe_b64encode(digest)[:20] in self.b64)


@pytest.fixture
def stolen(tmp_path, mock_pins):
    """Run a terminal with the ten people; return (the thief's haul, the people, the events, the collector keys)."""
    state = tmp_path / "state"  # what is on the terminal: /etc/chot and /var/lib/chot, and the journal
    etc = state / "etc"
    etc.mkdir(parents=True)
    key_dir = tmp_path / "collector-keys"  # at the collector, never on the terminal
    first_kid = generate_seal_keys(key_dir)
    shutil.copy(key_dir / "seal.pub", etc / "collector-seal.pub")
    issuer = keys.generate("ed25519")
    _, pub = keys.save_keypair(issuer, tmp_path / "issuer")  # the issuer's private key is not on a terminal
    issuer_pub = etc / "issuer.pub.pem"
    shutil.copy(pub, issuer_pub)
    signer = ed25519.Ed25519PrivateKey.generate()  # the collector's signing key for updates
    (etc / "collector.pub.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    forger = keys.generate("ed25519")

    folks = people()
    now = datetime.now(UTC)
    texts = []
    for i, p in enumerate(folks):
        fields = dict(p, symptoms=(i == 3))
        signer_key = forger if i == 5 else issuer
        texts += [issue_declaration(signer_key, fields, issued_at=now - timedelta(minutes=10 + i))] * 2 + [None]
        if i % 3 == 0:  # some also show a bare ID number (a claim nobody signed)
            texts += [p["id_number"], None]
    frames = tmp_path / "frames"  # what the camera saw
    frames.mkdir()
    for i, t in enumerate(texts):
        Image.fromarray(qr_frame(t)).save(frames / f"f-{i:03d}.png")

    conf = {
        "device": {"id": DEVICE, "checkpoint": "hk-hang-bac-gate-7", "direction": "in"},
        "scanner": {"source": "files", "path": str(frames), "cooldown_s": 60.0},
        "pins": {"factory": "mock", "button": "GPIO24"},
        "feedback": {"pass_led_s": 0.05, "fail_led_s": 0.05, "pass_beep_s": 0.01, "fail_beep_s": 0.01,
                     "relay_s": 0.05, "unreadable_beep_s": 0.02, "unreadable_blink_s": 0.02},
        "policy": {"trusted_issuers": [str(issuer_pub)]},
        "outbox": {"path": str(state / "lib" / "outbox.db")},
        "privacy": {"seal_public_key": str(etc / "collector-seal.pub"), "seal_rotate_events": 7},
        "mqtt": {"enabled": False, "collector_public_key": str(etc / "collector.pub.pem")},
    }
    (etc / "terminal.toml").write_text(toml(conf), encoding="utf-8")  # the config as it sits on the terminal
    cfg = validate(conf, SCHEMA)

    log_path = state / "journal.log"
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        term = Terminal.from_config(cfg)
        link = Link(cfg, term.outbox, on_update=term.apply_update, status_source=term.status)
        try:
            term.run(max_frames=len(texts) // 2)
            # the collector rolls out a new sealing key and a deny list (signed, as on the wire)
            second_kid = generate_seal_keys(key_dir)
            body = {"privacy": {"seal_public_key": (key_dir / "seal.pub").read_text()},
                    "policy": {"fail_on_travel": True}}
            link._take_update(wire.config_topic(DEVICE), wire.sign_envelope(signer, "config", 2, body, target=DEVICE))
            deny = make_denylist_body(3, credential_ids=["00112233445566778899aabb"], salt=b"s" * 16)
            link._take_update(wire.broadcast_topic("denylist"), wire.sign_envelope(signer, "denylist", 3, deny))
            assert term.sealer.kid == second_kid and link.counters["updates"] == 2
            term.run()
            term.feedback.wait_idle(timeout=5)
            term.record_manual()
            events = term.outbox.pending(0, 1000)
            status = link._status_payload(online=True)
            # the files as they are while it runs (the WAL holds the latest pages) ...
            blobs = {str(p.relative_to(state)) + "@running": p.read_bytes() for p in state.rglob("*") if p.is_file()}
            blobs["status"] = status
        finally:
            link.close()
            term.close()
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
    # ... and once it stopped (the thief may also take a powered-off terminal)
    for p in state.rglob("*"):
        if p.is_file():
            blobs[str(p.relative_to(state))] = p.read_bytes()
    assert any(name.endswith("outbox.db-wal@running") for name in blobs), sorted(blobs)
    assert store_path_for(cfg.outbox.path).name in {n.split("/")[-1] for n in blobs}
    assert "journal.log" in blobs and b"seq 1 PASS ok (native)" in blobs["journal.log"]
    return Thief(blobs), folks, events, key_dir, (first_kid, second_kid)


def test_a_stolen_terminal_reveals_nobody(stolen):
    thief, folks, events, key_dir, (first_kid, second_kid) = stolen

    # the run recorded what it saw: ten declarations (one forged, one symptomatic), four bare IDs, a button
    assert len(events) == 15
    assert sum(e["source"] == "manual" for e in events) == 1
    assert [e["reason"] for e in events if e["format"] == "native"].count("ok") == 8

    # 1. no ID number, name, phone, birth date or address in any byte of anything taken
    for p in folks:
        needles = {p["id_number"], p["phone"]}
        needles |= name_forms(p["name"]) | date_forms(p["dob"])
        found = sorted(n for n in needles if thief.has_text(n))
        assert not found, f"found in the terminal's state: {found}"
    assert b"chot-seal-private-v1" not in thief.whole  # no collector private key on the terminal

    # 2. every ID number of the people's prefixes near theirs, under every hash a thief would try
    candidates = set()
    for p in folks:
        prefix, suffix = p["id_number"][:6], int(p["id_number"][6:])
        lo = max(0, min(suffix - CANDIDATES_PER_PERSON // 2, 10**6 - CANDIDATES_PER_PERSON))
        candidates.update(f"{prefix}{s:06d}" for s in range(lo, lo + CANDIDATES_PER_PERSON))
    assert {p["id_number"] for p in folks} <= candidates and len(candidates) >= 190_000
    matched = []
    sha256, sha1, md5 = hashlib.sha256, hashlib.sha1, hashlib.md5
    for c in candidates:
        for prefix in HASH_PREFIXES:
            if thief.has_digest(sha256((prefix + c).encode()).digest()):
                matched.append((prefix, c))
        if thief.has_digest(sha1(c.encode()).digest()) or thief.has_digest(md5(c.encode()).digest()):
            matched.append(("sha1/md5", c))
    # every number of each prefix (province, century/sex, birth year) under the two likeliest hashes
    for prefix6 in sorted({p["id_number"][:6] for p in folks}):
        for n in range(10**6):
            c = f"{prefix6}{n:06d}"
            if thief.has_digest(sha256(c.encode()).digest()) or thief.has_digest(
                    sha256(("chot-subject-v1|" + c).encode()).digest()):
                matched.append(("full", c))
    assert matched == []
    # (the indexes do find a hash that is there: the check is not blind)
    assert thief.has_digest(bytes.fromhex(first_kid + "00" * 24)) and not thief.has_digest(b"\x01" * 32)

    # 3. the sealed parts are ciphertext only: a key of the thief's own opens none, the collector's each
    sealed = [e for e in events if e["sealed"]]
    assert len(sealed) == 14 and {e["sealed"]["kid"] for e in sealed} == {first_kid, second_kid}
    theirs = {}
    for kid in (first_kid, second_kid):  # a fresh private key filed under the real key id
        own = key_dir.parent / f"thief-{kid}"
        generate_seal_keys(own)
        theirs[kid] = next(iter(load_private_keys(own).values()))
    opener_thief = Opener(theirs)
    opener = Opener.from_dir(key_dir)
    by_id = {person_id_for_id(p["id_number"]): p for p in folks}
    seen = set()
    for e in sealed:
        with pytest.raises(SealError):
            opener_thief.open(e["sealed"], e["uuid"])
        opened = opener.open(e["sealed"], e["uuid"])
        person = by_id[opened.person_id]
        assert opened.person["id_number"] == person["id_number"]
        if e["format"] == "native":
            assert (opened.person["name"], opened.person["phone"], opened.person["dob"]) == (
                person["name"], person["phone"], person["dob"])
            assert opened.credential_id
        seen.add(opened.person_id)
    assert seen == set(by_id)
    # what the terminal holds of the collector's keys is the public one (and the ephemeral keys
    # it sealed with lived in memory only)
    assert public_key_text(bytes(load_private_keys(key_dir)[first_kid].public_key)).encode() in thief.whole

    # 4. the clear part is exactly the contract's, and says nothing per person
    for e in events:
        assert ALLOWED_CLEAR - {"refers_to"} <= set(e) <= ALLOWED_CLEAR  # refers_to: a guard's confirmation only
        assert set(e["clock"]) <= {"synced", "boot_id", "mono_ns", "ref", "behind"}  # ref: the collector's anchor
        assert e["sealed"] is None or set(e["sealed"]) == {"kid", "epk", "ct"}
        assert wire.validate_event(e) == []
    assert [e["verified"] for e in events if e["format"] == "plain"] == [False] * 4
    forged = [e for e in events if e["reason"] == "unknown_issuer"]
    assert len(forged) == 1 and forged[0]["verified"] is False and forged[0]["sealed"]


    # 5. the outbox database a thief copies holds exactly these events, as they were published
    copy = key_dir.parent / "copy.db"
    copy.write_bytes(next(b for n, b in thief.blobs.items() if n.endswith("outbox.db")))
    con = sqlite3.connect(copy)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = con.execute("SELECT body FROM event ORDER BY seq").fetchall()
    finally:
        con.close()
    assert tables == {"event", "outbox_state", "time_floor"}  # time_floor: times and list versions, nobody
    assert [json.loads(b) for (b,) in rows] == events
