"""`bisenet run` / `python run_camera.py`: live segmentation overlay from a camera, file or stream.

Every flag can also come from a preset, `--config configs/app/<name>.yaml` (or just <name>):
its keys are the flag names (dashes or underscores); the command line overrides it. An
unknown key is an error naming the key and the file.

Several cameras, one engine: `--source` repeated (cameras cam0, cam1, ... in order), or a
`cameras:` list in the config, each entry a `name`, a `source` and any per-camera option
(app/settings.py's CameraSettings: output, realtime, loop, camera-size, ...); the others apply
to all. Outputs take a `{camera}` placeholder: --output out_{camera}.mp4. See docs/multicamera.md.

The options are declared once, in app/settings.py; this module is the command-line boundary:
the only place that reads argparse's namespace (`resolve`), once.
"""
from __future__ import annotations

import argparse
import os
import sys

from app import settings as run_settings
from app.settings import RunSettings, add_arguments
from core.config_files import config_path
from core.errors import InputError

HELP = "run the live app: camera / video / stream in, segmentation overlay out, latency logged"
# The models are README's first block (artifacts/camvid.onnx) and docs/multicamera.md's export.
EXAMPLE = ("python run_camera.py --source ../shared/data/samples/camvid_0016E5_15fps.mp4 --model artifacts/camvid.onnx "
           "--output out.mp4 --latency-log lat.csv\n  bisenet run --config desktop-webcam --model artifacts/camvid.onnx\n"
           "  bisenet run --source a.mp4 --source rtsp://127.0.0.1:8554/cam --model artifacts/camvid_dyn.onnx "
           "--output 'out_{camera}.mp4'")


def resolve(args: argparse.Namespace) -> RunSettings:
    """argparse's namespace -> the settings (command line > preset > defaults), checked."""
    given = vars(args)
    flags = {name: value for name, value in given.items() if name in run_settings.OPTIONS}
    return run_settings.build(flags, given.get("config"))


def load_preset(name: str, _parser=None) -> RunSettings:
    """A preset alone, checked (the settings models declare its keys: no parser needed)."""
    return run_settings.build({}, name)


def _parser(prog: str = "bisenet run") -> argparse.ArgumentParser:
    from app.cli import OneLineParser

    p = OneLineParser(prog=prog, description=HELP, epilog=f"Example: {EXAMPLE}",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the session (app/session.py), print the start-up lines, drain its frames (the
    loop bisenet_edge.stream() hands to the caller), then the summary."""
    from app.recording import Recording
    from app.session import Session, check_settings, load_engine
    from app.sources import decoder_of, size_of

    settings = resolve(args)
    if not settings.cameras:
        raise InputError("no --source: pass a camera index, a video/image file, a folder, or a stream URL")
    if not settings.model:
        raise InputError("no --model: pass an .onnx (see `bisenet export`), an .engine, or a zoo name")
    check_settings(settings)   # before the model loads and any output opens
    settings.server.server_options()   # a bad --tls-cert / token is refused before the model loads
    engine = load_engine(settings)
    # SIGHUP / POST /api/reload: the same --config file and command line read again (app/session.py reload)
    session = Session(settings, engine, config_name=args.config or "config", reread=lambda: resolve(args))
    if args.config:   # the console's zone editor saves to the preset (app/server/preset_edit.py)
        session.server.preset = config_path("app", args.config)
    several = session.several
    cameras = session.cameras
    if settings.output_note:   # once everything opened: a refusal above stays the only line
        print(f"output: {settings.output_note}", file=sys.stderr, flush=True)
    for cam in cameras:
        reader = cam.reader
        kind = "live" if reader.live else "file"
        rate = f", {reader.fps:.3g} fps" if reader.fps else ""
        size = size_of(reader)   # as the stream declares it
        rate += f", {size[0]}x{size[1]}" if size else ""
        rate += f", inferred at {cam.detect_fps:.3g} fps" if cam.detect_fps else ""
        decode = f", decode: {decoder_of(reader)}" if decoder_of(reader) else ""
        # Camera roles (app/recording.py): the source is the detect input; the record input beside it.
        record = "".join(f"; record: {sink.describe()}" for sink in cam.sinks if isinstance(sink, Recording))
        record += f"; {cam.follower.describe()}" if cam.follower is not None else ""   # overlay_picture record
        roles = " (detect)" if record else ""
        print(f"{cam.name + ': ' if several else ''}source{roles}: {reader.description} ({kind}{rate}){decode}{record}"
              + (f" -> {', '.join(sink.name for sink in cam.sinks)}" if several else ""), file=sys.stderr, flush=True)
    pipeline, recorder, analytics = session.pipeline, session.recorder, session.analytics
    batching = (f"\nbatching: {len(cameras)} cameras, up to {pipeline.scheduler.batch_size} frames per inference, "
                f"deadline {pipeline.scheduler.timeout_s * 1000:.0f} ms") if several else ""
    outputs = "" if several else f"\noutputs: {', '.join(sink.name for sink in cameras[0].sinks)}"
    print(f"model: {engine.describe()}{outputs}{batching}", file=sys.stderr, flush=True)
    try:
        code = session.run()
    finally:
        session.close()   # open events end, clips written, event deliveries flushed, the server stops
    engine.close()
    print(recorder.format_summary(pipeline.captured_by_camera()), file=sys.stderr, flush=True)
    log_lost = settings.latency_log and not os.path.isfile(settings.latency_log)
    if settings.latency_log and not log_lost:
        print(f"latency log: {settings.latency_log}", file=sys.stderr)
    # Reconnect counters: live sources and RTSP outputs (per camera), a remote engine (Triton).
    parts = [(f"{cam.name} " if several else "", name, counters) for cam in (*pipeline.left, *pipeline.cameras)
             for name, counters in [(f"source {cam.reader.description}", cam.counters()),
                                    *((sink.name, sink.counters()) for sink in cam.sinks)]]
    parts.append(("", engine.name, engine.counters()))
    for prefix, name, counters in parts:
        if counters:
            print(f"{prefix}{name}: {summary_counters(counters)}", file=sys.stderr)
    if analytics is not None:
        print(analytics.summary(), file=sys.stderr)
    for name, err in pipeline.sink_failures.items():
        print(f"output {name} failed: {err}", file=sys.stderr)
    why = "; ".join(filter(None, [run_problems(pipeline, recorder), recorder.write_error, log_lost and
                                  f"the latency log {settings.latency_log} was removed during the run"]))
    if why:
        print(f"exit 1: {why}", file=sys.stderr)
    return 1 if why else code


def run_problems(pipeline, recorder) -> str:
    """Why the run did not do its job ('' when it did): a failure, an output that could not be
    written, or nothing written at all. The exit status is 1 then."""
    problems = list(pipeline.failures)
    problems += [f"output {name} could not be written" for name in pipeline.sink_failures]
    if pipeline.stop_reason in ("SIGINT", "SIGTERM"):
        pass   # the user stopped it, maybe before the first frame: not a failure by itself
    elif pipeline.captured == 0:
        problems.append("the source gave no frames")
    elif recorder.written == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(recorder.dropped.items()))
        problems.append(f"no frame was written ({reasons or 'none finished'})")
    else:
        # An output that must deliver (an RTSP push) and took none of the frames: it wrote
        # nothing even if other outputs worked (docs/app.md, "Exit status").
        problems += [f"output {cam.tag}{sink.name} wrote nothing ({summary_counters(sink.counters())})"
                     for cam in (*pipeline.left, *pipeline.cameras) for sink in cam.sinks
                     if sink.must_deliver and sink.written == 0 and sink.name not in cam.sink_failures]
    return "; ".join(problems)


def summary_counters(counters: dict) -> str:
    """{'written': 0, 'dropped': {'server_down': 30, 'send_error': 0}}
    -> 'written 0, dropped.server_down 30 dropped.send_error 0'."""
    return ", ".join(f"{k} {v}" if not isinstance(v, dict) else " ".join(f"{k}.{r} {n}" for r, n in v.items())
                     for k, v in counters.items())


def main(argv=None) -> int:
    """run_camera.py's entry: the same flags and one-line errors as `bisenet run`."""
    parser = _parser("run_camera.py")
    args = parser.parse_args(argv)
    from app.cli import run_with_one_line_errors

    return run_with_one_line_errors("run_camera.py", run, args)
