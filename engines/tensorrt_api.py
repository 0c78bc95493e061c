"""The TensorRT version shim: the one place TensorRT 8.6, 10.x (JetPack 6) and 11.x differ.

8.6 networks need the EXPLICIT_BATCH flag and have no IProgressMonitor; 11.x builds strongly
typed networks only (no FP16/INT8 builder flags, no calibrators): each layer runs in the type
the ONNX gives it. The builder (engines/tensorrt_build.py), the backend
(engines/tensorrt_engine.py) and the INT8 calibrator (calibration/tensorrt_calibrator.py) all
import tensorrt through here, and share one logger.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import InputError, SetupError

SUPPORTED_TENSORRT = "TensorRT 8.6, 10.x or 11.x"
TENSORRT_HINT = ("TensorRT is not installed: pip install 'tensorrt>=10,<12' (desktop GPUs) or, "
                 "on Jetson, use JetPack's python3-libnvinfer with the system python3")


def import_tensorrt(hint: str = TENSORRT_HINT):
    """The tensorrt module, or a one-line RuntimeError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise SetupError(hint) from None
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
    raise SetupError(f"TensorRT {version} is not supported: this project runs on {SUPPORTED_TENSORRT} "
                       "(pip install 'tensorrt>=10,<12', or JetPack 6 on Jetson)")


def network_flags(trt, api: TensorRTApi) -> int:
    return 1 << int(getattr(trt.NetworkDefinitionCreationFlag, api.network_flag)) if api.network_flag else 0


def qdq_route(onnx_name: str) -> str:
    return (f"`bisenet calibrate --onnx {onnx_name} --data ... --target tensorrt`, then build the QDQ model it "
            "writes with --precision int8")


def check_implicit_int8(api: TensorRTApi, onnx_name="model.onnx") -> None:
    """Calibration caches (implicit INT8) exist on 8.6/10.x only: one line naming the QDQ route on 11.x."""
    if not api.implicit_int8:
        raise InputError(f"TensorRT {api.version} has no implicit INT8 (calibration caches, --calib-cache / "
                         f"--trt-cache): quantize with Q/DQ nodes instead: {qdq_route(onnx_name)}")


_logger = None


def tensorrt_logger(trt, verbose: bool = False):
    """The process's one TensorRT logger, shared by builders, runtimes and parsers (TensorRT
    warns when a second logger is handed to it)."""
    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    _logger.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return _logger
