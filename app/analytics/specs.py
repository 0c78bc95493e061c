"""Typed settings of the scene analytics: the zones and rules of a config's `zones:` /
`rules:` sections (or a `cameras:` entry's). The run options (--coverage-log, --mqtt, ...) are
declared with the app's other options: app/settings.py AnalyticsSettings.

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
        max_clip_s: 60                 # an event clip is at most this long (a longer event: its first 60 s)

Every problem is one line (core.errors.InputError) naming the entry and what to do; an
unknown class name lists the model's classes.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InputError
from core.validate import MAX_SIDE
from core.names import NAME_RULE, name_ok

FRAME_ZONE = "frame"     # the implicit zone: the whole frame


def polygon_area(points) -> float:
    """The area a polygon encloses (shoelace formula, absolute; 0 for points on one line)."""
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]))) / 2.0


class ZoneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    polygon: list[tuple[float, float]] = Field(min_length=3)
    coords: Literal["normalized", "pixels"] = "normalized"
    classes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self):
        if not name_ok(self.name) or self.name == FRAME_ZONE:
            raise ValueError(f"zone name {self.name!r}: use {NAME_RULE} "
                             f"(and not {FRAME_ZONE!r}, the implicit whole-frame zone)")
        if not all(math.isfinite(v) for p in self.polygon for v in p):
            raise ValueError(f"zone {self.name}: polygon coordinates must be finite numbers (no nan or inf)")
        if len(set(self.polygon)) < 3:
            raise ValueError(f"zone {self.name}: the polygon needs at least 3 different points")
        if polygon_area(self.polygon) <= 0.0:
            raise ValueError(f"zone {self.name}: the polygon encloses no area (its points lie on one line); "
                             "give the corners of the region")
        if self.coords == "normalized" and any(not (0.0 <= v <= 1.0) for p in self.polygon for v in p):
            raise ValueError(f"zone {self.name}: normalized coordinates must lie in 0..1 "
                             "(for pixel coordinates of the source frame add `coords: pixels`)")
        if self.coords == "pixels" and any(not (0 <= v <= MAX_SIDE) for p in self.polygon for v in p):
            raise ValueError(f"zone {self.name}: pixel coordinates must lie in 0..{MAX_SIDE}")
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
    max_clip_s: float = Field(default=60.0, ge=1.0, le=600.0)

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
        if not name_ok(self.name):
            raise ValueError(f"rule name {self.name!r}: use {NAME_RULE}")
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


SECTIONS = ("zones", "rules")          # config keys (top level, or in a `cameras:` entry)


def camera_configs(cameras, class_names: list[str], where: str = "config") -> dict[str, CameraAnalytics]:
    """{camera name: its zones and rules} from the cameras' settings (app/settings.py
    CameraSettings: a `cameras:` entry's own zones:/rules:, else the top-level ones, which apply
    to every camera). Checked against the model's classes; cameras without any are left out."""
    out = {}
    for cam in cameras:
        here = f"{where}: camera {cam.name}" if len(cameras) > 1 else where
        config = parse_camera_analytics(cam.zones, cam.rules, here)
        config.check_classes(class_names, here)
        if config.enabled:
            out[cam.name] = config
    return out
