"""USB HID scanners in keyboard mode: their key events, read with evdev, back into the code's text.

A keyboard-mode scanner types each code as key presses and ends it with a suffix key (Enter or
Tab, as set on the scanner). `HidSource` opens it (`scanner.hid_device`: a /dev/input path, its
name or USB vendor:product), grabs it exclusively (`scanner.hid_grab`: its keys reach no console,
login prompt or other program), reads the kernel's `struct input_event`s from its file and hands
them to a `KeyDecoder`, which keeps no more than one code:

- key maps: the layout the scanner types (`scanner.hid_layout`, us or uk), Shift, Caps Lock,
  the keypad; Ctrl and other keys are ignored;
- Vietnamese (any non-ASCII) text as a scanner sends it: Alt held while keypad digits are typed,
  then released (Windows "Alt codes"). Alt+nnnn from 256 up is the Unicode code point nnnn (the
  scanners' "Unicode Alt mode"); below 256 (Alt+0nnn or Alt+nnn) it is a byte of
  `scanner.hid_alt_codepage`: latin-1 by default, where the number is the code point too, or the
  code page set on the scanner (cp1258, Vietnamese Windows). A code that used them is put in
  Unicode NFC (cp1258 sends some letters as a base letter and a combining tone mark);
- timing: a scanner types a whole code in tens of milliseconds, a person far slower. A gap of
  more than `scanner.hid_char_gap_ms` between two key events drops what was typed so far (a
  person at the keyboard, a half-sent code); with `hid_terminator = "gap"` it ends the code
  instead (a scanner set to send no suffix; at least GAP_MIN_CHARS characters);
- a code longer than MAX_TEXT_BYTES is dropped up to its end, with a warning.

The time of each key is the kernel's time stamp of the event, so a recorded stream decodes the
same however fast it is replayed. Logs never hold a code's text (it names a person), only lengths.
When the scanner is unplugged (ENODEV, or the end of the file) the source looks for it again every
`scanner.reconnect_s` and goes on when it is back: no restart.
"""

import errno
import logging
import os
import re
import select
import struct
import time
import unicodedata

from chot.errors import HardwareError
from device.scanner.texts import IDLE_S, MAX_TEXT_BYTES, Scanned, TextSource

log = logging.getLogger(__name__)

EVENT = struct.Struct("llHHi")  # struct input_event: timeval (sec, usec), type, code, value
EV_KEY = 1
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2
GAP_MIN_CHARS = 4  # with hid_terminator = "gap", a shorter burst is not a code (a key pressed by hand)

# Linux key codes (include/uapi/linux/input-event-codes.h): a stable kernel ABI.
KEY_ESC, KEY_BACKSPACE, KEY_TAB, KEY_ENTER, KEY_KPENTER = 1, 14, 15, 28, 96
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_LEFTALT, KEY_RIGHTALT, KEY_CAPSLOCK = 42, 54, 56, 100, 58
KEY_LEFTCTRL, KEY_RIGHTCTRL, KEY_LEFTMETA, KEY_RIGHTMETA = 29, 97, 125, 126
KEYPAD_DIGITS = {82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9"}
KEYPAD_OTHER = {55: "*", 74: "-", 78: "+", 83: ".", 98: "/"}

# code -> (unshifted, shifted) of the US layout
_US = {
    2: ("1", "!"), 3: ("2", "@"), 4: ("3", "#"), 5: ("4", "$"), 6: ("5", "%"), 7: ("6", "^"), 8: ("7", "&"),
    9: ("8", "*"), 10: ("9", "("), 11: ("0", ")"), 12: ("-", "_"), 13: ("=", "+"),
    26: ("[", "{"), 27: ("]", "}"), 39: (";", ":"), 40: ("'", '"'), 41: ("`", "~"), 43: ("\\", "|"),
    51: (",", "<"), 52: (".", ">"), 53: ("/", "?"), 57: (" ", " "), 86: ("\\", "|"),
}
for _code, _row in ((16, "qwertyuiop"), (30, "asdfghjkl"), (44, "zxcvbnm")):
    for _i, _c in enumerate(_row):
        _US[_code + _i] = (_c, _c.upper())
# The UK layout differs from the US one in these keys.
_UK = dict(_US)
_UK.update({3: ("2", '"'), 4: ("3", "£"), 40: ("'", "@"), 41: ("`", "¬"), 43: ("#", "~"), 86: ("\\", "|")})
LAYOUTS = {"us": _US, "uk": _UK}
LETTERS = frozenset(code for code, (low, _) in _US.items() if low.isalpha())

TERMINATORS = {
    "enter": {KEY_ENTER, KEY_KPENTER},
    "tab": {KEY_TAB},
    "enter_or_tab": {KEY_ENTER, KEY_KPENTER, KEY_TAB},
    "gap": set(),
}


class KeyDecoder:
    """Turns a keyboard-mode scanner's key events back into codes; see the module doc.

    `feed(sec, usec, type, code, value)` takes one input event and returns the codes it ended
    (a list, mostly empty); `idle()` says no event came for a while (ends or drops a code).
    """

    def __init__(self, layout="us", terminator="enter_or_tab", char_gap_s=0.06, alt_codepage="latin-1",
                 max_bytes=MAX_TEXT_BYTES):
        if layout not in LAYOUTS:
            raise HardwareError(f"scanner.hid_layout {layout!r}: use one of {', '.join(LAYOUTS)}")
        self.keys = LAYOUTS[layout]
        self.terminator = terminator
        self.ends = TERMINATORS[terminator]
        self.gap_s = float(char_gap_s)
        self.alt_codepage = alt_codepage
        self.max_bytes = int(max_bytes)
        self.shift = set()
        self.alt = set()
        self.ctrl = set()
        self.caps = False
        self.dropped = {"slow": 0, "long": 0, "bad_alt": 0}  # counts of codes dropped, by why
        self._reset()
        self._last_t = None

    def _reset(self):
        self._chars = []
        self._bytes = 0
        self._alt_digits = ""
        self._used_alt = False
        self._overflow = False
        self._bad = False

    def _pending(self):
        return bool(self._chars or self._alt_digits or self._overflow or self._bad)

    def _type(self, ch):
        if self._overflow:
            return
        n = len(ch.encode("utf-8", "surrogatepass"))
        if self._bytes + n > self.max_bytes:
            self._overflow = True
            self._chars, self._bytes = [], 0
            return
        self._chars.append(ch)
        self._bytes += n

    def _end(self):
        """The code typed so far (or nothing when it is to be dropped); starts the next."""
        out = []
        if self._overflow:
            self.dropped["long"] += 1
            log.warning("a scanned code longer than %d bytes was dropped: no code a terminal reads is that long",
                        self.max_bytes)
        elif self._bad:
            self.dropped["bad_alt"] += 1
            log.warning("a scanned code with an Alt+keypad code that is no character was dropped: check the "
                        "scanner's Alt mode and scanner.hid_alt_codepage")
        elif self._chars:
            text = "".join(self._chars)
            if self._used_alt:
                text = unicodedata.normalize("NFC", text)
            if self.terminator == "gap":
                text = text.rstrip("\r\n")
                if len(text) < GAP_MIN_CHARS:
                    text = ""
            if text:
                out.append(text)
        self._reset()
        return out

    def _drop_slow(self):
        if self._chars or self._alt_digits:
            self.dropped["slow"] += 1
            log.info("dropped %d characters typed with gaps over scanner.hid_char_gap_ms (a person at the "
                     "keyboard, or a code cut off)", len(self._chars))
        self._reset()

    def _alt_char(self):
        digits, self._alt_digits = self._alt_digits, ""
        n = int(digits)
        try:
            if n >= 256:
                if n > 0x10FFFF or 0xD800 <= n <= 0xDFFF:
                    raise ValueError(n)
                ch = chr(n)
            elif n == 0:
                raise ValueError(n)
            else:
                ch = bytes([n]).decode(self.alt_codepage)
        except (ValueError, UnicodeDecodeError):
            self._bad = True
            return
        self._used_alt = True
        self._type(ch)

    def lost(self):
        """The scanner went away: drop a code half typed and forget the keys held."""
        if self._pending():
            self._drop_slow()
        self.shift.clear()
        self.alt.clear()
        self.ctrl.clear()
        self._last_t = None

    def idle(self):
        """No key for a while: with terminator `gap` the code typed ends, else it is dropped."""
        if self.terminator == "gap" and not self._alt_digits:
            return self._end()
        if self._pending():
            self._drop_slow()
        return []

    def feed(self, sec, usec, type_, code, value):
        """One input event; returns the codes it ended."""
        if type_ != EV_KEY or value == KEY_REPEAT:
            return []
        out = []
        t = sec + usec / 1e6
        if self._last_t is not None and t - self._last_t > self.gap_s and self._pending():
            out += self.idle()
        self._last_t = t
        down = value == KEY_DOWN
        for keys, codes in ((self.shift, (KEY_LEFTSHIFT, KEY_RIGHTSHIFT)), (self.ctrl, (KEY_LEFTCTRL, KEY_RIGHTCTRL)),
                            (self.ctrl, (KEY_LEFTMETA, KEY_RIGHTMETA))):
            if code in codes:
                (keys.add if down else keys.discard)(code)
                return out
        if code in (KEY_LEFTALT, KEY_RIGHTALT):
            if down:
                self.alt.add(code)
                self._alt_digits = ""
            else:
                self.alt.discard(code)
                if not self.alt and self._alt_digits:
                    self._alt_char()
            return out
        if not down:
            return out
        if code == KEY_CAPSLOCK:
            self.caps = not self.caps
            return out
        if self.ctrl:
            return out
        if self.alt:
            if code in KEYPAD_DIGITS:
                self._alt_digits += KEYPAD_DIGITS[code]
            return out
        if code in self.ends:
            return out + self._end()
        if code in (KEY_ENTER, KEY_KPENTER):
            self._type("\n")
        elif code == KEY_TAB:
            self._type("\t")
        elif code in KEYPAD_DIGITS:
            self._type(KEYPAD_DIGITS[code])
        elif code in KEYPAD_OTHER:
            self._type(KEYPAD_OTHER[code])
        elif code in self.keys:
            shifted = bool(self.shift) != (self.caps and code in LETTERS)
            self._type(self.keys[code][shifted])
        return out


# --- the device ---------------------------------------------------------------------------------

VIDPID = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})")


def _evdev():
    try:
        import evdev
    except ImportError as exc:
        raise HardwareError(
            "evdev is not installed: run `.venv/bin/pip install 'chot[hid]'` (or `apt install python3-evdev` and "
            "make the venv with --system-site-packages) for a keyboard-mode scanner"
        ) from exc
    return evdev


def _types_text(dev, evdev):
    keys = dev.capabilities().get(evdev.ecodes.EV_KEY, [])
    return evdev.ecodes.KEY_1 in keys and evdev.ecodes.KEY_ENTER in keys


def find_hid(spec):
    """The /dev/input path of the scanner `spec` (a path, vendor:product, or a name); None when absent."""
    if spec.startswith("/"):
        return os.path.realpath(spec) if os.path.exists(spec) else None
    evdev = _evdev()
    m = VIDPID.fullmatch(spec)
    named, partly = [], []
    for path in evdev.list_devices():
        try:
            dev = evdev.InputDevice(path)
        except OSError:
            continue
        try:
            if m:
                if (dev.info.vendor, dev.info.product) == (int(m[1], 16), int(m[2], 16)) and _types_text(dev, evdev):
                    named.append(path)
            elif dev.name == spec:
                named.append(path)
            elif spec.lower() in dev.name.lower() and _types_text(dev, evdev):
                partly.append(path)
        finally:
            dev.close()
    found = sorted(named) or sorted(partly)
    return found[0] if found else None


def open_evdev(spec, grab=True):
    """Open and (with `grab`) exclusively grab the scanner `spec`: an evdev.InputDevice.

    Raises HardwareError saying what to check when it is absent or cannot be opened or grabbed.
    """
    evdev = _evdev()
    path = find_hid(spec)
    if path is None:
        raise HardwareError(f"no keyboard-mode scanner {spec!r}: plug it in, check `ls -l /dev/input/by-id/` or "
                            "`evtest`, and set scanner.hid_device")
    try:
        dev = evdev.InputDevice(path)
    except OSError as exc:
        raise HardwareError(f"cannot open the scanner {path} ({exc.strerror}): the service user needs the `input` "
                            "group (or a udev rule)") from exc
    if grab:
        try:
            dev.grab()
        except OSError as exc:
            dev.close()
            raise HardwareError(f"cannot grab the scanner {path} exclusively ({exc.strerror}): another program "
                                "holds it; stop it or set scanner.hid_grab = false") from exc
    log.info("keyboard-mode scanner %r opened at %s%s", dev.name, path, " (grabbed)" if grab else "")
    return dev


class HidSource(TextSource):
    """A keyboard-mode scanner as a text source; see the module doc.

    `opener(spec, grab)` returns an open device (an object with fileno() and close()); by
    default `open_evdev`. Events are read from its file as the kernel writes them.
    """

    def __init__(self, spec, decoder=None, grab=True, reconnect_s=1.0, opener=None):
        self.spec = spec
        self.grab = grab
        self.decoder = decoder or KeyDecoder()
        self.reconnect_s = float(reconnect_s)
        self.opener = opener or open_evdev
        self.dev = None
        self.reconnects = 0  # how often the scanner came back after being lost
        self._buf = b""
        self._closed = False
        self._next_try = 0.0
        self._lost = False
        self._last_data = 0.0
        self._open(first=True)

    @classmethod
    def from_config(cls, scanner_cfg):
        from device.scanner.frames import cfg_get

        decoder = KeyDecoder(
            layout=cfg_get(scanner_cfg, "hid_layout"), terminator=cfg_get(scanner_cfg, "hid_terminator"),
            char_gap_s=cfg_get(scanner_cfg, "hid_char_gap_ms") / 1000.0,
            alt_codepage=cfg_get(scanner_cfg, "hid_alt_codepage"),
        )
        return cls(cfg_get(scanner_cfg, "hid_device"), decoder=decoder, grab=cfg_get(scanner_cfg, "hid_grab"),
                   reconnect_s=cfg_get(scanner_cfg, "reconnect_s"))

    def _open(self, first=False):
        try:
            self.dev = self.opener(self.spec, self.grab)
        except HardwareError as exc:
            if first:
                raise
            self._next_try = time.monotonic() + self.reconnect_s
            log.debug("scanner still absent: %s", exc)
            return
        self._buf = b""
        if self._lost:
            self._lost = False
            self.reconnects += 1
            log.warning("keyboard-mode scanner %r is back", self.spec)

    def _gone(self, why):
        log.error("keyboard-mode scanner %r lost (%s): looking for it every %.1f s", self.spec, why, self.reconnect_s)
        self._release()
        self._lost = True
        self.decoder.lost()
        self._next_try = time.monotonic() + self.reconnect_s

    def _release(self):
        dev, self.dev = self.dev, None
        if dev is not None:
            try:
                dev.close()
            except OSError:
                pass

    def read(self):
        deadline = time.monotonic() + IDLE_S
        while not self._closed:
            now = time.monotonic()
            if self.dev is None:
                if now >= self._next_try:
                    self._open()
                if self.dev is None:
                    if now >= deadline:
                        return Scanned([])
                    time.sleep(min(max(self._next_try - now, 0.01), deadline - now, 0.1))
                    continue
            wait = min(self.decoder.gap_s, max(deadline - now, 0.0))
            try:
                ready, _, _ = select.select([self.dev.fileno()], [], [], wait)
            except (OSError, ValueError) as exc:  # the file closed under us
                self._gone(exc)
                continue
            if not ready:
                texts = []
                if time.monotonic() - self._last_data >= self.decoder.gap_s:  # quiet for a whole gap
                    texts = self.decoder.idle()
                if texts or time.monotonic() >= deadline:
                    return Scanned(texts)
                continue
            try:
                data = os.read(self.dev.fileno(), EVENT.size * 64)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.EIO, errno.EBADF, errno.ENXIO):
                    self._gone(exc.strerror)
                    continue
                raise HardwareError(f"reading the scanner {self.spec!r} failed: {exc}") from exc
            if not data:
                self._gone("end of file")
                continue
            self._last_data = time.monotonic()
            texts = self._feed(data)
            if texts:
                return Scanned(texts)
        return None

    def _feed(self, data):
        buf = self._buf + data
        whole = len(buf) - len(buf) % EVENT.size
        self._buf = buf[whole:]
        texts = []
        for sec, usec, type_, code, value in EVENT.iter_unpack(buf[:whole]):
            texts += self.decoder.feed(sec, usec, type_, code, value)
        return texts

    def close(self):
        self._closed = True
        dev, self.dev = self.dev, None
        if dev is not None:
            try:
                if self.grab and hasattr(dev, "ungrab"):
                    dev.ungrab()
            except OSError:
                pass
            try:
                dev.close()
            except OSError:
                pass
