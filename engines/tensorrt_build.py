"""`bisenet build`: exported ONNX -> TensorRT engine + model.engine.json.

    bisenet build --onnx model.onnx --precision fp16 -o model.fp16.engine
    bisenet build --onnx model.int8.onnx --precision int8 -o model.int8.engine        # QDQ: explicit INT8
    bisenet build --onnx model.onnx --precision int8 --calib-cache model.calib -o m.engine   # implicit INT8
    bisenet build --onnx model.onnx --precision fp16 --dla-core 0 -o model.dla.engine   # Jetson DLA

Written against TensorRT 10.x with the 8.6 (JetPack 5) differences handled: 8.6 networks need
the EXPLICIT_BATCH flag (10.x has only explicit batch) and have no IProgressMonitor.
INT8 builds also enable FP16, so layers INT8 cannot run take FP16 rather than FP32. A QDQ
ONNX (from `bisenet calibrate --target tensorrt`) carries its own scales: explicit
quantization, no calibrator. A plain ONNX needs a calibration cache from the entropy
calibrator (calibration/tensorrt_calibrator.py): implicit quantization.

Engines only run on the TensorRT version and GPU model that built them; the sidecar records
both (and the ONNX sha256) so the TensorRT backend can refuse a mismatch with the command
that rebuilds it (`build_command` in the sidecar).
"""
from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engines.sidecar import atomic_write_bytes, file_sha256, read_sidecar, write_sidecar

HELP = "build a TensorRT engine (fp32, fp16 or int8, GPU or Jetson DLA) from an exported ONNX model"
EXAMPLE = "bisenet build --onnx artifacts/model.onnx --precision fp16 -o artifacts/model.fp16.engine"
PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_HINT = ("TensorRT is not installed: pip install tensorrt (desktop GPUs; CUDA 12 wheels) or, "
                 "on Jetson, use JetPack's python3-libnvinfer with the system python3")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError(TENSORRT_HINT) from None
    return trt


def trt_major(version: str) -> int:
    return int(str(version).split(".")[0])


def add_arguments(p):
    p.add_argument("--onnx", required=True, help="exported model (with its model.onnx.json sidecar)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="fp16 (default), fp32, or int8 (a QDQ ONNX, or a plain ONNX with --calib-cache)")
    p.add_argument("--calib-cache", help="TensorRT INT8 calibration cache for a plain ONNX (implicit INT8)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB",
                   help="builder workspace memory limit in MiB (default 1024; Jetson Nano/NX: 256-512)")
    p.add_argument("--timing-cache", help="read and update this timing cache: rebuilds take seconds, not minutes")
    p.add_argument("--dla-core", type=int, help="build for this Jetson DLA core (layers DLA lacks fall back to the GPU)")
    p.add_argument("--shapes", help="for an ONNX with dynamic H/W: min/opt/max input shapes, each HxW or NxCxHxW, "
                   "e.g. 256x512/512x1024/1024x2048")
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


def resolve_input_shape(onnx_shape, shapes):
    """The ONNX input shape (-1 or None for dynamic dims) + --shapes -> (opt shape, profile or None)."""
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in onnx_shape]
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


def plan_build(precision: str, has_qdq: bool, calib_cache=None, dla_core=None, onnx_name="model.onnx") -> BuildPlan:
    """Builder flags and INT8 mode for a request; a ValueError (one line) for one that cannot work."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    plan = BuildPlan(precision, dla_core=dla_core)
    if calib_cache and precision != "int8":
        raise ValueError(f"--calib-cache is for --precision int8 (got {precision})")
    if has_qdq and precision != "int8":
        raise ValueError(f"{onnx_name} has Q/DQ nodes (an INT8 model): build it with --precision int8")
    if precision == "fp16":
        plan.flags.append("FP16")
    if precision == "int8":
        plan.flags += ["INT8", "FP16"]          # FP16 for the layers INT8 cannot run
        if has_qdq:
            plan.int8_mode = "explicit"
            if calib_cache:
                plan.notes.append(f"{onnx_name} is a QDQ model with its own scales: --calib-cache ignored")
        elif calib_cache:
            if not Path(calib_cache).is_file():
                raise ValueError(f"no calibration cache {calib_cache}: write one with `bisenet calibrate --onnx "
                                 f"{onnx_name} --data ... --trt-cache {calib_cache}` (on a machine with TensorRT "
                                 "and a GPU), or build the QDQ model instead")
            plan.int8_mode = "implicit"
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
                  timing_cache=None, dla_core=None, shapes_text=None) -> str:
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
    cmd += ["-o", str(engine_path)]
    return shlex.join(cmd)


def engine_sidecar(onnx_meta: dict, *, onnx_path, onnx_sha256: str, plan: BuildPlan, input_shape, profile,
                   tensorrt_version: str, gpu_name: str, compute_capability: str, command: str) -> dict:
    """The engine's sidecar: the ONNX sidecar's model facts + what the engine is tied to."""
    meta = {k: v for k, v in onnx_meta.items() if k != "sidecar_version"}
    meta.update({
        "precision": plan.precision,
        "input_shape": [int(d) for d in input_shape],
        "dynamic": profile is not None,
        "shapes": [list(s) for s in profile] if profile else None,
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
                 timing_cache=None, dla_core=None, shapes=None, verbose=False) -> dict:
    """Build and write `engine_path` + its sidecar; returns the sidecar dict. shapes: 'min/opt/max' text."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model {onnx_path}: export one with `bisenet export`")
    onnx_meta = read_sidecar(onnx_path)
    profile_shapes = parse_shapes(shapes) if shapes else None
    # What a user can get wrong is checked before TensorRT is needed (Q/DQ waits for the parse).
    if precision != "int8":
        plan_build(precision, False, calib_cache, dla_core, onnx_path.name)
    elif calib_cache and not Path(calib_cache).is_file():
        raise FileNotFoundError(f"no calibration cache {calib_cache}: write one with `bisenet calibrate --onnx "
                                f"{onnx_path.name} --data ... --trt-cache {calib_cache}` (on a machine with "
                                "TensorRT and a GPU)")
    trt = import_tensorrt()
    from engines.cuda_kernels import gpu_identity
    gpu_name, cc = gpu_identity()
    major = trt_major(trt.__version__)

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise RuntimeError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {first} "
                           f"({parser.num_errors} errors; re-export with a lower --opset?)")
    plan = plan_build(precision, network_has_qdq(trt, network), calib_cache, dla_core, onnx_path.name)
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
    input_shape, profile_dims = resolve_input_shape(tuple(inp.shape), profile_shapes)
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

    cache = None
    if timing_cache:
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = None
    if major >= 10 and hasattr(trt, "IProgressMonitor"):
        monitor = make_progress_monitor(trt)   # must outlive the build
        config.progress_monitor = monitor
    else:
        print(f"[build] TensorRT {trt.__version__} reports no progress; a build takes minutes", file=sys.stderr)

    what = f"{precision}{' (' + plan.int8_mode + ' INT8)' if plan.int8_mode else ''}"
    where = f"DLA core {plan.dla_core} + GPU fallback" if plan.dla_core is not None else gpu_name
    print(f"[build] {onnx_path.name} -> {engine_path.name}: {what}, input {'x'.join(map(str, input_shape))}, "
          f"TensorRT {trt.__version__} on {where}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {engine_path.name} (its log above says why); "
                           "a larger --workspace or --precision fp16 may help")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    command = build_command(onnx_path, engine_path, precision, calib_cache if plan.int8_mode == "implicit" else None,
                            workspace_mb, timing_cache, plan.dla_core, shapes)
    meta = engine_sidecar(onnx_meta, onnx_path=onnx_path, onnx_sha256=file_sha256(onnx_path), plan=plan,
                          input_shape=input_shape, profile=profile_dims, tensorrt_version=trt.__version__,
                          gpu_name=gpu_name, compute_capability=cc, command=command)
    write_sidecar(engine_path, meta)
    del monitor, calibrator
    print(f"[build] wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return meta


def run(args) -> int:
    if args.workspace <= 0:
        raise ValueError(f"--workspace must be a positive number of MiB, got {args.workspace}")
    build_engine(args.onnx, args.output, precision=args.precision, calib_cache=args.calib_cache,
                 workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
                 shapes=args.shapes)
    return 0
