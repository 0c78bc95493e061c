"""Initialization (mmseg from-scratch init, ImageNet ResNet weights in either naming) and OHEM."""
from __future__ import annotations

import pytest
import torch

from core.model_config import load_model_config
from training.losses import ohem_weights, seg_loss
from training.model import BiSeNetV1, ResNet
from training.weights import init_from_scratch, load_imagenet_backbone

CFG = "bisenetv1_r18-d32_camvid-360x480"


def imagenet_resnet18() -> dict:
    torch.manual_seed(1)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ResNet(18).state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return sd


@pytest.mark.parametrize("style", ["torchvision", "mmpretrain", "mmseg"])
def test_imagenet_weights_load_in_any_naming(tmp_path, style):
    sd = imagenet_resnet18()
    prefix = {"torchvision": "", "mmpretrain": "backbone.", "mmseg": "backbone.context_path.backbone."}[style]
    obj = {prefix + k: v for k, v in sd.items()}
    if style != "torchvision":
        obj = {"state_dict": obj, "meta": {"note": "x"}}
    path = tmp_path / f"{style}.pth"
    torch.save(obj, path)
    model = BiSeNetV1(load_model_config(CFG))
    assert load_imagenet_backbone(model, path) == len(ResNet(18).state_dict())
    loaded = model.backbone.context_path.backbone.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert torch.equal(loaded["bn1.running_var"], sd["bn1.running_var"])


def test_wrong_imagenet_file_is_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(ResNet(50).state_dict(), path)
    with pytest.raises(ValueError, match="r50.pth: .*ResNet-18"):
        load_imagenet_backbone(BiSeNetV1(load_model_config(CFG)), path)


def test_from_scratch_init_follows_mmseg():
    model = BiSeNetV1(load_model_config(CFG))
    init_from_scratch(model)
    rn = model.backbone.context_path.backbone
    assert torch.all(rn.layer1[0].bn2.weight == 0) and torch.all(rn.bn1.weight == 1)
    assert model.decode_head.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.2)
    w = rn.conv1.weight                                   # kaiming normal, fan_out = 64 * 7 * 7
    assert w.std().item() == pytest.approx((2.0 / (64 * 49)) ** 0.5, rel=0.1)


def test_loss_covers_decode_and_both_aux_heads_and_ohem():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 16, 16))
    label[:, :2] = 255
    logits = torch.randn(2, 3, 4, 4)
    aux = [torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)]
    total, parts = seg_loss(logits, aux, label, [1.0, 0.5])
    assert set(parts) == {"decode", "aux0", "aux1"}
    assert total.item() == pytest.approx(parts["decode"] + parts["aux0"] + 0.5 * parts["aux1"], rel=1e-5)
    keep = ohem_weights(torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear"), label,
                        thresh=0.7, min_kept=100)
    assert keep[:, :2].sum() == 0 and keep.sum() >= 100
    total_ohem, _ = seg_loss(logits, aux, label, [1.0, 1.0], ohem={"thresh": 0.7, "min_kept": 100})
    assert torch.isfinite(total_ohem)


def test_v1c_deep_stem_file_loads_its_residual_layers(tmp_path):
    sd = {k: v for k, v in imagenet_resnet18().items() if not k.startswith(("conv1.", "bn1."))}
    sd["stem.0.weight"] = torch.randn(32, 3, 3, 3)
    torch.save({"state_dict": sd}, tmp_path / "v1c.pth")
    model = BiSeNetV1(load_model_config(CFG))
    assert load_imagenet_backbone(model, tmp_path / "v1c.pth") == len(ResNet(18).state_dict()) - 6
