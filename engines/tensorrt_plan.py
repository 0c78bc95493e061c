"""`bisenet build`, planned: what the build will do and every refusal that needs no TensorRT.

Pure Python (tested without TensorRT in tests/engines/test_tensorrt.py): the typed request
(`BuildOptions`), the checks made before tensorrt is imported (`check_request`), the optimization
profile (--shapes, a dynamic batch's 1..N range), the builder flags and INT8 mode per TensorRT
version (`plan_build`), and the engine's sidecar with the command that rebuilds it.

A dynamic-batch ONNX (`bisenet export --dynamic-batch`) gets an optimization profile over the
batch: min 1, opt N, max N, N from --max-batch or the ONNX sidecar's max_batch (several cameras
fill batches up to N, so N is the shape to tune for); with dynamic H/W too, --shapes gives the
H/W part of min/opt/max. The engine sidecar records the range (`batch_range`, `max_batch`).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.errors import InputError, MissingFileError
from core.sidecar import read_sidecar
from engines.tensorrt_api import TensorRTApi, check_implicit_int8, qdq_route

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildOptions:
    """One build request: the flags of `bisenet build`, typed."""
    onnx_path: Path
    engine_path: Path
    precision: str = "fp16"
    calib_cache: str | Path | None = None     # implicit INT8 (8.6/10.x): needs int8_calibrator
    workspace_mb: int = 1024
    timing_cache: str | Path | None = None    # read, and updated after the build
    dla_core: int | None = None
    shapes: str | None = None                 # 'min/opt/max', as typed (recorded in the build command)
    max_batch: int | None = None              # dynamic-batch ONNX: None takes its sidecar's max_batch
    verbose: bool = False
    # (calib_cache, onnx_path, input_shape, onnx_meta) -> a TensorRT INT8 calibrator that reads the
    # cache: calibration.tensorrt_calibrator.cache_calibrator, handed in from above (engines/ does
    # not import calibration/).
    int8_calibrator: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "onnx_path", Path(self.onnx_path))
        object.__setattr__(self, "engine_path", Path(self.engine_path))


@dataclass(frozen=True)
class BuildRequest:
    """BuildOptions checked against the ONNX and its sidecar, before TensorRT is imported."""
    options: BuildOptions
    onnx_meta: dict
    profile_shapes: tuple | None    # parsed --shapes
    max_batch: int | None           # the top of a dynamic batch (plan_max_batch), None: fixed batch

    @property
    def onnx_precision(self) -> str:
        return self.onnx_meta.get("precision", "fp32")


def check_request(options: BuildOptions) -> BuildRequest:
    """What a user can get wrong, checked before TensorRT is needed (Q/DQ waits for the parse)."""
    if options.workspace_mb <= 0:
        raise InputError(f"--workspace must be a positive number of MiB, got {options.workspace_mb}")
    onnx_path = options.onnx_path
    if not onnx_path.is_file():
        raise MissingFileError(f"no ONNX model {onnx_path}: export one with `bisenet export`")
    onnx_meta = read_sidecar(onnx_path)
    profile_shapes = parse_shapes(options.shapes) if options.shapes else None
    max_batch = plan_max_batch(onnx_meta, options.max_batch, onnx_path.name)
    request = BuildRequest(options, onnx_meta, profile_shapes, max_batch)
    calib_cache = options.calib_cache
    if options.precision != "int8":
        plan_build(options.precision, False, calib_cache, options.dla_core, onnx_path.name, request.onnx_precision)
    elif calib_cache and not Path(calib_cache).is_file():
        raise MissingFileError(f"no calibration cache {calib_cache}: write one with `bisenet calibrate --onnx "
                                f"{onnx_path.name} --data ... --trt-cache {calib_cache}` (on a machine with "
                                "TensorRT and a GPU)")
    return request


def parse_shape(text: str) -> tuple:
    parts = text.lower().split("x")
    try:
        dims = tuple(int(v) for v in parts)
    except ValueError:
        dims = ()
    if len(dims) == 2:
        dims = (1, 3) + dims
    if len(dims) != 4 or min(dims) < 1:
        raise InputError(f"bad shape {text!r} in --shapes: use HxW or NxCxHxW with positive integers, e.g. 512x1024")
    return dims


def parse_shapes(text: str) -> tuple:
    """'min/opt/max' -> three NCHW tuples with min <= opt <= max in every dimension."""
    parts = text.split("/")
    if len(parts) != 3:
        raise InputError(f"--shapes takes min/opt/max, e.g. 256x512/512x1024/1024x2048; got {text!r}")
    lo, opt, hi = (parse_shape(p) for p in parts)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise InputError(f"--shapes must satisfy min <= opt <= max in every dimension; got {text!r}")
    if lo[:2] != hi[:2]:
        raise InputError(f"--shapes may vary H and W only (batch and channels fixed); got {text!r}")
    return lo, opt, hi


MAX_BATCH = 1024     # what the sidecar schema (core/validate.py) accepts


def plan_max_batch(onnx_meta: dict, max_batch=None, onnx_name="model.onnx") -> int | None:
    """The batch range's top for this ONNX: --max-batch, else its sidecar's max_batch; None for
    a fixed-batch ONNX. A ValueError (one line) for a request that cannot work."""
    if max_batch is not None and not 1 <= int(max_batch) <= MAX_BATCH:
        raise InputError(f"--max-batch must be from 1 to {MAX_BATCH}, got {max_batch}")
    if not onnx_meta.get("dynamic_batch"):
        if max_batch is not None:
            batch = (onnx_meta.get("input_shape") or [1])[0]
            raise InputError(f"--max-batch applies only to a dynamic-batch export (`bisenet export --dynamic-batch`); "
                             f"{onnx_name} takes a fixed batch of {batch}")
        return None
    top = max_batch if max_batch is not None else onnx_meta.get("max_batch")
    if not top:
        raise InputError(f"{onnx_name} takes any batch and its sidecar gives no max_batch: pass --max-batch N "
                         "(the most frames one inference gets, e.g. the number of cameras)")
    return int(top)


def resolve_input_shape(onnx_shape, shapes, max_batch=None):
    """The ONNX input shape (-1 or None for dynamic dims) + --shapes (H/W) + max_batch (the top
    of a dynamic batch, plan_max_batch) -> (opt shape, profile (min, opt, max) or None).
    A dynamic batch runs from 1 to max_batch, tuned for max_batch."""
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in onnx_shape]
    if dims and dims[0] < 0:
        if max_batch is None:
            raise InputError("the ONNX input has a dynamic batch: pass --max-batch N (or export with "
                             "`bisenet export --dynamic-batch --batch N`, which records it)")
        if shapes and any(s[0] != 1 for s in shapes):
            raise InputError("--shapes gives H and W only for a dynamic-batch ONNX (the batch runs 1..--max-batch): "
                             "write them as HxW")
        opt, profile = resolve_input_shape([1] + dims[1:], shapes)
        lo, opt, hi = profile or (opt, opt, opt)
        n = int(max_batch)
        profile = ((1,) + tuple(lo[1:]), (n,) + tuple(opt[1:]), (n,) + tuple(hi[1:]))
        return profile[1], profile
    if max_batch is not None:
        raise InputError(f"the ONNX input batch is fixed at {dims[0]}: --max-batch applies only to a dynamic-batch "
                         "export (bisenet export --dynamic-batch)")
    dynamic = any(d < 0 for d in dims)
    if not dynamic:
        if shapes and any(s != tuple(dims) for s in shapes):
            raise InputError(f"the ONNX input is fixed at {'x'.join(map(str, dims))}; --shapes applies only to a "
                             "dynamic export (bisenet export --dynamic)")
        return tuple(dims), None
    if not shapes:
        raise InputError(f"the ONNX input is dynamic ({'x'.join('?' if d < 0 else str(d) for d in dims)}): "
                         "pass --shapes min/opt/max, e.g. 256x512/512x1024/1024x2048")
    for shape in shapes:
        if any(d > 0 and d != s for d, s in zip(dims, shape)):
            raise InputError(f"--shapes {'x'.join(map(str, shape))} contradicts the ONNX input "
                             f"{'x'.join('?' if d < 0 else str(d) for d in dims)}")
    return shapes[1], shapes


@dataclass
class BuildPlan:
    precision: str
    flags: list = field(default_factory=list)   # trt.BuilderFlag names
    int8_mode: str | None = None                # 'explicit' (QDQ) or 'implicit' (calibration cache)
    dla_core: int | None = None
    notes: list = field(default_factory=list)


def plan_build(precision: str, has_qdq: bool, calib_cache=None, dla_core=None, onnx_name="model.onnx",
               onnx_precision="fp32", api: TensorRTApi | None = None) -> BuildPlan:
    """Builder flags and INT8 mode for a request; a ValueError (one line) for one that cannot work.
    api None: the checks that hold on every TensorRT version (before tensorrt is imported)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    plan = BuildPlan(precision, dla_core=dla_core)
    strongly_typed = api is not None and not api.precision_flags
    if calib_cache and precision != "int8":
        raise InputError(f"--calib-cache is for --precision int8 (got {precision})")
    if has_qdq and precision != "int8":
        raise InputError(f"{onnx_name} has Q/DQ nodes (an INT8 model): build it with --precision int8")
    if onnx_precision == "fp16" and precision != "fp16":
        raise InputError(f"{onnx_name} is an fp16 export: build it with --precision fp16 (or export fp32 for "
                         f"--precision {precision})")
    if precision == "fp16" and strongly_typed and onnx_precision != "fp16":
        raise InputError(f"TensorRT {api.version} builds each layer in the ONNX's own types (no FP16 flag) and "
                         f"{onnx_name} is {onnx_precision}: export an fp16 model (`bisenet export ... --precision "
                         "fp16`) and build that")
    if precision == "fp16" and not strongly_typed:
        plan.flags.append("FP16")
    if precision == "int8":
        if not strongly_typed:
            plan.flags += ["INT8", "FP16"]      # FP16 for the layers INT8 cannot run
        if has_qdq:
            plan.int8_mode = "explicit"
            if calib_cache:
                plan.notes.append(f"{onnx_name} is a QDQ model with its own scales: --calib-cache ignored")
            if strongly_typed:
                plan.notes.append(f"TensorRT {api.version}: layers outside the Q/DQ pairs run in the ONNX's "
                                  f"{onnx_precision}")
        elif calib_cache:
            if api is not None:
                check_implicit_int8(api, onnx_name)
            if not Path(calib_cache).is_file():
                raise InputError(f"no calibration cache {calib_cache}: write one with `bisenet calibrate --onnx "
                                 f"{onnx_name} --data ... --trt-cache {calib_cache}` (on a machine with TensorRT "
                                 "and a GPU), or build the QDQ model instead")
            plan.int8_mode = "implicit"
        elif strongly_typed:
            raise InputError(f"INT8 needs scales and TensorRT {api.version} takes them from Q/DQ nodes only: "
                             f"{qdq_route(onnx_name)}")
        else:
            raise InputError(f"INT8 needs scales: build the QDQ model (`bisenet calibrate --onnx {onnx_name} "
                             "--target tensorrt`) or pass --calib-cache FILE for this plain ONNX")
    if dla_core is not None:
        if dla_core < 0:
            raise InputError(f"--dla-core must be 0 or more, got {dla_core}")
        if precision == "fp32":
            raise InputError("the DLA runs fp16 or int8 only: pass --precision fp16 or int8 with --dla-core")
        plan.flags.append("GPU_FALLBACK")       # layers the DLA lacks run on the GPU
    return plan


def build_command(onnx_path, engine_path, precision, calib_cache=None, workspace_mb=None,
                  timing_cache=None, dla_core=None, shapes_text=None, max_batch=None) -> str:
    cmd = ["bisenet", "build", "--onnx", str(onnx_path), "--precision", precision]
    if calib_cache:
        cmd += ["--calib-cache", str(calib_cache)]
    if workspace_mb:
        cmd += ["--workspace", str(workspace_mb)]
    if timing_cache:
        cmd += ["--timing-cache", str(timing_cache)]
    if dla_core is not None:
        cmd += ["--dla-core", str(dla_core)]
    if shapes_text:
        cmd += ["--shapes", shapes_text]
    if max_batch is not None:
        cmd += ["--max-batch", str(max_batch)]
    cmd += ["-o", str(engine_path)]
    return shlex.join(cmd)


def engine_sidecar(onnx_meta: dict, *, onnx_path, onnx_sha256: str, plan: BuildPlan, input_shape, profile,
                   tensorrt_version: str, gpu_name: str, compute_capability: str, command: str,
                   max_batch: int | None = None) -> dict:
    """The engine's sidecar: the ONNX sidecar's model facts + what the engine is tied to.
    max_batch (a dynamic-batch engine): its batch range 1..max_batch; input_shape is then the
    profile's opt shape, batch max_batch (what the backend allocates for)."""
    meta = {k: v for k, v in onnx_meta.items() if k != "sidecar_version"}
    meta.update({
        "precision": plan.precision,
        "input_shape": [int(d) for d in input_shape],
        # dynamic: H/W (as `bisenet export --dynamic`); a profile over the batch alone is not
        "dynamic": profile is not None and (max_batch is None or bool(onnx_meta.get("dynamic"))),
        "shapes": [list(s) for s in profile] if profile else None,
        "dynamic_batch": max_batch is not None,
        "max_batch": int(max_batch) if max_batch is not None else None,
        "batch_range": [1, int(max_batch)] if max_batch is not None else None,
        "int8_mode": plan.int8_mode,
        "dla_core": plan.dla_core,
        "onnx": Path(onnx_path).name,
        "onnx_sha256": onnx_sha256,
        "onnx_precision": onnx_meta.get("precision"),
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": gpu_name,
        "compute_capability": str(compute_capability),
        "build_command": command,
    })
    return meta
