"""Model config YAML (configs/models/*.yaml) -> ModelConfig. No torch here: the app reads it too.

ModelConfig and TrainRecipe are dataclasses with typed fields; the fields a sidecar also
carries (class names, palette, mean, std) have the Sidecar model's types (core/sidecar.py), and
one pydantic TypeAdapter validates a config against those types once, when it is read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as typed_dataclass

from core.config_files import CONFIGS_DIR, config_names, config_path
from core.errors import InputError
from core.sidecar import ClassNames, Mean, Palette, Std
from core.options import Rule, option
from core.validate import Number, check_fields, error_line, load_yaml

MODELS_DIR = CONFIGS_DIR / "models"


class ConfigError(InputError):
    """A config file that cannot be used; the message is one line that says what to fix."""


COUNT = Number(int, min=1)


@typed_dataclass
class TrainRecipe:
    """A model's training recipe (the `train:` block of its YAML). Each field is declared once
    here, with its range and help; a train config (training/train.py) may override any of them,
    `bisenet train` the ones with a flag (option())."""
    lr: Annotated[float, Rule(Number(float, above=0, max=10))] = option(
        0.025, "peak learning rate of the poly schedule (default: the model's recipe)")
    batch_size: Annotated[int, Rule(COUNT)] = option(
        4, "images per iteration per process (default: the model's recipe)")
    gpus: Annotated[int, Rule(COUNT)] = Field(4, description="processes the recipe was written for (the zoo's 4xb4)")
    iterations: Annotated[int, Rule(COUNT)] = option(
        160000, "training iterations (default: the config's, else the model's recipe)")
    warmup_iters: Annotated[int, Rule(Number(int, min=0))] = Field(1000, description="linear warm-up iterations")
    warmup_ratio: Annotated[float, Rule(Number(float, 0, 1))] = Field(0.1, description="warm-up start, x lr")
    poly_power: Annotated[float, Rule(Number(float, above=0, max=10))] = Field(0.9, description="poly decay power")
    min_lr: Annotated[float, Rule(Number(float, 0, 10))] = Field(1e-4, description="the poly schedule's end")
    momentum: Annotated[float, Rule(Number(float, 0, 1))] = Field(0.9, description="SGD momentum")
    weight_decay: Annotated[float, Rule(Number(float, 0, 1))] = Field(5e-4, description="SGD weight decay")
    aux_weights: list = Field(default_factory=lambda: [1.0, 1.0],
                              description="loss weights of the two auxiliary heads")


@dataclass
class ModelConfig:
    name: str
    backbone_depth: int
    spatial_channels: list
    context_channels: list
    out_channels: int
    aux_channels: int
    num_classes: int
    class_names: ClassNames
    palette: Palette               # [[R, G, B], ...], one per class
    mean: Mean                     # RGB, 0..255 scale
    std: Std
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
    annotated type: otherwise an error naming the key and the file (core/validate.py)."""
    try:
        return check_fields(cls, data, where, exclude)
    except InputError as e:
        raise ConfigError(str(e)) from None


def model_config_from_dict(data: dict, source: str = "<dict>") -> ModelConfig:
    """A model config's YAML mapping -> ModelConfig: the keys and their plain types first
    (check_keys, as every YAML config), then the field types (ranges, colors, ...), then
    num_classes against the class names and colors."""
    data = dict(check_keys(ModelConfig, data, source))
    data.pop("source", None)
    data["train"] = check_keys(TrainRecipe, data.pop("train", {}) or {}, f"{source} (train)")
    try:
        cfg = _MODEL_CONFIG.validate_python({**data, "source": source})
    except ValidationError as e:
        raise ConfigError(f"{source}: {error_line(e)}") from None
    if len(cfg.class_names) != cfg.num_classes or len(cfg.palette) != cfg.num_classes:
        raise ConfigError(f"{source}: num_classes is {cfg.num_classes} but there are "
                          f"{len(cfg.class_names)} class names and {len(cfg.palette)} palette colors")
    return cfg


_MODEL_CONFIG = TypeAdapter(ModelConfig)


def list_model_names() -> list[str]:
    return config_names("models")


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A zoo name (configs/models/<name>.yaml) or a path to a model YAML."""
    path = config_path("models", name_or_path)
    if not path.is_file():
        raise ConfigError(f"no model config {name_or_path!r}: pass a YAML path or one of the names "
                          f"`bisenet models` lists")
    return model_config_from_dict(load_yaml(path, "model config"), str(path))
