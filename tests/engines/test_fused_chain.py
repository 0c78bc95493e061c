"""The fused GPU chain both GPU engines share (engines/fused_chain.py), on the host.

The planning (frames grouped by size in order and capped at the batch, one set-up per (h, w,
alpha, mode, zone cells), the staging shapes), the CUDA-graph policy (capture once per key and
replay; a refused capture turns graphs off with one line), and the chain itself: FusedChain runs
here on a host "device" (numpy memory behind integer addresses, the kernels' CPU references
from core/), so the order of its steps, the batching and the per-frame results are checked
against the CPU pipeline frame by frame. The real kernels and libraries: tests/engines/test_tensorrt.py,
tests/engines/test_torch_cuda_engine.py and tests/engines/test_cuda_kernels.py on a GPU.
"""
from __future__ import annotations

import contextlib

import cv2
import numpy as np
import pytest

from core.model_info import ModelInfo
from core.overlay import palette_bgr, render_overlay
from core.preprocess import preprocess
from engines.fused_chain import LABELS, CudaGraphs, FusedChain, Network, group_frames, plan_work, staging_buffers

# -- the plan --------------------------------------------------------------------------------------


def test_frames_are_grouped_by_size_in_order_and_capped():
    a, b = np.zeros((4, 6, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)
    groups = group_frames([a, b, a, a, b, a], cap=2)
    assert groups == [((4, 6), [0, 2]), ((4, 6), [3, 5]), ((8, 6), [1, 4])]


@pytest.mark.parametrize("frame", [np.zeros((4, 6, 3), np.float32), np.zeros((4, 6), np.uint8), "frame.jpg"])
def test_a_frame_that_is_not_uint8_bgr_is_one_line(frame):
    with pytest.raises(ValueError, match="uint8 BGR") as e:
        group_frames([np.zeros((4, 6, 3), np.uint8), frame], cap=4)
    assert "\n" not in str(e.value)


def test_work_items_are_keyed_by_what_their_set_up_fixes():
    a, b = np.zeros((4, 6, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)
    plan = plan_work([a, b, a, a], cap=2, alpha=np.float32(0.5), mode="mask", num_cells=3)
    assert plan == [((4, 6, 0.5, "mask", 3), [0, 2]), ((4, 6, 0.5, "mask", 3), [3]), ((8, 6, 0.5, "mask", 3), [1])]
    assert all(type(key[2]) is float for key, _ in plan)     # 0.5 from numpy or Python: one set-up


@pytest.mark.parametrize("mode,out", [("overlay", ((2, 360, 480, 3), np.uint8)),
                                      ("side-by-side", ((2, 360, 960, 3), np.uint8)),
                                      (LABELS, ((2, 352, 480), np.int64))])
def test_staging_buffers_per_mode(mode, out):
    bufs = staging_buffers(2, (360, 480), (352, 480), mode, labels_dtype=np.int64)
    assert bufs == {"frames": ((2, 360, 480, 3), np.uint8), "out": out}


def test_staging_buffers_with_zone_cells_add_the_maps_up_and_the_counts_down():
    bufs = staging_buffers(2, (360, 480), (352, 480), "overlay", num_cells=5, num_classes=11)
    assert bufs["cells"] == ((2, 352, 480), np.uint8)          # at the label size, one byte a pixel
    assert bufs["counts"] == ((2, 5 * 11), np.uint32)         # [cells x classes] per frame


# -- the CUDA-graph policy -------------------------------------------------------------------------

def test_graphs_are_captured_once_per_key_and_replayed():
    runs, captures = [], []

    def capture(work):
        captures.append(work)
        return lambda: runs.append("replay")

    graphs = CudaGraphs(True, capture, lambda: None, "tensorrt", "model.engine")
    for key in ("a", "a", "b", "a"):
        graphs.run(key, lambda: runs.append("work"))
    assert len(captures) == 2                 # a first run outside the capture, then the capture's replay
    assert runs == ["work", "replay", "replay", "work", "replay", "replay"]
    graphs.clear()                            # (a dynamic batch's new shape)
    graphs.run("a", lambda: runs.append("work"))
    assert len(captures) == 3


def test_a_refused_capture_turns_graphs_off_with_one_line(capfd):
    def refuse(work):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    runs = []
    graphs = CudaGraphs(True, refuse, lambda: None, "tensorrt", "model.engine")
    for key in ("a", "b", "a"):
        graphs.run(key, lambda: runs.append(key))
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["[tensorrt] CUDA graph capture of model.engine failed (operation not permitted when stream is "
                   "capturing): running it without a graph"]
    assert not graphs.on and runs == ["a", "a", "b", "a"]    # the warm-up, then plain runs every time


# -- the chain on a host device ----------------------------------------------------------------------

class HostMemory:
    """Device memory stand-in: numpy blocks behind integer addresses (block k at k << 32)."""

    def __init__(self):
        self.blocks = {}

    def block(self, nbytes: int) -> int:
        base = (len(self.blocks) + 1) << 32
        self.blocks[base] = np.zeros(max(int(nbytes), 1), np.uint8)
        return base

    def view(self, ptr: int, dtype, shape) -> np.ndarray:
        base, off = ptr >> 32 << 32, ptr & 0xFFFFFFFF
        count = int(np.prod(shape))
        return self.blocks[base][off:off + count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


class HostDevice:
    """The device calls FusedChain makes (as PycudaDevice and TorchDevice give them), on HostMemory."""

    stream = type("Stream", (), {"synchronize": lambda self: None})()

    def __init__(self, mem: HostMemory):
        self.mem = mem

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def alloc(self, shape, dtype):
        return self.mem.block(int(np.prod(shape)) * np.dtype(dtype).itemsize)

    @staticmethod
    def ptr(allocation) -> int:
        return int(allocation)

    def up(self, dst, host):
        self.mem.view(dst, np.uint8, (host.nbytes,))[:] = host.reshape(-1).view(np.uint8)

    def down(self, host, src):
        host.reshape(-1).view(np.uint8)[:] = self.mem.view(src, np.uint8, (host.nbytes,))

    def zero(self, dst, nbytes):
        self.mem.view(dst, np.uint8, (nbytes,))[:] = 0


class HostKernels:
    """The kernels' calls, each done by its CPU reference (core/preprocess.py, core/overlay.py)."""

    context = contextlib.nullcontext()

    def __init__(self, mem: HostMemory):
        self.mem = mem

    def preprocessor(self, h, w, in_h, in_w, mean, std, dtype):
        def pre(src, dst, stream, frames):
            images = self.mem.view(src, np.uint8, (frames, h, w, 3))
            self.mem.view(dst, dtype, (frames, 3, in_h, in_w))[:] = np.concatenate(
                [preprocess(f, (in_h, in_w), mean, std, dtype) for f in images])
        return pre

    def overlay_renderer(self, lut):
        def render(image, h, w, labels, lh, lw, out, alpha, mode, label_dtype, stream, frames):
            images = self.mem.view(image, np.uint8, (frames, h, w, 3))
            maps = self.mem.view(labels, label_dtype, (frames, lh, lw))
            width = 2 * w if mode == "side-by-side" else w
            self.mem.view(out, np.uint8, (frames, h, width, 3))[:] = [
                render_overlay(f, m, lut, alpha, mode) for f, m in zip(images, maps)]
        return render

    def argmax(self, logits, num_classes, plane, labels, stream, frames):
        scores = self.mem.view(logits, np.float32, (frames, num_classes, plane))
        self.mem.view(labels, np.int32, (frames, plane))[:] = scores.argmax(1)

    def zone_histogram_on_device(self, labels, plane, cells, num_classes, num_cells, counts, label_dtype,
                                 shared_cells, stream, frames):
        maps = self.mem.view(labels, label_dtype, (frames, plane)).astype(np.int64)
        cell = self.mem.view(cells, np.uint8, (frames, plane)).astype(np.int64)
        self.mem.view(counts, np.uint32, (frames, num_cells * num_classes))[:] = [
            np.bincount(c * num_classes + m, minlength=num_cells * num_classes) for c, m in zip(cell, maps)]


NUM_CLASSES, IN_HW, CAP = 4, (32, 64), 2
WEIGHTS = np.random.default_rng(0).normal(size=(NUM_CLASSES, 3)).astype(np.float32)


def network_of(x: np.ndarray) -> np.ndarray:
    """The network stand-in: a fixed 1x1 convolution, [n, 3, H, W] -> logits [n, C, H, W]."""
    return np.einsum("ck,nkhw->nchw", WEIGHTS, x).astype(np.float32)


def host_chain(head: str):
    """A FusedChain on the host, with a logits network (as both engines) or a labels one (an
    engine exported with --head labels: TensorRT's labels are the output itself)."""
    mem = HostMemory()
    dev = HostDevice(mem)
    info = ModelInfo(model="tiny", class_names=[f"c{i}" for i in range(NUM_CLASSES)],
                     palette=np.arange(NUM_CLASSES * 3, dtype=np.uint8).reshape(-1, 3) * 20,
                     mean=np.array([120, 110, 100], np.float32), std=np.array([60, 55, 50], np.float32),
                     input_size=IN_HW, head=head)
    input_ptr = dev.alloc((CAP, 3, *IN_HW), np.float32)
    out_dtype = np.float32 if head == "logits" else np.int32
    out_shape = (CAP, NUM_CLASSES, *IN_HW) if head == "logits" else (CAP, *IN_HW)
    output_ptr = dev.alloc(out_shape, out_dtype)
    batches = []

    def run(n):
        batches.append(n)
        logits = network_of(mem.view(input_ptr, np.float32, (n, 3, *IN_HW)))
        mem.view(output_ptr, out_dtype, (n, *out_shape[1:]))[:] = logits if head == "logits" else logits.argmax(1)

    net = Network(input_ptr, np.dtype(np.float32), IN_HW, output_ptr, np.dtype(out_dtype), IN_HW, run)
    graphs = CudaGraphs(True, lambda work: work, lambda: None, "host", "the chain")
    chain = FusedChain(dev, net, info, CAP, graphs, lambda: HostKernels(mem), "tiny")
    return chain, info, batches


def cpu_labels(frame, info):
    return network_of(preprocess(frame, IN_HW, info.mean, info.std))[0].argmax(0)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    big = [cv2.GaussianBlur(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8), (9, 9), 3) for _ in range(3)]
    small = [cv2.GaussianBlur(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), (5, 5), 2) for _ in range(2)]
    return [big[0], small[0], big[1], big[2], small[1]]


@pytest.mark.parametrize("head", ["logits", "labels"])
@pytest.mark.parametrize("mode", ["overlay", "side-by-side"])
def test_the_chain_gives_each_frame_the_cpu_pipelines_overlay_in_order(frames, head, mode):
    chain, info, batches = host_chain(head)
    lut = palette_bgr(info.palette)
    for _ in range(2):                         # the second time from the cached set-ups and works
        done = chain.run(frames, 0.4, mode)
        for f, (overlay, counts) in zip(frames, done):
            assert counts is None
            assert np.array_equal(overlay, render_overlay(f, cpu_labels(f, info), lut, 0.4, mode))
    # 48x80: 2 + 1 (CAP 2), 24x40: 2; one network call each, the first of each twice (the warm-up
    # before the capture, then the graph's first replay: the "graph" here replays the work itself)
    assert batches == [2, 2, 1, 1, 2, 2] + [2, 1, 2]
    assert sorted(chain.setups) == [(24, 40, 0.4, mode, 0), (48, 80, 0.4, mode, 0)]
    assert sorted(chain.setups[(48, 80, 0.4, mode, 0)]["work"]) == [1, 2]   # a work (and graph) per n


def test_labels_mode_downloads_the_labels_at_the_network_size(frames):
    chain, info, _ = host_chain("logits")
    for f, (labels, _) in zip(frames, chain.run(frames, 0.0, LABELS)):
        assert labels.shape == IN_HW and labels.dtype == np.int32
        assert np.array_equal(labels, cpu_labels(f, info))


def test_zone_counts_come_down_per_frame_with_the_overlays(frames):
    chain, info, _ = host_chain("logits")
    maps = np.zeros((len(frames), *IN_HW), np.uint8)
    maps[:, :, 32:] = 1
    maps[1::2, :16, :] = 2                     # two cameras' zone layouts
    done = chain.run(frames, 0.5, "overlay", maps, 3)
    plain = chain.run(frames, 0.5, "overlay")
    for f, m, (overlay, counts), (alone, _) in zip(frames, maps, done, plain):
        want = np.bincount(m.astype(np.int64).ravel() * NUM_CLASSES + cpu_labels(f, info).ravel(),
                           minlength=3 * NUM_CLASSES).reshape(3, NUM_CLASSES)
        assert counts.dtype == np.uint32 and np.array_equal(counts, want)
        assert np.array_equal(overlay, alone)
    assert (48, 80, 0.5, "overlay", 3) in chain.setups and (48, 80, 0.5, "overlay", 0) in chain.setups


def test_a_logits_engine_with_half_outputs_is_one_line():
    chain, _, _ = host_chain("logits")
    chain.net.output_dtype = np.dtype(np.float16)
    with pytest.raises(RuntimeError, match="reads float32 logits") as e:
        chain.run([np.zeros((8, 8, 3), np.uint8)], 0.5, "overlay")
    assert "\n" not in str(e.value)
