"""BiSeNetV1 exactly as mmsegmentation 1.x builds it, with its parameter names.

Module and attribute names mirror mmseg's (`backbone.context_path.backbone.layer1.0.conv1`,
`decode_head.convs.0.conv`, `auxiliary_head.0.conv_seg`, ...) so an official checkpoint's
`state_dict` loads with no key renaming. mmcv's ConvModule is a conv (bias only when there
is no norm) followed by `bn` and ReLU; `ConvBNReLU` below keeps those attribute names.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import InputError
from core.model_config import ModelConfig


class ConvBNReLU(nn.Module):
    """mmcv ConvModule(conv, BN, optional ReLU): keys `conv.weight`, `bn.*`."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


# ---------------------------------------------------------------- ResNet (mmseg 'ResNet', pytorch style)
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        # style='pytorch': the stride sits on the 3x3 conv.
        self.conv1 = nn.Conv2d(cin, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity, inplace=True)


RESNET_BLOCKS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                 50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


class ResNet(nn.Module):
    """Plain ResNet: 7x7/2 stem + 3x3/2 max-pool (not the V1c deep stem); returns C2..C5."""

    def __init__(self, depth: int):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise InputError(f"ResNet depth {depth} is not supported; use one of {sorted(RESNET_BLOCKS)}")
        block, counts = RESNET_BLOCKS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, stride) in enumerate(zip(counts, (1, 2, 2, 2))):
            planes = 64 * 2 ** i
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(cin, planes, stride, downsample)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        outs = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


# ---------------------------------------------------------------- BiSeNetV1 backbone
class SpatialPath(nn.Module):
    def __init__(self, channels):
        super().__init__()
        c = channels
        self.layer1 = ConvBNReLU(3, c[0], 7, 2, 3)
        self.layer2 = ConvBNReLU(c[0], c[1], 3, 2, 1)
        self.layer3 = ConvBNReLU(c[1], c[2], 3, 2, 1)
        self.layer4 = ConvBNReLU(c[2], c[3], 1, 1, 0)

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AttentionRefinementModule(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_layer = ConvBNReLU(cin, cout, 3, 1, 1)
        # Index 1 in the Sequential keeps mmseg's key `atten_conv_layer.1.conv.weight`.
        self.atten_conv_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNReLU(cout, cout, 1, relu=False), nn.Sigmoid())

    def forward(self, x):
        x = self.conv_layer(x)
        return x * self.atten_conv_layer(x)


class ContextPath(nn.Module):
    def __init__(self, depth, channels):
        super().__init__()
        c0, c1, c2 = channels
        self.backbone = ResNet(depth)
        self.arm16 = AttentionRefinementModule(c1, c0)
        self.arm32 = AttentionRefinementModule(c2, c0)
        self.conv_head32 = ConvBNReLU(c0, c0, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(c0, c0, 3, 1, 1)
        self.gap_conv = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(c2, c0, 1))

    def forward(self, x):
        _, x_8, x_16, x_32 = self.backbone(x)
        x_gap = self.gap_conv(x_32)
        x_32_sum = self.arm32(x_32) + x_gap
        x_32_up = self.conv_head32(F.interpolate(x_32_sum, size=x_16.shape[2:], mode="nearest"))
        x_16_sum = self.arm16(x_16) + x_32_up
        x_16_up = self.conv_head16(F.interpolate(x_16_sum, size=x_8.shape[2:], mode="nearest"))
        return x_16_up, x_32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.conv_atten = nn.Sequential(ConvBNReLU(cout, cout, 1), nn.Sigmoid())

    def forward(self, x_sp, x_cp):
        x_fuse = self.conv1(torch.cat([x_sp, x_cp], dim=1))
        return x_fuse * self.conv_atten(self.gap(x_fuse)) + x_fuse


class BiSeNetV1Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.context_path = ContextPath(cfg.backbone_depth, cfg.context_channels)
        self.spatial_path = SpatialPath(cfg.spatial_channels)
        self.ffm = FeatureFusionModule(cfg.context_channels[1], cfg.out_channels)

    def forward(self, x):
        x_context8, x_context16 = self.context_path(x)
        x_fuse = self.ffm(self.spatial_path(x), x_context8)
        return x_fuse, x_context8, x_context16


class FCNHead(nn.Module):
    """mmseg FCNHead with num_convs=1, concat_input=False: conv-BN-ReLU, dropout, 1x1 conv."""

    def __init__(self, cin, channels, num_classes, dropout=0.1):
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(cin, channels, 3, 1, 1))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class BiSeNetV1(nn.Module):
    """EncoderDecoder(BiSeNetV1 backbone, FCN decode head, two FCN auxiliary heads).

    `forward` returns the decode head's logits resized to the input (mmseg 'whole'
    inference). `forward_train` also returns the auxiliary logits at feature resolution.
    """

    def __init__(self, cfg: ModelConfig, with_aux: bool = True):
        super().__init__()
        self.cfg = cfg
        self.backbone = BiSeNetV1Backbone(cfg)
        self.decode_head = FCNHead(cfg.out_channels, cfg.out_channels, cfg.num_classes)
        self.auxiliary_head = None
        if with_aux:
            self.auxiliary_head = nn.ModuleList(
                [FCNHead(cfg.context_channels[0], cfg.aux_channels, cfg.num_classes) for _ in range(2)])

    def forward_features(self, x):
        feats = self.backbone(x)
        return self.decode_head(feats[0]), feats

    def forward(self, x):
        logits, _ = self.forward_features(x)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    def forward_train(self, x):
        """(decode logits, [aux1 logits on 1/8 features, aux2 logits on 1/16 features])."""
        logits, feats = self.forward_features(x)
        aux = [head(feats[i + 1]) for i, head in enumerate(self.auxiliary_head or [])]
        return logits, aux


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
