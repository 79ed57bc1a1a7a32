"""The optional speaker: Vietnamese prompts made with espeak-ng, played through ALSA to a file sink.

ALSA's `file` PCM plugin (an .asoundrc in a temporary HOME) writes what `aplay` plays into a file
and discards it through the `null` device, so a test hears which prompt each decision got.
"""

import logging
import shutil
import wave
from datetime import UTC, datetime, timedelta

import pytest
from conftest import need

from chot.config import validate
from chot.errors import ConfigError
from device.config import SCHEMA
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.daemon import Terminal
from device.io import speaker as speaker_mod
from device.io.feedback import Feedback
from device.io.speaker import PROMPT_FILES, Speaker, generate, prompt_for
from device.uplink.outbox import Outbox


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    need(shutil.which("espeak-ng"), "espeak-ng (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("voice")
    generate(folder)
    return folder


@pytest.fixture
def sink(tmp_path, monkeypatch):
    """An ALSA device `chotsink` whose samples land in sink.raw; HOME points aplay at its .asoundrc."""
    need(shutil.which("aplay"), "aplay (apt-get install alsa-utils)")
    out = tmp_path / "sink.raw"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text(f'pcm.chotsink {{\n  type file\n  slave.pcm "null"\n  file "{out}"\n'
                                    '  format "raw"\n}\n')
    monkeypatch.setenv("HOME", str(home))
    return out


def samples(path):
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def heard(sink, voice_dir):
    """Which prompt the sink holds (its samples start with that file's)."""
    data = sink.read_bytes()
    found = [name for name in ("pass", "fail", "guard") if data.startswith(samples(voice_dir / f"{name}.wav"))]
    assert len(found) == 1, f"the sink holds {len(data)} bytes matching {found}"
    sink.unlink()
    return found[0]


def test_prompts_are_vietnamese_wav_files(voice_dir):
    for name in PROMPT_FILES:
        with wave.open(str(voice_dir / name)) as w:
            assert w.getnframes() > w.getframerate() // 4  # a word or more, not an empty file
    assert samples(voice_dir / "pass.wav") != samples(voice_dir / "fail.wav")
    assert {prompt_for(k) for k in ("pass",)} == {"pass"}
    assert {prompt_for(k) for k in ("fail", "unreadable", "unsigned")} == {"fail"}
    assert {prompt_for(k) for k in ("fault", "guard", "see_guard")} == {"guard"}


def test_each_decision_says_its_prompt(tmp_path, voice_dir, sink, mock_pins):
    key = keys.generate("ed25519")
    _, pub = keys.save_keypair(key, tmp_path / "issuer")
    ok, sick, third = make_test_identities(3, seed=11)
    sick["symptoms"] = True
    issued = datetime.now(UTC) - timedelta(minutes=1)
    cfg = validate({
        "device": {"id": "gate-1-in", "checkpoint": "phuc-tan-gate-1", "direction": "in"},
        "scanner": {"source": "hid", "hid_device": "scanner"},
        "pins": {"factory": "mock"},
        "feedback": {"pass_led_s": 0.05, "fail_led_s": 0.05, "fault_s": 0.1, "speaker": True,
                     "speaker_device": "chotsink", "voice_dir": str(voice_dir)},
        "policy": {"trusted_issuers": [str(pub)]},
        "outbox": {"path": str(tmp_path / "outbox.db"), "max_rows": 2},
    }, SCHEMA, world=True)
    term = Terminal(cfg, feedback=Feedback(cfg.pins, cfg.feedback), outbox=Outbox.from_config(cfg))
    speaker = term.feedback.speaker
    try:
        said = []
        for person in (ok, sick, third):  # the third finds the outbox full: fault, "see the guard"
            term.process_text(issue_declaration(key, person, issued_at=issued), source="scanner")
            assert speaker.wait_idle(timeout=30)
            said.append(heard(sink, voice_dir))
        assert [d.reason for _, d, _ in term.decisions] == ["ok", "symptoms_declared", "outbox_full"]
        assert said == ["pass", "fail", "guard"]
        assert speaker.played == {"pass": 1, "fail": 1, "guard": 1} and speaker.failed == 0
    finally:
        term.close()


def test_newest_prompt_wins(voice_dir, sink):
    speaker = Speaker("chotsink", voice_dir)
    try:
        for kind in ("pass", "fail", "pass", "fault"):
            speaker.say(kind)
        assert speaker.wait_idle(timeout=30)
        assert speaker.last == "guard" and heard(sink, voice_dir) == "guard"
        assert speaker.played["guard"] == 1 and sum(speaker.played.values()) <= 2  # the others cut or dropped
    finally:
        speaker.close()


def test_no_sound_device_stays_silent_with_one_log_line(voice_dir, tmp_path, monkeypatch, mock_pins, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))  # no .asoundrc: the device below does not exist
    fb = Feedback({"factory": "mock"}, {"pass_led_s": 0.05, "speaker": True, "speaker_device": "nosuchcard",
                                        "voice_dir": str(voice_dir)})
    try:
        with caplog.at_level(logging.ERROR, logger=speaker_mod.__name__):
            for _ in range(3):
                fb.signal("pass")
                assert fb.pass_led.is_lit  # the LED is on when signal returns, whatever the speaker does
                assert fb.speaker.wait_idle(timeout=30)
        assert fb.speaker.failed == 3 and fb.speaker.played["pass"] == 0
        lines = [r for r in caplog.records if "no sound" in r.getMessage()]
        assert len(lines) == 1 and "feedback.speaker_device" in lines[0].getMessage()
    finally:
        fb.close()


def test_speaker_is_off_by_default_and_checked_when_on(tmp_path, mock_pins):
    fb = Feedback({"factory": "mock"}, {})
    try:
        assert fb.speaker is None
    finally:
        fb.close()
    base = {"device": {"id": "t", "checkpoint": "c", "direction": "in"},
            "outbox": {"path": str(tmp_path / "o.db")}}
    with pytest.raises(ConfigError) as err:
        validate({**base, "feedback": {"speaker": True, "voice_dir": str(tmp_path)}}, SCHEMA, world=True)
    assert "feedback.voice_dir" in str(err.value) and "chot terminal voice" in str(err.value)
