"""Serial and USB-CDC scanners: one code per line, read with pyserial.

`SerialSource` opens `scanner.serial_port` at `scanner.serial_baud` (a USB-CDC scanner ignores
the rate), splits what arrives at `scanner.serial_terminator` (CR, LF or CRLF, as set on the
scanner) and decodes each line with `scanner.serial_encoding` (UTF-8 by default; a line that is
not valid in it is dropped with a warning naming the setting, never guessed). A line longer than
MAX_TEXT_BYTES is dropped up to its terminator. When the port goes away (the scanner unplugged:
pyserial's SerialException or EIO) the source opens it again every `scanner.reconnect_s` (a
/dev/serial/by-id/ path keeps its name when the kernel gives the port another ttyACM number).
Logs never hold a code's text, only lengths.
"""

import logging
import time

from chot.errors import HardwareError
from device.scanner.texts import IDLE_S, MAX_TEXT_BYTES, Scanned, TextSource

log = logging.getLogger(__name__)

TERMINATORS = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}


def _serial():
    try:
        import serial
    except ImportError as exc:
        raise HardwareError(
            "pyserial is not installed: run `.venv/bin/pip install 'chot[serial]'` for a serial or USB-CDC scanner"
        ) from exc
    return serial


class LineSplitter:
    """Bytes in, decoded lines out: the terminator, the encoding and the length bound of `SerialSource`."""

    def __init__(self, terminator="cr", encoding="utf-8", max_bytes=MAX_TEXT_BYTES):
        if terminator not in TERMINATORS:
            raise HardwareError(f"scanner.serial_terminator {terminator!r}: use cr, lf or crlf")
        self.end = TERMINATORS[terminator]
        self.encoding = encoding
        self.max_bytes = int(max_bytes)
        self.dropped = {"long": 0, "encoding": 0}
        self._buf = b""
        self._overflow = False

    def reset(self):
        """Forget a line half read (the port was lost)."""
        self._buf = b""
        self._overflow = False

    def feed(self, data):
        """The lines completed by `data` (decoded, without terminator, empty lines left out)."""
        out = []
        self._buf += data
        while True:
            i = self._buf.find(self.end)
            if i < 0:
                break
            line, self._buf = self._buf[:i], self._buf[i + len(self.end):]
            if self._overflow or len(line) > self.max_bytes:
                self._overflow = False
                self.dropped["long"] += 1
                log.warning("a scanned code longer than %d bytes was dropped: no code a terminal reads is that long",
                            self.max_bytes)
                continue
            if not line:
                continue
            try:
                out.append(line.decode(self.encoding))
            except UnicodeDecodeError:
                self.dropped["encoding"] += 1
                log.warning("a scanned code of %d bytes is not valid %s and was dropped: set the scanner's output "
                            "encoding, or scanner.serial_encoding, to what it sends", len(line), self.encoding)
        if len(self._buf) > self.max_bytes + len(self.end):  # no terminator in sight: keep no more than the bound
            self._overflow = True
            self._buf = self._buf[-(len(self.end) - 1):] if len(self.end) > 1 else b""
        return out


def open_serial(port, baud):
    """An open pyserial port; HardwareError saying what to check when it cannot be opened."""
    serial = _serial()
    try:
        return serial.Serial(port, baudrate=int(baud), timeout=0.1, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise HardwareError(f"cannot open the serial scanner at {port} ({exc}): plug it in, check "
                            "`ls -l /dev/serial/by-id/`, the `dialout` group and scanner.serial_port") from exc


class SerialSource(TextSource):
    """A serial or USB-CDC scanner as a text source; see the module doc."""

    def __init__(self, port, baud=9600, terminator="cr", encoding="utf-8", reconnect_s=1.0, opener=None):
        self.port = port
        self.baud = baud
        self.lines = LineSplitter(terminator, encoding)
        self.reconnect_s = float(reconnect_s)
        self.opener = opener or open_serial
        self.reconnects = 0
        self.ser = None
        self._lost = False
        self._closed = False
        self._next_try = 0.0
        self.ser = self.opener(port, baud)
        log.info("serial scanner opened at %s, %d baud", port, int(baud))

    @classmethod
    def from_config(cls, scanner_cfg):
        from device.scanner.frames import cfg_get

        return cls(cfg_get(scanner_cfg, "serial_port"), baud=cfg_get(scanner_cfg, "serial_baud"),
                   terminator=cfg_get(scanner_cfg, "serial_terminator"),
                   encoding=cfg_get(scanner_cfg, "serial_encoding"), reconnect_s=cfg_get(scanner_cfg, "reconnect_s"))

    def _gone(self, why):
        log.error("serial scanner at %s lost (%s): opening it again every %.1f s", self.port, why, self.reconnect_s)
        ser, self.ser = self.ser, None
        try:
            ser.close()
        except Exception:  # the port is gone already; nothing left to release
            pass
        self.lines.reset()
        self._lost = True
        self._next_try = time.monotonic() + self.reconnect_s

    def _reopen(self):
        try:
            self.ser = self.opener(self.port, self.baud)
        except HardwareError as exc:
            log.debug("serial scanner still absent: %s", exc)
            self._next_try = time.monotonic() + self.reconnect_s
            return
        if self._lost:
            self._lost = False
            self.reconnects += 1
            log.warning("serial scanner at %s is back", self.port)

    def read(self):
        serial = _serial()
        deadline = time.monotonic() + IDLE_S
        while not self._closed:
            now = time.monotonic()
            if self.ser is None:
                if now >= self._next_try:
                    self._reopen()
                if self.ser is None:
                    if now >= deadline:
                        return Scanned([])
                    time.sleep(min(max(self._next_try - now, 0.01), deadline - now, 0.1))
                    continue
            try:
                data = self.ser.read(max(1, self.ser.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError/AttributeError: pyserial's port object after its file went away
                self._gone(exc)
                continue
            if data:
                texts = self.lines.feed(data)
                if texts:
                    return Scanned(texts)
            elif time.monotonic() >= deadline:
                return Scanned([])
        return None

    def close(self):
        self._closed = True
        ser, self.ser = self.ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception as exc:  # closing a port that is gone
                log.debug("closing the serial port: %s", exc)
