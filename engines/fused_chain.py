"""The fused GPU frame path, written once for both GPU engines (TensorRT and PyTorch-CUDA).

    uint8 BGR frames up once -> engines/preprocess.cu into the network's input buffer -> the
    network (the one part each engine brings) -> engines/overlay.cu's argmax (a logits output)
    -> its overlay kernel blends the labels into the frames still on the GPU -> overlays down
    once; with zone cell maps, the zone histogram of the labels too (run_fused_counts).

Frames of one size go through together, up to the engine's batch at a time: one upload, one
launch of each kernel, one network call, one download. A set-up (page-locked staging, device
buffers, the preprocessor of that size) is made once per (h, w, alpha, mode, zone cells) and
`make_work(n)` builds the chain for n of its frames; with CUDA graphs on, each chain is
captured once and replayed (page-locked buffers keep fixed addresses).

What an engine supplies: a `Network` (where the preprocess writes, where the network writes,
and `run(n)`: the network on the first n frames of its input buffer), and a device object
with the library's own memory calls (pycuda for TensorRT, CuPy and torch for PyTorch-CUDA):
`pinned(shape, dtype)` -> numpy array in page-locked memory, `alloc(shape, dtype)` -> a
device allocation, `ptr(allocation)` -> int, `up(dst_ptr, host)`, `down(host, src_ptr)`,
`zero(dst_ptr, nbytes)` (all async on its `stream`, the stream the kernels launch on).

The planning (grouping by size, set-up keys, staging shapes) is plain Python, tested without
a GPU; importing this module imports neither CUDA binding.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.errors import first_line
from engines.base import Engine

LABELS = "labels"           # the chain's mode that downloads the labels instead of an overlay


def group_frames(frames, cap: int) -> list:
    """[(frame (h, w), [frame indices])] in order: frames of one size together, at most `cap` a group."""
    groups = {}
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"run_fused takes uint8 BGR HxWx3 frames, got "
                             f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}")
        groups.setdefault(f.shape[:2], []).append(i)
    return [(hw, idx[i:i + cap]) for hw, idx in groups.items() for i in range(0, len(idx), cap)]


def plan_work(frames, cap: int, alpha: float, mode: str, num_cells: int = 0) -> list:
    """[(set-up key, [frame indices])]: one work item per group, keyed by what its set-up fixes
    (h, w, alpha, mode, zone cells); items of one key share one set-up."""
    return [((h, w, float(alpha), mode, int(num_cells)), idx) for (h, w), idx in group_frames(frames, cap)]


def staging_buffers(cap: int, frame_hw, label_hw, mode: str, num_cells: int = 0, num_classes: int = 0,
                    labels_dtype=np.int32) -> dict:
    """The staging buffers of one set-up, host and device alike: name -> (shape, dtype). `out`
    is the overlay (twice as wide side by side) or, in LABELS mode, the labels; num_cells > 0
    adds the zone cell maps (up, one byte a label pixel) and the [cells x classes] counts (down)."""
    fh, fw = frame_hw
    if mode == LABELS:
        out = ((cap, *label_hw), np.dtype(labels_dtype))
    else:
        out = ((cap, fh, 2 * fw if mode == "side-by-side" else fw, 3), np.dtype(np.uint8))
    buffers = {"frames": ((cap, fh, fw, 3), np.dtype(np.uint8)), "out": out}
    if num_cells:
        buffers["cells"] = ((cap, *label_hw), np.dtype(np.uint8))
        buffers["counts"] = ((cap, num_cells * num_classes), np.dtype(np.uint32))
    return buffers


class CudaGraphs:
    """Work replayed from a CUDA graph per key, captured on its first run. `capture(work)` returns
    the graph's launch (a callable) or raises; a capture that fails turns graphs off for good,
    with one log line, and the work runs plainly from then on."""

    def __init__(self, on: bool, capture: Callable, sync: Callable, backend: str, what: str):
        """sync(): wait for the stream; backend, what: the log line's words ("[tensorrt] ... of model.engine")."""
        self.on, self.capture, self.sync = bool(on), capture, sync
        self.backend, self.what = backend, what
        self.launches = {}

    def run(self, key, work) -> None:
        launch = self.launches.get(key)
        if launch is None and self.on:
            work()                             # a first run outside the capture: lazy set-ups (TensorRT's, cuDNN's)
            self.sync()
            try:
                launch = self.launches[key] = self.capture(work)
            except Exception as e:             # noqa: BLE001  (the library or the driver refused the capture)
                self.on = False
                self.sync()
                print(f"[{self.backend}] CUDA graph capture of {self.what} failed ({first_line(e)}): "
                      "running it without a graph", file=sys.stderr, flush=True)
        if launch is not None:
            launch()
        else:
            work()

    def clear(self) -> None:
        self.launches.clear()


@dataclass
class Network:
    """The engine's part of the chain."""

    input_ptr: int             # [cap, 3, H, W] where the preprocess kernel writes
    input_dtype: np.dtype      # float32 or float16
    input_hw: tuple            # (H, W)
    output_ptr: int            # what run(n) writes: float32 logits [cap, C, h, w] or labels [cap, h, w]
    output_dtype: np.dtype
    label_hw: tuple            # (h, w) of the output
    run: Callable              # run(n): the network on the first n frames of the input buffer
    prepare: Callable | None = None   # prepare(n): before n frames are staged (a dynamic batch's shape)


class FusedChain:
    """The chain of one engine: its set-ups, and run(frames, ...) -> [(overlay or labels, counts or None)]."""

    def __init__(self, device, network: Network, info, cap: int, graphs: CudaGraphs, kernels: Callable,
                 name: str):
        """kernels(): the engine's CudaKernels (made at the first set-up: the kernels compile then)."""
        self.device, self.net, self.info, self.cap = device, network, info, int(cap)
        self.graphs, self.kernels, self.name = graphs, kernels, name
        self.setups = {}               # set-up key -> buffers, kernels of that size, make_work, work per n
        self.labels = None             # labels after the argmax kernel (a logits output), made once

    def run(self, frames: list, alpha: float, mode: str, maps=None, num_cells: int = 0) -> list:
        """Every frame through the chain (the caller is inside the engine's context and stream)."""
        out = [None] * len(frames)
        for key, idx in plan_work(frames, self.cap, alpha, mode, num_cells):
            setup = self.setups.get(key) or self._setup(*key)
            self.setups[key] = setup
            done = self._run(key, setup, [frames[j] for j in idx], None if maps is None else maps[idx])
            for j, result in zip(idx, done):
                out[j] = result
        return out

    def _run(self, key, setup: dict, frames: list, maps) -> list:
        n = len(frames)
        if self.net.prepare is not None:
            self.net.prepare(n)
        host = setup["host"]
        for i, f in enumerate(frames):
            np.copyto(host["frames"][i], f)
        if maps is not None:
            np.copyto(host["cells"][:n], maps)
        work = setup["work"].get(n) or setup["make_work"](n)
        setup["work"][n] = work                # fixed addresses per n: replayable
        self.graphs.run((key, n), work)
        self.device.stream.synchronize()
        counts = host.get("counts")
        return [(o.copy(), None if counts is None else counts[i].reshape(-1, self.info.num_classes).copy())
                for i, o in enumerate(host["out"][:n])]

    def _labels(self):
        """(labels pointer, dtype): the argmax kernel's buffer for a logits output, else the output itself."""
        net = self.net
        if self.info.head != "logits":
            from engines.cuda_kernels import label_step
            label_step(net.output_dtype)       # int32 or int64, else a one-line error now
            return net.output_ptr, np.dtype(net.output_dtype)
        if np.dtype(net.output_dtype) != np.float32:
            raise RuntimeError(f"{self.name}: the argmax kernel reads float32 logits, the engine outputs "
                               f"{net.output_dtype}; rebuild from an ONNX with float32 outputs")
        if self.labels is None:
            self.labels = self.device.alloc((self.cap, *net.label_hw), np.int32)
        return self.device.ptr(self.labels), np.dtype(np.int32)

    def _setup(self, h, w, alpha, mode, num_cells: int) -> dict:
        """Staging for up to `cap` h x w frames, and `make_work(n)`: the async chain for n of them
        (what a CUDA graph per n captures)."""
        from core.overlay import palette_bgr
        net, dev, k = self.net, self.device, self.kernels()
        labels_ptr, labels_dtype = self._labels()
        num_classes = self.info.num_classes
        out_h, out_w = net.label_hw
        shapes = staging_buffers(self.cap, (h, w), net.label_hw, mode, num_cells, num_classes, labels_dtype)
        with k.context:
            host = {name: dev.pinned(shape, dtype) for name, (shape, dtype) in shapes.items()}
            mem = {name: dev.alloc(shape, dtype) for name, (shape, dtype) in shapes.items()
                   if not (mode == LABELS and name == "out")}
            pre = k.preprocessor(h, w, *net.input_hw, self.info.mean, self.info.std, net.input_dtype)
            render = None if mode == LABELS else k.overlay_renderer(palette_bgr(self.info.palette))
        ptr = {name: dev.ptr(m) for name, m in mem.items()}
        result_ptr = labels_ptr if render is None else ptr["out"]
        stream = dev.stream

        def make_work(n):
            frames_in, out_down = host["frames"][:n], host["out"][:n]
            cells_in = host["cells"][:n] if num_cells else None
            counts_out = host["counts"][:n] if num_cells else None

            def work():
                dev.up(ptr["frames"], frames_in)
                pre(ptr["frames"], net.input_ptr, stream, frames=n)
                net.run(n)
                if self.info.head == "logits":
                    k.argmax(net.output_ptr, num_classes, out_h * out_w, labels_ptr, stream, frames=n)
                if render is not None:
                    render(ptr["frames"], h, w, labels_ptr, out_h, out_w, ptr["out"], alpha, mode,
                           label_dtype=labels_dtype, stream=stream, frames=n)
                dev.down(out_down, result_ptr)
                if cells_in is not None:       # zone counts from the labels on the GPU
                    dev.up(ptr["cells"], cells_in)
                    dev.zero(ptr["counts"], counts_out.nbytes)
                    k.zone_histogram_on_device(labels_ptr, out_h * out_w, ptr["cells"], num_classes, num_cells,
                                               ptr["counts"], labels_dtype, shared_cells=False, stream=stream,
                                               frames=n)
                    dev.down(counts_out, ptr["counts"])
            return work

        # Every allocation lives as long as the (possibly captured) work refers to it.
        return {"host": host, "mem": mem, "pre": pre, "render": render, "make_work": make_work, "work": {}}

    def close(self) -> None:
        self.graphs.clear()
        self.setups.clear()
        self.labels = None


class FusedEngine(Engine):
    """An Engine whose fused path is a FusedChain: the subclass sets `self.chain` and gives
    `_on_gpu()`, the context every chain call runs in (its CUDA context, stream, lock)."""

    fused = True           # run_fused / run_fused_frames: the CUDA preprocess + overlay chain
    fused_counts = True    # run_fused_counts: + the zone histogram on the device (scene analytics)

    def _on_gpu(self):
        raise NotImplementedError

    def run_fused(self, frame_bgr: np.ndarray, alpha: float = 0.5, mode: str = "overlay") -> np.ndarray:
        return self.run_fused_frames([frame_bgr], alpha, mode)[0]

    def run_fused_frames(self, frames: list, alpha: float = 0.5, mode: str = "overlay") -> list:
        """Overlays of several frames (several cameras'), in the frames' order: those of one size
        in one upload, one launch of each kernel, one network call and one download, up to the
        engine's batch at a time."""
        return [out for out, _ in self._fused(frames, alpha, mode)]

    def run_fused_counts(self, frames: list, cells: list, num_cells: int, alpha: float = 0.5,
                         mode: str = "overlay") -> tuple[list, list]:
        """run_fused_frames plus engines/overlay.cu's zone_histogram on the labels still on the
        GPU: the cell maps go up with the frames, [num_cells x classes] counts per frame come
        down with the overlays (in the same captured chain)."""
        from engines.cuda_kernels import stack_cell_maps
        maps = stack_cell_maps(cells, len(frames), self.chain.net.label_hw, num_cells)
        done = self._fused(frames, alpha, mode, maps, int(num_cells))
        return [out for out, _ in done], [counts for _, counts in done]

    def _fused(self, frames: list, alpha, mode, maps=None, num_cells: int = 0) -> list:
        """[(overlay or labels, counts or None)] in the frames' order."""
        if mode != LABELS:
            from engines.cuda_kernels import alpha_256, overlay_mode_id
            overlay_mode_id(mode)              # one-line errors before any GPU work
            alpha_256(alpha)
        with self._on_gpu():
            return self.chain.run(frames, float(alpha), mode, maps, num_cells)
