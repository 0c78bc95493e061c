"""Soak test: >= 10,000 frames through the whole app (run_camera.py as its own process, every
headless output), sampling its memory (RSS) and queue depths (from its /metrics). Passes when
RSS grows < 50 MB after warm-up, the queues stay within their bound, and the latency log
accounts for every captured frame exactly once (written or dropped with a reason).

    python bench/soak.py                          # 10,000 frames, 160x120, tiny random R18
    python bench/soak.py --frames 2000 --size 320x240 --model artifacts/r18.onnx

Source: the sample clip scaled to --size, looped (a file: nothing dropped, full speed), or
with --rtsp-source an ffmpeg "camera" publishing it through rtsp-server-perl (live, 15 fps:
10,000 frames take 11 minutes). Outputs: null, an .mp4, a folder of PNGs, http://127.0.0.1
(with an MJPEG client reading it), rtsp:// push to rtsp-server-perl (with an ffmpeg viewer
pulling it) when rtsp-server-perl is installed; display is skipped (headless). Without
--model a random-weight R18 is exported at 64x96. The app runs exactly as a user starts it,
so the soak follows whatever the app's insides become.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SAMPLE = REPO.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"
MODEL_NAME = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
WARMUP_FRAMES = 1000
RSS_LIMIT_MB = 50.0
QUEUE_SIZE = 4


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def scrape(url: str) -> tuple[int, int]:
    """(frames captured so far, deepest queue now) from the app's /metrics."""
    text = urllib.request.urlopen(url, timeout=2).read().decode()
    captured = sum(float(m) for m in re.findall(r'^bisenet_frames_total\{[^}]*\} (\S+)$', text, re.M))
    depths = [float(m) for m in re.findall(r'^bisenet_queue_depth\{[^}]*\} (\S+)$', text, re.M)]
    return int(captured), int(max(depths, default=0))


def small_clip(src: Path, dst: Path, width: int, height: int) -> Path:
    """The sample clip scaled to WxH (H.264 in .mkv, a keyframe every 15 frames)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf", f"scale={width}:{height}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", str(dst)], check=True, timeout=120)
    return dst


def export_tiny_model(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "app.cli", "export", "--model", MODEL_NAME, "--size", "64x96",
                    "--random-init", "--no-simplify", "-o", str(out)], cwd=REPO, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)
    return out


def mjpeg_client(url: str, stop: threading.Event, seen: list) -> None:
    """Reads the MJPEG stream like a browser would, counting JPEG parts."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                while not stop.is_set():
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    seen[0] += chunk.count(b"\xff\xd8\xff")
        except OSError:
            stop.wait(0.5)


def rtsp_viewer(url: str, stop: threading.Event, runs: list) -> None:
    """An ffmpeg viewer on the app's RTSP output; reconnects until stopped (the stream only
    exists once the first frame reached the output)."""
    while not stop.is_set():
        proc = subprocess.Popen(["ffmpeg", "-v", "error", "-rtsp_transport", "udp", "-timeout", "5000000",
                                 "-i", url, "-f", "null", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs[0] += 1
        while proc.poll() is None and not stop.is_set():
            stop.wait(0.2)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stop.wait(0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Soak test: 10,000+ frames through the whole app with every "
                                "headless output; RSS, queue depths and frame accounting checked.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: python bench/soak.py --frames 10000 --size 160x120")
    p.add_argument("--frames", type=int, default=10_000, help="frames to capture (default 10000)")
    p.add_argument("--size", default="160x120", help="source frame size WxH (default 160x120)")
    p.add_argument("--model", help="an .onnx (default: export a random-weight R18 at 64x96)")
    p.add_argument("--rtsp-source", action="store_true", help="read from RTSP (live, 15 fps) instead of a file")
    p.add_argument("--sample-every", type=float, default=0.5, help="seconds between samples (default 0.5)")
    p.add_argument("--warmup", type=int, default=WARMUP_FRAMES,
                   help=f"frames before RSS growth is measured (default {WARMUP_FRAMES})")
    p.add_argument("--keep", help="keep the outputs and samples in this folder")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    from app.latency import read_log
    from testkit.app_helpers import free_port

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bisenet-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    helpers = []                     # processes to stop at the end
    stop_clients = threading.Event()
    app = None
    try:
        clip = small_clip(SAMPLE, work / f"clip_{width}x{height}.mkv", width, height)
        model = Path(args.model) if args.model else export_tiny_model(work / "tiny_r18_64x96.onnx")

        relay = None
        if shutil.which("rtsp-server-perl") and shutil.which("ffmpeg"):
            from testkit.rtsp_server import FfmpegPublisher, RtspRelay
            relay = RtspRelay(work).start()
            helpers.append(relay)
        elif args.rtsp_source:
            raise SystemExit("--rtsp-source needs rtsp-server-perl and ffmpeg (apt-get install rtsp-server-perl ffmpeg)")

        http_port, metrics_port = free_port(), free_port()
        log = work / "latency.csv"
        flags = ["--model", str(model), "--max-frames", str(args.frames), "--threads", "1",
                 "--queue-size", str(QUEUE_SIZE), "--latency-log", str(log),
                 "--metrics-port", f"127.0.0.1:{metrics_port}",
                 "--output", "null", "--output", str(work / "out.mp4"), "--output", f"{work / 'frames'}/",
                 "--output", f"http://127.0.0.1:{http_port}"]
        if relay is not None:
            flags += ["--output", relay.push_url("/soak"), "--rtsp-transport", "udp"]
        if args.rtsp_source:
            pub = FfmpegPublisher(relay.push_url("/camera"), clip, work).start()
            helpers.append(pub)
            time.sleep(2.0)
            flags += ["--source", relay.pull_url("/camera")]
        else:
            flags += ["--source", str(clip), "--loop"]

        t0 = time.monotonic()
        app = subprocess.Popen([sys.executable, str(REPO / "run_camera.py"), *flags], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mjpeg_seen = [0]
        threading.Thread(target=mjpeg_client, daemon=True,
                         args=(f"http://127.0.0.1:{http_port}/stream.mjpg", stop_clients, mjpeg_seen)).start()
        viewer_runs = [0]
        viewer = None
        if relay is not None:
            viewer = threading.Thread(target=rtsp_viewer, daemon=True,
                                      args=(relay.pull_url("/soak"), stop_clients, viewer_runs))
            viewer.start()

        samples = []                 # (seconds, captured, rss MB, deepest queue)
        output = []
        reader = threading.Thread(target=lambda: output.extend(app.stdout), daemon=True)
        reader.start()
        while app.poll() is None:
            try:
                captured, depth = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                samples.append((time.monotonic() - t0, captured, rss_mb(app.pid), depth))
            except OSError:
                pass                 # not listening yet, or just closed
            time.sleep(args.sample_every)
        code = app.wait()
        reader.join(timeout=10)
        elapsed = time.monotonic() - t0
        stop_clients.set()
        if viewer is not None:
            viewer.join(timeout=10)

        rows = read_log(log) if log.is_file() else []
        written = sum(1 for r in rows if not r["dropped"])
        by_reason = {}
        for r in rows:
            if r["dropped"]:
                by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        ids = [r["frame"] for r in rows]
        accounted = len(ids) == len(set(ids)) >= args.frames
        after = [s for s in samples if s[1] >= args.warmup]
        base = after[0][2] if after else float("nan")
        peak = max((s[2] for s in after), default=float("nan"))
        growth = peak - base
        max_depth = max((s[3] for s in samples), default=0)
        bounded = max_depth <= QUEUE_SIZE
        with open(work / "samples.csv", "w") as f:
            f.write("seconds,captured,rss_mb,deepest_queue\n")
            for s in samples:
                f.write(f"{s[0]:.2f},{s[1]},{s[2]:.1f},{s[3]}\n")

        print(f"frames        rows {len(rows)}  written {written}  dropped {len(rows) - written} {by_reason or ''}"
              f"  in {elapsed:.0f} s ({len(rows) / elapsed:.1f} fps)")
        print(f"source        {clip.name if not args.rtsp_source else 'rtsp'} {width}x{height}; model {model.name}")
        print("app summary   " + "              ".join(output[-12:]).rstrip())
        print(f"              MJPEG client read {mjpeg_seen[0]} JPEGs; RTSP viewer (re)started {viewer_runs[0]} times")
        print(f"RSS MB        after {args.warmup} frames {base:.1f}  peak {peak:.1f}  growth after warm-up "
              f"{growth:+.1f} (limit {RSS_LIMIT_MB:.0f}); {len(samples)} samples every {args.sample_every} s")
        print(f"queue depth   deepest {max_depth} (bound {QUEUE_SIZE})")
        ok = code == 0 and accounted and bounded and after != [] and growth < RSS_LIMIT_MB
        print(f"result        {'PASS' if ok else 'FAIL'}  (accounting {'exact' if accounted else 'WRONG'}, "
              f"queues {'bounded' if bounded else 'OVER BOUND'}, exit {code})")
        return 0 if ok else 1
    finally:
        stop_clients.set()
        if app is not None and app.poll() is None:
            app.kill()
        for h in helpers:
            h.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
