"""The `[scanner]` settings: frame source, frame size, decoder, cooldown (a part of the terminal config)."""

from dataclasses import dataclass
from typing import Literal

from chot.config import FilePath, Settings, file_problem, setting


@dataclass(frozen=True, kw_only=True)
class ScannerSettings(Settings):
    source: Literal["picamera2", "usb", "files", "synthetic"] = setting("picamera2", help="frame source")
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
    synthetic_seed: int = setting(1, help="random seed of the synthetic crowd (source = 'synthetic')")
    synthetic_issuer_key: FilePath | None = setting(None, help="issuer private key the synthetic crowd signs with")

    def world_problems(self, name):
        out = []
        if self.source == "files" and not self.path:
            out.append(f"{name}.path: missing; allowed: an image file or folder, required when {name}.source = 'files'")
        if self.source == "files" and self.path:
            out.append(file_problem(f"{name}.path", self.path, folder=None))
        if self.source == "synthetic" and self.synthetic_issuer_key:
            out.append(file_problem(f"{name}.synthetic_issuer_key", self.synthetic_issuer_key))
        return [p for p in out if p]
