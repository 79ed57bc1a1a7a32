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

from chot.config import validate
from chot.wire import validate_event
from device.config import SCHEMA
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.daemon import Terminal
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


@pytest.fixture
def issuer(tmp_path):
    key = keys.generate("ed25519")
    priv, pub = keys.save_keypair(key, tmp_path / "issuer")
    return key, pub, priv


def make_cfg(tmp_path, frames, pub, **overrides):
    data = {
        "device": {"id": "gate-1-in", "checkpoint": "phuc-tan-gate-1", "direction": "in"},
        "scanner": {"source": "files", "path": str(frames), "cooldown_s": 60.0},
        "pins": {"factory": "mock", "relay": "GPIO23", "button": "GPIO24"},
        "feedback": dict(FAST_FEEDBACK),
        "policy": {"trusted_issuers": [str(pub)]},
        "outbox": {"path": str(tmp_path / "outbox.db")},
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


def test_folder_of_frames_drives_pins_and_records_one_event_per_person(tmp_path, issuer, mock_pins):
    key, pub, _ = issuer
    now = datetime.now(UTC)
    a, b, c = make_test_identities(3, seed=7)
    c["symptoms"] = True
    valid_a = issue_declaration(key, a, issued_at=now - timedelta(minutes=5))
    valid_b = issue_declaration(key, b, issued_at=now - timedelta(minutes=5))
    sick_c = issue_declaration(key, c, issued_at=now - timedelta(minutes=5))
    # Each person is held in view for several frames, with empty frames between people.
    texts = [valid_a] * 4 + [None] * 2 + [valid_b] * 3 + [None] + [sick_c] * 3 + [None] + ["001090012345"] * 2
    write_frames(tmp_path / "frames", texts)
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub)

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
            assert e["device_id"] == "gate-1-in" and e["source"] == "camera"
        # No ID number or name in the record's subject summary.
        assert a["id_number"] not in str(events[0]) and a["name"] not in str(events[0])

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
from device.daemon import Terminal
cfg = validate({
    "device": {"id": "k", "checkpoint": "cp", "direction": "out"},
    "scanner": {"source": "synthetic", "cooldown_s": 0.0, "synthetic_issuer_key": sys.argv[2]},
    "pins": {"factory": "mock"},
    "policy": {"trusted_issuers": [sys.argv[3]]},
    "outbox": {"path": sys.argv[1]},
}, SCHEMA)
from device.simulate import crowd_texts
term = Terminal.from_config(cfg, texts=crowd_texts(cfg))
term.on_decision = lambda ev, d, v: ev and print(ev["seq"], flush=True)
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
        assert [(e["format"], e["decision"], e["reason"], e["subject"]) for e in events] == [
            ("unknown", "FAIL", "unreadable", {})
        ]
        steps = {s.device: s for s in signal_steps("unreadable", term.feedback.cfg)}
        assert [s.state for s in term.feedback.buzzer.pin.states] == pin_states(steps["buzzer"])
        assert [s.state for s in term.feedback.relay.pin.states] == [False]  # never opened
