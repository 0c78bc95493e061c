"""`stream(sources, model)` -> per-frame results of one or several cameras, through the
session `bisenet run` builds (app/session.py): its sources (file, camera, RTSP, with
reconnects), cameras, cross-camera batch scheduler, engine and scene analytics. Instead of
outputs, the session's loop of written frames comes to the caller; `bisenet run` drains the
same loop.

The pipeline runs in a background thread; the iterator ends at the end of the files (or after
`max_frames`), and breaking out of the loop (or closing the iterator) stops the pipeline and
joins its threads before control comes back. A live camera that is down at start follows the
same rule as in `bisenet run`: with several cameras it reconnects while the others run.
"""
from __future__ import annotations

from app import settings as run_settings
from app.camera import check_name
from app.session import FrameResult, Session
from bisenet_edge.model import Model, load_model
from core.errors import BisenetError, InputError
from engines.load import EngineOptions
from engines.openvino_engine import run_streams

__all__ = ["FrameResult", "StreamError", "stream"]

# bisenet run options that make no sense here: the model is an argument, outputs are the loop.
NOT_HERE = {"model", *EngineOptions.model_fields, "output", "save_labels", "fps", "bitrate", "hud", "legend"}


class StreamError(BisenetError, RuntimeError):
    """The run failed (an unreadable source, an engine that kept failing): what `bisenet run`
    would print before exiting 1."""


def _settings(sources, config, options: dict):
    """The stream's settings, built and checked by app/settings.py exactly as `bisenet run`'s."""
    wrong = sorted(set(options) & NOT_HERE)
    if wrong:
        raise InputError(f"stream() takes no {', '.join(wrong)}: load_model() takes the model's options, "
                         "and the results come to your loop instead of outputs")
    names = None
    flags = {}
    for key, value in options.items():
        if key not in run_settings.OPTIONS and key not in run_settings.YAML_KEYS:
            raise InputError(f"stream() got an unknown option {key!r}; it takes the `bisenet run` options "
                             f"{', '.join(sorted(set(run_settings.OPTIONS) - NOT_HERE - {'source', 'config'}))}")
        flags[key] = value
    if sources is not None:
        if isinstance(sources, dict):   # {camera name: source}
            names = [check_name(n) for n in sources]
            sources = list(sources.values())
        elif isinstance(sources, (str, int)) or hasattr(sources, "__fspath__"):
            sources = [sources]
        flags["source"] = [str(s) for s in sources]
    flags["output"] = ["null"]
    settings = run_settings.build(flags, config)
    if names:
        for cam, name in zip(settings.cameras, names):
            cam.name = name
    if not settings.cameras:
        raise InputError("stream(): no sources: pass a file, camera index, folder or stream URL (or a list)")
    return settings


def stream(sources, model, *, config: str | None = None, **options):
    """Iterate the frames of `sources` segmented by `model` -> FrameResult per frame, the
    cameras' frames interleaved as they finish (each camera's in order).

    sources: one source or a list (cameras cam0, cam1, ...) or a dict {name: source}: a video
        file, image, folder, camera index, rtsp:// URL... (anything `--source` takes); None takes
        the `cameras:` of `config`.
    model: a Model from load_model(), or what load_model() takes (loaded and closed here).
    config: a `bisenet run` preset (configs/app/NAME or a YAML file), e.g. with zones:/rules:.
    options: `bisenet run` options by their names with underscores: realtime, loop,
        max_frames, camera_size, source_timeout, batch_timeout_ms, queue_size, alpha, mode,
        latency_log, zones, rules, coverage_log, events_log, mqtt, webhook, ...
    """
    settings = _settings(sources, config, options)   # bad options fail here, at the call
    return _frames(settings, model, config)


def _frames(settings, model, config):
    loaded = not isinstance(model, Model)
    # Loaded here for the run: frames in flight as `bisenet run` has them (engines/openvino_engine.py);
    # a Model of yours keeps the ov_streams you loaded it with.
    model = load_model(model, ov_streams=run_streams()) if loaded else model
    try:
        yield from _run(settings, model, config)
    finally:
        if loaded:
            model.close()


def _run(settings, model: Model, config):
    session = Session(settings, model.engine, config_name=config or "stream()", keep_labels=True,
                      log=None)
    try:
        yield from session.frames()
    finally:
        session.close()
    if session.failures:
        raise StreamError("; ".join(session.failures))
