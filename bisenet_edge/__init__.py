"""bisenet-edge as a Python library: segmentation inside your own program (a robot, a ROS
node, a notebook) on the same pieces as `bisenet run` (engines/load.py's engines, the app's
cameras, batch scheduler and pipeline), without writing any output.

    import bisenet_edge
    model = bisenet_edge.load_model("model.onnx")      # .onnx, .engine, grpc://..., zoo name + checkpoint
    labels = model(bgr_frame)                          # H x W int32 class ids at the model's input size
    for result in bisenet_edge.stream(["a.mp4", "rtsp://cam/1"], model):
        result.camera, result.frame_id, result.labels, result.coverage ...

docs/api.md documents it, with a runnable example.
"""
from __future__ import annotations

from bisenet_edge.model import Model, load_model
from bisenet_edge.stream import FrameResult, StreamError, stream

__all__ = ["FrameResult", "Model", "StreamError", "load_model", "stream"]
