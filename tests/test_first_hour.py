"""Issue #21, the first hour of a new user: install hints that work from the checkout,
`bisenet --version`, and the smaller rough edges (see each test)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.install_hint import extra_hint, project_version

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ["app", "core", "engines", "calibration", "training", "bench", "scripts"]


def test_no_hint_names_a_package_no_index_has():
    """`pip install 'bisenet-edge[X]'` names a package on no index: every hint says
    `pip install -e '.[X]'` (from the checkout) or the packages themselves."""
    offenders = []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".sh"} and path.name != "install_hint.py":
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if "bisenet-edge[" in line:
                        offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders


def test_extra_hint_names_the_packages_and_the_extra():
    hint = extra_hint("serve", "PyGObject")
    assert hint.startswith("pip install PyGObject ")
    assert "pip install -e '.[serve]'" in hint and "'serve' extra" in hint


def test_version_flag_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "app.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pyproject_version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                                  re.MULTILINE).group(1)
    assert out.stdout.strip() == f"bisenet {project_version()}"
    assert project_version() == pyproject_version


def test_rtsp_push_that_wrote_nothing_exits_1(tmp_path):
    """`--output rtsp://127.0.0.1:PORT/seg` with no server took none of its frames: the run
    says which output wrote nothing and exits 1, even beside a file output that worked."""
    from tests.app_helpers import SAMPLE_VIDEO, free_port, tiny_onnx
    from tests.app_process import frames_in, run_camera

    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"no sample video at {SAMPLE_VIDEO}")
    url = f"rtsp://127.0.0.1:{free_port()}/seg"
    out = run_camera("--source", SAMPLE_VIDEO, "--max-frames", 10, "--model", tiny_onnx((64, 96)),
                     "--output", url, "--output", tmp_path / "out.mkv")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"exit 1: output rtsp push {url} wrote nothing (written 0, dropped.server_down 10"), last
    assert frames_in(tmp_path / "out.mkv") == 10   # the output that worked is complete
