"""The one interface the pipeline sees: what input an engine wants, and infer(batch) -> labels.

ONNX Runtime, TensorRT and PyTorch implement it; the run-time pipeline knows nothing else
about them. What the model is (classes, palette, normalization) travels in `ModelInfo`,
read from the model's sidecar JSON or its model config.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    batch: int = 1                # frames per inference the graph takes (static batch)
    dynamic_batch: bool = False   # the graph takes any batch size (`bisenet export --dynamic-batch`)
    max_batch: int | None = None  # dynamic: the most frames the app puts in one batch (None: no cap)
    extra: dict = field(default_factory=dict)   # the rest of the sidecar

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_sidecar(cls, meta: dict) -> "ModelInfo":
        b, _, h, w = meta["input_shape"]
        known = {"model", "classes", "palette", "mean", "std", "input_shape", "head", "precision", "dynamic",
                 "dynamic_batch", "max_batch"}
        return cls(model=meta["model"], class_names=list(meta["classes"]),
                   palette=np.asarray(meta["palette"], dtype=np.uint8).reshape(-1, 3),
                   mean=np.asarray(meta["mean"], dtype=np.float32),
                   std=np.asarray(meta["std"], dtype=np.float32),
                   input_size=(int(h), int(w)), head=meta.get("head", "labels"),
                   precision=meta.get("precision", "fp32"), dynamic=bool(meta.get("dynamic", False)),
                   batch=int(b), dynamic_batch=bool(meta.get("dynamic_batch", False)),
                   max_batch=int(meta["max_batch"]) if meta.get("max_batch") else None,
                   extra={k: v for k, v in meta.items() if k not in known})

    @classmethod
    def from_model_config(cls, cfg, input_size=None) -> "ModelInfo":
        return cls(model=cfg.name, class_names=list(cfg.class_names),
                   palette=np.asarray(cfg.palette, dtype=np.uint8).reshape(-1, 3),
                   mean=np.asarray(cfg.mean, dtype=np.float32), std=np.asarray(cfg.std, dtype=np.float32),
                   input_size=tuple(input_size or cfg.crop_size), head="logits")


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

    def batch_limit(self, cameras: int) -> int:
        """The most frames one infer() call gets when `cameras` cameras share this engine: a
        static batch N takes N (fewer are padded), a dynamic batch one frame per camera (up to
        its max_batch), a batch-1 model one frame at a time."""
        if self.info.dynamic_batch:
            return max(1, min(cameras, self.info.max_batch or cameras))
        return max(1, min(cameras, self.info.batch))

    def close(self) -> None:
        pass

    def describe(self) -> str:
        h, w = self.info.input_size
        batch = "" if self.info.batch == 1 and not self.info.dynamic_batch else \
            (f" batch dynamic{f' (max {self.info.max_batch})' if self.info.max_batch else ''}"
             if self.info.dynamic_batch else f" batch {self.info.batch}")
        return f"{self.backend} {self.info.model} {self.info.precision} input {h}x{w} head={self.info.head}{batch}"


def run_static_batch(run, batch: np.ndarray, size: int) -> np.ndarray:
    """Run `batch` ([n, ...]) through `run`, a graph that takes exactly `size` frames: in
    chunks of `size`, the last one padded with zeros (their outputs are thrown away)."""
    n = len(batch)
    if n == size:
        return run(batch)
    outs = []
    for i in range(0, n, size):
        part = batch[i:i + size]
        if len(part) < size:
            part = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), part.dtype)])
        outs.append(run(part)[:min(size, n - i)])
    return np.concatenate(outs)
