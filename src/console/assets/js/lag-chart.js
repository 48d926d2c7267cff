// Replication lag over the timeline's window: the largest lag (seconds
// and bytes not yet applied by the manager) per bucket, from the daemon's
// lag sampler; its x scale follows the timeline chart's.
import { rate, short } from './format.js';
import { utc } from './chart.js';

/** @type {any} */
const uPlot = /** @type {any} */ (globalThis).uPlot;

export class LagChart {
  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    this.from = Date.now() - 3600_000;
    this.to = Date.now();
    this.u = new uPlot(
      {
        width: Math.max(300, el.clientWidth),
        height: 150,
        ms: 1,
        tzDate: utc,
        legend: { show: true, live: true },
        cursor: { drag: { x: false, y: false }, points: { show: false } },
        scales: {
          x: { time: true, range: () => [this.from, this.to] },
          s: { range: (/** @type {any} */ _u, /** @type {number} */ _a, /** @type {number} */ b) => [0, Math.max(1, b * 1.1)] },
          b: { range: (/** @type {any} */ _u, /** @type {number} */ _a, /** @type {number} */ b) => [0, Math.max(1024, b * 1.1)] },
        },
        axes: [
          { stroke: '#65717e', grid: { stroke: '#eef1f4' } },
          {
            scale: 's',
            size: 78,
            stroke: '#65717e',
            grid: { stroke: '#eef1f4' },
            values: (/** @type {any} */ _u, /** @type {number[]} */ v) => v.map((x) => `${short(x)} s`),
          },
          {
            scale: 'b',
            side: 1,
            size: 56,
            stroke: '#65717e',
            grid: { show: false },
            values: (/** @type {any} */ _u, /** @type {number[]} */ v) => v.map((x) => rate(x).replace('/s', '')),
          },
        ],
        series: [
          { label: 'time (UTC)' },
          { label: 'lag seconds', scale: 's', stroke: '#c0392b', width: 1.5, points: { show: false } },
          {
            label: 'lag bytes',
            scale: 'b',
            stroke: '#7d4cb0',
            fill: 'rgba(125,76,176,0.1)',
            width: 1,
            points: { show: false },
            value: (/** @type {any} */ _u, /** @type {number | null} */ v) => (v === null ? '-' : rate(v).replace('/s', '')),
          },
        ],
      },
      [[], [], []],
      el,
    );
    this.resizer = new ResizeObserver(() => {
      const w = Math.max(300, this.el.clientWidth);
      if (Math.abs(w - this.u.width) > 2) this.u.setSize({ width: w, height: 150 });
    });
    this.resizer.observe(el);
  }

  /** @param {any} tl */
  setData(tl) {
    this.from = tl.from;
    this.to = tl.to;
    this.u.setData([tl.lag.t, tl.lag.seconds, tl.lag.bytes], true);
  }

  destroy() {
    this.resizer.disconnect();
    this.u.destroy();
  }
}
