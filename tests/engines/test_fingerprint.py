"""Engine fingerprints (engines/fingerprint.py): what `bisenet build` records, what loading refuses.

The sidecars here are written by hand, as JSON files beside an engine file, and read back with
the loader's own read_sidecar. This machine has no TensorRT and no GPU, so the machine's side
comes from `StandInProbe`: a stand-in for engines.fingerprint.MachineProbe with fixed values,
not a TensorRT query. The rebuild path runs the real `build_engine` (which stops at the missing
TensorRT with its one line) and, for the success path, a stand-in builder (clearly named) that
writes the sidecar a build on this machine would write.
"""
from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from app.cli import run_with_one_line_errors
from core.sidecar import SidecarError, read_sidecar, sidecar_path
from engines import fingerprint as fp
from engines.tensorrt_build import build_engine
from engines.tensorrt_plan import BuildOptions
from testkit.tiny_conv import CLASSES, PALETTE, tiny_onnx

ORIN = fp.Fingerprint(tensorrt_version="10.3.0", cuda_version="12.6", driver_version="540.4.0",
                      gpu_name="Orin", compute_capability="8.7")
COMMAND = "bisenet build --onnx tiny.onnx --precision fp16 -o tiny.engine"


class StandInProbe:
    """A stand-in for MachineProbe: this machine has no TensorRT and no GPU to ask."""

    def __init__(self, fingerprint: fp.Fingerprint):
        self.fingerprint = fingerprint

    def __call__(self) -> fp.Fingerprint:
        return self.fingerprint


def other(**changes) -> fp.Fingerprint:
    return fp.Fingerprint(**{**ORIN.as_sidecar(), **changes})


def write_engine(tmp_path, fingerprint=ORIN, options=None, drop=()) -> tuple:
    """tiny.engine (bytes that are not an engine: nothing here deserializes it) and a hand-written sidecar."""
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"stand-in engine bytes")
    meta = {"sidecar_version": 1, "model": "tiny", "classes": CLASSES, "palette": PALETTE,
            "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "input_shape": [1, 3, 8, 16],
            "head": "logits", "precision": "fp16", "build_command": COMMAND,
            **{k: v for k, v in fingerprint.as_sidecar().items() if v is not None}}
    if options is not None:
        meta["build_options"] = options
    for key in drop:
        meta.pop(key)
    sidecar_path(engine).write_text(json.dumps(meta, indent=1))
    return engine, read_sidecar(engine)


def refusal(meta, engine, here) -> str:
    with pytest.raises(SidecarError) as e:
        fp.check_or_rebuild(meta, engine, StandInProbe(here))
    msg = str(e.value)
    assert "\n" not in msg and COMMAND in msg and "--rebuild" in msg, msg
    return msg


def test_the_same_machine_loads(tmp_path):
    engine, meta = write_engine(tmp_path)
    assert fp.check_or_rebuild(meta, engine, StandInProbe(ORIN)) is meta


@pytest.mark.parametrize("field,value,said", [
    ("tensorrt_version", "10.4.0", "built with TensorRT 10.3.0, this machine has TensorRT 10.4.0"),
    ("gpu_name", "NVIDIA A100-SXM4-40GB", "this machine has GPU NVIDIA A100-SXM4-40GB"),
    ("compute_capability", "9.0", "built with compute capability 8.7, this machine has compute capability 9.0"),
    ("cuda_version", "13.0", "built with CUDA 12.6, this machine has CUDA 13.0"),
])
def test_a_difference_that_breaks_the_engine_is_refused_in_one_line(tmp_path, field, value, said):
    engine, meta = write_engine(tmp_path)
    msg = refusal(meta, engine, other(**{field: value}))
    assert said in msg and str(engine) in msg


def test_every_difference_is_named(tmp_path):
    engine, meta = write_engine(tmp_path)
    msg = refusal(meta, engine, other(tensorrt_version="10.4.0", gpu_name="Thor", compute_capability="11.0"))
    assert "TensorRT 10.4.0" in msg and "GPU Thor" in msg and "compute capability 11.0" in msg


@pytest.mark.parametrize("changes", [{"driver_version": "580.159.04"}, {"cuda_version": "12.8"},
                                     {"cuda_version": "12"}])
def test_a_newer_driver_or_cuda_minor_keeps_the_engine(tmp_path, changes):
    engine, meta = write_engine(tmp_path)
    fp.check_or_rebuild(meta, engine, StandInProbe(other(**changes)))


def test_an_older_sidecar_without_cuda_and_driver_is_checked_on_what_it_has(tmp_path):
    engine, meta = write_engine(tmp_path, fp.Fingerprint(tensorrt_version="10.3.0", gpu_name="Orin",
                                                         compute_capability="8.7"))
    fp.check_or_rebuild(meta, engine, StandInProbe(other(cuda_version="13.0")))
    assert "TensorRT 10.4.0" in refusal(meta, engine, other(tensorrt_version="10.4.0"))


def test_a_sidecar_without_the_build_facts_is_refused(tmp_path):
    engine, meta = write_engine(tmp_path, drop=("tensorrt_version", "compute_capability"))
    with pytest.raises(SidecarError, match="lacks tensorrt_version, compute_capability") as e:
        fp.check_or_rebuild(meta, engine, StandInProbe(ORIN))
    assert COMMAND in str(e.value)


def test_a_refusal_is_one_line_and_exit_2_through_the_cli_handler(tmp_path, capsys):
    engine, meta = write_engine(tmp_path)
    code = run_with_one_line_errors("bisenet run", lambda _: fp.check_or_rebuild(
        meta, engine, StandInProbe(other(tensorrt_version="11.1.0"))), None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "TensorRT 11.1.0" in err[0] and COMMAND in err[0]


# -- the build records it; --rebuild reruns it ------------------------------------------------------

def test_build_options_are_build_engines_keyword_arguments():
    options = fp.build_options("m.onnx", "fp16", None, 1024, "trt.cache", None, "8x16/8x16/8x16", 4)
    params = {f.name for f in dataclasses.fields(BuildOptions)}   # build_engine's keywords
    assert set(options) | {"engine_path"} <= params
    record = fp.fingerprint_record(ORIN, options)
    assert json.loads(json.dumps(record)) == record          # JSON-ready
    assert record["cuda_version"] == "12.6" and record["build_options"]["workspace_mb"] == 1024


def stand_in_builder(calls, here=ORIN):
    """A stand-in for build_engine (TensorRT cannot build here): records its arguments and writes
    the sidecar a build on `here` would write."""
    def build(engine_path, **options):
        calls.append({"engine_path": engine_path, **options})
        meta = {**read_sidecar(engine_path), **here.as_sidecar(), "build_options": options}
        return meta
    return build


def test_rebuild_reruns_the_recorded_build_with_the_onnx_beside_the_engine(tmp_path):
    onnx_path = tiny_onnx(tmp_path)
    options = fp.build_options("/gone/elsewhere/tiny.onnx", "fp16", workspace_mb=512)
    engine, meta = write_engine(tmp_path, options=options)
    calls = []
    here = other(tensorrt_version="10.4.0")
    new = fp.check_or_rebuild(meta, engine, StandInProbe(here), rebuild=True, build=stand_in_builder(calls, here))
    assert new["tensorrt_version"] == "10.4.0"
    assert calls == [{"engine_path": engine, **options, "onnx_path": str(onnx_path)}]


def test_rebuild_is_not_run_when_the_engine_fits(tmp_path):
    engine, meta = write_engine(tmp_path, options=fp.build_options("tiny.onnx", "fp16"))
    calls = []
    fp.check_or_rebuild(meta, engine, StandInProbe(ORIN), rebuild=True, build=stand_in_builder(calls))
    assert calls == []


def test_rebuild_without_recorded_options_or_onnx_is_one_line(tmp_path):
    engine, meta = write_engine(tmp_path)
    with pytest.raises(SidecarError, match="records no build options") as e:
        fp.check_or_rebuild(meta, engine, StandInProbe(other(gpu_name="Thor")), rebuild=True,
                            build=build_engine)
    assert COMMAND in str(e.value)
    engine, meta = write_engine(tmp_path, options=fp.build_options(tmp_path / "missing.onnx", "fp16"))
    with pytest.raises(SidecarError, match="its ONNX .*missing.onnx is gone") as e:
        fp.check_or_rebuild(meta, engine, StandInProbe(other(gpu_name="Thor")), rebuild=True,
                            build=build_engine)
    assert "\n" not in str(e.value)


def test_rebuild_on_this_machine_runs_the_real_build_until_tensorrt_is_missing(tmp_path):
    """The real build_engine on a real ONNX: its input checks pass, then TensorRT's absence is one line."""
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the build would run")
    except ImportError:
        pass
    onnx_path = tiny_onnx(tmp_path)
    engine, meta = write_engine(tmp_path, options=fp.build_options(onnx_path, "fp16", workspace_mb=512))
    with pytest.raises(RuntimeError, match="pip install 'tensorrt>=10,<12'") as e:
        fp.check_or_rebuild(meta, engine, StandInProbe(other(tensorrt_version="10.4.0")), rebuild=True,
                            build=build_engine)
    assert "\n" not in str(e.value)
    assert engine.read_bytes() == b"stand-in engine bytes"      # nothing written


# -- this machine's probes: whatever they find, they do not fail ---------------------------------------

def test_machine_probes_answer_a_version_or_none():
    for probe in (fp.cuda_driver_version, fp.nvidia_driver_version, fp.tensorrt_cuda_version):
        value = probe()
        assert value is None or (isinstance(value, str) and value[0].isdigit()), (probe, value)
