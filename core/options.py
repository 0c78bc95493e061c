"""Options declared once, beside what they configure: name, type, range, default and help in
one line of a typed model (pydantic), and from it the command-line flag, the YAML key of a
preset or config, and the Python keyword argument.

    class TritonOptions(Section):
        triton_in_flight: Annotated[int, Rule(Number(int, 1, 64))] = option(
            2, "Triton: requests in flight at once (default 2)", group="model", metavar="K")

A field with `option(default, help, group=...)` is a flag --NAME (dashes for underscores) in
`group` of --help and a key of the same name; a field without `option()` is a key only (no
flag). Its type is `Annotated[..., Rule(check)]`: `check` returns the typed value or raises
ValueError saying what is wrong (the rules below and core/validate.py's Number, size_wh).
`add_arguments` makes argparse's flags from sections, `checked` / `Section.of` check values,
and every bad value is one InputError naming the flag, key or keyword (exit 2).

Sections compose: a command's options are one section, or several (a section may inherit
others' fields, e.g. engines/load.py's EngineOptions gathers every backend's options).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Annotated, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import core_schema

from core.errors import InputError
from core.redact import shown
from core.validate import Number, size_wh


# ---------------------------------------------------------------------------- value rules
class Expected(ValueError):
    """A value of the wrong kind; its message follows the flag or key after a colon
    ('hud: expected true or false, got 3'). Other rules' messages start with the value."""


def explain(where: str, error: Exception) -> str:
    """One line: the flag or key `where`, then what is wrong with its value."""
    return f"{where}{': ' if isinstance(error, Expected) else ' '}{error}"


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def switch(value) -> bool:
    if not isinstance(value, bool):
        raise Expected(f"expected true or false, got {shown(value)}")
    return value


@dataclass(frozen=True)
class OneOf:
    """One of a few words (argparse's choices on the command line)."""
    choices: tuple

    def __call__(self, value):
        if value not in self.choices:
            raise Expected(f"{shown(value)} is not one of {', '.join(self.choices)}")
        return value


def text(value) -> str:
    """A plain value taken as text (a path, a name, a list of providers)."""
    if isinstance(value, (dict, list)):
        raise Expected(f"expected a single value, got {shown(value)}")
    return str(value)


def each(rule):
    """A rule for a repeatable flag: applied to every value of a list, or to a single value."""
    return lambda value: [rule(v) for v in value] if isinstance(value, (list, tuple)) else rule(value)


def listed(rule):
    """A rule for a repeatable option: a list of values, or one value (a list of one)."""
    return lambda value: [rule(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def check(rule, value, where: str):
    """`value` through `rule`; a bad one is an InputError naming `where` (a flag or a key)."""
    try:
        return rule(value)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise InputError(explain(where, e)) from None


def check_value(dest: str, value, where: str | None = None, *, rules: dict):
    """`value` through the rule for flag `dest` in `rules` ({dest: rule}), if it has one;
    InputError names `where` (default: the flag)."""
    rule = rules.get(dest)
    if rule is None or value is None:
        return value
    return check(rule, value, where or flag_name(dest))


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (`prog: error: ...`, exit 2), without the usage
    block: every input error of the project looks the same (`--help` shows the usage).
    Abbreviated flags are refused (`--max-frame` is not `--max-frames`), so a flag and a
    preset key name one thing."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]} (see --help)\n")


# ---------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Rule:
    """A field's check: value -> typed value, or ValueError saying what is wrong. None (left
    out) passes. Used as `Annotated[type, Rule(check)]`."""
    check: Callable

    def validate(self, value):
        if value is None:
            return None
        try:
            return self.check(value)
        except argparse.ArgumentTypeError as e:   # size_wh is also argparse's type
            raise ValueError(str(e)) from None

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_plain_validator_function(self.validate)

    @property
    def argtype(self):
        """What argparse converts the flag's text with before the check (its own one-line
        errors, e.g. '--queue-size: invalid int value'); None: the check takes the text."""
        if isinstance(self.check, Number) and not self.check.units:
            return self.check.kind
        return size_wh if self.check is size_wh else None


def option(default, help: str, *, group: str = "", metavar=None, repeat: bool = False, short: str | None = None,
           flag: str | None = None, **argparse_keywords):
    """An option: flag --NAME in `group` of --help (and `short`, e.g. -o; `flag`: another long
    name, where NAME would hide a pydantic attribute such as json); `repeat`: the flag may be
    given several times (a list); other keywords go to argparse as they are (required, nargs,
    const)."""
    return Field(default, description=help, json_schema_extra={
        "group": group, "metavar": metavar, "repeat": repeat, "short": short, "flag": flag,
        "argparse": argparse_keywords})


def flag_of(name: str, field) -> str:
    """The long flag of option `name`."""
    return (field.json_schema_extra or {}).get("flag") or flag_name(name)


Switch = Annotated[bool, Rule(switch)]
Text = Annotated[str | None, Rule(text)]


def one_line(error: ValidationError, where: Callable[[str], str]) -> InputError:
    """pydantic's first error -> our one line, naming the flag or key (`where(option name)`)."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    cause = first.get("ctx", {}).get("error")
    place = where(loc[0]) + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in loc[1:])
    if isinstance(cause, Exception):
        return InputError(explain(place, cause))
    return InputError(explain(place, Expected(first["msg"])))


class Section(BaseModel):
    """A group of declared options (a pydantic model that refuses unknown keys)."""
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls, options=None, where: Callable[[str], str] = flag_name):
        """`options` as these settings: themselves, the defaults (None), a mapping or any object
        with some of these attributes (a namespace in scripts and tests), checked; a bad or
        unknown one is one InputError naming it with `where(name)`."""
        if isinstance(options, cls):
            return options
        if isinstance(options, dict):
            unknown = sorted(set(options) - set(cls.model_fields))
            if unknown:
                raise InputError(f"{where(unknown[0])}: unknown option; allowed: {', '.join(cls.model_fields)}")
            options = {k: v for k, v in options.items() if v is not None}   # None: not given, the default
        try:
            return cls.model_validate(options or {}, from_attributes=True)
        except ValidationError as e:
            raise one_line(e, where) from None

    @classmethod
    def flags(cls) -> dict:
        """name -> field, of the fields that are flags (declared with `option()`)."""
        return {name: field for name, field in cls.model_fields.items() if field.json_schema_extra}


def checked(section, values: dict, where: dict):
    """The options of `section` among `values` ({name: value}) -> a `section`, checked; a bad
    value is one InputError naming `where[name]` (default: its flag)."""
    try:
        return section.model_validate({k: v for k, v in values.items() if k in section.model_fields})
    except ValidationError as e:
        raise one_line(e, lambda key: where.get(key, flag_name(key))) from None


def rules_of(sections: Iterable) -> dict:
    """name -> check of every declared option of `sections`."""
    return {name: field.metadata[0].check for section in sections for name, field in section.flags().items()}


def add_arguments(p: argparse.ArgumentParser, sections: Iterable, groups: dict | None = None,
                  suppress: bool = True, only: Iterable | None = None) -> None:
    """The flags of `sections`' options (`only`: of these names). `groups`: group name -> title
    of --help (None: every flag in the parser's own list). `suppress`: a flag left out is not in
    argparse's namespace (so a preset's value can be told apart from it); otherwise it holds
    the declared default."""
    fields = {name: field for section in sections for name, field in section.flags().items()
              if only is None or name in only}
    targets = {None: p} if groups is None else {g: p.add_argument_group(title) for g, title in groups.items()}
    for name, field in fields.items():
        target = targets[None if groups is None else field.json_schema_extra["group"]]
        short = field.json_schema_extra.get("short")
        target.add_argument(*([short] if short else []), flag_of(name, field), dest=name,
                            **argparse_keywords(field, suppress))


def argparse_keywords(field, suppress: bool = True) -> dict:
    rule, extra = field.metadata[0], field.json_schema_extra
    kw = {"help": (field.description or "").replace("%", "%%"),   # a % in the help is text, not a format
           "default": argparse.SUPPRESS if suppress else field.default}
    if rule.check is switch:   # --x / --no-x, or as declared (action="store_true")
        return {**kw, "action": argparse.BooleanOptionalAction, **extra.get("argparse", {})}
    kw.update(action="append" if extra["repeat"] else "store", metavar=extra["metavar"], type=rule.argtype)
    if isinstance(rule.check, OneOf):
        kw["choices"] = rule.check.choices
    return {**kw, **extra.get("argparse", {})}


def optional(name: str, source, exclude=()) -> type:
    """A Section whose fields are those of `source` (a Section or pydantic dataclass) as
    overrides: the same type, rule, help and flag, default None (not given). E.g. a train
    config's overrides of the model's recipe, declared once in the recipe."""
    fields = {}
    for key, field in source.__pydantic_fields__.items():
        if key in exclude:
            continue
        annotation = Annotated[(field.annotation | None, *field.metadata)] if field.metadata else field.annotation | None
        fields[key] = (annotation, Field(None, description=field.description,
                                         json_schema_extra=field.json_schema_extra))
    return create_model(name, __base__=Section, **fields)


def apply(args, sections: Iterable):
    """Every value argparse's namespace `args` holds for an option of `sections`, checked and
    typed in place (one InputError naming the flag); returns `args`."""
    values = vars(args)
    for section in sections:
        present = {name: values[name] for name in section.flags() if values.get(name) is not None}
        for name, field in section.flags().items():
            if name in present:
                rule = field.metadata[0]
                values[name] = check(rule.validate, present[name], flag_of(name, field))
    return args


def given(args, section) -> dict:
    """The options of `section` that argparse's namespace `args` holds a value for."""
    values = vars(args) if not isinstance(args, dict) else args
    return {name: values[name] for name in section.model_fields if values.get(name) is not None}
