"""`bisenet run` / `python run_camera.py`: live segmentation overlay from a camera, file or stream.

Every flag can also come from a preset, `--config configs/app/<name>.yaml` (or just <name>):
its keys are the flag names (dashes or underscores); the command line overrides it. An
unknown key is an error naming the key and the file.

Several cameras, one engine: `--source` repeated (cameras cam0, cam1, ... in order), or a
`cameras:` list in the config, each entry a `name`, a `source` and any per-camera flag
(PER_CAMERA below: output, realtime, loop, camera-size, ...); the others apply to all.
Outputs take a `{camera}` placeholder: --output out_{camera}.mp4. See docs/multicamera.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import validate
from app.analytics import settings as analytics_settings
from core.errors import InputError
from core.validate import load_yaml, size_wh

HELP = "run the live app: camera / video / stream in, segmentation overlay out, latency logged"
EXAMPLE = ("python run_camera.py --source clip.mp4 --model artifacts/r18.onnx --output out.mp4 "
           "--latency-log lat.csv\n  bisenet run --config desktop-webcam --model artifacts/r18.onnx\n"
           "  bisenet run --source a.mp4 --source rtsp://127.0.0.1:8554/cam --model r18_dyn.onnx "
           "--output 'out_{camera}.mp4'")

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs" / "app"

# Real defaults live here, not in argparse: argparse defaults are None so that a preset value
# can be told apart from a flag the user left out.
DEFAULTS = {
    "source": None, "model": None, "checkpoint": None, "providers": None, "threads": None,
    "output": ["display"], "alpha": 0.5, "mode": "overlay", "hud": False, "legend": False,
    "latency_log": None, "max_frames": None, "realtime": False, "loop": False, "save_labels": False, "fps": None,
    "camera_size": None, "camera_fps": None, "queue_size": 4, "source_timeout": 10.0, "bitrate": None,
    "rtsp_transport": None, "backend": None, "precision": None, "triton_shm": "none", "triton_in_flight": 2,
    "batch_timeout_ms": None, "cameras": None,
    "auth_token": None, "auth": True, "allowed_hosts": None, "max_clients": 16, "metrics_port": None,
    "tls_cert": None, "tls_key": None,
    **analytics_settings.DEFAULTS,   # scene analytics: its flags and the zones:/rules: sections
}
# Flags a `cameras:` entry may set for its camera alone (besides `name`).
PER_CAMERA = ("source", "output", "realtime", "loop", "max_frames", "camera_size", "camera_fps", "source_timeout",
              "rtsp_transport", "fps", "bitrate", "save_labels")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML",
                   help="preset: configs/app/<name>.yaml or a path (may list cameras:); flags override it")
    g = p.add_argument_group("input")
    g.add_argument("--source", action="append", metavar="SOURCE",
                   help="0 or /dev/video0 (camera), clip.mp4, photo.jpg, folder/, 'imgs/*.png', "
                   "rtsp://..., http(s)://..., csi://0, gst:<pipeline>; repeat for several cameras "
                   "(cam0, cam1, ...: one engine, frames batched across cameras)")
    g.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="pace a video file at its own fps and drop like a live source (default off)")
    g.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                   help="start a video file, image or folder over at its end (default off)")
    g.add_argument("--max-frames", type=int, metavar="N", help="stop after N captured frames (per camera)")
    g.add_argument("--camera-size", type=size_wh, metavar="WxH", help="ask the camera / CSI sensor for this size")
    g.add_argument("--camera-fps", type=float, help="ask the camera / CSI sensor for this rate")
    g.add_argument("--source-timeout", type=float, metavar="S",
                   help="seconds without a frame before a stream counts as lost (default 10)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model.onnx, model.engine, grpc://HOST:8001/NAME or http://HOST:8000/NAME "
                   "(Triton), or a zoo name / model YAML (PyTorch)")
    g.add_argument("--checkpoint", help="checkpoint .pth for a zoo name / model YAML")
    g.add_argument("--providers", help="ONNX Runtime providers, e.g. tensorrt,cuda,cpu (default cpu)")
    g.add_argument("--threads", type=int, help="inference threads of the CPU backend (default: its own choice)")
    g.add_argument("--backend", choices=["openvino", "onnxruntime"],
                   help="CPU backend for an .onnx (default: the faster for the file, openvino for int8 and bf16, "
                   "onnxruntime for fp32; --providers cuda/tensorrt use onnxruntime)")
    g.add_argument("--precision", choices=["fp32", "bf16"],
                   help="float compute precision, OpenVINO only: fp32 (default) or bf16 (CPUs with bf16; "
                   "an int8 model keeps its int8 layers)")
    g.add_argument("--triton-shm", choices=["none", "system", "cuda"],
                   help="Triton: pass tensors through shared memory, server on this host (default none; "
                   "cuda is unverified)")
    g.add_argument("--triton-in-flight", type=int, metavar="K", help="Triton: requests in flight at once (default 2)")
    g.add_argument("--batch-timeout-ms", type=float, metavar="MS",
                   help="several cameras: run a batch that is not full after this long (default: half a "
                   "frame interval of the fastest camera)")
    g = p.add_argument_group("output")
    g.add_argument("--output", action="append", metavar="SPEC",
                   help="repeatable: display, out.mp4|.mkv|.avi, folder/, http://@:8080, rtsp://HOST:PORT/PATH, "
                   "null (default display); {camera} in it is replaced by the camera's name")
    g.add_argument("--alpha", type=float, help="overlay opacity 0..1 (default 0.5)")
    g.add_argument("--mode", choices=["overlay", "mask", "side-by-side"], help="default overlay")
    g.add_argument("--hud", action=argparse.BooleanOptionalAction, default=None, help="draw fps and latency")
    g.add_argument("--legend", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the classes on screen with their colors")
    g.add_argument("--save-labels", action=argparse.BooleanOptionalAction, default=None,
                   help="folder outputs: also write the raw label maps (labels/NNNNNN.png)")
    g.add_argument("--fps", type=float, help="frame rate for video outputs and --realtime when the source has none "
                   "(default: the source's, else 25)")
    g.add_argument("--bitrate", help="video / RTSP output bitrate in bit/s, e.g. 800k, 2M (default: the encoder's)")
    g.add_argument("--rtsp-transport", choices=["tcp", "udp", "auto"],
                   help="RTSP in and out: tcp, udp (e.g. rtsp-server-perl) or auto (UDP, then TCP); "
                   "default tcp for --source, auto for rtsp:// outputs")
    g.add_argument("--latency-log", metavar="FILE", help="one row per frame: FILE.csv or FILE.jsonl")
    g.add_argument("--queue-size", type=int, help="frames a file may have queued per stage "
                   f"(default 4, at most {validate.MAX_QUEUE})")
    g = p.add_argument_group("serving (http:// and rtsp://@ outputs, /metrics; see docs/service.md)")
    g.add_argument("--auth-token", metavar="TOKEN",
                   help="token viewers must send (Bearer, Basic password, or /?token= once); default: "
                   "$BISENET_AUTH_TOKEN, else one is generated and printed when a port listens beyond loopback")
    g.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                   help="require the token on ports beyond loopback (default); --no-auth serves without "
                   "one and warns at every start")
    g.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma list of host names browsers may use for this box besides its IP addresses, "
                   "localhost and its own name (DNS-rebinding check); '*' turns the check off")
    g.add_argument("--max-clients", type=int, metavar="N", help="most MJPEG viewers at once; the rest get 503 "
                   "(default 16)")
    g.add_argument("--metrics-port", metavar="[HOST:]PORT",
                   help="also serve /metrics and /healthz on this port (all interfaces unless HOST is given), "
                   "e.g. for RTSP or file outputs")
    g.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    g.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    analytics_settings.add_arguments(p)


def _preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    return PRESETS_DIR / f"{name}.yaml"


def _typed(where, key, value, actions: dict) -> tuple:
    """One preset key -> (dest, value), typed and checked like the flag of that name."""
    dest = str(key).replace("-", "_")
    if dest not in actions:
        raise InputError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted([*actions, 'cameras']))}")
    action = actions[dest]
    here = f"{where}: {key}"
    if dest in ("output", "source"):
        value = value if isinstance(value, list) else [value]   # repeatable flags (`source: 0` is camera 0)
    elif dest in validate.RUN_FLAGS or value is None:
        pass   # typed and checked by its rule below
    elif isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise InputError(f"{here}: expected true or false, got {value!r}")
    elif isinstance(value, (dict, list)):
        raise InputError(f"{here}: expected a single value, got {value!r}")
    elif action.type is not None:
        try:
            value = action.type(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise InputError(f"{here}: {e}") from None
    elif action.choices is None:
        value = str(value)
    if action.choices and value not in action.choices:
        raise InputError(f"{here}: {value!r} is not one of {', '.join(action.choices)}")
    return dest, validate.check_value(dest, value, here)


def _cameras(path: Path, entries, actions: dict) -> list:
    """A preset's `cameras:` list -> [{'name', 'source', per-camera dest: value}]."""
    from app.camera import check_name

    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: cameras: expected a list of mappings, each with a source (and a name)")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: cameras[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a mapping like {{name: front, source: rtsp://...}}")
        cam = {}
        for key, value in entry.items():
            if key == "name":
                try:
                    cam["name"] = check_name(value)
                except InputError as e:
                    raise InputError(f"{where}: {e}") from None
                continue
            if key in analytics_settings.SECTIONS:   # this camera's own zones:/rules: (checked later)
                cam[key] = value
                continue
            if str(key).replace("-", "_") not in PER_CAMERA:
                raise InputError(f"{where}: {key!r} is not a per-camera key; allowed: name, "
                                 f"{', '.join(k.replace('_', '-') for k in PER_CAMERA)}")
            dest, value = _typed(where, key, value, actions)
            cam[dest] = value
        if len(cam.get("source") or []) != 1:
            raise InputError(f"{where}: give it exactly one source")
        cam["source"] = cam["source"][0]
        out.append(cam)
    return out


def load_preset(name: str, parser: argparse.ArgumentParser) -> dict:
    """A preset YAML -> {dest: value}, typed and checked like the flags."""
    path = _preset_path(name)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise InputError(f"--config {name}: no such file (presets: {known})")
    data = load_yaml(path, "preset") or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in data.items():
        if key == "cameras":
            out["cameras"] = _cameras(path, value, actions)
            continue
        if key in analytics_settings.SECTIONS:   # zones:/rules: lists, checked against the model later
            out[key] = value
            continue
        dest, value = _typed(path, key, value, actions)
        out[dest] = value
    if out.get("cameras") and out.get("source"):
        raise InputError(f"{path}: has both source and cameras; put every source in the cameras list")
    return out


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Command line > preset > DEFAULTS, into one namespace."""
    preset = {}
    if getattr(args, "config", None):
        probe = parser or _parser()
        preset = load_preset(args.config, probe)
    merged = dict(DEFAULTS)
    merged.update({k: v for k, v in preset.items() if v is not None})
    given = {k: v for k, v in vars(args).items() if v is not None and k in DEFAULTS}
    merged.update(validate.check_flags(given))
    if getattr(args, "source", None):
        merged["cameras"] = None   # --source on the command line replaces a preset's cameras
    return argparse.Namespace(**{**vars(args), **merged})


def camera_options(opts: argparse.Namespace) -> list:
    """The resolved options -> [(camera name, its options, its outputs are its own)]: one
    namespace per camera, the shared flags overlaid with the camera's own entries."""
    from app.camera import camera_names

    if opts.cameras:
        names = [c.get("name") or default for c, default in zip(opts.cameras, camera_names(len(opts.cameras)))]
        cams = [(name, argparse.Namespace(**{**vars(opts), **entry}), "output" in entry)
                for name, entry in zip(names, opts.cameras)]
    else:
        sources = list(opts.source or [])
        cams = [(name, argparse.Namespace(**{**vars(opts), "source": src}), False)
                for name, src in zip(camera_names(len(sources)), sources)]
    names = [name for name, _, _ in cams]
    if len(set(names)) != len(names):
        raise InputError(f"camera names must differ: {', '.join(names)}")
    return cams


def _parser(prog: str = "bisenet run") -> argparse.ArgumentParser:
    from app.cli import OneLineParser

    p = OneLineParser(prog=prog, description=HELP, epilog=f"Example: {EXAMPLE}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from app.camera import Camera, output_for
    from app.latency import LatencyRecorder
    from app.pipeline import Pipeline
    from app.server import AppServer, ServerOptions
    from app.sinks import DisplaySink, open_sink
    from app.sources import open_source
    from engines.load import load_engine

    opts = resolve(args)
    specs = camera_options(opts)
    if not specs:
        raise InputError("no --source: pass a camera index, a video/image file, a folder, or a stream URL")
    if not opts.model:
        raise InputError("no --model: pass an .onnx (see `bisenet export`), an .engine, or a zoo name")
    several = len(specs) > 1
    outputs = {name: [output_for(spec, name, 1 if own else len(specs)) for spec in cam_opts.output]
               for name, cam_opts, own in specs}   # checked before anything is opened

    server_options = ServerOptions.from_options(opts)
    engine = load_engine(opts.model, checkpoint=opts.checkpoint, providers=opts.providers, threads=opts.threads,
                         backend=opts.backend, precision=opts.precision,
                         triton_shm=opts.triton_shm, triton_in_flight=opts.triton_in_flight)
    analytics_configs = analytics_settings.camera_configs(opts, specs, list(engine.info.class_names),
                                                          opts.config or "config")
    analytics_options = analytics_settings.options_from(opts)
    cameras, opened, server, analytics = [], [], None, None
    try:
        server = AppServer(server_options)   # listens only for http:// outputs and --metrics-port
        server.set_model(engine)
        for name, cam_opts, _ in specs:
            reader = open_source(cam_opts.source, cam_opts)
            opened.append(reader)
            sinks = []
            for spec in outputs[name]:
                # http:// outputs of all cameras share the server: /camera/NAME each, a grid at /
                sink = open_sink(spec, cam_opts, live=reader.live, server=server, camera=name)
                opened.append(sink)
                if several and isinstance(sink, DisplaySink):
                    sink.title = f"{sink.title} {name}"   # one window per camera
                sinks.append(sink)
            cameras.append(Camera(name, reader, sinks, max_frames=cam_opts.max_frames, out_fps=cam_opts.fps,
                                  queue_size=opts.queue_size))
        if opts.metrics_port is not None:   # (host, port): app/validate.py's listen_address
            server.listen(*opts.metrics_port, what="metrics")
        recorder = LatencyRecorder(opts.latency_log)
        if analytics_configs or analytics_options.any:
            from app.analytics import Analytics
            analytics = Analytics(analytics_options, analytics_configs, list(engine.info.class_names),
                                  fps={c.name: c.fps for c in cameras})
            server.set_analytics(analytics, analytics_options.clips_dir)
    except BaseException:
        if analytics is not None:
            analytics.close()
        for part in opened:
            part.close()
        if server is not None:
            server.close()
        raise
    for cam in cameras:
        reader = cam.reader
        kind = "live" if reader.live else "file"
        rate = f", {reader.fps:.3g} fps" if reader.fps else ""
        print(f"{cam.name + ': ' if several else ''}source: {reader.description} ({kind}{rate})"
              + (f" -> {', '.join(s.name for s in cam.sinks)}" if several else ""), file=sys.stderr, flush=True)
    pipeline = Pipeline(cameras, engine, recorder=recorder, alpha=opts.alpha, mode=opts.mode,
                        hud=opts.hud, legend=opts.legend, batch_timeout_ms=opts.batch_timeout_ms,
                        analytics=analytics)
    batching = (f"\nbatching: {len(cameras)} cameras, up to {pipeline.scheduler.batch_size} frames per inference, "
                f"deadline {pipeline.scheduler.timeout_s * 1000:.0f} ms") if several else ""
    print(f"model: {engine.describe()}" + ("" if several else f"\noutputs: {', '.join(s.name for s in cameras[0].sinks)}")
          + batching, file=sys.stderr, flush=True)
    for cam, (_, cam_opts, _) in zip(cameras, specs):
        server.metrics.watch(cam.name, recorder, cam_opts.source_timeout, reader=cam.reader,
                             queues={"input": cam.in_q, "output": cam.out_q})
    try:
        code = pipeline.run()
    finally:
        if analytics is not None:
            analytics.close()   # open events end, clips written, event sinks flushed
        server.close()
    engine.close()
    print(recorder.format_summary(pipeline.captured_by_camera()), file=sys.stderr, flush=True)
    if opts.latency_log:
        print(f"latency log: {opts.latency_log}", file=sys.stderr)
    # Reconnect counters: live sources and RTSP outputs (per camera), a remote engine (Triton).
    parts = [(f"{cam.name} " if several else "", part, "source " + cam.reader.description)
             for cam in cameras for part in [cam.reader, *cam.sinks]] + [("", engine, "engine")]
    for prefix, part, fallback in parts:
        if callable(getattr(part, "counters", None)) and part.counters():
            flat = [f"{k} {v}" if not isinstance(v, dict) else " ".join(f"{k}.{r} {n}" for r, n in v.items())
                    for k, v in part.counters().items()]
            print(f"{prefix}{getattr(part, 'name', None) or fallback}: {', '.join(flat)}", file=sys.stderr)
    if analytics is not None:
        print(analytics.summary(), file=sys.stderr)
    for name, err in pipeline.sink_failures.items():
        print(f"output {name} failed: {err}", file=sys.stderr)
    why = run_problems(pipeline, recorder)
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
    return "; ".join(problems)


def main(argv=None) -> int:
    """run_camera.py's entry: the same flags and one-line errors as `bisenet run`."""
    parser = _parser("run_camera.py")
    args = parser.parse_args(argv)
    from app.cli import run_with_one_line_errors

    return run_with_one_line_errors("run_camera.py", run, args)
