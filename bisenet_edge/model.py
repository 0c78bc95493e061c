"""`load_model(...)` -> a Model: one BGR frame in, its labels (or logits) out, through the same
engine and preprocess as `bisenet run`."""
from __future__ import annotations

import inspect

import numpy as np

from core.errors import InputError
from core.overlay import upsample_labels
from engines.base import Engine, as_engine
from engines.load import EngineOptions, load_engine


class Model:
    """An engine with the model's contract: `classes`, `palette` (RGB uint8 [C, 3]),
    `input_size` (H, W). Call it on a uint8 BGR frame (H x W x 3, any size)."""

    def __init__(self, engine: Engine):
        self.engine = as_engine(engine)
        info = self.engine.info
        self.classes = list(info.class_names)
        self.palette = np.asarray(info.palette, dtype=np.uint8)
        self.input_size = tuple(info.input_size)

    def _input(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"a frame is a uint8 BGR image H x W x 3 (OpenCV's layout), not {frame.dtype} "
                             f"{'x'.join(map(str, frame.shape))}")
        return self.engine.preprocess(frame)

    def labels(self, frame: np.ndarray, size: str = "model") -> np.ndarray:
        """Class ids, int32: at the model's input size (`size="model"`, what --save-labels
        writes) or upsampled (nearest, as the overlay draws them) to the frame (`size="source"`)."""
        if size not in ("model", "source"):
            raise InputError(f"size={size!r}: use 'model' (the model's input size) or 'source' (the frame's)")
        out = np.asarray(self.engine.infer(self._input(frame)))[0].astype(np.int32, copy=False)
        if size == "source":
            h, w = np.asarray(frame).shape[:2]
            out = upsample_labels(out, h, w)
        return out

    __call__ = labels

    def logits(self, frame: np.ndarray) -> np.ndarray:
        """Class scores [C, H, W] float32 at the model's input size, for models that output them
        (`bisenet export --head logits`, a zoo name + checkpoint)."""
        try:
            return np.asarray(self.engine.infer_logits(self._input(frame)))[0]
        except NotImplementedError as e:
            raise InputError(str(e)) from None

    def describe(self) -> str:
        return self.engine.describe()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<bisenet_edge.Model {self.describe()}>"


def load_model(model, **options) -> Model:
    """`model`: an .onnx (ONNX Runtime or OpenVINO, `backend`), an .engine (TensorRT), a Triton
    URL (grpc://HOST:8001/NAME, http://HOST:8000/NAME), or a zoo name / model YAML (PyTorch,
    with `checkpoint`; `device="cuda"` on the GPU). `options`: the engine options by name,
    those of `bisenet run` (engines/load.py's EngineOptions: checkpoint, device, providers,
    threads, backend, precision, ov_streams (1 unless given: one request at a time), triton_shm, triton_in_flight,
    input_size). The same choices
    and one-line errors as `bisenet run --model`."""
    return Model(load_engine(str(model), EngineOptions.of(options, where=lambda name: f"load_model({name}=...)")))


# help(load_model) and editors show the declared options as its keywords.
load_model.__signature__ = inspect.Signature(
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default)
       for name, field in EngineOptions.model_fields.items()])
