"""`pip install <checkout>` gives a working tool: in a fresh venv (its dependencies reached from
the project's venv, no network), from another folder, the shipped configs, presets and zoo
names are found through the package, and data paths are the user's, not site-packages'."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from testkit.app_helpers import REPO, SAMPLE_VIDEO

CAMVID = REPO.parent / "shared" / "data" / "camvid"
ZOO = "bisenetv1_r18-d32_camvid-360x480"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("installed")
    src = work / "src"
    # A copy of the checkout: the build leaves build/ and *.egg-info in the tree it builds from.
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv*", ".git", "artifacts", "__pycache__",
                                                             "build", "*.egg-info", ".pytest_cache"))
    venv = work / "venv"
    # No pip of its own: the project venv's pip and setuptools (reached below) build and install.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies: the project venv's site-packages as a plain path (its own .pth files, the
    # editable install of this checkout among them, are not processed from there).
    Path(site, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(src)   # nothing may still read from the source tree
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere


def bisenet(installed, *args, timeout_s=300):
    bindir, cwd = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(bindir / "bisenet"), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def test_models_lists_the_zoo(installed):
    proc = bisenet(installed, "models")
    assert proc.returncode == 0, proc.stderr
    assert ZOO in proc.stdout and "bisenetv1_r50-d32_4xb4-160k_cityscapes-1024x1024" in proc.stdout


def test_export_run_with_a_preset_and_eval_from_another_folder(installed):
    cwd = installed[1]
    proc = bisenet(installed, "export", "--model", ZOO, "--random-init", "--size", "64x96", "--no-simplify",
                   "-o", "m.onnx")
    assert proc.returncode == 0, proc.stderr
    assert (cwd / "m.onnx").is_file() and (cwd / "m.onnx.json").is_file()
    if SAMPLE_VIDEO.is_file():
        proc = bisenet(installed, "run", "--config", "headless-file", "--source", SAMPLE_VIDEO, "--model", "m.onnx",
                       "--max-frames", 4, "--output", "out.mp4", "--latency-log", "lat.csv")
        assert proc.returncode == 0, proc.stderr
        assert (cwd / "out.mp4").stat().st_size > 0 and (cwd / "lat.csv").is_file()
    if (CAMVID / "val.txt").is_file():
        proc = bisenet(installed, "eval", "--model", "m.onnx", "--dataset", "camvid", "--data-root", CAMVID,
                       "--limit", 2)
        assert proc.returncode == 0, proc.stderr
        assert "mIoU" in proc.stdout + proc.stderr
    # camvid.yaml's root is relative: it means the user's working directory, never site-packages.
    proc = bisenet(installed, "eval", "--model", "m.onnx", "--dataset", "camvid", "--limit", 1)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"dataset root {cwd.parent / 'shared' / 'data' / 'camvid'} does not exist" in proc.stderr, proc.stderr

