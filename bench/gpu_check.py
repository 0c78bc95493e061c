"""The device check: every GPU piece on a machine with an NVIDIA GPU, against its CPU reference.

    python bench/gpu_check.py --all --out artifacts/gpu_check          # everything, one go
    python bench/gpu_check.py --prepare-carry artifacts/gpu_carry      # what a bare GPU box needs (< 64 MiB)
    python bench/gpu_check.py --all --data artifacts/gpu_carry/data \\
        --checkpoint artifacts/gpu_carry/camvid_r18-d32_cpu.pth --pycuda-sdist artifacts/gpu_carry/pycuda

Steps (`--all`; without it the kernels, network and TensorRT steps; `--only a,b` picks some):

- pycuda-sdist   pycuda built from a carried sdist (--pycuda-sdist DIR: pycuda-*.tar.gz and its
                 dependency wheels) when pycuda is not importable (optional)
- kernels-cupy   engines/preprocess.cu, engines/overlay.cu through CuPy vs core/preprocess.py and
                 core/overlay.py on real frames: float32 and float16, single and batched (grid z = 3)
                 frames, and a CUDA graph replay
- kernels-pycuda the same through pycuda (optional: pycuda may be absent)
- network        the PyTorch network on CUDA (fp32 with TF32 off, fp16 autocast) vs the CPU
- cuda-engine    engines.torch_cuda_engine.TorchCudaEngine with the trained CamVid checkpoint, made
                 in the main thread and run in a worker thread: fused labels vs the CPU pipeline
                 (>= 99.9% of pixels on every frame, fp32), a batch of 3 = 3 single frames, graph
                 replay = eager, fused overlay = the CPU overlay of those labels; fp16 agreement;
                 GPU ms vs CPU ms per stage
- run-camera     run_camera.py on the street clip as 3 cameras with --device cuda: every frame
                 written, batches of more than one frame, fps and stage ms from its latency log
- gpu-tests      pytest -m gpu on the kernel, CUDA engine and TensorRT tests (optional)
- tensorrt       TensorRT fp32/fp16 engines built and run in a worker thread (optional)

Writes OUT/gpu_check.json (machine, versions, every step with status and reason, the rows)
and OUT/gpu_check.md (the table for docs/gpu.md). Exits 0 only when every required step ran
and passed; 1 otherwise, with "nothing ran" when no step could run (a machine without a GPU).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.overlay import palette_bgr, render_overlay   # noqa: E402
from core.preprocess import preprocess   # noqa: E402
from engines import cuda_kernels as ck  # noqa: E402
from core.model_config import load_model_config   # noqa: E402

CAMVID = "bisenetv1_r18-d32_camvid-360x480"      # the trained checkpoint's model
KERNEL_MODEL = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
CHECKPOINT_NAME = "camvid_r18-d32_cpu.pth"
CLIP = Path("samples") / "camvid_0016E5_15fps.mp4"
CITYSCAPES = Path("samples") / "cityscapes_street_2048x1024.png"
CARRY_LIMIT_MIB = 64
AGREE_FP32 = 0.999
ROWS = []     # (stage, backend, cpu_ms, gpu_ms, max_diff, note)


class NotRun(Exception):
    """The step cannot run here; the message says what is missing."""


# step name -> (required, what it needs from the machine: keys of probe_facts, what it checks)
STEPS = {
    "pycuda-sdist": (False, ("pycuda_sdist",), "pycuda built from the carried sdist"),
    "kernels-cupy": (True, ("cupy", "data"), "CUDA kernels through CuPy vs the CPU references"),
    "kernels-pycuda": (False, ("pycuda", "data"), "CUDA kernels through pycuda vs the CPU references"),
    "network": (True, ("torch_cuda", "data"), "PyTorch network on CUDA vs the CPU"),
    "cuda-engine": (True, ("torch_cuda", "cupy", "data", "checkpoint"),
                    "fused CUDA engine vs the CPU pipeline, threads, batches, graphs, stage ms"),
    "run-camera": (True, ("torch_cuda", "cupy", "data", "checkpoint", "run_camera_device"),
                   "run_camera.py, street clip, 3 cameras batched, --device cuda"),
    "gpu-tests": (False, ("pytest", "any_gpu"), "pytest -m gpu (kernels, CUDA engine, TensorRT)"),
    "tensorrt": (False, ("tensorrt", "pycuda", "torch_cuda", "data"), "TensorRT builds and runs"),
}
DEFAULT_STEPS = ("kernels-cupy", "kernels-pycuda", "network", "tensorrt")


def plan_steps(facts: dict, names) -> list:
    """[(name, required, reason it cannot run or None)] in STEPS order. facts: need -> None when
    this machine has it, else the reason it does not."""
    plan = []
    for name, (required, needs, _) in STEPS.items():
        if name in names:
            reason = next((facts.get(need, f"{need}: not checked") for need in needs if facts.get(need, "?")), None)
            plan.append((name, required, reason))
    return plan


def exit_status(results: list) -> tuple:
    """(exit code, one-line summary): 0 only when every required step ran and passed."""
    ran = [r for r in results if r["status"] != "not run"]
    if not ran:
        return 1, "nothing ran: " + "; ".join(f"{r['name']}: {r['reason']}" for r in results if r["required"])
    failed = [r["name"] for r in results if r["status"] == "failed"]
    missing = [r["name"] for r in results if r["required"] and r["status"] == "not run"]
    if failed or missing:
        said = [f"failed: {', '.join(failed)}"] if failed else []
        said += [f"did not run: {', '.join(missing)}"] if missing else []
        return 1, "; ".join(said)
    return 0, f"all {len(ran)} steps that ran passed"


def row(stage, backend, cpu_ms, gpu_ms, diff, note=""):
    ROWS.append((stage, backend, cpu_ms, gpu_ms, diff, note))
    print(f"  {stage:<60} {backend:<10} cpu {fmt(cpu_ms):>7} ms  gpu {fmt(gpu_ms):>7} ms  "
          f"max diff {fmt(diff):>8}  {note}", flush=True)


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def time_ms(fn, sync, repeat, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t) * 1000 / repeat


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


class Expect:
    """Collects failed checks of one step; `done()` raises them together."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what: str) -> None:
        if not ok:
            self.failures.append(what)

    def done(self) -> None:
        if self.failures:
            raise AssertionError("; ".join(self.failures))


# -- what this machine has ----------------------------------------------------------------------

def find_shared(kind: str) -> Path | None:
    for parent in ROOT.parents:
        if (parent / "shared" / kind).is_dir():
            return parent / "shared" / kind
    return None


def why_not_importable(name: str) -> str | None:
    try:
        importlib.import_module(name)
        return None
    except Exception as e:   # noqa: BLE001  (an import of a GPU package can fail many ways)
        return f"{name} not importable ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"


def probe_facts(args) -> dict:
    """need -> None (this machine has it) or the reason it does not."""
    facts = {name: why_not_importable(name) for name in ("cupy", "pycuda.driver", "tensorrt", "pytest")}
    facts["pycuda"] = facts.pop("pycuda.driver")
    try:
        import torch
        facts["torch_cuda"] = None if torch.cuda.is_available() else \
            f"torch {torch.__version__} has no usable CUDA (torch.cuda.is_available() is False)"
    except ImportError:
        facts["torch_cuda"] = "torch not installed"
    if facts["cupy"] is None:
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as e:   # noqa: BLE001  (no driver, no device)
            facts["cupy"] = f"CuPy finds no GPU ({str(e).splitlines()[0][:100]})"
    facts["any_gpu"] = facts["cupy"] and facts["torch_cuda"]
    sdist = sorted(Path(args.pycuda_sdist).glob("pycuda-*.tar.gz")) if args.pycuda_sdist else []
    facts["pycuda_sdist"] = ("pycuda is importable already" if facts["pycuda"] is None else
                             None if sdist else "no pycuda sdist carried (--pycuda-sdist DIR)")
    if facts["pycuda"] and sdist:
        facts["pycuda"] = None               # built by the pycuda-sdist step first
    data = Path(args.data) if args.data else None
    wanted = [Path("camvid") / "val", Path("camvid") / "valannot", CLIP, CITYSCAPES]
    facts["data"] = ("no data folder (../shared/data or --data DIR)" if data is None else
                     next((f"{data / p} missing" for p in wanted if not (data / p).exists()), None))
    facts["checkpoint"] = None if args.checkpoint and Path(args.checkpoint).is_file() else \
        f"no trained CamVid checkpoint ({args.checkpoint or CHECKPOINT_NAME} not found; --checkpoint PTH)"
    help_text = subprocess.run([sys.executable, str(ROOT / "run_camera.py"), "--help"], cwd=ROOT,
                               capture_output=True, text=True).stdout
    facts["run_camera_device"] = None if "--device" in help_text else \
        "run_camera.py has no --device flag (a checkout older than the flag)"
    return facts


def machine_lines() -> list:
    from engines.fingerprint import nvidia_driver_version
    lines = [f"date {time.strftime('%Y-%m-%d %H:%M %Z')}, python {platform.python_version()}, numpy {np.__version__}, "
             f"opencv {cv2.__version__}"]
    for mod in ("torch", "cupy", "pycuda", "tensorrt", "onnxruntime"):
        try:
            m = importlib.import_module(mod)
            v = getattr(m, "__version__", None) or getattr(m, "VERSION_TEXT", None) or "imported"
            if mod == "torch":
                v += f" (CUDA {m.version.cuda})"
        except Exception:   # noqa: BLE001
            v = "not importable"
        lines.append(f"{mod} {v}")
    try:
        gpu, cc = ck.gpu_identity()
        lines.append(f"GPU {gpu} (compute capability {cc}), driver {nvidia_driver_version() or 'unknown'}")
    except Exception as e:   # noqa: BLE001
        lines.append(f"GPU none ({str(e).splitlines()[0]})")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?") \
        if Path("/proc/cpuinfo").is_file() else platform.processor()
    lines.append(f"CPU {cpu}, {os.cpu_count()} cores")
    return lines


# -- the steps --------------------------------------------------------------------------------

class Context:
    """What the steps share: frames, references, options, paths added for subprocesses."""

    def __init__(self, args):
        self.args = args
        self.data = Path(args.data) if args.data else None
        self.checkpoint = args.checkpoint
        self.repeat = args.repeat
        self.size_hw = tuple(int(v) for v in args.size.lower().split("x"))
        self.extra_path = []                   # site dirs (pycuda built here) for subprocesses
        self._frames = None

    @property
    def frames(self) -> list:
        """[(name, BGR)]: --frames CamVid val frames, then the Cityscapes 2048x1024 frame."""
        if self._frames is None:
            paths = sorted((self.data / "camvid" / "val").glob("*.jpg"))[:max(3, self.args.frames)]
            self._frames = [(p.name, cv2.imread(str(p))) for p in paths]
            self._frames.append(("cityscapes 2048x1024", cv2.imread(str(self.data / CITYSCAPES))))
        return self._frames

    @property
    def camvid(self) -> list:
        return [f for name, f in self.frames if name.endswith(".jpg")]

    def labels_full(self):
        path = sorted((self.data / "camvid" / "valannot").glob("*.png"))[0]
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)

    def env(self) -> dict:
        path = os.pathsep.join([str(ROOT), *self.extra_path, os.environ.get("PYTHONPATH", "")])
        return {**os.environ, "PYTHONPATH": path}


def step_pycuda_sdist(ctx):
    sdist_dir = Path(ctx.args.pycuda_sdist)
    sdist = sorted(sdist_dir.glob("pycuda-*.tar.gz"))[-1]
    site = Path(tempfile.mkdtemp(prefix="pycuda-site-"))
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                        "--target", str(site), *map(str, sorted(sdist_dir.glob("*.whl"))), str(sdist)],
                       capture_output=True, text=True, timeout=400)
    if r.returncode != 0:
        raise AssertionError(f"pip could not build {sdist.name}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    sys.path.insert(0, str(site))
    ctx.extra_path.append(str(site))
    importlib.invalidate_caches()
    import pycuda.driver  # noqa: F401
    row(f"pycuda built from {sdist.name}", "pip", None, None, None, f"{time.monotonic() - t:.0f} s")


def step_kernels(ctx, backend):
    try:
        k = ck.CudaKernels(backend)
    except Exception as e:   # noqa: BLE001
        raise NotRun(str(e).splitlines()[0]) from None
    cfg = load_model_config(KERNEL_MODEL)
    expect = Expect()
    with k.context:                      # this script's own array calls (.set, .get) need it current
        check_kernels(k, backend, ctx.frames, ctx.labels_full(), cfg, ctx.size_hw, ctx.repeat, expect)
        check_batched_kernels(k, backend, ctx.camvid[:3], ctx.labels_full(), cfg, expect)
    expect.done()


def check_kernels(k, backend, frames, labels_full, cfg, size_hw, repeat, expect):
    lut = palette_bgr(np.asarray(cfg.palette))
    sync = k.synchronize
    for name, frame in frames:
        for dtype in (np.float32, np.float16):
            ref = preprocess(frame, size_hw, cfg.mean, cfg.std, dtype=dtype)
            got = k.preprocess(frame, size_hw, cfg.mean, cfg.std, dtype)
            diff = max_diff(got, ref)
            expect(diff <= 1e-3, f"preprocess {np.dtype(dtype).name} {name}: max diff {diff:.3g} > 1e-3")
            exact = np.array_equal(got.view(np.uint8), ref.view(np.uint8))
            h, w = frame.shape[:2]
            pre = k.preprocessor(h, w, *size_hw, cfg.mean, cfg.std, dtype)
            src, out = k.to_device(frame), k.empty((1, 3, *size_hw), np.dtype(dtype))
            gpu = time_ms(lambda: pre(k.ptr(src), k.ptr(out)), sync, repeat)
            cpu = time_ms(lambda: preprocess(frame, size_hw, cfg.mean, cfg.std, dtype=dtype), lambda: None, repeat)
            row(f"preprocess {w}x{h}->{size_hw[1]}x{size_hw[0]} {np.dtype(dtype).name} ({name})", backend,
                cpu, gpu, diff, "bit-exact" if exact else "")
    name, frame = frames[-1]
    h, w = frame.shape[:2]
    labels = cv2.resize(labels_full, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    render = k.overlay_renderer(lut)
    img_d, lab_d = k.to_device(frame), k.to_device(labels)
    for mode in ck.OVERLAY_MODES:
        ref = render_overlay(frame, labels, lut, alpha=0.5, mode=mode)
        got = k.overlay(frame, labels, lut, 0.5, mode)
        expect(max_diff(got, ref) <= 1, f"overlay {mode}: max diff {max_diff(got, ref)} > 1")
        out = k.empty(ref.shape, np.uint8)
        gpu = time_ms(lambda: render(k.ptr(img_d), h, w, k.ptr(lab_d), *labels.shape, k.ptr(out), 0.5, mode),
                      sync, repeat)
        cpu = time_ms(lambda: render_overlay(frame, labels, lut, alpha=0.5, mode=mode), lambda: None, repeat)
        row(f"overlay {mode} {w}x{h} labels {size_hw[1]}x{size_hw[0]} ({name})", backend, cpu, gpu,
            max_diff(got, ref), "bit-exact" if np.array_equal(got, ref) else "")
    check_graph(k, backend, frame, labels, lut, cfg, size_hw, repeat, expect)


def check_batched_kernels(k, backend, frames, labels_full, cfg, expect):
    """Three frames in one launch (grid z = 3): each equals its single-frame launch bit for bit."""
    stack = np.stack(frames)
    size_hw = (352, 480)
    labels = np.stack([labels_full[:352].astype(np.int32)] * len(frames))
    labels[1] = labels[1][::-1]
    lut = palette_bgr(np.asarray(cfg.palette))
    same = True
    for dtype in (np.float32, np.float16):
        got = k.preprocess(stack, size_hw, cfg.mean, cfg.std, dtype)
        for i, frame in enumerate(frames):
            same &= np.array_equal(got[i:i + 1], k.preprocess(frame, size_hw, cfg.mean, cfg.std, dtype))
    over = k.overlay(stack, labels, lut, 0.4, "side-by-side")
    for i, frame in enumerate(frames):
        same &= np.array_equal(over[i], k.overlay(frame, labels[i], lut, 0.4, "side-by-side"))
    expect(same, "a batched launch differs from its single-frame launches")
    row(f"preprocess f32/f16 + overlay, {len(frames)} frames in one launch", backend, None, None, None,
        "each frame = its single-frame launch" if same else "DIFFERS from single-frame launches")


def check_graph(k, backend, frame, labels, lut, cfg, size_hw, repeat, expect):
    """preprocess + overlay captured into a CUDA graph (ck.CudaGraph) on a stream, then replayed."""
    h, w = frame.shape[:2]
    stream = k.stream()
    pre = k.preprocessor(h, w, *size_hw, cfg.mean, cfg.std)
    render = k.overlay_renderer(lut)
    src, lab = k.to_device(frame), k.to_device(labels)
    x, out = k.empty((1, 3, *size_hw), np.float32), k.empty(frame.shape, np.uint8)

    def work():
        pre(k.ptr(src), k.ptr(x), stream)
        render(k.ptr(src), h, w, k.ptr(lab), *size_hw, k.ptr(out), 0.5, "overlay", stream=stream)

    work()
    stream.synchronize()
    graph = ck.CudaGraph(k.stream_handle(stream), work, k.context)
    x.set(np.zeros(x.shape, np.float32))
    out.set(np.zeros(out.shape, np.uint8))
    k.synchronize()                      # the zeroing is done before the replay
    graph.launch()
    stream.synchronize()
    diff = max(max_diff(x.get(), preprocess(frame, size_hw, cfg.mean, cfg.std)),
               max_diff(out.get(), render_overlay(frame, labels, lut, alpha=0.5, mode="overlay")))
    expect(diff <= 1, f"CUDA graph replay: max diff {diff:.3g} > 1")
    direct = time_ms(work, stream.synchronize, repeat)
    replay = time_ms(graph.launch, stream.synchronize, repeat)
    row(f"preprocess+overlay {w}x{h}, CUDA graph replay", backend, None, replay, diff,
        f"same two launches without the graph: {direct:.3g} ms")


def seeded_network(cfg, x):
    """BiSeNetV1 with seeded random weights (no checkpoint needed) whose BatchNorm statistics
    come from the frame itself, so activations and logits have a realistic spread rather
    than the near-constant output of untouched random BatchNorm."""
    import torch
    from training.model import BiSeNetV1
    torch.manual_seed(0)
    net = BiSeNetV1(cfg, with_aux=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None                  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        net.train()(torch.from_numpy(np.concatenate([x, x[..., ::-1]])))   # 2: the GAP branch needs it
    return net.eval()


def step_network(ctx):
    """The seeded network (no checkpoint needed) on CUDA vs the CPU, on the Cityscapes frame."""
    import torch
    from training.model import BiSeNetV1
    cfg, size_hw, repeat = load_model_config(KERNEL_MODEL), ctx.size_hw, ctx.repeat
    torch.backends.cudnn.allow_tf32 = False          # fp32 means fp32 for the comparison
    torch.backends.cuda.matmul.allow_tf32 = False
    name, frame = ctx.frames[-1]
    x = preprocess(frame, size_hw, cfg.mean, cfg.std)
    net_cpu = seeded_network(cfg, x)
    net_gpu = BiSeNetV1(cfg, with_aux=False).eval().cuda()
    net_gpu.load_state_dict(net_cpu.state_dict())
    with torch.inference_mode():
        ref = net_cpu(torch.from_numpy(x)).numpy()
        xg = torch.from_numpy(x).cuda()
        got = net_gpu(xg).float().cpu().numpy()
        with torch.autocast("cuda", dtype=torch.float16):
            got16 = net_gpu(xg).float().cpu().numpy()
        cpu = time_ms(lambda: net_cpu(torch.from_numpy(x)), lambda: None, max(2, repeat // 10), warmup=1)
        gpu = time_ms(lambda: net_gpu(xg), torch.cuda.synchronize, repeat)

        def fp16():
            with torch.autocast("cuda", dtype=torch.float16):
                net_gpu(xg)
        gpu16 = time_ms(fp16, torch.cuda.synchronize, repeat)
    scale = float(np.abs(ref).max())
    classes = len(np.unique(ref.argmax(1)))
    agree = lambda a: float((a.argmax(1) == ref.argmax(1)).mean()) * 100  # noqa: E731
    row(f"BiSeNetV1 R{cfg.backbone_depth} {size_hw[1]}x{size_hw[0]} fp32, TF32 off (seeded weights)", "torch",
        cpu, gpu, max_diff(got, ref),
        f"max abs logit {scale:.3g}, {classes} classes in the labels; labels agree {agree(got):.2f}%")
    row(f"BiSeNetV1 R{cfg.backbone_depth} {size_hw[1]}x{size_hw[0]} fp16 autocast", "torch",
        cpu, gpu16, max_diff(got16, ref), f"labels agree {agree(got16):.2f}%")
    if agree(got) < AGREE_FP32 * 100:
        raise AssertionError(f"fp32 labels agree on {agree(got):.3f}% of pixels, under {AGREE_FP32:.1%}")


def step_tensorrt(ctx):
    import torch
    from core.sidecar import write_sidecar
    from engines.tensorrt_build import build_engine
    from engines.tensorrt_engine import TensorRTEngine
    cfg, size_hw, repeat, frames = load_model_config(KERNEL_MODEL), ctx.size_hw, ctx.repeat, ctx.frames
    import tempfile
    name, frame = frames[-1]
    x = preprocess(frame, size_hw, cfg.mean, cfg.std)
    net = seeded_network(cfg, x)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()

    class Half(torch.nn.Module):            # what `bisenet export --precision fp16` writes
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.half()).float()

    import copy
    with tempfile.TemporaryDirectory() as tmp:
        # Plain exports with their sidecars, so this check needs nothing but torch.
        onnx_paths = {}
        for precision, model in (("fp32", net), ("fp16", Half(copy.deepcopy(net).half()))):
            onnx_paths[precision] = Path(tmp) / f"model.{precision}.onnx"
            torch.onnx.export(model, (torch.from_numpy(x),), str(onnx_paths[precision]), input_names=["input"],
                              output_names=["logits"], opset_version=17, dynamo=False)
            write_sidecar(onnx_paths[precision], {
                "model": cfg.name, "classes": cfg.class_names, "palette": cfg.palette, "mean": cfg.mean,
                "std": cfg.std, "input_shape": [1, 3, *size_hw], "head": "logits", "precision": precision})
        for precision, onnx_path in onnx_paths.items():
            engine_path = Path(tmp) / f"model.{precision}.engine"
            build_engine(onnx_path, engine_path, precision=precision)
            eng = TensorRTEngine(engine_path)    # made here, run in a worker thread as the app does
            with ThreadPoolExecutor(1) as worker:
                got = worker.submit(eng.infer_logits, x).result()
                gpu = worker.submit(time_ms, lambda: eng.infer_logits(x), lambda: None, repeat).result()
            agree = float((got.argmax(1) == ref.argmax(1)).mean()) * 100
            row(f"TensorRT {precision} {size_hw[1]}x{size_hw[0]} (host in/out)", "tensorrt", None, gpu,
                max_diff(got, ref), f"labels agree {agree:.2f}%")
            eng.close()




def step_cuda_engine(ctx):
    """The fused CUDA engine, made here (the main thread) and run in a worker thread as the app's
    inference thread runs it, against the CPU pipeline with the same trained weights."""
    import torch
    from engines.torch_cuda_engine import TorchCudaEngine
    from engines.torch_engine import TorchEngine
    cfg = load_model_config(CAMVID)
    frames = ctx.camvid[:3]
    size = tuple(cfg.crop_size)
    lut = palette_bgr(np.asarray(cfg.palette))
    expect, repeat = Expect(), ctx.repeat
    cpu = TorchEngine(cfg, ctx.checkpoint)
    cpu_x = [preprocess(f, size, cfg.mean, cfg.std) for f in frames]
    ref = [cpu.infer(x)[0] for x in cpu_x]
    engines = {"graph": TorchCudaEngine(cfg, ctx.checkpoint, max_batch=3, cuda_graph=True),
               "eager": TorchCudaEngine(cfg, ctx.checkpoint, max_batch=3, cuda_graph=False),
               "fp16": TorchCudaEngine(cfg, ctx.checkpoint, precision="fp16", max_batch=3, cuda_graph=True)}
    eng = engines["graph"]
    h, w = frames[0].shape[:2]

    def cpu_chain(frame):
        x = preprocess(frame, size, cfg.mean, cfg.std)
        return render_overlay(frame, cpu.infer(x)[0], lut, 0.5, "overlay")

    with ThreadPoolExecutor(1, thread_name_prefix="inference") as worker:
        def run(fn, *a):
            return worker.submit(fn, *a).result()

        got = run(eng.run_fused_labels, frames)
        replay = run(eng.run_fused_labels, frames)
        single = [run(eng.run_fused_labels, [f])[0] for f in frames]
        eager = run(engines["eager"].run_fused_labels, frames)
        overlays = run(eng.run_fused_frames, frames, 0.5, "overlay")
        half = run(engines["fp16"].run_fused_labels, frames)
        host = run(eng.infer, np.concatenate(cpu_x))
        agree = [float((g == r).mean()) for g, r in zip(got, ref)]
        agree16 = [float((g == r).mean()) for g, r in zip(half, ref)]
        expect(min(agree) >= AGREE_FP32, f"fp32 fused labels agree with the CPU pipeline on {min(agree):.4%} of "
                                         f"pixels (worst frame), under {AGREE_FP32:.1%}")
        expect(all(np.array_equal(a, b) for a, b in zip(got, replay)), "a graph replay gave other labels")
        expect(all(np.array_equal(a, b) for a, b in zip(got, single)), "a batch of 3 differs from single frames")
        expect(all(np.array_equal(a, b) for a, b in zip(got, eager)), "graph and eager labels differ")
        expect(all((a == b).mean() >= AGREE_FP32 for a, b in zip(host, got)), "infer() differs from the fused path")
        same_overlay = all(np.array_equal(o, render_overlay(f, g, lut, 0.5, "overlay"))
                           for o, f, g in zip(overlays, frames, got))
        expect(same_overlay, "the fused overlay differs from the CPU overlay of the fused labels")
        row(f"fused labels vs CPU pipeline, {len(frames)} CamVid frames {w}x{h}, net {size[1]}x{size[0]} fp32",
            "cuda-engine", None, None, None,
            f"agree {min(agree):.4%} worst frame, {np.mean(agree):.4%} mean; made in the main thread, run in a "
            f"worker; batch of 3 = single frames, graph = eager; overlay {'=' if same_overlay else '!='} CPU overlay")
        row("fused labels fp16 (half weights, float16 input from the kernel) vs CPU fp32", "cuda-engine", None, None,
            None, f"agree {min(agree16):.3%} worst frame, {np.mean(agree16):.3%} mean")

        # -- GPU ms vs CPU ms per stage, all timed in the worker thread ----------------------------
        slow = max(2, repeat // 10)
        x = cpu_x[0]
        gpu = run(time_ms, lambda: eng.infer(x), torch.cuda.synchronize, repeat)
        cpu_ms = time_ms(lambda: cpu.infer(x), lambda: None, slow, warmup=1)
        row(f"network {size[1]}x{size[0]} fp32, host in/out (infer)", "cuda-engine", cpu_ms, gpu, None,
            f"{1000 / gpu:.0f} fps GPU, {1000 / cpu_ms:.1f} fps CPU")
        labels = ref[0]
        cpu_ms = time_ms(lambda: render_overlay(frames[0], labels, lut, 0.5, "overlay"), lambda: None, repeat)
        k = eng.kernels
        with k.context:
            render = k.overlay_renderer(lut)
            frame_d, out_d, lab_d = k.to_device(frames[0]), k.empty(frames[0].shape, np.uint8), k.to_device(labels)
            gpu = run(time_ms, lambda: render(k.ptr(frame_d), h, w, k.ptr(lab_d), *size, k.ptr(out_d)),
                      k.synchronize, repeat)
        row(f"overlay {w}x{h} from labels {size[1]}x{size[0]}", "cuda-engine", cpu_ms, gpu, None, "")
        for name, e in engines.items():
            for n in (1, 3):
                batch = frames[:n]
                gpu = run(time_ms, lambda: e.run_fused_frames(batch), lambda: None, repeat)
                cpu_ms = time_ms(lambda: [cpu_chain(f) for f in batch], lambda: None, slow, warmup=1)
                row(f"fused frame->overlay, {n} frame{'s' if n > 1 else ''} {w}x{h} ({name})", "cuda-engine",
                    cpu_ms, gpu, None, f"{1000 * n / gpu:.0f} fps GPU, {1000 * n / cpu_ms:.1f} fps CPU")
    for e in engines.values():
        e.close()
    expect.done()


def latency_summary(rows: list) -> dict:
    written = [r for r in rows if not r["dropped"]]
    out = {"written": len(written), "dropped": len(rows) - len(written),
           "cameras": sorted({r["camera"] for r in rows}),
           "mean_batch": float(np.mean([r["batch_size"] for r in written])) if written else 0.0}
    for stage in ("preprocess", "inference", "overlay", "e2e"):
        values = [r[f"{stage}_ms"] for r in written if r[f"{stage}_ms"] is not None]
        out[f"{stage}_p50_ms"] = float(np.median(values)) if values else None
    span = max((r["capture_s"] for r in written), default=0.0)
    out["fps"] = len(written) / span if span > 0 else None
    return out


def step_run_camera(ctx):
    """The app itself: three cameras on the street clip, one CUDA engine, batched fused frames."""
    from app.latency import read_log
    clip = ctx.data / CLIP
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "latency.csv"
        cmd = [sys.executable, str(ROOT / "run_camera.py"), *[a for _ in range(3) for a in ("--source", str(clip))],
               "--model", CAMVID, "--checkpoint", str(ctx.checkpoint), "--device", "cuda", "--output", "null",
               "--latency-log", str(log)]
        t = time.monotonic()
        r = subprocess.run(cmd, cwd=ROOT, env=ctx.env(), capture_output=True, text=True, timeout=240)
        seconds = time.monotonic() - t
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssertionError(f"run_camera.py exited {r.returncode}: {last}")
        s = latency_summary(read_log(log))
    summary_fps = re.search(r"all cameras: .*?fps ([0-9.]+)", r.stdout + r.stderr)
    expect = Expect()
    expect(s["dropped"] == 0, f"{s['dropped']} frames dropped")
    expect(len(s["cameras"]) == 3, f"cameras in the log: {s['cameras']}")
    expect(s["mean_batch"] > 1.5, f"mean batch {s['mean_batch']:.2f}: the cameras were not batched")
    row("run_camera.py street clip x3 cameras --device cuda (inference p50 per batch)", "cuda-engine", None,
        s["inference_p50_ms"], None,
        f"{s['written']} frames written in {seconds:.0f} s, fps {summary_fps.group(1) if summary_fps else '?'} "
        f"(all cameras), mean batch {s['mean_batch']:.2f}, e2e p50 {fmt(s['e2e_p50_ms'])} ms")
    expect.done()


def step_gpu_tests(ctx):
    files = [f"tests/engines/{name}.py" for name in ("test_cuda_kernels", "test_analytics_kernel",
                                                      "test_torch_cuda_engine", "test_tensorrt")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
                       cwd=ROOT, env=ctx.env(), capture_output=True, text=True, timeout=300)
    last = (r.stdout.strip().splitlines() or ["no output"])[-1]
    row("pytest -m gpu " + " ".join(Path(f).name for f in files), "pytest", None, None, None, last)
    if r.returncode != 0:
        raise AssertionError(f"pytest: {last}")


RUNNERS = {"pycuda-sdist": step_pycuda_sdist, "kernels-cupy": lambda ctx: step_kernels(ctx, "cupy"),
           "kernels-pycuda": lambda ctx: step_kernels(ctx, "pycuda"), "network": step_network,
           "cuda-engine": step_cuda_engine, "run-camera": step_run_camera, "gpu-tests": step_gpu_tests,
           "tensorrt": step_tensorrt}


def run_steps(ctx, plan: list) -> list:
    results = []
    for name, required, reason in plan:
        status, t = "not run", time.monotonic()
        print(f"[{name}] {STEPS[name][2]}", flush=True)
        if reason is None:
            try:
                RUNNERS[name](ctx)
                status = "passed"
            except NotRun as e:
                reason = str(e)
            except Exception as e:   # noqa: BLE001  (a step's failure is reported, the others still run)
                status, reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"[{name}] {status}{': ' + reason if reason else ''}", flush=True)
        results.append({"name": name, "required": required, "status": status, "reason": reason,
                        "seconds": round(time.monotonic() - t, 1)})
    return results


def markdown(machine: list, command: str, results: list, summary: str) -> str:
    lines = [f"Device check: `{command}`", "", *[f"- {m}" for m in machine], "",
             "| stage | backend | CPU ms | GPU ms | max abs diff vs CPU | note |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {s} | {b} | {fmt(c)} | {fmt(g)} | {fmt(d)} | {n} |" for s, b, c, g, d, n in ROWS]
    lines += ["", "| step | required | status | s | reason |", "|---|---|---|---:|---|"]
    lines += [f"| {r['name']} | {'yes' if r['required'] else 'no'} | {r['status']} | {r['seconds']} | "
              f"{r['reason'] or ''} |" for r in results]
    return "\n".join(lines + ["", f"Result: {summary}", ""])


def prepare_carry(out: Path, data: Path | None, checkpoint: str | None, frames: int, pycuda_sdist) -> int:
    """Copy what the device check reads into `out` (an ignored folder), within the carry limit."""
    if data is None or not checkpoint or not Path(checkpoint).is_file():
        print("gpu_check: --prepare-carry needs the data folder (--data) and the checkpoint (--checkpoint)",
              file=sys.stderr)
        return 2
    picks = [Path("camvid") / "val" / p.name for p in sorted((data / "camvid" / "val").glob("*.jpg"))[:max(3, frames)]]
    picks += [Path("camvid") / "valannot" / sorted((data / "camvid" / "valannot").glob("*.png"))[0].name, CLIP,
              CITYSCAPES]
    for rel in picks:
        (out / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data / rel, out / "data" / rel)
    shutil.copy2(checkpoint, out / Path(checkpoint).name)
    if pycuda_sdist:
        shutil.copytree(pycuda_sdist, out / "pycuda", dirs_exist_ok=True)
    mib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2 ** 20
    print(f"{out}: {mib:.1f} MiB (limit {CARRY_LIMIT_MIB} MiB)")
    if mib >= CARRY_LIMIT_MIB:
        print(f"gpu_check: {out} is {mib:.1f} MiB, over the {CARRY_LIMIT_MIB} MiB that can be carried; pass fewer "
              "--frames", file=sys.stderr)
        return 2
    print(f"then on the GPU machine: python bench/gpu_check.py --all --data {out}/data "
          f"--checkpoint {out}/{Path(checkpoint).name}" + (f" --pycuda-sdist {out}/pycuda" if pycuda_sdist else ""))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 epilog="Example: python bench/gpu_check.py --all --out artifacts/gpu_check")
    ap.add_argument("--all", action="store_true", help="run every step (the device check)")
    ap.add_argument("--only", help=f"comma-separated steps: {', '.join(STEPS)}")
    ap.add_argument("--data", help="the shared data folder (default: ../shared/data beside the checkout)")
    ap.add_argument("--checkpoint", help=f"the trained CamVid checkpoint (default: ../shared/models/{CHECKPOINT_NAME})")
    ap.add_argument("--pycuda-sdist", metavar="DIR", help="a folder with pycuda-*.tar.gz and its dependency wheels")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "gpu_check"), help="where the JSON and table go")
    ap.add_argument("--prepare-carry", metavar="DIR", help="copy the frames, clip and checkpoint the check reads "
                                                           "into DIR (to carry to a GPU machine) and stop")
    ap.add_argument("--size", default="512x1024", help="kernel and network check input HxW (default 512x1024)")
    ap.add_argument("--frames", type=int, default=3, help="CamVid val frames to check (at least 3)")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    args.data = args.data or (str(find_shared("data")) if find_shared("data") else None)
    models = find_shared("models")
    if args.checkpoint is None and models is not None and (models / CHECKPOINT_NAME).is_file():
        args.checkpoint = str(models / CHECKPOINT_NAME)
    if args.prepare_carry:
        return prepare_carry(Path(args.prepare_carry), Path(args.data) if args.data else None, args.checkpoint,
                             args.frames, args.pycuda_sdist)
    names = list(STEPS) if args.all else args.only.split(",") if args.only else list(DEFAULT_STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        ap.error(f"unknown step {', '.join(unknown)}: use {', '.join(STEPS)}")

    machine = machine_lines()
    print("\n".join(machine), flush=True)
    plan = plan_steps(probe_facts(args), names)
    results = run_steps(Context(args), plan)
    code, summary = exit_status(results)
    command = "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({
        "command": command, "machine": machine, "steps": results, "summary": summary, "exit_code": code,
        "rows": [dict(zip(("stage", "backend", "cpu_ms", "gpu_ms", "max_diff", "note"), r)) for r in ROWS]},
        indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(machine, command, results, summary))
    print(markdown(machine, command, results, summary))
    print(f"gpu_check: {summary} (wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
