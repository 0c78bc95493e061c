"""Accuracy on real data: the CamVid checkpoint trained by this project's recipe
(../shared/models/camvid_r18-d32_cpu.pth), exported and evaluated through the app's own
preprocess and engines on the first 20 CamVid val images, must reach the mIoU that
docs/training.md ("CI accuracy check") states for each path, within 0.5 points.

Shapes and equalities on random weights cannot see a wrong mean/std, swapped channels or an
off-by-one resize; these numbers can (the BGR-as-RGB case below shows one such fault failing).
The expected numbers live only in the doc's table; this file reads them from there."""
from __future__ import annotations

import json
import re

import pytest

from app.cli import main as cli
from core.preprocess import preprocess
from testkit.helpers import REPO, SHARED_DATA

CHECKPOINT = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
MODEL = "bisenetv1_r18-d32_camvid-360x480"
SIZE = (352, 480)
SUBSET = 20            # the first 20 CamVid val images (the order of val.txt)
TOLERANCE = 0.5        # mIoU points
MAX_DROP = 1.0         # `bisenet calibrate`'s default gate
DOC = REPO / "docs" / "training.md"

pytestmark = [
    pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"trained CamVid checkpoint not found at {CHECKPOINT}"),
    pytest.mark.skipif(not (SHARED_DATA / "camvid" / "val.txt").is_file(),
                       reason=f"CamVid data not found at {SHARED_DATA / 'camvid'}"),
]


def documented_miou() -> dict:
    """{check: mIoU} from the table under '### CI accuracy check' in docs/training.md."""
    section = DOC.read_text().split("### CI accuracy check", 1)[-1]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|.*\| ([0-9]+\.[0-9]+) \| [^|]* \|$", section, re.MULTILINE)
    table = {name: float(miou) for name, miou in rows}
    assert {"pytorch", "onnx-labels", "onnx-logits"} <= set(table), f"{DOC}: accuracy table not found or incomplete"
    return table


def check_miou(measured: float, check: str, what: str) -> None:
    expected = documented_miou()[check]
    assert abs(measured - expected) <= TOLERANCE, (
        f"{what}: mIoU {measured:.2f} on the first {SUBSET} CamVid val images, docs/training.md says "
        f"{expected:.2f} ({check}) within {TOLERANCE}")


def evaluate(engine) -> dict:
    """training/evaluate.py's path (the one `bisenet eval` and the int8 gate take)."""
    from training.datasets import SegDataset, load_dataset_config
    from training.evaluate import Predictor, evaluate_dataset

    ds_cfg = load_dataset_config("camvid")
    data = SegDataset(ds_cfg, "val")
    data.pairs = data.pairs[:SUBSET]
    try:
        return evaluate_dataset(Predictor(engine, ds_cfg.test_scale), data, ds_cfg.num_classes)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, camvid_onnx) -> dict:
    """The checkpoint at 352x480, both heads (`bisenet export`'s code): labels is the shared
    export (tests/conftest.py), logits exported here."""
    from engines.export import export_onnx
    from core.model_config import load_model_config

    tmp = tmp_path_factory.mktemp("camvid_exports")
    logits = export_onnx(load_model_config(MODEL), CHECKPOINT, tmp / "camvid_logits.onnx", SIZE, head="logits")
    return {"labels": camvid_onnx, "logits": logits}


def test_pytorch_reaches_the_documented_miou(tmp_path):
    out = tmp_path / "pytorch.json"
    assert cli(["eval", "--model", MODEL, "--checkpoint", str(CHECKPOINT), "--dataset", "camvid",
                "--limit", str(SUBSET), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == SUBSET and result["input_size"] == "test scale [480, 360]"
    check_miou(result["mIoU"], "pytorch", "PyTorch")


@pytest.mark.parametrize("head", ["labels", "logits"])
def test_onnx_export_reaches_the_documented_miou(exports, head):
    from engines.onnx_engine import OnnxEngine

    check_miou(evaluate(OnnxEngine(exports[head], providers="cpu"))["mIoU"], f"onnx-{head}",
               f"ONNX Runtime CPU, {head} head")


def test_default_cpu_backend_reaches_the_documented_miou(exports):
    """Whatever `--model x.onnx` loads by default (load_engine's choice) is held to the same number."""
    from engines.load import load_engine

    engine = load_engine(str(exports["labels"]))
    what = f"default backend ({engine.describe()})"
    check_miou(evaluate(engine)["mIoU"], "onnx-labels", what)


def test_int8_from_bisenet_calibrate_passes_the_gate(exports, tmp_path):
    int8 = tmp_path / "camvid.int8.onnx"
    rc = cli(["calibrate", "--onnx", str(exports["labels"]), "--data", "camvid", "--num-images", "16",
              "--val", "camvid", "--val-limit", str(SUBSET), "--max-drop", str(MAX_DROP), "--quiet", "-o", str(int8)])
    assert rc == 0, "bisenet calibrate's accuracy gate failed (the int8 model was moved aside)"
    gate = json.loads(int8.with_name(int8.name + ".json").read_text())["accuracy_gate"]
    assert gate["passed"] and gate["num_images"] == SUBSET
    check_miou(gate["fp32_mIoU"], "onnx-labels", "the gate's fp32 reference")
    # Against the documented fp32 number too, so a gate that compared two equally broken models could not pass.
    assert gate["int8_mIoU"] >= documented_miou()["onnx-labels"] - MAX_DROP, gate


def test_a_preprocessing_fault_fails_the_check(exports, monkeypatch):
    """The negative case: BGR fed as RGB (channels swapped before the app's preprocess) must fail
    the very check the tests above pass."""
    import training.evaluate
    from engines.onnx_engine import OnnxEngine

    def bgr_fed_as_rgb(bgr, *args, **kwargs):
        return preprocess(bgr[:, :, ::-1].copy(), *args, **kwargs)

    monkeypatch.setattr(training.evaluate, "preprocess", bgr_fed_as_rgb)
    faulty = evaluate(OnnxEngine(exports["labels"], providers="cpu"))["mIoU"]   # measured: 11.96
    with pytest.raises(AssertionError, match="within 0.5"):
        check_miou(faulty, "onnx-labels", "ONNX Runtime CPU fed BGR as RGB")
