"""The CUDA preprocess, overlay and zone-histogram kernels (engines/preprocess.cu, engines/overlay.cu) from Python.

The .cu text is compiled at run time for the GPU in the machine: with pycuda's SourceModule
(what the TensorRT backend uses) or, where pycuda is not installed, with CuPy's RawModule
(NVRTC) on the same source. Every call runs inside `self.context`
(engines.cuda_context.PrimaryContext): CUDA's primary context, shared with TensorRT, current
in whichever thread calls. Device arrays handed out (`to_device`, `empty`) are read, written
and dropped inside `with k.context:` when the caller is in another thread.

    k = CudaKernels()                                # picks pycuda, else CuPy
    x = k.preprocess(bgr, (512, 1024), mean, std)    # numpy in, numpy out (for checks)
    pre = k.preprocessor(1024, 2048, 512, 1024, mean, std)
    pre(src_ptr, dst_ptr, stream)                    # device pointers: the fused path
    pre(src_ptr, dst_ptr, stream, frames=4)          # 4 frames back to back, one launch

The argument packing below (normalization constants, alpha in 1/256ths, grid sizes) is plain
numpy, shared with the host build the CI tests run (tests/engines/test_cuda_kernels.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import InputError, SetupError

KERNEL_DIR = Path(__file__).resolve().parent
KERNEL_FILES = {"preprocess": KERNEL_DIR / "preprocess.cu", "overlay": KERNEL_DIR / "overlay.cu"}
KERNELS = {"preprocess": ("linear_resize_coeffs", "preprocess_bgr_f32", "preprocess_bgr_f16"),
           "overlay": ("overlay_bgr", "argmax_channels", "zone_histogram")}     # the extern "C" entry points of each file
OVERLAY_MODES = {"overlay": 0, "mask": 1, "side-by-side": 2}   # overlay.cu OVERLAY_MODE_*
BLOCK_2D = (32, 8, 1)      # 256 threads; a warp spans 32 consecutive pixels of a row
BLOCK_1D = (256, 1, 1)
NON_BLOCKING = 1           # CU_STREAM_NON_BLOCKING, the flag of pycuda's Stream(flags=...)

INSTALL_HINT = ("install pycuda (pip install pycuda, on Jetson from the JetPack Python) or CuPy "
                "(pip install cupy-cuda12x) on a machine with an NVIDIA GPU")


def read_source(name: str) -> str:
    return KERNEL_FILES[name].read_text()


def grid_2d(width: int, height: int, frames: int = 1, block=BLOCK_2D) -> tuple:
    """The launch grid over a frame; z: one layer per frame (the kernels read blockIdx.z)."""
    return ((width + block[0] - 1) // block[0], (height + block[1] - 1) // block[1], check_frames(frames))


def grid_1d(n: int, frames: int = 1, block=BLOCK_1D) -> tuple:
    return ((n + block[0] - 1) // block[0], 1, check_frames(frames))


MAX_GRID_Z = 65535         # CUDA's limit on gridDim.z


def check_frames(frames: int) -> int:
    if not 1 <= int(frames) <= MAX_GRID_Z:
        raise ValueError(f"a kernel launch takes 1 to {MAX_GRID_Z} frames, got {frames}")
    return int(frames)


def normalization_args(mean, std) -> tuple:
    """(mean_r, mean_g, mean_b, inv_std_r, inv_std_g, inv_std_b) as float32, rounded exactly like
    core/preprocess.py computes them (float32 mean, 1 / float32 std)."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3)
    inv_std = (1.0 / np.asarray(std, dtype=np.float32)).astype(np.float32).reshape(3)
    return tuple(np.float32(v) for v in (*mean, *inv_std))


def alpha_256(alpha: float) -> int:
    """The blend weight in 1/256ths, as core/overlay.py rounds it."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {alpha}")
    return int(round(alpha * 256))


def overlay_mode_id(mode: str) -> int:
    if mode not in OVERLAY_MODES:
        raise InputError(f"unknown overlay mode {mode!r}: use one of {', '.join(OVERLAY_MODES)}")
    return OVERLAY_MODES[mode]


def label_step(dtype) -> int:
    """How many int32 words one label takes (int64 labels: read the low word)."""
    dtype = np.dtype(dtype)
    if dtype == np.int32:
        return 1
    if dtype == np.int64:
        return 2
    raise ValueError(f"the overlay kernel takes int32 or int64 labels, got {dtype}")


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0, through pycuda or CuPy."""
    try:
        import pycuda.driver as cuda
        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        import cupy
    except ImportError:
        raise SetupError(f"cannot query the GPU: {INSTALL_HINT}") from None
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return name, f"{props['major']}.{props['minor']}"


class CudaGraph:
    """Capture the async work issued on one stream into a CUDA graph, then replay it.

    Through the driver API with ctypes on any stream handle (pycuda's `stream.handle`, CuPy's
    `stream.ptr`): released pycuda has no graph calls, and this works the same with both.
    cuGraphInstantiateWithFlags needs CUDA >= 11.4 (JetPack 5 has 11.4). The stream should be
    a non-blocking one (CudaKernels.stream()): a blocking stream synchronizes with the legacy
    default stream, and any legacy-stream call from another thread invalidates the capture.
    `context` (a PrimaryContext) is made current around every driver call, so the graph can
    be captured in one thread and launched or dropped in another."""

    CAPTURE_MODE_THREAD_LOCAL = 1   # other threads' CUDA calls stay legal during the capture

    def __init__(self, stream_handle: int, work, context=None):
        import contextlib
        import ctypes
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            raise SetupError("CUDA graphs need the NVIDIA driver's libcuda.so.1; run without --cuda-graph") from None
        self.ctypes = ctypes
        self.context = context if context is not None else contextlib.nullcontext()
        self.stream = ctypes.c_void_p(int(stream_handle))
        self.graph, self.exec = ctypes.c_void_p(), ctypes.c_void_p()
        with self.context:
            self._check("cuStreamBeginCapture_v2", self.stream, ctypes.c_int(self.CAPTURE_MODE_THREAD_LOCAL))
            try:
                work()
            except BaseException:
                # End the capture so the stream is usable again; its own error (the capture
                # was invalidated) would only hide the one that matters, so it is dropped.
                self.lib.cuStreamEndCapture(self.stream, ctypes.byref(self.graph))
                raise
            self._check("cuStreamEndCapture", self.stream, ctypes.byref(self.graph))
            self._check("cuGraphInstantiateWithFlags", ctypes.byref(self.exec), self.graph, ctypes.c_ulonglong(0))

    def _check(self, name, *args):
        err = getattr(self.lib, name)(*args)
        if err != 0:
            text = self.ctypes.c_char_p()
            self.lib.cuGetErrorString(err, self.ctypes.byref(text))
            msg = text.value.decode() if text.value else f"error {err}"
            raise SetupError(f"CUDA graph capture failed in {name}: {msg}; run without --cuda-graph")

    def launch(self) -> None:
        with self.context:
            self._check("cuGraphLaunch", self.exec, self.stream)

    def __del__(self):
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        with self.context:
            if self.exec.value:
                lib.cuGraphExecDestroy(self.exec)
            if self.graph.value:
                lib.cuGraphDestroy(self.graph)


class CudaKernels:
    """The compiled kernels plus the little device-memory vocabulary the checks need."""

    def __init__(self, backend: str = "auto"):
        if backend not in ("auto", "pycuda", "cupy"):
            raise ValueError(f"unknown CUDA backend {backend!r}: use auto, pycuda or cupy")
        self.backend = self._pick(backend)
        self.functions = {}
        with self.context:
            for name in KERNEL_FILES:
                module = self._compile(read_source(name))
                for fn in KERNELS[name]:
                    self.functions[fn] = module.get_function(fn)

    def _pick(self, backend: str) -> str:
        from engines.cuda_context import PrimaryContext
        if backend in ("auto", "pycuda"):
            try:
                import pycuda.gpuarray  # noqa: F401
                self.context = PrimaryContext("pycuda")   # the primary context TensorRT uses too
                self.cuda = self.context.cuda
                return "pycuda"
            except ImportError:
                if backend == "pycuda":
                    raise SetupError("the TensorRT path needs pycuda: pip install pycuda "
                                       "(on Jetson, with JetPack's CUDA on PATH)") from None
        try:
            self.context = PrimaryContext("cupy")
        except ImportError:
            raise SetupError(f"the CUDA kernels need a CUDA Python binding: {INSTALL_HINT}") from None
        self.cupy = self.context.cupy
        return "cupy"

    def _compile(self, source: str):
        if self.backend == "pycuda":
            from pycuda.compiler import SourceModule
            return SourceModule(source, no_extern_c=True)   # the .cu declares extern "C" itself
        return self.cupy.RawModule(code=source)

    # -- device memory, streams -------------------------------------------------------------
    def to_device(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        with self.context:
            if self.backend == "pycuda":
                import pycuda.gpuarray as gpuarray
                return gpuarray.to_gpu(array)
            return self.cupy.asarray(array)

    def empty(self, shape, dtype):
        with self.context:
            if self.backend == "pycuda":
                import pycuda.gpuarray as gpuarray
                return gpuarray.empty(shape, dtype)
            return self.cupy.empty(shape, dtype)

    def ptr(self, device_array) -> int:
        return int(device_array.ptr) if self.backend == "pycuda" else int(device_array.data.ptr)

    def stream(self):
        """A non-blocking stream (no implicit sync with the legacy default stream: capturable)."""
        with self.context:
            if self.backend == "pycuda":
                return self.cuda.Stream(flags=NON_BLOCKING)
            return self.cupy.cuda.Stream(non_blocking=True)

    def stream_handle(self, stream) -> int:
        """The CUstream behind a backend stream (for CudaGraph)."""
        return int(stream.handle) if self.backend == "pycuda" else int(stream.ptr)

    def synchronize(self, stream=None) -> None:
        with self.context:
            if stream is not None:
                stream.synchronize()
            elif self.backend == "pycuda":
                self.cuda.Context.synchronize()
            else:
                self.cupy.cuda.Device().synchronize()

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple, stream=None) -> None:
        """args: numpy scalars (np.int32, np.float32) and device pointers as np.uint64."""
        fn = self.functions[name]
        with self.context:
            if self.backend == "pycuda":
                fn(*args, grid=tuple(int(g) for g in grid), block=tuple(int(b) for b in block), stream=stream)
            elif stream is None:
                fn(tuple(grid), tuple(block), args)
            else:
                with stream:
                    fn(tuple(grid), tuple(block), args)

    # -- the two stages, device pointers in and out (the fused path) ---------------------------
    def preprocessor(self, src_h, src_w, dst_h, dst_w, mean, std, dtype=np.float32) -> "Preprocessor":
        return Preprocessor(self, src_h, src_w, dst_h, dst_w, mean, std, dtype)

    def overlay_renderer(self, lut_bgr: np.ndarray) -> "OverlayRenderer":
        return OverlayRenderer(self, lut_bgr)

    def argmax(self, logits_ptr: int, num_classes: int, plane: int, labels_ptr: int, stream=None,
               frames: int = 1) -> None:
        """[frames, C, plane] float32 logits -> [frames, plane] int32 labels, one launch."""
        self.launch("argmax_channels", grid_1d(plane, frames), BLOCK_1D,
                    (np.uint64(logits_ptr), np.int32(num_classes), np.int32(plane), np.uint64(labels_ptr)),
                    stream)

    def zone_histogram_on_device(self, labels_ptr: int, plane: int, cells_ptr: int, num_classes: int,
                                 num_cells: int, counts_ptr: int, label_dtype=np.int32, shared_cells: bool = True,
                                 stream=None, frames: int = 1) -> None:
        """Scene analytics: [frames, plane] labels (device) + uint8 cell map(s) -> uint32
        [frames, num_cells, num_classes] counts (device, zeroed by the caller), one launch."""
        self.launch("zone_histogram", grid_1d(plane, frames), BLOCK_1D,
                    zone_histogram_args(labels_ptr, plane, label_dtype, cells_ptr, shared_cells, num_classes,
                                        num_cells, counts_ptr), stream)

    # -- numpy in, numpy out: what the checks compare with core/preprocess.py, core/overlay.py ---
    def preprocess(self, bgr: np.ndarray, size_hw, mean, std, dtype=np.float32) -> np.ndarray:
        """bgr: one HxWx3 image or N of them (NxHxWx3) -> [N, 3, H, W], all in one launch."""
        if bgr.ndim not in (3, 4) or bgr.shape[-1] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"preprocess takes uint8 BGR HxWx3 or NxHxWx3 images, got {bgr.dtype} {bgr.shape}")
        frames = bgr.reshape(-1, *bgr.shape[-3:])
        h, w = int(size_hw[0]), int(size_hw[1])
        with self.context:
            pre = self.preprocessor(frames.shape[1], frames.shape[2], h, w, mean, std, dtype)
            src = self.to_device(frames)
            out = self.empty((len(frames), 3, h, w), np.dtype(dtype))
            pre(self.ptr(src), self.ptr(out), frames=len(frames))
            self.synchronize()
            result = out.get()
            del pre, src, out      # freed while the context is current, in any thread
        return result

    def overlay(self, image_bgr: np.ndarray, labels: np.ndarray, lut_bgr: np.ndarray,
                alpha: float = 0.5, mode: str = "overlay") -> np.ndarray:
        """One HxWx3 image and hxw labels, or N of each (NxHxWx3, Nxhxw): one launch."""
        labels = np.ascontiguousarray(labels)
        if labels.dtype not in (np.int32, np.int64):
            labels = labels.astype(np.int32)
        frames = 1 if image_bgr.ndim == 3 else len(image_bgr)
        if labels.size // (labels.shape[-2] * labels.shape[-1]) != frames:
            raise ValueError(f"overlay: {frames} images but labels of shape {labels.shape}")
        height, width = image_bgr.shape[-3:-1]
        out_w = 2 * width if mode == "side-by-side" else width
        with self.context:
            image = self.to_device(image_bgr)
            lab = self.to_device(labels)
            out = self.empty((*image_bgr.shape[:-3], height, out_w, 3), np.uint8)
            render = self.overlay_renderer(lut_bgr)
            render(self.ptr(image), height, width, self.ptr(lab), labels.shape[-2], labels.shape[-1],
                   self.ptr(out), alpha, mode, label_dtype=labels.dtype, frames=frames)
            self.synchronize()
            result = out.get()
            del image, lab, out, render   # freed while the context is current, in any thread
        return result


    def zone_histogram(self, labels: np.ndarray, cells: np.ndarray, num_cells: int, num_classes: int) -> np.ndarray:
        """labels [h, w] or [N, h, w] (int32/int64) and one uint8 cell map [h, w] (or one per
        frame) -> uint32 [N, num_cells, num_classes]; only the counts come back."""
        labels = np.ascontiguousarray(labels)
        if labels.dtype not in (np.int32, np.int64):
            labels = labels.astype(np.int32)
        plane = labels.shape[-2] * labels.shape[-1]
        frames = labels.size // plane
        cells = np.ascontiguousarray(cells, dtype=np.uint8)
        with self.context:
            lab, cel = self.to_device(labels), self.to_device(cells)
            counts = self.to_device(np.zeros((frames, num_cells, num_classes), np.uint32))
            self.zone_histogram_on_device(self.ptr(lab), plane, self.ptr(cel), num_classes, num_cells,
                                          self.ptr(counts), labels.dtype, cells.size == plane, frames=frames)
            self.synchronize()
            result = counts.get()
            del lab, cel, counts
        return result


def stack_cell_maps(cells: list, frames: int, label_hw, num_cells: int) -> np.ndarray:
    """run_fused_counts' cell maps, one per frame, as one uint8 [frames, h, w] array (what the
    fused chain uploads next to the frames); one-line errors for maps the kernel would misread."""
    if len(cells) != frames:
        raise ValueError(f"run_fused_counts: {frames} frames but {len(cells)} cell maps")
    h, w = (int(v) for v in label_hw)
    if not 1 <= int(num_cells) <= 256:
        raise ValueError(f"zone cells: {num_cells} cells; the cell map is one byte per pixel (1..256)")
    out = np.empty((len(cells), h, w), np.uint8)
    for i, c in enumerate(cells):
        c = np.asarray(c)
        if c.dtype != np.uint8 or c.shape != (h, w):
            raise ValueError(f"zone cells: frame {i} has a {c.dtype} {c.shape} cell map; the labels are {h}x{w} "
                             "(uint8, one cell per label pixel)")
        out[i] = c
    if out.size and int(out.max()) >= num_cells:
        raise ValueError(f"zone cells: a cell map names cell {int(out.max())}, beyond its {num_cells} cells")
    return out


def zone_histogram_args(labels_ptr, plane, label_dtype, cells_ptr, shared_cells, num_classes, num_cells,
                        counts_ptr) -> tuple:
    """The zone_histogram kernel's arguments (also what the host build is called with)."""
    return (np.uint64(labels_ptr), np.int32(plane), np.int32(label_step(label_dtype)), np.uint64(cells_ptr),
            np.int32(0 if shared_cells else plane), np.int32(num_classes), np.int32(num_cells * num_classes),
            np.uint64(counts_ptr))


class Preprocessor:
    """Source size -> model size preprocess with its resize tables already on the GPU."""

    def __init__(self, kernels: CudaKernels, src_h, src_w, dst_h, dst_w, mean, std, dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"the preprocess kernel writes float32 or float16, not {dtype}")
        self.k = kernels
        self.src_h, self.src_w, self.dst_h, self.dst_w = int(src_h), int(src_w), int(dst_h), int(dst_w)
        self.kernel = "preprocess_bgr_f16" if dtype == np.float16 else "preprocess_bgr_f32"
        self.norm = normalization_args(mean, std)
        # Tables: source index + two 11-bit weights per output column / row (preprocess.cu).
        self.xofs, self.xw = kernels.empty((self.dst_w,), np.int32), kernels.empty((2 * self.dst_w,), np.int16)
        self.yofs, self.yw = kernels.empty((self.dst_h,), np.int32), kernels.empty((2 * self.dst_h,), np.int16)
        for src_len, dst_len, clamp, ofs, w in ((self.src_w, self.dst_w, 1, self.xofs, self.xw),
                                                (self.src_h, self.dst_h, 0, self.yofs, self.yw)):
            kernels.launch("linear_resize_coeffs", grid_1d(dst_len), BLOCK_1D,
                           (np.int32(src_len), np.int32(dst_len), np.int32(clamp),
                            np.uint64(kernels.ptr(ofs)), np.uint64(kernels.ptr(w))))
        kernels.synchronize()

    def __call__(self, src_ptr: int, dst_ptr: int, stream=None, frames: int = 1) -> None:
        """src: `frames` uint8 BGR src_h x src_w x 3 images back to back (contiguous); dst: the
        [frames, 3, H, W] input buffer. All frames in one launch."""
        k = self.k
        args = (np.uint64(src_ptr), np.int32(self.src_h), np.int32(self.src_w), np.int32(self.src_w * 3),
                np.uint64(k.ptr(self.xofs)), np.uint64(k.ptr(self.xw)),
                np.uint64(k.ptr(self.yofs)), np.uint64(k.ptr(self.yw)),
                *self.norm, np.uint64(dst_ptr), np.int32(self.dst_h), np.int32(self.dst_w))
        k.launch(self.kernel, grid_2d(self.dst_w, self.dst_h, frames), BLOCK_2D, args, stream)


class OverlayRenderer:
    """Labels (device) + source frame (device) -> colorized uint8 BGR (device)."""

    def __init__(self, kernels: CudaKernels, lut_bgr: np.ndarray):
        lut = np.ascontiguousarray(lut_bgr, dtype=np.uint8)
        if lut.shape != (256, 3):
            raise ValueError(f"the overlay LUT must be 256x3 BGR (core.overlay.palette_bgr), got {lut.shape}")
        self.k = kernels
        self.lut = kernels.to_device(lut)

    def __call__(self, image_ptr: int, height: int, width: int, labels_ptr: int, label_h: int, label_w: int,
                 out_ptr: int, alpha: float = 0.5, mode: str = "overlay", label_dtype=np.int32, stream=None,
                 frames: int = 1) -> None:
        """`frames` images, label maps and outputs, each back to back in its buffer: one launch."""
        k = self.k
        args = (np.uint64(image_ptr), np.int32(height), np.int32(width),
                np.uint64(labels_ptr), np.int32(label_h), np.int32(label_w), np.int32(label_step(label_dtype)),
                np.uint64(k.ptr(self.lut)), np.int32(alpha_256(alpha)), np.int32(overlay_mode_id(mode)),
                np.uint64(out_ptr))
        k.launch("overlay_bgr", grid_2d(width, height, frames), BLOCK_2D, args, stream)
