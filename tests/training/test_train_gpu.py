"""CUDA training path: AMP (fp16 autocast + GradScaler) and resume on one GPU."""
from __future__ import annotations

import json

import pytest
import torch

from training.train import load_train_config, train
from testkit.training_data import make_train_config

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_amp_training_on_cuda_resumes_and_loads_on_cpu(tmp_path):
    tc = load_train_config(make_train_config(tmp_path, iterations=6, checkpoint_interval=3, eval_interval=6,
                                             workers=2, image_hw=(64, 96), crop_size=[64, 96]))
    train(tc, tmp_path / "run", stop_at=3, progress=False, device="cuda")
    result = train(tc, tmp_path / "run", resume="auto", progress=False, device="cuda")
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    losses = [r["loss"] for r in records if r["mode"] == "train"]
    assert len(losses) == 6 and all(l == l and l < 100 for l in losses)
    assert result["best_miou"] is not None
    ckpt = torch.load(tmp_path / "run" / "latest.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 6 and ckpt["scaler"]["scale"] > 0          # AMP's loss scaler travelled
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
