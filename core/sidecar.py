"""Sidecar metadata JSON beside every .onnx and .engine (`model.onnx` -> `model.onnx.json`):
its schema, declared once as a typed model (`Sidecar`), and its read/write.

The field types (ClassNames, Palette, Mean, Std, ...) are the model contract: the model config
YAML (core/model_config.py) declares its classes, palette, mean and std with the same types.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from core.errors import InputError
from core.files import atomic_write_bytes
from core.validate import MAX_SIDE, Number, error_line, rule, worded

SIDECAR_VERSION = 1


class SidecarError(InputError):
    """A missing or mismatched sidecar; the message says how to rebuild."""


# ---------------------------------------------------------------------------- field types
def _color(value):
    channel = Number(int, 0, 255)
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError("expected a list of [R, G, B] colors")
    for x in value:
        try:
            channel(x)
        except ValueError:
            raise ValueError(f"color {value}: each channel must be a whole number from 0 to 255") from None
    return value


def _input_shape(value):
    if not isinstance(value, list) or len(value) != 4 or value[1] != 3:
        raise ValueError("expected [N, 3, H, W]")
    Number(int, 1, 1024)(value[0])   # the batch: 1, or N for `bisenet export --batch N`
    Number(int, 1, MAX_SIDE)(value[2])
    Number(int, 1, MAX_SIDE)(value[3])
    return value


def _one_of(*choices):
    """A Literal of `choices` that says which are allowed."""
    def check(value):
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return Annotated[Literal[choices], rule(check)]


def _three(number: Number):
    """Three numbers (one per RGB channel), each held to `number`."""
    return Annotated[list[Annotated[float, rule(number)]], Field(min_length=3, max_length=3),
                     worded("expected a list of 3 numbers")]


# Field types: each says what is allowed and, through `worded` or its rule, the one line when not.
Text = Annotated[StrictStr, Field(min_length=1), worded("expected a non-empty string")]
ClassNames = Annotated[list[StrictStr], Field(min_length=1, max_length=256),
                       worded("expected a list of 1 to 256 class names (the overlay draws up to 256)")]
Color = Annotated[list, rule(_color)]
Palette = Annotated[list[Color], worded("expected a list of [R, G, B] colors")]
Mean = _three(Number(float))             # RGB, 0..255 scale
Std = _three(Number(float, above=0))
InputShape = Annotated[list, rule(_input_shape)]
Head = _one_of("labels", "logits")
Precision = _one_of("fp32", "fp16", "int8")
Flag = Annotated[StrictBool, worded("expected true or false")]
MaxBatch = Annotated[int, rule(Number(int, 1, 1024))]
DlaCore = Annotated[int, rule(Number(int, 0, 15))]
Sha256 = Annotated[StrictStr, Field(pattern="^[0-9a-f]{64}$"), worded("expected 64 lowercase hex digits")]
JsonObject = Annotated[dict, worded("expected a JSON object")]


class Sidecar(BaseModel):
    """Every field a sidecar may carry; other keys (an engine's TensorRT version, GPU,
    batch range, ...) pass through unchecked."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: Text
    classes: ClassNames
    palette: Palette
    mean: Mean
    std: Std
    input_shape: InputShape
    head: Head
    precision: Precision
    # Optional keys. `= None` marks a key that may be absent; only the Optional ones may be null.
    dynamic: Flag = None
    dynamic_batch: Flag = None
    max_batch: Optional[MaxBatch] = None
    input_name: Text = None
    output_name: Head = None
    onnx_sha256: Optional[Sha256] = None
    network: JsonObject = Field(None, alias="model_config")   # the ModelConfig it was exported from
    dla_core: Optional[DlaCore] = None

    @model_validator(mode="after")
    def _fields_agree(self):
        n = len(self.classes)
        if len(self.palette) != n:
            raise ValueError(f"{n} classes but {len(self.palette)} palette colors")
        trained = (self.network or {}).get("num_classes")
        if isinstance(trained, int) and trained != n:
            raise ValueError(f"{n} classes but the network was exported with {trained}")
        return self


# The keys every sidecar has (and Triton's config carries as parameters).
SIDECAR_REQUIRED = tuple(f.alias or name for name, f in Sidecar.model_fields.items() if f.is_required())


def check_sidecar(meta, where: str, hint: str) -> dict:
    """`meta` against the Sidecar model; returns it unchanged, or one InputError line
    `where: key: what is wrong; hint`."""
    if not isinstance(meta, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(meta).__name__}; {hint}")
    try:
        Sidecar.model_validate(meta)
    except ValidationError as e:
        raise InputError(f"{where}: {error_line(e)}; {hint}") from None
    return meta


# ---------------------------------------------------------------------------- files
def sidecar_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".json")


def write_sidecar(model_path: str | Path, meta: dict) -> Path:
    meta = {"sidecar_version": SIDECAR_VERSION, **meta}
    out = sidecar_path(model_path)
    atomic_write_bytes(out, (json.dumps(meta, indent=1) + "\n").encode())
    return out


def read_sidecar(model_path: str | Path, rebuild_hint: str = "re-export it with `bisenet export`") -> dict:
    """Read the sidecar of `model_path` and check it against the Sidecar model: one-line
    SidecarError otherwise."""
    side = sidecar_path(model_path)
    if not side.exists():
        raise SidecarError(f"{model_path}: no sidecar {side.name} beside it (classes, palette, "
                           f"normalization live there); {rebuild_hint}")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SidecarError(f"{side}: cannot read it ({getattr(e, 'strerror', None) or e}); fix its "
                           f"permissions or {rebuild_hint}") from None
    except json.JSONDecodeError as e:
        raise SidecarError(f"{side}: not valid JSON ({e}); {rebuild_hint}") from None
    try:
        return check_sidecar(meta, str(side), rebuild_hint)
    except InputError as e:
        raise SidecarError(str(e)) from None
