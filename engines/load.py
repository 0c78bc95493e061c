"""One call from `--model` to an Engine: .onnx -> ONNX Runtime or OpenVINO (--backend),
.engine -> TensorRT, grpc:// or http:// -> a Triton Inference Server, a zoo name or model
YAML -> PyTorch (with --checkpoint, or the official checkpoint)."""
from __future__ import annotations

from pathlib import Path

from engines.base import Engine
from core.sidecar import read_sidecar

BACKENDS = ("openvino", "onnxruntime")


def pick_backend(backend: str | None, providers: str | None, model_precision: str = "fp32",
                 precision: str | None = None) -> str:
    """The backend for an .onnx: the one asked for, else the faster one for this file on the
    CPU (bench/models.py, BENCHMARKS.md "CPU backends"): OpenVINO for an int8 QDQ model (its
    AMX/VNNI int8 ran 1.3-3x ONNX Runtime's, quiet and loaded) and for bf16 (only OpenVINO has
    it); ONNX Runtime for fp32 (the same speed quiet, less slow under load). GPU execution
    providers (--providers cuda/tensorrt) are ONNX Runtime's."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    gpu = any(p.strip().lower() not in ("", "cpu") for p in (providers or "").split(","))
    if gpu:
        if backend == "openvino":
            raise ValueError(f"--providers {providers} are ONNX Runtime's; use --backend onnxruntime "
                             "(or drop --providers for OpenVINO on the CPU)")
        return "onnxruntime"
    if backend:
        return backend
    return "openvino" if model_precision == "int8" or precision == "bf16" else "onnxruntime"


def load_engine(model: str, checkpoint: str | None = None, providers: str | None = None,
                input_size=None, threads: int | None = None, device: str = "cpu",
                backend: str | None = None, precision: str | None = None,
                triton_shm: str = "none", triton_in_flight: int = 2) -> Engine:
    """backend: 'openvino' or 'onnxruntime' for an .onnx (None: pick_backend's choice);
    precision: the float compute precision, 'fp32' (default) or 'bf16' (OpenVINO only)."""
    from engines.triton_engine import TritonEngine, is_triton_url

    if is_triton_url(model):   # grpc://HOST:PORT/NAME or http://HOST:PORT/NAME: a Triton server
        if backend or precision not in (None, "fp32"):
            raise ValueError("--backend and --precision choose a local engine; a Triton server runs its own "
                             "(bisenet serve-triton --backend)")
        return TritonEngine(model, shm=triton_shm, in_flight=triton_in_flight)
    path = Path(model)
    if device.startswith("cuda") and path.suffix not in (".onnx", ".engine", ".pth", ".pt"):   # [w7 issue 22]
        from engines.torch_cuda_engine import load_torch_cuda_engine   # the fused PyTorch-CUDA engine
        return load_torch_cuda_engine(model, checkpoint, input_size, device, precision, backend)
    if path.suffix != ".onnx" and (backend or precision not in (None, "fp32")):
        what = f"--backend {backend}" if backend else f"--precision {precision}"
        raise ValueError(f"{what} applies to .onnx models; {model} is not one")
    if path.suffix == ".onnx":
        chosen = pick_backend(backend, providers, sidecar_precision(path), precision)
        if chosen == "openvino":
            from engines.openvino_engine import OpenVinoEngine

            compute, reason = openvino_precision(path, precision)
            return OpenVinoEngine(path, precision=compute, threads=threads, precision_reason=reason)
        if precision not in (None, "fp32"):
            raise ValueError(f"--precision {precision} needs --backend openvino (ONNX Runtime runs the model's "
                             "own precision)")
        from engines.onnx_engine import OnnxEngine

        return OnnxEngine(path, providers=providers, threads=threads)
    if path.suffix == ".engine":
        from engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path)
    if path.suffix in (".pth", ".pt"):
        raise ValueError(f"--model {model}: a checkpoint goes in --checkpoint; --model takes a zoo name, "
                         "a model YAML, an .onnx or an .engine")
    from core.model_config import load_model_config
    from engines.torch_engine import TorchEngine

    return TorchEngine(load_model_config(model), checkpoint, input_size=input_size, device=device)


def sidecar_precision(path: Path) -> str:
    """'int8', 'fp32', ... from the model's sidecar; the engine reports a missing one."""
    try:
        return str(read_sidecar(path).get("precision", "fp32"))
    except (OSError, ValueError):
        return "fp32"


# ---------------------------------------------------------------- precision choice (engines/precision.py)
def openvino_precision(path: Path, requested: str | None) -> tuple[str, str]:
    """The compute precision for OpenVINO and why: the fastest one the model's gate passed on this CPU."""
    from engines.cpu_features import detect
    from engines.precision import choose_precision

    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError):
        sidecar = {}   # the engine reports a missing or bad sidecar itself
    return choose_precision(sidecar, detect(), requested)
