"""Sidecar metadata JSON beside every .onnx and .engine (`model.onnx` -> `model.onnx.json`)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

SIDECAR_VERSION = 1


class SidecarError(ValueError):
    """A missing or mismatched sidecar; the message says how to rebuild."""


def sidecar_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".json")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(file)` on a temp file in the same folder, fsync, then rename over `path`:
    readers (and a kill mid-write) never leave or see half a file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_sidecar(model_path: str | Path, meta: dict) -> Path:
    meta = {"sidecar_version": SIDECAR_VERSION, **meta}
    out = sidecar_path(model_path)
    atomic_write_bytes(out, (json.dumps(meta, indent=1) + "\n").encode())
    return out


REQUIRED = ("model", "classes", "palette", "mean", "std", "input_shape", "head", "precision")


def read_sidecar(model_path: str | Path, rebuild_hint: str = "re-export it with `bisenet export`") -> dict:
    """Read and sanity-check the sidecar of `model_path`; one-line SidecarError otherwise."""
    side = sidecar_path(model_path)
    if not side.is_file():
        raise SidecarError(f"{model_path}: no sidecar {side.name} beside it (classes, palette, "
                           f"normalization live there); {rebuild_hint}")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise SidecarError(f"{side}: not valid JSON ({e}); {rebuild_hint}") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise SidecarError(f"{side}: missing {', '.join(missing)}; {rebuild_hint}")
    if len(meta["classes"]) != len(meta["palette"]):
        raise SidecarError(f"{side}: {len(meta['classes'])} classes but {len(meta['palette'])} palette colors; "
                           f"{rebuild_hint}")
    return meta
