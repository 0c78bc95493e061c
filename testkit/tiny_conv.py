"""A real, tiny ONNX model for the engine tests: a 1x1 conv (3 -> 4 class logits) with its sidecar,
optionally behind a Q/DQ pair, in fp16 or with a dynamic batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.sidecar import write_sidecar

CLASSES = ["road", "car", "sky", "tree"]
PALETTE = [[128, 64, 128], [0, 0, 142], [70, 130, 180], [107, 142, 35]]


def tiny_onnx(tmp_path: Path, h=8, w=16, qdq=False, precision="fp32", dynamic_batch=False, max_batch=None) -> Path:
    """A real ONNX model: 1x1 conv, 3 -> 4 class logits (optionally behind a Q/DQ pair), + its sidecar.
    fp16: float32 in and out as `bisenet export --precision fp16` writes it, the conv in float16.
    dynamic_batch: any batch (axis "batch"), recorded like `bisenet export --dynamic-batch [--batch N]`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    fp16 = precision == "fp16"
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float16 if fp16 else np.float32),
                                     "weight")
    inits, nodes, conv_in, conv_out = [weight], [], "input", "logits"
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["input16"], to=TensorProto.FLOAT16))
        conv_in, conv_out = "input16", "logits16"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "zero")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"])]
        conv_in = "dq"
    nodes.append(helper.make_node("Conv", [conv_in, "weight"], [conv_out]))
    if fp16:
        nodes.append(helper.make_node("Cast", ["logits16"], ["logits"], to=TensorProto.FLOAT))
    n = "batch" if dynamic_batch else 1
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, h, w])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, 4, h, w])], inits)
    path = tmp_path / ("tiny.int8.onnx" if qdq else "tiny.fp16.onnx" if fp16 else
                       "tiny.batch.onnx" if dynamic_batch else "tiny.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    write_sidecar(path, {"model": "tiny", "classes": CLASSES, "palette": PALETTE,
                         "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                         "input_shape": [1, 3, h, w], "head": "logits", "precision": precision,
                         "dynamic_batch": dynamic_batch, "max_batch": max_batch})
    return path
