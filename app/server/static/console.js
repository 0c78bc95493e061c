'use strict';
// The console (/console): live view and grid, zone and rule editor, coverage charts (uPlot),
// events review. Every name from the run (camera, zone, class, rule) reaches the page through
// textContent or an attribute value, never as HTML; the page's CSP allows no inline script.
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const st = {info: null, camera: null, zones: [], rules: [], current: -1, charts: {}, chartKeys: '',
            events: [], playing: null};

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
async function getJSON(url) {
  const r = await fetch(url, {cache: 'no-store'});
  if (!r.ok) throw new Error(await r.text());
  return r.json();
}
async function send(method, url, body) {   // state-changing: the CSRF token as a header
  const r = await fetch(url, {method, cache: 'no-store', headers: {'Content-Type': 'application/json',
    'X-CSRF-Token': st.info.csrf}, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = {};
  try { data = await r.json(); } catch (e) { data = {error: `HTTP ${r.status}`}; }
  return {ok: r.ok, status: r.status, data};
}
const pct = (v) => (v === null || v === undefined) ? '-' : `${(v * 100).toFixed(1)}%`;
const camPath = (name) => '/camera/' + encodeURIComponent(name);

// -- start ----------------------------------------------------------------------------------
async function start() {
  st.info = await getJSON('/api/console');
  $('title').textContent = st.info.title;
  $('role').textContent = `(${st.info.role})`;
  if (st.info.role !== 'admin') for (const b of ['save', 'zone-new', 'zone-delete', 'rule-new']) $(b).disabled = true;
  if (!st.info.preset) $('notice').textContent = 'no --config preset: zones can be drawn but not saved';
  const names = Object.keys(st.info.cameras);
  for (const n of names) {
    $('camera').append(el('option', n, {value: n}));
    $('filter-camera').append(el('option', n, {value: n}));
  }
  for (const c of st.info.classes) $('filter-class').append(el('option', c, {value: c}));
  $('camera').addEventListener('change', () => select($('camera').value));
  select(names[0]);
  liveLoop(); setInterval(pollCameras, 1000); pollCameras();
  setInterval(pollCharts, 1000); setInterval(pollEvents, 2000); pollEvents();
}

function select(name) {
  st.camera = name;
  $('camera').value = name;
  const cam = st.info.cameras[name] || {zones: [], rules: []};
  st.zones = JSON.parse(JSON.stringify(cam.zones));
  st.rules = JSON.parse(JSON.stringify(cam.rules));
  st.current = st.zones.length ? 0 : -1;
  $('scope').textContent = cam.scope === 'all' ? "these are the preset's top-level zones and rules: they apply to " +
    'every camera without its own' : '';
  for (const c of Object.values(st.charts)) c.destroy();
  st.charts = {}; st.chartKeys = '';
  $('charts').replaceChildren();
  renderEditor();
}

// -- live view ------------------------------------------------------------------------------
let shown = null;
async function liveLoop() {   // the selected camera's snapshots, the next asked once one is on screen
  let wait = 1000;
  try {
    const r = await fetch(camPath(st.camera) + '/snapshot.jpg', {cache: 'no-store'});
    if (r.ok) {
      const url = URL.createObjectURL(await r.blob()), img = $('live');
      await new Promise((done) => { img.onload = img.onerror = done; img.src = url; });
      if (shown) URL.revokeObjectURL(shown);
      shown = url; wait = 150;
    }
  } catch (e) {}
  setTimeout(liveLoop, wait);
}

async function pollCameras() {
  let cams;
  try { cams = await getJSON('/api/cameras'); } catch (e) { return; }
  const tiles = Object.entries(cams).map(([name, c]) => {
    const t = el('div', null, {class: 'tile' + (name === st.camera ? ' selected' : '')});
    t.append(el('b', name), ' ', el('span', c.state, {class: 'state-' + c.state}),
             ` ${c.fps.toFixed(1)} fps, drops ${c.drops}`);
    for (const [zone, classes] of Object.entries(c.coverage || {}))
      t.append(el('div', `${zone}: ` + Object.entries(classes).map(([k, v]) => `${k} ${pct(v)}`).join(', ')));
    t.addEventListener('click', () => select(name));
    return t;
  });
  $('grid').replaceChildren(...tiles);
  drawLabels((cams[st.camera] || {}).coverage || {});
}

// -- zones drawn over the picture, and the editor --------------------------------------------
function drawZones() {
  const svg = $('zones');
  svg.replaceChildren();
  st.zones.forEach((z, i) => {
    if (z.coords === 'pixels' || !Array.isArray(z.polygon)) return;   // drawn only when normalized
    const poly = document.createElementNS(SVG, 'polygon');
    poly.setAttribute('points', z.polygon.map((p) => p.join(',')).join(' '));
    if (i === st.current) poly.setAttribute('class', 'current');
    svg.append(poly);
  });
  const z = st.zones[st.current];
  if (z && z.coords !== 'pixels') z.polygon.forEach((p, k) => {
    const c = document.createElementNS(SVG, 'circle');
    c.setAttribute('cx', p[0]); c.setAttribute('cy', p[1]); c.setAttribute('r', 0.012);
    c.dataset.point = k;
    svg.append(c);
  });
  $('zone-points').textContent = `${z ? z.polygon.length : 0} points`;
}
function drawLabels(coverage) {
  const box = $('labels');
  box.replaceChildren(...st.zones.filter((z) => z.coords !== 'pixels' && z.polygon.length).map((z) => {
    const d = el('div', z.name + Object.entries(coverage[z.name] || {}).map(([c, v]) => `\n${c} ${pct(v)}`).join(''));
    d.style.left = `${Math.min(...z.polygon.map((p) => p[0])) * 100}%`;
    d.style.top = `${Math.min(...z.polygon.map((p) => p[1])) * 100}%`;
    return d;
  }));
}
function point(ev) {
  const r = $('zones').getBoundingClientRect();
  const clamp = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
  return [clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height)];
}
let drag = null, dragged = false;
$('zones').addEventListener('mousedown', (ev) => {
  if (ev.target.dataset && ev.target.dataset.point !== undefined) {
    drag = Number(ev.target.dataset.point); dragged = false; ev.preventDefault();
  }
});
window.addEventListener('mousemove', (ev) => {
  if (drag === null) return;
  st.zones[st.current].polygon[drag] = point(ev); dragged = true; drawZones();
});
window.addEventListener('mouseup', () => { drag = null; });
$('zones').addEventListener('click', (ev) => {
  if (dragged) { dragged = false; return; }
  if (ev.target.dataset && ev.target.dataset.point !== undefined) return;
  if (st.current < 0) newZone();
  st.zones[st.current].polygon.push(point(ev));
  drawZones();
});
function newZone() {
  let n = st.zones.length + 1;
  while (st.zones.some((z) => z.name === `zone${n}`)) n++;
  st.zones.push({name: `zone${n}`, polygon: [], classes: []});
  st.current = st.zones.length - 1;
  renderEditor();
}
$('zone-new').addEventListener('click', newZone);
$('zone-delete').addEventListener('click', () => {
  const z = st.zones[st.current];
  if (!z) return;
  st.rules = st.rules.filter((r) => r.zone !== z.name);
  st.zones.splice(st.current, 1);
  st.current = st.zones.length - 1;
  renderEditor();
});
$('zone-clear').addEventListener('click', () => { if (st.zones[st.current]) { st.zones[st.current].polygon = []; drawZones(); } });
$('zone-list').addEventListener('change', () => { st.current = Number($('zone-list').value); renderEditor(); });
$('zone-name').addEventListener('input', () => {
  const z = st.zones[st.current];
  if (!z) return;
  const old = z.name;
  z.name = $('zone-name').value;
  for (const r of st.rules) if (r.zone === old) r.zone = z.name;
  $('zone-list').options[st.current].textContent = z.name;
  renderRules();
});
$('rule-new').addEventListener('click', () => {
  const z = st.zones[st.current];
  st.rules.push({zone: z ? z.name : 'frame', class: (z && z.classes[0]) || st.info.classes[0], above: 0.1, for_s: 1,
                 clear_s: 1, cooldown_s: 0});
  renderRules();
});

function renderEditor() {
  const list = $('zone-list');
  list.replaceChildren(...st.zones.map((z, i) => el('option', z.name, {value: i})));
  list.value = st.current;
  const z = st.zones[st.current];
  $('zone-name').value = z ? z.name : '';
  $('zone-classes').replaceChildren(...st.info.classes.map((c) => {
    const box = el('input', null, {type: 'checkbox'});
    box.dataset.class = c;
    box.checked = !!z && (z.classes || []).includes(c);
    box.disabled = !z;
    box.addEventListener('change', () => {
      z.classes = st.info.classes.filter((k) => k === c ? box.checked : (z.classes || []).includes(k));
    });
    const label = el('label');
    label.append(box, ' ', c);
    return label;
  }));
  renderRules(); drawZones(); drawLabels({});
}

function numberField(rule, key, label) {
  const input = el('input', null, {type: 'number', step: '0.01', min: '0'});
  input.dataset.key = key;
  input.value = rule[key] === undefined || rule[key] === null ? '' : rule[key];
  input.addEventListener('input', () => {
    if (input.value === '') delete rule[key]; else rule[key] = Number(input.value);
  });
  const l = el('label', label + ' ');
  l.append(input);
  return l;
}
function renderRules() {   // every rule of the camera; each names its zone (or the whole frame)
  const rows = st.rules.map((r) => {
    const row = el('div', null, {class: 'rule'});
    const zone = el('select');
    for (const z of ['frame', ...st.zones.map((z) => z.name)]) zone.append(el('option', z, {value: z}));
    zone.value = r.zone || 'frame';
    zone.addEventListener('change', () => { r.zone = zone.value; });
    const cls = el('select');
    for (const c of st.info.classes) cls.append(el('option', c, {value: c}));
    cls.value = r.class;
    cls.addEventListener('change', () => { r.class = cls.value; });
    const dir = el('select');
    dir.append(el('option', 'above', {value: 'above'}), el('option', 'below', {value: 'below'}));
    dir.value = r.below !== undefined ? 'below' : 'above';
    const level = numberField(r, dir.value, 'level');
    dir.addEventListener('change', () => {
      const v = r.above !== undefined ? r.above : r.below;
      delete r.above; delete r.below; r[dir.value] = v; renderRules();
    });
    const del = el('button', 'remove');
    del.addEventListener('click', () => { st.rules.splice(st.rules.indexOf(r), 1); renderRules(); });
    row.append(el('span', 'zone '), zone, ' ', cls, ' ', dir, ' ', level, ' ', numberField(r, 'for_s', 'for s'), ' ',
               numberField(r, 'clear', 'clear'), ' ', numberField(r, 'clear_s', 'clear s'), ' ',
               numberField(r, 'cooldown_s', 'cooldown s'), ' ', del);
    return row;
  });
  $('rules').replaceChildren(...rows);
}

$('save').addEventListener('click', async () => {
  $('save-error').textContent = ''; $('zone-name-error').textContent = '';
  $('save-status').textContent = 'saving...';
  const r = await send('POST', '/api/preset', {camera: st.camera, zones: st.zones, rules: st.rules});
  if (!r.ok) {
    $('save-status').textContent = '';
    const msg = r.data.error || `HTTP ${r.status}`;
    ($(/zone name|zones\.\d+\.name/.test(msg) ? 'zone-name-error' : 'save-error')).textContent = msg;
    return;
  }
  $('save-status').textContent = r.data.status;
  st.info.cameras[st.camera] = {...st.info.cameras[st.camera], zones: st.zones, rules: st.rules};
});

// -- coverage over time (uPlot) ---------------------------------------------------------------
const COLORS = ['#d62728', '#1f77b4', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
function chartOptions(zone, classes, rules) {
  return {
    width: 460, height: 200, title: zone,
    scales: {y: {range: [0, 1]}},
    series: [{}, ...classes.map((c, i) => ({label: c, stroke: COLORS[i % COLORS.length], width: 2}))],
    hooks: {draw: [(u) => {
      const ctx = u.ctx, spans = (u.spans || []);
      ctx.save();
      for (const s of spans) {   // events shaded
        const x0 = u.valToPos(s.start, 'x', true), x1 = u.valToPos(s.end || u.data[0][u.data[0].length - 1], 'x', true);
        ctx.fillStyle = 'rgba(255, 80, 80, 0.15)';
        ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
      }
      for (const r of rules) {   // rule thresholds as dashed lines
        const v = r.above !== undefined ? r.above : r.below, y = u.valToPos(v, 'y', true);
        ctx.strokeStyle = COLORS[Math.max(0, classes.indexOf(r.class)) % COLORS.length];
        ctx.setLineDash([6, 4]); ctx.lineWidth = 1.5;
        ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
      }
      ctx.restore();
    }]},
  };
}
// Longer spans come from the coverage log (/api/coverage/history), asked again every 30 s at most.
$('span').addEventListener('change', () => { st.longAt = 0; });
async function pollCharts() {
  if (typeof uPlot === 'undefined') return;
  const minutes = $('span').value, now = Date.now();
  if (minutes && st.longAt && now - st.longAt < 30000 && st.longKey === st.camera + minutes) return;
  let h;
  try {
    h = await getJSON(minutes ? `/api/coverage/history?camera=${encodeURIComponent(st.camera)}&minutes=${minutes}`
                              : '/api/history?camera=' + encodeURIComponent(st.camera));
  } catch (e) { return; }
  st.longAt = minutes ? now : 0; st.longKey = st.camera + minutes;
  const byZone = {};
  for (const key of Object.keys(h.series)) {
    const i = key.indexOf(':'), zone = key.slice(0, i);
    (byZone[zone] = byZone[zone] || []).push(key.slice(i + 1));
  }
  const keys = JSON.stringify(byZone) + JSON.stringify(st.info.cameras[st.camera].rules);
  if (keys !== st.chartKeys) {
    for (const c of Object.values(st.charts)) c.destroy();
    st.charts = {}; st.chartKeys = keys;
    $('charts').replaceChildren();
    for (const [zone, classes] of Object.entries(byZone)) {
      const box = el('div', null, {class: 'chart'});
      box.dataset.zone = zone;
      $('charts').append(box);
      const rules = (st.info.cameras[st.camera].rules || []).filter((r) => (r.zone || 'frame') === zone);
      st.charts[zone] = new uPlot(chartOptions(zone, classes, rules), [h.t, ...classes.map(() => [])], box);
      st.charts[zone].classes = classes;
    }
  }
  for (const [zone, chart] of Object.entries(st.charts)) {
    chart.spans = h.spans.filter((s) => s.zone === zone);
    chart.setData([h.t, ...chart.classes.map((c) => h.series[`${zone}:${c}`])]);
  }
}

// -- events review ------------------------------------------------------------------------------
for (const f of ['filter-zone', 'filter-class', 'filter-camera']) $(f).addEventListener('change', renderEvents);
let eventsSeen = '';
async function pollEvents() {   // re-rendered only when something changed (thumbnails are not fetched again)
  let events;
  try { events = (await getJSON('/api/events')).events; } catch (e) { return; }
  const seen = JSON.stringify(events);
  if (seen === eventsSeen) return;
  eventsSeen = seen; st.events = events;
  const zones = new Set(st.events.map((e) => e.zone));
  const sel = $('filter-zone'), keep = sel.value;
  sel.replaceChildren(el('option', 'all', {value: ''}), ...[...zones].sort().map((z) => el('option', z, {value: z})));
  sel.value = keep;
  renderEvents();
}
function renderEvents() {
  const fz = $('filter-zone').value, fc = $('filter-class').value, fcam = $('filter-camera').value;
  const shownEvents = st.events.filter((e) => (!fz || e.zone === fz) && (!fc || e.class === fc) &&
                                            (!fcam || e.camera === fcam));
  const rows = shownEvents.map((e) => {
    const row = el('div', null, {class: 'event' + (st.playing === e.id ? ' playing' : '')});
    row.dataset.id = e.id;
    const thumb = el('img', null, {alt: ''});
    if (e.has_snapshot) thumb.src = e.snapshot;
    const when = new Date(e.time * 1000).toLocaleTimeString();
    const dur = e.duration_s === null ? 'running' : `${e.duration_s.toFixed(1)} s`;
    row.append(thumb, el('span', `${when} ${e.camera} ${e.zone} ${e.class} peak ${pct(e.peak)} ${dur}`));
    if (e.has_clip) {
      const play = el('button', 'play');
      play.addEventListener('click', () => playEvent(e));
      row.append(play);
    } else if (e.clip_deleted) row.append(' ', el('i', 'clip deleted'));
    if (st.info.role === 'admin') {
      const del = el('button', 'delete');
      del.addEventListener('click', async () => {
        const r = await send('DELETE', '/api/events/' + encodeURIComponent(e.camera) + '/' + encodeURIComponent(e.id));
        if (r.ok) { st.events = st.events.filter((x) => x.id !== e.id); renderEvents(); }
      });
      row.append(del);
    }
    return row;
  });
  // A timeline per camera: its events newest first under its name.
  const byCamera = {};
  rows.forEach((row, i) => { const cam = shownEvents[i].camera; (byCamera[cam] = byCamera[cam] || []).push(row); });
  $('events').replaceChildren(...Object.keys(byCamera).sort().flatMap((cam) => [el('h4', cam), ...byCamera[cam]]));
}
function playEvent(e) {
  st.playing = e.id;
  $('player').src = e.clip;
  $('player').play().catch(() => {});
  if (e.has_snapshot) $('snapshot').src = e.snapshot;
  renderEvents();
}

start();
