"""On a machine with an NVIDIA GPU: run every GPU piece that can run there against its CPU reference.

    python bench/gpu_check.py [--data ../shared/data] [--model NAME] [--frames 4]

- the CUDA kernels (engines/preprocess.cu, engines/overlay.cu) through pycuda, and through
  CuPy on the same source, vs core/preprocess.py and core/overlay.py on real frames;
- the PyTorch reference network on CUDA (fp32 with TF32 off, and fp16 autocast) vs the CPU;
- the fused chain: uint8 frame up -> preprocess kernel -> network on the GPU -> argmax kernel ->
  overlay kernel -> uint8 frame down, vs the same chain on the CPU;
- TensorRT: an fp32 engine from an fp32 ONNX export and an fp16 engine from an fp16 export
  (the route TensorRT 11 needs), each created in the main thread and run in a worker thread
  as the app's pipeline does, when tensorrt, pycuda and the export code import.

Prints one table: ms per stage (CPU and GPU, mean of --repeat calls after warm-up, wall clock
around a synchronize), and the max abs difference to the CPU reference. Missing pieces are
listed with the reason, never silently skipped.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.overlay import palette_bgr, render_overlay   # noqa: E402
from core.preprocess import preprocess   # noqa: E402
from engines import cuda_kernels as ck  # noqa: E402
from core.model_config import load_model_config   # noqa: E402

ROWS = []     # (stage, backend, cpu_ms, gpu_ms, max_diff, note)
MISSING = []  # (piece, reason)


def row(stage, backend, cpu_ms, gpu_ms, diff, note=""):
    ROWS.append((stage, backend, cpu_ms, gpu_ms, diff, note))
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    print(f"  {stage:<44} {backend:<8} cpu {fmt(cpu_ms):>7} ms  gpu {fmt(gpu_ms):>7} ms  "
          f"max diff {fmt(diff):>8}  {note}", flush=True)


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


def find_data(arg) -> Path:
    if arg:
        return Path(arg)
    for parent in ROOT.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    sys.exit("gpu_check: no ../shared/data found; pass --data DIR (with camvid/val, camvid/valannot, samples/)")


def version(name):
    try:
        mod = importlib.import_module(name)
    except Exception as e:   # noqa: BLE001  (an import of a GPU package can fail many ways)
        return f"not importable ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    return getattr(mod, "__version__", None) or getattr(mod, "VERSION_TEXT", None) or "imported"


def check_kernels(k, backend, frames, labels_full, cfg, size_hw, repeat):
    lut = palette_bgr(np.asarray(cfg.palette))
    sync = k.synchronize
    for name, frame in frames:
        for dtype in (np.float32, np.float16):
            ref = preprocess(frame, size_hw, cfg.mean, cfg.std, dtype=dtype)
            got = k.preprocess(frame, size_hw, cfg.mean, cfg.std, dtype)
            diff = max_diff(got, ref)
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
        out = k.empty(ref.shape, np.uint8)
        gpu = time_ms(lambda: render(k.ptr(img_d), h, w, k.ptr(lab_d), *labels.shape, k.ptr(out), 0.5, mode),
                      sync, repeat)
        cpu = time_ms(lambda: render_overlay(frame, labels, lut, alpha=0.5, mode=mode), lambda: None, repeat)
        row(f"overlay {mode} {w}x{h} labels {size_hw[1]}x{size_hw[0]} ({name})", backend, cpu, gpu,
            max_diff(got, ref), "bit-exact" if np.array_equal(got, ref) else "")
    check_graph(k, backend, frame, labels, lut, cfg, size_hw, repeat)


def check_graph(k, backend, frame, labels, lut, cfg, size_hw, repeat):
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


def check_torch(cfg, frames, size_hw, repeat, cupy_kernels):
    try:
        import torch
        from training.model import BiSeNetV1
    except ImportError as e:
        MISSING.append(("PyTorch reference", str(e)))
        return
    if not torch.cuda.is_available():
        MISSING.append(("PyTorch reference", "torch.cuda.is_available() is False"))
        return
    torch.backends.cudnn.allow_tf32 = False          # fp32 means fp32 for the comparison
    torch.backends.cuda.matmul.allow_tf32 = False
    name, frame = frames[-1]
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
    if cupy_kernels is not None:
        fused_chain(cfg, frame, size_hw, net_cpu, net_gpu, cupy_kernels, repeat)


def fused_chain(cfg, frame, size_hw, net_cpu, net_gpu, k, repeat):
    """uint8 frame -> GPU -> uint8 frame: the TensorRT backend's chain with PyTorch as the network.

    The preprocess kernel writes straight into the network's input tensor (CuPy memory seen by
    torch through DLPack), the argmax and overlay kernels read torch's output in place."""
    import torch
    h, w = frame.shape[:2]
    lut = palette_bgr(np.asarray(cfg.palette))
    pre = k.preprocessor(h, w, *size_hw, cfg.mean, cfg.std)
    render = k.overlay_renderer(lut)
    src = k.empty(frame.shape, np.uint8)
    x = k.empty((1, 3, *size_hw), np.float32)
    x_t = torch.from_dlpack(x)
    labels = k.empty(size_hw, np.int32)
    out = k.empty(frame.shape, np.uint8)
    plane = size_hw[0] * size_hw[1]

    def gpu_chain():
        src.set(frame)
        pre(k.ptr(src), k.ptr(x))
        with torch.inference_mode():
            logits = net_gpu(x_t)
        k.argmax(logits.data_ptr(), cfg.num_classes, plane, k.ptr(labels))
        render(k.ptr(src), h, w, k.ptr(labels), *size_hw, k.ptr(out), 0.5, "overlay")
        return out.get()

    def cpu_chain():
        with torch.inference_mode():
            logits = net_cpu(torch.from_numpy(preprocess(frame, size_hw, cfg.mean, cfg.std))).numpy()
        return render_overlay(frame, logits[0].argmax(0), lut, alpha=0.5, mode="overlay")

    torch.cuda.synchronize()
    got, ref = gpu_chain(), cpu_chain()
    same = float((got == ref).all(axis=2).mean()) * 100
    gpu = time_ms(gpu_chain, torch.cuda.synchronize, repeat)
    cpu = time_ms(cpu_chain, lambda: None, max(2, repeat // 10), warmup=1)
    row(f"fused frame->overlay {w}x{h}, net {size_hw[1]}x{size_hw[0]} fp32", "cupy+torch", cpu, gpu,
        max_diff(got, ref), f"{same:.2f}% pixels identical to the CPU chain")


def check_tensorrt(cfg, frames, size_hw, repeat):
    try:
        import tensorrt  # noqa: F401
    except Exception as e:   # noqa: BLE001
        MISSING.append(("TensorRT builds and runs", f"tensorrt not importable: {str(e).splitlines()[0][:100]}"))
        return
    try:
        import torch
        from core.sidecar import write_sidecar
        from engines.tensorrt_build import build_engine
        from engines.tensorrt_engine import TensorRTEngine
    except Exception as e:   # noqa: BLE001
        MISSING.append(("TensorRT builds and runs", f"needs torch and pycuda: {e}"))
        return
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
    from concurrent.futures import ThreadPoolExecutor
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Example: python bench/gpu_check.py --frames 4")
    ap.add_argument("--data", help="the shared data folder (default: ../shared/data beside the checkout)")
    ap.add_argument("--model", default="bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024")
    ap.add_argument("--size", default="512x1024", help="model input HxW (default 512x1024)")
    ap.add_argument("--frames", type=int, default=3, help="CamVid val frames to check (plus the Cityscapes one)")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    data = find_data(args.data)
    cfg = load_model_config(args.model)
    size_hw = tuple(int(v) for v in args.size.lower().split("x"))
    frames = [(p.name, cv2.imread(str(p))) for p in sorted((data / "camvid" / "val").glob("*.jpg"))[:args.frames]]
    frames.append(("cityscapes 2048x1024", cv2.imread(str(data / "samples" / "cityscapes_street_2048x1024.png"))))
    labels_full = cv2.imread(str(sorted((data / "camvid" / "valannot").glob("*.png"))[0]), cv2.IMREAD_UNCHANGED)

    print(f"date {time.strftime('%Y-%m-%d %H:%M %Z')}  python {platform.python_version()}  numpy {np.__version__}  "
          f"opencv {cv2.__version__}")
    for mod in ("torch", "cupy", "pycuda", "tensorrt", "onnxruntime"):
        print(f"  {mod:<12} {version(mod)}")
    try:
        gpu, cc = ck.gpu_identity()
        print(f"  GPU          {gpu} (compute capability {cc})")
    except RuntimeError as e:
        print(f"  GPU          unknown: {e}")
    try:
        import onnxruntime as ort
        print(f"  onnxruntime providers: {', '.join(ort.get_available_providers())}")
    except ImportError:
        pass

    cupy_kernels = None
    for backend in ("pycuda", "cupy"):
        try:
            k = ck.CudaKernels(backend)
        except Exception as e:   # noqa: BLE001
            MISSING.append((f"CUDA kernels through {backend}", str(e).splitlines()[0]))
            continue
        with k.context:                  # this script's own array calls (.set, .get) need it current
            check_kernels(k, backend, frames, labels_full, cfg, size_hw, args.repeat)
        if backend == "cupy":
            cupy_kernels = k
    check_torch(cfg, frames, size_hw, args.repeat, cupy_kernels)
    check_tensorrt(cfg, frames, size_hw, args.repeat)

    print("\n| stage | backend | CPU ms | GPU ms | max abs diff vs CPU | note |\n|---|---|---:|---:|---:|---|")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    for stage, backend, cpu, gpu, diff, note in ROWS:
        print(f"| {stage} | {backend} | {fmt(cpu)} | {fmt(gpu)} | {fmt(diff)} | {note} |")
    for piece, reason in MISSING:
        print(f"not run: {piece}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
