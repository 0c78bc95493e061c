"""The first hour of a new user: install hints that work from the checkout,
`bisenet --version`, and the smaller rough edges (see each test). Nothing here is timed (the
rate an MJPEG relay is announced at is measured in test_app_sources.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.install_hint import extra_hint, project_version

ROOT = Path(__file__).resolve().parents[2]
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
    from testkit.app_helpers import SAMPLE_VIDEO, free_port, tiny_onnx
    from testkit.app_process import frames_in, run_camera

    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"no sample video at {SAMPLE_VIDEO}")
    url = f"rtsp://127.0.0.1:{free_port()}/seg"
    out = run_camera("--source", SAMPLE_VIDEO, "--max-frames", 10, "--model", tiny_onnx((64, 96)),
                     "--output", url, "--output", tmp_path / "out.mkv")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"exit 1: output rtsp push {url} wrote nothing (written 0, dropped.server_down 10"), last
    assert frames_in(tmp_path / "out.mkv") == 10   # the output that worked is complete


def run_app_in(folder: Path, *args):
    """run_camera.py from `folder` (relative outputs land there) -> the CompletedProcess."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run([sys.executable, str(ROOT / "run_camera.py"), *map(str, args)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_no_display_default_output_is_a_file_and_display_is_refused_at_start(tmp_path):
    """Where no window can open (no $DISPLAY here, and the default OpenCV is headless) the
    default output is artifacts/run/overlay_{camera}.mp4 and the start-up line says so;
    `--output display` is one line and exit 2 before anything starts (no other output made)."""
    from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
    from testkit.app_process import frames_in

    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"no sample video at {SAMPLE_VIDEO}")
    model = tiny_onnx((64, 96))
    out = run_app_in(tmp_path, "--source", SAMPLE_VIDEO, "--max-frames", 5, "--model", model)
    assert out.returncode == 0, out.stderr
    assert "output: no --output given and no window here" in out.stderr
    assert "artifacts/run/overlay_cam0.mp4" in out.stderr
    assert frames_in(tmp_path / "artifacts" / "run" / "overlay_cam0.mp4") == 5

    refused = run_app_in(tmp_path, "--source", SAMPLE_VIDEO, "--max-frames", 5, "--model", model,
                         "--output", "display", "--output", "d.mp4")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--output display:" in refused.stderr, refused.stderr
    assert not (tmp_path / "d.mp4").exists() and "model:" not in refused.stderr


def test_display_problem_names_what_is_missing(monkeypatch):
    from app.display import display_problem, gui_available

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    problem = display_problem(probe=True)
    assert problem and "\n" not in problem
    assert ("no GUI" in problem) if not gui_available() else ("no display here" in problem)


def test_a_failed_calibration_leaves_no_calib_list(tmp_path):
    """The calibration list (<out>.calib.txt) is written before quantizing; a calibration that
    fails after it (here: a --keep-float layer that does not exist) removes it again."""
    from app.cli import main as cli
    from testkit.calib_fixtures import image_folder, tiny_segmenter

    fp32 = tiny_segmenter(tmp_path / "tiny.onnx")
    images = image_folder(tmp_path / "imgs", sequences=("s",), per_sequence=2)
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(images), "--num-images", "2",
                "--keep-float", "nope", "--quiet", "-o", str(tmp_path / "x.int8.onnx")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "tiny.onnx", "tiny.onnx.json"]


def test_yaml_output_null_is_the_null_output_and_key_errors_use_hyphens(tmp_path):
    """`output: null` (YAML's null) is the null output, as `--output null`, not 'no value';
    errors list the keys as the presets spell them (queue-size, not queue_size)."""
    from app.settings import build

    preset = tmp_path / "p.yaml"
    preset.write_text("source: clip.mp4\noutput: null\nqueue-size: 2\n")
    assert build({}, str(preset)).cameras[0].output == ["null"]
    preset.write_text("cameras:\n  - {name: a, source: clip.mp4, output: null}\n")
    assert build({}, str(preset)).cameras[0].output == ["null"]
    preset.write_text("source: clip.mp4\nqueue_sise: 2\n")
    with pytest.raises(Exception) as e:
        build({}, str(preset))
    message = str(e.value)
    assert "unknown key 'queue_sise'" in message and "queue-size" in message and "queue_size" not in message


def test_save_labels_without_a_folder_output_is_one_line():
    """--save-labels beside only an mp4 output would be silently ignored: one line instead."""
    from app.settings import build
    from app.sinks import SinkError, check_save_labels

    with pytest.raises(SinkError, match=r"^--save-labels: the raw label maps go into a folder output"):
        check_save_labels(build({"source": ["clip.mp4"], "output": ["out.mp4"], "save_labels": True}).cameras[0])
    check_save_labels(build({"source": ["clip.mp4"], "output": ["out.mp4", "frames/"], "save_labels": True}).cameras[0])


def test_bitrate_help_says_the_rtsp_default():
    from app.rtsp_out import DEFAULT_BITRATE
    from app.settings import CameraSettings

    assert DEFAULT_BITRATE == 2_000_000
    assert "default: 2M for RTSP" in CameraSettings.model_fields["bitrate"].description


def test_bench_help_descriptions_are_whole_sentences():
    """bench/*.py --help shows the docstring's first paragraph, not its first line (which cut
    descriptions mid-sentence)."""
    import ast

    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        assert "__doc__.splitlines()[0]" not in text, path.name
        if 'description=__doc__.split("\\n\\n")[0]' in text:
            first = ast.get_docstring(ast.parse(text)).split("\n\n")[0].rstrip()
            assert first.endswith((".", ")")), f"{path.name}: {first[-60:]!r}"


def test_every_train_flag_has_help():
    import argparse

    from training.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not missing


def test_readme_says_how_many_rows_bisenet_models_lists():
    out = subprocess.run([sys.executable, "-m", "app.cli", "models"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.strip().splitlines()[1:]   # less the header
    said = re.search(r"bisenet models\s+# the (\d+) mmseg", (ROOT / "README.md").read_text())
    camvid = [row for row in rows if row.split()[1] == "camvid"]
    assert said and int(said.group(1)) == len(rows) - len(camvid) and len(camvid) == 1


def test_service_doc_lists_the_stats_json_keys():
    import json
    import time
    import urllib.request

    import numpy as np

    from app.frames import Frame
    from app.http_sink import HttpSink

    line = next(line for line in (ROOT / "docs" / "service.md").read_text().splitlines()
                if line.startswith("| `/stats.json` |"))
    documented = set(re.findall(r'"(\w+)"', line.split("|")[2]))
    sink = HttpSink("127.0.0.1", 0)
    try:
        img = np.zeros((48, 64, 3), np.uint8)
        sink.write(Frame(0, time.monotonic(), img), img, None)
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/stats.json", timeout=10) as r:
            served = set(json.loads(r.read()))
    finally:
        sink.close()
    assert documented == served


def test_eval_of_a_dynamic_export_names_the_size_it_evaluates_at(tmp_path):
    """A dynamic ONNX export (exported at 64x96) is evaluated at the dataset's test scale: the
    eval's start line (Predictor.describe_engine) says that, not the export's 64x96."""
    pytest.importorskip("torch")
    from app.cli import main as cli
    from engines.load import load_engine
    from testkit.training_data import make_model_config
    from training.evaluate import Predictor

    onnx_path = tmp_path / "dyn.onnx"
    assert cli(["export", "--model", str(make_model_config(tmp_path / "model.yaml")), "--random-init",
                "--size", "64x96", "--dynamic", "-o", str(onnx_path)]) == 0
    engine = load_engine(str(onnx_path))
    try:
        assert "input 64x96" in engine.describe()
        line = Predictor(engine, test_scale=(480, 360)).describe_engine()
        assert "input rescaled to fit 480x360 (the dataset's test scale, WxH)" in line and "64x96" not in line
        assert "input 40x56" in Predictor(engine, input_size=(40, 56)).describe_engine()
    finally:
        engine.close()


def test_an_abbreviated_flag_is_refused_not_taken_for_the_whole_one(capsys):
    from app.cli import main
    from app.run import _parser

    for parse in (lambda argv: _parser("run_camera.py").parse_args(argv), lambda argv: main(["run", *argv])):
        with pytest.raises(SystemExit) as e:
            parse(["--source", "clip.mp4", "--max-frame", "3"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments: --max-frame 3" in err and len(err.splitlines()) == 1


def test_an_output_in_a_folder_that_takes_no_files_says_not_writable():
    from core.errors import InputError
    from core.validate import prepare_output

    with pytest.raises(InputError, match=r"--output /proc/out.mp4: /proc is not writable"):
        prepare_output("/proc/out.mp4", "--output")


@pytest.mark.skipif(not list(Path("/usr/lib/python3/dist-packages/gi").glob(
    f"_gi.cpython-{sys.version_info[0]}{sys.version_info[1]}-*.so")),
    reason="needs Debian's python3-gi built for this Python (else setup_gi.sh builds PyGObject from PyPI)")
def test_rtsp_serve_in_a_fresh_venv_names_setup_gi_and_setup_gi_makes_it_work(tmp_path):
    """A venv cannot see Debian's python3-gi: the RTSP-serve error names scripts/setup_gi.sh, and
    after that script (run in a checkout whose .venv is a fresh venv) GStreamer's RTSP server imports."""
    import sysconfig

    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup_gi.sh", checkout / "scripts")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True, timeout=120)
    # The project and its packages on PYTHONPATH: not a site folder, so this venv's own .pth files decide gi.
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    serve = ("from app.rtsp_out import _import_gstreamer\n"
             "from core.errors import SetupError\n"
             "try:\n    _import_gstreamer()\n    print('gstreamer ok')\n"
             "except SetupError as e:\n    print(e)\n")
    venv_python = str(checkout / ".venv" / "bin" / "python")
    before = subprocess.run([venv_python, "-c", serve], env=env, capture_output=True, text=True, timeout=120)
    assert "`bash scripts/setup_gi.sh` from the checkout" in before.stdout, before.stdout + before.stderr
    subprocess.run(["bash", str(checkout / "scripts" / "setup_gi.sh")], check=True, timeout=120)
    after = subprocess.run([venv_python, "-c", serve], env=env, capture_output=True, text=True, timeout=120)
    assert after.stdout.strip() == "gstreamer ok", after.stdout + after.stderr
