"""The one HTTP(S) server of the app: live page, MJPEG streams, snapshots, stats, /metrics and
/healthz, with authentication, Host checks and per-client limits in one place.

The short paths are the first camera registered (`cam0` for a single camera); with several
cameras `/` is a grid of all of them (snapshots, stats, links to /camera/NAME). A metrics-only
listener (`--metrics-port`) serves /metrics and /healthz alone. /console is the browser console
(docs/console.md); its page, script and the vendored uPlot are package files (static/).

aiohttp runs in its own thread with its own asyncio event loop inside the app process: every
connection is a coroutine, not a thread, so the thread count stays flat however many clients
come. aiohttp brings the HTTP parsing, header size limits, keep-alive, streaming responses
and TLS; the rest is here, one job a module:
  server_options.py   ServerOptions (what a run asks for) and ServerError
  auth.py      the token, Bearer / Basic / page cookie, the per-address lock-out (also the
               built-in RTSP server's auth, app/rtsp_out.py)
  limits.py    the connection budget (pending vs authenticated, per address, the header
               deadline, the open-file limit) and the bounded log of client errors
  hub.py       FrameHub: one camera's latest overlay, encoded once per frame for all viewers
  routes.py    the guard (Host check against DNS rebinding, auth, budget) and the routes;
               per viewer a small send buffer, one pending frame, a send timeout
  page.py      the HTML of the live page and the grid
  console.py   /console and its JSON: cameras, coverage history, events, save (admin), delete (admin)
  preset_edit.py  the zone editor's save: checked like the command line, atomic, <name>.bak kept
  coverage_ring.py  the bounded coverage-over-time ring the console's charts read
  log_history.py    the coverage and events logs read back (bounded) for the console
  app_server.py  AppServer: listeners, cameras, the event-loop thread
docs/service.md describes the policy: when a token is required, the limits and their numbers.
"""
from app.server.app_server import AppServer
from app.server.auth import Auth, is_loopback
from app.server.hub import FrameHub
from app.server.server_options import ADMIN_TOKEN_ENV, TOKEN_ENV, ServerError, ServerOptions

__all__ = ["ADMIN_TOKEN_ENV", "AppServer", "Auth", "FrameHub", "ServerError", "ServerOptions", "TOKEN_ENV", "is_loopback"]
