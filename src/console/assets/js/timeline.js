// A volume's timeline: the chart (rate, transactions, markers, faded and
// super-transaction bands), replication lag, what is in view, and the point
// picker. Every zoom or pan asks the server for the window again, with about
// one bucket per 2 px, so a history of any size draws in one small answer.
import { api, ApiError, enc } from './api.js';
import { h, put } from './dom.js';
import { bytes, duration, int, iso } from './format.js';
import { TimelineChart } from './chart.js';
import { LagChart } from './lag-chart.js';
import { makePicker } from './picker.js';
import { stateBadge } from './volumes.js';

const PRESETS = [
  ['5 min', 5 * 60e3],
  ['1 h', 3600e3],
  ['1 day', 86400e3],
  ['7 days', 7 * 86400e3],
  ['30 days', 30 * 86400e3],
];

/** Draw times, for the acceptance test and the curious: window.__rewindTimings. */
const timings = /** @type {any} */ (window).__rewindTimings ?? {
  firstDrawMs: null,
  firstDrawSinceNavigationMs: null,
  /** Each answer: request to drawn (ms). */
  draws: [],
  /** Each answer: waiting for the server, and drawing what came. */
  split: [],
};
/** @type {any} */ (window).__rewindTimings = timings;

/** A time in the address: ms since the epoch or an ISO time. @param {string | null} v */
function timeParam(v) {
  if (!v) return NaN;
  return /^\d+$/.test(v) ? Number(v) : Date.parse(v);
}

/** @param {HTMLElement} root @param {string} volume @param {any} ctx @param {URLSearchParams} q */
export function render(root, volume, ctx, q) {
  const started = performance.now();
  const badges = h('span', { class: 'row' });
  const windowText = h('span', { class: 'small muted', id: 'window-text' });
  const liveBtn = h('button', { type: 'button', id: 'live-toggle', class: 'small', onclick: () => setLive(!live) }, 'Follow live');
  const toolbar = h(
    'div',
    { class: 'toolbar' },
    ...PRESETS.map(([label, span]) =>
      h('button', { type: 'button', class: 'small', onclick: () => showLast(/** @type {number} */ (span)) }, label),
    ),
    h('button', { type: 'button', class: 'small', id: 'zoom-all', onclick: () => load(null) }, 'All'),
    h('span', { class: 'sep' }),
    h('button', { type: 'button', class: 'small', id: 'zoom-in', title: 'zoom in (+, wheel)', onclick: () => chart.zoom(1 / 2) }, '+'),
    h('button', { type: 'button', class: 'small', id: 'zoom-out', title: 'zoom out (-, wheel)', onclick: () => chart.zoom(2) }, '−'),
    h('button', { type: 'button', class: 'small', title: 'pan left (←, shift+wheel)', onclick: () => chart.pan(-0.25) }, '◀'),
    h('button', { type: 'button', class: 'small', title: 'pan right (→)', onclick: () => chart.pan(0.25) }, '▶'),
    h('span', { class: 'sep' }),
    liveBtn,
    h('span', { class: 'grow' }),
    windowText,
  );
  const chartEl = h('div', { class: 'chart', id: 'timeline-chart', tabindex: '0', 'data-drawn': '0' });
  const lagEl = h('div', { class: 'chart', id: 'lag-chart' });
  const status = h('div', { class: 'status', id: 'timeline-status' });
  const group = h('span', { class: 'muted' });
  const inView = h('div', { id: 'in-view' });
  const pickerEl = h('div', { class: 'card', id: 'picker' });
  const legend = h(
    'div',
    { class: 'legendline' },
    h('span', null, h('i', { class: 'sw-tx' }), 'transactions (ranges, or density)'),
    h('span', null, h('i', { class: 'sw-app' }), 'application-consistent marker'),
    h('span', null, h('i', { class: 'sw-crash' }), 'crash-consistent marker'),
    h('span', null, h('i', { class: 'sw-faded' }), 'faded (merged): only transaction ends are points'),
    h('span', null, h('i', { class: 'sw-super' }), 'super transaction: no points inside'),
    h('span', null, h('i', { class: 'sw-pick' }), 'picked point'),
  );
  put(
    root,
    h('div', { class: 'row' }, h('h1', { id: 'volume-title' }, volume), badges, h('span', { class: 'grow' }), group),
    h(
      'div',
      { class: 'split' },
      h(
        'div',
        null,
        h('div', { class: 'card' }, toolbar, chartEl, legend, status),
        h('div', { class: 'card' }, h('h3', null, 'Replication lag'), lagEl, h('p', { class: 'muted small', id: 'lag-note' })),
        h('div', { class: 'card' }, inView),
      ),
      pickerEl,
    ),
  );

  /** @type {{ from: number, to: number } | null} */
  let win = null;
  let live = false;
  /** @type {AbortController | null} */
  let inflight = null;
  /** @type {any} */
  let tl = null;
  let lastTxns = -1;
  let lastLiveLoad = 0;
  let drawn = 0;
  /** @type {number | null} */
  let requestedAt = null;
  /** @type {number | null} */
  let answeredAt = null;

  const chart = new TimelineChart(chartEl, {
    onWindow: (from, to) => {
      setLive(false);
      load({ from, to });
    },
    onPick: (at) => void picker.pick(at),
    onDraw: () => {
      if (!tl) return;
      drawn++;
      chartEl.setAttribute('data-drawn', String(drawn));
      const now = performance.now();
      if (timings.firstDrawMs === null) {
        timings.firstDrawMs = Math.round(now - started);
        timings.firstDrawSinceNavigationMs = Math.round(now);
      }
      if (requestedAt !== null) timings.draws.push(Math.round(now - requestedAt));
      if (requestedAt !== null && answeredAt !== null)
        timings.split.push({
          fetchMs: Math.round(answeredAt - requestedAt),
          drawMs: Math.round(now - answeredAt),
          serverMs: tl.stats.serverMs,
        });
      requestedAt = null;
    },
  });
  const lag = new LagChart(lagEl);
  const picker = makePicker(pickerEl, volume, {
    onResolved: (info) => {
      ctx.picked.set(volume, `@seq:${info.seq}`);
      chart.setPicked(Date.parse(info.time));
    },
    onChanged: () => load(win),
  });

  chartEl.addEventListener('keydown', (e) => {
    if (e.key === '+' || e.key === '=') chart.zoom(1 / 2);
    else if (e.key === '-') chart.zoom(2);
    else if (e.key === 'ArrowLeft') chart.pan(-0.25);
    else if (e.key === 'ArrowRight') chart.pan(0.25);
    else return;
    e.preventDefault();
  });

  /** @param {boolean} on */
  function setLive(on) {
    live = on;
    liveBtn.classList.toggle('primary', on);
    if (on) showLast(win ? win.to - win.from : 3600e3);
  }

  /** @param {number} span */
  function showLast(span) {
    const now = Date.now();
    load({ from: now - span, to: now + span * 0.02 });
  }

  /** Fetches a window (null: all of history) and draws it; a newer request cancels an older one. @param {{ from: number, to: number } | null} w */
  function load(w) {
    if (w) chart.setWindow(w.from, w.to);
    inflight?.abort();
    const ctrl = new AbortController();
    inflight = ctrl;
    requestedAt = performance.now();
    const q = new URLSearchParams({ buckets: String(Math.max(50, Math.min(2000, Math.floor(chart.plotWidth / 2)))) });
    if (w) {
      q.set('from', String(Math.floor(w.from)));
      q.set('to', String(Math.ceil(w.to)));
    }
    api('GET', `/v1/volumes/${enc(volume)}/timeline?${q}`, undefined, { signal: ctrl.signal }).then(
      (data) => {
        if (ctrl.signal.aborted) return;
        answeredAt = performance.now();
        tl = data;
        win = { from: data.from, to: data.to };
        // The window goes into the address, so a view can be shared (the token does not).
        const here = `#/volume/${enc(volume)}?from=${new Date(data.from).toISOString()}&to=${new Date(data.to).toISOString()}`;
        if (w) history.replaceState(null, '', here);
        chart.setData(data);
        lag.setData(data);
        describe(data);
      },
      (e) => {
        if (ctrl.signal.aborted || /** @type {Error} */ (e).name === 'AbortError') return;
        put(status, h('span', { class: 'error' }, String(/** @type {Error} */ (e).message)));
      },
    );
  }

  /** @param {any} d */
  function describe(d) {
    put(
      group,
      d.groupVolumes.length > 1
        ? `group ${d.group} (${d.groupVolumes.join(', ')}): rates and transactions are the group's`
        : `group ${d.group}`,
    );
    windowText.textContent = `${iso(d.from)} → ${iso(d.to)} (${duration((d.to - d.from) / 1000)})`;
    const drawMs = timings.draws.length ? timings.draws[timings.draws.length - 1] : timings.firstDrawMs;
    put(
      status,
      `${int(d.transactions.total)} transactions in view of ${int(d.stats.rows)} · ${int(d.markers.total)} markers · ${d.rate.t.length} buckets of ${duration(d.bucketMs / 1000)} · `,
      `applied up to @seq:${d.applied.seq} (T_${d.applied.container}) · server ${d.stats.serverMs} ms`,
      drawMs !== null && drawMs !== undefined ? ` · drawn in ${drawMs} ms` : '',
      d.writes ? ` · ${d.writes.length} single writes shown (click one to pick it)` : '',
    );
    lagNote(d);
    listInView(d);
  }

  /** @param {any} d */
  function lagNote(d) {
    const note = /** @type {HTMLElement} */ (root.querySelector('#lag-note'));
    put(
      note,
      d.lag.t.length
        ? `${d.lag.t.length} samples (the largest per bucket); the daemon samples once a second and keeps an hour at 1 s and a week at 1 min.`
        : 'No lag samples in this window (the daemon samples once a second while it runs).',
    );
  }

  /** @param {any} d */
  function listInView(d) {
    const markers = d.markers.items ?? [];
    const txns = d.transactions.items ?? [];
    const mrows = markers.map((/** @type {any} */ m) =>
      h(
        'tr',
        { class: 'clickable', onclick: () => void picker.pick(`@seq:${m.seq}`), 'data-marker': m.name },
        h('td', { class: 'marker-name' }, m.name),
        h(
          'td',
          null,
          h('span', { class: `badge ${m.kind === 'application-consistent' ? 'app' : 'crash'}` }, m.kind),
          m.auto ? ' scheduled' : '',
        ),
        h('td', { class: 'num' }, `@seq:${m.seq}`),
        h('td', null, iso(m.time)),
        h('td', { class: 'small muted' }, m.reason ?? ''),
      ),
    );
    const trows = txns.map((/** @type {any} */ t) =>
      h(
        'tr',
        { class: 'clickable', onclick: () => void picker.pick(`@txn:${t.n}`) },
        h('td', { class: 'num' }, `T_${t.n}`),
        h('td', { class: 'num' }, `${t.firstSeq}..${t.lastSeq}`),
        h('td', null, iso(t.firstTime), h('div', { class: 'muted small' }, `${duration((t.lastTime - t.firstTime) / 1000)}`)),
        h('td', { class: 'num' }, int(t.records)),
        h('td', { class: 'num' }, bytes(t.bytes)),
        h(
          'td',
          null,
          t.superId !== null
            ? h('span', { class: 'badge' }, `super ${t.superId}`)
            : t.mergedFrom !== null
              ? h('span', { class: 'badge' }, `merged from T_${t.mergedFrom}`)
              : '',
        ),
      ),
    );
    put(
      inView,
      h('h3', null, 'Markers in view'),
      d.markers.items
        ? markers.length
          ? h(
              'div',
              { class: 'scroll' },
              h(
                'table',
                { id: 'markers-in-view' },
                h(
                  'thead',
                  null,
                  h(
                    'tr',
                    null,
                    ['Name', 'Kind', 'Point', 'Time', 'Note'].map((x) => h('th', null, x)),
                  ),
                ),
                h('tbody', null, mrows),
              ),
            )
          : h('p', { class: 'muted' }, 'None.')
        : h('p', { class: 'muted' }, `${int(d.markers.total)} markers: zoom in to list them (or type a marker's name in the picker).`),
      h('h3', null, 'Transactions in view'),
      d.transactions.items
        ? txns.length
          ? h(
              'div',
              { class: 'scroll' },
              h(
                'table',
                { id: 'txns-in-view' },
                h(
                  'thead',
                  null,
                  h(
                    'tr',
                    null,
                    ['T', 'Seqs', 'Time', 'Writes', 'Bytes', ''].map((x) => h('th', null, x)),
                  ),
                ),
                h('tbody', null, trows),
              ),
            )
          : h('p', { class: 'muted' }, 'None.')
        : h('p', { class: 'muted' }, `${int(d.transactions.total)} transactions: zoom in to list them.`),
    );
  }

  // The archive (another part of Rewind) may not exist: its points are drawn only if its API answers.
  api('GET', `/v1/volumes/${enc(volume)}/archive`).then(
    (a) => {
      if (a && Array.isArray(a.points))
        chart.setArchived(
          a.points.map((/** @type {any} */ p) => ({ time: typeof p.time === 'number' ? p.time : Date.parse(p.time), seq: p.seq })),
        );
    },
    (e) => {
      if (!(e instanceof ApiError)) throw e;
    },
  );

  const picked = ctx.picked.get(volume);
  if (picked) void picker.pick(picked);
  const from = timeParam(q.get('from'));
  const to = timeParam(q.get('to'));
  load(Number.isFinite(from) && Number.isFinite(to) && to > from ? { from, to } : null);

  return {
    destroy() {
      inflight?.abort();
      chart.destroy();
      lag.destroy();
    },
    /** @param {any} s */
    onLive(s) {
      const v = s.volumes.find((/** @type {any} */ x) => x.name === volume);
      if (!v) return;
      const p = v.protection;
      put(
        badges,
        stateBadge({ offline: v.offline, protection: p, status: p }),
        p ? h('span', { class: 'badge', id: 'lag-badge' }, `lag ${duration(p.lag.seconds)} · ${bytes(p.lag.bytes)}`) : null,
        h('span', { class: 'badge' }, `${int(v.connections)} connections`),
        p ? h('span', { class: 'badge' }, `last write @seq:${p.lastSeq}`) : null,
      );
      const now = Date.now();
      if (p && lastTxns === -1) lastTxns = p.transactions;
      if (!p || now - lastLiveLoad < 1900) return;
      if (live && win) {
        lastLiveLoad = now;
        const span = win.to - win.from;
        load({ from: now - span, to: now + span * 0.02 });
      } else if (p.transactions !== lastTxns && tl) {
        lastLiveLoad = now;
        lastTxns = p.transactions;
        load(win);
      }
    },
  };
}
