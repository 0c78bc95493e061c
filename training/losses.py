"""Cross-entropy on the decode head and both auxiliary heads (mmseg's BiSeNetV1 loss),
with optional OHEM pixel sampling (mmseg OHEMPixelSampler)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def ohem_weights(logits: torch.Tensor, label: torch.Tensor, thresh: float = 0.7, min_kept: int = 10000):
    """1 for the pixels OHEM keeps: those whose probability of the true class is below
    `thresh`, and at least the `min_kept` hardest ones; 0 elsewhere (ignored pixels too)."""
    with torch.no_grad():
        valid = label != IGNORE_INDEX
        prob = logits.softmax(dim=1)
        gt_prob = prob.gather(1, label.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        weight = torch.zeros_like(gt_prob)
        valid_prob = gt_prob[valid]
        if valid_prob.numel() == 0:
            return weight
        threshold = thresh
        if min_kept > 0:
            k = min(min_kept, valid_prob.numel())
            threshold = max(thresh, float(valid_prob.sort()[0][k - 1]))
        weight[valid] = (valid_prob < threshold).float()
        return weight


def seg_loss(logits: torch.Tensor, aux_logits: list, label: torch.Tensor, aux_weights, ohem: dict | None = None):
    """Returns (total loss, {name: float}). Logits are upsampled bilinearly to the label size."""
    size = label.shape[-2:]
    parts = {}
    total = 0.0
    for name, weight, out in [("decode", 1.0, logits)] + [
            (f"aux{i}", w, a) for i, (w, a) in enumerate(zip(aux_weights, aux_logits))]:
        out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
        if ohem:
            pixel = F.cross_entropy(out, label, ignore_index=IGNORE_INDEX, reduction="none")
            keep = ohem_weights(out, label, **ohem)
            loss = (pixel * keep).sum() / keep.sum().clamp(min=1.0)
        else:
            loss = F.cross_entropy(out, label, ignore_index=IGNORE_INDEX)
        parts[name] = float(loss.detach())
        total = total + weight * loss
    return total, parts
