"""Checkpoints: official mmseg `.pth` files and the project's own, loaded strictly and safely.

Both formats are `{'meta': ..., 'state_dict': {...}}` with mmseg key names
(`backbone.`, `decode_head.`, `auxiliary_head.0.` / `.1.`). Always `weights_only=True`.
Official checkpoints download by model name into a cache folder, verified against the
8-hex sha256 prefix in their file name, written atomically.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from core.model_config import ModelConfig
from core.files import atomic_write, file_mode
from core.errors import BisenetError


class CheckpointError(BisenetError, RuntimeError):
    """A checkpoint that cannot be used; one line that says what to do."""


def default_cache_dir() -> Path:
    root = os.environ.get("BISENET_CACHE") or Path.home() / ".cache" / "bisenet"
    return Path(root) / "checkpoints"


def save_checkpoint_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save through a temp file + fsync + rename: a kill mid-save leaves the previous
    file intact and never a half-written one under `path`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing --checkpoint PATH")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, non-tensor objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} safely (weights_only): {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict with a state_dict")
    return obj


def extract_state_dict(obj: dict) -> dict:
    sd = obj.get("state_dict", obj)
    # DDP-wrapped saves prefix every key with 'module.'.
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def check_state_dict(model: torch.nn.Module, sd: dict, cfg: ModelConfig, path) -> dict:
    """Strict match against `model`; auxiliary heads are dropped when the model has none."""
    expected = model.state_dict()
    if getattr(model, "auxiliary_head", None) is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shape = sorted(f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if missing or unexpected or shape:
        def few(items):
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
        parts = [f"{len(missing)} missing [{few(missing)}]" if missing else "",
                 f"{len(unexpected)} unexpected [{few(unexpected)}]" if unexpected else "",
                 f"{len(shape)} wrong shape [{few(shape)}]" if shape else ""]
        raise CheckpointError(f"checkpoint {path} does not fit config {cfg.source or cfg.name}: "
                              + "; ".join(p for p in parts if p)
                              + " - pass the model config this checkpoint was trained with")
    return sd


def load_weights(model: torch.nn.Module, path: str | Path, cfg: ModelConfig) -> dict:
    """Load an official or own checkpoint into `model` strictly; returns the checkpoint's meta."""
    obj = read_checkpoint(path)
    sd = check_state_dict(model, extract_state_dict(obj), cfg, path)
    model.load_state_dict(sd, strict=True)
    meta = obj.get("meta", {})
    return meta if isinstance(meta, dict) else {}


def load_checkpoint(path: str | Path, cfg: ModelConfig) -> dict:
    """Strictly checked state_dict of `path` for the architecture of `cfg` (aux heads included
    when the checkpoint has them)."""
    from training.model import BiSeNetV1

    obj = read_checkpoint(path)
    sd = extract_state_dict(obj)
    with_aux = any(k.startswith("auxiliary_head.") for k in sd)
    return check_state_dict(BiSeNetV1(cfg, with_aux=with_aux), sd, cfg, path)


# ---------------------------------------------------------------- download
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8})\.pth$")


def download_checkpoint(url: str, cache_dir: str | Path | None = None, timeout: float = 30.0,
                        progress: bool = True) -> Path:
    """Download `url` into the cache (reused when present and valid). The file name's 8-hex
    suffix must be the start of the file's sha256; a bad file is never left under the name."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    m = HASH_IN_NAME.search(name)
    cache_dir = Path(cache_dir or default_cache_dir())
    dest = cache_dir / name
    if dest.is_file():
        if not m or _sha256(dest).startswith(m.group(1)):
            return dest
        dest.unlink()  # corrupt leftover (e.g. copied in by hand): fetch again
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".part")
    os.fchmod(fd, file_mode())   # mkstemp makes 0600; a download gets the umask's mode like any file
    try:
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    if progress and total:
                        print(f"\rdownloading {name}: {done * 100 // total}%", end="", file=sys.stderr)
                if progress and total:
                    print(file=sys.stderr)
                if total and done != total:
                    raise CheckpointError(f"download of {url} stopped at {done} of {total} bytes; try again "
                                          "or pass --checkpoint PATH")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise CheckpointError(f"cannot download {url} ({reason}); offline? download it elsewhere and "
                                  "pass --checkpoint PATH") from None
        digest = h.hexdigest()
        if m and not digest.startswith(m.group(1)):
            raise CheckpointError(f"downloaded {name} has sha256 {digest[:8]}..., expected {m.group(1)}...: the file "
                                  "is corrupt; try again or pass --checkpoint PATH")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(cfg: ModelConfig, checkpoint: str | None) -> Path:
    """--checkpoint PATH as given, or the config's official checkpoint from the cache/web."""
    if checkpoint:
        return Path(checkpoint)
    if not cfg.checkpoint_url:
        raise CheckpointError(f"model {cfg.name} has no official checkpoint URL; pass --checkpoint PATH")
    return download_checkpoint(cfg.checkpoint_url)
