"""`bisenet build` and the TensorRT backend: what runs without a GPU runs here for real.

Here: argument parsing, the build plan (flags, explicit vs implicit INT8, DLA), the engine
sidecar and its version/GPU check, and the one-line errors of `bisenet build` and the backend
on a machine without TensorRT (a real subprocess, a real ONNX file). With TensorRT and a GPU
(marked gpu): a real engine built from a real ONNX, checked against ONNX Runtime and the CPU
overlay pipeline.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines import tensorrt_api as ta
from engines import tensorrt_build as tb
from engines import tensorrt_plan as tp
from core.sidecar import SidecarError, read_sidecar, write_sidecar
from core.files import file_sha256
from engines.tensorrt_engine import check_engine_sidecar
from testkit.tiny_conv import CLASSES, PALETTE, tiny_onnx

ROOT = Path(__file__).resolve().parents[2]
# -- argument parsing ----------------------------------------------------------------------------

def test_parse_shapes_accepts_hw_and_nchw():
    assert tp.parse_shapes("256x512/512x1024/1x3x1024x2048") == ((1, 3, 256, 512), (1, 3, 512, 1024),
                                                                  (1, 3, 1024, 2048))


@pytest.mark.parametrize("text,msg", [("512x1024", "min/opt/max"), ("1024x2048/512x1024/256x512", "min <= opt"),
                                      ("2x3x8x8/2x3x8x8/4x3x8x8", "H and W only"), ("axb/8x8/8x8", "bad shape"),
                                      ("0x8/8x8/8x8", "bad shape")])
def test_parse_shapes_rejects_with_one_line(text, msg):
    with pytest.raises(ValueError, match=msg) as e:
        tp.parse_shapes(text)
    assert "\n" not in str(e.value)


def test_resolve_input_shape_static_and_dynamic():
    assert tp.resolve_input_shape((1, 3, 512, 1024), None) == ((1, 3, 512, 1024), None)
    shapes = tp.parse_shapes("256x512/512x1024/1024x2048")
    assert tp.resolve_input_shape((1, 3, -1, -1), shapes) == ((1, 3, 512, 1024), shapes)
    with pytest.raises(ValueError, match="pass --shapes"):
        tp.resolve_input_shape((1, 3, -1, -1), None)
    with pytest.raises(ValueError, match="fixed at 1x3x512x1024"):
        tp.resolve_input_shape((1, 3, 512, 1024), shapes)
    with pytest.raises(ValueError, match="contradicts"):
        tp.resolve_input_shape((1, 4, -1, -1), shapes)


# -- an optimization profile over the batch (bisenet export --dynamic-batch) -------------------------

def test_plan_max_batch_from_the_flag_or_the_sidecar():
    dyn = {"dynamic_batch": True, "max_batch": 4, "input_shape": [1, 3, 8, 16]}
    assert tp.plan_max_batch(dyn) == 4
    assert tp.plan_max_batch(dyn, 6) == 6                        # the flag wins
    assert tp.plan_max_batch({**dyn, "max_batch": None}, 3) == 3
    assert tp.plan_max_batch({"dynamic_batch": False, "input_shape": [2, 3, 8, 16]}) is None
    assert tp.plan_max_batch({"input_shape": [1, 3, 8, 16]}) is None   # sidecars from before --dynamic-batch


@pytest.mark.parametrize("meta,flag,msg", [
    ({"dynamic_batch": True, "max_batch": None}, None, "takes any batch and its sidecar gives no max_batch: pass --max-batch N"),
    ({"dynamic_batch": False, "input_shape": [2, 3, 8, 16]}, 4, "takes a fixed batch of 2"),
    ({"dynamic_batch": True, "max_batch": 4}, 0, "--max-batch must be from 1 to 1024"),
    ({"dynamic_batch": True}, 2000, "--max-batch must be from 1 to 1024")])
def test_plan_max_batch_refusals_are_one_line(meta, flag, msg):
    with pytest.raises(ValueError, match=msg) as e:
        tp.plan_max_batch(meta, flag, "m.onnx")
    assert "\n" not in str(e.value)


def test_batch_profile_is_1_n_n():
    assert tp.resolve_input_shape((-1, 3, 8, 16), None, 4) == \
        ((4, 3, 8, 16), ((1, 3, 8, 16), (4, 3, 8, 16), (4, 3, 8, 16)))
    assert tp.resolve_input_shape(("batch", 3, 8, 16), None, 1) == \
        ((1, 3, 8, 16), ((1, 3, 8, 16),) * 3)                    # a dim name from the ONNX is dynamic too


def test_batch_profile_with_dynamic_hw_takes_hw_from_shapes():
    shapes = tp.parse_shapes("256x512/512x1024/1024x2048")
    assert tp.resolve_input_shape((-1, 3, -1, -1), shapes, 8) == \
        ((8, 3, 512, 1024), ((1, 3, 256, 512), (8, 3, 512, 1024), (8, 3, 1024, 2048)))
    fixed = tp.parse_shapes("8x16/8x16/8x16")                     # static H/W: --shapes may repeat them
    assert tp.resolve_input_shape((-1, 3, 8, 16), fixed, 2)[1] == ((1, 3, 8, 16), (2, 3, 8, 16), (2, 3, 8, 16))


@pytest.mark.parametrize("onnx_shape,shapes,max_batch,msg", [
    ((-1, 3, 8, 16), None, None, "dynamic batch: pass --max-batch N"),
    ((-1, 3, -1, -1), None, 4, "pass --shapes min/opt/max"),
    ((-1, 3, -1, -1), "2x3x8x8/2x3x8x8/2x3x8x8", 4, "write them as HxW"),
    ((-1, 3, 8, 16), "8x8/8x16/8x16", 4, "fixed at 1x3x8x16"),
    ((2, 3, 8, 16), None, 4, "batch is fixed at 2: --max-batch applies only")])
def test_batch_profile_refusals_are_one_line(onnx_shape, shapes, max_batch, msg):
    with pytest.raises(ValueError, match=msg) as e:
        tp.resolve_input_shape(onnx_shape, tp.parse_shapes(shapes) if shapes else None, max_batch)
    assert "\n" not in str(e.value)


def test_batch_engine_sidecar_records_the_range(tmp_path):
    onnx_path = tiny_onnx(tmp_path, dynamic_batch=True, max_batch=4)
    shape, profile = tp.resolve_input_shape((-1, 3, 8, 16), None, 4)
    cmd = tp.build_command(onnx_path, tmp_path / "b.engine", "fp16", max_batch=4)
    meta = tp.engine_sidecar(read_sidecar(onnx_path), onnx_path=onnx_path, onnx_sha256=file_sha256(onnx_path),
                             plan=tp.plan_build("fp16", False), input_shape=shape, profile=profile,
                             tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", command=cmd,
                             max_batch=4)
    engine = tmp_path / "b.engine"
    engine.write_bytes(b"not an engine")
    write_sidecar(engine, meta)
    back = read_sidecar(engine)
    assert back["batch_range"] == [1, 4] and back["max_batch"] == 4 and back["dynamic_batch"] is True
    assert back["input_shape"] == [4, 3, 8, 16] and back["shapes"][0] == [1, 3, 8, 16]
    assert back["dynamic"] is False                               # H/W stay fixed
    assert "--max-batch 4" in back["build_command"]
    from engines.base import Engine, ModelInfo
    eng = Engine()
    eng.info = ModelInfo.from_sidecar(back)
    assert [eng.batch_limit(c) for c in (1, 3, 4, 9)] == [1, 3, 4, 4]   # what the pipeline gives it


# -- the build plan ------------------------------------------------------------------------------

def test_plan_float_precisions():
    assert tp.plan_build("fp32", False).flags == []
    assert tp.plan_build("fp16", False).flags == ["FP16"]


def test_plan_int8_qdq_is_explicit_and_enables_fp16(tmp_path):
    plan = tp.plan_build("int8", has_qdq=True)
    assert (plan.int8_mode, plan.flags) == ("explicit", ["INT8", "FP16"])
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    plan = tp.plan_build("int8", has_qdq=True, calib_cache=cache)
    assert plan.int8_mode == "explicit" and "ignored" in plan.notes[0]


def test_plan_int8_plain_onnx_needs_a_cache(tmp_path):
    with pytest.raises(ValueError, match="bisenet calibrate"):
        tp.plan_build("int8", has_qdq=False)
    with pytest.raises(ValueError, match="no calibration cache"):
        tp.plan_build("int8", has_qdq=False, calib_cache=tmp_path / "missing.calib")
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    plan = tp.plan_build("int8", has_qdq=False, calib_cache=cache)
    assert (plan.int8_mode, plan.flags) == ("implicit", ["INT8", "FP16"])


def test_plan_refuses_mismatched_requests(tmp_path):
    with pytest.raises(ValueError, match="--precision int8"):
        tp.plan_build("fp16", has_qdq=True, onnx_name="model.int8.onnx")
    with pytest.raises(ValueError, match="--calib-cache is for --precision int8"):
        tp.plan_build("fp16", False, calib_cache=tmp_path / "x.calib")
    with pytest.raises(ValueError, match="DLA runs fp16 or int8"):
        tp.plan_build("fp32", False, dla_core=0)


def test_plan_dla_falls_back_to_gpu():
    plan = tp.plan_build("fp16", False, dla_core=1)
    assert plan.dla_core == 1 and plan.flags == ["FP16", "GPU_FALLBACK"]


# -- TensorRT 8.6 / 10.x / 11.x: the version dispatch and its one-line refusals ---------------------

TRT86, TRT10, TRT11 = ta.tensorrt_api("8.6.1"), ta.tensorrt_api("10.13.3.9"), ta.tensorrt_api("11.4.0")


def test_version_dispatch():
    assert (TRT86.major, TRT86.network_flag, TRT86.precision_flags, TRT86.implicit_int8, TRT86.progress_monitor) == \
        (8, "EXPLICIT_BATCH", True, True, False)
    assert (TRT10.major, TRT10.network_flag, TRT10.precision_flags, TRT10.implicit_int8, TRT10.progress_monitor) == \
        (10, None, True, True, True)
    assert (TRT11.major, TRT11.network_flag, TRT11.precision_flags, TRT11.implicit_int8, TRT11.progress_monitor) == \
        (11, None, False, False, True)
    assert ta.tensorrt_api("10.0.1").major == 10 and ta.tensorrt_api("11.0.0.7").major == 11


@pytest.mark.parametrize("version", ["8.5.3.1", "8.4.1", "9.2.0.post12", "12.0.0", "7.2.3", "", "abc"])
def test_unsupported_versions_are_one_line(version):
    with pytest.raises(RuntimeError) as e:
        ta.tensorrt_api(version)
    msg = str(e.value)
    assert "\n" not in msg and "TensorRT 8.6, 10.x or 11.x" in msg and "pip install 'tensorrt>=10,<12'" in msg


def test_plan_on_8_6_and_10_keeps_the_precision_flags(tmp_path):
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    for api in (TRT86, TRT10):
        assert tp.plan_build("fp16", False, api=api).flags == ["FP16"]
        assert tp.plan_build("fp16", False, onnx_precision="fp16", api=api).flags == ["FP16"]
        assert tp.plan_build("int8", True, api=api).flags == ["INT8", "FP16"]
        plan = tp.plan_build("int8", False, calib_cache=cache, api=api)
        assert (plan.int8_mode, plan.flags) == ("implicit", ["INT8", "FP16"])


def test_plan_on_11_is_strongly_typed():
    assert tp.plan_build("fp32", False, api=TRT11).flags == []
    assert tp.plan_build("fp16", False, onnx_precision="fp16", api=TRT11).flags == []
    plan = tp.plan_build("int8", True, onnx_name="m.int8.onnx", api=TRT11)
    assert (plan.int8_mode, plan.flags) == ("explicit", []) and "run in the ONNX's fp32" in plan.notes[0]
    assert tp.plan_build("fp16", False, dla_core=0, onnx_precision="fp16", api=TRT11).flags == ["GPU_FALLBACK"]


def one_line_refusal(match, **kw):
    with pytest.raises(ValueError, match=match) as e:
        tp.plan_build(**kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_plan_on_11_refuses_fp16_from_an_fp32_export():
    msg = one_line_refusal("TensorRT 11.4.0 builds each layer in the ONNX's own types", precision="fp16",
                           has_qdq=False, onnx_name="m.onnx", api=TRT11)
    assert "bisenet export ... --precision fp16" in msg


def test_plan_on_11_refuses_implicit_int8_naming_the_qdq_route(tmp_path):
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    msg = one_line_refusal("TensorRT 11.4.0 has no implicit INT8", precision="int8", has_qdq=False,
                           calib_cache=cache, onnx_name="m.onnx", api=TRT11)
    assert "bisenet calibrate --onnx m.onnx --data ... --target tensorrt" in msg and "--precision int8" in msg
    msg = one_line_refusal("Q/DQ nodes only", precision="int8", has_qdq=False, onnx_name="m.onnx", api=TRT11)
    assert "--target tensorrt" in msg and "--calib-cache" not in msg
    with pytest.raises(ValueError, match="no implicit INT8") as e:      # `bisenet calibrate --trt-cache` too
        ta.check_implicit_int8(TRT11, "m.onnx")
    assert "\n" not in str(e.value)
    ta.check_implicit_int8(TRT10)
    ta.check_implicit_int8(TRT86)


def test_an_fp16_export_builds_only_as_fp16():
    for api in (None, TRT86, TRT10, TRT11):
        one_line_refusal("m.fp16.onnx is an fp16 export: build it with --precision fp16", precision="fp32",
                         has_qdq=False, onnx_name="m.fp16.onnx", onnx_precision="fp16", api=api)


def test_build_refuses_an_fp16_export_at_fp32_before_tensorrt(tmp_path):
    onnx_path = tiny_onnx(tmp_path, precision="fp16")
    r = bisenet("build", "--onnx", str(onnx_path), "--precision", "fp32", "-o", str(tmp_path / "x.engine"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "is an fp16 export" in lines[0], r.stderr


# What the builder asks of the `tensorrt` module, per version. TensorRT is not installed here,
# so these stand-ins list the enum members NVIDIA's Python bindings define (NVIDIA/TensorRT
# python/src/infer/pyCore.cpp on release/8.6, release/10.16 and release/11.1). They test only
# that this code's dispatch never names a member its version lacks; nothing here ran TensorRT.
STAND_IN_ENUMS = {
    "8.6.1": {"BuilderFlag": ["FP16", "INT8", "GPU_FALLBACK"], "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH"]},
    "10.16.0": {"BuilderFlag": ["FP16", "INT8", "GPU_FALLBACK"],
                "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "STRONGLY_TYPED"]},
    "11.1.0": {"BuilderFlag": ["GPU_FALLBACK"], "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED"]},
}


def stand_in_tensorrt(version):
    from types import SimpleNamespace
    enums = STAND_IN_ENUMS[version]
    return SimpleNamespace(__version__=version, **{
        name: SimpleNamespace(**{m: i for i, m in enumerate(members)}) for name, members in enums.items()})


@pytest.mark.parametrize("version", sorted(STAND_IN_ENUMS))
def test_dispatch_names_only_members_the_version_has(tmp_path, version):
    trt = stand_in_tensorrt(version)
    api = ta.tensorrt_api(version)
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    assert ta.network_flags(trt, api) == (1 if version.startswith("8.") else 0)
    requests = [("fp32", False, None, None, "fp32"), ("fp16", False, None, 0, "fp16"),
                ("int8", True, None, None, "fp32")]
    if api.implicit_int8:
        requests += [("fp16", False, None, None, "fp32"), ("int8", False, cache, 1, "fp32")]
    for precision, qdq, calib, dla, onnx_precision in requests:
        plan = tp.plan_build(precision, qdq, calib, dla, onnx_precision=onnx_precision, api=api)
        for flag in plan.flags:
            getattr(trt.BuilderFlag, flag)     # AttributeError: a flag this version removed


# -- sidecar and the version / GPU check ------------------------------------------------------------

def engine_meta(tmp_path, trt_version="10.3.0", gpu="Orin", cc="8.7"):
    onnx_path = tiny_onnx(tmp_path)
    plan = tp.plan_build("fp16", False)
    cmd = tp.build_command(onnx_path, tmp_path / "tiny.engine", "fp16", workspace_mb=512)
    return tp.engine_sidecar(read_sidecar(onnx_path), onnx_path=onnx_path, onnx_sha256=file_sha256(onnx_path),
                             plan=plan, input_shape=(1, 3, 8, 16), profile=None, tensorrt_version=trt_version,
                             gpu_name=gpu, compute_capability=cc, command=cmd)


def test_engine_sidecar_keeps_model_facts_and_records_the_build(tmp_path):
    meta = engine_meta(tmp_path)
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not an engine")
    write_sidecar(engine, meta)
    back = read_sidecar(engine)          # the loader's own check accepts it
    assert back["classes"] == CLASSES and back["palette"] == PALETTE and back["mean"][0] == 123.675
    assert back["precision"] == "fp16" and back["onnx_precision"] == "fp32"
    assert back["tensorrt_version"] == "10.3.0" and back["compute_capability"] == "8.7"
    assert back["onnx_sha256"] == file_sha256(tmp_path / "tiny.onnx")
    assert back["build_command"].startswith("bisenet build --onnx ")


def test_check_engine_sidecar_accepts_the_same_machine(tmp_path):
    check_engine_sidecar(engine_meta(tmp_path), "tiny.engine", "10.3.0", "Orin", "8.7")


@pytest.mark.parametrize("trt_version,gpu,cc,word", [("10.4.0", "Orin", "8.7", "TensorRT 10.4.0"),
                                                     ("10.3.0", "NVIDIA A100", "8.0", "NVIDIA A100"),
                                                     ("8.6.2", "Orin", "8.7", "8.6.2")])
def test_check_engine_sidecar_mismatch_is_one_line_with_the_rebuild_command(tmp_path, trt_version, gpu, cc, word):
    meta = engine_meta(tmp_path)
    with pytest.raises(SidecarError) as e:
        check_engine_sidecar(meta, "tiny.engine", trt_version, gpu, cc)
    msg = str(e.value)
    assert "\n" not in msg and word in msg and meta["build_command"] in msg


def test_check_engine_sidecar_without_build_facts(tmp_path):
    meta = engine_meta(tmp_path)
    del meta["tensorrt_version"]
    with pytest.raises(SidecarError, match="lacks tensorrt_version"):
        check_engine_sidecar(meta, "tiny.engine", "10.3.0", "Orin", "8.7")


# -- without TensorRT: one-line errors from the real command ------------------------------------------

def has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except ImportError:
        return False


def bisenet(*args):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here: the missing-TensorRT message cannot show")
def test_build_without_tensorrt_says_what_to_install(tmp_path):
    onnx_path = tiny_onnx(tmp_path)
    r = bisenet("build", "--onnx", str(onnx_path), "--precision", "fp16", "-o", str(tmp_path / "tiny.engine"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'tensorrt>=10,<12'" in lines[0], r.stderr
    assert not (tmp_path / "tiny.engine").exists()


def test_build_input_errors_come_before_tensorrt(tmp_path):
    onnx_path = tiny_onnx(tmp_path)
    out = str(tmp_path / "x.engine")
    cases = [(["--onnx", str(tmp_path / "missing.onnx"), "-o", out], "no ONNX model"),
             (["--onnx", str(onnx_path), "--shapes", "8x16", "-o", out], "min/opt/max"),
             (["--onnx", str(onnx_path), "--precision", "fp32", "--dla-core", "0", "-o", out], "DLA runs"),
             (["--onnx", str(onnx_path), "--precision", "int8", "--calib-cache", str(tmp_path / "no.calib"),
               "-o", out], "no calibration cache"),
             (["--onnx", str(onnx_path), "--max-batch", "4", "-o", out], "--max-batch applies only"),
             (["--onnx", str(tiny_onnx(tmp_path, dynamic_batch=True)), "-o", out], "pass --max-batch N")]
    for args, msg in cases:
        r = bisenet("build", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], (args, r.stderr)


def test_build_help_has_an_example():
    r = bisenet("build", "--help")
    assert r.returncode == 0 and "Example: bisenet build --onnx" in r.stdout and "--dla-core" in r.stdout


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here")
def test_backend_without_tensorrt_is_one_line(tmp_path):
    from engines.tensorrt_engine import TensorRTEngine
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"\0" * 16)
    write_sidecar(engine, engine_meta(tmp_path))
    with pytest.raises(RuntimeError, match="pip install 'tensorrt>=10,<12'") as e:
        TensorRTEngine(engine)
    assert "\n" not in str(e.value)


def test_backend_refuses_an_engine_without_sidecar(tmp_path):
    from engines.tensorrt_engine import TensorRTEngine
    engine = tmp_path / "orphan.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(SidecarError, match="bisenet build"):
        TensorRTEngine(engine)


def test_tensorrt_modules_import_no_torch():
    code = ("import sys, engines.tensorrt_engine, engines.tensorrt_build, engines.cuda_kernels, app.build; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr



def test_engines_never_import_calibration_or_app():
    """engines/ sits below calibration/ and app/: no import of them, lazy ones included (the
    implicit-INT8 calibrator is handed to the build by `bisenet build`, app/build.py)."""
    import ast
    found = []
    for path in sorted((ROOT / "engines").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("calibration", "app")]
    assert found == []

# -- with TensorRT and a GPU ---------------------------------------------------------------------

def needs_tensorrt_gpu():
    if not has_tensorrt():
        pytest.skip("TensorRT not installed (pip install 'tensorrt>=10,<12', or JetPack on Jetson)")
    pytest.importorskip("pycuda", reason="pycuda not installed (pip install pycuda)")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,cuda_graph", [("fp32", False), ("fp16", True)])
def test_gpu_engine_matches_onnxruntime_and_cpu_overlay(tmp_path, precision, cuda_graph):
    """Built and created in this thread, run in another (as the app's inference thread does),
    closed from a third. fp16 builds the fp16 export: the one fp16 route on TensorRT 11."""
    needs_tensorrt_gpu()
    import onnxruntime as ort

    from core.overlay import palette_bgr, render_overlay
    from core.preprocess import preprocess
    from engines.tensorrt_engine import TensorRTEngine
    from testkit.app_helpers import run_in_thread
    onnx_path = tiny_onnx(tmp_path, h=64, w=128, precision=precision)
    engine_path = tmp_path / f"tiny.{precision}.engine"
    meta = tb.build_engine(onnx_path, engine_path, precision=precision, workspace_mb=256)
    assert json.loads((tmp_path / f"tiny.{precision}.engine.json").read_text())["precision"] == precision
    assert meta["onnx_sha256"] == file_sha256(onnx_path)
    eng = TensorRTEngine(engine_path, cuda_graph=cuda_graph)
    frame = np.random.default_rng(4).integers(0, 256, (90, 200, 3), dtype=np.uint8)
    x = preprocess(frame, (64, 128), meta["mean"], meta["std"])
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    def run():
        got = eng.infer_logits(x)
        return got, {mode: eng.run_fused(frame, alpha=0.5, mode=mode) for mode in ("overlay", "mask", "side-by-side")}

    got, fused = run_in_thread(run)
    again, _ = run_in_thread(run)           # a second thread replays what the first captured
    assert np.abs(got - ref).max() <= (1e-3 if precision == "fp32" else 5e-2)
    assert np.array_equal(got, again)
    lut = palette_bgr(np.asarray(PALETTE))
    for mode, out in fused.items():
        cpu = render_overlay(frame, ref[0].argmax(0), lut, alpha=0.5, mode=mode)
        same = (out == cpu).all(axis=2).mean()
        assert out.shape == cpu.shape and same >= (0.999 if precision == "fp32" else 0.98)
    run_in_thread(eng.close)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_dynamic_batch_engine_runs_1_to_n_frames(tmp_path, cuda_graph):
    """A --dynamic-batch ONNX built with a batch profile 1..4: built and created in this thread,
    run in another with batches of 1, 3, 4 and 6 (4 + 2) and back to 3 (graphs recaptured per batch
    size), each frame equal to ONNX Runtime's; run_fused_frames (five frames of two sizes:
    batches of 4 + 1 and 1) equal to run_fused frame by frame."""
    needs_tensorrt_gpu()
    import onnxruntime as ort

    from core.overlay import palette_bgr, render_overlay
    from core.preprocess import preprocess
    from engines.tensorrt_engine import TensorRTEngine
    from testkit.app_helpers import run_in_thread
    onnx_path = tiny_onnx(tmp_path, h=64, w=128, dynamic_batch=True, max_batch=4)
    meta = tb.build_engine(onnx_path, tmp_path / "tiny.b4.engine", precision="fp32", workspace_mb=256)
    assert meta["batch_range"] == [1, 4] and meta["shapes"][0][0] == 1 and meta["input_shape"][0] == 4
    eng = TensorRTEngine(tmp_path / "tiny.b4.engine", cuda_graph=cuda_graph)
    assert [eng.batch_limit(c) for c in (1, 3, 8)] == [1, 3, 4]
    x = np.random.default_rng(8).normal(size=(6, 3, 64, 128)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    rng = np.random.default_rng(9)
    frames = [rng.integers(0, 256, (90, 200, 3), dtype=np.uint8) for _ in range(5)]
    frames[2] = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    frame = frames[0]

    def run():
        got = {n: eng.infer_logits(x[:n]) for n in (1, 3, 4, 6)}
        got["3 again"] = eng.infer_logits(x[:3])
        batched = eng.run_fused_frames(frames, alpha=0.5, mode="side-by-side")
        singles = [eng.run_fused(f, alpha=0.5, mode="side-by-side") for f in frames]
        assert all(np.array_equal(a, b) for a, b in zip(batched, singles))
        # Scene analytics on the fused path: a cell map per frame, counts of the labels on the device.
        overlays, counts = eng.run_fused_counts(frames, cell_maps, 3, alpha=0.5, mode="side-by-side")
        assert all(np.array_equal(a, b) for a, b in zip(overlays, batched))
        host = [eng.infer(preprocess(f, (64, 128), meta["mean"], meta["std"]))[0] for f in frames]
        return got, eng.run_fused(frame, alpha=0.5, mode="overlay"), eng.infer(x[:3]), counts, host

    cell_maps = [np.zeros((64, 128), np.uint8) for _ in frames]
    for i, m in enumerate(cell_maps):
        m[:, 64:] = 1 + i % 2                 # two zone layouts, as two cameras would have
        m[:32, :] = np.maximum(m[:32, :], 1)
    got, fused, labels, counts, host = run_in_thread(run)
    for c, m, lab in zip(counts, cell_maps, host):
        assert c.shape == (3, 4) and c.dtype == np.uint32 and int(c.sum()) == 64 * 128
        want = np.bincount((m.astype(np.int64) * 4 + lab).ravel(), minlength=12).reshape(3, 4)
        assert np.abs(c.astype(np.int64) - want).sum() <= 0.004 * 64 * 128   # GPU vs CPU preprocess
    for n, out in got.items():
        n = int(str(n).split()[0])
        assert out.shape == (n, 4, 64, 128) and np.abs(out - ref[:n]).max() <= 1e-3, n
    assert np.array_equal(labels, got["3 again"].argmax(1))
    one = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"input": preprocess(frame, (64, 128), meta["mean"], meta["std"])})[0]
    cpu = render_overlay(frame, one[0].argmax(0), palette_bgr(np.asarray(PALETTE)), alpha=0.5, mode="overlay")
    assert (fused == cpu).all(axis=2).mean() >= 0.999
    run_in_thread(eng.close)


@pytest.mark.gpu
def test_gpu_uncapturable_engine_falls_back_to_plain_enqueue_once(tmp_path, capfd):
    """A stream synchronize inside the captured work is illegal during a capture: the capture
    fails, is ended, logged once, and every call runs plainly with the right result."""
    needs_tensorrt_gpu()
    import onnxruntime as ort

    from engines.tensorrt_engine import TensorRTEngine
    onnx_path = tiny_onnx(tmp_path, h=64, w=128)
    tb.build_engine(onnx_path, tmp_path / "tiny.engine", precision="fp32", workspace_mb=256)
    eng = TensorRTEngine(tmp_path / "tiny.engine", cuda_graph=True)
    execute = eng._execute

    def uncapturable():
        eng.stream.synchronize()
        execute()

    eng._execute = uncapturable
    x = np.random.default_rng(5).normal(size=(1, 3, 64, 128)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    for _ in range(3):
        assert np.abs(eng.infer_logits(x) - ref).max() <= 1e-3
    err = capfd.readouterr().err
    assert err.count("CUDA graph capture of tiny.engine failed") == 1 and not eng.use_cuda_graph, err
    eng.close()


@pytest.mark.gpu
def test_gpu_timing_cache_is_reported_and_the_sidecar_always_written(tmp_path, capfd):
    needs_tensorrt_gpu()
    onnx_path = tiny_onnx(tmp_path, h=64, w=128)
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"not a timing cache")        # refused by TensorRT: a new one replaces it
    tb.build_engine(onnx_path, tmp_path / "a.engine", precision="fp32", workspace_mb=256, timing_cache=cache)
    err = capfd.readouterr().err
    assert "does not fit this GPU/TensorRT" in err or "TensorRT took no timing cache" in err, err
    assert (tmp_path / "a.engine.json").is_file()
    if cache.read_bytes() != b"not a timing cache":   # TensorRT wrote its own: the next build loads it
        tb.build_engine(onnx_path, tmp_path / "b.engine", precision="fp32", workspace_mb=256, timing_cache=cache)
        assert "timing cache " + str(cache) + ": loaded" in capfd.readouterr().err
        assert (tmp_path / "b.engine.json").is_file()


@pytest.mark.gpu
def test_gpu_app_runs_an_engine_in_its_inference_thread(tmp_path):
    """The app end to end: run_camera.py loads the engine in its main thread and runs it (the
    fused CUDA path) in the pipeline's inference thread; every frame must come out."""
    needs_tensorrt_gpu()
    from app.latency import read_log
    from testkit.app_helpers import SAMPLE_VIDEO
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"no sample video at {SAMPLE_VIDEO}")
    engine = tmp_path / "tiny.engine"
    tb.build_engine(tiny_onnx(tmp_path, h=64, w=96), engine, precision="fp32", workspace_mb=256)
    r = subprocess.run([sys.executable, str(ROOT / "run_camera.py"), "--source", str(SAMPLE_VIDEO), "--model",
                        str(engine), "--max-frames", "30", "--output", str(tmp_path / "out.mp4"),
                        "--latency-log", str(tmp_path / "lat.csv")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = read_log(tmp_path / "lat.csv")
    assert len(rows) == 30 and not any(row["dropped"] for row in rows), r.stderr
    assert "inference failed" not in r.stderr
