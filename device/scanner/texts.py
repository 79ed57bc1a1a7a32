"""Text sources: handheld scanners that send a code's text, not frames.

A text source's `read()` returns a `Scanned` (the texts read since the last call, possibly none:
an idle tick, so the daemon's loop can stop and ping the watchdog) or None once it is closed. The
daemon hands each text to the same path a decoded frame's texts take (`Terminal.process_text`:
chunk assembly, cooldown, verification, policy, outbox, feedback); nothing here knows credentials.

Two kinds (docs/terminal.md, "Handheld scanners"):

- `HidSource` (device/scanner/hid.py): a USB scanner in keyboard mode, read with evdev, grabbed
  exclusively, its key events turned back into text.
- `SerialSource` (device/scanner/serialport.py): a serial or USB-CDC scanner, read with pyserial,
  one code per line.

Both find their scanner again after it was unplugged (every `scanner.reconnect_s`) and bound a
code to MAX_TEXT_BYTES: a longer one is dropped with a warning, up to its end.
"""

import time
from dataclasses import dataclass, field

MAX_TEXT_BYTES = 8192  # a code longer than this (in UTF-8) is dropped: no QR code a terminal reads is longer
IDLE_S = 0.5  # a text source returns an empty Scanned at least this often


@dataclass
class Scanned:
    """The texts a text source read, the monotonic time it returned them and the event's `source`."""

    texts: list = field(default_factory=list)
    t: float = field(default_factory=time.monotonic)
    source: str = "scanner"


class TextSource:
    """Base class of text sources: `read() -> Scanned | None` (None: closed), `close()`."""

    def read(self):
        raise NotImplementedError

    def close(self):
        """Release the scanner. Calling it twice is harmless."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
