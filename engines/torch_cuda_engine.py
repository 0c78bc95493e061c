"""The fused GPU frame path without TensorRT: a PyTorch network on CUDA between the CUDA kernels.

    eng = TorchCudaEngine(load_model_config("bisenetv1_r18-d32_camvid-360x480"), "camvid.pth")
    overlays = eng.run_fused_frames([frame_cam0, frame_cam1, frame_cam2])   # uint8 in, uint8 out
    labels = eng.infer(batch)                                              # the Engine interface

The same chain as TensorRTEngine's (engines/fused_chain.py), with PyTorch as the network: the cameras'
uint8 BGR frames go up once (one copy from page-locked memory), engines/preprocess.cu writes
the normalized tensor straight into the network's input tensor (a torch tensor: the kernels
take its device pointer, no host copy and no CuPy copy), the network runs, engines/overlay.cu's
argmax reduces the logits to labels and its overlay kernel blends them into the frames still
on the GPU, and the overlays come down once. Same-size frames go through together, up to
`max_batch` in one launch of each kernel and one network call.

- fp32: TF32 off (fp32 means fp32: the labels equal the CPU pipeline's on >= 99.9% of pixels).
  fp16: half weights, and the preprocess kernel writes float16 input directly (no cast).
  Either way channels-last (NHWC convolutions, what the tensor cores want).
- CUDA graphs (cuda_graph=True): the whole chain, copies included, is captured per frame size
  and batch size with torch.cuda.graph and replayed; a chain that cannot be captured runs
  eagerly from then on (one log line).
- One stream: a torch stream (non-blocking, from torch's pool); CuPy launches the kernels on
  it through cupy.cuda.ExternalStream, so network and kernels are ordered without syncs.
- Contexts: torch and CuPy both use the CUDA runtime, hence device 0's primary context in
  every thread (docs/gpu.md); the engine is made in one thread and run in the pipeline's.

The planning (precision -> dtypes, buffer shapes; the chain's frame grouping) is plain Python,
tested without a GPU; importing this module imports neither torch nor CuPy.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from core.errors import BisenetError, InputError
from engines.base import ModelInfo
from engines.fused_chain import LABELS, CudaGraphs, FusedChain, FusedEngine, Network, staging_buffers

PRECISIONS = ("fp32", "fp16")
DEFAULT_MAX_BATCH = 8
MAX_BATCH = 64


class CudaUnavailable(BisenetError, RuntimeError):
    """This machine cannot run the CUDA engine; the message names what to install (exit 2)."""


@dataclass(frozen=True)
class CudaPlan:
    """What the engine allocates and how it runs, decided before anything touches the GPU."""

    precision: str
    input_size: tuple          # (H, W) of the network input
    num_classes: int
    max_batch: int

    @property
    def input_dtype(self):
        """What the preprocess kernel writes: the network's own dtype (half weights take half input)."""
        return np.dtype(np.float16 if self.precision == "fp16" else np.float32)

    def buffers(self) -> dict:
        """The engine's shared device buffers: name -> (shape, dtype), room for max_batch frames."""
        h, w = self.input_size
        n = self.max_batch
        return {"input": ((n, 3, h, w), self.input_dtype),
                "logits": ((n, self.num_classes, h, w), np.dtype(np.float32)),   # what the argmax kernel reads
                "labels": ((n, h, w), np.dtype(np.int32))}

    def frame_buffers(self, frame_hw, mode: str, num_cells: int = 0) -> dict:
        """The fused chain's staging buffers of one frame size and mode: name -> (shape, dtype)."""
        return staging_buffers(self.max_batch, frame_hw, self.input_size, mode, num_cells, self.num_classes)


def plan_engine(cfg, input_size=None, precision: str = "fp32", max_batch: int = DEFAULT_MAX_BATCH) -> CudaPlan:
    """Check the choices in one line each, before torch or the GPU is touched."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: the CUDA engine runs {' or '.join(PRECISIONS)}")
    h, w = (int(v) for v in (input_size or cfg.crop_size))
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise InputError(f"input size {h}x{w}: H and W must be positive multiples of 32 (BiSeNetV1 downsamples "
                         "by 32)")
    if not 1 <= int(max_batch) <= MAX_BATCH:
        raise InputError(f"max batch {max_batch}: the CUDA engine takes 1 to {MAX_BATCH} frames per launch")
    return CudaPlan(precision, (h, w), int(cfg.num_classes), int(max_batch))


def cuda_device_index(device: str) -> int:
    """'cuda' or 'cuda:0' -> 0. The kernels live in device 0's primary context (engines/cuda_context.py)."""
    text = str(device).strip().lower()
    if text in ("cuda", "cuda:0", "gpu"):
        return 0
    raise InputError(f"--device {device}: the CUDA engine runs on device 0 (use --device cuda; pick the GPU "
                     "with CUDA_VISIBLE_DEVICES)")


def require_torch_cuda():
    """torch with a usable GPU, or one line naming what to install."""
    try:
        import torch
    except ImportError:
        raise CudaUnavailable("--device cuda needs PyTorch with CUDA: pip install torch (a CUDA build, see "
                              "https://pytorch.org/get-started/locally), or run on the CPU without --device cuda") from None
    if torch.version.cuda is None:
        raise CudaUnavailable(f"--device cuda needs a CUDA build of PyTorch, this is torch {torch.__version__} (CPU "
                              "only): pip install torch --index-url https://download.pytorch.org/whl/cu126, or run "
                              "without --device cuda")
    if not torch.cuda.is_available():
        raise CudaUnavailable(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check the NVIDIA "
                              "driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or run without --device cuda")
    return torch


def cupy_package(torch_cuda_version: str | None) -> str:
    """The CuPy wheel that matches torch's CUDA major version."""
    major = str(torch_cuda_version or "12").split(".")[0]
    return f"cupy-cuda{major}x"


def require_cupy(torch):
    """The kernels' CuPy binding (NVRTC, the runtime's streams), or one line naming the wheel."""
    try:
        import cupy
    except ImportError:
        raise CudaUnavailable(f"--device cuda runs the CUDA kernels through CuPy: pip install "
                              f"{cupy_package(torch.version.cuda)}") from None
    return cupy


class TorchCudaEngine(FusedEngine):
    backend = "pytorch-cuda"

    def __init__(self, cfg, checkpoint=None, input_size=None, device: str = "cuda", precision: str = "fp32",
                 max_batch: int = DEFAULT_MAX_BATCH, cuda_graph: bool = True, random_init: bool = False,
                 model=None):
        """model: an eval-mode BiSeNetV1 already built for `cfg` (else from `checkpoint`)."""
        self.plan = plan_engine(cfg, input_size, precision, max_batch)
        cuda_device_index(device)
        torch = require_torch_cuda()
        self.cupy = require_cupy(torch)
        from engines.cuda_kernels import CudaKernels
        from engines.export import build_model

        self.torch = torch
        self.checkpoint = None
        if model is None:
            model, _, self.checkpoint = build_model(cfg, checkpoint, random_init)
        self.kernels = CudaKernels("cupy")       # the primary context's runtime streams, as torch's
        self.input_dtype = self.plan.input_dtype
        info = ModelInfo.from_model_config(cfg, self.plan.input_size)
        info.precision, info.dynamic_batch, info.max_batch = precision, True, self.plan.max_batch
        self.info = info
        self._lock = threading.Lock()          # the shared buffers: one chain at a time
        self.dev = torch.device("cuda", 0)
        torch.backends.cudnn.allow_tf32 = False          # fp32 means fp32 (TF32 would flip labels)
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.cuda.device(0):
            self.model = model.eval().to(self.dev, dtype=torch.float16 if precision == "fp16" else torch.float32,
                                         memory_format=torch.channels_last)
            self.stream = torch.cuda.Stream(self.dev)   # torch's pool streams are non-blocking
            self.kernel_stream = self.cupy.cuda.ExternalStream(self.stream.cuda_stream)
            self.buf = {name: torch.empty(shape, dtype=self._torch_dtype(dtype), device=self.dev)
                        for name, (shape, dtype) in self.plan.buffers().items()}
        self.gpu_name = torch.cuda.get_device_name(0)
        self.graphs = CudaGraphs(cuda_graph, self._capture, self.stream.synchronize, "pytorch-cuda",
                                 "the fused chain")
        self.chain = FusedChain(
            TorchDevice(torch, self.cupy, self.dev, self.kernel_stream, self._torch_dtype),
            Network(self.buf["input"].data_ptr(), self.input_dtype, self.plan.input_size,
                    self.buf["logits"].data_ptr(), np.dtype(np.float32), self.plan.input_size, run=self._network),
            info, self.plan.max_batch, self.graphs, lambda: self.kernels, "the CUDA engine")

    use_cuda_graph = property(lambda self: self.graphs.on)

    def _torch_dtype(self, dtype):
        t = self.torch
        # uint32 (the zone counts): int32 on the device, the same bytes; only zeroed and copied there
        return {np.dtype(np.float32): t.float32, np.dtype(np.float16): t.float16, np.dtype(np.int32): t.int32,
                np.dtype(np.uint32): t.int32, np.dtype(np.uint8): t.uint8}[np.dtype(dtype)]

    # -- the network between the kernels --------------------------------------------------------
    def _network(self, n: int) -> None:
        """input[:n] -> logits[:n] (float32, NCHW contiguous, what the argmax kernel reads)."""
        x = self.buf["input"][:n].contiguous(memory_format=self.torch.channels_last)
        self.buf["logits"][:n].copy_(self.model(x))

    def _argmax(self, n: int) -> None:
        h, w = self.plan.input_size
        self.kernels.argmax(self.buf["logits"].data_ptr(), self.plan.num_classes, h * w,
                            self.buf["labels"].data_ptr(), self.kernel_stream, frames=n)

    # -- the Engine interface (host arrays in and out) ----------------------------------------------
    def _host_chunks(self, batch: np.ndarray, step):
        want = (3, *self.plan.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise ValueError(f"the CUDA engine takes [N, {', '.join(map(str, want))}] input, got {batch.shape}")
        torch, cap = self.torch, self.plan.max_batch
        outs = []
        with self._on_gpu():
            for i in range(0, len(batch), cap):
                part = np.ascontiguousarray(batch[i:i + cap], dtype=self.input_dtype)
                n = len(part)
                self.buf["input"][:n].copy_(torch.from_numpy(part))
                self._network(n)
                outs.append(step(n))
            self.stream.synchronize()
        return np.concatenate([o.cpu().numpy() for o in outs])

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        return self._host_chunks(batch, lambda n: self.buf["logits"][:n].clone())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        def labels(n):
            self._argmax(n)                    # the numpy first-maximum rule, on the device
            return self.buf["labels"][:n].clone()
        return self._host_chunks(batch, labels)

    # -- the fused path (engines/fused_chain.py): PyTorch runs the network -------------------------------
    @contextmanager
    def _on_gpu(self):
        torch = self.torch
        with self._lock, torch.cuda.device(0), torch.cuda.stream(self.stream), torch.no_grad():
            yield

    def run_fused_labels(self, frames: list) -> list:
        """The fused chain up to the argmax kernel: labels [H, W] int32 at the network size per frame
        (what the device check compares with the CPU pipeline)."""
        return [out for out, _ in self._fused(frames, 0.0, LABELS)]

    def _capture(self, work):
        """A CUDA graph of `work` on the engine's stream: its replay."""
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            work()
        return graph.replay

    def close(self) -> None:
        """Drop the graphs and buffers (from whichever thread calls)."""
        with self._lock:
            self.chain.close()
            self.buf = {}
            self.model = None

    def describe(self) -> str:
        graphs = " CUDA graphs" if self.use_cuda_graph else ""
        return f"{super().describe()} channels-last{graphs} on {self.gpu_name}"


class TorchDevice:
    """The fused chain's memory calls: page-locked host memory from CuPy, device buffers from torch
    (its allocator, as the network's), copies through the CUDA runtime on the kernels' stream."""

    def __init__(self, torch, cupy, dev, stream, torch_dtype):
        self.torch, self.cupy, self.runtime = torch, cupy, cupy.cuda.runtime
        self.dev, self.stream, self.torch_dtype = dev, stream, torch_dtype

    def pinned(self, shape, dtype) -> np.ndarray:
        count = int(np.prod(shape))
        mem = self.cupy.cuda.alloc_pinned_memory(count * np.dtype(dtype).itemsize)
        return np.frombuffer(mem, dtype, count).reshape(shape)   # the array keeps `mem` alive

    def alloc(self, shape, dtype):
        return self.torch.empty(shape, dtype=self.torch_dtype(dtype), device=self.dev)

    @staticmethod
    def ptr(tensor) -> int:
        return tensor.data_ptr()

    def up(self, dst: int, host: np.ndarray) -> None:
        self.runtime.memcpyAsync(dst, host.ctypes.data, host.nbytes, self.runtime.memcpyHostToDevice, self.stream.ptr)

    def down(self, host: np.ndarray, src: int) -> None:
        self.runtime.memcpyAsync(host.ctypes.data, src, host.nbytes, self.runtime.memcpyDeviceToHost, self.stream.ptr)

    def zero(self, dst: int, nbytes: int) -> None:
        self.runtime.memsetAsync(dst, 0, nbytes, self.stream.ptr)


def load_torch_cuda_engine(model: str, checkpoint=None, input_size=None, device: str = "cuda",
                           precision: str | None = None, backend: str | None = None) -> TorchCudaEngine:
    """`--model <zoo name | model YAML> [--checkpoint X] --device cuda [--precision fp16]` (engines/load.py)."""
    if backend:
        raise InputError(f"--backend {backend} chooses an ONNX backend; --device cuda runs the model with "
                         "PyTorch on the GPU (drop one of them)")
    from core.model_config import load_model_config
    cfg = load_model_config(model)
    plan_engine(cfg, input_size, precision or "fp32")   # bad choices: one line, before torch
    require_torch_cuda()
    return TorchCudaEngine(cfg, checkpoint, input_size, device, precision or "fp32")
