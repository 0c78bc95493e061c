"""`bisenet latency-plot lat.csv -o plot.png`: per-frame stage times and an end-to-end histogram,
one panel per camera when the log has several (its `camera` column).

Draws with matplotlib when it is installed, else with OpenCV (a run-time dependency already),
so the edge box needs nothing extra to look at its own log.
"""
from __future__ import annotations

from pathlib import Path

import io
import math

import cv2
import numpy as np

from app.latency import STAGES, read_log
from core.errors import InputError
from core.files import atomic_write_bytes

HELP = "plot a --latency-log file: per-frame stage times and an end-to-end latency histogram (a panel per camera)"
EXAMPLE = "bisenet latency-plot lat.csv -o latency.png"

# BGR colors per stage (OpenCV); matplotlib gets the same as RGB hex. Red is kept for dropped
# frames alone, so e2e is black.
COLORS = {"queue": (180, 180, 180), "preprocess": (60, 180, 75), "inference": (200, 90, 30),
          "overlay": (25, 140, 245), "sink": (180, 30, 145), "e2e": (30, 30, 30), "dropped": (0, 0, 255)}
FORMATS = (".png", ".jpg", ".jpeg")


def _hex(bgr) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def add_arguments(p) -> None:
    p.add_argument("log", help="a --latency-log file (.csv or .jsonl)")
    p.add_argument("-o", "--output", default=None,
                   help="image to write, .png or .jpg (default: the log's name with .png)")
    p.add_argument("--opencv", action="store_true", help="draw with OpenCV even when matplotlib is installed")


def series(rows: list) -> dict:
    """rows -> {'frame': ids of written frames, stage: ms per written frame, 'dropped': ids}."""
    written = [r for r in rows if not r["dropped"] and r["reason"] != "skipped"]
    out = {"frame": np.array([r["frame"] for r in written], dtype=np.int64),
           "dropped": np.array([r["frame"] for r in rows if r["dropped"]], dtype=np.int64)}
    for s in STAGES:
        out[s] = np.array([r[f"{s}_ms"] if r[f"{s}_ms"] is not None else np.nan for r in written], dtype=np.float64)
    order = np.argsort(out["frame"])
    for k in ("frame", *STAGES):
        out[k] = out[k][order]
    return out


def plot_matplotlib(panels: list, fmt: str) -> bytes:
    """panels: [(title, series)], one row each: stage times per frame | e2e histogram."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 2, figsize=(14, 4 * len(panels)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]})
    for (title, data), (ax1, ax2) in zip(panels, axes):
        for s in STAGES:
            ax1.plot(data["frame"], data[s], label=s, color=_hex(COLORS[s]), linewidth=1)
        if len(data["dropped"]):
            ax1.plot(data["dropped"], np.zeros(len(data["dropped"])), "|", color=_hex(COLORS["dropped"]),
                     label="dropped")
        ax1.set_xlabel("frame id")
        ax1.set_ylabel("ms")
        ax1.set_title(title)
        ax1.legend(loc="upper right", ncol=4, fontsize=8)
        e2e = data["e2e"][np.isfinite(data["e2e"])]
        ax2.hist(e2e, bins=50, color=_hex(COLORS["e2e"]))
        ax2.set_xlabel("end-to-end ms (capture -> written)")
        ax2.set_ylabel("frames")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="jpg" if fmt == ".jpeg" else fmt[1:])
    plt.close(fig)
    return buf.getvalue()


def _tick_text(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (0, 0.2, 0.4 ... not 0, 0, 0)."""
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _axes(img, x0, y0, x1, y1, xmax, ymax, xlabel, ylabel):
    """Frame, 5 ticks per axis with labels; returns (x, y) -> pixel mappers."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    for i in range(6):
        xv, yv = xmax * i / 5, ymax * i / 5
        px = int(x0 + (x1 - x0) * i / 5)
        py = int(y1 - (y1 - y0) * i / 5)
        cv2.line(img, (px, y1), (px, y1 + 5), (0, 0, 0), 1)
        cv2.putText(img, _tick_text(xv, xmax / 5), (px - 12, y1 + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.line(img, (x0 - 5, py), (x0, py), (0, 0, 0), 1)
        cv2.line(img, (x0, py), (x1, py), (230, 230, 230), 1)
        cv2.putText(img, _tick_text(yv, ymax / 5), (x0 - 50, py + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, ((x0 + x1) // 2 - 60, y1 + 42), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (x0 - 50, y0 - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)

    def fx(v):
        return (x0 + (x1 - x0) * np.asarray(v, dtype=np.float64) / max(xmax, 1e-9)).astype(np.int32)

    def fy(v):
        return (y1 - (y1 - y0) * np.clip(np.asarray(v, dtype=np.float64) / max(ymax, 1e-9), 0, 1)).astype(np.int32)

    return fx, fy


def plot_opencv(panels: list, fmt: str) -> bytes:
    """panels: [(title, series)], drawn one below the other."""
    img = np.vstack([panel_opencv(data, title) for title, data in panels])
    ok, data = cv2.imencode(fmt, img)
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {fmt}")
    return data.tobytes()


def panel_opencv(data: dict, title: str) -> np.ndarray:
    w, h = 1200, 800
    img = np.full((h, w, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (70, 28), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    frames = data["frame"]
    all_ids = np.concatenate([frames, data["dropped"]]) if len(data["dropped"]) else frames
    xmax = float(all_ids.max()) if len(all_ids) else 1.0
    finite = np.concatenate([data[s][np.isfinite(data[s])] for s in STAGES]) if len(frames) else np.zeros(1)
    ymax = float(np.percentile(finite, 99.5) * 1.1) if finite.size else 1.0
    fx, fy = _axes(img, 70, 60, w - 30, 440, xmax, ymax, "frame id", "ms")
    for s in STAGES:
        v = data[s]
        ok = np.isfinite(v)
        if ok.sum() >= 2:
            pts = np.stack([fx(frames[ok]), fy(v[ok])], axis=1).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], False, COLORS[s], 1, cv2.LINE_AA)
    for px in fx(data["dropped"]):
        cv2.line(img, (int(px), 432), (int(px), 440), COLORS["dropped"], 1)
    for i, s in enumerate((*STAGES, "dropped")):
        color = COLORS[s]
        x = 80 + i * 150
        cv2.line(img, (x, 75), (x + 25, 75), color, 3)
        cv2.putText(img, s, (x + 30, 80), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    e2e = data["e2e"][np.isfinite(data["e2e"])]
    if e2e.size:
        counts, edges = np.histogram(e2e, bins=50)
        hx, hy = _axes(img, 70, 510, w - 30, 740, float(edges[-1]), float(counts.max()),
                       "end-to-end ms (capture -> written)", "frames")
        for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
            cv2.rectangle(img, (int(hx(lo)), int(hy(c))), (max(int(hx(hi)) - 1, int(hx(lo))), 740),
                          COLORS["e2e"], -1)
    cv2.line(img, (0, h - 1), (w, h - 1), (0, 0, 0), 1)   # the border between camera panels
    return img


def plot(log: str | Path, out: str | Path | None = None, use_opencv: bool = False) -> Path:
    log = Path(log)
    out = Path(out) if out else log.with_suffix(".png")
    fmt = out.suffix.lower()
    if out.is_dir():
        raise InputError(f"-o {out} is a folder; give a file name like {out / 'latency.png'}")
    if fmt not in FORMATS:
        raise InputError(f"-o {out}: use a .png or .jpg file name")
    try:
        rows = read_log(log)
    except FileNotFoundError as e:
        raise InputError(f"{e}; pass the file written by --latency-log") from None
    except ValueError as e:   # not a latency log: its own one-line reason
        raise InputError(str(e).splitlines()[0]) from None
    if not rows:
        raise InputError(f"{log} has no frames to plot")
    cameras = sorted({r["camera"] for r in rows})
    panels = []
    for cam in cameras:
        data = series([r for r in rows if r["camera"] == cam])
        name = log.name if len(cameras) == 1 else f"{log.name} {cam}"
        panels.append((f"{name}: {len(data['frame'])} written, {len(data['dropped'])} dropped", data))
    image = None
    if not use_opencv:
        try:
            image = plot_matplotlib(panels, fmt)
        except ImportError:
            pass
    if image is None:
        image = plot_opencv(panels, fmt)
    # Through a temp file: a failed write leaves what was there (a symlink given as -o included:
    # its target is written, the link stays).
    target = out.resolve() if out.is_symlink() else out
    try:
        atomic_write_bytes(target, image)
    except OSError as e:
        raise InputError(f"-o {out}: cannot write it ({e.strerror or e}); pick a place you can write to") from None
    return out


def run(args) -> int:
    out = plot(args.log, args.output, use_opencv=args.opencv)
    print(f"wrote {out}")
    return 0
