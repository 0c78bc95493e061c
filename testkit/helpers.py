"""Small shared test utilities (real models with non-trivial weights, checkpoints on disk)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def randomized_model(cfg, seed: int = 0, with_aux: bool = True):
    """BiSeNetV1 with random weights AND random BN statistics, so parity checks see real signal."""
    import torch

    from training.model import BiSeNetV1

    torch.manual_seed(seed)
    model = BiSeNetV1(cfg, with_aux=with_aux)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.num_batches_tracked.fill_(1000)
    for head in [model.decode_head] + list(model.auxiliary_head or []):
        head.conv_seg.weight.data.mul_(20.0)   # logits of order 1-10, like a trained model
    return model.eval()


def official_style_checkpoint(cfg, path, seed: int = 0):
    """A checkpoint laid out like mmsegmentation's model zoo files: {'meta', 'state_dict'}."""
    import torch

    model = randomized_model(cfg, seed)
    meta = {"mmseg_version": "0.18.0", "CLASSES": tuple(cfg.class_names), "PALETTE": [list(p) for p in cfg.palette],
            "iter": 160000, "config": "model = dict(type='EncoderDecoder', ...)"}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    return model


def normalized_input(h, w, seed=0):
    """A normalized RGB image: uint8 noise with smooth structure, through the config's mean/std."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float32)
    img = np.kron(img, np.ones((8, 8, 1), np.float32)) + rng.normal(0, 8, (h, w, 3))
    x = (np.clip(img, 0, 255) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
