"""`bisenet build`: exported ONNX -> TensorRT engine + model.engine.json.

    bisenet build --onnx model.onnx --precision fp16 -o model.fp16.engine
    bisenet build --onnx model.int8.onnx --precision int8 -o model.int8.engine        # QDQ: explicit INT8
    bisenet build --onnx model.onnx --precision int8 --calib-cache model.calib -o m.engine   # implicit INT8
    bisenet build --onnx model.onnx --precision fp16 --dla-core 0 -o model.dla.engine   # Jetson DLA
    bisenet build --onnx model.b4.onnx --max-batch 4 -o model.b4.engine   # --dynamic-batch export: 1..4 frames

Runs on TensorRT 8.6 (JetPack 5), 10.x and 11.x; `tensorrt_api(version)` is the one place
they differ: 8.6 networks need the EXPLICIT_BATCH flag and have no IProgressMonitor; 11.x
builds strongly typed networks only (no FP16/INT8 builder flags, no calibrators): each layer
runs in the type the ONNX gives it, so fp16 comes from an fp16 export
(`bisenet export --precision fp16`) and int8 from the QDQ model.
On 8.6/10.x INT8 builds also enable FP16, so layers INT8 cannot run take FP16 rather than
FP32. A QDQ ONNX (from `bisenet calibrate --target tensorrt`) carries its own scales:
explicit quantization, no calibrator. A plain ONNX needs a calibration cache from the
entropy calibrator (calibration/tensorrt_calibrator.py): implicit quantization, 8.6/10.x only.

Engines only run on the TensorRT version and GPU model that built them; the sidecar records
both (and the ONNX sha256) so the TensorRT backend can refuse a mismatch with the command
that rebuilds it (`build_command` in the sidecar).

A dynamic-batch ONNX (`bisenet export --dynamic-batch`) gets an optimization profile over the
batch: min 1, opt N, max N, N from --max-batch or the ONNX sidecar's max_batch (several cameras
fill batches up to N, so N is the shape to tune for); with dynamic H/W too, --shapes gives the
H/W part of min/opt/max. The engine sidecar records the range (`batch_range`, `max_batch`).
"""
from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.files import atomic_write_bytes, file_sha256
from core.sidecar import read_sidecar, write_sidecar

HELP = "build a TensorRT engine (fp32, fp16 or int8, GPU or Jetson DLA) from an exported ONNX model"
EXAMPLE = "bisenet build --onnx artifacts/model.onnx --precision fp16 -o artifacts/model.fp16.engine"
PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_TENSORRT = "TensorRT 8.6, 10.x or 11.x"
TENSORRT_HINT = ("TensorRT is not installed: pip install 'tensorrt>=10,<12' (desktop GPUs) or, "
                 "on Jetson, use JetPack's python3-libnvinfer with the system python3")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError(TENSORRT_HINT) from None
    return trt


@dataclass(frozen=True)
class TensorRTApi:
    """What differs between the TensorRT versions this code supports."""
    version: str
    major: int
    network_flag: str | None    # NetworkDefinitionCreationFlag to set: 8.6 EXPLICIT_BATCH
    precision_flags: bool       # BuilderFlag.FP16 / INT8 exist (8.6, 10.x); 11.x is strongly typed
    implicit_int8: bool         # IInt8EntropyCalibrator2 + config.int8_calibrator (8.6, 10.x)
    progress_monitor: bool      # IProgressMonitor (10.x, 11.x)


def tensorrt_api(version: str) -> TensorRTApi:
    """The one version dispatch. 11.x needs no network flag: strong typing is always on there
    (its STRONGLY_TYPED flag is deprecated and ignored). 10.x ignores EXPLICIT_BATCH, 11.x lacks it."""
    try:
        major, minor = (int(v) for v in str(version).split(".")[:2])
    except ValueError:
        major, minor = -1, -1
    if (major, minor) == (8, 6):
        return TensorRTApi(str(version), 8, "EXPLICIT_BATCH", True, True, False)
    if major == 10:
        return TensorRTApi(str(version), 10, None, True, True, True)
    if major == 11:
        return TensorRTApi(str(version), 11, None, False, False, True)
    raise RuntimeError(f"TensorRT {version} is not supported: this project runs on {SUPPORTED_TENSORRT} "
                       "(pip install 'tensorrt>=10,<12', or JetPack 5/6 on Jetson)")


def network_flags(trt, api: TensorRTApi) -> int:
    return 1 << int(getattr(trt.NetworkDefinitionCreationFlag, api.network_flag)) if api.network_flag else 0


_logger = None


def tensorrt_logger(trt, verbose: bool = False):
    """The process's one TensorRT logger, shared by builders, runtimes and parsers (TensorRT
    warns when a second logger is handed to it)."""
    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    _logger.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return _logger


def add_arguments(p):
    p.add_argument("--onnx", required=True, help="exported model (with its model.onnx.json sidecar)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="fp16 (default), fp32, or int8 (a QDQ ONNX, or a plain ONNX with --calib-cache). "
                   "TensorRT 11 takes the precision from the ONNX: fp16 needs `bisenet export --precision fp16`, "
                   "int8 the QDQ model")
    p.add_argument("--calib-cache", help="TensorRT INT8 calibration cache for a plain ONNX (implicit INT8; "
                   "TensorRT 8.6 and 10.x only)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB",
                   help="builder workspace memory limit in MiB (default 1024; Jetson Nano/NX: 256-512)")
    p.add_argument("--timing-cache", help="read and update this timing cache: rebuilds take seconds, not minutes")
    p.add_argument("--dla-core", type=int, help="build for this Jetson DLA core (layers DLA lacks fall back to the GPU)")
    p.add_argument("--shapes", help="for an ONNX with dynamic H/W: min/opt/max input shapes, each HxW or NxCxHxW, "
                   "e.g. 256x512/512x1024/1024x2048")
    p.add_argument("--max-batch", type=int, metavar="N",
                   help="for a dynamic-batch ONNX (bisenet export --dynamic-batch): the engine takes 1 to N frames "
                   "per inference, tuned for N (default: the ONNX sidecar's max_batch)")
    p.add_argument("-o", "--output", required=True, help="the engine file to write (its sidecar goes beside it)")


# -- pure planning: what the build will do, checked before TensorRT is imported -------------------

def parse_shape(text: str) -> tuple:
    parts = text.lower().split("x")
    try:
        dims = tuple(int(v) for v in parts)
    except ValueError:
        dims = ()
    if len(dims) == 2:
        dims = (1, 3) + dims
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"bad shape {text!r} in --shapes: use HxW or NxCxHxW with positive integers, e.g. 512x1024")
    return dims


def parse_shapes(text: str) -> tuple:
    """'min/opt/max' -> three NCHW tuples with min <= opt <= max in every dimension."""
    parts = text.split("/")
    if len(parts) != 3:
        raise ValueError(f"--shapes takes min/opt/max, e.g. 256x512/512x1024/1024x2048; got {text!r}")
    lo, opt, hi = (parse_shape(p) for p in parts)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise ValueError(f"--shapes must satisfy min <= opt <= max in every dimension; got {text!r}")
    if lo[:2] != hi[:2]:
        raise ValueError(f"--shapes may vary H and W only (batch and channels fixed); got {text!r}")
    return lo, opt, hi


MAX_BATCH = 1024     # what the sidecar schema (app/validate.py) accepts


def plan_max_batch(onnx_meta: dict, max_batch=None, onnx_name="model.onnx") -> int | None:
    """The batch range's top for this ONNX: --max-batch, else its sidecar's max_batch; None for
    a fixed-batch ONNX. A ValueError (one line) for a request that cannot work."""
    if max_batch is not None and not 1 <= int(max_batch) <= MAX_BATCH:
        raise ValueError(f"--max-batch must be from 1 to {MAX_BATCH}, got {max_batch}")
    if not onnx_meta.get("dynamic_batch"):
        if max_batch is not None:
            batch = (onnx_meta.get("input_shape") or [1])[0]
            raise ValueError(f"--max-batch applies only to a dynamic-batch export (`bisenet export --dynamic-batch`); "
                             f"{onnx_name} takes a fixed batch of {batch}")
        return None
    top = max_batch if max_batch is not None else onnx_meta.get("max_batch")
    if not top:
        raise ValueError(f"{onnx_name} takes any batch and its sidecar gives no max_batch: pass --max-batch N "
                         "(the most frames one inference gets, e.g. the number of cameras)")
    return int(top)


def resolve_input_shape(onnx_shape, shapes, max_batch=None):
    """The ONNX input shape (-1 or None for dynamic dims) + --shapes (H/W) + max_batch (the top
    of a dynamic batch, plan_max_batch) -> (opt shape, profile (min, opt, max) or None).
    A dynamic batch runs from 1 to max_batch, tuned for max_batch."""
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in onnx_shape]
    if dims and dims[0] < 0:
        if max_batch is None:
            raise ValueError("the ONNX input has a dynamic batch: pass --max-batch N (or export with "
                             "`bisenet export --dynamic-batch --batch N`, which records it)")
        if shapes and any(s[0] != 1 for s in shapes):
            raise ValueError("--shapes gives H and W only for a dynamic-batch ONNX (the batch runs 1..--max-batch): "
                             "write them as HxW")
        opt, profile = resolve_input_shape([1] + dims[1:], shapes)
        lo, opt, hi = profile or (opt, opt, opt)
        n = int(max_batch)
        profile = ((1,) + tuple(lo[1:]), (n,) + tuple(opt[1:]), (n,) + tuple(hi[1:]))
        return profile[1], profile
    if max_batch is not None:
        raise ValueError(f"the ONNX input batch is fixed at {dims[0]}: --max-batch applies only to a dynamic-batch "
                         "export (bisenet export --dynamic-batch)")
    dynamic = any(d < 0 for d in dims)
    if not dynamic:
        if shapes and any(s != tuple(dims) for s in shapes):
            raise ValueError(f"the ONNX input is fixed at {'x'.join(map(str, dims))}; --shapes applies only to a "
                             "dynamic export (bisenet export --dynamic)")
        return tuple(dims), None
    if not shapes:
        raise ValueError(f"the ONNX input is dynamic ({'x'.join('?' if d < 0 else str(d) for d in dims)}): "
                         "pass --shapes min/opt/max, e.g. 256x512/512x1024/1024x2048")
    for shape in shapes:
        if any(d > 0 and d != s for d, s in zip(dims, shape)):
            raise ValueError(f"--shapes {'x'.join(map(str, shape))} contradicts the ONNX input "
                             f"{'x'.join('?' if d < 0 else str(d) for d in dims)}")
    return shapes[1], shapes


@dataclass
class BuildPlan:
    precision: str
    flags: list = field(default_factory=list)   # trt.BuilderFlag names
    int8_mode: str | None = None                # 'explicit' (QDQ) or 'implicit' (calibration cache)
    dla_core: int | None = None
    notes: list = field(default_factory=list)


def qdq_route(onnx_name: str) -> str:
    return (f"`bisenet calibrate --onnx {onnx_name} --data ... --target tensorrt`, then build the QDQ model it "
            "writes with --precision int8")


def check_implicit_int8(api: TensorRTApi, onnx_name="model.onnx") -> None:
    """Calibration caches (implicit INT8) exist on 8.6/10.x only: one line naming the QDQ route on 11.x."""
    if not api.implicit_int8:
        raise ValueError(f"TensorRT {api.version} has no implicit INT8 (calibration caches, --calib-cache / "
                         f"--trt-cache): quantize with Q/DQ nodes instead: {qdq_route(onnx_name)}")


def plan_build(precision: str, has_qdq: bool, calib_cache=None, dla_core=None, onnx_name="model.onnx",
               onnx_precision="fp32", api: TensorRTApi | None = None) -> BuildPlan:
    """Builder flags and INT8 mode for a request; a ValueError (one line) for one that cannot work.
    api None: the checks that hold on every TensorRT version (before tensorrt is imported)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    plan = BuildPlan(precision, dla_core=dla_core)
    strongly_typed = api is not None and not api.precision_flags
    if calib_cache and precision != "int8":
        raise ValueError(f"--calib-cache is for --precision int8 (got {precision})")
    if has_qdq and precision != "int8":
        raise ValueError(f"{onnx_name} has Q/DQ nodes (an INT8 model): build it with --precision int8")
    if onnx_precision == "fp16" and precision != "fp16":
        raise ValueError(f"{onnx_name} is an fp16 export: build it with --precision fp16 (or export fp32 for "
                         f"--precision {precision})")
    if precision == "fp16" and strongly_typed and onnx_precision != "fp16":
        raise ValueError(f"TensorRT {api.version} builds each layer in the ONNX's own types (no FP16 flag) and "
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
                raise ValueError(f"no calibration cache {calib_cache}: write one with `bisenet calibrate --onnx "
                                 f"{onnx_name} --data ... --trt-cache {calib_cache}` (on a machine with TensorRT "
                                 "and a GPU), or build the QDQ model instead")
            plan.int8_mode = "implicit"
        elif strongly_typed:
            raise ValueError(f"INT8 needs scales and TensorRT {api.version} takes them from Q/DQ nodes only: "
                             f"{qdq_route(onnx_name)}")
        else:
            raise ValueError(f"INT8 needs scales: build the QDQ model (`bisenet calibrate --onnx {onnx_name} "
                             "--target tensorrt`) or pass --calib-cache FILE for this plain ONNX")
    if dla_core is not None:
        if dla_core < 0:
            raise ValueError(f"--dla-core must be 0 or more, got {dla_core}")
        if precision == "fp32":
            raise ValueError("the DLA runs fp16 or int8 only: pass --precision fp16 or int8 with --dla-core")
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


# -- the build (TensorRT from here on) -----------------------------------------------------------

def network_has_qdq(trt, network) -> bool:
    kinds = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def make_progress_monitor(trt):
    """An IProgressMonitor (TensorRT >= 10) that prints each builder phase and its steps."""

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()       # TensorRT calls back from several threads
            self.phases = {}                   # name -> (depth, steps)
            self.tty = sys.stderr.isatty()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                depth = self.phases[parent_phase][0] + 1 if parent_phase in self.phases else 0
                self.phases[phase_name] = (depth, num_steps)
                if depth <= 1:
                    print(f"{'  ' * depth}[build] {phase_name} ({num_steps} steps)", file=sys.stderr, flush=True)

        def step_complete(self, phase_name, step):
            with self.lock:
                depth, steps = self.phases.get(phase_name, (0, 0))
                if self.tty and depth <= 1 and steps > 1:
                    print(f"\r{'  ' * depth}  {phase_name}: {step + 1}/{steps}", end="", file=sys.stderr, flush=True)
            return True                        # False would cancel the build

        def phase_finish(self, phase_name):
            with self.lock:
                depth, steps = self.phases.pop(phase_name, (0, 0))
                if self.tty and depth <= 1 and steps > 1:
                    print(file=sys.stderr, flush=True)

    return BuildProgress()


def build_engine(onnx_path, engine_path, precision="fp16", calib_cache=None, workspace_mb=1024,
                 timing_cache=None, dla_core=None, shapes=None, verbose=False, max_batch=None) -> dict:
    """Build and write `engine_path` + its sidecar; returns the sidecar dict. shapes: 'min/opt/max' text;
    max_batch: the top of a dynamic-batch ONNX's batch range (default: its sidecar's max_batch)."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model {onnx_path}: export one with `bisenet export`")
    onnx_meta = read_sidecar(onnx_path)
    onnx_precision = onnx_meta.get("precision", "fp32")
    profile_shapes = parse_shapes(shapes) if shapes else None
    max_batch = plan_max_batch(onnx_meta, max_batch, onnx_path.name)
    # What a user can get wrong is checked before TensorRT is needed (Q/DQ waits for the parse).
    if precision != "int8":
        plan_build(precision, False, calib_cache, dla_core, onnx_path.name, onnx_precision)
    elif calib_cache and not Path(calib_cache).is_file():
        raise FileNotFoundError(f"no calibration cache {calib_cache}: write one with `bisenet calibrate --onnx "
                                f"{onnx_path.name} --data ... --trt-cache {calib_cache}` (on a machine with "
                                "TensorRT and a GPU)")
    trt = import_tensorrt()
    api = tensorrt_api(trt.__version__)
    from engines.cuda_kernels import gpu_identity
    gpu_name, cc = gpu_identity()
    # (An implicit INT8 build only reads its calibration cache: no batches, no pycuda.)
    return _build(trt, api, onnx_path, engine_path, onnx_meta, precision, calib_cache, workspace_mb,
                  timing_cache, dla_core, shapes, profile_shapes, verbose, gpu_name, cc, max_batch)


def _attach_timing_cache(config, path) -> object | None:
    """Load `path` into the builder config; say in one line what happened. Returns the cache
    to write back after the build (None: TensorRT took no cache)."""
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        print(f"[build] timing cache {path}: {'loaded ' + str(len(data)) + ' bytes' if data else 'new'}",
              file=sys.stderr)
        return cache
    # A cache from another GPU model or TensorRT version (or a damaged file) is refused.
    cache = config.create_timing_cache(b"")
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        print(f"[build] timing cache {path} does not fit this GPU/TensorRT (or is damaged): starting a new one, "
              "written over it after the build", file=sys.stderr)
        return cache
    print(f"[build] TensorRT took no timing cache: building without one ({path} left as it is)", file=sys.stderr)
    return None


def _build(trt, api, onnx_path, engine_path, onnx_meta, precision, calib_cache, workspace_mb, timing_cache,
           dla_core, shapes, profile_shapes, verbose, gpu_name, cc, max_batch) -> dict:
    logger = tensorrt_logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, api))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise RuntimeError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {first} "
                           f"({parser.num_errors} errors; re-export with a lower --opset?)")
    plan = plan_build(precision, network_has_qdq(trt, network), calib_cache, dla_core, onnx_path.name,
                      onnx_meta.get("precision", "fp32"), api)
    for note in plan.notes:
        print(f"[build] note: {note}", file=sys.stderr)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    inp = network.get_input(0)
    input_shape, profile_dims = resolve_input_shape(tuple(inp.shape), profile_shapes, max_batch)
    if profile_dims:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *profile_dims)
        config.add_optimization_profile(profile)
    calibrator = None
    if plan.int8_mode == "implicit":
        try:
            from calibration.image_set import preprocessing_record
            from calibration.tensorrt_calibrator import EntropyCalibrator
        except ImportError as e:
            raise RuntimeError(f"implicit INT8 needs calibration/tensorrt_calibrator.py ({e})") from None
        # Reads the cache (no images needed) and refuses one made for another ONNX, input
        # shape, preprocessing or TensorRT version.
        calibrator = EntropyCalibrator(
            str(calib_cache), onnx_path=onnx_path, input_shape=input_shape,
            preprocessing=preprocessing_record(input_shape[2:], onnx_meta["mean"], onnx_meta["std"]))
        config.int8_calibrator = calibrator
        if profile_dims:
            config.set_calibration_profile(profile)

    cache = _attach_timing_cache(config, timing_cache) if timing_cache else None
    monitor = None
    if api.progress_monitor:
        monitor = make_progress_monitor(trt)   # must outlive the build
        config.progress_monitor = monitor
    else:
        print(f"[build] TensorRT {trt.__version__} reports no progress; a build takes minutes", file=sys.stderr)

    what = f"{precision}{' (' + plan.int8_mode + ' INT8)' if plan.int8_mode else ''}"
    where = f"DLA core {plan.dla_core} + GPU fallback" if plan.dla_core is not None else gpu_name
    batch = f" (batch 1..{max_batch})" if max_batch is not None else ""
    print(f"[build] {onnx_path.name} -> {engine_path.name}: {what}, input {'x'.join(map(str, input_shape))}{batch}, "
          f"TensorRT {trt.__version__} on {where}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {engine_path.name} (its log above says why); "
                           "a larger --workspace or --precision fp16 may help")
    command = build_command(onnx_path, engine_path, precision, calib_cache if plan.int8_mode == "implicit" else None,
                            workspace_mb, timing_cache, plan.dla_core, shapes, max_batch)
    meta = engine_sidecar(onnx_meta, onnx_path=onnx_path, onnx_sha256=file_sha256(onnx_path), plan=plan,
                          input_shape=input_shape, profile=profile_dims, tensorrt_version=trt.__version__,
                          gpu_name=gpu_name, compute_capability=cc, command=command, max_batch=max_batch)
    # [w7 issue 22] + CUDA and driver versions, and the options a `--rebuild` reruns (engines/fingerprint.py)
    from engines.fingerprint import MachineProbe, build_options, fingerprint_record
    meta.update(fingerprint_record(MachineProbe(trt)(), build_options(
        onnx_path, precision, calib_cache if plan.int8_mode == "implicit" else None, workspace_mb, timing_cache,
        plan.dla_core, shapes, max_batch)))
    # Engine and sidecar first, together: the backend refuses an engine without its sidecar.
    atomic_write_bytes(engine_path, bytes(serialized))
    write_sidecar(engine_path, meta)
    if cache is not None:
        updated = config.get_timing_cache()
        if updated is None:
            print(f"[build] TensorRT returned no timing cache: {timing_cache} not updated", file=sys.stderr)
        else:
            atomic_write_bytes(timing_cache, bytes(updated.serialize()))
    del monitor, calibrator
    print(f"[build] wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return meta


def run(args) -> int:
    if args.workspace <= 0:
        raise ValueError(f"--workspace must be a positive number of MiB, got {args.workspace}")
    build_engine(args.onnx, args.output, precision=args.precision, calib_cache=args.calib_cache,
                 workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
                 shapes=args.shapes, max_batch=args.max_batch)
    return 0
