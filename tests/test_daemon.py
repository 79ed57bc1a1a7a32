"""The terminal daemon end to end on a folder of frames: pins, events, crashes, a full outbox."""

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import segno
from PIL import Image

from chot import wire
from chot.config import validate
from chot.errors import ChotError
from chot.personal import Opener, SealError, generate_seal_keys, person_id_for_id
from chot.wire import validate_event
from device.config import SCHEMA
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.daemon import NO_SEAL_WARNING, Terminal
from device.io.patterns import pin_states, signal_steps
from device.uplink.outbox import Outbox

FAST_FEEDBACK = {
    "pass_led_s": 0.05, "pass_beeps": 1, "pass_beep_s": 0.01, "relay_s": 0.05,
    "fail_led_s": 0.05, "fail_beeps": 3, "fail_beep_s": 0.01,
    "unreadable_blinks": 2, "unreadable_beep_s": 0.02, "unreadable_blink_s": 0.02,
}


def qr_frame(text, size=(640, 480), offset=(120, 60), scale=4):
    """A grey camera-sized frame with the QR of `text` on a mid-grey background."""
    frame = np.full((size[1], size[0]), 150, np.uint8)
    if text is not None:
        modules = np.array([list(row) for row in segno.make(text, error="m").matrix], bool)
        modules = np.pad(modules, 4, constant_values=False)
        qr = np.where(np.kron(modules, np.ones((scale, scale), bool)), 20, 235).astype(np.uint8)
        y, x = offset
        frame[y:y + qr.shape[0], x:x + qr.shape[1]] = qr
    return frame


def write_frames(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        Image.fromarray(qr_frame(text)).save(folder / f"frame-{i:04d}.png")


CLEAR_FIELDS = {"v", "device_id", "seq", "uuid", "checkpoint", "direction", "time", "clock", "source", "format",
                "decision", "reason", "verified", "sealed"}


@pytest.fixture
def issuer(tmp_path):
    key = keys.generate("ed25519")
    priv, pub = keys.save_keypair(key, tmp_path / "issuer")
    return key, pub, priv


@pytest.fixture
def collector_keys(tmp_path):
    """The collector's key folder (seal-<kid>.key, seal.pub): the terminal gets only seal.pub."""
    key_dir = tmp_path / "collector-keys"
    kid = generate_seal_keys(key_dir)
    return key_dir, key_dir / "seal.pub", kid


def make_cfg(tmp_path, frames, pub, seal_pub=None, **overrides):
    data = {
        "device": {"id": "gate-1-in", "checkpoint": "phuc-tan-gate-1", "direction": "in"},
        "scanner": {"source": "files", "path": str(frames), "cooldown_s": 60.0},
        "pins": {"factory": "mock", "relay": "GPIO23", "button": "GPIO24"},
        "feedback": dict(FAST_FEEDBACK),
        "policy": {"trusted_issuers": [str(pub)]},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "privacy": {"seal_public_key": str(seal_pub)} if seal_pub else {},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
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


def test_folder_of_frames_drives_pins_and_records_one_event_per_person(tmp_path, issuer, collector_keys,
                                                                       mock_pins):
    key, pub, _ = issuer
    key_dir, seal_pub, kid = collector_keys
    now = datetime.now(UTC)
    a, b, c = make_test_identities(3, seed=7)
    c["symptoms"] = True
    valid_a = issue_declaration(key, a, issued_at=now - timedelta(minutes=5))
    valid_b = issue_declaration(key, b, issued_at=now - timedelta(minutes=5))
    sick_c = issue_declaration(key, c, issued_at=now - timedelta(minutes=5))
    # Each person is held in view for several frames, with empty frames between people.
    texts = [valid_a] * 4 + [None] * 2 + [valid_b] * 3 + [None] + [sick_c] * 3 + [None] + ["001090012345"] * 2
    write_frames(tmp_path / "frames", texts)
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub, seal_pub=seal_pub)

    term = Terminal.from_config(cfg)
    term.source = WaitingSource(term.source, term.feedback)
    fb = term.feedback
    try:
        frames = term.run()
        assert fb.wait_idle(timeout=5)
        assert frames == len(texts)
        events = term.outbox.pending(0, 100)
        # Exactly one committed event per person, in order, with the right decisions.
        assert [(e["decision"], e["reason"], e["format"]) for e in events] == [
            ("PASS", "ok", "native"), ("PASS", "ok", "native"),
            ("FAIL", "symptoms_declared", "native"), ("FAIL", "unsigned", "plain"),
        ]
        assert [e["seq"] for e in events] == [1, 2, 3, 4]
        for e in events:
            assert validate_event(e) == []
            assert set(e) == CLEAR_FIELDS
            assert e["device_id"] == "gate-1-in" and e["source"] == "camera"
        assert [e["verified"] for e in events] == [True, True, True, False]  # the plain ID proves nothing
        # No ID number or name in clear; the person is sealed to the collector, bound to the event.
        for person, e in zip((a, b, c), events, strict=False):
            assert person["id_number"] not in str(e) and person["name"] not in str(e)
        opener = Opener.from_dir(key_dir)
        opened = [opener.open(e["sealed"], e["uuid"]) for e in events]
        assert [o.person_id for o in opened] == [person_id_for_id(p["id_number"]) for p in (a, b, c)] + [
            "id:001090012345"]
        assert opened[0].person["name"] == a["name"] and opened[0].person["phone"] == a["phone"]
        assert opened[0].credential_id and opened[3].credential_id is None
        assert all(e["sealed"]["kid"] == kid for e in events)
        with pytest.raises(SealError):
            opener.open(events[0]["sealed"], events[1]["uuid"])  # a sealed part cannot be moved

        def states(dev):
            return [s.state for s in dev.pin.states]

        fbcfg = fb.cfg
        pass_steps = {s.device: s for s in signal_steps("pass", fbcfg)}
        fail_steps = {s.device: s for s in signal_steps("fail", fbcfg)}
        unr_steps = {s.device: s for s in signal_steps("unreadable", fbcfg)}
        # Green: two passes, each on once.
        assert states(fb.pass_led) == pin_states(pass_steps["pass_led"]) + pin_states(pass_steps["pass_led"])[1:]
        # Relay pulsed once per PASS, never on FAIL.
        assert states(fb.relay).count(True) == 2
        assert states(fb.relay) == [False, True, False, True, False]
        # Buzzer: 1 beep per pass, 3 for the symptomatic FAIL, one long beep for the unsigned code.
        n_beeps = 2 * pass_steps["buzzer"].n + fail_steps["buzzer"].n + unr_steps["buzzer"].n
        assert n_beeps == 6
        assert states(fb.buzzer) == [False] + [True, False] * n_beeps
        # Red: on once (FAIL, steady) then blinks for the unsigned code.
        assert states(fb.fail_led) == [False] + [True, False] * (1 + unr_steps["fail_led"].n)
    finally:
        term.close()


def test_cooldown_and_manual_button(tmp_path, issuer, mock_pins):
    key, pub, _ = issuer
    person = make_test_identities(1, seed=3)[0]
    text = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=1))
    write_frames(tmp_path / "frames", [text] * 3 + [None] * 3 + [text] * 3)
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub)
    with Terminal.from_config(cfg) as term:
        term.run()
        assert [e["reason"] for e in term.outbox.pending(0, 10)] == ["ok"]  # cooldown: one event
        # The guard presses the manual-pass button for a person checked on paper.
        term.feedback.wait_idle(timeout=5)
        term.feedback.button.pin.drive_low()
        term.feedback.button.pin.drive_high()
        deadline = time.monotonic() + 5
        while len(term.outbox.pending(0, 10)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        manual = term.outbox.pending(0, 10)[1]
        assert (manual["source"], manual["decision"], manual["reason"]) == ("manual", "PASS", "manual")
        assert (manual["format"], manual["verified"], manual["sealed"]) == ("none", False, None)
        assert validate_event(manual) == []


def test_full_outbox_fails_closed(tmp_path, issuer, mock_pins, caplog):
    key, pub, _ = issuer
    people = make_test_identities(3, seed=5)
    now = datetime.now(UTC) - timedelta(minutes=1)
    texts = []
    for p in people:
        texts += [issue_declaration(key, p, issued_at=now), None]
    write_frames(tmp_path / "frames", texts)
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub, outbox={"max_rows": 1})
    with Terminal.from_config(cfg) as term:
        term.source = WaitingSource(term.source, term.feedback)
        term.run()
        term.feedback.wait_idle(timeout=5)
        events = term.outbox.pending(0, 10)
        assert len(events) == 1 and events[0]["decision"] == "PASS"
        # The two people after the cap got the fault signal, never a pass.
        assert term.counts["faults"] == 2
        assert [s.state for s in term.feedback.relay.pin.states] == [False, True, False]
        assert term.feedback.status == "fault"
        assert [d.reason for _, d, _ in term.decisions] == ["ok", "outbox_full", "outbox_full"]
    assert "NOT recorded" in caplog.text


CHILD = r"""
import sys
from chot.config import validate
from device.config import SCHEMA
from device.daemon import NO_SEAL_WARNING, Terminal
cfg = validate({
    "device": {"id": "k", "checkpoint": "cp", "direction": "out"},
    "scanner": {"source": "synthetic", "cooldown_s": 0.0},
    "pins": {"factory": "mock"},
    "policy": {"trusted_issuers": [sys.argv[3]]},
    "outbox": {"path": sys.argv[1]},
}, SCHEMA)
from chotdemo.crowd import crowd_source
from device.credentials.keys import load_private_key
term = Terminal.from_config(cfg, source=crowd_source(cfg.scanner, load_private_key(sys.argv[2])),
                            on_decision=lambda ev, d, v: ev and print(ev["seq"], flush=True))
term.run()
"""


def test_sigkill_mid_run_loses_no_committed_event_and_reuses_no_seq(tmp_path, issuer):
    key, pub, priv = issuer
    db = tmp_path / "outbox.db"
    seen = []
    for _round in range(2):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(priv), str(pub)],
                                 stdout=subprocess.PIPE, text=True)
        for line in child.stdout:
            seen.append(int(line))
            if len(seen) >= 15 * (_round + 1):
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
    with Outbox(db, device_id="k") as box:
        stored = [e["seq"] for e in box.pending(0, 10_000)]
    # Every event reported committed is there; seqs are unique and only grow across restarts.
    assert set(seen) <= set(stored)
    assert len(stored) == len(set(stored))
    assert stored == sorted(stored)
    first_round_max = max(seen[:15])
    assert min(seen[15:]) > first_round_max


def test_status_led_shows_uplink_down_and_fault_wins(tmp_path, issuer, mock_pins):
    key, pub, _ = issuer
    write_frames(tmp_path / "frames", [None])
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub)
    with Terminal.from_config(cfg) as term:
        term.set_health("ok")
        assert term.feedback.status == "ok"
        term.set_health("uplink_down")  # what the link reports after mqtt.down_alarm_min
        assert term.feedback.status == "uplink_down"
        term._faulted = True
        term.set_health("fault")
        term.set_health("ok")  # the uplink came back, but the outbox still cannot record
        assert term.feedback.status == "fault"


def test_a_damaged_code_gets_one_unreadable_event_and_signal(tmp_path, issuer, mock_pins):
    from device.scanner.synthetic import render_qr_frame

    key, pub, _ = issuer
    text = issue_declaration(key, make_test_identities(1, seed=4)[0])
    rng = np.random.default_rng(7)
    folder = tmp_path / "frames"
    folder.mkdir()
    # A person holds a torn code up for 6 frames; then the camera sees an empty wall.
    frames = [render_qr_frame(text, rng, 640, 480, garble=True) for _ in range(6)] + [qr_frame(None)] * 3
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame-{i:04d}.png")
    cfg = make_cfg(tmp_path, folder, pub)
    with Terminal.from_config(cfg) as term:
        assert all(term.decoder.decode(f) == [] for f in frames)  # nothing readable in any frame
        term.source = WaitingSource(term.source, term.feedback)
        term.run()
        term.feedback.wait_idle(timeout=5)
        events = term.outbox.pending(0, 10)
        assert [(e["format"], e["decision"], e["reason"], e["verified"], e["sealed"]) for e in events] == [
            ("unknown", "FAIL", "unreadable", False, None)
        ]
        steps = {s.device: s for s in signal_steps("unreadable", term.feedback.cfg)}
        assert [s.state for s in term.feedback.buzzer.pin.states] == pin_states(steps["buzzer"])
        assert [s.state for s in term.feedback.relay.pin.states] == [False]  # never opened


def test_without_a_sealing_key_events_carry_no_personal_part_and_it_says_so_once(tmp_path, issuer, mock_pins,
                                                                                 caplog):
    key, pub, _ = issuer
    person = make_test_identities(1, seed=11)[0]
    write_frames(tmp_path / "frames", [issue_declaration(key, person), None, "001090012345"])
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub)
    with caplog.at_level("INFO"), Terminal.from_config(cfg) as term:
        assert term.sealer is None
        term.run()
        events = term.outbox.pending(0, 10)
    assert [(e["format"], e["verified"], e["sealed"]) for e in events] == [("native", True, None),
                                                                           ("plain", False, None)]
    assert caplog.text.count(NO_SEAL_WARNING) == 1
    for text in (caplog.text, str(events)):
        assert person["id_number"] not in text and person["name"] not in text and "001090012345" not in text


def test_a_bad_sealing_key_file_stops_the_terminal_before_anything_is_opened(tmp_path, issuer, mock_pins):
    _, pub, _ = issuer
    write_frames(tmp_path / "frames", [None])
    bad = tmp_path / "seal.pub"
    bad.write_text("chot-seal-public-v1 0011223344556677 not-a-key\n")
    for path in (bad, tmp_path / "missing.pub"):
        cfg = make_cfg(tmp_path, tmp_path / "frames", pub, seal_pub=path)
        with pytest.raises(ChotError, match="seal"):
            Terminal.from_config(cfg)
    assert not (tmp_path / "outbox.db").exists()


def test_one_clock_reading_per_decision_for_the_policy_and_the_event(tmp_path, issuer, mock_pins, monkeypatch):
    import device.daemon

    key, pub, _ = issuer
    issued = datetime(2021, 8, 9, 1, 0, tzinfo=UTC)
    people = make_test_identities(2, seed=12)
    texts = [issue_declaration(key, p, issued_at=issued) for p in people]
    write_frames(tmp_path / "frames", [texts[0], None, texts[1]])
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub)
    # the first decision at issued + 2 h (valid), the second at issued + 30 h (expired)
    readings = iter([issued + timedelta(hours=2), issued + timedelta(hours=30)])
    quality = iter([{"synced": False, "boot_id": "b-1", "mono_ns": 111}, {"synced": True, "boot_id": "b-1",
                                                                          "mono_ns": 222}])
    monkeypatch.setattr(device.daemon, "clock_quality", lambda: next(quality))
    with Terminal.from_config(cfg) as term:
        term._now = lambda: next(readings)
        term.run()
        events = term.outbox.pending(0, 10)
    assert [(e["time"], e["clock"]["mono_ns"], e["reason"]) for e in events] == [
        ("2021-08-09T03:00:00.000000Z", 111, "ok"), ("2021-08-10T07:00:00.000000Z", 222, "expired")]


def test_a_signed_config_update_switches_the_sealing_key_and_it_survives_a_restart(tmp_path, issuer,
                                                                                    collector_keys, mock_pins):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from device.uplink.link import Link
    from device.uplink.updates import UpdateStore, load_public_key, store_path_for

    key, pub, _ = issuer
    key_dir, seal_pub, old_kid = collector_keys
    new_kid = generate_seal_keys(key_dir)  # the collector rotates: old keys kept, seal.pub is the new one
    signer = ed25519.Ed25519PrivateKey.generate()
    signer_pub = tmp_path / "collector.pub.pem"
    signer_pub.write_bytes(signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    old_pub = tmp_path / "old-seal.pub"  # what the terminal was provisioned with
    old_pub.write_text(seal_text_for(key_dir, old_kid))
    people = make_test_identities(3, seed=13)
    texts = [issue_declaration(key, p) for p in people]
    write_frames(tmp_path / "frames", [texts[0]])
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub, seal_pub=old_pub,
                   mqtt={"enabled": False, "collector_public_key": str(signer_pub)})
    opener = Opener.from_dir(key_dir)
    body = {"privacy": {"seal_public_key": seal_pub.read_text()}, "policy": {"fail_on_travel": True}}
    with Terminal.from_config(cfg) as term:
        term.run()
        assert term.sealer.kid == old_kid
        # the link verified the envelope and keeps it; the daemon applies it
        store = UpdateStore(store_path_for(cfg.outbox.path), load_public_key(signer_pub), cfg.device.id)
        offered = store.offer(wire.config_topic(cfg.device.id), wire.sign_envelope(signer, "config", 3, body,
                                                                                   target=cfg.device.id))
        term.apply_update(*offered)
        store.commit("config")
        assert term.sealer.kid == new_kid
        verification, decision = term.checker.check(texts[1])
        ev = term._record(decision, verification, source="camera")
        # a bad key in a later update changes nothing
        with pytest.raises(ChotError):
            term.apply_update("config", {"privacy": {"seal_public_key": "chot-seal-public-v1 x y"}}, 4)
        assert term.sealer.kid == new_kid
        first = term.outbox.pending(0, 10)[0]
    assert first["sealed"]["kid"] == old_kid and ev["sealed"]["kid"] == new_kid
    assert opener.open(first["sealed"], first["uuid"]).person_id == person_id_for_id(people[0]["id_number"])
    assert opener.open(ev["sealed"], ev["uuid"]).person_id == person_id_for_id(people[1]["id_number"])
    kept = store_path_for(cfg.outbox.path).read_text()
    assert new_kid in kept and people[1]["id_number"] not in kept
    # after a restart the kept update is replayed: new events go to the new key at once
    with Terminal.from_config(cfg) as term:
        assert term.sealer.kid == old_kid
        term.link = Link(cfg, term.outbox, on_update=term.apply_update)  # replays the kept updates
        assert term.sealer.kid == new_kid
        term.link.close()
        term.link = None
        # a later config without a privacy part goes back to the configured key
        term.apply_update("config", {"policy": {}}, 5)
        assert term.sealer.kid == old_kid


def seal_text_for(key_dir, kid):
    """The seal.pub text of an older key `kid` of the folder (the collector keeps every private key)."""
    from chot.personal import load_private_keys, public_key_text

    return public_key_text(bytes(load_private_keys(key_dir)[kid].public_key))
