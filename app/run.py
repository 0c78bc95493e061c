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
from core.errors import InputError

HELP = "run the live app: camera / video / stream in, segmentation overlay out, latency logged"
EXAMPLE = ("python run_camera.py --source clip.mp4 --model artifacts/r18.onnx --output out.mp4 "
           "--latency-log lat.csv\n  bisenet run --config desktop-webcam --model artifacts/r18.onnx\n"
           "  bisenet run --source a.mp4 --source rtsp://127.0.0.1:8554/cam --model r18_dyn.onnx "
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
    from app.camera import Camera
    from app.latency import LatencyRecorder
    from app.pipeline import Pipeline
    from app.server import AppServer
    from app.sinks import DisplaySink, check_display, check_distinct_outputs, check_save_labels, open_sink
    from app.analytics.settings import camera_configs
    from app.sources import open_source
    from engines.load import load_engine

    settings = resolve(args)
    if not settings.cameras:
        raise InputError("no --source: pass a camera index, a video/image file, a folder, or a stream URL")
    if not settings.model:
        raise InputError("no --model: pass an .onnx (see `bisenet export`), an .engine, or a zoo name")
    several = len(settings.cameras) > 1
    for cam in settings.cameras:
        check_save_labels(cam)
    check_distinct_outputs(settings.cameras, settings.latency_log)
    if any("display" in cam.output for cam in settings.cameras):
        check_display(probe=True)   # before the model loads and any output opens

    server_options = settings.server.server_options()
    engine = load_engine(settings.model, checkpoint=settings.checkpoint, providers=settings.providers,
                         threads=settings.threads, backend=settings.backend, precision=settings.precision,
                         triton_shm=settings.triton_shm, triton_in_flight=settings.triton_in_flight)
    analytics_configs = camera_configs(settings.cameras, list(engine.info.class_names), args.config or "config")
    cameras, opened, server, analytics = [], [], None, None
    try:
        server = AppServer(server_options)   # listens only for http:// outputs and --metrics-port
        server.set_model(engine)
        for cam_settings in settings.cameras:
            name = cam_settings.name
            # Several cameras: a live one that is down at start is an outage, the others run.
            reader = open_source(cam_settings.source, cam_settings, down_ok=several)
            opened.append(reader)
            sinks = []
            for spec in cam_settings.output:
                # http:// outputs of all cameras share the server: /camera/NAME each, a grid at /
                sink = open_sink(spec, cam_settings, live=reader.live, server=server, camera=name)
                opened.append(sink)
                if several and isinstance(sink, DisplaySink):
                    sink.title = f"{sink.title} {name}"   # one window per camera
                sinks.append(sink)
            cameras.append(Camera(name, reader, sinks, max_frames=cam_settings.max_frames,
                                  out_fps=cam_settings.fps, queue_size=settings.queue_size))
        if all(getattr(cam.reader, "down", False) for cam in cameras):
            raise InputError(f"no camera could be opened: {cameras[0].reader.description}: "
                             f"{cameras[0].reader.outage_reason}")
        if settings.server.metrics_port is not None:   # (host, port): app/validate.py's listen_address
            server.listen(*settings.server.metrics_port, what="metrics")
        recorder = LatencyRecorder(settings.latency_log, max_mb=settings.log_max_mb, keep=settings.log_keep)
        if analytics_configs or settings.analytics.any:
            from app.analytics import Analytics
            analytics = Analytics(settings.analytics, analytics_configs, list(engine.info.class_names),
                                  fps={c.name: c.fps for c in cameras},
                                  log_max_mb=settings.log_max_mb, log_keep=settings.log_keep)
            server.set_analytics(analytics, settings.analytics.clips_dir)
    except BaseException:
        if analytics is not None:
            analytics.close()
        for part in opened:
            part.close()
        if server is not None:
            server.close()
        raise
    if settings.output_note:   # once everything opened: a refusal above stays the only line
        print(f"output: {settings.output_note}", file=sys.stderr, flush=True)
    for cam in cameras:
        reader = cam.reader
        kind = "live" if reader.live else "file"
        rate = f", {reader.fps:.3g} fps" if reader.fps else ""
        print(f"{cam.name + ': ' if several else ''}source: {reader.description} ({kind}{rate})"
              + (f" -> {', '.join(sink.name for sink in cam.sinks)}" if several else ""), file=sys.stderr, flush=True)
    pipeline = Pipeline(cameras, engine, recorder=recorder, alpha=settings.alpha, mode=settings.mode,
                        hud=settings.hud, legend=settings.legend, batch_timeout_ms=settings.batch_timeout_ms,
                        analytics=analytics)
    batching = (f"\nbatching: {len(cameras)} cameras, up to {pipeline.scheduler.batch_size} frames per inference, "
                f"deadline {pipeline.scheduler.timeout_s * 1000:.0f} ms") if several else ""
    outputs = "" if several else f"\noutputs: {', '.join(sink.name for sink in cameras[0].sinks)}"
    print(f"model: {engine.describe()}{outputs}{batching}", file=sys.stderr, flush=True)
    for cam, cam_settings in zip(cameras, settings.cameras):
        server.metrics.watch(cam.name, recorder, cam_settings.source_timeout, reader=cam.reader,
                             queues={"input": cam.in_q, "output": cam.out_q})
    try:
        code = pipeline.run()
    finally:
        if analytics is not None:
            analytics.close()   # open events end, clips written, event sinks flushed
        server.close()
    engine.close()
    print(recorder.format_summary(pipeline.captured_by_camera()), file=sys.stderr, flush=True)
    log_lost = settings.latency_log and not os.path.isfile(settings.latency_log)
    if settings.latency_log and not log_lost:
        print(f"latency log: {settings.latency_log}", file=sys.stderr)
    # Reconnect counters: live sources and RTSP outputs (per camera), a remote engine (Triton).
    parts = [(f"{cam.name} " if several else "", name, counters) for cam in cameras
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
                     for cam in pipeline.cameras for sink in cam.sinks
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
