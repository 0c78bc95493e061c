"""Capped exponential backoff, the one rule every retry loop uses (camera reconnects, the RTSP
push, a Triton server that went away): wait `first` seconds, double each failure up to `cap`,
start over after a success."""
from __future__ import annotations


class Backoff:
    def __init__(self, first: float = 0.5, cap: float = 10.0, factor: float = 2.0):
        self.first, self.cap, self.factor = first, cap, factor
        self.delay = first

    def next(self) -> float:
        """The wait before the next try; each call lengthens the one after it."""
        delay = self.delay
        self.delay = min(self.cap, self.delay * self.factor)
        return delay

    def reset(self) -> None:
        self.delay = self.first
