"""ONNX Runtime engine: CPU by default; CUDA / TensorRT execution providers with onnxruntime-gpu."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.validate import readable_file
from engines.base import GraphEngine, ModelInfo, check_graph_io
from core.errors import InputError, SetupError, first_line
from core.sidecar import read_sidecar
from core.install_hint import extra_hint
from core.options import Section, Text, option


class OnnxRuntimeOptions(Section):
    """The ONNX Runtime backend's options (flags of `bisenet run`, load_model keywords)."""
    providers: Text = option(None, "ONNX Runtime providers, e.g. tensorrt,cuda,cpu (default cpu)", group="model")

# --providers short names -> ONNX Runtime provider names.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def parse_providers(spec, model_path: Path, precision: str = "fp32") -> list:
    """'tensorrt,cuda,cpu' -> the provider list for InferenceSession (with TensorRT options)."""
    import onnxruntime as ort

    names = [s.strip().lower() for s in (spec or "cpu").split(",") if s.strip()]
    available = set(ort.get_available_providers())
    out = []
    for name in names:
        if name not in PROVIDERS:
            raise InputError(f"--providers {name!r}: use a comma list of {', '.join(PROVIDERS)}")
        full = PROVIDERS[name]
        if full not in available:
            raise SetupError(f"ONNX Runtime here has no {full} (available: {', '.join(sorted(available))}); "
                               f"install onnxruntime-gpu ({extra_hint('gpu', 'onnxruntime-gpu')}) on an NVIDIA machine")
        if name == "tensorrt":
            cache = model_path.parent / ".ort_trt_cache"
            out.append((full, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                               "trt_timing_cache_enable": True, "trt_fp16_enable": precision != "fp32",
                               "trt_int8_enable": precision == "int8"}))
        else:
            out.append(full)
    if "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in out]:
        out.append("CPUExecutionProvider")  # fallback for ops the GPU providers do not take
    return out


# ONNX Runtime's intra-op threads spin while idle unless told not to (see OnnxEngine).
SPINNING = False


class OnnxEngine(GraphEngine):
    backend = "onnxruntime"

    def __init__(self, path, providers: str | None = None, threads: int | None = None,
                 precision: str | None = None, spinning: bool = SPINNING):
        import onnxruntime as ort

        self.path = readable_file(path, "model", "export one with `bisenet export`")
        meta = read_sidecar(self.path)
        self.info = ModelInfo.from_sidecar(meta)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        if not spinning:
            # Idle intra-op threads spin-wait for work by default; beside the pipeline's own
            # threads (or any neighbour) on a small CPU they burn the cores those need, and
            # inference itself collapses under load (BENCHMARKS.md, "CPU backends").
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=parse_providers(providers, self.path, precision or self.info.precision))
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            first = first_line(e)
            raise InputError(f"ONNX Runtime cannot load {self.path}: {first}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.output_name = self.session.get_outputs()[0].name
        check_graph_io(self.path, self.info, self.output_name, inp.shape, self.session.get_outputs()[0].shape)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]

    def providers(self) -> list:
        return self.session.get_providers()
