"""ONNX Runtime static quantization in QDQ format: one calibration pass, two flavors.

    model.onnx --quant_pre_process--> prepared fp32 --calibrate (once)--> ranges JSON
        ranges --> model.int8.onnx      (flavor 'cpu':      uint8 asymmetric activations,
                                          int8 symmetric per-channel weights: U8S8)
        ranges --> model.int8.trt.onnx  (flavor 'tensorrt': int8 symmetric activations and
                                          per-channel weights, zero point 0, which TensorRT's
                                          explicit quantization takes)

Why two flavors: ONNX Runtime's x86/ARM int8 kernels are fastest with U8S8 (asymmetric
uint8 activations), while TensorRT only takes symmetric int8 Q/DQ. The ranges are the
same numbers; only how they become scale/zero-point differs, so one calibration serves both.

The output tail after the last convolution (the bilinear Resize to input size, ArgMax,
Cast) always stays float: quantizing the logits before ArgMax flips labels on near-ties
for no speed gain.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from core.errors import InputError, SetupError
from core.files import atomic_path

METHODS = ("entropy", "minmax", "percentile")
FLAVORS = ("cpu", "tensorrt")
# What follows the last Conv and must stay float (labels head: Resize -> ArgMax -> Cast).
FLOAT_TAIL_OPS = {"Resize", "ArgMax", "Cast", "Identity", "Softmax", "Transpose", "Reshape"}


def _ort_quant():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise SetupError("INT8 calibration needs onnxruntime with its quantization tools: "
                           "pip install onnxruntime onnx") from None
    return quantization


def calibration_method(name: str):
    q = _ort_quant()
    table = {"entropy": q.CalibrationMethod.Entropy, "minmax": q.CalibrationMethod.MinMax,
             "percentile": q.CalibrationMethod.Percentile}
    if name not in table:
        raise InputError(f"--method {name!r}: use one of {', '.join(METHODS)}")
    return table[name]


def prepare_fp32(onnx_path: str | Path, out_path: str | Path) -> Path:
    """quant_pre_process: shape inference + ONNX Runtime's basic graph fusions (Conv+BN,
    constant folding), so Q/DQ pairs land where the int8 kernels can fuse them."""
    q = _ort_quant()
    q.quant_pre_process(str(onnx_path), str(out_path), skip_symbolic_shape=True)
    return Path(out_path)


def float_tail_nodes(model) -> list:
    """Names of the nodes between the graph output and the last Conv (kept float).
    `model`: an onnx.ModelProto or a path."""
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    tail, frontier = [], [o.name for o in model.graph.output]
    seen = set()
    while frontier:
        name = frontier.pop()
        node = producer.get(name)
        if node is None or node.name in seen or node.op_type not in FLOAT_TAIL_OPS:
            continue
        seen.add(node.name)
        tail.append(node.name)
        frontier.extend(i for i in node.input if i)
    return tail


def quantizable_nodes(model) -> list:
    """(name, op_type) of the nodes that carry weights: the layers a sensitivity sweep ranks.
    `model`: an onnx.ModelProto or a path."""
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [(n.name, n.op_type) for n in model.graph.node
            if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits]


class _Reader:
    """CalibrationDataReader over a slice of preprocessed images (ORT calls get_next)."""

    def __init__(self, input_name: str, arrays: list):
        self.input_name = input_name
        self.arrays = iter(arrays)

    def get_next(self):
        x = next(self.arrays, None)
        return None if x is None else {self.input_name: x}


def calibrate_ranges(prepared: str | Path, calib_set, method: str, ranges_path: str | Path,
                     chunk: int = 16, progress: bool = True) -> Path:
    """Run the fp32 model over the calibration set once and save every tensor's range
    (ONNX Runtime's calibration-cache JSON). Images are fed in chunks so memory stays
    bounded: ORT's histogram calibrators hold all outputs of one collect call."""
    import onnx

    q = _ort_quant()
    model = onnx.load(str(prepared), load_external_data=False)
    input_name = model.graph.input[0].name
    op_types = sorted(set(q.registry.QLinearOpsRegistry) | set(q.registry.QDQRegistry))
    # TensorRT's entropy recipe: 2048-bin histograms searched for the best 128-level
    # threshold (ORT's default of 128 bins leaves entropy nothing to search: it is max-abs).
    extra = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128},
             "percentile": {"num_bins": 2048, "percentile": 99.999}}.get(method, {})
    # ORT's calibrators print progress notes to stdout; keep stdout for results.
    with tempfile.TemporaryDirectory(prefix="bisenet-calib-") as tmp, contextlib.redirect_stdout(sys.stderr):
        calibrator = q.create_calibrator(Path(prepared), op_types,
                                         augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                         calibrate_method=calibration_method(method), extra_options=extra)
        bar = _progress(len(calib_set), f"calibrating ({method})", progress)
        buf = []
        for x in calib_set:
            buf.append(x)
            if len(buf) == chunk:
                calibrator.collect_data(_Reader(input_name, buf))
                bar.update(len(buf))
                buf = []
        if buf:
            calibrator.collect_data(_Reader(input_name, buf))
            bar.update(len(buf))
        bar.close()
        if method == "entropy":
            ranges = q.calibrate.TensorsData(q.CalibrationMethod.Entropy, entropy_ranges(calibrator.collector))
        else:
            ranges = calibrator.compute_data()
        if method in ("entropy", "percentile"):
            _clip_to_observed(ranges, calibrator)
        del calibrator
    q.calibrate.save_tensors_data(ranges, ranges_path)
    return Path(ranges_path)


def entropy_ranges(collector) -> dict:
    """ORT's entropy ranges (HistogramCollector.compute_entropy): {tensor: (low, high, hist,
    edges)}, each tensor's threshold found by ORT's own KL search (get_entropy_threshold),
    with numpy sums where it sums its integer bins one by one in Python (the same integers,
    so the same thresholds; that loop took about half a second per tensor, most of a
    `--method entropy` run). A histogram of float counts takes ORT's own search."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    out = {}
    for name, histogram in collector.histogram_dict.items():
        hist, edges, low_seen, high_seen = histogram[:4]
        if not np.issubdtype(hist.dtype, np.integer):
            low, high = collector.get_entropy_threshold(histogram, collector.num_quantized_bins)
            out[name] = (low, high, hist, edges)
            continue
        num_bins, quantized = hist.size, collector.num_quantized_bins
        zero, half = num_bins // 2, quantized // 2
        total, cumulative = hist.sum(), np.concatenate([[0], np.cumsum(hist)])
        divergences, bounds = [], []
        for i in range(half, zero + 1):
            start, end = zero - i, min(zero + i + 1, num_bins)
            bounds.append((edges[start], edges[end]))
            sliced = hist[start:end]
            p = sliced.copy()
            p[0] += cumulative[start]                # the outliers on each side go to the end bins
            p[-1] += total - cumulative[end]
            merged = sliced.size // quantized        # bins per quantized bin; the rest join the last
            quantized_bins = sliced[:quantized * merged].reshape(quantized, merged).sum(axis=1)
            quantized_bins[-1] += sliced[quantized * merged:].sum()
            norm = (p[:quantized * merged] != 0).reshape(quantized, merged).sum(axis=1)
            spread = np.where(norm != 0, quantized_bins / np.maximum(norm, 1), 0).astype(np.int64)
            q = np.zeros(p.size, dtype=np.int64)
            q[:quantized * merged] = np.repeat(spread, merged)
            p, q = smooth_distribution(p), smooth_distribution(q)
            divergences.append(np.inf if p is None or q is None else entropy(p, q))
        divergences = np.array(divergences, dtype=edges.dtype)
        low, high = bounds[int(np.argmin(divergences))]
        low, high = (low_seen if low < low_seen else low), (high_seen if high > high_seen else high)
        out[name] = (low, high, hist, edges)
    return out


def _clip_to_observed(ranges, calibrator) -> None:
    """Entropy/percentile thresholds are symmetric (-t, t); clip them to the values actually
    seen. A ReLU output then gets [0, t] and a uint8 activation keeps all 256 steps instead
    of wasting the negative half on values that never occur."""
    hist = getattr(getattr(calibrator, "collector", None), "histogram_dict", {}) or {}
    for name, td in ranges.data.items():
        if name not in hist or not hasattr(td, "lowest"):
            continue
        seen_min, seen_max = hist[name][2], hist[name][3]
        td.lowest = np.array(max(float(td.lowest), float(seen_min)), dtype=td.lowest.dtype)
        td.highest = np.array(min(float(td.highest), float(seen_max)), dtype=td.highest.dtype)


def flavor_options(flavor: str) -> dict:
    q = _ort_quant()
    if flavor == "cpu":
        return {"activation_type": q.QuantType.QUInt8, "weight_type": q.QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}}
    if flavor == "tensorrt":
        return {"activation_type": q.QuantType.QInt8, "weight_type": q.QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}}
    raise InputError(f"flavor {flavor!r}: use one of {', '.join(FLAVORS)}")


def write_flavor(prepared: str | Path, ranges_path: str | Path, method: str, flavor: str,
                 out_path: str | Path, keep_float=(), only_nodes=None) -> Path:
    """Quantize `prepared` with the saved ranges into a QDQ model (no new calibration)."""
    q = _ort_quant()
    exclude = sorted(set(float_tail_nodes(prepared)) | set(keep_float))
    opts = flavor_options(flavor)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:   # an interrupted run leaves no temp file
        q.quantize_static(str(prepared), str(tmp), calibration_data_reader=None,
                          calibration_cache_path=str(ranges_path), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, reduce_range=False, calibrate_method=calibration_method(method),
                          nodes_to_exclude=exclude, nodes_to_quantize=list(only_nodes) if only_nodes else None,
                          **opts)
        if keep_float:
            _feed_float_inputs(tmp, keep_float)
    return out_path


def _feed_float_inputs(path: Path, names) -> None:
    """Give each kept-float layer the float tensor from before the Q/DQ pair on its input.

    Excluding a Conv from quantization is not enough on ONNX Runtime: when a Conv reads a
    DequantizeLinear output and has float weights, its WeightBiasQuantization optimizer
    quantizes those weights itself (per tensor, coarser than ours). Reading the float
    tensor keeps the layer truly float; the layer's other consumers still see the Q/DQ."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name not in names or not node.input:
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
    onnx.save(model, str(path))


def count_qdq(path: str | Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def optimized_op_counts(path: str | Path, threads: int = 1) -> dict:
    """Op types after ONNX Runtime's CPU optimizations (level ALL): shows whether the
    QDQ pairs fused into int8 kernels (QLinearConv, ...) or stayed as float ops."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bisenet-opt-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(opts.optimized_model_filepath)
    counts: dict = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:   # tqdm is a build-time extra; calibration still works without a bar
        class _Silent:
            def update(self, n): pass
            def close(self): pass
        return _Silent()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)
