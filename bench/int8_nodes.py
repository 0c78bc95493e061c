"""Where an INT8 (or any) model's time goes, per node type, on ONNX Runtime and OpenVINO.

    python bench/int8_nodes.py artifacts/bench_models/r18_512x1024.int8.onnx
    python bench/int8_nodes.py m.onnx --openvino-precision bf16 --threads 2 --runs 5

ONNX Runtime: its profiler (kernel time per op type of the optimized graph: QLinearConv is
int8, a plain Resize/Conv is float). OpenVINO: PERF_COUNT per (layer type, kernel); the
kernel name ends in the precision it ran in (..._I8 int8, ..._f32, ..._bf16). Mean per run.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np


def onnxruntime_nodes(path, x, threads: int, runs: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(2 + runs):                       # 2 warm-up runs, left out below
        sess.run(None, {name: x})
    trace = sess.end_profiling()
    events = [e for e in json.load(open(trace)) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    os.remove(trace)
    warm = len(events) // (2 + runs) * 2
    out = collections.defaultdict(lambda: [0, 0.0])
    for e in events[warm:]:
        key = (e["args"]["op_name"], "")
        out[key][0] += 1
        out[key][1] += e["dur"] / 1000 / runs
    return {k: (v[0] // runs, v[1]) for k, v in out.items()}


def openvino_nodes(path, x, threads: int, runs: int, precision: str) -> dict:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision], "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    req = compiled.create_infer_request()
    req.infer({0: x})
    out = collections.defaultdict(lambda: [0, 0.0])
    for _ in range(runs):
        req.infer({0: x})
        for p in req.profiling_info:
            key = (p.node_type, p.exec_type)
            out[key][0] += 1
            out[key][1] += p.real_time.total_seconds() * 1000 / runs
    return {k: (v[0] // runs, v[1]) for k, v in out.items()}


def show(title: str, nodes: dict) -> None:
    total = sum(ms for _, ms in nodes.values())
    print(f"\n{title}: {total:.1f} ms of kernel time per run")
    for (op, kernel), (n, ms) in sorted(nodes.items(), key=lambda kv: -kv[1][1]):
        if ms >= 0.01:
            print(f"  {op:<26} {kernel:<30} n={n:<3d} {ms:8.2f} ms {100 * ms / total:5.1f}%")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an .onnx (static input size)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--openvino-precision", choices=("fp32", "bf16"), default="fp32",
                   help="float precision of the layers OpenVINO does not run in int8 (default fp32)")
    args = p.parse_args(argv)
    import onnx

    dims = [d.dim_value for d in onnx.load(args.model, load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    if not all(dims):
        raise SystemExit(f"{args.model}: dynamic input {dims}; export it at a fixed size")
    x = np.random.default_rng(0).normal(size=dims).astype(np.float32)
    print(f"{Path(args.model).name}, input {dims}, {args.threads} threads, mean of {args.runs} runs; "
          f"load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")
    show("ONNX Runtime (op type of the optimized graph)", onnxruntime_nodes(args.model, x, args.threads, args.runs))
    show(f"OpenVINO, float layers in {args.openvino_precision} (layer type, kernel: _I8 = int8)",
         openvino_nodes(args.model, x, args.threads, args.runs, args.openvino_precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
