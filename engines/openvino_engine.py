"""OpenVINO engine (CPU): the same `.onnx` + sidecar as ONNX Runtime, precision always explicit.

    precision   fp32 model (export)              int8 model (QDQ from `bisenet calibrate`)
    fp32        every layer in f32               int8 layers, the float rest (tail) in f32
    bf16        every layer in bf16 (AMX/AVX512) int8 layers, the float rest in bf16

OpenVINO's CPU plugin picks bf16 by itself on CPUs that have it (its
INFERENCE_PRECISION_HINT default); this engine always sets the hint, so `fp32` means fp32
and bf16 is a choice (`--precision bf16`) whose accuracy cost is measured in BENCHMARKS.md.
A QDQ int8 model runs its quantized layers in int8 (VNNI / AMX) through OpenVINO's
low-precision transformations; the same file ONNX Runtime runs.

Every engine in a process compiles on one `ov.Core` (`shared_core`), kept until the process
ends. Each Core's CPU plugin points the creating thread's signal stack (sigaltstack) at a
buffer of its own and, when the plugin goes, unmaps that buffer and puts back the stack it
found. Two plugins released in the order they were made (an engine rebuilt while the old one
still exists, two engines dropped by the garbage collector) leave the thread's signal stack on
unmapped memory, and the next Python signal handler (Ctrl-C, SIGTERM, SIGHUP, torch's SIGCHLD
handler for DataLoader workers) kills the process with SIGSEGV, with no traceback.
One Core makes one plugin, so there is no second stack to release out of order.
tests/engines/test_openvino_signal_stack.py holds both: OpenVINO's behaviour and this engine's.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Annotated

import cv2
import numpy as np

from core.options import Rule, Section, option
from core.validate import Number, readable_file
from engines.base import GraphEngine, ModelInfo, check_graph_io, pad_batch
from core.errors import InputError, first_line
from core.sidecar import read_sidecar

PRECISIONS = ("fp32", "bf16")
HINT = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoOptions(Section):
    """The OpenVINO backend's options (flags of `bisenet run`, load_model keywords)."""
    ov_streams: Annotated[int | None, Rule(Number(int, 1, 64))] = option(
        None, "OpenVINO: inferences in flight at once, each on its share of the threads: 1 = one frame at a time on "
        "all of them (the least latency per frame), N = N frames at once (throughput: the pipeline's decode and "
        "preprocess no longer stall every thread of the one inference); default: in a run (bisenet run, the API's "
        "stream()) 2 on a CPU of 2 or more cores, else 1; a model loaded for your own infer() calls 1",
        group="model", metavar="N")


def run_streams(threads: int | None = None) -> int:
    """ov_streams' default in a run (app/session.py): 2 where there are 2 cores (or threads) to
    share. A model loaded for one infer() call at a time keeps 1: a single request in
    throughput mode runs on its stream's share of the threads only."""
    return 2 if (threads or os.cpu_count() or 1) >= 2 else 1


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError("the OpenVINO backend needs the openvino package: pip install openvino") from None
    return openvino


_core = None
_core_lock = threading.Lock()


def shared_core():
    """The process's one `ov.Core` (see the module docstring: a second Core's CPU plugin,
    released out of order, leaves a freed signal stack behind). Compile options go to
    compile_model, never to this Core, so engines sharing it stay independent."""
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def cpu_has_bf16(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEngine(GraphEngine):
    backend = "openvino"

    def __init__(self, path, precision: str | None = None, threads: int | None = None,
                 precision_reason: str | None = None, streams: int | None = None):
        core = shared_core()
        self.path = readable_file(path, "model", "export one with `bisenet export`")
        self.info = ModelInfo.from_sidecar(read_sidecar(self.path))
        compute = precision or "fp32"
        if compute not in PRECISIONS:
            raise InputError(f"--precision {compute!r}: OpenVINO takes {' or '.join(PRECISIONS)}")
        if compute == "bf16" and not cpu_has_bf16(core):
            raise InputError(f"--precision bf16: this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no "
                             "bf16 support in OpenVINO; use --precision fp32")
        try:
            model = core.read_model(str(self.path))
        except Exception as e:  # OpenVINO raises its own RuntimeError subclasses with long text
            first = first_line(e)
            raise InputError(f"OpenVINO cannot read {self.path}: {first}") from None
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise InputError(f"{self.path}: expected one input and one output, got "
                               f"{len(model.inputs)} and {len(model.outputs)}; re-export it with `bisenet export`")
        shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
        self.output_name = model.outputs[0].get_any_name()
        out_shape = [d.get_length() if d.is_static else None for d in model.outputs[0].get_partial_shape()]
        check_graph_io(self.path, self.info, self.output_name, shape, out_shape)
        self.streams = int(streams or 1)
        if self.streams < 1:
            raise InputError(f"--ov-streams {self.streams}: use 1 or more")
        # One stream: one inference at a time on every thread (latency). Several: that many
        # requests in flight, each on its own threads (throughput); submit() keeps them busy.
        self._config = {"INFERENCE_PRECISION_HINT": HINT[compute],
                        "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT"}
        if self.streams > 1:
            self._config["NUM_STREAMS"] = self.streams
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._model, self._lock, self._kinds = model, threading.Lock(), {}
        self.asynchronous = self.streams > 1   # the pipeline then submits (app/pipeline.py AsyncInference)
        # The app's input (preprocess(): uint8 BGR images) compiles now, so a model OpenVINO
        # cannot build fails at load; normalized float tensors compile on first use.
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        # What runs, in words: one float precision throughout (fp32 / bf16), or the model's
        # own (int8 layers, an fp16 export) + the precision of the rest ("int8+fp32").
        model_precision = self.info.precision
        self.info.precision = compute if model_precision == "fp32" else f"{model_precision}+{compute}"
        self.precision_reason = precision_reason   # why this precision (engines/precision.py)

    # ---- two inputs: the app's uint8 images, or normalized float tensors --------------------
    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """One uint8 BGR image -> [1, H, W, 3] uint8 at the input size (OpenCV's INTER_LINEAR
        resize, as core/preprocess.py's): the graph converts, swaps to RGB and normalizes it
        itself, on its own threads (bench/pipeline.py: faster than the float tensor it replaces,
        whose 4-byte pixels OpenVINO then copies and quantizes)."""
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"preprocess takes a uint8 BGR HxWx3 image, got {bgr.dtype} {bgr.shape}")
        h, w = self.info.input_size
        image = bgr if bgr.shape[:2] == (h, w) else cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(image)[None]

    def _kind(self, images: bool) -> "_Compiled":
        """The model compiled for uint8 BGR images [N, H, W, 3] (the normalization in the graph)
        or for core/preprocess.py's float tensors [N, 3, H, W]; each compiled on first use. Both
        output labels as uint8 when there are 256 classes or fewer."""
        kind = self._kinds.get(images)   # compiled already: no lock on every frame's way
        if kind is not None:
            return kind
        with self._lock:
            kind = self._kinds.get(images)
            if kind is None:
                ov = import_openvino()
                from openvino.preprocess import ColorFormat, PrePostProcessor

                model = self._model.clone()
                ppp = PrePostProcessor(model)
                if images:
                    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
                        .set_color_format(ColorFormat.BGR)
                    ppp.input().model().set_layout(ov.Layout("NCHW"))
                    ppp.input().preprocess().convert_element_type().convert_color(ColorFormat.RGB) \
                        .mean([float(v) for v in self.info.mean]).scale([float(v) for v in self.info.std])
                if self.output_name == "labels" and len(self.info.class_names) <= 256:
                    ppp.output().tensor().set_element_type(ov.Type.u8)
                kind = self._kinds[images] = _Compiled(shared_core().compile_model(ppp.build(), "CPU", self._config),
                                                       self.streams if self.asynchronous else 0, self._done)
            return kind

    @property
    def compiled(self):
        """The compiled model the app runs (uint8 images in)."""
        return self._kind(True).compiled

    def _input(self, batch: np.ndarray) -> tuple["_Compiled", np.ndarray]:
        """-> the compiled model for `batch` (uint8 images or float tensors), and `batch` as it
        takes it (contiguous; a tensor as float32)."""
        images = batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] == 3
        x = np.ascontiguousarray(batch) if images else np.ascontiguousarray(batch, dtype=np.float32)
        return self._kind(images), x

    def _run(self, batch: np.ndarray) -> np.ndarray:
        kind, x = self._input(batch)
        kind.request.infer({0: x})
        # The request reuses its output buffer on the next call: hand out a copy.
        return kind.request.get_output_tensor(0).data.copy()

    # ---- several requests in flight (ov_streams >= 2) -------------------------------------
    def submit(self, batch: np.ndarray) -> Future:
        """Start one request; the Future's result goes through labels_of(). Blocks while every
        stream is busy. A static-batch graph takes up to its batch (padded with zeros)."""
        n = len(batch)
        if not self.info.dynamic_batch and n > self.info.batch:
            raise ValueError(f"{n} frames for a graph of batch {self.info.batch}")
        kind, x = self._input(batch)
        if not self.info.dynamic_batch:
            x = pad_batch(x, self.info.batch)
        if kind.queue is None:
            raise NotImplementedError("this OpenVINO engine runs one request at a time (ov_streams 1): call infer()")
        future = Future()
        future.set_running_or_notify_cancel()
        kind.free.acquire()
        try:
            kind.queue.start_async({0: x}, (future, n, kind.free))
        except BaseException:
            kind.free.release()
            raise
        return future

    @staticmethod
    def _done(request, userdata) -> None:
        """OpenVINO's callback (its own thread): the output, copied out of the request's buffer."""
        future, n, free = userdata
        try:
            future.set_result(request.get_output_tensor(0).data[:n].copy())
        except Exception as e:   # a failed request: the frame is dropped by the pipeline
            future.set_exception(e)
        finally:
            free.release()

    def describe(self) -> str:
        why = f" ({self.precision_reason})" if self.precision_reason else ""
        streams = f" streams={self.streams}" if self.streams > 1 else ""
        return f"{super().describe()} threads={self.threads}{streams}{why}"

    def close(self) -> None:
        for kind in list(self._kinds.values()):
            if kind.queue is not None:
                kind.queue.wait_all()   # no callback may run on a closed engine
        super().close()


class _Compiled:
    """One compiled model and what runs it: a request for infer(), and for submit() (streams
    >= 2) an AsyncInferQueue of `streams` requests with a semaphore counting the free ones."""

    def __init__(self, compiled, streams: int, done):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.queue = self.free = None
        if streams:
            self.queue = import_openvino().AsyncInferQueue(compiled, streams)
            self.queue.set_callback(done)
            self.free = threading.Semaphore(streams)
