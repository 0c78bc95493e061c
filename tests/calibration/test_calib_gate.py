"""Accuracy gate: fp32 vs int8 on a val split with training's evaluator; per-class IoU deltas;
non-zero exit over --max-drop unless --force; a refused model is moved aside, not lost."""
import json

import pytest

from app.cli import main as cli
from calibration.calibrate import GATE_FAILED
from testkit.calib_fixtures import list_dataset, tiny_segmenter


@pytest.fixture()
def setup(tmp_path):
    fp32 = tiny_segmenter(tmp_path / "tiny.onnx")
    dataset = list_dataset(tmp_path / "ds", num=3)
    return fp32, dataset, tmp_path


def calibrate(fp32, dataset, out, *extra):
    return cli(["calibrate", "--onnx", str(fp32), "--data", str(dataset), "--num-images", "3", "--val", str(dataset),
                "--target", "both", "--quiet", "-o", str(out), *extra])


def test_gate_prints_per_class_deltas_and_records_the_verdict(setup, capsys):
    fp32, dataset, tmp = setup
    assert calibrate(fp32, dataset, tmp / "ok.int8.onnx", "--max-drop", "100") == 0
    out = capsys.readouterr().out
    assert "accuracy gate: tiny val (3 images)" in out
    for name in ("sky", "road", "car", "mIoU"):
        assert any(line.strip().startswith(name) for line in out.splitlines())
    assert "PASS" in out
    for name in ("ok.int8.onnx.json", "ok.int8.trt.onnx.json"):
        gate = json.loads((tmp / name).read_text())["accuracy_gate"]
        assert gate["passed"] and gate["max_drop"] == 100 and gate["flavor_evaluated"] == "cpu"
        assert gate["mIoU_drop"] == pytest.approx(gate["fp32_mIoU"] - gate["int8_mIoU"])


def test_gate_failure_exits_non_zero_and_moves_the_model_aside(setup, capsys):
    fp32, dataset, tmp = setup
    # An mIoU drop can never be below -100 points: this gate always fails.
    assert calibrate(fp32, dataset, tmp / "bad.int8.onnx", "--max-drop", "-100") == GATE_FAILED
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "--force" in captured.err
    assert not (tmp / "bad.int8.onnx").exists() and not (tmp / "bad.int8.trt.onnx").exists()
    assert (tmp / "bad.int8.rejected.onnx").is_file() and (tmp / "bad.int8.rejected.onnx.json").is_file()
    assert (tmp / "bad.int8.trt.rejected.onnx").is_file()


def test_force_keeps_a_model_that_fails_the_gate(setup, capsys):
    fp32, dataset, tmp = setup
    assert calibrate(fp32, dataset, tmp / "forced.int8.onnx", "--max-drop", "-100", "--force") == 0
    assert (tmp / "forced.int8.onnx").is_file()
    assert not json.loads((tmp / "forced.int8.onnx.json").read_text())["accuracy_gate"]["passed"]
    assert "kept because of --force" in capsys.readouterr().err


def test_gate_on_openvino(setup, capsys):
    """--gate-backend openvino evaluates both models on OpenVINO (the app's default for int8)."""
    pytest.importorskip("openvino", reason="pip install openvino")
    fp32, dataset, tmp = setup
    assert calibrate(fp32, dataset, tmp / "ov.int8.onnx", "--max-drop", "100", "--gate-backend", "openvino") == 0
    out = capsys.readouterr().out
    assert "accuracy gate: tiny val (3 images), openvino CPU" in out and "PASS" in out
    gate = json.loads((tmp / "ov.int8.onnx.json").read_text())["accuracy_gate"]
    assert gate["backend"] == "openvino" and gate["passed"]


def test_every_precision_is_recorded_and_the_fallback_runs_before_exit_3(setup, capsys):
    """The gate evaluates each int8 precision this CPU runs (ONNX Runtime int8, OpenVINO
    int8+fp32) and records them; a gate that always fails tries the documented fallback
    (the most sensitive layers kept float) before giving up with exit 3."""
    pytest.importorskip("openvino", reason="pip install openvino")
    fp32, dataset, tmp = setup
    assert calibrate(fp32, dataset, tmp / "all.int8.onnx", "--max-drop", "100", "--target", "cpu") == 0
    gate = json.loads((tmp / "all.int8.onnx.json").read_text())["accuracy_gate"]
    assert {"int8", "int8+fp32"} <= set(gate["precisions"]) and set(gate["passed_precisions"]) >= {"int8", "int8+fp32"}
    report = json.loads((tmp / "all.int8.gate.json").read_text())
    assert set(report["precisions"]["int8+fp32"]["per_class_iou"]) == {"sky", "road", "car"}
    assert report["fp32"]["pixel_share"]["road"] > 0

    assert calibrate(fp32, dataset, tmp / "bad.int8.onnx", "--max-drop", "-100", "--target", "cpu",
                     "--fallback-keep-float", "2") == GATE_FAILED
    err = capsys.readouterr().err
    assert "fallback: keeping the 2 most sensitive layers float" in err
    rejected = json.loads((tmp / "bad.int8.rejected.onnx.json").read_text())
    assert len(rejected["keep_float"]) == 2 and not rejected["accuracy_gate"]["passed"]
