"""Soak test: >= 10,000 frames through the whole pipeline with every headless output, sampling
memory (RSS) and queue depths. Passes when RSS grows < 50 MB after warm-up, the queues stay
within their bounds, and captured = written + dropped (by reason) exactly.

    python bench/soak.py                          # 10,000 frames, 160x120, tiny random R18
    python bench/soak.py --frames 2000 --size 320x240 --model artifacts/r18.onnx

Source: the sample clip scaled to --size, looped (a file: nothing dropped, full speed), or
with --rtsp-source an ffmpeg "camera" publishing it through rtsp-server-perl (live, 15 fps:
10,000 frames take 11 minutes). Outputs: null, an .mp4, a folder of PNGs, http://127.0.0.1
(with an MJPEG client reading it), rtsp:// push to rtsp-server-perl (with an ffmpeg viewer
pulling it) when rtsp-server-perl is installed; display is skipped (headless). Without
--model a random-weight R18 is exported at 64x96 in a subprocess (the soak process itself
never imports torch, like the app).
"""
from __future__ import annotations

import argparse
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


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: python bench/soak.py --frames 10000 --size 160x120")
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--size", default="160x120", help="source frame size WxH (default 160x120)")
    p.add_argument("--model", help="an .onnx (default: export a random-weight R18 at 64x96)")
    p.add_argument("--rtsp-source", action="store_true", help="read from RTSP (live, 15 fps) instead of a file")
    p.add_argument("--sample-every", type=float, default=0.5, help="seconds between samples")
    p.add_argument("--keep", help="keep the outputs and samples in this folder")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    from app.latency import LatencyRecorder
    from app.pipeline import Pipeline
    from app.run import _parser, resolve
    from app.sinks import open_sink
    from app.sources import open_source
    from engines.load import load_engine

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bisenet-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    helpers = []                     # processes and threads to stop at the end
    stop_clients = threading.Event()
    try:
        clip = small_clip(SAMPLE, work / f"clip_{width}x{height}.mkv", width, height)
        model = Path(args.model) if args.model else export_tiny_model(work / "tiny_r18_64x96.onnx")

        relay = None
        if shutil.which("rtsp-server-perl") and shutil.which("ffmpeg"):
            from tests.rtsp_server import FfmpegPublisher, RtspRelay
            relay = RtspRelay(work).start()
            helpers.append(relay)
        elif args.rtsp_source:
            raise SystemExit("--rtsp-source needs rtsp-server-perl and ffmpeg (apt-get install rtsp-server-perl ffmpeg)")

        from tests.app_helpers import free_port
        http_port = free_port()
        flags = ["--model", str(model), "--max-frames", str(args.frames), "--threads", "1",
                 "--latency-log", str(work / "latency.csv"),
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
        opts = resolve(_parser().parse_args(flags))

        engine = load_engine(opts.model, threads=opts.threads)
        reader = open_source(opts.source, opts)
        sinks = [open_sink(spec, opts, live=reader.live) for spec in opts.output]
        recorder = LatencyRecorder(opts.latency_log)
        pipeline = Pipeline(reader, engine, sinks, recorder=recorder, max_frames=opts.max_frames,
                            queue_size=opts.queue_size)

        mjpeg_seen = [0]
        t = threading.Thread(target=mjpeg_client, daemon=True,
                             args=(f"http://127.0.0.1:{http_port}/stream.mjpg", stop_clients, mjpeg_seen))
        t.start()
        viewer_runs = [0]
        viewer = None
        if relay is not None:
            viewer = threading.Thread(target=rtsp_viewer, daemon=True,
                                      args=(relay.pull_url("/soak"), stop_clients, viewer_runs))
            viewer.start()

        samples = []                 # (seconds, captured, rss MB, input queue, output queue)
        done = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not done.wait(args.sample_every):
                samples.append((time.monotonic() - t0, pipeline.captured, rss_mb(),
                                pipeline.in_q.qsize(), pipeline.out_q.qsize()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rss_start = rss_mb()
        code = pipeline.run()
        done.set()
        sampler.join()
        engine.close()
        elapsed = time.monotonic() - t0
        stop_clients.set()
        if viewer is not None:
            viewer.join(timeout=10)

        summary = recorder.summary(pipeline.captured)
        after = [s for s in samples if s[1] >= WARMUP_FRAMES]
        base = after[0][2] if after else float("nan")
        peak = max((s[2] for s in after), default=float("nan"))
        end = after[-1][2] if after else float("nan")
        growth = peak - base
        max_in = max((s[3] for s in samples), default=0)
        max_out = max((s[4] for s in samples), default=0)
        accounted = summary["written"] + summary["dropped"] == summary["captured"] == pipeline.captured
        bounded = max_in <= pipeline.in_q.maxsize and max_out <= pipeline.out_q.maxsize
        with open(work / "samples.csv", "w") as f:
            f.write("seconds,captured,rss_mb,input_queue,output_queue\n")
            for s in samples:
                f.write(f"{s[0]:.2f},{s[1]},{s[2]:.1f},{s[3]},{s[4]}\n")

        print(f"frames        captured {summary['captured']}  written {summary['written']}  dropped "
              f"{summary['dropped']} {summary['dropped_by_reason'] or ''}  in {elapsed:.0f} s "
              f"({summary['captured'] / elapsed:.1f} fps)")
        print(f"source        {reader.description} {width}x{height}; model {model.name}")
        print(f"outputs       {', '.join(s.name for s in sinks)}")
        for sink in sinks:
            if callable(getattr(sink, "counters", None)):
                print(f"              {sink.name}: {sink.counters()}")
        print(f"              MJPEG client read {mjpeg_seen[0]} JPEGs; RTSP viewer (re)started {viewer_runs[0]} "
              f"times; failed outputs: {pipeline.sink_failures or 'none'}")
        print(f"RSS MB        start {rss_start:.1f}  after {WARMUP_FRAMES} frames {base:.1f}  peak {peak:.1f}  "
              f"end {end:.1f}  growth after warm-up {growth:+.1f} (limit {RSS_LIMIT_MB:.0f})")
        print(f"queue depth   input max {max_in} (bound {pipeline.in_q.maxsize})  output max {max_out} "
              f"(bound {pipeline.out_q.maxsize}); {len(samples)} samples every {args.sample_every} s")
        ok = (code == 0 and accounted and bounded and growth < RSS_LIMIT_MB
              and summary["captured"] >= args.frames and not pipeline.sink_failures)
        print(f"result        {'PASS' if ok else 'FAIL'}  (accounting {'exact' if accounted else 'WRONG'}, "
              f"queues {'bounded' if bounded else 'OVER BOUND'}, exit {code})")
        return 0 if ok else 1
    finally:
        stop_clients.set()
        for h in helpers:
            h.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
