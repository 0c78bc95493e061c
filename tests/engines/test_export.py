"""ONNX export: graph contract, sidecar, parity with PyTorch, errors."""
import json

import numpy as np
import onnx
import pytest
import torch

from app.cli import main as cli
from core.model_config import ConfigError, load_model_config
from engines.onnx_engine import OnnxEngine
from testkit.helpers import normalized_input, official_style_checkpoint, randomized_model

R18 = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
R50 = "bisenetv1_r50-d32_4xb4-160k_cityscapes-1024x1024"


@pytest.mark.parametrize("name", [R18, R50])
def test_onnx_matches_pytorch(name, tmp_path):
    cfg = load_model_config(name)
    ckpt = tmp_path / "official.pth"
    model = official_style_checkpoint(cfg, ckpt)
    h, w = 128, 256
    for head in ("logits", "labels"):
        assert cli(["export", "--model", name, "--checkpoint", str(ckpt), "--size", f"{h}x{w}",
                    "--head", head, "-o", str(tmp_path / f"{head}.onnx")]) == 0
    x = normalized_input(h, w)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    logits = OnnxEngine(tmp_path / "logits.onnx").infer_logits(x)
    assert logits.shape == (1, cfg.num_classes, h, w)
    assert np.abs(logits - ref).max() <= 1e-4
    labels = OnnxEngine(tmp_path / "labels.onnx").infer(x)
    assert labels.dtype == np.int32 and labels.shape == (1, h, w)
    assert (labels == ref.argmax(1)).mean() >= 0.9999


def test_graph_contract_and_sidecar(tmp_path):
    cfg = load_model_config(R18)
    ckpt = tmp_path / "c.pth"
    official_style_checkpoint(cfg, ckpt)
    out = tmp_path / "m.onnx"
    assert cli(["export", "--model", R18, "--checkpoint", str(ckpt), "--size", "64x128", "-o", str(out)]) == 0
    g = onnx.load(str(out))
    assert g.opset_import[0].version >= 17
    (inp,), (outp,) = g.graph.input, g.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 64, 128]
    assert outp.name == "labels" and outp.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert not any("auxiliary" in i.name for i in g.graph.initializer)
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["classes"] == cfg.class_names and meta["palette"] == cfg.palette
    assert meta["mean"] == cfg.mean and meta["std"] == cfg.std
    assert meta["input_shape"] == [1, 3, 64, 128] and meta["head"] == "labels" and meta["precision"] == "fp32"
    assert len(meta["source_checkpoint_sha256"]) == 64 and len(meta["onnx_sha256"]) == 64


def test_dynamic_export_runs_at_other_sizes(tmp_path):
    cfg = load_model_config(R18)
    model = randomized_model(cfg, with_aux=False)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "c.pth")
    out = tmp_path / "d.onnx"
    assert cli(["export", "--model", R18, "--checkpoint", str(tmp_path / "c.pth"), "--size", "64x64",
                "--head", "logits", "--dynamic", "-o", str(out)]) == 0
    engine = OnnxEngine(out)
    for h, w in [(64, 64), (96, 160)]:
        x = normalized_input(h, w, seed=h)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.abs(engine.infer_logits(x) - ref).max() <= 1e-4


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="multiples of 32"):
        from engines.export import parse_size
        parse_size("250x500")
    # no checkpoint and no network: never silently random weights
    assert cli(["export", "--model", "configs/models/" + R18 + ".yaml", "--checkpoint", str(tmp_path / "none.pth"),
                "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert not (tmp_path / "x.onnx").exists()
    assert cli(["export", "--model", R18, "--random-init", "--size", "100x200", "-o", str(tmp_path / "y.onnx")]) == 2
    assert "multiples of 32" in capsys.readouterr().err
