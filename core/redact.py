"""What a message may show of a value: URLs without their passwords or query-string secrets,
long values cut short.

Every printed, logged or exported source/output URL goes through `redact_url`, so a camera's
password (rtsp://admin:PW@host/x) never reaches stderr, a log file, /stats.json or /metrics;
every value a message quotes goes through `shown`, so a huge value (a YAML list, a long
argument) cannot make a huge message."""
from __future__ import annotations

import re
import reprlib

# scheme://user:password@  (the password runs to the netloc's last '@', as urlsplit reads it)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*):[^\s/?#]*@")

# ?token=...&password=...: secrets some cameras and webhooks carry in the query string
# (Hikvision/Dahua-style `?user=...&password=...`, signed URLs, webhook tokens).
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|pass|token|access_token|auth|api_key|apikey|key|secret"
    r"|sig|signature)=)[^&;#\s]*", re.IGNORECASE)

SHOWN_CHARS = 200   # the most of one value a message quotes


def redact_url(text) -> str:
    """`text` (a URL or a message that contains URLs) with every password and query-string
    secret as ***: rtsp://admin:PW@host/x -> rtsp://admin:***@host/x,
    http://h/x?token=T&fps=5 -> http://h/x?token=***&fps=5."""
    return _QUERY_SECRET.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>:***@", str(text)))


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A value as a message quotes it: its repr, secrets redacted, at most `limit` characters.
    Nested lists and mappings are abbreviated before they are formatted (reprlib), so a huge
    value costs no more than its first few items."""
    text = redact_url(_BOUNDED.repr(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown_text(value, limit: int = SHOWN_CHARS) -> str:
    """A value as a message writes it without quotes (a flag's text as typed), bounded and
    redacted like `shown`."""
    if not isinstance(value, str):
        return shown(value, limit)
    text = redact_url(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxstring, _BOUNDED.maxother = 3, SHOWN_CHARS, SHOWN_CHARS
_BOUNDED.maxlist = _BOUNDED.maxtuple = _BOUNDED.maxdict = _BOUNDED.maxset = 8
