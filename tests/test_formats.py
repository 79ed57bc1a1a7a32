"""Issue 13: the credential format registry, the chip ID card (CCCD) and PC-Covid QR codes, the
"see the guard" policy and the guard's confirmation event.

Real QR images (segno) degraded like photos (perspective, blur, noise with OpenCV/numpy) are read
through the camera path: `chot scan` on image files and the daemon with `scanner.source = "files"`
on gpiozero's MockFactory pins. The same person by ID card and by signed declaration is one
person for tracing: a real Mosquitto, a real collector and SQLite / PostgreSQL.
"""

import ast
import json
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import segno
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uplink_helpers import wait_until

from chot import wire
from chot.config import validate
from chot.personal import PERSON_FIELDS, Opener, generate_seal_keys, person_id_for_id
from device.config import SCHEMA
from device.credentials import bounds, cccd, formats, keys, pccovid
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker
from device.credentials.reasons import REASONS
from device.credentials.verify import format_of, verify_text
from device.daemon import Terminal
from device.io.patterns import pin_states, signal_steps

ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2021, 8, 20, 1, 0, tzinfo=UTC)
CARD = "001090012345|123456789|Nguyễn Văn An|02011990|Nam|Số 12 Phố Huế, Hai Bà Trưng, Hà Nội|15042021"
PCCOVID = "********2345|NGUYEN VAN AN|****-**-02|0|A1b2C3d4E5|"
FAST_FEEDBACK = {
    "pass_led_s": 0.05, "pass_beeps": 1, "pass_beep_s": 0.01, "relay_s": 0.05,
    "fail_led_s": 0.05, "fail_beeps": 3, "fail_beep_s": 0.01,
    "unreadable_blinks": 2, "unreadable_beep_s": 0.02, "unreadable_blink_s": 0.02,
    "guard_led_s": 0.05, "guard_beeps": 2, "guard_beep_s": 0.01,
}


def card_text(person, old="", sex=None, issued="15042021", address="Số 1 Tràng Tiền, Hoàn Kiếm, Hà Nội"):
    """The QR text of a chip ID card for a person of make_test_identities."""
    if sex is None:
        sex = "Nữ" if int(person["id_number"][3]) % 2 else "Nam"
    born = date.fromisoformat(person["dob"])
    return f"{person['id_number']}|{old}|{person['name']}|{born:%d%m%Y}|{sex}|{address}|{issued}"


# ---------------------------------------------------------------- photos of QR codes


def photo(text, seed, size=(640, 480)):
    """A camera-like grey frame of the QR of `text`: tilted in perspective, blurred, noisy, uneven light."""
    rng = np.random.default_rng(seed)
    qr = segno.make(text, error="m", micro=False)
    modules = np.pad(np.array(qr.matrix, dtype=bool), 4, constant_values=False)
    scale = max(2, int(min(size) * 0.8 / modules.shape[0]))
    img = np.where(np.kron(modules, np.ones((scale, scale), bool)), 35, 225).astype(np.float32)
    h, w = img.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    x0, y0 = (size[0] - w) / 2, (size[1] - h) / 2
    jitter = rng.uniform(-0.06, 0.06, (4, 2)) * w
    dst = np.float32([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]) + jitter.astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    frame = cv2.warpPerspective(img, m, size, borderValue=150.0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    frame *= 0.8 + 0.3 * (xx / size[0])  # light from one side
    frame = cv2.GaussianBlur(frame, (0, 0), 0.35 * scale)
    frame += rng.normal(0, 9, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def save_photo(path, text, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), photo(text, seed))
    return path


def chot(*args):
    return subprocess.run([sys.executable, "-m", "chot.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def lines(res):
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------- the registry


def test_the_registry_is_one_static_list_with_plain_last_and_no_lookup_by_name():
    assert formats.NAMES == ("native", "dcc", "shc", "cccd", "pccovid", "plain")
    for f in formats.FORMATS:
        assert isinstance(f, formats.CredentialFormat), f
    # no module is looked up by string any more: no importlib anywhere under device/credentials
    for path in sorted((ROOT / "device" / "credentials").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "importlib" not in names | mods, path
        assert "__import__" not in path.read_text(encoding="utf-8"), path
    # the scanner knows nothing of credentials (DESIGN.md: dependencies run one way)
    for path in sorted((ROOT / "device" / "scanner").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        mods = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not [m for m in mods if "credentials" in m], path
    assert not (ROOT / "device" / "scanner" / "assemble.py").exists()


@pytest.mark.parametrize("text, name", [
    ("CHOT1:6BFOXN", "native"),
    ("HC1:NCFOXN%TS3DH", "dcc"),
    ("shc:/5676290952432060", "shc"),
    ("SHC:/1/2/5676", "shc"),
    (CARD, "cccd"),
    ("001090012345||Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "cccd"),
    ("001090012345|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "cccd"),
    ("0010900123|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "cccd"),  # found, then refused
    (PCCOVID, "pccovid"),
    ("********2345|NGUYEN VAN AN|****-**-02|1|A1b2C3d4E5", "pccovid"),
    ("********2345|NGUYEN VAN AN|****-**-02|7|A1b2C3d4E5|", "pccovid"),  # masked: found, then refused
    ("001090012345", "plain"),
    ("https://tokhaiyte.vn/?code=1", "plain"),
    ("a|b|c|d|e|f", "plain"),
    ("\x00\x01", "unknown"),
])
def test_each_format_is_found_by_its_prefix_or_shape(text, name):
    assert format_of(text) == name
    f = formats.format_for(text)
    assert (f.name if f else "unknown") == name
    assert verify_text(text, at=AT).format == name


def test_shc_chunks_are_assembled_by_the_shc_format():
    asm = formats.ChunkAssembler(timeout_s=30)
    assert asm.feed("shc:/2/2/5678", 0.0) is None
    assert asm.pending() == 1 and asm.pending_formats() == ["shc"]
    assert asm.feed(CARD, 1.0) == CARD  # no chunk: straight through
    assert asm.feed("shc:/1/2/1234", 2.0) == "shc:/12345678"
    assert asm.feed("shc:/1/2/1234", 3.0) is None
    assert asm.pending(40.0) == 0  # older than the timeout: dropped
    assert asm.feed("shc:/1/1/99", 41.0) == "shc:/99"


# ---------------------------------------------------------------- the chip ID card


@pytest.mark.parametrize("text, fields", [
    (CARD, {"old_id_number": "123456789", "sex": "Nam", "id_issued": "2021-04-15"}),
    # the old ID empty
    ("001190012345||Nguyễn Thị Bình|02011990|Nữ|Hà Nội|15042021", {"sex": "Nữ"}),
    # six fields: the old-ID field left out
    ("001090012345|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", {"id_issued": "2021-04-15"}),
    # six fields: the issue date left out
    ("001090012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội", {"old_id_number": "123456789"}),
    # extra spaces, slashes in dates, a twelve-digit old CMND
    ("  001 090 012345 | 001090012345 |  Nguyễn   Văn  An |02/01/1990| Nam |  Hà   Nội | 15/04/2021 ",
     {"name": "Nguyễn Văn An", "address": "Hà Nội", "old_id_number": "001090012345"}),
    # the card issued from 2024: born 2005 (century digit 2), fields after the issue date ignored
    ("001205012345||Trần Minh Khoa|09032005|Nam|Phường Phúc Tân, Hoàn Kiếm, Hà Nội|01072024|09032030|x",
     {"dob": "2005-03-09", "id_issued": "2024-07-01"}),
    # NFD-encoded text (as some scanners send it): read as NFC
    ("001190012345||Nguye\u0302\u0303n Thi\u0323 Bi\u0300nh|02011990|Nu\u031b\u0303|Hà Nội|15042021",
     {"name": "Nguyễn Thị Bình", "sex": "Nữ"}),
])
def test_chip_id_card_variants_are_read(text, fields):
    at = datetime(2025, 1, 1, tzinfo=UTC)  # after the 2024 card's issue
    v = verify_text(text, at=at)
    assert (v.format, v.kind, v.reason, v.steps) == ("cccd", "id_card", "unsigned",
                                                     {"decode": True, "fields": True, "signature": False})
    assert v.person_id == person_id_for_id(text.split("|")[0])
    for key, value in fields.items():
        assert v.person[key] == value, key
    assert "x" not in v.person.values() and "09032030" not in str(v.person)  # extra fields never recorded
    _, d = Checker().check(text, at)
    assert (d.decision, d.reason) == ("FAIL", "see_guard")
    assert Checker.from_config({"accept_cccd": "pass"}).check(text, at)[1].reason == "ok"
    assert Checker.from_config({"accept_cccd": "fail"}).check(text, at)[1].reason == "format_not_accepted"


@pytest.mark.parametrize("text, reason, says", [
    ("00109001234|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "11 characters"),
    ("0010900123456|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "13 characters"),
    ("000090012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "province code 000"),
    ("097090012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "province code 097"),
    ("001290012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "century digit 2"),
    ("001091012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "digits 5-6"),
    ("001190012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "for a woman"),
    ("001090012345|12345|Nguyễn Văn An|02011990|Nam|Hà Nội|15042021", "bad_id_number", "old ID"),
    ("001090012345|123456789|Nguyễn Văn An|31021990|Nam|Hà Nội|15042021", "bad_date", "not a real date"),
    ("001090012345|123456789|Nguyễn Văn An|1990-01-02|Nam|Hà Nội|15042021", "bad_date", "birth date"),
    ("001090012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15041989", "bad_date", "before the birth"),
    ("001090012345|123456789|Nguyễn Văn An|02011990|Nam|Hà Nội|15042031", "bad_date", "in the future"),
    ("001290012345|123456789|Nguyễn Văn An|02012090|Nam|Hà Nội|15042021", "bad_date", "birth date: in the future"),
    ("001090012345|123456789|Nguyễn Văn An|02011990|Khác|Hà Nội|15042021", "malformed", "sex"),
    ("001090012345|123456789||02011990|Nam|Hà Nội|15042021", "malformed", "full name"),
    ("001090012345|123456789|Nguyễn Văn An|02011990|Nam", "plain", None),  # five fields: not a card
    ("001090012345|1|2|3|4|5|6|7|8|9|10|11|12|13", "malformed", "more than 12"),
    ("001090012345|123456789|" + "A" * 400 + "|02011990|Nam|Hà Nội|15042021", "malformed", "longer than"),
])
def test_bad_chip_id_cards_get_a_clear_reason(text, reason, says):
    v, d = Checker().check(text, AT)
    if reason == "plain":
        assert v.format == "plain"
        return
    assert (v.format, d.decision, d.reason, v.reason) == ("cccd", "FAIL", reason, reason)
    assert v.steps["fields"] is False and v.person == {} and v.person_id is None
    assert says in v.detail
    assert "Nguyễn" not in v.detail and "001090012345" not in v.detail  # the detail names nobody


def test_card_texts_beyond_the_bounds_are_refused_before_parsing():
    huge = CARD + "|" + "9" * bounds.MAX_TEXT
    v = verify_text(huge, at=AT)
    assert v.reason == "unreadable" and not v.person
    with pytest.raises(cccd.CardError):
        cccd.parse(huge)
    assert not cccd.sniff(huge) and not pccovid.sniff(huge)
    assert cccd.verify(huge).reason == "unreadable" and pccovid.verify(huge).reason == "unreadable"
    assert cccd.verify(None).reason == "unreadable"


# ---------------------------------------------------------------- PC-Covid


@pytest.mark.parametrize("text, on_behalf", [
    (PCCOVID, False),
    ("********2345|NGUYEN VAN AN|****-**-02|1|A1b2C3d4E5|", True),
    ("  ********2345 | NGUYEN  VAN AN | 1990-**-** | 0 | A1b2C3d4E5 ", False),  # five fields, spaces
    ("***012345|TRAN THI B|1990-01-02|0|qid_77-x|anything", False),  # nothing masked in the date
])
def test_pccovid_codes_are_read_as_identity_claims(text, on_behalf):
    v, d = Checker().check(text, AT)
    assert (v.format, v.kind, v.reason, d.reason) == ("pccovid", "pccovid", "unsigned", "see_guard")
    assert v.steps == {"decode": True, "fields": True, "signature": False}
    assert v.claims == {"on_behalf": on_behalf}
    assert v.person_id.startswith("pcq:") and v.person["qid"] == v.person_id[4:]
    assert v.person_id == "pcq:" + text.split("|")[4].strip()  # the masked ID never names anybody
    assert Checker.from_config({"accept_pccovid": "pass"}).check(text, AT)[1].reason == "ok"


@pytest.mark.parametrize("text, reason, says", [
    ("********2345|Nguyen Van An|****-**-02|0|A1b2C3d4E5|", "malformed", "upper case"),
    ("********2345|NGUYỄN VĂN AN|****-**-02|0|A1b2C3d4E5|", "malformed", "without diacritics"),
    ("********2345|NGUYEN VAN AN|****-13-02|0|A1b2C3d4E5|", "bad_date", "month"),
    ("********2345|NGUYEN VAN AN|****-**-32|0|A1b2C3d4E5|", "bad_date", "day"),
    ("********2345|NGUYEN VAN AN|02/01/1990|0|A1b2C3d4E5|", "bad_date", "YYYY-MM-DD"),
    ("***012345|NGUYEN VAN AN|1990-02-30|0|A1b2C3d4E5|", "bad_date", "real date"),
    ("********2345|NGUYEN VAN AN|****-**-02|2|A1b2C3d4E5|", "malformed", "declaration type"),
    ("****|NGUYEN VAN AN|****-**-02|0|A1b2C3d4E5|", "bad_id_number", "ID number"),
    ("********2345|NGUYEN VAN AN|****-**-02|0|a b|", "malformed", "QID"),
])
def test_bad_pccovid_codes_get_a_clear_reason(text, reason, says):
    v, d = Checker().check(text, AT)
    assert (v.format, d.decision, d.reason) == ("pccovid", "FAIL", reason)
    assert says in v.detail and v.person == {} and v.person_id is None


def test_the_settings_accept_per_format():
    from device.credentials.policy import policy_namespace

    cfg = policy_namespace(None)
    assert (cfg.accept_cccd, cfg.accept_pccovid, cfg.guard_window_s) == ("see_guard", "see_guard", 120.0)
    with pytest.raises(Exception, match="accept_cccd"):
        validate({"device": {"id": "t", "checkpoint": "c", "direction": "in"}, "policy": {"accept_cccd": "yes"}},
                 SCHEMA)
    assert {f.name: f.accept(cfg) for f in formats.FORMATS} == {
        "native": "pass", "dcc": "pass", "shc": "pass", "cccd": "see_guard", "pccovid": "see_guard", "plain": "fail"}


# ---------------------------------------------------------------- the camera path: chot scan


def test_chot_scan_reads_photos_of_id_cards_and_pccovid_codes(tmp_path):
    people = make_test_identities(3, seed=13)
    texts = [card_text(people[0], old="012345678"), card_text(people[1]), PCCOVID,
             card_text(people[2], sex="Nam" if int(people[2]["id_number"][3]) % 2 else "Nữ")]  # sex contradicts
    paths = [save_photo(tmp_path / f"photo-{i}.jpg", t, seed=i) for i, t in enumerate(texts)]
    res = chot("scan", *map(str, paths), "--at", "2021-08-20T08:00:00+07:00")
    assert res.returncode == 0, res.stderr
    out = lines(res)
    assert [o["text"] for o in out] == texts  # every degraded photo read, exactly
    assert [(o["format"], o["decision"], o["reason"], o["kind"]) for o in out] == [
        ("cccd", "FAIL", "see_guard", "id_card"), ("cccd", "FAIL", "see_guard", "id_card"),
        ("pccovid", "FAIL", "see_guard", "pccovid"), ("cccd", "FAIL", "bad_id_number", "id_card")]
    assert [o["person"] for o in out] == [{"present": True, "verified": False}] * 3 + [
        {"present": False, "verified": False}]
    assert "woman" in out[3]["detail"] or "man" in out[3]["detail"]
    res = chot("scan", str(paths[0]), "--at", "2021-08-20T08:00:00+07:00", "--config", str(
        _scan_config(tmp_path, accept_cccd="pass")))
    assert [(o["decision"], o["reason"]) for o in lines(res)] == [("PASS", "ok")]


def _scan_config(tmp_path, **policy):
    path = tmp_path / "scan.toml"
    body = "[device]\nid = \"scan\"\ncheckpoint = \"scan\"\ndirection = \"in\"\n[policy]\n"
    body += "".join(f"{k} = \"{v}\"\n" for k, v in policy.items())
    path.write_text(body)
    return path


# ---------------------------------------------------------------- the daemon: see the guard, then the button


def terminal_cfg(tmp_path, frames, pub, seal_pub, mqtt=None, **policy):
    data = {
        "device": {"id": "gate-1-in", "checkpoint": "phuc-tan-gate-1", "direction": "in"},
        "scanner": {"source": "files", "path": str(frames), "cooldown_s": 60.0},
        "pins": {"factory": "mock", "relay": "GPIO23", "button": "GPIO24"},
        "feedback": dict(FAST_FEEDBACK),
        "policy": {"trusted_issuers": [str(pub)], **policy},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "privacy": {"seal_public_key": str(seal_pub)},
    }
    if mqtt:
        data["mqtt"] = mqtt
    return validate(data, SCHEMA)


class WaitingSource:
    """Hands out the frames of `inner` only once the previous feedback pattern has finished."""

    def __init__(self, inner, feedback):
        self.inner, self.feedback = inner, feedback

    def read(self):
        assert self.feedback.wait_idle(timeout=5)
        return self.inner.read()

    def close(self):
        self.inner.close()


def write_photos(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        path = folder / f"frame-{i:04d}.png"
        if text is None:
            cv2.imwrite(str(path), np.full((480, 640), 150, np.uint8))
        else:
            save_photo(path, text, seed=100 + i)


def press(button):
    button.pin.drive_low()
    button.pin.drive_high()


@pytest.fixture
def issuer(tmp_path):
    key = keys.generate("ed25519")
    _, pub = keys.save_keypair(key, tmp_path / "issuer")
    return key, pub


def test_see_the_guard_signal_then_the_button_records_a_confirmation(tmp_path, issuer, mock_pins):
    key, pub = issuer
    key_dir = tmp_path / "collector-keys"
    generate_seal_keys(key_dir)
    person = make_test_identities(1, seed=21)[0]
    texts = [card_text(person)] * 3 + [None] * 2 + ["0010900123|1|NGUYEN|02011990|Nam|Hà Nội|15042021"] * 2
    write_photos(tmp_path / "frames", texts)
    cfg = terminal_cfg(tmp_path, tmp_path / "frames", pub, key_dir / "seal.pub")
    with Terminal.from_config(cfg) as term:
        term.source = WaitingSource(term.source, term.feedback)
        fb = term.feedback
        assert term.run(max_frames=3) == 3  # the ID card's frames first
        assert fb.wait_idle(timeout=5)
        (first,) = term.outbox.pending(0, 10)
        assert (first["format"], first["decision"], first["reason"], first["verified"]) == (
            "cccd", "FAIL", "see_guard", False)
        assert first["sealed"] and person["id_number"] not in json.dumps(first)
        opened = Opener.from_dir(key_dir).open(first["sealed"], first["uuid"])
        assert opened.person_id == person_id_for_id(person["id_number"])
        assert opened.person["name"] == person["name"] and opened.person["kind"] == "id_card"
        # the "see the guard" signal: both LEDs on once, two short beeps, the relay never moved
        steps = {s.device: s for s in signal_steps("guard", fb.cfg)}
        assert [s.state for s in fb.pass_led.pin.states] == pin_states(steps["pass_led"])
        assert [s.state for s in fb.fail_led.pin.states] == pin_states(steps["fail_led"])
        assert [s.state for s in fb.buzzer.pin.states] == pin_states(steps["buzzer"]) == [False] + [True, False] * 2
        assert [s.state for s in fb.relay.pin.states] == [False]
        # the guard looks at the card and the face, then presses the button
        press(fb.button)
        assert wait_until(lambda: len(term.outbox.pending(0, 10)) == 2, timeout=5)
        confirm = term.outbox.pending(0, 10)[1]
        assert (confirm["source"], confirm["format"], confirm["decision"], confirm["reason"]) == (
            "manual", "cccd", "PASS", "guard_confirmed")
        assert confirm["refers_to"] == {"seq": first["seq"], "uuid": first["uuid"]}
        assert confirm["verified"] is False and confirm["sealed"] is None
        assert wire.validate_event(confirm) == [] and wire.validate_event(first) == []
        assert fb.wait_idle(timeout=5)
        assert [s.state for s in fb.relay.pin.states] == [False, True, False]  # the confirmation opens the gate
        # a second press with nothing waiting is the ordinary manual pass
        press(fb.button)
        assert wait_until(lambda: len(term.outbox.pending(0, 10)) == 3, timeout=5)
        manual = term.outbox.pending(0, 10)[2]
        assert (manual["reason"], manual["format"], "refers_to" in manual) == ("manual", "none", False)
        # a bad card: its own reason, the unreadable pattern, nothing for the guard to confirm
        fb.wait_idle(timeout=5)
        assert term.run() == len(texts) - 3
        bad = term.outbox.pending(0, 10)[3]
        assert (bad["format"], bad["reason"], bad["sealed"]) == ("cccd", "bad_id_number", None)
        fb.wait_idle(timeout=5)
        press(fb.button)
        assert wait_until(lambda: len(term.outbox.pending(0, 10)) == 5, timeout=5)
        assert term.outbox.pending(0, 10)[4]["reason"] == "manual"


def test_the_confirmation_window_is_policy_guard_window_s(tmp_path, issuer, mock_pins, monkeypatch):
    key, pub = issuer
    key_dir = tmp_path / "collector-keys"
    generate_seal_keys(key_dir)
    write_photos(tmp_path / "frames", [PCCOVID])
    cfg = terminal_cfg(tmp_path, tmp_path / "frames", pub, key_dir / "seal.pub", guard_window_s=5.0)
    with Terminal.from_config(cfg) as term:
        term.run()
        (first,) = term.outbox.pending(0, 10)
        assert (first["format"], first["reason"]) == ("pccovid", "see_guard")
        later = time.monotonic() + 6.0
        monkeypatch.setattr("device.daemon.time.monotonic", lambda: later)  # the guard came back too late
        term.feedback.wait_idle(timeout=5)
        press(term.feedback.button)
        assert wait_until(lambda: len(term.outbox.pending(0, 10)) == 2, timeout=5)
        assert term.outbox.pending(0, 10)[1]["reason"] == "manual"


def test_wire_refers_to_is_checked():
    base = {"v": 2, "device_id": "d1", "seq": 5, "uuid": "12345678-1234-4234-8234-123456789abc", "checkpoint": "c",
            "direction": "in", "time": "2021-08-20T01:00:00Z", "clock": {"synced": True, "boot_id": "b", "mono_ns": 1},
            "source": "manual", "format": "cccd", "decision": "PASS", "reason": "guard_confirmed", "verified": False}
    ref = {"seq": 4, "uuid": "12345678-1234-4234-8234-123456789abd"}
    assert wire.validate_event({**base, "refers_to": ref}) == []
    assert "must name the event" in wire.validate_event(base)[0]
    assert "not before" in wire.validate_event({**base, "refers_to": {**ref, "seq": 5}})[0]
    assert "itself" in wire.validate_event({**base, "refers_to": {**ref, "uuid": base["uuid"]}})[0]
    assert wire.validate_event({**base, "refers_to": {**ref, "uuid": "nope"}})
    assert wire.validate_event({**base, "refers_to": {**ref, "extra": 1}})
    plain = wire.dumps(wire.event_from_dict({**base, "reason": "manual"}))
    assert b"refers_to" not in plain  # events without it are byte for byte what they were


# ---------------------------------------------------------------- tracing: one person, card and declaration


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_the_same_person_by_id_card_and_by_declaration_is_one_person_for_tracing(tmp_path, issuer, mock_pins,
                                                                                 broker, db, request):
    from chotdemo.testing import make_keys
    from collector import queries
    from collector.config import config_from_dict
    from collector.keys import CollectorKeys
    from collector.storage import Storage
    from collector.subscriber import Collector

    key, pub = issuer
    key_dir = tmp_path / "collector-keys"
    make_keys(key_dir)
    url = f"sqlite:///{tmp_path / 'collector.db'}" if db == "sqlite" else request.getfixturevalue("pg_dsn")
    person, other = make_test_identities(2, seed=31)
    now = datetime.now(UTC)
    declaration = issue_declaration(key, person, issued_at=now - timedelta(minutes=5))
    texts = [declaration] * 2 + [None] * 2 + [card_text(person)] * 2 + [None] + [card_text(other)] * 2
    write_photos(tmp_path / "frames", texts)
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "keepalive_s": 5, "ack_timeout_s": 30.0,
            "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    cfg = terminal_cfg(tmp_path, tmp_path / "frames", pub, key_dir / "seal.pub", mqtt=mqtt)
    col_cfg = config_from_dict({
        "collector": {"id": "c1", "database": url, "batch_size": 100, "batch_max_wait_ms": 50,
                      "key_dir": str(key_dir), "retention_days": 3650.0},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 1.0},
        "http": {"enabled": False},
    })
    with Collector(col_cfg) as col:
        col.wait_subscribed(10)
        with Terminal.from_config(cfg) as term:
            term.source = WaitingSource(term.source, term.feedback)
            term.run()
            term.feedback.wait_idle(timeout=5)
            press(term.feedback.button)  # the guard confirms the last card (the other person)
            assert wait_until(lambda: term.outbox.stats()["depth"] == 0 and term.outbox.stats()["last_seq"] == 4,
                              timeout=20), term.outbox.stats()
    with Storage(url, migrate=False) as st:
        st.keys = CollectorKeys.from_dir(key_dir)
        res = queries.visits(st, person["id_number"], "case-13", "tracer-1")
        assert [(v["format"], v["reason"], v["verified"]) for v in res["verified"]] == [("native", "ok", True)]
        assert [(v["format"], v["reason"], v["verified"]) for v in res["unverified"]] == [
            ("cccd", "see_guard", False)]
        assert res["unverified"][0]["person"]["name"] == person["name"]
        assert res["unverified"][0]["guard_confirmed"] is False  # the guard confirmed the other person only
        other_visits = queries.visits(st, other["id_number"], "case-13", "tracer-1")
        assert [(v["reason"], v["guard_confirmed"]) for v in other_visits["unverified"]] == [("see_guard", True)]
        assert res["person"]["name"] == person["name"]  # the record is the verified declaration's
        E = st.Event
        rows = list(E.select().where(E.device_id == "gate-1-in").order_by(E.seq))
        assert [(r.seq, r.reason, r.refers_seq) for r in rows] == [
            (1, "ok", None), (2, "see_guard", None), (3, "see_guard", None), (4, "guard_confirmed", 3)]
        assert rows[3].refers_uuid == rows[2].uuid and rows[3].personal is None
    assert col.stats()["rejected_total"] == 0


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_version_3_database_gets_the_refers_to_columns(tmp_path, db, request):
    from chotdemo.testing import make_event
    from collector.storage import SCHEMA_VERSION, Storage

    url = f"sqlite:///{tmp_path / 'collector.db'}" if db == "sqlite" else request.getfixturevalue("pg_dsn")
    with Storage(url) as st:
        st.store_batch([make_event("d1", 1, fmt="cccd", decision="FAIL", reason="see_guard")])
        first_uuid = st.Event.get(st.Event.seq == 1).uuid
        for col in ("refers_seq", "refers_uuid"):  # the layout of schema version 3
            st.db.execute_sql(f'ALTER TABLE "chot_event" DROP COLUMN "{col}"')
        st.SchemaVersion.delete().execute()
        st.SchemaVersion.create(version=3, applied_at=datetime(2021, 8, 1))
    with Storage(url) as st:
        assert SCHEMA_VERSION == 4 and st.schema_version() == 4 and st.event_count() == 1
        confirm = make_event("d1", 2, fmt="cccd", source="manual", reason="manual")
        confirm = wire.event_from_dict({**wire.to_dict(confirm), "reason": "guard_confirmed",
                                        "refers_to": {"seq": 1, "uuid": first_uuid}})
        st.store_batch([confirm])
        row = st.Event.get(st.Event.seq == 2)
        assert (row.refers_seq, row.refers_uuid, row.reason) == (1, first_uuid, "guard_confirmed")
        assert st.Event.get(st.Event.seq == 1).refers_seq is None
    with Storage(url) as st:  # opening again changes nothing
        assert st.migrate() == 4 and st.event_count() == 2


# ---------------------------------------------------------------- fuzzing the two readers

_FIELD = st.one_of(st.text(max_size=40), st.from_regex(r"[0-9* ./-]{0,14}", fullmatch=True),
                   st.sampled_from(["Nam", "Nữ", "0", "1", "", " ", "001090012345", "02011990", "****-**-02"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FIELD, min_size=4, max_size=14), st.sampled_from(["", "001090012345", "********2345"]))
def test_fuzzed_card_shaped_texts_never_raise_and_name_nobody_unless_valid(fields, first):
    text = "|".join([first, *fields]) if first else "|".join(fields)
    v, d = Checker().check(text, AT)
    assert not (v.detail or "").startswith("internal error"), v.detail
    assert v.format in ("cccd", "pccovid", "plain", "unknown")
    assert d.reason in REASONS and (v.reason is None or v.reason in REASONS)
    assert set(v.person) <= set(PERSON_FIELDS)
    if v.format in ("cccd", "pccovid"):
        assert d.decision == "FAIL" and v.steps["signature"] is not True  # a claim never passes by default
        if v.steps["fields"] is not True:
            assert v.person == {} and v.person_id is None and d.reason in ("bad_id_number", "bad_date", "malformed")
        else:
            assert d.reason == "see_guard"
            assert v.person_id.startswith("id:" if v.format == "cccd" else "pcq:")


def test_see_the_guard_is_amber_on_an_rgb_led(mock_pins):
    from device.io.feedback import Feedback

    red, green, blue = (mock_pins.pin(n) for n in ("GPIO12", "GPIO13", "GPIO19"))
    with Feedback({"rgb_led": ["GPIO12", "GPIO13", "GPIO19"], "buzzer": "GPIO22"}, FAST_FEEDBACK) as f:
        f.signal("guard")
        assert f.rgb_led.value == (1, 1, 0)  # red and green together, switched before signal() returns
        assert f.wait_idle(10)
        assert [bool(s.state) for s in red.states] == [False, True, False]
        assert [bool(s.state) for s in green.states] == [False, True, False]
        assert [bool(s.state) for s in blue.states] == [False]
        assert [bool(s.state) for s in f.buzzer.pin.states] == [False] + [True, False] * FAST_FEEDBACK["guard_beeps"]
