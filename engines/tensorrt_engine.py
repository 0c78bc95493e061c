"""TensorRT backend behind the Engine interface, on pycuda buffers and its own CUDA stream.

    eng = TensorRTEngine("model.fp16.engine")
    labels = eng.infer(batch)                       # host in, host out (the Engine interface), N frames
    out_bgr = eng.run_fused(frame_bgr, mode="overlay")   # uint8 in, uint8 out, nothing else crosses PCIe

The fused path: the uint8 BGR frame goes up once into a page-locked staging buffer's device
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

import sys
from pathlib import Path

import numpy as np

from engines.base import Engine, ModelInfo, run_static_batch
from core.errors import MissingFileError, SetupError, first_line
from core.sidecar import read_sidecar
from engines.fingerprint import Fingerprint, MachineProbe, check_fingerprint, check_or_rebuild
from engines.tensorrt_api import import_tensorrt, tensorrt_api, tensorrt_logger

PYCUDA_HINT = "the TensorRT backend needs pycuda: pip install pycuda (on Jetson, with JetPack's CUDA on PATH)"


def check_engine_sidecar(meta: dict, engine_path, tensorrt_version: str, gpu_name: str,
                         compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU: one line with the rebuild command
    (the rule, with CUDA and the driver too: engines/fingerprint.py)."""
    check_fingerprint(meta, engine_path, Fingerprint(tensorrt_version=str(tensorrt_version), gpu_name=str(gpu_name),
                                                     compute_capability=str(compute_capability)))


class TensorRTEngine(Engine):
    backend = "tensorrt"
    fused = True           # run_fused / run_fused_frames: the CUDA preprocess + overlay chain
    fused_counts = True    # run_fused_counts: + the zone histogram on the device (scene analytics)

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
        self.use_cuda_graph = cuda_graph
        self._host_graphs = {}      # batch size -> {"graph": CudaGraph} once infer() has captured one
        self._batch_now = None      # the batch size the context is set to (dynamic-batch engines)
        self._fused = {}            # (h, w, alpha, mode, zone cells) -> resources (and graph)
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
        self._host_graphs.clear()
        for r in self._fused.values():
            r["graphs"].clear()
        if not self.context.set_input_shape(self.input_name, (n, *self.input_shape[1:])):
            raise RuntimeError(f"{self.path}: TensorRT refused batch {n} (outside the engine's profile, batch 1.."
                               f"{self.input_shape[0]}); rebuild it with a larger --max-batch")
        self._batch_now = n

    def _execute(self):
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT failed to run {self.path.name} (see its log above)")

    def _run(self, work, graph_holder: dict) -> None:
        """Run `work()` (async calls on self.stream): replayed from a CUDA graph when graphs are
        on, captured on first use. An engine that cannot be captured runs plainly from then on."""
        if self.use_cuda_graph and graph_holder.get("graph") is None:
            from engines.cuda_kernels import CudaGraph
            work()                             # a first run does TensorRT's lazy setup outside the capture
            self.stream.synchronize()
            try:
                graph_holder["graph"] = CudaGraph(self.stream.handle, work, self.cuda_context)
            except Exception as e:             # noqa: BLE001  (TensorRT or the driver refused the capture)
                self.use_cuda_graph = False
                first = first_line(e)
                print(f"[tensorrt] CUDA graph capture of {self.path.name} failed ({first}): running it "
                      "without a graph", file=sys.stderr, flush=True)
        if graph_holder.get("graph") is not None:
            graph_holder["graph"].launch()
        else:
            work()

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

        self._run(work, self._host_graphs.setdefault(n, {}))
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

    # -- the fused path: uint8 BGR frames in, uint8 BGR frames out --------------------------------
    def run_fused(self, frame_bgr: np.ndarray, alpha: float = 0.5, mode: str = "overlay") -> np.ndarray:
        return self.run_fused_frames([frame_bgr], alpha, mode)[0]

    def run_fused_frames(self, frames: list, alpha: float = 0.5, mode: str = "overlay") -> list:
        """Several frames (several cameras' frames): those of one size go through together, up
        to the engine's batch at a time: one upload, one preprocess launch, one enqueue, one
        argmax and one overlay launch, one download. Returns the overlays in the frames' order."""
        return [overlay for overlay, _ in self._fused_frames(frames, alpha, mode, None, 0)]

    def run_fused_counts(self, frames: list, cells: list, num_cells: int, alpha: float = 0.5,
                         mode: str = "overlay") -> tuple[list, list]:
        """run_fused_frames plus engines/overlay.cu's zone_histogram on the labels still on the
        GPU: the cell maps go up with the frames, [num_cells x classes] counts per frame come
        down with the overlays (in the same captured chain)."""
        from engines.cuda_kernels import stack_cell_maps
        maps = stack_cell_maps(cells, len(frames), self.output_shape[-2:], num_cells)
        done = self._fused_frames(frames, alpha, mode, maps, int(num_cells))
        return [overlay for overlay, _ in done], [counts for _, counts in done]

    def _fused_frames(self, frames: list, alpha, mode, maps, num_cells: int) -> list:
        """[(overlay, counts or None)] in the frames' order."""
        for f in frames:
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError(f"run_fused takes uint8 BGR HxWx3 frames, got {f.dtype} {f.shape}")
        by_size = {}
        for i, f in enumerate(frames):
            by_size.setdefault(f.shape[:2], []).append(i)
        out = [None] * len(frames)
        cap = self.input_shape[0]
        with self.cuda_context:
            for (h, w), idx in by_size.items():
                key = (h, w, float(alpha), mode, num_cells)
                r = self._fused.get(key) or self._fused_setup(h, w, alpha, mode, num_cells)
                self._fused[key] = r
                for i in range(0, len(idx), cap):
                    part = idx[i:i + cap]
                    done = self._fused_run(r, [frames[j] for j in part], None if maps is None else maps[part])
                    for j, result in zip(part, done):
                        out[j] = result
        return out

    def _fused_run(self, r: dict, frames: list, maps) -> list:
        n = len(frames)
        if self.info.dynamic_batch:
            self._set_batch(n)                 # (a fixed batch runs all its frames; the first n are read)
        for i, f in enumerate(frames):
            np.copyto(r["frame_host"][i], f)
        if maps is not None:
            np.copyto(r["cells_host"][:n], maps)
        work = r["work"].get(n) or r["make_work"](n)
        r["work"][n] = work                    # fixed addresses per n: replayable
        self._run(work, r["graphs"].setdefault(n, {}))
        self.stream.synchronize()
        counts = r["counts_host"]
        return [(o.copy(), None if counts is None else counts[i].reshape(-1, self.info.num_classes).copy())
                for i, o in enumerate(r["out_host"][:n])]

    def _fused_setup(self, h, w, alpha, mode, num_cells: int = 0) -> dict:
        """Staging buffers for up to the engine's batch of h x w frames, and `make_work(n)`: the
        async chain for n of them (what a CUDA graph per n captures). num_cells > 0: also the
        cell maps up and the zone counts down (run_fused_counts)."""
        from core.overlay import palette_bgr
        from engines.cuda_kernels import CudaKernels, label_step
        cuda = self.cuda
        if self._kernels is None:
            self._kernels = CudaKernels("pycuda")
        k = self._kernels
        cap, _, in_h, in_w = self.input_shape
        out_h, out_w = self.output_shape[-2:]
        frame_host = cuda.pagelocked_empty((cap, h, w, 3), np.uint8)
        frame_dev = cuda.mem_alloc(frame_host.nbytes)
        out_host = cuda.pagelocked_empty((cap, h, 2 * w if mode == "side-by-side" else w, 3), np.uint8)
        out_dev = cuda.mem_alloc(out_host.nbytes)
        pre = k.preprocessor(h, w, in_h, in_w, self.info.mean, self.info.std, self.input_dtype)
        render = k.overlay_renderer(palette_bgr(self.info.palette))
        dev_in = self.buffers[self.input_name][1]
        dev_out = self.buffers[self.output_name][1]
        labels_dev, labels_dtype = dev_out, self.output_dtype
        if self.info.head == "logits":
            if self.output_dtype != np.float32:
                raise RuntimeError(f"{self.path.name}: the argmax kernel reads float32 logits, the engine outputs "
                                   f"{self.output_dtype}; rebuild from an ONNX with float32 outputs")
            labels_dev, labels_dtype = cuda.mem_alloc(cap * out_h * out_w * 4), np.int32
        else:
            label_step(labels_dtype)           # int32 or int64, else a one-line error now
        num_classes = self.info.num_classes
        bins = num_cells * num_classes
        cells_host = cells_dev = counts_host = counts_dev = None
        if num_cells:
            cells_host = cuda.pagelocked_empty((cap, out_h, out_w), np.uint8)
            cells_dev = cuda.mem_alloc(cells_host.nbytes)
            counts_host = cuda.pagelocked_empty((cap, bins), np.uint32)
            counts_dev = cuda.mem_alloc(counts_host.nbytes)

        def make_work(n):
            frames_in, frames_out = frame_host[:n], out_host[:n]
            cells_in = None if cells_host is None else cells_host[:n]
            counts_out = None if counts_host is None else counts_host[:n]

            def work():
                cuda.memcpy_htod_async(frame_dev, frames_in, self.stream)
                pre(int(frame_dev), int(dev_in), self.stream, frames=n)
                self._execute()
                if self.info.head == "logits":
                    k.argmax(int(dev_out), num_classes, out_h * out_w, int(labels_dev), self.stream, frames=n)
                render(int(frame_dev), h, w, int(labels_dev), out_h, out_w, int(out_dev), alpha, mode,
                       label_dtype=labels_dtype, stream=self.stream, frames=n)
                cuda.memcpy_dtoh_async(frames_out, out_dev, self.stream)
                if cells_in is not None:       # zone counts from the labels on the GPU
                    cuda.memcpy_htod_async(cells_dev, cells_in, self.stream)
                    cuda.memset_d32_async(int(counts_dev), 0, n * bins, self.stream)   # (dest, value, count, stream)
                    k.zone_histogram_on_device(int(labels_dev), out_h * out_w, int(cells_dev), num_classes,
                                               num_cells, int(counts_dev), labels_dtype, shared_cells=False,
                                               stream=self.stream, frames=n)
                    cuda.memcpy_dtoh_async(counts_out, counts_dev, self.stream)
            return work

        # Keep every allocation alive as long as the (possibly captured) work refers to it.
        return {"frame_host": frame_host, "frame_dev": frame_dev, "out_host": out_host, "out_dev": out_dev,
                "labels_dev": labels_dev, "cells_host": cells_host, "cells_dev": cells_dev,
                "counts_host": counts_host, "counts_dev": counts_dev, "pre": pre, "render": render,
                "make_work": make_work, "work": {}, "graphs": {}}

    def close(self) -> None:
        """Free the GPU resources now, in the primary context (from whichever thread calls)."""
        if getattr(self, "engine", None) is None:
            return
        with self.cuda_context:
            self._fused.clear()
            self._host_graphs.clear()
            self._kernels = None
            self.buffers = {}
            self.context = self.engine = self.runtime = None
            self.stream = None

    def describe(self) -> str:
        return (super().describe() + f" TensorRT {self.meta.get('tensorrt_version')} "
                f"{'graph ' if self.use_cuda_graph else ''}on {self.meta.get('gpu_name')}")
