"""engines/precision.py: the default precision of an int8 model is the fastest one its gate
passed on this CPU; --precision wins; models calibrated before the per-precision gate run."""
import json

import pytest

from app.cli import main as cli
from core.sidecar import read_sidecar, sidecar_path
from engines.cpu_features import FORCE_ENV, detect
from engines.precision import choose_precision
from testkit.calib_fixtures import list_dataset, tiny_segmenter

BF16_CPU = detect(force="avx2,fma,avx512,vnni,bf16")
NO_BF16_CPU = detect(force="avx2,fma,avx512,vnni")


def gated(bf16_passed=True) -> dict:
    bf16 = {"passed": bf16_passed, "mIoU_drop": 0.1 if bf16_passed else 2.5, "worst_class": "car",
            "worst_class_drop": 0.4 if bf16_passed else 7.0}
    return {"precision": "int8", "accuracy_gate": {"passed": True, "precisions": {
        "int8+fp32": {"passed": True, "mIoU_drop": 0.05}, "int8+bf16": bf16}}}


def test_fastest_passing_precision_per_cpu():
    assert choose_precision(gated(), BF16_CPU)[0] == "bf16"
    precision, reason = choose_precision(gated(), NO_BF16_CPU)
    assert precision == "fp32" and "no bf16" in reason
    precision, reason = choose_precision(gated(bf16_passed=False), BF16_CPU)
    assert precision == "fp32" and "failed the accuracy gate" in reason and "car -7.00" in reason
    assert choose_precision(gated(), NO_BF16_CPU, requested="bf16") == ("bf16", "--precision bf16 given")
    old = {"precision": "int8", "accuracy_gate": {"passed": True, "mIoU_drop": 0.1}}   # calibrated before
    precision, reason = choose_precision(old, BF16_CPU)
    assert precision == "fp32" and "recalibrate" in reason
    assert choose_precision({"precision": "fp32"}, BF16_CPU)[0] == "fp32"


def test_app_default_for_a_calibrated_model_without_bf16_is_int8_fp32(tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="pip install openvino")
    from engines.load import load_engine

    fp32 = tiny_segmenter(tmp_path / "tiny.onnx")
    data = list_dataset(tmp_path / "ds", num=3)
    int8 = tmp_path / "tiny.int8.onnx"
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(data), "--num-images", "3", "--val", str(data),
                "--max-drop", "100", "--max-class-drop", "100", "--quiet", "-o", str(int8)]) == 0
    monkeypatch.setenv(FORCE_ENV, "avx2,fma,avx512,vnni")       # a CPU without bf16
    engine = load_engine(str(int8))
    assert engine.backend == "openvino" and engine.info.precision == "int8+fp32"
    assert "no bf16" in engine.describe() and FORCE_ENV not in engine.describe()
    # --precision given wins (fp32 here: this box may have no bf16 to run the other one)
    assert "--precision fp32 given" in load_engine(str(int8), precision="fp32").describe()
    # A model calibrated before the per-precision gate still loads, as int8+fp32.
    meta = read_sidecar(int8)
    meta["accuracy_gate"] = {k: v for k, v in meta["accuracy_gate"].items() if k not in ("precisions",)}
    meta.pop("sidecar_version", None)
    sidecar_path(int8).write_text(json.dumps(meta))
    engine = load_engine(str(int8))
    assert engine.info.precision == "int8+fp32" and "recalibrate" in engine.describe()
