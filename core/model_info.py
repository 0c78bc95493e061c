"""What a model takes and gives, whichever runtime runs it: classes, palette, normalization,
input size, head, precision, batch. Built from a sidecar (exported models) or a model config
(PyTorch); engines, training's evaluator and the app read it."""
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
