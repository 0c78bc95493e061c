"""No silent data loss. An output that is an input, or two outputs that are the same file, are
refused at start (exit 2, one line, the input's bytes unchanged); an output whose folder is
removed mid-run ends the run with exit 1 naming it. run_camera.py as a real process on a real
clip."""
from __future__ import annotations

import shutil

import pytest

from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import App, run_camera

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "dup" / "src.mp4"
    path.parent.mkdir()
    shutil.copy(SAMPLE_VIDEO, path)
    return path


def _refused(tmp_path, *args, says: str, unchanged=()):
    before = {p: p.read_bytes() for p in unchanged}
    files_before = sorted(tmp_path.rglob("*"))
    r = run_camera(*args, "--model", tiny_onnx(), timeout_s=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert says in r.stderr, r.stderr
    assert all(p.read_bytes() == b for p, b in before.items())
    assert sorted(tmp_path.rglob("*")) == files_before   # nothing left behind


def test_an_output_that_is_the_input_is_refused(clip, tmp_path):
    other_spelling = clip.parent / ".." / "dup" / "src.mp4"
    _refused(tmp_path, "--source", clip, "--output", other_spelling, says="would destroy it", unchanged=[clip])


def test_two_cameras_writing_one_file_are_refused(clip, tmp_path):
    out = tmp_path / "x.mp4"
    config = tmp_path / "two.yaml"
    config.write_text(f"cameras:\n  - {{name: a, source: {clip}, output: [{out}]}}\n"
                      f"  - {{name: b, source: {clip}, output: [{tmp_path}/./x.mp4]}}\n")
    _refused(tmp_path, "--config", config, says="are the same file", unchanged=[clip, config])


def test_one_camera_with_one_file_twice_and_the_latency_log_as_an_output_are_refused(clip, tmp_path):
    out = tmp_path / "o.mp4"
    _refused(tmp_path, "--source", clip, "--output", out, "--output", out, says="are the same file", unchanged=[clip])
    _refused(tmp_path, "--source", clip, "--output", tmp_path / "lat.mp4", "--latency-log", tmp_path / "lat.mp4",
             says="--latency-log", unchanged=[clip])


def test_the_output_folder_removed_mid_run_is_exit_1_naming_it(clip, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    app = App("--source", clip, "--realtime", "--max-frames", "60", "--model", tiny_onnx(),
              "--output", folder / "o.mp4", log=folder / "lat.csv")
    app.wait_rows(5)
    shutil.rmtree(folder)
    err = app.finish()
    assert app.proc.returncode == 1, err
    assert f"{folder / 'o.mp4'} was removed during the run" in err, err
    assert f"the latency log {folder / 'lat.csv'} was removed" in err
    assert f"latency log: {folder}" not in err   # the summary names no log that does not exist
    assert clip.read_bytes() == SAMPLE_VIDEO.read_bytes()


def test_an_events_log_that_is_the_input_video_is_refused(clip, tmp_path):
    _refused(tmp_path, "--source", clip, "--output", "null", "--events-log", clip, says="would destroy it",
             unchanged=[clip])


@pytest.mark.parametrize("flags, says", [
    ({"events_log": "{clip}"}, "--events-log {clip} is the input"),
    ({"coverage_log": "{tmp}/log.csv", "latency": "{tmp}/log.csv"}, "are the same file"),
    ({"events_log": "{tmp}/log.txt", "latency": "{tmp}/log.txt"}, "are the same file"),
    ({"events_log": "{tmp}/log.csv", "coverage_log": "{tmp}/./log.csv"}, "are the same file"),
    ({"events_log": "{tmp}/clips/cam0/e.jsonl", "clips_dir": "{tmp}/clips"}, "lies in --clips-dir"),
    ({"output": "{tmp}/clips/", "clips_dir": "{tmp}/clips"}, "lies in --clips-dir"),
    ({"clips_dir": "{tmp}/dup"}, "lies in --clips-dir"),                 # the input's own folder
])
def test_every_file_the_run_writes_is_checked_against_the_inputs_and_each_other(clip, tmp_path, flags, says):
    from types import SimpleNamespace

    from app.settings import AnalyticsSettings
    from app.sinks import SinkError, check_distinct_outputs

    def fill(text):
        return text.format(clip=clip, tmp=tmp_path)

    camera = SimpleNamespace(name="cam0", source=str(clip), output=[fill(flags.get("output", "null"))])
    analytics = AnalyticsSettings(**{k: fill(v) for k, v in flags.items() if k not in ("output", "latency")})
    latency = fill(flags["latency"]) if "latency" in flags else None
    with pytest.raises(SinkError, match=fill(says).replace(".", r"\.")):
        check_distinct_outputs([camera], latency, analytics)
    check_distinct_outputs([camera], None, AnalyticsSettings(events_log=str(tmp_path / "events.jsonl")))
