"""One call from `--model` to an Engine: .onnx -> ONNX Runtime, .engine -> TensorRT,
grpc:// or http:// -> a Triton Inference Server, a zoo name or model YAML -> PyTorch (with
--checkpoint, or the official checkpoint)."""
from __future__ import annotations

from pathlib import Path

from engines.base import Engine


def load_engine(model: str, checkpoint: str | None = None, providers: str | None = None,
                input_size=None, threads: int | None = None, device: str = "cpu",
                triton_shm: str = "none", triton_in_flight: int = 2) -> Engine:
    from engines.triton_engine import TritonEngine, is_triton_url

    if is_triton_url(model):   # grpc://HOST:PORT/NAME or http://HOST:PORT/NAME: a Triton server
        return TritonEngine(model, shm=triton_shm, in_flight=triton_in_flight)
    path = Path(model)
    if path.suffix == ".onnx":
        from engines.onnx_engine import OnnxEngine

        return OnnxEngine(path, providers=providers, threads=threads)
    if path.suffix == ".engine":
        from engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path)
    if path.suffix in (".pth", ".pt"):
        raise ValueError(f"--model {model}: a checkpoint goes in --checkpoint; --model takes a zoo name, "
                         "a model YAML, an .onnx or an .engine")
    from engines.model_config import load_model_config
    from engines.torch_engine import TorchEngine

    return TorchEngine(load_model_config(model), checkpoint, input_size=input_size, device=device)
