"""`bisenet export --precision fp16` (TensorRT 11's fp16 route) against the fp32 export, both on
ONNX Runtime (CPU), with the trained CamVid model on real CamVid val frames.

Tolerance: on every frame at least 99% of the labels equal the fp32 export's (measured here:
about 99.98%); fp16 rounding flips only pixels whose two best classes are nearly tied."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from app.cli import main as cli
from core.preprocess import preprocess
from engines.export import export_onnx
from core.model_config import load_model_config
from engines.onnx_engine import OnnxEngine
from core.sidecar import read_sidecar

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CHECKPOINT = SHARED / "models" / "camvid_r18-d32_cpu.pth"
CAMVID_VAL = SHARED / "data" / "camvid" / "val"
MODEL = "bisenetv1_r18-d32_camvid-360x480"
SIZE = (352, 480)
FRAMES = 4
MIN_SAME_LABELS = 0.99


@pytest.mark.skipif(not CHECKPOINT.is_file() or not CAMVID_VAL.is_dir(),
                    reason="../shared/models/camvid_r18-d32_cpu.pth and ../shared/data/camvid not found")
def test_fp16_export_matches_fp32_on_camvid(tmp_path, camvid_onnx):
    fp32 = camvid_onnx   # the same checkpoint, config and size, exported once for the suite
    fp16 = tmp_path / "m.fp16.onnx"
    assert cli(["export", "--model", MODEL, "--checkpoint", str(CHECKPOINT), "--size", f"{SIZE[0]}x{SIZE[1]}",
                "--precision", "fp16", "-o", str(fp16)]) == 0

    meta = read_sidecar(fp16)
    assert meta["precision"] == "fp16" and read_sidecar(fp32)["precision"] == "fp32"
    graph = onnx.load(str(fp16)).graph
    f32, f16, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT32
    assert [i.type.tensor_type.elem_type for i in graph.input] == [f32]       # same input as fp32
    assert [o.type.tensor_type.elem_type for o in graph.output] == [i32]      # labels head
    assert {t.data_type for t in graph.initializer if len(t.dims) == 4} == {f16}   # conv weights in fp16

    ref, half = OnnxEngine(fp32), OnnxEngine(fp16)
    for path in sorted(CAMVID_VAL.glob("*.jpg"))[:FRAMES]:
        x = preprocess(cv2.imread(str(path)), SIZE, meta["mean"], meta["std"])
        a, b = ref.infer(x), half.infer(x)
        same = float((a == b).mean())
        assert same >= MIN_SAME_LABELS, f"{path.name}: {same:.4%} of labels equal the fp32 export's"
        assert len(np.unique(a)) >= 4, path.name    # a real scene, not a one-class map


def test_export_refuses_an_unknown_precision(tmp_path):
    from core.model_config import ConfigError
    with pytest.raises(ConfigError, match="--precision 'int8': use fp32 or fp16"):
        export_onnx(load_model_config(MODEL), None, tmp_path / "x.onnx", random_init=True, precision="int8")
    with pytest.raises(SystemExit) as e:                     # the CLI offers fp32 and fp16 only
        cli(["export", "--model", MODEL, "--random-init", "--precision", "int8", "-o", str(tmp_path / "x.onnx")])
    assert e.value.code == 2 and not (tmp_path / "x.onnx").exists()
