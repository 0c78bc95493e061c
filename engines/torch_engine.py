"""PyTorch engine: a checkpoint run directly (debugging, and the reference for the others)."""
from __future__ import annotations

import re
from typing import Annotated

import numpy as np
from pydantic import Field

from core.errors import SetupError
from core.install_hint import extra_hint
from core.options import Expected, Rule, Section, Text, option
from core.redact import shown
from engines.base import Engine, ModelInfo
from core.model_config import ModelConfig


def device_name(value) -> str:
    """'cpu', 'cuda' or 'cuda:N' (a zoo name / model YAML on the GPU: engines/torch_cuda_engine.py)."""
    name = str(value).strip().lower()
    if isinstance(value, str) and (name == "cpu" or re.fullmatch(r"cuda(:\d+)?", name)):
        return name
    raise Expected(f"{shown(value)} is not cpu, cuda or cuda:N")


def input_hw(value) -> tuple:
    """(H, W) of the network input, two positive whole numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise Expected(f"expected (height, width), two positive whole numbers, got {shown(value)}")
    return tuple(value)


class TorchOptions(Section):
    """The PyTorch engines' options, for a zoo name or model YAML (flags of `bisenet run`,
    load_model keywords); --device cuda runs engines/torch_cuda_engine.py."""
    checkpoint: Text = option(None, "checkpoint .pth for a zoo name / model YAML", group="model")
    device: Annotated[str, Rule(device_name)] = option(
        "cpu", "a zoo name / model YAML: cpu (default) or cuda[:N] (PyTorch on the GPU, docs/gpu.md)", group="model",
        metavar="cpu|cuda[:N]")
    input_size: Annotated[tuple | None, Rule(input_hw)] = Field(
        None, description="(H, W) the network runs at (default: the model's crop size); a keyword only")


class TorchEngine(Engine):
    backend = "pytorch"

    def __init__(self, cfg: ModelConfig, checkpoint=None, input_size=None, device: str = "cpu",
                 random_init: bool = False):
        try:
            import torch
        except ImportError:
            raise SetupError(f"the PyTorch engine needs torch: {extra_hint('train', 'torch')}, "
                               "or export to ONNX with `bisenet export` and pass the .onnx") from None
        from engines.export import build_model

        self.torch = torch
        self.device = torch.device(device)
        self.model, _, self.checkpoint = build_model(cfg, checkpoint, random_init)
        self.model.to(self.device)
        self.info = ModelInfo.from_model_config(cfg, input_size)

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.model(x).float().cpu().numpy()
