"""The studio's browser side: theme, CSS, and the small scripts of the scrub widget and the embedded
viewer. Kept apart from the handlers so the Python reads as Python."""

from __future__ import annotations

import html

# Runs once when the page loads: the studio is dark unless the URL asks for ?__theme=light.
PAGE_JS = """
() => {
  if (!new URL(window.location.href).searchParams.has('__theme')) {
    document.body.classList.add('dark');
  }
}
"""

# js_on_load of the scrub widget (gr.HTML): `element`, `trigger` and `watch` come from gradio.
# Every cell image is already in the page; a slider move only moves the "on" class, so scrubbing
# costs no request. On release it reports (view, time) so the server can swap the row/column videos.
SCRUB_JS = r"""
const clamp = (x, lo, hi) => Math.max(lo, Math.min(hi, x));
let timer = null;
const root = () => element.querySelector('.scrub');

function show(v, t) {
  const s = root();
  if (!s) return;
  const V = +s.dataset.v, T = +s.dataset.t, d = s.dataset;
  v = clamp(Math.round(v) || 0, 0, V - 1);
  t = clamp(Math.round(t) || 0, 0, T - 1);
  d.view = v; d.time = t;
  const on = s.querySelector('img.cell.on');
  const next = s.querySelector(`img.cell[data-v="${v}"][data-t="${t}"]`);
  if (on !== next) { if (on) on.classList.remove('on'); if (next) next.classList.add('on'); }
  const sv = s.querySelector('input.sv'), st = s.querySelector('input.st');
  if (+sv.value !== v) sv.value = v;
  if (+st.value !== t) st.value = t;
  s.querySelector('output.ov').textContent = `${v} / ${V - 1}`;
  s.querySelector('output.ot').textContent = `${t} / ${T - 1}`;
  s.querySelector('.b-view').textContent = `view ${v}`;
  s.querySelector('.b-time').textContent = `time ${t}`;
  const given = (d.known || '')[v * T + t] === '1';
  const k = s.querySelector('.b-known');
  k.textContent = given ? 'given' : 'generated';
  k.classList.toggle('given', given);
  const hl = s.querySelector('.sheet-hl');
  hl.style.left = `${t * d.sx * 100}%`;
  hl.style.top = `${v * d.sy * 100}%`;
  hl.style.width = `${d.cw * 100}%`;
  hl.style.height = `${d.ch * 100}%`;
}

let pending = null;
function report() {  // debounced: one event when the hand rests, not one per key repeat
  clearTimeout(pending);
  pending = setTimeout(() => {
    const s = root();
    if (s) trigger('release', {view: +s.dataset.view, time: +s.dataset.time});
  }, 120);
}

function stop() {
  if (timer) { clearInterval(timer); timer = null; }
  const b = element.querySelector('.scrub-play');
  if (b) { b.textContent = '▶'; b.classList.remove('playing'); }
}

function play() {
  const s = root();
  if (!s) return;
  if (timer) { stop(); report(); return; }
  const fps = Math.max(1, +s.dataset.fps || 8);
  timer = setInterval(() => {
    const s = root();
    if (!s) { stop(); return; }
    show(+s.dataset.view, (+s.dataset.time + 1) % +s.dataset.t);
  }, 1000 / fps);
  const b = s.querySelector('.scrub-play');
  b.textContent = '❚❚'; b.classList.add('playing');
}

element.addEventListener('input', (e) => {
  if (!e.target.matches('input.sv, input.st')) return;
  const s = root();
  show(+s.querySelector('input.sv').value, +s.querySelector('input.st').value);
});
element.addEventListener('change', (e) => {
  if (e.target.matches('input.sv, input.st')) report();
});
element.addEventListener('click', (e) => {
  const s = root();
  if (!s) return;
  const sheet = e.target.closest('.scrub-sheet');
  if (sheet) {
    const r = sheet.getBoundingClientRect(), d = s.dataset;
    const t = Math.floor((e.clientX - r.left) / r.width / d.sx);
    const v = Math.floor((e.clientY - r.top) / r.height / d.sy);
    show(v, t); report();
  } else if (e.target.closest('.scrub-play')) {
    play();
  }
});
element.addEventListener('keydown', (e) => {
  if (e.key === ' ' && e.target.closest('.scrub') && !e.target.matches('input[type=text]')) {
    e.preventDefault(); play();
  }
});
watch('value', () => { stop(); show(0, 0); });
show(0, 0);
"""

# js_on_load of the viewer panel: the viewer listens on its own port; point the iframe at the host
# name the page was opened with, so it also works when the studio is opened from another machine.
VIEWER_JS = r"""
function point() {
  element.querySelectorAll('iframe[data-port]').forEach((f) => {
    const want = `http://${window.location.hostname}:${f.dataset.port}/`;
    if (f.getAttribute('src') !== want) f.setAttribute('src', want);
  });
}
point();
watch('value', point);
"""


def viewer_html(port: int | None, host: str = "127.0.0.1", note: str = "") -> str:
    """The 3D panel: the viewer's iframe, or a placeholder saying what to do."""
    if port is None:
        msg = note or "Reconstruct the grid to see it as deformable 3D Gaussians here."
        return f'<div class="viewer-empty"><div class="viewer-empty-icon">◇</div><div>{html.escape(msg)}</div></div>'
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return (f'<div class="viewer-wrap"><iframe class="viewer-frame" title="3D viewer" data-port="{port}" '
            f'src="http://{shown}:{port}/" allow="fullscreen"></iframe></div>')


def status_html(text: str, kind: str = "info", step: int | None = None, total: int | None = None,
                detail: str = "") -> str:
    """A status line; with ``step``/``total`` a progress bar. ``kind``: info, busy, ok, warn, error."""
    bar = ""
    if step is not None and total:
        pct = max(0.0, min(100.0, 100.0 * step / total))
        bar = f'<div class="pbar"><div class="pbar-fill" style="width:{pct:.1f}%"></div></div>'
    det = f'<div class="status-detail">{html.escape(detail)}</div>' if detail else ""
    return f'<div class="status status-{kind}"><div class="status-text">{html.escape(text)}</div>{bar}{det}</div>'


def header_html(model: str, device: str, precision: str | None = None) -> str:
    prec = f'\n    <span class="chip">precision · {html.escape(precision)}</span>' if precision else ""
    return f"""
<div class="hero">
  <div class="hero-title"><span class="hero-mark">◆</span> 4D Video Studio</div>
  <div class="hero-sub">Two ordinary videos in, a grid of <b>views × times</b> out: scrub it, export it,
    and lift it into deformable 3D Gaussians.</div>
  <div class="hero-chips"><span class="chip">model · {html.escape(model)}</span>
    <span class="chip">device · {html.escape(device)}</span>{prec}</div>
</div>"""


CSS = r"""
.gradio-container { width: 100% !important; max-width: 1480px !important; margin: 0 auto !important; }
footer { display: none !important; }
.hero { padding: 10px 4px 2px 4px; }
.hero-title { font-size: 1.7rem; font-weight: 700; letter-spacing: -0.01em; }
.hero-mark { color: var(--color-accent); }
.hero-sub { color: var(--body-text-color-subdued); margin-top: 2px; }
.hero-chips { margin-top: 8px; display: flex; gap: 8px; flex-wrap: wrap; }
.chip { font-size: 0.78rem; padding: 2px 10px; border-radius: 999px;
        border: 1px solid var(--border-color-primary); color: var(--body-text-color-subdued); }
.section { font-size: 1.08rem; font-weight: 650; margin: 14px 0 2px 0; display: flex; align-items: center; }
.section .num { display: inline-flex; align-items: center; justify-content: center; width: 1.55em;
  height: 1.55em; border-radius: 50%; background: var(--color-accent); color: #1a1204;
  font-size: 0.8em; font-weight: 700; margin-right: 9px; }
.section .hint { font-weight: 400; margin-left: 8px; }
.hint { color: var(--body-text-color-subdued); font-size: 0.85rem; }
.hint p { margin: 0 !important; }

/* status and progress */
.status { padding: 8px 12px; border-radius: 8px; border: 1px solid var(--border-color-primary);
          font-size: 0.9rem; min-height: 20px; }
.status-busy { border-color: var(--color-accent); }
.status-ok { border-color: #3a8f5c; }
.status-warn { border-color: #c99a2e; }
.status-error { border-color: #c2413a; background: rgba(194, 65, 58, 0.10); }
.status-detail { color: var(--body-text-color-subdued); font-size: 0.8rem; margin-top: 4px; }
.pbar { height: 8px; border-radius: 4px; background: var(--border-color-primary); margin-top: 6px; overflow: hidden; }
.pbar-fill { height: 100%; background: var(--color-accent); transition: width 0.2s linear; }
.input-note { font-size: 0.85rem; }

/* scrub widget */
.scrub-empty, .viewer-empty { border: 1px dashed var(--border-color-primary); border-radius: 12px;
  padding: 48px 24px; text-align: center; color: var(--body-text-color-subdued); }
.scrub-empty-title { font-size: 1.15rem; font-weight: 600; color: var(--body-text-color); margin-bottom: 6px; }
.viewer-empty-icon { font-size: 2rem; color: var(--color-accent); }
.scrub-main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 18px; align-items: start; }
@media (max-width: 900px) { .scrub-main { grid-template-columns: 1fr; } }
.scrub-frame { position: relative; width: 100%; background: #000; border-radius: 10px; overflow: hidden; }
.scrub-frame img.cell { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain;
  display: none; user-select: none; }
.scrub-frame img.cell.on { display: block; }
.scrub-badge { position: absolute; left: 10px; top: 10px; padding: 3px 10px; border-radius: 999px;
  background: rgba(0, 0, 0, 0.62); color: #fff; font-size: 0.8rem; font-variant-numeric: tabular-nums; }
.b-known { margin-left: 6px; padding: 0 6px; border-radius: 4px; background: rgba(255, 255, 255, 0.16); }
.b-known.given { background: rgba(80, 160, 255, 0.55); }
.scrub-controls { display: flex; gap: 14px; align-items: center; margin-top: 12px; flex-wrap: wrap; }
.scrub-slider { flex: 1 1 220px; display: flex; align-items: center; gap: 10px; font-weight: 600; font-size: 0.9rem; }
.scrub-slider input[type=range] { flex: 1; accent-color: var(--color-accent); height: 22px; cursor: pointer; }
.scrub-slider output { min-width: 4.5em; text-align: right; font-variant-numeric: tabular-nums;
  font-weight: 400; color: var(--body-text-color-subdued); }
.scrub-play { width: 38px; height: 38px; border-radius: 50%; border: 1px solid var(--border-color-primary);
  background: var(--block-background-fill); color: var(--body-text-color); cursor: pointer; font-size: 0.95rem; }
.scrub-play.playing, .scrub-play:hover { border-color: var(--color-accent); color: var(--color-accent); }
.sheet-title { font-size: 0.85rem; font-weight: 600; margin-bottom: 6px; display: flex;
  justify-content: space-between; gap: 8px; flex-wrap: wrap; }
.sheet-legend { font-weight: 400; color: var(--body-text-color-subdued); }
.sheet-legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 4px 0 10px;
  vertical-align: -1px; }
.lg-cur { border: 2px solid #ffc800; }
.lg-known { border: 2px solid #50a0ff; }
.scrub-sheet { position: relative; line-height: 0; cursor: crosshair; border-radius: 6px; overflow: hidden; }
.scrub-sheet img { width: 100%; height: auto; user-select: none; }
.sheet-hl { position: absolute; box-sizing: border-box; border: 3px solid #ffc800; border-radius: 2px;
  box-shadow: 0 0 0 2px rgba(0, 0, 0, 0.55), 0 0 14px rgba(255, 200, 0, 0.6); pointer-events: none;
  transition: left 0.06s linear, top 0.06s linear; }
.sheet-known { position: absolute; box-sizing: border-box; border: 2px solid rgba(80, 160, 255, 0.9);
  pointer-events: none; }
.sheet-axes { display: flex; justify-content: space-between; font-size: 0.75rem;
  color: var(--body-text-color-subdued); margin-top: 4px; }
.scrub-caption { margin-top: 8px; font-style: italic; color: var(--body-text-color-subdued); }

/* 3D viewer */
.viewer-wrap { border-radius: 12px; overflow: hidden; border: 1px solid var(--border-color-primary); }
.viewer-frame { width: 100%; height: 620px; border: 0; display: block; background: #111; }
"""
