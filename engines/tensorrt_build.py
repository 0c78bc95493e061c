"""The TensorRT build: an exported ONNX -> engine + model.engine.json (`bisenet build`, app/build.py).

    build(BuildOptions("model.onnx", "model.fp16.engine", precision="fp16"))
    build_engine("model.onnx", "model.fp16.engine", precision="fp16")     # the same, as keywords

Runs on TensorRT 8.6, 10.x (JetPack 6) and 11.x (engines/tensorrt_api.py says how they differ):
11.x builds strongly typed networks only, so fp16 comes from an fp16 export (`bisenet export
--precision fp16`) and int8 from the QDQ model. On 8.6/10.x INT8 builds also enable FP16, so
layers INT8 cannot run take FP16 rather than FP32. A QDQ ONNX (from `bisenet calibrate --target
tensorrt`) carries its own scales: explicit quantization, no calibrator. A plain ONNX needs a
calibration cache read by the entropy calibrator that the caller hands in
(`BuildOptions.int8_calibrator`): implicit quantization, 8.6/10.x only.

Everything that can be refused without TensorRT is refused first (engines/tensorrt_plan.py).
Engines only run on the TensorRT version and GPU model that built them; the sidecar records
both (and the ONNX sha256) so the TensorRT backend can refuse a mismatch with the command
that rebuilds it (`build_command` in the sidecar).
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from core.errors import SetupError
from core.files import atomic_write_bytes, file_sha256
from core.sidecar import write_sidecar
from engines.tensorrt_api import import_tensorrt, network_flags, tensorrt_api, tensorrt_logger
from engines.fingerprint import MachineProbe, build_options, fingerprint_record
from engines.tensorrt_plan import (BuildOptions, BuildRequest, build_command, check_request, engine_sidecar,
                                   plan_build, resolve_input_shape)


def build_engine(onnx_path, engine_path, **options) -> dict:
    """build() with the request as keywords (the fields of BuildOptions); returns the sidecar dict."""
    return build(BuildOptions(onnx_path, engine_path, **options))


def build(options: BuildOptions) -> dict:
    """Build and write the engine + its sidecar; returns the sidecar dict."""
    request = check_request(options)
    trt = import_tensorrt()
    api = tensorrt_api(trt.__version__)
    from engines.cuda_kernels import gpu_identity
    gpu_name, cc = gpu_identity()
    logger = tensorrt_logger(trt, options.verbose)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt, api, builder, logger, options.onnx_path)
    plan = plan_build(options.precision, network_has_qdq(trt, network), options.calib_cache, options.dla_core,
                      options.onnx_path.name, request.onnx_precision, api)
    for note in plan.notes:
        print(f"[build] note: {note}", file=sys.stderr)

    config = _builder_config(trt, builder, plan, options.workspace_mb)
    inp = network.get_input(0)
    input_shape, profile_dims = resolve_input_shape(tuple(inp.shape), request.profile_shapes, request.max_batch)
    profile = None
    if profile_dims:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *profile_dims)
        config.add_optimization_profile(profile)
    calibrator = None
    if plan.int8_mode == "implicit":
        calibrator = _attach_calibrator(config, request, input_shape, profile)
    cache = _attach_timing_cache(config, options.timing_cache) if options.timing_cache else None
    monitor = _attach_progress_monitor(trt, api, config)   # must outlive the build

    engine_path = options.engine_path
    what = f"{options.precision}{' (' + plan.int8_mode + ' INT8)' if plan.int8_mode else ''}"
    where = f"DLA core {plan.dla_core} + GPU fallback" if plan.dla_core is not None else gpu_name
    batch = f" (batch 1..{request.max_batch})" if request.max_batch is not None else ""
    print(f"[build] {options.onnx_path.name} -> {engine_path.name}: {what}, input {'x'.join(map(str, input_shape))}"
          f"{batch}, TensorRT {trt.__version__} on {where}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SetupError(f"TensorRT could not build {engine_path.name} (its log above says why); "
                           "a larger --workspace or --precision fp16 may help")
    command = build_command(options.onnx_path, engine_path, options.precision,
                            options.calib_cache if plan.int8_mode == "implicit" else None, options.workspace_mb,
                            options.timing_cache, plan.dla_core, options.shapes, request.max_batch)
    meta = engine_sidecar(request.onnx_meta, onnx_path=options.onnx_path, onnx_sha256=file_sha256(options.onnx_path),
                          plan=plan, input_shape=input_shape, profile=profile_dims, tensorrt_version=trt.__version__,
                          gpu_name=gpu_name, compute_capability=cc, command=command, max_batch=request.max_batch)
    # + CUDA and driver versions, and the options a `--rebuild` reruns (engines/fingerprint.py).
    meta.update(fingerprint_record(MachineProbe(trt)(), build_options(
        options.onnx_path, options.precision, options.calib_cache if plan.int8_mode == "implicit" else None,
        options.workspace_mb, options.timing_cache, plan.dla_core, options.shapes, request.max_batch)))
    # Engine and sidecar first, together: the backend refuses an engine without its sidecar.
    atomic_write_bytes(engine_path, bytes(serialized))
    write_sidecar(engine_path, meta)
    if cache is not None:
        _save_timing_cache(config, options.timing_cache)
    del monitor, calibrator
    print(f"[build] wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return meta


def _parse_onnx(trt, api, builder, logger, onnx_path: Path):
    """The parsed network. The parser owns the weights the network points at; the bindings keep
    it alive as long as the network (OnnxParser's keep_alive on 8.6, 10.x and 11.x)."""
    network = builder.create_network(network_flags(trt, api))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise SetupError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {first} "
                           f"({parser.num_errors} errors; re-export with a lower --opset?)")
    return network


def _builder_config(trt, builder, plan, workspace_mb: int):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    return config


def _attach_progress_monitor(trt, api, config):
    if not api.progress_monitor:
        print(f"[build] TensorRT {trt.__version__} reports no progress; a build takes minutes", file=sys.stderr)
        return None
    monitor = make_progress_monitor(trt)
    config.progress_monitor = monitor
    return monitor


def _attach_calibrator(config, request: BuildRequest, input_shape, profile):
    """Implicit INT8: the caller's calibrator reads the cache (no images, no batches) and refuses one
    made for another ONNX, input shape, preprocessing or TensorRT version."""
    options = request.options
    if options.int8_calibrator is None:
        raise TypeError("an implicit INT8 build (calib_cache) needs BuildOptions.int8_calibrator, e.g. "
                        "calibration.tensorrt_calibrator.cache_calibrator (`bisenet build` passes it)")
    calibrator = options.int8_calibrator(options.calib_cache, options.onnx_path, input_shape, request.onnx_meta)
    config.int8_calibrator = calibrator
    if profile is not None:
        config.set_calibration_profile(profile)
    return calibrator


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


def _save_timing_cache(config, path) -> None:
    updated = config.get_timing_cache()
    if updated is None:
        print(f"[build] TensorRT returned no timing cache: {path} not updated", file=sys.stderr)
    else:
        atomic_write_bytes(path, bytes(updated.serialize()))


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
