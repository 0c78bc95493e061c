"""Shared bits of the app tests: a real (random-weight) R18 ONNX model, exported once per
test process at a small input size, and the sample video."""
from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_VIDEO = REPO.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"
MODEL_NAME = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"

_models: dict = {}
_dir = None


def tiny_onnx(size_hw=(64, 96), head: str = "labels", dynamic_batch: bool = False) -> Path:
    """engines.export.export_onnx(random_init=True) at `size_hw` (batch 1, or any batch),
    cached for this process."""
    global _dir
    key = (*size_hw, head, dynamic_batch)
    if key not in _models:
        from engines.export import export_onnx
        from core.model_config import load_model_config

        if _dir is None:
            _dir = Path(tempfile.mkdtemp(prefix="bisenet-app-test-"))
            atexit.register(shutil.rmtree, _dir, True)
        tag = ("" if head == "labels" else "_" + head) + ("_dynbatch" if dynamic_batch else "")
        out = _dir / f"r18_{key[0]}x{key[1]}{tag}.onnx"
        _models[key] = export_onnx(load_model_config(MODEL_NAME), None, out, tuple(size_hw), head=head,
                                   random_init=True, dynamic_batch=dynamic_batch)
    return _models[key]


def wait_for(check, timeout_s: float = 30.0, what: str = "the condition"):
    """Poll `check()` until it gives something true, and return that; fail the test after
    `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_thread(fn, *args):
    """fn(*args) in a new thread (as the app's inference thread runs the engine); its result,
    or its exception raised here."""
    import threading

    box = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as e:   # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def read_labels(folder: Path) -> list:
    """The label maps an output folder saved with --save-labels, in frame order."""
    import cv2

    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((Path(folder) / "labels").glob("*.png"))]


# -- recordings --------------------------------------------------------------------------------

def samples_in_complete_fragments(path) -> tuple[int, int]:
    """Walk the top-level mp4 boxes -> (frames in complete moof+mdat pairs, fragments)."""
    data = path.read_bytes()
    at, frames, fragments, pending = 0, 0, 0, None
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if size < 8 or at + size > len(data):
            break                                   # the box the kill cut off
        if kind == b"moof":
            box = data[at:at + size]
            trun = box.find(b"trun")                # full box: version/flags, then sample_count
            pending = int.from_bytes(box[trun + 8:trun + 12], "big")
        elif kind == b"mdat" and pending is not None:
            frames, fragments, pending = frames + pending, fragments + 1, None
        at += size
    return frames, fragments


def ffprobe_frames(path) -> int:
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                        "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    return int(r.stdout.strip())


def first_frame_is_key(path) -> bool:
    """Whether a video file's first frame is a keyframe (it plays alone from its start)."""
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1",
                        "-show_entries", "frame=key_frame", "-of", "csv=p=0", str(path)],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.split()[0].strip(",") == "1"
