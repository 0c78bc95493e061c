"""A bad input is one line and exit 2; a bug is a line saying so, its traceback and exit 70
(app/cli.py). Real `bisenet` processes; the bug is planted by a tiny wrapper script."""
from __future__ import annotations

import os
import subprocess
import sys

from app.cli import BUG_EXIT, run_with_one_line_errors
from app.latency import LatencyRecorder
from core.errors import InputError, SetupError

# `bisenet` with one function of `latency-plot` replaced by a bug.
BUGGY_BISENET = """
import sys
import app.latency_plot

def series(rows):
    return len(rows) / 0          # the planted bug

app.latency_plot.series = series
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def bisenet(*argv):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-c", BUGGY_BISENET, *map(str, argv)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_a_bug_exits_70_with_its_traceback_and_a_bad_input_exits_2_with_one_line(tmp_path):
    log = tmp_path / "lat.csv"
    rec = LatencyRecorder(log, start=0.0)
    rec.record_dropped(0, 0.0, "queue_full")
    rec.close()

    bug = bisenet("latency-plot", log, "-o", tmp_path / "p.png")
    assert bug.returncode == BUG_EXIT != 2, bug.stderr
    first, *rest = bug.stderr.splitlines()
    assert first == ("bisenet latency-plot: internal error (a bug, please report it): "
                     "ZeroDivisionError: division by zero; traceback below")
    assert rest[0] == "Traceback (most recent call last):" and 'line 6, in series' in bug.stderr
    assert not (tmp_path / "p.png").exists()

    (tmp_path / "bad.csv").write_text("frame,when\n1,2\n")
    bad = bisenet("latency-plot", tmp_path / "bad.csv", "-o", tmp_path / "p.png")
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"bisenet latency-plot: error: {tmp_path / 'bad.csv'}: not a latency log")
    assert len(bad.stderr.splitlines()) == 1


def test_error_kinds_and_their_exit_codes(capsys):
    def failing(e):
        def run(_args):
            raise e
        return run

    cases = [(InputError("--fps -1: expected a number > 0"), 2, "error: --fps -1"),
             (SetupError("no CUDA here: pass --device cpu"), 2, "error: no CUDA here"),
             (ModuleNotFoundError("the OpenVINO backend needs openvino: pip install openvino", name="openvino"),
              2, "error: the OpenVINO backend needs openvino"),
             (ImportError("cannot import name 'nothing' from 'app.run'", name="app.run"), BUG_EXIT, "internal error"),
             (KeyError("camera"), BUG_EXIT, "internal error (a bug, please report it): KeyError: 'camera'"),
             (PermissionError(13, "Permission denied"), BUG_EXIT, "internal error")]
    for error, code, text in cases:
        assert run_with_one_line_errors("bisenet x", failing(error), None) == code, error
        err = capsys.readouterr().err
        assert text in err.splitlines()[0], err
        assert ("Traceback" in err) == (code == BUG_EXIT), err
