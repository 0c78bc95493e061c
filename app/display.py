"""Whether a window can open here (`--output display`): OpenCV with a GUI and a display.
Its own module so that the settings (the default output) can ask without importing the sinks."""
from __future__ import annotations

import os
import sys

import cv2


def display_problem(probe: bool = False) -> str:
    """Why no window can open here ('' when one can): OpenCV without a GUI (the default
    opencv-python-headless), or no display to show it on. `probe`: also open a window in a
    child process, at start-up, since a display that refuses (a dead $DISPLAY) makes Qt abort
    the whole process, and every other output with it."""
    if not gui_available():
        return ("this OpenCV has no GUI (opencv-python-headless); for a window: pip uninstall "
                "opencv-python-headless && pip install opencv-python")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display here ($DISPLAY and $WAYLAND_DISPLAY are unset)"
    if not probe:
        return ""
    import subprocess

    code = "import cv2; cv2.namedWindow('bisenet-probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "opening a window did not finish in 20 s"
    if done.returncode != 0:
        said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        return f"cannot open a window on display {where} ({said[0] if said else f'exit {done.returncode}'})"
    return ""


def gui_available() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return "NONE" not in line
    return False
