"""The fused GPU frame path without TensorRT: a PyTorch network on CUDA between the CUDA kernels.

    eng = TorchCudaEngine(load_model_config("bisenetv1_r18-d32_camvid-360x480"), "camvid.pth")
    overlays = eng.run_fused_frames([frame_cam0, frame_cam1, frame_cam2])   # uint8 in, uint8 out
    labels = eng.infer(batch)                                              # the Engine interface

The same chain as TensorRTEngine.run_fused_frames, with PyTorch as the network: the cameras'
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

The planning (precision -> dtypes, buffer shapes, frame grouping) is plain Python, tested
without a GPU; importing this module imports neither torch nor CuPy.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np

from core.errors import BisenetError, InputError, first_line
from engines.base import Engine, ModelInfo

PRECISIONS = ("fp32", "fp16")
DEFAULT_MAX_BATCH = 8
MAX_BATCH = 64
LABELS = "labels"           # the fused chain's mode that downloads the labels instead of an overlay


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
        """The staging buffers of one frame size and mode: name -> (shape, dtype); num_cells > 0
        adds the zone cell maps (up) and their [cells x classes] counts (down): run_fused_counts."""
        fh, fw = frame_hw
        n = self.max_batch
        out = (n, *self.input_size) if mode == LABELS else (n, fh, 2 * fw if mode == "side-by-side" else fw, 3)
        buffers = {"frames": ((n, fh, fw, 3), np.dtype(np.uint8)),
                   "out": (out, np.dtype(np.int32 if mode == LABELS else np.uint8))}
        if num_cells:
            buffers["cells"] = ((n, *self.input_size), np.dtype(np.uint8))
            buffers["counts"] = ((n, num_cells * self.num_classes), np.dtype(np.uint32))
        return buffers


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


def group_frames(frames, cap: int) -> list:
    """[(frame (h, w), [frame indices])] in order: frames of one size together, at most `cap` a group."""
    groups = {}
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"run_fused takes uint8 BGR HxWx3 frames, got "
                             f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}")
        groups.setdefault(f.shape[:2], []).append(i)
    return [(hw, idx[i:i + cap]) for hw, idx in groups.items() for i in range(0, len(idx), cap)]


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


class TorchCudaEngine(Engine):
    backend = "pytorch-cuda"
    fused = True           # run_fused / run_fused_frames: the CUDA preprocess + overlay chain
    fused_counts = True    # run_fused_counts: + the zone histogram on the device (scene analytics)

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
        self.use_cuda_graph = cuda_graph
        self._lock = threading.Lock()          # the shared buffers: one chain at a time
        self._fused = {}                       # (h, w, alpha, mode, zone cells) -> staging buffers, kernels, graphs
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
        with self._lock, torch.cuda.device(0), torch.cuda.stream(self.stream), torch.no_grad():
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

    # -- the fused path: uint8 BGR frames in, uint8 BGR frames out ----------------------------------
    def run_fused(self, frame_bgr: np.ndarray, alpha: float = 0.5, mode: str = "overlay") -> np.ndarray:
        return self.run_fused_frames([frame_bgr], alpha, mode)[0]

    def run_fused_frames(self, frames: list, alpha: float = 0.5, mode: str = "overlay") -> list:
        """Overlays of several frames (several cameras'), in the frames' order: those of one size
        in one upload, one launch of each kernel, one network call and one download."""
        from engines.cuda_kernels import alpha_256, overlay_mode_id
        overlay_mode_id(mode)                  # one-line errors before any GPU work
        alpha_256(alpha)
        return [out for out, _ in self._fused_batches(frames, float(alpha), mode)]

    def run_fused_counts(self, frames: list, cells: list, num_cells: int, alpha: float = 0.5,
                         mode: str = "overlay") -> tuple[list, list]:
        """run_fused_frames plus engines/overlay.cu's zone_histogram on the labels still on the
        GPU: the cell maps go up with the frames, [num_cells x classes] counts per frame come
        down with the overlays (in the same captured chain)."""
        from engines.cuda_kernels import alpha_256, overlay_mode_id, stack_cell_maps
        overlay_mode_id(mode)
        alpha_256(alpha)
        maps = stack_cell_maps(cells, len(frames), self.plan.input_size, num_cells)
        done = self._fused_batches(frames, float(alpha), mode, maps, int(num_cells))
        return [out for out, _ in done], [counts for _, counts in done]

    def run_fused_labels(self, frames: list) -> list:
        """The fused chain up to the argmax kernel: labels [H, W] int32 at the network size per frame
        (what the device check compares with the CPU pipeline)."""
        return [out for out, _ in self._fused_batches(frames, 0.0, LABELS)]

    def _fused_batches(self, frames, alpha, mode, maps=None, num_cells: int = 0) -> list:
        """[(overlay or labels, counts or None)] in the frames' order."""
        out = [None] * len(frames)
        torch = self.torch
        with self._lock, torch.cuda.device(0), torch.cuda.stream(self.stream), torch.no_grad():
            for (h, w), idx in group_frames(frames, self.plan.max_batch):
                key = (h, w, alpha, mode, num_cells)
                r = self._fused.get(key) or self._fused_setup(h, w, alpha, mode, num_cells)
                self._fused[key] = r
                part = None if maps is None else maps[idx]
                for j, result in zip(idx, self._fused_run(r, [frames[j] for j in idx], part)):
                    out[j] = result
        return out

    def _fused_setup(self, h, w, alpha, mode, num_cells: int = 0) -> dict:
        """Page-locked staging (fixed addresses: a captured graph reads and writes them), device
        frames and output, the preprocessor of this size, and work(n): the chain for n frames
        (num_cells > 0: then the zone histogram of the labels, run_fused_counts)."""
        from core.overlay import palette_bgr
        cupy, k, torch = self.cupy, self.kernels, self.torch
        shapes = self.plan.frame_buffers((h, w), mode, num_cells)
        host, dev = {}, {}
        with k.context:
            for name, (shape, dtype) in shapes.items():
                mem = cupy.cuda.alloc_pinned_memory(int(np.prod(shape)) * dtype.itemsize)
                host[name] = np.frombuffer(mem, dtype, int(np.prod(shape))).reshape(shape)
                host[name + "_mem"] = mem
                dev[name] = torch.empty(shape, dtype=self._torch_dtype(dtype), device=self.dev)
            pre = k.preprocessor(h, w, *self.plan.input_size, self.info.mean, self.info.std, self.input_dtype)
            render = None if mode == LABELS else k.overlay_renderer(palette_bgr(self.info.palette))
        in_h, in_w = self.plan.input_size
        runtime, stream = cupy.cuda.runtime, self.kernel_stream

        def make_work(n):
            frame_bytes, out_bytes = (host[name][:n].nbytes for name in ("frames", "out"))

            def work():
                runtime.memcpyAsync(dev["frames"].data_ptr(), host["frames"].ctypes.data, frame_bytes,
                                    runtime.memcpyHostToDevice, stream.ptr)
                pre(dev["frames"].data_ptr(), self.buf["input"].data_ptr(), stream, frames=n)
                self._network(n)
                self._argmax(n)
                result = self.buf["labels"]
                if render is not None:
                    render(dev["frames"].data_ptr(), h, w, self.buf["labels"].data_ptr(), in_h, in_w,
                           dev["out"].data_ptr(), alpha, mode, stream=stream, frames=n)
                    result = dev["out"]
                runtime.memcpyAsync(host["out"].ctypes.data, result.data_ptr(), out_bytes,
                                    runtime.memcpyDeviceToHost, stream.ptr)
                if num_cells:                  # zone counts from the labels on the GPU
                    runtime.memcpyAsync(dev["cells"].data_ptr(), host["cells"].ctypes.data, host["cells"][:n].nbytes,
                                        runtime.memcpyHostToDevice, stream.ptr)
                    runtime.memsetAsync(dev["counts"].data_ptr(), 0, host["counts"][:n].nbytes, stream.ptr)
                    k.zone_histogram_on_device(self.buf["labels"].data_ptr(), in_h * in_w, dev["cells"].data_ptr(),
                                               self.plan.num_classes, num_cells, dev["counts"].data_ptr(),
                                               np.int32, shared_cells=False, stream=stream, frames=n)
                    runtime.memcpyAsync(host["counts"].ctypes.data, dev["counts"].data_ptr(),
                                        host["counts"][:n].nbytes, runtime.memcpyDeviceToHost, stream.ptr)
            return work

        return {"host": host, "dev": dev, "pre": pre, "render": render, "make_work": make_work, "work": {},
                "graphs": {}}

    def _fused_run(self, r: dict, frames: list, maps=None) -> list:
        n = len(frames)
        for i, f in enumerate(frames):
            np.copyto(r["host"]["frames"][i], f)
        if maps is not None:
            np.copyto(r["host"]["cells"][:n], maps)
        work = r["work"].get(n) or r["make_work"](n)
        r["work"][n] = work
        graph = r["graphs"].get(n)
        if graph is None and self.use_cuda_graph:
            graph = r["graphs"][n] = self._capture(work)
        if graph is not None:
            graph.replay()
        else:
            work()
        self.stream.synchronize()
        counts = r["host"].get("counts")
        return [(o.copy(), None if counts is None else counts[i].reshape(-1, self.plan.num_classes).copy())
                for i, o in enumerate(r["host"]["out"][:n])]

    def _capture(self, work):
        """A CUDA graph of `work` on the engine's stream, or None (and no graphs from now on)."""
        torch = self.torch
        work()                                 # warm-up outside the capture: cuDNN picks its kernels
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                work()
        except Exception as e:   # noqa: BLE001  (the driver or torch refused the capture)
            self.use_cuda_graph = False
            print(f"[pytorch-cuda] CUDA graph capture failed ({first_line(e)}): running without graphs",
                  file=sys.stderr, flush=True)
            self.stream.synchronize()
            return None
        return graph

    def close(self) -> None:
        """Drop the graphs and buffers (from whichever thread calls)."""
        with self._lock:
            self._fused.clear()
            self.buf = {}
            self.model = None

    def describe(self) -> str:
        graphs = " CUDA graphs" if self.use_cuda_graph else ""
        return f"{super().describe()} channels-last{graphs} on {self.gpu_name}"


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
