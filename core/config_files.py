"""Where the shipped YAML configs live (configs/<kind>/<name>.yaml) and the one rule that turns
a config name or path into a file: a path with a .yaml/.yml suffix, or any existing file, is
taken as given; anything else is a name looked up under configs/<kind>/."""
from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
KINDS = ("models", "datasets", "train", "app")


def config_names(kind: str) -> list[str]:
    """The names shipped for one kind (what `bisenet models` and the error messages list)."""
    return sorted(p.stem for p in (CONFIGS_DIR / kind).glob("*.yaml"))


def config_path(kind: str, name_or_path: str | Path) -> Path:
    """A config name or path -> the YAML file it means (which may not exist: callers say so)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return CONFIGS_DIR / kind / f"{name_or_path}.yaml"
