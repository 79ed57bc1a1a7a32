"""Handheld scanners as the terminal's input: keyboard-mode USB (evdev) and serial (pyserial) sources.

The keyboard-mode tests feed recorded key-event streams: the kernel's `struct input_event`s a
scanner produces, with their time stamps (a scanner types a key every millisecond or two), through
a pipe the source reads as it reads /dev/input/eventN; where the kernel has uinput the same stream
goes through a real virtual keyboard, opened by name and grabbed. The serial tests use a
pseudo-terminal as the scanner. Both go through the daemon's one path after the decode step.
"""

import os
import threading
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from evdev import InputEvent

from chot.config import validate
from chot.errors import ConfigError, HardwareError
from chot.wire import validate_event
from device.config import SCHEMA, load_terminal_config
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.daemon import Terminal
from device.scanner import hid
from device.scanner.hid import EV_KEY, EVENT, HidSource, KeyDecoder
from device.scanner.serialport import LineSplitter, SerialSource
from device.scanner.texts import MAX_TEXT_BYTES, Scanned

EV_SYN = 0
# A CCCD chip ID card's QR text (made up): 12-digit ID, old ID, name, birth date, sex, address, issue date.
CCCD = "001099012345|012345678|Nguyễn Thị Ánh Dương|01011999|Nữ|Số 12 Phố Hàng Bạc, Hoàn Kiếm, Hà Nội|15082021"

_CHAR_KEYS = {}
for _code, (_low, _high) in hid.LAYOUTS["us"].items():
    _CHAR_KEYS.setdefault(_low, (_code, False))
    _CHAR_KEYS.setdefault(_high, (_code, True))
_CHAR_KEYS.update({"\n": (hid.KEY_ENTER, False), "\t": (hid.KEY_TAB, False)})
_KP = {d: c for c, d in hid.KEYPAD_DIGITS.items()}
TONE_MARKS = "\u0300\u0301\u0303\u0309\u0323"  # the marks cp1258 sends as combining characters


def cp1258_bytes(ch):
    """A Vietnamese letter in cp1258: a precomposed base letter, then its tone mark (if any) as a combining one."""
    try:
        return ch.encode("cp1258")
    except UnicodeEncodeError:
        nfd = unicodedata.normalize("NFD", ch)
        tones = "".join(c for c in nfd if c in TONE_MARKS)
        base = unicodedata.normalize("NFC", "".join(c for c in nfd if c not in TONE_MARKS))
        return (base + tones).encode("cp1258")


def _key(out, t, code, value):
    sec, usec = divmod(round(t * 1e6), 1_000_000)
    out.append(InputEvent(sec, usec, EV_KEY, code, value))
    out.append(InputEvent(sec, usec, EV_SYN, 0, 0))


def fields(ev):
    return ev.sec, ev.usec, ev.type, ev.code, ev.value


def scanner_events(text, t0=1_700_000_000.0, key_s=0.0015, end=hid.KEY_ENTER, alt="unicode", gaps=None):
    """The key events a US-layout keyboard-mode scanner sends for `text` (evdev InputEvents), and the time after.

    Non-ASCII characters are sent the way scanners do in their Alt mode: Alt held, the decimal
    code on the keypad, Alt released (`alt="unicode"`: the code point; `"cp1258"`: Alt+0nnn bytes of
    the Vietnamese Windows code page). `gaps`: {index of a character: seconds of silence before it}.
    """
    out, t = [], t0
    gaps = gaps or {}

    def press(code):
        nonlocal t
        _key(out, t, code, 1)
        t += key_s / 2
        _key(out, t, code, 0)
        t += key_s / 2

    for i, ch in enumerate(text):
        t += gaps.get(i, 0.0)
        if ch in _CHAR_KEYS:
            code, shift = _CHAR_KEYS[ch]
            if shift:
                _key(out, t, hid.KEY_LEFTSHIFT, 1)
            press(code)
            if shift:
                _key(out, t, hid.KEY_LEFTSHIFT, 0)
            continue
        numbers = [str(ord(ch))] if alt == "unicode" else [
            "0" + str(b) for b in cp1258_bytes(ch)]
        for number in numbers:
            _key(out, t, hid.KEY_LEFTALT, 1)
            for d in number:
                press(_KP[d])
            _key(out, t, hid.KEY_LEFTALT, 0)
            t += key_s / 2
    if end is not None:
        press(end)
    return out, t


def decode_all(decoder, events):
    texts = []
    for ev in events:
        texts += decoder.feed(*fields(ev))
    return texts


# --- the key decoder on recorded streams -----------------------------------------------------------

def test_us_layout_shift_and_enter():
    text = 'HC1:6BF+70790T9WJWG.FKY*4GO0.O1CV2 O5 N2FBBRW1*70HS8WY04AC*WIFN0AHCD8KD97TK0F90KECTHGWJC0FDC:5AIA%G7X+AQB9746HS80:54IBQF60R6$A80X6S1BTYACG6M+9XG8KIAWNA91AY%67092L4WJCT3EHS8XJC$+DXJCCWENF6OF63W5NW6WF6%JC QE/IAYJC5LEW34U3ET7DXC9 QE-ED8%E.JCBECB1A-:8$96646AL60A60S6Q$D.UDRYA 96NF6L/5QW6307KQEPD09WEQDD+Q6TW6FA7C466KCN9E%961A6DL6FA7D46JPCT3E5JDLA7$Q6E464W5TG6..DX%DZJC6/DTZ9 QE5$CB$DA/D JC1/D3Z8WED1ECW.CCWE.Y92OAGY8MY9L+9MPCG/D5 C5IA5N9$PC5$CWKEJ:8ILAKS9PQ8+$9.46' # noqa: E501
    events, _ = scanner_events(text)
    assert decode_all(KeyDecoder(), events) == [text]


def test_recorded_alt_numpad_vietnamese_name():
    # Recorded from a scanner in its Unicode Alt mode typing "Võ Ễ" then Enter: Shift+V, Alt+KP 2 4 5
    # (U+00F5 õ), space, Alt+KP 7 8 7 6 (U+1EC4 Ễ), Enter. (sec, usec, type, code, value); EV_SYN left out.
    recorded = [
        (1700000000, 1000, 1, 42, 1), (1700000000, 1100, 1, 47, 1), (1700000000, 1900, 1, 47, 0),
        (1700000000, 2000, 1, 42, 0),
        (1700000000, 4000, 1, 56, 1), (1700000000, 4600, 1, 80, 1), (1700000000, 5100, 1, 80, 0),
        (1700000000, 5600, 1, 75, 1), (1700000000, 6100, 1, 75, 0), (1700000000, 6600, 1, 76, 1),
        (1700000000, 7100, 1, 76, 0), (1700000000, 7300, 1, 56, 0), (1700000000, 8000, 1, 57, 1),
        (1700000000, 8500, 1, 57, 0), (1700000000, 9000, 1, 56, 1), (1700000000, 9600, 1, 71, 1),
        (1700000000, 10100, 1, 71, 0), (1700000000, 10600, 1, 72, 1), (1700000000, 11100, 1, 72, 0),
        (1700000000, 11600, 1, 71, 1), (1700000000, 12100, 1, 71, 0), (1700000000, 12600, 1, 77, 1),
        (1700000000, 13100, 1, 77, 0), (1700000000, 13300, 1, 56, 0), (1700000000, 14000, 1, 28, 1),
        (1700000000, 14500, 1, 28, 0),
    ]
    assert decode_all(KeyDecoder(), [InputEvent(*r) for r in recorded]) == ["Võ Ễ"]


@pytest.mark.parametrize("alt", ["unicode", "cp1258"])
def test_cccd_with_vietnamese_name_through_alt_codes(alt):
    events, _ = scanner_events(CCCD, alt=alt)
    got = decode_all(KeyDecoder(alt_codepage="cp1258"), events)
    assert got == [CCCD]  # cp1258 sends base letters and combining tone marks: put back in NFC
    assert unicodedata.is_normalized("NFC", got[0])


def test_gaps_between_characters_drop_what_was_typed_slowly():
    # A person typing at the keyboard (a key every 200 ms): nothing; then a scanner's code: read.
    person, t = scanner_events("001099012345", key_s=0.2)
    code, t = scanner_events("001099012345|ok", t0=t + 1.0)
    # A code with a gap in the middle (a scanner cut off, then a key by hand): the part before it goes.
    cut, t = scanner_events("HALFCODE", t0=t + 1.0, gaps={4: 0.5})
    decoder = KeyDecoder(char_gap_s=0.06)
    assert decode_all(decoder, person + code + cut) == ["001099012345|ok", "CODE"]
    assert decoder.dropped["slow"] >= 2


def test_gap_terminator_ends_codes_without_a_suffix_key():
    first, t = scanner_events("CODE-ONE", end=None)
    second, t = scanner_events("CODE-TWO", t0=t + 0.5, end=None)
    decoder = KeyDecoder(terminator="gap", char_gap_s=0.06)
    assert decode_all(decoder, first + second) == ["CODE-ONE"]
    assert decoder.idle() == ["CODE-TWO"]  # no key for a while


def test_tab_ends_a_code_and_enter_may_be_part_of_one():
    events, _ = scanner_events("LINE1\nLINE2", end=hid.KEY_TAB)
    assert decode_all(KeyDecoder(terminator="tab"), events) == ["LINE1\nLINE2"]
    assert decode_all(KeyDecoder(terminator="enter_or_tab"), events) == ["LINE1", "LINE2"]


def test_a_code_over_8_kib_is_dropped_and_the_next_is_read():
    long_code, t = scanner_events("A" * (MAX_TEXT_BYTES + 1), key_s=0.0002)
    short, _ = scanner_events("SHORT", t0=t + 0.01)
    decoder = KeyDecoder()
    assert decode_all(decoder, long_code + short) == ["SHORT"]
    assert decoder.dropped["long"] == 1
    exact, _ = scanner_events("B" * MAX_TEXT_BYTES, key_s=0.0002)
    assert decode_all(KeyDecoder(), exact) == ["B" * MAX_TEXT_BYTES]


def test_alt_code_that_is_no_character_drops_the_code():
    events = []
    _key(events, 1.0, hid.KEY_LEFTALT, 1)
    for d in "55296":  # a surrogate: no character
        _key(events, 1.001, _KP[d], 1)
        _key(events, 1.001, _KP[d], 0)
    _key(events, 1.002, hid.KEY_LEFTALT, 0)
    _key(events, 1.003, hid.KEY_ENTER, 1)
    decoder = KeyDecoder()
    assert decode_all(decoder, events) == []
    assert decoder.dropped["bad_alt"] == 1


def test_uk_layout_and_caps_lock():
    events = []
    _key(events, 1.0, hid.KEY_LEFTSHIFT, 1)
    _key(events, 1.001, 3, 1)  # Shift+2: '"' on a UK keyboard, '@' on a US one
    _key(events, 1.002, hid.KEY_LEFTSHIFT, 0)
    _key(events, 1.003, hid.KEY_CAPSLOCK, 1)
    _key(events, 1.004, 30, 1)  # a, with Caps Lock: A
    _key(events, 1.005, hid.KEY_ENTER, 1)
    assert decode_all(KeyDecoder(layout="uk"), events) == ['"A']
    assert decode_all(KeyDecoder(layout="us"), events) == ["@A"]


# --- the source and the daemon ---------------------------------------------------------------------

class RecordedScanner:
    """A keyboard-mode scanner replayed through a pipe: `plug()` makes the next device file the source
    opens, `play(events)` writes their `struct input_event`s (from a writer thread: a pipe holds 64 KiB),
    `unplug()` ends the file once they are written (as ENODEV does)."""

    def __init__(self):
        self.plugged = threading.Event()
        self._r = None
        self._queue = None
        self.opened = 0

    def plug(self):
        import queue

        self._r, w = os.pipe()
        self._queue = queue.Queue()
        threading.Thread(target=self._write, args=(w, self._queue), daemon=True).start()
        self.plugged.set()

    @staticmethod
    def _write(w, q):
        while (data := q.get()) is not None:
            os.write(w, data)
        os.close(w)

    def unplug(self):
        self.plugged.clear()
        self._queue.put(None)

    def play(self, events):
        self._queue.put(b"".join(EVENT.pack(*fields(ev)) for ev in events))

    def opener(self, spec, grab):
        if not self.plugged.is_set() or self._r is None:
            raise HardwareError(f"no keyboard-mode scanner {spec!r}")
        r, self._r = self._r, None
        self.opened += 1
        return _PipeDevice(r)


class _PipeDevice:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def close(self):
        os.close(self.fd)


@pytest.fixture
def issuer(tmp_path):
    key = keys.generate("ed25519")
    _, pub = keys.save_keypair(key, tmp_path / "issuer")
    return key, pub


def scanner_cfg(tmp_path, pub, **scanner):
    return validate({
        "device": {"id": "gate-1-in", "checkpoint": "phuc-tan-gate-1", "direction": "in"},
        "scanner": {"source": "hid", "hid_device": "Symbol Honeywell Scanner", "cooldown_s": 60.0, **scanner},
        "pins": {"factory": "mock"},
        "feedback": {"pass_led_s": 0.05, "fail_led_s": 0.05},
        "policy": {"trusted_issuers": [str(pub)]},
        "outbox": {"path": str(tmp_path / "outbox.db")},
    }, SCHEMA)


def read_until(source, n, reads=200):
    texts = []
    for _ in range(reads):
        got = source.read()
        assert isinstance(got, Scanned)
        texts += got.texts
        if len(texts) >= n:
            return texts
    raise AssertionError(f"only {texts!r} after {reads} reads")


def test_hid_scanner_feeds_the_daemon_and_survives_unplug(tmp_path, issuer, mock_pins):
    key, pub = issuer
    person = make_test_identities(1, seed=3)[0]
    declaration = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=1))
    cfg = scanner_cfg(tmp_path, pub, reconnect_s=0.05)
    device = RecordedScanner()
    device.plug()
    source = HidSource("Symbol Honeywell Scanner", decoder=KeyDecoder(), reconnect_s=0.05, opener=device.opener)
    term = Terminal.from_config(cfg, source=source)
    try:
        # The same declaration twice (a scanner may send a code twice), then an ID card.
        first, t = scanner_events(declaration)
        again, t = scanner_events(declaration, t0=t + 0.3)
        card, t = scanner_events(CCCD, t0=t + 0.3)
        device.play(first + again + card)
        events = []
        while len(events) < 2:
            got = source.read()
            events += term.process_scanned(got)
        assert [(e["source"], e["format"], e["decision"]) for e in events[:1]] == [("scanner", "native", "PASS")]
        assert events[1]["source"] == "scanner" and events[1]["verified"] is False
        assert CCCD not in str(events) and "001099012345" not in str(events)
        assert all(validate_event(e) == [] for e in events)  # `scanner` is a source of the wire
        # Unplugged and plugged in again: the source finds it again, no restart.
        device.unplug()
        assert source.read().texts == []
        device.plug()
        other = make_test_identities(2, seed=3)[1]
        later, _ = scanner_events(issue_declaration(key, other, issued_at=datetime.now(UTC) - timedelta(minutes=1)),
                                  t0=t + 5)
        device.play(later)
        events += term.process_scanned(Scanned(read_until(source, 1)))
        assert source.reconnects == 1 and device.opened == 2
        assert [e["decision"] for e in events[::2]] == ["PASS", "PASS"]
        assert len(term.outbox.pending(0, 100)) == 3
    finally:
        term.close()


def test_daemon_runs_a_text_source_without_a_camera(tmp_path, issuer, mock_pins):
    key, pub = issuer
    person = make_test_identities(1, seed=5)[0]
    declaration = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=1))
    device = RecordedScanner()
    device.plug()
    events, _ = scanner_events(declaration)
    source = HidSource("scanner", reconnect_s=60.0, opener=device.opener)
    device.play(events + events)
    device.unplug()
    term = Terminal.from_config(scanner_cfg(tmp_path, pub), source=source)
    term.on_decision = lambda *_: term.stop()
    try:
        term.run(max_frames=50)
        pending = term.outbox.pending(0, 10)
        assert [(e["source"], e["decision"]) for e in pending] == [("scanner", "PASS")]  # the repeat: cooldown
    finally:
        term.close()


def test_real_input_device_by_name_grabbed(tmp_path):
    """A real evdev device: a uinput virtual keyboard, found by name, grabbed, typed on.

    Where the kernel has no uinput (no /dev/uinput, no module to load: a container's kernel), the same
    stream goes through the recorded pipe device and `open_evdev` is checked to fail clearly.
    """
    import evdev

    text = "001099012345||Trần Văn Bình|02021990|Nam|Hà Nội|01012022"
    events, _ = scanner_events(text)
    if not os.path.exists("/dev/uinput"):
        with pytest.raises(HardwareError, match="no keyboard-mode scanner 'chot test scanner'"):
            hid.open_evdev("chot test scanner")
        device = RecordedScanner()
        device.plug()
        device.play(events)
        source = HidSource("chot test scanner", opener=device.opener)
        try:
            assert read_until(source, 1) == [text]
        finally:
            source.close()
        return
    caps = {evdev.ecodes.EV_KEY: sorted({c for c in range(1, 128)})}
    with evdev.UInput(caps, name="chot test scanner", vendor=0x0C2E, product=0x0B61) as ui:
        source = None
        for _ in range(100):
            try:
                source = HidSource("chot test scanner", reconnect_s=0.05)
                break
            except HardwareError:
                threading.Event().wait(0.05)  # udev makes the node a moment after the device
        assert source is not None
        try:
            assert hid.find_hid("0c2e:0b61") == hid.find_hid("chot test scanner")
            for ev in events:
                if ev.type == EV_KEY:
                    ui.write(EV_KEY, ev.code, ev.value)
                    ui.syn()
            assert read_until(source, 1) == [text]
        finally:
            source.close()


# --- serial -------------------------------------------------------------------------------------------

class PtyScanner:
    """A serial scanner: the master side of a pseudo-terminal, its port reached by a stable symlink."""

    def __init__(self, link):
        self.link = link
        self.master = None
        self.plug()

    def plug(self):
        import tty

        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        if os.path.lexists(self.link):
            os.unlink(self.link)
        os.symlink(name, self.link)
        self.master = master

    def send(self, data):
        os.write(self.master, data)

    def unplug(self):
        os.close(self.master)
        self.master = None


def test_serial_scanner_lines_encodings_and_bounds(tmp_path):
    pty = PtyScanner(tmp_path / "ttyACM-scanner")
    source = SerialSource(str(pty.link), baud=115200, terminator="crlf", encoding="utf-8", reconnect_s=0.05)
    try:
        pty.send(b"HC1:ABC\r\n" + CCCD.encode() + b"\r\n")
        assert read_until(source, 2) == ["HC1:ABC", CCCD]
        # not UTF-8 (the scanner set to cp1258): dropped, named in a warning; a line over 8 KiB: dropped
        pty.send(b"Nguy\xeai\xe1n\r\n" + b"X" * (MAX_TEXT_BYTES + 10) + b"\r\nAFTER\r\n")
        assert read_until(source, 1) == ["AFTER"]
        assert source.lines.dropped == {"long": 1, "encoding": 1}
    finally:
        source.close()
        pty.unplug()


def test_serial_scanner_reconnects_after_unplug(tmp_path, issuer, mock_pins):
    key, pub = issuer
    person = make_test_identities(1, seed=9)[0]
    declaration = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=1))
    pty = PtyScanner(tmp_path / "ttyACM-scanner")
    cfg = scanner_cfg(tmp_path, pub, source="serial", serial_port=str(pty.link), serial_terminator="cr",
                      reconnect_s=0.05)
    term = Terminal.from_config(cfg)
    source = term.source
    try:
        assert isinstance(source, SerialSource)
        pty.send(declaration.encode() + b"\r" + declaration.encode() + b"\r")
        events = term.process_scanned(Scanned(read_until(source, 2)))
        assert [(e["source"], e["decision"]) for e in events] == [("scanner", "PASS")]  # sent twice, kept once
        pty.unplug()
        assert source.read().texts == []  # the port is gone: an idle tick, no error
        pty.plug()  # plugged in again: another pty behind the same by-id style link
        for _ in range(100):  # it sends once the port is open again (pyserial drops what came before)
            if source.read().texts == [] and source.reconnects:
                break
        other = make_test_identities(2, seed=9)[1]
        pty.send(issue_declaration(key, other, issued_at=datetime.now(UTC) - timedelta(minutes=1)).encode() + b"\r")
        events += term.process_scanned(Scanned(read_until(source, 1)))
        assert source.reconnects == 1
        assert [(e["format"], e["decision"]) for e in events] == [("native", "PASS"), ("native", "PASS")]
    finally:
        term.close()
        if pty.master is not None:
            pty.unplug()


def test_line_splitter_terminators():
    assert LineSplitter("cr").feed(b"A\rB\r\rC") == ["A", "B"]
    assert LineSplitter("lf").feed(b"A\nB\n") == ["A", "B"]
    split = LineSplitter("crlf")
    assert split.feed(b"A\r") == [] and split.feed(b"\nB\r\n") == ["A", "B"]


# --- config ------------------------------------------------------------------------------------------

def test_config_checks_the_scanner_keys(tmp_path):
    base = {"device": {"id": "t", "checkpoint": "c", "direction": "in"}}
    with pytest.raises(ConfigError) as err:
        validate({**base, "scanner": {"source": "hid"}}, SCHEMA)
    assert "scanner.hid_device: missing" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate({**base, "scanner": {"source": "serial", "serial_encoding": "klingon"}}, SCHEMA)
    assert "scanner.serial_port: missing" in str(err.value) and "scanner.serial_encoding: found 'klingon'" in str(
        err.value)
    path = tmp_path / "t.toml"
    path.write_text('[device]\nid = "t"\ncheckpoint = "c"\ndirection = "in"\n[outbox]\npath = "%s"\n'
                    '[scanner]\nsource = "serial"\nserial_port = "/dev/serial/by-id/usb-none"\n' % (tmp_path / "o.db"))
    with pytest.raises(ConfigError) as err:
        load_terminal_config(str(path), world=True)
    assert "scanner.serial_port: found '/dev/serial/by-id/usb-none'" in str(err.value)
    assert load_terminal_config(str(path)).scanner.serial_port == "/dev/serial/by-id/usb-none"  # offline: fine


def test_selftest_opens_the_handheld_scanner(tmp_path, issuer):
    from device.selftest import check_camera

    _, pub = issuer
    pty = PtyScanner(tmp_path / "ttyACM-scanner")
    try:
        result = check_camera(scanner_cfg(tmp_path, pub, source="serial", serial_port=str(pty.link)), None)
        assert (result.name, result.status) == ("scanner", "PASS") and "opened" in result.detail
    finally:
        pty.unplug()
    missing = scanner_cfg(tmp_path, pub, source="serial", serial_port=str(tmp_path / "gone"))
    result = check_camera(missing, None)
    assert (result.name, result.status) == ("scanner", "FAIL") and "serial_port" in result.fix
