"""Files every stage writes: atomically (temp file + fsync + rename), with the umask's mode."""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import threading
from pathlib import Path

# Files the readers take by their suffix (a camera source, a calibration set): one list each.
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".wmv"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_mode() -> int:
    """0666 less this process's umask: the mode open() gives a new file. mkstemp makes 0600
    files, so project files made through a temp file get this mode before the rename."""
    try:
        with open("/proc/self/status") as f:   # Linux: read it without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(file)` on a temp file in the same folder, fsync, then rename over `path`:
    readers (and a kill mid-write) never leave or see half a file under `path`. The file gets
    the umask's mode like any other; an exception or SIGTERM (app/cli.py) removes the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def deferred_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """Ctrl-C / SIGTERM arriving inside the block take effect when it ends: for the few steps
    that must happen together (a model file and its sidecar). Only the main thread can do this;
    elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {s: signal.signal(s, lambda signum, _frame: arrived.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if arrived:
            signal.raise_signal(arrived[0])


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", then=None):
    """For libraries that write to a path themselves (torch.onnx.export, quantize_static,
    cv2.imwrite): yield a hidden temp path beside `path`, rename it over `path` when the block
    ends, remove it when the block raises (SIGTERM included, see app/cli.py). `then()` runs
    right after the rename with signals deferred, so what it writes (a sidecar) lands with the
    file or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        with deferred_signals():
            os.replace(tmp, path)
            if then is not None:
                then()
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))
