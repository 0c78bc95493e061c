"""Run mmsegmentation 1.2's own BiSeNetV1 (built from mmseg's own config file) on an input.

Runs inside .venv-mmseg (scripts/setup_mmseg_reference.sh), never in the project's venv:
    python testkit/mmseg_reference.py CONFIG_NAME CHECKPOINT INPUT.npy OUTPUT.npy [CONFIG_NAME ...]
(groups of four, one process for all). Writes the 'whole'-mode logits at input resolution.
"""
import sys
import types

import numpy as np
import torch

# mmcv was built without its compiled ops (mmcv.ops), which BiSeNetV1 does not use but
# mmseg.utils imports at start-up: give those imports placeholder classes.
ops = types.ModuleType("mmcv.ops")
ops.__path__ = []


def _placeholder(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})


ops.__getattr__ = _placeholder
sys.modules["mmcv.ops"] = ops

from mmengine.config import Config  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402
import mmseg  # noqa: E402


def run(name, checkpoint, inp, out):
    root = mmseg.__path__[0] + "/.mim/configs/bisenetv1/"
    cfg = Config.fromfile(root + name + ".py")
    model_cfg = cfg.model
    model_cfg.data_preprocessor = None                 # inputs arrive normalized already
    model_cfg.backbone.backbone_cfg.init_cfg = None    # no ImageNet download
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location="cpu", strict=True)
    model.eval()
    x = torch.from_numpy(np.load(inp))
    metas = [dict(img_shape=tuple(x.shape[2:]), ori_shape=tuple(x.shape[2:]), pad_shape=tuple(x.shape[2:]))]
    with torch.no_grad():
        logits = model.encode_decode(x, metas)
    np.save(out, logits.numpy())
    print(f"mmseg {mmseg.__version__} {name}: logits {tuple(logits.shape)}")


if __name__ == "__main__":
    register_all_modules()
    args = sys.argv[1:]
    for i in range(0, len(args), 4):
        run(*args[i:i + 4])
