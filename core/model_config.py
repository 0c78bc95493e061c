"""Model config YAML (configs/models/*.yaml) -> ModelConfig. No torch here: the app reads it too."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from core.config_files import CONFIGS_DIR, config_names, config_path
from core.validate import SIDECAR, check_fields, check_fields_by_rules, load_yaml
from core.errors import InputError

MODELS_DIR = CONFIGS_DIR / "models"


class ConfigError(InputError):
    """A config file that cannot be used; the message is one line that says what to fix."""


@dataclass
class TrainRecipe:
    lr: float = 0.025
    batch_size: int = 4          # per GPU
    gpus: int = 4
    iterations: int = 160000
    warmup_iters: int = 1000
    warmup_ratio: float = 0.1
    poly_power: float = 0.9
    min_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weights: list = field(default_factory=lambda: [1.0, 1.0])


@dataclass
class ModelConfig:
    name: str
    backbone_depth: int
    spatial_channels: list
    context_channels: list
    out_channels: int
    aux_channels: int
    num_classes: int
    class_names: list
    palette: list                  # [[R, G, B], ...], one per class
    mean: list                     # RGB, 0..255 scale
    std: list
    crop_size: list                # [H, W]
    dataset: str = ""
    pretrained: str = ""           # ImageNet init used by the recipe ('' = from scratch)
    checkpoint_url: str = ""
    miou: float | None = None      # the model zoo's single-scale mIoU
    miou_ms: float | None = None   # multi-scale + flip
    train: TrainRecipe = field(default_factory=TrainRecipe)
    source: str = ""               # the file it was read from

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def check_keys(cls, data: dict, where: str, exclude=()) -> dict:
    """`data` (from a YAML file) may hold only the fields of dataclass `cls`, each of its
    annotated type: otherwise an error naming the key and the file (app/validate.py)."""
    try:
        return check_fields(cls, data, where, exclude)
    except InputError as e:
        raise ConfigError(str(e)) from None


def model_configcheck_keys(data: dict, source: str = "<dict>") -> ModelConfig:
    data = dict(check_keys(ModelConfig, data, source))
    data.pop("source", None)
    train = TrainRecipe(**check_keys(TrainRecipe, data.pop("train", {}) or {}, f"{source} (train)"))
    try:
        cfg = ModelConfig(**data, train=train, source=source)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"{source}: {e}") from None
    try:   # the same rules as the sidecar these values end up in
        check_fields_by_rules({"classes": cfg.class_names, "palette": cfg.palette, "mean": cfg.mean,
                               "std": cfg.std}, SIDECAR, source)
    except InputError as e:
        raise ConfigError(str(e)) from None
    if len(cfg.class_names) != cfg.num_classes or len(cfg.palette) != cfg.num_classes:
        raise ConfigError(f"{source}: num_classes is {cfg.num_classes} but there are "
                          f"{len(cfg.class_names)} class names and {len(cfg.palette)} palette colors")
    return cfg


def list_model_names() -> list[str]:
    return config_names("models")


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A zoo name (configs/models/<name>.yaml) or a path to a model YAML."""
    path = config_path("models", name_or_path)
    if not path.is_file():
        raise ConfigError(f"no model config {name_or_path!r}: pass a YAML path or one of the names "
                          f"`bisenet models` lists")
    return model_configcheck_keys(load_yaml(path, "model config"), str(path))
