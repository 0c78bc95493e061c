"""The per-class gate on real data: a deliberately bad calibration of the CamVid model (2
frames of one scene, entropy thresholds) keeps the mIoU within --max-drop but costs one class
more than --max-class-drop (at 352x480: pedestrian -4.3 IoU on the first 30 val images; the
test runs at 192x256, where it also holds, to keep CI short): the mean gate alone would ship
it; `bisenet calibrate` refuses it (exit 3)."""
from __future__ import annotations

import json

import pytest

from app.cli import main as cli
from calibration.calibrate import GATE_FAILED
from testkit.helpers import REPO, SHARED_DATA

CHECKPOINT = SHARED_DATA.parent / "models" / "camvid_r18-d32_cpu.pth"
CAMVID = SHARED_DATA / "camvid"

pytestmark = [
    pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"trained CamVid checkpoint not found at {CHECKPOINT}"),
    pytest.mark.skipif(not (CAMVID / "val.txt").is_file(), reason=f"CamVid data not found at {CAMVID}"),
]


def test_bad_calibration_passes_the_mean_gate_but_fails_the_per_class_one(tmp_path, capsys):
    fp32 = tmp_path / "camvid.onnx"
    assert cli(["export", "--model", "bisenetv1_r18-d32_camvid-360x480", "--checkpoint", str(CHECKPOINT),
                "--size", "192x256", "-o", str(fp32)]) == 0
    one_scene = tmp_path / "one_scene.txt"   # the first 2 frames of sequence 0001TP
    one_scene.write_text("".join(f"{CAMVID / line}\n" for line in (CAMVID / "train.txt").read_text().splitlines()[:2]))
    val = tmp_path / "camvid.yaml"           # the dataset config, rooted where the data is
    val.write_text((REPO / "configs" / "datasets" / "camvid.yaml").read_text().replace(
        "root: ../shared/data/camvid", f"root: {CAMVID}"))
    out = tmp_path / "bad.int8.onnx"
    rc = cli(["calibrate", "--onnx", str(fp32), "--data", str(one_scene), "--num-images", "2", "--method", "entropy",
              "--val", str(val), "--val-limit", "30", "--gate-backend", "onnxruntime", "--max-drop", "1.0",
              "--max-class-drop", "3.0", "--fallback-keep-float", "0", "--quiet", "-o", str(out)])
    table = capsys.readouterr().out
    assert rc == GATE_FAILED, table
    gate = json.loads((tmp_path / "bad.int8.rejected.onnx.json").read_text())["accuracy_gate"]
    int8 = gate["precisions"]["int8"]
    assert int8["mean_passed"] and int8["mIoU_drop"] <= 1.0, table           # the mean alone would pass
    assert int8["classes_failing"] and int8["worst_class_drop"] > 3.0, table  # one class does not
    assert not gate["passed"] and "FAIL (" in table
