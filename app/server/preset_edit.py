"""The console's zone and rule editor on disk: read one camera's `zones:` / `rules:` from the
run's preset (--config), and save new ones, checked by the same typed settings as the command
line (app/settings.py build, then the zones and rules against the model's classes) before the
file is replaced atomically, the previous one kept as <name>.bak.

Where a camera's zones live: its own `cameras:` entry when the entry has zones: or rules: (or
the preset lists cameras and has no top-level zones), else the top-level zones:/rules: (which
apply to every camera). What is lost on save: PyYAML keeps every key and their order but not
the comments or the quoting style of the file (the .bak has them)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from core.config_files import CONFIGS_DIR
from core.errors import InputError
from core.files import atomic_write_bytes


def _load(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the preset ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of flag names to values")
    return data


def _home(data: dict, camera: str) -> dict:
    """The mapping that holds `camera`'s zones: its cameras: entry, or the top level."""
    entries = data.get("cameras")
    if isinstance(entries, list):
        named = [e for e in entries if isinstance(e, dict) and e.get("name") == camera]
        if len(named) == 1:
            entry = named[0]
            if "zones" in entry or "rules" in entry or ("zones" not in data and "rules" not in data):
                return entry
    return data


def read_zones(path: str | Path, camera: str) -> dict:
    """-> {"zones": [...], "rules": [...], "scope": "camera" | "all"} as the preset has them."""
    data = _load(Path(path))
    home = _home(data, camera)
    return {"zones": home.get("zones") or [], "rules": home.get("rules") or [],
            "scope": "all" if home is data else "camera"}


def save_zones(path: str | Path, camera: str, zones: list, rules: list, class_names: list[str]) -> Path:
    """Replace `camera`'s zones and rules in the preset: checked like the command line's
    settings (one-line InputError naming the preset), then written atomically; the previous
    file is kept as <name>.bak. -> the preset's path."""
    path = Path(path)
    if path.resolve().is_relative_to(CONFIGS_DIR.resolve()):
        raise InputError(f"{path} is a preset shipped with the app: copy it, run with --config <your copy>, "
                         "and save there")
    if not isinstance(zones, list) or not isinstance(rules, list):
        raise InputError("zones and rules must be lists")
    data = _load(path)
    home = _home(data, camera)
    for key, value in (("zones", zones), ("rules", rules)):
        if value:
            home[key] = value
        else:
            home.pop(key, None)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)
    check(path, text, class_names)
    if path.exists():
        shutil.copy2(path, path.with_name(path.name + ".bak"))
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def check(path: Path, text: str, class_names: list[str]) -> None:
    """The new preset text, checked by app/settings.py build (as `--config` would read it)
    and the analytics' specs against the model's classes; errors name `path`."""
    from app.analytics.specs import camera_configs
    from app.settings import build

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.check.", suffix=path.suffix or ".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            settings = build({}, tmp)
            if not settings.cameras:   # the sources come from the command line: a stand-in one
                settings = build({"source": ["0"]}, tmp)
            camera_configs(settings.cameras, class_names, str(path))
        except InputError as e:
            raise InputError(str(e).replace(tmp, str(path))) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
