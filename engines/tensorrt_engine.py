"""TensorRT backend behind the Engine interface, on pycuda buffers and its own CUDA stream.

    eng = TensorRTEngine("model.fp16.engine")
    labels = eng.infer(batch)                       # host in, host out (the Engine interface), N frames
    out_bgr = eng.run_fused(frame_bgr, mode="overlay")   # uint8 in, uint8 out, nothing else crosses PCIe

The fused path (engines/fused_chain.py, the chain both GPU engines share; TensorRT is its
network here): the uint8 BGR frame goes up once into a page-locked staging buffer's device
twin; engines/preprocess.cu writes the normalized tensor straight into TensorRT's input
binding; TensorRT runs; for a logits head engines/overlay.cu's argmax reduces to labels on
the GPU; the overlay kernel blends with the frame still on the GPU; the uint8 result comes
down once. With cuda_graph=True the whole chain (both copies included: page-locked buffers
keep fixed addresses) is captured once per frame size and replayed; an engine that cannot be
captured falls back to plain enqueue (one log line).

Batches: an engine built from a dynamic-batch ONNX (`bisenet build --max-batch N`: a profile
over batch 1..N) takes 1 to N frames per inference (set_input_shape with the batch; more are
run in chunks of N); a fixed-batch engine takes its own batch (fewer frames are padded).
`run_fused_frames(frames)` does the same on the fused path: same-size frames, up to the
engine's batch at a time, in one launch of each kernel and one enqueue. The pipeline gives
either up to `batch_limit(cameras)` frames. With cuda_graph=True a dynamic-batch engine keeps
the graphs of one batch size at a time (a graph fixes the context's shapes): a change of batch
size recaptures.

One named-tensor path for TensorRT 8.6, 10.x and 11.x (set_input_shape, set_tensor_address,
execute_async_v3: all in 8.6 already). Every public call runs inside CUDA's primary context
(engines.cuda_context), so the engine can be made in one thread and run in another, as the
app's pipeline does. No torch on this path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.base import ModelInfo, run_static_batch
from core.errors import MissingFileError, SetupError
from core.sidecar import read_sidecar
from engines.fused_chain import CudaGraphs, FusedChain, FusedEngine, Network
from engines.fingerprint import Fingerprint, MachineProbe, check_fingerprint, check_or_rebuild
from engines.tensorrt_api import import_tensorrt, tensorrt_api, tensorrt_logger

PYCUDA_HINT = "the TensorRT backend needs pycuda: pip install pycuda (on Jetson, with JetPack's CUDA on PATH)"


def check_engine_sidecar(meta: dict, engine_path, tensorrt_version: str, gpu_name: str,
                         compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU: one line with the rebuild command
    (the rule, with CUDA and the driver too: engines/fingerprint.py)."""
    check_fingerprint(meta, engine_path, Fingerprint(tensorrt_version=str(tensorrt_version), gpu_name=str(gpu_name),
                                                     compute_capability=str(compute_capability)))


class TensorRTEngine(FusedEngine):
    backend = "tensorrt"

    def __init__(self, engine_path, cuda_graph: bool = False, check: bool = True, rebuild: bool = False):
        """rebuild: an engine built for another TensorRT/CUDA/GPU is rebuilt here from its ONNX."""
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise MissingFileError(f"no TensorRT engine {self.path}: build one with `bisenet build`")
        meta = read_sidecar(self.path, rebuild_hint="rebuild it with `bisenet build --onnx model.onnx -o "
                                                    f"{self.path}`")
        trt = import_tensorrt()
        tensorrt_api(trt.__version__)          # a version this code was not written for: one line now
        try:
            from engines.cuda_context import PrimaryContext
            self.cuda_context = PrimaryContext("pycuda")   # CUDA's primary context, shared with TensorRT
        except ImportError:
            raise SetupError(PYCUDA_HINT) from None
        from engines.cuda_kernels import NON_BLOCKING
        if check:   # the whole fingerprint; with rebuild, a mismatch is rebuilt here
            from engines.tensorrt_build import build_engine
            meta = check_or_rebuild(meta, self.path, MachineProbe(trt), rebuild, build=build_engine)
        self.trt, self.cuda, self.meta = trt, self.cuda_context.cuda, meta
        self.info = ModelInfo.from_sidecar(meta)
        self._batch_now = None      # the batch size the context is set to (dynamic-batch engines)
        self._kernels = None
        with self.cuda_context:
            self.runtime = trt.Runtime(tensorrt_logger(trt))
            if meta.get("dla_core") is not None:
                self.runtime.DLA_core = int(meta["dla_core"])
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise SetupError(f"TensorRT could not load {self.path} (see its log above); rebuild it: "
                                   f"{meta.get('build_command', 'bisenet build ...')}")
            self.context = self.engine.create_execution_context()
            # Non-blocking: no implicit sync with the legacy default stream, which a CUDA graph
            # capture on this stream would not survive.
            self.stream = self.cuda.Stream(flags=NON_BLOCKING)
            self._allocate(tuple(meta["input_shape"]))
        # Graphs of infer() (key ("host", n)) and of the fused chain, one CUDA-graph switch for both.
        self.graphs = CudaGraphs(cuda_graph, self._capture, lambda: self.stream.synchronize(), "tensorrt",
                                 self.path.name)
        self.chain = FusedChain(
            PycudaDevice(self.cuda, self.stream),
            Network(int(self.buffers[self.input_name][1]), self.input_dtype, tuple(self.input_shape[-2:]),
                    int(self.buffers[self.output_name][1]), self.output_dtype, tuple(self.output_shape[-2:]),
                    run=lambda n: self._execute(),
                    prepare=self._set_batch if self.info.dynamic_batch else None),
            self.info, self.input_shape[0], self.graphs, self._chain_kernels, self.path.name)

    use_cuda_graph = property(lambda self: self.graphs.on)

    # -- buffers -------------------------------------------------------------------------------
    def _io(self):
        """[(name, is_input, shape, numpy dtype)] in the engine's order."""
        trt, e = self.trt, self.engine
        return [(n, e.get_tensor_mode(n) == trt.TensorIOMode.INPUT, tuple(e.get_tensor_shape(n)),
                 np.dtype(trt.nptype(e.get_tensor_dtype(n))))
                for n in (e.get_tensor_name(i) for i in range(e.num_io_tensors))]

    def _allocate(self, input_shape):
        cuda, ctx = self.cuda, self.context
        io = self._io()
        inputs = [t for t in io if t[1]]
        if len(inputs) != 1:
            raise SetupError(f"{self.path}: expected one input tensor, found {len(inputs)}; rebuild from a "
                               "`bisenet export` ONNX")
        name, _, shape, _ = inputs[0]
        if any(d < 0 for d in shape):          # dynamic engine: run it at the sidecar's (opt) shape
            if not ctx.set_input_shape(name, input_shape):
                raise SetupError(f"{self.path}: TensorRT refused input shape {input_shape} (outside the "
                                   "engine's profile); rebuild it with matching --shapes")
        self.buffers = {}                      # name -> (page-locked host array, device allocation)
        for name, is_input, shape, dtype in io:
            shape = tuple(ctx.get_tensor_shape(name))
            host = cuda.pagelocked_empty(shape, dtype)
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            self.buffers[name] = (host, dev)
            ctx.set_tensor_address(name, int(dev))
            if is_input:
                self.input_name, self.input_shape, self.input_dtype = name, shape, dtype
            else:
                self.output_name, self.output_shape, self.output_dtype = name, shape, dtype
        if self.input_dtype not in (np.float32, np.float16):
            raise SetupError(f"{self.path}: input is {self.input_dtype}; the preprocess writes float32 or float16")

    def _set_batch(self, n: int) -> None:
        """A dynamic-batch engine runs the next enqueue at n frames (its buffers hold the most).
        A CUDA graph fixes the shapes its context had at capture, so a new batch size drops the
        graphs of the old one: steady full batches replay, a change recaptures once."""
        if n == self._batch_now:
            return   # the context already has this shape
        self.graphs.clear()
        if not self.context.set_input_shape(self.input_name, (n, *self.input_shape[1:])):
            raise RuntimeError(f"{self.path}: TensorRT refused batch {n} (outside the engine's profile, batch 1.."
                               f"{self.input_shape[0]}); rebuild it with a larger --max-batch")
        self._batch_now = n

    def _execute(self):
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT failed to run {self.path.name} (see its log above)")

    def _capture(self, work):
        """A CUDA graph of `work` on the engine's stream: its launch."""
        from engines.cuda_kernels import CudaGraph
        return CudaGraph(self.stream.handle, work, self.cuda_context).launch

    # -- the Engine interface (host arrays in and out) -----------------------------------------------
    def _run_host(self, batch: np.ndarray) -> np.ndarray:
        """n frames, n up to the buffers' batch: a dynamic-batch engine runs at n, a fixed one
        gets exactly its batch (run_static_batch pads)."""
        n = len(batch)
        host_in, dev_in = self.buffers[self.input_name]
        host_out, dev_out = self.buffers[self.output_name]
        if self.info.dynamic_batch:
            self._set_batch(n)
        part_in, part_out = host_in[:n], host_out[:n]   # the first n frames: fixed addresses per n
        np.copyto(part_in, batch, casting="same_kind")

        def work():
            self.cuda.memcpy_htod_async(dev_in, part_in, self.stream)
            self._execute()
            self.cuda.memcpy_dtoh_async(part_out, dev_out, self.stream)

        self.graphs.run(("host", n), work)
        self.stream.synchronize()
        return part_out.copy()

    def _run_frames(self, batch: np.ndarray) -> np.ndarray:
        """Any number of frames: in chunks of the engine's batch (dynamic: up to it)."""
        size = self.input_shape[0]
        with self.cuda_context:
            if self.info.dynamic_batch:
                return np.concatenate([self._run_host(batch[i:i + size]) for i in range(0, len(batch), size)])
            return run_static_batch(self._run_host, batch, size)

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        want = tuple(self.input_shape[1:])
        if batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise ValueError(f"{self.path.name} takes [N, {', '.join(map(str, want))}] input, got {batch.shape}")
        return batch.astype(self.input_dtype, copy=False)

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        if self.info.head != "logits":
            return super().infer_logits(batch)
        return self._run_frames(self._check_batch(batch)).astype(np.float32, copy=False)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.info.head == "logits":
            return np.argmax(self.infer_logits(batch), axis=1).astype(np.int32)
        batch = self._check_batch(batch)
        labels = self._run_frames(batch)
        return labels.reshape(len(batch), *labels.shape[-2:]).astype(np.int32, copy=False)

    # -- the fused path (engines/fused_chain.py): TensorRT runs the network ------------------------------
    def _on_gpu(self):
        return self.cuda_context

    def _chain_kernels(self):
        if self._kernels is None:
            from engines.cuda_kernels import CudaKernels
            self._kernels = CudaKernels("pycuda")
        return self._kernels

    def close(self) -> None:
        """Free the GPU resources now, in the primary context (from whichever thread calls)."""
        if getattr(self, "engine", None) is None:
            return
        with self.cuda_context:
            self.chain.close()
            self._kernels = None
            self.buffers = {}
            self.context = self.engine = self.runtime = None
            self.stream = None

    def describe(self) -> str:
        return (super().describe() + f" TensorRT {self.meta.get('tensorrt_version')} "
                f"{'graph ' if self.use_cuda_graph else ''}on {self.meta.get('gpu_name')}")


class PycudaDevice:
    """The fused chain's memory calls through pycuda, async on the engine's stream."""

    def __init__(self, cuda, stream):
        self.cuda, self.stream = cuda, stream

    def pinned(self, shape, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def alloc(self, shape, dtype):
        return self.cuda.mem_alloc(max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1))

    @staticmethod
    def ptr(allocation) -> int:
        return int(allocation)

    def up(self, dst: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, host, self.stream)

    def down(self, host: np.ndarray, src: int) -> None:
        self.cuda.memcpy_dtoh_async(host, src, self.stream)

    def zero(self, dst: int, nbytes: int) -> None:
        self.cuda.memset_d32_async(dst, 0, nbytes // 4, self.stream)   # (dest, value, 32-bit words, stream)
