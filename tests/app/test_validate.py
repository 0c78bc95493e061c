"""The one validation layer (app/setting_rules.py): every bad input is exit 2 and ONE line on stderr,
never a traceback; runs that did not do their job exit non-zero and say why; files get the
umask's mode; interrupted writes leave no temp files.

Most cases run in-process through the same entry as run_camera.py / `bisenet` (argv ->
parser -> preset -> validation -> sidecar -> model), which is quick; a representative subset
runs as real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from app import settings
from core.validate import MAX_QUEUE
from app.cli import main as bisenet_main
from app.run import main as run_main
from core.files import atomic_path, atomic_write
from core.sidecar import write_sidecar
from testkit.app_helpers import MODEL_NAME, REPO, SAMPLE_VIDEO
from testkit.app_process import ENV
from testkit.calib_fixtures import tiny_segmenter

PROG = "run_camera.py: error: "


def one_line_exit_2(call, argv, capsys, prog=PROG):
    """call(argv) -> its stderr, after checking: exit 2, exactly one line, no traceback."""
    try:
        code = call(argv)
    except SystemExit as e:      # argparse's own errors exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith(prog) and "Traceback" not in err, (argv, err)
    return err


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_segmenter(tmp_path_factory.mktemp("model") / "tiny.onnx")


# ------------------------------------------------------------------------ flag values
FLAG_CASES = [
    (["--output", "http://@:99999"], "--output http://@:99999: the port must be a number from 1 to 65535"),
    (["--output", "http://@:-1"], "1 to 65535"),
    (["--output", "http://@:0"], "1 to 65535"),
    (["--output", "http://[::1]:8080"], "IPv6"),
    (["--output", "rtsp://@:70000/live"], "1 to 65535"),
    (["--source", "99999999999999999999"], "--source 99999999999999999999 is not a camera index"),
    (["--source", "rtsp://127.0.0.1:99999/cam"], "--source rtsp://127.0.0.1:99999/cam: the port must be"),
    (["--source", "http://127.0.0.1:-1/x.mjpg"], "the port must be a number from 1 to 65535"),
    (["--queue-size", "100000"], f"--queue-size 100000 is out of range: expected a whole number from 1 to "
                                 f"{MAX_QUEUE}"),
    (["--queue-size", "0"], "--queue-size 0 is out of range"),
    (["--queue-size", "-3"], "--queue-size -3 is out of range"),
    (["--queue-size", "abc"], "--queue-size: invalid int value"),
    (["--fps", "0"], "--fps 0.0 is out of range: expected a number above 0"),
    (["--fps", "nan"], "--fps nan is not a finite number"),
    (["--fps", "inf"], "is not a finite number"),
    (["--bitrate", "-5"], "--bitrate -5 is out of range"),
    (["--bitrate", "2X"], "--bitrate '2X' is not a number"),
    (["--alpha", "1.5"], "--alpha 1.5 is out of range: expected a number from 0 to 1"),
    (["--max-frames", "-1"], "--max-frames -1 is out of range"),
    (["--max-frames", "0"], "--max-frames 0 is out of range"),
    (["--source-timeout", "0"], "--source-timeout 0.0 is out of range"),
    (["--threads", "0"], "--threads 0 is out of range"),
    (["--camera-size", "0x720"], "--camera-size: 0x720: expected WIDTHxHEIGHT"),
    (["--camera-size", "big"], "expected WIDTHxHEIGHT"),
    (["--camera-fps", "-30"], "--camera-fps -30.0 is out of range"),
    (["--latency-log", "lat.txt"], "--latency-log lat.txt: use a .csv or .jsonl"),
    (["--mode", "blend"], "--mode: invalid choice"),
    (["--no-such-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("flags,expect", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_values_are_one_line_exit_2(flags, expect, capsys, tmp_path):
    argv = ["--source", str(SAMPLE_VIDEO), "--model", str(tmp_path / "m.onnx"), "--output", "null", *flags]
    assert expect in one_line_exit_2(run_main, argv, capsys)


def test_good_values_pass_and_are_typed():
    assert settings.check_flags({"bitrate": "2M", "queue_size": 32, "fps": 29.97, "alpha": 0,
                                 "camera_size": "1280x720", "output": ["http://@:8080", "out.mp4"],
                                 "source": "0"}) == \
        {"bitrate": 2_000_000, "queue_size": 32, "fps": 29.97, "alpha": 0.0, "camera_size": (1280, 720),
         "output": ["http://@:8080", "out.mp4"], "source": "0"}


def test_every_numeric_flag_of_every_command_has_a_rule():
    """A new int/float flag needs its rule: declared with option() in the command's OPTIONS
    sections (core/options.py) or in its FLAG_RULES: ranges are part of the schema."""
    import argparse
    import importlib

    from app.cli import SUBCOMMANDS

    from core.options import rules_of

    for command, name in SUBCOMMANDS.items():
        parser = argparse.ArgumentParser()
        module = importlib.import_module(name)
        module.add_arguments(parser)
        numeric = {a.dest for a in parser._actions if a.type in (int, float)}
        rules = settings.RUN_FLAGS if command == "run" else \
            {**rules_of(getattr(module, "OPTIONS", ())), **getattr(module, "FLAG_RULES", {})}
        assert numeric <= set(rules), (command, sorted(numeric - set(rules)))


COMMAND_CASES = [
    (["train", "--work-dir", "w", "--lr", "0"], "--lr 0.0 is out of range"),
    (["train", "--work-dir", "w", "--crop-size", "0", "512"], "--crop-size 0 is out of range"),
    (["train", "--work-dir", "w", "--iterations", "-5"], "--iterations -5 is out of range"),
    (["calibrate", "--onnx", "x.onnx", "--data", "camvid", "-o", "y.onnx", "--num-images", "0"], "--num-images 0"),
    (["calibrate", "--onnx", "x.onnx", "--data", "camvid", "-o", "y.onnx", "--max-drop", "nan"], "not a finite"),
    (["calibrate", "--onnx", "x.onnx", "--data", "camvid", "-o", "y.onnx", "--max-drop", "101"], "from -100 to 100"),
    (["build", "--onnx", "x.onnx", "-o", "y.engine", "--workspace", "0"], "--workspace 0 is out of range"),
    (["eval", "--model", "x.onnx", "--dataset", "camvid", "--limit", "-1"], "--limit -1 is out of range"),
    (["prepare", "cityscapes", "--root", "r", "--workers", "0"], "--workers 0 is out of range"),
    (["export", "--model", "x"], "the following arguments are required: -o/--output"),
    (["export", "--model", MODEL_NAME, "--random-init", "-o", "/proc/x/m.onnx"], "cannot create folder /proc/x"),
]


@pytest.mark.parametrize("argv,expect", COMMAND_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in COMMAND_CASES])
def test_bad_values_of_other_commands_are_one_line_exit_2(argv, expect, capsys):
    err = one_line_exit_2(bisenet_main, argv, capsys, prog=f"bisenet {argv[0]}: error: ")
    assert expect in err, err


LOG_CASES = [
    ("lat.csv", "frame,x\n1,2\n", "not a latency log (no source_ts"),
    ("lat.csv", "frame,source_ts,capture_s,queue_ms,preprocess_ms,inference_ms,overlay_ms,sink_ms,e2e_ms,"
                "dropped,reason\nzz,,0.1,1,1,1,1,1,5,0,\n", "lat.csv line 2: frame: invalid literal"),
    ("lat.jsonl", "5\n", "not a latency log"),
    ("lat.jsonl", "{x\n", "not JSON lines"),
]


@pytest.mark.parametrize("name,text,expect", LOG_CASES, ids=[c[2][:20] for c in LOG_CASES])
def test_bad_latency_logs_are_one_line_exit_2(name, text, expect, capsys, tmp_path):
    (tmp_path / name).write_text(text)
    err = one_line_exit_2(bisenet_main, ["latency-plot", str(tmp_path / name), "-o", str(tmp_path / "p.png")],
                          capsys, prog="bisenet latency-plot: error: ")
    assert expect in err, err


# ------------------------------------------------------------------------ preset YAML
PRESET_CASES = [
    ("!!python/object/apply:os.system ['true']\n", "line 1: could not determine a constructor for the tag"),
    ("source: !!python/object:os.getcwd {}\n", "only plain YAML is read"),
    ("source: [0\nmodel: x\n", "not valid YAML"),
    ("source: 0\n  model: x\n", "line 2: not valid YAML"),
    ("- source\n- 0\n", "expected a mapping of flag names"),
    ("queue-size: 100000\n", "queue-size 100000 is out of range"),
    ("queue_size: 3.5\n", "queue_size 3.5 is not a whole number"),
    ("alpha: true\n", "alpha True is not a number"),
    ("max-frames: -1\n", "max-frames -1 is out of range"),
    ("hud: 3\n", "hud: expected true or false"),
    ("mode: blend\n", "mode: 'blend' is not one of"),
    ("output: http://@:99999\n", "output http://@:99999: the port"),
    ("fps: [1, 2]\n", "fps [1, 2] is not a number"),
    ("output: {a: 1}\n", "output {'a': 1}: expected display, a file or folder name"),
    ("source: {a: 1}\n", "source {'a': 1}: expected a camera index"),
    ("modle: x.onnx\n", "unknown key 'modle'"),
    (b"source: \xff\xfe\n", "cannot read this preset"),
]


@pytest.mark.parametrize("text,expect", PRESET_CASES, ids=[str(c[0])[:30] for c in PRESET_CASES])
def test_bad_presets_are_one_line_exit_2(text, expect, capsys, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = one_line_exit_2(run_main, ["--config", str(preset)], capsys)
    assert str(preset) in err and expect in err, err


def test_unreadable_preset(capsys, tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert "cannot read" in one_line_exit_2(run_main, ["--config", str(tmp_path / "dir.yaml")], capsys)


MODEL_YAML_CASES = [
    ("!!python/object/apply:os.system ['true']\n", "only plain YAML is read"),
    ("name: x\nnum_classes: [1\n", "not valid YAML"),
    ("name: x\nnum_classes: eleven\n", "num_classes: expected int, got str"),
    ("name: x\ntrain: 5\n", "train: expected TrainRecipe, got int"),
    ("- 1\n", "expected a mapping"),
]


def zoo_yaml_with(**changes) -> str:
    import yaml

    from core.model_config import MODELS_DIR

    data = yaml.safe_load((MODELS_DIR / "bisenetv1_r18-d32_camvid-360x480.yaml").read_text())
    return yaml.safe_dump({**data, **changes})


MODEL_YAML_CASES += [
    (zoo_yaml_with(std=[58.0, 0, 57.0]), "std: 0 is out of range"),
    (zoo_yaml_with(palette=[[300, 0, 0]] * 11), "palette: color [300, 0, 0]"),
    (zoo_yaml_with(mean=[1, 2]), "mean: expected a list of 3 numbers"),
]


@pytest.mark.parametrize("text,expect", MODEL_YAML_CASES, ids=[c[1][:24] for c in MODEL_YAML_CASES])
def test_bad_model_config_yaml_is_one_line_exit_2(text, expect, capsys, tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(text)
    err = one_line_exit_2(bisenet_main, ["export", "--model", str(cfg), "--random-init", "-o",
                                         str(tmp_path / "x.onnx")], capsys, prog="bisenet export: error: ")
    assert str(cfg) in err and expect in err, err


# ------------------------------------------------------------------------ sidecars and model files
def _edit(meta):
    return lambda m: {**m, **meta}


SIDECAR_CASES = [
    ("null", lambda m: None, "expected a JSON object, got NoneType"),
    ("123", lambda m: 123, "expected a JSON object, got int"),
    ("palette entry 300", lambda m: {**m, "palette": [[300, 0, 0]] + m["palette"][1:]}, "color [300, 0, 0]"),
    ("palette 7", _edit({"palette": 7}), "palette: expected a list of [R, G, B] colors"),
    ("classes 7", _edit({"classes": 7}), "classes: expected a list of 1 to 256 class names"),
    ("300 classes", _edit({"classes": ["c"] * 300, "palette": [[0, 0, 0]] * 300}), "1 to 256 class names"),
    ("two mean values", _edit({"mean": [1.0, 2.0]}), "mean: expected a list of 3 numbers"),
    ("std 0", _edit({"std": [58.0, 0, 57.0]}), "std: 0 is out of range: expected a number above 0"),
    ("std string", _edit({"std": ["a", 1, 1]}), "std: 'a' is not a number"),
    ("fewer colors", lambda m: {**m, "palette": m["palette"][:2]}, "3 classes but 2 palette colors"),
    ("input shape", _edit({"input_shape": [1, 3, 0, 128]}), "input_shape: 0 is out of range"),
    ("head", _edit({"head": "probs"}), "head: 'probs' is not one of labels, logits"),
    ("precision", _edit({"precision": 16}), "precision: 16 is not one of"),
    ("missing", lambda m: {k: v for k, v in m.items() if k != "std"}, "missing std"),
    ("sha256", _edit({"onnx_sha256": "xyz"}), "onnx_sha256: expected 64 lowercase hex digits"),
    ("model_config", _edit({"model_config": []}), "model_config: expected a JSON object"),
    ("exported with more classes", lambda m: {**m, "classes": m["classes"][:2], "palette": m["palette"][:2],
                                              "model_config": {"num_classes": 3}},
     "2 classes but the network was exported with 3"),
]


@pytest.mark.parametrize("name,edit,expect", SIDECAR_CASES, ids=[c[0] for c in SIDECAR_CASES])
def test_bad_sidecars_are_one_line_exit_2(name, edit, expect, model, capsys, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.symlink_to(model)
    meta = json.loads((model.parent / (model.name + ".json")).read_text())
    (tmp_path / "m.onnx.json").write_text(json.dumps(edit(meta)))
    err = one_line_exit_2(run_main, ["--source", str(SAMPLE_VIDEO), "--model", str(onnx_path), "--output", "null"],
                          capsys)
    assert "m.onnx.json" in err and expect in err and "re-export" in err, err


def test_network_outputs_more_classes_than_the_sidecar_lists(capsys, tmp_path):
    logits = tiny_segmenter(tmp_path / "logits.onnx", head="logits")      # 3 output channels
    meta = json.loads((tmp_path / "logits.onnx.json").read_text())
    write_sidecar(logits, {**meta, "classes": meta["classes"][:2], "palette": meta["palette"][:2]})
    err = one_line_exit_2(run_main, ["--source", str(SAMPLE_VIDEO), "--model", str(logits), "--output", "null"],
                          capsys)
    assert "the network outputs 3 classes but its sidecar lists 2" in err, err


def test_bad_model_files_are_one_line_exit_2(model, capsys, tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "empty.onnx").write_bytes(b"")
    unreadable = tmp_path / "side.onnx"
    unreadable.symlink_to(model)
    (tmp_path / "side.onnx.json").mkdir()                 # a sidecar that cannot be read (also as root)
    for path, expect in ((tmp_path / "dir.onnx", "is not a file"), (tmp_path / "empty.onnx", "is empty"),
                         (unreadable, "side.onnx.json: cannot read it")):
        err = one_line_exit_2(run_main, ["--source", str(SAMPLE_VIDEO), "--model", str(path), "--output", "null"],
                              capsys)
        assert expect in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_sidecar_without_read_permission(model, capsys, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.symlink_to(model)
    side = tmp_path / "m.onnx.json"
    side.write_text((model.parent / (model.name + ".json")).read_text())
    side.chmod(0)
    err = one_line_exit_2(run_main, ["--source", str(SAMPLE_VIDEO), "--model", str(onnx_path), "--output", "null"],
                          capsys)
    assert "cannot read it (Permission denied)" in err, err


# ------------------------------------------------------------------------ real processes
def test_a_subset_as_real_processes(model, tmp_path):
    """The same errors through run_camera.py itself: exit 2, one stderr line."""
    preset = tmp_path / "tagged.yaml"
    preset.write_text("source: !!python/object/apply:os.system ['echo owned']\n")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.symlink_to(model)
    (tmp_path / "m.onnx.json").write_text("null")
    cases = [["--output", "http://@:99999"], ["--queue-size", "100000"], ["--source", "99999999999999999999"],
             ["--config", str(preset)], ["--model", str(onnx_path)], ["--output", "/proc/out.mp4"]]
    for flags in cases:
        argv = ["--source", str(SAMPLE_VIDEO), "--model", str(model), "--output", "null", *flags]
        r = subprocess.run([sys.executable, str(REPO / "run_camera.py"), *argv], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith(PROG), (flags, r.stderr)
        assert "owned" not in r.stdout


# ------------------------------------------------------------------------ exit status tells the truth
def test_nothing_written_exits_non_zero_and_says_why(model, capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # A model that fails on every frame: its graph reshapes the input to the wrong size.
    failing = tmp_path / "failing.onnx"
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["r"]),
         helper.make_node("Cast", ["r"], ["labels"], to=TensorProto.INT32)], "failing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("labels", TensorProto.INT32, [1, "h", "w"])],
        [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 64, 129])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(failing))
    write_sidecar(failing, {**json.loads((model.parent / (model.name + ".json")).read_text()), "dynamic": True})
    assert run_main(["--source", str(SAMPLE_VIDEO), "--model", str(failing), "--output", "null",
                     "--max-frames", "5"]) == 1
    err = capsys.readouterr().err
    assert "written 0" in err and "exit 1: no frame was written (inference_error 5)" in err, err

    # A network that outputs class ids its sidecar has no class (and color) for: every frame is
    # refused rather than drawn black.
    beyond = tmp_path / "beyond.onnx"
    graph = helper.make_graph(
        [helper.make_node("Shape", ["input"], ["s"]),
         helper.make_node("Gather", ["s", "axes"], ["s3"]),
         helper.make_node("ConstantOfShape", ["s3"], ["labels"],
                          value=helper.make_tensor("v", TensorProto.INT32, [1], [5]))], "beyond",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 128])],
        [helper.make_tensor_value_info("labels", TensorProto.INT32, [1, 64, 128])],
        [helper.make_tensor("axes", TensorProto.INT64, [3], [0, 2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(beyond))
    write_sidecar(beyond, json.loads((model.parent / (model.name + ".json")).read_text()))
    assert run_main(["--source", str(SAMPLE_VIDEO), "--model", str(beyond), "--output", "null",
                     "--max-frames", "3"]) == 1
    err = capsys.readouterr().err
    assert "the model outputs class 5 but its sidecar lists 3 classes" in err, err
    assert "exit 1: no frame was written (inference_error 3)" in err, err

    # A video whose frames are all missing (index first, then cut right after it).
    fast = tmp_path / "fast.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE_VIDEO), "-c", "copy", "-movflags", "+faststart",
                    str(fast)], check=True, timeout=60)
    data = fast.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:data.index(b"mdat") + 100])
    assert run_main(["--source", str(tmp_path / "cut.mp4"), "--model", str(model), "--output", "null"]) == 1
    assert "exit 1: no frame was written" in capsys.readouterr().err


def test_output_that_cannot_be_written_and_folders_made_alike(model, capsys, tmp_path):
    """Missing folders are created for every kind of output; /proc cannot be written: refused at
    start (exit 2, nothing runs) instead of 'written 5' and no file."""
    out = tmp_path / "new" / "a"
    assert run_main(["--source", str(SAMPLE_VIDEO), "--model", str(model), "--max-frames", "3",
                     "--output", str(out / "v.mp4"), "--output", str(out / "frames") + "/",
                     "--latency-log", str(tmp_path / "new" / "b" / "lat.csv")]) == 0
    capsys.readouterr()
    assert (out / "v.mp4").is_file() and len(list((out / "frames").glob("*.png"))) == 3
    assert (tmp_path / "new" / "b" / "lat.csv").is_file()
    for flags in (["--output", "/proc/out.mp4"], ["--output", "/proc/frames/"],
                  ["--output", "null", "--latency-log", "/proc/x/lat.csv"]):
        argv = ["--source", str(SAMPLE_VIDEO), "--model", str(model), "--max-frames", "5", *flags]
        assert "/proc/" in one_line_exit_2(run_main, argv, capsys)


# ------------------------------------------------------------------------ files: modes and temp files
def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        write_sidecar(tmp_path / "m.onnx", {"model": "x"})
        with open(tmp_path / "plain.bin", "wb"):
            pass
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.bin": 0o640, "m.onnx.json": 0o640, "plain.bin": 0o640}


def test_an_interrupted_write_leaves_no_temp_file(tmp_path):
    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.bin", interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old"
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "b.onnx") as tmp:
        tmp.write_bytes(b"half a model")        # what torch.onnx.export / quantize_static do
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_sigterm_during_export_leaves_no_temp_file_and_modes_match(tmp_path):
    """`bisenet export` killed with SIGTERM while it writes its temp file: exit 143, nothing
    hidden left behind. Run to the end, the sidecar has the .onnx's mode (umask 022: 0644)."""
    cmd = [sys.executable, "-m", "app.cli", "export", "--model", MODEL_NAME, "--random-init", "--size", "64x96",
           "-o", str(tmp_path / "m.onnx")]
    env = {**ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: os.umask(0o022))
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".") for p in tmp_path.iterdir()) and proc.poll() is None:
        assert time.monotonic() < deadline, "export never wrote its temp file"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert proc.returncode in (143, 0), err
    if proc.returncode == 143:         # the usual case: the signal came while the temp file existed
        assert left == [], left
    else:                              # it finished first: the signal came too late to matter
        assert left == ["m.onnx", "m.onnx.json"], left
    r = subprocess.run([*cmd, "--no-simplify"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"m.onnx": 0o644, "m.onnx.json": 0o644}
