"""`bisenet triton-repo`: the Triton model repository it writes, every config.pbtxt parsed by
Triton's own schema (model_config_pb2.ModelConfig). No server runs here (tests/engines/test_triton.py
serves the app from a real one)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from testkit.app_helpers import tiny_onnx
from testkit.app_process import bisenet, one_line_error

SIZE = (64, 96)


def _pb2():
    pytest.importorskip("tritonclient.grpc", reason="no tritonclient: pip install 'tritonclient[grpc,http]'")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format, model_config_pb2


def parse_config(path: Path):
    text_format, pb2 = _pb2()
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def params(cfg) -> dict:
    return {k: json.loads(v.string_value) for k, v in cfg.parameters.items()}


def test_repo_static_batch_export(tmp_path):
    model = tiny_onnx(SIZE)
    out = bisenet("triton-repo", "--onnx", model, "--name", "seg", "--instances", "2", "-o", tmp_path / "repo")
    assert out.returncode == 0, out.stderr
    cfg = parse_config(tmp_path / "repo" / "seg" / "config.pbtxt")
    assert (tmp_path / "repo" / "seg" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert cfg.name == "seg" and cfg.backend == "onnxruntime"
    # A fixed batch-1 export: Triton cannot batch it, so max_batch_size 0 and the full dims.
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("input", [1, 3, *SIZE])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("labels", [1, *SIZE])]
    _, pb2 = _pb2()
    assert cfg.input[0].data_type == pb2.TYPE_FP32 and cfg.output[0].data_type == pb2.TYPE_INT32
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    side = json.loads(Path(str(model) + ".json").read_text())
    got = params(cfg)
    for key in ("model", "classes", "palette", "mean", "std", "input_shape", "head", "precision"):
        assert got[key] == side[key], key
    # Asking a fixed-batch export for dynamic batching: one line, exit 2.
    err = one_line_error(bisenet("triton-repo", "--onnx", model, "--max-batch", "4", "-o", tmp_path / "r2"))
    assert "fixed batch of 1" in err


def test_repo_dynamic_batch_and_engine(tmp_path):
    import onnx

    # The same graph with its first dimension declared dynamic, as a dynamic-batch export has it.
    src = tiny_onnx(SIZE)
    proto = onnx.load(str(src))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    dyn = tmp_path / "dyn.onnx"
    onnx.save(proto, str(dyn))
    shutil.copyfile(str(src) + ".json", str(dyn) + ".json")
    out = bisenet("triton-repo", "--onnx", dyn, "--max-batch", "16", "--max-queue-delay-us", "500",
                  "-o", tmp_path / "repo")
    assert out.returncode == 0, out.stderr
    cfg = parse_config(tmp_path / "repo" / "bisenet" / "config.pbtxt")
    assert cfg.max_batch_size == 16 and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.input[0].dims) == [3, *SIZE] and list(cfg.output[0].dims) == list(SIZE)

    # A TensorRT engine's repository is written from its sidecar (TensorRT is not needed for
    # that, and is not on this machine: the .engine bytes here are only copied, never loaded).
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan bytes: copied, not parsed")
    side = json.loads(Path(str(src) + ".json").read_text())
    side.update(precision="fp16", input_shape=[1, 3, *SIZE])
    Path(str(engine) + ".json").write_text(json.dumps(side))
    out = bisenet("triton-repo", "--engine", engine, "--name", "trt", "-o", tmp_path / "repo")
    assert out.returncode == 0, out.stderr
    cfg = parse_config(tmp_path / "repo" / "trt" / "config.pbtxt")
    _, pb2 = _pb2()
    assert cfg.backend == "tensorrt" and cfg.default_model_filename == "model.plan"
    assert (tmp_path / "repo" / "trt" / "1" / "model.plan").is_file()
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and params(cfg)["precision"] == "fp16"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["bisenet", "trt"]   # both kept
