"""CPU backends side by side: PyTorch, ONNX Runtime and OpenVINO on BiSeNetV1, one process.

    python bench/models.py                                  # 352x480 and 512x1024, quiet
    python bench/models.py --load 0,2                       # quiet, then with 2 busy processes
    python bench/models.py --sizes 1024x2048 --runs 5       # the Cityscapes full frame
    python bench/models.py --checkpoint ../shared/models/camvid_r18-d32_cpu.pth \
        --model bisenetv1_r18-d32_camvid-360x480            # a trained model (speed is the same)

Per size it exports the fp32 ONNX (labels head, `bisenet export`) and one INT8 QDQ model
(`bisenet calibrate --target cpu`, 16 CamVid train images): ONNX Runtime and OpenVINO run the
same two files. Contenders (precision stated per row; a row that cannot run is skipped with
the reason):

    pytorch eager fp32            the seed's runtime (torch, argmax on logits)
    torch.compile fp32            inductor, when it compiles here
    onnxruntime fp32 / int8       engines/onnx_engine.py as the app runs it (no spinning)
    onnxruntime fp32 spin         the same with ONNX Runtime's default idle spin-wait
    openvino fp32 / bf16          engines/openvino_engine.py, INFERENCE_PRECISION_HINT f32 / bf16
    openvino int8+fp32 / +bf16    the QDQ model: int8 layers, float rest in f32 / bf16

Rounds alternate the contenders (A B C ... A B C ...) so background load hits all alike;
median and p90 over rounds. `--load N` starts N busy processes (pure Python spin loops,
the stand-in for the pipeline's capture/encode threads or a neighbour; `--load-duty 0.5`
makes each spin half of every 10 ms) for that phase and stops them after; `--load 0,2`
runs both phases and adds each row's loaded/quiet ratio.
Effective GFLOP/s = the fp32 graph's conv FLOPs / time; %peak against the CPU's computed ceiling
for the row's precision (cores x FLOP/cycle x clock: fp32, bf16, int8 separately, FLOP/cycle per
microarchitecture, never fitted to a measurement; see microarchitecture and flop_per_cycle),
never a BLAS matmul, which may take a slow path (on AMD it did: 167% "peak").
Writes JSON and a PNG bar chart (OpenCV) to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.int8_speed import cpu_name  # noqa: E402
from core.install_hint import extra_hint  # noqa: E402

DEFAULT_MODEL = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid" / "train.txt"
# (row name, backend, precision): the order rows are timed in each round and printed in.
ROWS = [
    ("pytorch eager", "pytorch", "fp32"),
    ("torch.compile", "pytorch", "fp32"),
    ("onnxruntime", "onnxruntime", "fp32"),
    ("onnxruntime spin", "onnxruntime", "fp32"),
    ("onnxruntime", "onnxruntime", "int8"),
    ("openvino", "openvino", "fp32"),
    ("openvino", "openvino", "bf16"),
    ("openvino", "openvino", "int8+fp32"),
    ("openvino", "openvino", "int8+bf16"),
]


def parse_sizes(text: str) -> list:
    try:
        return [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: write HxW[,HxW...], e.g. 352x480,512x1024") from None


def loadavg() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------- models and contenders
def build_models(args, size_hw, workdir: Path) -> tuple[Path, Path | str]:
    """fp32 export + cpu-flavor INT8 for one size (reused when already in --workdir); in
    place of the INT8 path, why there is none (the int8 rows are then skipped with it)."""
    from app.cli import main as cli

    h, w = size_hw
    fp32, int8 = workdir / f"r18_{h}x{w}.onnx", workdir / f"r18_{h}x{w}.int8.onnx"
    weights = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--random-init"]
    if not fp32.is_file():
        print(f"[{h}x{w}] export -> {fp32}", file=sys.stderr)
        if cli(["export", "--model", args.model, *weights, "--size", f"{h}x{w}", "-o", str(fp32)]):
            raise SystemExit(f"export failed for {h}x{w}")
    if not int8.is_file():
        if not Path(args.calib_data).exists():
            return fp32, f"no calibration images at {args.calib_data} (--calib-data)"
        print(f"[{h}x{w}] calibrate {args.num_images} images -> {int8}", file=sys.stderr)
        if cli(["calibrate", "--onnx", str(fp32), "--data", str(args.calib_data), "--num-images",
                str(args.num_images), "--target", "cpu", "--quiet", "-o", str(int8)]):
            return fp32, "bisenet calibrate failed (its error is above)"
    return fp32, int8


def make_contender(name, backend, precision, fp32: Path, int8: Path, args, size_hw):
    """-> a function of the input batch, or a string: why this row is skipped."""
    if precision.startswith("int8") and isinstance(int8, str):
        return int8
    try:
        if backend == "pytorch":
            return torch_contender(name, args, size_hw)
        if backend == "onnxruntime":
            from engines.onnx_engine import OnnxEngine

            engine = OnnxEngine(int8 if precision == "int8" else fp32, threads=args.threads,
                                spinning=name.endswith("spin"))
        else:
            from engines.openvino_engine import OpenVinoEngine

            engine = OpenVinoEngine(int8 if precision.startswith("int8") else fp32,
                                    precision=precision.split("+")[-1], threads=args.threads)
    except (ImportError, RuntimeError, ValueError) as e:
        return str(e).splitlines()[0]
    return engine.infer


def torch_contender(name, args, size_hw):
    try:
        import torch
    except ImportError:
        return f"torch is not installed ({extra_hint('train', 'torch')})"
    from engines.export import build_model
    from core.model_config import load_model_config

    torch.set_num_threads(args.threads)
    model = build_model(load_model_config(args.model), args.checkpoint, random_init=not args.checkpoint)[0]
    if name == "torch.compile":
        if args.no_compile:
            return "--no-compile"
        try:
            model = torch.compile(model)
            t = time.perf_counter()
            with torch.no_grad():
                model(torch.zeros(1, 3, *size_hw))
            print(f"[{size_hw[0]}x{size_hw[1]}] torch.compile: first call {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
        except Exception as e:   # inductor fails in many ways (no compiler, unsupported op, ...)
            return f"torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"

    def run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1)
    return run


# ---------------------------------------------------------------- measuring
def conv_gflop(onnx_path: Path) -> float:
    """2 x multiply-adds of every Conv in the fp32 graph (shapes from ONNX shape inference)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in inits:
            n, cout, ho, wo = shapes[node.output[0]]
            _, cin_per_group, kh, kw = inits[node.input[1]]
            total += 2 * n * cout * ho * wo * cin_per_group * kh * kw
    return total / 1e9


def cpuinfo_ids(text: str | None = None) -> tuple[str, int | None, int | None]:
    """(vendor_id, cpu family, model) of the first processor in /proc/cpuinfo; None where absent."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "cpu family", "model") and key not in found:
            found[key] = value.strip()
    number = (lambda v: int(v) if v and v.isdigit() else None)
    return found.get("vendor_id", ""), number(found.get("cpu family")), number(found.get("model"))


def microarchitecture(cpu, family: int | None = None, model: int | None = None) -> tuple[str, int, str]:
    """(name, fp32 FLOP per cycle per core, a caveat or ""), from the vendor, family/model
    (/proc/cpuinfo) and the ISA. fp32 FLOP/cycle = 2 (an FMA is a multiply and an add) x fp32
    lanes per FMA pipe x FMA pipes:
      AMD Zen 5 (family 26): 2 x 512-bit pipes = 64 (the mobile parts run AVX-512 on 256-bit: 32)
      AMD Zen 4 (family 25 with AVX-512): AVX-512 double-pumped on 2 x 256-bit pipes = 32
      AMD Zen 3 / Zen 2 (family 25 / 23, AVX2): 2 x 256-bit FMA = 32; Zen 1 (23, model < 0x30): 2 x 128-bit = 16
      Intel with AVX-512: 2 x 512-bit FMA units = 64; Skylake-SP/Cascade Lake Bronze, Silver
        and most Gold 5xxx have ONE unit (32): named when the model name says so, else 64 (the bound)
      Intel AVX2 (Haswell and later client cores): 2 x 256-bit FMA = 32
    A VM's model name ("Intel Xeon Processor") and model number may be generic: the ISA decides then."""
    amd = "AMD" in cpu.model or family in (23, 25, 26)   # the Zen families; Intel's are 6, 15, 18, 19
    if amd:
        if family == 26 or (family is None and "9005" in cpu.model):
            return "AMD Zen 5", 64, "Zen 5 mobile parts (Strix Point) have 256-bit pipes: 32"
        if cpu.has("avx512"):
            return "AMD Zen 4", 32, ""
        if family == 23 and model is not None and model < 0x30:
            return "AMD Zen 1", 16, ""
        if cpu.has("avx2"):
            return ("AMD Zen 2" if family == 23 else "AMD Zen 3" if family == 25 else "AMD AVX2"), 32, ""
        return "AMD (no AVX2)", 16, ""
    if cpu.has("avx512"):
        name = "Intel with AMX (Sapphire Rapids or later)" if cpu.has("amx") else "Intel with AVX-512"
        one_unit = re.search(r"\b(Bronze|Silver)\b|\bGold 5[12]\d\d", cpu.model)
        if one_unit:
            return name, 32, f"{one_unit.group(0)}: one 512-bit FMA unit"
        return name, 64, ("" if cpu.has("amx") else "two 512-bit FMA units assumed (Skylake/Cascade Lake Bronze, "
                          "Silver and most Gold 5xxx have one: 32)")
    if cpu.has("avx2"):
        return "Intel AVX2", 32, ""
    return "no AVX2", 16, ""


def flop_per_cycle(cpu, family: int | None = None, model: int | None = None) -> dict:
    """Peak FLOP (int8: ops) per cycle per core. fp32: the microarchitecture's FMA pipes
    (microarchitecture()). bf16: AVX512-BF16's dot product does 2 bf16 pairs per fp32 lane
    (2x fp32); AMX's tile unit 1024 bf16 FLOP/cycle/core. int8: a 32-bit lane holds 4 u8xs8
    products (VNNI vpdpbusd; AVX2's vpmaddubsw reaches the same multiply rate), 4x fp32; AMX
    2048 int8 ops/cycle/core (Intel's figures for Sapphire Rapids: a 16x32 by 32x16 int8 tile
    multiply, 16 cycles). An upper bound on purpose: no kernel reaches it, so no row may
    exceed 100% at the right clock."""
    fp32 = microarchitecture(cpu, family, model)[1]
    return {"fp32": fp32,
            "bf16": 1024 if cpu.has("amx") else 2 * fp32 if cpu.has("bf16") else fp32,
            "int8": 2048 if cpu.has("amx") else 4 * fp32}


def full_width_matmul_gflops(threads: int, n: int = 1024) -> float | None:
    """Best of 10 fp32 n x n matmuls through OpenVINO (oneDNN's JIT kernels use the CPU's full
    vector width, unlike a BLAS that may take a slow path on AMD): a check of the clock."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return None
    a = ops.parameter([n, n], np.float32)
    model = ov.Model([ops.matmul(a, ops.constant(np.random.rand(n, n).astype(np.float32)), False, False)], [a])
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": threads}).create_infer_request()
    x = np.random.rand(n, n).astype(np.float32)
    request.infer({0: x})
    return 2 * n ** 3 / min(_timed(request.infer, {0: x}) for _ in range(10)) / 1e9


def max_clock_ghz() -> tuple[float, str]:
    """The highest clock this box says it has: cpufreq's cpuinfo_max_freq (turbo), else
    /proc/cpuinfo's MHz (a VM reports its base clock there), else 3.0 GHz."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    from engines.cpu_features import detect

    mhz = detect().mhz
    return ((mhz / 1000, "/proc/cpuinfo, a VM's base clock: turbo may be higher, give --clock-ghz") if mhz
            else (3.0, "assumed"))


def cpu_ceiling(threads: int, clock_ghz: float | None = None) -> dict:
    """{'fp32'|'bf16'|'int8': GFLOP/s, 'how': words}: cores x FLOP/cycle (per microarchitecture)
    x clock. The clock is --clock-ghz, else the box's highest (max_clock_ghz). Never fitted to a
    measurement: a full-width OpenVINO matmul is run and printed beside it, and when it beats the
    fp32 ceiling, that is said (the clock is then above the one assumed: give --clock-ghz)."""
    from engines.cpu_features import detect

    cpu = detect()
    _, family, model = cpuinfo_ids()
    cores = min(threads, cpu.cores)
    arch, _, caveat = microarchitecture(cpu, family, model)
    per_cycle = flop_per_cycle(cpu, family, model)
    ghz, clock_from = (clock_ghz, "--clock-ghz") if clock_ghz else max_clock_ghz()
    how = f"{arch}: {cores} cores x {per_cycle['fp32']} fp32 FLOP/cycle x {ghz:.2f} GHz ({clock_from})"
    if caveat:
        how += f"; {caveat}"
    measured = full_width_matmul_gflops(cores)
    if measured:
        over = measured > cores * per_cycle["fp32"] * ghz
        how += (f"; an OpenVINO fp32 matmul reached {measured:.0f} GFLOP/s"
                + (", ABOVE this ceiling: the clock runs above the one assumed, give --clock-ghz" if over else ""))
    return ({k: round(cores * v * ghz, 1) for k, v in per_cycle.items()}
            | {"how": how, "per_cycle": per_cycle, "microarchitecture": arch})


def ceiling_kind(precision: str) -> str:
    """Which ceiling a row is measured against: int8 models by the int8 one (their convolutions
    are int8), bf16 by bf16, the rest fp32."""
    return "int8" if precision.startswith("int8") else "bf16" if precision == "bf16" else "fp32"


def _timed(fn, *a) -> float:
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


BUSY = """import sys, time
duty = float(sys.argv[1])
while True:   # busy for duty x 10 ms, then asleep for the rest of each 10 ms period
    end = time.perf_counter() + duty * 0.01
    while time.perf_counter() < end:
        pass
    if duty < 1:
        time.sleep((1 - duty) * 0.01)
"""


def start_load(n: int, duty: float) -> list:
    """N busy processes at normal priority, each CPU-bound for `duty` of the time."""
    return [subprocess.Popen([sys.executable, "-c", BUSY, str(duty)]) for _ in range(n)]


def stop_load(procs: list) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def time_round_robin(contenders: dict, x, runs: int, warmup: int) -> dict:
    """{key: [ms, ...]}: every contender once per round, rounds repeated."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn(x)
    times = {k: [] for k in contenders}
    for _ in range(runs):
        for k, fn in contenders.items():
            times[k].append(_timed(fn, x) * 1000)
    return times


# ---------------------------------------------------------------- report
def add_ratios(rows: list) -> None:
    """Ratios within one (size, load): speed-ups vs PyTorch eager, ONNX Runtime fp32 and the
    same backend's fp32 (>1 = faster); and loaded/quiet time per row."""
    def find(size, load, name, precision):
        return next((r for r in rows if r["size"] == size and r["load"] == load and r["name"] == name
                     and r["precision"] == precision and r.get("median_ms")), None)

    for r in rows:
        if not r.get("median_ms"):
            continue
        same_fp32 = {"pytorch": ("pytorch eager", "fp32"), "onnxruntime": ("onnxruntime", "fp32"),
                     "openvino": ("openvino", "fp32")}[r["backend"]]
        for key, ref in (("vs_eager", ("pytorch eager", "fp32")), ("vs_ort_fp32", ("onnxruntime", "fp32")),
                         ("vs_own_fp32", same_fp32)):
            other = find(r["size"], r["load"], *ref)
            r[key] = round(other["median_ms"] / r["median_ms"], 2) if other else None
        quiet = find(r["size"], 0, r["name"], r["precision"]) if r["load"] else None
        r["loaded_over_quiet"] = round(r["median_ms"] / quiet["median_ms"], 2) if quiet else None


def print_table(rows: list, loads: list) -> None:
    head = (f"{'size':>9} {'load':>4}  {'contender':<17} {'precision':<10} {'median':>8} {'p90':>8} {'fps':>6} "
            f"{'xEager':>6} {'xORT32':>6} {'xOwn32':>6} {'GFLOP/s':>7} {'%peak':>5}"
            + (f" {'load/quiet':>10}" if len(loads) > 1 else ""))
    print(head)
    for r in rows:
        lead = f"{r['size']:>9} {r['load']:>4}  {r['name']:<17} {r['precision']:<10}"
        if not r.get("median_ms"):
            print(f"{lead} skipped: {r['skipped']}")
            continue

        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"
        print(f"{lead} {r['median_ms']:8.1f} {r['p90_ms']:8.1f} {r['fps']:6.2f} {f(r['vs_eager'], '6.2f')} "
              f"{f(r['vs_ort_fp32'], '6.2f')} {f(r['vs_own_fp32'], '6.2f')} {r['gflops']:7.1f} {r['pct_peak']:5.0f}"
              + (f" {f(r['loaded_over_quiet'], '10.2f')}" if len(loads) > 1 else ""))


def draw_chart(rows: list, path: Path, title: str) -> None:
    """Horizontal bars of median ms per (size, load, contender), drawn with OpenCV."""
    import cv2

    done = [r for r in rows if r.get("median_ms")]
    if not done:
        return
    bar_h, left, width = 22, 430, 1200
    img = np.full((60 + bar_h * len(done) + 20, width, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    scale = (width - left - 110) / max(r["median_ms"] for r in done)
    colors = {"pytorch": (60, 60, 200), "onnxruntime": (200, 120, 30), "openvino": (60, 160, 60)}
    for i, r in enumerate(done):
        y = 50 + i * bar_h
        label = f"{r['size']} load {r['load']}  {r['name']} {r['precision']}"
        cv2.putText(img, label, (10, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x1 = left + int(r["median_ms"] * scale)
        cv2.rectangle(img, (left, y + 3), (x1, y + bar_h - 3), colors[r["backend"]], -1)
        cv2.putText(img, f"{r['median_ms']:.1f} ms", (x1 + 5, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: python bench/models.py --sizes 512x1024 --load 0,2 --runs 7")
    p.add_argument("--sizes", default="352x480,512x1024", help="HxW list, multiples of 32 (default 352x480,512x1024)")
    p.add_argument("--load", default="0", help="busy processes per phase, e.g. 0,2 (default 0: quiet only)")
    p.add_argument("--load-duty", type=float, default=1.0,
                   help="share of the time each busy process spins, 0..1 (default 1: always)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="zoo name or model YAML to export")
    p.add_argument("--checkpoint", help="checkpoint to export (default: random weights; speed does not depend on them)")
    p.add_argument("--calib-data", default=str(DEFAULT_DATA), help="INT8 calibration images (default CamVid train)")
    p.add_argument("--num-images", type=int, default=16, help="calibration images (default 16)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="inference threads for every backend")
    p.add_argument("--clock-ghz", type=float,
                   help="the CPU's highest sustained clock for the ceiling (default: cpufreq's max, else "
                   "/proc/cpuinfo's)")
    p.add_argument("--runs", type=int, default=7, help="timed rounds per phase (default 7)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", help="comma list of row names to run, e.g. 'onnxruntime,openvino' (default all)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes minutes on 2 cores)")
    p.add_argument("--workdir", default="artifacts/bench_models", help="exported models are cached here")
    p.add_argument("--out", default="artifacts/bench_models/models", help="writes OUT.json and OUT.png")
    args = p.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    loads = [int(v) for v in args.load.split(",")]
    only = set(args.only.split(",")) if args.only else None
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    ceiling = cpu_ceiling(args.threads, args.clock_ghz)
    print(f"ceiling GFLOP/s: fp32 {ceiling['fp32']:.0f}, bf16 {ceiling['bf16']:.0f}, int8 {ceiling['int8']:.0f} "
          f"({ceiling['how']}); load average {loadavg()}", file=sys.stderr)
    rows, phases = [], []
    for size in sizes:
        fp32, int8 = build_models(args, size, workdir)
        gflop = conv_gflop(fp32)
        contenders, skipped = {}, {}
        for name, backend, precision in ROWS:
            if only and name not in only:
                continue
            c = make_contender(name, backend, precision, fp32, int8, args, size)
            (skipped if isinstance(c, str) else contenders)[(name, backend, precision)] = c
        x = np.random.default_rng(0).normal(size=(1, 3, *size)).astype(np.float32)
        for load in loads:
            procs = start_load(load, args.load_duty)
            try:
                time.sleep(1.0 if load else 0.0)
                before = loadavg()
                times = time_round_robin(contenders, x, args.runs, args.warmup)
                after = loadavg()
            finally:
                stop_load(procs)
            tag = f"{size[0]}x{size[1]}"
            phases.append({"size": tag, "load": load, "load_duty": args.load_duty if load else None,
                           "loadavg_before": before, "loadavg_after": after})
            print(f"[{tag} load {load}] done; load average before {before}, after {after}", file=sys.stderr)
            for key, c in [*contenders.items(), *skipped.items()]:
                name, backend, precision = key
                row = {"size": tag, "load": load, "name": name, "backend": backend, "precision": precision}
                if key in skipped:
                    row["skipped"] = skipped[key]
                else:
                    ms = sorted(times[key])
                    med = statistics.median(ms)
                    row.update(median_ms=round(med, 2), p90_ms=round(float(np.percentile(ms, 90)), 2),
                               fps=round(1000 / med, 2), gflops=round(gflop / med * 1000, 1),
                               pct_peak=round(100 * gflop / med * 1000 / ceiling[ceiling_kind(precision)], 1))
                rows.append(row)
        del contenders
    add_ratios(rows)
    order = {key: i for i, key in enumerate(ROWS)}
    rows.sort(key=lambda r: (r["size"], r["load"], order[(r["name"], r["backend"], r["precision"])]))

    versions = {}
    for mod in ("onnxruntime", "openvino", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    command = "python bench/models.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = {"command": command.strip(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "versions": versions,
              "runs": args.runs, "warmup": args.warmup, "ceiling_gflops": ceiling, "phases": phases, "rows": rows}
    print(f"{report['cpu']}, {os.cpu_count()} cores, {args.threads} threads per backend; "
          f"{', '.join(f'{k} {v}' for k, v in versions.items() if v)}; median/p90 of {args.runs} alternating "
          f"rounds after {args.warmup} warm-up; %peak against the ceiling fp32/bf16/int8 {ceiling['fp32']:.0f}/"
          f"{ceiling['bf16']:.0f}/{ceiling['int8']:.0f} GFLOP/s ({ceiling['how']})")
    print_table(rows, loads)
    for ph in phases:
        print(f"load average {ph['size']} load {ph['load']}: before {ph['loadavg_before']}, after {ph['loadavg_after']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    draw_chart(rows, out.with_suffix(".png"), f"BiSeNetV1-R18 median ms, {report['cpu']}, {args.threads} threads, "
               f"{report['date']}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
