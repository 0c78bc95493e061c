"""Evaluation: the mmseg IoUMetric on a hand-made case, the prediction paths, and
`bisenet eval` of one checkpoint through PyTorch and through its ONNX export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main as cli
from engines.base import ModelInfo
from core.model_config import load_model_config
from training.datasets import SegDataset, load_dataset_config
from training.evaluate import ModuleEngine, Predictor, confusion_matrix, evaluate_dataset, metrics_from_confusion
from training.model import BiSeNetV1
from training.train import load_train_config, train
from testkit.training_data import make_train_config


def test_hand_made_confusion_matches_iou_definition():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]], np.int64)
    cm = confusion_matrix(pred, label, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = metrics_from_confusion(cm, ["a", "b", "c", "d"])
    # IoU = intersect / (pred + label - intersect): a 1/(2+2-1), b 2/(3+2-2), c 1/(1+2-1); d absent -> left out
    assert m["per_class_iou"]["a"] == pytest.approx(100 / 3)
    assert m["per_class_iou"]["b"] == pytest.approx(200 / 3)
    assert m["per_class_iou"]["c"] == pytest.approx(50.0)
    assert m["per_class_iou"]["d"] is None
    assert m["mIoU"] == pytest.approx(50.0)
    assert m["aAcc"] == pytest.approx(400 / 6)      # 4 of 6 labelled pixels; the 255s do not count
    assert m["mAcc"] == pytest.approx((50 + 100 + 50) / 3)


def test_confusion_accumulates_over_images():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 3, (5, 7)).astype(np.uint8) for _ in range(3)]
    preds = [rng.integers(0, 3, (5, 7)) for _ in range(3)]
    total = sum(confusion_matrix(p, l, 3) for p, l in zip(preds, labels))
    whole = confusion_matrix(np.concatenate(preds), np.concatenate(labels), 3)
    assert np.array_equal(total, whole) and total.sum() == 105


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-class model trained 4 iterations on a tiny 64x96 dataset: (train yaml, work dir)."""
    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = make_train_config(tmp, iterations=4, checkpoint_interval=4, crop_size=[64, 96], image_hw=(64, 96))
    torch.set_num_threads(1)
    train(load_train_config(cfg), tmp / "run", progress=False, device="cpu")
    return cfg, tmp / "run"


def test_multiscale_flip_prediction_covers_the_image(tiny_run):
    cfg_path, _ = tiny_run
    tc = load_train_config(cfg_path)
    cfg = load_model_config(tc.model)
    model = BiSeNetV1(cfg).eval()
    ds = SegDataset(load_dataset_config(tc.dataset), "val")
    engine = ModuleEngine(model, ModelInfo.from_model_config(cfg))
    whole = evaluate_dataset(Predictor(engine, [96, 64]), ds, 3)
    ms = evaluate_dataset(Predictor(engine, [96, 64], ratios=(0.5, 1.0, 1.5), flip=True), ds, 3)
    for result in (whole, ms):
        assert 0.0 <= result["aAcc"] <= 100.0 and result["num_images"] == 2
    img, _ = ds.read(0)
    assert Predictor(engine, [96, 64], ratios=(0.5, 1.75), flip=True)(img).shape == img.shape[:2]


def test_eval_through_pytorch_and_onnx_export_agree(tiny_run, tmp_path):
    cfg_path, run = tiny_run
    tc = load_train_config(cfg_path)
    ckpt = str(run / "latest.pth")
    out_pt, out_onnx = tmp_path / "pt.json", tmp_path / "onnx.json"
    assert cli(["eval", "--model", tc.model, "--checkpoint", ckpt, "--dataset", tc.dataset, "--json", str(out_pt)]) == 0
    onnx_path = tmp_path / "tiny.onnx"
    assert cli(["export", "--model", tc.model, "--checkpoint", ckpt, "--head", "logits", "--size", "64x96",
                "-o", str(onnx_path)]) == 0
    assert cli(["eval", "--model", str(onnx_path), "--dataset", tc.dataset, "--json", str(out_onnx)]) == 0
    pt, ox = json.loads(out_pt.read_text()), json.loads(out_onnx.read_text())
    assert pt["mIoU"] == pytest.approx(ox["mIoU"], abs=0.01)
    assert pt["aAcc"] == pytest.approx(ox["aAcc"], abs=0.01)
    assert set(pt["per_class_iou"]) == {"ground", "object", "sky"}


def test_fixed_size_engine_refuses_multiscale(tiny_run, tmp_path):
    cfg_path, run = tiny_run
    tc = load_train_config(cfg_path)
    onnx_path = tmp_path / "tiny.onnx"
    assert cli(["export", "--model", tc.model, "--checkpoint", str(run / "latest.pth"), "--size", "64x96",
                "-o", str(onnx_path)]) == 0
    assert cli(["eval", "--model", str(onnx_path), "--dataset", tc.dataset, "--aug", "ms-flip"]) == 2
