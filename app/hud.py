"""HUD (fps and latency, `--hud`) and class legend (`--legend`), drawn on top of the overlay.

Kept apart from core/overlay.py on purpose: the overlay is the pixel-exact reference a CUDA
kernel is held to; these are annotations drawn afterwards, in place, with OpenCV.
"""
from __future__ import annotations

import time
from collections import deque

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


class RateMeter:
    """Frames per second and mean end-to-end latency over the last `window_s` seconds."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self.events = deque()   # (done_at, e2e_ms, inference_ms)

    def add(self, done_at: float, e2e_ms: float, inference_ms: float | None) -> None:
        self.events.append((done_at, e2e_ms, inference_ms or 0.0))
        while self.events and done_at - self.events[0][0] > self.window_s:
            self.events.popleft()

    def fps(self) -> float:
        if len(self.events) < 2:
            return 0.0
        span = self.events[-1][0] - self.events[0][0]
        return (len(self.events) - 1) / span if span > 0 else 0.0

    def latency_ms(self) -> tuple[float, float]:
        if not self.events:
            return 0.0, 0.0
        e2e = sum(e[1] for e in self.events) / len(self.events)
        inf = sum(e[2] for e in self.events) / len(self.events)
        return e2e, inf

    def snapshot(self) -> dict:
        e2e, inf = self.latency_ms()
        return {"fps": round(self.fps(), 2), "e2e_ms": round(e2e, 1), "inference_ms": round(inf, 1),
                "time": time.time()}


def _scale(img: np.ndarray) -> float:
    return max(0.7, min(img.shape[0], img.shape[1]) / 600.0)


def draw_hud(img: np.ndarray, fps: float, e2e_ms: float, inference_ms: float) -> None:
    """Top-left box: "12.5 fps | e2e 80 ms | model 45 ms"."""
    s = _scale(img)
    text = f"{fps:.1f} fps | e2e {e2e_ms:.0f} ms | model {inference_ms:.0f} ms"
    thick = max(1, int(round(2 * s)))
    (tw, th), base = cv2.getTextSize(text, FONT, 0.6 * s, thick)
    pad = int(6 * s)
    cv2.rectangle(img, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), -1)
    cv2.putText(img, text, (pad, pad + th), FONT, 0.6 * s, (255, 255, 255), thick, cv2.LINE_AA)


def draw_legend(img: np.ndarray, class_names, lut_bgr: np.ndarray, present=None, max_rows: int = 24) -> None:
    """Right-hand column of color swatches and class names. `present` (a set of ids) limits it
    to the classes on screen, which keeps 171-class COCO-Stuff legible."""
    ids = [i for i in range(len(class_names)) if present is None or i in present][:max_rows]
    if not ids:
        return
    s = _scale(img) * 0.8
    thick = max(1, int(round(1.5 * s)))
    row_h = int(22 * s)
    sw = int(16 * s)
    width = max(cv2.getTextSize(str(class_names[i]), FONT, 0.5 * s, thick)[0][0] for i in ids) + sw + int(14 * s)
    x0 = max(0, img.shape[1] - width)
    y0 = 0
    height = min(img.shape[0], row_h * len(ids) + int(6 * s))
    # Darken the box instead of painting it black: the scene stays visible behind the legend.
    img[y0:y0 + height, x0:] = (img[y0:y0 + height, x0:] // 3)
    for row, i in enumerate(ids):
        y = y0 + int(4 * s) + row * row_h
        if y + row_h > img.shape[0]:
            break
        color = tuple(int(c) for c in lut_bgr[i])
        cv2.rectangle(img, (x0 + int(4 * s), y), (x0 + int(4 * s) + sw, y + sw), color, -1)
        cv2.putText(img, str(class_names[i]), (x0 + sw + int(10 * s), y + sw - int(2 * s)), FONT, 0.5 * s,
                    (255, 255, 255), thick, cv2.LINE_AA)


def draw_zones(img: np.ndarray, outlines, coverage: dict) -> None:
    """Scene analytics (app/analytics): each zone's outline and, at its top-left corner, the
    live coverage of its watched classes ("lane: car 12% road 40%")."""
    s = _scale(img) * 0.7
    thick = max(1, int(round(1.5 * s)))
    for name, polygon in outlines:
        cv2.polylines(img, [polygon.reshape(-1, 1, 2)], True, (0, 255, 255), thick, cv2.LINE_AA)
        parts = " ".join(f"{c} {v * 100:.0f}%" for c, v in coverage.get(name, {}).items())
        text = f"{name}: {parts}" if parts else name
        x, y = int(polygon[:, 0].min()), int(polygon[:, 1].min())
        (tw, th), base = cv2.getTextSize(text, FONT, 0.5 * s, thick)
        x, y = max(0, min(x, img.shape[1] - tw)), max(th + base, y)
        cv2.rectangle(img, (x, y - th - base), (x + tw, y), (0, 0, 0), -1)
        cv2.putText(img, text, (x, y - base), FONT, 0.5 * s, (0, 255, 255), thick, cv2.LINE_AA)
