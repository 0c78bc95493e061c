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

from app.analytics.specs import RuleSpec

UPDATE_STEP = 0.05        # an update message when the peak grew this much since the last one
UPDATE_EVERY_S = 1.0      # ... at most this often
_ids = itertools.count(1)
RUN_ID = f"{int(time.time()):x}-{os.getpid():x}"   # event ids: RUN_ID-N (clip files are named by them)


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
        self.above = spec.above is not None
        self.candidate: Event | None = None            # the condition holds, not yet for for_s
        self.event: Event | None = None                # started, not ended
        self.clearing: list | None = None              # [time, frame, sum, frames] since the clear condition held
        self.quiet_until = float("-inf")               # cooldown
        self.last_update = (float("-inf"), 0.0)        # (time, peak) of the last update message

    def _starts(self, cov: float) -> bool:
        return cov > self.spec.above if self.above else cov < self.spec.below

    def _clears(self, cov: float) -> bool:
        return cov <= self.spec.clear if self.above else cov >= self.spec.clear

    @property
    def tracked(self) -> Event | None:
        """The event being confirmed or running (its peak frame is the snapshot's)."""
        return self.event or self.candidate

    def update(self, t: float, cov: float, frame_id: int) -> list[tuple[str, Event]]:
        """One frame's coverage -> the messages it raises. An event spans its frames from the
        start condition's onset to the clear condition's onset: its peak and mean are over those."""
        event = self.event
        if event is None:
            if t < self.quiet_until or not self._starts(cov):
                self.candidate = None
                return []
            if self.candidate is None:
                self.candidate = Event("", self.camera, self.spec.zone, self.spec.class_name, self.spec.name,
                                       t, frame_id)
            candidate = self.candidate
            self._add(candidate, t, cov, frame_id)
            if t - candidate.start_s < self.spec.for_s:
                return []
            candidate.id = f"{RUN_ID}-{next(_ids)}"
            self.event, self.candidate = candidate, None
            self.last_update = (t, candidate.peak)
            return [("start", candidate)]
        if not self._clears(cov):
            if self.clearing is not None:   # it did not clear for long enough: those frames were the event's
                event.total += self.clearing[2]
                event.frames += self.clearing[3]
                self.clearing = None
            self._add(event, t, cov, frame_id)
            if abs(event.peak - self.last_update[1]) >= UPDATE_STEP and t - self.last_update[0] >= UPDATE_EVERY_S:
                self.last_update = (t, event.peak)
                return [("update", event)]
            return []
        if self.clearing is None:
            self.clearing = [t, frame_id, 0.0, 0]
        self.clearing[2] += cov
        self.clearing[3] += 1
        if t - self.clearing[0] < self.spec.clear_s:
            return []
        event.end_s, event.end_frame = self.clearing[0], self.clearing[1]
        self.quiet_until = t + self.spec.cooldown_s
        self.event, self.clearing = None, None
        return [("end", event)]

    def finish(self, t: float, frame_id: int) -> list[tuple[str, Event]]:
        """End of the stream: an open event ends now (or where it was clearing)."""
        if self.event is None:
            return []
        event, self.event = self.event, None
        event.end_s, event.end_frame = (self.clearing[0], self.clearing[1]) if self.clearing else (t, frame_id)
        self.clearing = None
        return [("end", event)]

    def _add(self, event: Event, t: float, cov: float, frame_id: int) -> None:
        """Count a frame; the peak is the extreme in the rule's direction (the lowest for below)."""
        event.total += cov
        event.frames += 1
        if event.frames == 1 or (cov > event.peak if self.above else cov < event.peak):
            event.peak, event.peak_s, event.peak_frame = cov, t, frame_id
