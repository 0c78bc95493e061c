"""`bisenet run`'s settings: every option declared once, with its flag, type, range, default
and help, as typed models (pydantic):

    RunSettings        the options all cameras share: model, overlay, batching, latency log
      .cameras         one CameraSettings per camera
      .engine          EngineOptions: how --model is loaded (each backend declares its own,
                       beside its engine; engines/load.py gathers them)
      .server          ServerSettings: http:// and rtsp://@ outputs, /metrics
    CameraSettings     the keys of a `cameras:` entry (name, source, output, realtime, ...);
                       given at the top level (a flag, a preset key) they apply to every camera

An option is a field with `option(default, help, group=...)` and a type `Annotated[..., Rule(check)]`
whose check (core/options.py, app/setting_rules.py) returns the typed value or raises ValueError
(the machinery is core/options.py, shared by every command). From these
declarations come argparse's parser for `bisenet run` / run_camera.py (`add_arguments`: the
flag is --NAME with dashes), the keys of a preset YAML (`--config`: the flag names, dashes or
underscores), and those of a `cameras:` entry. `build` makes the settings once: command line >
preset > defaults; a bad value is one InputError naming the flag or the file and key.

A new section (e.g. a list per camera) is a model and a field of the model it belongs to;
a field without `option()` is a YAML key only (no flag).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Annotated

from app import setting_rules
from app.camera import camera_names, check_name, output_for
from core import options
from core.config_files import config_names, config_path
from core.errors import InputError
from core.options import Expected, OneOf, Rule, Section, Switch, Text, checked, flag_name, listed, option, text
from core.redact import shown
from core.validate import MAX_QUEUE, Number, load_yaml, size_wh
from engines.load import EngineOptions


GROUPS = {"input": "input", "model": "model", "output": "output",
          "serving": "serving (http:// and rtsp://@ outputs, /metrics; see docs/service.md)",
          "analytics": "scene analytics (zones: and rules: in --config; see docs/analytics.md)"}


def camera_name(value) -> str:
    """A `cameras:` entry's name (app/camera.py's rule: it goes into file names and URLs)."""
    try:
        return check_name(value)
    except InputError as e:
        raise Expected(str(e)) from None


# RTSP outputs' bitrate when --bitrate is not given (app/rtsp_out.py).
RTSP_BITRATE = 2_000_000

# The default output where no window can open (no display, headless OpenCV): a file.
FALLBACK_OUTPUT = "artifacts/run/overlay_{camera}.mp4"


def default_output() -> tuple[list[str], str]:
    """The outputs of a run that names none, and the start-up line's note ('' for a window)."""
    from app.display import display_problem

    problem = display_problem()
    if not problem:
        return ["display"], ""
    return [FALLBACK_OUTPUT], f"no --output given and no window here ({problem.split(';')[0]}): writing a file"


# Decoding on a hardware device (app/sources.py's choose_hwaccel): the FFmpeg device type names.
HWACCEL_HINT = "auto, none, or a device type: cuda, vaapi, qsv, videotoolbox, d3d11va, drm, ..."


def hwaccel_name(value) -> str:
    """auto, none, or a hardware device type this PyAV's FFmpeg was built with."""
    name = str(value).strip().lower()
    if name in ("auto", "none"):
        return name
    from av.codec.hwaccel import hwdevices_available

    have = list(hwdevices_available())
    if name not in have:
        raise Expected(f"{shown(value)} is not a hardware decoder this FFmpeg (PyAV) has; it has "
                       f"{', '.join(have) or 'none'}; or auto (hardware where it works, else software) or none")
    return name


ROLES = ("detect", "record")


def input_roles(value) -> tuple[str, ...]:
    """An input's roles: detect (inference, analytics, overlays) and/or record (recorded by
    packet copy, app/recording.py)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or any(item not in ROLES for item in items):
        raise Expected(f"expected a list of roles out of {', '.join(ROLES)}, got {shown(value)}")
    return tuple(dict.fromkeys(items))


class InputSettings(Section):
    """One input of a camera with roles (Frigate's `ffmpeg.inputs[]`): its URL and what it is for."""
    path: Annotated[str, Rule(setting_rules.source_spec)]
    roles: Annotated[tuple[str, ...], Rule(input_roles)] = ("detect",)


class RecordSettings(Section):
    """Continuous recording of a camera's record input (app/recording.py): fragmented MP4
    segments <dir>/<camera>/<camera>.<UTC start time>.mp4, oldest deleted first."""
    dir: Annotated[str, Rule(text)] = "recordings"
    segment_s: Annotated[float, Rule(Number(float, above=0, max=86_400))] = 10.0
    retain_days: Annotated[float | None, Rule(Number(float, above=0, max=36_500))] = None
    retain_gb: Annotated[float | None, Rule(Number(float, above=0, max=1_000_000))] = None


class CameraSettings(Section):
    """One camera. At the top level (flags, preset keys) these are every camera's defaults; a
    `cameras:` entry sets them for its camera alone."""
    name: Annotated[str | None, Rule(camera_name)] = None   # cam0, cam1, ... when not named
    source: Annotated[str | None, Rule(setting_rules.source_spec)] = option(
        None, "0 or /dev/video0 (camera), clip.mp4, photo.jpg, folder/, 'imgs/*.png', rtsp://..., http(s)://..., "
        "csi://0, gst:<pipeline>; repeat for several cameras (cam0, cam1, ...: one engine, frames batched across "
        "cameras)", group="input", metavar="SOURCE", repeat=True)
    realtime: Switch = option(False, "pace a video file at its own fps and drop like a live source (default off)",
                              group="input")
    loop: Switch = option(False, "start a video file, image or folder over at its end (default off)", group="input")
    max_frames: Annotated[int | None, Rule(Number(int, min=1, hint="leave it out to run to the end of the source"))] \
        = option(None, "stop after N captured frames (per camera)", group="input", metavar="N")
    camera_size: Annotated[tuple[int, int] | None, Rule(size_wh)] = option(
        None, "ask the camera / CSI sensor for this size", group="input", metavar="WxH")
    camera_fps: Annotated[float | None, Rule(Number(float, above=0, max=1000))] = option(
        None, "ask the camera / CSI sensor for this rate", group="input")
    source_timeout: Annotated[float, Rule(Number(float, above=0, max=3600))] = option(
        10.0, "seconds without a frame before a stream counts as lost (default 10)", group="input", metavar="S")
    hwaccel: Annotated[str, Rule(hwaccel_name)] = option(
        "none", f"decode video files and streams on a hardware device: {HWACCEL_HINT} (auto: the first that works, "
        "else software, said once; default none: software). See docs/cameras.md", group="input", metavar="TYPE")
    detect_fps: Annotated[float | None, Rule(Number(float, above=0, max=1000))] = option(
        None, "infer at most this many frames per second; the camera's other frames are decoded but not "
        "preprocessed nor inferred, and counted as skipped (default: every frame)", group="input", metavar="FPS")
    decoder_scale: Switch = option(
        False, "while no output shows this camera's pixels, make the model's input in one swscale pass from the "
        "decoded picture (about 0.75x the convert+resize CPU at 1080p; its labels agree on about 99.2 percent of pixels with the default "
        "OpenCV resize, so they change while a viewer watches; default off: the same labels whoever watches)",
        group="input")
    skip_frame: Annotated[str, Rule(OneOf(("none", "nonkey")))] = option(
        "none", "nonkey: decode keyframes only (one every GOP, e.g. 0.5-2 fps) for low-rate analytics at a "
        "fraction of the decode cost (default none)", group="input")
    output: Annotated[list[str], Rule(listed(setting_rules.output_spec))] = option(
        ["display"], "repeatable: display, out.mp4|.mkv|.avi, folder/, http://@:8080, rtsp://HOST:PORT/PATH, null "
        f"(default: display where a window can open, else {FALLBACK_OUTPUT}); {{camera}} in it is replaced by the "
        "camera's name", group="output", metavar="SPEC", repeat=True)
    save_labels: Switch = option(False, "folder outputs: also write the raw label maps (labels/NNNNNN.png)",
                                 group="output")
    overlay_picture: Annotated[str, Rule(OneOf(("detect", "record")))] = option(
        "detect", "the picture the camera's outputs show the overlay on: detect (the detect input's, the one "
        "inferred; default) or record (the record input's, full size: it is decoded too, one decode per frame at "
        "its size, the labels upscaled; needs an input with the record role, see docs/cameras.md)",
        group="output")
    fps: Annotated[float | None, Rule(Number(float, above=0, max=1000))] = option(
        None, "frame rate for video outputs and --realtime when the source has none (default: the source's, else 25)",
        group="output")
    bitrate: Annotated[int | None, Rule(Number(int, 10_000, 1_000_000_000, units=True,
                                                hint="bit/s like 800k, 2M or 4000000"))] = option(
        None, f"video / RTSP output bitrate in bit/s, e.g. 800k, 2M (default: {RTSP_BITRATE // 1_000_000}M for RTSP; "
        "files: x264 quality CRF 23 for mp4/mkv, 0.15 bit per pixel for avi)", group="output")
    segment_s: Annotated[float | None, Rule(Number(float, above=0, max=86_400))] = option(
        None, "video file outputs: a new file every S seconds, named by its start time (out.<UTC time>.mp4), each "
        "playable alone (default: one file)", group="output", metavar="S")
    retain_days: Annotated[float | None, Rule(Number(float, above=0, max=36_500))] = option(
        None, "video segments: delete those older than this, oldest first (default: keep)", group="output",
        metavar="DAYS")
    retain_gb: Annotated[float | None, Rule(Number(float, above=0, max=1_000_000))] = option(
        None, "video segments: keep each output's segments under this many GB, oldest deleted first (default: no "
        "cap)", group="output", metavar="GB")
    rtsp_transport: Annotated[str | None, Rule(OneOf(("tcp", "udp", "auto")))] = option(
        None, "RTSP in and out: tcp, udp (e.g. rtsp-server-perl) or auto (UDP, then TCP); default tcp for --source, "
        "auto for rtsp:// outputs", group="output")
    # Scene analytics (YAML keys only, at the top level for every camera or in a `cameras:` entry):
    # checked against the model's classes once it is loaded (app/analytics/specs.py).
    zones: list | None = None
    rules: list | None = None
    # Camera roles (a `cameras:` entry's keys): `inputs: [{path: URL, roles: [detect]}, {path: URL,
    # roles: [record]}]` instead of `source` (which is the detect input then), and how the record
    # input is kept (`record:`, also at the top level for every camera). One input: both roles
    # as today's `source` (nothing recorded unless an input says record).
    inputs: list[InputSettings] | None = None
    record: RecordSettings = RecordSettings()

    @property
    def record_input(self) -> str | None:
        """The URL of the input with the record role, if any."""
        return next((i.path for i in self.inputs or () if "record" in i.roles), None)


class ServerSettings(Section):
    """The server of http:// and rtsp://@ outputs and --metrics-port (app/server/)."""
    auth_token: Annotated[str | None, Rule(setting_rules.auth_token)] = option(
        None, "token viewers must send (Bearer, Basic password, or /?token= once); default: $BISENET_AUTH_TOKEN, "
        "else one is generated and printed when a port listens beyond loopback", group="serving", metavar="TOKEN")
    admin_token: Annotated[str | None, Rule(setting_rules.auth_token)] = option(
        None, "token of the console's admin (edit zones and rules, reload, delete events); --auth-token is then "
        "watch and review only. Default: $BISENET_ADMIN_TOKEN, else the --auth-token is admin too",
        group="serving", metavar="TOKEN")
    auth: Switch = option(True, "require the token on ports beyond loopback (default); --no-auth serves without one "
                          "and warns at every start", group="serving")
    allowed_hosts: Annotated[tuple[str, ...], Rule(setting_rules.host_names)] = option(
        (), "comma list of host names browsers may use for this box besides its IP addresses, localhost and its own "
        "name (DNS-rebinding check); '*' turns the check off", group="serving", metavar="NAMES")
    max_clients: Annotated[int, Rule(Number(int, 1, 4096, hint="MJPEG viewers at once"))] = option(
        16, "most MJPEG viewers at once; the rest get 503 (default 16)", group="serving", metavar="N")
    metrics_port: Annotated[tuple[str, int] | None, Rule(
        lambda v: setting_rules.listen_address(v, "PORT or HOST:PORT, e.g. 9100 or 127.0.0.1:9100"))] = option(
        None, "also serve /metrics and /healthz on this port (all interfaces unless HOST is given), e.g. for RTSP "
        "or file outputs", group="serving", metavar="[HOST:]PORT")
    tls_cert: Text = option(None, "serve HTTPS with this certificate (with --tls-key)", group="serving", metavar="PEM")
    tls_key: Text = option(None, "the private key of --tls-cert", group="serving", metavar="PEM")

    def server_options(self):
        """-> app.server.ServerOptions, checked; the token: --auth-token, else $BISENET_AUTH_TOKEN."""
        from app.server.server_options import ADMIN_TOKEN_ENV, TOKEN_ENV, ServerOptions

        options = ServerOptions(auth_token=self.auth_token or os.environ.get(TOKEN_ENV) or None,
                                admin_token=self.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
                                no_auth=not self.auth,
                                allowed_hosts=self.allowed_hosts, max_clients=self.max_clients,
                                tls_cert=self.tls_cert, tls_key=self.tls_key)
        options.check()   # --tls-cert with --tls-key; a token from the environment is long enough
        return options


class AnalyticsSettings(Section):
    """Where scene analytics send their numbers and events (app/analytics); the zones and rules
    themselves are `zones:` / `rules:` in the config."""
    coverage_log: Annotated[str | None, Rule(setting_rules.latency_log_path)] = option(
        None, "per frame and camera: the zones' coverage, FILE.csv or FILE.jsonl (frame ids match the latency log)",
        group="analytics", metavar="FILE")
    events_log: Text = option(None, "events (start, update, end) as JSON lines", group="analytics", metavar="FILE")
    mqtt: Text = option(None, "MQTT broker for events: mqtt://HOST[:PORT][/PREFIX] (prefix default bisenet; mqtts:// "
                        "for TLS)", group="analytics", metavar="URL")
    mqtt_user: Text = option(None, "MQTT user name", group="analytics", metavar="USER")
    mqtt_password: Text = option(None, "MQTT password (default: $BISENET_MQTT_PASSWORD)", group="analytics",
                                 metavar="PASSWORD")
    mqtt_tls: Switch = option(False, "MQTT over TLS (the system's CA certificates)", group="analytics")
    webhook: Text = option(None, "POST every event message as JSON to this http(s) URL (retried with backoff)",
                           group="analytics", metavar="URL")
    clips_dir: Text = option(None, "write an MP4 clip and a JPEG snapshot of every event here "
                             "(<camera>/<event id>.mp4)", group="analytics", metavar="DIR")
    clips_max_mb: Annotated[float, Rule(Number(float, above=0, max=10_000_000))] = option(
        1000.0, "keep the clips folder under this many MB, oldest deleted first (default 1000)", group="analytics",
        metavar="MB")
    event_queue: Annotated[int, Rule(Number(int, 1, 100_000))] = option(
        1000, "messages each event delivery (MQTT, webhook, file) holds while its broker or endpoint is down; beyond it the oldest are "
        "dropped and counted (default 1000)", group="analytics", metavar="N")

    @property
    def any(self) -> bool:
        """An event or coverage output was asked for."""
        return any(v not in (None, False) for k, v in self if k not in ("clips_max_mb", "event_queue"))


class RunSettings(Section):
    """Everything `bisenet run` was told, checked."""
    model: Text = option(None, "model.onnx, model.engine, grpc://HOST:8001/NAME or http://HOST:8000/NAME (Triton), "
                         "or a zoo name / model YAML (PyTorch)", group="model")
    batch_timeout_ms: Annotated[float | None, Rule(Number(float, 0, 10_000, hint="0 runs what is ready at once"))] \
        = option(None, "several cameras: run a batch that is not full after this long (default: half a frame "
                 "interval of the fastest camera)", group="model", metavar="MS")
    alpha: Annotated[float, Rule(Number(float, 0, 1, hint="0 shows only the picture, 1 only the class colors"))] \
        = option(0.5, "overlay opacity 0..1 (default 0.5)", group="output")
    mode: Annotated[str, Rule(OneOf(("overlay", "mask", "side-by-side")))] = option(
        "overlay", "default overlay", group="output")
    hud: Switch = option(False, "draw fps and latency", group="output")
    legend: Switch = option(False, "draw the classes on screen with their colors", group="output")
    latency_log: Annotated[str | None, Rule(setting_rules.latency_log_path)] = option(
        None, "one row per frame: FILE.csv or FILE.jsonl", group="output", metavar="FILE")
    log_max_mb: Annotated[float | None, Rule(Number(float, above=0, max=1_000_000))] = option(
        None, "latency, coverage and events logs: start a new part at this size; full parts are renamed by their start "
        "time (lat.<UTC time>.csv, a header in each) (default: one file)", group="output", metavar="MB")
    log_keep: Annotated[int, Rule(Number(int, 1, 100_000))] = option(
        10, "rotated log parts kept per log, oldest deleted first (default 10)", group="output", metavar="N")
    queue_size: Annotated[int, Rule(Number(int, 1, MAX_QUEUE, hint="each queued frame holds a full image in memory"))] \
        = option(4, f"frames a file may have queued per stage (default 4, at most {MAX_QUEUE})", group="output")
    cameras: list[CameraSettings] = []
    output_note: str = ""   # why the default output is a file (printed at start-up)
    engine: EngineOptions = EngineOptions()   # how --model is loaded: engines/load.py declares them
    server: ServerSettings = ServerSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()


# Every option: name -> the section that declares it. Flags and preset keys are these names.
SECTIONS = (CameraSettings, RunSettings, EngineOptions, ServerSettings, AnalyticsSettings)
# Camera keys a config may set without a flag (zones:, rules:).
YAML_KEYS = tuple(name for name, field in CameraSettings.model_fields.items()
                  if not field.json_schema_extra and name not in ("name", "inputs"))
OPTIONS = {name: section for section in SECTIONS for name in section.flags()}
RUN_FLAGS = options.rules_of(SECTIONS)   # name -> its check


def check_option(name: str, value, where: str | None = None):
    """One option's value, checked and typed (InputError naming `where`, default its flag)."""
    return options.check_value(name, value, where, rules=RUN_FLAGS)


def check_flags(values: dict) -> dict:
    """{option: value} -> the values checked and typed (InputError naming the flag)."""
    return {name: check_option(name, value) for name, value in values.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`bisenet run`'s flags, from the declarations. Their argparse default is 'not given', so a
    preset's value can be told apart from a flag the user left out."""
    p.add_argument("--config", metavar="YAML",
                   help="preset: configs/app/<name>.yaml or a path (may list cameras:); flags override it")
    options.add_arguments(p, SECTIONS, GROUPS)


def read_preset(name: str) -> tuple[Path, dict]:
    """--config NAME -> (its path, its mapping of option name -> value, keys as written)."""
    path = config_path("app", name)
    if not path.exists():
        raise InputError(f"--config {name}: no such file (presets: {', '.join(config_names('app'))})")
    data = load_yaml(path, "preset") or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of flag names to values")
    return path, data


def _option_name(path, key, allowed) -> str:
    name = str(key).replace("-", "_")
    if name not in allowed:
        spelled = sorted(k.replace("_", "-") for k in [*allowed, "cameras"])   # as the presets spell them
        raise InputError(f"{path}: unknown key {shown(key)}; allowed: {', '.join(spelled)}")
    return name


def _yaml_value(name: str, value):
    """`output: null` in YAML is YAML's null, which would read as 'no value' (the default
    output): it means the null output, as `--output null` does."""
    return ["null"] if name == "output" and value is None else value


def _camera_entries(path: Path, entries) -> list:
    """A preset's `cameras:` list -> [(CameraSettings of the keys it sets, its source)]."""
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: cameras: expected a list of mappings, each with a source (and a name)")
    per_camera = [name for name in CameraSettings.model_fields]
    out = []
    for i, entry in enumerate(entries):
        here = f"{path}: cameras[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{here}: expected a mapping like {{name: front, source: rtsp://...}}")
        values, where = {}, {}
        for key, value in entry.items():
            name = str(key).replace("-", "_")
            if name not in per_camera:
                raise InputError(f"{here}: {shown(key)} is not a per-camera key; allowed: "
                                 f"{', '.join(k.replace('_', '-') for k in per_camera)}")
            values[name], where[name] = _yaml_value(name, value), f"{here}: {key}"
        with_inputs(values, here)
        source = values.get("source")
        if isinstance(source, list):
            values["source"] = source[0] if len(source) == 1 else None
        if values.get("source") is None:
            raise InputError(f"{here}: give it exactly one source")
        out.append(checked(CameraSettings, values, where))
    return out


def with_inputs(values: dict, here: str) -> dict:
    """A camera entry with `inputs:` -> its `source` is the detect input's path. Exactly one
    input detects, at most one records; `source` beside `inputs` is refused."""
    raw = values.get("inputs")
    if raw is None:
        return values
    example = "inputs: [{path: rtsp://.../sub, roles: [detect]}, {path: rtsp://.../main, roles: [record]}]"
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{here}: inputs: expected a list like {example}")
    inputs = checked(CameraSettings, {"inputs": raw}, {"inputs": f"{here}: inputs"}).inputs
    if values.get("source") is not None:
        raise InputError(f"{here}: has both source and inputs; give the detect input in inputs only")
    for role in ROLES:
        n = sum(role in i.roles for i in inputs)
        if n > 1 or (role == "detect" and n == 0):
            raise InputError(f"{here}: inputs: {'exactly' if role == 'detect' else 'at most'} one input takes the "
                             f"{role} role ({n} do), e.g. {example}")
    values["source"] = next(i.path for i in inputs if "detect" in i.roles)
    return values


def build(flags: dict, config: str | None = None) -> RunSettings:
    """The command line's options ({name: value}, only those given) and a preset (--config)
    -> RunSettings, command line > preset > defaults, every value checked."""
    values, where, entries = {}, {}, None
    if config:
        path, data = read_preset(config)
        for key, value in data.items():
            if key == "cameras":
                entries = _camera_entries(path, value)
                continue
            name = _option_name(path, key, {**OPTIONS, **dict.fromkeys(YAML_KEYS)})
            value = _yaml_value(name, value)
            if value is not None:
                values[name], where[name] = value, f"{path}: {key}"
        if entries and "source" in values:
            raise InputError(f"{path}: has both source and cameras; put every source in the cameras list")
    for name, value in flags.items():
        values[name], where[name] = value, flag_name(name)
    if "source" in flags:
        entries = None   # --source on the command line replaces a preset's cameras
    sources = values.pop("source", [])
    if entries is None:
        entries = [checked(CameraSettings, {"source": s}, where)
                   for s in (sources if isinstance(sources, list) else [sources])]
    settings = checked(RunSettings, values, where)
    settings.engine = checked(EngineOptions, values, where)
    settings.server = checked(ServerSettings, values, where)
    settings.analytics = checked(AnalyticsSettings, values, where)
    defaults = checked(CameraSettings, values, where)
    names = [entry.name or default for entry, default in zip(entries, camera_names(len(entries)))]
    if len(set(names)) != len(names):
        raise InputError(f"camera names must differ: {', '.join(names)}")
    for entry, name in zip(entries, names):
        own = {key: getattr(entry, key) for key in entry.model_fields_set}   # sections stay typed
        cam = defaults.model_copy(update={**own, "name": name})
        if "output" not in own and "output" not in values:
            cam.output, settings.output_note = default_output()
        # Outputs shared by several cameras name the camera ({camera}); a camera's own need not.
        cam.output = [output_for(spec, name, 1 if "output" in own else len(entries)) for spec in cam.output]
        settings.cameras.append(cam)
    return settings
