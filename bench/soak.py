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

    python bench/soak.py --in-process --minutes 30   # one process, months in miniature

--in-process runs app/session.py's Session in this process instead, for --minutes: four
cameras (one over RTSP whose publisher drops every minute), MJPEG viewers coming and going,
MQTT events to a broker restarted every few minutes, live reloads, rotating logs and
segmented video; it samples RSS, threads, open fds and frames and fails on growth after
warm-up or on a frame not accounted for (--help; docs/service.md, "Soak").
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.errors import BisenetError  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"
MODEL_NAME = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
WARMUP_FRAMES = 1000
RSS_LIMIT_MB = 50.0
QUEUE_SIZE = 4

IN_PROCESS_HELP = """\
examples:
  python bench/soak.py --frames 10000 --size 160x120
  nice -n 5 python bench/soak.py --in-process --minutes 30

--in-process: ONE Python process runs app/session.py's Session with 4 cameras: 3 copies of
the street clip (--size) looped in real time and one RTSP camera through rtsp-server-perl
whose ffmpeg publisher is stopped and started again every minute; every camera serves
its MJPEG stream on one http:// output where viewers come and go (one every 5 s, up to 3);
zones and rules send events to a real mosquitto that is restarted every 2.5 minutes and to
an events log; a live reload every 1.5 minutes (session.reload_config(): cam0's zone moved
and a 5th camera added, then back); logs rotate at --log-max-mb; cam0 also writes an mp4
in 10 s segments under retain_gb 0.005. The periods are for 30 minutes and scale down with
--minutes (at most 4x shorter). Samples: RSS (VmRSS), threads (/proc's Threads, judged:
FFmpeg's decoder threads are where a decoder left behind shows; also those without them and
threading.active_count), open fds, frames written and
dropped, outages. After warm-up (a third of the run, at most 11 minutes: bounded buffers
fill first, such as the page's coverage ring, full 10 minutes after the start however fast
it samples), the samples with the
4 cameras are cut in fifths; it FAILS (exit 1) when the median of the last fifth exceeds
the first's by +5 MB RSS (enforced for runs of 10 minutes and more; shorter runs print it),
+4 threads or +8 fds, when the run raised or a camera failed, or when the latency log's
rows (across rotated parts) do not hold every captured id of every camera exactly once,
each drop with its reason. Needs ffmpeg; rtsp-server-perl and mosquitto where installed.
"""


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


# ---- in-process mode ---------------------------------------------------------------------------

REFERENCE_MINUTES = 30     # the periods below are for a run this long; shorter runs scale them down
RSS_GROWTH_LIMIT_MB = 5.0  # in-process: RSS growth after warm-up (medians of the first and last fifth)
RSS_ENFORCED_MINUTES = 10  # ... enforced only for runs this long (shorter ones print it)
THREAD_BOUND = 4           # growth allowed after warm-up, same medians
FD_BOUND = 8
ZONE = "[[0, 0.5], [1, 0.5], [1, 1], [0, 1]]"
ZONE_MOVED = "[[0, 0.3], [0.8, 0.3], [0.8, 1], [0, 1]]"


def zone_and_rules(classes) -> str:
    """A zone `ground` measuring every class and a rule per class: which classes a random-weight
    model sees, and how much, differs from export to export; whichever it is, its coverage
    varies from frame to frame around 0.3 somewhere, so events start and end all along."""
    names = ", ".join(f'"{c}"' for c in classes)
    rules = ", ".join(f'{{name: r{i}, zone: ground, class: "{c}", above: 0.3, for_s: 1, clear_s: 1}}'
                      for i, c in enumerate(classes))
    return f"zones: [{{name: ground, polygon: {{zone}}, classes: [{names}]}}], rules: [{rules}]"


def status_value(key: str) -> int:
    """A number from /proc/self/status (VmRSS in kB, Threads)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def log_parts(path: Path) -> list[Path]:
    """A rotated log's parts, oldest first (renamed parts by their start time, then the current)."""
    from app.retention import timed_glob

    return sorted(path.parent.glob(timed_glob(path))) + ([path] if path.is_file() else [])


def account(log: Path, recorder) -> tuple[bool, str]:
    """Every captured frame written or dropped with a reason, once, across the log's parts:
    per camera the ids are 0..n-1 without gaps or repeats, and the rows match the recorder's
    counts. -> (ok, a line saying so)."""
    from app.latency import read_log

    ids, no_reason = {}, 0
    parts = log_parts(log)
    for part in parts:
        for r in read_log(part):
            ids.setdefault(r["camera"], []).append(r["frame"])
            no_reason += bool(r["dropped"]) and not r["reason"]
    problems = []
    for cam, got in sorted(ids.items()):
        if len(got) != len(set(got)):
            problems.append(f"{cam}: {len(got) - len(set(got))} ids twice")
        missing = set(range(max(got) + 1)) - set(got)
        if missing:
            problems.append(f"{cam}: {len(missing)} ids missing (first {min(missing)})")
    rows = sum(len(v) for v in ids.values())
    if rows != recorder.accounted:
        problems.append(f"{rows} rows but the recorder counted {recorder.accounted}")
    if no_reason:
        problems.append(f"{no_reason} drops without a reason")
    line = f"{rows} rows in {len(parts)} log parts, " + (", ".join(problems) if problems else
                                                        "every id once, each drop with its reason")
    return not problems, line


class Chaos:
    """What happens to the running session, each on its own period: the RTSP camera's publisher
    stopped and started again, the MQTT broker restarted, a reload (a zone moved and a 5th
    camera added, then back), MQTT/HTTP viewers coming and going."""

    def __init__(self, session, periods: dict, config: Path, preset, relay, publisher_args, broker, http_port: int,
                 stop: threading.Event):
        self.session, self.periods, self.config, self.preset = session, periods, config, preset
        self.relay, self.publisher_args, self.broker, self.http_port = relay, publisher_args, broker, http_port
        self.stop = stop
        self.counts = {"publisher restarts": 0, "broker restarts": 0, "reloads": 0, "reloads refused": 0,
                       "viewers opened": 0, "viewer frames": 0}
        self.errors: list[str] = []
        self.publisher = None
        self.variant = 0
        self.viewers = []

    def start_publisher(self):
        from testkit.rtsp_server import FfmpegPublisher
        self.publisher = FfmpegPublisher(*self.publisher_args).start()

    def run(self) -> None:
        t0 = time.monotonic()
        due = {name: t0 + period for name, period in self.periods.items()}
        while not self.stop.is_set():
            now = time.monotonic()
            for name, at in due.items():
                if now >= at:
                    due[name] = now + self.periods[name]
                    try:
                        getattr(self, name)()
                    except Exception as e:   # said in the verdict, the soak goes on
                        self.errors.append(f"{name}: {type(e).__name__}: {e}")
            self.stop.wait(0.2)
        for v in self.viewers:
            self._close_viewer(v)
        self.viewers = []

    def rtsp(self) -> None:
        if self.publisher is None:
            return
        self.publisher.stop()   # SIGTERM: a TEARDOWN, so the relay takes the next publisher
        self.stop.wait(min(5.0, self.periods["rtsp"] / 4))
        self.start_publisher()
        self.counts["publisher restarts"] += 1

    def mqtt(self) -> None:
        if self.broker is None:
            return
        self.broker.stop()
        self.stop.wait(min(5.0, self.periods["mqtt"] / 8))
        self.broker.start()
        self.counts["broker restarts"] += 1

    def reload(self) -> None:
        self.variant ^= 1
        self.config.write_text(self.preset(self.variant))
        try:
            self.session.reload_config()
            self.counts["reloads"] += 1
        except BisenetError as e:
            self.counts["reloads refused"] += 1
            self.errors.append(f"reload refused: {e}")

    def viewers_turn(self) -> None:
        """One viewer leaves (the oldest of up to 3), one joins a random camera's stream."""
        if len(self.viewers) >= 3:
            self._close_viewer(self.viewers.pop(0))
        cam = random.choice([c.name for c in self.session.cameras])
        try:
            self.viewers.append(_camera_viewer(self.http_port, cam))
            self.counts["viewers opened"] += 1
        except (OSError, ConnectionError):
            pass   # its camera just left (a reload) or is reconnecting: the next turn tries again

    def _close_viewer(self, v) -> None:
        self.counts["viewer frames"] += len(v.arrivals)
        try:
            v.sock.shutdown(socket.SHUT_RDWR)   # its reader thread holds the socket's file
        except OSError:
            pass
        v.close()


def _camera_viewer(port: int, cam: str):
    """A Viewer of /camera/CAM/stream.mjpg (no token on loopback)."""
    from testkit import http_clients

    sock = http_clients.open_stream(port, "", path=f"/camera/{cam}/stream.mjpg")
    v = http_clients.Viewer.__new__(http_clients.Viewer)
    v.sock, v.file, v.arrivals = sock, sock.makefile("rb"), []
    status = v.file.readline()
    if not status.startswith(b"HTTP/1.1 200"):
        sock.close()
        raise ConnectionError(f"viewer refused: {status!r}")
    threading.Thread(target=v._read, daemon=True).start()
    return v


def object_counts() -> collections.Counter:
    """Python objects alive by type: taken at the end of warm-up and at the end, their growth
    names what a leak is made of. Run with PYTHONTRACEMALLOC=8 and the counts carry a
    tracemalloc snapshot too, whose growth names the lines that allocated it."""
    gc.collect()
    # gc.get_objects() holds a reference to every object, a tuple another thread is still
    # building included: if that thread ran while the list lives, its _PyTuple_Resize fails
    # ("SystemError: Objects/tupleobject.c: bad argument to internal function", seen here).
    # So no other thread runs until the list is gone: no switch, and nothing here blocks.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        objs = gc.get_objects()
        counts = collections.Counter(type(o).__name__ for o in objs)
        del objs
    finally:
        sys.setswitchinterval(interval)
    counts.snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    return counts


def grown_lines(before, after, top: int = 8) -> list[str]:
    """The allocation sites that grew most between two tracemalloc snapshots, innermost of ours first."""
    lines = []
    for stat in after.compare_to(before, "traceback")[:top]:
        frames = [f for f in stat.traceback if "/site-packages/" not in f.filename] or list(stat.traceback)
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:][::-1])
        lines.append(f"{stat.size_diff / 1024:+.0f} KiB in {stat.count_diff:+d} blocks at {where}")
    return lines


def fifth_medians(values: list) -> tuple[float, float]:
    n = max(1, len(values) // 5)
    return statistics.median(values[:n]), statistics.median(values[-n:])


def in_process(args) -> int:
    """One process: the Session with 4 cameras and everything around it (see --help)."""
    from app.session import Session, load_engine
    from app.settings import build
    from testkit.analytics_helpers import MOSQUITTO, Broker
    from testkit.app_helpers import free_port
    from testkit.http_clients import proc_counts
    from testkit.rtsp_server import FFMPEG, RTSP_SERVER, RtspRelay

    seconds = args.minutes * 60
    scale = min(1.0, max(args.minutes / REFERENCE_MINUTES, 0.25))
    periods = {"rtsp": 60 * scale, "mqtt": 150 * scale, "reload": 90 * scale, "viewers_turn": 5.0}
    # Warm-up: a third of the run, at most 11 minutes: the bounded buffers fill first (the page's
    # coverage ring holds 10 minutes per camera, ONNX Runtime and malloc arenas settle).
    from app.server.coverage_ring import SPAN_S
    warmup_s = min(SPAN_S + 60.0, seconds / 3)   # the coverage ring full, and a minute more
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bisenet-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    helpers, notes = [], []
    stop = threading.Event()
    load_start = os.getloadavg()
    try:
        clip = small_clip(SAMPLE, work / f"clip_{width}x{height}.mkv", width, height)
        # exported by its own process: the soak's holds only what `bisenet run` holds (no torch)
        model = Path(args.model) if args.model else export_tiny_model(work / "tiny_r18_64x96.onnx")
        rtsp_url, publisher_args = None, None
        if RTSP_SERVER and FFMPEG:
            relay = RtspRelay(work).start()
            helpers.append(relay)
            publisher_args = (relay.push_url("/cam3"), clip, work)
            rtsp_url = relay.pull_url("/cam3")
        else:
            notes.append("no rtsp-server-perl: cam3 is a 4th file")
        broker = None
        if MOSQUITTO:
            broker = Broker(work).start()
            helpers.append(broker)
        else:
            notes.append("no mosquitto: events to the log only")
        http_port = free_port()
        config = work / "soak.yaml"

        def cam(name, source, extra=""):
            return (f"  - {{name: {name}, source: '{source}', output: ['http://127.0.0.1:{http_port}'{extra}], "
                    f"{analytics}}}\n")

        def preset(variant: int) -> str:
            """variant 0: 4 cameras; 1: cam0's zone moved and a 5th camera."""
            video = work / "video" / "out.mp4"
            text = "cameras:\n" + cam("cam0", clip, f", '{video}'").replace("{zone}", ZONE_MOVED if variant else ZONE)
            text += "".join(cam(f"cam{i}", clip).replace("{zone}", ZONE) for i in (1, 2))
            if rtsp_url:
                text += cam("cam3", rtsp_url).replace("{zone}", ZONE)[:-2] + ", rtsp-transport: udp, realtime: false}\n"
            else:
                text += cam("cam3", clip).replace("{zone}", ZONE)
            if variant:
                text += cam("cam4", clip).replace("{zone}", ZONE)
            return text

        flags = {"model": str(model), "threads": 1, "realtime": True, "loop": True, "source_timeout": 3.0,
                 "latency_log": str(work / "logs" / "latency.csv"), "coverage_log": str(work / "logs" / "coverage.csv"),
                 "events_log": str(work / "logs" / "events.jsonl"), "log_max_mb": args.log_max_mb,
                 "log_keep": 100_000, "segment_s": 10.0, "retain_gb": 0.005}
        if broker is not None:
            flags["mqtt"] = broker.url
        engine = load_engine(build({**flags, "source": [str(clip)]}))   # the preset's rules need its classes
        analytics = zone_and_rules(engine.info.class_names)
        config.write_text(preset(0))
        lines = []
        chaos = first = None
        if publisher_args:
            from testkit.rtsp_server import FfmpegPublisher, wait_published
            first = FfmpegPublisher(*publisher_args).start()
            wait_published(rtsp_url)
        settings = build(flags, str(config))
        samples = []      # dicts
        objects = []      # object_counts() after warm-up, then at the end
        crash = None
        t0 = time.monotonic()
        print(f"in-process soak: {args.minutes:g} min, 4 cameras ({width}x{height}, 15 fps), periods "
              + ", ".join(f"{k} {v:.0f} s" for k, v in periods.items()) + f", warm-up {warmup_s:.0f} s; "
              f"load average {load_start[0]:.2f}; MALLOC_ARENA_MAX {os.environ.get('MALLOC_ARENA_MAX', 'unset')} "
              f"(the service unit sets 2); work {work}" + (f"; {'; '.join(notes)}" if notes else ""),
              flush=True)
        try:
            with Session(settings, engine, config_name=str(config), log=lines.append,
                         reread=lambda: build(flags, str(config))) as session:
                chaos = Chaos(session, periods, config, preset, relay if publisher_args else None, publisher_args,
                              broker, http_port, stop)
                chaos.publisher = first
                helpers.append(chaos)

                def sample():
                    while not stop.wait(args.sample_every):
                        due = warmup_s if not objects else seconds - 2 * args.sample_every   # warm-up's end; just before the end
                        if len(objects) < 2 and time.monotonic() - t0 >= due:
                            objects.append(object_counts())
                        threads, fds = proc_counts(os.getpid())
                        rec = session.recorder
                        reconnects = sum(c.reader.counters().get("outages", 0) for c in session.cameras
                                         if hasattr(c.reader, "counters"))
                        samples.append({"s": time.monotonic() - t0, "rss_mb": status_value("VmRSS") / 1024,
                                        "threads": threads, "threads_all": status_value("Threads"),
                                        "py_threads": threading.active_count(), "fds": fds,
                                        "cameras": len(session.cameras), "written": rec.written,
                                        "dropped": sum(rec.dropped.values()), "outages": reconnects})
                        if time.monotonic() - t0 >= seconds:
                            stop.set()
                            session.stop(reason="soak over", quiet=True)

                workers = [threading.Thread(target=sample, name="soak-sampler", daemon=True),
                           threading.Thread(target=chaos.run, name="soak-chaos", daemon=True)]
                for w in workers:
                    w.start()
                delivered = 0
                for _ in session.frames():
                    delivered += 1
                stop.set()
                for w in workers:
                    w.join(timeout=30)
                code, failures = session.code, session.failures
                recorder = session.recorder
                events = session.analytics.summary() if session.analytics is not None else ""
                outages = {c.name: c.reader.counters() for c in session.pipeline.cameras
                           if hasattr(c.reader, "counters")}
        except Exception as e:   # the run itself failed: the soak's verdict
            crash, code, failures = f"{type(e).__name__}: {e}", 1, []
        finally:
            stop.set()
            engine.close() if hasattr(engine, "close") else None
        elapsed = time.monotonic() - t0
        load_end = os.getloadavg()
        with open(work / "samples.csv", "w") as f:
            keys = list(samples[0]) if samples else []
            f.write(",".join(keys) + "\n")
            for s in samples:
                f.write(",".join(f"{s[k]:.2f}" if isinstance(s[k], float) else str(s[k]) for k in keys) + "\n")

        print(f"{'s':>6} {'RSS MB':>7} {'threads':>7} {'(all)':>5} {'py':>3} {'fds':>4} {'cams':>4} "
              f"{'written':>8} {'dropped':>7} {'outages':>7}")
        step = max(1, len(samples) // 40)
        for s in samples[::step] + samples[-1:]:
            print(f"{s['s']:6.0f} {s['rss_mb']:7.1f} {s['threads']:7d} {s['threads_all']:5d} {s['py_threads']:3d} "
                  f"{s['fds']:4d} {s['cameras']:4d} {s['written']:8d} {s['dropped']:7d} {s['outages']:7d}")
        if crash is not None:
            print(f"result        FAIL  (the run raised {crash})")
            return 1
        # After warm-up, in the usual state (4 cameras; the 5th comes and goes with the reloads).
        after = [s for s in samples if s["s"] >= warmup_s and s["cameras"] == 4] or \
                [s for s in samples if s["s"] >= warmup_s]
        verdicts = []
        if len(after) >= 5:
            rss0, rss1 = fifth_medians([s["rss_mb"] for s in after])
            th0, th1 = fifth_medians([s["threads_all"] for s in after])
            fd0, fd1 = fifth_medians([s["fds"] for s in after])
            rss_ok = rss1 - rss0 < RSS_GROWTH_LIMIT_MB
            enforced = args.minutes >= RSS_ENFORCED_MINUTES
            verdicts += [rss_ok or not enforced, th1 - th0 <= THREAD_BOUND, fd1 - fd0 <= FD_BOUND]
            print(f"RSS MB        after warm-up {rss0:.1f} -> {rss1:.1f} ({rss1 - rss0:+.1f}; limit "
                  f"{RSS_GROWTH_LIMIT_MB:g}{'' if enforced else f', printed only: enforced from {RSS_ENFORCED_MINUTES} min'}"
                  f"); peak {max(s['rss_mb'] for s in samples):.1f}")
            print(f"threads       {th0:.0f} -> {th1:.0f} (bound +{THREAD_BOUND}; all, FFmpeg's decoder threads included); "
                  f"fds {fd0:.0f} -> {fd1:.0f} (bound +{FD_BOUND})")
        else:
            verdicts.append(False)
            print(f"too few samples after warm-up ({len(after)})")
        accounted, line = account(work / "logs" / "latency.csv", recorder)
        verdicts += [accounted, code == 0, not failures]
        by_reason = ", ".join(f"{k} {v}" for k, v in sorted(recorder.dropped.items()))
        print(f"frames        captured {recorder.accounted}  written {recorder.written}  dropped "
              f"{sum(recorder.dropped.values())}{f' ({by_reason})' if by_reason else ''}  delivered to the loop "
              f"{delivered}  in {elapsed:.0f} s")
        print(f"accounting    {line}")
        print("cameras       " + "; ".join(f"{n}: outages {c['outages']} reconnect attempts {c['reconnect_attempts']}"
                                             for n, c in outages.items() if c.get("outages")) or "no outage")
        print("chaos         " + ", ".join(f"{k} {v}" for k, v in chaos.counts.items())
              + (f"; errors: {' | '.join(chaos.errors[:5])}" if chaos.errors else ""))
        print(f"{events}")
        if len(objects) == 2:
            grown = [(n, c) for n, c in (objects[1] - objects[0]).most_common(6)]
            print("objects       grown after warm-up: " + (", ".join(f"{n} +{c}" for n, c in grown) or "none")
                  + " (while running, at the end of warm-up and just before the end)")
            if objects[0].snapshot is not None:
                for line in grown_lines(objects[0].snapshot, objects[1].snapshot):
                    print(f"allocated     {line}")
        segments = sorted((work / "video").glob("*.mp4"))
        print(f"video         {len(segments)} segments kept, {sum(p.stat().st_size for p in segments) / 1e6:.1f} MB "
              f"(retain_gb {flags['retain_gb']})")
        print(f"load average  {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {os.cpu_count()} CPUs")
        for msg in failures:
            print(f"failure       {msg}")
        ok = all(verdicts)
        print(f"result        {'PASS' if ok else 'FAIL'}  (exit {code}, accounting {'exact' if accounted else 'WRONG'})")
        return 0 if ok else 1
    finally:
        stop.set()
        for h in reversed(helpers):
            if isinstance(h, Chaos):
                if h.publisher is not None:
                    h.publisher.kill()
            elif isinstance(h, RtspRelay):
                h.kill()
            else:
                h.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Soak test: 10,000+ frames through the whole app with every "
                                "headless output; RSS, queue depths and frame accounting checked. --in-process: one "
                                "process running a Session for --minutes with cameras, viewers, broker restarts and "
                                "reloads around it; RSS, threads, fds and frame accounting checked.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=IN_PROCESS_HELP)
    p.add_argument("--frames", type=int, default=10_000, help="frames to capture (default 10000)")
    p.add_argument("--size", default="160x120", help="source frame size WxH (default 160x120)")
    p.add_argument("--model", help="an .onnx (default: export a random-weight R18 at 64x96)")
    p.add_argument("--rtsp-source", action="store_true", help="read from RTSP (live, 15 fps) instead of a file")
    p.add_argument("--sample-every", type=float, default=0.5,
                   help="seconds between samples (default 0.5; --in-process: 5, 1 under 5 minutes)")
    p.add_argument("--warmup", type=int, default=WARMUP_FRAMES,
                   help=f"frames before RSS growth is measured (default {WARMUP_FRAMES})")
    p.add_argument("--keep", help="keep the outputs and samples in this folder")
    p.add_argument("--in-process", action="store_true", help="the in-process soak (below) instead of run_camera.py")
    p.add_argument("--minutes", type=float, default=30.0, help="--in-process: how long (default 30)")
    p.add_argument("--log-max-mb", type=float, default=0.5,
                   help="--in-process: the logs rotate at this size (default 0.5)")
    args = p.parse_args(argv)
    if args.in_process:
        if args.sample_every == 0.5:
            args.sample_every = 5.0 if args.minutes >= 5 else 1.0
        return in_process(args)
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
