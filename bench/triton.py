"""Local ONNX Runtime vs Triton (gRPC, gRPC + system shared memory, HTTP) on this host, one run.

Starts `bisenet serve-triton` on free loopback ports (needs .venv-triton:
scripts/setup_triton.sh), then for 1 and C concurrent clients (threads, each with its own
engine, each sending one frame at a time) times `engine.infer` on a preprocessed 352x480
frame: per-frame latency (p50/p90) and throughput. Modes are interleaved in rounds so
background load hits them alike. Triton's metrics (nv_inference_count /
nv_inference_exec_count) give the mean server-side batch of each Triton row.

    python bench/triton.py                          # random-weight R18 at 352x480
    python bench/triton.py --onnx r18.onnx --clients 4 --frames 40
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit.app_helpers import free_port, tiny_onnx  # noqa: E402


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def start_server(onnx: Path, ports: dict, log: Path, queue_delay_us: int | None = None) -> subprocess.Popen:
    delay = [] if queue_delay_us is None else ["--max-queue-delay-us", str(queue_delay_us)]
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve-triton", "--onnx", str(onnx),
                             "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                             "--metrics-port", str(ports["metrics"]), *delay],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    deadline = time.monotonic() + 180
    while "Triton serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"serve-triton did not start: {log.read_text()[-1500:]}")
        time.sleep(0.2)
    return proc


# Triton's per-model counters: inferences, executions (their ratio is the mean batch), and
# the server-side time of all requests: total, waiting in the queue, running the model.
METRICS = ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_duration_us",
           "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us")


def server_counts(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    got = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in got:
            got[name] = float(line.rsplit(" ", 1)[1])
    return got


def make_engine(mode: str, onnx: Path, ports: dict):
    if mode == "local onnxruntime":
        from engines.onnx_engine import OnnxEngine

        return OnnxEngine(onnx)
    from engines.triton_engine import TritonEngine

    protocol = "http" if mode.startswith("triton http") else "grpc"
    url = f"{protocol}://127.0.0.1:{ports[protocol]}/bisenet"
    return TritonEngine(url, shm="system" if "shm" in mode else "none", in_flight=1)


def run_round(engines: list, batch: np.ndarray, frames: int) -> tuple:
    """Every engine (one per client thread) infers `frames` times; -> (latencies ms, wall s)."""
    lat, lock = [], threading.Lock()

    def client(engine):
        mine = []
        for _ in range(frames):
            t0 = time.perf_counter()
            engine.infer(batch)
            mine.append((time.perf_counter() - t0) * 1000.0)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(e,)) for e in engines]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", help="model to serve (default: a random-weight R18 exported at --size)")
    p.add_argument("--size", default="352x480", help="HxW for the default export (default 352x480)")
    p.add_argument("--clients", type=int, default=4, help="the concurrent-client column (default 4)")
    p.add_argument("--frames", type=int, default=5, help="frames per client per round (default 5)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    p.add_argument("--max-queue-delay-us", type=int,
                   help="the server's dynamic-batching delay (default: serve-triton's)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    onnx = Path(args.onnx) if args.onnx else tiny_onnx(tuple(int(v) for v in args.size.split("x")))
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    print(f"load average at start: {load_average()}  ({os.cpu_count()} CPUs)", flush=True)
    server = start_server(onnx, ports, work / "server.log", args.max_queue_delay_us)
    modes = ["local onnxruntime", "triton grpc", "triton grpc + shm", "triton http"]
    try:
        from core.preprocess import preprocess
        from core.sidecar import read_sidecar

        meta = read_sidecar(onnx)
        h, w = meta["input_shape"][2:]
        image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        batch = preprocess(image, (h, w), np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32))
        results = {}
        for clients in (1, args.clients):
            engines = {m: [make_engine(m, onnx, ports) for _ in range(clients)] for m in modes}
            for m in modes:   # warm-up: sessions, connections, server model
                run_round(engines[m], batch, 2)
            for _ in range(args.rounds):
                for m in modes:
                    before = server_counts(ports["metrics"])
                    lat, wall = run_round(engines[m], batch, args.frames)
                    time.sleep(0.3)   # Triton updates a request's statistics just after its response
                    after = server_counts(ports["metrics"])
                    r = results.setdefault((m, clients), {"lat": [], "wall": 0.0, **dict.fromkeys(METRICS, 0.0)})
                    r["lat"] += lat
                    r["wall"] += wall
                    for k in METRICS:
                        r[k] += after[k] - before[k]
            for m in modes:
                for e in engines[m]:
                    e.close()
        print(f"\n{onnx.name} {h}x{w}, {args.rounds} rounds x {args.frames} frames per client; "
              f"load average at end: {load_average()}")
        print(f"{'mode':<18} {'clients':>7} {'p50 ms':>7} {'p90 ms':>7} {'frames/s':>8} {'p50 vs local':>12} "
              f"{'srv batch':>9} {'srv request ms':>14} {'srv queue ms':>12} {'srv model ms':>12} {'overhead ms':>11}")
        for clients in (1, args.clients):
            base = statistics.median(results[(modes[0], clients)]["lat"])
            for m in modes:
                r = results[(m, clients)]
                p50, p90 = statistics.median(r["lat"]), statistics.quantiles(r["lat"], n=10)[8]
                n = r["nv_inference_count"]   # requests here are one frame each
                srv = ["-"] * 5
                if r["nv_inference_exec_count"] and m != "local onnxruntime":
                    # overhead: the client's mean latency less the server's mean request time
                    srv = [f"{n / r['nv_inference_exec_count']:.2f}",
                           *(f"{r[k] / n / 1000:.1f}" for k in METRICS[2:]),
                           f"{statistics.mean(r['lat']) - r[METRICS[2]] / n / 1000:.1f}"]
                print(f"{m:<18} {clients:>7} {p50:>7.1f} {p90:>7.1f} {len(r['lat']) / r['wall']:>8.2f} "
                      f"{p50 / base:>11.3f}x {srv[0]:>9} {srv[1]:>14} {srv[2]:>12} {srv[3]:>12} {srv[4]:>11}")
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
