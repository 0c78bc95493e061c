"""The one interface the pipeline sees: what input an engine wants, and infer(batch) -> labels.

ONNX Runtime, OpenVINO, TensorRT and PyTorch implement it; the run-time pipeline knows nothing else
about them. What the model is (classes, palette, normalization) travels in `ModelInfo`,
read from the model's sidecar JSON or its model config.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.sidecar import SidecarError


@dataclass
class ModelInfo:
    model: str                    # model config name
    class_names: list
    palette: np.ndarray           # uint8 [C, 3], RGB
    mean: np.ndarray              # float32 [3], RGB, 0..255 scale
    std: np.ndarray
    input_size: tuple             # (H, W) the engine takes
    head: str = "labels"          # 'labels' or 'logits': what the graph outputs
    precision: str = "fp32"
    dynamic: bool = False         # ONNX with dynamic H/W
    extra: dict = field(default_factory=dict)   # the rest of the sidecar

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_sidecar(cls, meta: dict) -> "ModelInfo":
        _, _, h, w = meta["input_shape"]
        known = {"model", "classes", "palette", "mean", "std", "input_shape", "head", "precision", "dynamic"}
        return cls(model=meta["model"], class_names=list(meta["classes"]),
                   palette=np.asarray(meta["palette"], dtype=np.uint8).reshape(-1, 3),
                   mean=np.asarray(meta["mean"], dtype=np.float32),
                   std=np.asarray(meta["std"], dtype=np.float32),
                   input_size=(int(h), int(w)), head=meta.get("head", "labels"),
                   precision=meta.get("precision", "fp32"), dynamic=bool(meta.get("dynamic", False)),
                   extra={k: v for k, v in meta.items() if k not in known})

    @classmethod
    def from_model_config(cls, cfg, input_size=None) -> "ModelInfo":
        return cls(model=cfg.name, class_names=list(cfg.class_names),
                   palette=np.asarray(cfg.palette, dtype=np.uint8).reshape(-1, 3),
                   mean=np.asarray(cfg.mean, dtype=np.float32), std=np.asarray(cfg.std, dtype=np.float32),
                   input_size=tuple(input_size or cfg.crop_size), head="logits")


class ServerDown(RuntimeError):
    """A remote engine's server is unreachable: the pipeline drops the frame with reason
    `server_down` (not an inference error) and the engine retries on its own."""


class Engine:
    """Base class. Subclasses set `info`, `input_dtype` and implement `infer_logits` or `infer`."""

    info: ModelInfo
    input_dtype = np.float32      # what preprocess should produce for this engine
    backend = "base"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """batch: [N, 3, H, W] normalized RGB (input_dtype) -> labels [N, H, W] (uint8 or int32)."""
        return np.argmax(self.infer_logits(batch), axis=1).astype(np.int32)

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"the {self.backend} engine for {self.info.model} outputs labels only; "
                                  "export with --head logits for logits")

    def close(self) -> None:
        pass

    def describe(self) -> str:
        h, w = self.info.input_size
        return f"{self.backend} {self.info.model} {self.info.precision} input {h}x{w} head={self.info.head}"


class GraphEngine(Engine):
    """An exported graph (ONNX Runtime, OpenVINO) whose one output is `labels` (argmax in the
    graph) or `logits`: subclasses set `output_name` and implement `_run(batch) -> output`."""

    output_name = "labels"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._run(batch)
        if self.output_name == "labels":
            return out
        return np.argmax(out, axis=1).astype(np.int32)

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        if self.output_name != "logits":
            return super().infer_logits(batch)
        return self._run(batch)


def check_graph_io(path, info: ModelInfo, output_name: str, input_shape, output_shape=()) -> None:
    """The graph an ONNX-reading backend loaded must match its sidecar: output `labels` or
    `logits` as the sidecar's head says, a static input of the sidecar's size, and logits
    with one channel per class of the sidecar."""
    from app.validate import check_output_channels

    if output_name not in ("labels", "logits"):
        raise SidecarError(f"{path}: output {output_name!r} is neither labels nor logits; "
                           "re-export it with `bisenet export`")
    dims = list(input_shape)[2:]
    static = all(isinstance(d, int) and d > 0 for d in dims)
    if static and tuple(dims) != tuple(info.input_size):
        raise SidecarError(f"{path}: graph input is {dims[0]}x{dims[1]} but its sidecar says "
                           f"{info.input_size[0]}x{info.input_size[1]}; re-export it with `bisenet export`")
    if output_name == "logits" and len(output_shape) == 4:
        check_output_channels(output_shape[1], info.num_classes, str(path), "re-export it with `bisenet export`")
    if output_name != info.head:
        raise SidecarError(f"{path}: graph outputs {output_name} but its sidecar says "
                           f"{info.head}; re-export it with `bisenet export`")
