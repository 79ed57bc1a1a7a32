"""The `[scanner]` settings: frame or text source, frame size, decoder, cooldown (a part of the terminal config).

A camera (picamera2, usb), image files or a synthetic crowd give frames that are QR-decoded; a
handheld scanner (`hid`: a USB keyboard-mode scanner, `serial`: a serial or USB-CDC scanner)
gives the code's text, which takes the same path from the chunk assembly on.
"""

from dataclasses import dataclass
from typing import Literal

from chot.config import FilePath, Settings, file_problem, setting


@dataclass(frozen=True, kw_only=True)
class ScannerSettings(Settings):
    source: Literal["picamera2", "usb", "files", "synthetic", "hid", "serial"] = setting(
        "picamera2", help="frame source (a camera, files, synthetic) or handheld scanner (hid, serial)"
    )
    path: FilePath | None = setting(None, help="an image file or folder (source = 'files')")
    loop: bool = setting(False, help="loop over the files forever (source = 'files')")
    usb_device: int = setting(0, min=0, max=63, help="V4L2 camera index (source = 'usb')")
    width: int = setting(640, min=64, max=4096, help="width of the grey frame that is decoded")
    height: int = setting(480, min=64, max=4096, help="height of the grey frame that is decoded")
    fps: float = setting(15.0, min=0.1, max=120.0, help="frames per second asked of the camera")
    decoder: Literal["zxing", "pyzbar"] = setting("zxing", help="QR decoder")
    second_pass: bool = setting(
        True, help="rescue steps: on a QR symbol seen but not read, and cheap ones in turn on empty frames"
    )
    second_pass_budget_ms: float = setting(
        8.0, min=0.0, max=1000.0, help="time bound of the rescue steps on one frame (the rest wait for the next frames)"
    )
    cooldown_s: float = setting(
        5.0, min=0.0, max=3600.0,
        help="the same code or person again within this many seconds is ignored (kept in memory only)",
    )
    chunk_timeout_s: float = setting(
        30.0, min=1.0, max=600.0, help="how long parts of a multi-QR code wait for the rest"
    )
    synthetic_seed: int = setting(
        1, help="random seed of the synthetic crowd (source = 'synthetic': the demo's, `chot demo-terminal`)"
    )
    hid_device: str | None = setting(
        None, help="the keyboard-mode scanner (source = 'hid'): a /dev/input path (best /dev/input/by-id/...), "
        "its name as `evtest` shows it, or its USB vendor:product in hex (e.g. '0c2e:0b61')"
    )
    hid_grab: bool = setting(True, help="grab the scanner exclusively: its keys reach no console or other program")
    hid_layout: Literal["us", "uk"] = setting("us", help="the keyboard layout the scanner is set to type")
    hid_terminator: Literal["enter", "tab", "enter_or_tab", "gap"] = setting(
        "enter_or_tab", help="what ends a code: the suffix key the scanner sends, or 'gap' (a quiet hid_char_gap_ms)"
    )
    hid_char_gap_ms: float = setting(
        60.0, min=5.0, max=5000.0,
        help="most time between two keys of one code; slower typing (a person) is discarded",
    )
    hid_alt_codepage: str = setting(
        "latin-1", help="code page of Alt+keypad codes below 256: 'latin-1' (the number is the Unicode code point, "
        "as scanners' Unicode Alt mode sends it) or the one set on the scanner, e.g. 'cp1258'; 256 and up: Unicode"
    )
    serial_port: str | None = setting(
        None, help="the serial or USB-CDC scanner's port (source = 'serial'), e.g. /dev/serial/by-id/..."
    )
    serial_baud: int = setting(9600, min=300, max=4_000_000, help="the serial scanner's baud rate")
    serial_terminator: Literal["cr", "lf", "crlf"] = setting("cr", help="the suffix ending each code on the line")
    serial_encoding: str = setting("utf-8", help="the text encoding of the serial scanner's codes")
    reconnect_s: float = setting(
        1.0, min=0.05, max=60.0, help="a handheld scanner unplugged is looked for again this often"
    )

    def problems(self, name):
        import codecs

        out = []
        for key in ("hid_alt_codepage", "serial_encoding"):
            try:
                codecs.lookup(getattr(self, key))
            except LookupError:
                out.append(f"{name}.{key}: found {getattr(self, key)!r}; allowed: a Python codec name such as "
                           "'utf-8', 'cp1258' (Vietnamese Windows) or 'cp437'")
        if self.source == "hid" and not self.hid_device:
            out.append(f"{name}.hid_device: missing; allowed: a /dev/input path, a device name or vendor:product, "
                       f"required when {name}.source = 'hid'")
        if self.source == "serial" and not self.serial_port:
            out.append(f"{name}.serial_port: missing; allowed: a serial port path such as /dev/ttyACM0, "
                       f"required when {name}.source = 'serial'")
        return out

    def world_problems(self, name):
        out = []
        if self.source == "files" and not self.path:
            out.append(f"{name}.path: missing; allowed: an image file or folder, required when {name}.source = 'files'")
        if self.source == "files" and self.path:
            out.append(file_problem(f"{name}.path", self.path, folder=None))
        if self.source == "hid" and self.hid_device and self.hid_device.startswith("/"):
            out.append(file_problem(f"{name}.hid_device", self.hid_device))
        if self.source == "serial" and self.serial_port:
            out.append(file_problem(f"{name}.serial_port", self.serial_port))
        return [p for p in out if p]
