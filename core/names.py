"""The one rule for the names a run gives things (cameras, zones, rules): they go into file
names, URL paths, MQTT topics, Prometheus labels and the web page, so they are plain:

    NAME_RE   a letter or digit, then letters, digits, '_', '-' or '.'; 1..64 characters;
              nothing else (no control characters, no newline at the end, no '/', '+', '#', NUL)

Names the run does not choose (a model's class names, from its sidecar or a Triton server)
are kept as they are and made safe where they go out: `topic_level` for MQTT topics (the page
writes them as text, never as HTML)."""
from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "letters, digits, '_', '-' or '.' (1 to 64, starting with a letter or digit)"


def name_ok(name) -> bool:
    """True for a name that may go into files, URLs, topics and the page as it is."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def topic_level(name: str) -> str:
    """One MQTT topic level from any name (a class name from a model's sidecar): every
    character outside letters, digits, '_', '-', '.' becomes '_' ('a/b' -> 'a_b', 'x+' -> 'x_'),
    so a name never adds a level, a wildcard or a control character; '' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)) or "_"
