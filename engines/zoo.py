"""`bisenet models`: the model zoo table (configs/models/*.yaml)."""
from __future__ import annotations

from core.model_config import list_model_names, load_model_config

HELP = "list the BiSeNetV1 model zoo configs with their official mIoU"
EXAMPLE = "bisenet models"


def add_arguments(p):
    p.add_argument("--urls", action="store_true", help="also print each official checkpoint URL")


def run(args) -> int:
    rows = [load_model_config(n) for n in list_model_names()]
    width = max(len(c.name) for c in rows)
    print(f"{'model':<{width}}  {'dataset':<15} {'classes':>7} {'crop':>9} {'mIoU':>6} {'ms+flip':>7}")
    for c in rows:
        crop = f"{c.crop_size[0]}x{c.crop_size[1]}"
        miou = f"{c.miou:.2f}" if c.miou is not None else "-"
        miou_ms = f"{c.miou_ms:.2f}" if c.miou_ms is not None else "-"
        print(f"{c.name:<{width}}  {c.dataset:<15} {c.num_classes:>7} {crop:>9} {miou:>6} {miou_ms:>7}")
        if args.urls:
            print(f"  {c.checkpoint_url}")
    return 0
