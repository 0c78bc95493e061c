"""Per-layer sensitivity: which layers cost the most when quantized.

For each weighted layer (Conv), a QDQ model with only that layer in int8 is run on a few
calibration images and compared with fp32: the share of pixels whose label changes. The
layers at the top of the list are the ones to keep float (`--keep-float-top K` or
`--keep-float NAME,...`). Quantizing one layer at a time isolates each layer's own error;
it reuses the one set of calibrated ranges, so no new calibration pass is needed.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from calibration.ort_quantize import _progress, quantizable_nodes, write_flavor


def _labels(session, x: np.ndarray) -> np.ndarray:
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return out.argmax(1) if out.ndim == 4 else out   # logits head -> labels


def cpu_session(path, threads: int | None = None):
    """ONNX Runtime CPU session with WeightBiasQuantization off, so that only the chosen layer
    is int8: that optimizer quantizes the float weights of a conv that sits between a
    DequantizeLinear and a QuantizeLinear by itself."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["WeightBiasQuantization"])


def layer_sensitivity(prepared, ranges_path, method: str, flavor: str, images: list,
                      threads: int | None = None, progress: bool = True) -> dict:
    """{'full_int8_flip': %, 'layers': [{'name', 'op_type', 'label_flip_pct'}, ...] worst first}."""
    import onnx

    model = onnx.load(str(prepared), load_external_data=False)
    layers = quantizable_nodes(model)
    fp32 = cpu_session(prepared, threads)
    refs = [_labels(fp32, x) for x in images]

    def flip_pct(path) -> float:
        sess = cpu_session(path, threads)
        changed = sum(int((_labels(sess, x) != ref).sum()) for x, ref in zip(images, refs))
        return 100.0 * changed / sum(ref.size for ref in refs)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bisenet-sens-") as tmp:
        full = write_flavor(prepared, ranges_path, method, flavor, Path(tmp) / "full.onnx")
        full_flip = flip_pct(full)
        bar = _progress(len(layers), "sensitivity", progress)
        for name, op_type in layers:
            one = write_flavor(prepared, ranges_path, method, flavor, Path(tmp) / "one.onnx", only_nodes=[name])
            rows.append({"name": name, "op_type": op_type, "label_flip_pct": round(flip_pct(one), 4)})
            bar.update(1)
        bar.close()
    rows.sort(key=lambda r: -r["label_flip_pct"])
    return {"flavor": flavor, "method": method, "num_images": len(images),
            "full_int8_label_flip_pct": round(full_flip, 4), "layers": rows}


def format_report(report: dict, top: int = 10) -> str:
    lines = [f"per-layer sensitivity ({report['flavor']} int8, {report['num_images']} images): "
             f"all layers int8 flip {report['full_int8_label_flip_pct']:.3f}% of pixels vs fp32",
             f"  {'rank':>4}  {'flip %':>8}  layer (only this one int8)"]
    for i, r in enumerate(report["layers"][:top], 1):
        lines.append(f"  {i:>4}  {r['label_flip_pct']:>8.3f}  {r['name']} ({r['op_type']})")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> Path:
    from core.files import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode())
    return Path(path)
