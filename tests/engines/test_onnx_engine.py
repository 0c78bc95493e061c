"""ONNX Runtime engine: sidecar checks and execution-provider selection."""
import json

import numpy as np
import pytest

from engines.export import export_onnx
from engines.load import load_engine
from core.model_config import load_model_config
from engines.onnx_engine import OnnxEngine, parse_providers
from core.sidecar import SidecarError

R18 = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "r18.onnx"
    export_onnx(load_model_config(R18), None, out, (64, 96), head="labels", random_init=True)
    return out


def test_loads_with_classes_from_sidecar(onnx_model):
    engine = load_engine(str(onnx_model))
    assert engine.info.class_names[0] == "road" and engine.info.palette.shape == (19, 3)
    assert engine.info.input_size == (64, 96)
    labels = engine.infer(np.zeros((1, 3, 64, 96), np.float32))
    assert labels.shape == (1, 64, 96) and labels.dtype == np.int32


def test_missing_or_mismatched_sidecar(onnx_model, tmp_path):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(onnx_model.read_bytes())
    with pytest.raises(SidecarError, match="no sidecar.*bisenet export"):
        OnnxEngine(copy)
    meta = json.loads((onnx_model.parent / "r18.onnx.json").read_text())
    meta["input_shape"] = [1, 3, 128, 256]
    (tmp_path / "copy.onnx.json").write_text(json.dumps(meta))
    with pytest.raises(SidecarError, match="graph input is 64x96 but its sidecar says 128x256"):
        OnnxEngine(copy)
    (tmp_path / "copy.onnx.json").write_text("{not json")
    with pytest.raises(SidecarError, match="not valid JSON"):
        OnnxEngine(copy)


def test_providers(onnx_model):
    assert parse_providers("cpu", onnx_model) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="use a comma list of cpu, cuda, tensorrt"):
        parse_providers("opencl", onnx_model)
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: the missing-provider message cannot be shown here")
    with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
        parse_providers("tensorrt,cuda", onnx_model)


def test_checkpoint_as_model_is_explained():
    with pytest.raises(ValueError, match="goes in --checkpoint"):
        load_engine("weights.pth")


def test_sessions_do_not_spin_while_idle(onnx_model):
    """Idle intra-op threads sleep instead of spin-waiting (they took the CPU the pipeline's own
    threads need: BENCHMARKS.md, "CPU backends"); spinning=True restores ONNX Runtime's default."""
    quiet = OnnxEngine(onnx_model, threads=2).session.get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spin = OnnxEngine(onnx_model, threads=2, spinning=True).session.get_session_options()
    with pytest.raises(Exception, match="does not have configuration"):
        spin.get_session_config_entry("session.intra_op.allow_spinning")
