"""bench/overlay.py runs end to end on tiny sizes (a smoke test: no speed is asserted; its own
check, that the overlay before and now give the same pixels, and its exit code are), and a bad
option is one line, exit 2. The other bench scripts' smoke tests: tests/test_bench_smoke.py."""
import os
import subprocess
import sys

from testkit.app_helpers import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def run_bench(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "overlay.py"), *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_overlay_bench_short():
    proc = run_bench("--sizes", "64x48,97x33", "--labels", "20x30", "--modes", "overlay,mask,side-by-side",
                     "--repeats", 2, "--threads", 1)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "CPU: " in out and "load average" in out and "same pixels on every size" in out, out
    assert out.count(" same") >= 6 and "DIFFER" not in out, out


def test_overlay_bench_bad_size_is_one_line():
    proc = run_bench("--sizes", "1920by1080")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --sizes must look like 1920x1080, got '1920by1080'", proc.stderr
