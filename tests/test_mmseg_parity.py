"""Our ONNX export against mmsegmentation 1.2's own BiSeNetV1, for every seed row.

Done-when of the model-zoo issue: `bisenet export --model <row> --checkpoint <official-format
checkpoint> --size 256x512 --head logits` gives ONNX Runtime logits equal to mmseg's with the
same weights (max abs diff <= 1e-4). mmseg runs in its own venv (.venv-mmseg, made by
scripts/setup_mmseg_reference.sh, which scripts/test.sh runs).
"""
import subprocess

import numpy as np
import pytest

from app.cli import main as cli
from core.model_config import list_model_names
from engines.onnx_engine import OnnxEngine
from tests.helpers import REPO, official_style_checkpoint
from tests.test_export import normalized_input

MMSEG_PY = REPO / ".venv-mmseg" / "bin" / "python"
SEED_ROWS = [n for n in list_model_names() if "camvid" not in n]

pytestmark = pytest.mark.skipif(not (REPO / ".venv-mmseg" / ".ready").exists(),
                                reason="mmsegmentation reference venv missing: run scripts/setup_mmseg_reference.sh")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Export every row, then run mmseg once over all of them: {name: (ours, mmseg's)}."""
    from core.model_config import load_model_config

    tmp = tmp_path_factory.mktemp("mmseg")
    x = normalized_input(256, 512, seed=1)
    np.save(tmp / "x.npy", x)
    jobs, ours = [], {}
    for name in SEED_ROWS:
        cfg = load_model_config(name)
        ckpt = tmp / f"{name}.pth"
        official_style_checkpoint(cfg, ckpt, seed=len(name))
        onnx_path = tmp / f"{name}.onnx"
        assert cli(["export", "--model", name, "--checkpoint", str(ckpt), "--size", "256x512", "--head", "logits",
                    "-o", str(onnx_path)]) == 0
        ours[name] = OnnxEngine(onnx_path).infer_logits(x)
        ckpt_ref = tmp / f"{name}.ref.npy"
        jobs += [name, str(ckpt), str(tmp / "x.npy"), str(ckpt_ref)]
    subprocess.run([str(MMSEG_PY), str(REPO / "tests" / "mmseg_reference.py"), *jobs], check=True, timeout=900)
    return {name: (ours[name], np.load(tmp / f"{name}.ref.npy")) for name in SEED_ROWS}


@pytest.mark.parametrize("name", SEED_ROWS)
def test_export_equals_mmseg(name, outputs):
    from core.model_config import load_model_config

    ours, ref = outputs[name]
    assert ours.shape == ref.shape == (1, load_model_config(name).num_classes, 256, 512)
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: max abs diff {diff:.2e}")
    assert diff <= 1e-4
    assert np.abs(ref).max() > 1.0   # the logits carry real signal
