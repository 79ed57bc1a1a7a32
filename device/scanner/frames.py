"""Frame sources behind one interface: picamera2, a USB camera, image files (and plug-ins).

A `FrameSource` hands out grey frames (`Frame`: numpy uint8 H x W, the monotonic time of
capture, a name) through `read()`, which returns None once the source is exhausted (the end
of a folder, the end of a synthetic crowd; a camera never ends). Sources hold a camera or
files, so they are closed with `close()` or used as context managers.

`open_source(scanner_cfg)` picks the source from the [scanner] section of the terminal config
(device/config.py): `source` = "picamera2" | "usb" | "files" | "synthetic", or a handheld
scanner that gives text, not frames: "hid" | "serial" (device/scanner/texts.py; its `read()`
returns a `Scanned`, which the daemon takes after the decode step). The synthetic crowd
is not part of the terminal: it is a plug-in that the demo and the tests register
(`register_source("synthetic", factory)`, see chotdemo/crowd.py); a terminal run without it
says so. `Frame` and `FrameSource` live in device/scanner/source.py (re-exported here).

`load_image(path, width, height)` is the one image loader of the terminal (EXIF orientation,
transparency on white, grey, scaled down to the frame size): the files source and `chot scan`
(device/pipeline.py) both use it.

Camera libraries are imported only when that source is chosen: picamera2 exists only on
Raspberry Pi OS, OpenCV is an optional extra (`pip install chot[usb]`).
File and simulated sources run as fast as they are read; wrap them in `Paced` to get a
camera-like frame rate (the demo does).
"""

import logging
import time
from pathlib import Path

import numpy as np

from chot.errors import HardwareError
from device.scanner.source import Frame, FrameSource

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

PICAMERA2_MISSING = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
    "and make the venv with --system-site-packages"
)
CAMERA_NOT_FOUND = "Camera not found: is the ribbon cable seated? run `rpicam-hello --list-cameras`"


def cfg_get(cfg, key):
    """`key` of a [scanner] section given as a config namespace or a dict; the schema default when absent."""
    if isinstance(cfg, dict):
        if key in cfg:
            return cfg[key]
    elif cfg is not None and hasattr(cfg, key):
        return getattr(cfg, key)
    from chot.config import rules
    from device.scanner.settings import ScannerSettings

    return rules(ScannerSettings)[key].default


def fit_within(gray, width=None, height=None):
    """`gray` scaled down (never up), keeping its aspect ratio, to fit width x height."""
    if not width and not height:
        return gray
    h, w = gray.shape
    scale = min((width or w) / w, (height or h) / h)
    if scale >= 1.0:
        return gray
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.BILINEAR))


def load_gray(path):
    """An image file (PNG, JPEG, WebP, ...) as a grey numpy uint8 array; HardwareError if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # a transparent background is white on paper and on screens
                rgba = img.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, rgba)
            return np.array(img.convert("L"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise HardwareError(f"cannot read image {path}: {exc}; check that it is a PNG, JPEG or WebP file") from exc


def load_image(path, width=None, height=None):
    """The frame a terminal decodes from an image file: `load_gray` (EXIF orientation applied, alpha
    on white), scaled down to fit width x height as a camera frame of that size. HardwareError if unreadable."""
    return fit_within(load_gray(path), width, height)


class FileSource(FrameSource):
    """An image file or a folder of PNG/JPEG/WebP images (sorted by name), once or looping.

    Each image is converted to grey and, if `width`/`height` are given, scaled down to fit
    them. An unreadable image in a folder is skipped with a warning.
    """

    def __init__(self, path, loop=False, width=None, height=None):
        self.path = Path(path)
        self.loop = bool(loop)
        self.width = width
        self.height = height
        if self.path.is_dir():
            self.files = sorted(
                (p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: p.name,
            )
            if not self.files:
                raise HardwareError(f"no images in {self.path}: put PNG, JPEG or WebP files there or fix scanner.path")
        elif self.path.is_file():
            self.files = [self.path]
        else:
            raise HardwareError(f"image file or folder {self.path} not found: fix scanner.path")
        self._i = 0
        self._read_in_pass = 0
        self._closed = False

    def read(self):
        while not self._closed:
            if self._i >= len(self.files):
                if not self.loop or self._read_in_pass == 0:
                    return None
                self._i = 0
                self._read_in_pass = 0
            p = self.files[self._i]
            self._i += 1
            try:
                gray = load_image(p, self.width, self.height)
            except HardwareError as exc:
                log.warning("skipped: %s", exc)
                continue
            self._read_in_pass += 1
            return Frame(gray, time.monotonic(), p.name)
        return None

    def close(self):
        self._closed = True


class Paced(FrameSource):
    """Another source delivered at most `fps` frames per second, like a camera."""

    def __init__(self, source, fps):
        self.source = source
        self.period = 1.0 / float(fps)
        self._next = None

    def read(self):
        now = time.monotonic()
        if self._next is not None and now < self._next:
            time.sleep(self._next - now)
        self._next = max(now, self._next or now) + self.period
        frame = self.source.read()
        if frame is not None:
            frame.t = time.monotonic()
        return frame

    def close(self):
        self.source.close()


class PiCameraSource(FrameSource):
    """A Raspberry Pi camera through picamera2: the Y plane of a small YUV420 "lores" stream."""

    def __init__(self, width=640, height=480, fps=15.0):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise HardwareError(PICAMERA2_MISSING) from exc
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        # the ISP wants even sizes; lores must not exceed the main stream
        lw, lh = self.width & ~1, self.height & ~1
        try:
            if not Picamera2.global_camera_info():
                raise HardwareError(CAMERA_NOT_FOUND)
            self._cam = Picamera2()
        except HardwareError:
            raise
        except (IndexError, RuntimeError) as exc:
            if "busy" in str(exc).lower():
                raise HardwareError(
                    "the camera is busy: stop the other program using it (rpicam-*, another chot) and retry"
                ) from exc
            raise HardwareError(f"{CAMERA_NOT_FOUND} ({exc})") from exc
        try:
            config = self._cam.create_video_configuration(
                main={"size": (lw * 2, lh * 2), "format": "YUV420"},
                lores={"size": (lw, lh), "format": "YUV420"},
                controls={"FrameRate": self.fps},
                buffer_count=4,
            )
            self._cam.configure(config)
            if "AfMode" in self._cam.camera_controls:
                self._cam.set_controls({"AfMode": 2})  # continuous autofocus (Camera Module 3)
            self._cam.start()
        except Exception as exc:
            self._cam.close()
            raise HardwareError(
                f"the camera could not be started at {lw}x{lh}, {self.fps} fps ({exc}): "
                "try another scanner.width/height/fps and check `rpicam-hello --list-cameras`"
            ) from exc
        self._lw, self._lh = lw, lh
        log.info("picamera2 started: lores %dx%d at %.1f fps", lw, lh, self.fps)

    def read(self):
        if self._cam is None:
            return None
        try:
            yuv = self._cam.capture_array("lores")
        except Exception as exc:
            raise HardwareError(f"the camera stopped delivering frames ({exc}): check the cable and restart") from exc
        t = time.monotonic()
        gray = np.ascontiguousarray(yuv[: self._lh, : self._lw])
        return Frame(gray, t, None)

    def close(self):
        cam, self._cam = getattr(self, "_cam", None), None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


class UsbSource(FrameSource):
    """A USB (UVC) camera through OpenCV's V4L2 backend, as grey frames."""

    MAX_FAILURES = 30  # consecutive failed reads before the camera counts as gone

    def __init__(self, index=0, width=640, height=480, fps=15.0):
        try:
            import cv2
        except ImportError as exc:
            raise HardwareError(
                "OpenCV is not installed: run `.venv/bin/pip install 'chot[usb]'` "
                "(opencv-python-headless) for a USB camera"
            ) from exc
        self._cv2 = cv2
        self.index, self.width, self.height = int(index), int(width), int(height)
        cap = cv2.VideoCapture(self.index, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise HardwareError(
                f"no USB camera at /dev/video{self.index}: plug it in, check `v4l2-ctl --list-devices` "
                "and set scanner.usb_device"
            )
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, float(fps))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue
        self._cap = cap
        self._failures = 0
        log.info("USB camera /dev/video%d opened", self.index)

    def read(self):
        if self._cap is None:
            return None
        cv2 = self._cv2
        while True:
            ok, img = self._cap.read()
            if ok and img is not None:
                break
            self._failures += 1
            if self._failures >= self.MAX_FAILURES:
                raise HardwareError(
                    f"the USB camera /dev/video{self.index} stopped delivering frames: check the cable and restart"
                )
            time.sleep(0.01)
        self._failures = 0
        t = time.monotonic()
        gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if gray.shape[1] > self.width or gray.shape[0] > self.height:
            gray = fit_within(gray, self.width, self.height)
        return Frame(np.ascontiguousarray(gray), t, None)

    def close(self):
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()


# Frame sources that are not part of the terminal, registered by whoever provides them (the demo
# and the tests register "synthetic"): name -> callable(scanner_cfg) -> FrameSource.
PLUGINS = {}
PLUGIN_MISSING = {
    "synthetic": "scanner.source 'synthetic' is the demo's simulated crowd, not a camera: run it with "
                 "`chot demo-terminal --config FILE --issuer-key KEY` (or `chot demo`), or use picamera2, usb or files",
}


def register_source(name, factory):
    """Make `scanner.source = name` open `factory(scanner_cfg)` (a FrameSource); None removes it."""
    if factory is None:
        PLUGINS.pop(name, None)
    else:
        PLUGINS[name] = factory


def open_source(scanner_cfg):
    """The frame source the [scanner] config section asks for (a registered plug-in for other names)."""
    source = cfg_get(scanner_cfg, "source")
    width, height = cfg_get(scanner_cfg, "width"), cfg_get(scanner_cfg, "height")
    if source == "picamera2":
        return PiCameraSource(width, height, cfg_get(scanner_cfg, "fps"))
    if source == "usb":
        return UsbSource(cfg_get(scanner_cfg, "usb_device"), width, height, cfg_get(scanner_cfg, "fps"))
    if source == "files":
        path = cfg_get(scanner_cfg, "path")
        if not path:
            raise HardwareError("scanner.source is 'files' but scanner.path is not set: give an image file or folder")
        return FileSource(path, loop=cfg_get(scanner_cfg, "loop"), width=width, height=height)
    if source == "hid":
        from device.scanner.hid import HidSource

        return HidSource.from_config(scanner_cfg)
    if source == "serial":
        from device.scanner.serialport import SerialSource

        return SerialSource.from_config(scanner_cfg)
    if source in PLUGINS:
        return PLUGINS[source](scanner_cfg)
    if source in PLUGIN_MISSING:
        raise HardwareError(PLUGIN_MISSING[source])
    raise HardwareError(f"unknown scanner.source {source!r}: use picamera2, usb, files, hid or serial")
