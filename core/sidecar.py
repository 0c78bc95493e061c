"""Sidecar metadata JSON beside every .onnx and .engine (`model.onnx` -> `model.onnx.json`)."""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import InputError
from core.files import atomic_write_bytes
from core.validate import check_sidecar

SIDECAR_VERSION = 1


class SidecarError(InputError):
    """A missing or mismatched sidecar; the message says how to rebuild."""


def sidecar_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".json")


def write_sidecar(model_path: str | Path, meta: dict) -> Path:
    meta = {"sidecar_version": SIDECAR_VERSION, **meta}
    out = sidecar_path(model_path)
    atomic_write_bytes(out, (json.dumps(meta, indent=1) + "\n").encode())
    return out


def read_sidecar(model_path: str | Path, rebuild_hint: str = "re-export it with `bisenet export`") -> dict:
    """Read the sidecar of `model_path` and check it against the schema (app/validate.py):
    one-line SidecarError otherwise."""
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
