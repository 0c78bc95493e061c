"""Checks shared by every stage: the value rule `Number`, sizes, YAML files, dataclass
fields, readable input files, writable outputs, and the pieces that give typed (pydantic)
models our wording: `worded`, `rule`, `error_line`. Every problem is an
`InputError` (core/errors.py): one line naming the flag or file and what to do.

Output paths: a missing folder is created (like `mkdir -p`) for every kind of output; an
output that cannot be written is refused before anything runs (prepare_output).
"""
from __future__ import annotations

import argparse
import errno
import math
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import yaml
from pydantic import PlainValidator, ValidationError, WrapValidator

from core.errors import InputError, file_error
from core.redact import shown, shown_text

MAX_QUEUE = 32            # frames per queue: each holds a full image (+ its preprocessed copy)
MAX_SIDE = 16384          # pixels: larger than any camera or model input
MAX_YAML_VALUES = 100_000  # values in one config file, aliases expanded: far above any real config
MAX_YAML_BYTES = 4 * 1024 * 1024   # one config file; real ones are a few kB
MAX_YAML_DEPTH = 32        # lists/mappings inside each other; a config needs about 5
MAX_YAML_STRING = 8192     # characters in one value or key (a path is at most 4096)


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
            raise ValueError(f"{shown_text(value)} is out of range: expected {self.describe()}")
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
                raise ValueError(f"{shown(value)} is not a number: expected {self.describe()}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{shown(value)} is not a number: expected {self.describe()}")
        if not math.isfinite(value):
            raise ValueError(f"{shown(value)} is not a finite number: expected {self.describe()}")
        if self.kind is int:
            if value != int(value):
                raise ValueError(f"{shown(value)} is not a whole number: expected {self.describe()}")
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
        raise argparse.ArgumentTypeError(f"{shown_text(value)}: expected WIDTHxHEIGHT like 1280x720, "
                                         f"each side 1..{MAX_SIDE}") from None



# ---------------------------------------------------------------------------- files
class _TooManyValues(yaml.composer.ComposerError):
    pass


class _PlainLoader(yaml.SafeLoader):
    """safe_load with a bound on the expanded size: an alias (*name) counts as every value of
    the node it repeats, so a few lines of nested aliases (a "YAML bomb", billions of values
    once expanded) are refused at once, while the anchors yaml.safe_dump writes for a value
    repeated by reference still load."""

    def __init__(self, stream):
        super().__init__(stream)
        self._values = 0
        self._depth = 0    # lists/mappings open around the node being composed
        self._sizes = {}   # id(node) -> values it holds, aliases expanded

    def compose_node(self, parent, index):
        event = self.peek_event()
        target = self.anchors.get(event.anchor) if isinstance(event, yaml.AliasEvent) else None
        self._values += self._size(target) if target is not None else 1
        if self._values > MAX_YAML_VALUES:
            raise _TooManyValues(None, None, f"more than {MAX_YAML_VALUES} values (aliases, "
                                              "*name, counted expanded)", event.start_mark)
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_YAML_STRING:
            raise _TooManyValues(None, None, f"a value of {len(event.value)} characters (at most "
                                              f"{MAX_YAML_STRING})", event.start_mark)
        nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nested:
            self._depth += 1
            if self._depth > MAX_YAML_DEPTH:
                raise _TooManyValues(None, None, f"lists or mappings nested more than {MAX_YAML_DEPTH} deep",
                                     event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise _TooManyValues(None, None, f"the key {key!r} is given twice (the first would be "
                                                      "ignored); keep one", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def _size(self, node) -> int:
        if id(node) not in self._sizes:
            self._sizes[id(node)] = 1   # a node that contains itself counts once
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            else:
                children = []
            self._sizes[id(node)] = min(1 + sum(self._size(c) for c in children), MAX_YAML_VALUES + 1)
        return self._sizes[id(node)]


def load_yaml(path: str | Path, what: str = "config"):
    """A YAML file -> plain data (safe_load); unreadable, malformed or tagged (!!python/...)
    YAML is one InputError with the line number."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise InputError(f"{path}: {size} bytes; a {what} is at most {MAX_YAML_BYTES // (1024 * 1024)} MiB "
                             "(pass the right file, or a smaller one)")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read this {what} ({getattr(e, 'strerror', None) or e})") from None
    try:
        return yaml.load(text, Loader=_PlainLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, yaml.constructor.ConstructorError):   # e.g. !!python/object tags
            raise InputError(f"{path}{at}: {problem}; only plain YAML is read (mappings, lists, "
                             "strings, numbers, no tags)") from None
        if isinstance(e, _TooManyValues):
            raise InputError(f"{path}{at}: {problem}; fix this {what}") from None
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
            raise InputError(f"{where}: {key}: expected {want}, got {type(value).__name__} {shown(value)}"[:300])
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
        raise InputError(f"{flag} {path}: {file_error(target_dir, e, 'create folder')}") from None
    probe = path if not folder else path / ".bisenet-write-test"
    try:
        if not folder and path.is_dir():   # (is_dir raises for a name that is too long)
            raise InputError(f"{flag} {path} is a folder; give a file name")
        existed = probe.exists()
        with open(probe, "ab"):
            pass
    except OSError as e:
        if e.errno == errno.ENOENT and target_dir.is_dir():   # a folder that takes no new files (/proc, /sys)
            raise InputError(f"{flag} {path}: {target_dir} is not writable (no file can be created there); "
                             "pick a place you can write to") from None
        raise InputError(f"{flag} {path}: {file_error(path, e)}") from None
    if not existed:
        probe.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------- typed models
def worded(message: str) -> WrapValidator:
    """Annotated metadata: pydantic's own check of the annotated type, failing with our wording
    (`message`) instead of pydantic's; a ValueError raised by an inner rule (e.g. `Number`)
    keeps its own words."""
    def wrap(value, check):
        try:
            return check(value)
        except ValidationError as e:
            first = e.errors()[0]
            if first["type"] == "value_error":
                raise ValueError(str(first["ctx"]["error"])) from None
            raise ValueError(message) from None
    return WrapValidator(wrap)


def rule(check) -> PlainValidator:
    """Annotated metadata: a rule like `Number(int, 1, 1024)` as the field's whole check."""
    return PlainValidator(check)


def error_line(error: ValidationError) -> str:
    """A pydantic ValidationError as our one line: every missing key at once, otherwise the
    first problem as `key: what is wrong` (the model's cross-field checks name no key)."""
    problems = error.errors()
    missing = [str(p["loc"][-1]) for p in problems if p["type"] == "missing"]
    if missing:
        return f"missing {', '.join(missing)}"
    first = problems[0]
    said = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    key = ".".join(str(part) for part in first["loc"])
    return f"{key}: {said}" if key else said


def check_output_channels(channels, n_classes: int, where: str, hint: str) -> None:
    """A logits graph's channel count must be the sidecar's class count."""
    if isinstance(channels, int) and channels != n_classes:
        raise InputError(f"{where}: the network outputs {channels} classes but its sidecar lists "
                         f"{n_classes} classes and colors; {hint}")
