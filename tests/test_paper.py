"""Paper at the gate, offline (issue 13): staff cards and the terminal's paper window.

A staff card is made with the CLI (`chot collector staff-card`, a PNG rendered by segno) and read
from its pixels through the terminal's camera path (scanner.source = "files"). A valid card opens
a window in which the next ID text is recorded as a paper declaration, through the outbox, while
the broker is down; once Mosquitto and the collector come up it is stored exactly once. Expired,
foreign, forged and revoked cards, and a clock behind its floor, are refused with their reason.
"""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from PIL import Image
from servers import Mosquitto
from test_daemon import FAST_FEEDBACK, WaitingSource, qr_frame

from chot import staffcard
from chot.config import validate
from chot.personal import Opener
from chot.staffcard import StaffCardError, StaffReason, make_card, read_card
from chotdemo.testing import make_keys
from collector import queries
from collector.config import config_from_dict
from collector.keys import CollectorKeys
from collector.storage import Storage
from collector.subscriber import Collector
from device.config import SCHEMA
from device.credentials.denylist import DenyList
from device.daemon import Terminal
from device.io.feedback import Feedback
from device.io.patterns import pin_states, signal_steps
from device.scanner.decode import make_decoder
from device.scanner.frames import Frame, load_gray
from device.scanner.settings import ScannerSettings
from device.uplink.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent
DEV = "gate-1-in"
CP = "phuc-tan-gate-1"
STAFF_NAME = "Trần Thị Bình"


def run_chot(*args, cwd):
    """The `chot` command line of this source tree, as a technician runs it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", "import sys; from chot.cli import main; sys.exit(main())", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def chot(*args, cwd):
    proc = run_chot(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture
def fleet(tmp_path):
    """The collector's signing key (collector.key / .pub) and personal-data keys, as provisioning makes them."""
    chot("collector", "keygen", "--out", str(tmp_path / "keys"), cwd=tmp_path)
    make_keys(tmp_path / "collector-keys")
    key = serialization.load_pem_private_key((tmp_path / "keys" / "collector.key").read_bytes(), None)
    return {"key": key, "pub": tmp_path / "keys" / "collector.pub", "priv": tmp_path / "keys" / "collector.key",
            "key_dir": tmp_path / "collector-keys", "seal_pub": tmp_path / "collector-keys" / "seal.pub"}


def staff_card_png(tmp_path, fleet, name=STAFF_NAME, checkpoints=(CP,), days=7, out="card.png"):
    """Make a card with the CLI; return (png path, what it printed)."""
    args = ["collector", "staff-card", name, "--days", str(days), "--out", str(tmp_path / out),
            "--key", str(fleet["priv"])]
    for cp in checkpoints:
        args += ["--checkpoint", cp]
    return tmp_path / out, chot(*args, cwd=tmp_path)


def frame_png(path, text_or_png):
    """A camera-sized frame on disk: the QR of a text, or a card PNG pasted on a grey background."""
    if isinstance(text_or_png, str) or text_or_png is None:
        Image.fromarray(qr_frame(text_or_png)).save(path)
        return
    code = Image.open(text_or_png).convert("L")
    code = code.resize((code.width // 2, code.height // 2), Image.NEAREST)  # 4 px per module, as a camera sees it
    img = Image.new("L", (640, 480), 150)
    img.paste(code, ((640 - code.width) // 2, (480 - code.height) // 2))
    img.save(path)


def terminal_cfg(tmp_path, fleet, frames=None, port=None, **sections):
    data = {
        "device": {"id": DEV, "checkpoint": CP, "direction": "in"},
        "scanner": {"source": "files", "path": str(frames or tmp_path), "cooldown_s": 60.0},
        "pins": {"factory": "mock", "relay": "GPIO23", "button": "GPIO24"},
        "feedback": dict(FAST_FEEDBACK),
        "policy": {"paper_window_s": 60.0},
        "outbox": {"path": str(tmp_path / "outbox.db"), "synchronous": "NORMAL"},
        "privacy": {"seal_public_key": str(fleet["seal_pub"])},
        "mqtt": {"enabled": port is not None, "host": "127.0.0.1", "port": port or 1883, "keepalive_s": 5,
                 "reconnect_min_s": 0.1, "reconnect_max_s": 1.0, "collector_public_key": str(fleet["pub"])},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return validate(data, SCHEMA)


def frame(text):
    return Frame(qr_frame(text), time.monotonic())


def states(dev):
    return [s.state for s in dev.pin.states]


# --- the card ---------------------------------------------------------------------------------


def test_the_cli_card_png_decodes_to_the_signed_text_and_prints_nothing_personal(tmp_path, fleet):
    png, out = staff_card_png(tmp_path, fleet, checkpoints=(CP, "phuc-tan-gate-2"))
    assert STAFF_NAME not in out and "Bình" not in out  # the CLI prints the card id, never the name
    scan = make_decoder(ScannerSettings()).scan(load_gray(png))
    (text,) = scan.texts
    assert text.startswith("CHOTSTAFF:") and len(text) < 300
    assert set(text) <= set(staffcard._B45 + "CHOTSTAF")  # QR alphanumeric mode: a small code
    public = serialization.load_pem_public_key(fleet["pub"].read_bytes())
    card = read_card(text, public, datetime.now(UTC), CP)
    assert card.name == STAFF_NAME and card.checkpoints == [CP, "phuc-tan-gate-2"]
    assert card.id_hex in out and f"revoked:staff:{card.id_hex}" in out
    # the line it prints is what the deny list input takes to revoke the card
    from collector.signing import read_denylist_input

    (tmp_path / "deny.txt").write_text(f"revoked:staff:{card.id_hex}\n")
    assert read_denylist_input(tmp_path / "deny.txt") == ([], [card.revocation_id])
    assert card.expires - card.issued == 7 * 86400
    assert STAFF_NAME not in repr(card) and STAFF_NAME not in str(card)
    # a different key, or one byte changed, does not verify
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(StaffCardError) as exc:
        read_card(text, other, datetime.now(UTC), CP)
    assert exc.value.reason is StaffReason.BAD_SIGNATURE
    for bad in ("CHOTSTAFF:", "CHOTSTAFF:!!!", text[:-30], "CHOTSTAFF:" + staffcard.b45encode(b"\x93\x01" * 40)):
        with pytest.raises(StaffCardError) as exc:
            read_card(bad, public, datetime.now(UTC), CP)
        assert exc.value.reason is StaffReason.UNREADABLE, bad


def test_the_cli_refuses_a_card_without_a_checkpoint_or_with_a_bad_one(tmp_path, fleet):
    proc = run_chot("collector", "staff-card", "A B", "--checkpoint", "bad checkpoint!", "--out",
                    str(tmp_path / "x.png"), "--key", str(fleet["priv"]), cwd=tmp_path)
    assert proc.returncode != 0 and "not a checkpoint id" in proc.stderr
    assert not (tmp_path / "x.png").exists()


# --- the daemon, offline, then the collector --------------------------------------------------


def test_offline_paper_declaration_reaches_the_collector_exactly_once(tmp_path, fleet, mock_pins):
    png, _ = staff_card_png(tmp_path, fleet)
    broker = Mosquitto(tmp_path / "mosquitto")  # its port is chosen; it is not started: the terminal is offline
    frames = tmp_path / "frames"
    frames.mkdir()
    shown = ["001090012345"] * 2 + [None] + [png] * 3 + [None] + ["079201004321"] * 2 + [None] + ["001090099999"]
    for i, item in enumerate(shown):
        frame_png(frames / f"frame-{i:04d}.png", item)
    cfg = terminal_cfg(tmp_path, fleet, frames=frames, port=broker.port)
    term = Terminal.from_config(cfg)
    term.source = WaitingSource(term.source, term.feedback)
    fb = term.feedback
    try:
        assert term.run() == len(shown)
        assert fb.wait_idle(timeout=5)
        assert not term.link.connected
        events = term.outbox.pending(0, 100)
        assert [(e["seq"], e["source"], e["format"], e["decision"], e["reason"], e["verified"]) for e in events] == [
            (1, "camera", "plain", "FAIL", "unsigned", False),  # no window without a card
            (2, "paper", "plain", "PASS", "manual", False),  # the next ID after the card: a paper declaration
            (3, "camera", "plain", "FAIL", "unsigned", False),  # one card scan, one declaration
        ]
        [scan] = term.paper.scans  # the card held for three frames: one scan (cooldown)
        assert scan.accepted and scan.reason == "ok"
        # the staff member is sealed with the person: nothing of either in clear in the outbox
        raw = str(events)
        for secret in (STAFF_NAME, "079201004321", scan.card_id):
            assert secret not in raw
        opened = Opener.from_dir(fleet["key_dir"]).open(events[1]["sealed"], events[1]["uuid"])
        assert opened.person_id == "id:079201004321"
        assert opened.person["staff_card"] == scan.card_id and opened.person["staff_name"] == STAFF_NAME
        assert opened.person["paper"] is True
        # the pins: the staff signal (green blinks, two beeps, no relay), then paper (green, relay, two long beeps)
        f = fb.cfg
        steps = {k: {s.device: s for s in signal_steps(k, f)} for k in ("staff", "paper", "unreadable")}
        assert states(fb.relay) == pin_states(steps["paper"]["relay"])  # only the paper declaration opened it
        assert states(fb.pass_led) == pin_states(steps["staff"]["pass_led"]) + pin_states(
            steps["paper"]["pass_led"])[1:]
        n = steps["unreadable"]["buzzer"].n
        assert states(fb.buzzer) == [False] + [True, False] * (n + steps["staff"]["buzzer"].n
                                                               + steps["paper"]["buzzer"].n + n)
        assert steps["staff"]["pass_led"].n == 3 and steps["paper"]["buzzer"].on_s > steps["staff"]["buzzer"].on_s

        # the network comes back: the broker, then the collector
        url = f"sqlite:///{tmp_path / 'collector.db'}"
        col_cfg = config_from_dict({
            "collector": {"id": "c1", "database": url, "batch_size": 100, "batch_max_wait_ms": 50,
                          "sqlite_synchronous": "NORMAL", "key_dir": str(fleet["key_dir"]),
                          "signing_key": str(fleet["priv"])},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5, "reconnect_min_s": 0.1,
                     "reconnect_max_s": 1.0},
            "http": {"enabled": False},
        })
        broker.start()
        with Collector(col_cfg) as col:
            col.wait_subscribed(10)
            assert term.link.wait_acked(3, 30), term.link.acked_seq
            assert term.outbox.stats()["depth"] == 0
    finally:
        term.close()
        broker.stop()
    with Storage(url, migrate=False, keys=CollectorKeys.from_dir(fleet["key_dir"])) as st:
        E = st.Event
        rows = list(E.select(E.device_id, E.seq, E.source, E.verified, E.person_key, E.claim_key)
                    .where(E.device_id == DEV).order_by(E.seq).tuples())
        assert [(r[0], r[1]) for r in rows] == [(DEV, 1), (DEV, 2), (DEV, 3)]  # each (device_id, seq) once
        paper_row = rows[1]
        assert paper_row[2] == "paper" and paper_row[3] is False and paper_row[4] is None and paper_row[5]
        res = queries.visits(st, "079201004321", "case-paper", "tester")
        assert res["verified"] == [] and len(res["unverified"]) == 1
        (v,) = res["unverified"]
        assert v["source"] == "paper" and v["verified"] is False
        assert v["staff"] == {"card": scan.card_id, "name": STAFF_NAME}
        assert "staff_name" not in v["person"] and v["person"]["id_number"] == "079201004321"


# --- refusals ---------------------------------------------------------------------------------


def _term(tmp_path, fleet, mock_pins, **sections):
    """A terminal with mock pins and its outbox, no uplink; frames are given to process_frame."""
    tmp_path.mkdir(exist_ok=True)
    cfg = terminal_cfg(tmp_path, fleet, **sections)
    return Terminal(cfg, feedback=Feedback(cfg.pins, cfg.feedback, pin_factory=mock_pins),
                    outbox=Outbox.from_config(cfg))


def _after_card(term, card_text, id_text):
    """Scan a card then an ID; return (the StaffScan, the signal the card got, the ID's event)."""
    assert term.process_frame(frame(card_text)) == []  # a staff card never makes an event
    assert term.feedback.wait_idle(timeout=5)
    kind = term.feedback.kind
    (event,) = term.process_frame(frame(id_text))
    assert term.feedback.wait_idle(timeout=5)
    return term.paper.scans[-1], kind, event


def test_expired_foreign_forged_and_revoked_cards_are_refused_and_open_no_window(tmp_path, fleet, mock_pins):
    now = datetime.now(UTC)
    key = fleet["key"]
    expired, _ = make_card(key, STAFF_NAME, [CP], days=1, now=now - timedelta(days=2))
    future, _ = make_card(key, STAFF_NAME, [CP], days=1, now=now + timedelta(days=1))
    foreign, _ = make_card(key, STAFF_NAME, ["another-gate"], days=1)
    forged, _ = make_card(ed25519.Ed25519PrivateKey.generate(), STAFF_NAME, [CP], days=1)
    revoked, revoked_card = make_card(key, STAFF_NAME, [CP], days=1)
    term = _term(tmp_path, fleet, mock_pins)
    term.checker.policy.denylist.replace(DenyList.build(2, credential_ids=[revoked_card.revocation_id],
                                                       params={"t": 1, "m_kib": 8192, "p": 1}))
    try:
        cases = [(expired, "expired"), (future, "not_yet_valid"), (foreign, "wrong_checkpoint"),
                 (forged, "bad_signature"), (revoked, "revoked"), ("CHOTSTAFF:DAMAGED", "unreadable")]
        for i, (text, reason) in enumerate(cases):
            scan, kind, event = _after_card(term, text, f"00109001{i:04d}")
            assert (scan.accepted, scan.reason, kind) == (False, reason, "fail"), reason
            assert (event["source"], event["reason"]) == ("camera", "unsigned"), reason  # no window opened
        assert len(term.outbox.pending(0, 100)) == len(cases)
        assert states(term.feedback.relay) == [False]  # nobody let through
    finally:
        term.close()


def test_a_clock_behind_its_floor_refuses_cards_with_the_fault_signal(tmp_path, fleet, mock_pins, caplog):
    text, _ = make_card(fleet["key"], STAFF_NAME, [CP], days=30)
    term = _term(tmp_path, fleet, mock_pins)
    try:
        (first,) = term.process_frame(frame("001090000001"))  # an event at the real time: the floor
        assert first["source"] == "camera"
        term._now = lambda: datetime.now(UTC) - timedelta(days=2)  # the clock set back, card still "valid" then
        scan, kind, event = _after_card(term, text, "001090000002")
        assert (scan.accepted, scan.reason, kind) == (False, "clock_behind", "fault")
        assert event["source"] == "camera" and event["clock"]["behind"] is True
    finally:
        term.close()
    assert STAFF_NAME not in caplog.text and "001090000002" not in caplog.text


def test_the_window_times_out_and_signed_or_nameless_texts_leave_it_open(tmp_path, fleet, mock_pins, caplog):
    caplog.set_level("INFO")
    text, card = make_card(fleet["key"], STAFF_NAME, [CP], days=1)
    term = _term(tmp_path, fleet, mock_pins, policy={"paper_window_s": 30.0})
    clock = [1000.0]
    term.paper.window._mono = lambda: clock[0]
    try:
        assert term.process_frame(frame(text)) == []
        assert term.feedback.wait_idle(timeout=5) and term.feedback.kind == "staff"
        (link,) = term.process_frame(frame("https://example.org/khai-bao"))  # names nobody: its normal event
        assert (link["source"], link["reason"]) == ("camera", "unsigned")
        clock[0] += 31  # past policy.paper_window_s
        (late,) = term.process_frame(frame("001090000003"))
        assert (late["source"], late["reason"]) == ("camera", "unsigned")
        assert term.paper.window.current() is None
        # a fresh scan of the card (after its cooldown) opens a new window
        term.cooldown._last.clear()
        term.process_frame(frame(text))
        (paper,) = term.process_frame(frame("001090000004"))
        assert (paper["source"], paper["reason"], paper["decision"]) == ("paper", "manual", "PASS")
        assert term.feedback.wait_idle(timeout=5) and term.feedback.kind == "paper"
    finally:
        term.close()
    assert STAFF_NAME not in caplog.text and card.id_hex in caplog.text


def test_a_terminal_with_paper_disabled_or_without_a_sealing_key_refuses_cards(tmp_path, fleet, mock_pins):
    text, _ = make_card(fleet["key"], STAFF_NAME, [CP], days=1)
    term = _term(tmp_path, fleet, mock_pins, policy={"paper_window_s": 0.0})
    try:
        scan, kind, event = _after_card(term, text, "001090000005")
        assert (scan.reason, kind, event["source"]) == ("paper_disabled", "fault", "camera")
        term.checker.policy.cfg.paper_window_s = 60.0
        term.sealer = None
        term.cooldown._last.clear()
        scan, kind, event = _after_card(term, text, "001090000006")
        assert (scan.reason, kind, event["source"]) == ("no_seal_key", "fault", "camera")
    finally:
        term.close()
    # a collector key that cannot be read: no card can be checked
    term = _term(tmp_path / "nokey", fleet, mock_pins, mqtt={"collector_public_key": str(tmp_path / "missing.pem")})
    try:
        scan, kind, event = _after_card(term, text, "001090000007")
        assert (scan.reason, kind, event["source"]) == ("no_collector_key", "fault", "camera")
    finally:
        term.close()


def test_card_text_is_small_and_alphanumeric():
    key = ed25519.Ed25519PrivateKey.generate()
    text, card = make_card(key, "Nguyễn Thị Thu Hương", [CP], days=30)
    import segno

    assert segno.make_qr(text, error="m").version <= 8
    assert staffcard.b45decode(staffcard.b45encode(bytes(range(256)))) == bytes(range(256))
    assert set(text[len(staffcard.PREFIX):]) <= set(staffcard._B45)
