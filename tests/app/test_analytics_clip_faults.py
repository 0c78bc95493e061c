"""The clip recorder against a hostile or failing clips folder, with real encoding (small
frames, stream times made up so a minute of video takes a second): files it did not write and
symlinks are never deleted, stale `.part` files are, a folder removed mid-run is made again,
shutdown never waits long, an event that never ends gives a clip of at most max_clip_s."""
from __future__ import annotations

import os
import subprocess
import time

import numpy as np

from app.analytics.clips import ClipRecorder

FPS = 10.0


def frames(recorder, t0: float, t1: float, fps: float = FPS, size=(48, 64)):
    rng = np.random.default_rng(0)
    t = t0
    while t < t1:
        image = rng.integers(0, 255, (*size, 3), np.uint8)   # noise: a clip has a real size
        while True:   # the recorder drops frames when it is behind; the test wants them all
            before = recorder.skipped
            recorder.add_frame(t, image)
            if recorder.skipped == before:
                break
            recorder.skipped = before
            time.sleep(0.005)
        t += 1.0 / fps


def duration(path) -> float:
    import av

    with av.open(str(path)) as c:
        times = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.pts is not None]
    return max(times) - min(times)


def test_retention_deletes_only_the_recorders_own_files_and_follows_no_symlink(tmp_path):
    clips = tmp_path / "clips"
    (clips / "old_footage").mkdir(parents=True)
    beach = clips / "old_footage" / "beach.mp4"
    beach.write_bytes(b"\0" * 600_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "1a-2b-1.mp4"                  # named like a clip, reached through a link
    precious.write_bytes(b"\0" * 600_000)
    (clips / "cam0").mkdir()
    os.symlink(precious, clips / "cam0" / "1a-2b-2.mp4")
    os.symlink(outside, clips / "camlink")
    stale = clips / "cam0" / "1a-2b-3.mp4.part"          # what a SIGKILL left
    stale.write_bytes(b"\0" * 2_500_000)
    lines = []
    rec = ClipRecorder(clips, "cam0", keep_s=1.0, max_mb=0.001, fps=FPS, log=lines.append)
    assert not stale.exists() and rec.stale_parts == 1 and "deleted 1 unfinished" in lines[0]
    frames(rec, 0.0, 1.0)
    rec.start_clip("6b1-2c-1", 0.0)
    rec.end_clip("6b1-2c-1", 0.5)
    frames(rec, 1.0, 2.0)
    rec.start_clip("6b1-2c-2", 1.0)
    rec.end_clip("6b1-2c-2", 1.5)
    frames(rec, 2.0, 3.0)
    rec.close()
    assert beach.stat().st_size == 600_000 and precious.stat().st_size == 600_000
    assert (clips / "cam0" / "1a-2b-2.mp4").is_symlink() and (clips / "camlink").is_symlink()
    # Its own files do go, oldest first; the newest stays even alone over the cap (an event names it).
    assert not (clips / "cam0" / "6b1-2c-1.mp4").exists() and (clips / "cam0" / "6b1-2c-2.mp4").is_file()


def test_a_clips_folder_removed_mid_run_is_made_again(tmp_path):
    clips = tmp_path / "clips"
    lines = []
    rec = ClipRecorder(clips, "cam0", keep_s=1.0, max_mb=100, fps=FPS, log=lines.append)
    frames(rec, 0.0, 1.0)
    subprocess.run(["rm", "-rf", str(clips)], check=True)
    rec.start_clip("6b1-2c-1", 0.5)
    rec.end_clip("6b1-2c-1", 1.5)
    frames(rec, 1.0, 3.0)
    rec.snapshot("6b1-2c-1", np.zeros((48, 64, 3), np.uint8))
    rec.close()
    assert (clips / "cam0" / "6b1-2c-1.mp4").is_file() and (clips / "cam0" / "6b1-2c-1.jpg").is_file()
    assert not lines


def test_a_clips_folder_that_cannot_be_made_stops_the_clips_with_few_lines_and_a_quick_close(tmp_path):
    clips = tmp_path / "clips"
    lines = []
    rec = ClipRecorder(clips, "cam0", keep_s=1.0, max_mb=100, fps=FPS, log=lines.append)
    frames(rec, 0.0, 1.0)
    subprocess.run(["rm", "-rf", str(clips)], check=True)
    clips.write_text("a file where the folder was")       # mkdir fails from now on
    for n in range(20):
        rec.start_clip(f"6b1-2c-{n}", 1.0 + n * 0.2)
        rec.end_clip(f"6b1-2c-{n}", 1.1 + n * 0.2)
    frames(rec, 1.0, 6.0)
    for n in range(20):
        rec.snapshot(f"6b1-2c-{n}", np.zeros((48, 64, 3), np.uint8))
    t0 = time.monotonic()
    rec.close()
    assert time.monotonic() - t0 < 5.0
    warnings = [line for line in lines if line.startswith("warning:")]
    assert 1 <= len(warnings) <= 3, lines          # rate-limited, the rest counted
    assert "6b1-2c-0" in warnings[0] and str(clips) in warnings[0]


def test_an_event_that_never_ends_gets_a_clip_of_at_most_max_clip_s_and_a_bounded_ring(tmp_path):
    clips = tmp_path / "clips"
    rec = ClipRecorder(clips, "cam0", keep_s=1.0, max_mb=100, fps=FPS, log=lambda _: None)
    frames(rec, 0.0, 1.0)
    rec.start_clip("6b1-2c-1", 0.5, max_s=5.0)       # never ended
    frames(rec, 1.0, 30.0)
    path = clips / "cam0" / "6b1-2c-1.mp4"
    assert path.is_file()                             # written once the stream passed 5 s, not at the end
    assert rec.ring[0][0] > 25.0                      # the ring let go of the event's video
    rec.close()
    assert 3.0 < duration(path) <= 5.0 + 0.01
    from app.analytics.clips import MAX_RING_BYTES
    assert rec.ring_bytes <= MAX_RING_BYTES
