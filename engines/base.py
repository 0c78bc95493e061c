"""The one interface the pipeline sees: what input an engine wants, and infer(batch) -> labels.

ONNX Runtime, OpenVINO, TensorRT and PyTorch implement it; the run-time pipeline knows nothing else
about them. What the model is (classes, palette, normalization) travels in `ModelInfo`,
read from the model's sidecar JSON or its model config.
"""
from __future__ import annotations

from concurrent.futures import Future
import numpy as np

from core.preprocess import preprocess
from core.sidecar import SidecarError
from core.model_info import ModelInfo  # noqa: F401  (engines take it from here too)
from core.errors import BisenetError


class ServerDown(BisenetError, RuntimeError):
    """A remote engine's server is unreachable: the pipeline drops the frame with reason
    `server_down` (not an inference error) and the engine retries on its own."""


class Engine:
    """Base class: every capability the run-time pipeline may use, with its default.
    Subclasses set `info` and implement `infer` or `infer_logits`; the rest is optional:

        preprocess(bgr)   one uint8 BGR image -> this engine's input row [1, ...] (default:
                          core/preprocess.py's normalized tensor in input_dtype; OpenVINO:
                          the image at the input size, its graph normalizes)
        input_dtype       what core/preprocess.py should produce (float32; float16 for fp16 graphs)
        backend           its name in `describe()` and /metrics
        batch_limit(n)    frames per infer() call when n cameras share the engine
        fused             True: run_fused / run_fused_frames work (a GPU chain: uint8 frame in,
                          finished overlay out, no host round trip)
        fused_counts      True: run_fused_counts works too: the chain also counts each frame's
                          labels per zone cell on the device (scene analytics); only the
                          [cells x classes] counts come back, never the label map
        asynchronous      True: submit(batch) returns a Future of the output (a remote server
                          keeps several requests in flight); labels_of(output) -> labels
        counters()        reconnect counters for the run summary ({} when nothing happened)
    """

    info: ModelInfo
    input_dtype = np.float32
    backend = "base"
    name = "engine"               # in the run summary's counters line
    fused = False
    fused_counts = False
    asynchronous = False

    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """One uint8 BGR HxWx3 image -> [1, ...]: what infer() and submit() take for it."""
        h, w = self.info.input_size
        return preprocess(bgr, (h, w), self.info.mean, self.info.std, self.input_dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """batch: rows of preprocess(), or [N, 3, H, W] normalized RGB (input_dtype, core/
        preprocess.py's; every engine takes those) -> labels [N, H, W] (uint8 or int32)."""
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

    def run_fused(self, frame_bgr: np.ndarray, alpha: float = 0.5, mode: str = "overlay") -> np.ndarray:
        """fused engines: one uint8 BGR frame -> its uint8 BGR overlay."""
        raise NotImplementedError(f"the {self.backend} engine has no fused GPU path")

    def run_fused_frames(self, frames: list, alpha: float = 0.5, mode: str = "overlay") -> list:
        """fused engines: several frames (up to batch_limit) -> their overlays, in order."""
        return [self.run_fused(frame, alpha, mode) for frame in frames]

    def run_fused_counts(self, frames: list, cells: list, num_cells: int, alpha: float = 0.5,
                         mode: str = "overlay") -> tuple[list, list]:
        """fused_counts engines: frames and one uint8 cell map per frame at the label size
        (info.input_size; app/analytics/zones.py's Raster.cells, values < num_cells) ->
        (overlays, uint32 [num_cells, num_classes] label counts per frame), both in order;
        the counts equal app/analytics/coverage.py's cell_histogram of the frame's labels."""
        raise NotImplementedError(f"the {self.backend} engine counts no labels on the device")

    def submit(self, batch: np.ndarray) -> Future:
        """asynchronous engines: send `batch`; the Future's result goes through labels_of()."""
        raise NotImplementedError(f"the {self.backend} engine runs synchronously: call infer()")

    def labels_of(self, output: np.ndarray) -> np.ndarray:
        """What submit's Future gives -> labels [N, H, W]."""
        return output

    def counters(self) -> dict:
        return {}

    def close(self) -> None:
        pass

    def describe(self) -> str:
        h, w = self.info.input_size
        batch = "" if self.info.batch == 1 and not self.info.dynamic_batch else \
            (f" batch dynamic{f' (max {self.info.max_batch})' if self.info.max_batch else ''}"
             if self.info.dynamic_batch else f" batch {self.info.batch}")
        return f"{self.backend} {self.info.model} {self.info.precision} input {h}x{w} head={self.info.head}{batch}"


# What an engine object written without this base class may bring of its own (see as_engine).
CAPABILITIES = ("preprocess", "input_dtype", "backend", "name", "batch_limit", "run_fused", "run_fused_frames", "run_fused_counts",
                "submit", "labels_of", "counters", "close", "describe")


def as_engine(engine) -> Engine:
    """`engine` itself when it derives from Engine; otherwise (an object with `info` and
    `infer`, and maybe some of CAPABILITIES) an Engine that uses what it has and the defaults
    for the rest. Such an object takes one frame per call unless it has batch_limit; it is
    fused when it has run_fused or run_fused_frames, asynchronous when it has submit."""
    if isinstance(engine, Engine):
        return engine
    return _Adopted(engine)


class _Adopted(Engine):
    def __init__(self, inner):
        own = {name: getattr(inner, name) for name in CAPABILITIES if hasattr(inner, name)}
        self.info, self.infer = inner.info, inner.infer
        self.batch_limit = lambda cameras: 1
        vars(self).update(own)   # instance attributes: they take the place of the defaults
        self.fused = "run_fused" in own or "run_fused_frames" in own
        self.fused_counts = self.fused and "run_fused_counts" in own
        self.asynchronous = "submit" in own


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """`batch` ([n, ...]) with zero frames after it up to `size` frames (itself when n >= size):
    what a graph of a fixed batch takes; the padding's outputs are thrown away."""
    n = len(batch)
    return batch if n >= size else np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])


def labels_from(output: np.ndarray, output_name: str) -> np.ndarray:
    """A graph's output -> labels [N, H, W]: itself for a `labels` head (argmax in the graph),
    the argmax over the classes of a `logits` head."""
    return output if output_name == "labels" else np.argmax(output, axis=1).astype(np.int32)


def run_static_batch(run, batch: np.ndarray, size: int) -> np.ndarray:
    """Run `batch` ([n, ...]) through `run`, a graph that takes exactly `size` frames: in
    chunks of `size`, the last one padded with zeros (their outputs are thrown away)."""
    n = len(batch)
    if n == size:
        return run(batch)
    return np.concatenate([run(pad_batch(batch[i:i + size], size))[:min(size, n - i)] for i in range(0, n, size)])


class GraphEngine(Engine):
    """An exported graph (ONNX Runtime, OpenVINO) whose one output is `labels` (argmax in the
    graph) or `logits`: subclasses set `output_name` and implement `_run(batch) -> output`."""

    output_name = "labels"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_frames(self, batch: np.ndarray) -> np.ndarray:
        """Any number of frames (several cameras): a dynamic-batch graph takes them at once,
        a static one in chunks of its batch size (padded)."""
        if self.info.dynamic_batch:
            return self._run(batch)
        return run_static_batch(self._run, batch, self.info.batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.labels_of(self._run_frames(batch))

    def labels_of(self, output: np.ndarray) -> np.ndarray:
        return labels_from(output, self.output_name)

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        if self.output_name != "logits":
            return super().infer_logits(batch)
        return self._run_frames(batch)


def check_graph_io(path, info: ModelInfo, output_name: str, input_shape, output_shape=()) -> None:
    """The graph an ONNX-reading backend loaded must match its sidecar: output `labels` or
    `logits` as the sidecar's head says, a static input of the sidecar's size, and logits
    with one channel per class of the sidecar."""
    from core.validate import check_output_channels

    if output_name not in ("labels", "logits"):
        raise SidecarError(f"{path}: output {output_name!r} is neither labels nor logits; "
                           "re-export it with `bisenet export`")
    dims = list(input_shape)[2:]
    static = all(isinstance(d, int) and d > 0 for d in dims)
    if static and tuple(dims) != tuple(info.input_size):
        raise SidecarError(f"{path}: graph input is {dims[0]}x{dims[1]} but its sidecar says "
                           f"{info.input_size[0]}x{info.input_size[1]}; re-export it with `bisenet export`")
    first = list(input_shape)[0] if len(input_shape) else None
    graph_batch = first if isinstance(first, int) and first > 0 else None
    if info.dynamic_batch and graph_batch is not None or \
            not info.dynamic_batch and graph_batch not in (None, info.batch):
        want = "any batch" if info.dynamic_batch else f"batch {info.batch}"
        raise SidecarError(f"{path}: graph input batch is {graph_batch or 'dynamic'} but its sidecar says "
                           f"{want}; re-export it with `bisenet export`")
    if output_name == "logits" and len(output_shape) == 4:
        check_output_channels(output_shape[1], info.num_classes, str(path), "re-export it with `bisenet export`")
    if output_name != info.head:
        raise SidecarError(f"{path}: graph outputs {output_name} but its sidecar says "
                           f"{info.head}; re-export it with `bisenet export`")
