"""How much of an mp4 recording a SIGKILL loses: run_camera.py records the sample clip
(--realtime --loop, a tiny real ONNX model), is killed at each given second, and the frames
the latency log shows written are compared with the frames in the file's complete fragments
(what ffprobe and players read).

    python bench/crash_loss.py                  # kills at 3, 3.5, 4 and 4.5 s
    python bench/crash_loss.py --at 2 5 9 --source clip.mp4
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.latency import read_log  # noqa: E402
from testkit.app_helpers import SAMPLE_VIDEO, ffprobe_frames, samples_in_complete_fragments  # noqa: E402
from testkit.app_process import App  # noqa: E402
from testkit.calib_fixtures import tiny_segmenter  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", type=float, nargs="+", default=[3.0, 3.5, 4.0, 4.5], help="seconds after the first row")
    p.add_argument("--source", default=str(SAMPLE_VIDEO))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_segmenter(tmp / "tiny.onnx")
        print(f"load average {os.getloadavg()[0]:.2f} (1 min)")
        print(f"{'kill at s':>9} {'written':>8} {'in file':>8} {'fragments':>9} {'lost':>5} {'lost s':>7}")
        for at in args.at:
            app = App("--source", args.source, "--realtime", "--loop", "--model", model,
                      "--output", tmp / "out.mp4", log=tmp / "lat.csv")
            app.wait_rows(1)
            time.sleep(at)
            app.kill()
            app.proc.communicate()
            rows = read_log(tmp / "lat.csv")
            written = sum(1 for r in rows if not r["dropped"])
            frames, fragments = samples_in_complete_fragments(tmp / "out.mp4")
            assert ffprobe_frames(tmp / "out.mp4") == frames
            fps = app_fps(args.source)
            print(f"{at:>9.1f} {written:>8} {frames:>8} {fragments:>9} {written - frames:>5} "
                  f"{(written - frames) / fps:>7.2f}")


def app_fps(source: str) -> float:
    import av

    with av.open(source) as c:
        return float(c.streams.video[0].average_rate or 25)


if __name__ == "__main__":
    main()
