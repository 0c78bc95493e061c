"""A live record input (app/recording.py): an RTSP camera (ffmpeg -> rtsp-server-perl) recorded
by packet copy, never decoded, that goes away right after an event and comes back: the event's
clip is cut from the ring meanwhile and starts at a keyframe, and the recording goes on in a new
segment that starts at a keyframe; the segments hold every packet received."""
from __future__ import annotations

import subprocess
import threading
import time

from app.analytics.clips import ClipRecorder
from app.recording import Recording, open_record_input
from app.settings import CameraSettings
from testkit.app_helpers import first_frame_is_key, wait_for
from testkit.rtsp_server import publishers, relay, wait_published  # noqa: F401 (fixtures)


def _packets(path) -> int:
    """The video packets in a file, read without decoding: what a packet copy must hold exactly
    (a live UDP stream may bring a damaged frame, which decoding would report, copying not)."""
    r = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
                        "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_a_live_record_input_reconnects_and_goes_on_in_a_new_segment_at_a_keyframe(relay, publishers, tmp_path):
    push, pull = relay.push_url("/main"), relay.pull_url("/main")
    publisher = publishers(push)
    wait_published(pull, transport="udp")
    cam = CameraSettings.of({"name": "door", "rtsp_transport": "udp", "source_timeout": 2})
    recording = Recording(open_record_input(pull, cam), tmp_path, "door", segment_s=60)
    # Event clips from the live record stream (Annex B over RTSP), on the clock of detect frames.
    clips = ClipRecorder(tmp_path / "clips", "door", keep_s=2, max_mb=100)
    ticking = threading.Event()

    def detect_frames():
        while not ticking.wait(1 / 15):
            clips.add_frame(time.monotonic(), None)

    ticker = threading.Thread(target=detect_frames, daemon=True)
    ticker.start()
    clip = tmp_path / "clips" / "door" / "abc-1-1.mp4"
    recording.start(clips=clips)
    try:
        # The stream's first packets come in a burst (those FFmpeg read to probe it); a clip wants
        # packets at their own pace: 2 s of them, so the GOP (1 s) at the clip's start is there.
        wait_for(lambda: recording.packets >= 50)
        clips.start_clip("abc-1-1", time.monotonic() - 1)
        wait_for(lambda: recording.packets >= 65)
        clips.end_clip("abc-1-1", time.monotonic())
        publisher.stop()   # the camera goes away right after the event ...
        before = recording.packets
        wait_for(lambda: clip.exists(), timeout_s=5)   # ... the clip is written from the ring meanwhile
        publishers(push)   # ... and comes back
        wait_for(lambda: recording.reader.counters()["outages"] >= 1 and recording.packets >= before + 20)
    finally:
        recording.close()
        ticking.set()
        ticker.join()
        clips.close()
    assert clips.from_record and first_frame_is_key(clip) and _packets(clip) >= 25
    segments = sorted((tmp_path / "door").glob("door.*.mp4"))
    assert recording.segments == len(segments) == 2   # one per connection (60 s segments)
    assert all(first_frame_is_key(s) for s in segments)
    assert sum(_packets(s) for s in segments) == recording.packets
    assert recording.decoded == 0
