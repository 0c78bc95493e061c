"""Small real inputs for the INT8 tests: a tiny segmentation ONNX (with sidecar), images on
disk, a video, a dataset config. Everything is written into the test's tmp_path."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.files import file_sha256
from core.sidecar import write_sidecar

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
CLASSES = ["sky", "road", "car"]
PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128]]


def tiny_segmenter(path: Path, h: int = 64, w: int = 128, seed: int = 0, head: str = "labels") -> Path:
    """conv3x3/2-relu -> conv3x3/2-relu -> conv1x1 (3 classes) -> bilinear Resize x4 ->
    ArgMax -> Cast(int32): the same graph contract as `bisenet export` in a few KB."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def conv_weight(cout, cin, k):
        return (rng.normal(0, 1.0 / np.sqrt(cin * k * k), (cout, cin, k, k))).astype(np.float32)

    inits = [numpy_helper.from_array(conv_weight(8, 3, 3), "w1"), numpy_helper.from_array(rng.normal(0, .1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(conv_weight(16, 8, 3), "w2"), numpy_helper.from_array(rng.normal(0, .1, 16).astype(np.float32), "b2"),
             numpy_helper.from_array(conv_weight(3, 16, 1) * 4, "w3"), numpy_helper.from_array(np.zeros(3, np.float32), "b3"),
             numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales"),
             numpy_helper.from_array(np.array([], np.float32), "roi")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv_seg"),
             helper.make_node("Resize", ["c3", "roi", "scales"], ["logits" if head == "logits" else "up"],
                              name="final_resize", mode="linear", coordinate_transformation_mode="half_pixel")]
    if head == "labels":
        nodes += [helper.make_node("ArgMax", ["up"], ["am"], name="argmax", axis=1, keepdims=0),
                  helper.make_node("Cast", ["am"], ["labels"], name="cast", to=TensorProto.INT32)]
        out = helper.make_tensor_value_info("labels", TensorProto.INT32, [1, h, w])
    else:
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, h, w])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                              [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    write_sidecar(path, {"model": "tiny", "classes": CLASSES, "palette": PALETTE, "mean": MEAN, "std": STD,
                         "input_shape": [1, 3, h, w], "head": head, "precision": "fp32", "dynamic": False,
                         "onnx_sha256": file_sha256(path)})
    return path


def scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A BGR street-like picture (sky band, road band, a car box) and its 3-class label map."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.55))
    label[horizon:] = 1
    x0 = int(rng.uniform(0, w * 0.6))
    label[horizon - h // 8: horizon + h // 5, x0: x0 + w // 4] = 2
    colors = np.array([[235, 206, 135], [90, 90, 90], [40, 40, 200]], np.float32)   # BGR
    img = colors[label] + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), label


def image_folder(root: Path, sequences=("seqA", "seqB", "seqC"), per_sequence: int = 4, h: int = 72, w: int = 96) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s, seq in enumerate(sequences):
        for i in range(per_sequence):
            img, _ = scene(h, w, seed=100 * s + i)
            cv2.imwrite(str(root / f"{seq}_{i:05d}.png"), img)
    return root


def video_file(path: Path, frames: int = 24, h: int = 64, w: int = 96, fps: int = 12) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img, _ = scene(h, w, seed=i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def list_dataset(root: Path, num: int = 4, h: int = 64, w: int = 128) -> Path:
    """A `kind: list` dataset config with train/val lists of scene images and labels."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ann").mkdir(exist_ok=True)
    lines = []
    for i in range(num):
        img, label = scene(h, w, seed=500 + i)
        cv2.imwrite(str(root / "img" / f"s{i}_000{i}.png"), img)
        cv2.imwrite(str(root / "ann" / f"s{i}_000{i}.png"), label)
        lines.append(f"img/s{i}_000{i}.png ann/s{i}_000{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    cfg = root / "tiny.yaml"
    cfg.write_text(f"name: tiny\nkind: list\nroot: {root}\ntrain: train.txt\nval: val.txt\nnum_classes: 3\n"
                   f"class_names: {CLASSES}\npalette: {PALETTE}\n")
    return cfg
