"""Rules on a coverage series: `above`/`below` a level for `for_s` seconds starts an event;
it ends when the coverage is past a separate `clear` level for `clear_s` seconds
(hysteresis: a flickering mask never starts and ends an event every frame); after an end no
new event starts for `cooldown_s`.

Times are the stream's clock in seconds (a file's presentation times, else the capture
clock). An event's start is the time the condition began to hold (not the moment it was
confirmed, for_s later); its end the time the clear condition began to hold.

    rule = RuleState(spec, camera="cam0")
    for t, cov in series:
        for message in rule.update(t, cov, frame_id):   # ("start"|"update"|"end", Event)
            ...
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

from app.analytics.settings import RuleSpec

UPDATE_STEP = 0.05        # an update message when the peak grew this much since the last one
UPDATE_EVERY_S = 1.0      # ... at most this often
_ids = itertools.count(1)
_run = f"{int(time.time()):x}-{os.getpid():x}"


@dataclass
class Event:
    id: str
    camera: str
    zone: str
    class_name: str
    rule: str
    start_s: float                      # stream clock
    start_frame: int
    end_s: float | None = None
    end_frame: int | None = None
    peak: float = 0.0
    peak_s: float = 0.0
    peak_frame: int = 0
    total: float = 0.0                  # sum of coverage over the event's frames (for the mean)
    frames: int = 0
    clip: str | None = None             # the event clip's path, when clips are written
    snapshot: str | None = None         # the JPEG of the overlay at the peak
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return self.total / self.frames if self.frames else 0.0

    def as_dict(self) -> dict:
        return {"id": self.id, "camera": self.camera, "zone": self.zone, "class": self.class_name,
                "rule": self.rule, "start_s": round(self.start_s, 3), "start_frame": self.start_frame,
                "end_s": None if self.end_s is None else round(self.end_s, 3), "end_frame": self.end_frame,
                "peak": round(self.peak, 4), "peak_s": round(self.peak_s, 3), "mean": round(self.mean, 4),
                "clip": self.clip, "snapshot": self.snapshot, **self.extra}


class RuleState:
    def __init__(self, spec: RuleSpec, camera: str):
        self.spec, self.camera = spec, camera
        self.since: tuple[float, int] | None = None   # (time, frame) the start (or clear) condition began
        self.event: Event | None = None
        self.quiet_until = float("-inf")               # cooldown
        self.last_update = (float("-inf"), 0.0)        # (time, peak) of the last update message

    def _starts(self, cov: float) -> bool:
        s = self.spec
        return cov > s.above if s.above is not None else cov < s.below

    def _clears(self, cov: float) -> bool:
        s = self.spec
        return cov <= s.clear if s.above is not None else cov >= s.clear

    def update(self, t: float, cov: float, frame_id: int) -> list[tuple[str, Event]]:
        out = []
        event = self.event
        if event is None:
            if t < self.quiet_until or not self._starts(cov):
                self.since = None
                return out
            if self.since is None:
                self.since = (t, frame_id)
            if t - self.since[0] >= self.spec.for_s:
                start_s, start_frame = self.since
                self.event = event = Event(f"{_run}-{next(_ids)}", self.camera, self.spec.zone, self.spec.class_name,
                                           self.spec.name, start_s, start_frame)
                self.since = None
                self._add(event, t, cov, frame_id, self.spec.above is not None)
                self.last_update = (t, event.peak)
                out.append(("start", event))
            return out
        self._add(event, t, cov, frame_id, self.spec.above is not None)
        if not self._clears(cov):
            self.since = None
            if abs(event.peak - self.last_update[1]) >= UPDATE_STEP and t - self.last_update[0] >= UPDATE_EVERY_S:
                self.last_update = (t, event.peak)
                out.append(("update", event))
            return out
        if self.since is None:
            self.since = (t, frame_id)
        if t - self.since[0] >= self.spec.clear_s:
            event.end_s, event.end_frame = self.since
            self.quiet_until = t + self.spec.cooldown_s
            self.event, self.since = None, None
            out.append(("end", event))
        return out

    def finish(self, t: float, frame_id: int) -> list[tuple[str, Event]]:
        """End of the stream: an open event ends now."""
        if self.event is None:
            return []
        event, self.event = self.event, None
        event.end_s, event.end_frame = t, frame_id
        return [("end", event)]

    @staticmethod
    def _add(event: Event, t: float, cov: float, frame_id: int, above: bool) -> None:
        """Count a frame; the peak is the extreme in the rule's direction (the lowest for below)."""
        event.total += cov
        event.frames += 1
        if event.frames == 1 or (cov > event.peak if above else cov < event.peak):
            event.peak, event.peak_s, event.peak_frame = cov, t, frame_id
