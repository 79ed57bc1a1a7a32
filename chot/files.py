"""Writing files so that a crash or power cut never leaves a half-written one.

`atomic_write(path, data, mode)`: a temporary file in the same folder, created with `mode`
from its first byte (a secret is never readable by others, even briefly), fsynced, renamed
over `path`, and the folder fsynced so the rename itself survives a power cut.
"""

import os
import tempfile
from pathlib import Path


def atomic_write(path, data, mode=0o644):
    """Replace `path` with `data` (bytes or str) atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path
