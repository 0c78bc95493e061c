"""Network initialization: mmseg's from-scratch init, or ImageNet ResNet weights from a file."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from core.errors import InputError, MissingFileError
from training.model import BasicBlock, BiSeNetV1, Bottleneck, FCNHead

BACKBONE_PREFIX = "backbone.context_path.backbone."


def init_from_scratch(model: BiSeNetV1) -> None:
    """mmseg/mmcv init: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 bias 0, the last BN
    of every residual block at 0 (ResNet zero_init_residual), conv_seg normal(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, FCNHead):
            nn.init.normal_(m.conv_seg.weight, 0.0, 0.01)
            nn.init.zeros_(m.conv_seg.bias)


def load_imagenet_backbone(model: BiSeNetV1, path: str | Path) -> int:
    """Copy ImageNet ResNet weights into the context path's ResNet. Accepts torchvision
    (`layer1.0.conv1.weight`), mmpretrain/mmcls (`backbone.layer1...`) and mmseg segmentor
    (`backbone.context_path.backbone.layer1...`) key names; classifier keys are dropped.
    Returns the number of tensors loaded."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ImageNet weights {path} do not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: cannot read it as a PyTorch weights file ({type(e).__name__}: {e})") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise InputError(f"{path}: expected a state_dict (a dict of tensors)")
    target = model.backbone.context_path.backbone
    wanted = target.state_dict()
    picked = {}
    for key, value in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        for prefix in (BACKBONE_PREFIX, "backbone.", ""):
            if k.startswith(prefix) and k[len(prefix):] in wanted:
                picked[k[len(prefix):]] = value
                break
    missing = sorted(set(wanted) - set(picked) - {k for k in wanted if k.endswith("num_batches_tracked")})
    if any(".stem." in k or k.startswith("stem.") for k in sd):
        # A V1c (deep stem) file, e.g. open-mmlab://resnet18_v1c: its stem does not fit this
        # network's 7x7 stem; mmseg loads it the same way (non-strict), keeping the stem at init.
        missing = [k for k in missing if not k.startswith(("conv1.", "bn1."))]
    if missing:
        raise InputError(f"{path}: not a ResNet-{model.cfg.backbone_depth} ImageNet checkpoint: "
                         f"{len(missing)} backbone tensors missing, e.g. {missing[0]}")
    for k, v in picked.items():
        if v.shape != wanted[k].shape:
            raise InputError(f"{path}: {k} has shape {tuple(v.shape)}, the ResNet-{model.cfg.backbone_depth} "
                             f"backbone needs {tuple(wanted[k].shape)}")
    target.load_state_dict(picked, strict=False)
    return len(picked)
