"""One call from `--model` to an Engine: .onnx -> ONNX Runtime or OpenVINO (--backend),
.engine -> TensorRT, grpc:// or http:// -> a Triton Inference Server, a zoo name or model
YAML -> PyTorch (with --checkpoint, or the official checkpoint; --device cuda: the fused
PyTorch-CUDA engine). The backends are one table, BACKENDS; no plugin discovery.

Each backend declares its options beside its engine (a core/options.py Section in
engines/*_engine.py); EngineOptions gathers them, and `bisenet run`'s flags and preset keys
(app/settings.py), load_engine's `options` and load_model's keywords all come from it."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

from core.errors import InputError
from core.options import OneOf, Rule, Section, option
from core.sidecar import read_sidecar
from core.validate import Number
from engines.base import Engine
from engines.onnx_engine import OnnxRuntimeOptions
from engines.openvino_engine import OpenVinoOptions
from engines.torch_engine import TorchOptions
from engines.triton_engine import TritonOptions

ONNX_BACKENDS = ("openvino", "onnxruntime")   # --backend: the two that run an .onnx on the CPU


class LocalOptions(Section):
    """The choices among local engines: the CPU backend of an .onnx, its threads, the float
    compute precision (OpenVINO: fp32/bf16; the PyTorch-CUDA engine: fp32/fp16)."""
    threads: Annotated[int | None, Rule(Number(int, 1, 1024))] = option(
        None, "inference threads of the CPU backend (default: its own choice)", group="model")
    backend: Annotated[str | None, Rule(OneOf(ONNX_BACKENDS))] = option(
        None, "CPU backend for an .onnx (default: the faster for the file, openvino for int8 and bf16, onnxruntime "
        "for fp32; --providers cuda/tensorrt use onnxruntime)", group="model")
    precision: Annotated[str | None, Rule(OneOf(("fp32", "bf16", "fp16")))] = option(
        None, "float compute precision: OpenVINO fp32 (default) or bf16 (CPUs with bf16; an int8 model keeps its "
        "int8 layers); --device cuda fp32 (default) or fp16", group="model")


class EngineOptions(TritonOptions, LocalOptions, OpenVinoOptions, OnnxRuntimeOptions, TorchOptions):   # (fields: last base first)
    """How to load a model: every backend's options, each declared beside its engine
    (engines/*_engine.py) and gathered here. They are the `bisenet run` flags and preset keys
    of the same names (app/settings.py: RunSettings.engine), load_engine's `options` and
    load_model's keywords. A new backend option is one declaration in its engine's section."""


def _engine_class(module: str, name: str):
    """An engine class, imported only when it is used (the run-time path never imports torch)."""
    return getattr(importlib.import_module(f"engines.{module}"), name)


def _torch(model: str, o: EngineOptions) -> Engine:
    from core.model_config import load_model_config

    return _engine_class("torch_engine", "TorchEngine")(load_model_config(model), o.checkpoint,
                                                        input_size=o.input_size, device=o.device)


def _openvino(model: str, o: EngineOptions) -> Engine:
    compute, reason = openvino_precision(Path(model), o.precision)   # the fastest that passed its gate here
    return _engine_class("openvino_engine", "OpenVinoEngine")(model, precision=compute, threads=o.threads,
                                                             precision_reason=reason, streams=o.ov_streams)


# Every backend: name -> loader(model, options) -> Engine. A new backend is its engine file
# (with its options section, added to EngineOptions' bases), a line here and, for a new kind
# of model file, a line in backend_for.
BACKENDS = {
    "onnxruntime": lambda model, o: _engine_class("onnx_engine", "OnnxEngine")(model, providers=o.providers,
                                                                               threads=o.threads),
    "openvino": _openvino,
    "tensorrt": lambda model, o: _engine_class("tensorrt_engine", "TensorRTEngine")(model),
    "triton": lambda model, o: _engine_class("triton_engine", "TritonEngine")(model, shm=o.triton_shm,
                                                                              in_flight=o.triton_in_flight),
    "pytorch": _torch,
    "pytorch-cuda": lambda model, o: importlib.import_module("engines.torch_cuda_engine").load_torch_cuda_engine(
        model, o.checkpoint, o.input_size, o.device, o.precision, o.backend),   # the fused PyTorch-CUDA engine
}


def pick_backend(backend: str | None, providers: str | None, model_precision: str = "fp32",
                 precision: str | None = None) -> str:
    """The backend for an .onnx: the one asked for, else the faster one for this file on the
    CPU (bench/models.py, BENCHMARKS.md "CPU backends"): OpenVINO for an int8 QDQ model (its
    AMX/VNNI int8 ran 1.3-3x ONNX Runtime's, quiet and loaded) and for bf16 (only OpenVINO has
    it); ONNX Runtime for fp32 (the same speed quiet, less slow under load). GPU execution
    providers (--providers cuda/tensorrt) are ONNX Runtime's."""
    if backend is not None and backend not in ONNX_BACKENDS:
        raise InputError(f"--backend {backend!r}: use one of {', '.join(ONNX_BACKENDS)}")
    gpu = any(p.strip().lower() not in ("", "cpu") for p in (providers or "").split(","))
    if gpu:
        if backend == "openvino":
            raise InputError(f"--providers {providers} are ONNX Runtime's; use --backend onnxruntime "
                             "(or drop --providers for OpenVINO on the CPU)")
        return "onnxruntime"
    if backend:
        return backend
    return "openvino" if model_precision == "int8" or precision == "bf16" else "onnxruntime"


def backend_for(model: str, o: EngineOptions) -> str:
    """Which of BACKENDS runs `model`: a Triton URL, an .onnx (pick_backend), an .engine, or
    a zoo name / model YAML (PyTorch; on a CUDA device the fused PyTorch-CUDA engine)."""
    from engines.triton_engine import is_triton_url

    if is_triton_url(model):   # grpc://HOST:PORT/NAME or http://HOST:PORT/NAME: a Triton server
        if o.backend or o.precision not in (None, "fp32"):
            raise InputError("--backend and --precision choose a local engine; a Triton server runs its own "
                             "(bisenet serve-triton --backend)")
        return "triton"
    path = Path(model)
    if o.device.startswith("cuda") and path.suffix in (".onnx", ".engine"):
        raise InputError(f"--device {o.device} runs a zoo name / model YAML with PyTorch on the GPU; "
                         + ("for an .onnx use --providers cuda (ONNX Runtime) or `bisenet build` an .engine"
                            if path.suffix == ".onnx" else "a TensorRT .engine runs on its GPU already: drop --device"))
    if o.device.startswith("cuda") and path.suffix not in (".pth", ".pt"):
        return "pytorch-cuda"
    if path.suffix != ".onnx" and (o.backend or o.precision not in (None, "fp32")):
        what = f"--backend {o.backend}" if o.backend else f"--precision {o.precision}"
        raise InputError(f"{what} applies to .onnx models; {model} is not one")
    if path.suffix == ".onnx":
        chosen = pick_backend(o.backend, o.providers, sidecar_precision(path), o.precision)
        if chosen == "onnxruntime" and o.precision not in (None, "fp32"):
            raise InputError(f"--precision {o.precision} needs --backend openvino (ONNX Runtime runs the model's "
                             "own precision)")
        if chosen == "openvino" and o.precision == "fp16":
            raise InputError("--precision fp16 is the CUDA engine's (a zoo name / model YAML with --device cuda); "
                             "OpenVINO runs fp32 or bf16")
        return chosen
    if path.suffix == ".engine":
        return "tensorrt"
    if path.suffix in (".pth", ".pt"):
        raise InputError(f"--model {model}: a checkpoint goes in --checkpoint; --model takes a zoo name, "
                         "a model YAML, an .onnx or an .engine")
    return "pytorch"


def load_engine(model: str, options: EngineOptions | dict | None = None, **keywords) -> Engine:
    """`--model` -> an Engine; `options`: an EngineOptions (e.g. `bisenet run`'s settings.engine)
    or its fields as keywords (backend: 'openvino' or 'onnxruntime' for an .onnx, None:
    pick_backend's choice; precision: the float compute precision), checked: a bad value is one
    InputError naming the flag."""
    o = EngineOptions.of(options if options is not None else keywords)
    model = str(model)
    return BACKENDS[backend_for(model, o)](model, o)


def sidecar_or_empty(path: Path) -> dict:
    """The model's sidecar, or {} when it is missing or bad: the engine reports that itself."""
    try:
        return read_sidecar(path)
    except (OSError, ValueError):
        return {}


def sidecar_precision(path: Path) -> str:
    """'int8', 'fp32', ... from the model's sidecar (fp32 when it has none)."""
    return str(sidecar_or_empty(path).get("precision", "fp32"))


# ---------------------------------------------------------------- precision choice (engines/precision.py)
def openvino_precision(path: Path, requested: str | None) -> tuple[str, str]:
    """The compute precision for OpenVINO and why: the fastest one the model's gate passed on this CPU."""
    from engines.cpu_features import detect
    from engines.precision import choose_precision

    return choose_precision(sidecar_or_empty(path), detect(), requested)
