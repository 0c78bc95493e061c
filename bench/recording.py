"""What continuous recording by packet copy costs (app/recording.py), in % of one core per camera.

    python bench/recording.py                       # 1920x1080 main stream, 5 loops of the street clip
    python bench/recording.py --size 1280x720 --loops 10 --rounds 5

The main stream is made from the street clip with ffmpeg (libx264, 15 fps, a keyframe every
second), as an IP camera's 1080p main stream. Each round records all of it with the app's
Recording (demux -> fragmented MP4 segments, no decode, no encode) and measures this process's
CPU time (user + system, every thread: resource.getrusage). Recording a camera live costs that
CPU time spread over the stream's own duration, so the cost at real time is
CPU seconds / stream seconds (a share of one core). The median over rounds is printed, with the
decoded-frames counter (0: the record input is never decoded).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.recording import Recording, open_record_input  # noqa: E402
from app.settings import CameraSettings  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(SAMPLE), help="the clip the main stream is made of")
    p.add_argument("--size", default="1920x1080", help="the main stream's size WxH (default 1920x1080)")
    p.add_argument("--loops", type=int, default=5, help="times the clip is repeated (default 5)")
    p.add_argument("--segment-s", type=float, default=10.0, help="segment length (default 10 s, Frigate's)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the median is printed (default 3)")
    args = p.parse_args(argv)
    w, h = args.size.lower().split("x")
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        main_stream = Path(tmp) / "main.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(args.loops - 1), "-i", args.source,
                        "-vf", f"scale={w}:{h}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "15",
                        "-r", "15", str(main_stream)], check=True)
        cam = CameraSettings.of({"name": "main"})
        shares = []
        for i in range(args.rounds):
            before = cpu_s()
            rec = Recording(open_record_input(str(main_stream), cam), Path(tmp) / f"rec{i}", "main", args.segment_s)
            rec.start()
            rec.close()
            cpu = cpu_s() - before
            duration = rec.packets / 15.0
            shares.append(cpu / duration)
            print(f"round {i}: {rec.packets} packets ({duration:.1f} s of video, {rec.bytes / 1e6:.1f} MB) in "
                  f"{cpu * 1000:.0f} ms CPU; {rec.segments} segments; decoded frames {rec.decoded}")
    print(f"recording a {args.size} 15 fps main stream by packet copy: {100 * statistics.median(shares):.2f}% "
          f"of a core per camera (median of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
