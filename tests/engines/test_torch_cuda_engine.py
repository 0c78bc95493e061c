"""The PyTorch-CUDA engine (engines/torch_cuda_engine.py).

Here (no GPU, CPU-only torch): the planning (precision -> input dtype, buffer shapes, the
device name; the shared chain's grouping: tests/test_fused_chain.py), its one-line refusals, and the one-line exit-2 error of `--device
cuda` where torch has no CUDA, through the real load_engine. On a GPU with CUDA torch and CuPy
(marked gpu): the fused chain against the CPU pipeline on CamVid frames with the trained
CamVid checkpoint, made in one thread and run in another, batches, CUDA graphs, fp16.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import run_with_one_line_errors
from core.errors import BisenetError, InputError
from core.model_config import load_model_config
from engines import torch_cuda_engine as tce
from engines.load import load_engine

ROOT = Path(__file__).resolve().parents[2]
CAMVID = "bisenetv1_r18-d32_camvid-360x480"
CHECKPOINT = next((p / "shared" / "models" / "camvid_r18-d32_cpu.pth" for p in ROOT.parents
                   if (p / "shared" / "models" / "camvid_r18-d32_cpu.pth").is_file()), None)


@pytest.fixture(scope="module")
def cfg():
    return load_model_config(CAMVID)


def torch_has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


# -- the plan ------------------------------------------------------------------------------------------

def test_fp32_plan_writes_float32_input_and_holds_the_batch(cfg):
    plan = tce.plan_engine(cfg)
    assert plan.input_size == (352, 480) and plan.input_dtype == np.float32
    assert plan.max_batch == tce.DEFAULT_MAX_BATCH
    buffers = plan.buffers()
    assert buffers["input"] == ((8, 3, 352, 480), np.float32)
    assert buffers["logits"] == ((8, 11, 352, 480), np.float32)       # what the argmax kernel reads
    assert buffers["labels"] == ((8, 352, 480), np.int32)


def test_fp16_plan_has_the_kernel_write_float16(cfg):
    plan = tce.plan_engine(cfg, (512, 1024), "fp16", 3)
    assert plan.input_dtype == np.float16 and plan.buffers()["input"] == ((3, 3, 512, 1024), np.float16)
    assert plan.buffers()["logits"][1] == np.float32     # half logits are widened for the argmax kernel


@pytest.mark.parametrize("mode,out", [("overlay", ((2, 360, 480, 3), np.uint8)),
                                      ("side-by-side", ((2, 360, 960, 3), np.uint8)),
                                      (tce.LABELS, ((2, 352, 480), np.int32))])
def test_frame_buffers_per_mode(cfg, mode, out):
    bufs = tce.plan_engine(cfg, max_batch=2).frame_buffers((360, 480), mode)
    assert bufs["frames"] == ((2, 360, 480, 3), np.uint8) and bufs["out"] == out


def test_frame_buffers_with_zone_cells_add_the_maps_up_and_the_counts_down(cfg):
    bufs = tce.plan_engine(cfg, max_batch=2).frame_buffers((360, 480), "overlay", num_cells=5)
    assert bufs["cells"] == ((2, 352, 480), np.uint8)          # at the label size, one byte a pixel
    assert bufs["counts"] == ((2, 5 * 11), np.uint32)         # [cells x classes] per frame


@pytest.mark.parametrize("cells,num_cells,msg", [
    ([np.zeros((352, 480), np.uint8)] * 2, 2, "1 frames but 2 cell maps"),
    ([np.zeros((352, 480), np.int32)], 2, "int32 (352, 480) cell map"),
    ([np.zeros((360, 480), np.uint8)], 2, "the labels are 352x480"),
    ([np.full((352, 480), 3, np.uint8)], 2, "names cell 3, beyond its 2 cells"),
    ([np.zeros((352, 480), np.uint8)], 300, "one byte per pixel"),
])
def test_cell_maps_the_gpu_engines_refuse_are_one_line(cells, num_cells, msg):
    from engines.cuda_kernels import stack_cell_maps
    with pytest.raises(ValueError) as e:
        stack_cell_maps(cells, 1, (352, 480), num_cells)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,msg", [({"precision": "bf16"}, "fp32 or fp16"),
                                        ({"input_size": (360, 480)}, "multiples of 32"),
                                        ({"max_batch": 0}, "1 to 64"), ({"max_batch": 65}, "1 to 64")])
def test_plan_refusals_are_one_line(cfg, kwargs, msg):
    with pytest.raises(InputError, match=msg) as e:
        tce.plan_engine(cfg, **kwargs)
    assert "\n" not in str(e.value)


def test_device_names():
    assert tce.cuda_device_index("cuda") == tce.cuda_device_index("cuda:0") == 0
    with pytest.raises(InputError, match="CUDA_VISIBLE_DEVICES"):
        tce.cuda_device_index("cuda:1")


def test_cupy_wheel_follows_torchs_cuda():
    assert tce.cupy_package("12.6") == "cupy-cuda12x" and tce.cupy_package("13.0") == "cupy-cuda13x"


def test_the_module_imports_neither_torch_nor_cupy():
    code = "import sys, engines.torch_cuda_engine; print('torch' in sys.modules, 'cupy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "False False", r.stderr


# -- --device cuda where torch has no CUDA --------------------------------------------------------------

@pytest.mark.skipif(torch_has_cuda(), reason="torch has CUDA here: the no-CUDA message cannot show")
def test_device_cuda_without_cuda_torch_is_one_line_naming_what_to_install(capsys):
    pytest.importorskip("torch")
    with pytest.raises(tce.CudaUnavailable) as e:
        tce.require_torch_cuda()
    assert isinstance(e.value, BisenetError) and e.value.exit_code == 2
    assert "CUDA build of PyTorch" in str(e.value) and "pip install torch --index-url" in str(e.value)
    # the real load path, the CLI's own handler: exit 2, one line, before any weights are read
    code = run_with_one_line_errors("bisenet run", lambda _: load_engine(CAMVID, checkpoint="no-such.pth",
                                                                         device="cuda"), None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "CUDA build of PyTorch" in err[0], err


@pytest.mark.parametrize("kwargs,msg", [({"backend": "openvino"}, "--backend openvino chooses an ONNX backend"),
                                        ({"precision": "bf16"}, "runs fp32 or fp16"),
                                        ({"input_size": (100, 100)}, "multiples of 32")])
def test_device_cuda_refusals_come_before_torch(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        load_engine(CAMVID, device="cuda", **kwargs)


def test_a_checkpoint_as_model_keeps_its_own_message():
    with pytest.raises(ValueError, match="a checkpoint goes in --checkpoint"):
        load_engine("camvid.pth", device="cuda")


# -- on a GPU ------------------------------------------------------------------------------------------

def gpu_engine(cfg, **kwargs):
    if CHECKPOINT is None:
        pytest.skip("../shared/models/camvid_r18-d32_cpu.pth not found")
    try:
        return tce.TorchCudaEngine(cfg, CHECKPOINT, **kwargs)
    except tce.CudaUnavailable as e:
        pytest.skip(str(e))


def camvid_frames(n):
    import cv2
    from testkit.cuda_host import DATA
    if DATA is None:
        pytest.skip("../shared/data not found")
    return [cv2.imread(str(p)) for p in sorted((DATA / "camvid" / "val").glob("*.jpg"))[:n]]


def cpu_labels(cfg, frames):
    from core.preprocess import preprocess
    from engines.torch_engine import TorchEngine
    cpu = TorchEngine(cfg, CHECKPOINT)
    return [cpu.infer(preprocess(f, cpu.info.input_size, cfg.mean, cfg.std))[0] for f in frames]


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_fused_labels_equal_the_cpu_pipeline(cfg, cuda_graph):
    """Made here, run in another thread (the app's inference thread); 3 frames in one batch; fp32."""
    from core.overlay import palette_bgr, render_overlay
    from core.preprocess import preprocess
    from testkit.app_helpers import run_in_thread
    eng = gpu_engine(cfg, cuda_graph=cuda_graph, max_batch=4)
    frames = camvid_frames(3)
    got = run_in_thread(eng.run_fused_labels, frames)
    again = run_in_thread(eng.run_fused_labels, frames)        # a replay when graphs are on
    for g, a, ref in zip(got, again, cpu_labels(cfg, frames)):
        assert np.array_equal(g, a)
        assert (g == ref).mean() >= 0.999
    overlays = run_in_thread(eng.run_fused_frames, frames, 0.5, "overlay")
    lut = palette_bgr(eng.info.palette)
    for frame, labels, overlay in zip(frames, got, overlays):
        assert np.array_equal(overlay, render_overlay(frame, labels, lut, 0.5, "overlay"))
    single = [run_in_thread(eng.run_fused_labels, [f])[0] for f in frames]
    assert all(np.array_equal(s, g) for s, g in zip(single, got))   # a batch of 3 = 3 single frames
    host = run_in_thread(eng.infer, np.concatenate([preprocess(f, eng.info.input_size, cfg.mean, cfg.std)
                                                    for f in frames]))
    assert all((h == g).mean() >= 0.999 for h, g in zip(host, got))
    eng.close()


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_zone_counts_equal_the_histogram_of_the_fused_labels(cfg, cuda_graph):
    """run_fused_counts (what the pipeline calls with analytics on): per frame its own cell map
    (two cameras' zones), counts on the device equal app/analytics/coverage.py's cell_histogram
    of the same chain's labels, and the overlays equal run_fused_frames'. Made here, run in
    another thread; twice (a replay when graphs are on)."""
    from app.analytics.coverage import cell_histogram
    from app.analytics.specs import ZoneSpec
    from app.analytics.zones import Zones

    def zone(name, polygon):
        return ZoneSpec(name=name, polygon=polygon)
    from testkit.app_helpers import run_in_thread
    eng = gpu_engine(cfg, cuda_graph=cuda_graph, max_batch=4)
    frames = camvid_frames(3)
    a = Zones([zone("lane", [(0.3, 0.5), (0.7, 0.5), (0.9, 1), (0.1, 1)]), zone("sky", [(0, 0), (1, 0), (1, 0.3)])],
              cfg.num_classes).raster(eng.info.input_size, frames[0].shape[1::-1])
    b = Zones([zone("right", [(0.6, 0), (1, 0), (1, 1), (0.6, 1)])],
              cfg.num_classes).raster(eng.info.input_size, frames[0].shape[1::-1])
    rasters = [a, b, a]
    cells = max(r.num_cells for r in rasters)
    labels = run_in_thread(eng.run_fused_labels, frames)
    for _ in range(2):
        overlays, counts = run_in_thread(eng.run_fused_counts, frames, [r.cells for r in rasters], cells, 0.5, "overlay")
        for lab, r, c in zip(labels, rasters, counts):
            assert c.shape == (cells, cfg.num_classes) and c.dtype == np.uint32
            assert np.array_equal(c[:r.num_cells], cell_histogram(lab, r, cfg.num_classes))
            assert not c[r.num_cells:].any()
        plain = run_in_thread(eng.run_fused_frames, frames, 0.5, "overlay")
        assert all(np.array_equal(o, p) for o, p in zip(overlays, plain))
    eng.close()


@pytest.mark.gpu
def test_gpu_fp16_labels_mostly_agree(cfg):
    eng = gpu_engine(cfg, precision="fp16")
    frames = camvid_frames(2)
    for g, ref in zip(eng.run_fused_labels(frames), cpu_labels(cfg, frames)):
        assert (g == ref).mean() >= 0.97
    eng.close()
