"""`Frame` and `FrameSource`: what every frame source hands out, in a module of their own.

The camera and file sources (device/scanner/frames.py) and the simulated ones (the synthetic
crowd, device/scanner/synthetic.py, used by the demo and the tests only) both build on these;
neither imports the other.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One grey frame: `gray` numpy uint8 H x W, `t` time.monotonic() of capture, `name` (a file name) or None."""

    gray: np.ndarray
    t: float
    name: str | None = None


class FrameSource:
    """Base class of frame sources: `read() -> Frame | None` (None: exhausted), `close()`."""

    def read(self):
        """The next frame, or None when the source is exhausted."""
        raise NotImplementedError

    def close(self):
        """Release the camera or files. Calling it twice is harmless."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __iter__(self):
        """Frames until the source is exhausted."""
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame
