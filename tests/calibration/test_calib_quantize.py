"""`bisenet calibrate`: one calibration pass, two QDQ flavors (cpu U8S8 / tensorrt symmetric),
float output tail, fused int8 kernels on ONNX Runtime CPU, sidecars, sensitivity report."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from app.cli import main as cli
from calibration import ort_quantize
from testkit.calib_fixtures import image_folder, tiny_segmenter


def zero_points(path):
    """{tensor quantized: zero-point array} for every QuantizeLinear of activations."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def float_weights_after_optimization(path):
    """Weight initializers that reach a float Conv directly in ONNX Runtime's optimized CPU graph
    (level ALL, as at run time, minus the NCHWc re-layout that renames the weights)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
        model = onnx.load(opts.optimized_model_filepath)
    inits = {i.name for i in model.graph.initializer}
    return sorted(n.input[1] for n in model.graph.node if n.op_type in ("Conv", "FusedConv") and n.input[1] in inits)


def weight_scales(path):
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calib")
    fp32 = tiny_segmenter(tmp / "tiny.onnx")
    images = image_folder(tmp / "imgs", per_sequence=2)
    out = tmp / "tiny.int8.onnx"
    rc = cli(["calibrate", "--onnx", str(fp32), "--data", str(images), "--num-images", "5", "--method", "minmax",
              "--target", "both", "--sensitivity", "--sensitivity-images", "2", "--quiet", "-o", str(out)])
    assert rc == 0
    return fp32, out, tmp / "tiny.int8.trt.onnx"


def test_two_flavors_from_one_calibration(calibrated):
    fp32, cpu, trt = calibrated
    cpu_zp, trt_zp = zero_points(cpu), zero_points(trt)
    assert cpu_zp and all(z.dtype == np.uint8 for z in cpu_zp.values())          # U8: asymmetric uint8
    assert trt_zp and all(z.dtype == np.int8 and not z.any() for z in trt_zp.values())   # symmetric int8
    # per-channel weights (one scale per output channel) in both flavors
    for path in (cpu, trt):
        assert sorted(s.size for s in weight_scales(path).values()) == [3, 8, 16]


def test_output_tail_stays_float_and_cpu_runs_fused_int8_kernels(calibrated):
    fp32, cpu, _ = calibrated
    model = onnx.load(str(cpu))
    producer = {o: n for n in model.graph.node for o in n.output}
    resize = next(n for n in model.graph.node if n.name == "final_resize")
    argmax = next(n for n in model.graph.node if n.name == "argmax")
    assert producer[argmax.input[0]].name == "final_resize"                 # no Q/DQ between them
    assert producer[resize.input[0]].op_type == "DequantizeLinear"           # float logits into the Resize
    ops = ort_quantize.optimized_op_counts(cpu)
    assert ops.get("QLinearConv", 0) == 3 and "Conv" not in ops
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 128)).astype(np.float32)
    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(cpu), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert b.dtype == np.int32 and b.shape == a.shape == (1, 64, 128)


def test_sidecars_list_file_and_sensitivity_report(calibrated):
    fp32, cpu, trt = calibrated
    for path, flavor in ((cpu, "cpu"), (trt, "tensorrt")):
        meta = json.loads((path.parent / (path.name + ".json")).read_text())
        assert meta["precision"] == "int8" and meta["flavor"] == flavor
        assert meta["calibration"]["method"] == "minmax" and meta["calibration"]["num_images"] == 5
        assert meta["calibration"]["list_file"] == "tiny.int8.calib.txt"
        assert meta["calibration"]["preprocessing"]["size_hw"] == [64, 128]
        assert meta["classes"] == ["sky", "road", "car"] and meta["input_shape"] == [1, 3, 64, 128]
    listed = (cpu.parent / "tiny.int8.calib.txt").read_text().splitlines()
    assert len(listed) == 6 and all(line.endswith(".png") for line in listed[1:])
    report = json.loads((cpu.parent / "tiny.int8.sensitivity.json").read_text())
    assert sorted(r["name"] for r in report["layers"]) == ["conv1", "conv2", "conv_seg"]
    flips = [r["label_flip_pct"] for r in report["layers"]]
    assert flips == sorted(flips, reverse=True) and all(0 <= f <= 100 for f in flips)


def test_keep_float_leaves_a_layer_unquantized(tmp_path):
    fp32 = tiny_segmenter(tmp_path / "tiny.onnx")
    images = image_folder(tmp_path / "imgs", sequences=("s",), per_sequence=2)
    out = tmp_path / "k.int8.onnx"
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(images), "--num-images", "2",
                "--keep-float", "conv_seg", "--quiet", "-o", str(out)]) == 0
    # conv_seg computes in float with its float weights (ORT did not quantize them behind our back);
    # conv2 now feeds a float layer only, so its output is no longer quantized either.
    assert float_weights_after_optimization(out) == ["w3"]
    assert ort_quantize.optimized_op_counts(out).get("QLinearConv") == 1
    meta = json.loads((tmp_path / "k.int8.onnx.json").read_text())
    assert meta["keep_float"] == ["conv_seg"] and sorted(meta["float_tail"]) == ["argmax", "cast", "final_resize"]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    fp32 = tiny_segmenter(tmp_path / "tiny.onnx")
    assert cli(["calibrate", "--onnx", str(tmp_path / "none.onnx"), "--data", ".", "-o", "x.onnx"]) == 2
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(tmp_path), "-o", str(tmp_path / "x.int8")]) == 2
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(image_folder(tmp_path / "i", per_sequence=1)),
                "--keep-float", "nope", "--quiet", "-o", str(tmp_path / "x.onnx")]) == 2
    # (the last run prints its calibration-set notes before failing)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("note:", "calibration set"))]
    assert len(err) == 4 and all(line.startswith("bisenet calibrate: error:") for line in err)
    assert "export" in err[0] and "no such file" in err[1] and "must end in .onnx" in err[2]
    assert "--keep-float nope: no such layer" in err[3]


def test_bisenet_r18_export_quantizes_end_to_end(tmp_path):
    """The real network from `bisenet export` (random weights, 64x128): every conv becomes a
    QLinearConv on the CPU, and the final Resize/ArgMax stay float."""
    pytest.importorskip("torch", reason="export needs torch (pip install 'bisenet-edge[train]')")
    fp32 = tmp_path / "r18.onnx"
    assert cli(["export", "--model", "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024", "--random-init",
                "--size", "64x128", "--no-simplify", "-o", str(fp32)]) == 0
    images = image_folder(tmp_path / "imgs", per_sequence=1)
    out = tmp_path / "r18.int8.onnx"
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(images), "--num-images", "3", "--quiet",
                "-o", str(out)]) == 0
    ops = ort_quantize.optimized_op_counts(out)
    convs = sum(1 for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    assert ops.get("QLinearConv") == convs and ops.get("ArgMax") == 1


def test_keep_float_top_keeps_the_worst_layers_of_the_report(tmp_path):
    fp32 = tiny_segmenter(tmp_path / "tiny.onnx")
    images = image_folder(tmp_path / "imgs", sequences=("s",), per_sequence=2)
    out = tmp_path / "t.int8.onnx"
    assert cli(["calibrate", "--onnx", str(fp32), "--data", str(images), "--num-images", "2",
                "--keep-float-top", "1", "--sensitivity-images", "1", "--quiet", "-o", str(out)]) == 0
    worst = json.loads((tmp_path / "t.int8.sensitivity.json").read_text())["layers"][0]["name"]
    assert json.loads((tmp_path / "t.int8.onnx.json").read_text())["keep_float"] == [worst]
    weight_of = {"conv1": "w1", "conv2": "w2", "conv_seg": "w3"}
    assert float_weights_after_optimization(out) == [weight_of[worst]]


def test_entropy_ranges_equal_onnxruntimes_own_search():
    """ort_quantize.entropy_ranges (numpy sums) gives ORT's get_entropy_threshold's thresholds,
    bit for bit, on histograms as calibration collects them: a ReLU output (a spike at 0, a long
    tail), a signed one with outliers, and one merged over two batches whose range grew (512 bins,
    not calibrate's 2048: the same search over fewer candidates, so ORT's own loop ends in seconds)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(0.2, 1.0, 200_000), 0) * rng.gamma(1.5, 1.0, 200_000)
    signed = np.concatenate([rng.normal(0, 0.5, 200_000), rng.normal(0, 8, 50)])
    collector = HistogramCollector(method="entropy", symmetric=False, num_bins=512, num_quantized_bins=128,
                                   percentile=99.999, scenario="same")
    collector.collect({"relu": [relu.astype(np.float32)], "signed": [signed.astype(np.float32)],
                       "grown": [rng.normal(0, 1, 100_000).astype(np.float32)]})
    collector.collect({"relu": [relu[:1000].astype(np.float32)], "signed": [signed[:1000].astype(np.float32)],
                       "grown": [rng.normal(0, 3, 100_000).astype(np.float32)]})
    ours, theirs = ort_quantize.entropy_ranges(collector), collector.compute_entropy()
    assert set(ours) == set(theirs) == {"relu", "signed", "grown"}
    for name in ours:
        assert ours[name][:2] == theirs[name][:2], name
        assert ours[name][0].dtype == theirs[name][0].dtype == np.float32, name
