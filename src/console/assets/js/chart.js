// The timeline chart: uPlot draws the write rate (bytes/s, writes/s) of
// the buckets the server computed; a draw hook adds the lanes above the
// plot (transactions as ranges, markers by kind) and the bands over it
// (faded history, super transactions, the picked point). The chart itself
// never fetches: zooming and panning report the new window to the page.
import { rate, short } from './format.js';

/** @type {any} */
const uPlot = /** @type {any} */ (globalThis).uPlot;

/** CSS px above the plot for the lanes: transactions (8..20), markers (24..44). */
const LANES = 48;
const TX_LANE = [8, 12];
const MK_LANE = [24, 20];
const COLORS = {
  bytes: '#1f6fb2',
  writes: '#d9822b',
  tx: ['#5b9bd5', '#3d7fbf'],
  app: '#2e8540',
  crash: '#d9822b',
  super: '#7d4cb0',
  faded: '#9aa5b1',
  pick: '#c0392b',
  archive: '#2a9d8f',
};

/** Times in UTC, as the API and the CLI print them. @param {number} ts */
export const utc = (ts) => uPlot.tzDate(new Date(ts), 'Etc/UTC');

/**
 * @typedef {{ onWindow: (from: number, to: number) => void, onPick: (at: string) => void, onDraw?: () => void }} ChartEvents
 */

export class TimelineChart {
  /** @param {HTMLElement} el @param {ChartEvents} ev */
  constructor(el, ev) {
    this.el = el;
    this.ev = ev;
    /** @type {any} */ this.tl = null;
    this.from = Date.now() - 3600_000;
    this.to = Date.now();
    /** @type {number | null} */ this.picked = null;
    /** @type {Array<{ time: number, seq?: number }>} */ this.archived = [];
    /** @type {Array<{ x: number, seq: number }>} */ this.markerHits = [];
    const width = Math.max(300, el.clientWidth);
    this.u = new uPlot(
      {
        width,
        height: 330,
        ms: 1,
        tzDate: utc,
        padding: [LANES, 8, 0, 0],
        legend: { show: true, live: true },
        cursor: { drag: { x: true, y: false, setScale: false }, points: { show: false } },
        scales: {
          x: { time: true, range: () => [this.from, this.to] },
          bytes: {
            range: (/** @type {any} */ _u, /** @type {number} */ _min, /** @type {number} */ max) => [0, Math.max(1024, max * 1.08)],
          },
          writes: { range: (/** @type {any} */ _u, /** @type {number} */ _min, /** @type {number} */ max) => [0, Math.max(1, max * 1.08)] },
        },
        axes: [
          { stroke: '#65717e', grid: { stroke: '#eef1f4' } },
          {
            scale: 'bytes',
            size: 78,
            stroke: '#65717e',
            grid: { stroke: '#eef1f4' },
            values: (/** @type {any} */ _u, /** @type {number[]} */ s) => s.map(rate),
          },
          {
            scale: 'writes',
            side: 1,
            size: 56,
            stroke: '#65717e',
            grid: { show: false },
            values: (/** @type {any} */ _u, /** @type {number[]} */ s) => s.map((v) => `${short(v)}/s`),
          },
        ],
        series: [
          { label: 'time (UTC)' },
          {
            label: 'bytes/s',
            scale: 'bytes',
            stroke: COLORS.bytes,
            fill: 'rgba(31,111,178,0.14)',
            width: 1.5,
            points: { show: false },
            value: (/** @type {any} */ _u, /** @type {number | null} */ v) => (v === null ? '-' : rate(v)),
          },
          {
            label: 'writes/s',
            scale: 'writes',
            stroke: COLORS.writes,
            width: 1.2,
            points: { show: false },
            value: (/** @type {any} */ _u, /** @type {number | null} */ v) => (v === null ? '-' : `${short(v)}/s`),
          },
        ],
        hooks: {
          draw: [(/** @type {any} */ u) => this.drawOverlays(u)],
          setSelect: [(/** @type {any} */ u) => this.onSelect(u)],
        },
      },
      [[], [], []],
      el,
    );
    this.attachPointer();
    this.resizer = new ResizeObserver(() => {
      const w = Math.max(300, this.el.clientWidth);
      if (Math.abs(w - this.u.width) > 2) this.u.setSize({ width: w, height: 330 });
    });
    this.resizer.observe(el);
  }

  /** Plot width in CSS px (the page asks for about one bucket per 2 px). */
  get plotWidth() {
    return this.u.bbox.width / uPlot.pxRatio;
  }

  /** Shows a Timeline answer of the server. @param {any} tl */
  setData(tl) {
    this.tl = tl;
    this.from = tl.from;
    this.to = tl.to;
    const per = tl.bucketMs / 1000;
    const r = tl.rate;
    const x = r.t.map((/** @type {number} */ t) => t + tl.bucketMs / 2);
    this.u.setData([x, r.bytes.map((/** @type {number} */ b) => b / per), r.writes.map((/** @type {number} */ w) => w / per)], true);
    this.ev.onDraw?.();
  }

  /** Moves the window at once (the data follows when the page has fetched it). @param {number} from @param {number} to */
  setWindow(from, to) {
    this.from = from;
    this.to = to;
    this.u.setScale('x', { min: from, max: to });
  }

  /** @param {number | null} t */
  setPicked(t) {
    this.picked = t;
    this.u.redraw(false, false);
  }

  /** @param {Array<{ time: number, seq?: number }>} pts */
  setArchived(pts) {
    this.archived = pts;
    this.u.redraw(false, false);
  }

  destroy() {
    this.resizer.disconnect();
    this.u.destroy();
  }

  /** Zooms around time `at` by `factor` (< 1 zooms in). @param {number} factor @param {number} [at] */
  zoom(factor, at) {
    const c = at ?? (this.from + this.to) / 2;
    const span = Math.max(50, (this.to - this.from) * factor);
    const left = (c - this.from) / (this.to - this.from);
    this.ev.onWindow(c - span * left, c + span * (1 - left));
  }

  /** Pans by a fraction of the window. @param {number} frac */
  pan(frac) {
    const d = (this.to - this.from) * frac;
    this.ev.onWindow(this.from + d, this.to + d);
  }

  /** @param {any} u */
  onSelect(u) {
    const w = u.select.width;
    if (w > 4) {
      const a = u.posToVal(u.select.left, 'x');
      const b = u.posToVal(u.select.left + w, 'x');
      this.ev.onWindow(a, b);
    }
    if (w > 0) u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
  }

  attachPointer() {
    const over = this.u.over;
    const wrap = this.u.root.querySelector('.u-wrap') ?? this.u.root;
    /** @type {{ x: number, y: number } | null} */
    let down = null;
    wrap.addEventListener('mousedown', (/** @type {MouseEvent} */ e) => (down = { x: e.clientX, y: e.clientY }));
    wrap.addEventListener('mouseup', (/** @type {MouseEvent} */ e) => {
      if (!down || Math.abs(e.clientX - down.x) > 3 || Math.abs(e.clientY - down.y) > 3) return;
      down = null;
      const r = over.getBoundingClientRect();
      const x = e.clientX - r.left;
      const y = e.clientY - r.top;
      if (x < 0 || x > r.width || y < -LANES || y > r.height) return;
      this.click(x, y);
    });
    over.addEventListener(
      'wheel',
      (/** @type {WheelEvent} */ e) => {
        e.preventDefault();
        if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
          this.pan(((e.shiftKey ? e.deltaY : e.deltaX) > 0 ? 1 : -1) * 0.15);
          return;
        }
        const at = this.u.posToVal(e.clientX - over.getBoundingClientRect().left, 'x');
        this.zoom(e.deltaY > 0 ? 1.4 : 1 / 1.4, at);
      },
      { passive: false },
    );
  }

  /** A click at CSS px (x, y) of the plot (y < 0: the lanes). @param {number} x @param {number} y */
  click(x, y) {
    const tl = this.tl;
    if (y < 0 && y >= -LANES + MK_LANE[0] - 4) {
      let best = null;
      for (const m of this.markerHits) if (Math.abs(m.x - x) <= 8 && (!best || Math.abs(m.x - x) < Math.abs(best.x - x))) best = m;
      // By its seq (the point a marker names): a name is only a name.
      if (best) return this.ev.onPick(`@seq:${best.seq}`);
    }
    const t = this.u.posToVal(x, 'x');
    if (tl?.writes?.length) {
      let best = null;
      let bd = 6;
      for (const w of tl.writes) {
        const d = Math.abs(this.u.valToPos(w.time, 'x') - x);
        if (d <= bd) {
          bd = d;
          best = w;
        }
      }
      if (best) return this.ev.onPick(`@seq:${best.seq}`);
    }
    this.ev.onPick(new Date(Math.round(t)).toISOString());
  }

  /** @param {any} u */
  drawOverlays(u) {
    const tl = this.tl;
    const ctx = /** @type {CanvasRenderingContext2D} */ (u.ctx);
    const pr = uPlot.pxRatio;
    const { left, top, width, height } = u.bbox;
    const X = (/** @type {number} */ t) => u.valToPos(t, 'x', true);
    const laneTop = top - LANES * pr;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, laneTop, width, top + height - laneTop);
    ctx.clip();
    ctx.font = `${11 * pr}px system-ui, sans-serif`;
    ctx.textBaseline = 'middle';
    if (tl) {
      this.bands(ctx, tl, X, laneTop, top + height, pr);
      this.transactions(ctx, tl, X, top + (TX_LANE[0] - LANES) * pr, TX_LANE[1] * pr, left, width);
      this.markers(ctx, tl, X, top + (MK_LANE[0] - LANES) * pr, MK_LANE[1] * pr, top, height, pr, left, width);
      if (tl.writes) {
        ctx.fillStyle = '#33424f';
        for (const w of tl.writes) ctx.fillRect(Math.round(X(w.time)), top + height - 7 * pr, Math.max(1, pr), 7 * pr);
      }
    }
    ctx.fillStyle = COLORS.archive;
    for (const a of this.archived) {
      ctx.beginPath();
      ctx.arc(X(a.time), top + (TX_LANE[0] - LANES + TX_LANE[1] / 2) * pr, 3.5 * pr, 0, Math.PI * 2);
      ctx.fill();
    }
    if (this.picked !== null) {
      const x = Math.round(X(this.picked));
      ctx.fillStyle = COLORS.pick;
      ctx.fillRect(x - pr, laneTop, 2 * pr, top + height - laneTop);
    }
    ctx.restore();
  }

  /** Faded history and super transactions as bands over lanes and plot. */
  bands(
    /** @type {CanvasRenderingContext2D} */ ctx,
    /** @type {any} */ tl,
    /** @type {(t: number) => number} */ X,
    /** @type {number} */ y0,
    /** @type {number} */ y1,
    /** @type {number} */ pr,
  ) {
    for (const f of tl.faded) {
      const a = X(f.from);
      const w = Math.max(pr, X(f.to) - a);
      ctx.fillStyle = 'rgba(154,165,177,0.22)';
      ctx.fillRect(a, y0, w, y1 - y0);
      if (w > 60 * pr) {
        ctx.fillStyle = '#5b6670';
        ctx.fillText('faded', a + 4 * pr, y1 - 16 * pr);
      }
    }
    for (const s of tl.supers) {
      const a = X(s.from);
      const w = Math.max(2 * pr, X(s.to) - a);
      ctx.fillStyle = 'rgba(125,76,176,0.16)';
      ctx.fillRect(a, y0, w, y1 - y0);
      ctx.strokeStyle = 'rgba(125,76,176,0.5)';
      ctx.lineWidth = pr;
      for (let x = a - (y1 - y0); x < a + w; x += 10 * pr) {
        ctx.beginPath();
        ctx.moveTo(Math.max(a, x), y1 - Math.max(0, a - x));
        ctx.lineTo(Math.min(a + w, x + (y1 - y0)), y0 + Math.max(0, x + (y1 - y0) - (a + w)));
        ctx.stroke();
      }
      if (w > 90 * pr) {
        ctx.fillStyle = COLORS.super;
        ctx.fillText(`super transaction ${s.id}: no points inside`, a + 4 * pr, y1 - 30 * pr);
      }
    }
  }

  /** Transactions as ranges (few), or their density per bucket (many). */
  transactions(
    /** @type {CanvasRenderingContext2D} */ ctx,
    /** @type {any} */ tl,
    /** @type {(t: number) => number} */ X,
    /** @type {number} */ y,
    /** @type {number} */ h,
    /** @type {number} */ left,
    /** @type {number} */ width,
  ) {
    ctx.fillStyle = '#f0f3f6';
    ctx.fillRect(left, y, width, h);
    if (tl.transactions.items) {
      tl.transactions.items.forEach((/** @type {any} */ t, /** @type {number} */ i) => {
        const a = X(t.firstTime);
        const w = Math.max(2, X(t.lastTime) - a);
        ctx.fillStyle = t.superId !== null ? COLORS.super : t.mergedFrom !== null ? COLORS.faded : (COLORS.tx[i % 2] ?? '#5b9bd5');
        ctx.fillRect(a, y, w, h);
      });
      return;
    }
    const c = tl.rate.transactions;
    const max = Math.max(1, ...c);
    for (let i = 0; i < c.length; i++) {
      if (!c[i]) continue;
      const a = X(tl.rate.t[i]);
      ctx.fillStyle = `rgba(61,127,191,${0.25 + (0.75 * c[i]) / max})`;
      ctx.fillRect(a, y, Math.max(1, X(tl.rate.t[i] + tl.bucketMs) - a), h);
    }
  }

  /** Markers by kind (application-consistent green, crash-consistent orange), or counts per bucket. */
  markers(
    /** @type {CanvasRenderingContext2D} */ ctx,
    /** @type {any} */ tl,
    /** @type {(t: number) => number} */ X,
    /** @type {number} */ y,
    /** @type {number} */ h,
    /** @type {number} */ plotTop,
    /** @type {number} */ plotH,
    /** @type {number} */ pr,
    /** @type {number} */ left,
    /** @type {number} */ width,
  ) {
    this.markerHits = [];
    const m = tl.markers;
    if (m.items) {
      let lastLabel = -Infinity;
      for (const it of m.items) {
        const x = X(it.time);
        const color = it.kind === 'application-consistent' ? COLORS.app : COLORS.crash;
        ctx.fillStyle = color;
        ctx.globalAlpha = 0.35;
        ctx.fillRect(Math.round(x), plotTop, pr, plotH);
        ctx.globalAlpha = 1;
        ctx.beginPath();
        ctx.moveTo(x - 5 * pr, y + 2 * pr);
        ctx.lineTo(x + 5 * pr, y + 2 * pr);
        ctx.lineTo(x, y + 11 * pr);
        ctx.closePath();
        ctx.fill();
        if (x - lastLabel > 90 * pr && x + 8 * pr < left + width) {
          ctx.fillStyle = '#33424f';
          const name = it.name.length > 22 ? `${it.name.slice(0, 21)}…` : it.name;
          ctx.fillText(name, x + 7 * pr, y + 15 * pr);
          lastLabel = x;
        }
        this.markerHits.push({ x: (x - left) / pr, seq: it.seq });
      }
      return;
    }
    if (!m.buckets) return;
    const n = m.buckets.application.length;
    let max = 1;
    for (let i = 0; i < n; i++) max = Math.max(max, m.buckets.application[i] + m.buckets.crash[i]);
    for (let i = 0; i < n; i++) {
      const a = X(tl.rate.t[i]);
      const w = Math.max(1, X(tl.rate.t[i] + tl.bucketMs) - a - 1);
      const app = m.buckets.application[i];
      const crash = m.buckets.crash[i];
      const ha = (h * app) / max;
      const hc = (h * crash) / max;
      ctx.fillStyle = COLORS.app;
      if (app) ctx.fillRect(a, y + h - ha, w, Math.max(pr, ha));
      ctx.fillStyle = COLORS.crash;
      if (crash) ctx.fillRect(a, y + h - ha - hc, w, Math.max(pr, hc));
    }
  }
}
