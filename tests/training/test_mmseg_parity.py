"""Our ONNX export against mmsegmentation 1.2's own BiSeNetV1, for every network of the seed rows.

What it holds: `bisenet export --model <row> --checkpoint <official-format
checkpoint> --size 256x512 --head logits` gives ONNX Runtime logits equal to mmseg's with the
same weights (max abs diff <= 1e-4). mmseg runs in its own venv (.venv-mmseg, made by
scripts/setup_mmseg_reference.sh, which scripts/test.sh runs).

The 11 rows hold 5 networks: an `-in1k-pre` row and its plain twin (and the 4xb4/4xb8 cityscapes
rows) differ in the ImageNet init and the training schedule only. One row per network is
exported and compared (half the time in CI); test_every_row_has_its_network_compared holds that
every other row's network fields equal a compared row's.
"""
import subprocess

import numpy as np
import pytest

from app.cli import main as cli
from core.model_config import list_model_names
from engines.onnx_engine import OnnxEngine
from testkit.helpers import REPO, normalized_input, official_style_checkpoint

MMSEG_PY = REPO / ".venv-mmseg" / "bin" / "python"
SEED_ROWS = [n for n in list_model_names() if "camvid" not in n]
# What makes the network (core/model_config.py); the rest is init, schedule, names and metrics.
NETWORK_FIELDS = ("backbone_depth", "spatial_channels", "context_channels", "out_channels", "aux_channels",
                  "num_classes", "mean", "std")


def network_of(name: str) -> tuple:
    from core.model_config import load_model_config
    cfg = load_model_config(name)
    return tuple(repr(getattr(cfg, f)) for f in NETWORK_FIELDS)


def one_row_per_network(rows) -> list:
    seen, out = set(), []
    for name in sorted(rows, key=lambda n: ("in1k-pre" not in n, n)):   # prefer the rows with official weights
        if network_of(name) not in seen:
            seen.add(network_of(name))
            out.append(name)
    return sorted(out)


COMPARED = one_row_per_network(SEED_ROWS)

pytestmark = pytest.mark.skipif(not (REPO / ".venv-mmseg" / ".ready").exists(),
                                reason="mmsegmentation reference venv missing: run scripts/setup_mmseg_reference.sh")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Export one row per network, then run mmseg once over all of them: {name: (ours, mmseg's)}."""
    from core.model_config import load_model_config

    tmp = tmp_path_factory.mktemp("mmseg")
    x = normalized_input(256, 512, seed=1)
    np.save(tmp / "x.npy", x)
    jobs, ours = [], {}
    for name in COMPARED:
        cfg = load_model_config(name)
        ckpt = tmp / f"{name}.pth"
        official_style_checkpoint(cfg, ckpt, seed=len(name))
        onnx_path = tmp / f"{name}.onnx"
        assert cli(["export", "--model", name, "--checkpoint", str(ckpt), "--size", "256x512", "--head", "logits",
                    "-o", str(onnx_path)]) == 0
        ours[name] = OnnxEngine(onnx_path).infer_logits(x)
        ckpt_ref = tmp / f"{name}.ref.npy"
        jobs += [name, str(ckpt), str(tmp / "x.npy"), str(ckpt_ref)]
    subprocess.run([str(MMSEG_PY), str(REPO / "testkit" / "mmseg_reference.py"), *jobs], check=True, timeout=900)
    return {name: (ours[name], np.load(tmp / f"{name}.ref.npy")) for name in COMPARED}


def test_every_row_has_its_network_compared():
    assert len(SEED_ROWS) == 11 and len(COMPARED) == 5, COMPARED
    compared = {network_of(n) for n in COMPARED}
    assert all(network_of(n) in compared for n in SEED_ROWS)


@pytest.mark.parametrize("name", COMPARED)
def test_export_equals_mmseg(name, outputs):
    from core.model_config import load_model_config

    ours, ref = outputs[name]
    assert ours.shape == ref.shape == (1, load_model_config(name).num_classes, 256, 512)
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: max abs diff {diff:.2e}")
    assert diff <= 1e-4
    assert np.abs(ref).max() > 1.0   # the logits carry real signal
