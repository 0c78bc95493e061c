"""Typed settings of the scene analytics: the zones and rules of a config's `zones:` /
`rules:` sections (or a `cameras:` entry's), and the run options (one pydantic model,
`AnalyticsOptions`: field -> flag, help and default; app/run.py adds them as flags).

    zones:
      - name: lane                     # letters, digits, _ - . (goes into topics and metrics)
        polygon: [[0.30, 0.55], [0.70, 0.55], [0.95, 1.0], [0.05, 1.0]]
        coords: normalized             # default: x, y in 0..1 of the frame; or `pixels` of the source frame
        classes: [road, car, pavement] # watched classes (model's class names)
    rules:
      - zone: lane                     # or `frame`, the implicit whole-frame zone
        class: car
        above: 0.10                    # or below: ...
        for_s: 0.5                     # hold this long to start
        clear: 0.05                    # hysteresis: the event ends past this level ...
        clear_s: 1.0                   # ... held this long
        cooldown_s: 5                  # no new start this long after an end
        pre_roll_s: 2                  # event clip from start - pre_roll_s ...
        post_roll_s: 2                 # ... to end + post_roll_s

Every problem is one line (core.errors.InputError) naming the entry and what to do; an
unknown class name lists the model's classes.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InputError

FRAME_ZONE = "frame"     # the implicit zone: the whole frame
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ZoneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    polygon: list[tuple[float, float]] = Field(min_length=3)
    coords: Literal["normalized", "pixels"] = "normalized"
    classes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self):
        if not NAME_RE.match(self.name) or self.name == FRAME_ZONE:
            raise ValueError(f"zone name {self.name!r}: use letters, digits, '_', '-' or '.' "
                             f"(and not {FRAME_ZONE!r}, the implicit whole-frame zone)")
        if self.coords == "normalized" and any(not (0.0 <= v <= 1.0) for p in self.polygon for v in p):
            raise ValueError(f"zone {self.name}: normalized coordinates must lie in 0..1 "
                             "(for pixel coordinates of the source frame add `coords: pixels`)")
        if self.coords == "pixels" and any(v < 0 for p in self.polygon for v in p):
            raise ValueError(f"zone {self.name}: pixel coordinates must not be negative")
        return self


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    zone: str = FRAME_ZONE
    class_name: str = Field(alias="class")
    above: float | None = Field(default=None, ge=0.0, le=1.0)
    below: float | None = Field(default=None, ge=0.0, le=1.0)
    for_s: float = Field(default=1.0, ge=0.0)
    clear: float | None = Field(default=None, ge=0.0, le=1.0)
    clear_s: float = Field(default=1.0, ge=0.0)
    cooldown_s: float = Field(default=0.0, ge=0.0)
    pre_roll_s: float = Field(default=2.0, ge=0.0, le=60.0)
    post_roll_s: float = Field(default=2.0, ge=0.0, le=60.0)

    @model_validator(mode="after")
    def _check(self):
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above: or below: (a coverage ratio 0..1)")
        if self.clear is None:
            self.clear = self.threshold
        if self.above is not None and self.clear > self.above:
            raise ValueError(f"clear {self.clear} must not be above the start level above: {self.above}")
        if self.below is not None and self.clear < self.below:
            raise ValueError(f"clear {self.clear} must not be below the start level below: {self.below}")
        if self.name is None:
            self.name = f"{self.zone}.{self.class_name}.{'above' if self.above is not None else 'below'}"
        if not NAME_RE.match(self.name):
            raise ValueError(f"rule name {self.name!r}: use letters, digits, '_', '-' or '.'")
        return self

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below


class CameraAnalytics(BaseModel):
    """One camera's zones and rules, checked against the model's classes."""

    zones: list[ZoneSpec] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.zones or self.rules)

    def check_classes(self, class_names: list[str], where: str) -> None:
        known = set(class_names)
        zones = {z.name for z in self.zones} | {FRAME_ZONE}
        listing = ", ".join(class_names)
        for z in self.zones:
            for c in z.classes:
                if c not in known:
                    raise InputError(f"{where}: zone {z.name}: unknown class {c!r}; the model's classes: {listing}")
        names = set()
        for r in self.rules:
            if r.class_name not in known:
                raise InputError(f"{where}: rule {r.name}: unknown class {r.class_name!r}; the model's classes: "
                                 f"{listing}")
            if r.zone not in zones:
                raise InputError(f"{where}: rule {r.name}: unknown zone {r.zone!r}; zones: {', '.join(sorted(zones))}")
            if r.name in names:
                raise InputError(f"{where}: two rules named {r.name}; give them different `name:`s")
            names.add(r.name)
        if len({z.name for z in self.zones}) != len(self.zones):
            raise InputError(f"{where}: zone names must differ")

    def watched(self) -> dict[str, list[str]]:
        """zone -> the classes reported for it (its own list plus the classes its rules name);
        the implicit frame zone only with the classes rules name on it."""
        out = {z.name: list(z.classes) for z in self.zones}
        out.setdefault(FRAME_ZONE, [])
        for r in self.rules:
            if r.class_name not in out[r.zone]:
                out[r.zone].append(r.class_name)
        if not out[FRAME_ZONE]:
            del out[FRAME_ZONE]
        return out


def parse_camera_analytics(zones, rules, where: str) -> CameraAnalytics:
    """A config's zones: / rules: lists -> CameraAnalytics; one-line InputError when bad."""
    try:
        return CameraAnalytics(zones=zones or [], rules=rules or [])
    except ValidationError as e:
        err = e.errors()[0]
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise InputError(f"{where}: {path}: {msg}") from None


class AnalyticsOptions(BaseModel):
    """The run options; each field is a flag (`--coverage-log` ...). `flag_help` is the help."""

    model_config = ConfigDict(extra="forbid")

    coverage_log: str | None = Field(default=None, description="per frame and camera: the zones' coverage, "
                                     "FILE.csv or FILE.jsonl (frame ids match the latency log)")
    events_log: str | None = Field(default=None, description="events (start, update, end) as JSON lines")
    mqtt: str | None = Field(default=None, description="MQTT broker for events: mqtt://HOST[:PORT][/PREFIX] "
                             "(prefix default bisenet; mqtts:// for TLS)")
    mqtt_user: str | None = Field(default=None, description="MQTT user name")
    mqtt_password: str | None = Field(default=None, description="MQTT password (default: $BISENET_MQTT_PASSWORD)")
    mqtt_tls: bool = Field(default=False, description="MQTT over TLS (the system's CA certificates)")
    webhook: str | None = Field(default=None, description="POST every event message as JSON to this http(s) URL "
                                "(retried with backoff)")
    clips_dir: str | None = Field(default=None, description="write an MP4 clip and a JPEG snapshot of every event "
                                  "here (<camera>/<event id>.mp4)")
    clips_max_mb: float = Field(default=1000.0, gt=0, description="keep the clips folder under this many MB "
                                "(oldest deleted first)")
    event_queue: int = Field(default=1000, ge=1, le=100000, description="messages each event sink holds while "
                             "its broker or endpoint is down; beyond it the oldest are dropped and counted")

    @property
    def any(self) -> bool:
        return any(v not in (None, False) for k, v in self if k not in ("clips_max_mb", "event_queue"))


# ---- the command line: flags from AnalyticsOptions, the config's sections (app/run.py) ----------

SECTIONS = ("zones", "rules")          # config keys (top level, or in a `cameras:` entry)
DEFAULTS = {**{name: None for name in AnalyticsOptions.model_fields}, **{key: None for key in SECTIONS}}


def add_arguments(parser) -> None:
    """One flag per AnalyticsOptions field; values are typed and range-checked by the model
    (options_from), so a preset and the command line go through the same rules."""
    import argparse

    group = parser.add_argument_group("scene analytics (zones: and rules: in --config; see docs/analytics.md)")
    for name, field in AnalyticsOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "" if field.default in (None, False) else f" (default {field.default:g})"
        if field.annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        else:
            group.add_argument(flag, metavar=name.split("_")[-1].upper(), help=field.description + default)


def options_from(opts) -> AnalyticsOptions:
    values = {name: getattr(opts, name) for name in AnalyticsOptions.model_fields if getattr(opts, name, None) is not None}
    try:
        return AnalyticsOptions(**values)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        raise InputError(f"{flag} {values.get(err['loc'][0])!r}: {err['msg'].removeprefix('Value error, ')}") from None


def camera_configs(opts, cameras: list, class_names: list[str], where: str = "config") -> dict[str, CameraAnalytics]:
    """{camera name: its zones and rules} from the resolved options: a `cameras:` entry's own
    zones:/rules:, else the top-level sections (they apply to every camera). Checked against
    the model's classes; cameras without any are left out."""
    out = {}
    for name, cam_opts, _ in cameras:
        zones, rules = getattr(cam_opts, "zones", None), getattr(cam_opts, "rules", None)
        here = f"{where}: camera {name}" if len(cameras) > 1 else where
        config = parse_camera_analytics(zones, rules, here)
        config.check_classes(class_names, here)
        if config.enabled:
            out[name] = config
    return out
