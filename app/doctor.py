"""`bisenet doctor`: what this machine can do and why the app chooses what it chooses.

CPU model, cores and the ISA features the fast paths need; each inference backend with its
version (or the one line to install it); GPU, CUDA, TensorRT, pycuda, CuPy; the Triton
client; the media stack (PyAV and its H.264 encoders, the hardware decode device types its
FFmpeg has for --hwaccel, FFmpeg, GStreamer's RTSP server). With
--model: the backend and precision `bisenet run` will pick for it, and a few timed runs of
each contender on this machine. Exits 0 (a missing piece is a finding, not an error), or 2 with
one line when --model is missing or not a model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from core.errors import BisenetError
from core.install_hint import extra_hint
from core.validate import Number

HELP = "what this machine can run (CPU features, backends, GPU, media) and what the app picks for --model"
EXAMPLE = "bisenet doctor --model artifacts/camvid.onnx --json"

# name -> (module to import, install line). Versions come from the module itself.
PACKAGES = {
    "onnxruntime": ("onnxruntime", "pip install onnxruntime (CPU) or onnxruntime-gpu"),
    "openvino": ("openvino", "pip install openvino"),
    "pytorch": ("torch", extra_hint("train", "torch tqdm")),
    "tensorrt": ("tensorrt", "pip install tensorrt (NVIDIA GPU; JetPack on a Jetson)"),
    "pycuda": ("pycuda", "pip install pycuda (needs the CUDA toolkit)"),
    "cupy": ("cupy", "pip install cupy-cuda12x"),
    "tritonclient": ("tritonclient", "pip install 'tritonclient[all]'"),
    "pyav": ("av", "pip install av"),
}
BACKENDS = ("onnxruntime", "openvino", "pytorch", "tensorrt", "triton")


# The ranges of the numeric flags below (app/cli.py checks them before run()).
FLAG_RULES = {"runs": Number(int, min=1), "threads": Number(int, 1, 1024)}


def add_arguments(p):
    p.add_argument("--model", help="an .onnx: say which backend and precision the app picks, and time each contender")
    p.add_argument("--runs", type=int, default=5, help="timed runs per contender with --model (default 5)")
    p.add_argument("--threads", type=int, help="inference threads for the timed runs (default: the backend's own)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")


def package(name: str) -> dict:
    module, install = PACKAGES[name]
    try:
        mod = __import__(module)
    except Exception as e:   # ImportError, or a binary package failing to load (no driver, ...)
        return {"version": None, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip(),
                "install": install}
    version = getattr(mod, "__version__", None)
    if version is None:
        from importlib import metadata
        try:
            version = metadata.version(module)
        except metadata.PackageNotFoundError:
            version = "unknown"
    return {"version": str(version)}


def gpu() -> dict:
    out = {"nvidia_smi": None, "nvcc": shutil.which("nvcc")}
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            out["nvidia_smi"] = r.stdout.strip() or r.stderr.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError) as e:
            out["nvidia_smi"] = f"failed: {e}"
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    out["cuda_gpu"] = bool(out["nvidia_smi"]) and not str(out["nvidia_smi"]).startswith("failed")
    return out


def media() -> dict:
    out = {"ffmpeg": shutil.which("ffmpeg")}
    try:
        import av

        out["pyav_h264_encoders"] = sorted(c for c in av.codecs_available
                                           if c in ("libx264", "h264", "h264_nvenc", "h264_vaapi", "h264_v4l2m2m",
                                                    "libopenh264"))
        from av.codec.hwaccel import hwdevices_available

        out["pyav_hwaccel_types"] = list(hwdevices_available())   # what --hwaccel may name here
        from app.sources import hwaccel_report

        out["h264_decode"] = hwaccel_report("h264")   # which devices open here; what auto picks
    except ImportError:
        out["pyav_h264_encoders"] = out["pyav_hwaccel_types"] = None
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtspServer  # noqa: F401

        Gst.init(None)
        out["gstreamer_rtsp_server"] = Gst.version_string()
    except (ImportError, ValueError) as e:
        out["gstreamer_rtsp_server"] = None
        out["gstreamer_reason"] = (f"{str(e).splitlines()[0]}: apt install gir1.2-gst-rtsp-server-1.0 "
                                   "gstreamer1.0-plugins-ugly python3-gi, then bash scripts/setup_gi.sh "
                                   "(rtsp://@ outputs)")
    return out


def backends(packages: dict) -> dict:
    """Every backend with a version, or the reason it cannot run here."""
    out = {}
    for name in BACKENDS:
        if name == "triton":
            p = packages["tritonclient"]
            out[name] = {"version": p["version"], "reason": p.get("reason"),
                         "note": "client only; the server is `bisenet serve-triton`"}
        else:
            out[name] = dict(packages[name])
    if out["tensorrt"]["version"] and not shutil.which("nvidia-smi"):
        out["tensorrt"]["reason"] = "imports, but no NVIDIA GPU answers nvidia-smi"
    return out


def contenders(model: str, cpu) -> list:
    """(label, backend, precision) the app could run this .onnx with on this CPU."""
    from pathlib import Path

    from engines.load import sidecar_precision

    int8 = sidecar_precision(Path(model)) == "int8"
    rows = [("onnxruntime", "onnxruntime", None)]
    rows.append(("openvino int8+fp32" if int8 else "openvino fp32", "openvino", "fp32"))
    if cpu.bf16:
        rows.append(("openvino int8+bf16" if int8 else "openvino bf16", "openvino", "bf16"))
    return rows


def fp32_model_reason(model: str, cpu) -> str:
    """Why an fp32 .onnx runs in fp32, and how to get bf16 where the CPU has it."""
    why = "an fp32 model runs in fp32, on ONNX Runtime: as fast as OpenVINO fp32 and steadier under load"
    if not cpu.bf16:
        return why
    return (f"{why}; bf16 is never picked by itself for an fp32 model, since no accuracy gate measured it: "
            f"check it with `bisenet eval --model {model} --backend openvino --precision bf16 --dataset ...` and run "
            f"with `--backend openvino --precision bf16`, or `bisenet calibrate --onnx {model} --val ...` makes an "
            "int8 model whose gate measures int8+bf16 so the app picks it")


def model_report(model: str, cpu, runs: int, threads: int | None) -> dict:
    import numpy as np

    from engines.load import load_engine

    out = {"model": model, "contenders": []}
    try:
        chosen = load_engine(model, threads=threads)
    except BisenetError:   # a missing or unusable --model is bad input: one line, exit 2
        raise
    except Exception as e:   # a model the engines choke on is a finding
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return out
    why = getattr(chosen, "precision_reason", None)
    if why is None and chosen.info.precision == "fp32":
        why = fp32_model_reason(model, cpu)
    out["app_picks"] = {"backend": chosen.backend, "precision": chosen.info.precision,
                        "why": why, "describe": chosen.describe()}
    h, w = chosen.info.input_size
    chosen.close()
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for label, backend, precision in contenders(model, cpu):
        row = {"name": label, "backend": backend}
        try:
            engine = load_engine(model, backend=backend, precision=precision, threads=threads)
            row["precision"] = engine.info.precision
            x = engine.preprocess(image)   # what the app feeds it
            engine.infer(x)   # warm-up
            ms = []
            for _ in range(runs):
                t = time.perf_counter()
                engine.infer(x)
                ms.append((time.perf_counter() - t) * 1000)
            engine.close()
            row["median_ms"] = round(float(np.median(ms)), 1)
        except Exception as e:
            row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        row["app_default"] = (backend == out["app_picks"]["backend"] and
                              row.get("precision") == out["app_picks"]["precision"])
        out["contenders"].append(row)
    return out


def collect(args) -> dict:
    from engines.cpu_features import detect

    cpu = detect()
    packages = {name: package(name) for name in PACKAGES}
    report = {"cpu": cpu.to_json(), "backends": backends(packages), "gpu": gpu(),
              "gpu_packages": {n: packages[n] for n in ("tensorrt", "pycuda", "cupy")},
              "triton_client": packages["tritonclient"], "media": {"pyav": packages["pyav"], **media()}}
    if args.model:
        report["model"] = model_report(args.model, cpu, args.runs, args.threads)
    return report


def format_report(r: dict) -> str:
    def ver(p):
        return p["version"] if p.get("version") else f"missing ({p.get('reason')}): {p.get('install', '')}".strip()

    c = r["cpu"]
    feats = ", ".join(f"{f} {'yes' if c[f] else 'no'}" for f in ("avx2", "avx512", "vnni", "bf16", "amx"))
    lines = [f"cpu: {c['model']}, {c['cores']} cores, {c['mhz'] or '?'} MHz; {feats}"
             + (f" ({c['source']})" if c["source"] != "/proc/cpuinfo" else "")]
    lines.append("backends:")
    for name, b in r["backends"].items():
        lines.append(f"  {name:<12} {ver(b)}" + (f"  [{b['reason']}]" if b.get("version") and b.get("reason") else ""))
    g = r["gpu"]
    lines.append(f"gpu: {g['nvidia_smi'] or 'no NVIDIA GPU (nvidia-smi not found)'}; nvcc {g['nvcc'] or 'not found'}; "
                 f"ONNX Runtime providers {', '.join(g.get('onnxruntime_providers', [])) or '-'}")
    lines.append("  " + "; ".join(f"{n} {p['version'] or 'missing: ' + p['install']}"
                                   for n, p in r["gpu_packages"].items() if n != "tensorrt"))
    m = r["media"]
    lines.append(f"media: PyAV {ver(m['pyav'])}, H.264 encoders {', '.join(m['pyav_h264_encoders'] or []) or 'none'}; "
                 f"ffmpeg {m['ffmpeg'] or 'not found'}; GStreamer RTSP server "
                 f"{m['gstreamer_rtsp_server'] or 'missing: ' + m.get('gstreamer_reason', '')}")
    if m.get("pyav_hwaccel_types") is not None:
        h264 = m["h264_decode"]
        tried = "; ".join(f"{k}: {p or 'opens'}" for k, p in h264["devices"].items())
        lines.append(f"decode: hardware device types {', '.join(m['pyav_hwaccel_types']) or 'none'} (--hwaccel); "
                     f"h264 with --hwaccel auto: {h264['auto']}" + (f" ({tried})" if tried else ""))
    if "model" in r:
        mr = r["model"]
        if "error" in mr:
            lines.append(f"model {mr['model']}: cannot load: {mr['error']}")
        else:
            pick = mr["app_picks"]
            lines.append(f"model {mr['model']}: the app picks {pick['backend']} {pick['precision']}"
                         + (f" ({pick['why']})" if pick["why"] else ""))
            for row in mr["contenders"]:
                mark = "*" if row["app_default"] else " "
                what = f"{row['median_ms']:8.1f} ms" if "median_ms" in row else f"skipped: {row['skipped']}"
                lines.append(f"  {mark} {row['name']:<22} {row.get('precision', ''):<10} {what}")
    return "\n".join(lines)


def run(args) -> int:
    report = collect(args)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    sys.stdout.flush()
    return 0
