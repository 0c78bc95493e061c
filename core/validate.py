"""Checks shared by every stage: the value rule `Number`, sizes, YAML files, dataclass
fields, readable input files, writable outputs, and the sidecar schema. Every problem is an
`InputError` (core/errors.py): one line naming the flag or file and what to do.

Output paths: a missing folder is created (like `mkdir -p`) for every kind of output; an
output that cannot be written is refused before anything runs (prepare_output).
"""
from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from core.errors import InputError

MAX_QUEUE = 32            # frames per queue: each holds a full image (+ its preprocessed copy)
MAX_SIDE = 16384          # pixels: larger than any camera or model input


# ---------------------------------------------------------------------------- value rules
@dataclass(frozen=True)
class Number:
    """An int or float in [min, max] (or > above). Text is parsed ('2M' with units); YAML
    booleans, NaN, infinities and fractions where a whole number is due are refused."""

    kind: type = float
    min: float | None = None
    max: float | None = None
    above: float | None = None
    units: bool = False       # accept k / M suffixes (bit rates)
    hint: str = ""

    def __call__(self, value):
        number = self._number(value)
        low_ok = (self.min is None or number >= self.min) and (self.above is None or number > self.above)
        if not low_ok or (self.max is not None and number > self.max):
            raise ValueError(f"{value} is out of range: expected {self.describe()}")
        return number

    def _number(self, value):
        if isinstance(value, str):
            text = value.strip()
            scale = 1
            if self.units and text[-1:].lower() in ("k", "m"):
                text, scale = text[:-1], (1_000 if text[-1].lower() == "k" else 1_000_000)
            try:
                value = float(text) * scale
            except ValueError:
                raise ValueError(f"{value!r} is not a number: expected {self.describe()}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{value!r} is not a number: expected {self.describe()}")
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number: expected {self.describe()}")
        if self.kind is int:
            if value != int(value):
                raise ValueError(f"{value!r} is not a whole number: expected {self.describe()}")
            return int(value)
        return float(value)

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        if self.above is not None:
            what += f" above {_fmt(self.above)}"
        if self.min is not None and self.max is not None:
            what += f" from {_fmt(self.min)} to {_fmt(self.max)}"
        elif self.min is not None:
            what += f" of at least {_fmt(self.min)}"
        elif self.max is not None:
            what += f" up to {_fmt(self.max)}"
        return what + (f" ({self.hint})" if self.hint else "")


def _fmt(x) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def size_wh(value) -> tuple:
    """'1280x720' or [1280, 720] -> (1280, 720), each side 1..MAX_SIDE (also argparse's type)."""
    try:
        w, h = (value if isinstance(value, (list, tuple)) else str(value).lower().split("x"))
        side = Number(int, 1, MAX_SIDE)
        return side(w), side(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value}: expected WIDTHxHEIGHT like 1280x720, "
                                         f"each side 1..{MAX_SIDE}") from None



# ---------------------------------------------------------------------------- files
def load_yaml(path: str | Path, what: str = "config"):
    """A YAML file -> plain data (safe_load); unreadable, malformed or tagged (!!python/...)
    YAML is one InputError with the line number."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read this {what} ({getattr(e, 'strerror', None) or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, yaml.constructor.ConstructorError):   # e.g. !!python/object tags
            raise InputError(f"{path}{at}: {problem}; only plain YAML is read (mappings, lists, "
                             "strings, numbers, no tags)") from None
        raise InputError(f"{path}{at}: not valid YAML: {problem}; fix the syntax") from None


def _type_ok(value, hint) -> bool:
    """`value` against a simple dataclass annotation: int, float, str, bool, list, dict, X | None."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if is_dataclass(hint):
        return isinstance(value, dict)   # a nested section, checked on its own
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    return isinstance(value, origin) if isinstance(origin, type) else True


def check_fields(cls, data, where: str, exclude=()) -> dict:
    """YAML mapping `data` against dataclass `cls`: unknown keys and wrong types are errors
    naming the key and the file."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)} - set(exclude)
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    for key, value in data.items():
        hint = hints.get(key)
        if hint is not None and not _type_ok(value, hint):
            want = getattr(hint, "__name__", None) or str(hint)
            raise InputError(f"{where}: {key}: expected {want}, got {type(value).__name__} {value!r}"[:300])
    return data


def readable_file(path: str | Path, what: str, hint: str) -> Path:
    """An input file that exists, is a file, and can be read; one line otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; {hint}")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a file; {hint}")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise InputError(f"{what} {path}: cannot read it ({e.strerror}); fix its permissions") from None
    if empty:
        raise InputError(f"{what} {path} is empty; {hint}")
    return path


def prepare_output(path: str | Path, flag: str, folder: bool = False) -> Path:
    """Create the missing folders of an output and make sure it can be written, now, before
    anything runs. A probe file that did not exist before is removed again."""
    path = Path(path)
    target_dir = path if folder else path.parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot create folder {target_dir} ({e.strerror}); "
                         "pick a place you can write to") from None
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    probe = path if not folder else path / ".bisenet-write-test"
    existed = probe.exists()
    try:
        with open(probe, "ab"):
            pass
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write there ({e.strerror}); pick a place you can write to") from None
    if not existed:
        probe.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------- sidecars
def _text(v):
    if not isinstance(v, str) or not v:
        raise ValueError("expected a non-empty string")
    return v


def _numbers(n: int, positive: bool = False):
    def rule(v):
        if not isinstance(v, list) or len(v) != n:
            raise ValueError(f"expected a list of {n} numbers")
        for x in v:
            Number(float, above=0 if positive else None)(x)
        return v
    return rule


def _classes(v):
    if not isinstance(v, list) or not 1 <= len(v) <= 256 or not all(isinstance(c, str) for c in v):
        raise ValueError("expected a list of 1 to 256 class names (the overlay draws up to 256)")
    return v


def _palette(v):
    channel = Number(int, 0, 255)
    if not isinstance(v, list) or not all(isinstance(c, list) and len(c) == 3 for c in v):
        raise ValueError("expected a list of [R, G, B] colors")
    for c in v:
        for x in c:
            try:
                channel(x)
            except ValueError:
                raise ValueError(f"color {c}: each channel must be a whole number from 0 to 255") from None
    return v


def _input_shape(v):
    if not isinstance(v, list) or len(v) != 4 or v[1] != 3:
        raise ValueError("expected [N, 3, H, W]")
    Number(int, 1, 1024)(v[0])   # the batch: 1, or N for `bisenet export --batch N`
    Number(int, 1, MAX_SIDE)(v[2])
    Number(int, 1, MAX_SIDE)(v[3])
    return v


def _one_of(*choices):
    def rule(v):
        if v not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        return v
    return rule


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _optional(rule):
    return lambda v: v if v is None else rule(v)


def _sha256(v):
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError("expected 64 lowercase hex digits")
    return v


def _mapping(v):
    if not isinstance(v, dict):
        raise ValueError("expected a JSON object")
    return v


# Sidecar field -> rule; the SIDECAR_REQUIRED ones must be present.
SIDECAR = {
    "model": _text,
    "classes": _classes,
    "palette": _palette,
    "mean": _numbers(3),
    "std": _numbers(3, positive=True),
    "input_shape": _input_shape,
    "head": _one_of("labels", "logits"),
    "precision": _one_of("fp32", "fp16", "int8"),
    "dynamic": _bool,
    "dynamic_batch": _bool,
    "max_batch": _optional(Number(int, 1, 1024)),
    "input_name": _text,
    "output_name": _one_of("labels", "logits"),
    "onnx_sha256": _optional(_sha256),
    "model_config": _mapping,
    "dla_core": _optional(Number(int, 0, 15)),
}
SIDECAR_REQUIRED = ("model", "classes", "palette", "mean", "std", "input_shape", "head", "precision")


def check_sidecar(meta, where: str, hint: str) -> dict:
    """Types and ranges of every known field, then the fields against each other."""
    if not isinstance(meta, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(meta).__name__}; {hint}")
    missing = [k for k in SIDECAR_REQUIRED if k not in meta]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}; {hint}")
    for key, rule in SIDECAR.items():
        if key in meta:
            try:
                rule(meta[key])
            except ValueError as e:
                raise InputError(f"{where}: {key}: {e}; {hint}") from None
    n = len(meta["classes"])
    if len(meta["palette"]) != n:
        raise InputError(f"{where}: {n} classes but {len(meta['palette'])} palette colors; {hint}")
    trained = meta.get("model_config", {}).get("num_classes")
    if isinstance(trained, int) and trained != n:
        raise InputError(f"{where}: {n} classes but the network was exported with {trained}; {hint}")
    return meta


def check_fields_by_rules(values: dict, rules: dict, where: str) -> None:
    """Fields of a YAML config that a sidecar also carries, through the sidecar's rules."""
    for key, value in values.items():
        try:
            rules[key](value)
        except ValueError as e:
            raise InputError(f"{where}: {key}: {e}") from None


def check_output_channels(channels, n_classes: int, where: str, hint: str) -> None:
    """A logits graph's channel count must be the sidecar's class count."""
    if isinstance(channels, int) and channels != n_classes:
        raise InputError(f"{where}: the network outputs {channels} classes but its sidecar lists "
                         f"{n_classes} classes and colors; {hint}")
