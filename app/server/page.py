"""The HTML the server sends: one camera's live page, and the grid of several cameras, with
their scripts (/page.js, /grid.js) and the Content-Security-Policy they are sent with.
(The console, /console, is app/server/console.py with its files in static/.)"""
from __future__ import annotations

import html
from urllib.parse import quote

# The pages hold no script and no inline handler: their scripts are /page.js and /grid.js, and
# CSP (sent with every page) lets only those run. Every name from the run or the model (a
# camera, zone or class name, from a sidecar or a Triton server) reaches the page as text
# (textContent, or html.escape on the server), never as HTML.
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' blob:; media-src 'self'; "
       "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #111; color: #eee; font-family: sans-serif; margin: 0; }}
#stats {{ padding: 6px 10px; font-size: 18px; }}
#video {{ display: block; max-width: 100%; }}
#events a, p a {{ color: #9cf; }}
</style></head>
<body data-prefix="{prefix}">
<div id="stats">{title}: waiting for frames</div>
<img id="video" src="{prefix}/stream.mjpg" alt="live segmentation overlay">
<div id="events"></div>
<p><a href="/console">console: zones, coverage over time, events</a></p>
<script src="/page.js"></script>
</body></html>
"""

PAGE_JS = """'use strict';
const prefix = document.body.dataset.prefix;
function eventRow(m) {   // scene analytics: one event, as text, with its snapshot and clip links
  const e = m.event, row = document.createElement('div');
  row.textContent = `${m.type} ${e.camera} ${e.zone} ${e.class} peak ${(Number(e.peak) * 100).toFixed(0)}%`;
  for (const [url, label] of [[e.snapshot, 'snapshot'], [e.clip, 'clip']]) {
    if (typeof url !== 'string' || !url.startsWith('/clips/')) continue;   // URLs the server made
    const a = document.createElement('a');
    a.href = url;
    a.textContent = label;
    row.append(' ', a);
  }
  return row;
}
async function events() {
  const r = await fetch('/api/coverage', {cache: 'no-store'});
  if (!r.ok) return;
  const rows = (await r.json()).events.filter(m => m.type !== 'update').slice(0, 20).map(eventRow);
  document.getElementById('events').replaceChildren(...rows);
}
setInterval(events, 2000); events();
async function poll() {
  try {
    const s = await (await fetch(prefix + '/stats.json', {cache: 'no-store'})).json();
    document.getElementById('stats').textContent =
      `${s.fps.toFixed(1)} fps | e2e ${s.e2e_ms.toFixed(0)} ms | ` +
      `model ${s.inference_ms.toFixed(0)} ms | frame ${s.frame}`;
  } catch (e) {
    document.getElementById('stats').textContent = 'stream ended';
  }
}
setInterval(poll, 500); poll();
"""


# Several cameras: / shows them all. Tiles refresh from snapshot.jpg (each asks for the next
# frame when the last one is on screen) rather than one MJPEG stream each: browsers open at
# most 6 connections per host, so 8 streams would starve; /camera/NAME has the full-rate stream.
GRID_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #111; color: #eee; font-family: sans-serif; margin: 0; }}
#grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 6px; padding: 6px; }}
.tile a {{ color: #eee; }} .tile img {{ display: block; width: 100%; background: #222; min-height: 120px; }}
.stats {{ padding: 3px 0; font-size: 14px; }} p {{ padding: 0 6px; }} p a {{ color: #9cf; }}
</style></head>
<body>
<div id="grid">{tiles}</div>
<p><a href="/console">console: zones, coverage over time, events</a></p>
<script src="/grid.js"></script>
</body></html>
"""

GRID_JS = """'use strict';
for (const tile of document.querySelectorAll('.tile')) {
  const base = '/camera/' + encodeURIComponent(tile.dataset.camera);
  const img = tile.querySelector('img'), stats = tile.querySelector('span');
  let shown = null;   // the blob: URL on screen; a new frame replaces it only once it is complete
  const refresh = async () => {
    let wait = 1000;
    try {
      const r = await fetch(base + '/snapshot.jpg', {cache: 'no-store'});
      if (r.ok) {
        const url = URL.createObjectURL(await r.blob());
        await new Promise((done) => { img.onload = img.onerror = done; img.src = url; });
        if (shown) URL.revokeObjectURL(shown);
        shown = url;
        wait = 100;
      }
    } catch (e) {}
    setTimeout(refresh, wait);
  };
  const poll = async () => {
    try {
      const s = await (await fetch(base + '/stats.json', {cache: 'no-store'})).json();
      stats.textContent = `${s.fps.toFixed(1)} fps | e2e ${s.e2e_ms.toFixed(0)} ms | ` +
        `model ${s.inference_ms.toFixed(0)} ms | frame ${s.frame}`;
    } catch (e) {
      stats.textContent = 'no stats';
    }
  };
  window.addEventListener('load', () => { refresh(); setInterval(poll, 1000); poll(); });
}
"""
SCRIPTS = {"page.js": PAGE_JS, "grid.js": GRID_JS}
# One tile; the first frame is in the page itself (the page has loaded once every camera's has).
GRID_TILE = ('<div class="tile" data-camera="{name}"><div class="stats"><a href="/camera/{path}">{name}</a> '
             '<span>waiting for frames</span></div><img src="/camera/{path}/snapshot.jpg" '
             'alt="{name}: live segmentation overlay"></div>')


def camera_page(title: str, prefix: str) -> str:
    """The page of one camera; `prefix` is '' for the short paths or '/camera/NAME'."""
    return PAGE.format(title=html.escape(title), prefix=html.escape(prefix))


def grid_page(title: str, names) -> str:
    tiles = "".join(GRID_TILE.format(name=html.escape(name), path=html.escape(quote(name, safe="")))
                    for name in names)
    return GRID_PAGE.format(title=html.escape(title), tiles=tiles)
