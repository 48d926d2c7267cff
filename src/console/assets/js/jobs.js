// Jobs: restores, fades, verifies, exports and diffs running now and the
// last ones that finished, with progress and errors (GET /v1/jobs); the
// list refreshes when the live state says the registry changed.
import { api } from './api.js';
import { badge, h, put } from './dom.js';
import { ago, duration, int, iso } from './format.js';

/** @param {HTMLElement} root @param {any} _ctx */
export function render(root, _ctx) {
  const body = h('div', { class: 'card' }, h('p', { class: 'muted' }, 'Loading…'));
  put(root, h('h1', null, 'Jobs'), body);
  let version = -1;
  /** @type {ReturnType<typeof setInterval> | null} */
  let timer = null;

  const load = async () => {
    try {
      const { jobs } = await api('GET', '/v1/jobs');
      draw(jobs);
      // While something runs, its progress is polled once a second.
      const running = jobs.some((/** @type {any} */ j) => j.state === 'running');
      if (running && !timer) timer = setInterval(() => void load(), 1000);
      if (!running && timer) {
        clearInterval(timer);
        timer = null;
      }
    } catch (e) {
      put(body, h('p', { class: 'error' }, String(/** @type {Error} */ (e).message)));
    }
  };

  /** @param {any[]} jobs */
  const draw = (jobs) => {
    if (!jobs.length) {
      put(
        body,
        h('p', { class: 'muted' }, 'No jobs yet: restores, fades, verifies, exports and diffs show here while they run and after.'),
      );
      return;
    }
    const rows = jobs.map((j) => {
      const p = j.progress;
      const pct = p && p.total ? Math.round((100 * p.done) / p.total) : j.state === 'done' ? 100 : 0;
      const bar = h('div');
      bar.style.width = `${pct}%`;
      const took = j.ended
        ? duration((Date.parse(j.ended) - Date.parse(j.started)) / 1000)
        : `${ago(j.started).replace(' ago', '')} so far`;
      return h(
        'tr',
        { 'data-job': String(j.id) },
        h('td', { class: 'num' }, String(j.id)),
        h('td', null, j.kind),
        h('td', null, j.target, j.detail ? h('div', { class: 'muted small' }, j.detail) : null),
        h('td', null, badge(j.state, j.state === 'done' ? 'ok' : j.state === 'failed' ? 'bad' : 'info')),
        h(
          'td',
          null,
          h('div', { class: 'progress' }, bar),
          p ? h('div', { class: 'muted small' }, `${p.phase}: ${int(p.done)} / ${int(p.total)}`) : null,
        ),
        h('td', null, iso(j.started), h('div', { class: 'muted small' }, took)),
        h('td', null, j.error ? h('span', { class: 'error' }, j.error) : (j.summary ?? '')),
      );
    });
    put(
      body,
      h(
        'table',
        { id: 'jobs' },
        h(
          'thead',
          null,
          h(
            'tr',
            null,
            ['#', 'Kind', 'On', 'State', 'Progress', 'Started', 'Result'].map((x) => h('th', null, x)),
          ),
        ),
        h('tbody', null, rows),
      ),
    );
  };

  void load();
  return {
    destroy() {
      if (timer) clearInterval(timer);
    },
    /** @param {any} s */
    onLive(s) {
      if (s.jobs.version !== version) {
        version = s.jobs.version;
        void load();
      }
    },
  };
}
