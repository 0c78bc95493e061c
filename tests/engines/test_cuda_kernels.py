"""The CUDA kernels (engines/*.cu) held to the CPU references on real frames.

On every machine: the same .cu text is compiled as host C++ (testkit/cuda_host_shim.h) and
every (block, thread) index of the launch grid is executed through ctypes, then compared with
core/preprocess.py and core/overlay.py. With nvcc: PTX for Jetson Orin (sm_87), Ampere (sm_86)
and Hopper (sm_90). With a GPU (marked gpu): the kernels themselves through pycuda or CuPy.
"""
from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from core.overlay import palette_bgr, render_overlay
from core.preprocess import preprocess
from engines import cuda_kernels as ck
from core.model_config import load_model_config
from testkit.cuda_host import DATA, gpu_kernels, host, needs_data, ptr  # noqa: F401 (host: a fixture)

CITYSCAPES = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"


def camvid_frames(n=2):
    return [cv2.imread(str(p)) for p in sorted((DATA / "camvid" / "val").glob("*.jpg"))[:n]]


def cityscapes_frame():
    return cv2.imread(str(DATA / "samples" / "cityscapes_street_2048x1024.png"))


def camvid_labels():
    return cv2.imread(str(sorted((DATA / "camvid" / "valannot").glob("*.png"))[0]), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def model():
    return load_model_config(CITYSCAPES)


# -- the host build ------------------------------------------------------------------------------

def host_preprocess(so, bgr, size_hw, mean, std, dtype=np.float32):
    """What CudaKernels.preprocess does on a GPU, with the same launch shapes and arguments.
    bgr: one HxWx3 image or N of them (NxHxWx3): N frames in one launch (grid z = N)."""
    frames = np.ascontiguousarray(bgr).reshape(-1, *bgr.shape[-3:])
    (src_h, src_w), (h, w) = frames.shape[1:3], size_hw
    tables = []
    for src_len, dst_len, clamp in ((src_w, w, 1), (src_h, h, 0)):
        ofs, wts = np.zeros(dst_len, np.int32), np.zeros(2 * dst_len, np.int16)
        so.host_linear_resize_coeffs(*ck.grid_1d(dst_len), *ck.BLOCK_1D[:2], src_len, dst_len, clamp,
                                     ptr(ofs), ptr(wts))
        tables += [ofs, wts]
    f16 = np.dtype(dtype) == np.float16
    out = np.full((len(frames), 3, h, w), 7, np.uint16 if f16 else np.float32)   # junk: every element must be written
    fn = so.host_preprocess_bgr_f16 if f16 else so.host_preprocess_bgr_f32
    fn(*ck.grid_2d(w, h, len(frames)), *ck.BLOCK_2D[:2], ptr(frames), src_h, src_w, src_w * 3,
       *(ptr(t) for t in tables), *ck.normalization_args(mean, std), ptr(out), h, w)
    return out.view(np.float16) if f16 else out


def host_overlay(so, image, labels, lut, alpha, mode):
    """One HxWx3 image + hxw labels, or N of each (NxHxWx3 + Nxhxw) in one launch."""
    image = np.ascontiguousarray(image)
    labels = np.ascontiguousarray(labels)
    frames = 1 if image.ndim == 3 else len(image)
    height, width = image.shape[-3:-1]
    out = np.full((*image.shape[:-3], height, 2 * width if mode == "side-by-side" else width, 3), 7, np.uint8)
    so.host_overlay_bgr(*ck.grid_2d(width, height, frames), *ck.BLOCK_2D[:2], ptr(image), height, width,
                        ptr(labels), labels.shape[-2], labels.shape[-1], ck.label_step(labels.dtype),
                        ptr(np.ascontiguousarray(lut)), ck.alpha_256(alpha), ck.overlay_mode_id(mode), ptr(out))
    return out


# -- preprocess ----------------------------------------------------------------------------------

def max_diff(a, b) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())


@needs_data
@pytest.mark.parametrize("size_hw", [(512, 1024), (256, 320), (360, 480), (720, 960), (333, 1000)])
def test_host_preprocess_matches_cpu_on_camvid(host, model, size_hw):
    for frame in camvid_frames():
        ref = preprocess(frame, size_hw, model.mean, model.std)
        got = host_preprocess(host, frame, size_hw, model.mean, model.std)
        assert got.shape == ref.shape
        assert max_diff(got, ref) <= 1e-3, f"{frame.shape} -> {size_hw}"


@needs_data
@pytest.mark.parametrize("size_hw", [(512, 1024), (360, 640), (1024, 2048)])
def test_host_preprocess_matches_cpu_on_cityscapes(host, model, size_hw):
    frame = cityscapes_frame()
    ref = preprocess(frame, size_hw, model.mean, model.std)
    got = host_preprocess(host, frame, size_hw, model.mean, model.std)
    assert max_diff(got, ref) <= 1e-3


@needs_data
def test_host_preprocess_float16_matches_cpu(host, model):
    frame = camvid_frames(1)[0]
    ref = preprocess(frame, (512, 1024), model.mean, model.std, dtype=np.float16)
    got = host_preprocess(host, frame, (512, 1024), model.mean, model.std, dtype=np.float16)
    assert got.dtype == np.float16
    # Both round the same float32 to half: the bits agree, not just the values.
    assert np.array_equal(got.view(np.uint16), ref.view(np.uint16))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_host_float16_rounding_on_every_kind_of_value(host):
    # mean 0, std 1: the kernel's float->half conversion sees the pixel values themselves,
    # and std 1/2^k scales them into the subnormal, rounding-tie and overflow ranges.
    img = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    for std in (1.0, 2.0 ** 20, 2.0 ** 30, 2.0 ** -8, 3.0, 1e-7):
        ref = preprocess(img, (16, 16), [0, 0, 0], [std] * 3, dtype=np.float16)
        got = host_preprocess(host, img, (16, 16), [0, 0, 0], [std] * 3, dtype=np.float16)
        assert np.array_equal(got.view(np.uint16), ref.view(np.uint16)), std


@pytest.mark.parametrize("src_hw,dst_hw", [((37, 53), (64, 64)), ((7, 5), (1, 1)), ((5, 7), (41, 23)),
                                           ((64, 64), (21, 32)), ((1, 9), (3, 4)), ((100, 3), (33, 97))])
def test_host_preprocess_edges_on_noise(host, src_hw, dst_hw):
    # Odd sizes and extreme ratios exercise the clamped borders of both resize passes.
    img = np.random.default_rng(0).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    assert max_diff(host_preprocess(host, img, dst_hw, mean, std), preprocess(img, dst_hw, mean, std)) <= 1e-3


# -- overlay -------------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("mode", ["overlay", "mask", "side-by-side"])
@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_host_overlay_matches_cpu_on_camvid(host, mode, alpha):
    frame = camvid_frames(1)[0]
    labels = camvid_labels()[::4, ::4].astype(np.int32)     # model resolution 90x120, ids 0..11
    lut = palette_bgr(np.random.default_rng(1).integers(0, 256, (11, 3)))   # 11 -> unlabelled, black
    ref = render_overlay(frame, labels, lut, alpha=alpha, mode=mode)
    got = host_overlay(host, frame, labels, lut, alpha, mode)
    assert got.shape == ref.shape
    assert np.array_equal(got, ref)


@needs_data
@pytest.mark.parametrize("mode", ["overlay", "mask", "side-by-side"])
def test_host_overlay_matches_cpu_on_cityscapes(host, model, mode):
    frame = cityscapes_frame()
    # Labels at 512x1024 from a real label map: CamVid's classes stretched, plus ids past the palette.
    labels = cv2.resize(camvid_labels(), (1024, 512), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    labels[:8] = 255
    lut = palette_bgr(np.asarray(model.palette))
    ref = render_overlay(frame, labels, lut, alpha=0.6, mode=mode)
    got = host_overlay(host, frame, labels, lut, 0.6, mode)
    assert np.array_equal(got, ref)


def test_host_overlay_int64_labels_and_odd_sizes(host):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)
    labels = rng.integers(0, 300, (7, 13)).astype(np.int64)   # > 255 wraps like the CPU's uint8 cast
    lut = palette_bgr(rng.integers(0, 256, (19, 3)))
    for mode in ck.OVERLAY_MODES:
        assert np.array_equal(host_overlay(host, image, labels, lut, 0.45, mode),
                              render_overlay(image, labels, lut, alpha=0.45, mode=mode))


def test_host_overlay_matches_cpu_at_1080p_from_a_352x480_label_map(host):
    """The demo model's label size on a 1080p camera: a non-integer scale on both axes."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    labels = rng.integers(0, 12, (352, 480)).astype(np.int32)
    lut = palette_bgr(rng.integers(0, 256, (11, 3)))
    for mode in ck.OVERLAY_MODES:
        assert np.array_equal(host_overlay(host, image, labels, lut, 0.5, mode),
                              render_overlay(image, labels, lut, alpha=0.5, mode=mode)), mode


def test_host_argmax_matches_numpy_first_maximum(host):
    logits = np.random.default_rng(3).integers(-3, 3, (19, 33, 47)).astype(np.float32)  # many ties
    labels = np.full((33, 47), -1, np.int32)
    plane = 33 * 47
    host.host_argmax_channels(*ck.grid_1d(plane), *ck.BLOCK_1D[:2], ptr(logits), 19, plane, ptr(labels))
    assert np.array_equal(labels, np.argmax(logits, axis=0))


# -- N frames in one launch (blockIdx.z = frame): each frame as if it ran alone -------------------

@needs_data
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_host_batched_preprocess_equals_single_frames(host, model, dtype):
    # Three different real frames back to back: frame i of the batch is bit for bit the
    # single-frame kernel's output for frame i (so within the CPU budget like it), and no
    # frame reads or writes another's memory.
    frames = np.stack(camvid_frames(3))
    got = host_preprocess(host, frames, (256, 320), model.mean, model.std, dtype)
    assert got.shape == (3, 3, 256, 320)
    for i, frame in enumerate(frames):
        one = host_preprocess(host, frame, (256, 320), model.mean, model.std, dtype)
        assert np.array_equal(got[i:i + 1].view(np.uint8), one.view(np.uint8)), i
        assert max_diff(got[i:i + 1], preprocess(frame, (256, 320), model.mean, model.std, dtype=dtype)) <= 1e-3


@pytest.mark.parametrize("mode", ["overlay", "mask", "side-by-side"])
def test_host_batched_overlay_equals_single_frames(host, mode):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (4, 31, 45, 3), dtype=np.uint8)
    lut = palette_bgr(rng.integers(0, 256, (19, 3)))
    for dtype in (np.int32, np.int64):
        labels = rng.integers(0, 300, (4, 7, 13)).astype(dtype)
        got = host_overlay(host, images, labels, lut, 0.45, mode)
        for i in range(4):
            assert np.array_equal(got[i], host_overlay(host, images[i], labels[i], lut, 0.45, mode)), (i, dtype)
            assert np.array_equal(got[i], render_overlay(images[i], labels[i], lut, alpha=0.45, mode=mode))


def test_host_batched_argmax_equals_numpy_per_frame(host):
    logits = np.random.default_rng(7).integers(-3, 3, (3, 19, 33, 47)).astype(np.float32)
    labels = np.full((3, 33, 47), -1, np.int32)
    plane = 33 * 47
    host.host_argmax_channels(*ck.grid_1d(plane, 3), *ck.BLOCK_1D[:2], ptr(logits), 19, plane, ptr(labels))
    assert np.array_equal(labels, np.argmax(logits, axis=1))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="--alpha"):
        ck.alpha_256(1.5)
    with pytest.raises(ValueError, match="side-by-side"):
        ck.overlay_mode_id("blend")
    with pytest.raises(ValueError, match="int32 or int64"):
        ck.label_step(np.uint8)
    with pytest.raises(ValueError, match="1 to 65535 frames"):
        ck.grid_2d(64, 64, 0)


# -- PTX for the Jetson and desktop targets --------------------------------------------------------

@pytest.mark.parametrize("arch", ["sm_87", "sm_86", "sm_90"])
def test_kernels_compile_to_ptx(tmp_path, arch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed (CUDA toolkit); the PTX check needs it")
    for name, src in ck.KERNEL_FILES.items():
        out = tmp_path / f"{name}_{arch}.ptx"
        subprocess.run([nvcc, "--ptx", f"-arch={arch}", "-o", str(out), str(src)], check=True)
        text = out.read_text()
        for kernel in ck.KERNELS[name]:
            assert f".entry {kernel}(" in text, kernel   # extern "C": names unmangled


# -- on a GPU ------------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_data
def test_gpu_kernels_match_cpu(model):
    """Compiled in this thread, run in another (the app's inference thread does the same)."""
    from testkit.app_helpers import run_in_thread
    k = gpu_kernels()
    frame = cityscapes_frame()
    for dtype in (np.float32, np.float16):
        ref = preprocess(frame, (512, 1024), model.mean, model.std, dtype=dtype)
        got = run_in_thread(k.preprocess, frame, (512, 1024), model.mean, model.std, dtype)
        assert max_diff(got, ref) <= 1e-3
    labels = cv2.resize(camvid_labels(), (1024, 512), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    lut = palette_bgr(np.asarray(model.palette))
    for mode in ck.OVERLAY_MODES:
        got = run_in_thread(k.overlay, frame, labels, lut, 0.5, mode)
        assert np.array_equal(got, render_overlay(frame, labels, lut, 0.5, mode))


@pytest.mark.gpu
@needs_data
def test_gpu_batched_kernels_equal_single_frames(model):
    """Three frames in one launch (grid z = 3), run in another thread: each frame equals its
    single-frame launch bit for bit, and the CPU references (preprocess within 1e-3, the overlay
    bit for bit)."""
    from testkit.app_helpers import run_in_thread
    k = gpu_kernels()
    frames = np.stack(camvid_frames(3))
    got = run_in_thread(k.preprocess, frames, (256, 320), model.mean, model.std)
    labels = np.stack([camvid_labels()[::4, ::4].astype(np.int32)] * 3)
    labels[1] = labels[1][::-1]
    lut = palette_bgr(np.asarray(model.palette))
    over = run_in_thread(k.overlay, frames, labels, lut, 0.4, "side-by-side")
    for i, frame in enumerate(frames):
        assert np.array_equal(got[i:i + 1], k.preprocess(frame, (256, 320), model.mean, model.std))
        assert max_diff(got[i:i + 1], preprocess(frame, (256, 320), model.mean, model.std)) <= 1e-3
        assert np.array_equal(over[i], k.overlay(frame, labels[i], lut, 0.4, "side-by-side"))
        assert np.array_equal(over[i], render_overlay(frame, labels[i], lut, 0.4, "side-by-side"))


@pytest.mark.gpu
@needs_data
def test_gpu_graph_replay_matches_direct_launches(model):
    """CudaGraph (driver API through ctypes) on the backend's stream replays preprocess + overlay:
    resources made in this thread, the graph captured in a second thread, replayed in a third."""
    from testkit.app_helpers import run_in_thread
    k = gpu_kernels()
    frame = camvid_frames(1)[0]
    h, w = frame.shape[:2]
    labels = camvid_labels()[::4, ::4].astype(np.int32)
    lut = palette_bgr(np.asarray(model.palette))
    stream = k.stream()
    pre = k.preprocessor(h, w, 256, 320, model.mean, model.std)
    render = k.overlay_renderer(lut)
    src, lab = k.to_device(frame), k.to_device(labels)
    x, out = k.empty((1, 3, 256, 320), np.float32), k.empty(frame.shape, np.uint8)

    def work():
        pre(k.ptr(src), k.ptr(x), stream)
        render(k.ptr(src), h, w, k.ptr(lab), *labels.shape, k.ptr(out), 0.4, "overlay", stream=stream)

    graph = run_in_thread(ck.CudaGraph, k.stream_handle(stream), work, k.context)   # captured, not yet run

    def replay():
        with k.context:                                  # the test's own array calls
            x.set(np.zeros(x.shape, np.float32))
            out.set(np.zeros(out.shape, np.uint8))
            k.synchronize()                              # the zeroing is done before the replay
            graph.launch()
            stream.synchronize()
            return x.get(), out.get()

    got_x, got_out = run_in_thread(replay)
    assert max_diff(got_x, preprocess(frame, (256, 320), model.mean, model.std)) <= 1e-3
    assert np.array_equal(got_out, render_overlay(frame, labels, lut, alpha=0.4, mode="overlay"))


@pytest.mark.gpu
def test_gpu_failed_capture_ends_it_and_raises_the_real_error():
    """An error inside the captured work ends the capture (the stream stays usable) and is the
    error the caller sees, not the driver's CAPTURE_INVALIDATED."""
    k = gpu_kernels()
    stream = k.stream()

    def work():
        raise ValueError("not capturable")

    with pytest.raises(ValueError, match="not capturable"):
        ck.CudaGraph(k.stream_handle(stream), work, k.context)
    a = k.to_device(np.arange(8, dtype=np.int32))
    with k.context:
        assert np.array_equal(a.get(), np.arange(8))      # the context and the stream still work
        stream.synchronize()


@pytest.mark.gpu
def test_gpu_primary_context_is_pushed_and_popped_in_any_thread():
    """engines.cuda_context.PrimaryContext with pycuda: current only inside the block, nested
    entries pop back to the outer one, an exception still pops, any thread."""
    pycuda = pytest.importorskip("pycuda.driver", reason="pycuda not installed (pip install pycuda)")
    from engines.cuda_context import PrimaryContext
    from testkit.app_helpers import run_in_thread
    try:
        ctx = PrimaryContext("pycuda")
        with ctx:
            pass
    except RuntimeError as e:
        pytest.skip(f"no usable CUDA GPU here ({e})")

    def check():
        assert pycuda.Context.get_current() is None
        with ctx:
            outer = pycuda.Context.get_current()
            with ctx:
                assert pycuda.Context.get_current() == outer
                buf = ctx.cuda.mem_alloc(64)
            assert pycuda.Context.get_current() == outer
            buf.free()
        assert pycuda.Context.get_current() is None
        with pytest.raises(KeyError):
            with ctx:
                raise KeyError("inside")
        assert pycuda.Context.get_current() is None
        return int(outer.handle)

    assert run_in_thread(check) == run_in_thread(check)   # the same (primary) context in every thread
