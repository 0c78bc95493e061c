"""PyTorch engine: a checkpoint run directly (debugging, and the reference for the others)."""
from __future__ import annotations

import numpy as np

from core.errors import SetupError
from core.install_hint import extra_hint
from engines.base import Engine, ModelInfo
from core.model_config import ModelConfig


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
