"""What a TensorRT engine is tied to, recorded at build and checked at load.

A serialized engine runs only with the TensorRT version that built it, on the GPU model
(compute capability) it was built for, with the CUDA major version of that TensorRT; loaded
anywhere else it crashes or fails with a TensorRT message the user cannot act on. So
`bisenet build` records a fingerprint in the engine's sidecar, and the backend compares it
with this machine's before TensorRT sees the file:

    field                what a difference means
    tensorrt_version     refused (engines do not move between TensorRT versions)
    gpu_name             refused (nor between GPU models ...)
    compute_capability   refused (... or SM versions)
    cuda_version         refused when the major version differs (TensorRT's cu12 and cu13 builds)
    driver_version       recorded only: a newer driver runs old engines

A refusal is one line naming each difference and the exact `bisenet build ...` command that
rebuilds the engine here; with `--rebuild` the backend runs that build itself (the options are
in the sidecar's `build_options`) and loads the new engine.

The machine's side comes from a probe (`probe() -> Fingerprint`): `MachineProbe` asks
TensorRT, the CUDA driver (libcuda) and NVML; tests use a stand-in probe with fixed values.
"""
from __future__ import annotations

import ctypes
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from core.sidecar import SidecarError

FIELDS = ("tensorrt_version", "cuda_version", "driver_version", "gpu_name", "compute_capability")
REQUIRED = ("tensorrt_version", "gpu_name", "compute_capability")   # every engine sidecar ever written has these
LABELS = {"tensorrt_version": "TensorRT", "cuda_version": "CUDA", "driver_version": "driver",
          "gpu_name": "GPU", "compute_capability": "compute capability"}


@dataclass(frozen=True)
class Fingerprint:
    """None: not known (an older sidecar, or a machine that cannot tell); never compared."""

    tensorrt_version: str | None = None
    cuda_version: str | None = None
    driver_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None

    @classmethod
    def from_sidecar(cls, meta: dict) -> "Fingerprint":
        return cls(**{f: None if meta.get(f) is None else str(meta[f]) for f in FIELDS})

    def as_sidecar(self) -> dict:
        return asdict(self)


def _major(version: str) -> str:
    return version.split(".")[0]


def differences(built: Fingerprint, here: Fingerprint) -> list:
    """[(field, built value, this machine's value)] that make the engine unusable here."""
    out = []
    for field in FIELDS:
        a, b = getattr(built, field), getattr(here, field)
        if a is None or b is None or field == "driver_version":
            continue
        if field == "cuda_version" and _major(a) == _major(b):
            continue
        if a != b:
            out.append((field, a, b))
    return out


def mismatch_message(engine_path, diffs: list, rebuild_command: str) -> str:
    said = "; ".join(f"built with {LABELS[f]} {a}, this machine has {LABELS[f]} {b}" for f, a, b in diffs)
    return (f"{engine_path} does not fit this machine ({said}); engines do not move between TensorRT "
            f"versions, CUDA major versions or GPU models: rebuild it here: {rebuild_command} "
            "(or run with --rebuild)")


def rebuild_command(meta: dict, engine_path) -> str:
    return meta.get("build_command") or f"bisenet build --onnx model.onnx -o {engine_path}"


def check_fingerprint(meta: dict, engine_path, here: Fingerprint) -> None:
    """Refuse, in one line with the rebuild command, an engine this machine cannot run."""
    missing = [f for f in REQUIRED if f not in meta]
    if missing:
        raise SidecarError(f"{engine_path}: its sidecar lacks {', '.join(missing)} (not written by `bisenet "
                           f"build`); rebuild it here: {rebuild_command(meta, engine_path)}")
    diffs = differences(Fingerprint.from_sidecar(meta), here)
    if diffs:
        raise SidecarError(mismatch_message(engine_path, diffs, rebuild_command(meta, engine_path)))


def build_options(onnx_path, precision, calib_cache=None, workspace_mb=None, timing_cache=None, dla_core=None,
                  shapes=None, max_batch=None) -> dict:
    """The keyword arguments of engines.tensorrt_build.build_engine that made the engine (what a
    --rebuild runs again), JSON-ready."""
    return {"onnx_path": str(onnx_path), "precision": precision,
            "calib_cache": None if calib_cache is None else str(calib_cache), "workspace_mb": workspace_mb,
            "timing_cache": None if timing_cache is None else str(timing_cache), "dla_core": dla_core,
            "shapes": shapes, "max_batch": max_batch}


def fingerprint_record(here: Fingerprint, options: dict) -> dict:
    """What `bisenet build` adds to the engine sidecar."""
    return {**here.as_sidecar(), "build_options": options}


def rebuild_inputs(meta: dict, engine_path) -> dict:
    """build_engine's keyword arguments from the sidecar; the ONNX (and caches) as recorded, else
    beside the engine. One line when the sidecar or the ONNX is missing."""
    options = meta.get("build_options")
    if not isinstance(options, dict) or "onnx_path" not in options:
        raise SidecarError(f"{engine_path}: its sidecar records no build options to rebuild from; run "
                           f"{rebuild_command(meta, engine_path)}")
    options = dict(options)
    beside = Path(engine_path).parent
    for key in ("onnx_path", "calib_cache"):
        if options.get(key) and not Path(options[key]).is_file() and (beside / Path(options[key]).name).is_file():
            options[key] = str(beside / Path(options[key]).name)
    if not Path(options["onnx_path"]).is_file():
        raise SidecarError(f"{engine_path}: cannot rebuild it, its ONNX {options['onnx_path']} is gone; export it "
                           f"again (`bisenet export`), then run {rebuild_command(meta, engine_path)}")
    return options


def check_or_rebuild(meta: dict, engine_path, probe, rebuild: bool = False, build=None) -> dict:
    """The engine's sidecar when this machine can run it; with rebuild, a mismatched engine is
    rebuilt first by `build(engine_path=..., **options)` (the TensorRT engine hands in
    engines.tensorrt_build.build_engine: this module stays below the build) and the new sidecar
    returned. Without rebuild a mismatch is one SidecarError line."""
    here = probe()
    try:
        check_fingerprint(meta, engine_path, here)
        return meta
    except SidecarError as e:
        if not rebuild:
            raise
        print(f"[tensorrt] {e}: rebuilding", file=sys.stderr, flush=True)
    options = rebuild_inputs(meta, engine_path)
    new_meta = build(engine_path=engine_path, **options)
    check_fingerprint(new_meta, engine_path, here)
    return new_meta


# -- this machine ------------------------------------------------------------------------------

def cuda_driver_version() -> str | None:
    """The CUDA version the driver supports (cuDriverGetVersion), e.g. '12.4'; None without libcuda."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int()
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return None
    return f"{v.value // 1000}.{v.value % 1000 // 10}"


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version (e.g. '580.159.04') from NVML, else /proc (desktop); None on
    a Jetson without NVML (its L4T release says it there)."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() == 0:
            buf = ctypes.create_string_buffer(96)
            ok = nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(96)) == 0
            nvml.nvmlShutdown()
            if ok:
                return buf.value.decode()
    except (OSError, AttributeError):
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None


def tensorrt_cuda_version() -> str | None:
    """The CUDA version TensorRT was made for: the major of its pip wheel (tensorrt-cu12 ...),
    else the toolkit's /usr/local/cuda/version.json (JetPack), else None."""
    from importlib import metadata
    for major in ("13", "12", "11"):
        for dist in (f"tensorrt-cu{major}", f"tensorrt_cu{major}_libs"):
            try:
                metadata.version(dist)
                return major
            except metadata.PackageNotFoundError:
                continue
    try:
        return str(json.loads(Path("/usr/local/cuda/version.json").read_text())["cuda"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class MachineProbe:
    """This machine's fingerprint: TensorRT's version and CUDA version (else the driver's CUDA),
    the driver, device 0's name and compute capability."""

    def __init__(self, trt):
        self.trt = trt

    def __call__(self) -> Fingerprint:
        from engines.cuda_kernels import gpu_identity
        name, cc = gpu_identity()
        return Fingerprint(tensorrt_version=str(self.trt.__version__),
                           cuda_version=tensorrt_cuda_version() or cuda_driver_version(),
                           driver_version=nvidia_driver_version(), gpu_name=name, compute_capability=cc)
