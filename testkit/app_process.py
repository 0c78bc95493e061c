"""run_camera.py as a real subprocess for the RTSP and fault tests: start it, wait for its
latency log to grow, stop it with signals, and check the frame accounting exactly."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.latency import read_log
from testkit.app_helpers import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_camera(*args, timeout_s=120):
    """run_camera.py to its end -> the CompletedProcess (stdout and stderr captured)."""
    return subprocess.run([sys.executable, str(REPO / "run_camera.py"), *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout_s)


def bisenet(*args, timeout=120):
    """`bisenet ARGS` (python -m app.cli) to its end -> the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc) -> str:
    """The one line of a refused command (exit 2, no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def terminate(proc, timeout_s: float = 60) -> str:
    """SIGTERM a run_camera.py process, wait for its clean exit, return its stderr (killed if
    it does not stop in time)."""
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=timeout_s)[1]
    finally:
        if proc.poll() is None:
            proc.kill()


def frames_in(path) -> int:
    """Frames a video file decodes to."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def written_rate(rows, t0, t1, camera=None) -> float:
    """Written frames per second with capture time in [t0, t1) (seconds since the run started),
    of one camera or of all."""
    n = sum(1 for r in rows if not r["dropped"] and t0 <= r["capture_s"] < t1 and camera in (None, r["camera"]))
    return n / (t1 - t0)


class App:
    def __init__(self, *args, log: Path):
        self.log = Path(log)
        self.args = [sys.executable, str(REPO / "run_camera.py"), *map(str, args),
                     "--latency-log", str(self.log), "--threads", "1"]
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stderr = ""

    def rows(self) -> int:
        if not self.log.is_file():
            return 0
        with open(self.log) as f:
            return max(0, sum(1 for _ in f) - 1)

    def wait_rows(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.rows() < n:
            if self.proc.poll() is not None:
                raise AssertionError(f"run_camera exited early ({self.proc.returncode}): {self.finish()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"fewer than {n} log rows after {timeout_s} s: {self.finish()}")
            time.sleep(0.1)

    def signal(self, sig=signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout_s: float = 60) -> str:
        """Wait for the exit (killing it past timeout_s) -> its stderr."""
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"run_camera did not exit within {timeout_s} s: {err[-3000:]}")
        self.stderr = err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


def summary_counts(stderr: str) -> dict:
    """'frames 120  written 100  dropped 20 (queue_full 20)' -> numbers."""
    m = re.search(r"frames (\d+)  written (\d+)  dropped (\d+)(?: \(([^)]*)\))?", stderr)
    assert m, f"no summary in: {stderr[-2000:]}"
    reasons = {}
    for part in filter(None, (m.group(4) or "").split(", ")):
        name, n = part.rsplit(" ", 1)
        reasons[name] = int(n)
    assert "UNACCOUNTED" not in stderr, stderr[-2000:]
    return {"captured": int(m.group(1)), "written": int(m.group(2)), "dropped": int(m.group(3)),
            "reasons": reasons}


def check_accounting(stderr: str, log: Path) -> dict:
    """captured = written + dropped (by reason), in the summary and row by row in the log."""
    s = summary_counts(stderr)
    assert s["captured"] == s["written"] + s["dropped"]
    assert s["dropped"] == sum(s["reasons"].values())
    rows = read_log(log)
    assert sorted(r["frame"] for r in rows) == list(range(s["captured"])), "each frame id exactly once"
    assert sum(1 for r in rows if not r["dropped"]) == s["written"]
    by_reason = {}
    for r in rows:
        if r["dropped"]:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    assert by_reason == s["reasons"]
    return s


def part_stats(stderr: str, prefix: str) -> dict:
    """The summary line '<prefix>...: written 90, dropped.server_down 10 ...' -> {key: number}."""
    for line in reversed(stderr.splitlines()):   # the summary comes last, after the log lines
        if line.startswith(prefix):
            body = line.split(": ", 1)[1]
            out = {}
            for key, value in re.findall(r"([\w.]+) ([\d.]+)", body):
                out[key] = float(value) if "." in value else int(value)
            return out
    raise AssertionError(f"no line starting with {prefix!r} in: {stderr[-2000:]}")


def camera_counts(stderr: str) -> dict:
    """The per-camera summary lines 'cam1: frames 40  written 38  dropped 2 (queue_full 2) ...'
    -> {camera: {captured, written, dropped, reasons}}."""
    out = {}
    for m in re.finditer(r"^([\w.-]+): +frames (\d+)  written (\d+)  dropped (\d+)(?: \(([^)]*)\))?", stderr, re.M):
        if m.group(1) == "all":
            continue
        reasons = {}
        for part in filter(None, (m.group(5) or "").split(", ")):
            name, n = part.rsplit(" ", 1)
            reasons[name] = int(n)
        out[m.group(1)] = {"captured": int(m.group(2)), "written": int(m.group(3)), "dropped": int(m.group(4)),
                           "reasons": reasons}
    assert out, f"no per-camera summary in: {stderr[-2000:]}"
    assert "UNACCOUNTED" not in stderr, stderr[-2000:]
    return out


def check_camera_accounting(stderr: str, log: Path) -> dict:
    """For every camera: captured = written + dropped (by reason), in its summary line and row
    by row in the one log (ids count per camera)."""
    counts = camera_counts(stderr)
    rows = read_log(log)
    assert {r["camera"] for r in rows} == set(counts)
    for name, s in counts.items():
        mine = [r for r in rows if r["camera"] == name]
        assert s["captured"] == s["written"] + s["dropped"] and s["dropped"] == sum(s["reasons"].values()), name
        assert sorted(r["frame"] for r in mine) == list(range(s["captured"])), f"{name}: each frame id exactly once"
        assert sum(1 for r in mine if not r["dropped"]) == s["written"], name
        by_reason = {}
        for r in mine:
            if r["dropped"]:
                by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        assert by_reason == s["reasons"], name
    return counts
